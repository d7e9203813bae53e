"""The training augmentation, step by step, against OpenCV and small ports of the reference code.

"semseg": hszhao/semseg util/transform.py (RandScale, RandRotate, RandomGaussianBlur, RandomHorizontalFlip, Crop)
as tool/train.py composes them, written out with the same cv2 calls. "mmseg": mmsegmentation 1.2.2's RandomResize
(mmcv.imrescale), RandomCrop(cat_max_ratio), RandomFlip, PhotoMetricDistortion and SegDataPreProcessor's padding,
ported to numpy + cv2 below (mmseg itself is not needed). Each deterministic step gets fixed parameters; the random
draws are checked for their ranges and probabilities.
"""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from keras_pspnet.data import CONTEXT_INFO, AugmentConfig, load_source, train_pipeline
from keras_pspnet.data.augment import (
    _CROP,
    _RECROP,
    HSV_SIMD_PIXELS,
    _crop_offset,
    apply_params,
    augment,
    crop_window,
    gaussian_blur,
    hsv_to_rgb,
    mask_window,
    photometric_distortion,
    resize_geometry,
    resize_region,
    rgb_to_hsv,
    rotate_region,
    sample_params,
)
from keras_pspnet.data.info import RECIPES, augment_config, default_colors

cv2 = pytest.importorskip("cv2")  # the `test` extra installs opencv-python-headless

MEAN = (123.675, 116.28, 103.53)
SEMSEG, MMSEG = RECIPES["semseg"], RECIPES["mmseg"]
# OpenCV 5 rewrote warpAffine (no 1/32-pixel grid); the authors' code ran on OpenCV 3/4.
CLASSIC_WARP = int(cv2.__version__.split(".")[0]) < 5


@pytest.fixture
def no_ipp():
    """cv2.resize of float32 images goes through Intel IPP in the pip wheels, whose bilinear weights differ from
    OpenCV's own code by ~1e-4 of a grey level; without it OpenCV's code runs, which the port follows exactly."""
    previous = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(False)
    yield
    cv2.ipp.setUseIPP(previous)


def make_image(rng, height, width):
    """Smooth gradients plus noise: interpolation errors show, and so would a wrong pixel."""
    yy, xx = np.mgrid[:height, :width]
    smooth = np.stack([(yy * 7 + xx * 3) % 256, (xx * 5 + 40) % 256, (yy * 2 + xx) % 256], -1)
    return np.clip(smooth + rng.integers(-20, 21, smooth.shape), 0, 255).astype(np.uint8)


def make_labels(rng, height, width, block=4, classes=6):
    labels = rng.integers(0, classes, (height // block + 1, width // block + 1)).astype(np.uint8)
    return labels.repeat(block, 0).repeat(block, 1)[:height, :width]


def semseg_params(size, inv_scale, rotate=False, angle=0.0, blur=False, flip=False, offset=(0, 0)):
    return {"size": tf.constant(size, tf.int32), "inv_scale": tf.constant(inv_scale, tf.float64),
            "rotate": tf.constant(rotate), "angle": tf.constant(angle, tf.float64), "blur": tf.constant(blur),
            "flip": tf.constant(flip), "offset": tf.constant(offset, tf.int32)}


# ------------------------------------------------------------------------------------------- semseg reference


def semseg_reference(image, label, s, rotate, angle, blur, flip, h_off, w_off, crop):
    """util/transform.py on util/dataset.py's float32 image, with these draws."""
    image = np.float32(image)
    image = cv2.resize(image, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)  # RandScale
    label = cv2.resize(label, None, fx=s, fy=s, interpolation=cv2.INTER_NEAREST)
    if rotate:  # RandRotate
        h, w = label.shape
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1)
        image = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                               borderValue=MEAN)
        label = cv2.warpAffine(label, matrix, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                               borderValue=255)
    if blur:  # RandomGaussianBlur
        image = cv2.GaussianBlur(image, (5, 5), 0)
    if flip:  # RandomHorizontalFlip
        image, label = cv2.flip(image, 1), cv2.flip(label, 1)
    h, w = label.shape  # Crop(crop_type='rand', padding=mean, ignore_label=255)
    pad_h, pad_w = max(crop[0] - h, 0), max(crop[1] - w, 0)
    pad_h_half, pad_w_half = int(pad_h / 2), int(pad_w / 2)
    if pad_h > 0 or pad_w > 0:
        borders = (pad_h_half, pad_h - pad_h_half, pad_w_half, pad_w - pad_w_half)
        image = cv2.copyMakeBorder(image, *borders, cv2.BORDER_CONSTANT, value=MEAN)
        label = cv2.copyMakeBorder(label, *borders, cv2.BORDER_CONSTANT, value=255)
    rows, cols = slice(h_off, h_off + crop[0]), slice(w_off, w_off + crop[1])
    return image[rows, cols], label[rows, cols]


