"""Where a report's runs come from: a run or sweep folder (its table.jsonl against the run folders, the locks that
say a run is training), or a W&B sweep (the same numbers, in a few requests, W&B's states and histories); a
source or --out that cannot be used is one line."""

from __future__ import annotations

import json

import pytest

from common.errors import UserError
from report.build import build_report
from report.markdown import render
from report.sources import load_table
from report.stats import summarise
from report.table import failure_reason
from report_helpers import (
    RUNS,
    FakeRun,
    FakeSweep,
    FakeWandbServer,
    epochs,
    fake_wandb,
    make_config,
    make_history,
    make_summary,
    report_of,
    section,
    table_run_ids,
    without,
)
from trainer import metrics


def test_wandb_source_gives_the_same_numbers(monkeypatch, summary):
    runs = [FakeRun(run_id, "crashed" if RUNS[run_id][6] == "failed" else "finished", make_summary(run_id),
                    as_object=i % 2 == 0) for i, run_id in enumerate(RUNS)]
    sweep = FakeSweep(runs)
    fake_wandb(monkeypatch, sweep)
    remote = summarise(load_table("team/project/abc123"))
    assert sweep.runs.pages_served == 2 and len(remote.table.records) == len(RUNS)
    assert [(r.run_id, r.best_val_acc, r.best_epoch) for r in remote.leaderboard] == \
           [(r.run_id, r.best_val_acc, r.best_epoch) for r in summary.leaderboard]
    assert [(g.model, g.strategy, g.stats, g.early_stopped) for g in remote.groups] == \
           [(g.model, g.strategy, g.stats, g.early_stopped) for g in summary.groups]
    assert remote.gap_points == summary.gap_points and remote.seeds_fine_tuned.ci == summary.seeds_fine_tuned.ci
    assert (remote.pareto_seconds, remote.pareto_params) == (summary.pareto_seconds, summary.pareto_params)
    assert remote.importance == summary.importance
    assert len(remote.best_per_strategy[0].history) == 3
    text = render(remote, {}, {})
    assert "+35.00 points" in text and table_run_ids(section(text, 2)) == [r.run_id for r in summary.leaderboard]


def test_wandb_state_used_when_our_state_is_missing(monkeypatch):
    partial = {k: v for k, v in make_summary("r11").items() if k not in (metrics.STATE, metrics.REASON)}
    fake_wandb(monkeypatch, FakeSweep([FakeRun("r11", "crashed", partial, as_object=True),
                                      FakeRun("r01", "finished", make_summary("r01"), as_object=False)]))
    records = {r.run_id: r for r in load_table("team/project/abc123").records}
    assert records["r11"].state == "failed" and records["r11"].reason == "W&B state crashed"
    assert records["r01"].best_val_acc == 0.72


def test_a_wandb_run_that_died_while_running_takes_wandbs_state():
    from report.sources import _wandb_record

    said_running = {**make_summary("r01"), metrics.STATE: metrics.RUNNING, metrics.REASON: None}
    record = _wandb_record(FakeRun("r01", "crashed", said_running, as_object=True))
    assert (record.state, record.reason) == (metrics.FAILED, "W&B state crashed") and not record.is_complete
    assert _wandb_record(FakeRun("r01", "running", said_running, as_object=True)).state == metrics.RUNNING
    # W&B's "finished" (a run reopened and closed by other code) never makes a cut-off run complete.
    assert _wandb_record(FakeRun("r01", "finished", said_running, as_object=True)).state == metrics.RUNNING


def test_wandb_run_without_its_best_takes_the_best_logged_epoch_not_the_last():
    from report.sources import _wandb_record

    run = FakeRun("r01", "finished", {}, as_object=True)
    run.summary_metrics = {metrics.STATE: metrics.FINISHED, metrics.VAL_ACC: 0.6, "_runtime": 12.0}  # the last
    run._history = [{**row, "_step": i} for i, row in enumerate(epochs([0.5, 0.8, 0.6], 100))]
    record = _wandb_record(run)
    assert (record.best_val_acc, record.best_epoch) == (0.8, 2)


