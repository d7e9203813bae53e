"""The PSPNet Keras model: a functional model with the training defaults Keras users expect.

`build_pspnet` and `from_preset` return a `PSPNet`, a functional `keras.Model` (its layers, weights, saving and
export are those of any functional model) that adds what keras-hub's task models give:
- `compile()` with no arguments is the reference recipe (PyTorch-style SGD, poly learning rate over the fit, the
  segmentation loss with ignore label 255 and the auxiliary head at weight 0.4, a mean-IoU metric);
- `y` is one mask per image, with or without the auxiliary head: `fit(images, masks)` and `fit(dataset)` of
  (images, masks) pairs train both heads on it;
- `evaluate(..., return_dict=True)` reports "mean_iou" of the segmentation (never the auxiliary head's).
"""

from __future__ import annotations

import sys

import keras

AUX_WEIGHT = 0.4  # the paper's ablation: the auxiliary loss at 0.4 trains best
LEARNING_RATE = 0.01  # both references' base rate, poly (power 0.9) to 0 over the run
MOMENTUM, WEIGHT_DECAY, HEAD_LR_MULT = 0.9, 1e-4, 10.0  # the authors' (hszhao/semseg tool/train.py)


@keras.saving.register_keras_serializable(package="keras_pspnet")
class PSPNet(keras.Model):
    """A PSPNet: logits [batch, height, width, classes] for RGB pixels 0-255, and with the auxiliary head
    {"logits": ..., "aux": ...} (for training; `keras_pspnet.inference_model` drops it).

    A functional model: made by `keras_pspnet.build_pspnet` or `keras_pspnet.from_preset`, not by calling this
    class with arguments of its own.
    """

    def compile(self, optimizer="auto", loss="auto", *, metrics="auto", **kwargs):
        """`keras.Model.compile` with the reference recipe for "auto".

        Args:
            optimizer: "auto": `keras_pspnet.optimizers.SGD` (PyTorch's update: momentum 0.9, coupled weight decay
                1e-4, the pyramid and heads at 10x the backbone's rate, as the PSPNet authors train), its rate poly
                (power 0.9) from 0.01 to 0 over each `fit` (`keras_pspnet.optimizers.PolyOverFit`).
            loss: "auto": `keras_pspnet.losses.SegmentationCrossEntropy` (ignore label 255, averaged over labelled
                pixels), the auxiliary head's at weight 0.4.
            metrics: "auto": mean IoU of the segmentation ("mean_iou", ignore label 255).
            **kwargs: the other arguments of `keras.Model.compile`.
        """
        from keras_pspnet.losses import SegmentationCrossEntropy
        from keras_pspnet.metrics import mean_iou_metric
        from keras_pspnet.model import head_lr_multipliers
        from keras_pspnet.optimizers import SGD, PolyOverFit

        aux = isinstance(self.output, dict)
        if isinstance(optimizer, str) and optimizer == "auto":
            optimizer = SGD(PolyOverFit(LEARNING_RATE), MOMENTUM, WEIGHT_DECAY,
                            lr_multipliers=head_lr_multipliers(self, HEAD_LR_MULT))
        if isinstance(loss, str) and loss == "auto":
            loss = SegmentationCrossEntropy()
            if aux:
                loss = {"logits": loss, "aux": SegmentationCrossEntropy()}
                kwargs.setdefault("loss_weights", {"logits": 1.0, "aux": AUX_WEIGHT})
        if isinstance(metrics, str) and metrics == "auto":
            metrics = [mean_iou_metric(self.num_classes)]
        self._metrics_on_logits = not isinstance(metrics, dict)  # not given per output: they measure the logits
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def compile_from_config(self, config):
        """Compiles a loaded model as it was compiled when saved (Keras skips models that override `compile`)."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    @property
    def num_classes(self) -> int:
        logits = self.output["logits"] if isinstance(self.output, dict) else self.output
        return int(logits.shape[-1])

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if sample_weight is not None:  # the loss averages over labelled pixels: a weight per image would only scale it
            raise ValueError("PSPNet: sample_weight and class_weight are not supported by the segmentation loss; "
                             "set the labels of pixels to leave out to 255 (ignored)")
        # One mask per image for every head: Keras would want a dict of targets matching the outputs.
        return super().compute_loss(x, _per_output(y, y_pred), y_pred, training=training)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if getattr(self, "_metrics_on_logits", False) and isinstance(y_pred, dict):
            # the metrics measure the segmentation; the auxiliary head is a training device
            y, sample_weight = (v["logits"] if isinstance(v, dict) else v for v in (y, sample_weight))
            y_pred = y_pred["logits"]
        return super().compute_metrics(x, y, y_pred, sample_weight)

    def fit(self, x=None, y=None, *args, callbacks=None, initial_epoch: int = 0, **kwargs):
        """`keras.Model.fit`; a `PolyOverFit` learning rate decays over this fit's steps (epochs x steps)."""
        from keras_pspnet.optimizers import PolyOverFit

        if hasattr(x, "element_spec"):  # a tf.data.Dataset orders itself (load_dataset's do): Keras would warn
            kwargs.setdefault("shuffle", False)

        schedule = getattr(getattr(self, "optimizer", None), "learning_rate", None)
        schedule = getattr(getattr(self, "optimizer", None), "_learning_rate", schedule)
        inner = getattr(getattr(self, "optimizer", None), "inner_optimizer", None)  # LossScaleOptimizer
        if inner is not None:
            schedule = getattr(inner, "_learning_rate", schedule)
        if isinstance(schedule, PolyOverFit):
            callbacks = [*(callbacks or []), _FitLength(schedule)]
            self.train_function = None  # the fit's length is part of the traced step: trace it anew
        return super().fit(x, y, *args, callbacks=callbacks, initial_epoch=initial_epoch, **kwargs)


def as_pspnet(model: keras.Model) -> PSPNet:
    """`model` as a `PSPNet` (the same layers and weights): models saved before the class existed, and clones and
    sub-models of one, get `compile()`'s defaults too."""
    return model if isinstance(model, PSPNet) else PSPNet(model.input, model.output, name=model.name)


def _per_output(value, y_pred):
    """`value` (a target) for each output of a model with several, unless given per output."""
    if value is None or not isinstance(y_pred, dict) or isinstance(value, dict):
        return value
    return {name: value for name in y_pred}


class _FitLength(keras.callbacks.Callback):
    """Tells a `PolyOverFit` schedule where this fit's decay starts and how many steps it has, once Keras knows them:
    over all `epochs` x steps, counted from epoch 0, so a fit resumed at `initial_epoch` (or by BackupAndRestore)
    with its optimizer's step count goes on along the same curve."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule, self.begun = schedule, False

    def on_epoch_begin(self, epoch, logs=None):
        if self.begun:
            return
        self.begun = True
        steps, epochs = self.params.get("steps"), self.params.get("epochs")
        if not steps:
            why = "an epoch has no step" if steps == 0 else "the steps of an epoch are unknown (pass steps_per_epoch)"
            print(f"PolyOverFit: {why}; training at the initial learning rate", file=sys.stderr)
        iterations = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        self.schedule.begin(iterations - epoch * (steps or 0), epochs * steps if steps and epochs else None)
