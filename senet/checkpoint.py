"""Checkpoints of the full training state, written atomically; weights in and out, safely.

A checkpoint (`<output_dir>/checkpoints/{last,best,epoch_N}.pdparams`) is one file written by
`paddle.save`: model, optimizer, LR scheduler, loss scaler, EMA, epoch, step, best metric, the
RNG states of python, numpy and paddle, and the resolved config. It is written to a temporary file
in the same folder, fsynced, then renamed over the old one, so a crash or kill at any moment
leaves either the old or the new checkpoint, never a half-written one.

Under AMP O2 (senet.step.decorate_o2) a checkpoint holds float32 weights, the optimizer's fp32
master weights with their names (restore_optimizer makes them tensors again) and the EMA of those
master weights; `set_weights` casts the weights back to the fp16/bf16 the model holds. The paddle RNG
state is the CPU generator's and this process's own GPU's, so a resume works whatever number of GPUs
the new process sees.

Integrity: after the pickle comes a 48-byte trailer, `senet:sha256:v1\n` and the SHA-256 of the
pickle bytes (paddle.load and pickle stop at the pickle's end and ignore it). Loading checks it
before unpickling, so a flipped bit anywhere is refused by name instead of resuming wrong weights.
Checkpoints of version 1 (before the checksum) still load, with a one-line notice that they are
unverified. `model.safetensors` carries the same kind of digest in its metadata (`senet_sha256`,
over the tensor names, dtypes, shapes, bytes and the other metadata), checked at load when present.

The byte-level readers (the restricted unpickler, the SHA trailer, the safetensors parser,
atomic_write) are senet.formats; this module builds the training checkpoints and the model-level
loading on them. Loading never runs arbitrary pickled code: files are unpickled with an allow-list of plain
types (numpy arrays, dicts, tuples). A `.pdparams` file that is not one of our checkpoints is
refused unless the user says they trust it (`model.trust_pickle=true`), because a pickle from
elsewhere could carry code. The unpickled data is also bounded (senet.limits.check_tree: object
count as a tree, nesting depth), so a small pickle cannot expand to gigabytes or recurse without
end. `.safetensors` files hold only tensors and are always safe; their header and offsets are
checked before any tensor is read. Model weights of float16, bfloat16 or float64 are converted to
float32 (the models' dtype); integer or bool weights, and tensors holding NaN or Inf, are refused
with the tensor's name. Any failure to load is a CheckpointError, whatever raised it inside.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import sys
from typing import Any

import numpy as np
import paddle
from safetensors.numpy import save

from senet.attention import split_arch
from senet.formats import (  # the byte-level readers, re-exported for the callers of senet.checkpoint
    _ST_CODES,
    SAFETENSORS_DIGEST_KEY,
    TRAILER_MAGIC,
    CheckpointError,
    _file_problem,
    _ForbiddenGlobal,
    _SafeUnpickler,
    _tensors_digest,
    _to_arrays,
    _verify_trailer,
    atomic_write,
    check_finite,
    read_safetensors,
)
from senet.limits import RENAMED, TreeTooLarge, array_budget, check_tree, file_kind, os_error_fix, shared_arrays

MARKER = "senet_checkpoint"  # key present in every checkpoint this harness writes
# The names the trainer gives its checkpoints in <output_dir>/checkpoints; group 2 is an epoch number.
# Anything else there is the user's: pruning and --resume auto leave it alone.
CHECKPOINT_NAME = re.compile(r"(last|best|epoch_(\d+))\.pdparams")
VERSION = 2  # 2: SHA-256 trailer after the pickle; 1: no checksum (still loaded, with a notice)
# Keys TrainState.restore reads, with the type each must have: a checkpoint without them cannot resume.
_STATE_KEYS = {
    "model": dict,
    "optimizer": dict,
    "lr_scheduler": dict,
    "epoch": int,
    "batch_in_epoch": int,
    "global_step": int,
    "rng": dict,
    "history": list,
}


def _unpickle_checked(path: str, trust: bool) -> tuple[Any, bool]:
    """(the unpickled data with tensors as arrays, whether a checksum trailer verified it)."""
    _file_problem(path)
    kind = file_kind(path)
    if kind not in (None, "pickle"):  # another format under a checkpoint's name
        raise CheckpointError(f"{path} is not a checkpoint but {RENAMED[kind]}")
    try:
        verified = _verify_trailer(path)
        with open(path, "rb") as f:
            obj = _SafeUnpickler(f).load()
        check_tree(obj, max_array_bytes=array_budget(os.path.getsize(path)))
        return _to_arrays(obj), verified
    except CheckpointError:
        raise
    except _ForbiddenGlobal as e:
        if trust:
            try:
                obj = paddle.load(path, return_numpy=True)
                check_tree(obj, max_array_bytes=array_budget(os.path.getsize(path)))
                return _to_arrays(obj), False
            except Exception as e2:  # noqa: BLE001  (any failure of a foreign file is "cannot load it")
                raise CheckpointError(
                    f"{path} could not be loaded even as a trusted pickle "
                    f"({type(e2).__name__}: {str(e2)[:200]}); use another file"
                ) from None
        raise CheckpointError(
            f"{path} contains a pickled {e}, which could run code when loaded. Load it only "
            f"if you trust its source, with -o model.trust_pickle=true"
        ) from None
    except TreeTooLarge as e:
        raise CheckpointError(f"{path} is refused: its pickled data is {e}; use another checkpoint") from None
    except Exception as e:  # noqa: BLE001  (truncated or corrupt pickles raise many types; all mean "unusable")
        raise CheckpointError(
            f"{path} is truncated or corrupt ({type(e).__name__}: {str(e)[:200]}); use another checkpoint"
        ) from None


def read_pickle(path: str, trust: bool = False) -> Any:
    """Unpickle `path` allowing only plain data types; with `trust`, fall back to paddle.load.

    A checksum trailer (our checkpoints) is verified first. Any failure is a CheckpointError.
    """
    return _unpickle_checked(path, trust)[0]


def rng_state() -> dict:
    """The RNG states of python, numpy and paddle, as plain picklable values.

    Paddle's: its CPU generator, and on a GPU the generator of this process's own device alone.
    paddle.get_rng_state() would give one state per visible GPU (and no CPU state), which
    paddle.set_rng_state refuses (ValueError) in a process that sees another number of GPUs: a resume
    on another machine, or with another CUDA_VISIBLE_DEVICES, would fail. Each rank needs only its own.
    """
    gpu = _current_gpu()
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "paddle": {
            "cpu": paddle.base.core.default_cpu_generator().get_state().__getstate__(),
            "gpu": _cuda_generator(gpu).get_state().__getstate__() if gpu is not None else None,
        },
    }


def set_rng_state(state: dict) -> None:
    """Restore rng_state()'s states. The GPU state goes to this process's own device; one saved on a CPU
    leaves the GPU generator as seeded, and a GPU state is ignored on a CPU.

    Checkpoints written before the format above hold paddle.get_rng_state()'s list: on a CPU its one
    CPU state; from a GPU one state per GPU then visible, of which this process's own device is taken
    where it exists (a state's first field is its device: -1 for the CPU).
    """
    random.setstate(_tuples(state["python"]))
    np.random.set_state(tuple(state["numpy"]))
    saved, gpu = state["paddle"], _current_gpu()
    if isinstance(saved, list):  # the earlier format
        cpu, gpus = [s for s in saved if s[0] == -1], [s for s in saved if s[0] != -1]
        saved = {"cpu": cpu[0] if cpu else None, "gpu": gpus[gpu] if gpu is not None and gpu < len(gpus) else None}
    if saved.get("cpu") is not None:
        paddle.base.core.default_cpu_generator().set_state(_generator_state(saved["cpu"]))
    if gpu is not None and saved.get("gpu") is not None:
        _cuda_generator(gpu).set_state(_generator_state(saved["gpu"]))


def _current_gpu() -> int | None:
    """The index of the GPU this process computes on ("gpu:3" -> 3), None on a CPU."""
    device = paddle.get_device()
    return int(device.split(":")[1]) if device.startswith("gpu:") else None


def _cuda_generator(index: int) -> Any:
    return paddle.base.core.default_cuda_generator(index)


def _generator_state(values: Any) -> Any:
    cls = paddle.base.libpaddle.GeneratorState
    g = cls.__new__(cls)
    g.__setstate__(tuple(values))
    return g


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


class CheckpointSaver:
    """The one owner of a run's checkpoints, as timm's CheckpointSaver: where each goes
    (`<output_dir>/checkpoints/<name>.pdparams`), writing it atomically, pruning the numbered ones, and
    which one is the last good one (for the messages of a run that stops). Only rank 0 writes; the
    state's to_checkpoint() runs only there."""

    def __init__(self, output_dir: str, rank: int = 0) -> None:
        self.folder = os.path.join(output_dir, "checkpoints")
        self.rank = rank
        self.last_saved: str | None = None  # also the checkpoint a run resumed from, until it saves

    def path(self, name: str) -> str:
        return os.path.join(self.folder, f"{name}.pdparams")

    def save(self, state: Any, name: str, keep_last: int | None = None) -> None:
        """Save state.to_checkpoint() as <name>.pdparams; with keep_last, then prune the numbered ones."""
        if self.rank != 0:
            return
        path = self.path(name)
        try:
            save_checkpoint(path, state.to_checkpoint())
        except OSError as e:
            kept = f"the previous {path} is intact" if os.path.isfile(path) else "no earlier checkpoint exists"
            raise CheckpointError(
                f"could not write checkpoint {path} ({e.strerror or e}); {kept}. {os_error_fix(e)}"
            ) from e
        self.last_saved = path
        if keep_last:
            self._prune(keep_last)

    def _prune(self, keep_last: int) -> None:
        """Delete all but the newest keep_last epoch_<N>.pdparams; other files (a user's copy named
        epoch_1_keep.pdparams) are never parsed as ours, never deleted."""
        numbered = sorted(
            (int(m.group(2)), n) for n in os.listdir(self.folder) if (m := CHECKPOINT_NAME.fullmatch(n)) and m.group(2)
        )
        for _, name in numbered[:-keep_last]:
            os.remove(os.path.join(self.folder, name))

    def last_good(self) -> str:
        """The sentence a stopped run ends with: which checkpoint to go back to."""
        if self.last_saved:
            return f"Last good checkpoint: {self.last_saved}."
        return "No checkpoint was saved before this step."


def save_checkpoint(path: str, state: dict) -> None:
    """Atomically save a training state dict (see senet.train) with our marker, version and checksum."""
    buf = io.BytesIO()
    paddle.save({MARKER: VERSION, **state}, buf)
    payload = buf.getbuffer()
    atomic_write(path, [payload, TRAILER_MAGIC + hashlib.sha256(payload).digest()])


_UNVERIFIED_NOTED: set[str] = set()


def load_checkpoint(path: str, trust: bool = False) -> dict:
    """Load a checkpoint written by save_checkpoint. Anything else, or any damage, is a CheckpointError."""
    state, verified = _unpickle_checked(path, trust)
    return _checked_checkpoint(path, state, verified)


def _checked_checkpoint(path: str, state: Any, verified: bool) -> dict:
    if not isinstance(state, dict) or MARKER not in state:
        raise CheckpointError(
            f"{path} is not a senet checkpoint (no '{MARKER}' marker). To start from its "
            f"weights, set model.weights to it; foreign .pdparams need model.trust_pickle=true"
        )
    version = state[MARKER]
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {version!r}; this code reads versions 1 to {VERSION} "
            f"(update senet, or use another checkpoint)"
        )
    if version >= 2 and not verified:
        raise CheckpointError(
            f"{path} lacks the checksum every version-{version} checkpoint ends with "
            f"(truncated or damaged); use another checkpoint"
        )
    if not verified and path not in _UNVERIFIED_NOTED:
        _UNVERIFIED_NOTED.add(path)
        print(
            f"notice: {path} is a version-1 checkpoint, written before checkpoints carried a checksum: "
            f"loaded unverified",
            file=sys.stderr,
        )
    bad = [
        f"{k} ({type(state.get(k)).__name__}, not {t.__name__})"
        for k, t in _STATE_KEYS.items()
        if not isinstance(state.get(k), t)
    ]
    if bad:
        raise CheckpointError(f"{path} is damaged or incomplete: {', '.join(bad)}; use another checkpoint")
    check_finite(state["model"], path)
    if isinstance(state.get("ema"), dict):
        check_finite(state["ema"], f"{path} (EMA weights)")
    return state


