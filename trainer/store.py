"""Where checkpoints live beyond the run folder, so a trial can resume on a machine whose disk is empty.

One small interface: `save(path)` after every local checkpoint, `fetch(dest)` before a run starts.
- `LocalStore`: the run folder only (the checkpoint is already there).
- `FolderStore`: a copy in another folder (Google Drive, /kaggle/working), one file per run id.
- `ArtifactStore`: a W&B artifact per run (`checkpoint-<run id>`), a new version per save, uploaded in a
  background thread so training does not stall; older versions are pruned. An upload that fails warns once
  and the run goes on with its local checkpoints.
"""

from __future__ import annotations

import queue
import shutil
import sys
import threading
from pathlib import Path

from common.atomic import atomic_write
from common.errors import UserError


class LocalStore:
    name = "local"

    def save(self, path: Path) -> None: ...

    def fetch(self, dest: Path) -> bool:
        return dest.exists()

    def close(self) -> None: ...


class FolderStore(LocalStore):
    name = "folder"

    def __init__(self, folder: Path | str, run_id: str):
        self.path = Path(folder).expanduser() / run_id / "last.pt"

    def save(self, path: Path) -> None:
        with open(path, "rb") as source:
            atomic_write(self.path, lambda out: shutil.copyfileobj(source, out, 1 << 20), mode="wb")

    def fetch(self, dest: Path) -> bool:
        if dest.exists():
            return True
        if not self.path.exists():
            return False
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "rb") as source:
            atomic_write(dest, lambda out: shutil.copyfileobj(source, out, 1 << 20), mode="wb")
        return True


class ArtifactStore(LocalStore):
    name = "wandb"
    KIND = "checkpoint"

    def __init__(self, logger, run_id: str, keep_versions: int = 1):
        self.logger, self.artifact = logger, f"checkpoint-{run_id}"
        self.keep_versions = keep_versions
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._warned = False
        self._thread = threading.Thread(target=self._worker, daemon=True, name="checkpoint-upload")
        self._thread.start()

    def save(self, path: Path) -> None:
        # Upload a snapshot, not the live file: the next checkpoint may replace it while uploading.
        snapshot = path.with_name(f".upload-{path.name}")
        shutil.copyfile(path, snapshot)
        try:
            self._queue.put_nowait(snapshot)
        except queue.Full:
            pass  # an upload is still running; the next save will carry a newer checkpoint anyway

    def _worker(self) -> None:
        while True:
            snapshot = self._queue.get()
            if snapshot is None:
                return
            try:
                final = snapshot.with_name("last.pt.upload")
                snapshot.replace(final)
                self.logger.log_artifact_file(final, self.artifact, self.KIND, ["latest"])
            except Exception as exc:
                if not self._warned:
                    self._warned = True
                    print(f"warning: checkpoint upload to W&B failed ({type(exc).__name__}: {exc}); local checkpoints are kept", file=sys.stderr)
                continue
            try:
                self._prune()
            except Exception:
                pass  # housekeeping: a failed prune costs storage on W&B, never the run

    def _prune(self) -> None:
        """Delete all but the newest versions, so a long run does not pile up gigabytes of checkpoints."""
        import wandb

        run = getattr(self.logger, "run", None)
        if run is None or not getattr(self.logger, "online", False):
            return
        api = wandb.Api(timeout=30)
        versions = list(api.artifacts(self.KIND, f"{run.entity}/{run.project}/{self.artifact}"))
        for version in versions[self.keep_versions :]:
            if "latest" not in (version.aliases or []):
                version.delete()

    def fetch(self, dest: Path) -> bool:
        if dest.exists():
            return True
        return self.logger.download_artifact_file(self.artifact, "last.pt.upload", dest)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=600)


def make_store(choice: str, logger, run_id: str) -> LocalStore:
    if choice == "local" or (choice == "auto" and not logger.online):
        return LocalStore()
    if choice in ("auto", "wandb"):
        if choice == "wandb" and logger.mode == "disabled":
            raise UserError("checkpoint_store=wandb needs W&B logging: drop --wandb_mode=disabled or use --checkpoint_store=local")
        return ArtifactStore(logger, run_id)
    return FolderStore(choice, run_id)
