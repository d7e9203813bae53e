"""Import of mmsegmentation PSPNet checkpoints (ResNetV1c / ResNet backbones, PSPHead, FCNHead)."""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence

import keras
import numpy as np

from keras_pspnet.backbones.resnet import RESNET_DEPTHS
from keras_pspnet.model import DEFAULT_BINS, build_pspnet

_BACKBONE_RULES = (
    (r"backbone\.stem\.([0-9]+)", lambda m: f"stem_{int(m[1]) // 3 + 1}_{'conv' if int(m[1]) % 3 == 0 else 'bn'}"),
    (r"backbone\.conv1", lambda m: "conv1_conv"),
    (r"backbone\.bn1", lambda m: "conv1_bn"),
    (r"backbone\.layer([0-9]+)\.([0-9]+)\.conv([0-9])", lambda m: f"conv{int(m[1]) + 1}_block{int(m[2]) + 1}_{m[3]}_conv"),
    (r"backbone\.layer([0-9]+)\.([0-9]+)\.bn([0-9])", lambda m: f"conv{int(m[1]) + 1}_block{int(m[2]) + 1}_{m[3]}_bn"),
    (r"backbone\.layer([0-9]+)\.([0-9]+)\.downsample\.([01])",
     lambda m: f"conv{int(m[1]) + 1}_block{int(m[2]) + 1}_0_{'conv' if m[3] == '0' else 'bn'}"),
    (r"decode_head\.bottleneck\.(conv|bn)", lambda m: f"head_{m[1]}"),
    (r"decode_head\.conv_seg", lambda m: "classifier"),
    (r"auxiliary_head\.convs\.0\.(conv|bn)", lambda m: f"aux_{m[1]}"),
    (r"auxiliary_head\.conv_seg", lambda m: "aux_classifier"),
)
_PARAM_ORDER = {  # Keras weight order per layer type, as PyTorch parameter names
    "conv": ("weight", "bias"),
    "bn": ("weight", "bias", "running_mean", "running_var"),
}


def load_state_dict(path: str, trust_checkpoint: bool = False) -> dict[str, np.ndarray]:
    """Reads a .pth checkpoint (a state dict, or mmsegmentation's {"state_dict": ..., "meta": ...})."""
    try:
        import torch
    except ImportError:
        raise ImportError("Converting PyTorch checkpoints needs torch: pip install 'keras-pspnet[convert]'.") from None
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: checkpoint not found.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
    except Exception as error:  # torch raises several types for corrupt or unsafe pickles
        hint = "" if trust_checkpoint else " (if you trust its source, retry with trust_checkpoint=True)"
        raise ValueError(f"{path}: cannot read the checkpoint: {str(error).splitlines()[0]}{hint}.") from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping) or not state:
        raise ValueError(f"{path}: no state dict found in the checkpoint.")
    return {key.removeprefix("module."): value.detach().cpu().numpy() for key, value in state.items()}


def _layer_name(module: str, bins: Sequence[int]) -> str | None:
    match = re.fullmatch(r"decode_head\.psp_modules\.([0-9]+)\.1\.(conv|bn)", module)
    if match:
        index = int(match[1])
        return f"ppm_{bins[index]}_{match[2]}" if index < len(bins) else None
    for pattern, name in _BACKBONE_RULES:
        match = re.fullmatch(pattern, module)
        if match:
            return name(match)
    return None


def infer_config(state: Mapping[str, np.ndarray], path: str = "checkpoint") -> dict:
    """Reads depth, stem, widths, class count and heads off the checkpoint's keys and shapes."""
    if "decode_head.conv_seg.weight" not in state:
        raise ValueError(f"{path}: not an mmsegmentation decode-head checkpoint (no decode_head.conv_seg.weight).")
    blocks = []
    for stage in range(1, 5):
        indices = {int(k.split(".")[2]) for k in state if k.startswith(f"backbone.layer{stage}.")}
        blocks.append(len(indices))
    bottleneck = "backbone.layer1.0.conv3.weight" in state
    depth = next((d for d, (b, neck) in RESNET_DEPTHS.items() if b == tuple(blocks) and neck == bottleneck), None)
    if depth is None:
        raise ValueError(f"{path}: blocks per stage {blocks} (bottleneck={bottleneck}) match no ResNet depth.")
    if "backbone.stem.0.weight" in state:
        stem, stem_widths = "deep", tuple(state[f"backbone.stem.{i}.weight"].shape[0] for i in (0, 3, 6))
    else:
        stem, stem_widths = "standard", (state["backbone.conv1.weight"].shape[0],)
    num_pool = len({k.split(".")[2] for k in state if k.startswith("decode_head.psp_modules.")})
    config = {
        "backbone": f"resnet{depth}",
        "num_classes": state["decode_head.conv_seg.weight"].shape[0],
        "stem": stem,
        "stem_widths": stem_widths,
        "base_width": state["backbone.layer1.0.conv1.weight"].shape[0],
        "head_channels": state["decode_head.bottleneck.conv.weight"].shape[0],
        "num_pool_branches": num_pool,
        "aux_head": "auxiliary_head.conv_seg.weight" in state,
    }
    if num_pool:
        config["pool_channels"] = state["decode_head.psp_modules.0.1.conv.weight"].shape[0]
    if config["aux_head"]:
        config["aux_channels"] = state["auxiliary_head.convs.0.conv.weight"].shape[0]
    return config


