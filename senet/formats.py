"""Byte-level readers and writers of the files weights come in: no Paddle, nothing run from a file.

- Pickles (our checkpoints, PaddleClas .pdparams): `unpickle_restricted` and `_SafeUnpickler` allow
  only plain containers and numpy arrays, so a pickle can never run code; what they return is
  bounded by senet.limits.check_tree (objects as a tree, depth, array bytes per file byte).
- The SHA-256 trailer after our checkpoints' pickle (`_verify_trailer`), checked before unpickling.
- safetensors: `read_safetensors` checks the header, dtypes, shapes, that offsets fit the file and
  never overlap, and our digest in the metadata, before converting anything.
- `atomic_write`: a new file beside the target (never through a link), fsynced, renamed over it.

senet.checkpoint builds the training checkpoints and the model-level loading on these; tools that
only read or convert files (senet.weights) need nothing else, and import no Paddle.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
from typing import Any

import numpy as np

from senet.limits import (
    RENAMED,
    TreeTooLarge,
    array_budget,
    check_tree,
    file_kind,
    open_regular,
    regular_file_problem,
)

TRAILER_MAGIC = b"senet:sha256:v1\n"  # 16 bytes, then the 32-byte digest of everything before it


TRAILER_SIZE = len(TRAILER_MAGIC) + 32


SAFETENSORS_DIGEST_KEY = "senet_sha256"


# (module, name) pairs a paddle.save pickle of tensors and plain python values needs.
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("builtins", "tuple"),
    ("builtins", "list"),
    ("builtins", "dict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("builtins", "complex"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "scalar"),
}


class CheckpointError(RuntimeError):
    """A checkpoint or weights file that cannot be used; the message says why and what to do."""


class _ForbiddenGlobal(pickle.UnpicklingError):
    """The pickle names a class or function outside the allow-list."""


def _empty_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's _reconstruct as a pickle of an array calls it: an empty array, filled by __setstate__.

    A hand-made pickle could call it with a huge shape and allocate that much; numpy itself only
    ever pickles shape (0,).
    """
    if subtype is not np.ndarray or int(np.prod(shape)) != 0:
        raise pickle.UnpicklingError("numpy _reconstruct called with a non-empty shape (not written by numpy)")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


class _SafeUnpickler(pickle.Unpickler):
    """Only the plain types of _SAFE_GLOBALS. Bound the result with senet.limits.check_tree before
    walking it (read_pickle does)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            if name == "_reconstruct":
                return _empty_reconstruct
            return super().find_class(module, name)
        raise _ForbiddenGlobal(f"{module}.{name}")


def _to_arrays(obj: Any) -> Any:
    """paddle.save stores a tensor as (name, ndarray); turn those back into plain arrays."""
    if isinstance(obj, dict):
        return type(obj)((k, _to_arrays(v)) for k, v in obj.items())
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str) and isinstance(obj[1], np.ndarray):
        return obj[1]
    if isinstance(obj, list):
        return [_to_arrays(v) for v in obj]
    return obj


def _file_problem(path: str) -> None:
    problem = regular_file_problem(path)
    if problem and problem.missing:
        raise CheckpointError(f"weights file not found: {path}")
    if problem:
        raise CheckpointError(f"{path} {problem}: give the path of a checkpoint or weights file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the write that made it did not finish")


def _verify_trailer(path: str) -> bool:
    """True if `path` ends in our checksum trailer and the digest matches; False if it has no trailer.

    A trailer whose digest does not match is a CheckpointError. Reads the file once, in chunks.
    """
    size = os.path.getsize(path)
    if size < TRAILER_SIZE:
        return False
    with open(path, "rb") as f:
        f.seek(size - TRAILER_SIZE)
        tail = f.read(TRAILER_SIZE)
        if tail[: len(TRAILER_MAGIC)] != TRAILER_MAGIC:
            return False
        f.seek(0)
        h, left = hashlib.sha256(), size - TRAILER_SIZE
        while left > 0:
            block = f.read(min(left, 1 << 22))
            if not block:
                break
            h.update(block)
            left -= len(block)
    if h.digest() != tail[len(TRAILER_MAGIC) :]:
        raise CheckpointError(
            f"{path} fails its SHA-256 checksum: the file was damaged after it was written "
            f"(disk, copy or transfer error); use another checkpoint"
        )
    return True


def unpickle_restricted(
    file: Any, source: str, extra_globals: dict[tuple[str, str], Any] | None = None, persistent_load: Any = None
) -> Any:
    """Unpickle an open binary `file` with the allow-list of plain types, plus `extra_globals`: each
    (module, name) a foreign format needs, mapped to our own stand-in (never the real object, so the
    pickle's code never runs). `persistent_load` resolves persistent ids (torch's storages). The result
    is bounded like read_pickle's. A name outside both lists is a CheckpointError naming it."""
    extra = dict(extra_globals or {})

    class Unpickler(_SafeUnpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) in extra:
                return extra[(module, name)]
            return super().find_class(module, name)

    unpickler = Unpickler(file)
    if persistent_load is not None:
        unpickler.persistent_load = persistent_load
    try:
        size = os.fstat(file.fileno()).st_size if hasattr(file, "fileno") else None
    except (OSError, ValueError, io.UnsupportedOperation):  # a zip member: the caller bounds what it reads
        size = None
    try:
        obj = unpickler.load()
        check_tree(obj, max_array_bytes=array_budget(size) if size is not None else None)
        return obj
    except CheckpointError:
        raise
    except _ForbiddenGlobal as e:
        raise CheckpointError(
            f"{source} is refused: its pickle names {e}, which is not on the list of names a "
            f"state dict needs (it could run code; nothing from it was run)"
        ) from None
    except TreeTooLarge as e:
        raise CheckpointError(f"{source} is refused: its pickled data is {e}") from None
    except Exception as e:  # noqa: BLE001  (truncated or corrupt pickles raise many types; all mean "unusable")
        raise CheckpointError(f"{source} is truncated or corrupt ({type(e).__name__}: {str(e)[:200]})") from None


