"""Training configurations: YAML files with `--set key=value` overrides, checked against known keys."""

from __future__ import annotations

import dataclasses
from typing import Any

import yaml


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run needs; the YAML keys are these field names."""

    dataset: str = "context"  # context, scene_parse150, cityscapes/semantic_segmentation, oxford_iiit_pet, or a folder
    data_dir: str | None = None  # TFDS data_dir
    train_split: str = "train"
    val_split: str | None = "validation"  # null: no evaluation
    num_classes: int | None = None  # folder datasets without classes.json
    context_scenes: int | None = None  # number of synthetic training scenes (default 600)
    context_size: int | None = None  # side of the synthetic scenes (default: keras_pspnet.data.context.DEFAULT_SIZE)
    # build_pspnet / from_preset arguments; null: {"preset": "pspnet_resnet50"}, or init_from's architecture
    model: dict | None = None
    init_from: str | None = None  # a .keras model or a pretrained name: fine-tune from its weights
    backbone_weights: str | None = None  # "imagenet" or the keras.applications .h5 path
    crop_size: tuple[int, int] = (473, 473)
    batch_size: int = 16  # global, over all replicas
    steps: int = 1000
    optimizer: str = "sgd"  # sgd (the paper) or adam
    learning_rate: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_power: float = 0.9  # poly schedule to 0 over `steps`
    aux_weight: float = 0.4  # 0 trains without the auxiliary head
    augment: dict = dataclasses.field(default_factory=dict)  # overrides of the dataset's defaults
    mixed_precision: str | None = None  # null, mixed_float16 or mixed_bfloat16
    distribute: str = "auto"  # auto, none, mirrored, multi_worker
    checkpoint_every: int = 500
    eval_every: int | None = None  # steps; null: evaluate once at the end
    eval_mode: str = "whole"  # whole or slide
    log_every: int = 10
    seed: int = 0
    cache: bool = False  # keep decoded examples in memory (small datasets)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {field.name: field for field in dataclasses.fields(TrainConfig)}
CHOICES = {"optimizer": ("sgd", "adam"), "distribute": ("auto", "none", "mirrored", "multi_worker"),
           "mixed_precision": (None, "mixed_float16", "mixed_bfloat16"), "eval_mode": ("whole", "slide")}


def _set(values: dict, dotted: str, value: Any, origin: str) -> None:
    key, _, rest = dotted.partition(".")
    if rest:
        if key not in ("model", "augment"):
            raise ValueError(f"{origin}: {key} has no sub-keys (only model.* and augment.* do)")
        values.setdefault(key, {})
        values[key] = {**(values[key] or {}), rest: value}
    else:
        values[key] = value


def load_config(path: str | None = None, overrides: list[str] = ()) -> TrainConfig:
    """Reads a YAML config and applies `key=value` overrides (values parsed as YAML; `model.bins=[1,2]`)."""
    values: dict = {}
    if path is not None:
        try:
            with open(path) as f:
                values = yaml.safe_load(f) or {}
        except OSError as error:
            raise FileNotFoundError(f"{path}: cannot read config ({error.strerror})") from None
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path}: a config is a mapping of keys to values")
    origin = path or "config"
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep:
            raise ValueError(f"--set {override}: expected key=value")
        _set(values, key.strip(), yaml.safe_load(raw), f"--set {override}")
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ValueError(f"{origin}: unknown key(s) {unknown}; valid keys: {sorted(FIELDS)}")
    config = TrainConfig(**values)
    config.crop_size = tuple(int(c) for c in (config.crop_size if isinstance(config.crop_size, (list, tuple))
                                              else (config.crop_size, config.crop_size)))
    for key, choices in CHOICES.items():
        if getattr(config, key) not in choices:
            raise ValueError(f"{origin}: {key} must be one of {list(choices)}, got {getattr(config, key)!r}")
    for key in ("batch_size", "steps", "checkpoint_every", "log_every"):
        if int(getattr(config, key)) < 1:
            raise ValueError(f"{origin}: {key} must be >= 1, got {getattr(config, key)}")
    from keras_pspnet.data.info import AugmentConfig

    valid_augment = {f.name for f in dataclasses.fields(AugmentConfig)}
    if set(config.augment) - valid_augment:
        raise ValueError(f"{origin}: unknown augment key(s) {sorted(set(config.augment) - valid_augment)}; "
                         f"valid keys: {sorted(valid_augment)}")
    return config


def save_config(config: TrainConfig, path: str) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(_plain(config.to_dict()), f, sort_keys=False)


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
