"""Freezing strategies, train/eval modes of frozen stages, the frozen-prefix cache depth and optimizer groups.

The pitfalls pinned here: frozen BatchNorm statistics drifting (1), freezing by child index, name substring or
tensor count (4, 5, 6), and optimizer groups that disagree with `requires_grad` (11).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from common.errors import UserError
from model_helpers import NUM_CLASSES, build, each_backbone, every_backbone, images
from models import (
    FreezeOptions,
    StagedModel,
    TrainPlan,
    backbone_names,
    build_model,
    count_parameters,
    get_spec,
    plan_for_epoch,
    resolve_strategy,
    strategy_names,
    validate_options,
)
from models.param_groups import trainable_stage_names
from scratch_cnn import ScratchCNNConfig
from trainer.optim import LearningRates


def build_param_groups(model, lr: float, backbone_lr_mult: float = 1.0, layer_decay: float = 1.0,
                       weight_decay: float = 0.0):
    """The optimizer groups of the model's current plan, as trainer/optim.py builds them."""
    return LearningRates(lr, backbone_lr_mult, layer_decay, weight_decay).groups(model, trainable_stage_names(model))


def add_missing_groups(model, optimizer, lr: float, backbone_lr_mult: float = 1.0, layer_decay: float = 1.0,
                       weight_decay: float = 0.0):
    return LearningRates(lr, backbone_lr_mult, layer_decay, weight_decay).add_unfrozen(model, optimizer)

RESNET_STAGES = ("stem", "layer1", "layer2", "layer3", "layer4", "head")
NORMS = (_BatchNorm, nn.LayerNorm, nn.GroupNorm)


def plan(model: StagedModel, strategy: str, epoch: int = 0, **options) -> TrainPlan:
    return plan_for_epoch(resolve_strategy(strategy), model.stage_names, FreezeOptions(**options), epoch,
                          model.spec.name)


def trainable(model: StagedModel) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def top_level(names: set[str], depth: int) -> set[str]:
    return {".".join(name.split(".")[:depth]) for name in names}


# ---- names, aliases, options ---------------------------------------------------------------------


@pytest.mark.parametrize("alias, canonical", [
    ("freeze_all", "head_only"), ("freeze_partial", "last_k"), ("freeze_k_percent", "fraction"),
    ("freeze_except_bn_and_fc", "norm_and_head"), ("bn_and_head", "norm_and_head"), ("unfreeze_all", "full"),
    *((name, name) for name in ("head_only", "last_k", "fraction", "norm_and_head", "full", "gradual")),
])
def test_aliases_resolve_to_canonical_strategies(alias, canonical):
    assert resolve_strategy(alias).name == canonical


def test_unknown_strategy_suggests_the_nearest_name():
    with pytest.raises(UserError) as error:
        resolve_strategy("lastk")
    assert "did you mean 'last_k'" in str(error.value) and "head_only" in str(error.value)


def test_k_layers_out_of_range_is_a_one_line_error_naming_the_stages():
    with pytest.raises(UserError) as error:
        plan_for_epoch(resolve_strategy("last_k"), RESNET_STAGES, FreezeOptions(k_layers=9), 0, "resnet50")
    assert str(error.value) == ("k_layers=9 but resnet50 has 5 backbone stages "
                                "(stem, layer1, layer2, layer3, layer4); use 0..5")
    for bad in (-1, True, "2", 6):
        with pytest.raises(UserError):
            validate_options(resolve_strategy("freeze_partial"), RESNET_STAGES, FreezeOptions(k_layers=bad))
    with pytest.raises(UserError):  # the strategy's own function checks too: no negative slicing
        resolve_strategy("last_k").plan_for_epoch(RESNET_STAGES, FreezeOptions(k_layers=9), 0)


def test_options_a_strategy_ignores_are_not_validated_and_bad_ones_it_reads_are():
    validate_options(resolve_strategy("head_only"), RESNET_STAGES, FreezeOptions(k_layers=99))
    with pytest.raises(UserError, match="freeze_fraction"):
        validate_options(resolve_strategy("fraction"), RESNET_STAGES, FreezeOptions(freeze_fraction=1.5))
    with pytest.raises(UserError, match="unfreeze_every_epochs"):
        validate_options(resolve_strategy("gradual"), RESNET_STAGES, FreezeOptions(unfreeze_every_epochs=0))
    assert resolve_strategy("last_k").uses == ("k_layers",)
    assert resolve_strategy("full").uses == ()


# ---- plans ---------------------------------------------------------------------------------------


