"""The table of runs a report is computed from: one `RunRecord` per run, whatever the source.

Sources (local folders, W&B) only fill these records; everything downstream reads them through the
properties here, so "which number is the run's accuracy" is decided in one place: the best epoch's
`val_acc` (the summary's `best_val_acc`, else the maximum over the logged epochs), never the last epoch's.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import EXIT_USER_ERROR
from trainer import metrics
from trainer.config import FIELDS

SCRATCH_MODEL = "scratch_cnn"

# Keys of the test record (test/test.json) and of the config hash, defined once in trainer.metrics.
TEST_ACC, PER_CLASS_ACC = metrics.TEST_ACC, metrics.PER_CLASS_ACC
NUM_IMAGES, CHECKPOINT = metrics.NUM_IMAGES, metrics.CHECKPOINT
CONFIG_HASH = metrics.CONFIG_HASH
# The git commit (`+dirty.<hash of the changes>` with local changes) of the code that trained a run, from its summary.
CODE_VERSION = metrics.CODE_VERSION

PRECISION = metrics.PRECISION

SEED = "seed"
# The protocol's stages (the run parameter `stage`): tuning selects recipes on the validation split; the final stages
# train those recipes again on fresh seeds (compare) and on subsets of the data (curve), and are tested once.
TUNE, COMPARE, CURVE = "tune", "compare", "curve"
FINAL_STAGES = (COMPARE, CURVE)
SEED_KEYS = ("seed", "split_seed")  # what the final stages vary: the rest of a config is its recipe
LOST_STATES = (metrics.FAILED, metrics.DIVERGED, metrics.OOM)  # a seed that trained to no result

# What a run started from (RunRecord.start), in the headline's order.
IMAGENET, WARM_START, RANDOM_INIT, SCRATCH = "imagenet", "warm_start", "random_init", "scratch"
START_KINDS = (IMAGENET, WARM_START, RANDOM_INIT, SCRATCH)
MODEL = "model"
STRATEGY = "strategy"

# Config keys that say where things are or how fast they go, not what is trained (paths, workers, logging):
# two runs that differ only there are the same experiment. The trainer's config marks them, once. Any other
# key counts as effective, so a key unknown here splits seed groups (safe) instead of merging experiments.
NON_EFFECTIVE_KEYS = frozenset(name for name, f in FIELDS.items() if not f.metadata["effective"])

# Table rows (table.jsonl) with this state are trials the sweep driver skipped as repeats of an earlier
# config: shown in the report, never counted as runs.
DUPLICATE = metrics.DUPLICATE


def is_effective_key(key: str) -> bool:
    # A leading underscore marks W&B's own entries (`_wandb`), never a parameter.
    return key not in NON_EFFECTIVE_KEYS and not key.startswith("_")


def finite(value: Any) -> float | None:
    """A float for finite numbers; None for missing, NaN, inf, booleans and strings."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


# The freezing keys today's normalisation may write otherwise than the run recorded: a W&B sweep locks the values it
# suggested (strategy=fraction stays fraction there), and older trainers did not fold equivalent strategies.
_FOLDED_KEYS = ("strategy", "k_layers", "freeze_fraction", "unfreeze_every_epochs", "bn_mode", "backbone_lr_mult",
                "layer_decay")


def _fold_config(config: dict, weights_version: object) -> dict:
    """`config` with its strategy and weights written as today's normalisation writes them, so equivalent runs group as
    one: fraction 0.5 of ResNet-50 with last_k k_layers=2, and torchvision's own weights file given by path (the version
    the run recorded) with the same weights from the hub cache. Configs that no longer parse stay as they are."""
    member = weights_version.rpartition(".")[2] if isinstance(weights_version, str) and "." in weights_version and \
        not weights_version.startswith("file:") else None
    path_of_member = member is not None and isinstance(config.get("weights"), str) and ("/" in config["weights"]
                                                                                        or "." in config["weights"])
    if config.get("model") == SCRATCH_MODEL or not (config.get("strategy") or path_of_member):
        return config
    from common.errors import UserError
    from trainer.config import parse_run_config

    values = {k: v for k, v in config.items() if k in FIELDS and FIELDS[k].metadata["effective"]}
    if path_of_member:
        values["weights"] = member
    try:
        parsed = parse_run_config(values)
    except (UserError, TypeError, ValueError):
        return config
    folded = {key: getattr(parsed, key) for key in (*_FOLDED_KEYS, *(("weights",) if path_of_member else ()))}
    return config if all(config.get(k) == v for k, v in folded.items()) else {**config, **folded}


