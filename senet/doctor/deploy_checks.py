"""The doctor's checks of what leaves training: the exported model under Paddle Inference, TensorRT and ONNX
Runtime against dygraph, the DALI loader, and a two-process launch of tools/train.py.

The engines run the weights the fit check trained (model.safetensors), exported once by
senet.export.export; each engine's logits on the fixed batch must match dygraph's within the float32
noise measured against the float64 twin (senet/numerics.py).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from senet.data.fake import make_fake_imagenet
from senet.doctor.context import (
    REPORT_FIX,
    ROOT,
    Context,
    Outcome,
    agreement_outcome,
    captured,
    failed,
    float64_logits,
    fresh_names,
    notices,
    passed,
    skipped,
)
from senet.doctor.plan import QUICK_SIZES
from senet.inference import Predictor
from senet.numerics import float32_noise


def exported(ctx: Context, log: io.StringIO) -> tuple[str, dict]:
    """The run's final weights exported once (senet.export.export, every format): (folder, the config)."""
    from senet.export import export

    if "export" not in ctx.cache:
        run = ctx.cache["run"]
        cfg = ctx.config("run", extra=(f"model.weights={os.path.join(run, 'model.safetensors')}",))
        folder = os.path.join(ctx.workdir, "export")
        with fresh_names(), captured(log):
            export(cfg, folder)
        ctx.cache["export"] = folder, cfg
    return ctx.cache["export"]


def dygraph_reference(ctx: Context, cfg: dict, images: np.ndarray) -> tuple[np.ndarray, float]:
    """Dygraph's float32 logits of the exported weights (senet.export.load_model, dygraph_logits) and their
    float32 noise against the float64 twin; computed once, for every engine."""
    from senet.export import dygraph_logits, load_model

    if "reference" not in ctx.cache:
        with fresh_names():
            model, _ = load_model(cfg)  # (the model, the classes its weights record)
        mean, std = cfg["data"]["mean"], cfg["data"]["std"]
        ref = dygraph_logits(model, images, mean, std)
        ctx.cache["reference"] = ref, float32_noise(ref, float64_logits(model, images, mean, std))
    return ctx.cache["reference"]


def engine_outcome(ctx: Context, log: io.StringIO, make: Callable[[str], Any], needs_tensorrt: bool = False) -> Outcome:
    """Export (once), run `make(folder)`'s predictor on the fixed batch, compare its logits with dygraph's.

    The reason names what really ran (Predictor.backend: engine, kernels, device) and any notice it gave.
    """
    missing = ctx.needs("fit")
    if missing:
        return missing
    folder, cfg = exported(ctx, log)
    images = ctx.compared_images()
    with captured(log):
        predictor = make(folder)
        if needs_tensorrt and "TensorRT" not in predictor.backend:
            # Paddle 3.3 builds TensorRT engines for .pdmodel graphs only; senet.export writes PIR graphs.
            return skipped(
                f"TensorRT is installed, but {predictor.backend} runs the exported model: "
                f"{'; '.join(notices(log)) or 'no TensorRT engine was built'}"
            )
        logits = predictor.predict(images)
        ref, noise = dygraph_reference(ctx, cfg, images)
    outcome = agreement_outcome(f"{predictor.backend} against dygraph", logits, ref, noise)
    said = notices(log)
    return Outcome(outcome.status, outcome.reason + (f" ({'; '.join(said)})" if said else ""), outcome.fix)


def check_export_paddle_inference(ctx: Context, log: io.StringIO) -> Outcome:
    device = "gpu" if ctx.gpu else "cpu"  # "gpu": this process's GPU, GPU 0 here
    return engine_outcome(ctx, log, lambda folder: Predictor(folder, engine="paddle", device=device))


def check_export_tensorrt(ctx: Context, log: io.StringIO) -> Outcome:
    return engine_outcome(
        ctx, log, lambda folder: Predictor(folder, engine="paddle", device="gpu"), needs_tensorrt=True
    )


def check_export_onnxruntime(ctx: Context, log: io.StringIO) -> Outcome:
    providers = ctx.machine["packages"].get("ONNX Runtime providers") or []
    device = "gpu" if ctx.gpu and "CUDAExecutionProvider" in providers else "cpu"
    return engine_outcome(ctx, log, lambda folder: Predictor(folder, engine="onnxruntime", device=device))


# --------------------------------------------------------------------------- DALI


