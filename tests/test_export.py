import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from keras_pspnet import build_pspnet
from keras_pspnet.data.classes import CLASS_SETS
from keras_pspnet.data.context import context_scene
from keras_pspnet.export import MIN_CALIBRATION_IMAGES, deployable, export_saved_model, export_tflite
from tests.conftest import randomize_batchnorm


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = build_pspnet(4, "mobilenet_v2", alpha=0.35, head_channels=8)
    randomize_batchnorm(model)
    base = str(tmp_path_factory.mktemp("models") / "pspnet")
    path = export_saved_model(model, base, CLASS_SETS["context"], probabilities=True,
                              warmup_sizes=[(32, 48), (40, 24)])
    return model, base, path


@pytest.mark.parametrize("size", [(64, 64), (97, 129), (50, 70)])
def test_saved_model_equals_predict(exported, rng, size):
    model, _, path = exported
    loaded = tf.saved_model.load(path)
    pixels = rng.integers(0, 256, (2, *size, 3), dtype=np.uint8)
    logits = model.predict(pixels.astype(np.float32), verbose=0)
    served = loaded.signatures["serving_default"](images=tf.constant(pixels))
    np.testing.assert_array_equal(served["class_map"].numpy(), logits.argmax(-1))
    np.testing.assert_allclose(served["probabilities"].numpy(), tf.nn.softmax(logits).numpy(), atol=1e-6)
    raw = loaded.signatures["logits"](images=tf.constant(pixels, tf.float32))["logits"].numpy()
    np.testing.assert_allclose(raw, logits, atol=1e-5, rtol=1e-5)
    encoded = [tf.io.encode_png(p).numpy() for p in pixels]
    from_bytes = loaded.signatures["encoded"](image_bytes=tf.constant(encoded))["class_map"].numpy()
    np.testing.assert_array_equal(from_bytes, logits.argmax(-1))


