"""Loading keras.applications ImageNet weights into our backbones by layer name."""

from __future__ import annotations

import os

import keras
import numpy as np

# What keras.applications' preprocess_input does to RGB pixels 0-255, as (mean, std) per RGB channel.
# ResNet's "caffe" mode also swaps RGB to BGR: `load_imagenet_weights` reverses the input channels of
# its first convolution instead, so our models always take RGB.
IMAGENET_PREPROCESSING = {
    "ResNet50": ((123.68, 116.779, 103.939), (1.0, 1.0, 1.0)),
    "ResNet101": ((123.68, 116.779, 103.939), (1.0, 1.0, 1.0)),
    "ResNet152": ((123.68, 116.779, 103.939), (1.0, 1.0, 1.0)),
    "MobileNetV2": ((127.5, 127.5, 127.5), (127.5, 127.5, 127.5)),
}
_BGR_FIRST_CONV = {"ResNet50": "conv1_conv", "ResNet101": "conv1_conv", "ResNet152": "conv1_conv"}


def imagenet_application(backbone: str) -> str:
    """The keras.applications constructor whose ImageNet weights fit `backbone`, or a clear error."""
    from keras_pspnet.backbones import BACKBONES

    application = BACKBONES.get(backbone, (None, None))[1]
    if application is None:
        with_weights = sorted(name for name, (_, app) in BACKBONES.items() if app)
        raise ValueError(f"No ImageNet weights for backbone {backbone!r}; backbones with weights: {with_weights}.")
    return application


def load_imagenet_weights(model: keras.Model, backbone: str, weights: str, alpha: float | None = None) -> int:
    """Copies keras.applications ImageNet weights into the same-named layers of `model`.

    Args:
        model: a backbone or a whole PSPNet containing backbone `backbone` with a standard stem and
            "keras" style (the keras.applications layout).
        backbone: registry name, e.g. "resnet50" or "mobilenet_v2".
        weights: "imagenet" (downloaded by keras.applications, needs internet) or the path of the
            same no-top .h5 file.
        alpha: MobileNetV2 width multiplier.

    Returns:
        The number of layers whose weights were copied.
    """
    application = imagenet_application(backbone)
    if weights != "imagenet" and not os.path.isfile(weights):
        raise FileNotFoundError(f"{weights}: ImageNet weights file not found.")
    kwargs = {"alpha": alpha or 1.0} if application == "MobileNetV2" else {}
    try:
        source = getattr(keras.applications, application)(
            include_top=False, weights=weights, input_shape=(None, None, 3), **kwargs
        )
    except (ValueError, OSError) as error:
        raise ValueError(f"{weights}: cannot load {application} weights ({error}).") from None
    copied = 0
    for layer in source.layers:
        values = layer.get_weights()
        if not values:
            continue
        try:
            target = model.get_layer(layer.name)
        except ValueError:
            raise ValueError(
                f"{weights}: layer {layer.name!r} of {application} has no counterpart in the model "
                f"(ImageNet weights need the standard stem and style='keras')."
            ) from None
        if layer.name == _BGR_FIRST_CONV.get(application):
            values[0] = values[0][:, :, ::-1, :]  # BGR -> RGB input channels
        expected = [tuple(w.shape) for w in target.get_weights()]
        if expected != [np.shape(v) for v in values]:
            raise ValueError(
                f"{weights}: layer {layer.name!r} has shapes {[np.shape(v) for v in values]}, "
                f"the model expects {expected}."
            )
        target.set_weights(values)
        copied += 1
    return copied
