import atexit
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Keras reads KERAS_HOME once, at import: the tests' downloads and conversions stay out of the user's ~/.keras.
os.environ["KERAS_HOME"] = tempfile.mkdtemp(prefix="keras-pspnet-tests-")
atexit.register(shutil.rmtree, os.environ["KERAS_HOME"], True)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Tiny widths keep full-depth models fast; the structure (depth, dilation, heads) stays the real one.
TINY_RESNET = {"base_width": 8, "head_channels": 16, "aux_channels": 8}


def randomize_batchnorm(model: keras.Model, seed: int = 0) -> None:
    """Random BN affine parameters and moving statistics, as a trained network has (not 0/1)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.1, n), rng.normal(0, 0.1, n),
                               rng.uniform(0.5, 2.0, n)])


def relative_error(actual, expected) -> float:
    actual, expected = np.asarray(actual, "float64"), np.asarray(expected, "float64")
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def trained_context_model(tmp_path_factory):
    """A small PSPNet trained for a few seconds on 96x96 context scenes (confident, like a real model)."""
    from keras_pspnet.config import load_config
    from keras_pspnet.train import train

    run_dir = str(tmp_path_factory.mktemp("context_run") / "run")
    keras.utils.set_random_seed(0)  # the same trained model in every session: the int8 agreement tests need it
    config = load_config(None, ["dataset=context", "context_size=96", "context_scenes=64", "crop_size=[96, 96]",
                                "batch_size=8", "steps=80", "optimizer=adam", "learning_rate=0.003",
                                "weight_decay=0.0", "aux_weight=0.0", "val_split=null", "cache=true",
                                "model={backbone: resnet10, stages: 3, base_width: 8, head_channels: 16}"])
    train(config, run_dir, verbose=False)
    return os.path.join(run_dir, "final.keras")


# The slowest files first: with two xdist workers taking a file each at a time (.ci/run), a long file started last
# would run on alone; collected first, they run beside the many short ones.
SLOW_FIRST = ("test_train.py", "test_replicas.py", "test_docs.py", "test_cluster.py", "test_backends.py", "test_cli.py",
              "test_predict.py", "test_demo.py", "test_export.py", "test_chain.py", "test_tflite_runtimes.py")


def pytest_collection_modifyitems(items):
    rank = {name: index for index, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order
