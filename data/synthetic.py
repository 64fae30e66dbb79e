"""Write a synthetic, iNaturalist-like folder of JPEGs: a demo dataset and the benchmarks' workload.

Images are photo-like enough that decoding costs what a real photo costs (smooth lighting gradients, soft
blobs and shapes, mid-frequency texture and sensor noise, saved at JPEG quality 90 in mixed sizes), and
each class has its own colour statistics and shape mix, so a model can learn the task. Every image is drawn
from its own seed (dataset seed, split, class, index), so the output is identical whatever the number of
worker processes. A marker file records what was written; asking again for the same dataset reuses it, and a
call cut off mid-write is cleaned up by the next one.

    python -m data.synthetic DIR [--classes 10 --per_class 100 --test_per_class 20 --seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from common.atomic import write_text

# nature_12K's classes, so a demo run reads like the real one; more classes get generic names.
NATURE_CLASSES = ("Amphibia", "Animalia", "Arachnida", "Aves", "Fungi", "Insecta", "Mammalia", "Mollusca", "Plantae",
                  "Reptilia")
LAYOUTS = {"nature": ("inaturalist_12K/train", "inaturalist_12K/val"), "plain": ("train", "test")}
MARKER = "synthetic.json"
PENDING = "synthetic.json.writing"  # present while a call writes: what it finds from a cut-off call is ours to remove
JPEG_QUALITY = 90
NOISE_SIGMA = 8.0  # per-pixel sensor noise (grey levels); with the grain, a 750x560 file weighs ~130 KB like a photo
FORMAT_VERSION = 1


def class_names(count: int) -> tuple[str, ...]:
    return tuple(NATURE_CLASSES[i] if i < len(NATURE_CLASSES) else f"class_{i:03d}" for i in range(count))


def _class_style(seed: int, label: int) -> dict:
    """Colour statistics and shape mix of one class: what makes the classes learnable."""
    rng = np.random.default_rng([seed, 7, label])
    return {
        "background": rng.uniform(30, 225, size=(2, 3)),  # the two ends of the lighting gradient
        "palette": rng.uniform(0, 255, size=(3, 3)),  # the colours of the foreground shapes
        "ellipse_share": float(rng.uniform(0.1, 0.9)),
        "texture": float(rng.uniform(6, 22)),  # amplitude of mid-frequency texture
    }


def _smooth_field(rng: np.random.Generator, width: int, height: int, cells: int, channels: int) -> np.ndarray:
    """Low-frequency random field: a coarse random grid upsampled bicubically (cheap, photo-like shading)."""
    coarse = rng.uniform(0, 255, size=(cells, max(2, cells * width // max(1, height)), channels)).astype(np.uint8)
    mode = "RGB" if channels == 3 else "L"
    field = Image.fromarray(coarse if channels == 3 else coarse[..., 0], mode).resize(
        (width, height), Image.Resampling.BICUBIC)
    return np.asarray(field, dtype=np.float32).reshape(height, width, channels) / 255.0 - 0.5


def render_image(dataset_seed: int, label: int, image_seed: int, width: int, height: int) -> Image.Image:
    """One RGB image of class `label`: the class style comes from `dataset_seed`, the rest from `image_seed`."""
    style = _class_style(dataset_seed, label)
    rng = np.random.default_rng([dataset_seed, image_seed])
    # Scene at half resolution, then upsampled: soft, out-of-focus edges like a photo's, at a quarter of the cost.
    w, h = max(1, width // 2), max(1, height // 2)
    angle = rng.uniform(0, 2 * np.pi)
    xs = (np.arange(w, dtype=np.float32) / w - 0.5)[None, :] * np.cos(angle)
    ys = (np.arange(h, dtype=np.float32) / h - 0.5)[:, None] * np.sin(angle)
    t = (xs + ys + 0.5).clip(0, 1)[..., None]
    low, high = (style["background"] + rng.normal(0, 12, size=(2, 3))).astype(np.float32)
    scene = low * (1 - t) + high * t  # lighting: a gradient between the class's background colours
    scene += 60 * _smooth_field(rng, w, h, 4, 3)  # large soft blobs of colour
    image = Image.fromarray(scene.clip(0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 8))):  # foreground shapes in the class palette
        colour = tuple(int(c) for c in (style["palette"][rng.integers(0, 3)] + rng.normal(0, 15, 3)).clip(0, 255))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(0.05, 0.3) * w, rng.uniform(0.05, 0.3) * h
        if rng.uniform() < style["ellipse_share"]:
            draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=colour)
        else:
            corners = rng.uniform(-1, 1, size=(int(rng.integers(3, 7)), 2)) * (rx, ry) + (cx, cy)
            draw.polygon([tuple(p) for p in corners], fill=colour)
    pixels = np.asarray(image.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    # Texture (grain of about two pixels) and sensor noise: the high-frequency content that makes JPEG
    # entropy decoding, the bulk of decode time, cost what it costs on a real photo.
    # Uniform noise of the same spread as Gaussian noise: to JPEG it is the same, and it draws 10x faster.
    grain = rng.random((h, w), dtype=np.float32) - 0.5
    grain = np.asarray(Image.fromarray(grain, "F").resize((width, height), Image.Resampling.BILINEAR))
    pixels += (style["texture"] * 3.46 * grain)[..., None]  # 3.46 = sqrt(12): unit standard deviation
    pixels += (rng.random(pixels.shape, dtype=np.float32) - 0.5) * (3.46 * NOISE_SIGMA)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")


def _write_one(job: tuple) -> int:
    path, dataset_seed, label, image_seed, size = job
    render_image(dataset_seed, label, image_seed, *size).save(path, "JPEG", quality=JPEG_QUALITY)
    return os.path.getsize(path)


def _jobs(root: Path, layout: str, classes: int, per_split: dict[str, int], min_size, max_size,
          seed: int) -> list[tuple]:
    names, jobs = class_names(classes), []
    for split, folder in zip(("train", "test"), LAYOUTS[layout]):
        for label, name in enumerate(names):
            class_dir = root / folder / name
            class_dir.mkdir(parents=True, exist_ok=True)
            for i in range(per_split[split]):
                image_seed = zlib.crc32(f"{split}/{label}/{i}".encode())  # independent of worker count and order
                size_rng = np.random.default_rng([seed, image_seed, 1])
                size = (int(size_rng.integers(min_size[0], max_size[0] + 1)),
                        int(size_rng.integers(min_size[1], max_size[1] + 1)))
                jobs.append((class_dir / f"{name.lower()}_{i:05d}.jpg", seed, label, image_seed, size))
    return jobs


def make_image_folder(
    root: Path | str,
    classes: int = 10,
    train_per_class: int = 100,
    test_per_class: int = 20,
    min_size: tuple[int, int] = (500, 375),
    max_size: tuple[int, int] = (1000, 750),
    seed: int = 0,
    layout: str = "nature",
    workers: int | None = None,
) -> Path:
    """Write `classes` class folders of JPEGs under `root` and return `root`.

    layout "nature": root/inaturalist_12K/{train,val}/<class>/ (val/ is the test set, as in nature_12K);
    "plain": root/{train,test}/<class>/. Sizes are (width, height), each drawn uniformly in
    [min_size, max_size]. `workers` processes render in parallel (default: every core). If `root` already
    holds exactly this dataset it is reused; a different synthetic dataset there is replaced.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} not in {tuple(LAYOUTS)}")
    if classes < 1 or train_per_class < 1 or test_per_class < 0:
        raise ValueError("need classes >= 1, train_per_class >= 1 and test_per_class >= 0")
    if not all(1 <= low <= high for low, high in zip(min_size, max_size)):
        raise ValueError(f"min_size {min_size} must be positive and at most max_size {max_size}")
    root = Path(root)
    spec = {
        "format": FORMAT_VERSION, "classes": classes, "train_per_class": train_per_class,
        "test_per_class": test_per_class,
        "min_size": list(min_size), "max_size": list(max_size), "seed": seed, "layout": layout, "quality": JPEG_QUALITY,
    }
    marker, pending = root / MARKER, root / PENDING
    if pending.exists():  # an earlier call was cut off: its images may be of another size or count than asked now
        _remove_ours(root, json.loads(pending.read_text()).get("layout", layout))
        marker.unlink(missing_ok=True)
    if marker.exists():
        written = json.loads(marker.read_text())
        if {k: written.get(k) for k in spec} == spec:
            return root
        _remove_ours(root, written.get("layout", layout))
        marker.unlink()
    write_text(pending, json.dumps(spec) + "\n")
    jobs = _jobs(root, layout, classes, {"train": train_per_class, "test": test_per_class}, min_size, max_size, seed)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = workers or cores
    if workers <= 1 or len(jobs) < 8:
        total = sum(map(_write_one, jobs))
    else:
        # Rendering is numpy and PIL work on whole images; processes use every core without GIL contention.
        with ProcessPoolExecutor(min(workers, len(jobs))) as pool:
            total = sum(pool.map(_write_one, jobs, chunksize=max(1, len(jobs) // (8 * workers))))
    write_text(marker, json.dumps({**spec, "images": len(jobs), "bytes": total}, indent=2) + "\n")
    pending.unlink()  # last: a run torn before this line is redone from scratch
    return root


def _remove_ours(root: Path, layout: str) -> None:
    """Remove the top folders an earlier call of ours wrote under `root`, and nothing else."""
    for folder in {Path(f).parts[0] for f in LAYOUTS.get(layout, LAYOUTS["nature"])}:
        shutil.rmtree(root / folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="folder to write the dataset into")
    parser.add_argument("--classes", type=int, default=10, help="number of classes")
    parser.add_argument("--per_class", type=int, default=100, help="training images per class")
    parser.add_argument("--test_per_class", type=int, default=20, help="test images per class")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed")
    parser.add_argument("--layout", choices=tuple(LAYOUTS), default="nature",
                        help="nature: inaturalist_12K/{train,val}; plain: {train,test}")
    args = parser.parse_args(argv)
    root = make_image_folder(args.root, args.classes, args.per_class, args.test_per_class, seed=args.seed,
                             layout=args.layout)
    meta = json.loads((root / MARKER).read_text())
    print(f"{meta['images']} synthetic JPEGs ({meta['bytes'] / 1e6:.0f} MB) in {root}; train with --data_dir={root}")


if __name__ == "__main__":
    main()
