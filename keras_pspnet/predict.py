"""Predicting image files with any predictor (.keras, SavedModel, .tflite) and writing pictures."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from keras_pspnet.console import one_line, report
from keras_pspnet.data.image import decode_rgb
from keras_pspnet.data.info import DatasetInfo
from keras_pspnet.inference import MAX_SIDE, predict_labels
from keras_pspnet.protocol import TestProtocol, own_protocol
from keras_pspnet.visualize import colorize, label_png, legend, overlay


def read_image(path: str) -> np.ndarray:
    """RGB uint8 [H, W, 3], decoded as training decodes images (`decode_rgb`: a 16-bit PNG keeps the high byte of
    each value, as TensorFlow reduces it); a one-line error naming the file when it is not an image."""
    import tensorflow as tf

    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except OSError as error:  # a directory, no permission
        raise ValueError(f"{path}: not an image ({type(error).__name__})") from None
    try:
        return decode_rgb(tf.constant(data)).numpy()
    except tf.errors.OpError:
        raise ValueError(f"{path}: not an image, or a broken one (JPEG, PNG, GIF, BMP and WebP are read)") from None


def output_names(paths: Sequence[str], out_dir: str) -> list[str]:
    """The output prefix of each image: OUT/<stem>, or, when stems collide, OUT/<path relative to the inputs' common
    directory without its suffix> (a/0001.jpg and b/0001.jpg: OUT/a/0001 and OUT/b/0001). The same file given
    twice gets the same name: its second outputs are refused as existing (unless `force`)."""
    stems = [os.path.splitext(os.path.basename(path))[0] for path in paths]
    if len(set(stems)) == len(stems):
        return [os.path.join(out_dir, stem) for stem in stems]
    absolute = [os.path.abspath(path) for path in paths]
    common = os.path.commonpath([os.path.dirname(path) for path in absolute])
    relative = [os.path.relpath(path, common) for path in absolute]
    names = [os.path.splitext(path)[0] for path in relative]
    if len(set(names)) < len(set(relative)):  # a/0001.jpg and a/0001.png: keep the suffix (OUT/a/0001.jpg_label.png)
        names = relative
    return [os.path.join(out_dir, name) for name in names]


def predict_files(predictor, paths: Sequence[str], out_dir: str, info: DatasetInfo,
                  protocol: TestProtocol | None = None, *, force: bool = False, max_side: int = MAX_SIDE,
                  window_batch: int | None = None) -> list[str]:
    """Writes <stem>_label.png (indices), <stem>_color.png and <stem>_overlay.png per image, and legend.png.

    When two images share a stem (a/0001.jpg, b/0001.jpg), the outputs mirror the images' paths relative to
    their common directory instead (OUT/a/0001_label.png, OUT/b/0001_label.png); see `output_names`.

    A bad image is reported by name and skipped; the others are still processed. Existing outputs are
    not replaced unless `force`. `max_side`, `window_batch`: see `keras_pspnet.inference.predict_scores`.
    Returns the paths that failed.
    """
    os.makedirs(out_dir, exist_ok=True)
    protocol = protocol or own_protocol(predictor.metadata)  # once, not per image
    failed = []
    names = output_names(paths, out_dir)
    for path, name in tqdm(zip(paths, names), total=len(paths), desc="predicting", unit="image",
                           disable=len(paths) < 2):
        outputs = {kind: f"{name}_{kind}.png" for kind in ("label", "color", "overlay")}
        try:
            existing = [p for p in outputs.values() if os.path.exists(p)]
            if existing and not force:
                raise FileExistsError(f"{existing[0]}: already exists (use --force to replace it)")
            image = read_image(path)  # its errors name the file
        except (ValueError, OSError) as error:
            report(str(error))
            failed.append(path)
            continue
        try:
            labels = predict_labels(predictor, image, protocol, max_side=max_side, window_batch=window_batch)
        except Exception as error:  # e.g. out of memory on one huge photo: the others still run
            report(f"{path}: {one_line(error)}")
            failed.append(path)
            continue
        os.makedirs(os.path.dirname(outputs["label"]), exist_ok=True)
        color = colorize(labels, info.colors)
        label_png(labels, info.colors).save(outputs["label"])
        Image.fromarray(color).save(outputs["color"])
        Image.fromarray(overlay(image, color)).save(outputs["overlay"])
    legend_path = os.path.join(out_dir, "legend.png")
    if force or not os.path.exists(legend_path):
        legend(info.class_names, info.colors).save(legend_path)
    return failed
