"""Convert timm, torchvision and PaddleClas ResNet / SE-ResNet / ResNeXt / SE-ResNeXt weights exactly.

A conversion reads the file (safetensors, torch zip or Paddle pickle: never running pickled code),
recognises the key layout, renames every tensor to ours (transposing Linear weights where Paddle's
[in, out] layout differs from torch's [out, in], and turning PaddleClas's Linear SE layers into our
1x1 convs), infers the architecture from the shapes, builds that model and requires a one-to-one fit:
a source tensor with no destination, a destination with no source, or a shape that does not fit is an
error listing them. The only tensors left behind are torch's BatchNorm `num_batches_tracked` counters,
which Paddle's BatchNorm has no use for (they matter only with momentum=None). OUT_DIR gets
`model.safetensors` and a `config.yaml` that rebuilds the source network (stride placement, stem pool,
SE options, num_classes), written to a temporary folder and renamed into place.

What a layout implies that its weights cannot show is fixed per source (see docs/weights.md):
timm's ResNet family, torchvision and PaddleClas put the stride on the 3x3 conv and pad the stem
pool (`stem_pool: pytorch`); timm's legacy_se* models are the SENet authors' Caffe release:
Caffe's stem pool, the stride on the 1x1 conv for SE-ResNet and on the 3x3 for SE-ResNeXt. What the
weights do show sets the rest: SE widths rounded to multiples of 8 (timm's seresnet18/34:
model.se.divisor 8), a shortcut on stage 1's first basic block (PaddleClas's ResNet18/34:
model.first_block_projection), and timm's legacy basic block, whose ReLU before SE has no tensor of its
own: the legacy layout with basic blocks (legacy_seresnet18/34) sets model.branch_relu.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import yaml
from safetensors.numpy import save

from senet.config import ConfigError, config_changes, validate
from senet.folders import swap_into_place, temp_folder_for
from senet.formats import CheckpointError, read_safetensors, unpickle_restricted
from senet.limits import regular_file_problem, shared_arrays
from senet.weights.torchfile import read_torch_state_dict

SOURCES = {
    "timm": ("timm_resnet", "timm_legacy"),
    "torchvision": ("timm_resnet",),
    "paddleclas": ("paddleclas_resnet", "paddleclas_resnext"),
}
BN_TORCH_TO_PADDLE = {"weight": "weight", "bias": "bias", "running_mean": "_mean", "running_var": "_variance"}
BN_PADDLE_TO_TORCH = {v: k for k, v in BN_TORCH_TO_PADDLE.items()}
NOT_SUPPORTED = (
    "Not supported: Caffe .caffemodel files (timm's legacy_se* weights are their exact conversion: use those); "
    "torch files in the legacy pre-1.6 format; deep-stem and avg-pool-shortcut variants (timm resnet*c/d/s/t, "
    "PaddleClas *_vd, senet154); ECA and CBAM weights (only plain and SE networks convert); widths without "
    "an architecture here (wide_resnet*, resnext*_32x8d, *_64x4d)"
)


class ConversionError(ValueError):
    """A file that cannot be converted; the message names it, the problem, and what would work."""


# ---------------------------------------------------------------------------------------------------
# Key layouts. A rule is (source template, our template, transform). Fields: {s} stage, {b} block,
# {k} conv number, {w} weight|bias, {bn} a BatchNorm tensor (torch or Paddle names, per side);
# {s0} / {k0} are zero-based on the source side (PaddleClas counts from 0, we count from 1).

_FIELD_RE = {
    "s": r"\d+",
    "b": r"\d+",
    "k": r"\d+",
    "s0": r"\d+",
    "k0": r"\d+",
    "w": r"weight|bias",
    "bn_torch": r"weight|bias|running_mean|running_var",
    "bn_paddle": r"weight|bias|_mean|_variance",
}


@dataclass(frozen=True)
class Layout:
    name: str
    description: str
    torch_names: bool  # source BN tensors are named like torch's (running_mean, ...), Linear weights [out, in]
    rules: tuple[tuple[str, str, str | None], ...]
    stem_pool: str  # what the source network does, which its weights cannot show

    def _compile(self, template: str, source_side: bool) -> re.Pattern:
        def field(m: re.Match) -> str:
            name = m.group(1)
            if name == "bn":
                name = "bn_torch" if (source_side and self.torch_names) else "bn_paddle"
            return f"(?P<{m.group(1)}>{_FIELD_RE[name]})"

        return re.compile(re.sub(r"\\\{(\w+)\\\}", field, re.escape(template)) + "$")

    def forward(self, name: str) -> tuple[str, str | None] | None:
        """Our name and the transform for a source tensor name, or None if no rule takes it."""
        for src, ours, transform in self.rules:
            m = self._compile(src, True).match(name)
            if m:
                f = dict(m.groupdict())
                if "s0" in f:
                    f["s"] = str(int(f.pop("s0")) + 1)
                if "k0" in f:
                    f["k"] = str(int(f.pop("k0")) + 1)
                if "bn" in f and self.torch_names:
                    f["bn"] = BN_TORCH_TO_PADDLE[f["bn"]]
                return ours.format(**f), transform
        return None

    def inverse(self, name: str) -> tuple[str, str | None] | None:
        """The source name for one of our tensor names (for export); only for torch-named layouts."""
        for src, ours, transform in self.rules:
            m = self._compile(ours, False).match(name)
            if m:
                f = dict(m.groupdict())
                if "bn" in f:
                    f["bn"] = BN_PADDLE_TO_TORCH[f["bn"]]
                return src.format(**f), transform
        return None


_BLOCK_RULES = lambda pre, bn, down, se: (  # noqa: E731  (the per-block part shared by timm's two layouts)
    (pre + ".conv{k}.weight", "layer{s}.{b}.conv{k}.0.weight", None),
    (pre + "." + bn + "{k}.{bn}", "layer{s}.{b}.conv{k}.1.{bn}", None),
    (pre + "." + down + ".0.weight", "layer{s}.{b}.shortcut.0.weight", None),
    (pre + "." + down + ".1.{bn}", "layer{s}.{b}.shortcut.1.{bn}", None),
    (pre + "." + se + ".fc{k}.{w}", "layer{s}.{b}.se.fc{k}.{w}", None),
)

LAYOUTS = {
    "timm_resnet": Layout(
        "timm_resnet",
        "timm ResNet family / torchvision (conv1, layerN, fc)",
        True,
        (
            ("conv1.weight", "stem.0.0.weight", None),
            ("bn1.{bn}", "stem.0.1.{bn}", None),
            *_BLOCK_RULES("layer{s}.{b}", "bn", "downsample", "se"),
            ("fc.weight", "fc.weight", "transpose"),
            ("fc.bias", "fc.bias", None),
        ),
        stem_pool="pytorch",
    ),
    "timm_legacy": Layout(
        "timm_legacy",
        "timm legacy_se* (the SENet authors' Caffe release: layer0, se_module, last_linear)",
        True,
        (
            ("layer0.conv1.weight", "stem.0.0.weight", None),
            ("layer0.bn1.{bn}", "stem.0.1.{bn}", None),
            *_BLOCK_RULES("layer{s}.{b}", "bn", "downsample", "se_module"),
            ("last_linear.weight", "fc.weight", "transpose"),
            ("last_linear.bias", "fc.bias", None),
        ),
        stem_pool="caffe",
    ),
    "paddleclas_resnet": Layout(
        "paddleclas_resnet",
        "PaddleClas ResNet (legendary_models: stem, blocks, fc)",
        False,
        (
            ("stem.0.conv.weight", "stem.0.0.weight", None),
            ("stem.0.bn.{bn}", "stem.0.1.{bn}", None),
            ("blocks.{s}.{b}.conv{k0}.conv.weight", "layer{s}.{b}.conv{k}.0.weight", None),
            ("blocks.{s}.{b}.conv{k0}.bn.{bn}", "layer{s}.{b}.conv{k}.1.{bn}", None),
            ("blocks.{s}.{b}.short.conv.weight", "layer{s}.{b}.shortcut.0.weight", None),
            ("blocks.{s}.{b}.short.bn.{bn}", "layer{s}.{b}.shortcut.1.{bn}", None),
            ("fc.{w}", "fc.{w}", None),
        ),
        stem_pool="pytorch",
    ),
    "paddleclas_resnext": Layout(
        "paddleclas_resnext",
        "PaddleClas ResNeXt / SE_ResNeXt (model_zoo: conv, bb_S_B, out)",
        False,
        (
            ("conv._conv.weight", "stem.0.0.weight", None),
            ("conv._batch_norm.{bn}", "stem.0.1.{bn}", None),
            ("bb_{s0}_{b}.conv{k0}._conv.weight", "layer{s}.{b}.conv{k}.0.weight", None),
            ("bb_{s0}_{b}.conv{k0}._batch_norm.{bn}", "layer{s}.{b}.conv{k}.1.{bn}", None),
            ("bb_{s0}_{b}.short._conv.weight", "layer{s}.{b}.shortcut.0.weight", None),
            ("bb_{s0}_{b}.short._batch_norm.{bn}", "layer{s}.{b}.shortcut.1.{bn}", None),
            ("bb_{s0}_{b}.scale.squeeze.weight", "layer{s}.{b}.se.fc1.weight", "linear_to_conv"),
            ("bb_{s0}_{b}.scale.squeeze.bias", "layer{s}.{b}.se.fc1.bias", None),
            ("bb_{s0}_{b}.scale.excitation.weight", "layer{s}.{b}.se.fc2.weight", "linear_to_conv"),
            ("bb_{s0}_{b}.scale.excitation.bias", "layer{s}.{b}.se.fc2.bias", None),
            ("out.{w}", "fc.{w}", None),
        ),
        stem_pool="pytorch",
    ),
}


def _transform(value: np.ndarray, transform: str | None) -> np.ndarray:
    if transform == "transpose":  # torch Linear [out, in] <-> Paddle Linear [in, out]
        return np.ascontiguousarray(value.T)
    if transform == "linear_to_conv":  # Paddle Linear [in, out] -> 1x1 conv [out, in, 1, 1]
        return np.ascontiguousarray(value.T[:, :, None, None])
    return value


# Variants whose tensors would partly fit but whose network differs from every one here: named, with why.
_VARIANTS = (
    (
        r"conv1\.0\.weight$|stem\.1\.conv\.weight$|conv1_1\._conv\.weight$|layer0\.conv2\.weight$",
        "a deep (three-conv) stem: timm resnet*c/d/s/t, PaddleClas *_vd or senet154. This project has only the "
        "original 7x7 stem",
    ),
    (r"downsample\.2\.", "an average-pool shortcut (the 'd' variants); the shortcuts here are a strided 1x1 conv"),
    # timm's EcaModule is `se.conv` ([1, 1, k], as our ECA block's). Conversion reads plain and SE networks
    # only, and every timm ecaresnet* (26t, 50d, 50t, light, 101d, 200d, 269d, the pruned 50d/101d) has
    # avg_down shortcuts, all but ecaresnetlight a deep stem too: the rules above refuse those first.
    (
        r"\.se\.conv\.weight$",
        "ECA attention (timm ecaresnet*): conversion reads plain and SE networks only, and "
        "timm's ecaresnet* also have a deep stem or an average-pool shortcut, which this project does not build; "
        "train an eca_ model here instead",
    ),
)


def _refuse_variants(raw: dict[str, np.ndarray], path: str) -> None:
    for pattern, why in _VARIANTS:
        hit = next((k for k in raw if re.search(pattern, k)), None)
        if hit:
            raise ConversionError(f"{path}: {hit!r} shows {why}. {NOT_SUPPORTED}")


def detect_layout(raw: dict[str, np.ndarray], path: str) -> str:
    """The key layout of a state dict, or a ConversionError naming the known ones."""
    keys = set(raw)
    # Before the variants: our own blocks' keys (layer1.0.conv1.0.weight, ECA's se.conv) match their patterns.
    if "stem.0.0.weight" in keys and "fc.weight" in keys:
        raise ConversionError(f"{path} is already in this project's layout: load it with -o model.weights=")
    _refuse_variants(raw, path)
    if {"layer0.conv1.weight", "last_linear.weight"} <= keys:
        return "timm_legacy"
    if {"conv1.weight", "layer1.0.conv1.weight", "fc.weight"} <= keys:
        return "timm_resnet"
    if {"stem.0.conv.weight", "blocks.0.conv0.conv.weight", "fc.weight"} <= keys:
        return "paddleclas_resnet"
    if {"conv._conv.weight", "bb_0_0.conv0._conv.weight", "out.weight"} <= keys:
        return "paddleclas_resnext"
    sample = ", ".join(sorted(keys)[:4])
    raise ConversionError(
        f"{path}: unknown weight layout (keys like {sample}). Known: "
        + "; ".join(f"{n}: {lay.description}" for n, lay in LAYOUTS.items())
        + ". "
        + NOT_SUPPORTED
    )


def _paddleclas_blocks(raw: dict[str, np.ndarray], path: str) -> dict[str, np.ndarray]:
    """PaddleClas's ResNet numbers its blocks 0..N-1 across stages; the first block of each stage has a
    projection shortcut `short`, so those mark where stages start (block 0 starts stage 1 either way: its
    `short` in ResNet18/34 is use_first_short_conv, model.first_block_projection here). Rename blocks.N.x
    to blocks.S.B.x."""
    starts = sorted({0} | {int(m.group(1)) for k in raw if (m := re.match(r"blocks\.(\d+)\.short\.", k))})
    out = {}
    for k, v in raw.items():
        m = re.match(r"blocks\.(\d+)\.(.*)", k)
        if m:
            n = int(m.group(1))
            stage = max(i for i, s in enumerate(starts) if s <= n)
            k = f"blocks.{stage + 1}.{n - starts[stage]}.{m.group(2)}"
        out[k] = v
    return out


@dataclass
class Converted:
    model_cfg: dict  # the `model` section that rebuilds the source network
    weights: dict[str, np.ndarray]  # our names, float32
    layout: str
    dropped: list[str]  # num_batches_tracked counters
    source_params: int  # elements of the source's learnable tensors (BN running statistics excluded)
    model: Any = None  # our model with the weights loaded


def _first(items: list[str], n: int = 6) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def rename(raw: dict[str, np.ndarray], layout_name: str, path: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """(tensors under our names, as float32; the dropped BN counters). Unplaced source tensors are an error."""
    layout = LAYOUTS[layout_name]
    if layout_name == "paddleclas_resnet":
        raw = _paddleclas_blocks(raw, path)
    out, dropped, unplaced = {}, [], []
    for name, value in raw.items():
        if name.endswith(".num_batches_tracked"):
            dropped.append(name)
            continue
        hit = layout.forward(name)
        if hit is None:
            unplaced.append(name)
            continue
        if value.dtype.kind != "f":
            raise ConversionError(
                f"{path}: tensor {name!r} is {value.dtype}, not floating point; is this a "
                f"quantised model? Only float weights convert"
            )
        ours, transform = hit
        out[ours] = _transform(np.asarray(value, dtype=np.float32), transform)
    if unplaced:
        raise ConversionError(
            f"{path}: {len(unplaced)} source tensors have no destination in a "
            f"{layout.description} model: {_first(unplaced)}"
        )
    return out, dropped


def infer_model(weights: dict[str, np.ndarray], layout_name: str, path: str) -> dict:
    """The `model` config section of the network these (renamed) weights belong to."""
    from senet.resnet import MODELS, Bottleneck

    def shape(name: str) -> tuple[int, ...]:
        if name not in weights:
            raise ConversionError(f"{path}: no tensor for {name!r}; the file is incomplete or of another model")
        return tuple(weights[name].shape)

    blocks = sorted(
        {
            (int(m.group(1)), int(m.group(2)))
            for k in weights
            if (m := re.match(r"layer(\d+)\.(\d+)\.conv1\.0\.weight$", k))
        }
    )
    stages = sorted({s for s, _ in blocks})
    if stages != [1, 2, 3, 4]:
        raise ConversionError(f"{path}: stages {stages} found; the ImageNet ResNets here have stages 1-4")
    layers = tuple(sum(1 for s, _ in blocks if s == stage) for stage in stages)
    bottleneck = "layer1.0.conv3.0.weight" in weights
    width = shape("layer1.0.conv1.0.weight")[0]
    groups = width // shape("layer1.0.conv2.0.weight")[1] if bottleneck else 1
    per_group = width // groups if bottleneck else 64
    arch = next(
        (
            n
            for n, a in MODELS.items()
            if a.stem == "imagenet"
            and a.layers == layers
            and (a.block is Bottleneck) == bottleneck
            and a.groups == groups
            and (not bottleneck or a.width_per_group == per_group)
        ),
        None,
    )
    if arch is None:
        kind = f"{'bottleneck' if bottleneck else 'basic'} blocks {list(layers)}, {groups} groups of width {per_group}"
        names = [n for n, a in MODELS.items() if a.stem == "imagenet"]
        raise ConversionError(f"{path}: no architecture here has {kind}. Known: {', '.join(names)}. {NOT_SUPPORTED}")
    se_blocks = [(s, b) for s, b in blocks if f"layer{s}.{b}.se.fc1.weight" in weights]
    se: dict[str, Any] = {"reduction": 16, "divisor": 1, "impl": "conv", "bias": True, "stages": None}
    if se_blocks:
        arch = "se_" + arch
        se_stages = sorted({s for s, _ in se_blocks})
        partial = [s for s in se_stages if sum(1 for x in se_blocks if x[0] == s) != layers[s - 1]]
        if partial:
            raise ConversionError(
                f"{path}: SE blocks in only some blocks of stage(s) {partial}; here SE is per stage (model.se.stages)"
            )
        se["stages"] = None if se_stages == stages else se_stages
        pairs = {shape(f"layer{s}.{b}.se.fc1.weight")[1::-1] for s, b in se_blocks}  # (C, hidden)
        se["reduction"], se["divisor"] = _se_widths(pairs, path)
        se["bias"] = f"layer{se_blocks[0][0]}.{se_blocks[0][1]}.se.fc1.bias" in weights
    num_classes = shape("fc.weight")[1]
    layout = LAYOUTS[layout_name]
    # Where the stride goes is not in the weights: timm's ResNet, torchvision and PaddleClas put it on
    # the 3x3 conv; the SENet release (timm legacy) on the 1x1 for SE-ResNet, the 3x3 for SE-ResNeXt.
    stride_in_1x1 = None
    if bottleneck:
        stride_in_1x1 = layout_name == "timm_legacy" and groups == 1
    # timm's legacy_seresnet18/34 (SEResNetBlock; trained by timm, the SENet release has no basic-block
    # models) put a ReLU after the second BN, before SE: model.branch_relu. Its legacy bottlenecks do not.
    branch_relu = layout_name == "timm_legacy" and not bottleneck
    # A shortcut on stage 1's first block where the shapes match: PaddleClas's ResNet18/34
    # (use_first_short_conv); bottleneck nets have one there anyway.
    first_block_projection = not bottleneck and "layer1.0.shortcut.0.weight" in weights
    return {
        "arch": arch,
        "num_classes": num_classes,
        "stride_in_1x1": stride_in_1x1,
        "stem_pool": layout.stem_pool,
        "branch_relu": branch_relu,
        "first_block_projection": first_block_projection,
        "se": se,
    }


def _se_widths(pairs: set[tuple[int, int]], path: str) -> tuple[int, int]:
    """(reduction, divisor) that give every (channels, hidden) pair: the paper's C // r (divisor 1) if
    one r fits, else timm's rounding to multiples of 8 (seresnet18/34); r = 16 where it fits."""
    from senet.attention import se_hidden

    for divisor in (1, 8):
        fits = [
            r for r in range(1, max(c for c, _ in pairs) + 1) if all(se_hidden(c, r, divisor) == h for c, h in pairs)
        ]
        if fits:
            return (16 if 16 in fits else fits[-1]), divisor
    widths = ", ".join(f"{c}->{h}" for c, h in sorted(pairs))
    raise ConversionError(
        f"{path}: the SE widths ({widths}) are neither C // r for one reduction r nor C / r "
        f"rounded to multiples of 8 (timm's seresnet*)"
    )


