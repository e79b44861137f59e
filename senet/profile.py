"""Parameter and multiply-add accounting, per stage, with the SE blocks' share.

Convention (the SENet paper's Table 2 "GFLOPs" are multiply-adds, the ResNet paper's convention):
- every conv (grouped included) and every fully connected layer counts out_elements x fan_in MACs;
  biases, BatchNorm, ReLU, pooling and the residual sums are not counted;
- each SE block also counts its own elementwise work, which paddle.flops leaves out:
  the squeeze as one add per input element (one compare for max pooling, none for NoSqueeze) and the
  scale as one multiply per element. Its two FCs are counted like any FC. The gate (sigmoid) is
  not counted, like the ReLUs.
FLOPs are reported as 2 x MACs beside them, labelled as such.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import paddle
import paddle.nn as nn

from senet.layers import SEBlock


@dataclass
class Profile:
    params: int  # trainable parameters (BatchNorm running statistics excluded)
    params_total: int  # all parameters incl. BN running statistics, as paddle.summary counts them
    params_se: int  # trainable parameters inside SE blocks
    macs: int  # multiply-adds for one image
    macs_se: int  # multiply-adds inside SE blocks (FCs + squeeze + scale)
    input_size: int
    params_by_stage: dict[str, int] = field(default_factory=dict)
    macs_by_stage: dict[str, int] = field(default_factory=dict)

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def gflops(self) -> float:
        """2 x MACs: one multiply and one add counted separately."""
        return 2 * self.macs / 1e9

    @property
    def se_params_share(self) -> float:
        return self.params_se / self.params if self.params else 0.0

    @property
    def se_macs_share(self) -> float:
        return self.macs_se / self.macs if self.macs else 0.0


def _stage_of(name: str) -> str:
    """'layer3.4.se.fc1' -> 'layer3'; 'stem.0.0' -> 'stem'; 'fc' -> 'head'."""
    top = name.split(".", 1)[0]
    return {"fc": "head", "pool": "head", "final_act": "head"}.get(top, top)


def _se_prefixes(model: nn.Layer) -> tuple[str, ...]:
    """Names of the SE blocks in `model`, each with a trailing dot, to match their sublayers and weights."""
    return tuple(name + "." for name, layer in model.named_sublayers() if isinstance(layer, SEBlock))


def count_params(model: nn.Layer) -> tuple[int, int, int, dict[str, int]]:
    """(trainable, total, trainable inside SE, trainable per stage)."""
    trainable = total = se = 0
    se_prefixes = _se_prefixes(model)
    by_stage: dict[str, int] = defaultdict(int)
    for name, p in model.named_parameters():
        n = int(p.size)
        total += n
        if p.stop_gradient:  # BatchNorm running mean / variance live here in Paddle
            continue
        trainable += n
        by_stage[_stage_of(name)] += n
        if name.startswith(se_prefixes):
            se += n
    return trainable, total, se, dict(by_stage)


def count_macs(model: nn.Layer, input_size: int = 224, in_channels: int = 3) -> tuple[int, int, dict[str, int]]:
    """(MACs, MACs inside SE blocks, MACs per stage) for one image of input_size x input_size.

    Runs one forward pass with temporary hooks; the model's state and mode are left as they were.
    """
    names = {id(layer): name for name, layer in model.named_sublayers()}
    se_prefixes = _se_prefixes(model)
    by_stage: dict[str, int] = defaultdict(int)
    totals = {"all": 0, "se": 0}

    def add(name: str, macs: int) -> None:
        by_stage[_stage_of(name)] += macs
        totals["all"] += macs
        if (name + ".").startswith(se_prefixes):
            totals["se"] += macs

    def on_conv(layer: nn.Conv2D, inputs: tuple, output: paddle.Tensor) -> None:
        w = layer.weight  # [out, in / groups, kh, kw]: fan-in per output element
        add(names[id(layer)], int(output.size) * int(w.shape[1] * w.shape[2] * w.shape[3]))

    def on_linear(layer: nn.Linear, inputs: tuple, output: paddle.Tensor) -> None:
        add(names[id(layer)], int(output.size) * int(layer.weight.shape[0]))  # weight: [in, out]

    def on_se(layer: SEBlock, inputs: tuple, output: paddle.Tensor) -> None:
        elements = int(inputs[0].size)
        squeeze = 0 if layer.options.squeeze == "none" else elements
        add(names[id(layer)], squeeze + elements)  # + scale: one multiply per element

    hooks = []
    for layer in model.sublayers():
        if isinstance(layer, nn.Conv2D):
            hooks.append(layer.register_forward_post_hook(on_conv))
        elif isinstance(layer, nn.Linear):
            hooks.append(layer.register_forward_post_hook(on_linear))
        elif isinstance(layer, SEBlock):
            hooks.append(layer.register_forward_post_hook(on_se))
    channel_last = getattr(model, "data_format", "NCHW") == "NHWC"
    shape = [1, input_size, input_size, in_channels] if channel_last else [1, in_channels, input_size, input_size]
    was_training = model.training
    model.eval()
    try:
        with paddle.no_grad():
            model(paddle.zeros(shape, dtype="float32"))
    finally:
        for h in hooks:
            h.remove()
        if was_training:
            model.train()
    return totals["all"], totals["se"], dict(by_stage)


def profile_model(model: nn.Layer, input_size: int = 224) -> Profile:
    """Parameters and multiply-adds of `model`, per stage and for its SE blocks."""
    params, params_total, params_se, params_by_stage = count_params(model)
    macs, macs_se, macs_by_stage = count_macs(model, input_size)
    return Profile(params=params, params_total=params_total, params_se=params_se, macs=macs, macs_se=macs_se,
                   input_size=input_size, params_by_stage=params_by_stage, macs_by_stage=macs_by_stage)


def se_param_formula(model: nn.Layer) -> int:
    """The parameters SE adds by the paper's formula: sum over blocks of 2*C*h, plus biases, with h
    each block's real hidden width: C // r, or C / r rounded to a multiple of model.se.divisor."""
    total = 0
    for layer in model.sublayers():
        if isinstance(layer, SEBlock):
            c, h = layer.channels, layer.hidden
            total += 2 * c * h + ((h + c) if layer.options.bias else 0)
    return total
