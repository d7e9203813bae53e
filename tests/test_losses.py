import numpy as np

from keras_pspnet.losses import SegmentationCrossEntropy


def test_cross_entropy_averages_over_labelled_pixels(rng):
    logits = rng.normal(size=(2, 5, 6, 4)).astype(np.float32)
    labels = rng.integers(0, 4, (2, 5, 6)).astype(np.uint8)
    labels[0, :2] = 255
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    keep = labels != 255
    expected = -np.take_along_axis(log_softmax, np.where(keep, labels, 0)[..., None].astype(int), -1)[..., 0][keep]
    np.testing.assert_allclose(float(SegmentationCrossEntropy()(labels, logits)), expected.mean(), rtol=1e-5)


def test_all_ignored_gives_zero(rng):
    logits = rng.normal(size=(1, 3, 3, 2)).astype(np.float32)
    assert float(SegmentationCrossEntropy()(np.full((1, 3, 3), 255, np.uint8), logits)) == 0.0
