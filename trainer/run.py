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
from models.freezing import Freezing
from models.weights import frozen_fingerprint
from scratch_cnn import ScratchCNNConfig
from trainer import metrics as M
from trainer.checkpoint import LoopState, checkpoint_payload, keep_as, write_checkpoint
from trainer.config import RunConfig, config_hash, effective_config, freezing_of, rehash, run_id_problem, to_dict
from trainer.inputs import InputSettings, build_inputs, load_split
from trainer.loop import Diverged, Loop, TrainSettings, autocast_factory, train
from trainer.optim import LearningRates
from trainer.progress import run_header
from trainer.record import BEST_CHECKPOINT, LAST_CHECKPOINT, PREVIOUS_BEST, RunRecord
from trainer.resume import ResumeRequest, resume_or_start
from trainer.signals import UPLOADS_AFTER_SIGNAL_SECONDS, GracefulStop
from trainer.store import STORE_CHOICES, checkpoint_config, make_store
from trainer.wandb_log import resolve_mode, start_logger
from trainer.writer import CheckpointWriter

EXIT_OK, EXIT_FAILED = 0, 1
MODEL_METADATA = ("run_id", M.BEST_VAL_ACC, M.BEST_EPOCH, M.WEIGHTS_VERSION, M.TRAINABLE_PARAMS, M.TOTAL_PARAMS,
                  "config_hash",
                  # what a model artifact says of itself
                  M.SPLIT_HASH, M.DATA_HASH, "classes", "preprocessing", M.CODE_VERSION)
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
            raise UserError(
                "--resume: no unfinished run with a checkpoint in "
                f"{config.output_dir}; pass --run_id=ID of the run to resume")
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
        # Native bf16 needs compute capability 8 (A100, H100);
        # is_bf16_supported() also counts slow emulation (T4, P100).
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


def run_preprocessing(config: RunConfig,
                      scratch: ScratchCNNConfig | None = None) -> tuple[Preprocessing, Preprocessing]:
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


