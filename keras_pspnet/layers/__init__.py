"""Keras layers of the PSPNet model that Keras itself does not provide in the form we need."""

from keras_pspnet.layers.conv import ConcatConv2D
from keras_pspnet.layers.output import ClassLogits
from keras_pspnet.layers.pooling import AdaptiveAveragePooling2D, adaptive_pool_matrix
from keras_pspnet.layers.resize import ResizeLike, resize_bilinear

__all__ = ["AdaptiveAveragePooling2D", "ClassLogits", "ConcatConv2D", "ResizeLike", "adaptive_pool_matrix",
           "resize_bilinear"]
