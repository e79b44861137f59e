"""ResNet, ResNeXt and pre-activation ResNet, with and without attention blocks (SE, ECA, CBAM), from one table.

He et al., "Deep Residual Learning for Image Recognition" (ImageNet and CIFAR ResNets);
He et al., "Identity Mappings in Deep Residual Networks" (pre-activation ResNet-164);
Xie et al., "Aggregated Residual Transformations" (ResNeXt);
Hu et al., "Squeeze-and-Excitation Networks", Section 4 and Fig. 3 (SE-ResNet: the SE block sits on
the residual branch after the last BN, before the sum with the shortcut) and Section 6.5 / Fig. 5
(the SE-PRE, SE-POST and SE-Identity integration variants).

Every block calls an attention hook (senet.attention.attention_slot) once at construction; it
returns the registered attention block (SE, ECA, CBAM) or Identity, so a ResNet and its
se_/eca_/cbam_ twins run exactly the same block code. The slot is named `se` whatever the block type,
as in timm's ResNet, so state-dict names are `layer1.0.se.*` for every attention kind.

Stochastic depth (Huang et al. 2016; model.drop_path_rate) drops each block's residual branch, its
attention block included, as timm's ResNet does (see ResNet).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from senet.attention import (
    REGISTRY,
    AttentionOptions,
    AttnHook,
    attention_blocks,
    attention_slot,
    options_from_config,
    split_arch,
)
from senet.layers import BNReLUConv, ConvBN, DropPath, conv2d


class _Residual(nn.Layer):
    """The placement logic shared by every block, pre-activation included. Subclasses define `enter`
    (the branch input and the shortcut), branch_head (up to and including the 3x3 conv), branch_tail
    (the rest of the branch), `join` (the sum and what follows it) and `se`, the attention slot (an
    attention block or Identity).

    placement (Hu et al., Fig. 5; the same for every attention kind):
      standard  on the branch after its last BN, before the sum          (SE)
      pre       on the branch input, before the branch                   (SE-PRE)
      post      after the sum and its ReLU                               (SE-POST)
      identity  on the shortcut, in parallel with the branch             (SE-Identity)
      after_3x3 right after the 3x3 conv (+BN, ReLU) inside the branch   (Section 6.5, "SE 3x3")
    """

    placement = "standard"
    # branch_relu: a ReLU ends the residual branch, after its last BN and before SE and the sum. Not
    # the paper's block, nor the SENet release's (which has no basic-block models): timm's
    # legacy_seresnet18/34 (its SEResNetBlock, trained by timm) have it, and their weights need it.
    # He et al. 2016 ("Identity Mappings", Fig. 4c, "ReLU before addition") found it worse.
    branch_relu = False

    def __init__(self) -> None:
        super().__init__()
        # Stochastic depth on the branch, set by ResNet from model.drop_path_rate; None: off (and no op).
        self.drop_path: DropPath | None = None

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x, shortcut = self.enter(x)
        if self.placement == "pre":
            x = self.se(x)
        out = self.branch_head(x)
        if self.placement == "after_3x3":
            out = self.se(out)
        out = self.branch_tail(out)
        if self.branch_relu:
            out = F.relu(out)
        if self.placement == "standard":
            out = self.se(out)
        elif self.placement == "identity":
            shortcut = self.se(shortcut)
        if self.drop_path is not None:  # the whole branch, after its attention block, before the sum
            out = self.drop_path(out)
        out = self.join(out, shortcut)
        if self.placement == "post":
            out = self.se(out)
        return out

    def enter(self, x: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor]:
        return x, x if self.shortcut is None else self.shortcut(x)

    def join(self, out: paddle.Tensor, shortcut: paddle.Tensor) -> paddle.Tensor:
        return F.relu(out + shortcut)


def _se_channels(placement: str, in_ch: int, inner: int, out_ch: int) -> int:
    """The width of the tensor the attention block sees at each placement."""
    return {"pre": in_ch, "after_3x3": inner}.get(placement, out_ch)


class PadShortcut(nn.Layer):
    """Parameter-free shortcut ("option A", He et al. 2015, Section 4.2, used for the CIFAR ResNets):
    subsample by the stride and zero-pad the new channels, half on each side."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, data_format: str = "NCHW") -> None:
        super().__init__()
        self.stride, self.channel_last = stride, data_format == "NHWC"
        self.pad_lo = (out_ch - in_ch) // 2
        self.pad_hi = out_ch - in_ch - self.pad_lo

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        s = self.stride
        if self.channel_last:
            x = x[:, ::s, ::s, :]
            return F.pad(x, [0, 0, 0, 0, 0, 0, self.pad_lo, self.pad_hi])
        x = x[:, :, ::s, ::s]
        return F.pad(x, [0, 0, self.pad_lo, self.pad_hi, 0, 0, 0, 0])


