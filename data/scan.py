"""Scan a folder of class sub-folders into an index of readable images; bad files are found here, once.

A corrupt, non-image or too large file is reported at scan time (a count and a few paths) and excluded, so it can
never crash a run in epoch 7; so is every entry that cannot be an image file: a name that is not valid UTF-8, a
symlink loop, a broken link, a folder that cannot be listed. Scan results are cached by the folder's file list,
sizes and mtimes; the files a cached scan skipped are checked again, and the others for read access.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.atomic import write_json
from common.errors import UserError, printable
from data.images import check_image

SCAN_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ImageIndex:
    """Readable images of one folder: paths relative to `root` (posix), integer labels, class names."""

    root: Path
    classes: tuple[str, ...]
    paths: tuple[str, ...]
    labels: np.ndarray = field(repr=False)
    skipped: tuple[tuple[str, str], ...] = ()  # (relative path, reason)
    listing_key: str = ""  # folder, file names, sizes and mtimes: changes whenever any file does
    sizes: tuple[int, ...] = field(default=(), repr=False)  # bytes of each file in `paths`, for the split's data hash

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def fingerprint(self) -> str:
        """Identifies the exact images (where they are, their bytes via size and mtime, and labels); keys the caches.

        Relative paths alone are not enough: two datasets with the same file names (a re-export, another seed
        of a synthetic set) would share a cache and train on each other's pixels.
        """
        digest = hashlib.sha256(self.listing_key.encode())
        for path, label in zip(self.paths, self.labels.tolist()):
            digest.update(f"{path}\t{label}\n".encode())
        return digest.hexdigest()[:16]

    def absolute(self, i: int) -> Path:
        return self.root / self.paths[i]


def _list_files(folder: Path) -> tuple[dict[str, list[os.DirEntry]], dict[str, str]]:
    """The image files of each class folder, and every entry that cannot be one (a name that is not valid UTF-8,
    a symlink loop or a broken link, a folder that cannot be listed) with the reason: skipped and named."""
    if not folder.is_dir():
        raise UserError(
            f"{folder} is not a folder: pass --data_dir pointing at a folder with train/ and val/ class sub-folders")
    refused: dict[str, str] = {}

    def refuse(path: str, reason: str) -> None:
        refused[printable(Path(os.path.relpath(path, folder)).as_posix())] = reason

    def entries(where: str) -> list[os.DirEntry]:
        try:
            with os.scandir(where) as listing:
                return [e for e in listing if not e.name.startswith(".")]
        except OSError as exc:
            if Path(where) == folder:
                raise UserError(f"{folder} cannot be listed ({exc.strerror}): check "
                                "its permissions, or pass another --data_dir") from None
            refuse(where, f"folder cannot be listed ({exc.strerror})")
            return []

    def kind(entry: os.DirEntry) -> str | None:
        """"dir" or "file" (through symlinks), None for anything else; refused when it cannot be used."""
        try:
            found = "dir" if entry.is_dir() else "file" if entry.is_file() else None
        except OSError as exc:  # ELOOP: a link to itself, or a loop of links
            refuse(entry.path,
                   f"symlink loop ({exc.strerror})" if exc.errno == errno.ELOOP else f"cannot be read ({exc.strerror})")
            return None
        if found is None and entry.is_symlink():
            refuse(entry.path, "broken symlink (its target does not exist)")
        elif found is not None and printable(entry.name) != entry.name:
            refuse(entry.path, f"{'folder' if found == 'dir' else 'file'} name is not valid UTF-8: rename it")
            return None
        return found

    classes = sorted(e.name for e in entries(str(folder)) if kind(e) == "dir")
    if not classes:
        raise UserError(f"{folder} has no class sub-folders: expected {folder}/<class name>/<images>")
    if len(classes) == 1:  # one class trains to a meaningless 100 %
        only = folder / classes[0]
        inner = sorted(e.name for e in entries(str(only)) if kind(e) == "dir")
        hint = (f"; its sub-folders ({', '.join(inner[:3])}{', ...' if len(inner) > 3 else ''}) look like the classes: "
                f"move them up into {folder}" if len(inner) > 1 else "; add a folder of images for each further class")
        raise UserError(
            f"{folder} has a single class folder ({classes[0]}): a classifier needs at least 2 class sub-folders{hint}")
    listing = {}
    for name in classes:
        files, pending = [], [str(folder / name)]
        while pending:  # depth first, sorted; folder symlinks are not followed (a link to a parent would never end)
            where = pending.pop()
            found = entries(where)
            pending.extend(sorted((e.path for e in found if not e.is_symlink() and kind(e) == "dir"), reverse=True))
            files.extend(e for e in found if kind(e) == "file")
        listing[name] = sorted(files, key=lambda e: e.path)
    return listing, refused


def _listing_key(folder: Path, listing: dict[str, list[os.DirEntry]]) -> str:
    digest = hashlib.sha256(f"v{SCAN_FORMAT_VERSION}:{folder.resolve()}".encode())
    for name, entries in listing.items():
        for entry in entries:
            stat = entry.stat()
            # Relative to the folder: the same folder reached by a symlink or another spelling shares its caches.
            digest.update(f"{os.path.relpath(entry.path, folder)}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def _check_all(paths: list[str]) -> list[str | None]:
    # PIL releases the GIL while decoding, so threads use every core without pickling paths to processes.
    workers = min(8, os.cpu_count() or 2)
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(check_image, paths, chunksize=64))


def _cached_bad(cache_file: Path | None) -> dict[str, str] | None:
    """The unreadable files a scan of this exact listing found, or None (no cache, or a damaged one: scan again)."""
    if cache_file is None or not cache_file.exists():
        return None
    try:
        bad = json.loads(cache_file.read_text())["bad"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return bad if isinstance(bad, dict) and all(isinstance(r, str) for r in bad.values()) else None


def scan_folder(folder: Path | str, cache_dir: Path | str | None = None, verbose: bool = True) -> ImageIndex:
    """Index `folder/<class>/**/<image>`, excluding unreadable files, with a cached verification pass."""
    folder = Path(folder)
    listing, refused = _list_files(folder)
    key = _listing_key(folder, listing)
    cache_file = Path(cache_dir) / f"scan-{key}.json" if cache_dir else None
    all_paths = [e.path for entries in listing.values() for e in entries]
    bad = _cached_bad(cache_file)
    if bad is None:
        reasons = _check_all(all_paths)
        bad = {os.path.relpath(p, folder): r for p, r in zip(all_paths, reasons) if r is not None}
        if cache_file:
            write_json(cache_file, {"folder": str(folder), "bad": bad})
    else:
        # Keyed by sizes and mtimes, the cache cannot see a chmod: what decides readability is looked at again.
        # Skipped files are checked afresh (few, and one may have been repaired), the rest only for read access.
        rechecked = dict(zip(bad, _check_all([str(folder / path) for path in bad])))
        now = {path: reason for path, reason in rechecked.items() if reason is not None}
        for path in all_paths:
            if not os.access(path, os.R_OK):
                now[os.path.relpath(path, folder)] = "PermissionError: no read permission"
        if now != bad:
            bad = now
            write_json(cache_file, {"folder": str(folder), "bad": bad})

    classes = tuple(listing)
    paths, labels, sizes = [], [], []
    for label, name in enumerate(classes):
        good = [(os.path.relpath(e.path, folder), e) for e in listing[name]]
        good = [(Path(p).as_posix(), e.stat().st_size) for p, e in good if p not in bad]  # stat() cached by scandir
        if not good:
            raise UserError(f"class folder {folder / name} has no readable images: add images or remove the folder")
        paths.extend(p for p, _ in good)
        sizes.extend(size for _, size in good)
        labels.extend([label] * len(good))
    skipped = tuple(sorted({**{Path(p).as_posix(): r for p, r in bad.items()}, **refused}.items()))
    if skipped and verbose:
        print(skipped_warning(folder, skipped))
    return ImageIndex(folder, classes, tuple(paths), np.asarray(labels, dtype=np.int64), skipped, key, tuple(sizes))


def skipped_warning(folder: Path, skipped) -> str:
    """The one line that names a scan's unreadable files: a count and three examples (the run folder lists them all)."""
    examples = ", ".join(f"{p} ({r})" for p, r in skipped[:3])
    return (f"warning: skipped {len(skipped)} unreadable file(s) in {printable(str(folder))}: "
            f"{examples}{' ...' if len(skipped) > 3 else ''}")


def check_same_classes(classes: tuple[str, ...], source: str, test: ImageIndex) -> None:
    """The test folder must have exactly the classes the model was trained on (`source` names where those came
    from), or labels would silently mean other things."""
    if tuple(classes) != test.classes:
        missing = sorted(set(classes) - set(test.classes))
        extra = sorted(set(test.classes) - set(classes))
        raise UserError(
            f"class folders of {test.root} do not match {source}: "
            f"missing {missing or 'none'}, extra {extra or 'none'}; both need the same class sub-folders"
        )
