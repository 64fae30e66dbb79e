"""The typed run config: every parameter once, with its default, allowed values and help, parsed at the edge.

Values flow one way: defaults, then a YAML file or `wandb.config`, then `--key=value` / `--key value` from
the command line (the form `wandb agent` passes). `parse_run_config` validates everything once and returns
a frozen `RunConfig`; nothing downstream reads raw dicts or strings like "True". `normalise`
nulls parameters that do not apply (k_layers when the strategy ignores it, scratch CNN options for a
pretrained backbone, warmup under onecycle, bn_mode where no frozen stage has BatchNorm) and writes
equivalent values one way (a strategy as the simplest one that trains the same parameters: fraction as last_k,
norm_and_head on VGG-16 as head_only; the default weights' name as "imagenet"; sizes as numbers), so two configs
that train the same thing compare equal in `effective_config`.

The config stops at `trainer.run`: below it, functions take the typed values they use (`LearningRates`, `Freezing`,
`TrainSettings`, `InputSettings`). The map of the code, one value from the YAML to the line where it acts:
  lr: sweeps/*.yaml -> trainer/config.py (RunConfig.lr) -> trainer/run.py (LearningRates.of) -> trainer/optim.py (stage_lr, lr_factor)
  strategy/k_layers: sweeps/*.yaml -> trainer/config.py (freezing_of, folded) -> trainer/optim.py (LearningRates.advance) -> models/freezing.py (Freezing.plan: _top)
  augment: sweeps/*.yaml -> trainer/config.py (RunConfig.augment) -> trainer/run.py (InputSettings.of) -> trainer/inputs.py -> data/augment.py (_Policy)
"""  # noqa: E501  (the map of the code: one walk a line)

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import sys
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import UserError
from common.parsing import nearest, parse_bool
from common.yamlfile import read_yaml
from data.seeds import SEED_MAX
from models.freezing import Freezing, strategy_help
from scratch_cnn.config import FIELDS as SCRATCH_RULES, INPUT_SIZE as SCRATCH_INPUT

GROUPS = ("data", "model", "freezing", "scratch_cnn", "optimization", "runtime", "record")


def _opt(default, help: str | Callable[[], str], group: str, choices: tuple | None = None, low=None, high=None,
         effective: bool = True, env: str | None = None, check: Callable[[Any], str | None] | None = None):
    """A config field; `effective` is False for fields that cannot change the trained result (paths, logging)."""
    meta = {"help": help, "group": group, "choices": choices, "low": low, "high": high, "effective": effective,
            "env": env, "default": default, "check": check}
    if env:
        return field(default_factory=lambda: os.environ.get(env, default), metadata=meta)
    return field(default=default, metadata=meta)


def _scratch(name: str):
    """A scratch_cnn field of the run config, as scratch_cnn/config.py declares it (default, help, allowed values)."""
    rule = SCRATCH_RULES[name]
    return _opt(rule.default, rule.help, "scratch_cnn", choices=rule.choices, low=rule.low, high=rule.high,
                check=rule.check)


_DEFAULT_CACHE = str(Path("~/.cache/finetune-sweeps").expanduser())


