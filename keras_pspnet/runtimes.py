"""Predictors for the ONNX model and the OpenVINO IR of `keras_pspnet.export`: ONNX Runtime and OpenVINO.

Both runtimes are optional (the extras [onnx] and [openvino], `EXTRAS`). A file is checked as
one from anywhere before a runtime parses it: bounded in size, only the operations our exports write, weights inside
the file (ONNX) or inside the .bin beside it (OpenVINO), and our metadata.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ElementTree

import numpy as np

from keras_pspnet.console import one_line
from keras_pspnet.files import printable, read_bytes
from keras_pspnet.onnx_graph import INPUT, METADATA_KEY, OPERATIONS, OUTPUT
from keras_pspnet.predictors import _ExportedPredictor, ir_weights, refuse_foreign

MAX_ONNX_BYTES = 2**30  # an R152 PSPNet is 0.3 GiB; the file, its parse and the runtime's copy are all in memory
MAX_IR_XML_BYTES = 8 * 2**20  # the .xml holds the graph only (an R101's is 0.3 MiB); the weights are in the .bin
MAX_IR_BIN_BYTES = 2**30
MAX_METADATA_BYTES = 2**20
# The layer types of the IRs `pspnet export --format openvino` writes (fp32, fp16, int8; every backbone and option,
# OpenVINO 2026.4), and kin a later OpenVINO may write instead.
IR_LAYERS = frozenset("""Add Clamp Concat Const Convert Convolution Divide FakeQuantize Gather GreaterEqual
    GroupConvolution Interpolate Less LogicalAnd MatMul MaxPool Multiply Pad Parameter Range ReLU ReduceMean ReduceSum
    Reshape Result Round ShapeOf Slice Squeeze Subtract Transpose Unsqueeze""".split())
TRUST_HINT = "if you trust its source, pass trust_model=True (--trust-model)"
EXTRAS = {"onnx": "onnx onnxruntime", "openvino": "onnx openvino nncf"}  # setup.py's extras of the same names


def optional_runtime(module: str, extra: str, path: str | None = None):
    """Imports an optional runtime, or says in one line which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        where = f"{path}: running it needs {module}" if path else f"{module} is not installed"
        raise ImportError(f"{where}: pip install {EXTRAS[extra]} (the [{extra}] extra)") from None


def _metadata(text: str | None, path: str) -> dict:
    if text is None:
        raise ValueError(f"{path}: not exported by keras-pspnet (no {METADATA_KEY} metadata)")
    if len(text) > MAX_METADATA_BYTES:
        raise ValueError(f"{path}: its {METADATA_KEY} metadata is larger than keras-pspnet writes")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as error:
        raise ValueError(f"{path}: its {METADATA_KEY} metadata is not JSON ({one_line(error)[:120]})") from None


def _foreign(found: set[str], allowed: frozenset, path: str, what: str) -> None:
    refuse_foreign(path, found - allowed, f"holds {what} keras-pspnet's exports do not", TRUST_HINT)


