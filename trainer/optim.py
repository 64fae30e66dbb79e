"""The learning rate's one home: each group's base rate, warmup and the schedule, and the groups that gradual
unfreezing adds (with the plan that opens their stages), all from one `LearningRates`.

The schedule is stepped per batch in every run (never per epoch in some runs and per batch in others), and being a
function of the global step it needs no state of its own to resume.

Walk of lr: sweeps/*.yaml -> trainer/config.py (RunConfig.lr) -> trainer/run.py (`LearningRates.of`) ->
trainer/optim.py (`stage_lr`: a group's base rate; `lr_factor`: warmup and schedule, applied every step).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from models.freezing import Freezing
from models.param_groups import parameter_groups, trainable_stage_names
from models.staged import StagedModel

if TYPE_CHECKING:  # the run config is read once, here, at the edge of the run
    from trainer.config import RunConfig


@dataclass(frozen=True)
class LearningRates:
    """Everything that sets a parameter's learning rate at a step, as plain values."""

    lr: float  # the head's, and every layer's of the scratch CNN
    backbone_lr_mult: float = 1.0  # a backbone stage's lr = lr x this (discriminative learning rates)
    layer_decay: float = 1.0  # ... x this per stage further from the head
    weight_decay: float = 0.0
    optimizer: str = "adamw"
    momentum: float | None = None  # sgd only
    schedule: str = "cosine"
    warmup_epochs: float = 0.0  # ignored under onecycle, which warms up over its own first 30%
    epochs: int = 1

    @classmethod
    def of(cls, config: RunConfig) -> LearningRates:
        """From a RunConfig; options it normalised away (null) mean 1, and a 0 multiplier stays 0."""
        return cls(
            lr=config.lr, backbone_lr_mult=1.0 if config.backbone_lr_mult is None else config.backbone_lr_mult,
            layer_decay=1.0 if config.layer_decay is None else config.layer_decay, weight_decay=config.weight_decay,
            optimizer=config.optimizer, momentum=config.momentum, schedule=config.schedule,
            warmup_epochs=config.warmup_epochs or 0.0, epochs=config.epochs,
        )

    # --- base rates -------------------------------------------------------------------------------

    def stage_lr(self, model: StagedModel, stage: str) -> float:
        """Head: lr. A backbone stage d stages below the head: lr x backbone_lr_mult x layer_decay^d."""
        distance = len(model.stage_names) - 1 - model.stage_names.index(stage)
        return self.lr if distance == 0 else self.lr * self.backbone_lr_mult * self.layer_decay**distance

    def groups(self, model: StagedModel, stages: Iterable[str], exclude: frozenset[int] = frozenset()) -> list[dict]:
        """The optimizer groups of these stages' trainable parameters, with their base rates and weight decay."""
        return [{"params": group["params"], "lr": self.stage_lr(model, group["stage"]),
                 "initial_lr": self.stage_lr(model, group["stage"]),
                 "weight_decay": self.weight_decay if group["decay"] else 0.0, "name": group["name"]}
                for group in parameter_groups(model, stages, exclude)]

    def optimizer_for(self, model: StagedModel) -> torch.optim.Optimizer:
        """An optimizer of exactly the parameters that train under the model's current plan, head first (pitfall 11)."""
        groups = self.groups(model, trainable_stage_names(model))
        assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in model.parameters() if p.requires_grad}
        if self.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=self.lr, momentum=self.momentum or 0.0, nesterov=bool(self.momentum))
        return torch.optim.AdamW(groups, lr=self.lr)

    def add_unfrozen(self, model: StagedModel, optimizer: torch.optim.Optimizer) -> list[str]:
        """Give the optimizer every parameter that trains now and is not in it yet (a stage gradual unfreezing opened,
        or an aux head that became active once its stage trains), at its stage's base rate; returns the new groups'
        names. Afterwards the optimizer holds exactly the parameters with requires_grad: strategies only unfreeze."""
        present = frozenset(id(p) for group in optimizer.param_groups for p in group["params"])
        groups = self.groups(model, reversed(model.stage_names), present)
        for group in groups:
            optimizer.add_param_group(group)
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        if held != trainable:
            raise RuntimeError(
                f"optimizer holds {len(held - trainable)} frozen and lacks {len(trainable - held)} trainable "
                f"parameters")
        return [group["name"] for group in groups]

    # --- gradual unfreezing ------------------------------------------------------------------------

    def advance(self, model: StagedModel, optimizer: torch.optim.Optimizer | None, freezing: Freezing,
                epoch: int) -> torch.optim.Optimizer:
        """Apply epoch `epoch`'s plan; what starts training joins the optimizer at its base rate (gradual unfreezing).
        Without an optimizer yet, the plan's own is built. Returns the optimizer."""
        model.apply_plan(freezing.plan(model.stage_names, epoch))
        if optimizer is None:
            return self.optimizer_for(model)
        self.add_unfrozen(model, optimizer)
        return optimizer

    def optimizer_after(self, model: StagedModel, freezing: Freezing, epoch: int) -> torch.optim.Optimizer:
        """The optimizer with the groups it has after `epoch`'s plan: the plans of epochs 0..epoch replayed in order, so
        a checkpoint's optimizer state (gradual unfreezing grows the groups) loads group for group."""
        optimizer = None
        for past in range(epoch + 1):
            optimizer = self.advance(model, optimizer, freezing, past)
        return optimizer

    # --- warmup and schedule ----------------------------------------------------------------------

    def apply(self, optimizer: torch.optim.Optimizer, step: int, steps_per_epoch: int) -> float:
        """Set every group's lr for global step `step`; returns the head's (the first group's) for logging."""
        factor = lr_factor(step, steps_per_epoch * self.epochs, round(self.warmup_epochs * steps_per_epoch),
                           self.schedule)
        return set_learning_rates(optimizer, factor)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of each group's initial lr at `step` (0-based): linear warmup, then the schedule."""
    total_steps = max(1, total_steps)
    if schedule == "onecycle":
        warmup_steps = max(1, round(0.3 * total_steps))
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    floor = 1e-4 if schedule == "onecycle" else 0.0
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def set_learning_rates(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """Apply `factor` to every group; returns the head's lr (the first group) for logging."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    return optimizer.param_groups[0]["lr"] if optimizer.param_groups else 0.0


def build_optimizer(model: StagedModel, config) -> torch.optim.Optimizer:
    """The optimizer of a RunConfig's learning rates (benchmarks and tests build one without a run)."""
    return LearningRates.of(config).optimizer_for(model)