def plain_or_se(arch: str) -> None:
    """Refuse an architecture with another attention block than SE: the layouts here (timm, torchvision,
    PaddleClas) hold plain and SE networks only."""
    from senet.attention import split_arch

    entry, base = split_arch(arch)
    if entry is not None and entry.name != "se":
        raise ConversionError(
            f"{arch}: weight conversion covers plain and SE networks only; none of the timm, "
            f"torchvision or PaddleClas layouts it reads holds {entry.title} blocks on {base}"
        )


def build_from_section(model_cfg: dict) -> Any:
    from senet.attention import SEOptions
    from senet.resnet import create_model

    plain_or_se(model_cfg["arch"])
    se = dict(model_cfg["se"])
    se["stages"] = tuple(se["stages"]) if se.get("stages") else None
    options = SEOptions(**se) if model_cfg["arch"].startswith("se_") else None  # a plain arch takes none
    return create_model(
        model_cfg["arch"],
        num_classes=model_cfg["num_classes"],
        attention=options,
        stride_in_1x1=model_cfg["stride_in_1x1"],
        stem_pool=model_cfg["stem_pool"],
        branch_relu=model_cfg.get("branch_relu", False),
        first_block_projection=model_cfg.get("first_block_projection", False),
    )


def fit_model(weights: dict[str, np.ndarray], model_cfg: dict, path: str) -> Any:
    """Build the model and load `weights` into it, refusing anything that is not a one-to-one fit."""
    import paddle

    # Built without random values (Paddle's LazyGuard: a parameter gets memory when it is set): every one
    # is checked and loaded below, and Kaiming init of a ResNet-152 takes 1.3 s of its 1.5 s build.
    with paddle.LazyGuard():
        model = build_from_section(model_cfg)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in own if k not in weights]
    extra = [k for k in weights if k not in own]
    shapes = [
        f"{k} {tuple(weights[k].shape)} (needs {own[k]})"
        for k in own
        if k in weights and tuple(weights[k].shape) != own[k]
    ]
    if missing or extra or shapes:
        parts = [
            f"{len(v)} {label}: {_first(v)}"
            for label, v in (
                ("with no source", missing),
                ("with no destination", extra),
                ("of the wrong shape", shapes),
            )
            if v
        ]
        raise ConversionError(f"{path} does not fit {model_cfg['arch']}: " + "; ".join(parts))
    model.set_state_dict({k: paddle.to_tensor(v) for k, v in weights.items()})
    unset = [p.name for p in model.parameters() if not p._is_initialized()]
    assert not unset, f"weights checked one to one, yet {len(unset)} parameters unset: {unset[:3]}"
    return model


