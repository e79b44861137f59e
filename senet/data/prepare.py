"""Lay out the official ILSVRC2012 archives as the class folders `senet` reads (Russakovsky et al. 2015).

- ILSVRC2012_img_train.tar holds one tar per class (n01440764.tar, ...): each becomes train/<wnid>/.
- ILSVRC2012_img_val.tar holds 50,000 images in one flat folder: each goes to val/<wnid>/ by its
  ground-truth label.
- An already extracted flat val folder can be sorted in place the same way.
- `verify` counts what is there against 1,281,167 train and 50,000 val images in 1,000 classes.

Archives are streamed (never extracted whole to a temporary place), member names are reduced to
their base name (no path can escape the output folder), and each file is written under a
temporary name and renamed, so an interrupted run can simply be started again.

Ground truth, in any of these forms:
- the devkit (ILSVRC2012_devkit_t12.tar.gz): data/meta.mat and
  data/ILSVRC2012_validation_ground_truth.txt, whose ILSVRC2012_ID labels are mapped to WordNet ids;
- a text file of "ILSVRC2012_val_00000001.JPEG n01751748" lines (the extension is optional);
- a CSV like Kaggle's LOC_val_solution.csv ("ImageId,PredictionString", the wnid first);
- one wnid per line, in image order (line i is ILSVRC2012_val_{i:08d}).
"""

from __future__ import annotations

import io
import multiprocessing
import os
import re
import shutil

import cv2

from senet.data.archive import open_tar
from senet.data.decode import BAD_IMAGE_HINT, decode_image
from senet.data.errors import BadImageError
from senet.data.index import _is_image
from senet.limits import regular_file_problem

EXPECTED = {"train": 1_281_167, "val": 50_000, "classes": 1000}
_WNID = re.compile(r"^n\d{8}$")


def _stem(name: str) -> str:
    return os.path.splitext(os.path.basename(name))[0]


def parse_val_labels(text: str) -> dict[str, str]:
    """Image stem (ILSVRC2012_val_00000001) -> wnid, from a text or CSV ground-truth file (see module doc)."""
    rows = [re.split(r"[,\s]+", line.strip()) for line in text.splitlines() if line.strip()]
    if rows and not any(_WNID.match(f) for f in rows[0]):
        rows = rows[1:]  # a CSV header
    if all(len(r) == 1 for r in rows):
        if not all(_WNID.match(r[0]) for r in rows):
            raise ValueError(
                "a one-column ground-truth file must hold one wnid (n01440764) per line; the devkit's "
                "numeric ILSVRC2012_validation_ground_truth.txt needs --devkit instead"
            )
        return {f"ILSVRC2012_val_{i:08d}": r[0] for i, r in enumerate(rows, 1)}
    labels = {}
    for lineno, r in enumerate(rows, 1):
        wnid = next((f for f in r[1:] if _WNID.match(f)), None)
        if wnid is None:
            raise ValueError(f"ground-truth line {lineno} {' '.join(r)!r} has no wnid (n01440764) after the file name")
        labels[_stem(r[0])] = wnid
    return labels


def read_devkit_labels(devkit_tar: str) -> dict[str, str]:
    """Image stem -> wnid from the official devkit tarball (meta.mat maps ILSVRC2012_ID to wnid)."""
    from scipy.io import loadmat  # a scikit-learn dependency; only needed here

    meta = truth = None
    with open_tar(devkit_tar, "r:*") as tf:
        for m in tf:
            if m.name.endswith("data/meta.mat"):
                meta = tf.extractfile(m).read()
            elif m.name.endswith("data/ILSVRC2012_validation_ground_truth.txt"):
                truth = tf.extractfile(m).read().decode()
    if meta is None or truth is None:
        raise ValueError(f"{devkit_tar} lacks data/meta.mat or data/ILSVRC2012_validation_ground_truth.txt")
    synsets = loadmat(io.BytesIO(meta), squeeze_me=True)["synsets"]
    wnid_of = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets}
    return {f"ILSVRC2012_val_{i:08d}": wnid_of[int(x)] for i, x in enumerate(truth.split(), 1)}


