"""The training loop: epochs of steps, validation, record, checkpoint. Reads top to bottom.

Set-up (data, model, optimizer) happens in `trainer.run`; this module only trains, given a `Loop` that
holds the pieces. It returns the final state name; it raises `Diverged` when the loss stops being finite.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from models.freezing import plan_for_epoch
from models.param_groups import add_missing_groups
from trainer import metrics as M
from trainer.checkpoint import LoopState
from trainer.optim import group_options, lr_factor, set_learning_rates
from trainer.progress import EpochProgress
from trainer.signals import EARLY_STOP, StopFlag

NAN_CHECK_EVERY_STEPS = 25  # checking finiteness forces a GPU sync; every step would stall the pipeline


class Diverged(Exception):
    pass


@dataclass
class Loop:
    config: Any
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    inputs: Any  # trainer.inputs.RunInputs
    device: torch.device
    autocast: Callable[[], Any]
    strategy: Any
    freeze_options: Any
    record: Any  # trainer.record.RunRecord
    logger: Any  # trainer.wandb_log.RunLogger
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


def apply_epoch_plan(loop: Loop, epoch: int) -> None:
    """Set which stages train in this epoch; what starts training joins the optimizer (gradual unfreezing)."""
    advance_plan(loop.model, loop.optimizer, loop.config, loop.strategy, loop.freeze_options, epoch)


def advance_plan(model, optimizer, config, strategy, options, epoch: int) -> None:
    """Apply epoch `epoch`'s plan and add groups for the parameters that newly train (stages, aux heads)."""
    model.apply_plan(plan_for_epoch(strategy, model.stage_names, options, epoch))
    add_missing_groups(model, optimizer, **group_options(config))


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
            logits, _ = split_output(loop.model(x, start=loop.inputs.start_stage) if loop.inputs.start_stage else loop.model(x))
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    return (loss_sum.item() / max(1, seen), correct.item() / max(1, seen))


def patience_spent(config, state: LoopState) -> bool:
    return bool(config.patience) and state.stale_epochs >= config.patience


def nothing_left(config, state: LoopState) -> bool:
    """A checkpoint of a run that has trained all it will: every epoch, or until its patience ran out."""
    return state.epoch >= config.epochs or patience_spent(config, state)


