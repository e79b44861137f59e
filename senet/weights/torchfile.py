"""Read a PyTorch `.pth` state dict (torch.save's zip format) without torch and without running its pickle.

The zip holds `<name>/data.pkl` (the pickle of the dict) and `<name>/data/<key>` (one raw little-endian
buffer per storage). The pickle is read by senet.formats.unpickle_restricted with the three names
a state dict needs, each replaced by our own code: `collections.OrderedDict` (plain data),
`torch.<Type>Storage` (a dtype tag) and `torch._utils._rebuild_tensor_v2` (a view into a storage,
checked against its bounds, copied out as a numpy array). Anything else the pickle names is refused.

What it materialises is bounded by what the file holds (issue 23): a tensor's strides may not alias
(a stride of 0 or overlapping dimensions let 4 stored bytes claim 2^28 elements: 642 bytes took
1.6 GB); all tensors together may copy out at most MAX_COPIES_PER_BYTE times the bytes of their
storages, plus MAX_EXTRA_BYTES (tied weights or a transposed view share a storage; a thousand views
of one storage do not); and data.pkl, which torch stores uncompressed, may inflate to at most
MAX_PICKLE_BYTES (1 MB on disk inflated to 1 GiB).
"""

from __future__ import annotations

import os
import zipfile
from collections import OrderedDict
from typing import Any

import numpy as np

from senet.formats import CheckpointError, unpickle_restricted
from senet.limits import regular_file_problem

# torch's storage type names and the numpy dtype of their elements ("bfloat16" is decoded by hand).
STORAGE_DTYPES: dict[str, Any] = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


# data.pkl of a ResNet-152 state dict is about 30 KB (names and storage records, no tensor data).
MAX_PICKLE_BYTES = 64 << 20
# Tensors may copy out their storages' bytes twice over, plus 16 MiB, in all.
MAX_COPIES_PER_BYTE = 2
MAX_EXTRA_BYTES = 16 << 20


class _StorageType:
    """Stands in for torch.FloatStorage & co in the pickle: only its element type is used."""

    def __init__(self, name: str) -> None:
        self.name = name


class _Storage:
    def __init__(self, array: np.ndarray, bf16: bool) -> None:
        self.array, self.bf16 = array, bf16


def _rebuild_tensor(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> np.ndarray:
    """torch._utils._rebuild_tensor_v2, as numpy: a strided view of the storage, bounds-checked, copied."""
    if not isinstance(storage, _Storage):
        raise ValueError("a tensor whose storage is not a storage record")
    dims = [size, stride]
    if not all(isinstance(d, tuple) and all(isinstance(v, int) and not isinstance(v, bool) for v in d) for d in dims):
        raise ValueError("a tensor size or stride that is not a tuple of integers")
    if len(size) != len(stride) or not isinstance(offset, int) or offset < 0 or min(size + stride, default=0) < 0:
        raise ValueError(f"a tensor with an invalid size {size}, stride {stride} or offset {offset}")
    if backward_hooks:
        raise ValueError("a tensor with backward hooks (a state dict has none)")
    flat = storage.array
    count = int(np.prod(size, dtype=np.int64))
    if count:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= flat.size:
            raise ValueError(
                f"a tensor of size {size}, stride {stride}, offset {offset} reaches past its storage "
                f"of {flat.size} elements"
            )
        if _aliases(size, stride):
            raise ValueError(
                f"a tensor of size {size} whose strides {stride} make elements share storage (a stride "
                "of 0, or overlapping dimensions): a state dict's tensors never do"
            )
    item = flat.itemsize
    view = (
        np.lib.stride_tricks.as_strided(
            flat[offset:] if count else flat[:0], shape=size, strides=[s * item for s in stride]
        )
        if count
        else np.zeros(size, flat.dtype)
    )
    out = np.array(view, copy=True)
    if storage.bf16:  # the top half of a float32
        out = (out.astype(np.uint32) << 16).view(np.float32)
    return out


def _aliases(size: tuple, stride: tuple) -> bool:
    """Whether two index tuples of a view reach the same element: with the dimensions of more than one
    element sorted by stride, each stride must step over all the elements of the smaller ones (so a
    transposed or sliced view passes, a stride of 0 or an overlap does not)."""
    dims = sorted((s, n) for n, s in zip(size, stride) if n > 1)
    reach = 0  # the largest offset the smaller dimensions reach
    for s, n in dims:
        if s <= reach:
            return True
        reach += (n - 1) * s
    return False


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None) -> np.ndarray:
    """torch._utils._rebuild_parameter: a Parameter is its data."""
    if not isinstance(data, np.ndarray) or backward_hooks:
        raise ValueError("a parameter that is not a plain tensor")
    return data


