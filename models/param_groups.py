"""Which parameters go in which optimizer group: built from the same stage set as `requires_grad`, one group per
trainable stage (and one more for its biases and norm parameters, which take no weight decay).

Only parameters that train go in, and every one that trains does (pitfall 11): a frozen weight in the
optimizer would still move under weight decay, a trainable one outside it would cost backward time for nothing.
Their learning rates are trainer/optim.py's, all in one place.
"""

from __future__ import annotations

from collections.abc import Iterable

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


def parameter_groups(model: StagedModel, stage_names: Iterable[str],
                     exclude: frozenset[int] = frozenset()) -> list[dict]:
    """The trainable parameters of these stages, in the order given, as groups without learning rates (those are
    trainer/optim.py's): `{"params", "name", "stage", "decay"}`.

    Each stage gives up to two groups, `name` (decayed) and `name/no_decay`; frozen parameters, and those whose id is
    in `exclude` (already in an optimizer), are left out, and empty groups are not returned.
    """
    no_decay = _no_decay_names(model)
    groups = []
    for stage in stage_names:
        trainable = [(name, p) for name, p in model.stage_parameters(stage) if p.requires_grad and id(p) not in exclude]
        for suffix, decay, params in (
            ("", True, [p for name, p in trainable if name not in no_decay]),
            ("/no_decay", False, [p for name, p in trainable if name in no_decay]),
        ):
            if params:
                groups.append({"params": params, "name": f"{stage}{suffix}", "stage": stage, "decay": decay})
    return groups


def trainable_stage_names(model: StagedModel) -> tuple[str, ...]:
    """Stages with at least one parameter that trains, head first, then downward to the stem."""
    return tuple(
        stage for stage in reversed(model.stage_names)
        if any(p.requires_grad for _, p in model.stage_parameters(stage))
    )


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total

