"""CPU inference latency of every runtime PSPNet ships to, in one run: PyTorch, TensorFlow (graph, XLA), TFLite
fp32/int8, ONNX Runtime and OpenVINO fp32/int8, for PSPNet-R50 and PSPNet-MobileNetV2.

    python benchmarks/runtimes_cpu.py [--size 473] [--classes 150] [--repeats 5] [--threads 2]

Needs the extras test, onnx and openvino (`bash scripts/install.sh test,onnx,openvino`). Batch 1, random weights
(speed does not depend on them), random BN statistics. Every Keras-side row runs what `pspnet export` writes
(`keras_pspnet.export.deployable`: BN folded, no auxiliary head) from the same model; PyTorch runs
tests/mmseg_reference.py (mmsegmentation's structure, eval mode, eager). Each row returns logits at the input size
(TFLite: log-probabilities, its output layout). int8 rows are calibrated on 16 synthetic scenes. Variants are timed
round-robin after two warm-up calls each; the table gives the median and the fastest of the repeats, and how many
pixels get the TF graph's class (a row that computed something else would show here, not as a fast row).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile

from timing import time_round_robin  # (sys.path[0] is this script's folder)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

MODELS = {"R50": ("pspnet_resnet50_v1c", 50), "MobileNetV2": ("pspnet_mobilenet_v2_mmseg", "mobilenet_v2")}


def variants(name: str, args, root: str) -> dict:
    """{row name: (precision, a function running one batch)} for one architecture."""
    import numpy as np
    import onnxruntime
    import openvino
    import tensorflow as tf
    import torch
    from ai_edge_litert.interpreter import Interpreter

    from keras_pspnet import from_preset
    from keras_pspnet.data.context import context_scene
    from keras_pspnet.data.info import DatasetInfo, default_colors
    from keras_pspnet.export import deployable, export_onnx, export_openvino, export_tflite
    from keras_pspnet.runtimes import OpenVINOPredictor
    from tests.conftest import randomize_batchnorm
    from tests.mmseg_reference import PSPNet

    preset, reference_depth = MODELS[name]
    size = (args.size, args.size)
    info = DatasetInfo("bench", tuple(f"class_{i}" for i in range(args.classes)), default_colors(args.classes))
    image = context_scene(0, args.size)["image"].numpy()[None].astype(np.float32)
    calibration = [context_scene(i, args.size, seed=9)["image"].numpy() for i in range(16)]
    model = from_preset(preset, args.classes)
    randomize_batchnorm(model)
    folded = deployable(model)

    def tf_graph(jit: bool):
        function = tf.function(lambda x: folded(x, training=False), jit_compile=jit)
        tensor = tf.constant(image)
        return lambda: function(tensor).numpy()

    reference = PSPNet(args.classes, depth=reference_depth).eval()
    pixels = torch.from_numpy(image).permute(0, 3, 1, 2).contiguous()

    def torch_run():
        with torch.inference_mode():
            return reference(pixels, aux=False).numpy()

    def tflite(quantize: str):
        path = export_tflite(model, os.path.join(root, f"{name}_{quantize}.tflite"), info, input_size=size,
                             quantize=quantize, calibration=calibration if quantize == "int8" else None)
        runner = Interpreter(model_path=path, num_threads=args.threads).get_signature_runner("serving_default")
        pixels_uint8 = image.astype(np.uint8)
        return lambda: runner(images=pixels_uint8)

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = onnxruntime.InferenceSession(export_onnx(model, os.path.join(root, f"{name}.onnx"), info), options,
                                           providers=["CPUExecutionProvider"])
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": args.threads}

    def ir(quantize: str, input_size=None):
        path = export_openvino(model, os.path.join(root, f"{name}_{quantize}_{bool(input_size)}.xml"), info,
                               quantize=quantize, calibration=calibration, input_size=input_size)
        compiled = openvino.Core().compile_model(path, "CPU", config)
        assert OpenVINOPredictor(path).num_classes == args.classes  # the file `pspnet predict` takes
        return lambda: compiled(image)[0]

    return {
        "PyTorch eager (mmseg structure)": ("fp32", torch_run),
        "TF graph (tf.function)": ("fp32", tf_graph(False)),
        "TF XLA (jit_compile)": ("fp32", tf_graph(True)),
        "TFLite (XNNPACK)": ("fp32", tflite("none")),
        "ONNX Runtime (.onnx, any size)": ("fp32", lambda: session.run(None, {"images": image})[0]),
        "OpenVINO (IR, any size)": ("fp32", ir("none")),
        "OpenVINO (IR, --input-size)": ("fp32", ir("none", size)),
        "TFLite int8 (XNNPACK)": ("int8", tflite("int8")),
        "OpenVINO int8 (NNCF)": ("int8", ir("int8")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=473)
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default=",".join(MODELS), help=f"some of {', '.join(MODELS)}")
    args = parser.parse_args()

    import numpy as np
    import onnxruntime
    import openvino
    import tensorflow as tf
    import torch

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    torch.set_num_threads(args.threads)
    tables = {}
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as root:
            rows = variants(name, args, root)
            reference = labels(rows["TF graph (tf.function)"][1](), args.classes)
            agreement = {row: "-" if row.startswith("PyTorch") else  # (its own random weights)
                         f"{100 * np.mean(labels(run(), args.classes) == reference):.2f}%"
                         for row, (_, run) in rows.items()}
            times = time_round_robin({row: run for row, (_, run) in rows.items()}, args.repeats)
            tables[name] = [(row, rows[row][0], statistics.median(t), min(t), agreement[row])
                            for row, t in times.items()]
    print(f"\nPSPNet inference on the CPU, {args.size}x{args.size}, batch 1, {args.classes} classes, {args.threads} "
          f"threads, {platform.processor() or platform.machine()}; TF {tf.__version__}, torch {torch.__version__}, "
          f"onnxruntime {onnxruntime.__version__}, openvino {openvino.__version__.split('-')[0]}")
    print(f"{'model':12s} {'runtime':34s} {'precision':9s} {'median s':>9s} {'min s':>7s} {'vs PyTorch':>10s} "
          f"{'vs fastest fp32':>15s} {'same class':>10s}")
    for name, rows in tables.items():
        pytorch = rows[0][2]
        fastest = min(median for _, precision, median, _, _ in rows if precision == "fp32")
        for row, precision, median, fastest_run, agreement in rows:
            print(f"{name:12s} {row:34s} {precision:9s} {median:9.3f} {fastest_run:7.3f} {pytorch / median:9.2f}x "
                  f"{median / fastest:14.2f}x {agreement:>10s}")
    print("same class: pixels whose class is the TF graph's (the same weights; PyTorch has its own random ones)")


def labels(output, classes: int):
    """The class map [H, W] of one row's output: NHWC or NCHW scores, or LiteRT's {name: scores}."""
    import numpy as np

    output = np.asarray(next(iter(output.values())) if isinstance(output, dict) else output)
    return output[0].argmax(0 if output.shape[-1] != classes else -1)


if __name__ == "__main__":
    main()
