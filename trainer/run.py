"""One training run end to end: set up, resume if there is something to resume, train, record the outcome.

This is the run boundary: whatever happens inside (divergence, CUDA out-of-memory, a bug, a signal), the
run folder ends with a summary saying what happened and why, and the exit code lets a sweep go on:
0 for finished, early-stopped, diverged and out-of-memory runs, 128+signal for a preempted run (so W&B
re-queues it), 1 for an unexpected failure, 2 for a user mistake. W&B is told 3 for a diverged or
out-of-memory run, which it marks failed: its search never scores one as a result (trainer/wandb_log.py).
"""

from __future__ import annotations

import datetime
import gc
import os
import secrets
import signal
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision

from common.atomic import write_text
from common.disk import disk_cause, disk_problem, ensure_writable
from common.errors import EXIT_USER_ERROR, UserError
from common.preprocessing import Preprocessing
from common.provenance import code_version
from models import build_model, count_parameters, preprocessing_for
from models.freezing import FreezeOptions, plan_for_epoch, resolve_strategy, validate_options
from models.weights import frozen_fingerprint
from scratch_cnn import ScratchCNNConfig
from trainer import metrics as M
from trainer.checkpoint import (CheckpointRefused, LoopState, check_frozen_base, checkpoint_payload, identity_mismatch, keep_as,
                                load_checkpoint, restore, write_checkpoint)
from trainer.config import RunConfig, config_hash, effective_config, rehash, run_id_problem, to_dict
from trainer.inputs import build_inputs, load_split
from trainer.loop import Diverged, Loop, advance_plan, autocast_factory, nothing_left, train
from trainer.optim import build_optimizer
from trainer.progress import run_header
from trainer.record import BEST_CHECKPOINT, LAST_CHECKPOINT, PREVIOUS_BEST, REFUSED_LAST, RunRecord
from trainer.signals import UPLOADS_AFTER_SIGNAL_SECONDS, GracefulStop
from trainer.store import STORE_CHOICES, checkpoint_config, make_store
from trainer.wandb_log import resolve_mode, start_logger
from trainer.writer import CheckpointWriter

EXIT_OK, EXIT_FAILED = 0, 1
MODEL_METADATA = ("run_id", M.BEST_VAL_ACC, M.BEST_EPOCH, M.WEIGHTS_VERSION, M.TRAINABLE_PARAMS, M.TOTAL_PARAMS, "config_hash",
                  M.SPLIT_HASH, M.DATA_HASH, "classes", "preprocessing", M.CODE_VERSION)  # what a model artifact says of itself
SKIPPED_FILES = "skipped_files.txt"  # unreadable files the scan left out: relative path, tab, reason


@dataclass
class RunOutcome:
    run_id: str
    folder: Path
    state: str
    exit_code: int
    summary: dict


def new_run_id(config: RunConfig) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{config.model}-{stamp}-{secrets.token_hex(2)}"


def resolve_run_id(config: RunConfig) -> str:
    """An explicit run_id, else the one `wandb agent` sets for a (possibly re-queued) trial, else a new one."""
    if config.run_id:
        return config.run_id
    if config.resume:
        latest = latest_unfinished_run(Path(config.output_dir).expanduser())
        if latest is None:
            raise UserError(f"--resume: no unfinished run with a checkpoint in {config.output_dir}; pass --run_id=ID of the run to resume")
        return latest
    from_wandb = os.environ.get("WANDB_RUN_ID")
    if from_wandb and run_id_problem(from_wandb):
        raise UserError(f"WANDB_RUN_ID={run_id_problem(from_wandb)}; unset it or set it to a run id")
    return from_wandb or new_run_id(config)


def latest_unfinished_run(output_dir: Path) -> str | None:
    candidates = []
    for folder in output_dir.glob("*/"):
        summary = RunRecord.read_summary(folder)
        if (folder / LAST_CHECKPOINT).exists() and summary.get(M.STATE) in (M.PREEMPTED, M.RUNNING, M.FAILED):
            candidates.append(((folder / LAST_CHECKPOINT).stat().st_mtime, folder.name))
    return max(candidates)[1] if candidates else None


