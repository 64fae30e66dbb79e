"""The offline sweep driver (`agent.py sweep`): --count trains that many distinct configs, duplicates are recorded
and not trained, a second call continues the sweep; the console and the final table; what binds a sweep folder
(its definition, the fixed arguments that change what is trained, one driver at a time); the data a sweep reads.

Trials are real `agent.py` subprocesses of a tiny CNN at 32 px on the tests' own dataset (an epoch takes a
fraction of a second); most of a trial's time is importing torch, so each test launches as few as it can.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from common.errors import UserError
from data_helpers import shrink_in_place
from sweep_helpers import ROOT, local_sweep, summary_of, table_rows, tiny_definition, write_yaml
from sweeper import run_local_sweep
from sweeper.definition import RECIPE, load_definition
from sweeper.local import LocalSweep
from sweeper.table import DUPLICATE, Trial, TrialTable
from trainer import metrics as M
from trainer.config import FIELDS, config_hash, parse_run_config


def test_the_sweep_console_names_the_files_its_trials_skip(tmp_path, fixed_args, capsys):
    from sweeper.local import prepare_dataset

    prepare_dataset(load_definition(write_yaml(tmp_path / "s.yaml", tiny_definition())),
                    {**fixed_args, "cache_dir": str(tmp_path / "c")})
    out = capsys.readouterr().out
    assert ("skipped 3 unreadable file(s)" in out and "broken_000.jpg" in out
            and "lists them in its skipped_files.txt" in out)
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
    trained = {
        row["suggested"][RECIPE]: yaml.safe_load((sweep_dir / "runs" / row["run_id"] / "config.yaml").read_text())
        for row in rows}
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


def test_a_new_sweep_folder_beside_a_store_with_this_sweeps_trials_says_it_starts_over(tmp_path, fixed_args, capsys):
    """A new machine, the --sweep_dir left behind: the store's checkpoints cannot be found without its table."""
    store = tmp_path / "drive"
    for name in ("tiny-001-ab12", "tiny-002-0f3c", "tinyx-001-ab12", "other-001-ab12"):
        (store / name).mkdir(parents=True)
    definition = write_yaml(tmp_path / "tiny.yaml", tiny_definition())
    run_local_sweep(definition, count=0, sweep_dir=tmp_path / "new",
                    fixed={**fixed_args, "checkpoint_store": str(store)})
    out = capsys.readouterr().out
    assert f"note: {store} holds checkpoints of 2 trial(s) of a sweep named tiny (tiny-001-ab12, tiny-002-0f3c)" in out
    assert "pass the --sweep_dir it used" in out
    run_local_sweep(definition, count=0, sweep_dir=tmp_path / "new",
                    fixed={**fixed_args, "checkpoint_store": str(store)})
    assert "holds checkpoints" not in capsys.readouterr().out  # said when the folder is new only
    in_yaml = write_yaml(tmp_path / "tiny.yaml", tiny_definition(checkpoint_store={"value": str(store)}))
    run_local_sweep(in_yaml, count=0, sweep_dir=tmp_path / "newer", fixed=fixed_args)
    assert "holds checkpoints of 2 trial(s)" in capsys.readouterr().out  # a store the YAML fixes, too


