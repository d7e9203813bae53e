"""Decoding images: the one decoder training, evaluation and the exported SavedModel use."""

from __future__ import annotations

import tensorflow as tf


def decode_rgb(image_bytes: tf.Tensor) -> tf.Tensor:
    """RGB uint8 [H, W, 3] from the bytes of a JPEG, PNG, GIF (first frame) or BMP file.

    JPEGs are decoded with libjpeg's accurate integer IDCT, as OpenCV and PIL decode them (the references read
    images with cv2.imread); `tf.io.decode_image` defaults to the fast IDCT, whose pixels differ from theirs
    by up to about 5 grey levels.
    """
    image = tf.cond(tf.io.is_jpeg(image_bytes),
                    lambda: tf.io.decode_jpeg(image_bytes, channels=3, dct_method="INTEGER_ACCURATE"),
                    lambda: tf.io.decode_image(image_bytes, channels=3, expand_animations=False))
    image.set_shape([None, None, 3])
    return image
