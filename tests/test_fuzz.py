"""Property-based fuzzing of every reader of untrusted input: the config parser, the YAML loader, the sweep
definition checker, image admission and the scan, and the run-record and table readers.

The property is the contract of the harness: whatever the input, a reader returns, skips what it cannot use
(naming it), or raises the project's UserError with one line; never another exception, never a hang. Each property
runs under two profiles: `fast` (a few derandomized examples, in the default suite) and `long` (many random
examples, marked slow: `pytest -m slow tests/test_fuzz.py`).
"""

from __future__ import annotations

import json
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from common.errors import UserError

settings.register_profile("fast", max_examples=15, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("long", max_examples=400, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

PROFILES = [pytest.param("fast", id="fast"), pytest.param("long", id="long", marks=pytest.mark.slow)]


def one_line(error: UserError) -> None:
    assert "\n" not in str(error) and str(error).strip() == str(error) and str(error)


def holds(check, *args) -> None:
    """`check(*args)` returns, or raises a one-line UserError: nothing else."""
    try:
        check(*args)
    except UserError as error:
        one_line(error)


# --- strategies -------------------------------------------------------------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=30), st.sampled_from(["true", "none", "1e400", "-1", "0x10", "nan", "2**64", "",
                                                           "~", "~\x00x", "a\x00b", "\udcff", "../x"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
YAML_PIECES = ["a", "lr", "seed", "method", "parameters", ":", ": ", "- ", "[", "]", "{", "}", ",", "&x ", "*x", "&y ",
               "*y",
               "<<: ", "!!binary ", "!!set ", "!!python/object:os.system ", "'", '"', "#", "\n", "\n  ", "\n    ",
               "2024-02-31",
               "1e5", "0b101", "yes", "~", "? ", "|", ">", "\t", "%YAML 1.1\n", "---\n", "...\n", "\\x00", "\udcff",
               "é"]
yaml_texts = st.one_of(st.text(max_size=200), st.lists(st.sampled_from(YAML_PIECES), max_size=60).map("".join))


def _field_names():
    from trainer.config import FIELDS

    return sorted(FIELDS)


# --- the config parser --------------------------------------------------------------------------------------

@pytest.mark.parametrize("profile", PROFILES)
def test_any_value_of_any_parameter_parses_or_is_one_line(profile):
    from trainer.config import parse_value

    @settings(settings.get_profile(profile))
    @given(st.sampled_from(_field_names() + ["lrr", "run-id"]), values)
    def check(name, raw):
        holds(parse_value, name, raw)

    check()


@pytest.mark.parametrize("profile", PROFILES)
def test_any_command_line_or_mapping_of_parameters_parses_or_is_one_line(profile):
    from trainer.config import parse_cli, parse_run_config

    arguments = st.lists(st.one_of(st.text(max_size=20), st.sampled_from(_field_names()).map(lambda n: f"--{n}"),
                                   st.tuples(st.sampled_from(_field_names()), st.text(max_size=12)).map(
                                       lambda kv: f"--{kv[0]}={kv[1]}")),
                         max_size=6)

    @settings(settings.get_profile(profile))
    @given(arguments, st.dictionaries(st.sampled_from(_field_names()), values, max_size=5))
    def check(args, mapping):
        holds(parse_cli, args)
        holds(parse_run_config, mapping)

    check()


# --- the YAML loader ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("profile", PROFILES)
def test_any_text_or_bytes_read_as_yaml_loads_or_is_one_line(profile, tmp_path):
    from common.yamlfile import parse_yaml, read_yaml

    @settings(settings.get_profile(profile))
    @given(yaml_texts, st.binary(max_size=200))
    def check(text, data):
        holds(parse_yaml, text, "config file x.yaml")
        path = tmp_path / "fuzz.yaml"
        path.write_bytes(data)
        holds(read_yaml, path, "config file")

    check()


# --- the sweep definition checker ---------------------------------------------------------------------------

def _sweep_definitions():
    from sweeper.definition import SPEC_KEYS

    spec = st.dictionaries(st.sampled_from([*SPEC_KEYS, "distribution", "parameters", "valeu"]),
                           st.one_of(scalars, st.lists(scalars, max_size=4),
                                     st.sampled_from(["int_uniform", "uniform", "normal", "log_uniform", "q_uniform",
                                                      "beta", "categorical", "log_uniform_values", "bogus"])),
                           max_size=4)
    parameters = st.dictionaries(st.sampled_from(_field_names() + ["config", "lrr", "run_id"]),
                                 st.one_of(spec, scalars), max_size=4)
    return st.fixed_dictionaries({}, optional={
        "method": st.sampled_from(["grid", "random", "bayes", "bayse", 3]),
        "metric": st.one_of(scalars, st.fixed_dictionaries({"name": st.sampled_from(["val_acc", "loss"]),
                                                            "goal": st.sampled_from(["maximize", "minimize", 0])})),
        "parameters": st.one_of(parameters, scalars),
        "early_terminate": values, "run_cap": scalars,
    })


@pytest.mark.parametrize("profile", PROFILES)
def test_any_sweep_definition_is_checked_or_refused_in_one_line(profile, tmp_path, monkeypatch):
    import yaml

    from sweeper.local import check_sweep

    monkeypatch.chdir(tmp_path)  # recipe paths a definition names are looked for here

    @settings(settings.get_profile(profile))
    @given(_sweep_definitions(), yaml_texts)
    def check(definition, text):
        path = tmp_path / "sweep.yaml"
        path.write_text(yaml.safe_dump(definition, allow_unicode=True))
        holds(check_sweep, path, {})
        path.write_text(text, errors="surrogateescape")
        holds(check_sweep, path, {})

    check()


# --- image admission and the scan -----------------------------------------------------------------------------

def _png(width: int, height: int, rows: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("profile", PROFILES)
def test_any_file_is_admitted_or_skipped_with_a_reason_and_none_past_the_limits_is_decoded(profile, tmp_path,
                                                                                           monkeypatch):
    from PIL import ImageFile

    from data.images import admission_problem, check_image

    real_load = ImageFile.ImageFile.load

    def guarded_load(image):
        assert admission_problem(*image.size) is None, f"decoding {image.size} before it was admitted"
        return real_load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", guarded_load)

    @settings(settings.get_profile(profile))
    @given(st.binary(max_size=300), st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1), st.binary(max_size=64))
    def check(data, width, height, rows):
        path = tmp_path / "image.png"
        for content in (data, _png(width, height, rows), b"\x89PNG\r\n\x1a\n" + data):
            path.write_bytes(content)
            reason = check_image(path)
            assert reason is None or (isinstance(reason, str) and reason and "\n" not in reason)
        path.write_bytes(_png(width, height, rows))
        if admission_problem(width, height):
            assert check_image(path) is not None  # a decompression bomb or an extreme shape is skipped with a reason

    check()


@pytest.mark.parametrize("profile", PROFILES)
def test_any_tree_of_files_scans_into_an_index_or_one_line(profile, tmp_path):
    import os

    from data.scan import scan_folder

    names = st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b and b"\x00" not in b
                                                      and b not in (b".", b".."))

    @settings(settings.get_profile(profile))
    @given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), names, st.binary(max_size=64),
                              st.sampled_from(["file", "link", "dir"])),
                    max_size=8), st.integers(0, 2**16))
    def check(entries, seed):
        root = tmp_path / f"tree{seed}"
        for folder, name, data, kind in entries:
            (root / folder).mkdir(parents=True, exist_ok=True)
            path = os.path.join(os.fsencode(root / folder), name)
            if os.path.lexists(path):
                continue
            if kind == "file":
                with open(path, "wb") as handle:
                    handle.write(data)
            elif kind == "link":
                os.symlink(data.replace(b"\x00", b"") or name, path)
            else:
                os.mkdir(path)
        holds(scan_folder, root, tmp_path / "cache", False)

    check()


