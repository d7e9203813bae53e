import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from keras_pspnet.data.classes import CLASS_SETS
from keras_pspnet.data.context import context_scene
from keras_pspnet.export import export_saved_model, export_tflite
from tests.images import KINDS, sample_bytes, upright_pixels

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def pspnet(*args, env=None):
    return subprocess.run([sys.executable, "-m", "keras_pspnet.cli", *args], capture_output=True, text=True,
                          env=env or ENV, timeout=600)


@pytest.fixture(scope="module")
def setup(trained_context_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    images = []
    for i in range(3):
        path = str(root / f"scene{i}.png")
        Image.fromarray(context_scene(i, 96, seed=3)["image"].numpy()).save(path)
        images.append(path)
    bad = root / "notes.jpg"
    bad.write_text("not an image")
    model = keras.saving.load_model(trained_context_model)
    saved = export_saved_model(model, str(root / "models" / "pspnet"), CLASS_SETS["context"], warmup_sizes=[])
    tflite = export_tflite(model, str(root / "model.tflite"), CLASS_SETS["context"], input_size=(96, 96))
    return model, images, str(bad), saved, tflite, root


@pytest.mark.parametrize("kind", ["keras", "savedmodel", "tflite"])
def test_predict_writes_label_color_overlay(setup, trained_context_model, kind):
    model, images, _, saved, tflite, root = setup
    source = {"keras": trained_context_model, "savedmodel": os.path.dirname(saved), "tflite": tflite}[kind]
    out = str(root / f"out_{kind}")
    result = pspnet("predict", "--model", source, *images, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    for path in images:
        stem = os.path.splitext(os.path.basename(path))[0]
        label = Image.open(os.path.join(out, f"{stem}_label.png"))
        assert label.mode == "P"  # indices in the file, colours in viewers
        expected = model.predict(np.asarray(Image.open(path))[None].astype(np.float32), verbose=0)[0].argmax(-1)
        np.testing.assert_array_equal(np.asarray(label), expected)
        color = np.asarray(Image.open(os.path.join(out, f"{stem}_color.png")))
        np.testing.assert_array_equal(color, np.array(CLASS_SETS["context"].colors, np.uint8)[expected])
        assert os.path.exists(os.path.join(out, f"{stem}_overlay.png"))
    assert os.path.exists(os.path.join(out, "legend.png"))


def test_bad_image_is_reported_and_others_processed(setup):
    _, images, bad, _, _, root = setup
    out = str(root / "out_bad")
    result = pspnet("predict", "--model", setup[4], bad, images[0], "--out", out)
    assert result.returncode == 1
    assert f"pspnet: error: {bad}: not an image" in result.stderr and "Traceback" not in result.stderr
    assert os.path.exists(os.path.join(out, "scene0_label.png"))
    again = pspnet("predict", "--model", setup[4], images[0], "--out", out)  # outputs are never replaced silently
    assert again.returncode == 1 and "scene0_label.png: already exists" in again.stderr


def test_tflite_input_of_wrong_size(setup, tmp_path):
    path = str(tmp_path / "big.png")
    Image.fromarray(context_scene(0, 128)["image"].numpy()).save(path)
    result = pspnet("predict", "--model", setup[4], path, "--out", str(tmp_path / "out"))
    assert result.returncode == 1 and "takes 96x96 images, got 128x128" in result.stderr
    slide = pspnet("predict", "--model", setup[4], path, "--out", str(tmp_path / "out2"), "--mode", "slide")
    assert slide.returncode == 0, slide.stderr[-2000:]


def test_export_command_errors(setup, tmp_path, capsys):
    from keras_pspnet.cli import main

    keras_file = str(tmp_path / "m.keras")
    setup[0].save(keras_file)
    # every option given belongs to --format and, for calibration, to int8: refused before the model loads
    for extra, error in [
            (["--format", "tflite", "--input-size", "96x96", "--quantize", "int8"], "--quantize int8 needs "
             "--calibration: a dataset (context, a TFDS name, a folder dataset) or a folder of images"),
            (["--outputs", "class_map"], "--outputs: not an option of --format savedmodel"),
            (["--format", "onnx", "--quantize", "int8", "--calibration", "context"],
             "--calibration, --quantize: not an option of --format onnx"),
            (["--format", "openvino", "--warmup-size", "64x64", "--probabilities"],
             "--probabilities, --warmup-size: not an option of --format openvino"),
            (["--format", "openvino", "--quantize", "fp16", "--calibration-count", "16"],
             "--calibration-count: only for --quantize int8"),
            (["--format", "tflite", "--model-version", "3"], "--model-version: not an option of --format tflite")]:
        assert main(["export", "nowhere.keras", "--out", str(tmp_path / "out"), *extra]) == 2
        assert capsys.readouterr().err == f"pspnet: error: {error}\n"
    assert main(["export", keras_file, "--out", str(tmp_path / "m8.tflite"), "--format", "tflite", "--input-size",
                 "96x96", "--quantize", "int8", "--calibration", "context", "--calibration-count", "8"]) == 2
    assert capsys.readouterr().err == f"pspnet: error: {tmp_path / 'm8.tflite'}: int8 quantization needs at least " \
        "16 calibration images to set its activation ranges; the calibration data gave 8\n"
    assert main(["export", keras_file, "--out", str(tmp_path / "m8.tflite"), "--format", "tflite", "--input-size",
                 "96x96", "--quantize", "int8", "--calibration", "context", "--calibration-count", "16",
                 "--classes", "context"]) == 0
    # as right after `pip install -e ".[cpu]"`: no tensorflow-serving-api (a fresh process, where it is not imported)
    (tmp_path / "shim" / "tensorflow_serving").mkdir(parents=True)
    (tmp_path / "shim" / "tensorflow_serving" / "__init__.py").write_text("raise ImportError('not installed')")
    served = pspnet("export", keras_file, "--out", str(tmp_path / "serving" / "pspnet"), "--classes", "context",
                    "--warmup-size", "96x96,64x80", env={**ENV, "PYTHONPATH": str(tmp_path / "shim")})
    assert served.returncode == 0, served.stderr[-2000:]
    warmup = tmp_path / "serving" / "pspnet" / "1" / "assets.extra" / "tf_serving_warmup_requests"
    assert sum(1 for _ in __import__("tensorflow").data.TFRecordDataset(str(warmup))) == 6
    assert main(["export", keras_file, "--out", str(tmp_path / "serving" / "pspnet"), "--version", "1", "--classes",
                 "context"]) == 2
    assert "version 1 already exists" in capsys.readouterr().err


def test_evaluate_measures_what_is_shipped(setup, trained_context_model, tmp_path, capsys):
    """The same evaluation for the .keras model, its SavedModel, its fp32 and int8 .tflite, its ONNX model and its
    fp32 and int8 OpenVINO IR (made by the command line, calibrated on the dataset)."""
    import json

    from keras_pspnet.cli import main

    model, _, _, saved, tflite, _ = setup
    calibration = [context_scene(i, 96, seed=1)["image"].numpy() for i in range(16)]
    int8 = export_tflite(model, str(tmp_path / "int8.tflite"), CLASS_SETS["context"], input_size=(96, 96),
                         quantize="int8", calibration=calibration)
    classes = export_tflite(model, str(tmp_path / "classes.tflite"), CLASS_SETS["context"], input_size=(96, 96),
                            quantize="int8", outputs="class_map", calibration=calibration)
    onnx_model, ir, ir_int8 = (str(tmp_path / name) for name in ("model.onnx", "ir.xml", "ir_int8.xml"))
    assert main(["export", trained_context_model, "--format", "onnx", "--out", onnx_model]) == 0
    assert main(["export", trained_context_model, "--format", "openvino", "--out", ir]) == 0
    os.makedirs(tmp_path / "calibration")
    for i, image in enumerate(calibration):  # the scenes the .tflite int8 is calibrated on, as a folder of images
        Image.fromarray(image).save(tmp_path / "calibration" / f"{i}.png")
    assert main(["export", trained_context_model, "--format", "openvino", "--out", ir_int8, "--quantize", "int8",
                 "--calibration", str(tmp_path / "calibration"), "--input-size", "96x96"]) == 0
    assert f"-> {ir_int8} and {ir_int8[:-4]}.bin (" in capsys.readouterr().out
    miou = {}
    for name, path, extra in [
            ("keras", trained_context_model, []), ("savedmodel", saved, []), ("fp32", tflite, []), ("int8", int8, []),
            ("int8_class_map", classes, []), ("onnx", onnx_model, []), ("openvino", ir, []),
            ("openvino_int8", ir_int8, []),
            ("runtime_onnx", trained_context_model, ["--runtime", "onnx"]),
            ("runtime_openvino", trained_context_model, ["--runtime", "openvino"])]:
        report = str(tmp_path / f"scores_{name}.json")  # not int8.json: the .tflite's metadata is called that
        assert main(["evaluate", "--model", path, "--data", "context", "--context-size", "96", "--json", report,
                     *extra]) == 0
        miou[name] = json.load(open(report))["mIoU"]
    report = os.path.splitext(int8)[0] + ".json"  # the int8 model's metadata: never an output
    assert main(["evaluate", "--model", int8, "--data", "context", "--context-size", "96", "--json", report,
                 "--force"]) == 2
    assert "is the model's own file" in capsys.readouterr().err and json.load(open(report))["quantization"] == "int8"
    assert main(["evaluate", "--model", trained_context_model, "--data", "context", "--protocol", "semseg"]) == 2
    assert "4 classes is none of the reference datasets (ADE20K, Cityscapes, VOC); give --resize and --crop" in \
        capsys.readouterr().err
    assert miou["savedmodel"] == pytest.approx(miou["keras"], abs=1e-4)
    assert miou["fp32"] == pytest.approx(miou["keras"], abs=1e-3)
    assert abs(miou["keras"] - miou["int8"]) < 0.05 and miou["keras"] > 0.5  # int8 may land a hair above
    assert abs(miou["int8_class_map"] - miou["int8"]) < 0.01
    assert miou["onnx"] == pytest.approx(miou["keras"], abs=1e-4)
    assert miou["openvino"] == pytest.approx(miou["keras"], abs=1e-4)
    assert miou["runtime_onnx"] == miou["onnx"] and miou["runtime_openvino"] == miou["openvino"]
    assert main(["evaluate", "--model", onnx_model, "--runtime", "openvino", "--data", "context"]) == 2
    assert "model.onnx: --runtime openvino runs a published name or a .keras model" in capsys.readouterr().err
    assert abs(miou["keras"] - miou["openvino_int8"]) < 0.05
    images = setup[1]  # and `pspnet predict` with each: the Keras model's labels
    expected = [model.predict(np.asarray(Image.open(path))[None].astype(np.float32), verbose=0)[0].argmax(-1)
                for path in images]
    for name, path, least in [("onnx", onnx_model, 0.9999), ("openvino", ir, 0.9999), ("int8", ir_int8, 0.9)]:
        assert main(["predict", "--model", path, *images, "--out", str(tmp_path / name)]) == 0
        labels = [np.asarray(Image.open(tmp_path / name / f"scene{i}_label.png")) for i in range(len(images))]
        assert np.mean(np.equal(labels, expected)) >= least, name


class ChannelPredictor:
    """A stand-in model for fast tests: the logits of class c are the image's channel c (a 4th class never wins)."""

    mean, num_classes, input_size, align_corners, metadata = np.zeros(3, np.float32), 4, None, False, {}

    def predict_on_batch(self, images):
        return np.concatenate([images, np.full(images.shape[:-1] + (1,), -1.0, np.float32)], axis=-1)


def test_same_stems_in_different_folders_get_mirrored_outputs(tmp_path, capsys):
    from keras_pspnet.inference import predict_scores
    from keras_pspnet.predict import predict_files, read_image

    rng = np.random.default_rng(5)
    paths = []
    for folder in ("a", "b/c"):
        (tmp_path / "in" / folder).mkdir(parents=True)
        paths.append(str(tmp_path / "in" / folder / "0001.png"))
        Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(paths[-1])
    out = tmp_path / "out"
    predictor, info = ChannelPredictor(), CLASS_SETS["context"]
    assert predict_files(predictor, paths, str(out), info) == []
    labels = []
    for path, mirrored in zip(paths, ("a/0001", "b/c/0001")):
        for kind in ("label", "color", "overlay"):
            assert os.path.isfile(out / f"{mirrored}_{kind}.png")
        labels.append(np.asarray(Image.open(out / f"{mirrored}_label.png")))
        np.testing.assert_array_equal(labels[-1], predict_scores(predictor, read_image(path)).argmax(-1))
    assert not np.array_equal(*labels) and not os.path.exists(out / "0001_label.png")
    assert predict_files(predictor, paths, str(out), info) == paths  # an earlier run's outputs: refused, by name
    assert f"{out / 'a' / '0001_label.png'}: already exists" in capsys.readouterr().err
    assert predict_files(predictor, paths, str(out), info, force=True) == []
    assert predict_files(predictor, paths[:1], str(out), info) == []  # stems that do not collide: flat names
    assert os.path.isfile(out / "0001_label.png")


@pytest.mark.parametrize("kind", KINDS)
def test_read_image_gives_the_upright_pixels_viewers_show(tmp_path, kind):
    """predict reads with training's decode_rgb, which equals PIL with the EXIF orientation applied (JPEGs decoded
    with the accurate IDCT as PIL and OpenCV do) and keeps each 16-bit value's high byte."""
    from keras_pspnet.predict import read_image

    data = sample_bytes(kind, np.random.default_rng(0).integers(0, 256, (6, 10, 3), dtype=np.uint8))
    path = tmp_path / "image"
    path.write_bytes(data)
    expected = upright_pixels(data)
    assert expected.shape == ((10, 6, 3) if "exif" in kind else (6, 10, 3))
    np.testing.assert_array_equal(read_image(str(path)), expected)
    if kind.startswith("jpeg"):  # the references' cv2.imread(IMREAD_COLOR) applies EXIF orientation too
        cv2 = pytest.importorskip("cv2")
        np.testing.assert_array_equal(cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1], expected)


def test_read_image_errors_name_the_file(tmp_path):
    from keras_pspnet.predict import read_image

    with pytest.raises(FileNotFoundError, match=f"{tmp_path}/none.png: image not found"):
        read_image(str(tmp_path / "none.png"))
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match=f"{tmp_path}/notes.png: not an image"):
        read_image(str(tmp_path / "notes.png"))
    with pytest.raises(ValueError, match=f"{tmp_path}: a folder .expected a regular image file."):
        read_image(str(tmp_path))


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height RGB pixels, with a few bytes of data: a decompression bomb as a
    reader of headers sees it (a real one inflates to that size; this one would fail after allocating it)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(1000))) + \
        chunk(b"IEND", b"")


