"""The augmentation policy strings of data.auto_augment, parsed and checked, and the policies' op tables.

Three families, each named the way its reference names it:
- RandAugment (Cubuk et al. 2020, "RandAugment: Practical automated data augmentation with a reduced
  search space"), in timm's policy strings: `rand-m9-mstd0.5-inc1` means magnitude 9 (of 10), magnitude
  noise N(0, 0.5) per op, and the ops whose severity increases with magnitude (timm's
  _RAND_INCREASING_TRANSFORMS). Sections: m (magnitude), n (ops per image, default 2), p (probability
  of each op, default 0.5), mstd (magnitude std; above 100 means uniform in [0, m]), mmax (magnitude
  cap, default 10), inc (0 or 1). "ResNet strikes back" (Wightman et al. 2021) uses rand-m7-mstd0.5-inc1
  (A1, A2) and rand-m6-mstd0.5-inc1 (A3).
- AutoAugment (Cubuk et al. 2019, "AutoAugment: Learning Augmentation Policies from Data"): timm's
  ImageNet policies `original` (the paper's, Appendix A.4), `originalr`, `v0` (TPU EfficientNet's) and
  `v0r`, each with an optional `-mstd` section.
- TrivialAugment wide (Mueller and Hutter 2021, "TrivialAugment: Tuning-free Yet State-of-the-Art Data
  Augmentation"): `ta_wide`, torchvision's TrivialAugmentWide (the name its reference scripts use).

Paddle-free and OpenCV-free: senet.config checks a policy string with `parse_policy` before anything
loads; senet.data.augment applies the policies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LEVEL_DENOM = 10.0  # timm's magnitude scale: level 10 is the strongest setting of each op
MAGNITUDE_CAP = 100  # mmax above this is no longer a magnitude (level / 10 scales each op's range)

# timm 1.0's _RAND_TRANSFORMS and _RAND_INCREASING_TRANSFORMS, in its order (the draw picks by index).
RAND_TRANSFORMS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "SolarizeAdd",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)
RAND_INCREASING_TRANSFORMS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)

# timm's AutoAugment ImageNet policies: 25 sub-policies of two (op, probability, magnitude) each. One
# sub-policy is picked per image. `original` is the paper's (Appendix A.4), `v0` TPU EfficientNet's; the
# `r` variants use PosterizeIncreasing (bits dropped grow with magnitude) for Posterize(Original).
_ORIGINAL = (
    (("PosterizeOriginal", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),
    (("PosterizeOriginal", 0.6, 7), ("PosterizeOriginal", 0.6, 6)),
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, 4), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, 7)),
    (("PosterizeOriginal", 0.8, 5), ("Equalize", 1.0, 2)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, 8), ("PosterizeOriginal", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, 2)),
    (("Equalize", 0.0, 7), ("Equalize", 0.8, 8)),
    (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    (("Sharpness", 0.4, 7), ("Invert", 0.6, 8)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, 9)),
    (("Color", 0.4, 0), ("Equalize", 0.6, 3)),
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
    (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),
)
_V0 = (
    (("Equalize", 0.8, 1), ("ShearY", 0.8, 4)),
    (("Color", 0.4, 9), ("Equalize", 0.6, 3)),
    (("Color", 0.4, 1), ("Rotate", 0.6, 8)),
    (("Solarize", 0.8, 3), ("Equalize", 0.4, 7)),
    (("Solarize", 0.4, 2), ("Solarize", 0.6, 2)),
    (("Color", 0.2, 0), ("Equalize", 0.8, 8)),
    (("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)),
    (("ShearX", 0.2, 9), ("Rotate", 0.6, 8)),
    (("Color", 0.6, 1), ("Equalize", 1.0, 2)),
    (("Invert", 0.4, 9), ("Rotate", 0.6, 0)),
    (("Equalize", 1.0, 9), ("ShearY", 0.6, 3)),
    (("Color", 0.4, 7), ("Equalize", 0.6, 0)),
    (("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)),
    (("Solarize", 0.6, 8), ("Color", 0.6, 9)),
    (("Solarize", 0.2, 4), ("Rotate", 0.8, 9)),
    (("Rotate", 1.0, 7), ("TranslateYRel", 0.8, 9)),
    (("ShearX", 0.0, 0), ("Solarize", 0.8, 4)),
    (("ShearY", 0.8, 0), ("Color", 0.6, 4)),
    (("Color", 1.0, 0), ("Rotate", 0.6, 2)),
    (("Equalize", 0.8, 4), ("Equalize", 0.0, 8)),
    (("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)),
    (("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)),
    (("Posterize", 0.8, 2), ("Solarize", 0.6, 10)),
    (("Solarize", 0.6, 8), ("Equalize", 0.6, 1)),
    (("Color", 0.8, 6), ("Rotate", 0.4, 5)),
)


def _research_posterize(policy: tuple) -> tuple:
    return tuple(
        tuple(("PosterizeIncreasing" if name.startswith("Posterize") else name, p, m) for name, p, m in sub)
        for sub in policy
    )


AUTO_AUGMENT_POLICIES = {
    "original": _ORIGINAL,
    "originalr": _research_posterize(_ORIGINAL),
    "v0": _V0,
    "v0r": _research_posterize(_V0),
}

# torchvision's TrivialAugmentWide._augmentation_space(31): op -> (first, last magnitude of its 31 bins, or
# None for an op without one; signed: the sign is drawn). Posterize's bins are 8 - round(bin / 5) bits.
TRIVIAL_AUGMENT_BINS = 31
TRIVIAL_AUGMENT_WIDE: dict[str, tuple[tuple[float, float] | None, bool]] = {
    "Identity": (None, False),
    "ShearX": ((0.0, 0.99), True),
    "ShearY": ((0.0, 0.99), True),
    "TranslateX": ((0.0, 32.0), True),
    "TranslateY": ((0.0, 32.0), True),
    "Rotate": ((0.0, 135.0), True),
    "Brightness": ((0.0, 0.99), True),
    "Color": ((0.0, 0.99), True),
    "Contrast": ((0.0, 0.99), True),
    "Sharpness": ((0.0, 0.99), True),
    "Posterize": ((8.0, 2.0), False),
    "Solarize": ((255.0, 0.0), False),
    "AutoContrast": (None, False),
    "Equalize": (None, False),
}

ALLOWED = (
    "rand-<sections> (RandAugment, e.g. rand-m9-mstd0.5-inc1; sections m, n, p, mstd, mmax, inc)",
    f"{' | '.join(AUTO_AUGMENT_POLICIES)} (AutoAugment, optionally -mstd<std>)",
    "ta_wide (TrivialAugment wide)",
)


@dataclass(frozen=True)
class RandAugmentPolicy:
    """timm's rand_augment_transform settings."""

    magnitude: float = LEVEL_DENOM  # 0..magnitude_max; 10 is each op's strongest setting
    num_layers: int = 2  # ops drawn (with replacement) per image
    prob: float = 0.5  # each drawn op applies with this probability
    magnitude_std: float = 0.0  # per-op magnitude noise: N(magnitude, std); inf: uniform in [0, magnitude]
    magnitude_max: float = LEVEL_DENOM  # the noisy magnitude is clipped to [0, magnitude_max]
    increasing: bool = False  # timm's _RAND_INCREASING_TRANSFORMS: every op grows more severe with magnitude

    @property
    def ops(self) -> tuple[str, ...]:
        return RAND_INCREASING_TRANSFORMS if self.increasing else RAND_TRANSFORMS


