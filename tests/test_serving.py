"""The client's request bodies, fed to the exported signatures, give `pspnet predict`'s answer."""

import base64
import importlib.util
import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_pspnet.data.classes import CLASS_SETS
from keras_pspnet.data.context import context_scene
from keras_pspnet.predict import predict_files
from keras_pspnet.predictors import KerasPredictor
from tests.images import KINDS, sample_bytes, upright_pixels

spec = importlib.util.spec_from_file_location("client", os.path.join(os.path.dirname(__file__), "..", "serving",
                                                                       "client.py"))
client = importlib.util.module_from_spec(spec)
spec.loader.exec_module(client)


def test_documented_bodies():
    pixels = np.arange(2 * 1 * 3, dtype=np.uint8).reshape(2, 1, 3)
    assert client.rest_body(pixels=[pixels]) == {"signature_name": "serving_default",
                                                 "instances": [[[[0, 1, 2]], [[3, 4, 5]]]]}
    assert client.rest_body(encoded=[b"\x89PNG"]) == {"signature_name": "encoded", "instances": [{"b64": "iVBORw=="}]}
    assert client.rest_body(encoded=[b"ab"], columnar=True) == {"signature_name": "encoded",
                                                                "inputs": [{"b64": "YWI="}]}
    with pytest.raises(ValueError, match="either pixels or encoded"):
        client.rest_body()


@pytest.fixture(scope="module")
def served(trained_context_model, tmp_path_factory):
    import keras

    from keras_pspnet.export import export_saved_model

    root = tmp_path_factory.mktemp("serving")
    model = keras.saving.load_model(trained_context_model)
    path = export_saved_model(model, str(root / "pspnet"), CLASS_SETS["context"], warmup_sizes=[])
    image = context_scene(5, 96, seed=3)["image"].numpy()
    image_path = str(root / "scene.png")
    Image.fromarray(image).save(image_path)
    predict_files(KerasPredictor(model), [image_path], str(root / "out"), CLASS_SETS["context"])
    expected = np.asarray(Image.open(root / "out" / "scene_label.png"))
    return tf.saved_model.load(path), image, image_path, expected


def serve_rest(loaded, body):
    """What TF Serving does with a REST body: JSON -> tensors ({"b64"} -> bytes) -> the signature."""
    body = json.loads(json.dumps(body))  # exactly what goes over the wire
    values = body.get("instances", body.get("inputs"))
    if body["signature_name"] == "encoded":
        tensor = tf.constant([base64.b64decode(v["b64"]) for v in values])
        return loaded.signatures["encoded"](image_bytes=tensor)["class_map"].numpy()
    return loaded.signatures["serving_default"](images=tf.constant(np.array(values, np.uint8)))["class_map"].numpy()


def test_rest_payloads_give_predict_answer(served):
    loaded, image, image_path, expected = served
    with open(image_path, "rb") as f:
        encoded = f.read()
    jpeg = io.BytesIO()
    for body in [client.rest_body(pixels=[image]), client.rest_body(encoded=[encoded]),
                 client.rest_body(encoded=[encoded], columnar=True)]:
        np.testing.assert_array_equal(serve_rest(loaded, body)[0], expected)
    Image.fromarray(image).save(jpeg, format="JPEG", quality=95)  # lossy, so only the shape must hold
    assert serve_rest(loaded, client.rest_body(encoded=[jpeg.getvalue()])).shape == (1, 96, 96)


def test_grpc_requests_give_predict_answer(served):
    loaded, image, image_path, expected = served
    with open(image_path, "rb") as f:
        encoded = f.read()
    for request in [client.grpc_request(pixels=[image]), client.grpc_request(encoded=[encoded])]:
        signature = loaded.signatures[request.model_spec.signature_name]
        inputs = {key: tf.constant(tf.make_ndarray(value)) for key, value in request.inputs.items()}
        np.testing.assert_array_equal(signature(**inputs)["class_map"].numpy()[0], expected)
    assert request.model_spec.name == "pspnet"


@pytest.fixture(scope="module")
def every_format(trained_context_model, tmp_path_factory):
    """One file of each kind of tests/images.py (from a 96x72 context scene) and `pspnet predict`'s label maps."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("formats")
    scene = context_scene(7, 96, seed=3)["image"].numpy()[:, 12:84]
    paths = []
    for kind in KINDS:
        suffix = "jpg" if kind.startswith("jpeg") else kind if kind in ("gif", "bmp", "webp") else "png"
        paths.append(root / f"{kind}.{suffix}")
        paths[-1].write_bytes(sample_bytes(kind, scene))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-m", "keras_pspnet.cli", "predict", "--model", trained_context_model,
                           "--out", str(root / "out"), *map(str, paths)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    return {path.stem: (path, np.asarray(Image.open(root / "out" / f"{path.stem}_label.png"))) for path in paths}


@pytest.mark.parametrize("kind", KINDS)
def test_predict_equals_the_encoded_signature_on_the_same_bytes(served, every_format, kind):
    loaded = served[0]
    path, labels = every_format[kind]
    answer = loaded.signatures["encoded"](image_bytes=tf.constant([path.read_bytes()]))["class_map"].numpy()[0]
    assert answer.shape == ((72, 96) if "exif" in kind else (96, 72))  # EXIF 6 and 8: upright is landscape
    assert len(np.unique(answer)) > 1
    np.testing.assert_array_equal(labels, answer)
    pixels = client.read_pixels(str(path))  # what the client sends as pixels: the same upright image
    np.testing.assert_array_equal(pixels, upright_pixels(path.read_bytes()))
    served_pixels = loaded.signatures["serving_default"](images=tf.constant(pixels[None]))["class_map"].numpy()[0]
    np.testing.assert_array_equal(served_pixels, answer)


def test_encoded_images_of_different_sizes_in_one_batch_are_refused_clearly(served):
    loaded = served[0]
    small, large = (tf.io.encode_png(np.zeros(size, np.uint8)).numpy() for size in [(8, 8, 3), (8, 16, 3)])
    assert loaded.signatures["encoded"](image_bytes=tf.constant([small, small]))["class_map"].shape == (2, 8, 8)
    with pytest.raises(tf.errors.InvalidArgumentError, match="encoded: the images of one batch must share a size"):
        loaded.signatures["encoded"](image_bytes=tf.constant([small, large]))
