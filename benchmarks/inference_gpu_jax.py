"""GPU inference of PSPNet with Keras 3 on the JAX backend (TensorFlow is not needed).

    KERAS_BACKEND=jax python benchmarks/inference_gpu_jax.py [--repeats 20]

The same Keras model as on TensorFlow, jitted with `stateless_call`; the timed function returns the class
map on the device (what a service sends back), synchronised with `block_until_ready`. Precisions: float32
(XLA may use TF32 tensor cores for convolutions) and mixed_bfloat16. Median of `--repeats` after warm-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--classes", type=int, default=150)
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    import keras
    import numpy as np

    from keras_pspnet import count_macs, from_preset

    cases = [("pspnet_resnet50_v1c", (473, 473), 1), ("pspnet_resnet50_v1c", (473, 473), 8),
             ("pspnet_resnet50_v1c", (512, 1024), 1), ("pspnet_mobilenet_v2", (473, 473), 1)]
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, keras {keras.__version__}", flush=True)
    print(f"{'model':22s} {'precision':15s} {'input':>9s} {'batch':>5s} {'median ms':>9s} {'images/s':>9s} "
          f"{'TFLOP/s':>8s} {'compile s':>9s}", flush=True)
    for precision in ("float32", "mixed_bfloat16"):
        keras.mixed_precision.set_dtype_policy(precision)
        for preset, size, batch in cases:
            model = from_preset(preset, args.classes, input_shape=(*size, 3))
            macs = count_macs(model)
            trainable = [v.value for v in model.trainable_variables]
            frozen = [v.value for v in model.non_trainable_variables]

            @jax.jit
            def class_map(trainable, frozen, images):
                logits, _ = model.stateless_call(trainable, frozen, images, training=False)
                return jnp.argmax(logits, axis=-1)

            images = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (batch, *size, 3)).astype("float32"))
            start = time.perf_counter()
            class_map(trainable, frozen, images).block_until_ready()
            compile_seconds = time.perf_counter() - start
            for _ in range(3):
                class_map(trainable, frozen, images).block_until_ready()
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                class_map(trainable, frozen, images).block_until_ready()
                times.append(time.perf_counter() - start)
            median = statistics.median(times)
            print(f"{preset:22s} {precision:15s} {size[0]:>4d}x{size[1]:<4d} {batch:5d} {1000 * median:9.2f} "
                  f"{batch / median:9.1f} {2 * macs * batch / median / 1e12:8.1f} {compile_seconds:9.1f}", flush=True)


if __name__ == "__main__":
    main()