def _write(src, path: str, size: int) -> bool:
    """Copy a file object to path via a temporary name; False if an equal-sized file is already there."""
    if os.path.isfile(path) and os.path.getsize(path) == size:
        return False
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        shutil.copyfileobj(src, f, 1 << 20)
    os.replace(tmp, path)
    return True


def extract_train(train_tar: str, out_dir: str) -> int:
    """Unpack the train tar of per-class tars into out_dir/train/<wnid>/; return the image count."""
    count = 0
    with open_tar(train_tar, "r|*") as outer:
        for m in outer:
            if not (m.isfile() and m.name.endswith(".tar")):
                continue
            folder = os.path.join(out_dir, "train", _stem(m.name))
            os.makedirs(folder, exist_ok=True)
            with open_tar(mode="r|", fileobj=outer.extractfile(m)) as inner:
                for im in inner:
                    if im.isfile():
                        _write(inner.extractfile(im), os.path.join(folder, os.path.basename(im.name)), im.size)
                        count += 1
    return count


def extract_val(val_tar: str, labels: dict[str, str], out_dir: str) -> tuple[int, list[str]]:
    """Unpack the flat val tar into out_dir/val/<wnid>/; return the count and the images without a label."""
    count, unlabeled = 0, []
    with open_tar(val_tar, "r|*") as tf:
        for m in tf:
            if not m.isfile():
                continue
            name = os.path.basename(m.name)
            wnid = labels.get(_stem(name))
            if wnid is None:
                unlabeled.append(name)
                continue
            folder = os.path.join(out_dir, "val", wnid)
            os.makedirs(folder, exist_ok=True)
            _write(tf.extractfile(m), os.path.join(folder, name), m.size)
            count += 1
    return count, unlabeled


def sort_val_folder(val_dir: str, labels: dict[str, str]) -> tuple[int, list[str]]:
    """Move the images of a flat val folder into val_dir/<wnid>/; return the count moved and the unlabeled ones."""
    moved, unlabeled = 0, []
    with os.scandir(val_dir) as it:
        files = sorted(e.name for e in it if e.is_file())
    for name in files:
        wnid = labels.get(_stem(name))
        if wnid is None:
            unlabeled.append(name)
            continue
        os.makedirs(os.path.join(val_dir, wnid), exist_ok=True)
        os.replace(os.path.join(val_dir, name), os.path.join(val_dir, wnid, name))
        moved += 1
    return moved, unlabeled


def _count(split_dir: str) -> dict[str, int]:
    if not os.path.isdir(split_dir):
        return {}
    with os.scandir(split_dir) as it:
        dirs = [e for e in it if e.is_dir() and not e.name.startswith(".")]
    counts = {}
    for d in dirs:
        with os.scandir(d.path) as it:
            counts[d.name] = sum(1 for e in it if e.is_file() and not e.name.endswith(".part"))
    return counts


def verify(out_dir: str, expect: dict[str, int] = EXPECTED) -> tuple[dict[str, int], list[str]]:
    """Counts of train/val images and classes under out_dir, and a list of every way they differ from `expect`."""
    train, val = _count(os.path.join(out_dir, "train")), _count(os.path.join(out_dir, "val"))
    counts = {
        "train": sum(train.values()),
        "val": sum(val.values()),
        "train_classes": len(train),
        "val_classes": len(val),
    }
    problems = []
    for split, found in (("train", counts["train"]), ("val", counts["val"])):
        if found != expect[split]:
            problems.append(
                f"{split}: {found:,} images, expected {expect[split]:,} "
                f"({expect[split] - found:+,} {'missing' if found < expect[split] else 'extra'})"
            )
    for split, classes in (("train", train), ("val", val)):
        if len(classes) != expect["classes"]:
            problems.append(f"{split}: {len(classes)} class folders, expected {expect['classes']}")
        empty = sorted(c for c, n in classes.items() if n == 0)
        if empty:
            problems.append(f"{split}: {len(empty)} empty class folders, e.g. {empty[:5]}")
    stray = sorted(set(val) - set(train))
    if train and stray:
        problems.append(f"val: {len(stray)} classes not in train, e.g. {stray[:5]}")
    return counts, problems


