"""The registered backbones: for each, its builder, weights, and its own top-level blocks as named stages.

Each stage list follows the architecture's forward method exactly (a test checks the staged forward against
torchvision's), so freezing "the last k stages" means the same kind of block on every model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from common.lazy import LazyAttribute, lazy_module
from models.registry import AuxHead, BackboneSpec, Stage, register
from scratch_cnn.config import INPUT_SIZE as SCRATCH_INPUT

if TYPE_CHECKING:
    from torch import Tensor, nn

# Imported when a model is built, not here: `--help`, `check` and `report` read the entries' names and stages only.
torch, tvm = lazy_module("torch"), lazy_module("torchvision.models")
build_scratch_cnn = LazyAttribute("scratch_cnn.model", "build_scratch_cnn")

Step = str | Callable[["nn.Module", "Tensor"], "Tensor"]


def _flatten(net: nn.Module, x: Tensor) -> Tensor:
    return torch.flatten(x, 1)


def _transform_input(net: nn.Module, x: Tensor) -> Tensor:
    # Inception/GoogLeNet weights were trained on (x - 0.5) / 0.5 inputs; this remaps ImageNet-normalised inputs.
    return net._transform_input(x)


def _run_steps(steps: tuple[Step, ...], net: nn.Module, x: Tensor) -> Tensor:
    for step in steps:
        x = net.get_submodule(step)(x) if isinstance(step, str) else step(net, x)
    return x


def _stage(name: str, *steps: Step) -> Stage:
    """A stage that runs `steps` in order: module paths (which it owns) or functions of (net, x)."""
    owned = tuple(step for step in steps if isinstance(step, str))
    return Stage(name, owned, partial(_run_steps, steps))


def _vit_positions(positions: Tensor, size: int, patch: int) -> Tensor:
    """Position embeddings for `size` px inputs, interpolated from those the net has (torchvision's own
    `interpolate_embeddings`: bicubic over the 2-D grid, the class token's entry kept)."""
    from torchvision.models.vision_transformer import interpolate_embeddings

    return interpolate_embeddings(size, patch, {"encoder.pos_embedding": positions})["encoder.pos_embedding"]


def _vit_resize(net: nn.Module, size: int) -> None:
    """Make a ViT take `size` px: its position embeddings become those of the new patch grid, for good."""
    if size == net.image_size:
        return
    net.encoder.pos_embedding = torch.nn.Parameter(
        _vit_positions(net.encoder.pos_embedding.detach(), size, net.patch_size))
    net.image_size, net.seq_length = size, net.encoder.pos_embedding.shape[1]


def _vit_state_size(state: dict) -> int | None:
    positions = state.get("encoder.pos_embedding")
    if positions is None or positions.dim() != 3:
        return None
    grid = math.isqrt(positions.shape[1] - 1)
    return grid * 16 if grid * grid == positions.shape[1] - 1 else None


def _vit_patch_embed(net: nn.Module, x: Tensor) -> Tensor:
    # torchvision's _process_input, for any multiple of the patch: evaluating at another size than the net was
    # trained at (FixRes) interpolates its position embeddings on the fly, as timm's dynamic image size does.
    n, _, height, width = x.shape
    x = net.conv_proj(x).reshape(n, net.hidden_dim, -1).permute(0, 2, 1)
    class_token = net.class_token.expand(n, -1, -1)
    x = torch.cat([class_token, x], dim=1)
    positions = net.encoder.pos_embedding
    if height != net.image_size or width != net.image_size:
        if height != width:
            raise ValueError(f"ViT inputs are square crops here, got {height}x{width}")
        positions = _vit_positions(positions, height, net.patch_size)
    return net.encoder.dropout(x + positions)


def _vit_head(net: nn.Module, x: Tensor) -> Tensor:
    return net.heads(x[:, 0])  # the class token carries the image representation


register(BackboneSpec(
    name="resnet18",
    native_sizes=(("IMAGENET1K_V1", 224),),
    build_net=partial(tvm.resnet18, weights=None),
    weights_enum=tvm.ResNet18_Weights,
    default_weights="IMAGENET1K_V1",
    stages=(
        _stage("stem", "conv1", "bn1", "relu", "maxpool"),
        *(_stage(f"layer{i}", f"layer{i}") for i in range(1, 5)),
        _stage("head", "avgpool", _flatten, "fc"),
    ),
    head_linear="fc",
    cpu_friendly=True,
    description="ResNet-18, 11.7 M parameters; only V1 ImageNet weights exist",
))

register(BackboneSpec(
    name="resnet50",
    native_sizes=(("IMAGENET1K_V1", 224), ("IMAGENET1K_V2", 224)),
    build_net=partial(tvm.resnet50, weights=None),
    weights_enum=tvm.ResNet50_Weights,
    default_weights="IMAGENET1K_V2",  # V2 (newer recipe) is about 4 points better top-1 than V1
    stages=(
        _stage("stem", "conv1", "bn1", "relu", "maxpool"),
        *(_stage(f"layer{i}", f"layer{i}") for i in range(1, 5)),
        _stage("head", "avgpool", _flatten, "fc"),
    ),
    head_linear="fc",
    description="ResNet-50, 25.6 M parameters; 'imagenet' means the V2 weights",
))

_VGG16_POOLS = (4, 9, 16, 23, 30)  # indices of the max-pools in vgg16.features; each ends a block
register(BackboneSpec(
    name="vgg16",
    native_sizes=(("IMAGENET1K_V1", 224),),
    build_net=partial(tvm.vgg16, weights=None),
    weights_enum=tvm.VGG16_Weights,
    default_weights="IMAGENET1K_V1",
    weights_choices=("IMAGENET1K_V1",),  # IMAGENET1K_FEATURES has NaN classifier weights
    stages=(
        *(
            _stage(f"block{b + 1}", *(f"features.{i}" for i in range(start, end + 1)))
            for b, (start, end) in enumerate(zip((0,) + tuple(p + 1 for p in _VGG16_POOLS[:-1]), _VGG16_POOLS))
        ),
        _stage("fc6", "avgpool", _flatten, "classifier.0", "classifier.1", "classifier.2"),
        _stage("fc7", "classifier.3", "classifier.4", "classifier.5"),
        _stage("head", "classifier.6"),
    ),
    head_linear="classifier.6",
    description="VGG-16, 138 M parameters (most of them in fc6/fc7)",
    batch_norm=False,
    norm_layers=False,
    min_input_size=32,  # five 2x max-pools: 31 px leaves no pixel for the last
))

_INCEPTION_MIXED = ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c")
register(BackboneSpec(
    name="inception_v3",
    native_sizes=(("IMAGENET1K_V1", 299),),
    # transform_input is the setting of the pretrained weights; kept whatever the weights, so checkpoints agree.
    build_net=partial(tvm.inception_v3, weights=None, aux_logits=True, init_weights=False, transform_input=True),
    weights_enum=tvm.Inception_V3_Weights,
    default_weights="IMAGENET1K_V1",
    stages=(
        _stage("stem", _transform_input, "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1",
               "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2"),
        *(_stage(f"mixed_{m}", f"Mixed_{m}") for m in _INCEPTION_MIXED),
        _stage("head", "avgpool", "dropout", _flatten, "fc"),
    ),
    head_linear="fc",
    # The aux head pools Mixed_6e's 17x17 map (at 299 px) with a 5x5 kernel, stride 3, then convolves 5x5: below
    # 299 px its map is too small. The net alone takes 75 px.
    aux_heads=(AuxHead("AuxLogits", after_stage="mixed_6e", final_linear="AuxLogits.fc", default_loss_weight=0.4,
                       min_input_size=299),),
    description="Inception v3, 27 M parameters, 299 px input; auxiliary classifier after Mixed_6e",
    min_input_size=75,
))

register(BackboneSpec(
    name="googlenet",
    native_sizes=(("IMAGENET1K_V1", 224),),
    build_net=partial(tvm.googlenet, weights=None, aux_logits=True, init_weights=False, transform_input=True),
    weights_enum=tvm.GoogLeNet_Weights,
    default_weights="IMAGENET1K_V1",
    stages=(
        _stage("stem", _transform_input, "conv1", "maxpool1", "conv2", "conv3", "maxpool2"),
        _stage("inception3a", "inception3a"),
        _stage("inception3b", "inception3b"),
        _stage("inception4a", "maxpool3", "inception4a"),
        *(_stage(f"inception4{c}", f"inception4{c}") for c in "bcde"),
        _stage("inception5a", "maxpool4", "inception5a"),
        _stage("inception5b", "inception5b"),
        _stage("head", "avgpool", _flatten, "dropout", "fc"),
    ),
    head_linear="fc",
    aux_heads=(
        AuxHead("aux1", after_stage="inception4a", final_linear="aux1.fc2", default_loss_weight=0.3),
        AuxHead("aux2", after_stage="inception4d", final_linear="aux2.fc2", default_loss_weight=0.3),
    ),
    description="GoogLeNet (Inception v1), 6.6 M parameters; auxiliary classifiers after inception4a and 4d",
    min_input_size=15,  # its padded max-pools (ceil mode) end on a 0 px map below
))

register(BackboneSpec(
    name="efficientnet_v2_s",
    native_sizes=(("IMAGENET1K_V1", 384),),
    build_net=partial(tvm.efficientnet_v2_s, weights=None),
    weights_enum=tvm.EfficientNet_V2_S_Weights,
    default_weights="IMAGENET1K_V1",
    stages=(
        _stage("stem", "features.0"),
        *(_stage(f"stage{i}", f"features.{i}") for i in range(1, 7)),
        _stage("top_conv", "features.7"),
        _stage("head", "avgpool", _flatten, "classifier"),
    ),
    head_linear="classifier.1",
    description="EfficientNetV2-S, 21.5 M parameters, 384 px input",
))

register(BackboneSpec(
    name="vit_b_16",
    native_sizes=(("IMAGENET1K_V1", 224), ("IMAGENET1K_SWAG_LINEAR_V1", 224)),
    build_net=partial(tvm.vit_b_16, weights=None),
    weights_enum=tvm.ViT_B_16_Weights,
    default_weights="IMAGENET1K_V1",
    # SWAG end-to-end weights need a 384 px position embedding; the linear-probe SWAG ones fit 224 px.
    weights_choices=("IMAGENET1K_V1", "IMAGENET1K_SWAG_LINEAR_V1"),
    stages=(
        Stage("patch_embed", ("conv_proj", "class_token", "encoder.pos_embedding", "encoder.dropout"),
              _vit_patch_embed),
        *(_stage(f"encoder_{i}", f"encoder.layers.encoder_layer_{i}") for i in range(11)),
        # The final LayerNorm belongs to the last block: last_k with k_layers=1 trains a block, not 1.5 K
        # norm parameters (which would be a linear probe in all but name).
        _stage("encoder_11", "encoder.layers.encoder_layer_11", "encoder.ln"),
        Stage("head", ("heads",), _vit_head),
    ),
    head_linear="heads.head",
    description="ViT-B/16, 86.6 M parameters, 224 px input, 12 encoder blocks",
    batch_norm=False,
    min_input_size=16,  # one patch
    input_multiple=16,  # the patch: a size between two grids would silently drop the last row of pixels
    resize_net=_vit_resize,
    input_size_of_state=_vit_state_size,
    size_dependent_keys=("net.encoder.pos_embedding",),
))

register(BackboneSpec(
    name="mobilenet_v3_small",
    native_sizes=(("IMAGENET1K_V1", 224),),
    build_net=partial(tvm.mobilenet_v3_small, weights=None),
    weights_enum=tvm.MobileNet_V3_Small_Weights,
    default_weights="IMAGENET1K_V1",
    stages=(
        _stage("stem", "features.0"),
        *(_stage(f"block{i}", f"features.{i}") for i in range(1, 12)),
        _stage("top_conv", "features.12"),
        _stage("pre_logits", "avgpool", _flatten, "classifier.0", "classifier.1", "classifier.2"),
        _stage("head", "classifier.3"),
    ),
    head_linear="classifier.3",
    cpu_friendly=True,
    description="MobileNetV3-Small, 2.5 M parameters; the cheapest pretrained backbone",
))

register(BackboneSpec(
    name="scratch_cnn",
    build_net=build_scratch_cnn,
    weights_enum=None,
    default_weights=None,
    stages=(
        *(_stage(f"block{i}", f"block{i}") for i in range(1, 6)),
        _stage("dense", "dense"),
        _stage("head", "head"),
    ),
    head_linear="head",
    cpu_friendly=True,
    description="the Part A CNN trained from scratch (no pretrained weights: every strategy trains everything)",
    min_input_size=SCRATCH_INPUT.low,  # five 2x max-pools
    sized_by_input=True,
))