# ---------------------------------------------------------------------------------------------------
# Reading files.


def file_format(path: str) -> str:
    """'safetensors', 'torch' (zip) or 'pickle' (Paddle .pdparams), from the first bytes."""
    problem = regular_file_problem(path)
    if problem:
        raise ConversionError(f"{path} {problem}")
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 0:
        raise ConversionError(f"{path} is empty (0 bytes)")
    if head[:4] == b"PK\x03\x04" or head[:2] == b"\x80\x02" and path.endswith((".pth", ".pt", ".bin")):
        return "torch"
    # safetensors: an 8-byte little-endian header length, then the JSON header (its length's first
    # byte may be 0x80, so this comes before the pickle test)
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < os.path.getsize(path):
        return "safetensors"
    if head[:1] == b"\x80":
        return "pickle"
    raise ConversionError(f"{path} is neither a safetensors file, a torch .pth zip nor a Paddle .pdparams pickle")


def _pickled_state(path: str) -> dict[str, np.ndarray]:
    """A PaddleClas .pdparams: a pickled dict of numpy arrays (or paddle.save's (name, array) pairs),
    read with the restricted unpickler: nothing it names beyond plain data is allowed."""
    with open(path, "rb") as f:
        state = unpickle_restricted(f, path)
    if not isinstance(state, dict):
        raise ConversionError(f"{path} holds a pickled {type(state).__name__}, not a state dict")
    if shared := shared_arrays(state):  # each would be copied and converted on its own (issue 23)
        raise ConversionError(
            f"{path} is refused: {shared[0]!r} and {shared[1]!r} are one array stored under two "
            f"names (a state dict stores each tensor once)"
        )
    out = {}
    for name, value in state.items():
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], np.ndarray):
            value = value[1]  # paddle.save stores a tensor as (name, array)
        if name == "StructuredToParameterName@@":
            continue  # paddle.save's table of parameter names: not a tensor
        if not isinstance(name, str) or not isinstance(value, np.ndarray):
            raise ConversionError(f"{path}: entry {str(name)[:80]!r} is a {type(value).__name__}, not a tensor")
        out[name] = value
    return out