def atomic_write(path: str, data: bytes | list[bytes]) -> None:
    """Write to a temporary file beside `path`, fsync it, rename it over `path`, fsync the folder.

    `data` may be a list of byte strings, written in turn (no joined copy in memory)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    if os.path.lexists(tmp):  # left by an earlier process of the same pid; removed, never written through
        os.remove(tmp)
    try:
        # O_EXCL: a new file, never through a link planted at the temporary name (issue 23). The rename
        # then replaces whatever stands at `path` (a link included) without following it.
        fd = open_regular(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        with os.fdopen(fd, "wb") as f:
            for part in data if isinstance(data, list) else [data]:
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def check_finite(weights: dict, source: str) -> None:
    """Refuse weights holding NaN or Inf, naming the first such tensor (a diverged or damaged run)."""
    for name, value in weights.items():
        if not isinstance(value, np.ndarray):
            raise CheckpointError(
                f"{source}: weight {name!r} is a {type(value).__name__}, not a tensor; "
                f"the file is damaged or not a weights file"
            )
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            bad = int(np.count_nonzero(~np.isfinite(value)))
            raise CheckpointError(
                f"{source}: tensor {name!r} holds {bad:,} NaN/Inf values of {value.size:,} (a "
                f"diverged run or a damaged file); use weights from an earlier checkpoint"
            )


# safetensors dtype codes (https://github.com/huggingface/safetensors, "Format"); BF16 is decoded by hand.
_ST_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U64": np.uint64,
    "U32": np.uint32,
    "U16": np.uint16,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


_ST_CODES = {np.dtype(t): code for code, t in _ST_DTYPES.items() if code != "BF16"}  # what safetensors.numpy writes


MAX_SAFETENSORS_HEADER = 4 << 20  # bytes; ours are ~100 KB (ResNet-152 with its config in the metadata)


def _tensors_digest(tensors: dict[str, tuple[str, list[int], Any]], metadata: dict[str, str]) -> str:
    """SHA-256 over (name, dtype code, shape, raw bytes) of every tensor in name order, then the metadata."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        code, shape, data = tensors[name]
        h.update(json.dumps([name, code, list(shape)]).encode())
        h.update(data)
    h.update(json.dumps(sorted((k, v) for k, v in metadata.items() if k != SAFETENSORS_DIGEST_KEY)).encode())
    return h.hexdigest()


