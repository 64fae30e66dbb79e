"""Data layer: layout detection, scan robustness, the split, the image modes, transforms and stores."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.errors import UserError
from common.parsing import parse_bool
from common.preprocessing import Preprocessing
from data.augment import _POLICIES, EvalTransform, TrainTransform, _Policy, batch_generator
from data.cache import DecodedImageCache
from data.images import decode_working, open_rgb
from data.layout import locate_dataset
from data.loading import BatchLoader, DecodingStore
from data.scan import ImageIndex, check_same_classes, scan_folder
from data.split import stratified_split
from data_helpers import shrink_in_place

PRE = Preprocessing(crop_size=24, resize_size=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@pytest.fixture(scope="module")
def index(nature_dir):
    return scan_folder(locate_dataset(nature_dir, download=False).train_dir, verbose=False)


def test_layout_finds_inaturalist_level_and_uses_val_as_test(nature_dir):
    layout = locate_dataset(nature_dir, download=False)
    assert layout.root.name == "inaturalist_12K"
    assert layout.train_dir.name == "train" and layout.test_dir.name == "val"
    assert locate_dataset(layout.root, download=False) == layout


def test_layout_missing_is_one_line_error(tmp_path):
    with pytest.raises(UserError) as err:
        locate_dataset(tmp_path / "nowhere", download=False)
    assert "--data_dir" in str(err.value) and "\n" not in str(err.value)


def test_scan_excludes_bad_files_and_reports_once(nature_dir, capsys, tmp_path):
    train_dir = locate_dataset(nature_dir, download=False).train_dir
    index = scan_folder(train_dir, cache_dir=tmp_path)
    assert {p for p, _ in index.skipped} == {"Amphibia/broken_000.jpg", "Amphibia/notes.txt", "Aves/truncated_000.jpg"}
    out = capsys.readouterr().out
    assert out.count("skipped 3 unreadable") == 1
    assert not any(p in index.paths for p, _ in index.skipped)
    # A second scan is answered from the cache and finds the same.
    assert scan_folder(train_dir, cache_dir=tmp_path, verbose=False).paths == index.paths
    assert len(list(tmp_path.glob("scan-*.json"))) == 1


def test_every_image_mode_decodes_to_rgb(index):
    for i in range(len(index)):
        array = decode_working(index.absolute(i), 32)
        assert array.shape == (32, 32, 3) and array.dtype == np.uint8


def test_a_16_bit_image_keeps_its_brightness_whatever_its_own_maximum():
    from data.images import to_rgb

    def grey(value):
        return int(np.asarray(to_rgb(Image.fromarray(np.full((4, 4), value, dtype=np.uint16))))[0, 0, 0])

    assert Image.fromarray(np.full((4, 4), 200, dtype=np.uint16)).mode == "I;16"
    assert (grey(200), grey(300), grey(32896), grey(65535)) == (1, 1, 128, 255)  # dark stays dark, in order


def test_exif_orientation_is_applied(index):
    image = open_rgb(index.root / "Fungi" / "rotated_000.jpg")
    assert image.size == (40, 60)  # stored 60x40 landscape, displayed portrait
    assert min(image.getpixel((20, 2))) > 240  # the white band is on top once rotated


def test_empty_class_folder_and_empty_dataset_are_errors(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "a" / "x.png")
    (tmp_path / "train" / "b").mkdir()
    with pytest.raises(UserError, match=r"class folder .*b has no readable images"):
        scan_folder(tmp_path / "train", verbose=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no class sub-folders"):
        scan_folder(empty, verbose=False)


def test_a_single_class_is_refused_and_classes_one_level_too_deep_are_pointed_at(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "nested" / "images" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "nested" / "images" / name / "x.png")
    with pytest.raises(UserError,
                       match=r"single class folder \(images\).*sub-folders \(a, b\) "
                             r"look like the classes: move them up into .*nested$"):
        scan_folder(tmp_path / "nested", verbose=False)  # merged into one class, it would train to 100 %
    with pytest.raises(UserError, match=r"single class folder \(a\).*add a folder of images for each further class"):
        scan_folder(_only(tmp_path, "a"), verbose=False)


def _only(tmp_path, name):
    folder = tmp_path / "one"
    (folder / name).mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / name / "x.png")
    return folder


def test_one_folder_reached_by_other_paths_shares_its_caches(nature_dir, tmp_path, monkeypatch):
    layout = locate_dataset(nature_dir, download=False)
    link = tmp_path / "link"
    link.symlink_to(layout.train_dir)
    monkeypatch.chdir(layout.train_dir.parent)
    spellings = [layout.train_dir, link, Path(layout.train_dir.name), layout.train_dir / ".." / layout.train_dir.name]
    fingerprints = {scan_folder(p, cache_dir=tmp_path / "cache", verbose=False).fingerprint for p in spellings}
    assert len(fingerprints) == 1
    assert len(list((tmp_path / "cache").glob("scan-*.json"))) == 1


def test_mismatched_test_classes_are_an_error(nature_dir, tmp_path):
    layout = locate_dataset(nature_dir, download=False)
    test_copy = tmp_path / "val"
    shutil.copytree(layout.test_dir, test_copy)
    shutil.rmtree(test_copy / "Aves")
    train = scan_folder(layout.train_dir, verbose=False)
    with pytest.raises(UserError, match="missing \\['Aves'\\]"):
        check_same_classes(train.classes, str(train.root), scan_folder(test_copy, verbose=False))


def test_the_data_hash_sees_replaced_files_and_not_which_machine_holds_them(index, tmp_path):
    """Another machine (a copy elsewhere, new mtimes) resumes
    the same run; resized copies under the same names do not."""
    copy = tmp_path / "elsewhere"
    shutil.copytree(index.root, copy)  # new folder, new mtimes
    os.utime(next(copy.rglob("*.jpg")), (1, 1))
    first, moved = stratified_split(index), stratified_split(scan_folder(copy, verbose=False))
    assert (moved.hash, moved.data_hash) == (first.hash, first.data_hash) and first.data_hash != first.hash
    shrink_in_place(sorted(copy.rglob("*.jpg"))[0])
    replaced = stratified_split(scan_folder(copy, verbose=False))
    assert replaced.hash == first.hash and replaced.data_hash != first.data_hash


def test_split_is_stratified_stable_and_disjoint(index):
    split = stratified_split(index, val_fraction=0.25, seed=3)
    assert set(split.train).isdisjoint(split.val)
    assert len(split.train) + len(split.val) == len(index)
    for label in range(len(index.classes)):
        n = int((index.labels == label).sum())
        assert int((index.labels[split.val] == label).sum()) == round(n * 0.25)
    again = stratified_split(index, val_fraction=0.25, seed=3)
    assert np.array_equal(split.train, again.train) and split.hash == again.hash
    other = stratified_split(index, val_fraction=0.25, seed=4)
    assert other.hash != split.hash and not np.array_equal(other.val, split.val)


def test_subsets_are_nested_and_leave_validation_alone(index):
    full = stratified_split(index, 0.2, seed=0)
    half = stratified_split(index, 0.2, seed=0, subset_fraction=0.5)
    quarter = stratified_split(index, 0.2, seed=0, subset_fraction=0.25)
    assert np.array_equal(full.val, half.val) and np.array_equal(full.val, quarter.val)
    assert set(quarter.train) <= set(half.train) <= set(full.train)
    assert len(quarter.train) < len(half.train) < len(full.train)
    for label in range(len(index.classes)):  # still stratified
        assert (index.labels[quarter.train] == label).sum() >= 1


def test_a_runs_split_never_contains_test_images_and_follows_split_seed(nature_dir, tmp_path, monkeypatch):
    """Pitfalls 7 and 8 through what a run loads: its train and validation images are train/'s, none is a test
    image (by content: the fixture's train/ and val/ share file names), and the split comes from split_seed."""
    import hashlib

    import trainer.inputs
    from trainer.config import parse_run_config

    seeds = []
    real_split = trainer.inputs.stratified_split
    monkeypatch.setattr(trainer.inputs, "stratified_split", lambda index, val, seed,
                        subset: (seeds.append(seed), real_split(index, val, seed, subset))[1])
    config = parse_run_config(
        {"data_dir": str(nature_dir), "cache_dir": str(tmp_path / "cache"), "split_seed": 7, "seed": 3})
    data = trainer.inputs.load_split(trainer.inputs.InputSettings.of(config))
    assert seeds == [7]
    layout = locate_dataset(nature_dir, download=False)
    digest = lambda path: hashlib.sha256(path.read_bytes()).hexdigest()  # noqa: E731
    test_images = {digest(p) for p in layout.test_dir.rglob("*") if p.is_file()}
    used = [data.index.absolute(int(i)) for i in np.concatenate([data.split.train, data.split.val])]
    assert len(used) == len(data.index) and test_images
    assert all(p.resolve().is_relative_to(layout.train_dir.resolve()) for p in used)
    assert not {digest(p) for p in used} & test_images
    other = trainer.inputs.load_split(
        trainer.inputs.InputSettings.of(parse_run_config({**config.__dict__, "split_seed": 8})))
    assert not np.array_equal(other.split.val, data.split.val)  # the seed decides the split


@pytest.mark.parametrize("text,expected", [("false", False), ("no", False), ("0", False), ("off", False),
                                           ("True", True), ("yes", True), ("1", True)])
def test_booleans_from_strings(text, expected):
    assert parse_bool(text) is expected


def test_bad_boolean_is_user_error():
    with pytest.raises(UserError, match="not a boolean"):
        parse_bool("maybe", "batch_norm")


def _batch(index, n=6):
    return torch.from_numpy(DecodingStore(index, 32).read(np.arange(n)))


def test_eval_transform_is_deterministic_and_normalises(index):
    batch = _batch(index)
    transform = EvalTransform(PRE)
    first, second = transform(batch), transform(batch)
    assert first.shape == (6, 3, 24, 24) and first.dtype == torch.float32
    assert torch.equal(first, second)
    grey = torch.full((1, 32, 32, 3), 128, dtype=torch.uint8)
    expected = (128 / 255 - PRE.mean[0]) / PRE.std[0]
    assert torch.allclose(transform(grey)[0, 0], torch.full((24, 24), expected), atol=1e-5)


def test_train_transform_augments_per_image_and_reproducibly(index):
    batch = _batch(index)
    transform = TrainTransform(PRE, "strong")
    a = transform(batch, batch_generator(0, 1, 0))
    b = transform(batch, batch_generator(0, 1, 0))
    c = transform(batch, batch_generator(0, 2, 0))
    assert a.shape == (6, 3, 24, 24)
    assert torch.equal(a, b)  # same (seed, epoch, batch) -> same augmentation, so resumes replay it
    assert not torch.equal(a, c)
    assert not torch.allclose(a, EvalTransform(PRE)(batch))
    none = TrainTransform(PRE, "none")
    assert not none.is_random and torch.equal(none(batch, batch_generator(0, 1, 0)), EvalTransform(PRE)(batch))


def test_channels_last_output(index):
    out = EvalTransform(PRE, channels_last=True)(_batch(index))
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_decoded_cache_matches_decoding_store(index, tmp_path):
    cache = DecodedImageCache.build_or_open(index, 32, "bilinear", tmp_path, progress=False)
    order = np.array([5, 0, 9, 3])
    assert np.array_equal(cache.read(order), DecodingStore(index, 32).read(order))
    reopened = DecodedImageCache.build_or_open(index, 32, "bilinear", tmp_path, progress=False)
    assert reopened.path == cache.path and len(list(tmp_path.glob("*.u8"))) == 1


def test_loader_workers_started_by_spawn_get_the_same_batches(index, tmp_path):
    """macOS starts worker processes by spawn, and Python 3.14 on Linux by forkserver: the stores travel to the
    workers pickled, the memory-mapped cache reopened there, not inherited."""
    import pickle

    cache = DecodedImageCache.build_or_open(index, 16, "bilinear", tmp_path, progress=False)
    indices = np.arange(len(index))
    expected = [images for images, _ in BatchLoader(cache, indices, index.labels, 8, seed=1, shuffle=True).epoch(1)]
    loader = BatchLoader(cache, indices, index.labels, 8, seed=1, shuffle=True, num_workers=1)
    loader.loader.multiprocessing_context = "spawn"
    got = [images for images, _ in loader.epoch(1)]
    assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected))
    decoding = pickle.loads(pickle.dumps(DecodingStore(index, 16)))  # the store when the cache is off
    assert np.array_equal(decoding.read(indices[:8]), cache.read(indices[:8]))


