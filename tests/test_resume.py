"""Preemption across machines: a trial whose only survivor is its checkpoint store resumes exactly."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import yaml

from common.errors import UserError
from common.preprocessing import Preprocessing
from models import build_model
from trainer import metrics as M
from trainer.config import parse_run_config
from trainer.run import run_training
from trainer.store import ArtifactStore

TIMING = {M.EPOCH_SECONDS, M.IMAGES_PER_SECOND}


def config(nature_dir, machine: Path, **overrides):
    values = {
        "data_dir": str(nature_dir), "cache_dir": str(machine / "cache"), "output_dir": str(machine / "runs"),
        "wandb_mode": "disabled", "model": "scratch_cnn", "input_size": 32, "filters": 8, "dense_units": 16,
        "batch_size": 8, "epochs": 3, "augment": "strong", "dropout": 0.3, **overrides,
    }
    return parse_run_config(values)


def rows(outcome):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (outcome.folder / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def sigterm_at_step(monkeypatch):
    """Send this process a real SIGTERM after the given number of training steps; arm(step) returns disarm()."""
    import trainer.loop

    original = trainer.loop.EpochProgress

    def arm(step: int):
        class Kill(original):
            count = 0

            def update(self, *args, **kwargs):
                super().update(*args, **kwargs)
                Kill.count += 1
                if Kill.count == step:
                    os.kill(os.getpid(), signal.SIGTERM)

        monkeypatch.setattr(trainer.loop, "EpochProgress", Kill)
        return lambda: monkeypatch.setattr(trainer.loop, "EpochProgress", original)

    yield arm
    monkeypatch.setattr(trainer.loop, "EpochProgress", original)


def test_a_stop_during_the_last_validation_finds_the_run_finished(nature_dir, tmp_path, monkeypatch):
    """Every epoch trained and validated: nothing is left to resume, so the run is finished, not preempted."""
    import trainer.loop

    real = trainer.loop.evaluate
    calls = []

    def evaluate_then_sigterm(loop, loader):
        result = real(loop, loader)
        calls.append(1)
        if len(calls) == 2:  # the last epoch's validation
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(trainer.loop, "evaluate", evaluate_then_sigterm)
    outcome = run_training(config(nature_dir, tmp_path, run_id="late", epochs=2))
    assert outcome.state == M.FINISHED and outcome.exit_code == 0 and outcome.summary[M.EPOCHS_COMPLETED] == 2
    calls.clear()
    cut = run_training(config(nature_dir, tmp_path, run_id="early", epochs=3))  # a stop with an epoch left still cuts
    assert cut.state == M.PREEMPTED and cut.summary[M.EPOCHS_COMPLETED] == 2


def test_resume_on_a_fresh_machine_from_a_folder_store(nature_dir, tmp_path, sigterm_at_step):
    straight = run_training(config(nature_dir, tmp_path / "reference", run_id="ref"))

    store = tmp_path / "drive"
    disarm = sigterm_at_step(5)  # second epoch, second batch
    machine_a = tmp_path / "machine_a"
    cut = run_training(config(nature_dir, machine_a, run_id="trial-7", checkpoint_store=str(store)))
    assert cut.state == M.PREEMPTED
    shutil.rmtree(machine_a)  # the session is gone; only the store survives
    disarm()

    resumed = run_training(config(nature_dir, tmp_path / "machine_b", run_id="trial-7", checkpoint_store=str(store)))
    assert resumed.state == M.FINISHED
    assert resumed.summary.get("resumed_from_epoch") == 1
    assert rows(resumed) == rows(straight)  # every epoch once, the same numbers
    a = torch.load(straight.folder / "last.pt", weights_only=True)["model"]
    b = torch.load(resumed.folder / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_fresh_start_on_a_new_machine_sets_the_stores_copies_of_the_earlier_model_aside(nature_dir, tmp_path):
    """The run id trained again with another config, the earlier run folder gone with its session: the store's
    last.pt and best.pt are that model's only copies, and the new run's first checkpoint must not replace them."""
    store = tmp_path / "drive"
    earlier = run_training(
        config(nature_dir, tmp_path / "machine_a", run_id="trial-3", epochs=1, checkpoint_store=str(store)))
    kept = {name: (store / "trial-3" / name).read_bytes() for name in ("last.pt", "best.pt")}
    shutil.rmtree(earlier.folder)
    again = run_training(
        config(nature_dir, tmp_path / "machine_b", run_id="trial-3", epochs=1, lr=0.01, checkpoint_store=str(store)))
    assert again.state == M.FINISHED and "was trained with lr=0.001 (now 0.01)" in again.summary["resume_refused"]
    assert (store / "trial-3" / "last.refused.pt").read_bytes() == kept["last.pt"]
    assert (store / "trial-3" / "best.previous.pt").read_bytes() == kept["best.pt"]
    # and in the run folder, as for a local one
    assert (again.folder / "best.previous.pt").read_bytes() == kept["best.pt"]
    assert (store / "trial-3" / "last.pt").read_bytes() != kept["last.pt"]  # the new run's own checkpoints


def test_resume_by_run_id_on_a_new_machine_takes_the_config_the_store_checkpoint_was_trained_with(nature_dir, tmp_path,
                                                                                                  sigterm_at_step):
    """`--resume --run_id=ID` with only the store left: the run's config from there, not the defaults (resnet50);
    with the store's config.yaml gone too, the effective config inside its last.pt."""
    import agent

    store = tmp_path / "drive"
    disarm = sigterm_at_step(5)
    cut = run_training(config(nature_dir, tmp_path / "machine_a", run_id="t9", lr=3e-3, checkpoint_store=str(store),
                              wandb_project="birds"))
    assert cut.state == M.PREEMPTED
    disarm()
    shutil.rmtree(tmp_path / "machine_a")
    machine_b = tmp_path / "machine_b"
    resumed_config = agent.run_config_from_args([
        "--resume", "--run_id=t9", f"--checkpoint_store={store}", f"--output_dir={machine_b / 'runs'}",
        f"--data_dir={nature_dir}", f"--cache_dir={machine_b / 'cache'}", "--wandb_mode=disabled"])
    assert (resumed_config.model, resumed_config.lr, resumed_config.filters) == ("scratch_cnn", 3e-3, 8)
    # the whole config (the store keeps config.yaml), not only what trains
    assert resumed_config.wandb_project == "birds"
    resumed = run_training(resumed_config)
    assert resumed.state == M.FINISHED and resumed.summary.get("resumed_from_epoch") == 1
    (store / "t9" / "config.yaml").unlink()
    from trainer.store import stored_config

    assert stored_config(str(store), "t9")["lr"] == 3e-3 and "wandb_project" not in stored_config(str(store), "t9")


