"""Turn a weights choice ("imagenet", an enum member, "none" or a file) into a built StagedModel and its input
preprocessing.

Weights are always named explicitly and recorded (pitfall 9); input size and normalisation come from the
weights' own metadata (pitfall 10); the ImageNet head and aux heads are replaced at the locations the registry
names (pitfall 14). Nothing here downloads unless the user asked for ImageNet weights that are not cached.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlparse

import torch
from torch import nn

from common.errors import UserError
from common.parsing import nearest
from common.preprocessing import Preprocessing
from models.registry import BackboneSpec, get_spec
from models.staged import BN_MODES, StagedModel
from scratch_cnn import ScratchCNNConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEMBER_LIKE = re.compile(r"^[A-Z][A-Z0-9_]*$")  # how enum member names look
_READ_ERRORS = (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError)


@dataclass(frozen=True)
class ResolvedWeights:
    kind: str  # "imagenet" (an enum member), "none" or "file"
    member: object = None  # the torchvision WeightsEnum member, for kind "imagenet"
    path: str | None = None  # absolute path, for kind "file"

    @property
    def version(self) -> str:
        """What a run records: `ResNet50_Weights.IMAGENET1K_V2`, `none` or `file:/abs/path`."""
        if self.kind == "imagenet":
            return f"{type(self.member).__name__}.{self.member.name}"
        return "none" if self.kind == "none" else f"file:{self.path}"


def _members(spec: BackboneSpec) -> tuple[str, ...]:
    # Iterating an Enum skips aliases, so DEFAULT (an alias whose target changes between releases) is left out.
    names = tuple(member.name for member in spec.weights_enum)
    return tuple(n for n in names if n in spec.weights_choices) if spec.weights_choices else names


def resolve_weights(spec: BackboneSpec, weights: str | os.PathLike) -> ResolvedWeights:
    """Validate a weights choice for a backbone without loading anything."""
    if isinstance(weights, os.PathLike):
        weights = os.fspath(weights)
    if not isinstance(weights, str) or not weights:
        raise UserError(f"weights={weights!r} must be 'imagenet', a weights name, 'none' or a checkpoint path")
    if weights == "none":
        return ResolvedWeights("none")
    exists = os.path.exists(weights)
    if spec.is_scratch:
        if weights == "imagenet" or (_MEMBER_LIKE.match(weights) and not exists):
            raise UserError(f"weights={weights} but {spec.name} has no pretrained weights; "
                            f"use --weights=none or --weights=PATH to a checkpoint")
        return ResolvedWeights("file", path=os.path.abspath(weights))
    members = _members(spec)
    if weights == "imagenet":
        return ResolvedWeights("imagenet", member=spec.weights_enum[spec.default_weights])
    if weights.upper() == "DEFAULT":
        raise UserError(f"weights=DEFAULT does not say which weights; name one of {', '.join(members)} "
                        f"('imagenet' means {spec.default_weights} for {spec.name})")
    if weights in members:
        return ResolvedWeights("imagenet", member=spec.weights_enum[weights])
    # A bare word that is no file ("IMAGENET1K_V3", "imagenet1k_v2") was meant as a weights name, not a path.
    if not exists and os.sep not in weights and "." not in weights:
        raise UserError(f"weights={weights} is not available for {spec.name}{nearest(weights.upper(), members)}; "
                        f"use imagenet (= {spec.default_weights}), {', '.join(members)}, none or a checkpoint path")
    return ResolvedWeights("file", path=os.path.abspath(weights))


def preprocessing_for(name: str, weights: str = "imagenet", scratch: ScratchCNNConfig | None = None) -> Preprocessing:
    """Crop, resize, mean/std and interpolation the model expects, read from its weights' metadata.

    A run's checkpoint (a warm start) sees images as that run did: the metadata of the ImageNet weights it started
    from. Random init and other files use the default weights' metadata: the architecture was designed for it
    (Inception v3 at 299 px, EfficientNetV2-S at 384 px).
    """
    spec = get_spec(name)
    resolved = resolve_weights(spec, weights)
    if resolved.kind == "file" and not spec.is_scratch:
        recorded, origin = _origin(spec, resolved.path)
        if recorded is not None:  # the run that wrote it recorded what it saw: also through a chain of warm starts
            return recorded
        resolved = ResolvedWeights("imagenet", member=origin) if origin is not None else resolved
    if spec.is_scratch:
        size = (scratch or ScratchCNNConfig()).input_size
        # Same resize-to-crop ratio (256/224) and normalisation as the ImageNet models, so one pipeline serves all.
        return Preprocessing(size, round(size * 256 / 224), IMAGENET_MEAN, IMAGENET_STD, "bilinear")
    member = resolved.member if resolved.kind == "imagenet" else spec.weights_enum[spec.default_weights]
    preset = member.transforms()
    return Preprocessing(
        crop_size=int(preset.crop_size[0]),
        resize_size=int(preset.resize_size[0]),
        mean=tuple(float(v) for v in preset.mean),
        std=tuple(float(v) for v in preset.std),
        interpolation=preset.interpolation.value,
    )


def build_model(name: str, num_classes: int, weights: str = "imagenet", aux_loss_weight: float | None = None,
                bn_mode: str = "freeze", scratch: ScratchCNNConfig | None = None) -> StagedModel:
    """A StagedModel with `num_classes` outputs, every stage trainable until a plan is applied.

    `aux_loss_weight=None` takes the backbone's default (0 where it has no aux heads); 0 disables aux heads.
    `scratch` configures the scratch CNN and is ignored by the pretrained backbones.
    """
    spec = get_spec(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes={num_classes!r} must be a positive integer")
    if bn_mode not in BN_MODES:
        raise UserError(f"bn_mode={bn_mode!r} is not one of {', '.join(BN_MODES)}{nearest(str(bn_mode), BN_MODES)}")
    aux_loss_weight = _resolve_aux_loss_weight(spec, aux_loss_weight)
    resolved = resolve_weights(spec, weights)

    state, base = _read_file(resolved.path) if resolved.kind == "file" else ({}, None)
    if spec.is_scratch:
        net = spec.build_net(scratch or ScratchCNNConfig(), num_classes)
    else:
        net = spec.build_net()
        if resolved.kind == "imagenet":
            _load_imagenet(spec, net, resolved.member)
        elif base:  # a run checkpoint without its frozen stages: they are these ImageNet weights, untouched
            try:
                _load_imagenet(spec, net, _base_member(spec, base, resolved.path))
            except UserError as error:
                raise UserError(f"{resolved.path} holds only the stages its run trained; the frozen ones are "
                                f"{base['weights']}: {str(error).split('; ')[0]}; put that file there, or train with "
                                f"--checkpoint_frozen_stages=true for self-contained checkpoints") from None
        for path in head_linear_paths(spec):
            _replace_linear(net, path, num_classes)
    if resolved.kind == "file":
        from_base = set(base["keys"]) if base and not spec.is_scratch else set()
        if from_base and base.get("fingerprint") and frozen_fingerprint(net.state_dict(), from_base) != base["fingerprint"]:
            raise UserError(f"{resolved.path} was trained on other {base['weights']} values than the file in "
                            f"{os.path.join(torch.hub.get_dir(), 'checkpoints')}: put the original file there (delete "
                            f"this one and it downloads again), or train with --checkpoint_frozen_stages=true")
        _load_file(spec, net, resolved.path, state, from_base)
    return StagedModel(spec, net, num_classes, resolved.version, aux_loss_weight, bn_mode)


def _resolve_aux_loss_weight(spec: BackboneSpec, weight: float | None) -> float:
    if not spec.aux_heads:
        return 0.0  # a sweep may set it for every model; it means nothing without aux heads
    if weight is None:
        return spec.aux_heads[0].default_loss_weight
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
        raise UserError(f"aux_loss_weight={weight!r} must be a number >= 0 (0 disables the aux heads)")
    return float(weight)


def head_linear_paths(spec: BackboneSpec) -> tuple[str, ...]:
    """The Linear layers that map to classes: the head and each aux head's last layer."""
    return (spec.head_linear, *(aux.final_linear for aux in spec.aux_heads))


