"""Mixup and CutMix on the device, in the trainer's batch-transform slot, with timm's semantics
(timm/data/mixup.py, `Mixup`).

Zhang et al., "mixup: Beyond Empirical Risk Minimization" (ICLR 2018); Yun et al., "CutMix: Regularization
Strategy to Train Strong Classifiers with Localizable Features" (ICCV 2019).

What a batch gets (train.mixup; timm's arguments in brackets):
- with probability `prob` [prob] it is mixed at all; when both alphas are set, CutMix with probability
  `switch_prob` [switch_prob], else mixup; λ ~ Beta(α, α) of the one chosen [mixup_alpha, cutmix_alpha];
- mixup: λ x + (1 - λ) x', each image x with its partner x';
- CutMix: a box of about (1 - λ) H W pixels, centred on a uniform pixel and clipped to the image, pasted
  from x'; with `correct_lam` [correct_lam] λ becomes 1 - (the clipped box's area) / (H W), the share of x
  that is left. `cutmix_minmax` [cutmix_minmax] draws the box's sides instead, each a uniform fraction of
  the image side in [min, max) (timm then sets cutmix_alpha to 1 and always corrects λ);
- targets: λ y + (1 - λ) y', y the one-hot label smoothed by train.label_smoothing [label_smoothing]: the
  smoothing is folded in here, and the step then smooths nothing more (senet.losses).
Each image's partner is the image at the mirrored place in the batch (timm's x.flip(0)); the loader
shuffles, so that is a random pairing. In an odd batch (a batch with skipped bad images) the middle image
is its own partner and so stays as it is. `mode` [mode]: "batch" draws once per batch, "pair" once per
mirrored pair, "elem" once per image.

The trainer hands the slot uint8 NHWC batches on the device, before normalisation: an affine map, so
mixing before it equals mixing after up to float rounding. Mixed batches come out float32 in 0..255
(CutMix's pixels copied exactly).

Draws: a numpy Generator seeded from (train.seed, epoch, batch index in the epoch, rank) draws a handful of
numbers on the host for each batch, so a run resumed mid-epoch draws exactly what the uninterrupted run drew
(the loader's sampler is seeded the same way), and ranks draw apart, as timm's per-rank seeds do. Nothing
is read back from the device. In batch mode the draws reach the device as op attributes; in pair and elem
modes as one small tensor each (N values), copied beside the batch as the loader copies its labels. The
draws are made in timm's order with timm's shapes, so replaying the numbers timm drew gives timm's boxes and
λ (tests/test_mixup.py, against tests/fixtures/recipes/mixup_*.npz).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import paddle

from senet.losses import smoothed_one_hot
from senet.step import BatchTransform

MODES = ("batch", "pair", "elem")
STREAM = zlib.crc32(b"senet.mixup")  # keeps these draws apart from others seeded by (seed, epoch, ...)


@dataclass(frozen=True)
class MixupOptions:
    """train.mixup: see the module docstring. Off unless alpha, cutmix_alpha or cutmix_minmax is set."""

    alpha: float = 0.0
    cutmix_alpha: float = 0.0
    cutmix_minmax: tuple[float, float] | None = None
    prob: float = 1.0
    switch_prob: float = 0.5
    mode: str = "batch"
    correct_lam: bool = True

    @property
    def enabled(self) -> bool:
        return self.alpha > 0 or self.cutmix_alpha > 0 or self.cutmix_minmax is not None

    @property
    def cut_alpha(self) -> float:
        """CutMix's α: timm forces 1 when cutmix_minmax draws the box (λ then comes from the box alone)."""
        return 1.0 if self.cutmix_minmax is not None else self.cutmix_alpha


def mixup_options(cfg: dict) -> MixupOptions:
    """The options of a resolved config's train.mixup section (absent from configs saved before it: off)."""
    m = dict(cfg["train"].get("mixup") or {})
    if m.get("cutmix_minmax") is not None:
        m["cutmix_minmax"] = tuple(m["cutmix_minmax"])
    return MixupOptions(**m)


def mixing_on(cfg: dict) -> bool:
    """Whether the config trains on mixed batches (and so folds label smoothing into the targets)."""
    return mixup_options(cfg).enabled


@dataclass(frozen=True)
class Draw:
    """One batch's draws, per row: one row in batch mode, else one per image."""

    lam: np.ndarray  # [rows] the share of each image kept (after CutMix's correction); 1 = not mixed
    cutmix: np.ndarray  # [rows] bool: CutMix (else mixup) for the mixed rows
    box: np.ndarray  # [rows, 4] int (y0, y1, x0, x1), the pasted box of the CutMix rows, rows y0..y1-1


