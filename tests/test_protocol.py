"""The fair protocol: stages, recipes written from tuning sweeps, fresh seeds, the test aggregate, the data-efficiency
curve and its crossover, and the W&B side.

The whole protocol end to end runs real `agent.py` trials (`slow`; CI runs it on its own); the rest recompute the
report's numbers by hand on crafted run folders.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy import stats

from common.errors import UserError
from report.markdown import render
from report.protocol import Crossover, CurvePoint, crossovers
from report.sources import load_table
from report.stats import summarise
from sweeper import protocol as P
from trainer import metrics

TINY_SCRATCH = {"filters": {"value": 8}, "dense_units": {"value": 16}}


def sweep_yaml(path: Path, name: str, parameters: dict, method: str = "random") -> Path:
    path.write_text(yaml.safe_dump({"name": name, "program": "agent.py", "method": method,
                                    "metric": {"name": "val_acc", "goal": "maximize"}, "parameters": parameters}))
    return path


@pytest.fixture
def protocol_files(tmp_path):
    """A protocol of two arms (MobileNetV3-Small from 'ImageNet' weights, the scratch CNN) at 32 px, tiny budgets."""
    recipes = tmp_path / "compare"
    backbone = sweep_yaml(tmp_path / "tune_backbone.yaml", "tune-backbone", {
        "model": {"value": "mobilenet_v3_small"}, "strategy": {"values": ["head_only", "last_k"]},
        "k_layers": {"value": 1},
        "lr": {"values": [0.01, 0.003]}, "input_size": {"value": 32}, "batch_size": {"value": 8},
        "augment": {"value": "none"}})
    scratch = sweep_yaml(tmp_path / "tune_scratch.yaml", "tune-scratch", {
        "model": {"value": "scratch_cnn"}, "lr": {"values": [0.01, 0.003]}, "input_size": {"value": 32},
        "batch_size": {"value": 16},
        "augment": {"value": "none"}, **TINY_SCRATCH})
    final = {"config": {"values": [str(recipes / "mobilenet_v3_small.yaml"), str(recipes / "scratch_cnn.yaml")]},
             "seed": {"values": [100, 101]}, "split_seed": {"values": [1, 2]}, "stage": {"value": "compare"}}
    compare = sweep_yaml(tmp_path / "compare.yaml", "compare", final, "grid")
    protocol = tmp_path / "protocol.yaml"
    protocol.write_text(yaml.safe_dump({
        "name": "fair", "tune": {"trials_per_arm": 2, "seed": 0, "split_seed": 0,
                                 "arms": {"mobilenet_v3_small": str(backbone), "scratch_cnn": str(scratch)}},
        "budget": {"pretrained": {"epochs": 2, "patience": 1}, "from_scratch": {"epochs": 3, "patience": 2}},
        "compare": str(compare), "recipes_dir": str(recipes)}))
    return protocol


@pytest.fixture
def imagenet_stand_in(tmp_path, monkeypatch):
    """MobileNetV3-Small's ImageNet file in an empty torch hub cache (random values:
    nothing is downloaded here). The hub loads a cached file without checking it, so
    trials in subprocesses fine-tune from it as from ImageNet weights."""
    import torchvision.models as tvm

    home = tmp_path / "torch_home"
    (home / "hub" / "checkpoints").mkdir(parents=True)
    member = tvm.MobileNet_V3_Small_Weights.IMAGENET1K_V1
    torch.manual_seed(0)
    torch.save(tvm.mobilenet_v3_small(weights=None).state_dict(), home / "hub" / "checkpoints" / Path(member.url).name)
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def test_a_protocol_file_is_read_with_its_budgets_and_arms(protocol_files):
    protocol = P.load_protocol(protocol_files)
    assert [a.model for a in protocol.arms] == ["mobilenet_v3_small", "scratch_cnn"]
    # random init: the larger budget
    assert [protocol.budget(a) for a in protocol.arms] == [P.Budget(2, 1), P.Budget(3, 2)]
    fixed = P.tune_fixed(protocol, protocol.arms[1], {"data_dir": "d"})
    assert fixed == {"data_dir": "d", "model": "scratch_cnn", "epochs": "3", "patience": "2", "seed": "0",
                     "split_seed": "0", "stage": "tune"}
    default = P.load_protocol(P.PROTOCOL_FILE)  # the repository's own protocol reads, and its compare.yaml is fair
    assert {a.model for a in default.arms} >= {"resnet50", "scratch_cnn"}
    assert P.final_problems(default, default.compare, {0}, "compare") == []
    assert P.final_problems(default, default.curve, {0}, "curve") == []
    tiny = P.load_protocol("sweeps/tiny/protocol.yaml")  # the one to try first: two arms, 4 trials each, at 160 px
    assert [a.model for a in tiny.arms] == ["mobilenet_v3_small", "scratch_cnn"] and tiny.trials_per_arm == 4
    assert P.final_problems(tiny, tiny.compare, {0}, "compare") == [] and tiny.curve is None


@pytest.mark.parametrize("change, message", [
    (lambda d: d["tune"].pop("trials_per_arm"), "tune.trials_per_arm must be a int"),
    (lambda d: d["tune"]["arms"].update(resnet05="x.yaml"), "unknown model 'resnet05'"),
    (lambda d: d["budget"].pop("from_scratch"), "budget.from_scratch must be a dict"),
    (lambda d: d["tune"].update(trials_per_arm=0), "trials_per_arm=0 must be at least 1"),
])
def test_a_protocol_file_mistake_is_one_line(protocol_files, change, message):
    data = yaml.safe_load(protocol_files.read_text())
    change(data)
    protocol_files.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match=message) as caught:
        P.load_protocol(protocol_files)
    assert "\n" not in str(caught.value)


def test_the_final_stage_refuses_tuning_seeds_one_split_and_a_missing_recipe(protocol_files, tmp_path):
    protocol = P.load_protocol(protocol_files)
    definition = yaml.safe_load(protocol.compare.read_text())
    definition["parameters"]["seed"] = {"values": [0, 100]}
    definition["parameters"]["split_seed"] = {"value": 1}
    definition["parameters"]["config"]["values"] = definition["parameters"]["config"]["values"][:1]
    protocol.compare.write_text(yaml.safe_dump(definition))
    problems = P.final_problems(protocol, protocol.compare, {0}, "compare")
    assert any("arm scratch_cnn has no recipe" in p for p in problems)
    assert any("seed(s) [0] that tuning used" in p for p in problems)
    assert any("lists 1 split_seed(s): list two or more" in p for p in problems)
    with pytest.raises(UserError, match="compare stage: "):
        P.run_final(protocol, "compare", tmp_path / "fair", 1, {})
    definition["parameters"]["split_seed"] = {"values": [0, 1]}  # 0: the split whose validation images chose
    protocol.compare.write_text(yaml.safe_dump(definition))
    assert any("lists split_seed 0, the split tuning selected on" in p
               for p in P.final_problems(protocol, protocol.compare, {0}, "compare"))


def test_a_compare_sweep_checked_or_run_outside_the_protocol_meets_the_same_refusals(protocol_files, tmp_path,
                                                                                     monkeypatch):
    """`agent.py check sweeps/compare.yaml` before `wandb sweep`, or `agent.py sweep sweeps/compare.yaml`: the
    protocol file that names it as its compare sweep refuses it as `agent.py protocol compare` would."""
    import agent
    from sweeper.local import check_sweep

    protocol = P.load_protocol(protocol_files)
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "protocol.yaml").write_text(protocol_files.read_text())  # the default protocol file
    monkeypatch.chdir(tmp_path)
    definition = yaml.safe_load(protocol.compare.read_text())
    for arm in protocol.arms:  # the recipes exist, as after `protocol recipes`
        protocol.recipe_path(arm).parent.mkdir(parents=True, exist_ok=True)
        protocol.recipe_path(arm).write_text(yaml.safe_dump({"model": arm.model, "input_size": 32}))
    assert "is fine" in check_sweep(protocol.compare)
    definition["parameters"]["seed"] = {"values": [0, 100]}  # 0: the tuning seed
    protocol.compare.write_text(yaml.safe_dump(definition))
    with pytest.raises(UserError, match=r"compare stage: .*seed\(s\) \[0\] that tuning used"):
        check_sweep(protocol.compare)
    assert agent.main(["sweep", str(protocol.compare), "--count", "1", "--sweep_dir", str(tmp_path / "plain")]) == 2
    assert not (tmp_path / "plain").exists()  # refused before anything was made
    elsewhere = tmp_path / "mine.yaml"  # a compare sweep of the user's own, which no protocol names: not checked
    elsewhere.write_text(protocol.compare.read_text())
    assert "is fine" in check_sweep(elsewhere)
    (tmp_path / "sweeps" / "protocol.yaml").unlink()  # a protocol.yaml beside the sweep names it (sweeps/tiny/)
    own = tmp_path / "exp"
    own.mkdir()
    (own / "compare.yaml").write_text(protocol.compare.read_text())
    (own / "protocol.yaml").write_text(protocol_files.read_text().replace(str(protocol.compare),
                                                                          str(own / "compare.yaml")))
    with pytest.raises(UserError, match=r"compare stage: .*seed\(s\) \[0\] that tuning used"):
        check_sweep(own / "compare.yaml")
    nameless = yaml.safe_load((own / "compare.yaml").read_text())  # named as its compare: checked, stage or none
    nameless["parameters"].pop("stage")
    (own / "compare.yaml").write_text(yaml.safe_dump(nameless))
    with pytest.raises(UserError, match=r"must fix stage: \{value: compare\}"):
        check_sweep(own / "compare.yaml")
    broken = yaml.safe_load((own / "protocol.yaml").read_text())  # a broken protocol that names another sweep
    broken["tune"]["trials_per_arm"] = 0
    broken["compare"] = str(tmp_path / "other.yaml")
    (own / "protocol.yaml").write_text(yaml.safe_dump(broken))
    (own / "mine.yaml").write_text(protocol.compare.read_text())
    assert "is fine" in check_sweep(own / "mine.yaml")  # a protocol judges only the sweeps it names


def test_the_wandb_tuning_sweeps_carry_the_arm_and_the_count_set_once(protocol_files):
    protocol = P.load_protocol(protocol_files)
    config = P.wandb_tune_config(protocol, protocol.arms[0], {}, "finetune-sweeps")
    assert (config["run_cap"], config["project"]) == (2, "finetune-sweeps")
    assert config["name"] == "fair-tune-mobilenet_v3_small"
    assert {k: config["parameters"][k] for k in ("model", "epochs", "patience", "seed", "stage")} == {
        "model": {"value": "mobilenet_v3_small"}, "epochs": {"value": 2}, "patience": {"value": 1},
        "seed": {"value": 0},
        "stage": {"value": "tune"}}


# --- the report's numbers, by hand -------------------------------------------------------------------

def write_run(runs: Path, run_id: str, config: dict, state: str = metrics.FINISHED, val: float = 0.5,
              test: float | None = None, epochs: tuple[int, int] = (2, 3), num_train: int = 30) -> None:
    folder = runs / run_id
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"epochs": 3, "patience": 2, "batch_size": 8, **config}))
    best, done = epochs
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "val_acc": val if e == best else val - 0.1,
                                                              "images_per_second": 100.0}) + "\n"
                                                  for e in range(1, done + 1)))
    summary = {metrics.STATE: state, metrics.BEST_VAL_ACC: val, metrics.BEST_EPOCH: best,
               metrics.EPOCHS_COMPLETED: done,
               "num_train": num_train, "classes": ["a", "b", "c"],
               metrics.WEIGHTS_VERSION: "none" if config["model"] == "scratch_cnn"
               else "MobileNet_V3_Small_Weights.IMAGENET1K_V1",
               metrics.SPLIT_HASH: f"split-{config.get('split_seed', 0)}"}
    if state != metrics.FINISHED:
        summary[metrics.REASON] = "train_loss is nan at epoch 2"
    (folder / "summary.json").write_text(json.dumps(summary))
    if test is not None:
        (folder / "test").mkdir()
        (folder / "test" / "test.json").write_text(
            json.dumps({"test_acc": test, "num_images": 100, "best_epoch": best}))


MOBILE = {"model": "mobilenet_v3_small", "strategy": "last_k", "k_layers": 1, "lr": 0.01, "input_size": 32}
SCRATCH = {"model": "scratch_cnn", "lr": 0.003, "input_size": 32, "filters": 8}


def crafted_protocol(root: Path) -> dict[str, list[float]]:
    """Tuning (validation only), then the compare stage on seeds 100/101 x split seeds 1/2, tested; one lost seed."""
    tests = {"mobilenet_v3_small": [0.80, 0.84, 0.78, 0.82], "scratch_cnn": [0.60, 0.66, 0.58]}
    for i, lr in enumerate((0.01, 0.003)):
        write_run(root / "tune" / "mobilenet_v3_small" / "runs", f"t-m{i}",
                  {**MOBILE, "lr": lr, "seed": 0, "stage": "tune"}, val=0.7 + i / 10)
        write_run(root / "tune" / "scratch_cnn" / "runs", f"t-s{i}", {**SCRATCH, "lr": lr, "seed": 0, "stage": "tune"},
                  val=0.5, epochs=(3, 3))
    write_run(root / "tune" / "scratch_cnn" / "runs", "t-s2", {**SCRATCH, "lr": 0.001, "seed": 0, "stage": "tune"},
              val=0.4)
    for folder in (root / "tune" / "mobilenet_v3_small", root / "tune" / "scratch_cnn", root / "compare"):
        folder.mkdir(parents=True, exist_ok=True)
        sweep_yaml(folder / "sweep.yaml", folder.name, {"lr": {"value": 0.01}})
    cells = [(seed, split) for seed in (100, 101) for split in (1, 2)]
    for arm, config in (("mobilenet_v3_small", MOBILE), ("scratch_cnn", SCRATCH)):
        for n, (seed, split) in enumerate(cells):
            lost = arm == "scratch_cnn" and n == 3
            write_run(root / "compare" / "runs", f"c-{arm[:5]}-{n}",
                      {**config, "seed": seed, "split_seed": split, "stage": "compare"},
                      state=metrics.DIVERGED if lost else metrics.FINISHED, test=None if lost else tests[arm][n])
    return tests


def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return float(np.mean(a) - np.mean(b)), float(stats.t.ppf(0.975, df) * math.sqrt(va + vb))


def test_the_report_aggregates_the_compare_stage_on_the_test_set_per_arm(tmp_path):
    tests = crafted_protocol(tmp_path / "fair")
    summary = summarise(load_table(str(tmp_path / "fair")))
    protocol = summary.protocol
    assert protocol.tuning_trials == {"mobilenet_v3_small": 2, "scratch_cnn": 3}
    assert protocol.short_arms == ["mobilenet_v3_small"]
    mobile, scratch = protocol.compare
    assert (mobile.arm, scratch.arm) == ("mobilenet_v3_small", "scratch_cnn") and mobile.metric == metrics.TEST_ACC
    # By hand: a Student t interval over the runs (seed x split
    # seed) that finished; the diverged one is n/k, not a value.
    values = tests["mobilenet_v3_small"]
    half = stats.t.ppf(0.975, 3) * np.std(values, ddof=1) / 2
    assert mobile.ci.mean == pytest.approx(np.mean(values)) and mobile.ci.half_width == pytest.approx(half)
    assert (len(scratch.runs), scratch.planned, [r.run_id for r in scratch.lost]) == (3, 4, ["c-scrat-3"])
    assert scratch.values == tests["scratch_cnn"] and mobile.splits == 2
    gap, half_gap = welch(values, tests["scratch_cnn"])
    assert protocol.gaps[0].difference == pytest.approx(gap)
    assert protocol.gaps[0].ci.half_width == pytest.approx(half_gap)
    text = render(summary, {}, {})
    headline = text[text.index("## 1."):text.index("## 2.")]
    assert "### Final comparison (compare stage)" in headline
    assert "evaluated **once** on the held-out test set" in headline
    assert f"| mobilenet_v3_small | {np.mean(values) * 100:.2f}% ± {half * 100:.2f}" in headline
    assert "| 3/4 | 2 | test | `c-scrat-3` (diverged" in headline
    assert f"**mobilenet_v3_small minus scratch_cnn: {gap * 100:+.2f} points**" in headline
    assert "### Tuning (tune stage, validation split: what the recipes were selected on)" in headline
    # Every seed of one recipe per arm was tested: that is no selection, and no warning says it is; nor are the split
    # seeds the compare stage varies on purpose "different splits" (each split seed has one).
    assert not any("evaluated on the test set" in w or "different data splits" in w
                   for w in summary.provenance.warnings)
    budgets = text[text.index("## 9."):]
    assert "| mobilenet_v3_small | 2 | at most 3 epochs, patience 2 | **fewer trials than another arm** |" in budgets
    assert "**Still improving at their last epoch** (2 finished run(s)): `t-s0`" in budgets


def test_recipes_carry_every_value_the_winner_trained_with(tmp_path, protocol_files):
    protocol = P.load_protocol(protocol_files)
    root = tmp_path / "fair"
    crafted_protocol(root)
    # The scratch arm's winner ran out of memory once and trained at half its batch size: the recipe says 8, not 16.
    summary = json.loads((root / "tune" / "scratch_cnn" / "runs" / "t-s0" / "summary.json").read_text())
    (root / "tune" / "scratch_cnn" / "runs" / "t-s0" / "summary.json").write_text(
        json.dumps({**summary, metrics.BEST_VAL_ACC: 0.9, "batch_size": 4}))
    written = P.write_recipes(protocol, root)
    mobile, scratch = (yaml.safe_load(path.read_text()) for path in written)
    # t-m1, the better val_acc
    assert mobile["lr"] == 0.003 and mobile["input_size"] == 32 and mobile["batch_size"] == 8
    assert scratch["batch_size"] == 4 and scratch["input_size"] == 32 and scratch["filters"] == 8
    assert not {"seed", "split_seed", "stage", "data_dir"} & (set(mobile) | set(scratch))
    assert "run t-m1, best val_acc 0.8000" in written[0].read_text()
    for run in (root / "tune" / "scratch_cnn" / "runs").iterdir():  # an arm with no finished trial stops the stage
        (run / "summary.json").write_text(json.dumps({metrics.STATE: metrics.FAILED}))
    with pytest.raises(UserError, match="arm scratch_cnn has no finished tuning trial"):
        P.write_recipes(protocol, root)


def test_recipes_from_wandb_name_an_unreachable_sweep_in_one_line(tmp_path, protocol_files, monkeypatch):
    protocol = P.load_protocol(protocol_files)
    (tmp_path / "fair").mkdir()
    with pytest.raises(UserError, match="has no W&B tuning sweep"):
        P.write_recipes(protocol, tmp_path / "fair", wandb=True)
    (tmp_path / "fair" / P.WANDB_FILE).write_text(
        json.dumps({"mobilenet_v3_small": "me/proj/gone123", "scratch_cnn": "me/proj/x"}))
    import wandb

    class Unreachable:
        def __init__(self, *args, **kwargs):
            pass

        def sweep(self, path):
            raise ValueError(f"Could not find sweep {path}")

    monkeypatch.setattr(wandb, "Api", Unreachable)
    with pytest.raises(UserError, match="cannot read W&B sweep me/proj/gone123") as caught:
        P.write_recipes(protocol, tmp_path / "fair", wandb=True)
    assert "\n" not in str(caught.value)


# --- the data-efficiency curve ----------------------------------------------------------------------

def test_the_crossover_is_the_size_below_which_fine_tuning_wins_by_more_than_the_interval():
    def point(arm: str, start: str, size: float, values: list[float]) -> CurvePoint:
        from report.stats import mean_ci

        return CurvePoint(arm, start, size / 100, size, values, mean_ci(values), 0)

    points = [point("resnet50", "imagenet", 5, [0.60, 0.62, 0.61]),
              point("scratch_cnn", "scratch", 5, [0.30, 0.33, 0.31]),
              point("resnet50", "imagenet", 20, [0.70, 0.72, 0.71]),
              point("scratch_cnn", "scratch", 20, [0.55, 0.58, 0.56]),
              point("resnet50", "imagenet", 80, [0.80, 0.70, 0.90]),
              point("scratch_cnn", "scratch", 80, [0.79, 0.75, 0.83])]
    (crossover,) = crossovers(points)
    assert crossover.sizes == [5, 20, 80] and crossover.wins == [True, True, False] and crossover.below == 20
    assert crossover.line_at == 20
    assert "up to 20 images per class; from 80 on, the interval of the gap holds 0" in crossover.statement()
    assert Crossover("vit", [5, 20], [True, True], 20).statement().endswith(
        "at every size measured (up to 20 images per class)")
    assert "no size below which it always wins" in Crossover("vit", [5, 20], [False, True], None).statement()


def test_the_curve_stage_is_reported_with_its_points_and_plot(tmp_path):
    root = tmp_path / "fair"
    (root / "curve").mkdir(parents=True)
    sweep_yaml(root / "curve" / "sweep.yaml", "curve", {"lr": {"value": 0.01}})
    rng = np.random.default_rng(0)
    for fraction, per_class in ((0.1, 10), (1.0, 100)):
        for seed in (100, 101, 102):
            for arm, config, level in (("m", MOBILE, 0.8), ("s", SCRATCH, 0.4 + fraction * 0.4)):
                write_run(root / "curve" / "runs", f"{arm}-{fraction}-{seed}", {**config, "seed": seed, "split_seed": 1,
                                                                                "subset_fraction": fraction,
                                                                                "stage": "curve"},
                          test=level + rng.normal(0, 0.01), num_train=per_class * 3)
    from report.build import build_report

    report = build_report(str(root), tmp_path / "out")
    text = report.read_text()
    curve = text[text.index("## 10."):]
    assert "| mobilenet_v3_small | 0.1 | 10 |" in curve and "| scratch_cnn | 1 | 100 |" in curve
    assert "mobilenet_v3_small beats the scratch CNN by more than the 95% interval up to 10 images per class" in curve
    assert (tmp_path / "out" / "data_efficiency.png").stat().st_size > 1000 and "](data_efficiency.png)" in curve


# --- end to end ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_whole_protocol_end_to_end(protocol_files, imagenet_stand_in, nature_dir, tmp_path, monkeypatch, capsys):
    """Tune both arms with the same count, write the recipes, compare them on fresh seeds and two split seeds, test
    every final run once, and report: the numbers recomputed by hand from the runs' own test results."""
    import agent

    monkeypatch.chdir(tmp_path)
    common = [f"--data_dir={nature_dir}", f"--cache_dir={tmp_path / 'cache'}", "--num_workers=0",
              "--wandb_mode=disabled"]
    folder = ["--protocol_dir", str(tmp_path / "fair")]
    assert agent.main(["protocol", "tune", str(protocol_files), *folder, "--workers", "2", *common]) == 0
    table = load_table(str(tmp_path / "fair"))
    tune = [r for r in table.records if r.config.get("stage") == "tune"]
    assert sorted((r.model, r.config["seed"], r.config["epochs"]) for r in tune) == [
        ("mobilenet_v3_small", 0, 2), ("mobilenet_v3_small", 0, 2), ("scratch_cnn", 0, 3), ("scratch_cnn", 0, 3)]
    assert agent.main(["protocol", "recipes", str(protocol_files), *folder]) == 0
    assert agent.main(["protocol", "compare", str(protocol_files), *folder, "--workers", "2", *common]) == 0
    assert agent.main(["protocol", "test", str(protocol_files), *folder, f"--data_dir={nature_dir}"]) == 0
    summary = summarise(load_table(str(tmp_path / "fair")))
    final = [r for r in summary.table.records if r.config.get("stage") == "compare"]
    assert len(final) == 8 and {r.config["seed"] for r in final} == {100, 101}
    assert {r.config["split_seed"] for r in final} == {1, 2}
    assert all(r.test_acc is not None for r in final if r.is_complete)
    recipe = yaml.safe_load((tmp_path / "compare" / "scratch_cnn.yaml").read_text())
    assert all(r.config["batch_size"] == recipe["batch_size"] == 16 for r in final if r.model == "scratch_cnn")
    by_arm = {a.arm: a for a in summary.protocol.compare}
    for arm in ("mobilenet_v3_small", "scratch_cnn"):
        values = sorted(r.test_acc for r in final if r.model == arm and r.is_complete)
        assert sorted(by_arm[arm].values) == values and by_arm[arm].ci.mean == pytest.approx(np.mean(values))
    assert summary.protocol.tuning_trials == {"mobilenet_v3_small": 2, "scratch_cnn": 2}
    assert not summary.protocol.short_arms
    assert by_arm["mobilenet_v3_small"].start == "imagenet"  # the cached ImageNet file: fine-tuned, not a warm start
    text = render(summary, {}, {})
    assert "### Final comparison (compare stage)" in text and "mobilenet_v3_small minus scratch_cnn" in text
    capsys.readouterr()
    assert agent.main(["protocol", "test", str(protocol_files), *folder, f"--data_dir={nature_dir}"]) == 0
    assert "nothing to test" in capsys.readouterr().out  # the test set is read once per final run


