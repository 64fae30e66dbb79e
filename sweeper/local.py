"""The offline sweep driver: W&B's own engine picks the configs, trials run here as `agent.py` subprocesses.

    python agent.py sweep sweeps/tiny.yaml --count 4 [--workers 2] [--sweep_dir DIR] [--key=value ...]

Sweep folder (default sweep_runs/<yaml stem>/):
    sweep.yaml     the definition, pinned: the folder refuses a different one
    table.jsonl    one row per trial (see sweeper/table.py), rewritten atomically on every change
    runs/<run_id>/ the trials' run folders (config.yaml, metrics.jsonl, summary.json, checkpoints, output.log)

`--count N` is the sweep's size: the folder ends up with N distinct effective configs, so the same command
run again after an interruption finishes the sweep rather than adding N more (raise N to extend it). A
suggestion that normalises to an already trained config is recorded as a duplicate and fed back to the
engine with the original's result, and the engine is asked again. Trials left running or preempted by an
earlier call are relaunched first, with their run ids, and resume from their checkpoints; finished trials
are never rerun. A trial that fails on a setup problem (exit code 2: data, weights, a setting this machine
cannot run) stops the sweep while no trial has trained yet, or when it is the third new trial in a row to fail
so (the data went away), since every later trial would fail the same way. Once trials have trained, a setup
failure is its own values' (a weights file one searched value names): recorded, and the sweep goes on. Every
call retries the trials that failed on setup, so fixing the cause and running the same command again is enough, and
resumes the trials SIGKILLed from outside (the host's out-of-memory killer, most often) from their checkpoints.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from common.disk import ensure_writable
from common.errors import UserError
from common.locks import try_lock
from data.cache import CACHE_OPTION
from data.layout import locate_dataset
from data.scan import scan_folder, skipped_warning
from models import get_spec, resolve_strategy
from sweeper import console
from sweeper.definition import (
    DRIVER_OWNED,
    RECIPE,
    SweepDefinition,
    engine_config,
    frozen_random_init,
    load_definition,
    pin_definition,
    pin_fixed,
    problems_error,
    unrunnable_values,
    with_recipe,
)
from sweeper.engine import runs_to_stop, suggest, sweep_run
from sweeper.interrupt import DriverInterrupt
from sweeper.recover import read_back_lost_trials
from sweeper.table import (
    DUPLICATE,
    RUNS_DIR,
    UNFINISHED,
    Trial,
    TrialTable,
    binds_folder,
    failed_on_setup,
    killed_by_host,
    run_id_prefix,
    suggestion_identity,
)
from sweeper.trial import (
    LaunchedTrial,
    has_checkpoint,
    launch,
    outcome,
    read_history,
    recorded_outcome,
    trial_command,
    visible_gpus,
)
from trainer import metrics as M
from trainer.config import FIELDS, config_hash, effective_config, parse_run_config, parse_value
from trainer.progress import FORWARDED
from trainer.record import RunRecord
from trainer.signals import EARLY_STOP_SIGNAL

POLL_SECONDS = 0.5  # how often finished trials are collected and hyperband is asked
MAX_CONSECUTIVE_DUPLICATES = 100  # a random/bayes search over a small effective space never ends otherwise
SETUP_FAILURES_IN_A_ROW = 3  # new trials failing on setup one after the other: the setup broke, not their values
TRAINED = (*M.SUCCESSFUL_STATES, M.DIVERGED, M.OOM)  # states a trial reaches only past its setup
LOCK_FILE = ".lock"
DROPPED_DIR = "dropped"  # run folders of trials a corrected first call dropped


def check_sweep(sweep_yaml: Path, fixed: dict[str, str] | None = None) -> str:
    """Every check a local sweep makes of its YAML and fixed arguments before its first trial, with nothing run:
    for a definition headed to `wandb sweep`, whose server checks none of them. Returns what the sweep will do."""
    from sweeper.protocol import check_stage_sweep  # the fair protocol's refusals, for its compare and curve sweeps

    definition = load_definition(sweep_yaml)
    fixed = check_fixed(fixed or {})
    unrunnable = unrunnable_values(definition.parameters, fixed)
    if unrunnable:
        raise problems_error(sweep_yaml, unrunnable, "; remove that value from the YAML, or change the argument")
    check_stage_sweep(sweep_yaml, fixed)
    searched = [name for name in definition.searched() if name not in fixed]
    metric = definition.config["metric"]
    frozen = frozen_random_init(definition.parameters, fixed)
    warning = (f"\nwarning: weights=none with a frozen strategy ({', '.join(frozen[:6])}"
               f"{', ...' if len(frozen) > 6 else ''}): those trials train a head on random features and end near "
               "chance; search strategy full only, or use ImageNet weights or a warm start (--weights=PATH)"
               if frozen else "")
    return (f"sweep file {sweep_yaml} is fine: method {definition.config['method']}, metric {metric['name']} "
            f"({metric['goal']}), searching {len(searched)} parameter(s) ({', '.join(searched) or 'none'})"
            f"{warning}")


def run_local_sweep(sweep_yaml: Path, count: int, workers: int = 1, sweep_dir: Path | None = None,
                    fixed: dict[str, str] | None = None) -> dict | None:
    """Run (or continue) a sweep; returns a short summary, or None when it was interrupted."""
    if count < 0 or workers < 1:
        raise UserError(f"--count={count} must be >= 0 and --workers={workers} >= 1")
    definition = load_definition(sweep_yaml)
    fixed = check_fixed(fixed or {})
    unrunnable = unrunnable_values(definition.parameters, fixed)
    if unrunnable:  # with the fixed arguments: --model=resnet18 makes k_layers=7 unrunnable
        raise problems_error(sweep_yaml, unrunnable, "; remove that value from the YAML, or change the argument")
    sweep_dir = (Path(sweep_dir) if sweep_dir else Path("sweep_runs") / Path(sweep_yaml).stem).resolve()
    existed = sweep_dir.exists()
    if not existed:
        parent = next(p for p in sweep_dir.parents if p.exists())  # checked before a download, creating nothing
        if not os.access(parent, os.W_OK):
            raise UserError(
                f"sweep folder {sweep_dir} cannot be created: {parent} is not "
                "writable; pass --sweep_dir with a writable folder")
        said = prepare_dataset(definition, fixed)  # a first call that fails here leaves no sweep folder behind
        in_yaml = definition.parameters.get("checkpoint_store")
        store = fixed.get("checkpoint_store") or (in_yaml.get("value") if isinstance(in_yaml, dict) else None)
        _note_orphans_in_store(definition.name, store, sweep_dir)
    ensure_writable(sweep_dir, "sweep folder", "--sweep_dir")
    with exclusive(sweep_dir):
        table = TrialTable(sweep_dir)
        read_back_lost_trials(table, definition, fixed)  # before anything asks which configs were trained
        # The folder is this sweep's from its first trial that got past setup; until then a corrected call may
        # change the definition and the fixed arguments, and the failed trials of the old ones are dropped.
        bound, real = any(binds_folder(t) for t in table), table.real()
        replaced = pin_definition(sweep_dir, definition, bound)
        replaced |= pin_fixed(sweep_dir, fixed, real[0].fixed if real else None, bound)
        if replaced and len(table):
            print(f"note: the {len(real)} earlier trial(s) of {sweep_dir} all failed before training, under another "
                  f"definition or fixed arguments: dropped from the sweep, their folders moved to {DROPPED_DIR}/",
                  flush=True)
            for trial in table:  # out of runs/, which reports read
                if table.run_folder(trial).exists():
                    (sweep_dir / DROPPED_DIR).mkdir(exist_ok=True)
                    table.run_folder(trial).replace(sweep_dir / DROPPED_DIR / trial.run_id)
            table.clear()
        if existed:
            said = prepare_dataset(definition, fixed)
        return LocalSweep(definition, sweep_dir, fixed, workers, shown_warnings=[said] if said else []).run(count)


def _note_orphans_in_store(name: str, store: Any, sweep_dir: Path) -> None:
    """A new sweep folder beside a store that holds trials of this sweep name: most likely the same sweep on a new
    machine, whose --sweep_dir (its record of trials) stayed behind. Said once, before anything is trained."""
    from trainer.store import STORE_CHOICES

    if not store or store in STORE_CHOICES:
        return
    folder = Path(str(store)).expanduser()
    pattern = re.compile(rf"{re.escape(run_id_prefix(name))}-\d{{3}}-[0-9a-f]{{4}}")
    found = (sorted(p.name for p in folder.iterdir() if p.is_dir() and pattern.fullmatch(p.name))
             if folder.is_dir() else [])
    if found:
        print(f"note: {folder} holds checkpoints of {len(found)} trial(s) of a sweep named "
              f"{name} ({', '.join(found[:3])}{' ...' if len(found) > 3 else ''}), but "
              f"{sweep_dir} is new, so this sweep starts over: to continue that sweep, stop "
              "and pass the --sweep_dir it used (keep it on the same drive as the store)", flush=True)


def prepare_dataset(definition: SweepDefinition, fixed: Mapping[str, Any]) -> str | None:
    """Find the dataset once, before any trial: a wrong --data_dir refuses the sweep instead of failing every
    trial, and a download (nature_12K when the folder is empty) happens once, not in each parallel trial."""
    constants = {name: spec["value"] for name, spec in definition.parameters.items()
                 if isinstance(spec, dict) and "value" in spec}
    if any(name in definition.searched() and name not in fixed for name in ("data_dir", "download")):
        return  # the search varies it: each trial finds its own
    values = {**constants, **fixed}
    config = parse_run_config({name: values[name] for name in ("data_dir", "download", "cache_dir") if name in values})
    layout = locate_dataset(config.data_dir, download=config.download)
    if "cache_dir" in definition.searched() and "cache_dir" not in fixed:
        return
    # The scan, once here (trials read its cached result): unreadable files are named on the sweep's console.
    index = scan_folder(layout.train_dir, cache_dir=ensure_writable(config.cache_dir, "cache_dir", CACHE_OPTION))
    if index.skipped:
        print(
            f"note: every trial trains without those {len(index.skipped)} "
            "file(s) and lists them in its skipped_files.txt", flush=True)
        # said once here: the trials' own copies of it are not repeated
        return skipped_warning(index.root, index.skipped)
    return None


def check_fixed(fixed: Mapping[str, Any]) -> dict[str, str]:
    """Validate the fixed `--key=value` arguments once, here, rather than in every trial."""
    fixed = {key.replace("-", "_"): value for key, value in fixed.items()}
    for key in fixed:
        if key in DRIVER_OWNED:
            raise UserError(
                f"--{key} is set by the sweep for each trial (runs go to SWEEP_DIR/{RUNS_DIR}/RUN_ID); use "
                "--sweep_dir=DIR to choose the folder")
        parse_value(key, fixed[key])  # name, type and range; whether it fits a model is each trial's to say
    if "model" in fixed:
        get_spec(str(fixed["model"]))  # a typo fails here once, not in every trial
    if "strategy" in fixed:
        resolve_strategy(str(fixed["strategy"]))
    return dict(fixed)


@contextlib.contextmanager
def exclusive(sweep_dir: Path) -> Iterator[None]:
    """One driver per sweep folder: a second one would relaunch the first one's running trials."""
    with open(sweep_dir / LOCK_FILE, "w") as handle:
        if not try_lock(handle):
            raise UserError(f"another sweep driver is running on {sweep_dir}; wait for it or stop it first")
        yield


