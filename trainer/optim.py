"""Optimizer from the model's trainable stages, and the learning-rate schedule as a pure function of the step.

The schedule is stepped per batch in every run (never per epoch in some runs and per batch in others),
and being a function of the global step it needs no state of its own to resume.
"""

from __future__ import annotations

import math

import torch

from models.param_groups import build_param_groups


def group_options(config) -> dict:
    """Learning-rate options of the parameter groups; null (normalised away) means 1. A 0 multiplier stays 0."""
    return {
        "lr": config.lr,
        "backbone_lr_mult": 1.0 if config.backbone_lr_mult is None else config.backbone_lr_mult,
        "layer_decay": 1.0 if config.layer_decay is None else config.layer_decay,
        "weight_decay": config.weight_decay,
    }


def build_optimizer(model, config) -> torch.optim.Optimizer:
    groups = build_param_groups(model, **group_options(config))
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