# ---------------------------------------------------------------- a copy resized to a shorter side

# JPEG quality of the re-encoded images: FFCV's ImageNet datasets use 90 (ffcv-imagenet, write_imagenet.sh).
RESIZE_QUALITY = 90


def _resized_jobs(src_root: str, out_root: str) -> list[tuple[str, str]]:
    """(source, destination) for every image file under src_root (any depth, hidden folders left out),
    at the same relative path under out_root, so class folders and list files stay valid."""
    jobs = []
    for folder, dirs, files in os.walk(src_root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = os.path.relpath(folder, src_root)
        jobs += [
            (os.path.join(folder, f), os.path.normpath(os.path.join(out_root, rel, f)))
            for f in sorted(files)
            if _is_image(f)
        ]
    return jobs


def resize_file(src: str, dst: str, short_side: int, quality: int = RESIZE_QUALITY) -> str:
    """Write src to dst with its shorter side at most short_side pixels (area resampling, as the loader's
    downscaling); return "resized", "copied" (already small enough: the bytes unchanged), "exists" (dst is
    there: an interrupted run restarts where it stopped) or "bad: <reason>" (copied unchanged if it is a
    regular file, so that data.on_bad_image treats it as before; a FIFO or device is not copied).

    The image is decoded as the loader decodes it (RGB, EXIF orientation ignored) and written in the format
    of its extension (JPEG and WebP at `quality`), so the copy's pixels are what the loader saw, resized.
    """
    if os.path.exists(dst):
        return "exists"
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    tmp = dst + ".part"
    try:
        img = decode_image(src)
    except BadImageError as e:
        reason = str(e).removeprefix(f"bad image {src}: ").removesuffix(f". {BAD_IMAGE_HINT}")
        if regular_file_problem(src) is not None:
            return f"bad: {reason}; not copied"
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        return f"bad: {reason}; copied unchanged"
    h, w = img.shape[:2]
    if min(h, w) <= short_side:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        return "copied"
    scale = short_side / min(h, w)
    size = (short_side, round(h * scale)) if w <= h else (round(w * scale), short_side)  # (width, height)
    small = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    ext = os.path.splitext(dst)[1].lower()
    params = (
        [cv2.IMWRITE_JPEG_QUALITY, quality]
        if ext in (".jpg", ".jpeg")
        else [cv2.IMWRITE_WEBP_QUALITY, quality]
        if ext == ".webp"
        else []
    )
    ok, buf = cv2.imencode(ext, cv2.cvtColor(small, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise OSError(f"OpenCV could not encode {dst}")
    buf.tofile(tmp)
    os.replace(tmp, dst)
    return "resized"


def _resize_job(job: tuple[str, str, int, int]) -> tuple[str, str]:
    src, dst, short_side, quality = job
    return src, resize_file(src, dst, short_side, quality)


def resize_copy(
    src_root: str, out_root: str, short_side: int, quality: int = RESIZE_QUALITY, workers: int = 1
) -> dict[str, list[str] | int]:
    """Copy every image under src_root to out_root with its shorter side at most short_side, in `workers`
    processes. Returns the counts of "resized", "copied" and "exists", and the "bad" files ("path: reason;
    copied unchanged", or "not copied" for what is not a regular file)."""
    if os.path.realpath(src_root) == os.path.realpath(out_root):
        raise ValueError(f"the resized copy must go to another folder than {src_root}")
    jobs = [(s, d, short_side, quality) for s, d in _resized_jobs(src_root, out_root)]
    out: dict[str, list[str] | int] = {"resized": 0, "copied": 0, "exists": 0, "bad": []}
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = list(pool.imap_unordered(_resize_job, jobs, chunksize=64))
    else:
        results = [_resize_job(j) for j in jobs]
    for src, status in results:
        if status.startswith("bad: "):
            out["bad"].append(f"{src}: {status[5:]}")
        else:
            out[status] += 1
    out["bad"].sort()
    return out
