"""Which runs compare: groups by model, start (ImageNet weights and their version, random init, a warm start) and
resolution; the comparability warnings (data splits, files, code versions, weights, devices and precisions,
selection on the test set); runs trained at another batch size, and runs refused before training grouped by
their mistake."""

from __future__ import annotations

import csv
import json

import pytest

from common.errors import UserError
from report.build import runs_csv
from report.markdown import render
from report.sources import load_table
from report.stats import summarise
from report.table import CODE_VERSION
from report_helpers import (
    FakeRun,
    FakeSweep,
    add_finished,
    add_run,
    fake_wandb,
    finished_summary,
    make_config,
    make_summary,
    report_of,
    section,
    without,
)
from trainer import metrics


def test_mixed_splits_and_weights_are_flagged(tmp_path, sweep_dir):
    import shutil

    shutil.copytree(sweep_dir / "runs", tmp_path / "runs")
    summary_path = tmp_path / "runs" / "r02" / "summary.json"
    data = json.loads(summary_path.read_text())
    data.update({metrics.SPLIT_HASH: "other-split", metrics.WEIGHTS_VERSION: "IMAGENET1K_V1"})
    summary_path.write_text(json.dumps(data))
    warnings = " ".join(summarise(load_table(str(tmp_path / "runs"))).provenance.warnings)
    assert "2 different data splits" in warnings and "model resnet50 ran with 2 different weights" in warnings