def test_recipes_are_written_from_the_wandb_tuning_sweeps_faked_at_the_network(tmp_path, protocol_files, monkeypatch):
    """The W&B side of stage 2a: each arm's tuning sweep read through wandb's own public API (faked only where it hands
    requests to the network), its best finished trial written as the recipe, batch size and resolution included."""
    pytest.importorskip("wandb")
    from wandb.apis.public.service_api import ServiceApi

    from report_helpers import FakeWandbServer

    def run(model: str, lr: float, best: float, state: str = "finished", **config) -> tuple:
        config = {**(MOBILE if model == "mobilenet_v3_small" else SCRATCH), "lr": lr, "seed": 0, "split_seed": 0,
                  "stage": "tune", "epochs": 3, "patience": 2, "batch_size": 8, **config}
        summary = {metrics.STATE: state if state != "crashed" else metrics.RUNNING, metrics.BEST_VAL_ACC: best,
                   metrics.BEST_EPOCH: 2,
                   metrics.EPOCHS_COMPLETED: 3,
                   metrics.EPOCH_HISTORY: [{"epoch": 1, "val_acc": best - 0.1}, {"epoch": 2, "val_acc": best}]}
        return (state, {**config, "effective": config}, summary)

    server = FakeWandbServer({"m1": run("mobilenet_v3_small", 0.01, 0.70),
                              "m2": run("mobilenet_v3_small", 0.003, 0.78, input_size=64),
                              "m3": run("mobilenet_v3_small", 0.1, 0.95, "crashed"),  # never finished: not a recipe
                              "s1": run("scratch_cnn", 0.003, 0.55, batch_size=32)})
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setattr(ServiceApi, "send_api_request", lambda self, request,
                        timeout=None: server.send_api_request(self, request, timeout))
    monkeypatch.setattr(ServiceApi, "finalize", lambda self, obj, cleanup: (lambda: None))
    protocol = P.load_protocol(protocol_files)
    (tmp_path / "fair").mkdir()
    (tmp_path / "fair" / P.WANDB_FILE).write_text(
        json.dumps({"mobilenet_v3_small": "team/project/abc123", "scratch_cnn": "team/project/abc123"}))
    mobile, scratch = (yaml.safe_load(path.read_text())
                       for path in P.write_recipes(protocol, tmp_path / "fair", wandb=True))
    assert (mobile["lr"], mobile["input_size"], mobile["batch_size"]) == (0.003, 64, 8)
    assert (scratch["lr"], scratch["batch_size"], scratch["model"]) == (0.003, 32, "scratch_cnn")
    assert "stage" not in mobile and "seed" not in scratch


