"""Fine-tuning: start a training run from a saved or published PSPNet (`init_from` in training configs)."""

from __future__ import annotations

import os

import keras

from keras_pspnet.layers import ClassLogits
from keras_pspnet.model import inference_model, load_model

CLASSIFIERS = ("classifier", "aux_classifier")


def load_init_model(spec: str) -> keras.Model:
    """The model named by `init_from`: a .keras file or a pretrained name (with its auxiliary head)."""
    from keras_pspnet.zoo import ZOO, from_pretrained

    if spec in ZOO:
        return from_pretrained(spec, aux_head=True)
    if spec.endswith(".keras") or os.path.exists(spec):
        return load_model(spec)
    raise ValueError(f"init_from {spec!r}: neither a .keras file nor a pretrained name (`pspnet pretrained list`).")


def retarget(model: keras.Model, num_classes: int, *, aux_head: bool, sync_batchnorm: bool = False,
             metadata: dict | None = None) -> keras.Model:
    """`model`'s architecture with fresh weights and classifiers for `num_classes` classes.

    Batch norms are synchronised across replicas or not as asked; the layers take the current dtype policy
    (mixed precision), and the output layer is a `ClassLogits` with `metadata` (the new classes), also for
    models saved by keras-pspnet 0.1, whose output was a float32 Activation.
    """
    if aux_head and not isinstance(model.output, dict):
        raise ValueError(f"{model.name}: has no auxiliary head to fine-tune; set aux_weight: 0, or give `model:`.")
    if not aux_head:
        model = inference_model(model)

    def clone(layer):
        config = layer.get_config()
        config.pop("dtype", None)  # the saved float32 policy would override a mixed-precision run's
        if layer.name in CLASSIFIERS:
            config["filters"] = num_classes
        if isinstance(layer, keras.layers.BatchNormalization):
            config["synchronized"] = sync_batchnorm
        if layer.name == "logits":
            return ClassLogits(metadata, name="logits")
        return layer.__class__.from_config(config)

    return keras.models.clone_model(model, clone_function=clone)


def transfer_weights(source: keras.Model, target: keras.Model) -> tuple[list[str], list[str]]:
    """Copies the weights of every layer of `target` whose name and weight shapes `source` has.

    Returns (loaded layer names, skipped "name (reason)"): a classifier for another class count is skipped
    and keeps its fresh initialisation.
    """
    loaded, skipped = [], []
    for layer in target.layers:
        if not layer.weights:
            continue
        try:
            origin = source.get_layer(layer.name)
        except ValueError:
            skipped.append(f"{layer.name} (not in the source)")
            continue
        shapes, origin_shapes = [tuple(w.shape) for w in layer.weights], [tuple(w.shape) for w in origin.weights]
        if shapes != origin_shapes:
            skipped.append(f"{layer.name} (shapes {origin_shapes} -> {shapes})")
            continue
        layer.set_weights(origin.get_weights())
        loaded.append(layer.name)
    return loaded, skipped
