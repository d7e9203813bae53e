import keras
import numpy as np
import pytest
import tensorflow as tf
import torch

from keras_pspnet.layers import AdaptiveAveragePooling2D, ConcatConv2D, ResizeLike, adaptive_pool_matrix
from tests.conftest import relative_error


def torch_adaptive_pool(x, bins):
    pooled = torch.nn.AdaptiveAvgPool2d(bins)(torch.from_numpy(x).permute(0, 3, 1, 2))
    return pooled.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("height,width", [(13, 17), (6, 6), (60, 60), (7, 5), (4, 3)])
@pytest.mark.parametrize("bins", [1, 2, 3, 6])
def test_adaptive_pooling_equals_pytorch(rng, height, width, bins):
    x = rng.normal(size=(2, height, width, 3)).astype("float32")
    out = AdaptiveAveragePooling2D(bins)(x)
    np.testing.assert_allclose(np.asarray(out), torch_adaptive_pool(x, bins), rtol=1e-5, atol=1e-6)


def test_pool_matrix_bins_overlap_when_size_does_not_divide():
    matrix = np.asarray(adaptive_pool_matrix(5, 3))
    # PyTorch bins over 5 cells: [0, 2), [1, 4), [3, 5)
    expected = np.array([[1 / 2, 1 / 2, 0, 0, 0], [0, 1 / 3, 1 / 3, 1 / 3, 0], [0, 0, 0, 1 / 2, 1 / 2]])
    np.testing.assert_allclose(matrix, expected, rtol=1e-6)


def test_pooling_and_resize_with_unknown_size_in_graph_mode(rng):
    pool, resize = AdaptiveAveragePooling2D(6), ResizeLike()
    graph = tf.function(lambda x: resize([pool(x), x]), input_signature=[tf.TensorSpec([None, None, None, 4])])
    for shape in [(1, 13, 17, 4), (2, 31, 9, 4)]:
        x = rng.normal(size=shape).astype("float32")
        pooled = torch.from_numpy(torch_adaptive_pool(x, 6)).permute(0, 3, 1, 2)
        expected = torch.nn.functional.interpolate(pooled, size=shape[1:3], mode="bilinear", align_corners=False)
        np.testing.assert_allclose(graph(x).numpy(), expected.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", [(23, 31), (5, 4)])
def test_resize_like_equals_pytorch_bilinear(rng, size):
    x = rng.normal(size=(1, 9, 12, 3)).astype("float32")
    out = ResizeLike()([x, np.zeros((1, *size, 1), "float32")])
    expected = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=size, mode="bilinear",
                                               align_corners=False)
    np.testing.assert_allclose(np.asarray(out), expected.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-6)


def test_concat_conv_equals_concatenate_then_conv(rng):
    inputs = [rng.normal(size=(2, 7, 9, c)).astype("float32") for c in (10, 3, 4)]
    layer = ConcatConv2D(5, 3, padding="same", use_bias=True, chunk=4)  # chunks 4+4+2, 3, 4
    out = layer(inputs)
    plain = keras.layers.Conv2D(5, 3, padding="same")
    plain.build((None, 7, 9, 17))
    kernel = rng.normal(size=(3, 3, 17, 5)).astype("float32")
    bias = rng.normal(size=5).astype("float32")
    layer.set_weights([kernel, bias])
    plain.set_weights([kernel, bias])
    assert relative_error(layer(inputs), plain(np.concatenate(inputs, -1))) < 1e-6
    assert out.shape == (2, 7, 9, 5)
    clone = ConcatConv2D.from_config(layer.get_config())
    assert clone.chunk == 4 and clone.filters == 5