def test_a_config_that_never_trained_is_no_earlier_run(nature_dir, tmp_path, capsys):
    """A start refused before training (here: --resume with a mistyped setting) leaves a config.yaml of nothing;
    the next start neither calls it an earlier run nor keeps it as config.previous.yaml."""
    finished = run_training(config(nature_dir, tmp_path, run_id="r1", epochs=1))
    with pytest.raises(UserError, match="--resume: run r1 was trained with filters=8"):
        run_training(config(nature_dir, tmp_path, run_id="r1", epochs=1, filters=16, resume=True))
    fresh = tmp_path / "runs" / "r2"
    fresh.mkdir()
    (fresh / "config.yaml").write_text(
        (finished.folder / "config.yaml").read_text().replace("filters: 8", "filters: 16"))
    capsys.readouterr()
    outcome = run_training(config(nature_dir, tmp_path, run_id="r2", epochs=1))
    assert outcome.state == M.FINISHED and "trained before" not in capsys.readouterr().out
    assert not (fresh / "config.previous.yaml").exists()

    # Beside a checkpoint, the checkpoint says what trained: another config refused before training (a mistyped
    # --data_dir) rewrote config.yaml, and r1 still resumes with its own settings.
    with pytest.raises(UserError, match="no dataset found"):
        run_training(config(nature_dir, tmp_path, run_id="r1", epochs=1, filters=16, data_dir=str(tmp_path / "datsets"),
                            download=False))
    capsys.readouterr()
    again = run_training(config(nature_dir, tmp_path, run_id="r1", epochs=1, resume=True))
    assert again.state == M.FINISHED and "nothing to train" in capsys.readouterr().out


