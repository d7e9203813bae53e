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
    with pytest.raises(FileNotFoundError, match="nope.yaml: config not found"):
        load_config(str(tmp_path / "nope.yaml"))


BILLION_LAUGHS = "\n".join(["a: &a [x, x, x, x, x, x, x, x, x]"] + [
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)] + ["crop_size: *i"])


def test_hostile_config_files_are_refused_in_one_line(tmp_path):
    """663 bytes of nested YAML anchors stand for 9**9 values: the error message used to repr them (8.5 GB)."""
    path = tmp_path / "laughs.yaml"
    path.write_text(BILLION_LAUGHS)
    assert len(BILLION_LAUGHS) < 700
    with pytest.raises(ValueError, match=r"laughs.yaml: expands to more than 10,000 values"):
        load_config(str(path))
    with pytest.raises(ValueError, match="/dev/zero: a pipe, device or socket"):
        load_config("/dev/zero")
    with pytest.raises(ValueError, match=r"^config: model: expected a mapping, got \[\[\[\[...\]\]\]\]$"):
        load_config(None, ["model=" + "[" * 100 + "]" * 100])


def test_shipped_configs_load_and_state_their_reference():
    import glob
    import os

    paths = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "training", "configs", "*.yaml")))
    names = [os.path.basename(p) for p in paths]
    assert names == ["ade20k_pspnet_r101.yaml", "ade20k_pspnet_r50.yaml", "ade20k_pspnet_r50_mmseg.yaml",
                     "cityscapes_pspnet_r101.yaml", "cityscapes_pspnet_r50_mmseg.yaml", "context_fcn.yaml",
                     "context_pspnet.yaml", "voc2012_pspnet_r50.yaml"]
    configs = {name: load_config(path) for name, path in zip(names, paths)}
    assert configs["context_fcn.yaml"].model["bins"] == [] and configs["context_pspnet.yaml"].model["bins"]
    fcn, psp = configs["context_fcn.yaml"].to_dict(), configs["context_pspnet.yaml"].to_dict()
    assert {k for k in fcn if fcn[k] != psp[k]} == {"model"}  # the baseline differs only by the pyramid
    # hszhao/semseg (tool/train.py and its configs) and mmsegmentation (schedules, datasets, pspnet_r50-d8).
    references = {"semseg": dict(weight_decay=1e-4, min_learning_rate=0.0, head_lr_mult=10.0, avg_non_ignore=True),
                  "mmseg": dict(weight_decay=5e-4, min_learning_rate=1e-4, head_lr_mult=1.0, avg_non_ignore=False)}
    def authors(images, epochs):  # 8 GPUs x 2: DistributedSampler pads to 8 equal shares, drop_last per GPU
        return -(-images // 8) // 2 * epochs

    expected_steps = {"ade20k_pspnet_r50.yaml": authors(20210, 100), "ade20k_pspnet_r101.yaml": authors(20210, 100),
                      "cityscapes_pspnet_r101.yaml": authors(2975, 200), "voc2012_pspnet_r50.yaml": authors(10582, 50),
                      "ade20k_pspnet_r50_mmseg.yaml": 160000, "cityscapes_pspnet_r50_mmseg.yaml": 80000}
    for name, steps in expected_steps.items():
        config, path = configs[name], paths[names.index(name)]
        reference = "mmseg" if "mmseg" in name else "semseg"
        assert ("mmsegmentation" if reference == "mmseg" else "hszhao/semseg") in open(path).read()
        for key, value in references[reference].items():
            assert getattr(config, key) == value, (name, key)
        assert config.steps == steps and config.augment["recipe"] == reference and config.eval_protocol == reference
        assert (config.optimizer, config.learning_rate, config.momentum, config.lr_power, config.aux_weight,
                config.weight_decay_mode) == ("sgd", 0.01, 0.9, 0.9, 0.4, "coupled")
        # The authors upsample with align_corners=True; mmengine's PolyLR ends one step early.
        assert config.model.get("align_corners", False) == (reference == "semseg")
        assert config.lr_schedule == {"semseg": "poly", "mmseg": "poly_mmengine"}[reference]


def test_values_take_their_field_type():
    config = load_config(None, ["learning_rate=1e-3", "steps=2e3", "crop_size=65", "val_split=null",
                                "weight_decay=0", "head_lr_mult=10", "augment.scale=[0.75, 1.5]"])
    assert config.learning_rate == 0.001 and isinstance(config.learning_rate, float)  # YAML reads 1e-3 as a string
    assert config.steps == 2000 and isinstance(config.steps, int)
    assert config.crop_size == (65, 65) and config.val_split is None and config.weight_decay == 0.0
    assert config.augment["scale"] == (0.75, 1.5)


@pytest.mark.parametrize("override,message", [
    ("learning_rate=fast", "learning_rate: expected float, got 'fast'"),
    ("steps=1.5", "steps: expected int, got 1.5"),
    ("aux_weight=true", "aux_weight: expected float, got True"),
    ("crop_size=[1, 2, 3]", "crop_size: expected 2 values"),
    ("augment.flip=2", "augment.flip: expected bool, got 2"),
    ("model=resnet", "model: expected a mapping"),
    ("min_learning_rate=0.1", "min_learning_rate 0.1 is above learning_rate 0.01"),
    ("weight_decay_mode=l2", "weight_decay_mode must be one of [None, 'coupled', 'decoupled']"),
    ("momentum=1", "momentum must be in [0, 1), got 1.0"),
    ("num_classes=0", "num_classes must be >= 1"),
    ("augment.recipe=mmsegmentation", "augment.recipe: expected one of ['semseg', 'mmseg']"),
    ("augment.rotate_prob=2", "augment.rotate_prob: expected a probability in [0, 1]"),
    ("learning_rate=.nan", "learning_rate: expected a finite number, got nan"),
    ("learning_rate=inf", "learning_rate: expected a finite number, got 'inf'"),
    ("augment.scale=[0.5, 1e999]", "augment.scale: expected a finite number"),
])
def test_bad_values_are_refused_in_one_line(override, message):
    with pytest.raises(ValueError) as error:
        load_config(None, [override])
    assert message in str(error.value) and "\n" not in str(error.value)


def test_settings_that_would_pass_silently_are_refused():
    from keras_pspnet.data import load_source

    assert load_config(None, ["eval_every=10"]).val_split == "validation"
    with pytest.raises(ValueError, match="eval_every 10 needs a val_split to evaluate on"):
        load_config(None, ["eval_every=10", "val_split=null"])
    with pytest.raises(ValueError, match=r"num_classes 5: context has 4 classes \(num_classes is for folder datasets"):
        load_source("context", "train", num_classes=5)


def test_refused_run_writes_nothing(tmp_path):
    """A config that fails (an unknown model key here) leaves no config.yaml that would block its correction."""
    from keras_pspnet.train import train

    run_dir = tmp_path / "run"
    config = load_config(None, ["dataset=context", "context_scenes=4", "context_size=32", "crop_size=32",
                                "val_split=null", "model={backbone: resnet10, stages: 3, widht: 4}"])
    with pytest.raises(ValueError, match="widht"):
        train(config, str(run_dir), verbose=False)
    assert not (run_dir / "config.yaml").exists()
