"""The conv-BN helpers the ResNets are built from. The attention blocks (SE, ECA, CBAM) are in
senet.attention."""

from __future__ import annotations

import paddle
import paddle.nn as nn


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
