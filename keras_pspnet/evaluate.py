"""Evaluation at the label's full resolution: confusion matrix, mIoU, per-class IoU, accuracies."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from keras_pspnet.data.info import DatasetInfo
from keras_pspnet.data.pipeline import eval_pipeline
from keras_pspnet.inference import predict_probabilities
from keras_pspnet.metrics import mean_iou_metric, scores

MULTI_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # the official PSPNet evaluation


def evaluate(model: keras.Model, source: tf.data.Dataset, info: DatasetInfo, *, mode: str = "whole", crop=None,
             scales=(1.0,), flip: bool = False, progress: bool = True) -> dict:
    """Scores of `model` on every (image, mask) pair of `source`, predicted at full resolution.

    Returns `keras_pspnet.metrics.scores` plus "confusion" (list of lists, [true, predicted]) and "images".
    """
    num_classes = info.num_classes
    if model.output.shape[-1] != num_classes:
        raise ValueError(f"{info.name} has {num_classes} classes, the model predicts {model.output.shape[-1]}.")
    metric = mean_iou_metric(num_classes, info.ignore_label, from_logits=False)
    images = 0
    for image, mask in tqdm(eval_pipeline(source, info.name), desc=f"evaluating on {info.name}", unit="image",
                            disable=not progress, leave=False):
        probabilities = predict_probabilities(model, image[0].numpy(), mode=mode, crop=crop, scales=scales,
                                              flip=flip)
        prediction = probabilities.argmax(axis=-1)
        labels = mask[0].numpy()
        unknown = np.setdiff1d(np.unique(labels), [*range(num_classes), info.ignore_label])
        if unknown.size:
            raise ValueError(f"{info.name}: mask values {unknown.tolist()} are neither a class nor {info.ignore_label}")
        metric.update_state(labels.ravel(), prediction.ravel())
        images += 1
    if not images:
        raise ValueError(f"{info.name}: the evaluation split is empty.")
    confusion = np.asarray(metric.total_cm).astype(np.int64)
    return {**scores(confusion, info.class_names), "confusion": confusion.tolist(), "images": images}