@pytest.mark.parametrize("s", [0.5, 0.73, 1.0029, 1.37, 2.0])
def test_semseg_resize_matches_cv2(rng, no_ipp, s):
    # 1.0029: cv2 computes dsize = (37, 53) = the input size and then copies instead of resampling.
    image, labels = make_image(rng, 37, 53).astype(np.float32), make_labels(rng, 37, 53)
    expected = cv2.resize(image, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)
    expected_labels = cv2.resize(labels, None, fx=s, fy=s, interpolation=cv2.INTER_NEAREST)
    size, inv_scale = resize_geometry(tf.constant([37, 53]), tf.constant(s, tf.float64), SEMSEG)
    assert tuple(size.numpy()) == expected.shape[:2]
    h, w = expected.shape[:2]
    out = resize_region(tf.constant(image), inv_scale, 0, h, 0, w, fixed_point=False).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-4)  # float32 sums in another order: a few ulps
    params = semseg_params(size, inv_scale)
    np.testing.assert_array_equal(mask_window(tf.constant(labels), params, 0, h, 0, w, False), expected_labels)
    # A window of the resize is that window of the whole resize.
    part = resize_region(tf.constant(image), inv_scale, 3, h - 2, 5, w - 1, fixed_point=False).numpy()
    np.testing.assert_allclose(part, expected[3 : h - 2, 5 : w - 1], atol=1e-4)


def test_semseg_resize_with_ipp_is_within_a_thousandth_of_a_grey_level(rng):
    image = make_image(rng, 40, 60).astype(np.float32)
    expected = cv2.resize(image, None, fx=1.37, fy=1.37, interpolation=cv2.INTER_LINEAR)
    inv_scale = tf.constant([1.37, 1.37], tf.float64)
    out = resize_region(tf.constant(image), inv_scale, 0, expected.shape[0], 0, expected.shape[1], False).numpy()
    np.testing.assert_allclose(out, expected, atol=2e-3)


@pytest.mark.skipif(not CLASSIC_WARP, reason="OpenCV 5 changed warpAffine; the reference is OpenCV 4.x")
@pytest.mark.parametrize("angle", [-9.3, 0.4, 7.0])
def test_rotation_matches_warp_affine(rng, angle):
    """cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1) + warpAffine: the centre, the direction, the
    1/32-pixel grid, the mean-colour fill of the image and the 255 fill of the mask."""
    image, labels = make_image(rng, 41, 57).astype(np.float32), make_labels(rng, 41, 57)
    matrix = cv2.getRotationMatrix2D((57 / 2, 41 / 2), angle, 1)
    expected = cv2.warpAffine(image, matrix, (57, 41), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=MEAN)
    expected_labels = cv2.warpAffine(labels, matrix, (57, 41), flags=cv2.INTER_NEAREST,
                                     borderMode=cv2.BORDER_CONSTANT, borderValue=255)
    params = semseg_params([41, 57], [1.0, 1.0], rotate=True, angle=angle)

    def resized(r0, r1, c0, c1):
        return tf.constant(image)[r0:r1, c0:c1]

    out = rotate_region(resized, params, 0, 41, 0, 57, tf.constant(MEAN, tf.float32)).numpy()
    # Float sums in another order; a cos/sin one ulp off libm's could move a position across a 1/32 step
    # (it does not here: the largest difference is float rounding).
    np.testing.assert_allclose(out, expected, atol=1e-3)
    labels_out = mask_window(tf.constant(labels), params, 0, 41, 0, 57, True).numpy()
    assert (labels_out != expected_labels).mean() <= 0.002  # nearest: a coordinate on .5 could round either way
    if angle > 5:  # the fill reached the corners
        assert (expected_labels == 255).sum() > 20 and np.allclose(out[0, 0], MEAN)
    # A window of the rotation is that window of the whole rotation.
    part = rotate_region(resized, params, 5, 30, 9, 44, tf.constant(MEAN, tf.float32)).numpy()
    np.testing.assert_allclose(part, expected[5:30, 9:44], atol=1e-3)


