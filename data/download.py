"""Fetch and unpack nature_12K.zip: resumable, atomic download and an extraction that refuses zip-slip.

A download streams into `<dest>.part` and is renamed to `<dest>` only once complete, so an interrupted
run never leaves something that looks finished; the next run resumes the `.part` with an HTTP Range request.
Extraction writes into a hidden staging folder first and moves the finished tree into place.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import shutil
import stat
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path

from tqdm.auto import tqdm  # a widget in a notebook

from common.atomic import write_text
from common.disk import ensure_space, size_text, write_problem
from common.errors import UserError
from common.locks import file_lock
from common.terminal import live_output

NATURE_12K_URL = "https://storage.googleapis.com/wandb_datasets/nature_12K.zip"
ZIP_NAME = "nature_12K.zip"
MARKER_NAME = ".nature_12K.complete"
LOCK_NAME = ".nature_12K.download.lock"
MANUAL_HINT = (
    "download nature_12K.zip yourself, unzip it, and pass --data_dir=/path/to/inaturalist_12K "
    "(or a folder with train/ and val/ class folders)"
)

log = logging.getLogger(__name__)


class _Incomplete(Exception):
    """The server ended the body early or answered with bytes we cannot append."""


def download_file(
    url: str,
    dest: Path,
    *,
    progress: bool | None = None,
    timeout: float = 60.0,
    chunk_bytes: int = 1 << 20,
    unpacked_ratio: float = 0.0,
) -> Path:
    """Download `url` to `dest`, resuming `<dest>.part` if a previous run left one; return `dest`.

    Before any byte is written, the disk must hold what is left to download plus `unpacked_ratio` times the whole
    file (what the caller will unpack from it), so a full disk is a one-line error at once, not after the download.
    """
    dest = Path(dest)
    if dest.exists():
        return dest
    part = dest.with_suffix(dest.suffix + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create {dest.parent} to download into "
                        f"({error.strerror or error}): pass a --data_dir you can write to") from None
    try:
        _fetch(url, part, _want_progress(progress), timeout, chunk_bytes, unpacked_ratio)
    except (OSError, http.client.HTTPException, _Incomplete) as error:
        # URLError, HTTPError and socket timeouts are all OSErrors; IncompleteRead is an HTTPException.
        raise UserError(_failure_message(url, part, error, timeout)) from error
    os.replace(part, dest)
    return dest


def safe_extract(zip_path: Path, target_dir: Path) -> None:
    """Unpack `zip_path` into `target_dir`, refusing any entry that could write outside it.

    Every entry is checked before anything is written, so a hostile archive extracts nothing.
    """
    zip_path, target_dir = Path(zip_path), Path(target_dir)
    if not zip_path.is_file():
        raise UserError(f"cannot extract {zip_path}: no such file")
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = [info for info in archive.infolist() if not _is_junk(info.filename)]
            for info in members:
                problem = _unsafe_reason(info)
                if problem:
                    raise UserError(
                        f"refusing to extract {zip_path}: entry {info.filename!r} {problem}; nothing was "
                        f"extracted; delete {zip_path} and download it again, or {MANUAL_HINT}"
                    )
            if not members:
                raise UserError(f"{zip_path} holds no files; delete it and run again to download it afresh")
            _extract_members(archive, members, zip_path, target_dir)
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise UserError(
            f"{zip_path} is not a readable zip file ({error}); delete it and run again to download it afresh"
        ) from error


def download_dataset(dest_dir: Path, url: str = NATURE_12K_URL, *, progress: bool | None = None) -> Path:
    """Download (resuming) and extract nature_12K.zip into `dest_dir`; a no-op once it has completed."""
    dest_dir = Path(dest_dir)
    marker = dest_dir / MARKER_NAME
    if not marker.exists():  # e.g. a mistyped path under a read-only attached-data folder
        problem = write_problem(dest_dir)
        if problem:
            raise UserError(f"{dest_dir} holds no dataset, and nature_12K cannot be downloaded "
                            f"into it ({problem}): pass the --data_dir of the dataset itself "
                            "(check the path of an attached dataset), or one you can write to")
    # One download at a time into a folder: parallel trials or sweeps sharing a data_dir would interleave
    # their writes into one .part file. The others wait, then find the marker.
    with file_lock(dest_dir / LOCK_NAME):
        if marker.exists():
            log.info("nature_12K is already in %s", dest_dir)
            return dest_dir
        # JPEGs do not compress: the unpacked images take about as much space as the zip.
        zip_path = download_file(url, dest_dir / ZIP_NAME, progress=progress, unpacked_ratio=1.0)
        safe_extract(zip_path, dest_dir)
        # The marker is written last, so its presence means the whole tree is in place.
        write_text(marker, f"extracted {zip_path.name} from {url}\n")
        (dest_dir / LOCK_NAME).unlink(missing_ok=True)  # whoever waits on it finds the marker; so would a newcomer
    tree = dest_dir / "inaturalist_12K"
    log.info("nature_12K is in %s (%s may be deleted)", tree if tree.is_dir() else dest_dir, zip_path)
    return dest_dir


def _fetch(url: str, part: Path, show_progress: bool, timeout: float, chunk_bytes: int, unpacked_ratio: float) -> None:
    """Bring `part` to the full remote content, resuming what it already holds."""
    # A second pass happens only when the server refused to resume; the loop cannot spin.
    for _attempt in range(2):
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
        except urllib.error.HTTPError as error:
            if error.code != 416 or not have:
                raise
            total = _content_range_total(error.headers.get("Content-Range"))
            error.close()
            if total == have:
                return
            log.info("the server cannot resume %s at byte %d; starting over", part.name, have)
            part.unlink()
            continue
        with response:
            if response.status == 206:
                start, total = _content_range(response.headers.get("Content-Range"))
                if start != have:
                    log.info("the server resumed %s at byte %s, not %d; starting over", part.name, start, have)
                    part.unlink()
                    continue
            else:
                if have:
                    log.info("the server ignored the resume request for %s; starting over", part.name)
                have = 0
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
            if total is not None:
                _ensure_room(part, total - have + int(unpacked_ratio * total), total, unpacked_ratio)
            _stream(response, part, have, total, url, show_progress, chunk_bytes)
        size = part.stat().st_size
        if total is not None and size != total:
            raise _Incomplete(f"the connection ended after {size} of {total} bytes")
        return
    raise _Incomplete("the server would not send the file from the start")


def _stream(
    response, part: Path, have: int, total: int | None, url: str, show_progress: bool, chunk_bytes: int
) -> None:
    """Append the response body to `part` (or rewrite it when `have` is 0), with a progress bar or two log lines."""
    started = time.monotonic()
    if not show_progress:
        resuming = f", resuming at {have} bytes" if have else ""
        log.info("downloading %s to %s (%s bytes%s)", url, part, total if total is not None else "unknown", resuming)
    bar = tqdm(
        total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
        desc=part.name.removesuffix(".part"), disable=not show_progress,
    )
    with bar, open(part, "ab" if have else "wb") as handle:
        while chunk := response.read(chunk_bytes):
            handle.write(chunk)
            bar.update(len(chunk))
        handle.flush()
        # fsync before the caller's rename, so a power cut cannot leave a complete-looking empty file.
        os.fsync(handle.fileno())
    if not show_progress:
        log.info("downloaded %d bytes in %.0f s", part.stat().st_size - have, time.monotonic() - started)


def _ensure_room(part: Path, needed: int, total: int, unpacked_ratio: float) -> None:
    name = part.name.removesuffix(".part")
    what = f"{name} ({size_text(total)})" + (" and what is unpacked from it" if unpacked_ratio else "")
    ensure_space(part.parent, needed, what, "--data_dir")


def _want_progress(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    try:
        return live_output()
    except (AttributeError, ValueError):
        return False


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) from `bytes a-b/total`; total is None when the server wrote `*`."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", header or "")
    if not match:
        return None, None
    return int(match.group(1)), None if match.group(2) == "*" else int(match.group(2))


def _content_range_total(header: str | None) -> int | None:
    """Total size from a 416 answer's `bytes */total`."""
    match = re.fullmatch(r"\s*bytes\s+\*/(\d+)\s*", header or "")
    return int(match.group(1)) if match else None


