"""Converters against PyTorch modules with each source's structure and key names (checked against mmsegmentation
1.2.2 and hszhao/semseg themselves), at sizes where the pyramid bins overlap."""

import re

import keras
import numpy as np
import pytest
import torch

from keras_pspnet import from_mmseg, from_preset, from_semseg, model_metadata
from keras_pspnet.cli import main
from keras_pspnet.data.classes import CLASS_SETS
from keras_pspnet.finetune import transfer_weights
from keras_pspnet.model import uses_align_corners
from tests.checkpoints import (
    CONFIG_0X_R18,
    CONFIG_1X_R18_769,
    CONFIG_2020_R18_769,
    config_text,
    mmseg_checkpoint,
    reference_logits,
    semseg_checkpoint,
)
from tests.conftest import relative_error

# id: (reference structure, from_mmseg arguments, checkpoint file layout)
ARCHITECTURES = {
    "r50-v1c": ({"depth": 50}, {}, "legacy"),  # the 2020 checkpoints' torch < 1.6 layout
    "r18-v1b": ({"depth": 18, "deep_stem": False, "stem_widths": (8,)}, {}, "zip"),
    "r50-v1b-d32": ({"depth": 50, "deep_stem": False, "stem_widths": (8,), "output_stride": 32},
                    {"output_stride": 32, "dilations": (1, 1, 2, 4)}, "zip"),
    "r18-align-corners": ({"depth": 18, "align_corners": True}, {"align_corners": True}, "zip"),
    "mobilenet-v2": ({"depth": "mobilenet_v2", "widen_factor": 0.25}, {}, "zip"),
    "bins-6-3-2-1": ({"depth": 18, "pool_scales": (6, 3, 2, 1)}, {"bins": (6, 3, 2, 1)}, "zip"),
}


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def converted(request, tmp_path_factory):
    structure, arguments, layout = ARCHITECTURES[request.param]
    path = tmp_path_factory.mktemp("ckpt") / f"{request.param}.pth"
    reference, path = mmseg_checkpoint(path, 7, legacy=layout == "legacy", **structure)
    return reference, from_mmseg(path, **arguments)


@pytest.mark.parametrize("size", [(97, 129), (65, 65)])  # 97x129 -> 13x17 features: pyramid bins overlap
def test_converted_logits_equal_mmsegmentation(converted, rng, size):
    reference, model = converted
    pixels = rng.uniform(0, 255, (2, *size, 3)).astype("float32")
    logits, aux = reference_logits(reference, pixels)
    outputs = model.predict(pixels, verbose=0)
    assert relative_error(outputs["logits"], logits) < 1e-4
    assert relative_error(outputs["aux"], aux) < 1e-4


@pytest.mark.parametrize("preset,structure", [
    ("pspnet_resnet18_v1c", {"depth": 18}),
    ("pspnet_resnet50_v1b", {"depth": 50, "deep_stem": False, "stem_widths": (8,)}),
    ("pspnet_mobilenet_v2_mmseg", {"depth": "mobilenet_v2", "widen_factor": 0.25}),
])
def test_presets_are_the_converted_architectures(tmp_path, rng, preset, structure):
    _, path = mmseg_checkpoint(tmp_path / "m.pth", 5, **structure)
    converted = from_mmseg(path)
    widths = {"alpha": 0.25} if "mobilenet" in preset else {
        "base_width": 8, "stem_widths": structure.get("stem_widths", (4, 4, 8))}
    # mmsegmentation's PPM branches are `channels` wide: 512 = 2048 / 4 at full width, 16 in these tiny ones
    built = from_preset(preset, 5, aux_head=True, pool_channels=16, head_channels=16, aux_channels=8, **widths)
    shapes = lambda m: {w.path: tuple(w.shape) for w in m.weights}  # noqa: E731
    assert shapes(built) == shapes(converted)
    transfer_weights(converted, built)  # same weights: same strides, dilations, epsilons, paddings, resizes
    pixels = rng.uniform(0, 255, (1, 65, 97, 3)).astype("float32")
    assert relative_error(built.predict(pixels, verbose=0)["logits"],
                          converted.predict(pixels, verbose=0)["logits"]) < 1e-6


