"""Peak memory and latency of the .tflite layouts as a phone runs them: LiteRT, XNNPACK, 2 threads, batch 1.

    python benchmarks/tflite_android.py export DIR [--size 473] [--classes 19,150] [--quantize none,int8]
        [--layouts scores,class_map] [--presets pspnet_mobilenet_v2,pspnet_resnet50]
    python benchmarks/tflite_android.py measure DIR... [--runs 10] [--threads 2] [--mediapipe]

`export` writes one .tflite per preset, class count, quantization and layout (random weights: memory and speed do
not depend on them; int8 is calibrated on 16 synthetic scenes). `--layouts default` exports the default layout
of the package this script sits in: to measure an earlier version's layout, copy the script and timing.py into
the benchmarks/ folder of a checkout of that version and run `export` there.

`measure` runs each file in fresh processes (LiteRT alone, no TensorFlow): loads it, runs it once (XNNPACK
applies its delegate), then `--runs` more times, and prints the peak RSS of the process (Python and LiteRT
included) and the median latency of the interpreter's invoke. The peak is measured twice: reading the outputs
where LiteRT wrote them (as MediaPipe does) and copying them (Python's signature runner, an app's own buffer).
`--mediapipe` adds the peak RSS (without TensorFlow, which MediaPipe would import for its docs) and the median
latency of MediaPipe's ImageSegmenter on each scores model (category mask only).
"""

from __future__ import annotations

import json
import os
import resource
import sys

# Light imports only (sys.path[0] is this script's folder): the runs in fresh processes import this module, and
# their "RSS before load" is Python's own. The other modules come in the functions that use them.
from timing import median_seconds

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run_litert(path: str, threads: str, runs: str, mode: str) -> None:
    """One file in LiteRT, in this (fresh) process: prints its JSON line (RSS before loading, peak, median ms,
    outputs). mode "copy": the signature runner returns copies of the outputs, as an app copies them into its own
    buffers; "view": the outputs are read where LiteRT wrote them, as MediaPipe reads them."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    before = _peak_mib()
    interpreter = Interpreter(model_path=path, num_threads=int(threads))
    outputs = interpreter._get_full_signature_list()["serving_default"]["outputs"]  # name -> tensor index
    (source,), details = interpreter.get_input_details(), {t["index"]: t for t in interpreter.get_output_details()}
    targets = {name: details[index] for name, index in sorted(outputs.items())}
    image = np.random.default_rng(0).integers(0, 256, source["shape"], dtype=np.uint8)
    if mode == "copy":
        runner = interpreter.get_signature_runner("serving_default")  # (it holds the interpreter's arrays)
        seconds = median_seconds(lambda: runner(images=image), int(runs))
    else:
        interpreter.allocate_tensors()
        seconds = median_seconds(lambda: (interpreter.set_tensor(source["index"], image), interpreter.invoke()),
                                 int(runs))
        for target in targets.values():  # (the outputs are read)
            float(interpreter.tensor(target["index"])().sum())
    print(json.dumps({"before": before, "peak": _peak_mib(), "ms": 1000 * seconds,
                      "output": ", ".join(f"{n} {t['dtype'].__name__} {t['shape'].tolist()}"
                                          for n, t in targets.items())}))


class _NoTensorFlow:  # MediaPipe imports TensorFlow when it is installed (for its docs only): not in this measure
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            raise ModuleNotFoundError(name)


def _run_mediapipe(path: str, runs: str, height: str, width: str) -> None:
    """One scores file in MediaPipe's ImageSegmenter (category mask only), in this (fresh) process: prints its JSON
    line (RSS before loading, peak, median ms)."""
    sys.meta_path.insert(0, _NoTensorFlow())
    import mediapipe as mp
    import numpy as np
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    before = _peak_mib()
    segmenter = vision.ImageSegmenter.create_from_options(vision.ImageSegmenterOptions(
        base_options=BaseOptions(model_asset_path=path), output_category_mask=True, output_confidence_masks=False))
    image = mp.Image(image_format=mp.ImageFormat.SRGB,
                     data=np.random.default_rng(0).integers(0, 256, (int(height), int(width), 3), dtype=np.uint8))
    seconds = median_seconds(lambda: segmenter.segment(image).category_mask.numpy_view(), int(runs))
    print(json.dumps({"before": before, "peak": _peak_mib(), "ms": 1000 * seconds}))


RUNS = {"_litert": _run_litert, "_mediapipe": _run_mediapipe}  # what `measure` runs in a fresh process each


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


def _last_line(result) -> str:
    lines = (result.stdout + result.stderr).strip().splitlines()
    return lines[-1][:100] if lines else f"exit code {result.returncode}"


def _run(kind: str, path: str, *args) -> dict | str:
    import subprocess

    result = subprocess.run([sys.executable, os.path.abspath(__file__), kind, path, *map(str, args)],
                            capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1]) if result.returncode == 0 else \
        f"fails: {_last_line(result)}"


def measure(args) -> None:
    from importlib.metadata import version

    files = sorted(os.path.join(d, f) for d in args.dirs for f in os.listdir(d) if f.endswith(".tflite"))
    print(f"LiteRT {version('ai-edge-litert')}, XNNPACK, {args.threads} threads, batch 1, median of {args.runs} runs "
          "after one; peak RSS of the whole process (Python and the runtime included), MiB")
    header = "| file | outputs | MiB | RSS before load | peak RSS, outputs in place | peak RSS, outputs copied | ms |"
    mediapipe = f" MediaPipe {version('mediapipe')} peak RSS | MediaPipe ms |" if args.mediapipe else ""
    print(header + mediapipe)
    print("|---|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if args.mediapipe else ""))
    for path in files:
        in_place = _run("_litert", path, args.threads, args.runs, "view")
        copied = _run("_litert", path, args.threads, args.runs, "copy")
        if isinstance(in_place, str) or isinstance(copied, str):
            print(f"| {os.path.basename(path)} | {in_place if isinstance(in_place, str) else copied} |", flush=True)
            continue
        row = f"| {os.path.basename(path)} | {in_place['output']} | {os.path.getsize(path) / 2**20:.1f} | " \
              f"{in_place['before']:.0f} | {in_place['peak']:.0f} | {copied['peak']:.0f} | {in_place['ms']:.0f} |"
        if args.mediapipe:  # MediaPipe takes the per-class scores layout only
            shape = in_place["output"].split("[")[1].rstrip("]").split(", ")
            result = _run("_mediapipe", path, args.runs, shape[1], shape[2]) if in_place["output"].startswith(
                "scores") else "-"
            row += f" {result} | |" if isinstance(result, str) else f" {result['peak']:.0f} | {result['ms']:.0f} |"
        print(row, flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in RUNS:
        return RUNS[sys.argv[1]](*sys.argv[2:])
    import argparse

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
