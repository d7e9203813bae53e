"""Dilated ResNet-18/34/50/101/152 with keras.applications layer names.

Layer names follow `keras.applications.ResNet50` (`conv1_conv`, `conv2_block1_1_conv`, ...), so its ImageNet
weights load by name; the mmsegmentation converter maps its keys onto the same names.
"""

from __future__ import annotations

from collections.abc import Sequence

from keras import layers

from keras_pspnet.backbones.common import batch_norm_factory, conv, stride_plan

# depth -> (blocks per stage, bottleneck?)
RESNET_DEPTHS = {
    10: ((1, 1, 1, 1), False),  # small receptive field: the context demo's backbone
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
}
# "keras": keras.applications ResNet (stride on the first 1x1 conv, conv biases, BN epsilon 1.001e-5).
# "pytorch": torchvision / mmsegmentation (stride on the 3x3 conv, no conv biases, BN epsilon 1e-5).
RESNET_STYLES = ("keras", "pytorch")
STEMS = ("standard", "deep")


def _block(x, filters, *, bottleneck, stride, dilation, style, norm, name):
    """One residual block; `filters` is the bottleneck width (output has 4x that for bottlenecks)."""
    bias = style == "keras"
    out_filters = filters * 4 if bottleneck else filters
    shortcut = x
    if stride != 1 or x.shape[-1] != out_filters:
        shortcut = layers.Conv2D(out_filters, 1, strides=stride, use_bias=bias, name=f"{name}_0_conv")(x)
        shortcut = norm(name=f"{name}_0_bn")(shortcut)
    if bottleneck:
        first_stride, mid_stride = (stride, 1) if style == "keras" else (1, stride)
        x = conv(x, filters, 1, stride=first_stride, use_bias=bias, name=f"{name}_1_conv")
        x = norm(name=f"{name}_1_bn")(x)
        x = layers.ReLU(name=f"{name}_1_relu")(x)
        x = conv(x, filters, 3, stride=mid_stride, dilation=dilation, use_bias=bias, name=f"{name}_2_conv")
        x = norm(name=f"{name}_2_bn")(x)
        x = layers.ReLU(name=f"{name}_2_relu")(x)
        x = conv(x, out_filters, 1, use_bias=bias, name=f"{name}_3_conv")
        x = norm(name=f"{name}_3_bn")(x)
    else:
        x = conv(x, filters, 3, stride=stride, dilation=dilation, use_bias=bias, name=f"{name}_1_conv")
        x = norm(name=f"{name}_1_bn")(x)
        x = layers.ReLU(name=f"{name}_1_relu")(x)
        # mmsegmentation's BasicBlock dilates only its first conv; converted weights need the same.
        x = conv(x, filters, 3, use_bias=bias, name=f"{name}_2_conv")
        x = norm(name=f"{name}_2_bn")(x)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.ReLU(name=f"{name}_out")(x)


def _stem(x, stem, stem_widths, style, norm):
    bias = style == "keras"
    if stem == "standard":
        x = conv(x, stem_widths[-1], 7, stride=2, use_bias=bias, name="conv1_conv")
        x = norm(name="conv1_bn")(x)
        x = layers.ReLU(name="conv1_relu")(x)
    else:  # three 3x3 convolutions (ResNet-C / ResNetV1c)
        for i, width in enumerate(stem_widths):
            x = conv(x, width, 3, stride=2 if i == 0 else 1, use_bias=bias, name=f"stem_{i + 1}_conv")
            x = norm(name=f"stem_{i + 1}_bn")(x)
            x = layers.ReLU(name=f"stem_{i + 1}_relu")(x)
    # Zero padding equals PyTorch's -inf padding here: the input is post-ReLU (>= 0).
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    return layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)


def resnet_features(
    x,
    depth: int = 50,
    *,
    output_stride: int = 8,
    stem: str = "standard",
    stem_widths: Sequence[int] | None = None,
    base_width: int = 64,
    contract_dilation: bool = False,
    style: str = "keras",
    stages: int = 4,
    dilations: Sequence[int] | None = None,
    sync_batchnorm: bool = False,
) -> dict:
    """Applies a dilated ResNet to the tensor `x` (normalised NHWC image).

    Args:
        depth: 10, 18, 34 (basic blocks), 50, 101 or 152 (bottlenecks).
        output_stride: 8 (stages 3 and 4 dilated 2 and 4), 16 or 32.
        stem: "standard" (7x7 conv) or "deep" (three 3x3 convs of `stem_widths`).
        stem_widths: widths of the stem convs; default (base_width,) for the standard stem and
            (base_width // 2, base_width // 2, base_width) for the deep one (mmsegmentation's ResNetV1c).
        base_width: width of the first stage (64 in every published ResNet; smaller for tests).
        contract_dilation: the first block of a dilated stage uses half its dilation (mmsegmentation).
        style: "keras" (keras.applications layout) or "pytorch" (torchvision/mmsegmentation layout).
        stages: 4 (every published ResNet) or 3 (a small network with a small receptive field, as in the
            context demo); the last stage is the final feature map.
        dilations: per-stage dilation; default what `output_stride` implies (each stride given up becomes
            dilation). mmsegmentation's "-d32" configs keep strides (1, 2, 2, 2) and dilations (1, 1, 2, 4).
        sync_batchnorm: synchronise batch statistics across replicas (TensorFlow backend only).

    Returns:
        {"aux": the input of the auxiliary head (stage 3 of 4, stage 2 of 3), "final": the last stage}.
    """
    if depth not in RESNET_DEPTHS:
        raise ValueError(f"Unknown ResNet depth {depth}; valid depths: {sorted(RESNET_DEPTHS)}.")
    if style not in RESNET_STYLES:
        raise ValueError(f"Unknown ResNet style {style!r}; valid styles: {list(RESNET_STYLES)}.")
    if stem not in STEMS:
        raise ValueError(f"Unknown stem {stem!r}; valid stems: {list(STEMS)}.")
    if stages not in (3, 4):
        raise ValueError(f"A ResNet has 3 or 4 stages, got stages={stages}.")
    if stem_widths is None:
        stem_widths = (base_width,) if stem == "standard" else (base_width // 2, base_width // 2, base_width)
    if stem == "deep" and len(stem_widths) != 3:
        raise ValueError(f"A deep stem has three convolutions; got stem_widths={tuple(stem_widths)}.")
    blocks, bottleneck = RESNET_DEPTHS[depth]
    epsilon = 1.001e-5 if style == "keras" else 1e-5
    norm = batch_norm_factory(epsilon, sync_batchnorm)

    x = _stem(x, stem, stem_widths, style, norm)
    features = {}
    plan = stride_plan((1, 2, 2, 2), output_stride, initial_stride=4)
    if dilations is not None:
        if len(dilations) != 4 or min(dilations) < 1:
            raise ValueError(f"dilations needs 4 values >= 1 (one per stage), got {tuple(dilations)}.")
        plan = [(stride, int(dilation)) for (stride, _), dilation in zip(plan, dilations)]
    for stage, (num_blocks, (stride, dilation)) in enumerate(zip(blocks[:stages], plan)):
        for block in range(num_blocks):
            block_dilation = dilation
            if block == 0 and contract_dilation and dilation > 1:
                block_dilation = dilation // 2
            x = _block(
                x,
                base_width * 2**stage,
                bottleneck=bottleneck,
                stride=stride if block == 0 else 1,
                dilation=block_dilation,
                style=style,
                norm=norm,
                name=f"conv{stage + 2}_block{block + 1}",
            )
        if stage == stages - 2:
            features["aux"] = x
    features["final"] = x
    return features
