"""What we change in a converted .tflite: its metadata (the labels and descriptions that MediaPipe Tasks'
ImageSegmenter and LiteRT's support library read, and our metadata JSON packed beside them), and where an int8
model's output is requantized.

The metadata is written with `flatbuffers` alone, after mediapipe/tasks/metadata/metadata_schema.fbs (field
numbers below). The writers that exist ship in `tflite-support`, which no longer installs beside TF 2.21, and
in `mediapipe`, whose opencv-contrib dependency replaces the OpenCV our tests compare with (and whose 1.2.3
Python writer lacks its native module): exporting needs neither. tests/test_tflite_runtimes.py reads what is
written here with MediaPipe's generated schema and runs the files in MediaPipe's ImageSegmenter.
"""

from __future__ import annotations

import io
import json
import zipfile

import flatbuffers
import numpy as np

from keras_pspnet.files import MAX_TEXT_BYTES, zip_member
from keras_pspnet.predictors import METADATA_FILE as JSON_FILE  # our metadata, packed into the .tflite too

LABELS_FILE = "labels.txt"  # one class name per line: MediaPipe's `labels`, LiteRT support library's label map

_RGB, _GRAYSCALE = 1, 2  # ColorSpaceType
_UNKNOWN, _AXIS_LABELS, _VALUE_LABELS = 0, 2, 3  # AssociatedFileType
_IMAGE_PROPERTIES, _NORMALIZATION = 2, 1  # ContentProperties, ProcessUnitOptions unions
_SOFTMAX = 2  # MediaPipe's segmenter Activation


def _table(builder: flatbuffers.Builder, fields: int, slots: dict) -> int:
    """A table from {slot: (kind, value)} with children already built (kinds: "offset", "int8", "int32",
    "uint8")."""
    builder.StartObject(fields)
    for slot, (kind, value) in sorted(slots.items()):
        if kind == "offset":
            builder.PrependUOffsetTRelativeSlot(slot, value, 0)
        elif kind == "int8":
            builder.PrependInt8Slot(slot, value, 0)
        elif kind == "int32":
            builder.PrependInt32Slot(slot, value, 0)
        else:
            builder.PrependUint8Slot(slot, value, 0)
    return builder.EndObject()


def _offsets(builder: flatbuffers.Builder, items: list[int]) -> int:
    builder.StartVector(4, len(items), 4)
    for item in reversed(items):
        builder.PrependUOffsetTRelative(item)
    return builder.EndVector()


def _floats(builder: flatbuffers.Builder, values: list[float]) -> int:
    return builder.CreateNumpyVector(np.asarray(values, np.float32))


def _file(builder: flatbuffers.Builder, name: str, description: str, kind: int) -> int:
    name, description = builder.CreateString(name), builder.CreateString(description)
    return _table(builder, 5, {0: ("offset", name), 1: ("offset", description), 2: ("int8", kind)})


def _tensor(builder: flatbuffers.Builder, name: str, description: str, *, color_space: int, files=(),
            content_range: tuple[int, int] | None = None, process_units=(), stats: tuple[float, float] | None = None):
    name, description = builder.CreateString(name), builder.CreateString(description)
    properties = _table(builder, 2, {0: ("int8", color_space)})
    content_slots = {0: ("uint8", _IMAGE_PROPERTIES), 1: ("offset", properties)}
    if content_range:  # which dimensions hold the image (ValueRange: min, max)
        content_slots[2] = ("offset", _table(builder, 2, {0: ("int32", content_range[0]),
                                                          1: ("int32", content_range[1])}))
    slots = {0: ("offset", name), 1: ("offset", description), 3: ("offset", _table(builder, 3, content_slots))}
    if process_units:
        slots[4] = ("offset", _offsets(builder, list(process_units)))
    if stats:
        maximum, minimum = _floats(builder, [stats[1]]), _floats(builder, [stats[0]])
        slots[5] = ("offset", _table(builder, 2, {0: ("offset", maximum), 1: ("offset", minimum)}))
    if files:
        slots[6] = ("offset", _offsets(builder, list(files)))
    return _table(builder, 7, slots)


def _segmenter_options() -> bytes:
    """MediaPipe's ImageSegmenterOptions (image_segmenter_metadata_schema.fbs): activation SOFTMAX, which turns
    the scores (log-probabilities) into MediaPipe's confidence masks."""
    builder = flatbuffers.Builder(0)
    builder.Finish(_table(builder, 2, {0: ("int8", _SOFTMAX)}), file_identifier=b"V001")
    return bytes(builder.Output())


