"""Training runs: SIGKILL and resume, mixed precision, run-directory safety (two replicas: tests/test_replicas.py)."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from keras_pspnet.config import load_config
from keras_pspnet.data.context import CONTEXT_INFO
from keras_pspnet.train import train

TINY = ["dataset=context", "context_scenes=8", "context_size=64", "crop_size=[64, 64]", "batch_size=4", "optimizer=sgd",
        "model={backbone: resnet10, stages: 3, base_width: 4, head_channels: 8, aux_channels: 4}",
        "val_split=null", "log_every=1"]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pspnet(*args):
    return [sys.executable, "-m", "keras_pspnet.cli", *args]


def latest_step(checkpoint_dir):
    """The step of the checkpoint the manager's state file names (0 before the first)."""
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(checkpoint_dir)
    return int(latest.rsplit("-", 1)[1]) if latest else 0


def restored_counter(run_dir, policy=None):
    """The run's step counter, the optimizer's own count and learning rate, from its latest checkpoint."""
    import tensorflow as tf

    from keras_pspnet.train import build_model, make_optimizer

    config = load_config(os.path.join(run_dir, "config.yaml"))
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy or "float32")
    try:
        model = build_model(config, CONTEXT_INFO, sync_batchnorm=False)
        counter = tf.Variable(0, dtype=tf.int64)
        optimizer = make_optimizer(config, model, counter)
        optimizer.build(model.trainable_variables)
    finally:
        keras.config.set_dtype_policy(previous)
    tf.train.Checkpoint(model=model, optimizer=optimizer, best_miou=tf.Variable(-1.0), step=counter).restore(
        tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))).assert_existing_objects_matched()
    return int(counter.numpy()), int(optimizer.iterations.numpy()), float(optimizer.learning_rate), model


# mixed_float16 wraps the optimizer in a LossScaleOptimizer, whose state the resume must restore; mixed_bfloat16 has
# no such wrapper (its run saves float32: test_mixed_precision_policy_stays_in_the_run).
@pytest.mark.parametrize("policy", [None, "mixed_float16"])
def test_sigkill_resume_export(tmp_path, policy):
    """Train, SIGKILL, rerun the same command: it resumes at the checkpoint's step; the saved model is float32
    with the trained weights (whatever the policy), and its SavedModel and TFLite exports give its output."""
    run_dir = str(tmp_path / "run")
    overrides = TINY + ["steps=40", "checkpoint_every=5", "min_learning_rate=0.001"]  # far from done at step 10
    overrides += [f"mixed_precision={policy}"] if policy else []
    args = pspnet("train", "--out", run_dir, *[a for s in overrides for a in ("--set", s)])
    process = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    # The manager writes ckpt-N's files, then names it in the `checkpoint` state file: a kill in between resumes
    # from ckpt-(N-5), correctly. Wait for the state file, so the run is known to have a checkpoint at step >= 10.
    while not latest_step(os.path.join(run_dir, "checkpoints")) >= 10:
        assert process.poll() is None and time.time() < deadline, "training ended before its checkpoint"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not os.path.exists(os.path.join(run_dir, "final.keras"))
    killed_at = restored_counter(run_dir, policy)[0]
    resumed = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    start = int(re.search(r"resuming .* from step (\d+)", resumed.stdout).group(1))
    assert start == killed_at and start >= 10 and start % 5 == 0
    counter, applied, rate, trained = restored_counter(run_dir, policy)
    assert counter == 40 and applied <= 40  # mixed_float16 does not apply steps whose gradients overflowed
    assert rate == pytest.approx(0.001, rel=1e-6)  # the poly schedule reached min_learning_rate at the end
    assert "trained" in resumed.stdout

    final = os.path.join(run_dir, "final.keras")
    model = keras.saving.load_model(final)
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    trained = {v.path: v.numpy() for v in trained.weights}  # the last checkpoint: the state at the end
    assert all(np.array_equal(v.numpy(), trained[v.path]) for v in model.weights)  # the same weights, float32
    if policy:
        return  # a float32 model with the checkpoint's weights: it exports as the float32 run's below does
    from keras_pspnet.cli import main
    from keras_pspnet.predictors import load_predictor

    tflite, saved = str(tmp_path / "model.tflite"), str(tmp_path / "serving")
    assert main(["export", final, "--format", "tflite", "--input-size", "64x64", "--out", tflite]) == 0
    assert main(["export", final, "--out", saved, "--warmup-size", "none"]) == 0

    pixels = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3)).astype("float32")  # exports take uint8
    expected = model.predict(pixels, verbose=0)
    np.testing.assert_allclose(load_predictor(os.path.join(saved, "1")).predict_on_batch(pixels), expected,
                               atol=1e-4 * np.abs(expected).max())
    scores = load_predictor(tflite).predict_on_batch(pixels)  # log-probabilities: the logits up to a shift per pixel
    np.testing.assert_allclose(keras.ops.softmax(scores), keras.ops.softmax(expected), atol=1e-5)


