"""Trials that fail or stop, and the driver that is stopped: failures are recorded; a setup failure stops the
sweep and is retried once fixed; trials that diverge, run out of memory, are killed by the host or stopped by
hyperband; a driver's signals, and the next call resuming what was cut off without repeating anything.

Trials are real `agent.py` subprocesses of a tiny CNN at 32 px on the tests' own dataset (an epoch takes a
fraction of a second); most of a trial's time is importing torch, so each test launches as few as it can.
The hyperband end-to-end check is `slow`; the driver's side of it is tested with a stand-in process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time

import pytest
import sweeps

from common.errors import UserError
from sweep_helpers import local_sweep, summary_of, table_rows, tiny_definition, write_history, write_yaml
from sweeper import engine, run_local_sweep
from sweeper.definition import load_definition
from sweeper.local import LocalSweep
from sweeper.table import Trial, TrialTable
from sweeper.trial import launch
from trainer import metrics as M


def test_a_trial_that_ended_while_the_driver_was_away_is_not_rerun(tmp_path, fixed_args):
    # The driver was killed after the trial finished but before it updated the table.
    sweep_dir = tmp_path / "sweep"
    table = TrialTable(sweep_dir)
    trial = table.add(Trial("ended", M.RUNNING, {}, "hash", {"activation": "relu", "lr": 0.001}))
    folder = table.run_folder(trial)
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({M.STATE: M.FINISHED, M.BEST_VAL_ACC: 0.5, "exit_code": 0}))
    summary = run_local_sweep(write_yaml(tmp_path / "s.yaml", tiny_definition()), count=0, sweep_dir=sweep_dir,
                              fixed=fixed_args)
    assert summary["resumed"] == 0 and not (folder / "output.log").exists()
    [row] = table_rows(sweep_dir)
    assert row["state"] == M.FINISHED and row["best_val_acc"] == 0.5


def test_failing_trials_are_recorded_and_a_setup_failure_stops_the_sweep(tmp_path, fixed_args):
    # k_layers=9 is a valid value, but not for resnet18's 5 stages (it is for vit_b_16's 12 blocks): that suggestion
    # cannot parse (recorded, never launched, the sweep goes on); a missing weights file makes agent.py exit 2, a
    # setup problem every later trial would share: the sweep stops there, saying what to fix.
    definition = tiny_definition(model={"values": ["resnet18", "vit_b_16"]}, strategy={"value": "last_k"},
                                 k_layers={"values": [9, 1, 2]},
                                 weights={"value": str(tmp_path / "missing.pt")}, activation={"value": "relu"},
                                 lr={"value": 0.01})
    sweep_dir = tmp_path / "sweep"
    with pytest.raises(UserError) as stopped:
        run_local_sweep(write_yaml(tmp_path / "bad.yaml", definition), count=3, sweep_dir=sweep_dir, fixed=fixed_args)
    invalid, launched = table_rows(sweep_dir)  # the third point never started
    assert ("failed on a setup problem" in str(stopped.value) and "missing.pt" in str(stopped.value)
            and "retried" in str(stopped.value))
    assert invalid["state"] == M.FAILED and "k_layers=9" in invalid["reason"] and invalid["exit_code"] is None
    assert launched["state"] == M.FAILED and launched["exit_code"] == 2 and "missing.pt" in launched["reason"]
    assert summary_of(sweep_dir, launched["run_id"])[M.REASON] == launched["reason"]


def test_a_trial_that_failed_on_setup_is_retried_once_it_is_fixed(tmp_path, nature_dir, fixed_args, monkeypatch):
    import sweeper.local

    data = tmp_path / "data"
    shutil.copytree(nature_dir, data)
    empty = data / "inaturalist_12K" / "train" / "Zebras"
    empty.mkdir()  # an empty class folder: every trial would fail on it
    definition = tiny_definition(activation={"values": ["relu", "gelu"]}, lr={"value": 0.01})
    sweep, sweep_dir, fixed = write_yaml(tmp_path / "s.yaml", definition), tmp_path / "sweep", {**fixed_args,
                                                                                                "data_dir": str(data)}
    with pytest.raises(UserError, match="Zebras"):  # the driver's own look at the data: no trial is spent on it
        run_local_sweep(sweep, count=2, sweep_dir=sweep_dir, fixed=fixed)
    assert not sweep_dir.exists()
    # A setup problem only a trial meets (the driver's look skipped here): the trial fails, and is retried once fixed.
    monkeypatch.setattr(sweeper.local, "prepare_dataset", lambda definition, fixed: None)
    with pytest.raises(UserError, match="Zebras"):
        run_local_sweep(sweep, count=2, sweep_dir=sweep_dir, fixed=fixed)
    [failed] = table_rows(sweep_dir)
    empty.rmdir()
    summary = run_local_sweep(sweep, count=2, sweep_dir=sweep_dir, fixed=fixed)  # the same command, once fixed
    retried, new = table_rows(sweep_dir)
    assert retried["run_id"] == failed["run_id"] and retried["state"] == new["state"] == M.FINISHED
    assert summary["resumed"] == 1 and summary["new"] == 1
    assert {retried["config"]["activation"], new["config"]["activation"]} == {"relu", "gelu"}


def test_a_setup_failure_of_one_searched_value_does_not_stop_the_sweep(tmp_path, fixed_args, capsys):
    # weights=none trains; a weights file that is missing fails on setup. Other trials trained, so that failure
    # is its value's: recorded, the sweep goes on, and the next call retries it (fails again: still no stop).
    missing = str(tmp_path / "missing.pt")
    definition = tiny_definition(weights={"values": ["none", missing]}, activation={"value": "relu"},
                                 lr={"value": 0.01}, epochs={"value": 1})
    sweep, sweep_dir = write_yaml(tmp_path / "s.yaml", definition), tmp_path / "sweep"
    summary = run_local_sweep(sweep, count=2, sweep_dir=sweep_dir, fixed=fixed_args)
    trained, failed = table_rows(sweep_dir)
    assert trained["config"]["weights"] == "none" and trained["state"] == M.FINISHED
    assert failed["config"]["weights"] == missing and failed["state"] == M.FAILED and failed["exit_code"] == 2
    assert summary["new"] == 2 and summary["best_run_id"] == trained["run_id"]
    assert "of their own values" in capsys.readouterr().out
    again = run_local_sweep(sweep, count=2, sweep_dir=sweep_dir, fixed=fixed_args)  # retried, fails alike, no stop
    assert (again["resumed"] == 1 and again["new"] == 0
            and [r["state"] for r in table_rows(sweep_dir)] == [M.FINISHED, M.FAILED])


def test_new_trials_failing_on_setup_in_a_row_stop_the_sweep_even_after_others_trained(tmp_path, fixed_args):
    # The data went away mid-sweep (here: every new trial names a missing weights file): after three in a
    # row the sweep stops instead of burning its whole count on failures.
    sweep_dir = tmp_path / "sweep"
    TrialTable(sweep_dir).add(Trial("earlier", M.FINISHED, {}, "hash", {"lr": 0.5}, exit_code=0, best_val_acc=0.5))
    definition = tiny_definition(weights={"value": str(tmp_path / "missing.pt")}, lr={"values": [0.001, 0.01, 0.1]},
                                 epochs={"value": 1})
    with pytest.raises(UserError, match="failed on a setup problem"):
        run_local_sweep(write_yaml(tmp_path / "s.yaml", definition), count=6, sweep_dir=sweep_dir, fixed=fixed_args)
    rows = table_rows(sweep_dir)
    assert [(r["state"], r["exit_code"]) for r in rows[1:]] == [(M.FAILED, 2)] * 3  # the fourth point never started


def test_only_new_setup_failures_in_a_row_stop_a_sweep_that_has_trained(tmp_path):
    from types import SimpleNamespace

    sweep = LocalSweep(load_definition(write_yaml(tmp_path / "s.yaml", tiny_definition())), tmp_path / "sweep", {},
                       workers=2)

    def trial(run_id, state, code):
        return sweep.table.add(Trial(run_id, state, {}, f"hash-{run_id}", {"lr": len(sweep.table)}, exit_code=code))

    def failed(run_id):
        return trial(run_id, M.FAILED, 2)

    sweep._judge_setup(failed("first"))  # nothing trained yet: the setup is the sweep's
    assert sweep.setup_failure.run_id == "first"
    sweep.setup_failure, sweep.setup_streak = None, 0
    sweep.running["other"] = SimpleNamespace(is_training=lambda: True)  # a parallel trial past its first epoch
    sweep._judge_setup(failed("second"))
    assert sweep.setup_failure is None
    del sweep.running["other"]
    sweep._judge_setup(trial("trained", M.FINISHED, 0))  # ends the streak too

    sweep.retries = {"r1", "r2", "r3"}
    for run_id in ("r1", "r2", "r3", "n1", "n2"):  # retries failing again do not count
        sweep._judge_setup(failed(run_id))
    sweep._judge_setup(trial("ok", M.FINISHED, 0))  # a trial that trained ends the streak
    for run_id in ("n3", "n4"):
        sweep._judge_setup(failed(run_id))
    assert sweep.setup_failure is None
    sweep._judge_setup(failed("n5"))  # the third new one in a row
    assert sweep.setup_failure.run_id == "n5"


def test_a_diverged_or_out_of_memory_trial_is_recorded_as_such_a_failure_for_the_engine_and_the_sweep_goes_on(tmp_path):
    from types import SimpleNamespace

    from sweeper.table import failed_on_setup
    from sweeper.trial import outcome

    for state in (M.DIVERGED, M.OOM):
        folder = tmp_path / state
        folder.mkdir()
        (folder / "summary.json").write_text(
            json.dumps({M.STATE: state, M.REASON: "lower lr", M.EXIT_CODE: 0, M.BEST_VAL_ACC: 0.9}))
        ended = outcome(SimpleNamespace(process=SimpleNamespace(returncode=0), signals_sent=set(), folder=folder),
                        False)
        trial = Trial(state, ended.state, {}, "h", {"lr": 0.1}, reason=ended.reason, exit_code=ended.exit_code,
                      best_val_acc=ended.best_val_acc)
        # not a setup failure: no stop
        assert (trial.state, trial.exit_code) == (state, 0) and not failed_on_setup(trial)
        # the worst result, as W&B's failed run (exit 3 there)
        assert engine.engine_state(trial) == sweeps.RunState.failed


def test_a_relaunched_trial_takes_this_calls_paths_and_its_own_training_arguments(tmp_path, monkeypatch):
    # The data moved between calls: the relaunch must read it from the corrected --data_dir, while what is
    # trained (here --epochs, pinned for the folder) stays as the trial was started.
    import sweeper.local

    moved = {"data_dir": str(tmp_path / "new_data"), "cache_dir": str(tmp_path / "new_cache"), "wandb_mode": "disabled",
             "epochs": "2"}
    sweep = local_sweep(tmp_path, fixed=moved)
    sweep.table.add(Trial("preempted", M.PREEMPTED, {"lr": 0.01}, "hash", {"lr": 0.01, "activation": "gelu"},
                          exit_code=143,
                          fixed={"data_dir": str(tmp_path / "old_data"), "cache_dir": str(tmp_path / "old_cache"),
                                 "wandb_mode": "offline", "epochs": "02"}))
    commands = []

    def no_launch(run_id, folder, command, gpu):
        commands.append(command)
        raise OSError("not launched in this test")

    monkeypatch.setattr(sweeper.local, "launch", no_launch)
    assert sweep.run(count=0)["resumed"] == 1
    [command] = commands
    arguments = [a for a in command if a.startswith("--")]
    for expected in (f"--data_dir={tmp_path / 'new_data'}", f"--cache_dir={tmp_path / 'new_cache'}",
                     "--wandb_mode=disabled", "--epochs=02", "--lr=0.01", "--activation=gelu", "--run_id=preempted"):
        assert expected in arguments
    assert not [a for a in arguments if "old_" in a or a == "--wandb_mode=offline"]


def test_a_trial_sigkilled_from_outside_is_recorded_with_the_cause_and_resumed_by_the_next_call(tmp_path, monkeypatch):
    import signal
    from types import SimpleNamespace

    import sweeper.local
    from sweeper.trial import outcome

    folder = tmp_path / "t-005"
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps({M.STATE: M.RUNNING}))  # a SIGKILLed trainer writes nothing
    ended = outcome(
        SimpleNamespace(process=SimpleNamespace(returncode=-signal.SIGKILL), signals_sent=set(), folder=folder), False)
    assert ended.state == M.FAILED and "out of memory" in ended.reason and "resumes it" in ended.reason

    sweep = local_sweep(tmp_path)
    sweep.table.add(Trial("killed", M.FAILED, {}, "h1", {"lr": 0.01}, exit_code=-signal.SIGKILL, reason=ended.reason))
    # its values' fault
    sweep.table.add(Trial("crashed", M.FAILED, {}, "h2", {"lr": 0.02}, exit_code=1, reason="a bug"))
    # a crash: not resumed
    sweep.table.add(Trial("segfault", M.FAILED, {}, "h3", {"lr": 0.03}, exit_code=-signal.SIGSEGV))
    started = []

    def no_launch(run_id, *args):
        started.append(run_id)
        raise OSError("not launched in this test")

    monkeypatch.setattr(sweeper.local, "launch", no_launch)
    assert sweep.run(count=0)["resumed"] == 1 and started == ["killed"]


def test_a_relaunched_trial_whose_checkpoint_no_longer_fits_trains_afresh(tmp_path, fixed_args):
    # A preempted trial whose last.pt is damaged (or of code that built the model otherwise) must not fail on
    # every call: it is set aside and the trial, whose config still has to be trained, starts over.
    definition = tiny_definition(activation={"value": "relu"}, lr={"value": 0.01}, epochs={"value": 1})
    sweep, sweep_dir = write_yaml(tmp_path / "s.yaml", definition), tmp_path / "sweep"
    run_local_sweep(sweep, count=1, sweep_dir=sweep_dir, fixed=fixed_args)
    table = TrialTable(sweep_dir)
    [trial] = table.trials
    trial.state = M.PREEMPTED
    table.save()
    folder = table.run_folder(trial)
    summary = json.loads((folder / "summary.json").read_text())
    (folder / "summary.json").write_text(json.dumps({**summary, M.STATE: M.PREEMPTED}))
    (folder / "last.pt").write_bytes(b"not a checkpoint")
    again = run_local_sweep(sweep, count=1, sweep_dir=sweep_dir, fixed=fixed_args)
    [row] = table_rows(sweep_dir)
    assert again["resumed"] == 1 and row["state"] == M.FINISHED and row["exit_code"] == 0
    assert "unreadable" in summary_of(sweep_dir, row["run_id"])["resume_refused"]
    assert (folder / "last.refused.pt").read_bytes() == b"not a checkpoint"


def test_a_retry_interrupted_while_it_starts_is_not_taken_for_its_previous_failure(tmp_path, monkeypatch):
    # A setup failure retried by the next call, then Ctrl-C while the retry still imports torch: its old
    # summary (failed, exit 2) must not stand for this launch, or the trial is never retried again.
    import sweeper.local

    sweep = local_sweep(tmp_path)
    bad = sweep.table.add(Trial("bad", M.FAILED, {"lr": 0.01}, "hash-bad", {"lr": 0.01}, exit_code=2,
                                reason="weights file x.pt not found"))
    folder = sweep.table.run_folder(bad)
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({M.STATE: M.FAILED, M.REASON: bad.reason, "exit_code": 2}))
    monkeypatch.setattr(sweeper.local, "trial_command",
                        lambda *args: [sys.executable, "-c", "import time; time.sleep(60)"])
    sweep._start(bad, "resume")
    sweep._on_interrupt(signal.SIGINT)
    sweep.running["bad"].process.wait(timeout=30)
    sweep._collect()
    assert sweep.table.get("bad").state == M.PREEMPTED  # the next call relaunches it


def test_the_drivers_first_signal_stops_the_trials_and_only_a_second_ctrl_c_aborts():
    from sweeper.interrupt import DriverInterrupt

    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for first in (signal.SIGTERM, signal.SIGINT):
        stops = []
        with DriverInterrupt(stops.append) as interrupt:
            assert not interrupt
            signal.raise_signal(first)  # Kaggle's SIGTERM, or a first Ctrl-C: the trials checkpoint and stop
            assert interrupt and interrupt.signum == first and stops == [first]
            try:
                signal.raise_signal(signal.SIGTERM)  # the host repeating itself: neither an abort nor a second stop
            except KeyboardInterrupt:
                pytest.fail("a second SIGTERM aborted the driver; only a second Ctrl-C may")
            assert stops == [first]
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGINT)  # the second Ctrl-C: stop at once
            assert stops == [first]
        assert {signum: signal.getsignal(signum) for signum in before} == before  # pytest's own handlers back


def test_a_folder_whose_trials_all_failed_on_setup_takes_the_corrected_arguments(tmp_path, fixed_args, capsys):
    # "Fix it and run again" must be possible when the fix is a fixed argument that changes what is trained.
    definition = tiny_definition(activation={"value": "relu"}, lr={"value": 0.01}, epochs={"value": 1})
    sweep, sweep_dir, typo = write_yaml(tmp_path / "s.yaml", definition), tmp_path / "sweep", str(tmp_path / "typo.pt")
    with pytest.raises(UserError, match="failed on a setup problem"):
        run_local_sweep(sweep, count=1, sweep_dir=sweep_dir, fixed={**fixed_args, "weights": typo})
    summary = run_local_sweep(sweep, count=1, sweep_dir=sweep_dir, fixed={**fixed_args, "weights": "none"})
    [row] = table_rows(sweep_dir)
    assert row["state"] == M.FINISHED and row["config"]["weights"] == "none" and summary["new"] == 1
    assert "all failed before training" in capsys.readouterr().out
    assert sorted(p.name for p in (sweep_dir / "runs").iterdir()) == [row["run_id"]]  # reports read runs/
    assert len(list((sweep_dir / "dropped").iterdir())) == 1
    with pytest.raises(UserError, match="was started with --weights=none"):  # a trained trial binds the folder
        run_local_sweep(sweep, count=1, sweep_dir=sweep_dir, fixed={**fixed_args, "weights": typo})


def write_earlier_trials(table: TrialTable, values: tuple, epochs: int = 3) -> None:
    """Finished trials (written here, not trained) that reached val_acc 1.0 in every epoch.

    Hyperband compares a trial at its furthest band with the trials that reached that band too: the earlier
    trials' histories must be as long as the trial could get before the driver looks.
    """
    for index, lr in enumerate(values):
        trial = table.add(
            Trial(f"earlier-{index}", M.FINISHED, {}, f"hash-{index}", {"lr": lr}, exit_code=0, best_val_acc=1.0))
        write_history(table.run_folder(trial), [1.0] * epochs)


def hyperband_definition(**parameters) -> dict:
    definition = tiny_definition(lr={"values": [1e-7, 1e-6, 1e-5]}, activation={"value": "relu"}, **parameters)
    definition["early_terminate"] = {"type": "hyperband", "min_iter": 1, "eta": 2}
    return definition


# Stands in for a trial: stops like the trainer does on SIGUSR1, without the seconds of importing torch.
STAND_IN_TRIAL = """
import json, pathlib, signal, sys, time
folder = pathlib.Path(sys.argv[1])
def stop(*_):
    (folder / "summary.json").write_text(json.dumps({"state": "early_stopped", "best_val_acc": 0.3, "exit_code": 0}))
    sys.exit(0)