def test_corrupt_checkpoint_is_refused_with_a_reason_and_the_trial_starts_fresh(nature_dir, tmp_path):
    folder = tmp_path / "runs" / "broken"
    folder.mkdir(parents=True)
    (folder / "last.pt").write_bytes(b"not a checkpoint")
    outcome = run_training(config(nature_dir, tmp_path, run_id="broken", epochs=1))
    assert outcome.state == M.FINISHED
    assert "unreadable" in outcome.summary["resume_refused"]
    assert (folder / "last.refused.pt").exists()


def test_checkpoint_of_another_model_is_never_loaded(nature_dir, tmp_path):
    first = run_training(config(nature_dir, tmp_path, run_id="same", epochs=1))
    assert first.state == M.FINISHED
    other = run_training(config(nature_dir, tmp_path, run_id="same", epochs=1, filters=16))
    assert other.state == M.FINISHED
    assert "was trained with filters=8 (now 16)" in other.summary["resume_refused"]  # the settings, not hashes


class FakeArtifactRun:
    """Stands in for W&B's network side only: artifacts 'uploaded' are kept in a dict, versions counted."""

    entity, project = "me", "proj"

    def __init__(self, fail: bool = False):
        self.versions: dict[str, list[bytes]] = {}
        self.fail = fail

    def log_artifact(self, artifact, aliases=None):
        if self.fail:
            raise ConnectionError("upload refused")
        (filename, entry), = artifact.manifest.entries.items()
        self.versions.setdefault(artifact.name, []).append((filename, Path(entry.local_path).read_bytes()))
        return type("Logged", (), {"wait": lambda self: None})()

    def use_artifact(self, name):
        key = name.split(":")[0]
        if key not in self.versions:
            raise KeyError(name)
        filename, data = self.versions[key][-1]

        class Downloaded:
            def download(self, root):
                Path(root).mkdir(parents=True, exist_ok=True)
                (Path(root) / filename).write_bytes(data)
                return root

        return Downloaded()


def test_artifact_store_uploads_in_background_and_a_new_machine_fetches_it(tmp_path, monkeypatch):
    import wandb

    from trainer.wandb_log import WandbLogger

    monkeypatch.setattr(wandb, "Api", lambda **k: type("Api", (), {"artifacts": lambda self, *a: []})())
    run = FakeArtifactRun()
    logger = WandbLogger(run, "online")
    store = ArtifactStore(logger, "trial-9")
    checkpoint = tmp_path / "machine_a" / "last.pt"
    checkpoint.parent.mkdir()
    torch.save({"epoch": 1}, checkpoint)
    store.save(checkpoint)
    best = checkpoint.with_name("best.pt")
    torch.save({"epoch": 1, "best": True}, best)
    store.save(best)
    torch.save({"epoch": 2}, checkpoint)  # the live file changes; uploads work on their own snapshots
    store.close()  # waits for queued uploads
    assert run.versions["checkpoint-trial-9"] and run.versions["best-trial-9"]
    assert not list(checkpoint.parent.glob(".upload-*")), "snapshots are removed once uploaded"
    machine_b = tmp_path / "machine_b"
    store_b = ArtifactStore(logger, "trial-9")
    assert store_b.fetch(machine_b / "last.pt") and store_b.fetch(machine_b / "best.pt")
    store_b.close()
    assert torch.load(machine_b / "last.pt", weights_only=True)["epoch"] == 1
    assert torch.load(machine_b / "best.pt", weights_only=True)["best"] is True


def test_failed_upload_warns_once_and_training_goes_on(tmp_path, capsys):
    from trainer.wandb_log import WandbLogger

    logger = WandbLogger(FakeArtifactRun(fail=True), "online")
    store = ArtifactStore(logger, "trial-10")
    checkpoint = tmp_path / "last.pt"
    torch.save({"epoch": 1}, checkpoint)
    store.save(checkpoint)
    store.close()
    store.save(checkpoint)  # after a failure the store still accepts saves without raising
    assert capsys.readouterr().err.count("warning") == 1
    assert checkpoint.exists()


