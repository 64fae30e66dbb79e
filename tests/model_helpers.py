"""Helpers shared by the model and freezing tests: the registry as test parameters, small builds and inputs."""

from __future__ import annotations

import pytest
import torch

from models import StagedModel, backbone_names, build_model, get_spec
from scratch_cnn import ScratchCNNConfig

NUM_CLASSES = 5
SMALL_SCRATCH = ScratchCNNConfig(filters=8, dense_units=32, input_size=64)
INPUT_SIZE = {"inception_v3": 299, "vit_b_16": 224}  # architectures that need their size; the rest run at 64 px


def each_backbone():
    """Every backbone; forward passes of the heavy ones are marked slow."""
    return [pytest.param(name, marks=() if get_spec(name).cpu_friendly else pytest.mark.slow)
            for name in backbone_names()]


def every_backbone():
    """Every backbone in the default run: for structural checks (stages, heads, which tensors train), which
    build the net but run no forward pass (about a second each for VGG-16 and ViT-B/16)."""
    return list(backbone_names())


def build(name: str, **kwargs) -> StagedModel:
    kwargs.setdefault("weights", "none")
    return build_model(name, NUM_CLASSES, scratch=SMALL_SCRATCH, **kwargs)


def images(name: str, batch: int = 2, seed: int = 0) -> torch.Tensor:
    size = INPUT_SIZE.get(name, 64)
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
