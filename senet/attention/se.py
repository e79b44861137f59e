"""The Squeeze-and-Excitation block.

Hu, Shen, Sun, "Squeeze-and-Excitation Networks" (arXiv 1709.01507), Section 3:
  squeeze    z_c = mean over H x W of u_c                          (Eq. 2)
  excitation s = sigmoid(W2 relu(W1 z)), W1: C -> C/r, W2: C/r -> C  (Eq. 3)
  scale      x~_c = s_c * u_c                                      (Eq. 4)
The excitation reads the squeezed tensor z, never the full-resolution input u (except in the
paper's NoSqueeze experiment, Section 7.1, which `squeeze="none"` reproduces on purpose).

The three steps below are the paper's math; the CPU speed paths they call (a matrix-product mean,
a batch-norm-kernel scale) live in senet.attention.kernels, each tested equal to its reference.
"""

from __future__ import annotations

import math

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from senet.attention import kernels
from senet.attention.base import AttentionBlock, Gate
from senet.attention_options import SEOptions


def se_hidden(channels: int, reduction: int, divisor: int = 1) -> int:
    """The SE block's hidden width: C // r (divisor 1, the paper), or timm's make_divisible(C / r,
    divisor) with round_limit 0: the nearest multiple of the divisor (halves up), at least the divisor."""
    if divisor == 1:
        return channels // reduction
    return max(divisor, int(channels / reduction + divisor / 2) // divisor * divisor)


def fc_pair(channels: int, hidden: int, impl: str, bias: bool, data_format: str) -> tuple[nn.Layer, nn.Layer]:
    """The two FCs C -> hidden -> C, as 1x1 convs or Linear layers (initialised by he_init_fcs)."""
    bias_attr = None if bias else False  # Paddle: bias_attr=False removes the bias
    if impl == "conv":
        return (
            nn.Conv2D(channels, hidden, 1, bias_attr=bias_attr, data_format=data_format),
            nn.Conv2D(hidden, channels, 1, bias_attr=bias_attr, data_format=data_format),
        )
    return nn.Linear(channels, hidden, bias_attr=bias_attr), nn.Linear(hidden, channels, bias_attr=bias_attr)


def he_init_fcs(*fcs: nn.Layer) -> None:
    """He normal init in fan-out mode, like every conv here, whichever impl (so conv and linear blocks
    start from the same distribution). Run by the model after it is built (senet.resnet._init_weights),
    not at construction: that keeps the random stream, and so the initial weights of every seed, what
    they were before the blocks became plug-ins."""
    for fc in fcs:
        fan_out = fc.weight.shape[0] if isinstance(fc, nn.Conv2D) else fc.weight.shape[1]
        nn.initializer.KaimingNormal(fan_in=fan_out)(fc.weight)


class SEBlock(AttentionBlock):
    """Squeeze, excite, scale. Input and output have the same shape.

    `impl="conv"` and `impl="linear"` compute the same function: a 1x1 conv on a 1x1 map is a
    Linear layer on the channel vector (Paddle's Linear weight is the conv weight transposed).
    """

    def __init__(
        self, channels: int, options: SEOptions = SEOptions(), name: str = "se", data_format: str = "NCHW"
    ) -> None:
        super().__init__()
        hidden = se_hidden(channels, options.reduction, options.divisor)
        options.check_hidden(hidden, channels, f"SE block '{name}'")
        self.channels, self.hidden, self.options = channels, hidden, options
        self.channel_last = data_format == "NHWC"
        self.fc1, self.fc2 = fc_pair(channels, hidden, options.impl, options.bias, data_format)
        self.gate = Gate(options.gate)
        self.cache = kernels.KernelCache()

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.scale(x, self.excite(self.squeeze(x)))

    def squeeze(self, x: paddle.Tensor) -> paddle.Tensor:
        """Eq. 2: N x C x H x W -> N x C x 1 x 1 (N x 1 x 1 x C in NHWC); the full map with `none`."""
        if self.options.squeeze == "none":
            return x
        if self.options.squeeze == "max":
            return kernels.global_max(x, self.channel_last)
        return kernels.global_mean(x, self.channel_last, self.cache)

    def excite(self, z: paddle.Tensor) -> paddle.Tensor:
        """Eq. 3: the per-channel weights s, shaped to broadcast against the input."""
        if self.options.impl == "conv":
            return self.gate(self.fc2(F.relu(self.fc1(z))))
        if self.options.squeeze != "none":  # pooled: a reshape gives the N x C vector, no copy
            s = self.gate(self.fc2(F.relu(self.fc1(z.reshape([-1, self.channels])))))
            return s.reshape([-1, 1, 1, self.channels] if self.channel_last else [-1, self.channels, 1, 1])
        # NoSqueeze: Linear acts on the last axis, so move channels there and back.
        if not self.channel_last:
            z = z.transpose([0, 2, 3, 1])
        s = self.gate(self.fc2(F.relu(self.fc1(z))))
        return s if self.channel_last else s.transpose([0, 3, 1, 2])

    def scale(self, x: paddle.Tensor, s: paddle.Tensor) -> paddle.Tensor:
        """Eq. 4: x * s, channel by channel."""
        return kernels.scale_channels(x, s, self.channel_last, self.cache)

    def init_weights(self) -> None:
        he_init_fcs(self.fc1, self.fc2)

    def gates(self) -> dict[str, Gate]:
        return {"channel": self.gate}

    def param_formula(self) -> int:
        """2 C h weights, plus h + C biases, with h the real hidden width (C // r, or rounded to a
        multiple of model.se.divisor)."""
        c, h = self.channels, self.hidden
        return 2 * c * h + ((h + c) if self.options.bias else 0)

    def elementwise_macs(self, shape: list[int]) -> int:
        """The squeeze, one add per input element (one compare for max, none for NoSqueeze), and the
        scale, one multiply per element. paddle.flops leaves both out."""
        elements = math.prod(shape[1:])
        return (0 if self.options.squeeze == "none" else elements) + elements
