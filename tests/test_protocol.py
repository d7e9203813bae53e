"""Test protocols equal the references' own test code (tests/protocol_reference.py) on a real small PSPNet."""

import keras
import numpy as np
import pytest

from keras_pspnet import build_pspnet, predict_scores
from keras_pspnet.protocol import MULTI_SCALES, SEMSEG_PROTOCOLS, TestProtocol, mmseg_protocol, semseg_protocol
from tests.conftest import randomize_batchnorm
from tests.protocol_reference import mmseg_predict, semseg_predict


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    model = build_pspnet(5, "resnet18", base_width=8, head_channels=16, align_corners=True)
    randomize_batchnorm(model)
    return model


def net_of(model):
    return lambda images: model.predict_on_batch(images)


def assert_same_scores(ours, theirs):
    np.testing.assert_allclose(ours, theirs, atol=1e-4)  # float32 here, float64 there
    top2 = np.sort(theirs, axis=-1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 1e-3  # the argmax of near-ties may go either way in float32
    np.testing.assert_array_equal(ours.argmax(-1)[clear], theirs.argmax(-1)[clear])


def test_sizes_follow_each_reference():
    # mmseg: mmcv.rescale_size of the (long, short) scale: Cityscapes 1024x2048 -> 1025x2049 (the 769 models'
    # 8k+1 sizes); a VOC 375x500 image -> 512x683; multi-scale multiplies the scale tuple first.
    assert mmseg_protocol((2049, 1025)).scaled_size(1024, 2048, 1.0) == (1025, 2049)
    assert mmseg_protocol((2048, 512)).scaled_size(375, 500, 1.0) == (512, 683)
    assert mmseg_protocol((2048, 512)).scaled_size(375, 500, 0.75) == (384, 512)
    # semseg: long side to round(scale * base_size) with Python's rounding (round(0.5) == 0)
    assert SEMSEG_PROTOCOLS["ade20k"].scaled_size(375, 500, 1.0) == (384, 512)
    assert SEMSEG_PROTOCOLS["ade20k"].scaled_size(500, 375, 0.75) == (384, 288)
    assert SEMSEG_PROTOCOLS["cityscapes"].scaled_size(1024, 2048, 0.5) == (512, 1024)
    assert TestProtocol().scaled_size(37, 50, 1.25) == (46, 62)  # native: relative to the image


# (41, 57) at long side 72: 52x72, windows of 25 at stride 17 (2/3); (30, 21) at 0.5 and 0.75: smaller than the
# 41x41 window, padded with the mean colour.
@pytest.mark.parametrize("size,crop,scales", [((41, 57), 25, (1.0,)), ((30, 21), 41, MULTI_SCALES[:3])])
def test_semseg_protocol_equals_the_authors_test_code(model, rng, size, crop, scales):
    image = rng.uniform(0, 255, (*size, 3)).astype(np.float32)
    protocol = TestProtocol("semseg", 72, "slide", (crop, crop), scales=scales, flip=True)  # 8k+1 crops as theirs
    ours = predict_scores(model, image, protocol)
    mean = model.get_layer("normalize").mean.numpy()
    theirs = semseg_predict(net_of(model), image, 5, 72, (crop, crop), scales, mean)
    assert_same_scores(ours, theirs)


@pytest.mark.parametrize("crop,flip,scales", [(None, False, (1.0,)), ((25, 33), False, (1.0,)),
                                              ((25, 33), True, (0.5, 1.0, 1.25))])
def test_mmseg_protocol_equals_mmsegmentation_test_code(model, rng, crop, flip, scales):
    image = rng.uniform(0, 255, (37, 52, 3)).astype(np.float32).round()
    protocol = TestProtocol("mmseg", (80, 48), "slide" if crop else "whole", crop, (17, 21) if crop else None,
                            scales=scales, flip=flip)
    ours = predict_scores(model, image, protocol)
    theirs = mmseg_predict(net_of(model), image, 5, (80, 48), scales, flip, crop, (17, 21) if crop else None,
                           align_corners=True)
    assert_same_scores(ours, theirs)


def test_protocols_round_trip_and_refuse_nonsense():
    for protocol in [*SEMSEG_PROTOCOLS.values(), mmseg_protocol((2049, 1025), (769, 769), (513, 513)), TestProtocol()]:
        assert TestProtocol.from_dict(protocol.to_dict()) == protocol
    assert semseg_protocol(512, (473, 473)).window_stride == (316, 316)  # ceil(2/3 * 473), as the authors'
    assert mmseg_protocol((2049, 1025), (769, 769), (513, 513)).describe() == \
        "mmseg: keep-ratio resize to 2049x1025, slide 769x769 stride 513x513"
    with pytest.raises(ValueError, match="style must be one of"):
        TestProtocol("caffe")
    with pytest.raises(ValueError, match="unknown test protocol key"):
        TestProtocol.from_dict({"style": "mmseg", "tile": 3})
    with pytest.raises(ValueError, match="crop must be"):
        TestProtocol(mode="slide", crop=(0, 5))
    with pytest.raises(ValueError, match="exceeds the crop"):
        TestProtocol(mode="slide", crop=(20, 20), stride=(10, 21))
