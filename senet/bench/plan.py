"""Planning the models: which models a run measures, in which precisions and layouts, and how each is built.

Each entry of BenchOptions.configs (a YAML file or an architecture name) is one model at its
config's own settings. SE models (`se_<arch>`) also run at every r of BenchOptions.reductions (the
sweep); ECA and CBAM models run at their config's settings only. Each attention model is compared
with the first plain model of its base architecture, and each plain architecture that
paddle.vision.models has gets that model too, as a parity check for ours.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from senet.config import load_config

if TYPE_CHECKING:
    import paddle

VISION_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")  # in paddle.vision.models


@dataclass(frozen=True)
class ModelSpec:
    """One model of the run: an entry of BenchOptions.configs, one of its r values, or the reference."""

    name: str  # unique label, e.g. "se_resnet50 r=16"
    arch: str
    cfg: dict  # resolved config (model.se.reduction set for the SE sweep)
    reduction: int | None = None  # the block's reduction ratio r (SE, CBAM); None without one (plain, ECA)
    reference: bool = False  # paddle.vision.models.<arch>
    sweep: bool = False  # an extra r value, measured only in the sweep modes
    plain: str | None = None  # the plain model it is compared against (a plain model: itself, or the first of its arch)
    attention: str | None = None  # the attention block's registry name ("se", "eca", "cbam"); None: plain


@dataclass(frozen=True)
class Variant:
    """Precision and layout of a run: AMP for dygraph (fp32 NCHW on a CPU), or the exported engines' precision."""

    amp: str = "none"  # none | O1 | O2
    dtype: str = "float32"
    data_format: str = "NCHW"
    inference: str = "fp32"  # exported engines: fp32 | bf16 | int8 (senet.inference.PRECISIONS)

    @property
    def precision(self) -> str:
        return self.inference if self.amp == "none" else f"amp-{self.amp}-{self.dtype}"


FP32 = Variant()


def attention_of(arch: str) -> tuple[str | None, str]:
    """(attention block name, plain architecture): ("se", "resnet50") for se_resnet50, (None, arch) if plain."""
    from senet.attention import split_arch  # imports Paddle: only once setup_cpu has run

    entry, base = split_arch(arch)
    return (entry.name if entry else None), base


def _load(entry: str, overrides: list[str]) -> dict:
    """A config file, or an architecture name (the defaults with model.arch set)."""
    if entry.endswith((".yaml", ".yml")) or os.path.sep in entry:
        return load_config(entry, overrides)
    from senet.resnet import known_arch

    known_arch(entry)  # an unknown name raises, listing the known ones
    return load_config(None, [f"model.arch={entry}"] + list(overrides))


def plan_models(
    configs: list[str], overrides: list[str], reductions: list[int], reference: bool = True
) -> list[ModelSpec]:
    """The models of a run: each config, each SE config at every r, and the paddle.vision references."""
    specs: list[ModelSpec] = []
    for entry in configs:
        cfg = _load(entry, overrides)
        arch = cfg["model"]["arch"]
        attention, _ = attention_of(arch)
        options = cfg["model"].get(attention, {}) if attention else {}
        if attention != "se":  # the r sweep is SE's (issue 5); other blocks run at their config's settings
            specs.append(ModelSpec(cfg["name"], arch, cfg, reduction=options.get("reduction"), attention=attention))
            continue
        own = options["reduction"]
        for r in sorted(set(reductions) | {own}):
            rcfg = copy.deepcopy(cfg)
            rcfg["model"]["se"]["reduction"] = r
            specs.append(
                ModelSpec(f"{cfg['name']} r={r}", arch, rcfg, reduction=r, sweep=r != own, attention=attention)
            )
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"two models are named {dup[0]!r}; give each config its own `name` (-o name=...)")
    plains = {s.arch: s.name for s in reversed(specs) if s.attention is None}  # the first plain of each arch
    out = [replace(s, plain=plains.get(attention_of(s.arch)[1])) for s in specs]
    if reference:
        for arch, name in plains.items():
            if arch in VISION_ARCHS:
                plain = next(s for s in out if s.name == name)
                out.append(ModelSpec(f"paddle.vision {arch}", arch, plain.cfg, reference=True, plain=name))
    return out


def build(spec: ModelSpec, variant: Variant = FP32, seed: int = 0) -> paddle.nn.Layer:
    """The model of `spec` in `variant`'s layout, seeded so that every run starts from the same weights."""
    import paddle

    paddle.seed(seed)
    if spec.reference:
        factory = getattr(paddle.vision.models, spec.arch)
        return factory(pretrained=False, num_classes=spec.cfg["model"]["num_classes"])
    from senet.resnet import build_model

    cfg = copy.deepcopy(spec.cfg)
    cfg["train"]["data_format"] = variant.data_format
    return build_model(cfg)


def profile(spec: ModelSpec, image_size: int, model: paddle.nn.Layer | None = None) -> dict:
    """Trainable parameters and GMACs (multiply-adds for one image) at `image_size`, fp32 NCHW."""
    from senet.profile import profile_model

    p = profile_model(model if model is not None else build(spec), image_size)
    return {"params": p.params, "gmacs": round(p.gmacs, 7)}  # 7 places: ECA adds 5e-4 to ResNet-50