def _replace_linear(net: nn.Module, path: str, num_classes: int) -> None:
    old = net.get_submodule(path)
    if not isinstance(old, nn.Linear):
        raise TypeError(f"{path} is a {type(old).__name__}, not the Linear head the registry promises")
    parent_path, _, attribute = path.rpartition(".")
    parent = net.get_submodule(parent_path) if parent_path else net
    setattr(parent, attribute, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))


def _load_imagenet(spec: BackboneSpec, net: nn.Module, member) -> None:
    """Load the 1000-class ImageNet weights strictly from torchvision's hub cache (downloading if absent)."""
    filename = os.path.basename(urlparse(member.url).path)
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    cached = os.path.join(folder, filename)
    was_cached = os.path.exists(cached)
    try:
        state = member.get_state_dict(progress=True, check_hash=True)
    except _READ_ERRORS as error:
        if was_cached:
            raise UserError(f"cannot read the cached ImageNet weights {cached} ({_first_line(error)}); "
                            f"delete it so it downloads again, or use --weights=none or --weights=PATH") from None
        raise UserError(f"ImageNet weights {filename} for {spec.name} are not in {folder} and could not be "
                        f"downloaded ({_first_line(error)}); put the file there (from {member.url}), "
                        f"or use --weights=none or --weights=PATH") from None
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise UserError(f"the cached ImageNet weights {cached} do not fit {spec.name} ({_first_line(error)}); "
                        f"delete the file so it downloads again") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:200]


