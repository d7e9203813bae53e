"""tf.data pipelines: source -> checks -> augment -> batch -> prefetch."""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from keras_pspnet.data.augment import augment
from keras_pspnet.data.info import AugmentConfig


def check_pair(example: dict, dataset_name: str) -> dict:
    """Fails the pipeline with a message naming the dataset when image and mask sizes differ."""
    tf.debugging.assert_equal(tf.shape(example["image"])[:2], tf.shape(example["mask"]),
                              message=f"{dataset_name}: image and mask of different sizes")
    return example


def train_pipeline(source: tf.data.Dataset, name: str, crop: Sequence[int], batch_size: int, config: AugmentConfig,
                   mean: Sequence[float], seed: int = 0, offset: int = 0, shuffle_buffer: int = 0,
                   cache: bool = False, repeat: bool = True) -> tf.data.Dataset:
    """Shuffled, augmented batches of (image float32 [B, h, w, 3], mask uint8 [B, h, w]) from a `source` in
    training order (`load_source(..., order=...)`); a finite source is repeated unless `repeat` is False (one
    pass over it per iteration of the dataset, as `model.fit` reads an epoch).

    `cache`: keep the decoded examples in memory (a small, finite source) and shuffle them in a buffer of
    `shuffle_buffer`; `offset` (the examples this pipeline produced before a resumed run) continues the random
    stream, so a resumed run does not replay the augmentation of the first steps. Samples are batched in
    the source's order (a deterministic map), so the same run gives the same batches.
    """
    dataset = source.map(lambda e: check_pair(e, name), num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        dataset = dataset.cache()
    if shuffle_buffer > 1:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed + offset, reshuffle_each_iteration=True)
    if repeat:  # the k-th sample's augmentation is drawn from (seed, k): a resumed run goes on, never replays
        dataset = dataset.repeat().enumerate().map(lambda index, example: (index + offset, example))
    else:  # one pass per iteration (a Keras epoch), each with augmentation drawn anew
        draws = tf.data.Dataset.random(seed, rerandomize_each_iteration=True)
        dataset = tf.data.Dataset.zip(draws, dataset)

    def sample(draw, example):
        return augment(example, tf.stack([tf.constant(seed, tf.int64), draw]), crop, config, mean)

    dataset = dataset.map(sample, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def eval_pipeline(source: tf.data.Dataset, name: str) -> tf.data.Dataset:
    """Unaugmented (image uint8 [1, H, W, 3], mask uint8 [1, H, W]) at full resolution, one at a time."""
    dataset = source.map(lambda e: check_pair(e, name), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.map(lambda e: (e["image"], e["mask"])).batch(1).prefetch(tf.data.AUTOTUNE)
