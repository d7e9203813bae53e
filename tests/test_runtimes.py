"""ONNX and OpenVINO exports: the graph equals the Keras model (several backbones, options and sizes, batches), the
files carry our metadata, hostile files are refused before a runtime parses them, writes are atomic."""

import json
import os
import sys

import keras
import numpy as np
import onnx
import pytest

from keras_pspnet import runtimes
from keras_pspnet.data.classes import CLASS_SETS
from keras_pspnet.export import export_onnx, export_openvino
from keras_pspnet.model import build_pspnet, model_metadata
from keras_pspnet.onnx_graph import OPSET
from keras_pspnet.predictors import load_predictor
from keras_pspnet.protocol import TestProtocol
from tests.conftest import TINY_RESNET, randomize_batchnorm

PROTOCOL = TestProtocol("mmseg", (96, 64)).to_dict()
MODELS = {  # the layers and options of every backbone: strided and dilated convs, TensorFlow's "same" padding at
    # stride 2 (MobileNetV2), depthwise, ReLU6, corner alignment, uint8 input
    "resnet10": dict(backbone="resnet10", **TINY_RESNET),
    "mobilenet_v2_corners": dict(backbone="mobilenet_v2", alpha=0.35, head_channels=16, align_corners=True),
    "resnet18_os16_uint8": dict(backbone="resnet18", output_stride=16, input_dtype="uint8", bins=(1, 3, 4),
                                **TINY_RESNET),
}
SIZES = [(64, 64), (97, 75), (33, 130)]  # the pyramid's bins divide none of the odd feature sizes


@pytest.fixture(scope="module", params=sorted(MODELS))
def exported(request, tmp_path_factory):
    """A random model (random BN statistics, auxiliary head) and its .onnx and fp32 OpenVINO IR."""
    keras.utils.set_random_seed(0)
    model = build_pspnet(4, aux_head=True, metadata={"protocol": PROTOCOL}, **MODELS[request.param])
    randomize_batchnorm(model)
    folder = tmp_path_factory.mktemp(request.param)
    onnx_path = export_onnx(model, str(folder / "model.onnx"), CLASS_SETS["context"])
    ir_path = export_openvino(model, str(folder / "model.xml"), CLASS_SETS["context"])
    return model, onnx_path, ir_path


def test_onnx_is_valid_with_dynamic_sizes_and_metadata(exported):
    model, path, _ = exported
    onnx.checker.check_model(path, full_check=True)
    proto = onnx.load(path)
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", OPSET)]
    (image,), (logits,) = proto.graph.input, proto.graph.output
    assert [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim] == ["batch", "height", "width", 3]
    assert [d.dim_param or d.dim_value for d in logits.type.tensor_type.shape.dim] == ["batch", 4, "height", "width"]
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["keras_pspnet"])
    assert [c["name"] for c in meta["classes"]] == list(CLASS_SETS["context"].class_names)
    assert meta["protocol"] == PROTOCOL and meta["opset"] == OPSET and meta["outputs"]["logits"]["layout"] == "NCHW"
    assert not any(node.name.startswith("aux_") for node in proto.graph.node)  # the auxiliary head is dropped
    assert not any(node.op_type == "BatchNormalization" for node in proto.graph.node)  # folded into the convs


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_runtime_equals_keras_at_every_size(exported, runtime):
    model, onnx_path, ir_path = exported
    predictor = load_predictor(onnx_path if runtime == "onnx" else ir_path)
    assert predictor.num_classes == 4 and predictor.input_size is None
    assert predictor.metadata["protocol"] == model_metadata(model)["protocol"]
    rng = np.random.default_rng(0)
    for height, width in SIZES:
        images = rng.uniform(0, 255, (2, height, width, 3)).astype(np.float32)
        pixels = images.round() if model.input.dtype == "uint8" else images
        expected = np.asarray(model.predict_on_batch(pixels)["logits"])
        logits = predictor.predict_on_batch(images)
        assert logits.shape == expected.shape == (2, height, width, 4)
        assert np.abs(logits - expected).max() <= 1e-4 * np.abs(expected).max(), (height, width)
        assert np.mean(logits.argmax(-1) == expected.argmax(-1)) >= 0.9999