def test_semseg_logits_equal_the_authors_model(tmp_path, rng):
    reference, path = semseg_checkpoint(tmp_path / "train_epoch_100.pth", 150)
    model = from_semseg(path)
    pixels = rng.uniform(0, 255, (1, 97, 129, 3)).astype("float32")  # their inputs are 8k+1: 97 and 129 are
    logits, aux = reference_logits(reference, pixels)
    outputs = model.predict(pixels, verbose=0)
    assert relative_error(outputs["logits"], logits) < 1e-4 and relative_error(outputs["aux"], aux) < 1e-4
    meta = model_metadata(model)
    assert uses_align_corners(model) and meta["source"] == {"format": "semseg", "file": "train_epoch_100.pth"}
    assert [c["name"] for c in meta["classes"]] == list(CLASS_SETS["ade20k"].class_names)  # told by 150 classes
    assert meta["protocol"] == {"style": "semseg", "resize": 512, "mode": "slide", "crop": [473, 473],
                                "stride": None, "scales": [1.0], "flip": True}


def test_semseg_legacy_layout_and_cityscapes(tmp_path, rng):
    reference, path = semseg_checkpoint(tmp_path / "c.pth", 19, layers=101, legacy=True)
    model = from_semseg(path, aux_head=False)
    pixels = rng.uniform(0, 255, (1, 65, 65, 3)).astype("float32")
    assert relative_error(model.predict(pixels, verbose=0), reference_logits(reference, pixels)[0]) < 1e-4
    assert model_metadata(model)["protocol"]["resize"] == 2048
    assert model_metadata(model)["classes"][0] == {"name": "road", "color": [128, 64, 128]}


def test_meta_classes_palette_and_stored_config(tmp_path):
    meta = {"CLASSES": ("road ", "sky", "car"), "PALETTE": [[1, 2, 3], [4, 5, 6], [7, 8, 9]],
            "config": config_text(CONFIG_1X_R18_769)}
    _, path = mmseg_checkpoint(tmp_path / "m.pth", 3, depth=18, align_corners=True, meta=meta)
    model = from_mmseg(path)
    metadata = model_metadata(model)
    assert metadata["classes"] == [{"name": "road", "color": [1, 2, 3]}, {"name": "sky", "color": [4, 5, 6]},
                                   {"name": "car", "color": [7, 8, 9]}]
    # align_corners and the test protocol come from the stored config (mmsegmentation 1.x layout)
    assert uses_align_corners(model)
    assert metadata["protocol"] == {"style": "mmseg", "resize": [2049, 1025], "mode": "slide", "crop": [769, 769],
                                    "stride": [513, 513], "scales": [1.0], "flip": False}
    with pytest.raises(ValueError, match=r"align_corners=False \(its config says True\) contradicts the config"):
        from_mmseg(path, align_corners=False)
    # mmsegmentation 0.x layout (MultiScaleFlipAug), whole-image protocol, no palette in meta
    _, path = mmseg_checkpoint(tmp_path / "n.pth", 19, depth=18, meta={"config": config_text(CONFIG_0X_R18)})
    metadata = model_metadata(from_mmseg(path))
    assert metadata["protocol"]["resize"] == [2048, 1024] and metadata["protocol"]["mode"] == "whole"
    assert metadata["classes"][18]["name"] == "bicycle"  # 19 classes and no names: Cityscapes


def test_stored_config_bins_order_and_d32(tmp_path, rng):
    text = config_text(CONFIG_0X_R18)
    reordered = re.sub(r"pool_scales=\([^)]*\)", "pool_scales=(6, 3, 2, 1)", text)
    reference, path = mmseg_checkpoint(tmp_path / "bins.pth", 4, depth=18, pool_scales=(6, 3, 2, 1),
                                       meta={"config": reordered})
    pixels = rng.uniform(0, 255, (1, 97, 129, 3)).astype("float32")
    model = from_mmseg(path)  # branches matched by bin size, read from the config
    assert relative_error(model.predict(pixels, verbose=0)["logits"], reference_logits(reference, pixels)[0]) < 1e-4
    with pytest.raises(ValueError, match=r"bins=\(1, 2, 3, 6\) \(its config says \(6, 3, 2, 1\)\)"):
        from_mmseg(path, bins=(1, 2, 3, 6))
    d32 = re.sub(r"strides=\([^)]*\)", "strides=(1, 2, 2, 2)", text)
    reference, path = mmseg_checkpoint(tmp_path / "d32.pth", 4, depth=18, output_stride=32, meta={"config": d32})
    model = from_mmseg(path)
    assert relative_error(model.predict(pixels, verbose=0)["logits"], reference_logits(reference, pixels)[0]) < 1e-4
    with pytest.raises(ValueError, match="output_stride=8 .its config says 32. contradicts"):
        from_mmseg(path, output_stride=8)
    _, path = mmseg_checkpoint(tmp_path / "aspp.pth", 4, depth=18, meta={"config": text.replace("'PSPHead'",
                                                                                                   "'ASPPHead'")})
    with pytest.raises(ValueError, match="describes a ASPPHead model, not PSPNet"):
        from_mmseg(path)


