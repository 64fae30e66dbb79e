"""Helpers shared by the data, trainer and sweep tests: changing a dataset on disk the way users do."""

from __future__ import annotations

from pathlib import Path

from PIL import Image


def shrink_in_place(path: Path) -> None:
    """Replace an image by a smaller re-encoded copy under the same name (a resized export of a dataset)."""
    with Image.open(path) as image:
        smaller = image.convert("RGB").resize((image.width // 2 + 1, image.height // 2 + 1))
    smaller.save(path, quality=60)
