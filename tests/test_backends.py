"""The model on the JAX and PyTorch backends gives TensorFlow's output for the same weights."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from keras_pspnet import build_pspnet
from tests.conftest import randomize_batchnorm, relative_error

# id: (backbone, build_pspnet arguments); the last two run the corner-aligned resize, the stride-with-dilation
# conv of mmsegmentation's -d32 and its MobileNetV2 on every backend.
MODELS = {
    "resnet50": ("resnet50", dict(base_width=8, head_channels=16, aux_channels=8, aux_head=True)),
    "mobilenet_v2": ("mobilenet_v2", dict(alpha=0.35, head_channels=8)),
    "resnet18_d32_corners": ("resnet18", dict(base_width=8, head_channels=16, style="pytorch", output_stride=32,
                                              dilations=[1, 1, 2, 4], contract_dilation=True, align_corners=True)),
    "mobilenet_v2_mmseg": ("mobilenet_v2", dict(alpha=0.35, style="pytorch", pool_channels=16, head_channels=8)),
}
SCRIPT = """
import json, sys, numpy as np
from keras_pspnet import build_pspnet
folder, backend = sys.argv[1], sys.argv[2]
for key, (backbone, kwargs) in json.loads(sys.argv[3]).items():
    model = build_pspnet(5, backbone, **kwargs)
    model.load_weights(f"{folder}/{key}.weights.h5")
    out = model.predict(np.load(f"{folder}/pixels.npy"), verbose=0)
    np.save(f"{folder}/{key}_{backend}.npy", out["logits"] if isinstance(out, dict) else out)
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_backend_matches_tensorflow(backend, tmp_path, rng):
    pytest.importorskip(backend)
    pixels = rng.uniform(0, 255, (2, 61, 83, 3)).astype("float32")
    np.save(tmp_path / "pixels.npy", pixels)
    expected = {}
    for key, (backbone, kwargs) in MODELS.items():
        model = build_pspnet(5, backbone, **kwargs)
        randomize_batchnorm(model)
        model.save_weights(str(tmp_path / f"{key}.weights.h5"))
        out = model.predict(pixels, verbose=0)
        expected[key] = out["logits"] if isinstance(out, dict) else out
    env = {**os.environ, "KERAS_BACKEND": backend, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), backend, json.dumps(MODELS)], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for key in MODELS:
        assert relative_error(np.load(tmp_path / f"{key}_{backend}.npy"), expected[key]) < 1e-5, key
