"""The Convolutional Block Attention Module.

Woo, Park, Lee, Kweon, "CBAM: Convolutional Block Attention Module" (ECCV 2018), Section 3:
  channel  M_c = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F))), one shared MLP C -> C/r -> C (ReLU)  (Eq. 2)
           F' = M_c * F
  spatial  M_s = sigmoid(f7x7([AvgPool_c(F'); MaxPool_c(F')])), pools across channels, one 7x7 conv (Eq. 3)
           F'' = M_s * F'
The channel module comes first (the paper's best order, Table 3). Departures, all as in the authors'
code unless said: the MLP has biases (nn.Linear there); the hidden width is C // r (floor, as SE's);
the 7x7 conv has no bias. The authors' code follows that conv with a BatchNorm, which the paper does
not describe; we leave it out. `spatial=False` keeps only the channel module.
"""

from __future__ import annotations

import math

import paddle
import paddle.nn.functional as F

from senet.attention import kernels
from senet.attention.base import AttentionBlock, Gate
from senet.attention.se import fc_pair, he_init_fcs
from senet.attention_options import CBAMOptions
from senet.layers import conv2d


class CBAMBlock(AttentionBlock):
    """Channel attention, then spatial attention. Input and output have the same shape."""

    def __init__(
        self, channels: int, options: CBAMOptions = CBAMOptions(), name: str = "cbam", data_format: str = "NCHW"
    ) -> None:
        super().__init__()
        hidden = channels // options.reduction
        options.check_hidden(hidden, channels, f"CBAM block '{name}'")
        self.channels, self.hidden, self.options = channels, hidden, options
        self.channel_last = data_format == "NHWC"
        self.fc1, self.fc2 = fc_pair(channels, hidden, "conv", options.bias, data_format)
        self.channel_gate = Gate("sigmoid")
        if options.spatial:
            self.spatial_conv = conv2d(2, 1, options.spatial_kernel, data_format=data_format)
            self.spatial_gate = Gate("sigmoid")
        self.cache = kernels.KernelCache()

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = kernels.scale_channels(x, self.channel_attention(x), self.channel_last, self.cache)
        if self.options.spatial:
            x = kernels.scale_positions(x, self.spatial_attention(x))
        return x

    def channel_attention(self, x: paddle.Tensor) -> paddle.Tensor:
        """M_c: both pooled vectors through the shared MLP at once, side by side as the two positions of
        a 1 x 2 map (a 1x1 conv acts on each position alone), summed, sigmoid. Not a batch of 2N split
        in two: paddle2onnx 2.1 cannot convert a split along the dynamic batch axis (it aborts)."""
        w_axis = 2 if self.channel_last else 3
        pooled = paddle.concat(
            [kernels.global_mean(x, self.channel_last, self.cache), kernels.global_max(x, self.channel_last)],
            axis=w_axis,
        )
        return self.channel_gate(self.fc2(F.relu(self.fc1(pooled))).sum(axis=w_axis, keepdim=True))

    def spatial_attention(self, x: paddle.Tensor) -> paddle.Tensor:
        """M_s: the mean and max over channels, stacked as two maps, one k x k conv, sigmoid."""
        axis = -1 if self.channel_last else 1
        maps = paddle.concat([x.mean(axis=axis, keepdim=True), kernels.channel_max(x, self.channel_last)], axis=axis)
        return self.spatial_gate(self.spatial_conv(maps))

    def init_weights(self) -> None:
        he_init_fcs(self.fc1, self.fc2)

    def gates(self) -> dict[str, Gate]:
        gates = {"channel": self.channel_gate}
        if self.options.spatial:
            gates["spatial"] = self.spatial_gate
        return gates

    def param_formula(self) -> int:
        """The shared MLP, 2 C h weights + h + C biases, and the spatial conv, 2 k^2 weights."""
        c, h, k = self.channels, self.hidden, self.options.spatial_kernel
        mlp = 2 * c * h + ((h + c) if self.options.bias else 0)
        return mlp + (2 * k * k if self.options.spatial else 0)

    def elementwise_macs(self, shape: list[int]) -> int:
        """Per image of C x H x W: the two channel pools (one add, one compare per element), the sum of
        the two MLP outputs (C adds), the channel scale (one multiply per element); with the spatial
        module, the two pools across channels (again one add, one compare per element) and the
        spatial scale (one multiply per element). The MLP runs twice and its FCs count twice."""
        elements = math.prod(shape[1:])
        channel = 3 * elements + self.channels
        return channel + (3 * elements if self.options.spatial else 0)