def _as_float32(value: Any) -> Any:
    """A pickled weight array as float32: fp16 and fp64 converted; uint16 read as bfloat16 bits, which is
    how paddle.save stores bf16 tensors (and paddle.to_tensor reads uint16 arrays back as bf16)."""
    if not isinstance(value, np.ndarray):
        return value
    if value.dtype == np.uint16:
        return (value.astype(np.uint32) << 16).view(np.float32)
    return value.astype(np.float32) if value.dtype in (np.float16, np.float64) else value


def _float32_array(name: str, tensor: paddle.Tensor) -> np.ndarray:
    """A weight as a float32 numpy array, for a file that the float32 models load.

    fp16 and bf16 weights (a model decorated for AMP O2 without save_dtype) are widened exactly on the
    device first: numpy has no bfloat16, so a bf16 tensor's .numpy() is its raw bits as uint16, which
    would be written as U16 and refused on reading. Any other non-float32 dtype is refused by name.
    """
    if tensor.dtype in (paddle.float16, paddle.bfloat16, paddle.float64):
        tensor = tensor.astype("float32")
    if tensor.dtype != paddle.float32:
        raise CheckpointError(
            f"weight {name!r} is {tensor.dtype}, not a float: a model's weights are floats, "
            f"and this writer stores them as float32"
        )
    return np.ascontiguousarray(tensor.numpy())


