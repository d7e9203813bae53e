"""Custom data in folders: ROOT/<split>/images/*.jpg|png and ROOT/<split>/masks/<same stem>.png.

Masks hold class indices (255 = ignore) as grayscale or palette PNGs (PASCAL VOC style). An optional
ROOT/classes.json gives the class names and colours: {"classes": [{"name": "sky", "color": [70, 130, 180]}, ...]}
or simply ["sky", "road", ...].
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tensorflow as tf
from PIL import Image

from keras_pspnet.console import progress
from keras_pspnet.data.classes import read_classes
from keras_pspnet.data.image import EXIF_SEARCH_BYTES, decode_rgb, exif_orientation
from keras_pspnet.data.info import IGNORE_LABEL, DatasetInfo, generic_classes
from keras_pspnet.data.order import TrainingOrder, epoch_indices

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")  # what decode_rgb reads


def read_mask(path) -> np.ndarray:
    """Class indices of a mask PNG. PIL keeps a palette PNG's indices; tf.io.decode_png would give colours."""
    path = path.decode() if isinstance(path, bytes) else path
    with Image.open(path) as image:
        if image.mode not in ("L", "P", "1", "I", "I;16"):
            raise ValueError(f"{path}: mask is {image.mode}; masks hold class indices (grayscale or palette PNG).")
        mask = np.asarray(image)
    if mask.dtype != np.uint8 and mask.size and (mask.min() < 0 or mask.max() > 255):  # 16/32-bit: uint8 would wrap
        extreme = f"down to {mask.min()}" if mask.min() < 0 else f"up to {mask.max()}"
        raise ValueError(f"{path}: mask values {extreme} do not fit 8 bits; class indices are 0-254, "
                         f"{IGNORE_LABEL} = ignore")
    return mask.astype(np.uint8)


@tf.function(input_signature=[tf.TensorSpec([], tf.string)])
def _exif_orientation(head):  # traced once: eager, its few dozen ops would cost ADE20K's 20k images minutes
    return exif_orientation(head)


def _orientation(path: str) -> int:
    with open(path, "rb") as f:
        return int(_exif_orientation(tf.constant(f.read(EXIF_SEARCH_BYTES))))


def _check_pair(image_path: str, mask_path: str, num_classes: int | None) -> np.ndarray:
    """Returns the mask's class values; raises a one-line error naming the file on any problem."""
    for path in (image_path, mask_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: missing (every image needs a mask with the same stem)")
        if os.path.getsize(path) == 0:
            raise ValueError(f"{path}: empty file")
    try:
        with Image.open(image_path) as image:
            image.verify()
            image_size, is_jpeg = image.size, image.format == "JPEG"
    except Exception as error:  # PIL raises many types for broken files
        raise ValueError(f"{image_path}: cannot read image ({error})") from None
    # decode_rgb turns a JPEG upright by its EXIF orientation (read here by the same parser); 5-8 swap the sides
    orientation = _orientation(image_path) if is_jpeg else 1
    if orientation in (5, 6, 7, 8):
        image_size = image_size[::-1]
    try:
        mask = read_mask(mask_path)
    except ValueError:
        raise
    except Exception as error:
        raise ValueError(f"{mask_path}: cannot read mask ({error})") from None
    if mask.shape[::-1] != image_size:
        turned = f" upright (EXIF orientation {orientation})" if orientation in (5, 6, 7, 8) else ""
        raise ValueError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]}, its image {image_path} is{turned} "
                         f"{image_size[0]}x{image_size[1]}")
    values = np.unique(mask)
    if num_classes is not None:
        bad = values[(values >= num_classes) & (values != IGNORE_LABEL)]
        if bad.size:
            raise ValueError(f"{mask_path}: mask values {bad.tolist()} are neither a class (0-{num_classes - 1}) "
                             f"nor {IGNORE_LABEL}")
    return values


def split_files(root: str, split: str) -> tuple[list[str], list[str]]:
    """The sorted image paths of ROOT/<split> and their mask paths."""
    images_dir, masks_dir = os.path.join(root, split, "images"), os.path.join(root, split, "masks")
    if not os.path.isdir(images_dir):
        splits = sorted(name for name in os.listdir(root) if os.path.isdir(os.path.join(root, name, "images"))) \
            if os.path.isdir(root) else []
        found = f"{root} has the splits {splits}" if splits else f"{root} has no ROOT/<split>/images folder"
        raise FileNotFoundError(f"{images_dir}: no such folder ({found}; expected ROOT/<split>/images and "
                                "ROOT/<split>/masks)")
    images = sorted(os.path.join(images_dir, f) for f in os.listdir(images_dir) if f.lower().endswith(IMAGE_SUFFIXES))
    if not images:
        raise ValueError(f"{images_dir}: empty split (no {', '.join(IMAGE_SUFFIXES)} images)")
    return images, [os.path.join(masks_dir, os.path.splitext(os.path.basename(p))[0] + ".png") for p in images]


def folder_source(root: str, split: str, num_classes: int | None = None, validate: bool = True,
                  order: TrainingOrder | None = None) -> tuple[tf.data.Dataset, DatasetInfo]:
    """The pairs of ROOT/<split>, checked up front (sizes, mask values, readability) unless validate=False.

    With `order`, an endless stream in training order (see `keras_pspnet.data.order`); else each pair once,
    sorted by file name.
    """
    images, masks = split_files(root, split)
    classes = read_classes(root)
    if classes and num_classes is not None and num_classes != len(classes[0]):
        raise ValueError(f"{os.path.join(root, 'classes.json')}: {len(classes[0])} classes, "
                         f"but num_classes={num_classes}")
    known = len(classes[0]) if classes else num_classes
    if validate or known is None:
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            jobs = pool.map(lambda pair: _check_pair(*pair, known), zip(images, masks))
            values = list(progress(jobs, len(images), f"checking {root}/{split}", "image",
                                   enabled=len(images) >= 200))
        if known is None:  # no classes.json and no num_classes: the largest label seen decides
            labels = np.concatenate(values)
            known = int(labels[labels != IGNORE_LABEL].max(initial=0)) + 1
    name = os.path.basename(os.path.normpath(root))
    info = DatasetInfo(name, *classes) if classes else generic_classes(known, name)

    def load(image_path, mask_path):
        image = decode_rgb(tf.io.read_file(image_path))
        mask = tf.numpy_function(read_mask, [mask_path], tf.uint8, stateful=False)
        mask.set_shape([None, None])
        return {"image": image, "mask": mask}

    if order is None:
        dataset = tf.data.Dataset.from_tensor_slices((images, masks))
    else:  # file names are permuted before anything is decoded
        paths = tf.constant(images), tf.constant(masks)
        dataset = epoch_indices(len(images), order).map(lambda i: (tf.gather(paths[0], i), tf.gather(paths[1], i)))
    return dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE), info


def undecodable_images(root: str, split: str) -> list[str]:
    """The images of ROOT/<split> that TensorFlow's decoder refuses (what a training run reads them with)."""

    def fails(path: str) -> bool:
        try:
            decode_rgb(tf.io.read_file(path))
            return False
        except (tf.errors.OpError, ValueError):
            return True

    images, _ = split_files(root, split)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        failed = list(progress(pool.map(fails, images), len(images), f"looking for the undecodable image in "
                               f"{root}/{split}", "image", enabled=len(images) >= 200))
    return [path for path, bad in zip(images, failed) if bad]
