"""Import of mmsegmentation PSPNet checkpoints: ResNetV1c / ResNet (V1b) or MobileNetV2, PSPHead, FCNHead.

Architecture widths, depth and heads are read off the checkpoint's keys and shapes. What weights cannot
tell (pyramid bin sizes, output stride, contract_dilation, align_corners, the test protocol) comes from the
config text mmsegmentation stores in the checkpoint's meta when it is there, else from arguments with
the defaults of mmsegmentation's PSPNet configs; an argument that contradicts the stored config is refused.
"""

from __future__ import annotations

import ast
import itertools
import math
import os
import re
from collections.abc import Mapping, Sequence

import keras
import numpy as np

from keras_pspnet.backbones.common import stride_plan
from keras_pspnet.backbones.mobilenet_v2 import MOBILENET_V2_STAGES
from keras_pspnet.backbones.resnet import RESNET_DEPTHS
from keras_pspnet.convert.common import assign_weights, check_heads, checkpoint_classes, read_checkpoint
from keras_pspnet.data.classes import classes_metadata
from keras_pspnet.files import printable, short_repr
from keras_pspnet.model import build_pspnet
from keras_pspnet.protocol import LARGEST_SIDE, TestProtocol, mmseg_protocol

_RULES = (
    (r"backbone\.stem\.([0-9]+)", lambda m: f"stem_{int(m[1]) // 3 + 1}_{'conv' if int(m[1]) % 3 == 0 else 'bn'}"),
    (r"backbone\.conv1", lambda m: "conv1_conv"),
    (r"backbone\.bn1", lambda m: "conv1_bn"),
    (r"backbone\.layer([0-9]+)\.([0-9]+)\.conv([0-9])",
     lambda m: f"conv{int(m[1]) + 1}_block{int(m[2]) + 1}_{m[3]}_conv"),
    (r"backbone\.layer([0-9]+)\.([0-9]+)\.bn([0-9])", lambda m: f"conv{int(m[1]) + 1}_block{int(m[2]) + 1}_{m[3]}_bn"),
    (r"backbone\.layer([0-9]+)\.([0-9]+)\.downsample\.([01])",
     lambda m: f"conv{int(m[1]) + 1}_block{int(m[2]) + 1}_0_{'conv' if m[3] == '0' else 'bn'}"),
    (r"decode_head\.bottleneck\.(conv|bn)", lambda m: f"head_{m[1]}"),
    (r"decode_head\.conv_seg", lambda m: "classifier"),
    (r"auxiliary_head\.convs\.0\.(conv|bn)", lambda m: f"aux_{m[1]}"),
    (r"auxiliary_head\.conv_seg", lambda m: "aux_classifier"),
)
# mmsegmentation's MobileNetV2: layer<s>.<j>.conv.<k>.{conv,bn}, k over (expand,) depthwise, project.
_MOBILENET_FIRST_BLOCK = [0, *itertools.accumulate(stage[2] for stage in MOBILENET_V2_STAGES)]
# What mmsegmentation's PSPNet configs use when a checkpoint stores no config (dilations: as the stride implies).
DEFAULTS = {"bins": (1, 2, 3, 6), "output_stride": 8, "contract_dilation": True, "align_corners": False,
            "dilations": None}
MAX_BIN = 64  # pyramid bins of a stored config: (1, 2, 3, 6) in every published one


def _mobilenet_layer(module: str) -> str | None:
    match = re.fullmatch(r"backbone\.conv1\.(conv|bn)", module)
    if match:
        return "Conv1" if match[1] == "conv" else "bn_Conv1"
    match = re.fullmatch(r"backbone\.layer([1-7])\.([0-9]+)\.conv\.([0-2])\.(conv|bn)", module)
    if not match:
        return None
    block = _MOBILENET_FIRST_BLOCK[int(match[1]) - 1] + int(match[2])
    parts = ("depthwise", "project") if block == 0 else ("expand", "depthwise", "project")
    if int(match[3]) >= len(parts):
        return None
    prefix = f"block_{block}_" if block else "expanded_conv_"
    return prefix + parts[int(match[3])] + ("" if match[4] == "conv" else "_BN")


