"""The sweep engine's seam and the trial table: what the engine is told of each trial (failures, duplicates, a
running trial's new epochs, no accuracy without a validated epoch), its suggestions as plain values, hyperband's
decisions as the engine's own; the table reads back what it wrote and survives a write cut short."""

from __future__ import annotations

import json
import signal

import pytest
import sweeps

from sweep_helpers import local_sweep, tiny_definition, write_history
from sweeper import engine
from sweeper.table import DUPLICATE, Trial, TrialTable
from trainer import metrics as M
from trainer.config import config_hash, parse_run_config


def test_engine_sees_failures_as_failures():
    def trial(state, exit_code=0):
        return Trial("r", state, {}, None, {"lr": 0.1}, exit_code=exit_code, best_val_acc=0.5)

    assert engine.engine_state(trial(M.FINISHED)) == sweeps.RunState.finished
    assert engine.engine_state(trial(M.EARLY_STOPPED)) == sweeps.RunState.finished
    assert engine.engine_state(trial(M.DIVERGED)) == sweeps.RunState.failed
    assert engine.engine_state(trial(M.FAILED, 2)) == sweeps.RunState.failed
    assert engine.engine_state(trial(M.FAILED, 1)) == sweeps.RunState.crashed
    assert engine.engine_state(trial(M.PREEMPTED, 143)) == sweeps.RunState.preempted
    run = engine.sweep_run(trial(M.FINISHED), [{M.EPOCH: 1, M.VAL_ACC: 0.5}])
    assert run.summary_metrics == {M.VAL_ACC: 0.5} and run.config == {"lr": {"value": 0.1}}


def test_hyperband_decision_is_the_engines(monkeypatch):
    config = tiny_definition()
    config["early_terminate"] = {"type": "hyperband", "min_iter": 2, "eta": 2}
    good = [{M.EPOCH: e, M.VAL_ACC: 0.8} for e in (1, 2, 3)]
    runs = [
        engine.sweep_run(Trial("good-1", M.FINISHED, {}, "a", {}), good),
        engine.sweep_run(Trial("good-2", M.FINISHED, {}, "b", {}), good),
        engine.sweep_run(Trial("leading", M.RUNNING, {}, "c", {}),
                         [{M.EPOCH: 1, M.VAL_ACC: 0.7}, {M.EPOCH: 2, M.VAL_ACC: 0.9}]),
        engine.sweep_run(Trial("trailing", M.RUNNING, {}, "d", {}),
                         [{M.EPOCH: 1, M.VAL_ACC: 0.3}, {M.EPOCH: 2, M.VAL_ACC: 0.3}]),
        engine.sweep_run(Trial("too-young", M.RUNNING, {}, "e", {}), [{M.EPOCH: 1, M.VAL_ACC: 0.1}]),
    ]
    calls = []
    real_stop_runs = sweeps.stop_runs
    monkeypatch.setattr(engine.sweeps, "stop_runs", lambda *a, **k: calls.append(a) or real_stop_runs(*a, **k))
    assert engine.runs_to_stop(config, runs) == ["trailing"]  # maximize: the low val_acc is the one stopped
    assert len(calls) == 1
    del config["early_terminate"]
    assert engine.runs_to_stop(config, runs) == []


def test_trials_of_code_that_normalised_otherwise_are_still_found(tmp_path):
    """Older code kept warmup_epochs under onecycle, so hashed the same trial otherwise: it is still a duplicate."""
    from trainer.config import effective_config

    today = parse_run_config({"model": "resnet50", "schedule": "onecycle", "warmup_epochs": 3})
    older = {**effective_config(today), "warmup_epochs": 3.0}
    table = TrialTable(tmp_path)
    table.add(Trial("old-001", M.FINISHED, older, "0123456789abcdef", {}))
    assert table.find_identity(config_hash(today)).run_id == "old-001"
    assert table.find_identity(config_hash(today.replace(lr=0.5))) is None
    table.add(Trial("gone-002", M.FINISHED, {**older, "lr": 0.5, "removed_field": 1}, "fedcba9876543210", {}))
    assert table.find_identity("fedcba9876543210").run_id == "gone-002"  # a config that no longer reads keeps its hash


def test_a_duplicate_reports_its_originals_result_to_the_search_but_not_to_hyperband(tmp_path):
    sweep = local_sweep(tmp_path)
    original = sweep.table.add(
        Trial("original", M.FINISHED, {}, "hash", {"k_layers": 1}, exit_code=0, best_val_acc=0.7))
    write_history(sweep.table.run_folder(original), [0.4, 0.7])
    sweep.table.add(Trial("repeat", DUPLICATE, {}, "hash", {"k_layers": 2}, duplicate_of="original"))
    original_run, duplicate_run = sweep._engine_runs()
    assert duplicate_run.name == "repeat" and duplicate_run.config == {"k_layers": {"value": 2}}
    assert duplicate_run.state == sweeps.RunState.finished and duplicate_run.summary_metrics == {M.VAL_ACC: 0.7}
    assert duplicate_run.history == original_run.history and len(original_run.history) == 2
    # One training run is one entry in hyperband's bands, however many suggestions repeated its config.
    assert [run.name for run in sweep._engine_runs(for_stopping=True)] == ["original"]


