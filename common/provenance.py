"""Which code produced a result: the git commit of the harness (and whether it had local changes)."""

from __future__ import annotations

import hashlib
import subprocess
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@lru_cache(maxsize=1)
def code_version() -> str:
    """`<commit>`, or `<commit>+dirty.<hash of the local changes>` so that two different edits of one commit are
    two code versions; the package version when the code is not a git checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=5)
        if commit.returncode == 0:
            diff = subprocess.run(["git", "diff", "HEAD", "--no-ext-diff", "--no-color", "--binary"], cwd=ROOT,
                                  capture_output=True, timeout=10)
            if diff.returncode != 0:
                return commit.stdout.strip() + "+dirty"  # changes unknown: say so rather than claim a clean commit
            if diff.stdout:
                return f"{commit.stdout.strip()}+dirty.{hashlib.sha256(diff.stdout).hexdigest()[:8]}"
            return commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from importlib.metadata import version

        return f"finetune-sweeps {version('finetune-sweeps')}"
    except Exception:
        return "unknown"
