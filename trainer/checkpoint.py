"""Checkpoints: plain dicts of tensors and numbers, loadable with `torch.load(weights_only=True)`.

A checkpoint holds everything a resumed run needs to continue exactly: model, optimizer, grad scaler,
loop counters (epoch, batch within the epoch, global step, best so far, running sums), RNG states, and the
identity of what was trained (config hash, model, weights version, stage names, classes), which is checked
before anything is loaded: a checkpoint of another config or model is refused, never loaded. Stages that
stay frozen for the whole run on ImageNet weights are left out (`frozen_base` names the weights they are).
"""

from __future__ import annotations

import errno
import math
import os
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from common.atomic import atomic_write
from common.disk import disk_cause, ensure_space
from common.errors import UserError
from models.weights import FROZEN_BASE
from trainer.config import effective_config, parse_run_config, rehash

FORMAT = 1
FORMAT_LEAN = 2  # with frozen_base: older code, which cannot rebuild the left-out stages, refuses it


@dataclass
class LoopState:
    """Loop counters; everything here is saved and restored."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # batches of the current epoch already trained (a mid-epoch checkpoint)
    step: int = 0  # optimizer steps in total
    best_val_acc: float = -1.0
    best_val_loss: float = math.inf  # the best epoch's; a later epoch with equal val_acc and a lower loss is better
    best_epoch: int = 0
    stale_epochs: int = 0  # epochs since the best epoch
    train_seconds: float = 0.0
    epoch_seconds: float = 0.0  # seconds the current epoch trained before the last checkpoint, in any session
    loss_sum: float = 0.0  # running sums of the current epoch
    correct: int = 0
    seen: int = 0
    batch_size: int = 0  # the batch size in use (halved after an out-of-memory retry)
    log_step_offset: int = 0  # W&B steps an earlier attempt in the same W&B run used (epoch e logs at offset + e)


def checkpoint_payload(*, model, optimizer, scaler, state: LoopState, identity: dict[str, Any],
                       history: list[dict] | None = None, frozen_base: dict[str, Any] | None = None,
                       config: dict[str, Any] | None = None, copy: bool = True) -> dict[str, Any]:
    """The checkpoint as it is now, its tensors copied to host memory: training may go on while it is written
    (`copy=False`: the live tensors, for a write that finishes before training goes on).

    `frozen_base` ({"weights": ImageNet member, "keys": [...]}) leaves out stages frozen for the whole run:
    they are those weights, untouched, and a loader takes them from there (VGG-16 head-only: 0.2 MB, not 528).
    `config` is the effective config behind `identity["config_hash"]`, for code that normalises it otherwise.
    """
    state_dict = model.state_dict()
    if frozen_base:
        left_out = set(frozen_base["keys"])
        state_dict = {key: value for key, value in state_dict.items() if key not in left_out}
    payload = {
        "format": FORMAT_LEAN if frozen_base else FORMAT,
        "model": state_dict,
        FROZEN_BASE: frozen_base,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else {},
        "epoch": state.epoch,
        "loop": asdict(state),
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "torch_threads": torch.get_num_threads(),  # CPU sums round by how they are split: a resume under others says so
        "identity": identity,
        "config": config,
        # The per-epoch metrics travel with the checkpoint, so a run resumed on a machine whose disk held
        # nothing but this file still has its whole history.
        "history": list(history or []),
    }
    return snapshot(payload) if copy else payload


def snapshot(value: Any) -> Any:
    """A copy of nested dicts/lists whose tensors are detached host copies (the optimizer steps parameters and
    its moments in place; a checkpoint written later must not see those steps)."""
    if torch.is_tensor(value):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: snapshot(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(snapshot(item) for item in value)
    return value


def tensor_bytes(value: Any) -> int:
    if torch.is_tensor(value):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(item) for item in value)
    return 0


def write_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Atomically; a disk too full for it is named (torch.save's own error would not say why)."""
    needed = tensor_bytes(payload)
    what, option = f"checkpoint {path.name}", "--output_dir"
    ensure_space(path.parent, needed, what, option)
    try:
        atomic_write(path, lambda handle: torch.save(payload, handle), mode="wb")
    except Exception as exc:
        full = disk_cause(exc)  # however torch reports it: an OSError, or a RuntimeError raised while handling one
        if full is not None and full.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"the disk of {path.parent} filled up while writing {what}: free some space or pass "
                            f"{option} on a bigger disk") from None
        ensure_space(path.parent, needed, what, option)  # another process filled it meanwhile: say so
        raise


def keep_as(source: Path, target: Path) -> None:
    """Make `target` the checkpoint `source` is now, without serialising the model a second time.

    A hard link shares the file; `source` is later replaced by rename (a new file), so `target` keeps this
    version. Filesystems without hard links (some network mounts) get a copy.
    """
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


# Identity keys newer than the checkpoint format: a checkpoint without one is still resumed.
ADDED_IDENTITY_KEYS = frozenset({"data_hash", "preprocessing", "eval_preprocessing"})


