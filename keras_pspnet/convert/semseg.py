"""Import of the PSPNet authors' checkpoints (hszhao/semseg, PyTorch).

Their PSPNet: a ResNet with a deep stem (3x3 convs 64-64-128), every block of layer3 dilated 2 and of
layer4 dilated 4 (no contract dilation), PPM branches of 2048 / len(bins) channels, a 3x3 512 head and an
aux head on layer3, bilinear upsampling with align_corners=True. Files come from DistributedDataParallel
training: {"epoch", "state_dict" (keys prefixed "module."), "optimizer"}.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

import keras
import numpy as np

from keras_pspnet.backbones.resnet import RESNET_DEPTHS
from keras_pspnet.convert.common import assign_weights, check_heads, checkpoint_classes, read_checkpoint
from keras_pspnet.data.classes import classes_metadata
from keras_pspnet.model import DEFAULT_BINS, build_pspnet
from keras_pspnet.protocol import REFERENCE_DATASETS, SEMSEG_PROTOCOLS

_STEM = {"0": "stem_1_conv", "1": "stem_1_bn", "3": "stem_2_conv", "4": "stem_2_bn", "6": "stem_3_conv",
         "7": "stem_3_bn"}
_HEADS = {"cls.0": "head_conv", "cls.1": "head_bn", "cls.4": "classifier", "aux.0": "aux_conv", "aux.1": "aux_bn",
          "aux.4": "aux_classifier"}


def layer_name(module: str, bins: Sequence[int]) -> str | None:
    """The Keras layer of a semseg module key; PPM branch k is the branch of bin size bins[k]."""
    if module in _HEADS:
        return _HEADS[module]
    match = re.fullmatch(r"layer0\.([0-9])", module)
    if match:
        return _STEM.get(match[1])
    match = re.fullmatch(r"layer([1-4])\.([0-9]+)\.(conv|bn)([1-3])", module)
    if match:
        return f"conv{int(match[1]) + 1}_block{int(match[2]) + 1}_{match[4]}_{match[3]}"
    match = re.fullmatch(r"layer([1-4])\.([0-9]+)\.downsample\.([01])", module)
    if match:
        return f"conv{int(match[1]) + 1}_block{int(match[2]) + 1}_0_{'conv' if match[3] == '0' else 'bn'}"
    match = re.fullmatch(r"ppm\.features\.([0-9]+)\.([12])", module)
    if match and int(match[1]) < len(bins):
        return f"ppm_{bins[int(match[1])]}_{'conv' if match[2] == '1' else 'bn'}"
    return None


def infer_config(state: Mapping[str, np.ndarray], path: str = "checkpoint") -> dict:
    """Depth, stem widths, head widths, class count, pyramid branches and aux head off the keys and shapes."""
    if "cls.4.weight" not in state or "layer0.0.weight" not in state:
        raise ValueError(f"{path}: not an hszhao/semseg PSPNet checkpoint (no cls.4.weight or layer0.0.weight); "
                         "mmsegmentation checkpoints convert with from_mmseg / `pspnet convert mmseg`.")
    if not any(k.startswith("ppm.features.") for k in state):
        modules = sorted({k.split(".")[0] for k in state})
        raise ValueError(f"{path}: not a PSPNet: its modules are {', '.join(modules)} (a PSPNet has ppm.features; "
                         "PSANet checkpoints have psa).")
    blocks = tuple(len({int(k.split(".")[1]) for k in state if k.startswith(f"layer{stage}.")})
                   for stage in range(1, 5))
    depth = next((d for d, (b, neck) in RESNET_DEPTHS.items() if b == blocks and neck), None)
    if depth is None or "layer0.6.weight" not in state:
        raise ValueError(f"{path}: blocks per stage {list(blocks)} with its stem match no semseg ResNet (50/101/152).")
    try:
        config = {"backbone": f"resnet{depth}", "num_classes": state["cls.4.weight"].shape[0],
                  "stem_widths": tuple(state[f"layer0.{i}.weight"].shape[0] for i in (0, 3, 6)),
                  "base_width": state["layer1.0.conv1.weight"].shape[0],
                  "head_channels": state["cls.0.weight"].shape[0],
                  "num_pool_branches": len({k.split(".")[2] for k in state if k.startswith("ppm.features.")}),
                  "pool_channels": state["ppm.features.0.1.weight"].shape[0],
                  "aux_head": any(k.startswith("aux.") for k in state)}
    except KeyError as error:
        raise ValueError(f"{path}: not an hszhao/semseg PSPNet layout we know (no {error.args[0]}).") from None
    if config["aux_head"] and {"aux.0.weight", "aux.4.weight"} <= set(state):
        config["aux_channels"] = state["aux.0.weight"].shape[0]
    return config


def from_semseg(
    path: str,
    num_classes: int | None = None,
    *,
    bins: Sequence[int] = DEFAULT_BINS,
    aux_head: bool | None = None,
    classes=None,
    trust_checkpoint: bool = False,
    **build_kwargs,
) -> keras.Model:
    """Builds a PSPNet from one of the PSPNet authors' checkpoints (hszhao/semseg) with all weights loaded.

    The model aligns corners as theirs (`align_corners=True`) and carries the authors' test protocol for its
    dataset (ADE20K / VOC 2012: long side 512, windows 473; Cityscapes: 2048, 713; flip) in its metadata,
    with the class names and colours of that dataset (`classes` overrides; datasets are told by class count).

    Args:
        path: the checkpoint file (theirs hold no class names: 150 classes is ADE20K, 19 Cityscapes, 21 VOC).
        num_classes: if given, must equal the checkpoint's class count.
        bins: the pyramid bins of the training config (theirs: 1, 2, 3, 6).
        aux_head: keep the auxiliary head; default: when the checkpoint has one.
        trust_checkpoint: allow arbitrary pickled objects (only for checkpoints from a trusted source).
        **build_kwargs: more `build_pspnet` arguments (e.g. `input_dtype`).
    """
    state, meta = read_checkpoint(path, trust_checkpoint)
    config = infer_config(state, path)
    bins = tuple(bins)
    state = check_heads(config, state, num_classes=num_classes, bins=bins, aux_head=aux_head, aux_prefix="aux.",
                        path=path)
    info = checkpoint_classes(meta, config["num_classes"], path, classes)
    metadata = {"classes": classes_metadata(info), "source": {"format": "semseg", "file": os.path.basename(path)}}
    dataset = classes if isinstance(classes, str) else REFERENCE_DATASETS.get(config["num_classes"])
    if dataset in SEMSEG_PROTOCOLS:
        metadata["protocol"] = SEMSEG_PROTOCOLS[dataset].to_dict()
    model = build_pspnet(**config, bins=bins, stem="deep", style="pytorch", contract_dilation=False,
                         align_corners=True, metadata=metadata, **build_kwargs)
    assign_weights(model, state, lambda module: layer_name(module, bins), path)
    return model
