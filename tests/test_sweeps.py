"""Sweeps: the YAML definitions, the offline driver and the exact command `wandb agent` runs.

Trials are real `agent.py` subprocesses of a tiny CNN at 32 px on the tests' own dataset (an epoch takes a
fraction of a second); most of a trial's time is importing torch, so each test launches as few as it can.
The hyperband end-to-end check is `slow`; the driver's side of it is tested with a stand-in process.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sweeps
import yaml

from common.errors import UserError
from sweeper import engine, run_local_sweep
from sweeper.definition import RECIPE, definition_problems, load_definition, unrunnable_values
from sweeper.local import LocalSweep
from sweeper.table import DUPLICATE, Trial, TrialTable
from sweeper.trial import launch
from trainer import metrics as M
from trainer.config import FIELDS, config_hash, load_yaml_values, parse_run_config

from data_helpers import shrink_in_place

ROOT = Path(__file__).resolve().parents[1]
YAMLS = sorted(p for p in (ROOT / "sweeps").glob("*.yaml") if p.name != "protocol.yaml")  # the protocol file is no sweep


def tiny_definition(**parameters) -> dict:
    """sweeps/tiny.yaml with some parameters replaced: the tests' sweeps share its tiny, fast settings."""
    config = yaml.safe_load((ROOT / "sweeps" / "tiny.yaml").read_text())
    config["parameters"].update(parameters)
    return config


