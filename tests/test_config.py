"""The run config: parsing, one-line errors, normalising equivalent values one way, the config hash, --help,
config files, and the config a resumed run is given."""

from __future__ import annotations

import re

import pytest
import yaml

from common.errors import UserError
from trainer import metrics as M
from trainer.config import FIELDS, config_hash, help_text, load_yaml_values, parse_cli, parse_run_config
from trainer.evaluate import evaluate_on_test_set
from trainer.run import run_training
from trainer_helpers import scratch


def test_options_a_run_has_no_use_for_are_named_with_the_reason(capsys):
    import agent

    config = agent.run_config_from_args(["--model=resnet18", "--filters=64", "--strategy=head_only", "--k_layers=2",
                                         "--lr=0.01", "--input_size=64"])
    assert config.filters is None and config.k_layers is None and config.input_size == 64  # every model's size
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "--filters (scratch_cnn only)" in out
    assert "--k_layers (strategy head_only does not use it)" in out and "--lr" not in out and "input_size" not in out
    agent.run_config_from_args(["--model=scratch_cnn", "--input_size=64", "--lr=0.01"])
    assert capsys.readouterr().out == ""  # every option used: no note


def test_a_warmup_longer_than_half_the_run_is_capped_with_a_note(capsys):
    import agent

    assert agent.run_config_from_args(["--epochs=3", "--warmup_epochs=2"]).warmup_epochs == 1.5
    assert "--warmup_epochs=2 is more than half of 3 epochs; warming up over 1.5 instead" in capsys.readouterr().out
    assert agent.run_config_from_args(["--epochs=1"]).warmup_epochs == 0.5  # the default, capped, needs no note
    assert agent.run_config_from_args(["--epochs=3", "--warmup_epochs=1.5"]).warmup_epochs == 1.5
    assert capsys.readouterr().out == ""


def test_another_tools_name_for_a_parameter_is_answered_with_ours(tmp_path):
    """learning_rate is no typo of lr: spelling alone finds nothing, the table of other tools' names does."""
    from trainer.config import OTHER_NAMES

    assert set(OTHER_NAMES.values()) <= set(FIELDS) and not set(OTHER_NAMES) & set(FIELDS)
    for given, ours in (("learning_rate", "lr"), ("img_size", "input_size"), ("num_epochs", "epochs")):
        with pytest.raises(UserError, match=f"unknown parameter '{given}' \\(did you mean '{ours}'\\?\\)"):
            parse_run_config({given: 1})
    config = tmp_path / "run.yaml"
    config.write_text("learning_rate: 0.1\n")
    with pytest.raises(UserError, match="run.yaml: unknown parameter 'learning_rate' \\(did you mean 'lr'"):
        load_yaml_values(str(config))


def test_unknown_key_suggests_the_nearest():
    with pytest.raises(UserError, match="did you mean 'k_layers'"):
        parse_run_config({"k_layer": 2})


def test_bad_values_are_one_line_errors():
    for values, pattern in [({"lr": "fast"}, "lr='fast' is not a valid float"), ({"epochs": 0}, r"out of range"),
                            ({"augment": "strnog"}, "did you mean 'strong'"), ({"epochs": 2.5}, "not a valid int"),
                            ({"model": "resnet5O"}, "resnet50"),
                            ({"label_smoothing": 0.6}, r"label_smoothing=0.6 is out of range \[0.0, 0.5\]"),
                            # ignored there, still a typo
                            ({"model": "scratch_cnn", "strategy": "head_onyl"}, "did you mean 'head_only'")]:
        with pytest.raises(UserError, match=pattern) as err:
            parse_run_config(values)
        assert "\n" not in str(err.value)


def test_strings_from_yaml_and_cli_parse_to_types():
    config = parse_run_config({"batch_norm": "false", "model": "scratch_cnn"},
                              parse_cli(["--lr=3e-4", "--epochs", "3", "--image_cache=no", "--compile"]))
    assert config.batch_norm is False and config.image_cache is False and config.compile is True
    assert config.lr == 3e-4 and config.epochs == 3


def test_parameters_that_do_not_apply_are_normalised_away():
    a = parse_run_config({"model": "resnet50", "strategy": "head_only", "k_layers": 1, "filters": 64})
    b = parse_run_config({"model": "resnet50", "strategy": "freeze_all", "k_layers": 3, "filters": 16})
    assert a.k_layers is None and a.filters is None and a.strategy == "head_only"
    assert config_hash(a) == config_hash(b)
    c = parse_run_config({"model": "resnet50", "strategy": "last_k", "k_layers": 3})
    assert config_hash(c) != config_hash(parse_run_config({"model": "resnet50", "strategy": "last_k", "k_layers": 2}))
    s = parse_run_config({"model": "scratch_cnn", "strategy": "last_k", "k_layers": 2})
    assert s.strategy == "full" and s.k_layers is None and s.weights == "none"


