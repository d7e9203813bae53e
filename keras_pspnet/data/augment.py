"""Training augmentation of (image, mask) pairs as the reference codebases do it, in TensorFlow ops for tf.data.

Two recipes (`AugmentConfig.recipe`; presets in `keras_pspnet.data.info.RECIPES`):

- "semseg", the authors' code: hszhao/semseg tool/train.py `train_transform` with util/transform.py:
  RandScale -> RandRotate -> RandomGaussianBlur -> RandomHorizontalFlip -> Crop('rand', padding=mean).
  util/dataset.py SemData makes the image float32 before any of it, so nothing is rounded.
- "mmseg", mmsegmentation 1.2.2 (configs/_base_/datasets/ade20k.py, cityscapes.py): RandomResize ->
  RandomCrop(cat_max_ratio=0.75) -> RandomFlip -> PhotoMetricDistortion, then SegDataPreProcessor pads bottom and
  right. The image stays uint8 (LoadImageFromFile), so cv2.resize rounds and PhotoMetricDistortion truncates.

Each step repeats OpenCV 4.x's arithmetic (resize coordinates and fixed-point weights, warpAffine's 1/32-pixel
grid, cvtColor's HSV tables and rounding), so for the same random draws an "mmseg" sample equals mmseg's bit for
bit (checked against mmsegmentation 1.2.2 itself) and a "semseg" sample the authors' to float32 rounding: 1e-3 of a
grey level where pip's OpenCV resizes float images with Intel IPP, whose weights differ in the last bits.
tests/test_augment.py compares every step with OpenCV.

Only the crop is computed: the part of the resized (rotated, blurred) image that the crop keeps is located first
and only it is resampled, so the cost follows the crop size rather than the scaled image (a Cityscapes image at
scale 2 is 4096x2048). Image and mask share one set of random draws (`sample_params`), made with
tf.random.stateless_uniform from the per-example seed and a salt per draw: the same seed gives the same sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from keras_pspnet.data.info import IGNORE_LABEL, AugmentConfig

# Salts: one random stream per draw.
_SCALE, _ROTATE, _ANGLE, _BLUR, _FLIP, _CROP, _PHOTO, _RECROP = 1, 2, 3, 4, 5, 6, 10, 100
CAT_MAX_RATIO_TRIES = 10  # mmseg RandomCrop.crop_bbox: `for _ in range(10)`
# mmseg PhotoMetricDistortion's defaults (the configs use them).
BRIGHTNESS_DELTA, CONTRAST_RANGE, SATURATION_RANGE, HUE_DELTA = 32, (0.5, 1.5), (0.5, 1.5), 18
# cv2.GaussianBlur(image, (5, 5), 0): getGaussianKernel takes its fixed table for ksize <= 7 and sigma <= 0, the
# binomial [1 4 6 4 1] / 16 -- not the sigma-1.1 Gaussian that sigma = 0.3 * ((ksize - 1) / 2 - 1) + 0.8 suggests.
BLUR_KERNEL = (0.0625, 0.25, 0.375, 0.25, 0.0625)
# cv2.cvtColor uint8 RGB2HSV (color_hsv.simd.hpp RGB2HSV_b): hsv_shift = 12 fixed point with these division tables.
_SDIV = np.array([0] + [round((255 << 12) / i) for i in range(1, 256)], np.int32)
_HDIV = np.array([0] + [round((180 << 12) / (6.0 * i)) for i in range(1, 256)], np.int32)
# cvtColor's HSV2RGB_b SIMD block: 4 vectors of v_float32, 8 lanes in the AVX2 code OpenCV dispatches to on
# x86-64 (16 pixels where v_float32 has 4 lanes: SSE4.1-only CPUs, NEON).
HSV_SIMD_PIXELS = 32
# HSV2RGB_native's sector_data: which of v, v(1 - s), v(1 - s h), v(1 - s (1 - h)) is b, g, r per sector.
_HSV_SECTORS = np.array([[1, 3, 0], [1, 0, 2], [3, 0, 1], [0, 2, 1], [0, 1, 3], [2, 1, 0]], np.int32)


def _uniform(seed, salt, low=0.0, high=1.0, dtype=tf.float32):
    """Draw number `salt` of the sample with stateless seed `seed`. Folded in, not added: the seeds of
    neighbouring samples differ by one, and (seed + salt) would repeat one sample's draws in the next."""
    seed = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), salt)
    return tf.random.stateless_uniform([], seed, minval=low, maxval=high, dtype=dtype)


