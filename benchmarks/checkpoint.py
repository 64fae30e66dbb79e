#!/usr/bin/env python
"""What per-epoch checkpoints cost a full fine-tuning run: written in the loop, or in the background, side by side.

One model (ResNet-50 by default: 307 MB with its AdamW state) trains real steps on random tensors on the device,
and checkpoints after every "epoch" of `--steps_per_epoch` steps, three ways, interleaved so that machine
load hits all three alike:
- none: no checkpoint (the reference);
- synchronous: `checkpoint_payload` then `write_checkpoint` inside the loop (serialise + fsync);
- background: `checkpoint_payload` (the host-memory snapshot) in the loop, the write through
  `trainer.writer.CheckpointWriter`, as `trainer.run` does it.
It prints the wall time per run, the checkpoint overhead per epoch of each way (run - none, per epoch) and
their ratio, and writes a section into benchmarks/RESULTS.md with the exact command.

    python benchmarks/checkpoint.py                       # CPU: resnet50 at 96 px, batch 8, 4 steps per epoch
    python benchmarks/checkpoint.py --input_size 224 --batch_size 128 --steps_per_epoch 40   # a GPU
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from pipeline import write_section  # noqa: E402  (benchmarks/, the script's own folder)

from models import build_model  # noqa: E402
from trainer.checkpoint import LoopState, checkpoint_payload, write_checkpoint  # noqa: E402
from trainer.config import parse_run_config  # noqa: E402
from trainer.optim import build_optimizer  # noqa: E402
from trainer.run import resolve_device, resolve_precision  # noqa: E402
from trainer.writer import CheckpointWriter  # noqa: E402

MODES = ("none", "synchronous", "background")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--input_size", type=int, default=None, help="default: 224 on CUDA, 96 on a CPU")
    parser.add_argument("--batch_size", type=int, default=None, help="default: 128 on CUDA, 8 on a CPU")
    parser.add_argument("--steps_per_epoch", type=int, default=None, help="default: 40 on CUDA, 4 on a CPU")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work_dir", default=None, help="where checkpoints are written (default: a temporary folder)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args(argv)
    args.device = resolve_device(args.device)
    cuda = args.device.type == "cuda"
    args.input_size = args.input_size or (224 if cuda else 96)
    args.batch_size = args.batch_size or (128 if cuda else 8)
    args.steps_per_epoch = args.steps_per_epoch or (40 if cuda else 4)
    return args


class Trainee:
    """The model, optimizer and precision the trainer would use for full fine-tuning, on random tensors."""

    def __init__(self, args):
        self.config = parse_run_config({"model": args.model, "strategy": "full", "weights": "none"})
        self.device, self.dtype = args.device, resolve_precision("auto", args.device)
        self.model = build_model(args.model, 10, "none").to(self.device, memory_format=torch.channels_last)
        self.optimizer = build_optimizer(self.model, self.config)
        self.x = torch.randn(args.batch_size, 3, args.input_size, args.input_size,
                             device=self.device).to(memory_format=torch.channels_last)
        self.y = torch.randint(0, 10, (args.batch_size,), device=self.device)
        self.identity = {"model": args.model}

    def step(self) -> None:
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            out = self.model(self.x)
            loss = F.cross_entropy(out[0] if isinstance(out, tuple) else out, self.y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def payload(self, epoch: int) -> dict:
        return checkpoint_payload(model=self.model, optimizer=self.optimizer, scaler=None, state=LoopState(epoch=epoch),
                                  identity=self.identity, history=[])


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_run(trainee: Trainee, mode: str, args, path: Path) -> float:
    writer = CheckpointWriter()
    sync(args.device)
    started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        for _ in range(args.steps_per_epoch):
            trainee.step()
        if mode == "synchronous":
            write_checkpoint(path, trainee.payload(epoch))
        elif mode == "background":
            payload = trainee.payload(epoch)
            writer.submit(lambda payload=payload: write_checkpoint(path, payload))
    writer.close()  # the run is over only when its last checkpoint is on disk
    sync(args.device)
    return time.perf_counter() - started


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    trainee = Trainee(args)
    with tempfile.TemporaryDirectory(dir=args.work_dir) as work:
        path = Path(work) / "last.pt"
        for _ in range(2):  # warm-up: allocator, cuDNN autotuning, the optimizer's state
            trainee.step()
        write_checkpoint(path, trainee.payload(0))
        size_mb = path.stat().st_size / 1e6
        seconds = {mode: [] for mode in MODES}
        for repeat in range(args.repeats):
            for mode in MODES if repeat % 2 == 0 else reversed(MODES):
                seconds[mode].append(timed_run(trainee, mode, args, path))
                print(f"repeat {repeat + 1}: {mode:<12} {seconds[mode][-1]:.2f} s", flush=True)
    run = {mode: statistics.median(values) for mode, values in seconds.items()}
    overhead = {mode: max(0.0, run[mode] - run["none"]) / args.epochs for mode in MODES}
    ratio = overhead["synchronous"] / max(overhead["background"], 1e-3)
    device = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "CPU"
    command = "python benchmarks/checkpoint.py " + " ".join(shlex.quote(a) for a in argv)
    lines = [
        f"## Checkpoints · {device} · {args.model} full fine-tuning · {args.input_size} px",
        "",
        f"`{command.strip()}`",
        "",
        f"{datetime.date.today()}; torch {torch.__version__}; {size_mb:.0f} MB per checkpoint (weights and AdamW "
        f"state); {args.epochs} epochs of {args.steps_per_epoch} steps at batch {args.batch_size}, a checkpoint after "
        f"each; {args.repeats} repetition(s), medians.",
        "",
        "| checkpoints | run s | overhead per epoch s |",
        "|---|---:|---:|",
        *(f"| {mode} | {run[mode]:.2f} | {overhead[mode]:.2f} |" for mode in MODES),
        "",
        f"Background writing cuts the per-epoch checkpoint overhead **{ratio:.1f}x** (synchronous / background).",
        "",
    ]
    print("\n".join(lines))
    write_section(Path(args.out), "\n".join(lines))


if __name__ == "__main__":
    main()