class LocalSweep:
    def __init__(self, definition: SweepDefinition, sweep_dir: Path, fixed: dict[str, str], workers: int,
                 shown_warnings: list[str] | tuple[str, ...] = ()):
        self.definition, self.fixed, self.workers = definition, fixed, workers
        self.config = engine_config(definition, fixed)
        self.table = TrialTable(sweep_dir)
        self.searched = [name for name in definition.searched() if name not in fixed]
        self.running: dict[str, LaunchedTrial] = {}
        self.tags: dict[str, str] = {}
        self.gpus = visible_gpus() if workers > 1 else []
        self.interrupted = False
        self.setup_failure: Trial | None = None
        self.setup_streak = 0  # new trials in a row that failed on setup
        self.retries: set[str] = set()  # run ids of setup failures this call retries
        self._final_histories: dict[str, list[dict]] = {}
        self.count, self.started = 0, time.monotonic()
        self.trained_seconds: list[float] = []  # durations of this call's trials that trained: the pace of the estimate
        # Each distinct warning of the trials once (every CPU trial has one), and none the driver said already.
        self._warnings_shown: set[str] = set(shown_warnings)

    # --- the loop ---------------------------------------------------------------------------------

    def run(self, count: int) -> dict | None:
        relaunch = [trial for trial in self.table if (trial.state in UNFINISHED and not self._ended_while_away(trial))
                    or failed_on_setup(trial) or killed_by_host(trial)]
        self.retries = {trial.run_id for trial in relaunch if failed_on_setup(trial)}
        new_trials = resumed = 0
        earlier = len(self.table.real())  # --count is the sweep's size, across calls
        self.count, self.started = count, time.monotonic()
        asking = True
        with DriverInterrupt(self._on_interrupt) as interrupt, self._stop_trials_on_error():
            while True:
                self._collect()
                for run_id, launched in self.running.items():
                    self._show_output(run_id, launched)
                if interrupt:
                    for launched in self.running.values():
                        launched.send(signal.SIGTERM)  # a trial started while the signal arrived
                while not interrupt and not self.setup_failure and len(self.running) < self.workers:
                    if relaunch:
                        self._start(relaunch.pop(0), "resume")  # resumes from its checkpoint when it has one
                        resumed += 1
                    elif asking and earlier + new_trials < count:
                        trial = self._next_trial()
                        if trial is None:
                            asking = False
                            continue
                        new_trials += 1
                        tag = f"{earlier + new_trials}/{count}"
                        if trial.state == M.FAILED:  # did not parse: recorded, nothing to run
                            print(console.trial_line(tag, trial, self.searched), flush=True)
                        else:
                            self._start(trial, tag)
                    else:
                        break
                if not self.running:
                    break
                self._early_terminate()
                time.sleep(POLL_SECONDS)
        print(console.final_table(self.table.trials, self.searched), flush=True)
        self._warn_if_the_data_changed()
        if self.interrupted:
            unfinished = sum(t.state in UNFINISHED for t in self.table)
            print(f"sweep interrupted: {unfinished} trial(s) to resume; run the same command again to continue",
                  flush=True)
            return None
        if self.setup_failure:
            raise UserError(f"sweep stopped: trial {self.setup_failure.run_id} failed on a setup problem "
                            f"({self.setup_failure.reason}); fix it and run the same command again: that trial is "
                            "retried, and nothing else is lost")
        own = [t.run_id for t in self.table.real() if failed_on_setup(t)]
        if own:
            print(f"{len(own)} trial(s) failed on a setup problem of their own values ({', '.join(own)}: see their "
                  "reason in table.jsonl); fix it and run the same command again to retry them", flush=True)
        killed = [t.run_id for t in self.table.real() if killed_by_host(t)]
        if killed:
            print(f"{len(killed)} trial(s) were killed by SIGKILL, most often the host running out of memory "
                  f"({', '.join(killed)}); run the same command again, with fewer --workers or --num_workers=0 if "
                  "memory is short, to resume them", flush=True)
        if earlier >= count and not resumed:
            print(
                f"the sweep already has {earlier} trial(s), --count {count}: nothing to do; raise --count to extend it",
                flush=True)
        return self._summary(new_trials, resumed)

    @contextlib.contextmanager
    def _stop_trials_on_error(self):
        """If the driver itself fails, its trials checkpoint and stop: no orphan keeps training a run folder."""
        try:
            yield
        except BaseException:
            for launched in self.running.values():
                launched.send(signal.SIGTERM)
            for launched in self.running.values():
                try:
                    launched.process.wait(timeout=60)
                except Exception:
                    launched.process.kill()
            raise

    def _on_interrupt(self, signum: int) -> None:
        self.interrupted = True
        print(f"signal {signum}: stopping {len(self.running)} running trial(s) at their next step (they checkpoint)",
              flush=True)
        for launched in self.running.values():
            launched.send(signal.SIGTERM)

    # --- suggestions ------------------------------------------------------------------------------

    def _next_trial(self) -> Trial | None:
        """The next suggestion that is not a duplicate, recorded in the table; None when the search is done."""
        run_cap = self.definition.config.get("run_cap")
        for _ in range(MAX_CONSECUTIVE_DUPLICATES):
            if run_cap and len(self.table.real()) >= run_cap:
                print(f"run_cap {run_cap} reached: no new trials", flush=True)
                return None
            suggestion = suggest(self.config, self._engine_runs())
            if suggestion is None:
                print("the grid is exhausted: every point has been tried", flush=True)
                return None
            trial = self._record(suggestion)
            if not trial.is_duplicate:
                return trial
            print(f"[dup] {trial.run_id} = {trial.duplicate_of}: {console.describe(trial.suggested, self.searched)}"
                  f"{console.normalised_away(trial)}", flush=True)
        print(
            f"stopping: the last {MAX_CONSECUTIVE_DUPLICATES} suggestions all repeated trained configs; the effective "
            "search space looks exhausted", flush=True)
        return None

    def _record(self, suggestion: dict[str, Any]) -> Trial:
        run_id = self.table.new_run_id(self.definition.name)
        try:
            run_config = parse_run_config(*with_recipe(suggestion), self.fixed)
        except UserError as exc:
            # The YAML's space holds an invalid combination: this trial fails, the sweep goes on.
            original = self.table.find_identity(suggestion_identity(suggestion))
            if original:
                return self.table.add(Trial(run_id, DUPLICATE, {}, None, suggestion, duplicate_of=original.run_id))
            return self.table.add(
                Trial(run_id, M.FAILED, {}, None, suggestion, reason=f"invalid suggestion: {exc}", fixed=self.fixed))
        config, identity = effective_config(run_config), config_hash(run_config)
        original = self.table.find_identity(identity)
        if original:
            return self.table.add(Trial(run_id, DUPLICATE, config, identity, suggestion, duplicate_of=original.run_id))
        return self.table.add(Trial(run_id, M.RUNNING, config, identity, suggestion, fixed=self.fixed))

    def _engine_runs(self, for_stopping: bool = False) -> list:
        runs = []
        for trial in self.table:
            if trial.is_duplicate:
                if for_stopping:
                    continue  # a duplicate's history is its original's: counting it twice skews the bands
                source = self.table.get(trial.duplicate_of) or trial
                runs.append(sweep_run(trial, self._history(source), source))
            else:
                runs.append(sweep_run(trial, self._history(trial)))
        return runs

    def _history(self, trial: Trial) -> list[dict]:
        if trial.run_id in self._final_histories:
            return self._final_histories[trial.run_id]
        history = read_history(self.table.run_folder(trial))
        if trial.state not in UNFINISHED and not trial.is_duplicate:
            self._final_histories[trial.run_id] = history  # it will not change any more
        return history

    # --- trials -----------------------------------------------------------------------------------

    def _parameters(self, trial: Trial) -> dict[str, Any]:
        """Suggestion + the fixed arguments it was started with; paths and logging may change on a relaunch.
        A recipe file is not passed on: the values it gave when the trial was recorded are, so an edit of the file
        since then cannot make a relaunched trial train (and refuse its checkpoint for) another config."""
        changeable = {k: v for k, v in self.fixed.items() if not FIELDS[k].metadata["effective"]}
        suggested = trial.suggested
        if RECIPE in suggested and trial.config:
            recorded = {k: v for k, v in trial.config.items() if v is not None}
            suggested = {**recorded, **{k: v for k, v in suggested.items() if k != RECIPE}}
        return {**suggested, **trial.fixed, **changeable}

    def _ended_while_away(self, trial: Trial) -> bool:
        """A trial the table says is running but whose own record says it ended (the driver was killed first)."""
        recorded = recorded_outcome(self.table.run_folder(trial))
        if recorded is None or recorded.state in UNFINISHED:
            return False
        trial.state, trial.reason, trial.exit_code, trial.best_val_acc = (recorded.state, recorded.reason,
                                                                          recorded.exit_code, recorded.best_val_acc)
        self.table.save()
        print(console.trial_line("recorded", trial, self.searched), flush=True)
        return True

    def _warn_if_the_data_changed(self) -> None:
        """Trials that asked for the same split (split seed and fractions) but got different ones, because images
        were added, removed or renamed between calls, do not compare. A sweep over the split's own settings is fine."""
        by_request: dict[tuple, dict[str, list[str]]] = {}
        files: dict[tuple, dict[str, list[str]]] = {}  # the same, by the split's file sizes where recorded
        for trial in self.table:
            folder = self.table.run_folder(trial)
            summary = RunRecord.read_summary(folder)
            split, data = summary.get(M.SPLIT_HASH), summary.get(M.DATA_HASH)
            try:
                config = RunRecord.saved_config(folder) or {}
            except UserError as damaged:  # the sweep's outcome stands; the file is named with its fix
                print(f"warning: {damaged}", flush=True)
                config = {}
            if split:
                request = tuple(config.get(key) for key in ("split_seed", "val_fraction", "subset_fraction"))
                by_request.setdefault(request, {}).setdefault(split, []).append(trial.run_id)
                if data:
                    files.setdefault((request, split), {}).setdefault(data, []).append(trial.run_id)
        for same_names in files.values():
            if len(same_names) > 1:
                groups = "; ".join(f"{len(ids)} on files {data} ({', '.join(ids[:3])}{', ...' if len(ids) > 3 else ''})"
                                   for data, ids in same_names.items())
                print(f"warning: the trials of this sweep trained on images of the same names but different sizes, so "
                      f"their numbers do not compare: the files were replaced between calls (resized or re-exported?) "
                      f"({groups}); restore the data, or start a new sweep with --sweep_dir", flush=True)
        for splits in by_request.values():
            if len(splits) < 2:
                continue
            groups = "; ".join(f"{len(ids)} on split {split} ({', '.join(ids[:3])}{', ...' if len(ids) > 3 else ''})"
                               for split, ids in splits.items())
            print(f"warning: the trials of this sweep trained on {len(splits)} different data splits, so their numbers "
                  f"do not compare: the images changed between calls ({groups}); restore the data, or start a new "
                  "sweep with --sweep_dir", flush=True)

    def _start(self, trial: Trial, tag: str) -> None:
        folder = self.table.run_folder(trial)
        resume = has_checkpoint(folder)  # a new trial's run id is new: only a relaunch has one
        command = trial_command(self._parameters(trial), folder.parent, trial.run_id)
        trial.state, trial.reason, trial.exit_code = M.RUNNING, None, None
        self.table.save()
        try:
            launched = launch(trial.run_id, folder, command, self._pick_gpu())
        except OSError as exc:
            trial.state, trial.reason = M.FAILED, f"could not start {command[0]}: {exc}"
            self.table.save()
            print(console.trial_line(tag, trial, self.searched), flush=True)
            return
        self.running[trial.run_id], self.tags[trial.run_id] = launched, tag
        gpu = f" on GPU {launched.gpu}" if launched.gpu is not None else ""
        print(f"[{tag}] {trial.run_id} {'resuming' if resume else 'started'}{gpu}  "
              f"{console.trained(trial, self.searched)}  -> {folder / 'output.log'}", flush=True)

    def _pick_gpu(self) -> str | None:
        if not self.gpus:
            return None
        load = Counter(t.gpu for t in self.running.values())
        return min(self.gpus, key=lambda gpu: load[gpu])  # one trial per GPU while there are enough

    def _collect(self) -> None:
        """Record every trial that has exited."""
        for run_id, launched in list(self.running.items()):
            if launched.poll() is None:
                continue
            self._show_output(run_id, launched)  # its last epoch's line before the line saying how it ended
            del self.running[run_id]
            result = outcome(launched, self.interrupted)
            # A trial that died before its record could say how (a full disk) is not left `running` in summary.json.
            RunRecord.settle(launched.folder, result.state, result.reason, result.exit_code)
            trial = self.table.get(run_id)
            trial.state, trial.reason, trial.exit_code, trial.best_val_acc = (result.state, result.reason,
                                                                              result.exit_code, result.best_val_acc)
            if trial.state == M.PREEMPTED:  # the trainer's reason speaks of run ids; in a sweep, the command is the way
                trial.reason = "interrupted; the same sweep command resumes it from its checkpoint"
            self.table.save()
            self._final_histories.pop(run_id, None)
            print(console.trial_line(self.tags.pop(run_id), trial, self.searched, launched.seconds), flush=True)
            if trial.state in TRAINED:
                self.trained_seconds.append(launched.seconds)
            print(self._progress(), flush=True)
            self._judge_setup(trial)

    def _show_output(self, run_id: str, launched: LaunchedTrial) -> None:
        """A running trial's epoch lines and warnings, live on the sweep's console, each named by its trial."""
        for line in launched.new_lines():
            if not line.startswith(FORWARDED):
                continue
            if line.startswith("warning:"):
                if line in self._warnings_shown:
                    continue
                self._warnings_shown.add(line)
            print(console.trial_output(self.tags.get(run_id, "?"), run_id, line), flush=True)

    def _progress(self) -> str:
        """Trials done of the sweep's size, and the time left at the pace of this call's trials that trained."""
        done = sum(t.state not in UNFINISHED for t in self.table.real())
        total, left = max(self.count, done + len(self.running)), None
        remaining = max(0, total - done)
        if self.trained_seconds and remaining:
            left = (sum(self.trained_seconds) / len(self.trained_seconds) * remaining
                    / max(1, min(self.workers, remaining)))
        return console.progress_line(done, total, len(self.running), time.monotonic() - self.started, left)

    def _judge_setup(self, trial: Trial) -> None:
        """After a trial ended: does a setup failure stop the sweep (the sweep's setup is broken) or only this trial
        (a value of its own)? The sweep's, while no trial has trained, or after SETUP_FAILURES_IN_A_ROW new ones."""
        if not failed_on_setup(trial):
            self.setup_streak = 0
            return
        self.setup_streak += trial.run_id not in self.retries  # a retry failing again says nothing new
        if self.setup_failure:
            return
        trained = any(t.state in TRAINED for t in self.table.real()) or any(other.is_training()
                                                                            for other in self.running.values())
        if not trained or self.setup_streak >= SETUP_FAILURES_IN_A_ROW:
            self.setup_failure = trial  # every later trial would fail alike: no new ones start
        else:
            print(f"  {trial.run_id} failed on a setup problem of its own values, not the sweep's (other trials "
                  "trained): recorded, the sweep goes on, the next call retries it", flush=True)

    def _early_terminate(self) -> None:
        """Ask hyperband which running trials trail the others; they stop gracefully as early_stopped."""
        if not self.running or not self.config.get("early_terminate") or EARLY_STOP_SIGNAL is None:
            return  # no SIGUSR1 (Windows): trials run to their end
        for run_id in runs_to_stop(self.config, self._engine_runs(for_stopping=True)):
            launched, trial = self.running.get(run_id), self.table.get(run_id)
            if launched is None or trial is None or not launched.is_training():
                continue
            epochs = trial.config.get("epochs")
            if epochs and len(self._history(trial)) >= epochs:
                continue  # on its last epoch already: stopping saves nothing
            if launched.send(EARLY_STOP_SIGNAL):
                print(f"[stop] {run_id}: hyperband early termination after {len(self._history(trial))} epoch(s)",
                      flush=True)

    def _summary(self, new_trials: int, resumed: int) -> dict:
        states = Counter(t.state for t in self.table)
        goal = (self.definition.config.get("metric") or {}).get("goal", "maximize")
        # Best among runs that completed: crashed or diverged runs never stand for a config's result.
        scored = [t for t in self.table.real() if t.state in M.SUCCESSFUL_STATES and t.best_val_acc is not None]
        pick = min if goal == "minimize" else max
        best = pick(scored, key=lambda t: t.best_val_acc) if scored else None
        return {
            "sweep_dir": str(self.table.sweep_dir), "trials": len(self.table), "new": new_trials, "resumed": resumed,
            "states": dict(states), "best_run_id": best.run_id if best else None,
            M.BEST_VAL_ACC: best.best_val_acc if best else None,
        }
