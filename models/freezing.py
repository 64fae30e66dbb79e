"""Freezing strategies: one registry entry each, mapping (stage names, options, epoch) to the stages that train.

Strategies count named stages (never child indices or parameter tensors), so `k_layers=2` trains the same kind
of block on every backbone, and an out-of-range `k_layers` is an error rather than a silent full fine-tune.
A strategy is one `register_strategy` entry: its name, aliases, options and help here give the order reports
show strategies in (registration order: least to most of the backbone trained), `--help`'s text and the tests.
`Freezing.of` is the one place a strategy and its options are built from a run's values.

Walk of strategy/k_layers: sweeps/freeze.yaml -> trainer/config.py (`freezing_of`; folded to the simplest equivalent)
-> trainer/optim.py (`LearningRates.advance`, each epoch) -> models/freezing.py (`Freezing.plan`: `_top` picks the
stages that train; `StagedModel.apply_plan` then sets requires_grad).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from common.errors import UserError
from common.parsing import nearest

HEAD = "head"


@dataclass(frozen=True)
class TrainPlan:
    """Which stages train. `train_norm_layers`: norm layers in every stage train their affine parameters and,
    for BatchNorm, update their running statistics."""

    trainable_stages: frozenset[str]
    train_norm_layers: bool = False


@dataclass(frozen=True)
class FreezeOptions:
    """The strategy knobs; each strategy says in `Strategy.uses` which of them it reads."""

    k_layers: int = 1  # last_k: backbone stages trained below the head
    freeze_fraction: float = 0.5  # fraction: share of backbone stages frozen, counted from the stem
    unfreeze_every_epochs: int = 1  # gradual: epochs between unfreezing one more stage


@dataclass(frozen=True)
class Strategy:
    name: str
    aliases: tuple[str, ...]
    uses: tuple[str, ...]  # FreezeOptions fields that matter; a sweep normalises the others away
    plan_for_epoch: Callable[[tuple[str, ...], FreezeOptions, int], TrainPlan]
    description: str


def _backbone(stage_names: tuple[str, ...]) -> tuple[str, ...]:
    if not stage_names or stage_names[-1] != HEAD:
        raise ValueError(f"stage names must end with {HEAD!r}, got {stage_names}")
    return tuple(stage_names[:-1])


@dataclass(frozen=True)
class Freezing:
    """A strategy with its options: what a run freezes in each epoch."""

    strategy: Strategy
    options: FreezeOptions = FreezeOptions()

    @classmethod
    def of(cls, strategy: str, k_layers: int | None = None, freeze_fraction: float | None = None,
           unfreeze_every_epochs: int | None = None) -> Freezing:
        """The one builder: a strategy name or alias and its options, None meaning the option's default."""
        given = {"k_layers": k_layers, "freeze_fraction": freeze_fraction,
                 "unfreeze_every_epochs": unfreeze_every_epochs}
        return cls(resolve_strategy(strategy), FreezeOptions(**{k: v for k, v in given.items() if v is not None}))

    @property
    def name(self) -> str:
        return self.strategy.name

    def validate(self, stage_names: tuple[str, ...], model_name: str = "the model") -> None:
        validate_options(self.strategy, stage_names, self.options, model_name)

    def plan(self, stage_names: tuple[str, ...], epoch: int, model_name: str = "the model") -> TrainPlan:
        return plan_for_epoch(self.strategy, stage_names, self.options, epoch, model_name)

    def plans(self, stage_names: tuple[str, ...], epochs: int, model_name: str = "the model") -> list[TrainPlan]:
        """The plan of every epoch of a run of `epochs` epochs."""
        return [self.plan(stage_names, epoch, model_name) for epoch in range(epochs)]


def _top(stage_names: tuple[str, ...], count: int) -> TrainPlan:
    """The head plus the `count` backbone stages nearest to it."""
    backbone = _backbone(stage_names)
    return TrainPlan(frozenset(backbone[len(backbone) - count:] if count else ()) | {HEAD})


def frozen_count_for_fraction(n_backbone: int, freeze_fraction: float) -> int:
    """round(freeze_fraction * n), halves rounded up (0.5 of 5 stages freezes 3), not Python's half-to-even."""
    return int(math.floor(freeze_fraction * n_backbone + 0.5))


def _head_only(stage_names, options, epoch) -> TrainPlan:
    return _top(stage_names, 0)


def _last_k(stage_names, options, epoch) -> TrainPlan:
    _check_k_layers(_backbone(stage_names), options.k_layers)
    return _top(stage_names, options.k_layers)


def _fraction(stage_names, options, epoch) -> TrainPlan:
    _check_freeze_fraction(options.freeze_fraction)
    n = len(_backbone(stage_names))
    return _top(stage_names, n - frozen_count_for_fraction(n, options.freeze_fraction))


