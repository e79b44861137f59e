"""Settings a data source does not read, and the one-line notice when one of them is set anyway.

An unknown key is an error (senet.config); a known key that this source never reads would pass
silently, e.g. `data.image_size=64` on CIFAR, whose images stay 32x32. A key gets a notice when
its value differs both from the default and from what the source does anyway (so a CIFAR config
may say `image_size: 32`).
"""

from __future__ import annotations

import os
import sys

from senet.config import DEFAULTS

ARRAY_SIZE = 32  # CIFAR's images are 32x32; digits are upsampled to data.image_size / eval_crop (demo: 32)
_FILES_ONLY = ("train_list", "val_list", "on_bad_image")  # lists and bad-file handling: image folders only
_SYNTHETIC_ONLY = ("synthetic_train_size", "synthetic_val_size")
_CROPS = ("eval_resize", "rrc_scale", "rrc_ratio")  # an array source never resizes or random-resized-crops

# data.name -> (keys it ignores, values of them that say what it does anyway, why)
IGNORED: dict[str, tuple[tuple[str, ...], dict, str]] = {
    "imagenet": (
        ("pad_crop", *_SYNTHETIC_ONLY),
        {},
        "image folders train on random-resized crops (data.rrc_*), not pad-and-crop",
    ),
    "cifar": (
        ("image_size", "eval_crop", *_CROPS, *_FILES_ONLY, *_SYNTHETIC_ONLY),
        {"image_size": ARRAY_SIZE, "eval_crop": ARRAY_SIZE, "eval_resize": ARRAY_SIZE},
        "its images are 32x32 and train with pad-and-crop (data.pad_crop) and flips, never resized",
    ),
    "digits": (
        ("root", *_CROPS, *_FILES_ONLY, *_SYNTHETIC_ONLY),
        {"eval_resize": ARRAY_SIZE},
        "scikit-learn's bundled 8x8 digits, upsampled to data.image_size (train) and data.eval_crop (val), "
        "train with pad-and-crop (data.pad_crop) and flips",
    ),
    "synthetic": (
        ("root", "pad_crop", *_CROPS, *_FILES_ONLY),
        {"pad_crop": 0},
        "its images are generated at data.image_size (train) and data.eval_crop (val): no crops; flips, "
        "data.auto_augment and data.random_erasing apply",
    ),
}

_printed: set[str] = set()


def _source(name: str) -> tuple[tuple[str, ...], dict, str]:
    return IGNORED.get("cifar" if name.startswith("cifar") else name, ((), {}, ""))  # unknown: build_dataset says


def ignored_settings(cfg: dict) -> list[str]:
    """`data.key=value` for each setting this data source ignores that is set to a value that would matter."""
    d = cfg["data"]
    keys, harmless, _ = _source(d["name"])
    values = {k: d.get(k, DEFAULTS["data"][k]) for k in keys}
    return [f"data.{k}={v}" for k, v in values.items() if v != DEFAULTS["data"][k] and v != harmless.get(k)]


def ignored_notice(cfg: dict) -> str | None:
    """The one-line notice for ignored_settings, or None."""
    settings = ignored_settings(cfg)
    if not settings:
        return None
    name = cfg["data"]["name"]
    why = _source(name)[2]
    return f"notice: data.name={name} ignores {', '.join(settings)}: {why}"


def print_ignored_notice(cfg: dict) -> None:
    """Print the notice to stderr, once per process and only on rank 0 (every tool builds data through here)."""
    notice = ignored_notice(cfg)
    if notice and notice not in _printed and os.environ.get("PADDLE_TRAINER_ID", "0") == "0":
        _printed.add(notice)
        print(notice, file=sys.stderr, flush=True)
