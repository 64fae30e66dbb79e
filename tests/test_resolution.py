"""Input resolution as a parameter of every model: sizes each backbone takes, the preprocessing they imply, ViT's
interpolated position embeddings, caches keyed on size, and torchvision weights files named truthfully.

Parametrized over the registry; forward passes of the heavy backbones are `slow` (CI runs them on their own).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer, interpolate_embeddings

from common.errors import UserError
from common.preprocessing import Preprocessing
from model_helpers import each_backbone
from models import backbone_names, build_model, get_spec, preprocessing_for
from models.backbones import _vit_patch_embed, _vit_resize
from models.weights import input_geometry, resolve_weights
from trainer.config import config_hash, parse_run_config

NUM_CLASSES = 3


def other_size(name: str) -> int:
    """A size the backbone takes that is not its default: small, so the forward pass stays cheap on a CPU."""
    spec = get_spec(name)
    default = parse_run_config({"model": name}).input_size
    size = max(spec.min_input_size, 32)
    size += -size % spec.input_multiple
    return size if size != default else size + spec.input_multiple * max(1, 16 // spec.input_multiple)


@pytest.mark.parametrize("name", each_backbone())
def test_every_backbone_trains_a_step_at_a_size_other_than_its_default(name):
    size = other_size(name)
    config = parse_run_config({"model": name, "weights": "none", "input_size": size, "filters": 8, "dense_units": 16})
    assert config.input_size == size and config.eval_size == size
    from trainer.run import scratch_config

    model = build_model(name, NUM_CLASSES, "none", config.aux_loss_weight, scratch=scratch_config(config),
                        input_size=size)
    model.train()
    before = {key: value.clone() for key, value in model.state_dict().items() if value.is_floating_point()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    out = model(torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)))
    logits, aux = out if isinstance(out, tuple) else (out, [])
    assert logits.shape == (2, NUM_CLASSES)
    loss = sum(nn.functional.cross_entropy(o, torch.tensor([0, 1])) for o in (logits, *aux))
    loss.backward()
    optimizer.step()
    changed = [key for key,
               value in model.state_dict().items() if key in before and not torch.equal(value, before[key])]
    assert any(key.startswith(f"net.{get_spec(name).head_linear}") for key in changed)  # the head trained
    assert len(changed) > 2  # and the backbone with it (every stage trains before a plan is applied)


@pytest.mark.parametrize("name", each_backbone())
def test_each_backbone_minimum_size_is_exact(name):
    """The registry's minimum is the smallest size the net takes: it runs there and fails one pixel below, so a size
    refused by the config is one the net truly cannot take, and a size it admits never fails in epoch 1."""
    spec = get_spec(name)
    if name == "scratch_cnn":
        pytest.skip("the scratch CNN is built for its input size: its minimum is ScratchCNNConfig's own check")
    model = build_model(name, NUM_CLASSES, "none", aux_loss_weight=0.0).eval()
    low = spec.min_input_size

    def runs(size: int, net=model) -> bool:
        try:
            with torch.no_grad():
                net(torch.zeros(2, 3, size, size))
            return True
        except (RuntimeError, ValueError):
            return False

    assert runs(low)
    if low > 1 and spec.input_multiple == 1:
        assert not runs(low - 1)
    for aux in spec.aux_heads:
        if aux.min_input_size > low:
            with_aux = build_model(name, NUM_CLASSES, "none").train()
            assert runs(aux.min_input_size, with_aux) and not runs(aux.min_input_size - 1, with_aux)


@pytest.mark.parametrize("settings, message", [
    ({"model": "vit_b_16", "input_size": 300}, "not a multiple of vit_b_16's 16 px patch: use 288 or 304"),
    ({"model": "vit_b_16", "eval_size": 250}, "eval_size=250 is not a multiple"),
    ({"model": "inception_v3", "input_size": 64}, "below inception_v3's minimum of 75 px"),
    ({"model": "inception_v3", "input_size": 224, "aux_loss_weight": 0.4},
     "below the 299 px that inception_v3's auxiliary classifier needs"),
    ({"model": "vgg16", "eval_size": 24},
     "below vgg16's minimum of 32 px (its feature maps vanish): use eval_size>=32"),
    ({"model": "vgg16", "eval_size": 8}, "out of range [16, 1024]"),  # the config's floor first
    ({"model": "scratch_cnn", "input_size": 64, "eval_size": 96}, "dense layer is built for its input size"),
    ({"model": "resnet50", "input_size": 2000}, "out of range [16, 1024]"),
])
def test_sizes_a_model_cannot_take_are_one_line_errors(settings, message):
    with pytest.raises(UserError, match=None) as caught:
        parse_run_config(settings)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_inception_below_its_aux_heads_size_trains_without_them_and_says_so(capsys):
    import agent

    assert parse_run_config({"model": "inception_v3"}).aux_loss_weight is None  # 299: the default aux loss
    config = agent.run_config_from_args(["--model=inception_v3", "--input_size=224"])
    assert config.aux_loss_weight == 0.0
    assert "auxiliary classifier needs >=299 px; at input_size=224 it trains without it" in capsys.readouterr().out
    assert parse_run_config({"model": "inception_v3", "input_size": 224, "aux_loss_weight": 0}).aux_loss_weight == 0.0


@pytest.mark.parametrize("name", [n for n in backbone_names() if n != "scratch_cnn"])
def test_the_default_size_is_each_weights_own_preprocessing_exactly(name):
    """Nothing changes for a user who sets no size: every weights version trains and validates at its own crop and
    resize (ResNet-50 V2's 232, Inception's 342/299, EfficientNetV2-S's 384), as before sizes were parameters."""
    spec = get_spec(name)
    for member in spec.weights_enum:
        if spec.weights_choices and member.name not in spec.weights_choices:
            continue
        preset = member.transforms()
        config = parse_run_config({"model": name, "weights": member.name})
        pre = preprocessing_for(name, config.weights, size=config.input_size)
        assert (pre.crop_size, pre.resize_size, pre.interpolation) == (preset.crop_size[0], preset.resize_size[0],
                                                                       preset.interpolation.value)
        assert config.input_size == config.eval_size == preset.crop_size[0]
        assert pre.mean == tuple(preset.mean) and pre.std == tuple(preset.std)


@pytest.mark.parametrize("name", [n for n in backbone_names() if n != "scratch_cnn"])
def test_the_registrys_native_sizes_are_the_weights_own(name):
    """The default sizes are read without torchvision (`check` parses thousands of configs): held here to the weights'
    own transforms(), member for member, so the two cannot drift apart."""
    spec = get_spec(name)
    allowed = [m.name for m in spec.weights_enum if not spec.weights_choices or m.name in spec.weights_choices]
    assert dict(spec.native_sizes) == {m: spec.weights_enum[m].transforms().crop_size[0] for m in allowed}
    assert spec.native_size("imagenet") == spec.native_size("none") == dict(spec.native_sizes)[spec.default_weights]


def test_an_explicit_default_size_is_the_same_config_and_other_sizes_keep_the_weights_ratio():
    default = parse_run_config({"model": "resnet50"})
    assert config_hash(default) == config_hash(
        parse_run_config({"model": "resnet50", "input_size": 224, "eval_size": 224}))
    assert config_hash(parse_run_config({"model": "resnet50", "input_size": 288})) != config_hash(default)
    v2 = preprocessing_for("resnet50", "imagenet", size=352)  # V2: 232/224
    assert (v2.crop_size, v2.resize_size) == (352, round(352 * 232 / 224)) == (352, 365)
    v1 = preprocessing_for("resnet50", "IMAGENET1K_V1", size=288)  # V1: 256/224
    assert (v1.crop_size, v1.resize_size) == (288, 329)
    inception = preprocessing_for("inception_v3", "imagenet", size=384)  # 342/299
    assert inception.resize_size == round(384 * 342 / 299) == 439
    scratch = preprocessing_for("scratch_cnn", "none", size=None)
    assert (scratch.crop_size, scratch.resize_size) == (224, 256)


def small_vit(image_size: int = 32) -> VisionTransformer:
    return VisionTransformer(image_size=image_size, patch_size=16, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=8,
                             num_classes=3)


def test_vit_position_embeddings_are_torchvisions_interpolation_and_the_staged_input_matches_torchvision():
    torch.manual_seed(0)
    net = small_vit(32)
    state = {"encoder.pos_embedding": net.encoder.pos_embedding.detach().clone()}
    _vit_resize(net, 64)
    expected = interpolate_embeddings(64, 16, state)["encoder.pos_embedding"]
    assert net.image_size == 64 and torch.equal(net.encoder.pos_embedding, expected)
    # The staged patch embedding is torchvision's _process_input + class token + positions, at the new size.
    x = torch.randn(2, 3, 64, 64)
    reference = net._process_input(x)
    reference = torch.cat([net.class_token.expand(2, -1, -1), reference], dim=1) + net.encoder.pos_embedding
    net.eval()
    assert torch.allclose(_vit_patch_embed(net, x), reference)
    # Evaluating at another size than trained (FixRes) interpolates on the fly: the same as a net resized for it.
    resized = small_vit(64)
    resized.load_state_dict(net.state_dict())
    _vit_resize(resized, 96)
    resized.eval()
    assert torch.allclose(_vit_patch_embed(net, torch.ones(1, 3, 96, 96)),
                          _vit_patch_embed(resized, torch.ones(1, 3, 96, 96)))


@pytest.mark.slow
def test_vit_b_16_from_a_224_px_file_at_288_px_has_torchvisions_interpolated_embeddings(tmp_path):
    torch.manual_seed(0)
    net = tvm.vit_b_16(weights=None)
    path = tmp_path / "vit_224.pt"
    torch.save(net.state_dict(), path)
    model = build_model("vit_b_16", NUM_CLASSES, str(path), input_size=288)
    expected = interpolate_embeddings(288, 16, net.state_dict())["encoder.pos_embedding"]
    assert torch.equal(model.net.encoder.pos_embedding, expected)
    reference = tvm.vit_b_16(weights=None, image_size=288)
    reference.load_state_dict(interpolate_embeddings(288, 16, net.state_dict()))
    reference.heads.head = model.net.heads.head
    x = torch.randn(1, 3, 288, 288)
    model.eval(), reference.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-5)