def test_batch_loader_order_is_seeded_and_resumable(index):
    indices = np.arange(len(index))
    store = DecodingStore(index, 16)
    loader = BatchLoader(store, indices, index.labels, 8, seed=1, shuffle=True, drop_last=True)
    epoch0 = [labels for _, labels in loader.epoch(0)]
    assert len(epoch0) == loader.num_batches() == len(index) // 8
    assert all(torch.equal(a, b) for a, b in zip(epoch0, [labels for _, labels in loader.epoch(0)]))
    tail = [labels for _, labels in loader.epoch(0, start_batch=2)]
    assert all(torch.equal(a, b) for a, b in zip(epoch0[2:], tail)) and len(tail) == len(epoch0) - 2
    epoch1 = [labels for _, labels in loader.epoch(1)]
    assert not all(torch.equal(a, b) for a, b in zip(epoch0, epoch1))


def test_validation_batches_are_identical_every_epoch_and_training_batches_are_not(index):
    """Pitfalls 2 and 3: validation never sees augmentation, training never loses it, whatever the epoch."""
    store = DecodingStore(index, 32)
    val = BatchLoader(store, np.arange(8), index.labels, 4)
    eval_transform, train_transform = EvalTransform(PRE), TrainTransform(PRE, "standard")
    first = [eval_transform(images) for images, _ in val.epoch(0)]
    later = [eval_transform(images) for images, _ in val.epoch(7)]
    assert all(torch.equal(a, b) for a, b in zip(first, later))
    train = BatchLoader(store, np.arange(8), index.labels, 8)
    (images, _), = list(train.epoch(0))
    assert not torch.equal(train_transform(images, batch_generator(0, 0, 0)),
                           train_transform(images, batch_generator(0, 1, 0)))
    with pytest.raises(Exception):  # frozen: nobody can switch a transform's behaviour after construction
        train_transform.level = "none"