def write_yaml(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def fixed_args(nature_dir, tmp_path_factory) -> dict[str, str]:
    return {"data_dir": str(nature_dir), "cache_dir": str(tmp_path_factory.mktemp("cache")), "wandb_mode": "disabled"}


def table_rows(sweep_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (sweep_dir / "table.jsonl").read_text().splitlines()]


def summary_of(sweep_dir: Path, run_id: str) -> dict:
    return json.loads((sweep_dir / "runs" / run_id / "summary.json").read_text())


# --- the definitions ---------------------------------------------------------------------------------

@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_sweep_yaml_passes_the_wandb_schema(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # recipe files are named relative to the folder a sweep runs from
    config = yaml.safe_load(path.read_text())
    assert sweeps.schema_violations_from_proposed_config(config) == []
    assert definition_problems(config) == []


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_sweep_yaml_speaks_the_run_config(path):
    config = yaml.safe_load(path.read_text())
    assert config["metric"]["name"] == M.VAL_ACC
    assert config["program"] == "agent.py" and "${args}" in config.get("command", ["${args}"])
    if config["parameters"].get("stage", {}).get("value") == "compare":  # the protocol's final stage: splits vary on purpose
        assert len(config["parameters"]["split_seed"]["values"]) >= 2
    else:
        assert "value" in config["parameters"]["split_seed"]  # one split for every trial of a sweep
    for name, spec in config["parameters"].items():
        if name == RECIPE:  # files of fixed values, one recipe each: every one trains
            recipes = [load_yaml_values(ROOT / value) for value in spec["values"]]
            assert all(parse_run_config(recipe).model == recipe["model"] for recipe in recipes)
            assert not set().union(*recipes) & set(config["parameters"]), "a value fixed in the sweep would override the recipes'"
            continue
        assert name in FIELDS, name
        values = spec.get("values", [spec["value"]] if "value" in spec else [spec.get("min"), spec.get("max")])
        for value in values:
            # A YAML boolean is one the engine can confuse with 0/1 or index 0: booleans are written as strings.
            assert not isinstance(value, bool), f"{path.name}: {name} value {value!r} must be the string 'true'/'false'"
            parse_run_config({name: value})  # a typo (unknown model, activation) fails here, not in trial 17


@pytest.mark.parametrize("bounds, named, hint, fixed", [
    ("min: 1e-5, max: 1.0e-2", "min: 1e-5", "1.0e-5", ("1e-5", "1.0e-5")),  # 1.0e-2 is a number already
    ("min: 1.0e-5, max: 1e0", "max: 1e0", "1.0e+0", ("1e0", "1.0e+0")),  # 1.0e0 would be a string too: signed
])
def test_an_exponent_yaml_reads_as_a_string_is_named_with_a_spelling_it_reads_as_a_number(bounds, named, hint, fixed, tmp_path):
    """`min: 1e-5` is a string to YAML 1.1 (no dot, or no sign): the schema's own message would not say why."""
    path = tmp_path / "lr.yaml"
    path.write_text("method: bayes\nmetric: {name: val_acc, goal: maximize}\n"
                    f"parameters:\n  lr: {{distribution: log_uniform_values, {bounds}}}\n")
    with pytest.raises(UserError) as caught:
        load_definition(path)
    message = str(caught.value)
    assert message.startswith(f"sweep file {path}: parameter 'lr' has {named}, which YAML reads as a string")
    assert f"e.g. {hint}" in message and message.count("which YAML reads as a string") == 1
    path.write_text(path.read_text().replace(*fixed))
    assert isinstance(load_definition(path).parameters["lr"][named.split(":")[0]], float)


def test_definition_problems_name_the_mistake(tmp_path):
    config = tiny_definition(lrr={"value": 0.1}, output_dir={"value": "x"})
    config["metric"] = {"name": "val_accuracy", "goal": "maximize"}
    problems = " | ".join(definition_problems(config))
    assert "'lrr'" in problems and "'lr'" in problems
    assert "output_dir" in problems and "set by the sweep driver" in problems
    assert "val_accuracy" in problems
    beta = tiny_definition(weight_decay={"distribution": "beta", "a": 2.0, "b": 5.0})  # every key W&B's schema knows is taken
    assert definition_problems(beta) == []
    typos = {**tiny_definition(lr={"valuse": [0.1, 0.2]}), "method": "bayse"}
    problems = definition_problems(typos)
    assert problems[0] == "method 'bayse' is not one of grid, random, bayes (did you mean 'bayes'?)"
    assert "has the key 'valuse' (did you mean 'values'?)" in problems[1]  # swapped letters, not a dropped one
    with pytest.raises(UserError) as caught:  # the one-line error carries every problem, not "(and 1 more)"
        load_definition(write_yaml(tmp_path / "typos.yaml", typos))
    assert all(problem in str(caught.value) for problem in problems) and "\n" not in str(caught.value)


def test_a_sweep_file_that_is_not_yaml_says_where(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("method: grid\nparameters:\n  lr: {values: [0.1, 0.2}\n")
    with pytest.raises(UserError, match=r"broken.yaml is not valid YAML: line 3, column 25: expected ',' or '\]', but got '}'$"):
        load_definition(broken)


@pytest.mark.parametrize("parameter, named", [
    ({"epochs": {"valeu": 2}}, "parameter 'epochs' has the key 'valeu' (did you mean 'value'?)"),
    ({"activation": {"value": "swish"}}, "parameter 'activation': activation='swish' is not one of"),
    ({"activation": {"values": ["relu", "gelu", "swish"]}}, "'swish' is not one of"),
    ({"dropout": {"distribution": "uniform", "min": 0.0, "max": 1.5}}, "parameter 'dropout': dropout=1.5 is out of range"),
    ({"weight_decay": {"distribution": "log_uniform_values", "min": 1e-5, "max": 2.0}}, "weight_decay=2.0 is out of range"),
])
def test_a_value_no_trial_could_run_is_refused_before_the_first_trial(tmp_path, parameter, named):
    with pytest.raises(UserError) as caught:
        load_definition(write_yaml(tmp_path / "s.yaml", tiny_definition(**parameter)))
    assert named in str(caught.value) and "\n" not in str(caught.value)


def test_a_listed_value_no_listed_model_can_train_with_is_refused_before_the_first_trial(tmp_path, fixed_args):
    pretrained = {"model": {"value": "resnet18"}, "strategy": {"values": ["head_only", "last_k"]}, "k_layers": {"values": [2, 7]}}
    sweep = write_yaml(tmp_path / "s.yaml", tiny_definition(**pretrained))
    with pytest.raises(UserError, match=r"parameter 'k_layers' lists 7, which no trial can train with: k_layers=7 but resnet18 has 5"):
        run_local_sweep(sweep, count=1, sweep_dir=tmp_path / "a", fixed=fixed_args)
    assert not (tmp_path / "a").exists()
    # A fixed --model counts too; a value that some listed model can train with is left to the search.
    from sweeper.definition import unrunnable_values

    searched = {"model": {"values": ["resnet18", "vit_b_16"]}, "strategy": {"value": "last_k"}, "k_layers": {"values": [2, 7]}}
    assert unrunnable_values(searched, {}) == []
    assert "lists 7" in " ".join(unrunnable_values(searched, {"model": "resnet18"}))
    assert unrunnable_values({**pretrained, "k_layers": {"values": [2, 5]}}, {}) == []


def test_the_sweep_console_names_the_files_its_trials_skip(tmp_path, fixed_args, capsys):
    from sweeper.local import prepare_dataset

    prepare_dataset(load_definition(write_yaml(tmp_path / "s.yaml", tiny_definition())), {**fixed_args, "cache_dir": str(tmp_path / "c")})
    out = capsys.readouterr().out
    assert "skipped 3 unreadable file(s)" in out and "broken_000.jpg" in out and "lists them in its skipped_files.txt" in out
    assert list((tmp_path / "c").glob("scan-*.json"))  # the trials read this scan instead of repeating it


def test_each_recipe_file_trains_its_own_values_and_the_sweeps_fixed_values_override_them(tmp_path, fixed_args, capsys):
    """sweeps/compare.yaml's design: a `config` parameter lists per-model recipes, read as `agent.py --config`."""
    recipes = [write_yaml(tmp_path / "a.yaml", {"activation": "relu", "lr": 0.01, "kernel_size": 5}),
               write_yaml(tmp_path / "b.yaml", {"activation": "gelu", "lr": 0.001, "dropout": 0.1, "epochs": 9})]
    definition = tiny_definition(**{RECIPE: {"values": [str(path) for path in recipes]}})
    del definition["parameters"]["activation"], definition["parameters"]["lr"]
    sweep_dir = tmp_path / "s"
    run_local_sweep(write_yaml(tmp_path / "recipes.yaml", definition), count=2, sweep_dir=sweep_dir, fixed=fixed_args)
    rows = table_rows(sweep_dir)
    assert [row["state"] for row in rows] == [M.FINISHED, M.FINISHED]
    trained = {row["suggested"][RECIPE]: yaml.safe_load((sweep_dir / "runs" / row["run_id"] / "config.yaml").read_text()) for row in rows}
    a, b = trained[str(recipes[0])], trained[str(recipes[1])]
    assert (a["activation"], a["lr"], a["kernel_size"], a["dropout"]) == ("relu", 0.01, 5, FIELDS["dropout"].default)
    assert (b["activation"], b["lr"], b["kernel_size"], b["dropout"]) == ("gelu", 0.001, 3, 0.1)
    assert a["epochs"] == b["epochs"] == 2  # the sweep's own fixed value wins over a recipe's, as on the command line
    table = capsys.readouterr().out.split("run_id ")[-1].splitlines()  # the final table names each trial's recipe
    assert table[0].split()[-2:] == [RECIPE, "note"] and sorted(line.split()[-1] for line in table[1:]) == ["a", "b"]
    assert all(summary_of(sweep_dir, row["run_id"])["config_hash"] == row["config_hash"] for row in rows)
    # A relaunch passes the values the recipe gave when the trial was recorded, not the file as it is now.
    write_yaml(recipes[0], {"activation": "relu", "lr": 0.01, "kernel_size": 7})
    sweep = LocalSweep(load_definition(tmp_path / "recipes.yaml"), sweep_dir, fixed_args, 1)
    trial = next(t for t in sweep.table if t.suggested[RECIPE] == str(recipes[0]))
    relaunch = sweep._parameters(trial)
    assert RECIPE not in relaunch and relaunch["kernel_size"] == 5
    assert config_hash(parse_run_config(relaunch)) == trial.config_hash


def test_recipe_files_are_checked_before_the_first_trial(tmp_path):
    good = write_yaml(tmp_path / "good.yaml", {"model": "resnet18", "strategy": "last_k", "k_layers": 2})
    lost = tmp_path / "lost.yaml"
    problems = definition_problems(tiny_definition(**{RECIPE: {"values": [str(good), str(lost)]}}))
    assert problems == [f"parameter 'config': config file {lost} not found (a path relative to the folder the sweep runs from)"]
    assert "lists YAML files of fixed values" in definition_problems(tiny_definition(**{RECIPE: {"distribution": "uniform", "min": 0, "max": 1}}))[0]
    # a fixed --k_layers the recipe's model cannot take: named before any trial fails on it
    assert unrunnable_values({RECIPE: {"values": [str(good)]}}, {"k_layers": "7"})[0].startswith(f"recipe {good} cannot train: k_layers=7")
    assert unrunnable_values({RECIPE: {"values": [str(good)]}, "seed": {"values": [0, 1]}}, {}) == []


def test_a_new_sweep_folder_beside_a_store_with_this_sweeps_trials_says_it_starts_over(tmp_path, fixed_args, capsys):
    """A new machine, the --sweep_dir left behind: the store's checkpoints cannot be found without its table."""
    store = tmp_path / "drive"
    for name in ("tiny-001-ab12", "tiny-002-0f3c", "tinyx-001-ab12", "other-001-ab12"):
        (store / name).mkdir(parents=True)
    definition = write_yaml(tmp_path / "tiny.yaml", tiny_definition())
    run_local_sweep(definition, count=0, sweep_dir=tmp_path / "new", fixed={**fixed_args, "checkpoint_store": str(store)})
    out = capsys.readouterr().out
    assert f"note: {store} holds checkpoints of 2 trial(s) of a sweep named tiny (tiny-001-ab12, tiny-002-0f3c)" in out
    assert "pass the --sweep_dir it used" in out
    run_local_sweep(definition, count=0, sweep_dir=tmp_path / "new", fixed={**fixed_args, "checkpoint_store": str(store)})
    assert "holds checkpoints" not in capsys.readouterr().out  # said when the folder is new only
    in_yaml = write_yaml(tmp_path / "tiny.yaml", tiny_definition(checkpoint_store={"value": str(store)}))
    run_local_sweep(in_yaml, count=0, sweep_dir=tmp_path / "newer", fixed=fixed_args)
    assert "holds checkpoints of 2 trial(s)" in capsys.readouterr().out  # a store the YAML fixes, too


def test_fixed_arguments_are_checked_once(tmp_path, fixed_args):
    sweep = write_yaml(tmp_path / "s.yaml", tiny_definition())
    with pytest.raises(UserError, match="set by the sweep"):
        run_local_sweep(sweep, count=1, sweep_dir=tmp_path / "a", fixed={**fixed_args, "run_id": "x"})
    with pytest.raises(UserError, match="unknown parameter 'lrr'"):
        run_local_sweep(sweep, count=1, sweep_dir=tmp_path / "b", fixed={**fixed_args, "lrr": "0.1"})
    from sweeper.local import check_fixed

    assert check_fixed({"k_layers": "8"}) == {"k_layers": "8"}  # too many for resnet50, right for a ViT sweep
    with pytest.raises(UserError, match="k_layers"):
        check_fixed({"k_layers": "-1"})
    with pytest.raises(UserError, match="resnet50"):
        check_fixed({"model": "resnet5O"})
    with pytest.raises(UserError, match="last_k"):
        check_fixed({"strategy": "lastk"})



def test_a_sweep_without_its_dataset_refuses_to_start(tmp_path, fixed_args):
    """Not one failed trial per suggestion: the driver finds the data once, before the first trial."""
    sweep, sweep_dir = write_yaml(tmp_path / "s.yaml", tiny_definition()), tmp_path / "sweep"
    with pytest.raises(UserError) as caught:
        run_local_sweep(sweep, count=3, sweep_dir=sweep_dir, fixed={**fixed_args, "data_dir": str(tmp_path / "empty"), "download": "false"})
    assert "no dataset found in" in str(caught.value) and "empty" in str(caught.value) and "\n" not in str(caught.value)
    assert not sweep_dir.exists()  # a first call that failed leaves no folder behind

# --- the engine seam ---------------------------------------------------------------------------------

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
        engine.sweep_run(Trial("leading", M.RUNNING, {}, "c", {}), [{M.EPOCH: 1, M.VAL_ACC: 0.7}, {M.EPOCH: 2, M.VAL_ACC: 0.9}]),
        engine.sweep_run(Trial("trailing", M.RUNNING, {}, "d", {}), [{M.EPOCH: 1, M.VAL_ACC: 0.3}, {M.EPOCH: 2, M.VAL_ACC: 0.3}]),
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
    from trainer.config import config_hash, effective_config

    today = parse_run_config({"model": "resnet50", "schedule": "onecycle", "warmup_epochs": 3})
    older = {**effective_config(today), "warmup_epochs": 3.0}
    table = TrialTable(tmp_path)
    table.add(Trial("old-001", M.FINISHED, older, "0123456789abcdef", {}))
    assert table.find_identity(config_hash(today)).run_id == "old-001"
    assert table.find_identity(config_hash(today.replace(lr=0.5))) is None
    table.add(Trial("gone-002", M.FINISHED, {**older, "lr": 0.5, "removed_field": 1}, "fedcba9876543210", {}))
    assert table.find_identity("fedcba9876543210").run_id == "gone-002"  # a config that no longer reads keeps its hash


# --- the offline driver --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory, fixed_args):
    """A grid whose k_layers does not apply to scratch_cnn, run as --count 3, then --count 5 (2 more: the count is the
    sweep's size), then --count 7 (the grid has only 5 distinct configs)."""
    folder = tmp_path_factory.mktemp("grid")
    definition = tiny_definition(activation={"values": ["relu", "gelu", "silu", "mish", "leaky_relu"]},
                                 k_layers={"values": [1, 2]}, lr={"value": 0.01}, epochs={"value": 1})
    sweep = write_yaml(folder / "grid.yaml", definition)
    sweep_dir = folder / "sweep"
    phases = []
    for number, (count, workers) in enumerate(((3, 2), (5, 2), (7, 1))):
        console = io.StringIO()  # what the user sees; kept beside the sweep folder for the console's own test
        with contextlib.redirect_stdout(console):
            summary = run_local_sweep(sweep, count=count, workers=workers, sweep_dir=sweep_dir, fixed=fixed_args)
        (folder / f"console-{number}.txt").write_text(console.getvalue())
        phases.append((summary, table_rows(sweep_dir)))
    return sweep_dir, phases


def test_count_trains_that_many_distinct_configs(grid_sweep):
    sweep_dir, phases = grid_sweep
    summary, rows = phases[0]
    trained = [r for r in rows if r["state"] != DUPLICATE]
    assert len(trained) == 3 and summary["new"] == 3
    assert len({r["config_hash"] for r in trained}) == 3
    for row in trained:
        assert row["state"] == M.FINISHED and row["exit_code"] == 0
        run_summary = summary_of(sweep_dir, row["run_id"])
        assert run_summary[M.STATE] == M.FINISHED and run_summary["config_hash"] == row["config_hash"]
        assert row["best_val_acc"] == run_summary[M.BEST_VAL_ACC]
        assert row["config"]["k_layers"] is None  # effective values, normalised
        assert (sweep_dir / "runs" / row["run_id"] / "output.log").exists()
        assert not (sweep_dir / "runs" / row["run_id"] / "test").exists() and M.TEST_ACC not in run_summary  # pitfall 7
    assert yaml.safe_load((sweep_dir / "sweep.yaml").read_text())["parameters"]["k_layers"] == {"values": [1, 2]}


def test_the_sweep_console_shows_each_trials_epochs_by_name_and_the_sweeps_progress(grid_sweep):
    sweep_dir, phases = grid_sweep
    lines = (sweep_dir.parent / "console-0.txt").read_text().splitlines()  # --count 3 --workers 2
    tags = {}
    for row in [row for row in phases[0][1] if row["state"] != DUPLICATE]:
        run_id = row["run_id"]
        started = next(line for line in lines if line.endswith(f"{run_id}/output.log") and " started " in line)
        tags[run_id] = started.split("]")[0] + "]"
        # The trial's own epoch line (epoch, train loss, val_acc, images/s, seconds), named by its trial, live.
        [epoch] = [i for i, line in enumerate(lines) if line.startswith(f"{tags[run_id]} {run_id}  epoch 1/1  train_loss ")]
        assert re.search(r"val_acc \d\.\d{4}  \d+ img/s  \d+\.\ds$", lines[epoch])
        ended = lines.index(next(line for line in lines if line.startswith(f"{tags[run_id]} {run_id} finished")))
        assert epoch < ended and lines[ended + 1].startswith("sweep: ")
    assert len(set(tags.values())) == 3  # two at once: each line says whose it is
    progress = [line for line in lines if line.startswith("sweep: ")]
    assert [line.split(" trials done")[0] for line in progress] == ["sweep: 1/3", "sweep: 2/3", "sweep: 3/3"]
    assert re.fullmatch(r"sweep: 2/3 trials done, [01] running, \d+s elapsed, about \d+s left", progress[1])
    assert re.fullmatch(r"sweep: 3/3 trials done, 0 running, \d+s elapsed", progress[2])
    assert sum("warning: CPU: no GPU found" in line for line in lines) == 1  # every trial's, shown once


def test_a_sweep_folder_of_a_yaml_without_its_project_goes_on_with_the_yaml_that_names_it(tmp_path):
    from sweeper.definition import pin_definition

    today = tiny_definition()
    assert today["project"] == FIELDS["wandb_project"].metadata["default"]
    older = {k: v for k, v in today.items() if k != "project"}
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    assert pin_definition(sweep_dir, load_definition(write_yaml(tmp_path / "older.yaml", older)), bound=True) is False
    assert pin_definition(sweep_dir, load_definition(write_yaml(tmp_path / "tiny.yaml", today)), bound=True) is False
    with pytest.raises(UserError, match="different sweep"):  # the search itself still may not change
        pin_definition(sweep_dir, load_definition(write_yaml(tmp_path / "other.yaml", {**today, "method": "random"})), bound=True)


def test_duplicates_are_recorded_not_trained(grid_sweep):
    sweep_dir, phases = grid_sweep
    rows = phases[-1][1]
    by_id = {r["run_id"]: r for r in rows}
    duplicates = [r for r in rows if r["state"] == DUPLICATE]
    assert duplicates  # k_layers=2 repeats k_layers=1 for every activation
    for row in duplicates:
        original = by_id[row["duplicate_of"]]
        assert original["state"] == M.FINISHED and original["config_hash"] == row["config_hash"]
        assert row["suggested"]["k_layers"] == 2 and original["suggested"]["k_layers"] == 1
        assert not (sweep_dir / "runs" / row["run_id"]).exists()


def test_a_second_call_continues_the_sweep(grid_sweep):
    sweep_dir, phases = grid_sweep
    (_, first_rows), (second, second_rows) = phases[0], phases[1]
    assert second["new"] == 2 and second["resumed"] == 0
    assert second_rows[: len(first_rows)] == first_rows  # finished trials are never rerun
    trained = [r for r in second_rows if r["state"] != DUPLICATE]
    assert len(trained) == 5 and len({r["config_hash"] for r in trained}) == 5
    assert {r["config"]["activation"] for r in trained} == {"relu", "gelu", "silu", "mish", "leaky_relu"}


def test_an_exhausted_grid_trains_nothing_more(grid_sweep):
    sweep_dir, phases = grid_sweep
    summary, rows = phases[2]
    assert summary["new"] == 0
    assert [r for r in rows if r["state"] != DUPLICATE] == [r for r in phases[1][1] if r["state"] != DUPLICATE]


def test_the_report_reads_the_sweep_folder(grid_sweep):
    from report.sources import load_table
    from report.table import DUPLICATE as REPORT_DUPLICATE

    sweep_dir, phases = grid_sweep
    table = load_table(str(sweep_dir))
    assert REPORT_DUPLICATE == DUPLICATE
    assert len(table.records) == 5 and len(table.duplicates) == len(phases[-1][1]) - 5
    assert table.metric_name == M.VAL_ACC


def test_a_folder_refuses_a_different_definition(grid_sweep, tmp_path, fixed_args):
    sweep_dir, _ = grid_sweep
    other = write_yaml(tmp_path / "other.yaml", tiny_definition())
    with pytest.raises(UserError, match="different sweep"):
        run_local_sweep(other, count=1, sweep_dir=sweep_dir, fixed=fixed_args)


def test_a_trial_that_ended_while_the_driver_was_away_is_not_rerun(tmp_path, fixed_args):
    # The driver was killed after the trial finished but before it updated the table.
    sweep_dir = tmp_path / "sweep"
    table = TrialTable(sweep_dir)
    trial = table.add(Trial("ended", M.RUNNING, {}, "hash", {"activation": "relu", "lr": 0.001}))
    folder = table.run_folder(trial)
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({M.STATE: M.FINISHED, M.BEST_VAL_ACC: 0.5, "exit_code": 0}))
    summary = run_local_sweep(write_yaml(tmp_path / "s.yaml", tiny_definition()), count=0, sweep_dir=sweep_dir, fixed=fixed_args)
    assert summary["resumed"] == 0 and not (folder / "output.log").exists()
    [row] = table_rows(sweep_dir)
    assert row["state"] == M.FINISHED and row["best_val_acc"] == 0.5


def test_failing_trials_are_recorded_and_a_setup_failure_stops_the_sweep(tmp_path, fixed_args):
    # k_layers=9 is a valid value, but not for resnet18's 5 stages (it is for vit_b_16's 12 blocks): that suggestion
    # cannot parse (recorded, never launched, the sweep goes on); a missing weights file makes agent.py exit 2, a
    # setup problem every later trial would share: the sweep stops there, saying what to fix.
    definition = tiny_definition(model={"values": ["resnet18", "vit_b_16"]}, strategy={"value": "last_k"}, k_layers={"values": [9, 1, 2]},
                                 weights={"value": str(tmp_path / "missing.pt")}, activation={"value": "relu"}, lr={"value": 0.01})
    sweep_dir = tmp_path / "sweep"
    with pytest.raises(UserError) as stopped:
        run_local_sweep(write_yaml(tmp_path / "bad.yaml", definition), count=3, sweep_dir=sweep_dir, fixed=fixed_args)
    invalid, launched = table_rows(sweep_dir)  # the third point never started
    assert "failed on a setup problem" in str(stopped.value) and "missing.pt" in str(stopped.value) and "retried" in str(stopped.value)
    assert invalid["state"] == M.FAILED and "k_layers=9" in invalid["reason"] and invalid["exit_code"] is None
    assert launched["state"] == M.FAILED and launched["exit_code"] == 2 and "missing.pt" in launched["reason"]
    assert summary_of(sweep_dir, launched["run_id"])[M.REASON] == launched["reason"]


def test_a_trial_that_failed_on_setup_is_retried_once_it_is_fixed(tmp_path, nature_dir, fixed_args, monkeypatch):
    import sweeper.local

    data = tmp_path / "data"
    shutil.copytree(nature_dir, data)
    empty = data / "inaturalist_12K" / "train" / "Zebras"
    empty.mkdir()  # an empty class folder: every trial would fail on it
    definition = tiny_definition(activation={"values": ["relu", "gelu"]}, lr={"value": 0.01})
    sweep, sweep_dir, fixed = write_yaml(tmp_path / "s.yaml", definition), tmp_path / "sweep", {**fixed_args, "data_dir": str(data)}
    with pytest.raises(UserError, match="Zebras"):  # the driver's own look at the data: no trial is spent on it
        run_local_sweep(sweep, count=2, sweep_dir=sweep_dir, fixed=fixed)
    assert not sweep_dir.exists()
    # A setup problem only a trial meets (the driver's look skipped here): the trial fails, and is retried once fixed.
    monkeypatch.setattr(sweeper.local, "prepare_dataset", lambda definition, fixed: None)
    with pytest.raises(UserError, match="Zebras"):
        run_local_sweep(sweep, count=2, sweep_dir=sweep_dir, fixed=fixed)
    [failed] = table_rows(sweep_dir)
    empty.rmdir()
    summary = run_local_sweep(sweep, count=2, sweep_dir=sweep_dir, fixed=fixed)  # the same command, once fixed
    retried, new = table_rows(sweep_dir)
    assert retried["run_id"] == failed["run_id"] and retried["state"] == new["state"] == M.FINISHED
    assert summary["resumed"] == 1 and summary["new"] == 1
    assert {retried["config"]["activation"], new["config"]["activation"]} == {"relu", "gelu"}


def test_a_setup_failure_of_one_searched_value_does_not_stop_the_sweep(tmp_path, fixed_args, capsys):
    # weights=none trains; a weights file that is missing fails on setup. Other trials trained, so that failure
    # is its value's: recorded, the sweep goes on, and the next call retries it (fails again: still no stop).
    missing = str(tmp_path / "missing.pt")
    definition = tiny_definition(weights={"values": ["none", missing]}, activation={"value": "relu"}, lr={"value": 0.01}, epochs={"value": 1})
    sweep, sweep_dir = write_yaml(tmp_path / "s.yaml", definition), tmp_path / "sweep"
    summary = run_local_sweep(sweep, count=2, sweep_dir=sweep_dir, fixed=fixed_args)
    trained, failed = table_rows(sweep_dir)
    assert trained["config"]["weights"] == "none" and trained["state"] == M.FINISHED
    assert failed["config"]["weights"] == missing and failed["state"] == M.FAILED and failed["exit_code"] == 2
    assert summary["new"] == 2 and summary["best_run_id"] == trained["run_id"]
    assert "of their own values" in capsys.readouterr().out
    again = run_local_sweep(sweep, count=2, sweep_dir=sweep_dir, fixed=fixed_args)  # retried, fails alike, no stop
    assert again["resumed"] == 1 and again["new"] == 0 and [r["state"] for r in table_rows(sweep_dir)] == [M.FINISHED, M.FAILED]


def test_new_trials_failing_on_setup_in_a_row_stop_the_sweep_even_after_others_trained(tmp_path, fixed_args):
    # The data went away mid-sweep (here: every new trial names a missing weights file): after three in a
    # row the sweep stops instead of burning its whole count on failures.
    sweep_dir = tmp_path / "sweep"
    TrialTable(sweep_dir).add(Trial("earlier", M.FINISHED, {}, "hash", {"lr": 0.5}, exit_code=0, best_val_acc=0.5))
    definition = tiny_definition(weights={"value": str(tmp_path / "missing.pt")}, lr={"values": [0.001, 0.01, 0.1]}, epochs={"value": 1})
    with pytest.raises(UserError, match="failed on a setup problem"):
        run_local_sweep(write_yaml(tmp_path / "s.yaml", definition), count=6, sweep_dir=sweep_dir, fixed=fixed_args)
    rows = table_rows(sweep_dir)
    assert [(r["state"], r["exit_code"]) for r in rows[1:]] == [(M.FAILED, 2)] * 3  # the fourth point never started


def test_only_new_setup_failures_in_a_row_stop_a_sweep_that_has_trained(tmp_path):
    from types import SimpleNamespace

    sweep = LocalSweep(load_definition(write_yaml(tmp_path / "s.yaml", tiny_definition())), tmp_path / "sweep", {}, workers=2)
    trial = lambda run_id, state, code: sweep.table.add(Trial(run_id, state, {}, f"hash-{run_id}", {"lr": len(sweep.table)}, exit_code=code))
    failed = lambda run_id: trial(run_id, M.FAILED, 2)

    sweep._judge_setup(failed("first"))  # nothing trained yet: the setup is the sweep's
    assert sweep.setup_failure.run_id == "first"
    sweep.setup_failure, sweep.setup_streak = None, 0
    sweep.running["other"] = SimpleNamespace(is_training=lambda: True)  # a parallel trial past its first epoch
    sweep._judge_setup(failed("second"))
    assert sweep.setup_failure is None
    del sweep.running["other"]
    sweep._judge_setup(trial("trained", M.FINISHED, 0))  # ends the streak too

    sweep.retries = {"r1", "r2", "r3"}
    for run_id in ("r1", "r2", "r3", "n1", "n2"):  # retries failing again do not count
        sweep._judge_setup(failed(run_id))
    sweep._judge_setup(trial("ok", M.FINISHED, 0))  # a trial that trained ends the streak
    for run_id in ("n3", "n4"):
        sweep._judge_setup(failed(run_id))
    assert sweep.setup_failure is None
    sweep._judge_setup(failed("n5"))  # the third new one in a row
    assert sweep.setup_failure.run_id == "n5"


def local_sweep(tmp_path, fixed=None, **parameters) -> LocalSweep:
    """A driver on a tiny definition, its table to be written by hand (nothing trains)."""
    definition = load_definition(write_yaml(tmp_path / "s.yaml", tiny_definition(**parameters)))
    return LocalSweep(definition, tmp_path / "sweep", fixed or {}, workers=1)


def write_history(folder: Path, accuracies: list[float]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{M.EPOCH: epoch, M.VAL_ACC: acc} for epoch, acc in enumerate(accuracies, start=1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_the_sweep_summary_names_the_best_successful_trial_never_a_failed_one(tmp_path):
    # A trial that diverged (or ran out of memory) after a good epoch keeps that best_val_acc in the table.
    sweep = local_sweep(tmp_path)
    for run_id, state, best in (("diverged", M.DIVERGED, 0.9), ("oom", M.OOM, 0.8), ("finished", M.FINISHED, 0.5),
                                ("stopped", M.EARLY_STOPPED, 0.6), ("crashed", M.FAILED, 0.95)):
        sweep.table.add(Trial(run_id, state, {}, f"hash-{run_id}", {"lr": len(sweep.table)}, exit_code=0, best_val_acc=best))
    summary = sweep.run(count=0)
    assert summary["best_run_id"] == "stopped" and summary[M.BEST_VAL_ACC] == 0.6


def test_a_diverged_or_out_of_memory_trial_is_recorded_as_such_a_failure_for_the_engine_and_the_sweep_goes_on(tmp_path):
    from types import SimpleNamespace

    from sweeper.table import failed_on_setup
    from sweeper.trial import outcome

    for state in (M.DIVERGED, M.OOM):
        folder = tmp_path / state
        folder.mkdir()
        (folder / "summary.json").write_text(json.dumps({M.STATE: state, M.REASON: "lower lr", M.EXIT_CODE: 0, M.BEST_VAL_ACC: 0.9}))
        ended = outcome(SimpleNamespace(process=SimpleNamespace(returncode=0), signals_sent=set(), folder=folder), False)
        trial = Trial(state, ended.state, {}, "h", {"lr": 0.1}, reason=ended.reason, exit_code=ended.exit_code, best_val_acc=ended.best_val_acc)
        assert (trial.state, trial.exit_code) == (state, 0) and not failed_on_setup(trial)  # not a setup failure: no stop
        assert engine.engine_state(trial) == sweeps.RunState.failed  # the worst result, as W&B's failed run (exit 3 there)


def test_a_recorded_best_of_minus_one_means_no_best(tmp_path):
    """The trainer's -1 sentinel (no epoch validated) is read as no best, never ranked as an accuracy."""
    sweep = local_sweep(tmp_path)
    trial = sweep.table.add(Trial("ended", M.RUNNING, {}, "hash", {"lr": 0.01}))  # ended while the driver was away
    folder = sweep.table.run_folder(trial)
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({M.STATE: M.FINISHED, M.BEST_VAL_ACC: -1.0, "exit_code": 0}))
    summary = sweep.run(count=0)
    assert summary["resumed"] == 0 and summary["best_run_id"] is None and summary[M.BEST_VAL_ACC] is None
    [row] = table_rows(tmp_path / "sweep")
    assert row["state"] == M.FINISHED and row["best_val_acc"] is None


def test_a_duplicate_reports_its_originals_result_to_the_search_but_not_to_hyperband(tmp_path):
    sweep = local_sweep(tmp_path)
    original = sweep.table.add(Trial("original", M.FINISHED, {}, "hash", {"k_layers": 1}, exit_code=0, best_val_acc=0.7))
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


def test_a_relaunched_trial_takes_this_calls_paths_and_its_own_training_arguments(tmp_path, monkeypatch):
    # The data moved between calls: the relaunch must read it from the corrected --data_dir, while what is
    # trained (here --epochs, pinned for the folder) stays as the trial was started.
    import sweeper.local

    moved = {"data_dir": str(tmp_path / "new_data"), "cache_dir": str(tmp_path / "new_cache"), "wandb_mode": "disabled", "epochs": "2"}
    sweep = local_sweep(tmp_path, fixed=moved)
    sweep.table.add(Trial("preempted", M.PREEMPTED, {"lr": 0.01}, "hash", {"lr": 0.01, "activation": "gelu"}, exit_code=143,
                          fixed={"data_dir": str(tmp_path / "old_data"), "cache_dir": str(tmp_path / "old_cache"),
                                 "wandb_mode": "offline", "epochs": "02"}))
    commands = []

    def no_launch(run_id, folder, command, gpu):
        commands.append(command)
        raise OSError("not launched in this test")

    monkeypatch.setattr(sweeper.local, "launch", no_launch)
    assert sweep.run(count=0)["resumed"] == 1
    [command] = commands
    arguments = [a for a in command if a.startswith("--")]
    for expected in (f"--data_dir={tmp_path / 'new_data'}", f"--cache_dir={tmp_path / 'new_cache'}", "--wandb_mode=disabled",
                     "--epochs=02", "--lr=0.01", "--activation=gelu", "--run_id=preempted"):
        assert expected in arguments
    assert not [a for a in arguments if "old_" in a or a == "--wandb_mode=offline"]


def test_a_trial_sigkilled_from_outside_is_recorded_with_the_cause_and_resumed_by_the_next_call(tmp_path, monkeypatch):
    import signal
    from types import SimpleNamespace

    import sweeper.local
    from sweeper.trial import outcome

    folder = tmp_path / "t-005"
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps({M.STATE: M.RUNNING}))  # a SIGKILLed trainer writes nothing
    ended = outcome(SimpleNamespace(process=SimpleNamespace(returncode=-signal.SIGKILL), signals_sent=set(), folder=folder), False)
    assert ended.state == M.FAILED and "out of memory" in ended.reason and "resumes it" in ended.reason

    sweep = local_sweep(tmp_path)
    sweep.table.add(Trial("killed", M.FAILED, {}, "h1", {"lr": 0.01}, exit_code=-signal.SIGKILL, reason=ended.reason))
    sweep.table.add(Trial("crashed", M.FAILED, {}, "h2", {"lr": 0.02}, exit_code=1, reason="a bug"))  # its values' fault
    sweep.table.add(Trial("segfault", M.FAILED, {}, "h3", {"lr": 0.03}, exit_code=-signal.SIGSEGV))  # a crash: not resumed
    started = []

    def no_launch(run_id, *args):
        started.append(run_id)
        raise OSError("not launched in this test")

    monkeypatch.setattr(sweeper.local, "launch", no_launch)
    assert sweep.run(count=0)["resumed"] == 1 and started == ["killed"]


def test_a_second_driver_on_the_same_sweep_folder_is_refused(tmp_path, fixed_args):
    import fcntl

    sweep, sweep_dir = write_yaml(tmp_path / "s.yaml", tiny_definition()), tmp_path / "sweep"
    sweep_dir.mkdir()
    with open(sweep_dir / ".lock", "w") as held:  # the first driver, still running
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(UserError) as refused:
            run_local_sweep(sweep, count=0, sweep_dir=sweep_dir, fixed=fixed_args)
    assert f"another sweep driver is running on {sweep_dir.resolve()}" in str(refused.value) and "\n" not in str(refused.value)
    assert not (sweep_dir / "table.jsonl").exists()  # the refused driver touched nothing
    assert run_local_sweep(sweep, count=0, sweep_dir=sweep_dir, fixed=fixed_args) is not None  # once the first one has gone


def test_a_relaunched_trial_whose_checkpoint_no_longer_fits_trains_afresh(tmp_path, fixed_args):
    # A preempted trial whose last.pt is damaged (or of code that built the model otherwise) must not fail on
    # every call: it is set aside and the trial, whose config still has to be trained, starts over.
    definition = tiny_definition(activation={"value": "relu"}, lr={"value": 0.01}, epochs={"value": 1})
    sweep, sweep_dir = write_yaml(tmp_path / "s.yaml", definition), tmp_path / "sweep"
    run_local_sweep(sweep, count=1, sweep_dir=sweep_dir, fixed=fixed_args)
    table = TrialTable(sweep_dir)
    [trial] = table.trials
    trial.state = M.PREEMPTED
    table.save()
    folder = table.run_folder(trial)
    summary = json.loads((folder / "summary.json").read_text())
    (folder / "summary.json").write_text(json.dumps({**summary, M.STATE: M.PREEMPTED}))
    (folder / "last.pt").write_bytes(b"not a checkpoint")
    again = run_local_sweep(sweep, count=1, sweep_dir=sweep_dir, fixed=fixed_args)
    [row] = table_rows(sweep_dir)
    assert again["resumed"] == 1 and row["state"] == M.FINISHED and row["exit_code"] == 0
    assert "unreadable" in summary_of(sweep_dir, row["run_id"])["resume_refused"]
    assert (folder / "last.refused.pt").read_bytes() == b"not a checkpoint"


def test_a_retry_interrupted_while_it_starts_is_not_taken_for_its_previous_failure(tmp_path, monkeypatch):
    # A setup failure retried by the next call, then Ctrl-C while the retry still imports torch: its old
    # summary (failed, exit 2) must not stand for this launch, or the trial is never retried again.
    import sweeper.local

    sweep = local_sweep(tmp_path)
    bad = sweep.table.add(Trial("bad", M.FAILED, {"lr": 0.01}, "hash-bad", {"lr": 0.01}, exit_code=2, reason="weights file x.pt not found"))
    folder = sweep.table.run_folder(bad)
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({M.STATE: M.FAILED, M.REASON: bad.reason, "exit_code": 2}))
    monkeypatch.setattr(sweeper.local, "trial_command", lambda *args: [sys.executable, "-c", "import time; time.sleep(60)"])
    sweep._start(bad, "resume")
    sweep._on_interrupt(signal.SIGINT)
    sweep.running["bad"].process.wait(timeout=30)
    sweep._collect()
    assert sweep.table.get("bad").state == M.PREEMPTED  # the next call relaunches it


def test_the_drivers_first_signal_stops_the_trials_and_only_a_second_ctrl_c_aborts():
    from sweeper.interrupt import DriverInterrupt

    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for first in (signal.SIGTERM, signal.SIGINT):
        stops = []
        with DriverInterrupt(stops.append) as interrupt:
            assert not interrupt
            signal.raise_signal(first)  # Kaggle's SIGTERM, or a first Ctrl-C: the trials checkpoint and stop
            assert interrupt and interrupt.signum == first and stops == [first]
            try:
                signal.raise_signal(signal.SIGTERM)  # the host repeating itself: neither an abort nor a second stop
            except KeyboardInterrupt:
                pytest.fail("a second SIGTERM aborted the driver; only a second Ctrl-C may")
            assert stops == [first]
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGINT)  # the second Ctrl-C: stop at once
            assert stops == [first]
        assert {signum: signal.getsignal(signum) for signum in before} == before  # pytest's own handlers back


