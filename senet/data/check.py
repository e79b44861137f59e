"""What tools/check_data.py reports: per-split counts, bad files, and loader throughput.

The benchmark follows the airbench habit: warm up first, time several repeats, report mean and
standard deviation. It also reports CPU time per image (all processes), which other jobs on the
machine hardly change. Its baseline is a plain loop (a multiprocessing Pool with the same number of
worker processes) that only reads, decodes and crops the same files with the same crop
parameters, and sends nothing back: an upper bound for any loader, so the ratio is the share of
decode+crop throughput the training loader keeps after batching, shared memory and its own
Python overhead. Where NVIDIA DALI is installed, its pipeline (data.loader=dali) is timed on the same
files and crops too: on a CPU, its `cpu` decoder with as many threads as there are workers. When the
config turns on per-sample augmentations (data.auto_augment, data.random_erasing), the loader is also
timed without them (and with the policy alone when both are on): their cost per core, side by side.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import statistics
import time

import cv2
import numpy as np

from senet.data.build import build_loader
from senet.data.dali import dali_installed
from senet.data.datasets import ImageFileDataset, build_dataset
from senet.data.decode import DECODE_FLAGS, RGB_DECODE, decode_image
from senet.data.errors import BadImageError, DatasetError
from senet.data.transforms import hflip, random_resized_crop
from senet.limits import regular_file_problem

WARMUP_BATCHES = 4  # per repeat: worker start-up and the first prefetches are not timed


def _pool_init() -> None:
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # bad files are reported by name
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not Paddle's handler, which prints a C++ "crash" report


def _pool(workers: int):
    # fork: the children inherit the imported modules and the dataset without pickling them.
    return multiprocessing.get_context("fork").Pool(workers, initializer=_pool_init)


def _decode_error(path: str) -> tuple[str, str] | None:
    try:
        decode_image(path)
    except BadImageError as e:
        return path, str(e).split(": ", 1)[1].split(". Fix or remove")[0]
    return None


def find_bad_files(paths: list[str], workers: int) -> list[tuple[str, str]]:
    """(path, reason) for every file in `paths` that does not decode, using `workers` processes."""
    if workers <= 1:
        results = map(_decode_error, paths)
        return [r for r in results if r is not None]
    pool = _pool(workers)
    try:
        return [r for r in pool.imap(_decode_error, paths, chunksize=64) if r is not None]
    finally:
        pool.close()
        pool.join()


def split_report(cfg: dict, split: str, decode: bool = False) -> dict:
    """Image and class counts, the smallest and largest class, and (with decode) the files that do not decode."""
    ds = build_dataset(cfg, split)
    counts = np.bincount(ds.labels, minlength=ds.num_classes)
    lo, hi = int(counts.argmin()), int(counts.argmax())
    files = isinstance(ds, ImageFileDataset)
    bad = find_bad_files([ds.path(i) for i in range(len(ds))], cfg["data"]["num_workers"]) if decode and files else []
    return {
        "images": len(ds),
        "classes": ds.num_classes,
        "smallest": {"class": ds.classes[lo], "images": int(counts[lo])},
        "largest": {"class": ds.classes[hi], "images": int(counts[hi])},
        "bad": [p for p, _ in bad],
        "bad_reasons": [r for _, r in bad],
        "decoded": bool(decode and files),
    }


_BENCH_DS: ImageFileDataset | None = None  # set before the Pool forks, read by _plain_one


def _plain_one(key: tuple[int, ...]) -> int:
    """Read, decode, crop and flip one file as the training transform does, with bare OpenCV calls."""
    ds, index = _BENCH_DS, key[0]
    if regular_file_problem(ds.path(index)):  # a FIFO would block np.fromfile; the loader skips or names it
        return 0
    img = cv2.imdecode(np.fromfile(ds.path(index), dtype=np.uint8), DECODE_FLAGS)  # the loader's flags
    if img is None:  # a bad file: the loader names it (on_bad_image)
        return 0
    if not RGB_DECODE:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    _, rng = ds._rng(key)  # the sample's own generator, as the dataset seeds it
    img = hflip(random_resized_crop(img, ds.size, ds.scale, ds.ratio, rng), ds.hflip, rng)
    return int(img[0, 0, 0])  # something from the result, so no step can be skipped


def _rate(images: int, seconds: float) -> float:
    return images / seconds if seconds > 0 else math.inf


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_seconds() -> float:
    """CPU time of this process and its live worker processes (Linux /proc; else this process only).

    Unlike images/s, CPU time per image hardly moves when other jobs share the machine.
    """
    total = time.process_time()
    for child in multiprocessing.active_children():
        try:
            with open(f"/proc/{child.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime, in clock ticks
        except (OSError, IndexError, ValueError):
            pass
    return total


def _time_loader(loader, epoch: int, batches: int) -> tuple[float, float, list[tuple[int, ...]]]:
    """Images/s and CPU seconds per image over `batches` batches after the warm-up ones, and their sample keys."""
    loader.set_epoch(epoch)
    keys = loader.sampler.keys((WARMUP_BATCHES + batches) * loader.sampler.batch_size)
    start, cpu, seen = time.perf_counter(), _cpu_seconds(), 0
    for step, (images, _) in enumerate(loader):
        if step == WARMUP_BATCHES - 1:  # the clock runs from the end of the warm-up batches
            start, cpu = time.perf_counter(), _cpu_seconds()
        elif step >= WARMUP_BATCHES:
            seen += int(images.shape[0])
        if step == WARMUP_BATCHES + batches - 1:
            # Read the clocks here: leaving the loop early makes the loader read out the batches
            # still in flight, work for images that are not counted.
            seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
            break
    else:  # fewer batches than planned (with on_bad_image=skip, batches of only bad files are dropped)
        seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    return _rate(seen, seconds), cpu / max(seen, 1), keys


def _time_plain(pool, keys: list[tuple[int, ...]], b: int) -> tuple[float, float]:
    """Images/s and CPU seconds per image of the plain loop over keys after the warm-up ones."""
    run = (lambda ks: pool.map(_plain_one, ks, chunksize=b)) if pool else (lambda ks: list(map(_plain_one, ks)))
    run(keys[: WARMUP_BATCHES * b])
    n = len(keys) - WARMUP_BATCHES * b
    start, cpu = time.perf_counter(), _cpu_seconds()
    run(keys[WARMUP_BATCHES * b :])
    return _rate(n, time.perf_counter() - start), (_cpu_seconds() - cpu) / n


def _with_loader(cfg: dict, loader: str) -> dict:
    return {**cfg, "data": {**cfg["data"], "loader": loader}}


def _without(cfg: dict, policy: bool, erasing: bool) -> dict:
    """The config with its augmentation policy and/or random erasing turned off."""
    d = dict(cfg["data"])
    if policy:
        d["auto_augment"] = None
    if erasing:
        d["random_erasing"] = {**d["random_erasing"], "prob": 0.0}
    return {**cfg, "data": d}


def augment_variants(cfg: dict) -> dict[str, dict]:
    """The loaders --bench times beside the configured one when per-sample augmentations are on: without
    any ("unaugmented"), and without random erasing ("no_erasing") when a policy is on too."""
    d = cfg["data"]
    policy, erasing = bool(d.get("auto_augment")), (d.get("random_erasing") or {}).get("prob", 0.0) > 0
    out = {}
    if policy or erasing:
        out["unaugmented"] = _without(cfg, policy, erasing)
    if policy and erasing:
        out["no_erasing"] = _without(cfg, False, True)
    return out


def bench(cfg: dict, n: int, repeats: int = 3, dali: bool | None = None) -> dict:
    """Images/s of the training loader over about n images, against the plain decode+crop loop on the same
    files, and NVIDIA DALI's pipeline (data.loader=dali) on them too where it is installed (dali=None) or
    asked for (True). On a CPU, DALI runs its `cpu` decoder with num_workers threads.

    The three alternate, repeat by repeat (each repeat a new epoch, so new files and crops, the same for
    all), so a change in machine load hits them alike. Each also gets images per CPU-second over all its
    processes and threads: images/s per fully used core, which other jobs on the machine hardly change.
    With per-sample augmentations on, `augment_variants` adds loaders without them to the rotation, under
    their names ("unaugmented_images_per_s", ...).
    """
    global _BENCH_DS
    loader = build_loader(_with_loader(cfg, "paddle"), "train")
    variants = {name: build_loader(_with_loader(c, "paddle"), "train") for name, c in augment_variants(cfg).items()}
    b, workers = cfg["data"]["batch_size"], cfg["data"]["num_workers"]
    batches = min(math.ceil(n / b), len(loader) - WARMUP_BATCHES)
    if batches < 1:
        raise ValueError(
            f"the train split has {len(loader)} batches of {b}; --bench needs more than "
            f"{WARMUP_BATCHES} warm-up batches plus the timed ones"
        )
    files = isinstance(loader.dataset, ImageFileDataset)
    dali_loader = None
    dali_skipped = None if dali_installed() else "not installed (make install DALI=1)"
    if files and (dali or (dali is None and dali_installed())):
        try:
            dali_loader = build_loader(_with_loader(cfg, "dali"), "train")
        except DatasetError as e:  # e.g. data.color_jitter, which DALI does not apply
            if dali:
                raise
            dali_skipped = f"not timed: {e}"
    _BENCH_DS = loader.dataset if files else None
    pool = _pool(workers) if files and workers > 0 else None  # forked before the loader's workers start
    rates: dict[str, list[float]] = {name: [] for name in ("loader", "plain", "dali", *variants)}
    cpus: dict[str, list[float]] = {name: [] for name in rates}
    try:
        for epoch in range(repeats):
            rate, cpu, keys = _time_loader(loader, epoch, batches)
            rates["loader"].append(rate)
            cpus["loader"].append(cpu)
            if files:  # else nothing to decode: only the loader figure means something
                rate, cpu = _time_plain(pool, keys, b)
                rates["plain"].append(rate)
                cpus["plain"].append(cpu)
            for name, other in variants.items():
                rate, cpu, _ = _time_loader(other, epoch, batches)
                rates[name].append(rate)
                cpus[name].append(cpu)
            if dali_loader is not None:
                rate, cpu, _ = _time_loader(dali_loader, epoch, batches)
                rates["dali"].append(rate)
                cpus["dali"].append(cpu)
    finally:
        if pool:
            pool.close()
            pool.join()
    out = {
        "images": batches * b,
        "batch_size": b,
        "workers": workers,
        "repeats": repeats,
        "ratio": None,
        "dali_decoder": None if dali_loader is None else "cpu" if dali_loader.device_id is None else "mixed",
        "dali_skipped": dali_skipped if dali_loader is None and files else None,
    }
    for name in rates:
        mean, std = (
            (statistics.mean(rates[name]), statistics.stdev(rates[name]) if len(rates[name]) > 1 else 0.0)
            if rates[name]
            else (None, None)
        )
        cpu_ms = 1e3 * statistics.mean(cpus[name]) if cpus[name] else None
        out.update(
            {
                f"{name}_images_per_s": mean,
                f"{name}_std": std,
                f"{name}_cpu_ms_per_image": cpu_ms,
                f"{name}_images_per_cpu_s": 1e3 / cpu_ms if cpu_ms else None,
            }
        )
    if out["plain_images_per_s"]:
        out["ratio"] = out["loader_images_per_s"] / out["plain_images_per_s"]
    return out