def test_gaussian_blur_matches_cv2(rng):
    # sigma 0 with ksize 5 takes OpenCV's fixed table, the binomial kernel (not a sigma-1.1 Gaussian).
    np.testing.assert_allclose(cv2.getGaussianKernel(5, 0)[:, 0], [1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16])
    image = rng.uniform(0, 255, (9, 11, 3)).astype(np.float32)
    expected = cv2.GaussianBlur(image, (5, 5), 0)  # BORDER_REFLECT_101
    np.testing.assert_allclose(gaussian_blur(tf.constant(image)).numpy(), expected, atol=1e-4)


@pytest.mark.skipif(not CLASSIC_WARP, reason="OpenCV 5 changed warpAffine; the reference is OpenCV 4.x")
def test_semseg_recipe_matches_the_authors_transforms(rng, no_ipp):
    """Whole samples: scale (with and without the copy shortcut), rotation, blur, flip, padding and crop."""
    for case in range(16):
        height, width = rng.integers(20, 90, 2)
        image, labels = make_image(rng, height, width), make_labels(rng, height, width)
        crop = tuple(int(c) for c in rng.integers(16, 80, 2))
        s = float(rng.uniform(0.5, 2.0)) if case % 8 else 1.001
        rotate, angle = case % 3 != 0, float(rng.uniform(-10, 10))
        blur, flip = bool(case & 1), bool(case & 2)
        size, inv_scale = resize_geometry(tf.constant([height, width]), tf.constant(s, tf.float64), SEMSEG)
        room = np.maximum(size.numpy(), crop) - crop + 1
        offset = (int(rng.integers(0, room[0])), int(rng.integers(0, room[1])))
        expected, expected_labels = semseg_reference(image, labels, s, rotate, angle, blur, flip, *offset, crop)
        params = semseg_params(size, inv_scale, rotate, angle, blur, flip, offset)
        out, out_labels = apply_params({"image": tf.constant(image), "mask": tf.constant(labels)}, params, crop,
                                       SEMSEG, MEAN)
        np.testing.assert_allclose(out.numpy(), expected, atol=1e-3, err_msg=f"case {case}")
        assert (out_labels.numpy() != expected_labels).mean() <= 0.002, f"case {case}"


# -------------------------------------------------------------------------------------------- mmseg reference


def mmcv_rescale_size(h, w, ratio, base_scale):
    """mmcv RandomResize._random_sample_ratio + rescale_size + _scale_size: the new (h, w)."""
    scale = int(base_scale[0] * ratio), int(base_scale[1] * ratio)
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * float(factor) + 0.5), int(w * float(factor) + 0.5)


def mmseg_convert(img, alpha=1, beta=0):
    img = img.astype(np.float32) * alpha + beta
    return np.clip(img, 0, 255).astype(np.uint8)


def mmseg_photometric(bgr, d):
    """PhotoMetricDistortion.transform with the draws `d` (its code, on a BGR uint8 image)."""
    img = bgr
    if d["brightness"]:
        img = mmseg_convert(img, beta=d["brightness_beta"])
    if d["contrast"] and d["contrast_first"]:  # mode == 1
        img = mmseg_convert(img, alpha=d["contrast_alpha"])
    if d["saturation"]:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        img[:, :, 1] = mmseg_convert(img[:, :, 1], alpha=d["saturation_alpha"])
        img = cv2.cvtColor(img, cv2.COLOR_HSV2BGR)
    if d["hue"]:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        img[:, :, 0] = (img[:, :, 0].astype(int) + d["hue_delta"]) % 180
        img = cv2.cvtColor(img, cv2.COLOR_HSV2BGR)
    if d["contrast"] and not d["contrast_first"]:  # mode == 0
        img = mmseg_convert(img, alpha=d["contrast_alpha"])
    return img


