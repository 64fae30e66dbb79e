"""The run end to end on the tiny fixture: record, strategies, resume after SIGTERM, failures, W&B modes."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml

from common.errors import UserError
from common.preprocessing import Preprocessing
from models import build_model, strategy_names
from trainer import metrics as M
from trainer.config import FIELDS, config_hash, help_text, parse_cli, parse_run_config
from trainer.evaluate import evaluate_on_test_set
from trainer.run import run_training
from trainer.wandb_log import RunLogger
from trainer.writer import CheckpointWriter

from data_helpers import shrink_in_place

SMALL = Preprocessing(crop_size=64, resize_size=72, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
TIMING_KEYS = {M.EPOCH_SECONDS, M.IMAGES_PER_SECOND}


@pytest.fixture
def small_inputs(monkeypatch):
    """Backbones at 64 px instead of their 224: the same code path, a CPU-friendly cost."""
    import trainer.run

    real = trainer.run.preprocessing_for
    monkeypatch.setattr(trainer.run, "preprocessing_for", lambda name, weights, scratch=None, *rest: real(name, weights, scratch, *rest) if name == "scratch_cnn" else SMALL)


@pytest.fixture
def base(nature_dir, tmp_path):
    return {
        "data_dir": str(nature_dir), "cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "runs"),
        "wandb_mode": "disabled", "weights": "none", "batch_size": 8, "epochs": 2, "warmup_epochs": 0.5,
    }


def scratch(base, **overrides):
    values = {**base, "model": "scratch_cnn", "input_size": 32, "filters": 8, "dense_units": 16, **overrides}
    return parse_run_config(values)


def history(outcome) -> list[dict]:
    return [json.loads(line) for line in (outcome.folder / "metrics.jsonl").read_text().splitlines()]


def without_timing(rows):
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def test_scratch_run_writes_a_complete_record(base):
    outcome = run_training(scratch(base, run_id="rec"))
    skipped = (outcome.folder / "skipped_files.txt").read_text().splitlines()  # the scan names 3; all are kept
    assert sorted(line.split("\t")[0] for line in skipped) == ["Amphibia/broken_000.jpg", "Amphibia/notes.txt", "Aves/truncated_000.jpg"]
    assert outcome.state == M.FINISHED and outcome.exit_code == 0
    folder = outcome.folder
    assert {p.name for p in folder.iterdir()} >= {"config.yaml", "metrics.jsonl", "summary.json", "last.pt", "best.pt"}
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["model"] == "scratch_cnn" and config["k_layers"] is None and config["strategy"] == "full"
    rows = history(outcome)
    assert [r[M.EPOCH] for r in rows] == [1, 2] and all(set(M.EPOCH_METRICS) <= set(r) for r in rows)
    summary = json.loads((folder / "summary.json").read_text())
    for key in (M.STATE, M.BEST_VAL_ACC, M.BEST_EPOCH, M.TRAINABLE_PARAMS, M.TOTAL_PARAMS, M.TRAIN_SECONDS, M.SPLIT_HASH, M.WEIGHTS_VERSION, M.DEVICE):
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
    config = parse_run_config({**base, "model": "resnet18", "strategy": strategy, "epochs": 1, "augment": "standard", "run_id": strategy})
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
    config = parse_run_config({**base, "model": "resnet18", "strategy": "head_only", "augment": "standard", "lr": 0.5, "run_id": "frozen"})
    torch.manual_seed(config.seed)  # the run builds its model after seeding with the same seed
    initial = build_model("resnet18", 3, "none").state_dict()
    outcome = run_training(config)
    trained = torch.load(outcome.folder / "last.pt", weights_only=True)["model"]
    backbone = [k for k in initial if not k.startswith("net.fc.")]
    assert any("running_mean" in k for k in backbone)
    for key in backbone:
        assert torch.equal(initial[key], trained[key]), key
    assert not torch.equal(initial["net.fc.weight"], trained["net.fc.weight"])


def test_sigterm_mid_epoch_then_resume_equals_uninterrupted(base, monkeypatch):
    settings = dict(augment="strong", dropout=0.3, epochs=2)
    straight = run_training(scratch(base, run_id="straight", **settings))

    import trainer.loop

    class KillAtStep(trainer.loop.EpochProgress):
        steps = 0

        def update(self, *args, **kwargs):
            super().update(*args, **kwargs)
            KillAtStep.steps += 1
            if KillAtStep.steps == 4:  # the first step of epoch 2: a real signal, mid-epoch
                os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(trainer.loop, "EpochProgress", KillAtStep)
    interrupted = run_training(scratch(base, run_id="cut", **settings))
    assert interrupted.state == M.PREEMPTED and interrupted.exit_code == 128 + signal.SIGTERM
    assert torch.load(interrupted.folder / "last.pt", weights_only=True)["loop"]["batch"] == 1
    monkeypatch.setattr(trainer.loop, "EpochProgress", KillAtStep.__mro__[1])

    resumed = run_training(scratch(base, run_id="cut", **settings))
    assert resumed.state == M.FINISHED
    assert without_timing(history(resumed)) == without_timing(history(straight))
    final_a = torch.load(straight.folder / "last.pt", weights_only=True)["model"]
    final_b = torch.load(resumed.folder / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)


def test_explicit_resume_without_checkpoint_is_an_error(base):
    (Path(base["output_dir"]) / "nothing-here").mkdir(parents=True)  # a run folder, but no checkpoint in it
    with pytest.raises(UserError, match="no checkpoint"):
        run_training(scratch(base, run_id="nothing-here", resume=True))


def test_resuming_a_run_id_that_does_not_exist_leaves_no_folder(base, tmp_path):
    with pytest.raises(UserError, match="there is no run 'typo'"):
        run_training(scratch(base, run_id="typo", resume=True, checkpoint_store="local"))
    with pytest.raises(UserError, match="there is no run 'typo'"):
        run_training(scratch(base, run_id="typo", resume=True, checkpoint_store=str(tmp_path / "drive")))
    assert not (tmp_path / "runs" / "typo").exists()


def test_resuming_a_mistyped_run_id_from_the_command_line_touches_nothing(tmp_path, monkeypatch, capsys):
    # Defaults: wandb_mode auto and checkpoint_store auto, but no W&B credentials, so no W&B store to look in;
    # the run id is refused before the dataset is looked for (here it would be downloaded) or a folder made.
    import agent

    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    runs = tmp_path / "runs"
    assert agent.main(["--resume", "--run_id=typo", f"--output_dir={runs}", f"--data_dir={tmp_path / 'new_data'}"]) == 2
    err = capsys.readouterr().err
    assert "there is no run 'typo'" in err and err.count("\n") == 1
    assert not runs.exists() and not (tmp_path / "new_data").exists()


def test_explicit_resume_of_a_damaged_checkpoint_says_what_to_do(base):
    first = run_training(scratch(base, run_id="damaged", epochs=1))
    (first.folder / "last.pt").write_bytes(b"truncated")
    with pytest.raises(UserError) as error:
        run_training(scratch(base, run_id="damaged", epochs=1, resume=True))
    assert "unreadable" in str(error.value) and "drop --resume to start the run fresh" in str(error.value)
    assert "starting fresh" not in str(error.value)


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
    assert cut.state == M.PREEMPTED and cut.exit_code == 128 + signal.SIGINT and "interrupted twice" in cut.summary[M.REASON]
    assert json.loads((cut.folder / "summary.json").read_text())[M.STATE] == M.PREEMPTED
    monkeypatch.setattr(trainer.loop, "EpochProgress", SecondCtrlC.__mro__[1])
    resumed = run_training(scratch(base, run_id="twice", epochs=2, resume=True))
    assert resumed.state == M.FINISHED and resumed.summary["resumed_from_epoch"] == 1


def test_checkpoint_of_another_config_is_refused_and_the_run_starts_fresh(base):
    run_training(scratch(base, run_id="same-id", epochs=1))
    outcome = run_training(scratch(base, run_id="same-id", epochs=1, lr=0.02))
    assert outcome.state == M.FINISHED
    assert "was trained with lr=0.001 (now 0.02)" in outcome.summary["resume_refused"]
    assert [r[M.EPOCH] for r in history(outcome)] == [1]


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
    assert outcome.state == M.FINISHED and (outcome.summary[M.BATCH_SIZE], outcome.summary[M.BATCH_SIZE_ASKED]) == (4, 8)
    monkeypatch.setattr(trainer.run, "_attempt", real)
    again = run_training(scratch(base, run_id="oom", epochs=3))  # another config under the run id, trained at 8
    assert (again.summary[M.BATCH_SIZE], again.summary[M.BATCH_SIZE_ASKED]) == (8, None)
    monkeypatch.setattr(trainer.run, "_attempt", lambda *a, **k: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("CUDA out of memory")))
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
    """A preemption before the retry's first checkpoint must resume the retry, not the attempt that ran out of memory."""
    import trainer.run

    store, seen, real_train = tmp_path / "store", [], trainer.run.train

    def train(loop, state):
        payload = torch.load(store / "oom-store" / "last.pt", weights_only=True) if (store / "oom-store" / "last.pt").exists() else None
        seen.append(payload and (payload["loop"]["epoch"], payload["loop"]["batch_size"]))
        if len(seen) == 1:
            real_train(loop, state)  # attempt 1 checkpoints its epochs into the store, then runs out of memory
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_train(loop, state)

    monkeypatch.setattr(trainer.run, "train", train)
    outcome = run_training(scratch(base, run_id="oom-store", checkpoint_store=str(store)))
    assert outcome.state == M.FINISHED and outcome.summary["batch_size"] == 4
    assert seen == [None, (0, 4)]  # the retry starts from a checkpoint of its own: epoch 0 at batch size 4
    resumed = run_training(scratch(base, run_id="oom-store", checkpoint_store=str(store), output_dir=str(tmp_path / "machine_b")))
    assert resumed.summary["batch_size"] == 4 and resumed.summary["resumed_from_epoch"] == 2