class BasicBlock(_Residual):
    """Two 3x3 convs (ResNet-18/34 and the CIFAR ResNets)."""

    expansion = 1

    def __init__(
        self,
        in_ch: int,
        planes: int,
        stride: int,
        attn: AttnHook,
        name: str,
        stage: int,
        placement: str = "standard",
        pad_shortcut: bool = False,
        data_format: str = "NCHW",
        branch_relu: bool = False,
        projection: bool = False,
    ) -> None:
        super().__init__()
        out_ch = planes
        self.conv1 = ConvBN(in_ch, planes, 3, stride, data_format=data_format)
        self.conv2 = ConvBN(planes, planes, 3, act=False, data_format=data_format)
        self.shortcut = _make_shortcut(in_ch, out_ch, stride, pad_shortcut, data_format, projection)
        self.placement, self.branch_relu = placement, branch_relu
        # For a basic block "after the 3x3" means after the first 3x3; the second is the last conv.
        self.se = attn(_se_channels(placement, in_ch, planes, out_ch), name + ".se", stage)

    def branch_head(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.conv1(x)

    def branch_tail(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.conv2(x)

    def zero_init_last(self) -> None:
        """Zero the last BN's gamma: the branch then outputs 0 and the block starts as its shortcut."""
        nn.initializer.Constant(0.0)(self.conv2[1].weight)


class Bottleneck(_Residual):
    """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand by 4.

    stride_in_1x1=True puts the stride-2 on the first 1x1 conv, as in the original ResNet (Caffe)
    and the SENet authors' SE-ResNet release; False puts it on the 3x3 conv ("ResNet v1.5", as in
    torchvision, ResNeXt and the authors' SE-ResNeXt). The 3x3 placement keeps more spatial
    information through the 1x1 and costs about 6% more multiply-adds on ResNet-50 (4.09 vs 3.86 G).
    """

    expansion = 4

    def __init__(
        self,
        in_ch: int,
        planes: int,
        stride: int,
        attn: AttnHook,
        name: str,
        stage: int,
        placement: str = "standard",
        groups: int = 1,
        width_per_group: int = 64,
        stride_in_1x1: bool = True,
        data_format: str = "NCHW",
        branch_relu: bool = False,
    ) -> None:
        super().__init__()
        width = int(planes * width_per_group / 64) * groups
        out_ch = planes * self.expansion
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = ConvBN(in_ch, width, 1, s1, data_format=data_format)
        self.conv2 = ConvBN(width, width, 3, s3, groups=groups, data_format=data_format)
        self.conv3 = ConvBN(width, out_ch, 1, act=False, data_format=data_format)
        self.shortcut = _make_shortcut(in_ch, out_ch, stride, False, data_format)
        self.placement, self.branch_relu = placement, branch_relu
        self.se = attn(_se_channels(placement, in_ch, width, out_ch), name + ".se", stage)

    def branch_head(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.conv2(self.conv1(x))

    def branch_tail(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.conv3(x)

    def zero_init_last(self) -> None:
        """Zero the last BN's gamma: the branch then outputs 0 and the block starts as its shortcut."""
        nn.initializer.Constant(0.0)(self.conv3[1].weight)


class PreActBottleneck(_Residual):
    """Pre-activation bottleneck (BN-ReLU-conv x 3), as in ResNet-164.

    There is no BN after the last conv, so "after the last BN" becomes "after the last conv";
    nothing follows the sum, so SE-POST acts on the sum itself. A projection shortcut reads the
    pre-activated input, as in the authors' code. SE-PRE sits at the head of the branch, after the
    block's BN-ReLU and before the first conv: as in the other blocks, the shortcut is not scaled,
    and the BN-ReLU that a projection shortcut shares with the branch runs once.
    """

    expansion = 4

    def __init__(
        self,
        in_ch: int,
        planes: int,
        stride: int,
        attn: AttnHook,
        name: str,
        stage: int,
        placement: str = "standard",
        data_format: str = "NCHW",
    ) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.preact = nn.Sequential(nn.BatchNorm2D(in_ch, data_format=data_format), nn.ReLU())
        self.conv1 = conv2d(in_ch, planes, 1, data_format=data_format)
        self.conv2 = BNReLUConv(planes, planes, 3, stride, data_format=data_format)
        self.conv3 = BNReLUConv(planes, out_ch, 1, data_format=data_format)
        self.shortcut = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = conv2d(in_ch, out_ch, 1, stride, data_format=data_format)
        self.placement = placement
        self.se = attn(_se_channels(placement, in_ch, planes, out_ch), name + ".se", stage)

    def enter(self, x: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor]:
        pre = self.preact(x)
        return pre, x if self.shortcut is None else self.shortcut(pre)

    def branch_head(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.conv2(self.conv1(x))

    def branch_tail(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.conv3(x)

    def join(self, out: paddle.Tensor, shortcut: paddle.Tensor) -> paddle.Tensor:
        return out + shortcut  # no ReLU after the sum in a pre-activation block

    def zero_init_last(self) -> None:
        """Zero the last conv's weight: the branch then outputs 0 and the block starts as its shortcut.

        Here the branch ends in BN -> ReLU -> conv, with no BN after the conv. Zeroing that inner
        BN's gamma instead would also give 0, but its ReLU would then see 0 and pass no gradient, to
        gamma or to the conv, so the branch would stay dead. A zero conv weight still gets a gradient
        (its input is not 0) and the branch learns from the first step, as in Goyal et al.
        """
        nn.initializer.Constant(0.0)(self.conv3[2].weight)


def _make_shortcut(
    in_ch: int, out_ch: int, stride: int, pad: bool, data_format: str, projection: bool = False
) -> nn.Layer | None:
    """Identity where the shapes match (unless `projection`), else a parameter-free pad or a 1x1 conv + BN."""
    if stride == 1 and in_ch == out_ch and not projection:
        return None
    if pad:
        return PadShortcut(in_ch, out_ch, stride, data_format)
    return ConvBN(in_ch, out_ch, 1, stride, act=False, data_format=data_format)  # projection, "option B"


class ResNet(nn.Layer):
    """Stem, stages `layer1..layerN`, global average pool, `fc`.

    stem="imagenet": 7x7/2 conv, BN, ReLU, 3x3/2 max pool, widths 64-128-256-512. The pool
      (stem_pool) is "caffe": no padding, output size rounded up, as in Caffe and so in the original
      ResNet and the SENet authors' release (timm's legacy_se* weights); or "pytorch": padding 1,
      as in Torch's ResNeXt, torchvision, timm and PaddleClas. At even sizes both give the same
      output size but different windows: the caffe pool never sees the zero-padded border.
    stem="cifar":    3x3 conv (with BN-ReLU unless pre-activation), widths 16-32-64.
    """

    def __init__(
        self,
        block: type,
        layers: Sequence[int],
        num_classes: int = 1000,
        stem: str = "imagenet",
        attn: AttnHook | None = None,
        placement: str = "standard",
        groups: int = 1,
        width_per_group: int = 64,
        stride_in_1x1: bool = True,
        zero_init_residual: bool = False,
        data_format: str = "NCHW",
        stem_pool: str = "caffe",
        branch_relu: bool = False,
        first_block_projection: bool = False,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        attn = attn or attention_slot(None, None)
        preact = block is PreActBottleneck
        self.data_format = data_format
        self.stem_pool = stem_pool if stem == "imagenet" else None  # read by checkpoint.check_stem_era
        if stem == "imagenet":
            widths, in_ch = (64, 128, 256, 512), 64
            pool = (
                nn.MaxPool2D(3, 2, 0, ceil_mode=True, data_format=data_format)
                if stem_pool == "caffe"
                else nn.MaxPool2D(3, 2, 1, data_format=data_format)
            )
            self.stem = nn.Sequential(ConvBN(3, 64, 7, 2, data_format=data_format), pool)
        else:
            widths, in_ch = (16, 32, 64), 16
            self.stem = (
                conv2d(3, 16, 3, data_format=data_format) if preact else ConvBN(3, 16, 3, data_format=data_format)
            )
        # Each block type takes only the options that mean something to it.
        block_kw: dict = dict(placement=placement, data_format=data_format)
        if block is BasicBlock:
            block_kw.update(pad_shortcut=stem == "cifar", branch_relu=branch_relu)
        elif block is Bottleneck:
            block_kw.update(
                groups=groups, width_per_group=width_per_group, stride_in_1x1=stride_in_1x1, branch_relu=branch_relu
            )
        self.stages = []
        # Stochastic depth: block k of the net's N (0-based, across stages) drops its branch with probability
        # drop_path_rate * k / (N - 1), from 0 at the first block to the full rate at the last: timm's
        # make_blocks ("stochastic depth linear decay rule"; Huang et al.'s linear rule reaches the rate at
        # the last block too). Blocks at rate 0 get no DropPath, as in timm.
        block_rates = [drop_path_rate * k / max(sum(layers) - 1, 1) for k in range(sum(layers))]
        for i, (planes, n) in enumerate(zip(widths, layers)):
            blocks = []
            for j in range(n):
                stride = 2 if (j == 0 and i > 0) else 1
                # first_block_projection: a 1x1 conv + BN shortcut on the first block of stage 1 even
                # though its shapes match. The original ResNet has an identity there; PaddleClas's
                # ResNet18/34 have this projection (its use_first_short_conv, on by default), and
                # their weights need it. Bottleneck nets have a projection there anyway (64 -> 256).
                if block is BasicBlock:
                    block_kw["projection"] = first_block_projection and i == 0 and j == 0
                blocks.append(block(in_ch, planes, stride, attn, f"layer{i + 1}.{j}", i + 1, **block_kw))
                rate = block_rates[sum(layers[:i]) + j]
                if rate > 0:
                    blocks[-1].drop_path = DropPath(rate)
                in_ch = planes * block.expansion
            stage = nn.Sequential(*blocks)
            setattr(self, f"layer{i + 1}", stage)
            self.stages.append(stage)
        # Pre-activation nets end with a BN-ReLU, since their blocks end with a bare conv.
        self.final_act = (
            nn.Sequential(nn.BatchNorm2D(in_ch, data_format=data_format), nn.ReLU()) if preact else nn.Identity()
        )
        self.pool = nn.AdaptiveAvgPool2D(1, data_format=data_format)
        self.fc = nn.Linear(in_ch, num_classes)
        self.num_features = in_ch
        _init_weights(self, zero_init_residual)

    def forward_features(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.final_act(x)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.fc(self.pool(self.forward_features(x)).flatten(1))


def _init_weights(model: nn.Layer, zero_init_residual: bool) -> None:
    """Convs are He-initialised where they are built (senet.layers.conv2d) and BN starts at (1, 0).
    Here: each attention block's own init (SE's and CBAM's FCs get the same He fan-out init whichever
    impl), and the classifier, uniform in +-1/sqrt(fan_in), as in torchvision."""
    for block in attention_blocks(model).values():
        block.init_weights()
    bound = 1.0 / math.sqrt(model.fc.weight.shape[0])
    nn.initializer.Uniform(-bound, bound)(model.fc.weight)
    nn.initializer.Uniform(-bound, bound)(model.fc.bias)
    if zero_init_residual:  # Goyal et al.: every block's residual branch starts at 0, the block as its shortcut
        for layer in model.sublayers():
            if isinstance(layer, (BasicBlock, Bottleneck, PreActBottleneck)):
                layer.zero_init_last()


@dataclass(frozen=True)
class Arch:
    block: type
    layers: tuple[int, ...]
    stem: str = "imagenet"
    groups: int = 1
    width_per_group: int = 64
    stride_in_1x1: bool = True  # each architecture's original placement; see Bottleneck
    # The original's stem pool (see ResNet): Caffe's for ResNet (He et al.'s release, and the SENet
    # release for SE-ResNet and SE-ResNeXt alike), Torch's padded one for ResNeXt (Xie et al.'s release).
    stem_pool: str = "caffe"


# The one table of architectures. `se_<name>`, `eca_<name>`, `cbam_<name>` are the same network with
# attention blocks (senet.attention.REGISTRY).
MODELS: dict[str, Arch] = {
    "resnet18": Arch(BasicBlock, (2, 2, 2, 2)),
    "resnet34": Arch(BasicBlock, (3, 4, 6, 3)),
    "resnet50": Arch(Bottleneck, (3, 4, 6, 3)),
    "resnet101": Arch(Bottleneck, (3, 4, 23, 3)),
    "resnet152": Arch(Bottleneck, (3, 8, 36, 3)),
    "resnext50_32x4d": Arch(
        Bottleneck, (3, 4, 6, 3), groups=32, width_per_group=4, stride_in_1x1=False, stem_pool="pytorch"
    ),
    "resnext101_32x4d": Arch(
        Bottleneck, (3, 4, 23, 3), groups=32, width_per_group=4, stride_in_1x1=False, stem_pool="pytorch"
    ),
    # CIFAR: 6n+2 layers of basic blocks (He et al. 2015, Section 4.2), 9n+2 pre-activation bottlenecks.
    "resnet20": Arch(BasicBlock, (3, 3, 3), stem="cifar"),
    "resnet32": Arch(BasicBlock, (5, 5, 5), stem="cifar"),
    "resnet44": Arch(BasicBlock, (7, 7, 7), stem="cifar"),
    "resnet56": Arch(BasicBlock, (9, 9, 9), stem="cifar"),
    "resnet110": Arch(BasicBlock, (18, 18, 18), stem="cifar"),
    "resnet164": Arch(PreActBottleneck, (18, 18, 18), stem="cifar"),
}


def all_archs() -> list[str]:
    """Every architecture name: each MODELS key and its `<attention>_` twins, one per registered block."""
    return list(MODELS) + [f"{kind}_{name}" for kind in REGISTRY for name in MODELS]


def known_arch(name: str) -> str:
    """Raise a ValueError naming the known architectures (and the nearest one) for an unknown name."""
    if split_arch(name)[1] in MODELS or name.startswith("ppim."):
        return name
    known = all_archs()
    near = difflib.get_close_matches(name, known, n=1, cutoff=0.4)
    hint = f" Did you mean '{near[0]}'?" if near else ""
    raise ValueError(f"unknown model.arch '{name}'.{hint} Known: {', '.join(known)}, or ppim.<name> for a ppim model")


def create_model(
    arch: str,
    num_classes: int = 1000,
    attention: AttentionOptions | None = None,
    stride_in_1x1: bool | None = None,
    zero_init_residual: bool = False,
    data_format: str = "NCHW",
    stem_pool: str | None = None,
    branch_relu: bool = False,
    first_block_projection: bool = False,
    drop_path_rate: float = 0.0,
) -> nn.Layer:
    """Build `arch`: a MODELS key, optionally prefixed by a registered attention (`se_`, `eca_`,
    `cbam_`), or `ppim.<name>`.

    `attention` tunes the blocks of a prefixed model (its options type, e.g. SEOptions for `se_`;
    None: the defaults) and must be None otherwise. `stride_in_1x1` and `stem_pool` left None follow
    the architecture's original (MODELS); they depend on the base architecture only, so a model and
    its attention twins always get the same ones. `drop_path_rate`: stochastic depth (see ResNet).
    """
    known_arch(arch)
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"model.drop_path_rate={drop_path_rate} must be in [0, 1)")
    if arch.startswith("ppim."):
        if drop_path_rate:
            raise ValueError(f"model.drop_path_rate: {arch} is a ppim model, built by ppim; leave it 0")
        return _create_ppim(arch[5:], num_classes)
    kind, base = split_arch(arch)
    spec = MODELS[base]
    if stem_pool is not None and spec.stem != "imagenet":
        raise ValueError(f"model.stem_pool={stem_pool}: {arch} has a CIFAR stem without a pool; leave it unset")
    if stem_pool not in (None, "caffe", "pytorch"):
        raise ValueError(f"model.stem_pool: {stem_pool!r} is not one of caffe, pytorch")
    if first_block_projection and spec.stem != "imagenet":
        raise ValueError(
            f"model.first_block_projection: {arch} has a CIFAR stem with parameter-free shortcuts; leave it false"
        )
    if branch_relu and spec.block is PreActBottleneck:
        raise ValueError(f"model.branch_relu: {arch}'s pre-activation blocks end in a bare conv; leave it false")
    options = None
    if kind is not None:
        options = attention if attention is not None else kind.options()
        if not isinstance(options, kind.options):
            raise TypeError(f"{arch} takes {kind.options.__name__}, got {type(options).__name__}")
        bad = [s for s in options.stages or () if not 1 <= s <= len(spec.layers)]
        if bad:
            raise ValueError(f"{options.section}.stages {list(options.stages)}: {arch} has stages 1-{len(spec.layers)}")
    elif attention is not None:
        raise ValueError(
            f"{arch} has no attention blocks; attention options need a prefixed arch "
            f"({', '.join(k + '_' for k in REGISTRY)})"
        )
    return ResNet(
        spec.block,
        spec.layers,
        num_classes,
        stem=spec.stem,
        attn=attention_slot(kind, options, data_format),
        placement=options.placement if options else "standard",
        groups=spec.groups,
        width_per_group=spec.width_per_group,
        stride_in_1x1=spec.stride_in_1x1 if stride_in_1x1 is None else stride_in_1x1,
        zero_init_residual=zero_init_residual,
        data_format=data_format,
        stem_pool=spec.stem_pool if stem_pool is None else stem_pool,
        branch_relu=branch_relu,
        first_block_projection=first_block_projection,
        drop_path_rate=drop_path_rate,
    )


def _create_ppim(name: str, num_classes: int) -> nn.Layer:
    import ppim  # it pulls in Paddle's cpp_extension, whose ccache warning senet.runtime.quiet_paddle drops

    factory = getattr(ppim, name, None)
    names = [n for group in ppim.models_dict.values() for n in group] if hasattr(ppim, "models_dict") else []
    if not callable(factory) or (names and name not in names):
        near = difflib.get_close_matches(name, names, n=1)
        hint = f" Did you mean 'ppim.{near[0]}'?" if near else ""
        raise ValueError(f"unknown ppim model '{name}'.{hint}")
    return _PpimClassifier(factory(pretrained=False, class_dim=num_classes))  # weights never downloaded


class _PpimClassifier(nn.Layer):
    """Wraps a ppim model so that its output is always [N, classes]: some ppim heads squeeze the
    batch axis away for a batch of one."""

    def __init__(self, model: nn.Layer) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.model(x).reshape([x.shape[0], -1])


def build_model(cfg: dict) -> nn.Layer:
    """The one way to build a model: from a resolved config (see senet.config). The options of a
    prefixed arch come from its section, model.se / model.eca / model.cbam."""
    m = cfg["model"]
    kind, _ = split_arch(m["arch"])
    # A section absent from a config saved before it existed takes its defaults.
    options = options_from_config(kind, m.get(kind.name)) if kind is not None else None
    return create_model(
        m["arch"],
        num_classes=m["num_classes"],
        attention=options,
        stride_in_1x1=m["stride_in_1x1"],
        zero_init_residual=m["zero_init_residual"],
        data_format=cfg.get("train", {}).get("data_format", "NCHW"),
        # absent from configs saved before they existed: today's network
        stem_pool=m.get("stem_pool"),
        branch_relu=m.get("branch_relu", False),
        first_block_projection=m.get("first_block_projection", False),
        drop_path_rate=m.get("drop_path_rate", 0.0),
    )