def _device_and_precision(config: RunConfig) -> tuple[torch.device, torch.dtype | None]:
    device = resolve_device(config.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels once
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device, resolve_precision(config.precision, device)


def _list_skipped(record: RunRecord, skipped: list) -> None:
    """The scan's warning names a few unreadable files; the run folder keeps them all."""
    if skipped:
        listing = record.folder / SKIPPED_FILES
        write_text(listing, "".join(f"{path}\t{reason}\n" for path, reason in skipped))
        print(f"note: all {len(skipped)} skipped file(s) are listed in {listing}")


def _frozen_base(model, frozen_depth: int, config: RunConfig) -> dict | None:
    """Stages frozen all run on ImageNet weights stay those weights: checkpoints may leave them out (not random init
    or a user's file, which a loader could not rebuild exactly), with a fingerprint of their values. At a size other
    than the weights' own, the values that size changes (ViT's interpolated position embeddings) stay in: a loader on
    another machine could interpolate them a last bit otherwise, and refuse the checkpoint for it."""
    on_imagenet = model.weights_version != "none" and not model.weights_version.startswith("file:")
    if not (frozen_depth and on_imagenet):
        return None
    own_size = config.input_size == model.spec.native_size(config.weights)
    keys = [key for key in model.stage_state_keys(model.stage_names[:frozen_depth])
            if own_size or key not in model.spec.size_dependent_keys]
    lean = {"weights": model.weights_version, "keys": keys, "fingerprint": frozen_fingerprint(model.state_dict(), keys)}
    if model.weights_file:  # torchvision's file given by path (offline): where a loader finds those weights again
        lean["file"] = model.weights_file
    return lean


def _run_facts(model, data, identity: dict, pre: Preprocessing, eval_pre: Preprocessing, device: torch.device,
               dtype: torch.dtype | None, batch_size: int, asked: int, feature_depth: int,
               cache_seconds: float) -> dict:
    """What the summary and W&B record of a run that starts training: what it is, on what data, on what machine."""
    trainable, total = count_parameters(model)
    return {
        M.TRAINABLE_PARAMS: trainable, M.TOTAL_PARAMS: total, M.WEIGHTS_VERSION: model.weights_version,
        M.SPLIT_HASH: data.split.hash, M.DATA_HASH: data.split.data_hash,
        M.DEVICE: torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "config_hash": identity["config_hash"], "num_train": len(data.split.train), "num_val": len(data.split.val),
        "classes": list(data.classes), M.BATCH_SIZE: batch_size, "feature_cache_depth": feature_depth,
        M.PRECISION: str(dtype).replace("torch.", "") if dtype else "fp32", M.CACHE_SECONDS: cache_seconds,
        M.CODE_VERSION: code_version(), "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,  # the weights' enums and their metadata come with it
        "preprocessing": pre.as_record(),  # what the images were: a warm start and `agent.py test` read it back
        "eval_preprocessing": eval_pre.as_record(), M.INPUT_SIZE: pre.crop_size, M.EVAL_SIZE: eval_pre.crop_size,
        M.WEIGHTS_SHA256: model.weights_sha256,  # a warm start's file, by content: a path says nothing of what it held
        M.BATCH_SIZE_ASKED: asked if batch_size != asked else None,
    }


def _checkpointer(record: RunRecord, store, logger, writer: CheckpointWriter, model, optimizer, scaler, identity: dict,
                  frozen_base: dict | None, config: dict):
    """The loop's checkpoint callback: last.pt (and best.pt) into the run folder and the store."""
    last_path, best_path = record.folder / LAST_CHECKPOINT, record.folder / BEST_CHECKPOINT

    def checkpoint(loop_state: LoopState, is_best: bool) -> None:
        if is_best and record.set_aside_test():  # tested before this (resumed) run found a better epoch
            print(f"note: the test results of the earlier best.pt moved to {record.folder / 'test.previous'}; "
                  f"run `agent.py test {record.folder}` again once training ends")
            logger.summary({M.TEST_ACC: None})
        # The loop waits for the host-memory snapshot only; the file, best.pt and the store follow in the background.
        payload = checkpoint_payload(model=model, optimizer=optimizer, scaler=scaler, state=loop_state,
                                     identity=identity,
                                     history=record.history, frozen_base=frozen_base, config=config,
                                     copy=writer.background)

        def write() -> None:
            write_checkpoint(last_path, payload)
            store.save(last_path)
            if is_best:
                keep_as(last_path, best_path)
                store.save(best_path)

        writer.submit(write)

    return checkpoint


def _attempt(config: RunConfig, run_id: str, record: RunRecord, logger, store, batch_size: int, stop,
             fresh: bool = False) -> tuple[str, LoopState, dict]:
    """The recipe of a run: data, model, where it starts, inputs, then the loop. Returns (state, loop state, summary
    facts); raises on failure. `fresh` (a retry after running out of memory) ignores every checkpoint."""
    torch.manual_seed(config.seed)
    device, dtype = _device_and_precision(config)
    settings_in = InputSettings.of(config)
    data = load_split(settings_in)
    _list_skipped(record, data.index.skipped)
    scratch = scratch_config(config)
    model = build_model(config.model, len(data.classes), config.weights, config.aux_loss_weight, config.bn_mode,
                        scratch, config.input_size, data.classes)
    pre, eval_pre = run_preprocessing(config, scratch)
    note = normalisation_note(config, pre)
    if note:
        print(f"note: {note}", flush=True)
    freezing, rates, settings = freezing_of(config), LearningRates.of(config), TrainSettings.of(config)
    freezing.validate(model.stage_names, config.model)
    refuse_idle_backbone(config, model.stage_names, freezing)
    identity = {
        "config_hash": config_hash(config), "model": model.spec.name, "weights_version": model.weights_version,
        "stage_names": list(model.stage_names), "classes": list(data.classes), "split_hash": data.split.hash,
        M.DATA_HASH: data.split.data_hash, "preprocessing": pre.as_record(), "eval_preprocessing": eval_pre.as_record(),
    }
    frozen_depth = model.frozen_depth_over(freezing.plans(model.stage_names, config.epochs))  # never trains in this run
    lean = _frozen_base(model, frozen_depth, config)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    request = ResumeRequest(identity, effective_config(config), lean, batch_size, settings, required=config.resume,
                            fresh=fresh)
    start = resume_or_start(request, record, store, logger, model, scaler,
                            lambda epoch: rates.optimizer_after(model, freezing, epoch))
    state, optimizer, batch_size = start.state, start.optimizer, start.state.batch_size
    print(
        run_header(config.device, device, dtype, model.spec.name, model.weights_version, pre.crop_size,
                   *count_parameters(model)), flush=True)

    autocast, started = autocast_factory(device, dtype), time.perf_counter()
    inputs = build_inputs(settings_in, data, pre, model, frozen_depth, device, autocast, batch_size, dtype, eval_pre)
    facts = _run_facts(model, data, identity, pre, eval_pre, device, dtype, batch_size, config.batch_size,
                       inputs.start_stage, round(time.perf_counter() - started, 3))
    record.update_summary(**facts, **{M.STATE: M.RUNNING, M.REASON: None})
    logger.summary(facts)
    writer = CheckpointWriter(background=device.type == "cuda")  # a CPU's cores are busy training
    checkpoint = _checkpointer(record, store, logger, writer, model, optimizer, scaler, identity,
                               None if config.checkpoint_frozen_stages else lean, effective_config(config))
    try:
        if fresh:  # the retry's starting point replaces the failed attempt's checkpoint in the store, so a preemption
            # before the retry's first real checkpoint resumes the retry at its batch size
            checkpoint(state, is_best=False)
            writer.flush()
        loop = Loop(settings, rates, freezing, model, optimizer, scaler, inputs, device, autocast, record, logger,
                    checkpoint,
                    stop=stop, inference_prefix=0 if inputs.start_stage else frozen_depth, writes_done=writer.flush,
                    forward_fn=torch.compile(model) if (config.compile and device.type == "cuda") else None)
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
    in_wandb = config.checkpoint_store == "wandb" or (config.checkpoint_store == "auto"
                                                      and resolve_mode(config.wandb_mode) == "online")
    if config.resume and not folder.is_dir() and not in_wandb:
        # Nothing local, and a store on disk (or none) can be looked at now: a mistyped run id leaves no run folder.
        kept = None
        if config.checkpoint_store not in STORE_CHOICES:
            kept = Path(config.checkpoint_store).expanduser() / run_id / LAST_CHECKPOINT
        if kept is None or not kept.exists():
            raise UserError(f"--resume: there is no run {run_id!r} in "
                            f"{config.output_dir}{f' or {kept.parent.parent}' if kept else ''}; check --run_id (or "
                            "drop it to resume the latest unfinished run)")
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
                raise UserError(
                    f"--resume: run {run_id} was trained with {key}={saved[key]!r}, not {value!r}; resume with the "
                    "same settings or start a new run")
            # Another config under this run id: it trains afresh (its checkpoint will be refused); keep what it had.
            was = ", ".join(f"{k}={saved.get(k)!r} (now {v!r})" for k, v in list(changed.items())[:4])
            was += " ..." if len(changed) > 4 else ""
            kept = record.keep_previous_record()
            print(f"note: run {run_id} was trained before with {was}: it starts afresh; its earlier record is kept as "
                  f"{', '.join(kept)} (and its model, if any, as {PREVIOUS_BEST})", flush=True)
    record.write_config(config_dict)
    # With config.yaml, at once: a rerun that fails before training must not leave the old hash beside a new config.
    started = {M.STATE: M.RUNNING, M.REASON: None, M.EXIT_CODE: None}  # nothing of an earlier process of this run id
    record.update_summary(run_id=run_id, config_hash=config_hash(config), **started,
                          started_at=datetime.datetime.now().isoformat(timespec="seconds"))
    logger = start_logger(config.wandb_mode, config.wandb_project, config.wandb_entity, run_id, config_dict,
                          folder.parent, effective_config(config), verbose=config.verbose)
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
                state_name, loop_state, facts = _attempt(config, run_id, record, logger, store, batch_size, stop,
                                                         fresh=retried_oom)
                exit_code = EXIT_OK
                if state_name == M.PREEMPTED:
                    if logger.stop_requested_by_sweep():
                        state_name = M.EARLY_STOPPED  # W&B's hyperband stops runs with SIGTERM too
                    else:
                        # Marked before anything slow: the agent or the platform sends SIGKILL seconds later.
                        logger.mark_preempting()
                        reason = (f"interrupted by signal {stop.signum}; resumes from its checkpoint when "
                                  f"relaunched with run_id={run_id}")
                        exit_code = 128 + (stop.signum or 15)
                        record.update_summary(
                            **facts, **{M.STATE: state_name, M.REASON: reason, M.EXIT_CODE: exit_code})
                break
            except Diverged as exc:
                state_name, reason, exit_code = M.DIVERGED, str(exc), EXIT_OK
                break
            except KeyboardInterrupt:  # Ctrl-C pressed twice: out now, but the record still says what happened
                state_name, exit_code = M.PREEMPTED, 128 + signal.SIGINT
                reason = (f"interrupted twice (Ctrl-C) before its checkpoint; relaunched with run_id={run_id} it "
                          f"resumes from the last one")
                break
            except torch.cuda.OutOfMemoryError as exc:
                if config.oom_retry and batch_size > 1 and not retried_oom:
                    retried_oom, batch_size, retry_at_half = True, batch_size // 2, True
                    print(f"warning: CUDA out of memory at batch_size={batch_size * 2}, "
                          f"input_size={config.input_size}; retrying from scratch at batch_size={batch_size}")
                else:
                    state_name, reason, exit_code = M.OOM, (f"CUDA out of memory at batch_size={batch_size}, "
                                                            f"input_size={config.input_size} "
                                                            f"(eval_size={config.eval_size}): "
                                                            f"{str(exc).splitlines()[0]}"), EXIT_OK
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
        # Still inside the handlers: a signal arriving while W&B
        # finishes cannot kill the run before its record says why.
        # a signal: the kill follows
        store.close(timeout=stop.seconds_left(UPLOADS_AFTER_SIGNAL_SECONDS) if stop else 600)
        summary = _finish(record, logger, state_name, reason, exit_code, facts, loop_state)
    return RunOutcome(run_id, folder, state_name, exit_code, summary)


def refuse_idle_backbone(config: RunConfig, stage_names: tuple[str, ...], freezing: Freezing) -> None:
    """backbone_lr_mult=0 where some epoch trains a backbone stage (or its norm layers): head-only in effect under
    another strategy's name, paying for the backward pass, with BatchNorm statistics drifting. Checked when a run
    starts, not when a config is read: saved configs of older runs still load (to test them, say)."""
    if config.backbone_lr_mult != 0:
        return
    for epoch, plan in enumerate(freezing.plans(stage_names, config.epochs, config.model)):
        if plan.train_norm_layers or set(plan.trainable_stages) - {stage_names[-1]}:
            raise UserError(f"backbone_lr_mult=0 with strategy={freezing.name} trains backbone stages at lr 0 (from "
                            f"epoch {epoch + 1}): they still cost their backward pass and their BatchNorm statistics "
                            "still move; use --strategy=head_only to train the head alone, or a multiplier above 0")


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


def _finish(record: RunRecord, logger, state: str, reason: str | None, exit_code: int, facts: dict,
            loop_state: LoopState) -> dict:
    summary = record.update_summary(
        **facts, **{M.STATE: state, M.REASON: reason, M.EXIT_CODE: exit_code},
        finished_at=datetime.datetime.now().isoformat(timespec="seconds"),
    )
    logger.summary({M.STATE: state, M.REASON: reason, M.EXIT_CODE: exit_code})  # the report tells refusals apart by it
    if state == M.FINISHED:
        logger.log_model(record.folder / BEST_CHECKPOINT, {key: summary.get(key) for key in MODEL_METADATA})
    logger.finish(exit_code, state)  # diverged, oom: failed on W&B, so its search scores them as failures
    best = summary.get(M.BEST_VAL_ACC)
    print(
        f"run {record.folder.name}: {state}"
        + (f", best val_acc {best:.4f} at epoch {summary.get(M.BEST_EPOCH)}" if best is not None and best >= 0 else "")
        + (f" ({reason})" if reason else ""))
    classes = len(summary.get("classes") or ())
    if state == M.FINISHED and M.at_chance(best, classes):
        print(f"warning: run {record.folder.name} never beat chance on validation (best val_acc {best:.4f}, chance "
              f"1/{classes} = {1 / classes:.4f}): it learned nothing validation can see; lower lr, or, with a frozen "
              "strategy, use weights whose features fit the task (ImageNet's, a warm start trained on related images)")
    return summary
