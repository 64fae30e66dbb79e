"""Batches of uint8 working-resolution images and labels, in a seeded order, from a cache or from the files.

Both stores give identical pixels (they share `decode_working`); the trainer applies the train or eval
transform to each batch on its device. A batch is the unit of work of a loader worker, so decoding runs
in parallel across workers while the cached store is a single memory-mapped gather per batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from data.images import decode_working
from data.scan import ImageIndex
from data.seeds import order_seed


class ImageStore(Protocol):
    def read(self, indices: np.ndarray) -> np.ndarray:
        """uint8 array (len(indices), size, size, 3)."""


@dataclass
class DecodingStore:
    """Decodes the files on every read: the path for one-off passes (the test set) or when caching is off."""

    index: ImageIndex
    size: int
    interpolation: str = "bilinear"
    crop_size: int | None = None  # where each square is placed: for this centre crop (data.images.resize_center_square)

    def read(self, indices: np.ndarray) -> np.ndarray:
        return np.stack([decode_working(self.index.absolute(int(i)), self.size, self.interpolation, self.crop_size)
                         for i in indices])


class _BatchDataset(Dataset):
    """Item = the indices of one whole batch, so a worker returns a ready uint8 batch with no per-image collate."""

    def __init__(self, store: ImageStore, labels: np.ndarray):
        self.store, self.labels = store, labels

    def __getitem__(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.store.read(indices)), torch.from_numpy(self.labels[indices])


def epoch_order(indices: np.ndarray, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The order of one epoch depends on (seed, epoch) only, so a resumed epoch replays it exactly."""
    if not shuffle:
        return indices
    generator = torch.Generator().manual_seed(order_seed(seed, epoch))
    return indices[torch.randperm(len(indices), generator=generator).numpy()]


def batch_count(num_items: int, batch_size: int, drop_last: bool) -> int:
    return num_items // batch_size if drop_last and num_items >= batch_size else -(-num_items // batch_size)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_num_workers(decoding: bool) -> int:
    """Decoding wants every core; a cached store needs little more than the main process."""
    cores = _cores()
    return min(cores, 8) if decoding else min(2, max(0, cores - 1))


def worker_count(asked: int, decoding: bool) -> int:
    """Loader processes for `--num_workers=asked` (-1: chosen from the CPU count). More than this machine's cores
    are lowered to them: each is a process holding batches in memory, and none decodes faster than a core."""
    if asked < 0:
        return default_num_workers(decoding)
    cores = _cores()
    if asked > cores:
        print(f"note: --num_workers={asked} is more than the {cores} CPU core(s) here; starting {cores}", flush=True)
        return cores
    return asked


class _EpochBatches(Sampler):
    """Yields the index array of each batch of the current epoch, from `start_batch` on."""

    def __init__(self, indices: np.ndarray, batch_size: int, seed: int, shuffle: bool, drop_last: bool):
        self.indices, self.batch_size, self.seed = np.asarray(indices), batch_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch, self.start_batch = 0, 0

    def __len__(self) -> int:
        return batch_count(len(self.indices), self.batch_size, self.drop_last) - self.start_batch

    def __iter__(self):
        order = epoch_order(self.indices, self.seed, self.epoch, self.shuffle)
        for b in range(self.start_batch, batch_count(len(order), self.batch_size, self.drop_last)):
            yield order[b * self.batch_size : (b + 1) * self.batch_size]


class BatchLoader:
    """Batches of (uint8 images NHWC, int64 labels) for a fixed set of indices, epoch after epoch.

    One DataLoader lives for the whole run, so with `persistent_workers` the worker processes are started
    once, not every epoch.
    """

    def __init__(
        self,
        store: ImageStore,
        indices: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = False,
        drop_last: bool = False,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
    ):
        self.sampler = _EpochBatches(indices, batch_size, seed, shuffle, drop_last)
        self.num_items = len(indices)
        self.loader = DataLoader(
            _BatchDataset(store, labels),
            batch_size=None,  # items are whole batches already
            sampler=self.sampler,
            num_workers=num_workers,
            pin_memory=pin_memory,  # page-locked host memory makes host->GPU copies asynchronous
            persistent_workers=persistent_workers and num_workers > 0,
            prefetch_factor=4 if num_workers else None,
            # Each iter() draws a worker base seed; from its own generator it never shifts the global RNG that
            # dropout uses, so a run resumed mid-epoch draws exactly the dropout masks of an uninterrupted one.
            generator=torch.Generator().manual_seed(0),
        )

    def num_batches(self) -> int:
        return batch_count(self.num_items, self.sampler.batch_size, self.sampler.drop_last)

    def epoch(self, epoch: int = 0, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.epoch, self.sampler.start_batch = epoch, start_batch
        return iter(self.loader)
