import pytest

from keras_pspnet.config import load_config


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("dataset: context\nmodel:\n  backbone: resnet18\n  stages: 3\nsteps: 10\n")
    config = load_config(str(path), ["model.bins=[1, 2]", "batch_size=4", "crop_size=[64, 96]", "augment.flip=false"])
    assert config.model == {"backbone": "resnet18", "stages": 3, "bins": [1, 2]}
    assert config.batch_size == 4 and config.crop_size == (64, 96) and config.augment == {"flip": False}
    assert config.steps == 10 and config.learning_rate == 0.01  # paper defaults where the file is silent


@pytest.mark.parametrize("text,overrides,message", [
    ("stepz: 3\n", [], "c.yaml: unknown key(s) ['stepz']; valid keys: ['augment', 'aux_weight'"),
    ("", ["optimizer=rmsprop"], "optimizer must be one of ['sgd', 'adam']"),
    ("", ["augment.zoom=2"], "unknown augment key(s) ['zoom']"),
    ("", ["steps"], "expected key=value"),
    ("steps: [\n", [], "c.yaml: not valid YAML"),
    ("", ["batch_size=0"], "batch_size must be >= 1"),
])
def test_bad_configs_are_clear(tmp_path, text, overrides, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as error:
        load_config(str(path), overrides)
    assert message in str(error.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml: cannot read config"):
        load_config(str(tmp_path / "nope.yaml"))


def test_shipped_configs_load():
    import glob
    import os

    paths = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "training", "configs", "*.yaml")))
    names = [os.path.basename(p) for p in paths]
    assert names == ["ade20k_pspnet_r101.yaml", "ade20k_pspnet_r50.yaml", "cityscapes_pspnet_r101.yaml",
                     "context_fcn.yaml", "context_pspnet.yaml"]
    configs = {name: load_config(path) for name, path in zip(names, paths)}
    assert configs["context_fcn.yaml"].model["bins"] == [] and configs["context_pspnet.yaml"].model["bins"]
    fcn, psp = configs["context_fcn.yaml"].to_dict(), configs["context_pspnet.yaml"].to_dict()
    assert {k for k in fcn if fcn[k] != psp[k]} == {"model"}  # the baseline differs only by the pyramid
    assert configs["ade20k_pspnet_r50.yaml"].aux_weight == 0.4 and configs["ade20k_pspnet_r50.yaml"].lr_power == 0.9
