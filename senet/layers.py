"""The Squeeze-and-Excitation block and the conv-BN helpers the ResNets are built from.

Hu, Shen, Sun, "Squeeze-and-Excitation Networks" (arXiv 1709.01507), Section 3:
  squeeze    z_c = mean over H x W of u_c                          (Eq. 2)
  excitation s = sigmoid(W2 relu(W1 z)), W1: C -> C/r, W2: C/r -> C  (Eq. 3)
  scale      x~_c = s_c * u_c                                      (Eq. 4)
The excitation reads the squeezed tensor z, never the full-resolution input u (except in the
paper's NoSqueeze experiment, Section 7.1, which `squeeze="none"` reproduces on purpose).
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

    reduction: int = 16  # hidden width C // r (floor); see se_hidden and `divisor`
    # 1: the paper's exact C // r. d > 1: C / r rounded to the nearest multiple of d, at least d, as
    # timm's SE does (make_divisible, d = 8 in its seresnet*): SE-ResNet-18/34's 64-channel stage then
    # gets 8 hidden units, not 4. Only timm's weights need it; the paper and its release use C // r.
    divisor: int = 1
    impl: str = "conv"  # conv: 1x1 convs on the pooled 1x1 map; linear: Linear on the pooled vector
    squeeze: str = "avg"  # avg | max | none (NoSqueeze ablation)
    gate: str = "sigmoid"  # sigmoid | tanh | relu (excitation ablation, Section 6.3)
    bias: bool = True  # the authors' Caffe release has biases on both FCs
    placement: str = "standard"  # SE, SE-PRE, SE-POST, SE-Identity, or after the 3x3 (Section 6.5)
    stages: tuple[int, ...] | None = field(default=None)  # 1-based stage numbers with SE; None: all

    def __post_init__(self) -> None:
        for name, value, allowed in (("impl", self.impl, IMPLS), ("squeeze", self.squeeze, SQUEEZES),
                                     ("gate", self.gate, GATES), ("placement", self.placement, PLACEMENTS)):
            if value not in allowed:
                raise ValueError(f"model.se.{name}: {value!r} is not one of {', '.join(allowed)}")
        for name, value in (("reduction", self.reduction), ("divisor", self.divisor)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model.se.{name} must be a positive integer, got {value!r}")


def se_hidden(channels: int, reduction: int, divisor: int = 1) -> int:
    """The SE block's hidden width: C // r (divisor 1, the paper), or timm's make_divisible(C / r,
    divisor) with round_limit 0: the nearest multiple of the divisor (halves up), at least the divisor."""
    if divisor == 1:
        return channels // reduction
    return max(divisor, int(channels / reduction + divisor / 2) // divisor * divisor)


class SEBlock(nn.Layer):
    """Squeeze, excite, scale. Input and output have the same shape.

    `impl="conv"` and `impl="linear"` compute the same function: a 1x1 conv on a 1x1 map is a
    Linear layer on the channel vector (Paddle's Linear weight is the conv weight transposed).
    """

    def __init__(self, channels: int, options: SEOptions = SEOptions(), name: str = "se",
                 data_format: str = "NCHW") -> None:
        super().__init__()
        hidden = se_hidden(channels, options.reduction, options.divisor)
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
        self._mean_cache: dict[tuple, paddle.Tensor] = {}  # see _mean_weights; not in the state dict
        self._bn_constants: tuple[paddle.Tensor, paddle.Tensor] | None = None  # see _scale_by_batch_norm

    def squeeze(self, x: paddle.Tensor) -> paddle.Tensor:
        """N x C x H x W -> N x C x 1 x 1 (or N x 1 x 1 x C in NHWC); the full map with `none`."""
        if self.options.squeeze == "none":
            return x
        h, w = x.shape[1:3] if self.channel_last else x.shape[2:4]
        if self.options.squeeze == "max":
            # Not x.max(axis=[2, 3]): in Paddle 3.3.1 on CPU its backward takes time quadratic in
            # H*W (1.1 s for one 64 x 28 x 28 map, 11 minutes for 8 x 256 x 56 x 56). The pool's
            # gradient goes to the first maximum where max splits it among exact ties; the forward
            # is identical.
            return F.max_pool2d(x, [h, w], data_format="NHWC" if self.channel_last else "NCHW")
        # The mean as a matrix product with a vector of 1/(H*W). On CPU Paddle's mean is a slow
        # reduction and its backward slower still: forward + backward of one 8 x 256 x 56 x 56 map
        # take ~100 ms, against ~5 ms here. A batch of -1 keeps this valid under paddle.jit.
        hw, c = h * w, self.channels
        if self.channel_last:  # [1, HW] @ [N, HW, C] -> [N, 1, C]: 4-17x quicker than transposing x
            z = paddle.matmul(self._mean_weights([1, hw], x), x.reshape([-1, hw, c]))
            return z.reshape([-1, 1, 1, c])
        return paddle.matmul(x.reshape([-1, hw]), self._mean_weights([hw, 1], x)).reshape([-1, c, 1, 1])

    def _mean_weights(self, shape: list[int], x: paddle.Tensor) -> paddle.Tensor:
        """A `shape` tensor filled with 1/(H*W), in x's dtype and place, made once: inside the
        network each paddle.full costs ~0.07 ms, 1.2 ms per SE-ResNet-50 image at batch 1."""
        hw = shape[0] * shape[1]
        if not paddle.in_dynamic_mode():  # tracing a static graph: there it is a constant op
            return paddle.full(shape, 1.0 / hw, dtype=x.dtype)
        key = (*shape, x.dtype, str(x.place))
        if key not in self._mean_cache:
            self._mean_cache[key] = paddle.full(shape, 1.0 / hw, dtype=x.dtype).to(x.place)
        return self._mean_cache[key]

    def excite(self, z: paddle.Tensor) -> paddle.Tensor:
        """The per-channel weights s (Eq. 3), shaped to broadcast against the input."""
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

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        s = self.excite(self.squeeze(x))
        if self._fast_inference_scale(x, s):
            return self._scale_by_batch_norm(x, s)
        # Out of place: autograd needs x for the gradient of s, and in SE-PRE and SE-Identity the
        # caller still holds x as the shortcut. (In place saves ~1 ms per batch-1 image.)
        return x * s

    def _fast_inference_scale(self, x: paddle.Tensor, s: paddle.Tensor) -> bool:
        """Whether the scale may run as a batch-norm kernel: dygraph, no gradient wanted, fp32
        NCHW on the CPU, one weight per channel. Exported graphs keep the plain multiply.

        The device test is paddle.get_device(), not x.place: under paddle.jit.to_static's default
        bytecode tracing (SOT), reading x.place broke the trace (UnboundLocalError)."""
        return (paddle.in_dynamic_mode() and x.stop_gradient and s.stop_gradient
                and not self.channel_last and self.options.squeeze != "none"
                and x.dtype == paddle.float32 and s.dtype == paddle.float32 and paddle.get_device() == "cpu")

    def _scale_by_batch_norm(self, x: paddle.Tensor, s: paddle.Tensor) -> paddle.Tensor:
        """x * s (Eq. 4) through Paddle's inference batch-norm kernel: the same numbers up to
        float32 rounding. On an AMD EPYC it was bit for bit (except that -0.0 comes out as +0.0: the
        kernel adds its zero bias); on an Intel Xeon with AVX-512 every product came out up to
        2.4e-7 relative (2 ulp) off, because the kernel's 1 / sqrt(1 + 0) is not exactly 1 there.

        On CPU Paddle's broadcasting multiply is slow: 0.27 ms for one 256 x 56 x 56 map, where a
        same-shape add takes 0.04 ms. Inference batch norm with mean 0, variance 1, epsilon 0,
        bias 0 and the gate as its weight computes x * s per channel in 0.08 ms: 1.9 -> 0.6 ms
        per SE-ResNet-50 image. It has no backward, hence inference only. Seen as N*C channels
        of one image, it scales every sample by its own weights."""
        n, c, h, w = x.shape
        # One pair of constants per block, for the last batch size seen: a cache keyed by batch
        # size would grow with every new size a server sees.
        if self._bn_constants is None or self._bn_constants[0].shape[0] != n * c:
            self._bn_constants = (paddle.zeros([n * c]), paddle.ones([n * c]))
        zeros, ones = self._bn_constants
        y = F.batch_norm(x.reshape([1, n * c, h, w]), zeros, ones, weight=s.reshape([n * c]), bias=zeros,
                         training=False, epsilon=0.0)
        return y.reshape([n, c, h, w])


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
