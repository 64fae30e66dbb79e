"""What starts a trial and a sweep from the command line: the exact command `wandb agent` runs, false booleans
reaching a trial as false, and the sub-commands' options, help and errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sweeps
import yaml

from sweep_helpers import ROOT
from trainer import metrics as M
from trainer.config import parse_run_config


def expand_command(command: list[str], macros: dict[str, list[str]]) -> list[str]:
    """The agent's macro expansion (wandb/wandb_agent.py): ${name} becomes the list macros[name]."""
    expanded = []
    for part in command:
        expanded += macros.get(part[2:-1]) or [] if part.startswith("${") and part.endswith("}") else [part]
    return expanded


def test_the_command_wandb_agent_runs_works_unchanged(tmp_path, fixed_args):
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    definition = yaml.safe_load((ROOT / "sweeps" / "tiny.yaml").read_text())
    suggestion = sweeps.next_run(definition, [], validate=True)
    macros = create_sweep_command_args({"args": suggestion.config})  # the agent's own `--key=value` formatting
    macros.update(env=["/usr/bin/env"], interpreter=[sys.executable], program=[definition["program"]])
    command = expand_command(definition["command"], macros)
    assert command[:3] == ["/usr/bin/env", sys.executable, "agent.py"]
    assert "--model=scratch_cnn" in command and "--batch_norm=true" in command

    # Machine-specific settings come from the environment under `wandb agent`, which also names the run.
    env = {**os.environ, "FINETUNE_DATA_DIR": fixed_args["data_dir"], "FINETUNE_CACHE_DIR": fixed_args["cache_dir"],
           "FINETUNE_OUTPUT_DIR": str(tmp_path / "runs"), "WANDB_MODE": "disabled", "WANDB_RUN_ID": "agent-run-1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    folder = tmp_path / "runs" / "agent-run-1"
    assert json.loads((folder / "summary.json").read_text())[M.STATE] == M.FINISHED
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["lr"] == suggestion.config["lr"]["value"] and config["batch_norm"] is True


@pytest.mark.parametrize("argv, code, out, err", [
    (["sweep", "--help"], 0, "--count N      the sweep's size", ""),
    (["report", "-h"], 0, "usage: python agent.py report SOURCE", ""),
    (["test", "--help"], 0, "usage: python agent.py test RUN_FOLDER", ""),
    (["sweep", "sweeps/tiny.yaml", "--cuont=3"], 2, "", "unknown option --cuont (did you mean 'count'?)"),
    (["sweep", "sweeps/tiny.yaml"], 2, "", "--count N is required"),  # a default would silently extend a sweep
    (["sweep", "sweeps/tiny.yaml", "--count", "abc"], 2, "", "--count=abc must be an integer\n"),
    (["sweep", "sweeps/tiny.yaml", "--count"], 2, "", "--count needs a value"),
    # a run parameter's typo
    (["sweep", "sweeps/tiny.yaml", "--count=1", "--dropuot=0.1"], 2, "", "'dropuot' (did you mean 'dropout'?)"),
    (["check", "--help"], 0, "usage: python agent.py check SWEEP.yaml", ""),
    (["sweeep", "sweeps/tiny.yaml"], 2, "",
     "unknown command 'sweeep' (did you mean 'sweep'?); commands: run, sweep, check"),
    (["check"], 2, "", "usage: python agent.py check SWEEP.yaml"),
    # YAML first
    (["check", "--model=resnet18", "sweeps/freeze.yaml"], 2, "", "usage: python agent.py check SWEEP.yaml"),
    (["check", "sweeps/freeze.yaml"], 0, "is fine: method bayes, metric val_acc (maximize), searching 6 parameter(s)",
     ""),
    (["check", "sweeps/freeze.yaml", "--model=resnet18"], 0,
     "searching 5 parameter(s) (strategy, k_layers, lr, augment, input_size)", ""),
    (["check", "sweeps/freeze.yaml", "--model=vgg16", "--k_layers=9"], 2, "", "k_layers"),
    (["check", "sweeps/nope.yaml"], 2, "", "sweep file sweeps/nope.yaml not found"),
])
def test_the_sub_commands_answer_help_and_name_their_own_options(argv, code, out, err, capsys):
    import agent

    assert agent.main(argv) == code
    captured = capsys.readouterr()
    assert out in captured.out and err in captured.err and captured.err.count("\n") == (code != 0)


def test_the_sweep_command_without_the_sweep_engine_says_what_to_install(monkeypatch, capsys):
    import agent

    monkeypatch.setitem(sys.modules, "sweeps", None)  # `pip install wandb` without the [sweeps] extra
    for name in ("sweeper.local", "sweeper.engine"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert agent.main(["sweep", "sweeps/tiny.yaml", "--count=1"]) == 2
    err = capsys.readouterr().err
    assert "needs the 'sweeps' package: pip install \"wandb[sweeps]\"" in err and err.count("\n") == 1


def test_false_booleans_reach_the_trial_as_false(tmp_path):
    """Pitfall 13 on the way to a trial: the engine's False is passed as a value the run parses back to False."""
    from sweeper.trial import trial_command
    from trainer.config import parse_cli

    command = trial_command({"model": "scratch_cnn", "batch_norm": False, "feature_cache": True}, tmp_path, "t-001")
    assert "--batch_norm=false" in command and "--feature_cache=true" in command
    config = parse_run_config(parse_cli([a for a in command if a.startswith("--")]))
    assert config.batch_norm is False and config.feature_cache is True


def test_the_sweep_command_hands_its_options_and_fixed_arguments_to_the_driver(monkeypatch, tmp_path):
    import agent
    import sweeper.local

    calls, answer = [], {}
    monkeypatch.setattr(sweeper.local, "run_local_sweep",
                        lambda path, **kwargs: calls.append((path, kwargs)) or answer.get("summary"))
    answer["summary"] = {"new": 3}
    assert agent.main(["sweep", "sweeps/tiny.yaml", "--epochs=1", "--count", "3", f"--sweep-dir={tmp_path}", "--lr",
                       "0.1"]) == 0
    [(path, kwargs)] = calls
    assert path == Path("sweeps/tiny.yaml")
    assert kwargs == {"count": 3, "workers": 1, "sweep_dir": tmp_path, "fixed": {"epochs": "1", "lr": "0.1"}}
    answer["summary"] = None  # interrupted: the shell (and a notebook cell) must see that it did not finish
    assert agent.main(["sweep", "sweeps/tiny.yaml", "--count=3", "--workers=2"]) == 130
    assert calls[-1][1]["workers"] == 2 and calls[-1][1]["sweep_dir"] is None and calls[-1][1]["fixed"] == {}
