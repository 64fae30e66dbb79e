"""The benchmark script runs end to end (tiny sizes; its figures are measurements, never asserted here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pipeline_benchmark_runs_and_writes_its_section(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## kept section\n\nfrom another device\n")
    command = [sys.executable, str(ROOT / "benchmarks" / "pipeline.py"), "--classes", "2", "--images_per_class", "6",
               "--epochs", "1", "--batch_size", "4", "--input_size", "32", "--device", "cpu",
               "--work_dir", str(tmp_path / "work"), "--out", str(results)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    text = results.read_text()
    assert "## kept section" in text and "## CPU" in text and "mobilenet_v3_small · 32 px" in text
    for label in ("head_only (augment none)", "last_k k=1 (augment none)", "full (augment standard)", "6-run mixed sweep"):
        assert label in text
    summary = json.loads((tmp_path / "work" / "summary.json").read_text())
    assert set(summary["rows"]) == {"head_only", "last_k", "full"}
    for row in summary["rows"].values():
        assert row["naive_run_seconds"] > 0 and row["harness_first_run_seconds"] > 0 and row["harness_train_images_per_second"] > 0


def test_checkpoint_benchmark_runs_and_writes_its_section(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## kept section\n\nfrom another device\n")
    command = [sys.executable, str(ROOT / "benchmarks" / "checkpoint.py"), "--model", "mobilenet_v3_small", "--input_size", "32",
               "--batch_size", "2", "--steps_per_epoch", "1", "--epochs", "2", "--repeats", "1", "--device", "cpu",
               "--work_dir", str(tmp_path), "--out", str(results)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    text = results.read_text()
    assert "## kept section" in text and "## Checkpoints · CPU · mobilenet_v3_small full fine-tuning · 32 px" in text
    for mode in ("| none |", "| synchronous |", "| background |"):
        assert mode in text


def test_decode_benchmark_runs_and_writes_its_section(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## kept section\n\nfrom another device\n")
    command = [sys.executable, str(ROOT / "benchmarks" / "decode.py"), "--classes", "2", "--images_per_class", "2",
               "--repeats", "1", "--work_dir", str(tmp_path / "work"), "--out", str(results)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    text = results.read_text()
    assert "## kept section" in text and "## Decoding · one core · per image" in text
    # One row per distinct resize size of the backbones, each naming its backbones.
    rows = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split("|")[1].strip() for row in rows] == ["232", "256", "342", "384"]
    assert "inception_v3" in rows[2] and "efficientnet_v2_s" in rows[3]
