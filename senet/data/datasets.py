"""Datasets: ImageNet-style image files, and in-memory uint8 arrays (CIFAR-10/100, digits, synthetic).

Every dataset returns `(image, label)` with image a uint8 HWC RGB array of the final crop size.
A sample key is an int index, `(index, epoch)`, or with repeated augmentation `(index, epoch, position)`
(the copy's position in the epoch, senet.data.loader.repeated_positions); the key seeds the sample's
augmentation (see `senet.data.transforms`).

- CIFAR (Krizhevsky 2009, "Learning Multiple Layers of Features from Tiny Images"): the official
  "python version" tarballs or their extracted folders, read in memory; nothing is downloaded.
- digits: scikit-learn's bundled 1,797 8x8 handwritten digits (UCI optdigits test set),
  upsampled to data.image_size (train) and data.eval_crop (val), RGB, with a fixed stratified 80/20
  split: the offline demo.
- synthetic: deterministic random images and labels, for throughput runs and smoke tests.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import random
import tarfile
import warnings
import zlib

import cv2
import numpy as np
import paddle

from senet.data.archive import open_tar
from senet.data.augment import erasing_from_config, policy_from_config
from senet.data.decode import decode_image
from senet.data.errors import SMOKE_HINT, DatasetError
from senet.data.ignored import print_ignored_notice
from senet.data.index import imagenet_index
from senet.data.transforms import color_jitter, hflip, pad_crop, random_resized_crop, resize_center_crop
from senet.limits import TreeTooLarge, check_tree, regular_file_problem

SPLITS = ("train", "val")

# The official "python version" files: tarball name, published MD5, folder inside, members, label keys.
CIFAR = {
    "cifar10": {
        "tar": "cifar-10-python.tar.gz",
        "md5": "c58f30108f718f92721af3b95e74349a",
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "val": ["test_batch"],
        "meta": "batches.meta",
        "labels": b"labels",
        "names": b"label_names",
    },
    "cifar100": {
        "tar": "cifar-100-python.tar.gz",
        "md5": "eb9058c3a382ffc7106e4002c42a8d85",
        "folder": "cifar-100-python",
        "train": ["train"],
        "val": ["test"],
        "meta": "meta",
        "labels": b"fine_labels",
        "names": b"fine_label_names",
    },
}

# Images in each member of the official files: a member is read only if its size fits that count
# (3,072 bytes of pixels per image, plus labels and file names, plus pickle framing), so a tarball
# cannot make us hold more than the format needs (a 9 MB .tar.gz can hold a 2 GiB member).
CIFAR_MEMBER_IMAGES = {
    "data_batch_1": 10_000,
    "data_batch_2": 10_000,
    "data_batch_3": 10_000,
    "data_batch_4": 10_000,
    "data_batch_5": 10_000,
    "test_batch": 10_000,
    "train": 50_000,
    "test": 10_000,
    "batches.meta": 0,
    "meta": 0,
}
MAX_TAR_MEMBERS = 100  # the official tarballs hold 8 (CIFAR-10) and 5 (CIFAR-100) entries


def cifar_member_limit(member: str) -> int:
    """The most bytes a CIFAR python-version member can need: 3,072 pixels + 256 bytes of label and name per
    image, plus 1 MiB for the pickle's own structure (the meta files are a few KB)."""
    return CIFAR_MEMBER_IMAGES.get(member, 0) * (3072 + 256) + (1 << 20)


DIGITS_SPLIT_SEED = 0  # fixed: the demo's train/val split never changes
SYNTHETIC_SEEDS = {"train": 0, "val": 1}  # fixed, independent of train.seed: every run sees the same data