def identity_mismatch(payload: dict[str, Any], identity: dict[str, Any]) -> str | None:
    """The first key of `identity` the checkpoint was written for otherwise, or None when it is this run's.

    A config hash from code that normalised equivalent values otherwise still matches when the checkpoint's
    saved config hashes, today, to this run's.
    """
    saved = payload.get("identity") or {}
    for key, value in identity.items():
        if key in ADDED_IDENTITY_KEYS and key not in saved:
            continue  # written before the key existed: what it would say is unknown, not different
        if saved.get(key) != value and not (key == "config_hash" and rehash(payload.get("config")) == value):
            return key
    return None


class CheckpointRefused(Exception):
    """The file is unreadable or belongs to another config/model; the message is the one-line reason."""


def load_checkpoint(path: Path, identity: dict[str, Any], config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint at `path` if it is this run's (`identity`); `config`, this run's effective config, names the
    settings that differ when the config hash does."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointRefused(f"checkpoint {path} is unreadable ({type(exc).__name__}); starting fresh") from None
    if not isinstance(payload, dict) or payload.get("format") not in (FORMAT, FORMAT_LEAN) or "loop" not in payload:
        raise CheckpointRefused(f"checkpoint {path} is not a resumable checkpoint of this harness; starting fresh")
    key = identity_mismatch(payload, identity)
    if key == "config_hash" and config and isinstance(payload.get("config"), dict):
        saved = _as_written_today(payload["config"])
        changed = [f"{k}={saved[k]!r} (now {v!r})" for k, v in config.items() if k in saved and saved[k] != v]
        if changed:
            raise CheckpointRefused(
                f"checkpoint {path} was trained with "
                f"{', '.join(changed[:4])}{' ...' if len(changed) > 4 else ''}; starting fresh")
    if key:
        raise CheckpointRefused(
            f"checkpoint {path} was written for {key}={(payload.get('identity') or {}).get(key)!r}, "
            f"this run has {identity[key]!r}; starting fresh")
    return payload


def _as_written_today(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved effective config normalised as today's code writes it, so a difference named is a real one (not
    older code's spelling of the same value); as saved when it no longer reads."""
    try:
        return effective_config(parse_run_config(saved))
    except Exception:
        return saved


def check_frozen_base(payload: dict[str, Any], frozen_base: dict[str, Any] | None, path: Path) -> None:
    """The stages a checkpoint left out must be the ones this machine's weights file gives."""
    saved = payload.get(FROZEN_BASE)
    if not saved:
        return
    if not frozen_base or set(saved.get("keys", [])) != set(frozen_base["keys"]):
        raise CheckpointRefused(f"checkpoint {path} left out stages this run trains or keeps; starting fresh")
    if saved.get("fingerprint") and saved["fingerprint"] != frozen_base.get("fingerprint"):
        raise CheckpointRefused(f"checkpoint {path} was trained on other {saved.get('weights')} values than this "
                                "machine's file in the torch hub cache; starting fresh (to resume instead: put the "
                                "original file there and rename last.refused.pt back to last.pt)")


def restore(payload: dict[str, Any], *, model, optimizer, scaler) -> LoopState:
    """Load a checkpoint into the run; CheckpointRefused, with nothing changed, when the optimizer's groups differ
    (a checkpoint of older code that grouped parameters otherwise)."""
    try:
        optimizer.load_state_dict(payload["optimizer"])  # before the model: the caller rebuilds only the optimizer
    except ValueError as exc:
        raise CheckpointRefused("checkpoint's optimizer state does not fit this run "
                                f"({str(exc).splitlines()[0]}); starting fresh") from None
    for param, slots in optimizer.state.items():  # groups of equal sizes can still hold other parameters
        if any(torch.is_tensor(v) and v.dim() > 0 and v.shape != param.shape for v in slots.values()):
            raise CheckpointRefused(
                "checkpoint's optimizer state does not fit this run (a state of another shape); starting fresh")
    left_out = set((payload.get(FROZEN_BASE) or {}).get("keys", []))
    missing, unexpected = model.load_state_dict(payload["model"], strict=False)
    # BatchNorm never reports num_batches_tracked as missing (it
    # keeps its own), so: nothing missing but what was left out.
    if unexpected or not set(missing) <= left_out:  # the identity check makes this unreachable short of a bug
        raise RuntimeError(
            "checkpoint does not fit the model: missing "
            f"{sorted(set(missing) - left_out)[:3]}, unexpected {unexpected[:3]}")
    if scaler is not None and scaler.is_enabled() and payload["scaler"]:
        scaler.load_state_dict(payload["scaler"])
    torch.set_rng_state(payload["rng"]["torch"])
    if (payload["rng"]["cuda"] and torch.cuda.is_available()
            and len(payload["rng"]["cuda"]) == torch.cuda.device_count()):
        torch.cuda.set_rng_state_all(payload["rng"]["cuda"])
    names = {f.name for f in fields(LoopState)}
    loop = {k: v for k, v in payload["loop"].items() if k in names}
    if "best_val_loss" not in loop:  # written before ties went to the lower loss: the best epoch's, from the history;
        # unknown, -inf keeps the rule it was written under (a tie is no improvement)
        loop["best_val_loss"] = next((row["val_loss"] for row in payload.get("history") or []
                                      if row.get("epoch") == loop.get("best_epoch") and "val_loss" in row), -math.inf)
    return LoopState(**loop)
