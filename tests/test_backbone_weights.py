"""The references' ImageNet backbones as backbone_weights: each file layout loads into its preset's backbone and
computes the reference's features; by name through a mirror, verified and cached; every misfit a one-liner."""

import dataclasses
import glob
import os

import keras
import numpy as np
import pytest
import torch

import keras_pspnet
from keras_pspnet.config import load_config
from keras_pspnet.convert import backbone
from keras_pspnet.download import MIRROR_ENV
from keras_pspnet.model import IMAGENET_MEAN, IMAGENET_STD
from tests import mmseg_reference, semseg_reference
from tests.checkpoints import reference_logits, serve, sha256
from tests.mmseg_reference import randomize_batchnorm

TINY_V1C = {"stem_widths": (4, 4, 8), "base_width": 8}
HEADS = {"head_channels": 8, "aux_channels": 8}  # tiny heads: the backbone is what is compared
CONFIGS = os.path.join(os.path.dirname(__file__), "..", "training", "configs")


def _classifier(state: dict, features: int, prefix: str = "fc") -> dict:
    """The state dict with an ImageNet classifier, as the published files have."""
    return {**state, f"{prefix}.weight": torch.randn(1000, features), f"{prefix}.bias": torch.randn(1000)}


def v1c_file(path, depth=50, *, wrapped=True, seed=0):
    """mmsegmentation's ImageNet ResNetV1c (tiny widths): stem.N, layerX.Y..., fc."""
    torch.manual_seed(seed)
    reference = mmseg_reference.ResNetV1c(depth, True, TINY_V1C["stem_widths"], TINY_V1C["base_width"]).eval()
    randomize_batchnorm(reference, seed)
    state = _classifier(reference.state_dict(), TINY_V1C["base_width"] * (32 if depth >= 50 else 8))
    torch.save({"meta": {}, "state_dict": state} if wrapped else state, str(path))
    return reference, str(path)


def relative_max_error(actual, expected) -> float:
    return float(np.abs(np.asarray(actual) - expected).max() / np.abs(expected).max())


def backbone_output(model, layer, pixels):
    return keras.Model(model.input, model.get_layer(layer).output).predict(pixels, verbose=0)


@pytest.fixture
def pixels(rng):
    return rng.uniform(0, 255, (1, 33, 33, 3)).astype("float32")


def test_mmseg_resnet_v1c_layout_and_fresh_heads(tmp_path, pixels):
    reference, path = v1c_file(tmp_path / "resnet50_v1c.pth")
    keras.utils.set_random_seed(3)
    model = keras_pspnet.from_preset("pspnet_resnet50_v1c", 5, backbone_weights=path, **TINY_V1C, **HEADS)
    expected = reference_logits(reference, pixels)[-1]
    assert relative_max_error(backbone_output(model, "conv5_block3_out", pixels), expected) < 1e-4
    np.testing.assert_allclose(model.get_layer("normalize").mean.numpy().ravel(), IMAGENET_MEAN, rtol=1e-6)
    np.testing.assert_allclose(np.sqrt(model.get_layer("normalize").variance.numpy().ravel()), IMAGENET_STD,
                               rtol=1e-6)
    keras.utils.set_random_seed(3)
    fresh = keras_pspnet.from_preset("pspnet_resnet50_v1c", 5, **TINY_V1C, **HEADS)
    for name in ("ppm_1_conv", "head_conv", "head_bn", "classifier"):  # the heads keep their initialisation
        for loaded, initial in zip(model.get_layer(name).get_weights(), fresh.get_layer(name).get_weights()):
            np.testing.assert_array_equal(loaded, initial)


def test_torchvision_resnet_layout(tmp_path, pixels):
    torch.manual_seed(1)
    reference = mmseg_reference.ResNetV1c(50, False, (8,), 8).eval()  # conv1/bn1 7x7 stem: torchvision's keys
    randomize_batchnorm(reference, 1)
    path = str(tmp_path / "resnet50.pth")
    torch.save(_classifier(reference.state_dict(), 256), path)  # torchvision: a bare state dict with fc
    model = keras_pspnet.from_preset("pspnet_resnet50_v1b", 5, backbone_weights=path, base_width=8, **HEADS)
    expected = reference_logits(reference, pixels)[-1]
    assert relative_max_error(backbone_output(model, "conv5_block3_out", pixels), expected) < 1e-4


