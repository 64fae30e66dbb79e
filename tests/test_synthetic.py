"""The synthetic dataset: nature_12K layout, JPEG sizes in range, reproducible, and readable by the harness."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import data.synthetic
from data.layout import locate_dataset
from data.scan import scan_folder
from data.synthetic import MARKER, PENDING, class_names, main, make_image_folder

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


def test_a_call_cut_off_mid_write_is_cleaned_up_by_the_next_one(tmp_path, monkeypatch):
    write_one, written = data.synthetic._write_one, []

    def cut_off_after_five(job):
        if len(written) == 5:
            raise KeyboardInterrupt
        written.append(job)
        return write_one(job)

    monkeypatch.setattr(data.synthetic, "_write_one", cut_off_after_five)
    with pytest.raises(KeyboardInterrupt):
        make_image_folder(tmp_path, workers=1, **{**SMALL, "train_per_class": 4})
    assert not (tmp_path / MARKER).exists() and (tmp_path / PENDING).exists()
    monkeypatch.setattr(data.synthetic, "_write_one", write_one)

    # asked smaller: nothing left over
    make_image_folder(tmp_path, workers=1, **{**SMALL, "classes": 2, "train_per_class": 1})
    train = tmp_path / "inaturalist_12K/train"
    assert sorted(p.name for p in train.iterdir()) == sorted(class_names(2))
    assert len(list(train.rglob("*.jpg"))) == 2 and not (tmp_path / PENDING).exists()
    assert json.loads((tmp_path / MARKER).read_text())["images"] == 4


def test_val_images_are_new_images_not_copies_of_training_images(synthetic_root):
    base = synthetic_root / "inaturalist_12K"
    train = {path.read_bytes() for path in (base / "train").rglob("*.jpg")}
    val = [path.read_bytes() for path in (base / "val").rglob("*.jpg")]
    assert len(val) == 3 and not train.intersection(val)


def test_a_fixed_size_request_gives_exactly_that_width_and_height(tmp_path):
    root = make_image_folder(tmp_path, classes=1, train_per_class=2, test_per_class=1, min_size=(48, 36),
                             max_size=(48, 36), workers=1)
    for path in root.rglob("*.jpg"):
        with Image.open(path) as image:
            assert image.size == (48, 36)  # (width, height), both bounds inclusive


def mean_colour(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(axis=0)


def test_classes_differ_in_colour_far_more_than_images_within_a_class(tmp_path):
    """What makes the demo learnable: each class has its own colours, so class means sit far apart."""
    root = make_image_folder(tmp_path, classes=4, train_per_class=4, test_per_class=0, min_size=(64, 48),
                             max_size=(64, 48), workers=1)
    means = {}
    for class_dir in sorted((root / "inaturalist_12K/train").iterdir()):
        means[class_dir.name] = [mean_colour(path) for path in sorted(class_dir.iterdir())]
    within = np.mean([np.var(np.array(images), axis=0).sum() for images in means.values()])
    between = np.var(np.array([np.mean(images, axis=0) for images in means.values()]), axis=0).sum()
    # With one shared style the ratio is about 1/4 (the variance of a mean of 4 images); per-class styles give ~8.
    assert between / within > 2.0


def test_a_different_seed_replaces_the_dataset(tmp_path):
    first = make_image_folder(tmp_path, workers=1, **SMALL)
    before = {p.relative_to(first): p.read_bytes() for p in first.rglob("*.jpg")}
    make_image_folder(tmp_path, workers=1, seed=1, **SMALL)
    after = {p.relative_to(first): p.read_bytes() for p in first.rglob("*.jpg")}
    assert json.loads((first / MARKER).read_text())["seed"] == 1
    assert before.keys() == after.keys() and all(before[k] != after[k] for k in before)


def test_command_line_writes_the_counts_it_is_given(tmp_path, capsys):
    # The README's demo: python -m data.synthetic demo_data --classes 3 --per_class 30
    main([str(tmp_path), "--classes", "2", "--per_class", "1", "--test_per_class", "2", "--seed", "5"])
    base = tmp_path / "inaturalist_12K"
    for split, count in (("train", 1), ("val", 2)):
        assert sorted(p.name for p in (base / split).iterdir()) == sorted(class_names(2))
        assert all(len(list(d.iterdir())) == count for d in (base / split).iterdir())
    assert json.loads((tmp_path / MARKER).read_text())["seed"] == 5
    assert f"--data_dir={tmp_path}" in capsys.readouterr().out
