"""Where checkpoints live beyond the run folder, so a trial can resume on a machine whose disk is empty.

One small interface: `save(path)` after every local checkpoint, `fetch(dest)` before a run starts.
- `LocalStore`: the run folder only (the checkpoint is already there).
- `FolderStore`: a copy in another folder (Google Drive, /kaggle/working), one file per run id.
- `ArtifactStore`: W&B artifacts per run (`checkpoint-<run id>`, `best-<run id>`), a new version per save, uploaded in a
  background thread so training does not stall; older versions are pruned. An upload that fails warns once
  and the run goes on with its local checkpoints.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import threading
from pathlib import Path

from common.atomic import atomic_write
from common.disk import ensure_space, ensure_writable
from common.errors import UserError
from trainer.record import CONFIG_FILE, LAST_CHECKPOINT, RunRecord

STORE_CHOICES = ("auto", "local", "wandb")  # the named stores; any other --checkpoint_store is a folder


class LocalStore:
    """The run folder only: `save` has nothing to add, `fetch` finds what is already there."""

    name = "local"

    def save(self, path: Path) -> None: ...

    def fetch(self, dest: Path) -> bool:
        return dest.exists()

    def set_aside(self, renames: dict[str, str]) -> None:
        """Rename the store's own copies (`last.pt` -> `last.refused.pt`): the run folder renames its files itself."""

    def close(self, timeout: float | None = None) -> None: ...


class FolderStore(LocalStore):
    """A copy of each checkpoint file (last.pt, best.pt) in `<folder>/<run id>/`."""

    name = "folder"

    def __init__(self, folder: Path | str, run_id: str):
        root = Path(folder).expanduser()
        # Checked before training, not after its first epoch. A missing parent is a drive not mounted (Colab's
        # /content/drive/MyDrive): creating the tree would put the "safe" copies on the disk that goes away.
        if not root.exists() and not root.parent.is_dir():
            raise UserError(f"checkpoint store {root}: {root.parent} does not exist (a drive not mounted?); mount it "
                            "or create the folder, then run again")
        ensure_writable(root, "checkpoint store", "--checkpoint_store")
        self.folder = root / run_id

    def save(self, path: Path) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        ensure_space(self.folder, path.stat().st_size, f"the copy of {path.name}", "--checkpoint_store")
        _copy_atomic(path, self.folder / path.name)
        config = path.parent / CONFIG_FILE
        if path.name == LAST_CHECKPOINT and config.is_file():  # what `--resume` on a new machine reads
            _copy_atomic(config, self.folder / CONFIG_FILE)

    def fetch(self, dest: Path) -> bool:
        if dest.exists():
            return True
        source = self.folder / dest.name
        if not source.exists():
            return False
        _copy_atomic(source, dest)
        return True

    def set_aside(self, renames: dict[str, str]) -> None:
        for name, new_name in renames.items():
            if (self.folder / name).exists():
                os.replace(self.folder / name, self.folder / new_name)


def stored_config(choice: str, run_id: str) -> dict | None:
    """The config of run `run_id` in a folder store, or None: what `--resume` takes on a new machine, where the run
    folder went with the old session and only the store is left. Its config.yaml (the whole config, W&B project
    included) when the store has one, else the effective config inside its last.pt."""
    if choice in STORE_CHOICES:
        return None
    folder = Path(choice).expanduser() / run_id
    try:
        saved = RunRecord.saved_config(folder)
    except UserError:  # damaged: the checkpoint's own copy of the config stands in
        saved = None
    return saved if isinstance(saved, dict) else checkpoint_config(folder / LAST_CHECKPOINT)


def checkpoint_config(path: Path) -> dict | None:
    """The effective config a checkpoint was trained with, or None (no file, or not readable)."""
    if not Path(path).is_file():
        return None
    import torch

    try:  # mmap: the tensors are not read, only the small dicts
        config = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("config")
    except Exception:  # unreadable: the run itself refuses it with the reason
        return None
    return dict(config) if isinstance(config, dict) else None


def _copy_atomic(source: Path, target: Path) -> None:
    with open(source, "rb") as handle:
        atomic_write(target, lambda out: shutil.copyfileobj(handle, out, 1 << 20), mode="wb")


