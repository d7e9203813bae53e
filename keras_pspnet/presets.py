"""Named model configurations."""

from __future__ import annotations

import keras

from keras_pspnet.model import build_pspnet

PRESETS = {
    # keras.applications layout: loads ImageNet weights with backbone_weights="imagenet" or a path.
    "pspnet_resnet50": {"backbone": "resnet50"},
    "pspnet_resnet101": {"backbone": "resnet101"},
    # mmsegmentation's pspnet_r50-d8 / pspnet_r101-d8 layout (ResNetV1c): what `from_mmseg` builds.
    "pspnet_resnet50_v1c": {"backbone": "resnet50", "stem": "deep", "style": "pytorch", "contract_dilation": True},
    "pspnet_resnet101_v1c": {"backbone": "resnet101", "stem": "deep", "style": "pytorch", "contract_dilation": True},
    # For phones: pyramid on the 1280-channel features, a narrower head.
    "pspnet_mobilenet_v2": {"backbone": "mobilenet_v2", "head_channels": 256, "aux_channels": 128},
}


def list_presets() -> list[str]:
    """Names accepted by `from_preset`."""
    return sorted(PRESETS)


def from_preset(name: str, num_classes: int, **overrides) -> keras.Model:
    """Builds the preset `name` for `num_classes` classes; keyword arguments override the preset."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; valid presets: {list_presets()}.")
    return build_pspnet(num_classes, **{**PRESETS[name], **overrides})