def mmseg_crop_bbox(labels, candidates, crop, cat_max_ratio=0.75, ignore_index=255):
    """RandomCrop.crop_bbox with its random offsets taken from `candidates` in turn."""
    candidates = iter(candidates)

    def generate():
        h_off, w_off = next(candidates)
        return h_off, h_off + crop[0], w_off, w_off + crop[1]

    bbox = generate()
    for _ in range(10):
        values, counts = np.unique(labels[bbox[0] : bbox[1], bbox[2] : bbox[3]], return_counts=True)
        counts = counts[values != ignore_index]
        if len(counts) > 1 and np.max(counts) / np.sum(counts) < cat_max_ratio:
            break
        bbox = generate()
    return bbox


def photometric_draws(rng, every=False):
    coins = [True] * 5 if every else [bool(c) for c in rng.integers(0, 2, 5)]
    return {"brightness": coins[0], "contrast_first": coins[1], "contrast": coins[2], "saturation": coins[3],
            "hue": coins[4], "brightness_beta": float(np.float32(rng.uniform(-32, 32))),
            "contrast_alpha": float(np.float32(rng.uniform(0.5, 1.5))),
            "saturation_alpha": float(np.float32(rng.uniform(0.5, 1.5))), "hue_delta": int(rng.integers(-18, 18))}


def as_params(draws):
    return {k: tf.constant(v, tf.int32 if k == "hue_delta" else tf.bool if isinstance(v, bool) else tf.float32)
            for k, v in draws.items()}


@pytest.mark.parametrize("ratio, base_scale", [(0.5, (2048, 512)), (0.8137, (2048, 512)), (1.9999, (2048, 512)),
                                               (1.234, (2048, 1024)), (0.61, (200, 50))])
def test_mmseg_resize_matches_mmcv_and_cv2(rng, ratio, base_scale):
    """Sizes as mmcv.imrescale computes them; values bit for bit as cv2.resize's 8-bit fixed point."""
    image, labels = make_image(rng, 47, 83), make_labels(rng, 47, 83)
    config = dataclasses.replace(MMSEG, base_scale=base_scale)
    size, inv_scale = resize_geometry(tf.constant([47, 83]), tf.constant(ratio, tf.float64), config)
    new_h, new_w = mmcv_rescale_size(47, 83, ratio, base_scale)
    assert tuple(size.numpy()) == (new_h, new_w)
    expected = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)  # mmcv.imresize, uint8
    expected_labels = cv2.resize(labels, (new_w, new_h), interpolation=cv2.INTER_NEAREST)
    out = resize_region(tf.constant(image), inv_scale, 0, new_h, 0, new_w, fixed_point=True).numpy()
    np.testing.assert_array_equal(out, expected)
    params = semseg_params(size, inv_scale)
    np.testing.assert_array_equal(mask_window(tf.constant(labels), params, 0, new_h, 0, new_w, False),
                                  expected_labels)


def test_hsv_conversions_match_cv2(rng):
    """cvtColor RGB2HSV exactly; HSV2RGB exactly, truncating in its SIMD blocks (rows of 64 here)."""
    rgb = rng.integers(0, 256, (4096, 64, 3)).astype(np.uint8)
    hsv = rgb_to_hsv(tf.constant(rgb)).numpy()
    np.testing.assert_array_equal(hsv, cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV))
    hsv = np.stack([rng.integers(0, 180, (4096, 64)), rng.integers(0, 256, (4096, 64)),
                    rng.integers(0, 256, (4096, 64))], -1).astype(np.uint8)
    np.testing.assert_array_equal(hsv_to_rgb(tf.constant(hsv)).numpy(), cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB))


