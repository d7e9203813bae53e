"""Importing published checkpoints of other implementations."""

from keras_pspnet.convert.mmseg import from_mmseg

__all__ = ["from_mmseg"]
