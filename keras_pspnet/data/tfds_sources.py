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


def _ade20k_mask(example):
    # 0 is "other" (ignored); classes 1..150 shift down by one. The annotation is 3-channel: class in channel 0.
    label = tf.cast(example["annotation"][..., 0], tf.int32)
    return tf.cast(tf.where(label == 0, IGNORE_LABEL, label - 1), tf.uint8)


_cityscapes_ids = _lookup(CITYSCAPES_TRAIN_IDS)
_pet_trimap = _lookup({1: 1, 2: 0})  # 1 pet, 2 background, 3 border (ignored)

# name: (the image feature, the mask from an example, the dataset's info)
TFDS_SOURCES = {
    "scene_parse150": ("image", _ade20k_mask, ADE20K_INFO),
    "cityscapes/semantic_segmentation": (
        "image_left", lambda e: _cityscapes_ids(e["segmentation_label"][..., 0]), CITYSCAPES_INFO),
    "oxford_iiit_pet": ("image", lambda e: _pet_trimap(e["segmentation_mask"][..., 0]), PETS_INFO),
}


def tfds_source(name: str, split: str, data_dir: str | None = None,
                order: TrainingOrder | None = None) -> tuple[tf.data.Dataset, DatasetInfo]:
    """Reads `name` from the user's TFDS data_dir (never downloads) and maps it to image/mask pairs.

    With `order`: endless (or one epoch per iteration), files shuffled every epoch with its seed and shared out
    among the workers by file (TFDS's own file shuffling and sharding; records within a file stay in order, hence
    the training shuffle buffer of decoded examples here).
    """
    import tensorflow_datasets as tfds

    image_key, mask_of, info = TFDS_SOURCES[name]
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

    def pair(example):  # the image bytes decoded by our decoder (TFDS's own uses the fast JPEG IDCT)
        image = example[image_key]
        if image.dtype == tf.string:  # (mock data in tests hands decoded images)
            image = decode_rgb(image)
        return {"image": image, "mask": mask_of(example)}

    dataset = dataset.map(pair, num_parallel_calls=tf.data.AUTOTUNE)
    if order is not None:  # records come in runs from each file: mix a few hundred decoded examples
        dataset = dataset.repeat() if order.endless else dataset
        dataset = dataset.shuffle(TFDS_SHUFFLE_BUFFER, seed=order.seed + order.shard + order.skip)
    return dataset, info
