"""Beyond Linux: the package imports and takes its locks where the OS has no fcntl and no SIGUSR1/SIGKILL (Windows).

Each check runs in a fresh interpreter, where those modules and signals are taken away before anything imports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "data", "models", "scratch_cnn", "trainer", "sweeper", "report")

WITHOUT_FCNTL = """
import importlib, json, pkgutil, signal, sys
from pathlib import Path
sys.modules["fcntl"] = None  # `import fcntl` raises ImportError, as on Windows
for name in ("SIGUSR1", "SIGKILL"):  # nor has Windows these signals
    delattr(signal, name)
sys.path.insert(0, {root!r})
modules = ["agent"] + [f"{{package}}.{{info.name}}" for package in {packages!r}
                       for info in pkgutil.iter_modules([str(Path({root!r}) / package)])]
for name in modules:
    importlib.import_module(name)

from common.locks import file_lock
from sweeper.local import exclusive
from trainer.record import RunRecord
from trainer.signals import GracefulStop

tmp = Path({tmp!r})
with RunRecord(tmp / "run").exclusive() as record, GracefulStop() as stop:  # what a run holds while it trains
    record.update_summary(state="running")
with RunRecord(tmp / "run").exclusive("testing"):  # released: `agent.py test` may take it
    pass
with file_lock(tmp / "cache.lock"), exclusive(tmp):  # a cache being built; a sweep's driver
    pass
print(json.dumps({{"modules": len(modules), "held": RunRecord.held_by(tmp / "run"), "stopped": bool(stop)}}))
"""


def test_every_module_imports_and_its_locks_work_without_fcntl(tmp_path):
    script = WITHOUT_FCNTL.format(root=str(ROOT), packages=PACKAGES, tmp=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "WANDB_MODE": "disabled"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"modules": report["modules"], "held": None, "stopped": False} and report["modules"] > 50


# --- commands that train nothing import no torch -----------------------------------------------------------

WHICH_MODULES = """
import contextlib, io, json, sys
sys.path.insert(0, {root!r})
import agent
with contextlib.redirect_stdout(io.StringIO()):
    code = agent.main({argv!r})
print(json.dumps({{"code": code, "torch": "torch" in sys.modules, "torchvision": "torchvision" in sys.modules}}))
"""


def _a_run_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("model: scratch_cnn\nstrategy: full\nlr: 0.001\nepochs: 2\n")
    (folder / "summary.json").write_text(json.dumps({"state": "finished", "best_val_acc": 0.5, "best_epoch": 2}))
    (folder / "metrics.jsonl").write_text(
        "".join(json.dumps({"epoch": e, "val_acc": 0.5, "train_loss": 1.0}) + "\n" for e in (1, 2)))
    return folder


def test_help_check_and_report_start_without_importing_torch(tmp_path):
    run = _a_run_folder(tmp_path / "runs" / "r1")
    for argv in (["--help"], ["sweep", "--help"], ["check", str(ROOT / "sweeps" / "tiny.yaml")],
                 ["report", str(run.parent), "--out", str(tmp_path / "report")]):
        script = WHICH_MODULES.format(root=str(ROOT), argv=argv)
        result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        assert (json.loads(result.stdout.strip().splitlines()[-1])
                == {"code": 0, "torch": False, "torchvision": False}), argv
