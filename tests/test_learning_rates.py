"""The learning rates: the schedule and its warmup, stepped every batch, and the backbone's multiplier, kept by
stages that gradual unfreezing adds and refused at 0 where backbone stages train."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.errors import UserError
from models import build_model
from trainer import metrics as M
from trainer.config import parse_run_config
from trainer.run import run_training
from trainer_helpers import scratch


def test_stages_unfrozen_later_keep_the_backbone_lr_multiplier():
    """backbone_lr_mult must hold for stages that gradual unfreezing adds mid-run too (not become 1)."""
    from trainer.config import freezing_of
    from trainer.optim import LearningRates

    config = parse_run_config({"model": "resnet18", "strategy": "gradual", "backbone_lr_mult": 0.05, "lr": 0.1})
    model = build_model("resnet18", 3, "none")
    freezing, rates = freezing_of(config), LearningRates.of(config)
    model.apply_plan(freezing.plan(model.stage_names, 0))
    optimizer = rates.optimizer_for(model)
    head_groups = len(optimizer.param_groups)
    rates.advance(model, optimizer, freezing, 1)  # layer4 joins the optimizer
    added = optimizer.param_groups[head_groups:]
    assert added and all(group["initial_lr"] == pytest.approx(0.005) for group in added)
    assert optimizer.param_groups[0]["initial_lr"] == 0.1


@pytest.mark.parametrize("settings, refused", [
    ({"strategy": "full"}, True), ({"strategy": "last_k", "k_layers": 2}, True), ({"strategy": "norm_and_head"}, True),
    ({"strategy": "gradual", "unfreeze_every_epochs": 2}, True),  # head only in epochs 1-2, a backbone stage from 3
    ({"strategy": "gradual", "unfreeze_every_epochs": 3}, False),  # never past the head in 3 epochs
    ({"strategy": "last_k", "k_layers": 0}, False), ({"strategy": "fraction", "freeze_fraction": 1.0}, False),
])
def test_a_zero_backbone_lr_multiplier_is_refused_where_backbone_stages_train(settings, refused):
    """lr 0 for "trained" stages: head-only in effect, under another strategy's name, with BatchNorm drifting."""
    from trainer.config import freezing_of
    from trainer.run import refuse_idle_backbone

    # reads: old runs load
    config = parse_run_config({"model": "resnet18", "backbone_lr_mult": 0, "epochs": 3, **settings})
    stages = ("stem", "layer1", "layer2", "layer3", "layer4", "head")
    check = lambda: refuse_idle_backbone(config, stages, freezing_of(config))  # noqa: E731
    if refused:
        with pytest.raises(UserError) as caught:
            check()
        assert "\n" not in str(caught.value) and "--strategy=head_only" in str(caught.value)
    else:
        check()


def test_a_run_with_a_zero_backbone_lr_multiplier_is_refused_before_it_trains(base):
    with pytest.raises(UserError, match="backbone_lr_mult=0 with strategy=full"):
        run_training(parse_run_config({**base, "model": "resnet18", "weights": "none", "strategy": "full",
                                       "backbone_lr_mult": 0, "run_id": "idle", "epochs": 1}))
    summary = json.loads((Path(base["output_dir"]) / "idle" / "summary.json").read_text())
    assert summary[M.STATE] == M.FAILED and summary[M.EXIT_CODE] == 2 and "backbone_lr_mult=0" in summary[M.REASON]


@pytest.mark.parametrize("schedule, warmup_epochs", [("cosine", 0), ("cosine", 1), ("onecycle", None), ("constant", 1)])
def test_the_learning_rate_schedule_steps_every_batch(base, monkeypatch, schedule, warmup_epochs):
    """The schedule is a function of the global step, never of the epoch, whatever the schedule; warmup is
    counted in epochs of batches."""
    import trainer.optim
    from trainer.optim import lr_factor

    factors, real = [], trainer.optim.set_learning_rates
    monkeypatch.setattr(trainer.optim, "set_learning_rates", lambda opt, f: (factors.append(f), real(opt, f))[1])
    outcome = run_training(scratch(base, run_id="sched", epochs=2, warmup_epochs=warmup_epochs, schedule=schedule))
    assert outcome.state == M.FINISHED
    per_epoch = outcome.summary["num_train"] // 8
    total, warmup = 2 * per_epoch, (warmup_epochs or 0) * per_epoch
    assert factors == pytest.approx([lr_factor(s, total, warmup, schedule) for s in range(total)])
    # A new value nearly every batch (the peak may repeat once); constant varies only while it warms up.
    assert len(set(factors)) >= (total - 1 if schedule != "constant" else warmup) > 1


def test_lr_factor_shapes():
    from trainer.optim import lr_factor

    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)  # linear warmup
    assert lr_factor(9, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)  # cosine midpoint after warmup
    assert lr_factor(99, 100, 10, "constant") == 1.0
    assert lr_factor(29, 100, 0, "onecycle") == pytest.approx(1.0)  # onecycle peaks at 30 %


def test_the_learning_rate_stays_at_its_floor_past_the_last_step():
    from trainer.optim import lr_factor

    assert lr_factor(150, 100, 10, "cosine") == pytest.approx(0.0)
    assert lr_factor(150, 100, 0, "onecycle") == pytest.approx(1e-4)
