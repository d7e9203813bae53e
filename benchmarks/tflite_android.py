"""Peak memory and latency of the .tflite layouts as a phone runs them: LiteRT, XNNPACK, 2 threads, batch 1.

    python benchmarks/tflite_android.py export DIR [--size 473] [--classes 19,150] [--quantize none,int8]
        [--layouts scores,class_map] [--presets pspnet_mobilenet_v2,pspnet_resnet50]
    python benchmarks/tflite_android.py measure DIR... [--runs 10] [--threads 2]

`export` writes one .tflite per preset, class count, quantization and layout (random weights: memory and speed do
not depend on them; int8 is calibrated on 16 synthetic scenes). `--layouts default` exports the installed
package's default layout, which is how the layout of an earlier version is measured: run `export` with that
version's package on the PYTHONPATH. `measure` runs each file in a fresh process (LiteRT alone, no TensorFlow):
loads it, runs it once (XNNPACK applies its delegate), then `--runs` more times, and prints a table of the
peak RSS of that process (Python and LiteRT included) and the median latency; `--mediapipe` adds the median
latency of MediaPipe's ImageSegmenter on each scores model (category mask; load failures are shown).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

MEASURE = """
import json, resource, statistics, sys, time
import numpy as np
from ai_edge_litert.interpreter import Interpreter
path, threads, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
runner = Interpreter(model_path=path, num_threads=threads).get_signature_runner("serving_default")
shape = runner.get_input_details()["images"]["shape"]
image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
runner(images=image)
times = []
for _ in range(runs):
    start = time.perf_counter()
    outputs = runner(images=image)
    times.append(time.perf_counter() - start)
    del outputs
print(json.dumps({"before": before / 1024, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "ms": 1000 * statistics.median(times),
                  "outputs": {k: f"{v['dtype'].__name__} {v['shape'].tolist()}"
                              for k, v in runner.get_output_details().items()}}))
"""

MEDIAPIPE = """
import statistics, sys, time
import numpy as np
import mediapipe as mp
from mediapipe.tasks.python import vision
from mediapipe.tasks.python.core.base_options import BaseOptions
path, runs = sys.argv[1], int(sys.argv[2])
segmenter = vision.ImageSegmenter.create_from_options(vision.ImageSegmenterOptions(
    base_options=BaseOptions(model_asset_path=path), output_category_mask=True, output_confidence_masks=False))
height, width = (int(v) for v in sys.argv[3:5])
image = mp.Image(image_format=mp.ImageFormat.SRGB,
                 data=np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))
segmenter.segment(image)
times = []
for _ in range(runs):
    start = time.perf_counter()
    segmenter.segment(image).category_mask.numpy_view()
    times.append(time.perf_counter() - start)
print(1000 * statistics.median(times))
"""


def export(args) -> None:
    import tensorflow as tf

    from keras_pspnet import from_preset
    from keras_pspnet.console import native_output_hidden
    from keras_pspnet.data.context import context_scene
    from keras_pspnet.data.info import DatasetInfo, default_colors
    from keras_pspnet.export import export_tflite

    os.makedirs(args.dir, exist_ok=True)
    calibration = [context_scene(i, args.size, seed=9)["image"].numpy() for i in range(16)]
    for preset in args.presets.split(","):
        for classes in (int(c) for c in args.classes.split(",")):
            model = from_preset(preset, classes)
            info = DatasetInfo("bench", tuple(f"class_{i}" for i in range(classes)), default_colors(classes))
            for quantize in args.quantize.split(","):
                for layout in args.layouts.split(","):
                    path = os.path.join(args.dir, f"{preset}_{classes}_{quantize}_{layout}.tflite")
                    if os.path.exists(path):
                        continue
                    options = {} if layout == "default" else {"outputs": layout}
                    with native_output_hidden():
                        export_tflite(model, path, info, input_size=(args.size, args.size), quantize=quantize,
                                      calibration=calibration if quantize == "int8" else None, **options)
                    print(f"{path}: {os.path.getsize(path) / 2**20:.1f} MiB", flush=True)
            del model
            tf.keras.backend.clear_session()


def measure(args) -> None:
    files = sorted(os.path.join(d, f) for d in args.dirs for f in os.listdir(d) if f.endswith(".tflite"))
    print(f"LiteRT, XNNPACK, {args.threads} threads, median of {args.runs} runs after one; peak RSS of the process")
    print("| file | outputs | MiB | RSS before load (MiB) | peak RSS (MiB) | median ms |"
          + (" MediaPipe ImageSegmenter median ms |" if args.mediapipe else ""))
    print("|---|---|---:|---:|---:|---:|" + ("---:|" if args.mediapipe else ""))
    for path in files:
        result = subprocess.run([sys.executable, "-c", MEASURE, path, str(args.threads), str(args.runs)],
                                capture_output=True, text=True)
        if result.returncode:
            print(f"| {path} | failed: {result.stderr.strip().splitlines()[-1]} |||||", flush=True)
            continue
        row = json.loads(result.stdout.strip().splitlines()[-1])
        outputs = ", ".join(f"{k} {v}" for k, v in row["outputs"].items())
        mediapipe = ""
        if args.mediapipe:  # its category mask; MediaPipe takes the per-class layout only
            height, width = next(v for v in row["outputs"].values()).split("[")[1].split(", ")[1:3]
            result = subprocess.run([sys.executable, "-c", MEDIAPIPE, path, str(args.runs), height, width],
                                    capture_output=True, text=True) if "scores" in row["outputs"] else None
            mediapipe = " - |" if result is None else f" {float(result.stdout.split()[-1]):.0f} |" \
                if result.returncode == 0 else f" fails: {result.stderr.strip().splitlines()[-1][:80]} |"
        print(f"| {os.path.relpath(path)} | {outputs} | {os.path.getsize(path) / 2**20:.1f} | {row['before']:.0f} | "
              f"{row['peak']:.0f} | {row['ms']:.0f} |{mediapipe}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(required=True)
    exporting = commands.add_parser("export")
    exporting.add_argument("dir")
    exporting.add_argument("--size", type=int, default=473)
    exporting.add_argument("--classes", default="19,150")
    exporting.add_argument("--quantize", default="none,int8")
    exporting.add_argument("--layouts", default="scores,class_map")
    exporting.add_argument("--presets", default="pspnet_mobilenet_v2,pspnet_resnet50")
    exporting.set_defaults(run=export)
    measuring = commands.add_parser("measure")
    measuring.add_argument("dirs", nargs="+")
    measuring.add_argument("--runs", type=int, default=10)
    measuring.add_argument("--threads", type=int, default=2)
    measuring.add_argument("--mediapipe", action="store_true",
                           help="also run each scores model in MediaPipe's ImageSegmenter (its own threads)")
    measuring.set_defaults(run=measure)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