def test_training_goes_on_while_a_checkpoint_is_written_and_the_file_is_the_snapshot(base, monkeypatch):
    """The loop waits for a host-memory snapshot, not for the file: the end-of-epoch-1 write here waits until epoch 2
    has stepped the optimizer, and must still write the weights as they were when epoch 1 ended."""
    import threading

    import trainer.loop
    import trainer.run

    steps, stepped = [0], threading.Event()
    real_payload, real_write, at_submit, checks = trainer.run.checkpoint_payload, trainer.run.write_checkpoint, {}, []

    class Progress(trainer.loop.EpochProgress):
        def update(self, *args, **kwargs):
            super().update(*args, **kwargs)
            steps[0] += 1
            stepped.set()

    def payload(**parts):
        snap = real_payload(**parts)
        at_submit[id(snap)] = (steps[0], {k: v.clone() for k, v in snap["model"].items()})
        stepped.clear()
        return snap

    def write(path, snap):
        submitted_at, weights = at_submit[id(snap)]
        if snap["loop"]["epoch"] == 1:  # a later step can only happen if the loop did not wait for this write
            checks.append(stepped.wait(timeout=30) and steps[0] > submitted_at)
            checks.append(all(torch.equal(weights[k], v) for k, v in snap["model"].items()))
        real_write(path, snap)

    monkeypatch.setattr(trainer.loop, "EpochProgress", Progress)
    monkeypatch.setattr(trainer.run, "checkpoint_payload", payload)
    monkeypatch.setattr(trainer.run, "write_checkpoint", write)
    monkeypatch.setattr(trainer.run, "CheckpointWriter", lambda background: CheckpointWriter(background=True))  # as on a GPU
    outcome = run_training(scratch(base, run_id="background", epochs=2))
    assert outcome.state == M.FINISHED and checks == [True, True]
    final = torch.load(outcome.folder / "last.pt", weights_only=True)
    assert final["loop"]["epoch"] == 2  # close() waited for the last write


def test_no_checkpoint_write_is_in_flight_when_validation_may_fork_loader_workers(base, monkeypatch):
    """The validation loader forks its workers at its first epoch. A fork while the writer thread holds a lock
    (a file's, the allocator's) can leave that lock held forever in the child, so validation waits for the write."""
    import threading
    import time as real_time

    import trainer.loop
    import trainer.run

    real_write, real_evaluate, in_flight = trainer.run.write_checkpoint, trainer.loop.evaluate, []

    def slow_write(path, payload):
        real_time.sleep(0.3)  # a full fine-tuning checkpoint takes about a second
        real_write(path, payload)

    def evaluate(loop, loader):
        in_flight.append(any(t.name == "checkpoint-writer" and t.is_alive() for t in threading.enumerate()))
        return real_evaluate(loop, loader)

    monkeypatch.setattr(trainer.run, "write_checkpoint", slow_write)
    monkeypatch.setattr(trainer.loop, "evaluate", evaluate)
    monkeypatch.setattr(trainer.run, "CheckpointWriter", lambda background: CheckpointWriter(background=True))  # as on a GPU
    # A checkpoint after every step: the last step's write is still running when the epoch ends.
    outcome = run_training(scratch(base, run_id="nofork", epochs=2, checkpoint_minutes=1e-6))
    assert outcome.state == M.FINISHED and in_flight == [False, False]


def test_ctrl_c_while_a_checkpoint_is_written_still_lets_the_write_finish():
    # The second Ctrl-C lands in the join that waits for the background write: the write must still finish
    # (the interrupt is raised after it), and the writer thread is no daemon the interpreter could abandon.
    import threading

    released, written = threading.Event(), threading.Event()
    writer = CheckpointWriter(background=True)
    writer.submit(lambda: (released.wait(30), written.set()))
    thread, joins = writer._thread, []
    real_join = thread.join

    def join(*args):
        joins.append(1)
        if len(joins) == 1:
            raise KeyboardInterrupt
        released.set()
        real_join(*args)

    thread.join = join
    try:
        with pytest.raises(KeyboardInterrupt):
            writer.close(quiet=True)
        assert written.is_set() and not thread.daemon and len(joins) == 2
    finally:
        released.set()


def test_a_checkpoint_write_that_fails_ends_the_run_with_its_reason(base, monkeypatch):
    import trainer.run

    def full_disk(path, payload):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trainer.run, "write_checkpoint", full_disk)
    with pytest.raises(UserError, match="No space left on device for a file: free some space or pass --output_dir"):
        run_training(scratch(base, run_id="full-disk", epochs=2))
    summary = json.loads((Path(base["output_dir"]) / "full-disk" / "summary.json").read_text())
    # The machine's failure, not the trial's: exit 2, which a sweep retries as a setup failure.
    assert summary[M.STATE] == M.FAILED and summary["exit_code"] == 2 and "No space left on device" in summary[M.REASON]


class StepLogger(RunLogger):
    """W&B's step bookkeeping without W&B: a step at or below the last one is dropped, as W&B drops it."""

    def __init__(self, logged_steps=0, oom_at_log=None):
        self.steps, self.kept, self._next, self.oom_at_log = [], [], logged_steps + 1 if logged_steps else 0, oom_at_log

    def next_step(self):
        return self._next

    def log(self, row, step):
        self.steps.append(step)
        if len(self.steps) == self.oom_at_log:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if step >= self._next:
            self.kept.append((step, row[M.EPOCH]))
            self._next = step + 1


def test_a_restart_in_the_same_wandb_run_logs_after_the_earlier_attempt(base, monkeypatch):
    """W&B drops steps that go backwards: an OOM retry or a refused checkpoint must not log epoch 1 at step 1 again."""
    import trainer.run

    logger = StepLogger(oom_at_log=2)
    monkeypatch.setattr(trainer.run, "start_logger", lambda *a, **k: logger)
    outcome = run_training(scratch(base, run_id="oom-steps", epochs=3))
    assert outcome.state == M.FINISHED and outcome.summary["batch_size"] == 4
    assert logger.steps == [1, 2, 2, 3, 4]  # attempt 1 logged epoch 1, died logging epoch 2; the retry follows
    assert logger.kept == [(1, 1), (2, 1), (3, 2), (4, 3)]  # every epoch of the retry reached W&B
    assert [r[M.EPOCH] for r in history(outcome)] == [1, 2, 3]

    logger = StepLogger(logged_steps=5)  # a W&B run with history, and no checkpoint anywhere: a fresh start
    monkeypatch.setattr(trainer.run, "start_logger", lambda *a, **k: logger)
    run_training(scratch(base, run_id="fresh-in-old-run", epochs=2))
    assert logger.kept == [(6, 1), (7, 2)]


def test_unexpected_error_is_recorded_and_does_not_raise(base, monkeypatch):
    import trainer.run

    monkeypatch.setattr(trainer.run, "build_inputs", lambda *a, **k: 1 / 0)
    outcome = run_training(scratch(base, run_id="boom"))
    assert outcome.state == M.FAILED and outcome.exit_code == 1
    assert "ZeroDivisionError" in outcome.summary[M.REASON]
    assert "Traceback" in (outcome.folder / "error.log").read_text()


def test_wandb_offline_run_is_syncable(base, monkeypatch, capsys):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE")
    outcome = run_training(scratch(base, run_id="offline1", epochs=1, wandb_mode="offline"))
    assert outcome.state == M.FINISHED
    assert "W&B" not in capsys.readouterr().err  # every call we make (define_metric, step, log) is real W&B API
    offline = list((outcome.folder.parent / "wandb").glob("offline-run-*offline1"))
    assert offline, "an offline run folder for `wandb sync`"


