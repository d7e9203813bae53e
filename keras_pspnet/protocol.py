"""Test protocols: how a model is run on an image to score it, as each reference evaluates its numbers."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

MULTI_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # both references' multi-scale evaluation
STYLES = ("semseg", "mmseg")
MODES = ("whole", "slide")
LARGEST_SIDE = 2**15  # sizes a protocol may name (resize, windows); what they cost is checked before running
LARGEST_SCALE = 8.0


@dataclasses.dataclass(frozen=True)
class TestProtocol:
    """How evaluation and prediction run a model on one image.

    Attributes:
        style: how windows, flips and scales combine, after one of the references.
            "semseg": the PSPNet authors' tool/test.py (and our default): the image is padded to the window
            with the mean colour, each window's softmax is averaged with its mirrored window's, window
            probabilities are averaged, and each scale's probabilities are resized back bilinearly.
            "mmseg": mmsegmentation's EncoderDecoder: windows are not padded (a small image is one smaller
            window), window logits are averaged, a flip mirrors the whole scaled image, and logits are
            resized back to the image (bilinear, with the model's corner alignment) before the softmax.
        resize: what the image is resized to at scale 1: None (its own size), an int (semseg's base_size:
            the long side) or (long, short) (mmseg's keep-ratio Resize: the largest size that fits both).
        mode: "whole" (the model on the whole resized image) or "slide" (windows of `crop`).
        crop: window (height, width).
        stride: window stride (height, width); default ceil(2/3 of `crop`), the authors' rate.
        scales: factors of the scale-1 size whose scores are averaged (MULTI_SCALES for multi-scale).
        flip: also average the horizontally mirrored image.
    """

    __test__ = False  # a class named Test*, but not a pytest test

    style: str = "semseg"
    resize: int | tuple[int, int] | None = None
    mode: str = "whole"
    crop: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False

    def __post_init__(self):
        if self.style not in STYLES:
            raise ValueError(f"protocol style must be one of {list(STYLES)}, got {self.style!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {self.mode!r}")
        if self.mode == "slide" and not self.crop:
            raise ValueError("sliding-window inference needs a crop size (--crop HxW)")
        if not self.scales or not all(_number(s) and 0 < s <= LARGEST_SCALE for s in self.scales):
            raise ValueError(f"scales must be in (0, {LARGEST_SCALE:g}], got {self.scales}")
        for name, value in (("crop", self.crop), ("stride", self.stride), ("resize", self.resize)):
            one_side = name == "resize" and _integer(value)  # semseg's base size: the long side
            values = (value,) if one_side else value
            if value is not None and not (isinstance(values, (tuple, list)) and len(values) == (1 if one_side else 2)
                                          and all(_integer(v) and 1 <= v <= LARGEST_SIDE for v in values)):
                shape = "a long side or (long, short)" if name == "resize" else "(height, width)"
                raise ValueError(f"{name} must be {shape}, integers in 1-{LARGEST_SIDE}, got {value}")
        if self.crop and self.stride and (self.stride[0] > self.crop[0] or self.stride[1] > self.crop[1]):
            raise ValueError(f"stride {self.stride} exceeds the crop {self.crop}: windows would leave gaps")

    @property
    def name(self) -> str:
        """"semseg", "mmseg" or "native" (the authors' way of combining windows and flips, at the image's size)."""
        return "native" if self.resize is None and self.style == "semseg" else self.style

    @property
    def absent_classes(self) -> str:
        """How mean IoU and mean accuracy count a class absent from both labels and predictions, as the
        reference of this protocol counts it: "zero" (hszhao/semseg tool/test.py: IoU 0, a plain mean over all
        classes) for the authors' protocol, else "skip" (mmsegmentation's and Keras' MeanIoU: left out)."""
        return "zero" if self.name == "semseg" else "skip"

    @property
    def window_stride(self) -> tuple[int, int]:
        if self.stride:
            return tuple(self.stride)
        return tuple(-(-2 * c // 3) for c in self.crop)  # ceil(2/3 * crop) in integers

    def scaled_size(self, height: int, width: int, scale: float) -> tuple[int, int]:
        """(height, width) the image is resized to at `scale`, with each reference's rounding."""
        if self.resize is None:
            return max(1, round(height * scale)), max(1, round(width * scale))
        if isinstance(self.resize, int):  # semseg: long side to round(scale * base_size), Python rounding
            long_side = round(scale * self.resize)
            if height > width:
                return long_side, round(long_side / height * width)
            return round(long_side / width * height), long_side
        # mmseg (0.x MultiScaleFlipAug, which produced the published numbers): the scale tuple times the
        # ratio, then mmcv's rescale_size: factor min(long / long side, short / short side), int(x * f + 0.5).
        long_edge, short_edge = (int(edge * scale) for edge in self.resize)
        factor = min(max(long_edge, short_edge) / max(height, width), min(long_edge, short_edge) / min(height, width))
        return int(height * factor + 0.5), int(width * factor + 0.5)

    def to_dict(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> TestProtocol:
        """The inverse of `to_dict`; unknown keys are an error naming them."""
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown test protocol key(s) {sorted(unknown)}")
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in values.items()})

    def describe(self) -> str:
        """One line, e.g. "mmseg: keep-ratio resize to 2048x512, whole image" or "native: whole image"."""
        if self.resize is None:  # "native": our default, the authors' way of combining windows and flips
            size = None if self.style == "semseg" else "native size"
        elif isinstance(self.resize, int):
            size = f"long side {self.resize}"
        else:
            size = f"keep-ratio resize to {self.resize[0]}x{self.resize[1]}"
        window = "whole image" if self.mode == "whole" else (
            f"slide {self.crop[0]}x{self.crop[1]} stride {self.window_stride[0]}x{self.window_stride[1]}")
        extras = (["scales " + ",".join(f"{s:g}" for s in self.scales)] if self.scales != (1.0,) else []) + (
            ["flip"] if self.flip else [])
        return f"{self.name}: " + ", ".join(part for part in (size, window, *extras) if part)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def own_protocol(metadata: dict) -> TestProtocol:
    """The protocol a model carries in its metadata (a pretrained model: that of its published numbers), else
    the default: the whole image at its own size."""
    return TestProtocol.from_dict(metadata["protocol"]) if metadata.get("protocol") else TestProtocol()


def mmseg_protocol(scale: Sequence[int], crop: Sequence[int] | None = None,
                   stride: Sequence[int] | None = None) -> TestProtocol:
    """mmsegmentation's test protocol: keep-ratio Resize to `scale`, whole image or slide windows."""
    return TestProtocol("mmseg", tuple(scale), "slide" if crop else "whole", tuple(crop) if crop else None,
                        tuple(stride) if stride else None)


def semseg_protocol(base_size: int, crop: Sequence[int]) -> TestProtocol:
    """The PSPNet authors' test protocol: long side to base_size, windows of `crop`, flip always."""
    return TestProtocol("semseg", int(base_size), "slide", tuple(crop), flip=True)


# The datasets of published PSPNets, told apart by their class counts.
REFERENCE_DATASETS = {150: "ade20k", 19: "cityscapes", 21: "voc"}
# The authors' protocols per dataset (config/*/..._pspnet50.yaml: base_size, test_h, test_w).
SEMSEG_PROTOCOLS = {
    "ade20k": semseg_protocol(512, (473, 473)),
    "voc": semseg_protocol(512, (473, 473)),
    "cityscapes": semseg_protocol(2048, (713, 713)),
}
# mmsegmentation's (configs/_base_/datasets/*.py test pipelines; whole-image test_cfg).
MMSEG_PROTOCOLS = {
    "ade20k": mmseg_protocol((2048, 512)),
    "voc": mmseg_protocol((2048, 512)),
    "cityscapes": mmseg_protocol((2048, 1024)),
}


def reference_protocol(style: str, num_classes: int) -> TestProtocol | None:
    """The reference's protocol for the dataset with `num_classes` classes (ADE20K, Cityscapes, VOC), or None."""
    table = SEMSEG_PROTOCOLS if style == "semseg" else MMSEG_PROTOCOLS
    return table.get(REFERENCE_DATASETS.get(num_classes))
