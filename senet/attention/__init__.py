"""Attention blocks as plug-ins: one registry, one slot in every residual block.

    se    Squeeze-and-Excitation (Hu et al. 2018)   senet.attention.se
    eca   Efficient Channel Attention (Wang et al. 2020)   senet.attention.eca
    cbam  Convolutional Block Attention Module (Woo et al. 2018)   senet.attention.cbam

An entry's name is the architecture prefix (`eca_resnet50`) and the config section (`model.eca`).
A block module defines its options (an AttentionOptions: every block has `placement` and `stages`)
and its block (an AttentionBlock: forward, plus the accounting and the gates senet.profile,
senet.analysis and senet.export read). The options of the blocks below are in
senet.attention_options, which does not import Paddle, so that senet.config can build the sections
model.se / model.eca / model.cbam from them. Adding a block is that module plus one `register` call;
its config section, architectures, accounting, analysis, histograms and export then work unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import paddle.nn as nn

from senet import config
from senet.attention.base import Attention, AttentionBlock, Gate
from senet.attention.cbam import CBAMBlock, CBAMOptions
from senet.attention.eca import ECABlock, ECAOptions, eca_kernel_size
from senet.attention.se import SEBlock, SEOptions, se_hidden
from senet.attention_options import PLACEMENTS, AttentionOptions

REGISTRY: dict[str, Attention] = {}

# (channels, block name, 1-based stage) -> the attention layer a residual block holds, or Identity
AttnHook = Callable[[int, str, int], nn.Layer]


def register(entry: Attention) -> Attention:
    if entry.name in REGISTRY:
        raise ValueError(f"attention '{entry.name}' is already registered")
    if "_" in entry.name or not entry.name.isidentifier() or not entry.name.islower():
        raise ValueError(
            f"attention name {entry.name!r}: a lower-case identifier without '_' (it is the architecture prefix)"
        )
    REGISTRY[entry.name] = entry
    if entry.name not in config.ATTENTION_SECTIONS:  # the config section model.<name>, from the options class
        config.add_attention_section(entry.name, entry.options)
    return entry


def unregister(name: str) -> None:
    """Take a block registered from outside out again, with its config section."""
    REGISTRY.pop(name, None)
    config.remove_attention_section(name)


register(Attention("se", SEBlock, SEOptions, "SE", 'Hu, Shen, Sun, "Squeeze-and-Excitation Networks", CVPR 2018'))
register(
    Attention("eca", ECABlock, ECAOptions, "ECA", 'Wang et al., "ECA-Net: Efficient Channel Attention", CVPR 2020')
)
register(
    Attention(
        "cbam", CBAMBlock, CBAMOptions, "CBAM", 'Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018'
    )
)


def split_arch(arch: str) -> tuple[Attention | None, str]:
    """ "eca_resnet50" -> (the ECA entry, "resnet50"); "resnet50" -> (None, "resnet50")."""
    prefix, _, base = arch.partition("_")
    entry = REGISTRY.get(prefix)
    return (entry, base) if entry is not None and base else (None, arch)


def options_from_config(entry: Attention, section: dict | None) -> AttentionOptions:
    """The entry's options from its config section (model.<name>); absent keys take the defaults.
    A key the options do not have is an error that names the known ones."""
    section = dict(section or {})
    known = {f.name for f in dataclasses.fields(entry.options)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValueError(f"model.{entry.name}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if section.get("stages") is not None:
        section["stages"] = tuple(section["stages"])
    return entry.options(**section)


def attention_slot(entry: Attention | None, options: AttentionOptions | None, data_format: str = "NCHW") -> AttnHook:
    """The hook every residual block calls once at construction: the block for its stage, or Identity.

    Plain and attention networks run the same block code; only what this hook returns differs, which
    is what keeps a ResNet vs SE-ResNet (ECA, CBAM) comparison controlled."""

    def make(channels: int, name: str, stage: int) -> nn.Layer:
        if entry is None or (options.stages is not None and stage not in options.stages):
            return nn.Identity()
        return entry.block(channels, options, name=name, data_format=data_format)

    return make


def attention_blocks(model: nn.Layer) -> dict[str, AttentionBlock]:
    """Every attention block of `model` by sublayer name ("layer3.1.se"), in network order. ("_layers."
    is paddle.DataParallel's wrapper prefix.)"""
    return {
        name.removeprefix("_layers."): layer
        for name, layer in model.named_sublayers()
        if isinstance(layer, AttentionBlock)
    }


def kind_of(block: AttentionBlock) -> Attention:
    """The registry entry a block belongs to."""
    for entry in REGISTRY.values():
        if type(block) is entry.block:
            return entry
    raise KeyError(f"{type(block).__name__} is not a registered attention block")


__all__ = [
    "PLACEMENTS",
    "REGISTRY",
    "Attention",
    "AttentionBlock",
    "AttentionOptions",
    "AttnHook",
    "CBAMBlock",
    "CBAMOptions",
    "ECABlock",
    "ECAOptions",
    "Gate",
    "SEBlock",
    "SEOptions",
    "attention_blocks",
    "attention_slot",
    "eca_kernel_size",
    "kind_of",
    "options_from_config",
    "register",
    "se_hidden",
    "split_arch",
    "unregister",
]