def train(loop: Loop, state: LoopState) -> str:
    config, model, optimizer = loop.config, loop.model, loop.optimizer
    if patience_spent(config, state):  # a resumed run whose patience ran out stays stopped
        return M.FINISHED
    steps_per_epoch = loop.inputs.train_loader.num_batches()
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = round((config.warmup_epochs or 0) * steps_per_epoch)  # None under onecycle
    last_checkpoint = time.monotonic()
    aux_weight = model.aux_loss_weight or 0.0

    for epoch in range(state.epoch, config.epochs):
        apply_epoch_plan(loop, epoch)
        model.train()  # StagedModel.train keeps frozen stages (and their BatchNorm statistics) in eval mode
        params = [p for g in optimizer.param_groups for p in g["params"]]
        loss_sum = torch.tensor(state.loss_sum, device=loop.device, dtype=torch.float64)
        correct = torch.tensor(state.correct, device=loop.device, dtype=torch.int64)
        started = time.perf_counter()  # restarts at each checkpoint, which adds the time since to the state's sums
        # A mid-epoch checkpoint of an older version has the epoch's images but not its time: count only ours.
        uncounted_images = state.seen if state.epoch_seconds == 0 else 0
        lr = optimizer.param_groups[0]["lr"]
        progress = EpochProgress(f"epoch {epoch + 1}/{config.epochs}", steps_per_epoch, initial=state.batch)

        for images, labels in loop.inputs.train_loader.epoch(epoch, start_batch=state.batch):
            x = loop.inputs.train_input(images, epoch, state.batch)
            y = labels.to(loop.device, non_blocking=True)
            lr = set_learning_rates(optimizer, lr_factor(state.step, total_steps, warmup_steps, config.schedule))
            with loop.autocast():
                logits, aux_logits = split_output(loop.forward(x, loop.inputs.start_stage))
                loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
                # train_loss is the main head's plain cross-entropy, as val_loss is: aux heads and label smoothing
                # are part of the objective, not of the number compared across models and against val_loss.
                logged = loss.detach() if not config.label_smoothing else F.cross_entropy(logits.detach().float(), y)
                for aux in aux_logits:
                    loss = loss + aux_weight * F.cross_entropy(aux, y, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loop.scaler.scale(loss).backward()
            if config.grad_clip > 0:
                loop.scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            loop.scaler.step(optimizer)
            loop.scaler.update()

            state.step, state.batch = state.step + 1, state.batch + 1
            loss_sum += logged.double() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            state.seen += len(y)
            progress.update(loss=loss, lr=lr)
            if state.step % NAN_CHECK_EVERY_STEPS == 0 and not torch.isfinite(loss_sum):
                raise Diverged(f"training loss became {loss_sum.item()} in epoch {epoch + 1} (step {state.step}); lower lr")
            minutes = config.checkpoint_minutes
            if loop.stop or (minutes and time.monotonic() - last_checkpoint > 60 * minutes):
                state.loss_sum, state.correct = loss_sum.item(), int(correct.item())
                state.train_seconds, state.epoch_seconds = add_elapsed_seconds(started, state.train_seconds, state.epoch_seconds)
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
        improved = val_acc > state.best_val_acc
        if improved:
            state.best_val_acc, state.best_epoch, state.stale_epochs = val_acc, epoch + 1, 0
        else:
            state.stale_epochs += 1
        state.epoch, state.batch, state.loss_sum, state.correct, state.seen, state.epoch_seconds = epoch + 1, 0, 0.0, 0, 0, 0.0
        print(
            f"epoch {epoch + 1}/{config.epochs}  train_loss {row[M.TRAIN_LOSS]:.4f}  train_acc {row[M.TRAIN_ACC]:.4f}  "
            f"val_loss {val_loss:.4f}  val_acc {val_acc:.4f}  {row[M.IMAGES_PER_SECOND]:.0f} img/s  {epoch_seconds:.1f}s",
            flush=True,
        )
        # Log before checkpointing: a kill in between replays this epoch on resume, never skips it.
        loop.record.append_epoch(row)
        loop.logger.log(row, step=state.log_step_offset + epoch + 1)
        summary = {M.BEST_VAL_ACC: state.best_val_acc, M.BEST_EPOCH: state.best_epoch, M.EPOCHS_COMPLETED: state.epoch, M.TRAIN_SECONDS: round(state.train_seconds, 3)}
        loop.record.update_summary(**summary)
        # The sweep optimises the best, not the last; the epochs ride along for a report read from W&B (report/sources.py).
        loop.logger.summary({**summary, M.VAL_ACC: state.best_val_acc, M.EPOCH_HISTORY: loop.record.history})
        loop.checkpoint(state, improved)
        last_checkpoint = time.monotonic()
        if patience_spent(config, state):  # before a stop request: this run is done, not to be resumed
            if state.epoch < config.epochs:  # on the last epoch, patience cut nothing
                note = f"val_acc did not improve for {config.patience} epochs (patience): stopped after epoch {state.epoch} of {config.epochs}"
                print(f"early stopping: {note}")
                loop.record.update_summary(stopped_by_patience=note)
            break
        if loop.stop and state.epoch < config.epochs:  # a stop during the last validation finds the run done
            return M.EARLY_STOPPED if loop.stop.reason == EARLY_STOP else M.PREEMPTED
    return M.FINISHED


def add_elapsed_seconds(started: float, *totals: float) -> tuple[float, ...]:
    """Each of `totals` plus the seconds since `started` (one clock reading, so they stay consistent)."""
    elapsed = time.perf_counter() - started
    return tuple(total + elapsed for total in totals)


def autocast_factory(device: torch.device, dtype: torch.dtype | None) -> Callable[[], Any]:
    if dtype is None:
        return nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)
