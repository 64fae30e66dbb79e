"""The synthetic dataset: nature_12K layout, JPEG sizes in range, reproducible, and readable by the harness."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from data.layout import locate_dataset
from data.scan import scan_folder
from data.synthetic import MARKER, class_names, make_image_folder

SMALL = dict(classes=3, train_per_class=3, test_per_class=1, min_size=(40, 30), max_size=(64, 48))


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("synthetic"), workers=1, **SMALL)


def test_layout_and_sizes_are_those_asked_for(synthetic_root):
    base = synthetic_root / "inaturalist_12K"
    for split, per_class in (("train", 3), ("val", 1)):
        assert sorted(p.name for p in (base / split).iterdir()) == sorted(class_names(3))
        for class_dir in (base / split).iterdir():
            files = sorted(class_dir.iterdir())
            assert len(files) == per_class
            for path in files:
                with Image.open(path) as image:
                    assert image.format == "JPEG" and image.mode == "RGB"
                    assert 40 <= image.width <= 64 and 30 <= image.height <= 48


def test_harness_finds_and_indexes_it(synthetic_root, tmp_path):
    layout = locate_dataset(synthetic_root, download=False)
    assert layout.test_dir == synthetic_root / "inaturalist_12K" / "val"
    index = scan_folder(layout.train_dir, cache_dir=tmp_path, verbose=False)
    assert len(index) == 9 and not index.skipped and index.classes == tuple(sorted(class_names(3)))


def test_same_seed_gives_the_same_bytes_whatever_the_worker_count(synthetic_root, tmp_path):
    again = make_image_folder(tmp_path / "again", workers=2, **{**SMALL, "classes": 2})
    for name in class_names(2):
        first = sorted((synthetic_root / "inaturalist_12K/train" / name).iterdir())[0]
        second = sorted((again / "inaturalist_12K/train" / name).iterdir())[0]
        assert first.read_bytes() == second.read_bytes()


def test_an_existing_dataset_is_reused_and_a_different_one_replaced(tmp_path):
    root = make_image_folder(tmp_path, workers=1, **SMALL)
    first = next((root / "inaturalist_12K/train").rglob("*.jpg"))
    stamp = first.stat().st_mtime_ns
    make_image_folder(tmp_path, workers=1, **SMALL)
    assert first.stat().st_mtime_ns == stamp
    make_image_folder(tmp_path, workers=1, **{**SMALL, "classes": 2, "layout": "plain"})
    assert not (root / "inaturalist_12K").exists()
    assert sorted(p.name for p in (root / "train").iterdir()) == sorted(class_names(2))
    assert json.loads((root / MARKER).read_text())["layout"] == "plain"
