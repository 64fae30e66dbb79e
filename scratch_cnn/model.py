"""The Part A baseline: a five-block CNN trained from scratch,
configured by `ScratchCNNConfig` (scratch_cnn/config.py)."""

from __future__ import annotations

from torch import Tensor, nn

from common.errors import UserError
from scratch_cnn.config import ACTIVATIONS, BLOCKS, ScratchCNNConfig

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "mish": nn.Mish,
    "leaky_relu": nn.LeakyReLU,
}
assert tuple(_ACTIVATIONS) == ACTIVATIONS  # the config's choices are what this module builds


class ScratchCNN(nn.Module):
    """block1..block5: conv -> [BN] -> activation -> max-pool; dense: flatten -> linear -> activation -> dropout;
    head: the class Linear. Named so the registry's stages are one submodule each."""

    def __init__(self, config: ScratchCNNConfig, num_classes: int):
        super().__init__()
        self.config = config
        channels = 3
        for index, filters in enumerate(config.block_filters(), start=1):
            layers: list[nn.Module] = [
                # The conv bias is redundant before BN, which subtracts the mean anyway.
                nn.Conv2d(channels, filters, config.kernel_size, padding=config.kernel_size // 2,
                          bias=not config.batch_norm),
            ]
            if config.batch_norm:
                layers.append(nn.BatchNorm2d(filters))
            layers += [_ACTIVATIONS[config.activation](), nn.MaxPool2d(2)]
            self.add_module(f"block{index}", nn.Sequential(*layers))
            channels = filters
        flat = channels * config.final_map_size() ** 2
        self.dense = nn.Sequential(
            nn.Flatten(1),
            nn.Linear(flat, config.dense_units),
            _ACTIVATIONS[config.activation](),
            nn.Dropout(config.dropout),
        )
        self.head = nn.Linear(config.dense_units, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        for index in range(1, BLOCKS + 1):
            x = getattr(self, f"block{index}")(x)
        return self.head(self.dense(x))


def build_scratch_cnn(config: ScratchCNNConfig, num_classes: int) -> ScratchCNN:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes={num_classes!r} must be a positive integer")
    return ScratchCNN(config, num_classes)
