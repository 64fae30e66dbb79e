"""Metric names, defined once: the loop logs them, the sweep YAMLs optimise them, the report reads them."""

EPOCH = "epoch"
TRAIN_LOSS = "train_loss"
TRAIN_ACC = "train_acc"
VAL_LOSS = "val_loss"
VAL_ACC = "val_acc"  # the sweep metric
LR = "lr"
EPOCH_SECONDS = "epoch_seconds"
IMAGES_PER_SECOND = "images_per_second"

EPOCH_METRICS = (EPOCH, TRAIN_LOSS, TRAIN_ACC, VAL_LOSS, VAL_ACC, LR, EPOCH_SECONDS, IMAGES_PER_SECOND)

# Summary keys (summary.json and the W&B run summary).
STATE = "state"
BEST_VAL_ACC = "best_val_acc"
BEST_EPOCH = "best_epoch"
TRAINABLE_PARAMS = "trainable_params"
TOTAL_PARAMS = "total_params"
TRAIN_SECONDS = "train_seconds"
CACHE_SECONDS = "cache_seconds"  # building (or opening) the decoded-image and feature caches, shared by a sweep
WEIGHTS_VERSION = "weights_version"
# the content hash of a weights file given by path (a warm start, or torchvision's file)
WEIGHTS_SHA256 = "weights_sha256"
INPUT_SIZE = "input_size"  # the training crop in px (the config's, written as a number)
EVAL_SIZE = "eval_size"  # the validation and test crop in px
PEAK_GPU_MEMORY = "peak_gpu_memory_gb"  # torch.cuda.max_memory_allocated over the run, in GiB (CUDA runs only)
SPLIT_HASH = "split_hash"
# the split's files by name and size: same split_hash on other files (a resized copy) differs here
DATA_HASH = "data_hash"
CODE_VERSION = "code_version"  # the commit of the code that trained the run (+dirty.<hash> with local changes)
DEVICE = "device"
# the autocast dtype a run trained with (bfloat16, float16) or fp32; its config may say only `auto`
PRECISION = "precision"
REASON = "reason"
EXIT_CODE = "exit_code"  # the process exit status; 2 = refused before training (a setting or file to fix)
EPOCHS_COMPLETED = "epochs_completed"
# The batch size the run trained at, and, only when that is not the config's, the one asked for: an out-of-memory
# retry (--oom_retry) trains at half. The report shows and groups such a run at the batch size it trained with.
BATCH_SIZE = "batch_size"
BATCH_SIZE_ASKED = "batch_size_asked"

# Run states. A run is "finished" when it trained all epochs or stopped early on its own patience.
FINISHED = "finished"
EARLY_STOPPED = "early_stopped"  # stopped by the sweep's early termination (hyperband)
DIVERGED = "diverged"
OOM = "oom"
FAILED = "failed"
PREEMPTED = "preempted"
RUNNING = "running"
STATES = (FINISHED, EARLY_STOPPED, DIVERGED, OOM, FAILED, PREEMPTED, RUNNING)
DUPLICATE = "duplicate"  # a sweep trial whose effective config was already trained: recorded, never run
SUCCESSFUL_STATES = (FINISHED, EARLY_STOPPED)

CONFIG_HASH = "config_hash"
# The run's epochs (metrics.jsonl's rows) in its W&B summary too: a W&B report reads a sweep's runs, curves included,
# a page of runs per request, instead of a history request (or three) per run.
EPOCH_HISTORY = "epoch_history"

# The held-out test evaluation (`agent.py test RUN` -> RUN/test/test.json).
TEST_ACC = "test_acc"
PER_CLASS_ACC = "per_class_acc"
NUM_IMAGES = "num_images"
CHECKPOINT = "checkpoint"


def at_chance(best_val_acc: float | None, classes: int) -> bool:
    """No better than guessing one class (1/classes): the run learned nothing validation can see. The trainer's
    end-of-run warning and the report's both ask this."""
    return classes > 1 and best_val_acc is not None and 0 <= best_val_acc <= 1 / classes + 1e-9
