"""Thin entry point: `python training/train.py --config training/configs/NAME.yaml` equals `pspnet train`."""

import sys

from keras_pspnet.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
