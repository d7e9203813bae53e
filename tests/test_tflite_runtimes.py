"""The .tflite where Android runs it: MediaPipe Tasks' ImageSegmenter and the LiteRT interpreter, each layout and
quantization, on a trained model; its metadata as MediaPipe's schema reads it."""

import importlib.metadata
import json

import keras
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as tflite_schema
from ai_edge_litert.interpreter import Interpreter

from keras_pspnet.data.classes import CLASS_SETS
from keras_pspnet.data.context import context_scene
from keras_pspnet.export import MIN_CALIBRATION_IMAGES, TESTED_RUNTIMES, export_tflite
from keras_pspnet.predictors import TFLitePredictor
from keras_pspnet.tflite import JSON_FILE, LABELS_FILE, packed_json

SIZE = 96
# The share of pixels whose class must equal the Keras model's argmax, by quantization.
AGREEMENT = {"none": 0.999, "fp16": 0.99, "int8": 0.97}
# The largest difference of a confidence from the Keras model's softmax: about twice what was measured on this
# model (fp32 below 1e-6, fp16 0.0013, int8 0.049: int8 logits round before the softmax spreads them).
PROBABILITY_ERROR = {"none": 1e-5, "fp16": 0.003, "int8": 0.1}


@pytest.fixture(scope="module")
def trained(trained_context_model):
    scenes = [context_scene(i, SIZE, seed=3)["image"].numpy() for i in range(8)]
    model = keras.saving.load_model(trained_context_model)
    return model, scenes, [model.predict(s[None].astype(np.float32), verbose=0)[0] for s in scenes]


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """Both layouts at every quantization, exported once for the module."""
    model, _, _ = trained
    root, paths = tmp_path_factory.mktemp("tflite"), {}
    calibration = [context_scene(i, SIZE, seed=1)["image"].numpy() for i in range(MIN_CALIBRATION_IMAGES)]
    for outputs in ("scores", "class_map"):
        for quantize in ("none", "fp16", "int8"):
            paths[outputs, quantize] = export_tflite(
                model, str(root / f"{outputs}_{quantize}.tflite"), CLASS_SETS["context"], input_size=(SIZE, SIZE),
                quantize=quantize, outputs=outputs, calibration=calibration if quantize == "int8" else None)
    return paths


def softmax(logits):
    return keras.ops.convert_to_numpy(keras.ops.softmax(logits))


def mediapipe_segmenter(path):
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    return vision.ImageSegmenter.create_from_options(vision.ImageSegmenterOptions(
        base_options=BaseOptions(model_asset_path=path), output_category_mask=True, output_confidence_masks=True))


@pytest.mark.parametrize("quantize", ["none", "fp16", "int8"])
def test_mediapipe_image_segmenter_runs_the_default_layout(trained, exported, quantize):
    import mediapipe as mp

    _, scenes, logits = trained
    segmenter = mediapipe_segmenter(exported["scores", quantize])
    assert segmenter.labels == list(CLASS_SETS["context"].class_names)  # read from the file's metadata
    same = 0
    for scene, expected in zip(scenes, logits):
        result = segmenter.segment(mp.Image(image_format=mp.ImageFormat.SRGB, data=scene))
        category = result.category_mask.numpy_view().reshape(SIZE, SIZE)
        same += np.sum(category == expected.argmax(-1))
        confidences = np.stack([m.numpy_view().reshape(SIZE, SIZE) for m in result.confidence_masks], -1)
        np.testing.assert_allclose(confidences, softmax(expected), atol=PROBABILITY_ERROR[quantize])
    segmenter.close()
    assert same / (len(scenes) * SIZE * SIZE) >= AGREEMENT[quantize]


@pytest.mark.parametrize("outputs", ["scores", "class_map"])
@pytest.mark.parametrize("quantize", ["none", "fp16", "int8"])
def test_litert_runs_each_layout(trained, exported, outputs, quantize):
    _, scenes, logits = trained
    interpreter = Interpreter(model_path=exported[outputs, quantize])
    runner = interpreter.get_signature_runner("serving_default")
    (name, details), = runner.get_output_details().items()
    assert name == outputs and runner.get_input_details()["images"]["dtype"] == np.uint8
    expected_type = np.float32 if outputs == "scores" and quantize != "int8" else np.uint8
    assert details["dtype"] == expected_type
    assert list(details["shape"]) == ([1, SIZE, SIZE, 4] if outputs == "scores" else [1, SIZE, SIZE])
    same = 0
    for scene, expected in zip(scenes, logits):
        value = runner(images=scene[None])[name][0]
        labels = value.argmax(-1) if outputs == "scores" else value
        same += np.sum(labels == expected.argmax(-1))
    assert same / (len(scenes) * SIZE * SIZE) >= AGREEMENT[quantize]
    full = [t for t in interpreter.get_tensor_details() if len(t["shape"]) == 4 and tuple(t["shape"][1:3]) == (SIZE,
                                                                                                             SIZE)]
    # Memory: the class scores at full resolution exist once (the upsampling's output), the rest are the image's
    # 3 channels.
    assert [int(t["shape"][3]) for t in full if t["shape"][3] > 3] == [4], [(t["name"], t["shape"]) for t in full]
    if quantize == "int8":  # full integer end to end, as NNAPI, Edge TPU and Hexagon delegates need: no float tensor
        floats = [t["name"] for t in interpreter.get_tensor_details() if np.issubdtype(t["dtype"], np.floating)]
        assert floats == [] and runner.get_input_details()["images"]["quantization"] == (1.0, 0)  # pixels as they are
        assert details["quantization"] == ((1 / 16, 255) if outputs == "scores" else (0.0, 0))


