"""Peak memory and time of predicting one large photo with PSPNet-R50 (150 classes), per test protocol.

    python benchmarks/inference_memory.py [--size 3000x4000] [--runs whole,slide,semseg,mmseg] [--scores]

Each run is a fresh process (so peaks do not mix) that builds the model (random weights: memory and time do not
depend on them), makes a random photo and predicts its label map with `predict_labels` (what `pspnet predict`
and `pspnet evaluate` call), or with `predict_scores` (all probabilities at the photo's size) with --scores.
The table gives the process's resident memory before predicting (TensorFlow, the model, the photo), its peak
while predicting (ru_maxrss) and the seconds of the prediction.

Runs:  whole   native size, whole image: beyond --max-side (default 1024) windows of that side
       slide   native size, windows of 473x473 at stride 316
       semseg  the authors' ADE20K protocol: long side 512, windows 473x473, flip
       mmseg   mmsegmentation's ADE20K protocol: keep-ratio resize to 2048x512, whole image
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

RUNS = ("whole", "slide", "semseg", "mmseg")


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def _child(args) -> None:
    import numpy as np

    from keras_pspnet import from_preset, inference
    from keras_pspnet.protocol import MMSEG_PROTOCOLS, SEMSEG_PROTOCOLS, TestProtocol

    protocol = {"whole": TestProtocol(), "slide": TestProtocol(mode="slide", crop=(473, 473)),
                "semseg": SEMSEG_PROTOCOLS["ade20k"], "mmseg": MMSEG_PROTOCOLS["ade20k"]}[args.child]
    model = from_preset("pspnet_resnet50", num_classes=150)
    height, width = args.size
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    predict = inference.predict_scores if args.scores else inference.predict_labels
    before = _rss_mib()
    start = time.perf_counter()
    predict(model, image, protocol, max_side=args.max_side)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"run": args.child, "protocol": protocol.describe(), "before": before, "peak": peak,
                      "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="3000x4000", help="photo HEIGHTxWIDTH")
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--max-side", type=int, help="default: keras_pspnet.inference.MAX_SIDE")
    parser.add_argument("--scores", action="store_true", help="predict_scores instead of predict_labels")
    parser.add_argument("--child", choices=RUNS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.size = tuple(int(v) for v in args.size.lower().split("x"))
    if args.child:
        _child(args)
        return
    from keras_pspnet.console import import_tensorflow_quietly

    import_tensorflow_quietly()
    from keras_pspnet.inference import MAX_SIDE

    args.max_side = args.max_side or MAX_SIDE
    import keras
    import tensorflow as tf

    print(f"PSPNet-R50, 150 classes, {args.size[0]}x{args.size[1]} photo, "
          f"{'predict_scores' if args.scores else 'predict_labels'}, max side {args.max_side}; "
          f"TF {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs, {platform.processor() or 'cpu'}")
    print("| run | protocol | RSS before (MiB) | peak RSS (MiB) | seconds |\n|---|---|---:|---:|---:|")
    for run in args.runs.split(","):
        command = [sys.executable, __file__, "--child", run, "--size", "x".join(map(str, args.size)),
                   "--max-side", str(args.max_side)] + (["--scores"] if args.scores else [])
        result = subprocess.run(command, capture_output=True, text=True,
                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        if result.returncode:
            print(f"| {run} | failed (exit {result.returncode}): {result.stderr.strip().splitlines()[-1:]} | | | |")
            continue
        row = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"| {run} | {row['protocol']} | {row['before']:.0f} | {row['peak']:.0f} | {row['seconds']:.1f} |")


if __name__ == "__main__":
    main()
