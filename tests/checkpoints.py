"""Checkpoints in each source's file format, made by the tests (tiny widths, random BN statistics), and a
127.0.0.1 server that plays the download host for the zoo."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import os
import threading

import numpy as np
import torch

from keras_pspnet.model import IMAGENET_MEAN, IMAGENET_STD
from keras_pspnet.protocol import TestProtocol
from keras_pspnet.zoo import PretrainedPSPNet
from tests import mmseg_reference, semseg_reference
from tests.mmseg_reference import randomize_batchnorm

# The first lines of a script run where torch is not installed: `import torch` raises ImportError, and no `torch`
# is in sys.modules (a None there would break libraries that look for torch tensors, such as SciPy, which Keras
# imports with scikit-learn, a dependency of NNCF).
BLOCK_TORCH = (
    "import sys\n"
    "class _NoTorch:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] == 'torch':\n"
    "            raise ImportError(f'No module named {name!r}')\n"
    "sys.meta_path.insert(0, _NoTorch())\n")
DATA = os.path.join(os.path.dirname(__file__), "data")
TINY_MMSEG = {"stem_widths": (4, 4, 8), "base_width": 8, "channels": 16, "aux_channels": 8}
# What mmsegmentation stored as meta["config"]: Config.pretty_text of its configs (0.x and 1.x layouts).
CONFIG_0X_R18 = "mmseg0_pspnet_r18-d8_512x1024_cityscapes.config"  # whole, (2048, 1024)
CONFIG_1X_R18_769 = "mmseg1_pspnet_r18-d8_769x769_cityscapes.config"  # slide 769/513, (2049, 1025), align_corners
# The 2020 layout of the published 769x769 checkpoints: test_cfg and img_norm_cfg at the top level, not in `model`.
CONFIG_2020_R18_769 = "mmseg0_2020_pspnet_r18-d8_769x769_cityscapes.config"


def config_text(name: str) -> str:
    with open(os.path.join(DATA, name)) as f:
        return f.read()


def mmseg_checkpoint(path, num_classes: int = 19, *, seed: int = 0, meta: dict | None = None, legacy: bool = False,
                     **kwargs):
    """A tests.mmseg_reference.PSPNet saved as mmsegmentation saves it: {"meta": ..., "state_dict": ...}.

    `legacy`: torch's pre-1.6 file layout (as the 2020 checkpoints), else the zip layout."""
    torch.manual_seed(seed)
    reference = mmseg_reference.PSPNet(num_classes, **{**TINY_MMSEG, **kwargs}).eval()
    randomize_batchnorm(reference, seed)
    checkpoint = {"meta": meta or {}, "state_dict": reference.state_dict()}
    torch.save(checkpoint, str(path), _use_new_zipfile_serialization=not legacy)
    return reference, str(path)


def semseg_checkpoint(path, classes: int = 150, *, seed: int = 0, layers: int = 50, legacy: bool = False):
    """A tests.semseg_reference.PSPNet saved as the authors' train.py saves it (DistributedDataParallel keys)."""
    torch.manual_seed(seed)
    reference = semseg_reference.PSPNet(layers, classes=classes, base_width=8, head=16).eval()
    randomize_batchnorm(reference, seed)
    state = {"module." + key: value for key, value in reference.state_dict().items()}
    momentum = {"momentum_buffer": torch.zeros(3)}
    torch.save({"epoch": 100, "state_dict": state, "optimizer": {"state": {0: momentum}, "param_groups": []}},
               str(path), _use_new_zipfile_serialization=not legacy)
    return reference, str(path)


def reference_logits(reference, pixels: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD, bgr: bool = False,
                     **kwargs) -> list[np.ndarray]:
    """The reference's (logits, aux) on RGB pixels 0-255 [N, H, W, 3], channels last, normalised as mmsegmentation
    does: with `bgr`, the channels are reversed first (no to_rgb) and `mean` and `std` are in BGR order."""
    normalised = ((pixels[..., ::-1] if bgr else pixels) - np.array(mean)) / np.array(std)
    with torch.no_grad():
        outputs = reference(torch.from_numpy(normalised.astype("float32")).permute(0, 3, 1, 2), **kwargs)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return [t.permute(0, 2, 3, 1).numpy() for t in outputs]


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def zoo_entry(root, name: str, num_classes: int = 19, dataset: str = "cityscapes",
              protocol: TestProtocol | None = None, options: dict | None = None, **kwargs):
    """(reference, entry): a tiny checkpoint laid out under `root` as on the download host, named with its own
    SHA-256 prefix as mmsegmentation names its files, and its registry entry."""
    folder = os.path.join(str(root), "pspnet", name)
    os.makedirs(folder, exist_ok=True)
    reference, path = mmseg_checkpoint(os.path.join(folder, "staging.pth"), num_classes, **kwargs)
    final = os.path.join(folder, f"{name}_20200606_112131-{sha256(path)[:8]}.pth")
    os.replace(path, final)
    entry = PretrainedPSPNet(name, dataset, "R-18 V1c D8 (tiny)", os.path.relpath(final, str(root)), 78.55, 79.79,
                             protocol or TestProtocol("mmseg", (96, 64)), dict(options or {}))
    return reference, entry


@contextlib.contextmanager
def serve(directory):
    """An HTTP server on 127.0.0.1 serving `directory`; yields its base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