@dataclass(frozen=True)
class RunConfig:
    # data
    data_dir: str = _opt("datasets/nature_12K",
                         "dataset folder: nature_12K (inaturalist_12K/train, val) or any folder with train/ and val/ "
                         "or test/ class sub-folders", "data", effective=False, env="FINETUNE_DATA_DIR")
    download: bool = _opt(True, "download nature_12K.zip into data_dir when no dataset is found there", "data",
                          effective=False)
    val_fraction: float = _opt(0.2, "fraction of train/ held out for validation, per class", "data", low=0.01, high=0.9)
    split_seed: int = _opt(0, "seed of the train/validation split; keep it fixed across a sweep", "data", low=0,
                           high=2**32 - 1)
    subset_fraction: float = _opt(1.0, "stratified fraction of the training part to use (nested: 0.25 is inside 0.5)",
                                  "data", low=0.001, high=1.0)
    augment: str = _opt("standard",
                        "train augmentation: none, standard (random resized crop + flip), strong (+ rotation, colour "
                        "jitter)", "data", choices=("none", "standard", "strong"))
    cache_dir: str = _opt(_DEFAULT_CACHE,
                          "where decoded images and frozen-layer features are cached, shared by all runs", "data",
                          effective=False, env="FINETUNE_CACHE_DIR")
    image_cache: bool = _opt(True, "decode each image once into a memory-mapped cache instead of every epoch", "data",
                             effective=False)
    feature_cache: bool = _opt(True, "with augment=none, compute frozen leading stages once and train only the rest",
                               "data", effective=False)
    num_workers: int = _opt(
        -1, "data loader worker processes; -1 picks from the CPU count, and more than its cores start one per core",
        "data", low=-1, high=64, effective=False)
    # model
    model: str = _opt("resnet50", "backbone name (python agent.py models lists them) or scratch_cnn", "model")
    weights: str = _opt("imagenet",
                        "imagenet (the registry's explicit version), a version "
                        "name like IMAGENET1K_V1, none, or a checkpoint path", "model")
    aux_loss_weight: float | None = _opt(
        None, "weight of InceptionV3/GoogLeNet auxiliary losses; empty = the architecture's default (0 for "
              "inception_v3 below the 299 px its aux head needs), 0 disables", "model", low=0.0, high=1.0)
    input_size: int | None = _opt(
        None, "training crop size in px, any model; empty = the weights' own (224; inception_v3 299, efficientnet_v2_s "
              "384; a warm start's recorded size; scratch_cnn 224). Images are resized in the weights' resize/crop "
              "ratio (256/224 style)", "model", low=16, high=1024)
    eval_size: int | None = _opt(
        None, "validation and test crop size in px; empty = input_size. Larger than input_size evaluates at a higher "
              "resolution than training (train 224, test 288: the FixRes effect)", "model", low=16, high=1024)
    mean: tuple[float, float, float] | None = _opt(
        None, "input normalisation mean (r,g,b in 0..1) of a warm start, random init or scratch_cnn; empty = the "
              "start's own (a run checkpoint's record, FILE.json beside a weights FILE, else ImageNet's)", "model",
        low=0.0, high=1.0)
    std: tuple[float, float, float] | None = _opt(None, "input normalisation std (r,g,b), as mean", "model", low=1e-6,
                                                  high=10.0)
    # freezing
    # read from the registry when shown: a new entry is listed
    strategy: str = _opt("last_k", strategy_help, "freezing")
    k_layers: int | None = _opt(1, "last_k: number of trailing backbone stages trained with the head", "freezing",
                                low=0)
    freeze_fraction: float | None = _opt(0.5, "fraction: share of leading backbone stages kept frozen", "freezing",
                                         low=0.0, high=1.0)
    unfreeze_every_epochs: int | None = _opt(1, "gradual: epochs between unfreezing one more stage", "freezing", low=1)
    bn_mode: str = _opt("freeze",
                        "BatchNorm in frozen stages: freeze (eval mode, statistics fixed) or adapt (statistics follow "
                        "the data)", "freezing", choices=("freeze", "adapt"))
    # scratch_cnn: declared once, in scratch_cnn/config.py (what a run accepts is what the model builds)
    filters: int | None = _scratch("filters")
    filter_organization: str | None = _scratch("filter_organization")
    kernel_size: int | None = _scratch("kernel_size")
    activation: str | None = _scratch("activation")
    batch_norm: bool | None = _scratch("batch_norm")
    dropout: float | None = _scratch("dropout")
    dense_units: int | None = _scratch("dense_units")
    # optimization
    optimizer: str = _opt("adamw", "optimizer", "optimization", choices=("adamw", "sgd"))
    lr: float = _opt(1e-3, "learning rate of the head (and of every layer of scratch_cnn)", "optimization", low=1e-7,
                     high=10.0)
    backbone_lr_mult: float | None = _opt(
        None, "backbone learning rate = lr x this (discriminative learning rates); empty = 0.1 for pretrained weights "
              "(ImageNet or a file), 1 for random init, which has nothing to keep", "optimization", low=0.0, high=10.0)
    layer_decay: float | None = _opt(1.0, "extra factor per stage further from the head (layer-wise lr decay; 1 = off)",
                                     "optimization", low=0.01, high=1.0)
    weight_decay: float = _opt(0.01, "weight decay (not applied to biases and norm layers)", "optimization", low=0.0,
                               high=1.0)
    momentum: float | None = _opt(0.9, "sgd momentum", "optimization", low=0.0, high=0.999)
    schedule: str = _opt("cosine", "learning-rate schedule after warmup, stepped per batch", "optimization",
                         choices=("cosine", "onecycle", "constant"))
    warmup_epochs: float | None = _opt(
        1.0, "linear warmup length in epochs (fractions allowed), at most half the run; empty under schedule=onecycle, "
             "which warms up over its own first 30%", "optimization", low=0.0, high=100.0)
    epochs: int = _opt(10, "training epochs", "optimization", low=1, high=10_000)
    batch_size: int = _opt(32, "images per batch", "optimization", low=1, high=65_536)
    label_smoothing: float = _opt(0.1, "label smoothing of the cross-entropy loss", "optimization", low=0.0, high=0.5)
    grad_clip: float = _opt(1.0, "clip the gradient norm to this; 0 = off", "optimization", low=0.0)
    patience: int = _opt(5, "early stopping: epochs without a better epoch (val_acc; ties: lower val_loss) before "
                            "stopping; 0 = off", "optimization", low=0)
    seed: int = _opt(0, "seed of weight init, data order, augmentation and dropout", "optimization", low=0,
                     high=SEED_MAX)
    # runtime
    device: str = _opt("auto", "auto (CUDA when available), cpu, cuda or cuda:N", "runtime", effective=False)
    precision: str = _opt(
        "auto", "auto (bf16 on GPUs that support it, else fp16 with a grad scaler; fp32 on CPU), fp32, bf16, fp16",
        "runtime", choices=("auto", "fp32", "bf16", "fp16"), effective=False)
    channels_last: bool = _opt(
        True, "channels_last memory format (faster convolutions on GPUs, and for depthwise ones on CPUs)", "runtime",
        effective=False)
    compile: bool = _opt(False, "torch.compile the model (CUDA; slower first epoch)", "runtime", effective=False)
    oom_retry: bool = _opt(True, "on CUDA out-of-memory, retry once at half the batch size", "runtime", effective=False)
    checkpoint_minutes: float = _opt(10.0, "also checkpoint every N minutes inside long epochs; 0 = only at epoch ends",
                                     "runtime", low=0.0, effective=False)
    checkpoint_frozen_stages: bool = _opt(
        False, "also write stages frozen for the whole run into checkpoints (self-contained files; by default they are "
               "left out and loaded from the ImageNet weights they are)", "runtime", effective=False)
    # record
    output_dir: str = _opt("runs", "folder of run folders", "record", effective=False, env="FINETUNE_OUTPUT_DIR")
    run_id: str = _opt(
        "", "run folder name; empty = WANDB_RUN_ID when set, else a new id. "
            "A run id whose run was interrupted resumes it", "record", effective=False)
    resume: bool = _opt(
        False, "require resuming run_id (or the latest unfinished run in output_dir) from its last checkpoint",
        "record", effective=False)
    checkpoint_store: str = _opt(
        "auto", "where checkpoints also go, to survive the machine: auto (W&B artifacts when the run is online), local "
                "(run folder only), wandb, or a folder (e.g. on Google Drive)", "record", effective=False)
    wandb_mode: str = _opt("auto", "auto (online when logged in, else offline), online, offline, disabled", "record",
                           choices=("auto", "online", "offline", "disabled"), effective=False)
    wandb_project: str = _opt("finetune-sweeps", "W&B project", "record", effective=False, env="WANDB_PROJECT")
    wandb_entity: str = _opt("", "W&B entity (team or user); empty = your default", "record", effective=False,
                             env="WANDB_ENTITY")
    stage: str = _opt(
        "", "the protocol stage this run belongs to (tune, compare, curve): set by `agent.py protocol` and the "
            "protocol's sweep YAMLs, read by the report; empty = none", "record",
        choices=("", "tune", "compare", "curve"), effective=False)
    verbose: bool = _opt(
        False, "print W&B's own start banner and end-of-run summary; by default a run prints one W&B line, its URL or "
               "the `wandb sync` command", "record", effective=False)

    def replace(self, **changes) -> RunConfig:
        return dataclasses.replace(self, **changes)


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(RunConfig)}
NULL_STRINGS = {"", "none", "null", "~"}

