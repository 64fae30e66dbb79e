#!/usr/bin/env python
"""Every registered backbone, run for real: one short fine-tuning run per (backbone, strategy, size).

For each backbone of the registry (the scratch CNN included, which has one strategy: full training), it trains
`last_k` (k_layers=1, augment none: the frozen-prefix feature cache applies) and `full` (augment standard: the
batch augmentation runs on the device) at the weights' own crop and at one larger size (1.25x, rounded up to a
multiple of 32 and of the model's patch), on one synthetic dataset of JPEGs. Each run is `trainer.run.run_training`
as a user's trial runs it, with `weights=imagenet` loaded from a private hub folder that holds random values under
the weights file's name (timing does not depend on the values; no download). On a GPU, first:
- `torch.compile` off and on for ResNet-50 full fine-tuning, side by side, on a larger dataset of its own;
- an out-of-memory error forced by a huge batch at a huge size, which must end as a run retried at half the
  batch or as state `oom`, never a crash.
It prints and writes one section into benchmarks/RESULTS.md per device (and selection): state, precision, batch,
train img/s (median over the epochs after the first), peak GPU memory, seconds; rewritten after every run. A run
that crashes (state `failed`, or an exception out of run_training) makes the script exit 1; slow figures never
do: they are measurements. SIGTERM ends the current run as `preempted` and the script there, with exit 124.

    python benchmarks/backbones.py                       # a GPU: compile, OOM, every backbone (estimate: 4 min)
    python benchmarks/backbones.py --models resnet18 --device cpu --images_per_class 4 --epochs 1 --sizes 64
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch  # noqa: E402
from pipeline import device_name, stand_in_imagenet_weights, write_section  # noqa: E402

from data.synthetic import make_image_folder  # noqa: E402
from models import backbone_names, get_spec  # noqa: E402
from trainer import metrics as M  # noqa: E402
from trainer.config import parse_run_config  # noqa: E402
from trainer.record import RunRecord  # noqa: E402
from trainer.run import resolve_device, run_training  # noqa: E402

AUGMENT = {"last_k": "none", "full": "standard"}  # last_k from cached features; full with batch augmentation
OOM_SIZE, OOM_BATCH = 1024, 256  # ResNet-50 full fine-tuning: about 1.5 GB of activations per image at 1024 px


@dataclass
class Row:
    what: str
    model: str
    strategy: str
    size: int
    state: str
    precision: str = "-"
    batch: str = "-"
    images_per_second: float = math.nan
    first_epoch_seconds: float = math.nan
    peak_gpu_memory_gb: float = math.nan
    seconds: float = math.nan
    reason: str = ""

    @property
    def crashed(self) -> bool:
        return self.state in (M.FAILED, "crashed")


def own_size(model: str) -> int:
    """The weights' own crop (the scratch CNN's default, 224, when it has no weights)."""
    return get_spec(model).native_size("imagenet") or 224


def larger_size(model: str) -> int:
    """1.25x the model's own crop, rounded up to a multiple of 32 and of the model's patch (ViT: 16)."""
    step = math.lcm(32, get_spec(model).input_multiple)
    return math.ceil(own_size(model) * 1.25 / step) * step


def sizes_for(model: str, asked: list[int] | None) -> list[int]:
    return asked or [own_size(model), larger_size(model)]


def strategies_for(model: str, asked: list[str]) -> list[str]:
    return ["full"] if get_spec(model).is_scratch else asked  # the scratch CNN trains whole


def run_one(args, data_root: Path, work_dir: Path, what: str, model: str, strategy: str, size: int,
            **overrides) -> Row:
    """One trial as a sweep runs it; what it printed goes to the log, what it measured into a Row."""
    values = {
        "model": model, "weights": "none" if get_spec(model).is_scratch else "imagenet", "strategy": strategy,
        "augment": AUGMENT[strategy], "input_size": size, "epochs": args.epochs, "batch_size": args.batch_size,
        "patience": 0, "device": str(args.device), "data_dir": str(data_root), "download": False,
        "cache_dir": str(work_dir / "cache"), "output_dir": str(work_dir / "runs"), "wandb_mode": "disabled",
        "checkpoint_store": "local", "run_id": f"{what}-{model}-{strategy}-{size}".replace(" ", "_"),
        **({"k_layers": 1} if strategy == "last_k" else {}), **overrides,
    }
    started = time.perf_counter()
    try:
        with open(work_dir / "runs.log", "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            print(f"\n===== {values['run_id']}", flush=True)
            outcome = run_training(parse_run_config(values))
    except Exception as exc:  # a crash is what this script is here to find: record it and go on
        (work_dir / "crashes.log").open("a").write(f"{values['run_id']}\n{traceback.format_exc()}\n")
        return Row(what, model, strategy, size, "crashed", reason=f"{type(exc).__name__}: {exc}".splitlines()[0],
                   seconds=time.perf_counter() - started)
    summary = outcome.summary
    history = RunRecord.read_history(outcome.folder)  # none when the run ended before its first epoch
    rates = [r[M.IMAGES_PER_SECOND] for r in history[1:] or history]
    asked, used = summary.get(M.BATCH_SIZE_ASKED, args.batch_size), summary.get(M.BATCH_SIZE, "-")
    row = Row(what, model, strategy, size, outcome.state, precision=str(summary.get(M.PRECISION, "-")),
              batch=f"{used}" if asked in (None, used) else f"{used} (asked {asked})",
              images_per_second=statistics.median(rates) if rates else math.nan,
              first_epoch_seconds=history[0][M.EPOCH_SECONDS] if history else math.nan,
              peak_gpu_memory_gb=summary.get(M.PEAK_GPU_MEMORY, math.nan),
              seconds=time.perf_counter() - started, reason=str(summary.get(M.REASON) or ""))
    shutil.rmtree(outcome.folder, ignore_errors=True)  # checkpoints of benchmark runs are not needed
    return row


def plan(args) -> list[tuple[str, str, str, int, dict]]:
    """(what, model, strategy, size, overrides) of every run, in the order they run. On a GPU the compile pair
    and the forced OOM come first: a time limit cuts the end of the plan, and the backbones' rows stand alone."""
    runs = []
    if args.device.type == "cuda" and not args.skip_gpu_only:
        native = own_size("resnet50")
        runs += [("compile off", "resnet50", "full", native, {"compile": False}),
                 ("compile on", "resnet50", "full", native, {"compile": True}),
                 ("forced OOM", "resnet50", "full", OOM_SIZE, {"batch_size": OOM_BATCH})]
    runs += [("backbone", model, strategy, size, {})
             for model in args.models for size in sizes_for(model, args.sizes)
             for strategy in strategies_for(model, args.strategies)]
    return runs