def test_fixed_arguments_that_change_what_is_trained_are_pinned(tmp_path, fixed_args):
    sweep, sweep_dir = write_yaml(tmp_path / "s.yaml", tiny_definition(activation={"value": "relu"})), tmp_path / "sweep"
    # A folder binds with its first trial; this one's table predates fixed.yaml, so the trial's arguments pin it.
    TrialTable(sweep_dir).add(Trial("earlier", M.FINISHED, {}, "hash", {"lr": 0.01}, exit_code=0, best_val_acc=0.5,
                                    fixed={**fixed_args, "epochs": "2"}))
    for other in ({**fixed_args, "epochs": "1"}, fixed_args):
        with pytest.raises(UserError, match="was started with --epochs=2 .*table.jsonl"):
            run_local_sweep(sweep, count=0, sweep_dir=sweep_dir, fixed=other)
    assert not (sweep_dir / "fixed.yaml").exists()
    run_local_sweep(sweep, count=0, sweep_dir=sweep_dir, fixed={**fixed_args, "epochs": "2"})
    assert yaml.safe_load((sweep_dir / "fixed.yaml").read_text()) == {"epochs": 2}
    with pytest.raises(UserError, match="was started with --epochs=2 .*fixed.yaml"):
        run_local_sweep(sweep, count=0, sweep_dir=sweep_dir, fixed=fixed_args)
    moved = {**fixed_args, "epochs": "02", "cache_dir": str(tmp_path / "elsewhere")}  # another machine: same sweep
    assert run_local_sweep(sweep, count=0, sweep_dir=sweep_dir, fixed=moved) is not None