def check_dali_pipeline(ctx: Context, log: io.StringIO) -> Outcome:
    """The trainer's loader with data.loader=dali over a small ImageNet-layout folder of JPEGs: one epoch of each
    split, every image once (each class's count), uint8 NHWC; and its val images against our loader's.

    The pixel bounds (senet.data.dali.VAL_MAX_DIFF, VAL_MEAN_DIFF) were measured with DALI's `cpu` decoder,
    which decodes as OpenCV does: on a CPU they are checked; on a GPU, where nvJPEG decodes (`mixed`, never
    measured here), the differences are reported, not judged.
    """
    from senet.data import build_loader
    from senet.data.dali import VAL_MAX_DIFF, VAL_MEAN_DIFF

    classes, per_class = 4, {"train": 4, "val": 2}
    root = make_fake_imagenet(
        os.path.join(ctx.workdir, "images"),
        classes=classes,
        train_per_class=per_class["train"],
        val_per_class=per_class["val"],
        size=(80, 60),
        jpeg_only=True,
    )
    size = 32
    common = (
        "data.name=imagenet",
        f"data.root={root}",
        f"model.num_classes={classes}",
        f"data.image_size={size}",
        f"data.eval_resize={size + size // 7}",
        f"data.eval_crop={size}",
        "data.batch_size=4",
    )
    batches: dict[tuple[str, str], list] = {}
    with captured(log):
        for loader_name in ("dali", "paddle"):
            cfg = ctx.config(f"loader_{loader_name}", extra=(*common, f"data.loader={loader_name}"))
            for split in ("train", "val") if loader_name == "dali" else ("val",):
                loader = build_loader(cfg, split)
                loader.set_epoch(0)
                batches[loader_name, split] = [(x.numpy(), y.numpy()) for x, y in loader]
    for split in ("train", "val"):
        got = batches["dali", split]
        shapes = {(x.dtype.name, x.shape[1:]) for x, _ in got}
        if shapes != {("uint8", (size, size, 3))}:
            return failed(f"DALI {split} batches: {sorted(shapes)}, expected uint8 [N, {size}, {size}, 3]")
        counts = np.bincount(np.concatenate([y for _, y in got]).ravel(), minlength=classes)
        if counts.tolist() != [per_class[split]] * classes:
            return failed(f"DALI {split} epoch: images per class {counts.tolist()}, expected {per_class[split]} each")
    dali_val = np.concatenate([x for x, _ in batches["dali", "val"]]).astype(np.int16)
    ours_val = np.concatenate([x for x, _ in batches["paddle", "val"]]).astype(np.int16)
    diff = np.abs(dali_val - ours_val)
    worst, mean = int(diff.max()), float(diff.mean(axis=(1, 2, 3)).max())
    pixels = f"val images {worst} levels from our loader's at most, {mean:.2f} on average per image at most"
    if not ctx.gpu and (worst > VAL_MAX_DIFF or mean > VAL_MEAN_DIFF):
        return failed(f"{pixels}: beyond the {VAL_MAX_DIFF} and {VAL_MEAN_DIFF} measured for the cpu decoder")
    decoder = (
        "mixed decoder (nvJPEG), not judged" if ctx.gpu else f"cpu decoder, bounds {VAL_MAX_DIFF} and {VAL_MEAN_DIFF}"
    )
    return passed(
        f"one epoch each, every image once ({per_class['train'] * classes} train, "
        f"{per_class['val'] * classes} val), uint8 NHWC {size}x{size}; {pixels} ({decoder})"
    )


# --------------------------------------------------------------------------- two processes


def check_launch_two_processes(ctx: Context, log: io.StringIO) -> Outcome:
    """tools/train.py under paddle.distributed.launch, two ranks, one epoch: as a user starts a job."""
    folder = os.path.join(ctx.workdir, "launch")
    s = ctx.sizes
    amp = ctx.pipeline_amp()
    # On a GPU the network and AMP O2 of the other checks (O2 with DataParallel is a path of its own). On a CPU
    # the launch itself is checked (gloo, gradients averaged, ranks in step) on the demo's small network: two
    # ranks share the cores, and se_resnet50's checkpoints, written by rank 0, would double this check's time.
    config, size = (s.config, s.image_size) if ctx.gpu else (QUICK_SIZES.config, QUICK_SIZES.image_size)
    overrides = [
        f"output_dir={folder}/run",
        "data.name=synthetic",
        f"data.image_size={size}",
        f"data.eval_crop={size}",
        f"data.batch_size={s.batch}",
        f"data.synthetic_train_size={4 * s.batch}",
        f"data.synthetic_val_size={2 * s.batch}",
        "data.num_workers=0",
        "train.epochs=1",
        "train.log_every=1",
        "train.save_every=0",
        *(f"train.amp.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in amp.items()),
    ]
    devices = ["--devices", "0,1"] if ctx.gpu else []
    cmd = [
        sys.executable,
        "-m",
        "paddle.distributed.launch",
        "--nproc_per_node",
        "2",
        *devices,
        "--log_dir",
        os.path.join(folder, "logs"),
        os.path.join(ROOT, "tools", "train.py"),
        "-c",
        os.path.join(ROOT, config),
        "-o",
        *overrides,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    log.write(proc.stdout + proc.stderr)
    errors = []
    for rank in (0, 1):
        worker = os.path.join(folder, "logs", f"workerlog.{rank}")
        if os.path.isfile(worker):
            with open(worker, errors="replace") as f:
                text = f.read()
            log.write(f"--- workerlog.{rank}\n{text[-4000:]}")
            errors += [f"rank {rank}: {ln.strip()}" for ln in text.splitlines() if "Error" in ln or "error:" in ln][-1:]
    train_log = os.path.join(folder, "run", "train.log")
    text = ""
    if os.path.isfile(train_log):
        with open(train_log) as f:
            text = f.read()
    if proc.returncode != 0:
        said = f": {'; '.join(errors)[:600]}" if errors else ""
        return failed(
            f"the launch exited {proc.returncode}{said}",
            f"read {folder}/logs/workerlog.0 and .1 (run with --keep to keep them), or {REPORT_FIX}",
        )
    if "weights identical on all 2 ranks" not in text:
        return failed("train.log does not say the two ranks' weights are identical after the epoch")
    return passed(
        f"2 ranks ({'NCCL' if ctx.gpu else 'gloo'}), {config}, 2 steps of a global batch of "
        f"{2 * s.batch} at {size}x{size} px: weights identical on both ranks after the epoch"
    )
