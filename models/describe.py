"""A plain-text description of every backbone: weights, preprocessing, stages, and what each strategy trains.

Backs `agent.py models`, so a user sees what `k_layers=2` means on each model before spending GPU hours.
Models are built with random init: nothing is downloaded.
"""

from __future__ import annotations

from models.freezing import FreezeOptions, frozen_count_for_fraction, plan_for_epoch, resolve_strategy, strategy_names
from models.param_groups import count_parameters
from models.registry import backbone_names, get_spec
from models.staged import StagedModel
from models.weights import build_model, preprocessing_for

_FRACTIONS = (0.25, 0.5, 0.75)


def _strategy_rows(model: StagedModel) -> list[tuple[str, FreezeOptions]]:
    n = len(model.stage_names) - 1
    rows = []
    for name in strategy_names():
        uses = resolve_strategy(name).uses
        if "k_layers" in uses:
            rows += [(f"{name} k_layers={k}", FreezeOptions(k_layers=k)) for k in range(n + 1)]
        elif "freeze_fraction" in uses:
            # the label shows what a run records: the share of stages actually frozen (0.5 of 5 freezes 3 = 0.6)
            frozen = sorted({frozen_count_for_fraction(n, f) for f in _FRACTIONS})
            rows += [(f"{name} freeze_fraction={f} ({k} of {n} frozen)", FreezeOptions(freeze_fraction=f))
                     for k in frozen for f in [round(k / n, 4)]]
        elif "unfreeze_every_epochs" in uses:
            rows.append((f"{name} (at epoch 0)", FreezeOptions()))
        else:
            rows.append((name, FreezeOptions()))
    return rows


def describe_model(name: str, num_classes: int = 10) -> str:
    spec = get_spec(name)
    model = build_model(name, num_classes, weights="none")
    lines = [f"{name}: {spec.description}"]
    if spec.is_scratch:
        lines.append("  weights: none (trained from scratch)")
    else:
        version = f"{spec.weights_enum.__name__}.{spec.default_weights}"
        lines.append(f"  weights: imagenet = {version}")
    pre = preprocessing_for(name, "none")
    lines.append(f"  input: crop {pre.crop_size} px after resizing the short side to {pre.resize_size} px "
                 f"({pre.interpolation}), mean {pre.mean}, std {pre.std}")
    multiple = f", a multiple of {spec.input_multiple}" if spec.input_multiple > 1 else ""
    aux_floor = max((a.min_input_size for a in spec.aux_heads), default=0)
    aux_note = f"; below {aux_floor} px it trains without its aux head" if aux_floor > spec.min_input_size else ""
    fixed = " (the dense layer is built for it: validation and test at the same size)" if spec.sized_by_input else ""
    lines.append(f"  sizes: --input_size (training) and --eval_size take any size >= {max(spec.min_input_size, 16)} px"
                 f"{multiple}{aux_note}{fixed}; resize keeps the {pre.resize_size}/{pre.crop_size} ratio")
    if model.spec.aux_heads:
        aux = ", ".join(f"{a.module} after {a.after_stage}" for a in model.spec.aux_heads)
        lines.append(f"  aux heads: {aux} (default loss weight {model.aux_loss_weight})")
    lines.append(f"  stages ({len(model.stage_names) - 1} backbone + head; parameters for {num_classes} classes):")
    aux_count = sum(p.numel() for aux in spec.aux_heads for _, p in model.aux_parameters(aux))
    for stage in model.stage_names:
        count = sum(p.numel() for _, p in model.stage_parameters(stage))
        if stage == "head" and aux_count:
            lines.append(f"    {stage:<14} {count - aux_count:>13,}  (+{aux_count:,} in aux heads, trained with it)")
        else:
            lines.append(f"    {stage:<14} {count:>13,}")
    total = count_parameters(model)[1]
    if spec.is_scratch:
        lines.append(f"  every strategy trains all {total:,} parameters (no pretrained weights to keep)")
        return "\n".join(lines)
    lines.append("  trainable parameters per strategy:")
    for label, options in _strategy_rows(model):
        plan = plan_for_epoch(resolve_strategy(label.split()[0]), model.stage_names, options, 0, name)
        model.apply_plan(plan)
        trainable = count_parameters(model)[0]
        lines.append(f"    {label:<32} {trainable:>13,} / {total:,} ({100 * trainable / total:5.1f} %)")
    return "\n".join(lines)


def describe_models(names: list[str] | tuple[str, ...] | None = None, num_classes: int = 10) -> str:
    """Every registered backbone (or `names`), for a `num_classes`-way head (10: iNaturalist-12K)."""
    return "\n\n".join(describe_model(name, num_classes) for name in (names or backbone_names()))
