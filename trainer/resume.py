"""Where a run starts: from its own checkpoint, or fresh, with a checkpoint that is not its own set aside.

One entry point, `resume_or_start`. It fetches last.pt from the run folder or its checkpoint store; refuses one that
is damaged or another config's, model's or frozen weights' (kept as last.refused.pt, here and in the store, so a
fresh start never overwrites an earlier model's only copy); restores model, optimizer, scaler and loop state from
one that is this run's; gives a resumed run its own best.pt; and says in one line what happened. It builds no
model and trains nothing: the caller hands it the built pieces and gets back a `Start`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common.errors import UserError
from trainer import metrics as M
from trainer.checkpoint import (
    CheckpointRefused,
    LoopState,
    check_frozen_base,
    identity_mismatch,
    keep_as,
    load_checkpoint,
    restore,
)
from trainer.loop import TrainSettings, nothing_left
from trainer.record import BEST_CHECKPOINT, LAST_CHECKPOINT, PREVIOUS_BEST, REFUSED_LAST, RunRecord


@dataclass
class Start:
    """How a run starts: its loop state (epoch 0 when fresh), the optimizer with the groups that state needs."""

    state: LoopState
    optimizer: torch.optim.Optimizer
    resumed: bool


@dataclass(frozen=True)
class ResumeRequest:
    """What a run asks of its start. `fresh` (a retry after running out of memory) ignores every checkpoint, the
    store's included; `required` (--resume) refuses to start fresh."""

    identity: dict[str, Any]  # what a checkpoint must have been written for (trainer.checkpoint.identity_mismatch)
    effective_config: dict[str, Any]  # names the settings that differ when a checkpoint is another config's
    # the frozen stages this run would leave out of its checkpoints, and their weights
    frozen_base: dict[str, Any] | None
    batch_size: int
    settings: TrainSettings
    required: bool = False
    fresh: bool = False


def resume_or_start(request: ResumeRequest, record: RunRecord, store, logger, model: torch.nn.Module,
                    scaler: torch.amp.GradScaler, optimizer_after: Callable[[int], torch.optim.Optimizer]) -> Start:
    """The run's start. `optimizer_after(epoch)` builds the optimizer with the groups it has after `epoch`'s plan
    (groups grow as gradual unfreezing opens stages), so a checkpoint's optimizer state loads group for group."""
    run_id, last_path, best_path = record.folder.name, record.folder / LAST_CHECKPOINT, record.folder / BEST_CHECKPOINT
    payload = None if request.fresh else _this_runs_checkpoint(request, record, store, last_path, best_path)
    optimizer = optimizer_after(_plan_epoch(payload))
    state = LoopState(batch_size=request.batch_size)
    if payload:
        try:
            state = restore(payload, model=model, optimizer=optimizer, scaler=scaler)
        except CheckpointRefused as refused:  # nothing was loaded: start fresh
            payload = None
            _set_aside(refused, request, record, store, last_path, best_path)
            optimizer = optimizer_after(0)
    batch_size = request.batch_size
    if payload:
        _fetch_best(store, best_path, last_path, request.identity, state)
        batch_size = state.batch_size or batch_size
        record.update_summary(**{M.BEST_VAL_ACC: state.best_val_acc, M.BEST_EPOCH: state.best_epoch,
                                 M.EPOCHS_COMPLETED: state.epoch},
                              resumed_from_epoch=state.epoch)
        _say_resumed(run_id, state, request.settings, payload.get("torch_threads"), model)
    elif request.required:
        raise UserError(f"--resume: run {run_id} has no checkpoint in {record.folder} or its store; "
                        "drop --resume to start it fresh")
    elif record.set_aside_previous_model():  # W&B's summary too: the sweep reads val_acc from there
        logger.summary({key: None for key in (M.VAL_ACC, M.BEST_VAL_ACC, M.BEST_EPOCH, M.EPOCHS_COMPLETED, M.TEST_ACC)})
    state.batch_size = batch_size
    if not payload:  # a fresh start in a W&B run that has history already: log after it, not over it
        state.log_step_offset = max(0, logger.next_step() - 1)
    record.truncate_history(state.epoch, payload.get("history") if payload else None)
    return Start(state, optimizer, bool(payload))