def read_source(path: str) -> tuple[dict[str, np.ndarray], str]:
    """(tensors, file format). Bad files are one-line ConversionErrors naming the file."""
    fmt = file_format(path)
    try:
        if fmt == "safetensors":
            tensors = read_safetensors(path, integer_ok=lambda n: n.endswith("num_batches_tracked"))[0]
        elif fmt == "torch":
            tensors = read_torch_state_dict(path)
        else:
            tensors = _pickled_state(path)
    except CheckpointError as e:
        raise ConversionError(str(e)) from None
    if not tensors:
        raise ConversionError(f"{path} holds no tensors")
    for name, value in tensors.items():
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ConversionError(f"{path}: tensor {name!r} holds NaN or Inf values; the file is damaged")
    return tensors, fmt


_FORMATS = {"timm": ("safetensors", "torch"), "torchvision": ("torch",), "paddleclas": ("pickle",)}


def convert_file(path: str, source: str = "auto", arch: str | None = None, num_classes: int | None = None) -> Converted:
    """Read, recognise, rename, infer and fit. `arch` / `num_classes`, if given, must be what the file holds."""
    if arch is not None:
        plain_or_se(arch)
    tensors, fmt = read_source(path)
    if source != "auto" and fmt not in _FORMATS[source]:
        raise ConversionError(
            f"{path} is a {fmt} file; {source} weights come as "
            f"{' or '.join(_FORMATS[source])} files. Use --from auto to detect the source"
        )
    layout = detect_layout(tensors, path)
    if source != "auto" and layout not in SOURCES[source]:
        raise ConversionError(
            f"{path} has the {LAYOUTS[layout].description} layout, not {source}'s; use --from auto or the right --from"
        )
    weights, dropped = rename(tensors, layout, path)
    model_cfg = infer_model(weights, layout, path)
    if arch is not None and arch != model_cfg["arch"]:
        raise ConversionError(
            f"{path} holds {model_cfg['arch']} weights ({model_cfg['num_classes']} classes), not {arch}"
        )
    if num_classes is not None and num_classes != model_cfg["num_classes"]:
        raise ConversionError(f"{path} has a {model_cfg['num_classes']}-class classifier, not {num_classes}")
    model = fit_model(weights, model_cfg, path)
    learnable = sum(int(v.size) for k, v in weights.items() if not k.endswith(("._mean", "._variance")))
    return Converted(model_cfg, weights, layout, dropped, learnable, model)