def cv2_hsv_block():
    """The pixels per SIMD block of this OpenCV's HSV2RGB (its scalar tail rounds instead of truncating)."""
    for width in (8, 16, 32, 64):
        row = np.array([[100, 77, 201]] * width, np.uint8).reshape(1, width, 3)  # G: 180 truncated, 181 rounded
        if cv2.cvtColor(row, cv2.COLOR_HSV2RGB)[0, 0, 1] == 180:
            return width
    return None


def test_hsv_to_rgb_rounds_the_row_tail_like_cv2(rng):
    if cv2_hsv_block() != HSV_SIMD_PIXELS:
        pytest.skip(f"this OpenCV converts HSV in blocks of {cv2_hsv_block()} pixels, not {HSV_SIMD_PIXELS}")
    hsv = np.stack([rng.integers(0, 180, (2000, 45)), rng.integers(0, 256, (2000, 45)),
                    rng.integers(0, 256, (2000, 45))], -1).astype(np.uint8)
    np.testing.assert_array_equal(hsv_to_rgb(tf.constant(hsv)).numpy(), cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB))


@pytest.mark.parametrize("seed", range(6))
def test_photometric_distortion_matches_mmseg(seed):
    rng = np.random.default_rng(seed)
    image = make_image(rng, 24, 64)
    draws = photometric_draws(rng, every=seed == 0)
    expected = mmseg_photometric(image[..., ::-1].copy(), draws)[..., ::-1]  # mmseg works on BGR
    out = photometric_distortion(tf.constant(image, tf.float32), as_params(draws)).numpy()
    np.testing.assert_array_equal(out, expected)