def test_wandb_prints_one_line_of_ours_and_verbose_brings_its_banner_back(tmp_path, monkeypatch, capfd):
    """A whole run's console is checked in tests/test_wandb.py; here the logger alone, quiet and verbose."""
    wandb = pytest.importorskip("wandb")
    from trainer.wandb_log import start_logger

    monkeypatch.delenv("WANDB_SILENT")  # the fixture's: the harness must be quiet by itself
    printed = {}
    for verbose in (False, True):
        wandb.teardown()  # W&B sets its terminal up once per process: each run here starts as in a process of its own
        start_logger("offline", "p", "", f"verbose-{verbose}", {}, tmp_path, verbose=verbose).finish()
        out, err = capfd.readouterr()
        printed[verbose] = [line for line in (out + err).splitlines() if "W&B" in line or line.startswith("wandb")]
    [line] = printed[False]
    assert line == f"W&B offline: sync with `wandb sync {next(tmp_path.glob('wandb/offline-run-*-verbose-False'))}`"
    assert sum(line.startswith("wandb:") for line in printed[True]) > 5  # W&B's own banner and summary
    wandb.teardown()
    wandb.setup(wandb.Settings(silent=True))  # as the other tests found W&B: silent, set up without credentials


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
    assert run_header("cpu", torch.device("cpu"), None, "resnet18", "IMAGENET1K_V1", 224, 513, 11_177_538).splitlines() == [
        "device: cpu, precision fp32", "model: resnet18 (weights IMAGENET1K_V1) at 224 px: 513 of 11,177,538 parameters trainable"]
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    gpu = run_header("auto", torch.device("cuda:0"), torch.float16, "resnet50", "IMAGENET1K_V2", 224, 1, 2).splitlines()[0]
    assert gpu == "device: cuda:0 (Tesla T4), precision fp16 with a grad scaler"


@pytest.mark.parametrize("strategy, warned", [("head_only", True), ("norm_and_head", True), ("gradual", True), ("full", False)])
def test_a_frozen_strategy_on_random_init_warns_in_one_line(strategy, warned):
    from models import FreezeOptions, plan_for_epoch, resolve_strategy
    from trainer.progress import run_header

    model = build_model("resnet18", 3, "none")
    model.apply_plan(plan_for_epoch(resolve_strategy(strategy), model.stage_names, FreezeOptions(), 0))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    lines = run_header("cpu", torch.device("cpu"), None, "resnet18", "none", 224, trainable, total).splitlines()
    warnings = [line for line in lines if "random features" in line]
    assert len(warnings) == warned and all(line.startswith("warning: frozen stages at random init") for line in warnings)
    assert not [line for line in run_header("cpu", torch.device("cpu"), None, "resnet18", "IMAGENET1K_V1", 224, trainable,
                                            total).splitlines() if "random" in line]  # pretrained: frozen on purpose


def test_a_run_refused_before_training_tells_wandb_its_exit_status(base, tmp_path, monkeypatch):
    """The report groups refused runs by their exit status, from W&B as from the run folder."""
    from trainer.wandb_log import RunLogger

    logged = {}
    monkeypatch.setattr(RunLogger, "summary", lambda self, values: logged.update(values))
    with pytest.raises(UserError, match="no dataset found"):
        run_training(scratch(base, run_id="typo", data_dir=str(tmp_path / "datsets"), download=False))
    assert logged[M.STATE] == M.FAILED and logged[M.EXIT_CODE] == 2


def test_a_broken_wandb_never_kills_the_run(base, monkeypatch):
    wandb = pytest.importorskip("wandb")

    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setattr(wandb, "init", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("server unreachable")))
    outcome = run_training(scratch(base, run_id="nowandb", epochs=1, wandb_mode="online"))
    assert outcome.state == M.FINISHED


def test_cached_and_uncached_training_agree(base, small_inputs):
    common = {**base, "model": "resnet18", "strategy": "last_k", "k_layers": 1, "augment": "none", "epochs": 2}
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


def test_test_command_writes_accuracy_confusion_and_grid(base, capsys, monkeypatch):
    import trainer.wandb_log

    outcome = run_training(scratch(base, run_id="for-test"))
    opened, sent = [], []

    class Spy(RunLogger):
        def summary(self, values):
            sent.append(dict(values))

    monkeypatch.setattr(trainer.wandb_log, "start_logger", lambda *a, **k: opened.append(a) or Spy())
    evaluate_on_test_set(outcome.folder)
    assert not opened  # trained with W&B disabled: no W&B record to add to, none created
    (outcome.folder.parent / "wandb" / "offline-run-20261124_101010-for-test").mkdir(parents=True)
    result = evaluate_on_test_set(outcome.folder)
    # The run's own W&B record (its id, its folder, the mode it logged in) carries the result, for a W&B report.
    assert [(a[0], a[3], a[5]) for a in opened] == [("offline", "for-test", outcome.folder.parent)]
    assert sent == [{key: result[key] for key in (M.TEST_ACC, M.PER_CLASS_ACC, M.NUM_IMAGES, M.CHECKPOINT)}]
    summary_path = outcome.folder / "summary.json"
    finished = summary_path.read_text()
    summary_path.write_text(json.dumps({**json.loads(finished), M.STATE: M.PREEMPTED}))  # cut off: tested as it is
    opened.clear()
    evaluate_on_test_set(outcome.folder)
    assert not opened  # its W&B run is not reopened and closed as finished
    summary_path.write_text(finished)
    out = outcome.folder / "test"
    assert 0.0 <= result[M.TEST_ACC] <= 1.0 and result[M.NUM_IMAGES] == 12
    assert set(result[M.PER_CLASS_ACC]) == {"Amphibia", "Aves", "Fungi"}
    assert sum(map(sum, result["confusion"])) == 12
    assert (out / "confusion.png").stat().st_size > 1000 and (out / "grid.png").stat().st_size > 1000
    assert json.loads((out / "test.json").read_text())[M.TEST_ACC] == result[M.TEST_ACC]
    assert json.loads((outcome.folder / "summary.json").read_text())[M.TEST_ACC] == result[M.TEST_ACC]
    capsys.readouterr()
    assert evaluate_on_test_set(outcome.folder)[M.TEST_ACC] == result[M.TEST_ACC]  # again: the same, and it says so
    assert f"test_acc {result[M.TEST_ACC]}) is replaced" in capsys.readouterr().out

    # The same run id trained again with another config starts fresh: the old model's test result leaves with it.
    earlier_history = (outcome.folder / "metrics.jsonl").read_text()
    retrained = run_training(scratch(base, run_id="for-test", filters=16, epochs=1))
    assert "was trained with filters=8 (now 16)" in retrained.summary["resume_refused"] and M.TEST_ACC not in retrained.summary
    assert "was trained before with filters=8 (now 16)" in capsys.readouterr().out
    assert (outcome.folder / "metrics.previous.jsonl").read_text() == earlier_history != (outcome.folder / "metrics.jsonl").read_text()
    assert yaml.safe_load((outcome.folder / "config.previous.yaml").read_text())["filters"] == 8
    assert json.loads((outcome.folder / "summary.previous.json").read_text())[M.TEST_ACC] == result[M.TEST_ACC]
    assert not out.exists() and (outcome.folder / "test.previous" / "test.json").exists()
    (outcome.folder / "best.previous.pt").replace(outcome.folder / "best.pt")  # the other config's model
    with pytest.raises(UserError, match="trained with another configuration"):
        evaluate_on_test_set(outcome.folder)

    # A best.pt of code that normalised equivalent values otherwise: the run's own recorded hash, or its saved
    # config hashed today, says it is this config.yaml's model.
    trained = run_training(scratch(base, run_id="for-test", filters=16, epochs=1))
    payload = torch.load(outcome.folder / "best.pt", weights_only=True)
    payload["identity"]["config_hash"] = "0123456789abcdef"
    torch.save(payload, outcome.folder / "best.pt")
    assert 0 <= evaluate_on_test_set(outcome.folder)[M.TEST_ACC] <= 1  # its config, hashed today
    del payload["config"]
    torch.save(payload, outcome.folder / "best.pt")
    with pytest.raises(UserError, match="trained with another configuration"):
        evaluate_on_test_set(outcome.folder)
    record = json.loads((outcome.folder / "summary.json").read_text())
    (outcome.folder / "summary.json").write_text(json.dumps({**record, "config_hash": "0123456789abcdef"}))
    assert 0 <= evaluate_on_test_set(outcome.folder)[M.TEST_ACC] <= 1  # the hash the run recorded beside config.yaml
    assert trained.state == M.FINISHED

    (outcome.folder / "best.pt").write_bytes(b"damaged")
    with pytest.raises(UserError, match="cannot read .*best.pt .*damaged"):
        evaluate_on_test_set(outcome.folder)


def test_the_test_result_reaches_wandb_in_the_mode_of_the_runs_latest_wandb_folder(tmp_path, monkeypatch):
    """Trained online, then resumed offline (no network): the result goes to the offline record, as the training did."""
    import trainer.wandb_log
    from trainer.evaluate import _log_to_wandb

    folder = tmp_path / "runs" / "r1"
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({M.STATE: M.FINISHED}))
    for name, when in (("run-20261124_101010-r1", 1_000_000), ("offline-run-20261124_111111-r1", 2_000_000)):
        (folder.parent / "wandb" / name).mkdir(parents=True)
        os.utime(folder.parent / "wandb" / name, (when, when))
    opened = []
    monkeypatch.setattr(trainer.wandb_log, "start_logger", lambda *a, **k: opened.append(a[0]) or RunLogger())
    result = {M.TEST_ACC: 0.5, M.PER_CLASS_ACC: {}, M.NUM_IMAGES: 2, M.CHECKPOINT: "best.pt"}
    _log_to_wandb(parse_run_config({"model": "scratch_cnn"}), {}, folder, result)
    assert opened == ["offline"]