def stages_of(strategy: str, stage_names=RESNET_STAGES, epoch: int = 0, **options) -> set[str]:
    return set(plan_for_epoch(resolve_strategy(strategy), stage_names, FreezeOptions(**options), epoch)
               .trainable_stages)


def test_plans_on_resnet_stage_names():
    assert stages_of("head_only") == {"head"}
    assert stages_of("last_k", k_layers=0) == {"head"}
    assert stages_of("last_k", k_layers=2) == {"layer3", "layer4", "head"}
    assert stages_of("last_k", k_layers=5) == set(RESNET_STAGES)
    assert stages_of("full") == set(RESNET_STAGES)
    norm = plan_for_epoch(resolve_strategy("norm_and_head"), RESNET_STAGES, FreezeOptions(), 0)
    assert norm.trainable_stages == {"head"} and norm.train_norm_layers


@pytest.mark.parametrize("fraction, frozen", [(0.0, 0), (0.2, 1), (0.25, 1), (0.5, 3), (0.75, 4), (1.0, 5)])
def test_fraction_freezes_the_rounded_share_of_backbone_stages(fraction, frozen):
    # 0.5 of 5 stages is 2.5: halves round up, so 3 leading stages are frozen.
    assert stages_of("fraction", freeze_fraction=fraction) == set(RESNET_STAGES[frozen:])


def test_gradual_unfreezes_one_more_stage_from_the_top_every_n_epochs():
    grown = [stages_of("gradual", epoch=e, unfreeze_every_epochs=2) for e in range(14)]
    assert grown[0] == grown[1] == {"head"}
    assert grown[2] == grown[3] == {"layer4", "head"}
    assert grown[4] == {"layer3", "layer4", "head"}
    assert grown[10] == grown[13] == set(RESNET_STAGES)
    assert all(a <= b for a, b in zip(grown, grown[1:]))
    assert [len(g) for g in (stages_of("gradual", epoch=e) for e in range(7))] == [1, 2, 3, 4, 5, 6, 6]


# ---- exactly which tensors train -----------------------------------------------------------------


def expected_trainable(model: StagedModel, stage_plan: TrainPlan) -> set[str]:
    """Computed from the registry's module paths by prefix, independently of StagedModel's bookkeeping."""
    owner = {}
    for stage in model.spec.stages:
        for path in stage.modules:
            owner[path] = stage.name
    active_aux = set()
    trains = stage_plan.trainable_stages
    for aux in model.spec.aux_heads:
        if model.aux_loss_weight > 0 and "head" in trains and aux.after_stage in trains:
            active_aux.add(aux.module)
    norm_params = {f"net.{m}.{p}" for m, module in model.net.named_modules() if isinstance(module, NORMS)
                   for p, _ in module.named_parameters(recurse=False)}
    expected = set()
    for name, _ in model.net.named_parameters():
        paths = [path for path in owner if name == path or name.startswith(path + ".")]
        aux = [a.module for a in model.spec.aux_heads if name.startswith(a.module + ".")]
        if aux:
            if aux[0] in active_aux:
                expected.add(f"net.{name}")
            continue
        assert len(paths) == 1, name
        if owner[paths[0]] in trains or (stage_plan.train_norm_layers and f"net.{name}" in norm_params):
            expected.add(f"net.{name}")
    return expected


@pytest.mark.parametrize("name", every_backbone())
def test_each_strategy_trains_exactly_the_tensors_of_its_stages(name):
    model = build(name)
    n = len(model.stage_names) - 1
    cases = [("head_only", {}), ("norm_and_head", {}), ("full", {}), ("gradual", {"epoch": 2})]
    cases += [("last_k", {"k_layers": k}) for k in range(n + 1)]
    cases += [("fraction", {"freeze_fraction": f}) for f in (0.25, 0.5, 0.75)]
    spec = model.spec
    aux_params = {aux.module: {n for n, _ in model.aux_parameters(aux)} for aux in spec.aux_heads}
    main_head = {n for n, _ in model.stage_parameters("head")} - set().union(*aux_params.values())
    assert {f"net.{spec.head_linear}.weight", f"net.{spec.head_linear}.bias"} <= main_head
    for strategy, options in cases:
        stage_plan = plan(model, strategy, **options)
        model.apply_plan(stage_plan)
        assert trainable(model) == expected_trainable(model, stage_plan), (strategy, options)
        assert main_head <= trainable(model), (strategy, options)  # the main head always trains
        # An aux head (built with its default loss weight) trains, its new classifier included, exactly while
        # the stage feeding it trains; otherwise none of it does (it does not even run).
        for aux in spec.aux_heads:
            classifier = {f"net.{aux.final_linear}.weight", f"net.{aux.final_linear}.bias"}
            assert classifier <= aux_params[aux.module]
            trains = aux_params[aux.module] & trainable(model)
            feeds = aux.after_stage in stage_plan.trainable_stages
            assert trains == (aux_params[aux.module] if feeds else set()), (strategy, options, aux.module)


