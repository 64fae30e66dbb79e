"""Optimizer parameter groups built from the same stage set as `requires_grad`, one group per trainable stage.

Only parameters that train go in, and every one that trains does (pitfall 11): a frozen weight in the
optimizer would still move under weight decay, a trainable one outside it would cost backward time for nothing.
"""

from __future__ import annotations

from typing import Iterable

from torch import nn

from models.staged import NORM_LAYERS, StagedModel


def _no_decay_names(model: StagedModel) -> set[str]:
    """Biases and norm-layer parameters: decaying them toward zero only hurts (they set scale and offset)."""
    names = set()
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            if isinstance(module, NORM_LAYERS) or param_name.endswith("bias"):  # incl. attention in_proj_bias
                names.add(f"{module_name}.{param_name}" if module_name else param_name)
    return names


def stage_lr(model: StagedModel, stage: str, lr: float, backbone_lr_mult: float = 1.0,
             layer_decay: float = 1.0) -> float:
    """Head: lr. A backbone stage d stages below the head: lr * backbone_lr_mult * layer_decay**d."""
    distance = len(model.stage_names) - 1 - model.stage_names.index(stage)
    return lr if distance == 0 else lr * backbone_lr_mult * layer_decay**distance


def groups_for_stages(model: StagedModel, stage_names: Iterable[str], lr: float, backbone_lr_mult: float = 1.0,
                      layer_decay: float = 1.0, weight_decay: float = 0.0, exclude: frozenset[int] = frozenset()) -> list[dict]:
    """Groups for the given stages, in the order given.

    Each stage gives up to two groups, `name` and `name/no_decay`; frozen parameters, and those whose id is in
    `exclude` (already in an optimizer), are left out, and empty groups are not returned.
    """
    no_decay = _no_decay_names(model)
    groups = []
    for stage in stage_names:
        stage_lr_value = stage_lr(model, stage, lr, backbone_lr_mult, layer_decay)
        trainable = [(name, p) for name, p in model.stage_parameters(stage) if p.requires_grad and id(p) not in exclude]
        for suffix, decay, params in (
            ("", weight_decay, [p for name, p in trainable if name not in no_decay]),
            ("/no_decay", 0.0, [p for name, p in trainable if name in no_decay]),
        ):
            if params:
                groups.append({"params": params, "lr": stage_lr_value, "initial_lr": stage_lr_value,
                               "weight_decay": decay, "name": f"{stage}{suffix}"})
    return groups


def trainable_stage_names(model: StagedModel) -> tuple[str, ...]:
    """Stages with at least one parameter that trains, head first, then downward to the stem."""
    return tuple(
        stage for stage in reversed(model.stage_names)
        if any(p.requires_grad for _, p in model.stage_parameters(stage))
    )


def build_param_groups(model: StagedModel, lr: float, backbone_lr_mult: float = 1.0, layer_decay: float = 1.0,
                       weight_decay: float = 0.0) -> list[dict]:
    """All groups for the current plan: exactly the parameters with requires_grad, head first."""
    groups = groups_for_stages(model, trainable_stage_names(model), lr, backbone_lr_mult, layer_decay, weight_decay)
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in model.parameters() if p.requires_grad}
    return groups


def add_missing_groups(model: StagedModel, optimizer, lr: float, backbone_lr_mult: float = 1.0,
                       layer_decay: float = 1.0, weight_decay: float = 0.0) -> list[str]:
    """Give the optimizer every parameter that trains now and is not in it yet (a stage gradual unfreezing
    opened, or an aux head that became active once its stage trains); returns the new groups' names.

    Afterwards the optimizer holds exactly the parameters with requires_grad: strategies only ever unfreeze.
    """
    present = frozenset(id(p) for group in optimizer.param_groups for p in group["params"])
    groups = groups_for_stages(model, reversed(model.stage_names), lr, backbone_lr_mult, layer_decay, weight_decay, present)
    for group in groups:
        optimizer.add_param_group(group)
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    if held != trainable:
        raise RuntimeError(f"optimizer holds {len(held - trainable)} frozen and lacks {len(trainable - held)} trainable parameters")
    return [group["name"] for group in groups]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total

