"""Turn a weights choice ("imagenet", an enum member, "none" or a file) into a built StagedModel and its input
preprocessing.

Weights are always named explicitly and recorded (pitfall 9); input size and normalisation come from the
weights' own metadata (pitfall 10); the ImageNet head and aux heads are replaced at the locations the registry
names (pitfall 14). Nothing here downloads unless the user asked for ImageNet weights that are not cached.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
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
    path: str | None = None  # absolute path: a warm start's file, or torchvision's own file of `member` given by path
    sha256: str | None = None  # of the file at `path`, where one was read

    @property
    def version(self) -> str:
        """What a run records: `ResNet50_Weights.IMAGENET1K_V2` (from torchvision's cache or its file given by path),
        `none` or `file:/abs/path` (a warm start; its content hash is recorded beside it)."""
        if self.kind == "imagenet":
            return f"{type(self.member).__name__}.{self.member.name}"
        return "none" if self.kind == "none" else f"file:{self.path}"


@functools.lru_cache(maxsize=32)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str) -> str:
    """The file's SHA-256, computed once per version of the file in a process (a run reads it several times)."""
    stat = os.stat(path)
    return _file_sha256(os.path.abspath(path), stat.st_size, stat.st_mtime_ns)


_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")  # torch.hub's own rule: the hash prefix between "-" and the suffix


def torchvision_file_names(spec: BackboneSpec) -> dict[str, object]:
    """File name -> weights member, for the files torchvision downloads for this backbone (`resnet50-11ad3fa6.pth`)."""
    if spec.weights_enum is None:
        return {}
    return {os.path.basename(urlparse(member.url).path): member for member in spec.weights_enum
            if member.name in _members(spec)}


@functools.lru_cache(maxsize=32)
def _warn_once(text: str) -> None:
    print(f"warning: {text}", flush=True)


def _recognise(spec: BackboneSpec, path: str) -> ResolvedWeights:
    """A file given by path: torchvision's own file of a weights version when its name is that file's and its
    SHA-256 starts with the prefix torchvision put in the name (as torch.hub checks a download); any other file,
    a renamed or an altered one included, is a warm start, recorded with its content hash."""
    name = os.path.basename(path)
    member = torchvision_file_names(spec).get(name)
    digest = file_sha256(path) if os.path.isfile(path) else None
    if member is not None and digest is not None:
        expected = _HASH_IN_NAME.search(name)
        if expected and digest.startswith(expected.group(1)):
            return ResolvedWeights("imagenet", member=member, path=path, sha256=digest)
        _warn_once(f"{path} is named like torchvision's {type(member).__name__}.{member.name} file, "
                   f"but its SHA-256 starts {digest[:len(expected.group(1)) if expected else 8]}, "
                   f"not {expected.group(1) if expected else '?'}: trained as a warm start from "
                   "this file, not as those ImageNet weights")
    return ResolvedWeights("file", path=path, sha256=digest)


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
        path = os.path.abspath(weights)
        return ResolvedWeights("file", path=path, sha256=file_sha256(path) if os.path.isfile(path) else None)
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
    return _recognise(spec, os.path.abspath(weights))


SIDECAR_SUFFIX = ".json"  # FILE.json beside a warm start's FILE: how its images were normalised (and sized)
SCRATCH_RESIZE_RATIO = (256, 224)  # the scratch CNN resizes like the ImageNet models, so one pipeline serves all


@dataclass(frozen=True)
class InputGeometry:
    """The preprocessing a start implies before any size is chosen, and where its normalisation comes from."""

    base: Preprocessing
    start: str  # "imagenet" (the weights' own normalisation), "none", "file" or "scratch"
    # in words, for the run's note: "ResNet50_Weights.IMAGENET1K_V2", "recorded by the run that wrote X", ...
    source: str
    default_size: int  # the training size when none is given: the weights' own crop (or the one a warm start recorded)


def input_geometry(name: str, weights: str = "imagenet", scratch_size: int = 224) -> InputGeometry:
    """Crop, resize, mean/std and interpolation a start implies, read from its weights' metadata (pitfall 10).

    A run's checkpoint (a warm start) sees images as that run did: the preprocessing it recorded, else the ImageNet
    weights it started from. Another file uses the mean/std of its sidecar FILE.json when there is one, else the
    default weights' metadata (the architecture was designed for it: Inception v3 at 299 px, EfficientNetV2-S at
    384 px); random init uses the default weights' metadata too.
    """
    spec = get_spec(name)
    resolved = resolve_weights(spec, weights)
    if spec.is_scratch:
        resize, crop = SCRATCH_RESIZE_RATIO
        base = sized(Preprocessing(crop, resize, IMAGENET_MEAN, IMAGENET_STD, "bilinear"), scratch_size)
        return _with_sidecar(
            InputGeometry(base, "scratch", "ImageNet's mean/std (the scratch CNN's default)", scratch_size), resolved)
    if resolved.kind == "imagenet":
        return _from_member(resolved.member, "imagenet", f"{type(resolved.member).__name__}.{resolved.member.name}")
    default = spec.weights_enum[spec.default_weights]
    if resolved.kind == "none":
        return _from_member(default, "none",
                            f"{type(default).__name__}.{default.name} (the architecture's ImageNet metadata)")
    recorded, origin = _origin(spec, resolved.path)
    if recorded is not None:  # the run that wrote it recorded what it saw: also through a chain of warm starts
        return InputGeometry(recorded, "file", f"recorded by the run that wrote {resolved.path}", recorded.crop_size)
    if origin is not None:
        return _from_member(origin, "file",
                            f"{type(origin).__name__}.{origin.name}, which {resolved.path} started from")
    fallback = _from_member(default, "file",
                            f"{type(default).__name__}.{default.name} (the architecture's ImageNet metadata; pass "
                            f"--mean/--std or a {os.path.basename(resolved.path)}{SIDECAR_SUFFIX} beside the file if "
                            "it was trained on other inputs)")
    return _with_sidecar(fallback, resolved)


def _from_member(member, start: str, source: str) -> InputGeometry:
    preset = member.transforms()
    base = Preprocessing(
        crop_size=int(preset.crop_size[0]),
        resize_size=int(preset.resize_size[0]),
        mean=tuple(float(v) for v in preset.mean),
        std=tuple(float(v) for v in preset.std),
        interpolation=preset.interpolation.value,
    )
    return InputGeometry(base, start, source, base.crop_size)


def _with_sidecar(geometry: InputGeometry, resolved: ResolvedWeights) -> InputGeometry:
    """A user's own file may say how it was trained: FILE.json with mean, std and optionally input_size."""
    if resolved.kind != "file":
        return geometry
    sidecar = resolved.path + SIDECAR_SUFFIX
    if not os.path.isfile(sidecar):
        return geometry
    try:
        with open(sidecar, "rb") as handle:
            values = json.loads(handle.read(65536))
        if not isinstance(values, dict) or set(values) - {"mean", "std", "input_size"}:
            raise ValueError("expected a mapping of mean, std and optionally input_size")
        mean = _triple(values.get("mean", geometry.base.mean), low=0.0, high=1.0)
        std = _triple(values.get("std", geometry.base.std), low=1e-6, high=10.0)
        size = values.get("input_size", geometry.default_size)
        if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= 1024:
            raise ValueError(f"input_size {size!r} must be a whole number of pixels in 16..1024")
    except (OSError, ValueError) as exc:
        raise UserError(f"sidecar {sidecar} cannot be read ({_first_line(exc)}): write "
                        f'{{"mean": [r, g, b], "std": [r, g, b], "input_size": N}}, or remove it') from None
    base = replace(geometry.base, mean=mean, std=std)
    return InputGeometry(base, geometry.start, sidecar, size)


def _triple(value, low: float, high: float) -> tuple[float, float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and low <= v <= high for v in value):
        raise ValueError(f"{value!r} must be three numbers in {low:g}..{high:g}")
    return tuple(float(v) for v in value)


def sized(base: Preprocessing, size: int | None) -> Preprocessing:
    """`base` at a crop of `size` px, resized in the weights' own resize/crop ratio (256/224 style; 232/224 for
    ResNet-50 V2): the weights' exact values at their own size, and size x ratio (rounded) at any other."""
    if size is None or size == base.crop_size:
        return base
    return replace(base, crop_size=size, resize_size=round(size * base.resize_size / base.crop_size))


def preprocessing_for(name: str, weights: str = "imagenet", scratch: ScratchCNNConfig | None = None,
                      size: int | None = None,
                      mean: tuple[float, float, float] | None = None,
                      std: tuple[float, float, float] | None = None) -> Preprocessing:
    """The preprocessing of a start (see `input_geometry`) at a crop of `size` px (default: its own), with mean/std
    given by the user where the start has no say of its own."""
    geometry = input_geometry(name, weights, (scratch or ScratchCNNConfig()).input_size)
    base = replace(geometry.base, mean=tuple(mean) if mean else geometry.base.mean,
                   std=tuple(std) if std else geometry.base.std)
    return sized(base, size if size is not None else geometry.default_size)


def build_model(name: str, num_classes: int, weights: str = "imagenet", aux_loss_weight: float | None = None,
                bn_mode: str = "freeze", scratch: ScratchCNNConfig | None = None, input_size: int | None = None,
                classes: tuple[str, ...] | None = None) -> StagedModel:
    """A StagedModel with `num_classes` outputs, every stage trainable until a plan is applied.

    `aux_loss_weight=None` takes the backbone's default (0 where it has no aux heads); 0 disables aux heads.
    `scratch` configures the scratch CNN (its input size included) and is ignored by the pretrained backbones.
    `input_size` adapts a backbone whose shapes depend on it (ViT's position embeddings, interpolated from the
    weights' grid); the others take any size through adaptive pooling. `classes` (the run's, in label order) decides
    whether a weights file's head is this task's: one trained on other classes is trained afresh.
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
            _load_imagenet(spec, net, resolved.member, resolved.path)
        elif base:  # a run checkpoint without its frozen stages: they are these ImageNet weights, untouched
            try:
                _load_imagenet(spec, net, _base_member(spec, base, resolved.path), base.get("file"))
            except UserError as error:
                raise UserError(f"{resolved.path} holds only the stages its run trained; the frozen ones are "
                                f"{base['weights']}: {str(error).split('; ')[0]}; put that file there, or train with "
                                f"--checkpoint_frozen_stages=true for self-contained checkpoints") from None
            _resize(spec, net, base.get("input_size"))  # as the run that wrote the file had them
        for path in head_linear_paths(spec):
            _replace_linear(net, path, num_classes)
    if resolved.kind == "file":
        from_base = set(base["keys"]) if base and not spec.is_scratch else set()
        fingerprint = base.get("fingerprint") if from_base else None
        if fingerprint and frozen_fingerprint(net.state_dict(), from_base) != fingerprint:
            raise UserError(f"{resolved.path} was trained on other {base['weights']} values than the file in "
                            f"{os.path.join(torch.hub.get_dir(), 'checkpoints')}: put the original file there (delete "
                            f"this one and it downloads again), or train with --checkpoint_frozen_stages=true")
        if not spec.is_scratch and spec.input_size_of_state:
            _resize(spec, net, spec.input_size_of_state(state))  # the file's shapes first, then this run's size
        _load_file(spec, net, resolved.path, state, from_base, _recorded_classes(resolved.path), classes)
    if not spec.is_scratch:
        _resize(spec, net, input_size)
    return StagedModel(spec, net, num_classes, resolved.version, aux_loss_weight, bn_mode, resolved.sha256,
                       resolved.path if resolved.kind == "imagenet" else None)


def _resize(spec: BackboneSpec, net: nn.Module, size: int | None) -> None:
    if size is None or spec.resize_net is None:
        return
    problem = spec.input_size_problem(size)
    if problem:
        raise UserError(problem)
    spec.resize_net(net, size)


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


def _load_imagenet(spec: BackboneSpec, net: nn.Module, member, given: str | None = None) -> None:
    """Load the 1000-class ImageNet weights strictly: from torchvision's own file
    of them given by path (an offline notebook's attached copy, recognised by
    name and hash), else from torchvision's hub cache (downloading if absent)."""
    filename = os.path.basename(urlparse(member.url).path)
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    cached = os.path.join(folder, filename)
    if given and os.path.isfile(given) and _recognise(spec, given).member is member:
        cached, was_cached = given, True
    else:
        given, was_cached = None, os.path.exists(cached)
    try:
        if given:
            state = torch.load(given, map_location="cpu", weights_only=True)
        else:
            state = member.get_state_dict(progress=True, check_hash=True)
    except _READ_ERRORS as error:
        if was_cached:
            raise UserError(f"cannot read the cached ImageNet weights {cached} ({_first_line(error)}); "
                            f"delete it so it downloads again, or use --weights=none or --weights=PATH") from None
        raise UserError(f"ImageNet weights {filename} for {spec.name} are not in {folder} and could not be "
                        f"downloaded ({_first_line(error)}); put the file there (from {member.url}), or use "
                        f"--weights=PATH to weights of your own (offline, sweeps/demo_offline.yaml shows how); "
                        f"--weights=none is random initialisation, for --strategy=full only") from None
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
        if not (isinstance(base, Mapping) and isinstance(base.get("weights"), str)
                and isinstance(base.get("keys"), list)):
            raise UserError(
                f"weights file {path} has a malformed {FROZEN_BASE} entry; use the run's checkpoint as written")
        identity = obj.get("identity")
        recorded = Preprocessing.from_record(identity.get("preprocessing")) if isinstance(identity, Mapping) else None
        base = {"weights": base["weights"], "keys": [_strip_net(key) for key in base["keys"]],
                "fingerprint": base.get("fingerprint"),
                # torchvision's file, given by path
                "file": base.get("file") if isinstance(base.get("file"), str) else None,
                # the frozen stages' shapes follow the run's size
                "input_size": recorded.crop_size if recorded else None}
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


def _recorded_classes(path: str) -> list[str] | None:
    """The classes a run of this harness recorded in its checkpoint, in label order; None for other files."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # mapped: no tensor is read
    except Exception:
        return None
    identity = obj.get("identity") if isinstance(obj, Mapping) else None
    classes = identity.get("classes") if isinstance(identity, Mapping) else None
    return list(classes) if isinstance(classes, list) else None


def _load_file(spec: BackboneSpec, net: nn.Module, path: str, state: dict[str, torch.Tensor], from_base: set[str],
               recorded: list[str] | None = None, classes: tuple[str, ...] | None = None) -> None:
    """Load a local checkpoint: every non-head tensor strictly (`from_base`: keys already loaded from the
    ImageNet weights the checkpoint names); head tensors only where their shapes fit and, where the file says which
    classes it was trained on, only for those same classes in the same order (a head for other classes with the
    same count would map every image to an unrelated class)."""
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
    other_classes = recorded is not None and classes is not None and list(recorded) != list(classes)
    loaded_head = False
    for linear in head_linear_paths(spec):
        # A head saved for another number of classes (e.g. ImageNet's 1000) stays freshly initialised.
        keys = [key for key in expected if key.startswith(f"{linear}.")]
        if all(key in state and state[key].shape == expected[key].shape for key in keys) and not other_classes:
            loadable.update({key: state[key] for key in keys})
            loaded_head = True
    net.load_state_dict(loadable, strict=False)
    if other_classes and all(f"{spec.head_linear}.{kind}" in state for kind in ("weight", "bias")):
        print(f"note: the head of {path} was trained on other classes "
              f"({', '.join(recorded[:4])}{' ...' if len(recorded) > 4 else ''}): this run trains a new one",
              flush=True)
    elif loaded_head and recorded is None and classes is not None:
        print(f"note: the head of {path} has this run's {len(classes)} outputs and is kept, its classes taken to be "
              f"this run's in label order ({', '.join(classes[:4])}{' ...' if len(classes) > 4 else ''}); a head for "
              f"other classes would mislabel every image: then remove its {spec.head_linear}.* tensors from the file, "
              "and a new head is trained", flush=True)
