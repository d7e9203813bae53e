"""Where image/mask pairs come from: the synthetic scenes, TFDS benchmarks or a folder, by name."""

from __future__ import annotations

import os

import tensorflow as tf

from keras_pspnet.data.classes import CONTEXT_INFO
from keras_pspnet.data.context import DEFAULT_SIZE, context_source
from keras_pspnet.data.folder import folder_source
from keras_pspnet.data.info import DatasetInfo
from keras_pspnet.data.order import TrainingOrder
from keras_pspnet.data.tfds_sources import TFDS_SOURCES, tfds_source

DATASETS = ("context", *TFDS_SOURCES)


def load_source(dataset: str, split: str, *, data_dir: str | None = None, num_classes: int | None = None,
                validate: bool = True, context_scenes: int | None = None, context_size: int | None = None,
                order: TrainingOrder | None = None) -> tuple[tf.data.Dataset, DatasetInfo]:
    """Image/mask pairs of `split` and the dataset's info.

    `dataset`: "context" (synthetic), a TFDS name (scene_parse150, cityscapes/semantic_segmentation,
    oxford_iiit_pet; read from `data_dir`, never downloaded) or the path of a folder dataset.
    `order`: for training, an endless stream, reshuffled over the whole dataset every epoch and sharded
    among workers (see `keras_pspnet.data.order`); None: every pair once, in a fixed order.
    """
    if dataset in DATASETS and num_classes is not None:
        info = CONTEXT_INFO if dataset == "context" else TFDS_SOURCES[dataset][2]
        if num_classes != info.num_classes:
            raise ValueError(f"num_classes {num_classes}: {dataset} has {info.num_classes} classes (num_classes is for "
                             "folder datasets without classes.json)")
    if dataset == "context":
        return context_source(split, context_scenes, context_size or DEFAULT_SIZE, order), CONTEXT_INFO
    if dataset in TFDS_SOURCES:
        return tfds_source(dataset, split, data_dir, order)
    if os.path.isdir(dataset):
        return folder_source(dataset, split, num_classes, validate, order)
    raise ValueError(f"Unknown dataset {dataset!r}: not a folder, and not one of {list(DATASETS)}.")
