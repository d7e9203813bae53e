"""Training: one device vs MirroredStrategy, two workers, SIGKILL and resume, run-directory safety."""

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


@pytest.mark.parametrize("policy", [None, "mixed_float16", "mixed_bfloat16"])
def test_sigkill_resume_export(tmp_path, policy):
    """Train, SIGKILL, rerun the same command: it resumes at the checkpoint's step; the saved model is float32
    with the trained weights, and its SavedModel and TFLite exports give its output."""
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


TWO_REPLICAS = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import json, sys, keras, numpy as np
# 1. one step of our loop and of model.fit on two replicas equals one on one device
from keras_pspnet import build_pspnet
from keras_pspnet.config import TrainConfig
from keras_pspnet.losses import SegmentationCrossEntropy
from keras_pspnet.model import head_lr_multipliers
from keras_pspnet.optimizers import SGD
from keras_pspnet.train import make_optimizer, make_strategy, make_train_step, training_loss

keras.utils.set_random_seed(0)  # the same initial weights in every session: the tolerance below is for rounding
rng = np.random.default_rng(0)
images = rng.uniform(0, 255, (4, 48, 48, 3)).astype("float32")
masks = rng.integers(0, 3, (4, 48, 48)).astype("uint8")
masks[0, :30] = 255  # the replicas see different numbers of labelled pixels
build = lambda sync: build_pspnet(3, "resnet18", stages=3, base_width=4, head_channels=8, aux_channels=4,
                                  aux_head=True, dropout=0.0, sync_batchnorm=sync)
initial = build(False).get_weights()
config = TrainConfig(steps=10, learning_rate=0.1, head_lr_mult=10.0, weight_decay=1e-3)

def fit(strategy):
    with strategy.scope():
        model = build(strategy.num_replicas_in_sync > 1)
        model.set_weights(initial)
        loss = SegmentationCrossEntropy()
        optimizer = SGD(0.1, momentum=0.9, weight_decay=1e-3, lr_multipliers=head_lr_multipliers(model, 10))
        model.compile(optimizer=optimizer, loss={"logits": loss, "aux": loss},
                      loss_weights={"logits": 1.0, "aux": 0.4})
    model.fit(images, {"logits": masks, "aux": masks}, batch_size=4, epochs=2, shuffle=False, verbose=0)
    return model.get_weights()

def loop(strategy):
    with strategy.scope():
        model = build(strategy.num_replicas_in_sync > 1)
        model.set_weights(initial)
        optimizer = make_optimizer(config, model)
        optimizer.build(model.trainable_variables)
    data = tf.data.Dataset.from_tensors((images, masks)).repeat()
    iterator = iter(strategy.experimental_distribute_dataset(data))
    step = make_train_step(model, optimizer, training_loss(config, 255), strategy)
    losses = [float(step(*next(iterator))) for _ in range(2)]
    return model.get_weights(), losses

def distance(a, b):  # relative, floored: conv biases before BN get ~zero gradients and stay ~zero
    return max(float(np.linalg.norm(x - y) / max(np.linalg.norm(x), 1e-3)) for x, y in zip(a, b))

single, mirrored = tf.distribute.get_strategy(), make_strategy("mirrored")
(one, one_losses), (two, two_losses) = loop(single), loop(mirrored)
update = {"fit": distance(fit(single), fit(mirrored)), "loop": distance(one, two), "moved": distance(initial, one),
          "losses": [one_losses, two_losses]}

# 2. whole runs on two replicas: trained, evaluated at every step, then evaluated and exported while bound
from keras_pspnet.config import load_config
from keras_pspnet.data import load_source
from keras_pspnet.data.classes import CONTEXT_INFO
from keras_pspnet.evaluate import evaluate
from keras_pspnet.export import export_saved_model
from keras_pspnet.finetune import transfer_weights
from keras_pspnet.predictors import KerasPredictor, load_predictor
from keras_pspnet.protocol import TestProtocol
from keras_pspnet.train import build_model, train

folder, overrides = sys.argv[1], sys.argv[2:]
protocols = {"native": TestProtocol(), "slide": TestProtocol(mode="slide", crop=(40, 40)),
             "semseg": TestProtocol("semseg", 64, "slide", (40, 40), flip=True),
             "mmseg": TestProtocol("mmseg", (64, 48), "slide", (40, 40), scales=(0.75, 1.0), flip=True)}
