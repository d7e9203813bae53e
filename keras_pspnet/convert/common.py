"""What every checkpoint converter shares: reading the file, copying weights by layer, class names."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Mapping

import keras
import numpy as np

from keras_pspnet.convert.pth import read_pth
from keras_pspnet.data.classes import CLASS_SETS, checked_classes
from keras_pspnet.data.info import DatasetInfo, generic_classes
from keras_pspnet.files import short_repr
from keras_pspnet.protocol import REFERENCE_DATASETS

# Keras weight order per layer kind, as PyTorch parameter names.
_PARAM_ORDER = {"conv": ("weight", "bias"), "bn": ("weight", "bias", "running_mean", "running_var")}


def read_checkpoint(path: str, trust: bool = False) -> tuple[dict[str, np.ndarray], dict]:
    """(state dict, meta) of a .pth: {"state_dict": ..., "meta": ...} (mmsegmentation), {"state_dict": ...,
    "epoch": ...} (hszhao/semseg) or a bare state dict. `module.` prefixes (DistributedDataParallel) go."""
    checkpoint = read_pth(path, trust)
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{path}: holds a {type(checkpoint).__name__}, not a state dict.")
    state = checkpoint.get("state_dict", checkpoint)
    meta = checkpoint.get("meta") if "state_dict" in checkpoint else None
    if not isinstance(state, Mapping) or not state:
        raise ValueError(f"{path}: no state dict found in the checkpoint.")
    others = sorted(str(k) for k, v in state.items() if not isinstance(v, np.ndarray))
    if others:
        raise ValueError(f"{path}: no state dict found in the checkpoint (entries that are not tensors: {others[:5]}).")
    return {key.removeprefix("module."): value for key, value in state.items()}, dict(meta or {})


def checkpoint_classes(meta: Mapping, num_classes: int, path: str, spec=None) -> DatasetInfo:
    """Class names and colours: `spec` (a name of CLASS_SETS or a DatasetInfo), else the checkpoint's meta
    (mmsegmentation 0.x CLASSES/PALETTE, 1.x dataset_meta), else the reference dataset with that many classes."""
    if isinstance(spec, DatasetInfo):
        info = spec
    elif spec is not None:
        if spec not in CLASS_SETS:
            raise ValueError(f"classes {spec!r}: not one of {sorted(CLASS_SETS)}")
        info = CLASS_SETS[spec]
    else:
        dataset_meta = meta.get("dataset_meta") or {}
        names = meta.get("CLASSES") or dataset_meta.get("classes")
        palette = meta.get("PALETTE") or dataset_meta.get("palette")
        if names:
            if palette is not None and (not isinstance(palette, (list, tuple)) or len(palette) != len(names)):
                raise ValueError(f"{path}: its meta has {len(names)} class names but the palette "
                                 f"{short_repr(palette)}.")
            info = DatasetInfo("checkpoint", *checked_classes(names, palette or [None] * len(names), path))
        elif num_classes in REFERENCE_DATASETS:
            info = CLASS_SETS[REFERENCE_DATASETS[num_classes]]
        else:
            info = generic_classes(num_classes)
    if info.num_classes != num_classes:
        raise ValueError(f"{path}: the checkpoint has {num_classes} classes, its class names {info.num_classes}.")
    return info


def check_heads(config: dict, state: dict, *, num_classes: int | None, bins, aux_head: bool | None, aux_prefix: str,
                path: str) -> dict:
    """Checks the class count and pyramid branches read off a checkpoint (`infer_config`) against the arguments,
    and keeps the auxiliary head (default: when there is one) or drops it; updates `config` for build_pspnet and
    returns the state dict to load (without the head's `aux_prefix` keys once dropped)."""
    if num_classes is not None and num_classes != config["num_classes"]:
        raise ValueError(f"{path}: the checkpoint has {config['num_classes']} classes, not {num_classes}.")
    branches = config.pop("num_pool_branches")
    if branches != len(bins):
        raise ValueError(f"{path}: the checkpoint has {branches} pyramid branches but bins={tuple(bins)} has "
                         f"{len(bins)}; pass the pyramid bins (pool_scales) of its config.")
    has_aux = config["aux_head"]
    config["aux_head"] = has_aux if aux_head is None else aux_head
    if config["aux_head"] and not has_aux:
        raise ValueError(f"{path}: the checkpoint has no auxiliary head.")
    if config["aux_head"] and "aux_channels" not in config:
        found = sorted({".".join(k.split(".")[:3]) for k in state if k.startswith(aux_prefix)})
        raise ValueError(f"{path}: its auxiliary head is not the one-conv FCN head we build ({', '.join(found[:6])}); "
                         "convert without it (aux_head=False, --no-aux).")
    if not config["aux_head"]:
        state = {k: v for k, v in state.items() if not k.startswith(aux_prefix)}
        config.pop("aux_channels", None)
    return state


def assign_weights(model: keras.Model, state: Mapping[str, np.ndarray], layer_name: Callable[[str], str | None],
                   path: str, layers: Collection[str] | None = None) -> None:
    """Sets every weight of `model` from `state`; `layer_name` maps a module key (e.g. "backbone.layer1.0.conv1")
    to its Keras layer name. Any missing, unexpected or mis-shaped key is an error listing them all, and then
    nothing is assigned. `layers`: only these layers are set, each of them from `state` (e.g. a backbone's: the
    other layers keep their weights, and a key of theirs is unexpected); default every layer with weights but the
    input normalisation."""
    modules: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if param != "num_batches_tracked":
            modules[module][param] = value
    problems, assignments, covered = [], [], set()
    for module, params in modules.items():
        name = layer_name(module)
        layer = _find_layer(model, name) if layers is None or name in layers else None
        if layer is None:
            problems.extend(f"unexpected key {module}.{p}" for p in sorted(params))
            continue
        kind = "bn" if isinstance(layer, keras.layers.BatchNormalization) else "conv"
        order = _PARAM_ORDER[kind][: len(layer.get_weights())]
        values = []
        for param in order:
            if param not in params:
                problems.append(f"missing key {module}.{param}")
                continue
            value = params[param]
            if param == "weight" and kind == "conv":  # (out, in, kh, kw) -> (kh, kw, in, out); depthwise: in = 1
                value = value.transpose(2, 3, 0, 1) if isinstance(layer, keras.layers.DepthwiseConv2D) else \
                    value.transpose(2, 3, 1, 0)
            values.append(value)
        problems.extend(f"unexpected key {module}.{p}" for p in sorted(set(params) - set(order)))
        if len(values) == len(order):
            expected = [tuple(w.shape) for w in layer.get_weights()]
            got = [tuple(v.shape) for v in values]
            if expected != got:
                problems.append(f"{module}: shapes {got} do not fit layer {layer.name} {expected}")
            else:
                assignments.append((layer, values))
        covered.add(layer.name)
    for layer in model.layers:
        if layers is not None and layer.name not in layers:
            continue
        if layer.get_weights() and layer.name not in covered and not isinstance(layer, keras.layers.Normalization):
            problems.append(f"missing weights for layer {layer.name}")
    if problems:
        raise ValueError(f"{path}: checkpoint does not fit the model: " + "; ".join(problems))
    for layer, values in assignments:
        layer.set_weights([np.asarray(v, np.float32) for v in values])


def _find_layer(model, name):
    if name is None:
        return None
    try:
        return model.get_layer(name)
    except ValueError:
        return None
