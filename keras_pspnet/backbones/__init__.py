"""Dilated backbones: a registry of names, builders of standalone backbone models, ImageNet weights."""

from __future__ import annotations

import functools

import keras

from keras_pspnet.backbones.imagenet import load_imagenet_weights
from keras_pspnet.backbones.mobilenet_v2 import mobilenet_v2_features
from keras_pspnet.backbones.resnet import resnet_features

# name -> (feature function with its fixed arguments, keras.applications constructor for ImageNet weights)
BACKBONES = {
    "resnet10": (functools.partial(resnet_features, depth=10), None),
    "resnet18": (functools.partial(resnet_features, depth=18), None),
    "resnet34": (functools.partial(resnet_features, depth=34), None),
    "resnet50": (functools.partial(resnet_features, depth=50), "ResNet50"),
    "resnet101": (functools.partial(resnet_features, depth=101), "ResNet101"),
    "resnet152": (functools.partial(resnet_features, depth=152), "ResNet152"),
    "mobilenet_v2": (mobilenet_v2_features, "MobileNetV2"),
}


def backbone_features(name: str, x, **kwargs) -> dict:
    """Applies backbone `name` to tensor `x`; returns {"aux": ..., "final": ...}."""
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}; valid backbones: {sorted(BACKBONES)}.")
    return BACKBONES[name][0](x, **kwargs)


def build_backbone(name: str, input_shape=(None, None, 3), *, weights: str | None = None, **kwargs) -> keras.Model:
    """A standalone backbone model from a normalised image to {"aux", "final"} features.

    `weights`: None, "imagenet" (downloads keras.applications weights) or the path of such a file.
    """
    inputs = keras.Input(input_shape, name="image")
    model = keras.Model(inputs, backbone_features(name, inputs, **kwargs), name=name)
    if weights is not None:
        load_imagenet_weights(model, name, weights, alpha=kwargs.get("alpha"))
    return model


__all__ = ["BACKBONES", "backbone_features", "build_backbone", "load_imagenet_weights"]