def set_weights(model: paddle.nn.Layer, weights: dict) -> None:
    """Load checked weights (arrays or tensors, float32 as saved) into `model`, each cast to the dtype the
    model holds it in: fp16 or bf16 for the conv weights of an AMP O2 model. Paddle's set_value refuses
    any dtype other than the tensor's own."""
    own = (
        model.state_dict(use_hook=False)
        if not isinstance(model, paddle.DataParallel)
        else model._layers.state_dict(use_hook=False)
    )
    tensors = {}
    for k, v in weights.items():
        t = v if isinstance(v, paddle.Tensor) else paddle.to_tensor(v)
        if k in own and t.dtype != own[k].dtype:
            if paddle.is_floating_point(own[k]) and not paddle.is_floating_point(t):
                raise CheckpointError(
                    f"weight {k!r} is {t.dtype}, not a float: casting would load integers as "
                    f"weights; re-save the weights as floats"
                )
            t = t.astype(own[k].dtype)
        tensors[k] = t
    model.set_state_dict(tensors)


def optimizer_state(optimizer: Any) -> dict:
    """optimizer.state_dict(), plus the names of its AMP O2 master weights (`master_weight_names`).

    Paddle keys each master weight's accumulators (Momentum's velocity, Adam's moments) by the master
    weight's own tensor name, which the loaded arrays no longer carry: restore_optimizer gives it back.
    """
    state = dict(optimizer.state_dict())
    masters = state.get("master_weights") or {}
    if masters:
        state["master_weight_names"] = {k: v.name for k, v in masters.items()}
    return state


