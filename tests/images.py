"""Image files of every kind users feed the tools, and the upright RGB pixels a photo viewer shows for them."""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image, ImageOps

# JPEGs (one with a little-endian EXIF orientation 6 behind a JFIF header, one big-endian 8), 8-bit PNGs,
# 16-bit PNGs, and the other formats the decoder reads: GIF, BMP and (lossless) WebP.
KINDS = ("jpeg", "jpeg_exif6", "jpeg_exif8", "rgb", "gray", "rgba", "palette", "gray16", "rgb16", "gif", "bmp",
         "webp")


def exif_block(orientation: int, little_endian: bool) -> bytes:
    """An APP1 EXIF payload whose first IFD holds a make (ASCII) and then the orientation (SHORT)."""
    order = "<" if little_endian else ">"
    entries = [struct.pack(order + "HHI4s", 0x010F, 2, 4, b"Cam\0"),
               struct.pack(order + "HHIHH", 0x0112, 3, 1, orientation, 0)]
    ifd = struct.pack(order + "H", len(entries)) + b"".join(entries) + struct.pack(order + "I", 0)
    return b"Exif\0\0" + (b"II" if little_endian else b"MM") + struct.pack(order + "HI", 42, 8) + ifd


def sample_bytes(kind: str, rgb: np.ndarray) -> bytes:
    """The file of `kind` made from RGB uint8 pixels (16-bit kinds spread them over 0-65535 with noise)."""
    rng = np.random.default_rng(len(kind))
    buffer = io.BytesIO()
    if kind.startswith("jpeg"):
        exif = {"jpeg": b"", "jpeg_exif6": exif_block(6, True), "jpeg_exif8": exif_block(8, False)}[kind]
        Image.fromarray(rgb).save(buffer, format="JPEG", quality=92, exif=exif, **({"dpi": (72, 72)} if exif else {}))
        return buffer.getvalue()
    if kind.endswith("16"):
        wide = rgb.astype(np.uint16) * 257 + rng.integers(0, 257, rgb.shape).astype(np.uint16)
        if kind == "gray16":
            Image.fromarray(wide[..., 0]).save(buffer, format="PNG")  # mode I;16
            return buffer.getvalue()
        import tensorflow as tf  # PIL writes no 48-bit PNG

        return tf.io.encode_png(wide).numpy()
    image = Image.fromarray(rgb)
    if kind in ("gif", "bmp", "webp"):
        image.save(buffer, format=kind.upper(), **({"lossless": True} if kind == "webp" else {}))
        return buffer.getvalue()
    image = {"rgb": image, "gray": image.convert("L"), "rgba": image.convert("RGBA"),
             "palette": image.convert("P")}[kind]
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def upright_pixels(data: bytes) -> np.ndarray:
    """RGB uint8 [H, W, 3] as a photo viewer shows the file: PIL decodes it and applies its EXIF orientation;
    16-bit values keep their high byte."""
    image = Image.open(io.BytesIO(data))
    if image.mode.startswith("I;16"):
        return np.repeat((np.asarray(image) >> 8).astype(np.uint8)[..., None], 3, axis=-1)
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[24] == 16:  # IHDR's bit depth: 48-bit RGB, which PIL cuts to 8
        import tensorflow as tf

        return (tf.io.decode_png(data, channels=3, dtype=tf.uint16).numpy() >> 8).astype(np.uint8)
    return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))

