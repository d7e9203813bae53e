"""Segmentation metrics from a confusion matrix: mIoU, per-class IoU, pixel and mean accuracy."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from keras_pspnet.losses import IGNORE_LABEL


def mean_iou_metric(num_classes: int, ignore_label: int = IGNORE_LABEL, *, from_logits: bool = True,
                    name: str = "mean_iou") -> keras.metrics.MeanIoU:
    """Keras' MeanIoU ignoring `ignore_label`, on logits (training) or on class maps (evaluation).

    Its `total_cm` variable is the [true, predicted] confusion matrix that `scores` reads.
    """
    return keras.metrics.MeanIoU(num_classes, name=name, ignore_class=ignore_label, sparse_y_pred=not from_logits)


ABSENT_CLASSES = ("skip", "zero")


def scores(confusion: np.ndarray, class_names: Sequence[str] | None = None, absent_classes: str = "skip") -> dict:
    """mIoU, per-class IoU, pixel accuracy and mean accuracy from a [true, predicted] confusion matrix.

    absent_classes: how the means count a class that is absent (no labelled pixels, and for IoU none predicted
    either), as the two references do:
        "skip": left out of the means (mmsegmentation's nanmean; Keras' MeanIoU does the same for IoU).
        "zero": IoU and accuracy 0, a plain mean over all classes (the PSPNet authors' hszhao/semseg
            tool/test.py: intersection / (union + 1e-10)); their published numbers count so.
    On a full benchmark split every class occurs and both agree. Per-class values of an absent class are None
    either way; "absent_classes" in the result says which mean was taken.
    """
    if absent_classes not in ABSENT_CLASSES:
        raise ValueError(f"absent_classes must be one of {list(ABSENT_CLASSES)}, got {absent_classes!r}")
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positives = np.diag(confusion)
    labelled = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    union = labelled + predicted - true_positives
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, true_positives / union, np.nan)
        accuracy = np.where(labelled > 0, true_positives / labelled, np.nan)
    names = list(class_names) if class_names else [str(i) for i in range(len(iou))]
    as_float = lambda v: None if np.isnan(v) else float(v)  # noqa: E731
    mean = np.nanmean if absent_classes == "skip" else lambda values: np.mean(np.nan_to_num(values, nan=0.0))
    return {
        "mIoU": as_float(mean(iou)) if np.any(union > 0) else None,
        "pixel_accuracy": as_float(true_positives.sum() / confusion.sum()) if confusion.sum() else None,
        "mean_accuracy": as_float(mean(accuracy)) if np.any(labelled > 0) else None,
        "absent_classes": absent_classes,
        "per_class_iou": {name: as_float(v) for name, v in zip(names, iou)},
        "per_class_accuracy": {name: as_float(v) for name, v in zip(names, accuracy)},
    }


def format_table(results: dict) -> str:
    """A plain-text table of per-class IoU / accuracy and the summary figures (percent)."""
    pct = lambda v: "   -" if v is None else f"{100 * v:5.1f}"  # noqa: E731
    names = list(results["per_class_iou"])
    width = max(12, *(len(n) for n in names))
    lines = [f"{'class':{width}s}   IoU    Acc"]
    for name in names:
        iou, accuracy = results["per_class_iou"][name], results["per_class_accuracy"][name]
        lines.append(f"{name:{width}s} {pct(iou)}  {pct(accuracy)}")
    lines.append(f"{'mIoU':{width}s} {pct(results['mIoU'])}")
    lines.append(f"{'pixel acc':{width}s} {pct(results['pixel_accuracy'])}")
    lines.append(f"{'mean acc':{width}s} {pct(results['mean_accuracy'])}")
    absent = [name for name, iou in results["per_class_iou"].items() if iou is None]
    if absent:
        counted = "as 0, as the PSPNet authors' evaluation" if results.get("absent_classes") == "zero" else \
            "not at all, as mmsegmentation"
        lines.append(f"({len(absent)} classes absent from labels and predictions (-): the means count them {counted})")
    return "\n".join(lines)