def restore_optimizer(optimizer: Any, saved: dict) -> None:
    """optimizer.set_state_dict from a loaded checkpoint's arrays (optimizer_state's dict).

    Paddle keeps `master_weights` as it is given: numpy arrays there make the first step after a resume
    fail (Paddle reads `.name` of each master weight). So they become float32 device tensors with their
    saved names. A checkpoint written before the names were recorded gets the name Paddle gives the
    first master weight of a parameter in a fresh process (`<parameter>_fp32_master_0`).
    """
    state = {
        k: paddle.to_tensor(v) if isinstance(v, np.ndarray) else v
        for k, v in saved.items()
        if k not in ("master_weights", "master_weight_names")
    }
    masters = saved.get("master_weights") or {}
    if masters:
        names = saved.get("master_weight_names") or {}
        state["master_weights"] = {}
        for param_name, value in masters.items():
            tensor = paddle.to_tensor(np.asarray(value, dtype=np.float32))
            tensor.name = names.get(param_name, f"{param_name}_fp32_master_0")
            state["master_weights"][param_name] = tensor
    optimizer.set_state_dict(state)


def extract_model_state(path: str, trust: bool = False, prefer_ema: bool = False) -> dict[str, np.ndarray]:
    """The model weights in a `.safetensors` file, a senet checkpoint, or (trusted) a plain state_dict.

    Checked: checksums where the file has one, dtypes (floats, as float32), no NaN or Inf.
    """
    return _weights_and_config(path, trust, prefer_ema)[0]


