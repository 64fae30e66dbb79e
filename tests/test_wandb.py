"""W&B's view of the runs: what a run, a failed run, a stopped run and `agent.py test` send to W&B.

W&B runs here are real and offline: each test reads what the run recorded in its `run-<id>.wandb` file, which is
exactly what `wandb sync` sends to W&B's server (tests/wandb_records.py). Nothing of wandb is replaced, except where
a behaviour exists only online (the model artifact): there the logger is told it is online, and the offline file
shows what it would have uploaded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import yaml

import wandb_records
from trainer import metrics as M
from trainer.config import FIELDS, parse_run_config
from trainer.evaluate import evaluate_on_test_set
from trainer.run import run_training
from trainer.store import ArtifactStore, LocalStore
from trainer.wandb_log import FAILED_RESULT_EXIT_CODE, RunLogger, start_logger

wandb = pytest.importorskip("wandb")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.delenv("WANDB_MODE")


def scratch(nature_dir: Path, tmp_path: Path, **overrides):
    return parse_run_config({
        "data_dir": str(nature_dir), "cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "runs"),
        "wandb_mode": "offline", "model": "scratch_cnn", "input_size": 32, "filters": 8, "dense_units": 16,
        "batch_size": 8, "epochs": 1, "weights": "none", **overrides,
    })


def test_every_sweep_yaml_files_its_runs_under_the_project_of_single_runs():
    project = FIELDS["wandb_project"].metadata["default"]
    # no sweep: its stages' are
    for path in sorted(p for p in (ROOT / "sweeps").glob("*.yaml") if p.name != "protocol.yaml"):
        assert yaml.safe_load(path.read_text()).get("project") == project, path.name


def test_a_run_files_under_its_project_its_console_reaches_the_logs_tab_and_the_test_logs_its_media(nature_dir,
                                                                                                    tmp_path, offline):
    # A process of its own, as users run it: W&B captures a process's console once, which pytest's capture defeats.
    config = scratch(nature_dir, tmp_path, run_id="seen")
    arguments = [f"--{key}={config_value}" for key, config_value in (
        ("data_dir", nature_dir), ("cache_dir", tmp_path / "cache"), ("output_dir", tmp_path / "runs"),
        ("wandb_mode", "offline"),
        ("model", "scratch_cnn"), ("input_size", 32), ("filters", 8), ("dense_units", 16), ("batch_size", 8),
        ("epochs", 1),
        ("run_id", "seen"))]
    process = subprocess.run([sys.executable, str(ROOT / "agent.py"), *arguments], cwd=tmp_path, capture_output=True,
                             text=True, timeout=300, env={k: v for k, v in os.environ.items() if k != "WANDB_SILENT"})
    assert process.returncode == 0, process.stderr[-2000:]
    outcome_folder = Path(config.output_dir) / "seen"
    trained = wandb_records.run_file(outcome_folder.parent, "seen")
    assert [line for line in (process.stdout + process.stderr).splitlines()
            if "W&B" in line or line.startswith("wandb")] == [
        f"W&B offline: sync with `wandb sync {trained.parent}`"]  # one line, not W&B's banner
    [run] = wandb_records.of_kind(trained, "run")
    assert run.project == "finetune-sweeps"
    console = "".join(line.line for line in wandb_records.of_kind(trained, "output_raw"))
    assert "epoch 1/1  train_loss" in console and "model: scratch_cnn" in console  # the Logs tab
    assert [exit.exit_code for exit in wandb_records.of_kind(trained, "exit")] == [0]
    summary = {update.key or update.nested_key[0]: update.value_json for s in wandb_records.of_kind(trained, "summary")
               for update in s.update}
    # a W&B report reads the curve from there
    assert [row[M.EPOCH] for row in json.loads(summary[M.EPOCH_HISTORY])] == [1]

    result = evaluate_on_test_set(outcome_folder)  # `agent.py test`: resumes the run's W&B record by its id
    tested = wandb_records.run_file(outcome_folder.parent, "seen")
    assert tested != trained and wandb_records.of_kind(tested, "run")[0].run_id == "seen"
    rows = [{item.nested_key[0]: item for item in row.item} for row in wandb_records.of_kind(tested, "history")]
    [media] = [row for row in rows if "test/predictions" in row]
    assert "test/confusion_matrix_table" in media
    tables = {artifact.name.split("-")[2]: artifact for artifact in wandb_records.of_kind(tested, "artifact")}
    grid = tables["testpredictions"]
    # 12 < 30
    assert sum(entry.path.startswith("media/images/") for entry in grid.manifest.contents) == result[M.NUM_IMAGES]
    assert "testconfusion_matrix_table" in tables
    charts = [update for config in wandb_records.of_kind(tested, "config") for update in config.update]
    assert any(list(update.nested_key) == ["_wandb", "visualize", "test/confusion_matrix"]
               and "confusion_matrix" in update.value_json
               for update in charts)
    summary = {update.key or update.nested_key[0]: update.value_json for s in wandb_records.of_kind(tested, "summary")
               for update in s.update}
    assert float(summary[M.TEST_ACC]) == result[M.TEST_ACC]
    assert [exit.exit_code for exit in wandb_records.of_kind(tested, "exit")] == [0]


def test_a_diverged_or_out_of_memory_run_is_failed_on_wandb_and_exits_0_for_the_agent(nature_dir, tmp_path, offline,
                                                                                      monkeypatch):
    import trainer.loop
    import trainer.run

    real = trainer.loop.F.cross_entropy
    monkeypatch.setattr(trainer.loop.F, "cross_entropy", lambda *a, **k: real(*a, **k) * float("nan"))
    diverged = run_training(scratch(nature_dir, tmp_path, run_id="nan"))
    monkeypatch.setattr(trainer.loop.F, "cross_entropy", real)

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")  # as a GPU raises it

    monkeypatch.setattr(trainer.run, "_attempt", out_of_memory)
    oom = run_training(scratch(nature_dir, tmp_path, run_id="oom", oom_retry=False))
    for outcome, state in ((diverged, M.DIVERGED), (oom, M.OOM)):
        assert outcome.state == state and outcome.exit_code == 0 and outcome.summary[M.EXIT_CODE] == 0
        recorded = wandb_records.run_file(outcome.folder.parent, outcome.run_id)
        assert [exit.exit_code for exit in wandb_records.of_kind(recorded, "exit")] == [FAILED_RESULT_EXIT_CODE]


def test_the_best_checkpoint_of_a_finished_run_becomes_a_model_artifact_online(nature_dir, tmp_path, offline,
                                                                               monkeypatch):
    import trainer.run

    logged = []

    class Spy(RunLogger):
        def log_model(self, path, metadata):
            logged.append((Path(path), metadata))

    monkeypatch.setattr(trainer.run, "start_logger", lambda *a, **k: Spy())
    finished = run_training(scratch(nature_dir, tmp_path, run_id="kept"))
    [(path, metadata)] = logged
    assert path == finished.folder / "best.pt" and path.exists()
    assert metadata[M.BEST_VAL_ACC] == finished.summary[M.BEST_VAL_ACC] and metadata["run_id"] == "kept"
    monkeypatch.setattr(trainer.run, "build_inputs", lambda *a, **k: 1 / 0)
    assert run_training(scratch(nature_dir, tmp_path, run_id="crashed")).state == M.FAILED and len(logged) == 1

    logger = start_logger("offline", "finetune-sweeps", "", "kept", {}, tmp_path / "runs")
    logger.online = True  # what it does online, recorded offline
    logger.log_model(path, metadata)
    logger.finish()
    [artifact] = wandb_records.of_kind(wandb_records.run_file(tmp_path / "runs", "kept"), "artifact")
    assert (artifact.type, artifact.name, set(artifact.aliases)) == ("model", "model-kept", {"best", "latest"})
    assert [entry.path for entry in artifact.manifest.contents] == ["best.pt"]
    assert '"best_val_acc"' in artifact.metadata
    offline_logger = start_logger("offline", "finetune-sweeps", "", "kept2", {}, tmp_path / "runs")
    offline_logger.log_model(path, metadata)  # offline: the run folder keeps best.pt; nothing to sync
    offline_logger.finish()
    assert not wandb_records.of_kind(wandb_records.run_file(tmp_path / "runs", "kept2"), "artifact")


# --- a stopped run's uploads ---------------------------------------------------------------------------

class SlowUploads:
    """W&B's network side for artifacts: an upload that takes until `release` is set."""

    entity, project = "me", "proj"

    def __init__(self):
        self.release, self.uploaded = threading.Event(), []

    def log_artifact(self, artifact, aliases=None):
        self.release.wait(timeout=60)
        self.uploaded.append(artifact.name)
        return type("Logged", (), {"wait": lambda self: None})()


