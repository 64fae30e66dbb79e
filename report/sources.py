"""Read a sweep's runs into a `RunTable`: a local sweep folder, a folder of run folders, or a W&B sweep.

Local run folders are the source of truth; a sweep folder's `table.jsonl` only adds trials that never
got a folder (failed before starting) and the duplicates the sweep driver skipped. wandb is imported only
inside `_load_wandb`, so reports from local folders work without it.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from common.errors import UserError
from common.yamlfile import read_yaml
from report.table import (
    CHECKPOINT,
    COMPARE,
    CURVE,
    DUPLICATE,
    NUM_IMAGES,
    PER_CLASS_ACC,
    TEST_ACC,
    RunRecord,
    RunTable,
    SkippedDuplicate,
    finite,
)
from trainer import metrics
from trainer.record import RunRecord as TrainerRecord  # the trainer's own: whether a run is being trained now
from trainer.wandb_log import EFFECTIVE_KEY

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
TEST_FILE = Path("test") / "test.json"
SWEEP_FILE = "sweep.yaml"
TABLE_FILE = "table.jsonl"
RUNS_DIR = "runs"

_WANDB_PATH = re.compile(r"^[^/\s]+/[^/\s]+/[^/\s]+$")

# W&B's own run states, for runs whose summary lacks our `state` (killed before the trainer wrote it).
_WANDB_STATES = {
    "finished": metrics.FINISHED,
    "crashed": metrics.FAILED,
    "failed": metrics.FAILED,
    "killed": metrics.PREEMPTED,
    "preempted": metrics.PREEMPTED,
    "running": metrics.RUNNING,
    "pending": metrics.RUNNING,
}

_WHAT_TO_PASS = ("pass a local sweep folder (with sweep.yaml and runs/), a folder of run folders, "
                 "or a W&B sweep path entity/project/sweep_id")


def load_table(source: str) -> RunTable:
    source = str(source or "").strip()
    if not source:
        raise UserError(f"no report source given: {_WHAT_TO_PASS}")
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"report source {source} is a file, not a folder: {_WHAT_TO_PASS}")
        table = _load_local(path)
    elif _WANDB_PATH.match(source):
        table = _load_wandb(source)
    else:
        raise UserError(f"report source {source} does not exist: {_WHAT_TO_PASS}")
    if not table.records and not table.duplicates:
        raise UserError(f"no runs found in {source}: {_WHAT_TO_PASS}")
    return table


# --- local folders ----------------------------------------------------------------------------------

def _is_run_folder(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in (CONFIG_FILE, SUMMARY_FILE, METRICS_FILE))


def _sweep_folders(path: Path) -> list[Path]:
    """The sweep folders of a protocol folder (tune/<arm>/, compare/, curve/): one or two levels down."""
    found = [p.parent for pattern in (f"*/{SWEEP_FILE}", f"*/*/{SWEEP_FILE}") for p in path.glob(pattern)
             if (p.parent / RUNS_DIR).is_dir()]
    return sorted(set(found))


def _load_local(path: Path) -> RunTable:
    if not _is_run_folder(path) and not (path / RUNS_DIR).is_dir() and _sweep_folders(path):
        # A protocol folder: every stage's sweeps in one table; each run says its stage.
        tables = [_load_local(folder) for folder in _sweep_folders(path)]
        return RunTable(records=[r for t in tables for r in t.records], name=path.resolve().name, source=str(path),
                        metric_name=tables[0].metric_name, metric_goal=tables[0].metric_goal,
                        duplicates=[d for t in tables for d in t.duplicates],
                        grids=_one_grid_per_stage(tables))
    if _is_run_folder(path):  # one run folder: a table of one, no sweep around it
        run_folders, sweep_dir = [path], None
    elif (path / RUNS_DIR).is_dir():  # a sweep folder
        run_folders, sweep_dir = _run_folders(path / RUNS_DIR), path
    else:  # a folder of run folders; `sweep/runs` passed directly still finds the sweep one level up
        run_folders = _run_folders(path)
        sweep_dir = path.parent if (path.parent / SWEEP_FILE).exists() else path
    sweep = _read_yaml(sweep_dir / SWEEP_FILE, "sweep file", "replace it with a copy of the sweep's YAML") \
        if sweep_dir and (sweep_dir / SWEEP_FILE).exists() else {}
    metric = sweep.get("metric") if isinstance(sweep.get("metric"), dict) else {}

    records = [_read_run_folder(folder) for folder in run_folders]
    folder_of = {folder.name: folder for folder in run_folders}
    duplicates: list[SkippedDuplicate] = []
    known = {r.run_id for r in records}
    rows = [row for row in _read_jsonl(sweep_dir / TABLE_FILE) if _is_trial_row(row)] if sweep_dir else []
    ended = {str(row.get("run_id")): row for row in rows if row.get("state") not in (None, metrics.RUNNING, DUPLICATE)}
    for i, record in enumerate(records):
        # A trial killed outright (a signal, a full disk) could not say so in its folder; the sweep's table did.
        row = ended.get(record.run_id)
        # Its summary.json says so from now on: a run nobody trains is not `running` (TrainerRecord.settle).
        if (record.state == metrics.RUNNING and row is not None
                and not TrainerRecord.in_training(folder_of[record.run_id])):
            summary = TrainerRecord.settle(record.folder, str(row["state"]), row.get("reason"), row.get("exit_code"))
            records[i] = dataclasses.replace(record, state=str(row["state"]), summary={**record.summary, **summary})
        elif (record.state == metrics.PREEMPTED and row is not None and row.get("state") == metrics.PREEMPTED
              and row.get("reason")):
            # The trial's own reason says how one run resumes; the sweep's says what resumes a trial of a sweep.
            records[i] = dataclasses.replace(record, summary={**record.summary, metrics.REASON: row["reason"]})
        elif record.state == metrics.RUNNING and not record.reason and not TrainerRecord.in_training(record.folder):
            folder = record.folder
            how = ("run the sweep command again" if sweep else
                   f"`python agent.py --resume --run_id={record.run_id} --output_dir={folder.parent}`")
            reason = (f"not training now: its process was stopped or killed before it could record how it ended; "
                      f"{how} to resume it")
            summary = TrainerRecord.settle(folder, metrics.PREEMPTED, reason)
            records[i] = dataclasses.replace(record, state=str(summary[metrics.STATE]),
                                             summary={**record.summary, **summary})
    for row in rows:
        run_id = str(row.get("run_id"))
        if row.get("state") == DUPLICATE:
            duplicates.append(SkippedDuplicate(run_id, row.get("duplicate_of"), row.get("config") or {}))
        elif run_id not in known:  # a trial that failed before it could create its folder
            summary = {metrics.STATE: row.get("state"), metrics.REASON: row.get("reason"),
                       metrics.EXIT_CODE: row.get("exit_code")}
            records.append(RunRecord(run_id, str(row.get("state") or metrics.FAILED), row.get("config") or {},
                                     summary))
            known.add(run_id)
        elif run_id in folder_of and isinstance(row.get("config"), dict) and row["config"]:
            i = next(i for i, record in enumerate(records) if record.run_id == run_id)
            if not records[i].config:  # its config.yaml was deleted as damaged: the table keeps the trial's settings
                records[i] = dataclasses.replace(records[i], config=dict(row["config"]))
    return RunTable(records=records, name=str(sweep.get("name") or (sweep_dir or path).resolve().name),
                    source=str(path), metric_name=metric.get("name"), metric_goal=metric.get("goal"),
                    duplicates=duplicates, grids=_final_stage_grid(sweep))


def _one_grid_per_stage(tables: list[RunTable]) -> dict[str, dict]:
    """The stages' grids of a folder of sweeps; a stage with two (a folder holding two protocols) has none known."""
    found: dict[str, list[dict]] = {}
    for table in tables:
        for stage, grid in table.grids.items():
            found.setdefault(stage, []).append(grid)
    return {stage: grids[0] for stage, grids in found.items() if len(grids) == 1}


