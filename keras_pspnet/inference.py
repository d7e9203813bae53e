"""Inference-time transformations of a trained model."""

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