def layer_name(module: str, bins: Sequence[int]) -> str | None:
    """The Keras layer of an mmsegmentation module key; pyramid branch k is the branch of bin size bins[k]."""
    match = re.fullmatch(r"decode_head\.psp_modules\.([0-9]+)\.1\.(conv|bn)", module)
    if match:
        index = int(match[1])
        return f"ppm_{bins[index]}_{match[2]}" if index < len(bins) else None
    for pattern, name in _RULES:
        match = re.fullmatch(pattern, module)
        if match:
            return name(match)
    return _mobilenet_layer(module)


def infer_config(state: Mapping[str, np.ndarray], path: str = "checkpoint") -> dict:
    """Reads backbone, depth or width, stem, head widths, class count and heads off the keys and shapes."""
    if "decode_head.conv_seg.weight" not in state:
        raise ValueError(f"{path}: not an mmsegmentation decode-head checkpoint (no decode_head.conv_seg.weight).")
    head = sorted({key.split(".")[1] for key in state if key.startswith("decode_head.")})
    if "psp_modules" not in head:
        raise ValueError(f"{path}: not a PSPNet: its decode head has {', '.join(head)} (a PSPHead has psp_modules).")
    try:
        return _infer_config(state, path)
    except KeyError as error:
        raise ValueError(f"{path}: not an mmsegmentation PSPNet layout we know (no {error.args[0]}).") from None


def _infer_config(state: Mapping[str, np.ndarray], path: str) -> dict:
    if "backbone.layer1.0.conv.0.conv.weight" in state:  # InvertedResidual blocks
        config = {"backbone": "mobilenet_v2", "style": "pytorch",
                  "alpha": state["backbone.layer7.0.conv.2.conv.weight"].shape[0] / 320}
    else:
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
        config = {"backbone": f"resnet{depth}", "style": "pytorch", "stem": stem, "stem_widths": stem_widths,
                  "base_width": state["backbone.layer1.0.conv1.weight"].shape[0]}
    branches = sorted({int(k.split(".")[2]) for k in state if k.startswith("decode_head.psp_modules.")})
    config.update(num_classes=state["decode_head.conv_seg.weight"].shape[0],
                  head_channels=state["decode_head.bottleneck.conv.weight"].shape[0],
                  pool_channels=state["decode_head.psp_modules.0.1.conv.weight"].shape[0],
                  num_pool_branches=len(branches), aux_head=any(k.startswith("auxiliary_head.") for k in state))
    if config["aux_head"] and {"auxiliary_head.convs.0.conv.weight", "auxiliary_head.conv_seg.weight"} <= set(state):
        config["aux_channels"] = state["auxiliary_head.convs.0.conv.weight"].shape[0]
    return config