def test_same_file_names_in_another_dataset_never_share_a_cache(tmp_path):
    """Two datasets with identical names but different pixels must get different cache files."""
    for name, colour in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
        for cls in ("x", "y"):
            (tmp_path / name / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (16, 16), colour).save(tmp_path / name / cls / f"{i}.png")
    first, second = scan_folder(tmp_path / "a", verbose=False), scan_folder(tmp_path / "b", verbose=False)
    assert first.paths == second.paths and first.fingerprint != second.fingerprint
    cache_a = DecodedImageCache.build_or_open(first, 16, "bilinear", tmp_path / "cache", progress=False)
    cache_b = DecodedImageCache.build_or_open(second, 16, "bilinear", tmp_path / "cache", progress=False)
    assert cache_a.path != cache_b.path and cache_b.read(np.array([0]))[0, 0, 0, 2] == 255


def test_the_image_cache_key_includes_interpolation(index, tmp_path):
    """Two runs at one size but different interpolation must not share cached pixels."""
    bilinear = DecodedImageCache.build_or_open(index, 16, "bilinear", tmp_path, progress=False)
    nearest = DecodedImageCache.build_or_open(index, 16, "nearest", tmp_path, progress=False)
    rows = np.arange(4)
    assert nearest.path != bilinear.path
    assert np.array_equal(nearest.read(rows),
                          np.stack([decode_working(index.absolute(i), 16, "nearest") for i in rows]))
    assert not np.array_equal(nearest.read(rows), bilinear.read(rows))