def test_a_sweep_stop_is_told_apart_from_a_preemption(monkeypatch):
    """Under `wandb agent` both arrive as SIGTERM; the server's shouldStop flag tells them apart."""
    import wandb

    from trainer.wandb_log import WandbLogger

    answers = []

    class Service:
        def execute_graphql(self, query, variables):
            answers.append(variables)
            return {"project": {"run": {"shouldStop": variables["run"] == "stopped-by-hyperband", "stopped": False}}}

    monkeypatch.setattr(wandb, "Api", lambda **k: type("Api", (), {"_service_api": Service()})())
    run = type("Run", (), {"entity": "me", "project": "proj", "sweep_id": "sw1"})
    assert WandbLogger(type("R", (run,), {"id": "stopped-by-hyperband"})(), "online").stop_requested_by_sweep()
    assert not WandbLogger(type("R", (run,), {"id": "cut-off"})(), "online").stop_requested_by_sweep()
    assert answers[0] == {"entity": "me", "project": "proj", "run": "stopped-by-hyperband"}
    monkeypatch.setattr(wandb, "Api", lambda **k: (_ for _ in ()).throw(ConnectionError("offline")))
    assert not WandbLogger(type("R", (run,), {"id": "x"})(), "online").stop_requested_by_sweep()


# --- checkpoints without the stages frozen all run ------------------------------------------------