def test_the_test_command_finds_a_relative_data_dir_from_any_folder_and_never_downloads(base, nature_dir, tmp_path, monkeypatch):
    import shutil

    import data.download

    monkeypatch.chdir(nature_dir.parent)
    outcome = run_training(scratch(base, run_id="relative", epochs=1, data_dir=nature_dir.name))
    assert yaml.safe_load((outcome.folder / "config.yaml").read_text())["data_dir"] == str(nature_dir)  # recorded absolute
    monkeypatch.chdir(tmp_path)  # elsewhere: the recorded path still leads to the run's data
    assert evaluate_on_test_set(outcome.folder)[M.NUM_IMAGES] == 12

    moved = shutil.copytree(nature_dir, tmp_path / "moved")
    config = yaml.safe_load((outcome.folder / "config.yaml").read_text())
    (outcome.folder / "config.yaml").write_text(yaml.safe_dump({**config, "data_dir": str(tmp_path / "gone")}))
    monkeypatch.setattr(data.download, "download_dataset", lambda *a, **k: pytest.fail("the test command downloaded"))
    with pytest.raises(UserError, match=r"the data folder run relative was trained on, .*gone .* is not there; pass --data_dir"):
        evaluate_on_test_set(outcome.folder)
    assert evaluate_on_test_set(outcome.folder, data_dir=str(moved))[M.NUM_IMAGES] == 12
    with pytest.raises(UserError, match=r"no dataset found in .*moved.inaturalist_12K.train: pass --data_dir[^,]*$") as error:
        evaluate_on_test_set(outcome.folder, data_dir=str(moved / "inaturalist_12K" / "train"))  # one level too deep
    assert "download" not in str(error.value)  # testing never downloads, so the error does not suggest it


def test_a_test_on_other_images_keeps_the_earlier_result_aside(base, nature_dir, tmp_path, capsys):
    import shutil

    data = shutil.copytree(nature_dir, tmp_path / "data")
    outcome = run_training(scratch(base, run_id="retest", epochs=1, data_dir=str(data)))
    first = evaluate_on_test_set(outcome.folder)
    extra = data / "inaturalist_12K" / "val" / "Aves" / "extra.png"
    shutil.copy(next((data / "inaturalist_12K" / "val" / "Aves").glob("*.png")), extra)
    capsys.readouterr()
    second = evaluate_on_test_set(outcome.folder)
    assert second[M.NUM_IMAGES] == first[M.NUM_IMAGES] + 1
    assert "other test images: 12 in" in capsys.readouterr().out
    kept = json.loads((outcome.folder / "test.previous" / "test.json").read_text())
    assert kept[M.NUM_IMAGES] == 12 and kept["test_fingerprint"] != second["test_fingerprint"]


def test_testing_a_run_that_never_finished_an_epoch_says_so(base, monkeypatch):
    import trainer.run

    def interrupted(loop, state):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.run, "train", interrupted)
    folder = run_training(scratch(base, run_id="early", epochs=1)).folder  # preempted before any epoch ended
    with pytest.raises(UserError, match=r"run early has no best.pt: it ended before its first epoch did \(\w+"):
        evaluate_on_test_set(folder)


def test_a_rerun_that_fails_before_training_leaves_no_stale_model_for_the_test_command(base, tmp_path):
    # The same run id again with another config, failing on setup (a data_dir typo): config.yaml now says gelu,
    # and best.pt is still the relu model. The test command must refuse to evaluate it as the gelu network.
    trained = run_training(scratch(base, run_id="rerun", activation="relu", epochs=1))
    with pytest.raises(UserError):
        run_training(scratch(base, run_id="rerun", activation="gelu", epochs=1, data_dir=str(tmp_path / "nope"), download=False))
    assert yaml.safe_load((trained.folder / "config.yaml").read_text())["activation"] == "gelu"
    with pytest.raises(UserError, match="trained with another configuration"):
        evaluate_on_test_set(trained.folder, data_dir=base["data_dir"])


# ---- configuration ------------------------------------------------------------------------------


def test_options_a_run_has_no_use_for_are_named_with_the_reason(capsys):
    import agent

    config = agent.run_config_from_args(["--model=resnet18", "--filters=64", "--strategy=head_only", "--k_layers=2", "--lr=0.01",
                                         "--input_size=64"])
    assert config.filters is None and config.k_layers is None and config.input_size == 64  # every model's size
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "--filters (scratch_cnn only)" in out
    assert "--k_layers (strategy head_only does not use it)" in out and "--lr" not in out and "input_size" not in out
    agent.run_config_from_args(["--model=scratch_cnn", "--input_size=64", "--lr=0.01"])
    assert capsys.readouterr().out == ""  # every option used: no note


def test_a_warmup_longer_than_half_the_run_is_capped_with_a_note(capsys):
    import agent

    assert agent.run_config_from_args(["--epochs=3", "--warmup_epochs=2"]).warmup_epochs == 1.5
    assert "--warmup_epochs=2 is more than half of 3 epochs; warming up over 1.5 instead" in capsys.readouterr().out
    assert agent.run_config_from_args(["--epochs=1"]).warmup_epochs == 0.5  # the default, capped, needs no note
    assert agent.run_config_from_args(["--epochs=3", "--warmup_epochs=1.5"]).warmup_epochs == 1.5
    assert capsys.readouterr().out == ""


def test_unknown_key_suggests_the_nearest():
    with pytest.raises(UserError, match="did you mean 'k_layers'"):
        parse_run_config({"k_layer": 2})


def test_bad_values_are_one_line_errors():
    for values, pattern in [({"lr": "fast"}, "lr='fast' is not a valid float"), ({"epochs": 0}, r"out of range"),
                            ({"augment": "strnog"}, "did you mean 'strong'"), ({"epochs": 2.5}, "not a valid int"),
                            ({"model": "resnet5O"}, "resnet50"), ({"label_smoothing": 0.6}, r"label_smoothing=0.6 is out of range \[0.0, 0.5\]"),
                            ({"model": "scratch_cnn", "strategy": "head_onyl"}, "did you mean 'head_only'")]:  # ignored there, still a typo
        with pytest.raises(UserError, match=pattern) as err:
            parse_run_config(values)
        assert "\n" not in str(err.value)


def test_strings_from_yaml_and_cli_parse_to_types():
    config = parse_run_config({"batch_norm": "false", "model": "scratch_cnn"}, parse_cli(["--lr=3e-4", "--epochs", "3", "--image_cache=no", "--compile"]))
    assert config.batch_norm is False and config.image_cache is False and config.compile is True
    assert config.lr == 3e-4 and config.epochs == 3


def test_parameters_that_do_not_apply_are_normalised_away():
    a = parse_run_config({"model": "resnet50", "strategy": "head_only", "k_layers": 1, "filters": 64})
    b = parse_run_config({"model": "resnet50", "strategy": "freeze_all", "k_layers": 3, "filters": 16})
    assert a.k_layers is None and a.filters is None and a.strategy == "head_only"
    assert config_hash(a) == config_hash(b)
    c = parse_run_config({"model": "resnet50", "strategy": "last_k", "k_layers": 3})
    assert config_hash(c) != config_hash(parse_run_config({"model": "resnet50", "strategy": "last_k", "k_layers": 2}))
    s = parse_run_config({"model": "scratch_cnn", "strategy": "last_k", "k_layers": 2})
    assert s.strategy == "full" and s.k_layers is None and s.weights == "none"



def same(**a):
    """Returns a checker: do these settings train the same model as `a` (equal effective-config hash)?"""
    return lambda **b: config_hash(parse_run_config(a)) == config_hash(parse_run_config(b))