def test_mmseg_recipe_matches_its_transforms(rng):
    """Whole samples: RandomResize, RandomCrop, RandomFlip, PhotoMetricDistortion, then bottom/right padding."""
    crop = (48, 64)
    for case in range(12):
        height, width = rng.integers(30, 120, 2)
        image, labels = make_image(rng, height, width), make_labels(rng, height, width)
        config = dataclasses.replace(MMSEG, base_scale=(256.0, 64.0))
        ratio = float(rng.uniform(0.5, 2.0))
        new_h, new_w = mmcv_rescale_size(height, width, ratio, config.base_scale)
        offset = (int(rng.integers(0, max(new_h - crop[0], 0) + 1)), int(rng.integers(0, max(new_w - crop[1], 0) + 1)))
        flip, draws = bool(case & 1), photometric_draws(rng)
        # The reference, on BGR as mmseg loads it.
        img = cv2.resize(image[..., ::-1].copy(), (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        lab = cv2.resize(labels, (new_w, new_h), interpolation=cv2.INTER_NEAREST)
        img, lab = img[offset[0] : offset[0] + crop[0], offset[1] : offset[1] + crop[1]], \
            lab[offset[0] : offset[0] + crop[0], offset[1] : offset[1] + crop[1]]
        if flip:
            img, lab = img[:, ::-1].copy(), lab[:, ::-1].copy()
        img = mmseg_photometric(img, draws)[..., ::-1].astype(np.float32)
        expected = np.broadcast_to(np.float32(MEAN), crop + (3,)).copy()  # SegDataPreProcessor: pad_val 0 = mean
        expected[: img.shape[0], : img.shape[1]] = img
        expected_labels = np.full(crop, 255, np.uint8)
        expected_labels[: lab.shape[0], : lab.shape[1]] = lab
        size, inv_scale = resize_geometry(tf.constant([height, width]), tf.constant(ratio, tf.float64), config)
        params = {**semseg_params(size, inv_scale, flip=flip, offset=offset), **as_params(draws)}
        out, out_labels = apply_params({"image": tf.constant(image), "mask": tf.constant(labels)}, params, crop,
                                       config, MEAN)
        out = out.numpy()
        if cv2_hsv_block() != HSV_SIMD_PIXELS and (draws["saturation"] or draws["hue"]):
            keep = img.shape[1] // 64 * 64  # which pixels of a row OpenCV rounds depends on the CPU's SIMD
            out, expected = out[:, :keep], expected[:, :keep]
        np.testing.assert_array_equal(out, expected, err_msg=f"case {case}")
        np.testing.assert_array_equal(out_labels, expected_labels, err_msg=f"case {case}")


def passes(window, cat_max_ratio=0.75):
    counts = np.bincount(window[window != 255].ravel(), minlength=256)
    return np.count_nonzero(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio


def test_cat_max_ratio_crop_follows_mmseg():
    """A mask with one dominant class: RandomCrop's re-draws, given the same candidate crops as ours."""
    labels = np.zeros((120, 160), np.uint8)
    labels[80:, 100:] = 1  # class 1 only in the bottom-right corner
    labels[:6] = 255
    crop = (40, 40)
    config = dataclasses.replace(MMSEG, scale=(1.0, 1.0), base_scale=(160.0, 120.0))  # no resize
    params_of = tf.function(lambda seed: sample_params(seed, tf.constant(labels), crop, config))
    satisfied = 0
    for i in range(40):
        seed = tf.constant([7, i], tf.int64)
        params = params_of(seed)
        assert tuple(params["size"].numpy()) == labels.shape
        # Our candidates: the first crop draw, then the re-draws (the salts of sample_params).
        candidates = [tuple(_crop_offset(seed, salt, params["size"], crop).numpy())
                      for salt in [_CROP] + [_RECROP + 2 * k for k in range(10)]]
        bbox = mmseg_crop_bbox(labels, candidates, crop)
        assert tuple(params["offset"].numpy()) == (bbox[0], bbox[2])
        chosen = passes(labels[bbox[0] : bbox[1], bbox[2] : bbox[3]])
        if any(passes(labels[a : a + 40, b : b + 40]) for a, b in candidates[:10]):
            assert chosen  # the chosen crop satisfies the rule whenever one of the ten checked candidates does
        satisfied += chosen
        np.testing.assert_array_equal(params_of(seed)["offset"], params["offset"])  # same seed, same crop
    assert 5 <= satisfied < 40  # the rule mattered, and sometimes no candidate met it
    # One class everywhere: no crop passes, and the 11th draw stands unchecked.
    seed = tf.constant([3, 1], tf.int64)
    params = sample_params(seed, tf.zeros((120, 160), tf.uint8), crop, config)
    np.testing.assert_array_equal(params["offset"], _crop_offset(seed, _RECROP + 18, params["size"], crop))


# ------------------------------------------------------------------------------------------------ the draws


def draws(config, n=400, shape=(60, 80), crop=(32, 32)):
    mask = tf.zeros(shape, tf.uint8)
    dataset = tf.data.Dataset.range(n).map(lambda i: sample_params(tf.stack([tf.constant(5, tf.int64), i]), mask,
                                                                   crop, config))
    return {k: np.stack([d[k] for d in dataset.as_numpy_iterator()]) for k in dataset.element_spec}


def test_semseg_draws_probabilities_and_ranges():
    d = draws(SEMSEG)
    for key in ("rotate", "blur", "flip"):
        assert 0.42 <= d[key].mean() <= 0.58, key  # p = 0.5; 400 draws: sd 0.025
    assert not d["brightness"].any() and not d["saturation"].any()  # no photometric distortion
    assert -10 <= d["angle"].min() < -9 and 9 < d["angle"].max() <= 10 and abs(d["angle"].mean()) < 1
    factor = d["inv_scale"][:, 0]  # RandScale's factor, uniform in [0.5, 2.0]
    assert 0.5 <= factor.min() < 0.53 and 1.97 < factor.max() < 2.0 and abs(factor.mean() - 1.25) < 0.07
    np.testing.assert_array_equal(d["size"], np.round(np.array([60, 80]) * factor[:, None]))
    room = np.maximum(d["size"], 32) - 32
    assert (d["offset"] >= 0).all() and (d["offset"] <= room).all()


def test_mmseg_draws_probabilities_and_ranges():
    d = draws(MMSEG, shape=(60, 80))
    assert not d["rotate"].any() and not d["blur"].any()
    for key in ("flip", "brightness", "contrast", "contrast_first", "saturation", "hue"):
        assert 0.42 <= d[key].mean() <= 0.58, key
    assert -32 <= d["brightness_beta"].min() < -30 and 30 < d["brightness_beta"].max() <= 32
    assert 0.5 <= d["contrast_alpha"].min() and d["contrast_alpha"].max() <= 1.5
    assert set(d["hue_delta"]) == set(range(-18, 18))  # numpy's randint(-18, 18): -18..17
    # RandomResize(scale=(2048, 512), ratio_range=(0.5, 2.0)): a 60x80 image's short side goes to 512 * ratio.
    short = d["size"][:, 0]
    assert 256 <= short.min() < 280 and 1000 < short.max() <= 1024


def test_draws_are_independent_within_and_across_samples():
    """Every decision of every sample is its own coin: neighbouring samples (seeds one apart) share none."""
    d = draws(SEMSEG)
    coins = {key: d[key].astype(float) for key in ("rotate", "blur", "flip")}
    values = {"angle": d["angle"], "scale": d["inv_scale"][:, 0]}
    for lag in (0, 1, 2, 3):
        for a in (*coins, *values):
            for b in (*coins, *values):
                if lag == 0 and a == b:
                    continue
                x = {**coins, **values}[a][: len(d["flip"]) - lag]
                y = {**coins, **values}[b][lag:]
                assert abs(np.corrcoef(x, y)[0, 1]) < 0.2, (a, b, lag)  # 400 pairs: |r| of independent ~0.05


@pytest.mark.parametrize("config", [SEMSEG, MMSEG])
def test_same_seed_same_sample(rng, config):
    example = {"image": tf.constant(make_image(rng, 50, 70)), "mask": tf.constant(make_labels(rng, 50, 70))}
    run = tf.function(lambda seed: augment(example, seed, (40, 48), config, MEAN))
    first, again, other = run(tf.constant([1, 2], tf.int64)), run(tf.constant([1, 2], tf.int64)), \
        run(tf.constant([1, 3], tf.int64))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])
    assert first[0].shape == (40, 48, 3) and first[0].dtype == tf.float32 and first[1].dtype == tf.uint8


# ------------------------------------------------------------------------------------- alignment and padding


def palette_image(mask):
    return np.array(default_colors(256), np.float32)[mask]


@pytest.mark.parametrize("config", [AugmentConfig(blur=False), dataclasses.replace(MMSEG, photometric=False)])
def test_augmentation_keeps_image_and_mask_aligned(config):
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 6, (10, 14)).astype(np.uint8)
    mask = np.kron(blocks, np.ones((24, 24), np.uint8))  # 240x336, 24-pixel blocks
    example = {"image": tf.constant(palette_image(mask).astype(np.uint8)), "mask": tf.constant(mask)}
    colors = np.array(default_colors(6), np.float32)
    run = tf.function(lambda seed: augment(example, seed, (200, 200), config, MEAN))
    for i in range(6):
        image, out = (x.numpy() for x in run(tf.constant([3, i], tf.int64)))
        labelled = out != 255
        nearest = np.argmin(((image[..., None, :] - colors) ** 2).sum(-1), axis=-1)
        assert labelled.mean() > 0.2
        # Disagreement only at block borders: cv2's INTER_NEAREST takes source pixel floor(x / s), not the nearest
        # centre, so the reference masks sit up to half a source pixel off the bilinear image (3-4% of pixels here).
        assert (nearest[labelled] == out[labelled]).mean() > 0.95


