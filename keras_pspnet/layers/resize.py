"""Bilinear resizing to another tensor's spatial size, the only backend-specific op of the model."""

from __future__ import annotations

import keras
from keras import ops


def _corner_aligned_axis(images, axis: int, out_size):
    """Linear interpolation along `axis` with corners aligned: output i samples input i * (in - 1) / (out - 1)."""
    in_size = ops.shape(images)[axis]
    scale = ops.cast(in_size - 1, "float32") / ops.cast(ops.maximum(out_size - 1, 1), "float32")
    position = ops.cast(ops.arange(out_size), "float32") * scale
    low = ops.minimum(ops.cast(ops.floor(position), "int32"), in_size - 1)
    high = ops.minimum(low + 1, in_size - 1)
    shape = [1, 1, 1, 1]
    shape[axis] = -1
    fraction = ops.cast(ops.reshape(position - ops.cast(low, "float32"), shape), images.dtype)
    below, above = ops.take(images, low, axis=axis), ops.take(images, high, axis=axis)
    return below + (above - below) * fraction


def resize_bilinear(images, size, align_corners: bool = False):
    """Resizes NHWC `images` to `size` = (height, width) bilinearly, as PyTorch's `interpolate(mode="bilinear")`.

    `align_corners=False` (mmsegmentation's default) samples at half-pixel centres; `align_corners=True`
    (hszhao/semseg, mmsegmentation's 769x769 Cityscapes models) maps corner pixels onto corner pixels.
    `size` may hold symbolic sizes on TensorFlow (graph mode with unknown input size, as in `fit` and
    `export`): `keras.ops.image.resize` rejects those, so TensorFlow gets its own resize op directly (which
    also converts to TFLite's RESIZE_BILINEAR with the same flags). `keras.ops.image.resize` has no corner
    alignment: other backends get it as two gathers and a lerp per axis.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        resized = tf.raw_ops.ResizeBilinear(images=images, size=tf.cast(size, tf.int32), align_corners=align_corners,
                                            half_pixel_centers=not align_corners)
        return tf.cast(resized, images.dtype)
    if align_corners:
        return _corner_aligned_axis(_corner_aligned_axis(images, 1, size[0]), 2, size[1])
    return ops.image.resize(images, size, interpolation="bilinear", antialias=False)


@keras.saving.register_keras_serializable(package="keras_pspnet")
class ResizeLike(keras.layers.Layer):
    """Resizes `inputs[0]` bilinearly to the height and width of `inputs[1]`.

    Deliberately not `keras.layers.Resizing`: inside a network that layer makes every BatchNormalization
    after it run in training mode when the model is called without `training=` (as `model.export` does).
    """

    def __init__(self, align_corners: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.align_corners = bool(align_corners)

    def call(self, inputs):
        images, reference = inputs
        return resize_bilinear(images, ops.shape(reference)[1:3], self.align_corners)

    def compute_output_shape(self, input_shape):
        images, reference = input_shape
        return (images[0], reference[1], reference[2], images[3])

    def get_config(self):
        return {**super().get_config(), "align_corners": self.align_corners}