def test_wandb_failure_is_one_line_user_error(monkeypatch):
    key = "0123456789abcdef0123456789abcdef01234567"  # shaped like a W&B API key: 40 characters
    fake_wandb(monkeypatch, error=RuntimeError(f"api_key {key} rejected (no-tty)\nlong traceback"))
    with pytest.raises(UserError) as caught:
        load_table("team/project/abc123")
    message = str(caught.value)
    assert "\n" not in message and "wandb login" in message
    assert key not in message and key[:20] not in message and "rejected" in message


def test_a_wandb_sweep_of_150_runs_is_read_in_a_few_requests(monkeypatch):
    pytest.importorskip("wandb")
    from wandb.apis.public.service_api import ServiceApi

    templates = list(RUNS)
    runs = {}
    for number in range(150):
        template = templates[number % len(templates)]
        summary = {**make_summary(template), metrics.EPOCH_HISTORY: make_history(template), metrics.VAL_ACC: 0.01}
        runs[f"s{number:03d}"] = ("finished", {**make_config(template), "effective": make_config(template)}, summary)
    server = FakeWandbServer(runs)
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)  # a key shaped like one; the fake server takes any
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setattr(ServiceApi, "send_api_request", lambda self, request,
                        timeout=None: server.send_api_request(self, request, timeout))
    monkeypatch.setattr(ServiceApi, "finalize", lambda self, obj, cleanup: (lambda: None))
    table = load_table("team/project/abc123")
    # The login check, the default entity, the sweep, then the runs 100 a page: 5 requests, not 3 to 7 per run.
    assert len(server.requests) <= 6, (len(server.requests), server.requests[:12])
    assert len(table.records) == 150 and table.name == "synthetic"
    record = next(r for r in table.records if r.run_id == "s003")
    assert record.history == _sorted(make_history(templates[3])) and record.best_val_acc == max(RUNS[templates[3]][3])


def _sorted(history: list[dict]) -> list[dict]:
    return sorted(({k: row[k] for k in metrics.EPOCH_METRICS if k in row} for row in history),
                  key=lambda row: row[metrics.EPOCH])


@pytest.mark.parametrize("source", ["", "no/such/folder/here", "missing_folder"])
def test_missing_source_is_one_line_user_error(tmp_path, source):
    with pytest.raises(UserError) as caught:
        build_report(source, tmp_path / "out")
    message = str(caught.value)
    assert "\n" not in message and "entity/project/sweep_id" in message


def test_empty_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no runs found"):
        load_table(str(tmp_path))


def test_wandb_source_prefers_the_normalised_config_over_locked_sweep_values(monkeypatch):
    """A sweep locks the raw values it passed (k_layers=3 for a head-only run); `effective` holds the truth."""
    from report.sources import _wandb_record

    run = FakeRun("r01", "finished", {metrics.STATE: metrics.FINISHED}, as_object=False)
    run.config = {**run.config, "strategy": "freeze_all", "k_layers": 3,
                  "effective": {**make_config("r01"), "strategy": "head_only", "k_layers": None}}
    config = _wandb_record(run).config
    assert config["strategy"] == "head_only" and config["k_layers"] is None and "effective" not in config


def test_wandb_history_keeps_the_last_attempt_of_each_epoch():
    """An out-of-memory retry re-logs epochs 1.. at later steps of the same W&B run; the curve is the last attempt's."""
    from report.sources import _wandb_record

    run = FakeRun("r01", "finished", make_summary("r01"), as_object=False)
    final = make_history("r01")
    abandoned = [{**row, metrics.VAL_ACC: 0.01} for row in final + [{**final[-1], metrics.EPOCH: 4}]]  # ran longer
    run._history = [{**row, "_step": i} for i, row in enumerate(abandoned + final, start=1)]
    history = _wandb_record(run).history
    assert [row[metrics.EPOCH] for row in history] == [1, 2, 3]
    assert [row[metrics.VAL_ACC] for row in history] == [row[metrics.VAL_ACC] for row in final]


