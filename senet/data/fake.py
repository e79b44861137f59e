"""Tiny fake datasets in the real on-disk formats, for tests and for trying the tools.

- An ImageNet-layout folder (train/ and val/ class folders) whose files cycle through the formats
  a real crawl contains: RGB JPEG, upper-case .JPEG, PNG, grayscale JPEG, CMYK JPEG, PNG with
  alpha, 16-bit PNG.
- CIFAR-10/100 "python version" tarballs with the official names and member layout.

Each class gets its own base colour, so a model can learn the fake data (useful for a demo), and
everything is deterministic for a given seed.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile

import cv2
import numpy as np

# (extension, kind): the cycle of file formats written per class.
FORMATS = [
    (".jpg", "rgb"),
    (".JPEG", "rgb"),
    (".png", "rgb"),
    (".jpeg", "gray"),
    (".jpg", "cmyk"),
    (".PNG", "rgba"),
    (".png", "rgb16"),
]


def fake_image(rng: np.random.Generator, label: int, num_classes: int, width: int, height: int) -> np.ndarray:
    """A smooth RGB uint8 image [H, W, 3] tinted by its class; compresses like a photo, unlike pure noise."""
    hue = int(180 * label / max(num_classes, 1))
    base = cv2.cvtColor(np.array([[[hue, 160, 200]]], dtype=np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)
    noise = cv2.resize(
        rng.normal(0, 40, (max(height // 16, 2), max(width // 16, 2), 3)).astype(np.float32),
        (width, height),
        interpolation=cv2.INTER_CUBIC,
    )
    fine = rng.normal(0, 6, (height, width, 3)).astype(np.float32)
    return np.clip(base + noise + fine, 0, 255).astype(np.uint8)


def _write_cmyk_jpeg(path: str, rgb: np.ndarray) -> bool:
    # OpenCV cannot write CMYK; Pillow (present as a matplotlib dependency) can. Without it we write
    # an RGB JPEG instead and say so by returning False.
    try:
        from PIL import Image
    except ImportError:
        return False
    Image.fromarray(rgb).convert("CMYK").save(path, "JPEG", quality=90)
    return True


def write_image(path: str, rgb: np.ndarray, kind: str) -> None:
    """Write an RGB uint8 image as `kind` (rgb, gray, cmyk, rgba, rgb16) in the format of path's extension."""
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if kind == "cmyk" and _write_cmyk_jpeg(path, rgb):
        return
    if kind == "gray":
        img = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    elif kind == "rgba":
        img = np.dstack([bgr, np.full(bgr.shape[:2], 200, np.uint8)])
    elif kind == "rgb16":
        img = bgr.astype(np.uint16) * 257
    else:
        img = bgr
    ext = os.path.splitext(path)[1]
    params = [cv2.IMWRITE_JPEG_QUALITY, 90] if ext.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext.lower(), img, params)
    if not ok:
        raise OSError(f"OpenCV could not encode {path}")
    buf.tofile(path)


def make_fake_imagenet(
    out_dir: str,
    classes: int = 4,
    train_per_class: int = 7,
    val_per_class: int = 3,
    size: tuple[int, int] = (64, 48),
    seed: int = 0,
    jpeg_only: bool = False,
) -> str:
    """Write out_dir/{train,val}/<class>/<images>; return out_dir. size is (width, height).

    Formats cycle through FORMATS, or are all RGB .JPEG with jpeg_only (like ImageNet, for benchmarks).
    """
    rng = np.random.default_rng(seed)
    names = [f"n{i:08d}" for i in range(classes)]  # WordNet-id-like, so sorted order = label order
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for label, name in enumerate(names):
            folder = os.path.join(out_dir, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                ext, kind = (".JPEG", "rgb") if jpeg_only else FORMATS[(label + i) % len(FORMATS)]
                img = fake_image(rng, label, classes, *size)
                write_image(os.path.join(folder, f"{name}_{i:04d}{ext}"), img, kind)
    return out_dir


def _cifar_batch(rng: np.random.Generator, n: int, num_classes: int, label_key: bytes, name: str) -> dict:
    labels = [int(x) for x in np.arange(n) % num_classes]  # every class present, as in the real files
    rng.shuffle(labels)
    images = np.stack([fake_image(rng, y, num_classes, 32, 32) for y in labels]) if n else np.zeros((0, 32, 32, 3))
    data = images.astype(np.uint8).transpose(0, 3, 1, 2).reshape(n, 3072)  # HWC -> the official CHW planes
    batch = {
        b"batch_label": name.encode(),
        label_key: labels,
        b"data": data,
        b"filenames": [f"fake_{i:05d}.png".encode() for i in range(n)],
    }
    if label_key == b"fine_labels":
        batch[b"coarse_labels"] = [y // 5 for y in labels]
    return batch


def make_fake_cifar(out_dir: str, kind: str = "cifar10", train: int = 100, test: int = 30, seed: int = 0) -> str:
    """Write a CIFAR-10 or CIFAR-100 python-version tarball (official name and layout) in out_dir; return its path."""
    rng = np.random.default_rng(seed)
    os.makedirs(out_dir, exist_ok=True)
    if kind == "cifar10":
        folder, tar_name, k, label_key = "cifar-10-batches-py", "cifar-10-python.tar.gz", 10, b"labels"
        per = -(-train // 5)
        members = {
            f"data_batch_{i + 1}": _cifar_batch(
                rng, min(per, max(train - i * per, 0)), k, label_key, f"training batch {i + 1} of 5"
            )
            for i in range(5)
        }
        members["test_batch"] = _cifar_batch(rng, test, k, label_key, "testing batch 1 of 1")
        members["batches.meta"] = {
            b"label_names": [f"class{i}".encode() for i in range(k)],
            b"num_cases_per_batch": per,
            b"num_vis": 3072,
        }
    elif kind == "cifar100":
        folder, tar_name, k, label_key = "cifar-100-python", "cifar-100-python.tar.gz", 100, b"fine_labels"
        members = {
            "train": _cifar_batch(rng, train, k, label_key, "training batch 1 of 1"),
            "test": _cifar_batch(rng, test, k, label_key, "testing batch 1 of 1"),
            "meta": {
                b"fine_label_names": [f"fine{i}".encode() for i in range(k)],
                b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
            },
        }
    else:
        raise ValueError(f"kind must be cifar10 or cifar100, got {kind!r}")
    path = os.path.join(out_dir, tar_name)
    with tarfile.open(path, "w:gz") as tf:
        for name, obj in members.items():
            data = pickle.dumps(obj, protocol=2)  # the official files are Python 2 protocol-2 pickles
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path
