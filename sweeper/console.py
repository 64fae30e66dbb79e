"""What a local sweep prints: one line per trial event, and a table of all trials at the end."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sweeper.definition import RECIPE
from sweeper.table import Trial
from sweeper.trial import format_value
from trainer import metrics as M


def shown(value: Any) -> str:
    """A value as a person reads it: floats to 4 significant digits (the exact value is in table.jsonl)."""
    if isinstance(value, float) and not isinstance(value, bool):
        return f"{value:.4g}"
    return format_value(value)


def describe(values: dict[str, Any], names: Iterable[str]) -> str:
    return " ".join(f"{name}={shown(values[name])}" for name in names if name in values)


def trained(trial: Trial, names: Iterable[str]) -> str:
    """The searched values the trial really trains with: normalised, without those that do not apply."""
    return describe({k: v for k, v in _values(trial).items() if v is not None}, names)


def _values(trial: Trial) -> dict[str, Any]:
    """The trial's effective config (its suggestion before it has one), with the name of its recipe file."""
    values = dict(trial.config or trial.suggested)
    if RECIPE in trial.suggested:  # read into the config; the file's name tells the recipes apart
        values[RECIPE] = Path(str(trial.suggested[RECIPE])).stem
    return values


def normalised_away(trial: Trial) -> str:
    """Suggested values the trainer changed or nulled (why a suggestion turned out to be a duplicate)."""
    # Compared as command-line text: the engine's "true" and the config's True are the same value.
    changed = [f"{name}={format_value(value)}" for name, value in trial.suggested.items()
               if name in trial.config and format_value(trial.config[name]) != format_value(value)]
    return f" (does not apply here: {', '.join(changed)})" if changed else ""


def accuracy(value: float | None) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def trial_line(tag: str, trial: Trial, searched: list[str], seconds: float | None = None) -> str:
    timing = f"  {seconds:.0f}s" if seconds is not None else ""
    reason = f"  ({trial.reason})" if trial.reason and trial.state != M.FINISHED else ""
    return (f"[{tag}] {trial.run_id} {trial.state}  val_acc {accuracy(trial.best_val_acc)}  "
            f"{trained(trial, searched)}{timing}{reason}")


def duration(seconds: float) -> str:
    """4m05s, 1h03m: a sweep's times as a person reads them."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def trial_output(tag: str, run_id: str, line: str) -> str:
    """A line of a running trial's own output (its epochs, its warnings), named by the trial it comes from."""
    return f"[{tag}] {run_id}  {line.strip()}"


def progress_line(done: int, total: int, running: int, elapsed: float, left: float | None) -> str:
    """The sweep as a whole: trials done of its size, elapsed, and what is left at this call's pace."""
    estimate = f", about {duration(left)} left" if left is not None else ""
    return f"sweep: {done}/{total} trials done, {running} running, {duration(elapsed)} elapsed{estimate}"


def final_table(trials: list[Trial], searched: list[str]) -> str:
    headers = ["run_id", "state", M.VAL_ACC, *searched, "note"]
    rows = []
    for trial in trials:
        note = f"= {trial.duplicate_of}" if trial.duplicate_of else (trial.reason or "")
        values = _values(trial)
        rows.append([trial.run_id, trial.state, accuracy(trial.best_val_acc),
                     *(shown(values[name]) if name in values else "-" for name in searched), note[:80]])
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [headers, *rows]]
    return "\n".join(lines)