def test_hyperband_sees_the_new_epochs_of_a_running_trial(tmp_path):
    sweep = local_sweep(tmp_path)
    running = sweep.table.add(Trial("running", M.RUNNING, {}, "hash", {"lr": 0.01}))
    folder = sweep.table.run_folder(running)
    write_history(folder, [0.3])
    assert [len(run.history) for run in sweep._engine_runs(for_stopping=True)] == [1]
    write_history(folder, [0.3, 0.5])  # its next epoch, written while the driver polls
    [run] = sweep._engine_runs(for_stopping=True)
    assert run.state == sweeps.RunState.running and [row[M.VAL_ACC] for row in run.history] == [0.3, 0.5]


def test_the_engines_suggestions_are_plain_python_values():
    """The engine samples numpy scalars; trials, the table and the command line get plain floats and ints."""
    from sweeper.trial import format_value
    from trainer.config import parse_value

    config = {**tiny_definition(), "method": "random"}
    config["parameters"]["lr"] = {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1}
    config["parameters"]["dropout"] = {"distribution": "q_uniform", "min": 0.0, "max": 0.5, "q": 0.1}
    suggestion = engine.suggest(config, [])
    assert (type(suggestion["lr"]) is float and type(suggestion["dropout"]) is float
            and type(suggestion["epochs"]) is int)
    assert parse_value("lr", format_value(suggestion["lr"])) == suggestion["lr"]  # the trial trains the suggested lr


def test_a_trial_without_a_validated_epoch_reports_no_accuracy_to_the_engine():
    """The trainer's -1 (no epoch validated) is no accuracy: bayes must not learn it as the config's result."""
    for best in (-1.0, None, float("nan")):
        run = engine.sweep_run(Trial("r", M.FINISHED, {}, None, {"lr": 0.1}, exit_code=0, best_val_acc=best), [])
        assert run.summary_metrics == {}


def test_the_table_reads_back_exactly_what_it_wrote_and_rows_of_other_versions(tmp_path):
    table = TrialTable(tmp_path)
    trials = [Trial("s-001-ab12", M.FINISHED, {"lr": 0.01, "k_layers": None}, "h1", {"lr": 0.01, "k_layers": 2},
                    reason=None, exit_code=0, best_val_acc=0.625, fixed={"epochs": "2"}),
              Trial("s-002-cd34", DUPLICATE, {"lr": 0.01, "k_layers": None}, "h1", {"lr": 0.01, "k_layers": 1},
                    duplicate_of="s-001-ab12"),
              Trial("s-003-ef56", M.FAILED, {}, None, {"lr": "x"}, reason="invalid suggestion: lr='x'")]
    for trial in trials:
        table.add(trial)
    assert TrialTable(tmp_path).trials == trials
    # A row written by another version of the driver, with a field this one does not know, still reads.
    with (tmp_path / "table.jsonl").open("a") as handle:
        handle.write(
            json.dumps({**json.loads(json.dumps(trials[0].__dict__)), "run_id": "s-004-0000", "gpu": "0"}) + "\n")
    assert TrialTable(tmp_path).get("s-004-0000").best_val_acc == 0.625


def test_a_table_write_cut_short_leaves_the_previous_table_whole(tmp_path):
    """A disk that fills up (here: a file-size limit) while the table is rewritten must not cost the sweep its table."""
    resource = pytest.importorskip("resource")
    table = TrialTable(tmp_path)
    table.add(Trial("s-001", M.FINISHED, {"lr": 0.01}, "h1", {"lr": 0.01}, exit_code=0, best_val_acc=0.5))
    before = (tmp_path / "table.jsonl").read_text()
    table.trials.append(Trial("s-002", M.RUNNING, {"lr": 0.1}, "h2", {"lr": 0.1, "note": "x" * 4000}))
    limits, handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) + 100, limits[1]))
    try:
        with pytest.raises(OSError):
            table.save()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert (tmp_path / "table.jsonl").read_text() == before
    assert [t.run_id for t in TrialTable(tmp_path)] == ["s-001"]


def test_run_ids_differ_between_sweep_folders_of_one_sweep_name(tmp_path):
    """W&B run ids share a project: two folders of sweeps/tiny.yaml must not both name their first trial tiny-001."""
    ids = [TrialTable(tmp_path / str(i)).new_run_id("tiny") for i in range(3)]
    assert all(run_id.startswith("tiny-001-") for run_id in ids) and len(set(ids)) > 1
