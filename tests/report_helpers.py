"""Helpers shared by the report tests (and tests/test_protocol.py): a synthetic sweep written by hand, so every
expected number can be checked with a pencil (a best epoch that is not the last, a config repeated over three
seeds, a failed, a diverged (with a tempting accuracy) and an early-stopped run, a trial that died before
creating its folder, and a skipped duplicate), run folders added beside it, and W&B's public API faked at its
network edge."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from report.markdown import render
from report.sources import load_table
from report.stats import summarise
from report.table import CODE_VERSION
from trainer import metrics

# run_id: (model, strategy, config overrides, val_acc per epoch, train_seconds, trainable params, state, reason)
RUNS = {
    "r01": ("resnet50", "head_only", {"lr": 1e-3}, [0.60, 0.72, 0.70], 100, 20_490, "finished", None),
    "r02": ("resnet50", "last_k", {"k_layers": 2, "lr": 3e-4}, [0.70, 0.81, 0.79], 300, 15_000_000, "finished", None),
    "r03": ("resnet50", "full", {"lr": 1e-4}, [0.65, 0.80, 0.78], 600, 23_528_522, "finished", None),
    "r04": ("efficientnet_b0", "last_k", {"k_layers": 1, "lr": 3e-4, "seed": 0}, [0.75, 0.83, 0.82], 250,
            6_000_000, "finished", None),
    "r05": ("efficientnet_b0", "last_k", {"k_layers": 1, "lr": 3e-4, "seed": 1}, [0.74, 0.79, 0.785], 260,
            6_000_000, "finished", None),
    "r06": ("efficientnet_b0", "last_k", {"k_layers": 1, "lr": 3e-4, "seed": 2}, [0.73, 0.80, 0.81], 255,
            6_000_000, "finished", None),
    "r07": ("resnet50", "norm_and_head", {"lr": 1e-3}, [0.66, 0.74, 0.73], 120, 73_000, "finished", None),
    "r08": ("resnet50", "head_only", {"lr": 1e-2}, [0.62, 0.69, 0.66], 95, 20_490, "finished", None),
    "r09": ("scratch_cnn", None, {"lr": 1e-3, "dropout": 0.2}, [0.30, 0.45, 0.44], 400, 1_200_000, "finished", None),
    "r10": ("scratch_cnn", None, {"lr": 1e-3, "dropout": 0.3}, [0.35, 0.48, 0.47], 410, 1_200_000, "finished", None),
    "r11": ("resnet50", "full", {"lr": 1e-2}, [0.50], 200, 23_528_522, "failed",
            "RuntimeError: CUDA error: device-side assert triggered"),
    "r12": ("efficientnet_b0", "full", {"lr": 1e-1}, [0.95], 90, 5_300_000, "diverged", "train_loss is nan at epoch 2"),
    "r13": ("resnet50", "head_only", {"lr": 1e-1}, [0.50, 0.55], 60, 20_490, "early_stopped", None),
}


SUCCESSFUL = [r for r in RUNS if RUNS[r][6] in ("finished", "early_stopped")]


FINISHED = [r for r in RUNS if RUNS[r][6] == "finished"]


OOM_REASON = "CUDA out of memory. Tried to allocate 2.00 GiB"


WEIGHTS = {"resnet50": "IMAGENET1K_V2", "efficientnet_b0": "IMAGENET1K_V1", "scratch_cnn": None}


SCRATCH_KEYS = ("filters", "filter_organization", "kernel_size", "activation", "batch_norm", "dropout",
                "dense_units")


def make_config(run_id: str) -> dict:
    model, strategy, overrides, *_ = RUNS[run_id]
    scratch = model == "scratch_cnn"
    config = {
        "model": model, "weights": WEIGHTS[model], "strategy": strategy, "k_layers": None, "freeze_fraction": None,
        "lr": 1e-3, "backbone_lr_mult": None if scratch else 0.1, "augment": True, "epochs": 3, "batch_size": 32,
        "seed": 0, "optimizer": "adamw", "label_smoothing": 0.0, **{k: None for k in SCRATCH_KEYS},
        "data_dir": "/data/nature_12K", "output_dir": f"/tmp/out/{run_id}",
    }
    if scratch:
        config.update(filters=[32, 64, 128], filter_organization="double", kernel_size=3, activation="gelu",
                      batch_norm=True, dropout=0.2, dense_units=256)
    config.update(overrides)
    return config


def make_history(run_id: str) -> list[dict]:
    return epochs(RUNS[run_id][3], RUNS[run_id][4])


def epochs(val: list[float], seconds: float) -> list[dict]:
    """metrics.jsonl rows for a val_acc curve; train_acc and val_loss peak elsewhere, so a wrong key shows."""
    return [{metrics.EPOCH: epoch, metrics.TRAIN_LOSS: 1.0 / epoch, metrics.TRAIN_ACC: min(1.0, acc + 0.1),
             metrics.VAL_LOSS: 1.2 - acc, metrics.VAL_ACC: acc, metrics.LR: 1e-3,
             metrics.EPOCH_SECONDS: seconds / len(val), metrics.IMAGES_PER_SECOND: 500.0}
            for epoch, acc in enumerate(val, start=1)]


def make_summary(run_id: str) -> dict:
    model, _, _, val, seconds, trainable, state, reason = RUNS[run_id]
    best = max(val)
    return {
        metrics.STATE: state, metrics.BEST_VAL_ACC: best, metrics.BEST_EPOCH: val.index(best) + 1,
        metrics.TRAINABLE_PARAMS: trainable, metrics.TOTAL_PARAMS: max(trainable, 23_528_522),
        metrics.TRAIN_SECONDS: seconds, metrics.WEIGHTS_VERSION: WEIGHTS[model], metrics.SPLIT_HASH: "split-abc123",
        metrics.DEVICE: "cuda:0", metrics.EPOCHS_COMPLETED: len(val), metrics.REASON: reason,
        metrics.CACHE_SECONDS: 30.0 if run_id == "r01" else 0.5,
        "config_hash": f"hash-{run_id}", CODE_VERSION: "abc1234",
    }


def expected_best(run_id: str) -> float:
    return max(RUNS[run_id][3])


def add_run(runs: Path, run_id: str, like: str, val: list[float], summary: dict, **config) -> None:
    """A run folder beside the fixture's: `like`'s config with `config` changed, `val` as its val_acc curve."""
    folder = runs / run_id
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump({**make_config(like), **config,
                                                        "output_dir": f"/tmp/out/{run_id}"}))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in epochs(val, 100)))
    (folder / "summary.json").write_text(json.dumps(summary))


def section(text: str, number: int) -> str:
    start = text.index(f"## {number}.")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def table_run_ids(markdown: str) -> list[str]:
    return re.findall(r"^\| (?:\d+ \| )?`(r\d+)`", markdown, flags=re.MULTILINE)


class FakeSummary:
    def __init__(self, data):
        self._json_dict = data


class FakeRun:
    def __init__(self, run_id: str, wandb_state: str, summary: dict, as_object: bool):
        self.id = run_id
        self.state = wandb_state
        self.config = {**make_config(run_id), "_wandb": {"cli_version": "0.31.0"}}
        # W&B's summary keeps the LAST logged val_acc; the report must never read it.
        last = {metrics.VAL_ACC: RUNS[run_id][3][-1], "_runtime": 12.0}
        data = {**summary, **last}
        self.summary = FakeSummary(data) if as_object else data
        self.summary_metrics = data  # what the report reads: the public property, never `summary._json_dict`
        self._history = [{**row, "_step": i} for i, row in enumerate(make_history(run_id))]

    def scan_history(self, keys=None):
        for row in self._history:
            if keys is None or all(k in row for k in keys):
                yield {k: row[k] for k in keys} if keys else dict(row)


class FakeRuns:
    """Paginated like the public API: pages are fetched as iteration goes."""

    def __init__(self, runs, per_page):
        self.runs, self.per_page, self.pages_served = runs, per_page, 0

    def __iter__(self):
        for start in range(0, len(self.runs), self.per_page):
            self.pages_served += 1
            yield from self.runs[start:start + self.per_page]


class FakeSweep:
    def __init__(self, runs):
        self.name = "synthetic"
        self.config = {"metric": {"name": metrics.VAL_ACC, "goal": "maximize"}}
        self.runs = FakeRuns(runs, per_page=7)


def fake_wandb(monkeypatch, sweep=None, error=None):
    """Replace only `wandb.Api`, the network edge; the real wandb module stays imported."""
    wandb = pytest.importorskip("wandb")

    class Api:
        def __init__(self, *args, **kwargs):
            if error:
                raise error

        def sweep(self, path):
            assert path == "team/project/abc123"
            return sweep

        def runs(self, path, filters=None, per_page=50, lazy=True):
            assert (path, filters, lazy) == ("team/project", {"sweep": "abc123"}, False)
            return sweep.runs

    monkeypatch.setattr(wandb, "Api", Api)


class FakeWandbServer:
    """W&B's server for the public API, faked where wandb's Python hands each request to wandb-core, the process that
    sends it over the network (`ServiceApi.send_api_request`, and `finalize`, which would start that process). All of
    wandb's own Python (Api, Sweep, Runs and its pages, Run) runs unchanged, and every request it makes is counted."""

    def __init__(self, runs: dict[str, tuple[str, dict, dict]]):
        self.runs = runs  # run id -> (W&B state, config, summary)
        self.requests: list[str] = []

    def node(self, run_id: str) -> dict:
        state, config, summary = self.runs[run_id]
        return {"id": f"id-{run_id}", "name": run_id, "displayName": run_id, "sweepName": "abc123", "state": state,
                "config": json.dumps({key: {"value": value} for key, value in config.items()}),
                "summaryMetrics": json.dumps(summary), "systemMetrics": "{}", "historyLineCount": 3, "historyKeys": {},
                "tags": [], "group": None, "jobType": None, "commit": None, "readOnly": False,
                "createdAt": "2026-01-01T00:00:00",
                "heartbeatAt": "2026-01-01T00:00:00", "description": None, "notes": None, "projectId": 1}

    def answer(self, query: str, variables: dict) -> dict:
        if "query Runs(" in query:
            names = sorted(self.runs)
            start = int(variables.get("cursor") or 0)
            page = names[start:start + int(variables.get("perPage") or 50)]
            edges = [{"node": self.node(name), "cursor": str(start + i + 1)} for i, name in enumerate(page)]
            return {"project": {"internalId": "p1", "runCount": len(names), "readOnly": False,
                                "runs": {"edges": edges, "pageInfo": {"endCursor": str(start + len(page)),
                                                                     "hasNextPage": start + len(page) < len(names)}}}}
        if "sweep(" in query:
            config = yaml.safe_dump(
                {"name": "synthetic", "method": "random", "metric": {"name": metrics.VAL_ACC, "goal": "maximize"}})
            return {"project": {"sweep": {"__typename": "Sweep", "id": "abc123", "name": "abc123",
                                          "displayName": "synthetic",
                                          "method": "random", "state": "FINISHED", "config": config,
                                          "runCount": len(self.runs)}}}
        if "run(name:" in query:  # one run, with its config and summary (what `sweep.runs` fetched per run)
            return {"project": {"run": self.node(variables["name"])}}
        if "viewer" in query:  # the logged-in user's default entity, asked once per Api
            return {"viewer": {"id": "u1", "entity": "team"}}
        return {}

    def send_api_request(self, service_api, request, timeout=None):
        from wandb.proto import wandb_api_pb2 as pb

        kind = request.WhichOneof("request")
        self.requests.append(kind)
        if kind == "graphql_request":
            data = self.answer(request.graphql_request.query,
                               json.loads(request.graphql_request.variables_json or "{}"))
            return pb.ApiResponse(graphql_response=pb.GraphQLResponse(data_json=json.dumps(data)))
        return pb.ApiResponse()  # the login check; history scans of runs that have no rows


def finished_summary(like: str, best: float, **changes) -> dict:
    """`like`'s summary for a finished run of two epochs whose second reached `best`."""
    return {**make_summary(like), metrics.BEST_VAL_ACC: best, metrics.BEST_EPOCH: 2, metrics.EPOCHS_COMPLETED: 2,
            **changes}


def add_finished(runs: Path, run_id: str, like: str, best: float, **config) -> None:
    add_run(runs, run_id, like, [round(best - 0.1, 4), best], finished_summary(like, best), **config)


def without(data: dict, *keys: str) -> dict:
    return {k: v for k, v in data.items() if k not in keys}


def rewrite_metrics(folder: Path, rows: list) -> None:
    """metrics.jsonl as given: dicts become JSON lines, strings are written as they are (a torn line)."""
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    (folder / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))


def report_of(source: Path) -> tuple:
    summary = summarise(load_table(str(source)))
    return summary, render(summary, {}, {})
