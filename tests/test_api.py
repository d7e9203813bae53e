"""The front API through public names only, one test per Keras habit: `from_preset` (architectures, published
models, .keras files, re-heading), `compile()` defaults, `fit` on one mask per image, `load_dataset` for a folder.
The README's and the site's examples run in tests/test_docs.py."""

import keras
import numpy as np
import pytest

import keras_pspnet
from tests.checkpoints import zoo_entry
from tests.conftest import TINY_RESNET
from tests.test_data import write_folder

PUBLISHED = "pspnet_r50-d8_4xb4-160k_ade20k-512x512"  # a registry name; the tests register a tiny file under it
SMALL = {"backbone": "resnet10", "stages": 3, "base_width": 8, "head_channels": 16, "aux_channels": 8}


@pytest.fixture
def published(tmp_path, monkeypatch):
    """PUBLISHED served from a local mirror folder: a tiny R-18 checkpoint with 19 classes and an auxiliary head."""
    from keras_pspnet import registry

    reference, entry = zoo_entry(tmp_path / "host", PUBLISHED, depth=18)
    monkeypatch.setitem(registry.ZOO, PUBLISHED, entry)
    monkeypatch.setenv("KERAS_PSPNET_MIRROR", str(tmp_path / "host"))
    return entry


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("my_data")
    write_folder(root, "train", count=6, size=(48, 40), classes=["sky", "road", "car"])
    write_folder(root, "validation", count=3, size=(44, 36))
    return root


def _weights(model, name):
    return model.get_layer(name).get_weights()


def test_from_preset_loads_published_weights_and_reheads_them(published, tmp_path, capsys):
    source = keras_pspnet.from_preset(PUBLISHED, cache_dir=str(tmp_path / "cache"))
    assert source.output.shape[-1] == 19 and not isinstance(source.output, dict)
    assert isinstance(source, keras_pspnet.PSPNet)  # compile() has its defaults on every path
    assert keras_pspnet.model_metadata(source)["classes"][0]["name"] == "road"  # its dataset's classes
    # the old name answers the same
    same = keras_pspnet.from_pretrained(PUBLISHED, cache_dir=str(tmp_path / "cache"))
    np.testing.assert_array_equal(_weights(same, "classifier")[0], _weights(source, "classifier")[0])

    tuned = keras_pspnet.from_preset(PUBLISHED, classes=["sky", "road", "car"], aux_head=True,
                                     cache_dir=str(tmp_path / "cache"))
    said = capsys.readouterr().err
    assert isinstance(tuned, keras_pspnet.PSPNet) and tuned.output["logits"].shape[-1] == 3
    assert f"{PUBLISHED}: loaded " in said and "re-initialised: " in said
    assert "classifier (shapes [(1, 1, 16, 19), (19,)] -> [(1, 1, 16, 3), (3,)])" in said
    for name in ("stem_1_conv", "conv5_block2_2_bn", "ppm_6_conv", "head_conv"):  # everything but the classifiers
        for ours, theirs in zip(_weights(tuned, name), _weights(source, name)):
            np.testing.assert_array_equal(ours, theirs)
    assert [c["name"] for c in keras_pspnet.model_metadata(tuned)["classes"]] == ["sky", "road", "car"]
    # re-headed by count: generic names, and no published mIoU or test protocol that no longer describe it
    counted = keras_pspnet.from_preset(PUBLISHED, num_classes=2, cache_dir=str(tmp_path / "cache"))
    assert isinstance(counted, keras_pspnet.PSPNet) and counted.output.shape[-1] == 2
    assert keras_pspnet.model_metadata(counted) == {"classes": [{"name": "class_0", "color": [0, 0, 0]},
                                                                {"name": "class_1", "color": [128, 0, 0]}]}
    assert "protocol" in keras_pspnet.model_metadata(source) and "source" in keras_pspnet.model_metadata(source)

    # the registry's architecture with random weights (no download)
    bare = keras_pspnet.from_preset("mobilenet-v2-d8_pspnet_4xb4-160k_ade20k-512x512", load_weights=False)
    assert bare.output.shape[-1] == 150 and bare.get_layer("ppm_1_conv").filters == 512  # mmseg's head on 320 ch.
    assert keras_pspnet.model_metadata(bare)["classes"][0]["name"] == "wall"


