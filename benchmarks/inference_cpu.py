"""CPU inference latency of PSPNet: Keras on TensorFlow (graph, BN folded, XLA) vs the PyTorch reference.

    python benchmarks/inference_cpu.py [--size 473] [--classes 150] [--repeats 7] [--threads 2]

The PyTorch reference is tests/mmseg_reference.py (mmsegmentation's PSPNet-R50-D8 structure, eval mode,
inference without the auxiliary head); the Keras model is the same architecture (preset
pspnet_resnet50_v1c). Variants are timed round-robin after a warm-up, so drift of the machine hits all
alike; the table gives the median and the fastest of the repeats.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys

from timing import time_round_robin  # (sys.path[0] is this script's folder)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=473)
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--depth", type=int, default=50, choices=(50, 101))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    from keras_pspnet import count_macs, fold_batch_norms, from_preset
    from tests.mmseg_reference import PSPNet

    size = (args.size, args.size)
    image = np.random.default_rng(0).uniform(0, 255, (1, *size, 3)).astype("float32")
    model = from_preset(f"pspnet_resnet{args.depth}_v1c", args.classes, input_shape=(*size, 3))
    macs = count_macs(model)
    folded = fold_batch_norms(model)

    def graph(keras_model, jit=False):
        function = tf.function(lambda x: keras_model(x, training=False), jit_compile=jit)
        tensor = tf.constant(image)
        return lambda: function(tensor).numpy()

    reference = PSPNet(args.classes, depth=args.depth).eval()
    pixels = torch.from_numpy(image).permute(0, 3, 1, 2).contiguous()

    def torch_run():
        with torch.inference_mode():
            return reference(pixels, aux=False).numpy()

    variants = {
        "PyTorch 2 reference (mmseg structure)": torch_run,
        "Keras/TF tf.function": graph(model),
        "Keras/TF tf.function, BN folded": graph(folded),
        "Keras/TF XLA (jit_compile), BN folded": graph(folded, jit=True),
    }
    times = time_round_robin(variants, args.repeats)
    reference_median = statistics.median(times["PyTorch 2 reference (mmseg structure)"])
    print(f"\nPSPNet-R{args.depth} inference, {args.size}x{args.size}, batch 1, {args.classes} classes, "
          f"{args.threads} threads, {platform.processor() or platform.machine()}, TF {tf.__version__}, "
          f"torch {torch.__version__}; {macs / 1e9:.1f} GMAC = {2 * macs / 1e9:.1f} GFLOP (convolutions)")
    print(f"{'variant':48s} {'median s':>9s} {'min s':>7s} {'GFLOP/s':>8s} {'vs PyTorch':>10s}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:48s} {median:9.3f} {min(values):7.3f} {2 * macs / 1e9 / median:8.1f} "
              f"{reference_median / median:9.2f}x")

    head_conv_table(tf, np, model, args.repeats)


def head_conv_table(tf, np, model, repeats: int) -> None:
    """The head's 3x3 conv on its real input shapes: Concatenate + Conv2D vs our ConcatConv2D."""
    import keras

    from keras_pspnet.layers import ConcatConv2D

    layer = model.get_layer("head_conv")
    shapes = [(1, *tensor.shape[1:]) for tensor in layer.input]
    inputs = [tf.constant(np.random.default_rng(i).normal(size=s).astype("float32")) for i, s in enumerate(shapes)]
    plain = keras.layers.Conv2D(layer.filters, 3, padding="same", use_bias=False)
    chunked = ConcatConv2D(layer.filters, 3, padding="same", use_bias=False)
    plain.build((*shapes[0][:-1], sum(s[-1] for s in shapes)))
    chunked.build(shapes)
    plain.set_weights(layer.get_weights())
    chunked.set_weights(layer.get_weights())
    concat = tf.function(lambda xs: plain(tf.concat(xs, axis=-1)))
    split = tf.function(lambda xs: chunked(xs))
    times = time_round_robin({"Concatenate + Conv2D": lambda: concat(inputs).numpy(),
                              "ConcatConv2D (512-channel chunks)": lambda: split(inputs).numpy()}, repeats)
    macs = shapes[0][1] * shapes[0][2] * int(np.prod(layer.kernel.shape))
    print(f"\nHead conv alone: 3x3, {sum(s[-1] for s in shapes)} -> {layer.filters} channels at "
          f"{shapes[0][1]}x{shapes[0][2]}, {macs / 1e9:.1f} GMAC, TF graph mode")
    print(f"{'variant':48s} {'median s':>9s} {'min s':>7s} {'GFLOP/s':>8s}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:48s} {median:9.3f} {min(values):7.3f} {2 * macs / 1e9 / median:8.1f}")


if __name__ == "__main__":
    main()
