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