def _this_runs_checkpoint(request: ResumeRequest, record: RunRecord, store, last_path: Path,
                          best_path: Path) -> dict | None:
    """last.pt (fetched from the store when the run folder has none) if it is this run's; else None, set aside."""
    if not store.fetch(last_path):
        return None
    try:
        payload = load_checkpoint(last_path, request.identity, request.effective_config)
        check_frozen_base(payload, request.frozen_base, last_path)
        return payload
    except CheckpointRefused as refused:
        _set_aside(refused, request, record, store, last_path, best_path)
        return None


def _plan_epoch(payload: dict | None) -> int:
    """The epoch whose plan the checkpoint's optimizer groups were built for."""
    return 0 if not payload else max(0, payload["loop"]["epoch"] - (payload["loop"]["batch"] == 0))


def _set_aside(refused: CheckpointRefused, request: ResumeRequest, record: RunRecord, store, last_path: Path,
               best_path: Path) -> None:
    if request.required:
        raise UserError(str(refused).replace("starting fresh", "drop --resume to start the run fresh", 1)) from None
    print(f"warning: {refused}")
    record.update_summary(resume_refused=str(refused))
    last_path.replace(last_path.with_name(REFUSED_LAST))
    # The store's copies are the earlier model's too, and on a new machine its only ones: set them aside there
    # as well, or this fresh start's first checkpoint overwrites them. Its best.pt comes here first, so the
    # run folder keeps it as best.previous.pt like a local one.
    store.fetch(best_path)
    store.set_aside({LAST_CHECKPOINT: REFUSED_LAST, BEST_CHECKPOINT: PREVIOUS_BEST})


def _say_resumed(run_id: str, state: LoopState, settings: TrainSettings, threads: Any, model: torch.nn.Module) -> None:
    best = f"best val_acc so far {state.best_val_acc:.4f}" if state.best_epoch else "no epoch validated yet"
    if nothing_left(settings, state):
        print(f"run {run_id} has already trained all it will ({state.epoch} of {settings.epochs} epochs, {best}): "
              f"nothing to train; pass another --run_id to train this config again")
        return
    print(f"resuming run {run_id} from epoch {state.epoch + 1}, batch {state.batch} ({best})")
    on_cpu = next(model.parameters()).device.type == "cpu"
    if on_cpu and isinstance(threads, int) and threads != torch.get_num_threads():
        print(f"note: run {run_id} trained with {threads} torch threads and resumes with {torch.get_num_threads()}: "
              "CPU sums are then added up in another order, so its losses may differ from an uninterrupted run's by "
              f"about 1e-5 (OMP_NUM_THREADS={threads} gives identical numbers)")


def _fetch_best(store, best_path: Path, last_path: Path, identity: dict, state: LoopState) -> None:
    """Give a resumed run the best epoch's weights (a new machine has none, `agent.py test` needs them), and only
    its own: a store may still hold the best.pt of a model that a fresh start replaced."""
    best_epoch = state.best_epoch
    if best_epoch <= 0:
        best_path.unlink(missing_ok=True)
        return
    if store.fetch(best_path):
        try:  # mmap: the tensors are not read, only the small header
            best = torch.load(best_path, map_location="cpu", weights_only=True, mmap=True)
            same_run, epoch = identity_mismatch(best, identity) is None, best.get("epoch")
        except Exception:
            same_run, epoch = False, None
        if same_run and epoch == best_epoch:
            return
    if best_epoch == state.epoch and state.batch == 0:
        # last.pt is the best epoch itself: the run stopped between writing it and keeping it as best.pt.
        keep_as(last_path, best_path)
        store.save(best_path)
        print(
            f"note: {best_path} of epoch {best_epoch} was not kept before the "
            f"run stopped; made again from {last_path.name}")
    elif best_path.exists():
        print(f"warning: {best_path} is not this run's epoch {best_epoch}; set aside as {PREVIOUS_BEST}")
        best_path.replace(best_path.with_name(PREVIOUS_BEST))