source, _ = load_source("context", "validation", context_scenes=4, context_size=64)
pixels = np.load(folder + "/pixels.npy")
results = {}
for aux in ("0", "0.4"):  # one process: the second run's collective ops must not collide with the first's
    config = load_config(None, overrides + [f"aux_weight={aux}", "distribute=mirrored", "val_split=validation",
                                            "steps=2"])  # evaluated at the end of the run, on both replicas
    final = keras.saving.load_model(train(config, f"{folder}/aux{aux}", verbose=False)["final_model"])
    strategy = make_strategy("mirrored")
    with strategy.scope():  # the training model itself, bound to the strategy, as the loop evaluates it
        model = build_model(config, CONTEXT_INFO, sync_batchnorm=True)
    transfer_weights(final, model)
    results[f"{aux} predictor replicas"] = KerasPredictor(model).model.distribute_strategy.num_replicas_in_sync
    for name, protocol in protocols.items():
        results[f"{aux} {name}"] = [evaluate(m, source, CONTEXT_INFO, protocol, progress=False)["mIoU"]
                                    for m in (model, final)]
    expected = final.predict(pixels, verbose=0)
    np.save(f"{folder}/aux{aux}/tf.npy", expected)
    saved = export_saved_model(model, f"{folder}/serving{aux}", CONTEXT_INFO, warmup_sizes=[])
    results[f"{aux} export"] = float(np.abs(load_predictor(saved).predict_on_batch(pixels) - expected).max())
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "update": update, **results}))
"""
ON_JAX = """
import sys, keras, numpy as np
import keras_pspnet  # registers our layers
assert keras.backend.backend() == "jax"
model = keras.saving.load_model(sys.argv[1] + "/final.keras")
np.save(sys.argv[1] + "/jax.npy", model.predict(np.load(sys.argv[2]), verbose=0))
"""


@pytest.fixture(scope="module")
def two_replicas(tmp_path_factory):
    """Runs trained (and evaluated by the loop) on two replicas, with and without the auxiliary head, and what
    their training models give when evaluated and exported while still bound to the strategy."""
    folder = tmp_path_factory.mktemp("replicas")
    np.save(folder / "pixels.npy", np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32"))
    result = subprocess.run([sys.executable, "-c", TWO_REPLICAS, str(folder), *TINY], capture_output=True,
                            text=True, env=ENV, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder, json.loads(result.stdout.strip().splitlines()[-1])


def test_two_replicas_give_the_update_of_one_device(two_replicas):
    figures = two_replicas[1]["update"]
    assert figures["moved"] > 1e-3  # the steps really changed the weights
    assert figures["fit"] < 1e-4 and figures["loop"] < 1e-4
    np.testing.assert_allclose(*figures["losses"], rtol=1e-5)


def test_two_replicas_evaluate_and_export_with_every_protocol(two_replicas):
    """A model bound to MirroredStrategy (the training model: without an auxiliary head, `inference_model` is the
    model itself) is evaluated once per batch, not on every replica: with a flipping protocol that crashed, without
    one it computed everything twice. Each protocol's mIoU equals the saved model's on one device."""
    results = dict(two_replicas[1])
    assert results.pop("replicas") == 2 and results.pop("update")
    for aux in ("0", "0.4"):
        assert results.pop(f"{aux} predictor replicas") == 1
        assert results.pop(f"{aux} export") < 1e-4
        for name in ("native", "slide", "semseg", "mmseg"):
            distributed, single = results.pop(f"{aux} {name}")
            assert distributed == pytest.approx(single, abs=1e-9), (aux, name)
    assert not results


def test_model_trained_on_two_replicas_loads_on_jax(two_replicas, tmp_path):
    """Synchronised batch norm is a training setting: the saved model loads and predicts on any backend, also
    where TensorFlow is not installed."""
    pytest.importorskip("jax")
    folder, _ = two_replicas
    blocked = tmp_path / "without_tensorflow" / "tensorflow"  # as on a JAX-only machine
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('TensorFlow is not installed here')")
    run_dir = folder / "aux0.4"
    loaded = subprocess.run([sys.executable, "-c", ON_JAX, str(run_dir), str(folder / "pixels.npy")],
                            capture_output=True, text=True,
                            env={**ENV, "KERAS_BACKEND": "jax", "PYTHONPATH": str(blocked.parent)}, timeout=600)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    expected = np.load(run_dir / "tf.npy")
    np.testing.assert_allclose(np.load(run_dir / "jax.npy"), expected, atol=1e-4 * np.abs(expected).max())


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