def test_from_preset_takes_architectures_and_keras_files(tmp_path, capsys):
    model = keras_pspnet.from_preset("pspnet_resnet18_v1c", num_classes=5, aux_head=True, **TINY_RESNET)
    assert isinstance(model, keras_pspnet.PSPNet) and model.output["aux"].shape[-1] == 5
    path = str(tmp_path / "mine.keras")
    model.save(path)
    assert keras_pspnet.from_preset(path).output.shape[-1] == 5  # as saved, without the auxiliary head
    tuned = keras_pspnet.from_preset(path, num_classes=2, aux_head=True)
    assert tuned.output["aux"].shape[-1] == 2 and "re-initialised: aux_classifier" in capsys.readouterr().err
    for ours, theirs in zip(_weights(tuned, "conv4_block2_1_conv"), _weights(model, "conv4_block2_1_conv")):
        np.testing.assert_array_equal(ours, theirs)
    fresh = keras_pspnet.from_preset(path, load_weights=False)
    assert not np.array_equal(_weights(fresh, "head_conv")[0], _weights(model, "head_conv")[0])

    with pytest.raises(ValueError, match="pass num_classes"):
        keras_pspnet.from_preset("pspnet_resnet50")
    with pytest.raises(ValueError, match="Unknown preset 'pspnet_r51'.*pretrained list"):
        keras_pspnet.from_preset("pspnet_r51")
    with pytest.raises(ValueError, match="base_width would change the architecture"):
        keras_pspnet.from_preset(path, base_width=4)
    with pytest.raises(ValueError, match="3 names, but num_classes=4"):
        keras_pspnet.from_preset("pspnet_resnet50", num_classes=4, classes=["a", "b", "c"])
    assert PUBLISHED in keras_pspnet.list_presets(with_weights=True)


@pytest.mark.parametrize("aux_head", [False, True])
def test_compile_defaults_train_on_one_mask_per_image(aux_head, tmp_path):
    keras.utils.set_random_seed(0)
    model = keras_pspnet.from_preset("pspnet_resnet18_v1c", num_classes=3, aux_head=aux_head, **SMALL)
    model.compile(run_eagerly=True)  # the defaults, run eagerly: tracing would cost this small model 20 s
    optimizer = model.optimizer
    assert (optimizer.momentum, optimizer.l2) == (0.9, 1e-4)
    assert optimizer.lr_multipliers and set(optimizer.lr_multipliers.values()) == {10.0}  # pyramid and heads
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (4, 33, 33, 3)).astype("float32")
    masks = rng.integers(0, 3, (4, 33, 33)).astype("uint8")
    masks[:, :4] = 255  # ignored
    history = model.fit(images, masks, batch_size=2, epochs=2, verbose=0)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.0, abs=1e-9)  # poly to 0 over the fit
    assert np.isfinite(history.history["loss"]).all()
    results = model.evaluate(images, masks, batch_size=2, return_dict=True, verbose=0)
    predicted = keras_pspnet.inference_model(model).predict(images, verbose=0).argmax(-1)
    metric = keras.metrics.MeanIoU(3, ignore_class=255)
    metric.update_state(masks, predicted)
    assert results["mean_iou"] == pytest.approx(float(metric.result()), abs=1e-6)
    if aux_head:  # the loss is the segmentation's plus 0.4 x the auxiliary head's
        assert results["loss"] == pytest.approx(results["logits_loss"] + 0.4 * results["aux_loss"], rel=1e-5)
    path = str(tmp_path / "compiled.keras")
    model.save(path)
    again = keras.saving.load_model(path)
    assert again.evaluate(images, masks, batch_size=2, return_dict=True, verbose=0)["mean_iou"] == pytest.approx(
        results["mean_iou"], abs=1e-6)
    with pytest.raises(ValueError, match="sample_weight and class_weight are not supported .* to 255"):
        model.fit(images, masks, sample_weight=np.ones(4), epochs=1, verbose=0)


