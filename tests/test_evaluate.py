"""`agent.py test`: the test set's numbers (accuracy per true class, confusion, grid), in eval mode and fp32, on the
images the run saw; where its result goes (the record, W&B) and when it is refused or set aside."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
import yaml

from common.errors import UserError
from trainer import metrics as M
from trainer.config import parse_run_config
from trainer.evaluate import evaluate_on_test_set
from trainer.run import run_training
from trainer.wandb_log import RunLogger
from trainer_helpers import scratch


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
    assert ("was trained with filters=8 (now 16)" in retrained.summary["resume_refused"]
            and M.TEST_ACC not in retrained.summary)
    assert "was trained before with filters=8 (now 16)" in capsys.readouterr().out
    assert ((outcome.folder / "metrics.previous.jsonl").read_text() == earlier_history
            != (outcome.folder / "metrics.jsonl").read_text())
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


def test_the_test_command_finds_a_relative_data_dir_from_any_folder_and_never_downloads(base, nature_dir, tmp_path,
                                                                                        monkeypatch):
    import shutil

    import data.download

    monkeypatch.chdir(nature_dir.parent)
    outcome = run_training(scratch(base, run_id="relative", epochs=1, data_dir=nature_dir.name))
    # recorded absolute
    assert yaml.safe_load((outcome.folder / "config.yaml").read_text())["data_dir"] == str(nature_dir)
    monkeypatch.chdir(tmp_path)  # elsewhere: the recorded path still leads to the run's data
    assert evaluate_on_test_set(outcome.folder)[M.NUM_IMAGES] == 12

    moved = shutil.copytree(nature_dir, tmp_path / "moved")
    config = yaml.safe_load((outcome.folder / "config.yaml").read_text())
    (outcome.folder / "config.yaml").write_text(yaml.safe_dump({**config, "data_dir": str(tmp_path / "gone")}))
    monkeypatch.setattr(data.download, "download_dataset", lambda *a, **k: pytest.fail("the test command downloaded"))
    with pytest.raises(UserError,
                       match=r"the data folder run relative was trained on, .*gone .* is not there; pass --data_dir"):
        evaluate_on_test_set(outcome.folder)
    assert evaluate_on_test_set(outcome.folder, data_dir=str(moved))[M.NUM_IMAGES] == 12
    with pytest.raises(UserError,
                       match=r"no dataset found in .*moved.inaturalist_12K.train: pass --data_dir[^,]*$") as error:
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
    with pytest.raises(UserError, match=r"run early has no best.pt: it ended before its first epoch did \(preempted.*"
                                         r"train it further \(python agent.py --resume --run_id=early"):
        evaluate_on_test_set(folder)
    summary = json.loads((folder / "summary.json").read_text())  # killed outright: its summary still says running
    (folder / "summary.json").write_text(json.dumps({**summary, M.STATE: M.RUNNING, M.REASON: None}))
    with pytest.raises(UserError, match=r"\(running\); train it further \(python agent.py --resume"):
        evaluate_on_test_set(folder)


def test_testing_a_run_that_failed_before_an_epoch_says_to_fix_it_not_to_resume_it(base, monkeypatch):
    import trainer.run

    def broken(loop, state):
        raise RuntimeError("a bug in the first step")

    monkeypatch.setattr(trainer.run, "train", broken)
    folder = run_training(scratch(base, run_id="broken", epochs=1)).folder
    with pytest.raises(UserError, match=r"\(failed: RuntimeError: a bug in the first step\); fix what its reason says"
                                         r" and train it again, or test another run") as caught:
        evaluate_on_test_set(folder)
    assert "--resume" not in str(caught.value)


def test_a_rerun_that_fails_before_training_leaves_no_stale_model_for_the_test_command(base, tmp_path):
    # The same run id again with another config, failing on setup (a data_dir typo): config.yaml now says gelu,
    # and best.pt is still the relu model. The test command must refuse to evaluate it as the gelu network.
    trained = run_training(scratch(base, run_id="rerun", activation="relu", epochs=1))
    with pytest.raises(UserError):
        run_training(
            scratch(base, run_id="rerun", activation="gelu", epochs=1, data_dir=str(tmp_path / "nope"), download=False))
    assert yaml.safe_load((trained.folder / "config.yaml").read_text())["activation"] == "gelu"
    with pytest.raises(UserError, match="trained with another configuration"):
        evaluate_on_test_set(trained.folder, data_dir=base["data_dir"])


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
    assert ("has not finished (preempted, 1 of 2 epochs): this tests its best epoch so far (1)"
            in capsys.readouterr().out)
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
        with pytest.raises(
            UserError, match=rf"being trained by another process \(pid {os.getpid()}\).*test it once that has ended"):
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


def test_the_test_command_runs_in_eval_mode_and_fp32_on_a_cpu_and_reports_accuracy_per_true_class(base, monkeypatch):
    import trainer.evaluate

    outcome = run_training(scratch(base, run_id="cpu-test", epochs=1))
    saved = yaml.safe_load((outcome.folder / "config.yaml").read_text())
    (outcome.folder / "config.yaml").write_text(yaml.safe_dump({**saved, "precision": "bf16"}))  # as trained on a GPU
    seen, real = [], trainer.evaluate.build_model

    def build(*args, **kwargs):
        model = real(*args, **kwargs)
        model.register_forward_hook(lambda module, inputs,
                                    output: seen.append((any(m.training for m in module.modules()), output.dtype)))
        return model

    monkeypatch.setattr(trainer.evaluate, "build_model", build)
    result = evaluate_on_test_set(outcome.folder)
    assert seen and set(seen) == {(False, torch.float32)}
    confusion = result["confusion"]
    assert [sum(row) for row in confusion] == [4, 4, 4]  # rows: the true class (4 test images each)
    assert result[M.PER_CLASS_ACC] == {name: confusion[i][i] / 4 for i, name in enumerate(result["classes"])}
