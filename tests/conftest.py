import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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