SCRATCH_FIELDS = tuple(n for n, f in FIELDS.items() if f.metadata["group"] == "scratch_cnn")
NORMALISATION_FIELDS = ("mean", "std")
FREEZE_OPTION_FIELDS = ("k_layers", "freeze_fraction", "unfreeze_every_epochs")


@functools.cache
def _hints() -> dict[str, Any]:
    return typing.get_type_hints(RunConfig)  # evaluating the string annotations is slow: once per process


def _base_type(name: str):
    hint = _hints()[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return (args[0] if args else hint), type(None) in typing.get_args(hint)


RUN_ID_CHARACTERS = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def run_id_problem(run_id: str) -> str | None:
    """Why `run_id` cannot name a run folder inside --output_dir (a path, a separator, `..`), or None. The one rule
    for every run id: --run_id, WANDB_RUN_ID and the ids a sweep makes."""
    if RUN_ID_CHARACTERS.fullmatch(run_id) and run_id not in (".", ".."):
        return None
    return (f"{run_id!r} is not a run id: a run id names a folder inside --output_dir, so it uses letters, digits, "
            "'-', '_' and '.' only (at most 128 of them, and not '.' or '..')")


# What other tools call a parameter (timm, torchvision's reference scripts, Keras, fastai, PyTorch Lightning): an
# unknown name found here is answered with ours, where spelling alone would not find it (learning_rate is not lr).
OTHER_NAMES = {
    "learning_rate": "lr", "base_lr": "lr", "num_epochs": "epochs", "n_epochs": "epochs", "max_epochs": "epochs",
    "bs": "batch_size", "img_size": "input_size", "image_size": "input_size", "resolution": "input_size",
    "crop_size": "input_size", "train_crop_size": "input_size", "val_crop_size": "eval_size",
    "test_size": "val_fraction", "val_size": "val_fraction", "val_split": "val_fraction",
    "validation_split": "val_fraction",
    "arch": "model", "backbone": "model", "network": "model", "pretrained": "weights", "freeze": "strategy",
    "freezing": "strategy", "wd": "weight_decay", "smoothing": "label_smoothing", "early_stopping": "patience",
    "data": "data_dir", "data_path": "data_dir", "dataset": "data_dir", "workers": "num_workers", "amp": "precision",
    "lr_scheduler": "schedule", "scheduler": "schedule", "sched": "schedule", "opt": "optimizer",
}


def suggest_parameter(name: str) -> str:
    """The ` (did you mean X?)` suffix for an unknown run parameter: another tool's name for one of ours, or a typo."""
    name = str(name).replace("-", "_")
    return f" (did you mean {OTHER_NAMES[name]!r}?)" if name in OTHER_NAMES else nearest(name, FIELDS)


def parse_value(name: str, raw: Any) -> Any:
    """One field's value from whatever form it arrived in (YAML scalar, CLI string, numpy scalar)."""
    if name not in FIELDS:
        raise UserError(f"unknown parameter {name!r}{suggest_parameter(name)}; `python agent.py --help` lists them all")
    kind, optional = _base_type(name)
    meta = FIELDS[name].metadata
    if hasattr(raw, "item") and not isinstance(raw, (str, bytes)):
        raw = raw.item()  # numpy scalars from the sweep engine
    # "none" is a value for a boolean (--batch_norm=none is False, as parse_bool reads it), never "unset"
    if raw is None or (isinstance(raw, str) and raw.strip().lower() in NULL_STRINGS and kind not in (str, bool)):
        if optional:
            return None
        raise UserError(f"{name} needs a value (default {FIELDS[name].default!r})")
    try:
        if typing.get_origin(kind) is tuple:
            value = _parse_triple(raw)
            low, high = meta["low"], meta["high"]
            if not all(low <= v <= high for v in value):
                raise UserError(
                    f"{name}={_plain(value)} is out of range: each of its three numbers in [{low:g}, {high:g}]")
            return value
        if kind is bool:
            value = parse_bool(raw, name)
        elif kind is int:
            number = _int_or_float(raw) if isinstance(raw, str) else raw
            if isinstance(number, bool) or float(number) != int(float(number)):
                raise ValueError
            value = int(number)
        elif kind is float:
            if isinstance(raw, bool):
                raise ValueError
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError
        else:
            value = str(raw).strip()
            if optional and value.lower() in NULL_STRINGS:
                return None
            if "\x00" in value:  # no path or name can hold one; os calls would fail on it much later
                raise UserError(f"{name}={value!r} contains a NUL character: {help_of(name)}")
    except (TypeError, ValueError, OverflowError):
        kind_name = "list of three numbers" if typing.get_origin(kind) is tuple else kind.__name__
        raise UserError(f"{name}={raw!r} is not a valid {kind_name}: {help_of(name)}") from None
    if name == "run_id" and value and run_id_problem(value):
        raise UserError(f"run_id={run_id_problem(value)}")
    choices = meta["choices"]
    if choices and value not in choices:
        raise UserError(f"{name}={value!r} is not one of {', '.join(choices)}{nearest(value, choices)}")
    if meta["low"] is not None and value < meta["low"] or meta["high"] is not None and value > meta["high"]:
        low = meta["low"] if meta["low"] is not None else "-inf"
        high = meta["high"] if meta["high"] is not None else "inf"
        raise UserError(f"{name}={value} is out of range [{low}, {high}]")
    reason = meta["check"](value) if meta["check"] else None
    if reason:
        raise UserError(f"{name}={value} {reason}")
    return value


def _parse_triple(raw: Any) -> tuple[float, float, float]:
    """Three finite numbers: a YAML list, or text like `0.5,0.5,0.5` or `[0.5, 0.5, 0.5]` (how W&B passes a list)."""
    if isinstance(raw, str):
        raw = [part for part in raw.strip().strip("[]()").replace(",", " ").split() if part]
    if not isinstance(raw, (list, tuple)) or len(raw) != 3 or any(isinstance(v, bool) for v in raw):
        raise ValueError
    value = tuple(float(v) for v in raw)
    if not all(math.isfinite(v) for v in value):
        raise ValueError
    return value


def _plain(value: Any) -> Any:
    """Tuples as lists: the form YAML, JSON and W&B write and read back."""
    return list(value) if isinstance(value, tuple) else value


def _int_or_float(text: str) -> int | float:
    """An integer written as text, read exactly (a float holds integers only up to 2^53); "1e3" as the number it is."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def parse_cli(args: Iterable[str]) -> dict[str, str]:
    """`--key=value`, `--key value` and bare `--flag` (true) into a dict of strings."""
    args, values, i = list(args), {}, 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise UserError(f"unexpected argument {arg!r}: parameters are given as --key=value")
        key, has_value, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if not has_value:
            nxt = args[i + 1] if i + 1 < len(args) else None
            if nxt is not None and not nxt.startswith("--"):
                value, i = nxt, i + 1
            elif key in FIELDS and _base_type(key)[0] is bool:
                value = "true"
            else:
                raise UserError(f"--{key} needs a value: --{key}=VALUE")
        values[key] = value
        i += 1
    return values


# The keys of a parameter in a W&B sweep definition (`value` fixes it; the others define a search space).
SPEC_KEYS = ("value", "values", "distribution", "min", "max", "mu", "sigma", "q", "probabilities", "a", "b")


def listed_values(spec: Any) -> list[Any]:
    """The values a sweep parameter lists (`value` or `values`); [] for a distribution or anything else."""
    if not isinstance(spec, dict):
        return []
    return [spec["value"]] if "value" in spec else list(spec["values"]) if isinstance(spec.get("values"), list) else []


# `agent.py --config FILE`, and the sweep parameter of the same name whose values are such files, one recipe each
# (the protocol's final stages): the file's fixed run values first, then the trial's or the command line's.
RECIPE = "config"


def load_yaml_values(path: Path | str) -> dict[str, Any]:
    """A flat YAML mapping of parameters, or a W&B sweep-style `parameters: {name: {value: v}}` block."""
    path = Path(path)
    data = read_yaml(path, "config file") or {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of parameter: value")
    if isinstance(data.get("parameters"), dict):
        for name, spec in data["parameters"].items():  # a typo of `value` is no search space
            unknown = [k for k in spec if k not in SPEC_KEYS] if isinstance(spec, dict) else []
            if unknown:
                raise UserError(f"config file {path}: parameter {name!r} has the key "
                                f"{unknown[0]!r}{nearest(str(unknown[0]), SPEC_KEYS)}; "
                                f"write {name}: {{value: ...}} for a fixed value")
        searched = [k for k, v in data["parameters"].items() if not (isinstance(v, dict) and "value" in v)]
        if searched:  # one run cannot take a search space: it would silently train the defaults instead
            raise UserError(f"config file {path} is a sweep whose "
                            f"{', '.join(searched[:3])}{' ...' if len(searched) > 3 else ''} "
                            f"{'is' if len(searched) == 1 else 'are'} searched; run it with `python agent.py sweep "
                            f"{path} --count N`, or give --config a file of fixed values")
        data = {k: v["value"] for k, v in data["parameters"].items()}
    for key, value in data.items():
        if str(key).replace("-", "_") not in FIELDS:
            raise UserError(
                f"config file {path}: unknown parameter "
                f"{key!r}{suggest_parameter(key)}; `python agent.py --help` lists them")
        try:
            parse_value(str(key).replace("-", "_"), value)  # type and range, named with the file that holds it
        except UserError as exc:
            raise UserError(f"config file {path}: {exc}") from None
    return data


def parse_run_config(*sources: Mapping[str, Any]) -> RunConfig:
    """Defaults, then each mapping in order (later wins); validated, normalised and frozen."""
    return parse_run_config_explained(*sources)[0]


def parse_run_config_explained(*sources: Mapping[str, Any]) -> tuple[RunConfig, dict[str, str]]:
    """`parse_run_config`, and why normalising nulled each parameter it nulled (see `normalise_explained`)."""
    values: dict[str, Any] = {}
    for source in sources:
        for key, raw in source.items():
            key = key.replace("-", "_")
            values[key] = parse_value(key, raw)
    return normalise_explained(RunConfig(**values))


def normalise(config: RunConfig) -> RunConfig:
    """Fill architecture-dependent values and null out parameters that do not apply to this run."""
    return normalise_explained(config)[0]


def normalise_explained(config: RunConfig) -> tuple[RunConfig, dict[str, str]]:
    """`normalise`, and why it nulled each parameter it nulled (name -> the reason, in words): the one place both
    are decided, so a note that a value was ignored can never disagree with what the run trains."""
    from models.registry import get_spec

    spec = get_spec(config.model)
    changes: dict[str, Any] = {"model": spec.name}
    why: dict[str, str] = {}

    def drop(names, reason: str) -> None:
        for name in names:
            changes[name], why[name] = None, reason

    freezing = freezing_of(config)  # a typo is one even where the strategy does not apply
    if spec.weights_enum is None:  # trained from scratch: no pretrained weights, everything trains
        if config.weights.lower() in ("imagenet",) or config.weights.upper().startswith("IMAGENET"):
            changes["weights"] = "none"
        changes.update(strategy="full", bn_mode="freeze")
        drop(("aux_loss_weight", "backbone_lr_mult", "layer_decay", *FREEZE_OPTION_FIELDS),
             "scratch_cnn trains every layer alike")
        for name in SCRATCH_FIELDS:
            if getattr(config, name) is None:
                changes[name] = FIELDS[name].default
    else:
        freezing = _canonical_freezing(spec, freezing, config.epochs)  # equivalent strategies written as one
        strategy = freezing.strategy
        changes["strategy"] = strategy.name
        for name in FREEZE_OPTION_FIELDS:
            changes[name] = getattr(freezing.options, name) if name in strategy.uses else None
            if name not in strategy.uses:
                why[name] = f"strategy {strategy.name} does not use it"
        drop(SCRATCH_FIELDS, "scratch_cnn only")
        if not spec.aux_heads:
            drop(("aux_loss_weight",), f"{spec.name} has no aux heads")
        if strategy.name == "head_only":
            drop(("backbone_lr_mult", "layer_decay"), "head_only trains no backbone layer")
        else:
            random_init = config.weights.lower() == "none"  # nothing pretrained to keep: the backbone learns at lr
            default = 1.0 if random_init else 0.1
            changes["backbone_lr_mult"] = default if config.backbone_lr_mult is None else config.backbone_lr_mult
            changes["layer_decay"] = 1.0 if config.layer_decay is None else config.layer_decay
        changes.update(_fold_bn_mode(spec, freezing))
        if config.weights == spec.default_weights:  # the explicit name of what "imagenet" means
            changes["weights"] = "imagenet"
    sizes = _input_sizes(spec, dataclasses.replace(config, **changes))
    changes.update(sizes)
    if any(sizes.get(name, "kept") is None for name in NORMALISATION_FIELDS):
        why.update({name: f"the ImageNet weights of {spec.name} bring their own normalisation"
                    for name in NORMALISATION_FIELDS})
    if config.schedule == "onecycle":  # onecycle warms up over its own first 30%
        drop(("warmup_epochs",), "the onecycle schedule warms up by itself")
    elif config.warmup_epochs is None:
        changes["warmup_epochs"] = FIELDS["warmup_epochs"].default
    warmup = changes.get("warmup_epochs", config.warmup_epochs)
    if warmup is not None and warmup > config.epochs / 2:  # a run all warmup never trains at its lr (--epochs=1)
        changes["warmup_epochs"] = config.epochs / 2
    if config.optimizer != "sgd":
        drop(("momentum",), f"optimizer {config.optimizer} has none; sgd only")
    elif config.momentum is None:
        changes["momentum"] = 0.9
    if config.weights.lower() == "none":
        changes.setdefault("weights", "none")
    # Recorded absolute (config.yaml, W&B): `agent.py test RUN` from another folder finds the run's data and caches.
    changes.update(
        {name: os.path.abspath(os.path.expanduser(getattr(config, name))) for name in ("data_dir", "cache_dir")})
    return dataclasses.replace(config, **changes), why


def _input_sizes(spec, config: RunConfig) -> dict[str, Any]:
    """The training and evaluation sizes written as numbers (the default is the start's own size, so an explicit
    --input_size=224 on ResNet-50 is the same config as none), checked against what the net can take; the aux
    loss off by default where the aux head cannot take the size; mean/std dropped where the weights bring theirs."""
    changes: dict[str, Any] = {}
    if spec.is_scratch:
        size = config.input_size if config.input_size is not None else SCRATCH_INPUT.default
        changes["input_size"] = size
    else:
        # ImageNet weights or random init: no file to read, no torch to import
        native = spec.native_size(config.weights)
        if native is not None:
            default, imagenet = native, config.weights != "none"
        else:  # a file: torchvision's own file of a version, or a warm start with a size recorded or in its sidecar
            from models.weights import input_geometry

            geometry = input_geometry(spec.name, config.weights)
            default, imagenet = geometry.default_size, geometry.start == "imagenet"
        size = config.input_size if config.input_size is not None else default
        changes["input_size"] = size
        if imagenet:
            changes.update({name: None for name in NORMALISATION_FIELDS})  # ImageNet weights: their own mean/std
        if spec.aux_heads and size < spec.aux_min_input_size and config.aux_loss_weight is None:
            changes["aux_loss_weight"] = 0.0  # the aux head cannot run below its size: off, and written so
    aux_on = bool(spec.aux_heads) and changes.get("aux_loss_weight", config.aux_loss_weight) != 0
    problem = spec.input_size_problem(size, "input_size", aux_heads=aux_on)
    if problem is None and config.eval_size is not None:
        problem = spec.input_size_problem(config.eval_size, "eval_size")
        if problem is None and spec.sized_by_input and config.eval_size != size:
            problem = (f"eval_size={config.eval_size} differs from input_size={size}, but {spec.name}'s dense layer is "
                       "built for its input size: leave eval_size empty (or equal to input_size)")
    if problem:
        raise UserError(problem)
    changes["eval_size"] = config.eval_size if config.eval_size is not None else size
    return changes


def freezing_of(config: RunConfig) -> Freezing:
    """The run's strategy with the options it uses: the one place a RunConfig becomes a `Freezing`."""
    strategy = Freezing.of(config.strategy).strategy
    return Freezing.of(
        config.strategy, **{name: getattr(config, name) for name in FREEZE_OPTION_FIELDS if name in strategy.uses})


def _canonical_freezing(spec, freezing: Freezing, epochs: int) -> Freezing:
    """The freezing written one way among those that train the same parameters in every epoch: a static plan is
    head_only, last_k with k_layers=k, or full (fraction=0.5 of ResNet-50's 5 stages is last_k with k_layers=2;
    last_k with every stage is full), and norm_and_head on a net without norm layers (VGG-16) is head_only. Gradual
    unfreezing that never unfreezes within the run is head_only; one that does stays itself."""
    plans = set(freezing.plans(spec.stage_names, epochs, spec.name))  # validates
    if len(plans) > 1:
        return freezing
    plan = plans.pop()
    backbone = spec.stage_names[:-1]
    trained = sum(stage in plan.trainable_stages for stage in backbone)
    if plan.train_norm_layers and trained < len(backbone) and spec.norm_layers:  # every stage trained: its norms too
        # The norm layers of frozen stages train: norm_and_head when no stage does; else nothing simpler trains that.
        return Freezing.of("norm_and_head") if trained == 0 else freezing
    if trained == 0:
        return Freezing.of("head_only")
    if trained == len(backbone):
        return Freezing.of("full")
    return Freezing.of("last_k", k_layers=trained)


def _fold_bn_mode(spec, freezing: Freezing) -> dict[str, Any]:
    """bn_mode written as the default where no frozen stage has BatchNorm in eval mode (nothing frozen, norm layers
    trained by the plan, or a net without BatchNorm): both values train the same model."""
    first = freezing.plan(spec.stage_names, 0, spec.name)  # the first epoch freezes most
    if not spec.batch_norm or first.train_norm_layers or first.trainable_stages >= set(spec.stage_names):
        return {"bn_mode": FIELDS["bn_mode"].default}
    return {}


def effective_config(config: RunConfig) -> dict[str, Any]:
    """The fields that determine the trained result (plain values): the identity of a sweep trial."""
    return {name: _plain(getattr(config, name)) for name, f in FIELDS.items() if f.metadata["effective"]}


def config_hash(config: RunConfig) -> str:
    text = json.dumps(effective_config(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def rehash(saved: Mapping[str, Any] | None) -> str | None:
    """The hash an effective config saved by this or older code has under today's normalisation, so a change
    in how equivalent values are written does not orphan the checkpoints and sweep trials saved before it.
    None when it no longer reads (a field removed or renamed, a value no longer allowed)."""
    if not saved or not set(saved) <= set(FIELDS):
        return None
    if _trains_otherwise_today(saved):
        return None
    try:
        return config_hash(parse_run_config(saved))
    except (UserError, TypeError, ValueError):
        return None


def _trains_otherwise_today(saved: Mapping[str, Any]) -> bool:
    """Saved values that today's normalisation changes in what is trained, not only in how it is written: a warmup
    longer than half the run (capped since), `half` filters below 8 (the first block was widened to 8 before)."""
    def number(key: str) -> float | None:
        value = saved.get(key)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    warmup, epochs, filters = number("warmup_epochs"), number("epochs"), number("filters")
    if warmup is not None and epochs is not None and saved.get("schedule") != "onecycle" and warmup > epochs / 2:
        return True
    return saved.get("filter_organization") == "half" and filters is not None and filters < 8


def to_dict(config: RunConfig) -> dict[str, Any]:
    return {name: _plain(value) for name, value in dataclasses.asdict(config).items()}


def help_of(name: str) -> str:
    """A field's help text; a registry's fields (the strategy) compute theirs when shown."""
    text = FIELDS[name].metadata["help"]
    return text() if callable(text) else text


def _documented_fields():
    """(group, name, default as documented, allowed values, env variable, help) for every field, by group."""
    for group in GROUPS:
        for name, f in FIELDS.items():
            meta = f.metadata
            if meta["group"] != group:
                continue
            default = meta["default"] if name != "cache_dir" else "~/.cache/finetune-sweeps"  # not this machine's home
            if meta["choices"]:
                allowed = ", ".join(meta["choices"])
            elif meta["low"] is not None or meta["high"] is not None:
                low, high = ("" if bound is None else bound for bound in (meta["low"], meta["high"]))
                allowed = f"{low}..{high}"
            else:
                allowed = ""
            yield group, name, "" if default is None else default, allowed, meta["env"], help_of(name)


def help_text() -> str:
    """`python agent.py --help`: every parameter with its default and allowed values, by group."""
    lines, current = [], None
    for group, name, default, allowed, env, text in _documented_fields():
        if group != current:
            lines.append(f"\n{group}:")
            current = group
        allowed = f" {{{allowed}}}" if allowed else ""
        lines.append(f"  --{name}={default}{allowed}{f' (env {env})' if env else ''}\n      {text}")
    return "\n".join(lines)


def reference_markdown() -> str:
    """The configuration table of docs/configuration.md, generated so
    it cannot drift from the code (`python -m trainer.config`)."""
    rows, current = ["| parameter | default | allowed | meaning |", "|---|---|---|---|"], None
    for group, name, default, allowed, env, text in _documented_fields():
        if group != current:
            rows.append(f"| **{group}** | | | |")
            current = group
        rows.append(
            f"| `{name}` | `{default}` | {allowed} | {text.replace('|', '/')}{f' (env `{env}`)' if env else ''} |")
    return "\n".join(rows)


def write_reference(readme: Path) -> None:
    """Replace the table between the CONFIG-REFERENCE markers of docs/configuration.md with the generated one."""
    start, end = "<!-- CONFIG-REFERENCE:START -->", "<!-- CONFIG-REFERENCE:END -->"
    text = readme.read_text()
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{reference_markdown().strip()}\n{end}{tail}")


if __name__ == "__main__":  # python -m trainer.config [--write]: print the table, or update docs/configuration.md
    if "--write" in sys.argv[1:]:
        write_reference(Path(__file__).resolve().parents[1] / "docs" / "configuration.md")
    else:
        print(reference_markdown())
