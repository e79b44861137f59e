"""Hostile files that are small on disk and expand when read (issue 23), made on demand.

Shared by tests/test_hostile_expand.py, which feeds each to the tools, and
scripts/measure_hostile.py, which measures what each costs a tool (peak memory and time), before and
after a fix. Each builder writes its file block by block: making one never holds the expansion in
memory.
"""

from __future__ import annotations

import collections
import gzip
import io
import json
import pickle
import sys
import tarfile
import types
import zipfile

import cv2
import numpy as np


def tar_with_big_header(path: str, kind: bytes, size: int, folder: str = "cifar-10-batches-py") -> None:
    """A tar.gz whose first member carries an extended header of `size` bytes (type `kind`: b"L" GNU long
    name, b"K" long link, b"x" pax), all zeros (they compress about 1000:1), then one small member."""

    def header(name: str, size: int, typeflag: bytes) -> bytes:
        info = tarfile.TarInfo(name)
        info.size, info.type = size, typeflag
        return info.tobuf(format=tarfile.GNU_FORMAT if typeflag in (b"L", b"K") else tarfile.USTAR_FORMAT)

    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header("././@LongLink" if kind in (b"L", b"K") else "./PaxHeaders/x", size, kind))
        chunk = bytes(1 << 20)
        left = size + (-size) % 512
        while left:
            n = min(left, len(chunk))
            f.write(chunk[:n])
            left -= n
        body = b"\x00" * 10
        f.write(header(f"{folder}/batches.meta", len(body), tarfile.REGTYPE) + body + bytes(512 - len(body)))
        f.write(bytes(1024))


