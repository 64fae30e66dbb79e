"""The training loop: the objective and the logged losses, validation in eval mode, the best epoch and patience,
a new data order and augmentation every epoch, and which transform feeds which batches."""

from __future__ import annotations

import contextlib
import copy
import math

import pytest
import torch

from trainer import metrics as M
from trainer.config import parse_run_config
from trainer.run import run_training
from trainer.wandb_log import RunLogger
from trainer_helpers import SMALL, FixedImages, _to_input, history, scratch, tiny_cnn


@pytest.mark.parametrize("augment", ["standard", "strong"])
def test_training_batches_are_augmented_and_validation_batches_are_not(base, monkeypatch, augment):
    """Pitfalls 2 and 3 at the run level: the train transform feeds training, the eval transform validation."""
    from data.augment import EvalTransform, TrainTransform

    seen = {"train": 0, "eval": 0, "levels": set()}
    real_train, real_eval = TrainTransform.__call__, EvalTransform.__call__

    def train_call(self, images, generator):
        seen["train"] += len(images)
        seen["levels"].add(self.level)
        out = real_train(self, images, generator)
        seen["differs"] = seen.get("differs", True) and not torch.allclose(
            out, real_eval(EvalTransform(self.pre), images))
        return out

    def eval_call(self, images):
        seen["eval"] += len(images)
        return real_eval(self, images)

    monkeypatch.setattr(TrainTransform, "__call__", train_call)
    monkeypatch.setattr(EvalTransform, "__call__", eval_call)
    outcome = run_training(scratch(base, run_id="wiring", epochs=2, augment=augment))
    assert outcome.state == M.FINISHED
    num_train, num_val, batch = outcome.summary["num_train"], outcome.summary["num_val"], outcome.summary["batch_size"]
    assert seen["train"] == 2 * (num_train // batch) * batch  # every training image of both epochs, augmented
    assert seen["eval"] == 2 * num_val  # validation: the deterministic transform, each epoch
    assert seen["levels"] == {augment} and seen["differs"]  # the level asked for, and it changes every batch


def test_the_best_epoch_not_the_last_is_what_the_record_best_pt_and_wandb_keep(base, monkeypatch):
    """val_acc 0.5, 0.8, 0.6: epoch 2 everywhere (summary.json, best.pt, and the W&B summary the sweep optimises)."""
    import trainer.loop
    import trainer.run

    accs, summaries = iter([0.5, 0.8, 0.6]), []
    monkeypatch.setattr(trainer.loop, "evaluate", lambda loop, loader: (1.0, next(accs)))

    class Spy(RunLogger):
        def summary(self, values):
            summaries.append(dict(values))

    monkeypatch.setattr(trainer.run, "start_logger", lambda *a, **k: Spy())
    outcome = run_training(scratch(base, run_id="best", epochs=3, patience=0))
    assert outcome.state == M.FINISHED
    assert (outcome.summary[M.BEST_VAL_ACC], outcome.summary[M.BEST_EPOCH]) == (0.8, 2)
    assert torch.load(outcome.folder / "best.pt", weights_only=True)["loop"]["epoch"] == 2
    logged = [s[M.VAL_ACC] for s in summaries if s.get(M.VAL_ACC) is not None]
    assert logged and logged[-1] == 0.8


def test_patience_stops_a_run_says_so_and_a_resume_does_not_train_past_it(base, monkeypatch, capsys):
    import trainer.loop

    accs = iter([0.5, 0.4, 0.3, 0.9, 0.9])
    monkeypatch.setattr(trainer.loop, "evaluate", lambda loop, loader: (1.0, next(accs)))
    outcome = run_training(scratch(base, run_id="patient", epochs=5, patience=2))
    assert outcome.state == M.FINISHED and outcome.summary[M.EPOCHS_COMPLETED] == 3
    assert "stopped after epoch 3 of 5" in outcome.summary["stopped_by_patience"]
    capsys.readouterr()
    again = run_training(scratch(base, run_id="patient", epochs=5, patience=2, resume=True))
    assert again.state == M.FINISHED and len(history(again)) == 3  # epochs 4 and 5 (0.9) never ran
    assert "has already trained all it will (3 of 5 epochs" in capsys.readouterr().out
    monkeypatch.setattr(trainer.loop, "evaluate", lambda loop, loader: (1.0, 0.5))
    fresh = run_training(scratch(base, run_id="patient", epochs=2, patience=0))  # another config: a fresh start
    assert fresh.summary[M.EPOCHS_COMPLETED] == 2 and "stopped_by_patience" not in fresh.summary
    # runs out on the last epoch: cut nothing
    last = run_training(scratch(base, run_id="last-epoch", epochs=2, patience=1))
    assert last.summary[M.EPOCHS_COMPLETED] == 2 and "stopped_by_patience" not in last.summary


@pytest.mark.parametrize("image_cache", [True, False])
def test_images_reach_the_model_at_the_preprocessings_working_size(base, monkeypatch, image_cache):
    """Pitfall 10 at run level: cached or decoded, the square the crop is taken from is the preprocessing's resize."""
    from data.augment import EvalTransform
    from models import preprocessing_for
    from scratch_cnn import ScratchCNNConfig

    sizes, real = set(), EvalTransform.__call__
    monkeypatch.setattr(EvalTransform, "__call__", lambda self,
                        images: (sizes.add(tuple(images.shape[1:3])), real(self, images))[1])
    outcome = run_training(scratch(base, run_id="geom", epochs=1, image_cache=image_cache))
    assert outcome.state == M.FINISHED
    pre = preprocessing_for("scratch_cnn", "none", ScratchCNNConfig(input_size=32))
    assert sizes == {(pre.resize_size, pre.resize_size)}


def training_losses(monkeypatch, add=0.0) -> list[tuple[float, float]]:
    """Spy on the loop's cross-entropy: (label_smoothing, value) of each training call (validation runs under
    inference mode, training does not); `add` is added to each training loss without touching its gradient."""
    import trainer.loop

    real, calls = trainer.loop.F.cross_entropy, []

    def spy(*args, **kwargs):
        loss = real(*args, **kwargs)
        if torch.is_inference_mode_enabled():  # validation
            return loss
        calls.append((kwargs.get("label_smoothing", 0.0), loss.item()))
        return loss + add

    monkeypatch.setattr(trainer.loop.F, "cross_entropy", spy)
    return calls


def test_the_objective_adds_the_weighted_aux_losses_and_train_loss_is_the_main_heads_plain_loss(base, monkeypatch):
    """The objective is smoothed main + weight x smoothed aux; train_loss is the main head's plain cross-entropy,
    like val_loss, so it compares across models with and without aux heads or label smoothing."""
    import dataclasses

    import trainer.run

    monkeypatch.setattr(trainer.run, "preprocessing_for",
                        lambda *a, **k: dataclasses.replace(SMALL, crop_size=32, resize_size=36))
    calls, objectives = training_losses(monkeypatch), []
    real_scale = torch.amp.GradScaler.scale
    monkeypatch.setattr(torch.amp.GradScaler, "scale", lambda self,
                        loss: objectives.append(loss.item()) or real_scale(self, loss))
    # GoogLeNet's last 4 stages train: inception4d and so its aux2 head (aux1 reads the frozen inception4a)
    outcome = run_training(parse_run_config({**base, "model": "googlenet", "strategy": "last_k", "k_layers": 4,
                                             "aux_loss_weight": 0.3,
                                             "label_smoothing": 0.2, "epochs": 1, "subset_fraction": 0.6,
                                             "run_id": "aux"}))
    assert outcome.state == M.FINISHED, outcome.summary.get(M.REASON)
    steps = outcome.summary["num_train"] // 8
    # each step: the smoothed main loss, its plain twin for the log, the smoothed aux2 loss
    assert len(calls) == 3 * steps and [smoothing for smoothing, _ in calls[:3]] == [0.2, 0.0, 0.2]
    main, plain, aux2 = ([value for _, value in calls[i::3]] for i in range(3))
    assert objectives == pytest.approx([m + 0.3 * a for m, a in zip(main, aux2)], rel=1e-6)
    assert history(outcome)[0][M.TRAIN_LOSS] == pytest.approx(sum(plain) / steps, rel=1e-5)
    assert all(p != pytest.approx(m, rel=1e-3) for p, m in zip(plain, main))  # smoothing really was on


def test_validation_runs_the_model_in_eval_mode_and_moves_no_statistic():
    """Pitfall 3: dropout off and BatchNorm on its running statistics, whatever mode training left the model in."""
    import types

    from trainer.loop import evaluate

    model, images = tiny_cnn(), torch.from_numpy(FixedImages(seed=1).images)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    batches = types.SimpleNamespace(epoch=lambda epoch: [(images[:4], labels[:4]), (images[4:], labels[4:])])
    inputs = types.SimpleNamespace(eval_input=_to_input, start_stage=0)
    loop = types.SimpleNamespace(model=model, inputs=inputs, device=torch.device("cpu"),
                                 autocast=contextlib.nullcontext)
    before = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        logits = copy.deepcopy(model).eval()(_to_input(images))
    expected = (torch.nn.functional.cross_entropy(logits, labels).item(),
                (logits.argmax(1) == labels).float().mean().item())
    for _ in range(2):
        model.train()  # as the epoch left it
        assert evaluate(loop, batches) == pytest.approx(expected)
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())


