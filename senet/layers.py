"""The conv-BN helpers the ResNets are built from, and stochastic depth (DropPath). The attention blocks
(SE, ECA, CBAM) are in senet.attention."""

from __future__ import annotations

import paddle
import paddle.nn as nn


def conv2d(
    in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, data_format: str = "NCHW"
) -> nn.Conv2D:
    """A bias-free conv with He (MSRA) normal init in fan-out mode, as in torchvision's ResNet.

    The initializer is given at construction so that each weight is drawn once (re-initialising
    afterwards doubled model build time).
    """
    fan_out = out_ch * kernel * kernel
    init = paddle.ParamAttr(initializer=nn.initializer.KaimingNormal(fan_in=fan_out))
    return nn.Conv2D(
        in_ch,
        out_ch,
        kernel,
        stride=stride,
        padding=kernel // 2,
        groups=groups,
        weight_attr=init,
        bias_attr=False,
        data_format=data_format,
    )


class ConvBN(nn.Sequential):
    """Conv (no bias: the BN after it has one) -> BN -> optional ReLU."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
        data_format: str = "NCHW",
    ) -> None:
        layers = [
            conv2d(in_ch, out_ch, kernel, stride, groups, data_format),
            nn.BatchNorm2D(out_ch, data_format=data_format),
        ]
        if act:
            layers.append(nn.ReLU())
        super().__init__(*layers)


class BNReLUConv(nn.Sequential):
    """Pre-activation unit (He et al., "Identity Mappings in Deep Residual Networks"): BN -> ReLU -> conv."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, data_format: str = "NCHW") -> None:
        super().__init__(
            nn.BatchNorm2D(in_ch, data_format=data_format),
            nn.ReLU(),
            conv2d(in_ch, out_ch, kernel, stride, 1, data_format),
        )


def drop_path(x: paddle.Tensor, rate: float, keep_mask: paddle.Tensor | None = None) -> paddle.Tensor:
    """x with each sample's whole tensor zeroed with probability `rate`, the others scaled by 1 / (1 - rate),
    so that the expectation over the draw is x (timm's drop_path with scale_by_keep).

    `keep_mask` [N, 1, ..., 1] of 0/1 replaces the Bernoulli draw (the tests give timm's). The draw comes
    from Paddle's generator, which checkpoints save and restore, so a resumed run draws the same masks.
    """
    keep = 1.0 - rate
    if keep_mask is None:
        shape = [x.shape[0]] + [1] * (x.ndim - 1)
        keep_mask = paddle.bernoulli(paddle.full(shape, keep, dtype="float32"))
    return x * (keep_mask / keep).astype(x.dtype)


class DropPath(nn.Layer):
    """Stochastic depth (Huang et al., "Deep Networks with Stochastic Depth", 2016) on a residual branch, as
    timm's DropPath: while training, each sample's branch is dropped with probability `rate` and kept
    scaled by 1 / (1 - rate); in eval mode it is the identity, so an exported graph holds no op of it (the
    trace takes the eval branch of a Python `if`)."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop path rate {rate} must be in [0, 1)")
        self.rate = rate

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        return drop_path(x, self.rate)

    def extra_repr(self) -> str:
        return f"rate={self.rate:.4g}"