# --- what the review of the protocol's report found ---------------------------------------------------

def test_final_stage_runs_never_enter_the_tuning_sections(tmp_path):
    """A lucky compare run is no tuning trial: the tuning headline,
    the leaderboard and the groups hold the tune stage."""
    root = tmp_path / "fair"
    crafted_protocol(root)
    summary = json.loads((root / "compare" / "runs" / "c-mobil-0" / "summary.json").read_text())
    (root / "compare" / "runs" / "c-mobil-0" / "summary.json").write_text(
        json.dumps({**summary, metrics.BEST_VAL_ACC: 0.99}))
    report = summarise(load_table(str(root)))
    assert report.best_fine_tuned.run_id == "t-m1" and {r.config["stage"] for r in report.leaderboard} == {"tune"}
    assert all(r.config["stage"] == "tune" for g in report.groups for r in report.successful
               if r.model_label == g.model)
    assert sum(g.stats.count for g in report.groups) == 5  # the 5 tuning runs, none of the 8 final ones


def test_no_gap_between_a_tested_arm_and_one_on_validation(tmp_path):
    root = tmp_path / "fair"
    crafted_protocol(root)
    (root / "compare" / "runs" / "c-scrat-0" / "test" / "test.json").unlink()  # one scratch run not tested yet
    report = summarise(load_table(str(root)))
    assert [a.metric for a in report.protocol.compare] == [metrics.TEST_ACC, f"best {metrics.VAL_ACC}"]
    assert report.protocol.gaps == []
    text = render(report, {}, {})
    final = text[text.index("### Final comparison"):text.index("### Tuning")]
    assert "Not every arm is tested yet" in final
    assert "minus scratch_cnn" not in final and "evaluated **once**" not in final