def corrupt(path, tmp_path, edit):
    state = torch.load(path, weights_only=True)["state_dict"]
    edit(state)
    torch.save({"state_dict": state}, str(tmp_path / "bad.pth"))
    return str(tmp_path / "bad.pth")


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda s: s.pop("decode_head.bottleneck.bn.running_var"), "missing key decode_head.bottleneck.bn.running_var"),
        (lambda s: s.update({"decode_head.extra.weight": torch.zeros(3)}), "unexpected key decode_head.extra.weight"),
        (lambda s: s.update({"backbone.layer2.0.conv2.weight": torch.zeros(16, 16, 1, 1)}),
         "backbone.layer2.0.conv2: shapes [(1, 1, 16, 16)] do not fit layer conv3_block1_2_conv"),
    ],
)
def test_bad_checkpoints_are_refused_with_the_keys_listed(tmp_path, edit, message):
    _, path = mmseg_checkpoint(tmp_path / "m.pth", 6, depth=50)
    with pytest.raises(ValueError) as error:
        from_mmseg(corrupt(path, tmp_path, edit))
    assert message in str(error.value) and "bad.pth" in str(error.value)


def test_another_architecture_is_refused(tmp_path):
    _, semseg = semseg_checkpoint(tmp_path / "semseg.pth", 21)
    with pytest.raises(ValueError, match="semseg.pth: not an mmsegmentation decode-head checkpoint"):
        from_mmseg(semseg)
    _, mmseg = mmseg_checkpoint(tmp_path / "mmseg.pth", 6, depth=18)
    with pytest.raises(ValueError, match="mmseg.pth: not an hszhao/semseg PSPNet checkpoint"):
        from_semseg(mmseg)
    with pytest.raises(ValueError, match="has 6 classes, not 19"):
        from_mmseg(mmseg, num_classes=19)
    with pytest.raises(ValueError, match="4 pyramid branches but bins=\\(1, 2\\) has 2"):
        from_mmseg(mmseg, bins=(1, 2))
    rename = lambda old, new: lambda s: s.update({k.replace(old, new): s.pop(k) for k in list(s) if old in k})
    aspp = corrupt(mmseg, tmp_path, rename("psp_modules", "aspp_modules"))  # DeepLabV3's head keys
    with pytest.raises(ValueError, match="not a PSPNet: its decode head has aspp_modules, bottleneck, conv_seg"):
        from_mmseg(aspp)
    psanet = str(tmp_path / "psanet.pth")
    state = {k.replace("ppm.features", "psa.features"): v for k, v in torch.load(semseg)["state_dict"].items()}
    torch.save({"state_dict": state}, psanet)
    with pytest.raises(ValueError, match="not a PSPNet: its modules are aux, cls, layer0, .* psa"):
        from_semseg(psanet)
    no_aux_conv = corrupt(mmseg, tmp_path, lambda s: [s.pop(k) for k in list(s) if "auxiliary_head.convs" in k])
    with pytest.raises(ValueError, match="its auxiliary head is not the one-conv FCN head .*--no-aux"):
        from_mmseg(no_aux_conv)
    assert not isinstance(from_mmseg(no_aux_conv, aux_head=False).output, dict)


