"""Datasets as tf.data pipelines: sources (TFDS, folders, synthetic), augmentation, batching.

The pipeline modules import TensorFlow (the data side runs TensorFlow ops whatever the Keras backend); this
package and `classes`, `info` do not, so that a model and its class names load where only JAX or PyTorch is
installed. The names below are therefore imported on first use.
"""

import importlib

_MODULES = {
    "load_source": "sources", "DATASETS": "sources", "eval_pipeline": "pipeline",
    "train_pipeline": "pipeline", "TrainingOrder": "order", "AugmentConfig": "info", "DatasetInfo": "info",
    "IGNORE_LABEL": "info", "augment_config": "info", "CONTEXT_INFO": "classes", "load_dataset": "load",
}
__all__ = sorted(_MODULES)


def __getattr__(name: str):
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULES[name]}"), name)
