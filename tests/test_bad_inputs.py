"""Every bad input ends in one line: hostile YAML, damaged records, files small on disk and huge in memory, names
and links in the data, numbers past what their consumer takes, run ids that are paths, a full disk.

Each test is one class of bad input, and asserts the one line (an `error:` and exit 2, or a skip or note that
names the file), never a traceback, a hang or memory exhaustion.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import agent
from common.errors import UserError, printable
from common.yamlfile import MAX_YAML_BYTES, read_yaml
from sweeper.definition import load_definition
from trainer.config import load_yaml_values
from trainer.record import RunRecord

ROOT = Path(__file__).resolve().parents[1]


def one_error_line(capsys) -> str:
    """The `error: ...` line a command printed, checked to be its only output on stderr."""
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# --- YAML: one loader for every YAML file the harness reads --------------------------------------------

def _sweep_text() -> str:
    return (ROOT / "sweeps" / "tiny.yaml").read_text()


YAML_READERS = {
    "config file": lambda path: load_yaml_values(path),
    "sweep file": lambda path: load_definition(path),
    "run config": lambda path: RunRecord.saved_config(path.parent),
}


@pytest.mark.parametrize("reader", YAML_READERS)
def test_a_key_given_twice_is_an_error_naming_the_key_and_both_lines(reader, tmp_path):
    path = tmp_path / ("config.yaml" if reader == "run config" else "twice.yaml")
    text = _sweep_text() if reader == "sweep file" else "lr: 0.01\nepochs: 2\n"
    path.write_text(text + ("method: random\n" if reader == "sweep file" else "lr: 0.1\n"))
    first = next(n for n, line in enumerate(text.splitlines(), 1)
                 if line.startswith("method:" if reader == "sweep file" else "lr:"))
    key = "method" if reader == "sweep file" else "lr"
    with pytest.raises(UserError,
                       match=rf"^{reader} {path} has the key '{key}' twice \(lines {first} and "
                             rf"{len(text.splitlines()) + 1}\)"):
        YAML_READERS[reader](path)


def test_a_merge_key_may_still_be_overridden_by_a_key_of_its_own(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("base: &base {lr: 0.1, epochs: 2}\nrun:\n  <<: *base\n  lr: 0.01\n")
    assert read_yaml(path)["run"] == {"lr": 0.01, "epochs": 2}


@pytest.mark.parametrize("reader", YAML_READERS)
def test_anchors_and_aliases_cannot_expand_without_bound_nor_into_themselves(reader, tmp_path):
    path = tmp_path / ("config.yaml" if reader == "run config" else "laughs.yaml")
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]  # 10^9 values once expanded
    path.write_text("\n".join(levels) + "\n")
    with pytest.raises(UserError,
                       match=rf"^{reader} {path} expands to more than 100,000 values through its anchors and aliases"):
        YAML_READERS[reader](path)
    path.write_text("parameters: &p {lr: *p}\n")
    with pytest.raises(UserError, match=r"has an alias inside its own anchor \(line 1\)"):
        YAML_READERS[reader](path)


def test_yaml_nested_past_the_limit_is_refused(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("[" * 400 + "]" * 400)
    with pytest.raises(UserError, match="nests lists and mappings more than 64 levels deep"):
        read_yaml(path, "config file")


def test_a_yaml_file_is_read_at_most_up_to_its_size_limit(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * MAX_YAML_BYTES + "\n")
    with pytest.raises(UserError, match=rf"^config file {big} is larger than 1 MB"):
        load_yaml_values(big)


@pytest.mark.parametrize("command", ["run", "check"])
def test_a_device_a_folder_or_a_binary_file_given_as_yaml_is_one_line(command, tmp_path, capsys):
    binary = tmp_path / "model.pt"
    binary.write_bytes(b"\x80\x02}q\x00(X\x05\x00\x00\x00model\xff\xfe")
    for path, says in (("/dev/zero", "it is a device"), (tmp_path, "it is a folder"), (binary, "is not UTF-8 text")):
        argv = [f"--config={path}"] if command == "run" else ["check", str(path)]
        assert agent.main(argv) == 2  # /dev/zero is never read: it would never end
        assert says in one_error_line(capsys)


# --- images small on disk and huge in memory: one admission check, before decoding ---------------------

def write_png(path: Path, width: int, height: int) -> Path:
    """A valid 1-bit grayscale PNG of any size, written a row at a time: a few KB on disk, never held in memory."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row, packer, parts = b"\x00" * (1 + -(-width // 8)), zlib.compressobj(9), []
    for _ in range(height):
        parts.append(packer.compress(row))
    parts.append(packer.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def no_decoding(monkeypatch):
    """Fails the test if any image is decoded: the limits must be checked from the header alone."""
    from PIL import ImageFile

    def refuse(self):
        raise AssertionError(f"decoded {self.size}: the admission check must come first")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


@pytest.mark.parametrize("width, height, says", [
    (100_000, 1, "100000x1 pixels is more elongated than 20:1"),  # 138 bytes; resized to 256 px high: 6.5 GB
    (1, 100_000, "1x100000 pixels is more elongated than 20:1"),
    (9_000, 9_000, "9000x9000 pixels is more than the 67,108,864 an image may have"),  # under PIL's own warning
])
def test_an_image_small_on_disk_and_huge_in_memory_is_refused_from_its_header(width, height, says, tmp_path,
                                                                              no_decoding):
    from data.images import ImageRefused, check_image, decode_working

    path = write_png(tmp_path / "bomb.png", width, height)
    assert path.stat().st_size < 20_000
    assert check_image(path).startswith(says)
    with pytest.raises(ImageRefused, match=says):  # nor decoded by any later reader, should it change after the scan
        decode_working(path, 32)


# --- names and links in the data; the scan cache; the hints and notes of a dataset ---------------------

def small_dataset(root: Path, classes=("Aves", "Fungi"), per_class: int = 3) -> Path:
    """root/<class>/<n>.png: tiny valid images, distinct per class."""
    from PIL import Image

    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (24 + i, 20), (60 * c, 100, 20 * i)).save(root / name / f"{i}.png")
    return root


