"""The W&B seam of a run: which mode it logs in (auto, offline, online, without wandb installed), W&B's step
bookkeeping across restarts, and W&B failing never failing the run. What W&B ends up holding: tests/test_wandb.py."""

from __future__ import annotations

import sys

import pytest
import torch

from common.errors import UserError
from trainer import metrics as M
from trainer.run import run_training
from trainer.wandb_log import RunLogger
from trainer_helpers import history, scratch


class StepLogger(RunLogger):
    """W&B's step bookkeeping without W&B: a step at or below the last one is dropped, as W&B drops it."""

    def __init__(self, logged_steps=0, oom_at_log=None):
        self.steps, self.kept, self._next, self.oom_at_log = [], [], logged_steps + 1 if logged_steps else 0, oom_at_log

    def next_step(self):
        return self._next

    def log(self, row, step):
        self.steps.append(step)
        if len(self.steps) == self.oom_at_log:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if step >= self._next:
            self.kept.append((step, row[M.EPOCH]))
            self._next = step + 1


def test_a_restart_in_the_same_wandb_run_logs_after_the_earlier_attempt(base, monkeypatch):
    """W&B drops steps that go backwards: an OOM retry or a refused checkpoint must not log epoch 1 at step 1 again."""
    import trainer.run

    logger = StepLogger(oom_at_log=2)
    monkeypatch.setattr(trainer.run, "start_logger", lambda *a, **k: logger)
    outcome = run_training(scratch(base, run_id="oom-steps", epochs=3))
    assert outcome.state == M.FINISHED and outcome.summary["batch_size"] == 4
    assert logger.steps == [1, 2, 2, 3, 4]  # attempt 1 logged epoch 1, died logging epoch 2; the retry follows
    assert logger.kept == [(1, 1), (2, 1), (3, 2), (4, 3)]  # every epoch of the retry reached W&B
    assert [r[M.EPOCH] for r in history(outcome)] == [1, 2, 3]

    logger = StepLogger(logged_steps=5)  # a W&B run with history, and no checkpoint anywhere: a fresh start
    monkeypatch.setattr(trainer.run, "start_logger", lambda *a, **k: logger)
    run_training(scratch(base, run_id="fresh-in-old-run", epochs=2))
    assert logger.kept == [(6, 1), (7, 2)]


def test_wandb_offline_run_is_syncable(base, monkeypatch, capsys):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE")
    outcome = run_training(scratch(base, run_id="offline1", epochs=1, wandb_mode="offline"))
    assert outcome.state == M.FINISHED
    assert "W&B" not in capsys.readouterr().err  # every call we make (define_metric, step, log) is real W&B API
    offline = list((outcome.folder.parent / "wandb").glob("offline-run-*offline1"))
    assert offline, "an offline run folder for `wandb sync`"


def test_wandb_prints_one_line_of_ours_and_verbose_brings_its_banner_back(tmp_path, monkeypatch, capfd):
    """A whole run's console is checked in tests/test_wandb.py; here the logger alone, quiet and verbose."""
    wandb = pytest.importorskip("wandb")
    from trainer.wandb_log import start_logger

    monkeypatch.delenv("WANDB_SILENT")  # the fixture's: the harness must be quiet by itself
    printed = {}
    for verbose in (False, True):
        wandb.teardown()  # W&B sets its terminal up once per process: each run here starts as in a process of its own
        start_logger("offline", "p", "", f"verbose-{verbose}", {}, tmp_path, verbose=verbose).finish()
        out, err = capfd.readouterr()
        printed[verbose] = [line for line in (out + err).splitlines() if "W&B" in line or line.startswith("wandb")]
    [line] = printed[False]
    assert line == f"W&B offline: sync with `wandb sync {next(tmp_path.glob('wandb/offline-run-*-verbose-False'))}`"
    assert sum(line.startswith("wandb:") for line in printed[True]) > 5  # W&B's own banner and summary
    wandb.teardown()
    wandb.setup(wandb.Settings(silent=True))  # as the other tests found W&B: silent, set up without credentials


def test_a_run_refused_before_training_tells_wandb_its_exit_status(base, tmp_path, monkeypatch):
    """The report groups refused runs by their exit status, from W&B as from the run folder."""
    from trainer.wandb_log import RunLogger

    logged = {}
    monkeypatch.setattr(RunLogger, "summary", lambda self, values: logged.update(values))
    with pytest.raises(UserError, match="no dataset found"):
        run_training(scratch(base, run_id="typo", data_dir=str(tmp_path / "datsets"), download=False))
    assert logged[M.STATE] == M.FAILED and logged[M.EXIT_CODE] == 2


