"""Stratified, seeded, stable train/validation split of the training folder, with nested subsets.

Every run that shares `split_seed` sees exactly the same images (a sweep must compare models on
identical data), and the split's hash goes into every run's record. The validation part does not depend
on `subset_fraction`, and a smaller subset is always contained in a larger one.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from dataclasses import dataclass, field

import numpy as np

from common.errors import UserError
from data.scan import ImageIndex


@dataclass(frozen=True)
class Split:
    train: np.ndarray = field(repr=False)  # indices into the ImageIndex, sorted
    val: np.ndarray = field(repr=False)
    hash: str = ""
    # The split's files by name and size: two exports of a dataset under the same file names (resized copies,
    # another synthetic seed) share `hash`, not this. Independent of mtimes and folder, so equal across machines.
    data_hash: str = ""

    def __repr__(self) -> str:
        return f"Split(train={len(self.train)}, val={len(self.val)}, hash={self.hash})"


def _class_order(count: int, seed: int, class_name: str) -> np.ndarray:
    # Seeding by class name keeps each class's shuffle independent of the other classes and of scan order.
    return np.random.default_rng([seed, zlib.crc32(class_name.encode())]).permutation(count)


def stratified_split(index: ImageIndex, val_fraction: float = 0.2, seed: int = 0,
                     subset_fraction: float = 1.0) -> Split:
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"val_fraction={val_fraction} must be between 0 and 1 (exclusive), e.g. 0.2")
    if not 0.0 < subset_fraction <= 1.0:
        raise UserError(f"subset_fraction={subset_fraction} must be in (0, 1], e.g. 0.25")
    train, val, alone = [], [], []
    for label, name in enumerate(index.classes):
        members = np.flatnonzero(index.labels == label)
        members = members[np.argsort([index.paths[i] for i in members], kind="stable")]
        order = members[_class_order(len(members), seed, name)]
        n_val = max(1, round(len(order) * val_fraction)) if len(order) > 1 else 0
        if len(order) == 1:
            alone.append(name)
        rest = order[n_val:]
        if len(rest) == 0:
            raise UserError(
                f"class {name!r} in {index.root} has {len(order)} image(s): "
                f"too few to split with val_fraction={val_fraction}")
        val.extend(order[:n_val].tolist())
        train.extend(rest[: max(1, math.ceil(len(rest) * subset_fraction))].tolist())
    if alone:  # its one image trains; validation accuracy then says nothing about that class
        print(f"note: class{'es' if len(alone) > 1 else ''} {', '.join(alone[:5])}{' ...' if len(alone) > 5 else ''} "
              f"of {index.root} {'have' if len(alone) > 1 else 'has'} a single image, which trains: no validation "
              f"image measures {'them' if len(alone) > 1 else 'it'}; add images to validate "
              f"{'them' if len(alone) > 1 else 'it'}", flush=True)
    train_idx, val_idx = np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(val, dtype=np.int64))
    digest, data = hashlib.sha256(), hashlib.sha256()
    for part, indices in (("train", train_idx), ("val", val_idx)):
        for i in indices.tolist():
            line = f"{part}\t{index.paths[i]}\t{index.classes[index.labels[i]]}"
            digest.update(f"{line}\n".encode())
            data.update(f"{line}\t{index.sizes[i] if index.sizes else ''}\n".encode())
    return Split(train_idx, val_idx, digest.hexdigest()[:16], data.hexdigest()[:16])
