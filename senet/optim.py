"""The optimizer, its per-iteration LR schedule and the EMA of the weights, built from a config.

The recipe follows Hu et al., Section 5 (and He et al. 2015 for CIFAR): SGD with momentum, a learning
rate stated per 256 images and scaled linearly with the global batch (Goyal et al.), stepped every
iteration, with an optional linear warm-up.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import paddle
import paddle.nn as nn


def scaled_lr(cfg: dict, world_size: int) -> float:
    """optimizer.lr is per 256 images; scale linearly with the global batch (per-device x devices)."""
    return cfg["optimizer"]["lr"] * cfg["data"]["batch_size"] * world_size / 256


def lr_factor(cfg: dict, step: int, steps_per_epoch: int) -> float:
    """Multiplier of the base lr at iteration `step`: linear warm-up, then step / multistep / cosine."""
    s = cfg["lr_scheduler"]
    epoch = step / steps_per_epoch  # fractional epochs, so the schedule moves every iteration
    warmup = s["warmup_epochs"]
    if warmup > 0 and epoch < warmup:
        return (step + 1) / (warmup * steps_per_epoch)
    if s["name"] == "step":
        return s["gamma"] ** math.floor(epoch / s["step_size"])
    if s["name"] == "multistep":
        return s["gamma"] ** sum(epoch >= m for m in s["milestones"])
    total = cfg["train"]["epochs"] - warmup  # cosine, from the end of warm-up to the last epoch
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (epoch - warmup) / max(total, 1e-8))))


def build_optimizer(cfg: dict, model: nn.Layer, steps_per_epoch: int, world_size: int):
    """(optimizer, per-iteration LR scheduler) for the trainable parameters of `model`."""
    o = cfg["optimizer"]
    scheduler = paddle.optimizer.lr.LambdaDecay(scaled_lr(cfg, world_size),
                                                lambda step: lr_factor(cfg, step, steps_per_epoch))
    # BatchNorm running statistics are listed as parameters in Paddle, with stop_gradient=True.
    trainable = [p for p in model.parameters() if not p.stop_gradient]
    params: Any = trainable
    if o["no_weight_decay_on_bn_bias"]:  # 1-D tensors are BN scales/shifts and biases
        decay = [p for p in trainable if len(p.shape) > 1]
        no_decay = [p for p in trainable if len(p.shape) <= 1]
        params = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    wd = o["weight_decay"]
    if o["name"] == "momentum":
        opt = paddle.optimizer.Momentum(scheduler, o["momentum"], params, use_nesterov=o["nesterov"],
                                        weight_decay=wd)
    elif o["name"] == "sgd":
        opt = paddle.optimizer.SGD(scheduler, params, weight_decay=wd)
    else:
        opt = paddle.optimizer.AdamW(scheduler, parameters=params, weight_decay=wd)
    return opt, scheduler


class ModelEMA:
    """Exponential moving average of the weights, kept in fp32 whatever the training precision.

    Updated on the device every step (no host sync); integer buffers are copied as they are.
    """

    def __init__(self, model: nn.Layer, decay: float) -> None:
        self.decay = decay
        with paddle.no_grad():
            self.shadow = {k: v.detach().astype("float32").clone() if paddle.is_floating_point(v)
                           else v.detach().clone() for k, v in model.state_dict().items()}

    @paddle.no_grad()
    def update(self, model: nn.Layer) -> None:
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if paddle.is_floating_point(s):
                paddle.assign(s * self.decay + v.astype("float32") * (1 - self.decay), output=s)
            else:
                paddle.assign(v, output=s)

    def state_dict(self) -> dict:
        return self.shadow

    def set_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            paddle.assign(paddle.to_tensor(v), output=self.shadow[k])

    def copy_into(self, model: nn.Layer) -> nn.Layer:
        """A copy of `model` carrying the EMA weights, for evaluation."""
        ema_model = copy.deepcopy(model)
        ema_model.set_state_dict(self.shadow)
        return ema_model