def test_a_sweep_without_its_dataset_refuses_to_start(tmp_path, fixed_args):
    """Not one failed trial per suggestion: the driver finds the data once, before the first trial."""
    sweep, sweep_dir = write_yaml(tmp_path / "s.yaml", tiny_definition()), tmp_path / "sweep"
    with pytest.raises(UserError) as caught:
        run_local_sweep(sweep, count=3, sweep_dir=sweep_dir,
                        fixed={**fixed_args, "data_dir": str(tmp_path / "empty"), "download": "false"})
    assert "no dataset found in" in str(caught.value) and "empty" in str(caught.value) and "\n" not in str(caught.value)
    assert not sweep_dir.exists()  # a first call that failed leaves no folder behind


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
        [epoch] = [i for i, line in enumerate(lines)
                   if line.startswith(f"{tags[run_id]} {run_id}  epoch 1/1  train_loss ")]
        assert re.search(r"val_acc \d\.\d{4}  \d+ img/s  \d+\.\ds$", lines[epoch])
        ended = lines.index(next(line for line in lines if line.startswith(f"{tags[run_id]} {run_id} finished")))
        assert epoch < ended and lines[ended + 1].startswith("sweep: ")
    assert len(set(tags.values())) == 3  # two at once: each line says whose it is
    progress = [line for line in lines if line.startswith("sweep: ")]
    assert [line.split(" trials done")[0] for line in progress] == ["sweep: 1/3", "sweep: 2/3", "sweep: 3/3"]
    assert re.fullmatch(r"sweep: 2/3 trials done, [01] running, \d+s elapsed, about \d+s left", progress[1])
    assert re.fullmatch(r"sweep: 3/3 trials done, 0 running, \d+s elapsed", progress[2])
    assert sum("warning: CPU: no GPU found" in line for line in lines) == 1  # every trial's, shown once


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


def test_the_sweep_summary_names_the_best_successful_trial_never_a_failed_one(tmp_path):
    # A trial that diverged (or ran out of memory) after a good epoch keeps that best_val_acc in the table.
    sweep = local_sweep(tmp_path)
    for run_id, state, best in (("diverged", M.DIVERGED, 0.9), ("oom", M.OOM, 0.8), ("finished", M.FINISHED, 0.5),
                                ("stopped", M.EARLY_STOPPED, 0.6), ("crashed", M.FAILED, 0.95)):
        sweep.table.add(
            Trial(run_id, state, {}, f"hash-{run_id}", {"lr": len(sweep.table)}, exit_code=0, best_val_acc=best))
    summary = sweep.run(count=0)
    assert summary["best_run_id"] == "stopped" and summary[M.BEST_VAL_ACC] == 0.6


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


def test_a_second_driver_on_the_same_sweep_folder_is_refused(tmp_path, fixed_args):
    import fcntl

    sweep, sweep_dir = write_yaml(tmp_path / "s.yaml", tiny_definition()), tmp_path / "sweep"
    sweep_dir.mkdir()
    with open(sweep_dir / ".lock", "w") as held:  # the first driver, still running
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(UserError) as refused:
            run_local_sweep(sweep, count=0, sweep_dir=sweep_dir, fixed=fixed_args)
    assert (f"another sweep driver is running on {sweep_dir.resolve()}" in str(refused.value)
            and "\n" not in str(refused.value))
    assert not (sweep_dir / "table.jsonl").exists()  # the refused driver touched nothing
    # once the first one has gone
    assert run_local_sweep(sweep, count=0, sweep_dir=sweep_dir, fixed=fixed_args) is not None


def test_fixed_arguments_that_change_what_is_trained_are_pinned(tmp_path, fixed_args):
    sweep, sweep_dir = (write_yaml(tmp_path / "s.yaml", tiny_definition(activation={"value": "relu"})),
                        tmp_path / "sweep")
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
        run_local_sweep(first, count=1, sweep_dir=sweep_dir,
                        fixed={**fixed_args, "epochs": "1", "data_dir": str(tmp_path / "nope"), "download": "false"})
    second = write_yaml(tmp_path / "second.yaml", tiny_definition(activation={"value": "gelu"}))
    assert run_local_sweep(second, count=0, sweep_dir=sweep_dir, fixed={**fixed_args, "epochs": "2"}) is not None
    assert yaml.safe_load((sweep_dir / "fixed.yaml").read_text()) == {"epochs": 2}
    assert yaml.safe_load((sweep_dir / "sweep.yaml").read_text())["parameters"]["activation"] == {"value": "gelu"}