def test_a_folder_without_trials_is_bound_to_nothing(tmp_path, fixed_args):
    # A first call that failed before any trial (here: a wrong --data_dir) must not bind the folder to its
    # definition or fixed arguments: the corrected call may change both.
    sweep_dir = tmp_path / "sweep"
    first = write_yaml(tmp_path / "first.yaml", tiny_definition(activation={"value": "relu"}))
    with pytest.raises(UserError):
        run_local_sweep(first, count=1, sweep_dir=sweep_dir, fixed={**fixed_args, "epochs": "1", "data_dir": str(tmp_path / "nope"), "download": "false"})
    second = write_yaml(tmp_path / "second.yaml", tiny_definition(activation={"value": "gelu"}))
    assert run_local_sweep(second, count=0, sweep_dir=sweep_dir, fixed={**fixed_args, "epochs": "2"}) is not None
    assert yaml.safe_load((sweep_dir / "fixed.yaml").read_text()) == {"epochs": 2}
    assert yaml.safe_load((sweep_dir / "sweep.yaml").read_text())["parameters"]["activation"] == {"value": "gelu"}


def test_a_folder_whose_trials_all_failed_on_setup_takes_the_corrected_arguments(tmp_path, fixed_args, capsys):
    # "Fix it and run again" must be possible when the fix is a fixed argument that changes what is trained.
    definition = tiny_definition(activation={"value": "relu"}, lr={"value": 0.01}, epochs={"value": 1})
    sweep, sweep_dir, typo = write_yaml(tmp_path / "s.yaml", definition), tmp_path / "sweep", str(tmp_path / "typo.pt")
    with pytest.raises(UserError, match="failed on a setup problem"):
        run_local_sweep(sweep, count=1, sweep_dir=sweep_dir, fixed={**fixed_args, "weights": typo})
    summary = run_local_sweep(sweep, count=1, sweep_dir=sweep_dir, fixed={**fixed_args, "weights": "none"})
    [row] = table_rows(sweep_dir)
    assert row["state"] == M.FINISHED and row["config"]["weights"] == "none" and summary["new"] == 1
    assert "all failed before training" in capsys.readouterr().out
    assert sorted(p.name for p in (sweep_dir / "runs").iterdir()) == [row["run_id"]]  # reports read runs/
    assert len(list((sweep_dir / "dropped").iterdir())) == 1
    with pytest.raises(UserError, match="was started with --weights=none"):  # a trained trial binds the folder
        run_local_sweep(sweep, count=1, sweep_dir=sweep_dir, fixed={**fixed_args, "weights": typo})


