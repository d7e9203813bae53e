"""Inference: BN folding, and scoring an image under a test protocol (whole, windows, scales, flips)."""

from __future__ import annotations

import itertools
import os

import keras
import numpy as np

from keras_pspnet.model import inference_model
from keras_pspnet.protocol import TestProtocol, own_protocol

_CONVS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)


def _conv_bn_pairs(model: keras.Model) -> dict[str, str]:
    """{BatchNormalization name: Conv name} for every BN whose input is a conv feeding only that BN."""
    pairs = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization) and len(layer._inbound_nodes) == 1:
            producer = layer._inbound_nodes[0].input_tensors[0]._keras_history.operation
            if isinstance(producer, _CONVS) and len(producer._outbound_nodes) == 1 and layer.axis in (-1, 3):
                pairs[layer.name] = producer.name
    return pairs


def fold_batch_norms(model: keras.Model) -> keras.Model:
    """A copy of `model` with each BatchNormalization folded into the convolution before it.

    Inference only: the copy computes what `model(x, training=False)` computes (up to float rounding)
    with one pass less over every feature map, which is what TensorFlow's own graph optimiser does for
    frozen graphs but not for Keras 3 models, whose BN is not a FusedBatchNorm op. An auxiliary head is
    dropped (`inference_model`).
    """
    model = inference_model(model)
    pairs = _conv_bn_pairs(model)
    folded_convs = set(pairs.values())

    def clone(layer):
        config = layer.get_config()
        if layer.name in folded_convs:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    def call(layer, *args, **kwargs):  # a folded BN is skipped: its input goes straight on
        return args[0] if layer.name in pairs else layer(*args, **kwargs)

    folded = keras.models.clone_model(model, clone_function=clone, call_function=call)
    for layer in model.layers:
        if layer.name in folded_convs or layer.name in pairs or not layer.weights:
            continue
        folded.get_layer(layer.name).set_weights(layer.get_weights())
    for bn_name, conv_name in pairs.items():
        bn, conv = model.get_layer(bn_name), model.get_layer(conv_name)
        gamma, beta, mean, variance = (np.asarray(w, dtype="float64") for w in bn.get_weights())
        scale = gamma / np.sqrt(variance + bn.epsilon)
        kernel = np.asarray(conv.kernel, dtype="float64")
        bias = np.asarray(conv.bias, dtype="float64") if conv.use_bias else np.zeros_like(mean)
        if isinstance(conv, keras.layers.DepthwiseConv2D):  # kernel (kh, kw, channels, multiplier)
            kernel = kernel * scale.reshape(kernel.shape[2], kernel.shape[3])
        else:  # kernel (kh, kw, in, out)
            kernel = kernel * scale
        folded_bias = (bias - mean) * scale + beta
        folded.get_layer(conv_name).set_weights([kernel.astype("float32"), folded_bias.astype("float32")])
    return folded


