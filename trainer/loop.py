"""The training loop: epochs of steps, validation, record, checkpoint. Reads top to bottom.

Set-up (data, model, optimizer) happens in `trainer.run`; this module only trains, given a `Loop` that holds the
pieces as typed values (no run config below `run()`). It returns the final state name; it raises `Diverged` when
the loss stops being finite.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from models.freezing import Freezing
from models.staged import StagedModel
from trainer import metrics as M
from trainer.checkpoint import LoopState
from trainer.optim import LearningRates
from trainer.progress import EpochProgress
from trainer.signals import EARLY_STOP, StopFlag

if TYPE_CHECKING:
    from trainer.config import RunConfig
    from trainer.inputs import RunInputs
    from trainer.record import RunRecord
    from trainer.wandb_log import RunLogger

NAN_CHECK_EVERY_STEPS = 25  # checking finiteness forces a GPU sync; every step would stall the pipeline


class Diverged(Exception):
    pass


@dataclass(frozen=True)
class TrainSettings:
    """What the loop itself reads of a run's settings: how long to train, when to stop, the loss, the checkpoints."""

    epochs: int
    patience: int = 0  # epochs without a better epoch (is_better) before stopping; 0 = off
    label_smoothing: float = 0.0
    grad_clip: float = 0.0  # 0 = off
    checkpoint_minutes: float = 0.0  # also checkpoint inside long epochs; 0 = at epoch ends only

    @classmethod
    def of(cls, config: RunConfig) -> TrainSettings:
        return cls(config.epochs, config.patience, config.label_smoothing, config.grad_clip, config.checkpoint_minutes)


@dataclass
class Loop:
    settings: TrainSettings
    rates: LearningRates
    freezing: Freezing
    model: StagedModel
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    inputs: RunInputs
    device: torch.device
    autocast: Callable[[], AbstractContextManager]
    record: RunRecord
    logger: RunLogger
    checkpoint: Callable[[LoopState, bool], None]  # (state, is_best) -> writes last (and best)
    stop: StopFlag = field(default_factory=StopFlag)
    inference_prefix: int = 0  # frozen leading stages run without autograd when training on images
    forward_fn: Callable | None = None  # the (optionally compiled) forward; defaults to the model
    # Waits for the checkpoint write in flight. Called before validation: the validation loader forks its
    # workers at its first epoch, and a process must not fork while another thread writes a checkpoint (a lock
    # held by that thread stays held forever in the child).
    writes_done: Callable[[], None] = lambda: None

    def forward(self, x: torch.Tensor, start: int):
        if self.inference_prefix > start:
            with torch.no_grad():  # frozen stages: no activations kept for backward
                x = self.model.forward_range(x, start, self.inference_prefix)
            start = self.inference_prefix
        return (self.forward_fn or self.model)(x, start=start) if start else (self.forward_fn or self.model)(x)


def split_output(output) -> tuple[torch.Tensor, list[torch.Tensor]]:
    return (output[0], list(output[1])) if isinstance(output, tuple) else (output, [])