def _norm_and_head(stage_names, options, epoch) -> TrainPlan:
    return TrainPlan(frozenset({HEAD}), train_norm_layers=True)


def _full(stage_names, options, epoch) -> TrainPlan:
    return TrainPlan(frozenset(stage_names))


def _gradual(stage_names, options, epoch) -> TrainPlan:
    _check_unfreeze_every_epochs(options.unfreeze_every_epochs)
    n = len(_backbone(stage_names))
    return _top(stage_names, min(n, epoch // options.unfreeze_every_epochs))


_STRATEGIES: dict[str, Strategy] = {}
_ALIASES: dict[str, str] = {}


def register_strategy(strategy: Strategy) -> Strategy:
    for name in (strategy.name, *strategy.aliases):
        if name in _ALIASES:
            raise ValueError(f"strategy name {name!r} is registered twice")
        _ALIASES[name] = strategy.name
    _STRATEGIES[strategy.name] = strategy
    return strategy


for _strategy in (  # least to most of the backbone trained: the order reports show them in
    Strategy("head_only", ("freeze_all",), (), _head_only,
             "train only the new classification head (a linear probe)"),
    Strategy("norm_and_head", ("freeze_except_bn_and_fc", "bn_and_head"), (), _norm_and_head,
             "train the head and every norm layer's affine parameters (BatchNorm statistics adapt too)"),
    Strategy("last_k", ("freeze_partial",), ("k_layers",), _last_k,
             "train the head and the last k_layers backbone stages (k_layers=0: head only)"),
    Strategy("fraction", ("freeze_k_percent",), ("freeze_fraction",), _fraction,
             "freeze the first round(freeze_fraction x backbone stages) stages, train the rest and the head"),
    Strategy("gradual", (), ("unfreeze_every_epochs",), _gradual,
             "ULMFiT-style: head only at epoch 0, then one more stage from the top every unfreeze_every_epochs"),
    Strategy("full", ("unfreeze_all",), (), _full, "train every stage"),
):
    register_strategy(_strategy)


def strategy_names() -> tuple[str, ...]:
    """Canonical names, without aliases, in registration order: from least to most of the backbone trained."""
    return tuple(_STRATEGIES)


def strategy_help() -> str:
    """The names and aliases, for `--help` and the configuration reference: derived, so a new entry is listed."""
    aliases = [alias for alias, name in _ALIASES.items() if alias != name]
    return f"freezing strategy: {', '.join(strategy_names())} (aliases: {', '.join(aliases)})"


def resolve_strategy(name: str) -> Strategy:
    """The strategy for a canonical name or an alias."""
    try:
        return _STRATEGIES[_ALIASES[name]]
    except (KeyError, TypeError):
        raise UserError(
            f"unknown freezing strategy {name!r}{nearest(str(name), _ALIASES)}; "
            f"choose one of: {', '.join(strategy_names())} (aliases: "
            f"{', '.join(a for a, c in _ALIASES.items() if a != c)})"
        ) from None


def _stage_list(names: tuple[str, ...]) -> str:
    return ", ".join(names) if len(names) <= 6 else f"{', '.join(names[:2])}, ..., {names[-1]}"


def validate_options(strategy: Strategy, stage_names: tuple[str, ...], options: FreezeOptions,
                     model_name: str = "the model") -> None:
    """Raise `UserError` for an option the strategy reads that makes no sense on this model."""
    backbone = _backbone(tuple(stage_names))
    if "k_layers" in strategy.uses:
        _check_k_layers(backbone, options.k_layers, model_name)
    if "freeze_fraction" in strategy.uses:
        _check_freeze_fraction(options.freeze_fraction)
    if "unfreeze_every_epochs" in strategy.uses:
        _check_unfreeze_every_epochs(options.unfreeze_every_epochs)


# The plan functions check too, so calling `Strategy.plan_for_epoch` directly cannot slice out of range.
def _check_k_layers(backbone: tuple[str, ...], k: object, model_name: str = "the model") -> None:
    n = len(backbone)
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n:
        raise UserError(
            f"k_layers={k!r} but {model_name} has {n} backbone stages ({_stage_list(backbone)}); use 0..{n}"
        )


def _check_freeze_fraction(fraction: object) -> None:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
        raise UserError(f"freeze_fraction={fraction!r} must be a number from 0 to 1 (share of backbone stages frozen)")


def _check_unfreeze_every_epochs(epochs: object) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise UserError(f"unfreeze_every_epochs={epochs!r} must be a positive integer")


def plan_for_epoch(strategy: Strategy, stage_names: tuple[str, ...], options: FreezeOptions, epoch: int,
                   model_name: str = "the model") -> TrainPlan:
    """Validate, then ask the strategy; the one call the trainer needs each epoch."""
    validate_options(strategy, stage_names, options, model_name)
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    return strategy.plan_for_epoch(tuple(stage_names), options, epoch)