@pytest.mark.parametrize("config, top_left", [(AugmentConfig(scale=(1.0, 1.0), rotate=0.0, blur=False, flip=False),
                                               (7, 12)),
                                              (dataclasses.replace(MMSEG, scale=(1.0, 1.0), base_scale=(50, 40),
                                                                   flip=False, photometric=False), (0, 0))])
def test_padding_fills_image_with_mean_and_mask_with_ignore(config, top_left):
    """semseg's Crop pads around the image (int(pad / 2) before); mmseg pads bottom and right."""
    example = {"image": tf.fill([50, 40, 3], tf.constant(200, tf.uint8)), "mask": tf.zeros([50, 40], tf.uint8)}
    image, mask = (x.numpy() for x in augment(example, tf.constant([0, 0], tf.int64), (64, 64), config, MEAN))
    assert (mask == 0).sum() == 50 * 40 and (mask == 255).sum() == 64 * 64 - 50 * 40
    top, left = top_left
    assert (mask[top : top + 50, left : left + 40] == 0).all()
    np.testing.assert_allclose(image[mask == 255], np.broadcast_to(MEAN, image[mask == 255].shape), atol=1e-4)
    np.testing.assert_allclose(image[mask == 0], 200.0)


def test_crop_window_maps_flipped_offsets():
    # semseg: the offset counts in the flipped, padded image; 10 columns of padding, 5 before.
    window = [int(v) for v in crop_window(tf.constant([30, 20]), (30, 30), tf.constant([0, 0]), True, "center")]
    assert window == [0, 30, 0, 20, 0, 5]
    window = [int(v) for v in crop_window(tf.constant([30, 50]), (30, 30), tf.constant([0, 4]), True, "center")]
    assert window == [0, 30, 16, 46, 0, 0]  # columns 4..33 of the flipped image = 16..45 of the original
    window = [int(v) for v in crop_window(tf.constant([30, 50]), (30, 30), tf.constant([0, 4]), True, "bottom_right")]
    assert window == [0, 30, 4, 34, 0, 0]  # mmseg crops before it flips