FROZEN_BASE = "frozen_base"  # checkpoint entry: {"weights": member name, "keys": state_dict keys left out}


def _read_file(path: str) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(state dict, frozen_base entry or None) of a local checkpoint or state_dict file."""
    if not os.path.isfile(path):
        raise UserError(f"weights file {path} not found; give an existing checkpoint, or --weights=imagenet/none")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except _READ_ERRORS as error:
        raise UserError(f"cannot read weights file {path} ({_first_line(error)}); expected a file written by "
                        f"torch.save of a checkpoint or state_dict") from None
    base = obj.get(FROZEN_BASE) if isinstance(obj, Mapping) else None
    if base is not None:
        if not (isinstance(base, Mapping) and isinstance(base.get("weights"), str) and isinstance(base.get("keys"), list)):
            raise UserError(f"weights file {path} has a malformed {FROZEN_BASE} entry; use the run's checkpoint as written")
        base = {"weights": base["weights"], "keys": [_strip_net(key) for key in base["keys"]], "fingerprint": base.get("fingerprint")}
    return _state_dict_from(obj, path), base


def _origin(spec: BackboneSpec, path: str) -> tuple[Preprocessing | None, object]:
    """(the preprocessing a run checkpoint of this model recorded, or None; else the ImageNet weights member it
    started from: its run's config, else its frozen_base entry). (None, None) for plain state_dict files, other
    models' files and files that do not read here (building the model says why)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # mapped: no tensor is read
    except Exception:
        return None, None
    if not isinstance(obj, Mapping):
        return None, None
    identity = obj.get("identity")
    if isinstance(identity, Mapping) and identity.get("model") == spec.name:
        recorded = Preprocessing.from_record(identity.get("preprocessing"))
        if recorded is not None:
            return recorded, None
    return None, _origin_member(spec, obj, path)


def _origin_member(spec: BackboneSpec, obj: Mapping, path: str):
    config = obj.get("config")
    if isinstance(config, Mapping) and config.get("model") == spec.name and isinstance(config.get("weights"), str):
        try:
            started = resolve_weights(spec, config["weights"])
        except UserError:
            started = None
        if started is not None and started.kind == "imagenet":
            return started.member
    base = obj.get(FROZEN_BASE)
    if isinstance(base, Mapping) and isinstance(base.get("weights"), str):
        try:
            return _base_member(spec, base, path)
        except UserError:
            return None
    return None


def frozen_fingerprint(state: Mapping[str, torch.Tensor], keys) -> str:
    """sha256 of the tensors under `keys` ("net." prefixes ignored): which ImageNet file the frozen stages came
    from. torch.hub checks a file's hash only when it downloads it; a replaced file would go unnoticed."""
    digest = hashlib.sha256()
    for key in sorted(keys, key=_strip_net):
        tensor = state[key].detach().to("cpu").contiguous().reshape(-1)
        digest.update(_strip_net(key).encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:24]


def _base_member(spec: BackboneSpec, base: Mapping, path: str):
    enum_name, _, member_name = str(base["weights"]).rpartition(".")
    same_model = spec.weights_enum is not None and enum_name in ("", spec.weights_enum.__name__)
    member = getattr(spec.weights_enum, member_name, None) if same_model else None
    if member is None:
        raise UserError(f"weights file {path} leaves its frozen stages to weights {base['weights']}, which {spec.name} "
                        f"does not have; load it with the model it was trained with")
    return member


def _strip_net(key: str) -> str:
    return key[len("net."):] if key.startswith("net.") else key


def _state_dict_from(obj: object, path: str) -> dict[str, torch.Tensor]:
    """Our checkpoint ({"model": StagedModel state_dict, ...}) or a plain torchvision state_dict, keys unprefixed."""
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"weights file {path} holds no state dict; expected a checkpoint with a 'model' entry "
                        f"or a torchvision state_dict")
    state = dict(obj)
    # torch.compile and DataParallel wrap the model once more; StagedModel adds "net.".
    stripped = True
    while stripped:
        stripped = False
        for prefix in ("_orig_mod.", "module.", "net."):
            if all(key.startswith(prefix) for key in state):
                state = {key[len(prefix):]: value for key, value in state.items()}
                stripped = True
    return state