# ---------------------------------------------------------------------------------------------------
# Writing OUT_DIR.


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def config_for(model_cfg: dict, weights_path: str, name: str) -> dict:
    """A config that rebuilds the network and points at its weights; ImageNet evaluation settings."""
    model = {k: v for k, v in model_cfg.items()}
    model["weights"] = weights_path
    return {
        "name": name,
        "model": model,
        "data": {
            "name": "imagenet",
            "eval_resize": 256,
            "eval_crop": 224,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
        },
    }


def write_out_dir(out_dir: str, files: dict[str, Any]) -> None:
    """Write `files` (name -> callable(path)) into a temporary folder beside out_dir, then rename it into
    place (senet.folders). out_dir must not exist or be empty: nothing is written there unless everything
    succeeded."""
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise ConversionError(f"--out {out_dir} exists and is not an empty folder; choose a new folder")
    try:
        with temp_folder_for(out_dir) as tmp:
            for name, write in files.items():
                write(os.path.join(tmp, name))
            if os.path.isdir(out_dir):
                os.rmdir(out_dir)  # empty, checked above
            swap_into_place(tmp, out_dir)
    except OSError as e:
        raise ConversionError(f"could not write {out_dir} ({e.strerror or e}); nothing was written") from None


def convert_to_dir(
    path: str, out_dir: str, source: str = "auto", arch: str | None = None, num_classes: int | None = None
) -> dict:
    """Convert `path` into out_dir/model.safetensors + out_dir/config.yaml; return a summary."""
    from senet.checkpoint import save_safetensors

    conv = convert_file(path, source, arch, num_classes)
    out_abs = os.path.abspath(out_dir)
    name = os.path.basename(out_abs.rstrip("/")) or conv.model_cfg["arch"]
    cfg = config_for(conv.model_cfg, os.path.join(out_abs, "model.safetensors"), name)
    validate(cfg)  # the config must load as it is written
    model = conv.model
    meta = {
        "arch": conv.model_cfg["arch"],
        "num_classes": conv.model_cfg["num_classes"],
        "config": validate(cfg),
        "converted_from": os.path.basename(path),
        "source_layout": conv.layout,
        "source_sha256": _sha256(path),
    }

    def write_config(p: str) -> None:
        with open(p, "w") as f:
            f.write(
                f"# Converted from {os.path.basename(path)} ({LAYOUTS[conv.layout].description}) by "
                f"tools/convert_weights.py.\n# Rebuilds the source network exactly; see docs/weights.md.\n"
            )
            yaml.safe_dump(cfg, f, sort_keys=False)

    write_out_dir(
        out_abs, {"model.safetensors": lambda p: save_safetensors(model, p, meta), "config.yaml": write_config}
    )
    return {
        "out_dir": out_abs,
        "layout": conv.layout,
        "model": conv.model_cfg,
        "tensors": len(conv.weights),
        "dropped": len(conv.dropped),
        "params": conv.source_params,
    }


