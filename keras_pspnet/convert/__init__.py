"""Importing published checkpoints of other implementations, without PyTorch."""

from keras_pspnet.convert.mmseg import from_mmseg
from keras_pspnet.convert.pth import CheckpointError, read_pth
from keras_pspnet.convert.semseg import from_semseg

__all__ = ["CheckpointError", "from_mmseg", "from_semseg", "read_pth"]
