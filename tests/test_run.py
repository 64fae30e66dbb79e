"""The run end to end, at its boundary: the record it writes, every strategy training, how it ends (finished,
diverged, out of memory, failed, stopped by a signal) with which exit code, and what it never reads or writes."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml

from common.errors import UserError
from models import build_model, strategy_names
from trainer import metrics as M
from trainer.config import parse_run_config
from trainer.run import run_training
from trainer_helpers import history, scratch


def test_scratch_run_writes_a_complete_record(base):
    outcome = run_training(scratch(base, run_id="rec"))
    skipped = (outcome.folder / "skipped_files.txt").read_text().splitlines()  # the scan names 3; all are kept
    assert sorted(line.split("\t")[0] for line in skipped) == ["Amphibia/broken_000.jpg", "Amphibia/notes.txt",
                                                               "Aves/truncated_000.jpg"]
    assert outcome.state == M.FINISHED and outcome.exit_code == 0
    folder = outcome.folder
    assert {p.name for p in folder.iterdir()} >= {"config.yaml", "metrics.jsonl", "summary.json", "last.pt", "best.pt"}
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["model"] == "scratch_cnn" and config["k_layers"] is None and config["strategy"] == "full"
    rows = history(outcome)
    assert [r[M.EPOCH] for r in rows] == [1, 2] and all(set(M.EPOCH_METRICS) <= set(r) for r in rows)
    summary = json.loads((folder / "summary.json").read_text())
    for key in (M.STATE, M.BEST_VAL_ACC, M.BEST_EPOCH, M.TRAINABLE_PARAMS, M.TOTAL_PARAMS, M.TRAIN_SECONDS,
                M.SPLIT_HASH, M.WEIGHTS_VERSION, M.DEVICE):
        assert key in summary
    assert summary[M.CACHE_SECONDS] > 0  # the decoded-image cache was built in this run, outside train_seconds
    assert summary[M.BEST_VAL_ACC] == max(r[M.VAL_ACC] for r in rows)
    assert rows[summary[M.BEST_EPOCH] - 1][M.VAL_ACC] == summary[M.BEST_VAL_ACC]  # the best epoch, not the last
    for name in ("last.pt", "best.pt"):
        payload = torch.load(folder / name, weights_only=True)
        assert isinstance(payload["model"], dict) and isinstance(payload["epoch"], int)
    assert torch.load(folder / "last.pt", weights_only=True)["epoch"] == 2


@pytest.mark.parametrize("strategy", strategy_names())
def test_resnet18_trains_under_every_strategy(base, small_inputs, strategy):
    config = parse_run_config(
        {**base, "model": "resnet18", "strategy": strategy, "epochs": 1, "augment": "standard", "run_id": strategy})
    outcome = run_training(config)
    assert outcome.state == M.FINISHED, outcome.summary.get(M.REASON)
    trainable, total = outcome.summary[M.TRAINABLE_PARAMS], outcome.summary[M.TOTAL_PARAMS]
    if strategy == "full":
        assert trainable == total
    elif strategy in ("head_only", "gradual"):  # gradual starts with the head alone and this run has one epoch
        assert trainable == 512 * 3 + 3
    else:
        assert 512 * 3 + 3 < trainable < total


def test_head_only_run_leaves_backbone_and_bn_buffers_untouched(base, small_inputs):
    config = parse_run_config(
        {**base, "model": "resnet18", "strategy": "head_only", "augment": "standard", "lr": 0.5, "run_id": "frozen"})
    torch.manual_seed(config.seed)  # the run builds its model after seeding with the same seed
    initial = build_model("resnet18", 3, "none").state_dict()
    outcome = run_training(config)
    trained = torch.load(outcome.folder / "last.pt", weights_only=True)["model"]
    backbone = [k for k in initial if not k.startswith("net.fc.")]
    assert any("running_mean" in k for k in backbone)
    for key in backbone:
        assert torch.equal(initial[key], trained[key]), key
    assert not torch.equal(initial["net.fc.weight"], trained["net.fc.weight"])


def test_ctrl_c_twice_still_leaves_a_record_and_the_run_resumes(base, monkeypatch):
    import trainer.loop

    class SecondCtrlC(trainer.loop.EpochProgress):
        steps = 0

        def update(self, *args, **kwargs):
            super().update(*args, **kwargs)
            SecondCtrlC.steps += 1
            if SecondCtrlC.steps == 5:  # epoch 2: what GracefulStop raises on the second SIGINT
                raise KeyboardInterrupt

    monkeypatch.setattr(trainer.loop, "EpochProgress", SecondCtrlC)
    cut = run_training(scratch(base, run_id="twice", epochs=2))
    assert (cut.state == M.PREEMPTED and cut.exit_code == 128 + signal.SIGINT
            and "interrupted twice" in cut.summary[M.REASON])
    assert json.loads((cut.folder / "summary.json").read_text())[M.STATE] == M.PREEMPTED
    monkeypatch.setattr(trainer.loop, "EpochProgress", SecondCtrlC.__mro__[1])
    resumed = run_training(scratch(base, run_id="twice", epochs=2, resume=True))
    assert resumed.state == M.FINISHED and resumed.summary["resumed_from_epoch"] == 1


def test_nan_loss_ends_the_run_as_diverged(base, monkeypatch):
    import trainer.loop

    real = trainer.loop.F.cross_entropy
    monkeypatch.setattr(trainer.loop.F, "cross_entropy", lambda *a, **k: real(*a, **k) * float("nan"))
    outcome = run_training(scratch(base, run_id="nan"))
    assert outcome.state == M.DIVERGED and outcome.exit_code == 0
    assert "lower lr" in outcome.summary[M.REASON]


def test_out_of_memory_retries_at_half_batch(base, monkeypatch):
    import trainer.run

    real, calls = trainer.run._attempt, []

    def attempt(config, run_id, record, logger, store, batch_size, stop, fresh=False):
        calls.append((batch_size, fresh))
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(config, run_id, record, logger, store, batch_size, stop, fresh)

    monkeypatch.setattr(trainer.run, "_attempt", attempt)
    outcome = run_training(scratch(base, run_id="oom"))
    assert calls == [(8, False), (4, True)]  # the retry starts fresh: no checkpoint of the failed attempt
    assert (outcome.state == M.FINISHED
            and (outcome.summary[M.BATCH_SIZE], outcome.summary[M.BATCH_SIZE_ASKED]) == (4, 8))
    monkeypatch.setattr(trainer.run, "_attempt", real)
    again = run_training(scratch(base, run_id="oom", epochs=3))  # another config under the run id, trained at 8
    assert (again.summary[M.BATCH_SIZE], again.summary[M.BATCH_SIZE_ASKED]) == (8, None)
    monkeypatch.setattr(trainer.run, "_attempt",
                        lambda *a, **k: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("CUDA out of memory")))
    outcome = run_training(scratch(base, run_id="oom2", oom_retry=False))
    assert outcome.state == M.OOM and outcome.exit_code == 0 and "out of memory" in outcome.summary[M.REASON]

    def always_out_of_memory(config, run_id, record, logger, store, batch_size, stop, fresh=False):
        calls.append((batch_size, fresh))
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    calls.clear()  # out of memory again at half the batch: one retry only, then the run ends as oom
    monkeypatch.setattr(trainer.run, "_attempt", always_out_of_memory)
    outcome = run_training(scratch(base, run_id="oom3"))
    assert calls == [(8, False), (4, True)] and outcome.state == M.OOM and "batch_size=4" in outcome.summary[M.REASON]
    assert "input_size=32" in outcome.summary[M.REASON]  # a size too large for the GPU says so: the size is named


def test_out_of_memory_retry_replaces_the_failed_attempts_checkpoint_in_the_store(base, tmp_path, monkeypatch):
    """A preemption before the retry's first checkpoint must
    resume the retry, not the attempt that ran out of memory."""
    import trainer.run

    store, seen, real_train = tmp_path / "store", [], trainer.run.train

    def train(loop, state):
        payload = (torch.load(store / "oom-store" / "last.pt", weights_only=True)
                   if (store / "oom-store" / "last.pt").exists() else None)
        seen.append(payload and (payload["loop"]["epoch"], payload["loop"]["batch_size"]))
        if len(seen) == 1:
            real_train(loop, state)  # attempt 1 checkpoints its epochs into the store, then runs out of memory
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_train(loop, state)

    monkeypatch.setattr(trainer.run, "train", train)
    outcome = run_training(scratch(base, run_id="oom-store", checkpoint_store=str(store)))
    assert outcome.state == M.FINISHED and outcome.summary["batch_size"] == 4
    assert seen == [None, (0, 4)]  # the retry starts from a checkpoint of its own: epoch 0 at batch size 4
    resumed = run_training(
        scratch(base, run_id="oom-store", checkpoint_store=str(store), output_dir=str(tmp_path / "machine_b")))
    assert resumed.summary["batch_size"] == 4 and resumed.summary["resumed_from_epoch"] == 2


def test_unexpected_error_is_recorded_and_does_not_raise(base, monkeypatch):
    import trainer.run

    monkeypatch.setattr(trainer.run, "build_inputs", lambda *a, **k: 1 / 0)
    outcome = run_training(scratch(base, run_id="boom"))
    assert outcome.state == M.FAILED and outcome.exit_code == 1
    assert "ZeroDivisionError" in outcome.summary[M.REASON]
    assert "Traceback" in (outcome.folder / "error.log").read_text()


def test_training_never_opens_the_test_folder(base, nature_dir, monkeypatch):
    """Pitfall 7: only `agent.py test` may read val/ of nature_12K; a run and its validation read train/ only."""
    import PIL.Image

    real_open, opened = PIL.Image.open, []

    def spy(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", spy)
    # num_workers=0: decoding in this process, where the spy sees every open (training and validation too)
    outcome = run_training(scratch(base, run_id="no-peeking", epochs=1, image_cache=False, num_workers=0))
    assert outcome.state == M.FINISHED and opened
    test_folder = str(nature_dir / "inaturalist_12K" / "val")
    assert not [p for p in opened if p.startswith(test_folder)]


def test_secrets_never_reach_the_run_record(base, monkeypatch, capfd):
    """Pitfall 15: W&B keys come from the environment or `wandb login` and are written nowhere, nor printed
    (a sweep keeps each trial's output in its folder)."""
    monkeypatch.setenv("WANDB_API_KEY", "local-0123456789abcdef0123456789abcdef01234567")
    outcome = run_training(scratch(base, run_id="secret", epochs=1))
    for path in outcome.folder.rglob("*"):
        if path.is_file():
            assert b"0123456789abcdef0123456789abcdef" not in path.read_bytes(), path
    printed = capfd.readouterr()
    assert printed.out and "0123456789abcdef0123456789abcdef" not in printed.out + printed.err


def test_a_run_folder_in_use_by_another_process_is_refused(base):
    from trainer.record import RunRecord

    config = scratch(base, run_id="busy", epochs=1)
    with RunRecord(config.output_dir + "/busy").exclusive():  # another process holds it (flock is per open file)
        with pytest.raises(UserError, match=rf"being trained by another process \(pid {os.getpid()}\)"):
            run_training(config)
        (Path(config.output_dir) / "busy" / ".lock").write_text("99999999 training")  # a pid no process has
        with pytest.raises(UserError, match=r"is being trained by another process in "):  # named only while alive
            run_training(config)
    assert run_training(config).state == M.FINISHED


def test_a_gradual_run_records_the_parameters_that_trained_by_its_end(base, small_inputs):
    from models import count_parameters
    from models.freezing import FreezeOptions, plan_for_epoch, resolve_strategy

    outcome = run_training(
        parse_run_config({**base, "model": "resnet18", "strategy": "gradual", "augment": "none", "run_id": "gradual"}))
    model = build_model("resnet18", 3, "none")
    # epoch 2: head + layer4
    model.apply_plan(plan_for_epoch(resolve_strategy("gradual"), model.stage_names, FreezeOptions(), 1))
    assert outcome.summary[M.TRAINABLE_PARAMS] == count_parameters(model)[0] > 512 * 3 + 3


def test_first_signal_asks_for_a_checkpoint_and_only_a_second_ctrl_c_aborts():
    from trainer.signals import EARLY_STOP, PREEMPT, GracefulStop

    outside = signal.getsignal(signal.SIGINT)
    with GracefulStop() as flag:
        signal.raise_signal(signal.SIGTERM)  # the platform's notice: finish the step, checkpoint, exit
        try:
            signal.raise_signal(signal.SIGTERM)  # repeated by the agent: still the same orderly stop
        except KeyboardInterrupt:
            pytest.fail("a second SIGTERM aborted the run before its checkpoint")
        assert flag.reason == PREEMPT and flag.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGINT) is outside  # Ctrl-C works as before once the run is over
    with GracefulStop() as flag:
        signal.raise_signal(signal.SIGINT)  # the first Ctrl-C: the same orderly stop
        assert flag.reason == PREEMPT and flag.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):  # the second: out at once
            signal.raise_signal(signal.SIGINT)
    with GracefulStop() as flag:
        signal.raise_signal(signal.SIGUSR1)  # the sweep stopped this trial early: done, not to be re-queued
        signal.raise_signal(signal.SIGTERM)
        assert flag.reason == EARLY_STOP and flag.signum == signal.SIGUSR1