def assign_weights(model: keras.Model, state: Mapping[str, np.ndarray], bins: Sequence[int], path: str) -> None:
    """Sets every weight of `model` from `state`; any missing, unexpected or mis-shaped key is an error."""
    modules: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    for key, value in state.items():
        module, param = key.rsplit(".", 1)
        if param != "num_batches_tracked":
            modules[module][param] = value
    problems, assignments, covered = [], [], set()
    for module, params in modules.items():
        name = _layer_name(module, bins)
        layer = _find_layer(model, name)
        if layer is None:
            problems.extend(f"unexpected key {module}.{p}" for p in params)
            continue
        kind = "bn" if isinstance(layer, keras.layers.BatchNormalization) else "conv"
        order = _PARAM_ORDER[kind][: len(layer.get_weights())]
        values = []
        for param in order:
            if param not in params:
                problems.append(f"missing key {module}.{param}")
                continue
            value = params[param]
            if param == "weight" and kind == "conv":
                value = value.transpose(2, 3, 1, 0)  # (out, in, kh, kw) -> (kh, kw, in, out)
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
        if layer.get_weights() and layer.name not in covered and not isinstance(layer, keras.layers.Normalization):
            problems.append(f"missing weights for layer {layer.name}")
    if problems:
        raise ValueError(f"{path}: checkpoint does not fit the model: " + "; ".join(problems))
    for layer, values in assignments:
        layer.set_weights(values)


def _find_layer(model, name):
    if name is None:
        return None
    try:
        return model.get_layer(name)
    except ValueError:
        return None


def from_mmseg(
    path: str,
    num_classes: int | None = None,
    *,
    bins: Sequence[int] = DEFAULT_BINS,
    output_stride: int = 8,
    contract_dilation: bool = True,
    aux_head: bool | None = None,
    trust_checkpoint: bool = False,
    **build_kwargs,
) -> keras.Model:
    """Builds a PSPNet from an mmsegmentation checkpoint (.pth) with all its weights loaded.

    Depth, stem, widths, class count and the presence of the auxiliary head are read off the checkpoint.
    What a checkpoint cannot tell is an argument: `bins` (mmsegmentation's pool_scales), `output_stride`
    (8 for "-d8" configs) and `contract_dilation` (True for ResNetV1c configs).

    Args:
        path: the checkpoint file.
        num_classes: if given, must equal the checkpoint's class count.
        aux_head: keep the auxiliary FCN head; default: when the checkpoint has one.
        trust_checkpoint: allow arbitrary pickled objects (only for checkpoints from a trusted source).
        **build_kwargs: more `build_pspnet` arguments (e.g. `input_dtype`, `sync_batchnorm`).
    """
    state = load_state_dict(path, trust_checkpoint)
    config = infer_config(state, path)
    if num_classes is not None and num_classes != config["num_classes"]:
        raise ValueError(f"{path}: the checkpoint has {config['num_classes']} classes, not {num_classes}.")
    branches = config.pop("num_pool_branches")
    if branches != len(bins):
        raise ValueError(f"{path}: the checkpoint has {branches} pyramid branches but bins={tuple(bins)} has "
                         f"{len(bins)}; pass the checkpoint's pool_scales as bins.")
    has_aux = config["aux_head"]
    config["aux_head"] = has_aux if aux_head is None else aux_head
    if config["aux_head"] and not has_aux:
        raise ValueError(f"{path}: the checkpoint has no auxiliary head.")
    if not config["aux_head"]:
        state = {k: v for k, v in state.items() if not k.startswith("auxiliary_head.")}
        config.pop("aux_channels", None)
    model = build_pspnet(
        **config, bins=bins, output_stride=output_stride, contract_dilation=contract_dilation, style="pytorch",
        **build_kwargs,
    )
    assign_weights(model, state, bins, path)
    return model