def test_fixed_input_size(tmp_path):
    model = build_pspnet(3, **MODELS["resnet10"])
    path = export_onnx(model, str(tmp_path / "fixed.onnx"), CLASS_SETS["context"], input_size=(40, 56))
    predictor = load_predictor(path)
    assert predictor.input_size == (40, 56)
    image = np.random.default_rng(0).uniform(0, 255, (1, 40, 56, 3)).astype(np.float32)
    np.testing.assert_allclose(predictor.predict_on_batch(image), model.predict_on_batch(image), rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match=r"fixed.onnx: takes 40x56 images, got 56x40 \(use --mode slide"):
        predictor.predict_on_batch(image.transpose(0, 2, 1, 3))
    with pytest.raises(FileExistsError, match="already exists"):
        export_onnx(model, path, CLASS_SETS["context"])
    with pytest.raises(ValueError, match="fixed.on: an ONNX model is an .onnx file"):
        export_onnx(model, path[:-2], CLASS_SETS["context"])
    two_outputs = build_pspnet(3, aux_head=True, **MODELS["resnet10"])
    from keras_pspnet.onnx_graph import onnx_model

    with pytest.raises(ValueError, match="1 inputs and 2 outputs; ONNX export takes one of each"):
        onnx_model(two_outputs, metadata={})


@pytest.mark.parametrize("exported", ["resnet18_os16_uint8"], indirect=True)
def test_fp16_weights_halve_the_ir(exported, tmp_path):
    model, _, fp32 = exported
    path = export_openvino(model, str(tmp_path / "fp16.xml"), CLASS_SETS["context"], quantize="fp16")
    ratio = os.path.getsize(tmp_path / "fp16.bin") / os.path.getsize(fp32[:-4] + ".bin")
    assert 0.45 < ratio < 0.55, ratio
    images = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype(np.float32)
    expected = np.asarray(model.predict_on_batch(images.round())["logits"])
    logits = load_predictor(path).predict_on_batch(images)
    assert np.abs(logits - expected).max() <= 1e-2 * np.abs(expected).max()
    assert np.mean(logits.argmax(-1) == expected.argmax(-1)) >= 0.99


def _rewritten(source: str, target: str, change) -> str:
    proto = onnx.load(source)
    change(proto)
    with open(target, "wb") as f:  # as bytes: onnx.save would write (or refuse) external data
        f.write(proto.SerializeToString())
    return target


@pytest.mark.parametrize("exported", ["resnet10"], indirect=True)  # the checks of files: one model is enough
def test_hostile_onnx_files_are_refused_before_the_runtime_reads_them(exported, tmp_path, monkeypatch):
    _, path, _ = exported
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x0a\xff\xff\xff\xff\x0f" + os.urandom(64))
    with pytest.raises(ValueError, match="garbage.onnx: not an ONNX model"):
        load_predictor(str(garbage))

    def foreign_op(proto):
        proto.graph.node[5].op_type, proto.graph.node[5].domain = "Loop", ""

    foreign = _rewritten(path, str(tmp_path / "foreign.onnx"), foreign_op)
    with pytest.raises(ValueError, match=r"foreign.onnx: holds operations keras-pspnet's exports do not \(Loop\); if "
                                         r"you trust its source, pass trust_model=True \(--trust-model\)"):
        load_predictor(foreign)
    with pytest.raises(ValueError, match="foreign.onnx: ONNX Runtime cannot load it"):  # trusted: ORT's own check
        load_predictor(foreign, trust_model=True)

    def external(proto):
        tensor = proto.graph.initializer[0]
        tensor.data_location = onnx.TensorProto.EXTERNAL
        tensor.external_data.add(key="location", value="../../etc/passwd")

    with pytest.raises(ValueError, match="external.onnx: keeps weights outside the file"):
        load_predictor(_rewritten(path, str(tmp_path / "external.onnx"), external))
    anonymous = _rewritten(path, str(tmp_path / "anonymous.onnx"), lambda proto: proto.ClearField("metadata_props"))
    with pytest.raises(ValueError, match="anonymous.onnx: not exported by keras-pspnet"):
        load_predictor(anonymous)

    def subgraph(proto):  # a node with a graph inside (as If and Loop have): refused even when trusted
        proto.graph.node[3].attribute.append(onnx.helper.make_attribute("body", onnx.GraphProto(name="hidden")))

    nested = _rewritten(path, str(tmp_path / "nested.onnx"), subgraph)
    with pytest.raises(ValueError, match="nested.onnx: holds subgraphs, functions or sparse tensors"):
        load_predictor(nested, trust_model=True)

    def deep_metadata(proto):
        proto.metadata_props[0].value = "[" * 100_000 + "]" * 100_000

    with pytest.raises(ValueError, match="deep.onnx: its keras_pspnet metadata is not JSON"):
        load_predictor(_rewritten(path, str(tmp_path / "deep.onnx"), deep_metadata))
    monkeypatch.setattr(runtimes, "MAX_ONNX_BYTES", 1000)
    with pytest.raises(ValueError, match=r"model.onnx: .* MiB, more than a ONNX model file may have"):
        load_predictor(path)