def test_hostile_images_are_refused_before_anything_is_decoded(tmp_path, capsys, monkeypatch):
    """A 20000x20000 PNG of a few kB (PIL's decompression-bomb limit, applied to TensorFlow's decoder), /dev/zero and
    a named pipe (reading either never ends) are refused by name, in one line each; the other images are done."""
    import threading

    from keras_pspnet import predict

    bomb, pipe, good = tmp_path / "bomb.png", tmp_path / "pipe.png", tmp_path / "good.png"
    bomb.write_bytes(png_declaring(20000, 20000))
    os.mkfifo(pipe)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(good)
    done = threading.Event()

    def unblock():  # were the pipe opened for reading, the test would hang: this makes it fail instead
        if not done.wait(20):
            with open(pipe, "wb"):
                pass

    threading.Thread(target=unblock, daemon=True).start()
    decoded = []
    real_decode = predict.decode_rgb
    monkeypatch.setattr(predict, "decode_rgb", lambda data: decoded.append(len(data.numpy())) or real_decode(data))
    paths = [str(bomb), "/dev/zero", str(pipe), str(good)]
    try:
        failed = predict.predict_files(ChannelPredictor(), paths, str(tmp_path / "out"), CLASS_SETS["context"])
    finally:
        done.set()
    assert failed == paths[:3] and os.path.exists(tmp_path / "out" / "good_label.png")
    assert decoded == [os.path.getsize(good)]  # the others never reached the decoder (1.2 GB for the bomb)
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # (not the progress bar)
    assert errors == [f"pspnet: error: {bomb}: 20000x20000 is 400.0 megapixels, more than the 89.5 allowed (a "
                      "decompression bomb? --max-pixels raises the limit)",
                      "pspnet: error: /dev/zero: a pipe, device or socket (expected a regular image file)",
                      f"pspnet: error: {pipe}: a pipe, device or socket (expected a regular image file)"]
    # allowed by --max-pixels, the same image is weighed by the memory its inference needs, still before decoding
    assert predict.predict_files(ChannelPredictor(), [str(bomb)], str(tmp_path / "out"), CLASS_SETS["context"],
                                 max_pixels=0, max_memory=4 * 2**30) == [str(bomb)]
    assert decoded == [os.path.getsize(good)]
    assert re.fullmatch(rf"pspnet: error: {bomb}: 20000x20000 under native: whole image needs about \d+\.\d GiB, more "
                        r"than the 4.0 GiB allowed \(--max-memory\)\n", capsys.readouterr().err)


