"""Predicting image files with any predictor (.keras, SavedModel, .tflite) and writing pictures."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from keras_pspnet.data.info import DatasetInfo
from keras_pspnet.inference import predict_scores
from keras_pspnet.protocol import TestProtocol, own_protocol
from keras_pspnet.visualize import colorize, label_png, legend, overlay


def read_image(path: str) -> np.ndarray:
    """RGB uint8 [H, W, 3]; a one-line error naming the file when it is not an image."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except Exception as error:  # PIL raises many types for broken or non-image files
        raise ValueError(f"{path}: not an image ({type(error).__name__})") from None


def predict_files(predictor, paths: Sequence[str], out_dir: str, info: DatasetInfo,
                  protocol: TestProtocol | None = None, *, force: bool = False) -> list[str]:
    """Writes <stem>_label.png (indices), <stem>_color.png and <stem>_overlay.png per image, and legend.png.

    A bad image is reported by name and skipped; the others are still processed. Existing outputs are
    not replaced unless `force`. Returns the paths that failed.
    """
    os.makedirs(out_dir, exist_ok=True)
    protocol = protocol or own_protocol(predictor.metadata)  # once, not per image
    failed = []
    for path in tqdm(paths, desc="predicting", unit="image", disable=len(paths) < 2):
        stem = os.path.splitext(os.path.basename(path))[0]
        outputs = {kind: os.path.join(out_dir, f"{stem}_{kind}.png") for kind in ("label", "color", "overlay")}
        try:
            existing = [p for p in outputs.values() if os.path.exists(p)]
            if existing and not force:
                raise FileExistsError(f"{existing[0]}: already exists (use --force to replace it)")
            image = read_image(path)
            probabilities = predict_scores(predictor, image, protocol)
        except (ValueError, OSError) as error:
            print(f"pspnet: error: {error}", file=sys.stderr)
            failed.append(path)
            continue
        labels = probabilities.argmax(axis=-1).astype(np.uint8)
        color = colorize(labels, info.colors)
        label_png(labels, info.colors).save(outputs["label"])
        Image.fromarray(color).save(outputs["color"])
        Image.fromarray(overlay(image, color)).save(outputs["overlay"])
    legend_path = os.path.join(out_dir, "legend.png")
    if force or not os.path.exists(legend_path):
        legend(info.class_names, info.colors).save(legend_path)
    return failed
