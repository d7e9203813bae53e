import keras
import numpy as np
import pytest
import torch

from keras_pspnet import from_mmseg
from keras_pspnet.cli import main
from keras_pspnet.model import IMAGENET_MEAN, IMAGENET_STD
from tests.conftest import relative_error
from tests.mmseg_reference import PSPNet, randomize_batchnorm

TINY = {"base_width": 8, "channels": 16, "aux_channels": 8}


def reference_logits(reference, pixels):
    normalised = (pixels - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    with torch.no_grad():
        outputs = reference(torch.from_numpy(normalised.astype("float32")).permute(0, 3, 1, 2))
    return [t.permute(0, 2, 3, 1).numpy() for t in outputs]


def save_checkpoint(reference, path):
    torch.save({"meta": {"mmseg_version": "1.2.2"}, "state_dict": reference.state_dict()}, path)
    return str(path)


@pytest.fixture(scope="module", params=[(50, True), (18, False)], ids=["r50-v1c", "r18-standard-stem"])
def checkpoint(request, tmp_path_factory):
    depth, deep_stem = request.param
    torch.manual_seed(depth)
    stem = (4, 4, 8) if deep_stem else (8,)
    reference = PSPNet(6, depth=depth, deep_stem=deep_stem, stem_widths=stem, **TINY).eval()
    randomize_batchnorm(reference, seed=depth)
    return reference, save_checkpoint(reference, tmp_path_factory.mktemp("ckpt") / "pspnet.pth")


@pytest.mark.parametrize("size", [(97, 129), (64, 64)])  # 97x129 -> 13x17 features: pyramid bins overlap
def test_converted_logits_equal_pytorch(checkpoint, rng, size):
    reference, path = checkpoint
    model = from_mmseg(path)
    pixels = rng.uniform(0, 255, (2, *size, 3)).astype("float32")
    logits, aux = reference_logits(reference, pixels)
    outputs = model.predict(pixels, verbose=0)
    assert relative_error(outputs["logits"], logits) < 1e-4
    assert relative_error(outputs["aux"], aux) < 1e-4


def test_inferred_configuration(checkpoint):
    reference, path = checkpoint
    model = from_mmseg(path, num_classes=6, aux_head=False)
    assert isinstance(model.output, keras.KerasTensor) and model.output.shape[-1] == 6
    assert model.get_layer("head_conv").filters == 16


def corrupt(path, tmp_path, edit):
    state = torch.load(path, weights_only=True)["state_dict"]
    edit(state)
    return save_checkpoint_dict(state, tmp_path / "bad.pth")


def save_checkpoint_dict(state, path):
    torch.save({"state_dict": state}, path)
    return str(path)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda s: s.pop("decode_head.bottleneck.bn.running_var"), "missing key decode_head.bottleneck.bn.running_var"),
        (lambda s: s.update({"decode_head.extra.weight": torch.zeros(3)}), "unexpected key decode_head.extra.weight"),
        (lambda s: s.update({"backbone.layer2.0.conv2.weight": torch.zeros(16, 16, 1, 1)}),
         "backbone.layer2.0.conv2: shapes [(1, 1, 16, 16)] do not fit layer conv3_block1_2_conv"),
    ],
)
def test_bad_checkpoints_are_refused_with_the_keys_listed(checkpoint, tmp_path, edit, message):
    _, path = checkpoint
    with pytest.raises(ValueError) as error:
        from_mmseg(corrupt(path, tmp_path, edit))
    assert message in str(error.value) and "bad.pth" in str(error.value)


def test_wrong_class_count_and_missing_file(checkpoint, tmp_path):
    _, path = checkpoint
    with pytest.raises(ValueError, match="has 6 classes, not 19"):
        from_mmseg(path, num_classes=19)
    with pytest.raises(FileNotFoundError, match="nothing.pth: checkpoint not found"):
        from_mmseg(str(tmp_path / "nothing.pth"))
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth: cannot read the checkpoint"):
        from_mmseg(str(tmp_path / "garbage.pth"))


def test_command_line_conversion(checkpoint, tmp_path, rng, capsys):
    reference, path = checkpoint
    out = str(tmp_path / "converted.keras")
    assert main(["convert", "mmseg", path, "--out", out]) == 0
    model = keras.saving.load_model(out)
    pixels = rng.uniform(0, 255, (1, 50, 70, 3)).astype("float32")
    assert relative_error(model.predict(pixels, verbose=0)["logits"], reference_logits(reference, pixels)[0]) < 1e-4
    assert main(["convert", "mmseg", path, "--out", out]) == 2  # never overwrites without --force
    assert "already exists" in capsys.readouterr().err
