"""Backbone registry, staged forward, head replacement, weights resolution and loading, preprocessing, scratch CNN.

Parametrized over the registry, so a new backbone is tested without a new test; heavy backbones are `slow`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.vgg import cfgs as vgg_configs, make_layers as vgg_layers

from common.errors import UserError
from model_helpers import NUM_CLASSES, build, each_backbone, every_backbone, images
from models import (
    AuxHead,
    BackboneSpec,
    Stage,
    StagedModel,
    TrainPlan,
    backbone_names,
    build_model,
    describe_models,
    get_spec,
    preprocessing_for,
    resolve_weights,
)
from models.freezing import FreezeOptions, plan_for_epoch, resolve_strategy
from models.weights import IMAGENET_MEAN, IMAGENET_STD
from scratch_cnn import ScratchCNNConfig, build_scratch_cnn

REPO = Path(__file__).resolve().parents[1]


# ---- registry and structure ----------------------------------------------------------------------


def test_unknown_model_names_valid_ones_and_nearest():
    with pytest.raises(UserError) as error:
        get_spec("vit_b16")
    message = str(error.value)
    assert "'vit_b16'" in message and "did you mean 'vit_b_16'" in message and "resnet50" in message
    assert "\n" not in message


def test_registry_has_the_designed_backbones():
    assert set(backbone_names()) >= {"resnet18", "resnet50", "vgg16", "inception_v3", "googlenet",
                                     "efficientnet_v2_s", "vit_b_16", "mobilenet_v3_small", "scratch_cnn"}
    assert get_spec("resnet50").default_weights == "IMAGENET1K_V2"
    for name in backbone_names():
        assert get_spec(name).default_weights != "DEFAULT"


def _spec(stage_names, aux_after=None) -> BackboneSpec:
    stages = tuple(Stage(name, (name,), lambda net, x: x) for name in stage_names)
    aux = (AuxHead("aux", after_stage=aux_after, final_linear="aux.fc", default_loss_weight=0.3),) if aux_after else ()
    return BackboneSpec(name="bad", build_net=nn.Module, weights_enum=None, default_weights=None, stages=stages,
                        head_linear="head", aux_heads=aux)


def test_a_backbone_entry_whose_stages_cannot_be_counted_is_refused_at_registration():
    """Strategies count stages by name below a final 'head'; an entry that breaks that fails on import, not in a run."""
    assert _spec(("stem", "body", "head"), aux_after="stem").stage_names == ("stem", "body", "head")
    with pytest.raises(ValueError, match="last stage must be named 'head'"):
        _spec(("stem", "body"))
    with pytest.raises(ValueError, match="repeat"):
        _spec(("stem", "body", "body", "head"))
    for stage in ("nowhere", "head"):  # an aux head must hang off a backbone stage
        with pytest.raises(ValueError, match="aux head"):
            _spec(("stem", "body", "head"), aux_after=stage)


@pytest.mark.parametrize("name", every_backbone())
def test_every_parameter_and_module_belongs_to_exactly_one_stage(name):
    model = build(name)
    owners: dict[str, list[str]] = {}
    for stage in model.stage_names:
        for param_name, _ in model.stage_parameters(stage):
            owners.setdefault(param_name, []).append(stage)
    all_names = [n for n, _ in model.named_parameters()]
    assert sorted(owners) == sorted(all_names), "parameters outside every stage"
    assert {n: s for n, s in owners.items() if len(s) > 1} == {}, "parameters in two stages"

    # Leaf modules (dropout, pooling, norms) too: one left out would keep train-mode behaviour when frozen.
    spec = model.spec
    paths = [(s.name, p) for s in spec.stages for p in s.modules] + [("head", a.module) for a in spec.aux_heads]
    for module_name, module in model.net.named_modules():
        if list(module.children()) or not module_name:
            continue
        holders = [stage for stage, p in paths if module_name == p or module_name.startswith(p + ".")]
        assert len(holders) == 1, f"{module_name} is in stages {holders}"
    assert model.stage_names[-1] == "head"
    if spec.weights_enum is not None:  # the flag that lets a sweep fold bn_mode away for nets without BatchNorm
        assert spec.batch_norm == any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


# Cheap builds; googlenet has aux heads.
STATE_KEY_BACKBONES = ["resnet18", "mobilenet_v3_small", "googlenet", "scratch_cnn"]


@pytest.mark.parametrize("name", STATE_KEY_BACKBONES)
def test_stage_state_keys_are_exactly_each_stages_parameters_and_buffers(name):
    """Checkpoints leave out the state keys of the frozen stages: a key claimed by the wrong stage would be lost
    (mobilenet's block1 is features.1 and must not claim features.10..12, which train under last_k k_layers=3)."""
    model = build(name)
    aux_prefixes = tuple(f"net.{aux.module}." for aux in model.spec.aux_heads)
    aux_keys = {key for key in model.state_dict() if aux_prefixes and key.startswith(aux_prefixes)}
    expected = {stage.name: {f"net.{path}.{key}" for path in stage.modules
                             for key in model.net.get_submodule(path).state_dict()} for stage in model.spec.stages}
    for stage in model.stage_names:
        assert set(model.stage_state_keys([stage])) == expected[stage], stage
    assert set(model.stage_state_keys(model.stage_names)) == set(model.state_dict()) - aux_keys
    frozen = model.stage_names[:3]
    assert set(model.stage_state_keys(frozen)) == set().union(*(expected[s] for s in frozen))


def test_vgg16_blocks_are_its_five_conv_blocks_each_closed_by_a_max_pool():
    """k_layers counts VGG-16's conv blocks (2, 2, 3, 3, 3 convs): checked on torchvision's own VGG-16 conv
    layout (`features` only, so the 120 M classifier weights are not built; the full forward check is slow)."""
    holder = nn.Module()
    holder.features = vgg_layers(vgg_configs["D"])
    blocks = [stage for stage in get_spec("vgg16").stages if stage.name.startswith("block")]
    assert [stage.name for stage in blocks] == [f"block{i}" for i in range(1, 6)]
    for stage, convs in zip(blocks, (2, 2, 3, 3, 3)):
        modules = [holder.get_submodule(path) for path in stage.modules]
        assert sum(isinstance(m, nn.Conv2d) for m in modules) == convs, stage.name
        assert isinstance(modules[-1], nn.MaxPool2d), stage.name
        assert not any(isinstance(m, nn.MaxPool2d) for m in modules[:-1]), stage.name
    owned = [path for stage in blocks for path in stage.modules]
    assert owned == [f"features.{i}" for i in range(len(holder.features))]  # in order, none left out


def test_vit_stages_match_torchvisions_forward_on_a_tiny_vision_transformer():
    """The ViT stages are functions of torchvision's VisionTransformer (patch embedding with class token and
    position embedding, encoder blocks, class-token head): checked on a 12-block ViT eight channels wide, since
    the ViT-B/16 forward check is slow on a CPU."""
    net = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=12, num_heads=2,
                                               hidden_dim=8, mlp_dim=16, num_classes=NUM_CLASSES)
    with torch.no_grad():  # torchvision starts the class token and the head at zero, which would hide a wrong token
        generator = torch.Generator().manual_seed(1)
        for tensor in (net.class_token, net.heads.head.weight):
            tensor.copy_(torch.randn(tensor.shape, generator=generator))
    model = StagedModel(get_spec("vit_b_16"), net, NUM_CLASSES, "none", aux_loss_weight=0.0).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = net(x)
        assert torch.allclose(model(x), reference, atol=1e-6)
        assert torch.allclose(model(model.forward_range(x, 0, 1), start=1), reference, atol=1e-6)