def test_a_tie_at_an_equal_loss_is_no_improvement_the_first_best_epoch_stays_best(base, monkeypatch):
    import trainer.loop

    accs = iter([0.5, 0.8, 0.8, 0.8, 0.8])
    monkeypatch.setattr(trainer.loop, "evaluate", lambda loop, loader: (1.0, next(accs)))
    outcome = run_training(scratch(base, run_id="tie", epochs=5, patience=2))
    assert (outcome.summary[M.BEST_EPOCH], outcome.summary[M.EPOCHS_COMPLETED]) == (2, 4)  # patience counts the ties
    assert torch.load(outcome.folder / "best.pt", weights_only=True)["loop"]["epoch"] == 2


def test_a_tie_in_val_acc_goes_to_the_lower_val_loss_in_the_summary_best_pt_and_patience(base, monkeypatch):
    """On a small validation set accuracy moves in steps: epochs 2-4 tie at 0.8, epoch 3 has the lowest loss."""
    import trainer.loop

    results = iter([(1.0, 0.5), (0.9, 0.8), (0.7, 0.8), (0.8, 0.8), (0.75, 0.8), (0.7, 0.8)])
    monkeypatch.setattr(trainer.loop, "evaluate", lambda loop, loader: next(results))
    outcome = run_training(scratch(base, run_id="tie-loss", epochs=6, patience=3))
    assert (outcome.summary[M.BEST_EPOCH], outcome.summary[M.BEST_VAL_ACC]) == (3, 0.8)
    assert torch.load(outcome.folder / "best.pt", weights_only=True)["loop"]["epoch"] == 3
    assert outcome.summary[M.EPOCHS_COMPLETED] == 6  # patience counts from epoch 3: 4, 5 and 6 did not beat it


