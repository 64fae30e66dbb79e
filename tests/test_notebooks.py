"""The notebooks in notebooks/ run: every code cell, in order, in one namespace, with the `parameters` cell switched to
a smoke run (a tiny synthetic dataset, offline, on the CPU). Shell lines (`!cmd`, with `{expr}` filled in as IPython
does) run as subprocesses that must succeed; IPython's display is stood in for, and records what a reader would see.

The smoke run is the README's offline demo, tiny: a ResNet-18 trained on 16 synthetic glyphs for one epoch, warm-started
on 5 unseen glyphs against the scratch CNN in a sweep of four trials, the report, and the test set of the best run."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SMOKE = {"SMOKE_TEST": True}
# What a run of a notebook writes into its copy of the repository, and what a checkout may hold that it does not need.
NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", ".hypothesis", "runs", "sweep_runs",
                                    "reports", "datasets", "demo_data", "demo_source", "demo_glyphs", "wandb", "build",
                                    "dist", ".cache", ".ruff_cache")


class CellFailed(AssertionError):
    pass


def cells(notebook: Path) -> list[dict]:
    return json.loads(notebook.read_text())["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def expand(command: str, namespace: dict) -> str:
    """`{expr}` in a shell line is the expression's value, as IPython fills it in."""
    return re.sub(r"\{([^{}]+)\}", lambda match: str(eval(match.group(1), namespace)), command)


def as_python(code: str) -> str:
    """A cell's source with each `!cmd` line turned into a call of `_shell`, at its indentation (as IPython does)."""
    lines = []
    for line in code.splitlines():
        stripped = line.lstrip()
        if stripped.startswith("!"):
            line = f"{line[:len(line) - len(stripped)]}_shell({stripped[1:]!r})"
        lines.append(line)
    return "\n".join(lines)


def shell(command: str, namespace: dict, log: list[str]) -> None:
    command = expand(command, namespace)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(command, shell=True, env=env, capture_output=True, text=True)
    log.append(f"$ {command}\n{done.stdout}{done.stderr}")
    if done.returncode != 0:
        raise CellFailed(f"exit status {done.returncode}: {command}\n{(done.stdout + done.stderr)[-4000:]}")


def display_stand_in(shown: list) -> types.ModuleType:
    """IPython.display's Markdown, Image and display, recording what the notebook shows."""
    module = types.ModuleType("IPython.display")

    class Markdown:
        def __init__(self, data: str):
            self.data = data

    class Image:
        def __init__(self, filename: str):
            self.filename = filename
            self.data = Path(filename).read_bytes()  # IPython reads the file at once too: a missing plot fails here

    module.Markdown, module.Image = Markdown, Image
    module.display = lambda *objects: shown.extend(objects)
    return module


def run_notebook(notebook: Path, parameters: dict, shown: list, log: list[str]) -> dict:
    """Execute every code cell; the parameters are set right after the cell tagged `parameters` (papermill's way)."""
    namespace: dict = {"__name__": "__main__"}
    namespace["_shell"] = lambda command: shell(command, namespace, log)
    for index, cell in enumerate(cells(notebook)):
        if cell["cell_type"] != "code":
            continue
        try:
            exec(compile(as_python(source(cell)), f"<{notebook.name} cell {index}>", "exec"), namespace)
            if "parameters" in cell.get("metadata", {}).get("tags", []):
                namespace.update(parameters)
        except BaseException as error:  # SystemExit too: a cell that stops the notebook is a failing cell
            raise CellFailed(f"{notebook.name}, cell {index} failed: {type(error).__name__}: {error}\n"
                             f"--- cell ---\n{source(cell)}\n--- shell output ---\n{''.join(log)[-6000:]}") from error
    return namespace


