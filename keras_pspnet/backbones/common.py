"""Pieces shared by the dilated backbones."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from keras import layers

VALID_OUTPUT_STRIDES = (8, 16, 32)


def stride_plan(strides: Sequence[int], output_stride: int, initial_stride: int) -> list[tuple[int, int]]:
    """Turns nominal per-stage strides into (stride, dilation) pairs that stop at `output_stride`.

    Once the running stride would exceed `output_stride`, a stage keeps stride 1 and multiplies its
    dilation instead (the "dilated network" of DeepLab and PSPNet).
    """
    if output_stride not in VALID_OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {VALID_OUTPUT_STRIDES}, got {output_stride}.")
    current, dilation, plan = initial_stride, 1, []
    for stride in strides:
        if current * stride > output_stride:
            dilation *= stride
            stride = 1
        else:
            current *= stride
        plan.append((stride, dilation))
    return plan


# Running statistics move as in PyTorch's BatchNorm2d (momentum 0.1 there is 0.9 here: Keras weighs the old value),
# in every architecture (keras.applications' MobileNetV2 uses 0.999) and however a model is built or rebuilt.
BN_MOMENTUM = 0.9


def batch_norm_factory(epsilon: float, synchronized: bool):
    """A BatchNormalization constructor with the backbone's settings bound (names still per layer)."""
    return functools.partial(
        layers.BatchNormalization, epsilon=epsilon, momentum=BN_MOMENTUM, synchronized=synchronized
    )


def conv(x, filters, kernel_size, *, stride=1, dilation=1, use_bias, name, depthwise=False):
    """Conv2D (or DepthwiseConv2D when `depthwise`; `filters` is then ignored) with PyTorch's symmetric padding.

    Keras' "same" padding pads only bottom/right for even sizes at stride 2; converted PyTorch weights
    need (k - 1) // 2 on every side, so strided convolutions get an explicit ZeroPadding2D. Keras refuses a
    stride with a dilation (mmsegmentation's "-d32" ResNets have one): that conv runs at stride 1 and every
    stride-th output is kept, which is the same numbers.
    """
    subsample = stride if stride > 1 and dilation > 1 else 1
    if stride > 1 and kernel_size > 1:
        pad = dilation * (kernel_size - 1) // 2
        x = layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    options = dict(strides=stride // subsample, dilation_rate=dilation, padding=padding, use_bias=use_bias, name=name)
    if depthwise:
        x = layers.DepthwiseConv2D(kernel_size, **options)(x)
    else:
        x = layers.Conv2D(filters, kernel_size, **options)(x)
    if subsample > 1:  # a 1x1 pooling window with a stride keeps every stride-th pixel
        x = layers.MaxPooling2D(1, strides=subsample, name=f"{name}_subsample")(x)
    return x