def test_mmcls_mobilenet_v2_layout(tmp_path, pixels):
    torch.manual_seed(2)
    reference = mmseg_reference.MobileNetV2().eval()
    randomize_batchnorm(reference, 2)
    last = mmseg_reference.ConvModule6(320, 1280, 1)  # mmcls' conv2, which mmsegmentation's backbone lacks
    state = {"backbone." + key: value for key, value in reference.state_dict().items()}
    state.update({"backbone.conv2." + key: value for key, value in last.state_dict().items()})
    path = str(tmp_path / "mobilenet_v2_batch256_imagenet.pth")
    torch.save({"meta": {"epoch": 300}, "state_dict": _classifier(state, 1280, "head.fc")}, path)
    model = keras_pspnet.from_preset("pspnet_mobilenet_v2_mmseg", 5, backbone_weights=path, pool_channels=8,
                                     **HEADS)
    expected = reference_logits(reference, pixels)[-1]
    assert relative_max_error(backbone_output(model, "block_16_project_BN", pixels), expected) < 1e-4
    with pytest.raises(ValueError) as error:  # the keras.applications layout: another padding, epsilon, end
        keras_pspnet.from_preset("pspnet_mobilenet_v2", 5, backbone_weights=path, **HEADS)
    assert str(error.value).startswith(f"{path}: needs a MobileNetV2 (mmsegmentation's) backbone (preset "
                                       "pspnet_mobilenet_v2_mmseg); the model's backbone is a MobileNetV2 (keras")
    assert "\n" not in str(error.value)


def test_the_authors_deep_stem_resnet_layout(tmp_path, pixels):
    torch.manual_seed(4)
    network = semseg_reference.PSPNet(50, base_width=8, head=16).eval()
    randomize_batchnorm(network, 4)
    stem = {"layer0.0": "conv1", "layer0.1": "bn1", "layer0.3": "conv2", "layer0.4": "bn2", "layer0.6": "conv3",
            "layer0.7": "bn3"}  # their resnet.py names the deep stem's modules conv1..3, bn1..3
    state = {}
    for key, value in network.state_dict().items():
        module, _, param = key.rpartition(".")
        if module in stem:
            state[f"{stem[module]}.{param}"] = value
        elif key.startswith("layer"):
            state[key] = value
    path = str(tmp_path / "resnet50_v2.pth")
    torch.save(_classifier(state, 256), path)  # a bare state dict, as initmodel/resnet50_v2.pth
    model = keras_pspnet.from_preset("pspnet_resnet50_semseg", 5, backbone_weights=path, stem_widths=(8, 8, 16),
                                     base_width=8, **HEADS)
    features = torch.nn.Sequential(*(getattr(network, f"layer{i}") for i in range(5)))
    expected = reference_logits(features, pixels)[0]
    assert relative_max_error(backbone_output(model, "conv5_block3_out", pixels), expected) < 1e-4


