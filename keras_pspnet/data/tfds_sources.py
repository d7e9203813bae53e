"""Benchmarks through TensorFlow Datasets, mapped to {"image": uint8 [H, W, 3], "mask": uint8 [H, W]}."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_pspnet.data.info import IGNORE_LABEL, AugmentConfig, DatasetInfo
from keras_pspnet.data.order import TrainingOrder

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)  # fmt: skip
# The ADE20K colours of the CSAIL toolkit, as hszhao/semseg and mmsegmentation draw them.
ADE20K_PALETTE = ((120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
    (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7), (150, 5, 61),
    (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4), (255, 51, 7), (204, 70, 3),
    (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255), (255, 7, 71), (255, 9, 224), (9, 7, 230),
    (220, 220, 220), (255, 9, 92), (112, 9, 255), (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71),
    (255, 41, 10), (7, 255, 255), (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8),
    (0, 255, 20), (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
    (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0), (153, 255, 0),
    (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255), (11, 200, 200), (255, 82, 0),
    (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133), (255, 0, 0), (255, 163, 0), (255, 102, 0),
    (194, 255, 0), (0, 143, 255), (51, 255, 0), (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255),
    (173, 255, 0), (0, 255, 153), (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0),
    (255, 0, 20), (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255), (0, 255, 163),
    (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255), (163, 255, 0), (255, 235, 0),
    (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255), (255, 0, 31), (0, 184, 255), (0, 214, 255),
    (255, 0, 112), (92, 255, 0), (0, 224, 255), (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255),
    (71, 255, 0), (255, 0, 163), (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235),
    (245, 0, 255), (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
    (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0), (173, 0, 255),
    (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255), (184, 255, 0), (0, 133, 255),
    (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),)  # fmt: skip
CITYSCAPES_CLASSES = (
    ("road", (128, 64, 128)), ("sidewalk", (244, 35, 232)), ("building", (70, 70, 70)), ("wall", (102, 102, 156)),
    ("fence", (190, 153, 153)), ("pole", (153, 153, 153)), ("traffic light", (250, 170, 30)),
    ("traffic sign", (220, 220, 0)), ("vegetation", (107, 142, 35)), ("terrain", (152, 251, 152)),
    ("sky", (70, 130, 180)), ("person", (220, 20, 60)), ("rider", (255, 0, 0)), ("car", (0, 0, 142)),
    ("truck", (0, 0, 70)), ("bus", (0, 60, 100)), ("train", (0, 80, 100)), ("motorcycle", (0, 0, 230)),
    ("bicycle", (119, 11, 32)),
)  # fmt: skip
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
TFDS_SHUFFLE_BUFFER = 256
_pet_trimap = _lookup({1: 1, 2: 0})  # 1 pet, 2 background, 3 border (ignored)

TFDS_SOURCES = {
    "scene_parse150": (
        _ade20k,
        DatasetInfo("scene_parse150", ADE20K_CLASSES, ADE20K_PALETTE),
    ),
    "cityscapes/semantic_segmentation": (
        lambda e: {"image": e["image_left"], "mask": _cityscapes_ids(e["segmentation_label"][..., 0])},
        # The authors' recipe, rotation and blur included: hszhao/semseg tool/train.py applies one transform list to
        # every dataset and config/cityscapes/*.yaml sets rotate -10..10. base_scale: mmseg's RandomResize scale
        # for Cityscapes (configs/_base_/datasets/cityscapes.py), used by `recipe: mmseg`.
        DatasetInfo("cityscapes", tuple(n for n, _ in CITYSCAPES_CLASSES), tuple(c for _, c in CITYSCAPES_CLASSES),
                    AugmentConfig(base_scale=(2048.0, 1024.0))),
    ),
    "oxford_iiit_pet": (
        lambda e: {"image": e["image"], "mask": _pet_trimap(e["segmentation_mask"][..., 0])},
        DatasetInfo("oxford_iiit_pet", ("background", "pet"), ((0, 0, 0), (255, 200, 0))),
    ),
}


def tfds_source(name: str, split: str, data_dir: str | None = None,
                order: TrainingOrder | None = None) -> tuple[tf.data.Dataset, DatasetInfo]:
    """Reads `name` from the user's TFDS data_dir (never downloads) and maps it to image/mask pairs.

    With `order`: endless, files shuffled every epoch with its seed and shared out among the workers by file
    (TFDS's own file shuffling and sharding; records within a file stay in order, hence the training
    shuffle buffer of decoded examples here); `order.skip` is not applied (TFDS cannot skip without reading).
    """
    import tensorflow_datasets as tfds

    transform, info = TFDS_SOURCES[name]
    builder = tfds.builder(name, data_dir=data_dir)
    read_config = None
    if order is not None:
        context = tf.distribute.InputContext(order.num_shards, order.shard)
        read_config = tfds.ReadConfig(shuffle_seed=order.seed, input_context=context,
                                      shuffle_reshuffle_each_iteration=True)
    try:
        dataset = builder.as_dataset(split=split, shuffle_files=order is not None, read_config=read_config)
    except AssertionError:  # what TFDS raises for a dataset that was never built
        raise FileNotFoundError(
            f"{name}: not prepared in the TFDS data_dir {builder.data_dir}. Build it once with internet access: "
            f"`tfds build {name}{' --data_dir ' + data_dir if data_dir else ''}` "
            "(Cityscapes needs its archives downloaded by hand into <data_dir>/downloads/manual first)."
        ) from None
    except ValueError as error:  # unknown split
        raise ValueError(f"{name}: {error}") from None
    dataset = dataset.map(transform, num_parallel_calls=tf.data.AUTOTUNE)
    if order is not None:  # records come in runs from each file: mix a few hundred decoded examples
        dataset = dataset.repeat().shuffle(TFDS_SHUFFLE_BUFFER, seed=order.seed + order.shard)
    return dataset, info