def train_step(loop: Loop, x: torch.Tensor, y: torch.Tensor,
               params: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimisation step: (the objective, the main head's plain cross-entropy for the record, the logits)."""
    settings = loop.settings
    with loop.autocast():
        logits, aux_logits = split_output(loop.forward(x, loop.inputs.start_stage))
        loss = F.cross_entropy(logits, y, label_smoothing=settings.label_smoothing)
        # train_loss is the main head's plain cross-entropy, as val_loss is: aux heads and label smoothing
        # are part of the objective, not of the number compared across models and against val_loss.
        logged = loss.detach() if not settings.label_smoothing else F.cross_entropy(logits.detach().float(), y)
        for aux in aux_logits:
            loss = loss + (loop.model.aux_loss_weight or 0.0) * F.cross_entropy(
                aux, y, label_smoothing=settings.label_smoothing)
    loop.optimizer.zero_grad(set_to_none=True)
    loop.scaler.scale(loss).backward()
    if settings.grad_clip > 0:
        loop.scaler.unscale_(loop.optimizer)
        torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
    loop.scaler.step(loop.optimizer)
    loop.scaler.update()
    return loss, logged, logits


@torch.inference_mode()
def evaluate(loop: Loop, loader) -> tuple[float, float]:
    """Mean cross-entropy (no label smoothing) and accuracy over `loader`, model in eval mode."""
    loop.model.eval()
    loss_sum = torch.zeros((), device=loop.device, dtype=torch.float64)
    correct = torch.zeros((), device=loop.device, dtype=torch.int64)
    seen = 0
    for images, labels in loader.epoch(0):
        x, y = loop.inputs.eval_input(images), labels.to(loop.device, non_blocking=True)
        with loop.autocast():
            logits, _ = split_output(loop.model(x, start=loop.inputs.start_stage) if loop.inputs.start_stage
                                     else loop.model(x))
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    return (loss_sum.item() / max(1, seen), correct.item() / max(1, seen))


def patience_spent(settings: TrainSettings, state: LoopState) -> bool:
    return bool(settings.patience) and state.stale_epochs >= settings.patience


def nothing_left(settings: TrainSettings, state: LoopState) -> bool:
    """A checkpoint of a run that has trained all it will: every epoch, or until its patience ran out."""
    return state.epoch >= settings.epochs or patience_spent(settings, state)


def train(loop: Loop, state: LoopState) -> str:
    settings, model, optimizer = loop.settings, loop.model, loop.optimizer
    if patience_spent(settings, state):  # a resumed run whose patience ran out stays stopped
        return M.FINISHED
    steps_per_epoch = loop.inputs.train_loader.num_batches()
    last_checkpoint = time.monotonic()

    for epoch in range(state.epoch, settings.epochs):
        loop.rates.advance(model, optimizer, loop.freezing, epoch)  # gradual unfreezing opens stages here
        model.train()  # StagedModel.train keeps frozen stages (and their BatchNorm statistics) in eval mode
        params = [p for g in optimizer.param_groups for p in g["params"]]
        loss_sum = torch.tensor(state.loss_sum, device=loop.device, dtype=torch.float64)
        correct = torch.tensor(state.correct, device=loop.device, dtype=torch.int64)
        started = time.perf_counter()  # restarts at each checkpoint, which adds the time since to the state's sums
        # A mid-epoch checkpoint of an older version has the epoch's images but not its time: count only ours.
        uncounted_images = state.seen if state.epoch_seconds == 0 else 0
        lr = optimizer.param_groups[0]["lr"]
        progress = EpochProgress(f"epoch {epoch + 1}/{settings.epochs}", steps_per_epoch, initial=state.batch)

        for images, labels in loop.inputs.train_loader.epoch(epoch, start_batch=state.batch):
            x = loop.inputs.train_input(images, epoch, state.batch)
            y = labels.to(loop.device, non_blocking=True)
            lr = loop.rates.apply(optimizer, state.step, steps_per_epoch)
            loss, logged, logits = train_step(loop, x, y, params)

            state.step, state.batch = state.step + 1, state.batch + 1
            loss_sum += logged.double() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            state.seen += len(y)
            progress.update(loss=loss, lr=lr)
            if state.step % NAN_CHECK_EVERY_STEPS == 0 and not torch.isfinite(loss_sum):
                raise Diverged(
                    f"training loss became {loss_sum.item()} in epoch {epoch + 1} (step {state.step}); lower lr")
            minutes = settings.checkpoint_minutes
            if loop.stop or (minutes and time.monotonic() - last_checkpoint > 60 * minutes):
                state.loss_sum, state.correct = loss_sum.item(), int(correct.item())
                state.train_seconds, state.epoch_seconds = add_elapsed_seconds(started, state.train_seconds,
                                                                               state.epoch_seconds)
                started = time.perf_counter()
                loop.checkpoint(state, False)
                last_checkpoint = time.monotonic()
                if loop.stop:
                    progress.close()
                    return M.EARLY_STOPPED if loop.stop.reason == EARLY_STOP else M.PREEMPTED
        progress.close()

        if not torch.isfinite(loss_sum):
            raise Diverged(f"training loss became {loss_sum.item()} in epoch {epoch + 1}; lower lr")
        # The epoch's time and images over all its sessions: a run resumed at the end of an epoch reports the epoch.
        state.train_seconds, epoch_seconds = add_elapsed_seconds(started, state.train_seconds, state.epoch_seconds)
        loop.writes_done()  # only a mid-epoch checkpoint can still be in flight here: at most a second's wait
        val_loss, val_acc = evaluate(loop, loop.inputs.val_loader)
        if not math.isfinite(val_loss):
            raise Diverged(f"validation loss became {val_loss} in epoch {epoch + 1}; lower lr")
        row = {
            M.EPOCH: epoch + 1,
            M.TRAIN_LOSS: loss_sum.item() / max(1, state.seen),
            M.TRAIN_ACC: correct.item() / max(1, state.seen),
            M.VAL_LOSS: val_loss,
            M.VAL_ACC: val_acc,
            M.LR: lr,
            M.EPOCH_SECONDS: round(epoch_seconds, 3),
            M.IMAGES_PER_SECOND: round((state.seen - uncounted_images) / max(epoch_seconds, 1e-9), 1),
        }
        improved = is_better(val_acc, val_loss, state)
        if improved:
            state.best_val_acc, state.best_val_loss, state.best_epoch, state.stale_epochs = (
                val_acc, val_loss, epoch + 1, 0)
        else:
            state.stale_epochs += 1
        state.epoch, state.batch = epoch + 1, 0
        state.loss_sum, state.correct, state.seen, state.epoch_seconds = 0.0, 0, 0, 0.0
        print(
            f"epoch {epoch + 1}/{settings.epochs}  train_loss {row[M.TRAIN_LOSS]:.4f}  "
            f"train_acc {row[M.TRAIN_ACC]:.4f}  val_loss {val_loss:.4f}  val_acc "
            f"{val_acc:.4f}  {row[M.IMAGES_PER_SECOND]:.0f} img/s  {epoch_seconds:.1f}s",
            flush=True,
        )
        # Log before checkpointing: a kill in between replays this epoch on resume, never skips it.
        loop.record.append_epoch(row)
        loop.logger.log(row, step=state.log_step_offset + epoch + 1)
        summary = {M.BEST_VAL_ACC: state.best_val_acc, M.BEST_EPOCH: state.best_epoch, M.EPOCHS_COMPLETED: state.epoch,
                   M.TRAIN_SECONDS: round(state.train_seconds, 3)}
        loop.record.update_summary(**summary)
        # The sweep optimises the best, not the last; the epochs
        # ride along for a report read from W&B (report/sources.py).
        loop.logger.summary({**summary, M.VAL_ACC: state.best_val_acc, M.EPOCH_HISTORY: loop.record.history})
        loop.checkpoint(state, improved)
        last_checkpoint = time.monotonic()
        if patience_spent(settings, state):  # before a stop request: this run is done, not to be resumed
            if state.epoch < settings.epochs:  # on the last epoch, patience cut nothing
                note = (f"val_acc did not improve for {settings.patience} epochs (patience): "
                        f"stopped after epoch {state.epoch} of {settings.epochs}")
                print(f"early stopping: {note}")
                loop.record.update_summary(stopped_by_patience=note)
            break
        if loop.stop and state.epoch < settings.epochs:  # a stop during the last validation finds the run done
            return M.EARLY_STOPPED if loop.stop.reason == EARLY_STOP else M.PREEMPTED
    return M.FINISHED


def is_better(val_acc: float, val_loss: float, state: LoopState) -> bool:
    """Is this epoch the run's best so far? Higher val_acc; at equal val_acc (frequent on a small validation set,
    where accuracy moves in steps of 1/images), lower val_loss. best.pt, the patience count and the sweep's
    best_val_acc follow this rule; the report's reading of a history (report/table.py) is the same."""
    return val_acc > state.best_val_acc or (val_acc == state.best_val_acc and val_loss < state.best_val_loss)


def add_elapsed_seconds(started: float, *totals: float) -> tuple[float, ...]:
    """Each of `totals` plus the seconds since `started` (one clock reading, so they stay consistent)."""
    elapsed = time.perf_counter() - started
    return tuple(total + elapsed for total in totals)


def autocast_factory(device: torch.device, dtype: torch.dtype | None) -> Callable[[], AbstractContextManager]:
    if dtype is None:
        return nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)
