"""Helpers shared by the sweep tests: tiny definitions written to YAML, and what a sweep folder holds."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from sweeper.definition import load_definition
from sweeper.local import LocalSweep
from trainer import metrics as M

ROOT = Path(__file__).resolve().parents[1]


def tiny_definition(**parameters) -> dict:
    """sweeps/tiny.yaml with some parameters replaced: the tests' sweeps share its tiny, fast settings."""
    config = yaml.safe_load((ROOT / "sweeps" / "tiny.yaml").read_text())
    config["parameters"].update(parameters)
    return config


def write_yaml(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def table_rows(sweep_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (sweep_dir / "table.jsonl").read_text().splitlines()]


def summary_of(sweep_dir: Path, run_id: str) -> dict:
    return json.loads((sweep_dir / "runs" / run_id / "summary.json").read_text())


def local_sweep(tmp_path, fixed=None, **parameters) -> LocalSweep:
    """A driver on a tiny definition, its table to be written by hand (nothing trains)."""
    definition = load_definition(write_yaml(tmp_path / "s.yaml", tiny_definition(**parameters)))
    return LocalSweep(definition, tmp_path / "sweep", fixed or {}, workers=1)


def write_history(folder: Path, accuracies: list[float]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{M.EPOCH: epoch, M.VAL_ACC: acc} for epoch, acc in enumerate(accuracies, start=1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