@pytest.mark.parametrize("name, size", [("googlenet", 64), ("inception_v3", 80)])
def test_inception_stems_remap_imagenet_normalised_input_as_their_weights_expect(name, size):
    """GoogLeNet's and Inception v3's ImageNet weights were trained on (x - 0.5) / 0.5 inputs: torchvision builds
    them with transform_input=True, and the staged stem must remap ImageNet-normalised input as the net's own
    forward does (the full staged-forward check of these nets is slow; this one runs in eval at a small size)."""
    model = build(name).eval()
    assert model.net.transform_input
    first_conv = model.net.get_submodule(model.spec.stages[0].modules[0])
    seen = []
    hook = first_conv.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            staged, reference = model(x), model.net(x)
    finally:
        hook.remove()
    assert torch.allclose(staged, reference, atol=1e-5, rtol=1e-4)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    remapped = x * (std / 0.5) + (mean - 0.5) / 0.5  # back to the pixels in [0, 1], then to (x - 0.5) / 0.5
    assert len(seen) == 2 and all(torch.allclose(s, remapped, atol=1e-6) for s in seen)


@pytest.mark.parametrize("name", each_backbone())
def test_output_shapes_in_train_and_eval(name):
    model = build(name)
    x = images(name)
    model.train()
    out = model(x)
    if model.spec.aux_heads:
        logits, aux = out
        assert len(aux) == len(model.spec.aux_heads)
        assert all(a.shape == (2, NUM_CLASSES) for a in aux)
    else:
        logits = out
    assert logits.shape == (2, NUM_CLASSES)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("name", each_backbone())