@dataclass
class RunRecord:
    run_id: str
    state: str
    config: dict
    summary: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    test: dict | None = None
    folder: Path | None = None
    version_label: str | None = field(default=None, compare=False)  # set by RunTable: see model_label

    def __post_init__(self) -> None:
        self.config = _fold_config(self.config, self.summary.get(metrics.WEIGHTS_VERSION))
        # A run retried after CUDA ran out of memory trained at half the batch size it asked for: it is shown,
        # grouped and exported as what it trained (its config hash still names the config asked for).
        trained = self.summary.get(metrics.BATCH_SIZE)
        is_count = isinstance(trained, int) and not isinstance(trained, bool)
        if is_count and trained != self.config.get(metrics.BATCH_SIZE):
            if metrics.BATCH_SIZE in self.config:
                self.summary = {metrics.BATCH_SIZE_ASKED: self.config[metrics.BATCH_SIZE], **self.summary}
            self.config = {**self.config, metrics.BATCH_SIZE: trained}

    @property
    def batch_size_asked(self) -> int | None:
        """The batch size its config asked for, when it trained at another (an out-of-memory retry)."""
        asked = self.summary.get(metrics.BATCH_SIZE_ASKED)
        return asked if isinstance(asked, int) and asked != self.config.get(metrics.BATCH_SIZE) else None

    # --- what the run was -------------------------------------------------------------------------
    @property
    def model(self) -> str | None:
        return self.config.get(MODEL)

    @property
    def strategy(self) -> str | None:
        return self.config.get(STRATEGY)

    @property
    def is_scratch(self) -> bool:
        return self.model == SCRATCH_MODEL

    @property
    def is_random_init(self) -> bool:
        """A pretrained architecture run with weights=none: trained from scratch, not fine-tuned."""
        version = self.summary.get(metrics.WEIGHTS_VERSION) or self.config.get("weights")
        # `version is not None`: str(None) is "None", and weights that were never recorded are not weights=none.
        return not self.is_scratch and version is not None and str(version).lower() == "none"

    @property
    def weights_member(self) -> str | None:
        """The ImageNet weights version it loaded (`IMAGENET1K_V1`), from its summary; None for random init,
        checkpoint files and runs that recorded none."""
        version = self.summary.get(metrics.WEIGHTS_VERSION)
        if not isinstance(version, str) or version == "none" or version.startswith("file:"):
            return None
        return version.rpartition(".")[2] or None

    @property
    def is_warm_start(self) -> bool:
        """Started from a checkpoint file (`--weights=PATH`), not from ImageNet weights or random init."""
        version, weights = self.summary.get(metrics.WEIGHTS_VERSION), self.config.get("weights")
        if isinstance(version, str):
            return version.startswith("file:")
        return isinstance(weights, str) and not self.is_scratch and ("/" in weights or "." in weights)

    @property
    def stage(self) -> str:
        value = self.config.get("stage")
        return value if isinstance(value, str) else ""

    @property
    def in_final_stage(self) -> bool:
        return self.stage in FINAL_STAGES

    @property
    def at_chance(self) -> bool:
        """Its best val_acc is no better than guessing one class: 1/classes (the classes its summary lists)."""
        classes = self.summary.get("classes")
        return isinstance(classes, list) and metrics.at_chance(self.best_val_acc, len(classes))

    @property
    def still_improving(self) -> bool:
        """Finished with its best epoch its last, not cut by patience: the budget may have been too short, and its
        number is a lower bound."""
        return (self.is_complete and self.best_epoch is not None and self.best_epoch == self.epochs_completed
                and not self.summary.get("stopped_by_patience"))

    @property
    def is_lost(self) -> bool:
        """Trained to no result: failed (after training started), diverged, or out of memory."""
        return self.state in LOST_STATES and not self.refused_before_training

    def config_key_as_asked(self, without: tuple[str, ...] = ()) -> str:
        """`config_key`, with the batch size the config asked for: a seed lost after an out-of-memory retry at half the
        batch belongs to the config it was asked as (its record shows the batch size it last tried)."""
        asked = self.batch_size_asked
        if asked is None:
            return self.config_key(without)
        config = {k: v for k, v in self.effective_config.items() if k not in without}
        return json.dumps({**config, metrics.BATCH_SIZE: asked}, sort_keys=True, default=str)

    @property
    def start(self) -> str:
        """What training started from, one of START_KINDS: the headline gives each
        kind its own line, so a warm start from a user's file is never counted as
        ImageNet fine-tuning, nor a scratch CNN resumed from a file as scratch."""
        if self.is_warm_start:
            return WARM_START
        if self.is_scratch:
            return SCRATCH
        return RANDOM_INIT if self.is_random_init else IMAGENET

    @property
    def weights_sha256(self) -> str | None:
        value = self.summary.get(metrics.WEIGHTS_SHA256)
        return value if isinstance(value, str) else None

    @property
    def input_size(self) -> int | None:
        """The training crop in px: the config's (a number since sizes are parameters), else what the run recorded."""
        for value in (self.config.get(metrics.INPUT_SIZE), self.summary.get(metrics.INPUT_SIZE),
                      (self.summary.get("preprocessing") or {}).get("crop_size")
                      if isinstance(self.summary.get("preprocessing"), dict) else None):
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        return None

    @property
    def eval_size(self) -> int | None:
        for value in (self.config.get(metrics.EVAL_SIZE), self.summary.get(metrics.EVAL_SIZE)):
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        return self.input_size  # runs older than eval_size validated at their training size

    @property
    def size_label(self) -> str | None:
        """`288`, or `224→288` for a run evaluated at another size than it trained at."""
        if self.input_size is None:
            return None
        if self.eval_size in (None, self.input_size):
            return str(self.input_size)
        return f"{self.input_size}→{self.eval_size}"

    @property
    def images_per_second(self) -> float | None:
        """Training throughput: the median over its epochs after the first (which also warms caches up), else all."""
        values = [finite(row.get(metrics.IMAGES_PER_SECOND)) for row in self.history]
        values = [v for v in values if v is not None]
        steady = values[1:] or values
        return float(sorted(steady)[len(steady) // 2]) if steady else None

    @property
    def peak_gpu_memory(self) -> float | None:
        """Peak GPU memory in GiB (CUDA runs only)."""
        return finite(self.summary.get(metrics.PEAK_GPU_MEMORY))

    @property
    def model_label(self) -> str | None:
        """The model as tables and plots group and show it: runs of one architecture from other starting points
        (random init, a checkpoint, ResNet-50 V1 beside V2 in one sweep) are other experiments, never averaged
        together. The weights version is named where the table holds more than one for the model."""
        if self.is_random_init:
            return f"{self.model} (random init)"
        if self.is_warm_start:
            return f"{self.model} (warm start)"
        return f"{self.model} ({self.version_label})" if self.version_label else self.model

    @property
    def is_fine_tuned(self) -> bool:
        """Fine-tuned from ImageNet weights: not random init, not a warm start from some other file."""
        return self.start == IMAGENET

    @property
    def effective_config(self) -> dict:
        return {k: v for k, v in sorted(self.config.items()) if is_effective_key(k)}

    def config_key(self, without: tuple[str, ...] = ()) -> str:
        """A hashable identity of the effective config (lists and nulls included), minus `without`."""
        config = {k: v for k, v in self.effective_config.items() if k not in without}
        return json.dumps(config, sort_keys=True, default=str)

    # --- what the run achieved ---------------------------------------------------------------------
    def _history_best(self) -> tuple[float | None, int | None]:
        """The training loop's rule (trainer/loop.py is_better): highest val_acc, ties to the lower val_loss."""
        best, best_loss, best_epoch = None, math.inf, None
        for position, row in enumerate(self.history, start=1):
            value, loss = finite(row.get(metrics.VAL_ACC)), finite(row.get(metrics.VAL_LOSS))
            loss = math.inf if loss is None else loss
            if value is not None and (best is None or value > best or (value == best and loss < best_loss)):
                best, best_loss, best_epoch = value, loss, int(row.get(metrics.EPOCH, position))
        return best, best_epoch

    @property
    def best_val_acc(self) -> float | None:
        value = finite(self.summary.get(metrics.BEST_VAL_ACC))
        return value if value is not None else self._history_best()[0]

    @property
    def best_epoch(self) -> int | None:
        if finite(self.summary.get(metrics.BEST_VAL_ACC)) is not None:
            epoch = finite(self.summary.get(metrics.BEST_EPOCH))
            return int(epoch) if epoch is not None else None
        return self._history_best()[1]

    @property
    def history_best_val_acc(self) -> float | None:
        """For the consistency check: the maximum over the logged epochs."""
        return self._history_best()[0]

    @property
    def epochs_completed(self) -> int | None:
        value = finite(self.summary.get(metrics.EPOCHS_COMPLETED))
        if value is not None:
            return int(value)
        return len(self.history) or None

    @property
    def train_seconds(self) -> float | None:
        value = finite(self.summary.get(metrics.TRAIN_SECONDS))
        if value is None and self.history:
            seconds = [finite(row.get(metrics.EPOCH_SECONDS)) for row in self.history]
            if all(s is not None for s in seconds):
                value = sum(seconds)
        return value

    @property
    def trainable_params(self) -> int | None:
        value = finite(self.summary.get(metrics.TRAINABLE_PARAMS))
        return int(value) if value is not None else None

    @property
    def total_params(self) -> int | None:
        value = finite(self.summary.get(metrics.TOTAL_PARAMS))
        return int(value) if value is not None else None

    @property
    def reason(self) -> str | None:
        return self.summary.get(metrics.REASON)

    @property
    def refused_before_training(self) -> bool:
        """Refused before training (exit status 2: a data folder, weights file or setting to fix): no result to
        weigh, only a mistake to correct, often the same one in several attempts."""
        refused = self.summary.get(metrics.EXIT_CODE) == EXIT_USER_ERROR
        return self.state == metrics.FAILED and refused and not self.history

    @property
    def test_acc(self) -> float | None:
        return finite(self.test.get(TEST_ACC)) if self.test else None

    @property
    def is_successful(self) -> bool:
        """Trained to an end of its own (all epochs, or the sweep's early termination) with a number."""
        return self.state in metrics.SUCCESSFUL_STATES and self.best_val_acc is not None

    @property
    def is_complete(self) -> bool:
        """Finished all its epochs: the runs that enter means, spreads and confidence intervals.

        Early-stopped runs were cut short by the sweep for looking bad; averaging them in would pull
        every mean down by a schedule, not by a worse config.
        """
        return self.state == metrics.FINISHED and self.best_val_acc is not None


@dataclass
class SkippedDuplicate:
    """A trial the sweep driver did not run because an identical effective config already ran."""

    run_id: str
    duplicate_of: str | None
    config: dict


@dataclass
class RunTable:
    records: list[RunRecord]
    name: str
    source: str
    metric_name: str | None = None
    metric_goal: str | None = None
    duplicates: list[SkippedDuplicate] = field(default_factory=list)
    # The parameters of the final stages' sweeps (stage -> the sweep's `parameters`), as their folders pinned them:
    # the grid a stage planned, so cells never started count in n/k. Local sweep folders only.
    grids: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        versions: dict[str | None, set[str]] = defaultdict(set)
        for record in self.records:
            if record.weights_member and not record.is_warm_start:
                versions[record.model].add(record.weights_member)
        for record in self.records:
            if len(versions.get(record.model, ())) > 1 and not record.is_warm_start:
                record.version_label = record.weights_member

    def successful(self) -> list[RunRecord]:
        return [r for r in self.records if r.is_successful]

    def complete(self) -> list[RunRecord]:
        return [r for r in self.records if r.is_complete]

    def not_counted(self) -> dict[str, list[RunRecord]]:
        """Runs outside the means, by state: failures of every kind, running, and early-stopped runs."""
        groups: dict[str, list[RunRecord]] = defaultdict(list)
        for record in self.records:
            if not record.is_complete:
                groups[record.state].append(record)
        return dict(groups)


def failure_reason(record: RunRecord) -> str:
    """Why a run is not in the means, in words, for the report."""
    if record.reason:
        return str(record.reason)
    if record.state == metrics.EARLY_STOPPED:
        return "stopped early by the sweep"
    if record.state in metrics.SUCCESSFUL_STATES and record.best_val_acc is None:
        return f"no finite {metrics.BEST_VAL_ACC}"
    if record.state == metrics.RUNNING:
        return "training now"
    return "no reason recorded"