def test_metadata_as_mediapipe_reads_it(exported):
    from mediapipe.tasks.metadata import image_segmenter_metadata_schema_py_generated as segmenter_schema
    from mediapipe.tasks.metadata import metadata_schema_py_generated as schema

    for outputs in ("scores", "class_map"):
        path = exported[outputs, "int8"]
        content = open(path, "rb").read()
        model = tflite_schema.Model.GetRootAsModel(content, 0)
        entries = {model.Metadata(i).Name(): model.Metadata(i).Buffer() for i in range(model.MetadataLength())}
        buffer = model.Buffers(entries[b"TFLITE_METADATA"]).DataAsNumpy().tobytes()
        assert schema.ModelMetadata.ModelMetadataBufferHasIdentifier(buffer, 0)
        meta = schema.ModelMetadataT.InitFromObj(schema.ModelMetadata.GetRootAsModelMetadata(buffer, 0))
        subgraph, = meta.subgraphMetadata
        image, = subgraph.inputTensorMetadata
        assert image.content.contentProperties.colorSpace == schema.ColorSpaceType.RGB
        assert list(image.stats.min) == [0.0] and list(image.stats.max) == [255.0]
        output, = subgraph.outputTensorMetadata
        assert output.name.decode() == outputs
        labels, = output.associatedFiles
        kind = schema.AssociatedFileType.TENSOR_AXIS_LABELS if outputs == "scores" else \
            schema.AssociatedFileType.TENSOR_VALUE_LABELS
        assert (labels.name.decode(), labels.type) == (LABELS_FILE, kind)
        if outputs == "scores":  # MediaPipe's confidence masks: the softmax of the scores
            options, = subgraph.customMetadata
            data = bytes(options.data)
            assert options.name == b"SEGMENTER_METADATA"
            assert segmenter_schema.ImageSegmenterOptions.GetRootAs(data, 0).Activation() == \
                segmenter_schema.Activation.SOFTMAX
        assert meta.minParserVersion == (b"1.5.0" if outputs == "scores" else b"1.0.0")
        import zipfile

        with zipfile.ZipFile(path) as archive:
            assert sorted(archive.namelist()) == sorted([LABELS_FILE, JSON_FILE])
            assert archive.read(LABELS_FILE).decode().split("\n")[:-1] == list(CLASS_SETS["context"].class_names)
        packed = packed_json(path)
        assert packed == json.load(open(path[: -len(".tflite")] + ".json"))  # the side JSON says the same
        assert packed["classes"][2] == {"index": 2, "name": "boat", "color": [230, 160, 40]}
        spec = packed["outputs"][outputs]  # what a client needs to read the output
        assert {key: value for key, value in spec.items() if key != "meaning"} == (
            {"dtype": "uint8", "shape": [1, SIZE, SIZE, 4], "quantization": {"scale": 1 / 16, "zero_point": 255}}
            if outputs == "scores" else {"dtype": "uint8", "shape": [1, SIZE, SIZE]})
        assert spec["meaning"].startswith("log-probabilities" if outputs == "scores" else "the class index")


def test_stated_runtimes_are_the_tested_ones(exported):
    """The JSON tells users which runtimes CI loaded the files in: the ones installed here."""
    assert packed_json(exported["scores", "none"])["tested_runtimes"] == TESTED_RUNTIMES
    assert {name: importlib.metadata.version(name) for name in TESTED_RUNTIMES} == TESTED_RUNTIMES


@pytest.mark.parametrize("outputs,quantize", [("scores", "none"), ("scores", "int8"), ("class_map", "int8")])
def test_predictor_reads_the_file_alone(trained, exported, tmp_path, outputs, quantize):
    """Evaluate and predict need nothing but the .tflite: its packed metadata replaces the side JSON, and uint8
    scores are dequantized to log-probabilities."""
    import shutil

    _, scenes, logits = trained
    path = str(tmp_path / "alone.tflite")
    shutil.copy(exported[outputs, quantize], path)
    predictor = TFLitePredictor(path)
    assert predictor.num_classes == 4 and predictor.input_size == (SIZE, SIZE)
    scores = predictor.predict_on_batch(np.stack(scenes[:2]).astype(np.float32))
    assert scores.shape == (2, SIZE, SIZE, 4)
    expected = np.stack(logits[:2])
    if outputs == "scores":  # log-probabilities: the logits up to a shift per pixel
        assert scores.max() <= 0 and (quantize == "none" or scores.min() >= -16)
        np.testing.assert_allclose(softmax(scores), softmax(expected), atol=PROBABILITY_ERROR[quantize])
    else:
        assert np.mean(scores.argmax(-1) == expected.argmax(-1)) >= AGREEMENT[quantize]


def test_a_tflite_of_an_earlier_layout_is_refused_with_a_hint(exported, tmp_path):
    """keras-pspnet 0.3 wrote two outputs, logits and class_map: evaluate and predict say to export again."""
    import shutil

    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, SIZE, SIZE, 3], tf.uint8, name="images")])
    def serve(images):
        logits = tf.tile(tf.cast(images[..., :1], tf.float32), [1, 1, 1, 4])
        return {"logits": logits, "class_map": tf.argmax(logits, axis=-1, output_type=tf.int32)}

    module = tf.Module()
    module.serve = serve
    tf.saved_model.save(module, str(tmp_path / "saved"), signatures={"serving_default": serve})
    (tmp_path / "old.tflite").write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "saved")).convert())
    shutil.copy(exported["scores", "none"][: -len(".tflite")] + ".json", tmp_path / "old.json")
    with pytest.raises(ValueError, match=r"old.tflite: has outputs \['class_map', 'logits'\], not one of scores or "
                       r"class_map \(a .tflite of keras-pspnet <= 0.3: export it again with `pspnet export`\)"):
        TFLitePredictor(str(tmp_path / "old.tflite"))
