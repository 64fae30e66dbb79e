#!/usr/bin/env python
"""What decoding costs per image: the scan's integrity pass, the image cache's draft-mode decode, a naive decode.

On one synthetic iNaturalist-like JPEG set (`data/synthetic.py`, 500x375 to 1000x750, quality 90), per image and
interleaved so that machine load hits all alike, on one core:
- scan: `data.images.check_image`, the integrity pass every dataset gets once (its result is cached by the
  folder's file list, sizes and mtimes);
- cache: `data.images.decode_working` at each backbone's resize size (JPEG draft mode, EXIF, RGB, resize, crop),
  what the decoded-image cache does once per dataset and size;
- naive: `Image.open(p).convert("RGB")` then a resize of the short side, what an ImageFolder pipeline does for
  every image in every epoch.
It prints milliseconds per image and the ratios scan / cache (what merging the two passes could save, once per
dataset) and naive / cache (what draft mode saves on every decode), and writes a section into RESULTS.md.

    python benchmarks/decode.py [--images_per_class 30] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from pipeline import device_name, write_section  # noqa: E402  (benchmarks/, the script's own folder)

from data.images import check_image, decode_working  # noqa: E402
from data.synthetic import make_image_folder  # noqa: E402
from models.weights import preprocessing_for  # noqa: E402

MODELS = ("mobilenet_v3_small", "resnet50", "vit_b_16", "inception_v3", "efficientnet_v2_s")


def naive_decode(path: Path, size: int) -> None:
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    width, height = rgb.size
    scale = size / min(width, height)
    rgb.resize((round(width * scale), round(height * scale)), Image.Resampling.BILINEAR)


def per_image_ms(paths: list[Path], sizes: dict[int, tuple[str, ...]], repeats: int) -> dict[str, float]:
    """Median over repeats of the mean milliseconds per image of each way, interleaved per repeat."""
    ways = {"scan": check_image}
    for size in sizes:
        ways[f"cache {size}"] = lambda p, s=size: decode_working(p, s)
        ways[f"naive {size}"] = lambda p, s=size: naive_decode(p, s)
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(repeats):
        for name, way in ways.items():
            started = time.perf_counter()
            for path in paths:
                way(path)
            times[name].append((time.perf_counter() - started) / len(paths) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def render(ms: dict[str, float], sizes: dict[int, tuple[str, ...]], count: int, command: str, args) -> str:
    lines = [
        "## Decoding · one core · per image",
        "",
        f"`{command}`",
        "",
        f"{datetime.date.today()}; {device_name(torch.device('cpu'))}; {count} synthetic JPEGs (500x375 to 1000x750, "
        f"quality 90); {args.repeats} repetition(s), medians.",
        "",
        "| resize px | backbones | scan ms | cache decode ms | naive decode ms | scan / cache | naive / cache |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for size, names in sorted(sizes.items()):
        cache, naive = ms[f"cache {size}"], ms[f"naive {size}"]
        lines.append(f"| {size} | {', '.join(names)} | {ms['scan']:.2f} | {cache:.2f} | {naive:.2f} | "
                     f"{ms['scan'] / cache:.2f} | {naive / cache:.1f}x |")
    lines += [
        "",
        "*scan / cache* is what one pass doing both jobs could save: a share of one image-cache build, once per",
        "dataset (the scan is cached by the folder's file list; the image cache by data and size), nothing in later",
        "runs. *naive / cache* is what draft-mode decoding saves on every decode of an ImageFolder pipeline.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--images_per_class", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work_dir", default=str(Path(tempfile.gettempdir()) / "finetune-sweeps-bench"),
                        help="the dataset (kept between invocations)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"),
                        help="results file; its decoding section is replaced")
    args = parser.parse_args(argv)
    root = make_image_folder(Path(args.work_dir) / f"data-{args.classes}x{args.images_per_class}", classes=args.classes,
                             train_per_class=args.images_per_class, test_per_class=max(1, args.images_per_class // 10))
    paths = sorted((root / "inaturalist_12K" / "train").rglob("*.jpg"))
    sizes: dict[int, tuple[str, ...]] = {}
    for name in MODELS:
        size = preprocessing_for(name, "imagenet").resize_size
        sizes[size] = (*sizes.get(size, ()), name)
    ms = per_image_ms(paths, sizes, args.repeats)
    command = " ".join(["python benchmarks/decode.py", *map(shlex.quote, argv if argv is not None else sys.argv[1:])])
    section = render(ms, sizes, len(paths), command, args)
    print(section)
    write_section(Path(args.out), section)


if __name__ == "__main__":
    main()