def test_names_that_are_not_utf8_and_symlink_loops_are_skipped_and_named(tmp_path, capsys):
    import os

    from data.scan import scan_folder

    train = small_dataset(tmp_path / "train")
    bad_name = os.fsdecode(b"Aves/caf\xe9.png")  # Latin-1 bytes: a name no UTF-8 text can hold
    os.link(train / "Aves" / "0.png", train / bad_name)
    (train / os.fsdecode(b"Bad\xffClass")).mkdir()
    (train / "Aves" / "self.png").symlink_to("self.png")
    (train / "Fungi" / "a.png").symlink_to("b.png")
    (train / "Fungi" / "b.png").symlink_to("a.png")
    (train / "Fungi" / "gone.png").symlink_to("nowhere.png")
    (train / "Fungi" / "up").symlink_to("..")  # a folder link to its parent is not followed: no endless walk

    index = scan_folder(train)
    skipped = dict(index.skipped)
    assert skipped == {
        "Aves/caf\\xe9.png": "file name is not valid UTF-8: rename it",
        "Bad\\xffClass": "folder name is not valid UTF-8: rename it",
        "Aves/self.png": "symlink loop (Too many levels of symbolic links)",
        "Fungi/a.png": "symlink loop (Too many levels of symbolic links)",
        "Fungi/b.png": "symlink loop (Too many levels of symbolic links)",
        "Fungi/gone.png": "broken symlink (its target does not exist)",
    }
    assert index.classes == ("Aves", "Fungi") and len(index) == 6
    assert "warning: skipped 6 unreadable file(s)" in capsys.readouterr().out


def test_a_file_whose_permissions_were_fixed_is_scanned_again(tmp_path, monkeypatch):
    """The scan cache is keyed by names, sizes and mtimes; a chmod changes none of them."""
    import os

    import data.scan
    from data.images import check_image

    train, cache, real_access = small_dataset(tmp_path / "train"), tmp_path / "cache", os.access
    locked = str(train / "Aves" / "1.png")
    # Tests may run as root, whom no permission stops: unreadable is simulated where readability is looked at.
    monkeypatch.setattr(data.scan, "check_image", lambda path: "PermissionError: [Errno 13] Permission denied"
                        if str(path) == locked else check_image(path))
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == locked else real_access(path, mode))
    assert dict(data.scan.scan_folder(train, cache, verbose=False).skipped) == {
        "Aves/1.png": "PermissionError: [Errno 13] Permission denied"}

    monkeypatch.setattr(data.scan, "check_image", check_image)  # chmod a+r: the same names, sizes and mtimes
    monkeypatch.setattr(os, "access", real_access)
    fixed = data.scan.scan_folder(train, cache, verbose=False)
    assert fixed.skipped == () and "Aves/1.png" in fixed.paths

    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == locked else real_access(path, mode))
    # chmod a-r after a scan: skipped, not a crash at decode time
    again = data.scan.scan_folder(train, cache, verbose=False)
    assert (dict(again.skipped) == {"Aves/1.png": "PermissionError: no read permission"}
            and "Aves/1.png" not in again.paths)