def test_a_cache_file_left_without_its_metadata_is_rebuilt(index, tmp_path):
    """A process killed between writing the .u8 and its .json leaves a cache that a later run rebuilds."""
    cache = DecodedImageCache.build_or_open(index, 16, "bilinear", tmp_path, progress=False)
    expected = cache.read(np.arange(len(index)))
    cache.path.with_suffix(".json").unlink()
    cache.path.write_bytes(b"")  # so pixels read back can only come from a rebuild
    rebuilt = DecodedImageCache.build_or_open(index, 16, "bilinear", tmp_path, progress=False)
    assert rebuilt.count == len(index) and np.array_equal(rebuilt.read(np.arange(len(index))), expected)


def test_the_split_hash_covers_the_validation_paths(index):
    """Pitfall 8: the same indices over one renamed validation image are another split."""
    import dataclasses

    split = stratified_split(index, 0.25, seed=3)
    val = set(split.val.tolist())
    renamed = dataclasses.replace(index, paths=tuple(p + "~" if i in val else p for i, p in enumerate(index.paths)))
    other = stratified_split(renamed, 0.25, seed=3)
    assert (other.train == split.train).all() and (other.val == split.val).all()
    assert other.hash != split.hash


def _hand_index(counts=(10, 10, 10), classes=("cat", "dog", "owl")):
    paths = tuple(f"{name}/{i:02d}.jpg" for name, n in zip(classes, counts) for i in range(n))
    return ImageIndex(Path("golden"), classes, paths, np.repeat(np.arange(len(classes)), counts))


