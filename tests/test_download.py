"""Download and extraction against a local HTTP server: resume, restart, interruption, zip-slip, corrupt zips."""

from __future__ import annotations

import io
import re
import shutil
import socket
import stat
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from common.errors import UserError
from data.download import MARKER_NAME, ZIP_NAME, download_dataset, download_file, safe_extract

CLASSES = ("Amphibia", "Aves")


def _tree_files() -> dict[str, bytes]:
    """A tiny inaturalist_12K tree; contents differ per file so a misplaced byte shows."""
    files = {}
    for split in ("train", "val"):
        for class_name in CLASSES:
            for index in range(3):
                name = f"inaturalist_12K/{split}/{class_name}/img_{index}.jpg"
                files[name] = (name.encode() * 40)[: 500 + index]
    return files


def _zip_bytes(files: dict[str, bytes], extra: list[tuple[zipfile.ZipInfo, bytes]] = (),
               compression=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        for info, data in extra:
            archive.writestr(info, data)
    return buffer.getvalue()


class _Server:
    """Serves one payload from 127.0.0.1; `mode` picks how it answers Range requests."""

    def __init__(self, payload: bytes, mode: str = "range"):
        self.payload = payload
        self.mode = mode  # range | ignore_range | from_zero | truncate | stall | slow
        self.ranges: list[str | None] = []  # the Range header of every request, None when absent
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 5  # a stuck client cannot hold a handler thread past the test

            def do_GET(self):
                server.ranges.append(self.headers.get("Range"))
                data, wanted = server.payload, self.headers.get("Range")
                if server.mode == "range" and wanted:
                    start = int(re.fullmatch(r"bytes=(\d+)-", wanted).group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                    body = data[start:]
                elif server.mode == "from_zero" and wanted:  # a 206 that says it starts at byte 0, not where asked
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes 0-{len(data) - 1}/{len(data)}")
                    body = data
                else:
                    self.send_response(200)
                    body = data
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.mode == "truncate":
                    body = body[: len(body) // 2]  # promise everything, send half, hang up
                elif server.mode == "stall":
                    time.sleep(1.0)  # longer than the client's timeout, bounded so shutdown is quick
                elif server.mode == "slow":
                    time.sleep(0.3)  # slow enough for a second downloader to start meanwhile
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/{ZIP_NAME}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def serve():
    servers = []

    def start(payload: bytes, mode: str = "range") -> _Server:
        servers.append(_Server(payload, mode))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def dataset_zip() -> bytes:
    junk = zipfile.ZipInfo("__MACOSX/inaturalist_12K/._train")
    return _zip_bytes(_tree_files(), extra=[(junk, b"resource fork")])


def _assert_one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and message
    return message


def test_download_dataset_builds_the_tree_and_a_second_call_is_a_no_op(serve, dataset_zip, tmp_path):
    server = serve(dataset_zip)
    dest = tmp_path / "data"
    assert download_dataset(dest, server.url, progress=False) == dest
    for name, data in _tree_files().items():
        assert (dest / name).read_bytes() == data
    assert (dest / MARKER_NAME).exists()
    assert not (dest / "__MACOSX").exists()
    assert sorted(path.name for path in dest.iterdir()) == sorted([MARKER_NAME, ZIP_NAME, "inaturalist_12K"])
    requests = len(server.ranges)
    download_dataset(dest, server.url, progress=False)
    assert len(server.ranges) == requests


def test_two_downloads_into_one_folder_take_turns(serve, dataset_zip, tmp_path):
    # Two trials (or sweeps) sharing a data_dir: the second waits for the first and finds the dataset in place,
    # instead of writing into the same .part file at the same time.
    server = serve(dataset_zip, mode="slow")
    dest = tmp_path / "data"
    results, errors = [], []

    def fetch():
        try:
            results.append(download_dataset(dest, server.url, progress=False))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors and results == [dest, dest] and len(server.ranges) == 1
    assert all((dest / name).read_bytes() == data for name, data in _tree_files().items())


def test_resume_sends_a_range_request_and_appends(serve, dataset_zip, tmp_path):
    server = serve(dataset_zip)
    dest = tmp_path / ZIP_NAME
    half = len(dataset_zip) // 2
    Path(f"{dest}.part").write_bytes(dataset_zip[:half])
    download_file(server.url, dest, progress=True, chunk_bytes=1000)
    assert server.ranges == [f"bytes={half}-"]
    assert dest.read_bytes() == dataset_zip
    assert not Path(f"{dest}.part").exists()


def test_a_server_that_ignores_range_still_gives_the_right_file(serve, dataset_zip, tmp_path):
    server = serve(dataset_zip, mode="ignore_range")
    dest = tmp_path / ZIP_NAME
    Path(f"{dest}.part").write_bytes(b"x" * 100)  # bytes that must not survive a restart
    download_file(server.url, dest, progress=False)
    assert server.ranges == ["bytes=100-"]
    assert dest.read_bytes() == dataset_zip


def test_a_complete_part_is_finished_by_a_416_answer(serve, dataset_zip, tmp_path):
    server = serve(dataset_zip)
    dest = tmp_path / ZIP_NAME
    Path(f"{dest}.part").write_bytes(dataset_zip)
    download_file(server.url, dest, progress=False)
    assert server.ranges == [f"bytes={len(dataset_zip)}-"]
    assert dest.read_bytes() == dataset_zip


def test_an_interrupted_download_keeps_the_part_and_resumes_later(serve, dataset_zip, tmp_path):
    server = serve(dataset_zip, mode="truncate")
    dest = tmp_path / ZIP_NAME
    with pytest.raises(UserError) as error:
        download_file(server.url, dest, progress=False)
    message = _assert_one_line(error)
    assert "resumes" in message and "--data_dir" in message and server.url in message
    assert not dest.exists()
    half = len(dataset_zip) // 2
    assert Path(f"{dest}.part").read_bytes() == dataset_zip[:half]

    server.mode = "range"
    download_file(server.url, dest, progress=False)
    assert server.ranges[-1] == f"bytes={half}-"
    assert dest.read_bytes() == dataset_zip


def test_a_stalled_server_times_out_with_a_user_error(serve, dataset_zip, tmp_path):
    server = serve(dataset_zip, mode="stall")
    dest = tmp_path / ZIP_NAME
    with pytest.raises(UserError) as error:
        download_file(server.url, dest, progress=False, timeout=0.2)
    assert "--data_dir" in _assert_one_line(error)
    assert not dest.exists()


def test_an_unreachable_host_is_a_one_line_user_error(tmp_path):
    with socket.socket() as probe:  # a port that was free a moment ago and now has no listener
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(UserError) as error:
        download_dataset(tmp_path / "data", f"http://127.0.0.1:{port}/{ZIP_NAME}", progress=False)
    message = _assert_one_line(error)
    assert "--data_dir" in message and str(port) in message
    assert not (tmp_path / "data" / MARKER_NAME).exists()


def test_an_existing_file_is_not_downloaded_again(serve, dataset_zip, tmp_path):
    server = serve(dataset_zip)
    dest = tmp_path / ZIP_NAME
    dest.write_bytes(b"the user's own copy")
    assert download_file(server.url, dest) == dest
    assert server.ranges == [] and dest.read_bytes() == b"the user's own copy"


def _symlink_entry() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("inaturalist_12K/train/Aves/link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    "hostile",
    [
        lambda root: zipfile.ZipInfo("../evil.txt"),
        lambda root: zipfile.ZipInfo("inaturalist_12K/../../evil.txt"),
        lambda root: zipfile.ZipInfo("..\\evil.txt"),
        lambda root: zipfile.ZipInfo(f"{root}/evil.txt"),
        lambda root: zipfile.ZipInfo("C:/evil.txt"),
        lambda root: _symlink_entry(),
    ],
    ids=["dotdot", "nested-dotdot", "backslash-dotdot", "absolute", "drive-letter", "symlink"],
)
def test_zip_slip_is_refused_and_nothing_is_written(hostile, tmp_path):
    info = hostile(tmp_path)
    zip_path = tmp_path / ZIP_NAME
    zip_path.write_bytes(_zip_bytes(_tree_files(), extra=[(info, b"../../evil.txt")]))
    target = tmp_path / "target"
    with pytest.raises(UserError) as error:
        safe_extract(zip_path, target)
    message = _assert_one_line(error)
    assert str(zip_path) in message and repr(info.filename) in message
    assert not (tmp_path / "evil.txt").exists()
    assert not target.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == [ZIP_NAME]


def test_an_existing_tree_is_left_alone(dataset_zip, tmp_path):
    zip_path = tmp_path / ZIP_NAME
    zip_path.write_bytes(dataset_zip)
    mine = tmp_path / "inaturalist_12K" / "mine.txt"
    mine.parent.mkdir()
    mine.write_text("keep me")
    with pytest.raises(UserError) as error:
        safe_extract(zip_path, tmp_path)
    assert "--data_dir" in _assert_one_line(error)
    assert mine.read_text() == "keep me"
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([ZIP_NAME, "inaturalist_12K"])


@pytest.mark.parametrize("damage", ["garbage", "truncated", "bad-crc"])
def test_a_corrupt_zip_is_a_user_error(damage, dataset_zip, tmp_path):
    if damage == "garbage":
        data = b"this is not a zip file " * 50
    elif damage == "truncated":
        data = dataset_zip[: len(dataset_zip) // 2]
    else:
        stored = io.BytesIO()
        with zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as archive:
            archive.writestr("inaturalist_12K/train/Aves/a.jpg", b"A" * 1000)
        data = stored.getvalue().replace(b"A" * 1000, b"B" * 1000, 1)  # same size, wrong CRC
    zip_path = tmp_path / ZIP_NAME
    zip_path.write_bytes(data)
    target = tmp_path / "target"
    with pytest.raises(UserError) as error:
        safe_extract(zip_path, target)
    message = _assert_one_line(error)
    assert str(zip_path) in message and "delete" in message
    assert not (target / "inaturalist_12K").exists()
    assert not target.exists() or list(target.iterdir()) == []  # no staging folder left behind


def test_locate_downloads_into_an_empty_folder_only(serve, dataset_zip, tmp_path, nature_dir):
    from data.layout import locate_dataset

    server = serve(dataset_zip)
    layout = locate_dataset(tmp_path / "new", url=server.url)  # a new folder: nature_12K is fetched into it
    assert layout.train_dir == tmp_path / "new" / "inaturalist_12K" / "train"
    fetched = len(server.ranges)

    # --data_dir pointing at train/ (class folders) must not unpack 3.6 GB into it as one more class
    with pytest.raises(UserError) as error:
        locate_dataset(nature_dir / "inaturalist_12K" / "train", url=server.url)
    message = _assert_one_line(error)
    assert "pass the folder above it" in message and "Amphibia" in message
    # A plain folder of class folders (not named train/), given directly or by its parent: how to arrange it,
    # not "the folder above it" again and again.
    flat = tmp_path / "birds" / "my_photos"
    shutil.copytree(nature_dir / "inaturalist_12K" / "train", flat)
    for given in (flat, flat.parent):
        with pytest.raises(UserError) as error:
            locate_dataset(given, url=server.url)
        message = _assert_one_line(error)
        assert f"{flat} holds class folders directly: move them into {flat / 'train'}/" in message
        assert f"pass --data_dir={flat}" in message and "folder above it" not in message
    other = tmp_path / "notes"
    other.mkdir()
    (other / "readme.txt").write_text("x")
    with pytest.raises(UserError, match="only downloaded into an empty folder"):
        locate_dataset(other, url=server.url)
    with pytest.raises(UserError, match="is a file, not a folder"):
        locate_dataset(other / "readme.txt", url=server.url)

    # A --data_dir that does not exist inside a dataset is a typo: named, with the dataset's folder, never created
    train = nature_dir / "inaturalist_12K" / "train"
    for typo, missing in ((train / "Amphibai", "'Amphibai' (did you mean 'Amphibia'?)"),
                          (train.parent / "trian", "'trian' (did you mean 'train'?)")):
        with pytest.raises(UserError) as error:
            locate_dataset(typo, url=server.url)
        message = _assert_one_line(error)
        assert missing in message and f"pass --data_dir={train.parent}" in message and not typo.exists()
    assert len(server.ranges) == fetched


def test_only_a_path_inside_a_dataset_counts_as_a_typo(tmp_path, nature_dir):
    from data.layout import _refuse_a_typo

    train = nature_dir / "inaturalist_12K" / "train"
    with pytest.raises(UserError, match=f"pass --data_dir={train.parent}"):
        _refuse_a_typo(train / "Amphibia" / "extra" / "more")  # under a class folder
    for typo, meant in ((nature_dir / "inaturalist_12k", nature_dir / "inaturalist_12K"),
                        (nature_dir.with_name(nature_dir.name + "x"), nature_dir)):
        with pytest.raises(UserError) as error:  # a dataset's own name, mistyped: not a new folder to download into
            _refuse_a_typo(typo)
        assert f"did you mean {meant}?" in str(error.value)
    # New folders for a download, elsewhere: an ancestor named test/, a project that has a train/ further up.
    (tmp_path / "test" / "runs").mkdir(parents=True)
    (tmp_path / "project" / "train").mkdir(parents=True)
    (tmp_path / "project" / "data" / "sets").mkdir(parents=True)
    for fresh in (tmp_path / "test" / "runs" / "nature", tmp_path / "project" / "data" / "sets" / "nature"):
        assert _refuse_a_typo(fresh) is None


def test_a_failed_first_download_leaves_no_folder_behind(tmp_path):
    from data.layout import locate_dataset

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(UserError, match="nothing was kept"):
        locate_dataset(tmp_path / "new" / "nature", url=f"http://127.0.0.1:{port}/{ZIP_NAME}")
    assert list(tmp_path.iterdir()) == []  # neither nature/ nor new/: a typo costs nothing to undo


def test_a_folder_that_cannot_be_created_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError) as error:
        download_file("http://127.0.0.1:9/nature_12K.zip", blocker / "sub" / ZIP_NAME, progress=False)
    assert "cannot create" in _assert_one_line(error)



# Behaviours pinned by the mutation audit of data/download.py and data/layout.py.


def test_a_partial_response_from_another_offset_restarts_the_download(serve, dataset_zip, tmp_path):
    server = serve(dataset_zip, mode="from_zero")
    dest = tmp_path / ZIP_NAME
    Path(f"{dest}.part").write_bytes(b"x" * 100)  # appending the whole file after these would corrupt it
    download_file(server.url, dest, progress=False)
    assert server.ranges == ["bytes=100-", None]
    assert dest.read_bytes() == dataset_zip


def test_a_part_longer_than_the_remote_file_is_downloaded_afresh(serve, dataset_zip, tmp_path):
    """A stale .part (another file, or bytes appended twice) is never renamed into place as the zip."""
    server = serve(dataset_zip)
    dest = tmp_path / ZIP_NAME
    Path(f"{dest}.part").write_bytes(dataset_zip + b"stale tail")
    download_file(server.url, dest, progress=False)
    assert server.ranges == [f"bytes={len(dataset_zip) + 10}-", None]
    assert dest.read_bytes() == dataset_zip


def test_a_folder_holding_only_a_partial_download_resumes_it(serve, dataset_zip, tmp_path):
    """The folder a cut-off download left behind is not "a folder of other files": the next run resumes there."""
    from data.layout import locate_dataset

    server = serve(dataset_zip)
    dest = tmp_path / "data"
    dest.mkdir()
    half = len(dataset_zip) // 2
    (dest / f"{ZIP_NAME}.part").write_bytes(dataset_zip[:half])
    layout = locate_dataset(dest, url=server.url)
    assert layout.train_dir == dest / "inaturalist_12K" / "train" and server.ranges == [f"bytes={half}-"]


def test_a_failed_download_through_locate_keeps_its_partial_file_for_the_next_run(serve, dataset_zip, tmp_path):
    from data.layout import locate_dataset

    server = serve(dataset_zip, mode="truncate")
    dest = tmp_path / "new" / "nature"
    with pytest.raises(UserError, match="the next run resumes it"):
        locate_dataset(dest, url=server.url)
    half = len(dataset_zip) // 2
    assert (dest / f"{ZIP_NAME}.part").read_bytes() == dataset_zip[:half]
    server.mode = "range"
    assert locate_dataset(dest, url=server.url).root == dest / "inaturalist_12K"
    assert server.ranges[-1] == f"bytes={half}-"


def _free_space(monkeypatch, free: int) -> None:
    """Make every free-space check see `free` bytes."""
    import common.disk

    monkeypatch.setattr(common.disk.shutil, "disk_usage",
                        lambda path: shutil._ntuple_diskusage(10 * free, 9 * free, free))


def _unpacked(payload: bytes) -> int:
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        return sum(info.file_size for info in archive.infolist() if not info.filename.startswith("__MACOSX"))


@pytest.mark.parametrize("kept", [0, 1000])
def test_a_disk_without_room_for_the_zip_and_its_images_is_refused_before_any_byte_is_written(
    serve, tmp_path, monkeypatch, kept
):
    # What is left to download plus the unpacked images (about the zip's size), with as much again to spare.
    dataset_zip = _zip_bytes(_tree_files(), compression=zipfile.ZIP_STORED)  # JPEGs: stored, unpacked < zip
    assert _unpacked(dataset_zip) < len(dataset_zip) - kept
    dest = tmp_path / "data"
    dest.mkdir()
    part = dest / f"{ZIP_NAME}.part"
    if kept:
        part.write_bytes(dataset_zip[:kept])
    needed = len(dataset_zip) - kept + len(dataset_zip)
    _free_space(monkeypatch, 2 * needed - 1)
    with pytest.raises(UserError) as error:
        download_dataset(dest, serve(dataset_zip).url, progress=False)
    message = _assert_one_line(error)
    assert "not enough free space" in message and str(dest) in message and "--data_dir" in message
    assert part.read_bytes() == dataset_zip[:kept] if kept else not part.exists()
    _free_space(monkeypatch, 2 * needed)
    download_dataset(dest, serve(dataset_zip).url, progress=False)
    assert all((dest / name).read_bytes() == data for name, data in _tree_files().items())


def test_extraction_is_refused_before_anything_is_written_when_its_files_do_not_fit(dataset_zip, tmp_path, monkeypatch):
    zip_path = tmp_path / ZIP_NAME
    zip_path.write_bytes(dataset_zip)
    _free_space(monkeypatch, 2 * _unpacked(dataset_zip) - 1)
    with pytest.raises(UserError) as error:
        safe_extract(zip_path, tmp_path)
    assert "not enough free space" in _assert_one_line(error) and ZIP_NAME in str(error.value)
    assert sorted(path.name for path in tmp_path.iterdir()) == [ZIP_NAME]
    _free_space(monkeypatch, 2 * _unpacked(dataset_zip))
    safe_extract(zip_path, tmp_path)
    assert all((tmp_path / name).read_bytes() == data for name, data in _tree_files().items())


def test_a_zip_given_as_the_data_folder_is_told_how_to_unzip_it(tmp_path):
    from data.layout import locate_dataset

    archive = tmp_path / "nature_12K.zip"
    archive.write_bytes(b"PK\x03\x04")
    with pytest.raises(UserError, match=rf"is a file, not a folder: .*unzip it first \(unzip -q {archive} -d "
                                        rf"{tmp_path / 'nature_12K'}\) and pass that folder"):
        locate_dataset(archive)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError) as caught:
        locate_dataset(tmp_path / "notes.txt")
    assert "unzip it first" not in str(caught.value)
