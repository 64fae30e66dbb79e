"""Decoded-image cache: every image decoded once to uint8 at the working resolution, in a memory-mapped file.

Keyed by the image list (fingerprint), resolution and interpolation, so every run of a sweep that uses the
same data and input size shares one file. The cache lives on disk and is read through the page cache, so
RAM use stays bounded whatever the dataset size. It is built under a file lock (parallel sweep workers
build it once) into a temporary file that is renamed into place only when complete.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from common.atomic import write_json
from common.disk import reserve, size_text
from common.locks import file_lock
from common.terminal import live_output
from data.images import DECODE_VERSION, decode_working
from data.scan import ImageIndex

CACHE_FORMAT_VERSION = 1
CACHE_OPTION = "--cache_dir (or FINETUNE_CACHE_DIR)"


class DecodedImageCache:
    """Read-only uint8 array of shape (count, size, size, 3), opened lazily (safe to pickle into workers)."""

    def __init__(self, path: Path, count: int, size: int):
        self.path, self.count, self.size = Path(path), count, size
        self._array: np.memmap | None = None

    def __getstate__(self):
        return {"path": self.path, "count": self.count, "size": self.size, "_array": None}

    @property
    def array(self) -> np.memmap:
        if self._array is None:
            self._array = np.memmap(self.path, dtype=np.uint8, mode="r", shape=(self.count, self.size, self.size, 3))
        return self._array

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Gather rows; sorted reads keep the page cache access sequential, then the batch order is restored."""
        order = np.argsort(indices, kind="stable")
        gathered = self.array[indices[order]]
        out = np.empty_like(gathered)
        out[order] = gathered
        return out

    @classmethod
    def build_or_open(
        cls, index: ImageIndex, size: int, interpolation: str, cache_dir: Path | str, progress: bool | None = None,
        crop_size: int | None = None,
    ) -> DecodedImageCache:
        """`crop_size` places each square for the centre crop evaluation takes (see
        data.images.resize_center_square)."""
        cache_dir = Path(cache_dir)
        crop_size = size if crop_size is None else crop_size
        stem = (f"images-v{CACHE_FORMAT_VERSION}.{DECODE_VERSION}-{index.fingerprint}-{size}-c{crop_size}"
                f"-{interpolation}")
        path, meta_path = cache_dir / f"{stem}.u8", cache_dir / f"{stem}.json"
        with file_lock(cache_dir / f"{stem}.lock"):
            if not (path.exists() and meta_path.exists()):
                _build(index, size, crop_size, interpolation, path, meta_path, progress)
        meta = json.loads(meta_path.read_text())
        return cls(path, meta["count"], meta["size"])


def _build(index: ImageIndex, size: int, crop_size: int, interpolation: str, path: Path, meta_path: Path,
           progress: bool | None) -> None:
    from tqdm.auto import tqdm  # a widget in a notebook

    tmp = path.with_suffix(".u8.tmp")
    count = len(index)
    tmp.unlink(missing_ok=True)  # a build killed earlier (the lock is ours now)
    started = time.perf_counter()
    out = None

    def decode(i: int) -> None:
        out[i] = decode_working(index.absolute(i), size, interpolation, crop_size)

    show = live_output() if progress is None else progress
    # PIL releases the GIL in decode and resize, so threads scale over the (few) cores without IPC copies.
    # Sizes grow as their square (352 px holds 2.5x the bytes of 224 px): say what a cache costs before writing it.
    print(f"caching {count} decoded images at {size}px: {size_text(count * size * size * 3)} on disk in {path.parent}",
          flush=True)
    try:
        # A memory-mapped file that outgrows the disk kills the process with SIGBUS: its blocks are reserved first.
        reserve(tmp, count * size * size * 3, f"the decoded-image cache ({count} images at {size}px)", CACHE_OPTION)
        out = np.memmap(tmp, dtype=np.uint8, mode="r+", shape=(count, size, size, 3))
        with ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
            results = pool.map(decode, range(count), chunksize=16)
            for _ in tqdm(results, total=count, desc=f"caching {count} images at {size}px", disable=not show,
                          unit="img"):
                pass
        out.flush()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # never leave a disk filled by half a cache
        raise
    seconds = time.perf_counter() - started
    meta = {"count": count, "size": size, "crop_size": crop_size, "interpolation": interpolation,
            "root": str(index.root), "seconds": round(seconds, 2)}
    write_json(meta_path, meta)
    print(f"cached {count} decoded images at {size}px in {seconds:.1f}s -> {path}")