def fmt(value: float, digits: int = 0) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def chosen(args) -> str:
    """The section title's part naming a partial selection: a rerun of some models keeps the full run's section."""
    if list(args.models) == list(backbone_names()) and args.sizes is None and args.strategies == ["last_k", "full"]:
        return ""
    return f" · {' '.join(args.models)}" + (f" · {' '.join(map(str, args.sizes))} px" if args.sizes else "") + (
        f" · {' '.join(args.strategies)}" if args.strategies != ["last_k", "full"] else "")


def render(args, rows: list[Row], command: str, elapsed: float, planned: int | None = None) -> str:
    compile_data = (f"; the compile pair trains on {args.compile_images_per_class} images per class"
                    if any(r.what.startswith("compile") for r in rows) else "")
    lines = [
        f"## Backbones · {device_name(args.device)}{chosen(args)}", "",
        f"`{command}`", "",
        f"{datetime.date.today().isoformat()}; torch {torch.__version__}; {args.classes} classes x "
        f"{args.images_per_class} synthetic JPEGs (500x375 to 1000x750), 80/20 train/validation split, "
        f"{args.epochs} epochs, batch {args.batch_size}, precision `auto`, random values in each ImageNet weights "
        f"file's place (loaded as `weights=imagenet`); last_k is k_layers=1 with augment none (frozen-prefix feature "
        f"cache), full is augment standard; whole script {elapsed / 60:.1f} min"
        f"{'' if planned in (None, len(rows)) else f' (stopped after {len(rows)} of {planned} runs)'}"
        f"{compile_data}.", "",
        "| run | model | strategy | px | state | precision | batch | train img/s (epochs 2+) | first epoch s | "
        "peak GPU GiB | run s | reason |",
        "|---|---|---|---:|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r.what} | {r.model} | {r.strategy} | {r.size} | {r.state} | {r.precision} | {r.batch} | "
                     f"{fmt(r.images_per_second)} | {fmt(r.first_epoch_seconds, 1)} | {fmt(r.peak_gpu_memory_gb, 2)} | "
                     f"{fmt(r.seconds, 1)} | {r.reason.replace('|', '/')[:160]} |")
    by_what = {r.what: r for r in rows}
    off, on = by_what.get("compile off"), by_what.get("compile on")
    if off and on and off.images_per_second > 0:
        lines += ["", f"torch.compile, ResNet-50 full fine-tuning: {on.images_per_second / off.images_per_second:.2f}x "
                      f"the train img/s of eager after the first epoch; first epoch {fmt(on.first_epoch_seconds, 1)} s "
                      f"compiled vs {fmt(off.first_epoch_seconds, 1)} s eager."]
    oom = by_what.get("forced OOM")
    if oom:
        ok = oom.state == M.OOM or (oom.state == M.FINISHED and "asked" in oom.batch)
        lines += ["", f"Forced out-of-memory ({OOM_SIZE} px, batch {OOM_BATCH}): {oom.state}, "
                      f"{'PASS' if ok else 'FAIL'} (a retried run or `oom`, never a crash)."]
    crashed = ", ".join(f"{r.model} {r.strategy} {r.size}" for r in rows if r.crashed)
    where = f" ({crashed}; tracebacks in the work folder's crashes.log and runs.log)" if crashed else ""
    lines += ["", f"Crashed or failed runs: {sum(r.crashed for r in rows)}{where}."]
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(backbone_names()), choices=backbone_names(),
                        metavar="MODEL", help="default: every registered backbone, in registry order")
    parser.add_argument("--strategies", nargs="+", default=["last_k", "full"], choices=sorted(AUGMENT))
    parser.add_argument("--sizes", nargs="+", type=int, default=None,
                        help="crop sizes in px (default: each model's own, and 1.25x it rounded up to 32)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--images_per_class", type=int, default=40)
    parser.add_argument("--compile_images_per_class", type=int, default=200,
                        help="the compile pair's dataset (enough steps an epoch that the epoch is not its overhead)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--skip_gpu_only", action="store_true", help="on a GPU, leave out the compile and OOM runs")
    parser.add_argument("--work_dir", default=str(Path(tempfile.gettempdir()) / "finetune-sweeps-backbones"),
                        help="dataset (kept), caches, runs and logs")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"),
                        help="results file; its section for this device is replaced")
    args = parser.parse_args(argv)
    args.device = resolve_device(args.device)
    return args