def _randint(seed, salt, n):
    """Uniform integer in [0, n) (Python's random.randint(0, n - 1), numpy's randint(0, n))."""
    draw = tf.floor(_uniform(seed, salt, dtype=tf.float64) * tf.cast(n, tf.float64))
    return tf.minimum(tf.cast(draw, tf.int32), n - 1)


def _cv_round(x):
    """cvRound / saturate_cast<int>(double): to nearest, ties to even (tf.round's rule)."""
    return tf.cast(tf.round(x), tf.int32)


# ---------------------------------------------------------------------------------------------------- geometry


def resize_geometry(shape, draw, config: AugmentConfig):
    """(size [h, w] int32, inv_scale [y, x] float64) of the resize step for the random `draw` (factor or ratio).

    inv_scale is what cv::resize calls inv_scale_x/y (destination pixels per source pixel); coordinates map with
    its inverse, so for "semseg" they follow the drawn factor, not size / shape.
    """
    hw = tf.cast(shape, tf.float64)
    if config.recipe == "semseg":
        # util/transform.py RandScale: cv2.resize(image, None, fx=s, fy=s): dsize =
        # saturate_cast<int>(w * fx) (cvRound), inv_scale_x = fx.
        size = tf.maximum(_cv_round(hw * draw), 1)
        inv_scale = tf.stack([draw, draw])
    else:
        # mmcv RandomResize._random_sample_ratio: scale = int(scale[0] * ratio), int(scale[1] * ratio);
        # Resize(keep_ratio=True) -> mmcv.imrescale -> rescale_size: factor = min(max(scale) / max(h, w),
        # min(scale) / min(h, w)); _scale_size: int(w * factor + 0.5); imresize: cv2.resize(img, (new_w, new_h)),
        # where cv::resize sets inv_scale_x = new_w / w.
        target = tf.floor(tf.constant(config.base_scale, tf.float64) * draw)
        factor = tf.minimum(tf.reduce_max(target) / tf.reduce_max(hw), tf.reduce_min(target) / tf.reduce_min(hw))
        size = tf.maximum(tf.cast(tf.floor(hw * factor + 0.5), tf.int32), 1)
        inv_scale = tf.cast(size, tf.float64) / hw
    # cv::resize copies the image when dsize == ssize, whatever fx says.
    inv_scale = tf.where(tf.reduce_all(tf.equal(size, shape)), tf.ones([2], tf.float64), inv_scale)
    return size, inv_scale


def crop_window(size, crop: Sequence[int], offset, flip, pad: str):
    """Rows [r0, r1) and columns [c0, c1) of the resized image (before any flip) that a crop keeps, and the row and
    column where they land in the crop: (r0, r1, c0, c1, top, left).

    `offset` is the reference's random crop offset: "center" (semseg Crop, after RandomHorizontalFlip): into the
    flipped image padded to at least the crop (int(pad / 2) before); "bottom_right" (mmseg RandomCrop, before
    RandomFlip): into the resized image, the crop clipped to it.
    """
    crop = tf.constant(crop, tf.int32)
    start = offset - tf.maximum(crop - size, 0) // 2 if pad == "center" else offset
    low, high = tf.maximum(start, 0), tf.minimum(start + crop, size)
    c0, c1 = low[1], high[1]
    if pad == "center":  # columns counted in the flipped image
        c0, c1 = tf.where(flip, size[1] - high[1], low[1]), tf.where(flip, size[1] - low[1], high[1])
    return low[0], high[0], c0, c1, low[0] - start[0], low[1] - start[1]


