"""Efficient Channel Attention.

Wang, Wu, Zhu, Li, Zuo, Hu, "ECA-Net: Efficient Channel Attention for Deep Convolutional Neural
Networks" (CVPR 2020), Section 3.3:
  squeeze  y = global average pool of x                                   (as SE, Eq. 2)
  excite   w = sigmoid(C1D_k(y)), a 1D conv of kernel k across the channel axis, no bias,
           no dimensionality reduction                                   (Eq. 7)
  scale    x * w, channel by channel
  k        psi(C) = |log2(C) / gamma + b / gamma|_odd, gamma = 2, b = 1   (Eq. 12)

Rounding of k: "|t|_odd, the nearest odd number of t", as the authors' code computes it:
t = int(abs((log2(C) + b) / gamma)), then k = t if t is odd, else t + 1. It is not always the nearest
odd number (t = 6.0 for C = 2048 gives 7, though 5 is as near); we follow the code, whose numbers the
paper reports. ECA-ResNet-50 (C = 256, 512, 1024, 2048 at the standard placement) gets k = 5, 5, 5, 7;
the CIFAR ResNets (C = 16, 32, 64) get k = 3, 3, 3. `model.eca.kernel_size` fixes k for every block.
"""

from __future__ import annotations

import math

import paddle
import paddle.nn as nn

from senet.attention import kernels
from senet.attention.base import AttentionBlock, Gate
from senet.attention_options import ECAOptions


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    """psi(C) of Eq. 12, rounded as the authors' code rounds it (see the module docstring)."""
    t = int(abs((math.log2(channels) + b) / gamma))
    return max(1, t if t % 2 else t + 1)


class ECABlock(AttentionBlock):
    """Average pool, 1D conv across channels, sigmoid, scale. Input and output have the same shape."""

    def __init__(
        self, channels: int, options: ECAOptions = ECAOptions(), name: str = "eca", data_format: str = "NCHW"
    ) -> None:
        super().__init__()
        self.channels, self.options = channels, options
        self.channel_last = data_format == "NHWC"
        self.kernel_size = options.kernel_size or eca_kernel_size(channels, options.gamma, options.b)
        # One input and one output "channel": the conv slides over the C pooled values.
        self.conv = nn.Conv1D(1, 1, self.kernel_size, padding=self.kernel_size // 2, bias_attr=False)
        self.gate = Gate("sigmoid")
        self.cache = kernels.KernelCache()

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        y = kernels.global_mean(x, self.channel_last, self.cache)
        w = self.conv(y.reshape([-1, 1, self.channels]))  # N x 1 x C: channels on the conv's length axis
        w = self.gate(w.reshape([-1, 1, 1, self.channels] if self.channel_last else [-1, self.channels, 1, 1]))
        return kernels.scale_channels(x, w, self.channel_last, self.cache)

    def gates(self) -> dict[str, Gate]:
        return {"channel": self.gate}

    def param_formula(self) -> int:
        return self.kernel_size

    def elementwise_macs(self, shape: list[int]) -> int:
        """The pool, one add per input element, and the scale, one multiply per element."""
        return 2 * math.prod(shape[1:])
