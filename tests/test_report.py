"""The report's numbers equal what the table of runs implies, from a local sweep folder and from W&B.

A synthetic sweep is written by hand so every expected number below can be checked with a pencil: a best
epoch that is not the last, a config repeated over three seeds, a failed, a diverged (with a tempting
accuracy) and an early-stopped run, a trial that died before creating its folder, and a skipped duplicate.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from scipy import stats as scipy_stats

from common.errors import UserError
from common import figures
from report.build import FIGURES, build_report, runs_csv
from report.markdown import ci_text, percent, points, render
from report.sources import load_table
from report.stats import difference_ci, mean_ci, pareto_front, summarise
from report.table import CODE_VERSION, failure_reason
from trainer import metrics

# run_id: (model, strategy, config overrides, val_acc per epoch, train_seconds, trainable params, state, reason)
RUNS = {
    "r01": ("resnet50", "head_only", {"lr": 1e-3}, [0.60, 0.72, 0.70], 100, 20_490, "finished", None),
    "r02": ("resnet50", "last_k", {"k_layers": 2, "lr": 3e-4}, [0.70, 0.81, 0.79], 300, 15_000_000, "finished", None),
    "r03": ("resnet50", "full", {"lr": 1e-4}, [0.65, 0.80, 0.78], 600, 23_528_522, "finished", None),
    "r04": ("efficientnet_b0", "last_k", {"k_layers": 1, "lr": 3e-4, "seed": 0}, [0.75, 0.83, 0.82], 250,
            6_000_000, "finished", None),
    "r05": ("efficientnet_b0", "last_k", {"k_layers": 1, "lr": 3e-4, "seed": 1}, [0.74, 0.79, 0.785], 260,
            6_000_000, "finished", None),
    "r06": ("efficientnet_b0", "last_k", {"k_layers": 1, "lr": 3e-4, "seed": 2}, [0.73, 0.80, 0.81], 255,
            6_000_000, "finished", None),
    "r07": ("resnet50", "norm_and_head", {"lr": 1e-3}, [0.66, 0.74, 0.73], 120, 73_000, "finished", None),
    "r08": ("resnet50", "head_only", {"lr": 1e-2}, [0.62, 0.69, 0.66], 95, 20_490, "finished", None),
    "r09": ("scratch_cnn", None, {"lr": 1e-3, "dropout": 0.2}, [0.30, 0.45, 0.44], 400, 1_200_000, "finished", None),
    "r10": ("scratch_cnn", None, {"lr": 1e-3, "dropout": 0.3}, [0.35, 0.48, 0.47], 410, 1_200_000, "finished", None),
    "r11": ("resnet50", "full", {"lr": 1e-2}, [0.50], 200, 23_528_522, "failed",
            "RuntimeError: CUDA error: device-side assert triggered"),
    "r12": ("efficientnet_b0", "full", {"lr": 1e-1}, [0.95], 90, 5_300_000, "diverged", "train_loss is nan at epoch 2"),
    "r13": ("resnet50", "head_only", {"lr": 1e-1}, [0.50, 0.55], 60, 20_490, "early_stopped", None),
}
SUCCESSFUL = [r for r in RUNS if RUNS[r][6] in ("finished", "early_stopped")]
FINISHED = [r for r in RUNS if RUNS[r][6] == "finished"]
OOM_REASON = "CUDA out of memory. Tried to allocate 2.00 GiB"
WEIGHTS = {"resnet50": "IMAGENET1K_V2", "efficientnet_b0": "IMAGENET1K_V1", "scratch_cnn": None}
SCRATCH_KEYS = ("filters", "filter_organization", "kernel_size", "activation", "batch_norm", "dropout",
                "dense_units")


def make_config(run_id: str) -> dict:
    model, strategy, overrides, *_ = RUNS[run_id]
    scratch = model == "scratch_cnn"
    config = {
        "model": model, "weights": WEIGHTS[model], "strategy": strategy, "k_layers": None, "freeze_fraction": None,
        "lr": 1e-3, "backbone_lr_mult": None if scratch else 0.1, "augment": True, "epochs": 3, "batch_size": 32,
        "seed": 0, "optimizer": "adamw", "label_smoothing": 0.0, **{k: None for k in SCRATCH_KEYS},
        "data_dir": "/data/nature_12K", "output_dir": f"/tmp/out/{run_id}",
    }
    if scratch:
        config.update(filters=[32, 64, 128], filter_organization="double", kernel_size=3, activation="gelu",
                      batch_norm=True, dropout=0.2, dense_units=256)
    config.update(overrides)
    return config


def make_history(run_id: str) -> list[dict]:
    return epochs(RUNS[run_id][3], RUNS[run_id][4])


def epochs(val: list[float], seconds: float) -> list[dict]:
    """metrics.jsonl rows for a val_acc curve; train_acc and val_loss peak elsewhere, so a wrong key shows."""
    return [{metrics.EPOCH: epoch, metrics.TRAIN_LOSS: 1.0 / epoch, metrics.TRAIN_ACC: min(1.0, acc + 0.1),
             metrics.VAL_LOSS: 1.2 - acc, metrics.VAL_ACC: acc, metrics.LR: 1e-3,
             metrics.EPOCH_SECONDS: seconds / len(val), metrics.IMAGES_PER_SECOND: 500.0}
            for epoch, acc in enumerate(val, start=1)]


def make_summary(run_id: str) -> dict:
    model, _, _, val, seconds, trainable, state, reason = RUNS[run_id]
    best = max(val)
    return {
        metrics.STATE: state, metrics.BEST_VAL_ACC: best, metrics.BEST_EPOCH: val.index(best) + 1,
        metrics.TRAINABLE_PARAMS: trainable, metrics.TOTAL_PARAMS: max(trainable, 23_528_522),
        metrics.TRAIN_SECONDS: seconds, metrics.WEIGHTS_VERSION: WEIGHTS[model], metrics.SPLIT_HASH: "split-abc123",
        metrics.DEVICE: "cuda:0", metrics.EPOCHS_COMPLETED: len(val), metrics.REASON: reason,
        metrics.CACHE_SECONDS: 30.0 if run_id == "r01" else 0.5,
        "config_hash": f"hash-{run_id}", CODE_VERSION: "abc1234",
    }


def expected_best(run_id: str) -> float:
    return max(RUNS[run_id][3])


def add_run(runs: Path, run_id: str, like: str, val: list[float], summary: dict, **config) -> None:
    """A run folder beside the fixture's: `like`'s config with `config` changed, `val` as its val_acc curve."""
    folder = runs / run_id
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump({**make_config(like), **config,
                                                        "output_dir": f"/tmp/out/{run_id}"}))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in epochs(val, 100)))
    (folder / "summary.json").write_text(json.dumps(summary))


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    (root / "sweep.yaml").write_text(yaml.safe_dump({
        "name": "synthetic", "method": "random", "metric": {"name": metrics.VAL_ACC, "goal": "maximize"},
        "parameters": {"lr": {"values": [1e-4, 1e-3]}}}))
    for run_id in RUNS:
        folder = root / "runs" / run_id
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(yaml.safe_dump(make_config(run_id)))
        (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in make_history(run_id)))
        (folder / "summary.json").write_text(json.dumps(make_summary(run_id)))
    # The held-out test evaluation of the chosen run, drawn by the functions `agent.py test` calls.
    test_dir = root / "runs" / "r04" / "test"
    test_dir.mkdir()
    (test_dir / "test.json").write_text(json.dumps({"test_acc": 0.815, "per_class_acc": {"Aves": 0.83,
                                                    "Amphibia": 0.80}, "num_images": 2000, "checkpoint": "best.pt"}))
    figures.plot_confusion(np.array([[8, 2], [1, 9]]), ["Amphibia", "Aves"], test_dir / "confusion.png")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(6)]
    figures.plot_prediction_grid(images, ["Aves"] * 6, ["Aves", "Amphibia"] * 3, test_dir / "grid.png", rows=2, cols=3)
    # The sweep driver's table: a stale state for r01 (the folder wins), a trial with no folder, a duplicate.
    rows = [{"run_id": "r01", "state": "running", "config": make_config("r01"), "reason": None, "duplicate_of": None},
            {"run_id": "r14", "state": "oom", "config": {**make_config("r12"), "batch_size": 256},
             "reason": OOM_REASON, "duplicate_of": None},
            {"run_id": "r15", "state": "duplicate", "config": make_config("r04"), "reason": None,
             "duplicate_of": "r04"}]
    (root / "table.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


@pytest.fixture(scope="module")
def built(sweep_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    report = build_report(str(sweep_dir), out)
    return out, report.read_text()


@pytest.fixture(scope="module")
def summary(sweep_dir):
    return summarise(load_table(str(sweep_dir)))


def section(text: str, number: int) -> str:
    start = text.index(f"## {number}.")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def table_run_ids(markdown: str) -> list[str]:
    return re.findall(r"^\| (?:\d+ \| )?`(r\d+)`", markdown, flags=re.MULTILINE)


# --- the numbers --------------------------------------------------------------------------------------

def test_table_reads_folders_as_truth_and_keeps_duplicates_apart(summary):
    table = summary.table
    by_id = {r.run_id: r for r in table.records}
    assert sorted(by_id) == sorted([*RUNS, "r14"])  # the duplicate r15 is not a run
    assert by_id["r01"].state == "finished"  # the folder, not table.jsonl's stale "running"
    assert by_id["r14"].state == "oom" and by_id["r14"].reason == OOM_REASON
    assert [(d.run_id, d.duplicate_of) for d in table.duplicates] == [("r15", "r04")]
    assert sorted(r.run_id for r in table.successful()) == sorted(SUCCESSFUL)
    assert table.metric_name == metrics.VAL_ACC


def test_leaderboard_ranks_by_best_epoch_not_last(summary, built):
    expected = sorted(SUCCESSFUL, key=lambda r: (-expected_best(r), RUNS[r][4]))[:10]
    assert [r.run_id for r in summary.leaderboard] == expected
    assert expected[:3] == ["r04", "r06", "r02"]  # r06 and r02 tie at 0.81; the cheaper run first
    for record in summary.leaderboard:
        assert record.best_val_acc == expected_best(record.run_id)
    assert summary.leaderboard[0].best_epoch == 2  # r04 peaked at epoch 2 of 3
    text = section(built[1], 2)
    assert table_run_ids(text) == expected
    assert f"| `r04` | efficientnet_b0 | – | last_k | 1 | – | 0.0003 | true | {percent(0.83)} | 2/3 |" in text
    assert percent(0.82) not in text.split("`r04`")[1].split("\n")[0]  # r04's last epoch, not its best
    assert "`r12`" not in text and "`r11`" not in text  # diverged at 95 % and failed never rank


def test_a_test_accuracy_never_ranks_a_run(tmp_path, sweep_dir, summary):
    import shutil

    shutil.copytree(sweep_dir, tmp_path / "sweep")
    test_dir = tmp_path / "sweep" / "runs" / "r06" / "test"  # r06 ranks second on validation
    test_dir.mkdir()
    (test_dir / "test.json").write_text(json.dumps({"test_acc": 0.99, "num_images": 2000, "checkpoint": "best.pt",
                                                    "best_epoch": make_summary("r06")[metrics.BEST_EPOCH]}))
    tested = summarise(load_table(str(tmp_path / "sweep")))
    assert {r.run_id: r.test_acc for r in tested.tested} == {"r04": 0.815, "r06": 0.99}  # read, not set aside
    assert tested.leaderboard[0].run_id == "r04" and tested.best_fine_tuned.run_id == "r04"
    assert [r.run_id for r in tested.leaderboard] == [r.run_id for r in summary.leaderboard]


def test_a_summary_without_its_best_takes_the_best_logged_val_acc(tmp_path, sweep_dir):
    import shutil

    shutil.copytree(sweep_dir / "runs", tmp_path / "runs")
    no_best = {k: v for k, v in make_summary("r01").items() if k not in (metrics.BEST_VAL_ACC, metrics.BEST_EPOCH)}
    add_run(tmp_path / "runs", "r16", "r01", [0.5, 0.8, 0.6], no_best, lr=3e-3)  # train_acc peaks at 0.9
    summary = summarise(load_table(str(tmp_path / "runs")))
    record = next(r for r in summary.successful if r.run_id == "r16")
    assert (record.best_val_acc, record.best_epoch) == (0.8, 2)  # not the last epoch's 0.6
    assert not any("r16" in warning for warning in summary.provenance.warnings)


def test_a_summary_best_the_history_disagrees_with_is_flagged(tmp_path, sweep_dir):
    import shutil

    shutil.copytree(sweep_dir / "runs", tmp_path / "runs")
    claimed = {**make_summary("r01"), metrics.BEST_VAL_ACC: 0.9, metrics.BEST_EPOCH: 2}
    add_run(tmp_path / "runs", "r16", "r01", [0.5, 0.8, 0.6], claimed, lr=3e-3)
    summary = summarise(load_table(str(tmp_path / "runs")))
    assert summary.leaderboard[0].best_val_acc == 0.9  # the summary's number is used, and questioned:
    assert (f"run r16: summary {metrics.BEST_VAL_ACC}=0.9000 but the best logged epoch has {metrics.VAL_ACC}=0.8000"
            in summary.provenance.warnings)


def test_groups_use_finished_runs_only(summary, built):
    groups = {(g.model, g.strategy): g for g in summary.groups}
    head_only = groups[("resnet50", "head_only")]
    assert (head_only.stats.count, head_only.stats.best, head_only.early_stopped) == (2, 0.72, 1)
    assert head_only.stats.mean == pytest.approx((0.72 + 0.69) / 2)
    assert head_only.stats.std == pytest.approx(np.std([0.72, 0.69], ddof=1))
    full = groups[("resnet50", "full")]
    assert (full.stats.count, full.stats.best) == (1, 0.80)  # the failed r11 is not in it
    assert ("efficientnet_b0", "full") not in groups  # only the diverged r12 ran it
    effnet = groups[("efficientnet_b0", "last_k")]
    assert effnet.stats.count == 3 and effnet.stats.mean == pytest.approx(np.mean([0.83, 0.79, 0.81]))
    assert groups[("scratch_cnn", None)].stats.count == 2
    text = section(built[1], 3)
    assert f"| resnet50 | – | head_only | 2 | {percent(0.72)} | {percent(0.705)} |" in text


def test_headline_gap_and_seed_interval(summary, built):
    assert summary.best_fine_tuned.run_id == "r04" and summary.best_scratch.run_id == "r10"
    assert summary.gap_points == pytest.approx((0.83 - 0.48) * 100)
    values = [0.83, 0.79, 0.81]
    half_width = scipy_stats.t.ppf(0.975, df=2) * np.std(values, ddof=1) / math.sqrt(3)
    group = summary.seeds_fine_tuned
    assert sorted(r.run_id for r in group.records) == ["r04", "r05", "r06"] and group.seeds == [0, 1, 2]
    assert group.ci.mean == pytest.approx(np.mean(values)) and group.ci.half_width == pytest.approx(half_width)
    low, high = scipy_stats.t.interval(0.95, 2, loc=np.mean(values), scale=scipy_stats.sem(values))
    assert (group.ci.low, group.ci.high) == (pytest.approx(low), pytest.approx(high))
    assert summary.seeds_scratch is None  # the two scratch runs differ in dropout, not only in seed
    text = section(built[1], 1)
    assert points(summary.gap_points) == "+35.00 points" and "+35.00 points" in text
    assert ci_text(group.ci) in text and "over 3 seeds" in text
    assert f"no {'scratch_cnn'} config was repeated over seeds" in text


def test_seed_interval_leaves_out_runs_that_did_not_finish(tmp_path, sweep_dir, summary):
    import shutil

    shutil.copytree(sweep_dir / "runs", tmp_path / "runs")
    # r04's config again under new seeds: one diverged at a tempting 95 %, one stopped early by the sweep.
    diverged = {**make_summary("r04"), metrics.STATE: metrics.DIVERGED, metrics.BEST_VAL_ACC: 0.95,
                metrics.BEST_EPOCH: 2, metrics.EPOCHS_COMPLETED: 2, metrics.REASON: "train_loss is nan at epoch 3"}
    add_run(tmp_path / "runs", "r16", "r04", [0.75, 0.95], diverged, seed=3)
    stopped = {**make_summary("r04"), metrics.STATE: metrics.EARLY_STOPPED, metrics.BEST_VAL_ACC: 0.72,
               metrics.BEST_EPOCH: 2, metrics.EPOCHS_COMPLETED: 2}
    add_run(tmp_path / "runs", "r17", "r04", [0.70, 0.72], stopped, seed=4)
    # A config that lost a seed is not eligible as the best config over seeds: its mean is over survivors only.
    lost = summarise(load_table(str(tmp_path / "runs")))
    assert lost.seeds_fine_tuned is None and [g.records[0].run_id for g in lost.ineligible] == ["r04"]
    assert [r.run_id for r in lost.ineligible[0].lost] == ["r16"] and lost.ineligible[0].planned == 4
    text = render(lost, {}, {})
    assert "3 of 4 seeds" in section(text, 1) and "`r16` (diverged" in section(text, 1)
    assert "unstable: 1 of its seeds lost" in section(text, 2)
    # Opted in, the interval is over the survivors, and the lost seed is still named.
    group = summarise(load_table(str(tmp_path / "runs")), allow_lost_seeds=True).seeds_fine_tuned
    assert [r.run_id for r in group.records] == ["r04", "r05", "r06"] and group.ci.n == 3 and [r.run_id for r in group.lost] == ["r16"]
    assert group.ci == summary.seeds_fine_tuned.ci


def test_mean_ci_needs_two_values():
    assert mean_ci([0.5]) is None and mean_ci([]) is None


def test_pareto_fronts(summary, built):
    assert summary.pareto_seconds == {"r13", "r08", "r01", "r07", "r04"}
    assert summary.pareto_params == {"r01", "r07", "r04"}
    assert pareto_front({"a": (0.5, 1.0), "b": (0.5, 1.0), "c": (0.4, 1.0)}) == {"a", "b"}  # ties both stay
    text = section(built[1], 4)
    assert table_run_ids(text) == ["r13", "r08", "r01", "r07", "r04", "r01", "r07", "r04"]


def test_importance_over_successful_runs(summary):
    rows = {row.parameter: row for row in summary.importance}
    assert {"model", "strategy", "lr", "seed"} <= set(rows) and "data_dir" not in rows
    assert sum(row.importance for row in rows.values()) == pytest.approx(1.0)
    assert rows["model"].kind == "categorical" and rows["model"].correlation is None
    records = summary.successful
    assert len(records) == len(SUCCESSFUL)
    expected = scipy_stats.spearmanr([r.config["lr"] for r in records], [r.best_val_acc for r in records])[0]
    assert rows["lr"].correlation == pytest.approx(expected)
    assert summarise(summary.table).importance == summary.importance  # fixed random_state


def test_runs_that_did_not_count_are_listed_with_reasons(summary, built):
    assert {state: [r.run_id for r in records] for state, records in summary.not_counted} == {
        "failed": ["r11"], "diverged": ["r12"], "oom": ["r14"], "early_stopped": ["r13"]}
    text = section(built[1], 6)
    for reason in (RUNS["r11"][7], RUNS["r12"][7], OOM_REASON):
        assert reason in text
    assert "| early_stopped | 1 |" in text and "| duplicate (skipped, never run) | 1 |" in text
    assert "| `r15` | `r04` |" in text


def test_test_section_and_provenance(built):
    out, text = built
    tested = section(text, 7)
    assert "evaluated **once**" in tested and percent(0.815) in tested and "| Aves | 83.00% |" in tested
    for name in ("confusion.png", "grid.png"):
        assert f"](test/r04/{name})" in tested and (out / "test" / "r04" / name).exists()
    provenance = section(text, 8)
    assert "`split-abc123` x11" in provenance and "No comparability warnings." in provenance
    assert "Code versions of successful runs: `abc1234` x11" in provenance


def test_the_cost_section_says_what_train_seconds_leave_out(built):
    _, text = built
    # 30 s (r01, the first run) + 0.5 s for each of the other 10 successful runs
    assert "Building the caches it reads" in section(text, 4) and "took 35 s over these runs" in section(text, 4)


def test_every_figure_is_a_readable_png(built):
    out, text = built
    for role, name in FIGURES.items():
        if role == "data_efficiency":
            continue  # drawn for a protocol's curve stage only (tests/test_protocol.py)
        assert f"]({name})" in text
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200
            image.verify()


def test_runs_csv_one_row_per_run(built):
    out, _ = built
    with open(out / "runs.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(RUNS) + 1  # r14 has no folder but ran; r15 was skipped
    columns = rows[0].keys()
    for column in ("run_id", "state", "model", "strategy", "k_layers", "lr", "seed", "dropout",
                   metrics.BEST_VAL_ACC, metrics.BEST_EPOCH, metrics.EPOCHS_COMPLETED, metrics.TRAIN_SECONDS,
                   metrics.TRAINABLE_PARAMS, metrics.TOTAL_PARAMS, metrics.WEIGHTS_VERSION, metrics.SPLIT_HASH,
                   metrics.REASON, "test_acc", "config_hash", CODE_VERSION):
        assert column in columns
    assert "data_dir" not in columns and "output_dir" not in columns
    by_id = {row["run_id"]: row for row in rows}
    assert float(by_id["r02"][metrics.BEST_VAL_ACC]) == 0.81 and by_id["r04"]["test_acc"] == "0.815"
    assert by_id["r12"][metrics.REASON] == RUNS["r12"][7]
    assert by_id["r02"]["config_hash"] == "hash-r02" and by_id["r02"][CODE_VERSION] == "abc1234"


def test_mixed_splits_and_weights_are_flagged(tmp_path, sweep_dir):
    import shutil

    shutil.copytree(sweep_dir / "runs", tmp_path / "runs")
    summary_path = tmp_path / "runs" / "r02" / "summary.json"
    data = json.loads(summary_path.read_text())
    data.update({metrics.SPLIT_HASH: "other-split", metrics.WEIGHTS_VERSION: "IMAGENET1K_V1"})
    summary_path.write_text(json.dumps(data))
    warnings = " ".join(summarise(load_table(str(tmp_path / "runs"))).provenance.warnings)
    assert "2 different data splits" in warnings and "model resnet50 ran with 2 different weights" in warnings


def test_runs_on_other_files_under_the_same_names_are_flagged(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    add_run(runs, "r16", "r09", [0.3, 0.4], finished_summary("r09", 0.4, **{metrics.DATA_HASH: "files-a"}))
    add_run(runs, "r17", "r09", [0.3, 0.5], finished_summary("r09", 0.5, **{metrics.DATA_HASH: "files-b"}), seed=1)
    add_finished(runs, "r18", "r09", 0.45, seed=2)  # trained before runs recorded one: says nothing either way
    warnings = " ".join(report_of(runs)[0].provenance.warnings)
    assert "runs were trained on 2 different sets of files under the same names (files-a x1, files-b x1)" in warnings
    (runs / "r17" / "summary.json").write_text(json.dumps(finished_summary("r09", 0.5, **{metrics.DATA_HASH: "files-a"})))
    assert "different sets of files" not in " ".join(report_of(runs)[0].provenance.warnings)


def test_mixed_code_versions_are_flagged(tmp_path, sweep_dir):
    import shutil

    shutil.copytree(sweep_dir / "runs", tmp_path / "runs")

    def set_code_version(run_id: str, version: str | None) -> None:
        path = tmp_path / "runs" / run_id / "summary.json"
        data = {k: v for k, v in json.loads(path.read_text()).items() if k != CODE_VERSION}
        path.write_text(json.dumps(data if version is None else {**data, CODE_VERSION: version}))

    set_code_version("r03", None)  # trained before runs recorded their code version: not a second version
    summary = summarise(load_table(str(tmp_path / "runs")))
    assert not any("code version" in warning for warning in summary.provenance.warnings)
    set_code_version("r02", "def5678+dirty")
    summary = summarise(load_table(str(tmp_path / "runs")))
    warning = "runs came from 2 different code versions (abc1234 x9, def5678+dirty x1): numbers may not compare"
    assert warning in summary.provenance.warnings
    assert warning in section(render(summary, {}, {}), 8)


def test_a_random_init_backbone_is_not_the_fine_tuned_headline(tmp_path, sweep_dir):
    import shutil

    shutil.copytree(sweep_dir / "runs", tmp_path / "runs")
    for name in ("config.yaml", "summary.json"):  # r04, the best run, trained efficientnet_b0 from random init
        path = tmp_path / "runs" / "r04" / name
        path.write_text(path.read_text().replace("IMAGENET1K_V1", "none"))
    summary = summarise(load_table(str(tmp_path / "runs")))
    assert summary.best_fine_tuned.run_id == "r06" and summary.leaderboard[0].run_id == "r04"  # r06 ties r02, and is cheaper
    assert any("1 run(s) of pretrained architectures used weights=none (efficientnet_b0 x1)" in w for w in summary.provenance.warnings)
    assert summary.seeds_fine_tuned and all(r.run_id != "r04" for r in summary.seeds_fine_tuned.records)


def test_one_sided_and_empty_sweeps_say_so_plainly(tmp_path, sweep_dir):
    import shutil

    for run_id in ("r09", "r10", "r11"):  # scratch runs and a failure: no fine-tuned result
        shutil.copytree(sweep_dir / "runs" / run_id, tmp_path / "scratch" / run_id)
    text = render(summarise(load_table(str(tmp_path / "scratch"))), {}, {})
    assert "No successful ImageNet fine-tuned run" in text and "Best scratch_cnn run: `r10`" in text
    shutil.copytree(sweep_dir / "runs" / "r12", tmp_path / "failed" / "r12")
    report = build_report(str(tmp_path / "failed"), tmp_path / "out")
    assert "No successful run" in report.read_text() and not list((tmp_path / "out").glob("*.png"))

    for run_id in ("r04", "r06"):  # only pretrained architectures from random init (the README's CPU sweep)
        shutil.copytree(sweep_dir / "runs" / run_id, tmp_path / "random" / run_id)
        for name in ("config.yaml", "summary.json"):
            path = tmp_path / "random" / run_id / name
            path.write_text(path.read_text().replace("IMAGENET1K_V1", "none"))
    text = render(summarise(load_table(str(tmp_path / "random"))), {}, {})
    assert "No successful run" not in text and "No ImageNet fine-tuned run and no scratch_cnn run" in text
    assert "Best run from random initialisation (`weights=none`, not fine-tuned): `r04`**, best val_acc **83.00%**" in text


# --- sources ------------------------------------------------------------------------------------------

class FakeSummary:
    def __init__(self, data):
        self._json_dict = data


class FakeRun:
    def __init__(self, run_id: str, wandb_state: str, summary: dict, as_object: bool):
        self.id = run_id
        self.state = wandb_state
        self.config = {**make_config(run_id), "_wandb": {"cli_version": "0.31.0"}}
        # W&B's summary keeps the LAST logged val_acc; the report must never read it.
        last = {metrics.VAL_ACC: RUNS[run_id][3][-1], "_runtime": 12.0}
        data = {**summary, **last}
        self.summary = FakeSummary(data) if as_object else data
        self.summary_metrics = data  # what the report reads: the public property, never `summary._json_dict`
        self._history = [{**row, "_step": i} for i, row in enumerate(make_history(run_id))]

    def scan_history(self, keys=None):
        for row in self._history:
            if keys is None or all(k in row for k in keys):
                yield {k: row[k] for k in keys} if keys else dict(row)


class FakeRuns:
    """Paginated like the public API: pages are fetched as iteration goes."""

    def __init__(self, runs, per_page):
        self.runs, self.per_page, self.pages_served = runs, per_page, 0

    def __iter__(self):
        for start in range(0, len(self.runs), self.per_page):
            self.pages_served += 1
            yield from self.runs[start:start + self.per_page]


class FakeSweep:
    def __init__(self, runs):
        self.name = "synthetic"
        self.config = {"metric": {"name": metrics.VAL_ACC, "goal": "maximize"}}
        self.runs = FakeRuns(runs, per_page=7)


def fake_wandb(monkeypatch, sweep=None, error=None):
    """Replace only `wandb.Api`, the network edge; the real wandb module stays imported."""
    wandb = pytest.importorskip("wandb")

    class Api:
        def __init__(self, *args, **kwargs):
            if error:
                raise error

        def sweep(self, path):
            assert path == "team/project/abc123"
            return sweep

        def runs(self, path, filters=None, per_page=50, lazy=True):
            assert (path, filters, lazy) == ("team/project", {"sweep": "abc123"}, False)
            return sweep.runs

    monkeypatch.setattr(wandb, "Api", Api)


def test_wandb_source_gives_the_same_numbers(monkeypatch, summary):
    runs = [FakeRun(run_id, "crashed" if RUNS[run_id][6] == "failed" else "finished", make_summary(run_id),
                    as_object=i % 2 == 0) for i, run_id in enumerate(RUNS)]
    sweep = FakeSweep(runs)
    fake_wandb(monkeypatch, sweep)
    remote = summarise(load_table("team/project/abc123"))
    assert sweep.runs.pages_served == 2 and len(remote.table.records) == len(RUNS)
    assert [(r.run_id, r.best_val_acc, r.best_epoch) for r in remote.leaderboard] == \
           [(r.run_id, r.best_val_acc, r.best_epoch) for r in summary.leaderboard]
    assert [(g.model, g.strategy, g.stats, g.early_stopped) for g in remote.groups] == \
           [(g.model, g.strategy, g.stats, g.early_stopped) for g in summary.groups]
    assert remote.gap_points == summary.gap_points and remote.seeds_fine_tuned.ci == summary.seeds_fine_tuned.ci
    assert (remote.pareto_seconds, remote.pareto_params) == (summary.pareto_seconds, summary.pareto_params)
    assert remote.importance == summary.importance
    assert len(remote.best_per_strategy[0].history) == 3
    text = render(remote, {}, {})
    assert "+35.00 points" in text and table_run_ids(section(text, 2)) == [r.run_id for r in summary.leaderboard]


def test_wandb_state_used_when_our_state_is_missing(monkeypatch):
    partial = {k: v for k, v in make_summary("r11").items() if k not in (metrics.STATE, metrics.REASON)}
    fake_wandb(monkeypatch, FakeSweep([FakeRun("r11", "crashed", partial, as_object=True),
                                      FakeRun("r01", "finished", make_summary("r01"), as_object=False)]))
    records = {r.run_id: r for r in load_table("team/project/abc123").records}
    assert records["r11"].state == "failed" and records["r11"].reason == "W&B state crashed"
    assert records["r01"].best_val_acc == 0.72


def test_a_wandb_run_that_died_while_running_takes_wandbs_state():
    from report.sources import _wandb_record

    said_running = {**make_summary("r01"), metrics.STATE: metrics.RUNNING, metrics.REASON: None}
    record = _wandb_record(FakeRun("r01", "crashed", said_running, as_object=True))
    assert (record.state, record.reason) == (metrics.FAILED, "W&B state crashed") and not record.is_complete
    assert _wandb_record(FakeRun("r01", "running", said_running, as_object=True)).state == metrics.RUNNING
    # W&B's "finished" (a run reopened and closed by other code) never makes a cut-off run complete.
    assert _wandb_record(FakeRun("r01", "finished", said_running, as_object=True)).state == metrics.RUNNING


def test_wandb_run_without_its_best_takes_the_best_logged_epoch_not_the_last():
    from report.sources import _wandb_record

    run = FakeRun("r01", "finished", {}, as_object=True)
    run.summary_metrics = {metrics.STATE: metrics.FINISHED, metrics.VAL_ACC: 0.6, "_runtime": 12.0}  # the last
    run._history = [{**row, "_step": i} for i, row in enumerate(epochs([0.5, 0.8, 0.6], 100))]
    record = _wandb_record(run)
    assert (record.best_val_acc, record.best_epoch) == (0.8, 2)


def test_wandb_failure_is_one_line_user_error(monkeypatch):
    key = "0123456789abcdef0123456789abcdef01234567"  # shaped like a W&B API key: 40 characters
    fake_wandb(monkeypatch, error=RuntimeError(f"api_key {key} rejected (no-tty)\nlong traceback"))
    with pytest.raises(UserError) as caught:
        load_table("team/project/abc123")
    message = str(caught.value)
    assert "\n" not in message and "wandb login" in message
    assert key not in message and key[:20] not in message and "rejected" in message


class FakeWandbServer:
    """W&B's server for the public API, faked where wandb's Python hands each request to wandb-core, the process that
    sends it over the network (`ServiceApi.send_api_request`, and `finalize`, which would start that process). All of
    wandb's own Python (Api, Sweep, Runs and its pages, Run) runs unchanged, and every request it makes is counted."""

    def __init__(self, runs: dict[str, tuple[str, dict, dict]]):
        self.runs = runs  # run id -> (W&B state, config, summary)
        self.requests: list[str] = []

    def node(self, run_id: str) -> dict:
        state, config, summary = self.runs[run_id]
        return {"id": f"id-{run_id}", "name": run_id, "displayName": run_id, "sweepName": "abc123", "state": state,
                "config": json.dumps({key: {"value": value} for key, value in config.items()}),
                "summaryMetrics": json.dumps(summary), "systemMetrics": "{}", "historyLineCount": 3, "historyKeys": {},
                "tags": [], "group": None, "jobType": None, "commit": None, "readOnly": False, "createdAt": "2026-01-01T00:00:00",
                "heartbeatAt": "2026-01-01T00:00:00", "description": None, "notes": None, "projectId": 1}

    def answer(self, query: str, variables: dict) -> dict:
        if "query Runs(" in query:
            names = sorted(self.runs)
            start = int(variables.get("cursor") or 0)
            page = names[start:start + int(variables.get("perPage") or 50)]
            edges = [{"node": self.node(name), "cursor": str(start + i + 1)} for i, name in enumerate(page)]
            return {"project": {"internalId": "p1", "runCount": len(names), "readOnly": False,
                                "runs": {"edges": edges, "pageInfo": {"endCursor": str(start + len(page)),
                                                                     "hasNextPage": start + len(page) < len(names)}}}}
        if "sweep(" in query:
            config = yaml.safe_dump({"name": "synthetic", "method": "random", "metric": {"name": metrics.VAL_ACC, "goal": "maximize"}})
            return {"project": {"sweep": {"__typename": "Sweep", "id": "abc123", "name": "abc123", "displayName": "synthetic",
                                          "method": "random", "state": "FINISHED", "config": config, "runCount": len(self.runs)}}}
        if "run(name:" in query:  # one run, with its config and summary (what `sweep.runs` fetched per run)
            return {"project": {"run": self.node(variables["name"])}}
        if "viewer" in query:  # the logged-in user's default entity, asked once per Api
            return {"viewer": {"id": "u1", "entity": "team"}}
        return {}

    def send_api_request(self, service_api, request, timeout=None):
        from wandb.proto import wandb_api_pb2 as pb

        kind = request.WhichOneof("request")
        self.requests.append(kind)
        if kind == "graphql_request":
            data = self.answer(request.graphql_request.query, json.loads(request.graphql_request.variables_json or "{}"))
            return pb.ApiResponse(graphql_response=pb.GraphQLResponse(data_json=json.dumps(data)))
        return pb.ApiResponse()  # the login check; history scans of runs that have no rows


