"""The local run record, which never depends on W&B: config.yaml, metrics.jsonl, summary.json, checkpoints.

Every write is atomic (temporary file + rename), so a kill at any moment leaves a readable record. The
metrics file is rewritten whole each epoch (it is small), which also makes a resumed run's history exact:
epochs after the checkpoint it resumes from are dropped, never duplicated.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from common.atomic import write_json, write_text
from common.errors import UserError
from common.locks import try_lock, unlock
from common.yamlfile import read_yaml
from trainer import metrics as M

CONFIG_FILE, METRICS_FILE, SUMMARY_FILE = "config.yaml", "metrics.jsonl", "summary.json"
LAST_CHECKPOINT, BEST_CHECKPOINT = "last.pt", "best.pt"
PREVIOUS_BEST = "best.previous.pt"  # the best.pt of a model a fresh start replaced
REFUSED_LAST = "last.refused.pt"  # a last.pt that could not be resumed, kept for the user to inspect
TRAINING, TESTING = "training", "testing"  # what the holder of a run's lock is doing


def _holder(text: str) -> str:
    """The lock file's "<pid> <role>" in words; a pid is named only while that process lives."""
    pid, _, role = text.strip().partition(" ")
    alive = False
    if pid.isdigit() and os.name == "posix":  # on Windows, os.kill(pid, 0) would end that process
        try:
            os.kill(int(pid), 0)
            alive = True
        except PermissionError:
            alive = True
        except OSError:
            pass
    doing = "being tested" if role == TESTING else "being trained"
    return f"{doing} by another process{f' (pid {pid})' if alive else ''}"


def _read_holder(handle) -> str:
    """The holder's "<pid> <role>"; empty where the OS keeps a locked file from being read (Windows)."""
    try:
        handle.seek(0)
        return handle.read()
    except OSError:
        return ""