def test_a_preempted_or_running_final_run_is_in_its_arms_n_over_k(tmp_path):
    root = tmp_path / "fair"
    crafted_protocol(root)
    summary = json.loads((root / "compare" / "runs" / "c-mobil-3" / "summary.json").read_text())
    (root / "compare" / "runs" / "c-mobil-3" / "summary.json").write_text(
        json.dumps({**summary, metrics.STATE: metrics.PREEMPTED}))
    mobile = next(a for a in summarise(load_table(str(root))).protocol.compare if a.arm == "mobilenet_v3_small")
    assert (len(mobile.runs), mobile.planned, [r.run_id for r in mobile.unfinished]) == (3, 4, ["c-mobil-3"])
    assert "| 3/4 |" in render(summarise(load_table(str(root))), {}, {})


def test_a_seed_lost_after_an_out_of_memory_retry_counts_against_the_config_it_was_asked_as(tmp_path):
    """The retry trained (and failed) at half the batch: the lost seed still marks the batch-32 config unstable."""
    runs = tmp_path / "runs"
    for seed in (0, 1):
        write_run(runs, f"ok{seed}", {**MOBILE, "seed": seed, "batch_size": 32}, val=0.8)
    write_run(runs, "lost", {**MOBILE, "seed": 2, "batch_size": 32}, state=metrics.OOM)
    summary = json.loads((runs / "lost" / "summary.json").read_text())
    (runs / "lost" / "summary.json").write_text(json.dumps({**summary, "batch_size": 16}))
    report = summarise(load_table(str(runs)))
    assert report.seeds_fine_tuned is None and [r.run_id for g in report.ineligible for r in g.lost] == ["lost"]


