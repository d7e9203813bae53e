"""Training order: whole-dataset permutations every epoch, one shard of files per worker."""

import os

import numpy as np
from PIL import Image

from keras_pspnet.data import TrainingOrder, load_source


def numbered_folder(root, count):
    """ROOT/train with `count` 2x2 images whose pixels spell their sorted position (red: index // 256,
    green: index % 256) and one-class masks."""
    for sub in ("images", "masks"):
        os.makedirs(root / "train" / sub)
    for index in range(count):
        image = np.zeros((2, 2, 3), np.uint8)
        image[..., 0], image[..., 1] = index // 256, index % 256
        Image.fromarray(image).save(root / "train" / "images" / f"{index:05d}.png")
        Image.fromarray(np.zeros((2, 2), np.uint8)).save(root / "train" / "masks" / f"{index:05d}.png")
    return str(root)


def positions(root, order, count):
    source, _ = load_source(root, "train", num_classes=1, validate=False, order=order)
    return [int(e["image"][0, 0, 0]) * 256 + int(e["image"][0, 0, 1]) for e in source.take(count)]


def test_first_examples_come_from_all_over_a_sorted_folder(tmp_path):
    root = numbered_folder(tmp_path, 2000)
    first = positions(root, TrainingOrder(seed=0), 64)
    assert len(set(first)) == 64
    assert len({p // 200 for p in first}) == 10  # every tenth of the sorted folder is represented
    assert max(np.diff(sorted(first))) < 400  # no stretch of the folder is skipped for long
    assert positions(root, TrainingOrder(seed=0), 64) == first  # seeded: a rerun reads the same order
    assert positions(root, TrainingOrder(seed=1), 64) != first


def test_two_workers_read_every_file_once_per_epoch(tmp_path):
    root = numbered_folder(tmp_path, 100)
    shards = [positions(root, TrainingOrder(seed=3, num_shards=2, shard=i), 100) for i in range(2)]
    for epoch in range(2):
        seen = shards[0][50 * epoch : 50 * epoch + 50] + shards[1][50 * epoch : 50 * epoch + 50]
        assert sorted(seen) == list(range(100)), f"epoch {epoch}"
    assert shards[0][:50] != shards[0][50:]  # a fresh permutation every epoch
    assert set(shards[0][:50]) != set(shards[0][50:])  # and fresh shards: not the same files for ever
    # A resumed run skips what its shard already read: it continues the same sequence.
    assert positions(root, TrainingOrder(seed=3, num_shards=2, shard=1, skip=30), 70) == shards[1][30:]


def test_tfds_training_order_shuffles_and_shards_files():
    """TFDS reads its own files: our order reaches it as file shuffling with our seed and one shard per worker,
    and the stream is endless."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    calls = []

    def as_dataset(self, split, shuffle_files=False, read_config=None, **kwargs):
        calls.append((shuffle_files, read_config))
        image = np.zeros((3, 4, 4, 3), np.uint8)
        return tf.data.Dataset.from_tensor_slices({"image": image, "annotation": image})

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        source, _ = load_source("scene_parse150", "train", order=TrainingOrder(seed=7, num_shards=2, shard=1))
        assert len(list(source.take(10))) == 10  # 3 records, repeated
        load_source("scene_parse150", "validation")
    (shuffled, config), (evaluation, _) = calls
    assert shuffled and config.shuffle_seed == 7 and config.shuffle_reshuffle_each_iteration
    assert (config.input_context.num_input_pipelines, config.input_context.input_pipeline_id) == (2, 1)
    assert not evaluation  # evaluation reads in order


def test_training_workers_read_disjoint_shards_and_resume_in_place(tmp_path):
    """What `pspnet train` feeds each of 2 workers (1 replica each, global batch 4): between them every file once
    per epoch; a run resumed at step 5 continues each worker's stream where it stopped."""
    import tensorflow as tf

    from keras_pspnet.config import load_config
    from keras_pspnet.data.info import augment_config
    from keras_pspnet.train import worker_dataset

    root = numbered_folder(tmp_path, 100)
    config = load_config(None, [f"dataset={root}", "num_classes=1", "crop_size=2", "batch_size=4", "seed=5",
                                "augment={scale: [1, 1], rotate: 0, blur: false, flip: false}"])
    source, info = load_source(root, "train", num_classes=1)
    augment = augment_config(info.augment, config.augment)

    def stream(worker, start, batches):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker, num_replicas_in_sync=2)
        dataset = worker_dataset(config, info, augment, [0.0, 0.0, 0.0], start, 2, context)
        images = np.concatenate([b[0].numpy() for b in dataset.take(batches)])
        return [int(round(i[0, 0, 0])) * 256 + int(round(i[0, 0, 1])) for i in images]

    first = [stream(worker, 0, 25) for worker in range(2)]  # 25 batches of 2: one epoch of this worker's half
    assert sorted(first[0] + first[1]) == list(range(100))
    assert stream(1, 5, 5) == first[1][10:20]  # 5 steps x 2 examples already read