def test_staged_forward_equals_the_nets_own_forward(name):
    model = build(name).eval()
    x = images(name)
    n = len(model.stage_names)
    with torch.no_grad():
        reference = model.net(x)  # torchvision's forward (eval: logits only)
        assert torch.allclose(model(x), reference, atol=1e-5, rtol=1e-4)
        assert torch.allclose(model.forward_range(x, 0, n), reference, atol=1e-5, rtol=1e-4)
        prefixes = [x]  # the output of every stage, as the trainer's activation cache would hold it
        for k in range(n):
            prefixes.append(model.forward_range(prefixes[-1], k, k + 1))
        assert torch.equal(prefixes[-1], model.forward_range(x, 0, n))
        for k in sorted({1, n // 2, n - 1}):  # resuming from a cached stage output (each re-runs the rest)
            assert torch.allclose(model.forward_range(prefixes[k], k, n), reference, atol=1e-5, rtol=1e-4), k
            assert torch.allclose(model(prefixes[k], start=k), reference, atol=1e-5, rtol=1e-4), k


@pytest.mark.parametrize("name", every_backbone())
def test_head_and_aux_heads_are_replaced_for_num_classes(name):
    model = build(name)
    head = model.net.get_submodule(model.spec.head_linear)
    assert isinstance(head, nn.Linear) and head.out_features == NUM_CLASSES
    for aux in model.spec.aux_heads:
        assert model.net.get_submodule(aux.final_linear).out_features == NUM_CLASSES
    assert not [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 1000]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["inception_v3", "googlenet"])
def test_real_aux_heads_follow_the_plan(name):
    spec = get_spec(name)
    x = images(name)
    off = build(name, aux_loss_weight=0).train()
    assert isinstance(off(x), torch.Tensor)
    model = build(name).train()
    assert model.aux_loss_weight == spec.aux_heads[0].default_loss_weight
    model.apply_plan(plan_for_epoch(resolve_strategy("head_only"), model.stage_names, FreezeOptions(), 0))
    assert isinstance(model(x), torch.Tensor)  # the stages feeding the aux heads are frozen
    assert not any(p.requires_grad for aux in spec.aux_heads for _, p in model.aux_parameters(aux))
    model.apply_plan(TrainPlan(frozenset(model.stage_names)))
    logits, aux_logits = model(x)
    assert [a.shape for a in aux_logits] == [(2, NUM_CLASSES)] * len(spec.aux_heads)


# Where each aux head hangs, as torchvision's own forward has it (googlenet.py, inception.py in torchvision
# 0.29): aux head -> (our stage, the torchvision module whose output feeds it). Literal, not read from the registry.
AUX_FEEDS = {
    "googlenet": {"aux1": ("inception4a", "inception4a"), "aux2": ("inception4d", "inception4d")},
    "inception_v3": {"AuxLogits": ("mixed_6e", "Mixed_6e")},
}


def test_every_backbone_with_aux_heads_has_its_feeds_pinned():
    assert {name for name in backbone_names() if get_spec(name).aux_heads} == set(AUX_FEEDS)


@pytest.mark.parametrize("name", sorted(AUX_FEEDS))
def test_each_aux_head_is_fed_by_the_stage_torchvision_feeds_it_from(name):
    """By name, and by what the staged forward really hands each aux head (one forward in train mode, no grad:
    GoogLeNet at 64 px and Inception v3 at 299 px take about a second each on 2 cores)."""
    spec = get_spec(name)
    assert {aux.module: aux.after_stage for aux in spec.aux_heads} == {
        module: stage for module, (stage, _) in AUX_FEEDS[name].items()}

    model = build(name).train()
    outputs, fed = {}, {}
    hooks = [model.net.get_submodule(source).register_forward_hook(
                 lambda module, inputs, output, source=source: outputs.__setitem__(source, output))
             for _, source in AUX_FEEDS[name].values()]
    hooks += [model.net.get_submodule(aux).register_forward_pre_hook(
                  lambda module, inputs, aux=aux: fed.__setitem__(aux, inputs[0]))
              for aux in AUX_FEEDS[name]]
    try:
        with torch.no_grad():
            _, aux_logits = model(images(name))
    finally:
        for hook in hooks:
            hook.remove()
    assert len(aux_logits) == len(AUX_FEEDS[name]) and fed.keys() == AUX_FEEDS[name].keys()
    for aux, (_, source) in AUX_FEEDS[name].items():
        assert torch.equal(fed[aux], outputs[source]), f"{aux} is not fed by {source}"


# A tiny two-stage net with an aux head, so the aux logic is tested in the default (fast) run too.
class _TinyAuxNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.aux = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
        self.fc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


TINY = BackboneSpec(
    name="tiny_aux",
    build_net=_TinyAuxNet,
    weights_enum=None,
    default_weights=None,
    stages=(Stage("stem", ("stem",), lambda net, x: net.stem(x)),
            Stage("body", ("body",), lambda net, x: net.body(x)),
            Stage("head", ("fc",), lambda net, x: net.fc(x))),
    head_linear="fc.2",
    aux_heads=(AuxHead("aux", after_stage="stem", final_linear="aux.2", default_loss_weight=0.5),),
)


def test_aux_head_runs_only_in_train_mode_while_its_stage_and_the_head_train():
    model = StagedModel(TINY, _TinyAuxNet(), 3, "none", aux_loss_weight=0.5)
    x = torch.randn(2, 3, 8, 8)
    logits, aux = model.train()(x)
    assert logits.shape == (2, 3) and [a.shape for a in aux] == [(2, 3)]
    assert isinstance(model.eval()(x), torch.Tensor)
    aux_params = [p for _, p in model.aux_parameters(TINY.aux_heads[0])]
    assert all(p.requires_grad for p in aux_params)

    model.apply_plan(TrainPlan(frozenset({"body", "head"})))  # the stem feeding the aux head is frozen
    model.train()
    assert isinstance(model(x), torch.Tensor)
    assert not any(p.requires_grad for p in aux_params)
    assert not model.net.aux.training

    off = StagedModel(TINY, _TinyAuxNet(), 3, "none", aux_loss_weight=0.0).train()
    assert isinstance(off(x), torch.Tensor)
    assert not any(p.requires_grad for p in off.net.aux.parameters())
    model.apply_plan(TrainPlan(frozenset({"stem", "head"})))
    with pytest.raises(ValueError):
        model.train()(model.forward_range(x, 0, 1), start=1)  # would skip the stage feeding the aux head


def test_aux_loss_weight_is_zero_without_aux_heads_and_validated():
    assert build("resnet18", aux_loss_weight=0.4).aux_loss_weight == 0.0
    with pytest.raises(UserError, match="aux_loss_weight"):
        build("inception_v3", aux_loss_weight=-1.0)  # rejected before the net is built


def test_aux_loss_weight_zero_is_accepted_and_turns_the_aux_heads_off():
    model = build("googlenet", aux_loss_weight=0)  # builds only, no forward pass
    assert model.aux_loss_weight == 0.0 and model.active_aux_heads() == ()
    assert not any(p.requires_grad for aux in model.spec.aux_heads for _, p in model.aux_parameters(aux))


# ---- weights choices and preprocessing -----------------------------------------------------------


def test_weights_versions_are_explicit():
    assert resolve_weights(get_spec("resnet50"), "imagenet").version == "ResNet50_Weights.IMAGENET1K_V2"
    assert resolve_weights(get_spec("resnet50"), "IMAGENET1K_V1").version == "ResNet50_Weights.IMAGENET1K_V1"
    assert resolve_weights(get_spec("resnet18"), "imagenet").version == "ResNet18_Weights.IMAGENET1K_V1"
    assert resolve_weights(get_spec("vit_b_16"), "imagenet").version == "ViT_B_16_Weights.IMAGENET1K_V1"
    assert build("resnet18").weights_version == "none"


@pytest.mark.parametrize("name, weights, expected", [
    ("resnet50", "IMAGENET1K_V3", "IMAGENET1K_V1, IMAGENET1K_V2"),
    ("resnet50", "DEFAULT", "does not say which"),
    ("resnet50", "default", "does not say which"),
    ("resnet50", "imagenet1k_v2", "did you mean 'IMAGENET1K_V2'"),
    ("vgg16", "IMAGENET1K_FEATURES", "IMAGENET1K_V1"),
    ("vit_b_16", "IMAGENET1K_SWAG_E2E_V1", "IMAGENET1K_SWAG_LINEAR_V1"),
    ("scratch_cnn", "imagenet", "--weights=none"),
    ("resnet18", "", "must be"),
])
def test_bad_weights_choices_are_one_line_user_errors(name, weights, expected):
    with pytest.raises(UserError) as error:
        resolve_weights(get_spec(name), weights)
    assert expected in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("name, weights, crop, resize, interpolation", [
    ("resnet50", "imagenet", 224, 232, "bilinear"),
    ("resnet50", "IMAGENET1K_V2", 224, 232, "bilinear"),
    ("resnet50", "IMAGENET1K_V1", 224, 256, "bilinear"),
    ("resnet50", "none", 224, 232, "bilinear"),  # random init: the default weights' geometry
    ("resnet18", "imagenet", 224, 256, "bilinear"),
    ("inception_v3", "imagenet", 299, 342, "bilinear"),
    ("inception_v3", "none", 299, 342, "bilinear"),
    ("efficientnet_v2_s", "imagenet", 384, 384, "bilinear"),
    ("vit_b_16", "IMAGENET1K_SWAG_LINEAR_V1", 224, 224, "bicubic"),
    ("mobilenet_v3_small", "imagenet", 224, 256, "bilinear"),
])
def test_preprocessing_comes_from_the_weights_metadata(name, weights, crop, resize, interpolation):
    pre = preprocessing_for(name, weights)
    assert (pre.crop_size, pre.resize_size, pre.interpolation) == (crop, resize, interpolation)
    assert pre.mean == pytest.approx((0.485, 0.456, 0.406)) and pre.std == pytest.approx((0.229, 0.224, 0.225))


def test_preprocessing_for_a_checkpoint_uses_the_default_weights_geometry(tmp_path):
    assert preprocessing_for("inception_v3", str(tmp_path / "any.pt")).crop_size == 299


def test_a_warm_start_from_a_run_checkpoint_sees_images_as_that_run_did(tmp_path):
    """A resnet50 run from IMAGENET1K_V1 resized to 256 px; warm-started from its best.pt it must not get V2's 232."""
    def saved(name: str, payload: object) -> str:
        torch.save(payload, tmp_path / name)
        return str(tmp_path / name)

    v1_run = saved("v1.pt", {"model": {}, "config": {"model": "resnet50", "weights": "IMAGENET1K_V1"}})
    assert preprocessing_for("resnet50", v1_run).resize_size == 256
    default_run = saved("default.pt", {"model": {}, "config": {"model": "resnet50", "weights": "imagenet"}})
    assert preprocessing_for("resnet50", default_run).resize_size == 232
    lean = saved("lean.pt",
                 {"model": {}, "frozen_base": {"weights": "ViT_B_16_Weights.IMAGENET1K_SWAG_LINEAR_V1", "keys": []}})
    pre = preprocessing_for("vit_b_16", lean)  # no config: the frozen stages' weights say where it started
    assert (pre.resize_size, pre.interpolation) == (224, "bicubic")
    # A warm start of a warm start: its config names only a file, but its run recorded what it saw.
    v1_pre = preprocessing_for("resnet50", "IMAGENET1K_V1")
    chained = saved("chained.pt", {"model": {}, "config": {"model": "resnet50", "weights": v1_run},
                                   "identity": {"model": "resnet50", "preprocessing": v1_pre.as_record()}})
    assert preprocessing_for("resnet50", chained) == v1_pre
    # Files that do not say: another model's run, a plain state_dict: the default weights' metadata.
    assert preprocessing_for("resnet50", saved("r18.pt", {"model": {}, "config": {"model": "resnet18",
                                                                                  "weights": "IMAGENET1K_V1"}})
                             ).resize_size == 232
    assert preprocessing_for("resnet50", saved("plain.pt", {"fc.weight": torch.zeros(2, 2)})).resize_size == 232


def test_a_checkpoint_of_another_models_run_does_not_lend_its_recorded_preprocessing(tmp_path):
    """A resnet18 run's best.pt recorded what resnet18 saw; for a resnet50 it says nothing: the default metadata."""
    from common.preprocessing import Preprocessing

    small = Preprocessing(64, 73, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    torch.save({"model": {}, "identity": {"model": "resnet18", "preprocessing": small.as_record()}},
               tmp_path / "r18.pt")
    assert preprocessing_for("resnet50", str(tmp_path / "r18.pt")).resize_size == 232
    assert preprocessing_for("resnet18", str(tmp_path / "r18.pt")) == small


def test_a_recorded_preprocessing_reads_back_as_written_and_anything_else_reads_as_none():
    """Older runs (no record) and records this code cannot use (a newer interpolation) fall back, never crash."""
    from common.preprocessing import Preprocessing

    pre = preprocessing_for("resnet50", "IMAGENET1K_V1")
    assert Preprocessing.from_record(pre.as_record()) == pre and isinstance(pre.as_record()["mean"], list)
    record = pre.as_record()
    for other in (None, [1, 2], {**record, "interpolation": "lanczos"}, {**record, "resize_size": 10},
                  {k: v for k, v in record.items() if k != "mean"}, {**record, "antialias": True}):
        assert Preprocessing.from_record(other) is None


def test_scratch_preprocessing_follows_its_input_size():
    pre = preprocessing_for("scratch_cnn", "none", ScratchCNNConfig(input_size=64))
    assert (pre.crop_size, pre.resize_size) == (64, 73)
    assert preprocessing_for("scratch_cnn", "none").crop_size == 224


# ---- ImageNet weights from the hub cache (never the network) ------------------------------------


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """TORCH_HOME in a temp dir, and a download that fails as it would offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)

    def offline(url, *args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return Path(tmp_path) / "hub" / "checkpoints"


def test_imagenet_weights_not_cached_offline_name_the_file_and_folder(empty_hub):
    with pytest.raises(UserError) as error:
        build_model("resnet18", NUM_CLASSES)
    message = str(error.value)
    assert "resnet18-f37072fd.pth" in message and str(empty_hub) in message
    # The fix named is weights of one's own or the offline demo, never a frozen random backbone.
    assert "--weights=PATH" in message and "sweeps/demo_offline.yaml" in message and "\n" not in message
    assert "--weights=none is random initialisation, for --strategy=full only" in message


def test_imagenet_weights_load_from_a_pre_placed_file_then_the_head_is_replaced(empty_hub):
    reference = torchvision.models.resnet18(weights=None)
    empty_hub.mkdir(parents=True)
    torch.save(reference.state_dict(), empty_hub / "resnet18-f37072fd.pth")
    model = build_model("resnet18", NUM_CLASSES, weights="imagenet")
    assert model.weights_version == "ResNet18_Weights.IMAGENET1K_V1"
    assert torch.equal(model.net.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert model.net.fc.out_features == NUM_CLASSES


def test_a_corrupt_cached_imagenet_file_says_to_delete_it(empty_hub):
    empty_hub.mkdir(parents=True)
    (empty_hub / "resnet18-f37072fd.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="delete"):
        build_model("resnet18", NUM_CLASSES)


def test_a_cached_imagenet_file_that_does_not_fit_is_refused_not_half_loaded(empty_hub):
    """Loading it leniently would leave the missing tensors at random init in a run recorded as ImageNet weights."""
    state = torchvision.models.resnet18(weights=None).state_dict()
    state = {key: value for key, value in state.items() if not key.startswith("layer4.")}
    empty_hub.mkdir(parents=True)
    torch.save(state, empty_hub / "resnet18-f37072fd.pth")
    with pytest.raises(UserError) as error:
        build_model("resnet18", NUM_CLASSES)
    assert "do not fit resnet18" in str(error.value) and "delete" in str(error.value)


# ---- local checkpoints ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "scratch_cnn"])
def test_our_checkpoint_round_trips_with_identical_outputs(name, tmp_path):
    model = build(name)
    model.train()
    model(images(name))  # move BN running statistics away from their initial values
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": model.state_dict(), "epoch": 3}, path)
    loaded = build(name, weights=str(path))
    assert loaded.weights_version == f"file:{path}"
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(images(name, seed=1)), loaded(images(name, seed=1)))


def test_a_plain_torchvision_state_dict_loads_with_a_fresh_head(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(reference.state_dict(), path)
    model = build("resnet18", weights=str(path))
    assert torch.equal(model.net.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.net.layer2[0].bn1.running_var, reference.layer2[0].bn1.running_var)
    assert model.net.fc.weight.shape == (NUM_CLASSES, 512)


def test_a_checkpoint_of_another_architecture_is_a_user_error(tmp_path):
    path = tmp_path / "mobilenet.pt"
    torch.save({"model": build("mobilenet_v3_small").state_dict()}, path)
    with pytest.raises(UserError) as error:
        build("resnet18", weights=str(path))
    assert str(path) in str(error.value) and "does not fit resnet18" in str(error.value)

    scratch_path = tmp_path / "scratch.pt"
    torch.save({"model": build("scratch_cnn").state_dict()}, scratch_path)
    with pytest.raises(UserError, match="shape"):
        build_model("scratch_cnn", NUM_CLASSES, weights=str(scratch_path),
                    scratch=ScratchCNNConfig(filters=16, dense_units=32, input_size=64))


def test_missing_or_unreadable_weights_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        build("resnet18", weights=str(tmp_path / "nope.pt"))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00 definitely not a torch file")
    with pytest.raises(UserError, match="cannot read"):
        build("resnet18", weights=str(garbage))


def test_invalid_build_arguments_are_user_errors():
    with pytest.raises(UserError, match="did you mean 'adapt'"):
        build("resnet18", bn_mode="adpat")
    with pytest.raises(UserError):
        build_model("resnet18", 0, weights="none")


# ---- scratch CNN ---------------------------------------------------------------------------------


@pytest.mark.parametrize("filters, organization, expected", [
    (32, "same", (32,) * 5), (32, "double", (32, 64, 128, 256, 512)), (32, "half", (32, 16, 8, 8, 8)),
    (4, "half", (4,) * 5),  # the first block has the filters asked for; halving never widens a later block
])
def test_scratch_filter_organizations(filters, organization, expected):
    config = ScratchCNNConfig(filters=filters, filter_organization=organization, input_size=32)
    net = build_scratch_cnn(config, 4)
    assert tuple(getattr(net, f"block{i}")[0].out_channels for i in range(1, 6)) == expected


def test_scratch_cnn_defaults_are_the_run_defaults_so_agent_models_describes_what_a_run_trains():
    from dataclasses import fields

    from models import describe_models
    from trainer.config import FIELDS, SCRATCH_FIELDS, parse_run_config

    defaults = ScratchCNNConfig()
    run = parse_run_config({"model": "scratch_cnn"})  # input_size is every model's: its scratch default is filled in
    assert ({f.name: getattr(defaults, f.name) for f in fields(ScratchCNNConfig)}
            == {n: FIELDS[n].default for n in SCRATCH_FIELDS} | {"input_size": run.input_size})
    total = sum(p.numel() for p in build_scratch_cnn(defaults, 10).parameters())
    assert f"trains all {total:,} parameters" in describe_models(["scratch_cnn"])
    assert total > 7_000_000  # the default doubles its filters per block: 32 .. 512


ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "mish": nn.Mish, "leaky_relu": nn.LeakyReLU}


@pytest.mark.parametrize("activation", ["relu", "gelu", "silu", "mish", "leaky_relu"])
@pytest.mark.parametrize("batch_norm", [True, False])
def test_scratch_cnn_builds_every_activation_with_and_without_bn(activation, batch_norm):
    config = ScratchCNNConfig(filters=4, activation=activation, batch_norm=batch_norm, dense_units=8,
                              input_size=40, kernel_size=5)
    model = build_model("scratch_cnn", 3, weights="none", scratch=config)
    assert model(torch.randn(2, 3, 40, 40)).shape == (2, 3)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == batch_norm
    # the chosen activation after every conv block and the dense layer, and no other
    assert [type(m) for m in model.modules() if type(m) in ACTIVATIONS.values()] == [ACTIVATIONS[activation]] * 6


# Parameters for kernel 5, dense 8, 3 classes, 64 px (a 2x2 map after five pools). double+BN: convs 5*5*(3*4 + 4*8
# + 8*16 + 16*32 + 32*64) = 68,300, BN scale and shift 2*124 (no conv bias before BN), dense 256*8+8, head 8*3+3.
@pytest.mark.parametrize("organization, first, batch_norm, channels, parameters", [
    ("double", 4, True, (4, 8, 16, 32, 64), 68_300 + 248 + 2_056 + 27),
    ("double", 4, False, (4, 8, 16, 32, 64), 68_300 + 124 + 2_056 + 27),  # conv biases instead of BN
    ("same", 4, True, (4, 4, 4, 4, 4), 1_900 + 40 + 136 + 27),
    ("half", 16, False, (16, 8, 8, 8, 8), 9_200 + 48 + 264 + 27),  # half stops at 8 channels
])
def test_scratch_cnn_config_sets_channels_kernel_shapes_dropout_and_parameter_count(organization, first, batch_norm,
                                                                                    channels, parameters):
    config = ScratchCNNConfig(filters=first, filter_organization=organization, kernel_size=5, batch_norm=batch_norm,
                              dropout=0.35, dense_units=8, input_size=64)
    net = build_scratch_cnn(config, 3)
    assert sum(p.numel() for p in net.parameters()) == parameters
    x = torch.randn(2, 3, 64, 64)
    previous = 3
    for i, filters in enumerate(channels, start=1):
        block = getattr(net, f"block{i}")
        conv = block[0]
        assert conv.weight.shape == (filters, previous, 5, 5) and (conv.bias is None) == batch_norm
        x = block(x)
        assert x.shape == (2, filters, 64 >> i, 64 >> i)  # "same" padding, then a 2x max-pool
        previous = filters
    assert isinstance(net.dense[-1], nn.Dropout) and net.dense[-1].p == 0.35  # after the dense layer's activation
    assert net.dense[1].out_features == 8 and net.head(net.dense(x)).shape == (2, 3)


@pytest.mark.parametrize("field, value, expected", [
    ("input_size", 16, "input_size=16"),
    ("activation", "rleu", "did you mean 'relu'"),
    ("filter_organization", "doubel", "did you mean 'double'"),
    ("kernel_size", 4, "odd"),
    ("dropout", 1.0, "dropout"),
    ("batch_norm", "False", "batch_norm"),
    ("filters", 0, "filters"),
])
def test_scratch_config_rejects_bad_values(field, value, expected):
    with pytest.raises(UserError) as error:
        ScratchCNNConfig(**{field: value})
    assert expected in str(error.value)


# ---- description and import direction ------------------------------------------------------------


def test_describe_models_shows_weights_preprocessing_stages_and_strategies():
    text = describe_models(["resnet18", "scratch_cnn"])
    assert "ResNet18_Weights.IMAGENET1K_V1" in text and "crop 224 px" in text and "256 px" in text
    # as runs record it
    assert "layer4" in text and "last_k k_layers=2" in text and "freeze_fraction=0.8 (4 of 5 frozen)" in text
    assert "10,498,570 / 11,181,642" in text  # resnet18 k_layers=2 for 10 classes: layer3 + layer4 + fc
    assert "scratch_cnn" in text and "every strategy trains all" in text
    # every k from 0 (the head alone: 512*10+10) to all 5 backbone stages is listed
    assert re.search(r"last_k k_layers=0 +5,130 / 11,181,642", text)
    assert re.search(r"last_k k_layers=5 +11,181,642 / 11,181,642 \(100.0 %\)", text)


def _imports(package: str) -> set[str]:
    found = set()
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def test_models_and_scratch_cnn_import_neither_data_trainer_nor_wandb():
    assert not _imports("models") & {"data", "trainer", "wandb", "report", "agent"}
    assert not _imports("scratch_cnn") & {"data", "trainer", "wandb", "report", "agent", "models"}


def test_what_the_config_and_check_accept_is_what_the_scratch_cnn_builds(tmp_path):
    """The scratch CNN's fields are declared once (scratch_cnn/config.py): an even kernel_size, once accepted by the run
    config and `agent.py check` and refused only after the dataset scan, is now refused when the config is read."""
    import yaml

    from scratch_cnn.config import FIELDS as RULES
    from sweeper.local import check_sweep
    from trainer.config import FIELDS, SCRATCH_FIELDS, parse_run_config

    with pytest.raises(UserError, match="kernel_size=4 must be odd"):
        parse_run_config({"model": "scratch_cnn", "kernel_size": 4})
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"name": "s", "program": "agent.py", "method": "grid",
                                     "metric": {"name": "val_acc", "goal": "maximize"},
                                     "parameters": {"model": {"value": "scratch_cnn"},
                                                    "kernel_size": {"values": [3, 4]}}}))
    with pytest.raises(UserError, match="kernel_size=4 must be odd"):
        check_sweep(sweep)
    for name in SCRATCH_FIELDS:  # one declaration: the run config's field is the rule's
        meta, rule = FIELDS[name].metadata, RULES[name]
        assert (meta["default"], meta["help"], meta["choices"], meta["low"], meta["high"]) == (
            rule.default, rule.help, rule.choices, rule.low, rule.high)
    for name, rule in RULES.items():  # and every value the config accepts at the bounds builds
        for value in [v for v in (rule.low, rule.high) if v is not None and rule.check is None] or [rule.default]:
            ScratchCNNConfig(**{name: value})