class _Augmented(paddle.io.Dataset):
    """Shared parts: labels, class names, the per-sample random generator, and the per-sample augmentations
    of modern recipes (senet.data.augment), which follow the crop and flip: data.auto_augment, then
    data.color_jitter, then data.random_erasing."""

    def __init__(self, labels: np.ndarray, classes: list[str], train: bool, seed: int, data_cfg: dict) -> None:
        self.labels = labels
        self.classes = classes
        self.train = train
        self.seed = seed
        self.jitter = data_cfg["color_jitter"]
        self.policy = policy_from_config(data_cfg) if train else None
        self.erasing = erasing_from_config(data_cfg) if train else None

    def _augment(self, img: np.ndarray, rng: random.Random) -> np.ndarray:
        """What follows the crop and flip in training."""
        if self.policy is not None:
            img = self.policy(img, rng)
        img = color_jitter(img, self.jitter, rng)
        if self.erasing is not None:
            img = self.erasing(img, rng)
        return img

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def _rng(self, key: int | tuple[int, int] | tuple[int, int, int]) -> tuple[int, random.Random]:
        index, epoch, *copy = key if isinstance(key, tuple) else (key, 0)
        # A string seed is hashed with SHA-512: stable across processes and Python versions. A repeated
        # image's copies (data.repeated_aug) each add their position, so each is augmented its own way.
        return int(index), random.Random(f"{self.seed}/{epoch}/{index}" + "".join(f"/{c}" for c in copy))


class ImageFileDataset(_Augmented):
    """Image files under `root`, decoded with OpenCV.

    Train: random-resized-crop, flip, then as _Augmented says. Eval: resize, centre crop.
    """

    def __init__(
        self,
        root: str,
        paths: np.ndarray,
        labels: np.ndarray,
        classes: list[str],
        train: bool,
        data_cfg: dict,
        seed: int,
    ) -> None:
        super().__init__(labels, classes, train, seed, data_cfg)
        self.root = root
        self.paths = paths  # numpy bytes array (see senet.data.index)
        self.size = data_cfg["image_size"]
        self.scale = tuple(data_cfg["rrc_scale"])
        self.ratio = tuple(data_cfg["rrc_ratio"])
        self.hflip = data_cfg["hflip"]
        self.eval_resize = data_cfg["eval_resize"]
        self.eval_crop = data_cfg["eval_crop"]
        if not self.eval_crop <= self.eval_resize:
            raise DatasetError(
                f"data.eval_crop ({self.eval_crop}) must not exceed data.eval_resize ({self.eval_resize})"
            )

    def path(self, index: int) -> str:
        return os.path.join(self.root, os.fsdecode(self.paths[index]))

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[np.ndarray, int]:
        index, rng = self._rng(key)
        img = decode_image(self.path(index))  # BadImageError: data.on_bad_image is applied by the loader
        if self.train:
            img = random_resized_crop(img, self.size, self.scale, self.ratio, rng)
            img = self._augment(hflip(img, self.hflip, rng), rng)
        else:
            img = resize_center_crop(img, self.eval_resize, self.eval_crop)
        return img, int(self.labels[index])