def resolve_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={choice} but no CUDA GPU is visible: use --device=cpu or --device=auto")
    try:
        return torch.device(choice)
    except RuntimeError:
        raise UserError(f"device={choice!r} is not a device: use auto, cpu, cuda or cuda:N") from None


def resolve_precision(choice: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32. fp16 needs a grad scaler; bf16 does not."""
    if choice == "fp32" or (choice == "auto" and device.type != "cuda"):
        return None
    if choice == "auto":
        # Native bf16 needs compute capability 8 (A100, H100); is_bf16_supported() also counts slow emulation (T4, P100).
        return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16
    if choice == "fp16" and device.type != "cuda":
        raise UserError("precision=fp16 needs a CUDA GPU: use --precision=bf16 or fp32 on a CPU")
    return torch.bfloat16 if choice == "bf16" else torch.float16


def scratch_config(config: RunConfig) -> ScratchCNNConfig | None:
    if config.model != "scratch_cnn":
        return None
    return ScratchCNNConfig(
        filters=config.filters, filter_organization=config.filter_organization, kernel_size=config.kernel_size,
        activation=config.activation, batch_norm=config.batch_norm, dropout=config.dropout,
        dense_units=config.dense_units, input_size=config.input_size,
    )


def run_preprocessing(config: RunConfig, scratch: ScratchCNNConfig | None = None) -> tuple[Preprocessing, Preprocessing]:
    """(training, evaluation) preprocessing of a run: its start's metadata at its input_size and eval_size."""
    scratch = scratch or scratch_config(config)
    train = preprocessing_for(config.model, config.weights, scratch, config.input_size, config.mean, config.std)
    evaluation = preprocessing_for(config.model, config.weights, scratch, config.eval_size, config.mean, config.std)
    return train, evaluation


def normalisation_note(config: RunConfig, pre: Preprocessing) -> str | None:
    """Which normalisation a start other than ImageNet weights trains with, and where it comes from: a warm start
    from a user's file has no metadata of its own, and the wrong mean/std costs accuracy silently."""
    from models.weights import input_geometry

    geometry = input_geometry(config.model, config.weights, config.input_size or 224)
    if geometry.start not in ("file", "none"):
        return None
    given = "--mean/--std" if config.mean or config.std else geometry.source
    return (f"inputs of this {'warm start' if geometry.start == 'file' else 'random init'} are normalised with mean "
            f"{list(pre.mean)}, std {list(pre.std)}: {given}")


def freeze_options(config: RunConfig) -> FreezeOptions:
    defaults = FreezeOptions()
    return FreezeOptions(
        k_layers=config.k_layers if config.k_layers is not None else defaults.k_layers,
        freeze_fraction=config.freeze_fraction if config.freeze_fraction is not None else defaults.freeze_fraction,
        unfreeze_every_epochs=config.unfreeze_every_epochs or defaults.unfreeze_every_epochs,
    )


def _min_depth_over_epochs(model, strategy, options, epochs: int) -> int:
    """Leading stages frozen in every epoch of the run (gradual unfreezing shrinks it over time)."""
    plans = {plan_for_epoch(strategy, model.stage_names, options, epoch) for epoch in range(epochs)}
    depths = []
    for plan in plans:
        model.apply_plan(plan)
        depths.append(model.frozen_prefix_depth())
    return min(depths)


def _optimizer_as_saved(model, config: RunConfig, strategy, options, payload: dict | None):
    """The optimizer with the groups it had when `payload` was written (a fresh one without a payload).

    Groups grow as stages unfreeze: the plans of epochs 0..the checkpoint's epoch are replayed in order, so a
    checkpoint's optimizer state loads group for group.
    """
    saved_plan_epoch = 0 if not payload else max(0, payload["loop"]["epoch"] - (payload["loop"]["batch"] == 0))
    model.apply_plan(plan_for_epoch(strategy, model.stage_names, options, 0))
    optimizer = build_optimizer(model, config)
    for epoch in range(1, saved_plan_epoch + 1):
        advance_plan(model, optimizer, config, strategy, options, epoch)
    return optimizer


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
        print(f"note: {best_path} of epoch {best_epoch} was not kept before the run stopped; made again from {last_path.name}")
    elif best_path.exists():
        print(f"warning: {best_path} is not this run's epoch {best_epoch}; set aside as {PREVIOUS_BEST}")
        best_path.replace(best_path.with_name(PREVIOUS_BEST))


def _attempt(config: RunConfig, run_id: str, record: RunRecord, logger, store, batch_size: int, stop, fresh: bool = False) -> tuple[str, LoopState, dict]:
    """Set up everything and train; returns (state, loop state, summary facts). Raises on failure.

    `fresh` (a retry after running out of memory) ignores every checkpoint, the store's included.
    """
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    dtype = resolve_precision(config.precision, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels once
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    data = load_split(config)
    if data.index.skipped:  # the scan's warning names a few; the run folder keeps them all
        listing = record.folder / SKIPPED_FILES
        write_text(listing, "".join(f"{path}\t{reason}\n" for path, reason in data.index.skipped))
        print(f"note: all {len(data.index.skipped)} skipped file(s) are listed in {listing}")
    scratch = scratch_config(config)
    model = build_model(config.model, len(data.classes), config.weights, config.aux_loss_weight, config.bn_mode, scratch, config.input_size)
    pre, eval_pre = run_preprocessing(config, scratch)
    note = normalisation_note(config, pre)
    if note:
        print(f"note: {note}", flush=True)
    strategy, options = resolve_strategy(config.strategy), freeze_options(config)
    validate_options(strategy, model.stage_names, options, model_name=config.model)
    refuse_idle_backbone(config, model.stage_names, strategy, options)
    identity = {
        "config_hash": config_hash(config), "model": model.spec.name, "weights_version": model.weights_version,
        "stage_names": list(model.stage_names), "classes": list(data.classes), "split_hash": data.split.hash,
        M.DATA_HASH: data.split.data_hash, "preprocessing": pre.as_record(), "eval_preprocessing": eval_pre.as_record(),
    }

    # Depth of the frozen prefix that never trains in this run: cached (augment none) or run without autograd.
    frozen_depth = _min_depth_over_epochs(model, strategy, options, config.epochs)
    feature_depth = frozen_depth if (config.augment == "none" and config.feature_cache) else 0
    # Stages frozen all run on ImageNet weights stay those weights: checkpoints leave them out (not random
    # init or a user's file, which a loader could not rebuild exactly), with a fingerprint of the values.
    lean = None
    on_imagenet = model.weights_version != "none" and not model.weights_version.startswith("file:")
    if frozen_depth and on_imagenet:
        keys = model.stage_state_keys(model.stage_names[:frozen_depth])
        lean = {"weights": model.weights_version, "keys": keys, "fingerprint": frozen_fingerprint(model.state_dict(), keys)}
        if model.weights_file:  # torchvision's file given by path (offline): where a loader finds those weights again
            lean["file"] = model.weights_file
    frozen_base = None if config.checkpoint_frozen_stages else lean
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)

    last_path, best_path = record.folder / LAST_CHECKPOINT, record.folder / BEST_CHECKPOINT

    def refuse(refused: CheckpointRefused) -> None:
        if config.resume:
            raise UserError(str(refused).replace("starting fresh", "drop --resume to start the run fresh", 1)) from None
        print(f"warning: {refused}")
        record.update_summary(resume_refused=str(refused))
        last_path.replace(last_path.with_name(REFUSED_LAST))
        # The store's copies are the earlier model's too, and on a new machine its only ones: set them aside there
        # as well, or this fresh start's first checkpoint overwrites them. Its best.pt comes here first, so the
        # run folder keeps it as best.previous.pt like a local one.
        store.fetch(best_path)
        store.set_aside({LAST_CHECKPOINT: REFUSED_LAST, BEST_CHECKPOINT: PREVIOUS_BEST})

    payload = None
    if not fresh and store.fetch(last_path):
        try:
            payload = load_checkpoint(last_path, identity, effective_config(config))
            check_frozen_base(payload, lean, last_path)
        except CheckpointRefused as refused:
            payload = None
            refuse(refused)
    optimizer = _optimizer_as_saved(model, config, strategy, options, payload)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    state = LoopState(batch_size=batch_size)
    if payload:
        try:
            state = restore(payload, model=model, optimizer=optimizer, scaler=scaler)
        except CheckpointRefused as refused:  # nothing was loaded: start fresh
            payload = None
            refuse(refused)
            optimizer = _optimizer_as_saved(model, config, strategy, options, None)
    if payload:
        _fetch_best(store, best_path, last_path, identity, state)
        batch_size = state.batch_size or batch_size
        record.update_summary(**{M.BEST_VAL_ACC: state.best_val_acc, M.BEST_EPOCH: state.best_epoch, M.EPOCHS_COMPLETED: state.epoch}, resumed_from_epoch=state.epoch)
        best = f"best val_acc so far {state.best_val_acc:.4f}" if state.best_epoch else "no epoch validated yet"
        if nothing_left(config, state):
            print(f"run {run_id} has already trained all it will ({state.epoch} of {config.epochs} epochs, {best}): "
                  f"nothing to train; pass another --run_id to train this config again")
        else:
            print(f"resuming run {run_id} from epoch {state.epoch + 1}, batch {state.batch} ({best})")
            threads = payload.get("torch_threads")
            if device.type == "cpu" and isinstance(threads, int) and threads != torch.get_num_threads():
                print(f"note: run {run_id} trained with {threads} torch threads and resumes with {torch.get_num_threads()}: CPU sums "
                      f"are then added up in another order, so its losses may differ from an uninterrupted run's by about 1e-5 "
                      f"(OMP_NUM_THREADS={threads} gives identical numbers)")
    elif config.resume:
        raise UserError(f"--resume: run {run_id} has no checkpoint in {record.folder} or its store; drop --resume to start it fresh")
    elif record.set_aside_previous_model():  # W&B's summary too: the sweep reads val_acc from there
        logger.summary({key: None for key in (M.VAL_ACC, M.BEST_VAL_ACC, M.BEST_EPOCH, M.EPOCHS_COMPLETED, M.TEST_ACC)})
    state.batch_size = batch_size
    if not payload:  # a fresh start in a W&B run that has history already: log after it, not over it
        state.log_step_offset = max(0, logger.next_step() - 1)
    record.truncate_history(state.epoch, payload.get("history") if payload else None)
    print(run_header(config.device, device, dtype, model.spec.name, model.weights_version, pre.crop_size, *count_parameters(model)), flush=True)

    autocast = autocast_factory(device, dtype)
    started = time.perf_counter()
    inputs = build_inputs(config, data, pre, model, feature_depth, device, autocast, batch_size, dtype, eval_pre)
    cache_seconds = round(time.perf_counter() - started, 3)
    trainable, total = count_parameters(model)
    facts = {
        M.TRAINABLE_PARAMS: trainable, M.TOTAL_PARAMS: total, M.WEIGHTS_VERSION: model.weights_version,
        M.SPLIT_HASH: data.split.hash, M.DATA_HASH: data.split.data_hash, M.DEVICE: torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "config_hash": identity["config_hash"], "num_train": len(data.split.train), "num_val": len(data.split.val),
        "classes": list(data.classes), M.BATCH_SIZE: batch_size, "feature_cache_depth": feature_depth,
        M.PRECISION: str(dtype).replace("torch.", "") if dtype else "fp32", M.CACHE_SECONDS: cache_seconds,
        M.CODE_VERSION: code_version(), "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,  # the weights' enums and their metadata come with it
        "preprocessing": pre.as_record(),  # what the images were: a warm start and `agent.py test` read it back
        "eval_preprocessing": eval_pre.as_record(), M.INPUT_SIZE: pre.crop_size, M.EVAL_SIZE: eval_pre.crop_size,
        M.WEIGHTS_SHA256: model.weights_sha256,  # a warm start's file, by content: a path says nothing of what it held
    }
    facts[M.BATCH_SIZE_ASKED] = config.batch_size if batch_size != config.batch_size else None
    record.update_summary(**facts, **{M.STATE: M.RUNNING, M.REASON: None})
    logger.summary(facts)

    writer = CheckpointWriter(background=device.type == "cuda")  # a CPU's cores are busy training

    def checkpoint(loop_state: LoopState, is_best: bool) -> None:
        if is_best and record.set_aside_test():  # tested before this (resumed) run found a better epoch
            print(f"note: the test results of the earlier best.pt moved to {record.folder / 'test.previous'}; "
                  f"run `agent.py test {record.folder}` again once training ends")
            logger.summary({M.TEST_ACC: None})
        # The loop waits for the host-memory snapshot only; the file, best.pt and the store follow in the background.
        payload = checkpoint_payload(model=model, optimizer=optimizer, scaler=scaler, state=loop_state, identity=identity,
                                     history=record.history, frozen_base=frozen_base, config=effective_config(config),
                                     copy=writer.background)

        def write() -> None:
            write_checkpoint(last_path, payload)
            store.save(last_path)
            if is_best:
                keep_as(last_path, best_path)
                store.save(best_path)

        writer.submit(write)

    try:
        if fresh:  # the retry's starting point replaces the failed attempt's checkpoint in the store, so a preemption
            checkpoint(state, is_best=False)  # before the retry's first real checkpoint resumes the retry at its batch size
            writer.flush()
        forward_fn = torch.compile(model) if (config.compile and device.type == "cuda") else None
        loop = Loop(
            config=config, model=model, optimizer=optimizer, scaler=scaler, inputs=inputs, device=device,
            autocast=autocast, strategy=strategy, freeze_options=options, record=record, logger=logger,
            checkpoint=checkpoint, stop=stop, inference_prefix=0 if feature_depth else frozen_depth, forward_fn=forward_fn,
            writes_done=writer.flush,
        )
        final_state = train(loop, state)
        writer.close()
    except BaseException:
        writer.close(quiet=True)  # the last good checkpoint still lands; the run reports its own error
        raise
    trainable, total = count_parameters(model)  # gradual unfreezing ends with more trainable parameters
    facts.update({M.TRAINABLE_PARAMS: trainable, M.TOTAL_PARAMS: total})
    if device.type == "cuda":  # the cost of a resolution or a batch size: the report puts it on the cost axis
        facts[M.PEAK_GPU_MEMORY] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return final_state, state, facts


def run_training(config: RunConfig) -> RunOutcome:
    run_id = resolve_run_id(config)
    folder = Path(config.output_dir).expanduser() / run_id  # `--output_dir=~/runs`: the shell leaves ~ as it is
    in_wandb = config.checkpoint_store == "wandb" or (config.checkpoint_store == "auto" and resolve_mode(config.wandb_mode) == "online")
    if config.resume and not folder.is_dir() and not in_wandb:
        # Nothing local, and a store on disk (or none) can be looked at now: a mistyped run id leaves no run folder.
        kept = Path(config.checkpoint_store).expanduser() / run_id / LAST_CHECKPOINT if config.checkpoint_store not in STORE_CHOICES else None
        if kept is None or not kept.exists():
            raise UserError(f"--resume: there is no run {run_id!r} in {config.output_dir}{f' or {kept.parent.parent}' if kept else ''}; "
                            f"check --run_id (or drop it to resume the latest unfinished run)")
    ensure_writable(config.output_dir, "output_dir", "--output_dir")
    record = RunRecord(folder)
    with record.exclusive():
        return _run(config, run_id, record)


def _run(config: RunConfig, run_id: str, record: RunRecord) -> RunOutcome:
    folder = record.folder
    for stale in folder.glob(".*.tmp"):  # half-written files of a killed earlier process (this one holds the lock)
        stale.unlink(missing_ok=True)
    config_dict = to_dict(config) | {"run_id": run_id}
    effective = effective_config(config)
    # Only a config that trained is an earlier run, and the checkpoint says which: a start refused before training
    # (a mistyped --model with --resume, a missing weights file) rewrote config.yaml with a config of nothing.
    earlier = checkpoint_config(folder / LAST_CHECKPOINT)
    if earlier is None and (record.history or (folder / BEST_CHECKPOINT).exists()):
        earlier = record.read_config()
    if earlier:
        saved = {k: v for k, v in earlier.items() if k in effective}
        changed = {k: v for k, v in effective.items() if saved.get(k, v) != v}
        if changed and rehash(saved) != config_hash(config):  # not merely written otherwise by older code
            key, value = next(iter(changed.items()))
            if config.resume:
                raise UserError(f"--resume: run {run_id} was trained with {key}={saved[key]!r}, not {value!r}; resume with the same settings or start a new run")
            # Another config under this run id: it trains afresh (its checkpoint will be refused); keep what it had.
            was = ", ".join(f"{k}={saved.get(k)!r} (now {v!r})" for k, v in list(changed.items())[:4]) + (" ..." if len(changed) > 4 else "")
            kept = record.keep_previous_record()
            print(f"note: run {run_id} was trained before with {was}: it starts afresh; its earlier record is kept as "
                  f"{', '.join(kept)} (and its model, if any, as {PREVIOUS_BEST})", flush=True)
    record.write_config(config_dict)
    # With config.yaml, at once: a rerun that fails before training must not leave the old hash beside a new config.
    started = {M.STATE: M.RUNNING, M.REASON: None, M.EXIT_CODE: None}  # nothing of an earlier process of this run id
    record.update_summary(run_id=run_id, config_hash=config_hash(config), **started, started_at=datetime.datetime.now().isoformat(timespec="seconds"))
    logger = start_logger(config.wandb_mode, config.wandb_project, config.wandb_entity, run_id, config_dict, folder.parent, effective_config(config),
                          verbose=config.verbose)
    # W&B too: a resumed W&B run that had finished, then killed before its end, must not still read finished.
    logger.summary(started)
    print(f"run {run_id}: {config.model} strategy={config.strategy} -> {folder}")

    state_name, reason, exit_code, facts, loop_state = M.FAILED, None, EXIT_FAILED, {}, LoopState()
    batch_size, retried_oom = config.batch_size, False
    try:
        store = make_store(config.checkpoint_store, logger, run_id)
    except UserError as exc:
        _finish(record, logger, M.FAILED, str(exc), EXIT_USER_ERROR, {}, loop_state)
        raise
    with GracefulStop() as stop:
        while True:
            retry_at_half = False
            try:
                state_name, loop_state, facts = _attempt(config, run_id, record, logger, store, batch_size, stop, fresh=retried_oom)
                exit_code = EXIT_OK
                if state_name == M.PREEMPTED:
                    if logger.stop_requested_by_sweep():
                        state_name = M.EARLY_STOPPED  # W&B's hyperband stops runs with SIGTERM too
                    else:
                        # Marked before anything slow: the agent or the platform sends SIGKILL seconds later.
                        logger.mark_preempting()
                        reason = f"interrupted by signal {stop.signum}; resumes from its checkpoint when relaunched with run_id={run_id}"
                        exit_code = 128 + (stop.signum or 15)
                        record.update_summary(**facts, **{M.STATE: state_name, M.REASON: reason, M.EXIT_CODE: exit_code})
                break
            except Diverged as exc:
                state_name, reason, exit_code = M.DIVERGED, str(exc), EXIT_OK
                break
            except KeyboardInterrupt:  # Ctrl-C pressed twice: out now, but the record still says what happened
                state_name, exit_code = M.PREEMPTED, 128 + signal.SIGINT
                reason = f"interrupted twice (Ctrl-C) before its checkpoint; relaunched with run_id={run_id} it resumes from the last one"
                break
            except torch.cuda.OutOfMemoryError as exc:
                if config.oom_retry and batch_size > 1 and not retried_oom:
                    retried_oom, batch_size, retry_at_half = True, batch_size // 2, True
                    print(f"warning: CUDA out of memory at batch_size={batch_size * 2}, input_size={config.input_size}; "
                          f"retrying from scratch at batch_size={batch_size}")
                else:
                    state_name, reason, exit_code = M.OOM, (f"CUDA out of memory at batch_size={batch_size}, input_size={config.input_size} "
                                                            f"(eval_size={config.eval_size}): {str(exc).splitlines()[0]}"), EXIT_OK
                    break
            except UserError as exc:
                state_name, reason, exit_code = M.FAILED, str(exc), EXIT_USER_ERROR
                _finish(record, logger, state_name, reason, exit_code, facts, loop_state)
                raise
            except Exception as exc:  # the run boundary: record why, let the sweep go on
                problem = disk_problem(exc, _disk_hint(config, disk_cause(exc) or exc))
                if problem is not None:  # the machine's, not the trial's: a sweep retries it as a setup failure
                    state_name, reason, exit_code = M.FAILED, str(problem), EXIT_USER_ERROR
                    _finish(record, logger, state_name, reason, exit_code, facts, loop_state)
                    raise problem from None
                state_name, reason, exit_code = M.FAILED, f"{type(exc).__name__}: {exc}".splitlines()[0], EXIT_FAILED
                (folder / "error.log").write_text(traceback.format_exc())
                print(f"run {run_id} failed: {reason} (traceback in {folder / 'error.log'})")
                break
            if retry_at_half:  # out of the except block, so the failed attempt's frames and their GPU tensors are gone
                _free_cuda()
                for stale in (LAST_CHECKPOINT, BEST_CHECKPOINT):
                    (folder / stale).unlink(missing_ok=True)
                record.truncate_history(0)
        # Still inside the handlers: a signal arriving while W&B finishes cannot kill the run before its record says why.
        store.close(timeout=stop.seconds_left(UPLOADS_AFTER_SIGNAL_SECONDS) if stop else 600)  # a signal: the kill follows
        summary = _finish(record, logger, state_name, reason, exit_code, facts, loop_state)
    return RunOutcome(run_id, folder, state_name, exit_code, summary)


def refuse_idle_backbone(config: RunConfig, stage_names: tuple[str, ...], strategy, options) -> None:
    """backbone_lr_mult=0 where some epoch trains a backbone stage (or its norm layers): head-only in effect under
    another strategy's name, paying for the backward pass, with BatchNorm statistics drifting. Checked when a run
    starts, not when a config is read: saved configs of older runs still load (to test them, say)."""
    if config.backbone_lr_mult != 0:
        return
    for epoch in range(config.epochs):
        plan = plan_for_epoch(strategy, stage_names, options, epoch, config.model)
        if plan.train_norm_layers or set(plan.trainable_stages) - {stage_names[-1]}:
            raise UserError(f"backbone_lr_mult=0 with strategy={strategy.name} trains backbone stages at lr 0 (from epoch "
                            f"{epoch + 1}): they still cost their backward pass and their BatchNorm statistics still move; "
                            f"use --strategy=head_only to train the head alone, or a multiplier above 0")


def _disk_hint(config: RunConfig, exc: BaseException) -> str:
    """Which option moves the file that could not be written (`exc.filename`) to another disk: the option of the
    innermost folder holding it (a cache inside the output folder is the cache's)."""
    options = {"--output_dir": config.output_dir, "--cache_dir": config.cache_dir}
    if config.checkpoint_store not in STORE_CHOICES:
        options["--checkpoint_store"] = config.checkpoint_store
    filename, matches = getattr(exc, "filename", None), []
    try:
        for option, folder in options.items():
            root = Path(folder).expanduser().resolve()
            if filename and Path(filename).resolve().is_relative_to(root):
                matches.append((len(root.parts), option))
    except (OSError, RuntimeError, ValueError):  # a symlink loop, say: the generic hint will do
        matches = []
    if matches:
        return f"pass {max(matches)[1]} with a folder on another disk"
    return "pass --output_dir, --cache_dir or --checkpoint_store with folders you can write to"


def _free_cuda() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _finish(record: RunRecord, logger, state: str, reason: str | None, exit_code: int, facts: dict, loop_state: LoopState) -> dict:
    summary = record.update_summary(
        **facts, **{M.STATE: state, M.REASON: reason, M.EXIT_CODE: exit_code},
        finished_at=datetime.datetime.now().isoformat(timespec="seconds"),
    )
    logger.summary({M.STATE: state, M.REASON: reason, M.EXIT_CODE: exit_code})  # the report tells refusals apart by it
    if state == M.FINISHED:
        logger.log_model(record.folder / BEST_CHECKPOINT, {key: summary.get(key) for key in MODEL_METADATA})
    logger.finish(exit_code, state)  # diverged, oom: failed on W&B, so its search scores them as failures
    best = summary.get(M.BEST_VAL_ACC)
    print(f"run {record.folder.name}: {state}" + (f", best val_acc {best:.4f} at epoch {summary.get(M.BEST_EPOCH)}" if best is not None and best >= 0 else "") + (f" ({reason})" if reason else ""))
    return summary