# ---------------------------------------------------------------------------------------------------
# Export to timm.


def timm_target(model_cfg: dict) -> tuple[str, str]:
    """(timm model name, layout) of the timm model computing exactly this network; else an error saying why."""
    from senet.resnet import MODELS, Bottleneck

    arch = model_cfg["arch"]
    plain_or_se(arch)
    base = arch.removeprefix("se_")
    spec = MODELS.get(base)
    if spec is None or spec.stem != "imagenet":
        raise ConversionError(f"{arch}: only the ImageNet ResNets and ResNeXts have timm counterparts")
    use_se = arch.startswith("se_")
    stride = spec.stride_in_1x1 if model_cfg.get("stride_in_1x1") is None else model_cfg["stride_in_1x1"]
    pool = model_cfg.get("stem_pool") or spec.stem_pool
    bottleneck = spec.block is Bottleneck
    branch_relu = bool(model_cfg.get("branch_relu"))
    se = model_cfg.get("se") or {}
    divisor = se.get("divisor", 1)
    if use_se:
        plain = {"squeeze": "avg", "gate": "sigmoid", "placement": "standard", "stages": None, "bias": True}
        odd = [f"{k}={se.get(k)!r}" for k, v in plain.items() if se.get(k, v) != v]
        if odd or se.get("reduction", 16) != 16:
            raise ConversionError(
                f"{arch} with model.se {', '.join(odd) or 'reduction=' + str(se.get('reduction'))}: "
                f"timm's SE blocks are average squeeze, sigmoid gate, standard placement, r = 16, "
                f"with biases, in every stage"
            )
    if model_cfg.get("first_block_projection") and not bottleneck:
        raise ConversionError(
            f"{arch} with model.first_block_projection (PaddleClas's ResNet18/34): timm's "
            f"ResNets have an identity shortcut there; no timm model computes this network"
        )
    legacy = "legacy_" + arch.replace("_", "", 1)
    if branch_relu:  # only timm's legacy_seresnet18/34 have a ReLU before SE
        if use_se and not bottleneck and pool == "caffe" and divisor == 1:
            return legacy, "timm_legacy"
        raise ConversionError(
            f"{arch} with model.branch_relu: only timm's legacy_seresnet18/34 have that ReLU, "
            f"with Caffe's stem pool and SE widths C // 16 (model.se.divisor=1)"
        )
    if pool == "pytorch" and (not bottleneck or not stride):
        if use_se and not bottleneck and divisor != 8:
            raise ConversionError(
                f"{arch}: timm's seresnet18/34 round the SE width of 64 channels up to 8 "
                f"(model.se.divisor=8; here 64 // 16 = 4); no timm model computes this network. "
                f"With model.stem_pool=caffe model.branch_relu=true it is timm's {legacy}"
            )
        return ("se" + base if use_se else base), "timm_resnet"
    if pool == "caffe" and use_se and not bottleneck:
        raise ConversionError(
            f"{arch}: timm's {legacy} puts a ReLU before the SE block (model.branch_relu=true) "
            f"and its seresnet18/34 pad the stem pool; no timm model computes this network"
        )
    if pool == "caffe" and use_se and stride == (spec.groups == 1):
        return legacy, "timm_legacy"
    raise ConversionError(
        f"{arch} with the stride on the {'1x1' if stride else '3x3'} conv and the {pool} stem pool: no timm model "
        f"computes it (timm's ResNets put the stride on the 3x3 and pad the pool; its legacy_se* models are SE only). "
        f"Train with -o model.stride_in_1x1=false model.stem_pool=pytorch to get weights timm can run"
    )