def test_the_split_for_seed_0_is_pinned_across_versions():
    """Runs record and compare the split hash: any change to the shuffle moves images between train and val."""
    index = _hand_index()
    split = stratified_split(index, 0.2, seed=0)
    assert [index.paths[i] for i in split.val] == ["cat/00.jpg", "cat/02.jpg", "dog/01.jpg", "dog/02.jpg", "owl/01.jpg",
                                                   "owl/07.jpg"]
    assert len(split.train) == 24 and split.hash == "749770d852632d9f"


def test_the_split_hash_changes_with_the_training_subset(index):
    full = stratified_split(index, 0.2, seed=0)
    half = stratified_split(index, 0.2, seed=0, subset_fraction=0.5)
    assert np.array_equal(full.val, half.val) and half.hash != full.hash


def test_the_split_does_not_depend_on_the_order_images_were_listed_in(index):
    """The same files listed in another order (another OS, another scan) give the same train and val images."""
    import dataclasses

    order = np.random.default_rng(5).permutation(len(index))
    shuffled = dataclasses.replace(index, paths=tuple(index.paths[i] for i in order), labels=index.labels[order])
    split, other = stratified_split(index, 0.25, seed=3), stratified_split(shuffled, 0.25, seed=3)
    assert {index.paths[i] for i in split.val} == {shuffled.paths[i] for i in other.val}
    assert {index.paths[i] for i in split.train} == {shuffled.paths[i] for i in other.train}


def test_class_folders_the_test_set_lacks_are_named_before_training(nature_dir, tmp_path, capsys):
    from trainer.inputs import warn_if_test_classes_differ

    test = tmp_path / "val"
    for name in ("Amphibia", "Aves", "Insecta"):
        (test / name).mkdir(parents=True)
    warn_if_test_classes_differ(test, ("Amphibia", "Aves", "Fungi"))
    out = capsys.readouterr().out
    assert "missing ['Fungi'], extra ['Insecta']" in out and "agent.py test` will refuse" in out
    warn_if_test_classes_differ(test, ("Amphibia", "Aves", "Insecta"))
    assert capsys.readouterr().out == ""


def test_a_dataset_without_a_test_folder_trains_and_says_the_test_command_will_need_one(nature_dir, tmp_path, capsys):
    import trainer.inputs
    from trainer.config import parse_run_config

    shutil.copytree(nature_dir / "inaturalist_12K" / "train", tmp_path / "only" / "train")
    config = parse_run_config(
        {"data_dir": str(tmp_path / "only"), "cache_dir": str(tmp_path / "cache"), "download": False})
    assert len(trainer.inputs.load_split(trainer.inputs.InputSettings.of(config)).index) > 0
    out = capsys.readouterr().out
    assert "no val/ or test/ folder" in out and "agent.py test` will need" in out
    trainer.inputs.load_split(
        trainer.inputs.InputSettings.of(parse_run_config({**config.__dict__, "data_dir": str(nature_dir)})))
    assert "no val/ or test/" not in capsys.readouterr().out


def test_a_dataset_with_both_test_and_val_says_which_is_used(tmp_path, capsys):
    for folder in ("train/a", "val/a", "test/a"):
        (tmp_path / folder).mkdir(parents=True)
    layout = locate_dataset(tmp_path, download=False)
    assert layout.test_dir == tmp_path / "test" and "val/ is not used" in capsys.readouterr().out



# Behaviours pinned by the mutation audit of data/ and common/parsing.py.


def test_the_eval_crop_is_the_centre_of_the_working_square():
    """Validation sees the centre crop (torchvision's CenterCrop), not a corner of the image."""
    batch = torch.zeros((1, 32, 32, 3), dtype=torch.uint8)
    batch[:, 4:28, 4:28] = 255  # the 24x24 centre of a 32x32 square
    out = EvalTransform(PRE)(batch)
    white = torch.tensor([(1 - m) / s for m, s in zip(PRE.mean, PRE.std)]).view(3, 1, 1)
    assert torch.allclose(out[0], white.expand(3, 24, 24), atol=1e-5)


def test_every_batch_and_every_seed_draws_its_own_augmentation(index):
    """Within one epoch batch 1 is not cropped like batch 0, and runs with other seeds augment otherwise."""
    batch = _batch(index)
    transform = TrainTransform(PRE, "standard")
    first = transform(batch, batch_generator(0, 0, 0))
    assert not torch.equal(first, transform(batch, batch_generator(0, 0, 1)))
    assert not torch.equal(first, transform(batch, batch_generator(1, 0, 0)))


