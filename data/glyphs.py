"""Write glyph image folders: classes only their shape tells apart (the offline demo's data, the transfer test's).

Each class is a glyph, two random pen strokes fixed by its label (a letter of an unknown alphabet), drawn in every
image with ink and paper of random colours (either one the lighter), a random pose and stroke width, and pixel noise:
colour says nothing about the class, shape says everything. A backbone pretrained on some glyphs learns stroke
detectors that ignore colour, which unseen glyphs then need; a CNN trained from scratch on a few images of them fits
their colours instead. Images are 37 px, a 32 px crop at resnet18's 256/224 resize ratio, cheap to train on a CPU.

Every image is drawn from its own seed (dataset seed, label, index), so the same label and seed give the same images
whatever else is written; test images take indices from TEST_FIRST_INDEX on, a stream no training set reaches. A marker
file records what was written: asking again for the same folder reuses it, and another request replaces it.

    python -m data.glyphs DIR [--first_label 0 --classes 16 --per_class 100 --test_per_class 0 --seed 0]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from common.atomic import write_text
from common.errors import EXIT_USER_ERROR, UserError

IMAGE_SIZE = round(32 * 256 / 224)  # 37: centre-cropped to 32 px as resnet18's metadata does
SUPERSAMPLE = 4  # strokes drawn at 4x and box-filtered down: anti-aliased edges, as a camera sees them
TEST_FIRST_INDEX = 1_000_000  # test images are indices from here on: never a training image, whatever --per_class
MARKER = "glyphs.json"
SPLITS = ("train", "test")  # the layout data/layout.py reads: train/ and a held-out test/ of class folders
FORMAT_VERSION = 1


def glyph(label: int) -> list[np.ndarray]:
    """The class: two strokes of 2-3 points each, in a square of side 1.6 around the origin."""
    rng = np.random.default_rng([91, label])
    return [rng.uniform(-0.8, 0.8, size=(int(rng.integers(2, 4)), 2)) for _ in range(2)]


def luminance(colour: np.ndarray) -> float:
    return float(colour @ (0.299, 0.587, 0.114))


def draw(label: int, rng: np.random.Generator) -> Image.Image:
    """One image of glyph `label`: everything but the strokes' shape drawn at random from `rng`."""
    while True:  # ink and paper at least 70 grey levels apart, so the glyph is visible whichever is lighter
        paper, ink = rng.uniform(0, 255, size=(2, 3))
        if abs(luminance(paper) - luminance(ink)) > 70:
            break
    side = IMAGE_SIZE * SUPERSAMPLE
    image = Image.new("RGB", (side, side), tuple(int(c) for c in paper))
    pen = ImageDraw.Draw(image)
    angle = np.deg2rad(rng.uniform(-20, 20))
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    scale = rng.uniform(0.7, 0.95) * 0.4 * side  # the glyph stays inside the centre crop
    centre = side / 2 + rng.uniform(-0.1, 0.1, size=2) * side
    width = int(rng.uniform(0.08, 0.12) * side)
    colour = tuple(int(c) for c in ink)
    for stroke in glyph(label):
        points = (stroke + rng.normal(0, 0.06, stroke.shape)) @ rotation.T * scale + centre  # a hand's wobble
        points = [tuple(p) for p in points]
        pen.line(points, fill=colour, width=width, joint="curve")
        for x, y in (points[0], points[-1]):  # round pen tips
            pen.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill=colour)
    pixels = np.asarray(image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX), dtype=np.float32)
    pixels += rng.normal(0, 12, pixels.shape)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")


def write_glyphs(folder: Path, labels: Iterable[int], per_class: int, seed: int, first_index: int = 0) -> None:
    """folder/glyph_<label>/<index>.png for `per_class` indices from `first_index`; each image from its own seed
    (seed, label, index)."""
    for label in labels:
        class_dir = Path(folder) / f"glyph_{label:03d}"
        class_dir.mkdir(parents=True, exist_ok=True)
        for index in range(first_index, first_index + per_class):
            draw(label, np.random.default_rng([seed, label, index])).save(class_dir / f"{index:03d}.png")


def make_glyph_folder(root: Path | str, first_label: int = 0, classes: int = 16, per_class: int = 100,
                      test_per_class: int = 0, seed: int = 0) -> Path:
    """root/train/glyph_<label>/ for labels first_label.., and root/test/ the same with `test_per_class` other images
    of each glyph (none when 0); returns `root`. Reused when `root` holds exactly this; replaced when it holds other
    glyphs; refused when its train/ or test/ holds anything else."""
    if first_label < 0 or classes < 2 or per_class < 1 or test_per_class < 0:
        raise UserError(f"glyphs: need --first_label >= 0, --classes >= 2, --per_class >= 1 and --test_per_class >= 0, "
                        f"got {first_label}, {classes}, {per_class}, {test_per_class}")
    if per_class > TEST_FIRST_INDEX:
        raise UserError(f"glyphs: --per_class {per_class} is more than {TEST_FIRST_INDEX}, where test images start")
    root = Path(root)
    spec = {"format": FORMAT_VERSION, "first_label": first_label, "classes": classes, "per_class": per_class,
            "test_per_class": test_per_class, "seed": seed}
    marker = root / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return root
    for split in SPLITS:  # another set of glyphs (or a cut-off write) goes whole: no stale class beside the new ones
        folder = root / split
        others = [p.name for p in folder.iterdir() if not p.name.startswith("glyph_")] if folder.is_dir() else []
        if others:
            raise UserError(f"glyphs: {folder} holds {', '.join(sorted(others)[:3])}, which are not glyphs written "
                            "here: pass a new folder")
    marker.unlink(missing_ok=True)
    for split in SPLITS:
        shutil.rmtree(root / split, ignore_errors=True)
    labels = range(first_label, first_label + classes)
    write_glyphs(root / "train", labels, per_class, seed)
    if test_per_class:
        write_glyphs(root / "test", labels, test_per_class, seed, first_index=TEST_FIRST_INDEX)
    write_text(marker, json.dumps(spec) + "\n")  # last: a write cut off before it is redone by the next call
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data.glyphs", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="folder to write train/ (and test/) into")
    parser.add_argument("--first_label", type=int, default=0, help="label of the first glyph; the next are +1, +2, ...")
    parser.add_argument("--classes", type=int, default=16, help="number of glyphs")
    parser.add_argument("--per_class", type=int, default=100, help="training images per glyph")
    parser.add_argument("--test_per_class", type=int, default=0, help="held-out test images per glyph (test/)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the images' colours, pose and noise")
    args = parser.parse_args(argv)
    try:
        root = make_glyph_folder(args.root, args.first_label, args.classes, args.per_class, args.test_per_class,
                                 args.seed)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    images = args.classes * (args.per_class + args.test_per_class)
    print(f"{images} glyph images of labels {args.first_label}-{args.first_label + args.classes - 1} in {root}; "
          f"train with --data_dir={root}")


if __name__ == "__main__":
    main()
