"""The segmentation loss: cross-entropy averaged over the labelled pixels of the global batch."""

from __future__ import annotations

import keras
from keras import ops

IGNORE_LABEL = 255


def _global_sum(value):
    """Sums `value` over all replicas when running inside a tf.distribute replica context."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            return context.all_reduce(tf.distribute.ReduceOp.SUM, value)
    return value


@keras.saving.register_keras_serializable(package="keras_pspnet")
class SegmentationCrossEntropy(keras.losses.Loss):
    """Sparse softmax cross-entropy over pixels whose label is not `ignore_label`, averaged over them
    (`avg_non_ignore=True`: PyTorch's `CrossEntropyLoss(ignore_index=...)`, the authors' code) or over all
    pixels, ignored ones counting as 0 (`avg_non_ignore=False`: mmsegmentation's default).

    Under tf.distribute each replica divides its sum by the number of labelled pixels of the *global*
    batch (an all-reduce), so with gradients summed across replicas (what Keras optimizers do) two
    replicas give exactly the update of one device on the same global batch. The value is returned as a
    scalar, which Keras neither re-averages nor rescales by the replica count.
    """

    def __init__(self, ignore_label: int = IGNORE_LABEL, avg_non_ignore: bool = True,
                 name: str = "segmentation_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.ignore_label = int(ignore_label)
        self.avg_non_ignore = bool(avg_non_ignore)

    def call(self, y_true, y_pred):
        labels = ops.cast(ops.reshape(y_true, ops.shape(y_pred)[:-1]), "int32")
        valid = ops.not_equal(labels, self.ignore_label)
        safe_labels = ops.where(valid, labels, 0)
        pixel_loss = ops.sparse_categorical_crossentropy(safe_labels, ops.cast(y_pred, "float32"), from_logits=True)
        weights = ops.cast(valid, "float32")
        count = _global_sum(ops.sum(weights) if self.avg_non_ignore else ops.cast(ops.size(weights), "float32"))
        return ops.sum(pixel_loss * weights) / ops.maximum(count, 1.0)

    def get_config(self):
        return {**super().get_config(), "ignore_label": self.ignore_label, "avg_non_ignore": self.avg_non_ignore}