def test_by_name_through_a_mirror_verified_cached_and_misfits_refused(tmp_path, monkeypatch, pixels):
    host = tmp_path / "host"
    host.mkdir()
    reference, staged = v1c_file(host / "staging.pth", depth=18, wrapped=False)
    file_name = f"resnet18_v1c-{sha256(staged)[:8]}.pth"  # named with its own SHA-256 prefix, as OpenMMLab's
    os.replace(staged, host / file_name)
    entry = backbone.BACKBONE_WEIGHTS["resnet18_v1c"]
    monkeypatch.setitem(backbone.BACKBONE_WEIGHTS, "resnet18_v1c", dataclasses.replace(entry, file_name=file_name))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "cache"))
    expected = reference_logits(reference, pixels)[-1]
    with serve(host) as url:
        monkeypatch.setenv(MIRROR_ENV, url)
        model = keras_pspnet.from_preset("pspnet_resnet18_v1c", 5, backbone_weights="resnet18_v1c", **TINY_V1C)
    assert relative_max_error(backbone_output(model, "conv5_block2_out", pixels), expected) < 1e-4
    cached = os.path.join(tmp_path, "cache", "keras_pspnet", "checkpoints")
    assert sorted(os.listdir(cached)) == [file_name, file_name + ".sha256"]
    monkeypatch.setenv(MIRROR_ENV, "http://127.0.0.1:9/")  # nothing listens there: offline from now on
    again = keras_pspnet.build_pspnet(5, "resnet18", stem="deep", style="pytorch", contract_dilation=True,
                                      backbone_weights="open-mmlab://resnet18_v1c", **TINY_V1C)  # mmseg's spelling
    np.testing.assert_array_equal(again.get_layer("stem_1_conv").get_weights()[0],
                                  model.get_layer("stem_1_conv").get_weights()[0])

    def refused(preset, weights, **kwargs):
        with pytest.raises((ValueError, FileNotFoundError)) as error:
            keras_pspnet.from_preset(preset, 5, backbone_weights=weights, **kwargs)
        assert "\n" not in str(error.value)
        return str(error.value)

    needs = "resnet18_v1c: needs a ResNetV1c-18 backbone (preset pspnet_resnet18_v1c with stem_widths=(4, 4, 8), " \
            "base_width=8); the model's backbone is a ResNet-"
    assert refused("pspnet_resnet50_v1c", "resnet18_v1c", **TINY_V1C).startswith(needs + "50 (deep stem 4-4-8")
    assert refused("pspnet_resnet18_v1b", "resnet18_v1c", base_width=8).startswith(needs + "18 (7x7 stem 8")
    assert refused("pspnet_resnet50", "resnet18_v1c", base_width=8).endswith("keras style).")
    assert "not 'imagenet', a weights file (.h5, .pth) nor a known name (mobilenet_v2_mmcls, resnet101_v1c" in \
        refused("pspnet_resnet18_v1c", "resnet18_v1d")
    bad = f"resnet18_v1c-{'0' * 8}.pth"  # a download whose digest is not the one in its name
    os.replace(host / file_name, host / bad)
    monkeypatch.setitem(backbone.BACKBONE_WEIGHTS, "resnet18_v1c", dataclasses.replace(entry, file_name=bad))
    monkeypatch.setenv(MIRROR_ENV, str(host))  # a local folder mirror
    assert "does not match 00000000 published for resnet18_v1c" in refused("pspnet_resnet18_v1c", "resnet18_v1c")
    assert not os.path.exists(os.path.join(cached, bad))  # removed: the next run downloads it anew


def test_shipped_configs_start_from_the_references_backbones(tmp_path, monkeypatch):
    configs = {os.path.basename(path): load_config(path) for path in glob.glob(os.path.join(CONFIGS, "*.yaml"))}
    starts = {name: (config.model.get("preset"), config.backbone_weights) for name, config in configs.items()
              if config.backbone_weights}
    assert starts == {
        "ade20k_pspnet_r50_mmseg.yaml": ("pspnet_resnet50_v1c", "resnet50_v1c"),
        "cityscapes_pspnet_r50_mmseg.yaml": ("pspnet_resnet50_v1c", "resnet50_v1c"),
        "ade20k_pspnet_r50.yaml": ("pspnet_resnet50_semseg", "initmodel/resnet50_v2.pth"),
        "voc2012_pspnet_r50.yaml": ("pspnet_resnet50_semseg", "initmodel/resnet50_v2.pth"),
        "ade20k_pspnet_r101.yaml": ("pspnet_resnet101_semseg", "initmodel/resnet101_v2.pth"),
        "cityscapes_pspnet_r101.yaml": ("pspnet_resnet101_semseg", "initmodel/resnet101_v2.pth")}
    # The published files fit their presets' backbones (read off the models as off a checkpoint's keys).
    v1c = keras_pspnet.from_preset("pspnet_resnet50_v1c", 2)
    assert backbone._model_architecture(v1c) == {"family": "resnet", "blocks": (3, 4, 6, 3), "bottleneck": True,
                                                 "stem": (32, 32, 64), "base_width": 64, "style": "pytorch"}
    authors = keras_pspnet.from_preset("pspnet_resnet50_semseg", 2)
    assert backbone._model_architecture(authors)["stem"] == (64, 64, 128)
    monkeypatch.chdir(tmp_path)  # no initmodel/ here: a one-line error saying where the authors publish it
    with pytest.raises(FileNotFoundError) as error:
        keras_pspnet.from_preset("pspnet_resnet101_semseg", 150, backbone_weights="initmodel/resnet101_v2.pth")
    assert str(error.value).startswith("initmodel/resnet101_v2.pth: not found; the PSPNet authors publish "
                                       "resnet101_v2.pth (their deep-stem ImageNet ResNet) on Google Drive only")
    assert "https://github.com/hszhao/semseg" in str(error.value) and "\n" not in str(error.value)
