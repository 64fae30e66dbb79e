"""Disk checks made before writing, so a read-only or full disk is a one-line error naming the folder and the
option to change, never a bus error from a memory-mapped file or an error from deep inside torch.save."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from common.errors import UserError

MARGIN = 64 * 2**20  # left free beyond the file itself: logs, summaries and the system's own needs


def write_problem(folder: Path) -> str | None:
    """Create `folder` if needed and write a file in it: None if that works, else why not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def ensure_writable(folder: Path | str, what: str, option: str) -> Path:
    """`folder`, created if needed and proven writable; else a one-line error saying which option to change."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{what} {folder} is a file, not a folder: pass {option} with a folder")
    problem = write_problem(folder)
    if problem:
        raise UserError(f"{what} {folder} is not writable ({problem}): pass {option} with a writable folder")
    return folder


DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # the disk's state, not the file's or the code's
PERMISSION_ERRNOS = (errno.EACCES, errno.EPERM)


def disk_cause(exc: BaseException | None) -> OSError | None:
    """The full or read-only disk behind `exc`: itself, or an error it was raised from or while handling. torch.save
    reports a disk that fills up as a RuntimeError ("unexpected pos ...") raised while handling the OSError."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def disk_problem(exc: BaseException, hint: str = "choose a folder you can write to",
                 permissions: bool = False) -> UserError | None:
    """A full or read-only disk, wherever in `exc`'s chain it struck (with `permissions`, also a file this user may
    not touch), as a one-line UserError naming the file; None for other errors."""
    if not (permissions and isinstance(exc, OSError) and exc.errno in PERMISSION_ERRNOS):
        exc = disk_cause(exc)
        if exc is None:
            return None
    where = exc.filename or "a file"
    if exc.errno in PERMISSION_ERRNOS:
        return UserError(f"{exc.strerror or exc} for {where}: check its permissions, or {hint}")
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return UserError(f"{exc.strerror or exc} for {where}: {'free some space or ' if full else ''}{hint}")


def size_text(count: int) -> str:
    if count >= 2**30:
        return f"{count / 2**30:.1f} GB"
    return f"{count / 2**20:.0f} MB" if count >= 10 * 2**20 else f"{count / 2**20:.1f} MB"


def ensure_space(folder: Path | str, needed: int, what: str, option: str) -> None:
    """Refuse to start writing `needed` bytes into `folder` unless they fit with a margin to spare (as large as
    the file, up to MARGIN: logs and summaries still have to fit after it)."""
    free, margin = shutil.disk_usage(folder).free, min(MARGIN, needed)
    if free < needed + margin:
        raise UserError(f"not enough free space in {folder} for {what}: it needs {size_text(needed)} "
                        f"(and {size_text(margin)} to spare) but {size_text(free)} are free; free "
                        f"some space or pass {option} on a bigger disk")


def reserve(path: Path, size: int, what: str, option: str) -> None:
    """Create `path` with `size` bytes allocated on disk. A memory-mapped file is sparse: without its blocks
    reserved, a disk that another writer fills meanwhile kills the process with SIGBUS instead of an error."""
    ensure_space(path.parent, size, what, option)
    with open(path, "wb") as handle:
        try:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(handle.fileno(), 0, size)
            else:  # macOS: no reservation, the size only
                handle.truncate(size)
        except OSError as exc:
            # a file system that cannot reserve: the checked space has to do
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                handle.truncate(size)
                return
            path.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise UserError(f"not enough free space in {path.parent} for {what} ({size_text(size)}): free some "
                                f"space or pass {option} on a bigger disk") from None
            raise
        except BaseException:  # Ctrl-C during a slow reservation: no partial file left
            path.unlink(missing_ok=True)
            raise