def _final_stage_grid(sweep: dict) -> dict[str, dict]:
    """{stage: parameters} for a compare or curve sweep (its `stage` fixed in the YAML): the grid it planned."""
    parameters = sweep.get("parameters") if isinstance(sweep.get("parameters"), dict) else {}
    stage = parameters.get("stage")
    stage = stage.get("value") if isinstance(stage, dict) else None
    return {stage: parameters} if stage in (COMPARE, CURVE) else {}


def _is_trial_row(row: dict) -> bool:
    """A row as the sweep driver writes it; others (edited or damaged by hand) the driver names, the report skips."""
    return (isinstance(row.get("run_id"), str) and isinstance(row.get("state"), str)
            and all(isinstance(row.get(key) or {}, dict) for key in ("config", "suggested", "fixed")))


def _run_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _is_run_folder(p))


def _read_run_folder(folder: Path) -> RunRecord:
    config = _read_yaml(folder / CONFIG_FILE, "run config",
                        "delete it: a sweep trial's settings are also in the sweep's "
                        "table.jsonl") if (folder / CONFIG_FILE).exists() else {}
    history = _read_jsonl(folder / METRICS_FILE)
    if (folder / SUMMARY_FILE).exists():
        summary = _read_json(folder / SUMMARY_FILE)
        state = str(summary.get(metrics.STATE) or metrics.FAILED)
    else:
        # Without a summary nobody recorded how the run ended: say so rather than guess "finished".
        summary = {metrics.REASON: f"no {SUMMARY_FILE} in {folder}"}
        state = metrics.FAILED
    test = _read_json(folder / TEST_FILE) if (folder / TEST_FILE).exists() else None
    tested, best = (test or {}).get("best_epoch"), summary.get(metrics.BEST_EPOCH)
    if test is not None and tested is not None and best is not None and tested != best:
        # The run trained on (resumed) after the test and kept a better epoch: that result is not this best.pt's.
        print(f"warning: {folder / TEST_FILE} tested epoch {tested}, but the run's best epoch is now {best}; "
              f"left out of the report: run `agent.py test {folder}` again")
        test = None
    return RunRecord(folder.name, state, config, summary, _sorted_epochs(history), test, folder)


