"""Shipping a model: a versioned SavedModel for TF Serving and a .tflite for phones, with metadata."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_pspnet.data.image import decode_rgb
from keras_pspnet.data.info import DatasetInfo
from keras_pspnet.model import inference_model, model_mean, model_metadata, uses_align_corners
from keras_pspnet.predictors import METADATA_FILE

QUANTIZATIONS = ("none", "fp16", "int8")


def metadata(model: keras.Model, info: DatasetInfo, **extra) -> dict:
    """What a client needs besides the tensors: classes, colours, the normalisation done inside, and the
    model's own test protocol and source (so `pspnet evaluate` scores the export as the original)."""
    normalize = model.get_layer("normalize")
    own = model_metadata(model)
    return {
        "classes": [{"index": i, "name": n, "color": list(c)} for i, (n, c) in enumerate(zip(info.class_names,
                                                                                              info.colors))],
        "input": {"layout": "NHWC", "channels": "RGB", "range": [0, 255]},
        "normalization": {"mean": model_mean(model).tolist(),
                          "std": np.sqrt(np.asarray(normalize.variance)).reshape(3).tolist(),
                          "applied_inside_model": True},
        "ignore_label": info.ignore_label,
        "align_corners": uses_align_corners(model),
        **{key: own[key] for key in ("protocol", "source") if key in own},
        **extra,
    }


def _logits(model, images):
    return model(tf.cast(images, model.input.dtype), training=False)  # training=False: BN uses moving stats


def _outputs(model, images, probabilities: bool) -> dict:
    logits = _logits(model, images)
    result = {"class_map": tf.argmax(logits, axis=-1, output_type=tf.int32)}
    if probabilities:
        result["probabilities"] = tf.nn.softmax(logits)
    return result


def _archive() -> keras.export.ExportArchive:
    """An export archive whose endpoints track the variables they use.

    Deliberately no `archive.track(model)`: with it, Keras 3.15 saves every weight twice (the Keras variable
    wrappers and the raw tf.Variables the endpoints capture; keras-team/keras#23553), doubling the
    SavedModel on disk and its memory in TF Serving. The endpoints alone capture each variable once.
    """
    return keras.export.ExportArchive()


def next_version(base_dir: str) -> int:
    """The next free integer version under a TF Serving model directory (1 for a new one)."""
    versions = [int(name) for name in os.listdir(base_dir) if name.isdigit()] if os.path.isdir(base_dir) else []
    return max(versions, default=0) + 1


def _write_warmup(path: str, sizes: Sequence[tuple[int, int]]) -> None:
    """assets.extra/tf_serving_warmup_requests: one PredictionLog per size and signature, run at model load."""
    try:
        from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2
    except ImportError:
        raise ImportError("warmup requests need the TF Serving protos: pip install --no-deps tensorflow-serving-api "
                          "(or export with --warmup-size none)") from None

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for height, width in sizes:
            image = np.zeros((1, height, width, 3), np.uint8)
            for signature, key, value in [("serving_default", "images", tf.make_tensor_proto(image)),
                                          ("encoded", "image_bytes",
                                           tf.make_tensor_proto([tf.io.encode_png(image[0]).numpy()]))]:
                request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(signature_name=signature))
                request.inputs[key].CopyFrom(value)
                log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
                writer.write(log.SerializeToString())


