"""The held-out test evaluation of one chosen run: the only code path that reads the test folder.

`python agent.py test RUN` loads the run's best checkpoint, evaluates it once on the test set (the `val/`
folder of nature_12K), and writes RUN/test/: test.json (accuracy, per-class accuracy), a confusion-matrix
plot and a grid of 30 test images (10 rows of 3) with true and predicted labels. Training and sweeps never
call this, so test accuracy cannot leak into model selection.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import numpy as np
import torch

from common.atomic import write_json
from common.disk import ensure_writable
from common.errors import UserError
from common.preprocessing import Preprocessing
from data.augment import EvalTransform
from data.cache import CACHE_OPTION
from data.images import decode_working
from data.layout import locate_dataset
from data.loading import BatchLoader, DecodingStore
from data.scan import check_same_classes, scan_folder
from models import build_model, preprocessing_for
from trainer import metrics as M
from trainer.config import config_hash, parse_run_config, rehash
from trainer.record import BEST_CHECKPOINT, TESTING, RunRecord
from trainer.run import resolve_device, resolve_precision, scratch_config
from trainer.store import checkpoint_config

GRID_ROWS, GRID_COLUMNS = 10, 3


def _grid_indices(labels: np.ndarray, num_classes: int, seed: int = 0) -> list[int]:
    """Three images per class for up to ten classes (one class per row), chosen reproducibly."""
    rng = np.random.default_rng(seed)
    rows = []
    classes = list(range(num_classes))[:GRID_ROWS]
    for label in classes:
        members = np.flatnonzero(labels == label)
        rows.extend(rng.choice(members, size=min(GRID_COLUMNS, len(members)), replace=False).tolist())
    if len(classes) < GRID_ROWS:  # fewer classes than rows: fill with further images
        rest = [i for i in rng.permutation(len(labels)).tolist() if i not in rows]
        rows.extend(rest[: GRID_ROWS * GRID_COLUMNS - len(rows)])
    return rows[: GRID_ROWS * GRID_COLUMNS]


def _earlier_result(out: Path) -> dict | None:
    try:
        return json.loads((out / "test.json").read_text())
    except (OSError, ValueError):
        return None


def evaluate_on_test_set(run_folder: Path, data_dir: str | None = None, device: str = "auto") -> dict:
    run_folder = Path(run_folder)
    checkpoint = run_folder / BEST_CHECKPOINT
    # A config.yaml deleted as damaged leaves the settings the model was trained with inside best.pt.
    saved = (RunRecord.saved_config(run_folder) or checkpoint_config(checkpoint)) if run_folder.is_dir() else None
    if saved and not checkpoint.exists():  # a run folder, but no epoch of it ever finished
        if RunRecord.in_training(run_folder):
            raise UserError(
                f"run {run_folder.name} is in its first epoch, "
                f"{RunRecord.held_by(run_folder)}: test it once it has finished")
        summary = RunRecord.read_summary(run_folder)
        state = summary.get(M.STATE, "unfinished")
        why = f"{state}{': ' + summary[M.REASON] if summary.get(M.REASON) else ''}"
        if state in (M.PREEMPTED, M.RUNNING, "unfinished"):  # interrupted (or killed while running): resume it
            fix = (f"train it further (python agent.py --resume --run_id={run_folder.name} "
                   f"--output_dir={run_folder.parent}, or the sweep command of a sweep trial) or test another run")
        else:  # failed, diverged, out of memory: resuming would meet the same end
            fix = "fix what its reason says and train it again, or test another run"
        raise UserError(f"run {run_folder.name} has no {BEST_CHECKPOINT}: it ended before its first epoch did ({why}); "
                        f"{fix}")
    if not saved:
        raise UserError(
            f"{run_folder} is not a finished run folder (needs config.yaml and "
            f"{BEST_CHECKPOINT}); pass a folder under runs/ or a sweep's runs/")
    if not os.access(run_folder, os.W_OK):  # e.g. an earlier notebook's output attached read-only
        raise UserError(f"{run_folder} is read-only, and the test writes its results into it: copy the run folder "
                        f"somewhere writable (cp -r {run_folder} <writable folder>/) and test the copy")
    record = RunRecord(run_folder)
    with record.exclusive(TESTING, busy="test it once that has ended"):  # its summary and best.pt are in flux
        record.summary = RunRecord.read_summary(run_folder)  # as the trainer left it
        _note_unfinished(record.summary, saved, run_folder)
        return _evaluate(run_folder, record, saved, checkpoint, data_dir, device)


def _note_unfinished(summary: dict, saved: dict, run_folder: Path) -> None:
    state = summary.get(M.STATE)
    if state in (M.FINISHED, M.EARLY_STOPPED, M.DIVERGED, M.OOM):
        return
    done, planned = summary.get(M.EPOCHS_COMPLETED), saved.get("epochs")
    print(f"note: run {run_folder.name} has not finished ({state or 'no summary'}, {done if done is not None else '?'} "
          f"of {planned if planned is not None else '?'} epochs): this tests its best epoch so far "
          f"({summary.get(M.BEST_EPOCH, '?')}); should it train on and keep a better epoch, this result is set aside")


def _evaluate(run_folder: Path, record: RunRecord, saved: dict, checkpoint: Path, data_dir: str | None,
              device: str) -> dict:
    saved.pop("run_id", None)
    config = parse_run_config(saved, {"data_dir": data_dir} if data_dir else {})
    try:
        payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot read {checkpoint} ({type(exc).__name__}); it is damaged: retrain the run, or restore "
                        "the file from its checkpoint store") from None
    if not isinstance(payload, dict):
        raise UserError(
            f"{checkpoint} is not a checkpoint of this harness; pass a run folder whose best.pt a run wrote")
    # Same training: the hash it was written with is the one the run recorded beside config.yaml, or its saved
    # config hashes to config.yaml's under today's normalisation.
    trained = (payload.get("identity") or {}).get("config_hash")
    if trained and trained not in (config_hash(config), record.read_summary(run_folder).get("config_hash")) \
            and rehash(payload.get("config")) != config_hash(config):
        raise UserError(f"{checkpoint} was trained with another configuration than "
                        f"{run_folder / 'config.yaml'} (config hash {trained} vs {config_hash(config)}); "
                        "test the run folder that trained it, or train this one again")
    classes = tuple((payload.get("identity") or {}).get("classes", ()))

    if not data_dir and not Path(config.data_dir).is_dir():  # never a download just to test: the run's data has moved
        raise UserError(f"the data folder run {run_folder.name} was trained on, {config.data_dir} (its config.yaml), "
                        "is not there; pass --data_dir with the dataset's folder")
    layout = locate_dataset(config.data_dir, download=False, offer_download=False)
    if layout.test_dir is None:
        raise UserError(
            f"{layout.root} has no val/ or test/ folder to evaluate on: pass --data_dir with the held-out set")
    test_index = scan_folder(layout.test_dir, cache_dir=ensure_writable(config.cache_dir, "cache_dir", CACHE_OPTION))
    if classes:
        check_same_classes(classes, f"the classes run {run_folder.name} was trained on", test_index)

    target = resolve_device(device)
    model = build_model(config.model, len(test_index.classes), str(checkpoint), config.aux_loss_weight, config.bn_mode,
                        scratch_config(config), config.input_size).to(target).eval()
    # As the run validated: its eval preprocessing, recorded in its checkpoint (a warm start's source file may be gone
    # by now); runs older than eval_size recorded one preprocessing for both.
    identity = payload.get("identity") or {}
    pre = (Preprocessing.from_record(identity.get("eval_preprocessing"))
           or Preprocessing.from_record(identity.get("preprocessing"))
           or preprocessing_for(config.model, config.weights, scratch_config(config), config.eval_size, config.mean,
                                config.std))
    transform = EvalTransform(pre)
    # The run's precision on a GPU; fp32 on a CPU, where fp16 does not exist and bf16 only slows inference down.
    autocast_dtype = resolve_precision(config.precision if target.type == "cuda" else "fp32", target)
    loader = BatchLoader(DecodingStore(test_index, pre.resize_size, pre.interpolation, pre.crop_size),
                         np.arange(len(test_index)), test_index.labels, 64)
    predictions = []
    with torch.inference_mode():
        for images, _ in loader.epoch(0):
            with torch.autocast(target.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                predictions.append(model(transform(images.to(target))).argmax(1).cpu())
    predicted = torch.cat(predictions).numpy()
    truth = test_index.labels
    count = len(test_index.classes)
    confusion = np.zeros((count, count), dtype=np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    per_class = {name: float(confusion[i, i] / max(1, confusion[i].sum())) for i, name in enumerate(test_index.classes)}
    result = {
        M.TEST_ACC: float((predicted == truth).mean()),
        M.PER_CLASS_ACC: per_class,
        M.NUM_IMAGES: int(len(truth)),
        M.EVAL_SIZE: pre.crop_size,  # the crop it was evaluated at, as the run validated
        M.CHECKPOINT: str(checkpoint),
        "best_epoch": int(payload.get("epoch", 0)),
        "confusion": confusion.tolist(),
        "classes": list(test_index.classes),
        "evaluated_at": datetime.datetime.now().isoformat(timespec="seconds"),
        "test_folder": str(test_index.root.resolve()),
        "test_fingerprint": test_index.fingerprint,  # the exact images: names, sizes, mtimes, labels
    }
    out = run_folder / "test"
    earlier = _earlier_result(out)
    if earlier and (earlier.get("test_fingerprint"), earlier.get("best_epoch")) == (result["test_fingerprint"],
                                                                                    result["best_epoch"]):
        print(f"note: {out / 'test.json'} of {earlier.get('evaluated_at', 'an earlier evaluation')} (test_acc "
              f"{earlier.get(M.TEST_ACC)}) is replaced; the same best.pt on the same test folder gives the same result")
    elif earlier and record.set_aside_test():  # other images (or another best epoch): both results are kept
        what = (f"best epoch {earlier.get('best_epoch')}"
                if earlier.get("test_fingerprint") == result["test_fingerprint"] else
                f"other test images: {earlier.get(M.NUM_IMAGES)} in "
                f"{earlier.get('test_folder', 'an earlier test folder')}, {len(truth)} now")
        print(f"note: the result of {earlier.get('evaluated_at', 'the earlier evaluation')} (test_acc "
              f"{earlier.get(M.TEST_ACC)}; {what}) moved to {run_folder / 'test.previous'}")
    write_json(out / "test.json", result)

    from common.figures import plot_confusion, plot_prediction_grid

    plot_confusion(confusion, list(test_index.classes), out / "confusion.png")
    chosen = _grid_indices(truth, count)
    images = [decode_working(test_index.absolute(i), 160) for i in chosen]
    names = test_index.classes
    rows = min(GRID_ROWS, -(-len(chosen) // GRID_COLUMNS))  # a small test set fills fewer rows
    plot_prediction_grid(images, [names[truth[i]] for i in chosen], [names[predicted[i]] for i in chosen],
                         out / "grid.png", rows=rows, cols=GRID_COLUMNS)
    record.update_summary(**{M.TEST_ACC: result[M.TEST_ACC]})
    grid = [(image, names[truth[i]], names[predicted[i]]) for image, i in zip(images, chosen)]
    _log_to_wandb(config, saved, run_folder, result, (truth, predicted, names, grid))
    return result


def _log_to_wandb(config, saved: dict, run_folder: Path, result: dict, media: tuple = ()) -> None:
    """The run's W&B record gets the result too: in its summary, so a report read from W&B sees which runs were
    tested (and warns when more than one was), and as media (`media`: truth, predictions, class names and the grid's
    (image, true, predicted) rows), the confusion matrix and the prediction grid. It goes where the training logged
    (online or offline, as its latest W&B folder shows), and nowhere when it logged none. A W&B failure only warns."""
    from trainer.config import effective_config
    from trainer.wandb_log import start_logger

    summary = RunRecord.read_summary(run_folder)
    if summary.get(M.STATE) in (M.RUNNING, M.PREEMPTED, None):
        return  # reopening its W&B run would end it as finished while the run itself has not ended
    logged = sorted((run_folder.parent / "wandb").glob(f"*run-*-{run_folder.name}"), key=lambda p: p.stat().st_mtime)
    if not logged:
        return
    mode = "offline" if logged[-1].name.startswith("offline-run-") else "online"
    logger = start_logger(mode, config.wandb_project, config.wandb_entity, run_folder.name,
                          {**saved, "run_id": run_folder.name}, run_folder.parent, effective_config(config),
                          verbose=config.verbose)
    logger.summary({key: result[key] for key in (M.TEST_ACC, M.PER_CLASS_ACC, M.NUM_IMAGES, M.CHECKPOINT)})
    if media:
        logger.log_test(*media)
    logger.finish(summary.get(M.EXIT_CODE) or 0, summary.get(M.STATE))  # ends as the run ended (failed stays failed)

