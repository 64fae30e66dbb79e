"""The Part A CNN trained from scratch; registered as the "scratch_cnn" backbone by models/backbones.py.

`ScratchCNNConfig` (its hyperparameters and their rules) imports no torch; the network itself is loaded on first use.
"""

import importlib

from scratch_cnn.config import ScratchCNNConfig


def __getattr__(name: str):
    if name not in ("ScratchCNN", "build_scratch_cnn"):
        raise AttributeError(f"module 'scratch_cnn' has no attribute {name!r}")
    value = getattr(importlib.import_module("scratch_cnn.model"), name)
    globals()[name] = value
    return value


__all__ = ["ScratchCNN", "ScratchCNNConfig", "build_scratch_cnn"]
