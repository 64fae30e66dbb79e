#!/usr/bin/env python
"""How long the commands that train nothing take, as whole processes: `--help`, `sweep --help`, `check`, `report`.

Each command runs as `python agent.py ...` in a fresh process, interleaved with `python -c pass` (the interpreter
alone) so that machine load hits all alike; the median of `--repeats` runs is printed with its ratio to the bare
interpreter, and whether the command imported torch (one extra run under `-X importtime`). `report` reads a small
sweep folder the script writes itself (12 finished runs of 10 epochs, no training), and once more a folder of 3 failed
runs (a report with no statistics and no figure to draw, which imports neither); a last row times what it imports
before it reads a folder, the rest being its statistics (scipy, scikit-learn) and figures (matplotlib). Target:
under 2 s each on an idle machine, with no torch. Nothing is asserted: it is a measurement. The table, with this
command, replaces its section of benchmarks/RESULTS.md.

    python benchmarks/startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
TARGET_SECONDS = 2.0


def write_failed_folder(root: Path, runs: int = 3) -> Path:
    """A sweep whose every trial failed before an epoch: the report has runs to list and nothing to compute."""
    root.mkdir(parents=True)
    (root / "sweep.yaml").write_text(json.dumps({"name": "failed", "method": "random",
                                                 "metric": {"name": "val_acc", "goal": "maximize"},
                                                 "parameters": {"lr": {"values": [1e-4, 1e-3]}}}))
    for number in range(runs):
        folder = root / "runs" / f"failed-{number:03d}"
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(json.dumps({"model": "scratch_cnn", "lr": 1e-3, "seed": number}))
        (folder / "summary.json").write_text(json.dumps({"state": "failed", "reason": "RuntimeError: made up"}))
    return root


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
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"),
                        help="results file; its startup section is replaced")
    args = parser.parse_args(argv)
    import torch  # to name the machine as the other benchmarks do; the timed commands run in subprocesses
    from pipeline import device_name, write_section
    python, agent = sys.executable, str(ROOT / "agent.py")
    with tempfile.TemporaryDirectory() as work:
        sweep = write_sweep_folder(Path(work) / "sweep")
        failed = write_failed_folder(Path(work) / "failed")
        commands = {
            "python -c pass": [python, "-c", "pass"],
            "agent.py --help": [python, agent, "--help"],
            "agent.py sweep --help": [python, agent, "sweep", "--help"],
            "agent.py check sweeps/tiny.yaml": [python, agent, "check", str(ROOT / "sweeps" / "tiny.yaml")],
            "agent.py report SWEEP_DIR": [python, agent, "report", str(sweep), "--out", str(Path(work) / "report")],
            "agent.py report (3 failed runs)": [python, agent, "report", str(failed), "--out", str(Path(work) / "r2")],
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
    command = "python benchmarks/startup.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [f"## Startup · {device_name(torch.device('cpu'))}", "", f"`{command.strip()}`", "",
             f"{datetime.date.today().isoformat()}; median of {args.repeats} runs each, whole processes, interleaved "
             f"with the bare interpreter ({sys.platform}, Python {sys.version.split()[0]}).", "",
             f"| command | seconds | x python | imports torch | under {TARGET_SECONDS:g} s |",
             "|---|---:|---:|---|---|"]
    for name, values in times.items():
        median = statistics.median(values)
        verdict = "" if name == "python -c pass" else ("yes" if median < TARGET_SECONDS else "NO")
        lines.append(f"| {name.strip()} | {median:.2f} | {median / base:.1f} | {'yes' if torch_used[name] else 'no'} "
                     f"| {verdict} |")
    section = "\n".join(lines) + "\n"
    print(section)
    write_section(Path(args.out), section)


if __name__ == "__main__":
    main()