signal.signal(signal.SIGUSR1, stop)
(folder / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val_acc": 0.3}) + "\\n")  # trails 1.0
(folder / "ready").touch()
time.sleep(60)
"""


def test_the_driver_stops_the_trial_hyperband_names_once(tmp_path):
    sweep = LocalSweep(load_definition(write_yaml(tmp_path / "hb.yaml", hyperband_definition())), tmp_path / "sweep",
                       {}, workers=1)
    write_earlier_trials(sweep.table, (1e-6, 1e-5))
    trailing = sweep.table.add(Trial("trailing", M.RUNNING, {"epochs": 10}, "hash-t", {"lr": 1e-7}))
    folder = sweep.table.run_folder(trailing)
    folder.mkdir(parents=True)
    launched = launch("trailing", folder, [sys.executable, "-c", STAND_IN_TRIAL, str(folder)], None)
    sweep.running["trailing"], sweep.tags["trailing"] = launched, "1/1"
    deadline = time.monotonic() + 30
    while not (folder / "ready").exists() and time.monotonic() < deadline:
        time.sleep(0.02)

    sweep._early_terminate()
    sweep._early_terminate()  # asked again before the trial has gone: no second signal
    launched.process.wait(timeout=30)
    sweep._collect()
    assert launched.signals_sent == {signal.SIGUSR1}
    assert sweep.table.get("trailing").state == M.EARLY_STOPPED and not sweep.running


@pytest.mark.slow
def test_hyperband_stops_a_trailing_trial_end_to_end(tmp_path, fixed_args):
    # After its first epoch a trial at lr=1e-7 trails two earlier trials at val_acc 1.0.
    sweep_dir = tmp_path / "sweep"
    write_earlier_trials(TrialTable(sweep_dir), (1e-6, 1e-5), epochs=200)
    definition = hyperband_definition(epochs={"value": 200}, patience={"value": 0})
    summary = run_local_sweep(write_yaml(tmp_path / "hb.yaml", definition), count=3, sweep_dir=sweep_dir,
                              fixed=fixed_args)
    stopped = table_rows(sweep_dir)[-1]
    assert summary["new"] == 1 and stopped["suggested"]["lr"] == 1e-7
    assert stopped["state"] == M.EARLY_STOPPED, stopped
    assert summary_of(sweep_dir, stopped["run_id"])[M.EPOCHS_COMPLETED] < 200


@pytest.mark.slow
def test_a_trial_killed_by_the_host_is_resumed_by_the_next_call(tmp_path, fixed_args, capsys, monkeypatch):
    # The out-of-memory killer SIGKILLs a trial (not the driver): nothing is wrong with its values, so it is not
    # another failed config; the driver says why and the same command resumes it from its checkpoint.
    import sweeper.local

    definition = tiny_definition(epochs={"value": 12}, patience={"value": 0}, activation={"value": "relu"})
    sweep, sweep_dir = write_yaml(tmp_path / "killed.yaml", definition), tmp_path / "sweep"
    launched = []
    monkeypatch.setattr(sweeper.local, "launch", lambda *args: launched.append(launch(*args)) or launched[-1])

    def kill_after_first_checkpoint():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (launched and list(sweep_dir.glob("runs/*/last.pt"))):
            time.sleep(0.05)
        launched[0].process.send_signal(signal.SIGKILL)  # a no-op if it has already ended, never another process

    watcher = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    watcher.start()
    assert run_local_sweep(sweep, count=1, sweep_dir=sweep_dir, fixed=fixed_args)["new"] == 1
    watcher.join()
    [killed] = table_rows(sweep_dir)
    assert killed["state"] == M.FAILED and killed["exit_code"] == -signal.SIGKILL
    assert killed["reason"].startswith("killed by SIGKILL, most often the host running out of memory")
    assert (f"were killed by SIGKILL, most often the host running out of memory ({killed['run_id']}); run the same "
            "command again") in capsys.readouterr().out

    monkeypatch.setattr(sweeper.local, "launch", launch)
    summary = run_local_sweep(sweep, count=1, sweep_dir=sweep_dir, fixed=fixed_args)
    [resumed] = table_rows(sweep_dir)
    assert summary["resumed"] == 1 and summary["new"] == 0 and resumed["state"] == M.FINISHED
    assert summary_of(sweep_dir, killed["run_id"]).get("resumed_from_epoch", 0) >= 1
    assert "killed by SIGKILL" not in capsys.readouterr().out


def test_an_interrupted_sweep_resumes_without_repeating_anything(tmp_path, fixed_args, capsys):
    epochs = 12
    definition = tiny_definition(epochs={"value": epochs}, patience={"value": 0}, activation={"value": "relu"})
    sweep, sweep_dir = write_yaml(tmp_path / "resume.yaml", definition), tmp_path / "sweep"

    def interrupt_after_first_epoch():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if any(p.read_text().strip() for p in sweep_dir.glob("runs/*/metrics.jsonl")):
                os.kill(os.getpid(), signal.SIGTERM)  # what Kaggle/Colab send the driver when a session ends
                return
            time.sleep(0.05)

    # A stray late SIGTERM must not end pytest itself; the driver installs its own handler while it runs.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        watcher = threading.Thread(target=interrupt_after_first_epoch, daemon=True)
        watcher.start()
        assert run_local_sweep(sweep, count=2, sweep_dir=sweep_dir, fixed=fixed_args) is None
        watcher.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
    [interrupted] = table_rows(sweep_dir)
    assert interrupted["state"] == M.PREEMPTED and interrupted["exit_code"] == 128 + signal.SIGTERM
    assert interrupted["reason"] == "interrupted; the same sweep command resumes it from its checkpoint"
    folder = sweep_dir / "runs" / interrupted["run_id"]
    assert (folder / "last.pt").exists()

    capsys.readouterr()
    summary = run_local_sweep(sweep, count=2, workers=2, sweep_dir=sweep_dir, fixed=fixed_args)  # the same command
    resumed, new = table_rows(sweep_dir)
    assert summary["resumed"] == 1 and summary["new"] == 1
    assert resumed["run_id"] == interrupted["run_id"] and resumed["state"] == new["state"] == M.FINISHED
    assert resumed["config_hash"] != new["config_hash"]
    history = [json.loads(line)[M.EPOCH] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert history == list(range(1, epochs + 1))  # each epoch once: resumed, not restarted
    log = (folder / "output.log").read_text()
    assert log.count(f"epoch 1/{epochs} ") == 1 and "resuming run" in log
    # Relaunched first, then the new suggestion (which the engine picked knowing the first one runs).
    lines = capsys.readouterr().out.splitlines()
    starts = [line.split()[:3] for line in lines if " resuming" in line or " started" in line]
    assert starts == [["[resume]", resumed["run_id"], "resuming"], ["[2/2]", new["run_id"], "started"]]
    again = run_local_sweep(sweep, count=2, sweep_dir=sweep_dir, fixed=fixed_args)  # a third time: nothing left to do
    assert again["new"] == again["resumed"] == 0 and len(table_rows(sweep_dir)) == 2


def test_a_trial_still_trained_by_a_killed_sweeps_process_is_not_relaunched(tmp_path):
    from sweeper.trial import launch
    from trainer.record import RunRecord

    folder = tmp_path / "runs" / "t-001"
    summary = {M.STATE: M.RUNNING, M.EPOCHS_COMPLETED: 3}
    with RunRecord(folder).exclusive():  # the orphaned trial, training on
        RunRecord(folder).update_summary(**summary)
        with pytest.raises(UserError,
                           match=rf"trial t-001 is still being trained by another process \(pid {os.getpid()}\).*stop "
                                 r"it, then run the same sweep command again"):
            launch("t-001", folder, [sys.executable, "-c", "pass"], None)
    assert RunRecord.read_summary(folder) == summary  # its record untouched


def test_a_trial_killed_by_hyperbands_signal_keeps_its_best_epoch(tmp_path):
    """A trial that dies of the early-termination signal (too late to write its own summary) is early-stopped
    with the best of its logged epochs, not the last."""
    import signal
    from types import SimpleNamespace

    from sweeper.trial import outcome

    folder = tmp_path / "t-004"
    write_history(folder, [0.3, 0.5, 0.4])
    (folder / "summary.json").write_text(json.dumps({M.STATE: M.RUNNING}))
    trial = SimpleNamespace(process=SimpleNamespace(returncode=-signal.SIGUSR1), signals_sent=[signal.SIGUSR1],
                            folder=folder)
    ended = outcome(trial, driver_interrupted=False)
    assert ended.state == M.EARLY_STOPPED and ended.best_val_acc == 0.5


def test_a_trial_that_trained_before_its_disk_filled_up_binds_the_folder_and_is_retried():
    from sweeper.table import binds_folder, failed_on_setup

    setup = Trial("t-001", M.FAILED, {}, "h", {}, exit_code=2)
    trained = Trial("t-002", M.FAILED, {}, "h", {}, exit_code=2, best_val_acc=0.4)
    assert failed_on_setup(setup) and not binds_folder(setup)
    assert failed_on_setup(trained) and binds_folder(trained)  # retried (resumed) once fixed, never dropped