def _weights_and_config(path: str, trust: bool, prefer_ema: bool) -> tuple[dict[str, np.ndarray], Any, Any]:
    """The checked weights, the resolved config the file records and its class list (None for either
    if it records none)."""
    recorded = classes = None
    if path.endswith(".safetensors"):
        weights, metadata = read_safetensors(path)
        try:
            recorded = json.loads(metadata.get("config", "null"))
            classes = json.loads(metadata.get("classes", "null"))
        except ValueError:
            recorded = recorded if isinstance(recorded, dict) else None
        if recorded is None and isinstance(metadata.get("arch"), str):  # an export records its arch alone
            recorded = {"model": {"arch": metadata["arch"]}}
    else:
        weights, recorded, classes = _pickled_weights(path, trust, prefer_ema)
        # The models are float32. Checkpoints of AMP O2 runs made before decorate's save_dtype was set
        # hold fp16 or bf16 weights: widen them exactly, as read_safetensors does.
        weights = {k: _as_float32(v) for k, v in weights.items()}
    check_finite(weights, path)
    valid = isinstance(classes, list) and all(isinstance(c, str) for c in classes)
    return weights, recorded, classes if valid else None


def class_list_problem(recorded: list[str] | None, current: list[str] | None) -> str | None:
    """How the data's class list differs from the one the weights record: classes added, missing, or the
    same classes in another order (which trains and evaluates every label as another class); None if
    they are equal or either is unknown."""
    if recorded is None or current is None or list(recorded) == list(current):
        return None
    added = [c for c in current if c not in set(recorded)]
    missing = [c for c in recorded if c not in set(current)]

    def few(names: list[str]) -> str:
        return ", ".join(names[:5]) + (f" (and {len(names) - 5} more)" if len(names) > 5 else "")

    if added or missing:
        parts = ([f"added {few(added)}"] if added else []) + ([f"missing {few(missing)}"] if missing else [])
        return "the data's classes differ from those the weights were trained on: " + "; ".join(parts)
    moved = [f"{c} (was label {recorded.index(c)}, now {i})" for i, c in enumerate(current) if recorded[i] != c]
    return f"the data's classes are those the weights were trained on, reordered: {few(moved)}"


def check_classes(recorded: list[str] | None, current: list[str] | None, source: str, allow: bool) -> None:
    """Refuse data whose class list differs from the one the weights in `source` record (issue 23: a
    renamed class folder resumed training on permuted labels, silently), unless `allow`
    (data.allow_class_change=true: fine-tuning on other classes, knowingly)."""
    problem = class_list_problem(recorded, current)
    if problem and not allow:
        raise CheckpointError(
            f"{source}: {problem}. Check data.root, or set -o data.allow_class_change=true "
            f"to use these weights with these classes (fine-tuning on new classes)"
        )


def check_stem_era(model: paddle.nn.Layer, recorded_cfg: Any, source: str) -> None:
    """Refuse weights written before `model.stem_pool` existed into a model with Caffe's stem pool.

    Until then every ImageNet-stem model padded its stem max-pool by 1 (the `pytorch` pool); ResNets
    now default to the SENet release's unpadded `caffe` pool. Such weights still fit every tensor
    shape, so without this check they would load and silently give other outputs. A file that
    records no config (a plain state_dict) cannot be dated and is not checked."""
    model_cfg = recorded_cfg.get("model") if isinstance(recorded_cfg, dict) else None
    if not isinstance(model_cfg, dict) or "stem_pool" in model_cfg:
        return
    if getattr(model, "stem_pool", None) == "caffe":
        raise CheckpointError(
            f"{source} was written before model.stem_pool existed, when every ImageNet model padded its stem "
            f"max-pool by 1; model.arch={model_cfg.get('arch')} now defaults to Caffe's unpadded pool, which "
            f"gives other outputs with the same weights. Add -o model.stem_pool=pytorch (and keep it when "
            f"resuming or fine-tuning)"
        )