# The output of each layout: its description and how its label file maps (AssociatedFileType).
_OUTPUTS = {
    "scores": ("log-probabilities per pixel, one channel per class: softmax gives the probabilities, argmax the "
               "class", "class names, one per channel", _AXIS_LABELS),
    "class_map": ("the class index of each pixel (uint8)", "class names, one per class index", _VALUE_LABELS),
}
LAYOUTS = tuple(_OUTPUTS)  # the output layouts a .tflite of ours has, the default first


def _metadata_buffer(layout: str, description: str, version: str) -> bytes:
    """The ModelMetadata flatbuffer of a segmentation .tflite with one uint8 RGB input and one output of `layout`:
    "scores" [1, H, W, classes] (MediaPipe ImageSegmenter's layout) or "class_map" [1, H, W]."""
    builder = flatbuffers.Builder(1024)
    identity = _floats(builder, [0.0]), _floats(builder, [1.0])
    normalization = _table(builder, 2, {0: ("offset", identity[0]), 1: ("offset", identity[1])})
    unit = _table(builder, 2, {0: ("uint8", _NORMALIZATION), 1: ("offset", normalization)})
    image = _tensor(builder, "image", "RGB pixels 0-255 (uint8); the model normalises them itself",
                    color_space=_RGB, process_units=[unit], stats=(0.0, 255.0))
    meaning, labels_meaning, labels_kind = _OUTPUTS[layout]
    labels = _file(builder, LABELS_FILE, labels_meaning, labels_kind)
    output = _tensor(builder, layout, meaning, color_space=_GRAYSCALE, files=[labels], content_range=(1, 2))
    slots = {2: ("offset", _offsets(builder, [image])), 3: ("offset", _offsets(builder, [output]))}
    if layout == "scores":
        name, data = builder.CreateString("SEGMENTER_METADATA"), builder.CreateByteVector(_segmenter_options())
        slots[9] = ("offset", _offsets(builder, [_table(builder, 2, {0: ("offset", name), 1: ("offset", data)})]))
    subgraph = _table(builder, 10, slots)
    json_file = _file(builder, JSON_FILE, "keras-pspnet metadata: classes with names and colours, normalisation done "
                   "inside, test protocol, source", _UNKNOWN)
    parser = "1.5.0" if layout == "scores" else "1.0.0"  # subgraph custom_metadata came with parser 1.5.0
    strings = [builder.CreateString(text) for text in ("PSPNet", description, version, "keras-pspnet", parser)]
    model = _table(builder, 8, {0: ("offset", strings[0]), 1: ("offset", strings[1]), 2: ("offset", strings[2]),
                                3: ("offset", _offsets(builder, [subgraph])), 4: ("offset", strings[3]),
                                6: ("offset", _offsets(builder, [json_file])), 7: ("offset", strings[4])})
    builder.Finish(model, file_identifier=b"M001")
    return bytes(builder.Output())


def quantize_before_upsampling(tree) -> None:
    """Makes an int8 "scores" model (`model_tree`) requantize its uint8 output before the final bilinear resize,
    not after.

    The converter appends the QUANTIZE (int8 -> uint8: same scale, zero point + 128) after the resize, so the
    full-resolution scores exist twice. The resize commutes with that shift (its weights sum to one), so
    converting the classifier's map first gives the same values with one full-resolution tensor: the same bytes
    under XNNPACK (LiteRT's and MediaPipe's CPU path); TFLite's reference kernels round ties of the int8 and uint8
    resize apart, by one step at most. Raises ValueError if the graph does not end so (a converter that builds it
    otherwise): the saving would be lost unnoticed.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    graph, codes = tree.subgraphs[0], [max(c.builtinCode, c.deprecatedBuiltinCode) for c in tree.operatorCodes]
    producers = {int(t): op for op in graph.operators for t in op.outputs}
    quantize = producers.get(int(graph.outputs[0]))
    resize = producers.get(int(quantize.inputs[0])) if quantize is not None else None
    tensors = graph.tensors
    if (resize is None or codes[quantize.opcodeIndex] != schema.BuiltinOperator.QUANTIZE
            or codes[resize.opcodeIndex] != schema.BuiltinOperator.RESIZE_BILINEAR
            or sum(int(resize.outputs[0]) in op.inputs for op in graph.operators) != 1
            or (tensors[resize.outputs[0]].type, tensors[quantize.outputs[0]].type) != (schema.TensorType.INT8,
                                                                                        schema.TensorType.UINT8)
            or not np.array_equal(tensors[resize.outputs[0]].quantization.scale,
                                  tensors[quantize.outputs[0]].quantization.scale)):
        raise ValueError("int8 scores: the converted model does not end in RESIZE_BILINEAR (int8) -> QUANTIZE "
                         "(uint8, same scale); this TensorFlow's converter is not supported for it")
    source, between, output = int(resize.inputs[0]), int(resize.outputs[0]), int(quantize.outputs[0])
    middle = tensors[between]
    middle.shape, middle.shapeSignature = tensors[source].shape, tensors[source].shapeSignature
    middle.type, middle.quantization = tensors[output].type, tensors[output].quantization
    quantize.inputs, quantize.outputs = np.array([source], np.int32), np.array([between], np.int32)
    resize.inputs, resize.outputs = np.array([between, *resize.inputs[1:]], np.int32), np.array([output], np.int32)
    order = graph.operators
    order.remove(quantize)
    order.insert(order.index(resize), quantize)


def pixels_in(tree) -> None:
    """Makes a full-integer model's (`model_tree`) uint8 input the pixels as they are: scale 1, zero point 0.

    The converter derives the input's quantization from the calibration images' range, which for photos that
    miss pure black or white is a little narrower than 0-255: uint8 pixels would then be read slightly off. The
    input feeds QUANTIZE ops only (uint8 -> the int8 the graph runs in), which requantize from whatever the
    input's parameters say, so stating the true ones is exact. Raises ValueError for a graph not built so.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    graph, codes = tree.subgraphs[0], [max(c.builtinCode, c.deprecatedBuiltinCode) for c in tree.operatorCodes]
    source = int(graph.inputs[0])
    tensor = graph.tensors[source]
    consumers = [op for op in graph.operators if source in op.inputs]
    if tensor.type != schema.TensorType.UINT8 or not consumers or any(
            codes[op.opcodeIndex] != schema.BuiltinOperator.QUANTIZE for op in consumers):
        raise ValueError("int8: the converted model's input is not uint8 read by QUANTIZE ops only; this "
                         "TensorFlow's converter is not supported for it")
    tensor.quantization.scale = np.array([1.0], np.float32)
    tensor.quantization.zeroPoint = np.array([0], np.int64)


