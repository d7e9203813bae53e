"""Two replicas (two logical CPU devices, synchronised BN): the update of one device, evaluation and export while
bound to MirroredStrategy, and the trained model on JAX. Apart from tests/test_train.py so that the two long files run
on both workers side by side."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.test_train import ENV, TINY

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
from keras_pspnet.train import _describe_strategy, make_optimizer, make_strategy, make_train_step, training_loss

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
          "losses": [one_losses, two_losses], "said": [_describe_strategy(s, 4) for s in (single, mirrored)]}

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
    assert figures["said"] == ["training on one device, batch 4",  # what `pspnet train` prints first
                               "MirroredStrategy: 2 replicas, global batch 4 (2 per replica), synchronised "
                               "BatchNormalization"]


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