def _read_yaml(path: Path, what: str, fix: str) -> dict:
    try:
        data = read_yaml(path, what)
    except UserError as error:
        raise UserError(f"{error}; {fix}") from None
    return data if isinstance(data, dict) else {}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read {path}: {error}; delete or repair the file")
    return data if isinstance(data, dict) else {}


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            continue  # a run killed mid-append leaves half a last line; the complete epochs still count
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _sorted_epochs(history: list[dict]) -> list[dict]:
    rows = [{k: row[k] for k in metrics.EPOCH_METRICS if k in row} for row in history]
    for position, row in enumerate(rows, start=1):
        row.setdefault(metrics.EPOCH, position)
    return sorted(rows, key=lambda row: row[metrics.EPOCH])


# --- W&B --------------------------------------------------------------------------------------------

RUNS_PER_PAGE = 100  # runs per request, each with its config and summary (and, there, its epochs)


def _load_wandb(path: str) -> RunTable:
    """A W&B sweep's runs through the public API, in few requests: the sweep, then its runs a page at a time, each
    with its config and summary, where the trainer also keeps the run's epochs (trainer.metrics.EPOCH_HISTORY). Only
    a run logged by older code, without them, costs a history request of its own."""
    try:
        import wandb
    except ImportError:
        raise UserError(f"{path} looks like a W&B sweep path but wandb is not installed: pip install wandb")
    entity, project, sweep_id = path.split("/")
    try:
        api = wandb.Api()
        sweep = api.sweep(path)
        sweep_config = dict(sweep.config or {})
        # Iterate the paginated collection to its end: a first page alone silently drops runs. Not `sweep.runs`: it
        # pages 10 runs at a time and fetches each run's config and summary with a request of its own.
        runs = api.runs(f"{entity}/{project}", filters={"sweep": sweep_id}, per_page=RUNS_PER_PAGE, lazy=False)
        records = [_wandb_record(run) for run in runs]
        name = getattr(sweep, "name", None) or path
    except UserError:
        raise
    except Exception as error:  # no login, no network, no such sweep: all one message to the user
        raise UserError(f"cannot read W&B sweep {path}: {_redact(error)}; check the path, network access "
                        f"and `wandb login` (or the WANDB_API_KEY environment variable)")
    metric = sweep_config.get("metric") or {}
    return RunTable(records=records, name=str(name), source=path,
                    metric_name=metric.get("name"), metric_goal=metric.get("goal"))


