import json
import os

from PIL import Image

from keras_pspnet.demo import run_demo

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "training", "configs")


def test_demo_writes_everything_it_announces(tmp_path, capsys):
    out = str(tmp_path / "quickstart")
    summary = run_demo(out, CONFIGS, ["steps=2", "context_size=48", "crop_size=[48, 48]", "context_scenes=8"],
                       test_scenes=6)
    printed = capsys.readouterr().out
    for name in ("water", "road", "boat", "car", "mIoU"):
        assert name in summary["table"] and name in printed
    assert summary["saved_model"] == os.path.join(out, "models", "pspnet", "1")
    assert os.path.exists(os.path.join(summary["saved_model"], "saved_model.pb"))
    assert os.path.exists(summary["tflite"]) and os.path.exists(summary["tflite"].replace(".tflite", ".json"))
    grid = Image.open(summary["picture"])
    assert grid.width > 4 * 48 and grid.height > 4 * 48
    assert json.load(open(os.path.join(out, "summary.json")))["picture"] == summary["picture"]
    fcn, psp = summary["fcn"]["mIoU"], summary["pspnet"]["mIoU"]
    assert abs(summary["gain_miou_points"] - 100 * (psp - fcn)) < 1e-9
    again = run_demo(out, CONFIGS, ["steps=2", "context_size=48", "crop_size=[48, 48]", "context_scenes=8"],
                     test_scenes=6)  # finished runs are reused; exports get a new version
    assert again["saved_model"].endswith(os.path.join("pspnet", "2")) and again["fcn"] == summary["fcn"]