def test_a_wandb_sweep_of_150_runs_is_read_in_a_few_requests(monkeypatch):
    wandb = pytest.importorskip("wandb")
    from wandb.apis.public.service_api import ServiceApi

    templates = list(RUNS)
    runs = {}
    for number in range(150):
        template = templates[number % len(templates)]
        summary = {**make_summary(template), metrics.EPOCH_HISTORY: make_history(template), metrics.VAL_ACC: 0.01}
        runs[f"s{number:03d}"] = ("finished", {**make_config(template), "effective": make_config(template)}, summary)
    server = FakeWandbServer(runs)
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)  # a key shaped like one; the fake server takes any
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setattr(ServiceApi, "send_api_request", lambda self, request, timeout=None: server.send_api_request(self, request, timeout))
    monkeypatch.setattr(ServiceApi, "finalize", lambda self, obj, cleanup: (lambda: None))
    table = load_table("team/project/abc123")
    # The login check, the default entity, the sweep, then the runs 100 a page: 5 requests, not 3 to 7 per run.
    assert len(server.requests) <= 6, (len(server.requests), server.requests[:12])
    assert len(table.records) == 150 and table.name == "synthetic"
    record = next(r for r in table.records if r.run_id == "s003")
    assert record.history == _sorted(make_history(templates[3])) and record.best_val_acc == max(RUNS[templates[3]][3])