class RunRecord:
    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.history: list[dict[str, Any]] = self.read_history(self.folder)
        self.summary: dict[str, Any] = self.read_summary(self.folder)

    @contextmanager
    def exclusive(self, role: str = TRAINING, busy: str = "wait for it or use another --run_id"):
        """Held for the whole run (`role` training) or a test of it (testing): a second process on the run folder
        is refused, never interleaved. The holder writes its process id and role in the lock file, so a refusal
        can say who holds it."""
        handle = open(self.folder / ".lock", "a+")
        deadline = time.monotonic() + 0.5  # a moment's shared lock (another process looking: `held_by`) is no holder
        while True:
            if try_lock(handle):
                break
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            holder = _holder(_read_holder(handle))
            handle.close()
            raise UserError(f"run {self.folder.name} is {holder} in {self.folder}: {busy}")
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()} {role}")
            handle.flush()
            yield self
        finally:
            handle.truncate(0)
            unlock(handle)
            handle.close()

    @staticmethod
    def _lock_holder(folder: Path) -> str | None:
        """The lock file's "<pid> <role>" while a process holds it; None when nobody does. Creates nothing."""
        path = Path(folder) / ".lock"
        if not path.exists():
            return None
        with open(path) as handle:
            if not try_lock(handle, shared=True):
                return _read_holder(handle)
            unlock(handle)
        return None

    @staticmethod
    def held_by(folder: Path) -> str | None:
        """Who holds the run's lock, in words ("being trained by another process (pid 12)"); None when nobody does."""
        text = RunRecord._lock_holder(folder)
        return None if text is None else _holder(text)

    @staticmethod
    def in_training(folder: Path) -> bool:
        """Whether a process is training the run right now (not merely testing it)."""
        text = RunRecord._lock_holder(folder)
        return text is not None and text.strip().partition(" ")[2] != TESTING

    # config
    def write_config(self, config: dict[str, Any]) -> None:
        write_text(self.folder / CONFIG_FILE, yaml.safe_dump(config, sort_keys=True))

    def read_config(self) -> dict[str, Any] | None:
        return self.saved_config(self.folder)

    @staticmethod
    def saved_config(folder: Path) -> dict[str, Any] | None:
        """The run's config.yaml (read-only: unlike a RunRecord, creates nothing). A damaged one is a one-line error:
        without it, the commands that need the run's settings take them from its checkpoint."""
        path = Path(folder) / CONFIG_FILE
        if not path.exists():
            return None
        fix = (f"delete it and run the command again: the run's {LAST_CHECKPOINT} and {BEST_CHECKPOINT} keep the "
               "settings it trained with (give its paths, such as --data_dir, again)")
        try:
            saved = read_yaml(path, "run config")
        except UserError as exc:
            raise UserError(f"{exc}; {fix}") from None
        if not isinstance(saved, dict):
            raise UserError(f"run config {path} holds no mapping of settings; {fix}")
        return saved

    # metrics
    @staticmethod
    def read_history(folder: Path) -> list[dict[str, Any]]:
        """The epochs recorded in `folder` (read-only: other processes may be writing it)."""
        path = Path(folder) / METRICS_FILE
        if not path.exists():
            return []
        rows = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):
                break  # a torn last line cannot happen with atomic writes, but never trust a file blindly
            if not isinstance(row, dict) or not isinstance(row.get(M.EPOCH), int):
                break
            rows.append(row)
        return rows

    def truncate_history(self, completed_epochs: int, saved: list[dict[str, Any]] | None = None) -> None:
        """Keep the epochs a resumed run has completed: from the checkpoint's copy when given (a new machine)."""
        rows = saved if saved is not None else self.history
        self.history = [row for row in rows if row[M.EPOCH] <= completed_epochs]
        self._write_metrics()

    def append_epoch(self, row: dict[str, Any]) -> None:
        self.history = [r for r in self.history if r[M.EPOCH] < row[M.EPOCH]] + [row]
        self._write_metrics()

    def _write_metrics(self) -> None:
        write_text(self.folder / METRICS_FILE, "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.history))

    # summary
    def update_summary(self, **values: Any) -> dict[str, Any]:
        self.summary.update(values)
        write_json(self.folder / SUMMARY_FILE, self.summary)
        return self.summary

    def drop_summary(self, *keys: str) -> None:
        for key in keys:
            self.summary.pop(key, None)
        write_json(self.folder / SUMMARY_FILE, self.summary)

    def set_aside_previous_model(self) -> bool:
        """A fresh start in a folder that holds an earlier model (a refused checkpoint, another config under the
        same run id): its best.pt and test results move aside (best.previous.pt, test.previous/) and its
        figures leave the summary, so nothing of it is ever reported or tested as this run's."""
        best = self.folder / BEST_CHECKPOINT
        earlier = self.set_aside_test() or best.exists() or M.BEST_VAL_ACC in self.summary
        if best.exists():
            best.replace(self.folder / PREVIOUS_BEST)
        self.drop_summary(M.TEST_ACC, M.BEST_VAL_ACC, M.BEST_EPOCH, M.EPOCHS_COMPLETED, "resumed_from_epoch",
                          "stopped_by_patience")
        return earlier

    def keep_previous_record(self) -> list[str]:
        """Copies of config.yaml, metrics.jsonl and summary.json as *.previous.*, before a run id is trained again
        with another config; the names of the copies."""
        kept = []
        for name in (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE):
            path = self.folder / name
            if path.exists():
                copy = path.with_name(f"{path.stem}.previous{path.suffix}")
                write_text(copy, path.read_text())
                kept.append(copy.name)
        return kept

    def set_aside_test(self) -> bool:
        """The test results of a best.pt about to be replaced move to test.previous/ and leave the summary."""
        results = self.folder / "test"
        if not results.exists():
            return False
        previous = self.folder / "test.previous"
        shutil.rmtree(previous, ignore_errors=True)
        results.rename(previous)
        self.drop_summary(M.TEST_ACC)
        return True

    @staticmethod
    def read_summary(folder: Path) -> dict[str, Any]:
        path = Path(folder) / SUMMARY_FILE
        try:
            data = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError, RecursionError):  # unreadable, not UTF-8, not JSON
            return {}
        return data if isinstance(data, dict) else {}

    @staticmethod
    def settle(folder: Path, state: str = M.PREEMPTED, reason: str | None = None,
               exit_code: int | None = None) -> dict[str, Any]:
        """The run's summary, where one that still says running while no process trains the run (it died before it
        could record how it ended: a full disk, a kill) becomes `state` with `reason`, in summary.json too when the
        folder can be written. An unheld lock is the proof: the trainer holds it for the whole run."""
        summary = RunRecord.read_summary(folder)
        if summary.get(M.STATE) != M.RUNNING or RunRecord.in_training(folder):
            return summary
        reason = reason or ("its process ended before it could record how (a full disk or a kill, most often); "
                            f"relaunched with run_id={Path(folder).name} it resumes from its checkpoint")
        summary.update({M.STATE: state, M.REASON: reason, M.EXIT_CODE: exit_code})
        try:
            write_json(Path(folder) / SUMMARY_FILE, summary)
        except OSError:  # a read-only copy, or the disk is still full: the summary returned says it all the same
            pass
        return summary
