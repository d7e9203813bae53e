"""The references' ImageNet backbones as `build_pspnet(backbone_weights=...)`, converted without PyTorch.

By name (downloaded once into the cache with `keras_pspnet.download.fetch`, checked against the SHA-256 prefix
in the file name; $KERAS_PSPNET_MIRROR replaces the download base, every file of `BACKBONE_WEIGHTS` lying at its
bare file name in the mirror's top folder, e.g. $KERAS_PSPNET_MIRROR/resnet50_v1c-2cccc1ad.pth):
  - "resnet18_v1c", "resnet50_v1c", "resnet101_v1c": OpenMMLab's ImageNet ResNetV1c, which mmsegmentation's
    `pspnet_rXX-d8` start from ("open-mmlab://resnet50_v1c" in their configs); presets `pspnet_resnetXX_v1c`.
  - "torchvision_resnet50", "torchvision_resnet101": torchvision's ResNets, which mmsegmentation's V1b configs
    start from ("torchvision://resnet50"); presets `pspnet_resnetXX_v1b`.
  - "mobilenet_v2_mmcls": mmclassification's MobileNetV2 ("mmcls://mobilenet_v2"), the start of mmsegmentation's
    `pspnet_m-v2-d8`; preset `pspnet_mobilenet_v2_mmseg` (its final 1280-channel conv and classifier are unused).
Or a local .pth of one of those layouts, or of the PSPNet authors' deep-stem ImageNet ResNets (hszhao/semseg's
initmodel/resnet50_v2.pth, resnet101_v2.pth, published on Google Drive only); presets `pspnet_resnetXX_semseg`.

The layout is read off the file's keys and shapes and must be the model's backbone (depth, stem, widths, style),
else a one-line error names the preset to use. Only the backbone's layers are set; every one of them must come
from the file. All these networks were trained on RGB normalised by the ImageNet mean/std (`IMAGENET_MEAN`).
"""

from __future__ import annotations

import dataclasses
import os
import re

import keras
import numpy as np

from keras_pspnet.backbones.resnet import RESNET_DEPTHS
from keras_pspnet.convert import mmseg, semseg
from keras_pspnet.convert.common import assign_weights, read_checkpoint
from keras_pspnet.download import fetch, remote_url
from keras_pspnet.presets import PRESETS

OPENMMLAB = "https://download.openmmlab.com/"
TORCHVISION = "https://download.pytorch.org/models/"
SEMSEG_HOME = "https://github.com/hszhao/semseg"
# The authors' files, for the error when one is missing: they are on Google Drive, linked from SEMSEG_HOME.
SEMSEG_FILES = ("resnet50_v2.pth", "resnet101_v2.pth")


@dataclasses.dataclass(frozen=True)
class BackboneWeights:
    """ImageNet weights published by a reference: where they are, and their names in its configs."""

    name: str
    base: str  # download base URL; the file is at base + file_name
    file_name: str  # the 8 hex digits after the last "-" start its SHA-256
    aliases: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        """The download URL; $KERAS_PSPNET_MIRROR (an https URL or a folder) replaces `base`."""
        return remote_url(self.base, self.file_name)


BACKBONE_WEIGHTS = {entry.name: entry for entry in (
    BackboneWeights("resnet18_v1c", OPENMMLAB + "pretrain/third_party/", "resnet18_v1c-b5776b93.pth",
                    ("open-mmlab://resnet18_v1c",)),
    BackboneWeights("resnet50_v1c", OPENMMLAB + "pretrain/third_party/", "resnet50_v1c-2cccc1ad.pth",
                    ("open-mmlab://resnet50_v1c",)),
    BackboneWeights("resnet101_v1c", OPENMMLAB + "pretrain/third_party/", "resnet101_v1c-e67eebb6.pth",
                    ("open-mmlab://resnet101_v1c",)),
    BackboneWeights("mobilenet_v2_mmcls", OPENMMLAB + "mmclassification/v0/mobilenet_v2/",
                    "mobilenet_v2_batch256_imagenet_20200708-3b2dc3af.pth", ("mmcls://mobilenet_v2",)),
    BackboneWeights("torchvision_resnet50", TORCHVISION, "resnet50-0676ba61.pth", ("torchvision://resnet50",)),
    BackboneWeights("torchvision_resnet101", TORCHVISION, "resnet101-63fe2227.pth", ("torchvision://resnet101",)),
)}  # fmt: skip
_ALIASES = {alias: entry.name for entry in BACKBONE_WEIGHTS.values() for alias in entry.aliases}
# Per layout: its name for people, the preset of its structure ({depth} filled in), its published widths.
_LAYOUTS = {
    "v1c": ("ResNetV1c-{depth}", "pspnet_resnet{depth}_v1c", {"stem_widths": (32, 32, 64), "base_width": 64}),
    "torchvision": ("ResNet-{depth} V1b (torchvision)", "pspnet_resnet{depth}_v1b",
                    {"stem_widths": (64,), "base_width": 64}),
    "semseg": ("deep-stem ResNet-{depth} (the PSPNet authors')", "pspnet_resnet{depth}_semseg",
               {"stem_widths": (64, 64, 128), "base_width": 64}),
    "mobilenet_v2": ("MobileNetV2 (mmsegmentation's)", "pspnet_mobilenet_v2_mmseg", {"alpha": 1.0}),
}
_SEMSEG_STEM = {"conv1": "layer0.0", "bn1": "layer0.1", "conv2": "layer0.3", "bn2": "layer0.4", "conv3": "layer0.6",
                "bn3": "layer0.7"}


