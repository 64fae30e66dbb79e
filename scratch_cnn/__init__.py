"""The Part A CNN trained from scratch; registered as the "scratch_cnn" backbone by models/backbones.py."""

from scratch_cnn.model import ScratchCNN, ScratchCNNConfig, build_scratch_cnn

__all__ = ["ScratchCNN", "ScratchCNNConfig", "build_scratch_cnn"]
