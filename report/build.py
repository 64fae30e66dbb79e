"""Build a report folder from a sweep: report.md, its PNG figures and runs.csv, from one computed summary."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from common.atomic import write_bytes, write_text
from common.disk import ensure_writable
from report.markdown import render
from report.sources import load_table
from report.stats import Summary, summarise
from report.table import CODE_VERSION, CONFIG_HASH, MODEL, PRECISION, STRATEGY, TEST_ACC, RunRecord, RunTable
from trainer import metrics

REPORT_FILE = "report.md"
RUNS_CSV = "runs.csv"
FIGURES = {  # role -> file name, linked relative to report.md
    "by_strategy": "val_acc_by_strategy.png",
    "cost": "accuracy_vs_cost.png",
    "curves": "learning_curves.png",
    "importance": "importance.png",
    "data_efficiency": "data_efficiency.png",
}
TEST_FIGURES = (("confusion matrix", "confusion.png"), ("prediction grid", "grid.png"))

# The run's outcome and its provenance, after its config, in runs.csv.
RESULT_COLUMNS = (metrics.BEST_VAL_ACC, metrics.BEST_EPOCH, metrics.EPOCHS_COMPLETED, metrics.TRAIN_SECONDS,
                  metrics.IMAGES_PER_SECOND, metrics.PEAK_GPU_MEMORY, metrics.TRAINABLE_PARAMS, metrics.TOTAL_PARAMS,
                  "start",
                  metrics.WEIGHTS_VERSION, metrics.WEIGHTS_SHA256, metrics.SPLIT_HASH,
                  CONFIG_HASH, CODE_VERSION, metrics.DEVICE, PRECISION, metrics.REASON, TEST_ACC)


def build_report(source: str, out_dir: Path, top_n: int = 10, allow_lost_seeds: bool = False) -> Path:
    """Read the sweep once, compute every number once, then write the figures, runs.csv and report.md."""
    table = load_table(source)  # first: a source that cannot be read leaves no empty report folder behind
    out_dir = ensure_writable(out_dir, "report folder", "--out")
    summary = summarise(table, top_n=top_n, allow_lost_seeds=allow_lost_seeds)
    images = _write_figures(summary, out_dir)
    test_images = _copy_test_figures(summary, out_dir)
    write_text(out_dir / RUNS_CSV, runs_csv(table))
    report = out_dir / REPORT_FILE
    write_text(report, render(summary, images, test_images))
    return report


def _write_figures(summary: Summary, out_dir: Path) -> dict[str, str]:
    has_data = {  # an empty figure says less than no figure
        "by_strategy": bool(summary.successful),
        "cost": bool(summary.successful),
        "curves": any(r.history for r in summary.best_per_strategy),
        "importance": bool(summary.importance),
        "data_efficiency": bool(summary.protocol and summary.protocol.curve),
    }
    roles = [role for role, drawn in has_data.items() if drawn]
    if not roles:  # no figure to draw: matplotlib, a third of a second to import, is not loaded
        return {}
    try:
        from report import plots
    except ImportError as error:  # the numbers stand without their figures: report.md and runs.csv still written
        print(f"warning: report without figures ({error}): pip install matplotlib to draw them", flush=True)
        return {}
    drawers = {"by_strategy": plots.plot_val_acc_by_strategy, "cost": plots.plot_cost,
               "curves": plots.plot_learning_curves, "importance": plots.plot_importance,
               "data_efficiency": plots.plot_data_efficiency}
    for role in roles:
        drawers[role](summary, out_dir / FIGURES[role])
    return {role: FIGURES[role] for role in roles}


def _copy_test_figures(summary: Summary, out_dir: Path) -> dict[str, list[tuple[str, str]]]:
    """Copy each tested run's figures beside the report, so its links stay relative and portable."""
    found: dict[str, list[tuple[str, str]]] = {}
    for record in summary.tested:
        if record.folder is None:
            continue
        for caption, name in TEST_FIGURES:
            figure = record.folder / "test" / name
            if figure.exists():
                link = f"test/{record.run_id}/{name}"
                write_bytes(out_dir / link, figure.read_bytes())
                found.setdefault(record.run_id, []).append((f"{record.run_id} {caption}", link))
    return found


def csv_columns(table: RunTable) -> list[str]:
    config_keys = sorted({k for r in table.records for k in r.effective_config} - {MODEL, STRATEGY})
    return ["run_id", metrics.STATE, "stage", MODEL, STRATEGY, *config_keys, *RESULT_COLUMNS]


def runs_csv(table: RunTable) -> str:
    """One row per run (skipped duplicates are not runs): config, outcome and provenance, for tracing."""
    columns = csv_columns(table)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for record in sorted(table.records, key=lambda r: r.run_id):
        row = {"run_id": record.run_id, metrics.STATE: record.state, **record.effective_config,
               "stage": record.config.get("stage") or None, **_result(record)}
        writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    return buffer.getvalue()


def _result(record: RunRecord) -> dict:
    return {
        metrics.BEST_VAL_ACC: record.best_val_acc, metrics.BEST_EPOCH: record.best_epoch,
        metrics.EPOCHS_COMPLETED: record.epochs_completed, metrics.TRAIN_SECONDS: record.train_seconds,
        metrics.TRAINABLE_PARAMS: record.trainable_params, metrics.TOTAL_PARAMS: record.total_params,
        metrics.WEIGHTS_VERSION: record.summary.get(metrics.WEIGHTS_VERSION),
        metrics.WEIGHTS_SHA256: record.weights_sha256,
        "start": record.start, metrics.IMAGES_PER_SECOND: record.images_per_second,
        metrics.PEAK_GPU_MEMORY: record.peak_gpu_memory,
        metrics.SPLIT_HASH: record.summary.get(metrics.SPLIT_HASH), CONFIG_HASH: record.summary.get(CONFIG_HASH),
        CODE_VERSION: record.summary.get(CODE_VERSION),
        metrics.DEVICE: record.summary.get(metrics.DEVICE), PRECISION: record.summary.get(PRECISION),
        metrics.REASON: record.reason, TEST_ACC: record.test_acc,
    }


def _csv_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True)
    return str(value)
