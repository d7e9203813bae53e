"""Shipping a model: a versioned SavedModel for TF Serving, a .tflite for phones, an ONNX model and an OpenVINO IR,
each with its metadata and from the one model `deployable` gives."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_pspnet import __version__, tflite
from keras_pspnet.data.image import decode_rgb
from keras_pspnet.data.info import DatasetInfo
from keras_pspnet.files import check_new_output, partial_name, refuse_link, write_bytes, write_text
from keras_pspnet.inference import MAX_SIDE, fold_batch_norms
from keras_pspnet.layers.resize import resize_bilinear
from keras_pspnet.model import (
    low_resolution_logits,
    model_input,
    model_mean,
    model_metadata,
    portable_model,
    uses_align_corners,
)
from keras_pspnet.predictors import METADATA_FILE, ir_weights, tflite_json
from keras_pspnet.protocol import TestProtocol, own_protocol
from keras_pspnet.runtimes import optional_runtime

FORMATS = ("savedmodel", "tflite", "onnx", "openvino")  # `pspnet export --format` (a test checks the CLI's list)
QUANTIZATIONS = ("none", "fp16", "int8")
MIN_CALIBRATION_IMAGES = 16  # int8 activation ranges are min/max over the calibration windows: too few clip others
# The runtimes whose loading and results CI checks (tests/test_tflite_runtimes.py); the JSON states them.
TESTED_RUNTIMES = {"ai-edge-litert": "2.3.0", "mediapipe": "1.2.3"}


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


def deployable(model: keras.Model) -> keras.Model:
    """The model every export writes: no auxiliary head, float32 with plain batch norms (`portable_model`), each
    batch norm folded into the convolution before it (`fold_batch_norms`). The one place these are decided for
    SavedModel, TFLite, ONNX and OpenVINO: every format computes the same function with the same weights."""
    float32 = all(layer.dtype_policy.compute_dtype == "float32" for layer in model.layers)
    plain = not any(getattr(layer, "synchronized", False) for layer in model.layers)
    return fold_batch_norms(model if float32 and plain else portable_model(model))  # (one copy less when it is)


def _logits(model, images):
    return model(model_input(images, model.input.dtype), training=False)  # training=False: BN uses moving stats


def _outputs(model, images, probabilities: bool) -> dict:
    logits = _logits(model, images)
    result = {"class_map": tf.argmax(logits, axis=-1, output_type=tf.int32)}
    if probabilities:
        result["probabilities"] = tf.nn.softmax(logits)
    return result


def decode_batch(image_bytes: tf.Tensor) -> tf.Tensor:
    """uint8 [batch, height, width, 3] from a batch of encoded images (`decode_rgb` each), which must share a size:
    else an InvalidArgumentError that says so (rather than TensorArray's "inconsistent shapes"). TF Serving's
    batching merges requests into one such batch, so mixed sizes fail the merged requests alike."""

    def decode(data):  # flat pixels and their shape: map_fn stacks them only after the sizes are checked
        image = decode_rgb(data)
        return tf.reshape(image, [-1]), tf.shape(image)

    pixels, shapes = tf.map_fn(decode, image_bytes, fn_output_signature=(
        tf.RaggedTensorSpec([None], tf.uint8, ragged_rank=0), tf.TensorSpec([3], tf.int32)))
    same_size = tf.debugging.assert_equal(
        shapes, tf.broadcast_to(shapes[:1], tf.shape(shapes)),
        message="encoded: the images of one batch must share a size (send one image per request; with TF "
                "Serving's batching, one size from all clients); their [height, width, 3] are")
    size = tf.concat([shapes, [[0, 0, 3]]], axis=0)[0]  # an empty batch: [0, 0, 0, 3]
    with tf.control_dependencies([same_size]):
        images = tf.reshape(pixels.flat_values, tf.concat([tf.shape(image_bytes), size], axis=0))
    images.set_shape([None, None, None, 3])
    return images


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


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field: key (number, wire type 2), varint length, payload."""
    encoded = bytearray()
    for value in (number << 3 | 2, len(payload)):
        while value > 0x7F:
            encoded.append(value & 0x7F | 0x80)
            value >>= 7
        encoded.append(value)
    return bytes(encoded) + payload


def warmup_record(signature: str, input_name: str, tensor: tf.Tensor) -> bytes:
    """A serialized tensorflow.serving.PredictionLog holding a PredictRequest for `signature`.

    Written field by field (PredictionLog.predict_log = 6, PredictLog.request = 1, PredictRequest.model_spec = 1
    and inputs = 2, ModelSpec.signature_name = 3, map entries key = 1 and value = 2) so that export needs only
    TensorFlow: the tensorflow-serving-api wheel depends on the full `tensorflow`, which clashes with
    tensorflow-cpu. A test parses the records with the real protos.
    """
    model_spec = _field(3, signature.encode())
    entry = _field(1, input_name.encode()) + _field(2, tf.make_tensor_proto(tensor).SerializeToString())
    return _field(6, _field(1, _field(1, model_spec) + _field(2, entry)))


def _write_warmup(path: str, sizes: Sequence[tuple[int, int]]) -> None:
    """assets.extra/tf_serving_warmup_requests: per size, a pixel request and a PNG and a JPEG request (the two
    decoding branches of `encoded`), run at model load: the first real requests of those sizes then find the
    kernels initialised and the memory allocated."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for height, width in sizes:
            image = np.zeros((1, height, width, 3), np.uint8)
            writer.write(warmup_record("serving_default", "images", image))
            for encode in (tf.io.encode_png, tf.io.encode_jpeg):
                writer.write(warmup_record("encoded", "image_bytes", [encode(image[0]).numpy()]))


def export_saved_model(model: keras.Model, base_dir: str, info: DatasetInfo, *, version: int | None = None,
                       probabilities: bool = False, warmup_sizes: Sequence[tuple[int, int]] = ((473, 473),)) -> str:
    """Writes `base_dir/<version>/` (TF Serving's layout) and returns its path; never replaces a version.

    Signatures:
        serving_default: images uint8 [batch, height, width, 3] -> class_map int32 [batch, height, width]
            (+ probabilities float32 [..., classes] when `probabilities`).
        encoded: image_bytes string [batch] (JPEG/PNG; REST {"b64": ...}) -> the same outputs.
        logits: images float32 [batch, height, width, 3] (0-255) -> logits float32 [..., classes].
    The directory is written under a temporary name and renamed, so TF Serving never sees half a model.
    The model written is `deployable(model)`.
    """
    model = deployable(model)
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
        lambda image_bytes: _outputs(model, decode_batch(image_bytes), probabilities),
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


def calibration_images(spec: str, split: str = "train", count: int = 64, *, data_dir: str | None = None,
                       seed: int = 0) -> Iterator[np.ndarray]:
    """Up to `count` uint8 images drawn at random (seeded, each at most once) from a folder of images or from a
    split of a dataset (context, a TFDS name read from `data_dir`, a folder dataset), decoded as training decodes
    them, one at a time.

    Random rather than the first `count`: datasets are often sorted by scene or city, and int8 ranges calibrated
    on one kind of scene clip the others. Only the images drawn are decoded (TFDS: one split slice each).
    """
    import random

    from keras_pspnet.data import load_source
    from keras_pspnet.data.folder import IMAGE_SUFFIXES
    from keras_pspnet.data.order import TrainingOrder
    from keras_pspnet.data.tfds_sources import TFDS_SOURCES
    from keras_pspnet.predict import read_image

    if os.path.isdir(spec) and not os.path.isdir(os.path.join(spec, split)):
        files = sorted(f for f in os.listdir(spec) if f.lower().endswith(IMAGE_SUFFIXES))
        if not files:
            raise ValueError(f"{spec}: no images ({', '.join(IMAGE_SUFFIXES)}) to calibrate with")
        for name in random.Random(seed).sample(files, min(count, len(files))):
            yield read_image(os.path.join(spec, name))
        return
    size = int(load_source(spec, split, data_dir=data_dir, validate=False)[0].cardinality())
    if spec in TFDS_SOURCES:  # records cannot be addressed by index in the stream: TFDS slices the split instead
        for index in sorted(np.random.default_rng(seed).choice(size, min(count, size), replace=False)):
            source, _ = load_source(spec, f"{split}[{index}:{index + 1}]", data_dir=data_dir)
            yield next(iter(source))["image"].numpy()
        return
    source, _ = load_source(spec, split, data_dir=data_dir, validate=False, order=TrainingOrder(seed))
    for example in source.take(min(count, size) if size > 0 else count):  # the first epoch: no repeats
        yield example["image"].numpy()


def calibration_window(image: np.ndarray, size: tuple[int, int], protocol: TestProtocol,
                       mean: np.ndarray) -> np.ndarray:
    """uint8 [height, width, 3]: `image` as a .tflite of input `size` sees it: resized as its test protocol resizes
    at scale 1 (aspect ratio kept), then the centre window of `size`, padded with the mean colour where the image
    is smaller (as sliding-window inference pads)."""
    from keras_pspnet.inference import resize_array

    height, width = size
    image = resize_array(np.asarray(image, np.float32), protocol.scaled_size(*image.shape[:2], 1.0))
    window = np.empty((height, width, 3), np.float32)
    window[...] = mean
    top, left = (image.shape[0] - height) // 2, (image.shape[1] - width) // 2
    crop = image[max(top, 0) : max(top, 0) + height, max(left, 0) : max(left, 0) + width]
    window[max(-top, 0) : max(-top, 0) + crop.shape[0], max(-left, 0) : max(-left, 0) + crop.shape[1]] = crop
    return keras.ops.convert_to_numpy(model_input(window, "uint8"))


def _calibration_windows(model: keras.Model, calibration: Iterable[np.ndarray], size: tuple[int, int] | None,
                         path: str) -> list[np.ndarray]:
    """uint8 [1, height, width, 3] windows of `size` (`calibration_window`), at least MIN_CALIBRATION_IMAGES. With no
    `size` (a model that takes any size), each image as whole-image inference runs it: resized by the model's test
    protocol at scale 1, then its centre window of at most `inference.MAX_SIDE` a side."""
    protocol, mean = own_protocol(model_metadata(model)), model_mean(model)

    def window_size(image):
        return size or tuple(min(side, MAX_SIDE) for side in protocol.scaled_size(*image.shape[:2], 1.0))

    images = [calibration_window(image, window_size(image), protocol, mean)[None] for image in calibration]
    if len(images) < MIN_CALIBRATION_IMAGES:
        raise ValueError(f"{path}: int8 quantization needs at least {MIN_CALIBRATION_IMAGES} calibration images "
                         f"to set its activation ranges; the calibration data gave {len(images)}")
    return images


def _float_input(model: keras.Model) -> keras.Model:
    """`model` taking float32 pixels: itself, or the twin of a model built with input_dtype="uint8" (same weights).
    The int8 converter quantizes a float input into the uint8 it takes; a uint8 input's casts would stay float."""
    if model.input.dtype == "float32":
        return model
    twin = keras.models.clone_model(model, input_tensors=keras.Input(model.input.shape[1:], name="image"))
    twin.set_weights(model.get_weights())
    return twin


def export_tflite(model: keras.Model, path: str, info: DatasetInfo, *, input_size: tuple[int, int],
                  quantize: str = "none", outputs: str = "scores", calibration: Iterable[np.ndarray] | None = None,
                  overwrite: bool = False) -> str:
    """Writes a .tflite (builtin ops only) with TFLite metadata, and <path without .tflite>.json beside it; returns
    the .tflite path. Existing files are refused unless `overwrite`, and are replaced only once the new ones are
    complete.

    The model takes uint8 RGB [1, height, width, 3] (normalised inside) and has one output, laid out as on-device
    segmentation APIs expect (`outputs`):
    - "scores": [1, height, width, classes] log-probabilities, float32, or uint8 in an int8 model (dequantized:
      at least -16). They are the logits up to a shift per pixel: their argmax is the Keras model's class and
      their softmax its probabilities, which MediaPipe's ImageSegmenter computes (the metadata says "softmax").
    - "class_map": [1, height, width] uint8 class indices, for apps that post-process themselves (<= 256 classes).
    The metadata holds the class names (MediaPipe's `labels`) and our metadata JSON (`tflite.populate`).
    quantize: "none" (fp32), "fp16" (weights) or "int8" (full integer end to end: the uint8 pixels as they are in
    (scale 1, zero point 0), int8 weights and activations, the uint8 output; no float tensor, so NNAPI, Edge TPU
    and Hexagon delegates can take the whole graph), calibrated on `calibration`: at least MIN_CALIBRATION_IMAGES
    uint8 images [height, width, 3] of any size, each turned into the window the model sees by
    `calibration_window`. The model written is `deployable(model)`.
    """
    model = deployable(model)
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {list(QUANTIZATIONS)}, got {quantize!r}.")
    if quantize == "int8":
        model = _float_input(model)
    if outputs not in tflite.LAYOUTS:
        raise ValueError(f"outputs must be one of {list(tflite.LAYOUTS)}, got {outputs!r}.")
    classes = int(model.output.shape[-1])
    if outputs == "class_map" and classes > 256:
        raise ValueError(f"{path}: a class_map output holds class indices as uint8 (at most 256 classes); this "
                         f"model has {classes}: use the scores output")
    if len(info.class_names) != classes:  # MediaPipe's labels must match the channels one to one
        raise ValueError(f"{path}: {len(info.class_names)} class names for a model of {classes} classes")
    classifier = low_resolution_logits(model) if outputs == "scores" else None
    if outputs == "scores" and classifier is None:
        raise ValueError(f"{path}: the scores output needs a keras-pspnet model (upsampling layer "
                         "'classifier_resize'); use the class_map output")
    if quantize == "int8" and calibration is None:
        raise ValueError("int8 quantization needs calibration images (--calibration DATASET or a folder of images).")
    json_path = tflite_json(path)
    for existing in (path, json_path):
        check_new_output(existing, overwrite)
    height, width = input_size
    if quantize == "int8":  # first: a bad calibration source fails before the minutes of conversion
        images = _calibration_windows(model, calibration, input_size, path)
    archive = _archive()
    align_corners = uses_align_corners(model)
    # int8: a float input the converter quantizes itself (inference_input_type uint8), so that no float tensor
    # is left for NNAPI, Edge TPU or Hexagon delegates to fall back on; fp32 and fp16: a uint8 input cast inside.
    input_type = tf.float32 if quantize == "int8" else tf.uint8

    def serve(images):
        if outputs == "class_map":
            return {"class_map": tf.cast(tf.argmax(_logits(model, images), axis=-1), tf.uint8)}
        # Log-softmax, then the upsampling: a bilinear resize is linear, so this equals log-softmax after it up to
        # a shift per pixel, which softmax and argmax ignore. The other order would hold two full-resolution
        # tensors (the resize's, the softmax's); softmax before a resize of probabilities changes the argmax
        # (98.7% of pixels agreed with the Keras model on our test scenes).
        logits = tf.cast(classifier(model_input(images, model.input.dtype), training=False), tf.float32)
        return {"scores": resize_bilinear(tf.nn.log_softmax(logits), (height, width), align_corners)}

    archive.add_endpoint("serving_default", serve,
                         input_signature=[tf.TensorSpec([1, height, width, 3], input_type, name="images")])
    with tempfile.TemporaryDirectory() as staging:
        archive.write_out(staging, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(staging)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex ops, ever
        if quantize == "fp16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif quantize == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([image.astype(np.float32)] for image in images)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = converter.inference_output_type = tf.uint8
        content = converter.convert()
    tree = tflite.model_tree(content)  # decoded once for the rewrites, the output's spec and the metadata
    if quantize == "int8":
        try:
            tflite.pixels_in(tree)
            if outputs == "scores":
                tflite.quantize_before_upsampling(tree)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
    meta = metadata(model, info, input_size=[height, width], input_dtype="uint8", quantization=quantize,
                    outputs={outputs: tflite.output_spec(tree, outputs)}, tested_runtimes=TESTED_RUNTIMES)
    description = (f"PSPNet semantic segmentation, {classes} classes: uint8 RGB {height}x{width} in, {outputs} out "
                   f"({'fp32' if quantize == 'none' else quantize})")
    content = tflite.populate(tree, meta, outputs, description, __version__)
    write_text(json_path, json.dumps(meta, indent=1))  # each written beside and renamed: never half a file
    write_bytes(path, content)
    return path


def _onnx(model: keras.Model, info: DatasetInfo, input_size: tuple[int, int] | None, **extra):
    """The ONNX ModelProto of a `deployable` model, with our metadata JSON as metadata_props["keras_pspnet"]."""
    from keras_pspnet.onnx_graph import INPUT, METADATA_KEY, OPSET, OUTPUT, onnx_model

    classes = int(model.output.shape[-1])
    size = {"input_size": list(input_size)} if input_size else {}
    meta = metadata(model, info, **size, input_dtype="float32", opset=OPSET,
                    outputs={OUTPUT: {"layout": "NCHW", "dtype": "float32", "meaning": "logits"}}, **extra)
    doc = (f"PSPNet semantic segmentation, {classes} classes: {INPUT} float32 [batch, height, width, 3] RGB 0-255 "
           f"in, {OUTPUT} float32 [batch, {classes}, height, width] out")
    return onnx_model(model, metadata={METADATA_KEY: json.dumps(meta)}, input_size=input_size, doc=doc,
                      producer_version=__version__)


def export_onnx(model: keras.Model, path: str, info: DatasetInfo, *, input_size: tuple[int, int] | None = None,
                overwrite: bool = False) -> str:
    """Writes an ONNX model (opset `keras_pspnet.onnx_graph.OPSET`, checked with `onnx.checker`) and returns `path`.

    Input "images": float32 [batch, height, width, 3], RGB pixels 0-255 (normalised inside); height and width are
    dynamic unless `input_size`. Output "logits": float32 [batch, classes, height, width] (ONNX's NCHW layout).
    metadata_props["keras_pspnet"] holds the metadata JSON (`metadata`: classes, test protocol, source), which
    `pspnet predict` and `pspnet evaluate` read. The model written is `deployable(model)`. An existing file is
    refused unless `overwrite`, and replaced only once the new one is complete.
    """
    optional_runtime("onnx", "onnx")
    if not path.endswith(".onnx"):
        raise ValueError(f"{path}: an ONNX model is an .onnx file")
    check_new_output(path, overwrite)
    content = _onnx(deployable(model), info, input_size, format="onnx").SerializeToString()
    write_bytes(path, content, overwrite=overwrite)
    return path


def export_openvino(model: keras.Model, path: str, info: DatasetInfo, *, quantize: str = "none",
                    calibration: Iterable[np.ndarray] | None = None, input_size: tuple[int, int] | None = None,
                    overwrite: bool = False) -> str:
    """Writes an OpenVINO IR, `path` (.xml) and the .bin beside it, and returns `path`.

    The graph is the ONNX model of `export_onnx` (same input, output and dynamic sizes unless `input_size`), read
    by OpenVINO's ONNX frontend; its rt_info holds the metadata JSON (`model.get_rt_info(["keras_pspnet",
    "metadata"])`). quantize: "none"
    (fp32), "fp16" (weights stored as float16: half the size; the CPU still computes in float32) or "int8" (NNCF
    post-training quantization of weights and activations, ranges from `calibration`: at least
    MIN_CALIBRATION_IMAGES uint8 images, each as the model will see it (`_calibration_windows`: the window of
    `input_size`, else the whole image as its test protocol resizes it)). Existing files are refused unless
    `overwrite`; the new .bin and .xml are written beside and renamed, the .xml last, so that a kill never leaves an
    .xml naming a damaged model.
    """
    ov = optional_runtime("openvino", "openvino")
    optional_runtime("onnx", "openvino")
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {list(QUANTIZATIONS)}, got {quantize!r}.")
    if quantize == "int8" and calibration is None:
        raise ValueError("int8 quantization needs calibration images (--calibration DATASET or a folder of images).")
    if not path.endswith(".xml"):
        raise ValueError(f"{path}: an OpenVINO IR is an .xml file (and the .bin beside it)")
    weights = ir_weights(path)
    for existing in (path, weights):
        check_new_output(existing, overwrite)
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):  # before minutes of quantization
        raise FileNotFoundError(f"{os.path.dirname(path)}: no such folder for {os.path.basename(path)}")
    model = deployable(model)
    images = _calibration_windows(model, calibration, input_size, path) if quantize == "int8" else None
    proto = _onnx(model, info, input_size, format="openvino", quantization=quantize)
    ir = ov.convert_model(io.BytesIO(proto.SerializeToString()))
    if quantize == "int8":
        nncf = optional_runtime("nncf", "openvino")
        dataset = nncf.Dataset(images, lambda image: image.astype(np.float32))  # float32 one window at a time
        ir = nncf.quantize(ir, dataset, subset_size=len(images))
    ir.set_rt_info(proto.metadata_props[0].value, [proto.metadata_props[0].key, "metadata"])
    partial = partial_name(path)
    partial_weights = ir_weights(partial)
    try:
        ov.save_model(ir, partial, compress_to_fp16=quantize == "fp16")
        for target in (path, weights):
            refuse_link(target)
        if os.path.lexists(path):  # the old .xml first: its .bin is replaced next
            os.remove(path)
        os.replace(partial_weights, weights)
        os.replace(partial, path)
    finally:
        for leftover in (partial, partial_weights):
            if os.path.lexists(leftover):
                os.remove(leftover)
    return path
