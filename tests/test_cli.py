import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from keras_pspnet.cli import main

ENV = {key: value for key, value in os.environ.items() if not key.startswith(("TF_", "KERAS_BACKEND"))}
ENV["CUDA_VISIBLE_DEVICES"] = ""


def pspnet(*args):
    """The command as a user runs it: a fresh process, no TensorFlow log settings in the environment."""
    return subprocess.run([sys.executable, "-m", "keras_pspnet.cli", *args], capture_output=True, text=True,
                          env=ENV, timeout=600)


def test_presets_command_lists_presets(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "pspnet_resnet50_v1c" in out and "'contract_dilation': True" in out


@pytest.mark.parametrize("args", [["--help"], ["presets"], ["predict", "--help"]])
def test_help_and_presets_never_load_tensorflow(args):
    code = (f"import sys\nfrom keras_pspnet.cli import main\ntry:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('tensorflow', 'keras', 'jax', 'torch') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_import_keras_pspnet_registers_its_classes_with_keras_in_either_order():
    # TensorFlow's __init__ asks importlib.util.find_spec("keras") before it imports Keras
    for first, second in [("keras_pspnet", "keras"), ("keras", "keras_pspnet"), ("keras_pspnet, tensorflow", "keras")]:
        code = (f"import {first}, {second}\n"
                "print(keras.saving.get_registered_object('keras_pspnet>ClassLogits').__name__)")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
        assert result.stdout.split() == ["ClassLogits"], result.stderr[-2000:]


def test_commands_are_quiet_unless_verbose(tmp_path):
    """No TensorFlow, absl or oneDNN lines: stderr holds only what the command says."""
    import keras

    from keras_pspnet import build_pspnet

    keras.utils.set_random_seed(0)  # whatever ran before: a random tiny model can quantise to ranges XNNPACK refuses
    build_pspnet(4, "resnet18", base_width=4, head_channels=8).save(tmp_path / "m.keras")
    quiet = pspnet("export", str(tmp_path / "m.keras"), "--out", str(tmp_path / "serving"), "--warmup-size", "32x32")
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    assert quiet.stdout.strip().splitlines() == [f"{tmp_path / 'm.keras'} -> {tmp_path / 'serving' / '1'} "
                                                 "(signatures serving_default, encoded, logits)"]
    (tmp_path / "photos").mkdir()
    for i in range(16):  # noise: calibration ranges that are not degenerate
        pixels = np.random.default_rng(i).integers(0, 256, (40, 50, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "photos" / f"{i}.png")
    int8 = pspnet("export", str(tmp_path / "m.keras"), "--format", "tflite", "--input-size", "32x32", "--quantize",
                  "int8", "--calibration", str(tmp_path / "photos"), "--out", str(tmp_path / "m.tflite"))
    assert int8.returncode == 0 and int8.stderr == "", int8.stderr  # the quantizer's C++ print is hidden too
    assert int8.stdout.count("\n") == 1 and int8.stdout.startswith(f"{tmp_path / 'm.keras'} -> "), int8.stdout
    predicted = pspnet("predict", "--model", str(tmp_path / "m.tflite"), str(tmp_path / "photos" / "0.png"),
                       "--mode", "slide", "--out", str(tmp_path / "predictions"))
    assert predicted.returncode == 0 and predicted.stderr == "", predicted.stderr  # nor LiteRT's INFO line
    # a JPEG with stray bytes before its end marker: decoded, with libjpeg's "Corrupt JPEG data" warning on stderr
    import io

    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(jpeg, "JPEG")
    (tmp_path / "stray.jpg").write_bytes(jpeg.getvalue()[:-2] + b"\x00" * 7 + b"\xff\xd9")
    keras_model = pspnet("predict", "--model", str(tmp_path / "m.keras"), str(tmp_path / "stray.jpg"), "--out",
                         str(tmp_path / "predictions"))
    assert keras_model.returncode == 0 and keras_model.stderr == "", keras_model.stderr
    assert "Corrupt JPEG data" in pspnet("predict", "--model", str(tmp_path / "m.keras"), str(tmp_path / "stray.jpg"),
                                         "--out", str(tmp_path / "verbose"), "--verbose").stderr
    evaluated = pspnet("evaluate", "--model", str(tmp_path / "m.keras"), "--data", "context", "--context-size", "48")
    logged = [line for line in evaluated.stderr.splitlines() if line.strip() and "evaluating on context" not in line]
    assert evaluated.returncode == 0 and logged == [], evaluated.stderr  # its progress bar only: no oneDNN line
    missing = pspnet("export", "nowhere.keras", "--out", str(tmp_path / "m"))
    assert missing.returncode == 2 and missing.stderr == "pspnet: error: nowhere.keras: model not found\n"
    verbose = pspnet("export", "nowhere.keras", "--out", str(tmp_path / "m"), "--verbose")
    assert "Traceback" in verbose.stderr  # and TensorFlow's logs


def test_errors_are_one_line_without_traceback(tmp_path):
    result = pspnet("convert", "mmseg", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "m.keras"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"pspnet: error: {tmp_path / 'missing.pth'}: checkpoint not found"]


def test_foreign_and_broken_models_are_one_line_errors(tmp_path):
    import tensorflow as tf

    from keras_pspnet.predictors import METADATA_FILE

    foreign = tmp_path / "foreign"
    module = tf.Module()
    module.f = tf.function(lambda x: {"y": x * 2}, input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, str(foreign), signatures={"serving_default": module.f})
    (tmp_path / "image.png").write_bytes(b"")
    expected = {
        "foreign": f"{foreign}: not exported by keras-pspnet",
        "no logits": f"{foreign}: not exported by keras-pspnet (no encoded, logits signature); a SavedModel is a "
                     "program that runs its own operations when loaded",
        "bad metadata": f"{foreign / 'assets.extra' / METADATA_FILE}: not keras-pspnet metadata (KeyError: "
                        "'normalization')",
        "broken": f"{foreign}: saved_model.pb is not a SavedModel graph",
    }
    for case, message in expected.items():
        if case == "no logits":
            metadata = {"classes": [{"name": "a"}], "normalization": {"mean": [0, 0, 0]}}
            os.makedirs(foreign / "assets.extra", exist_ok=True)
            (foreign / "assets.extra" / METADATA_FILE).write_text(json.dumps(metadata))
        elif case == "bad metadata":
            (foreign / "assets.extra" / METADATA_FILE).write_text(json.dumps({"classes": []}))
        elif case == "broken":
            (foreign / "assets.extra" / METADATA_FILE).write_text(json.dumps(metadata))
            (foreign / "saved_model.pb").write_bytes(b"\x00garbage")
        result = pspnet("predict", "--model", str(foreign), str(tmp_path / "image.png"), "--out", str(tmp_path / "o"))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"pspnet: error: {message}"), \
            (case, result.stderr)


def test_verbose_goes_before_or_after_the_command_and_bad_numbers_are_refused(capsys):
    from keras_pspnet.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["--verbose", "presets"]).verbose
    assert parser.parse_args(["presets", "--verbose"]).verbose
    assert not parser.parse_args(["presets"]).verbose
    for option in ("--max-side", "--window-batch"):
        with pytest.raises(SystemExit):
            parser.parse_args(["predict", "--model", "m.keras", "x.jpg", "--out", "o", option, "0"])
        assert capsys.readouterr().err == (f"pspnet: error: argument {option}: expected a positive integer, got '0' "
                                           "(see `pspnet predict --help`)\n")


def test_export_choices_are_the_ones_export_takes():
    """The parser writes --quantize's and --outputs' choices out (importing them would load Keras): the same."""
    from keras_pspnet.cli import build_parser
    from keras_pspnet.export import QUANTIZATIONS
    from keras_pspnet.tflite import LAYOUTS

    commands, = (a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    choices = {action.dest: action.choices for action in commands.choices["export"]._actions}
    assert tuple(choices["quantize"]) == QUANTIZATIONS and tuple(choices["outputs"]) == LAYOUTS
