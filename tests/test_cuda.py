"""The CUDA path end to end: AMP (bf16; fp16 with a grad scaler), channels_last, pinned memory with
non-blocking copies, augmentation on the GPU, torch.compile. Skipped on machines without a GPU; on one, the
default `pytest` runs them (and `pytest -m slow tests/test_cuda.py` the compile check)."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from common.preprocessing import Preprocessing
from trainer import metrics as M
from trainer.config import parse_run_config
from trainer.run import run_training

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SMALL = Preprocessing(crop_size=64, resize_size=72, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@pytest.fixture
def gpu_run(nature_dir, tmp_path, monkeypatch):
    import trainer.run

    monkeypatch.setattr(trainer.run, "preprocessing_for", lambda *a, **k: SMALL)

    def run(**overrides):
        values = {"data_dir": str(nature_dir), "cache_dir": str(tmp_path / "cache"),
                  "output_dir": str(tmp_path / "runs"),
                  "wandb_mode": "disabled", "weights": "none", "model": "resnet18", "strategy": "last_k", "k_layers": 1,
                  "augment": "standard", "batch_size": 8, "epochs": 2, "device": "cuda", **overrides}
        return run_training(parse_run_config(values))

    return run


def history(outcome) -> list[dict]:
    return [json.loads(line) for line in (outcome.folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("precision, recorded, dtype",
                         [("bf16", "bfloat16", torch.bfloat16), ("fp16", "float16", torch.float16),
                                                       ("fp32", "fp32", None)])
def test_each_precision_trains_and_is_recorded(gpu_run, monkeypatch, precision, recorded, dtype):
    import trainer.run

    if precision == "bf16" and torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("bf16 is emulated before compute capability 8")
    real, used = trainer.run.autocast_factory, []
    monkeypatch.setattr(trainer.run, "autocast_factory", lambda device,
                        dt: used.append((device.type, dt)) or real(device, dt))
    outcome = gpu_run(run_id=f"p-{precision}", precision=precision)
    assert outcome.state == M.FINISHED, outcome.summary.get(M.REASON)
    assert used == [("cuda", dtype)]  # the loop's autocast runs in that dtype
    assert outcome.summary["precision"] == recorded and outcome.summary[M.DEVICE] != "cpu"
    rows = history(outcome)
    assert len(rows) == 2 and all(math.isfinite(r[M.TRAIN_LOSS]) and math.isfinite(r[M.VAL_LOSS]) for r in rows)


def test_head_only_on_cached_features_trains_on_the_gpu(gpu_run):
    outcome = gpu_run(run_id="cached", strategy="head_only", augment="none")
    assert outcome.state == M.FINISHED and outcome.summary["feature_cache_depth"] > 0


def test_training_steps_do_not_wait_on_the_gpu(gpu_run, monkeypatch):
    """Pinned memory, non-blocking copies and GPU augmentation: no training step makes a host-device sync,
    except the first of each epoch (set-up, and the previous epoch's validation and checkpoint)."""
    import trainer.loop

    steps: list[tuple[int, int]] = []  # (step within its epoch, sync warnings since the previous step)
    original = trainer.loop.EpochProgress

    def syncs() -> int:
        return sum("synchroniz" in str(r.message) for r in records)

    class Counting(original):
        def update(self, *args, **kwargs):
            super().update(*args, **kwargs)
            self.counted = getattr(self, "counted", 0) + 1
            total = syncs()
            steps.append((self.counted, total - getattr(Counting, "seen", 0)))
            Counting.seen = total

    monkeypatch.setattr(trainer.loop, "EpochProgress", Counting)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            # fp16's grad scaler reads found-inf on the host every step by design: bf16 or fp32 here
            precision = "bf16" if torch.cuda.get_device_capability()[0] >= 8 else "fp32"
            outcome = gpu_run(run_id="nosync", epochs=2, batch_size=4, precision=precision)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert outcome.state == M.FINISHED
    assert syncs() > 0  # the channel works: validation and checkpoints do sync, and were seen
    later_steps = [count for step, count in steps if step > 1]
    assert later_steps and all(count == 0 for count in later_steps), steps


@pytest.mark.parametrize("strategy, augment", [("last_k", "standard"), ("head_only", "none")])
def test_batches_arrive_in_pinned_memory(gpu_run, monkeypatch, strategy, augment):
    """A non_blocking copy from pageable memory raises no sync warning, yet is synchronous: check the pinning itself,
    for image batches and for cached features."""
    import data.loading

    real, pinned = data.loading.BatchLoader.epoch, []

    def epoch(self, *args, **kwargs):
        for images, labels in real(self, *args, **kwargs):
            pinned.append(images.is_pinned() and labels.is_pinned())
            yield images, labels

    monkeypatch.setattr(data.loading.BatchLoader, "epoch", epoch)
    outcome = gpu_run(run_id=f"pinned-{strategy}", strategy=strategy, augment=augment, epochs=1)
    assert outcome.state == M.FINISHED and pinned and all(pinned), pinned


@pytest.mark.slow
def test_compiled_model_trains(gpu_run, monkeypatch):
    import trainer.run

    real, compiled = torch.compile, []
    monkeypatch.setattr(trainer.run.torch, "compile", lambda model,
                        *a, **k: compiled.append(model) or real(model, *a, **k))
    outcome = gpu_run(run_id="compiled", compile=True)
    assert outcome.state == M.FINISHED, outcome.summary.get(M.REASON)
    assert len(compiled) == 1
