"""Everything between files on disk and model inputs for one run: scan, split, stores, loaders, transforms.

Walk of augment: sweeps/*.yaml -> trainer/config.py (RunConfig.augment) -> trainer/run.py (`InputSettings.of`) ->
trainer/inputs.py (`TrainTransform`; no feature cache under random augmentation) -> data/augment.py (`_Policy`).

The result, `RunInputs`, hands the loop ready-to-use batches for training and validation. Images come from
the decoded-image cache (or are decoded on the fly), become tensors on the device, and are augmented there;
when the frozen-prefix cache applies, training and validation read cached prefix features instead and the
model runs from stage `start_stage`. Only the train/ folder is read here: the test set is never reachable
from a training run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from common.disk import ensure_writable
from common.preprocessing import Preprocessing
from data.augment import EvalTransform, TrainTransform, batch_generator
from data.cache import CACHE_OPTION, DecodedImageCache
from data.layout import locate_dataset
from data.loading import BatchLoader, DecodingStore, ImageStore, worker_count
from data.scan import ImageIndex, scan_folder
from data.split import Split, stratified_split
from trainer.features import build_or_open_features

if TYPE_CHECKING:  # the run config is read once, here, at the edge of the run
    from trainer.config import RunConfig


@dataclass(frozen=True)
class InputSettings:
    """What turning files into batches reads of a run's settings, as plain values (no run config below `run()`)."""

    data_dir: str
    cache_dir: str
    download: bool = False
    val_fraction: float = 0.2
    split_seed: int = 0
    subset_fraction: float = 1.0
    augment: str = "standard"
    image_cache: bool = True
    feature_cache: bool = True
    num_workers: int = -1
    channels_last: bool = True
    seed: int = 0  # of the data order and the augmentation

    @classmethod
    def of(cls, config: RunConfig) -> InputSettings:
        return cls(config.data_dir, config.cache_dir, config.download, config.val_fraction, config.split_seed,
                   config.subset_fraction, config.augment, config.image_cache, config.feature_cache, config.num_workers,
                   config.channels_last, config.seed)


@dataclass
class DataSplit:
    index: ImageIndex
    split: Split

    @property
    def classes(self) -> tuple[str, ...]:
        return self.index.classes


def load_split(config: InputSettings) -> DataSplit:
    layout = locate_dataset(config.data_dir, download=config.download)
    cache_dir = ensure_writable(config.cache_dir, "cache_dir", CACHE_OPTION)
    index = scan_folder(layout.train_dir, cache_dir=cache_dir)
    if layout.test_dir is None:  # fine for training and sweeps; say it now, not when the user wants a test result
        print(f"note: {layout.root} has train/ but no val/ or test/ folder: training and validation (a split of "
              "train/) go on; `agent.py test` will need the held-out images (--data_dir with train/ and val/ or test/)",
              flush=True)
    warn_if_test_classes_differ(layout.test_dir, index.classes)
    return DataSplit(index, stratified_split(index, config.val_fraction, config.split_seed, config.subset_fraction))


def warn_if_test_classes_differ(test_dir: Path | None, classes: tuple[str, ...]) -> None:
    """Say now, not after hours of training, that `agent.py test` will refuse the test folder. Only folder names
    are listed: no test image is opened while training."""
    if test_dir is None:
        return
    names = {p.name for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))}
    missing, extra = sorted(set(classes) - names), sorted(names - set(classes))
    if missing or extra:
        print(f"warning: the class folders of {test_dir} differ from train/'s (missing {missing or 'none'}, extra "
              f"{extra or 'none'}): `agent.py test` will refuse that folder until both have the same classes",
              flush=True)


@dataclass
class RunInputs:
    train_loader: BatchLoader
    val_loader: BatchLoader
    train_input: Callable[[torch.Tensor, int, int], torch.Tensor]  # (batch, epoch, batch index) -> model input
    eval_input: Callable[[torch.Tensor], torch.Tensor]
    start_stage: int  # 0 for images; the frozen depth when training on cached prefix features


def image_store(index: ImageIndex, pre: Preprocessing, cache_dir: Path, use_cache: bool,
                rows: np.ndarray | None = None):
    """The images of `index` at `pre`'s size, cached or decoded on every read. With `rows` (image indices)
    only those: validation at its own size reads the validation rows alone, and decoding the training rows at that
    size too would cost 5 times the time and disk (on iNaturalist-12K, 10,000 images for the 2,000 read)."""
    if rows is not None:
        rows = np.unique(rows)  # one order, so one set of rows is one cache however it is listed
        return RowStore(image_store(index_of_rows(index, rows), pre, cache_dir, use_cache), rows)
    if use_cache:
        return DecodedImageCache.build_or_open(index, pre.resize_size, pre.interpolation, cache_dir,
                                               crop_size=pre.crop_size)
    return DecodingStore(index, pre.resize_size, pre.interpolation, pre.crop_size)