class ArrayDataset(_Augmented):
    """Images held in one uint8 array [N, H, W, 3]; train: pad-and-crop (numpy slicing), flip, then as
    _Augmented says."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        classes: list[str],
        train: bool,
        data_cfg: dict,
        seed: int,
        pad: int | None = None,
    ) -> None:
        super().__init__(labels, classes, train, seed, data_cfg)
        self.images = images
        self.pad = data_cfg["pad_crop"] if pad is None else pad
        self.hflip = data_cfg["hflip"]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[np.ndarray, int]:
        index, rng = self._rng(key)
        img = self.images[index]
        if self.train:
            img = self._augment(hflip(pad_crop(img, self.pad, rng), self.hflip, rng), rng)
        return img, int(self.labels[index])


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a tampered tarball cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not a CIFAR python-version file")
        return super().find_class(module, name)


def _unpickle(data: bytes) -> dict:
    obj = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    check_tree(obj)  # shared references or deep nesting: bounded before np.asarray walks it
    return obj


_MD5_SEEN: dict[tuple[str, int, int], str] = {}


def _md5(path: str) -> str:
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _MD5_SEEN:  # once per process, not once per split
        h = hashlib.md5()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _MD5_SEEN[key] = h.hexdigest()
    return _MD5_SEEN[key]


def _read_cifar_members(spec: dict, root: str, members: list[str], verify_md5: bool = True) -> dict[str, bytes]:
    folder = next(
        (f for f in (os.path.join(root, spec["folder"]), root) if os.path.isfile(os.path.join(f, spec["meta"]))), None
    )
    if folder is not None:
        out = {}
        for m in members:
            p = os.path.join(folder, m)
            problem = regular_file_problem(p)
            if problem and problem.missing:
                raise DatasetError(f"{p} is missing from the extracted CIFAR folder {folder}")
            if problem:
                raise DatasetError(f"{p} {problem}: replace it with the file from the official tarball")
            if os.path.getsize(p) > cifar_member_limit(m):
                raise DatasetError(
                    f"{p} is {os.path.getsize(p):,} bytes, more than a CIFAR {m} file needs "
                    f"({cifar_member_limit(m):,}): not the official file; extract it again"
                )
            with open(p, "rb") as f:
                out[m] = f.read()
        return out
    tar = os.path.join(root, spec["tar"]) if os.path.isdir(root) else root
    problem = regular_file_problem(tar)
    if problem and not problem.missing:
        raise DatasetError(f"{tar} {problem}: point data.root at the official CIFAR tarball or its folder")
    if problem:
        files = ", ".join([spec["meta"], *spec["train"], *spec["val"]])
        raise DatasetError(
            f"no CIFAR data under {os.path.abspath(root)} (data.root = {root!r}). Expected the official "
            f"python-version tarball {os.path.join(root, spec['tar'])} or its extracted folder "
            f"{os.path.join(root, spec['folder'])}/ ({files}). Nothing is downloaded. {SMOKE_HINT}"
        )
    md5_note = ""
    if os.path.basename(tar) == spec["tar"] and (md5 := _md5(tar)) != spec["md5"]:
        md5_note = (
            f"{tar} has MD5 {md5}, not the published {spec['md5']}: it is not the official file "
            "(a partial download, or a repacked copy); results may not be comparable"
        )
        if verify_md5:  # refused before any byte of it is unpacked; the key makes it a warning
            raise DatasetError(f"{md5_note}. Download it again, or set -o data.verify_md5=false to use it anyway")
    out = {}
    try:
        with open_tar(tar, "r:*") as tf:
            for count, m in enumerate(tf, 1):  # one sequential pass: seeking back in a .gz would decompress again
                if count > MAX_TAR_MEMBERS:
                    raise DatasetError(
                        f"{tar} has more than {MAX_TAR_MEMBERS} entries; the official CIFAR tarball "
                        f"has under 10. {md5_note or 'Download it again.'}"
                    )
                name = m.name.split("/", 1)[-1]
                if m.isfile() and name in members and m.name.startswith(spec["folder"] + "/"):
                    limit = cifar_member_limit(name)
                    if m.size > limit:  # the size in the member's header, checked before any byte is read
                        raise DatasetError(
                            f"{tar}: member {m.name} is {m.size:,} bytes, more than a CIFAR {name} "
                            f"file needs ({limit:,}). {md5_note or 'Download it again.'}"
                        )
                    out[name] = tf.extractfile(m).read()
                    if len(out) == len(members):
                        break  # everything needed is read: the rest of the archive is not decompressed
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"cannot read {tar}: {e}. {md5_note or 'Download it again.'}") from None
    missing = [m for m in members if m not in out]
    if missing:
        raise DatasetError(f"{tar} lacks {[spec['folder'] + '/' + m for m in missing]}. {md5_note}")
    if md5_note:
        warnings.warn(md5_note, stacklevel=3)
    return out


def load_cifar(name: str, root: str, split: str, verify_md5: bool = True) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images uint8 [N, 32, 32, 3], labels int64 [N], class names) of a CIFAR-10/100 split, read in memory.
    A tarball under the official name with another MD5 is refused unless verify_md5 is False."""
    spec = CIFAR[name]
    members = spec[split] + [spec["meta"]]
    raw = _read_cifar_members(spec, root, members, verify_md5)
    try:
        batches = [_unpickle(raw[m]) for m in spec[split]]
        classes = [n.decode() for n in _unpickle(raw[spec["meta"]])[spec["names"]]]
        data = np.concatenate([np.asarray(b[b"data"], dtype=np.uint8) for b in batches])
        labels = np.concatenate([np.asarray(b[spec["labels"]], dtype=np.int64) for b in batches])
        images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # CHW planes -> HWC
    except TreeTooLarge as e:
        raise DatasetError(
            f"{name} data under {root} is refused: its pickled data is {e}. Use the official python-version files"
        ) from None
    except (
        pickle.UnpicklingError,
        KeyError,
        ValueError,
        EOFError,
        TypeError,
        AttributeError,
        IndexError,
        MemoryError,
        RecursionError,
    ) as e:
        raise DatasetError(
            f"{name} data under {root} is not in the official python-version format: {type(e).__name__}: {str(e)[:200]}"
        ) from None
    if len(images) != len(labels) or labels.min() < 0 or labels.max() >= len(classes):
        raise DatasetError(
            f"{name} data under {root}: {len(images)} images, {len(labels)} labels, "
            f"{len(classes)} class names do not fit together"
        )
    return images, labels, classes


