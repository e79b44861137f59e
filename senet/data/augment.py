"""The per-sample augmentations of modern recipes, on uint8 HWC RGB arrays in the loader's workers.

- RandAugment, AutoAugment (timm's policies and draws) and TrivialAugment wide (torchvision's): the
  policy strings are parsed by senet.augment_policy. Every op is Pillow's as timm or torchvision calls
  it, redone with numpy and OpenCV: the colour ops (blends, LUTs, histograms, Pillow's SMOOTH filter)
  give Pillow's pixels exactly; the geometric ops give Pillow's geometry exactly (where each output
  pixel samples, and which pixels get the fill), but OpenCV interpolates with sample positions rounded
  to 1/32 pixel, and its bicubic kernel has a = -0.75 where Pillow's has a = -0.5. Measured against
  timm on the fixtures (tests/test_augment.py): bilinear within a few levels (mean under 0.3 levels),
  bicubic within 20 levels (mean under 2); docs/data.md has the figures. Like Pillow, an interpolated
  value is truncated, not rounded.
- Random erasing (Zhong et al. 2020, "Random Erasing Data Augmentation"), timm's RandomErasing: the same
  boxes for the same draws. timm erases normalised images with N(0, 1) noise ("pixel"), one N(0, 1)
  colour per box ("rand") or 0 ("const"), i.e. the dataset mean; here the image is still uint8, so the
  fill is that value mapped back, 255 * (mean + std * z), rounded and clipped to 0..255 (clipping
  touches about 3% of "pixel" noise with ImageNet's mean and std: |z| beyond about 2.1), drawn as
  such levels directly (`quantised_normal_tables`). It runs here, in the workers, because that was
  measured cheapest (scripts/measure_erasing.py, docs/data.md).

Randomness: every draw comes from the sample's own `random.Random` (seeded from (seed, epoch, index),
see senet.data.transforms), with the same calls in the same order as timm makes on Python's global
`random` (each op's probability, magnitude noise, sign and interpolation; the sub-policy; the erasing
boxes), so a seed that timm's ops see gives the same draws here. Two draws differ from the references:
RandAugment's choice of ops (timm: numpy's global generator) and TrivialAugment's op, bin and sign
(torchvision: torch's), drawn here from the same `random.Random`; the erasing noise comes from a numpy
generator seeded by one draw after the boxes (timm's from torch's). Nothing here draws unless its key is
on, so the default recipe's draws are unchanged.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from senet.augment_policy import (
    LEVEL_DENOM,
    TRIVIAL_AUGMENT_BINS,
    TRIVIAL_AUGMENT_WIDE,
    AutoAugmentPolicy,
    Policy,
    RandAugmentPolicy,
    TrivialAugmentPolicy,
    parse_policy,
)

Matrix = tuple[float, float, float, float, float, float]
Fill = tuple[int, int, int]
Augment = Callable[[np.ndarray, random.Random], np.ndarray]

_INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}
RANDOM_RESAMPLE = ("bilinear", "bicubic")  # timm's _RANDOM_INTERPOLATION: one is drawn per geometric op
TRANSLATE_PCT = 0.45  # timm's translate_pct for RandAugment and AutoAugment: up to 45% of the side


def mean_fill(mean: list[float]) -> Fill:
    """timm's img_mean: the dataset mean on 0..255, the fill of pixels a geometric op uncovers."""
    return tuple(min(255, round(255 * m)) for m in mean)


# --- Pillow's geometry --------------------------------------------------------------------------------


