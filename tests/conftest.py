"""Shared fixtures: a tiny nature_12K-shaped dataset written by the tests themselves, a small run's settings, the
sweep tests' fixed arguments, and the report tests' synthetic sweep."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CLASSES = ("Amphibia", "Aves", "Fungi")
# Distinct mean colours make the classes learnable, so a short run does reach above-chance accuracy.
COLOURS = {"Amphibia": (200, 60, 40), "Aves": (40, 180, 70), "Fungi": (50, 70, 210)}
MODES = ("RGB", "L", "RGBA", "P", "CMYK", "I;16")


def _image(rng: np.random.Generator, colour, size, mode: str) -> Image.Image:
    width, height = size
    base = np.array(colour, dtype=np.float64)
    noise = rng.normal(0, 35, size=(height, width, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    if mode == "I;16":
        gray = np.asarray(image.convert("L"), dtype=np.uint16) * 257
        return Image.fromarray(gray)  # uint16 array -> 16-bit grayscale ("I;16")
    if mode == "P":
        return image.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    return image.convert(mode)


def write_split(folder: Path, per_class: int, seed: int, extras: bool) -> None:
    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        class_dir = folder / name
        class_dir.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            mode = MODES[(i + c) % len(MODES)]
            size = (int(rng.integers(40, 90)), int(rng.integers(40, 90)))
            image = _image(rng, COLOURS[name], size, mode)
            # CMYK only exists as JPEG; RGB and L alternate between JPEG and PNG; the rest are PNG-only modes.
            if mode == "CMYK" or (mode in ("RGB", "L") and i % 2 == 0):
                image.save(class_dir / f"{name.lower()}_{i:03d}.jpg", quality=90)
            else:
                image.save(class_dir / f"{name.lower()}_{i:03d}.png")
    if extras:
        first = folder / CLASSES[0]
        (first / "broken_000.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        (first / "notes.txt").write_text("not an image")
        good = _image(rng, COLOURS[CLASSES[1]], (80, 60), "RGB")
        path = folder / CLASSES[1] / "truncated_000.jpg"
        good.save(path, quality=95)
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
        # An upright 40x60 (portrait) photo stored as 60x40 landscape with EXIF orientation 6 (rotate 90 CW).
        exif_img = Image.new("RGB", (60, 40), COLOURS[CLASSES[2]])
        exif_img.paste((255, 255, 255), (0, 0, 10, 40))  # a white band on the stored left edge
        exif = exif_img.getexif()
        exif[0x0112] = 6
        exif_img.save(folder / CLASSES[2] / "rotated_000.jpg", exif=exif, quality=95)


def make_nature(root: Path, per_class: int = 12, test_per_class: int = 4) -> Path:
    """root/inaturalist_12K/{train,val}/<class>/..., the nature_12K layout; returns root."""
    base = root / "inaturalist_12K"
    write_split(base / "train", per_class, seed=1, extras=True)
    write_split(base / "val", test_per_class, seed=2, extras=False)
    return root


@pytest.fixture(scope="session")
def nature_dir(tmp_path_factory) -> Path:
    return make_nature(tmp_path_factory.mktemp("nature"))


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No test talks to W&B's servers or reads the user's caches."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    import trainer.wandb_log

    for name in trainer.wandb_log.PROXY_VARIABLES:  # the W&B probe's tests say where a proxy is
        monkeypatch.delenv(name, raising=False)

    trainer.wandb_log._online_reachable.cache_clear()  # probed once per process: once per test here
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture
def small_inputs(monkeypatch):
    """Backbones at 64 px instead of their 224: the same code path, a CPU-friendly cost."""
    import trainer.run
    from trainer_helpers import SMALL

    real = trainer.run.preprocessing_for
    monkeypatch.setattr(trainer.run, "preprocessing_for", lambda name, weights, scratch=None,
                        *rest: real(name, weights, scratch, *rest) if name == "scratch_cnn" else SMALL)


@pytest.fixture
def base(nature_dir, tmp_path):
    """The settings of a small, quick run on the tiny dataset, W&B off; a test adds its model and run id."""
    return {
        "data_dir": str(nature_dir), "cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "runs"),
        "wandb_mode": "disabled", "weights": "none", "batch_size": 8, "epochs": 2, "warmup_epochs": 0.5,
    }


@pytest.fixture(scope="session")
def fixed_args(nature_dir, tmp_path_factory) -> dict[str, str]:
    """The fixed arguments of the sweep tests' trials: the tiny dataset, one cache for the session, W&B off."""
    return {"data_dir": str(nature_dir), "cache_dir": str(tmp_path_factory.mktemp("cache")), "wandb_mode": "disabled"}


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    """The report tests' synthetic sweep (tests/report_helpers.py), written as the sweep driver leaves a folder."""
    import json

    import yaml

    from common import figures
    from report_helpers import OOM_REASON, RUNS, make_config, make_history, make_summary
    from trainer import metrics

    root = tmp_path_factory.mktemp("sweep")
    (root / "sweep.yaml").write_text(yaml.safe_dump({
        "name": "synthetic", "method": "random", "metric": {"name": metrics.VAL_ACC, "goal": "maximize"},
        "parameters": {"lr": {"values": [1e-4, 1e-3]}}}))
    for run_id in RUNS:
        folder = root / "runs" / run_id
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(yaml.safe_dump(make_config(run_id)))
        (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in make_history(run_id)))
        (folder / "summary.json").write_text(json.dumps(make_summary(run_id)))
    # The held-out test evaluation of the chosen run, drawn by the functions `agent.py test` calls.
    test_dir = root / "runs" / "r04" / "test"
    test_dir.mkdir()
    (test_dir / "test.json").write_text(json.dumps({"test_acc": 0.815, "per_class_acc": {"Aves": 0.83,
                                                    "Amphibia": 0.80}, "num_images": 2000, "checkpoint": "best.pt"}))
    figures.plot_confusion(np.array([[8, 2], [1, 9]]), ["Amphibia", "Aves"], test_dir / "confusion.png")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(6)]
    figures.plot_prediction_grid(images, ["Aves"] * 6, ["Aves", "Amphibia"] * 3, test_dir / "grid.png", rows=2, cols=3)
    # The sweep driver's table: a stale state for r01 (the folder wins), a trial with no folder, a duplicate.
    rows = [{"run_id": "r01", "state": "running", "config": make_config("r01"), "reason": None, "duplicate_of": None},
            {"run_id": "r14", "state": "oom", "config": {**make_config("r12"), "batch_size": 256},
             "reason": OOM_REASON, "duplicate_of": None},
            {"run_id": "r15", "state": "duplicate", "config": make_config("r04"), "reason": None,
             "duplicate_of": "r04"}]
    (root / "table.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


@pytest.fixture(scope="module")
def built(sweep_dir, tmp_path_factory):
    """The report of the synthetic sweep: its folder and its markdown."""
    from report.build import build_report

    out = tmp_path_factory.mktemp("report")
    report = build_report(str(sweep_dir), out)
    return out, report.read_text()


@pytest.fixture(scope="module")
def summary(sweep_dir):
    """The synthetic sweep's summary, the numbers the report renders."""
    from report.sources import load_table
    from report.stats import summarise

    return summarise(load_table(str(sweep_dir)))