def main(argv=None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    command = "python benchmarks/backbones.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    work_dir = Path(args.work_dir)
    for stale in ("cache", "runs"):  # each invocation measures from empty caches; the dataset is kept
        shutil.rmtree(work_dir / stale, ignore_errors=True)
    for stale in ("runs.log", "crashes.log"):
        (work_dir / stale).unlink(missing_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    print(f"device {device_name(args.device)}; writing the synthetic datasets (not timed) ...", flush=True)
    runs = plan(args)

    def dataset(per_class: int) -> Path:
        return make_image_folder(work_dir / f"data-{args.classes}x{per_class}", classes=args.classes,
                                 train_per_class=per_class, test_per_class=1)

    data = {"": dataset(args.images_per_class)}
    if any(what.startswith("compile") for what, *_ in runs):
        data["compile"] = dataset(args.compile_images_per_class)
    for model in sorted({model for _, model, *_ in runs}):  # the GPU-only runs' ResNet-50 too
        if not get_spec(model).is_scratch:
            stand_in_imagenet_weights(model, work_dir)
    rows, section, out_of_time = [], "", False
    for i, (what, model, strategy, size, overrides) in enumerate(runs, 1):
        print(f"[{i}/{len(runs)}] {what:11s} {model:18s} {strategy:7s} {size:4d} px ...", end="", flush=True)
        root = data["compile"] if what.startswith("compile") else data[""]
        row = run_one(args, root, work_dir, what, model, strategy, size, **overrides)
        print(f" {row.state:9s} {fmt(row.images_per_second):>6s} img/s  peak {fmt(row.peak_gpu_memory_gb, 2)} GiB  "
              f"{row.seconds:.1f} s {row.reason[:100]}", flush=True)
        rows.append(row)
        # Written after every run: a script stopped by its time limit still leaves what it measured.
        section = render(args, rows, command.strip(), time.perf_counter() - started, planned=len(runs))
        write_section(Path(args.out), section)
        if args.device.type == "cuda":
            torch.cuda.empty_cache()
        if row.state == M.PREEMPTED:  # SIGTERM (a time limit): the run stopped as a user's would; so does the plan
            out_of_time = True
            break
    print("\n" + section)
    print(f"wrote {args.out}; run logs in {work_dir / 'runs.log'}")
    if out_of_time:
        print("stopped by a signal: the section holds the runs done so far")
        return 124
    return 1 if any(r.crashed for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