def test_runs_on_other_files_under_the_same_names_are_flagged(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    add_run(runs, "r16", "r09", [0.3, 0.4], finished_summary("r09", 0.4, **{metrics.DATA_HASH: "files-a"}))
    add_run(runs, "r17", "r09", [0.3, 0.5], finished_summary("r09", 0.5, **{metrics.DATA_HASH: "files-b"}), seed=1)
    add_finished(runs, "r18", "r09", 0.45, seed=2)  # trained before runs recorded one: says nothing either way
    warnings = " ".join(report_of(runs)[0].provenance.warnings)
    assert "runs were trained on 2 different sets of files under the same names (files-a x1, files-b x1)" in warnings
    (runs / "r17" / "summary.json").write_text(
        json.dumps(finished_summary("r09", 0.5, **{metrics.DATA_HASH: "files-a"})))
    assert "different sets of files" not in " ".join(report_of(runs)[0].provenance.warnings)


def test_mixed_code_versions_are_flagged(tmp_path, sweep_dir):
    import shutil

    shutil.copytree(sweep_dir / "runs", tmp_path / "runs")

    def set_code_version(run_id: str, version: str | None) -> None:
        path = tmp_path / "runs" / run_id / "summary.json"
        data = {k: v for k, v in json.loads(path.read_text()).items() if k != CODE_VERSION}
        path.write_text(json.dumps(data if version is None else {**data, CODE_VERSION: version}))

    set_code_version("r03", None)  # trained before runs recorded their code version: not a second version
    summary = summarise(load_table(str(tmp_path / "runs")))
    assert not any("code version" in warning for warning in summary.provenance.warnings)
    set_code_version("r02", "def5678+dirty")
    summary = summarise(load_table(str(tmp_path / "runs")))
    warning = "runs came from 2 different code versions (abc1234 x9, def5678+dirty x1): numbers may not compare"
    assert warning in summary.provenance.warnings
    assert warning in section(render(summary, {}, {}), 8)


def test_a_random_init_backbone_is_not_the_fine_tuned_headline(tmp_path, sweep_dir):
    import shutil

    shutil.copytree(sweep_dir / "runs", tmp_path / "runs")
    for name in ("config.yaml", "summary.json"):  # r04, the best run, trained efficientnet_b0 from random init
        path = tmp_path / "runs" / "r04" / name
        path.write_text(path.read_text().replace("IMAGENET1K_V1", "none"))
    summary = summarise(load_table(str(tmp_path / "runs")))
    # r06 ties r02, and is cheaper
    assert summary.best_fine_tuned.run_id == "r06" and summary.leaderboard[0].run_id == "r04"
    assert any("1 run(s) of pretrained architectures used weights=none (efficientnet_b0 x1)" in w
               for w in summary.provenance.warnings)
    assert summary.seeds_fine_tuned and all(r.run_id != "r04" for r in summary.seeds_fine_tuned.records)


def test_a_run_retried_at_half_the_batch_is_shown_and_grouped_as_it_trained(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    add_finished(runs, "r16", "r09", 0.40, seed=0)
    add_finished(runs, "r17", "r09", 0.44, seed=1)
    retried = finished_summary("r09", 0.60, **{metrics.BATCH_SIZE: 16, metrics.BATCH_SIZE_ASKED: 32})
    add_run(runs, "r18", "r09", [0.5, 0.6], retried, seed=2)  # config.yaml asks for 32
    summary, text = report_of(runs)
    assert [r.run_id for r in summary.seeds_scratch.records] == ["r16", "r17"]  # not averaged with the 32s
    record = next(r for r in summary.successful if r.run_id == "r18")
    assert (record.config["batch_size"], record.batch_size_asked) == (16, 32)
    assert "1 run(s) trained at a smaller batch_size than their config asked" in text and "r18 (16, not 32)" in text
    csv_row = next(row for row in csv.DictReader(runs_csv(load_table(str(runs))).splitlines())
                   if row["run_id"] == "r18")
    assert csv_row["batch_size"] == "16"


def test_comparability_warnings_for_selection_on_test_missing_splits_and_a_minimising_sweep(tmp_path, sweep_dir):
    import shutil

    shutil.copytree(sweep_dir, tmp_path / "sweep")
    sweep_path = tmp_path / "sweep" / "sweep.yaml"
    sweep_path.write_text(sweep_path.read_text().replace("maximize", "minimize"))
    test_dir = tmp_path / "sweep" / "runs" / "r06" / "test"
    test_dir.mkdir()
    (test_dir / "test.json").write_text(json.dumps({"test_acc": 0.8, "num_images": 2000, "checkpoint": "best.pt"}))
    summary_path = tmp_path / "sweep" / "runs" / "r02" / "summary.json"
    summary_path.write_text(json.dumps(without(json.loads(summary_path.read_text()), metrics.SPLIT_HASH)))
    summary, text = report_of(tmp_path / "sweep")
    # r04 and r06 are two seeds of one config: testing every seed of one fixed config is not selection.
    assert not any("evaluated on the test set" in warning for warning in summary.provenance.warnings)
    test_dir = tmp_path / "sweep" / "runs" / "r02" / "test"  # another config tested too: now there is a choice
    test_dir.mkdir()
    (test_dir / "test.json").write_text(json.dumps({"test_acc": 0.7, "num_images": 2000, "checkpoint": "best.pt"}))
    summary, text = report_of(tmp_path / "sweep")
    expected = [
        f"1 successful runs recorded no {metrics.SPLIT_HASH}: nothing shows which data split they were measured on",
        f"the sweep's metric goal is 'minimize'; {metrics.VAL_ACC} should be maximized",
        "3 runs of 2 different configs were evaluated on the test set (r02, r04, r06): choosing among them by test "
        "accuracy turns the test set into a validation set",
    ]
    assert summary.provenance.warnings == expected
    for warning in expected:
        assert f"> **WARNING:** {warning}" in text


def test_runs_refused_before_training_are_grouped_by_their_mistake(tmp_path):
    from trainer.config import parse_run_config
    from trainer.run import run_training

    runs = tmp_path / "runs"
    runs.mkdir()
    add_finished(runs, "r16", "r01", 0.7)
    add_run(runs, "r17", "r01", [0.4],
            {**finished_summary("r01", 0.4), metrics.STATE: metrics.FAILED, metrics.REASON: "a bug",
                                         "exit_code": 1})
    for attempt in ("typo-1", "typo-2"):  # the same --data_dir typo, tried twice
        with pytest.raises(UserError, match="no dataset found"):  # agent.py prints it as one line, exit status 2
            run_training(parse_run_config({"data_dir": str(tmp_path / "datsets"), "output_dir": str(runs),
                                           "run_id": attempt,
                                           "model": "scratch_cnn", "wandb_mode": "disabled", "download": "false"}))
    summary, text = report_of(runs)
    assert ({state: [r.run_id for r in records] for state, records in summary.not_counted}
            == {"failed": ["r17", "typo-1", "typo-2"]})
    part = section(text, 6)
    assert "| `r17` | failed |" in part and "| `typo-1` |" not in part  # a real failure keeps its row
    assert "**Refused before training** (2 run(s), counted as failed above)" in part
    [row] = [line for line in part.splitlines() if "`typo-1`, `typo-2`" in line]
    assert row.startswith(f"| no dataset found in {tmp_path / 'datsets'}")


def test_a_wandb_run_refused_before_training_is_grouped_too(monkeypatch):
    refused = FakeRun("r11", "failed", {metrics.STATE: metrics.FAILED, metrics.REASON: "weights file gone.pt not found",
                                        metrics.EXIT_CODE: 2}, as_object=True)
    refused._history = []  # refused before its first epoch
    fake_wandb(monkeypatch, FakeSweep([refused, FakeRun("r01", "finished", make_summary("r01"), as_object=False)]))
    _, text = report_of("team/project/abc123")
    assert "| weights file gone.pt not found | `r11` |" in section(text, 6)


def test_scratch_cnn_comes_after_every_pretrained_model(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    add_finished(runs, "r16", "r09", 0.5)
    add_finished(runs, "r17", "r01", 0.7, model="vit_b_16")  # sorts after scratch_cnn by name
    add_finished(runs, "r18", "r01", 0.6)
    summary, _ = report_of(runs)
    assert [g.model for g in summary.groups] == ["resnet50", "vit_b_16", "scratch_cnn"]


def test_weights_none_in_the_config_alone_makes_a_run_random_init_not_fine_tuned(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    # A summary that did not record the weights it loaded: the config's weights=none still says random init.
    add_run(runs, "r16", "r04", [0.7, 0.9], without(finished_summary("r04", 0.9), metrics.WEIGHTS_VERSION),
            weights="none")
    add_finished(runs, "r17", "r04", 0.8)
    add_finished(runs, "r18", "r09", 0.5)
    summary, _ = report_of(runs)
    assert summary.leaderboard[0].run_id == "r16" and summary.best_random_init.run_id == "r16"
    assert (summary.best_fine_tuned.run_id, summary.best_scratch.run_id) == ("r17", "r18")
    assert summary.gap_points == pytest.approx(30.0)  # 80 % fine-tuned against 50 % scratch, not 90 % against it


def test_random_init_runs_of_a_pretrained_architecture_are_a_group_of_their_own(tmp_path):
    """resnet50 full from ImageNet and from random weights are two experiments: one mean would hide both."""
    runs = tmp_path / "runs"
    runs.mkdir()
    add_finished(runs, "r16", "r03", 0.8)
    add_finished(runs, "r17", "r03", 0.9, lr=3e-4)
    add_run(runs, "r18", "r03", [0.3, 0.4], {**finished_summary("r03", 0.4), metrics.WEIGHTS_VERSION: "none"},
            weights="none")
    summary, text = report_of(runs)
    groups = {(g.model, g.strategy): (g.stats.count, g.stats.mean) for g in summary.groups}
    assert groups == {("resnet50", "full"): (2, pytest.approx(0.85)),
                      ("resnet50 (random init)", "full"): (1, pytest.approx(0.4))}
    assert "| `r18` | resnet50 (random init) | – | full |" in section(text, 2)
    assert [r.run_id for r in summary.best_per_strategy] == ["r17", "r18"]  # its own learning curve, not hidden


def test_runs_from_another_weights_version_or_a_checkpoint_are_groups_of_their_own(tmp_path):
    """ResNet-50 V1 is ~5 points behind V2 head-only: one mean over both would describe neither (pitfall 9)."""
    import shutil

    runs = tmp_path / "runs"
    runs.mkdir()
    add_finished(runs, "r16", "r03", 0.8)
    add_run(runs, "r17", "r03", [0.6, 0.7],
            {**finished_summary("r03", 0.7), metrics.WEIGHTS_VERSION: "ResNet50_Weights.IMAGENET1K_V1"},
            weights="IMAGENET1K_V1")
    add_run(runs, "r18", "r03", [0.8, 0.9],
            {**finished_summary("r03", 0.9), metrics.WEIGHTS_VERSION: "file:/runs/r16/best.pt"},
            weights="/runs/r16/best.pt")
    summary, text = report_of(runs)
    groups = {(g.model, g.strategy): g.stats.count for g in summary.groups}
    assert groups == {("resnet50 (IMAGENET1K_V2)", "full"): 1, ("resnet50 (IMAGENET1K_V1)", "full"): 1,
                      ("resnet50 (warm start)", "full"): 1}  # versions named where the sweep holds two
    assert "| `r17` | resnet50 (IMAGENET1K_V1) | – | full |" in section(text, 2)
    assert "model resnet50 ran with 2 different weights versions" in text  # the checkpoint is not a third
    shutil.rmtree(runs / "r17")
    summary, _ = report_of(runs)  # one version left: the plain model name again
    assert {g.model for g in summary.groups} == {"resnet50", "resnet50 (warm start)"}


def test_a_run_that_recorded_no_weights_is_not_taken_for_random_init():
    from report.table import RunRecord

    config = without(make_config("r04"), "weights")  # weights unknown: neither record says none
    record = RunRecord("r16", metrics.FINISHED, config, without(make_summary("r04"), metrics.WEIGHTS_VERSION))
    assert not record.is_random_init and record.is_fine_tuned


def test_a_run_from_a_relative_checkpoint_path_is_a_warm_start_before_it_recorded_its_weights():
    from report.table import RunRecord

    # `--weights=best.pt` (no slash) in the config; the summary has no weights version yet (it died first).
    record = RunRecord("r16", metrics.FAILED, {**make_config("r03"), "weights": "best.pt"},
                       without(make_summary("r03"), metrics.WEIGHTS_VERSION))
    assert record.is_warm_start and record.model_label == "resnet50 (warm start)"


def test_runs_on_another_split_are_not_also_said_to_have_replaced_images(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    add_run(runs, "r16", "r09", [0.3, 0.4], finished_summary("r09", 0.4, **{metrics.DATA_HASH: "files-a"}))
    other = finished_summary("r09", 0.5, **{metrics.DATA_HASH: "files-b", metrics.SPLIT_HASH: "other-split"})
    add_run(runs, "r17", "r09", [0.3, 0.5], other, seed=1)
    warnings = " ".join(report_of(runs)[0].provenance.warnings)
    assert "2 different data splits" in warnings and "different sets of files" not in warnings


def test_random_init_runs_are_not_another_weights_version_of_their_model(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    add_finished(runs, "r16", "r03", 0.8)
    add_run(runs, "r17", "r03", [0.3, 0.4], {**finished_summary("r03", 0.4), metrics.WEIGHTS_VERSION: "none"},
            weights="none")
    warnings = " ".join(report_of(runs)[0].provenance.warnings)
    assert "used weights=none" in warnings and "different weights versions" not in warnings


def test_runs_on_several_devices_or_precisions_are_flagged_and_their_seconds_qualified(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    on = {"r16": ("Tesla T4", "float16"), "r17": ("Tesla T4", "float16"), "r18": ("NVIDIA A100-SXM4-80GB", "bfloat16")}
    for seed, (run_id, (device, precision)) in enumerate(on.items()):
        summary = finished_summary("r01", 0.7 + seed / 100, **{metrics.DEVICE: device, "precision": precision})
        add_run(runs, run_id, "r01", [0.6, 0.7 + seed / 100], summary, seed=seed)
    add_run(runs, "r19", "r01", [0.6, 0.75], without(finished_summary("r01", 0.75), metrics.DEVICE), seed=3)  # older
    summary, text = report_of(runs)
    assert ("runs trained on 2 different devices (NVIDIA A100-SXM4-80GB x1, Tesla T4 x2): their train seconds compare "
            "only within one device") in summary.provenance.warnings
    assert any(w.startswith("runs trained at 2 different precisions (bfloat16 x1, float16 x2)")
               for w in summary.provenance.warnings)
    assert "No comparability warnings." not in text
    assert ("- Devices of successful runs: `NVIDIA A100-SXM4-80GB` x1, `Tesla T4` x2; precisions: `bfloat16` x1, "
            "`float16` x2") in section(text, 8)
    assert ("*Train s* compare only within one device and precision, and these runs span several (devices: "
            "`NVIDIA A100-SXM4-80GB` x1, `Tesla T4` x2; precisions: `bfloat16` x1, `float16` x2)") in section(text, 4)
    csv_row = next(row for row in csv.DictReader(runs_csv(load_table(str(runs))).splitlines())
                   if row["run_id"] == "r18")
    assert (csv_row[metrics.DEVICE], csv_row["precision"]) == ("NVIDIA A100-SXM4-80GB", "bfloat16")

    for run_id in on:  # one device and one precision: nothing to say
        path = runs / run_id / "summary.json"
        path.write_text(
            json.dumps({**json.loads(path.read_text()), metrics.DEVICE: "Tesla T4", "precision": "float16"}))
    summary, text = report_of(runs)
    assert "No comparability warnings." in text and "compare only within" not in text


def test_resolution_is_shown_grouped_and_costed(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    add_run(runs, "r16", "r03", [0.6, 0.7], {**finished_summary("r03", 0.7), metrics.PEAK_GPU_MEMORY: 3.5},
            input_size=224)
    add_run(runs, "r17", "r03", [0.7, 0.8], {**finished_summary("r03", 0.8), metrics.PEAK_GPU_MEMORY: 8.0},
            input_size=352)
    add_run(runs, "r18", "r03", [0.7, 0.75], {**finished_summary("r03", 0.75), metrics.PEAK_GPU_MEMORY: 3.5},
            input_size=224, eval_size=288, seed=1)
    summary, text = report_of(runs)
    assert {(g.model, g.size, g.stats.count) for g in summary.groups} == {("resnet50", "224", 1),
                                                                          ("resnet50", "352", 1),
                                                                          ("resnet50", "224→288", 1)}
    assert [g.size for g in summary.groups] == ["224", "224→288", "352"]  # by resolution within a model and strategy
    assert "| `r17` | resnet50 | 352 | full |" in section(text, 2)
    assert summary.pareto_memory == {"r17", "r18"}  # r16 ties r18 on memory at lower accuracy
    cost = section(text, 4)
    assert ("**Against peak GPU memory**" in cost
            and "| `r17` | resnet50 | 352 | full | 80.00% | 600 | 500 | 23,528,522 | 8.00 |" in cost)
