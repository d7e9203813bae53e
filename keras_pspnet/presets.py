"""Named model configurations."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras

_V1C = {"stem": "deep", "style": "pytorch", "contract_dilation": True}  # mmsegmentation's ResNetV1c
_V1B = {"stem": "standard", "style": "pytorch", "contract_dilation": True}  # mmsegmentation's ResNet (torchvision)
_SEMSEG = {"stem": "deep", "stem_widths": (64, 64, 128), "style": "pytorch", "align_corners": True}

PRESETS = {
    # keras.applications layout: loads ImageNet weights with backbone_weights="imagenet" or a path.
    "pspnet_resnet50": {"backbone": "resnet50"},
    "pspnet_resnet101": {"backbone": "resnet101"},
    # For phones: pyramid on the 1280-channel features, a narrower head.
    "pspnet_mobilenet_v2": {"backbone": "mobilenet_v2", "head_channels": 256, "aux_channels": 128},
    # mmsegmentation's PSPNet layouts, what `from_mmseg` builds for its checkpoints (rXX-d8, rXXb-d8, m-v2-d8).
    "pspnet_resnet18_v1c": {"backbone": "resnet18", **_V1C, "head_channels": 128, "aux_channels": 64},
    "pspnet_resnet50_v1c": {"backbone": "resnet50", **_V1C},
    "pspnet_resnet101_v1c": {"backbone": "resnet101", **_V1C},
    "pspnet_resnet18_v1b": {"backbone": "resnet18", **_V1B, "head_channels": 128, "aux_channels": 64},
    "pspnet_resnet50_v1b": {"backbone": "resnet50", **_V1B},
    "pspnet_resnet101_v1b": {"backbone": "resnet101", **_V1B},
    "pspnet_mobilenet_v2_mmseg": {"backbone": "mobilenet_v2", "style": "pytorch", "pool_channels": 512},
    # The PSPNet authors' layout (hszhao/semseg), what `from_semseg` builds.
    "pspnet_resnet50_semseg": {"backbone": "resnet50", **_SEMSEG},
    "pspnet_resnet101_semseg": {"backbone": "resnet101", **_SEMSEG},
}


def list_presets() -> list[str]:
    """Names accepted by `from_preset`."""
    return sorted(PRESETS)


def from_preset(name: str, num_classes: int, **overrides) -> keras.Model:
    """Builds the preset `name` for `num_classes` classes; keyword arguments override the preset."""
    from keras_pspnet.model import build_pspnet  # Keras (and TensorFlow) only when a model is built

    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; valid presets: {list_presets()}.")
    return build_pspnet(num_classes, **{**PRESETS[name], **overrides})