def test_openvino_converts_the_saved_model_as_model_server_loads_it(exported, rng):
    """OpenVINO Model Server serves a TF Serving version folder by converting the SavedModel on load
    (`openvino.convert_model`): its serving_default must give TensorFlow's class map."""
    import openvino

    _, _, path = exported
    converted = openvino.Core().compile_model(openvino.convert_model(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    pixels = rng.integers(0, 256, (1, 75, 97, 3), dtype=np.uint8)
    expected = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(pixels))["class_map"]
    assert np.mean(converted(pixels)["class_map"] == expected.numpy()) >= 0.9999


def test_layout_versions_warmup_and_metadata(exported):
    model, base, path = exported
    assert path == os.path.join(base, "1") and sorted(os.listdir(base)) == ["1"]  # no temporary left behind
    second = export_saved_model(model, base, CLASS_SETS["context"], warmup_sizes=[])
    assert second == os.path.join(base, "2")
    with pytest.raises(FileExistsError, match="version 1 already exists"):
        export_saved_model(model, base, CLASS_SETS["context"], version=1)
    from tensorflow_serving.apis import prediction_log_pb2  # the real protos parse what export writes without them

    raw = [r.numpy() for r in tf.data.TFRecordDataset(os.path.join(path, "assets.extra", "tf_serving_warmup_requests"))]
    records = [prediction_log_pb2.PredictionLog.FromString(r) for r in raw]
    assert [r.SerializeToString() for r in records] == raw  # nothing unknown or lost
    assert [r.predict_log.request.model_spec.signature_name for r in records] == \
        ["serving_default", "encoded", "encoded"] * 2  # pixels, PNG and JPEG bytes
    assert [tf.make_ndarray(r.predict_log.request.inputs["image_bytes"])[0][:2] for r in records[1:3]] == \
        [b"\x89P", b"\xff\xd8"]
    loaded = tf.saved_model.load(path)
    for record, size in zip(records, [(32, 48)] * 3 + [(40, 24)] * 3):
        request = record.predict_log.request  # run as TF Serving runs warmup requests at load
        inputs = {key: tf.constant(tf.make_ndarray(value)) for key, value in request.inputs.items()}
        answer = loaded.signatures[request.model_spec.signature_name](**inputs)["class_map"]
        assert answer.shape == (1, *size)
    meta = json.load(open(os.path.join(path, "assets.extra", "pspnet.json")))
    assert [c["name"] for c in meta["classes"]] == ["water", "road", "boat", "car"]
    assert meta["normalization"]["mean"] == pytest.approx([123.675, 116.28, 103.53])


def test_saved_model_cli_shows_the_signatures(exported):
    _, _, path = exported
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run([cli, "show", "--dir", path, "--all"], capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    for text in ("signature_def['serving_default']", "signature_def['encoded']", "signature_def['logits']",
                 "inputs['images'] tensor_info:", "dtype: DT_UINT8", "inputs['image_bytes']", "outputs['class_map']"):
        assert text in shown.stdout


def tflite_run(path, image):
    runner = Interpreter(model_path=path).get_signature_runner("serving_default")
    return runner(images=image[None])


@pytest.fixture(scope="module")
def trained(trained_context_model):
    return keras.saving.load_model(trained_context_model)


def test_tflite_errors(trained, tmp_path):
    model = trained
    with pytest.raises(ValueError, match="int8 quantization needs calibration images"):
        export_tflite(model, str(tmp_path / "m.tflite"), CLASS_SETS["context"], input_size=(96, 96), quantize="int8")
    few = [context_scene(i, 96)["image"].numpy() for i in range(MIN_CALIBRATION_IMAGES - 1)]
    with pytest.raises(ValueError, match=f"m.tflite: int8 quantization needs at least {MIN_CALIBRATION_IMAGES} "
                       f"calibration images to set its activation ranges; the calibration data gave "
                       f"{MIN_CALIBRATION_IMAGES - 1}"):
        export_tflite(model, str(tmp_path / "m.tflite"), CLASS_SETS["context"], input_size=(96, 96), quantize="int8",
                      calibration=few)
    wide = build_pspnet(257, "resnet18", base_width=4, head_channels=8)
    with pytest.raises(ValueError, match="m.tflite: a class_map output holds class indices as uint8 .at most 256 "
                       "classes.; this model has 257: use the scores output"):
        export_tflite(wide, str(tmp_path / "m.tflite"), CLASS_SETS["ade20k"], input_size=(32, 32),
                      outputs="class_map")
    with pytest.raises(ValueError, match="m.tflite: 150 class names for a model of 4 classes"):
        export_tflite(model, str(tmp_path / "m.tflite"), CLASS_SETS["ade20k"], input_size=(96, 96))
    pixels = keras.Input((32, 32, 3))
    foreign = keras.Model(pixels, keras.layers.Conv2D(4, 1)(pixels))
    with pytest.raises(ValueError, match="m.tflite: the scores output needs a keras-pspnet model"):
        export_tflite(foreign, str(tmp_path / "m.tflite"), CLASS_SETS["context"], input_size=(32, 32))
    assert not (tmp_path / "m.tflite").exists()
    (tmp_path / "m.tflite").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="m.tflite: already exists"):
        export_tflite(model, str(tmp_path / "m.tflite"), CLASS_SETS["context"], input_size=(96, 96))
    (tmp_path / "n.json").write_text("{}")  # the metadata a .tflite would be written beside is never replaced
    with pytest.raises(FileExistsError, match="n.json: already exists"):
        export_tflite(model, str(tmp_path / "n.tflite"), CLASS_SETS["context"], input_size=(96, 96))


def test_saved_model_stores_each_weight_once(exported, tmp_path):
    # keras-team/keras#23553: ExportArchive.track(model) would store every variable twice.
    model, _, _ = exported
    path = export_saved_model(model, str(tmp_path / "once"), CLASS_SETS["context"], warmup_sizes=[])
    variables = os.path.join(path, "variables")
    stored = sum(os.path.getsize(os.path.join(variables, f)) for f in os.listdir(variables))
    weights = sum(w.numpy().nbytes for w in deployable(model).weights)  # what is exported: BN folded
    assert weights <= stored < 1.1 * weights


def test_corner_aligned_models_export(tmp_path, rng):
    """align_corners=True (the authors' and the 769x769 models) survives SavedModel and TFLite conversion."""
    model = build_pspnet(4, "resnet18", base_width=8, head_channels=16, style="pytorch", align_corners=True)
    randomize_batchnorm(model)
    pixels = rng.integers(0, 256, (1, 65, 97, 3), dtype=np.uint8)
    logits = model.predict(pixels.astype(np.float32), verbose=0)
    saved = export_saved_model(model, str(tmp_path / "sm"), CLASS_SETS["context"], warmup_sizes=[])
    served = tf.saved_model.load(saved).signatures["logits"](images=tf.constant(pixels, tf.float32))["logits"]
    np.testing.assert_allclose(served.numpy(), logits, atol=1e-5, rtol=1e-5)
    path = export_tflite(model, str(tmp_path / "m.tflite"), CLASS_SETS["context"], input_size=(65, 97))
    scores = tflite_run(path, pixels[0])["scores"]  # log-softmax upsampled as the model upsamples its logits
    np.testing.assert_allclose(tf.nn.softmax(scores), tf.nn.softmax(logits), atol=1e-5)
    assert json.load(open(str(tmp_path / "m.json")))["align_corners"] is True


def test_uint8_models_round_and_saturate_float_pixels(tmp_path, rng):
    """A model built with input_dtype="uint8" fed float pixels (the predictors' and the logits signature's type):
    rounded and saturated, as the pixel it stands for, never truncated (123.675 -> 123) or wrapped (300 -> 44)."""
    from keras_pspnet.predictors import KerasPredictor, SavedModelPredictor

    model = build_pspnet(3, "resnet18", base_width=4, head_channels=8, input_dtype="uint8")
    randomize_batchnorm(model)
    pixels = rng.uniform(-30, 290, (1, 33, 41, 3)).astype(np.float32)
    pixels[0, 0, :3] = [[123.675, 116.28, 103.53], [0.5, 1.5, 254.5], [255.4, -0.4, 300.0]]
    expected = model.predict(np.clip(np.round(pixels), 0, 255).astype(np.uint8), verbose=0)
    np.testing.assert_allclose(KerasPredictor(model).predict_on_batch(pixels), expected, rtol=1e-6, atol=1e-6)
    path = export_saved_model(model, str(tmp_path / "sm"), _classes(3), warmup_sizes=[])
    np.testing.assert_allclose(SavedModelPredictor(path).predict_on_batch(pixels), expected, rtol=1e-5, atol=1e-5)


def _classes(count):
    from keras_pspnet.data.info import DatasetInfo, default_colors

    return DatasetInfo("t", tuple(f"c{i}" for i in range(count)), default_colors(count))


def test_calibration_windows_keep_the_aspect_ratio_and_pad_with_the_mean():
    from keras_pspnet.export import calibration_window
    from keras_pspnet.protocol import TestProtocol
    from tests.protocol_reference import _resize  # PyTorch's bilinear resize

    mean = np.array([120.0, 110.0, 100.0])
    image = np.random.default_rng(0).integers(0, 256, (40, 100, 3)).astype(np.uint8)
    native = calibration_window(image, (32, 32), TestProtocol(), mean)
    np.testing.assert_array_equal(native, image[4:36, 34:66])  # the centre, not the image squashed
    resized = calibration_window(image, (32, 64), TestProtocol(resize=50), mean)  # long side 50: 20x50
    expected = np.empty((32, 64, 3), np.float32)
    expected[...] = mean
    expected[6:26, 7:57] = _resize(image, 20, 50)
    np.testing.assert_allclose(resized, expected.round(), atol=1)  # float32 here, float64 there: x.5 may round apart


def test_calibration_images_are_drawn_at_random_over_the_split(tmp_path):
    from PIL import Image

    from keras_pspnet.export import calibration_images

    for i in range(20):  # a folder of images whose first pixel tells which file it is
        Image.fromarray(np.full((4, 6, 3), i, np.uint8)).save(tmp_path / f"{i:02d}.png")
    drawn = [int(image[0, 0, 0]) for image in calibration_images(str(tmp_path), count=5)]
    assert len(set(drawn)) == 5 and drawn != list(range(5))
    assert drawn == [int(image[0, 0, 0]) for image in calibration_images(str(tmp_path), count=5)]  # seeded
    assert len(list(calibration_images(str(tmp_path), count=50))) == 20
    from tests.test_data import write_folder

    write_folder(tmp_path / "dataset", count=3, classes=["a", "b", "c"])  # a split smaller than the count
    images = list(calibration_images(str(tmp_path / "dataset"), "train", count=10))
    assert len(images) == 3 and len({image.tobytes() for image in images}) == 3
    import tensorflow_datasets as tfds

    examples = np.arange(12, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 5, 3), np.uint8)

    def as_dataset(self, split, **kwargs):  # TFDS with split slicing ("train[3:4]"), 12 examples
        first, last = (int(v) for v in split[split.index("[") + 1 : -1].split(":")) if "[" in split else (0, 12)
        return tf.data.Dataset.from_tensor_slices({"image": examples[first:last], "annotation": examples[first:last]})

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        drawn = [int(image[0, 0, 0]) for image in calibration_images("scene_parse150", "train", count=5)]
        assert len(set(drawn)) == 5 and drawn != list(range(5))
        assert sorted(int(image[0, 0, 0]) for image in calibration_images("scene_parse150", count=50)) == \
            list(range(12))
    scenes = list(calibration_images("context", "train", count=4))
    from keras_pspnet.data.context import context_scene

    first = [context_scene(i, 288)["image"].numpy() for i in range(4)]
    assert all(image.shape == (288, 288, 3) for image in scenes)
    assert not all(np.array_equal(a, b) for a, b in zip(scenes, first))