SMALL = Preprocessing(crop_size=64, resize_size=72, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def test_a_checkpoint_store_on_a_drive_not_mounted_is_refused_before_training(nature_dir, tmp_path):
    """Colab with Drive not mounted: /content/drive/MyDrive/ckpts must not be created on the disk that goes away."""
    unmounted = tmp_path / "content" / "drive" / "MyDrive" / "ckpts"
    with pytest.raises(UserError) as caught:
        run_training(config(nature_dir, tmp_path / "machine", run_id="no-drive", checkpoint_store=str(unmounted)))
    message = str(caught.value)
    assert "\n" not in message and f"{unmounted.parent} does not exist (a drive not mounted?)" in message
    assert not (tmp_path / "content").exists()
    folder = tmp_path / "machine" / "runs" / "no-drive"
    summary = json.loads((folder / "summary.json").read_text())
    assert (summary[M.STATE] == M.FAILED and "drive not mounted" in summary[M.REASON]
            and not (folder / "last.pt").exists())
    # A new folder in a folder that exists is a store like any other: created, and used.
    outcome = run_training(config(nature_dir, tmp_path / "machine", run_id="new-store", epochs=1,
                                  checkpoint_store=str(tmp_path / "ckpts")))
    assert outcome.state == M.FINISHED and (tmp_path / "ckpts" / "new-store" / "last.pt").exists()


def test_a_checkpoint_store_that_is_a_file_is_refused_with_the_option_to_change(tmp_path):
    """A store path that cannot hold run folders is named at once, with the option to fix, not after an epoch."""
    from trainer.store import FolderStore

    taken = tmp_path / "ckpts"
    taken.write_text("not a folder")
    with pytest.raises(UserError, match="checkpoint store .*ckpts is a file, not a folder: pass --checkpoint_store"):
        FolderStore(taken, "r1")


@pytest.fixture
def imagenet_hub(tmp_path, monkeypatch):
    """resnet18 'ImageNet' weights (random, seeded) pre-placed in a temp hub cache; the network is never asked."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(URLError("offline")))
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.manual_seed(123)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), folder / "resnet18-f37072fd.pth")
    import trainer.run

    monkeypatch.setattr(trainer.run, "preprocessing_for", lambda *a, **k: SMALL)  # 64 px: CPU-sized
    return folder


def test_checkpoints_leave_out_stages_frozen_all_run_and_still_resume_exactly(nature_dir, tmp_path, imagenet_hub,
                                                                              sigterm_at_step):
    settings = {"model": "resnet18", "weights": "imagenet", "strategy": "last_k", "k_layers": 1, "augment": "standard",
                "epochs": 2, "lr": 0.01}
    lean = run_training(config(nature_dir, tmp_path / "ref", run_id="lean", **settings))
    whole = run_training(
        config(nature_dir, tmp_path / "ref", run_id="whole", checkpoint_frozen_stages=True, **settings))
    assert rows(lean) == rows(whole)  # what is written does not change what is trained

    payload = torch.load(lean.folder / "last.pt", weights_only=True)
    kept, left_out = set(payload["model"]), set(payload["frozen_base"]["keys"])
    assert payload["frozen_base"]["weights"] == "ResNet18_Weights.IMAGENET1K_V1"
    assert kept and all(key.startswith(("net.layer4.", "net.fc.")) for key in kept)  # the trained stage and the head
    assert any(key.startswith("net.layer3.") for key in left_out) and not kept & left_out
    whole_payload = torch.load(whole.folder / "last.pt", weights_only=True)
    assert set(whole_payload["model"]) == kept | left_out and whole_payload["frozen_base"] is None
    frozen_bytes = sum(whole_payload["model"][key].nbytes for key in left_out)  # 2.8 M parameters
    assert (lean.folder / "last.pt").stat().st_size < (whole.folder / "last.pt").stat().st_size - 0.99 * frozen_bytes

    # Preempted on machine A; machine B, holding only the store, rebuilds the frozen stages from the weights.
    store = tmp_path / "drive"
    disarm = sigterm_at_step(3)
    cut = run_training(
        config(nature_dir, tmp_path / "machine_a", run_id="lean-cut", checkpoint_store=str(store), **settings))
    assert cut.state == M.PREEMPTED
    shutil.rmtree(tmp_path / "machine_a")
    disarm()
    resumed = run_training(
        config(nature_dir, tmp_path / "machine_b", run_id="lean-cut", checkpoint_store=str(store), **settings))
    assert resumed.state == M.FINISHED and resumed.summary.get("resumed_from_epoch") is not None
    assert rows(resumed) == rows(lean)

    # `agent.py test` and warm starts load best.pt: the same network as the self-contained file gives.
    classes = len(lean.summary["classes"])
    a, b = build_model("resnet18", classes, str(lean.folder / "best.pt")), build_model("resnet18", classes,
                                                                                       str(whole.folder / "best.pt"))
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(value, b.state_dict()[key]) for key, value in a.state_dict().items())


def test_bn_statistics_that_adapt_are_always_checkpointed(nature_dir, tmp_path, imagenet_hub):
    outcome = run_training(config(nature_dir, tmp_path, run_id="adapt", model="resnet18", weights="imagenet",
                                  strategy="head_only", bn_mode="adapt", augment="standard", epochs=1))
    assert torch.load(outcome.folder / "last.pt", weights_only=True)["frozen_base"] is None


def test_a_lean_checkpoint_without_its_imagenet_file_says_which_file(nature_dir, tmp_path, imagenet_hub):
    outcome = run_training(config(nature_dir, tmp_path, run_id="lean", model="resnet18", weights="imagenet",
                                  strategy="head_only", augment="none", epochs=1))
    (imagenet_hub / "resnet18-f37072fd.pth").unlink()  # another machine, offline, with an empty hub cache
    with pytest.raises(UserError) as caught:
        build_model("resnet18", len(outcome.summary["classes"]), str(outcome.folder / "best.pt"))
    message = str(caught.value)
    assert "\n" not in message and "resnet18-f37072fd.pth" in message and "--checkpoint_frozen_stages" in message


def test_a_lean_checkpoint_refuses_other_values_under_the_weights_name(nature_dir, tmp_path, imagenet_hub):
    """torch.hub checks a file's hash only when downloading it: a replaced file must not be mixed in silently."""
    import torchvision

    settings = {"model": "resnet18", "weights": "imagenet", "strategy": "head_only", "augment": "standard", "epochs": 1}
    first = run_training(config(nature_dir, tmp_path, run_id="lean", **settings))
    classes = len(first.summary["classes"])
    with pytest.raises(UserError, match="does not have"):
        build_model("resnet50", classes, str(first.folder / "best.pt"))  # another model's file

    torch.manual_seed(7)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), imagenet_hub / "resnet18-f37072fd.pth")
    with pytest.raises(UserError, match="other ResNet18_Weights.IMAGENET1K_V1 values"):
        build_model("resnet18", classes, str(first.folder / "best.pt"))
    again = run_training(config(nature_dir, tmp_path, run_id="lean", **settings))  # finished: it would resume
    assert (again.state == M.FINISHED
            and "other ResNet18_Weights.IMAGENET1K_V1 values" in again.summary["resume_refused"])


