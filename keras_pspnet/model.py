"""The PSPNet model: normalisation, dilated backbone, pyramid pooling module, heads."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import keras
import numpy as np
from keras import layers

from keras_pspnet.backbones import BACKBONES, backbone_features, load_imagenet_weights
from keras_pspnet.backbones.common import BN_MOMENTUM, batch_norm_factory
from keras_pspnet.backbones.imagenet import IMAGENET_PREPROCESSING, imagenet_application
from keras_pspnet.layers import AdaptiveAveragePooling2D, ClassLogits, ConcatConv2D, ResizeLike
from keras_pspnet.segmenter import PSPNet, as_pspnet

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # RGB, pixels 0-255 (torchvision, mmsegmentation)
IMAGENET_STD = (58.395, 57.12, 57.375)
DEFAULT_BINS = (1, 2, 3, 6)
CLASSIFIERS = ("classifier", "aux_classifier")
HEAD_LAYERS = ("ppm_", "head_", "aux_", "classifier")  # name prefixes of the layers after the backbone


def _conv_bn_relu(x, filters, kernel_size, norm, name):
    """Conv (no bias) + BN + ReLU; a list `x` is convolved as its channel concatenation."""
    x = ConcatConv2D(filters, kernel_size, padding="same", use_bias=False, name=f"{name}_conv")(
        x if isinstance(x, list) else [x]
    )
    x = norm(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def pyramid_pooling(features, bins: Sequence[int], channels: int, norm, align_corners: bool = False) -> list:
    """The pyramid pooling module: [the input map, each pooled, reduced, upsampled bin].

    The list is the channel concatenation of the paper, in the order of `bins` (a converted checkpoint's
    head conv expects its own order); the head's conv consumes it without building it. An empty bin list
    gives [features]: the dilated-FCN baseline of the paper's ablation.
    """
    branches = [features]
    for size in bins:
        x = AdaptiveAveragePooling2D(size, name=f"ppm_{size}_pool")(features)
        x = _conv_bn_relu(x, channels, 1, norm, f"ppm_{size}")
        branches.append(ResizeLike(align_corners, name=f"ppm_{size}_resize")([x, features]))
    return branches


def segmentation_head(x, image, num_classes, channels, dropout, norm, prefix, align_corners=False, metadata=None):
    """3x3 conv + BN + ReLU, dropout, 1x1 classifier, bilinear upsampling to the image size."""
    x = _conv_bn_relu(x, channels, 3, norm, prefix)
    x = layers.SpatialDropout2D(dropout, name=f"{prefix}_dropout")(x)
    name = "classifier" if prefix == "head" else f"{prefix}_classifier"
    x = layers.Conv2D(num_classes, 1, name=name)(x)
    x = ResizeLike(align_corners, name=f"{name}_resize")([x, image])
    # Logits stay float32 under mixed precision: the loss and argmax need them.
    return ClassLogits(metadata, name="logits" if prefix == "head" else prefix)(x)


def with_aux_head(model: keras.Model, sync_batchnorm: bool = False) -> PSPNet:
    """`model` (a PSPNet of ours without its auxiliary head, as training saves one) with a new, randomly initialised
    auxiliary FCN head on the stage build_pspnet feeds it (stage 3 of 4 of a ResNet, MobileNetV2's 96-channel stage),
    half the main head's width, its dropout and upsampling: to fine-tune a saved model as the recipe trains."""
    names = {layer.name for layer in model.layers}
    stages = sorted({int(m[1]) for n in names if (m := re.fullmatch(r"conv(\d+)_block\d+_out", n))})
    if "block_12_add" in names:  # MobileNetV2: the last block of its 96-channel stage
        features = "block_12_add"
    elif len(stages) >= 2 and "head_conv" in names:
        last = max(int(m[1]) for n in names if (m := re.fullmatch(rf"conv{stages[-2]}_block(\d+)_out", n)))
        features = f"conv{stages[-2]}_block{last}_out"
    else:
        raise ValueError(f"{model.name}: not a PSPNet of ours (no backbone stage to put an auxiliary head on)")
    logits = inference_model(model).output
    aux = segmentation_head(model.get_layer(features).output, model.input, logits.shape[-1],
                            model.get_layer("head_conv").filters // 2, model.get_layer("head_dropout").rate,
                            batch_norm_factory(1e-5, sync_batchnorm), "aux", uses_align_corners(model))
    return PSPNet(model.input, {"logits": logits, "aux": aux}, name=model.name)


def build_pspnet(
    num_classes: int,
    backbone: str = "resnet50",
    *,
    output_stride: int = 8,
    bins: Sequence[int] = DEFAULT_BINS,
    pool_channels: int | None = None,
    head_channels: int = 512,
    aux_channels: int = 256,
    dropout: float = 0.1,
    aux_head: bool = False,
    align_corners: bool = False,
    backbone_weights: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    input_shape: Sequence[int | None] = (None, None, 3),
    input_dtype: str = "float32",
    sync_batchnorm: bool = False,
    metadata: dict | None = None,
    name: str = "pspnet",
    **backbone_kwargs,
) -> PSPNet:
    """Builds PSPNet (Zhao et al., CVPR 2017) as a Keras functional model (`keras_pspnet.PSPNet`: `compile()` with
    no arguments is the reference training recipe).

    The model takes RGB pixel values 0-255 (`input_dtype` "float32" or "uint8"), normalises them inside
    and returns float32 logits at the input resolution, channels last.

    Args:
        num_classes: number of classes (>= 1).
        backbone: one of `keras_pspnet.backbones.BACKBONES`.
        output_stride: 8 (default, as the paper), 16 or 32.
        bins: pyramid bin sizes; () gives the dilated-FCN baseline without pyramid pooling.
        pool_channels: width of each pyramid branch; default a quarter of the backbone's channels.
        head_channels: width of the 3x3 conv before the classifier (512 in the paper).
        aux_channels: width of the auxiliary FCN head (256 in the reference code).
        dropout: dropout rate before the classifiers.
        aux_head: also output the auxiliary FCN head on stage 3; the model then returns
            {"logits": ..., "aux": ...} (for training; see `inference_model`).
        align_corners: bilinear upsampling maps corner pixels onto corner pixels (PyTorch's
            `align_corners=True`, as hszhao/semseg and mmsegmentation's 769x769 models); default
            half-pixel centres (`align_corners=False`, mmsegmentation's default).
        backbone_weights: None, "imagenet" or the path of the keras.applications no-top .h5 file (a
            keras-style backbone), or a reference's ImageNet backbone: a name of
            `keras_pspnet.convert.backbone.BACKBONE_WEIGHTS` ("resnet50_v1c", "torchvision_resnet50",
            "mobilenet_v2_mmcls", ...; also "open-mmlab://resnet50_v1c", "torchvision://resnet50",
            "mmcls://mobilenet_v2"), downloaded once and verified, or a .pth of one of those layouts or of the
            PSPNet authors' deep-stem ResNets (initmodel/resnet50_v2.pth); the backbone must be the one of the
            weights (presets `pspnet_resnetXX_v1c`, `_v1b`, `_semseg`, `pspnet_mobilenet_v2_mmseg`).
        mean: per-channel RGB mean of 0-255 pixels, subtracted inside the model. Default: what keras.applications'
            weights expect when they are `backbone_weights`, else the ImageNet mean (the references' weights too).
        std: per-channel RGB standard deviation, divided by after `mean`; default as `mean`.
        input_shape: (height, width, 3); height and width may be None.
        input_dtype: "float32" or "uint8".
        sync_batchnorm: synchronised BatchNormalization across replicas (TensorFlow backend only).
        metadata: what the logits mean, saved with the model (see `model_metadata`): {"classes": [{"name",
            "color"}, ...], "protocol": ..., "source": ...}.
        **backbone_kwargs: passed to the backbone (`stem`, `stem_widths`, `base_width`, `style`,
            `contract_dilation` for ResNets; `alpha` and `style` for MobileNetV2).
    """
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    if backbone not in BACKBONES:
        raise ValueError(f"Unknown backbone {backbone!r}; valid backbones: {sorted(BACKBONES)}.")
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"PSPNet takes RGB images: input_shape must be (height, width, 3), got {tuple(input_shape)}.")
    if input_dtype not in ("float32", "uint8"):
        raise ValueError(f"input_dtype must be 'float32' or 'uint8', got {input_dtype!r}.")
    if any(int(b) < 1 for b in bins):
        raise ValueError(f"Pyramid bins must be >= 1, got {tuple(bins)}.")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
    weights_file = None  # the references' ImageNet weights: downloaded (or found) before anything is built
    if backbone_weights is not None:
        from keras_pspnet.convert.backbone import reference_weights_file

        weights_file = reference_weights_file(backbone_weights)
    if mean is None or std is None:
        default_mean, default_std = IMAGENET_MEAN, IMAGENET_STD  # also what the references' backbones expect
        if backbone_weights is not None and weights_file is None:
            default_mean, default_std = IMAGENET_PREPROCESSING[imagenet_application(backbone)]
        mean, std = mean or default_mean, std or default_std
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"mean and std need 3 values (RGB) and std > 0, got mean={mean}, std={std}.")

    image = keras.Input(tuple(input_shape), dtype=input_dtype, name="image")
    x = layers.Normalization(mean=list(mean), variance=[s * s for s in std], name="normalize")(image)
    features = backbone_features(
        backbone, x, output_stride=output_stride, sync_batchnorm=sync_batchnorm, **backbone_kwargs
    )
    norm = batch_norm_factory(1e-5, sync_batchnorm)
    final = features["final"]
    pooled = pyramid_pooling(final, bins, pool_channels or final.shape[-1] // 4, norm, align_corners)
    logits = segmentation_head(pooled, image, num_classes, head_channels, dropout, norm, "head", align_corners,
                               metadata)
    outputs = logits
    if aux_head:
        aux = segmentation_head(features["aux"], image, num_classes, aux_channels, dropout, norm, "aux", align_corners)
        outputs = {"logits": logits, "aux": aux}
    model = PSPNet(image, outputs, name=name)
    if weights_file is not None:
        from keras_pspnet.convert.backbone import load_reference_weights

        load_reference_weights(model, weights_file, backbone_weights)
    elif backbone_weights is not None:
        load_imagenet_weights(model, backbone, backbone_weights, alpha=backbone_kwargs.get("alpha"))
    return model


def load_model(path: str, cache_dir: str | None = None) -> keras.Model:
    """A PSPNet as saved: a .keras file (our layers are registered on import), or a published name (`pspnet
    pretrained list`: downloaded, verified and converted once by `keras_pspnet.zoo`, with its auxiliary head);
    an existing file wins over a name. The one place a name or path becomes a model: `from_preset`, `init_from`
    and every command's --model come here. Errors are one line naming the file."""
    from keras_pspnet.registry import ZOO

    if path in ZOO and not os.path.exists(path):
        from keras_pspnet.zoo import from_pretrained

        return from_pretrained(path, aux_head=True, cache_dir=cache_dir)
    if not os.path.exists(path):
        hint = "" if path.endswith(".keras") else " (neither a file nor a published name of `pspnet pretrained list`)"
        raise FileNotFoundError(f"{path}: model not found{hint}")
    try:
        model = keras.saving.load_model(path)
    except (ValueError, OSError) as error:
        raise ValueError(f"{path}: cannot load the model ({str(error).splitlines()[0]})") from None
    # models of older versions were plain functional models: the same layers, with compile()'s defaults now
    return as_pspnet(model) if "logits" in {layer.name for layer in model.layers} else model


def model_input(images, dtype="float32"):
    """Pixels 0-255 (any float or integer array) as a model input of `dtype`: for "uint8" rounded and saturated,
    where a plain cast would truncate 123.7 to 123 and wrap 300 to 44. The one conversion predictors, exports and
    int8 calibration use."""
    if str(dtype) != "uint8":
        return keras.ops.cast(images, dtype)
    return keras.ops.cast(keras.ops.clip(keras.ops.round(keras.ops.cast(images, "float32")), 0, 255), "uint8")


def save_model(model: keras.Model, path: str, *, overwrite: bool = True) -> None:
    """Saves a .keras file beside `path` and renames it over `path` once complete: a kill during the write leaves
    the previous file (or none), never a damaged model under its name (see `keras_pspnet.files.atomic_output`)."""
    from keras_pspnet.files import atomic_output

    with atomic_output(path, overwrite=overwrite) as partial:
        model.save(partial)


def is_complete_model(path: str) -> bool:
    """Whether `path` is a whole .keras archive (its zip directory, config and weights are there): a file cut
    short by a kill is not."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return {"config.json", "model.weights.h5"} <= set(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def inference_model(model: keras.Model) -> keras.Model:
    """The model without its auxiliary head (same layers and weights), for evaluation and export.

    The one place that drops the auxiliary branch: export, evaluation, prediction, BN folding and the
    benchmarks call it on whatever model they are given (a no-op for single-output models).
    """
    if not isinstance(model.output, dict):
        return model
    return PSPNet(model.input, model.output["logits"], name=model.name)


def rebuild(model: keras.Model, *, sync_batchnorm: bool = False, dtype: str | None = None,
            num_classes: int | None = None, metadata: dict | None = None) -> keras.Model:
    """`model`'s architecture with fresh weights: the one place that changes a built model's settings.

    Batch norms synchronised across replicas or not, with PyTorch's momentum (training settings, also for
    models saved by older versions); every layer with the `dtype` policy (None: the current global policy,
    e.g. a mixed-precision run's); with `num_classes`, classifiers for that many classes; with `metadata`, a
    new `ClassLogits` output carrying it (also for models saved by keras-pspnet 0.1, whose output was a float32
    Activation).
    """

    def clone(layer):
        config = layer.get_config()
        config.pop("dtype", None)
        if dtype is not None:
            config["dtype"] = dtype
        if num_classes is not None and layer.name in CLASSIFIERS:
            config["filters"] = num_classes
        if isinstance(layer, layers.BatchNormalization):  # training settings: PyTorch's momentum, sync or not
            config.update(synchronized=sync_batchnorm, momentum=BN_MOMENTUM)
        if metadata is not None and layer.name == "logits":
            return ClassLogits(metadata, name="logits")
        return layer.__class__.from_config(config)

    return as_pspnet(keras.models.clone_model(model, clone_function=clone))


def portable_model(model: keras.Model) -> keras.Model:
    """The inference model as training saves it: float32 policy and plain batch norms, the same weights.

    A mixed-precision model would export float16 ops that TFLite's builtins lack, and a synchronised batch
    norm loads only on TensorFlow; neither belongs in a saved model (both are training-time settings).
    """
    model = inference_model(model)
    portable = rebuild(model, dtype="float32")
    portable.set_weights(model.get_weights())
    return portable


def head_lr_multipliers(model: keras.Model, factor: float) -> dict[str, float]:
    """{variable path: factor} for the layers the authors' code trains at 10x (`ppm`, `cls`, `aux` in
    hszhao/semseg tool/train.py): the pyramid pooling module, the head and the auxiliary head."""
    if factor == 1:
        return {}
    return {v.path: float(factor) for layer in model.layers if layer.name.startswith(HEAD_LAYERS)
            for v in layer.trainable_weights}


def model_metadata(model: keras.Model) -> dict:
    """What the model's logits mean, as saved with it (`build_pspnet(metadata=...)`); {} when unknown.

    Keys: "classes" ([{"name", "color"}, ...]), "protocol" (the test protocol of its published numbers,
    `keras_pspnet.protocol.TestProtocol` as a dict), "source" (the checkpoint it was converted from).
    """
    try:
        layer = model.get_layer("logits")
    except ValueError:
        return {}
    return dict(getattr(layer, "metadata", None) or {})


def set_model_metadata(model: keras.Model, **fields) -> None:
    """Adds or replaces metadata fields of `model` (and of every model sharing its output layer)."""
    layer = model.get_layer("logits")
    if not isinstance(layer, ClassLogits):
        raise ValueError(f"{model.name}: saved by an older keras-pspnet without metadata; rebuild or convert it again.")
    layer.metadata = {**layer.metadata, **fields}


def model_mean(model: keras.Model) -> np.ndarray:
    """The RGB mean a PSPNet subtracts from its input pixels (mid-grey for a model without normalisation)."""
    try:
        return np.asarray(model.get_layer("normalize").mean, np.float32).reshape(3)
    except ValueError:
        return np.full(3, 127.5, np.float32)


def _upsampling(model: keras.Model):
    """The head's final bilinear upsampling of the logits to the image size, or None (not a PSPNet of ours)."""
    try:
        return model.get_layer("classifier_resize")
    except ValueError:
        return None


def uses_align_corners(model: keras.Model) -> bool:
    """Whether the model's bilinear upsampling aligns corners (PyTorch `align_corners=True`)."""
    return bool(getattr(_upsampling(model), "align_corners", False))


def low_resolution_logits(model: keras.Model) -> keras.Model | None:
    """The model up to its classifier: the logits before the final upsampling (None for a model without it)."""
    upsampling = _upsampling(model)
    return None if upsampling is None else keras.Model(model.input, upsampling.input[0])
