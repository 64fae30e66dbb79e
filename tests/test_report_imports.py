"""What a report imports: scipy.stats, scikit-learn and matplotlib take over a second between them, so each is loaded
only by the part of a report that needs it (a seed interval, parameter importance, a figure), never by an import.

Each check runs in a fresh interpreter, where nothing is imported yet.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from report_helpers import add_finished, add_run, make_summary

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("scipy", "sklearn", "matplotlib")

WHICH_MODULES = """
import contextlib, importlib, io, json, sys
sys.path.insert(0, {root!r})
for name in ("agent", "report", "report.build", "report.markdown", "report.protocol", "report.sources",
             "report.stats", "report.table"):
    importlib.import_module(name)
code = None
if {argv!r}:
    with contextlib.redirect_stdout(io.StringIO()):
        code = sys.modules["agent"].main({argv!r})
print(json.dumps({{"code": code, "loaded": [name for name in {heavy!r} if name in sys.modules]}}))
"""


def _loaded(argv: list[str], cwd: Path) -> list[str]:
    script = WHICH_MODULES.format(root=str(ROOT), argv=argv, heavy=HEAVY)
    result = subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["code"] in (None, 0), result.stderr[-2000:]
    return answer["loaded"]


def test_importing_the_report_loads_no_heavy_module(tmp_path):
    assert _loaded([], tmp_path) == []


def _failed_only(runs: Path) -> None:
    add_run(runs, "f1", "r11", [0.5], make_summary("r11"))


def _one_seed_each(runs: Path) -> None:
    add_finished(runs, "a", "r01", 0.70)
    add_finished(runs, "b", "r02", 0.80)
    add_finished(runs, "c", "r03", 0.75)


def _one_config_over_two_seeds(runs: Path) -> None:
    add_finished(runs, "a", "r01", 0.70, seed=0)
    add_finished(runs, "b", "r01", 0.72, seed=1)
    add_finished(runs, "c", "r02", 0.80)


@pytest.mark.parametrize(("write_runs", "expected"), [
    (_failed_only, []),  # no figure, no interval, no importance
    (_one_seed_each, ["matplotlib"]),  # figures; no config repeated over seeds; too few runs for importance
    (_one_config_over_two_seeds, ["scipy", "matplotlib"]),  # the seed interval's t quantile
], ids=lambda value: getattr(value, "__name__", "").strip("_") or None)
def test_a_report_loads_only_what_its_sections_use(tmp_path, write_runs, expected):
    runs = tmp_path / "runs"
    runs.mkdir()
    write_runs(runs)
    out = tmp_path / "report"
    assert _loaded(["report", str(runs), "--out", str(out)], tmp_path) == expected
    assert bool(list(out.glob("*.png"))) == ("matplotlib" in expected)
    assert ("95% CI" in (out / "report.md").read_text()) == ("scipy" in expected)