def same(**a):
    """Returns a checker: do these settings train the same model as `a` (equal effective-config hash)?"""
    return lambda **b: config_hash(parse_run_config(a)) == config_hash(parse_run_config(b))


def test_equivalent_values_are_written_one_way():
    # resnet50 has 5 backbone stages: 0.3 and 0.45 both freeze round(1.5)=2 and round(2.25)=2, 0.5 freezes 3
    fraction = same(model="resnet50", strategy="fraction", freeze_fraction=0.3)
    assert fraction(model="resnet50", strategy="fraction", freeze_fraction=0.45)
    assert not fraction(model="resnet50", strategy="fraction", freeze_fraction=0.5)
    folded = parse_run_config({"model": "resnet50", "strategy": "fraction", "freeze_fraction": 0.3})
    # 2 of 5 frozen: the last 3 train
    assert (folded.strategy, folded.k_layers, folded.freeze_fraction) == ("last_k", 3, None)

    # bn_mode matters only where a frozen stage has BatchNorm
    for strategy in ("full", "norm_and_head"):
        assert same(model="resnet50", strategy=strategy, bn_mode="adapt")(model="resnet50", strategy=strategy,
                                                                          bn_mode="freeze")
    for model in ("vgg16", "vit_b_16"):
        assert same(model=model, strategy="head_only", bn_mode="adapt")(model=model, strategy="head_only")
    for strategy in ("head_only", "last_k", "fraction", "gradual"):
        assert not same(model="resnet50", strategy=strategy, bn_mode="adapt")(model="resnet50", strategy=strategy)
    assert same(model="resnet50", strategy="last_k", k_layers=5, bn_mode="adapt")(model="resnet50", strategy="last_k",
                                                                                  k_layers=5)

    # onecycle warms up over its own first 30%: warmup_epochs changes nothing there, and everything elsewhere
    assert same(model="resnet50", schedule="onecycle", warmup_epochs=0)(model="resnet50", schedule="onecycle",
                                                                        warmup_epochs=3)
    assert not same(model="resnet50", schedule="cosine", warmup_epochs=0)(model="resnet50", schedule="cosine",
                                                                          warmup_epochs=3)
    # a warmup longer than half the run is half the run: a 1-epoch run all warmup would never train at its lr
    assert same(model="resnet50", epochs=2, warmup_epochs=1)(model="resnet50", epochs=2, warmup_epochs=5)
    assert (parse_run_config({"epochs": 1}).warmup_epochs == 0.5
            and parse_run_config({"epochs": 4, "warmup_epochs": 3}).warmup_epochs == 2)
    assert parse_run_config({"epochs": 10, "warmup_epochs": 1.5}).warmup_epochs == 1.5
    # ...but what older code saved with a longer warmup trained otherwise: no longer the same config (nor is its
    # 'half' net of 4 filters, widened to 8 then)
    from trainer.config import effective_config, rehash

    today = effective_config(parse_run_config({"epochs": 1}))
    assert rehash(today) == config_hash(parse_run_config({"epochs": 1}))
    assert rehash({**today, "warmup_epochs": 1.0}) is None
    narrow = effective_config(parse_run_config({"model": "scratch_cnn", "filters": 4, "filter_organization": "half"}))
    assert rehash(narrow) is None and rehash({**narrow, "filters": 16}) is not None

    assert same(model="resnet50", weights="IMAGENET1K_V2")(model="resnet50", weights="imagenet")
    assert not same(model="resnet50", weights="IMAGENET1K_V1")(model="resnet50", weights="imagenet")


def test_onecycle_run_trains_with_warmup_folded_away(base):
    outcome = run_training(scratch(base, run_id="onecycle", schedule="onecycle", warmup_epochs=2))
    assert outcome.state == M.FINISHED
    assert yaml.safe_load((outcome.folder / "config.yaml").read_text())["warmup_epochs"] is None
    assert 0 <= evaluate_on_test_set(outcome.folder)[M.TEST_ACC] <= 1  # its config.yaml reads back


@pytest.mark.parametrize("values", [
    {"model": "resnet50", "schedule": "onecycle", "warmup_epochs": 3},
    {"model": "resnet50", "strategy": "fraction", "freeze_fraction": 0.3, "bn_mode": "adapt"},
    {"model": "vgg16", "strategy": "head_only", "bn_mode": "adapt", "weights": "IMAGENET1K_V1"},
    {"model": "scratch_cnn", "strategy": "last_k", "batch_norm": "no", "optimizer": "sgd"},
    {"model": "googlenet", "strategy": "gradual", "aux_loss_weight": 0.2},
])
def test_a_normalised_config_reads_back_as_itself(values):
    """config.yaml is what --resume, agent.py test and --config read: normalising must be a fixed point."""
    from trainer.config import effective_config, rehash, to_dict

    config = parse_run_config(values)
    assert parse_run_config(to_dict(config)) == config
    assert rehash(effective_config(config)) == config_hash(config)  # what sweep tables and checkpoints save
    assert parse_run_config(yaml.safe_load(yaml.safe_dump(to_dict(config)))) == config


