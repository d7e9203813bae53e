"""The model on the JAX and PyTorch backends gives TensorFlow's output for the same weights."""

import os
import subprocess
import sys

import numpy as np
import pytest

from keras_pspnet import build_pspnet
from tests.conftest import randomize_batchnorm, relative_error

SCRIPT = """
import sys, numpy as np
from keras_pspnet import build_pspnet
for name, kwargs in [("resnet50", dict(base_width=8, head_channels=16, aux_channels=8, aux_head=True)),
                     ("mobilenet_v2", dict(alpha=0.35, head_channels=8))]:
    model = build_pspnet(5, name, **kwargs)
    model.load_weights(f"{sys.argv[1]}/{name}.weights.h5")
    out = model.predict(np.load(f"{sys.argv[1]}/pixels.npy"), verbose=0)
    np.save(f"{sys.argv[1]}/{name}_{sys.argv[2]}.npy", out["logits"] if isinstance(out, dict) else out)
"""
MODELS = [("resnet50", dict(base_width=8, head_channels=16, aux_channels=8, aux_head=True)),
          ("mobilenet_v2", dict(alpha=0.35, head_channels=8))]


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_backend_matches_tensorflow(backend, tmp_path, rng):
    pytest.importorskip(backend)
    pixels = rng.uniform(0, 255, (2, 61, 83, 3)).astype("float32")
    np.save(tmp_path / "pixels.npy", pixels)
    expected = {}
    for name, kwargs in MODELS:
        model = build_pspnet(5, name, **kwargs)
        randomize_batchnorm(model)
        model.save_weights(str(tmp_path / f"{name}.weights.h5"))
        out = model.predict(pixels, verbose=0)
        expected[name] = out["logits"] if isinstance(out, dict) else out
    env = {**os.environ, "KERAS_BACKEND": backend, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), backend], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for name, _ in MODELS:
        assert relative_error(np.load(tmp_path / f"{name}_{backend}.npy"), expected[name]) < 1e-5
