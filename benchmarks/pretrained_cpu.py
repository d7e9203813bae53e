"""Seconds of `from_pretrained` for a full-size PSPNet-R101 (ADE20K, 150 classes, auxiliary head): the first call
(verify, convert without torch, cache; the download is timed apart) and later calls (load from the cache).

    python benchmarks/pretrained_cpu.py [--depth 101] [--repeats 3]

The checkpoint is an mmsegmentation-format file of the real size and key layout (tests/mmseg_reference.py,
random weights), served from 127.0.0.1 through $KERAS_PSPNET_MIRROR. Each stage runs in a fresh process, as a
user's script would; the table gives the seconds inside the call and the process's import time apart.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

STAGE = """
import json, sys, time
started = time.perf_counter()
sys.modules["torch"] = None  # the user's path needs no torch
from keras_pspnet import zoo
from keras_pspnet.protocol import TestProtocol
imported = time.perf_counter()
fields = json.loads(sys.argv[2])
zoo.ZOO[fields["name"]] = zoo.PretrainedPSPNet(**fields, protocol=TestProtocol("mmseg", (2048, 512)))
if sys.argv[1] == "download":
    zoo.download(fields["name"])
else:
    model = zoo.from_pretrained(fields["name"])
    assert model.output.shape[-1] == 150
print(json.dumps({"import": imported - started, "call": time.perf_counter() - imported}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=101, choices=(50, 101))
    parser.add_argument("--repeats", type=int, default=3, help="later calls to time")
    args = parser.parse_args()

    from tests.checkpoints import serve, zoo_entry

    with tempfile.TemporaryDirectory() as root:
        name = f"pspnet_r{args.depth}-d8_4xb4-160k_ade20k-512x512"
        full_size = {"stem_widths": (32, 32, 64), "base_width": 64, "channels": 512, "aux_channels": 256}
        _, entry = zoo_entry(os.path.join(root, "host"), name, 150, "ade20k", depth=args.depth, **full_size)
        size = os.path.getsize(os.path.join(root, "host", entry.path)) / 2**20
        fields = json.dumps({"name": name, "dataset": "ade20k", "backbone": entry.backbone, "path": entry.path,
                             "miou": entry.miou, "miou_ms": entry.miou_ms})
        with serve(os.path.join(root, "host")) as url:
            env = {**os.environ, "KERAS_PSPNET_MIRROR": url, "KERAS_HOME": os.path.join(root, "home"),
                   "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ROOT}

            def stage(kind: str) -> dict:
                result = subprocess.run([sys.executable, "-c", STAGE, kind, fields], env=env, capture_output=True,
                                        text=True, check=False)
                if result.returncode:
                    raise SystemExit(result.stderr[-3000:])
                return json.loads(result.stdout.strip().splitlines()[-1])

            download = stage("download")
            first = stage("first")
            later = [stage("later") for _ in range(args.repeats)]
    print(f"\nfrom_pretrained, PSPNet-R{args.depth}-D8 (ADE20K, 150 classes, aux head), checkpoint {size:.0f} MiB, "
          f"served from 127.0.0.1, torch not importable")
    print(f"{'stage':58s} {'seconds':>8s}")
    rows = [("download from 127.0.0.1 + SHA-256 check (apart)", download["call"]),
            ("first call: verify + convert + save the converted model", first["call"]),
            (f"later calls: load the converted model (median of {args.repeats})",
             statistics.median(s["call"] for s in later)),
            ("import keras_pspnet (TensorFlow, Keras), per process", statistics.median(s["import"] for s in later))]
    for label, seconds in rows:
        print(f"{label:58s} {seconds:8.2f}")


if __name__ == "__main__":
    main()
