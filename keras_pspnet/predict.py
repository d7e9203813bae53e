"""Predicting files with a .keras model, an exported SavedModel or a .tflite, and writing pictures."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from keras_pspnet.data.classes import resolve_classes
from keras_pspnet.data.info import DatasetInfo
from keras_pspnet.export import METADATA_FILE
from keras_pspnet.inference import model_mean, predict_probabilities
from keras_pspnet.visualize import colorize, label_png, legend, overlay


class KerasPredictor:
    """A .keras model."""

    def __init__(self, model):
        self.model, self.mean, self.input_size = model, model_mean(model), None
        self.num_classes = int(model.output.shape[-1])

    def predict_on_batch(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_on_batch(images))


class _ExportedPredictor:
    """Classes, normalisation mean and input size come from the metadata JSON written by `keras_pspnet.export`."""

    def __init__(self, path: str, metadata_path: str):
        self.path = path
        with open(metadata_path) as f:
            self.metadata = json.load(f)
        self.mean = np.asarray(self.metadata["normalization"]["mean"], np.float32)
        self.num_classes = len(self.metadata["classes"])
        self.input_size = tuple(self.metadata["input_size"]) if "input_size" in self.metadata else None


class SavedModelPredictor(_ExportedPredictor):
    """An exported SavedModel (its "logits" signature), a version directory or a TF Serving base directory."""

    def __init__(self, path: str):
        import tensorflow as tf

        super().__init__(path, os.path.join(path, "assets.extra", METADATA_FILE))
        self.signature = tf.saved_model.load(path).signatures["logits"]

    def predict_on_batch(self, images: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        return self.signature(images=tf.constant(images, tf.float32))["logits"].numpy()


class TFLitePredictor(_ExportedPredictor):
    """A .tflite from `pspnet export --format tflite`, run by the LiteRT interpreter (fixed input size)."""

    def __init__(self, path: str, threads: int = 2):
        from ai_edge_litert.interpreter import Interpreter

        super().__init__(path, os.path.splitext(path)[0] + ".json")
        self.runner = Interpreter(model_path=path, num_threads=threads).get_signature_runner("serving_default")

    def predict_on_batch(self, images: np.ndarray) -> np.ndarray:
        if tuple(images.shape[1:3]) != self.input_size:
            raise ValueError(f"{self.path}: takes {self.input_size[0]}x{self.input_size[1]} images, got "
                             f"{images.shape[1]}x{images.shape[2]} (use --mode slide, or export with --input-size)")
        return np.concatenate([self.runner(images=np.clip(np.round(image), 0, 255).astype(np.uint8)[None])["logits"]
                               for image in images])


def load_predictor(path: str):
    """A predictor for a .keras file, a SavedModel (or TF Serving base directory: its latest version) or a .tflite."""
    if path.endswith(".tflite") and os.path.exists(path):
        return TFLitePredictor(path)
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "saved_model.pb")):
            versions = sorted((int(v) for v in os.listdir(path) if v.isdigit()), reverse=True)
            if not versions:
                raise ValueError(f"{path}: neither a SavedModel nor a TF Serving model directory")
            path = os.path.join(path, str(versions[0]))
        return SavedModelPredictor(path)
    from keras_pspnet.model import load_model

    return KerasPredictor(load_model(path))


def read_image(path: str) -> np.ndarray:
    """RGB uint8 [H, W, 3]; a one-line error naming the file when it is not an image."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except Exception as error:  # PIL raises many types for broken or non-image files
        raise ValueError(f"{path}: not an image ({type(error).__name__})") from None


def predict_files(predictor, paths: Sequence[str], out_dir: str, info: DatasetInfo, *, mode: str = "whole",
                  crop=None, scales=(1.0,), flip: bool = False, force: bool = False) -> list[str]:
    """Writes <stem>_label.png (indices), <stem>_color.png and <stem>_overlay.png per image, and legend.png.

    A bad image is reported by name and skipped; the others are still processed. Existing outputs are
    not replaced unless `force`. Returns the paths that failed.
    """
    os.makedirs(out_dir, exist_ok=True)
    if mode == "slide" and crop is None:
        crop = predictor.input_size
    failed = []
    for path in tqdm(paths, desc="predicting", unit="image", disable=len(paths) < 2):
        stem = os.path.splitext(os.path.basename(path))[0]
        outputs = {kind: os.path.join(out_dir, f"{stem}_{kind}.png") for kind in ("label", "color", "overlay")}
        try:
            existing = [p for p in outputs.values() if os.path.exists(p)]
            if existing and not force:
                raise FileExistsError(f"{existing[0]}: already exists (use --force to replace it)")
            image = read_image(path)
            probabilities = predict_probabilities(predictor, image, mode=mode, crop=crop, scales=scales, flip=flip)
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


def classes_for(predictor, spec: str | None, model_path: str) -> DatasetInfo:
    """Classes from --classes, else the exported metadata, else classes.json beside the model."""
    metadata = getattr(predictor, "metadata", None)
    if spec is None and metadata:
        return DatasetInfo("model", tuple(c["name"] for c in metadata["classes"]),
                           tuple(tuple(c["color"]) for c in metadata["classes"]))
    return resolve_classes(spec, predictor.num_classes, model_path)
