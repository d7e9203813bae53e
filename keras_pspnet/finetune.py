"""Fine-tuning: start a training run from a saved or published PSPNet (`init_from` in training configs)."""

from __future__ import annotations

import sys

import keras

from keras_pspnet.model import inference_model, rebuild, with_aux_head


def with_fresh_aux_head(model: keras.Model, name: str | None) -> keras.Model:
    """`model` with an auxiliary head: a new, randomly initialised one where it was saved without (as `pspnet train`
    saves its models for deployment), so that it fine-tunes as the recipe trains; said on stderr unless `name` is
    None."""
    if isinstance(model.output, dict):
        return model
    if name is not None:
        print(f"{name}: saved without an auxiliary head; added a new one (randomly initialised)", file=sys.stderr)
    return with_aux_head(model)


def retarget(model: keras.Model, num_classes: int, *, aux_head: bool, sync_batchnorm: bool = False,
             metadata: dict | None = None, name: str | None = None) -> keras.Model:
    """`model`'s architecture with fresh weights, classifiers for `num_classes` classes, the current dtype
    policy (mixed precision) and a `ClassLogits` output with `metadata` (the new classes); see `rebuild`.
    `aux_head`: with the auxiliary head (a new one where `model` has none, said naming it `name` unless None)."""
    if aux_head:
        model = with_fresh_aux_head(model, name)
    else:
        model = inference_model(model)
    return rebuild(model, sync_batchnorm=sync_batchnorm, num_classes=num_classes, metadata=metadata)


def reheaded(source: keras.Model, num_classes: int | None, *, aux_head: bool, metadata: dict | None, name: str,
             sync_batchnorm: bool = False) -> keras.Model:
    """`source` with classifiers for `num_classes` classes (default its own), its other weights kept; says on stderr
    which layers it loaded and which it re-initialised (fine-tuning's starting point)."""
    num_classes = num_classes or inference_model(source).output.shape[-1]
    target = retarget(source, num_classes, aux_head=aux_head, sync_batchnorm=sync_batchnorm, metadata=metadata,
                      name=name)
    loaded, skipped = transfer_weights(source, target)
    print(f"{name}: loaded {len(loaded)} of {len(loaded) + len(skipped)} layers with weights"
          + (f"; re-initialised: {', '.join(skipped)}" if skipped else ""), file=sys.stderr)
    return target


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