def _inverse_rotation(angle, size):
    """cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1) (util/transform.py RandRotate), inverted as
    cv::warpAffine does without WARP_INVERSE_MAP: destination -> source, in float64 as OpenCV."""
    h, w = tf.unstack(tf.cast(size, tf.float64))
    cx, cy = w / 2, h / 2
    radians = angle * (math.pi / 180)
    alpha, beta = tf.cos(radians), tf.sin(radians)
    m = [alpha, beta, (1 - alpha) * cx - beta * cy, -beta, alpha, beta * cx + (1 - alpha) * cy]
    d = 1.0 / (m[0] * m[4] - m[1] * m[3])
    i0, i1, i3, i4 = m[4] * d, m[1] * -d, m[3] * -d, m[0] * d
    return i0, i1, -i0 * m[2] - i1 * m[5], i3, i4, -i3 * m[2] - i4 * m[5]


def _warp_coords(inverse, r0, r1, c0, c1, inter_bits):
    """Source coordinates of destination rows [r0, r1) x columns [c0, c1) as cv::WarpAffineInvoker computes them:
    AB_BITS = 10 fixed point, rounded to 1 / 2**inter_bits of a pixel (INTER_BITS = 5 for INTER_LINEAR, 0 for
    INTER_NEAREST). Returns int32 (X, Y) in those units."""
    i0, i1, b1, i3, i4, b2 = inverse
    y, x = tf.cast(tf.range(r0, r1), tf.float64), tf.cast(tf.range(c0, c1), tf.float64)
    round_delta = 512 if inter_bits == 0 else 16  # AB_SCALE / 2, AB_SCALE / INTER_TAB_SIZE / 2
    x0 = _cv_round((i1 * y + b1) * 1024) + round_delta
    y0 = _cv_round((i4 * y + b2) * 1024) + round_delta
    adelta, bdelta = _cv_round(i0 * x * 1024), _cv_round(i3 * x * 1024)
    shift = 10 - inter_bits
    return (tf.bitwise.right_shift(x0[:, None] + adelta[None], shift),
            tf.bitwise.right_shift(y0[:, None] + bdelta[None], shift))


def _nearest_source(index, inv_scale, length):
    """cv2.resize INTER_NEAREST (resizeNN): source index cvFloor(x * (1. / inv_scale)), clamped to length - 1."""
    return tf.minimum(tf.cast(tf.floor(tf.cast(index, tf.float64) * (1.0 / inv_scale)), tf.int32), length - 1)


def mask_window(mask, params, r0, r1, c0, c1, rotate: bool):
    """Rows [r0, r1) x columns [c0, c1) of the resized (and, where params["rotate"], rotated) mask, uint8: nearest
    resize, then warpAffine INTER_NEAREST with fill 255, composed into one gather from the original mask."""
    shape = tf.shape(mask)
    size, inv_scale = params["size"], params["inv_scale"]

    def plain():
        rows = _nearest_source(tf.range(r0, r1), inv_scale[0], shape[0])
        cols = _nearest_source(tf.range(c0, c1), inv_scale[1], shape[1])
        return tf.gather(tf.gather(mask, rows), cols, axis=1)

    def rotated():
        x, y = _warp_coords(_inverse_rotation(params["angle"], size), r0, r1, c0, c1, inter_bits=0)
        inside = (x >= 0) & (x < size[1]) & (y >= 0) & (y < size[0])  # remapNearest, BORDER_CONSTANT
        rows = _nearest_source(tf.clip_by_value(y, 0, size[0] - 1), inv_scale[0], shape[0])
        cols = _nearest_source(tf.clip_by_value(x, 0, size[1] - 1), inv_scale[1], shape[1])
        values = tf.gather_nd(mask, tf.stack([rows, cols], -1))
        return tf.where(inside, values, tf.constant(IGNORE_LABEL, mask.dtype))

    return tf.cond(params["rotate"], rotated, plain) if rotate else plain()


# ------------------------------------------------------------------------------------------------------- pixels