def _literal(node: ast.AST):
    """A config expression as Python data: literals, containers and dict(...) calls; nothing is executed."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        return {kw.arg: _literal(kw.value) for kw in node.keywords if kw.arg}
    if isinstance(node, (ast.Tuple, ast.List)):
        values = [_literal(v) for v in node.elts]
        return tuple(values) if isinstance(node, ast.Tuple) else values
    if isinstance(node, ast.Dict):
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values) if k is not None}
    return ast.literal_eval(node)


MAX_CONFIG_CHARS = 2**20  # the config text mmsegmentation stores is ~10 kB


def stored_config(meta: Mapping, path: str = "checkpoint") -> dict:
    """The top-level variables of the config text mmsegmentation keeps in a checkpoint's meta ({} if none)."""
    text = meta.get("config") or meta.get("cfg")
    if not isinstance(text, str):
        return {}
    if len(text) > MAX_CONFIG_CHARS:
        raise ValueError(f"{path}: its stored config has {len(text):,} characters, more than a config has")
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):  # not Python: the layout of a version we do not know
        return {}
    except (RecursionError, MemoryError):
        raise ValueError(f"{path}: its stored config is nested too deeply to read") from None
    values = {}
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1 and isinstance(statement.targets[0],
                                                                                           ast.Name):
            name = statement.targets[0].id
            try:
                values[name] = _literal(statement.value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as error:
                if name == "model":  # what the weights cannot tell comes from here: never guessed instead
                    raise ValueError(f"{path}: its stored config's model is not plain data ({type(error).__name__}: "
                                     f"{printable(str(error), 80)})") from None
                continue  # expressions we do not need (lambdas, names of other variables)
    return values


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _numbers(value, count: int, low: float, high: float, integer: bool = True) -> tuple:
    """`value` as `count` numbers in [low, high] (any count when `count` is 0), or ValueError."""
    if not isinstance(value, (tuple, list)) or (count and len(value) != count) or not value:
        raise ValueError(f"{short_repr(value)} is not {count or 'a list of'} numbers")
    kinds = (int,) if integer else (int, float)
    if not all(isinstance(v, kinds) and not isinstance(v, bool) and low <= v <= high for v in value):
        raise ValueError(f"{short_repr(value)} holds values outside {low}-{high}")
    return tuple(value)


def config_hints(meta: Mapping, path: str) -> dict:
    """What the stored config says of bins, output stride, contract_dilation, align_corners, the normalisation
    and the test protocol. Reads mmsegmentation 1.x and 0.x configs, those of 2020 (test_cfg and img_norm_cfg at
    the top level) included; values outside what a PSPNet config holds are an error naming the file."""
    values = stored_config(meta, path)
    model = values.get("model")
    if not isinstance(model, dict):
        return {}
    try:
        return _hints(values, model, path)
    except (ValueError, TypeError) as error:
        message = str(error)
        raise ValueError(message if message.startswith(f"{path}: ") else
                         f"{path}: its stored config cannot be used ({message})") from None


def _hints(values: dict, model: dict, path: str) -> dict:
    head, backbone = _dict(model.get("decode_head")), _dict(model.get("backbone"))
    if head.get("type", "PSPHead") != "PSPHead":
        raise ValueError(f"{path}: the checkpoint's config describes a {printable(head['type'], 40)} model, not "
                         "PSPNet (PSPHead).")
    hints = {"bins": _numbers(head.get("pool_scales", DEFAULTS["bins"]), 0, 1, MAX_BIN),
             "align_corners": bool(head.get("align_corners", False))}
    mobilenet = backbone.get("type") == "MobileNetV2"
    nominal = [stage[3] for stage in MOBILENET_V2_STAGES] if mobilenet else [1, 2, 2, 2]
    strides = list(_numbers(backbone.get("strides", nominal), len(nominal), 1, 2))
    dilations = list(_numbers(backbone.get("dilations", [1] * len(nominal)), len(nominal), 1, 16))
    output_stride = (2 if mobilenet else 4) * math.prod(strides)
    plan = stride_plan(nominal, output_stride, 2 if mobilenet else 4)
    if strides != [stride for stride, _ in plan] or (mobilenet and dilations != [d for _, d in plan]):
        raise ValueError(f"{path}: backbone strides {tuple(strides)} with dilations {tuple(dilations)} are not a "
                         f"dilated network we build (for output stride {output_stride}: {plan}).")
    hints["output_stride"] = output_stride
    if not mobilenet:
        hints["contract_dilation"] = bool(backbone.get("contract_dilation", False))
        hints["dilations"] = tuple(dilations)  # "-d32" keeps (1, 1, 2, 4) with all its strides
    normalization = _normalization(values, model)
    if normalization:
        hints["normalization"] = normalization
    protocol = _config_protocol(values, model)
    if protocol:
        hints["protocol"] = protocol
    return hints


def _normalization(values: dict, model: dict) -> dict | None:
    """{"mean", "std" (RGB order, pixels 0-255), "bgr": the network saw BGR} of the config, or None.

    1.x: the SegDataPreProcessor (`data_preprocessor`, the model's or the top-level one; bgr_to_rgb). 0.x: the
    Normalize step (`img_norm_cfg` at the top level, else in the test pipeline; to_rgb). Images are loaded as BGR
    (cv2): without the conversion the network saw BGR, normalised by statistics in BGR order.
    """
    preprocessor = _dict(model.get("data_preprocessor")) or _dict(values.get("data_preprocessor"))
    if "mean" in preprocessor:
        config, to_rgb = preprocessor, bool(preprocessor.get("bgr_to_rgb") or preprocessor.get("rgb_to_bgr"))
    else:
        steps = [_dict(values.get("img_norm_cfg"))] + [
            step for step in _pipeline_steps(values.get("test_pipeline")) if step.get("type") == "Normalize"]
        config = next((step for step in steps if "mean" in step), None)
        if config is None:
            return None
        to_rgb = bool(config.get("to_rgb", True))  # mmseg 0.x Normalize's default
    mean = _numbers(config.get("mean"), 3, 0, 255, integer=False)
    std = _numbers(config.get("std"), 3, 1e-6, 1e6, integer=False)
    if not to_rgb:
        mean, std = mean[::-1], std[::-1]
    return {"mean": tuple(float(v) for v in mean), "std": tuple(float(v) for v in std), "bgr": not to_rgb}


def _pipeline_steps(pipeline) -> list[dict]:
    """The steps of a pipeline, those nested in MultiScaleFlipAug / TestTimeAug included."""
    steps = []
    for step in pipeline if isinstance(pipeline, (list, tuple)) else []:
        if isinstance(step, dict):
            steps.append(step)
            steps.extend(_pipeline_steps(step.get("transforms")))
    return steps


def _config_protocol(values: dict, model: dict) -> TestProtocol | None:
    """The test protocol of the config: its keep-ratio Resize scale and test_cfg (whole or slide; the model's,
    else the top-level test_cfg of 2020's configs, where 1.x keeps its TestLoop instead)."""
    scale = None
    for step in values.get("test_pipeline") or []:
        if isinstance(step, dict) and step.get("type") == "Resize" and step.get("keep_ratio") and step.get("scale"):
            scale = step["scale"]  # mmsegmentation 1.x
        elif isinstance(step, dict) and step.get("type") == "MultiScaleFlipAug" and step.get("img_scale"):
            scale = step["img_scale"]  # 0.x
    if scale is None:
        return None
    scale = _numbers(scale, 2, 1, LARGEST_SIDE)
    test_cfg = next((cfg for cfg in (_dict(model.get("test_cfg")), _dict(values.get("test_cfg"))) if "mode" in cfg),
                    {})
    if test_cfg.get("mode") == "slide":
        return mmseg_protocol(scale, _numbers(test_cfg.get("crop_size"), 2, 1, LARGEST_SIDE),
                              _numbers(test_cfg.get("stride"), 2, 1, LARGEST_SIDE))
    return mmseg_protocol(scale)


def from_mmseg(
    path: str,
    num_classes: int | None = None,
    *,
    bins: Sequence[int] | None = None,
    output_stride: int | None = None,
    contract_dilation: bool | None = None,
    align_corners: bool | None = None,
    dilations: Sequence[int] | None = None,
    aux_head: bool | None = None,
    classes=None,
    trust_checkpoint: bool = False,
    **build_kwargs,
) -> keras.Model:
    """Builds a PSPNet from an mmsegmentation checkpoint (.pth) with all its weights loaded; torch is not needed.

    Backbone (ResNetV1c, ResNet/V1b, MobileNetV2), depth, widths, class count and the auxiliary head are read
    off the checkpoint. `bins` (pool_scales), `output_stride` (8 for "-d8", 32 for "-d32"),
    `contract_dilation` and `align_corners` (True for the 769x769 Cityscapes models) default to the config
    stored in the checkpoint, else to mmsegmentation's PSPNet defaults (1,2,3,6), 8, True, False; a value
    that contradicts the stored config is an error. "-d32" configs keep dilations (1, 1, 2, 4) beside their
    strides: `dilations`, also read from the stored config. The model's metadata holds the class names and colours
    (`classes`: a name of `keras_pspnet.data.classes.CLASS_SETS`; default the checkpoint's own, else the
    reference dataset with that many classes) and the config's test protocol when stored. The stored config's
    normalisation (mean, std, BGR or RGB; ImageNet's without a config) is built into the model, which always takes
    RGB pixels 0-255. Both config layouts are read: 1.x and 0.x, those of 2020 with test_cfg and img_norm_cfg at
    the top level included.

    Args:
        path: the checkpoint file.
        num_classes: if given, must equal the checkpoint's class count.
        aux_head: keep the auxiliary FCN head; default: when the checkpoint has one.
        trust_checkpoint: allow arbitrary pickled objects (only for checkpoints from a trusted source).
        **build_kwargs: more `build_pspnet` arguments (e.g. `input_dtype`, `sync_batchnorm`).
    """
    state, meta = read_checkpoint(path, trust_checkpoint)
    config = infer_config(state, path)
    hints = config_hints(meta, path)
    given = {"bins": tuple(bins) if bins is not None else None, "output_stride": output_stride,
             "contract_dilation": contract_dilation, "align_corners": align_corners,
             "dilations": tuple(dilations) if dilations is not None else None}
    clashes = [f"{key}={value!r} (its config says {hints[key]!r})" for key, value in given.items()
               if value is not None and key in hints and value != hints[key]]
    normalization = hints.get("normalization")
    if normalization:
        clashes += [f"{key}={tuple(build_kwargs[key])!r} (its config says {normalization[key]!r})"
                    for key in ("mean", "std") if build_kwargs.get(key) is not None
                    and not np.allclose(build_kwargs[key], normalization[key])]
        build_kwargs = {**build_kwargs, "mean": normalization["mean"], "std": normalization["std"]}
        if normalization["bgr"]:  # trained on BGR: the first conv takes our RGB with its input channels reversed
            state = _first_conv_reversed(state, path)
    if clashes:
        raise ValueError(f"{path}: {', '.join(clashes)} contradicts the config stored in the checkpoint; omit the "
                         "argument to use the config's value.")
    options = {**DEFAULTS, **{k: v for k, v in hints.items() if k in DEFAULTS},
               **{k: v for k, v in given.items() if v is not None}}
    state = check_heads(config, state, num_classes=num_classes, bins=options["bins"], aux_head=aux_head,
                        aux_prefix="auxiliary_head.", path=path)
    if options["dilations"] is None:
        options.pop("dilations")
    if config["backbone"] == "mobilenet_v2":
        options.pop("contract_dilation")
    info = checkpoint_classes(meta, config["num_classes"], path, classes)
    metadata = {"classes": classes_metadata(info),
                "source": {"format": "mmsegmentation", "file": os.path.basename(path)}}
    if "protocol" in hints:
        metadata["protocol"] = hints["protocol"].to_dict()
    model = build_pspnet(**config, **options, metadata=metadata, **build_kwargs)
    assign_weights(model, state, lambda module: layer_name(module, options["bins"]), path)
    return model


def _first_conv_reversed(state: dict, path: str) -> dict:
    """The state dict with the input channels of the backbone's first conv (the one conv taking 3 channels)
    reversed: BGR weights for RGB input."""
    first = [key for key, value in state.items() if key.startswith("backbone.") and key.endswith(".weight")
             and value.ndim == 4 and value.shape[1] == 3]
    if len(first) != 1:
        raise ValueError(f"{path}: its config says BGR input, but no single first conv takes 3 channels")
    return {**state, first[0]: np.ascontiguousarray(state[first[0]][:, ::-1])}
