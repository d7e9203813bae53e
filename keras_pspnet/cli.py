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

    from keras_pspnet.data import load_source
    from keras_pspnet.evaluate import MULTI_SCALES, evaluate
    from keras_pspnet.metrics import format_table
    from keras_pspnet.model import load_model

    if args.json and os.path.exists(args.json) and not args.force:
        raise FileExistsError(f"{args.json}: already exists (use --force to replace it).")
    model = load_model(args.model)
    source, info = load_source(args.data, args.split, data_dir=args.data_dir, num_classes=args.num_classes,
                               context_size=args.context_size)
    scales = MULTI_SCALES if args.multi_scale else (1.0,)
    crop = _size(args.crop) if args.crop else None
    results = evaluate(model, source, info, mode=args.mode, crop=crop, scales=scales, flip=args.flip)
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "data": args.data, "split": args.split, "mode": args.mode,
                       "scales": list(scales), "flip": args.flip, **results}, f, indent=1)
        print(f"wrote {args.json}")


def _calibration_images(spec: str, split: str, count: int):
    """Up to `count` uint8 images from a folder of images, or from a dataset (context, TFDS, folder dataset)."""
    from keras_pspnet.data import load_source
    from keras_pspnet.data.folder import IMAGE_SUFFIXES
    from keras_pspnet.predict import read_image

    if os.path.isdir(spec) and not os.path.isdir(os.path.join(spec, split)):
        files = sorted(f for f in os.listdir(spec) if f.lower().endswith(IMAGE_SUFFIXES))[:count]
        if not files:
            raise ValueError(f"{spec}: no .jpg or .png images to calibrate with")
        return [read_image(os.path.join(spec, f)) for f in files]
    source, _ = load_source(spec, split)
    return [example["image"].numpy() for example in source.take(count)]


def _export(args) -> None:
    from keras_pspnet.data.classes import resolve_classes
    from keras_pspnet.export import export_saved_model, export_tflite
    from keras_pspnet.model import load_model

    model = load_model(args.model)
    info = resolve_classes(args.classes, int(model.output.shape[-1]), args.model)
    if args.format == "savedmodel":
        if args.quantize != "none" or args.input_size or args.calibration:
            raise ValueError("--quantize, --input-size and --calibration are for --format tflite")
        path = export_saved_model(model, args.out, info, version=args.version, probabilities=args.probabilities,
                                  warmup_sizes=[_size(args.warmup_size)] if args.warmup_size != "none" else [])
        print(f"{args.model} -> {path} (signatures serving_default, encoded, logits)")
        return
    if not args.input_size:
        raise ValueError("--format tflite needs --input-size HxW (TFLite models have a fixed input size)")
    if not args.out.endswith(".tflite"):
        raise ValueError(f"{args.out}: the output of --format tflite must be a .tflite file")
    if args.force and os.path.exists(args.out):
        os.remove(args.out)
    calibration = None
    if args.quantize == "int8" and args.calibration:
        calibration = _calibration_images(args.calibration, args.calibration_split, args.calibration_count)
    path = export_tflite(model, args.out, info, input_size=_size(args.input_size), quantize=args.quantize,
                         calibration=calibration)
    print(f"{args.model} -> {path} ({os.path.getsize(path) / 2**20:.1f} MiB, {args.quantize}) "
          f"and {os.path.splitext(path)[0]}.json")


def _predict(args) -> int:
    from keras_pspnet.evaluate import MULTI_SCALES
    from keras_pspnet.predict import classes_for, load_predictor, predict_files

    predictor = load_predictor(args.model)
    info = classes_for(predictor, args.classes, args.model)
    failed = predict_files(predictor, args.images, args.out, info, mode=args.mode,
                           crop=_size(args.crop) if args.crop else None,
                           scales=MULTI_SCALES if args.multi_scale else (1.0,), flip=args.flip, force=args.force)
    done = len(args.images) - len(failed)
    print(f"{done} of {len(args.images)} images predicted into {args.out} (label, color and overlay PNGs, legend.png)")
    return 1 if failed else 0


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"size {text!r}: expected HEIGHTxWIDTH, e.g. 473x473") from None
    return size * 2 if len(size) == 1 else size