def _linear_taps(start, stop, inv_scale, length, clamp_weights: bool):
    """cv::resizeGeneric's INTER_LINEAR taps of destination positions [start, stop): fx = (float)((dx + 0.5) *
    scale - 0.5), sx = cvFloor(fx), fx -= sx, with scale = 1. / inv_scale. Columns (`clamp_weights`): sx < 0 or
    sx >= length - 1 -> that edge pixel, weight 0; rows: both source rows clamped, weights kept."""
    f = tf.cast((tf.cast(tf.range(start, stop), tf.float64) + 0.5) * (1.0 / inv_scale) - 0.5, tf.float32)
    floor = tf.floor(f)
    frac, s = f - floor, tf.cast(floor, tf.int32)
    if clamp_weights:
        frac = tf.where((s < 0) | (s >= length - 1), tf.zeros_like(frac), frac)
        s = tf.clip_by_value(s, 0, length - 1)
        return s, tf.minimum(s + 1, length - 1), frac
    return tf.clip_by_value(s, 0, length - 1), tf.clip_by_value(s + 1, 0, length - 1), frac


def resize_region(image, inv_scale, r0, r1, c0, c1, fixed_point: bool):
    """Rows [r0, r1) x columns [c0, c1) of cv2.resize(image, ..., INTER_LINEAR) with cv::resize's inv_scale,
    float32. Rows are filtered horizontally first, then blended vertically, as resizeGeneric does.

    fixed_point (a uint8 image, "mmseg"): OpenCV's 8-bit arithmetic -- 11-bit weights (INTER_RESIZE_COEF_BITS,
    saturate_cast<short>(w * 2048)), an integer horizontal pass, and the vertical pass of VResizeLinearVec_32s8u,
    ((b0 * (S0 >> 4)) >> 16) + ((b1 * (S1 >> 4)) >> 16) + 2) >> 2 -- bit for bit. Otherwise float32 as for
    semseg's float image.
    """
    shape = tf.shape(image)
    y0, y1, fy = _linear_taps(r0, r1, inv_scale[0], shape[0], clamp_weights=False)
    x0, x1, fx = _linear_taps(c0, c1, inv_scale[1], shape[1], clamp_weights=True)
    top, left = tf.reduce_min(y0), tf.reduce_min(x0)  # only the source pixels the taps read
    image = image[top : tf.reduce_max(y1) + 1, left : tf.reduce_max(x1) + 1]
    y0, y1, x0, x1 = y0 - top, y1 - top, x0 - left, x1 - left
    if fixed_point:
        source = tf.cast(image, tf.int32)
        a0, a1 = _cv_round((1.0 - fx) * 2048.0)[None, :, None], _cv_round(fx * 2048.0)[None, :, None]
        b0, b1 = _cv_round((1.0 - fy) * 2048.0)[:, None, None], _cv_round(fy * 2048.0)[:, None, None]

        def horizontal(rows):
            rows = tf.gather(source, rows)
            return tf.gather(rows, x0, axis=1) * a0 + tf.gather(rows, x1, axis=1) * a1

        s0, s1 = tf.bitwise.right_shift(horizontal(y0), 4), tf.bitwise.right_shift(horizontal(y1), 4)
        out = tf.bitwise.right_shift(tf.bitwise.right_shift(b0 * s0, 16) + tf.bitwise.right_shift(b1 * s1, 16) + 2, 2)
        return tf.cast(tf.clip_by_value(out, 0, 255), tf.float32)
    source = tf.cast(image, tf.float32)
    w0, w1 = (1.0 - fx)[None, :, None], fx[None, :, None]

    def horizontal(rows):
        rows = tf.gather(source, rows)
        return tf.gather(rows, x0, axis=1) * w0 + tf.gather(rows, x1, axis=1) * w1

    return horizontal(y0) * (1.0 - fy)[:, None, None] + horizontal(y1) * fy[:, None, None]