# --- caches keyed on size -------------------------------------------------------------------------

def test_image_and_feature_caches_key_on_the_size(nature_dir, tmp_path):
    from trainer import metrics as M
    from trainer.run import run_training

    base = {"data_dir": str(nature_dir), "cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "runs"),
            "wandb_mode": "disabled", "num_workers": 0, "checkpoint_store": "local", "model": "resnet18",
            "weights": "none",
            "strategy": "head_only", "augment": "none", "epochs": 1, "batch_size": 8}
    summaries = {size: run_training(parse_run_config({**base, "input_size": size, "run_id": f"s{size}"})).summary
                 for size in (32, 48)}
    assert {s[M.STATE] for s in summaries.values()} == {M.FINISHED} and all(s["feature_cache_depth"] > 0
                                                                            for s in summaries.values())
    cache = Path(base["cache_dir"])
    images, features = sorted(cache.glob("images-*.u8")), sorted(cache.glob("features-*.f16"))
    assert len(images) == 2 and len(features) == 2  # a size never reads another size's pixels or features
    assert {json.loads(p.with_suffix(".json").read_text())["size"] for p in images} == {round(32 * 256 / 224),
                                                                                        round(48 * 256 / 224)}
    # Evaluating at another size than training: validation gets its own images and features at that size.
    fixres = run_training(parse_run_config({**base, "input_size": 32, "eval_size": 48, "run_id": "fixres"})).summary
    assert fixres[M.STATE] == M.FINISHED and (fixres[M.INPUT_SIZE], fixres[M.EVAL_SIZE]) == (32, 48)
    assert fixres["eval_preprocessing"]["crop_size"] == 48 and fixres["preprocessing"]["crop_size"] == 32
    assert len(list(cache.glob("features-*-train.f16"))) == 1 and len(list(cache.glob("features-*-val.f16"))) == 1
    # ... of the validation images only: the 48 px run's whole-folder cache is not it, nor does it hold a train image.
    counts = {json.loads(p.with_suffix(".json").read_text())["count"] for p in cache.glob("images-*-55-c48-*.u8")}
    assert counts == {fixres["num_train"] + fixres["num_val"], fixres["num_val"]}


