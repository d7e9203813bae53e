"""Our SGD against torch.optim.SGD: the same weights and gradients give the same weights, step for step."""

import keras
import numpy as np
import pytest
import torch

from keras_pspnet import build_pspnet
from keras_pspnet.model import head_lr_multipliers
from keras_pspnet.optimizers import SGD

STEPS, BASE_LR, POWER = 10, 0.01, 0.9


def tiny_pspnet():
    return build_pspnet(3, "resnet10", stages=3, base_width=4, head_channels=8, aux_channels=4, aux_head=True,
                        input_shape=(32, 32, 3))


def torch_reference(weights, gradients, head, weight_decay, head_lr_mult):
    """hszhao/semseg tool/train.py: two parameter groups (backbone, new layers at head_lr_mult x), SGD with
    momentum 0.9, the poly rate set after every step for the next one."""
    params = [torch.nn.Parameter(torch.tensor(w)) for w in weights]
    groups = [{"params": [p for p, h in zip(params, head) if not h], "lr": BASE_LR},
              {"params": [p for p, h in zip(params, head) if h], "lr": BASE_LR * head_lr_mult}]
    optimizer = torch.optim.SGD(groups, lr=BASE_LR, momentum=0.9, weight_decay=weight_decay)
    for step, step_gradients in enumerate(gradients):
        for param, gradient in zip(params, step_gradients):
            param.grad = torch.tensor(gradient)
        optimizer.step()
        rate = BASE_LR * (1 - (step + 1) / STEPS) ** POWER
        optimizer.param_groups[0]["lr"], optimizer.param_groups[1]["lr"] = rate, rate * head_lr_mult
    return [p.detach().numpy() for p in params]


@pytest.mark.parametrize("weight_decay,head_lr_mult", [(1e-4, 1.0), (1e-4, 10.0), (5e-4, 1.0)])
def test_ten_steps_equal_torch_sgd(weight_decay, head_lr_mult):
    model = tiny_pspnet()
    variables = model.trainable_variables
    multipliers = head_lr_multipliers(model, head_lr_mult)
    head = [v.path in multipliers for v in variables]
    assert (head_lr_mult == 1) or (0 < sum(head) < len(head))  # both groups are really there
    rng = np.random.default_rng(0)
    weights = [v.numpy() for v in variables]
    gradients = [[rng.normal(0, 1, w.shape).astype("float32") for w in weights] for _ in range(STEPS)]

    schedule = keras.optimizers.schedules.PolynomialDecay(BASE_LR, STEPS, 0.0, power=POWER)
    optimizer = SGD(schedule, momentum=0.9, weight_decay=weight_decay, lr_multipliers=multipliers)
    for step_gradients in gradients:
        optimizer.apply_gradients(zip([keras.ops.convert_to_tensor(g) for g in step_gradients], variables))

    expected = torch_reference(weights, gradients, head, weight_decay, head_lr_mult)
    moved = max(float(np.abs(e - w).max()) for e, w in zip(expected, weights))
    assert moved > 1e-2  # ten steps of unit gradients really moved the weights
    for variable, reference in zip(variables, expected):
        np.testing.assert_allclose(variable.numpy(), reference, rtol=0, atol=1e-6, err_msg=variable.path)


def test_decoupled_decay_is_keras_form_and_weaker():
    """decoupled: w <- w - lr*wd*w outside momentum (Keras' weight_decay); at momentum 0.9 it decays ~10x less."""
    results = {}
    for mode in ("coupled", "decoupled"):
        variable = keras.Variable(np.ones(4, "float32"))
        optimizer = SGD(0.1, momentum=0.9, weight_decay=0.01, weight_decay_mode=mode)
        for _ in range(50):
            optimizer.apply_gradients([(keras.ops.zeros(4), variable)])
        results[mode] = 1 - float(variable.numpy()[0])
    assert results["decoupled"] == pytest.approx(1 - (1 - 0.1 * 0.01) ** 50, rel=1e-5)
    assert 5 < results["coupled"] / results["decoupled"] < 10


def test_config_round_trip_and_bad_arguments():
    optimizer = SGD(0.01, 0.9, 5e-4, "decoupled", {"classifier/kernel": 10.0})
    again = SGD.from_config(optimizer.get_config())
    assert (again.l2, again.weight_decay_mode, again.lr_multipliers) == (5e-4, "decoupled", {"classifier/kernel": 10.0})
    with pytest.raises(ValueError, match="weight_decay_mode must be one of"):
        SGD(weight_decay_mode="adamw")
    with pytest.raises(ValueError, match="momentum must be in"):
        SGD(momentum=1.5)


@pytest.mark.parametrize("style", ["poly", "poly_mmengine"])
def test_schedules_equal_the_references(style):
    """The rate of every step: hszhao/semseg util.poly_learning_rate, set after each step for the next, and
    mmengine's PolyLR (total_iters = end - begin - 1, its chained form), as mmsegmentation's schedules use it."""
    from keras_pspnet.config import load_config
    from keras_pspnet.train import learning_rate_schedule

    steps, base, eta_min = 10, 0.01, 1e-4
    config = load_config(None, [f"steps={steps}", f"lr_schedule={style}", f"min_learning_rate={eta_min}"])
    ours = [float(learning_rate_schedule(config)(k)) for k in range(steps)]
    if style == "poly":
        expected = [base] + [(base - eta_min) * (1 - k / steps) ** POWER + eta_min for k in range(1, steps)]
    else:
        total, expected = steps - 1, [base]
        for last_step in range(1, steps):
            expected.append((expected[-1] - eta_min) * (1 - 1 / (total - last_step + 1)) ** POWER + eta_min)
        assert expected[-1] == pytest.approx(eta_min)  # PolyLR is at eta_min on the last step already
    np.testing.assert_allclose(ours, expected, rtol=1e-6)
