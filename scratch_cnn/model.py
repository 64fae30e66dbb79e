"""The Part A baseline: a five-block CNN trained from scratch, configured by a frozen, validated dataclass."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from common.errors import UserError
from common.parsing import nearest

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "mish": nn.Mish,
    "leaky_relu": nn.LeakyReLU,
}
_ORGANIZATIONS = ("same", "double", "half")
_BLOCKS = 5
_MIN_FILTERS = 8  # "half" stops shrinking here: fewer channels than this cannot carry much of an image


@dataclass(frozen=True)
class ScratchCNNConfig:
    """Hyperparameters of the scratch CNN; an invalid value raises `UserError` on construction."""

    filters: int = 32  # channels of the first block
    filter_organization: str = "double"  # how channels change per block: same, double or half
    kernel_size: int = 3  # odd, so "same" padding is symmetric
    activation: str = "relu"  # relu, gelu, silu, mish, leaky_relu
    batch_norm: bool = True
    dropout: float = 0.2  # after the dense layer
    dense_units: int = 256
    input_size: int = 224  # square crop in pixels; must survive five 2x poolings

    def __post_init__(self):
        _check_int("filters", self.filters, 1, 4096)
        if self.filter_organization not in _ORGANIZATIONS:
            raise UserError(
                f"filter_organization={self.filter_organization!r} is not one of {', '.join(_ORGANIZATIONS)}"
                f"{nearest(self.filter_organization, _ORGANIZATIONS)}"
            )
        _check_int("kernel_size", self.kernel_size, 1, 15)
        if self.kernel_size % 2 == 0:
            raise UserError(f"kernel_size={self.kernel_size} must be odd (1, 3, 5, 7...) so padding keeps the size")
        if self.activation not in _ACTIVATIONS:
            raise UserError(
                f"activation={self.activation!r} is not one of {', '.join(_ACTIVATIONS)}"
                f"{nearest(self.activation, _ACTIVATIONS)}"
            )
        if not isinstance(self.batch_norm, bool):
            raise UserError(f"batch_norm={self.batch_norm!r} must be true or false")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise UserError(f"dropout={self.dropout!r} must be a number in [0, 1)")
        _check_int("dense_units", self.dense_units, 1, 65536)
        _check_int("input_size", self.input_size, 2**_BLOCKS, 4096)

    def block_filters(self) -> tuple[int, ...]:
        """Output channels of block1..block5."""
        if self.filter_organization == "same":
            return (self.filters,) * _BLOCKS
        if self.filter_organization == "double":
            return tuple(self.filters * 2**i for i in range(_BLOCKS))
        # Halving stops at _MIN_FILTERS (or at the first block's own count, when that is smaller): a 2-channel block
        # is a bottleneck no search should stumble into, and no later block is wider than the first.
        floor = min(self.filters, _MIN_FILTERS)
        return tuple(max(floor, self.filters // 2**i) for i in range(_BLOCKS))

    def final_map_size(self) -> int:
        """Side of the feature map after five floor-halving max-pools."""
        return self.input_size // 2**_BLOCKS


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UserError(f"{name}={value!r} must be an integer from {low} to {high}")


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
        for index in range(1, _BLOCKS + 1):
            x = getattr(self, f"block{index}")(x)
        return self.head(self.dense(x))


def build_scratch_cnn(config: ScratchCNNConfig, num_classes: int) -> ScratchCNN:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes={num_classes!r} must be a positive integer")
    return ScratchCNN(config, num_classes)
