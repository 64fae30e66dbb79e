"""The frozen prefix's feature cache: a run on cached features trains as one without; features are shared only by
runs that feed the prefix the same pixels with the same statistics, never with augmentation on."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer import metrics as M
from trainer.config import parse_run_config
from trainer.run import run_training
from trainer_helpers import SMALL, FixedImages, _to_input, history, tiny_cnn, without_timing


def test_cached_and_uncached_training_agree(base, small_inputs):
    # backbone_lr_mult as random init's default was when the tolerance below was set (now 1): fp16 rounding in the
    # prefix moves a layer trained 10x faster further, and this test is about the cache, not the learning rate.
    common = {**base, "model": "resnet18", "strategy": "last_k", "k_layers": 1, "augment": "none", "epochs": 2,
              "backbone_lr_mult": 0.1}
    cached = run_training(parse_run_config({**common, "run_id": "cached"}))
    plain = run_training(parse_run_config({**common, "run_id": "plain", "image_cache": False, "feature_cache": False}))
    images_only = run_training(parse_run_config({**common, "run_id": "images", "feature_cache": False}))
    assert cached.summary["feature_cache_depth"] == 4 and plain.summary["feature_cache_depth"] == 0
    # The decoded-image cache holds the very pixels decoding gives: identical training.
    assert without_timing(history(images_only)) == without_timing(history(plain))
    # Prefix features are stored in fp16: the same run up to rounding.
    for a, b in zip(history(cached), history(plain)):
        assert a[M.TRAIN_LOSS] == pytest.approx(b[M.TRAIN_LOSS], abs=2e-2)
        assert a[M.VAL_LOSS] == pytest.approx(b[M.VAL_LOSS], abs=2e-2)


def test_prefix_features_are_shared_only_by_runs_that_feed_the_prefix_the_same_pixels(base, monkeypatch):
    """Same weights, crop and resize, but another normalisation (a warm start keeps its source's) or precision:
    other features."""
    import dataclasses

    import trainer.run

    common = {**base, "model": "resnet18", "strategy": "head_only", "augment": "none", "epochs": 1}
    runs = (("a", SMALL, "fp32"), ("b", SMALL, "fp32"), ("c", dataclasses.replace(SMALL, mean=(0.5, 0.5, 0.5)), "fp32"),
            ("d", SMALL, "bf16"))  # the prefix run at another precision computes other features too
    for run_id, pre, precision in runs:
        monkeypatch.setattr(trainer.run, "preprocessing_for", lambda *a, pre=pre, **k: pre)
        outcome = run_training(parse_run_config({**common, "run_id": run_id, "precision": precision}))
        assert outcome.summary["feature_cache_depth"] == 5
    assert len(list((Path(base["cache_dir"])).glob("features-*.f16"))) == 3  # b reused a's; c and d built their own


def test_an_augmented_run_never_trains_on_cached_features(base, small_inputs, monkeypatch):
    """Pitfall 2: cached features are eval-transformed; with
    augmentation on, every batch goes through TrainTransform."""
    from data.augment import TrainTransform

    seen, real = [], TrainTransform.__call__
    monkeypatch.setattr(TrainTransform, "__call__", lambda self, images,
                        g: (seen.append(len(images)), real(self, images, g))[1])
    outcome = run_training(parse_run_config({**base, "model": "resnet18", "strategy": "head_only", "epochs": 1,
                                             "augment": "standard", "run_id": "aug"}))
    assert outcome.state == M.FINISHED and outcome.summary["feature_cache_depth"] == 0
    assert sum(seen) == (outcome.summary["num_train"] // 8) * 8


def cached_features(model, images: FixedImages, cache_dir: Path, key: str) -> torch.Tensor:
    """Stage 1 (conv + BatchNorm) of `model` on `images`, through the feature cache."""
    from trainer.features import build_or_open_features

    rows = np.arange(len(images.images))
    cache = build_or_open_features(model, 1, images, rows, np.zeros(len(rows), dtype=np.int64), _to_input,
                                   torch.device("cpu"), contextlib.nullcontext, cache_dir, key)
    return torch.from_numpy(cache.read(rows).astype(np.float32))


def computed_features(model, images: FixedImages) -> torch.Tensor:
    frozen = copy.deepcopy(model).eval()
    with torch.no_grad():
        return frozen.forward_range(_to_input(torch.from_numpy(images.images)), 0, 1)


def test_models_with_the_same_weights_but_other_bn_statistics_never_share_cached_features(tmp_path):
    first = tiny_cnn()
    images = FixedImages(seed=1)
    assert torch.allclose(cached_features(first, images, tmp_path, "split"), computed_features(first, images),
                          atol=1e-2)
    adapted = copy.deepcopy(first)  # e.g. a run whose BN statistics adapted: same parameters, other running mean/var
    for module in adapted.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean += 0.5
            module.running_var *= 3
    expected = computed_features(adapted, images)
    assert not torch.allclose(expected, computed_features(first, images), atol=1e-2)
    assert torch.allclose(cached_features(adapted, images, tmp_path, "split"), expected, atol=1e-2)


def test_another_split_never_reads_the_cached_features_of_this_one(tmp_path):
    model = tiny_cnn()
    this_split, other_split = FixedImages(seed=1), FixedImages(seed=2)
    cached_features(model, this_split, tmp_path, "split-a")
    assert torch.allclose(cached_features(model, other_split, tmp_path, "split-b"),
                          computed_features(model, other_split), atol=1e-2)


def test_caching_features_leaves_a_training_model_in_training_mode(tmp_path):
    model = tiny_cnn().train()
    cached_features(model, FixedImages(seed=1), tmp_path, "split")
    assert model.training and all(module.training for module in model.modules())