def build_eval_size_inputs(data_dir: Path, cache_dir: Path, split_seed: int = 0, eval_crop: int = 48):
    """build_inputs of a run at 32 px validated at `eval_crop` px, images cached, no model (no feature cache)."""
    from contextlib import nullcontext

    from trainer.inputs import InputSettings, build_inputs, load_split

    settings = InputSettings(str(data_dir), str(cache_dir), split_seed=split_seed, feature_cache=False, num_workers=0)
    data = load_split(settings)
    pre = Preprocessing(32, 37, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    eval_pre = Preprocessing(eval_crop, eval_crop * 37 // 32, pre.mean, pre.std)  # 32 px: `pre` itself
    inputs = build_inputs(settings, data, pre, None, 0, torch.device("cpu"), nullcontext, 8, eval_pre=eval_pre)
    return data, eval_pre, inputs


@pytest.fixture
def decoded(monkeypatch) -> list[tuple[str, int]]:
    """(file name, resize size) of every image decoded into an image cache."""
    import data.cache

    seen, real = [], data.cache.decode_working
    monkeypatch.setattr(data.cache, "decode_working",
                        lambda path, size, *a, **k: seen.append((Path(path).name, size)) or real(path, size, *a, **k))
    return seen


def test_validation_at_its_own_size_caches_the_validation_images_only_and_serves_the_same_pixels(
        nature_dir, tmp_path, decoded):
    """FixRes: nothing but the validation rows is read at the eval size, so nothing else is decoded or stored there
    (on iNaturalist-12K 2,000 images, not 10,000); the pixels served are those of a whole-folder cache."""
    from data.cache import DecodedImageCache

    cache_dir = tmp_path / "cache"
    data, eval_pre, inputs = build_eval_size_inputs(nature_dir, cache_dir)
    val_names = sorted(Path(data.index.paths[i]).name for i in data.split.val)
    assert sorted(name for name, size in decoded if size == eval_pre.resize_size) == val_names
    (eval_cache,) = cache_dir.glob(f"images-*-{eval_pre.resize_size}-c48-*.u8")
    assert json.loads(eval_cache.with_suffix(".json").read_text())["count"] == len(data.split.val)
    assert eval_cache.stat().st_size == len(data.split.val) * eval_pre.resize_size ** 2 * 3  # what the disk holds

    served = [(images, labels) for images, labels in inputs.val_loader.epoch(0)]
    whole = DecodedImageCache.build_or_open(data.index, eval_pre.resize_size, eval_pre.interpolation,
                                            tmp_path / "whole", progress=False, crop_size=eval_pre.crop_size)
    assert torch.equal(torch.cat([images for images, _ in served]), torch.from_numpy(whole.read(data.split.val)))
    assert torch.equal(torch.cat([labels for _, labels in served]), torch.from_numpy(data.index.labels[data.split.val]))

    # The next run of the sweep with this split reuses it; a run with another split builds its own.
    decoded.clear()
    build_eval_size_inputs(nature_dir, cache_dir)
    assert decoded == [] and len(list(cache_dir.glob(f"images-*-{eval_pre.resize_size}-c48-*.u8"))) == 1
    other, _, other_inputs = build_eval_size_inputs(nature_dir, cache_dir, split_seed=1)
    assert not np.array_equal(other.split.val, data.split.val)
    assert sorted(name for name, size in decoded if size == eval_pre.resize_size) == sorted(
        Path(other.index.paths[i]).name for i in other.split.val)
    assert len(list(cache_dir.glob(f"images-*-{eval_pre.resize_size}-c48-*.u8"))) == 2
    assert torch.equal(torch.cat([images for images, _ in other_inputs.val_loader.epoch(0)]),
                       torch.from_numpy(whole.read(other.split.val)))


def test_at_one_size_training_and_validation_share_one_store_of_the_whole_folder(nature_dir, tmp_path, decoded):
    data, eval_pre, inputs = build_eval_size_inputs(nature_dir, tmp_path / "cache", eval_crop=32)
    assert inputs.val_loader.loader.dataset.store is inputs.train_loader.loader.dataset.store
    (cache,) = (tmp_path / "cache").glob("images-*.u8")
    assert json.loads(cache.with_suffix(".json").read_text())["count"] == len(data.index) == len(decoded)


@pytest.mark.parametrize("use_cache", [True, False])
def test_a_store_of_some_rows_serves_them_and_refuses_any_other_image(nature_dir, tmp_path, use_cache):
    import pickle

    from data.loading import DecodingStore
    from data.scan import scan_folder
    from trainer.inputs import image_store

    index = scan_folder(nature_dir / "inaturalist_12K" / "train", verbose=False)
    pre, rows = Preprocessing(16, 18, (0.5,) * 3, (0.25,) * 3), np.array([1, 4, 5, 9, 20])
    store = pickle.loads(pickle.dumps(image_store(index, pre, tmp_path, use_cache, rows=rows)))  # as workers get it
    asked = np.array([20, 1, 9, 9, 4])
    assert np.array_equal(store.read(asked), DecodingStore(index, 18, crop_size=16).read(asked))
    for outside in ([2], [1, 21], [len(index) + 3]):
        with pytest.raises(IndexError):
            store.read(np.array(outside))


# --- weights named truthfully ---------------------------------------------------------------------

def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def torchvision_file(tmp_path, monkeypatch):
    """A file standing in for torchvision's resnet18 ImageNet download: named `resnet18-<prefix of its SHA-256>.pth`,
    with IMAGENET1K_V1's URL pointed at that name (the real file cannot be downloaded here). The hub cache is empty."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    torch.manual_seed(1)
    staging = tmp_path / "staging.pth"
    torch.save(tvm.resnet18(weights=None).state_dict(), staging)
    path = tmp_path / "attached" / f"resnet18-{sha256(staging)[:8]}.pth"
    path.parent.mkdir()
    staging.rename(path)
    member = tvm.ResNet18_Weights.IMAGENET1K_V1
    monkeypatch.setattr(member.value, "url", f"https://download.pytorch.org/models/{path.name}")
    return path


def test_a_torchvision_weights_file_given_by_path_is_its_version(torchvision_file):
    spec = get_spec("resnet18")
    resolved = resolve_weights(spec, str(torchvision_file))
    assert resolved.kind == "imagenet" and resolved.version == "ResNet18_Weights.IMAGENET1K_V1"
    assert resolved.sha256 == sha256(torchvision_file)
    model = build_model("resnet18", NUM_CLASSES, str(torchvision_file))  # loaded from the file: the hub cache is empty
    assert model.weights_version == "ResNet18_Weights.IMAGENET1K_V1" and model.weights_file == str(torchvision_file)
    state = torch.load(torchvision_file, weights_only=True)
    assert torch.equal(model.net.conv1.weight, state["conv1.weight"])
    assert input_geometry("resnet18", str(torchvision_file)).start == "imagenet"  # and its own preprocessing


def test_a_renamed_or_altered_torchvision_file_is_a_warm_start_with_both_hashes_named(torchvision_file, tmp_path,
                                                                                      capsys):
    spec = get_spec("resnet18")
    renamed = tmp_path / "my_resnet18.pth"
    renamed.write_bytes(torchvision_file.read_bytes())
    resolved = resolve_weights(spec, str(renamed))
    assert resolved.kind == "file" and resolved.sha256 == sha256(renamed) and resolved.version == f"file:{renamed}"
    assert capsys.readouterr().out == ""  # a name of its own: a warm start, nothing to warn about
    state = torch.load(torchvision_file, weights_only=True)
    state["fc.bias"] += 1  # altered in place: the name still says IMAGENET1K_V1, the content does not
    torch.save(state, torchvision_file)
    altered = resolve_weights(spec, str(torchvision_file))
    assert altered.kind == "file" and altered.version == f"file:{torchvision_file}"
    warning = capsys.readouterr().out
    expected_prefix = torchvision_file.name.split("-")[1].split(".")[0]
    assert warning.count("\n") == 1 and "named like torchvision's ResNet18_Weights.IMAGENET1K_V1" in warning
    assert f"starts {sha256(torchvision_file)[:8]}, not {expected_prefix}" in warning


def test_an_offline_run_from_an_attached_torchvision_file_records_its_version_and_tests_without_the_hub(
        torchvision_file, nature_dir, tmp_path):
    from trainer import metrics as M
    from trainer.evaluate import evaluate_on_test_set
    from trainer.run import run_training

    config = parse_run_config({"data_dir": str(nature_dir), "cache_dir": str(tmp_path / "cache"),
                               "output_dir": str(tmp_path / "runs"),
                               "wandb_mode": "disabled", "num_workers": 0, "checkpoint_store": "local",
                               "model": "resnet18",
                               "weights": str(torchvision_file), "strategy": "head_only", "input_size": 32, "epochs": 1,
                               "batch_size": 8, "run_id": "attached"})
    outcome = run_training(config)
    assert outcome.state == M.FINISHED
    assert outcome.summary[M.WEIGHTS_VERSION] == "ResNet18_Weights.IMAGENET1K_V1"  # not file:...
    assert outcome.summary[M.WEIGHTS_SHA256] == sha256(torchvision_file)
    best = torch.load(outcome.folder / "best.pt", weights_only=True)
    assert best["frozen_base"]["file"] == str(torchvision_file)  # lean: the frozen stages are that file's
    assert not (tmp_path / "torch_home").exists() or not any((tmp_path / "torch_home").rglob("*.pth"))
    assert 0 <= evaluate_on_test_set(outcome.folder)[M.TEST_ACC] <= 1  # rebuilt from the attached file, offline


def test_a_warm_start_uses_the_normalisation_given_or_its_sidecar_and_says_which(tmp_path):
    from trainer.run import normalisation_note, run_preprocessing

    path = tmp_path / "mine.pt"
    torch.save(tvm.resnet18(weights=None).state_dict(), path)
    config = parse_run_config({"model": "resnet18", "weights": str(path)})
    train, _ = run_preprocessing(config)
    assert train.mean == (0.485, 0.456, 0.406) and config.input_size == 224  # the architecture's ImageNet metadata
    note = normalisation_note(config, train)
    assert "the architecture's ImageNet metadata; pass --mean/--std or a mine.pt.json" in note
    (tmp_path / "mine.pt.json").write_text(
        json.dumps({"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "input_size": 64}))
    config = parse_run_config({"model": "resnet18", "weights": str(path)})
    train, evaluation = run_preprocessing(config)
    assert (train.mean, train.std, config.input_size, evaluation.crop_size) == ((0.5,) * 3, (0.25,) * 3, 64, 64)
    assert str(tmp_path / "mine.pt.json") in normalisation_note(config, train)
    given = parse_run_config({"model": "resnet18", "weights": str(path), "mean": "0.1,0.2,0.3", "std": [0.3, 0.3, 0.3]})
    train, _ = run_preprocessing(given)
    assert train.mean == (0.1, 0.2, 0.3) and "--mean/--std" in normalisation_note(given, train)
    # ImageNet weights bring their own normalisation: a --mean there is dropped, with the reason.
    imagenet = parse_run_config({"model": "resnet18", "mean": "0.1,0.2,0.3"})
    assert imagenet.mean is None
    (tmp_path / "mine.pt.json").write_text("{not json")
    with pytest.raises(UserError, match="mine.pt.json cannot be read"):
        parse_run_config({"model": "resnet18", "weights": str(path)})


# --- nothing changes at the default size ------------------------------------------------------------

# (train_loss, val_loss, val_acc) per epoch of these runs, as the code before sizes were parameters trained them
# (commit f7c7fb5, on `make_image_folder(classes=3, train_per_class=20, test_per_class=2)`, one torch thread).
BEFORE = {
    "scratch": [(0.9769923587640127, 1.0995408693949382, 1 / 3), (0.5348022108276685, 1.0668035348256428, 1 / 3)],
    "r18none": [(1.231636881828308, 1.2396899859110515, 1 / 3), (1.0953485369682312, 1.079164981842041, 1 / 3)],
    "r18": [(0.7096241687734922, 1.9017283121744792, 1 / 3), (0.18282045548160872, 0.40984543164571124, 5 / 6)],
}
RUNS = {
    "scratch": {"model": "scratch_cnn", "filters": 8, "dense_units": 16, "input_size": 64},
    # the feature cache
    "r18none": {"model": "resnet18", "weights": "none", "strategy": "head_only", "augment": "none"},
    # Random resized crops at 224 px. backbone_lr_mult as the default was then: random init now defaults to 1.
    "r18": {"model": "resnet18", "weights": "none", "strategy": "last_k", "k_layers": 1, "backbone_lr_mult": 0.1},
}


@pytest.fixture(scope="module")
def before_data(tmp_path_factory):
    from data.synthetic import make_image_folder

    return make_image_folder(tmp_path_factory.mktemp("before"), classes=3, train_per_class=20, test_per_class=2,
                             workers=1)


@pytest.mark.parametrize("run_id", [pytest.param(r, marks=pytest.mark.slow if r == "r18" else ()) for r in RUNS])
def test_a_run_at_the_default_size_trains_metric_for_metric_what_it_trained_before(run_id, before_data, tmp_path):
    from trainer.run import run_training

    common = {"data_dir": str(before_data), "cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "runs"),
              "wandb_mode": "disabled", "num_workers": 0, "checkpoint_store": "local", "epochs": 2, "batch_size": 8}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the runs above were measured: sums over two threads round otherwise, and drift
    try:
        outcome = run_training(parse_run_config({**common, **RUNS[run_id], "run_id": run_id}))
    finally:
        torch.set_num_threads(threads)
    rows = [json.loads(line) for line in (outcome.folder / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == len(BEFORE[run_id])
    for row, (train_loss, val_loss, val_acc) in zip(rows, BEFORE[run_id]):
        # 1e-5: another CPU's kernels may round otherwise; a pixel or a schedule that changed moves these by far more.
        assert row["train_loss"] == pytest.approx(train_loss, abs=1e-5) and row["val_loss"] == pytest.approx(val_loss,
                                                                                                             abs=1e-5)
        assert row["val_acc"] == pytest.approx(val_acc)


def test_a_vit_at_another_size_keeps_its_interpolated_positions_in_lean_checkpoints():
    """Frozen stages on ImageNet weights are left out of checkpoints as those weights; a ViT's position embeddings at
    another size are no longer those weights but an interpolation of them, which another machine could round a last bit
    otherwise: they stay in the checkpoint, so its reload never hangs on a fingerprint of floating-point rounding."""
    from trainer.run import _frozen_base

    model = build_model("vit_b_16", NUM_CLASSES, "none")
    model.weights_version = "ViT_B_16_Weights.IMAGENET1K_V1"  # as a run from the hub's file records it
    native = _frozen_base(model, 1, parse_run_config({"model": "vit_b_16"}))
    resized = _frozen_base(model, 1, parse_run_config({"model": "vit_b_16", "input_size": 288}))
    assert "net.encoder.pos_embedding" in native["keys"] and "net.encoder.pos_embedding" not in resized["keys"]
    assert set(native["keys"]) - set(resized["keys"]) == {"net.encoder.pos_embedding"}


def test_a_warm_start_keeps_a_head_only_for_the_classes_it_was_trained_on(tmp_path, capsys):
    """A run checkpoint says which classes its head maps to: another task with as many classes gets a new head, since
    the old one would map every image to an unrelated class. A plain state dict says nothing: its head is kept, and the
    run says what it took its classes to be."""
    import torchvision.models as tvm

    torch.manual_seed(0)
    source = build_model("resnet18", 3, "none")
    run_file = tmp_path / "run.pt"
    torch.save({"model": source.state_dict(), "identity": {"model": "resnet18", "classes": ["ant", "bee", "cat"]}},
               run_file)
    same = build_model("resnet18", 3, str(run_file), classes=("ant", "bee", "cat"))
    assert torch.equal(same.net.fc.weight, source.net.fc.weight) and capsys.readouterr().out == ""
    other = build_model("resnet18", 3, str(run_file), classes=("dog", "eel", "fox"))
    assert not torch.equal(other.net.fc.weight, source.net.fc.weight)
    assert torch.equal(other.net.layer4[0].conv1.weight, source.net.layer4[0].conv1.weight)  # the body is kept
    assert "the head of" in capsys.readouterr().out
    plain = tmp_path / "plain.pt"
    net = tvm.resnet18(weights=None, num_classes=3)
    torch.save(net.state_dict(), plain)
    kept = build_model("resnet18", 3, str(plain), classes=("dog", "eel", "fox"))
    assert torch.equal(kept.net.fc.weight, net.fc.weight)
    out = capsys.readouterr().out
    assert "has this run's 3 outputs and is kept" in out and "remove its fc.* tensors" in out


def test_random_init_trains_its_backbone_at_the_heads_rate_by_default():
    """Discriminative rates protect pretrained weights; random
    init has none to protect, so its backbone learns at lr."""
    assert parse_run_config({"model": "resnet18", "weights": "none", "strategy": "full"}).backbone_lr_mult == 1.0
    assert parse_run_config({"model": "resnet18", "strategy": "full"}).backbone_lr_mult == 0.1
    assert parse_run_config({"model": "resnet18", "weights": "none", "backbone_lr_mult": 0.3}).backbone_lr_mult == 0.3
