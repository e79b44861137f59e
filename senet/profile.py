"""Parameter and multiply-add accounting, per stage, with the attention blocks' share.

Convention (the SENet paper's Table 2 "GFLOPs" are multiply-adds, the ResNet paper's convention):
- every conv (1D, 2D, grouped) and every fully connected layer counts out_elements x fan_in MACs;
  biases, BatchNorm, ReLU, the network's pooling and the residual sums are not counted;
- each attention block (SE, ECA, CBAM; senet.attention) also counts its own elementwise work, which
  paddle.flops leaves out, as the block declares it (AttentionBlock.elementwise_macs): each pooling as
  one add (or compare) per element it reads, each scale as one multiply per element. Its convs and FCs
  are counted like any other. The gates (sigmoid) are not counted, like the ReLUs.
FLOPs are reported as 2 x MACs beside them, labelled as such. The `_se` fields hold the share of the
attention blocks whatever their kind (the name predates ECA and CBAM; results files keep it).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import paddle
import paddle.nn as nn

from senet.attention import AttentionBlock, attention_blocks


@dataclass
class Profile:
    params: int  # trainable parameters (BatchNorm running statistics excluded)
    params_total: int  # all parameters incl. BN running statistics, as paddle.summary counts them
    params_se: int  # trainable parameters inside attention blocks
    macs: int  # multiply-adds for one image
    macs_se: int  # multiply-adds inside attention blocks (their convs and FCs + pooling + scale)
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
    """Names of the attention blocks in `model`, each with a trailing dot, to match their sublayers and weights."""
    return tuple(name + "." for name, layer in model.named_sublayers() if isinstance(layer, AttentionBlock))


def count_params(model: nn.Layer) -> tuple[int, int, int, dict[str, int]]:
    """(trainable, total, trainable inside attention blocks, trainable per stage)."""
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
    """(MACs, MACs inside attention blocks, MACs per stage) for one image of input_size x input_size.

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

    def on_conv(layer: nn.Layer, inputs: tuple, output: paddle.Tensor) -> None:
        w = layer.weight  # [out, in / groups, *kernel]: fan-in per output element
        add(names[id(layer)], int(output.size) * math.prod(w.shape[1:]))

    def on_linear(layer: nn.Linear, inputs: tuple, output: paddle.Tensor) -> None:
        add(names[id(layer)], int(output.size) * int(layer.weight.shape[0]))  # weight: [in, out]

    def on_attention(layer: AttentionBlock, inputs: tuple, output: paddle.Tensor) -> None:
        add(names[id(layer)], layer.elementwise_macs(list(inputs[0].shape)))

    hooks = []
    for layer in model.sublayers():
        if isinstance(layer, (nn.Conv1D, nn.Conv2D)):
            hooks.append(layer.register_forward_post_hook(on_conv))
        elif isinstance(layer, nn.Linear):
            hooks.append(layer.register_forward_post_hook(on_linear))
        elif isinstance(layer, AttentionBlock):
            hooks.append(layer.register_forward_post_hook(on_attention))
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
    """Parameters and multiply-adds of `model`, per stage and for its attention blocks."""
    params, params_total, params_se, params_by_stage = count_params(model)
    macs, macs_se, macs_by_stage = count_macs(model, input_size)
    return Profile(
        params=params,
        params_total=params_total,
        params_se=params_se,
        macs=macs,
        macs_se=macs_se,
        input_size=input_size,
        params_by_stage=params_by_stage,
        macs_by_stage=macs_by_stage,
    )


def attention_param_formula(model: nn.Layer) -> int:
    """The parameters the attention blocks add by their papers' formulas (AttentionBlock.param_formula:
    SE 2 C h + biases with h each block's real hidden width; ECA k; CBAM its MLP plus 2 k^2), for a
    check against the counted ones."""
    return sum(block.param_formula() for block in attention_blocks(model).values())