def test_memory_is_checked_before_inference_with_the_machines_limit(monkeypatch):
    from keras_pspnet import inference
    from keras_pspnet.protocol import TestProtocol

    image = np.zeros((600, 800, 3), np.uint8)
    needed = inference.memory_needed(ChannelPredictor(), 600, 800, TestProtocol())
    assert 600 * 800 * 19 < needed < 2**30
    monkeypatch.setattr(inference, "available_memory", lambda: needed - 1)
    with pytest.raises(inference.MemoryLimitError, match=r"available on this machine \(--max-memory overrides\)"):
        inference.predict_labels(ChannelPredictor(), image, max_memory="available")  # `pspnet`'s default
    assert inference.predict_labels(ChannelPredictor(), image, max_memory=needed).shape == (600, 800)
    assert inference.predict_labels(ChannelPredictor(), image).shape == (600, 800)  # the library's: no check
    multi = TestProtocol("mmseg", (1600, 1200), scales=(1.0, 2.0), flip=True)  # maps held whole, per mirror
    assert inference.memory_needed(ChannelPredictor(), 600, 800, multi) > 5 * 1600 * 1200 * 4 * 4 * 2


def test_sizes_that_exhaust_memory_and_broken_models_are_one_line(setup, tmp_path, capsys):
    """--resize 0x0 and -5 are usage errors; --resize 30000x30000, or a protocol of that size in a .tflite's JSON,
    is refused before it runs; a .tflite with a 16 MiB JSON packed in, or a damaged one, is named."""
    import json
    import shutil
    import warnings
    import zipfile

    from keras_pspnet.cli import main
    from keras_pspnet.files import MAX_TEXT_BYTES

    _, images, _, _, tflite, _ = setup
    out = str(tmp_path / "out")
    for resize, message in [("0x0", "resize must be a long side or (long, short), integers in 1-32768, got (0, 0)"),
                            ("-5", "resize must be a long side or (long, short), integers in 1-32768, got -5")]:
        assert main(["predict", "--model", tflite, images[0], "--out", out, "--resize", resize]) == 2
        assert capsys.readouterr().err == f"pspnet: error: {message}\n"
    assert main(["predict", "--model", tflite, images[0], "--out", out, "--protocol", "mmseg", "--resize",
                 "30000x30000", "--mode", "slide", "--max-memory", "8"]) == 1
    assert "30000x30000 needs about" not in (err := capsys.readouterr().err) and err.count("\n") == 1
    assert f"{images[0]}: 96x96 under mmseg: keep-ratio resize to 30000x30000, slide 96x96 stride 64x64 needs " \
           "about" in err and "more than the 8.0 GiB allowed (--max-memory)" in err
    resized = str(tmp_path / "resized.tflite")
    shutil.copy(tflite, resized)
    meta = json.loads(zipfile.ZipFile(tflite).read("pspnet.json"))
    meta["protocol"] = {"style": "mmseg", "resize": [30000, 30000], "mode": "slide", "crop": [96, 96]}
    with warnings.catch_warnings(), zipfile.ZipFile(resized, "a") as archive:  # the last of a name is the one read
        warnings.simplefilter("ignore")
        archive.writestr("pspnet.json", json.dumps(meta))
    assert main(["predict", "--model", resized, images[0], "--out", out, "--max-memory", "8"]) == 1
    assert "keep-ratio resize to 30000x30000" in capsys.readouterr().err
    huge = str(tmp_path / "huge.tflite")
    shutil.copy(tflite, huge)
    with warnings.catch_warnings(), zipfile.ZipFile(huge, "a", zipfile.ZIP_DEFLATED) as archive:
        warnings.simplefilter("ignore")
        archive.writestr("pspnet.json", b" " * (MAX_TEXT_BYTES + 1))
    assert os.path.getsize(huge) < os.path.getsize(tflite) + 2**20
    assert main(["predict", "--model", huge, images[0], "--out", out]) == 2
    assert capsys.readouterr().err == f"pspnet: error: {huge}: pspnet.json inflates to 16,777,217 bytes, more " \
        "than 16,777,216\n"
    damaged = str(tmp_path / "damaged.tflite")
    with open(tflite, "rb") as f:
        content = bytearray(f.read())
    content[4:8] = b"XXXX"  # the flatbuffer's file identifier
    open(damaged, "wb").write(bytes(content))
    assert main(["predict", "--model", damaged, images[0], "--out", out]) == 2
    assert capsys.readouterr().err.startswith(f"pspnet: error: {damaged}: not a TFLite model, or a damaged one (")


