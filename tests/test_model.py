import keras
import numpy as np
import pytest
import tensorflow as tf
import torch

from keras_pspnet import build_pspnet, from_preset, inference_model, list_presets
from keras_pspnet.layers import AdaptiveAveragePooling2D
from tests.conftest import TINY_RESNET, randomize_batchnorm, relative_error
from tests.mmseg_reference import PSPNet


@pytest.fixture(scope="module")
def tiny_model():
    model = build_pspnet(5, "resnet50", aux_head=True, **TINY_RESNET)
    randomize_batchnorm(model)
    return model


def test_logits_at_input_resolution_channels_last(tiny_model, rng):
    model = inference_model(tiny_model)
    for shape in [(1, 97, 129, 3), (2, 64, 64, 3), (1, 33, 47, 3)]:
        logits = model.predict(rng.uniform(0, 255, shape).astype("float32"), verbose=0)
        assert logits.shape == (*shape[:3], 5) and logits.dtype == np.float32


def test_uint8_input_gives_the_same_logits_as_float(tiny_model, rng):
    pixels = rng.integers(0, 256, (1, 40, 56, 3), dtype=np.uint8)
    uint8_model = build_pspnet(5, "resnet50", input_dtype="uint8", **TINY_RESNET)
    uint8_model.set_weights(inference_model(tiny_model).get_weights())
    expected = inference_model(tiny_model).predict(pixels.astype("float32"), verbose=0)
    assert relative_error(uint8_model.predict(pixels, verbose=0), expected) < 1e-6


def test_inference_model_drops_aux_and_shares_weights(tiny_model, rng):
    x = rng.uniform(0, 255, (1, 48, 40, 3)).astype("float32")
    both = tiny_model.predict(x, verbose=0)
    assert set(both) == {"logits", "aux"}
    single = inference_model(tiny_model)
    assert not any(layer.name.startswith("aux") for layer in single.layers)
    np.testing.assert_array_equal(single.predict(x, verbose=0), both["logits"])


def test_calls_without_training_flag_use_inference_batchnorm(tiny_model, rng):
    # model.export() calls the model without `training=`: every BN must still use its moving statistics.
    model = inference_model(tiny_model)
    x = tf.constant(rng.uniform(0, 255, (2, 41, 53, 3)).astype("float32"))
    graph = tf.function(lambda t: model(t), input_signature=[tf.TensorSpec([None, None, None, 3])])
    expected = model.predict(x, verbose=0)
    assert relative_error(graph(x).numpy(), expected) < 1e-6
    assert relative_error(model(x).numpy(), expected) < 1e-6


def test_pyramid_defaults_and_fcn_baseline():
    model = build_pspnet(3, "resnet50", **TINY_RESNET)  # stage 4 has 8 * 8 * 4 = 256 channels
    pools = [layer.bins for layer in model.layers if isinstance(layer, AdaptiveAveragePooling2D)]
    assert pools == [1, 2, 3, 6]
    assert model.get_layer("ppm_6_conv").filters == 64  # C / 4
    assert model.get_layer("head_conv").kernel.shape == (3, 3, 256 + 4 * 64, 16)
    assert model.get_layer("head_dropout").rate == 0.1
    fcn = build_pspnet(3, "resnet50", bins=(), **TINY_RESNET)
    assert not any(isinstance(layer, AdaptiveAveragePooling2D) for layer in fcn.layers)
    assert fcn.get_layer("head_conv").kernel.shape == (3, 3, 256, 16)


def test_parameters_equal_mmsegmentation_pspnet_r50():
    model = from_preset("pspnet_resnet50_v1c", 19, aux_head=True)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    reference = sum(p.numel() for p in PSPNet(19).parameters())
    assert trainable == reference


def test_save_and_load_keras_file(tiny_model, tmp_path, rng):
    path = str(tmp_path / "model.keras")
    tiny_model.save(path)
    loaded = keras.saving.load_model(path)
    x = rng.uniform(0, 255, (1, 37, 45, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0)["logits"], tiny_model.predict(x, verbose=0)["logits"],
                               rtol=1e-6, atol=1e-6)


def test_sync_batchnorm_switch():
    model = build_pspnet(2, "resnet18", sync_batchnorm=True, base_width=8, head_channels=8)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(layer.synchronized for layer in norms)