def _drop_a_group(optimizer: dict) -> None:
    optimizer["param_groups"] = optimizer["param_groups"][:-1]


def _reshape_a_state(optimizer: dict) -> None:
    slots = next(iter(optimizer["state"].values()))
    slots["exp_avg"] = torch.zeros(slots["exp_avg"].numel() + 1)


@pytest.mark.parametrize("damage", [_drop_a_group, _reshape_a_state])
def test_an_optimizer_state_that_does_not_fit_starts_fresh(nature_dir, tmp_path, damage):
    """A checkpoint whose optimizer state differs (written by older code) is refused, not a crash on every relaunch."""
    first = run_training(config(nature_dir, tmp_path, run_id="groups", epochs=1))
    payload = torch.load(first.folder / "last.pt", weights_only=True)
    damage(payload["optimizer"])
    torch.save(payload, first.folder / "last.pt")
    again = run_training(config(nature_dir, tmp_path, run_id="groups", epochs=1))
    assert again.state == M.FINISHED and "optimizer state does not fit" in again.summary["resume_refused"]
    assert [r[M.EPOCH] for r in rows(again)] == [1] and (first.folder / "last.refused.pt").exists()


def test_a_store_never_brings_back_the_best_pt_of_a_replaced_model(nature_dir, tmp_path, sigterm_at_step):
    store = tmp_path / "drive"
    settings = {"run_id": "same", "checkpoint_store": str(store), "epochs": 1}
    first = run_training(config(nature_dir, tmp_path, **settings))
    assert first.state == M.FINISHED and (first.folder / "best.pt").exists()
    for copy in [first.folder / "last.pt", *store.rglob("last.pt")]:  # a checkpoint refused on resume
        payload = torch.load(copy, weights_only=True)
        payload["optimizer"]["param_groups"] = payload["optimizer"]["param_groups"][:-1]
        torch.save(payload, copy)
    disarm = sigterm_at_step(2)  # the fresh start is cut off before its first epoch ends: it has no best epoch yet
    cut = run_training(config(nature_dir, tmp_path, **settings))
    assert cut.state == M.PREEMPTED and "optimizer state does not fit" in cut.summary["resume_refused"]
    assert not (cut.folder / "best.pt").exists() and (cut.folder / "best.previous.pt").exists()
    assert M.BEST_VAL_ACC not in cut.summary and M.BEST_EPOCH not in cut.summary  # nor does its best val_acc
    disarm()
    sigterm_at_step(1)  # relaunched, and cut off again: the store's old best.pt must stay out
    again = run_training(config(nature_dir, tmp_path, **settings))
    assert again.state == M.PREEMPTED and again.summary.get("resumed_from_epoch") == 0
    assert not (again.folder / "best.pt").exists() and again.summary.get(M.BEST_VAL_ACC, -1) < 0  # no best epoch yet


def test_a_checkpoint_of_code_that_normalised_otherwise_resumes(nature_dir, tmp_path, sigterm_at_step):
    """An upgrade that writes equivalent values another way (older code kept warmup_epochs under onecycle) changes
    the config hash; the checkpoint's saved config, hashed today, still names this run, and nothing else."""
    from trainer.config import effective_config

    settings = {"run_id": "upgraded", "schedule": "onecycle", "warmup_epochs": 3}
    disarm = sigterm_at_step(5)
    cut = run_training(config(nature_dir, tmp_path, **settings))
    assert cut.state == M.PREEMPTED
    disarm()
    last = cut.folder / "last.pt"
    payload = torch.load(last, weights_only=True)
    assert payload["config"] == effective_config(config(nature_dir, tmp_path, **settings))
    payload["identity"]["config_hash"] = "0123456789abcdef"  # what the older code hashed
    payload["config"] = {**payload["config"], "warmup_epochs": 3.0}  # what it wrote
    torch.save(payload, last)
    written = yaml.safe_load((cut.folder / "config.yaml").read_text())
    (cut.folder / "config.yaml").write_text(yaml.safe_dump({**written, "warmup_epochs": 3.0}))  # its config.yaml too
    resumed = run_training(config(nature_dir, tmp_path, **settings, resume=True))
    assert resumed.state == M.FINISHED and resumed.summary.get("resumed_from_epoch") == 1

    payload["config"] = {**payload["config"], "lr": 0.5}  # another config is still another config
    torch.save(payload, last)
    refused = run_training(config(nature_dir, tmp_path, **settings))  # the same settings: only lr tells it apart
    assert "was trained with lr=0.5 (now" in refused.summary["resume_refused"]
    assert "warmup" not in refused.summary["resume_refused"]  # older code's spelling is no difference