def test_outputs_are_never_written_through_links(tmp_path, capsys):
    """A dangling link where an output goes would have been written through to a file anywhere; with --force a
    link to a user's file replaced that file. Links are refused, and nothing outside --out is touched."""
    from keras_pspnet.predict import predict_files

    image = tmp_path / "in" / "scene.png"
    image.parent.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    out, precious = tmp_path / "out", tmp_path / "precious.txt"
    out.mkdir()
    precious.write_text("the user's file")
    os.symlink(tmp_path / "elsewhere.png", out / "scene_label.png")  # dangling
    os.symlink(precious, out / "scene_color.png")
    for force in (False, True):
        assert predict_files(ChannelPredictor(), [str(image)], str(out), CLASS_SETS["context"], force=force) == [
            str(image)]
        assert f"{out / 'scene_label.png'}: is a symbolic link; outputs are not written through links" in \
            capsys.readouterr().err
    assert not os.path.lexists(tmp_path / "elsewhere.png") and precious.read_text() == "the user's file"
    os.remove(out / "scene_label.png")
    assert predict_files(ChannelPredictor(), [str(image)], str(out), CLASS_SETS["context"], force=True) == [str(image)]
    assert f"{out / 'scene_color.png'}: is a symbolic link" in capsys.readouterr().err
    assert precious.read_text() == "the user's file"
    # a folder of mirrored outputs that is a link out of --out
    twins = [tmp_path / "in" / folder / "0001.png" for folder in ("a", "b")]
    for twin in twins:
        twin.parent.mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(twin)
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", out / "a")
    failed = predict_files(ChannelPredictor(), [str(t) for t in twins], str(out), CLASS_SETS["context"])
    assert failed == [str(twins[0])] and os.listdir(tmp_path / "outside") == []
    assert f"{out / 'a' / '0001_label.png'}: its folder leads outside {out} through a symbolic link" in \
        capsys.readouterr().err