def test_trial_lines_show_values_as_a_person_reads_them():
    from sweeper import console

    trial = Trial("t-001", M.FINISHED, {"lr": 0.00012345678901234567, "activation": "gelu", "batch_norm": True}, "h",
                  {})
    line = console.trial_line("1/4", trial, ["lr", "activation", "batch_norm"])
    assert "lr=0.0001235 activation=gelu batch_norm=true" in line
    assert "0.0001235" in console.final_table([trial], ["lr"])


def test_a_sweep_never_reads_the_test_folder(nature_dir, fixed_args, tmp_path, monkeypatch):
    """Pitfall 7 for sweeps: neither the driver (which prepares the dataset) nor its trials touch val/ of
    nature_12K. The driver is watched directly; the trials, other processes, by the scans they cache."""
    import PIL.Image

    real_open, opened = PIL.Image.open, []
    monkeypatch.setattr(PIL.Image, "open", lambda path,
                        *a, **k: (opened.append(str(path)), real_open(path, *a, **k))[1])
    sweep = write_yaml(tmp_path / "one.yaml", tiny_definition())
    cache = tmp_path / "cache"
    summary = run_local_sweep(sweep, count=1, sweep_dir=tmp_path / "sweep",
                              fixed={**fixed_args, "cache_dir": str(cache)})
    assert summary is not None and table_rows(tmp_path / "sweep")[0]["state"] == M.FINISHED
    test_folder = str(nature_dir / "inaturalist_12K" / "val")
    assert not [p for p in opened if p.startswith(test_folder)]
    scanned = [json.loads(p.read_text())["folder"] for p in cache.glob("scan-*.json")]
    assert scanned and not [f for f in scanned if f.startswith(test_folder)]


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
                                                                                   nature_dir, fixed_args, tmp_path,
                                                                                   capsys):
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
    assert (len({s[M.SPLIT_HASH] for s in summaries}),
            len({s[M.DATA_HASH] for s in summaries})) == (splits, data_hashes)
    assert warning in out and "start a new sweep with --sweep_dir" in out
    assert ("different data splits" in out) == (splits == 2)


def test_a_sweep_over_the_splits_own_settings_is_no_changed_data(fixed_args, tmp_path, capsys):
    definition = tiny_definition(activation={"value": "relu"}, lr={"value": 1e-3},
                                 subset_fraction={"values": [0.5, 1.0]})
    sweep = write_yaml(tmp_path / "subsets.yaml", definition)
    run_local_sweep(sweep, count=2, sweep_dir=tmp_path / "sweep",
                    fixed={**fixed_args, "cache_dir": str(tmp_path / "cache")})
    rows = table_rows(tmp_path / "sweep")
    assert len({summary_of(tmp_path / "sweep", r["run_id"])[M.SPLIT_HASH] for r in rows}) == 2
    assert "different data splits" not in capsys.readouterr().out


def test_a_sweep_folder_that_cannot_be_created_is_refused_before_the_dataset_step(tmp_path, fixed_args, monkeypatch):
    import sweeper.local

    prepared = []
    monkeypatch.setattr(sweeper.local, "prepare_dataset", lambda *a: prepared.append(a))
    monkeypatch.setattr(sweeper.local.os, "access", lambda path, mode: False)  # as a read-only parent answers
    with pytest.raises(UserError, match=r"sweep folder .*new cannot be created: .* is not writable; pass --sweep_dir"):
        run_local_sweep(ROOT / "sweeps" / "tiny.yaml", count=1, sweep_dir=tmp_path / "new", fixed=fixed_args)
    assert not prepared and not (tmp_path / "new").exists()


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
    assert (failed.split()[:4] == ["s-003", M.FAILED, "-", "gelu"]
            and failed.endswith("weights file missing.pt not found"))
    # Why the duplicate is one: only the value that was normalised away, not "true" read as True.
    assert console.normalised_away(trials[1]) == " (does not apply here: k_layers=2)"
