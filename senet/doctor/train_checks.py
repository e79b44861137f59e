"""The doctor's checks of training: the device, training steps in each precision and layout, eval in both
layouts, a checkpoint's round trip and resume, and the trainer's own fit, resume and eval.

On a GPU the pipeline checks (checkpoint_resume, fit, fit_resume, eval_weights) train in AMP O2 (bf16
where the GPU has it, else fp16) with an EMA: the paths that first fail on a GPU (docs/gpu.md). On a CPU
they train in fp32 with an EMA, since AMP does nothing there. senet.doctor.context says what the checks
share.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from senet.doctor.context import (
    COMPARED,
    Context,
    Outcome,
    agreement_outcome,
    captured,
    failed,
    float64_logits,
    fresh_names,
    passed,
    tensors,
)
from senet.numerics import float32_noise


def check_paddle_device(ctx: Context, log: io.StringIO) -> Outcome:
    p, smi = ctx.machine["paddle"], ctx.machine["nvidia_smi"]
    reinstall = (
        "rm -rf .venv && make install (it installs the paddlepaddle-gpu build that matches the driver; "
        "PADDLE= and PADDLE_INDEX= override it)"
    )
    if "error" in p:
        return failed(p["error"], reinstall)
    if smi["gpus"] and not p["cuda_build"]:
        return failed(
            f"nvidia-smi lists {smi['gpus']} GPU(s) but Paddle {p['version']} is the CPU build: "
            f"nothing would run on them",
            reinstall,
        )
    if p["cuda_build"] and not ctx.gpu:
        listed = f"nvidia-smi lists {smi['gpus']} GPU(s)" if smi["found"] else "nvidia-smi is not found"
        return failed(
            f"Paddle is built with CUDA {p['cuda']} but sees no GPU ({listed}; CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})",
            f"install or repair the NVIDIA driver (nvidia-smi must list the GPU) and check "
            f"CUDA_VISIBLE_DEVICES; the driver must support CUDA {p['cuda']}",
        )
    if ctx.gpu and smi.get("cuda") and p["cuda"] and _version(smi["cuda"]) < _version(p["cuda"]):
        return failed(
            f"the driver supports CUDA {smi['cuda']}, older than this Paddle build's CUDA {p['cuda']}",
            f"update the NVIDIA driver, or {reinstall}",
        )
    import paddle

    x = paddle.to_tensor([1.5, 2.5]) * 2  # one kernel on the device the trainer will use
    if x.numpy().tolist() != [3.0, 5.0]:
        return failed(f"2 x [1.5, 2.5] gave {x.numpy().tolist()} on {x.place}")
    if ctx.gpu:
        return passed(f"CUDA {p['cuda']} build, {len(ctx.machine['gpus'])} GPU(s), a kernel ran on {x.place}")
    return passed(f"CPU build on a machine without a GPU; a kernel ran on {x.place}")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())


# --------------------------------------------------------------------------- training steps


def train_steps(ctx: Context, log: io.StringIO, amp: dict, data_format: str = "NCHW") -> Outcome:
    """ctx.sizes.steps of senet.step.train_step on the fixed batch, from senet.train.setup's state."""
    from senet.step import train_step
    from senet.train import setup

    images, labels = tensors(ctx.batch())
    with fresh_names(), captured(log):
        state, _, _, env = setup(ctx.config("steps", amp=amp, data_format=data_format))
        wanted = amp["dtype"] if amp["enabled"] else "fp32"
        got = env["amp"]["dtype"] if env["amp"]["enabled"] else "fp32"
        level_lost = amp["enabled"] and env["amp"]["level"] != amp["level"]
        if got != wanted or level_lost or env["data_format"] != data_format:
            return failed(
                f"asked for {wanted} {amp.get('level', '')} {data_format}, the trainer resolved {got} "
                f"{env['data_format']}: {' '.join(env['notices']) or 'no notice given'}"
            )
        if amp["enabled"] and amp["level"] == "O2":
            dtypes = {str(p.dtype).removeprefix("paddle.") for p in state.model.parameters()}
            if amp["dtype"] not in dtypes:
                return failed(f"AMP O2 {amp['dtype']}: the model's parameters are {sorted(dtypes)} after decorate")
        parts, losses, overflowed = state.step_parts(), [], 0
        for _ in range(ctx.sizes.steps):
            _, loss, _ = train_step(parts, images, labels)
            losses.append(float(loss))
            overflowed += bool(state.scaler is not None and state.scaler._cache_found_inf)
    shown = ", ".join(f"{v:.4g}" for v in losses)
    if not all(math.isfinite(v) for v in losses):
        return failed(f"non-finite loss: {shown}")
    if overflowed == len(losses):
        return failed(
            f"every step's gradients overflowed under loss scaling (scale now {float(state.scaler._scale):g})"
        )
    if not losses[-1] < losses[0]:
        return failed(f"the loss did not fall on one repeated batch: {shown}")
    scaling = (
        f"; {overflowed} overflowed step(s) skipped, loss scale {float(state.scaler._scale):g}"
        if state.scaler is not None
        else ""
    )
    return passed(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} in {len(losses)} steps{scaling}")


