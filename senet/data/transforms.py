"""Per-image augmentation on uint8 HWC RGB arrays, with OpenCV and numpy slicing.

- ImageNet train: random-resized-crop (Szegedy et al. 2015, "Going deeper with convolutions",
  sec. 6, as implemented by torchvision: 10 tries, then a centre crop) and horizontal flip.
- ImageNet eval: resize the shorter side, then centre crop (He et al. 2016, sec. 3.4).
- CIFAR train: pad 4 px with zeros, random crop back, flip (He et al. 2016, sec. 4.2).

Randomness comes from a `random.Random` the caller seeds per sample from (seed, epoch, index), so
an epoch's augmentation is the same whatever the number of workers, and resuming mid-epoch
reproduces it exactly. Normalisation is not here: it runs once per batch on the device
(`senet.data.loader.normalize_batch`).
"""

from __future__ import annotations

import math
import random

import cv2
import numpy as np

# ITU-R 601 luma weights, as PIL's convert("L") uses for torchvision's colour jitter.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize with area averaging when shrinking (anti-aliased, like PIL's bilinear) and bilinear otherwise."""
    h, w = img.shape[:2]
    if (w, h) == (width, height):
        return img
    shrinking = width <= w and height <= h
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def random_resized_crop(
    img: np.ndarray, size: int, scale: tuple[float, float], ratio: tuple[float, float], rng: random.Random
) -> np.ndarray:
    """Crop a random area fraction in `scale` with aspect ratio in `ratio` (log-uniform), resize to size x size."""
    h, w = img.shape[:2]
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = h * w * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            y, x = rng.randint(0, h - ch), rng.randint(0, w - cw)
            break
    else:  # no fit in 10 tries (very elongated image): the largest centre crop within `ratio`
        if w / h < ratio[0]:
            cw, ch = w, round(w / ratio[0])
        elif w / h > ratio[1]:
            cw, ch = round(h * ratio[1]), h
        else:
            cw, ch = w, h
        y, x = (h - ch) // 2, (w - cw) // 2
    return resize(img[y : y + ch, x : x + cw], size, size)


def resize_center_crop(img: np.ndarray, resize_to: int, crop: int) -> np.ndarray:
    """Resize the shorter side to `resize_to` (the longer truncated, as torchvision does), then centre-crop."""
    h, w = img.shape[:2]
    if h <= w:
        nh, nw = resize_to, int(resize_to * w / h)
    else:
        nh, nw = int(resize_to * h / w), resize_to
    img = resize(img, nw, nh)
    if crop > min(nh, nw):
        raise ValueError(f"eval_crop {crop} is larger than eval_resize {resize_to}")
    y, x = round((nh - crop) / 2), round((nw - crop) / 2)
    return img[y : y + crop, x : x + crop]


def pad_crop(img: np.ndarray, pad: int, rng: random.Random) -> np.ndarray:
    """A random crop of the image padded with `pad` zero pixels per side, without building the padded copy."""
    if pad <= 0:
        return img
    h, w = img.shape[:2]
    dy, dx = rng.randint(-pad, pad), rng.randint(-pad, pad)  # crop origin relative to the image
    out = np.zeros_like(img)
    # A padding larger than the image (e.g. digits at 8 px, pad_crop 12) can put the crop wholly in the
    # zeros: the overlap is then empty, never a negative slice.
    y0, x0 = max(dy, 0), max(dx, 0)
    y1, x1 = max(y0, min(dy + h, h)), max(x0, min(dx + w, w))
    out[y0 - dy : y1 - dy, x0 - dx : x1 - dx] = img[y0:y1, x0:x1]
    return out


def hflip(img: np.ndarray, p: float, rng: random.Random) -> np.ndarray:
    """Mirror left-right with probability p."""
    # cv2.flip, not the view img[:, ::-1]: stacking negative-stride views into a batch copies
    # 3 bytes at a time, 4x slower than stacking contiguous images.
    return cv2.flip(img, 1) if rng.random() < p else img


def color_jitter(img: np.ndarray, strength: float, rng: random.Random) -> np.ndarray:
    """Brightness, contrast and saturation, each by a factor uniform in [1 - s, 1 + s], in that order."""
    if strength <= 0:
        return img
    b, c, s = (rng.uniform(max(0.0, 1 - strength), 1 + strength) for _ in range(3))
    x = np.clip(img.astype(np.float32) * b, 0, 255)
    mean = float((x @ _LUMA).mean())
    x = np.clip((x - mean) * c + mean, 0, 255)
    gray = (x @ _LUMA)[..., None]
    x = np.clip((x - gray) * s + gray, 0, 255)
    return (x + 0.5).astype(np.uint8)
