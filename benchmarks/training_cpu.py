"""CPU training throughput and input-pipeline throughput (images/s), for the context demo and R50 at 473.

    python benchmarks/training_cpu.py [--r50-batch 2] [--r50-steps 3]

The pipeline is timed alone (decode + paper augmentation + batching, iterated without a model); it must
deliver at least 3x what the training step consumes. The R50 pipeline reads a generated folder of
ADE20K-sized JPEG/PNG pairs (512x683) with the full augmentation (scale, rotation, blur, mirror, crop 473).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def images_per_second(next_batch, batch_size: int, steps: int) -> float:
    next_batch()  # warm-up: tracing, first batches
    next_batch()
    start = time.perf_counter()
    for _ in range(steps):
        next_batch()
    return steps * batch_size / (time.perf_counter() - start)


def write_folder(root: str, count: int = 32) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        os.makedirs(os.path.join(root, "train", sub), exist_ok=True)
    for i in range(count):
        image = rng.integers(0, 255, (512, 683, 3), dtype=np.uint8)
        Image.fromarray(image).save(os.path.join(root, "train", "images", f"{i}.jpg"), quality=90)
        mask = rng.integers(0, 150, (512, 683), dtype=np.uint8)
        Image.fromarray(mask).save(os.path.join(root, "train", "masks", f"{i}.png"))


def measure(name, config_source, batch, steps, pipeline_steps):
    """(name, crop, batch, training images/s, pipeline images/s); `config_source` = (path, overrides)."""
    import tensorflow as tf

    from keras_pspnet.config import load_config
    from keras_pspnet.data import load_source, train_pipeline
    from keras_pspnet.model import model_mean
    from keras_pspnet.train import build_model, make_optimizer, make_train_step, training_loss

    config = load_config(*config_source)
    source, info = load_source(config.dataset, "train", num_classes=config.num_classes,
                               context_scenes=config.context_scenes, context_size=config.context_size)
    model = build_model(config, info, sync_batchnorm=False)
    optimizer = make_optimizer(config)
    mean = model_mean(model).tolist()
    pipeline = train_pipeline(source, info.name, config.crop_size, batch, info.augment, mean, cache=config.cache)
    batches = iter(pipeline)
    data_rate = images_per_second(lambda: next(batches), batch, pipeline_steps)
    strategy = tf.distribute.get_strategy()
    step = make_train_step(model, optimizer, training_loss(config, 255), strategy)
    iterator = iter(pipeline)
    train_rate = images_per_second(lambda: float(step(iterator)), batch, steps)
    return name, config.crop_size, batch, train_rate, data_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--context-steps", type=int, default=50)
    parser.add_argument("--r50-batch", type=int, default=2)
    parser.add_argument("--r50-steps", type=int, default=3)
    args = parser.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    rows = [measure("context demo (PSPNet, ResNet-10, 3 stages)",
                    (os.path.join(here, "..", "training", "configs", "context_pspnet.yaml"), []), 8,
                    args.context_steps, 100)]
    with tempfile.TemporaryDirectory() as root:
        write_folder(root)
        rows.append(measure("PSPNet-R50 (aux head), paper augmentation",
                            (None, [f"dataset={root}", "num_classes=150", "model={preset: pspnet_resnet50}",
                                    "crop_size=[473, 473]", "val_split=null"]),
                            args.r50_batch, args.r50_steps, 20))
    print(f"\n{'model':44s} {'crop':>9s} {'batch':>5s} {'train img/s':>11s} {'pipeline img/s':>14s} {'ratio':>6s}")
    for name, crop, batch, train_rate, data_rate in rows:
        print(f"{name:44s} {crop[0]:>4d}x{crop[1]:<4d} {batch:5d} {train_rate:11.2f} {data_rate:14.1f} "
              f"{data_rate / train_rate:5.0f}x")


if __name__ == "__main__":
    main()