def check_train_fp32(ctx: Context, log: io.StringIO) -> Outcome:
    return train_steps(ctx, log, {"enabled": False})


def check_train_amp_o1_fp16(ctx: Context, log: io.StringIO) -> Outcome:
    return train_steps(ctx, log, {"enabled": True, "level": "O1", "dtype": "float16"})


def check_train_amp_o2_bf16(ctx: Context, log: io.StringIO) -> Outcome:
    return train_steps(ctx, log, {"enabled": True, "level": "O2", "dtype": "bfloat16"})


def check_train_nhwc(ctx: Context, log: io.StringIO) -> Outcome:
    return train_steps(ctx, log, {"enabled": True, "level": "O1", "dtype": "float16"}, "NHWC")


# --------------------------------------------------------------------------- eval layouts


def check_eval_nchw_nhwc(ctx: Context, log: io.StringIO) -> Outcome:
    """The trainer's eval forward (senet.step.forward_loss, train=False) of one set of weights in both layouts.

    The noise is the larger of the two layouts' own float32 noise, each against its float64 twin in the
    same layout (senet/numerics.py: "the noisier side"): a GPU may run one layout's convs in TF32 and not
    the other's, and a mistake in one layout's code shows in its float64 twin too, so it is not hidden.
    """
    import paddle

    from senet.resnet import build_model
    from senet.step import StepParts, forward_loss

    cfg = ctx.config("eval")
    mean, std = cfg["data"]["mean"], cfg["data"]["std"]
    images, labels = (a[:COMPARED] for a in ctx.batch())
    logits, noise = {}, {}
    with fresh_names(), captured(log):
        nchw = build_model(cfg)
        nhwc = build_model(ctx.config("eval", data_format="NHWC"))
        nhwc.set_state_dict(nchw.state_dict())  # Paddle keeps conv kernels OIHW in both layouts
        for fmt, model in (("NCHW", nchw), ("NHWC", nhwc)):
            model.eval()
            parts = StepParts(model, None, mean, std, fmt)
            with paddle.no_grad():
                logits[fmt] = forward_loss(parts, *tensors((images, labels)), train=False)[0].numpy()
            noise[fmt] = float32_noise(logits[fmt], float64_logits(model, images, mean, std, fmt))
    return agreement_outcome(f"NHWC against NCHW, {ctx.device}", logits["NHWC"], logits["NCHW"], max(noise.values()))


def state_arrays(state: Any) -> dict[str, np.ndarray]:
    """A trainer state as named arrays: the weights as checkpoints hold them, the EMA, the optimizer state
    (accumulators and AMP master weights), the loss scaler's state and the trainer's counters."""
    import paddle

    out = {f"model/{k}": v.numpy() for k, v in state.model.state_dict().items()}
    if state.ema is not None:
        out.update({f"ema/{k}": v.numpy() for k, v in state.ema.state_dict().items()})
    if state.scaler is not None:
        out.update({f"scaler/{k}": np.asarray(v) for k, v in state.scaler.state_dict().items()})
    for k in ("epoch", "batch_in_epoch", "global_step", "skipped_steps"):
        out[f"trainer/{k}"] = np.asarray(getattr(state, k))

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(value, paddle.Tensor):
            out[prefix] = value.numpy()

    walk("optimizer", state.optimizer.state_dict())
    return out


def largest_differences(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
    """max |a - b| per name (inf for a name in only one, or arrays of another shape or kind)."""
    out = {}
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if x is None or y is None or x.shape != y.shape or x.dtype != y.dtype:
            out[k] = math.inf
        elif x.dtype.kind == "f":
            out[k] = float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max()) if x.size else 0.0
        else:
            out[k] = 0.0 if np.array_equal(x, y) else math.inf
    return out


