"""One interface over the forms a model takes: a Keras model, an exported SavedModel, a .tflite, an ONNX model and an
OpenVINO IR (the last two in `keras_pspnet.runtimes`).

A predictor has `predict_on_batch(images float32 [B, H, W, 3], pixels 0-255) -> logits [B, H, W, classes]`,
and `mean` (the RGB fill for padding), `num_classes`, `input_size` (fixed (H, W) or None), `align_corners`
and `metadata` (classes, test protocol and source, as `keras_pspnet.model.model_metadata`).
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np

from keras_pspnet.console import one_line
from keras_pspnet.data.classes import checked_classes
from keras_pspnet.files import check_nodes, printable, read_bytes, read_text, regular_file, short_repr
from keras_pspnet.model import (
    inference_model,
    model_input,
    model_mean,
    model_metadata,
    portable_model,
    uses_align_corners,
)
from keras_pspnet.protocol import LARGEST_SIDE, own_protocol

METADATA_FILE = "pspnet.json"  # in the SavedModel's assets.extra/, and beside a .tflite as <name>.json


EXPORTED_SUFFIXES = (".tflite", ".onnx", ".xml")  # the exported files (a SavedModel is a folder)


def tflite_json(path: str) -> str:
    """The metadata JSON written beside a .tflite: <name>.json."""
    return os.path.splitext(path)[0] + ".json"


def ir_weights(path: str) -> str:
    """The weights of an OpenVINO IR, beside its .xml: <name>.bin (where OpenVINO looks for them)."""
    return os.path.splitext(path)[0] + ".bin"


class KerasPredictor:
    """A Keras model; an auxiliary head is dropped (`inference_model`).

    A model built under a strategy with several replicas (training under MirroredStrategy) would run every batch
    on every replica: it is predicted through a float32 copy outside the strategy (`portable_model`, what training
    saves), made once.
    """

    def __init__(self, model: keras.Model):
        strategy = getattr(model, "distribute_strategy", None)  # TensorFlow's backend only
        replicas = getattr(strategy, "num_replicas_in_sync", 1)
        self.model = portable_model(model) if replicas > 1 else inference_model(model)
        self.mean, self.input_size = model_mean(self.model), None
        self.num_classes = int(self.model.output.shape[-1])
        self.align_corners = uses_align_corners(self.model)
        self.metadata = model_metadata(self.model)

    def predict_on_batch(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_on_batch(model_input(images, self.model.input.dtype)))


class _ExportedPredictor:
    """Classes, normalisation mean, input size and protocol come from the metadata JSON of `keras_pspnet.export`
    (`metadata`, where the model file holds it, else the file at `metadata_path`), checked as a file from anywhere:
    bounded in size and nesting, printable class names, sizes a protocol may hold."""

    def __init__(self, path: str, metadata_path: str, metadata: dict | None = None):
        self.path = path
        if metadata is not None:  # the file's own: it wins over a JSON beside it
            metadata_path = f"{path} (its packed {METADATA_FILE})"
        else:
            try:
                metadata = json.loads(read_text(metadata_path, "metadata"))
            except (OSError, ValueError) as error:
                raise ValueError(f"{path}: not exported by keras-pspnet ({metadata_path}: {one_line(error)})") from None
        check_nodes(metadata, metadata_path, limit=100_000)
        self.metadata = metadata
        try:
            self.mean = np.asarray(self.metadata["normalization"]["mean"], np.float32).reshape(3)
            classes = self.metadata["classes"]
            checked_classes([c["name"] for c in classes], [c.get("color") for c in classes], metadata_path)
            self.num_classes = len(classes)
            self.input_size = tuple(self.metadata["input_size"]) if "input_size" in self.metadata else None
            own_protocol(self.metadata)  # a protocol that fails here would fail at every image
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            detail = str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
            raise ValueError(f"{metadata_path}: not keras-pspnet metadata ({printable(detail, 200)})") from None
        if self.input_size is not None and (len(self.input_size) != 2 or not all(
                isinstance(v, int) and 1 <= v <= LARGEST_SIDE for v in self.input_size)):
            raise ValueError(f"{metadata_path}: input_size {short_repr(self.input_size)} is not (height, width)")
        self.align_corners = bool(self.metadata.get("align_corners", False))

    def check_size(self, images: np.ndarray) -> None:
        """A model exported with a fixed input size refuses other sizes in one line (not the runtime's words)."""
        if self.input_size is not None and tuple(images.shape[1:3]) != self.input_size:
            raise ValueError(f"{self.path}: takes {self.input_size[0]}x{self.input_size[1]} images, got "
                             f"{images.shape[1]}x{images.shape[2]} (use --mode slide, or export with --input-size)")


# The operations of the SavedModels `pspnet export` writes (every backbone, layout and option, TF 2.21), and kin
# of them a later TensorFlow may write instead. A SavedModel is a program: loading one runs its operations (restore,
# initialisers), so one from elsewhere is checked against this list before TensorFlow reads it, unless trusted.
EXPORTED_OPS = frozenset("""
    Abs AddV2 All ArgMax Assert AssignVariableOp AvgPool BatchToSpaceND BiasAdd BroadcastTo Cast Ceil ClipByValue
    ConcatV2 Const Conv2D DecodeImage DecodeJpeg DecodeRaw DepthwiseConv2dNative DisableCopyOnRead Einsum Equal Exp
    ExpandDims Fill Floor FloorDiv FloorMod GatherV2 Greater GreaterEqual Identity IdentityN Less LessEqual Log
    LogSoftmax LogicalAnd LogicalNot LogicalOr MatMul Max MaxPool Maximum Mean MergeV2Checkpoints Min Minimum Mul Neg
    NoOp NotEqual OnesLike Pack Pad PadV2 PartitionedCall Placeholder Pow Prod RaggedTensorFromVariant
    RaggedTensorToVariant Range ReadVariableOp RealDiv Relu Relu6 Reshape ResizeBilinear RestoreV2 Round Rsqrt SaveV2
    Select SelectV2 Shape ShardedFilename Sigmoid Size Slice Softmax SpaceToBatchND Split SplitV Sqrt Square Squeeze
    StatefulPartitionedCall StatelessCase StatelessIf StatelessWhile StaticRegexFullMatch StopGradient StridedSlice
    StringJoin Sub Substr Sum Tanh TensorListFromTensor TensorListGetItem TensorListReserve TensorListSetItem
    TensorListStack Tile Transpose Unpack VarHandleOp Where ZerosLike""".split())
# Of these, the ones that read or write files named by their inputs: only in the SavedModel's own saver functions
# (saver_def: the save function writes a checkpoint, the restore function reads one), never where a signature or
# anything else runs.
SAVE_OPS, RESTORE_OPS = frozenset({"SaveV2", "MergeV2Checkpoints"}), frozenset({"RestoreV2"})
SIGNATURES = ("serving_default", "encoded", "logits")
MAX_GRAPH_BYTES = 256 * 2**20  # saved_model.pb holds the graph; the weights are in variables/


def refuse_foreign(path: str, foreign: set[str], what: str, hint: str) -> None:
    """Refuses, in one line naming at most 8 of them, a model file holding `foreign` operations (if any)."""
    if foreign:
        names = sorted(foreign)
        raise ValueError(f"{path}: {what} ({printable(', '.join(names[:8]))}{', ...' if len(names) > 8 else ''}); "
                         f"{hint}")


def check_saved_model(path: str) -> None:
    """Refuses, in one line, a SavedModel that `pspnet export` did not write, before TensorFlow loads it: its
    graph is read as data and must have our signatures and only the operations our exports use."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    hint = ("a SavedModel is a program that runs its own operations when loaded; if you trust its source, pass "
            "trust_model=True (--trust-model)")
    graph = saved_model_pb2.SavedModel()
    try:
        graph.ParseFromString(read_bytes(os.path.join(path, "saved_model.pb"), MAX_GRAPH_BYTES, "SavedModel graph"))
    except DecodeError:
        raise ValueError(f"{path}: saved_model.pb is not a SavedModel graph") from None
    if len(graph.meta_graphs) != 1:
        raise ValueError(f"{path}: {len(graph.meta_graphs)} graphs, not the one of `pspnet export`; {hint}")
    meta_graph = graph.meta_graphs[0]
    missing = [name for name in SIGNATURES if name not in meta_graph.signature_def]
    if missing:
        raise ValueError(f"{path}: not exported by keras-pspnet (no {', '.join(missing)} signature); {hint}")
    graph = meta_graph.graph_def
    functions = {function.signature.name: function.node_def for function in graph.library.function}
    nodes = {node.name: node for node in graph.node}

    def reached(tensor_name: str) -> set[str]:
        """The functions a graph node calls, and those they call, and so on."""
        node = nodes.get(tensor_name.split(":")[0])
        found, pending = set(), [node] if node is not None else []
        while pending:
            for value in pending.pop().attr.values():
                called = [value.func.name] if value.HasField("func") else []
                for name in called + [f.name for f in value.list.func]:
                    if name in functions and name not in found:
                        found.add(name)
                        pending.extend(functions[name])
        return found

    saving, restoring = reached(meta_graph.saver_def.save_tensor_name), reached(meta_graph.saver_def.restore_op_name)
    foreign = set()
    for name, body in [("", graph.node), *functions.items()]:
        allowed = EXPORTED_OPS - SAVE_OPS - RESTORE_OPS | (SAVE_OPS if name in saving else set()) | (
            RESTORE_OPS if name in restoring else set())
        foreign.update(node.op for node in body if node.op not in allowed)
    refuse_foreign(path, foreign, "runs operations keras-pspnet's exports do not, or not there", hint)


class SavedModelPredictor(_ExportedPredictor):
    """An exported SavedModel (its "logits" signature). One that `pspnet export` did not write is refused before
    it is loaded (`check_saved_model`), unless `trust_model`."""

    def __init__(self, path: str, trust_model: bool = False):
        import tensorflow as tf

        super().__init__(path, os.path.join(path, "assets.extra", METADATA_FILE))
        if not trust_model:
            check_saved_model(path)
        try:
            signatures = tf.saved_model.load(path).signatures
        except Exception as error:  # a broken or foreign file: protobuf, OpError, ... with pages of detail
            raise ValueError(f"{path}: cannot load the SavedModel ({type(error).__name__})") from None
        if "logits" not in signatures:
            raise ValueError(f"{path}: has no 'logits' signature (signatures: {sorted(signatures)}); "
                             "export it with `pspnet export`")
        self.signature = signatures["logits"]

    def predict_on_batch(self, images: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        return self.signature(images=tf.constant(images, tf.float32))["logits"].numpy()


class TFLitePredictor(_ExportedPredictor):
    """A .tflite from `pspnet export --format tflite`, run by the LiteRT interpreter (fixed input size).

    Its one output becomes the logits of the predictor interface: scores as they are (log-probabilities: the
    logits up to a shift per pixel, so softmax, argmax and every test protocol's labels are the same), a class
    map one-hot.
    """

    def __init__(self, path: str, threads: int = 2):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise ImportError(f"{path}: running a .tflite needs the LiteRT interpreter: pip install ai-edge-litert "
                              "(the [serving] extra)") from None
        from keras_pspnet.tflite import LAYOUTS, packed_json

        super().__init__(path, tflite_json(path), packed_json(path))
        try:
            self.runner = Interpreter(model_path=path, num_threads=threads).get_signature_runner("serving_default")
        except (ValueError, RuntimeError) as error:  # LiteRT's words for a damaged file: "Could not open", ...
            raise ValueError(f"{path}: not a TFLite model, or a damaged one ({one_line(error)[:160]})") from None
        shape = tuple(self.runner.get_input_details()["images"]["shape"])
        if self.input_size != shape[1:3]:
            raise ValueError(f"{path}: takes {shape[1]}x{shape[2]} images, its metadata says {self.input_size}")
        outputs = self.runner.get_output_details()
        if len(outputs) != 1 or not outputs.keys() & set(LAYOUTS):
            raise ValueError(f"{path}: has outputs {sorted(outputs)}, not one of {' or '.join(LAYOUTS)} (a .tflite "
                             "of keras-pspnet <= 0.3: export it again with `pspnet export`)")
        (self.output, details), = outputs.items()
        self.scale, self.zero_point = details["quantization"]
        # The first call applies the XNNPACK delegate, which LiteRT announces on stderr ("INFO: Created ..."):
        # made here, so that whoever wants quiet can hide it around the construction (`pspnet` does).
        self.runner(images=np.zeros(shape, np.uint8))

    def predict_on_batch(self, images: np.ndarray) -> np.ndarray:
        self.check_size(images)
        pixels = keras.ops.convert_to_numpy(model_input(images, "uint8"))
        values = np.concatenate([self.runner(images=image[None])[self.output] for image in pixels])
        if self.output == "class_map":
            return np.eye(self.num_classes, dtype=np.float32)[values]
        if self.scale:  # int8 models: uint8 scores
            return (values.astype(np.float32) - self.zero_point) * np.float32(self.scale)
        return values


def as_predictor(model):
    """A predictor for a Keras model; predictors pass through."""
    return KerasPredictor(model) if isinstance(model, keras.Model) else model


RUNTIMES = ("keras", "onnx", "openvino")


def load_predictor(path: str, trust_model: bool = False, cache_dir: str | None = None, runtime: str = "keras"):
    """A predictor for a published name (see `keras_pspnet.model.load_model`), a .keras file, a SavedModel (or TF
    Serving base directory: its latest version), a .tflite, an .onnx (ONNX Runtime) or an OpenVINO .xml.

    A SavedModel, ONNX model or OpenVINO IR that `pspnet export` did not write is refused before it is loaded unless
    `trust_model`: loading a SavedModel runs its operations (see `check_saved_model`); the runtimes of the others
    are large C++ parsers, given only the operations our exports write.

    runtime: for a published name or a .keras file, "onnx" or "openvino" exports it (fp32, any size) into a
    temporary folder and runs it there: on x86 CPUs, faster than TensorFlow with the same numbers
    (benchmarks/runtimes_cpu.py).
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {list(RUNTIMES)}, got {runtime!r}")
    if runtime != "keras":
        if path.endswith(EXPORTED_SUFFIXES) or os.path.isdir(path):
            raise ValueError(f"{path}: --runtime {runtime} runs a published name or a .keras model; an exported model "
                             "runs in its own runtime")
        return _exported_predictor(path, runtime, cache_dir)
    if path.endswith(".tflite"):
        regular_file(path, "model")
        return TFLitePredictor(path)
    if path.endswith((".onnx", ".xml")):
        from keras_pspnet.runtimes import OnnxPredictor, OpenVINOPredictor

        return (OnnxPredictor if path.endswith(".onnx") else OpenVINOPredictor)(path, trust_model)
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "saved_model.pb")):
            versions = sorted((int(v) for v in os.listdir(path) if v.isdigit()), reverse=True)
            if not versions:
                raise ValueError(f"{path}: neither a SavedModel nor a TF Serving model directory")
            path = os.path.join(path, str(versions[0]))
        return SavedModelPredictor(path, trust_model)
    from keras_pspnet.model import load_model

    return KerasPredictor(load_model(path, cache_dir))


def _exported_predictor(path: str, runtime: str, cache_dir: str | None):
    """The predictor of `path`'s ONNX model or OpenVINO IR, written to a temporary folder that is gone afterwards
    (both runtimes hold the model in memory once it is loaded)."""
    import tempfile

    from keras_pspnet.data.classes import resolve_classes
    from keras_pspnet.export import export_onnx, export_openvino
    from keras_pspnet.model import load_model

    model = inference_model(load_model(path, cache_dir))
    info = resolve_classes(None, int(model.output.shape[-1]), path, model_metadata(model))
    export, name = {"onnx": (export_onnx, "model.onnx"), "openvino": (export_openvino, "model.xml")}[runtime]
    with tempfile.TemporaryDirectory(prefix="pspnet-") as folder:
        return load_predictor(export(model, os.path.join(folder, name), info))