def test_report_of_a_sweep_yaml_points_at_its_folder(tmp_path, capsys):
    import agent

    sweep_yaml = tmp_path / "tiny.yaml"
    sweep_yaml.write_text("method: grid\n")
    assert agent.main(["report", str(sweep_yaml)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file, not a folder" in err and "sweep_runs/tiny" in err


def test_a_bad_report_out_or_source_is_one_line_and_leaves_no_folder(tmp_path, sweep_dir, capsys, monkeypatch):
    import agent

    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.md").write_text("mine")
    for out in ("notes.md", "notes.md/report"):
        assert agent.main(["report", str(sweep_dir), f"--out={out}"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "notes.md" in err and "--out" in err
    assert (tmp_path / "notes.md").read_text() == "mine"
    assert agent.main(["report", "sweep_runs/nosuch"]) == 2
    assert not (tmp_path / "reports").exists() and not (tmp_path / "sweep_runs").exists()


def test_a_trial_killed_outright_gets_the_sweeps_reason_not_running(tmp_path, sweep_dir):
    import shutil

    shutil.copytree(sweep_dir, tmp_path / "sweep")
    summary_path = tmp_path / "sweep" / "runs" / "r03" / "summary.json"
    data = json.loads(summary_path.read_text())
    summary_path.write_text(json.dumps({**data, metrics.STATE: "running", metrics.REASON: None}))  # SIGKILL: no word
    table_path = tmp_path / "sweep" / "table.jsonl"
    killed = {"run_id": "r03", "state": "failed", "config": make_config("r03"), "reason": "killed by signal 9",
              "duplicate_of": None}
    table_path.write_text(table_path.read_text() + json.dumps(killed) + "\n")
    records = {r.run_id: r for r in load_table(str(tmp_path / "sweep")).records}
    assert records["r03"].state == "failed" and records["r03"].reason == "killed by signal 9"
    assert records["r01"].state == "finished"  # a stale "running" row never overrides a folder that ended


def test_a_preempted_sweep_trial_says_the_sweep_command_resumes_it_not_a_single_run_command(tmp_path, sweep_dir):
    import shutil

    shutil.copytree(sweep_dir, tmp_path / "sweep")
    summary_path = tmp_path / "sweep" / "runs" / "r03" / "summary.json"
    own = "interrupted by signal 15; resumes from its checkpoint when relaunched with run_id=r03"
    summary_path.write_text(
        json.dumps({**json.loads(summary_path.read_text()), metrics.STATE: "preempted", metrics.REASON: own}))
    table_path = tmp_path / "sweep" / "table.jsonl"
    sweeps = "interrupted; the same sweep command resumes it from its checkpoint"
    row = {"run_id": "r03", "state": "preempted", "config": make_config("r03"), "reason": sweeps, "duplicate_of": None}
    table_path.write_text(table_path.read_text() + json.dumps(row) + "\n")
    records = {r.run_id: r for r in load_table(str(tmp_path / "sweep")).records}
    assert records["r03"].state == "preempted" and records["r03"].reason == sweeps


def test_a_run_resumed_by_hand_while_the_table_says_it_ended_shows_as_running(tmp_path, sweep_dir):
    import shutil

    from trainer.record import RunRecord as RunFolder

    shutil.copytree(sweep_dir, tmp_path / "sweep")
    folder = tmp_path / "sweep" / "runs" / "r03"
    summary_path = folder / "summary.json"
    summary_path.write_text(json.dumps({**json.loads(summary_path.read_text()), metrics.STATE: "running"}))
    table_path = tmp_path / "sweep" / "table.jsonl"
    ended = {"run_id": "r03", "state": "preempted", "config": make_config("r03"), "reason": "interrupted",
             "duplicate_of": None}
    table_path.write_text(table_path.read_text() + json.dumps(ended) + "\n")
    with RunFolder(folder).exclusive():  # `agent.py --run_id=r03` training it now
        assert {r.run_id: r.state for r in load_table(str(tmp_path / "sweep")).records}["r03"] == "running"
    with RunFolder(folder).exclusive("testing"):  # `agent.py test` of it: nobody trains it
        assert {r.run_id: r.state for r in load_table(str(tmp_path / "sweep")).records}["r03"] == "preempted"
    assert {r.run_id: r.state for r in load_table(str(tmp_path / "sweep")).records}["r03"] == "preempted"


def test_a_run_whose_process_is_gone_says_how_to_resume_it_and_one_in_training_says_so(tmp_path, sweep_dir):
    import shutil

    from trainer.record import RunRecord as RunFolder

    shutil.copytree(sweep_dir / "runs", tmp_path / "runs")
    folder = tmp_path / "runs" / "r03"
    summary_path = folder / "summary.json"
    summary_path.write_text(
        json.dumps({**json.loads(summary_path.read_text()), metrics.STATE: "running", metrics.REASON: None}))
    with RunFolder(folder).exclusive():  # being trained now
        record = {r.run_id: r for r in load_table(str(tmp_path / "runs")).records}["r03"]
        assert record.reason is None and failure_reason(record) == "training now"
    record = {r.run_id: r for r in load_table(str(tmp_path / "runs")).records}["r03"]
    # Nobody holds its lock: it is dead, and its summary.json no
    # longer says running (a full disk kept it from saying so).
    assert record.state == "preempted" and record.reason.startswith(
        "not training now: its process was stopped or killed")
    assert f"`python agent.py --resume --run_id=r03 --output_dir={tmp_path / 'runs'}` to resume it" in record.reason
    assert json.loads(summary_path.read_text())[metrics.STATE] == "preempted"


def test_a_running_trial_without_a_folder_is_listed_as_running(tmp_path, sweep_dir):
    import shutil

    shutil.copytree(sweep_dir, tmp_path / "sweep")
    table_path = tmp_path / "sweep" / "table.jsonl"
    started = {"run_id": "r16", "state": "running", "config": make_config("r03"), "reason": None, "duplicate_of": None}
    table_path.write_text(table_path.read_text() + json.dumps(started) + "\n")
    summary, text = report_of(tmp_path / "sweep")
    assert dict((s, [r.run_id for r in records]) for s, records in summary.not_counted)["running"] == ["r16"]
    assert "| running | 1 |" in section(text, 6) and "| `r16` | running | resnet50 | full |" in section(text, 6)


def test_the_runs_folder_of_a_sweep_reads_as_the_sweep(sweep_dir):
    table = load_table(str(sweep_dir / "runs"))
    assert (table.name, table.metric_name, table.metric_goal) == ("synthetic", metrics.VAL_ACC, "maximize")
    assert "r14" in {r.run_id for r in table.records}  # the trial with no folder, from the sweep's table.jsonl
    assert [(d.run_id, d.duplicate_of) for d in table.duplicates] == [("r15", "r04")]


def test_a_wandb_run_killed_is_preempted(monkeypatch):
    partial = without(make_summary("r11"), metrics.STATE, metrics.REASON)
    fake_wandb(monkeypatch, FakeSweep([FakeRun("r11", "killed", partial, as_object=True),
                                      FakeRun("r01", "finished", make_summary("r01"), as_object=False)]))
    summary, text = report_of("team/project/abc123")
    records = {r.run_id: r for r in summary.table.records}
    assert records["r11"].state == "preempted" and records["r11"].reason == "W&B state killed"
    assert "| `r11` | preempted | resnet50 | full |" in section(text, 6)


def test_wandb_history_restarted_after_its_first_epoch_keeps_one_curve():
    """An out-of-memory retry after epoch 1: the epoch number repeats instead of going back."""
    from report.sources import _wandb_record

    run = FakeRun("r01", "finished", make_summary("r01"), as_object=False)
    final = make_history("r01")
    abandoned = [{**final[0], metrics.VAL_ACC: 0.01}]
    run._history = [{**row, "_step": i} for i, row in enumerate(abandoned + final, start=1)]
    history = _wandb_record(run).history
    assert [row[metrics.EPOCH] for row in history] == [1, 2, 3]
    assert [row[metrics.VAL_ACC] for row in history] == [row[metrics.VAL_ACC] for row in final]


def test_a_wandb_run_in_a_state_we_do_not_know_keeps_our_running_state():
    from report.sources import _wandb_record

    said_running = {**make_summary("r01"), metrics.STATE: metrics.RUNNING, metrics.REASON: None}
    for wandb_state in ("", "some-new-state"):
        record = _wandb_record(FakeRun("r01", wandb_state, said_running, as_object=True))
        assert (record.state, record.reason) == (metrics.RUNNING, None)


def test_a_sweeps_run_whose_process_is_gone_says_to_run_the_sweep_again(tmp_path, sweep_dir):
    import shutil

    shutil.copytree(sweep_dir, tmp_path / "sweep")
    summary_path = tmp_path / "sweep" / "runs" / "r03" / "summary.json"
    summary_path.write_text(
        json.dumps({**json.loads(summary_path.read_text()), metrics.STATE: "running", metrics.REASON: None}))
    record = {r.run_id: r for r in load_table(str(tmp_path / "sweep")).records}["r03"]
    assert record.state == "preempted" and record.reason.endswith("run the sweep command again to resume it")