def _pickled_weights(path: str, trust: bool, prefer_ema: bool) -> tuple[dict[str, np.ndarray], Any, Any]:
    state, verified = _unpickle_checked(path, trust)
    if isinstance(state, dict) and MARKER in state:
        state = _checked_checkpoint(path, state, verified)  # version, checksum and structure
        weights = state["ema"] if prefer_ema and state.get("ema") is not None else state["model"]
        return weights, state.get("config"), state.get("classes")
    if not trust:
        raise CheckpointError(
            f"{path} is a pickle from outside this project (not a senet checkpoint). Unpickling "
            f"can run code: convert it to .safetensors, or if you trust it pass "
            f"-o model.trust_pickle=true"
        )
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state_dict")
    if shared := shared_arrays(state):
        raise CheckpointError(
            f"{path} is refused: {shared[0]!r} and {shared[1]!r} are one array stored under two "
            f"names (a state dict stores each tensor once)"
        )
    return dict(state), None, None  # fp16 and fp64 are widened or narrowed to float32 by _weights_and_config


def load_weights(
    model: paddle.nn.Layer, path: str, trust: bool = False, prefer_ema: bool = False, expected_arch: str | None = None
) -> list[str] | None:
    """Load weights into `model`, refusing any missing, unexpected or mis-shaped tensor by name. Returns
    the class list the file records (None if it records none: converted or older weights)."""
    weights, recorded_cfg, classes = _weights_and_config(path, trust, prefer_ema)
    check_compatible(model, weights, path, expected_arch, _recorded_arch(recorded_cfg))
    check_attention_kind(recorded_cfg, expected_arch, path)  # what shapes cannot tell apart
    check_stem_era(model, recorded_cfg, path)
    set_weights(model, weights)
    return classes


def _recorded_arch(recorded_cfg: Any) -> str | None:
    model_cfg = recorded_cfg.get("model") if isinstance(recorded_cfg, dict) else None
    arch = model_cfg.get("arch") if isinstance(model_cfg, dict) else None
    return arch if isinstance(arch, str) else None


def check_attention_kind(recorded_cfg: Any, expected_arch: str | None, source: str) -> None:
    """Refuse the weights of one attention kind (none, se, eca, cbam) into a model of another, by the
    arch the file records. Shapes cannot tell them apart: an SE model's tensors have the names and
    shapes of a CBAM model's without its spatial branch, and would load silently."""
    arch = _recorded_arch(recorded_cfg)
    if not expected_arch or arch is None:
        return
    theirs, ours = split_arch(arch)[0], split_arch(expected_arch)[0]
    if theirs != ours:

        def kind(entry: Any) -> str:
            return f"{entry.title} blocks" if entry is not None else "no attention blocks"

        raise CheckpointError(
            f"{source} holds {arch} weights ({kind(theirs)}), but model.arch={expected_arch} has "
            f"{kind(ours)}: set model.arch={arch}, or give weights of a {expected_arch}"
        )


def check_compatible(
    model: paddle.nn.Layer,
    weights: dict,
    source: str,
    expected_arch: str | None = None,
    recorded_arch: str | None = None,
) -> None:
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
    hint = (
        f"It records model.arch={recorded_arch}."
        if recorded_arch and recorded_arch != expected_arch
        else "Was it saved from another architecture, reduction or num_classes?"
    )
    raise CheckpointError(f"{source} does not fit the model{arch}: " + "; ".join(parts) + ". " + hint)


def save_safetensors(model: paddle.nn.Layer, path: str, metadata: dict | None = None) -> None:
    """Weights only, no pickle: safe to share. Metadata values are stored as JSON strings, plus the
    SHA-256 digest (`senet_sha256`) that read_safetensors checks. Floats are written as F32 whatever the
    model holds (see _float32_array)."""
    tensors = {k: _float32_array(k, v) for k, v in model.state_dict().items()}
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    meta.pop(SAFETENSORS_DIGEST_KEY, None)
    meta[SAFETENSORS_DIGEST_KEY] = _tensors_digest(
        {k: (_ST_CODES[v.dtype], list(v.shape), v.reshape(-1).view(np.uint8)) for k, v in tensors.items()}, meta
    )
    atomic_write(path, save(tensors, metadata=meta))