def load_digits_split(split: str, size: int = 32) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's 8x8 digits as uint8 [N, size, size, 3] (upsampled, linear), with a fixed stratified
    80/20 train/val split. The demo's size is 32, CIFAR's."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    idx_train, idx_val = train_test_split(
        np.arange(len(d.target)), test_size=0.2, stratify=d.target, random_state=DIGITS_SPLIT_SEED
    )
    idx = np.sort(idx_train if split == "train" else idx_val)
    small = np.round(d.images[idx] * (255 / 16)).astype(np.uint8)  # 17 grey levels 0..16 -> 0..255
    big = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_LINEAR) for im in small])
    return np.repeat(big[..., None], 3, axis=3), d.target[idx].astype(np.int64), [str(i) for i in range(10)]


def make_synthetic(n: int, size: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """n random uint8 images [n, size, size, 3] and labels in 0..num_classes-1, the same for the same seed."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=n).astype(np.int64)
    return images, labels, [str(i) for i in range(num_classes)]


def _check_num_classes(found: int, cfg: dict) -> None:
    want = cfg["model"]["num_classes"]
    if found > want:
        raise DatasetError(
            f"the dataset has {found} classes but model.num_classes = {want}; set -o model.num_classes={found}"
        )
    if found < want:
        warnings.warn(
            f"the dataset has {found} classes but model.num_classes = {want}; "
            f"-o model.num_classes={found} would match it",
            stacklevel=3,
        )


def build_dataset(cfg: dict, split: str) -> paddle.io.Dataset:
    """The dataset named by cfg["data"]["name"] for split "train" or "val", with that split's transforms."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    d = cfg["data"]
    name, train, seed = d["name"], split == "train", cfg["train"]["seed"]
    print_ignored_notice(cfg)  # e.g. data.image_size on CIFAR: set, but this source never reads it
    if name == "imagenet":
        cache_dir = os.path.join(cfg["output_dir"], "cache")
        paths, labels, classes = imagenet_index(
            d["root"], split, d[f"{split}_list"], cfg["model"]["num_classes"], cache_dir
        )
        _check_num_classes(len(classes), cfg)
        return ImageFileDataset(d["root"], paths, labels, classes, train, d, seed)
    if name in CIFAR:
        images, labels, classes = load_cifar(name, d["root"], split, d["verify_md5"])
    elif name == "digits":
        images, labels, classes = load_digits_split(split, d["image_size"] if train else d["eval_crop"])
    elif name == "synthetic":
        n = d["synthetic_train_size"] if train else d["synthetic_val_size"]
        size = d["image_size"] if train else d["eval_crop"]
        images, labels, classes = make_synthetic(n, size, cfg["model"]["num_classes"], SYNTHETIC_SEEDS[split])
        # Already at the final size: only the flip (and jitter, if on) applies, never pad-and-crop.
        return ArrayDataset(images, labels, classes, train, d, seed, pad=0)
    else:
        raise DatasetError(f"unknown data.name {name!r}; known: imagenet, {', '.join(CIFAR)}, digits, synthetic")
    _check_num_classes(len(classes), cfg)
    return ArrayDataset(images, labels, classes, train, d, seed)
