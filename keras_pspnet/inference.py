"""Inference: BN folding, and scoring an image under a test protocol (whole, windows, scales, flips)."""

from __future__ import annotations

import keras
import numpy as np

from keras_pspnet.model import inference_model
from keras_pspnet.protocol import TestProtocol, own_protocol

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
    frozen graphs but not for Keras 3 models, whose BN is not a FusedBatchNorm op. An auxiliary head is
    dropped (`inference_model`).
    """
    model = inference_model(model)
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
        folded_bias = (bias - mean) * scale + beta
        folded.get_layer(conv_name).set_weights([kernel.astype("float32"), folded_bias.astype("float32")])
    return folded


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def _resize(array: np.ndarray, size: tuple[int, int], align_corners: bool = False) -> np.ndarray:
    """Bilinear resize of an [H, W, C] float array (PyTorch / OpenCV semantics; no-op at the same size)."""
    if tuple(array.shape[:2]) == tuple(size):
        return array
    import tensorflow as tf  # the data side runs TensorFlow ops whatever the Keras backend

    from keras_pspnet.layers.resize import resize_bilinear

    return resize_bilinear(tf.constant(array[None], tf.float32), size, align_corners)[0].numpy()


def _windows(height: int, width: int, crop, stride):
    """(top, left) of sliding windows covering the image; the last row and column end at its edge."""
    rows = -(-max(height - crop[0], 0) // stride[0]) + 1
    cols = -(-max(width - crop[1], 0) // stride[1]) + 1
    for row in range(rows):
        for col in range(cols):
            yield max(min(row * stride[0], height - crop[0]), 0), max(min(col * stride[1], width - crop[1]), 0)


def _semseg_probabilities(predictor, image: np.ndarray, protocol: TestProtocol) -> np.ndarray:
    """tool/test.py's scale_process: mean padding to the window, per window softmax (and its mirror), averaged."""

    def net(window):  # net_process
        probabilities = _softmax(np.asarray(predictor.predict_on_batch(window[None]), np.float32))[0]
        if protocol.flip:
            mirrored = _softmax(np.asarray(predictor.predict_on_batch(window[None, :, ::-1]), np.float32))[0]
            probabilities = (probabilities + mirrored[:, ::-1]) / 2
        return probabilities

    if protocol.mode == "whole":
        return net(image)
    crop = protocol.crop
    height, width = image.shape[:2]
    pad_h, pad_w = max(crop[0] - height, 0), max(crop[1] - width, 0)
    top, left = pad_h // 2, pad_w // 2
    padded = np.empty((height + pad_h, width + pad_w, 3), np.float32)
    padded[...] = predictor.mean  # padding with the mean colour, as the official code
    padded[top : top + height, left : left + width] = image
    total, count = None, np.zeros(padded.shape[:2] + (1,), np.float32)
    for y, x in _windows(*padded.shape[:2], crop, protocol.window_stride):
        window = net(padded[y : y + crop[0], x : x + crop[1]])
        if total is None:
            total = np.zeros(padded.shape[:2] + window.shape[-1:], np.float32)
        total[y : y + crop[0], x : x + crop[1]] += window
        count[y : y + crop[0], x : x + crop[1]] += 1
    return (total / count)[top : top + height, left : left + width]


def _mmseg_logits(predictor, image: np.ndarray, protocol: TestProtocol) -> np.ndarray:
    """EncoderDecoder.whole_inference / slide_inference: logits of the image, windows averaged, no padding."""
    if protocol.mode == "whole":
        return np.asarray(predictor.predict_on_batch(image[None]), np.float32)[0]
    crop = protocol.crop
    height, width = image.shape[:2]
    total, count = None, np.zeros((height, width, 1), np.float32)
    for y, x in _windows(height, width, crop, protocol.window_stride):
        logits = np.asarray(predictor.predict_on_batch(image[None, y : y + crop[0], x : x + crop[1]]), np.float32)[0]
        if total is None:
            total = np.zeros((height, width, logits.shape[-1]), np.float32)
        total[y : y + crop[0], x : x + crop[1]] += logits
        count[y : y + crop[0], x : x + crop[1]] += 1
    return total / count


def predict_scores(model, image: np.ndarray, protocol: TestProtocol | None = None) -> np.ndarray:
    """Class probabilities [H, W, classes] of one RGB image [H, W, 3] (pixels 0-255), at its resolution.

    `model`: a Keras model (an auxiliary head is dropped) or a predictor of `keras_pspnet.predictors`.
    `protocol`: how to run it (`keras_pspnet.protocol.TestProtocol`); default: the model's own (a pretrained
    model's: that of its published numbers), else the whole image at its size. Scales, flips and windows are
    averaged as the protocol's reference does; the argmax is the prediction. For many images with a model
    that has an auxiliary head, pass `inference_model(model)` (made once) rather than the model.
    """
    from keras_pspnet.predictors import as_predictor

    predictor = as_predictor(model)
    protocol = protocol or own_protocol(predictor.metadata)
    image = np.asarray(image, np.float32)
    height, width = image.shape[:2]
    total, terms = np.zeros((height, width, predictor.num_classes), np.float32), 0
    for scale in protocol.scales:
        scaled = _resize(image, protocol.scaled_size(height, width, scale))
        if protocol.style == "semseg":
            total += _resize(_semseg_probabilities(predictor, scaled, protocol), (height, width))
            terms += 1
            continue
        scaled = scaled.round().clip(0, 255)  # mmseg resizes the uint8 image: the model sees whole pixel values
        for mirrored in (False, True) if protocol.flip else (False,):
            logits = _mmseg_logits(predictor, scaled[:, ::-1] if mirrored else scaled, protocol)
            logits = logits[:, ::-1] if mirrored else logits
            total += _softmax(_resize(logits, (height, width), predictor.align_corners))
            terms += 1
    return total / terms