# --- the run-record and table readers ---------------------------------------------------------------------

records = st.one_of(st.binary(max_size=200), values.map(lambda v: json.dumps(v, default=str).encode()),
                    st.lists(values.map(lambda v: json.dumps(v, default=str)), max_size=4).map(
                        lambda rows: "\n".join(rows).encode()))


@pytest.mark.parametrize("profile", PROFILES)
def test_any_run_record_reads_or_is_one_line(profile, tmp_path):
    from report.sources import _read_run_folder
    from trainer.record import RunRecord

    @settings(settings.get_profile(profile))
    @given(records, records, records)
    def check(config, history, summary):
        folder = tmp_path / "run"
        folder.mkdir(exist_ok=True)
        for name, data in (("config.yaml", config), ("metrics.jsonl", history), ("summary.json", summary)):
            (folder / name).write_bytes(data)
        assert isinstance(RunRecord.read_summary(folder), dict)
        assert all(isinstance(row, dict) for row in RunRecord.read_history(folder))
        holds(RunRecord.saved_config, folder)
        holds(_read_run_folder, folder)

    check()


@pytest.mark.parametrize("profile", PROFILES)
def test_any_trial_table_reads_or_is_one_line(profile, tmp_path):
    from report.sources import load_table
    from sweeper.table import TrialTable

    row = st.fixed_dictionaries({"run_id": st.one_of(st.text(max_size=10), st.just("t-001-abcd"), scalars),
                                 "state": st.sampled_from(["finished", "running", "duplicate", "exploded", 1]),
                                 "config": values, "config_hash": scalars, "suggested": values},
                                optional={"fixed": values, "exit_code": scalars})
    tables = st.one_of(records, st.lists(row.map(json.dumps), max_size=4).map(lambda rows: "\n".join(rows).encode()))

    @settings(settings.get_profile(profile))
    @given(tables, st.booleans())
    def check(data, cut):
        sweep = tmp_path / "sweep"
        (sweep / "runs").mkdir(parents=True, exist_ok=True)
        (sweep / "table.jsonl").write_bytes(data[: len(data) // 2] if cut else data)
        holds(TrialTable, sweep)
        holds(load_table, str(sweep))

    check()

