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


@pytest.mark.parametrize("args", [["--help"], ["presets"], ["predict", "--help"], ["--version"],
                                  ["pretrained", "list"]])
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
    """The parser writes --format's, --quantize's, --outputs' and --runtime's choices out (importing them would load
    Keras): the same."""
    from keras_pspnet.cli import build_parser
    from keras_pspnet.export import FORMATS, QUANTIZATIONS
    from keras_pspnet.predictors import RUNTIMES
    from keras_pspnet.tflite import LAYOUTS

    commands, = (a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    choices = {action.dest: action.choices for action in commands.choices["export"]._actions}
    assert tuple(choices["quantize"]) == QUANTIZATIONS and tuple(choices["outputs"]) == LAYOUTS
    assert tuple(choices["format"]) == FORMATS
    for command in ("predict", "evaluate"):
        runtime = {action.dest: action.choices for action in commands.choices[command]._actions}["runtime"]
        assert tuple(runtime) == RUNTIMES


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny 4-class model file and two small photos."""
    import keras

    from keras_pspnet import build_pspnet

    root = tmp_path_factory.mktemp("tiny")
    keras.utils.set_random_seed(0)
    build_pspnet(4, "resnet18", base_width=4, head_channels=8).save(root / "m.keras")
    photos = []
    for i in range(2):
        photos.append(str(root / f"photo{i}.png"))
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(photos[-1])
    return str(root / "m.keras"), photos


def test_published_names_are_models_for_every_command(tiny, tmp_path, monkeypatch, capsys):
    """--model takes a published name (downloaded, verified and converted once, then cached), as predict, evaluate
    and export read it (`model.load_model`); export's older positional MODEL still works, and one of the two is
    required."""
    from keras_pspnet import registry, zoo
    from tests.checkpoints import zoo_entry

    name = "pspnet_tiny_test-512x512"
    _, entry = zoo_entry(tmp_path / "host", name, depth=18)  # served from a mirror folder, as air-gapped users do
    monkeypatch.setitem(registry.ZOO, name, entry)
    monkeypatch.setenv(zoo.MIRROR_ENV, str(tmp_path / "host"))
    assert main(["predict", "--model", name, tiny[1][0], "--out", str(tmp_path / "predicted")]) == 0
    assert os.path.isfile(zoo.converted_path(name)) and os.path.isfile(tmp_path / "predicted" / "photo0_label.png")
    monkeypatch.setenv(zoo.MIRROR_ENV, "http://127.0.0.1:9/")  # nothing listens there: the cache answers
    assert main(["export", "--model", name, "--out", str(tmp_path / "serving"), "--warmup-size", "none"]) == 0
    assert os.path.isfile(tmp_path / "serving" / "1" / "saved_model.pb")
    capsys.readouterr()
    for args in (["export", "--out", "x"], ["export", tiny[0], "--model", tiny[0], "--out", "x"]):
        with pytest.raises(SystemExit):
            main(args)
        assert capsys.readouterr().err.startswith("pspnet: error: export: give the model once, as --model")
    assert main(["predict", "--model", "pspnet_no_such_model", tiny[1][0], "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == ("pspnet: error: pspnet_no_such_model: model not found (neither a file nor a "
                                       "published name of `pspnet pretrained list`)\n")


def test_version_is_instant(capsys):
    from keras_pspnet import __version__

    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0 and capsys.readouterr().out == f"pspnet {__version__}\n"
    # (no TensorFlow: test_help_and_presets_never_load_tensorflow); export's own --version is the SavedModel's
    from keras_pspnet.cli import build_parser

    assert build_parser().parse_args(["export", "--model", "m.keras", "--out", "o", "--version", "3"]).version == 3


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield sub
                yield from _subparsers(sub)


def test_every_option_has_help_with_its_default():
    from keras_pspnet.cli import build_parser

    parser = build_parser()
    for sub in [parser, *_subparsers(parser)]:
        if any(isinstance(action, argparse._SubParsersAction) for action in sub._actions):
            continue  # a command of actions (convert, pretrained): its actions are walked
        text = " ".join(sub.format_help().split())
        for action in sub._actions:
            if action.help == argparse.SUPPRESS:
                continue
            assert action.help, f"{sub.prog} {action.option_strings or action.dest}: no help"
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                assert f"(default: {action.default})" in text, f"{sub.prog} {action.option_strings[0]}"


def test_progress_is_plain_lines_in_a_pipe_and_a_bar_on_a_terminal(tiny, tmp_path, capsys):
    import io

    from keras_pspnet.console import Progress

    assert main(["predict", "--model", tiny[0], *tiny[1], "--out", str(tmp_path / "predicted")]) == 0
    assert main(["train", "--out", str(tmp_path / "run"), "--set", "dataset=context", "--set", "context_scenes=4",
                 "--set", "context_size=32", "--set", "crop_size=[32, 32]", "--set", "batch_size=2", "--set",
                 "steps=3", "--set", "log_every=1", "--set", "val_split=null", "--set",
                 "model={backbone: resnet10, stages: 3, base_width: 4, head_channels: 8, aux_channels: 4}"]) == 0
    printed = capsys.readouterr()
    for output in (printed.out, printed.err):
        assert "\r" not in output and "\x1b[" not in output
    assert "predicting: 1/2 images (50%), " in printed.err and "predicting: 2/2 images (100%), " in printed.err
    assert "training: 3/3 steps (100%), loss " in printed.out

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    with Progress(4, "counting", "item", stream=terminal) as shown:
        shown.update(2, loss=0.5)
    assert shown.bar is not None and "\r" in terminal.getvalue() and "loss=0.5" in terminal.getvalue()


def test_reruns_never_overwrite_and_say_what_to_pass(tiny, tmp_path, capsys):
    out = tmp_path / "predicted"
    assert main(["predict", "--model", tiny[0], tiny[1][0], "--out", str(out)]) == 0
    before = os.path.getmtime(out / "photo0_label.png")
    capsys.readouterr()
    assert main(["predict", "--model", tiny[0], *tiny[1], "--out", str(out)]) == 1
    assert capsys.readouterr().err == (f"pspnet: error: {out / 'photo0_label.png'}: already exists; nothing "
                                       "predicted (use --force to replace them, or a new --out)\n")
    assert os.path.getmtime(out / "photo0_label.png") == before and not os.path.exists(out / "photo1_label.png")
    existing = {name: tmp_path / name for name in ("m.tflite", "e.json", "c.keras", "p.keras")}
    for path in existing.values():
        path.write_text("mine")
    run = tmp_path / "run"
    run.mkdir()
    import shutil

    shutil.copy(tiny[0], run / "final.keras")
    commands = {
        "m.tflite": ["export", "--model", tiny[0], "--format", "tflite", "--input-size", "32x32", "--out"],
        "e.json": ["evaluate", "--model", tiny[0], "--data", "context", "--json"],
        "c.keras": ["convert", "mmseg", str(tmp_path / "x.pth"), "--out"],
        "p.keras": ["pretrained", "get", "pspnet_r50-d8_4xb4-160k_ade20k-512x512", "--out"],
    }
    for name, args in commands.items():
        assert main([*args, str(existing[name])]) == 2, name
        option = "--json" if name == "e.json" else "--out"
        assert capsys.readouterr().err == (f"pspnet: error: {existing[name]}: already exists (use --force to "
                                           f"replace it, or a new {option})\n")
        assert existing[name].read_text() == "mine"
    assert main(["train", "--out", str(run), "--set", "dataset=context"]) == 2
    assert capsys.readouterr().err == (f"pspnet: error: {run}: holds a finished run (final.keras); pass --resume to "
                                       "continue it (e.g. with more steps), or a new --out.\n")