def list_backbone_weights() -> list[str]:
    """Names accepted by `build_pspnet(backbone_weights=...)` besides "imagenet" and file paths."""
    return sorted(BACKBONE_WEIGHTS)


def reference_weights_file(weights: str, cache_dir: str | None = None) -> str | None:
    """The local file of reference backbone weights `weights` (a name of BACKBONE_WEIGHTS or its reference's
    spelling, downloaded and verified if not cached, or a .pth path), or None for keras.applications' ("imagenet",
    an .h5 path). A missing file or an unknown name is a one-line error."""
    name = _ALIASES.get(weights, weights)
    if name in BACKBONE_WEIGHTS:
        entry = BACKBONE_WEIGHTS[name]
        return fetch(name, entry.url, entry.file_name, cache_dir)
    if weights.lower().endswith((".pth", ".pt")):
        if os.path.isfile(weights):
            return weights
        if os.path.basename(weights) in SEMSEG_FILES:
            raise FileNotFoundError(f"{weights}: not found; the PSPNet authors publish {os.path.basename(weights)} "
                                    f"(their deep-stem ImageNet ResNet) on Google Drive only, linked from "
                                    f"{SEMSEG_HOME} (initmodel/): download it to that path or give backbone_weights "
                                    "the path where it is")
        raise FileNotFoundError(f"{weights}: backbone weights file not found.")
    if weights == "imagenet" or "://" not in weights and (os.path.exists(weights) or "." in os.path.basename(weights)):
        return None  # keras.applications' weights: "imagenet" or an .h5 file
    raise ValueError(f"backbone_weights {weights!r}: not 'imagenet', a weights file (.h5, .pth) nor a known name "
                     f"({', '.join(list_backbone_weights())}, or their references' spellings "
                     f"{', '.join(sorted(_ALIASES))}).")


def load_reference_weights(model: keras.Model, path: str, weights: str | None = None) -> None:
    """Sets the backbone of `model` (a PSPNet or a standalone backbone) from the reference ImageNet weights file
    `path` (`weights`: what the user named, for messages); the heads keep their weights."""
    weights = weights or path
    state, _ = read_checkpoint(path)
    state = {key.removeprefix("backbone."): value for key, value in state.items()
             if not key.startswith(("fc.", "head."))}  # ImageNet classifiers: torchvision / semseg, mmcls
    layout, architecture = _checkpoint_architecture(state, weights)
    if layout == "mobilenet_v2":  # mmcls' final 1x1 conv to 1280 channels: mmsegmentation's backbone has none
        state = {key: value for key, value in state.items() if not key.startswith("conv2.")}
    found = _model_architecture(model)
    if found != architecture:
        raise ValueError(f"{weights}: needs a {_requirement(layout, architecture)}; the model's backbone is "
                         f"{_describe(found)}.")
    if layout == "semseg":
        name = lambda module: semseg.layer_name(_SEMSEG_STEM.get(module, module), ())  # noqa: E731
    else:
        name = lambda module: mmseg.layer_name("backbone." + module, ())  # noqa: E731
    assign_weights(model, state, name, weights, layers=set(backbone_layers(model)))


def backbone_layers(model: keras.Model) -> list[str]:
    """The layers of `model` with weights that belong to its backbone (not the input normalisation, not a head)."""
    from keras_pspnet.model import HEAD_LAYERS

    return [layer.name for layer in model.layers if layer.weights and not layer.name.startswith(HEAD_LAYERS)
            and not isinstance(layer, keras.layers.Normalization)]


