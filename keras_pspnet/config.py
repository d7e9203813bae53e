"""Training configurations: YAML files with `--set key=value` overrides, each value converted to its field's type."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

import yaml

from keras_pspnet.files import check_nodes, read_text, short_repr, write_text


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run needs; the YAML keys are these field names."""

    dataset: str = "context"
    """`context` (synthetic scenes), `scene_parse150`, `cityscapes/semantic_segmentation`, `oxford_iiit_pet`, or
    a folder `ROOT` holding `ROOT/<split>/{images,masks}` (and optionally `ROOT/classes.json`)."""
    data_dir: str | None = None
    """TFDS `data_dir` of the TFDS datasets (they are never downloaded at run time)."""
    train_split: str = "train"
    """The split to train on."""
    val_split: str | None = "validation"
    """The split to validate on; `null`: no evaluation."""
    num_classes: int | None = None
    """Class count of a folder dataset without `classes.json` (else its largest label + 1)."""
    context_scenes: int | None = None
    """Number of synthetic training scenes (default 600)."""
    context_size: int | None = None
    """Side of the synthetic scenes (default `keras_pspnet.data.context.DEFAULT_SIZE`)."""
    model: dict | None = None
    """`build_pspnet` / `from_preset` arguments, e.g. `{preset: pspnet_resnet101}`; `null`:
    `{preset: pspnet_resnet50}`, or `init_from`'s own architecture."""
    init_from: str | None = None
    """A `.keras` model or a published name: fine-tune from its weights (classifiers of another class count are
    re-initialised)."""
    backbone_weights: str | None = None
    """ImageNet backbone: `imagenet` or a keras.applications `.h5` path, or a reference's backbone by name
    (`resnet50_v1c`, `torchvision_resnet50`, `mobilenet_v2_mmcls`, ...) or `.pth` (the authors'
    `initmodel/resnet50_v2.pth`); see `build_pspnet`."""
    crop_size: tuple[int, int] = (473, 473)
    """Training crop, height and width."""
    batch_size: int = 16
    """Global batch, over all replicas and workers."""
    steps: int = 1000
    """Training steps (the poly schedule ends there)."""
    optimizer: str = "sgd"
    """`sgd` (`torch.optim.SGD`'s update, see `keras_pspnet.optimizers`) or `adam`."""
    learning_rate: float = 0.01
    """Where the poly schedule starts."""
    min_learning_rate: float = 0.0
    """Where the poly schedule ends (mmsegmentation: 1e-4; the authors' code: 0)."""
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 1e-4
    """Weight decay."""
    weight_decay_mode: str | None = None
    """`sgd`: `coupled` (PyTorch's, every reference; the default) or `decoupled` (Keras'); `adam` always decays
    decoupled (AdamW)."""
    head_lr_mult: float = 1.0
    """Learning-rate factor of the pyramid, head and auxiliary head (the authors' code: 10)."""
    lr_power: float = 0.9
    """Power of the poly schedule from `learning_rate` to `min_learning_rate`."""
    lr_schedule: str = "poly"
    """`poly` reaches `min_learning_rate` after `steps` (the authors' `poly_learning_rate`); `poly_mmengine` after
    `steps - 1` (mmengine's `PolyLR`: `total_iters = end - begin - 1`)."""
    aux_weight: float = 0.4
    """Loss weight of the auxiliary head; 0 trains without it."""
    avg_non_ignore: bool = True
    """Average the loss over labelled pixels (the authors' code) or over all pixels (`false`, mmsegmentation's
    default)."""
    augment: dict = dataclasses.field(default_factory=dict)
    """Overrides of the dataset's augmentation: `recipe` and any `AugmentConfig` field (`augment.rotate=0`)."""
    mixed_precision: str | None = None
    """`null`, `mixed_float16` (GPUs, dynamic loss scaling) or `mixed_bfloat16`."""
    distribute: str = "auto"
    """`auto` (`multi_worker` with a `TF_CONFIG` cluster, `mirrored` with 2+ GPUs, else one device), `none`,
    `mirrored` or `multi_worker`."""
    cluster_timeout: float = 300.0
    """`multi_worker`: seconds to wait for every worker of `TF_CONFIG` to join."""
    checkpoint_every: int = 500
    """Steps between checkpoints (a killed run resumes from the last)."""
    eval_every: int | None = None
    """Steps between validations; `null`: once at the end."""
    eval_mode: str = "whole"
    """Validation on the `whole` image or in `slide` windows of `crop_size`."""
    eval_protocol: str | None = None
    """`semseg` or `mmseg`: that reference's test protocol for the dataset (replaces `eval_mode`)."""
    eval_max_side: int = 1024
    """Whole-image validation at native size runs larger images in windows of this side."""
    log_every: int = 10
    """Steps between the loss and learning rate written to TensorBoard and to the progress display (which, in a
    log file, prints a line every 10% of the steps or 30 s)."""
    seed: int = 0
    """Seed of the data order and of the augmentation's random draws (not of the weight initialisation)."""
    cache: bool = False
    """Keep decoded examples in memory (small datasets)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {field.name: field for field in dataclasses.fields(TrainConfig)}
CHOICES = {"optimizer": ("sgd", "adam"), "weight_decay_mode": (None, "coupled", "decoupled"),
           "lr_schedule": ("poly", "poly_mmengine"),
           "distribute": ("auto", "none", "mirrored", "multi_worker"),
           "mixed_precision": (None, "mixed_float16", "mixed_bfloat16"), "eval_mode": ("whole", "slide"),
           "eval_protocol": (None, "semseg", "mmseg")}


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
        values = _yaml(read_text(path, "config", MAX_CONFIG_BYTES), path) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: a config is a mapping of keys to values")
    origin = path or "config"
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep:
            raise ValueError(f"--set {short_repr(override)}: expected key=value")
        _set(values, key.strip(), _yaml(raw, f"--set {short_repr(override)}"), f"--set {short_repr(override)}")
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ValueError(f"{origin}: unknown key(s) {unknown}; valid keys: {sorted(FIELDS)}")
    from keras_pspnet.data.info import AugmentConfig, augment_config

    values = {key: convert(value, FIELD_TYPES[key], f"{origin}: {key}") for key, value in values.items()}
    augment_types = typing.get_type_hints(AugmentConfig)
    unknown = sorted(set(values.get("augment", {})) - set(augment_types))
    if unknown:
        raise ValueError(f"{origin}: unknown augment key(s) {unknown}; valid keys: {sorted(augment_types)}")
    values["augment"] = {key: convert(value, augment_types[key], f"{origin}: augment.{key}")
                         for key, value in values.get("augment", {}).items()}
    config = TrainConfig(**values)
    for key, choices in CHOICES.items():
        if getattr(config, key) not in choices:
            raise ValueError(f"{origin}: {key} must be one of {list(choices)}, got {short_repr(getattr(config, key))}")
    for key in ("batch_size", "steps", "checkpoint_every", "log_every", "crop_size", "num_classes", "eval_every",
                "context_scenes", "context_size"):
        value = getattr(config, key)
        if value is not None and min(value if key == "crop_size" else [value]) < 1:
            raise ValueError(f"{origin}: {key} must be >= 1, got {value}")
    for key in ("learning_rate", "min_learning_rate", "weight_decay", "head_lr_mult", "aux_weight", "lr_power",
                "cluster_timeout"):
        if getattr(config, key) < 0:
            raise ValueError(f"{origin}: {key} must be >= 0, got {getattr(config, key)}")
    if not 0 <= config.momentum < 1:
        raise ValueError(f"{origin}: momentum must be in [0, 1), got {config.momentum}")
    if config.lr_schedule == "poly_mmengine" and config.steps < 2:
        raise ValueError(f"{origin}: lr_schedule poly_mmengine needs steps >= 2")
    try:  # the augmentation's own checks (ranges, recipe names), before anything runs
        augment_config(None, config.augment)
    except ValueError as error:
        raise ValueError(f"{origin}: {error}") from None
    if config.min_learning_rate > config.learning_rate:
        raise ValueError(f"{origin}: min_learning_rate {config.min_learning_rate} is above learning_rate "
                         f"{config.learning_rate}")
    if config.eval_every and not config.val_split:
        raise ValueError(f"{origin}: eval_every {config.eval_every} needs a val_split to evaluate on (it is null)")
    if config.optimizer == "adam" and (config.head_lr_mult != 1 or config.weight_decay_mode is not None):
        raise ValueError(f"{origin}: head_lr_mult and weight_decay_mode are for optimizer: sgd (adam decays "
                         "decoupled, as AdamW)")
    return config


FIELD_TYPES = typing.get_type_hints(TrainConfig)
MAX_CONFIG_BYTES = 2**20  # our configs are ~2 kB


def _yaml(text: str, where: str):
    """YAML as safe_load reads it, refused in one line when not YAML or when its aliases expand past what a config
    holds (a 663-byte document of nested anchors stands for billions of values; printing it would never end)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"{where}: not valid YAML ({str(error).splitlines()[0]})") from None
    except RecursionError:
        raise ValueError(f"{where}: nested too deeply") from None
    check_nodes(value, where, limit=10_000)
    return value


