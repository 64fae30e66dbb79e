"""Helpers shared by the trainer's tests: a small scratch-CNN run config, its history, and a tiny model and
images for the loop and the feature cache."""

from __future__ import annotations

import json

import numpy as np
import torch

from common.preprocessing import Preprocessing
from models import build_model
from trainer import metrics as M
from trainer.config import parse_run_config

SMALL = Preprocessing(crop_size=64, resize_size=72, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
TIMING_KEYS = {M.EPOCH_SECONDS, M.IMAGES_PER_SECOND}


def scratch(base, **overrides):
    values = {**base, "model": "scratch_cnn", "input_size": 32, "filters": 8, "dense_units": 16, **overrides}
    return parse_run_config(values)


def history(outcome) -> list[dict]:
    return [json.loads(line) for line in (outcome.folder / "metrics.jsonl").read_text().splitlines()]


def without_timing(rows):
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


class FixedImages:
    """An image store of a few seeded random 32 px images."""

    def __init__(self, seed: int, count: int = 6):
        self.images = np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)

    def read(self, indices):
        return self.images[indices]


def _to_input(images):
    return images.permute(0, 3, 1, 2).float() / 255


def tiny_cnn():
    from scratch_cnn.model import ScratchCNNConfig

    torch.manual_seed(0)
    return build_model("scratch_cnn", 3, "none", scratch=ScratchCNNConfig(filters=4, dense_units=8, input_size=32))
