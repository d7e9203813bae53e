"""Dilated MobileNetV2 with keras.applications layer names (the backbone for phones)."""

from __future__ import annotations

from keras import layers

from keras_pspnet.backbones.common import batch_norm_factory, conv, stride_plan

# (expansion, filters, blocks, stride) per stage, as in keras.applications.MobileNetV2.
MOBILENET_V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1))
AUX_STAGE = 4  # the 96-channel stage (block_12), at 1/16 of the input before dilation


def make_divisible(value: float, divisor: int = 8) -> int:
    """Rounds channel counts as keras.applications.MobileNetV2 does."""
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


MOBILENET_V2_STYLES = ("keras", "pytorch")


def _inverted_residual(x, expansion, filters, stride, dilation, norm, block_id, symmetric_padding):
    in_channels = x.shape[-1]
    inputs = x
    prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
    if block_id:
        x = layers.Conv2D(expansion * in_channels, 1, use_bias=False, name=prefix + "expand")(x)
        x = norm(name=prefix + "expand_BN")(x)
        x = layers.ReLU(6.0, name=prefix + "expand_relu")(x)
    if symmetric_padding:
        x = conv(x, None, 3, stride=stride, dilation=dilation, use_bias=False, name=prefix + "depthwise",
                 depthwise=True)
    else:  # keras.applications pads (0, 1) or (1, 1) before a stride-2 depthwise conv, which is exactly "same"
        x = layers.DepthwiseConv2D(3, strides=stride, dilation_rate=dilation, padding="same", use_bias=False,
                                   name=prefix + "depthwise")(x)
    x = norm(name=prefix + "depthwise_BN")(x)
    x = layers.ReLU(6.0, name=prefix + "depthwise_relu")(x)
    x = layers.Conv2D(filters, 1, use_bias=False, name=prefix + "project")(x)
    x = norm(name=prefix + "project_BN")(x)
    if in_channels == filters and stride == 1:
        x = layers.Add(name=prefix + "add")([inputs, x])
    return x


def mobilenet_v2_features(x, alpha: float = 1.0, *, output_stride: int = 8, style: str = "keras",
                          sync_batchnorm: bool = False) -> dict:
    """Applies a dilated MobileNetV2 to the tensor `x` (normalised NHWC image).

    Args:
        alpha: width multiplier (keras.applications publishes 0.35, 0.5, 0.75, 1.0, 1.3, 1.4).
        output_stride: 8, 16 or 32; later stages trade stride for dilation.
        style: "keras" (keras.applications: a final 1x1 conv to 1280 channels, every block of a stage
            dilated, "same" padding, BN epsilon 1e-3) or "pytorch" (mmsegmentation's MobileNetV2: the
            320-channel stage is the output, only the first block of a stage dilated, symmetric padding,
            BN epsilon 1e-5).
        sync_batchnorm: synchronise batch statistics across replicas (TensorFlow backend only).

    Returns:
        {"aux": the 96-channel stage (auxiliary head input), "final": the features for the pyramid}.
    """
    if alpha <= 0:
        raise ValueError(f"MobileNetV2 width multiplier alpha must be > 0, got {alpha}.")
    if style not in MOBILENET_V2_STYLES:
        raise ValueError(f"Unknown MobileNetV2 style {style!r}; valid styles: {list(MOBILENET_V2_STYLES)}.")
    pytorch = style == "pytorch"
    norm = batch_norm_factory(1e-5 if pytorch else 1e-3, sync_batchnorm)
    if pytorch:
        x = conv(x, make_divisible(32 * alpha), 3, stride=2, use_bias=False, name="Conv1")
    else:
        x = layers.Conv2D(make_divisible(32 * alpha), 3, strides=2, padding="same", use_bias=False, name="Conv1")(x)
    x = norm(name="bn_Conv1")(x)
    x = layers.ReLU(6.0, name="Conv1_relu")(x)

    features, block_id = {}, 0
    plan = stride_plan([stage[3] for stage in MOBILENET_V2_STAGES], output_stride, initial_stride=2)
    for stage, ((expansion, filters, blocks, _), (stride, dilation)) in enumerate(zip(MOBILENET_V2_STAGES, plan)):
        for block in range(blocks):
            # mmsegmentation dilates only the first block of a stage; converted weights need the same.
            block_dilation = dilation if block == 0 or not pytorch else 1
            x = _inverted_residual(x, expansion, make_divisible(int(filters * alpha)), stride if block == 0 else 1,
                                   block_dilation, norm, block_id, pytorch)
            block_id += 1
        if stage == AUX_STAGE:
            features["aux"] = x
    if pytorch:
        features["final"] = x
        return features
    last_filters = make_divisible(1280 * alpha) if alpha > 1.0 else 1280
    x = layers.Conv2D(last_filters, 1, use_bias=False, name="Conv_1")(x)
    x = norm(name="Conv_1_bn")(x)
    features["final"] = layers.ReLU(6.0, name="out_relu")(x)
    return features
