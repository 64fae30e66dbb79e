"""Advisory file locks between processes: a run folder's trainer, a sweep folder's driver, runs of one sweep
building a cache, drivers downloading a dataset. Every lock is released when its process dies.

The one home of the operating system's lock calls. Where the OS has `flock` (Linux, macOS) it is used as it
always was, shared locks included; elsewhere (Windows) the filelock package's native lock of a descriptor
(LockFileEx), which is exclusive only, so a shared look is a brief exclusive one, which the run lock's holder
already waits out. A platform with neither locks nothing, and says so by running as before.
"""

from __future__ import annotations

import errno
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def _flock():
    """The fcntl module, imported here only: it does not exist on Windows."""
    try:
        import fcntl
    except ImportError:
        return None
    return fcntl


def _native():
    """filelock's (lock_descriptor, unlock_descriptor), or None where the platform has no native lock."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "only soft file lock is available": we use none of its soft locks
            from filelock import lock_descriptor, unlock_descriptor
    except ImportError:
        return None
    return lock_descriptor, unlock_descriptor


def _no_native_lock(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP)


def try_lock(handle: IO, shared: bool = False) -> bool:
    """Lock an open file without waiting: True when this process now holds it, False when another one does."""
    fcntl = _flock()
    if fcntl is not None:
        try:
            fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
    native = _native()
    if native is None:
        return True
    try:
        return native[0](handle.fileno(), blocking=False)
    except OSError as exc:
        if _no_native_lock(exc):
            return True
        raise


def lock(handle: IO) -> None:
    """An exclusive lock of an open file, waiting for it."""
    fcntl = _flock()
    if fcntl is not None:
        fcntl.flock(handle, fcntl.LOCK_EX)
        return
    native = _native()
    if native is None:
        return
    try:
        native[0](handle.fileno(), blocking=True)
    except OSError as exc:
        if not _no_native_lock(exc):
            raise


def unlock(handle: IO) -> None:
    fcntl = _flock()
    if fcntl is not None:
        fcntl.flock(handle, fcntl.LOCK_UN)
        return
    native = _native()
    if native is None:
        return
    try:
        native[1](handle.fileno())
    except OSError as exc:
        if not _no_native_lock(exc):
            raise


@contextmanager
def file_lock(path: Path):
    """An exclusive advisory lock held for the duration of the block (released if the process dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        lock(handle)
        try:
            yield
        finally:
            unlock(handle)