def rotate_region(resized, params, r0, r1, c0, c1, fill):
    """Rows [r0, r1) x columns [c0, c1) of cv2.warpAffine(resized image, rotation, INTER_LINEAR,
    BORDER_CONSTANT, borderValue=fill) (util/transform.py RandRotate), float32.

    `resized(r0, r1, c0, c1)` gives a part of the resized image; only the part the window samples is made.
    OpenCV 4.x: source positions on a 1/32-pixel grid (_warp_coords), weights from its table
    (1 - ty, ty) x (1 - tx, tx) with t = k / 32, neighbours outside the image = fill (remapBilinear).
    """
    size = params["size"]
    x, y = _warp_coords(_inverse_rotation(params["angle"], size), r0, r1, c0, c1, inter_bits=5)
    ix, iy = tf.bitwise.right_shift(x, 5), tf.bitwise.right_shift(y, 5)
    tx = tf.cast(tf.bitwise.bitwise_and(x, 31), tf.float32) / 32  # INTER_TAB_SIZE = 32 steps
    ty = tf.cast(tf.bitwise.bitwise_and(y, 31), tf.float32) / 32
    # The part of the resized image holding every in-image neighbour (at least one pixel).
    top = tf.clip_by_value(tf.reduce_min(iy), 0, size[0] - 1)
    bottom = tf.clip_by_value(tf.reduce_max(iy) + 2, top + 1, size[0])
    left = tf.clip_by_value(tf.reduce_min(ix), 0, size[1] - 1)
    right = tf.clip_by_value(tf.reduce_max(ix) + 2, left + 1, size[1])
    # Padded by one pixel of fill: a neighbour outside the image is then outside the part, and clipping its index
    # to the padded part reads fill (a side of the part inside the image has no neighbour beyond it).
    part = tf.pad(resized(top, bottom, left, right) - fill, [[1, 1], [1, 1], [0, 0]]) + fill
    width = right - left + 2
    rows = tf.clip_by_value(iy - top + 1, 0, bottom - top)  # the neighbour below: + 1
    cols = tf.clip_by_value(ix - left + 1, 0, right - left)
    index = rows * width + cols
    flat = tf.reshape(part, [-1, 3])

    def neighbour(offset, weight):
        return tf.gather(flat, index + offset) * weight[..., None]

    value = (neighbour(0, (1 - ty) * (1 - tx)) + neighbour(1, (1 - ty) * tx) + neighbour(width, ty * (1 - tx))
             + neighbour(width + 1, ty * tx))
    outside = (ix >= size[1]) | (ix + 1 < 0) | (iy >= size[0]) | (iy + 1 < 0)  # all four neighbours: fill itself
    return tf.where(outside[..., None], fill + tf.zeros_like(value), value)


def gaussian_blur(image):
    """cv2.GaussianBlur(image, (5, 5), 0) of an HxWx3 float image (util/transform.py RandomGaussianBlur): the
    separable kernel BLUR_KERNEL, rows first, BORDER_REFLECT_101 (tf.pad's REFLECT)."""
    k0, k1, k2 = BLUR_KERNEL[:3]

    def filter_rows(x):  # along axis 1
        x = tf.pad(x, [[0, 0], [2, 2], [0, 0]], mode="REFLECT")
        n = tf.shape(x)[1] - 4
        return (x[:, :n] + x[:, 4:]) * k0 + (x[:, 1 : n + 1] + x[:, 3 : n + 3]) * k1 + x[:, 2 : n + 2] * k2

    def filter_columns(x):  # along axis 0
        x = tf.pad(x, [[2, 2], [0, 0], [0, 0]], mode="REFLECT")
        n = tf.shape(x)[0] - 4
        return (x[:n] + x[4:]) * k0 + (x[1 : n + 1] + x[3 : n + 3]) * k1 + x[2 : n + 2] * k2

    return filter_columns(filter_rows(image))


def _as_uint8_values(image):
    """OpenCV's saturate_cast<uchar> of a float result (round half to even, clip), kept as float32."""
    return tf.clip_by_value(tf.round(image), 0.0, 255.0)


