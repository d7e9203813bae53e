"""The model's output layer, which carries what its logits mean."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_pspnet")
class ClassLogits(keras.layers.Layer):
    """An output of the model: its input as float32 logits (also under mixed precision), and what they mean.

    `metadata` (JSON-like: class names and colours, the checkpoint it came from, the test protocol of its
    published numbers) is part of the layer's config, the one thing Keras saves, clones and reloads with a
    model: every .keras file, `inference_model` and `fold_batch_norms` keep it without knowing of it.
    """

    def __init__(self, metadata: dict | None = None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.metadata = dict(metadata or {})

    def call(self, inputs):
        return ops.cast(inputs, "float32")

    def get_config(self):
        return {**super().get_config(), "metadata": self.metadata}
