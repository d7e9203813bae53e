"""Benchmarks through TensorFlow Datasets, mapped to {"image": uint8 [H, W, 3], "mask": uint8 [H, W]}."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_pspnet.data.classes import ADE20K_INFO, CITYSCAPES_INFO, PETS_INFO
from keras_pspnet.data.image import decode_rgb
from keras_pspnet.data.info import IGNORE_LABEL, DatasetInfo
from keras_pspnet.data.order import TrainingOrder

TFDS_SHUFFLE_BUFFER = 256  # decoded examples mixed in training: a TFDS file's records come in order
# Cityscapes label id -> train id (cityscapesScripts' labels.py); every other id is ignored.
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                        26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def _lookup(mapping: dict[int, int]):
    """A uint8 -> uint8 label map; the tensor is made inside the tf.data function, not at import (creating a
    tensor at import would fix the TF runtime before MultiWorkerMirroredStrategy can configure it)."""
    table = np.full(256, IGNORE_LABEL, np.uint8)
    for source, target in mapping.items():
        table[source] = target
    return lambda labels: tf.gather(tf.constant(table), tf.cast(labels, tf.int32))


def _ade20k(example):
    # 0 is "other" (ignored); classes 1..150 shift down by one. The annotation is 3-channel: class in channel 0.
    label = tf.cast(example["annotation"][..., 0], tf.int32)
    mask = tf.where(label == 0, IGNORE_LABEL, label - 1)
    return {"image": example["image"], "mask": tf.cast(mask, tf.uint8)}


_cityscapes_ids = _lookup(CITYSCAPES_TRAIN_IDS)
_pet_trimap = _lookup({1: 1, 2: 0})  # 1 pet, 2 background, 3 border (ignored)

TFDS_SOURCES = {
    "scene_parse150": (_ade20k, ADE20K_INFO),
    "cityscapes/semantic_segmentation": (
        lambda e: {"image": e["image_left"], "mask": _cityscapes_ids(e["segmentation_label"][..., 0])},
        CITYSCAPES_INFO,
    ),
    "oxford_iiit_pet": (
        lambda e: {"image": e["image"], "mask": _pet_trimap(e["segmentation_mask"][..., 0])},
        PETS_INFO,
    ),
}


TFDS_IMAGES = {"scene_parse150": "image", "cityscapes/semantic_segmentation": "image_left", "oxford_iiit_pet": "image"}


def tfds_source(name: str, split: str, data_dir: str | None = None,
                order: TrainingOrder | None = None) -> tuple[tf.data.Dataset, DatasetInfo]:
    """Reads `name` from the user's TFDS data_dir (never downloads) and maps it to image/mask pairs.

    With `order`: endless, files shuffled every epoch with its seed and shared out among the workers by file
    (TFDS's own file shuffling and sharding; records within a file stay in order, hence the training
    shuffle buffer of decoded examples here).
    """
    import tensorflow_datasets as tfds

    transform, info = TFDS_SOURCES[name]
    image_key = TFDS_IMAGES[name]
    builder = tfds.builder(name, data_dir=data_dir)
    read_config = None
    if order is not None:
        context = tf.distribute.InputContext(order.num_shards, order.shard)
        # TFDS cannot skip without reading: a resumed run (order.skip) draws a new file order instead of
        # replaying the first files of the run.
        read_config = tfds.ReadConfig(shuffle_seed=order.seed + order.skip, input_context=context,
                                      shuffle_reshuffle_each_iteration=True)
    try:
        dataset = builder.as_dataset(split=split, shuffle_files=order is not None, read_config=read_config,
                                     decoders={image_key: tfds.decode.SkipDecoding()})
    except AssertionError:  # what TFDS raises for a dataset that was never built
        raise FileNotFoundError(
            f"{name}: not prepared in the TFDS data_dir {builder.data_dir}. Build it once with internet access: "
            f"`tfds build {name}{' --data_dir ' + data_dir if data_dir else ''}` "
            "(Cityscapes needs its archives downloaded by hand into <data_dir>/downloads/manual first)."
        ) from None
    except ValueError as error:  # unknown split
        raise ValueError(f"{name}: {error}") from None

    def decoded(example):  # the bytes, decoded by our decoder (TFDS's own uses the fast JPEG IDCT)
        if example[image_key].dtype == tf.string:  # (mock data in tests hands decoded images)
            example = {**example, image_key: decode_rgb(example[image_key])}
        return transform(example)

    dataset = dataset.map(decoded, num_parallel_calls=tf.data.AUTOTUNE)
    if order is not None:  # records come in runs from each file: mix a few hundred decoded examples
        dataset = dataset.repeat().shuffle(TFDS_SHUFFLE_BUFFER, seed=order.seed + order.shard + order.skip)
    return dataset, info