def test_help_lists_every_parameter_with_default():
    text = help_text()
    for name in FIELDS:
        assert f"--{name}=" in text
    assert "{adamw, sgd}" in text


def test_a_config_path_that_is_a_folder_is_a_one_line_error(tmp_path):
    from trainer.config import load_yaml_values

    bad_value = tmp_path / "run.yaml"
    bad_value.write_text("lr: abc\n")
    with pytest.raises(UserError, match=rf"^config file {re.escape(str(bad_value))}: lr='abc' is not a valid float"):
        load_yaml_values(bad_value)

    with pytest.raises(UserError, match="cannot read|cannot be read"):
        load_yaml_values(tmp_path)


def test_a_config_file_names_itself_in_its_errors_and_refuses_a_search_space(tmp_path):
    from trainer.config import load_yaml_values

    typo = tmp_path / "run.yaml"
    typo.write_text("model: resnet50\ninput_sz: 64\n")
    with pytest.raises(UserError, match=r"run.yaml: unknown parameter 'input_sz' \(did you mean 'input_size'\?\)"):
        load_yaml_values(typo)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("parameters:\n  model: {value: scratch_cnn}\n  activation: {values: [relu, gelu]}\n")
    with pytest.raises(UserError, match="activation is searched; run it with `python agent.py sweep"):
        load_yaml_values(sweep)
    sweep.write_text("parameters:\n  model: {value: scratch_cnn}\n  activation: {value: gelu}\n")
    assert load_yaml_values(sweep) == {"model": "scratch_cnn", "activation": "gelu"}  # fixed values: fine
    sweep.write_text("parameters:\n  lr: {valeu: 0.01}\n")  # a typo of `value`, not a search space
    with pytest.raises(UserError, match=r"parameter 'lr' has the key 'valeu' \(did you mean 'value'\?\)"):
        load_yaml_values(sweep)


def test_none_for_a_boolean_means_false_not_the_default():
    assert parse_run_config({"model": "scratch_cnn", "batch_norm": "none"}).batch_norm is False
    assert parse_run_config({"model": "scratch_cnn", "batch_norm": None}).batch_norm is True  # YAML null: unset


def test_resume_from_an_output_dir_written_with_a_tilde_reads_its_saved_config(base, monkeypatch, tmp_path):
    """`--output_dir=~/runs` reaches the program with its ~ (the shell expands it only at a word's start)."""
    import agent

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    first = run_training(scratch({**base, "output_dir": "~/runs"}, run_id="tilde", epochs=1, lr=0.0123))
    assert first.folder == tmp_path / "home" / "runs" / "tilde"
    config = agent.run_config_from_args(["--resume", "--run_id=tilde", "--output_dir=~/runs"])
    assert config.lr == 0.0123 and config.model == "scratch_cnn"


def test_a_resumed_run_takes_its_saved_config_under_what_this_command_passes(base, tmp_path):
    import agent

    run_training(scratch(base, run_id="moved", epochs=1, lr=0.0123, checkpoint_minutes=20, num_workers=1))
    machine = tmp_path / "machine_b.yaml"  # where this machine keeps the data, and how it checkpoints
    machine.write_text(
        yaml.safe_dump({"data_dir": str(tmp_path / "elsewhere"), "checkpoint_minutes": 5, "num_workers": 2}))
    config = agent.run_config_from_args(["--resume", "--run_id=moved", f"--output_dir={base['output_dir']}", "--config",
                                         str(machine), "--num_workers=0"])
    # saved, where this command is silent
    assert config.lr == 0.0123 and config.model == "scratch_cnn" and config.epochs == 1
    # the file over the saved config
    assert config.data_dir == str(tmp_path / "elsewhere") and config.checkpoint_minutes == 5
    assert config.num_workers == 0  # --key=value over both


def test_settings_that_change_training_change_the_config_hash_and_paths_do_not():
    default = config_hash(parse_run_config({}))
    for key, value in {"seed": 1, "split_seed": 1, "val_fraction": 0.3, "subset_fraction": 0.5, "augment": "none",
                       "lr": 0.01,
                       "label_smoothing": 0.0, "batch_size": 16, "epochs": 3, "patience": 0,
                       "weight_decay": 0.0}.items():
        assert config_hash(parse_run_config({key: value})) != default, key
    for key, value in {"output_dir": "elsewhere", "cache_dir": "/tmp/other-cache", "data_dir": "/data/nature",
                       "device": "cpu",
                       "num_workers": 0, "wandb_mode": "offline", "run_id": "named", "checkpoint_minutes": 0}.items():
        assert config_hash(parse_run_config({key: value})) == default, key
