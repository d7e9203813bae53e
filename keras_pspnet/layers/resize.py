"""Bilinear resizing to another tensor's spatial size, the only backend-specific op of the model."""

from __future__ import annotations

import keras
from keras import ops


def resize_bilinear(images, size):
    """Resizes NHWC `images` to `size` = (height, width), bilinear with half-pixel centres.

    Matches `torch.nn.functional.interpolate(mode="bilinear", align_corners=False)` (mmsegmentation's
    default) on every backend. `size` may hold symbolic sizes on TensorFlow (graph mode with unknown
    input size, as in `fit` and `export`): `keras.ops.image.resize` rejects those, so TensorFlow gets
    `tf.image.resize` directly.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        resized = tf.image.resize(images, size, method="bilinear", antialias=False)
        return tf.cast(resized, images.dtype)
    return ops.image.resize(images, size, interpolation="bilinear", antialias=False)


@keras.saving.register_keras_serializable(package="keras_pspnet")
class ResizeLike(keras.layers.Layer):
    """Resizes `inputs[0]` bilinearly to the height and width of `inputs[1]`.

    Deliberately not `keras.layers.Resizing`: inside a network that layer makes every BatchNormalization
    after it run in training mode when the model is called without `training=` (as `model.export` does).
    """

    def call(self, inputs):
        images, reference = inputs
        return resize_bilinear(images, ops.shape(reference)[1:3])

    def compute_output_shape(self, input_shape):
        images, reference = input_shape
        return (images[0], reference[1], reference[2], images[3])