def test_wins_that_are_no_prefix_of_the_sizes_state_no_single_crossover():
    statement = Crossover("resnet50", [5, 20, 80], [True, False, True], 5).statement()
    assert "at 5, 80 images per class but not at 20: no size below which it always wins" in statement
    assert "from 20 on" not in statement
    assert "at no size measured" in Crossover("vit", [5, 20], [False, False], None).statement()
    assert "no size below which it always wins" in Crossover("vit", [5, 20], [False, True], None).statement()


def test_the_final_stage_refuses_a_fixed_seed_or_too_few_seeds(protocol_files, tmp_path):
    protocol = P.load_protocol(protocol_files)
    definition = yaml.safe_load(protocol.compare.read_text())
    definition["parameters"]["seed"] = {"value": 100}
    protocol.compare.write_text(yaml.safe_dump(definition))
    assert any("lists 1 seed(s): list two or more" in p
               for p in P.final_problems(protocol, protocol.compare, {0}, "compare"))
    with pytest.raises(UserError, match="--seed would override the compare sweep's own seeds"):
        P.run_final(protocol, "compare", tmp_path / "fair", 1, {"seed": "0"})


@pytest.mark.parametrize("change, message", [
    (lambda d: d["tune"].update(seed="abc"), "tune.seed must be a int"),
    (lambda d: d["tune"].update(split_seed=2**40), "tune.split_seed=1099511627776 is out of range"),
    (lambda d: d.update(recipes_dir=5), "recipes_dir must be a str"),
    (lambda d: d.update(curve=5), "curve must be a str"),
])
def test_more_protocol_file_mistakes_are_one_line(protocol_files, change, message):
    data = yaml.safe_load(protocol_files.read_text())
    change(data)
    protocol_files.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match=message):
        P.load_protocol(protocol_files)


