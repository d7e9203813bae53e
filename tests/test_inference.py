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