def test_a_broken_wandb_never_kills_the_run(base, monkeypatch):
    wandb = pytest.importorskip("wandb")

    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setattr(wandb, "init", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("server unreachable")))
    outcome = run_training(scratch(base, run_id="nowandb", epochs=1, wandb_mode="online"))
    assert outcome.state == M.FINISHED


def test_wandb_logger_next_step_is_after_its_own_last_step():
    """Inside the process that logged, W&B's run.step is the last step (its row still open), not the next one."""
    from trainer.wandb_log import WandbLogger

    class Run:
        step = 0

        def log(self, row, step):
            Run.step = step

    logger = WandbLogger(Run(), "offline")
    assert logger.next_step() == 0  # nothing logged: an offset of 0
    for step in (1, 2, 3):
        logger.log({M.EPOCH: step}, step=step)
    assert logger.next_step() == 4
    Run.step = 9  # a resumed run whose server history goes further
    assert logger.next_step() == 9


def test_a_rerun_tells_wandb_it_is_running_before_anything_else(base, monkeypatch):
    """A finished W&B run resumed under its id and killed mid-run must not still read `finished` there."""
    import trainer.run

    summaries = []

    class Spy(RunLogger):
        def summary(self, values):
            summaries.append(dict(values))

    monkeypatch.setattr(trainer.run, "start_logger", lambda *a, **k: Spy())
    first = run_training(scratch(base, run_id="again", epochs=1))
    assert first.state == M.FINISHED and summaries[-1][M.STATE] == M.FINISHED
    summaries.clear()
    run_training(scratch(base, run_id="again", epochs=2))
    assert summaries[0] == {M.STATE: M.RUNNING, M.REASON: None, M.EXIT_CODE: None}


def test_secrets_never_reach_the_offline_wandb_files(base, monkeypatch):
    """Pitfall 15 with W&B on: nothing under output_dir (run folder and wandb/offline-run-*) holds the key."""
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "local-0123456789abcdef0123456789abcdef01234567")
    outcome = run_training(scratch(base, run_id="secret2", epochs=1, wandb_mode="offline"))
    assert outcome.state == M.FINISHED
    files = [p for p in outcome.folder.parent.rglob("*") if p.is_file()]
    assert any("offline-run" in str(p) for p in files)
    for path in files:
        assert b"0123456789abcdef0123456789abcdef" not in path.read_bytes(), path


def test_wandb_mode_auto_is_online_only_with_credentials(monkeypatch, tmp_path, capfd):
    from trainer.wandb_log import resolve_mode

    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_SILENT")  # a deprecation warning of wandb's would show
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    import trainer.wandb_log

    monkeypatch.setattr(trainer.wandb_log, "server_reachable", lambda host, port: True)
    assert resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("auto") == "online" and resolve_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "offline")  # the environment wins over auto
    assert resolve_mode("auto") == "offline"
    assert "deprecated" not in capfd.readouterr().err
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("WANDB_IDENTITY_TOKEN_FILE", str(tmp_path / "token"))  # workload identity, no key
    assert resolve_mode("auto") == "online"
    monkeypatch.delenv("WANDB_IDENTITY_TOKEN_FILE")
    monkeypatch.setattr(trainer.wandb_log, "_has_api_key", lambda: 1 / 0)  # wandb's internals moved
    assert (resolve_mode("auto") == "offline"
            and "could not tell whether W&B credentials are set" in capfd.readouterr().out)


def test_wandb_mode_auto_with_a_key_but_no_network_logs_offline_at_once(monkeypatch, tmp_path, capfd):
    """A Kaggle secret with internet off: not 90 s of waiting and then no W&B record at all."""
    import socket as sockets

    import trainer.wandb_log
    from trainer.wandb_log import resolve_mode, server_reachable

    listening = sockets.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    port = listening.getsockname()[1]
    closed = sockets.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: refused
    try:
        assert server_reachable("127.0.0.1", port) and not server_reachable("127.0.0.1", closed.getsockname()[1])
        monkeypatch.delenv("WANDB_MODE")
        monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
        assert trainer.wandb_log._server() == ("127.0.0.1", port)
        assert resolve_mode("auto") == "online"

        def answer_with(**env) -> str:
            for name, value in env.items():
                monkeypatch.setenv(name, value)
            trainer.wandb_log._online_reachable.cache_clear()
            return resolve_mode("auto")

        assert answer_with(WANDB_BASE_URL=f"http://127.0.0.1:{closed.getsockname()[1]}") == "offline"
        assert resolve_mode("auto") == "offline"  # probed once per process: one note, not one per call
        assert capfd.readouterr().out.count("cannot be reached; logging offline") == 1
        assert resolve_mode("online") == "online"  # asked for by name: as asked
        # A trial of `wandb agent` (its result must reach the sweep), a proxy (a direct connection says nothing),
        # an address that does not parse (W&B says what is wrong with it): online, unprobed.
        assert answer_with(HTTPS_PROXY=f"http://127.0.0.1:{closed.getsockname()[1]}") == "online"
        monkeypatch.delenv("HTTPS_PROXY")
        assert answer_with(WANDB_BASE_URL="http://wandb.local:80a") == "online"
        assert answer_with(WANDB_BASE_URL=f"http://127.0.0.1:{closed.getsockname()[1]}",
                           WANDB_SWEEP_ID="abc123") == "online"
    finally:
        listening.close()
        closed.close()