def test_a_recipe_leaves_out_what_normalisation_derives(tmp_path, protocol_files):
    """eval_size equal to input_size, InceptionV3's aux loss switched off below 299 px: written into a recipe, they
    would stay behind when its input_size is changed or swept on top of it."""
    derived = {"model": "inception_v3", "input_size": 224, "eval_size": 224, "aux_loss_weight": 0.0, "lr": 0.01}
    assert P._without_derived(derived) == {"model": "inception_v3", "input_size": 224, "lr": 0.01}
    kept = P._without_derived({"model": "resnet50", "input_size": 224, "eval_size": 288, "lr": 0.01})
    assert kept["eval_size"] == 288  # FixRes: a value of its own


# --- the second review of the protocol's report: nothing hidden in n/k, the crossover or an interval --------------

def final_section(text: str) -> str:
    return text[text.index("### Final comparison"):text.index("### Tuning")]


def edit_summary(root: Path, run_id: str, **values) -> None:
    path = root / "compare" / "runs" / run_id / "summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))


def test_a_final_run_whose_best_epoch_was_its_last_is_flagged_as_a_lower_bound(tmp_path):
    root = tmp_path / "fair"
    crafted_protocol(root)
    edit_summary(root, "c-mobil-0", **{metrics.BEST_EPOCH: 3, metrics.EPOCHS_COMPLETED: 3})
    report = summarise(load_table(str(root)))
    assert [r.run_id for a in report.protocol.compare for r in a.still_improving] == ["c-mobil-0"]
    assert "Still improving at their last epoch: 1 final run(s)** (`c-mobil-0`)" in final_section(
        render(report, {}, {}))


