"""Real transfer (issue 19): a backbone pretrained on one task, saved as a user's own weights file, fine-tunes through
the harness far past the scratch CNN on other classes at the resolution it was pretrained at, and loses that lead
when it is forced to its weights' metadata size (224 px).

The task (data/glyphs.py, the offline demo's too) is built so that what the source teaches is what the target needs, and
what a few images cannot teach. Each class is a glyph, two random pen strokes fixed per class (a letter of an unknown
alphabet), drawn in every image with ink and paper of random colours (either one the lighter), a random pose and stroke
width, and pixel noise: colour says nothing about the class, shape says everything. Pretrained on 16 glyphs of 100
images, resnet18 learns stroke detectors that ignore colour, and 5 unseen glyphs with 5 training images each are then a
linear problem on its features (`head_only`). The scratch CNN has 25 images to learn that invariance from and fits their
colours instead; given 90 images per glyph it learns the same target to 96-100 %, so its loss here is the data, not the
task. The images are 37 px (32 px crops at resnet18's 256/224 resize ratio): far from 224 px, and cheap enough to
pretrain in under a minute on two CPU cores. Slow: it trains resnet18 from random init. `pytest -m slow
tests/test_transfer.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from data.glyphs import write_glyphs
from trainer import metrics as M
from trainer.config import parse_run_config
from trainer.evaluate import evaluate_on_test_set
from trainer.run import run_training

pytestmark = pytest.mark.slow

SIZE = 32  # the training crop of both tasks, and the input_size the weights file's sidecar records
NORMALISATION = {"mean": [0.5] * 3, "std": [0.25] * 3}  # uniform random colours: mean 0.5, spread about 0.25-0.3
SOURCE_GLYPHS, SOURCE_IMAGES = range(16), 100
TARGET_GLYPHS, TARGET_IMAGES, TARGET_TEST_IMAGES = range(100, 105), 8, 30
TARGET_VAL_FRACTION = 3 / 8  # 3 validation images and 5 training images per glyph
TARGET_EPOCHS = 30  # both arms: enough for the scratch CNN to fit its 25 images (train loss about 0.1)
SEED = 0

# Measured while designing, with this code (test accuracy on 150 images, chance 20 %; 3 pretrainings, each on its own
# 16 glyphs; 4 sets of 5 target glyphs; 2 training seeds): head_only 60-93 %, the scratch CNN 17-34 % (lr 1e-3 or 3e-3,
# or augment=standard), head_only at 224 px 12-25 %; the smallest
# gap over the scratch CNN was 27 points, over 224 px 39.
# This test's own draw: 87 %, 17 % and 24 %.
MARGIN_OVER_SCRATCH = 0.2
MARGIN_OVER_FORCED_SIZE = 0.3


def run_settings(root: Path) -> dict:
    """What every run here shares: offline, in the test's folder, no augmentation, every epoch trained."""
    return {"cache_dir": str(root / "cache"), "output_dir": str(root / "runs"), "wandb_mode": "disabled",
            "num_workers": 0, "checkpoint_store": "local", "augment": "none", "patience": 0, "seed": SEED}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("transfer")


@pytest.fixture(scope="module")
def glyph_weights(root) -> Path:
    """resnet18 pretrained from random init on the source glyphs, saved as a user's own checkpoint would be: a plain
    torchvision state dict (its 16-class head included), with a sidecar FILE.json naming its size and normalisation."""
    write_glyphs(root / "source" / "train", SOURCE_GLYPHS, SOURCE_IMAGES, seed=1)
    outcome = run_training(parse_run_config(run_settings(root), {
        "data_dir": str(root / "source"), "run_id": "source", "model": "resnet18", "weights": "none",
        "strategy": "full",
        "backbone_lr_mult": 1.0,  # from random init every layer learns at the same rate
        "input_size": SIZE, "epochs": 5, "lr": 1e-3, "batch_size": 32, "val_fraction": 0.15,
        "mean": NORMALISATION["mean"], "std": NORMALISATION["std"]}))
    # Below this the features are not what the target test is about: say so here, not as a puzzling transfer failure.
    assert outcome.state == M.FINISHED and outcome.summary[M.BEST_VAL_ACC] >= 0.7, outcome.summary
    model = torch.load(outcome.folder / "best.pt", map_location="cpu", weights_only=True)["model"]
    path = root / "glyphs_resnet18.pth"
    torch.save({key.removeprefix("net."): value for key, value in model.items()}, path)
    path.with_name(path.name + ".json").write_text(json.dumps({**NORMALISATION, "input_size": SIZE}))
    return path


@pytest.fixture(scope="module")
def target_dir(root) -> Path:
    """The target: unseen glyphs, few training images, and a held-out test/ folder beside train/."""
    folder = root / "target"
    write_glyphs(folder / "train", TARGET_GLYPHS, TARGET_IMAGES, seed=2)
    write_glyphs(folder / "test", TARGET_GLYPHS, TARGET_TEST_IMAGES, seed=3)
    return folder


def train_and_test(root: Path, target_dir: Path, run_id: str, settings: dict) -> tuple[dict, float]:
    """(run summary, test accuracy) of a run on the target, both arms under one budget: epochs, batches, split."""
    outcome = run_training(parse_run_config(run_settings(root), {
        "data_dir": str(target_dir), "run_id": run_id, "epochs": TARGET_EPOCHS, "batch_size": 16,
        "val_fraction": TARGET_VAL_FRACTION}, settings))
    assert outcome.state == M.FINISHED, outcome.summary
    return outcome.summary, evaluate_on_test_set(outcome.folder, device="cpu")[M.TEST_ACC]


@pytest.fixture(scope="module")
def fine_tuned(root, target_dir, glyph_weights) -> tuple[dict, float]:
    # No input_size: the sidecar's 32 px is the default, as it would be for the user who wrote it.
    return train_and_test(root, target_dir, "fine_tuned", {"model": "resnet18", "weights": str(glyph_weights),
                                                           "strategy": "head_only", "lr": 1e-2})


def test_a_backbone_pretrained_on_other_glyphs_fine_tunes_far_past_the_scratch_cnn(root, target_dir, glyph_weights,
                                                                                   fine_tuned):
    summary, fine_tuned_acc = fine_tuned
    assert summary[M.WEIGHTS_VERSION] == f"file:{glyph_weights}"  # a warm start, named as one
    assert summary[M.INPUT_SIZE] == SIZE and summary["preprocessing"]["mean"] == NORMALISATION["mean"]  # the sidecar's
    _, scratch_acc = train_and_test(root, target_dir, "scratch",
                                    {"model": "scratch_cnn", "input_size": SIZE, "lr": 1e-3,
                                                                  "mean": NORMALISATION["mean"],
                                     "std": NORMALISATION["std"]})
    assert fine_tuned_acc >= scratch_acc + MARGIN_OVER_SCRATCH, (fine_tuned_acc, scratch_acc)


def test_the_same_backbone_forced_to_its_metadata_size_loses_what_the_right_size_wins(root, target_dir, glyph_weights,
                                                                                      fine_tuned):
    """The issue's premise: at 224 px the glyphs are seven times the size the features were learned at."""
    _, right_size_acc = fine_tuned
    summary, forced_acc = train_and_test(root, target_dir, "forced_224",
                                         {"model": "resnet18", "weights": str(glyph_weights),
                                                                         "strategy": "head_only", "lr": 1e-2,
                                          "input_size": 224})
    assert summary[M.INPUT_SIZE] == 224
    assert right_size_acc >= forced_acc + MARGIN_OVER_FORCED_SIZE, (right_size_acc, forced_acc)
