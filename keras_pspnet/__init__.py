"""keras-pspnet: PSPNet (Zhao et al., CVPR 2017) in Keras 3, from model.fit to TF Serving and TFLite."""

from keras_pspnet.convert import from_mmseg
from keras_pspnet.flops import count_macs
from keras_pspnet.inference import fold_batch_norms
from keras_pspnet.model import build_pspnet, inference_model, load_model
from keras_pspnet.presets import PRESETS, from_preset, list_presets

__version__ = "0.1.0"


__all__ = [
    "PRESETS",
    "build_pspnet",
    "count_macs",
    "fold_batch_norms",
    "from_mmseg",
    "from_preset",
    "inference_model",
    "list_presets",
    "load_model",
]