# head_only is a linear probe: the new classifier alone, by literal name (not derived from the registry, so a
# wrong registry entry fails here). Aux heads do not train: the stages feeding them are frozen.
HEAD_ONLY_TRAINS = {
    "resnet18": {"net.fc.weight", "net.fc.bias"},
    "resnet50": {"net.fc.weight", "net.fc.bias"},
    "vgg16": {"net.classifier.6.weight", "net.classifier.6.bias"},
    "inception_v3": {"net.fc.weight", "net.fc.bias"},  # not AuxLogits.*
    "googlenet": {"net.fc.weight", "net.fc.bias"},  # not aux1.* / aux2.*
    "efficientnet_v2_s": {"net.classifier.1.weight", "net.classifier.1.bias"},  # classifier.0 is the dropout
    "vit_b_16": {"net.heads.head.weight", "net.heads.head.bias"},  # not the final LayerNorm encoder.ln
    "mobilenet_v3_small": {"net.classifier.3.weight", "net.classifier.3.bias"},  # not pre_logits' classifier.0
    "scratch_cnn": {"net.head.weight", "net.head.bias"},  # the trainer runs it under full; the plan still holds
}


def test_head_only_pins_cover_every_backbone():
    assert set(HEAD_ONLY_TRAINS) == set(every_backbone())


@pytest.mark.parametrize("name", sorted(HEAD_ONLY_TRAINS))
def test_head_only_trains_exactly_the_new_classifier_by_name(name):
    model = build(name)  # weights=none; VGG-16 and ViT-B/16 build in about a second, nothing runs forward
    model.apply_plan(plan(model, "head_only"))
    assert trainable(model) == HEAD_ONLY_TRAINS[name]


def test_resnet18_stage_sets_by_name():
    model = build("resnet18")
    model.apply_plan(plan(model, "last_k", k_layers=2))
    assert top_level(trainable(model), 2) == {"net.layer3", "net.layer4", "net.fc"}
    model.apply_plan(plan(model, "head_only"))
    assert trainable(model) == {"net.fc.weight", "net.fc.bias"}
    model.apply_plan(plan(model, "norm_and_head"))
    bn = {f"net.{m}.{p}" for m, mod in model.net.named_modules() if isinstance(mod, nn.BatchNorm2d)
          for p in ("weight", "bias")}
    assert trainable(model) == bn | {"net.fc.weight", "net.fc.bias"}
    assert not any(name.endswith("conv1.weight") for name in trainable(model))


def test_mobilenet_last_stage_is_pre_logits_not_a_tensor_count():
    model = build("mobilenet_v3_small")
    model.apply_plan(plan(model, "last_k", k_layers=1))
    assert trainable(model) == {"net.classifier.0.weight", "net.classifier.0.bias",
                                "net.classifier.3.weight", "net.classifier.3.bias"}
    model.apply_plan(plan(model, "last_k", k_layers=2))
    assert top_level(trainable(model), 3) == {"net.features.12", "net.classifier.0", "net.classifier.3"}
    model.apply_plan(plan(model, "head_only"))
    assert trainable(model) == {"net.classifier.3.weight", "net.classifier.3.bias"}  # the new head alone