def _lam_per_batch(rng: Any, o: MixupOptions) -> tuple[float, bool]:
    """timm's Mixup._params_per_batch."""
    if not rng.random() < o.prob:
        return 1.0, False
    if o.alpha > 0 and o.cut_alpha > 0:
        cutmix = bool(rng.random() < o.switch_prob)
        return float(rng.beta(o.cut_alpha, o.cut_alpha) if cutmix else rng.beta(o.alpha, o.alpha)), cutmix
    if o.alpha > 0:
        return float(rng.beta(o.alpha, o.alpha)), False
    return float(rng.beta(o.cut_alpha, o.cut_alpha)), True


def _lam_per_row(rng: Any, o: MixupOptions, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """timm's Mixup._params_per_elem: float32 λ, as timm keeps them (its boxes are computed from those)."""
    cutmix = np.zeros(rows, dtype=bool)
    if o.alpha > 0 and o.cut_alpha > 0:
        cutmix = rng.random(rows) < o.switch_prob
        lam_mix = np.where(cutmix, rng.beta(o.cut_alpha, o.cut_alpha, size=rows), rng.beta(o.alpha, o.alpha, size=rows))
    elif o.alpha > 0:
        lam_mix = rng.beta(o.alpha, o.alpha, size=rows)
    else:
        cutmix = np.ones(rows, dtype=bool)
        lam_mix = rng.beta(o.cut_alpha, o.cut_alpha, size=rows)
    lam = np.where(rng.random(rows) < o.prob, lam_mix.astype(np.float32), np.float32(1.0))
    return lam.astype(np.float32), cutmix


def _boxes(rng: Any, o: MixupOptions, lam: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """CutMix boxes [k, 4] (y0, y1, x0, x1) for λ [k], and the λ the boxes leave: timm's cutmix_bbox_and_lam.

    One integers() call per kind of draw, (y, x) pairs in C order: the numbers timm draws box by box, in its
    order (for cutmix_minmax only with one box a batch: timm draws both sides before both corners per box).
    """
    k = len(lam)
    if o.cutmix_minmax is not None:  # timm's rand_bbox_minmax: sides uniform in [min, max) of the image side
        lo, hi = o.cutmix_minmax
        side = rng.integers([int(h * lo), int(w * lo)], [int(h * hi), int(w * hi)], size=(k, 2))
        corner = rng.integers(0, np.array([h, w]) - side + 1, size=(k, 2))
        y0, x0 = corner[:, 0], corner[:, 1]
        y1, x1 = y0 + side[:, 0], x0 + side[:, 1]
    else:  # timm's rand_bbox: sides sqrt(1 - λ) of the image's, centred on a uniform pixel, clipped
        ratio = np.sqrt(1 - lam)
        cut_h, cut_w = (h * ratio).astype(np.int64), (w * ratio).astype(np.int64)
        centre = rng.integers(0, [h, w], size=(k, 2))
        cy, cx = centre[:, 0], centre[:, 1]
        y0, y1 = np.clip(cy - cut_h // 2, 0, h), np.clip(cy + (cut_h + 1) // 2, 0, h)
        x0, x1 = np.clip(cx - cut_w // 2, 0, w), np.clip(cx + (cut_w + 1) // 2, 0, w)
    box = np.stack([y0, y1, x0, x1], axis=1).astype(np.int64)
    if o.correct_lam or o.cutmix_minmax is not None:
        lam = (1.0 - (y1 - y0) * (x1 - x0) / float(h * w)).astype(lam.dtype)
    return box, lam


def draw(rng: Any, o: MixupOptions, n: int, h: int, w: int) -> Draw:
    """One batch's draws for n images of h x w pixels, from `rng` (a numpy Generator, or anything with its
    random / beta / integers methods: the tests replay timm's numbers through one)."""
    if o.mode == "batch":
        lam, cutmix = _lam_per_batch(rng, o)
        lams, cuts = np.array([lam]), np.array([cutmix and lam != 1.0])
    else:
        lams, cuts = _lam_per_row(rng, o, n // 2 if o.mode == "pair" else n)
        cuts = cuts & (lams != 1.0)
    box = np.zeros((len(lams), 4), dtype=np.int64)
    if cuts.any():
        box[cuts], lams[cuts] = _boxes(rng, o, lams[cuts], h, w)
    if o.mode == "pair":  # row i and its partner n-1-i share a draw; an odd batch's middle row is not mixed
        middle = n - 2 * len(lams)
        lams = np.concatenate([lams, np.ones(middle, lams.dtype), lams[::-1]])
        cuts = np.concatenate([cuts, np.zeros(middle, bool), cuts[::-1]])
        box = np.concatenate([box, np.zeros((middle, 4), np.int64), box[::-1]])
    return Draw(lams, cuts, box)


def _box_mask(h: int, w: int, y0: Any, y1: Any, x0: Any, x1: Any) -> paddle.Tensor:
    """bool [rows, h, w, 1]: inside the box, from ints (one box) or int tensors [rows, 1, 1, 1]."""
    ys = paddle.arange(h, dtype="int64").reshape([1, h, 1, 1])
    xs = paddle.arange(w, dtype="int64").reshape([1, 1, w, 1])
    return (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)


def mix_images(images: paddle.Tensor, d: Draw) -> paddle.Tensor:
    """The batch (uint8 NHWC) mixed with its mirror as `d` says, float32 in 0..255 (CutMix's pixels are
    copied exactly); the batch itself when nothing is mixed. Float32 because Paddle's CPU flip and where
    have no uint8 kernels; the normalisation after it casts to float32 anyway."""
    n, h, w, _ = images.shape
    if len(d.lam) == 1:  # batch mode: the draws are op attributes, nothing is copied to the device
        lam = float(d.lam[0])
        if lam == 1.0:
            return images
        x = images.astype("float32")
        if d.cutmix[0]:
            return paddle.where(_box_mask(h, w, *(int(v) for v in d.box[0])), x.flip([0]), x)
        return x * lam + x.flip([0]) * (1.0 - lam)
    lam = paddle.to_tensor(d.lam.astype(np.float32), place=images.place).reshape([n, 1, 1, 1])
    cut = paddle.to_tensor(d.cutmix, place=images.place).reshape([n, 1, 1, 1])
    box = paddle.to_tensor(d.box, place=images.place).reshape([n, 4, 1, 1, 1])
    x = images.astype("float32")
    mirror = x.flip([0])
    mixed = x * lam + mirror * (1.0 - lam)
    pasted = paddle.where(_box_mask(h, w, box[:, 0], box[:, 1], box[:, 2], box[:, 3]), mirror, x)
    return paddle.where(cut, pasted, mixed)


def mix_targets(labels: paddle.Tensor, d: Draw, classes: int, smoothing: float) -> paddle.Tensor:
    """λ y + (1 - λ) y' per row, y the smoothed one-hot labels (timm's mixup_target)."""
    y = smoothed_one_hot(labels, classes, smoothing)
    if len(d.lam) == 1:
        lam = float(d.lam[0])
        return y * lam + y.flip([0]) * (1.0 - lam)
    lam = paddle.to_tensor(d.lam.astype(np.float32), place=y.place).reshape([-1, 1])
    return y * lam + y.flip([0]) * (1.0 - lam)


class Mixup:
    """Mixup and CutMix for the trainer: `at(epoch, batch)` is the transform of that batch (senet.step)."""

    def __init__(
        self, options: MixupOptions, num_classes: int, label_smoothing: float = 0.0, seed: int = 0, rank: int = 0
    ) -> None:
        if options.mode not in MODES:
            raise ValueError(f"train.mixup.mode: {options.mode!r} is not one of {', '.join(MODES)}")
        self.options, self.num_classes, self.label_smoothing = options, num_classes, label_smoothing
        self.seed, self.rank = seed, rank

    def rng(self, epoch: int, batch: int) -> np.random.Generator:
        """The draws of batch `batch` (0-based, within the epoch) of `epoch`, on this rank."""
        return np.random.default_rng([self.seed, epoch, batch, self.rank, STREAM])

    def apply(self, images: paddle.Tensor, labels: paddle.Tensor, rng: Any) -> tuple[paddle.Tensor, paddle.Tensor]:
        """(mixed images, soft targets [N, classes]) of a uint8 NHWC batch and its int labels, drawn from rng."""
        n, h, w, _ = images.shape
        d = draw(rng, self.options, n, h, w)
        return mix_images(images, d), mix_targets(labels, d, self.num_classes, self.label_smoothing)

    def at(self, epoch: int, batch: int) -> BatchTransform:
        return lambda images, labels: self.apply(images, labels, self.rng(epoch, batch))


def build_mixup(cfg: dict, rank: int = 0) -> Mixup | None:
    """The config's Mixup, or None when train.mixup leaves it off (the step then runs as before)."""
    options = mixup_options(cfg)
    if not options.enabled:
        return None
    if options.cutmix_minmax is not None:  # timm draws the side in [int(size lo), int(size hi)): never empty
        size = cfg["data"]["image_size"]
        lo, hi = options.cutmix_minmax
        if int(size * hi) <= int(size * lo):
            raise ValueError(
                f"train.mixup.cutmix_minmax={list(options.cutmix_minmax)} leaves no box side to draw "
                f"at data.image_size={size} (int({size} x {lo}) = int({size} x {hi})); widen it"
            )
    return Mixup(options, cfg["model"]["num_classes"], cfg["train"]["label_smoothing"], cfg["train"]["seed"], rank)