def output_spec(tree, layout: str) -> dict:
    """dtype, shape, (for integer outputs) quantization and meaning of a one-output model's (`model_tree`) output
    of `layout`."""
    from tensorflow.lite.python import schema_py_generated as schema

    graph = tree.subgraphs[0]
    tensor = graph.tensors[graph.outputs[0]]
    names = {value: name.lower() for name, value in vars(schema.TensorType).items() if not name.startswith("_")}
    spec = {"dtype": names[tensor.type], "shape": np.asarray(tensor.shape).tolist(), "meaning": _OUTPUTS[layout][0]}
    quantization = tensor.quantization
    if quantization is not None and quantization.scale is not None and len(quantization.scale):
        spec["quantization"] = {"scale": float(quantization.scale[0]), "zero_point": int(quantization.zeroPoint[0])}
    return spec


def model_tree(content: bytes):
    """A .tflite's model flatbuffer as TF's generated object tree, to change and then `populate` (TF ships the
    schema; exporting imports TF anyway)."""
    from tensorflow.lite.python import schema_py_generated as schema

    return schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(content, 0))


def packed(tree) -> bytes:
    """The model flatbuffer of a `model_tree`."""
    size = sum(len(buffer.data) for buffer in tree.buffers if buffer.data is not None)
    builder = flatbuffers.Builder(size + 2**16)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def populate(tree, meta: dict, layout: str, description: str, version: str) -> bytes:
    """The .tflite of `tree` (`model_tree`) with its metadata: the ModelMetadata buffer under "TFLITE_METADATA" in
    the model's flatbuffer, and the labels file and `meta` as JSON in a zip archive appended to it (where TFLite
    metadata keeps its files)."""
    from tensorflow.lite.python import schema_py_generated as schema

    names = [entry["name"] for entry in meta["classes"]]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(_metadata_buffer(layout, description, version), np.uint8)
    entry = schema.MetadataT()
    entry.name, entry.buffer = b"TFLITE_METADATA", len(tree.buffers)
    tree.buffers.append(buffer)
    tree.metadata = [*(tree.metadata or []), entry]
    result = io.BytesIO()
    result.write(packed(tree))
    with zipfile.ZipFile(result, "a") as archive:  # offsets count from the file's start, as MediaPipe reads them
        for name, text in ((LABELS_FILE, "\n".join(names) + "\n"), (JSON_FILE, json.dumps(meta, indent=1))):
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), text)  # the same bytes each time
    return result.getvalue()


def packed_json(path: str) -> dict | None:
    """The metadata JSON packed into a .tflite by `populate`, or None (a .tflite without it); its size is checked
    before it is inflated (MAX_TEXT_BYTES)."""
    try:
        with zipfile.ZipFile(path) as archive:
            text = zip_member(archive, JSON_FILE, MAX_TEXT_BYTES, path)
    except (zipfile.BadZipFile, KeyError):
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as error:
        raise ValueError(f"{path}: its packed {JSON_FILE} is not JSON ({str(error)[:120]})") from None