def test_foreign_saved_models_are_refused_before_they_are_loaded(setup, tmp_path, capsys):
    """Loading a SavedModel runs its operations: one `pspnet export` did not write is refused, read as data,
    unless --trust-model says its source is trusted."""
    import shutil

    import tensorflow as tf

    from keras_pspnet.cli import main
    from keras_pspnet.predictors import load_predictor

    _, images, _, saved, _, _ = setup
    marker = tmp_path / "written"

    class Foreign(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
        def logits(self, images):
            tf.io.write_file(str(marker), "ran")  # any operation of the file's choosing
            return {"logits": tf.tile(images[..., :1], [1, 1, 1, 4])}

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
        def pixels(self, images):
            return {"class_map": tf.zeros(tf.shape(images)[:3], tf.int32)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def encoded(self, image_bytes):
            return {"class_map": tf.zeros([tf.size(image_bytes), 1, 1], tf.int32)}

    module = Foreign()
    foreign = str(tmp_path / "foreign")
    tf.saved_model.save(module, foreign, signatures={"logits": module.logits, "serving_default": module.pixels,
                                                      "encoded": module.encoded})
    shutil.copytree(os.path.join(saved, "assets.extra"), os.path.join(foreign, "assets.extra"))  # our metadata
    assert main(["predict", "--model", foreign, images[0], "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"pspnet: error: {foreign}: runs operations keras-pspnet's exports do not, " \
        "or not there (WriteFile); a SavedModel is a program that runs its own operations when loaded; if you trust " \
        "its source, pass trust_model=True (--trust-model)\n"
    # the operations our exports do use, where a signature runs: SaveV2 writes any file its inputs name
    class Saving(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
        def logits(self, images):
            tf.raw_ops.SaveV2(prefix=str(marker), tensor_names=["x"], shape_and_slices=[""], tensors=[images])
            return {"logits": tf.tile(images[..., :1], [1, 1, 1, 4])}

    saving = Saving()
    tf.saved_model.save(saving, foreign + "3", signatures={"logits": saving.logits, "serving_default": module.pixels,
                                                           "encoded": module.encoded})
    shutil.copytree(os.path.join(saved, "assets.extra"), os.path.join(foreign + "3", "assets.extra"))
    with pytest.raises(ValueError, match=r"runs operations keras-pspnet's exports do not, or not there \(SaveV2\)"):
        load_predictor(foreign + "3")
    tf.saved_model.save(module, foreign + "2", signatures={"logits": module.logits})
    shutil.copytree(os.path.join(saved, "assets.extra"), os.path.join(foreign + "2", "assets.extra"))
    with pytest.raises(ValueError, match="not exported by keras-pspnet .no serving_default, encoded signature."):
        load_predictor(foreign + "2")
    assert not list(tmp_path.glob("written*"))
    trusted = load_predictor(foreign, trust_model=True)  # the user's explicit word
    assert trusted.predict_on_batch(np.ones((1, 4, 4, 3), np.float32)).shape == (1, 4, 4, 4)
    assert load_predictor(saved).num_classes == 4  # ours pass the check
