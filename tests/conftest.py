"""Shared fixtures: a tiny nature_12K-shaped dataset written by the tests themselves, and a small run's settings."""

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
    monkeypatch.setattr(trainer.run, "preprocessing_for", lambda name, weights, scratch=None, *rest: real(name, weights, scratch, *rest) if name == "scratch_cnn" else SMALL)


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
