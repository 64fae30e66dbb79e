"""Sweep reports: read a sweep's runs (local folders or W&B), compute its numbers once, write report.md.

`build_report(source, out_dir)` is the entry point (the figures of a test evaluation are common/figures.py's).
Importing this package imports neither wandb nor pyplot.
"""

from __future__ import annotations

from pathlib import Path


def build_report(source: str, out_dir: Path, top_n: int = 10) -> Path:
    from report.build import build_report as build

    return build(source, out_dir, top_n=top_n)


__all__ = ["build_report"]