def test_heavy_backbones_stage_sets_by_name():
    """Pinned by name, not derived from the registry: a wrong registry entry fails here (builds only, about 13 s)."""
    vit = build("vit_b_16")
    vit.apply_plan(plan(vit, "last_k", k_layers=1))  # the last block with the final norm: not a linear probe
    assert top_level(trainable(vit), 4) == {"net.encoder.layers.encoder_layer_11", "net.encoder.ln.weight",
                                            "net.encoder.ln.bias", "net.heads.head.weight", "net.heads.head.bias"}
    vit.apply_plan(plan(vit, "last_k", k_layers=13))
    assert {"net.class_token", "net.encoder.pos_embedding"} <= trainable(vit)

    efficientnet = build("efficientnet_v2_s")
    efficientnet.apply_plan(plan(efficientnet, "head_only"))
    assert trainable(efficientnet) == {"net.classifier.1.weight", "net.classifier.1.bias"}  # no SE fc1/fc2
    efficientnet.apply_plan(plan(efficientnet, "last_k", k_layers=2))  # stage6 and the top 1x1 conv, nothing else
    assert top_level(trainable(efficientnet), 3) == {"net.features.6", "net.features.7", "net.classifier.1"}

    inception = build("inception_v3")
    inception.apply_plan(plan(inception, "head_only"))
    assert trainable(inception) == {"net.fc.weight", "net.fc.bias"}  # no AuxLogits.fc
    inception.apply_plan(plan(inception, "last_k", k_layers=4))  # mixed_6e..mixed_7c: the aux head trains
    assert any(name.startswith("net.AuxLogits.") for name in trainable(inception))

    vgg = build("vgg16")
    vgg.apply_plan(plan(vgg, "last_k", k_layers=2))
    assert top_level(trainable(vgg), 3) == {"net.classifier.0", "net.classifier.3", "net.classifier.6"}


# Every stage of every pretrained backbone, written out by module name from torchvision's own layout, never
# read from the registry: a registry entry that merges, splits or misplaces a stage fails here.
_VGG_CONVS = {"block1": (0, 2), "block2": (5, 7), "block3": (10, 12, 14), "block4": (17, 19, 21),
              "block5": (24, 26, 28)}
