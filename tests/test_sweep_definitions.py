"""Sweep definitions: every sweeps/*.yaml passes W&B's schema and speaks the run config; a mistake in a
definition, a recipe file or a fixed argument is named in one line before the first trial, and `agent.py check`
names them all; a sweep folder pins the definition it was started with."""

from __future__ import annotations

import pytest
import sweeps
import yaml

from common.errors import UserError
from sweep_helpers import ROOT, tiny_definition, write_yaml
from sweeper import engine, run_local_sweep
from sweeper.definition import RECIPE, definition_problems, load_definition, unrunnable_values
from sweeper.table import Trial
from trainer import metrics as M
from trainer.config import FIELDS, load_yaml_values, parse_run_config

# the protocol files are no sweeps; sweeps/tiny/ is the small protocol's own folder
YAMLS = sorted(p for pattern in ("*.yaml", "tiny/*.yaml") for p in (ROOT / "sweeps").glob(pattern)
               if p.name != "protocol.yaml")


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_sweep_yaml_passes_the_wandb_schema(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # recipe files are named relative to the folder a sweep runs from
    config = yaml.safe_load(path.read_text())
    assert sweeps.schema_violations_from_proposed_config(config) == []
    assert definition_problems(config) == []


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_sweep_yaml_speaks_the_run_config(path):
    config = yaml.safe_load(path.read_text())
    assert config["metric"]["name"] == M.VAL_ACC
    assert config["program"] == "agent.py" and "${args}" in config.get("command", ["${args}"])
    # the protocol's final stage: splits vary on purpose
    if config["parameters"].get("stage", {}).get("value") == "compare":
        assert len(config["parameters"]["split_seed"]["values"]) >= 2
    else:
        assert "value" in config["parameters"]["split_seed"]  # one split for every trial of a sweep
    for name, spec in config["parameters"].items():
        if name == RECIPE:  # files of fixed values, one recipe each: every one trains
            recipes = [load_yaml_values(ROOT / value) for value in spec["values"]]
            assert all(parse_run_config(recipe).model == recipe["model"] for recipe in recipes)
            assert not set().union(*recipes) & set(config["parameters"]), (
                "a value fixed in the sweep would override the recipes'")
            continue
        assert name in FIELDS, name
        values = spec.get("values", [spec["value"]] if "value" in spec else [spec.get("min"), spec.get("max")])
        for value in values:
            # A YAML boolean is one the engine can confuse with 0/1 or index 0: booleans are written as strings.
            assert not isinstance(value, bool), f"{path.name}: {name} value {value!r} must be the string 'true'/'false'"
            parse_run_config({name: value})  # a typo (unknown model, activation) fails here, not in trial 17


@pytest.mark.parametrize("bounds, named, hint, fixed", [
    ("min: 1e-5, max: 1.0e-2", "min: 1e-5", "1.0e-5", ("1e-5", "1.0e-5")),  # 1.0e-2 is a number already
    ("min: 1.0e-5, max: 1e0", "max: 1e0", "1.0e+0", ("1e0", "1.0e+0")),  # 1.0e0 would be a string too: signed
])
def test_an_exponent_yaml_reads_as_a_string_is_named_with_a_spelling_it_reads_as_a_number(bounds, named, hint, fixed,
                                                                                          tmp_path):
    """`min: 1e-5` is a string to YAML 1.1 (no dot, or no sign): the schema's own message would not say why."""
    path = tmp_path / "lr.yaml"
    path.write_text("method: bayes\nmetric: {name: val_acc, goal: maximize}\n"
                    f"parameters:\n  lr: {{distribution: log_uniform_values, {bounds}}}\n")
    with pytest.raises(UserError) as caught:
        load_definition(path)
    message = str(caught.value)
    assert message.startswith(f"sweep file {path}: parameter 'lr' has {named}, which YAML reads as a string")
    assert f"e.g. {hint}" in message and message.count("which YAML reads as a string") == 1
    path.write_text(path.read_text().replace(*fixed))
    assert isinstance(load_definition(path).parameters["lr"][named.split(":")[0]], float)


def test_definition_problems_name_the_mistake(tmp_path):
    config = tiny_definition(lrr={"value": 0.1}, output_dir={"value": "x"})
    config["metric"] = {"name": "val_accuracy", "goal": "maximize"}
    problems = " | ".join(definition_problems(config))
    assert "'lrr'" in problems and "'lr'" in problems
    assert "output_dir" in problems and "set by the sweep driver" in problems
    assert "val_accuracy" in problems
    # every key W&B's schema knows is taken
    beta = tiny_definition(weight_decay={"distribution": "beta", "a": 2.0, "b": 5.0})
    assert definition_problems(beta) == []
    typos = {**tiny_definition(lr={"valuse": [0.1, 0.2]}), "method": "bayse"}
    problems = definition_problems(typos)
    assert problems[0] == "method 'bayse' is not one of grid, random, bayes (did you mean 'bayes'?)"
    assert "has the key 'valuse' (did you mean 'values'?)" in problems[1]  # swapped letters, not a dropped one
    assert not any("'bayse'" in problem for problem in problems[1:])  # the method is named once, with its fix
    with pytest.raises(UserError) as caught:  # the one-line error carries every problem, not "(and 1 more)"
        load_definition(write_yaml(tmp_path / "typos.yaml", typos))
    assert all(problem in str(caught.value) for problem in problems) and "\n" not in str(caught.value)


def test_a_sweep_file_that_is_not_yaml_says_where(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("method: grid\nparameters:\n  lr: {values: [0.1, 0.2}\n")
    with pytest.raises(UserError,
                       match=r"broken.yaml is not valid YAML: line 3, column 25: expected ',' or '\]', but got '}'$"):
        load_definition(broken)


@pytest.mark.parametrize("parameter, named", [
    ({"epochs": {"valeu": 2}}, "parameter 'epochs' has the key 'valeu' (did you mean 'value'?)"),
    ({"activation": {"value": "swish"}}, "parameter 'activation': activation='swish' is not one of"),
    ({"activation": {"values": ["relu", "gelu", "swish"]}}, "'swish' is not one of"),
    ({"dropout": {"distribution": "uniform", "min": 0.0, "max": 1.5}},
     "parameter 'dropout': dropout=1.5 is out of range"),
    ({"weight_decay": {"distribution": "log_uniform_values", "min": 1e-5, "max": 2.0}},
     "weight_decay=2.0 is out of range"),
])
def test_a_value_no_trial_could_run_is_refused_before_the_first_trial(tmp_path, parameter, named):
    with pytest.raises(UserError) as caught:
        load_definition(write_yaml(tmp_path / "s.yaml", tiny_definition(**parameter)))
    assert named in str(caught.value) and "\n" not in str(caught.value)


def test_a_listed_value_no_listed_model_can_train_with_is_refused_before_the_first_trial(tmp_path, fixed_args):
    pretrained = {"model": {"value": "resnet18"}, "strategy": {"values": ["head_only", "last_k"]},
                  "k_layers": {"values": [2, 7]}}
    sweep = write_yaml(tmp_path / "s.yaml", tiny_definition(**pretrained))
    with pytest.raises(
        UserError, match=r"parameter 'k_layers' lists 7, which no trial can train with: k_layers=7 but resnet18 has 5"):
        run_local_sweep(sweep, count=1, sweep_dir=tmp_path / "a", fixed=fixed_args)
    assert not (tmp_path / "a").exists()
    # A fixed --model counts too; a value that some listed model can train with is left to the search.
    from sweeper.definition import unrunnable_values

    searched = {"model": {"values": ["resnet18", "vit_b_16"]}, "strategy": {"value": "last_k"},
                "k_layers": {"values": [2, 7]}}
    assert unrunnable_values(searched, {}) == []
    assert "lists 7" in " ".join(unrunnable_values(searched, {"model": "resnet18"}))
    assert unrunnable_values({**pretrained, "k_layers": {"values": [2, 5]}}, {}) == []


def test_recipe_files_are_checked_before_the_first_trial(tmp_path):
    good = write_yaml(tmp_path / "good.yaml", {"model": "resnet18", "strategy": "last_k", "k_layers": 2})
    lost = tmp_path / "lost.yaml"
    problems = definition_problems(tiny_definition(**{RECIPE: {"values": [str(good), str(lost)]}}))
    assert problems == [
        f"parameter 'config': config file {lost} not found (a path relative to the folder the sweep runs from)"]
    assert "lists YAML files of fixed values" in definition_problems(
        tiny_definition(**{RECIPE: {"distribution": "uniform", "min": 0, "max": 1}}))[0]
    # a fixed --k_layers the recipe's model cannot take: named before any trial fails on it
    assert unrunnable_values({RECIPE: {"values": [str(good)]}}, {"k_layers": "7"})[0].startswith(
        f"recipe {good} cannot train: k_layers=7")
    assert unrunnable_values({RECIPE: {"values": [str(good)]}, "seed": {"values": [0, 1]}}, {}) == []


def test_fixed_arguments_are_checked_once(tmp_path, fixed_args):
    sweep = write_yaml(tmp_path / "s.yaml", tiny_definition())
    with pytest.raises(UserError, match="set by the sweep"):
        run_local_sweep(sweep, count=1, sweep_dir=tmp_path / "a", fixed={**fixed_args, "run_id": "x"})
    with pytest.raises(UserError, match="unknown parameter 'lrr'"):
        run_local_sweep(sweep, count=1, sweep_dir=tmp_path / "b", fixed={**fixed_args, "lrr": "0.1"})
    from sweeper.local import check_fixed

    assert check_fixed({"k_layers": "8"}) == {"k_layers": "8"}  # too many for resnet50, right for a ViT sweep
    with pytest.raises(UserError, match="k_layers"):
        check_fixed({"k_layers": "-1"})
    with pytest.raises(UserError, match="resnet50"):
        check_fixed({"model": "resnet5O"})
    with pytest.raises(UserError, match="last_k"):
        check_fixed({"strategy": "lastk"})


def test_a_sweep_folder_of_a_yaml_without_its_project_goes_on_with_the_yaml_that_names_it(tmp_path):
    from sweeper.definition import pin_definition

    today = tiny_definition()
    assert today["project"] == FIELDS["wandb_project"].metadata["default"]
    older = {k: v for k, v in today.items() if k != "project"}
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    assert pin_definition(sweep_dir, load_definition(write_yaml(tmp_path / "older.yaml", older)), bound=True) is False
    assert pin_definition(sweep_dir, load_definition(write_yaml(tmp_path / "tiny.yaml", today)), bound=True) is False
    with pytest.raises(UserError, match="different sweep"):  # the search itself still may not change
        pin_definition(sweep_dir, load_definition(write_yaml(tmp_path / "other.yaml", {**today, "method": "random"})),
                       bound=True)


def test_definitions_the_engine_would_misread_are_refused():
    base = {**tiny_definition(), "method": "bayes"}
    no_goal = {**base, "metric": {"name": M.VAL_ACC}}
    assert any("goal" in p and "maximize" in p for p in definition_problems(no_goal))
    assert any("goal is 'minimize'" in p
               for p in definition_problems({**base, "metric": {"name": M.VAL_ACC, "goal": "minimize"}}))
    booleans = {**base, "parameters": {**base["parameters"], "batch_norm": {"values": [True, False]}}}
    assert any("'batch_norm'" in p and "string" in p for p in definition_problems(booleans))
    zero_later = {**base, "parameters": {**base["parameters"], "dropout": {"values": [0.2, 0.0]}}}
    assert any("'dropout'" in p and "put it first" in p for p in definition_problems(zero_later))
    zero_first = {**base, "parameters": {**base["parameters"], "dropout": {"values": [0.0, 0.2]}}}
    assert definition_problems(zero_first) == []
    constant = {**base, "parameters": {**base["parameters"], "download": {"value": False}}}
    assert definition_problems(constant) == []  # never searched: nothing to misread
    assert definition_problems({**booleans, "method": "grid"}) == []  # only bayes models past values


def test_check_names_every_mistake_of_a_yaml_headed_for_wandb_sweep(tmp_path, capsys):
    """`wandb sweep` accepts a YAML whose metric the trainer never logs; `agent.py check` says so before any trial."""
    import agent

    bad = write_yaml(tmp_path / "mine.yaml", {**tiny_definition(k_layer={"values": [1, 2]}),
                                             "metric": {"name": "val_accuracy", "goal": "maximize"}})
    assert agent.main(["check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert ("'k_layer' is not a run parameter (did you mean 'k_layers'?)" in err
            and "metric name is 'val_accuracy'" in err)
    assert err.count("\n") == 1


def test_check_warns_of_frozen_stages_at_random_init_as_a_single_run_would(tmp_path, capsys):
    """Offline, `--weights=none` on a freezing sweep: each trial would train a head on random features. The check,
    an offline user's first stop, says so before any of them runs; with strategy full only, nothing to say."""
    import agent

    sweep = write_yaml(tmp_path / "freeze.yaml", {
        "name": "freeze", "method": "grid", "metric": {"name": "val_acc", "goal": "maximize"},
        "parameters": {"model": {"value": "resnet18"}, "strategy": {"values": ["head_only", "full"]},
                       "lr": {"value": 1e-3}}})
    assert agent.main(["check", str(sweep), "--weights=none"]) == 0
    out = capsys.readouterr().out
    assert "is fine" in out and "warning: weights=none with a frozen strategy (resnet18 head_only)" in out
    assert agent.main(["check", str(sweep)]) == 0 and "warning" not in capsys.readouterr().out  # ImageNet weights
    assert agent.main(["check", str(sweep), "--weights=none", "--strategy=full"]) == 0
    assert "warning" not in capsys.readouterr().out


def test_a_fixed_argument_takes_its_parameter_out_of_the_search(tmp_path):
    """--activation=gelu on a sweep that lists activations: the engine searches lr only, so --count N trains N
    distinct configs instead of suggesting activations every trial overrides (duplicates after the first)."""
    from sweeper.definition import engine_config

    definition = load_definition(write_yaml(tmp_path / "s.yaml", tiny_definition()))
    config = engine_config(definition, {"activation": "gelu"})
    assert config["parameters"]["activation"] == {"value": "gelu"}
    assert config["parameters"]["lr"] == definition.parameters["lr"]
    assert definition.parameters["activation"] == {"values": ["relu", "gelu"]}  # the pinned definition is untouched
    suggestions, runs = [], []
    while (suggestion := engine.suggest(config, runs)) is not None:
        suggestions.append(suggestion)
        runs.append(engine.sweep_run(Trial(f"t-{len(runs)}", M.FINISHED, {}, None, suggestion, best_val_acc=0.5), []))
    assert [(s["activation"], s["lr"]) for s in suggestions] == [("gelu", 1e-3), ("gelu", 1e-2)]


def test_a_fixed_argument_overrides_the_values_its_parameter_lists(tmp_path):
    """k_layers: [2, 7] under resnet18 is refused, but not with --k_layers=2: no trial would use the 7."""
    from sweeper.definition import unrunnable_values

    parameters = {"model": {"value": "resnet18"}, "strategy": {"value": "last_k"}, "k_layers": {"values": [2, 7]}}
    assert "lists 7" in " ".join(unrunnable_values(parameters, {}))
    assert unrunnable_values(parameters, {"k_layers": "2"}) == []


def test_a_sweep_folder_takes_its_definition_back_with_other_comments_and_layout(tmp_path):
    """Pinned as parsed YAML: a comment or reformatting does not make another sweep; a changed value does."""
    from sweeper.definition import SWEEP_FILE, pin_definition

    sweep_dir, config = tmp_path / "sweep", tiny_definition()
    sweep_dir.mkdir()
    assert pin_definition(sweep_dir, load_definition(write_yaml(tmp_path / "a.yaml", config))) is False
    pinned = (sweep_dir / SWEEP_FILE).read_text()
    reformatted = tmp_path / "b.yaml"
    reformatted.write_text(
        "# the same sweep, reformatted\n" + yaml.safe_dump(config, sort_keys=True, default_flow_style=True))
    assert pin_definition(sweep_dir, load_definition(reformatted)) is False
    assert (sweep_dir / SWEEP_FILE).read_text() == pinned
    changed = write_yaml(tmp_path / "c.yaml", tiny_definition(lr={"values": [1e-3, 1e-1]}))
    with pytest.raises(UserError, match="holds a different sweep"):
        pin_definition(sweep_dir, load_definition(changed))