def test_a_stop_before_the_best_epoch_was_kept_still_leaves_its_best_pt(nature_dir, tmp_path, monkeypatch):
    # Ctrl-C pressed twice between writing epoch 2's last.pt (the new best) and keeping it as best.pt: the
    # resumed run must still end with best.pt of its best epoch, which `agent.py test` evaluates.
    import trainer.loop
    import trainer.run

    accuracies = iter([0.5, 0.8, 0.6])
    monkeypatch.setattr(trainer.loop, "evaluate", lambda loop, loader: (1.0, next(accuracies)))
    real_keep, kept = trainer.run.keep_as, []

    def keep_as(source, target):
        kept.append(target)
        if len(kept) == 2:
            raise KeyboardInterrupt
        real_keep(source, target)

    monkeypatch.setattr(trainer.run, "keep_as", keep_as)
    cut = run_training(config(nature_dir, tmp_path, run_id="cut", patience=0))
    assert cut.state == M.PREEMPTED
    assert torch.load(cut.folder / "best.pt", weights_only=True)["epoch"] == 1  # epoch 2 never became best.pt
    monkeypatch.setattr(trainer.run, "keep_as", real_keep)
    done = run_training(config(nature_dir, tmp_path, run_id="cut", patience=0, resume=True))
    assert done.state == M.FINISHED and done.summary[M.BEST_EPOCH] == 2 and done.summary[M.BEST_VAL_ACC] == 0.8
    assert torch.load(done.folder / "best.pt", weights_only=True)["epoch"] == 2


def test_a_checkpoint_without_an_identity_is_refused_with_a_reason(tmp_path):
    from trainer.checkpoint import CheckpointRefused, load_checkpoint

    path = tmp_path / "last.pt"
    torch.save({"format": 1, "loop": {}, "model": {}}, path)  # a hand-made or foreign file of our format
    with pytest.raises(CheckpointRefused, match="was written for config_hash=None"):
        load_checkpoint(path, {"config_hash": "0123456789abcdef"})


def test_an_epoch_resumed_at_its_end_reports_the_whole_epochs_time_and_throughput(nature_dir, tmp_path, sigterm_at_step,
                                                                                  monkeypatch):
    import trainer.loop

    def epoch_images(outcome):  # images trained in the epoch, from its row
        row = json.loads((outcome.folder / "metrics.jsonl").read_text())
        return row[M.IMAGES_PER_SECOND] * row[M.EPOCH_SECONDS]

    original_progress = trainer.loop.EpochProgress
    batches = []
    monkeypatch.setattr(trainer.loop, "EpochProgress",
                        lambda *a, **k: batches.append(a[1]) or original_progress(*a, **k))
    straight = run_training(config(nature_dir, tmp_path / "straight", run_id="straight", epochs=1))
    # the epoch's last batch: the checkpoint holds all of it, its validation still to come
    disarm = sigterm_at_step(batches[0])
    cut = run_training(config(nature_dir, tmp_path, run_id="cut", epochs=1))
    assert cut.state == M.PREEMPTED and rows(cut) == []  # no epoch logged yet
    disarm()

    trained_before = torch.load(cut.folder / "last.pt", weights_only=True)["loop"]["epoch_seconds"]
    resumed = run_training(config(nature_dir, tmp_path, run_id="cut", epochs=1))
    assert resumed.summary.get("resumed_from_epoch") == 0
    assert json.loads((resumed.folder / "metrics.jsonl").read_text())[M.EPOCH_SECONDS] >= round(trained_before, 3) > 0
    # the epoch's time and images over both sessions, not the none the resumed session trained (0 img/s)
    assert epoch_images(resumed) == pytest.approx(epoch_images(straight), rel=0.05) and epoch_images(straight) > 8