def progressive_jpeg(side: int, flat: bool = True) -> bytes:
    """A progressive JPEG of side x side pixels: flat grey (its AC scans are a few bytes each) or a gradient."""
    if flat:
        img = np.full((side, side, 3), 128, np.uint8)
    else:
        y, x = np.mgrid[0:side, 0:side]
        img = np.stack([x * 255 // side, y * 255 // side, (x + y) % 256], -1).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok
    return buf.tobytes()


def repeat_smallest_scan(jpeg: bytes, times: int) -> bytes:
    """The JPEG with its smallest scan (SOS marker to the next one) repeated `times` more times before EOI:
    libjpeg decodes each repeat as a pass over the whole image (and warns of an inconsistent sequence)."""
    starts = [i for i in range(len(jpeg) - 1) if jpeg[i] == 0xFF and jpeg[i + 1] == 0xDA] + [len(jpeg) - 2]
    k = min(range(len(starts) - 1), key=lambda i: starts[i + 1] - starts[i])
    return jpeg[:-2] + jpeg[starts[k] : starts[k + 1]] * times + jpeg[-2:]


def write_pth(path: str, tensors: dict, storages: dict, compressed_pickle_mb: int = 0) -> None:
    """A torch.save zip written without torch. tensors: name -> (storage key, offset, size, stride);
    storages: key -> float32 numpy array. With compressed_pickle_mb, data.pkl is stored deflated and
    opens with a bytes object of that many MiB of zeros (1 MB of zip, inflating to that)."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # a stand-in with torch's name, for the pickler to record
        raise AssertionError("never called")

    class FloatStorage:
        pass

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"
    utils._rebuild_tensor_v2, torch.FloatStorage, torch._utils = _rebuild_tensor_v2, FloatStorage, utils

    class Storage:
        def __init__(self, key):
            self.key = key

    class Tensor:
        def __init__(self, key, offset, size, stride):
            self.args = (Storage(key), offset, tuple(size), tuple(stride), False, collections.OrderedDict())

        def __reduce__(self):
            return _rebuild_tensor_v2, self.args

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", FloatStorage, obj.key, "cpu", int(storages[obj.key].size))
            return None

    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules.update({"torch": torch, "torch._utils": utils})
    try:
        buf = io.BytesIO()
        Pickler(buf, protocol=2).dump(collections.OrderedDict((k, Tensor(*v)) for k, v in tensors.items()))
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k)
            else:
                sys.modules[k] = v
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/byteorder", "little")
        for key, array in storages.items():
            zf.writestr(f"archive/data/{key}", np.ascontiguousarray(array, np.float32).tobytes())
        if compressed_pickle_mb:  # BINBYTES8 (protocol 4) of that many zeros, POP, then the real pickle
            info = zipfile.ZipInfo("archive/data.pkl")
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as f:
                f.write(b"\x80\x04\x8e" + (compressed_pickle_mb << 20).to_bytes(8, "little"))
                zeros = bytes(1 << 20)
                for _ in range(compressed_pickle_mb):
                    f.write(zeros)
                f.write(b"0" + buf.getvalue()[2:])
        else:
            zf.writestr("archive/data.pkl", buf.getvalue())


def safetensors_sharing(path: str, tensors: int, floats: int, overlap: int | None = None) -> None:
    """A .safetensors file whose `tensors` entries all point at one range of `floats` float32 values (or,
    with `overlap`, each starting `overlap` floats after the previous one, overlapping it)."""
    step = 0 if overlap is None else overlap
    header = {
        f"t{i}": {"dtype": "F32", "shape": [floats], "data_offsets": [4 * i * step, 4 * (i * step + floats)]}
        for i in range(tensors)
    }
    data_floats = (tensors - 1) * step + floats
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        f.write(np.zeros(data_floats, np.float32).tobytes())


def pickle_sharing(path: str, names: int, floats: int) -> None:
    """A PaddleClas-style .pdparams: a pickled dict with one numpy array under `names` names."""
    a = np.zeros(floats, np.float32)
    with open(path, "wb") as f:
        pickle.dump({f"conv{i}_weights": a for i in range(names)}, f, protocol=4)  # as paddle.save writes


def jpeg_header_bomb(path: str, side: int = 15000, stray: bool = True) -> None:
    """A 16x16 JPEG whose frame header says side x side, with one stray byte before it that libjpeg skips
    (it decodes the full declared size) but a strict parser stops at."""
    img = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    data = bytearray(cv2.imencode(".jpg", img)[1].tobytes())
    i = data.index(b"\xff\xc0")
    data[i + 5 : i + 9] = side.to_bytes(2, "big") + side.to_bytes(2, "big")
    if stray:
        data[i:i] = b"\x00"
    with open(path, "wb") as f:
        f.write(bytes(data))


def long_png(path: str, width: int = 8000, height: int = 1) -> None:
    """A tiny PNG of an extreme aspect ratio: resizing its shorter side to 256 would make a huge image."""
    ok, buf = cv2.imencode(".png", np.zeros((height, width, 3), np.uint8))
    with open(path, "wb") as f:
        f.write(buf.tobytes())


def pickle_of_shared_lists(path: str, levels: int = 30, marker: str = "senet_checkpoint") -> None:
    """A checkpoint-looking pickle of lists that share one reference: 2^levels leaves, a few hundred bytes."""
    bomb: list = []
    for _ in range(levels):
        bomb = [bomb, bomb]
    with open(path, "wb") as f:
        pickle.dump({marker: 2, "model": bomb}, f, protocol=4)


def cifar_with_a_huge_member(path: str, size: int = 2 << 30) -> None:
    """A CIFAR-10 .tar.gz whose test_batch member header says `size` bytes, followed by 4 KB of data."""
    info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
    info.size = size
    with gzip.open(path, "wb") as f:
        f.write(info.tobuf(format=tarfile.GNU_FORMAT) + bytes(4096))


def endless_list_file(path: str, size: int = 1 << 30) -> None:
    """A list file of one line with no end: a sparse file of `size` bytes (no disk used)."""
    with open(path, "wb") as f:
        f.write(b"a" * 4096)
        f.truncate(size)