def test_finished_run_is_not_overwritten(tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    config = load_config(None, TINY + ["steps=2", "val_split=validation", "context_scenes=4"])
    result = train(config, run_dir, verbose=False)
    assert result["metrics"][-1]["step"] == 2 and 0 <= result["metrics"][-1]["mIoU"] <= 1
    before = os.path.getmtime(os.path.join(run_dir, "final.keras"))
    with pytest.raises(FileExistsError, match="holds a finished run"):
        train(config, run_dir, verbose=False)
    assert os.path.getmtime(os.path.join(run_dir, "final.keras")) == before
    other = str(tmp_path / "other")
    train(load_config(None, TINY + ["steps=4", "checkpoint_every=2", "val_split=null"]), other, verbose=False)
    os.remove(os.path.join(other, "final.keras"))  # an unfinished run
    with pytest.raises(ValueError, match="different config \\(learning_rate differ\\)"):
        train(load_config(None, TINY + ["steps=4", "checkpoint_every=2", "learning_rate=0.5"]), other, verbose=False)


def test_interrupted_writes_and_failed_resumes_lose_nothing(tmp_path):
    """Outputs are written beside and renamed (tests/test_files.py kills a write); a final.keras cut short (as
    0.4 wrote it in place) is not a finished run, a damaged metrics.json is named, and a --resume whose config no
    longer fits the checkpoint leaves config.yaml as it was, so that the run's own command still resumes it."""
    from keras_pspnet.model import is_complete_model

    run_dir = tmp_path / "run"
    original = TINY + ["steps=4", "checkpoint_every=2", "val_split=validation", "context_scenes=4"]
    train(load_config(None, original), str(run_dir), verbose=False)
    with open(run_dir / "final.keras", "r+b") as f:
        f.truncate(100)
    assert not is_complete_model(str(run_dir / "final.keras"))
    assert train(load_config(None, original), str(run_dir), verbose=False)["step"] == 4  # finished, not refused
    assert is_complete_model(str(run_dir / "final.keras"))
    assert sorted(os.listdir(run_dir)) == ["best.keras", "checkpoints", "config.yaml", "final.keras", "logs",
                                           "metrics.json"]  # no partial files left
    saved = (run_dir / "config.yaml").read_text()
    wider = [s.replace("head_channels: 8", "head_channels: 16") for s in original]
    with pytest.raises(ValueError, match=r"ckpt-4: does not fit this run's model \(the config changed the model or "
                                         r"optimizer: .*\); the run and its config.yaml are unchanged"):
        train(load_config(None, wider + ["steps=6"]), str(run_dir), resume=True, verbose=False)
    assert (run_dir / "config.yaml").read_text() == saved
    metrics = (run_dir / "metrics.json").read_text()
    (run_dir / "metrics.json").write_text(metrics[: len(metrics) // 2])
    with pytest.raises(ValueError, match=r"metrics.json: damaged \(.*\); move it away to resume"):
        train(load_config(None, original + ["steps=6"]), str(run_dir), resume=True, verbose=False)
    (run_dir / "metrics.json").write_text(metrics)
    assert train(load_config(None, original + ["steps=6"]), str(run_dir), resume=True, verbose=False)["step"] == 6


def test_evaluate_command(tmp_path):
    run_dir = str(tmp_path / "run")
    train(load_config(None, TINY + ["steps=2"]), run_dir, verbose=False)
    out = str(tmp_path / "eval.json")
    model = os.path.join(run_dir, "final.keras")
    result = subprocess.run(pspnet("evaluate", "--model", model, "--data", "context", "--json", out, "--mode", "slide",
                                   "--crop", "48x48", "--flip", "--context-size", "64"),
                            env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.load(open(out))
    assert written["images"] == 100 and "boat" in written["per_class_iou"]
    assert f"{100 * written['mIoU']:5.1f}" in result.stdout
    again = subprocess.run(pspnet("evaluate", "--model", model, "--data", "context", "--json", out, "--context-size",
                                  "64"), env=ENV,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_mixed_precision_policy_stays_in_the_run(tmp_path):
    before = keras.config.dtype_policy().name
    result = train(load_config(None, TINY + ["steps=2", "mixed_precision=mixed_bfloat16"]), str(tmp_path / "run"),
                   verbose=False)
    assert keras.config.dtype_policy().name == before  # the run's policy does not leak
    model = keras.saving.load_model(result["final_model"])
    assert model.get_layer("conv2_block1_1_conv").dtype_policy.name == "float32"  # saved for inference
    pixels = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    assert np.all(np.isfinite(model.predict(pixels, verbose=0)))


def test_corrupt_image_mid_training_stops_with_one_line(tmp_path):
    """A JPEG without its last bytes passes the up-front check (headers) but not TensorFlow's decoder: the run stops
    with one line naming it, keeps its checkpoints, and resumes once the file is fixed."""
    from PIL import Image

    from keras_pspnet.data import TrainingOrder
    from keras_pspnet.data.order import epoch_indices

    root = tmp_path / "data"
    for sub in ("images", "masks"):
        (root / "train" / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(40):
        name = f"{index:02d}"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "train/images" / f"{name}.jpg")
        Image.fromarray(rng.integers(0, 3, (32, 32), dtype=np.uint8)).save(root / "train" / "masks" / f"{name}.png")
    # The file read 31st in the first epoch (step 16 of batches of 2): checkpoints at steps 2, 4, ... come first.
    victim = root / "train" / "images" / f"{int(list(epoch_indices(40, TrainingOrder(seed=0)).take(31))[-1]):02d}.jpg"
    intact = victim.read_bytes()
    victim.write_bytes(intact[:-10])
    run_dir = str(tmp_path / "run")
    overrides = [f"dataset={root}", "num_classes=3", "crop_size=[32, 32]", "batch_size=2", "steps=30",
                 "checkpoint_every=2", "val_split=null", "augment.rotate=0",
                 "model={backbone: resnet10, stages: 3, base_width: 4, head_channels: 8, aux_channels: 4}"]
    args = pspnet("train", "--out", run_dir, *[a for s in overrides for a in ("--set", s)])
    failed = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=600)
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines()[-1] == (f"pspnet: error: {victim}: TensorFlow cannot decode this image; "
                                                      "fix or remove it and rerun the same command to resume from the "
                                                      "last checkpoint")
    assert "Traceback" not in failed.stderr
    checkpoints = sorted(int(name[5:-6]) for name in os.listdir(os.path.join(run_dir, "checkpoints"))
                         if name.endswith(".index"))
    assert checkpoints and 2 <= checkpoints[-1] < 16 and not os.path.exists(os.path.join(run_dir, "final.keras"))
    victim.write_bytes(intact)
    resumed = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"from step {checkpoints[-1]}" in resumed.stdout and os.path.exists(os.path.join(run_dir, "final.keras"))


def test_skipped_float16_steps_still_advance_the_schedule():
    """mixed_float16: a step whose loss-scaled gradients overflow is not applied, but it counts for the poly
    schedule, as the references' schedulers count every iteration."""
    import tensorflow as tf

    from keras_pspnet import build_pspnet
    from keras_pspnet.config import TrainConfig
    from keras_pspnet.train import learning_rate_schedule, make_optimizer, make_train_step, training_loss

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        config = TrainConfig(steps=10, mixed_precision="mixed_float16", aux_weight=0.0)
        model = build_pspnet(3, "resnet10", stages=3, base_width=4, head_channels=8, dropout=0.0)
        counter = tf.Variable(0, dtype=tf.int64)
        optimizer = make_optimizer(config, model, counter)
        step = make_train_step(model, optimizer, training_loss(config, 255), tf.distribute.get_strategy(), counter)
        masks = tf.zeros((2, 32, 32), tf.uint8)
        before = [v.numpy() for v in model.trainable_variables]
        step(tf.fill((2, 32, 32, 3), np.inf), masks)  # non-finite gradients: skipped
        assert int(counter.numpy()) == 1 and int(optimizer.iterations.numpy()) == 0
        assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, model.trainable_variables))
        schedule = learning_rate_schedule(config)
        assert float(optimizer.learning_rate) == pytest.approx(float(schedule(1)))  # the next step's rate
        step(tf.fill((2, 32, 32, 3), 100.0), masks)
        assert int(counter.numpy()) == 2 and int(optimizer.iterations.numpy()) == 1
        assert any(not np.array_equal(a, v.numpy()) for a, v in zip(before, model.trainable_variables))
    finally:
        keras.config.set_dtype_policy(previous)


def test_checkpoint_of_older_version_is_refused(tmp_path):
    import tensorflow as tf

    run_dir = tmp_path / "run"
    old = tf.train.Checkpoint(best_miou=tf.Variable(-1.0), optimizer=tf.train.Checkpoint(iterations=tf.Variable(7)))
    tf.train.CheckpointManager(old, str(run_dir / "checkpoints"), max_to_keep=2).save(checkpoint_number=7)
    with pytest.raises(ValueError, match=r"ckpt-7: written by keras-pspnet 0.2, .* start a new run directory"):
        train(load_config(None, TINY + ["steps=10"]), str(run_dir), verbose=False)
