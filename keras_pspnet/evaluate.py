"""Evaluation at the label's full resolution: confusion matrix, mIoU, per-class IoU, accuracies."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_pspnet.console import progress as shown
from keras_pspnet.data.info import DatasetInfo
from keras_pspnet.data.pipeline import eval_pipeline
from keras_pspnet.inference import MAX_SIDE, MemoryLimitError, predict_labels
from keras_pspnet.metrics import mean_iou_metric, scores
from keras_pspnet.predictors import as_predictor
from keras_pspnet.protocol import TestProtocol, own_protocol


def evaluate(model, source: tf.data.Dataset, info: DatasetInfo, protocol: TestProtocol | None = None, *,
             progress: bool = True, max_side: int = MAX_SIDE, window_batch: int | None = None,
             max_memory: int | str | None = None, absent_classes: str | None = None) -> dict:
    """Scores of `model` on every (image, mask) pair of `source`, predicted at the label's resolution.

    `model`: a Keras model (an auxiliary head is dropped) or a predictor (`keras_pspnet.predictors`: a
    SavedModel or .tflite). `protocol`: how each image is run (default: the model's own, else the whole
    image at its size; see `keras_pspnet.inference.predict_scores`, which also explains `max_side`,
    `window_batch` and `max_memory`, checked for each image). `absent_classes`: how the means count classes
    absent from the split (see `keras_pspnet.metrics.scores`); default the protocol's reference's way
    (`TestProtocol.absent_classes`).
    Returns `keras_pspnet.metrics.scores` plus "confusion" (list of lists, [true, predicted]) and "images".
    """
    predictor = as_predictor(model)
    protocol = protocol or own_protocol(predictor.metadata)  # once, not per image
    num_classes = info.num_classes
    if predictor.num_classes != num_classes:
        raise ValueError(f"{info.name} has {num_classes} classes, the model predicts {predictor.num_classes}.")
    metric = mean_iou_metric(num_classes, info.ignore_label, from_logits=False)
    images = 0
    for image, mask in shown(eval_pipeline(source, info.name), description=f"evaluating on {info.name}",
                             unit="image", enabled=progress, leave=False):
        try:
            prediction = predict_labels(predictor, image[0].numpy(), protocol, max_side=max_side,
                                        window_batch=window_batch, max_memory=max_memory)
        except MemoryLimitError as error:
            raise MemoryLimitError(f"{info.name}, image {images + 1}: {str(error).removeprefix('the image: ')}") \
                from None
        labels = mask[0].numpy()
        unknown = np.setdiff1d(np.unique(labels), [*range(num_classes), info.ignore_label])
        if unknown.size:
            raise ValueError(f"{info.name}: mask values {unknown.tolist()} are neither a class nor {info.ignore_label}")
        metric.update_state(labels.ravel(), prediction.ravel())
        images += 1
    if not images:
        raise ValueError(f"{info.name}: the evaluation split is empty.")
    confusion = np.asarray(metric.total_cm).astype(np.int64)
    return {**scores(confusion, info.class_names, absent_classes or protocol.absent_classes),
            "confusion": confusion.tolist(), "images": images}
