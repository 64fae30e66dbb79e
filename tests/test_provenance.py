"""Provenance: the code version (the commit, marked when the code had local changes; the package version outside a
checkout) and the library and weights versions a run records."""

from __future__ import annotations

import re

import pytest
import torch
import torchvision

from trainer import metrics as M
from trainer.run import run_training
from trainer_helpers import scratch


def test_summary_records_code_and_weights_provenance(base):
    outcome = run_training(scratch(base, run_id="provenance", epochs=1))
    assert outcome.summary["code_version"] and outcome.summary[M.WEIGHTS_VERSION] == "none"
    assert outcome.summary[M.SPLIT_HASH] and outcome.summary[M.CONFIG_HASH]
    assert outcome.summary["precision"] == "fp32"  # precision=auto on a CPU: no autocast
    assert ((outcome.summary["torch_version"], outcome.summary["torchvision_version"])
            == (torch.__version__, torchvision.__version__))


def test_code_version_is_the_commit_and_says_when_the_code_had_local_changes(tmp_path, monkeypatch):
    import subprocess

    import common.provenance as provenance

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "train.py").write_text("lr = 0.1\n")
    subprocess.run([*git, "add", "train.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "first"], check=True)
    commit = subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    monkeypatch.setattr(provenance, "ROOT", tmp_path)
    provenance.code_version.cache_clear()
    try:
        assert provenance.code_version() == commit
        (tmp_path / "train.py").write_text("lr = 0.2\n")  # an edit not committed: results must not pass as `commit`'s
        provenance.code_version.cache_clear()
        first_edit = provenance.code_version()
        assert re.fullmatch(re.escape(commit) + r"\+dirty\.[0-9a-f]{8}", first_edit)
        (tmp_path / "train.py").write_text("lr = 0.3\n")  # another edit of the same commit: another code version
        provenance.code_version.cache_clear()
        assert provenance.code_version().startswith(commit + "+dirty.") and provenance.code_version() != first_edit
        (tmp_path / "train.py").write_text("lr = 0.2\n")
        provenance.code_version.cache_clear()
        assert provenance.code_version() == first_edit  # the same edit again: the same version
        (tmp_path / "train.py").write_text("lr = 0.1\n")
        (tmp_path / "runs").mkdir()  # a run's own output inside the checkout is no local change of the code
        (tmp_path / "runs" / "summary.json").write_text("{}")
        provenance.code_version.cache_clear()
        assert provenance.code_version() == commit
    finally:
        provenance.code_version.cache_clear()


def test_code_version_outside_a_git_checkout_is_the_package_version(tmp_path, monkeypatch):
    from importlib.metadata import version

    import common.provenance as provenance

    monkeypatch.setattr(provenance, "ROOT", tmp_path)  # an installed copy: no .git anywhere above
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    provenance.code_version.cache_clear()
    try:
        assert provenance.code_version() == f"finetune-sweeps {version('finetune-sweeps')}"
    finally:
        provenance.code_version.cache_clear()


def test_code_version_is_the_git_commit():
    import subprocess

    from common.provenance import ROOT, code_version

    code_version.cache_clear()  # cached per process: a commit made while the suite runs would otherwise differ
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    assert code_version().split("+")[0] == head.stdout.strip()
