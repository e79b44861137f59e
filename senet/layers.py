"""The Squeeze-and-Excitation block and the conv-BN helpers the ResNets are built from.

Hu, Shen, Sun, "Squeeze-and-Excitation Networks" (arXiv 1709.01507), Section 3:
  squeeze    z_c = mean over H x W of u_c                          (Eq. 2)
  excitation s = sigmoid(W2 relu(W1 z)), W1: C -> C/r, W2: C/r -> C  (Eq. 3)
  scale      x~_c = s_c * u_c                                      (Eq. 4)
The excitation reads the squeezed tensor z, never the full-resolution input u (except in the
paper's NoSqueeze ablation, Section 6.4, which `squeeze="none"` reproduces on purpose).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

SQUEEZES = ("avg", "max", "none")
GATES = ("sigmoid", "tanh", "relu")
IMPLS = ("conv", "linear")
PLACEMENTS = ("standard", "pre", "post", "identity", "after_3x3")


@dataclass(frozen=True)
class SEOptions:
    """The `model.se` section of a config. Defaults follow the paper's SE-ResNet-50."""

    reduction: int = 16  # hidden width is exactly C // r (floor, no rounding to a multiple of 8)
    impl: str = "conv"  # conv: 1x1 convs on the pooled 1x1 map; linear: Linear on the pooled vector
    squeeze: str = "avg"  # avg | max | none (NoSqueeze ablation)
    gate: str = "sigmoid"  # sigmoid | tanh | relu (excitation ablation, Section 6.4)
    bias: bool = True  # the authors' Caffe release has biases on both FCs
    placement: str = "standard"  # SE, SE-PRE, SE-POST, SE-Identity, or after the 3x3 (Section 6.5)
    stages: tuple[int, ...] | None = field(default=None)  # 1-based stage numbers with SE; None: all

    def __post_init__(self) -> None:
        for name, value, allowed in (("impl", self.impl, IMPLS), ("squeeze", self.squeeze, SQUEEZES),
                                     ("gate", self.gate, GATES), ("placement", self.placement, PLACEMENTS)):
            if value not in allowed:
                raise ValueError(f"model.se.{name}: {value!r} is not one of {', '.join(allowed)}")
        if isinstance(self.reduction, bool) or not isinstance(self.reduction, int) or self.reduction < 1:
            raise ValueError(f"model.se.reduction must be a positive integer, got {self.reduction!r}")


class SEBlock(nn.Layer):
    """Squeeze, excite, scale. Input and output have the same shape.

    `impl="conv"` and `impl="linear"` compute the same function: a 1x1 conv on a 1x1 map is a
    Linear layer on the channel vector (Paddle's Linear weight is the conv weight transposed).
    """

    def __init__(self, channels: int, options: SEOptions = SEOptions(), name: str = "se",
                 data_format: str = "NCHW") -> None:
        super().__init__()
        hidden = channels // options.reduction
        if hidden < 1:
            raise ValueError(f"SE block '{name}': C={channels} // reduction {options.reduction} = 0 hidden "
                             f"units; use model.se.reduction <= {channels} or leave this stage out of "
                             f"model.se.stages")
        self.channels, self.hidden, self.options = channels, hidden, options
        self.channel_last = data_format == "NHWC"
        bias = None if options.bias else False  # Paddle: bias_attr=False removes the bias
        if options.impl == "conv":
            self.fc1 = nn.Conv2D(channels, hidden, 1, bias_attr=bias, data_format=data_format)
            self.fc2 = nn.Conv2D(hidden, channels, 1, bias_attr=bias, data_format=data_format)
        else:
            self.fc1 = nn.Linear(channels, hidden, bias_attr=bias)
            self.fc2 = nn.Linear(hidden, channels, bias_attr=bias)
        self.gate: Callable[[paddle.Tensor], paddle.Tensor] = {
            "sigmoid": F.sigmoid, "tanh": paddle.tanh, "relu": F.relu}[options.gate]

    def squeeze(self, x: paddle.Tensor) -> paddle.Tensor:
        """N x C x H x W -> N x C x 1 x 1 (or N x 1 x 1 x C in NHWC); the full map with `none`."""
        if self.options.squeeze == "none":
            return x
        axes = [1, 2] if self.channel_last else [2, 3]
        if self.options.squeeze == "avg":
            return x.mean(axis=axes, keepdim=True)
        return x.max(axis=axes, keepdim=True)

    def excite(self, z: paddle.Tensor) -> paddle.Tensor:
        """The per-channel weights s (Eq. 3), shaped to broadcast against the input."""
        if self.options.impl == "conv":
            return self.gate(self.fc2(F.relu(self.fc1(z))))
        if self.options.squeeze != "none":  # pooled: a reshape gives the N x C vector, no copy
            s = self.gate(self.fc2(F.relu(self.fc1(z.flatten(1)))))
            return s.reshape([-1, 1, 1, self.channels] if self.channel_last else [-1, self.channels, 1, 1])
        # NoSqueeze: Linear acts on the last axis, so move channels there and back.
        if not self.channel_last:
            z = z.transpose([0, 2, 3, 1])
        s = self.gate(self.fc2(F.relu(self.fc1(z))))
        return s if self.channel_last else s.transpose([0, 3, 1, 2])

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return x * self.excite(self.squeeze(x))


def se_factory(options: SEOptions | None, data_format: str = "NCHW"
               ) -> Callable[[int, str, int], nn.Layer]:
    """The attention hook a block calls: (channels, name, stage) -> SE block, or Identity.

    Plain and SE networks run the same block code; only what this hook returns differs, which is
    what keeps a ResNet vs SE-ResNet comparison controlled.
    """

    def make(channels: int, name: str, stage: int) -> nn.Layer:
        if options is None or (options.stages is not None and stage not in options.stages):
            return nn.Identity()
        return SEBlock(channels, options, name=name, data_format=data_format)

    return make


def conv2d(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
           data_format: str = "NCHW") -> nn.Conv2D:
    """A bias-free conv with He (MSRA) normal init in fan-out mode, as in torchvision's ResNet.

    The initializer is given at construction so that each weight is drawn once (re-initialising
    afterwards doubled model build time).
    """
    fan_out = out_ch * kernel * kernel
    init = paddle.ParamAttr(initializer=nn.initializer.KaimingNormal(fan_in=fan_out))
    return nn.Conv2D(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups,
                     weight_attr=init, bias_attr=False, data_format=data_format)


class ConvBN(nn.Sequential):
    """Conv (no bias: the BN after it has one) -> BN -> optional ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
                 act: bool = True, data_format: str = "NCHW") -> None:
        layers = [conv2d(in_ch, out_ch, kernel, stride, groups, data_format),
                  nn.BatchNorm2D(out_ch, data_format=data_format)]
        if act:
            layers.append(nn.ReLU())
        super().__init__(*layers)


class BNReLUConv(nn.Sequential):
    """Pre-activation unit (He et al., "Identity Mappings in Deep Residual Networks"): BN -> ReLU -> conv."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1,
                 data_format: str = "NCHW") -> None:
        super().__init__(nn.BatchNorm2D(in_ch, data_format=data_format), nn.ReLU(),
                         conv2d(in_ch, out_ch, kernel, stride, 1, data_format))