STAGE_MODULES = {
    "resnet50": {"stem": ("conv1", "bn1"), **{f"layer{i}": (f"layer{i}",) for i in range(1, 5)}, "head": ("fc",)},
    "vgg16": {**{block: tuple(f"features.{i}" for i in convs) for block, convs in _VGG_CONVS.items()},
              "fc6": ("classifier.0",), "fc7": ("classifier.3",), "head": ("classifier.6",)},
    "inception_v3": {"stem": ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"),
                     **{f"mixed_{b}": (f"Mixed_{b}",)
                        for b in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c")},
                     "head": ("fc",)},
    "googlenet": {"stem": ("conv1", "conv2", "conv3"),
                  **{f"inception{b}": (f"inception{b}",)
                     for b in ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")},
                  "head": ("fc",)},
    "efficientnet_v2_s": {"stem": ("features.0",), **{f"stage{i}": (f"features.{i}",) for i in range(1, 7)},
                          "top_conv": ("features.7",), "head": ("classifier.1",)},
    "vit_b_16": {"patch_embed": ("conv_proj", "class_token", "encoder.pos_embedding"),
                 **{f"encoder_{i}": (f"encoder.layers.encoder_layer_{i}",) for i in range(11)},
                 "encoder_11": ("encoder.layers.encoder_layer_11", "encoder.ln"), "head": ("heads.head",)},
    "mobilenet_v3_small": {"stem": ("features.0",), **{f"block{i}": (f"features.{i}",) for i in range(1, 12)},
                           "top_conv": ("features.12",), "pre_logits": ("classifier.0",), "head": ("classifier.3",)},
}
# An auxiliary head trains from the k that first trains the stage feeding it.
AUX_MODULES = {"inception_v3": {"mixed_6e": ("AuxLogits",)},
               "googlenet": {"inception4a": ("aux1",), "inception4d": ("aux2",)}}


def under(modules: tuple[str, ...], names: set[str]) -> set[str]:
    return {n for n in names if any(n == f"net.{m}" or n.startswith(f"net.{m}.") for m in modules)}


@pytest.mark.parametrize("name", sorted(STAGE_MODULES))
def test_each_k_adds_exactly_the_next_stage_pinned_by_module_name(name):
    model = build(name)
    stages = STAGE_MODULES[name]
    assert model.stage_names == tuple(stages)
    everything = {n for n, _ in model.named_parameters()}
    model.apply_plan(plan(model, "head_only"))
    trained = trainable(model)
    assert trained == under(stages["head"], everything) and trained
    for k, stage in enumerate(reversed(tuple(stages)[:-1]), start=1):
        model.apply_plan(plan(model, "last_k", k_layers=k))
        added = trainable(model) - trained
        modules = stages[stage] + AUX_MODULES.get(name, {}).get(stage, ())
        assert added == under(modules, everything), f"{name} k_layers={k} ({stage})"
        assert all(under((m,), added) for m in modules), f"{name}: {stage} has a module with no parameter"
        trained |= added
    assert trained == everything  # every backbone stage counted: k_layers at its maximum is full fine-tuning


# ---- frozen means frozen: parameters and BatchNorm buffers ---------------------------------------


def snapshot(model: StagedModel, skip_head: bool = True) -> dict[str, torch.Tensor]:
    head = {name for name, _ in model.stage_parameters("head")}
    return {k: v.clone() for k, v in model.state_dict().items()
            if not (skip_head and (k in head or any(k.startswith(h.rsplit(".", 1)[0] + ".") for h in head)))}


def sgd_steps(model: StagedModel, name: str, steps: int, seed: int = 0) -> None:
    # A large learning rate, momentum and weight decay: anything not frozen would visibly move.
    optimizer = torch.optim.SGD(build_param_groups(model, lr=5.0, weight_decay=0.1), lr=5.0, momentum=0.9)
    for step in range(steps):
        model.train()  # the trainer calls this every epoch; frozen stages must go back to eval
        x = images(name, seed=seed + step)
        out = model(x)
        logits = out[0] if isinstance(out, tuple) else out
        loss = nn.functional.cross_entropy(logits, torch.arange(len(x)) % NUM_CLASSES)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("name", each_backbone())
def test_head_only_leaves_every_backbone_parameter_and_buffer_bit_for_bit_unchanged(name):
    model = build(name)
    model.apply_plan(plan(model, "head_only"))
    before = snapshot(model)
    head_before = model.net.get_submodule(model.spec.head_linear).weight.clone()
    sgd_steps(model, name, 2)
    model.train()
    sgd_steps(model, name, 1, seed=10)
    after = snapshot(model)
    assert before.keys() == after.keys() and any("running_mean" in k for k in before) == (name != "vit_b_16" and
                                                                                          name != "vgg16")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == []
    assert not torch.equal(head_before, model.net.get_submodule(model.spec.head_linear).weight)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_bn_mode_adapt_moves_running_statistics_but_no_parameter(name):
    model = build(name, bn_mode="adapt")
    model.apply_plan(plan(model, "head_only"))
    before = snapshot(model)
    sgd_steps(model, name, 2)
    after = snapshot(model)
    params = {n for n, _ in model.named_parameters()}
    assert all(torch.equal(before[k], after[k]) for k in before if k in params)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("running_mean"))


def test_norm_and_head_trains_bn_affine_and_statistics_but_not_convolutions():
    model = build("resnet18")
    model.apply_plan(plan(model, "norm_and_head"))
    before = snapshot(model)
    sgd_steps(model, "resnet18", 2)
    after = snapshot(model)
    assert torch.equal(before["net.layer1.0.conv1.weight"], after["net.layer1.0.conv1.weight"])
    assert not torch.equal(before["net.layer1.0.bn1.weight"], after["net.layer1.0.bn1.weight"])
    assert not torch.equal(before["net.layer1.0.bn1.running_mean"], after["net.layer1.0.bn1.running_mean"])


def test_frozen_stages_stay_in_eval_mode_after_every_train_call():
    model = build("mobilenet_v3_small")
    model.apply_plan(plan(model, "head_only"))
    for _ in range(2):
        model.train()
        assert model.training and model.net.classifier[3].training
        frozen = [m for s in model.stage_names[:-1] for module in model.stage_modules(s) for m in module.modules()]
        assert frozen and not any(m.training for m in frozen)  # BN and the pre_logits dropout alike
    model.eval()
    assert not any(m.training for m in model.modules())

    adapt = build("mobilenet_v3_small", bn_mode="adapt")
    adapt.apply_plan(plan(adapt, "head_only"))
    adapt.train()
    assert all(m.training for m in adapt.net.modules() if isinstance(m, nn.BatchNorm2d))
    assert not adapt.net.classifier[2].training  # the dropout of a frozen stage stays off

    model.train()
    model.apply_plan(plan(model, "last_k", k_layers=3))  # a new plan re-applies the modes at once
    assert model.net.features[12].training and not model.net.features[10].training


@pytest.mark.parametrize("bn_mode, strategy", [("adapt", "head_only"), ("freeze", "norm_and_head"),
                                               ("freeze", "head_only")])
def test_eval_puts_every_layer_in_eval_mode_and_leaves_bn_statistics_alone(bn_mode, strategy):
    """Validation uses the running statistics: frozen BatchNorm layers that adapt in train() (bn_mode=adapt,
    norm_and_head) must not go back to train mode, nor update their statistics, under eval()."""
    model = build("resnet18", bn_mode=bn_mode)
    model.apply_plan(plan(model, strategy))
    model.train()
    model.eval()
    assert not any(m.training for m in model.modules())
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    with torch.no_grad():
        model(images("resnet18"))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    model.apply_plan(plan(model, "last_k", k_layers=1))  # a new plan applied between epochs keeps eval mode
    assert not any(m.training for m in model.modules())


# ---- the frozen-prefix activation cache ----------------------------------------------------------


def test_frozen_prefix_depth_counts_only_deterministic_leading_stages():
    model = build("resnet18")
    model.apply_plan(plan(model, "head_only"))
    assert model.frozen_prefix_depth() == 5
    model.apply_plan(plan(model, "last_k", k_layers=2))
    assert model.frozen_prefix_depth() == 3
    model.apply_plan(plan(model, "full"))
    assert model.frozen_prefix_depth() == 0
    model.apply_plan(plan(model, "norm_and_head"))
    assert model.frozen_prefix_depth() == 0
    adapt = build("resnet18", bn_mode="adapt")
    adapt.apply_plan(plan(adapt, "head_only"))
    assert adapt.frozen_prefix_depth() == 0
    no_bn = build_model("scratch_cnn", 3, weights="none", bn_mode="adapt",
                        scratch=ScratchCNNConfig(filters=4, dense_units=8, input_size=32, batch_norm=False))
    no_bn.apply_plan(plan(no_bn, "head_only"))
    assert no_bn.frozen_prefix_depth() == 6  # no BatchNorm to adapt: the frozen stages stay deterministic


def test_cached_prefix_is_the_same_in_train_mode_and_feeds_the_rest():
    model = build("resnet18")
    model.apply_plan(plan(model, "last_k", k_layers=1))
    depth = model.frozen_prefix_depth()
    x = images("resnet18")
    with torch.no_grad():
        cached = model.train().forward_range(x, 0, depth)
        again = model.train().forward_range(x, 0, depth)
        model.eval()
        assert torch.equal(cached, again) and torch.equal(cached, model.forward_range(x, 0, depth))
        assert torch.allclose(model(cached, start=depth), model(x), atol=1e-6)


# ---- optimizer groups ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", every_backbone())
def test_optimizer_groups_hold_exactly_the_trainable_parameters(name):
    model = build(name)
    for strategy, options in (("head_only", {}), ("last_k", {"k_layers": 2}), ("norm_and_head", {}), ("full", {})):
        model.apply_plan(plan(model, strategy, **options))
        groups = build_param_groups(model, lr=0.1, weight_decay=0.05)
        ids = [id(p) for g in groups for p in g["params"]]
        assert len(ids) == len(set(ids))
        assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
        torch.optim.AdamW(groups)  # the dicts are valid parameter groups
        trainable_count, total = count_parameters(model)
        assert trainable_count == sum(p.numel() for g in groups for p in g["params"]) and total >= trainable_count


def test_group_learning_rates_follow_backbone_multiplier_and_layer_decay():
    model = build("resnet18")
    model.apply_plan(plan(model, "last_k", k_layers=2))
    groups = build_param_groups(model, lr=0.1, backbone_lr_mult=0.5, layer_decay=0.5, weight_decay=0.01)
    assert [g["name"] for g in groups] == ["head", "head/no_decay", "layer4", "layer4/no_decay",
                                           "layer3", "layer3/no_decay"]
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs["head"] == pytest.approx(0.1)
    assert lrs["layer4"] == pytest.approx(0.1 * 0.5 * 0.5)
    assert lrs["layer3/no_decay"] == pytest.approx(0.1 * 0.5 * 0.25)
    assert all(g["initial_lr"] == g["lr"] for g in groups)

    names = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        group_names = [names[id(p)] for p in group["params"]]
        if group["name"].endswith("/no_decay"):
            assert group["weight_decay"] == 0.0
            assert all(n.endswith(".bias") or ".bn" in n or "downsample.1" in n for n in group_names)
        else:
            assert group["weight_decay"] == 0.01 and all(p.dim() > 1 for p in group["params"])


@pytest.mark.parametrize("name", every_backbone())
def test_no_backbone_decays_a_bias_or_norm_tensor(name):
    """Weight decay on 1-d tensors (biases, norm scales, ViT's in_proj_bias, class token) pulls them to 0: every
    backbone's full plan puts each of them in a no_decay group, and every matrix in a decayed one."""
    model = build(name)
    model.apply_plan(plan(model, "full"))
    for group in build_param_groups(model, lr=0.1, weight_decay=0.01):
        decays = group["weight_decay"] > 0
        assert decays == (not group["name"].endswith("/no_decay"))
        assert all((p.dim() > 1) == decays for p in group["params"]), group["name"]


def test_sgd_uses_nesterov_momentum():
    from trainer.config import parse_run_config
    from trainer.optim import build_optimizer

    model = build("resnet18")
    model.apply_plan(plan(model, "full"))
    optimizer = build_optimizer(
        model, parse_run_config({"model": "resnet18", "optimizer": "sgd", "momentum": 0.9, "strategy": "full"}))
    assert all(g["nesterov"] and g["momentum"] == 0.9 for g in optimizer.param_groups)


def test_groups_for_newly_unfrozen_stages_during_gradual_unfreezing():
    model = build("resnet18")
    model.apply_plan(plan(model, "gradual", epoch=0))
    optimizer = torch.optim.SGD(build_param_groups(model, lr=0.1, layer_decay=0.5), lr=0.1)
    model.apply_plan(plan(model, "gradual", epoch=1))
    assert add_missing_groups(model, optimizer, lr=0.1, layer_decay=0.5) == ["layer4", "layer4/no_decay"]
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in model.parameters() if p.requires_grad}
    assert optimizer.param_groups[-1]["lr"] == pytest.approx(0.05)


