"""A full, read-only or forbidden disk: one line naming the folder and the option to change, exit 2, no half
files left behind, and a run record that says why."""

from __future__ import annotations

import errno
import json
from collections import namedtuple
from pathlib import Path

import pytest
import torch

import common.atomic
import common.disk
from common.errors import UserError
from data.cache import DecodedImageCache
from data.layout import locate_dataset
from data.scan import scan_folder
from trainer import metrics as M
from trainer.checkpoint import write_checkpoint
from trainer.config import parse_run_config
from trainer.run import run_training

Usage = namedtuple("Usage", "total used free")


def disk_with_free(monkeypatch, free: int) -> None:
    monkeypatch.setattr(common.disk.shutil, "disk_usage", lambda path: Usage(10 * 2**30, 10 * 2**30 - free, free))


def run_config(nature_dir, tmp_path, **overrides):
    values = {"data_dir": str(nature_dir), "cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "runs"),
              "wandb_mode": "disabled", "weights": "none", "batch_size": 8, "epochs": 1, "model": "scratch_cnn",
              "input_size": 32, "filters": 8, "dense_units": 16, **overrides}
    return parse_run_config(values)


def test_an_image_cache_that_would_not_fit_is_refused_before_a_byte_is_written(nature_dir, tmp_path, monkeypatch):
    index = scan_folder(locate_dataset(nature_dir, download=False).train_dir, verbose=False)
    disk_with_free(monkeypatch, int(0.6 * 2**20))  # the cache needs 0.4 MB, and as much to spare
    assert len(index) * 64 * 64 * 3 == pytest.approx(0.4 * 2**20, rel=0.1)
    with pytest.raises(UserError,
                       match=r"not enough free space in .*cache for the decoded-image cache "
                             rf"\({len(index)} images at 64px\): it needs 0.4 MB \(and 0.4 MB to "
                             r"spare\) but 0.6 MB are free; free some space or pass --cache_dir"):
        DecodedImageCache.build_or_open(index, 64, "bilinear", tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache").glob("*.u8*"))  # no half cache filling the disk (SIGBUS on a real one)


def test_a_failed_cache_build_leaves_no_temporary_file(nature_dir, tmp_path, monkeypatch):
    import data.cache

    index = scan_folder(locate_dataset(nature_dir, download=False).train_dir, verbose=False)
    monkeypatch.setattr(data.cache, "decode_working",
                        lambda *a: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(OSError):
        DecodedImageCache.build_or_open(index, 32, "bilinear", tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache").glob("*.u8*"))


def test_a_checkpoint_that_would_not_fit_is_named_with_its_size(tmp_path, monkeypatch):
    payload = {"model": {"w": torch.zeros(2**20)}}  # 4 MB
    disk_with_free(monkeypatch, 2**20)
    with pytest.raises(UserError,
                       match=r"for checkpoint last.pt: it needs 4.0 MB \(and 4.0 MB to spare\) but 1.0 MB are free; "
                             r"free some space or pass --output_dir on"):
        write_checkpoint(tmp_path / "last.pt", payload)
    assert not list(tmp_path.iterdir())


def test_a_disk_filling_up_during_a_run_ends_it_with_a_setup_failure_and_a_record(nature_dir, tmp_path, monkeypatch):
    import trainer.checkpoint

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(trainer.checkpoint.torch, "save", full)
    with pytest.raises(UserError,
                       match=r"filled up while writing checkpoint last.pt: free some space or pass --output_dir"):
        run_training(run_config(nature_dir, tmp_path, run_id="full"))
    summary = json.loads((tmp_path / "runs" / "full" / "summary.json").read_text())
    assert summary[M.STATE] == M.FAILED and summary["exit_code"] == 2 and "filled up" in summary[M.REASON]


def test_an_unwritable_cache_dir_is_a_one_line_error_naming_the_option(nature_dir, tmp_path, capsys):
    import agent

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    args = [f"--data_dir={nature_dir}", f"--cache_dir={blocker / 'cache'}", f"--output_dir={tmp_path / 'runs'}",
            "--run_id=ro",
            "--model=scratch_cnn", "--input_size=32", "--filters=8", "--dense_units=16", "--epochs=1", "--weights=none",
            "--wandb_mode=disabled"]
    assert agent.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cache_dir" in err and "is not writable" in err and "FINETUNE_CACHE_DIR" in err
    assert agent.main([*args[:2], f"--output_dir={blocker / 'runs'}", *args[3:]]) == 2
    assert "error: output_dir" in capsys.readouterr().err


def test_a_read_only_disk_met_outside_a_run_is_one_line_naming_the_option(tmp_path, monkeypatch, capsys):
    import agent
    import report.build

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", "/kaggle/input/old-run/report/report.md")

    monkeypatch.setattr(report.build, "build_report", read_only)
    assert agent.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == ("error: Read-only file system for /kaggle/input/old-run/report/report.md: pass --out DIR with a "
                   "folder you can write to\n")


def test_a_data_dir_that_holds_nothing_and_cannot_be_written_is_not_downloaded_into(tmp_path):
    from data.download import download_dataset

    blocker = tmp_path / "input"
    blocker.write_text("a read-only mount, as far as writing goes")
    with pytest.raises(UserError,
                       match=r"holds no dataset, and nature_12K cannot be downloaded into it \(Not a directory\): pass "
                             r"the --data_dir of the dataset itself"):
        download_dataset(blocker / "nature-12k", url="http://127.0.0.1:9/none.zip")


def test_a_small_file_needs_no_more_than_its_own_size_to_spare(tmp_path, monkeypatch):
    disk_with_free(monkeypatch, 50 * 2**20)  # 50 MB free: a 1.2 MB checkpoint fits well
    common.disk.ensure_space(tmp_path, int(1.2 * 2**20), "checkpoint last.pt", "--output_dir")
    with pytest.raises(UserError, match=r"it needs 40 MB \(and 40 MB to spare\) but 50 MB are free"):
        common.disk.ensure_space(tmp_path, 40 * 2**20, "checkpoint last.pt", "--output_dir")


def test_a_cache_file_has_its_blocks_reserved_or_is_refused(tmp_path, monkeypatch):
    common.disk.reserve(tmp_path / "a.u8.tmp", 3 * 2**20, "the cache", "--cache_dir")
    assert (tmp_path / "a.u8.tmp").stat().st_size == 3 * 2**20
    assert (tmp_path / "a.u8.tmp").stat().st_blocks * 512 >= 3 * 2**20  # allocated, not sparse

    def full(fd, offset, size):  # another writer filled the disk since the free space was read
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(common.disk.os, "posix_fallocate", full, raising=False)
    with pytest.raises(
        UserError, match=r"not enough free space in .* for the cache \(3.0 MB\): free some space or pass --cache_dir"):
        common.disk.reserve(tmp_path / "b.u8.tmp", 3 * 2**20, "the cache", "--cache_dir")
    assert not (tmp_path / "b.u8.tmp").exists()


def test_a_write_error_names_the_file_and_only_disk_states_become_setup_failures(tmp_path):
    from common.atomic import write_bytes
    from common.disk import disk_problem

    def full(handle):
        raise OSError(errno.ENOSPC, "No space left on device")  # as write() raises it: no file name

    with pytest.raises(OSError) as raised:
        common.atomic.atomic_write(tmp_path / "summary.json", full)
    assert raised.value.filename == str(tmp_path / "summary.json") and raised.value.errno == errno.ENOSPC
    write_bytes(tmp_path / "ok.bin", b"x")  # unaffected
    # a run's own bug
    assert disk_problem(PermissionError(errno.EACCES, "Permission denied", "/root/.cache/torch")) is None
    assert "check its permissions" in str(
        disk_problem(PermissionError(errno.EACCES, "Permission denied", "/x"), permissions=True))


def test_a_full_disk_inside_a_run_names_the_option_of_its_folder(nature_dir, tmp_path, monkeypatch):
    from trainer.run import _disk_hint

    config = run_config(nature_dir, tmp_path, checkpoint_store=str(tmp_path / "drive"))
    hint = lambda name: _disk_hint(config, OSError(errno.ENOSPC, "No space left on device", str(name)))  # noqa: E731
    assert hint(tmp_path / "cache" / "images.u8.tmp") == "pass --cache_dir with a folder on another disk"
    assert hint(tmp_path / "drive" / "r" / "last.pt") == "pass --checkpoint_store with a folder on another disk"
    assert hint(tmp_path / "runs" / "r" / "metrics.jsonl") == "pass --output_dir with a folder on another disk"
    assert "--output_dir, --cache_dir or --checkpoint_store" in _disk_hint(
        config, OSError(errno.ENOSPC, "No space left on device"))
    # the innermost folder's option
    nested = run_config(nature_dir, tmp_path, cache_dir=str(tmp_path / "runs" / "cache"))
    assert (_disk_hint(nested, OSError(errno.ENOSPC, "full", str(tmp_path / "runs" / "cache" / "x.u8")))
            == "pass --cache_dir with a folder on another disk")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    # no RuntimeError
    assert "--output_dir, --cache_dir" in _disk_hint(config, OSError(errno.ENOSPC, "full", str(loop / "x")))

    real = common.disk.shutil.disk_usage
    monkeypatch.setattr(common.disk.shutil, "disk_usage",
                        lambda p: Usage(1, 1, 2**10) if "drive" in str(p) else real(p))
    with pytest.raises(UserError,
                       match=r"not enough free space in .*drive.* for the copy of "
                             r"last.pt: .* pass --checkpoint_store on a bigger disk"):
        run_training(run_config(nature_dir, tmp_path, run_id="store-full", checkpoint_store=str(tmp_path / "drive")))


def test_a_file_system_that_cannot_reserve_still_gets_its_file(tmp_path, monkeypatch):
    def unsupported(fd, offset, size):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(common.disk.os, "posix_fallocate", unsupported, raising=False)
    common.disk.reserve(tmp_path / "c.u8.tmp", 2**20, "the cache", "--cache_dir")
    assert (tmp_path / "c.u8.tmp").stat().st_size == 2**20


@pytest.mark.parametrize("cut", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()],
                         ids=["disk-full", "ctrl-c"])
def test_a_write_cut_short_leaves_the_old_file_whole_and_no_temporary_file(tmp_path, cut):
    target = tmp_path / "summary.json"
    common.atomic.write_json(target, {"state": "running", "epoch": 3})
    before = target.read_bytes()

    def half_then_cut(handle):
        handle.write('{"state": "fini')
        handle.flush()
        raise cut

    with pytest.raises(type(cut)):
        common.atomic.atomic_write(target, half_then_cut)
    assert target.read_bytes() == before and json.loads(before)["epoch"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_a_file_larger_than_the_margin_needs_only_the_margin_to_spare(tmp_path, monkeypatch):
    disk_with_free(monkeypatch, 2**30 + common.disk.MARGIN)  # a 1 GB checkpoint and 64 MB for logs: it fits
    common.disk.ensure_space(tmp_path, 2**30, "checkpoint last.pt", "--output_dir")
    with pytest.raises(UserError, match=r"it needs 1.0 GB \(and 64 MB to spare\)"):
        common.disk.ensure_space(tmp_path, 2**30 + 1, "checkpoint last.pt", "--output_dir")


def test_ctrl_c_during_a_reservation_leaves_no_partial_file(tmp_path, monkeypatch):
    def interrupted(fd, offset, size):
        raise KeyboardInterrupt

    monkeypatch.setattr(common.disk.os, "posix_fallocate", interrupted, raising=False)
    monkeypatch.setattr(common.disk.os, "ftruncate", interrupted)  # macOS path: truncate goes through ftruncate
    with pytest.raises(KeyboardInterrupt):
        common.disk.reserve(tmp_path / "d.u8.tmp", 2**20, "the cache", "--cache_dir")
    assert not (tmp_path / "d.u8.tmp").exists()


def test_a_cache_lock_makes_another_process_wait_until_it_is_released(tmp_path):
    import subprocess
    import sys
    import time

    from common.locks import file_lock

    lock, entered = tmp_path / "cache" / "images.lock", tmp_path / "entered"
    child = ("from pathlib import Path; from common.locks import file_lock\n"
             f"with file_lock(Path({str(lock)!r})): Path({str(entered)!r}).write_text('x')")
    with file_lock(lock):
        # this checkout's code
        process = subprocess.Popen([sys.executable, "-c", child], cwd=Path(__file__).resolve().parents[1])
        time.sleep(1.0)  # the child starts and blocks on the lock
        assert process.poll() is None and not entered.exists()
    assert process.wait(timeout=30) == 0 and entered.exists()


def test_a_user_error_is_one_line_whatever_the_message_was_built_from():
    assert str(UserError("checkpoint last.pt\n  is damaged:\tdelete it")) == "checkpoint last.pt is damaged: delete it"
