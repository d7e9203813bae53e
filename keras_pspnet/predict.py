"""Predicting image files with any predictor (.keras, SavedModel, .tflite) and writing pictures."""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Sequence

import numpy as np
from PIL import Image

from keras_pspnet.console import one_line, progress, report
from keras_pspnet.data.image import decode_rgb
from keras_pspnet.data.info import DatasetInfo
from keras_pspnet.files import MiB, atomic_output, check_new_output, read_bytes, regular_file, remove_stale_partials
from keras_pspnet.inference import MAX_SIDE, check_memory, predict_labels
from keras_pspnet.protocol import TestProtocol, own_protocol
from keras_pspnet.visualize import colorize, label_png, legend, overlay

_PIL_LIMIT = threading.Lock()


def max_image_pixels() -> int | None:
    """The decompression-bomb limit: PIL's (`PIL.Image.MAX_IMAGE_PIXELS`, 89.5 megapixels unless changed)."""
    return Image.MAX_IMAGE_PIXELS


def image_size(path: str, max_pixels: int | None = None) -> tuple[int, int]:
    """(height, width) from an image file's header, nothing decoded; a one-line error naming the file when it is not
    a regular file, not an image, or larger than `max_pixels` (default `max_image_pixels()`; 0: no limit).

    TensorFlow's decoders allocate whatever a header declares: a 1 MB PNG declaring 20000x20000 would take 1.2 GB
    before inference starts, and PIL's own limit is not applied to them. It is here, with the size PIL reads.
    """
    regular_file(path, "image")
    limit = max_image_pixels() if max_pixels is None else max_pixels
    try:
        with _PIL_LIMIT:  # PIL checks its limit when opening: ours is checked below, with our message
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                with Image.open(path) as image:
                    width, height = image.size
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except (OSError, ValueError, SyntaxError) as error:  # PIL's UnidentifiedImageError is an OSError
        raise ValueError(f"{path}: not an image, or a broken one ({type(error).__name__}; JPEG, PNG, GIF, BMP and "
                         "WebP are read)") from None
    if limit and width * height > limit:
        raise ValueError(f"{path}: {width}x{height} is {width * height / 1e6:.1f} megapixels, more than the "
                         f"{limit / 1e6:.1f} allowed (a decompression bomb? --max-pixels raises the limit)")
    return height, width


def read_image(path: str, max_pixels: int | None = None, check=None) -> np.ndarray:
    """RGB uint8 [H, W, 3], decoded as training decodes images (`decode_rgb`: a 16-bit PNG keeps the high byte of
    each value, as TensorFlow reduces it); a one-line error naming the file when it is not an image, or a larger
    one than `max_pixels` allows (see `image_size`). `check(height, width)`, if given, runs after the header is
    read and before anything is decoded (a memory check, say)."""
    import tensorflow as tf

    height, width = image_size(path, max_pixels)
    if check is not None:
        check(height, width)
    # a file is at most its 4-byte pixels (BMP, uncompressed PNG) and some metadata; anything larger is not it
    data = read_bytes(path, 4 * height * width + 64 * MiB, "image")
    try:
        image = decode_rgb(tf.constant(data)).numpy()
    except tf.errors.OpError:
        raise ValueError(f"{path}: not an image, or a broken one (JPEG, PNG, GIF, BMP and WebP are read)") from None
    if image.shape[0] * image.shape[1] != height * width:  # a header PIL and TensorFlow read apart
        raise ValueError(f"{path}: decodes to {image.shape[1]}x{image.shape[0]}, its header says {width}x{height}")
    return image


def output_names(paths: Sequence[str], out_dir: str) -> list[str]:
    """The output prefix of each image: OUT/<stem>, or, when stems collide, OUT/<path relative to the inputs' common
    directory without its suffix> (a/0001.jpg and b/0001.jpg: OUT/a/0001 and OUT/b/0001). The same file given
    twice gets the same name: its second outputs are refused as existing (unless `force`)."""
    stems = [os.path.splitext(os.path.basename(path))[0] for path in paths]
    if len(set(stems)) == len(stems):
        return [os.path.join(out_dir, stem) for stem in stems]
    absolute = [os.path.abspath(path) for path in paths]
    common = os.path.commonpath([os.path.dirname(path) for path in absolute])
    relative = [os.path.relpath(path, common) for path in absolute]
    names = [os.path.splitext(path)[0] for path in relative]
    if len(set(names)) < len(set(relative)):  # a/0001.jpg and a/0001.png: keep the suffix (OUT/a/0001.jpg_label.png)
        names = relative
    return [os.path.join(out_dir, name) for name in names]