def test_equivalent_values_are_written_one_way():
    # resnet50 has 5 backbone stages: 0.3 and 0.45 both freeze round(1.5)=2 and round(2.25)=2, 0.5 freezes 3
    fraction = same(model="resnet50", strategy="fraction", freeze_fraction=0.3)
    assert fraction(model="resnet50", strategy="fraction", freeze_fraction=0.45)
    assert not fraction(model="resnet50", strategy="fraction", freeze_fraction=0.5)
    folded = parse_run_config({"model": "resnet50", "strategy": "fraction", "freeze_fraction": 0.3})
    assert (folded.strategy, folded.k_layers, folded.freeze_fraction) == ("last_k", 3, None)  # 2 of 5 frozen: the last 3 train

    # bn_mode matters only where a frozen stage has BatchNorm
    for strategy in ("full", "norm_and_head"):
        assert same(model="resnet50", strategy=strategy, bn_mode="adapt")(model="resnet50", strategy=strategy, bn_mode="freeze")
    for model in ("vgg16", "vit_b_16"):
        assert same(model=model, strategy="head_only", bn_mode="adapt")(model=model, strategy="head_only")
    for strategy in ("head_only", "last_k", "fraction", "gradual"):
        assert not same(model="resnet50", strategy=strategy, bn_mode="adapt")(model="resnet50", strategy=strategy)
    assert same(model="resnet50", strategy="last_k", k_layers=5, bn_mode="adapt")(model="resnet50", strategy="last_k", k_layers=5)

    # onecycle warms up over its own first 30%: warmup_epochs changes nothing there, and everything elsewhere
    assert same(model="resnet50", schedule="onecycle", warmup_epochs=0)(model="resnet50", schedule="onecycle", warmup_epochs=3)
    assert not same(model="resnet50", schedule="cosine", warmup_epochs=0)(model="resnet50", schedule="cosine", warmup_epochs=3)
    # a warmup longer than half the run is half the run: a 1-epoch run all warmup would never train at its lr
    assert same(model="resnet50", epochs=2, warmup_epochs=1)(model="resnet50", epochs=2, warmup_epochs=5)
    assert parse_run_config({"epochs": 1}).warmup_epochs == 0.5 and parse_run_config({"epochs": 4, "warmup_epochs": 3}).warmup_epochs == 2
    assert parse_run_config({"epochs": 10, "warmup_epochs": 1.5}).warmup_epochs == 1.5
    # ...but what older code saved with a longer warmup trained otherwise: no longer the same config (nor is its
    # 'half' net of 4 filters, widened to 8 then)
    from trainer.config import effective_config, rehash

    today = effective_config(parse_run_config({"epochs": 1}))
    assert rehash(today) == config_hash(parse_run_config({"epochs": 1}))
    assert rehash({**today, "warmup_epochs": 1.0}) is None
    narrow = effective_config(parse_run_config({"model": "scratch_cnn", "filters": 4, "filter_organization": "half"}))
    assert rehash(narrow) is None and rehash({**narrow, "filters": 16}) is not None

    assert same(model="resnet50", weights="IMAGENET1K_V2")(model="resnet50", weights="imagenet")
    assert not same(model="resnet50", weights="IMAGENET1K_V1")(model="resnet50", weights="imagenet")


def test_onecycle_run_trains_with_warmup_folded_away(base):
    outcome = run_training(scratch(base, run_id="onecycle", schedule="onecycle", warmup_epochs=2))
    assert outcome.state == M.FINISHED
    assert yaml.safe_load((outcome.folder / "config.yaml").read_text())["warmup_epochs"] is None
    assert 0 <= evaluate_on_test_set(outcome.folder)[M.TEST_ACC] <= 1  # its config.yaml reads back


@pytest.mark.parametrize("values", [
    {"model": "resnet50", "schedule": "onecycle", "warmup_epochs": 3},
    {"model": "resnet50", "strategy": "fraction", "freeze_fraction": 0.3, "bn_mode": "adapt"},
    {"model": "vgg16", "strategy": "head_only", "bn_mode": "adapt", "weights": "IMAGENET1K_V1"},
    {"model": "scratch_cnn", "strategy": "last_k", "batch_norm": "no", "optimizer": "sgd"},
    {"model": "googlenet", "strategy": "gradual", "aux_loss_weight": 0.2},
])
def test_a_normalised_config_reads_back_as_itself(values):
    """config.yaml is what --resume, agent.py test and --config read: normalising must be a fixed point."""
    from trainer.config import effective_config, rehash, to_dict

    config = parse_run_config(values)
    assert parse_run_config(to_dict(config)) == config
    assert rehash(effective_config(config)) == config_hash(config)  # what sweep tables and checkpoints save
    assert parse_run_config(yaml.safe_load(yaml.safe_dump(to_dict(config)))) == config

def test_help_lists_every_parameter_with_default():
    text = help_text()
    for name in FIELDS:
        assert f"--{name}=" in text
    assert "{adamw, sgd}" in text