def _sorted(history: list[dict]) -> list[dict]:
    return sorted(({k: row[k] for k in metrics.EPOCH_METRICS if k in row} for row in history), key=lambda row: row[metrics.EPOCH])


@pytest.mark.parametrize("source", ["", "no/such/folder/here", "missing_folder"])
def test_missing_source_is_one_line_user_error(tmp_path, source):
    with pytest.raises(UserError) as caught:
        build_report(source, tmp_path / "out")
    message = str(caught.value)
    assert "\n" not in message and "entity/project/sweep_id" in message


def test_empty_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no runs found"):
        load_table(str(tmp_path))


def test_wandb_source_prefers_the_normalised_config_over_locked_sweep_values(monkeypatch):
    """A sweep locks the raw values it passed (k_layers=3 for a head-only run); `effective` holds the truth."""
    from report.sources import _wandb_record

    run = FakeRun("r01", "finished", {metrics.STATE: metrics.FINISHED}, as_object=False)
    run.config = {**run.config, "strategy": "freeze_all", "k_layers": 3,
                  "effective": {**make_config("r01"), "strategy": "head_only", "k_layers": None}}
    config = _wandb_record(run).config
    assert config["strategy"] == "head_only" and config["k_layers"] is None and "effective" not in config


def test_wandb_history_keeps_the_last_attempt_of_each_epoch():
    """An out-of-memory retry re-logs epochs 1.. at later steps of the same W&B run; the curve is the last attempt's."""
    from report.sources import _wandb_record

    run = FakeRun("r01", "finished", make_summary("r01"), as_object=False)
    final = make_history("r01")
    abandoned = [{**row, metrics.VAL_ACC: 0.01} for row in final + [{**final[-1], metrics.EPOCH: 4}]]  # ran longer
    run._history = [{**row, "_step": i} for i, row in enumerate(abandoned + final, start=1)]
    history = _wandb_record(run).history
    assert [row[metrics.EPOCH] for row in history] == [1, 2, 3]
    assert [row[metrics.VAL_ACC] for row in history] == [row[metrics.VAL_ACC] for row in final]