def test_normalisation_follows_imagenet_weights(tmp_path):
    reference = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3), alpha=0.35)
    path = str(tmp_path / "mnv2.weights.h5")
    reference.save_weights(path)
    model = build_pspnet(2, "mobilenet_v2", alpha=0.35, backbone_weights=path, head_channels=8)
    np.testing.assert_allclose(model.get_layer("normalize").mean.numpy().ravel(), [127.5] * 3)
    np.testing.assert_allclose(np.sqrt(model.get_layer("normalize").variance.numpy().ravel()), [127.5] * 3)
    default = build_pspnet(2, "mobilenet_v2", alpha=0.35, head_channels=8)
    np.testing.assert_allclose(default.get_layer("normalize").mean.numpy().ravel(), [123.675, 116.28, 103.53])


def test_presets_build_named_configurations():
    assert list_presets() == ["pspnet_mobilenet_v2", "pspnet_mobilenet_v2_mmseg", "pspnet_resnet101",
                              "pspnet_resnet101_semseg", "pspnet_resnet101_v1b", "pspnet_resnet101_v1c",
                              "pspnet_resnet18_v1b", "pspnet_resnet18_v1c", "pspnet_resnet50", "pspnet_resnet50_semseg",
                              "pspnet_resnet50_v1b", "pspnet_resnet50_v1c"]
    model = from_preset("pspnet_mobilenet_v2", 4, alpha=0.35)
    assert model.get_layer("head_conv").filters == 256 and model.output.shape[-1] == 4
    with pytest.raises(ValueError, match="Unknown preset 'pspnet_resnet51': not an architecture \\(pspnet_mobil"):
        from_preset("pspnet_resnet51", 4)


@pytest.mark.parametrize("preset,widths", [("pspnet_mobilenet_v2", {"alpha": 0.35}),
                                           ("pspnet_mobilenet_v2_mmseg", {"alpha": 0.35}),
                                           ("pspnet_resnet18_v1c", {"base_width": 4}),
                                           ("pspnet_resnet50", {"base_width": 4})])
def test_one_batchnorm_momentum_however_the_model_is_built(preset, widths):
    """PyTorch's momentum (0.9 in Keras' terms) in every architecture, built from a preset, rebuilt for training
    (init_from, sync batch norm) or re-headed."""
    from keras_pspnet.finetune import retarget
    from keras_pspnet.model import rebuild

    model = from_preset(preset, 3, aux_head=True, head_channels=8, aux_channels=4, **widths)
    for built in (model, rebuild(model, sync_batchnorm=True), retarget(model, 5, aux_head=False)):
        momenta = {layer.momentum for layer in built.layers if isinstance(layer, keras.layers.BatchNormalization)}
        assert momenta == {0.9}, (preset, momenta)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"num_classes": 0}, "num_classes must be >= 1"),
        ({"input_shape": (None, None, 4)}, "input_shape must be (height, width, 3)"),
        ({"input_shape": (64, 64, 1)}, "input_shape must be (height, width, 3)"),
        ({"backbone": "vgg16"}, "valid backbones: ['mobilenet_v2', 'resnet10', 'resnet101', 'resnet152'"),
        ({"output_stride": 4}, "output_stride must be one of (8, 16, 32)"),
        ({"bins": (1, 0)}, "Pyramid bins must be >= 1"),
        ({"input_dtype": "float64"}, "input_dtype must be"),
        ({"mean": (1, 2)}, "mean and std need 3 values"),
    ],
)
def test_impossible_settings_fail_at_build_time(kwargs, message):
    arguments = {"num_classes": 3, "backbone": "resnet18", "base_width": 8, "head_channels": 8, **kwargs}
    with pytest.raises(ValueError) as error:
        build_pspnet(**arguments)
    assert message in str(error.value)


def test_mmseg_reference_sanity():
    # The reference itself must be what mmsegmentation documents: R50-D8 has ~46.6 M parameters without aux.
    reference = PSPNet(19)
    decode = sum(p.numel() for name, p in reference.named_parameters() if not name.startswith("auxiliary_head"))
    assert 46.0e6 < decode < 47.0e6
    with torch.no_grad():
        assert reference.eval()(torch.zeros(1, 3, 33, 33), aux=False).shape == (1, 19, 33, 33)