def test_an_arm_whose_counted_runs_miss_a_split_says_so_and_the_gap_gives_both_sides_n_over_k(tmp_path):
    root = tmp_path / "fair"
    crafted_protocol(root)  # scratch lost seed 101 on split 2; now seed 100 on split 2 too
    edit_summary(root, "c-scrat-1", **{metrics.STATE: metrics.DIVERGED, metrics.REASON: "loss nan"})
    report = summarise(load_table(str(root)))
    mobile, scratch = report.protocol.compare
    assert (mobile.splits, mobile.planned_splits, scratch.splits, scratch.planned_splits) == (2, 2, 1, 2)
    final = final_section(render(report, {}, {}))
    assert "| scratch_cnn | " in final and "| 2/4 | 1 of 2 | test |" in final
    assert "scratch_cnn's counted runs cover 1 of its 2 split seeds" in final
    assert "; 4/4 vs 2/4 runs)" in final  # the gap line carries both sides' n/k
    assert not report.protocol.single_split  # two split seeds were planned: the per-arm warning is the one to give


def test_cells_of_the_compare_grid_never_run_count_in_n_over_k_and_are_named(tmp_path):
    root = tmp_path / "fair"
    crafted_protocol(root)
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    for name, values in (("mobile", MOBILE), ("scratch", SCRATCH), ("resnet", {"model": "resnet18"})):
        (recipes / f"{name}.yaml").write_text(yaml.safe_dump(values))
    sweep_yaml(root / "compare" / "sweep.yaml", "compare", {
        "config": {"values": [str(recipes / f"{n}.yaml") for n in ("mobile", "scratch", "resnet")]},
        "seed": {"values": [100, 101, 102]}, "split_seed": {"values": [1, 2]}, "stage": {"value": "compare"}}, "grid")
    report = summarise(load_table(str(root)))
    mobile, scratch = report.protocol.compare
    assert report.protocol.grid_known and (len(mobile.runs), mobile.planned) == (4, 6)
    assert mobile.missing == ["seed 102, split_seed 1", "seed 102, split_seed 2"] and scratch.planned == 6
    assert report.protocol.absent_recipes == 1  # three recipes listed, two arms ran
    final = final_section(render(report, {}, {}))
    assert "| 4/6 |" in final and "never run: seed 102, split_seed 1; seed 102, split_seed 2" in final
    assert "No run at all of 1 recipe(s) of the compare grid**: it lists 3, and 2 arm(s) have runs here" in final
    assert "is the runs this source holds" not in final
    import shutil

    shutil.copytree(root, tmp_path / "second")  # a folder of two protocols: whose grid is whose is not known
    both = summarise(load_table(str(tmp_path)))
    assert not both.protocol.grid_known and all(not arm.missing for arm in both.protocol.compare)
    sweep_yaml(root / "compare" / "sweep.yaml", "compare", {"lr": {"value": 0.01}})  # no grid: n/k says what it counts
    assert "*planned* is the runs this source holds" in final_section(render(summarise(load_table(str(root))), {}, {}))


def test_an_arm_without_a_finished_run_has_no_result_and_no_gap_with_the_reason(tmp_path):
    root = tmp_path / "fair"
    crafted_protocol(root)
    for n in range(3):
        edit_summary(root, f"c-scrat-{n}", **{metrics.STATE: metrics.DIVERGED, metrics.REASON: "loss nan"})
    report = summarise(load_table(str(root)))
    scratch = report.protocol.compare[-1]
    assert scratch.metric is None and scratch.values == [] and report.protocol.gaps == []
    final = final_section(render(report, {}, {}))
    assert "| scratch_cnn | **no result** | 0/4 |" in final
    assert "**No gap**: scratch_cnn has no finished compare run (4 lost, 0 not finished)" in final
    assert "Not every arm is tested yet" not in final and "evaluated **once**" in final


