"""Open any image file as 8-bit RGB, upright, at a working resolution: the one decode path of the harness.

Every consumer (the scan, the decoded-image cache, on-the-fly loading, the test grid) goes through
`decode_working`, so cached and uncached training see bit-identical pixels. It is also the one admission check:
no image is decoded beyond a pixel budget and an aspect-ratio limit, both read from its header first.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# The pixels decode_working gives: caches of decoded images, and of features computed from them, carry it in
# their keys, so a change in decoding rebuilds them. 2: 16-bit images scaled by their format, not their maximum.
# 3: torchvision's Resize + CenterCrop geometry (long side truncated, the square placed for the later centre crop).
DECODE_VERSION = 3

# What an image may be before it is decoded: a PNG of a few hundred bytes can declare 100000 x 1 pixels, and
# resizing its short side to the working size would then need gigabytes. Both limits are read from the header.
MAX_IMAGE_PIXELS = 2**26  # 67 megapixels, 8192 x 8192: any camera photo; decoding one takes at most ~400 MB
# long side / short side: wide panoramas pass; 20 x the working size is the resize's largest image
MAX_ASPECT_RATIO = 20


# PIL warns at open above its own, higher limit; admission_problem refuses those images with its own one-line reason.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageRefused(ValueError):
    """An image the admission check refuses (too many pixels, too extreme a shape): the reason in words."""


def admission_problem(width: int, height: int) -> str | None:
    """Why an image of `width` x `height` pixels is not decoded, or None when it may be."""
    if min(width, height) < 1:
        return "empty image"
    if width * height > MAX_IMAGE_PIXELS:
        return (f"{width}x{height} pixels is more than the {MAX_IMAGE_PIXELS:,} an image may have "
                f"(a decompression bomb, or a huge scan): resize it")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        return f"{width}x{height} pixels is more elongated than {MAX_ASPECT_RATIO}:1: crop it"
    return None


def _admit(image: Image.Image) -> None:
    """Refuse, from the header alone, an image whose decoding or resizing would exhaust memory."""
    problem = admission_problem(*image.size)
    if problem:
        raise ImageRefused(problem)


_INTERPOLATION = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


def to_rgb(image: Image.Image) -> Image.Image:
    """Grayscale, CMYK, palette, alpha and 16-bit images become 8-bit RGB (alpha composited on white)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16"):  # 16-bit by format: a dark image stays dark
            peak = 65535.0
        else:  # 32-bit int or float (rare): the range is not in the file; guess from the values
            peak = (65535.0 if values.max(initial=0) > 255
                    else 1.0 if image.mode == "F" and values.max(initial=0) <= 1 else 255.0)
        gray = np.clip(values / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def open_rgb(path: Path | str, min_side: int | None = None) -> Image.Image:
    """Decode `path` to an upright RGB image whose short side is still at least `min_side`.

    JPEG draft mode lets libjpeg decode at 1/2, 1/4 or 1/8 scale, which is several times cheaper than
    decoding a 1000x750 photo in full and then throwing most pixels away.
    """
    with Image.open(path) as image:
        _admit(image)  # a file changed since the scan checked it is still never decoded past the limits
        if min_side and image.format == "JPEG":
            # EXIF rotation may swap width and height, so ask for a square of min_side: both sides stay >= it.
            image.draft("RGB", (min_side, min_side))
        image.load()
        image = ImageOps.exif_transpose(image)
        return to_rgb(image)


def _centre_offset(extra: int) -> int:
    """Where torchvision's CenterCrop starts a crop `extra` pixels
    shorter than the side: Python's round, half to even."""
    return int(round(extra / 2.0))


def resize_center_square(image: Image.Image, size: int, interpolation: str = "bilinear",
                         crop_size: int | None = None) -> Image.Image:
    """Resize the short side to `size`, then cut a `size` x `size` square whose centre crop of `crop_size` (the
    default: `size`, the square itself) is, pixel for pixel, torchvision's Resize(size) + CenterCrop(crop_size).

    The square is placed for that crop, not simply centred: torchvision crops the long side at
    round((long - crop) / 2) in one step, and two centred crops (long -> size -> crop) round twice, a pixel off
    for about half of all image sizes whenever size - crop is not a multiple of 4 (inception_v3: 342 -> 299).
    """
    crop_size = size if crop_size is None else crop_size
    if not 0 < crop_size <= size:
        raise ValueError(f"crop_size {crop_size} must lie in 1..{size} (the working size)")
    width, height = image.size
    short, long = min(width, height), max(width, height)
    # torchvision's _compute_resized_output_size: the long side truncated, computed in this order (floats differ).
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if width <= height else (new_long, size)
    if (new_w, new_h) != (width, height):
        # On a PIL image torchvision's Resize calls this same PIL resize (always antialiased): identical pixels.
        image = image.resize((new_w, new_h), _INTERPOLATION[interpolation])
    # EvalTransform later crops at _centre_offset(size - crop_size); together they start where torchvision does.
    offset = _centre_offset(new_long - crop_size) - _centre_offset(size - crop_size)
    left, top = (0, offset) if width <= height else (offset, 0)
    return image.crop((left, top, left + size, top + size))


def decode_working(path: Path | str, size: int, interpolation: str = "bilinear",
                   crop_size: int | None = None) -> np.ndarray:
    """The image at `path` as a uint8 array of shape (size, size, 3): upright, RGB, short side resized, the
    square placed so that EvalTransform's centre crop of `crop_size` is torchvision's (see resize_center_square)."""
    image = resize_center_square(open_rgb(path, min_side=size), size, interpolation, crop_size)
    return np.asarray(image, dtype=np.uint8)


def check_image(path: Path | str) -> str | None:
    """None when `path` is admitted (see admission_problem) and decodes fully, else a short reason. Catches
    truncated files, not just bad headers."""
    try:
        with Image.open(path) as image:
            problem = admission_problem(*image.size)  # before decoding: the header is all that has been read
            if problem:
                return problem
            if image.format == "JPEG":
                image.draft("RGB", (64, 64))  # a cheap full pass over the entropy-coded data
            image.load()
    except Exception as exc:  # PIL raises many types for bad files; any of them means unusable
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else 'unreadable'}"
    return None
