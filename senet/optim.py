"""The optimizer, its per-iteration LR schedule and the EMA of the weights, built from a config.

The recipe follows Hu et al., Section 5 (and He et al. 2015 for CIFAR): SGD with momentum, a learning
rate stated per 256 images and scaled linearly with the global batch (Goyal et al.), stepped every
iteration, with an optional linear warm-up.

For modern recipes: AdamW (Loshchilov and Hutter; decoupled weight decay, p -= lr wd p, as torch's) and
LAMB (You et al., "Large Batch Optimization for Deep Learning", 2019; the optimizer of "ResNet strikes
back"). Paddle's Lamb computes what timm's Lamb does with its defaults (bias-corrected moments, L2 decay
added to the update before the layer-wise trust ratio |w| / |update|, no trust ratio where the decay is 0,
eps 1e-6), except that timm's Lamb also clips the global gradient norm to 1.0 by default (its
max_grad_norm) and Paddle's does not: set optimizer.clip_grad_norm=1.0 for timm's behaviour
(tests/test_optim_recipes.py checks both against timm on fixed gradients).
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


def no_weight_decay(p: paddle.Tensor) -> bool:
    """Whether optimizer.no_weight_decay_on_bn_bias spares `p`: every tensor of one dimension or none, i.e.
    every BatchNorm scale and shift and every bias (conv, FC, the attention blocks'), as timm's
    param_groups_weight_decay (which also spares names ending in .bias; ours are all 1-D)."""
    return len(p.shape) <= 1


# Each optimizer's epsilon when optimizer.eps is null: torch's AdamW and timm's Lamb defaults (Paddle's too).
DEFAULT_EPS = {"adamw": 1e-8, "lamb": 1e-6}


def build_optimizer(cfg: dict, model: nn.Layer, steps_per_epoch: int, world_size: int):
    """(optimizer, per-iteration LR scheduler) for the trainable parameters of `model`."""
    o = cfg["optimizer"]
    scheduler = paddle.optimizer.lr.LambdaDecay(
        scaled_lr(cfg, world_size), lambda step: lr_factor(cfg, step, steps_per_epoch)
    )
    # BatchNorm running statistics are listed as parameters in Paddle, with stop_gradient=True.
    trainable = [p for p in model.parameters() if not p.stop_gradient]
    spare = o["no_weight_decay_on_bn_bias"]
    params: Any = trainable
    if spare and o["name"] != "lamb":  # Lamb ignores a group's weight_decay: it takes an exclude function
        params = [
            {"params": [p for p in trainable if not no_weight_decay(p)]},
            {"params": [p for p in trainable if no_weight_decay(p)], "weight_decay": 0.0},
        ]
    wd = o["weight_decay"]
    # Clipped inside optimizer.step(), so after GradScaler.step has unscaled the gradients (senet.step).
    clip = paddle.nn.ClipGradByGlobalNorm(o["clip_grad_norm"]) if o["clip_grad_norm"] else None
    beta1, beta2 = o["betas"]
    eps = o["eps"] if o["eps"] is not None else DEFAULT_EPS.get(o["name"])
    if o["name"] == "momentum":
        opt = paddle.optimizer.Momentum(
            scheduler, o["momentum"], params, use_nesterov=o["nesterov"], weight_decay=wd, grad_clip=clip
        )
    elif o["name"] == "sgd":
        opt = paddle.optimizer.SGD(scheduler, params, weight_decay=wd, grad_clip=clip)
    elif o["name"] == "adamw":
        opt = paddle.optimizer.AdamW(scheduler, beta1, beta2, eps, parameters=params, weight_decay=wd, grad_clip=clip)
    elif o["name"] == "lamb":
        # always_adapt=False: the spared tensors take a plain Adam step, without the trust ratio, as timm's Lamb
        # does for a group whose weight decay is 0.
        opt = paddle.optimizer.Lamb(
            scheduler,
            lamb_weight_decay=wd,
            beta1=beta1,
            beta2=beta2,
            epsilon=eps,
            parameters=params,
            grad_clip=clip,
            exclude_from_weight_decay_fn=no_weight_decay if spare else None,
        )
    else:
        raise ValueError(f"optimizer.name: {o['name']!r} is not one of momentum, sgd, adamw, lamb")
    return opt, scheduler


class ModelEMA:
    """Exponential moving average of the weights, kept in fp32 whatever the training precision.

    Updated on the device every step (no host sync); integer buffers are copied as they are. Under AMP
    O2 the model holds fp16/bf16 weights and the optimizer their fp32 master copies: the average is
    taken of the master weights (`optimizer`), not of the fp16-rounded ones: those are off by up to 2**-11
    of each weight (fp16's rounding), and where weights move by less than that between steps the error
    is the same at every step, so averaging does not remove it. Build it from the fp32 model, before
    senet.step.decorate_o2: the shadow then starts from the exact initial weights.
    """

    def __init__(self, model: nn.Layer, decay: float, optimizer: Any = None) -> None:
        self.decay = decay
        self.optimizer = optimizer  # its fp32 master weights, where it has any, stand in for the model's
        with paddle.no_grad():
            self.shadow = {
                k: v.detach().astype("float32").clone() if paddle.is_floating_point(v) else v.detach().clone()
                for k, v in _live_state(model).items()
            }

    @paddle.no_grad()
    def update(self, model: nn.Layer) -> None:
        masters = getattr(self.optimizer, "_master_weights", None) or {}  # Paddle's: parameter name -> fp32 copy
        for k, v in _live_state(model).items():
            s = self.shadow[k]
            if paddle.is_floating_point(s):
                source = masters.get(v.name, v)
                paddle.assign(s * self.decay + source.astype("float32") * (1 - self.decay), output=s)
            else:
                paddle.assign(v, output=s)

    def state_dict(self) -> dict:
        return self.shadow

    def set_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            paddle.assign(paddle.to_tensor(v), output=self.shadow[k])

    def copy_into(self, model: nn.Layer) -> nn.Layer:
        """A copy of `model` carrying the EMA weights, for evaluation, in the model's own dtypes (fp16 or
        bf16 conv weights under AMP O2): Paddle's set_value refuses a dtype other than the tensor's."""
        ema_model = copy.deepcopy(model)
        own = _live_state(ema_model)
        ema_model.set_state_dict(
            {k: v if v.dtype == own[k].dtype else v.astype(own[k].dtype) for k, v in self.shadow.items()}
        )
        return ema_model


def _live_state(model: nn.Layer) -> dict:
    """The model's parameters and buffers themselves, by state-dict name: without the state-dict hooks
    (AMP O2's save_dtype casts a copy of every weight on each state_dict() call) and through
    paddle.DataParallel, whose state_dict takes no use_hook."""
    inner = model._layers if isinstance(model, paddle.DataParallel) else model
    return inner.state_dict(use_hook=False)