def test_an_aux_head_joins_the_optimizer_when_its_stage_unfreezes():
    """GoogLeNet's aux2 reads inception4d: under gradual unfreezing it starts training with that stage."""
    model = build("googlenet")
    aux_ids = {id(p) for aux in model.spec.aux_heads for _, p in model.aux_parameters(aux)}
    model.apply_plan(plan(model, "gradual", epoch=0))
    optimizer = torch.optim.AdamW(build_param_groups(model, lr=0.1), lr=0.1)
    for epoch in range(1, len(model.stage_names)):
        model.apply_plan(plan(model, "gradual", epoch=epoch))
        add_missing_groups(model, optimizer, lr=0.1)
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}
        assert held == {id(p) for p in model.parameters() if p.requires_grad}, f"epoch {epoch}"
    assert aux_ids and aux_ids <= held  # every aux head trains by the end, and is optimised


def test_every_registered_strategy_is_covered_by_these_tests():
    assert set(strategy_names()) == {"head_only", "last_k", "fraction", "norm_and_head", "full", "gradual"}


# --- equivalent configurations are one ------------------------------------------------------------

def _trained_per_epoch(model, config) -> list[frozenset[str]]:
    """The parameter names that train in each epoch of `config`'s run, norm layers included."""
    from models import FreezeOptions, plan_for_epoch, resolve_strategy

    strategy = resolve_strategy(config.strategy)
    options = FreezeOptions(**{k: getattr(config, k) for k in ("k_layers", "freeze_fraction", "unfreeze_every_epochs")
                               if getattr(config, k) is not None})
    trained = []
    for epoch in range(config.epochs):
        model.apply_plan(plan_for_epoch(strategy, model.stage_names, options, epoch))
        trained.append(frozenset(name for name, p in model.named_parameters() if p.requires_grad))
    return trained


