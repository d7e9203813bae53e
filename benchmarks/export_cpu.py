"""CPU latency and size of the exported formats: SavedModel vs TFLite fp32 / fp16 / int8 (XNNPACK).

    python benchmarks/export_cpu.py [--size 473] [--classes 150] [--repeats 5] [--threads 2]

PSPNet-R50 and PSPNet-MobileNetV2 (presets), batch 1. Weights are random (speed and size do not depend on
them); int8 is calibrated on 16 synthetic scenes. Latency: median of `--repeats` runs after a warm-up.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from timing import median_seconds  # (sys.path[0] is this script's folder)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def folder_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=473)
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--presets", default="pspnet_resnet50,pspnet_mobilenet_v2")
    args = parser.parse_args()

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    from ai_edge_litert.interpreter import Interpreter

    from keras_pspnet import from_preset
    from keras_pspnet.data.context import context_scene
    from keras_pspnet.data.info import DatasetInfo, default_colors
    from keras_pspnet.export import export_saved_model, export_tflite

    size = (args.size, args.size)
    info = DatasetInfo("bench", tuple(f"class_{i}" for i in range(args.classes)), default_colors(args.classes))
    image = context_scene(0, args.size)["image"].numpy()
    calibration = [context_scene(i, args.size, seed=9)["image"].numpy() for i in range(16)]
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for preset in args.presets.split(","):
            model = from_preset(preset, args.classes)
            saved = export_saved_model(model, os.path.join(root, preset), info, warmup_sizes=[])
            serve = tf.saved_model.load(saved).signatures["serving_default"]
            batch = tf.constant(image[None])
            saved_seconds = median_seconds(lambda: serve(images=batch)["class_map"].numpy(), args.repeats)
            rows.append((preset, "SavedModel (TF, oneDNN)", saved_seconds, folder_size(saved)))
            for quantize in ("none", "fp16", "int8"):
                path = os.path.join(root, f"{preset}_{quantize}.tflite")
                export_tflite(model, path, info, input_size=size, quantize=quantize,
                              calibration=calibration if quantize == "int8" else None)
                runner = Interpreter(model_path=path, num_threads=args.threads).get_signature_runner("serving_default")
                seconds = median_seconds(lambda: runner(images=image[None]), args.repeats)
                rows.append((preset, f"TFLite {'fp32' if quantize == 'none' else quantize} (XNNPACK)", seconds,
                             os.path.getsize(path)))
            del model
    print(f"\n{args.size}x{args.size}, batch 1, {args.classes} classes, {args.threads} threads, TF {tf.__version__}")
    print(f"{'model':22s} {'format':26s} {'median s':>9s} {'MiB':>7s} {'speed vs SM':>11s} {'size vs SM':>10s}")
    reference = {}
    for preset, name, seconds, nbytes in rows:
        reference.setdefault(preset, (seconds, nbytes))
        base_seconds, base_bytes = reference[preset]
        print(f"{preset:22s} {name:26s} {seconds:9.3f} {nbytes / 2**20:7.1f} {base_seconds / seconds:10.2f}x "
              f"{nbytes / base_bytes:9.2f}x")


if __name__ == "__main__":
    main()