def affine(img: np.ndarray, matrix: Matrix, resample: str, fill: Fill) -> np.ndarray:
    """Pillow's img.transform(size, AFFINE, matrix, resample, fillcolor=fill).

    Output pixel (x, y) samples the input at matrix @ (x + 0.5, y + 0.5), in coordinates where pixel i
    spans [i, i + 1). A sample outside the image is `fill`; inside, neighbours past the border repeat
    the edge. OpenCV's maps count from pixel centres, hence the half-pixel terms folded into the matrix.
    """
    h, w = img.shape[:2]
    a, b, c, d, e, f = matrix
    centres = np.array([[a, b, c + 0.5 * a + 0.5 * b - 0.5], [d, e, f + 0.5 * d + 0.5 * e - 0.5]])
    # Pillow truncates the interpolated value where OpenCV would round (0.4 levels brighter on average):
    # interpolate in float32, then truncate.
    src = img if resample == "nearest" else img.astype(np.float32)
    out = cv2.warpAffine(
        src, centres, (w, h), flags=_INTERPOLATION[resample] | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE
    )
    if out.dtype != np.uint8:
        out = np.clip(out, 0, 255, out=out).astype(np.uint8)
    # The fill test in float64, in Pillow's order of operations, so border pixels match exactly.
    xs, ys = np.arange(w) + 0.5, (np.arange(h) + 0.5)[:, None]
    sx, sy = a * xs + b * ys + c, d * xs + e * ys + f
    outside = (sx < 0) | (sx >= w) | (sy < 0) | (sy >= h)
    cv2.copyTo(_solid(h, w, fill), outside.view(np.uint8), out)  # 150x faster than out[outside] = fill
    return out


_SOLIDS: dict[tuple[int, int, Fill], np.ndarray] = {}


def _solid(h: int, w: int, fill: Fill) -> np.ndarray:
    """An h x w image of one colour, kept: a worker's crops all have one size and its fill one colour."""
    key = (h, w, tuple(fill))
    if key not in _SOLIDS:
        if len(_SOLIDS) >= 8:  # images of many sizes (no crop): keep the memory bounded
            _SOLIDS.clear()
        _SOLIDS[key] = np.full((h, w, 3), fill, dtype=np.uint8)
    return _SOLIDS[key]


def rotate(img: np.ndarray, degrees: float, resample: str, fill: Fill) -> np.ndarray:
    """Pillow's img.rotate(degrees, resample, fillcolor=fill): counter-clockwise about the centre, same size."""
    h, w = img.shape[:2]
    angle = degrees % 360.0
    if angle == 0:  # Pillow's fast paths: no interpolation, no fill
        return img
    if angle == 180:
        return cv2.rotate(img, cv2.ROTATE_180)
    if angle in (90, 270) and w == h:
        return cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE if angle == 90 else cv2.ROTATE_90_CLOCKWISE)
    r = -math.radians(angle)
    a, b, d, e = round(math.cos(r), 15), round(math.sin(r), 15), round(-math.sin(r), 15), round(math.cos(r), 15)
    cx, cy = w / 2, h / 2
    return affine(img, (a, b, a * -cx + b * -cy + cx, d, e, d * -cx + e * -cy + cy), resample, fill)


# --- Pillow's colour ops (ImageOps, ImageEnhance): exact ----------------------------------------------


