"""The `pspnet` command line."""

from __future__ import annotations

import argparse
import os
import sys


def _convert_mmseg(args) -> None:
    from keras_pspnet.convert import from_mmseg

    if os.path.exists(args.out) and not args.force:
        raise FileExistsError(f"{args.out}: already exists (use --force to replace it).")
    if not args.out.endswith(".keras"):
        raise ValueError(f"{args.out}: the output must be a .keras file.")
    bins = tuple(int(b) for b in args.bins.split(",")) if args.bins else ()
    model = from_mmseg(
        args.checkpoint,
        num_classes=args.num_classes,
        bins=bins,
        output_stride=args.output_stride,
        contract_dilation=not args.no_contract_dilation,
        aux_head=False if args.no_aux else None,
        trust_checkpoint=args.trust_checkpoint,
    )
    model.save(args.out)
    print(f"{args.checkpoint} -> {args.out}: {model.count_params():,} parameters, "
          f"{model.get_layer('classifier').filters} classes")


def _train(args) -> None:
    from keras_pspnet.config import load_config
    from keras_pspnet.train import train

    config = load_config(args.config, args.set or [])
    run_dir = args.out or os.path.join("runs", os.path.splitext(os.path.basename(args.config or "run"))[0])
    train(config, run_dir, resume=args.resume)


def _evaluate(args) -> None:
    import json

    import keras

    import keras_pspnet  # noqa: F401  (registers the custom layers for loading)
    from keras_pspnet.data import load_source
    from keras_pspnet.evaluate import MULTI_SCALES, evaluate
    from keras_pspnet.metrics import format_table

    if not os.path.exists(args.model):
        raise FileNotFoundError(f"{args.model}: model not found")
    if args.json and os.path.exists(args.json) and not args.force:
        raise FileExistsError(f"{args.json}: already exists (use --force to replace it).")
    model = keras.saving.load_model(args.model)
    source, info = load_source(args.data, args.split, data_dir=args.data_dir, num_classes=args.num_classes)
    scales = MULTI_SCALES if args.multi_scale else (1.0,)
    crop = _size(args.crop) if args.crop else None
    results = evaluate(model, source, info, mode=args.mode, crop=crop, scales=scales, flip=args.flip)
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "data": args.data, "split": args.split, "mode": args.mode,
                       "scales": list(scales), "flip": args.flip, **results}, f, indent=1)
        print(f"wrote {args.json}")


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"size {text!r}: expected HEIGHTxWIDTH, e.g. 473x473") from None
    return size * 2 if len(size) == 1 else size


def _presets(args) -> None:
    from keras_pspnet.presets import PRESETS

    for name, config in sorted(PRESETS.items()):
        print(f"{name:24s} {config}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pspnet", description="PSPNet in Keras 3: models, conversion, export.")
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser("convert", help="import a checkpoint of another implementation")
    sources = convert.add_subparsers(dest="source", required=True)
    mmseg = sources.add_parser("mmseg", help="mmsegmentation PSPNet checkpoint (.pth)")
    mmseg.add_argument("checkpoint", help="the .pth file")
    mmseg.add_argument("--out", required=True, help="the .keras file to write")
    mmseg.add_argument("--num-classes", type=int, help="check the checkpoint has this many classes")
    mmseg.add_argument("--bins", default="1,2,3,6", help="pool_scales of the checkpoint's config (default 1,2,3,6)")
    mmseg.add_argument("--output-stride", type=int, default=8, help="8 for -d8 configs (default), 16 for -d16")
    mmseg.add_argument("--no-contract-dilation", action="store_true", help="for backbones without contract_dilation")
    mmseg.add_argument("--no-aux", action="store_true", help="drop the auxiliary head")
    mmseg.add_argument("--trust-checkpoint", action="store_true", help="allow arbitrary pickled objects")
    mmseg.add_argument("--force", action="store_true", help="replace --out if it exists")
    mmseg.set_defaults(run=_convert_mmseg)

    train = commands.add_parser("train", help="train (or resume) a run from a YAML config")
    train.add_argument("--config", help="YAML config (keys: keras_pspnet.config.TrainConfig)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    train.add_argument("--out", help="run directory (default runs/<config name>)")
    train.add_argument("--resume", action="store_true", help="continue a finished run or change an unfinished one's config")
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("evaluate", help="mIoU and per-class IoU of a model on a dataset")
    evaluate.add_argument("--model", required=True, help="a .keras model")
    evaluate.add_argument("--data", required=True, help="context, a TFDS name or a folder dataset")
    evaluate.add_argument("--split", default="validation")
    evaluate.add_argument("--data-dir", help="TFDS data_dir")
    evaluate.add_argument("--num-classes", type=int, help="folder datasets without classes.json")
    evaluate.add_argument("--mode", choices=("whole", "slide"), default="whole")
    evaluate.add_argument("--crop", help="sliding-window size HxW (e.g. 473x473)")
    evaluate.add_argument("--multi-scale", action="store_true", help="average scales 0.5-1.75")
    evaluate.add_argument("--flip", action="store_true", help="average with the mirrored image")
    evaluate.add_argument("--json", help="also write the results here")
    evaluate.add_argument("--force", action="store_true", help="replace --json if it exists")
    evaluate.set_defaults(run=_evaluate)

    presets = commands.add_parser("presets", help="list the named model configurations")
    presets.set_defaults(run=_presets)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, OSError, ImportError) as error:
        print(f"pspnet: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