def _load_file(spec: BackboneSpec, net: nn.Module, path: str, state: dict[str, torch.Tensor], from_base: set[str]) -> None:
    """Load a local checkpoint: every non-head tensor strictly (`from_base`: keys already loaded from the
    ImageNet weights the checkpoint names); head tensors only where their shapes fit."""
    expected = net.state_dict()
    head_keys = {f"{linear}.{kind}" for linear in head_linear_paths(spec) for kind in ("weight", "bias")}
    missing = sorted(set(expected) - set(state) - head_keys - from_base)
    unexpected = sorted(set(state) - set(expected) - head_keys)
    if missing or unexpected:
        raise UserError(f"weights file {path} does not fit {spec.name}: missing keys {missing[:3]}, "
                        f"unexpected keys {unexpected[:3]}; was it saved from another model or config?")
    body = [key for key in state if key in expected and key not in head_keys]
    wrong = [key for key in body if state[key].shape != expected[key].shape]
    if wrong:
        key = wrong[0]
        raise UserError(f"weights file {path} does not fit {spec.name}: {key} has shape {tuple(state[key].shape)}, "
                        f"the model {tuple(expected[key].shape)}; was it saved with another config?")
    loadable = {key: value for key, value in state.items() if key not in head_keys}
    for linear in head_linear_paths(spec):
        # A head saved for another number of classes (e.g. ImageNet's 1000) stays freshly initialised.
        keys = [key for key in expected if key.startswith(f"{linear}.")]
        if all(key in state and state[key].shape == expected[key].shape for key in keys):
            loadable.update({key: state[key] for key in keys})
    net.load_state_dict(loadable, strict=False)
