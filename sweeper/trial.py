"""One trial as a subprocess: `python agent.py --key=value ...`, its log, its signals, and how it ended.

A trial is the same command `wandb agent` would run, so a local sweep and a W&B sweep train identically,
and a trial that crashes, diverges or runs out of memory takes nothing down with it but itself.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from common.errors import UserError
from trainer import metrics as M
from trainer.record import LAST_CHECKPOINT, METRICS_FILE, RunRecord
from trainer.signals import EARLY_STOP_SIGNAL

AGENT = Path(__file__).resolve().parents[1] / "agent.py"
LOG_FILE = "output.log"


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, float):
        return repr(value)  # round-trips exactly: the trial parses the value the engine suggested
    return str(value)


def trial_command(parameters: Mapping[str, Any], output_dir: Path, run_id: str) -> list[str]:
    args = [f"--{name}={format_value(value)}" for name, value in parameters.items()]
    args += [f"--output_dir={output_dir}", f"--run_id={run_id}"]
    # No --resume: a trial resumes from its checkpoint anyway, and one that no longer fits (damaged, or of
    # code that built the model otherwise) is set aside as last.refused.pt and the trial trains afresh, as
    # its config still has to be; --resume would refuse that, and the trial would fail on every call.
    return [sys.executable, str(AGENT), *args]


def trial_env(gpu: str | None) -> dict[str, str]:
    env = dict(os.environ)
    # Offline W&B runs land in the run folders, ready for `wandb sync`; a user's explicit choice wins.
    env.setdefault("WANDB_MODE", "offline")
    env["PYTHONUNBUFFERED"] = "1"  # output.log follows the trial live
    for inherited in ("WANDB_RUN_ID", "WANDB_SWEEP_ID"):
        env.pop(inherited, None)  # the trial is named by --run_id, not by a W&B agent around us
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


def visible_gpus() -> list[str]:
    """GPU ids to hand out one per worker; [] with fewer than two GPUs (then every trial sees them all)."""
    import torch

    count = torch.cuda.device_count()
    if count < 2:
        return []
    listed = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    return listed[:count] if len(listed) >= count else [str(i) for i in range(count)]


@dataclass
class LaunchedTrial:
    run_id: str
    folder: Path
    process: subprocess.Popen
    log: IO
    gpu: str | None
    started: float = field(default_factory=time.monotonic)
    started_at: float = field(default_factory=time.time)
    signals_sent: set[int] = field(default_factory=set)
    read_offset: int = 0  # how far the driver has read output.log: this launch's lines start there

    def new_lines(self) -> list[str]:
        """The complete lines the trial wrote to its output.log since the last call (a line being written waits)."""
        try:
            with open(self.folder / LOG_FILE, "rb") as handle:
                handle.seek(self.read_offset)
                data = handle.read()
        except OSError:
            return []
        end = data.rfind(b"\n") + 1
        self.read_offset += end
        return data[:end].decode(errors="replace").splitlines()

    def send(self, signum: int) -> bool:
        """Send a signal once; False when it was already sent or the process is gone."""
        if signum in self.signals_sent or self.process.poll() is not None:
            return False
        self.signals_sent.add(signum)
        try:
            self.process.send_signal(signum)
        except ProcessLookupError:
            return False
        return True

    def poll(self) -> int | None:
        code = self.process.poll()
        if code is not None and not self.log.closed:
            self.log.close()
        return code

    def is_training(self) -> bool:
        """Has it written its metrics since it started? Then the trainer's signal handlers are in place: before
        that, SIGUSR1 would kill it outright (a relaunched trial shows the history of its previous life)."""
        try:
            return (self.folder / METRICS_FILE).stat().st_mtime >= self.started_at
        except FileNotFoundError:
            return False

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


def launch(run_id: str, folder: Path, command: list[str], gpu: str | None) -> LaunchedTrial:
    holder = RunRecord.held_by(folder)
    if holder:  # the sweep process that launched it was killed, the trial was not (or it is being tested)
        raise UserError(f"trial {run_id} is still {holder} in {folder}: wait for it to end or stop it, "
                        f"then run the same sweep command again")
    folder.mkdir(parents=True, exist_ok=True)
    if read_summary(folder):
        # A relaunch: its summary says how its previous life ended until the trial writes its own. Marked running
        # now, a trial killed before that (while it imports torch) is not taken for its previous outcome.
        RunRecord(folder).update_summary(**{M.STATE: M.RUNNING, M.REASON: None}, exit_code=None)
    log = open(folder / LOG_FILE, "a")  # appended: a resumed trial's log continues its first part
    log.write(f"$ {' '.join(command)}\n")
    log.flush()
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=trial_env(gpu))
    return LaunchedTrial(run_id, folder, process, log, gpu, read_offset=log.tell())


def has_checkpoint(folder: Path) -> bool:
    return (folder / LAST_CHECKPOINT).exists()


read_history = RunRecord.read_history  # the trainer's own readers: one definition of the record format
read_summary = RunRecord.read_summary


def last_error_line(folder: Path) -> str | None:
    """The `error: ...` line agent.py prints for a user mistake, else the last line of output."""
    try:
        lines = [line.strip() for line in (folder / LOG_FILE).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return None
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or [None])[-1]


@dataclass
class Outcome:
    state: str
    reason: str | None
    exit_code: int | None
    best_val_acc: float | None


def recorded_outcome(folder: Path) -> Outcome | None:
    """How the trial ended according to its own summary.json; None while it says running (or says nothing)."""
    summary = read_summary(folder)
    state = summary.get(M.STATE)
    if state not in M.STATES or state == M.RUNNING:
        return None
    best = summary.get(M.BEST_VAL_ACC)
    best = float(best) if isinstance(best, (int, float)) and math.isfinite(best) and best >= 0 else None
    return Outcome(state, summary.get(M.REASON), summary.get(M.EXIT_CODE), best)


KILLED_REASON = ("killed by SIGKILL, most often the host running out of memory; the same sweep command resumes it from "
                 "its checkpoint (with fewer --workers or --num_workers=0 if memory is short)")


def outcome(trial: LaunchedTrial, driver_interrupted: bool) -> Outcome:
    """How the trial ended, from its summary.json, its exit code and the signals we sent it."""
    code = trial.process.returncode
    killed_by = -code if code is not None and code < 0 else None
    if killed_by is not None and killed_by == EARLY_STOP_SIGNAL and EARLY_STOP_SIGNAL in trial.signals_sent:
        # The stop arrived after the trainer released its handlers (its last moments): the history is complete.
        best = max((row[M.VAL_ACC] for row in read_history(trial.folder) if M.VAL_ACC in row), default=None)
        return Outcome(M.EARLY_STOPPED, "stopped by hyperband early termination", code, best)
    recorded = recorded_outcome(trial.folder)  # this launch's: `launch` marked a relaunch's old summary running
    if recorded is not None:
        return Outcome(recorded.state, recorded.reason, code, recorded.best_val_acc)
    best = None
    # Killed before it could record how it ended: say what we know instead of guessing "finished".
    if driver_interrupted or killed_by in (signal.SIGTERM, signal.SIGINT):
        return Outcome(M.PREEMPTED, f"interrupted (exit {code}) before it could record its state; the next call "
                       "relaunches it", code, best)
    # no trainer error dies this way: the host's out-of-memory killer, most often
    if killed_by == getattr(signal, "SIGKILL", None):
        return Outcome(M.FAILED, KILLED_REASON, code, best)
    if killed_by is not None:
        return Outcome(M.FAILED, f"killed by signal {killed_by}", code, best)
    return Outcome(M.FAILED, last_error_line(trial.folder) or f"exit code {code} without a summary", code, best)