class ArtifactStore(LocalStore):
    """One W&B artifact per checkpoint file and run (`checkpoint-<id>`, `best-<id>`), uploaded in the background.

    Each save snapshots the file under a unique name, so an upload never reads a file being written; a newer
    snapshot of the same file replaces one still waiting, since only the latest matters.
    """

    name = "wandb"
    KIND = "checkpoint"

    def __init__(self, logger, run_id: str, keep_versions: int = 1):
        self.logger, self.run_id, self.keep_versions = logger, run_id, keep_versions
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pending: dict[str, Path] = {}
        self._closing = False
        self._abandoned = False  # the deadline of close() passed: what still waits is left to the run folder
        self._warned = False
        self._thread = threading.Thread(target=self._worker, daemon=True, name="checkpoint-upload")
        self._thread.start()

    def artifact_name(self, filename: str) -> str:
        return f"{'best' if filename.startswith('best') else 'checkpoint'}-{self.run_id}"

    def save(self, path: Path) -> None:
        snapshot = path.with_name(f".upload-{secrets.token_hex(4)}-{path.name}")
        shutil.copyfile(path, snapshot)
        with self._lock:
            superseded = self._pending.pop(path.name, None)
            self._pending[path.name] = snapshot
        if superseded is not None:
            superseded.unlink(missing_ok=True)
        self._wake.set()

    def _worker(self) -> None:
        while True:
            self._wake.wait()
            with self._lock:
                batch, self._pending = self._pending, {}
                self._wake.clear()
                closing = self._closing
            for filename, snapshot in batch.items():
                if self._abandoned:
                    snapshot.unlink(missing_ok=True)
                    continue
                self._upload(filename, snapshot)
            if closing:
                with self._lock:
                    if not self._pending:
                        return

    def _upload(self, filename: str, snapshot: Path) -> None:
        try:
            self.logger.log_artifact_file(snapshot, self.artifact_name(filename), self.KIND, ["latest"],
                                          filename=filename)
        except Exception as exc:
            if not self._warned:
                self._warned = True
                print(
                    "warning: checkpoint upload to W&B failed "
                    f"({type(exc).__name__}: {exc}); local checkpoints are kept", file=sys.stderr)
            return
        finally:
            snapshot.unlink(missing_ok=True)
        try:
            self._prune(self.artifact_name(filename))
        except Exception:
            pass  # housekeeping: a failed prune costs storage on W&B, never the run

    def _prune(self, artifact: str) -> None:
        """Delete all but the newest versions, so a long run does not pile up gigabytes of checkpoints."""
        import wandb

        run = getattr(self.logger, "run", None)
        if run is None or not getattr(self.logger, "online", False):
            return
        api = wandb.Api(timeout=30)
        versions = list(api.artifacts(self.KIND, f"{run.entity}/{run.project}/{artifact}"))
        for version in versions[self.keep_versions :]:
            if "latest" not in (version.aliases or []):
                version.delete()

    def fetch(self, dest: Path) -> bool:
        if dest.exists():
            return True
        return self.logger.download_artifact_file(self.artifact_name(dest.name), dest.name, dest)

    def close(self, timeout: float | None = 600) -> None:
        """Wait for queued uploads, at most `timeout` seconds (a stopped run: its kill follows). Uploads not begun by
        then are dropped: the run folder keeps the checkpoint, and the store's previous version is already safe."""
        with self._lock:
            self._closing = True
        self._wake.set()
        self._thread.join(timeout=timeout)
        if self._thread.is_alive():
            with self._lock:
                self._abandoned = True
                left, self._pending = self._pending, {}
            for snapshot in left.values():
                snapshot.unlink(missing_ok=True)
            print(f"note: checkpoint upload to W&B not finished within {timeout:.0f} s; left to the run folder's own "
                  "copy", flush=True)


def make_store(choice: str, logger, run_id: str) -> LocalStore:
    if choice == "local" or (choice == "auto" and not logger.online):
        return LocalStore()
    if choice in ("auto", "wandb"):
        if choice == "wandb" and logger.mode == "disabled":
            raise UserError(
                "checkpoint_store=wandb needs W&B logging: drop --wandb_mode=disabled or use --checkpoint_store=local")
        return ArtifactStore(logger, run_id)
    return FolderStore(choice, run_id)