def test_without_train_the_hint_asks_for_train_beside_test_not_inside_it(tmp_path):
    from data.layout import locate_dataset

    small_dataset(tmp_path / "data" / "test")
    with pytest.raises(UserError) as caught:
        locate_dataset(tmp_path / "data", download=True)
    message = str(caught.value)
    assert (f"it has test/ but no train/: put the class folders of the training images into "
            f"{tmp_path / 'data' / 'train'}/") in message
    assert "test/train" not in message


def test_a_class_with_one_image_is_said_to_have_no_validation_image(tmp_path, capsys):
    from data.scan import scan_folder
    from data.split import stratified_split

    train = small_dataset(tmp_path / "train")
    for extra in (train / "Fungi").glob("[12].png"):
        extra.unlink()
    split = stratified_split(scan_folder(train, verbose=False), 0.2)
    assert len(split.val) == 1  # Aves' one; Fungi has none
    note = capsys.readouterr().out
    assert ("note: class Fungi of" in note
            and "has a single image, which trains: no validation image measures it" in note)


# --- runs: notes a resumed run owes its user ---------------------------------------------------------------

def tiny_run(nature_dir: Path, tmp_path: Path, **overrides):
    """The scratch CNN at 32 px on the tests' dataset: a run of two epochs takes about a second."""
    from trainer.config import parse_run_config

    return parse_run_config({
        "data_dir": str(nature_dir), "cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "runs"),
        "wandb_mode": "disabled", "weights": "none", "batch_size": 8, "epochs": 2, "warmup_epochs": 0.5,
        "model": "scratch_cnn", "input_size": 32, "filters": 8, "dense_units": 16, **overrides})


