"""Counting the multiply-accumulates of a model's convolutions."""

from __future__ import annotations

import math

import keras

from keras_pspnet.model import inference_model


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates of one forward pass, summed over Conv2D, DepthwiseConv2D and Dense layers.

    The model must have a fixed input size (build it with e.g. `input_shape=(473, 473, 3)`). Pooling,
    resizing and elementwise ops are not counted: they are under 1% of PSPNet's work. An auxiliary head
    (training only) is not counted.
    """
    model = inference_model(model)
    total = 0
    for layer in model.layers:
        if not isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)):
            continue
        output_shape = layer.output.shape
        if any(d is None for d in output_shape[1:]):
            raise ValueError(f"count_macs needs a fixed input size; layer {layer.name} outputs {output_shape}.")
        kernel_macs = math.prod(layer.kernel.shape)  # per output position, summed over output channels
        if isinstance(layer, keras.layers.Dense):
            positions = math.prod(output_shape[1:-1])
        else:
            positions = math.prod(output_shape[1:3])
        total += positions * kernel_macs
    return total