def _demo(args) -> None:
    from keras_pspnet.demo import run_demo

    run_demo(args.out, args.config_dir, args.set or [], args.test_scenes)


def _presets(args) -> None:
    from keras_pspnet.presets import PRESETS

    for name, config in sorted(PRESETS.items()):
        print(f"{name:24s} {config}")


def _add_inference_options(parser: argparse.ArgumentParser) -> None:
    """The options of `keras_pspnet.inference.predict_probabilities`, shared by evaluate and predict."""
    parser.add_argument("--mode", choices=("whole", "slide"), default="whole")
    parser.add_argument("--crop", help="sliding-window size HxW, e.g. 473x473 (default for .tflite: its input size)")
    parser.add_argument("--multi-scale", action="store_true", help="average scales 0.5-1.75")
    parser.add_argument("--flip", action="store_true", help="average with the mirrored image")


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
    evaluate.add_argument("--context-size", type=int, help="side of the synthetic context scenes (default 288)")
    _add_inference_options(evaluate)
    evaluate.add_argument("--json", help="also write the results here")
    evaluate.add_argument("--force", action="store_true", help="replace --json if it exists")
    evaluate.set_defaults(run=_evaluate)

    export = commands.add_parser("export", help="SavedModel for TF Serving, or .tflite for phones")
    export.add_argument("model", help="a .keras model")
    export.add_argument("--out", required=True, help="TF Serving model directory (models/NAME) or FILE.tflite")
    export.add_argument("--format", choices=("savedmodel", "tflite"), default="savedmodel")
    export.add_argument("--version", type=int, help="SavedModel version (default: the next free one; never replaced)")
    export.add_argument("--probabilities", action="store_true", help="SavedModel: also output probabilities")
    export.add_argument("--warmup-size", default="473x473", help="SavedModel warmup request size HxW, or none")
    export.add_argument("--quantize", choices=("none", "fp16", "int8"), default="none", help="TFLite quantization")
    export.add_argument("--input-size", help="TFLite input size HxW")
    export.add_argument("--calibration", help="int8: a dataset (context, TFDS name, folder dataset) or a folder of images")
    export.add_argument("--calibration-split", default="train")
    export.add_argument("--calibration-count", type=int, default=64)
    export.add_argument("--classes", help="class names and colours: context, ade20k, cityscapes, voc, pets or a "
                        "classes.json (default: classes.json beside the model)")
    export.add_argument("--force", action="store_true", help="TFLite: replace --out if it exists")
    export.set_defaults(run=_export)

    predict = commands.add_parser("predict", help="label, colour and overlay PNGs for images")
    predict.add_argument("--model", required=True, help="MODEL.keras, a SavedModel directory or FILE.tflite")
    predict.add_argument("images", nargs="+", help="image files")
    predict.add_argument("--out", required=True, help="output directory")
    _add_inference_options(predict)
    predict.add_argument("--classes", help="context, ade20k, cityscapes, voc, pets or a classes.json")
    predict.add_argument("--force", action="store_true", help="replace existing outputs")
    predict.set_defaults(run=_predict)

    demo = commands.add_parser("demo", help="the quick start: PSPNet vs the FCN baseline on the context dataset")
    demo.add_argument("--out", default="runs/quickstart", help="output directory (finished runs are reused)")
    demo.add_argument("--config-dir", default="training/configs", help="where context_{pspnet,fcn}.yaml are")
    demo.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key of both configs")
    demo.add_argument("--test-scenes", type=int, default=100, help="held-out scenes to evaluate on")
    demo.set_defaults(run=_demo)

    presets = commands.add_parser("presets", help="list the named model configurations")
    presets.set_defaults(run=_presets)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except (ValueError, OSError, ImportError) as error:
        print(f"pspnet: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