def test_the_wandb_reachability_probe_uses_the_servers_own_port(monkeypatch):
    """A self-hosted server on plain http (no port) listens on 80: probing 443 would log it offline for nothing."""
    import trainer.wandb_log

    for url, server in (("http://wandb.local", ("wandb.local", 80)), ("https://wandb.local", ("wandb.local", 443)),
                        ("http://wandb.local:8080", ("wandb.local", 8080))):
        monkeypatch.setenv("WANDB_BASE_URL", url)
        assert trainer.wandb_log._server() == server
    monkeypatch.delenv("WANDB_BASE_URL")
    assert trainer.wandb_log._server() == ("api.wandb.ai", 443)
    # A host name that cannot even be encoded (a label over 63 characters) is unreachable, not a crash.
    assert trainer.wandb_log.server_reachable("a" * 64 + ".example", 443) is False


def test_wandb_mode_auto_falls_back_to_offline_when_online_fails(monkeypatch, tmp_path, capfd):
    import wandb

    import trainer.wandb_log
    from trainer.wandb_log import WandbLogger, start_logger

    monkeypatch.setattr(trainer.wandb_log, "resolve_mode", lambda mode: "online" if mode == "auto" else mode)
    real_init, modes = wandb.init, []

    def init(**kwargs):
        modes.append(kwargs["mode"])
        if kwargs["mode"] == "online":
            raise RuntimeError("context deadline exceeded")
        return real_init(**kwargs)

    monkeypatch.setattr(wandb, "init", init)
    logger = start_logger("auto", "p", "", "fallback", {"lr": 0.1}, tmp_path)
    try:
        assert modes == ["online", "offline"] and isinstance(logger, WandbLogger) and logger.mode == "offline"
        assert "logging offline" in capfd.readouterr().out
    finally:
        logger.finish()
    modes.clear()
    assert type(start_logger("online", "p", "", "asked", {}, tmp_path)) is not WandbLogger  # asked online: no fallback
    assert modes == ["online"] and "W&B could not start" in capfd.readouterr().err


def test_wandb_mode_auto_without_wandb_installed_logs_locally_without_warnings(monkeypatch, capfd, tmp_path):
    from trainer.wandb_log import RunLogger, resolve_mode, start_logger

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # a key, but nothing to log with
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    assert resolve_mode("auto") == "disabled"
    logger = start_logger("auto", "p", "", "r1", {}, tmp_path)
    assert type(logger) is RunLogger
    out = capfd.readouterr()
    assert "warning" not in out.out + out.err
    assert resolve_mode("offline") == "offline"  # asked for explicitly: start_logger says wandb is missing
    start_logger("offline", "p", "", "r1", {}, tmp_path)
    assert "wandb is not installed" in "".join(capfd.readouterr())


def test_a_wandb_call_that_fails_mid_run_warns_once_and_the_run_goes_on(capfd):
    from trainer.wandb_log import WandbLogger

    class BrokenRun:
        step, calls = 0, 0

        def log(self, row, step):
            BrokenRun.calls += 1
            raise ConnectionError("wandb service went away")

        def finish(self, exit_code=0):
            BrokenRun.calls += 1

    logger = WandbLogger(BrokenRun(), "online")
    logger.log({M.EPOCH: 1}, step=1)
    logger.log({M.EPOCH: 2}, step=2)
    logger.finish(exit_code=0)
    err = capfd.readouterr().err
    assert (err.count("warning: W&B") == 1 and "ConnectionError: wandb service went away" in err
            and "local record" in err)
    assert BrokenRun.calls == 1  # after the first failure W&B is left alone
