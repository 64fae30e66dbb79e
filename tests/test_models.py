"""Backbone registry, staged forward, head replacement, weights resolution and loading, preprocessing, scratch CNN.

Parametrized over the registry, so a new backbone is tested without a new test; heavy backbones are `slow`.
"""

from __future__ import annotations

import ast
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision
from torch import nn

from common.errors import UserError
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
from scratch_cnn import ScratchCNNConfig, build_scratch_cnn

from model_helpers import NUM_CLASSES, build, each_backbone, every_backbone, images  # noqa: E402

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
    assert "--weights=none" in message and "--weights=PATH" in message and "\n" not in message


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


@pytest.mark.parametrize("organization, expected", [
    ("same", (32,) * 5), ("double", (32, 64, 128, 256, 512)), ("half", (32, 16, 8, 8, 8)),
])
def test_scratch_filter_organizations(organization, expected):
    config = ScratchCNNConfig(filters=32, filter_organization=organization, input_size=32)
    net = build_scratch_cnn(config, 4)
    assert tuple(getattr(net, f"block{i}")[0].out_channels for i in range(1, 6)) == expected


def test_scratch_cnn_defaults_are_the_run_defaults_so_agent_models_describes_what_a_run_trains():
    from dataclasses import fields

    from models import describe_models
    from trainer.config import FIELDS, SCRATCH_FIELDS

    defaults = ScratchCNNConfig()
    assert {f.name: getattr(defaults, f.name) for f in fields(ScratchCNNConfig)} == {n: FIELDS[n].default for n in SCRATCH_FIELDS}
    total = sum(p.numel() for p in build_scratch_cnn(defaults, 10).parameters())
    assert f"trains all {total:,} parameters" in describe_models(["scratch_cnn"])
    assert total > 7_000_000  # the default doubles its filters per block: 32 .. 512


@pytest.mark.parametrize("activation", ["relu", "gelu", "silu", "mish", "leaky_relu"])
@pytest.mark.parametrize("batch_norm", [True, False])
def test_scratch_cnn_builds_every_activation_with_and_without_bn(activation, batch_norm):
    config = ScratchCNNConfig(filters=4, activation=activation, batch_norm=batch_norm, dense_units=8,
                              input_size=40, kernel_size=5)
    model = build_model("scratch_cnn", 3, weights="none", scratch=config)
    assert model(torch.randn(2, 3, 40, 40)).shape == (2, 3)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == batch_norm


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
    assert "layer4" in text and "last_k k_layers=2" in text and "freeze_fraction=0.8 (4 of 5 frozen)" in text  # as runs record it
    assert "10,498,570 / 11,181,642" in text  # resnet18 k_layers=2 for 10 classes: layer3 + layer4 + fc
    assert "scratch_cnn" in text and "every strategy trains all" in text


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
