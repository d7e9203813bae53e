import keras
import pytest

from keras_pspnet import build_pspnet, fold_batch_norms
from tests.conftest import TINY_RESNET, randomize_batchnorm, relative_error


@pytest.mark.parametrize("backbone,kwargs", [("resnet50", TINY_RESNET), ("mobilenet_v2", {"alpha": 0.35})])
def test_folded_model_equals_original(backbone, kwargs, rng):
    model = build_pspnet(4, backbone, **kwargs)
    randomize_batchnorm(model)
    folded = fold_batch_norms(model)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    x = rng.uniform(0, 255, (2, 57, 71, 3)).astype("float32")
    assert relative_error(folded.predict(x, verbose=0), model.predict(x, verbose=0)) < 1e-5


def test_every_inference_path_takes_a_model_with_an_auxiliary_head(rng, tmp_path):
    """One output everywhere: BN folding, MAC counts, scoring and both exports drop the auxiliary branch."""
    from keras_pspnet import count_macs, inference_model, predict_scores
    from keras_pspnet.data.classes import CLASS_SETS
    from keras_pspnet.export import export_saved_model, export_tflite

    model = build_pspnet(4, "resnet18", input_shape=(33, 41, 3), base_width=8, head_channels=16, aux_channels=8,
                         aux_head=True)
    randomize_batchnorm(model)
    single = inference_model(model)
    x = rng.uniform(0, 255, (1, 33, 41, 3)).astype("float32")
    expected = single.predict(x, verbose=0)
    assert relative_error(fold_batch_norms(model).predict(x, verbose=0), expected) < 1e-5
    assert count_macs(model) == count_macs(single)
    assert relative_error(predict_scores(model, x[0]), predict_scores(single, x[0])) == 0
    saved = export_saved_model(model, str(tmp_path / "sm"), CLASS_SETS["context"], warmup_sizes=[])
    signature = __import__("tensorflow").saved_model.load(saved).signatures["logits"]
    assert sorted(signature.structured_outputs) == ["logits"]
    export_tflite(model, str(tmp_path / "m.tflite"), CLASS_SETS["context"], input_size=(33, 41))


@pytest.mark.parametrize("size", [(23, 37), (7, 5), (16, 16)])
@pytest.mark.parametrize("align_corners", [False, True])
def test_strip_resize_equals_the_model_resize_and_strips_equal_the_whole(rng, size, align_corners):
    import numpy as np

    from keras_pspnet.inference import resize_array
    from keras_pspnet.layers.resize import resize_bilinear

    array = rng.normal(size=(16, 11, 3)).astype(np.float32)
    whole = resize_array(array, size, align_corners)
    expected = resize_bilinear(array[None], size, align_corners)[0].numpy()
    np.testing.assert_allclose(whole, expected, atol=1e-5)
    strips = np.concatenate([resize_array(array, size, align_corners, (start, min(start + 3, size[0])))
                             for start in range(0, size[0], 3)])
    np.testing.assert_array_equal(strips, whole)


@pytest.fixture(scope="module")
def small_model():
    keras.utils.set_random_seed(1)
    model = build_pspnet(5, "resnet18", base_width=8, head_channels=16)
    randomize_batchnorm(model)
    return model


@pytest.mark.parametrize("protocol", [
    dict(style="mmseg", resize=(90, 40), scales=(0.75, 1.25), flip=True),
    dict(style="semseg", resize=60, mode="slide", crop=(33, 33), flip=True),
    dict(style="semseg"),
    dict(style="mmseg", flip=True),  # two maps at the image's size: softmax in place, row strip by row strip
])
def test_labels_strip_by_strip_equal_the_argmax_of_the_scores(small_model, rng, monkeypatch, protocol):
    import numpy as np

    from keras_pspnet import inference
    from keras_pspnet.protocol import TestProtocol

    image = rng.uniform(0, 255, (61, 45, 3)).astype(np.float32).round()
    protocol = TestProtocol(**protocol)
    scores = inference.predict_scores(small_model, image, protocol)
    monkeypatch.setattr(inference, "STRIP_VALUES", 45 * 5 * 4)  # strips of 4 rows, the last one shorter
    np.testing.assert_array_equal(inference.predict_scores(small_model, image, protocol), scores)
    np.testing.assert_array_equal(inference.predict_labels(small_model, image, protocol), scores.argmax(-1))


