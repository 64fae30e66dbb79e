"""Trials whose row table.jsonl lost (a line cut off mid-write,
or deleted as damaged), read back from their run folders.

A trial's run folder holds what its row held: the config it trained (config.yaml, or the copy inside last.pt) and
how it ended (summary.json). Read back into the table, the trial is neither trained again under a new run id nor
counted twice by the report; an unfinished one resumes from its checkpoint like any other.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.errors import UserError
from sweeper.definition import RECIPE, SweepDefinition, listed_values, with_recipe
from sweeper.table import RUNS_DIR, TABLE_FILE, Trial, TrialTable, run_id_prefix
from trainer import metrics as M
from trainer.config import FIELDS, config_hash, effective_config, parse_run_config
from trainer.record import LAST_CHECKPOINT, RunRecord


def read_back_lost_trials(table: TrialTable, definition: SweepDefinition, fixed: Mapping[str, Any]) -> None:
    """Give every run folder of this sweep without a row its row again (in run id order), and drop a cut-off line."""
    pattern = re.compile(rf"{re.escape(run_id_prefix(definition.name))}-(\d{{3}})-[0-9a-f]{{4}}")
    runs, known = table.sweep_dir / RUNS_DIR, {trial.run_id for trial in table}
    lost = (sorted(p for p in runs.iterdir() if p.is_dir() and p.name not in known and pattern.fullmatch(p.name))
            if runs.is_dir() else [])
    found = [trial for trial in (_trial_of(folder, definition, fixed) for folder in lost) if trial is not None]
    if table.lost_line is not None:
        print(f"note: line {table.lost_line} of {table.path} was cut off mid-write; dropped"
              f"{', its trial read back from its run folder' if found else ''}", flush=True)
    for trial in found:
        print(f"note: trial {trial.run_id} ({trial.state}) had no row in {TABLE_FILE}: read back from "
              f"{table.run_folder(trial)}, so it is not trained again under a new run id", flush=True)
    if not found and table.lost_line is None:
        return
    table.trials.extend(found)
    if all(pattern.fullmatch(trial.run_id) for trial in table):
        table.trials.sort(key=lambda trial: int(pattern.fullmatch(trial.run_id).group(1)))
    table.save()


def _trial_of(folder: Path, definition: SweepDefinition, fixed: Mapping[str, Any]) -> Trial | None:
    """The row of the trial trained in `folder`, or None when the folder holds no config that trains."""
    from trainer.store import checkpoint_config

    saved = RunRecord.saved_config(folder) or checkpoint_config(folder / LAST_CHECKPOINT)  # damaged: a one-line error
    if not saved:
        return None
    try:
        config = parse_run_config({key: value for key, value in saved.items() if key in FIELDS and key != "run_id"})
    except UserError as exc:
        print(f"note: {folder} has no row in {TABLE_FILE} and its config cannot be read back ({exc}); left out",
              flush=True)
        return None
    summary = RunRecord.read_summary(folder)
    state = summary.get(M.STATE)
    if state not in M.STATES or (state == M.RUNNING and not RunRecord.in_training(folder)):
        state = M.PREEMPTED  # ended without saying how: the same sweep command resumes it from its checkpoint
    best = summary.get(M.BEST_VAL_ACC)
    exit_code = summary.get(M.EXIT_CODE)
    identity = config_hash(config)
    return Trial(folder.name, state, effective_config(config), identity,
                 _suggestion(config, identity, definition, fixed),
                 reason=summary.get(M.REASON) if isinstance(summary.get(M.REASON), str) else None,
                 exit_code=exit_code if isinstance(exit_code, int) and not isinstance(exit_code, bool) else None,
                 best_val_acc=float(best) if isinstance(best, (int, float)) and not isinstance(best, bool) else None,
                 fixed=dict(fixed))


def _suggestion(config, identity: str, definition: SweepDefinition, fixed: Mapping[str, Any]) -> dict[str, Any]:
    """Values of the sweep's parameters that train `config`, as the engine would have suggested them: a listed
    value where the parameter lists values (the engine refuses any other), the trained value otherwise."""
    trained = {name: value for name, value in effective_config(config).items() if value is not None}
    suggested = {name: trained[name] for name in definition.parameters if name in trained}
    for name, spec in definition.parameters.items():
        listed = listed_values(spec)
        if not listed:
            continue
        # The first listed value that trains this config (any one, where normalisation drops the parameter).
        chosen = next((value for value in listed if _trains(name, value, trained, suggested, identity, fixed)), None)
        if chosen is None:
            suggested.pop(name, None)
        else:
            suggested[name] = chosen
    return suggested


def _trains(name: str, value: Any, trained: dict, suggested: dict, identity: str, fixed: Mapping[str, Any]) -> bool:
    if name == RECIPE:  # the recipe's values under the sweep's own, as the trial was parsed
        sources = with_recipe({**{key: v for key, v in suggested.items() if key != RECIPE}, RECIPE: value})
    else:
        sources = [{**trained, name: value}]
    try:
        return config_hash(parse_run_config(*sources, fixed)) == identity
    except UserError:
        return False