def test_command_line_conversion(tmp_path, rng, capsys):
    reference, path = mmseg_checkpoint(tmp_path / "m.pth", 19, depth=18, meta={"config": config_text(CONFIG_0X_R18)})
    out = str(tmp_path / "converted.keras")
    assert main(["convert", "mmseg", path, "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "19 classes (road, sidewalk, building, wall, ...)" in printed
    assert "test protocol mmseg: keep-ratio resize to 2048x1024, whole image" in printed
    model = keras.saving.load_model(out)
    pixels = rng.uniform(0, 255, (1, 50, 70, 3)).astype("float32")
    assert relative_error(model.predict(pixels, verbose=0)["logits"], reference_logits(reference, pixels)[0]) < 1e-4
    assert main(["convert", "mmseg", path, "--out", out]) == 2  # never overwrites without --force
    assert "already exists" in capsys.readouterr().err
    assert main(["convert", "mmseg", path, "--out", out, "--no-align-corners", "--force"]) == 0
    assert main(["convert", "mmseg", path, "--out", out, "--align-corners", "--force"]) == 2
    assert "contradicts the config stored in the checkpoint" in capsys.readouterr().err
    assert main(["convert", "mmseg", path, "--out", str(tmp_path / "missing" / "m.keras")]) == 2
    assert capsys.readouterr().err == f"pspnet: error: {tmp_path / 'missing'}: no such folder for m.keras\n"  # at once
    _, semseg = semseg_checkpoint(tmp_path / "s.pth", 21)
    assert main(["convert", "semseg", semseg, "--out", str(tmp_path / "s.keras"), "--no-aux"]) == 0
    assert "21 classes (background, aeroplane, bicycle, bird, ...), no auxiliary head" in capsys.readouterr().out


def restated(text: str, mean, std, swap: str | None = None) -> str:
    """A stored config with other normalisation statistics (every mean/std list), and a channel-order flag
    swapped (e.g. "to_rgb=True" -> "to_rgb=False")."""
    text = re.sub(r"mean=\[[^\]]*\]", f"mean={list(mean)}", text)
    text = re.sub(r"std=\[[^\]]*\]", f"std={list(std)}", text)
    return text.replace(swap, swap.replace("True", "False")) if swap else text


@pytest.mark.parametrize("layout,swap", [(CONFIG_2020_R18_769, "to_rgb=True"), (CONFIG_2020_R18_769, None),
                                         (CONFIG_1X_R18_769, "bgr_to_rgb=True"), (CONFIG_1X_R18_769, None)])
def test_stored_protocol_and_normalisation_of_every_layout(tmp_path, rng, layout, swap):
    """The 2020 checkpoints keep test_cfg and img_norm_cfg at the top level; 1.x a data_preprocessor. Their
    statistics and channel order are what the network saw: the converted model takes RGB and gives its logits."""
    mean, std = (100.0, 110.0, 120.0), (50.0, 60.0, 70.0)  # not ImageNet's: 8% off when ignored
    text = restated(config_text(layout), mean, std, swap)
    reference, path = mmseg_checkpoint(tmp_path / "m.pth", 19, depth=18, align_corners=True, meta={"config": text})
    model = from_mmseg(path)
    assert model_metadata(model)["protocol"] == {"style": "mmseg", "resize": [2049, 1025], "mode": "slide",
                                                 "crop": [769, 769], "stride": [513, 513], "scales": [1.0],
                                                 "flip": False}
    pixels = rng.uniform(0, 255, (1, 65, 97, 3)).astype("float32")
    expected = reference_logits(reference, pixels, mean, std, bgr=swap is not None)
    assert relative_error(model.predict(pixels, verbose=0)["logits"], expected[0]) < 1e-4
    stored = np.asarray(model.get_layer("normalize").mean).ravel().tolist()
    assert stored == pytest.approx(mean[::-1] if swap else mean)  # RGB order inside the model


def test_hostile_stored_configs_and_class_names_end_in_one_line(tmp_path, capsys):
    text = config_text(CONFIG_0X_R18)
    cases = {
        "bins.pth": ({"config": re.sub(r"pool_scales=\([^)]*\)", "pool_scales=(1, 2, 'x')", text)},
                     "its stored config cannot be used .* holds values outside 1-64"),
        "huge_bins.pth": ({"config": re.sub(r"pool_scales=\([^)]*\)", "pool_scales=(1000000000,)", text)},
                          "its stored config cannot be used"),
        "expression.pth": ({"config": re.sub(r"pool_scales=\([^)]*\)", "pool_scales=(10**9,)", text)},
                           "its stored config's model is not plain data .ValueError: malformed node"),
        "strides.pth": ({"config": re.sub(r"strides=\([^)]*\)", "strides='abc'", text)},
                        "'abc' is not 4 numbers"),
        "resize.pth": ({"config": text.replace("2048,\n            1024,", "0,\n            0,")},
                       "holds values outside 1-32768"),
        "long.pth": ({"config": text + "#" * 2**20}, "its stored config has 1,0[0-9,]+ characters"),
        "names.pth": ({"CLASSES": ["road\x1b[2J\x1b[31m", *"abcdefghijklmnopqr"]},
                      r"class name 'road\\x1b\[2J\\x1b\[31m': expected a line of printable text"),
        "palette.pth": ({"CLASSES": list("abcdefghijklmnopqrs"), "PALETTE": [[1, 2, 300]] * 19},
                        r"colour \[1, 2, 300\] of 'a': expected 3 integers 0-255"),
    }
    for name, (meta, message) in cases.items():
        _, path = mmseg_checkpoint(tmp_path / name, 19, depth=18, meta=meta)
        with pytest.raises(ValueError, match=message):
            from_mmseg(path)
        assert main(["convert", "mmseg", path, "--out", str(tmp_path / "m.keras")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"pspnet: error: {path}: ") and err.count("\n") == 1 and "\x1b" not in err, err