def convert(value: Any, kind: Any, where: str) -> Any:
    """`value` (as YAML read it) as type `kind`, or a one-line ValueError naming `where`.

    YAML reads `1e-3` as a string (its 1.1 float syntax needs a dot) and `--set` values are YAML too, so
    numbers written as strings are parsed; booleans never pass for numbers.
    """
    options = typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, types.UnionType) else ()
    if options:
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            if type(None) in options:
                return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return convert(value, option, where)
            except ValueError as error:
                errors.append(str(error))
        raise ValueError(errors[0] if len(errors) == 1 else f"{where}: {short_repr(value)} is none of {kind}")
    origin = typing.get_origin(kind) or kind
    fail = ValueError(f"{where}: expected {getattr(kind, '__name__', kind)}, got {short_repr(value)}")
    if value is None and kind is not Any:
        raise ValueError(f"{where}: may not be null")
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise fail
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise fail
        try:
            number = float(value)
        except (ValueError, OverflowError):
            raise fail from None
        if not math.isfinite(number):  # "nan" and "inf" parse as floats: never a learning rate, nor any setting
            raise ValueError(f"{where}: expected a finite number, got {short_repr(value)}")
        if kind is int:
            if not number.is_integer():
                raise fail
            return int(number)
        return number
    if kind is str:
        if isinstance(value, (dict, list, bool)):
            raise fail
        return str(value)
    if origin is tuple:
        items = typing.get_args(kind)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool) and len(set(items)) == 1:
            value = [value] * len(items)  # crop_size: 473 means 473x473
        if not isinstance(value, (list, tuple)) or len(value) != len(items):
            raise ValueError(f"{where}: expected {len(items)} values, got {short_repr(value)}")
        return tuple(convert(v, t, where) for v, t in zip(value, items))
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {short_repr(value)}")
        return dict(value)
    return value


def save_config(config: TrainConfig, path: str) -> None:
    """Writes the config as YAML, atomically (a kill never leaves half a config that blocks the next run)."""
    write_text(path, yaml.safe_dump(_plain(config.to_dict()), sort_keys=False))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
