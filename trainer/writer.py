"""Checkpoint writes off the training loop's critical path.

Serialising and fsyncing a full fine-tuning checkpoint takes seconds (ResNet-50 with AdamW: 307 MB, 0.6-1.3 s
on a fast disk; ViT-B/16: 1 GB), about as long as a GPU epoch over a few thousand images. The loop only
takes a host-memory snapshot (`checkpoint_payload`) and hands the write, and what follows it (best.pt,
the checkpoint store), to a background thread.

At most one write is in flight: the next checkpoint waits for it, so host memory holds two snapshots at
most and files are written in order. A write that failed (a full disk) is raised by the next call, so the
run still ends with its reason. `close()` waits for the last write: a run never ends, nor exits on a
signal, with its final checkpoint unwritten; a SIGKILL during a write leaves the previous file (writes are
atomic), from which the run resumes, replaying at most the last epoch. Validation waits for a write in
flight (`Loop.writes_done`): its loader forks worker processes, and no process should fork while another of
its threads holds a lock.

Only GPU runs write in the background: there the training thread mostly waits for kernels. On a CPU the
writer shares the cores with PyTorch's OpenMP threads, and the gain is a coin toss: ResNet-50 on 2 cores,
background / synchronous per-epoch overhead went from 3.1x better to 2x worse between runs of
benchmarks/checkpoint.py. A CPU run therefore writes in the loop, without the host copy.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class CheckpointWriter:
    def __init__(self, background: bool = True):
        self.background = background
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, job: Callable[[], None]) -> None:
        """Run `job` (write the snapshot, then keep/store it) after the previous one, in the background."""
        self.flush()
        if not self.background:
            job()
            return
        # Not a daemon: the interpreter never exits with a checkpoint half-written by a thread it abandoned.
        self._thread = threading.Thread(target=self._run, args=(job,), daemon=False, name="checkpoint-writer")
        self._thread.start()

    def _run(self, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as exc:  # raised in the training thread by the next call
            self._error = exc

    def flush(self) -> None:
        """Wait for the write in flight; raise its error, if it failed."""
        interrupted = None
        while self._thread is not None:
            try:
                self._thread.join()
                self._thread = None
            except KeyboardInterrupt as exc:  # Ctrl-C again: the write still finishes, then the interrupt goes on
                interrupted = exc
        if interrupted is not None:
            raise interrupted
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self, quiet: bool = False) -> None:
        """`flush`, keeping quiet about a failed write when the run is already ending on an error of its own."""
        try:
            self.flush()
        except Exception:
            if not quiet:
                raise