def to_timm(weights: dict[str, np.ndarray], model_cfg: dict) -> tuple[dict[str, np.ndarray], str]:
    """Our weights under timm's names, with Linear weights back to [out, in] and a zero
    num_batches_tracked per BatchNorm (timm's modules have one; a strict load needs it)."""
    from senet.attention import se_hidden

    name, layout_name = timm_target(model_cfg)
    layout = LAYOUTS[layout_name]
    out: dict[str, np.ndarray] = {}
    for k, v in weights.items():
        hit = layout.inverse(k)
        if hit is None:
            raise ConversionError(f"tensor {k!r} has no place in timm's {name}")
        src, transform = hit
        out[src] = _transform(np.asarray(v), transform)
        if src.endswith(".running_mean"):
            out[src[: -len("running_mean")] + "num_batches_tracked"] = np.zeros((), np.int64)
    # timm's SE widths: make_divisible(C / 16, 8) in seresnet*, C // 16 in legacy_se*
    divisor = 8 if layout_name == "timm_resnet" else 1
    for k, v in out.items():
        if k.endswith((".se.fc1.weight", ".se_module.fc1.weight")) and v.shape[0] != se_hidden(v.shape[1], 16, divisor):
            raise ConversionError(
                f"{k}: SE width {v.shape[0]} where timm's {name} has {se_hidden(v.shape[1], 16, divisor)}"
            )
    return out, name


