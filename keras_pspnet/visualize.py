"""Pictures of predictions: colour maps, overlays, legends."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

IGNORE_COLOR = (0, 0, 0)


def colorize(labels: np.ndarray, colors: Sequence[Sequence[int]], ignore_label: int = 255) -> np.ndarray:
    """RGB uint8 [H, W, 3] of a class map; ignored pixels are black."""
    palette = np.zeros((256, 3), np.uint8)
    palette[: len(colors)] = np.asarray(colors, np.uint8)
    palette[ignore_label] = IGNORE_COLOR
    return palette[np.asarray(labels, np.int64).clip(0, 255)]


def overlay(image: np.ndarray, color: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image blended with its colour map."""
    blend = np.asarray(image, np.float32) * (1 - alpha) + np.asarray(color, np.float32) * alpha
    return blend.round().astype(np.uint8)


def label_png(labels: np.ndarray, colors: Sequence[Sequence[int]]) -> Image.Image:
    """A palette PNG: the file holds class indices (as PASCAL VOC's masks) and viewers show the colours."""
    image = Image.fromarray(np.asarray(labels, np.uint8), mode="P")
    palette = colorize(np.arange(256), colors)
    image.putpalette(palette.reshape(-1).tolist())
    return image


def legend(names: Sequence[str], colors: Sequence[Sequence[int]], row_height: int = 20) -> Image.Image:
    """A swatch and a name per class."""
    width = 32 + 8 * max(len(n) for n in names) + 16
    picture = Image.new("RGB", (width, row_height * len(names) + 8), "white")
    draw = ImageDraw.Draw(picture)
    for row, (name, color) in enumerate(zip(names, colors)):
        top = 4 + row * row_height
        draw.rectangle([6, top + 2, 24, top + row_height - 4], fill=tuple(color), outline=(0, 0, 0))
        draw.text((32, top + 3), name, fill=(0, 0, 0))
    return picture
