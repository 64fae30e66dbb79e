"""The trial table of a local sweep (`table.jsonl`): one JSON line per trial, rewritten atomically on every change.

It is the sweep's memory between calls: which suggestions were trained, skipped as duplicates, failed before
they started, or left running when the driver was killed (those are relaunched with the same run id). The
run folders under `runs/` stay the source of truth for metrics; the report reads both.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.atomic import write_text
from common.errors import EXIT_USER_ERROR, UserError
from trainer import metrics as M
from trainer.config import rehash, run_id_problem

TABLE_FILE = "table.jsonl"
RUNS_DIR = "runs"
DUPLICATE = M.DUPLICATE
UNFINISHED = (M.RUNNING, M.PREEMPTED)


@dataclass
class Trial:
    run_id: str
    state: str
    config: dict[str, Any]  # effective config, plain values ({} when the suggestion did not parse)
    config_hash: str | None
    suggested: dict[str, Any]  # the engine's raw values, fed back to it as the run's config
    reason: str | None = None
    duplicate_of: str | None = None
    exit_code: int | None = None
    best_val_acc: float | None = None
    # The fixed --key=value arguments it was launched with, so a relaunch resumes the same config.
    fixed: dict[str, str] = field(default_factory=dict)

    @property
    def is_duplicate(self) -> bool:
        return self.state == DUPLICATE


class TrialTable:
    def __init__(self, sweep_dir: Path):
        self.sweep_dir = Path(sweep_dir)
        self.path = self.sweep_dir / TABLE_FILE
        self.trials: list[Trial] = self._read()
        self._identities: dict[str, str] = {}  # run id -> trial_identity: a trial's config never changes

    def _read(self) -> list[Trial]:
        """The rows; a last row cut off mid-write (no newline after it) is left out, its number in `lost_line`. Its
        trial is not lost: sweeper.recover reads it back from its run folder."""
        self.lost_line: int | None = None
        if not self.path.exists():
            return []
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise UserError(f"{self.path} cannot be read ({exc.strerror}): check its permissions") from None
        lines = data.split(b"\n")
        trials = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                trials.append(trial_from_row(json.loads(line.decode("utf-8"))))
            except (ValueError, TypeError, RecursionError) as exc:
                if number == len(lines):  # no newline after it: the write that made it was cut short
                    self.lost_line = number
                    continue
                raise UserError(f"{self.path} line {number} is damaged ({str(exc)[:80]}): delete that line; the next "
                                "sweep command reads that trial back from its run folder") from None
        return trials

    def save(self) -> None:
        write_text(self.path, "".join(json.dumps(dataclasses.asdict(t), sort_keys=True) + "\n" for t in self.trials))

    def clear(self) -> None:
        self.trials, self._identities = [], {}
        self.save()

    def add(self, trial: Trial) -> Trial:
        self.trials.append(trial)
        self.save()
        return trial

    def __iter__(self) -> Iterator[Trial]:
        return iter(self.trials)

    def __len__(self) -> int:
        return len(self.trials)

    def get(self, run_id: str | None) -> Trial | None:
        return next((t for t in self.trials if t.run_id == run_id), None)

    def real(self) -> list[Trial]:
        """Trials that stand for a training run of their own (not duplicates)."""
        return [t for t in self.trials if not t.is_duplicate]

    def find_identity(self, identity: str) -> Trial | None:
        """The real trial with this config hash (or, for suggestions that did not parse, this suggestion)."""
        for trial in self.real():
            if trial.run_id not in self._identities:
                self._identities[trial.run_id] = trial_identity(trial)
            if self._identities[trial.run_id] == identity:
                return trial
        return None

    def run_folder(self, trial: Trial) -> Path:
        return self.sweep_dir / RUNS_DIR / trial.run_id

    def new_run_id(self, sweep_name: str) -> str:
        # The random tail keeps ids unique across sweeps with the same name: W&B run ids share a project.
        return f"{run_id_prefix(sweep_name)}-{len(self.trials) + 1:03d}-{secrets.token_hex(2)}"


_ROW_TYPES = {"run_id": str, "state": str, "config": dict, "config_hash": (str, type(None)), "suggested": dict,
              "reason": (str, type(None)), "duplicate_of": (str, type(None)), "exit_code": (int, type(None)),
              "best_val_acc": (int, float, type(None)), "fixed": dict}


def trial_from_row(row: Any) -> Trial:
    """A table row as a Trial, every field of the type the driver wrote (TypeError otherwise): a row edited by
    hand cannot send a run id that is a path, or a config that is not a mapping, into the driver."""
    if not isinstance(row, dict):
        raise TypeError("not a JSON object")
    values = {key: value for key, value in row.items() if key in _ROW_TYPES}
    for key, kind in _ROW_TYPES.items():
        if key in values and (isinstance(values[key], bool) or not isinstance(values[key], kind)):
            raise TypeError(f"{key} is {type(values[key]).__name__}")
    if "run_id" not in values or run_id_problem(values["run_id"]):
        raise TypeError(f"run_id {values.get('run_id')!r} is not a run id")
    if values.get("state") not in (*M.STATES, DUPLICATE):
        raise TypeError(f"state {values.get('state')!r} is not a trial state")
    return Trial(**values)


def run_id_prefix(sweep_name: str) -> str:
    """What every trial's run id of a sweep with this name starts with (then `-NNN-xxxx`)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", sweep_name).strip("-") or "trial"


def failed_on_setup(trial: Trial) -> bool:
    """A launched trial that ended on a user mistake (exit code 2: data, weights, a setting this machine cannot
    run): nothing about its config was learned, so a later call retries it once the mistake is fixed."""
    return trial.state == M.FAILED and trial.exit_code == EXIT_USER_ERROR


def killed_by_host(trial: Trial) -> bool:
    """A trial SIGKILLed from outside (the host's out-of-memory killer, most often, with parallel trials): its config
    is not at fault, so like a preempted one a later call resumes it from its checkpoint."""
    # Windows: neither, nor negative codes
    return trial.state == M.FAILED and trial.exit_code == -getattr(signal, "SIGKILL", 9)


def binds_folder(trial: Trial) -> bool:
    """A trial that got past its setup (or may have): from then on the folder is this sweep's, pinned. Invalid
    suggestions and setup failures taught nothing, and a corrected call may still change the definition."""
    invalid_suggestion = trial.state == M.FAILED and trial.exit_code is None
    # One that trained before a setup problem stopped it (its disk filled up, say) binds the folder; it is still
    # retried, and resumes from its checkpoint.
    return not (trial.is_duplicate or invalid_suggestion or (failed_on_setup(trial) and trial.best_val_acc is None))


def suggestion_identity(suggested: dict[str, Any]) -> str:
    return "invalid:" + json.dumps(suggested, sort_keys=True, default=str)


def trial_identity(trial: Trial) -> str:
    """What makes two trials the same: the effective config hash (under today's normalisation, so trials of
    older code still count), or the raw suggestion when it did not parse."""
    return rehash(trial.config) or trial.config_hash or suggestion_identity(trial.suggested)
