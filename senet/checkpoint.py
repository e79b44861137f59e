"""Checkpoints of the full training state, written atomically; weights in and out, safely.

A checkpoint (`<output_dir>/checkpoints/{last,best,epoch_N}.pdparams`) is one file written by
`paddle.save`: model, optimizer, LR scheduler, loss scaler, EMA, epoch, step, best metric, the
RNG states of python, numpy and paddle, and the resolved config. It is written to a temporary file
in the same folder, fsynced, then renamed over the old one, so a crash or kill at any moment
leaves either the old or the new checkpoint, never a half-written one.

Loading never runs arbitrary pickled code: files are unpickled with an allow-list of plain
types (numpy arrays, dicts, tuples). A `.pdparams` file that is not one of our checkpoints is
refused unless the user says they trust it (`model.trust_pickle=true`), because a pickle from
elsewhere could carry code. `.safetensors` files hold only tensors and are always safe.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
from typing import Any

import numpy as np
import paddle

MARKER = "senet_checkpoint"  # key present in every checkpoint this harness writes
VERSION = 1

# (module, name) pairs a paddle.save pickle of tensors and plain python values needs.
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"), ("builtins", "tuple"), ("builtins", "list"), ("builtins", "dict"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"), ("builtins", "complex"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),
}


class CheckpointError(RuntimeError):
    """A checkpoint or weights file that cannot be used; the message says why and what to do."""


class _ForbiddenGlobal(pickle.UnpicklingError):
    """The pickle names a class or function outside the allow-list."""


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
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


def read_pickle(path: str, trust: bool = False) -> Any:
    """Unpickle `path` allowing only plain data types; with `trust`, fall back to paddle.load."""
    if not os.path.isfile(path):
        raise CheckpointError(f"weights file not found: {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the write that made it did not finish")
    try:
        with open(path, "rb") as f:
            return _to_arrays(_SafeUnpickler(f).load())
    except _ForbiddenGlobal as e:
        if trust:
            return _to_arrays(paddle.load(path, return_numpy=True))
        raise CheckpointError(f"{path} contains a pickled {e}, which could run code when loaded. Load it only "
                              f"if you trust its source, with -o model.trust_pickle=true") from None
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path} is truncated or corrupt ({e}); use another checkpoint") from None
    except (EOFError, ValueError, IndexError, TypeError, AttributeError, MemoryError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt ({type(e).__name__}: {e}); "
                              f"use another checkpoint") from None


def atomic_write(path: str, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync it, rename it over `path`, fsync the folder."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
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


def rng_state() -> dict:
    """The RNG states of python, numpy and paddle (CPU generator), as plain picklable values."""
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "paddle": [s.__getstate__() for s in paddle.get_rng_state()]}


def set_rng_state(state: dict) -> None:
    random.setstate(_tuples(state["python"]))
    np.random.set_state(tuple(state["numpy"]))
    cls = paddle.base.libpaddle.GeneratorState
    restored = []
    for s in state["paddle"]:
        g = cls.__new__(cls)
        g.__setstate__(tuple(s))
        restored.append(g)
    paddle.set_rng_state(restored)


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_checkpoint(path: str, state: dict) -> None:
    """Atomically save a training state dict (see senet.train) with our marker and version."""
    buf = io.BytesIO()
    paddle.save({MARKER: VERSION, **state}, buf)
    atomic_write(path, buf.getvalue())


def load_checkpoint(path: str, trust: bool = False) -> dict:
    """Load a checkpoint written by save_checkpoint. Anything else is refused with a clear error."""
    state = read_pickle(path, trust)
    if not isinstance(state, dict) or MARKER not in state:
        raise CheckpointError(f"{path} is not a senet checkpoint (no '{MARKER}' marker). To start from its "
                              f"weights, set model.weights to it; foreign .pdparams need model.trust_pickle=true")
    return state


def extract_model_state(path: str, trust: bool = False, prefer_ema: bool = False) -> dict[str, np.ndarray]:
    """The model weights in a `.safetensors` file, a senet checkpoint, or (trusted) a plain state_dict."""
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        if not os.path.isfile(path):
            raise CheckpointError(f"weights file not found: {path}")
        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None
    state = read_pickle(path, trust)
    if isinstance(state, dict) and MARKER in state:
        if prefer_ema and state.get("ema") is not None:
            return state["ema"]
        return state["model"]
    if not trust:
        raise CheckpointError(f"{path} is a pickle from outside this project (not a senet checkpoint). Unpickling "
                              f"can run code: convert it to .safetensors, or if you trust it pass "
                              f"-o model.trust_pickle=true")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state_dict")
    return state


def load_weights(model: paddle.nn.Layer, path: str, trust: bool = False, prefer_ema: bool = False,
                 expected_arch: str | None = None) -> None:
    """Load weights into `model`, refusing any missing, unexpected or mis-shaped tensor by name."""
    weights = extract_model_state(path, trust, prefer_ema)
    check_compatible(model, weights, path, expected_arch)
    model.set_state_dict({k: paddle.to_tensor(v) for k, v in weights.items()})


def check_compatible(model: paddle.nn.Layer, weights: dict, source: str, expected_arch: str | None = None) -> None:
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(np.shape(v)) for k, v in weights.items()}
    missing = [k for k in own if k not in theirs]
    extra = [k for k in theirs if k not in own]
    shapes = [f"{k}: model {own[k]} vs file {theirs[k]}" for k in own if k in theirs and own[k] != theirs[k]]
    if not (missing or extra or shapes):
        return
    parts = []
    for label, items in (("missing", missing), ("unexpected", extra), ("shape mismatch", shapes)):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:5])}{more}")
    arch = f" for model.arch={expected_arch}" if expected_arch else ""
    raise CheckpointError(f"{source} does not fit the model{arch}: " + "; ".join(parts)
                          + ". Was it saved from another architecture, reduction or num_classes?")


def save_safetensors(model: paddle.nn.Layer, path: str, metadata: dict | None = None) -> None:
    """Weights only, no pickle: safe to share. Metadata values are stored as JSON strings."""
    from safetensors.numpy import save

    tensors = {k: np.ascontiguousarray(v.numpy()) for k, v in model.state_dict().items()}
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    atomic_write(path, save(tensors, metadata=meta))
