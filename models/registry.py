"""The backbone registry: what a model is (builder, weights enum, named stages, head location), one entry each.

Freezing, optimizer groups and head replacement all read these entries, so they mean the same thing on every
architecture; nothing downstream indexes `children()` or matches parameter-name substrings (pitfalls 4, 5, 14).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the registry is read without importing torch
    from torch import Tensor, nn

from common.errors import UserError
from common.parsing import nearest


@dataclass(frozen=True)
class Stage:
    """One named block of a model, from stem to head.

    `modules` are dotted paths inside the underlying net whose parameters and buffers belong to this stage; a
    path may also name a bare `nn.Parameter` (ViT's `class_token`). `forward(net, x)` runs this stage on the
    previous stage's output.
    """

    name: str
    modules: tuple[str, ...]
    forward: Callable[[nn.Module, Tensor], Tensor]


@dataclass(frozen=True)
class AuxHead:
    """An auxiliary classifier fed by a stage's output; trained only while that stage and the head train."""

    module: str
    after_stage: str
    final_linear: str
    default_loss_weight: float
    min_input_size: int = 1  # the smallest training input whose feature map this head can still take


@dataclass(frozen=True)
class BackboneSpec:
    """Everything the harness needs to know about one architecture.

    `build_net()` builds the 1000-class torchvision net with random init and no download; for the scratch CNN
    (`weights_enum is None`) it is `build_net(config, num_classes)`. `default_weights` is the explicit enum member
    that `weights="imagenet"` means (never "DEFAULT", whose meaning changes between torchvision releases).
    `weights_choices` limits which members may be named (empty: all), for members that do not fit the stages
    as built (ViT SWAG end-to-end needs 384 px, VGG's features-only file has NaN classifier weights).
    """

    name: str
    build_net: Callable[..., nn.Module]
    weights_enum: type | None
    default_weights: str | None
    stages: tuple[Stage, ...]
    head_linear: str
    aux_heads: tuple[AuxHead, ...] = ()
    cpu_friendly: bool = False
    description: str = ""
    weights_choices: tuple[str, ...] = ()
    batch_norm: bool = True  # has BatchNorm layers (bn_mode matters); VGG-16 has none, ViT only LayerNorm
    norm_layers: bool = True  # has norm layers of any kind in its backbone (norm_and_head trains them); VGG-16 has none
    # Input sizes the net can take: at least `min_input_size` px (smaller maps vanish in its poolings), and a
    # multiple of `input_multiple` (ViT's patch). `resize_net(net, size)` adapts a built net to another size
    # (ViT: its position embeddings); None where adaptive pooling takes any size as it is.
    min_input_size: int = 1
    input_multiple: int = 1
    resize_net: Callable[[nn.Module, int], None] | None = None
    # The input size a state dict was saved for, where its shapes say (ViT: the position embeddings' grid).
    input_size_of_state: Callable[[dict], int | None] | None = None
    # Built for one input size (a dense layer over the flattened last map): it evaluates at that size only.
    sized_by_input: bool = False
    # state_dict keys (under "net.") whose values a size other
    # than the weights' own changes (ViT's interpolated position
    # embeddings): never left out of a checkpoint as "the ImageNet weights", since they no longer are.
    size_dependent_keys: tuple[str, ...] = ()
    # (weights member, its crop size in px) for every member a run may name: the default input_size, read without
    # importing torchvision (`check` validates thousands of configs); a test holds it to the weights' own transforms().
    native_sizes: tuple[tuple[str, int], ...] = ()

    def __post_init__(self):
        names = [stage.name for stage in self.stages]
        if not names or names[-1] != "head":
            raise ValueError(f"{self.name}: the last stage must be named 'head', got {names}")
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: stage names repeat: {names}")
        for aux in self.aux_heads:
            if aux.after_stage not in names[:-1]:
                raise ValueError(f"{self.name}: aux head {aux.module} follows unknown stage {aux.after_stage!r}")
        if (self.weights_enum is None) != (self.default_weights is None):
            raise ValueError(f"{self.name}: weights_enum and default_weights go together")

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(stage.name for stage in self.stages)

    @property
    def aux_min_input_size(self) -> int:
        """The smallest training input every aux head can take (1 without aux heads)."""
        return max((aux.min_input_size for aux in self.aux_heads), default=1)

    def native_size(self, weights: str) -> int | None:
        """The crop size of the ImageNet weights `weights` names ("imagenet", a member name, or "none": the default
        member's, the size the architecture was designed for); None for anything else (a file)."""
        sizes = dict(self.native_sizes)
        if weights in ("imagenet", "none"):
            return sizes.get(self.default_weights or "")
        return sizes.get(weights)

    @property
    def is_scratch(self) -> bool:
        """No pretrained weights exist, so every freezing strategy means training everything."""
        return self.weights_enum is None

    def input_size_problem(self, size: int, what: str = "input_size", aux_heads: bool = False) -> str | None:
        """Why this net cannot take `size` px inputs, in words with the fix; None when it can. `aux_heads`: the aux
        classifiers run on it (training with an aux loss), and they need larger feature maps than the net."""
        if size % self.input_multiple:
            below, above = size - size % self.input_multiple, size - size % self.input_multiple + self.input_multiple
            return (f"{what}={size} is not a multiple of {self.name}'s {self.input_multiple} px patch: use "
                    f"{below or above} or {above}")
        if size < self.min_input_size:
            return (f"{what}={size} is below {self.name}'s minimum of {self.min_input_size} px (its feature maps "
                    f"vanish): use {what}>={self.min_input_size}")
        needs = self.aux_min_input_size if aux_heads else 1
        if size < needs:
            return (f"{what}={size} is below the {needs} px that {self.name}'s auxiliary classifier needs: use "
                    f"{what}>={needs}, or --aux_loss_weight=0 to train without it")
        return None


_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def backbone_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_spec(name: str) -> BackboneSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        valid = ", ".join(_REGISTRY)
        raise UserError(f"unknown model {name!r}{nearest(name, _REGISTRY)}; choose one of: {valid}") from None
