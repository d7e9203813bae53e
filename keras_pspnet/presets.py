"""Named model architectures, and `from_preset`: an architecture, a published model or a .keras file by name."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from keras_pspnet.segmenter import PSPNet

_V1C = {"stem": "deep", "style": "pytorch", "contract_dilation": True}  # mmsegmentation's ResNetV1c
_V1B = {"stem": "standard", "style": "pytorch", "contract_dilation": True}  # mmsegmentation's ResNet (torchvision)
_SEMSEG = {"stem": "deep", "stem_widths": (64, 64, 128), "style": "pytorch", "align_corners": True}

PRESETS = {
    # keras.applications layout: loads ImageNet weights with backbone_weights="imagenet" or a path.
    "pspnet_resnet50": {"backbone": "resnet50"},
    "pspnet_resnet101": {"backbone": "resnet101"},
    # For phones: pyramid on the 1280-channel features, a narrower head.
    "pspnet_mobilenet_v2": {"backbone": "mobilenet_v2", "head_channels": 256, "aux_channels": 128},
    # mmsegmentation's PSPNet layouts, what `from_mmseg` builds for its checkpoints (rXX-d8, rXXb-d8, m-v2-d8).
    "pspnet_resnet18_v1c": {"backbone": "resnet18", **_V1C, "head_channels": 128, "aux_channels": 64},
    "pspnet_resnet50_v1c": {"backbone": "resnet50", **_V1C},
    "pspnet_resnet101_v1c": {"backbone": "resnet101", **_V1C},
    "pspnet_resnet18_v1b": {"backbone": "resnet18", **_V1B, "head_channels": 128, "aux_channels": 64},
    "pspnet_resnet50_v1b": {"backbone": "resnet50", **_V1B},
    "pspnet_resnet101_v1b": {"backbone": "resnet101", **_V1B},
    "pspnet_mobilenet_v2_mmseg": {"backbone": "mobilenet_v2", "style": "pytorch", "pool_channels": 512},
    # The PSPNet authors' layout (hszhao/semseg), what `from_semseg` builds.
    "pspnet_resnet50_semseg": {"backbone": "resnet50", **_SEMSEG},
    "pspnet_resnet101_semseg": {"backbone": "resnet101", **_SEMSEG},
}


def list_presets(with_weights: bool = False) -> list[str]:
    """Architecture names accepted by `from_preset` (random weights); `with_weights`: also the published models
    (`pspnet pretrained list`), which load their weights."""
    from keras_pspnet.registry import ZOO  # plain data, no Keras

    return sorted(PRESETS) + (sorted(ZOO) if with_weights else [])


def from_preset(preset: str, num_classes: int | None = None, *, load_weights: bool = True, aux_head: bool = False,
                classes=None, cache_dir: str | None = None, **overrides) -> PSPNet:
    """A PSPNet from a preset, as keras-hub's `from_preset`: an architecture, a published model or a .keras file.

    - An architecture (`list_presets()`): built with random weights for `num_classes` classes; keyword arguments
      override the preset's `build_pspnet` arguments (e.g. `backbone_weights=` for an ImageNet backbone).
    - A published model (`pspnet pretrained list`): its weights are downloaded, verified, converted and cached
      on first use (`keras_pspnet.zoo`); `load_weights=False` gives its architecture with random weights.
    - The path of a .keras file (a model of yours): loaded as saved.
    With weights, `num_classes` (or `classes`) for another class count keeps every layer whose shapes fit and
    makes new classifiers, saying on stderr what it loaded and re-initialised: fine-tuning's starting point.

    Args:
        preset: an architecture name, a published name or a .keras path.
        num_classes: classes to predict; default the published model's or the file's (architectures need it,
            or `classes`).
        load_weights: False: the architecture only, with random weights.
        aux_head: keep the auxiliary FCN head for training (`compile()` weighs its loss 0.4); a .keras file saved
            without one (as `pspnet train` saves) gets a new, randomly initialised one.
        classes: class names saved with the model (export and predict use them): a list of names, a
            `DatasetInfo` (`load_dataset(..., with_info=True)`) or a class set name (ade20k, cityscapes, voc,
            context, pets); sets `num_classes` when that is not given.
        cache_dir: where published models are kept, instead of the Keras cache (~/.keras or $KERAS_HOME).
        **overrides: `build_pspnet` arguments of an architecture (with weights, only `sync_batchnorm`: the
            weights fit their own architecture).
    """
    import os

    from keras_pspnet.registry import ZOO

    info = _class_info(classes, num_classes)
    num_classes = info.num_classes if info is not None else num_classes
    metadata = overrides.pop("metadata", None)
    if info is not None:
        from keras_pspnet.data.classes import classes_metadata

        metadata = {**(metadata or {}), "classes": classes_metadata(info)}
    if preset in PRESETS or (preset in ZOO and not load_weights):
        if preset in ZOO:
            architecture = dict(ZOO[preset].architecture)
            if num_classes is None:
                from keras_pspnet.data.classes import CLASS_SETS, classes_metadata

                num_classes = CLASS_SETS[ZOO[preset].dataset].num_classes
                metadata = metadata or {"classes": classes_metadata(CLASS_SETS[ZOO[preset].dataset])}
            preset, overrides = architecture.pop("preset"), {**architecture, **overrides}
        if num_classes is None:
            raise ValueError(f"{preset}: an architecture without weights: pass num_classes (or classes).")
        from keras_pspnet.model import build_pspnet  # Keras (and TensorFlow) only when a model is built

        return build_pspnet(num_classes, aux_head=aux_head, metadata=metadata, **{**PRESETS[preset], **overrides})
    if preset not in ZOO and not (preset.endswith(".keras") or os.path.isfile(preset)):
        raise ValueError(f"Unknown preset {preset!r}: not an architecture ({', '.join(sorted(PRESETS))}), a published "
                         "model (`pspnet pretrained list`) or a .keras file.")
    unknown = sorted(set(overrides) - {"sync_batchnorm"})
    if unknown:
        raise ValueError(f"{preset}: {', '.join(unknown)} would change the architecture its weights fit"
                         f"{'; pass load_weights=False for the architecture alone' if preset in ZOO else ''}.")
    from keras_pspnet.finetune import reheaded, with_fresh_aux_head
    from keras_pspnet.model import inference_model, load_model, rebuild

    source = load_model(preset, cache_dir)
    if not load_weights:  # a file's architecture, fresh weights (a published name's was built above)
        source = rebuild(source)
    if aux_head:  # a file saved for deployment (as `pspnet train` saves) gets a new one
        source = with_fresh_aux_head(source, preset)
    if num_classes is None and metadata is None and not overrides.get("sync_batchnorm"):
        return source if aux_head else inference_model(source)
    if metadata is None and num_classes not in (None, inference_model(source).output.shape[-1]):
        # other classes: the source's names, published mIoU and test protocol no longer describe the model
        from keras_pspnet.data.classes import classes_metadata
        from keras_pspnet.data.info import generic_classes

        metadata = {"classes": classes_metadata(generic_classes(num_classes))}
    return reheaded(source, num_classes, aux_head=aux_head, metadata=metadata, name=preset,
                    sync_batchnorm=overrides.get("sync_batchnorm", False))


def _class_info(classes, num_classes: int | None):
    """`classes` (see `from_preset`) as a DatasetInfo, checked against `num_classes`; None when not given."""
    if classes is None:
        return None
    from keras_pspnet.data.classes import CLASS_SETS, checked_classes
    from keras_pspnet.data.info import DatasetInfo, default_colors

    if isinstance(classes, str):
        if classes not in CLASS_SETS:
            raise ValueError(f"classes {classes!r}: not one of {sorted(CLASS_SETS)} (or pass the names)")
        info = CLASS_SETS[classes]
    elif isinstance(classes, DatasetInfo):
        info = classes
    else:
        names = list(classes)
        info = DatasetInfo("classes", *checked_classes(names, default_colors(len(names)), "classes"))
    if num_classes is not None and int(num_classes) != info.num_classes:
        raise ValueError(f"classes: {info.num_classes} names, but num_classes={num_classes}")
    return info