def test_gradual_unfreezing_resumes_exactly_after_sigterm(base, small_inputs, monkeypatch):
    """Optimizer groups join mid-run under gradual unfreezing; a resume must rebuild them in the same order."""
    settings = {**base, "model": "resnet18", "strategy": "gradual", "unfreeze_every_epochs": 1, "epochs": 3, "augment": "standard", "lr": 0.01}
    straight = run_training(parse_run_config({**settings, "run_id": "g-straight"}))

    import trainer.loop

    original = trainer.loop.EpochProgress

    class KillInThirdEpoch(original):
        steps = 0

        def update(self, *args, **kwargs):
            super().update(*args, **kwargs)
            KillInThirdEpoch.steps += 1
            if KillInThirdEpoch.steps == 7:  # 3 batches per epoch: epoch 3, after its first batch
                os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(trainer.loop, "EpochProgress", KillInThirdEpoch)
    assert run_training(parse_run_config({**settings, "run_id": "g-cut"})).state == M.PREEMPTED
    monkeypatch.setattr(trainer.loop, "EpochProgress", original)
    resumed = run_training(parse_run_config({**settings, "run_id": "g-cut"}))
    assert resumed.state == M.FINISHED
    assert without_timing(history(resumed)) == without_timing(history(straight))

    # Killed while validating epoch 1: the checkpoint is the end of epoch 1, and epoch 2 opens another stage.
    real_evaluate = trainer.loop.evaluate

    def evaluate_then_kill(*args, **kwargs):
        result = real_evaluate(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(trainer.loop, "evaluate", evaluate_then_kill)
    cut = run_training(parse_run_config({**settings, "run_id": "g-epoch-end"}))
    assert cut.state == M.PREEMPTED and cut.summary[M.EPOCHS_COMPLETED] == 1
    monkeypatch.setattr(trainer.loop, "evaluate", real_evaluate)
    resumed = run_training(parse_run_config({**settings, "run_id": "g-epoch-end"}))
    assert resumed.state == M.FINISHED and resumed.summary["resumed_from_epoch"] == 1
    assert without_timing(history(resumed)) == without_timing(history(straight))


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


def test_a_checkpoint_of_another_split_is_not_resumed(base, nature_dir, tmp_path):
    """Pitfall 8: the same config on changed data is another split; its checkpoint is refused, never resumed."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(nature_dir, data)
    settings = {**base, "data_dir": str(data)}
    first = run_training(scratch(settings, run_id="resplit", epochs=1))
    aves = data / "inaturalist_12K" / "train" / "Aves"
    for i, source in enumerate(sorted(aves.glob("*.jpg"))[:2]):
        shutil.copy(source, aves / f"added-{i}.jpg")
    again = run_training(scratch(settings, run_id="resplit", epochs=1))
    assert again.summary[M.SPLIT_HASH] != first.summary[M.SPLIT_HASH]
    assert "split_hash" in again.summary["resume_refused"] and (again.folder / "last.refused.pt").exists()


def test_a_checkpoint_of_other_files_under_the_same_names_is_not_resumed(base, nature_dir, tmp_path):
    """Resized copies of the images keep the split hash; the data hash sees them, and the checkpoint is refused."""
    import shutil

    from trainer.checkpoint import identity_mismatch

    data = tmp_path / "data"
    shutil.copytree(nature_dir, data)
    settings = {**base, "data_dir": str(data)}
    first = run_training(scratch(settings, run_id="resized", epochs=1))
    shrink_in_place(sorted((data / "inaturalist_12K" / "train").rglob("*.jpg"))[0])
    again = run_training(scratch(settings, run_id="resized", epochs=1))
    assert again.summary[M.SPLIT_HASH] == first.summary[M.SPLIT_HASH]
    assert again.summary[M.DATA_HASH] != first.summary[M.DATA_HASH]
    assert "data_hash" in again.summary["resume_refused"]
    # A checkpoint written before runs recorded a data hash is still this run's.
    older = {"identity": {"config_hash": "h", "split_hash": "s"}}
    assert identity_mismatch(older, {"config_hash": "h", "split_hash": "s", "data_hash": "d"}) is None
    assert identity_mismatch(older, {"config_hash": "h", "split_hash": "t", "data_hash": "d"}) == "split_hash"


def test_a_checkpoint_written_before_runs_recorded_their_preprocessing_is_still_resumed():
    """Unknown is not different: an older last.pt resumes; one that saw other images (another resize) does not."""
    from trainer.checkpoint import identity_mismatch

    pre = {"crop_size": 32, "resize_size": 37, "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear"}
    now = {"config_hash": "h", "split_hash": "s", "data_hash": "d", "preprocessing": pre}
    assert identity_mismatch({"identity": {"config_hash": "h", "split_hash": "s"}}, now) is None
    assert identity_mismatch({"identity": {**now, "preprocessing": {**pre, "resize_size": 40}}}, now) == "preprocessing"


def test_the_test_command_sees_images_as_the_run_recorded_it_saw_them(base, monkeypatch):
    """A warm start's source file may be gone when its run is tested: the run's own checkpoint says what it saw."""
    import trainer.evaluate

    outcome = run_training(scratch(base, run_id="seen", epochs=1))
    identity = torch.load(outcome.folder / "best.pt", weights_only=True)["identity"]
    assert identity["preprocessing"] == outcome.summary["preprocessing"] == {
        "crop_size": 32, "resize_size": 37, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "interpolation": "bilinear"}
    monkeypatch.setattr(trainer.evaluate, "preprocessing_for", lambda *a, **k: 1 / 0)  # the config's weights: unread
    assert 0 <= evaluate_on_test_set(outcome.folder)[M.TEST_ACC] <= 1


def test_summary_records_code_and_weights_provenance(base):
    outcome = run_training(scratch(base, run_id="provenance", epochs=1))
    assert outcome.summary["code_version"] and outcome.summary[M.WEIGHTS_VERSION] == "none"
    assert outcome.summary[M.SPLIT_HASH] and outcome.summary[M.CONFIG_HASH]
    assert outcome.summary["precision"] == "fp32"  # precision=auto on a CPU: no autocast
    assert (outcome.summary["torch_version"], outcome.summary["torchvision_version"]) == (torch.__version__, torchvision.__version__)


def test_code_version_is_the_commit_and_says_when_the_code_had_local_changes(tmp_path, monkeypatch):
    import subprocess

    import common.provenance as provenance

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "train.py").write_text("lr = 0.1\n")
    subprocess.run([*git, "add", "train.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "first"], check=True)
    commit = subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    monkeypatch.setattr(provenance, "ROOT", tmp_path)
    provenance.code_version.cache_clear()
    try:
        assert provenance.code_version() == commit
        (tmp_path / "train.py").write_text("lr = 0.2\n")  # an edit not committed: results must not pass as `commit`'s
        provenance.code_version.cache_clear()
        first_edit = provenance.code_version()
        assert re.fullmatch(re.escape(commit) + r"\+dirty\.[0-9a-f]{8}", first_edit)
        (tmp_path / "train.py").write_text("lr = 0.3\n")  # another edit of the same commit: another code version
        provenance.code_version.cache_clear()
        assert provenance.code_version().startswith(commit + "+dirty.") and provenance.code_version() != first_edit
        (tmp_path / "train.py").write_text("lr = 0.2\n")
        provenance.code_version.cache_clear()
        assert provenance.code_version() == first_edit  # the same edit again: the same version
        (tmp_path / "train.py").write_text("lr = 0.1\n")
        (tmp_path / "runs").mkdir()  # a run's own output inside the checkout is no local change of the code
        (tmp_path / "runs" / "summary.json").write_text("{}")
        provenance.code_version.cache_clear()
        assert provenance.code_version() == commit
    finally:
        provenance.code_version.cache_clear()


def test_code_version_outside_a_git_checkout_is_the_package_version(tmp_path, monkeypatch):
    from importlib.metadata import version

    import common.provenance as provenance

    monkeypatch.setattr(provenance, "ROOT", tmp_path)  # an installed copy: no .git anywhere above
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    provenance.code_version.cache_clear()
    try:
        assert provenance.code_version() == f"finetune-sweeps {version('finetune-sweeps')}"
    finally:
        provenance.code_version.cache_clear()


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

    config = parse_run_config({"model": "resnet18", "backbone_lr_mult": 0, "epochs": 3, **settings})  # reads: old runs load
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


def test_a_config_path_that_is_a_folder_is_a_one_line_error(tmp_path):
    from trainer.config import load_yaml_values

    bad_value = tmp_path / "run.yaml"
    bad_value.write_text("lr: abc\n")
    with pytest.raises(UserError, match=rf"^config file {re.escape(str(bad_value))}: lr='abc' is not a valid float"):
        load_yaml_values(bad_value)

    with pytest.raises(UserError, match="cannot read|cannot be read"):
        load_yaml_values(tmp_path)


def test_a_config_file_names_itself_in_its_errors_and_refuses_a_search_space(tmp_path):
    from trainer.config import load_yaml_values

    typo = tmp_path / "run.yaml"
    typo.write_text("model: resnet50\ninput_sz: 64\n")
    with pytest.raises(UserError, match=r"run.yaml: unknown parameter 'input_sz' \(did you mean 'input_size'\?\)"):
        load_yaml_values(typo)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("parameters:\n  model: {value: scratch_cnn}\n  activation: {values: [relu, gelu]}\n")
    with pytest.raises(UserError, match="activation is searched; run it with `python agent.py sweep"):
        load_yaml_values(sweep)
    sweep.write_text("parameters:\n  model: {value: scratch_cnn}\n  activation: {value: gelu}\n")
    assert load_yaml_values(sweep) == {"model": "scratch_cnn", "activation": "gelu"}  # fixed values: fine
    sweep.write_text("parameters:\n  lr: {valeu: 0.01}\n")  # a typo of `value`, not a search space
    with pytest.raises(UserError, match=r"parameter 'lr' has the key 'valeu' \(did you mean 'value'\?\)"):
        load_yaml_values(sweep)


def test_none_for_a_boolean_means_false_not_the_default():
    assert parse_run_config({"model": "scratch_cnn", "batch_norm": "none"}).batch_norm is False
    assert parse_run_config({"model": "scratch_cnn", "batch_norm": None}).batch_norm is True  # YAML null: unset


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
        seen["differs"] = seen.get("differs", True) and not torch.allclose(out, real_eval(EvalTransform(self.pre), images))
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


def test_wandb_logger_next_step_is_after_its_own_last_step():
    """Inside the process that logged, W&B's run.step is the last step (its row still open), not the next one."""
    from trainer.wandb_log import WandbLogger

    class Run:
        step = 0

        def log(self, row, step):
            Run.step = step

    logger = WandbLogger(Run(), "offline")
    assert logger.next_step() == 0  # nothing logged: an offset of 0
    for step in (1, 2, 3):
        logger.log({M.EPOCH: step}, step=step)
    assert logger.next_step() == 4
    Run.step = 9  # a resumed run whose server history goes further
    assert logger.next_step() == 9


def test_an_augmented_run_never_trains_on_cached_features(base, small_inputs, monkeypatch):
    """Pitfall 2: cached features are eval-transformed; with augmentation on, every batch goes through TrainTransform."""
    from data.augment import TrainTransform

    seen, real = [], TrainTransform.__call__
    monkeypatch.setattr(TrainTransform, "__call__", lambda self, images, g: (seen.append(len(images)), real(self, images, g))[1])
    outcome = run_training(parse_run_config({**base, "model": "resnet18", "strategy": "head_only", "epochs": 1,
                                             "augment": "standard", "run_id": "aug"}))
    assert outcome.state == M.FINISHED and outcome.summary["feature_cache_depth"] == 0
    assert sum(seen) == (outcome.summary["num_train"] // 8) * 8


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


def test_a_rerun_tells_wandb_it_is_running_before_anything_else(base, monkeypatch):
    """A finished W&B run resumed under its id and killed mid-run must not still read `finished` there."""
    import trainer.run

    summaries = []

    class Spy(RunLogger):
        def summary(self, values):
            summaries.append(dict(values))

    monkeypatch.setattr(trainer.run, "start_logger", lambda *a, **k: Spy())
    first = run_training(scratch(base, run_id="again", epochs=1))
    assert first.state == M.FINISHED and summaries[-1][M.STATE] == M.FINISHED
    summaries.clear()
    run_training(scratch(base, run_id="again", epochs=2))
    assert summaries[0] == {M.STATE: M.RUNNING, M.REASON: None, M.EXIT_CODE: None}


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
    last = run_training(scratch(base, run_id="last-epoch", epochs=2, patience=1))  # runs out on the last epoch: cut nothing
    assert last.summary[M.EPOCHS_COMPLETED] == 2 and "stopped_by_patience" not in last.summary


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


@pytest.mark.parametrize("image_cache", [True, False])
def test_images_reach_the_model_at_the_preprocessings_working_size(base, monkeypatch, image_cache):
    """Pitfall 10 at run level: cached or decoded, the square the crop is taken from is the preprocessing's resize."""
    from data.augment import EvalTransform
    from models import preprocessing_for
    from scratch_cnn import ScratchCNNConfig

    sizes, real = set(), EvalTransform.__call__
    monkeypatch.setattr(EvalTransform, "__call__", lambda self, images: (sizes.add(tuple(images.shape[1:3])), real(self, images))[1])
    outcome = run_training(scratch(base, run_id="geom", epochs=1, image_cache=image_cache))
    assert outcome.state == M.FINISHED
    pre = preprocessing_for("scratch_cnn", "none", ScratchCNNConfig(input_size=32))
    assert sizes == {(pre.resize_size, pre.resize_size)}


def test_code_version_is_the_git_commit():
    import subprocess

    from common.provenance import ROOT, code_version

    code_version.cache_clear()  # cached per process: a commit made while the suite runs would otherwise differ
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    assert code_version().split("+")[0] == head.stdout.strip()


def test_secrets_never_reach_the_offline_wandb_files(base, monkeypatch):
    """Pitfall 15 with W&B on: nothing under output_dir (run folder and wandb/offline-run-*) holds the key."""
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "local-0123456789abcdef0123456789abcdef01234567")
    outcome = run_training(scratch(base, run_id="secret2", epochs=1, wandb_mode="offline"))
    assert outcome.state == M.FINISHED
    files = [p for p in outcome.folder.parent.rglob("*") if p.is_file()]
    assert any("offline-run" in str(p) for p in files)
    for path in files:
        assert b"0123456789abcdef0123456789abcdef" not in path.read_bytes(), path


def test_wandb_mode_auto_is_online_only_with_credentials(monkeypatch, tmp_path, capfd):
    from trainer.wandb_log import resolve_mode

    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_SILENT")  # a deprecation warning of wandb's would show
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    import trainer.wandb_log

    monkeypatch.setattr(trainer.wandb_log, "server_reachable", lambda host, port: True)
    assert resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("auto") == "online" and resolve_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "offline")  # the environment wins over auto
    assert resolve_mode("auto") == "offline"
    assert "deprecated" not in capfd.readouterr().err
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("WANDB_IDENTITY_TOKEN_FILE", str(tmp_path / "token"))  # workload identity, no key
    assert resolve_mode("auto") == "online"
    monkeypatch.delenv("WANDB_IDENTITY_TOKEN_FILE")
    monkeypatch.setattr(trainer.wandb_log, "_has_api_key", lambda: 1 / 0)  # wandb's internals moved
    assert resolve_mode("auto") == "offline" and "could not tell whether W&B credentials are set" in capfd.readouterr().out