# The model settings that make another network (the rest, like model.weights, do not).
NETWORK_KEYS = (
    "arch",
    "num_classes",
    "stride_in_1x1",
    "stem_pool",
    "se",
    "eca",
    "cbam",
    "branch_relu",
    "first_block_projection",
)


def recorded_config(path: str) -> dict | None:
    """The resolved config a weights file of ours records (model.safetensors' metadata, or a training
    checkpoint's "config"), or None if it records none. Damaged or invalid records are ConversionErrors
    that say which."""
    from senet.checkpoint import load_checkpoint

    try:
        if path.endswith(".safetensors"):
            raw = read_safetensors(path)[1].get("config")
            if raw is None:
                return None
            try:
                cfg = json.loads(raw)
            except ValueError as e:
                raise ConversionError(
                    f"{path}: the config in its metadata is not valid JSON ({e}); give the "
                    f"config it was trained with as -c CONFIG"
                ) from None
        else:
            cfg = load_checkpoint(path).get("config")
            if cfg is None:
                return None
    except CheckpointError as e:
        raise ConversionError(str(e)) from None
    if not isinstance(cfg, dict):
        raise ConversionError(
            f"{path}: its recorded config is a {type(cfg).__name__}, not a mapping; give the "
            f"config it was trained with as -c CONFIG"
        )
    try:
        return validate(cfg)
    except ConfigError as e:
        raise ConversionError(
            f"{path}: its recorded config does not validate ({e}); give the config it was trained with as -c CONFIG"
        ) from None


def network_differences(recorded: dict, given: dict) -> list[str]:
    """The model settings that make another network, where two resolved configs differ ("key a -> b").
    A stride placement or stem pool left at None means the architecture's default, and is compared as that."""
    from senet.attention import split_arch
    from senet.resnet import MODELS

    def resolved(cfg: dict) -> dict:
        cfg = copy.deepcopy(cfg)
        spec = MODELS.get(split_arch(cfg["model"]["arch"])[1])
        for key in ("stride_in_1x1", "stem_pool"):
            if cfg["model"].get(key) is None and spec is not None:
                cfg["model"][key] = getattr(spec, key)
        return cfg

    harmless, different = config_changes(resolved(recorded), resolved(given))
    return [line for line in harmless + different if line.startswith(tuple(f"model.{k}" for k in NETWORK_KEYS))]


def export_timm(path: str, out_dir: str, cfg: dict | None = None) -> dict:
    """Write out_dir/model.safetensors in timm's layout (+ timm_model.txt naming the timm model).

    `cfg` (from -c) is needed only when the file records no config; where it records one, a `cfg` that
    describes another network is refused (it would name another timm model, as resume refuses it)."""
    from senet.checkpoint import atomic_write, extract_model_state

    recorded = recorded_config(path)
    if cfg is None and recorded is None:
        raise ConversionError(f"{path} does not record its config; give it with -c CONFIG")
    if cfg is not None and recorded is not None:
        differ = network_differences(recorded, cfg)
        if differ:
            raise ConversionError(
                f"-c describes another network than {path} records: {'; '.join(differ)}. Drop -c "
                f"(the file's own config is used), or give the config it was trained with"
            )
    cfg = cfg if cfg is not None else recorded
    try:
        weights = extract_model_state(path, trust=False)
    except CheckpointError as e:
        raise ConversionError(str(e)) from None
    model_cfg = cfg["model"]
    fit_model(
        weights,
        {
            k: model_cfg.get(k)
            for k in (
                "arch",
                "num_classes",
                "stride_in_1x1",
                "stem_pool",
                "se",
                "branch_relu",
                "first_block_projection",
            )
        },
        path,
    )
    tensors, name = to_timm(weights, model_cfg)
    note = (
        f"timm.create_model('{name}', num_classes={model_cfg['num_classes']}, "
        f"pretrained=True, pretrained_cfg_overlay=dict(file='model.safetensors'))\n"
    )

    def write_note(p: str) -> None:
        with open(p, "w") as f:
            f.write(note)

    write_out_dir(
        out_dir,
        {
            "model.safetensors": lambda p: atomic_write(p, save(tensors, metadata={"format": "pt"})),
            "timm_model.txt": write_note,
        },
    )
    return {"out_dir": os.path.abspath(out_dir), "timm_model": name, "tensors": len(tensors)}