@pytest.fixture(scope="module")
def built_models():
    return {name: build(name) for name in backbone_names()}


@pytest.mark.parametrize("name", [n for n in backbone_names() if n != "scratch_cnn"])
def test_equivalent_strategies_fold_into_one_config_by_the_parameters_they_train(name, built_models):
    """Every strategy and option value, written as the config records it, trains exactly the parameters it asked for
    in every epoch; and two configs that train the same parameters with the same values are one config (hash)."""
    from trainer.config import config_hash, parse_run_config

    model, n = built_models[name], len(get_spec(name).stage_names) - 1
    asked = [{"strategy": "head_only"}, {"strategy": "full"}, {"strategy": "norm_and_head"},
             *({"strategy": "last_k", "k_layers": k} for k in range(n + 1)),
             *({"strategy": "fraction", "freeze_fraction": f} for f in (0.0, 0.2, 0.25, 0.5, 0.75, 1.0)),
             *({"strategy": "gradual", "unfreeze_every_epochs": e} for e in (1, 2, 4))]
    by_training: dict[tuple, set[str]] = {}
    for values in asked:
        raw = {"model": name, "epochs": 4, **values}
        config = parse_run_config(raw)
        # the asked strategy and options
        raw_config = parse_run_config(raw).replace(**{k: v for k, v in values.items()})
        assert _trained_per_epoch(model, config) == _trained_per_epoch(model, raw_config), (values, config.strategy)
        by_training.setdefault(tuple(_trained_per_epoch(model, config)), set()).add(config_hash(config))
    assert all(len(hashes) == 1 for hashes in by_training.values())  # same parameters trained: one config
    assert parse_run_config({"model": name, "strategy": "fraction", "freeze_fraction": 0.5,
                             "epochs": 4}).strategy != "fraction"