def read_safetensors(path: str, integer_ok: Any = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(float32 tensors, metadata) of a .safetensors file: header, offsets and digest checked first.

    float16 / bfloat16 are widened exactly, float64 narrowed (refused if a value overflows float32);
    integer and bool tensors are refused: a model's weights are floats. `integer_ok(name)` may let
    named ones through as they are (torch's BN counter `num_batches_tracked`, for the converter).
    """
    _file_problem(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if size < 8 or n < 2 or n > min(size - 8, MAX_SAFETENSORS_HEADER):
            kind = file_kind(path)
            if kind not in (None, "safetensors"):
                raise CheckpointError(f"{path} is not a safetensors file but {RENAMED[kind]}")
            raise CheckpointError(
                f"{path} is not a safetensors file: its header length ({n:,} bytes) does not fit "
                f"the file ({size:,} bytes) or the {MAX_SAFETENSORS_HEADER:,}-byte limit"
            )
        try:
            header = json.loads(f.read(n))
            check_tree(header, max_nodes=200_000, max_depth=8)
        except (ValueError, RecursionError) as e:
            raise CheckpointError(f"{path} is not a safetensors file: unreadable header ({e})") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{path} is not a safetensors file: its header is not a JSON object")
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise CheckpointError(f"{path}: the safetensors metadata must map strings to strings")
        data_len, raw = size - 8 - n, {}
        for name, spec in header.items():
            try:
                code, shape, (begin, end) = spec["dtype"], spec["shape"], spec["data_offsets"]
                dtype = np.dtype(_ST_DTYPES[code])
                ok = (
                    all(isinstance(d, int) and d >= 0 for d in shape)
                    and isinstance(begin, int)
                    and isinstance(end, int)
                    and 0 <= begin <= end <= data_len
                    and end - begin == math.prod(shape) * dtype.itemsize
                )  # Python ints: no int64 wrap-around
            except (KeyError, TypeError, ValueError):
                ok = False
            if not ok:
                raise CheckpointError(
                    f"{path}: tensor {name!r} has a malformed entry {json.dumps(spec)[:200]} "
                    f"(dtype, shape and offsets must agree and fit the file); re-save the file"
                )
            raw[name] = (code, shape, (begin, end))
        # Each tensor its own bytes (the format's rule): 1,000 entries over one byte range made a 4 MB file
        # materialise 4 GB (issue 23). With no overlap, what is read is at most the file's own size.
        spans = sorted((begin, end, name) for name, (_, _, (begin, end)) in raw.items() if end > begin)
        for (_, end_a, a), (begin_b, _, b) in zip(spans, spans[1:]):
            if begin_b < end_a:
                raise CheckpointError(
                    f"{path} is refused: tensors {a!r} and {b!r} share bytes of the file (a "
                    f"safetensors file stores each tensor once); re-save it"
                )
        for name, (code, shape, (begin, end)) in raw.items():
            buf = bytearray(end - begin)
            f.seek(8 + n + begin)
            if f.readinto(buf) != len(buf):
                raise CheckpointError(f"{path} is truncated (tensor {name!r}); re-save or copy it again")
            raw[name] = (code, shape, buf)
    digest = meta.get(SAFETENSORS_DIGEST_KEY)
    if digest is not None and digest != _tensors_digest(raw, meta):
        raise CheckpointError(
            f"{path} fails its SHA-256 checksum (metadata {SAFETENSORS_DIGEST_KEY}): the file "
            f"was damaged after it was written; export or copy it again"
        )
    tensors = {}
    for name, (code, shape, buf) in raw.items():
        a = np.frombuffer(buf, dtype=_ST_DTYPES[code]).reshape(shape)
        if code == "BF16":  # the top half of a float32
            a = (a.astype(np.uint32) << 16).view(np.float32)
        elif code in ("F16", "F64"):
            with np.errstate(over="ignore", invalid="ignore"):
                wide = a.astype(np.float32)
            if code == "F64" and np.isfinite(a).all() and not np.isfinite(wide).all():
                raise CheckpointError(
                    f"{path}: float64 tensor {name!r} has values beyond the float32 range; "
                    f"the model is float32: rescale or re-save the weights"
                )
            a = wide
        elif code != "F32" and not (integer_ok and integer_ok(name)):
            raise CheckpointError(
                f"{path}: tensor {name!r} is {code} ({np.dtype(_ST_DTYPES[code]).name}); model "
                f"weights are floats (F32, F16, BF16 or F64): re-save the weights as floats"
            )
        tensors[name] = a
    return tensors, meta
