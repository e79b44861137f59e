"""What every attention block is: its options, its accounting and its gates.

A block is built for C channels from its options and returns a tensor of its input's shape. Besides
`forward` it declares what senet.profile counts (`param_formula`, `elementwise_macs`) and what
senet.analysis records (`gates`): the layers whose outputs are the gate values. Those are `Gate`
layers, so analysis, the VisualDL histograms and export need nothing from the block's forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

# Where a block sits in a residual block (Hu et al., Fig. 5 and Section 6.5); see senet.resnet._Residual.
PLACEMENTS = ("standard", "pre", "post", "identity", "after_3x3")


@dataclass(frozen=True)
class AttentionOptions:
    """The settings every block type has: where it sits and which stages get it."""

    section: ClassVar[str] = "model.attention"  # the config section, for error messages
    placement: str = "standard"  # standard | pre | post | identity | after_3x3
    stages: tuple[int, ...] | None = None  # 1-based stage numbers with the block; None: all

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise ValueError(f"{self.section}.placement: {self.placement!r} is not one of {', '.join(PLACEMENTS)}")
        if self.stages is not None and any(isinstance(s, bool) or not isinstance(s, int) or s < 1
                                           for s in self.stages):
            raise ValueError(f"{self.section}.stages must be positive stage numbers, got {list(self.stages)}")

    def choose(self, name: str, value: object, allowed: tuple) -> None:
        if value not in allowed:
            raise ValueError(f"{self.section}.{name}: {value!r} is not one of {', '.join(map(str, allowed))}")

    def positive(self, name: str, value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{self.section}.{name} must be a positive integer, got {value!r}")

    def check_hidden(self, hidden: int, channels: int, block: str) -> None:
        """Refuse a zero-width hidden layer (C // reduction = 0), naming the block and the fix."""
        if hidden < 1:
            raise ValueError(f"{block}: C={channels} // reduction {getattr(self, 'reduction', '?')} = 0 hidden "
                             f"units; use {self.section}.reduction <= {channels} or leave this stage out of "
                             f"{self.section}.stages")


class Gate(nn.Layer):
    """The gate activation as a layer without parameters, so that its output (the gate values) can
    be recorded by a forward hook without touching the block's forward."""

    def __init__(self, kind: str = "sigmoid") -> None:
        super().__init__()
        self.kind = kind
        self.fn: Callable[[paddle.Tensor], paddle.Tensor] = {
            "sigmoid": F.sigmoid, "tanh": paddle.tanh, "relu": F.relu}[kind]

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