def test_standard_augmentation_mirrors_about_half_the_images():
    """Bright left half, dark right half: every standard crop straddles the middle, so an image was flipped
    exactly when its first column is darker than its last."""
    batch = torch.zeros((64, 32, 32, 3), dtype=torch.uint8)
    batch[:, :, :16] = 255
    out = TrainTransform(PRE, "standard")(batch, batch_generator(0, 0, 0))
    flipped = (out[:, 0, :, 0].mean(dim=1) < out[:, 0, :, -1].mean(dim=1)).sum().item()
    assert 16 <= flipped <= 48


def test_strong_augmentation_changes_colours_and_standard_does_not():
    """On a uniform image crops, flips and rotations change nothing; only the colour jitter of `strong` does."""
    batch = torch.empty((8, 32, 32, 3), dtype=torch.uint8)
    batch[...] = torch.tensor([200, 60, 40], dtype=torch.uint8)
    plain = EvalTransform(PRE)(batch)
    standard = TrainTransform(PRE, "standard")(batch, batch_generator(0, 0, 0))
    strong = TrainTransform(PRE, "strong")(batch, batch_generator(0, 0, 0))
    assert torch.allclose(standard, plain, atol=1e-4)
    changed = (strong - plain).abs().amax(dim=(1, 2, 3)) > 0.05
    assert changed.sum() >= 6


class _NoPixels:
    """A store without images: the labels a loader yields show which items each batch holds."""

    def read(self, indices):
        return np.zeros((len(indices), 1, 1, 3), dtype=np.uint8)


def _order(loader, epoch=0):
    return [labels.tolist() for _, labels in loader.epoch(epoch)]


def test_another_seed_gives_another_batch_order():
    items = np.arange(40)
    one = BatchLoader(_NoPixels(), items, items, 8, seed=1, shuffle=True)
    assert _order(one) == _order(BatchLoader(_NoPixels(), items, items, 8, seed=1, shuffle=True))
    assert _order(one) != _order(BatchLoader(_NoPixels(), items, items, 8, seed=2, shuffle=True))
    assert sorted(sum(_order(one), [])) == items.tolist()  # a permutation: every image once per epoch


def test_a_training_set_smaller_than_one_batch_still_trains_on_one_batch():
    """drop_last drops a ragged last batch, never the whole epoch of a tiny subset."""
    items = np.arange(5)
    loader = BatchLoader(_NoPixels(), items, items, 8, seed=0, shuffle=True, drop_last=True)
    assert loader.num_batches() == 1 and sorted(sum(_order(loader), [])) == items.tolist()


def test_a_file_rewritten_with_the_same_size_is_checked_again(tmp_path):
    """The scan cache is keyed by sizes and mtimes: a file replaced by a broken one of equal size is caught."""
    for cls in ("x", "y"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (16, 16), (i * 90, 40, 200)).save(tmp_path / "data" / cls / f"{i}.png")
    cache = tmp_path / "cache"
    assert scan_folder(tmp_path / "data", cache_dir=cache, verbose=False).skipped == ()
    victim = tmp_path / "data" / "x" / "0.png"
    before = victim.stat()
    victim.write_bytes(b"\0" * before.st_size)
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    again = scan_folder(tmp_path / "data", cache_dir=cache, verbose=False)
    assert [p for p, _ in again.skipped] == ["x/0.png"] and "x/0.png" not in again.paths


def test_transparent_pixels_become_white_in_every_alpha_mode(tmp_path):
    from data.images import to_rgb

    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    la = Image.new("LA", (4, 4), (10, 0))
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0] * 256)
    palette.save(tmp_path / "p.png", transparency=0)  # palette entry 0 (black) is transparent
    with Image.open(tmp_path / "p.png") as png:
        assert png.mode == "P" and "transparency" in png.info
        images = [rgba, la, png.copy()]
    for image in images:
        assert to_rgb(image).getpixel((1, 1)) == (255, 255, 255), image.mode


def test_decoding_keeps_the_centre_of_a_wide_image(tmp_path):
    """Resize the short side, then crop the middle: the left and right margins go, as in Resize+CenterCrop."""
    wide = Image.new("RGB", (96, 32), (255, 0, 0))
    wide.paste((0, 255, 0), (32, 0, 64, 32))
    wide.paste((0, 0, 255), (64, 0, 96, 32))
    wide.save(tmp_path / "wide.png")
    array = decode_working(tmp_path / "wide.png", 16)
    assert array.shape == (16, 16, 3) and (array[..., 1] > 200).all() and (array[..., [0, 2]] < 50).all()