# ------------------------------------------------------------------------------------------------- configs


def test_augment_config_recipes_and_overrides():
    cityscapes = AugmentConfig(base_scale=(2048.0, 1024.0))
    config = augment_config(cityscapes, {"recipe": "mmseg"})
    assert config == dataclasses.replace(MMSEG, base_scale=(2048.0, 1024.0))
    assert config.cat_max_ratio == 0.75 and config.photometric and config.pad == "bottom_right"
    assert augment_config(None, {}) == SEMSEG == AugmentConfig()
    assert augment_config(CONTEXT_INFO.augment, {"flip": False}) == dataclasses.replace(CONTEXT_INFO.augment,
                                                                                        flip=False)
    config = augment_config(CONTEXT_INFO.augment, {"recipe": "semseg", "rotate": 5, "scale": [0.75, 1.5]})
    assert config.rotate == 5.0 and config.scale == (0.75, 1.5) and config.blur  # the full semseg recipe
    message = r"^augment: unknown key\(s\) \['zoom'\]; valid keys: \['base_scale', 'blur', .*'rotate_prob', 'scale'\]$"
    with pytest.raises(ValueError, match=message):
        augment_config(None, {"zoom": 2})
    with pytest.raises(ValueError, match="augment.recipe: expected one of"):
        augment_config(None, {"recipe": "paper"})
    with pytest.raises(ValueError, match="augment.pad: expected one of"):
        augment_config(None, {"pad": "top"})
    with pytest.raises(ValueError, match="augment.scale: expected two positive numbers"):
        augment_config(None, {"scale": [2.0, 0.5]})
    with pytest.raises(ValueError, match="augment.cat_max_ratio"):
        augment_config(None, {"cat_max_ratio": 1.5})


def test_mmseg_recipe_runs_through_train_pipeline():
    config = augment_config(None, {"recipe": "mmseg", "base_scale": [192, 96]})
    source, info = load_source("context", "train", context_scenes=6, context_size=96)
    images, masks = next(iter(train_pipeline(source, info.name, (64, 80), 3, config, MEAN)))
    assert images.shape == (3, 64, 80, 3) and images.dtype == tf.float32
    assert masks.shape == (3, 64, 80) and masks.dtype == tf.uint8
    assert 0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 255
    assert set(np.unique(masks)) <= {0, 1, 2, 3, 255}


def test_unit_scale_keeps_the_pixels(rng):
    """scale (1, 1) without rotation or blur (the context demo's mirror-only setting) crops the image as it is."""
    image, labels = make_image(rng, 40, 56), make_labels(rng, 40, 56)
    config = augment_config(None, {"scale": [1, 1], "rotate": 0, "blur": False, "flip": False})
    out_image, out_mask = augment({"image": tf.constant(image), "mask": tf.constant(labels)},
                                  tf.constant([4, 2], tf.int64), (40, 56), config, MEAN)
    np.testing.assert_array_equal(out_image.numpy(), image.astype(np.float32))
    np.testing.assert_array_equal(out_mask.numpy(), labels)
