"""GPU training throughput of PSPNet: Keras 3 `model.fit` on the JAX backend vs PyTorch eager (bfloat16).

    python benchmarks/training_gpu_jax.py [--size 713] [--batch 8] [--steps 20] [--depth 50] [--classes 150]
                                          [--frameworks jax,torch,torch_cl]

No TensorFlow: the JAX side sets KERAS_BACKEND=jax, and keras_pspnet imports without it (checked below).

Both sides train PSPNet-R{depth}-D8 (mmsegmentation's structure, ResNetV1c, auxiliary head on stage 3, train
mode: BN batch statistics, dropout) on one synthetic batch held on the GPU, with SGD (momentum 0.9, weight
decay 5e-4) and cross-entropy ignoring label 255 on logits + 0.4 x aux:

- jax: `model.fit` with keras_pspnet.losses.SegmentationCrossEntropy for "logits" and "aux" (loss_weights 1 and
  0.4), keras_pspnet.optimizers.SGD (PyTorch's coupled weight decay), mixed_bfloat16 policy; the data is a
  generator yielding the same device-resident batch. One epoch of 3 + `--steps` steps, timed from the start
  of the 4th step (state synchronised) to the end of the epoch (variables synchronised): the first two
  steps compile (Keras' JAX trainer compiles train_step twice: uncommitted, then committed variables).
- torch / torch_cl: tests/mmseg_reference.py in train mode under `torch.autocast("cuda", torch.bfloat16)`,
  torch.optim.SGD, cudnn.benchmark on (as mmsegmentation's configs); torch_cl in channels_last memory format.
  Five warm-up steps, then `--steps` steps between two synchronisations.

Each framework runs in its own subprocess (one GPU allocator at a time; JAX preallocates most of the memory);
the parent prints one table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
MARKER = "RESULT "


def synthetic(np, batch, size, classes):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    masks = rng.integers(0, classes, (batch, size, size)).astype("int32")
    masks[:, : size // 8] = 255  # some ignored pixels, as in real crops
    return images, masks


def run_jax(args) -> dict:
    os.environ["KERAS_BACKEND"] = "jax"
    import jax
    import keras
    import numpy as np

    from keras_pspnet.losses import SegmentationCrossEntropy
    from keras_pspnet.optimizers import SGD
    from keras_pspnet.presets import from_preset

    assert "tensorflow" not in sys.modules, "TensorFlow was imported"
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    model = from_preset(f"pspnet_resnet{args.depth}_v1c", args.classes, aux_head=True,
                        input_shape=(args.size, args.size, 3))
    loss = SegmentationCrossEntropy(255)
    model.compile(optimizer=SGD(0.01, momentum=0.9, weight_decay=5e-4, weight_decay_mode="coupled"),
                  loss={"logits": loss, "aux": loss}, loss_weights={"logits": 1.0, "aux": 0.4})
    images, masks = synthetic(np, args.batch, args.size, args.classes)
    device = jax.devices()[0]
    x, y = jax.device_put(images, device), jax.device_put(masks, device)

    def batches():
        while True:
            yield x, {"logits": y, "aux": y}

    warmup = 3  # Keras compiles train_step twice: on the first step (variables not yet committed to the
    # device) and on the second; the first step of every later epoch compiles once more (reset metrics), so
    # a single epoch is run and timed from its warm-up-th step on.

    class StepTimer(keras.callbacks.Callback):  # no batch-end hook: Keras keeps dispatching steps asynchronously
        def on_train_begin(self, logs=None):
            self.begin = time.perf_counter()

        def on_train_batch_begin(self, batch, logs=None):
            if batch == warmup:
                jax.block_until_ready(self.model._jax_state)  # the state after the last warm-up step
                self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            jax.block_until_ready([v.value for v in self.model.variables])
            self.seconds = time.perf_counter() - self.start
            self.warmup_seconds = self.start - self.begin

    timer = StepTimer()
    model.fit(batches(), steps_per_epoch=warmup + args.steps, epochs=1, callbacks=[timer], verbose=0)
    assert "tensorflow" not in sys.modules, "TensorFlow was imported"
    stats = device.memory_stats() or {}
    return {"framework": f"Keras {keras.__version__} / JAX {jax.__version__}, model.fit",
            "precision": "mixed_bfloat16", "seconds": timer.seconds, "warmup_s": timer.warmup_seconds,
            "peak_bytes": stats.get("peak_bytes_in_use"), "device": device.device_kind}


def run_torch(args, channels_last: bool) -> dict:
    import numpy as np
    import torch

    from tests.mmseg_reference import PSPNet

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.backends.cudnn.benchmark = True
    widths = {"channels": 128, "aux_channels": 64} if args.depth == 18 else {}  # mmseg's r18 heads, as our preset
    model = PSPNet(args.classes, depth=args.depth, **widths).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    criterion = torch.nn.CrossEntropyLoss(ignore_index=255)
    images, masks = synthetic(np, args.batch, args.size, args.classes)
    mean, std = np.array([123.675, 116.28, 103.53], "float32"), np.array([58.395, 57.12, 57.375], "float32")
    pixels = torch.from_numpy(((images - mean) / std).transpose(0, 3, 1, 2).copy()).to(device)
    labels = torch.from_numpy(masks).long().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        pixels = pixels.contiguous(memory_format=torch.channels_last)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits, aux = model(pixels)
            loss = criterion(logits.float(), labels) + 0.4 * criterion(aux.float(), labels)
        loss.backward()
        optimizer.step()

    def synchronize():
        if cuda:
            torch.cuda.synchronize()

    for _ in range(5):
        step()
    synchronize()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize()
    seconds = time.perf_counter() - start
    return {"framework": f"PyTorch {torch.__version__} eager" + (", channels_last" if channels_last else ""),
            "precision": "autocast bfloat16", "seconds": seconds,
            "peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
            "device": torch.cuda.get_device_name() if cuda else "cpu"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=713)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="timed steps (and steps of the compiling epoch)")
    parser.add_argument("--depth", type=int, default=50, choices=(18, 50, 101))
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--frameworks", default="jax,torch,torch_cl")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        run = {"jax": lambda: run_jax(args), "torch": lambda: run_torch(args, False),
               "torch_cl": lambda: run_torch(args, True)}[args.child]
        print(MARKER + json.dumps(run()), flush=True)
        return

    rows = []
    for framework in args.frameworks.split(","):
        command = [sys.executable, os.path.abspath(__file__), "--child", framework, "--size", str(args.size),
                   "--batch", str(args.batch), "--steps", str(args.steps), "--depth", str(args.depth),
                   "--classes", str(args.classes)]
        print(f"== {framework}", flush=True)
        start = time.perf_counter()
        process = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = process.stdout.splitlines()
        results = [json.loads(line[len(MARKER):]) for line in lines if line.startswith(MARKER)]
        print("\n".join(line for line in lines if not line.startswith(MARKER))[-3000:], flush=True)
        print(f"   ({time.perf_counter() - start:.0f} s in all, exit {process.returncode})", flush=True)
        rows.append(results[0] if results else {"framework": framework, "error": f"exit {process.returncode}"})

    versions(rows)
    print(f"\nPSPNet-R{args.depth}-D8 training (aux head, {args.classes} classes, SGD), batch {args.batch} of "
          f"{args.size}x{args.size}, {args.steps} timed steps")
    print(f"{'framework':52s} {'precision':17s} {'batch':>5s} {'size':>7s} {'images/s':>9s} {'ms/step':>8s} "
          f"{'peak GiB':>8s} {'vs torch':>8s}")
    reference = next((row["seconds"] for row in rows if row.get("framework", "").startswith("PyTorch")
                      and "seconds" in row), None)
    for row in rows:
        if "error" in row:
            print(f"{row['framework']:52s} failed ({row['error']})")
            continue
        ms = 1000 * row["seconds"] / args.steps
        peak = f"{row['peak_bytes'] / 2**30:8.1f}" if row.get("peak_bytes") else f"{'-':>8s}"
        ratio = f"{reference / row['seconds']:7.2f}x" if reference else f"{'-':>8s}"
        print(f"{row['framework']:52s} {row['precision']:17s} {args.batch:5d} {args.size:>7d} "
              f"{args.batch * args.steps / row['seconds']:9.2f} {ms:8.1f} {peak} {ratio}")
    for row in rows:
        if "warmup_s" in row:
            print(f"(JAX: the 3 warm-up steps, two compilations included: {row['warmup_s']:.1f} s)")


def versions(rows) -> None:
    devices = sorted({row["device"] for row in rows if "device" in row})
    print(f"\ndevice: {', '.join(devices) or '?'}; python {sys.version.split()[0]}", flush=True)


if __name__ == "__main__":
    main()
