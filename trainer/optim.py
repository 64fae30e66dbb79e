"""Optimizer from the model's trainable stages, and the learning-rate schedule as a pure function of the step.

The schedule is stepped per batch in every run (never per epoch in some runs and per batch in others),
and being a function of the global step it needs no state of its own to resume.
"""

from __future__ import annotations

import math

import torch

from models.param_groups import build_param_groups


def build_optimizer(model, config) -> torch.optim.Optimizer:
    groups = build_param_groups(
        model,
        lr=config.lr,
        backbone_lr_mult=config.backbone_lr_mult if config.backbone_lr_mult is not None else 1.0,
        layer_decay=config.layer_decay if config.layer_decay is not None else 1.0,
        weight_decay=config.weight_decay,
    )
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum or 0.0, nesterov=bool(config.momentum))
    return torch.optim.AdamW(groups, lr=config.lr)


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
