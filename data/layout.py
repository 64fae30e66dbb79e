"""Find the dataset's train/ and test folders under --data_dir, downloading nature_12K.zip when absent.

Accepted layouts: the nature_12K one (`inaturalist_12K/train`, `inaturalist_12K/val`, the `inaturalist_12K`
level found automatically), or any folder with `train/` and `val/` or `test/` class sub-folders. The
`val/` folder of nature_12K is the held-out TEST set; validation data is split from `train/`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError
from common.parsing import nearest

TEST_FOLDER_NAMES = ("test", "val")  # `test/` wins when both exist; nature_12K ships only `val/`


@dataclass(frozen=True)
class DatasetLayout:
    root: Path
    train_dir: Path
    test_dir: Path | None


def find_layout(data_dir: Path) -> DatasetLayout | None:
    """The first folder at or up to two levels below `data_dir` that holds a `train/` folder."""
    candidates = [data_dir]
    for depth in range(2):
        candidates += sorted(p for c in candidates if c.is_dir() for p in c.iterdir() if p.is_dir()
                             and not p.name.startswith((".", "__")))
        candidates = list(dict.fromkeys(candidates))
    for root in candidates:
        if (root / "train").is_dir():
            found = [root / n for n in TEST_FOLDER_NAMES if (root / n).is_dir()]
            if len(found) > 1:
                print(f"note: {root} has both test/ and val/: test/ is the held-out test set and val/ is not used "
                      f"(validation images are split from train/)", flush=True)
            return DatasetLayout(root, root / "train", found[0] if found else None)
    return None


def locate_dataset(data_dir: Path | str, download: bool = True, url: str | None = None,
                   offer_download: bool = True) -> DatasetLayout:
    """The dataset layout under `data_dir`; when there is none and `download` is set, fetch nature_12K first.
    `offer_download=False` is for commands that never download (testing a run): their error does not suggest it."""
    data_dir = Path(data_dir).expanduser()
    if data_dir.exists() and not data_dir.is_dir():
        unzip = (f"; unzip it first (unzip -q {data_dir} -d {data_dir.with_suffix('')}) and pass that folder"
                 if data_dir.suffix.lower() == ".zip" else "")
        raise UserError(
            f"--data_dir={data_dir} is a file, not a folder: pass the folder "
            f"that holds train/ (or the unzipped nature_12K){unzip}")
    layout = find_layout(data_dir) if data_dir.exists() else None
    if layout is None and not data_dir.exists():
        _refuse_a_typo(data_dir)
    if layout is None and download:
        # Extraction is staged and renamed into place whole, so a tree found here is never half-written.
        from data.download import NATURE_12K_URL, ZIP_NAME, download_dataset

        # Only into a new or empty folder (or one with our own partial download): a folder of other files is a
        # wrong --data_dir (a class folder, train/ itself), and 3.6 GB unpacked into it would become a class.
        others = (sorted(p.name for p in data_dir.iterdir() if not p.name.startswith((ZIP_NAME, ".")))
                  if data_dir.exists() else [])
        if others:
            holder = _class_holder(data_dir)
            held_out = [name for name in TEST_FOLDER_NAMES if (data_dir / name).is_dir()]
            if data_dir.name in ("train", *TEST_FOLDER_NAMES):
                hint = "it looks like a train/ or val/ folder of class sub-folders: pass the folder above it"
            elif held_out:  # the held-out set is there: what is missing is train/ beside it, not a level above it
                hint = (f"it has {held_out[0]}/ but no train/: put the class folders of "
                        f"the training images into {data_dir / 'train'}/ (the same class "
                        f"names as {held_out[0]}/), then pass --data_dir={data_dir} again")
            elif holder is not None:  # a plain folder of class folders: the layout a user most often has
                hint = (f"{holder} holds class folders directly: move them into {holder / 'train'}/ (and a held-out "
                        f"set with the same class folders into {holder / 'test'}/), then pass --data_dir={holder}")
            else:
                hint = ("pass the folder that holds train/ and val/ (or test/), or an empty folder to download "
                        "nature_12K into")
            raise UserError(f"no dataset found in {data_dir} (it holds "
                            f"{', '.join(others[:3])}{' ...' if len(others) > 3 else ''}), and nature_12K is only "
                            f"downloaded into an empty folder: {hint}")
        created = [d for d in (data_dir, *data_dir.parents) if not d.exists()]
        try:
            download_dataset(data_dir, url or NATURE_12K_URL)
        except UserError:
            _remove_if_empty(created)  # a failed first attempt leaves no empty folders behind
            raise
        layout = find_layout(data_dir)
    if layout is None:
        raise UserError(
            f"no dataset found in {data_dir}: pass --data_dir pointing at the unzipped nature_12K "
            "(inaturalist_12K/ with train/ and val/) or any folder with train/ and val/ class sub-folders"
            + ("" if download or not offer_download else ", or drop --download=false to fetch nature_12K.zip")
        )
    return layout


def _class_holder(data_dir: Path) -> Path | None:
    """`data_dir`, or its only sub-folder, when its sub-folders (two or more) hold files: class folders of images."""
    def subfolders(folder: Path) -> list[Path]:
        return [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))]

    def holds_classes(folder: Path) -> bool:
        subs = subfolders(folder)
        try:
            return len(subs) >= 2 and all(any(f.is_file() for f in sub.iterdir()) for sub in subs[:50])
        except OSError:  # a folder that cannot be listed holds no classes we could train on
            return False

    if holds_classes(data_dir):
        return data_dir
    subs = subfolders(data_dir)
    return subs[0] if len(subs) == 1 and holds_classes(subs[0]) else None


def _refuse_a_typo(data_dir: Path) -> None:
    """A --data_dir that does not exist inside a dataset (beside its train/, or under its train/ or val/, or
    under one of their class folders) is a typo, not a place to download 3.6 GB into.

    Only the nearest existing folder and the two above it are looked at, and a train/val/test name counts only
    where the folder above it holds train/: a download into a new folder elsewhere is never refused."""
    existing = next(d for d in data_dir.parents if d.exists())
    if not existing.is_dir():
        return
    missing = data_dir.relative_to(existing).parts[0]
    siblings = [p.name for p in existing.iterdir() if p.is_dir()]
    close = difflib.get_close_matches(missing, siblings, n=1, cutoff=0.8)
    if close and find_layout(existing / close[0]) is not None:  # demo_dat beside demo_data, a dataset
        raise UserError(f"--data_dir={data_dir} does not exist: did you mean "
                        f"{existing / close[0]}? (a dataset is there; nature_12K is only "
                        "downloaded into a new folder whose name is not that close to a dataset's)")
    root = None
    if (existing / "train").is_dir():
        root = existing  # beside train/
    else:
        for split in (existing, existing.parent):  # under train/ or val/, or under one of their class folders
            if split.name in ("train", *TEST_FOLDER_NAMES) and (split.parent / "train").is_dir():
                root = split.parent
                break
    if root is None:
        return
    raise UserError(f"--data_dir={data_dir} does not exist: {existing} has no {missing!r}{nearest(missing, siblings)}; "
                    f"the dataset there is {root}: pass --data_dir={root}")


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove the folders a download created (innermost first) while they hold nothing but an empty .part file."""
    from data.download import LOCK_NAME

    for folder in folders:
        for part in folder.glob("*.part") if folder.is_dir() else []:
            if part.stat().st_size == 0:
                part.unlink()
        (folder / LOCK_NAME).unlink(missing_ok=True)
        try:
            folder.rmdir()
        except OSError:
            return  # not empty (a partial download to resume) or not ours

