"""The scratch CNN's hyperparameters, declared once: their defaults, allowed values and help live here.

The run config takes its scratch_cnn fields from `FIELDS` below (trainer/config.py), and `ScratchCNNConfig` checks
itself against the same rules, so what `agent.py check` and a run's config accept is exactly what the model builds
(an even kernel_size is refused when the config is read, not after the dataset scan). Imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from common.errors import UserError
from common.parsing import nearest

ACTIVATIONS = ("relu", "gelu", "silu", "mish", "leaky_relu")
ORGANIZATIONS = ("same", "double", "half")
BLOCKS = 5
MIN_FILTERS = 8  # "half" stops shrinking here: fewer channels than this cannot carry much of an image


def _odd(value: int) -> str | None:
    return None if value % 2 else "must be odd (1, 3, 5, 7...) so padding keeps the size"


@dataclass(frozen=True)
class Rule:
    """One field's declaration: default, help, and what it may be."""

    default: Any
    help: str
    choices: tuple | None = None
    low: int | float | None = None
    high: int | float | None = None
    check: Callable[[Any], str | None] | None = None  # a further rule: None when the value is fine, else why not

    def problem(self, name: str, value: Any) -> str | None:
        """Why `value` is not one this field takes, in words with the allowed values; None when it is."""
        kind = type(self.default)
        if kind is bool:
            return None if isinstance(value, bool) else f"{name}={value!r} must be true or false"
        if self.choices is not None:
            if value in self.choices:
                return None
            return f"{name}={value!r} is not one of {', '.join(self.choices)}{nearest(str(value), self.choices)}"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int
                                                                              and not isinstance(value, int)):
            return f"{name}={value!r} must be {'an integer' if kind is int else 'a number'}"
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            return f"{name}={value} is out of range [{self.low}, {self.high}]"
        reason = self.check(value) if self.check else None
        return f"{name}={value} {reason}" if reason else None


# The scratch_cnn fields of the run config, in the order --help shows them. input_size is every model's (its own
# field in the run config); the scratch CNN's dense layer is built for it.
FIELDS: dict[str, Rule] = {
    "filters": Rule(32, "scratch_cnn: filters of the first conv block", low=1, high=1024),
    "filter_organization": Rule("double",
                                f"scratch_cnn: filters per block: same, double or half of the previous (halving stops "
                                          f"at {MIN_FILTERS}, or at filters when smaller)", choices=ORGANIZATIONS),
    "kernel_size": Rule(3, "scratch_cnn: convolution kernel size, odd", low=1, high=11, check=_odd),
    "activation": Rule("relu", "scratch_cnn: activation", choices=ACTIVATIONS),
    "batch_norm": Rule(True, "scratch_cnn: batch norm after each convolution"),
    "dropout": Rule(0.2, "scratch_cnn: dropout before the output layer", low=0.0, high=0.9),
    "dense_units": Rule(256, "scratch_cnn: width of the dense layer", low=1, high=65_536),
}
INPUT_SIZE = Rule(224, "scratch_cnn: square input in pixels; five 2x poolings need 32", low=2**BLOCKS, high=1024)


@dataclass(frozen=True)
class ScratchCNNConfig:
    """Hyperparameters of the scratch CNN; a value the rules above refuse raises `UserError` on construction."""

    filters: int = FIELDS["filters"].default
    filter_organization: str = FIELDS["filter_organization"].default
    kernel_size: int = FIELDS["kernel_size"].default
    activation: str = FIELDS["activation"].default
    batch_norm: bool = FIELDS["batch_norm"].default
    dropout: float = FIELDS["dropout"].default
    dense_units: int = FIELDS["dense_units"].default
    input_size: int = INPUT_SIZE.default

    def __post_init__(self):
        for field in fields(self):
            rule = INPUT_SIZE if field.name == "input_size" else FIELDS[field.name]
            problem = rule.problem(field.name, getattr(self, field.name))
            if problem:
                raise UserError(problem)

    def block_filters(self) -> tuple[int, ...]:
        """Output channels of block1..block5."""
        if self.filter_organization == "same":
            return (self.filters,) * BLOCKS
        if self.filter_organization == "double":
            return tuple(self.filters * 2**i for i in range(BLOCKS))
        # Halving stops at MIN_FILTERS (or at the first block's own count, when that is smaller): a 2-channel block
        # is a bottleneck no search should stumble into, and no later block is wider than the first.
        floor = min(self.filters, MIN_FILTERS)
        return tuple(max(floor, self.filters // 2**i) for i in range(BLOCKS))

    def final_map_size(self) -> int:
        """Side of the feature map after five floor-halving max-pools."""
        return self.input_size // 2**BLOCKS