def index_of_rows(index: ImageIndex, rows: np.ndarray) -> ImageIndex:
    """The images `rows` of `index`, in that order. Its fingerprint hashes the folder's listing and these images'
    paths and labels, so a cache of them is shared by every run with the same rows (one split, whatever the
    model) and never confused with the whole folder's, or with another split's rows, at the same size."""
    rows = np.asarray(rows)
    return replace(index, paths=tuple(index.paths[i] for i in rows.tolist()), labels=index.labels[rows],
                   skipped=(), sizes=tuple(index.sizes[i] for i in rows.tolist()) if index.sizes else ())


@dataclass
class RowStore:
    """Reads image indices from a store of the images `rows` only (position i holds image rows[i])."""

    store: ImageStore
    rows: np.ndarray  # sorted

    def read(self, indices: np.ndarray) -> np.ndarray:
        positions = np.minimum(np.searchsorted(self.rows, indices), len(self.rows) - 1)
        if not np.array_equal(self.rows[positions], indices):  # never serve another image's pixels
            raise IndexError(f"images {sorted(set(np.asarray(indices).tolist()) - set(self.rows.tolist()))[:5]} "
                             "are not in this store's rows")
        return self.store.read(positions)


def build_inputs(config: InputSettings, data: DataSplit, pre: Preprocessing, model, frozen_depth: int,
                 device: torch.device, autocast, batch_size: int,
                 dtype: torch.dtype | None = None, eval_pre: Preprocessing | None = None) -> RunInputs:
    """`autocast` runs the model at `dtype` (None: fp32). `pre` is the training preprocessing, `eval_pre` the
    validation one (default: the same); at another size validation reads its own cache of images or features.

    `frozen_depth` leading stages never train in this run: without random augmentation their outputs never change
    either, so with `feature_cache` they are computed once and training starts after them (`start_stage`)."""
    eval_pre = eval_pre or pre
    cuda = device.type == "cuda"
    channels_last = config.channels_last
    cache_dir = Path(config.cache_dir).expanduser()
    train_store = image_store(data.index, pre, cache_dir, config.image_cache)
    # At its own size validation stores its own rows only: nothing else is ever read at that size.
    val_store = (train_store if eval_pre == pre
                 else image_store(data.index, eval_pre, cache_dir, config.image_cache, rows=data.split.val))
    workers = worker_count(config.num_workers, decoding=not config.image_cache)
    if not cuda and config.image_cache and config.num_workers < 0:
        workers = 0  # on a CPU the gather is a memcpy; worker processes would only compete with the model for cores
    train_transform = TrainTransform(pre, config.augment, channels_last)
    eval_transform = EvalTransform(eval_pre, channels_last)
    feature_depth = frozen_depth if (config.feature_cache and not train_transform.is_random) else 0

    def to_device(batch: torch.Tensor) -> torch.Tensor:
        return batch.to(device, non_blocking=True)

    def train_input(images: torch.Tensor, epoch: int, b: int) -> torch.Tensor:
        return train_transform(to_device(images), batch_generator(config.seed, epoch, b))

    def eval_input(images: torch.Tensor) -> torch.Tensor:
        return eval_transform(to_device(images))

    start_stage = 0
    if feature_depth > 0:
        def features(store, preprocessing: Preprocessing, indices: np.ndarray, part: str):
            # Every setting that changes what the prefix computes: the pixels it sees and the precision it runs at
            # (bf16 or fp16 autocast, or fp32); its weights are in the fingerprint.
            seen = (preprocessing.interpolation, tuple(preprocessing.mean), tuple(preprocessing.std), str(dtype))
            pixels = hashlib.sha256(repr(seen).encode()).hexdigest()[:8]
            sizes = f"{preprocessing.crop_size}-{preprocessing.resize_size}"
            key = f"{sizes}-{pixels}-{data.index.fingerprint}-{data.split.hash}{part}"
            as_input = EvalTransform(preprocessing, channels_last)  # augment=none: training sees the centre crop too
            return build_or_open_features(model, feature_depth, store, indices, data.index.labels,
                                          lambda images: as_input(to_device(images)), device, autocast, cache_dir, key)

        if eval_pre == pre:  # one cache of both parts, as every run at one size shares it
            train_store = val_store = features(train_store, pre, np.concatenate([data.split.train, data.split.val]), "")
        else:
            train_store = features(train_store, pre, data.split.train, "-train")
            val_store = features(val_store, eval_pre, data.split.val, "-val")
        workers = 0
        train_input = lambda features, epoch, b: to_device(features).float()  # noqa: E731
        eval_input = lambda features: to_device(features).float()  # noqa: E731
        start_stage = feature_depth
    common = dict(num_workers=workers, pin_memory=cuda, persistent_workers=cuda)
    if batch_size > len(data.split.train):  # drop_last keeps the one partial batch then (data/loading.batch_count)
        print(f"note: batch_size={batch_size} is more than the {len(data.split.train)} training images: each epoch "
              "is a single step over all of them; a smaller batch_size trains more steps per epoch")
    train_loader = BatchLoader(train_store, data.split.train, data.index.labels, batch_size, seed=config.seed,
                               shuffle=True, drop_last=True, **common)
    val_loader = BatchLoader(val_store, data.split.val, data.index.labels, batch_size * 2, **common)
    return RunInputs(train_loader, val_loader, train_input, eval_input, start_stage)
