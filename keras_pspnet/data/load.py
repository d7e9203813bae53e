"""`load_dataset`: the batches `pspnet train` reads, as a `tf.data.Dataset` that `model.fit` consumes directly."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import tensorflow as tf

from keras_pspnet.data.info import RECIPES, AugmentConfig, DatasetInfo, augment_config
from keras_pspnet.data.order import TrainingOrder
from keras_pspnet.data.pipeline import check_pair, train_pipeline
from keras_pspnet.data.sources import load_source
from keras_pspnet.losses import IGNORE_LABEL
from keras_pspnet.model import IMAGENET_MEAN

DEFAULT_CROP = (473, 473)  # the authors' crop (TrainConfig's default)


def load_dataset(
    source: str,
    split: str,
    *,
    batch_size: int,
    crop_size: Sequence[int] | None = None,
    augment: bool | str | Mapping | AugmentConfig | None = None,
    shuffle: bool | None = None,
    seed: int = 0,
    mean: Sequence[float] = IMAGENET_MEAN,
    data_dir: str | None = None,
    num_classes: int | None = None,
    with_info: bool = False,
) -> tf.data.Dataset | tuple[tf.data.Dataset, DatasetInfo]:
    """`(images, masks)` batches of a dataset: float32 RGB pixels 0-255 [B, H, W, 3] and uint8 labels [B, H, W]
    (255: ignored), for `model.fit`, `model.evaluate` and `validation_data`.

    A training split (a name starting with "train") is read as `pspnet train` reads it: every image once per
    epoch in a new order (permuted before decoding), augmented by the dataset's recipe (random scale 0.5-2.0,
    rotation, blur, flip, crop/pad to `crop_size`), full batches only. Other splits: every image once, in a fixed
    order, unaugmented at its own size, batched padded to the batch's largest image (pixels `mean`, labels 255;
    the pyramid's pooling sees the padding, so `batch_size=1` measures what `pspnet evaluate` does).
    Keras reads the dataset anew each epoch, so `fit(dataset, epochs=N)` needs no `steps_per_epoch`.

    Args:
        source: "context" (the synthetic scenes), a TFDS name (scene_parse150, cityscapes/semantic_segmentation,
            oxford_iiit_pet; read from `data_dir`, never downloaded) or a folder dataset
            (`ROOT/<split>/images/*.jpg|png` and `ROOT/<split>/masks/*.png` of the same names, optional classes.json).
        split: e.g. "train", "validation".
        batch_size: images per batch.
        crop_size: (height, width) of augmented samples; default 473x473.
        augment: True for the dataset's recipe, False for none, "semseg" or "mmseg" for that reference's, a
            mapping of `AugmentConfig` fields over the dataset's recipe, or an `AugmentConfig`. Default: on for a
            training split.
        shuffle: a new order every epoch; default: on for a training split.
        seed: the order's and the augmentation's seed.
        mean: RGB fill of padding and rotation corners (the model's mean: 0 after its normalisation).
        data_dir: TFDS data_dir.
        num_classes: for folder datasets without classes.json.
        with_info: also return the `DatasetInfo` (class names and colours: `from_preset(..., classes=info)`).
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    training = split.startswith("train")
    shuffle = training if shuffle is None else bool(shuffle)
    augment = training if augment is None else augment
    if crop_size is not None and augment is False:
        raise ValueError("crop_size: crops are drawn by the augmentation; pass augment=True (or no crop_size)")
    order = TrainingOrder(seed, endless=False) if shuffle else None
    dataset, info = load_source(source, split, data_dir=data_dir, num_classes=num_classes, order=order)
    if augment is not False:
        crop = tuple(int(v) for v in (crop_size or DEFAULT_CROP))
        if len(crop) != 2 or min(crop) < 1:
            raise ValueError(f"crop_size: expected (height, width) >= 1, got {tuple(crop_size)}")
        config = _augment_config(augment, info)
        dataset = train_pipeline(dataset, info.name, crop, int(batch_size), config, mean, seed=seed, repeat=False)
        if int(dataset.cardinality()) == 0:
            raise ValueError(f"{source} {split}: fewer images than batch_size {batch_size} (training keeps whole "
                             "batches only)")
    else:  # padded with the mean colour (0 once the model normalises), as the references pad; labels 255
        offset = tf.constant(mean, tf.float32)
        dataset = dataset.map(lambda e: check_pair(e, info.name), num_parallel_calls=tf.data.AUTOTUNE)
        dataset = dataset.map(lambda e: (tf.cast(e["image"], tf.float32) - offset, e["mask"]))
        dataset = dataset.padded_batch(int(batch_size), padding_values=(0.0, tf.constant(IGNORE_LABEL, tf.uint8)))
        dataset = dataset.map(lambda images, masks: (images + offset, masks))
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    return (dataset, info) if with_info else dataset


def _augment_config(augment, info: DatasetInfo) -> AugmentConfig:
    """The `augment` argument as the augmentation to apply (see `load_dataset`)."""
    if augment is True:
        return info.augment
    if isinstance(augment, AugmentConfig):
        return augment
    if isinstance(augment, str):
        if augment not in RECIPES:
            raise ValueError(f"augment: expected True, False, {' or '.join(map(repr, RECIPES))}, a mapping of "
                             f"AugmentConfig fields or an AugmentConfig, got {augment!r}")
        return augment_config(info.augment, {"recipe": augment})
    if isinstance(augment, Mapping):
        return augment_config(info.augment, dict(augment))
    fields = [field.name for field in dataclasses.fields(AugmentConfig)]
    raise ValueError(f"augment: expected a bool, a recipe name, a mapping of {fields} or an AugmentConfig, "
                     f"got {type(augment).__name__}")