@contextlib.contextmanager
def deterministic_gpu(gpu: bool) -> Iterator[None]:
    """cuDNN's deterministic algorithms for the `with` body on a GPU, so that a step run twice can agree bitwise."""
    import paddle

    if not gpu:
        yield
        return
    try:
        old = paddle.get_flags(["FLAGS_cudnn_deterministic"])
        paddle.set_flags({"FLAGS_cudnn_deterministic": True})
    except ValueError:  # a build without the flag: the spread of two runs is measured anyway
        yield
        return
    try:
        yield
    finally:
        paddle.set_flags(old)


def check_checkpoint_resume(ctx: Context, log: io.StringIO) -> Outcome:
    """Train 2 steps, save a checkpoint as the trainer does (TrainState.to_checkpoint, save_checkpoint), load it
    into a fresh state (load_checkpoint, TrainState.restore), then take one more step in both.

    On a GPU a second fresh state resumes too: the spread of the two resumed steps is the step's own
    run-to-run noise (cuDNN may pick non-deterministic kernels). On a CPU the same step on the same machine
    and threads is bitwise the same (senet/numerics.py, rule 1), so one resume is compared bitwise."""
    from senet.checkpoint import load_checkpoint, save_checkpoint
    from senet.step import train_step
    from senet.train import setup

    cfg = ctx.config("checkpoint", amp=ctx.pipeline_amp(), ema=True)
    images, labels = tensors(ctx.batch())
    path = os.path.join(ctx.workdir, "checkpoint", "state.pdparams")
    with captured(log):
        with fresh_names():  # the uninterrupted run
            first = setup(cfg)[0]
            start = state_arrays(first)
            for _ in range(2):
                train_step(first.step_parts(), images, labels)
            saved = state_arrays(first)
            save_checkpoint(path, first.to_checkpoint())
            with deterministic_gpu(ctx.gpu):
                train_step(first.step_parts(), images, labels)
            uninterrupted = state_arrays(first)
        resumed = []
        for _ in range(2 if ctx.gpu else 1):
            with fresh_names():
                state = setup(cfg)[0]
                state.restore(load_checkpoint(path), path)
                loaded = state_arrays(state)
                with deterministic_gpu(ctx.gpu):
                    train_step(state.step_parts(), images, labels)
                resumed.append(state_arrays(state))
                del state
    moved = [k for k, d in largest_differences(start, saved).items() if k.startswith("model/") and d > 0]
    if not moved:
        return failed("two training steps left every weight unchanged")
    # What the file held and what came back, bitwise: the weights and the EMA, and the optimizer state that
    # the restored optimizer shows before its first step (Paddle makes its accumulators at that step).
    lost = {
        k: d
        for k, d in largest_differences(saved, loaded).items()
        if d != 0 and (k in loaded or not k.startswith("optimizer/"))
    }
    if lost:
        name = max(lost, key=lost.get)
        return failed(f"{len(lost)} tensor(s) differ after save and load, e.g. {name} by {lost[name]:.3g}")
    spread = largest_differences(resumed[0], resumed[-1])
    gap = largest_differences(uninterrupted, resumed[0])
    off = {k: (gap[k], spread[k]) for k in gap if gap[k] > 4 * spread.get(k, 0.0)}
    if off:
        name = max(off, key=lambda k: off[k][0])
        return failed(
            f"the step after the resume differs from the uninterrupted one in {len(off)} tensor(s), e.g. "
            f"{name} by {off[name][0]:.3g} (two resumed runs differ by {off[name][1]:.3g})"
        )
    exact = all(v == 0 for v in gap.values())
    how = "bitwise" if exact else "within the spread of two resumes"
    return passed(
        f"{len(saved)} tensors (weights, EMA, optimizer) saved and loaded on the {ctx.device} bitwise; the "
        f"next step equals the uninterrupted one {how}"
    )


# --------------------------------------------------------------------------- the trainer's fit, resume, eval