def write_earlier_trials(table: TrialTable, values: tuple, epochs: int = 3) -> None:
    """Finished trials (written here, not trained) that reached val_acc 1.0 in every epoch.

    Hyperband compares a trial at its furthest band with the trials that reached that band too: the earlier
    trials' histories must be as long as the trial could get before the driver looks.
    """
    for index, lr in enumerate(values):
        trial = table.add(Trial(f"earlier-{index}", M.FINISHED, {}, f"hash-{index}", {"lr": lr}, exit_code=0, best_val_acc=1.0))
        write_history(table.run_folder(trial), [1.0] * epochs)


def hyperband_definition(**parameters) -> dict:
    definition = tiny_definition(lr={"values": [1e-7, 1e-6, 1e-5]}, activation={"value": "relu"}, **parameters)
    definition["early_terminate"] = {"type": "hyperband", "min_iter": 1, "eta": 2}
    return definition


# Stands in for a trial: stops like the trainer does on SIGUSR1, without the seconds of importing torch.
STAND_IN_TRIAL = """
import json, pathlib, signal, sys, time
folder = pathlib.Path(sys.argv[1])
def stop(*_):
    (folder / "summary.json").write_text(json.dumps({"state": "early_stopped", "best_val_acc": 0.3, "exit_code": 0}))
    sys.exit(0)
signal.signal(signal.SIGUSR1, stop)
(folder / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val_acc": 0.3}) + "\\n")  # trails 1.0
(folder / "ready").touch()
time.sleep(60)
"""


