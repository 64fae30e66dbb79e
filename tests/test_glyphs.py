"""The glyph folders: the same images for the same labels and seed, one class folder per glyph, a shape fixed by the
label under colours drawn at random, and a folder the harness finds, reuses and replaces as asked."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from common.errors import EXIT_USER_ERROR, UserError
from data.glyphs import IMAGE_SIZE, draw, glyph, main, make_glyph_folder, write_glyphs
from data.layout import locate_dataset
from data.scan import scan_folder


def images(label: int, seed: int, count: int = 20) -> np.ndarray:
    return np.stack([np.asarray(draw(label, np.random.default_rng([seed, label, index])), dtype=np.float32)
                     for index in range(count)])


def ink(batch: np.ndarray) -> np.ndarray:
    """Where each image differs from its paper (its corner pixel): the strokes."""
    return (np.abs(batch - batch[:, :1, :1, :]).mean(-1) > 35).astype(np.float32)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_the_same_label_and_seed_give_the_same_bytes_whatever_else_is_written(tmp_path):
    write_glyphs(tmp_path / "a", [3, 4], 2, seed=5)
    write_glyphs(tmp_path / "b", [4], 2, seed=5)
    write_glyphs(tmp_path / "c", [4], 2, seed=6)
    for name in ("000.png", "001.png"):
        assert (tmp_path / "a/glyph_004" / name).read_bytes() == (tmp_path / "b/glyph_004" / name).read_bytes()
        assert (tmp_path / "a/glyph_004" / name).read_bytes() != (tmp_path / "c/glyph_004" / name).read_bytes()


def test_a_glyph_keeps_its_shape_while_its_colours_vary():
    assert all(np.array_equal(a, b) for a, b in zip(glyph(3), glyph(3)))
    same, other = images(3, seed=0), images(4, seed=0)
    # The strokes, averaged over poses, are the label's: two seeds of one glyph agree, two glyphs do not.
    assert correlation(ink(same).mean(0), ink(images(3, seed=1)).mean(0)) > 0.85
    assert correlation(ink(same).mean(0), ink(other).mean(0)) < 0.6
    # Colour says nothing: each glyph's images spread over colours far more than the glyphs' average colours differ.
    colours_same, colours_other = same.mean((1, 2)), other.mean((1, 2))
    assert (colours_same.std(0) > 40).all() and (colours_other.std(0) > 40).all()
    assert (np.abs(colours_same.mean(0) - colours_other.mean(0)) < colours_same.std(0) / 2).all()


def test_the_cli_writes_a_dataset_the_harness_scans(tmp_path, capsys):
    root = tmp_path / "target"
    main([str(root), "--first_label", "100", "--classes", "3", "--per_class", "4", "--test_per_class", "2",
          "--seed", "2"])
    assert f"--data_dir={root}" in capsys.readouterr().out
    layout = locate_dataset(root, download=False)
    assert (layout.train_dir, layout.test_dir) == (root / "train", root / "test")
    train = scan_folder(layout.train_dir, cache_dir=tmp_path / "cache", verbose=False)
    test = scan_folder(layout.test_dir, cache_dir=tmp_path / "cache", verbose=False)
    assert train.classes == test.classes == ("glyph_100", "glyph_101", "glyph_102")
    assert (len(train), len(test)) == (12, 6) and not train.skipped
    with Image.open(next((root / "train" / "glyph_100").iterdir())) as image:
        assert image.size == (IMAGE_SIZE, IMAGE_SIZE) and image.mode == "RGB"
    # Test images are other draws of the same glyphs, never a training image.
    trained = {p.read_bytes() for p in (root / "train").rglob("*.png")}
    assert not trained & {p.read_bytes() for p in (root / "test").rglob("*.png")}


def test_the_same_folder_is_reused_other_glyphs_replace_it_and_foreign_files_are_refused(tmp_path, capsys):
    root = make_glyph_folder(tmp_path / "glyphs", first_label=0, classes=3, per_class=2)
    first = root / "train" / "glyph_000" / "000.png"
    stamp = first.stat().st_mtime_ns
    make_glyph_folder(root, first_label=0, classes=3, per_class=2)
    assert first.stat().st_mtime_ns == stamp
    make_glyph_folder(root, first_label=10, classes=2, per_class=2)  # no stale glyph beside the new ones
    assert sorted(p.name for p in (root / "train").iterdir()) == ["glyph_010", "glyph_011"]
    (tmp_path / "photos" / "train" / "cats").mkdir(parents=True)
    with pytest.raises(UserError, match="not glyphs written here"):
        make_glyph_folder(tmp_path / "photos")
    assert (tmp_path / "photos" / "train" / "cats").is_dir()
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "small"), "--classes", "1"])
    assert exit_info.value.code == EXIT_USER_ERROR and "error: glyphs: need" in capsys.readouterr().err