def test_a_dataset_two_levels_down_is_found(tmp_path):
    """`--data_dir=datasets` finds datasets/nature_12K/inaturalist_12K/{train,val}."""
    root = tmp_path / "nature_12K" / "inaturalist_12K"
    for folder in ("train/a", "val/a"):
        (root / folder).mkdir(parents=True)
    layout = locate_dataset(tmp_path, download=False)
    assert layout.train_dir == root / "train" and layout.test_dir == root / "val"


def test_non_booleans_are_refused_naming_the_field():
    for value in (2, -1, 0.5, "maybe", "ture"):
        with pytest.raises(UserError) as err:
            parse_bool(value, "batch_norm")
        assert str(err.value).startswith(f"batch_norm={value!r} is not a boolean") and "\n" not in str(err.value)


def test_class_labels_are_alphabetical_whatever_order_the_folders_are_listed_in(tmp_path, monkeypatch):
    """Label 0 is the first class by name on every machine, so a checkpoint's head means the same classes."""
    for cls in ("cat", "dog", "owl"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / cls / "x.png")
    real_scandir = os.scandir

    class ReverseListing:  # what os.scandir gives, in reverse name order
        def __init__(self, path="."):
            with real_scandir(path) as entries:
                self.entries = iter(sorted(entries, key=lambda e: e.name, reverse=True))

        def __iter__(self):
            return self

        def __next__(self):
            return next(self.entries)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(os, "scandir", ReverseListing)
    index = scan_folder(tmp_path, verbose=False)
    assert index.classes == ("cat", "dog", "owl")
    assert dict(zip(index.paths, index.labels.tolist())) == {"cat/x.png": 0, "dog/x.png": 1, "owl/x.png": 2}


# Fidelity to torchvision: the eval pipeline is the weights' own transforms(), the train crop is RandomResizedCrop.

# Landscape, portrait, near-square, smaller than the resize size (upscaled) and 4:3 photo sizes.
_ODD_SIZES = ((500, 375), (375, 500), (333, 517), (517, 333), (1000, 750), (257, 256), (256, 257), (640, 427),
              (343, 800), (200, 150))


@pytest.fixture(scope="module")
def odd_pngs(tmp_path_factory):
    """Noise images (every 1-px shift shows) saved as PNG: no JPEG draft mode between the two pipelines."""
    folder, rng = tmp_path_factory.mktemp("odd_sizes"), np.random.default_rng(0)
    for width, height in _ODD_SIZES:
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / f"{width}x{height}.png")
    return sorted(folder.glob("*.png"))


# Weights metadata only (transforms() works offline); the presets cover the other residues of resize - crop mod 4,
# which decide where a crop done in two centred steps would slip.
_EVAL_REFERENCES = {
    "resnet50 V2 232->224": ("ResNet50_Weights", "IMAGENET1K_V2"),
    "inception_v3 342->299": ("Inception_V3_Weights", "IMAGENET1K_V1"),
    "vit_b_16 256->224": ("ViT_B_16_Weights", "IMAGENET1K_V1"),
    "preset 230->221": {"crop_size": 221, "resize_size": 230},
    "preset 250->224 bicubic": {"crop_size": 224, "resize_size": 250, "interpolation": "bicubic"},
}


@pytest.mark.parametrize("name", list(_EVAL_REFERENCES))
def test_eval_pixels_are_the_weights_own_transforms(name, odd_pngs):
    """decode_working at the resize size, then EvalTransform, gives what weights.transforms() gives on the same
    image, for every image size: torchvision's truncated long side and its one-step centre crop, no 1-px shift."""
    import torchvision.models
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms._presets import ImageClassification

    source = _EVAL_REFERENCES[name]
    if isinstance(source, tuple):
        reference = getattr(getattr(torchvision.models, source[0]), source[1]).transforms()
    else:
        reference = ImageClassification(
            **{**source, "interpolation": InterpolationMode(source.get("interpolation", "bilinear"))})
    (resize,), (crop,) = reference.resize_size, reference.crop_size
    pre = Preprocessing(crop, resize, tuple(reference.mean), tuple(reference.std), reference.interpolation.value)
    for path in odd_pngs:
        with Image.open(path) as image:
            image = image.convert("RGB")
        square = decode_working(path, resize, pre.interpolation, crop_size=crop)
        ours = EvalTransform(pre)(torch.from_numpy(square.copy())[None])[0]
        assert (ours - reference(image)).abs().max().item() < 1e-5, path.name
        # Without a crop size the square itself is torchvision's Resize + CenterCrop at the resize size.
        alone = np.asarray(TF.center_crop(TF.resize(image, resize, reference.interpolation), resize))
        assert np.array_equal(decode_working(path, resize, pre.interpolation), alone), path.name


