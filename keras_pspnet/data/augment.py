"""The paper's augmentation on (image, mask) pairs, in TensorFlow ops for tf.data (graph mode).

Written with TensorFlow ops rather than keras.layers.Random*: those draw their own random parameters per
call, and image and mask must get the same scale, angle, flip and crop (the mask with nearest-neighbour
interpolation and the ignore label as fill). The pipeline runs TensorFlow ops whatever the Keras backend.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import tensorflow as tf

from keras_pspnet.data.info import IGNORE_LABEL, AugmentConfig


def _uniform(seed, salt, low=0.0, high=1.0):
    return tf.random.stateless_uniform([], seed + [0, salt], minval=low, maxval=high)


def random_scale(image, mask, seed, low, high):
    factor = _uniform(seed, 1, low, high)
    size = tf.cast(tf.round(tf.cast(tf.shape(mask), tf.float32) * factor), tf.int32)
    image = tf.image.resize(image, size, method="bilinear")
    mask = tf.image.resize(mask[..., None], size, method="nearest")[..., 0]
    return image, mask


def random_rotate(image, mask, seed, degrees, fill):
    angle = _uniform(seed, 2, -degrees, degrees) * math.pi / 180.0
    height, width = tf.cast(tf.shape(mask)[0], tf.float32), tf.cast(tf.shape(mask)[1], tf.float32)
    cy, cx = (height - 1) / 2, (width - 1) / 2
    cos, sin = tf.cos(angle), tf.sin(angle)
    # Output pixel (x, y) samples input (cos(x-cx) - sin(y-cy) + cx, sin(x-cx) + cos(y-cy) + cy).
    transform = tf.stack([cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0])[None]
    shape = tf.shape(mask)

    def warp(x, interpolation, fill_value):
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=x[None], transforms=transform, output_shape=shape, fill_value=fill_value,
            interpolation=interpolation, fill_mode="CONSTANT")[0]

    # The image is filled with the mean colour: rotate (image - mean) with fill 0 and add the mean back.
    image = warp(image - fill, "BILINEAR", 0.0) + fill
    mask = warp(tf.cast(mask[..., None], tf.float32), "NEAREST", float(IGNORE_LABEL))[..., 0]
    return image, tf.cast(mask, tf.uint8)


def gaussian_blur(image, sigma: float = 1.1, size: int = 5):
    """Separable Gaussian blur of an HxWx3 float image (reflect padding, as OpenCV)."""
    x = tf.range(size, dtype=tf.float32) - (size - 1) / 2
    kernel = tf.exp(-(x**2) / (2 * sigma**2))
    kernel /= tf.reduce_sum(kernel)
    pad = size // 2
    padded = tf.pad(image[None], [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    rows = tf.tile(kernel[:, None, None, None], [1, 1, 3, 1])
    cols = tf.tile(kernel[None, :, None, None], [1, 1, 3, 1])
    blurred = tf.nn.depthwise_conv2d(padded, rows, [1, 1, 1, 1], "VALID")
    return tf.nn.depthwise_conv2d(blurred, cols, [1, 1, 1, 1], "VALID")[0]


def pad_and_crop(image, mask, seed, crop: Sequence[int], fill):
    """Pads to at least `crop` (image with `fill`, mask with ignore), then crops at a random position."""
    shape = tf.shape(mask)
    pad_h, pad_w = tf.maximum(crop[0] - shape[0], 0), tf.maximum(crop[1] - shape[1], 0)
    paddings = [[pad_h // 2, pad_h - pad_h // 2], [pad_w // 2, pad_w - pad_w // 2]]
    image = tf.pad(image - fill, paddings + [[0, 0]]) + fill
    mask = tf.pad(mask, paddings, constant_values=IGNORE_LABEL)
    shape = tf.shape(mask)
    top = tf.cast(tf.floor(_uniform(seed, 5) * tf.cast(shape[0] - crop[0] + 1, tf.float32)), tf.int32)
    left = tf.cast(tf.floor(_uniform(seed, 6) * tf.cast(shape[1] - crop[1] + 1, tf.float32)), tf.int32)
    image = image[top : top + crop[0], left : left + crop[1]]
    mask = mask[top : top + crop[0], left : left + crop[1]]
    return tf.ensure_shape(image, [crop[0], crop[1], 3]), tf.ensure_shape(mask, [crop[0], crop[1]])


def augment(example: dict, seed, crop: Sequence[int], config: AugmentConfig, mean: Sequence[float]):
    """One training sample: float32 image [crop, 3] (pixels 0-255) and uint8 mask [crop] (255 = ignore).

    `seed` is a stateless seed (shape [2], int64): the same seed gives the same sample.
    """
    fill = tf.constant(mean, tf.float32)
    image, mask = tf.cast(example["image"], tf.float32), example["mask"]
    if config.scale != (1.0, 1.0):
        image, mask = random_scale(image, mask, seed, *config.scale)
    if config.rotate:
        image, mask = random_rotate(image, mask, seed, config.rotate, fill)
    if config.blur:
        image = tf.cond(_uniform(seed, 3) < 0.5, lambda: gaussian_blur(image), lambda: image)
    if config.flip:
        flip = _uniform(seed, 4) < 0.5
        image = tf.cond(flip, lambda: image[:, ::-1], lambda: image)
        mask = tf.cond(flip, lambda: mask[:, ::-1], lambda: mask)
    return pad_and_crop(image, mask, seed, crop, fill)
