"""The seam to W&B's sweep engine (the `sweeps` package): trials in, suggestions and early stops out.

The same code that runs behind W&B's server picks configs (grid, random, bayes) and early-terminates trials
(hyperband); nothing here re-implements either. This module only translates: table rows and their epoch
histories become `SweepRun`s, the engine's suggestion becomes plain Python values.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any

import jsonschema

from common.errors import UserError
from sweeper.table import Trial
from trainer import metrics as M

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # sweeps 0.3 trips a pydantic v2 deprecation warning on import
    import sweeps
    from sweeps import RunState, SweepRun

# How the engine should see each trial. An early-stopped trial is a finished one with a shorter history
# (as on W&B); runs that diverged, ran out of memory or hit a user error are failures the bayes search
# imputes as the worst result and steers away from.
_ENGINE_STATES = {
    M.FINISHED: RunState.finished,
    M.EARLY_STOPPED: RunState.finished,
    M.DIVERGED: RunState.failed,
    M.OOM: RunState.failed,
    M.FAILED: RunState.failed,
    M.PREEMPTED: RunState.preempted,
    M.RUNNING: RunState.running,
}


def engine_state(trial: Trial) -> RunState:
    if trial.state == M.FAILED and trial.exit_code == 1:
        return RunState.crashed  # an unexpected exception, not a bad config
    return _ENGINE_STATES.get(trial.state, RunState.failed)


def plain(value: Any) -> Any:
    """Engine values (numpy scalars, lists of them) as plain Python values for JSON and the command line."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def sweep_run(trial: Trial, history: list[dict], source: Trial | None = None) -> SweepRun:
    """A trial as the engine sees it. `source` is the trial whose outcome it reports (a duplicate's original)."""
    source = source or trial
    best = _finite(source.best_val_acc)
    return SweepRun(
        name=trial.run_id,
        state=engine_state(source),
        config={name: {"value": value} for name, value in trial.suggested.items()},
        summary_metrics={M.VAL_ACC: best} if best is not None and best >= 0 else {},
        history=[row for row in history if M.VAL_ACC in row],
    )


def suggest(config: dict, runs: list[SweepRun]) -> dict[str, Any] | None:
    """The engine's next config as plain values, or None when a grid is exhausted."""
    try:
        run = sweeps.next_run(config, runs, validate=True)
    except (ValueError, jsonschema.ValidationError) as exc:  # e.g. bayes with every parameter fixed
        raise UserError(f"the sweep engine cannot search this space: {str(exc).splitlines()[0]}") from None
    if run is None:
        return None
    return {name: plain(spec["value"]) for name, spec in run.config.items()}


def runs_to_stop(config: dict, runs: Iterable[SweepRun]) -> list[str]:
    """Names of running trials that hyperband early termination would stop now ([] without early_terminate)."""
    if not config.get("early_terminate"):
        return []
    return [run.name for run in sweeps.stop_runs(config, list(runs), validate=True)]