class _Rates(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.rates = []

    def on_train_batch_begin(self, batch, logs=None):
        self.rates.append(float(self.model.optimizer.learning_rate))


def test_a_resumed_fit_goes_on_along_the_same_learning_rate_curve(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (4, 33, 33, 3)).astype("float32")
    masks = rng.integers(0, 3, (4, 33, 33)).astype("uint8")
    whole, first, second = _Rates(), _Rates(), _Rates()
    model = keras_pspnet.from_preset("pspnet_resnet18_v1c", num_classes=3, **SMALL)
    model.compile(run_eagerly=True)
    model.fit(images, masks, batch_size=2, epochs=3, shuffle=False, verbose=0, callbacks=[whole])
    model = keras_pspnet.from_preset("pspnet_resnet18_v1c", num_classes=3, **SMALL)
    model.compile(run_eagerly=True)
    model.fit(images, masks, batch_size=2, epochs=1, shuffle=False, verbose=0, callbacks=[first])
    model.save(str(tmp_path / "epoch1.keras"))
    resumed = keras.saving.load_model(str(tmp_path / "epoch1.keras"))  # its optimizer's step count with it
    resumed.fit(images, masks, batch_size=2, epochs=3, initial_epoch=1, shuffle=False, verbose=0, callbacks=[second])
    expected = [0.01 * (1 - k / 6) ** 0.9 for k in range(6)]  # poly over the 3 epochs x 2 steps
    np.testing.assert_allclose(whole.rates, expected, rtol=1e-5)
    np.testing.assert_allclose(first.rates, [0.01, 0.01 * 0.5 ** 0.9], rtol=1e-5)  # a fit of its own: 1 epoch
    np.testing.assert_allclose(second.rates, expected[2:], rtol=1e-5)


def test_load_dataset_gives_fit_its_batches(folder):
    train, info = keras_pspnet.load_dataset(str(folder), "train", batch_size=2, crop_size=(33, 33), with_info=True)
    assert info.class_names == ("sky", "road", "car") and int(train.cardinality()) == 3  # full batches of 6 images
    first, second = ([m.numpy() for _, m in train] for _ in range(2))
    assert all(m.shape == (2, 33, 33) for m in first) and any((a != b).any() for a, b in zip(first, second))
    images, _ = next(iter(train))
    assert images.dtype == "float32" and float(images.numpy().max()) <= 255

    val = keras_pspnet.load_dataset(str(folder), "validation", batch_size=2)
    batches = list(val)
    assert [tuple(m.shape) for _, m in batches] == [(2, 36, 44), (1, 36, 44)]  # every image once, unaugmented
    again = [m.numpy() for _, m in val]
    assert all((a == b.numpy()).all() for a, (_, b) in zip(again, batches))  # the same each time
    with pytest.raises(ValueError, match="crop_size: crops are drawn by the augmentation"):
        keras_pspnet.load_dataset(str(folder), "validation", batch_size=1, crop_size=(33, 33), augment=False)
    with pytest.raises(ValueError, match="augment: expected True, False, 'semseg' or 'mmseg'"):
        keras_pspnet.load_dataset(str(folder), "train", batch_size=1, augment="strong")
    with pytest.raises(ValueError, match="train: fewer images than batch_size 8"):
        keras_pspnet.load_dataset(str(folder), "train", batch_size=8)


@pytest.mark.parametrize("preset,widths", [("pspnet_resnet18_v1c", TINY_RESNET),
                                           ("pspnet_mobilenet_v2", {"alpha": 0.35, "head_channels": 8,
                                                                    "aux_channels": 4})])
def test_a_model_saved_without_its_auxiliary_head_gets_one_to_fine_tune(preset, widths, tmp_path, capsys):
    """`pspnet train` saves its final model for deployment (no auxiliary head): `from_preset(file, aux_head=True)`
    adds a fresh one where build_pspnet puts it, so the result is the architecture built with one."""
    built = keras_pspnet.from_preset(preset, num_classes=3, aux_head=True, **widths)
    path = str(tmp_path / "deployed.keras")
    keras_pspnet.inference_model(built).save(path)
    added = keras_pspnet.from_preset(path, aux_head=True)
    assert "added a new one (randomly initialised)" in capsys.readouterr().err
    assert isinstance(added, keras_pspnet.PSPNet) and set(added.output) == {"logits", "aux"}
    for layer in built.layers:  # the same graph: with the built model's weights it computes the same outputs
        if layer.weights:
            added.get_layer(layer.name).set_weights(layer.get_weights())
    pixels = np.random.default_rng(0).uniform(0, 255, (1, 33, 33, 3)).astype("float32")
    for name in ("logits", "aux"):
        np.testing.assert_allclose(added.predict(pixels, verbose=0)[name], built.predict(pixels, verbose=0)[name],
                                   atol=1e-5)
