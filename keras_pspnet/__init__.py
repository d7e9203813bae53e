"""keras-pspnet: PSPNet (Zhao et al., CVPR 2017) in Keras 3, from model.fit to TF Serving and TFLite."""

__version__ = "0.3.0"  # first: modules imported below read it

from keras_pspnet.convert import from_mmseg, from_semseg
from keras_pspnet.flops import count_macs
from keras_pspnet.inference import fold_batch_norms, predict_scores
from keras_pspnet.model import build_pspnet, inference_model, load_model, model_metadata
from keras_pspnet.presets import PRESETS, from_preset, list_presets
from keras_pspnet.protocol import TestProtocol
from keras_pspnet.zoo import from_pretrained, list_pretrained

__all__ = [
    "PRESETS",
    "TestProtocol",
    "build_pspnet",
    "count_macs",
    "fold_batch_norms",
    "from_mmseg",
    "from_pretrained",
    "from_preset",
    "from_semseg",
    "inference_model",
    "list_presets",
    "list_pretrained",
    "load_model",
    "model_metadata",
    "predict_scores",
]
