#!/usr/bin/env python
"""Input pipeline benchmark: the naive public recipe, the harness, and the model alone, side by side in one run.

On one synthetic iNaturalist-like dataset (data/synthetic.py) and one model, it times
- naive: torchvision ImageFolder + PIL transforms + DataLoader(num_workers=cores), fp32, the whole model run
  every epoch with frozen stages merely excluded from the gradient (what public fine-tuning notebooks do);
- harness: `trainer.run.run_training`, with its decoded-image and frozen-feature caches built inside the timed
  region by the first run of a sweep and reused by later runs;
- model alone: the same model's train step on tensors already in memory (the limit for the model and device).
A 6-run sweep (head_only, last_k with k_layers=1, full; two learning rates each) runs naive and harness runs
interleaved, so machine load drifts hit both; every figure is a median over the samples taken. It prints
the ratios and PASS/FAIL against the targets (never a non-zero exit: it is a measurement) and writes a section
per (device, model, input size) into benchmarks/RESULTS.md with the exact command.

The input size comes from the weights' metadata; a smaller one (for CPUs) is applied by monkeypatching
`trainer.run.preprocessing_for`, and the naive pipeline gets the same crop and resize, so both do equal work.

    python benchmarks/pipeline.py                                  # CPU: mobilenet_v3_small at 112 px
    python benchmarks/pipeline.py --model resnet50 --input_size 224 --images_per_class 300   # a GPU
"""

from __future__ import annotations

import os
import sys

# `--shared_cores`: other processes share this machine's cores. Spinning OpenMP threads then wait on
# descheduled peers and a train step runs up to 15x slower (measured); sleeping waits keep the timings about
# the pipelines. On a quiet machine the default policy is faster (mobilenet_v3_small's CPU train step: 168 vs
# 97 img/s), and it is what users run, so it stays unless asked. It must be set before torch is imported.
if "--shared_cores" in sys.argv:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

import argparse
import contextlib
import datetime
import json
import shlex
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision.transforms as T  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402
from torchvision.datasets import ImageFolder  # noqa: E402

import trainer.inputs  # noqa: E402
import trainer.loop  # noqa: E402
import trainer.run  # noqa: E402
import trainer.writer  # noqa: E402
from common.preprocessing import Preprocessing  # noqa: E402
from data.synthetic import make_image_folder  # noqa: E402
from models import FreezeOptions, build_model, get_spec, plan_for_epoch, preprocessing_for, resolve_strategy  # noqa: E402
from trainer.config import parse_run_config  # noqa: E402
from trainer.inputs import InputSettings, load_split  # noqa: E402
from trainer.loop import autocast_factory  # noqa: E402
from trainer.optim import build_optimizer  # noqa: E402
from trainer.run import resolve_device, resolve_precision, run_training  # noqa: E402

STRATEGIES = ("head_only", "last_k", "full")
AUGMENT = {"head_only": "none", "last_k": "none", "full": "standard"}  # as a sweep would run them
SWEEP = [(s, lr) for lr in (1e-3, 3e-3) for s in STRATEGIES]  # 6 runs: 2 head-only, 2 last-1, 2 full
LABEL_SMOOTHING = 0.1  # the harness default, used by the naive loop too
TARGETS = {"head_only_speedup": 8.0, "sweep_speedup": 4.0, "pipeline_efficiency": 0.9}
# On a GPU (H100-class figures): every strategy's pipeline efficiency, ResNet-50 full fine-tuning end to end at
# 224 px (2,500 img/s was the first step, 5,000 the goal), and head-only's epochs against full fine-tuning's.
GPU_TARGETS = {"pipeline_efficiency": 0.95, "full_images_per_second_first_step": 2500.0,
               "full_images_per_second": 5000.0, "head_only_over_full": 10.0}


