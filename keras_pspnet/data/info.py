"""What a training pipeline needs to know about a dataset."""

from __future__ import annotations

import dataclasses

from keras_pspnet.losses import IGNORE_LABEL


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Paper defaults: scale 0.5-2.0, rotation -10..10 degrees, Gaussian blur, mirror, crop/pad."""

    scale: tuple[float, float] = (0.5, 2.0)
    rotate: float = 10.0  # degrees; 0 disables
    blur: bool = True  # 5x5 Gaussian (sigma 1.1, as OpenCV for that kernel) with probability 0.5
    flip: bool = True


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Class names and colours of a dataset, and the paper's augmentation defaults for it."""

    name: str
    class_names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    augment: AugmentConfig = AugmentConfig()  # the paper rotates and blurs on ADE20K and VOC, not Cityscapes
    ignore_label: int = IGNORE_LABEL

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def default_colors(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """The PASCAL VOC colour map (bit-interleaved), which gives any number of distinct colours."""
    colors = []
    for index in range(num_classes):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colors.append((r, g, b))
    return tuple(colors)