def test_uploads_still_waiting_at_the_deadline_are_left_to_the_run_folder(tmp_path, capsys):
    from trainer.wandb_log import WandbLogger

    network = SlowUploads()
    store = ArtifactStore(WandbLogger(network, "offline"), "stopped")  # offline: no pruning of old versions
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    torch.save({"epoch": 1}, last)
    store.save(last)  # in flight
    torch.save({"epoch": 1}, best)
    store.save(best)  # waiting behind it
    store.close(timeout=0.2)  # the deadline passes with both unfinished
    network.release.set()
    store._thread.join(timeout=30)
    assert network.uploaded == ["checkpoint-stopped"]  # the upload already running ends; the waiting one never starts
    assert not list(tmp_path.glob(".upload-*")) and last.exists() and best.exists()
    assert "not finished within 0 s" in capsys.readouterr().out


@pytest.mark.parametrize("signum, state", [(signal.SIGUSR1, M.EARLY_STOPPED), (signal.SIGTERM, M.PREEMPTED)])
def test_a_stopped_run_waits_for_its_uploads_only_within_the_agents_kill_delay(nature_dir, tmp_path, monkeypatch,
                                                                               signum, state):
    import trainer.loop
    import trainer.run
    from trainer.signals import UPLOADS_AFTER_SIGNAL_SECONDS

    waited = []

    class Recording(LocalStore):
        def close(self, timeout=None):
            waited.append(timeout)

    class StopAtStep(trainer.loop.EpochProgress):
        def update(self, *args, **kwargs):
            super().update(*args, **kwargs)
            # hyperband's stop (SIGUSR1 here, SIGTERM under `wandb agent`) or the platform's
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(trainer.run, "make_store", lambda *a: Recording())
    monkeypatch.setattr(trainer.loop, "EpochProgress", StopAtStep)
    stopped = run_training(scratch(nature_dir, tmp_path, run_id="stop", wandb_mode="disabled", epochs=2))
    monkeypatch.setattr(trainer.loop, "EpochProgress", StopAtStep.__mro__[1])
    finished = run_training(scratch(nature_dir, tmp_path, run_id="done", wandb_mode="disabled"))
    assert (stopped.state, finished.state) == (state, M.FINISHED)
    assert 0 < waited[0] <= UPLOADS_AFTER_SIGNAL_SECONDS < 30  # W&B's agent kills 30 s after its SIGTERM
    assert waited[1] == 600  # nobody is waiting to kill a run that ended by itself
