"""CPU training throughput (images/s): input pipeline vs training step, and our training step vs PyTorch's.

    python benchmarks/training_cpu.py [--r50-batch 2] [--r50-steps 3] [--crop 473] [--threads 2] [--skip-pipeline]

Pipeline rows: the pipeline is timed alone (decode + paper augmentation + batching, iterated without a
model); it must deliver at least 3x what the training step consumes. The R50 pipeline reads a generated
folder of ADE20K-sized JPEG/PNG pairs (512x683) with the full augmentation (scale, rotation, blur, mirror,
crop 473).

Comparison rows: PSPNet-R50-D8 (mmsegmentation's structure, auxiliary head, 150 classes, train mode) trained
on one pre-made in-memory batch (`--r50-batch` images of `--crop`), only the step timed: ours is
`keras_pspnet.train.make_train_step` (TensorFlow graph) with preset pspnet_resnet50_v1c, our
SegmentationCrossEntropy (logits + 0.4 aux) and our SGD (momentum 0.9, coupled weight decay 5e-4);
PyTorch's is tests/mmseg_reference.py with torch.optim.SGD(momentum=0.9, weight_decay=5e-4) and
CrossEntropyLoss(ignore_index=255) on logits + 0.4 aux. Two warm-up steps each, then the steps alternate
between the frameworks (drift of the machine hits both alike); images/s from the median step time.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

from timing import time_round_robin  # (sys.path[0] is this script's folder)

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
    optimizer = make_optimizer(config, model)
    mean = model_mean(model).tolist()
    pipeline = train_pipeline(source, info.name, config.crop_size, batch, info.augment, mean, cache=config.cache)
    batches = iter(pipeline)
    data_rate = images_per_second(lambda: next(batches), batch, pipeline_steps)
    strategy = tf.distribute.get_strategy()
    step = make_train_step(model, optimizer, training_loss(config, 255), strategy)
    iterator = iter(pipeline)
    train_rate = images_per_second(lambda: float(step(*next(iterator))), batch, steps)
    return name, config.crop_size, batch, train_rate, data_rate


def compare_with_pytorch(batch: int, crop: int, steps: int, classes: int = 150) -> dict:
    """{framework: [step seconds, ...]}: our TF training step vs PyTorch's, same model, batch and crop."""
    import numpy as np
    import tensorflow as tf
    import torch

    from keras_pspnet import from_preset
    from keras_pspnet.losses import SegmentationCrossEntropy
    from keras_pspnet.optimizers import SGD
    from keras_pspnet.train import make_train_step
    from tests.mmseg_reference import PSPNet

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch, crop, crop, 3)).astype("float32")
    masks = rng.integers(0, classes, (batch, crop, crop)).astype("int32")
    masks[:, : crop // 8] = 255  # some ignored pixels, as in real crops

    model = from_preset("pspnet_resnet50_v1c", classes, aux_head=True, input_shape=(crop, crop, 3))
    optimizer = SGD(0.01, momentum=0.9, weight_decay=5e-4, weight_decay_mode="coupled")
    loss = SegmentationCrossEntropy(255)  # averaged over the labelled pixels, as CrossEntropyLoss(ignore_index)
    loss_fn = lambda y, outputs: loss(y, outputs["logits"]) + 0.4 * loss(y, outputs["aux"])
    step = make_train_step(model, optimizer, loss_fn, tf.distribute.get_strategy())
    iterator = iter(tf.data.Dataset.from_tensors((images, masks)).repeat())

    reference = PSPNet(classes, depth=50).train()
    torch_optimizer = torch.optim.SGD(reference.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    criterion = torch.nn.CrossEntropyLoss(ignore_index=255)
    mean, std = np.array([123.675, 116.28, 103.53], "float32"), np.array([58.395, 57.12, 57.375], "float32")
    pixels = torch.from_numpy(((images - mean) / std).transpose(0, 3, 1, 2).copy())  # normalised, as mmseg feeds
    labels = torch.from_numpy(masks).long()

    def torch_step():
        torch_optimizer.zero_grad(set_to_none=True)
        logits, aux = reference(pixels)
        loss = criterion(logits, labels) + 0.4 * criterion(aux, labels)
        loss.backward()
        torch_optimizer.step()
        return loss.item()

    variants = {"ours: Keras 3 / TF, make_train_step": lambda: float(step(*next(iterator))),
                "PyTorch eager, mmseg structure": torch_step}
    return time_round_robin(variants, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--context-steps", type=int, default=50)
    parser.add_argument("--r50-batch", type=int, default=2)
    parser.add_argument("--r50-steps", type=int, default=3)
    parser.add_argument("--crop", type=int, default=473, help="crop of the comparison with PyTorch")
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow and PyTorch threads")
    parser.add_argument("--skip-pipeline", action="store_true", help="only the comparison with PyTorch")
    args = parser.parse_args()
    import tensorflow as tf
    import torch

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    torch.set_num_threads(args.threads)
    if not args.skip_pipeline:
        pipeline_table(args)
    times = compare_with_pytorch(args.r50_batch, args.crop, args.r50_steps)
    reference = statistics.median(times["PyTorch eager, mmseg structure"])
    print(f"\nPSPNet-R50-D8 training step (aux head, 150 classes), {args.crop}x{args.crop}, batch {args.r50_batch}, "
          f"{args.threads} threads, {platform.processor() or platform.machine()}, TF {tf.__version__}, "
          f"torch {torch.__version__}; median of {args.r50_steps} steps after 2 warm-up steps")
    print(f"{'framework':40s} {'median s/step':>13s} {'min s/step':>10s} {'train img/s':>11s} "
          f"{'ours/PyTorch':>12s}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:40s} {median:13.2f} {min(values):10.2f} {args.r50_batch / median:11.3f} "
              f"{reference / median:11.2f}x")


def pipeline_table(args) -> None:
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
