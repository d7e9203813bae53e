"""Fine-tuning: init_from a pretrained name or a .keras model, classifiers re-made for the new classes."""

import keras
import numpy as np
import pytest

from keras_pspnet import from_mmseg, model_metadata, zoo
from keras_pspnet.config import load_config
from keras_pspnet.data.context import CONTEXT_INFO
from keras_pspnet.finetune import retarget, transfer_weights
from keras_pspnet.train import train
from tests.checkpoints import mmseg_checkpoint, serve, zoo_entry


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    _, path = mmseg_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.pth", 19, depth=18)
    return from_mmseg(path)


def test_retarget_and_transfer_keep_all_but_the_classifiers(source):
    target = retarget(source, 4, aux_head=True, metadata={"classes": [{"name": "a", "color": [1, 2, 3]}] * 4})
    assert target.output["logits"].shape[-1] == 4 and target.output["aux"].shape[-1] == 4
    loaded, skipped = transfer_weights(source, target)
    assert sorted(skipped) == ["aux_classifier (shapes [(1, 1, 8, 19), (19,)] -> [(1, 1, 8, 4), (4,)])",
                               "classifier (shapes [(1, 1, 16, 19), (19,)] -> [(1, 1, 16, 4), (4,)])"]
    assert len(loaded) == sum(1 for layer in source.layers if layer.weights) - 2
    for name in ("stem_1_conv", "ppm_6_bn", "head_conv", "aux_bn"):
        for ours, theirs in zip(target.get_layer(name).get_weights(), source.get_layer(name).get_weights()):
            np.testing.assert_array_equal(ours, theirs)
    assert model_metadata(target)["classes"][0]["name"] == "a"
    assert model_metadata(source)["classes"][0]["name"] == "road"  # the source is left as it was


def test_retarget_follows_the_runs_precision_and_replicas(source):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        target = retarget(source, 4, aux_head=False, sync_batchnorm=True)
    finally:
        keras.config.set_dtype_policy(previous)
    assert target.get_layer("head_conv").compute_dtype == "bfloat16" and target.output.dtype == "float32"
    assert target.get_layer("head_bn").synchronized and not isinstance(target.output, dict)


def test_init_from_a_model_saved_without_its_auxiliary_head(tmp_path, source, capsys):
    """`pspnet train` saves final.keras without the auxiliary head: a run with aux_weight > 0 fine-tuning from it
    gets a new head where build_pspnet puts it, and says so."""
    path = str(tmp_path / "final.keras")
    keras.Model(source.input, source.output["logits"]).save(path)
    config = load_config(None, [f"init_from={path}", "dataset=context", "context_size=64", "context_scenes=4",
                                "crop_size=[64, 64]", "batch_size=2", "steps=1", "val_split=null"])
    run = train(config, str(tmp_path / "run"))
    printed = capsys.readouterr()
    assert f"init_from {path}: saved without an auxiliary head; added a new one" in printed.err
    assert "aux_classifier (not in the source)" in printed.out and "aux_conv (not in the source)" in printed.out
    assert "training on one device, batch 2" in printed.out  # what `distribute: auto` chose, said first
    final = keras.saving.load_model(run["final_model"])
    assert final.get_layer("stem_3_conv").filters == 8 and final.output.shape[-1] == 4  # the source's architecture


def test_models_of_keras_pspnet_0_1_retarget(source):
    # Their output layer was Activation("linear", dtype="float32", name="logits"), without metadata.
    old = keras.models.clone_model(
        source, clone_function=lambda layer: keras.layers.Activation("linear", dtype="float32", name="logits")
        if layer.name == "logits" else layer.__class__.from_config(layer.get_config()))
    assert isinstance(old.get_layer("logits"), keras.layers.Activation) and model_metadata(old) == {}
    target = retarget(old, 3, aux_head=True, metadata={"classes": [{"name": "x", "color": [0, 0, 0]}] * 3})
    assert model_metadata(target)["classes"][0]["name"] == "x" and target.output["logits"].shape[-1] == 3


def test_training_from_a_pretrained_name(tmp_path, monkeypatch, capsys):
    _, entry = zoo_entry(tmp_path / "host", "test_pspnet_r18_finetune", depth=18)
    monkeypatch.setitem(zoo.ZOO, entry.name, entry)
    config = load_config(None, [f"init_from={entry.name}", "dataset=context", "context_size=64", "context_scenes=8",
                                "crop_size=[64, 64]", "batch_size=2", "steps=2", "val_split=null", "cache=true"])
    with serve(tmp_path / "host") as url:
        monkeypatch.setenv(zoo.MIRROR_ENV, url)
        run = train(config, str(tmp_path / "run"))
    printed = capsys.readouterr().out
    assert f"init_from {entry.name}: loaded " in printed
    assert "re-initialised: " in printed and "classifier (shapes [(1, 1, 16, 19), (19,)] -> [(1, 1, 16, 4), (4,)])" \
        in printed and "aux_classifier (shapes [(1, 1, 8, 19), (19,)] -> [(1, 1, 8, 4), (4,)])" in printed
    final = keras.saving.load_model(run["final_model"])
    assert final.get_layer("stem_3_conv").filters == 8 and final.output.shape[-1] == 4  # the zoo's architecture
    assert [c["name"] for c in model_metadata(final)["classes"]] == list(CONTEXT_INFO.class_names)


def test_init_from_another_architecture_is_refused(tmp_path, source):
    path = str(tmp_path / "source.keras")
    source.save(path)
    config = load_config(None, [f"init_from={path}", "dataset=context", "context_size=64", "context_scenes=4",
                                "crop_size=[64, 64]", "batch_size=2", "steps=1", "val_split=null",
                                "model={backbone: mobilenet_v2, alpha: 0.35, head_channels: 8}"])
    with pytest.raises(ValueError, match=f"init_from {path}: only 0 of .* layers with weights match its layers"):
        train(config, str(tmp_path / "run"), verbose=False)
    with pytest.raises(FileNotFoundError, match="pspnet_nope: model not found \\(neither a file nor a published name"):
        train(load_config(None, ["init_from=pspnet_nope", "steps=1"]), str(tmp_path / "run2"), verbose=False)
