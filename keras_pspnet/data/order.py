"""The order training reads a dataset in: the whole dataset permuted every epoch, one shard per worker.

Sources that can address an example by index (a folder's files, the synthetic scenes) are permuted before
anything is decoded, so a shuffle buffer of decoded images never limits how far apart neighbouring samples
come from (ADE20K's files are sorted by scene type). Each epoch is `tf.random.experimental.stateless_shuffle`
of all indices under the seed (seed, epoch), the same on every worker, of which worker i of n takes every
n-th from i: between them the workers read every example exactly once per epoch, as PyTorch's
DistributedSampler does. TFDS sources shuffle and shard their files instead (`tfds.ReadConfig`).

`pspnet train` reads an endless stream (resumable: step k always sees the same examples). `load_dataset` for
`model.fit` reads one epoch per iteration of the dataset (`endless=False`): Keras iterates it anew each epoch,
and each iteration draws its own permutation.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

EPOCHS = 1 << 40  # "endless": tf.data needs a bound for the range of epochs


@dataclasses.dataclass(frozen=True)
class TrainingOrder:
    """seed: the permutations' seed; num_shards / shard: the workers and this one's index; skip: examples of
    this shard already read (a resumed run continues where the last checkpoint was written); endless: epochs
    without end, else one epoch per iteration of the dataset, a new permutation each time."""

    seed: int = 0
    num_shards: int = 1
    shard: int = 0
    skip: int = 0
    endless: bool = True


def epoch_indices(count: int, order: TrainingOrder) -> tf.data.Dataset:
    """int64 indices in [0, count): this shard's part of a fresh permutation every epoch (endless, or one epoch
    per iteration)."""
    if count < order.num_shards:
        raise ValueError(f"{count} examples cannot be shared by {order.num_shards} workers")

    def epoch(index):
        seed = tf.stack([tf.constant(order.seed, tf.int64), index])
        permutation = tf.random.experimental.stateless_shuffle(tf.range(count, dtype=tf.int64), seed)
        return tf.data.Dataset.from_tensor_slices(permutation[order.shard :: order.num_shards])

    if order.endless:
        return tf.data.Dataset.range(EPOCHS).flat_map(epoch).skip(order.skip)
    draw = tf.data.Dataset.random(order.seed, rerandomize_each_iteration=True).take(1)  # a new one each iteration
    size = len(range(order.shard, count, order.num_shards))
    return draw.flat_map(epoch).apply(tf.data.experimental.assert_cardinality(size))