@dataclass(frozen=True)
class AutoAugmentPolicy:
    """timm's auto_augment_transform settings: a named policy and its magnitude noise."""

    name: str
    magnitude_std: float = 0.0

    @property
    def sub_policies(self) -> tuple:
        return AUTO_AUGMENT_POLICIES[self.name]


@dataclass(frozen=True)
class TrivialAugmentPolicy:
    """torchvision's TrivialAugmentWide: one op per image, a uniform magnitude bin of 31, a random sign."""


Policy = RandAugmentPolicy | AutoAugmentPolicy | TrivialAugmentPolicy


def _number(section: str, text: str, integer: bool) -> float:
    pattern = r"\d+" if integer else r"\d+(\.\d*)?|\.\d+"
    if not re.fullmatch(pattern, text):
        kind = "a whole number" if integer else "a number"
        raise ValueError(f"section {section!r} needs {kind} after its name, got {text!r}")
    return int(text) if integer else float(text)


def _split(section: str, names: tuple[str, ...]) -> tuple[str, str]:
    """'mstd0.5' -> ('mstd', '0.5'), the longest known name first (mstd and mmax before m)."""
    for name in sorted(names, key=len, reverse=True):
        if section.startswith(name):
            return name, section[len(name) :]
    raise ValueError(f"unknown section {section!r}; allowed: {', '.join(names)}")


def _parse_rand(sections: list[str]) -> RandAugmentPolicy:
    values: dict[str, float] = {}
    for s in sections:
        name, text = _split(s, ("m", "n", "p", "mstd", "mmax", "inc"))
        if name in values:
            raise ValueError(f"section {name!r} is given twice")
        values[name] = _number(name, text, integer=name in ("m", "n", "mmax", "inc"))
    cap = values.get("mmax", LEVEL_DENOM)
    if not 1 <= cap <= MAGNITUDE_CAP:
        raise ValueError(f"mmax{cap:g} is out of range: it must be in 1..{MAGNITUDE_CAP}")
    magnitude = values.get("m", LEVEL_DENOM)
    if not 0 <= magnitude <= cap:
        raise ValueError(
            f"magnitude m{magnitude:g} is out of range: it must be in 0..{cap:g} (an mmax section "
            f"raises the cap of 10, e.g. rand-m15-mmax20)"
        )
    if not 1 <= values.get("n", 2) <= 16:
        raise ValueError(f"n{values['n']:g} is out of range: it must be in 1..16 ops per image")
    if not 0 <= values.get("p", 0.5) <= 1:
        raise ValueError(f"p{values['p']:g} is out of range: it must be a probability in [0, 1]")
    if values.get("inc", 0) not in (0, 1):
        raise ValueError(f"inc{values['inc']:g} must be inc0 or inc1")
    std = values.get("mstd", 0.0)
    return RandAugmentPolicy(
        magnitude=float(magnitude),
        num_layers=int(values.get("n", 2)),
        prob=float(values.get("p", 0.5)),
        magnitude_std=float("inf") if std > 100 else std,  # timm: above 100 means uniform
        magnitude_max=float(cap),
        increasing=bool(values.get("inc", 0)),
    )


def parse_policy(text: str) -> Policy:
    """The policy a data.auto_augment string names; ValueError saying what is wrong and what is allowed."""
    head, *sections = text.strip().split("-")
    if head == "rand":
        return _parse_rand(sections)
    if head in AUTO_AUGMENT_POLICIES:
        std = 0.0
        for s in sections:
            name, value = _split(s, ("mstd",))
            std = _number(name, value, integer=False)
        return AutoAugmentPolicy(head, std)  # timm reads no "uniform" meaning into a large mstd here
    if head == "ta_wide" and not sections:
        return TrivialAugmentPolicy()
    raise ValueError(f"unknown policy {text!r}; allowed: {'; '.join(ALLOWED)}")
