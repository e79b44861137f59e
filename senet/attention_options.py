"""The options of every attention block: the one source of the config sections model.se, model.eca
and model.cbam (and of any block registered later), without importing Paddle.

Each options class is a frozen dataclass whose fields carry, in `option(...)`, what the config
checks need: the allowed choices, the numeric range, the type a null default may take, the item
type of a list. senet.config builds its defaults and tables from these fields (`config_tables`), and
the class checks the same rules when built directly (`SEOptions(reduction=0)`), so a YAML file and
Python code are held to one set of rules. The blocks themselves live in senet.attention.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

# Where a block sits in a residual block (Hu et al., Fig. 5 and Section 6.5); see senet.resnet._Residual.
PLACEMENTS = ("standard", "pre", "post", "identity", "after_3x3")
SQUEEZES = ("avg", "max", "none")
GATES = ("sigmoid", "tanh", "relu")
IMPLS = ("conv", "linear")


def option(
    default: Any,
    doc: str,
    *,
    choices: tuple | None = None,
    low: int | None = None,
    high: int | None = None,
    null_type: type | None = None,
    items: type | None = None,
) -> Any:
    """A field of an options class. `low`..`high` bound a number (inclusive; for a list, each item);
    `null_type` is the type a null default may be set to (list for a list of `items`)."""
    meta = {"doc": doc, "choices": choices, "low": low, "high": high, "null_type": null_type, "items": items}
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class AttentionOptions:
    """The settings every block type has: where it sits and which stages get it."""

    section: ClassVar[str] = "model.attention"  # the config section, for error messages
    placement: str = option(
        "standard", "standard | pre | post | identity | after_3x3 (Section 6.5)", choices=PLACEMENTS
    )
    stages: tuple[int, ...] | None = option(
        None,
        "stage numbers (1-based) that get the block; null: all. Beyond the arch's stage count is refused by the model",
        low=1,
        null_type=list,
        items=int,
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            self._check_field(f, getattr(self, f.name))

    def _check_field(self, f: dataclasses.Field, value: Any) -> None:
        """The rules `option(...)` states for one field; a field without them keeps its default's type."""
        meta, key = f.metadata, f"{self.section}.{f.name}"
        if value is None and f.default is None:
            return
        if meta.get("choices") is not None:
            if value not in meta["choices"]:
                raise ValueError(f"{key}: {value!r} is not one of {', '.join(map(str, meta['choices']))}")
            return
        kind = meta.get("null_type") if f.default is None else type(f.default)
        if meta.get("items") is not None:  # a list of numbers
            if not isinstance(value, (list, tuple)) or not all(_is_int(x, meta) for x in value):
                raise ValueError(f"{key} must be {_range_words(meta, 'a list of integers')}, got {value!r}")
        elif kind is int:
            if not _is_int(value, meta):
                raise ValueError(f"{key} must be {_range_words(meta, 'an integer')}, got {value!r}")
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{key} must be a number, got {value!r}")
        elif kind is not None and not isinstance(value, kind):
            raise ValueError(f"{key} must be {kind.__name__} (like the default {f.default!r}), got {value!r}")

    def check_hidden(self, hidden: int, channels: int, block: str) -> None:
        """Refuse a zero-width hidden layer (C // reduction = 0), naming the block and the fix."""
        if hidden < 1:
            raise ValueError(
                f"{block}: C={channels} // reduction {getattr(self, 'reduction', '?')} = 0 hidden "
                f"units; use {self.section}.reduction <= {channels} or leave this stage out of "
                f"{self.section}.stages"
            )

    def odd(self, name: str, why: str) -> None:
        value = getattr(self, name)
        if value is not None and value % 2 == 0:
            raise ValueError(f"{self.section}.{name} must be odd ({why}), got {value}")


def _is_int(x: Any, meta: Any) -> bool:
    low, high = meta.get("low"), meta.get("high")
    return isinstance(x, int) and not isinstance(x, bool) and (low is None or x >= low) and (high is None or x <= high)


def _range_words(meta: Any, what: str) -> str:
    """ "a positive integer", "a list of integers >= 1", "an integer in [1, 255]"."""
    low, high = meta.get("low"), meta.get("high")
    if low == 1 and high is None and what == "an integer":
        return "a positive integer"
    if low is None and high is None:
        return what
    return f"{what} >= {low}" if high is None else f"{what} in [{low}, {high}]"