def _wandb_record(run: Any) -> RunRecord:
    config = {k: (v["value"] if isinstance(v, dict) and set(v) <= {"value", "desc"} and "value" in v else v)
              for k, v in dict(run.config).items() if not k.startswith("_")}
    # A sweep locks the keys it sets, so they keep their raw values (k_layers for head_only, aliases); the
    # trainer logs the normalised ones under `effective`, which wins.
    effective = config.pop(EFFECTIVE_KEY, None)
    if isinstance(effective, dict):
        config.update(effective)
    summary = dict(run.summary_metrics)
    # W&B's own summary `val_acc` is the LAST logged value: keep only our keys, never that one.
    summary.pop(metrics.VAL_ACC, None)
    epochs = summary.pop(metrics.EPOCH_HISTORY, None)
    wandb_state = str(getattr(run, "state", "") or "").lower()
    state = summary.get(metrics.STATE)
    if state == metrics.RUNNING and _WANDB_STATES.get(wandb_state) not in (None, metrics.RUNNING, metrics.FINISHED):
        # The process died before it could say how it ended (SIGKILL, a crash): W&B's state says it. Never
        # "finished": only the trainer's own record may say that a run trained all its epochs.
        state = None
    if state not in metrics.STATES:
        state = _WANDB_STATES.get(wandb_state, metrics.FAILED)
        summary.setdefault(metrics.REASON, None)
        if state != metrics.FINISHED and not summary.get(metrics.REASON):
            summary[metrics.REASON] = f"W&B state {wandb_state or 'unknown'}"
    history = (_sorted_epochs([row for row in epochs if isinstance(row, dict)]) if isinstance(epochs, list)
               else _wandb_history(run))
    test = None
    if finite(summary.get(TEST_ACC)) is not None:  # a test evaluation logged to the W&B run, if any
        test = {k: summary[k] for k in (TEST_ACC, PER_CLASS_ACC, NUM_IMAGES, CHECKPOINT) if k in summary}
    return RunRecord(str(run.id), str(state), config, summary, history, test, None)


def _wandb_history(run: Any) -> list[dict]:
    # scan_history(keys=...) returns only rows holding ALL the keys: ask for every epoch metric first,
    # then fall back to fewer, so an older trainer that logged fewer keys still yields its curve.
    for keys in (list(metrics.EPOCH_METRICS), [metrics.EPOCH, metrics.VAL_ACC, metrics.TRAIN_ACC],
                 [metrics.EPOCH, metrics.VAL_ACC]):
        rows = [dict(row) for row in run.scan_history(keys=keys)]
        if rows:
            # Rows come in step order; a run restarted inside the same W&B run (out-of-memory retry, refused
            # checkpoint) logged its epochs again from 1 at later steps: the last attempt, from the last point
            # where the epoch number went back, is the run's curve (an earlier attempt may have run longer).
            epochs = [row.get(metrics.EPOCH, position) for position, row in enumerate(rows, start=1)]
            start = max((i for i in range(1, len(rows)) if epochs[i] <= epochs[i - 1]), default=0)
            return _sorted_epochs(rows[start:])
    return []


def _redact(error: Exception) -> str:
    """The first line of an error, with anything shaped like an API key removed."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return re.sub(r"[A-Za-z0-9_-]{32,}", "<redacted>", text) or type(error).__name__
