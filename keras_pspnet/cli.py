"""The `pspnet` command line."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys


def _ints(text: str | None) -> tuple[int, ...] | None:
    return tuple(int(v) for v in text.split(",")) if text else None


def _check_output(path: str, force: bool, suffix: str = ".keras", option: str = "--out") -> None:
    """Before long work: the output (named by `option`) has the right suffix, its folder exists, it is not a
    symbolic link, and an existing one is replaced only with --force (the error says so, and offers a new `option`)."""
    from keras_pspnet.files import check_new_output

    if not path.endswith(suffix):
        raise ValueError(f"{path}: the output must be a {suffix} file.")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder}: no such folder for {os.path.basename(path)}")
    check_new_output(path, force, option)


def _describe(model, source: str, out: str) -> str:
    from keras_pspnet.model import inference_model, model_metadata

    meta = model_metadata(model)
    classes = meta.get("classes", [])
    protocol = meta.get("protocol")
    if protocol:
        from keras_pspnet.protocol import TestProtocol

        protocol = TestProtocol.from_dict(protocol).describe()
    return (f"{source} -> {out}: {model.count_params():,} parameters, {inference_model(model).output.shape[-1]} "
            f"classes ({', '.join(c['name'] for c in classes[:4])}{', ...' if len(classes) > 4 else ''})"
            f"{'' if isinstance(model.output, dict) else ', no auxiliary head'}"
            f"{f'; test protocol {protocol}' if protocol else ''}")


def _convert(args) -> None:
    from keras_pspnet.convert import from_mmseg, from_semseg
    from keras_pspnet.model import save_model

    _check_output(args.out, args.force)
    options = dict(num_classes=args.num_classes, aux_head=False if args.no_aux else None, classes=args.classes,
                   trust_checkpoint=args.trust_checkpoint)
    if args.source == "semseg":
        model = from_semseg(args.checkpoint, bins=_ints(args.bins) or (1, 2, 3, 6), **options)
    else:
        model = from_mmseg(args.checkpoint, bins=_ints(args.bins), output_stride=args.output_stride,
                           contract_dilation=args.contract_dilation, align_corners=args.align_corners,
                           dilations=_ints(args.dilations), **options)
    save_model(model, args.out)
    print(_describe(model, args.checkpoint, args.out))


def _pretrained(args) -> None:
    if args.action == "list":  # the registry and the cache's folder: no Keras (a LIGHT_COMMANDS answer)
        from keras_pspnet.download import MIRROR_ENV, cache_folder
        from keras_pspnet.registry import BASE_URL, pretrained_table

        print(pretrained_table(args.cache_dir))
        print(f"\ncache: {cache_folder(args.cache_dir)} ($KERAS_HOME moves it); download host: "
              f"{os.environ.get(MIRROR_ENV) or BASE_URL} (${MIRROR_ENV} replaces it)")
        return
    from keras_pspnet import zoo

    if args.out:
        _check_output(args.out, args.force)
    model = zoo.from_pretrained(args.name, aux_head=True, cache_dir=args.cache_dir)
    if args.out:
        from keras_pspnet.model import save_model

        save_model(model, args.out)
    print(_describe(model, args.name, args.out or zoo.converted_path(args.name, args.cache_dir)))


def _train(args) -> None:
    from keras_pspnet.config import load_config
    from keras_pspnet.train import train

    config = load_config(args.config, args.set or [])
    run_dir = args.out or os.path.join("runs", os.path.splitext(os.path.basename(args.config or "run"))[0])
    train(config, run_dir, resume=args.resume)


def _protocol(args, predictor):
    """The test protocol: --protocol's base (default: the model's own, else whole image at native size)
    with the inference options given on the command line on top."""
    import dataclasses

    from keras_pspnet.protocol import MULTI_SCALES, TestProtocol, own_protocol, reference_protocol

    base = own_protocol(predictor.metadata)
    if args.protocol == "native":
        base = TestProtocol()
    elif args.protocol in ("mmseg", "semseg") and (base.style != args.protocol or base.resize is None):
        # the reference's protocol for the model's dataset (told by its class count), else what the options say
        base = reference_protocol(args.protocol, predictor.num_classes)
        if base is None and not (args.resize and (args.crop or args.protocol == "mmseg")):
            raise ValueError(f"--protocol {args.protocol}: a model of {predictor.num_classes} classes is none of the "
                             "reference datasets (ADE20K, Cityscapes, VOC); give --resize"
                             + (" and --crop" if args.protocol == "semseg" else ""))
        base = base or TestProtocol(style=args.protocol, mode="slide" if args.protocol == "semseg" else "whole",
                                    crop=_size(args.crop) if args.crop else None, flip=args.protocol == "semseg")
    changes = {}
    if args.resize:
        sizes = _ints(args.resize.lower().replace("x", ",")) if args.resize != "none" else None
        if sizes is not None and len(sizes) not in (1, 2):
            raise ValueError(f"--resize {args.resize}: expected LONGxSHORT (mmseg), a long side (semseg) or none")
        changes["resize"] = sizes if sizes is None or len(sizes) == 2 else sizes[0]
    if args.mode:
        changes["mode"] = args.mode
    if args.crop:
        changes["crop"] = _size(args.crop)
    if args.stride:
        changes["stride"] = _size(args.stride)
    if args.multi_scale:
        changes["scales"] = MULTI_SCALES
    if args.flip is not None:
        changes["flip"] = args.flip
    if changes.get("mode", base.mode) == "slide" and not changes.get("crop", base.crop):
        changes["crop"] = predictor.input_size  # a .tflite: windows of its input size
    return dataclasses.replace(base, **changes)


def _published(metadata: dict, protocol) -> str | None:
    """The published mIoU measured with `protocol` (single scale, or multi-scale + flip), when the model has one."""
    import dataclasses

    from keras_pspnet.protocol import MULTI_SCALES, own_protocol

    source, own = metadata.get("source", {}), own_protocol(metadata)
    if source.get("published_miou") is None:
        return None
    if protocol == own:
        return f"published mIoU {source['published_miou']:.2f} ({source.get('name')}, single scale)"
    if protocol == dataclasses.replace(own, scales=MULTI_SCALES, flip=True) and source.get("published_miou_ms_flip"):
        return f"published mIoU {source['published_miou_ms_flip']:.2f} ({source.get('name')}, multi-scale + flip)"
    return f"published mIoU {source['published_miou']:.2f} was measured with {own.describe()}, not this protocol"


def _evaluate(args) -> None:
    import json

    from keras_pspnet.data import load_source
    from keras_pspnet.evaluate import evaluate
    from keras_pspnet.metrics import format_table

    if args.json:
        _check_output(args.json, args.force, ".json", "--json")
    from keras_pspnet.predictors import tflite_json

    own_files = {os.path.abspath(path) for path in (args.model, tflite_json(args.model))}
    if args.json and os.path.abspath(args.json) in own_files:
        raise ValueError(f"{args.json}: is the model's own file (a .tflite's metadata); choose another --json")
    predictor = _load_predictor(args)
    protocol = _protocol(args, predictor)
    source, info = load_source(args.data, args.split, data_dir=args.data_dir, num_classes=args.num_classes,
                               context_size=args.context_size)
    options = _inference_options(args)
    max_side = options["max_side"]
    windows = f" (windows of {max_side} beyond {max_side} px)" if protocol.mode == "whole" and not protocol.resize \
        else ""
    print(f"test protocol: {protocol.describe()}{windows}")
    results = evaluate(predictor, source, info, protocol, **options)
    print(format_table(results))
    published = _published(predictor.metadata, protocol)
    if published and results["mIoU"] is not None:
        print(f"{published}; here {100 * results['mIoU']:.2f} on {results['images']} images")
    if args.json:
        from keras_pspnet.files import write_text

        write_text(args.json, json.dumps({"model": args.model, "data": args.data, "split": args.split,
                                          "protocol": protocol.to_dict(), **options, **results}, indent=1))
        print(f"wrote {args.json}")


# The options of each --format besides --out, --classes and --force: any other given is refused by name.
_EXPORT_OPTIONS = {"savedmodel": {"probabilities", "version", "warmup_size"},
                   "tflite": {"quantize", "input_size", "outputs", "calibration"},
                   "onnx": {"input_size"}, "openvino": {"quantize", "input_size", "calibration"}}
_CALIBRATION_OPTIONS = ("calibration_split", "calibration_count", "data_dir")  # with --calibration only
_EXPORT_SUFFIX = {"tflite": ".tflite", "onnx": ".onnx", "openvino": ".xml"}


def _check_export_options(args) -> None:
    """Every option given belongs to --format (and int8 has its calibration), before the model loads."""
    given = {name for name in ("probabilities", "version", "warmup_size", "quantize", "input_size", "outputs",
                               "calibration", *_CALIBRATION_OPTIONS) if getattr(args, name) not in (None, False)}

    def names(options):
        return ", ".join("--" + {"version": "model-version"}.get(name, name).replace("_", "-") for name in options)

    wrong = sorted(given - _EXPORT_OPTIONS[args.format] - set(_CALIBRATION_OPTIONS))
    if wrong:
        raise ValueError(f"{names(wrong)}: not an option of --format {args.format}")
    stray = [name for name in ("calibration", *_CALIBRATION_OPTIONS) if name in given]
    if args.quantize != "int8" and stray:
        raise ValueError(f"{names(stray)}: only for --quantize int8")
    if args.quantize == "int8" and "calibration" not in given:
        raise ValueError("--quantize int8 needs --calibration: a dataset (context, a TFDS name, a folder dataset) or "
                         "a folder of images")
    if args.format == "tflite" and not args.input_size:
        raise ValueError("--format tflite needs --input-size HxW (TFLite models have a fixed input size)")


def _export(args) -> None:
    from keras_pspnet.data.classes import resolve_classes
    from keras_pspnet.export import calibration_images, export_onnx, export_openvino, export_saved_model, export_tflite
    from keras_pspnet.model import inference_model, load_model, model_metadata
    from keras_pspnet.predictors import EXPORTED_SUFFIXES, ir_weights, tflite_json

    if args.model.endswith(EXPORTED_SUFFIXES) or os.path.isdir(args.model):
        raise ValueError(f"{args.model}: export reads a published name or a .keras model, not an exported model "
                         "(export the .keras it came from)")
    _check_export_options(args)
    if args.format != "savedmodel":  # and the files beside it, before the model loads
        _check_output(args.out, args.force, _EXPORT_SUFFIX[args.format])
        beside = {"tflite": tflite_json, "openvino": ir_weights}.get(args.format, lambda out: None)(args.out)
        if beside:
            _check_output(beside, args.force, os.path.splitext(beside)[1])
    model = inference_model(load_model(args.model))
    info = resolve_classes(args.classes, int(model.output.shape[-1]), args.model, model_metadata(model))
    if args.format == "savedmodel":
        warmup = args.warmup_size or "473x473"
        path = export_saved_model(model, args.out, info, version=args.version, probabilities=args.probabilities,
                                  warmup_sizes=[_size(size) for size in warmup.split(",")] if warmup != "none" else [])
        print(f"{args.model} -> {path} (signatures serving_default, encoded, logits)")
        return
    size = _size(args.input_size) if args.input_size else None
    if args.format == "onnx":
        path = export_onnx(model, args.out, info, input_size=size, overwrite=args.force)
        shape = "x".join(map(str, size)) if size else "any size"
        print(f"{args.model} -> {path} ({os.path.getsize(path) / 2**20:.1f} MiB, input images float32 "
              f"[batch, height, width, 3] at {shape}, output logits [batch, classes, height, width])")
        return
    calibration, quantize = None, args.quantize or "none"
    if quantize == "int8":
        calibration = calibration_images(args.calibration, args.calibration_split or "train",
                                         args.calibration_count or 64, data_dir=args.data_dir)
    from keras_pspnet.console import native_output_hidden

    if args.format == "openvino":
        path = export_openvino(model, args.out, info, quantize=quantize, calibration=calibration,
                               input_size=size, overwrite=args.force)
        weights = ir_weights(path)
        print(f"{args.model} -> {path} and {weights} ({os.path.getsize(weights) / 2**20:.1f} MiB, {quantize})")
        return
    outputs = args.outputs or "scores"
    # the TFLite quantizer prints its settings from C++ (unless --verbose)
    with contextlib.nullcontext() if args.verbose else native_output_hidden():
        path = export_tflite(model, args.out, info, input_size=size, quantize=quantize,
                             outputs=outputs, calibration=calibration, overwrite=args.force)
    print(f"{args.model} -> {path} ({os.path.getsize(path) / 2**20:.1f} MiB, {quantize}, {outputs}) "
          f"and {tflite_json(path)}")


def _predict(args) -> int:
    from keras_pspnet.console import report
    from keras_pspnet.data.classes import resolve_classes
    from keras_pspnet.predict import existing_outputs, predict_files

    if not args.force:  # a rerun into the same folder: said once, before the model loads, and nothing replaced
        done = existing_outputs(args.images, args.out)
        if done:
            more = f", as do the outputs of {len(done) - 1} more of these images" if len(done) > 1 else ""
            report(f"{done[0]}: already exists{more}; nothing predicted (use --force to replace them, or a new "
                   "--out)")
            return 1
    predictor = _load_predictor(args)
    info = resolve_classes(args.classes, predictor.num_classes, args.model, predictor.metadata)
    max_pixels = max(1, round(args.max_pixels * 1e6)) if args.max_pixels else None
    failed = predict_files(predictor, args.images, args.out, info, _protocol(args, predictor), force=args.force,
                           max_pixels=max_pixels, **_inference_options(args))
    done = len(args.images) - len(failed)
    print(f"{done} of {len(args.images)} images predicted into {args.out} (label, color and overlay PNGs, legend.png)")
    return 1 if failed else 0


def _load_predictor(args):
    """The --model predictor; LiteRT's INFO line at a .tflite's first call is hidden unless --verbose."""
    from keras_pspnet.console import native_output_hidden
    from keras_pspnet.predictors import load_predictor

    with contextlib.nullcontext() if args.verbose else native_output_hidden((2,)):
        return load_predictor(args.model, trust_model=args.trust_model, runtime=args.runtime)


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"size {text!r}: expected HEIGHTxWIDTH, e.g. 473x473") from None
    if len(size) > 2 or min(size) < 1:
        raise ValueError(f"size {text!r}: expected HEIGHTxWIDTH of positive integers, e.g. 473x473")
    return size * 2 if len(size) == 1 else size


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _inference_options(args) -> dict:
    """--max-side (default `keras_pspnet.inference.MAX_SIDE`), --window-batch and --max-memory, as keyword
    arguments of predict_labels."""
    from keras_pspnet.inference import MAX_SIDE

    return {"max_side": args.max_side or MAX_SIDE, "window_batch": args.window_batch,
            "max_memory": max(1, round(args.max_memory * 2**30)) if args.max_memory else "available"}


def _demo(args) -> None:
    from keras_pspnet.demo import run_demo

    run_demo(args.out, args.config_dir, args.set or [], args.test_scenes)


def _presets(args) -> None:
    from keras_pspnet.presets import PRESETS

    for name, config in sorted(PRESETS.items()):
        print(f"{name:24s} {config}")


def _add_inference_options(parser: argparse.ArgumentParser) -> None:
    """The test protocol options (`keras_pspnet.protocol.TestProtocol`), shared by evaluate and predict."""
    group = parser.add_argument_group("test protocol (default: the model's own, e.g. a pretrained model's published "
                                      "one; else the whole image at its size)")
    parser.add_argument("--trust-model", action="store_true", help="load a SavedModel, ONNX model or OpenVINO IR that "
                        "`pspnet export` did not write (only for a source you trust)")
    # (choices written out: keras_pspnet.predictors.RUNTIMES would import Keras to parse arguments)
    parser.add_argument("--runtime", choices=("keras", "onnx", "openvino"), default="keras",
                        help="run a published name or .keras model in ONNX Runtime or OpenVINO (exported on the fly, "
                        "float32): faster than TensorFlow on x86 CPUs, the same numbers")
    group.add_argument("--protocol", choices=("model", "native", "mmseg", "semseg"), default="model",
                       help="mmseg: mmsegmentation's (keep-ratio resize, logits averaged); semseg: the PSPNet "
                       "authors' (long side to a base size, mean padding, probabilities averaged); native: whole "
                       "image at its size")
    group.add_argument("--resize", help="scale-1 size: LONGxSHORT (mmseg, e.g. 2048x512), a long side (semseg, "
                       "e.g. 512) or none")
    group.add_argument("--mode", choices=("whole", "slide"), help="whole: the image in one call (in windows beyond "
                       "--max-side); slide: overlapping windows of --crop")
    group.add_argument("--crop", help="sliding-window size HxW, e.g. 473x473 (default for .tflite: its input size)")
    group.add_argument("--stride", help="sliding-window stride HxW (default: 2/3 of the crop)")
    group.add_argument("--multi-scale", action="store_true", help="average scales 0.5-1.75")
    group.add_argument("--flip", action=argparse.BooleanOptionalAction, help="average with the mirrored image")
    group.add_argument("--max-side", type=_positive_int, help="whole-image mode without --resize on a larger image "
                       "runs in windows of this side, bounding memory (default 1024; protocols that resize run as "
                       "defined)")
    group.add_argument("--window-batch", type=_positive_int, help="windows per model call (default: about a "
                       "megapixel's worth)")
    group.add_argument("--max-memory", type=_positive_float, metavar="GIB", help="refuse an image whose inference "
                       "would need more memory than this, estimated before it runs (default: what the machine has "
                       "available)")


class _Formatter(argparse.HelpFormatter):
    """Each option's help ends with its default, where it has one (not None, not an off switch)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) \
                and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are one line too, pointing at the command's --help; --help lists defaults (`_Formatter`)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"pspnet: error: {message} (see `{self.prog} --help`)\n")