def test_the_opening_line_counts_each_stage_and_says_where_the_final_numbers_are_from(tmp_path):
    root = tmp_path / "fair"
    crafted_protocol(root)
    text = render(summarise(load_table(str(root))), {}, {})
    assert text.splitlines()[2].startswith(
        "13 runs (tune 5, compare 8), 12 successful (5 outside the final stages); the final comparison")


def test_the_test_sets_own_sampling_error_is_stated_beside_the_intervals(tmp_path):
    tests = crafted_protocol(tmp_path / "fair")
    final = final_section(render(summarise(load_table(str(tmp_path / "fair"))), {}, {}))
    accuracy = np.mean(tests["mobilenet_v3_small"] + tests["scratch_cnn"])  # 5.08 / 7 = 0.7257
    margin = 1.96 * math.sqrt(accuracy * (1 - accuracy) / 100) * 100  # 100 test images: 8.7 points
    assert "one fixed test set of 100 images" in final and f"about ±{margin:.1f} points at 73%" in final


def test_equal_runs_give_no_interval_and_no_claim():
    from report.markdown import ci_text, difference_ci_text
    from report.stats import difference_ci, mean_ci

    gap = difference_ci([0.80] * 4, [0.79] * 4)
    assert gap.no_spread and not gap.excludes_zero and "no spread, so no interval" in difference_ci_text(gap)
    assert "all 3 runs equal: no spread, so no interval" in ci_text(mean_ci([0.7] * 3))
    assert not difference_ci([0.80, 0.81], [0.79, 0.79]).no_spread  # spread on one side is enough for an interval


def test_a_curve_size_the_gap_cannot_be_judged_at_is_undetermined_never_skipped():
    def point(arm: str, start: str, size: float, values: list[float]) -> CurvePoint:
        from report.stats import mean_ci

        return CurvePoint(arm, start, size / 100, size, values, mean_ci(values), 0)

    points = [point("resnet50", "imagenet", 5, [0.60, 0.62, 0.61]), point("scratch_cnn", "scratch", 5, [0.30, 0.33]),
              point("resnet50", "imagenet", 50, [0.70, 0.72, 0.71]), point("scratch_cnn", "scratch", 50, [0.80]),
              point("resnet50", "imagenet", 100, [0.90, 0.92]), point("scratch_cnn", "scratch", 100, [0.50, 0.52])]
    (crossover,) = crossovers(points)
    assert crossover.sizes == [5, 50, 100] and crossover.wins == [True, None, True] and crossover.below == 5
    assert crossover.line_at is None  # no crossover for the plot to draw where the text claims none
    statement = crossover.statement()
    assert "at every size measured" not in statement and "undetermined at 50 images per class" in statement
    assert "at every size where the gap has an interval (up to 100 images per class)" in statement
    no_scratch = crossovers([point("resnet50", "imagenet", 5, [0.6, 0.7])])[0]  # no scratch point at all
    assert no_scratch.wins == [None] and "no data size where both" in no_scratch.statement()
    flat = crossovers([point("vit", "imagenet", 5, [0.6] * 3), point("scratch_cnn", "scratch", 5, [0.3] * 3)])[0]
    assert flat.wins == [None]  # no spread: no interval to judge by


def test_protocol_test_reads_run_folders_only_never_wandbs_own_folder_beside_them(protocol_files, tmp_path, capsys):
    crafted_protocol(tmp_path / "fair")
    (tmp_path / "fair" / "compare" / "runs" / "wandb" / "offline-run-1").mkdir(parents=True)  # W&B offline sync files
    P.run_tests(P.load_protocol(protocol_files), tmp_path / "fair", None, "cpu")
    out = capsys.readouterr().out
    assert "compare run c-scrat-3: not tested (diverged" in out and "run wandb" not in out


def test_the_protocols_own_compare_stage_judges_seeds_by_its_own_folder_not_the_default_one(protocol_files, tmp_path,
                                                                                          monkeypatch):
    """`protocol compare --protocol_dir=NEW` beside an old experiment in the default folder whose tuning used seed
    100: NEW's tuning did not, so its compare stage runs (it used to be refused by a second check of the default)."""
    import sweeper.local

    protocol = P.load_protocol(protocol_files)
    for arm in protocol.arms:
        protocol.recipe_path(arm).parent.mkdir(parents=True, exist_ok=True)
        protocol.recipe_path(arm).write_text(yaml.safe_dump({"model": arm.model, "input_size": 32}))
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path / "sweep_runs" / "fair" / "tune" / "old" / "runs", "t-old", {**MOBILE, "seed": 100})
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "protocol.yaml").write_text(protocol_files.read_text())

    class Reached(Exception):
        pass

    def reached(*args, **kwargs):
        raise Reached

    monkeypatch.setattr(sweeper.local, "prepare_dataset", reached)  # past every check: the sweep would start here
    with pytest.raises(Reached):
        P.run_final(protocol, "compare", tmp_path / "new", 1, {})
    with pytest.raises(UserError, match=r"seed\(s\) \[100\] that tuning used"):  # the default folder's own stage
        P.run_final(protocol, "compare", None, 1, {})
