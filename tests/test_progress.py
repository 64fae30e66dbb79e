"""What a run prints: its first lines (device, precision, model, size, trainable parameters), a warning for frozen
stages at random init, and a progress bar only where someone watches."""

from __future__ import annotations

import sys

import pytest
import torch

from models import build_model
from trainer import metrics as M
from trainer.run import run_training
from trainer_helpers import scratch


def test_a_runs_first_lines_name_the_device_precision_model_size_and_parameters(base, monkeypatch, capsys):
    from trainer.progress import run_header

    outcome = run_training(scratch(base, run_id="header", epochs=1))  # device auto, on a machine without a GPU here
    lines = capsys.readouterr().out.splitlines()
    trainable, total = outcome.summary[M.TRAINABLE_PARAMS], outcome.summary[M.TOTAL_PARAMS]
    device_line = next(line for line in lines if line.startswith("warning: CPU: no GPU found"))
    assert "fp32" in device_line and "Colab" in device_line
    assert f"model: scratch_cnn (weights none) at 32 px: {trainable:,} of {total:,} parameters trainable" in lines
    assert lines.index(device_line) < min(i for i, line in enumerate(lines) if line.startswith("epoch "))
    assert not [line for line in lines if "random features" in line]  # random init, but every stage trains
    assert run_header("cpu", torch.device("cpu"), None, "resnet18", "IMAGENET1K_V1", 224, 513,
                      11_177_538).splitlines() == [
        "device: cpu, precision fp32",
        "model: resnet18 (weights IMAGENET1K_V1) at 224 px: 513 of 11,177,538 parameters trainable"]
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    gpu = run_header("auto", torch.device("cuda:0"), torch.float16, "resnet50", "IMAGENET1K_V2", 224, 1,
                     2).splitlines()[0]
    assert gpu == "device: cuda:0 (Tesla T4), precision fp16 with a grad scaler"


@pytest.mark.parametrize("strategy, warned",
                         [("head_only", True), ("norm_and_head", True), ("gradual", True), ("full", False)])
def test_a_frozen_strategy_on_random_init_warns_in_one_line(strategy, warned):
    from models import FreezeOptions, plan_for_epoch, resolve_strategy
    from trainer.progress import run_header

    model = build_model("resnet18", 3, "none")
    model.apply_plan(plan_for_epoch(resolve_strategy(strategy), model.stage_names, FreezeOptions(), 0))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    lines = run_header("cpu", torch.device("cpu"), None, "resnet18", "none", 224, trainable, total).splitlines()
    warnings = [line for line in lines if "random features" in line]
    assert len(warnings) == warned and all(line.startswith("warning: frozen stages at random init")
                                           for line in warnings)
    assert not [line for line in run_header("cpu", torch.device("cpu"), None, "resnet18", "IMAGENET1K_V1", 224,
                                            trainable,
                                            total).splitlines() if "random" in line]  # pretrained: frozen on purpose


def test_the_progress_bar_shows_only_on_a_terminal_or_in_a_notebook(capfd, monkeypatch):
    from trainer.progress import EpochProgress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)  # a sweep trial's output goes to a log file
    progress = EpochProgress("epoch 1/2", 10)
    for _ in range(10):
        progress.update(loss=torch.tensor(0.5), lr=0.1)
    progress.close()
    assert progress.bar is None and capfd.readouterr().err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert EpochProgress("epoch 1/2", 10).bar is not None
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    monkeypatch.setitem(sys.modules, "ipykernel", type(sys)("ipykernel"))  # a notebook: tqdm.auto draws a widget
    assert EpochProgress("epoch 1/2", 10).bar is not None