MODEL_HELP = ("a published name (`pspnet pretrained list`: downloaded, verified and converted once, then cached), "
              "MODEL.keras, a SavedModel directory, FILE.tflite, FILE.onnx or an OpenVINO FILE.xml")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pspnet", description="PSPNet in Keras 3: pretrained models, training, "
                                     "evaluation, export.")
    commands = parser.add_subparsers(dest="command", required=True)
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's logs, and tracebacks on errors")
    from keras_pspnet import __version__  # (the package imports nothing else)

    parser.add_argument("--version", action="version", version=f"pspnet {__version__}",
                        help="print the version and exit")
    # also after each command (`pspnet predict ... --verbose`); SUPPRESS: absent there, it keeps the value above
    common = _Parser(add_help=False)
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    convert = commands.add_parser("convert", help="import a checkpoint of another implementation (no torch needed)")
    sources = convert.add_subparsers(dest="source", required=True)
    mmseg = sources.add_parser("mmseg", parents=[common], help="mmsegmentation PSPNet checkpoint (.pth)")
    semseg = sources.add_parser("semseg", parents=[common], help="the PSPNet authors' checkpoint (hszhao/semseg, .pth)")
    for source in (mmseg, semseg):
        source.add_argument("checkpoint", help="the .pth file")
        source.add_argument("--out", required=True, help="the .keras file to write")
        source.add_argument("--num-classes", type=int, help="check the checkpoint has this many classes")
        source.add_argument("--classes", help="class names: context, ade20k, cityscapes, voc or pets (default: the "
                            "checkpoint's own, else the dataset with its class count)")
        source.add_argument("--no-aux", action="store_true", help="drop the auxiliary head")
        source.add_argument("--trust-checkpoint", action="store_true", help="allow pickled objects other than "
                            "tensors and containers (only for files from a trusted source)")
        source.add_argument("--force", "--overwrite", action="store_true", help="replace --out if it exists")
        source.set_defaults(run=_convert)
    semseg.add_argument("--bins", help="pyramid bins of the training config (default 1,2,3,6)")
    mmseg.add_argument("--bins", help="pool_scales (default: the stored config's, else 1,2,3,6)")
    mmseg.add_argument("--output-stride", type=int,
                       help="8 for -d8, 32 for -d32 (default: the stored config's, else 8)")
    mmseg.add_argument("--dilations", help="per-stage dilations, e.g. 1,1,2,4 for -d32 (default: the stored config's)")
    mmseg.add_argument("--contract-dilation", action=argparse.BooleanOptionalAction,
                       help="halve the first dilation of a stage (default: the stored config's, else on)")
    mmseg.add_argument("--align-corners", action=argparse.BooleanOptionalAction,
                       help="corner-aligned upsampling, as the 769x769 models (default: the stored config's, else off)")

    pretrained = commands.add_parser("pretrained", help="published PSPNets: list them, or download and convert one")
    actions = pretrained.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", parents=[common], help="the registry with published mIoU and test protocols")
    get = actions.add_parser("get", parents=[common],
                             help="download (once), verify, convert (once) and optionally save a copy")
    get.add_argument("name", help="a name of `pspnet pretrained list`")
    get.add_argument("--out", help="also save it here (a .keras file; with its auxiliary head, for fine-tuning)")
    get.add_argument("--force", "--overwrite", action="store_true", help="replace --out if it exists")
    for action in (listing, get):
        action.add_argument("--cache-dir", help="instead of the Keras cache (~/.keras or $KERAS_HOME)")
        action.set_defaults(run=_pretrained)

    train = commands.add_parser("train", parents=[common], help="train (or resume) a run from a YAML config")
    train.add_argument("--config", help="YAML config (keys: keras_pspnet.config.TrainConfig)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    train.add_argument("--out", help="run directory (default runs/<config name>)")
    train.add_argument("--resume", action="store_true",
                       help="continue a finished run or change an unfinished one's config")
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("evaluate", parents=[common], help="mIoU and per-class IoU of a model on a dataset")
    evaluate.add_argument("--model", required=True, help=MODEL_HELP)
    evaluate.add_argument("--data", required=True, help="context, a TFDS name or a folder dataset")
    evaluate.add_argument("--split", default="validation", help="the dataset's split to evaluate on")
    evaluate.add_argument("--data-dir", help="TFDS data_dir")
    evaluate.add_argument("--num-classes", type=int, help="folder datasets without classes.json")
    evaluate.add_argument("--context-size", type=int, help="side of the synthetic context scenes (default 288)")
    _add_inference_options(evaluate)
    evaluate.add_argument("--json", help="also write the results here")
    evaluate.add_argument("--force", "--overwrite", action="store_true", help="replace --json if it exists")
    evaluate.set_defaults(run=_evaluate)

    export = commands.add_parser("export", parents=[common], help="SavedModel for TF Serving, .tflite for phones, "
                                 "ONNX, or OpenVINO IR for CPUs")
    export.add_argument("--model", help="a published name (`pspnet pretrained list`) or MODEL.keras")
    export.add_argument("source", nargs="?", metavar="MODEL", help="the same as --model (the older form)")
    export.add_argument("--out", required=True, help="TF Serving model directory (models/NAME), FILE.tflite, "
                        "FILE.onnx or FILE.xml (OpenVINO: and FILE.bin)")
    # (choices written out: keras_pspnet.export.FORMATS would import TensorFlow to parse arguments)
    export.add_argument("--format", choices=("savedmodel", "tflite", "onnx", "openvino"), default="savedmodel",
                        help="savedmodel: for TF Serving (versions in --out); tflite: one .tflite file; onnx: one "
                        ".onnx file (ONNX Runtime, OpenVINO, TensorRT, ...); openvino: an OpenVINO IR (.xml and .bin)")
    export.add_argument("--model-version", "--version", dest="version", type=int, metavar="N",
                        help="SavedModel version (default: the next free one; never replaced)")
    export.add_argument("--probabilities", action="store_true", help="SavedModel: also output probabilities")
    export.add_argument("--warmup-size", help="SavedModel: the image sizes TF Serving warms up at load, "
                        "HxW[,HxW...] (the sizes clients will send; default 473x473), or none")
    export.add_argument("--quantize", choices=("none", "fp16", "int8"),
                        help="TFLite and OpenVINO quantization (int8 needs --calibration)")
    export.add_argument("--input-size", help="input size HxW: required for TFLite; ONNX and OpenVINO take any size "
                        "unless given (OpenVINO int8 then calibrates on windows of it, else on whole images)")
    # (choices written out, as --quantize's: keras_pspnet.tflite.LAYOUTS would import Keras to parse arguments)
    export.add_argument("--outputs", choices=("scores", "class_map"),
                        help="TFLite output: scores [1,H,W,classes] log-probabilities (default; MediaPipe "
                        "ImageSegmenter's layout) or class_map [1,H,W] uint8 class indices")
    export.add_argument("--calibration",
                        help="int8: a dataset (context, TFDS name, folder dataset) or a folder of images")
    export.add_argument("--calibration-split", help="int8: the split of --calibration's dataset (default train)")
    export.add_argument("--calibration-count", type=_positive_int, help="images drawn at random from it (default 64)")
    export.add_argument("--data-dir", help="TFDS data_dir of --calibration")
    export.add_argument("--classes", help="class names and colours: context, ade20k, cityscapes, voc, pets or a "
                        "classes.json (default: the model's own, else classes.json beside it)")
    export.add_argument("--force", "--overwrite", action="store_true", help="replace --out and the file beside it "
                        "if they exist (SavedModel versions are never replaced)")
    export.set_defaults(run=_export)

    predict = commands.add_parser("predict", parents=[common], help="label, colour and overlay PNGs for images")
    predict.add_argument("--model", required=True, help=MODEL_HELP)
    predict.add_argument("images", nargs="+", help="image files")
    predict.add_argument("--out", required=True, help="output directory")
    _add_inference_options(predict)
    predict.add_argument("--classes", help="context, ade20k, cityscapes, voc, pets or a classes.json")
    predict.add_argument("--force", "--overwrite", action="store_true", help="replace existing outputs")
    predict.add_argument("--max-pixels", type=_positive_float, metavar="MEGAPIXELS", help="refuse larger images "
                         "before decoding them (default: PIL's decompression-bomb limit, 89.5)")
    predict.set_defaults(run=_predict)

    demo = commands.add_parser("demo", parents=[common],
                               help="the quick start: PSPNet vs the FCN baseline on the context dataset")
    demo.add_argument("--out", default="runs/quickstart", help="output directory (finished runs are reused)")
    demo.add_argument("--config-dir", default="training/configs", help="where context_{pspnet,fcn}.yaml are")
    demo.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key of both configs")
    demo.add_argument("--test-scenes", type=int, default=100, help="held-out scenes to evaluate on")
    demo.set_defaults(run=_demo)

    presets = commands.add_parser("presets", parents=[common],
                                  help="list the named model architectures (random weights)")
    presets.set_defaults(run=_presets)
    return parser


LIGHT_COMMANDS = ("presets", "pretrained list")  # answered without TensorFlow: a command, or a command and action


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "export":  # --model, or the older positional MODEL: one of them
        if (args.model is None) == (args.source is None):
            given = "both --model and MODEL" if args.model else "neither"
            parser.error(f"export: give the model once, as --model NAME|MODEL.keras (got {given})")
        args.model = args.model or args.source
    light = args.command in LIGHT_COMMANDS or f"{args.command} {getattr(args, 'action', '')}" in LIGHT_COMMANDS
    if not args.verbose and not light:
        from keras_pspnet.console import import_tensorflow_quietly

        import_tensorflow_quietly()
    if args.verbose or light:
        return _run(args)
    from keras_pspnet.console import native_logs_filtered

    with native_logs_filtered():  # TensorFlow's, libjpeg's and LiteRT's lines: --verbose shows them
        return _run(args)


def _run(args) -> int:
    try:
        return args.run(args) or 0
    except KeyboardInterrupt as error:
        resume = " (a run resumes from its last checkpoint when the same command runs again)" \
            if args.command == "train" else ""
        print(f"pspnet: interrupted{f' by {error}' if str(error) else ''}{resume}", file=sys.stderr)
        return _exit_now(130) if getattr(error, "exit_now", False) else 130
    except Exception as error:  # one line, never a traceback from deep inside TensorFlow (--verbose shows it)
        if args.verbose:
            raise
        from keras_pspnet.console import one_line, report

        expected = isinstance(error, (ValueError, OSError, ImportError))
        report(one_line(error) + ("" if expected else " (--verbose for the traceback)"))
        return _exit_now(2) if getattr(error, "exit_now", False) else 2


def _exit_now(code: int) -> int:
    """Ends the process at once (a cluster error: a TensorFlow thread may be blocked in C++ and would hold up the
    interpreter's shutdown forever), after flushing what was said."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