def export_saved_model(model: keras.Model, base_dir: str, info: DatasetInfo, *, version: int | None = None,
                       probabilities: bool = False, warmup_sizes: Sequence[tuple[int, int]] = ((473, 473),)) -> str:
    """Writes `base_dir/<version>/` (TF Serving's layout) and returns its path; never replaces a version.

    Signatures:
        serving_default: images uint8 [batch, height, width, 3] -> class_map int32 [batch, height, width]
            (+ probabilities float32 [..., classes] when `probabilities`).
        encoded: image_bytes string [batch] (JPEG/PNG; REST {"b64": ...}) -> the same outputs.
        logits: images float32 [batch, height, width, 3] (0-255) -> logits float32 [..., classes].
    The directory is written under a temporary name and renamed, so TF Serving never sees half a model.
    An auxiliary head is dropped (`inference_model`).
    """
    model = inference_model(model)
    version = next_version(base_dir) if version is None else int(version)
    target = os.path.join(base_dir, str(version))
    if os.path.exists(target):
        raise FileExistsError(f"{target}: version {version} already exists; versions are never replaced "
                              "(omit --version to write the next free one).")
    os.makedirs(base_dir, exist_ok=True)
    archive = _archive()
    archive.add_endpoint("serving_default", lambda images: _outputs(model, images, probabilities),
                         input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    archive.add_endpoint(
        "encoded",
        lambda image_bytes: _outputs(model, tf.map_fn(decode_rgb, image_bytes, fn_output_signature=tf.TensorSpec(
            [None, None, 3], tf.uint8)), probabilities),
        input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    archive.add_endpoint("logits", lambda images: {"logits": _logits(model, images)},
                         input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="images")])
    staging = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=base_dir)
    try:
        archive.write_out(staging, verbose=False)
        extra = os.path.join(staging, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        with open(os.path.join(extra, METADATA_FILE), "w") as f:
            json.dump(metadata(model, info, signatures=["serving_default", "encoded", "logits"],
                               probabilities=probabilities), f, indent=1)
        if warmup_sizes:
            _write_warmup(os.path.join(extra, "tf_serving_warmup_requests"), warmup_sizes)
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def export_tflite(model: keras.Model, path: str, info: DatasetInfo, *, input_size: tuple[int, int],
                  quantize: str = "none", calibration: Iterable[np.ndarray] | None = None) -> str:
    """Writes a .tflite (builtin ops only) and <path without .tflite>.json beside it; returns the .tflite path.

    The model takes uint8 RGB [1, height, width, 3] and returns "logits" float32 [1, height, width, classes]
    and "class_map" int32 [1, height, width]. quantize: "none" (fp32), "fp16" (weights) or "int8" (full
    integer: weights and activations, calibrated on `calibration`: uint8 images [height, width, 3]).
    An auxiliary head is dropped (`inference_model`).
    """
    model = inference_model(model)
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {list(QUANTIZATIONS)}, got {quantize!r}.")
    if quantize == "int8" and calibration is None:
        raise ValueError("int8 quantization needs calibration images (--calibration DATASET or a folder of images).")
    for existing in (path, os.path.splitext(path)[0] + ".json"):
        if os.path.exists(existing):
            raise FileExistsError(f"{existing}: already exists (use --force to replace it).")
    height, width = input_size
    archive = _archive()

    def serve(images):
        logits = _logits(model, images)
        return {"logits": logits, "class_map": tf.argmax(logits, axis=-1, output_type=tf.int32)}

    archive.add_endpoint("serving_default", serve,
                         input_signature=[tf.TensorSpec([1, height, width, 3], tf.uint8, name="images")])
    with tempfile.TemporaryDirectory() as staging:
        archive.write_out(staging, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(staging)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex ops, ever
        if quantize == "fp16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif quantize == "int8":
            images = [np.asarray(tf.image.resize(image, (height, width)), np.float32).round().clip(0, 255)
                      .astype(np.uint8)[None] for image in calibration]
            if not images:
                raise ValueError("int8 quantization: the calibration data holds no images.")
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([image] for image in images)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        content = converter.convert()
    with open(path, "wb") as f:
        f.write(content)
    with open(os.path.splitext(path)[0] + ".json", "w") as f:
        json.dump(metadata(model, info, input_size=[height, width], input_dtype="uint8", quantization=quantize,
                           outputs={"logits": "float32 [1, height, width, classes]",
                                    "class_map": "int32 [1, height, width]"}), f, indent=1)
    return path