def test_wandb_mode_auto_with_a_key_but_no_network_logs_offline_at_once(monkeypatch, tmp_path, capfd):
    """A Kaggle secret with internet off: not 90 s of waiting and then no W&B record at all."""
    import socket as sockets

    import trainer.wandb_log
    from trainer.wandb_log import resolve_mode, server_reachable

    listening = sockets.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    port = listening.getsockname()[1]
    closed = sockets.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: refused
    try:
        assert server_reachable("127.0.0.1", port) and not server_reachable("127.0.0.1", closed.getsockname()[1])
        monkeypatch.delenv("WANDB_MODE")
        monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
        assert trainer.wandb_log._server() == ("127.0.0.1", port)
        assert resolve_mode("auto") == "online"

        def answer_with(**env) -> str:
            for name, value in env.items():
                monkeypatch.setenv(name, value)
            trainer.wandb_log._online_reachable.cache_clear()
            return resolve_mode("auto")

        assert answer_with(WANDB_BASE_URL=f"http://127.0.0.1:{closed.getsockname()[1]}") == "offline"
        assert resolve_mode("auto") == "offline"  # probed once per process: one note, not one per call
        assert capfd.readouterr().out.count("cannot be reached; logging offline") == 1
        assert resolve_mode("online") == "online"  # asked for by name: as asked
        # A trial of `wandb agent` (its result must reach the sweep), a proxy (a direct connection says nothing),
        # an address that does not parse (W&B says what is wrong with it): online, unprobed.
        assert answer_with(HTTPS_PROXY=f"http://127.0.0.1:{closed.getsockname()[1]}") == "online"
        monkeypatch.delenv("HTTPS_PROXY")
        assert answer_with(WANDB_BASE_URL="http://wandb.local:80a") == "online"
        assert answer_with(WANDB_BASE_URL=f"http://127.0.0.1:{closed.getsockname()[1]}", WANDB_SWEEP_ID="abc123") == "online"
    finally:
        listening.close()
        closed.close()


def test_the_wandb_reachability_probe_uses_the_servers_own_port(monkeypatch):
    """A self-hosted server on plain http (no port) listens on 80: probing 443 would log it offline for nothing."""
    import trainer.wandb_log

    for url, server in (("http://wandb.local", ("wandb.local", 80)), ("https://wandb.local", ("wandb.local", 443)),
                        ("http://wandb.local:8080", ("wandb.local", 8080))):
        monkeypatch.setenv("WANDB_BASE_URL", url)
        assert trainer.wandb_log._server() == server
    monkeypatch.delenv("WANDB_BASE_URL")
    assert trainer.wandb_log._server() == ("api.wandb.ai", 443)
    # A host name that cannot even be encoded (a label over 63 characters) is unreachable, not a crash.
    assert trainer.wandb_log.server_reachable("a" * 64 + ".example", 443) is False


def test_wandb_mode_auto_falls_back_to_offline_when_online_fails(monkeypatch, tmp_path, capfd):
    import wandb

    import trainer.wandb_log
    from trainer.wandb_log import WandbLogger, start_logger

    monkeypatch.setattr(trainer.wandb_log, "resolve_mode", lambda mode: "online" if mode == "auto" else mode)
    real_init, modes = wandb.init, []

    def init(**kwargs):
        modes.append(kwargs["mode"])
        if kwargs["mode"] == "online":
            raise RuntimeError("context deadline exceeded")
        return real_init(**kwargs)

    monkeypatch.setattr(wandb, "init", init)
    logger = start_logger("auto", "p", "", "fallback", {"lr": 0.1}, tmp_path)
    try:
        assert modes == ["online", "offline"] and isinstance(logger, WandbLogger) and logger.mode == "offline"
        assert "logging offline" in capfd.readouterr().out
    finally:
        logger.finish()
    modes.clear()
    assert type(start_logger("online", "p", "", "asked", {}, tmp_path)) is not WandbLogger  # asked online: no fallback
    assert modes == ["online"] and "W&B could not start" in capfd.readouterr().err


def test_wandb_mode_auto_without_wandb_installed_logs_locally_without_warnings(monkeypatch, capfd, tmp_path):
    from trainer.wandb_log import RunLogger, resolve_mode, start_logger

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # a key, but nothing to log with
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    assert resolve_mode("auto") == "disabled"
    logger = start_logger("auto", "p", "", "r1", {}, tmp_path)
    assert type(logger) is RunLogger
    out = capfd.readouterr()
    assert "warning" not in out.out + out.err
    assert resolve_mode("offline") == "offline"  # asked for explicitly: start_logger says wandb is missing
    start_logger("offline", "p", "", "r1", {}, tmp_path)
    assert "wandb is not installed" in "".join(capfd.readouterr())


def test_testing_an_unfinished_run_says_so_and_a_better_epoch_later_sets_the_result_aside(base, monkeypatch, capsys):
    import trainer.loop

    class KillAtStep(trainer.loop.EpochProgress):
        steps = 0

        def update(self, *args, **kwargs):
            super().update(*args, **kwargs)
            KillAtStep.steps += 1
            if KillAtStep.steps == 4:  # the first step of epoch 2
                os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(trainer.loop, "EpochProgress", KillAtStep)
    cut = run_training(scratch(base, run_id="tested-early"))
    assert cut.state == M.PREEMPTED
    monkeypatch.setattr(trainer.loop, "EpochProgress", KillAtStep.__mro__[1])
    capsys.readouterr()
    assert evaluate_on_test_set(cut.folder)["best_epoch"] == 1
    assert "has not finished (preempted, 1 of 2 epochs): this tests its best epoch so far (1)" in capsys.readouterr().out
    # Whatever epoch 2 scores, make it the better one: the resumed run then replaces best.pt.
    last = torch.load(cut.folder / "last.pt", weights_only=True)
    last["loop"]["best_val_acc"] = -1.0
    torch.save(last, cut.folder / "last.pt")
    resumed = run_training(scratch(base, run_id="tested-early"))
    assert resumed.state == M.FINISHED and resumed.summary[M.BEST_EPOCH] == 2
    assert not (cut.folder / "test").exists() and (cut.folder / "test.previous" / "test.json").exists()
    assert M.TEST_ACC not in json.loads((cut.folder / "summary.json").read_text())
    assert "test results of the earlier best.pt moved to" in capsys.readouterr().out


def test_the_test_command_refuses_a_run_in_training_and_a_read_only_folder(base, monkeypatch):
    from trainer.record import RunRecord

    outcome = run_training(scratch(base, run_id="busy-test", epochs=1))
    with RunRecord(outcome.folder).exclusive():  # the trainer holds it for the whole run
        with pytest.raises(UserError, match=rf"being trained by another process \(pid {os.getpid()}\).*test it once that has ended"):
            evaluate_on_test_set(outcome.folder)
        assert RunRecord.held_by(outcome.folder) == f"being trained by another process (pid {os.getpid()})"
    with RunRecord(outcome.folder).exclusive("testing"):  # a test holds it: a run is told so, not "trained"
        with pytest.raises(UserError, match=rf"is being tested by another process \(pid {os.getpid()}\)"):
            run_training(scratch(base, run_id="busy-test", epochs=1))
    assert RunRecord.held_by(outcome.folder) is None
    import trainer.evaluate

    monkeypatch.setattr(trainer.evaluate.os, "access", lambda path, mode: False)
    with pytest.raises(UserError, match=r"is read-only.*copy the run folder somewhere writable"):
        evaluate_on_test_set(outcome.folder)
    assert not (outcome.folder / "test").exists()


def test_resume_from_an_output_dir_written_with_a_tilde_reads_its_saved_config(base, monkeypatch, tmp_path):
    """`--output_dir=~/runs` reaches the program with its ~ (the shell expands it only at a word's start)."""
    import agent

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    first = run_training(scratch({**base, "output_dir": "~/runs"}, run_id="tilde", epochs=1, lr=0.0123))
    assert first.folder == tmp_path / "home" / "runs" / "tilde"
    config = agent.run_config_from_args(["--resume", "--run_id=tilde", "--output_dir=~/runs"])
    assert config.lr == 0.0123 and config.model == "scratch_cnn"