@dataclass
class Workload:
    model: str
    pre: Preprocessing
    epochs: int
    batch_size: int
    device: torch.device
    data_root: Path
    work_dir: Path
    classes: int
    train_rel: list[str]  # the harness's train/validation split, as paths, so the naive run uses the same images
    val_rel: list[str]
    num_all: int  # images in train/ (the caches hold them all)

    @property
    def num_train_per_epoch(self) -> int:
        return (len(self.train_rel) // self.batch_size) * self.batch_size  # both pipelines drop the last partial batch


@dataclass
class Timing:
    run_seconds: float
    train_images_per_second: float  # median over epochs of images / training-loop seconds (no validation)
    parts: dict[str, float] = field(default_factory=dict)  # harness only: where the run's time went


def median(values) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------------
# naive: the public recipe


def public_backend_defaults() -> None:
    """The harness sets cuDNN autotuning and TF32 process-wide; a public script runs with PyTorch's defaults."""
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = True


def naive_net(w: Workload, strategy: str) -> nn.Module:
    """The plain torchvision net with a new head; frozen stages get requires_grad=False and nothing else."""
    spec = get_spec(w.model)
    net = spec.build_net()
    parent_path, _, attribute = spec.head_linear.rpartition(".")
    parent = net.get_submodule(parent_path) if parent_path else net
    setattr(parent, attribute, nn.Linear(getattr(parent, attribute).in_features, w.classes))
    plan = plan_for_epoch(resolve_strategy(strategy), spec.stage_names, FreezeOptions(k_layers=1), 0)
    for stage in spec.stages:
        for path in stage.modules:
            net.get_submodule(path).requires_grad_(stage.name in plan.trainable_stages)
    return net.to(w.device)


def naive_run(w: Workload, strategy: str, lr: float) -> Timing:
    public_backend_defaults()
    sync(w.device)
    started = time.perf_counter()
    pre, cuda = w.pre, w.device.type == "cuda"
    normalize = T.Normalize(pre.mean, pre.std)
    interpolation = T.InterpolationMode(pre.interpolation)
    evaluation = T.Compose(
        [T.Resize(pre.resize_size, interpolation), T.CenterCrop(pre.crop_size), T.ToTensor(), normalize])
    training = evaluation
    if AUGMENT[strategy] != "none":  # the same augmentation as the harness's "standard" level
        training = T.Compose([T.RandomResizedCrop(pre.crop_size, scale=(0.35, 1.0), interpolation=interpolation),
                              T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    train_dir = w.data_root / "inaturalist_12K" / "train"
    train_set, val_set = ImageFolder(train_dir, training), ImageFolder(train_dir, evaluation)
    position = {Path(path).relative_to(train_dir).as_posix(): i for i, (path, _) in enumerate(train_set.samples)}
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    loader = dict(batch_size=w.batch_size, num_workers=workers, pin_memory=cuda)
    train_loader = DataLoader(Subset(train_set, [position[p] for p in w.train_rel]), shuffle=True,
                              drop_last=True, **loader)
    val_loader = DataLoader(Subset(val_set, [position[p] for p in w.val_rel]), **loader)
    net = naive_net(w, strategy)
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=lr)
    rates = []
    for _ in range(w.epochs):
        net.train()
        epoch_started, seen, running_loss = time.perf_counter(), 0, 0.0
        for images, labels in train_loader:
            images, labels = images.to(w.device, non_blocking=True), labels.to(w.device, non_blocking=True)
            loss = F.cross_entropy(net(images), labels, label_smoothing=LABEL_SMOOTHING)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
            seen += len(labels)
        sync(w.device)
        rates.append(seen / (time.perf_counter() - epoch_started))
        net.eval()
        correct = 0
        with torch.no_grad():
            for images, labels in val_loader:
                correct += (net(images.to(w.device)).argmax(1).cpu() == labels).sum().item()
    sync(w.device)
    return Timing(time.perf_counter() - started, median(rates))


# ---------------------------------------------------------------------------------------------------------
# harness: run_training, with its caches


@contextlib.contextmanager
def patched(module, name: str, replacement):
    original = getattr(module, name)
    setattr(module, name, replacement)
    try:
        yield original
    finally:
        setattr(module, name, original)


@contextlib.contextmanager
def timed_calls(module, name: str, totals: dict[str, float], key: str):
    """Wrap module.name so the seconds spent in it add up in totals[key]; behaviour is unchanged."""
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[key] = totals.get(key, 0.0) + time.perf_counter() - started

    with patched(module, name, wrapper):
        yield


def harness_config(w: Workload, strategy: str, lr: float, cache_dir: Path, output_dir: Path):
    return parse_run_config({
        "model": w.model, "weights": "imagenet", "strategy": strategy, "augment": AUGMENT[strategy], "lr": lr,
        "epochs": w.epochs, "batch_size": w.batch_size, "patience": 0, "device": str(w.device),
        "data_dir": str(w.data_root), "download": False, "output_dir": str(output_dir), "cache_dir": str(cache_dir),
        "wandb_mode": "disabled", "checkpoint_store": "local", **({"k_layers": 1} if strategy == "last_k" else {}),
    })


def stand_in_imagenet_weights(model: str, work_dir: Path) -> None:
    """weights=imagenet as users run it (checkpoints then leave out the frozen stages), with no download: a
    private hub folder holds random values under the weights file's name. Time does not depend on the values."""
    spec = get_spec(model)
    member = spec.weights_enum[spec.default_weights]
    hub = work_dir / "torch-hub"
    torch.hub.set_dir(str(hub))
    path = hub / "checkpoints" / os.path.basename(urlparse(member.url).path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(spec.build_net().state_dict(), path)


def harness_run(w: Workload, strategy: str, lr: float, cache_dir: Path, log) -> Timing:
    config = harness_config(w, strategy, lr, cache_dir, w.work_dir / "runs")
    parts: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        stack.enter_context(patched(trainer.run, "preprocessing_for", lambda *a, **k: w.pre))
        stack.enter_context(timed_calls(trainer.inputs, "scan_folder", parts, "scan"))
        stack.enter_context(timed_calls(trainer.inputs.DecodedImageCache, "build_or_open", parts, "image cache"))
        stack.enter_context(timed_calls(trainer.inputs, "build_or_open_features", parts, "feature cache"))
        stack.enter_context(timed_calls(trainer.loop, "evaluate", parts, "validation"))
        # What checkpoints cost the run: the snapshot, and any wait for a background write still in flight.
        stack.enter_context(timed_calls(trainer.run, "checkpoint_payload", parts, "checkpoints"))
        stack.enter_context(timed_calls(trainer.writer.CheckpointWriter, "flush", parts, "checkpoints"))
        stack.enter_context(contextlib.redirect_stdout(log))
        stack.enter_context(contextlib.redirect_stderr(log))
        sync(w.device)
        started = time.perf_counter()
        outcome = run_training(config)
        sync(w.device)
        seconds = time.perf_counter() - started
    if outcome.state != "finished":
        raise RuntimeError(f"harness run {outcome.run_id} ended {outcome.state}: {outcome.summary.get('reason')}")
    rows = [json.loads(line) for line in (outcome.folder / "metrics.jsonl").read_text().splitlines()]
    parts["training loop"] = outcome.summary["train_seconds"]
    parts["other"] = seconds - sum(parts.values())  # model build, optimizer, config and record writes
    shutil.rmtree(outcome.folder)  # checkpoints of finished benchmark runs are not needed
    return Timing(seconds, median(r["images_per_second"] for r in rows), parts)


# ---------------------------------------------------------------------------------------------------------
# model alone: train steps on tensors already on the device


@dataclass
class ModelLimit:
    prefix_seconds_per_image: float  # inference of the frozen prefix (what the feature cache computes once)
    step_seconds_per_image: float  # train step of the trained stages
    eval_seconds_per_image: float  # inference of the trained stages (validation)
    depth: int  # frozen prefix depth served from the feature cache (0: the model sees images)

    def run_seconds(self, w: Workload, first: bool) -> float:
        """The least a run of w.epochs can cost on this device: model work only, no data, no bookkeeping.

        A first run also pays the frozen prefix's inference over every image; a later run finds it cached.
        """
        per_epoch = w.num_train_per_epoch * self.step_seconds_per_image + len(w.val_rel) * self.eval_seconds_per_image
        return (w.num_all * self.prefix_seconds_per_image if first else 0.0) + w.epochs * per_epoch


def _seconds_per_call(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up: allocator, cuDNN autotuning, lazy init
    fn()
    sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - started) / repeats


def model_alone(w: Workload, strategy: str, repeats: int) -> ModelLimit:
    """Same model, optimizer, precision, memory format and step as the harness (trainer.loop.train), no data."""
    config = harness_config(w, strategy, 1e-3, w.work_dir / "unused", w.work_dir / "unused")
    model = build_model(w.model, w.classes, "none")
    model.apply_plan(plan_for_epoch(resolve_strategy(config.strategy), model.stage_names,
                                    FreezeOptions(k_layers=config.k_layers or 1), 0))
    depth = model.frozen_prefix_depth() if config.augment == "none" else 0
    cuda = w.device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # as trainer.run sets them
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model.to(w.device)
    # as trainer.run, on any device
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    optimizer = build_optimizer(model, config)
    dtype = resolve_precision(config.precision, w.device)
    autocast = autocast_factory(w.device, dtype)
    scaler = torch.amp.GradScaler(w.device.type, enabled=dtype == torch.float16)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    images = torch.randn(w.batch_size, 3, w.pre.crop_size, w.pre.crop_size,
                         device=w.device).contiguous(memory_format=memory_format)
    labels = torch.randint(0, w.classes, (w.batch_size,), device=w.device)

    def forward_from(x, start):
        return model(x, start=start) if start else model(x)

    with torch.inference_mode(), autocast():
        model.eval()
        prefix = _seconds_per_call(lambda: model.forward_range(images, 0, depth), w.device, repeats) if depth else 0.0
        inputs = model.forward_range(images, 0, depth).float() if depth else images
        evaluation = _seconds_per_call(lambda: forward_from(inputs, depth), w.device, repeats)
    inputs = inputs.clone()  # a normal tensor again: inference-mode tensors cannot enter autograd
    model.train()

    def step():
        with autocast():
            loss = F.cross_entropy(forward_from(inputs, depth), labels, label_smoothing=LABEL_SMOOTHING)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if config.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        scaler.step(optimizer)
        scaler.update()

    train = _seconds_per_call(step, w.device, repeats)
    size = w.batch_size
    return ModelLimit(prefix / size, train / size, evaluation / size, depth)


# ---------------------------------------------------------------------------------------------------------
# the benchmark


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None,
                        help="backbone (default: mobilenet_v3_small on a CPU, resnet50 on a GPU)")
    parser.add_argument("--input_size", type=int, default=None,
                        help="crop size in px; resize = crop*256/224 "
                             "(default: 112 on a CPU, the weights' own on a GPU)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--images_per_class", type=int, default=None,
                        help="training-folder images per class (default: 30 on a CPU, 300 on a GPU)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=None, help="default: 32 on a CPU, 128 on a GPU")
    parser.add_argument("--repeats", type=int, default=1,
                        help="repetitions of the whole interleaved schedule (medians over them)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--work_dir", default=str(Path(tempfile.gettempdir()) / "finetune-sweeps-bench"),
                        help="dataset (kept), caches and runs (wiped)")
    parser.add_argument("--shared_cores", action="store_true",
                        help="set OMP_WAIT_POLICY=PASSIVE: for a machine whose cores other processes are using")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"),
                        help="results file; its section for this device/model/size is replaced")
    args = parser.parse_args(argv)
    args.device = resolve_device(args.device)
    cuda = args.device.type == "cuda"
    args.model = args.model or ("resnet50" if cuda else "mobilenet_v3_small")
    args.images_per_class = args.images_per_class or (300 if cuda else 30)
    args.batch_size = args.batch_size or (128 if cuda else 32)
    return args


def workload(args) -> Workload:
    native = preprocessing_for(args.model, "imagenet")
    crop = args.input_size or (native.crop_size if args.device.type == "cuda" else 112)
    pre = Preprocessing(crop, max(crop, round(crop * native.resize_size / native.crop_size)), native.mean, native.std,
                        native.interpolation)
    work_dir = Path(args.work_dir)
    data_root = make_image_folder(work_dir / f"data-{args.classes}x{args.images_per_class}", classes=args.classes,
                                  train_per_class=args.images_per_class,
                                  test_per_class=max(1, args.images_per_class // 10))
    probe = parse_run_config({"model": args.model, "weights": "none", "data_dir": str(data_root), "download": False,
                              "cache_dir": str(work_dir / "split-cache")})
    with contextlib.redirect_stdout(sys.stderr):
        split = load_split(InputSettings.of(probe))
    rel = lambda indices: [split.index.paths[i] for i in indices]  # noqa: E731
    return Workload(args.model, pre, args.epochs, args.batch_size, args.device, data_root, work_dir, len(split.classes),
                    rel(split.split.train), rel(split.split.val), len(split.index))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = "CPU"
    if Path("/proc/cpuinfo").exists():
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "CPU")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"CPU {model}, {cores} cores"


def run_schedule(w: Workload, repeats: int, log) -> dict:
    """Naive and harness runs interleaved, fresh caches per repetition; model-alone limits measured in between."""
    naive: dict[str, list[Timing]] = {s: [] for s in STRATEGIES}
    first: dict[str, list[Timing]] = {s: [] for s in STRATEGIES}  # a harness run that builds every cache it needs
    later: dict[str, list[Timing]] = {s: [] for s in STRATEGIES}  # a harness run whose caches exist
    limits: dict[str, list[ModelLimit]] = {s: [] for s in STRATEGIES}
    sweeps: dict[str, list[float]] = {"naive": [], "harness": []}
    limit_repeats = 6 if w.device.type == "cpu" else 20
    for repeat in range(repeats):
        for strategy in ("head_only", "last_k"):
            limits[strategy].append(model_alone(w, strategy, limit_repeats))
        sweep_cache = w.work_dir / f"cache-sweep-{repeat}"
        shutil.rmtree(sweep_cache, ignore_errors=True)
        sweep_seconds = {"naive": 0.0, "harness": 0.0}
        seen: set[str] = set()
        for i, (strategy, lr) in enumerate(SWEEP):
            order = ("naive", "harness") if (i + repeat) % 2 == 0 else ("harness", "naive")  # neither always goes first
            for kind in order:
                label = f"[{repeat + 1}/{repeats}] sweep run {i + 1}/6 {kind:7s} {strategy:9s} lr={lr:g}"
                if kind == "harness" and strategy == "full":  # the limit, measured next to the run it bounds
                    limits["full"].append(model_alone(w, "full", limit_repeats))
                print(f"{label} ...", end="", flush=True)
                timing = (naive_run(w, strategy, lr) if kind == "naive"
                          else harness_run(w, strategy, lr, sweep_cache, log))
                print(f" {timing.run_seconds:7.1f} s  {timing.train_images_per_second:8.1f} train img/s", flush=True)
                sweep_seconds[kind] += timing.run_seconds
                if kind == "naive":
                    naive[strategy].append(timing)
                elif i == 0:
                    first[strategy].append(timing)  # the sweep's first run builds the image cache and its features
                elif strategy in seen or strategy == "full":
                    later[strategy].append(timing)  # full fine-tuning needs only the image cache, built by run 1
            seen.add(strategy)
        for kind in sweeps:
            sweeps[kind].append(sweep_seconds[kind])
        for strategy in ("last_k", "full"):  # standalone first runs: empty cache folder, every cache built inside
            cold_cache = w.work_dir / f"cache-cold-{strategy}-{repeat}"
            shutil.rmtree(cold_cache, ignore_errors=True)
            if strategy == "full":
                limits["full"].append(model_alone(w, "full", limit_repeats))
            print(f"[{repeat + 1}/{repeats}] first run     harness {strategy:9s} (empty cache) ...", end="", flush=True)
            timing = harness_run(w, strategy, 1e-3, cold_cache, log)
            print(f" {timing.run_seconds:7.1f} s  {timing.train_images_per_second:8.1f} train img/s", flush=True)
            first[strategy].append(timing)
            shutil.rmtree(cold_cache, ignore_errors=True)
        shutil.rmtree(sweep_cache, ignore_errors=True)
    return {"naive": naive, "first": first, "later": later, "limits": limits, "sweeps": sweeps}


def summarise(w: Workload, results: dict) -> dict:
    rows = {}
    for strategy in STRATEGIES:
        limit_first = [limit.run_seconds(w, first=True) for limit in results["limits"][strategy]]
        limit_later = [limit.run_seconds(w, first=False) for limit in results["limits"][strategy]]
        step_rates = [1.0 / limit.step_seconds_per_image for limit in results["limits"][strategy]]
        naive, first, later = (results[k][strategy] for k in ("naive", "first", "later"))
        parts = {}
        for timing in later:
            for key, value in timing.parts.items():
                parts.setdefault(key, []).append(value)
        first_parts = {}
        for timing in first:
            for key, value in timing.parts.items():
                first_parts.setdefault(key, []).append(value)
        rows[strategy] = {
            "naive_run_seconds": median(t.run_seconds for t in naive),
            "naive_train_images_per_second": median(t.train_images_per_second for t in naive),
            "harness_first_run_seconds": median(t.run_seconds for t in first),
            "harness_later_run_seconds": median(t.run_seconds for t in later),
            "harness_train_images_per_second": median(t.train_images_per_second for t in later),
            "limit_first_run_seconds": median(limit_first),
            "limit_later_run_seconds": median(limit_later),
            "model_alone_step_images_per_second": median(step_rates),
            "later_parts": {k: median(v) for k, v in parts.items()},
            "first_parts": {k: median(v) for k, v in first_parts.items()},
            "samples": {"naive": len(naive), "first": len(first), "later": len(later), "limit": len(limit_first)},
        }
        row = rows[strategy]
        row["speedup_first"] = row["naive_run_seconds"] / row["harness_first_run_seconds"]
        row["speedup_later"] = row["naive_run_seconds"] / row["harness_later_run_seconds"]
        row["limit_fraction_first"] = row["limit_first_run_seconds"] / row["harness_first_run_seconds"]
        row["limit_fraction_later"] = row["limit_later_run_seconds"] / row["harness_later_run_seconds"]
    sweeps = results["sweeps"]
    full = rows["full"]
    return {
        "rows": rows,
        "sweep_naive_seconds": median(sweeps["naive"]),
        "sweep_harness_seconds": median(sweeps["harness"]),
        "sweep_speedup": median(sweeps["naive"]) / median(sweeps["harness"]),
        "pipeline_efficiency": full["harness_train_images_per_second"] / full["model_alone_step_images_per_second"],
        "pipeline_efficiency_by_strategy": {
            s: rows[s]["harness_train_images_per_second"] / rows[s]["model_alone_step_images_per_second"]
            for s in STRATEGIES},
        # later runs' training-loop img/s, the epochs after a first run's cache building
        "head_only_over_full": rows["head_only"]["harness_train_images_per_second"]
        / full["harness_train_images_per_second"],
    }


def targets(w: Workload, summary: dict) -> list[tuple[str, float, float, bool]]:
    checks = [
        (f"head-only {w.epochs}-epoch run, harness first run vs naive (x)",
         summary["rows"]["head_only"]["speedup_first"], TARGETS["head_only_speedup"]),
        ("6-run mixed sweep, harness vs naive (x)", summary["sweep_speedup"], TARGETS["sweep_speedup"]),
    ]
    if w.device.type != "cuda":
        checks.append(("pipeline efficiency, full fine-tuning (harness / model alone)",
                       summary["pipeline_efficiency"], TARGETS["pipeline_efficiency"]))
        return [(name, value, target, value >= target) for name, value, target in checks]
    for strategy in STRATEGIES:
        checks.append((f"pipeline efficiency, {strategy} (harness / model alone)",
                       summary["pipeline_efficiency_by_strategy"][strategy], GPU_TARGETS["pipeline_efficiency"]))
    full = summary["rows"]["full"]["harness_train_images_per_second"]
    checks += [("full fine-tuning train img/s, first step", full, GPU_TARGETS["full_images_per_second_first_step"]),
               ("full fine-tuning train img/s", full, GPU_TARGETS["full_images_per_second"]),
               ("head-only train img/s / full fine-tuning's, later runs (x)", summary["head_only_over_full"],
                GPU_TARGETS["head_only_over_full"])]
    return [(name, value, target, value >= target) for name, value, target in checks]


def render(w: Workload, args, summary: dict, command: str, elapsed: float) -> str:
    rows, n = summary["rows"], w.num_train_per_epoch
    title = f"## {device_name(w.device)} · {w.model} · {w.pre.crop_size} px"
    lines = [
        title, "",
        f"`{command}`", "",
        f"{datetime.date.today().isoformat()}; torch {torch.__version__}; {w.classes} classes x "
        f"{args.images_per_class} synthetic JPEGs (500x375 to 1000x750, {len(w.train_rel)} train / {len(w.val_rel)} "
        f"validation), {w.epochs} epochs, batch {w.batch_size}, crop {w.pre.crop_size} / resize {w.pre.resize_size} "
        "for both pipelines (harness: `trainer.run.preprocessing_for` patched), random values in the ImageNet weights "
        "file's place (timing does not depend on them; the harness loads them as `weights=imagenet`), harness "
        f"precision {resolve_precision('auto', w.device) or 'fp32'}, naive fp32; "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; {args.repeats} repetition(s), medians; whole "
        f"benchmark {elapsed / 60:.1f} min.", "",
        "| strategy | naive run s | harness first run s | harness later run s | speed-up first | speed-up later | "
        "limit first s | limit later s | limit / harness first | limit / harness later | naive train img/s | harness "
        "train img/s | model-alone train img/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    names = {"head_only": "head_only (augment none)", "last_k": "last_k k=1 (augment none)",
             "full": "full (augment standard)"}
    for strategy in STRATEGIES:
        r = rows[strategy]
        lines.append(
            f"| {names[strategy]} | {r['naive_run_seconds']:.1f} | {r['harness_first_run_seconds']:.1f} | "
            f"{r['harness_later_run_seconds']:.1f} | {r['speedup_first']:.1f}x | {r['speedup_later']:.1f}x | "
            f"{r['limit_first_run_seconds']:.2f} | {r['limit_later_run_seconds']:.2f} | "
            f"{r['limit_fraction_first']:.2f} | {r['limit_fraction_later']:.2f} | "
            f"{r['naive_train_images_per_second']:.0f} | {r['harness_train_images_per_second']:.0f} | "
            f"{r['model_alone_step_images_per_second']:.0f} |"
        )
    lines += [
        "",
        f"6-run mixed sweep ({', '.join(f'{s} lr={lr:g}' for s, lr in SWEEP)}), one cache folder, empty at the start: "
        f"naive {summary['sweep_naive_seconds']:.1f} s, harness {summary['sweep_harness_seconds']:.1f} s, "
        f"**{summary['sweep_speedup']:.1f}x**.",
        "",
        f"Per run: {w.epochs} x {n} training images. *first run*: empty cache folder, so the scan, the decoded-image "
        "cache and the frozen-feature cache are built inside the timed run; *later run*: a later run of the sweep, "
        "caches present. *limit*: the same model's work on tensors already in memory (model alone): per epoch the "
        "train steps of the trained stages and their validation inference, plus, in a first run, one inference pass "
        "of the frozen prefix over all images (when the feature cache applies); *limit / harness* is the share of a "
        "harness run that is model work. *train img/s*: median over epochs of training images per second of the "
        "training loop (no validation); for the model alone, of its train step (on cached features when the feature "
        "cache applies). Pipeline efficiency = a strategy's harness train img/s / its model-alone train img/s (for "
        "full fine-tuning measured next to each full run); the CPU target is full fine-tuning's.", "",
        "| where a harness run's time goes (s) | " + " | ".join(f"{s} first | {s} later" for s in STRATEGIES) + " |",
        "|---|" + "---:|" * (2 * len(STRATEGIES)),
    ]
    keys = ("scan", "image cache", "feature cache", "training loop", "validation", "checkpoints", "other")
    for key in keys:
        cells = []
        for strategy in STRATEGIES:
            cells += [f"{rows[strategy]['first_parts'].get(key, 0.0):.2f}",
                      f"{rows[strategy]['later_parts'].get(key, 0.0):.2f}"]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += ["", "| target | measured | target | result |", "|---|---:|---:|---|"]
    for name, value, target, ok in targets(w, summary):
        lines.append(f"| {name} | {value:.2f} | {target:g} | {'PASS' if ok else 'FAIL'} |")
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace this device/model/size's section of the results file (or add it), keeping the others."""
    header = ("# Benchmark results\n\n"
              "Written by the scripts in `benchmarks/`; one section per script, device, model and input size.\n")
    text = path.read_text() if path.exists() else header
    title = section.splitlines()[0]
    chunks = text.split("\n## ")
    kept = [chunks[0].rstrip() + "\n"] + ["## " + c.rstrip() + "\n" for c in chunks[1:]
                                          if ("## " + c).splitlines()[0] != title]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(kept + [section]))


def main(argv=None) -> None:
    started = time.perf_counter()
    args = parse_args(argv)
    command = "python benchmarks/pipeline.py " + " ".join(shlex.quote(a)
                                                          for a in (argv if argv is not None else sys.argv[1:]))
    print(f"device {device_name(args.device)}; writing the synthetic dataset (not timed) ...", flush=True)
    w = workload(args)
    stand_in_imagenet_weights(w.model, w.work_dir)
    print(f"{w.model} at {w.pre.crop_size} px (resize {w.pre.resize_size}); {len(w.train_rel)} train / "
          f"{len(w.val_rel)} validation images; {w.epochs} epochs; batch {w.batch_size}; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}", flush=True)
    log_path = w.work_dir / "harness.log"
    with open(log_path, "w") as log:
        results = run_schedule(w, args.repeats, log)
    summary = summarise(w, results)
    section = render(w, args, summary, command.strip(), time.perf_counter() - started)
    print("\n" + section)
    write_section(Path(args.out), section)
    (w.work_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    print(f"wrote {args.out}; harness logs in {log_path}")


if __name__ == "__main__":
    main()