def test_the_driver_stops_the_trial_hyperband_names_once(tmp_path):
    sweep = LocalSweep(load_definition(write_yaml(tmp_path / "hb.yaml", hyperband_definition())), tmp_path / "sweep", {}, workers=1)
    write_earlier_trials(sweep.table, (1e-6, 1e-5))
    trailing = sweep.table.add(Trial("trailing", M.RUNNING, {"epochs": 10}, "hash-t", {"lr": 1e-7}))
    folder = sweep.table.run_folder(trailing)
    folder.mkdir(parents=True)
    launched = launch("trailing", folder, [sys.executable, "-c", STAND_IN_TRIAL, str(folder)], None)
    sweep.running["trailing"], sweep.tags["trailing"] = launched, "1/1"
    deadline = time.monotonic() + 30
    while not (folder / "ready").exists() and time.monotonic() < deadline:
        time.sleep(0.02)

    sweep._early_terminate()
    sweep._early_terminate()  # asked again before the trial has gone: no second signal
    launched.process.wait(timeout=30)
    sweep._collect()
    assert launched.signals_sent == {signal.SIGUSR1}
    assert sweep.table.get("trailing").state == M.EARLY_STOPPED and not sweep.running


@pytest.mark.slow
def test_hyperband_stops_a_trailing_trial_end_to_end(tmp_path, fixed_args):
    # After its first epoch a trial at lr=1e-7 trails two earlier trials at val_acc 1.0.
    sweep_dir = tmp_path / "sweep"
    write_earlier_trials(TrialTable(sweep_dir), (1e-6, 1e-5), epochs=200)
    definition = hyperband_definition(epochs={"value": 200}, patience={"value": 0})
    summary = run_local_sweep(write_yaml(tmp_path / "hb.yaml", definition), count=3, sweep_dir=sweep_dir, fixed=fixed_args)
    stopped = table_rows(sweep_dir)[-1]
    assert summary["new"] == 1 and stopped["suggested"]["lr"] == 1e-7
    assert stopped["state"] == M.EARLY_STOPPED, stopped
    assert summary_of(sweep_dir, stopped["run_id"])[M.EPOCHS_COMPLETED] < 200


@pytest.mark.slow
def test_a_trial_killed_by_the_host_is_resumed_by_the_next_call(tmp_path, fixed_args, capsys, monkeypatch):
    # The out-of-memory killer SIGKILLs a trial (not the driver): nothing is wrong with its values, so it is not
    # another failed config; the driver says why and the same command resumes it from its checkpoint.
    import sweeper.local

    definition = tiny_definition(epochs={"value": 12}, patience={"value": 0}, activation={"value": "relu"})
    sweep, sweep_dir = write_yaml(tmp_path / "killed.yaml", definition), tmp_path / "sweep"
    launched = []
    monkeypatch.setattr(sweeper.local, "launch", lambda *args: launched.append(launch(*args)) or launched[-1])

    def kill_after_first_checkpoint():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (launched and list(sweep_dir.glob("runs/*/last.pt"))):
            time.sleep(0.05)
        launched[0].process.send_signal(signal.SIGKILL)  # a no-op if it has already ended, never another process

    watcher = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    watcher.start()
    assert run_local_sweep(sweep, count=1, sweep_dir=sweep_dir, fixed=fixed_args)["new"] == 1
    watcher.join()
    [killed] = table_rows(sweep_dir)
    assert killed["state"] == M.FAILED and killed["exit_code"] == -signal.SIGKILL
    assert killed["reason"].startswith("killed by SIGKILL, most often the host running out of memory")
    assert f"were killed by SIGKILL, most often the host running out of memory ({killed['run_id']}); run the same command again" \
        in capsys.readouterr().out

    monkeypatch.setattr(sweeper.local, "launch", launch)
    summary = run_local_sweep(sweep, count=1, sweep_dir=sweep_dir, fixed=fixed_args)
    [resumed] = table_rows(sweep_dir)
    assert summary["resumed"] == 1 and summary["new"] == 0 and resumed["state"] == M.FINISHED
    assert summary_of(sweep_dir, killed["run_id"]).get("resumed_from_epoch", 0) >= 1
    assert "killed by SIGKILL" not in capsys.readouterr().out