@pytest.fixture
def repository_copy(tmp_path, monkeypatch):
    """A copy of the repository to run a notebook in, from its notebooks/ folder as Jupyter would; the environment
    and the working folder are restored after it."""
    copy = tmp_path / "finetune-sweeps"
    shutil.copytree(ROOT, copy, ignore=NOT_COPIED)
    monkeypatch.chdir(copy / "notebooks")
    monkeypatch.setenv("FINETUNE_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("KAGGLE_KERNEL_RUN_TYPE", "COLAB_RELEASE_TAG", "FINETUNE_DATA_DIR", "FINETUNE_OUTPUT_DIR"):
        monkeypatch.delenv(name, raising=False)
    environment = dict(os.environ)
    yield copy
    os.environ.clear()
    os.environ.update(environment)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_the_notebook_runs_its_smoke_test_on_the_cpu_offline(notebook, repository_copy, monkeypatch):
    shown, log = [], []
    stand_in = display_stand_in(shown)
    monkeypatch.setitem(sys.modules, "IPython", types.ModuleType("IPython"))
    monkeypatch.setitem(sys.modules, "IPython.display", stand_in)
    namespace = run_notebook(notebook, SMOKE, shown, log)

    assert namespace["PLATFORM"] == "local" and namespace["REPO"] == repository_copy and not namespace["ONLINE"]
    assert os.environ["WANDB_MODE"] == "offline"
    table = [json.loads(line) for line in (namespace["SWEEP_DIR"] / "table.jsonl").read_text().splitlines()]
    assert sorted(row["state"] for row in table if row["state"] != "duplicate") == ["finished"] * 2
    report = namespace["REPORT_DIR"]
    markdown = "".join(item.data for item in shown if isinstance(item, stand_in.Markdown))
    assert "Headline" in markdown and "warm start" in markdown and "scratch_cnn" in markdown
    images = {Path(item.filename) for item in shown if isinstance(item, stand_in.Image)}
    tested = Path(namespace["TEST_RUN"]) / "test"
    assert set(report.glob("*.png")) <= images and {tested / "confusion.png", tested / "grid.png"} <= images
    assert "test accuracy" in markdown
    checkpoints = repository_copy / "checkpoints"  # offline, the store is a folder on the notebook's storage
    assert sorted(p.name for p in checkpoints.iterdir()) == sorted(row["run_id"] for row in table)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_the_notebook_starts_with_plain_parameters_and_holds_no_key_or_output(notebook):
    code = [cell for cell in cells(notebook) if cell["cell_type"] == "code"]
    first = code[0]
    assert "parameters" in first["metadata"].get("tags", []), "the first code cell is the parameters cell"
    tree = ast.parse(source(first))
    assert all(isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) for node in tree.body)
    assert "SMOKE_TEST" in {node.targets[0].id for node in tree.body}
    assert all(cell["outputs"] == [] and cell["execution_count"] is None for cell in code), "clear the outputs"
    text = notebook.read_text()
    assert not re.search(r"\b[0-9a-f]{40}\b", text), "a W&B key (40 hex digits) in the notebook"
    assert not re.search(r"WANDB_API_KEY\"\]\s*=\s*\"", text) and "wandb.login(key=\"" not in text


def test_shell_lines_become_calls_at_their_indentation():
    assert as_python("if x:\n    !python agent.py {A} --b={B}\ny = 1") == \
        "if x:\n    _shell('python agent.py {A} --b={B}')\ny = 1"
    assert expand("agent.py {A} --count {N + 1}", {"A": Path("x y"), "N": 3}) == "agent.py x y --count 4"


def test_a_notebook_bar_shows_the_loss_without_a_warning():
    """In a notebook the step bar is drawn, and the loss it shows still holds its graph: reading it must not warn."""
    import warnings

    import torch

    from trainer.progress import EpochProgress

    progress = EpochProgress("epoch 1/1", total=2, enabled=True)
    loss = (torch.ones(2, requires_grad=True) * 2).sum()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        progress.update(loss=loss, lr=1e-3)
    assert progress.bar.postfix == "loss=4.0000, lr=1.00e-03"
    progress.close()