def _checkpoint_architecture(state: dict[str, np.ndarray], weights: str) -> tuple[str, dict]:
    """(layout, architecture) of a backbone state dict without its "backbone." prefix and its classifier."""
    try:
        if "conv1.conv.weight" in state:  # mmcls / mmsegmentation MobileNetV2
            return "mobilenet_v2", {"family": "mobilenet_v2", "stem": state["conv1.conv.weight"].shape[0],
                                    "final": state["layer7.0.conv.2.conv.weight"].shape[0], "style": "pytorch"}
        if "stem.0.weight" in state:
            layout, stem = "v1c", tuple(state[f"stem.{i}.weight"].shape[0] for i in (0, 3, 6))
        elif "conv2.weight" in state:
            layout, stem = "semseg", tuple(state[f"conv{i}.weight"].shape[0] for i in (1, 2, 3))
        else:
            layout, stem = "torchvision", (state["conv1.weight"].shape[0],)
        blocks = tuple(len({key.split(".")[1] for key in state if key.startswith(f"layer{stage}.")})
                       for stage in range(1, 5))
        return layout, {"family": "resnet", "blocks": blocks, "bottleneck": "layer1.0.conv3.weight" in state,
                        "stem": stem, "base_width": state["layer1.0.conv1.weight"].shape[0], "style": "pytorch"}
    except KeyError as error:
        modules = sorted({key.split(".")[0] for key in state})
        raise ValueError(f"{weights}: not ImageNet backbone weights of a layout we know (no {error.args[0]}; its "
                         f"modules: {', '.join(modules[:8])}): mmsegmentation ResNetV1c, torchvision ResNet, mmcls "
                         "MobileNetV2 or the PSPNet authors' deep-stem ResNet.") from None


def _model_architecture(model: keras.Model) -> dict:
    """The same description as `_checkpoint_architecture`'s, read off the layers of a model."""
    names = {layer.name for layer in model.layers}
    if "Conv1" in names:
        last = max(int(m[1]) for m in map(re.compile(r"block_([0-9]+)_project").fullmatch, names) if m)
        return {"family": "mobilenet_v2", "stem": model.get_layer("Conv1").filters,
                "final": model.get_layer(f"block_{last}_project").filters,
                "style": "keras" if "Conv_1" in names else "pytorch"}
    if "conv2_block1_1_conv" not in names:
        return {"family": "unknown"}
    blocks = tuple(sum(bool(re.fullmatch(rf"conv{stage}_block[0-9]+_1_conv", name)) for name in names)
                   for stage in range(2, 6))
    stem = [f"stem_{i}_conv" for i in (1, 2, 3)] if "stem_1_conv" in names else ["conv1_conv"]
    first = model.get_layer("conv2_block1_1_conv")
    return {"family": "resnet", "blocks": blocks, "bottleneck": "conv2_block1_3_conv" in names,
            "stem": tuple(model.get_layer(n).filters for n in stem), "base_width": first.filters,
            "style": "keras" if first.use_bias else "pytorch"}


def _depth(architecture: dict) -> int | None:
    return next((depth for depth, (blocks, bottleneck) in RESNET_DEPTHS.items()
                 if blocks == architecture["blocks"] and bottleneck == architecture["bottleneck"]), None)


def _requirement(layout: str, architecture: dict) -> str:
    """What weights of `layout` need, e.g. "ResNetV1c-50 backbone (preset pspnet_resnet50_v1c)"."""
    what, preset, published = _LAYOUTS[layout]
    if architecture["family"] == "mobilenet_v2":
        alpha = architecture["final"] / 320
        widths = {"alpha": alpha}
    else:
        depth = _depth(architecture)
        if depth is None:
            return f"ResNet with {list(architecture['blocks'])} blocks per stage, which no depth we build has"
        widths = {"stem_widths": architecture["stem"], "base_width": architecture["base_width"]}
        what, preset = what.format(depth=depth), preset.format(depth=depth)
    hint = f"preset {preset}" if preset in PRESETS else f"backbone {_describe(architecture)}"
    changed = ", ".join(f"{key}={value}" for key, value in widths.items() if value != published[key])
    return f"{what} backbone ({hint}{' with ' + changed if changed else ''})"


def _describe(architecture: dict) -> str:
    if architecture["family"] == "mobilenet_v2":
        return (f"a MobileNetV2 ({architecture['style']} style, {architecture['stem']}-channel stem, "
                f"{architecture['final']}-channel last stage)")
    if architecture["family"] != "resnet":
        return "neither a ResNet nor a MobileNetV2"
    depth = _depth(architecture)
    stem = "-".join(map(str, architecture["stem"]))
    return (f"a ResNet-{depth or list(architecture['blocks'])} ({'deep' if len(architecture['stem']) == 3 else '7x7'} "
            f"stem {stem}, width {architecture['base_width']}, {architecture['style']} style)")