def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """The tensors of a torch.save zip file, as numpy arrays (float16/bfloat16/float64 stay as stored)."""
    archive = _open_pth(path)
    with archive:
        try:
            state = _PthUnpickler(path, archive).load()
        except CheckpointError:
            raise
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as e:
            raise CheckpointError(f"{path} is truncated or corrupt ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a pickled {type(state).__name__}, not a state dict of tensors")
    if "state_dict" in state and isinstance(state["state_dict"], dict):  # a training checkpoint around it
        state = state["state_dict"]
    out = OrderedDict()
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, np.ndarray):
            raise CheckpointError(
                f"{path}: entry {str(name)[:80]!r} is a {type(value).__name__}, not a tensor; "
                f"give a state dict (model.state_dict()), not a whole model or checkpoint"
            )
        out[name] = value
    return out


def _open_pth(path: str) -> zipfile.ZipFile:
    """The zip archive of a torch.save file, after the checks that need no unpickling."""
    problem = regular_file_problem(path)
    if problem:
        raise CheckpointError(f"{path} {problem}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path} is empty (0 bytes)")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":
        what = (
            "the legacy (before torch 1.6) torch.save format, which is not supported: re-save it with "
            "torch.save(torch.load(f), f2) to get the zip format"
            if head[:2] == b"\x80\x02"
            else "not a torch .pth file (no zip header)"
        )
        raise CheckpointError(f"{path} is {what}")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is truncated or not a torch .pth zip ({e})") from None


class _PthUnpickler:
    """Unpickles <name>/data.pkl of an open torch.save archive with the restricted unpickler, reading
    each storage it names once from <name>/data/<key> and refusing what a state dict never holds."""

    def __init__(self, path: str, archive: zipfile.ZipFile) -> None:
        self.path, self.archive = path, archive
        self.names = set(archive.namelist())
        pickles = [n for n in self.names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointError(f"{path} is not a torch .pth zip: expected one <name>/data.pkl, found {len(pickles)}")
        self.pickle = pickles[0]
        self.prefix = self.pickle[: -len("data.pkl")]
        self.storages: dict[str, _Storage] = {}
        self.copied = 0  # bytes copied out of storages so far

    def load(self) -> Any:
        path, archive, prefix = self.path, self.archive, self.prefix
        if prefix + "byteorder" in self.names and archive.read(prefix + "byteorder").strip() != b"little":
            raise CheckpointError(f"{path} holds big-endian tensors, which are not supported")
        # zipfile never inflates a member past the size its directory declares (ZipExtFile stops
        # there), so checking the declared size bounds what the unpickler can read.
        size = archive.getinfo(self.pickle).file_size
        if size > MAX_PICKLE_BYTES:
            raise CheckpointError(
                f"{path} is refused: its {self.pickle} inflates to {size:,} bytes (a state "
                f"dict's is tens of KB; the limit is {MAX_PICKLE_BYTES:,})"
            )
        # The storage type objects are callables only in name, resolved by the unpickler.
        extra = {
            ("torch._utils", "_rebuild_tensor_v2"): self.rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        }
        extra.update({("torch", name): _StorageType(name) for name in STORAGE_DTYPES})
        with archive.open(self.pickle) as f:
            return unpickle_restricted(f, path, extra, self.persistent_load)

    def rebuild_tensor(self, storage: Any, *args: Any) -> np.ndarray:
        try:  # refusals of what the file claims, named as such (not as a truncated file)
            out = _rebuild_tensor(storage, *args)
        except ValueError as e:
            raise CheckpointError(f"{self.path} is refused: {e}") from None
        self.copied += out.nbytes
        held = sum(s.array.nbytes for s in self.storages.values())
        if self.copied > MAX_COPIES_PER_BYTE * held + MAX_EXTRA_BYTES:
            raise CheckpointError(
                f"{self.path} is refused: its tensors copy out {self.copied:,} bytes from "
                f"{held:,} bytes of storage (views that share storage over and over, which a "
                "state dict does not do)"
            )
        return out

    def persistent_load(self, pid: Any) -> _Storage:
        if not (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
            and isinstance(pid[2], str)
            and isinstance(pid[4], int)
        ):
            raise ValueError(f"a persistent id that is not a storage record: {str(pid)[:80]}")
        _, kind, key, _location, numel = pid
        if key in self.storages:
            return self.storages[key]
        member = self.prefix + "data/" + key
        if member not in self.names:
            raise ValueError(f"storage {key!r} is missing from the archive")
        info = self.archive.getinfo(member)
        dtype = STORAGE_DTYPES[kind.name]
        np_dtype = np.dtype(np.uint16 if dtype == "bfloat16" else dtype)
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != numel * np_dtype.itemsize:
            raise ValueError(
                f"storage {key!r} holds {info.file_size} bytes, not the {numel} x "
                f"{np_dtype.itemsize} its record says (or is compressed, which torch never does)"
            )
        self.storages[key] = _Storage(np.frombuffer(self.archive.read(member), dtype=np_dtype), dtype == "bfloat16")
        return self.storages[key]