def safetensors_dtypes(path: str) -> set[str]:
    """The dtype codes in a .safetensors file's header (F32, F16, BF16, U16, ...): what it really stores."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    return {spec["dtype"] for name, spec in header.items() if name != "__metadata__"}


def float32_files(run: str) -> Outcome | None:
    """A FAIL unless model.safetensors and the checkpoints (weights and EMA) hold float32 only."""
    from senet.checkpoint import load_checkpoint

    codes = safetensors_dtypes(os.path.join(run, "model.safetensors"))
    if codes != {"F32"}:
        return failed(f"model.safetensors stores {sorted(codes)}, not F32 alone")
    for name in ("last", "best"):
        state = load_checkpoint(os.path.join(run, "checkpoints", f"{name}.pdparams"))
        kinds = {str(v.dtype) for part in ("model", "ema") for v in (state.get(part) or {}).values()}
        if kinds != {"float32"}:
            return failed(f"checkpoints/{name}.pdparams holds weights of {sorted(kinds)}, not float32 alone")
    return None


def check_fit(ctx: Context, log: io.StringIO) -> Outcome:
    from senet.train import fit

    cfg = ctx.config("run", amp=ctx.pipeline_amp(), ema=True, epochs=1)
    with fresh_names(), captured(log):
        metrics = fit(cfg)
    ctx.cache["run"] = run = cfg["output_dir"]
    record = metrics["history"][-1] if metrics["history"] else {}
    values = [record.get(k) for k in ("train_loss", "eval_loss", "ema_eval_loss")]
    if not metrics["finished"] or None in values:
        return failed(f"fit ended with finished={metrics['finished']}, epoch record {sorted(record)}")
    if not all(math.isfinite(v) for v in values):
        return failed(f"non-finite loss: train {values[0]}, val {values[1]}, EMA val {values[2]}")
    bad = float32_files(run)
    if bad:
        return bad
    wait = record.get("data_wait_pct")  # the trainer's measure of the loader (the in-memory data here)
    waited = f", data wait {wait:.1f}% of step time" if isinstance(wait, (int, float)) else ""
    return passed(
        f"{metrics['global_step']} steps in {metrics.get('precision', 'the config precision')}{waited}: "
        f"train loss {values[0]:.4f}, val loss {values[1]:.4f}, EMA val loss {values[2]:.4f}; checkpoints "
        f"and model.safetensors float32"
    )


def check_fit_resume(ctx: Context, log: io.StringIO) -> Outcome:
    from senet.train import fit

    missing = ctx.needs("fit")
    if missing:
        return missing
    cfg = ctx.config("run", amp=ctx.pipeline_amp(), ema=True, epochs=2)
    with fresh_names(), captured(log):
        metrics = fit(cfg, resume="auto")
    with open(os.path.join(cfg["output_dir"], "train.log")) as f:
        resumed = [ln for ln in f if "resumed from" in ln]
    steps_per_epoch = 2
    if not resumed:
        return failed("train.log has no 'resumed from' line: the run started again instead of resuming")
    if not metrics["finished"] or metrics["epochs_done"] != 2 or metrics["global_step"] != 2 * steps_per_epoch:
        return failed(
            f"after resuming: finished={metrics['finished']}, epochs_done={metrics['epochs_done']}, "
            f"global_step={metrics['global_step']} (expected 2 epochs, {2 * steps_per_epoch} steps)"
        )
    losses = [metrics["history"][-1].get(k) for k in ("train_loss", "eval_loss", "ema_eval_loss")]
    if None in losses or not all(math.isfinite(v) for v in losses):
        return failed(f"epoch 2 after the resume: train, val and EMA val losses {losses}")
    bad = float32_files(cfg["output_dir"])
    if bad:
        return bad
    return passed(
        f"resumed at step {steps_per_epoch}, epoch 2 trained and evaluated: train loss {losses[0]:.4f}, "
        f"val loss {losses[1]:.4f}, EMA val loss {losses[2]:.4f}"
    )


def check_eval_weights(ctx: Context, log: io.StringIO) -> Outcome:
    """The run's model.safetensors, and its last checkpoint's EMA weights, evaluated as tools/eval.py does."""
    from senet.checkpoint import load_weights
    from senet.data import build_loader
    from senet.device import device_notices
    from senet.engine import evaluate
    from senet.resnet import build_model

    missing = ctx.needs("fit")
    if missing:
        return missing
    run = ctx.cache["run"]
    cfg = ctx.config("run", amp=ctx.pipeline_amp(), ema=True)
    results = {}
    with fresh_names(), captured(log):
        env = device_notices(cfg)
        cfg["train"]["data_format"] = env["data_format"]
        loader = build_loader(cfg, "val")
        for label, path, ema in (
            ("model.safetensors", os.path.join(run, "model.safetensors"), False),
            ("EMA of checkpoints/last.pdparams", os.path.join(run, "checkpoints", "last.pdparams"), True),
        ):
            model = build_model(cfg)
            load_weights(model, path, prefer_ema=ema, expected_arch=cfg["model"]["arch"])
            results[label] = evaluate(model, loader, cfg, env["data_format"], env["amp"])
    for label, r in results.items():
        if r["images"] != ctx.sizes.batch or not math.isfinite(r["loss"]):
            return failed(f"{label}: {r['images']} images evaluated, loss {r['loss']}")
    return passed("; ".join(f"{label}: loss {r['loss']:.4f} over {r['images']} images" for label, r in results.items()))