@pytest.mark.parametrize("style", ["semseg", "mmseg"])
def test_whole_image_beyond_max_side_runs_in_windows_of_it_in_batches(small_model, rng, style):
    import numpy as np

    from keras_pspnet.inference import predict_scores
    from keras_pspnet.protocol import TestProtocol

    image = rng.uniform(0, 255, (50, 70, 3)).astype(np.float32).round()
    whole = TestProtocol(style)
    windows = TestProtocol(style, mode="slide", crop=(40, 40))  # stride 27x27: 2x3 windows
    expected = predict_scores(small_model, image, windows, window_batch=1)
    np.testing.assert_allclose(predict_scores(small_model, image, whole, max_side=40), expected, atol=1e-6)
    np.testing.assert_allclose(predict_scores(small_model, image, windows, window_batch=4), expected, atol=1e-6)
    assert not np.allclose(predict_scores(small_model, image, whole), expected, atol=1e-3)  # the limit matters


class _MeanShift:
    """A stand-in model whose output depends on the whole window: pixel values plus the window's mean."""

    num_classes, mean = 3, (0.0, 0.0, 0.0)

    def predict_on_batch(self, windows):
        return windows + windows.mean(axis=(1, 2, 3), keepdims=True)


@pytest.mark.parametrize("window_batch", [1, 2, None])
def test_window_bands_equal_the_whole_average_and_stay_a_band(rng, window_batch):
    import numpy as np

    from keras_pspnet.inference import _window_bands, _windows

    image = rng.uniform(0, 255, (200, 37, 3)).astype(np.float32)
    crop, stride = (30, 20), (20, 13)
    total, count = np.zeros((200, 37, 3)), np.zeros((200, 37, 1))
    for y, x in _windows(200, 37, crop, stride):  # the plain average over windows
        window = image[y : y + 30, x : x + 20].astype(np.float64)
        total[y : y + 30, x : x + 20] += window + window.mean()
        count[y : y + 30, x : x + 20] += 1
    bands = [(start, band.copy()) for start, band in  # a band is valid until the next is asked for
             _window_bands(_MeanShift(), image, crop, stride, softmax=False, flip=False, window_batch=window_batch)]
    assert [start for start, _ in bands] == list(np.cumsum([0] + [len(band) for _, band in bands[:-1]]))
    np.testing.assert_allclose(np.concatenate([band for _, band in bands]), total / count, rtol=1e-5)
    assert max(len(band) for _, band in bands) <= 30 + 20  # never more than a window's height and a stride


def test_published_protocols_ignore_max_side(small_model, rng):
    import numpy as np

    from keras_pspnet.inference import predict_scores
    from keras_pspnet.protocol import mmseg_protocol

    image = rng.uniform(0, 255, (50, 70, 3)).astype(np.float32).round()
    protocol = mmseg_protocol((80, 60))  # whole image, resized to 57x80
    np.testing.assert_array_equal(predict_scores(small_model, image, protocol, max_side=40),
                                  predict_scores(small_model, image, protocol))


def test_labels_of_a_tall_image_never_hold_its_probabilities(rng):
    """Peak memory of predict_labels stays at a band plus a batch of windows, far below [H, W, classes]."""
    import tracemalloc

    import numpy as np

    from keras_pspnet.inference import predict_labels
    from keras_pspnet.protocol import TestProtocol

    class ManyClasses(_MeanShift):
        num_classes = 50

        def predict_on_batch(self, windows):
            scores = np.repeat(super().predict_on_batch(windows)[..., :1], 50, axis=-1)
            scores *= np.linspace(0.5, 1.5, 50, dtype=np.float32)
            return scores

    image = rng.uniform(0, 255, (1200, 60, 3)).astype(np.float32)
    whole = 1200 * 60 * 50 * 4  # bytes of the probabilities at the image's size
    tracemalloc.start()
    labels = predict_labels(ManyClasses(), image, TestProtocol(), max_side=40)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert labels.shape == (1200, 60) and peak < whole / 5, (peak, whole)
