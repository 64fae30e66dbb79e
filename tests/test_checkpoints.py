"""Checkpoints on one machine: a run stopped by a signal resumes exactly; a checkpoint of another config, split or
data, a damaged one or a mistyped run id is refused or set aside; writes run in the background, in order, as
snapshots. Resuming across machines from a checkpoint store: tests/test_resume.py."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from common.errors import UserError
from data_helpers import shrink_in_place
from trainer import metrics as M
from trainer.config import parse_run_config
from trainer.run import run_training
from trainer.writer import CheckpointWriter
from trainer_helpers import history, scratch, without_timing


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


def test_checkpoint_of_another_config_is_refused_and_the_run_starts_fresh(base):
    run_training(scratch(base, run_id="same-id", epochs=1))
    outcome = run_training(scratch(base, run_id="same-id", epochs=1, lr=0.02))
    assert outcome.state == M.FINISHED
    assert "was trained with lr=0.001 (now 0.02)" in outcome.summary["resume_refused"]
    assert [r[M.EPOCH] for r in history(outcome)] == [1]


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
    # as on a GPU
    monkeypatch.setattr(trainer.run, "CheckpointWriter", lambda background: CheckpointWriter(background=True))
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
    # as on a GPU
    monkeypatch.setattr(trainer.run, "CheckpointWriter", lambda background: CheckpointWriter(background=True))
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


def test_gradual_unfreezing_resumes_exactly_after_sigterm(base, small_inputs, monkeypatch):
    """Optimizer groups join mid-run under gradual unfreezing; a resume must rebuild them in the same order."""
    settings = {**base, "model": "resnet18", "strategy": "gradual", "unfreeze_every_epochs": 1, "epochs": 3,
                "augment": "standard", "lr": 0.01}
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