def _lut(img: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Apply a 256-entry table to every channel, or a [3, 256] table channel by channel."""
    table = np.clip(table, 0, 255).astype(np.uint8)
    return cv2.LUT(img, table if table.ndim == 1 else np.ascontiguousarray(table.T).reshape(256, 1, 3))


def _histograms(img: np.ndarray) -> np.ndarray:
    """Per channel, the count of each value (OpenCV's counts are float32: exact below 2^24 pixels)."""
    return np.stack([cv2.calcHist([img], [ch], None, [256], [0, 256]).ravel() for ch in range(3)]).astype(np.int64)


# Pillow's convert("L"): (19595 R + 38470 G + 7471 B + 32768) >> 16, ITU-R 601-2 weights in 16-bit fixed
# point. In float32 every product and sum here is an integer below 2^24, so exact, and so is the / 2^16.
_LUMA16 = np.array([[19595, 38470, 7471, 32768]], dtype=np.float32)


def luma(img: np.ndarray) -> np.ndarray:
    """Pillow's convert("L"), exactly (checked on all 2^24 colours), 5x faster than in int32 numpy."""
    return (cv2.transform(img.astype(np.float32), _LUMA16) * np.float32(2**-16)).astype(np.uint8)


def blend(degenerate: np.ndarray | float, img: np.ndarray, factor: float) -> np.ndarray:
    """Pillow's Image.blend(degenerate, img, factor), which every ImageEnhance op is: in float32,
    degenerate + factor * (img - degenerate), truncated (in place, in that order: the same roundings)."""
    base = degenerate.astype(np.float32) if isinstance(degenerate, np.ndarray) else np.float32(degenerate)
    out = img.astype(np.float32)
    out -= base
    out *= np.float32(factor)
    out += base
    return np.clip(out, 0, 255, out=out).astype(np.uint8)


def color(img: np.ndarray, factor: float) -> np.ndarray:
    return blend(luma(img)[..., None], img, factor)


def contrast(img: np.ndarray, factor: float) -> np.ndarray:
    gray = luma(img)
    mean = int(int(gray.sum(dtype=np.int64)) / gray.size + 0.5)  # ImageStat's mean of the luma, rounded
    return blend(float(mean), img, factor)


def brightness(img: np.ndarray, factor: float) -> np.ndarray:
    return blend(0.0, img, factor)


_SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float32) / 13  # ImageFilter.SMOOTH


def sharpness(img: np.ndarray, factor: float) -> np.ndarray:
    """Blend with Pillow's SMOOTH-filtered image, which keeps the outermost pixels as they are."""
    smooth = cv2.filter2D(img.astype(np.float32), -1, _SMOOTH, borderType=cv2.BORDER_REPLICATE)
    smooth = np.clip(np.floor(smooth + 0.5), 0, 255)
    smooth[0], smooth[-1], smooth[:, 0], smooth[:, -1] = img[0], img[-1], img[:, 0], img[:, -1]
    return blend(smooth, img, factor)


def auto_contrast(img: np.ndarray) -> np.ndarray:
    """ImageOps.autocontrast: each channel's darkest value to 0 and brightest to 255."""
    tables = []
    for hist in _histograms(img):
        used = np.flatnonzero(hist)
        lo, hi = used[0], used[-1]
        if hi <= lo:
            tables.append(np.arange(256))
            continue
        scale = 255.0 / (hi - lo)
        tables.append(np.trunc(np.arange(256) * scale + (-lo * scale)))
    return _lut(img, np.stack(tables))


def equalize(img: np.ndarray) -> np.ndarray:
    """ImageOps.equalize: each channel through its cumulative histogram, in Pillow's integer steps."""
    tables = []
    for hist in _histograms(img):
        used = hist[hist > 0]
        step = (int(used.sum()) - int(used[-1])) // 255 if len(used) > 1 else 0
        if not step:
            tables.append(np.arange(256))
            continue
        before = np.concatenate([[0], np.cumsum(hist)[:-1]])  # pixels below each value
        tables.append((step // 2 + before) // step)
    return _lut(img, np.stack(tables))


def invert(img: np.ndarray) -> np.ndarray:
    return cv2.bitwise_not(img)


def solarize(img: np.ndarray, threshold: float) -> np.ndarray:
    """Values at or above the threshold inverted."""
    i = np.arange(256)
    return _lut(img, np.where(i < threshold, i, 255 - i))


def solarize_add(img: np.ndarray, add: int, threshold: int = 128) -> np.ndarray:
    """timm's: values below the threshold raised by `add` (at most 255)."""
    i = np.arange(256)
    return _lut(img, np.where(i < threshold, np.minimum(255, i + add), i))


def posterize(img: np.ndarray, bits: int) -> np.ndarray:
    """Keep the `bits` high bits of each value."""
    if bits >= 8:
        return img
    return _lut(img, np.arange(256) & ~(2 ** (8 - bits) - 1))


# --- timm's ops: magnitude to argument, with its draws -------------------------------------------------


def _negate(value: float, rng: random.Random) -> float:
    return -value if rng.random() > 0.5 else value  # timm's _randomly_negate


def _enhance(level: float, rng: random.Random) -> float:
    return level / LEVEL_DENOM * 1.8 + 0.1  # factor 0.1..1.9


def _enhance_increasing(level: float, rng: random.Random) -> float:
    return max(0.1, 1.0 + _negate(level / LEVEL_DENOM * 0.9, rng))  # 1 -/+ up to 0.9: stronger either way


def _posterize_bits(level: float) -> int:
    return int(level / LEVEL_DENOM * 4)


def _solarize_threshold(level: float) -> int:
    return min(256, int(level / LEVEL_DENOM * 256))


# name -> (its level-to-argument rule, what the argument does). timm 1.0's LEVEL_TO_ARG and NAME_TO_OP.
TIMM_OPS: dict[str, tuple[Callable | None, Callable]] = {
    "AutoContrast": (None, auto_contrast),
    "Equalize": (None, equalize),
    "Invert": (None, invert),
    "Rotate": (lambda lv, rng: _negate(lv / LEVEL_DENOM * 30.0, rng), "rotate"),  # degrees, up to 30
    "Posterize": (lambda lv, rng: _posterize_bits(lv), posterize),  # keep 0..4 bits: weaker as level grows
    "PosterizeIncreasing": (lambda lv, rng: 4 - _posterize_bits(lv), posterize),  # keep 4..0 bits
    "PosterizeOriginal": (lambda lv, rng: _posterize_bits(lv) + 4, posterize),  # keep 4..8 bits (the paper's)
    "Solarize": (lambda lv, rng: _solarize_threshold(lv), solarize),  # threshold 0..256
    "SolarizeIncreasing": (lambda lv, rng: 256 - _solarize_threshold(lv), solarize),  # threshold 256..0
    "SolarizeAdd": (lambda lv, rng: min(128, int(lv / LEVEL_DENOM * 110)), solarize_add),  # add 0..110
    "Color": (_enhance, color),
    "ColorIncreasing": (_enhance_increasing, color),
    "Contrast": (_enhance, contrast),
    "ContrastIncreasing": (_enhance_increasing, contrast),
    "Brightness": (_enhance, brightness),
    "BrightnessIncreasing": (_enhance_increasing, brightness),
    "Sharpness": (_enhance, sharpness),
    "SharpnessIncreasing": (_enhance_increasing, sharpness),
    "ShearX": (lambda lv, rng: _negate(lv / LEVEL_DENOM * 0.3, rng), "shear_x"),  # factor up to 0.3
    "ShearY": (lambda lv, rng: _negate(lv / LEVEL_DENOM * 0.3, rng), "shear_y"),
    "TranslateXRel": (lambda lv, rng: _negate(lv / LEVEL_DENOM * TRANSLATE_PCT, rng), "translate_x"),  # of width
    "TranslateYRel": (lambda lv, rng: _negate(lv / LEVEL_DENOM * TRANSLATE_PCT, rng), "translate_y"),  # of height
}


def _geometric(img: np.ndarray, kind: str, arg: float, resample: str, fill: Fill) -> np.ndarray:
    h, w = img.shape[:2]
    if kind == "rotate":
        return rotate(img, arg, resample, fill)
    matrix = {
        "shear_x": (1, arg, 0, 0, 1, 0),
        "shear_y": (1, 0, 0, arg, 1, 0),
        "translate_x": (1, 0, arg * w, 0, 1, 0),
        "translate_y": (1, 0, 0, 0, 1, arg * h),
    }[kind]
    return affine(img, matrix, resample, fill)


@dataclass(frozen=True)
class Drawn:
    """One op as its draws decided it: the op, its argument (None for an op without one), and the
    interpolation of a geometric op (None for the others)."""

    name: str
    arg: float | None = None
    resample: str | None = None


def draw_timm_op(
    name: str,
    prob: float,
    magnitude: float,
    rng: random.Random,
    magnitude_std: float = 0.0,
    magnitude_max: float | None = None,
    resample: str = "random",
) -> Drawn | None:
    """What timm's AugmentOp(name, prob, magnitude, hparams)(img) draws from `random`, drawn from `rng` in the
    same order: whether it applies (None: it does not), the noisy magnitude, the sign, the interpolation.
    resample "random" draws bilinear or bicubic per geometric op, as timm does by default."""
    if prob < 1.0 and rng.random() > prob:
        return None
    if magnitude_std > 0:  # timm's magnitude noise: uniform for an infinite std, else normal
        if magnitude_std == float("inf"):
            magnitude = rng.uniform(0, magnitude)
        else:
            magnitude = rng.gauss(magnitude, magnitude_std)
    magnitude = max(0.0, min(magnitude, magnitude_max or LEVEL_DENOM))
    level_to_arg, op = TIMM_OPS[name]
    arg = None if level_to_arg is None else level_to_arg(magnitude, rng)
    if callable(op):
        return Drawn(name, arg)
    return Drawn(name, arg, rng.choice(RANDOM_RESAMPLE) if resample == "random" else resample)


def apply_timm_op(img: np.ndarray, drawn: Drawn, fill: Fill) -> np.ndarray:
    """The op as drawn, on the image."""
    op = TIMM_OPS[drawn.name][1]
    if callable(op):
        return op(img) if drawn.arg is None else op(img, drawn.arg)
    return _geometric(img, op, drawn.arg, drawn.resample, fill)


def timm_op(
    img: np.ndarray,
    name: str,
    prob: float,
    magnitude: float,
    rng: random.Random,
    fill: Fill,
    magnitude_std: float = 0.0,
    magnitude_max: float | None = None,
    resample: str = "random",
) -> np.ndarray:
    """timm's AugmentOp(name, prob, magnitude, hparams)(img), drawing from `rng` as it draws from `random`."""
    drawn = draw_timm_op(name, prob, magnitude, rng, magnitude_std, magnitude_max, resample)
    return img if drawn is None else apply_timm_op(img, drawn, fill)


class RandAugment:
    """timm's RandAugment: num_layers ops drawn uniformly with replacement, each applied with its probability."""

    def __init__(self, policy: RandAugmentPolicy, fill: Fill, resample: str = "random") -> None:
        self.policy, self.fill, self.resample = policy, fill, resample

    def draw(self, rng: random.Random) -> list[Drawn]:
        """The ops one image gets, in order (those whose probability draw failed left out)."""
        p, ops = self.policy, self.policy.ops
        picked = [ops[rng.randrange(len(ops))] for _ in range(p.num_layers)]
        drawn = [
            draw_timm_op(name, p.prob, p.magnitude, rng, p.magnitude_std, p.magnitude_max, self.resample)
            for name in picked
        ]
        return [d for d in drawn if d is not None]

    def __call__(self, img: np.ndarray, rng: random.Random) -> np.ndarray:
        for drawn in self.draw(rng):
            img = apply_timm_op(img, drawn, self.fill)
        return img


class AutoAugment:
    """timm's AutoAugment: one sub-policy drawn per image, its two ops each applied with their probability."""

    def __init__(self, policy: AutoAugmentPolicy, fill: Fill, resample: str = "random") -> None:
        self.policy, self.fill, self.resample = policy, fill, resample

    def draw(self, rng: random.Random) -> list[Drawn]:
        """The ops one image gets, in order (those whose probability draw failed left out)."""
        drawn = [
            draw_timm_op(name, prob, magnitude, rng, self.policy.magnitude_std, None, self.resample)
            for name, prob, magnitude in rng.choice(self.policy.sub_policies)
        ]
        return [d for d in drawn if d is not None]

    def __call__(self, img: np.ndarray, rng: random.Random) -> np.ndarray:
        for drawn in self.draw(rng):
            img = apply_timm_op(img, drawn, self.fill)
        return img


# --- torchvision's TrivialAugmentWide ------------------------------------------------------------------


def _float32_linspace(first: float, last: float) -> np.ndarray:
    """torch.linspace(first, last, 31) in float32, bit for bit: a float32 step, the first half counted up
    from `first` and the second down from `last`, each value one fused multiply-add (float64 holds the
    product of two float32 numbers exactly, so one rounding to float32 is the fused one)."""
    n = TRIVIAL_AUGMENT_BINS
    start, end = np.float32(first), np.float32(last)
    step = np.float64((end - start) / np.float32(n - 1))
    k = np.arange(n)
    values = np.where(k < n // 2, np.float64(start) + step * k, np.float64(end) - step * (n - 1 - k))
    return values.astype(np.float32).astype(np.float64)


def trivial_augment_magnitudes() -> dict[str, np.ndarray]:
    """Each op's 31 magnitudes, as torchvision's float32 tables hold them (Posterize: 8 down to 2 bits)."""
    out = {}
    for name, (span, _) in TRIVIAL_AUGMENT_WIDE.items():
        if span is None:
            out[name] = np.zeros(1)
        elif name == "Posterize":
            out[name] = 8.0 - np.round(np.arange(TRIVIAL_AUGMENT_BINS) / ((TRIVIAL_AUGMENT_BINS - 1) / 6))
        else:
            out[name] = _float32_linspace(*span)
    return out


def _inverse_affine(
    center: tuple[float, float], translate: tuple[float, float], shear_degrees: tuple[float, float]
) -> Matrix:
    """torchvision's _get_inverse_affine_matrix without rotation or scale: its exact floats."""
    sx, sy = math.radians(shear_degrees[0]), math.radians(shear_degrees[1])
    (cx, cy), (tx, ty) = center, translate
    a = math.cos(-sy) / math.cos(sy)
    b = -math.cos(-sy) * math.tan(sx) / math.cos(sy) - math.sin(0.0)
    c = math.sin(-sy) / math.cos(sy)
    d = -math.sin(-sy) * math.tan(sx) / math.cos(sy) + math.cos(0.0)
    m = [d, -b, 0.0, -c, a, 0.0]
    m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty)
    m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty)
    m[2] += cx
    m[5] += cy
    return tuple(m)


def trivial_op(
    img: np.ndarray, name: str, magnitude: float, resample: str = "bilinear", fill: Fill = (0, 0, 0)
) -> np.ndarray:
    """torchvision's autoaugment._apply_op(img, name, magnitude, interpolation, fill) on a Pillow image."""
    h, w = img.shape[:2]
    if name in ("ShearX", "ShearY"):
        shear = math.degrees(math.atan(magnitude))
        return affine(
            img, _inverse_affine((0.0, 0.0), (0, 0), (shear, 0.0) if name == "ShearX" else (0.0, shear)), resample, fill
        )
    if name in ("TranslateX", "TranslateY"):
        shift = (int(magnitude), 0) if name == "TranslateX" else (0, int(magnitude))
        return affine(img, _inverse_affine((w * 0.5, h * 0.5), shift, (0.0, 0.0)), resample, fill)
    if name == "Rotate":
        return rotate(img, magnitude, resample, fill)
    enhance = {"Brightness": brightness, "Color": color, "Contrast": contrast, "Sharpness": sharpness}
    if name in enhance:
        return enhance[name](img, 1.0 + magnitude)
    if name == "Posterize":
        return posterize(img, int(magnitude))
    if name == "Solarize":
        return solarize(img, magnitude)
    return {"AutoContrast": auto_contrast, "Equalize": equalize, "Identity": lambda x: x}[name](img)


class TrivialAugmentWide:
    """torchvision's TrivialAugmentWide, as its reference scripts call it (`--auto-augment ta_wide`):
    bilinear interpolation, black fill. One op, one of 31 magnitude bins and a sign, uniformly."""

    def __init__(self, resample: str = "bilinear", fill: Fill = (0, 0, 0)) -> None:
        self.resample, self.fill = resample, fill
        self.magnitudes = trivial_augment_magnitudes()
        self.names = tuple(TRIVIAL_AUGMENT_WIDE)

    def draw(self, rng: random.Random) -> tuple[str, float]:
        """The op and its signed magnitude for one image."""
        name = self.names[rng.randrange(len(self.names))]
        bins = self.magnitudes[name]
        magnitude = float(bins[rng.randrange(len(bins))])
        if TRIVIAL_AUGMENT_WIDE[name][1] and rng.random() < 0.5:
            magnitude = -magnitude
        return name, magnitude

    def __call__(self, img: np.ndarray, rng: random.Random) -> np.ndarray:
        return trivial_op(img, *self.draw(rng), self.resample, self.fill)


def policy_augment(policy: Policy, mean: list[float]) -> Augment:
    """The callable (image, rng) -> image of a parsed data.auto_augment policy."""
    if isinstance(policy, RandAugmentPolicy):
        return RandAugment(policy, mean_fill(mean))
    if isinstance(policy, AutoAugmentPolicy):
        return AutoAugment(policy, mean_fill(mean))
    if isinstance(policy, TrivialAugmentPolicy):
        return TrivialAugmentWide()
    raise TypeError(f"not a policy: {policy!r}")


# --- random erasing --------------------------------------------------------------------------------------

Box = tuple[int, int, int, int]  # top, left, height, width (pixels)


NOISE_BITS = 16  # resolution of the erasing noise's inverse-CDF tables: each level's probability to 2^-16


def quantised_normal_tables(mean: list[float], std: list[float]) -> np.ndarray:
    """Per channel, a table mapping a uniform 16-bit integer u to the uint8 level of N(0, 1) noise in
    normalised space, v = clip(round(255 * (mean + std * z)), 0, 255), by its inverse CDF: v comes with
    exactly the probability that rounding a normal draw gives it (to 2^-16). Indexing a table with random
    integers costs about a sixth of drawing the normals and rounding them (measured: 28 ns a normal)."""
    u = (np.arange(2**NOISE_BITS) + 0.5) / 2**NOISE_BITS
    tables = []
    for m, s in zip(mean, std):
        # P(v <= k) = P(255 * (m + s * z) < k + 0.5) = Phi(((k + 0.5) / 255 - m) / s), for k = 0..254
        cdf = [0.5 * math.erfc(-(((k + 0.5) / 255 - m) / s) / math.sqrt(2)) for k in range(255)]
        tables.append(np.searchsorted(np.array(cdf), u, side="right").astype(np.uint8))
    return np.stack(tables)


class RandomErasing:
    """timm's RandomErasing(probability, min_area, max_area, min_aspect, mode, min_count, max_count) on one
    image, with the fill mapped to uint8 (module docstring)."""

    def __init__(
        self,
        prob: float,
        min_area: float,
        max_area: float,
        min_aspect: float,
        mode: str,
        min_count: int,
        max_count: int,
        mean: list[float],
        std: list[float],
    ) -> None:
        self.prob, self.min_area, self.max_area = prob, min_area, max_area
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
        self.mode, self.min_count, self.max_count = mode, min_count, max_count
        self.mean_level = np.clip(np.rint(255 * np.asarray(mean)), 0, 255).astype(np.uint8)  # z = 0
        self.tables = quantised_normal_tables(mean, std) if mode != "const" else None

    def boxes(self, height: int, width: int, rng: random.Random) -> list[Box]:
        """The boxes to erase, or none, with timm's draws: each box's area is a uniform fraction of the
        image divided by the count, its aspect log-uniform; 10 tries to fit, else no box."""
        if rng.random() > self.prob:
            return []
        count = self.min_count if self.min_count == self.max_count else rng.randint(self.min_count, self.max_count)
        out = []
        for _ in range(count):
            for _attempt in range(10):
                target = rng.uniform(self.min_area, self.max_area) * height * width / count
                aspect = math.exp(rng.uniform(*self.log_aspect))
                h, w = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
                if w < width and h < height:
                    out.append((rng.randint(0, height - h), rng.randint(0, width - w), h, w))
                    break
        return out

    def __call__(self, img: np.ndarray, rng: random.Random) -> np.ndarray:
        boxes = self.boxes(img.shape[0], img.shape[1], rng)
        if not boxes:
            return img
        noise = np.random.default_rng(rng.getrandbits(64))
        img = img.copy()  # never write into a dataset's own array
        for top, left, h, w in boxes:
            box = img[top : top + h, left : left + w]
            if self.mode == "const":
                box[:] = self.mean_level
                continue
            # pixel: a level per pixel and channel; rand: one per channel for the whole box
            u = noise.integers(0, 2**NOISE_BITS, (3, h, w) if self.mode == "pixel" else (3, 1, 1), dtype=np.uint16)
            for c in range(3):  # a channel at a time: contiguous table lookups, 2x faster than one over all
                box[..., c] = self.tables[c].take(u[c])
        return img


def policy_from_config(data_cfg: dict) -> Augment | None:
    """data.auto_augment's callable (image, rng) -> image, or None when it is off."""
    text = data_cfg.get("auto_augment")
    return policy_augment(parse_policy(text), data_cfg["mean"]) if text else None


def erasing_from_config(data_cfg: dict) -> RandomErasing | None:
    """data.random_erasing's callable (image, rng) -> image, or None when its probability is 0."""
    erasing = data_cfg.get("random_erasing") or {}
    if erasing.get("prob", 0.0) <= 0:
        return None
    return RandomErasing(mean=data_cfg["mean"], std=data_cfg["std"], **erasing)
