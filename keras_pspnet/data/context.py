"""The synthetic "context" dataset: boats and cars that only their surroundings tell apart.

Each scene is water or road with one large object. Boats and cars are drawn from the same distribution
of shapes, colours and textures, so the inside of an object is undecidable from local features: only the
surroundings say which it is (the paper's boat-versus-car example, made measurable). Objects cover 70-92%
of the side, so the object's centre lies far outside the receptive field of a small dilated FCN and
within reach of the pyramid's global bins.
"""

from __future__ import annotations

import math

import tensorflow as tf

from keras_pspnet.data.classes import CONTEXT_INFO  # noqa: F401 (the dataset's classes, defined with the others)
from keras_pspnet.data.order import TrainingOrder, epoch_indices

SPLIT_SEEDS = {"train": 1, "validation": 2, "test": 3}
DEFAULT_SIZE = 288  # objects 70-92% of the side: their centres lie beyond a small FCN's effective receptive field
DEFAULT_SIZES = {"train": 600, "validation": 100, "test": 100}


def context_scene(index, size: int = DEFAULT_SIZE, seed: int = 1, surroundings: str | None = None) -> dict:
    """Scene number `index` (deterministic): {"image": uint8 [size, size, 3], "mask": uint8 [size, size]}.

    `surroundings` ("water" or "road") overrides the scene's random choice and nothing else: the same scene
    on water and on road has the very same object pixels, a boat in one and a car in the other.
    """
    base = tf.stack([tf.constant(seed, tf.int64), tf.cast(index, tf.int64)])

    def uniform(shape, salt, low=0.0, high=1.0):
        return tf.random.stateless_uniform(shape, base + [0, 1000003 * salt], minval=low, maxval=high)

    rows = tf.range(size, dtype=tf.float32)[:, None]
    cols = tf.range(size, dtype=tf.float32)[None, :]
    if surroundings not in (None, "water", "road"):
        raise ValueError(f"surroundings must be 'water', 'road' or None, got {surroundings!r}.")
    on_water = uniform([], 1) < 0.5 if surroundings is None else tf.constant(surroundings == "water")
    noise = uniform([size, size, 1], 2, -1.0, 1.0)

    phase, frequency = uniform([], 3, 0.0, 2 * math.pi), uniform([], 4, 0.15, 0.3)
    waves = tf.sin(rows * frequency + phase + 2.0 * tf.sin(cols * 0.05))[..., None]
    water = tf.constant([40.0, 90.0, 190.0]) + 25.0 * waves + 12.0 * noise
    lanes = tf.cast(tf.abs(cols - size * uniform([], 5, 0.3, 0.7)) < 3, tf.float32)[..., None]
    road = tf.constant([118.0, 118.0, 112.0]) + 18.0 * noise + 90.0 * lanes
    background = tf.where(on_water, water, road)

    # The object: same distribution for both classes (size, position, colour, stripes, noise).
    height, width = [tf.round(size * uniform([], salt, 0.70, 0.92)) for salt in (6, 7)]
    top = tf.floor(uniform([], 8) * (size - height + 1))
    left = tf.floor(uniform([], 9) * (size - width + 1))
    inside = (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)
    color = uniform([3], 10, 60.0, 240.0)
    stripes = tf.cast(tf.math.floormod(tf.floor((rows + cols) / 8.0), 2.0), tf.float32)[..., None]
    body = color + 30.0 * stripes + 15.0 * noise
    image = tf.where(inside[..., None], body, background)

    background_class = tf.where(on_water, 0, 1)
    object_class = tf.where(on_water, 2, 3)
    mask = tf.where(inside, object_class, background_class)
    return {"image": tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8), "mask": tf.cast(mask, tf.uint8)}


def context_source(split: str = "train", num_scenes: int | None = None, size: int = DEFAULT_SIZE,
                   order: TrainingOrder | None = None) -> tf.data.Dataset:
    """The scenes of `split` ("train", "validation" or "test"), generated on the fly; with `order`, an endless
    stream in training order (see `keras_pspnet.data.order`)."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"context dataset: unknown split {split!r}; valid splits: {sorted(SPLIT_SEEDS)}.")
    count = DEFAULT_SIZES[split] if num_scenes is None else int(num_scenes)
    if count < 1:
        raise ValueError(f"context dataset: split {split!r} is empty (num_scenes={count}).")
    seed = SPLIT_SEEDS[split]
    indices = tf.data.Dataset.range(count) if order is None else epoch_indices(count, order)
    return indices.map(lambda i: context_scene(i, size, seed), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