def test_a_checkpoint_from_before_the_tie_rule_takes_its_best_loss_from_its_history():
    from trainer.checkpoint import restore
    from trainer.loop import is_better

    model = tiny_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": {},
               "rng": {"torch": torch.get_rng_state(), "cuda": []},
               "loop": {"epoch": 3, "best_val_acc": 0.8, "best_epoch": 2, "stale_epochs": 1},
               "history": [{"epoch": e, "val_loss": v} for e, v in ((1, 1.0), (2, 0.6), (3, 0.9))]}
    assert restore(payload, model=model, optimizer=optimizer, scaler=None).best_val_loss == 0.6
    payload["history"] = []  # unknown: a tie stays no improvement, the rule the checkpoint was written under
    state = restore(payload, model=model, optimizer=optimizer, scaler=None)
    assert state.best_val_loss == -math.inf and not is_better(0.8, 0.1, state) and is_better(0.81, 5.0, state)


def test_a_run_that_never_beats_chance_says_so_when_it_ends(base, monkeypatch, capsys):
    import trainer.loop

    monkeypatch.setattr(trainer.loop, "evaluate", lambda loop, loader: (9.0, 0.0))
    outcome = run_training(scratch(base, run_id="chance", epochs=1))
    classes = len(outcome.summary["classes"])
    assert outcome.state == M.FINISHED
    assert f"never beat chance on validation (best val_acc 0.0000, chance 1/{classes}" in capsys.readouterr().out
    monkeypatch.setattr(trainer.loop, "evaluate", lambda loop, loader: (0.1, 1 / classes + 0.01))
    run_training(scratch(base, run_id="learned", epochs=1))
    assert "never beat chance" not in capsys.readouterr().out


def test_a_batch_larger_than_the_training_set_is_one_step_an_epoch_and_says_so(base, capsys):
    outcome = run_training(scratch(base, run_id="big-batch", epochs=1, batch_size=4096))
    train = outcome.summary["num_train"]
    assert outcome.state == M.FINISHED and history(outcome)[0][M.EPOCH] == 1
    assert f"note: batch_size=4096 is more than the {train} training images: each epoch is a single step" in (
        capsys.readouterr().out)


def test_a_training_loss_that_is_not_finite_ends_the_run_as_diverged_even_when_validation_is(base, monkeypatch):
    """As when fp16 overflows and the grad scaler skips the steps: the weights stay finite, the loss does not."""
    training_losses(monkeypatch, add=float("nan"))
    outcome = run_training(scratch(base, run_id="nan-train", epochs=1))
    assert outcome.state == M.DIVERGED
    assert (outcome.summary[M.REASON].startswith("training loss became nan in epoch 1")
            and "lower lr" in outcome.summary[M.REASON])


def test_every_epoch_trains_in_a_new_order_with_new_augmentation(base, monkeypatch):
    from data.augment import TrainTransform

    order, seeds, real = [], [], TrainTransform.__call__

    def spy(self, images, generator):
        order.extend(hash(image.numpy().tobytes()) for image in images)
        seeds.append(generator.initial_seed())
        return real(self, images, generator)

    monkeypatch.setattr(TrainTransform, "__call__", spy)
    outcome = run_training(scratch(base, run_id="order", epochs=2, augment="standard"))
    per_epoch = (outcome.summary["num_train"] // 8) * 8
    assert len(order) == 2 * per_epoch and order[:per_epoch] != order[per_epoch:]
    assert len(set(seeds)) == len(seeds)  # no two batches of the run draw the same augmentation