def test_an_interrupted_sweep_resumes_without_repeating_anything(tmp_path, fixed_args, capsys):
    epochs = 12
    definition = tiny_definition(epochs={"value": epochs}, patience={"value": 0}, activation={"value": "relu"})
    sweep, sweep_dir = write_yaml(tmp_path / "resume.yaml", definition), tmp_path / "sweep"

    def interrupt_after_first_epoch():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if any(p.read_text().strip() for p in sweep_dir.glob("runs/*/metrics.jsonl")):
                os.kill(os.getpid(), signal.SIGTERM)  # what Kaggle/Colab send the driver when a session ends
                return
            time.sleep(0.05)

    # A stray late SIGTERM must not end pytest itself; the driver installs its own handler while it runs.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        watcher = threading.Thread(target=interrupt_after_first_epoch, daemon=True)
        watcher.start()
        assert run_local_sweep(sweep, count=2, sweep_dir=sweep_dir, fixed=fixed_args) is None
        watcher.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
    [interrupted] = table_rows(sweep_dir)
    assert interrupted["state"] == M.PREEMPTED and interrupted["exit_code"] == 128 + signal.SIGTERM
    assert interrupted["reason"] == "interrupted; the same sweep command resumes it from its checkpoint"
    folder = sweep_dir / "runs" / interrupted["run_id"]
    assert (folder / "last.pt").exists()

    capsys.readouterr()
    summary = run_local_sweep(sweep, count=2, workers=2, sweep_dir=sweep_dir, fixed=fixed_args)  # the same command
    resumed, new = table_rows(sweep_dir)
    assert summary["resumed"] == 1 and summary["new"] == 1
    assert resumed["run_id"] == interrupted["run_id"] and resumed["state"] == new["state"] == M.FINISHED
    assert resumed["config_hash"] != new["config_hash"]
    history = [json.loads(line)[M.EPOCH] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert history == list(range(1, epochs + 1))  # each epoch once: resumed, not restarted
    log = (folder / "output.log").read_text()
    assert log.count(f"epoch 1/{epochs} ") == 1 and "resuming run" in log
    # Relaunched first, then the new suggestion (which the engine picked knowing the first one runs).
    lines = capsys.readouterr().out.splitlines()
    starts = [line.split()[:3] for line in lines if " resuming" in line or " started" in line]
    assert starts == [["[resume]", resumed["run_id"], "resuming"], ["[2/2]", new["run_id"], "started"]]
    again = run_local_sweep(sweep, count=2, sweep_dir=sweep_dir, fixed=fixed_args)  # a third time: nothing left to do
    assert again["new"] == again["resumed"] == 0 and len(table_rows(sweep_dir)) == 2


# --- what `wandb agent` runs -------------------------------------------------------------------------

def expand_command(command: list[str], macros: dict[str, list[str]]) -> list[str]:
    """The agent's macro expansion (wandb/wandb_agent.py): ${name} becomes the list macros[name]."""
    expanded = []
    for part in command:
        expanded += macros.get(part[2:-1]) or [] if part.startswith("${") and part.endswith("}") else [part]
    return expanded


def test_the_command_wandb_agent_runs_works_unchanged(tmp_path, fixed_args):
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    definition = yaml.safe_load((ROOT / "sweeps" / "tiny.yaml").read_text())
    suggestion = sweeps.next_run(definition, [], validate=True)
    macros = create_sweep_command_args({"args": suggestion.config})  # the agent's own `--key=value` formatting
    macros.update(env=["/usr/bin/env"], interpreter=[sys.executable], program=[definition["program"]])
    command = expand_command(definition["command"], macros)
    assert command[:3] == ["/usr/bin/env", sys.executable, "agent.py"]
    assert "--model=scratch_cnn" in command and "--batch_norm=true" in command

    # Machine-specific settings come from the environment under `wandb agent`, which also names the run.
    env = {**os.environ, "FINETUNE_DATA_DIR": fixed_args["data_dir"], "FINETUNE_CACHE_DIR": fixed_args["cache_dir"],
           "FINETUNE_OUTPUT_DIR": str(tmp_path / "runs"), "WANDB_MODE": "disabled", "WANDB_RUN_ID": "agent-run-1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    folder = tmp_path / "runs" / "agent-run-1"
    assert json.loads((folder / "summary.json").read_text())[M.STATE] == M.FINISHED
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["lr"] == suggestion.config["lr"]["value"] and config["batch_norm"] is True


def test_definitions_the_engine_would_misread_are_refused():
    base = {**tiny_definition(), "method": "bayes"}
    no_goal = {**base, "metric": {"name": M.VAL_ACC}}
    assert any("goal" in p and "maximize" in p for p in definition_problems(no_goal))
    assert any("goal is 'minimize'" in p for p in definition_problems({**base, "metric": {"name": M.VAL_ACC, "goal": "minimize"}}))
    booleans = {**base, "parameters": {**base["parameters"], "batch_norm": {"values": [True, False]}}}
    assert any("'batch_norm'" in p and "string" in p for p in definition_problems(booleans))
    zero_later = {**base, "parameters": {**base["parameters"], "dropout": {"values": [0.2, 0.0]}}}
    assert any("'dropout'" in p and "put it first" in p for p in definition_problems(zero_later))
    zero_first = {**base, "parameters": {**base["parameters"], "dropout": {"values": [0.0, 0.2]}}}
    assert definition_problems(zero_first) == []
    constant = {**base, "parameters": {**base["parameters"], "download": {"value": False}}}
    assert definition_problems(constant) == []  # never searched: nothing to misread
    assert definition_problems({**booleans, "method": "grid"}) == []  # only bayes models past values


@pytest.mark.parametrize("argv, code, out, err", [
    (["sweep", "--help"], 0, "--count N      the sweep's size", ""),
    (["report", "-h"], 0, "usage: python agent.py report SOURCE", ""),
    (["test", "--help"], 0, "usage: python agent.py test RUN_FOLDER", ""),
    (["sweep", "sweeps/tiny.yaml", "--cuont=3"], 2, "", "unknown option --cuont (did you mean 'count'?)"),
    (["sweep", "sweeps/tiny.yaml"], 2, "", "--count N is required"),  # a default would silently extend a sweep
    (["sweep", "sweeps/tiny.yaml", "--count", "abc"], 2, "", "--count=abc must be an integer\n"),
    (["sweep", "sweeps/tiny.yaml", "--count"], 2, "", "--count needs a value"),
    (["sweep", "sweeps/tiny.yaml", "--count=1", "--dropuot=0.1"], 2, "", "'dropuot' (did you mean 'dropout'?)"),  # a run parameter's typo
    (["check", "--help"], 0, "usage: python agent.py check SWEEP.yaml", ""),
    (["sweeep", "sweeps/tiny.yaml"], 2, "", "unknown command 'sweeep' (did you mean 'sweep'?); commands: run, sweep, check"),
    (["check"], 2, "", "usage: python agent.py check SWEEP.yaml"),
    (["check", "--model=resnet18", "sweeps/freeze.yaml"], 2, "", "usage: python agent.py check SWEEP.yaml"),  # YAML first
    (["check", "sweeps/freeze.yaml"], 0, "is fine: method bayes, metric val_acc (maximize), searching 6 parameter(s)", ""),
    (["check", "sweeps/freeze.yaml", "--model=resnet18"], 0, "searching 5 parameter(s) (strategy, k_layers, lr, augment, input_size)", ""),
    (["check", "sweeps/freeze.yaml", "--model=vgg16", "--k_layers=9"], 2, "", "k_layers"),
    (["check", "sweeps/nope.yaml"], 2, "", "sweep file sweeps/nope.yaml not found"),
])
def test_the_sub_commands_answer_help_and_name_their_own_options(argv, code, out, err, capsys):
    import agent

    assert agent.main(argv) == code
    captured = capsys.readouterr()
    assert out in captured.out and err in captured.err and captured.err.count("\n") == (code != 0)


def test_check_names_every_mistake_of_a_yaml_headed_for_wandb_sweep(tmp_path, capsys):
    """`wandb sweep` accepts a YAML whose metric the trainer never logs; `agent.py check` says so before any trial."""
    import agent

    bad = write_yaml(tmp_path / "mine.yaml", {**tiny_definition(k_layer={"values": [1, 2]}),
                                             "metric": {"name": "val_accuracy", "goal": "maximize"}})
    assert agent.main(["check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "'k_layer' is not a run parameter (did you mean 'k_layers'?)" in err and "metric name is 'val_accuracy'" in err
    assert err.count("\n") == 1


def test_trial_lines_show_values_as_a_person_reads_them():
    from sweeper import console

    trial = Trial("t-001", M.FINISHED, {"lr": 0.00012345678901234567, "activation": "gelu", "batch_norm": True}, "h", {})
    line = console.trial_line("1/4", trial, ["lr", "activation", "batch_norm"])
    assert "lr=0.0001235 activation=gelu batch_norm=true" in line
    assert "0.0001235" in console.final_table([trial], ["lr"])


def test_the_sweep_command_without_the_sweep_engine_says_what_to_install(monkeypatch, capsys):
    import agent

    monkeypatch.setitem(sys.modules, "sweeps", None)  # `pip install wandb` without the [sweeps] extra
    for name in ("sweeper.local", "sweeper.engine"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert agent.main(["sweep", "sweeps/tiny.yaml", "--count=1"]) == 2
    err = capsys.readouterr().err
    assert "needs the 'sweeps' package: pip install \"wandb[sweeps]\"" in err and err.count("\n") == 1


def test_a_trial_still_trained_by_a_killed_sweeps_process_is_not_relaunched(tmp_path):
    from sweeper.trial import launch
    from trainer.record import RunRecord

    folder = tmp_path / "runs" / "t-001"
    summary = {M.STATE: M.RUNNING, M.EPOCHS_COMPLETED: 3}
    with RunRecord(folder).exclusive():  # the orphaned trial, training on
        RunRecord(folder).update_summary(**summary)
        with pytest.raises(UserError, match=rf"trial t-001 is still being trained by another process \(pid {os.getpid()}\).*stop it, then run the same sweep command again"):
            launch("t-001", folder, [sys.executable, "-c", "pass"], None)
    assert RunRecord.read_summary(folder) == summary  # its record untouched


def test_a_sweep_never_reads_the_test_folder(nature_dir, fixed_args, tmp_path, monkeypatch):
    """Pitfall 7 for sweeps: neither the driver (which prepares the dataset) nor its trials touch val/ of
    nature_12K. The driver is watched directly; the trials, other processes, by the scans they cache."""
    import PIL.Image

    real_open, opened = PIL.Image.open, []
    monkeypatch.setattr(PIL.Image, "open", lambda path, *a, **k: (opened.append(str(path)), real_open(path, *a, **k))[1])
    sweep = write_yaml(tmp_path / "one.yaml", tiny_definition())
    cache = tmp_path / "cache"
    summary = run_local_sweep(sweep, count=1, sweep_dir=tmp_path / "sweep", fixed={**fixed_args, "cache_dir": str(cache)})
    assert summary is not None and table_rows(tmp_path / "sweep")[0]["state"] == M.FINISHED
    test_folder = str(nature_dir / "inaturalist_12K" / "val")
    assert not [p for p in opened if p.startswith(test_folder)]
    scanned = [json.loads(p.read_text())["folder"] for p in cache.glob("scan-*.json")]
    assert scanned and not [f for f in scanned if f.startswith(test_folder)]


def test_false_booleans_reach_the_trial_as_false(tmp_path):
    """Pitfall 13 on the way to a trial: the engine's False is passed as a value the run parses back to False."""
    from sweeper.trial import trial_command
    from trainer.config import parse_cli, parse_run_config

    command = trial_command({"model": "scratch_cnn", "batch_norm": False, "feature_cache": True}, tmp_path, "t-001")
    assert "--batch_norm=false" in command and "--feature_cache=true" in command
    config = parse_run_config(parse_cli([a for a in command if a.startswith("--")]))
    assert config.batch_norm is False and config.feature_cache is True


def test_a_trial_killed_by_hyperbands_signal_keeps_its_best_epoch(tmp_path):
    """A trial that dies of the early-termination signal (too late to write its own summary) is early-stopped
    with the best of its logged epochs, not the last."""
    import signal
    from types import SimpleNamespace

    from sweeper.trial import outcome

    folder = tmp_path / "t-004"
    write_history(folder, [0.3, 0.5, 0.4])
    (folder / "summary.json").write_text(json.dumps({M.STATE: M.RUNNING}))
    trial = SimpleNamespace(process=SimpleNamespace(returncode=-signal.SIGUSR1), signals_sent=[signal.SIGUSR1], folder=folder)
    ended = outcome(trial, driver_interrupted=False)
    assert ended.state == M.EARLY_STOPPED and ended.best_val_acc == 0.5


def _add_an_image(train: Path) -> None:
    aves = train / "Aves"
    shutil.copy(sorted(aves.glob("*.jpg"))[0], aves / "added.jpg")


def _shrink_three(train: Path) -> None:
    for path in sorted(train.rglob("*.jpg"))[:3]:
        shrink_in_place(path)


@pytest.mark.parametrize("change, splits, data_hashes, warning", [
    (_add_an_image, 2, 2, "warning: the trials of this sweep trained on 2 different data splits"),
    # Resized copies keep every file name, so the split hash cannot see them; the files' sizes can.
    (_shrink_three, 1, 2, "warning: the trials of this sweep trained on images of the same names but different sizes"),
])
def test_a_sweep_whose_images_changed_between_calls_says_its_trials_do_not_compare(change, splits, data_hashes, warning,
                                                                                   nature_dir, fixed_args, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(nature_dir, data)
    sweep = write_yaml(tmp_path / "s.yaml", tiny_definition())
    fixed = {**fixed_args, "data_dir": str(data), "cache_dir": str(tmp_path / "cache")}
    run_local_sweep(sweep, count=1, sweep_dir=tmp_path / "sweep", fixed=fixed)
    assert "do not compare" not in capsys.readouterr().out
    change(data / "inaturalist_12K" / "train")
    run_local_sweep(sweep, count=2, sweep_dir=tmp_path / "sweep", fixed=fixed)
    out = capsys.readouterr().out
    summaries = [summary_of(tmp_path / "sweep", r["run_id"]) for r in table_rows(tmp_path / "sweep")]
    assert (len({s[M.SPLIT_HASH] for s in summaries}), len({s[M.DATA_HASH] for s in summaries})) == (splits, data_hashes)
    assert warning in out and "start a new sweep with --sweep_dir" in out
    assert ("different data splits" in out) == (splits == 2)


def test_a_sweep_over_the_splits_own_settings_is_no_changed_data(fixed_args, tmp_path, capsys):
    definition = tiny_definition(activation={"value": "relu"}, lr={"value": 1e-3}, subset_fraction={"values": [0.5, 1.0]})
    sweep = write_yaml(tmp_path / "subsets.yaml", definition)
    run_local_sweep(sweep, count=2, sweep_dir=tmp_path / "sweep", fixed={**fixed_args, "cache_dir": str(tmp_path / "cache")})
    rows = table_rows(tmp_path / "sweep")
    assert len({summary_of(tmp_path / "sweep", r["run_id"])[M.SPLIT_HASH] for r in rows}) == 2
    assert "different data splits" not in capsys.readouterr().out


def test_a_trial_that_trained_before_its_disk_filled_up_binds_the_folder_and_is_retried():
    from sweeper.table import binds_folder, failed_on_setup

    setup = Trial("t-001", M.FAILED, {}, "h", {}, exit_code=2)
    trained = Trial("t-002", M.FAILED, {}, "h", {}, exit_code=2, best_val_acc=0.4)
    assert failed_on_setup(setup) and not binds_folder(setup)
    assert failed_on_setup(trained) and binds_folder(trained)  # retried (resumed) once fixed, never dropped


def test_a_sweep_folder_that_cannot_be_created_is_refused_before_the_dataset_step(tmp_path, fixed_args, monkeypatch):
    import sweeper.local

    prepared = []
    monkeypatch.setattr(sweeper.local, "prepare_dataset", lambda *a: prepared.append(a))
    monkeypatch.setattr(sweeper.local.os, "access", lambda path, mode: False)  # as a read-only parent answers
    with pytest.raises(UserError, match=r"sweep folder .*new cannot be created: .* is not writable; pass --sweep_dir"):
        run_local_sweep(ROOT / "sweeps" / "tiny.yaml", count=1, sweep_dir=tmp_path / "new", fixed=fixed_args)
    assert not prepared and not (tmp_path / "new").exists()


# --- the definition, the engine seam, the table, the console and the command line: details a user relies on ---

def test_a_fixed_argument_takes_its_parameter_out_of_the_search(tmp_path):
    """--activation=gelu on a sweep that lists activations: the engine searches lr only, so --count N trains N
    distinct configs instead of suggesting activations every trial overrides (duplicates after the first)."""
    from sweeper.definition import engine_config

    definition = load_definition(write_yaml(tmp_path / "s.yaml", tiny_definition()))
    config = engine_config(definition, {"activation": "gelu"})
    assert config["parameters"]["activation"] == {"value": "gelu"}
    assert config["parameters"]["lr"] == definition.parameters["lr"]
    assert definition.parameters["activation"] == {"values": ["relu", "gelu"]}  # the pinned definition is untouched
    suggestions, runs = [], []
    while (suggestion := engine.suggest(config, runs)) is not None:
        suggestions.append(suggestion)
        runs.append(engine.sweep_run(Trial(f"t-{len(runs)}", M.FINISHED, {}, None, suggestion, best_val_acc=0.5), []))
    assert [(s["activation"], s["lr"]) for s in suggestions] == [("gelu", 1e-3), ("gelu", 1e-2)]


def test_a_fixed_argument_overrides_the_values_its_parameter_lists(tmp_path):
    """k_layers: [2, 7] under resnet18 is refused, but not with --k_layers=2: no trial would use the 7."""
    from sweeper.definition import unrunnable_values

    parameters = {"model": {"value": "resnet18"}, "strategy": {"value": "last_k"}, "k_layers": {"values": [2, 7]}}
    assert "lists 7" in " ".join(unrunnable_values(parameters, {}))
    assert unrunnable_values(parameters, {"k_layers": "2"}) == []


def test_a_sweep_folder_takes_its_definition_back_with_other_comments_and_layout(tmp_path):
    """Pinned as parsed YAML: a comment or reformatting does not make another sweep; a changed value does."""
    from sweeper.definition import SWEEP_FILE, pin_definition

    sweep_dir, config = tmp_path / "sweep", tiny_definition()
    sweep_dir.mkdir()
    assert pin_definition(sweep_dir, load_definition(write_yaml(tmp_path / "a.yaml", config))) is False
    pinned = (sweep_dir / SWEEP_FILE).read_text()
    reformatted = tmp_path / "b.yaml"
    reformatted.write_text("# the same sweep, reformatted\n" + yaml.safe_dump(config, sort_keys=True, default_flow_style=True))
    assert pin_definition(sweep_dir, load_definition(reformatted)) is False
    assert (sweep_dir / SWEEP_FILE).read_text() == pinned
    changed = write_yaml(tmp_path / "c.yaml", tiny_definition(lr={"values": [1e-3, 1e-1]}))
    with pytest.raises(UserError, match="holds a different sweep"):
        pin_definition(sweep_dir, load_definition(changed))


def test_the_engines_suggestions_are_plain_python_values():
    """The engine samples numpy scalars; trials, the table and the command line get plain floats and ints."""
    from sweeper.trial import format_value
    from trainer.config import parse_value

    config = {**tiny_definition(), "method": "random"}
    config["parameters"]["lr"] = {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1}
    config["parameters"]["dropout"] = {"distribution": "q_uniform", "min": 0.0, "max": 0.5, "q": 0.1}
    suggestion = engine.suggest(config, [])
    assert type(suggestion["lr"]) is float and type(suggestion["dropout"]) is float and type(suggestion["epochs"]) is int
    assert parse_value("lr", format_value(suggestion["lr"])) == suggestion["lr"]  # the trial trains the suggested lr


def test_a_trial_without_a_validated_epoch_reports_no_accuracy_to_the_engine():
    """The trainer's -1 (no epoch validated) is no accuracy: bayes must not learn it as the config's result."""
    for best in (-1.0, None, float("nan")):
        run = engine.sweep_run(Trial("r", M.FINISHED, {}, None, {"lr": 0.1}, exit_code=0, best_val_acc=best), [])
        assert run.summary_metrics == {}


def test_the_table_reads_back_exactly_what_it_wrote_and_rows_of_other_versions(tmp_path):
    table = TrialTable(tmp_path)
    trials = [Trial("s-001-ab12", M.FINISHED, {"lr": 0.01, "k_layers": None}, "h1", {"lr": 0.01, "k_layers": 2}, reason=None,
                    exit_code=0, best_val_acc=0.625, fixed={"epochs": "2"}),
              Trial("s-002-cd34", DUPLICATE, {"lr": 0.01, "k_layers": None}, "h1", {"lr": 0.01, "k_layers": 1}, duplicate_of="s-001-ab12"),
              Trial("s-003-ef56", M.FAILED, {}, None, {"lr": "x"}, reason="invalid suggestion: lr='x'")]
    for trial in trials:
        table.add(trial)
    assert TrialTable(tmp_path).trials == trials
    # A row written by another version of the driver, with a field this one does not know, still reads.
    with (tmp_path / "table.jsonl").open("a") as handle:
        handle.write(json.dumps({**json.loads(json.dumps(trials[0].__dict__)), "run_id": "s-004-0000", "gpu": "0"}) + "\n")
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


def test_the_final_table_names_each_duplicates_original_and_each_failures_reason():
    from sweeper import console

    trials = [Trial("s-001", M.FINISHED, {"activation": "relu", "k_layers": None, "batch_norm": True}, "h1",
                    {"activation": "relu", "k_layers": 1, "batch_norm": "true"}, exit_code=0, best_val_acc=0.75),
              Trial("s-002", DUPLICATE, {"activation": "relu", "k_layers": None, "batch_norm": True}, "h1",
                    {"activation": "relu", "k_layers": 2, "batch_norm": "true"}, duplicate_of="s-001"),
              Trial("s-003", M.FAILED, {"activation": "gelu"}, "h3", {"activation": "gelu"}, exit_code=2,
                    reason="weights file missing.pt not found")]
    header, finished, duplicate, failed = console.final_table(trials, ["activation", "k_layers"]).splitlines()
    assert header.split() == ["run_id", "state", M.VAL_ACC, "activation", "k_layers", "note"]
    assert finished.split() == ["s-001", M.FINISHED, "0.7500", "relu", "none"]  # the value it trained with
    assert duplicate.split() == ["s-002", DUPLICATE, "-", "relu", "none", "=", "s-001"]
    assert failed.split()[:4] == ["s-003", M.FAILED, "-", "gelu"] and failed.endswith("weights file missing.pt not found")
    # Why the duplicate is one: only the value that was normalised away, not "true" read as True.
    assert console.normalised_away(trials[1]) == " (does not apply here: k_layers=2)"


def test_the_sweep_command_hands_its_options_and_fixed_arguments_to_the_driver(monkeypatch, tmp_path):
    import agent
    import sweeper.local

    calls, answer = [], {}
    monkeypatch.setattr(sweeper.local, "run_local_sweep", lambda path, **kwargs: calls.append((path, kwargs)) or answer.get("summary"))
    answer["summary"] = {"new": 3}
    assert agent.main(["sweep", "sweeps/tiny.yaml", "--epochs=1", "--count", "3", f"--sweep-dir={tmp_path}", "--lr", "0.1"]) == 0
    [(path, kwargs)] = calls
    assert path == Path("sweeps/tiny.yaml")
    assert kwargs == {"count": 3, "workers": 1, "sweep_dir": tmp_path, "fixed": {"epochs": "1", "lr": "0.1"}}
    answer["summary"] = None  # interrupted: the shell (and a notebook cell) must see that it did not finish
    assert agent.main(["sweep", "sweeps/tiny.yaml", "--count=3", "--workers=2"]) == 130
    assert calls[-1][1]["workers"] == 2 and calls[-1][1]["sweep_dir"] is None and calls[-1][1]["fixed"] == {}