def test_a_resumed_run_takes_its_saved_config_under_what_this_command_passes(base, tmp_path):
    import agent

    run_training(scratch(base, run_id="moved", epochs=1, lr=0.0123, checkpoint_minutes=20, num_workers=1))
    machine = tmp_path / "machine_b.yaml"  # where this machine keeps the data, and how it checkpoints
    machine.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "elsewhere"), "checkpoint_minutes": 5, "num_workers": 2}))
    config = agent.run_config_from_args(["--resume", "--run_id=moved", f"--output_dir={base['output_dir']}", "--config", str(machine),
                                         "--num_workers=0"])
    assert config.lr == 0.0123 and config.model == "scratch_cnn" and config.epochs == 1  # saved, where this command is silent
    assert config.data_dir == str(tmp_path / "elsewhere") and config.checkpoint_minutes == 5  # the file over the saved config
    assert config.num_workers == 0  # --key=value over both


class FixedImages:
    """An image store of a few seeded random 32 px images."""

    def __init__(self, seed: int, count: int = 6):
        self.images = np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)

    def read(self, indices):
        return self.images[indices]


def _to_input(images):
    return images.permute(0, 3, 1, 2).float() / 255


def tiny_cnn():
    from scratch_cnn.model import ScratchCNNConfig

    torch.manual_seed(0)
    return build_model("scratch_cnn", 3, "none", scratch=ScratchCNNConfig(filters=4, dense_units=8, input_size=32))


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
    assert torch.allclose(cached_features(first, images, tmp_path, "split"), computed_features(first, images), atol=1e-2)
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
    assert torch.allclose(cached_features(model, other_split, tmp_path, "split-b"), computed_features(model, other_split), atol=1e-2)


def test_caching_features_leaves_a_training_model_in_training_mode(tmp_path):
    model = tiny_cnn().train()
    cached_features(model, FixedImages(seed=1), tmp_path, "split")
    assert model.training and all(module.training for module in model.modules())


def test_the_learning_rate_stays_at_its_floor_past_the_last_step():
    from trainer.optim import lr_factor

    assert lr_factor(150, 100, 10, "cosine") == pytest.approx(0.0)
    assert lr_factor(150, 100, 0, "onecycle") == pytest.approx(1e-4)


# ---- the loop's loss, validation, best epoch and data order; the test command's numbers ---------------


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

    monkeypatch.setattr(trainer.run, "preprocessing_for", lambda *a, **k: dataclasses.replace(SMALL, crop_size=32, resize_size=36))
    calls, objectives = training_losses(monkeypatch), []
    real_scale = torch.amp.GradScaler.scale
    monkeypatch.setattr(torch.amp.GradScaler, "scale", lambda self, loss: objectives.append(loss.item()) or real_scale(self, loss))
    # GoogLeNet's last 4 stages train: inception4d and so its aux2 head (aux1 reads the frozen inception4a)
    outcome = run_training(parse_run_config({**base, "model": "googlenet", "strategy": "last_k", "k_layers": 4, "aux_loss_weight": 0.3,
                                             "label_smoothing": 0.2, "epochs": 1, "subset_fraction": 0.6, "run_id": "aux"}))
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
    loop = types.SimpleNamespace(model=model, inputs=inputs, device=torch.device("cpu"), autocast=contextlib.nullcontext)
    before = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        logits = copy.deepcopy(model).eval()(_to_input(images))
    expected = (torch.nn.functional.cross_entropy(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item())
    for _ in range(2):
        model.train()  # as the epoch left it
        assert evaluate(loop, batches) == pytest.approx(expected)
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())


def test_a_tie_is_no_improvement_the_first_best_epoch_stays_best(base, monkeypatch):
    import trainer.loop

    accs = iter([0.5, 0.8, 0.8, 0.8, 0.8])
    monkeypatch.setattr(trainer.loop, "evaluate", lambda loop, loader: (1.0, next(accs)))
    outcome = run_training(scratch(base, run_id="tie", epochs=5, patience=2))
    assert (outcome.summary[M.BEST_EPOCH], outcome.summary[M.EPOCHS_COMPLETED]) == (2, 4)  # patience counts the ties
    assert torch.load(outcome.folder / "best.pt", weights_only=True)["loop"]["epoch"] == 2


def test_a_training_loss_that_is_not_finite_ends_the_run_as_diverged_even_when_validation_is(base, monkeypatch):
    """As when fp16 overflows and the grad scaler skips the steps: the weights stay finite, the loss does not."""
    training_losses(monkeypatch, add=float("nan"))
    outcome = run_training(scratch(base, run_id="nan-train", epochs=1))
    assert outcome.state == M.DIVERGED
    assert outcome.summary[M.REASON].startswith("training loss became nan in epoch 1") and "lower lr" in outcome.summary[M.REASON]


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


def test_settings_that_change_training_change_the_config_hash_and_paths_do_not():
    default = config_hash(parse_run_config({}))
    for key, value in {"seed": 1, "split_seed": 1, "val_fraction": 0.3, "subset_fraction": 0.5, "augment": "none", "lr": 0.01,
                       "label_smoothing": 0.0, "batch_size": 16, "epochs": 3, "patience": 0, "weight_decay": 0.0}.items():
        assert config_hash(parse_run_config({key: value})) != default, key
    for key, value in {"output_dir": "elsewhere", "cache_dir": "/tmp/other-cache", "data_dir": "/data/nature", "device": "cpu",
                       "num_workers": 0, "wandb_mode": "offline", "run_id": "named", "checkpoint_minutes": 0}.items():
        assert config_hash(parse_run_config({key: value})) == default, key


def test_a_gradual_run_records_the_parameters_that_trained_by_its_end(base, small_inputs):
    from models import count_parameters
    from models.freezing import FreezeOptions, plan_for_epoch, resolve_strategy

    outcome = run_training(parse_run_config({**base, "model": "resnet18", "strategy": "gradual", "augment": "none", "run_id": "gradual"}))
    model = build_model("resnet18", 3, "none")
    model.apply_plan(plan_for_epoch(resolve_strategy("gradual"), model.stage_names, FreezeOptions(), 1))  # epoch 2: head + layer4
    assert outcome.summary[M.TRAINABLE_PARAMS] == count_parameters(model)[0] > 512 * 3 + 3


def test_the_test_command_runs_in_eval_mode_and_fp32_on_a_cpu_and_reports_accuracy_per_true_class(base, monkeypatch):
    import trainer.evaluate

    outcome = run_training(scratch(base, run_id="cpu-test", epochs=1))
    saved = yaml.safe_load((outcome.folder / "config.yaml").read_text())
    (outcome.folder / "config.yaml").write_text(yaml.safe_dump({**saved, "precision": "bf16"}))  # as trained on a GPU
    seen, real = [], trainer.evaluate.build_model

    def build(*args, **kwargs):
        model = real(*args, **kwargs)
        model.register_forward_hook(lambda module, inputs, output: seen.append((any(m.training for m in module.modules()), output.dtype)))
        return model

    monkeypatch.setattr(trainer.evaluate, "build_model", build)
    result = evaluate_on_test_set(outcome.folder)
    assert seen and set(seen) == {(False, torch.float32)}
    confusion = result["confusion"]
    assert [sum(row) for row in confusion] == [4, 4, 4]  # rows: the true class (4 test images each)
    assert result[M.PER_CLASS_ACC] == {name: confusion[i][i] / 4 for i, name in enumerate(result["classes"])}


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


def test_background_checkpoint_writes_happen_in_order_and_a_failed_one_is_raised_by_the_next_call():
    import time

    writer, order = CheckpointWriter(background=True), []
    writer.submit(lambda: (time.sleep(0.2), order.append("epoch 1")))  # a slow write
    writer.submit(lambda: order.append("epoch 2"))  # waits for epoch 1's: last.pt never goes back in time
    writer.close()
    assert order == ["epoch 1", "epoch 2"]

    def full_disk():
        raise OSError(28, "No space left on device")

    writer.submit(full_disk)
    with pytest.raises(OSError, match="No space left"):
        writer.flush()
    writer.flush()  # raised once; the writer is usable again
    writer.submit(full_disk)
    writer.close(quiet=True)  # the run is already ending on an error of its own


def test_a_wandb_call_that_fails_mid_run_warns_once_and_the_run_goes_on(capfd):
    from trainer.wandb_log import WandbLogger

    class BrokenRun:
        step, calls = 0, 0

        def log(self, row, step):
            BrokenRun.calls += 1
            raise ConnectionError("wandb service went away")

        def finish(self, exit_code=0):
            BrokenRun.calls += 1

    logger = WandbLogger(BrokenRun(), "online")
    logger.log({M.EPOCH: 1}, step=1)
    logger.log({M.EPOCH: 2}, step=2)
    logger.finish(exit_code=0)
    err = capfd.readouterr().err
    assert err.count("warning: W&B") == 1 and "ConnectionError: wandb service went away" in err and "local record" in err
    assert BrokenRun.calls == 1  # after the first failure W&B is left alone


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