def test_report_of_a_sweep_yaml_points_at_its_folder(tmp_path, capsys):
    import agent

    sweep_yaml = tmp_path / "tiny.yaml"
    sweep_yaml.write_text("method: grid\n")
    assert agent.main(["report", str(sweep_yaml)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file, not a folder" in err and "sweep_runs/tiny" in err


def test_a_bad_report_out_or_source_is_one_line_and_leaves_no_folder(tmp_path, sweep_dir, capsys, monkeypatch):
    import agent

    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.md").write_text("mine")
    for out in ("notes.md", "notes.md/report"):
        assert agent.main(["report", str(sweep_dir), f"--out={out}"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "notes.md" in err and "--out" in err
    assert (tmp_path / "notes.md").read_text() == "mine"
    assert agent.main(["report", "sweep_runs/nosuch"]) == 2
    assert not (tmp_path / "reports").exists() and not (tmp_path / "sweep_runs").exists()


def test_a_trial_killed_outright_gets_the_sweeps_reason_not_running(tmp_path, sweep_dir):
    import shutil

    shutil.copytree(sweep_dir, tmp_path / "sweep")
    summary_path = tmp_path / "sweep" / "runs" / "r03" / "summary.json"
    data = json.loads(summary_path.read_text())
    summary_path.write_text(json.dumps({**data, metrics.STATE: "running", metrics.REASON: None}))  # SIGKILL: no word
    table_path = tmp_path / "sweep" / "table.jsonl"
    killed = {"run_id": "r03", "state": "failed", "config": make_config("r03"), "reason": "killed by signal 9", "duplicate_of": None}
    table_path.write_text(table_path.read_text() + json.dumps(killed) + "\n")
    records = {r.run_id: r for r in load_table(str(tmp_path / "sweep")).records}
    assert records["r03"].state == "failed" and records["r03"].reason == "killed by signal 9"
    assert records["r01"].state == "finished"  # a stale "running" row never overrides a folder that ended


def test_a_preempted_sweep_trial_says_the_sweep_command_resumes_it_not_a_single_run_command(tmp_path, sweep_dir):
    import shutil

    shutil.copytree(sweep_dir, tmp_path / "sweep")
    summary_path = tmp_path / "sweep" / "runs" / "r03" / "summary.json"
    own = "interrupted by signal 15; resumes from its checkpoint when relaunched with run_id=r03"
    summary_path.write_text(json.dumps({**json.loads(summary_path.read_text()), metrics.STATE: "preempted", metrics.REASON: own}))
    table_path = tmp_path / "sweep" / "table.jsonl"
    sweeps = "interrupted; the same sweep command resumes it from its checkpoint"
    row = {"run_id": "r03", "state": "preempted", "config": make_config("r03"), "reason": sweeps, "duplicate_of": None}
    table_path.write_text(table_path.read_text() + json.dumps(row) + "\n")
    records = {r.run_id: r for r in load_table(str(tmp_path / "sweep")).records}
    assert records["r03"].state == "preempted" and records["r03"].reason == sweeps


def test_a_test_result_of_an_earlier_best_epoch_is_left_out(tmp_path, sweep_dir, capsys):
    import shutil

    shutil.copytree(sweep_dir / "runs", tmp_path / "runs")
    test_path = tmp_path / "runs" / "r04" / "test" / "test.json"
    result = json.loads(test_path.read_text())
    test_path.write_text(json.dumps({**result, "best_epoch": 2}))  # r04's best epoch is 2: the same checkpoint
    assert {r.run_id for r in load_table(str(tmp_path / "runs")).records if r.test_acc is not None} == {"r04"}
    test_path.write_text(json.dumps({**result, "best_epoch": 1}))  # tested before the run (resumed) kept epoch 2
    records = {r.run_id: r for r in load_table(str(tmp_path / "runs")).records}
    assert records["r04"].test_acc is None
    assert "tested epoch 1, but the run's best epoch is now 2" in capsys.readouterr().out


def test_a_run_resumed_by_hand_while_the_table_says_it_ended_shows_as_running(tmp_path, sweep_dir):
    import shutil

    from trainer.record import RunRecord as RunFolder

    shutil.copytree(sweep_dir, tmp_path / "sweep")
    folder = tmp_path / "sweep" / "runs" / "r03"
    summary_path = folder / "summary.json"
    summary_path.write_text(json.dumps({**json.loads(summary_path.read_text()), metrics.STATE: "running"}))
    table_path = tmp_path / "sweep" / "table.jsonl"
    ended = {"run_id": "r03", "state": "preempted", "config": make_config("r03"), "reason": "interrupted", "duplicate_of": None}
    table_path.write_text(table_path.read_text() + json.dumps(ended) + "\n")
    with RunFolder(folder).exclusive():  # `agent.py --run_id=r03` training it now
        assert {r.run_id: r.state for r in load_table(str(tmp_path / "sweep")).records}["r03"] == "running"
    with RunFolder(folder).exclusive("testing"):  # `agent.py test` of it: nobody trains it
        assert {r.run_id: r.state for r in load_table(str(tmp_path / "sweep")).records}["r03"] == "preempted"
    assert {r.run_id: r.state for r in load_table(str(tmp_path / "sweep")).records}["r03"] == "preempted"


def test_a_run_whose_process_is_gone_says_how_to_resume_it_and_one_in_training_says_so(tmp_path, sweep_dir):
    import shutil

    from trainer.record import RunRecord as RunFolder

    shutil.copytree(sweep_dir / "runs", tmp_path / "runs")
    folder = tmp_path / "runs" / "r03"
    summary_path = folder / "summary.json"
    summary_path.write_text(json.dumps({**json.loads(summary_path.read_text()), metrics.STATE: "running", metrics.REASON: None}))
    with RunFolder(folder).exclusive():  # being trained now
        record = {r.run_id: r for r in load_table(str(tmp_path / "runs")).records}["r03"]
        assert record.reason is None and failure_reason(record) == "training now"
    record = {r.run_id: r for r in load_table(str(tmp_path / "runs")).records}["r03"]
    # Nobody holds its lock: it is dead, and its summary.json no longer says running (a full disk kept it from saying so).
    assert record.state == "preempted" and record.reason.startswith("not training now: its process was stopped or killed")
    assert f"`python agent.py --resume --run_id=r03 --output_dir={tmp_path / 'runs'}` to resume it" in record.reason
    assert json.loads(summary_path.read_text())[metrics.STATE] == "preempted"


# --- edge cases: how a run's numbers are read, where its runs come from, what the report says -------------

def finished_summary(like: str, best: float, **changes) -> dict:
    """`like`'s summary for a finished run of two epochs whose second reached `best`."""
    return {**make_summary(like), metrics.BEST_VAL_ACC: best, metrics.BEST_EPOCH: 2, metrics.EPOCHS_COMPLETED: 2,
            **changes}


def add_finished(runs: Path, run_id: str, like: str, best: float, **config) -> None:
    add_run(runs, run_id, like, [round(best - 0.1, 4), best], finished_summary(like, best), **config)


def without(data: dict, *keys: str) -> dict:
    return {k: v for k, v in data.items() if k not in keys}


def rewrite_metrics(folder: Path, rows: list) -> None:
    """metrics.jsonl as given: dicts become JSON lines, strings are written as they are (a torn line)."""
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    (folder / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))


def report_of(source: Path) -> tuple:
    summary = summarise(load_table(str(source)))
    return summary, render(summary, {}, {})


def test_tied_epochs_give_the_first_as_the_best_epoch(tmp_path):
    (tmp_path / "runs").mkdir()
    no_best = without(make_summary("r01"), metrics.BEST_VAL_ACC, metrics.BEST_EPOCH)
    add_run(tmp_path / "runs", "r16", "r01", [0.6, 0.8, 0.8], no_best)
    summary, text = report_of(tmp_path / "runs")
    assert summary.leaderboard[0].best_epoch == 2  # the checkpoint kept is the first to reach 80 %
    assert f"| {percent(0.8)} | 2/3 |" in section(text, 2)


def test_the_summarys_best_epoch_stands_without_a_history(tmp_path):
    """A run whose metrics.jsonl is gone still reports the best epoch its summary recorded."""
    (tmp_path / "runs").mkdir()
    add_run(tmp_path / "runs", "r16", "r01", [0.6, 0.8, 0.7], make_summary("r01"))  # best 0.72 at epoch 2 of 3
    (tmp_path / "runs" / "r16" / "metrics.jsonl").unlink()
    summary, text = report_of(tmp_path / "runs")
    assert f"| {percent(0.72)} | 2/3 |" in section(text, 2)
    rows = list(csv.DictReader(runs_csv(summary.table).splitlines()))
    assert rows[0][metrics.BEST_EPOCH] == "2"


def test_training_time_falls_back_to_the_sum_of_epoch_seconds(tmp_path):
    (tmp_path / "runs").mkdir()
    add_run(tmp_path / "runs", "r16", "r01", [0.7, 0.8],
            without(finished_summary("r01", 0.8), metrics.TRAIN_SECONDS))  # two epochs of 50 s
    summary, text = report_of(tmp_path / "runs")
    assert summary.leaderboard[0].train_seconds == 100
    assert f"| {percent(0.8)} | 2/2 | 100 |" in section(text, 2)


def test_a_run_of_unknown_training_time_ranks_after_an_equal_one_of_known_time(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    add_run(runs, "r16", "r01", [0.7, 0.8], without(finished_summary("r01", 0.8), metrics.TRAIN_SECONDS))
    rewrite_metrics(runs / "r16", [without(row, metrics.EPOCH_SECONDS) for row in epochs([0.7, 0.8], 100)])
    add_finished(runs, "r17", "r01", 0.8, lr=3e-3)  # 100 s
    summary, text = report_of(runs)
    assert summary.leaderboard[0].train_seconds == 100 and summary.leaderboard[1].train_seconds is None
    assert table_run_ids(section(text, 2)) == ["r17", "r16"]


def test_a_boolean_is_not_a_number():
    from report.table import RunRecord

    summary = {metrics.BEST_VAL_ACC: True, metrics.TRAINABLE_PARAMS: True, metrics.TRAIN_SECONDS: False}
    record = RunRecord("r16", metrics.FINISHED, make_config("r01"), summary, epochs([0.5, 0.6], 100))
    assert record.best_val_acc == 0.6 and record.best_epoch == 2  # not 100 % from `true`
    assert record.trainable_params is None and record.train_seconds == 100


def test_a_finished_run_without_any_val_acc_did_not_count(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    add_finished(runs, "r16", "r01", 0.8)
    add_run(runs, "r17", "r01", [0.7], without(make_summary("r01"), metrics.BEST_VAL_ACC, metrics.BEST_EPOCH))
    (runs / "r17" / "metrics.jsonl").unlink()
    summary, text = report_of(runs)
    assert [r.run_id for r in summary.successful] == ["r16"]
    assert f"| `r17` | finished | resnet50 | head_only | 3 | no finite {metrics.BEST_VAL_ACC} |" in section(text, 6)


def test_a_summary_without_a_state_is_a_failed_run(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    add_finished(runs, "r16", "r01", 0.7)
    add_run(runs, "r17", "r01", [0.7, 0.9], without(finished_summary("r01", 0.9), metrics.STATE), lr=3e-3)
    summary, text = report_of(runs)
    assert [r.run_id for r in summary.leaderboard] == ["r16"]
    assert {state: [r.run_id for r in records] for state, records in summary.not_counted} == {"failed": ["r17"]}
    assert "| `r17` | failed |" in section(text, 6)


def test_history_rows_are_read_in_epoch_order(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    add_finished(runs, "r16", "r01", 0.8)
    rows = epochs([0.6, 0.8, 0.7], 90)
    rewrite_metrics(runs / "r16", [rows[2], rows[0], rows[1]])
    record = load_table(str(runs)).records[0]
    assert [row[metrics.EPOCH] for row in record.history] == [1, 2, 3]
    assert [row[metrics.VAL_ACC] for row in record.history] == [0.6, 0.8, 0.7]


def test_a_broken_line_in_metrics_keeps_the_epochs_after_it(tmp_path):
    """A run killed mid-append and resumed on a new line: the torn line is skipped, later epochs still count."""
    runs = tmp_path / "runs"
    runs.mkdir()
    add_run(runs, "r16", "r01", [0.6, 0.7, 0.9], without(make_summary("r01"), metrics.BEST_VAL_ACC, metrics.BEST_EPOCH))
    rows = epochs([0.6, 0.7, 0.9], 90)
    rewrite_metrics(runs / "r16", [rows[0], json.dumps(rows[1])[:25], rows[1], rows[2]])
    summary, text = report_of(runs)
    assert [row[metrics.EPOCH] for row in summary.leaderboard[0].history] == [1, 2, 3]
    assert f"| {percent(0.9)} | 3/3 |" in section(text, 2)


def test_a_running_trial_without_a_folder_is_listed_as_running(tmp_path, sweep_dir):
    import shutil

    shutil.copytree(sweep_dir, tmp_path / "sweep")
    table_path = tmp_path / "sweep" / "table.jsonl"
    started = {"run_id": "r16", "state": "running", "config": make_config("r03"), "reason": None, "duplicate_of": None}
    table_path.write_text(table_path.read_text() + json.dumps(started) + "\n")
    summary, text = report_of(tmp_path / "sweep")
    assert dict((s, [r.run_id for r in records]) for s, records in summary.not_counted)["running"] == ["r16"]
    assert "| running | 1 |" in section(text, 6) and "| `r16` | running | resnet50 | full |" in section(text, 6)


def test_the_runs_folder_of_a_sweep_reads_as_the_sweep(sweep_dir):
    table = load_table(str(sweep_dir / "runs"))
    assert (table.name, table.metric_name, table.metric_goal) == ("synthetic", metrics.VAL_ACC, "maximize")
    assert "r14" in {r.run_id for r in table.records}  # the trial with no folder, from the sweep's table.jsonl
    assert [(d.run_id, d.duplicate_of) for d in table.duplicates] == [("r15", "r04")]


def test_a_wandb_run_killed_is_preempted(monkeypatch):
    partial = without(make_summary("r11"), metrics.STATE, metrics.REASON)
    fake_wandb(monkeypatch, FakeSweep([FakeRun("r11", "killed", partial, as_object=True),
                                      FakeRun("r01", "finished", make_summary("r01"), as_object=False)]))
    summary, text = report_of("team/project/abc123")
    records = {r.run_id: r for r in summary.table.records}
    assert records["r11"].state == "preempted" and records["r11"].reason == "W&B state killed"
    assert "| `r11` | preempted | resnet50 | full |" in section(text, 6)


def test_wandb_history_restarted_after_its_first_epoch_keeps_one_curve():
    """An out-of-memory retry after epoch 1: the epoch number repeats instead of going back."""
    from report.sources import _wandb_record

    run = FakeRun("r01", "finished", make_summary("r01"), as_object=False)
    final = make_history("r01")
    abandoned = [{**final[0], metrics.VAL_ACC: 0.01}]
    run._history = [{**row, "_step": i} for i, row in enumerate(abandoned + final, start=1)]
    history = _wandb_record(run).history
    assert [row[metrics.EPOCH] for row in history] == [1, 2, 3]
    assert [row[metrics.VAL_ACC] for row in history] == [row[metrics.VAL_ACC] for row in final]


def test_headline_takes_the_seed_group_with_the_highest_mean_and_signs_the_gap(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for run_id, best, seed in (("r16", 0.80, 0), ("r17", 0.82, 1)):  # the better resnet50 config
        add_finished(runs, run_id, "r01", best, seed=seed)
    for run_id, best, seed in (("r18", 0.70, 0), ("r19", 0.74, 1)):
        add_finished(runs, run_id, "r01", best, seed=seed, lr=3e-4)
    for run_id, best, seed in (("r20", 0.40, 0), ("r21", 0.44, 1)):
        add_finished(runs, run_id, "r09", best, seed=seed)
    text = section(report_of(runs)[1], 1)
    # Student t with 1 degree of freedom: t = 12.706; the sample std of two values 0.02 apart is 0.02 / sqrt(2),
    # so the half-width is 12.706 * 0.01 = 12.71 points; for the scratch pair (0.04 apart) 25.41 points.
    assert ("fine-tuned): the best config repeated over seeds reaches **81.00% ± 12.71 (95% CI [68.29, 93.71], "
            "t with n=2)** over 2 seeds (0, 1; runs `r16`, `r17`)") in text
    assert "reaches **42.00% ± 25.41 (95% CI [16.59, 67.41], t with n=2)**" in text
    # Fine-tuned minus scratch, with its Welch interval: squared standard errors 0.0001 and 0.0004 give
    # 1.47 degrees of freedom, t = 6.19, a half-width of 6.19 * sqrt(0.0005) = 13.84 points.
    assert "Gap between these seed means: **+39.00 points** (95% CI [+25.16, +52.84], Welch t with 1.5 df)." in text
    assert "**Gap: +38.00 points**" in text  # the single best runs: 82 % against 44 %


def test_runs_repeating_one_seed_count_once_in_the_seed_interval(tmp_path):
    """Three runs of seed 0 are one sample: no interval from them, and a repeat does not narrow one over seeds."""
    runs = tmp_path / "runs"
    runs.mkdir()
    for run_id in ("r16", "r17", "r18"):
        add_finished(runs, run_id, "r09", 0.40)
    summary, text = report_of(runs)
    assert summary.seeds_scratch is None and "no scratch_cnn config was repeated over seeds" in section(text, 1)

    add_finished(runs, "r19", "r09", 0.30, seed=1)  # seed 0 three times at 40 %, seed 1 once at 30 %
    summary, text = report_of(runs)
    ci = summary.seeds_scratch.ci
    assert (ci.n, ci.mean) == (2, pytest.approx(0.35))  # the mean of the seeds' means, not 37.5 % over four runs
    assert ci.half_width == pytest.approx(scipy_stats.t.ppf(0.975, df=1) * 0.05)
    assert "over 2 seeds (0, 1; runs `r16`, `r17`, `r18`, `r19`; runs of one seed averaged first)" in section(text, 1)


def test_seeds_measured_on_other_data_are_not_one_interval(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    add_finished(runs, "r16", "r09", 0.40, seed=0)
    add_run(runs, "r17", "r09", [0.3, 0.9], finished_summary("r09", 0.9, **{metrics.SPLIT_HASH: "other-split"}), seed=1)
    assert report_of(runs)[0].seeds_scratch is None  # one seed on each split: no interval across the two
    add_finished(runs, "r18", "r09", 0.44, seed=1)
    assert [r.run_id for r in report_of(runs)[0].seeds_scratch.records] == ["r16", "r18"]
    # A data hash that older runs did not record is unknown, not different: the seeds still pool.
    add_run(runs, "r19", "r09", [0.3, 0.42], finished_summary("r09", 0.42, **{metrics.DATA_HASH: "files-a"}), seed=2)
    assert [r.run_id for r in report_of(runs)[0].seeds_scratch.records] == ["r16", "r18", "r19"]


def test_a_run_retried_at_half_the_batch_is_shown_and_grouped_as_it_trained(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    add_finished(runs, "r16", "r09", 0.40, seed=0)
    add_finished(runs, "r17", "r09", 0.44, seed=1)
    retried = finished_summary("r09", 0.60, **{metrics.BATCH_SIZE: 16, metrics.BATCH_SIZE_ASKED: 32})
    add_run(runs, "r18", "r09", [0.5, 0.6], retried, seed=2)  # config.yaml asks for 32
    summary, text = report_of(runs)
    assert [r.run_id for r in summary.seeds_scratch.records] == ["r16", "r17"]  # not averaged with the 32s
    record = next(r for r in summary.successful if r.run_id == "r18")
    assert (record.config["batch_size"], record.batch_size_asked) == (16, 32)
    assert "1 run(s) trained at a smaller batch_size than their config asked" in text and "r18 (16, not 32)" in text
    csv_row = next(row for row in csv.DictReader(runs_csv(load_table(str(runs))).splitlines()) if row["run_id"] == "r18")
    assert csv_row["batch_size"] == "16"


def test_the_fixtures_seed_interval_in_percentage_points(built):
    # mean 81 %, sample std 2 points over 3 seeds: t(0.975, 2) = 4.303 times 2 / sqrt(3) = 4.97 points
    assert "**81.00% ± 4.97 (95% CI [76.03, 85.97], t with n=3)**" in section(built[1], 1)


def test_group_std_is_in_percentage_points(built):
    # head_only on resnet50: 72 % and 69 %, a sample std of 3 / sqrt(2) = 2.12 points; r13 stopped early
    assert f"| resnet50 | – | head_only | 2 | {percent(0.72)} | {percent(0.705)} | 2.12 | 1 |" in section(built[1], 3)


def test_learning_curves_show_each_strategys_best_over_all_models(summary):
    # last_k ran on resnet50 (r02, 81 %) and efficientnet_b0 (r04, 83 %): one curve, r04's
    assert [r.run_id for r in summary.best_per_strategy] == ["r01", "r07", "r04", "r03", "r10"]


def test_comparability_warnings_for_selection_on_test_missing_splits_and_a_minimising_sweep(tmp_path, sweep_dir):
    import shutil

    shutil.copytree(sweep_dir, tmp_path / "sweep")
    sweep_path = tmp_path / "sweep" / "sweep.yaml"
    sweep_path.write_text(sweep_path.read_text().replace("maximize", "minimize"))
    test_dir = tmp_path / "sweep" / "runs" / "r06" / "test"
    test_dir.mkdir()
    (test_dir / "test.json").write_text(json.dumps({"test_acc": 0.8, "num_images": 2000, "checkpoint": "best.pt"}))
    summary_path = tmp_path / "sweep" / "runs" / "r02" / "summary.json"
    summary_path.write_text(json.dumps(without(json.loads(summary_path.read_text()), metrics.SPLIT_HASH)))
    summary, text = report_of(tmp_path / "sweep")
    # r04 and r06 are two seeds of one config: testing every seed of one fixed config is not selection.
    assert not any("evaluated on the test set" in warning for warning in summary.provenance.warnings)
    test_dir = tmp_path / "sweep" / "runs" / "r02" / "test"  # another config tested too: now there is a choice
    test_dir.mkdir()
    (test_dir / "test.json").write_text(json.dumps({"test_acc": 0.7, "num_images": 2000, "checkpoint": "best.pt"}))
    summary, text = report_of(tmp_path / "sweep")
    expected = [
        f"1 successful runs recorded no {metrics.SPLIT_HASH}: nothing shows which data split they were measured on",
        f"the sweep's metric goal is 'minimize'; {metrics.VAL_ACC} should be maximized",
        "3 runs of 2 different configs were evaluated on the test set (r02, r04, r06): choosing among them by test accuracy "
        "turns the test set into a validation set",
    ]
    assert summary.provenance.warnings == expected
    for warning in expected:
        assert f"> **WARNING:** {warning}" in text


def test_a_null_parameter_stays_apart_from_its_only_value_in_importance(tmp_path):
    """momentum is null for adamw and 0.9 for sgd: were null read as 0.9, it would explain nothing."""
    runs = tmp_path / "runs"
    runs.mkdir()
    for run_id, best, optimizer, momentum in (("r16", 0.60, "adamw", None), ("r17", 0.62, "adamw", None),
                                              ("r18", 0.80, "sgd", 0.9), ("r19", 0.82, "sgd", 0.9)):
        add_finished(runs, run_id, "r01", best, optimizer=optimizer, momentum=momentum)
    text = section(report_of(runs)[1], 5)
    assert "| `momentum` | 1.000 | – | numeric | `optimizer` |" in text


def test_importance_folds_a_parameter_into_the_one_it_follows_not_the_reverse(tmp_path):
    """backbone_lr_mult follows model (0.1 for either backbone); lr, different in every run, follows nothing."""
    runs = tmp_path / "runs"
    runs.mkdir()
    for run_id, like, best, lr in (("r16", "r02", 0.70, 1e-3), ("r17", "r02", 0.75, 3e-4),
                                   ("r18", "r04", 0.80, 1e-4), ("r19", "r04", 0.78, 3e-3),
                                   ("r20", "r09", 0.45, 2e-3)):
        add_finished(runs, run_id, like, best, lr=lr)
    summary, text = report_of(runs)
    rows = {row.parameter: row for row in summary.importance}
    assert set(rows) == {"model", "lr"} and "backbone_lr_mult" in rows["model"].stands_for
    assert rows["lr"].kind == "numeric" and "| `lr` |" in section(text, 5)


def test_runs_csv_records_the_weights_version_the_run_loaded(tmp_path):
    (tmp_path / "runs").mkdir()
    loaded = {**make_summary("r01"), metrics.WEIGHTS_VERSION: "ResNet50_Weights.IMAGENET1K_V2"}
    add_run(tmp_path / "runs", "r16", "r01", [0.6, 0.72, 0.7], loaded, weights="imagenet")
    rows = list(csv.DictReader(runs_csv(load_table(str(tmp_path / "runs"))).splitlines()))
    assert (rows[0]["weights"], rows[0][metrics.WEIGHTS_VERSION]) == ("imagenet", "ResNet50_Weights.IMAGENET1K_V2")


def test_runs_refused_before_training_are_grouped_by_their_mistake(tmp_path):
    from trainer.config import parse_run_config
    from trainer.run import run_training

    runs = tmp_path / "runs"
    runs.mkdir()
    add_finished(runs, "r16", "r01", 0.7)
    add_run(runs, "r17", "r01", [0.4], {**finished_summary("r01", 0.4), metrics.STATE: metrics.FAILED, metrics.REASON: "a bug",
                                         "exit_code": 1})
    for attempt in ("typo-1", "typo-2"):  # the same --data_dir typo, tried twice
        with pytest.raises(UserError, match="no dataset found"):  # agent.py prints it as one line, exit status 2
            run_training(parse_run_config({"data_dir": str(tmp_path / "datsets"), "output_dir": str(runs), "run_id": attempt,
                                           "model": "scratch_cnn", "wandb_mode": "disabled", "download": "false"}))
    summary, text = report_of(runs)
    assert {state: [r.run_id for r in records] for state, records in summary.not_counted} == {"failed": ["r17", "typo-1", "typo-2"]}
    part = section(text, 6)
    assert "| `r17` | failed |" in part and "| `typo-1` |" not in part  # a real failure keeps its row
    assert "**Refused before training** (2 run(s), counted as failed above)" in part
    [row] = [line for line in part.splitlines() if "`typo-1`, `typo-2`" in line]
    assert row.startswith(f"| no dataset found in {tmp_path / 'datsets'}")


def test_a_wandb_run_refused_before_training_is_grouped_too(monkeypatch):
    refused = FakeRun("r11", "failed", {metrics.STATE: metrics.FAILED, metrics.REASON: "weights file gone.pt not found",
                                        metrics.EXIT_CODE: 2}, as_object=True)
    refused._history = []  # refused before its first epoch
    fake_wandb(monkeypatch, FakeSweep([refused, FakeRun("r01", "finished", make_summary("r01"), as_object=False)]))
    _, text = report_of("team/project/abc123")
    assert "| weights file gone.pt not found | `r11` |" in section(text, 6)


def test_a_pareto_front_holds_exactly_the_runs_nothing_beats():
    points = {"cheap": (0.80, 100.0), "as_good_but_dearer": (0.80, 200.0), "as_cheap_but_worse": (0.70, 100.0),
              "best": (0.90, 300.0), "beaten_by_best": (0.85, 400.0), "cheapest": (0.50, 50.0)}
    assert pareto_front(points) == {"cheapest", "cheap", "best"}


def test_cost_columns_show_train_seconds_and_trainable_params_not_total(built):
    _, text = built
    # r01: 100 s, 20,490 trainable of 23,528,522 parameters; Pareto-optimal on both costs
    assert section(text, 4).count(f"| `r01` | resnet50 | – | head_only | {percent(0.72)} | 100 | 500 | 20,490 |") == 2
    [row] = [line for line in section(text, 2).splitlines() if "`r01`" in line]
    assert row.endswith(f"| {percent(0.72)} | 2/3 | 100 | 500 | 20,490 |")


def test_scratch_cnn_comes_after_every_pretrained_model(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    add_finished(runs, "r16", "r09", 0.5)
    add_finished(runs, "r17", "r01", 0.7, model="vit_b_16")  # sorts after scratch_cnn by name
    add_finished(runs, "r18", "r01", 0.6)
    summary, _ = report_of(runs)
    assert [g.model for g in summary.groups] == ["resnet50", "vit_b_16", "scratch_cnn"]


def test_weights_none_in_the_config_alone_makes_a_run_random_init_not_fine_tuned(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    # A summary that did not record the weights it loaded: the config's weights=none still says random init.
    add_run(runs, "r16", "r04", [0.7, 0.9], without(finished_summary("r04", 0.9), metrics.WEIGHTS_VERSION),
            weights="none")
    add_finished(runs, "r17", "r04", 0.8)
    add_finished(runs, "r18", "r09", 0.5)
    summary, _ = report_of(runs)
    assert summary.leaderboard[0].run_id == "r16" and summary.best_random_init.run_id == "r16"
    assert (summary.best_fine_tuned.run_id, summary.best_scratch.run_id) == ("r17", "r18")
    assert summary.gap_points == pytest.approx(30.0)  # 80 % fine-tuned against 50 % scratch, not 90 % against it


def test_random_init_runs_of_a_pretrained_architecture_are_a_group_of_their_own(tmp_path):
    """resnet50 full from ImageNet and from random weights are two experiments: one mean would hide both."""
    runs = tmp_path / "runs"
    runs.mkdir()
    add_finished(runs, "r16", "r03", 0.8)
    add_finished(runs, "r17", "r03", 0.9, lr=3e-4)
    add_run(runs, "r18", "r03", [0.3, 0.4], {**finished_summary("r03", 0.4), metrics.WEIGHTS_VERSION: "none"}, weights="none")
    summary, text = report_of(runs)
    groups = {(g.model, g.strategy): (g.stats.count, g.stats.mean) for g in summary.groups}
    assert groups == {("resnet50", "full"): (2, pytest.approx(0.85)), ("resnet50 (random init)", "full"): (1, pytest.approx(0.4))}
    assert "| `r18` | resnet50 (random init) | – | full |" in section(text, 2)
    assert [r.run_id for r in summary.best_per_strategy] == ["r17", "r18"]  # its own learning curve, not hidden


def test_runs_from_another_weights_version_or_a_checkpoint_are_groups_of_their_own(tmp_path):
    """ResNet-50 V1 is ~5 points behind V2 head-only: one mean over both would describe neither (pitfall 9)."""
    import shutil

    runs = tmp_path / "runs"
    runs.mkdir()
    add_finished(runs, "r16", "r03", 0.8)
    add_run(runs, "r17", "r03", [0.6, 0.7], {**finished_summary("r03", 0.7), metrics.WEIGHTS_VERSION: "ResNet50_Weights.IMAGENET1K_V1"},
            weights="IMAGENET1K_V1")
    add_run(runs, "r18", "r03", [0.8, 0.9], {**finished_summary("r03", 0.9), metrics.WEIGHTS_VERSION: "file:/runs/r16/best.pt"},
            weights="/runs/r16/best.pt")
    summary, text = report_of(runs)
    groups = {(g.model, g.strategy): g.stats.count for g in summary.groups}
    assert groups == {("resnet50 (IMAGENET1K_V2)", "full"): 1, ("resnet50 (IMAGENET1K_V1)", "full"): 1,
                      ("resnet50 (warm start)", "full"): 1}  # versions named where the sweep holds two
    assert "| `r17` | resnet50 (IMAGENET1K_V1) | – | full |" in section(text, 2)
    assert "model resnet50 ran with 2 different weights versions" in text  # the checkpoint is not a third
    shutil.rmtree(runs / "r17")
    summary, _ = report_of(runs)  # one version left: the plain model name again
    assert {g.model for g in summary.groups} == {"resnet50", "resnet50 (warm start)"}


def test_a_run_that_recorded_no_weights_is_not_taken_for_random_init():
    from report.table import RunRecord

    config = without(make_config("r04"), "weights")  # weights unknown: neither record says none
    record = RunRecord("r16", metrics.FINISHED, config, without(make_summary("r04"), metrics.WEIGHTS_VERSION))
    assert not record.is_random_init and record.is_fine_tuned


def test_runs_without_a_logged_epoch_draw_no_empty_learning_curves(tmp_path, sweep_dir):
    import shutil

    for run_id in ("r01", "r09"):  # metrics.jsonl lost: the summaries' numbers stand, there is no curve to draw
        shutil.copytree(sweep_dir / "runs" / run_id, tmp_path / "runs" / run_id)
        (tmp_path / "runs" / run_id / "metrics.jsonl").unlink()
    text = build_report(str(tmp_path / "runs"), tmp_path / "out").read_text()
    assert (tmp_path / "out" / FIGURES["cost"]).stat().st_size > 0 and f"]({FIGURES['cost']})" in text
    assert not (tmp_path / "out" / FIGURES["curves"]).exists() and FIGURES["curves"] not in text


def test_a_report_without_matplotlib_still_gives_its_numbers(tmp_path, sweep_dir, monkeypatch):
    import importlib
    import sys

    import report

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` meets when it is not installed
    for name in ("report.plots", "report.build"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.delattr(report, "plots", raising=False)
    monkeypatch.delattr(report, "build", raising=False)
    build = importlib.import_module("report.build")
    text = build.build_report(str(sweep_dir), tmp_path / "out").read_text()
    assert table_run_ids(section(text, 2))[:3] == ["r04", "r06", "r02"] and "+35.00 points" in section(text, 1)
    assert (tmp_path / "out" / "runs.csv").exists() and not list((tmp_path / "out").glob("*.png"))
    assert not any(f"]({name})" in text for name in FIGURES.values())


# --- pinned by a mutation audit of the report's run grouping and provenance -------------------------------

def test_a_run_from_a_relative_checkpoint_path_is_a_warm_start_before_it_recorded_its_weights():
    from report.table import RunRecord

    # `--weights=best.pt` (no slash) in the config; the summary has no weights version yet (it died first).
    record = RunRecord("r16", metrics.FAILED, {**make_config("r03"), "weights": "best.pt"},
                       without(make_summary("r03"), metrics.WEIGHTS_VERSION))
    assert record.is_warm_start and record.model_label == "resnet50 (warm start)"


def test_seeds_trained_on_other_files_under_the_same_names_are_not_one_interval(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    add_run(runs, "r16", "r09", [0.3, 0.4], finished_summary("r09", 0.4, **{metrics.DATA_HASH: "files-a"}), seed=0)
    add_run(runs, "r17", "r09", [0.3, 0.9], finished_summary("r09", 0.9, **{metrics.DATA_HASH: "files-b"}), seed=1)
    assert report_of(runs)[0].seeds_scratch is None  # same split, replaced images: one seed on each
    add_run(runs, "r18", "r09", [0.3, 0.44], finished_summary("r09", 0.44, **{metrics.DATA_HASH: "files-a"}), seed=1)
    assert [r.run_id for r in report_of(runs)[0].seeds_scratch.records] == ["r16", "r18"]


def test_runs_on_another_split_are_not_also_said_to_have_replaced_images(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    add_run(runs, "r16", "r09", [0.3, 0.4], finished_summary("r09", 0.4, **{metrics.DATA_HASH: "files-a"}))
    other = finished_summary("r09", 0.5, **{metrics.DATA_HASH: "files-b", metrics.SPLIT_HASH: "other-split"})
    add_run(runs, "r17", "r09", [0.3, 0.5], other, seed=1)
    warnings = " ".join(report_of(runs)[0].provenance.warnings)
    assert "2 different data splits" in warnings and "different sets of files" not in warnings


def test_random_init_runs_are_not_another_weights_version_of_their_model(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    add_finished(runs, "r16", "r03", 0.8)
    add_run(runs, "r17", "r03", [0.3, 0.4], {**finished_summary("r03", 0.4), metrics.WEIGHTS_VERSION: "none"}, weights="none")
    warnings = " ".join(report_of(runs)[0].provenance.warnings)
    assert "used weights=none" in warnings and "different weights versions" not in warnings


def test_a_wandb_run_in_a_state_we_do_not_know_keeps_our_running_state():
    from report.sources import _wandb_record

    said_running = {**make_summary("r01"), metrics.STATE: metrics.RUNNING, metrics.REASON: None}
    for wandb_state in ("", "some-new-state"):
        record = _wandb_record(FakeRun("r01", wandb_state, said_running, as_object=True))
        assert (record.state, record.reason) == (metrics.RUNNING, None)


def test_a_sweeps_run_whose_process_is_gone_says_to_run_the_sweep_again(tmp_path, sweep_dir):
    import shutil

    shutil.copytree(sweep_dir, tmp_path / "sweep")
    summary_path = tmp_path / "sweep" / "runs" / "r03" / "summary.json"
    summary_path.write_text(json.dumps({**json.loads(summary_path.read_text()), metrics.STATE: "running", metrics.REASON: None}))
    record = {r.run_id: r for r in load_table(str(tmp_path / "sweep")).records}["r03"]
    assert record.state == "preempted" and record.reason.endswith("run the sweep command again to resume it")


def test_runs_on_several_devices_or_precisions_are_flagged_and_their_seconds_qualified(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    on = {"r16": ("Tesla T4", "float16"), "r17": ("Tesla T4", "float16"), "r18": ("NVIDIA A100-SXM4-80GB", "bfloat16")}
    for seed, (run_id, (device, precision)) in enumerate(on.items()):
        summary = finished_summary("r01", 0.7 + seed / 100, **{metrics.DEVICE: device, "precision": precision})
        add_run(runs, run_id, "r01", [0.6, 0.7 + seed / 100], summary, seed=seed)
    add_run(runs, "r19", "r01", [0.6, 0.75], without(finished_summary("r01", 0.75), metrics.DEVICE), seed=3)  # older
    summary, text = report_of(runs)
    assert ("runs trained on 2 different devices (NVIDIA A100-SXM4-80GB x1, Tesla T4 x2): their train seconds compare "
            "only within one device") in summary.provenance.warnings
    assert any(w.startswith("runs trained at 2 different precisions (bfloat16 x1, float16 x2)")
               for w in summary.provenance.warnings)
    assert "No comparability warnings." not in text
    assert ("- Devices of successful runs: `NVIDIA A100-SXM4-80GB` x1, `Tesla T4` x2; precisions: `bfloat16` x1, "
            "`float16` x2") in section(text, 8)
    assert ("*Train s* compare only within one device and precision, and these runs span several (devices: "
            "`NVIDIA A100-SXM4-80GB` x1, `Tesla T4` x2; precisions: `bfloat16` x1, `float16` x2)") in section(text, 4)
    csv_row = next(row for row in csv.DictReader(runs_csv(load_table(str(runs))).splitlines()) if row["run_id"] == "r18")
    assert (csv_row[metrics.DEVICE], csv_row["precision"]) == ("NVIDIA A100-SXM4-80GB", "bfloat16")

    for run_id in on:  # one device and one precision: nothing to say
        path = runs / run_id / "summary.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), metrics.DEVICE: "Tesla T4", "precision": "float16"}))
    summary, text = report_of(runs)
    assert "No comparability warnings." in text and "compare only within" not in text


def test_a_seed_mean_gap_whose_interval_holds_zero_is_not_a_bold_number(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for seed, best in enumerate((0.60, 0.80, 0.70)):
        add_finished(runs, f"r2{seed}", "r01", best, seed=seed)
    for seed, best in enumerate((0.50, 0.52)):
        add_finished(runs, f"r3{seed}", "r09", best, seed=seed)
    summary, text = report_of(runs)
    # 70 % over 3 seeds against 51 % over 2: squared standard errors 0.01 / 3 and 0.0002 / 2, 2.12 degrees of
    # freedom (Welch-Satterthwaite), t = 4.08, a half-width of 23.91 points: from -4.91 to +42.91.
    gap = summary.seed_gap
    expected = scipy_stats.ttest_ind([0.60, 0.80, 0.70], [0.50, 0.52], equal_var=False)
    assert (gap.low, gap.high) == (pytest.approx(expected.confidence_interval().low),
                                   pytest.approx(expected.confidence_interval().high))
    assert gap.df == pytest.approx(expected.df) and not gap.excludes_zero
    headline = section(text, 1)
    assert ("- Gap between these seed means: +19.00 points (95% CI [-4.91, +42.91], Welch t with 2.1 df), an interval "
            "that holds 0: **not distinguishable with these seeds**.") in headline
    assert "**+19.00 points**" not in headline
    assert difference_ci([0.5], [0.4, 0.45]) is None  # one seed a side has no spread to measure


def test_interval_bounds_past_0_or_100_percent_are_clipped_and_marked(tmp_path):
    assert ci_text(mean_ci([0.10, 0.14])) == "12.00% ± 25.41 (95% CI [0.00 (clipped), 37.41], t with n=2)"
    assert ci_text(mean_ci([0.96, 0.92])) == "94.00% ± 25.41 (95% CI [68.59, 100.00 (clipped)], t with n=2)"
    assert mean_ci([0.10, 0.14]).low == pytest.approx(-0.1341, abs=1e-4)  # the number itself stays as computed
    runs = tmp_path / "runs"
    runs.mkdir()
    for seed, best in enumerate((0.10, 0.14)):
        add_finished(runs, f"r1{seed}", "r09", best, seed=seed)
    assert "reaches **12.00% ± 25.41 (95% CI [0.00 (clipped), 37.41], t with n=2)**" in section(report_of(runs)[1], 1)


def test_the_over_seeds_clause_stands_only_under_a_best_run_of_its_group(tmp_path):
    scratch_only, fine_tuned_only, all_failed = (tmp_path / name for name in ("scratch", "fine_tuned", "failed"))
    for folder in (scratch_only, fine_tuned_only, all_failed):
        folder.mkdir()
    add_finished(scratch_only, "r16", "r09", 0.45)
    add_finished(fine_tuned_only, "r17", "r01", 0.75)
    diverged = finished_summary("r01", 0.9, **{metrics.STATE: metrics.DIVERGED, metrics.REASON: "train_loss is nan"})
    add_run(all_failed, "r18", "r01", [0.8, 0.9], diverged)
    text = section(report_of(scratch_only)[1], 1)
    assert "Over seeds (scratch_cnn): no scratch_cnn config" in text and "Over seeds (fine-tuned)" not in text
    text = section(report_of(fine_tuned_only)[1], 1)
    assert "Over seeds (fine-tuned): no fine-tuned config" in text and "Over seeds (scratch_cnn)" not in text
    text = section(report_of(all_failed)[1], 1)
    assert "No successful run" in text and "Over seeds" not in text


def test_the_headline_keeps_a_warm_start_out_of_imagenet_fine_tuning(tmp_path):
    """A random state_dict passed as --weights=FILE once became the "best fine-tuned run": a warm start is a start of
    its own, named with its file and content hash, however well it does."""
    runs = tmp_path / "runs"
    runs.mkdir()
    add_finished(runs, "r16", "r03", 0.7)  # ImageNet V2
    add_run(runs, "r17", "r03", [0.8, 0.95], {**finished_summary("r03", 0.95), metrics.WEIGHTS_VERSION: "file:/w/mine.pt",
                                              metrics.WEIGHTS_SHA256: "ab" * 32}, weights="/w/mine.pt")
    add_run(runs, "r18", "r03", [0.5, 0.6], {**finished_summary("r03", 0.6), metrics.WEIGHTS_VERSION: "none"}, weights="none")
    add_finished(runs, "r19", "r10", 0.5)  # the scratch CNN
    add_run(runs, "r20", "r10", [0.8, 0.9], {**finished_summary("r10", 0.9), metrics.WEIGHTS_VERSION: "file:/w/cnn.pt"},
            weights="/w/cnn.pt")  # a scratch CNN warm-started from a file is not the scratch baseline either
    summary, text = report_of(runs)
    assert [r.start for r in (summary.best_fine_tuned, summary.best_warm_start, summary.best_random_init, summary.best_scratch)] == \
        ["imagenet", "warm_start", "random_init", "scratch"]
    assert (summary.best_fine_tuned.run_id, summary.best_warm_start.run_id, summary.best_scratch.run_id) == ("r16", "r17", "r19")
    assert summary.gap_points == pytest.approx((0.7 - 0.5) * 100)  # ImageNet fine-tuned minus scratch, never the warm start
    headline = section(text, 1)
    assert "**Best ImageNet fine-tuned run: `r16`**" in headline and "**Best scratch_cnn run: `r19`**" in headline
    assert "**Best warm start (from a weights file, not ImageNet fine-tuning): `r17`**" in headline
    assert "Started from `/w/mine.pt` (sha256 `abababababab`)" in headline
    assert "2 run(s) started from weights files that are not torchvision's ImageNet files" in text


def test_resolution_is_shown_grouped_and_costed(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    add_run(runs, "r16", "r03", [0.6, 0.7], {**finished_summary("r03", 0.7), metrics.PEAK_GPU_MEMORY: 3.5}, input_size=224)
    add_run(runs, "r17", "r03", [0.7, 0.8], {**finished_summary("r03", 0.8), metrics.PEAK_GPU_MEMORY: 8.0}, input_size=352)
    add_run(runs, "r18", "r03", [0.7, 0.75], {**finished_summary("r03", 0.75), metrics.PEAK_GPU_MEMORY: 3.5},
            input_size=224, eval_size=288, seed=1)
    summary, text = report_of(runs)
    assert {(g.model, g.size, g.stats.count) for g in summary.groups} == {("resnet50", "224", 1), ("resnet50", "352", 1),
                                                                          ("resnet50", "224→288", 1)}
    assert [g.size for g in summary.groups] == ["224", "224→288", "352"]  # by resolution within a model and strategy
    assert "| `r17` | resnet50 | 352 | full |" in section(text, 2)
    assert summary.pareto_memory == {"r17", "r18"}  # r16 ties r18 on memory at lower accuracy
    cost = section(text, 4)
    assert "**Against peak GPU memory**" in cost and "| `r17` | resnet50 | 352 | full | 80.00% | 600 | 500 | 23,528,522 | 8.00 |" in cost


def test_without_imagenet_runs_the_headline_compares_a_warm_start_with_the_scratch_cnn(tmp_path):
    """The offline demo: a backbone warm-started from a weights file against the scratch CNN. The headline gives their
    gap, labelled as a warm start's, rather than saying there is nothing to compare."""
    runs = tmp_path / "runs"
    runs.mkdir()
    add_run(runs, "r17", "r03", [0.8, 0.9], {**finished_summary("r03", 0.9), metrics.WEIGHTS_VERSION: "file:/w/mine.pt"},
            weights="/w/mine.pt")
    add_finished(runs, "r19", "r10", 0.5)
    summary, text = report_of(runs)
    headline = section(text, 1)
    assert summary.best_fine_tuned is None and summary.gap_points is None  # a warm start never counts as fine-tuned
    assert "**Gap: +40.00 points** (best warm start minus best scratch_cnn, single runs)" in headline
    assert "not ImageNet fine-tuning" in headline and "nothing to compare" not in headline
