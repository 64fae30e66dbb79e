"""Disk checks made before writing, so a read-only or full disk is a one-line error naming the folder and the
option to change, never a bus error from a memory-mapped file or an error from deep inside torch.save."""

from __future__ import annotations

import errno
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
    problem = write_problem(folder)
    if problem:
        raise UserError(f"{what} {folder} is not writable ({problem}): pass {option} with a writable folder")
    return folder


DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def disk_problem(exc: BaseException, hint: str = "choose a folder you can write to") -> UserError | None:
    """A full, read-only or forbidden disk as a one-line UserError naming the file; None for other errors."""
    if not isinstance(exc, OSError) or exc.errno not in DISK_ERRNOS:
        return None
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return UserError(f"{exc.strerror or exc} for {exc.filename or 'a file'}: {'free some space or ' if full else ''}{hint}")


def size_text(count: int) -> str:
    if count >= 2**30:
        return f"{count / 2**30:.1f} GB"
    return f"{count / 2**20:.0f} MB" if count >= 10 * 2**20 else f"{count / 2**20:.1f} MB"


def ensure_space(folder: Path | str, needed: int, what: str, option: str) -> None:
    """Refuse to start writing `needed` bytes into `folder` unless they fit with a margin to spare."""
    free = shutil.disk_usage(folder).free
    if free < needed + MARGIN:
        raise UserError(f"not enough free space in {folder} for {what}: it needs {size_text(needed)} and "
                        f"{size_text(free)} are free; free some space or pass {option} on a bigger disk")
