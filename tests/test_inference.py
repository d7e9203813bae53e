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
