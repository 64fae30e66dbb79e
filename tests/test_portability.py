"""Beyond Linux: the package imports and trains on a CPU where the OS has no fcntl and no SIGUSR1/SIGKILL (Windows).

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
from trainer.config import parse_run_config
from trainer.record import RunRecord
from trainer.run import run_training

tmp = Path({tmp!r})
with RunRecord(tmp / "run").exclusive():
    pass
with file_lock(tmp / "cache.lock"), exclusive(tmp):
    pass
assert RunRecord.held_by(tmp / "run") is None
config = parse_run_config({{"model": "scratch_cnn", "input_size": 32, "filters": 8, "dense_units": 16, "epochs": 1,
                            "batch_size": 8, "weights": "none", "data_dir": {data!r}, "cache_dir": str(tmp / "cache"),
                            "output_dir": str(tmp / "runs"), "wandb_mode": "disabled", "num_workers": 0}})
outcome = run_training(config)
print(json.dumps({{"modules": len(modules), "state": outcome.state}}))
"""


def test_every_module_imports_and_a_cpu_run_trains_without_fcntl(nature_dir, tmp_path):
    script = WITHOUT_FCNTL.format(root=str(ROOT), packages=PACKAGES, tmp=str(tmp_path), data=str(nature_dir))
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "WANDB_MODE": "disabled"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["modules"] > 50 and report["state"] == "finished"


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
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "val_acc": 0.5, "train_loss": 1.0}) + "\n" for e in (1, 2)))
    return folder


def test_help_check_and_report_start_without_importing_torch(tmp_path):
    run = _a_run_folder(tmp_path / "runs" / "r1")
    for argv in (["--help"], ["sweep", "--help"], ["check", str(ROOT / "sweeps" / "tiny.yaml")],
                 ["report", str(run.parent), "--out", str(tmp_path / "report")]):
        script = WHICH_MODULES.format(root=str(ROOT), argv=argv)
        result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        assert json.loads(result.stdout.strip().splitlines()[-1]) == {"code": 0, "torch": False, "torchvision": False}, argv
