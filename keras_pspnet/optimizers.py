"""SGD as PyTorch computes it: the update every PSPNet reference (hszhao/semseg, mmsegmentation) trains with."""

from __future__ import annotations

import keras
from keras import ops

WEIGHT_DECAY_MODES = ("coupled", "decoupled")


@keras.saving.register_keras_serializable(package="keras_pspnet")
class SGD(keras.optimizers.Optimizer):
    """`torch.optim.SGD(lr, momentum, weight_decay)` (dampening 0, no Nesterov), per variable w with gradient g:

        g <- g + weight_decay * w          (weight_decay_mode="coupled", PyTorch's: the decay goes through momentum)
        b <- momentum * b + g
        w <- w - lr * multiplier(w) * b

    `weight_decay_mode="decoupled"` is Keras' form instead: w <- w - lr * multiplier(w) * weight_decay * w, outside
    the momentum buffer; at momentum 0.9 it decays about 10x less than the coupled form for the same value.

    Written out rather than `keras.optimizers.SGD` because Keras keeps the learning rate inside its momentum
    buffer (m <- momentum * m - lr * g; w <- w + m), which departs from PyTorch as soon as the rate changes
    (every step of a poly schedule), and its weight decay is decoupled.

    Args:
        learning_rate: a float, a `LearningRateSchedule` (evaluated at `iterations`) or a no-argument callable.
        momentum: in [0, 1).
        weight_decay: L2 factor (PyTorch's `weight_decay`); 0 disables.
        weight_decay_mode: "coupled" (PyTorch) or "decoupled" (Keras).
        lr_multipliers: {variable path: factor}: the authors' code trains the pyramid, head and auxiliary head at
            10x the backbone's rate (see `keras_pspnet.model.head_lr_multipliers`). Variables not listed: 1.
    """

    def __init__(self, learning_rate=0.01, momentum: float = 0.9, weight_decay: float = 0.0,
                 weight_decay_mode: str = "coupled", lr_multipliers: dict[str, float] | None = None,
                 name: str = "sgd", **kwargs):
        if weight_decay_mode not in WEIGHT_DECAY_MODES:
            raise ValueError(f"weight_decay_mode must be one of {list(WEIGHT_DECAY_MODES)}, got {weight_decay_mode!r}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)  # no base-class (decoupled) decay
        self.momentum = float(momentum)
        self.l2 = float(weight_decay)
        self.weight_decay_mode = weight_decay_mode
        self.lr_multipliers = {str(k): float(v) for k, v in (lr_multipliers or {}).items()}

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._multipliers = [self.lr_multipliers.get(v.path, 1.0) for v in variables]
        self.momentums = self.add_optimizer_variables(variables, "momentum") if self.momentum else []

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        rate = ops.cast(learning_rate, variable.dtype) * self._multipliers[index]
        gradient = ops.cast(gradient, variable.dtype)
        if self.l2 and self.weight_decay_mode == "coupled":
            gradient = gradient + self.l2 * variable
        elif self.l2:
            self.assign_sub(variable, rate * self.l2 * variable)
        if self.momentum:
            buffer = self.momentums[index]
            self.assign(buffer, self.momentum * buffer + gradient)
            gradient = buffer
        self.assign_sub(variable, rate * gradient)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "weight_decay": self.l2,
                "weight_decay_mode": self.weight_decay_mode, "lr_multipliers": self.lr_multipliers}


@keras.saving.register_keras_serializable(package="keras_pspnet")
class PolyOverFit(keras.optimizers.schedules.LearningRateSchedule):
    """Poly decay over the steps of the current `fit` of a `keras_pspnet.PSPNet`: rate = end + (initial - end)
    * (1 - k / steps) ** power at its k-th step, as both references decay over a run (the authors' poly_learning_rate;
    mmengine's PolyLR). The model's `fit` tells it the fit's first step and length (epochs x steps per epoch), which
    `compile()` cannot know; before a fit, or when the length is unknown, the initial rate.
    """

    def __init__(self, initial_learning_rate: float = 0.01, power: float = 0.9, end_learning_rate: float = 0.0):
        self.initial_learning_rate, self.power = float(initial_learning_rate), float(power)
        self.end_learning_rate = float(end_learning_rate)
        self.start, self.steps = 0, None

    def begin(self, start: int, steps: int | None) -> None:
        self.start, self.steps = int(start), (int(steps) if steps else None)

    def __call__(self, step):
        if not self.steps:
            return ops.convert_to_tensor(self.initial_learning_rate, "float32")
        done = ops.clip((ops.cast(step, "float32") - self.start) / self.steps, 0.0, 1.0)
        scale = self.initial_learning_rate - self.end_learning_rate
        return self.end_learning_rate + scale * ops.power(1.0 - done, self.power)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "power": self.power,
                "end_learning_rate": self.end_learning_rate}
