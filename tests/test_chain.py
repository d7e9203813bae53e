"""The user's whole path with a published checkpoint: convert (or pretrained get) -> export SavedModel and TFLite
-> predict -> evaluate, through the command line, with the model keeping its auxiliary head until export."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from keras_pspnet import zoo
from keras_pspnet.cli import main
from keras_pspnet.data.classes import CLASS_SETS
from keras_pspnet.inference import predict_scores
from keras_pspnet.model import load_model, model_metadata
from keras_pspnet.protocol import TestProtocol
from tests.checkpoints import CONFIG_0X_R18, config_text, mmseg_checkpoint, serve, zoo_entry


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A folder dataset of three 60x90 photos with Cityscapes-sized labels (19 classes, some ignored)."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for folder in ("images", "masks"):
        os.makedirs(root / "val" / folder)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)).save(root / "val" / "images" / f"{i}.png")
        mask = rng.integers(0, 19, (60, 90), dtype=np.uint8)
        mask[:5] = 255
        Image.fromarray(mask).save(root / "val" / "masks" / f"{i}.png")
    return str(root)


@pytest.fixture(scope="module")
def source_model(tmp_path_factory, request):
    """The .keras file a user gets from `pspnet convert mmseg` or `pspnet pretrained get`, and the flags that
    make its test protocol fit 60x90 images (the stored config says Cityscapes' 2048x1024)."""
    root = tmp_path_factory.mktemp("source")
    out = str(root / "model.keras")
    if request.param == "convert":
        _, path = mmseg_checkpoint(root / "pspnet.pth", 19, depth=18, legacy=True,
                                   meta={"config": config_text(CONFIG_0X_R18)})
        assert main(["convert", "mmseg", path, "--out", out]) == 0
        return out, ["--resize", "96x64"]
    monkeypatch = pytest.MonkeyPatch()
    request.addfinalizer(monkeypatch.undo)
    _, entry = zoo_entry(root / "host", "test_pspnet_r18_chain", depth=18)  # protocol: mmseg, resize (96, 64)
    monkeypatch.setitem(zoo.ZOO, entry.name, entry)
    with serve(root / "host") as url:
        monkeypatch.setenv(zoo.MIRROR_ENV, url)
        assert main(["pretrained", "get", entry.name, "--out", out, "--cache-dir", str(root / "cache")]) == 0
    return out, []


@pytest.mark.parametrize("source_model", ["convert", "pretrained"], indirect=True)
def test_convert_export_predict_evaluate(source_model, dataset, tmp_path, capsys):
    model_path, flags = source_model
    model = load_model(model_path)
    assert isinstance(model.output, dict)  # the converted model keeps its auxiliary head (for fine-tuning)
    saved = str(tmp_path / "serving" / "pspnet")
    tflite = str(tmp_path / "pspnet.tflite")
    assert main(["export", model_path, "--out", saved, "--warmup-size", "32x48"]) == 0
    assert main(["export", model_path, "--format", "tflite", "--input-size", "64x64", "--out", tflite]) == 0
    runtimes = []
    if not flags:  # the published model also goes to ONNX and OpenVINO (the same export code as a converted one)
        onnx_model, ir = str(tmp_path / "pspnet.onnx"), str(tmp_path / "pspnet.xml")
        assert main(["export", model_path, "--format", "onnx", "--out", onnx_model]) == 0
        assert main(["export", model_path, "--format", "openvino", "--out", ir]) == 0
        runtimes = [("onnx", onnx_model, []), ("openvino", ir, ["--mode", "slide", "--crop", "64x64"])]
    image = os.path.join(dataset, "val", "images", "0.png")
    pixels = np.asarray(Image.open(image))
    protocol = TestProtocol("mmseg", (96, 64))
    expected = predict_scores(model, pixels, protocol).argmax(-1)  # the aux head is dropped here too
    slide = predict_scores(model, pixels, TestProtocol("mmseg", (96, 64), "slide", (64, 64))).argmax(-1)

    for name, path, extra in [("keras", model_path, []), ("savedmodel", saved, []),
                              ("tflite", tflite, ["--mode", "slide"]), *runtimes]:
        out = str(tmp_path / f"predicted_{name}")
        assert main(["predict", "--model", path, image, "--out", out, *flags, *extra]) == 0, capsys.readouterr().err
        label = np.asarray(Image.open(os.path.join(out, "0_label.png")))
        agreement = np.mean(label == (slide if extra else expected))
        assert agreement >= (0.99 if name == "tflite" else 0.999), (name, agreement)

        report = str(tmp_path / f"{name}.json")
        assert main(["evaluate", "--model", path, "--data", dataset, "--split", "val", "--num-classes", "19",
                     "--json", report, *flags, *extra]) == 0, capsys.readouterr().err
        printed = capsys.readouterr().out
        assert ("test protocol: mmseg: keep-ratio resize to 96x64, " + ("slide 64x64" if extra else "whole")) in printed
        results = json.load(open(report))
        assert results["images"] == 3 and results["protocol"]["style"] == "mmseg"
        if name == "keras":
            keras_miou = results["mIoU"]
        elif name in ("savedmodel", "onnx"):  # (the IR runs sliding windows: its labels are checked above)
            assert results["mIoU"] == pytest.approx(keras_miou, abs=1e-3)
    assert sorted(os.listdir(saved)) == ["1"]
    exported = json.load(open(os.path.join(saved, "1", "assets.extra", "pspnet.json")))
    assert exported["protocol"] == model_metadata(model)["protocol"] and exported["align_corners"] is False
    assert exported["protocol"]["resize"] == ([2048, 1024] if flags else [96, 64])  # the config's, or the zoo's
    assert [c["name"] for c in exported["classes"]] == list(CLASS_SETS["cityscapes"].class_names)