def _crop_boxes(theta: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Width, height (fractions of the square's side) and centre of each crop, rotation and flip taken out."""
    return theta[:, :, 0].norm(dim=1), theta[:, :, 1].norm(dim=1), theta[:, 0, 2], theta[:, 1, 2]


@pytest.mark.parametrize("level", ["standard", "strong"])
def test_train_crops_are_random_resized_crops_of_the_working_square(level):
    """Every crop lies inside the square with area in [min_area, 1] and ratio in [3/4, 4/3]; a draw that does not
    fit is redrawn (no crop spans the full width or height alone, as clamping made), with the same draws for
    the same (seed, epoch, batch)."""
    policy, eps = _POLICIES[level], 1e-5
    theta = TrainTransform._affine(4096, policy, batch_generator(3, 1, 4))
    assert torch.equal(theta, TrainTransform._affine(4096, policy, batch_generator(3, 1, 4)))
    width, height, center_x, center_y = _crop_boxes(theta)
    assert ((center_x.abs() + width <= 1 + eps) & (center_y.abs() + height <= 1 + eps)).all()
    area, ratio = width * height, width / height
    assert ((area >= policy.min_area - eps) & (area <= 1 + eps)).all()
    assert ((ratio >= 3 / 4 - eps) & (ratio <= 4 / 3 + eps)).all()
    clamped = (torch.maximum(width, height) > 1 - 1e-6) & (torch.minimum(width, height) < 1 - 1e-6)
    assert not clamped.any()


def test_train_crop_areas_follow_random_resized_crop_not_a_clamp():
    """With scale [0.35, 1] and ratio [3/4, 4/3], a draw of area a > 3/4 fits with probability -ln(a)/ln(4/3),
    so torchvision's retries give 22.9 % of crops above 3/4 of the square; clamping oversized draws gave 38.5 %."""
    width, height, _, _ = _crop_boxes(TrainTransform._affine(8192, _POLICIES["standard"], batch_generator(0, 0, 0)))
    above = ((width * height) > 0.75).float().mean().item()
    assert abs(above - 0.229) < 0.02, above


def test_train_crop_falls_back_to_the_whole_square_when_no_draw_fits():
    """Area 1 with any ratio but 1 overflows a side on every try: after 10, the crop is the whole square."""
    always_too_big = _Policy(min_area=1.0, flip=False, max_rotation_degrees=0.0, color_jitter=0.0)
    theta = TrainTransform._affine(256, always_too_big, batch_generator(0, 0, 0))
    assert torch.allclose(theta, torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(256, 2, 3))


@pytest.mark.parametrize("use_cache", [True, False])
def test_the_trainers_image_stores_give_the_weights_own_eval_pixels(use_cache, tmp_path):
    """What training, validation and `agent.py test` read (the image cache, or decoding on the fly) is placed for
    the crop: resize - crop = 3, as inception_v3's 342 -> 299, slips a pixel on half of all sizes otherwise."""
    import torchvision.transforms as T

    from trainer.inputs import image_store

    rng = np.random.default_rng(1)
    for index, (width, height) in enumerate([(48, 38), (38, 48), (44, 38), (50, 41), (39, 39)]):  # 48, 44: slips
        folder = tmp_path / "data" / "train" / f"c{index % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / f"{width}x{height}.png")
    images = scan_folder(tmp_path / "data" / "train", verbose=False)
    pre = Preprocessing(35, 38, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    reference = T.Compose([T.Resize(38), T.CenterCrop(35), T.ToTensor(), T.Normalize(pre.mean, pre.std)])
    store = image_store(images, pre, tmp_path / "cache", use_cache)
    ours = EvalTransform(pre)(torch.from_numpy(np.ascontiguousarray(store.read(np.arange(len(images))))))
    for i in range(len(images)):
        with Image.open(images.absolute(i)) as image:
            assert (ours[i] - reference(image.convert("RGB"))).abs().max().item() < 1e-5, images.paths[i]