def test_pruning_old_checkpoint_versions_never_deletes_the_one_aliased_latest(tmp_path, monkeypatch):
    import wandb

    from trainer.wandb_log import WandbLogger

    deleted = []

    class Version:
        def __init__(self, name, aliases):
            self.name, self.aliases = name, aliases

        def delete(self):
            deleted.append(self.name)

    listed = [Version("v2", []), Version("v3", ["latest"]), Version("v1", None)]  # in whatever order W&B lists them
    monkeypatch.setattr(wandb, "Api", lambda **k: type("Api", (), {"artifacts": lambda self, *a: listed})())
    store = ArtifactStore(WandbLogger(FakeArtifactRun(), "online"), "trial-11")
    checkpoint = tmp_path / "last.pt"
    torch.save({"epoch": 3}, checkpoint)
    store.save(checkpoint)
    store.close()
    assert deleted == ["v1"]


def test_a_copy_to_the_folder_store_cut_off_midway_leaves_the_previous_copy_whole(tmp_path, monkeypatch):
    from trainer.store import FolderStore

    store = FolderStore(tmp_path / "drive", "trial-12")
    checkpoint = tmp_path / "machine_a" / "last.pt"
    checkpoint.parent.mkdir()
    torch.save({"epoch": 1}, checkpoint)
    store.save(checkpoint)
    torch.save({"epoch": 2, "weights": torch.zeros(1000)}, checkpoint)

    def cut_off(source, target, length=0):
        target.write(source.read(100))
        raise OSError("the mounted drive went away")

    with monkeypatch.context() as patch:
        patch.setattr(shutil, "copyfileobj", cut_off)
        with pytest.raises(OSError):
            store.save(checkpoint)
    fresh_machine = tmp_path / "machine_b" / "last.pt"
    fresh_machine.parent.mkdir()
    assert store.fetch(fresh_machine)
    assert torch.load(fresh_machine, weights_only=True) == {"epoch": 1}


def test_an_epoch_recorded_again_replaces_that_epoch_and_every_later_one(tmp_path):
    from trainer.record import RunRecord

    record = RunRecord(tmp_path / "run")
    for epoch, accuracy in ((1, 0.4), (2, 0.5), (3, 0.6)):
        record.append_epoch({M.EPOCH: epoch, M.VAL_ACC: accuracy})
    record.append_epoch({M.EPOCH: 2, M.VAL_ACC: 0.7})  # epoch 2 trained again, e.g. resumed from epoch 1's checkpoint
    assert RunRecord.read_history(record.folder) == [{M.EPOCH: 1, M.VAL_ACC: 0.4}, {M.EPOCH: 2, M.VAL_ACC: 0.7}]


def test_a_mid_epoch_checkpoint_of_an_older_version_counts_only_the_resumed_sessions_images(nature_dir, tmp_path,
                                                                                            sigterm_at_step):
    """Its epoch's earlier time was never saved: dividing all the epoch's images by this session's time would
    overstate images/s."""
    disarm = sigterm_at_step(2)  # half the epoch's 4 batches
    cut = run_training(config(nature_dir, tmp_path, run_id="old", epochs=1))
    payload = torch.load(cut.folder / "last.pt", weights_only=True)
    del payload["loop"]["epoch_seconds"]  # as written before the field existed
    torch.save(payload, cut.folder / "last.pt")
    disarm()

    resumed = run_training(config(nature_dir, tmp_path, run_id="old", epochs=1))
    row = json.loads((resumed.folder / "metrics.jsonl").read_text())
    seen_before, epoch_images = payload["loop"]["seen"], resumed.summary["num_train"] // 8 * 8  # full batches only
    measured = row[M.IMAGES_PER_SECOND] * row[M.EPOCH_SECONDS]
    assert 0 < seen_before < epoch_images
    # this session's images, not the epoch's
    assert abs(measured - (epoch_images - seen_before)) < abs(measured - epoch_images)
