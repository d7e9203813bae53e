"""Adaptive average pooling with PyTorch `AdaptiveAvgPool2d` semantics."""

from __future__ import annotations

import keras
from keras import ops


def adaptive_pool_matrix(length, bins: int, dtype="float32"):
    """Returns the (bins, length) matrix whose row i averages PyTorch's bin i.

    Bin i covers [floor(i * L / b), ceil((i + 1) * L / b)): bins overlap when b does not divide L.
    `length` may be a Python int or a scalar tensor (unknown size in graph mode).
    """
    index = ops.arange(bins, dtype="int32")
    start = (index * length) // bins
    end = ((index + 1) * length + bins - 1) // bins
    position = ops.arange(length, dtype="int32")[None, :]
    inside = ops.logical_and(position >= start[:, None], position < end[:, None])
    weights = ops.cast(inside, dtype)
    return weights / ops.sum(weights, axis=1, keepdims=True)


@keras.saving.register_keras_serializable(package="keras_pspnet")
class AdaptiveAveragePooling2D(keras.layers.Layer):
    """Average-pools NHWC inputs to `bins` x `bins` cells exactly as PyTorch's `AdaptiveAvgPool2d`.

    Our own layer instead of `keras.layers.AdaptiveAveragePooling2D`, which fails in graph mode (fit,
    export) and whenever the spatial size is unknown. Pooling is written as two small matrix products
    with averaging matrices built from the run-time size, so it needs no per-bin slicing, works with
    static and unknown sizes on every backend, and converts to TFLite with builtin ops only.
    """

    def __init__(self, bins: int, **kwargs):
        super().__init__(**kwargs)
        if int(bins) < 1:
            raise ValueError(f"AdaptiveAveragePooling2D needs bins >= 1, got {bins}.")
        self.bins = int(bins)

    def call(self, inputs):
        _, height, width, _ = ops.shape(inputs)
        rows = adaptive_pool_matrix(height, self.bins, inputs.dtype)
        cols = adaptive_pool_matrix(width, self.bins, inputs.dtype)
        pooled = ops.einsum("ih,nhwc->niwc", rows, inputs)
        return ops.einsum("jw,niwc->nijc", cols, pooled)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.bins, self.bins, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "bins": self.bins}
