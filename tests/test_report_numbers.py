"""The report's numbers equal what the table of runs implies: on the synthetic sweep of tests/report_helpers.py,
every expected number below can be checked with a pencil (leaderboard, groups, headline gap and seed interval,
Pareto fronts, importance, the runs that did not count, the test section, costs, figures and runs.csv)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image
from scipy import stats as scipy_stats

from report.build import FIGURES, build_report
from report.markdown import ci_text, percent, points
from report.sources import load_table
from report.stats import pareto_front, summarise
from report.table import CODE_VERSION
from report_helpers import OOM_REASON, RUNS, SUCCESSFUL, expected_best, make_summary, section, table_run_ids
from trainer import metrics


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


def test_the_fixtures_seed_interval_in_percentage_points(built):
    # mean 81 %, sample std 2 points over 3 seeds: t(0.975, 2) = 4.303 times 2 / sqrt(3) = 4.97 points
    assert "**81.00% ± 4.97 (95% CI [76.03, 85.97], t with n=3)**" in section(built[1], 1)


def test_group_std_is_in_percentage_points(built):
    # head_only on resnet50: 72 % and 69 %, a sample std of 3 / sqrt(2) = 2.12 points; r13 stopped early
    assert f"| resnet50 | – | head_only | 2 | {percent(0.72)} | {percent(0.705)} | 2.12 | 1 |" in section(built[1], 3)


def test_learning_curves_show_each_strategys_best_over_all_models(summary):
    # last_k ran on resnet50 (r02, 81 %) and efficientnet_b0 (r04, 83 %): one curve, r04's
    assert [r.run_id for r in summary.best_per_strategy] == ["r01", "r07", "r04", "r03", "r10"]


def test_cost_columns_show_train_seconds_and_trainable_params_not_total(built):
    _, text = built
    # r01: 100 s, 20,490 trainable of 23,528,522 parameters; Pareto-optimal on both costs
    assert section(text, 4).count(f"| `r01` | resnet50 | – | head_only | {percent(0.72)} | 100 | 500 | 20,490 |") == 2
    [row] = [line for line in section(text, 2).splitlines() if "`r01`" in line]
    assert row.endswith(f"| {percent(0.72)} | 2/3 | 100 | 500 | 20,490 |")


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
