"""Decoding images: the one decoder training, evaluation, prediction and the exported SavedModel use."""

from __future__ import annotations

import tensorflow as tf

# EXIF's APP1 segment comes right after the start of image, or after a JFIF APP0 (the EXIF standard places it
# there); segments are at most 64 KiB, so the first 128 KiB hold it in every conforming file.
EXIF_SEARCH_BYTES = 2**17
_MAX_SEGMENTS = 32
_MAX_IFD_ENTRIES = 64
_ORIENTATION_TAG = 0x0112


def exif_orientation(image_bytes: tf.Tensor) -> tf.Tensor:
    """The EXIF orientation (int32 1-8) of a JPEG file's bytes; 1 (upright) when there is none or it is broken.

    Graph ops only, no Python, so the exported SavedModel applies it in TF Serving: TensorFlow's decoders ignore
    EXIF, and there is no EXIF op. Walks the JPEG segments to the APP1 "Exif" one, then reads the TIFF header's
    byte order and the first IFD's entries for tag 0x0112.
    """
    head = tf.io.decode_raw(tf.strings.substr(image_bytes, 0, EXIF_SEARCH_BYTES), tf.uint8)
    head = tf.cast(tf.pad(head, [[0, EXIF_SEARCH_BYTES + 16 - tf.size(head)]]), tf.int32)

    def byte(index):  # reads past the end are zeros, never errors
        return tf.gather(head, tf.clip_by_value(index, 0, EXIF_SEARCH_BYTES + 15))

    def big_endian16(index):
        return byte(index) * 256 + byte(index + 1)

    def walk_condition(step, position, found):
        marker = byte(position + 1)
        return ((step < _MAX_SEGMENTS) & (found < 0) & (position < EXIF_SEARCH_BYTES) & tf.equal(byte(position), 0xFF)
                & tf.not_equal(marker, 0xDA) & tf.not_equal(marker, 0xD9))  # start of scan, end of image

    def walk_body(step, position, found):
        marker = byte(position + 1)
        signature = byte(position + 4 + tf.range(6))
        is_exif = tf.equal(marker, 0xE1) & tf.reduce_all(tf.equal(signature, [69, 120, 105, 102, 0, 0]))
        # a marker may be preceded by any number of 0xFF fill bytes
        following = tf.where(tf.equal(marker, 0xFF), position + 1, position + 2 + big_endian16(position + 2))
        return step + 1, following, tf.where(is_exif, position + 10, found)

    _, _, tiff = tf.while_loop(walk_condition, walk_body, (0, 2, -1))
    little = tf.equal(byte(tiff), 0x49) & tf.equal(byte(tiff + 1), 0x49)  # "II"; "MM" is big-endian

    def uint(index, size):
        values = byte(index[..., None] + tf.range(size))
        weights = 256 ** tf.where(little, tf.range(size), tf.range(size - 1, -1, -1))
        return tf.reduce_sum(values * weights, axis=-1)

    ifd = tiff + uint(tiff + 4, 4)
    entries = ifd + 2 + 12 * tf.range(_MAX_IFD_ENTRIES)
    matches = (tf.equal(uint(entries, 2), _ORIENTATION_TAG) & (tf.range(_MAX_IFD_ENTRIES) < uint(ifd, 2))
               & (tf.equal(byte(0), 0xFF) & tf.equal(byte(1), 0xD8)) & (tiff >= 0))
    values = tf.boolean_mask(uint(entries + 8, 2), matches)  # a SHORT sits in the first 2 bytes of the value field
    orientation = tf.cond(tf.size(values) > 0, lambda: values[0], lambda: 1)
    return tf.where((orientation >= 1) & (orientation <= 8), orientation, 1)


def apply_orientation(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """The upright image [H, W, C] of one stored with EXIF `orientation` 1-8 (as PIL's ImageOps.exif_transpose and
    every photo viewer show it)."""
    transposed = lambda: tf.transpose(image, [1, 0, 2])  # noqa: E731
    return tf.switch_case(orientation - 1, [
        lambda: image,
        lambda: image[:, ::-1],  # 2: mirrored
        lambda: image[::-1, ::-1],  # 3: rotated 180
        lambda: image[::-1],  # 4: upside down mirrored
        transposed,  # 5
        lambda: transposed()[:, ::-1],  # 6: the camera held rotated: turn 90 degrees clockwise
        lambda: transposed()[::-1, ::-1],  # 7
        lambda: transposed()[::-1],  # 8: turn 90 degrees counter-clockwise
    ])


def decode_rgb(image_bytes: tf.Tensor) -> tf.Tensor:
    """Upright RGB uint8 [H, W, 3] from the bytes of a JPEG, PNG, GIF (first frame), BMP or WebP file.

    JPEGs are decoded with libjpeg's accurate integer IDCT, as OpenCV and PIL decode them (the references read
    images with cv2.imread); `tf.io.decode_image` defaults to the fast IDCT, whose pixels differ from theirs
    by up to about 5 grey levels. A JPEG's EXIF orientation is applied (phones store portraits sideways).
    Grayscale is repeated to 3 channels, alpha is dropped, palettes are expanded and 16-bit values keep their
    high byte.
    """
    image = tf.cond(tf.io.is_jpeg(image_bytes),
                    lambda: apply_orientation(tf.io.decode_jpeg(image_bytes, channels=3, dct_method="INTEGER_ACCURATE"),
                                              exif_orientation(image_bytes)),
                    lambda: tf.io.decode_image(image_bytes, channels=3, expand_animations=False))
    image.set_shape([None, None, 3])
    return image
