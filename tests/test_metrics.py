import keras
import numpy as np
import pytest

from keras_pspnet.data.context import context_source
from keras_pspnet.data.info import DatasetInfo
from keras_pspnet.evaluate import evaluate
from keras_pspnet.inference import predict_scores
from keras_pspnet.metrics import format_table, scores
from keras_pspnet.protocol import TestProtocol


def numpy_scores(labels, predictions, num_classes):
    keep = labels != 255
    labels, predictions = labels[keep], predictions[keep]
    ious, accs = [], []
    for c in range(num_classes):
        tp = np.sum((labels == c) & (predictions == c))
        union = np.sum((labels == c) | (predictions == c))
        ious.append(tp / union if union else np.nan)
        accs.append(tp / np.sum(labels == c) if np.sum(labels == c) else np.nan)
    return np.nanmean(ious), np.mean(labels == predictions), np.nanmean(accs), ious


def pointwise_model(num_classes=4, seed=0):
    """Logits depend on each pixel alone, so every inference mode must agree with the whole image."""
    inputs = keras.Input((None, None, 3))
    outputs = keras.layers.Conv2D(num_classes, 1, kernel_initializer=keras.initializers.RandomNormal(0, 0.05, seed))(
        keras.layers.Rescaling(1 / 255.0)(inputs))
    return keras.Model(inputs, outputs)


def test_evaluate_equals_numpy_at_full_resolution():
    source = context_source("validation", num_scenes=6, size=96)
    info = DatasetInfo("context", ("water", "road", "boat", "car"), ((0, 0, 0),) * 4)
    model = pointwise_model()
    results = evaluate(model, source, info, progress=False)
    labels, predictions = [], []
    for example in source:
        labels.append(example["mask"].numpy().ravel())
        predictions.append(model.predict(example["image"].numpy()[None].astype("float32"), verbose=0)[0]
                           .argmax(-1).ravel())
    miou, pixel_acc, mean_acc, ious = numpy_scores(np.concatenate(labels), np.concatenate(predictions), 4)
    assert results["images"] == 6
    assert results["mIoU"] == pytest.approx(miou) and results["pixel_accuracy"] == pytest.approx(pixel_acc)
    assert results["mean_accuracy"] == pytest.approx(mean_acc)
    assert [results["per_class_iou"][n] for n in info.class_names] == pytest.approx(ious, nan_ok=True)
    assert np.sum(results["confusion"]) == sum(len(x) for x in labels)


def test_scores_skip_absent_classes_and_ignore_label(rng):
    labels = rng.integers(0, 3, 500)
    labels[:50] = 255
    predictions = np.where(rng.uniform(size=500) < 0.7, labels, rng.integers(0, 3, 500)) % 3
    keep = labels != 255
    confusion = np.zeros((4, 4), np.int64)  # class 3 never occurs
    np.add.at(confusion, (labels[keep], predictions[keep]), 1)
    result = scores(confusion, ["a", "b", "c", "d"])
    miou, pixel_acc, mean_acc, _ = numpy_scores(labels, predictions, 3)
    assert result["mIoU"] == pytest.approx(miou) and result["per_class_iou"]["d"] is None
    assert result["pixel_accuracy"] == pytest.approx(pixel_acc) and result["mean_accuracy"] == pytest.approx(mean_acc)
    assert "mIoU" in format_table(result) and "   -" in format_table(result)


def semseg_test_scores(labels, predictions, num_classes):
    """hszhao/semseg tool/test.py's cal_acc: intersectionAndUnion per class, then IoU and accuracy with 1e-10 in
    the denominators, plain means over all classes."""
    keep = labels != 255
    labels, predictions = labels[keep], predictions[keep]
    intersection = np.bincount(labels[labels == predictions], minlength=num_classes).astype(float)
    area_label = np.bincount(labels, minlength=num_classes).astype(float)
    area_prediction = np.bincount(predictions, minlength=num_classes).astype(float)
    union = area_label + area_prediction - intersection
    return np.mean(intersection / (union + 1e-10)), np.mean(intersection / (area_label + 1e-10))


def test_the_authors_mean_counts_absent_classes_as_zero(rng):
    labels = rng.integers(0, 3, 500)
    labels[:50] = 255
    predictions = np.where(rng.uniform(size=500) < 0.7, labels, rng.integers(0, 3, 500)) % 3
    predictions[60:70] = 4  # class 4 predicted, never labelled; class 3 neither
    keep = labels != 255
    confusion = np.zeros((5, 5), np.int64)
    np.add.at(confusion, (labels[keep], predictions[keep]), 1)
    authors = scores(confusion, list("abcde"), "zero")
    miou, mean_acc = semseg_test_scores(labels, predictions, 5)
    assert authors["mIoU"] == pytest.approx(miou, abs=1e-9) and authors["mean_accuracy"] == pytest.approx(mean_acc)
    skipped = scores(confusion, list("abcde"))  # mmsegmentation: class 3 (absent) left out, class 4 counts 0
    assert skipped["mIoU"] == pytest.approx(authors["mIoU"] * 5 / 4)
    assert "the means count them as 0, as the PSPNet authors' evaluation" in format_table(authors)
    assert TestProtocol("semseg", 512, "slide", (8, 8)).absent_classes == "zero"
    assert TestProtocol().absent_classes == TestProtocol("mmseg", (64, 32)).absent_classes == "skip"


def test_evaluate_counts_absent_classes_as_its_protocol_reference():
    source = context_source("validation", num_scenes=2, size=64)
    info = DatasetInfo("context", ("water", "road", "boat", "car", "absent"), ((0, 0, 0),) * 5)
    model = pointwise_model(5)
    native, authors = (evaluate(model, source, info, protocol, progress=False)
                       for protocol in (TestProtocol(), TestProtocol("semseg", 64, "slide", (48, 48))))
    assert native["absent_classes"] == "skip" and authors["absent_classes"] == "zero"
    confusion = np.asarray(authors["confusion"])
    assert authors["mIoU"] == pytest.approx(scores(confusion, absent_classes="zero")["mIoU"])
    assert authors["per_class_iou"]["absent"] is None and authors["mIoU"] < scores(confusion)["mIoU"]


@pytest.mark.parametrize("mode,crop,scales,flip", [("slide", (32, 24), (1.0,), False),
                                                   ("slide", (64, 64), (1.0,), True),
                                                   ("whole", None, (1.0,), True)])
def test_inference_modes_agree_for_a_pointwise_model(rng, mode, crop, scales, flip):
    model = pointwise_model()
    image = rng.uniform(0, 255, (50, 71, 3)).astype(np.float32)
    whole = predict_scores(model, image)
    protocol = TestProtocol(mode=mode, crop=crop, scales=scales, flip=flip)
    np.testing.assert_allclose(predict_scores(model, image, protocol), whole, atol=1e-5)


def test_multi_scale_returns_input_resolution(rng):
    model = pointwise_model()
    image = rng.uniform(0, 255, (40, 52, 3)).astype(np.float32)
    probabilities = predict_scores(model, image, TestProtocol(scales=(0.5, 0.75, 1.0, 1.25), flip=True))
    assert probabilities.shape == (40, 52, 4)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="needs a crop size"):
        TestProtocol(mode="slide")
