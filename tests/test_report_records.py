"""How a run's record is read: its best epoch and val_acc (from the summary, else the history; ties, torn lines,
epochs out of order), its training time, its state when the summary lacks one, what runs.csv records, and a test
result that belongs to an earlier best epoch."""

from __future__ import annotations

import csv
import json

from report.build import runs_csv
from report.markdown import percent
from report.sources import load_table
from report.stats import summarise
from report_helpers import (
    add_finished,
    add_run,
    epochs,
    finished_summary,
    make_config,
    make_summary,
    report_of,
    rewrite_metrics,
    section,
    table_run_ids,
    without,
)
from trainer import metrics


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


def test_tied_epochs_go_to_the_lower_val_loss_then_to_the_first(tmp_path):
    """The training loop's rule (trainer/loop.py is_better), read back from a history without a summary best."""
    (tmp_path / "runs").mkdir()
    no_best = without(make_summary("r01"), metrics.BEST_VAL_ACC, metrics.BEST_EPOCH)
    add_run(tmp_path / "runs", "r16", "r01", [0.6, 0.8, 0.8], no_best)  # equal val_loss at the tie (1.2 - acc)
    summary, text = report_of(tmp_path / "runs")
    assert summary.leaderboard[0].best_epoch == 2  # the checkpoint kept is the first to reach 80 %
    assert f"| {percent(0.8)} | 2/3 |" in section(text, 2)
    metrics_file = tmp_path / "runs" / "r16" / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    rows[2][metrics.VAL_LOSS] = rows[1][metrics.VAL_LOSS] - 0.1  # epoch 3 ties on accuracy with a lower loss
    metrics_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    summary, text = report_of(tmp_path / "runs")
    assert summary.leaderboard[0].best_epoch == 3 and f"| {percent(0.8)} | 3/3 |" in section(text, 2)


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


def test_runs_csv_records_the_weights_version_the_run_loaded(tmp_path):
    (tmp_path / "runs").mkdir()
    loaded = {**make_summary("r01"), metrics.WEIGHTS_VERSION: "ResNet50_Weights.IMAGENET1K_V2"}
    add_run(tmp_path / "runs", "r16", "r01", [0.6, 0.72, 0.7], loaded, weights="imagenet")
    rows = list(csv.DictReader(runs_csv(load_table(str(tmp_path / "runs"))).splitlines()))
    assert (rows[0]["weights"], rows[0][metrics.WEIGHTS_VERSION]) == ("imagenet", "ResNet50_Weights.IMAGENET1K_V2")


def test_a_run_no_better_than_chance_is_named_in_the_warnings(tmp_path):
    from report.stats import _provenance
    from report.table import RunRecord, RunTable

    def run(run_id: str, best: float) -> RunRecord:
        return RunRecord(run_id, metrics.FINISHED, {"model": "scratch_cnn"},
                         {metrics.STATE: metrics.FINISHED, metrics.BEST_VAL_ACC: best, "classes": ["a", "b", "c"]})

    chance, learned = run("r1", 1 / 3), run("r2", 0.34)
    assert chance.at_chance and not learned.at_chance
    warnings = _provenance(RunTable([chance, learned], "s", "s"), [chance, learned]).warnings
    assert any(w.startswith("1 successful run(s) never beat chance") and "`r1`" in w and "`r2`" not in w
               for w in warnings)