def test_which_configs_fold_and_which_stay_apart():
    from trainer.config import config_hash, parse_run_config

    def same(a: dict, b: dict) -> bool:
        return config_hash(parse_run_config(a)) == config_hash(parse_run_config(b))

    # ResNet-50: 3 of 5 frozen
    assert same({"strategy": "fraction", "freeze_fraction": 0.5}, {"strategy": "last_k", "k_layers": 2})
    assert same({"strategy": "last_k", "k_layers": 5}, {"strategy": "full"}) and same(
        {"strategy": "last_k", "k_layers": 0}, {"strategy": "head_only"})
    # no norm layer
    assert same({"model": "vgg16", "strategy": "norm_and_head"}, {"model": "vgg16", "strategy": "head_only"})
    # LayerNorms
    assert not same({"model": "vit_b_16", "strategy": "norm_and_head"}, {"model": "vit_b_16", "strategy": "head_only"})
    assert not same({"strategy": "norm_and_head"}, {"strategy": "head_only"})  # ResNet-50's BatchNorms train
    assert same({"strategy": "gradual", "unfreeze_every_epochs": 10, "epochs": 10},
                {"strategy": "head_only", "epochs": 10})
    assert not same({"strategy": "gradual", "unfreeze_every_epochs": 3, "epochs": 10},
                    {"strategy": "head_only", "epochs": 10})


@pytest.mark.parametrize("name", [n for n in backbone_names() if n != "scratch_cnn"])
def test_the_registry_says_truly_whether_a_backbone_has_norm_layers(name, built_models):
    from models.staged import NORM_LAYERS

    model = built_models[name]
    backbone = [m for stage in model.stage_names[:-1] for module in model.stage_modules(stage)
                for m in module.modules()]
    assert get_spec(name).norm_layers == any(isinstance(m, NORM_LAYERS) for m in backbone)


def test_a_new_strategy_is_one_registry_entry(monkeypatch):
    """Registered in models/freezing.py alone, a strategy shows in --help and the configuration reference, in the
    report's order, in `agent.py models`' matrix and in the per-backbone tests (which parametrize over the registry)."""
    import models.freezing as freezing
    from models import describe_model
    from report.stats import strategy_order, strategy_sort_key
    from trainer.config import help_text, parse_run_config, reference_markdown

    def last_k_plus_bn(stage_names, options, epoch):
        return TrainPlan(freezing._top(stage_names, options.k_layers).trainable_stages, train_norm_layers=True)

    monkeypatch.setattr(freezing, "_STRATEGIES", dict(freezing._STRATEGIES))
    monkeypatch.setattr(freezing, "_ALIASES", dict(freezing._ALIASES))
    # Between last_k and fraction: how much of the backbone it trains places it in the reports' dose-response order.
    entries = list(freezing._STRATEGIES.values())
    freezing._STRATEGIES.clear()
    freezing._ALIASES.clear()
    for entry in entries[:3]:
        freezing.register_strategy(entry)
    freezing.register_strategy(freezing.Strategy("last_k_plus_bn", ("last_k_bn",), ("k_layers",), last_k_plus_bn,
                                                 "the last k_layers stages and every norm layer"))
    for entry in entries[3:]:
        freezing.register_strategy(entry)

    assert "last_k_plus_bn" in help_text() and "last_k_bn" in help_text() and "last_k_plus_bn" in reference_markdown()
    assert strategy_order().index("last_k_plus_bn") == strategy_order().index("last_k") + 1
    assert (strategy_sort_key("resnet50", "last_k") < strategy_sort_key("resnet50", "last_k_plus_bn")
            < strategy_sort_key("resnet50", "fraction"))
    config = parse_run_config({"model": "resnet18", "strategy": "last_k_bn", "k_layers": 2})
    assert (config.strategy, config.k_layers) == ("last_k_plus_bn", 2)  # an alias, and the option it uses, kept
    assert "last_k_plus_bn k_layers=2" in describe_model("resnet18")
    model = build("resnet18")
    model.apply_plan(plan(model, "last_k_plus_bn", k_layers=1))
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any(name.startswith("net.layer4.") for name in trained) and "net.bn1.weight" in trained  # the stem's BN too
