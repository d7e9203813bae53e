"""Inference: BN folding, and whole-image, sliding-window, multi-scale and flipped prediction."""

from __future__ import annotations

import keras
import numpy as np

_CONVS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)


def _conv_bn_pairs(model: keras.Model) -> dict[str, str]:
    """{BatchNormalization name: Conv name} for every BN whose input is a conv feeding only that BN."""
    pairs = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization) and len(layer._inbound_nodes) == 1:
            producer = layer._inbound_nodes[0].input_tensors[0]._keras_history.operation
            if isinstance(producer, _CONVS) and len(producer._outbound_nodes) == 1 and layer.axis in (-1, 3):
                pairs[layer.name] = producer.name
    return pairs


def fold_batch_norms(model: keras.Model) -> keras.Model:
    """A copy of `model` with each BatchNormalization folded into the convolution before it.

    Inference only: the copy computes what `model(x, training=False)` computes (up to float rounding)
    with one pass less over every feature map, which is what TensorFlow's own graph optimiser does for
    frozen graphs but not for Keras 3 models, whose BN is not a FusedBatchNorm op.
    """
    pairs = _conv_bn_pairs(model)
    folded_convs = set(pairs.values())

    def clone(layer):
        config = layer.get_config()
        if layer.name in folded_convs:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    def call(layer, *args, **kwargs):  # a folded BN is skipped: its input goes straight on
        return args[0] if layer.name in pairs else layer(*args, **kwargs)

    folded = keras.models.clone_model(model, clone_function=clone, call_function=call)
    for layer in model.layers:
        if layer.name in folded_convs or layer.name in pairs or not layer.weights:
            continue
        folded.get_layer(layer.name).set_weights(layer.get_weights())
    for bn_name, conv_name in pairs.items():
        bn, conv = model.get_layer(bn_name), model.get_layer(conv_name)
        gamma, beta, mean, variance = (np.asarray(w, dtype="float64") for w in bn.get_weights())
        scale = gamma / np.sqrt(variance + bn.epsilon)
        kernel = np.asarray(conv.kernel, dtype="float64")
        bias = np.asarray(conv.bias, dtype="float64") if conv.use_bias else np.zeros_like(mean)
        if isinstance(conv, keras.layers.DepthwiseConv2D):  # kernel (kh, kw, channels, multiplier)
            kernel = kernel * scale.reshape(kernel.shape[2], kernel.shape[3])
        else:  # kernel (kh, kw, in, out)
            kernel = kernel * scale
        folded.get_layer(conv_name).set_weights([kernel.astype("float32"), ((bias - mean) * scale + beta).astype("float32")])
    return folded


def model_mean(model) -> np.ndarray:
    """The RGB mean a PSPNet subtracts from its input pixels (a predictor's `mean`; mid-grey otherwise)."""
    if not isinstance(model, keras.Model):
        return np.asarray(model.mean, np.float32)
    try:
        return np.asarray(model.get_layer("normalize").mean, np.float32).reshape(3)
    except ValueError:
        return np.full(3, 127.5, np.float32)


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def _probabilities(model: keras.Model, images: np.ndarray, flip: bool) -> np.ndarray:
    """Softmax of the model on a batch, averaged with the mirrored batch when `flip`."""
    probabilities = _softmax(np.asarray(model.predict_on_batch(images), dtype=np.float32))
    if flip:
        mirrored = _softmax(np.asarray(model.predict_on_batch(images[:, :, ::-1]), dtype=np.float32))
        probabilities = (probabilities + mirrored[:, :, ::-1]) / 2
    return probabilities


def _sliding_window(model, image, crop, flip, fill, stride_rate=2 / 3):
    """The official PSPNet evaluation: crops with stride 2/3 of the crop, probabilities averaged."""
    height, width = image.shape[:2]
    pad_h, pad_w = max(crop[0] - height, 0), max(crop[1] - width, 0)
    top, left = pad_h // 2, pad_w // 2
    padded = np.empty((height + pad_h, width + pad_w, 3), np.float32)
    padded[...] = fill  # padding with the mean colour, as the official code
    padded[top : top + height, left : left + width] = image
    stride = [int(np.ceil(c * stride_rate)) for c in crop]
    grid = [int(np.ceil(max(padded.shape[i] - crop[i], 0) / stride[i])) + 1 for i in (0, 1)]
    total, count = None, np.zeros(padded.shape[:2] + (1,), np.float32)
    for row in range(grid[0]):
        for col in range(grid[1]):
            y = min(row * stride[0], padded.shape[0] - crop[0])
            x = min(col * stride[1], padded.shape[1] - crop[1])
            window = _probabilities(model, padded[None, y : y + crop[0], x : x + crop[1]], flip)[0]
            if total is None:
                total = np.zeros(padded.shape[:2] + window.shape[-1:], np.float32)
            total[y : y + crop[0], x : x + crop[1]] += window
            count[y : y + crop[0], x : x + crop[1]] += 1
    return (total / count)[top : top + height, left : left + width]


def predict_probabilities(model, image: np.ndarray, *, mode: str = "whole", crop=None, scales=(1.0,),
                          flip: bool = False, fill=None) -> np.ndarray:
    """Class probabilities [H, W, classes] of one RGB image [H, W, 3] (pixels 0-255) at its resolution.

    `model`: a Keras model or any predictor with `predict_on_batch(images) -> logits` and `mean`
    (`keras_pspnet.predict` has them for SavedModels and .tflite files).

    Args:
        mode: "whole" (the model on the whole image) or "slide" (windows of `crop`, stride 2/3 of it).
        crop: (height, width) of the windows; required for "slide".
        scales: image scales whose probabilities are averaged (multi-scale: 0.5, 0.75, ..., 1.75).
        flip: also average the horizontally mirrored prediction.
        fill: colour for padding windows (default: the model's normalisation mean, as the official code).
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}.")
    if mode == "slide" and not crop:
        raise ValueError("sliding-window inference needs a crop size.")
    import tensorflow as tf  # resizing probability maps: TF is our data-side dependency on every backend

    image = np.asarray(image, np.float32)
    height, width = image.shape[:2]
    fill = np.asarray(fill if fill is not None else model_mean(model), np.float32)
    total = None
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = image if size == (height, width) else tf.image.resize(image, size, method="bilinear").numpy()
        if mode == "whole":
            probabilities = _probabilities(model, scaled[None], flip)[0]
        else:
            probabilities = _sliding_window(model, scaled, crop, flip, fill)
        if size != (height, width):
            probabilities = tf.image.resize(probabilities, (height, width), method="bilinear").numpy()
        total = probabilities if total is None else total + probabilities
    return total / len(scales)