@dataclass(frozen=True)
class SEOptions(AttentionOptions):
    """The `model.se` section of a config. Defaults follow the paper's SE-ResNet-50."""

    section: ClassVar[str] = "model.se"
    reduction: int = option(
        16,
        "r: hidden width C // r (floor; see divisor). Too large for a stage is refused by the model (zero-width SE)",
        low=1,
    )
    # 1: the paper's exact C // r. d > 1: C / r rounded to the nearest multiple of d, at least d, as
    # timm's SE does (make_divisible, d = 8 in its seresnet*): SE-ResNet-18/34's 64-channel stage then
    # gets 8 hidden units, not 4. Only timm's weights need it; the paper and its release use C // r.
    divisor: int = option(
        1,
        "1: C // r; d > 1: C / r rounded to a multiple of d, at least d (timm: 8). Above "
        "the widest stage (2048 // 2) it only sets every width to d",
        low=1,
        high=1024,
    )
    impl: str = option(
        "conv", "conv: 1x1 convs on the pooled 1x1 map; linear: Linear on the pooled vector", choices=IMPLS
    )
    squeeze: str = option("avg", "avg | max | none (the paper's NoSqueeze ablation, Section 7.1)", choices=SQUEEZES)
    gate: str = option("sigmoid", "sigmoid | tanh | relu (excitation ablation, Section 6.3)", choices=GATES)
    bias: bool = option(True, "biases on the two FCs, as in the authors' Caffe release")


@dataclass(frozen=True)
class ECAOptions(AttentionOptions):
    """The `model.eca` section of a config (Wang et al., ECA-Net). Defaults follow the paper."""

    section: ClassVar[str] = "model.eca"
    kernel_size: int | None = option(
        None, "odd k of the 1D conv across channels; null: k = psi(C), Eq. 12", low=1, high=255, null_type=int
    )
    gamma: int = option(2, "psi(C) = |(log2 C + b) / gamma|_odd", low=1)
    b: int = option(1, "see gamma", low=0, high=64)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.odd("kernel_size", "the conv is centred on each channel")


@dataclass(frozen=True)
class CBAMOptions(AttentionOptions):
    """The `model.cbam` section of a config (Woo et al., CBAM). Defaults follow the paper's ResNet-50 + CBAM."""

    section: ClassVar[str] = "model.cbam"
    reduction: int = option(16, "the shared MLP's hidden width is C // r", low=1)
    spatial_kernel: int = option(7, "odd k of the spatial attention's k x k conv", low=1, high=63)
    spatial: bool = option(True, "false: channel attention only")
    bias: bool = option(True, "biases in the shared MLP, as in the authors' code")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.odd("spatial_kernel", "the output keeps the input's size")


# The config section of each block, model.<name>; senet.attention.register adds later ones.
SECTIONS: dict[str, type[AttentionOptions]] = {"se": SEOptions, "eca": ECAOptions, "cbam": CBAMOptions}


@dataclass
class ConfigTables:
    """What senet.config needs of one options class, keyed by the field name."""

    defaults: dict[str, Any]
    choices: dict[str, tuple]
    ranges: dict[str, tuple[int | None, int | None]]
    null_types: dict[str, type]
    list_items: dict[str, type]


def config_tables(options: type[AttentionOptions]) -> ConfigTables:
    """The defaults and rules of `options`'s fields, as senet.config's tables hold them."""
    tables = ConfigTables({}, {}, {}, {}, {})
    for f in dataclasses.fields(options):
        meta = f.metadata
        if f.default is dataclasses.MISSING:
            raise TypeError(f"{options.__name__}.{f.name} has no default; every option needs one")
        tables.defaults[f.name] = f.default
        if meta.get("choices") is not None:
            tables.choices[f.name] = tuple(meta["choices"])
        if meta.get("low") is not None or meta.get("high") is not None:
            tables.ranges[f.name] = (meta.get("low"), meta.get("high"))
        if f.default is None:
            if meta.get("null_type") is None:
                raise TypeError(f"{options.__name__}.{f.name} defaults to None: give its type, option(null_type=...)")
            tables.null_types[f.name] = meta["null_type"]
        if meta.get("items") is not None:
            tables.list_items[f.name] = meta["items"]
    return tables