OUTPUT_KINDS = ("label", "color", "overlay")


def output_files(name: str) -> dict[str, str]:
    """The PNGs written for the image whose output prefix (`output_names`) is `name`, by kind."""
    return {kind: f"{name}_{kind}.png" for kind in OUTPUT_KINDS}


def existing_outputs(paths: Sequence[str], out_dir: str) -> list[str]:
    """For each image of `paths` with an output in `out_dir` already, one such file: what a rerun would replace."""
    found = [[path for path in output_files(name).values() if os.path.lexists(path)]
             for name in output_names(paths, out_dir)]
    return [files[0] for files in found if files]


def predict_files(predictor, paths: Sequence[str], out_dir: str, info: DatasetInfo,
                  protocol: TestProtocol | None = None, *, force: bool = False, max_side: int = MAX_SIDE,
                  window_batch: int | None = None, max_memory: int | str | None = None,
                  max_pixels: int | None = None) -> list[str]:
    """Writes <stem>_label.png (indices), <stem>_color.png and <stem>_overlay.png per image, and legend.png.

    When two images share a stem (a/0001.jpg, b/0001.jpg), the outputs mirror the images' paths relative to
    their common directory instead (OUT/a/0001_label.png, OUT/b/0001_label.png); see `output_names`.

    A bad image is reported by name and skipped; the others are still processed. Existing outputs are
    not replaced unless `force`; each is written beside its name and renamed, never through a symbolic link nor
    outside `out_dir`. `max_side`, `window_batch`, `max_memory`: see `keras_pspnet.inference.check_memory`
    (checked from each file's header, before it is decoded); `max_pixels`: see `image_size`.
    Returns the paths that failed.
    """
    os.makedirs(out_dir, exist_ok=True)
    remove_stale_partials(out_dir)  # pictures of a killed run, half written
    protocol = protocol or own_protocol(predictor.metadata)  # once, not per image
    failed = []
    names = output_names(paths, out_dir)
    for path, name in progress(list(zip(paths, names)), description="predicting", unit="image",
                               enabled=len(paths) > 1):
        outputs = output_files(name)
        try:
            for output in outputs.values():
                _check_output(output, out_dir, force)
            image = read_image(path, max_pixels, functools.partial(
                check_memory, predictor, protocol=protocol, max_side=max_side, window_batch=window_batch,
                max_memory=max_memory, what=path))  # its errors name the file
        except (ValueError, OSError) as error:
            report(str(error))
            failed.append(path)
            continue
        try:
            labels = predict_labels(predictor, image, protocol, max_side=max_side, window_batch=window_batch)
        except Exception as error:  # e.g. out of memory on one huge photo: the others still run
            report(f"{path}: {one_line(error)}")
            failed.append(path)
            continue
        color = colorize(labels, info.colors)
        pictures = {"label": label_png(labels, info.colors), "color": Image.fromarray(color),
                    "overlay": Image.fromarray(overlay(image, color))}
        try:
            os.makedirs(os.path.dirname(outputs["label"]), exist_ok=True)  # (checked to stay inside out_dir)
            for kind, picture in pictures.items():
                _check_output(outputs[kind], out_dir, force)  # again: links may appear meanwhile
                with atomic_output(outputs[kind]) as partial:
                    picture.save(partial, format="PNG")
        except (ValueError, OSError) as error:
            report(str(error))
            failed.append(path)
    legend_path = os.path.join(out_dir, "legend.png")
    if force or not os.path.lexists(legend_path):
        _check_output(legend_path, out_dir, True)
        with atomic_output(legend_path) as partial:
            legend(info.class_names, info.colors).save(partial, format="PNG")
    return failed


def _check_output(path: str, out_dir: str, force: bool) -> None:
    """An output goes under `out_dir` itself (no symbolic link on the way leads elsewhere: its nearest existing
    folder is checked), is not a link, and replaces an existing file only with `force`."""
    check_new_output(path, force)
    folder = os.path.dirname(path)
    while not os.path.isdir(folder) and folder != os.path.dirname(folder):  # (a dangling link is not a folder)
        if os.path.islink(folder):
            raise ValueError(f"{path}: its folder {folder} is a symbolic link; not written")
        folder = os.path.dirname(folder)
    real, root = os.path.realpath(folder), os.path.realpath(out_dir)
    if real != root and not real.startswith(root + os.sep):
        raise ValueError(f"{path}: its folder leads outside {out_dir} through a symbolic link; not written")