def test_a_resume_under_another_torch_thread_count_says_its_losses_may_differ(nature_dir, tmp_path, monkeypatch,
                                                                              capsys):
    import os
    import signal

    import torch

    from trainer.run import run_training

    real = RunRecord.append_epoch

    def stop_after_the_first_epoch(self, row):
        real(self, row)
        if row["epoch"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # a real preemption: the run checkpoints epoch 1 and stops

    monkeypatch.setattr(RunRecord, "append_epoch", stop_after_the_first_epoch)
    config = tiny_run(nature_dir, tmp_path, run_id="threads")
    assert run_training(config).state == "preempted"
    monkeypatch.setattr(RunRecord, "append_epoch", real)
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        assert run_training(config).state == "finished"
    finally:
        torch.set_num_threads(threads)
    assert (f"note: run threads trained with {threads} torch threads and resumes with {threads + 1}: CPU sums are then "
            "added up in another order, so its losses may differ from an uninterrupted run's by about 1e-5"
            ) in capsys.readouterr().out


# --- numbers: one bound per parameter, the one its consumer takes ------------------------------------------

def test_the_largest_seed_reaches_its_last_batch_and_the_next_one_is_refused():
    import torch

    from data.augment import batch_generator
    from data.loading import epoch_order
    from data.seeds import MAX_BATCHES, MAX_EPOCHS, SEED_MAX
    from trainer.config import FIELDS, parse_value

    assert FIELDS["epochs"].metadata["high"] == MAX_EPOCHS
    batch_generator(SEED_MAX, MAX_EPOCHS, MAX_BATCHES)  # the largest seed any batch of any run derives: torch takes it
    epoch_order(torch.arange(4).numpy(), SEED_MAX, MAX_EPOCHS, shuffle=True)
    # the derivation's real limit (about 18.4 million) is not far above it
    with pytest.raises(ValueError, match="Overflow"):
        batch_generator(18_500_000, 1, 0)
    assert parse_value("seed", str(SEED_MAX)) == SEED_MAX
    with pytest.raises(UserError, match=r"^seed=16777216 is out of range \[0, 16777215\]"):
        parse_value("seed", SEED_MAX + 1)
    assert parse_value("split_seed", "4294967295") == 2**32 - 1  # an integer read as such, not through a float


def test_check_refuses_a_sweep_whose_seeds_or_values_can_be_drawn_past_their_bound(tmp_path, capsys):
    sweep = yaml.safe_load(_sweep_text())
    for spec, says in (
        ({"distribution": "int_uniform", "min": 0, "max": 2**31},
         "parameter 'seed': seed=2147483648 is out of range [0, 16777215]"),
        ({"distribution": "q_uniform", "min": 0, "max": 16_777_215, "q": 10},
         "distribution q_uniform draws values up to 16777220, but seed takes 0..16777215"),
        ({"distribution": "normal", "mu": 100, "sigma": 10},
         "distribution normal draws values without bound, but seed takes 0..16777215"),
    ):
        path = tmp_path / "seeds.yaml"
        path.write_text(yaml.safe_dump({**sweep, "parameters": {**sweep["parameters"], "seed": spec}}))
        assert agent.main(["check", str(path)]) == 2
        assert says in one_error_line(capsys)
    path.write_text(yaml.safe_dump({**sweep, "parameters": {
        **sweep["parameters"], "seed": {"distribution": "int_uniform", "min": 0, "max": 1000}}}))
    assert agent.main(["check", str(path)]) == 0


def test_num_workers_is_bounded_and_never_more_than_the_cores(monkeypatch, capsys):
    import data.loading
    from trainer.config import parse_value

    with pytest.raises(UserError, match=r"^num_workers=100000 is out of range \[-1, 64\]"):
        parse_value("num_workers", "100000")  # refused at the edge: not one process is started
    monkeypatch.setattr(data.loading, "_cores", lambda: 2)
    assert data.loading.worker_count(64, decoding=True) == 2
    assert "note: --num_workers=64 is more than the 2 CPU core(s) here; starting 2" in capsys.readouterr().out
    assert data.loading.worker_count(1, decoding=True) == 1 and data.loading.worker_count(-1, decoding=False) == 1


# --- run ids are names, never paths -------------------------------------------------------------------

@pytest.mark.parametrize("run_id", ["../../escaped", "/tmp/escaped-absolute", "..", "a/b"])
def test_a_run_id_that_is_a_path_is_refused_before_anything_is_written(run_id, tmp_path, monkeypatch, capsys):
    output = tmp_path / "deep" / "runs"
    argv = [f"--output_dir={output}", f"--data_dir={tmp_path / 'no-data'}", "--download=false", "--wandb_mode=disabled"]
    assert agent.main([*argv, f"--run_id={run_id}"]) == 2
    assert f"run_id={run_id!r} is not a run id" in one_error_line(capsys)
    monkeypatch.setenv("WANDB_RUN_ID", run_id)  # what `wandb agent` sets for a trial
    assert agent.main(argv) == 2
    assert f"WANDB_RUN_ID={run_id!r} is not a run id" in one_error_line(capsys)
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/escaped-absolute").exists() and not output.exists()


# --- a full disk, wherever it strikes, is the disk's problem: one line, exit 2, retried ------------------

class FillsUp:
    """A file whose disk fills up after `room` bytes, as the OS reports it: write() raises ENOSPC."""

    def __init__(self, handle, room: int = 4096):
        self.handle, self.room = handle, room

    def write(self, data) -> int:
        import errno

        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


def test_a_disk_that_fills_up_inside_torch_save_is_a_setup_failure_not_the_trials_own(nature_dir, tmp_path,
                                                                                      monkeypatch):
    import trainer.checkpoint
    from trainer.run import run_training

    real = trainer.checkpoint.atomic_write
    # torch.save turns the OSError into a RuntimeError ("unexpected pos ...") raised while handling it; the space
    # check that follows finds room again, as the half-written file was removed.
    monkeypatch.setattr(trainer.checkpoint, "atomic_write", lambda path, write,
                        mode="w": real(path, lambda h: write(FillsUp(h)), mode))
    with pytest.raises(UserError,
                       match=r"the disk of .* filled up while writing checkpoint "
                             r"last.pt: free some space or pass --output_dir"):
        run_training(tiny_run(nature_dir, tmp_path, run_id="full", epochs=1))
    summary = json.loads((tmp_path / "runs" / "full" / "summary.json").read_text())
    assert summary["state"] == "failed" and summary["exit_code"] == 2  # a sweep retries it when the command runs again


def test_a_full_disk_under_stderr_still_ends_in_exit_2(tmp_path, monkeypatch):
    import sys

    class FullLog:
        def write(self, text):
            raise OSError(28, "No space left on device")

        def flush(self):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(sys, "stderr", FullLog())
    assert agent.main(["check", str(tmp_path / "missing.yaml")]) == 2


# --- report outputs are written like run records ---------------------------------------------------------

def test_a_report_figure_cut_short_leaves_the_previous_png_whole(tmp_path):
    import matplotlib.pyplot as plt

    from common import figures

    path = tmp_path / "report" / "learning_curves.png"
    path.parent.mkdir()
    path.write_bytes(b"the previous figure")
    figure = plt.figure()

    def half_then_full(target, **options):
        if isinstance(target, (str, Path)):
            Path(target).write_bytes(b"\x89PNG half")
        else:
            target.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    figure.savefig = half_then_full
    with pytest.raises(OSError, match=str(path)):  # named, so the one error line says which file and disk
        figures.save(figure, path)
    assert path.read_bytes() == b"the previous figure" and sorted(p.name for p in path.parent.iterdir()) == [path.name]


# --- damaged records: one line naming the file and the fix, and no trial ever trained or counted twice ---

@pytest.fixture
def finished_sweep(nature_dir, tmp_path):
    """A sweep folder of two finished trials (a grid over two seeds), written as the driver writes one."""
    from sweeper.definition import pin_definition, pin_fixed
    from sweeper.table import Trial, TrialTable
    from trainer.config import config_hash, effective_config, parse_run_config, to_dict

    definition = yaml.safe_load(_sweep_text())
    definition["parameters"].update(activation={"value": "relu"}, lr={"value": 0.001}, seed={"values": [1, 2]})
    sweep_yaml = tmp_path / "grid.yaml"
    sweep_yaml.write_text(yaml.safe_dump(definition, sort_keys=False))
    fixed = {"data_dir": str(nature_dir), "cache_dir": str(tmp_path / "cache"), "wandb_mode": "disabled"}
    sweep_dir = tmp_path / "sweep"
    pin_definition(sweep_dir, load_definition(sweep_yaml))
    pin_fixed(sweep_dir, fixed)
    table = TrialTable(sweep_dir)
    for number, seed in enumerate((1, 2), start=1):
        suggestion = ({name: spec["value"] for name, spec in definition["parameters"].items() if "value" in spec}
                      | {"seed": seed})
        config, run_id = parse_run_config(suggestion, fixed), f"tiny-{number:03d}-0a0{number}"
        record = RunRecord(sweep_dir / "runs" / run_id)
        record.write_config(to_dict(config) | {"run_id": run_id})
        record.update_summary(state="finished", best_val_acc=0.5, best_epoch=2, config_hash=config_hash(config))
        table.add(Trial(run_id, "finished", effective_config(config), config_hash(config), suggestion, best_val_acc=0.5,
                        fixed=fixed))
    return sweep_yaml, sweep_dir, fixed


@pytest.mark.parametrize("damage", ["cut mid-write", "deleted as advised"])
def test_a_lost_last_row_of_the_table_is_read_back_never_trained_again_nor_counted_twice(damage, finished_sweep,
                                                                                         capsys):
    from report.sources import load_table
    from sweeper import run_local_sweep

    sweep_yaml, sweep_dir, fixed = finished_sweep
    table = sweep_dir / "table.jsonl"
    lines = table.read_text().splitlines(keepends=True)
    table.write_text(lines[0] + (lines[1][: len(lines[1]) // 2] if damage == "cut mid-write" else ""))
    summary = run_local_sweep(sweep_yaml, count=2, sweep_dir=sweep_dir, fixed=fixed)
    assert summary["new"] == 0 and summary["trials"] == 2
    rows = [json.loads(line) for line in table.read_text().splitlines()]
    assert [row["run_id"] for row in rows] == ["tiny-001-0a01", "tiny-002-0a02"] and rows[1]["state"] == "finished"
    assert sorted(p.name for p in (sweep_dir / "runs").iterdir()) == ["tiny-001-0a01", "tiny-002-0a02"]
    assert "trial tiny-002-0a02 (finished) had no row in table.jsonl: read back from" in capsys.readouterr().out
    assert sorted(record.run_id for record in load_table(str(sweep_dir)).records) == ["tiny-001-0a01", "tiny-002-0a02"]


def test_a_damaged_row_in_the_middle_of_the_table_is_one_line_naming_it(finished_sweep):
    from sweeper.table import TrialTable

    _, sweep_dir, _ = finished_sweep
    table = sweep_dir / "table.jsonl"
    lines = table.read_text().splitlines(keepends=True)
    table.write_text(lines[0].replace('"run_id": "tiny-001-0a01"', '"run_id": "../../outside"') + lines[1])
    with pytest.raises(
        UserError, match=rf"^{table} line 1 is damaged \(run_id '../../outside' is not a run id\): delete that line"):
        TrialTable(sweep_dir)


def test_a_damaged_config_yaml_inside_a_sweep_folder_is_named_and_the_sweep_goes_on(finished_sweep, capsys):
    from sweeper import run_local_sweep

    sweep_yaml, sweep_dir, fixed = finished_sweep
    damaged = sweep_dir / "runs" / "tiny-002-0a02" / "config.yaml"
    damaged.write_text("model: scratch_cnn\n  lr: [0.1\n")
    assert run_local_sweep(sweep_yaml, count=2, sweep_dir=sweep_dir, fixed=fixed)["new"] == 0
    warning = [line for line in capsys.readouterr().out.splitlines() if str(damaged) in line]
    assert len(warning) == 1 and warning[0].startswith(f"warning: run config {damaged} is not valid YAML: line 2")
    assert warning[0].endswith("delete it and run the command again: the run's last.pt and best.pt keep the settings "
                               "it trained with (give its paths, such as --data_dir, again)")


def test_a_damaged_config_yaml_under_resume_says_how_to_go_on_and_then_resumes(nature_dir, tmp_path, monkeypatch,
                                                                               capsys):
    import os
    import signal

    real = RunRecord.append_epoch

    def stop_after_the_first_epoch(self, row):
        real(self, row)
        if row["epoch"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    from trainer.run import run_training

    monkeypatch.setattr(RunRecord, "append_epoch", stop_after_the_first_epoch)
    config = tiny_run(nature_dir, tmp_path, run_id="cut")
    assert run_training(config).state == "preempted"
    monkeypatch.setattr(RunRecord, "append_epoch", real)
    damaged = tmp_path / "runs" / "cut" / "config.yaml"
    damaged.write_bytes(damaged.read_bytes()[:40] + b"\x00\xff garbage")
    argv = ["--resume", "--run_id=cut", f"--output_dir={tmp_path / 'runs'}"]
    assert agent.main(argv) == 2
    assert one_error_line(capsys).startswith(f"error: run config {damaged} is not UTF-8 text")
    damaged.unlink()  # as the error says: the settings the run trained with come from its last.pt
    assert agent.main([*argv, f"--data_dir={nature_dir}", f"--cache_dir={tmp_path / 'cache'}",
                       "--wandb_mode=disabled"]) == 0
    assert "resuming run cut from epoch 2" in capsys.readouterr().out
    assert json.loads((tmp_path / "runs" / "cut" / "summary.json").read_text())["state"] == "finished"


def test_a_trial_that_died_before_recording_how_is_not_left_running(finished_sweep):
    import sys

    from sweeper.definition import load_definition
    from sweeper.local import LocalSweep
    from sweeper.trial import launch

    sweep_yaml, sweep_dir, fixed = finished_sweep
    sweep = LocalSweep(load_definition(sweep_yaml), sweep_dir, fixed, workers=1)
    folder = sweep_dir / "runs" / "tiny-002-0a02"
    # The trial's last words on a disk that filled up: its summary.json could not be written, only its exit status.
    died = [sys.executable, "-c", "print('error: No space left on device for last.pt'); raise SystemExit(2)"]
    sweep.running["tiny-002-0a02"] = launch("tiny-002-0a02", folder, died, None)
    sweep.tags["tiny-002-0a02"] = "resume"
    sweep.running["tiny-002-0a02"].process.wait()
    sweep._collect()
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["state"] == "failed" and summary["exit_code"] == 2 and "No space left on device" in summary["reason"]


# --- all at once: a sweep over a data tree that holds one member of every bad data class -----------------

def test_a_sweep_over_every_kind_of_bad_file_finishes_and_names_each_once(tmp_path, capsys):
    import os

    from sweeper import run_local_sweep

    train = small_dataset(tmp_path / "data" / "train", classes=("Amphibia", "Aves", "Fungi"), per_class=8)
    bad = {
        os.fsdecode(b"Aves/caf\xe9.png"): "file name is not valid UTF-8",
        "Aves/self.png": "symlink loop",
        "Fungi/loop_a.png": "symlink loop",
        "Fungi/loop_b.png": "symlink loop",
        "Fungi/bomb.png": "100000x1 pixels is more elongated than 20:1",
        "Amphibia/truncated.png": "OSError",
        "Amphibia/locked.png": "PermissionError",
    }
    os.link(train / "Aves" / "0.png", train / os.fsdecode(b"Aves/caf\xe9.png"))
    (train / "Aves" / "self.png").symlink_to("self.png")
    (train / "Fungi" / "loop_a.png").symlink_to("loop_b.png")
    (train / "Fungi" / "loop_b.png").symlink_to("loop_a.png")
    write_png(train / "Fungi" / "bomb.png", 100_000, 1)
    whole = (train / "Amphibia" / "0.png").read_bytes()
    (train / "Amphibia" / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (train / "Amphibia" / "locked.png").write_bytes(whole)
    (train / "Amphibia" / "locked.png").chmod(0)
    if os.access(train / "Amphibia" / "locked.png", os.R_OK):  # root reads it anyway: then it is a good image
        del bad["Amphibia/locked.png"]

    definition = yaml.safe_load(_sweep_text())
    definition["parameters"].update(activation={"value": "relu"}, lr={"value": 0.01}, epochs={"value": 1})
    sweep_yaml = tmp_path / "bad.yaml"
    sweep_yaml.write_text(yaml.safe_dump(definition, sort_keys=False))
    fixed = {"data_dir": str(tmp_path / "data"), "cache_dir": str(tmp_path / "cache"), "wandb_mode": "disabled",
             "batch_size": "8"}
    summary = run_local_sweep(sweep_yaml, count=1, sweep_dir=tmp_path / "sweep", fixed=fixed)
    assert summary["states"] == {"finished": 1}
    console = capsys.readouterr().out
    assert console.count(f"warning: skipped {len(bad)} unreadable file(s)") == 1 and "Traceback" not in console

    (run,) = (tmp_path / "sweep" / "runs").iterdir()
    listed = [line.split("\t") for line in (run / "skipped_files.txt").read_text(encoding="utf-8").splitlines()]
    named, expected = dict(listed), {printable(path): reason for path, reason in bad.items()}  # caf\xe9.png, as written
    assert len(listed) == len(expected) and set(named) == set(expected)  # each bad file once, and nothing else
    assert all(reason in named[path] for path, reason in expected.items()), named
    assert "Traceback" not in (run / "output.log").read_text(errors="replace")


def test_docs_limits_states_the_limits_the_code_enforces():
    """docs/limits.md is what a user reads before a sweep: every number in it is the code's."""
    import re

    from common.yamlfile import MAX_YAML_DEPTH, MAX_YAML_VALUES
    from data.images import MAX_ASPECT_RATIO, MAX_IMAGE_PIXELS
    from trainer.config import FIELDS

    text = (ROOT / "docs" / "limits.md").read_text()
    assert f"{MAX_IMAGE_PIXELS:,} pixels" in text and f"{MAX_ASPECT_RATIO}:1" in text
    assert (f"{MAX_YAML_VALUES:,}" in text and f"{MAX_YAML_DEPTH} levels" in text
            and f"{MAX_YAML_BYTES // 2**20} MB" in text)
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \|", text, flags=re.M)
    assert len(rows) > 15
    for name, allowed in rows:
        low, high = FIELDS[name].metadata["low"], FIELDS[name].metadata["high"]
        assert allowed.strip() == f"{'' if low is None else low}..{'' if high is None else high}", name
    assert "(docs/limits.md)" in (ROOT / "README.md").read_text()
