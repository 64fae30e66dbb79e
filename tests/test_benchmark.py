"""The benchmark scripts run end to end (tiny sizes; their timings are measurements, never asserted here), and
their parts do what RESULTS.md says: which runs are compared, which tensors train, the ratios' arithmetic."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))  # the scripts import each other as top-level modules

import backbones as backbones_bench  # noqa: E402
import checkpoint as checkpoint_bench  # noqa: E402
import decode as decode_bench  # noqa: E402
import pipeline as pipeline_bench  # noqa: E402

from common.preprocessing import Preprocessing  # noqa: E402
from models import FreezeOptions, build_model, plan_for_epoch, resolve_strategy  # noqa: E402
from trainer import metrics as M  # noqa: E402


def test_pipeline_benchmark_runs_and_writes_its_section(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## kept section\n\nfrom another device\n")
    command = [sys.executable, str(ROOT / "benchmarks" / "pipeline.py"), "--classes", "2", "--images_per_class", "6",
               "--epochs", "1", "--batch_size", "4", "--input_size", "32", "--device", "cpu",
               "--work_dir", str(tmp_path / "work"), "--out", str(results)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    text = results.read_text()
    assert "## kept section" in text and "## CPU" in text and "mobilenet_v3_small · 32 px" in text
    assert "crop 32 / resize 37 for both pipelines" in text  # the weights' resize/crop ratio (256/224) kept at 32 px
    for label in ("head_only (augment none)", "last_k k=1 (augment none)", "full (augment standard)",
                  "6-run mixed sweep"):
        assert label in text
    summary = json.loads((tmp_path / "work" / "summary.json").read_text())
    assert set(summary["rows"]) == {"head_only", "last_k", "full"}
    for row in summary["rows"].values():
        assert (row["naive_run_seconds"] > 0 and row["harness_first_run_seconds"] > 0
                and row["harness_train_images_per_second"] > 0)


def test_checkpoint_benchmark_runs_and_writes_its_section(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## kept section\n\nfrom another device\n")
    command = [sys.executable, str(ROOT / "benchmarks" / "checkpoint.py"), "--model", "mobilenet_v3_small",
               "--input_size", "32",
               "--batch_size", "2", "--steps_per_epoch", "1", "--epochs", "2", "--repeats", "1", "--device", "cpu",
               "--work_dir", str(tmp_path), "--out", str(results)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
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
    assert "mobilenet_v3_small" in rows[1] and "vit_b_16" in rows[1]  # backbones sharing a resize size share a row


# ---------------------------------------------------------------------------------------------------------
# The scripts' parts, on hand-made numbers: which runs are compared, and the arithmetic of the ratios.


def tiny_workload(tmp_path, epochs=3, batch_size=4, train=10, val=2, num_all=12) -> pipeline_bench.Workload:
    pre = Preprocessing(32, 37, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear")
    return pipeline_bench.Workload("mobilenet_v3_small", pre, epochs, batch_size, torch.device("cpu"),
                                   tmp_path / "data", tmp_path,
                                   3, [f"c/{i}.jpg" for i in range(train)], [f"v/{i}.jpg" for i in range(val)], num_all)


def test_naive_net_is_plain_fp32_torchvision_and_trains_the_same_tensors_as_the_harness(tmp_path):
    w = tiny_workload(tmp_path)
    expected = {"head_only": {"classifier.3.weight", "classifier.3.bias"},
                "last_k": {"classifier.0.weight", "classifier.0.bias", "classifier.3.weight", "classifier.3.bias"}}
    harness = build_model(w.model, w.classes, "none")
    for strategy in pipeline_bench.STRATEGIES:
        net = pipeline_bench.naive_net(w, strategy)
        # The whole torchvision net, run from images every epoch: no feature cache, no wrapper, fp32.
        assert type(net) is torchvision.models.MobileNetV3 and net.classifier[3].out_features == w.classes
        assert all(p.dtype == torch.float32 for p in net.parameters())
        config = pipeline_bench.harness_config(w, strategy, 1e-3, tmp_path / "cache", tmp_path / "runs")
        harness.apply_plan(plan_for_epoch(resolve_strategy(config.strategy), harness.stage_names,
                                          FreezeOptions(k_layers=config.k_layers or 1), 0))
        trained = {name for name, p in net.named_parameters() if p.requires_grad}
        assert trained == {name.removeprefix("net.") for name, p in harness.named_parameters() if p.requires_grad}
        assert trained == expected.get(strategy, {name for name, _ in net.named_parameters()})


def test_harness_runs_are_head_only_last_one_stage_and_full_with_imagenet_weights(tmp_path):
    w = tiny_workload(tmp_path)
    configs = {s: pipeline_bench.harness_config(w, s, 3e-3, tmp_path / "cache", tmp_path / "runs")
               for s in pipeline_bench.STRATEGIES}
    assert {s: (c.strategy, c.augment, c.k_layers) for s, c in configs.items()} == {
        "head_only": ("head_only", "none", None), "last_k": ("last_k", "none", 1), "full": ("full", "standard", None)}
    assert all((c.weights, c.lr, c.epochs, c.batch_size, c.patience) == ("imagenet", 3e-3, 3, 4, 0)
               for c in configs.values())
    assert pipeline_bench.SWEEP == [(s, lr) for lr in (1e-3, 3e-3) for s in ("head_only", "last_k", "full")]


def fake_results() -> dict:
    T, L = pipeline_bench.Timing, pipeline_bench.ModelLimit
    return {
        "naive": {"head_only": [T(30, 10), T(34, 12)], "last_k": [T(40, 9), T(44, 9)], "full": [T(50, 8), T(54, 8)]},
        "first": {"head_only": [T(4, 100)], "last_k": [T(8, 90)], "full": [T(20, 60)]},
        "later": {"head_only": [T(2, 400, {"scan": 0.5})], "last_k": [T(5, 200)], "full": [T(9, 150), T(11, 170)]},
        "limits": {"head_only": [L(0.01, 0.001, 0.0005, 13)], "last_k": [L(0.01, 0.002, 0.001, 12)],
                   "full": [L(0.0, 0.004, 0.002, 0)]},
        "sweeps": {"naive": [60.0, 80.0], "harness": [10.0, 20.0]},
    }


def test_summary_ratios_are_naive_over_harness_and_harness_over_model_alone(tmp_path):
    w = tiny_workload(tmp_path)  # 3 epochs of 8 training images (10, last partial batch of 4 dropped), 2 val, 12 in all
    assert w.num_train_per_epoch == 8
    summary = pipeline_bench.summarise(w, fake_results())
    head, last, full = (summary["rows"][s] for s in ("head_only", "last_k", "full"))
    assert (head["naive_run_seconds"], head["harness_first_run_seconds"],
            head["harness_later_run_seconds"]) == (32, 4, 2)
    assert head["speedup_first"] == 32 / 4 and head["speedup_later"] == 32 / 2 and full["speedup_later"] == 52 / 10
    # The limit: a first run also pays the frozen prefix over all 12 images; every epoch 8 steps and 2 evaluations.
    assert head["limit_first_run_seconds"] == 12 * 0.01 + 3 * (8 * 0.001 + 2 * 0.0005)
    assert head["limit_later_run_seconds"] == 3 * (8 * 0.001 + 2 * 0.0005)
    assert head["limit_fraction_first"] == head["limit_first_run_seconds"] / 4
    assert last["model_alone_step_images_per_second"] == 1 / 0.002 and head["later_parts"] == {"scan": 0.5}
    assert summary["sweep_speedup"] == 70 / 15
    assert summary["pipeline_efficiency"] == 160 / 250  # full: harness train img/s / model-alone step img/s
    assert summary["pipeline_efficiency_by_strategy"] == {"head_only": 400 / 1000, "last_k": 200 / 500,
                                                          "full": 160 / 250}
    assert summary["head_only_over_full"] == 400 / 160  # later runs' training-loop img/s
    assert full["samples"] == {"naive": 2, "first": 1, "later": 2, "limit": 1}


def test_targets_pass_at_or_above_their_value_and_the_table_says_so(tmp_path):
    w = tiny_workload(tmp_path)
    summary = pipeline_bench.summarise(w, fake_results())  # head-only 8.0x (= target), sweep 4.67x, efficiency 0.64
    checks = {name: (value, target, ok) for name, value, target, ok in pipeline_bench.targets(w, summary)}
    assert list(checks.values()) == [(8.0, 8.0, True), (70 / 15, 4.0, True), (0.64, 0.9, False)]
    args = SimpleNamespace(images_per_class=4, repeats=1)
    text = pipeline_bench.render(w, args, summary, "python benchmarks/pipeline.py", 60.0)
    assert "| head_only (augment none) | 32.0 | 4.0 | 2.0 | 8.0x | 16.0x |" in text
    assert "| head-only 3-epoch run, harness first run vs naive (x) | 8.00 | 8 | PASS |" in text
    assert "| 6-run mixed sweep, harness vs naive (x) | 4.67 | 4 | PASS |" in text
    assert "| pipeline efficiency, full fine-tuning (harness / model alone) | 0.64 | 0.9 | FAIL |" in text
    gpu = pipeline_bench.targets(dataclasses.replace(w, device=torch.device("cuda")), summary)
    assert [(name.split(" (")[0], value, target, ok) for name, value, target, ok in gpu[2:]] == [
        ("pipeline efficiency, head_only", 0.4, 0.95, False), ("pipeline efficiency, last_k", 0.4, 0.95, False),
        ("pipeline efficiency, full", 0.64, 0.95, False),
        ("full fine-tuning train img/s, first step", 160, 2500, False),
        ("full fine-tuning train img/s", 160, 5000, False),
        ("head-only train img/s / full fine-tuning's, later runs", 2.5, 10, False)]


def test_schedule_interleaves_the_sweep_and_files_each_run_as_first_or_later(tmp_path, monkeypatch):
    calls = []

    def fake(kind):
        def run(w, strategy, lr, cache_dir=None, log=None):
            calls.append((kind, strategy, lr, cache_dir and cache_dir.name))
            return pipeline_bench.Timing(float(len(calls)), 1.0)
        return run

    monkeypatch.setattr(pipeline_bench, "naive_run", fake("naive"))
    monkeypatch.setattr(pipeline_bench, "harness_run", fake("harness"))
    monkeypatch.setattr(pipeline_bench, "model_alone", lambda w, strategy,
                        repeats: pipeline_bench.ModelLimit(0.0, 1.0, 1.0, 0))
    results = pipeline_bench.run_schedule(tiny_workload(tmp_path), 1, io.StringIO())
    sweep = [c for c in calls if c[3] != "cache-cold-last_k-0" and c[3] != "cache-cold-full-0"]
    assert [c[:3] for c in sweep[::2]] == [("naive", *r) if i % 2 == 0 else ("harness", *r) for i,
                                           r in enumerate(pipeline_bench.SWEEP)]
    assert {c[3] for c in sweep if c[0] == "harness"} == {"cache-sweep-0"}  # one cache folder for the whole sweep
    index = {call: i + 1.0 for i, call in enumerate(calls)}  # each Timing's run_seconds is its call's number
    first = {s: [t.run_seconds for t in ts] for s, ts in results["first"].items()}
    later = {s: [t.run_seconds for t in ts] for s, ts in results["later"].items()}
    assert first == {"head_only": [index["harness", "head_only", 1e-3, "cache-sweep-0"]],  # run 1 builds every cache
                     "last_k": [index["harness", "last_k", 1e-3, "cache-cold-last_k-0"]],
                     "full": [index["harness", "full", 1e-3, "cache-cold-full-0"]]}
    assert later == {"head_only": [index["harness", "head_only", 3e-3, "cache-sweep-0"]],
                     "last_k": [index["harness", "last_k", 3e-3, "cache-sweep-0"]],
                     "full": [index["harness", "full", 1e-3, "cache-sweep-0"],
                              index["harness", "full", 3e-3, "cache-sweep-0"]]}
    assert [len(results["naive"][s]) for s in pipeline_bench.STRATEGIES] == [2, 2, 2]
    assert results["sweeps"]["harness"] == [sum(index[c] for c in sweep if c[0] == "harness")]
    assert results["sweeps"]["naive"] == [sum(index[c] for c in sweep if c[0] == "naive")]


def test_write_section_replaces_its_own_section_and_keeps_the_others(tmp_path):
    results = tmp_path / "RESULTS.md"
    pipeline_bench.write_section(results, "## A\n\nold\n")
    pipeline_bench.write_section(results, "## B\n\nother\n")
    pipeline_bench.write_section(results, "## A\n\nnew\n")
    text = results.read_text()
    assert text.startswith("# Benchmark results") and text.count("## A") == 1 and "new" in text and "old" not in text
    assert "## B\n\nother" in text


def test_checkpoint_runs_write_once_per_epoch_and_end_only_when_the_last_write_is_done(tmp_path, monkeypatch):
    writes = []

    def slow_write(path, payload):
        time.sleep(0.05)  # a write still in flight when the loop ends: the run must wait for it
        writes.append(payload["epoch"])

    class Trainee:
        steps = 0

        def step(self):
            self.steps += 1

        def payload(self, epoch):
            return {"epoch": epoch}

    monkeypatch.setattr(checkpoint_bench, "write_checkpoint", slow_write)
    args = SimpleNamespace(device=torch.device("cpu"), epochs=2, steps_per_epoch=3)
    for mode, expected in (("none", []), ("synchronous", [1, 2]), ("background", [1, 2])):
        writes.clear()
        trainee = Trainee()
        assert checkpoint_bench.timed_run(trainee, mode, args, tmp_path / "last.pt") > 0
        assert (trainee.steps, writes) == (6, expected), mode


def test_decode_table_ratios_are_scan_over_cache_and_naive_over_cache():
    ms = {"scan": 1.0, "cache 232": 4.0, "naive 232": 10.0}
    text = decode_bench.render(ms, {232: ("resnet50",)}, 5, "python benchmarks/decode.py", SimpleNamespace(repeats=1))
    assert "| 232 | resnet50 | 1.00 | 4.00 | 10.00 | 0.25 | 2.5x |" in text


def test_backbones_benchmark_runs_every_asked_backbone_and_writes_its_section(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## kept section\n\nfrom another device\n")
    command = [sys.executable, str(ROOT / "benchmarks" / "backbones.py"), "--models", "resnet18", "scratch_cnn",
               "--classes", "2", "--images_per_class", "4", "--epochs", "2", "--batch_size", "2", "--sizes", "32",
               "--device", "cpu", "--work_dir", str(tmp_path / "work"), "--out", str(results)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    text = results.read_text()
    assert "## kept section" in text and "## Backbones · CPU" in text
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| backbone |")]
    assert [(r[1].strip(), r[2].strip(), r[3].strip(), r[4].strip()) for r in rows] == [
        ("resnet18", "last_k", "32", "finished"), ("resnet18", "full", "32", "finished"),
        ("scratch_cnn", "full", "32", "finished")]  # the scratch CNN has one strategy: all of it trains
    assert "Crashed or failed runs: 0." in text and "compile" not in text.split("## Backbones")[1]  # GPU only


def test_backbones_plan_covers_the_registry_at_two_sizes_and_the_gpu_extras():
    args = backbones_bench.parse_args(["--device", "cpu"])
    runs = backbones_bench.plan(args)
    models = {model for _, model, _, _, _ in runs}
    assert models == set(backbones_bench.backbone_names())
    sizes = {(model, size) for _, model, _, size, _ in runs}
    # 1.25x the own crop, rounded up to 32: 224 -> 288, 299 -> 384 (373.75), 384 -> 480; ViT stays on its 16 px grid
    for model, own, larger in [("resnet50", 224, 288), ("inception_v3", 299, 384), ("efficientnet_v2_s", 384, 480),
                               ("vit_b_16", 224, 288), ("scratch_cnn", 224, 288)]:
        assert {(model, own), (model, larger)} <= sizes
    assert len(runs) == 4 * (len(models) - 1) + 2  # last_k and full at two sizes; the scratch CNN full only
    args.device = torch.device("cuda")
    on_gpu = backbones_bench.plan(args)
    extras = on_gpu[:-len(runs)]  # first: a time limit cuts the end of the plan
    assert on_gpu[len(extras):] == runs
    assert [(what, overrides) for what, *_, overrides in extras] == [
        ("compile off", {"compile": False}), ("compile on", {"compile": True}),
        ("forced OOM", {"batch_size": backbones_bench.OOM_BATCH})]


def test_backbones_render_judges_the_forced_oom_and_names_crashes():
    args = backbones_bench.parse_args(["--device", "cpu"])
    Row = backbones_bench.Row
    rows = [Row("backbone", "resnet18", "full", 32, "crashed", reason="RuntimeError: cuDNN error"),
            Row("compile off", "resnet50", "full", 224, "finished", images_per_second=100.0, first_epoch_seconds=2.0),
            Row("compile on", "resnet50", "full", 224, "finished", images_per_second=150.0, first_epoch_seconds=40.0),
            Row("forced OOM", "resnet50", "full", 1024, "finished", batch="128 (asked 256)")]
    text = backbones_bench.render(args, rows, "python benchmarks/backbones.py", 60.0)
    assert "the compile pair trains on 200 images per class" in text and "## Backbones · CPU" in text
    assert "1.50x the train img/s of eager" in text and "first epoch 40.0 s compiled vs 2.0 s eager" in text
    assert "batch 256): finished, PASS" in text  # retried at half the batch
    assert "Crashed or failed runs: 1 (resnet18 full 32;" in text
    rows[-1] = Row("forced OOM", "resnet50", "full", 1024, "crashed")
    assert "batch 256): crashed, FAIL" in backbones_bench.render(args, rows, "cmd", 1.0)


def test_backbones_benchmark_exits_1_when_a_run_crashes(tmp_path, monkeypatch):
    monkeypatch.setattr(backbones_bench, "run_training", lambda config: 1 / 0)
    monkeypatch.setattr(backbones_bench, "make_image_folder", lambda root, **kw: root)
    code = backbones_bench.main(["--models", "scratch_cnn", "--sizes", "32", "--device", "cpu",
                                 "--work_dir", str(tmp_path), "--out", str(tmp_path / "R.md")])
    assert code == 1
    assert "| backbone | scratch_cnn | full | 32 | crashed |" in (tmp_path / "R.md").read_text()
    assert "ZeroDivisionError" in (tmp_path / "crashes.log").read_text()


def test_backbones_benchmark_stops_at_a_preempted_run_and_records_a_run_that_failed_before_its_first_epoch(
        tmp_path, monkeypatch):
    """SIGTERM from a time limit ends the run as preempted: the plan stops there (exit 124), its rows kept. A run
    that failed before any epoch has no metrics.jsonl and is a row, not a crash of the script."""
    states = iter([M.FAILED, M.PREEMPTED, M.FINISHED])

    def fake_run(config):
        folder = tmp_path / "runs" / config.run_id
        folder.mkdir(parents=True)
        state = next(states)
        return SimpleNamespace(state=state, folder=folder, summary={M.REASON: f"{state} here"})

    monkeypatch.setattr(backbones_bench, "run_training", fake_run)
    monkeypatch.setattr(backbones_bench, "make_image_folder", lambda root, **kw: root)
    code = backbones_bench.main(["--models", "scratch_cnn", "--sizes", "32", "64", "96", "--device", "cpu",
                                 "--work_dir", str(tmp_path), "--out", str(tmp_path / "R.md")])
    text = (tmp_path / "R.md").read_text()
    assert code == 124 and "(stopped after 2 of 3 runs)" in text
    assert "| backbone | scratch_cnn | full | 32 | failed |" in text and "| 64 | preempted |" in text
    assert "| 96 |" not in text and "## Backbones · CPU" in text and "scratch_cnn · 32 64 96 px" in text


def test_startup_benchmark_times_every_command_and_writes_its_section(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## kept section\n\nfrom another device\n")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "startup.py"), "--repeats", "1",
                           "--out", str(results)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    text = results.read_text()
    assert "## kept section" in text and "## Startup · CPU" in text
    assert "`python benchmarks/startup.py --repeats 1" in text
    rows = {line.split("|")[1].strip(): line.split("|")[4].strip() for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| command")}
    assert set(rows) >= {"python -c pass", "agent.py --help", "agent.py report SWEEP_DIR",
                         "agent.py report (3 failed runs)"}
    assert rows["agent.py report (3 failed runs)"] == "no" and rows["agent.py --help"] == "no"  # no torch imported
