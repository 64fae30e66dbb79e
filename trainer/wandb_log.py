"""The W&B seam of a run: online when logged in, offline otherwise, or disabled; a W&B failure never kills a run.

Everything W&B does for a run goes through `RunLogger`. The base class is the do-nothing logger used when
W&B is disabled, not installed, or broken; `WandbLogger` wraps a real run and turns every W&B exception
into one warning, after which it behaves like the base class. API keys are never read or written here:
W&B finds them itself (`wandb login` or WANDB_API_KEY).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import socket
import sys
import urllib.parse
import warnings
from pathlib import Path
from typing import Any

from trainer.metrics import DIVERGED, EPOCH, OOM

# A diverged or out-of-memory run ends its W&B run with this exit code, so W&B marks it `failed`. W&B's search
# (the `sweeps` package, as the local engine: bayes_search._construct_gp_data) scores a `finished` run by the best
# val_acc in its history, which for a run that diverged is a good number; a `failed` one gets the worst result of
# the sweep (metric.impute: worst), as the local engine gives it. The process itself still exits 0: `wandb agent`
# stops after repeated non-zero exits (wandb_agent.py: Agent.is_failing, is_flapping), and a few bad learning rates
# must not end a sweep.
FAILED_RESULT_EXIT_CODE = 3
FAILED_RESULTS = (DIVERGED, OOM)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


RUN_STOP_QUERY = """
query RunStop($entity: String, $project: String!, $run: String!) {
  project(name: $project, entityName: $entity) { run(name: $run) { shouldStop stopped } }
}
"""


def _graphql(api, query: str, variables: dict) -> dict:
    """Run a GraphQL query through the public API object, whichever client this wandb version has."""
    service = getattr(api, "_service_api", None)
    if service is not None and hasattr(service, "execute_graphql"):
        return service.execute_graphql(query, variables=variables)
    from wandb_gql import gql

    return api.client.execute(gql(query), variable_values=variables)


class RunLogger:
    """No W&B: every call is a no-op."""

    mode = "disabled"
    online = False

    def log(self, row: dict[str, Any], step: int) -> None: ...
    def next_step(self) -> int:
        return 0
    def summary(self, values: dict[str, Any]) -> None: ...
    def mark_preempting(self) -> None: ...
    def stop_requested_by_sweep(self) -> bool:
        return False
    def log_artifact_file(self, path: Path, name: str, kind: str, aliases: list[str],
                          filename: str | None = None) -> None: ...
    def download_artifact_file(self, name: str, filename: str, dest: Path) -> bool:
        return False
    def log_model(self, path: Path, metadata: dict[str, Any]) -> None: ...
    def log_test(self, truth, predicted, class_names, grid) -> None: ...
    def finish(self, exit_code: int = 0, state: str | None = None) -> None: ...


def resolve_mode(requested: str) -> str:
    """auto -> online when an API key is configured, else offline; WANDB_MODE in the environment wins over auto."""
    env_mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if requested == "auto" and env_mode in ("online", "offline", "disabled", "dryrun", "run"):
        return {"dryrun": "offline", "run": "online"}.get(env_mode, env_mode)
    if requested != "auto":
        return requested
    if importlib.util.find_spec("wandb") is None:  # nothing to log to: local records only, and nothing to warn about
        return "disabled"
    try:
        if not _has_api_key():
            return "offline"
    except Exception as exc:  # wandb moved its internals: say so rather than go offline silently
        print(f"warning: could not tell whether W&B credentials are set ({type(exc).__name__}: {exc}); logging offline "
              f"(pass --wandb_mode=online if you are logged in)")
        return "offline"
    return "online" if _online_reachable() else "offline"


PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


@functools.lru_cache(maxsize=1)
def _online_reachable() -> bool:
    """A key but no network (a Kaggle secret with internet off): online would wait 90 s, then keep no W&B record.
    Probed once per process. Not probed under `wandb agent` (it just got this trial from the server, and its result
    must go back there), behind a proxy (a direct connection says nothing), or when the server's address does not
    parse (W&B will say what is wrong with it)."""
    if os.environ.get("WANDB_SWEEP_ID") or any(os.environ.get(name) for name in PROXY_VARIABLES):
        return True
    server = _server()
    if server is None or server_reachable(*server):
        return True
    print(f"note: W&B server {server[0]} cannot be reached; logging offline (`wandb sync "
          "<output_dir>/wandb/offline-run-*` uploads it later)", flush=True)
    return False


def _server() -> tuple[str, int] | None:
    """Host and port of the W&B server this process would log to (WANDB_BASE_URL, else W&B's cloud)."""
    try:
        url = urllib.parse.urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
        return url.hostname or "api.wandb.ai", url.port or (80 if url.scheme == "http" else 443)
    except ValueError:  # a port that is no number
        return None


def server_reachable(host: str, port: int, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the server opens within `timeout` seconds: no DNS or no route fails at once."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except (OSError, UnicodeError):  # UnicodeError: a host name that cannot be encoded
        return False


def _has_api_key() -> bool:
    """Whether W&B has credentials, without prompting; newer wandb deprecates (and warns on) `wandb.api`."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    import wandb

    try:
        from wandb.sdk import wandb_setup
        from wandb.sdk.lib import wbauth
    except ImportError:  # older wandb: wandb.api is the way, and is not deprecated there
        return bool(wandb.api.api_key)
    settings = wandb_setup.singleton().settings
    return bool(wbauth.session_credentials(host=settings.base_url) or wbauth.read_netrc_auth(host=settings.base_url)
                or settings.api_key)


class WandbLogger(RunLogger):
    def __init__(self, run, mode: str):
        self.run, self.mode = run, mode
        self.online = mode == "online"
        self._broken = False
        self._last_step = 0  # the highest step this process logged

    def _guard(self, what: str, call, default=None):
        if self._broken:
            return default
        try:
            return call()
        except Exception as exc:  # W&B must never end a training run
            self._broken = True
            _warn(f"W&B {what} failed ({type(exc).__name__}: {exc}); the run goes on with its local record only")
            return default

    def log(self, row, step):
        self._last_step = max(self._last_step, step)
        self._guard("log", lambda: self.run.log(row, step=step))

    def next_step(self) -> int:
        """The first step free for a new attempt: above 0 when this run id has history (an earlier attempt).

        For a resumed W&B run, `run.step` is the next step; inside the process that logged, it is the last
        logged step (its row still open), so this process's own highest step counts too.
        """
        reported = int(self._guard("step", lambda: self.run.step, 0) or 0)
        return max(reported, self._last_step + 1) if self._last_step else reported

    def summary(self, values):
        self._guard("summary", lambda: self.run.summary.update(values))

    def mark_preempting(self):
        self._guard("mark_preempting", self.run.mark_preempting)

    def stop_requested_by_sweep(self) -> bool:
        """Did the sweep's controller ask this run to stop (hyperband, or a stop in the UI)?

        `wandb agent` delivers that stop as SIGTERM, exactly like a machine going away; only the server knows
        which it was. Any failure to ask counts as "no": the run is then treated as preempted.
        """
        if not (self.online and getattr(self.run, "sweep_id", None)):
            return False
        try:
            import wandb

            variables = {"entity": self.run.entity, "project": self.run.project, "run": self.run.id}
            response = _graphql(wandb.Api(timeout=10), RUN_STOP_QUERY, variables)
            run = ((response or {}).get("project") or {}).get("run") or {}
            return bool(run.get("shouldStop") or run.get("stopped"))
        except Exception:
            return False

    def log_artifact_file(self, path, name, kind, aliases, filename=None):
        """Raises on failure: the checkpoint store decides what an upload failure means (metric logging goes on)."""
        import wandb

        artifact = wandb.Artifact(name, type=kind)
        artifact.add_file(str(path), name=filename or Path(path).name)
        self.run.log_artifact(artifact, aliases=aliases).wait()

    def download_artifact_file(self, name, filename, dest) -> bool:
        def download() -> bool:
            artifact = self.run.use_artifact(f"{name}:latest")
            folder = artifact.download(root=str(Path(dest).parent / ".artifact_download"))
            source = Path(folder) / filename
            if not source.exists():
                return False
            os.replace(source, dest)
            return True

        if not self.online:
            return False
        try:
            return download()
        except Exception:  # no such artifact yet is the normal case for a new run
            return False

    def log_model(self, path, metadata):
        """The best checkpoint of a finished run as a `model` artifact, `model-<run id>`, online only (offline, `wandb
        sync` would upload later what the run folder already keeps). A failed upload warns; the run is recorded."""
        if not self.online or self._broken or not Path(path).exists():
            return
        try:
            import wandb

            artifact = wandb.Artifact(
                f"model-{self.run.id}", type="model", metadata=metadata,
                description="best.pt of the run: load with `--weights=best.pt` or `agent.py test`")
            artifact.add_file(str(path), name=Path(path).name)
            self.run.log_artifact(artifact, aliases=["best", "latest"])
        except Exception as exc:
            _warn(f"W&B model artifact failed ({type(exc).__name__}: {exc}); best.pt stays in the run folder")

    def log_test(self, truth, predicted, class_names, grid):
        """The held-out test's confusion matrix (a W&B chart) and its prediction grid (a table of images with their true
        and predicted classes), as media of the run that was tested."""
        def log() -> None:
            import wandb

            table = wandb.Table(columns=["image", "true", "predicted", "correct"])
            for image, true_name, predicted_name in grid:
                table.add_data(wandb.Image(image), true_name, predicted_name, true_name == predicted_name)
            chart = wandb.plot.confusion_matrix(y_true=[int(i) for i in truth], preds=[int(i) for i in predicted],
                                                class_names=list(class_names), title="test-set confusion")
            self.run.log({"test/confusion_matrix": chart, "test/predictions": table})

        self._guard("test media", log)

    def where(self) -> str:
        """One line saying where the run's W&B record is: its URL, or how to upload an offline one."""
        if self.online:
            return f"W&B: {self._guard('url', lambda: self.run.url)}"
        sync_dir = self._guard("sync_dir", lambda: self.run.settings.sync_dir)
        return f"W&B offline: sync with `wandb sync {sync_dir}`"

    def finish(self, exit_code=0, state=None):
        code = exit_code or (FAILED_RESULT_EXIT_CODE if state in FAILED_RESULTS else 0)
        self._guard("finish", lambda: self.run.finish(exit_code=code))


EFFECTIVE_KEY = "effective"  # the normalised, result-determining config, logged beside the raw sweep values


def start_logger(mode: str, project: str, entity: str, run_id: str, config: dict[str, Any], folder: Path,
                 effective: dict[str, Any] | None = None, verbose: bool = False) -> RunLogger:
    """The run's logger. Quiet unless `verbose`: one line of ours (the run's URL, or the `wandb sync` command of an
    offline run) instead of W&B's banner and end-of-run summary; W&B's warnings and errors still show."""
    requested, mode = mode, resolve_mode(mode)
    if mode == "disabled":
        return RunLogger()
    try:
        import wandb
    except ImportError:
        _warn("wandb is not installed; logging locally only")
        return RunLogger()
    fallback = requested == "auto" and mode == "online"  # chosen for the user: offline keeps a record if it fails
    logger = _start(wandb, mode, project, entity, run_id, config, folder, effective, quiet=fallback, verbose=verbose)
    if logger is None and fallback:  # the server refused or timed out
        print("note: W&B could not start online; logging offline (`wandb sync` uploads it later)", flush=True)
        logger = _start(wandb, "offline", project, entity, run_id, config, folder, effective, quiet=False,
                        verbose=verbose)
    if logger is not None:
        print(logger.where(), flush=True)
    return logger or RunLogger()


def _start(wandb, mode: str, project: str, entity: str, run_id: str, config: dict[str, Any], folder: Path,
           effective: dict[str, Any] | None, quiet: bool, verbose: bool = False) -> WandbLogger | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run = wandb.init(
                project=project or None,
                entity=entity or None,
                id=run_id,
                resume="allow",  # a re-queued or resumed trial continues the same W&B run
                mode=mode,
                dir=str(folder),
                # silent: W&B's banner and end-of-run summary (about 30 lines) give way to our one line
                # console wrap: what the run prints reaches the run's Logs tab
                settings=wandb.Settings(init_timeout=90, console="wrap", silent=not verbose),
            )
            # Keys a sweep set are locked (updates to them are ignored with a warning each): add only the others,
            # and the normalised values under one key of their own.
            swept = set(run.config.keys())
            extra = {k: v for k, v in config.items() if k not in swept}
            run.config.update({**extra, EFFECTIVE_KEY: effective or {}}, allow_val_change=True)
            # Charts use the epoch as x axis: a restart inside the same W&B run (out-of-memory retry, refused
            # checkpoint) logs at steps after the earlier attempt's, since W&B drops steps that go backwards.
            run.define_metric(EPOCH)
            run.define_metric("*", step_metric=EPOCH)
        return WandbLogger(run, mode)
    except Exception as exc:
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if quiet:  # another mode is tried next
            print(f"note: W&B {mode} failed ({why})", flush=True)
        else:
            _warn(f"W&B could not start ({why}); logging locally only")
        return None
