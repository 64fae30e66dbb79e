"""Scan a folder of class sub-folders into an index of readable images; bad files are found here, once.

A corrupt or non-image file is reported at scan time (a count and a few paths) and excluded, so it can
never crash a run in epoch 7. Scan results are cached by the folder's file list, sizes and mtimes.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.atomic import write_json
from common.errors import UserError
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


def _list_files(folder: Path) -> dict[str, list[os.DirEntry]]:
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder: pass --data_dir pointing at a folder with train/ and val/ class sub-folders")
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise UserError(f"{folder} has no class sub-folders: expected {folder}/<class name>/<images>")
    if len(classes) == 1:  # one class trains to a meaningless 100 %
        only = folder / classes[0]
        inner = sorted(e.name for e in os.scandir(only) if e.is_dir() and not e.name.startswith("."))
        hint = (f"; its sub-folders ({', '.join(inner[:3])}{', ...' if len(inner) > 3 else ''}) look like the classes: "
                f"move them up into {folder}" if len(inner) > 1 else "; add a folder of images for each further class")
        raise UserError(f"{folder} has a single class folder ({classes[0]}): a classifier needs at least 2 class sub-folders{hint}")
    listing = {}
    for name in classes:
        entries = []
        for dirpath, dirnames, _ in os.walk(folder / name):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            entries.extend(e for e in os.scandir(dirpath) if e.is_file() and not e.name.startswith("."))
        listing[name] = sorted(entries, key=lambda e: e.path)
    return listing


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


def scan_folder(folder: Path | str, cache_dir: Path | str | None = None, verbose: bool = True) -> ImageIndex:
    """Index `folder/<class>/**/<image>`, excluding unreadable files, with a cached verification pass."""
    folder = Path(folder)
    listing = _list_files(folder)
    key = _listing_key(folder, listing)
    cache_file = Path(cache_dir) / f"scan-{key}.json" if cache_dir else None
    if cache_file and cache_file.exists():
        bad = json.loads(cache_file.read_text())["bad"]
    else:
        all_paths = [e.path for entries in listing.values() for e in entries]
        reasons = _check_all(all_paths)
        bad = {os.path.relpath(p, folder): r for p, r in zip(all_paths, reasons) if r is not None}
        if cache_file:
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
    skipped = tuple(sorted(bad.items()))
    if skipped and verbose:
        examples = ", ".join(f"{p} ({r})" for p, r in skipped[:3])
        print(f"warning: skipped {len(skipped)} unreadable file(s) in {folder}: {examples}{' ...' if len(skipped) > 3 else ''}")
    return ImageIndex(folder, classes, tuple(paths), np.asarray(labels, dtype=np.int64), skipped, key, tuple(sizes))


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
