"""What every attention block is: its accounting and its gates (its options: senet.attention_options).

A block is built for C channels from its options and returns a tensor of its input's shape. Besides
`forward` it declares what senet.profile counts (`param_formula`, `elementwise_macs`) and what
senet.analysis records (`gates`): the layers whose outputs are the gate values. Those are `Gate`
layers, so analysis, the VisualDL histograms and export need nothing from the block's forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

# The options are Paddle-free (senet.attention_options), so that senet.config can read them.
from senet.attention_options import AttentionOptions


class Gate(nn.Layer):
    """The gate activation as a layer without parameters, so that its output (the gate values) can
    be recorded by a forward hook without touching the block's forward."""

    def __init__(self, kind: str = "sigmoid") -> None:
        super().__init__()
        self.kind = kind
        self.fn: Callable[[paddle.Tensor], paddle.Tensor] = {"sigmoid": F.sigmoid, "tanh": paddle.tanh, "relu": F.relu}[
            kind
        ]

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.fn(x)


class AttentionBlock(nn.Layer):
    """The interface senet.resnet, senet.profile, senet.analysis and senet.export rely on."""

    channels: int  # C, the width of the tensor the block reweights
    channel_last: bool  # NHWC

    def init_weights(self) -> None:
        """Called once by the model after it is built (senet.resnet._init_weights); by default the
        layers keep Paddle's initialisation."""

    def gates(self) -> dict[str, Gate]:
        """The gates by kind: "channel" (one weight per channel, [N, C, 1, 1] or [N, 1, 1, C]) is what
        analysis summarises; others (CBAM's "spatial", [N, 1, H, W]) go to the histograms only."""
        raise NotImplementedError

    def param_formula(self) -> int:
        """The block's parameters by its paper's formula, for a check against the counted ones."""
        raise NotImplementedError

    def elementwise_macs(self, shape: list[int]) -> int:
        """Multiply-adds for one image of input `shape` ([1, C, H, W] or NHWC) outside the block's
        convs and FCs, which senet.profile counts on its own: poolings one add (or compare) per element
        read, scales one multiply per element. Activations are not counted (senet.profile)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Attention:
    """One registry entry: architectures `<name>_<arch>`, options in the config section model.<name>."""

    name: str  # "se": se_resnet50, model.se
    block: type[AttentionBlock]  # block(channels, options, name=..., data_format=...)
    options: type[AttentionOptions]
    title: str  # "SE", for tables and plots
    paper: str  # where the block comes from
