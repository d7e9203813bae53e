import h5py
import keras
import pytest

from keras_pspnet.backbones import build_backbone
from keras_pspnet.backbones.common import stride_plan
from tests.conftest import randomize_batchnorm, relative_error


def save_legacy_h5(model, path):
    """Writes weights the way keras.applications' published ImageNet .h5 files are laid out."""
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

    with h5py.File(path, "w") as f:
        save_weights_to_hdf5_group(f, model)


@pytest.mark.parametrize("suffix", [".h5", ".weights.h5"])
def test_resnet50_equals_keras_applications_at_output_stride_32(tmp_path, rng, suffix):
    reference = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(64, 64, 3))
    randomize_batchnorm(reference)
    path = str(tmp_path / f"resnet50{suffix}")
    save_legacy_h5(reference, path) if suffix == ".h5" else reference.save_weights(path)
    ours = build_backbone("resnet50", (64, 64, 3), weights=path, output_stride=32)
    x = rng.uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    # keras.applications ResNets take BGR; our first conv's input channels were reversed on loading.
    expected = reference.predict(x[..., ::-1], verbose=0)
    assert relative_error(ours.predict(x, verbose=0)["final"], expected) < 1e-5


def test_mobilenet_v2_equals_keras_applications_at_output_stride_32(tmp_path, rng):
    reference = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(64, 64, 3), alpha=0.35)
    randomize_batchnorm(reference)
    path = str(tmp_path / "mobilenet.h5")
    save_legacy_h5(reference, path)
    ours = build_backbone("mobilenet_v2", (64, 64, 3), weights=path, output_stride=32, alpha=0.35)
    x = rng.uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    assert relative_error(ours.predict(x, verbose=0)["final"], reference.predict(x, verbose=0)) < 1e-5


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2"])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_output_stride_sets_feature_size(name, output_stride):
    kwargs = {"alpha": 0.35} if name == "mobilenet_v2" else {"base_width": 8}
    model = build_backbone(name, (64, 96, 3), output_stride=output_stride, **kwargs)
    assert model.output["final"].shape[1:3] == (64 // output_stride, 96 // output_stride)
    assert model.output["aux"].shape[1:3] == (64 // min(output_stride, 16), 96 // min(output_stride, 16))


def test_dilated_stages_keep_weights_of_undilated_backbone():
    # Dilation changes no weight shape, so ImageNet weights (trained at stride 32) fit the dilated network.
    shapes = [[tuple(w.shape) for w in build_backbone("resnet50", output_stride=s).weights] for s in (8, 32)]
    assert shapes[0] == shapes[1]


def test_stride_plan_trades_stride_for_dilation():
    assert stride_plan((1, 2, 2, 2), 8, initial_stride=4) == [(1, 1), (2, 1), (1, 2), (1, 4)]
    assert stride_plan((1, 2, 2, 2), 16, initial_stride=4) == [(1, 1), (2, 1), (2, 1), (1, 2)]
    assert stride_plan((1, 2, 2, 2), 32, initial_stride=4) == [(1, 1), (2, 1), (2, 1), (2, 1)]


def test_deep_stem_and_contract_dilation():
    model = build_backbone("resnet50", stem="deep", stem_widths=(4, 4, 8), base_width=8, contract_dilation=True,
                           style="pytorch")
    assert [model.get_layer(f"stem_{i}_conv").filters for i in (1, 2, 3)] == [4, 4, 8]
    assert model.get_layer("conv4_block1_2_conv").dilation_rate == (1, 1)
    assert model.get_layer("conv4_block2_2_conv").dilation_rate == (2, 2)
    assert model.get_layer("conv5_block1_2_conv").dilation_rate == (2, 2)
    assert model.get_layer("conv5_block3_2_conv").dilation_rate == (4, 4)
    assert model.get_layer("conv3_block1_2_conv").strides == (2, 2)  # pytorch style: stride on the 3x3


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"name": "resnet51"}, "valid backbones: ['mobilenet_v2', 'resnet10', 'resnet101'"),
        ({"name": "resnet50", "output_stride": 4}, "output_stride must be one of (8, 16, 32)"),
        ({"name": "resnet50", "style": "caffe"}, "valid styles: ['keras', 'pytorch']"),
        ({"name": "resnet50", "stem": "deep", "stem_widths": (8, 8)}, "three convolutions"),
        ({"name": "resnet18", "weights": "imagenet"}, "backbones with weights: ['mobilenet_v2', 'resnet101'"),
        ({"name": "resnet50", "weights": "/nonexistent/file.h5"}, "/nonexistent/file.h5: ImageNet weights file"),
    ],
)
def test_bad_backbone_settings_give_clear_errors(kwargs, message):
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        build_backbone(**kwargs)
    assert message in str(error.value)


def test_imagenet_weights_need_the_keras_layout(tmp_path):
    reference = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = str(tmp_path / "resnet50.weights.h5")
    reference.save_weights(path)
    with pytest.raises(ValueError, match="conv1_conv.*has no counterpart.*standard stem"):
        build_backbone("resnet50", weights=path, stem="deep")