def rgb_to_hsv(image):
    """cv2.cvtColor(uint8 image, COLOR_RGB2HSV) (= mmcv.bgr2hsv of the BGR image), int32 H in [0, 180), S, V."""
    r, g, b = tf.unstack(tf.cast(image, tf.int32), axis=-1)
    v = tf.maximum(tf.maximum(b, g), r)
    diff = v - tf.minimum(tf.minimum(b, g), r)
    s = tf.bitwise.right_shift(diff * tf.gather(_SDIV, v) + 2048, 12)
    h = tf.where(v == r, g - b, tf.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = tf.bitwise.right_shift(h * tf.gather(_HDIV, diff) + 2048, 12)
    return tf.stack([tf.where(h < 0, h + 180, h), s, v], -1)


def hsv_to_rgb(hsv):
    """cv2.cvtColor(uint8 HSV image, COLOR_HSV2RGB) (= mmcv.hsv2bgr, channels reversed), int32.

    OpenCV 4.x (HSV2RGB_b) converts each row in blocks of HSV_SIMD_PIXELS with HSV2RGB_simd -- float32, 1 - s * h
    fused (one rounding), results truncated -- and the row's remaining pixels with HSV2RGB_native, which rounds
    (saturate_cast<uchar>) instead. Both reproduced bit for bit.
    """
    h, s, v = tf.unstack(tf.cast(hsv, tf.float32), axis=-1)
    s, v = s * np.float32(1 / 255), v * np.float32(1 / 255)
    h = h * (np.float32(6) / np.float32(180))
    sector = tf.floor(h)
    h = h - sector
    s64 = tf.cast(s, tf.float64)

    def fused(t):  # 1 - s * t with a single rounding, as an FMA
        return tf.cast(1.0 - s64 * tf.cast(t, tf.float64), tf.float32)

    tab = [v, v * (1.0 - s), v * fused(h), v * fused(1.0 - h)]
    sector = tf.cast(sector, tf.int32)

    def channel(order):  # tab[order[sector]]
        out = tab[order[5]]
        for k in range(4, -1, -1):
            out = tf.where(sector == k, tab[order[k]], out)
        return out

    rgb = tf.stack([channel(_HSV_SECTORS[:, 2]), channel(_HSV_SECTORS[:, 1]), channel(_HSV_SECTORS[:, 0])], -1) * 255.0
    width = tf.shape(hsv)[1]
    tail = tf.range(width) >= width // HSV_SIMD_PIXELS * HSV_SIMD_PIXELS
    rgb = tf.where(tail[None, :, None], tf.round(rgb), tf.floor(rgb))
    return tf.cast(tf.clip_by_value(rgb, 0.0, 255.0), tf.int32)


def photometric_distortion(image, params):
    """mmseg PhotoMetricDistortion.transform on a uint8-valued image (float32 in, float32 out): brightness, contrast
    (first if params["contrast_first"], i.e. mode == 1), saturation, hue, contrast (mode == 0); each applied where its
    params flag says (p 0.5). convert(): img.astype(float32) * alpha + beta, clip to [0, 255], astype(uint8)."""
    image = _as_uint8_values(image)

    def convert(x, alpha=1.0, beta=0.0):
        return tf.floor(tf.clip_by_value(x * alpha + beta, 0.0, 255.0))

    def maybe(flag, fn, x):
        return tf.cond(flag, lambda: fn(x), lambda: x)

    def contrast(x):
        return convert(x, alpha=params["contrast_alpha"])

    def saturation(x):
        hsv = rgb_to_hsv(x)
        s = convert(tf.cast(hsv[..., 1], tf.float32), alpha=params["saturation_alpha"])
        return tf.cast(hsv_to_rgb(tf.stack([hsv[..., 0], tf.cast(s, tf.int32), hsv[..., 2]], -1)), tf.float32)

    def hue(x):
        hsv = rgb_to_hsv(x)
        h = tf.math.floormod(hsv[..., 0] + params["hue_delta"], 180)
        return tf.cast(hsv_to_rgb(tf.stack([h, hsv[..., 1], hsv[..., 2]], -1)), tf.float32)

    image = maybe(params["brightness"], lambda x: convert(x, beta=params["brightness_beta"]), image)
    image = maybe(params["contrast"] & params["contrast_first"], contrast, image)
    image = maybe(params["saturation"], saturation, image)
    image = maybe(params["hue"], hue, image)
    return maybe(params["contrast"] & ~params["contrast_first"], contrast, image)


# ------------------------------------------------------------------------------------------------- the recipes


def _crop_offset(seed, salt, size, crop):
    """semseg Crop: random.randint(0, h - crop_h) on the padded image; mmseg RandomCrop: np.random.randint(0,
    margin_h + 1) with margin_h = max(h - crop_h, 0). The same range: max(h - crop_h, 0) + 1 values."""
    room = tf.maximum(size - tf.constant(crop, tf.int32), 0) + 1
    return tf.stack([_randint(seed, salt, room[0]), _randint(seed, salt + 1, room[1])])


def sample_params(seed, mask, crop: Sequence[int], config: AugmentConfig) -> dict:
    """Every random draw of one sample (the mask is needed for cat_max_ratio)."""
    false = tf.constant(False)
    dtype = tf.float64  # Python's random and numpy draw doubles
    draw = _uniform(seed, _SCALE, config.scale[0], config.scale[1], dtype)
    size, inv_scale = resize_geometry(tf.shape(mask), draw, config)
    rotate = config.rotates
    params = {
        "size": size, "inv_scale": inv_scale,
        # RandRotate: random.random() < p, then angle = rotate[0] + (rotate[1] - rotate[0]) * random.random()
        "rotate": _uniform(seed, _ROTATE) < config.rotate_prob if rotate else false,
        "angle": _uniform(seed, _ANGLE, -config.rotate, config.rotate, dtype),
        "blur": _uniform(seed, _BLUR) < 0.5 if config.blur else false,  # RandomGaussianBlur: random.random() < 0.5
        "flip": _uniform(seed, _FLIP) < 0.5 if config.flip else false,  # p = 0.5 in both recipes
        "offset": _crop_offset(seed, _CROP, size, crop),
    }
    if config.cat_max_ratio < 1.0:
        params["offset"] = _cat_max_ratio_offset(seed, mask, params, crop, config, rotate)
    # PhotoMetricDistortion: random.randint(2) for each step and for the mode; uniform(-32, 32) brightness;
    # uniform(0.5, 1.5) contrast and saturation; randint(-18, 18) hue: an integer in [-18, 17].
    coin = [_uniform(seed, _PHOTO + i) < 0.5 if config.photometric else false for i in range(5)]
    params.update(brightness=coin[0], contrast_first=coin[1], contrast=coin[2], saturation=coin[3], hue=coin[4])
    params["brightness_beta"] = _uniform(seed, _PHOTO + 5, -BRIGHTNESS_DELTA, BRIGHTNESS_DELTA)
    params["contrast_alpha"] = _uniform(seed, _PHOTO + 6, *CONTRAST_RANGE)
    params["saturation_alpha"] = _uniform(seed, _PHOTO + 7, *SATURATION_RANGE)
    params["hue_delta"] = _randint(seed, _PHOTO + 8, 2 * HUE_DELTA) - HUE_DELTA
    return params


def _cat_max_ratio_offset(seed, mask, params, crop, config, rotate):
    """mmseg RandomCrop.crop_bbox: up to 10 re-draws while the crop's labels (255 left out) have fewer than two
    classes or the largest covers >= cat_max_ratio of them; after 10 failures the 11th draw stands unchecked."""

    def acceptable(offset):
        r0, r1, c0, c1, _, _ = crop_window(params["size"], crop, offset, params["flip"], config.pad)
        labels = tf.cast(tf.reshape(mask_window(mask, params, r0, r1, c0, c1, rotate), [-1]), tf.int32)
        counts = tf.math.bincount(labels, minlength=256, maxlength=256)
        counts = tf.cast(tf.concat([counts[:IGNORE_LABEL], counts[IGNORE_LABEL + 1:]], 0), tf.float64)
        share = tf.reduce_max(counts) / tf.maximum(tf.reduce_sum(counts), 1.0)
        return (tf.math.count_nonzero(counts) > 1) & (share < config.cat_max_ratio)

    def retry(i, offset):
        return tf.cond(i < CAT_MAX_RATIO_TRIES, lambda: ~acceptable(offset), lambda: tf.constant(False))

    def redraw(i, offset):
        return i + 1, _crop_offset(seed, _RECROP + 2 * i, params["size"], crop)

    _, offset = tf.while_loop(retry, redraw, [tf.constant(0), params["offset"]])
    return offset


def apply_params(example: dict, params: dict, crop: Sequence[int], config: AugmentConfig, mean: Sequence[float]):
    """The sample that `params` (sample_params) describe: float32 image [crop, 3] (0-255), uint8 mask [crop]."""
    fill = tf.constant(mean, tf.float32)
    image, mask = example["image"], example["mask"]
    fixed_point = config.recipe == "mmseg"  # a uint8 image: cv2 rounds after each step
    if fixed_point and image.dtype != tf.uint8:
        image = tf.cast(tf.clip_by_value(tf.round(tf.cast(image, tf.float32)), 0, 255), tf.uint8)
    size = params["size"]
    r0, r1, c0, c1, top, left = crop_window(size, crop, params["offset"], params["flip"], config.pad)

    # The window, widened by the blur's reach where there is image.
    margin = 2 if config.blur else 0
    e0, e1 = tf.maximum(r0 - margin, 0), tf.minimum(r1 + margin, size[0])
    f0, f1 = tf.maximum(c0 - margin, 0), tf.minimum(c1 + margin, size[1])

    def resized(a0, a1, b0, b1):
        if config.recipe == "semseg" and config.scale == (1.0, 1.0):  # no resizing: the window as it is
            return tf.cast(image[a0:a1, b0:b1], tf.float32)
        return resize_region(image, params["inv_scale"], a0, a1, b0, b1, fixed_point)

    rotate = config.rotates
    if rotate:
        def rotated():
            out = rotate_region(resized, params, e0, e1, f0, f1, fill)
            return _as_uint8_values(out) if fixed_point else out  # (cv2 on uint8 rounds; not in either recipe)

        part = tf.cond(params["rotate"], rotated, lambda: resized(e0, e1, f0, f1))
    else:
        part = resized(e0, e1, f0, f1)
    if config.blur:
        def blurred():
            out = gaussian_blur(part)
            return _as_uint8_values(out) if fixed_point else out

        big_enough = tf.minimum(e1 - e0, f1 - f0) >= 3  # REFLECT_101 by 2 pixels needs 3 (images of 3+ pixels)
        part = tf.cond(params["blur"] & big_enough, blurred, lambda: part)
    piece = part[r0 - e0 : r1 - e0, c0 - f0 : c1 - f0]
    labels = mask_window(mask, params, r0, r1, c0, c1, rotate)
    if config.flip:
        piece = tf.cond(params["flip"], lambda: piece[:, ::-1], lambda: piece)
        labels = tf.cond(params["flip"], lambda: labels[:, ::-1], lambda: labels)
    if config.photometric:
        piece = photometric_distortion(piece, params)
    # semseg Crop: cv2.copyMakeBorder with value=mean / ignore_label; mmseg SegDataPreProcessor: pad_val=0 after
    # normalisation (the mean colour) and seg_pad_val=255, bottom and right (top = left = 0 then).
    shape = tf.shape(labels)
    paddings = [[top, crop[0] - top - shape[0]], [left, crop[1] - left - shape[1]]]
    piece = tf.pad(piece - fill, paddings + [[0, 0]]) + fill
    labels = tf.pad(labels, paddings, constant_values=IGNORE_LABEL)
    return tf.ensure_shape(piece, [crop[0], crop[1], 3]), tf.ensure_shape(labels, [crop[0], crop[1]])


def augment(example: dict, seed, crop: Sequence[int], config: AugmentConfig, mean: Sequence[float]):
    """One training sample: float32 image [crop, 3] (pixels 0-255) and uint8 mask [crop] (255 = ignore).

    `seed` is a stateless seed (shape [2], int64): the same seed gives the same sample. `mean` (RGB, 0-255) fills
    what the rotation and the padding uncover.
    """
    params = sample_params(seed, example["mask"], crop, config)
    return apply_params(example, params, crop, config, mean)