def _failure_message(url: str, part: Path, error: BaseException, timeout: float) -> str:
    if isinstance(error, urllib.error.HTTPError):
        reason = f"HTTP {error.code} {error.reason}"
    elif isinstance(error, urllib.error.URLError):
        reason = str(error.reason)
    elif isinstance(error, TimeoutError):
        reason = f"no data for {timeout:g} s"
    else:
        reason = str(error) or type(error).__name__
    kept = part.stat().st_size if part.exists() else 0
    if kept:
        partial = f"the partial download ({kept} bytes) is kept at {part} and the next run resumes it"
    else:
        partial = "nothing was kept; run again to retry"
    return f"could not download {url}: {reason}; {partial}; to skip the download, {MANUAL_HINT}"


def _parts(name: str) -> list[str]:
    # Some zip tools write Windows separators; treat them as separators so `..\\x` is caught too.
    return [part for part in re.split(r"[\\/]", name) if part not in ("", ".")]


def _is_junk(name: str) -> bool:
    parts = _parts(name)
    return not parts or parts[0] == "__MACOSX"


def _unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    """Why this entry could write outside the target, or None when it is safe."""
    name = info.filename
    if stat.S_ISLNK(info.external_attr >> 16):
        return "is a symbolic link"
    if name.startswith(("/", "\\")):
        return "is an absolute path"
    if re.match(r"[A-Za-z]:", name):
        return "starts with a drive letter"
    if ".." in _parts(name):
        return "climbs out of the folder with '..'"
    return None


def _extract_members(
    archive: zipfile.ZipFile, members: list[zipfile.ZipInfo], zip_path: Path, target_dir: Path
) -> None:
    """Extract into a staging folder beside the final tree, then move each top-level entry into place."""
    tops = sorted({_parts(info.filename)[0] for info in members})
    for top in tops:
        existing = target_dir / top
        if existing.exists() or existing.is_symlink():
            # It may be the user's own copy, or a finished extraction whose marker write was cut short.
            raise UserError(
                f"cannot extract {zip_path}: {existing} already exists and is left as is; "
                f"pass --data_dir={existing} to use it, or move it away and run again"
            )
    target_dir.mkdir(parents=True, exist_ok=True)
    unpacked = sum(info.file_size for info in members)
    ensure_space(target_dir, unpacked, f"the files in {zip_path.name}", "--data_dir")
    # Staging inside target_dir keeps the final rename on one file system, so it is a rename, not a copy.
    staging = Path(tempfile.mkdtemp(prefix=f".{zip_path.stem}.extract-", dir=target_dir))
    try:
        for info in members:
            archive.extract(info, staging)
        for top in tops:
            os.replace(staging / top, target_dir / top)
    except OSError as error:
        raise UserError(
            f"could not extract {zip_path} into {target_dir}: {error}; free some space or pick another folder"
        ) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
