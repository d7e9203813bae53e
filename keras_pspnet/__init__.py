"""keras-pspnet: PSPNet (Zhao et al., CVPR 2017) in Keras 3, from model.fit to TF Serving and TFLite.

Importing the package is instant: its names are imported on first use (PEP 562), so `pspnet --help` and
`pspnet presets` never load TensorFlow. Our Keras layers, loss and optimizer are registered with Keras as soon as
both `keras_pspnet` and `keras` are imported, in either order, so `keras.saving.load_model` reads our models.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys

__version__ = "0.4.0"

_EXPORTS = {
    "PRESETS": "presets", "list_presets": "presets", "from_preset": "presets",
    "TestProtocol": "protocol",
    "from_mmseg": "convert", "from_semseg": "convert",
    "count_macs": "flops",
    "fold_batch_norms": "inference", "predict_labels": "inference", "predict_scores": "inference",
    "build_pspnet": "model", "inference_model": "model", "load_model": "model", "model_metadata": "model",
    "PSPNet": "segmenter", "load_dataset": "data.load",
    "from_pretrained": "zoo", "list_pretrained": "registry",
}
__all__ = sorted(_EXPORTS)
_SERIALIZABLE = ("keras_pspnet.layers", "keras_pspnet.losses", "keras_pspnet.optimizers", "keras_pspnet.segmenter")


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'keras_pspnet' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"keras_pspnet.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


def _register_with_keras() -> None:
    try:
        for module in _SERIALIZABLE:
            importlib.import_module(module)
    except Exception as error:  # never break the user's `import keras`; loading our models will say what is wrong
        import warnings

        warnings.warn(f"keras_pspnet: could not register its Keras classes ({error})", stacklevel=2)


class _RegisterAfterKeras(importlib.abc.MetaPathFinder):
    """Imports our serializable classes right after `keras` is imported.

    Keras' loader imports the module a saved class names only for its own packages (keras, keras_hub, ...), so
    a class must be registered before `keras.saving.load_model`; importing Keras here would cost every
    `import keras_pspnet` (and every `pspnet` command) TensorFlow's seconds of start-up. The finder stays until
    Keras is actually executed: `find_spec("keras")` alone (TensorFlow's __init__ asks it) imports nothing.
    """

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            exec_module = spec.loader.exec_module

            def exec_and_register(module):
                exec_module(module)
                if self in sys.meta_path:
                    sys.meta_path.remove(self)
                _register_with_keras()

            spec.loader.exec_module = exec_and_register
        return spec


if "keras" in sys.modules:
    _register_with_keras()
else:
    sys.meta_path.insert(0, _RegisterAfterKeras())