@pytest.mark.parametrize("exported", ["resnet10"], indirect=True)  # the checks of files: one model is enough
def test_hostile_openvino_files_are_refused(exported, tmp_path):
    _, _, path = exported
    text = open(path).read()
    weights = open(os.path.splitext(path)[0] + ".bin", "rb").read()

    def ir(name: str, xml: str, bin_bytes: bytes | None = weights) -> str:
        (tmp_path / f"{name}.xml").write_text(xml)
        if bin_bytes is not None:
            (tmp_path / f"{name}.bin").write_bytes(bin_bytes)
        return str(tmp_path / f"{name}.xml")

    with pytest.raises(ValueError, match="garbage.xml: not an OpenVINO IR .not XML"):
        load_predictor(ir("garbage", "<net><layer></net>"))
    with pytest.raises(ValueError, match=r"foreign.xml: holds layer types keras-pspnet's exports do not \(Loop\)"):
        load_predictor(ir("foreign", text.replace('type="MatMul"', 'type="Loop"', 1)))
    with pytest.raises(ValueError, match="short.xml: a weight lies beyond the end of .*short.bin"):
        load_predictor(ir("short", text, weights[: len(weights) // 2]))
    with pytest.raises(FileNotFoundError, match="nobin.bin"):
        load_predictor(ir("nobin", text, None))
    with pytest.raises(ValueError, match="trusted.xml: OpenVINO cannot load it"):  # trusted: OpenVINO's own check
        load_predictor(ir("trusted", text.replace('type="MatMul"', 'type="Loop"', 1)), trust_model=True)
    # namespaces and entities, which Python's XML parser and OpenVINO's read differently: refused outright
    hidden = text.replace("<layers>", '<layers xmlns="urn:x">', 1)
    with pytest.raises(ValueError, match="hidden.xml: XML with a DTD, entities or namespaces"):
        load_predictor(ir("hidden", hidden))
    with pytest.raises(ValueError, match="entity.xml: XML with a DTD, entities or namespaces"):
        load_predictor(ir("entity", '<?xml version="1.0"?><!DOCTYPE net [<!ENTITY a "b">]>' + text.split("?>", 1)[1]))
    with pytest.raises(ValueError, match="negative.xml: a weight's offset or size is not a number"):
        load_predictor(ir("negative", text.replace('offset="0"', 'offset="-8"', 1)))
    start = text.index("<keras_pspnet>")
    anonymous = text[:start] + text[text.index("</keras_pspnet>") + len("</keras_pspnet>"):]
    with pytest.raises(ValueError, match="anonymous.xml: not exported by keras-pspnet"):
        load_predictor(ir("anonymous", anonymous))


@pytest.mark.parametrize("exported", ["resnet10"], indirect=True)  # the checks of files: one model is enough
def test_openvino_write_is_atomic(exported, tmp_path, monkeypatch):
    """A failure while writing (a kill, a full disk) leaves the previous IR whole, and no partial files."""
    import openvino

    model = exported[0]
    path = export_openvino(model, str(tmp_path / "model.xml"), CLASS_SETS["context"])
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    with pytest.raises(FileExistsError, match="model.xml: already exists"):
        export_openvino(model, path, CLASS_SETS["context"])

    def interrupted(ir, partial, **kwargs):  # half of both files written
        open(partial, "w").write("<net")
        open(partial[:-4] + ".bin", "wb").write(b"\0" * 8)
        raise KeyboardInterrupt

    monkeypatch.setattr(openvino, "save_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_openvino(model, path, CLASS_SETS["context"], overwrite=True)
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before


@pytest.mark.parametrize("exported", ["resnet10"], indirect=True)  # the checks of files: one model is enough
def test_missing_runtimes_say_which_extra_installs_them(exported, monkeypatch):
    _, onnx_path, ir_path = exported
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails, as when the extra is not installed
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(ImportError, match=r"model.onnx: running it needs onnxruntime: pip install onnx onnxruntime "
                                          r"\(the \[onnx\] extra\)"):
        load_predictor(onnx_path)
    with pytest.raises(ImportError, match=r"model.xml: running it needs openvino: pip install onnx openvino nncf "
                                          r"\(the \[openvino\] extra\)"):
        load_predictor(ir_path)
    with pytest.raises(ImportError, match=r"openvino is not installed: pip install onnx openvino nncf \(the "
                                          r"\[openvino\] extra\)"):
        export_openvino(exported[0], ir_path + ".new.xml", CLASS_SETS["context"])