def checked_onnx(path: str, trust_model: bool = False):
    """(file content, metadata dict) of an ONNX model from `pspnet export --format onnx`, checked as data before
    ONNX Runtime reads it: a protobuf ModelProto, weights inside (external data would make the runtime open other
    files), our input and output, and (unless `trust_model`) only the operations our exports write."""
    onnx = optional_runtime("onnx", "onnx", path)
    from google.protobuf.message import DecodeError

    content = read_bytes(path, MAX_ONNX_BYTES, "ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(content)
    except (DecodeError, RuntimeWarning, ValueError):
        raise ValueError(f"{path}: not an ONNX model (not a ModelProto)") from None
    graph = model.graph
    if not graph.node:
        raise ValueError(f"{path}: not an ONNX model (no graph)")
    # Refused even from a trusted source: what our exports never hold and a runtime would follow elsewhere
    # (external data opens other files; subgraphs and functions hold nodes these checks do not see).
    attribute = onnx.AttributeProto
    nested = {attribute.GRAPH, attribute.GRAPHS, attribute.SPARSE_TENSOR, attribute.SPARSE_TENSORS, attribute.TENSORS}
    if model.functions or model.training_info or graph.sparse_initializer or any(
            a.type in nested for node in graph.node for a in node.attribute):
        raise ValueError(f"{path}: holds subgraphs, functions or sparse tensors; keras-pspnet's exports do not")
    tensors = list(graph.initializer) + [a.t for node in graph.node for a in node.attribute if a.HasField("t")]
    if any(t.data_location == onnx.TensorProto.EXTERNAL or t.external_data for t in tensors):
        raise ValueError(f"{path}: keeps weights outside the file (external data); keras-pspnet's exports do not")
    if not trust_model:
        _foreign({n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}" for n in graph.node},
                 OPERATIONS, path, "operations")
    names = ([i.name for i in graph.input if i.name not in {t.name for t in graph.initializer}],
             [o.name for o in graph.output])
    if names != ([INPUT], [OUTPUT]):
        found = f"inputs {printable(str(names[0]), 100)} and outputs {printable(str(names[1]), 100)}"
        raise ValueError(f"{path}: has {found}, not [{INPUT!r}] and [{OUTPUT!r}] (export it with `pspnet export "
                         "--format onnx`)")
    props = {p.key: p.value for p in model.metadata_props}
    return content, _metadata(props.get(METADATA_KEY), path)


class OnnxPredictor(_ExportedPredictor):
    """An .onnx from `pspnet export --format onnx`, run by ONNX Runtime on the CPU (any input size unless exported
    with a fixed one). Its NCHW logits are returned channels last, as the predictor interface has them."""

    def __init__(self, path: str, trust_model: bool = False, threads: int | None = None):
        ort = optional_runtime("onnxruntime", "onnx", path)
        content, metadata = checked_onnx(path, trust_model)
        super().__init__(path, path, metadata)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: its warnings are about the machine, not the model
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(content, options, providers=["CPUExecutionProvider"])
        except Exception as error:  # ORT's own exceptions (InvalidGraph, Fail, ...) for what passed the checks
            raise ValueError(f"{path}: ONNX Runtime cannot load it ({one_line(error)[:200]})") from None

    def predict_on_batch(self, images: np.ndarray) -> np.ndarray:
        self.check_size(images)
        logits = self.session.run(None, {INPUT: np.asarray(images, np.float32)})[0]
        return np.ascontiguousarray(logits.transpose(0, 2, 3, 1))


_DIGITS = re.compile(r"[0-9]{1,15}")


def checked_ir(path: str, trust_model: bool = False) -> tuple[bytes, bytes, dict]:
    """(the .xml, the .bin beside it, the metadata) of an OpenVINO IR from `pspnet export --format openvino`, the
    .xml checked as data before OpenVINO reads the same bytes: plain XML (no DTD or entities, no namespaces, which
    OpenVINO's parser reads differently from Python's), (unless `trust_model`) only the layer types our exports
    write, and every weight inside the .bin."""
    text = read_bytes(path, MAX_IR_XML_BYTES, "OpenVINO IR")
    weights = read_bytes(ir_weights(path), MAX_IR_BIN_BYTES, "OpenVINO weights")
    if b"<!DOCTYPE" in text or b"<!ENTITY" in text or b"xmlns" in text:
        raise ValueError(f"{path}: XML with a DTD, entities or namespaces; keras-pspnet's IRs have none")
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as error:
        raise ValueError(f"{path}: not an OpenVINO IR (not XML: {one_line(error)[:100]})") from None
    if root.tag != "net":
        raise ValueError(f"{path}: not an OpenVINO IR (its root is <{printable(root.tag, 40)}>, not <net>)")
    if not trust_model:
        _foreign({str(layer.get("type")) for layer in root.iter("layer")}, IR_LAYERS, path, "layer types")
    for data in root.iter("data"):
        offset, size = data.get("offset"), data.get("size")
        if offset is None and size is None:
            continue
        if not (_DIGITS.fullmatch(offset or "") and _DIGITS.fullmatch(size or "")):
            raise ValueError(f"{path}: a weight's offset or size is not a number")
        if int(offset) + int(size) > len(weights):
            raise ValueError(f"{path}: a weight lies beyond the end of {ir_weights(path)} ({len(weights)} bytes)")
    node = root.find(f"rt_info/{METADATA_KEY}/metadata")
    return text, weights, _metadata(None if node is None else node.get("value"), path)


class OpenVINOPredictor(_ExportedPredictor):
    """An OpenVINO IR (.xml and .bin) from `pspnet export --format openvino`, run by OpenVINO on the CPU.

    Always in float32 where the model is float: OpenVINO would otherwise run bfloat16 on CPUs that have it
    (INFERENCE_PRECISION_HINT), and the numbers would no longer be the exported model's. An int8 IR runs its
    quantized layers in int8.
    """

    def __init__(self, path: str, trust_model: bool = False, device: str = "CPU"):
        ov = optional_runtime("openvino", "openvino", path)
        text, weights, metadata = checked_ir(path, trust_model)
        super().__init__(path, path, metadata)
        try:  # the bytes checked, not the files again (they may have changed since)
            core = ov.Core()
            model = core.read_model(model=text, weights=ov.Tensor(np.frombuffer(weights, np.uint8)))
            self.model = core.compile_model(model, device, {"INFERENCE_PRECISION_HINT": "f32"})
        except Exception as error:  # OpenVINO's RuntimeError (and kin) with a C++ trace
            raise ValueError(f"{path}: OpenVINO cannot load it ({one_line(error)[:200]})") from None

    def predict_on_batch(self, images: np.ndarray) -> np.ndarray:
        self.check_size(images)
        logits = self.model(np.asarray(images, np.float32))[0]
        return np.ascontiguousarray(logits.transpose(0, 2, 3, 1))
