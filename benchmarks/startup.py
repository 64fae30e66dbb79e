#!/usr/bin/env python
"""How long the commands that train nothing take, as whole processes: `--help`, `sweep --help`, `check`, `report`.

Each command runs as `python agent.py ...` in a fresh process, interleaved with `python -c pass` (the interpreter
alone) so that machine load hits all alike; the median of `--repeats` runs is printed with its ratio to the bare
interpreter, and whether the command imported torch (one extra run under `-X importtime`). `report` reads a small
sweep folder the script writes itself (12 finished runs of 10 epochs, no training); a last row times what it imports
before it reads that folder, the rest being its statistics (scipy, scikit-learn) and figures (matplotlib). Target:
under 2 s each on an idle machine, with no torch. Nothing is asserted: it is a measurement.

    python benchmarks/startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 2.0


def write_sweep_folder(root: Path, runs: int = 12, epochs: int = 10) -> Path:
    """A finished local sweep as `agent.py sweep` leaves it, with made-up numbers: what `report` reads."""
    root.mkdir(parents=True)
    (root / "sweep.yaml").write_text(json.dumps({"name": "startup", "method": "random",
                                                 "metric": {"name": "val_acc", "goal": "maximize"},
                                                 "parameters": {"lr": {"values": [1e-4, 1e-3, 1e-2]}}}))
    for number in range(runs):
        folder = root / "runs" / f"startup-{number:03d}"
        folder.mkdir(parents=True)
        lr = (1e-4, 1e-3, 1e-2)[number % 3]
        model, strategy = ("resnet18", "last_k") if number % 2 else ("scratch_cnn", "full")
        (folder / "config.yaml").write_text(json.dumps({"model": model, "strategy": strategy, "lr": lr,
                                                        "seed": number // 6,
                                                        "epochs": epochs, "batch_size": 32, "weights": "imagenet"}))
        curve = [min(0.9, 0.3 + 0.05 * epoch + 0.01 * number) for epoch in range(1, epochs + 1)]
        (folder / "metrics.jsonl").write_text("".join(json.dumps({"epoch": epoch, "train_loss": 1.0 / epoch,
                                                                  "train_acc": acc,
                                                                  "val_loss": 1.0 - acc, "val_acc": acc, "lr": lr,
                                                                  "epoch_seconds": 10.0,
                                                                  "images_per_second": 500.0}) + "\n"
                                                      for epoch, acc in enumerate(curve, start=1)))
        (folder / "summary.json").write_text(json.dumps({"state": "finished", "best_val_acc": max(curve),
                                                         "best_epoch": epochs,
                                                         "trainable_params": 1000, "total_params": 11_000_000,
                                                         "train_seconds": 10.0 * epochs, "epochs_completed": epochs}))
    return root


def seconds(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def imports_torch(command: list[str]) -> bool:
    result = subprocess.run([command[0], "-X", "importtime", *command[1:]], cwd=ROOT, capture_output=True, text=True)
    return any(line.rsplit("|", 1)[-1].strip() == "torch" for line in result.stderr.splitlines())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    python, agent = sys.executable, str(ROOT / "agent.py")
    with tempfile.TemporaryDirectory() as work:
        sweep = write_sweep_folder(Path(work) / "sweep")
        commands = {
            "python -c pass": [python, "-c", "pass"],
            "agent.py --help": [python, agent, "--help"],
            "agent.py sweep --help": [python, agent, "sweep", "--help"],
            "agent.py check sweeps/tiny.yaml": [python, agent, "check", str(ROOT / "sweeps" / "tiny.yaml")],
            "agent.py report SWEEP_DIR": [python, agent, "report", str(sweep), "--out", str(Path(work) / "report")],
            # What `report` loads before it reads its source; the rest of its time is its statistics and figures.
            "  report's start (its imports)": [
                python, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); import agent, report.build"],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeats):
            for name, command in commands.items():  # interleaved: load hits every command alike
                times[name].append(seconds(command))
        torch_used = {name: imports_torch(command) for name, command in commands.items()}
    base = statistics.median(times["python -c pass"])
    print(f"median of {args.repeats} runs each, whole processes ({sys.platform}, Python {sys.version.split()[0]})")
    print(f"{'command':34s} {'seconds':>8s} {'x python':>9s}  torch  under {TARGET_SECONDS:g} s")
    for name, values in times.items():
        median = statistics.median(values)
        verdict = "" if name == "python -c pass" else ("yes" if median < TARGET_SECONDS else "NO")
        print(f"{name:34s} {median:8.2f} {median / base:9.1f}  {'yes' if torch_used[name] else 'no':5s}  {verdict}")


if __name__ == "__main__":
    main()
