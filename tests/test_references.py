"""The PyTorch mirrors (tests/mmseg_reference.py, tests/semseg_reference.py) against the real sources, where those
are at hand. CI skips these: mmsegmentation with mmcv and mmengine is a large install, and hszhao/semseg is no
package. To run them:

    pip install mmsegmentation==1.2.2 mmcv-lite==2.1.0 mmengine ftfy regex
    git clone https://github.com/hszhao/semseg /path/to/semseg
    SEMSEG_ROOT=/path/to/semseg python -m pytest tests/test_references.py
"""

import os
import sys
import types

import pytest
import torch

from tests import mmseg_reference, semseg_reference
from tests.conftest import relative_error
from tests.mmseg_reference import randomize_batchnorm

# mmsegmentation config -> the mirror's arguments
MMSEG_CONFIGS = {
    "pspnet/pspnet_r18-d8_4xb2-80k_cityscapes-512x1024.py": dict(num_classes=19, depth=18, channels=128,
                                                                 aux_channels=64),
    "pspnet/pspnet_r50-d8_4xb2-80k_cityscapes-769x769.py": dict(num_classes=19, depth=50, align_corners=True),
    "pspnet/pspnet_r101b-d8_4xb2-80k_cityscapes-512x1024.py": dict(num_classes=19, depth=101, deep_stem=False,
                                                                   stem_widths=(64,)),
    "pspnet/pspnet_r50-d32_4xb2-80k_cityscapes-512x1024.py": dict(num_classes=19, depth=50, output_stride=32),
    "pspnet/pspnet_r101-d8_4xb4-160k_ade20k-512x512.py": dict(num_classes=150, depth=101),
    "mobilenet_v2/mobilenet-v2-d8_pspnet_4xb4-160k_ade20k-512x512.py": dict(num_classes=150, depth="mobilenet_v2"),
}


@pytest.fixture(scope="module")
def mmseg(request):
    # mmcv-lite has no compiled ops; PSPNet, ResNet and MobileNetV2 use none, so a stub module stands in.
    class Stub(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return type(name, (), {})

    sys.modules.setdefault("mmcv.ops", Stub("mmcv.ops"))
    module = pytest.importorskip("mmseg")
    from mmseg.utils import register_all_modules

    register_all_modules()
    return module


@pytest.mark.parametrize("config", list(MMSEG_CONFIGS))
def test_mmseg_mirror_equals_mmsegmentation(mmseg, config):
    from mmengine import Config
    from mmseg.registry import MODELS

    cfg = Config.fromfile(os.path.join(os.path.dirname(mmseg.__file__), ".mim", "configs", config))
    cfg.model.pretrained = None
    for part in ("backbone", "decode_head", "auxiliary_head"):
        cfg.model[part].norm_cfg = dict(type="BN", requires_grad=True)  # SyncBN needs a process group
    real = MODELS.build(cfg.model).eval()
    randomize_batchnorm(real, 1)
    mirror = mmseg_reference.PSPNet(**MMSEG_CONFIGS[config]).eval()
    mirror.load_state_dict(real.state_dict(), strict=True)  # the same keys and shapes
    x = torch.randn(1, 3, 97, 129)
    with torch.no_grad():
        expected = real.encode_decode(x, [dict(img_shape=(97, 129), ori_shape=(97, 129), pad_shape=(97, 129))])
        logits, _ = mirror(x)
    assert relative_error(logits.numpy(), expected.numpy()) < 1e-6


@pytest.mark.parametrize("layers,classes", [(50, 150), (101, 19)])
def test_semseg_mirror_equals_the_authors_code(layers, classes):
    root = os.environ.get("SEMSEG_ROOT")
    if not root or not os.path.isfile(os.path.join(root, "model", "pspnet.py")):
        pytest.skip("SEMSEG_ROOT does not point at a hszhao/semseg checkout")
    sys.path.insert(0, root)
    try:
        from model.pspnet import PSPNet
    finally:
        sys.path.remove(root)
    torch.manual_seed(layers)
    real = PSPNet(layers=layers, classes=classes, pretrained=False).eval()
    randomize_batchnorm(real, 3)
    mirror = semseg_reference.PSPNet(layers, classes=classes).eval()
    mirror.load_state_dict(real.state_dict(), strict=True)
    x = torch.randn(1, 3, 97, 129)  # their inputs are 8k+1
    with torch.no_grad():
        assert relative_error(mirror(x)[0].numpy(), real(x).numpy()) < 1e-6


# config -> an image size its test protocol keeps (keep-ratio factor 1), so that OpenCV's uint8 resize, which
# TensorFlow's bilinear resize matches only to a grey level, stays out of the comparison
END_TO_END = {
    "pspnet/pspnet_r18-d8_4xb2-80k_cityscapes-769x769.py": (1025, 2049),  # slide 769 / 513, align_corners
    "mobilenet_v2/mobilenet-v2-d8_pspnet_4xb4-160k_ade20k-512x512.py": (512, 683),  # whole image
}


@pytest.mark.parametrize("config", list(END_TO_END))
def test_converted_checkpoints_score_as_mmsegmentation(mmseg, config, tmp_path):
    """mmsegmentation's model from its config, saved as mmsegmentation saves it, converted without torch's reader,
    and run with the test protocol read from the stored config: the probabilities of mmsegmentation's own
    `inference_model` (its test pipeline, whole or sliding-window inference, resizing back)."""
    import numpy as np
    from mmengine import Config
    from mmseg.apis import inference_model, init_model
    from mmseg.utils import get_classes, get_palette

    from keras_pspnet import from_mmseg, predict_scores

    cfg = Config.fromfile(os.path.join(os.path.dirname(mmseg.__file__), ".mim", "configs", config))
    cfg.model.pretrained = None
    for part in ("backbone", "decode_head", "auxiliary_head"):
        cfg.model[part].norm_cfg = dict(type="BN", requires_grad=True)
    real = init_model(cfg, None, device="cpu")
    randomize_batchnorm(real, 0)
    dataset = "ade" if "ade20k" in config else "cityscapes"
    real.dataset_meta = {"classes": get_classes(dataset), "palette": get_palette(dataset)}
    path = str(tmp_path / "checkpoint.pth")
    torch.save({"meta": {"config": cfg.pretty_text, "dataset_meta": real.dataset_meta},
                "state_dict": real.state_dict()}, path)
    height, width = END_TO_END[config]
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:height, 0:width]
    smooth = np.stack([np.sin(cols / 37), np.cos(rows / 23), np.sin((rows + cols) / 51)], -1)
    image = np.clip(128 + 90 * smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)
    result = inference_model(real.eval(), image[..., ::-1].copy())  # mmsegmentation reads BGR
    logits = result.seg_logits.data.permute(1, 2, 0).numpy()
    theirs = np.exp(logits - logits.max(-1, keepdims=True))
    theirs /= theirs.sum(-1, keepdims=True)
    ours = predict_scores(from_mmseg(path), image)  # the protocol stored in the checkpoint's config
    assert np.abs(ours - theirs).max() < 1e-5
    assert np.mean(ours.argmax(-1) == theirs.argmax(-1)) > 0.9999