MAX_SIDE = 1024  # whole-image inference at a photo's own size runs in windows of this side beyond it
WINDOW_PIXELS = 2**20  # windows run in batches of about a megapixel (4 of 473x473, 2 of 713x713, 1 of 1024x1024)
STRIP_VALUES = 2**23  # the result is assembled in row strips of about this many floats (32 MB)


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in place (the input is overwritten and returned)."""
    logits -= logits.max(axis=-1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=-1, keepdims=True)
    return logits


def _source_positions(out_size: int, in_size: int, start: int, stop: int, align_corners: bool):
    """For output positions start..stop-1 of a bilinear resize: the two input indices and the weight of the second."""
    position = np.arange(start, stop, dtype=np.float64)
    if align_corners:
        position *= (in_size - 1) / max(out_size - 1, 1)
    else:  # half-pixel centres, clamped at the first pixel as PyTorch and TensorFlow do
        position = np.maximum((position + 0.5) * (in_size / out_size) - 0.5, 0)
    low = np.minimum(np.floor(position), in_size - 1).astype(np.int64)
    return low, np.minimum(low + 1, in_size - 1), (position - low).astype(np.float32)


def resize_array(array: np.ndarray, size: tuple[int, int], align_corners: bool = False,
                 rows: tuple[int, int] | None = None) -> np.ndarray:
    """Bilinear resize of an [H, W, C] float array to `size` (PyTorch / OpenCV / TensorFlow semantics), or only
    output rows `rows` = (start, stop) of it: a large result is made strip by strip, never whole.

    NumPy rather than `tf.image.resize`: a strip of the output needs only the input rows under it, and the
    interpolation order (columns, then rows) is TensorFlow's, so strips equal the whole to the last bit.
    """
    (height, width), (start, stop) = size, rows or (0, size[0])
    if array.shape[:2] == (height, width):
        return array[start:stop]
    top, bottom, row_weight = _source_positions(height, array.shape[0], start, stop, align_corners)
    left, right, col_weight = _source_positions(width, array.shape[1], 0, width, align_corners)
    col_weight = col_weight[None, :, None]

    def columns(source_rows):
        picked = array[source_rows]
        first = picked[:, left]
        return first + (picked[:, right] - first) * col_weight

    upper = columns(top)
    return upper + (columns(bottom) - upper) * row_weight[:, None, None]


def _windows(height: int, width: int, crop, stride):
    """(top, left) of sliding windows covering the image; the last row and column end at its edge."""
    rows = -(-max(height - crop[0], 0) // stride[0]) + 1
    cols = -(-max(width - crop[1], 0) // stride[1]) + 1
    for row in range(rows):
        for col in range(cols):
            yield max(min(row * stride[0], height - crop[0]), 0), max(min(col * stride[1], width - crop[1]), 0)


def _window_plan(protocol: TestProtocol, height: int, width: int, max_side: int):
    """(crop, stride) of the windows an image of this size is run in: the protocol's; for whole-image inference at
    the image's own size (no resize) beyond `max_side`, windows of that side; else one window. A protocol that
    resizes (the published ones) is run as it is defined."""
    if protocol.mode == "slide":
        return protocol.crop, protocol.window_stride
    if protocol.resize is None and max(height, width) > max_side:
        windows = TestProtocol(mode="slide", crop=(min(height, max_side), min(width, max_side)))
        return windows.crop, windows.window_stride
    return (height, width), (height, width)


def _batch_windows(height: int, width: int, crop, stride, flip: bool, window_batch: int | None):
    """(crop clipped to the image, the windows' corners, windows per model call)."""
    crop = (min(crop[0], height), min(crop[1], width))
    corners = list(_windows(height, width, crop, stride))
    columns = sum(1 for y, _ in corners if y == 0)
    per_batch = window_batch or max(1, min(WINDOW_PIXELS // (crop[0] * crop[1] * (2 if flip else 1)), columns))
    return crop, corners, per_batch


def _window_bands(predictor, image: np.ndarray, crop, stride, *, softmax: bool, flip: bool,
                  window_batch: int | None):
    """The model's output averaged over windows of `image`, as (first row, rows [n, W, classes]) top to bottom;
    each band is a view that is valid until the next one is asked for.

    Windows run `window_batch` at a time (default: about a megapixel, at most a row of windows), row by row.
    Sums are accumulated in place in one buffer of a window's height plus a stride, allocated once; rows are
    handed on as soon as no later window covers them and the rest moves up, so an image of any height never
    holds a [H, W, classes] array.
    softmax: average window probabilities (the authors' net_process), else logits (mmseg's slide_inference).
    flip: average each window's probabilities with its mirrored window's (the authors' net_process).
    """
    height, width = image.shape[:2]
    crop, corners, per_batch = _batch_windows(height, width, crop, stride, flip, window_batch)
    batches = [corners[first : first + per_batch] for first in range(0, len(corners), per_batch)]
    rows = max(batch[-1][0] - batch[0][0] for batch in batches) + crop[0]  # a batch starts at the band's top
    total = np.zeros((rows, width, predictor.num_classes), np.float32)
    count = np.zeros((rows, width, 1), np.float32)
    base = 0  # the buffer holds rows base.. of the image
    for index, batch in enumerate(batches):
        windows = np.stack([image[y : y + crop[0], x : x + crop[1]] for y, x in batch])
        if flip:
            windows = np.concatenate([windows, windows[:, :, ::-1]])
        outputs = np.asarray(predictor.predict_on_batch(windows), np.float32)
        if not outputs.flags.writeable:  # softmax and the flip average work in place
            outputs = outputs.copy()
        if softmax:
            outputs = _softmax(outputs)
        if flip:
            outputs = (outputs[: len(batch)] + outputs[len(batch) :, :, ::-1]) / 2
        for (y, x), output in zip(batch, outputs):
            total[y - base : y - base + crop[0], x : x + crop[1]] += output
            count[y - base : y - base + crop[0], x : x + crop[1]] += 1
        del windows, outputs
        done = (batches[index + 1][0][0] if index + 1 < len(batches) else height) - base
        if done > 0:  # windows come in rows: no later window reaches above the next one's top
            band = total[:done]
            band /= count[:done]
            yield base, band
            for buffer in (total, count):  # move the rest up in chunks of `done` rows (they never overlap)
                for first in range(done, rows, done):
                    last = min(first + done, rows)
                    buffer[first - done : last - done] = buffer[first:last]
                buffer[rows - done :] = 0
            base += done


def _covering(bands, height: int):
    """The (first row, rows) bands as they come, checked to cover all `height` rows once they are done."""
    covered = 0
    for start, band in bands:
        yield start, band
        covered += len(band)
    if covered != height:
        raise ValueError(f"inference produced {covered} of {height} rows")


def _gather(bands, shape: tuple[int, ...]) -> np.ndarray:
    """The whole array of (first row, rows) bands, which must cover it."""
    result = np.empty(shape, np.float32)
    for start, band in _covering(bands, shape[0]):
        result[start : start + len(band)] = band
    return result


def _semseg_bands(predictor, image: np.ndarray, protocol: TestProtocol, max_side: int, window_batch: int | None):
    """tool/test.py's scale_process: mean padding to the window, per window softmax (and its mirror), averaged;
    as bands of rows (see `_window_bands`) of the unpadded image."""
    crop, stride = _window_plan(protocol, *image.shape[:2], max_side)
    height, width = image.shape[:2]
    pad_h, pad_w = max(crop[0] - height, 0), max(crop[1] - width, 0)
    top, left = pad_h // 2, pad_w // 2
    if pad_h or pad_w:
        padded = np.empty((height + pad_h, width + pad_w, 3), np.float32)
        padded[...] = predictor.mean  # padding with the mean colour, as the official code
        padded[top : top + height, left : left + width] = image
        image = padded
    for start, band in _window_bands(predictor, image, crop, stride, softmax=True, flip=protocol.flip,
                                     window_batch=window_batch):
        first, last = max(start, top), min(start + len(band), top + height)
        if first < last:
            yield first - top, band[first - start : last - start, left : left + width]


def _scale_terms(predictor, image: np.ndarray, protocol: TestProtocol, max_side: int, window_batch: int | None):
    """Per scale (and, for mmseg, per mirror): (scaled size, mirrored, bands of the map at that size) whose maps
    are resized to the image and averaged (semseg: probabilities; mmseg: logits, softmax after the resize)."""
    height, width = image.shape[:2]
    for scale in protocol.scales:
        scaled = resize_array(image, protocol.scaled_size(height, width, scale))
        if protocol.style == "semseg":
            yield scaled.shape[:2], False, _semseg_bands(predictor, scaled, protocol, max_side, window_batch)
            continue
        scaled = scaled.round().clip(0, 255)  # mmseg resizes the uint8 image: the model sees whole pixel values
        crop, stride = _window_plan(protocol, *scaled.shape[:2], max_side)
        for mirrored in (False, True) if protocol.flip else (False,):  # EncoderDecoder.aug_test: the whole image
            yield scaled.shape[:2], mirrored, _window_bands(
                predictor, scaled[:, ::-1] if mirrored else scaled, crop, stride, softmax=False, flip=False,
                window_batch=window_batch)


def _probability_strips(model, image: np.ndarray, protocol: TestProtocol | None, max_side: int,
                        window_batch: int | None, max_memory: int | str | None = None):
    """(first row, probabilities of a strip of rows [rows, W, classes]) covering the image top to bottom.

    At the image's size probabilities exist a strip at a time: with one term at the image's own size (a single
    scale, no resize) they are the bands of the windows; otherwise each scaled map is held whole (the published
    protocols resize a photo to about a megapixel first) and resized back strip by strip. Either way a
    12-megapixel photo never holds a [H, W, classes] array.
    """
    from keras_pspnet.predictors import as_predictor

    predictor = as_predictor(model)
    protocol = protocol or own_protocol(predictor.metadata)
    check_memory(predictor, *np.shape(image)[:2], protocol, max_side=max_side, window_batch=window_batch,
                 max_memory=max_memory)
    image = np.asarray(image, np.float32)
    size, classes = image.shape[:2], predictor.num_classes
    terms = _scale_terms(predictor, image, protocol, max_side, window_batch)  # lazily: one scaled image at a time
    to_probabilities = _softmax if protocol.style == "mmseg" else (lambda values: values)
    first = next(terms)
    if first[0] == size and len(protocol.scales) == 1 and not (protocol.style == "mmseg" and protocol.flip):
        for start, band in first[2]:  # the only term, at the image's size: its bands are the strips
            yield start, to_probabilities(band)
        return
    terms = itertools.chain([first], terms)
    maps = []
    for scaled_size, mirrored, bands in terms:
        scale_map = _gather(bands, (*scaled_size, classes))
        maps.append(scale_map[:, ::-1] if mirrored else scale_map)
    align_corners = protocol.style == "mmseg" and predictor.align_corners  # semseg resizes back as cv2 does
    rows = max(1, STRIP_VALUES // (size[1] * classes))
    for start in range(0, size[0], rows):
        stop = min(start + rows, size[0])
        total = np.zeros((stop - start, size[1], classes), np.float32)
        for scale_map in maps:  # (a map at the image's size is softmaxed in place: each row is read once)
            total += to_probabilities(resize_array(scale_map, size, align_corners, (start, stop)))
        total /= len(maps)
        yield start, total


GiB = 2**30
# A model call's activations per window pixel besides its logits: 1152 bytes + 2 per class, above the measured
# peaks of PSPNet-R50 and MobileNetV2 on TF 2.21 (473-1024 px windows: ~600 bytes with 19 classes, ~830 with 150).
MODEL_BYTES_PER_PIXEL = 1152


class MemoryLimitError(ValueError):
    """An image whose inference would need more memory than allowed (`max_memory`)."""


def available_memory() -> int | None:
    """Bytes this machine can still allocate: Linux' MemAvailable, or what its container's memory limit leaves
    (cgroup v2 or v1) when that is less; physical memory elsewhere; None if unknown."""
    figures = []
    try:
        with open("/proc/meminfo") as f:
            figures += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    for limit, usage in (("memory.max", "memory.current"), ("memory/memory.limit_in_bytes",
                                                                 "memory/memory.usage_in_bytes")):
        limit, usage = (os.path.join("/sys/fs/cgroup", name) for name in (limit, usage))
        try:
            with open(limit) as f, open(usage) as g:
                figures.append(int(f.read()) - int(g.read()))  # "max": no limit, a ValueError
        except (OSError, ValueError):
            continue
    if not figures:
        try:
            figures.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (ValueError, OSError, AttributeError):
            return None
    return max(0, min(figures))


def memory_needed(predictor, height: int, width: int, protocol: TestProtocol, *, max_side: int = MAX_SIDE,
                  window_batch: int | None = None) -> int:
    """About the most bytes that scoring an image of `height` x `width` under `protocol` holds at once, following
    what `predict_labels` allocates: the image, its float copy and the labels; per scale, the resized image (with
    semseg's padding or mmseg's rounding), a model call's windows, logits and activations
    (MODEL_BYTES_PER_PIXEL + 2 per class, per window pixel) and the band of summed windows; the maps held whole
    when scales or mirrors are combined, and the strips they make. PSPNet-R50's measured peaks (2-3 megapixel
    photos, each protocol) were between half of it and all of it."""
    classes = predictor.num_classes
    image = height * width * (3 + 12 + 4)  # decoded uint8, float32 copy, int32 labels
    mirrors = 2 if protocol.style == "mmseg" and protocol.flip else 1
    held, work = 0, 0
    for scale in protocol.scales:
        scaled = protocol.scaled_size(height, width, scale)
        crop, stride = _window_plan(protocol, *scaled, max_side)
        copies = (0 if scaled == (height, width) else 1) + (2 if protocol.style == "mmseg" else 0)  # resize, round
        if protocol.style == "semseg" and (scaled[0] < crop[0] or scaled[1] < crop[1]):
            scaled, copies = (max(scaled[0], crop[0]), max(scaled[1], crop[1])), copies + 1  # mean padding
        flip = 2 if protocol.flip and protocol.style == "semseg" else 1
        crop, corners, per_batch = _batch_windows(*scaled, crop, stride, flip == 2, window_batch)
        batches = [corners[first : first + per_batch] for first in range(0, len(corners), per_batch)]
        rows = max(batch[-1][0] - batch[0][0] for batch in batches) + crop[0]
        call = per_batch * flip * crop[0] * crop[1]  # window pixels of one model call
        per_window_pixel = 12 + 4 * classes * (2 if flip == 2 else 1) + MODEL_BYTES_PER_PIXEL + 2 * classes
        work = max(work, scaled[0] * scaled[1] * 12 * copies + call * per_window_pixel
                   + rows * scaled[1] * (classes + 1) * 4)
        if len(protocol.scales) * mirrors > 1 or scaled != (height, width):
            held += scaled[0] * scaled[1] * classes * 4 * mirrors
    if held:
        held += 3 * STRIP_VALUES * 4  # a strip's total and the resized map added to it
    return image + held + work


def check_memory(predictor, height: int, width: int, protocol: TestProtocol, *, max_side: int = MAX_SIDE,
                 window_batch: int | None = None, max_memory: int | str | None = None,
                 what: str = "the image") -> None:
    """Raises MemoryLimitError, in one line naming `what`, when `memory_needed` is above `max_memory`: bytes, or
    "available" (what this machine or its container has available now: `pspnet`'s default), or None (no check)."""
    if max_memory is None:
        return
    limit = available_memory() if max_memory == "available" else max_memory
    if not limit:
        return
    needed = memory_needed(predictor, height, width, protocol, max_side=max_side, window_batch=window_batch)
    if needed > limit:
        allowed = "available on this machine (--max-memory overrides)" if max_memory == "available" else \
            "allowed (--max-memory)"
        raise MemoryLimitError(f"{what}: {width}x{height} under {protocol.describe()} needs about "
                               f"{needed / GiB:.1f} GiB, more than the {limit / GiB:.1f} GiB {allowed}")


def predict_scores(model, image: np.ndarray, protocol: TestProtocol | None = None, *, max_side: int = MAX_SIDE,
                   window_batch: int | None = None, max_memory: int | str | None = None) -> np.ndarray:
    """Class probabilities [H, W, classes] of one RGB image [H, W, 3] (pixels 0-255), at its resolution.

    `model`: a Keras model (an auxiliary head is dropped) or a predictor of `keras_pspnet.predictors`.
    `protocol`: how to run it (`keras_pspnet.protocol.TestProtocol`); default: the model's own (a pretrained
    model's: that of its published numbers), else the whole image at its size. Scales, flips and windows are
    averaged as the protocol's reference does; the argmax is the prediction. For many images with a model
    that has an auxiliary head, pass `inference_model(model)` (made once) rather than the model.
    `max_side`: whole-image inference at the image's own size (a protocol without resize) on a larger image runs
    in windows of this side instead, which bounds the model's memory; protocols that resize run as defined.
    `window_batch`: windows per model call (default: about a megapixel's worth, at most a row of windows).
    Multi-scale or mmseg-flip inference without a resize holds each scaled map whole: resize large photos.
    For labels only, `predict_labels` needs far less memory on large images.
    `max_memory`: bytes the inference may take, or "available" (`check_memory`: checked before anything is
    allocated; default None: no check); beyond it, MemoryLimitError.
    """
    from keras_pspnet.predictors import as_predictor

    predictor = as_predictor(model)
    return _gather(_probability_strips(predictor, image, protocol, max_side, window_batch, max_memory),
                   (*np.shape(image)[:2], predictor.num_classes))


def predict_labels(model, image: np.ndarray, protocol: TestProtocol | None = None, *, max_side: int = MAX_SIDE,
                   window_batch: int | None = None, max_memory: int | str | None = None) -> np.ndarray:
    """The predicted class of each pixel, int32 [H, W]: the argmax of `predict_scores` (same arguments), made
    strip by strip so that the probabilities at the image's size are never held whole."""
    strips = _probability_strips(model, image, protocol, max_side, window_batch, max_memory)
    labels = np.empty(np.shape(image)[:2], np.int32)
    for start, strip in _covering(strips, len(labels)):
        labels[start : start + len(strip)] = strip.argmax(axis=-1)
    return labels
