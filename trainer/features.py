"""Frozen-prefix activation cache: outputs of the frozen leading stages, computed once and stored as fp16.

When augmentation is off and the first stages are frozen (BatchNorm in eval mode), their output for an
image never changes, so recomputing it every epoch of every run is pure waste. The cache is keyed by the
model, the exact prefix weights (a hash of its parameters and buffers), input geometry, the image list,
the split and the depth, so every run of a sweep that shares them shares one file. Head-only runs then cost
about one inference pass plus a few seconds, whatever the number of epochs.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from common.atomic import write_json
from common.disk import reserve
from common.locks import file_lock
from data.cache import CACHE_OPTION
from data.images import DECODE_VERSION
from data.loading import BatchLoader

FEATURE_FORMAT_VERSION = 1


def prefix_fingerprint(model, depth: int) -> str:
    """Hash of everything that determines the prefix output: names, parameters and buffers of its stages."""
    digest = hashlib.sha256(f"{model.spec.name}|{depth}".encode())
    for stage in model.stage_names[:depth]:
        for module in model.stage_modules(stage):
            for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


class FeatureCache:
    """fp16 rows for a sorted set of image indices; `read` maps image indices to rows (picklable, lazy)."""

    def __init__(self, path: Path, rows: np.ndarray, shape: tuple[int, ...]):
        self.path, self.rows, self.shape = Path(path), np.asarray(rows), tuple(shape)
        self._array = None

    def __getstate__(self):
        return {"path": self.path, "rows": self.rows, "shape": self.shape, "_array": None}

    @property
    def array(self) -> np.memmap:
        if self._array is None:
            self._array = np.memmap(self.path, dtype=np.float16, mode="r", shape=(len(self.rows), *self.shape))
        return self._array

    def read(self, indices: np.ndarray) -> np.ndarray:
        positions = np.searchsorted(self.rows, indices)
        order = np.argsort(positions, kind="stable")
        gathered = self.array[positions[order]]
        out = np.empty_like(gathered)
        out[order] = gathered
        return out


@torch.inference_mode()
def build_or_open_features(model, depth: int, image_store, indices: np.ndarray, labels: np.ndarray, to_input, device,
                           autocast, cache_dir: Path, key: str, batch_size: int = 64) -> FeatureCache:
    rows = np.unique(indices)
    stem = (f"features-v{FEATURE_FORMAT_VERSION}.{DECODE_VERSION}-{model.spec.name}-d{depth}-"
            f"{prefix_fingerprint(model, depth)}-{key}")
    path, meta_path = Path(cache_dir) / f"{stem}.f16", Path(cache_dir) / f"{stem}.json"
    with file_lock(Path(cache_dir) / f"{stem}.lock"):
        if not (path.exists() and meta_path.exists()):
            started = time.perf_counter()
            was_training = model.training
            model.eval()
            loader = BatchLoader(image_store, rows, labels, batch_size)
            out, written = None, 0
            tmp = path.with_suffix(".f16.tmp")
            tmp.unlink(missing_ok=True)  # a build killed earlier (the lock is ours now)
            try:
                for images, _ in loader.epoch(0):
                    with autocast():
                        features = model.forward_range(to_input(images), 0, depth)
                    if out is None:  # the first batch gives the size: check the disk before the file can outgrow it
                        needed = len(rows) * int(np.prod(features.shape[1:])) * 2
                        reserve(tmp, needed, f"the frozen-stage feature cache ({len(rows)} images, depth {depth})",
                                CACHE_OPTION)
                        out = np.memmap(tmp, dtype=np.float16, mode="r+", shape=(len(rows), *features.shape[1:]))
                    out[written : written + len(features)] = features.float().cpu().numpy().astype(np.float16)
                    written += len(features)
                out.flush()
                shape = out.shape[1:]
                del out
                tmp.replace(path)
            except BaseException:
                tmp.unlink(missing_ok=True)  # never leave a disk filled by half a cache
                raise
            write_json(meta_path,
                       {"rows": len(rows), "shape": list(shape), "seconds": round(time.perf_counter() - started, 2)})
            model.train(was_training)
            print(
                f"cached frozen-stage features of {len(rows)} images (depth {depth}, shape {tuple(shape)}) in "
                f"{time.perf_counter() - started:.1f}s")
    meta = json.loads(meta_path.read_text())
    return FeatureCache(path, rows, tuple(meta["shape"]))
