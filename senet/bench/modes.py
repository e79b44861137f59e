"""The modes: what is timed, one registry entry each.

A mode names its batch size (a BenchOptions field), its calls per round, its runner (which builds the
call that is timed from a fresh model and one batch), how the memory probe exercises it and its
line in the summary and the report. The run, the memory probes, results.json, the summary, report.md
and the plots all read this registry, so a new mode is one `register_mode(Mode(...))` plus its
runner (docs/bench.md, "Adding a mode").

Modes run in the order they were registered: on a CPU the memory probe reads a process's peak
resident set, which only grows, so the cheaper modes come first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import paddle

    from senet.bench.plan import ModelSpec, Variant

# (model, spec, variant, uint8 NHWC images, int64 labels) -> the call that is timed. The model is fresh
# (seeded, in the variant's layout); the call returns its result, which the clock waits for.
Runner = Callable[["paddle.nn.Layer", "ModelSpec", "Variant", np.ndarray, np.ndarray], Callable[[], Any]]


@dataclass(frozen=True)
class Mode:
    """One mode of the benchmark: results.json's `mode`, and everything the run does differently for it."""

    name: str
    runner: Runner  # dygraph; on the exported engines the call is always Predictor.predict(images)
    batch: str | None  # the BenchOptions field that holds its batch size (BenchOptions.batch_size); None: one image
    calls: str  # the BenchOptions field that holds its calls per round (BenchOptions.calls_per_round)
    title: str  # its summary line: "<title> ratio, <model>, <engine>: x1.034", and the report's headline
    per_call: bool = False  # each call timed on its own (latency), else a round's calls timed together
    exported: bool = False  # an inference mode: also run on Paddle Inference and ONNX Runtime
    probe_calls: int = 1  # calls the memory probe makes before reading the peak
    target: float | None = None  # issue 5's bound on SE's time ratio, in the report's headline
    paper: tuple[float, float, str] | None = None  # Hu et al., Sec. 4: (plain, SE, "unit") for the same ratio
    hint: str = "latency"  # OpenVINO's performance hint on the exported engines (senet.inference.HINTS)


_REGISTRY: dict[str, Mode] = {}


def register_mode(mode: Mode) -> Mode:
    """Add a mode; it runs after the ones registered before it. A name can be registered once."""
    if mode.name in _REGISTRY:
        raise ValueError(f"a bench mode named {mode.name!r} is registered already")
    _REGISTRY[mode.name] = mode
    return mode


def unregister_mode(name: str) -> None:
    del _REGISTRY[name]


def get_mode(name: str) -> Mode:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown bench mode {name!r}; known: {', '.join(_REGISTRY)}") from None


def mode_names() -> tuple[str, ...]:
    """The registered modes, in the order they run."""
    return tuple(_REGISTRY)


# --------------------------------------------------------------------------- the runners


def synthetic_batch(n: int, size: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC RGB images and int64 labels: what the loader yields, and what every runner is given."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), rng.integers(0, num_classes, n).astype(np.int64))


def _autocast(variant: Variant) -> Any:
    import paddle

    return paddle.amp.auto_cast(
        enable=variant.amp != "none",
        level=variant.amp if variant.amp != "none" else "O1",
        dtype=variant.dtype if variant.amp != "none" else "float16",
    )


def infer_runner(
    model: paddle.nn.Layer, spec: ModelSpec, variant: Variant, images: np.ndarray, labels: np.ndarray
) -> Callable[[], Any]:
    """One eval-mode forward pass of a uint8 batch, normalised on the device as in evaluation."""
    import paddle

    from senet.data import normalize_batch

    if variant.amp == "O2":  # fp16/bf16 weights
        model = paddle.amp.decorate(models=model, level="O2", dtype=variant.dtype)
    model.eval()
    x = paddle.to_tensor(images)
    mean, std = spec.cfg["data"]["mean"], spec.cfg["data"]["std"]

    def run():
        with paddle.no_grad(), _autocast(variant):
            return model(normalize_batch(x, mean, std, variant.data_format))

    return run


def train_runner(
    model: paddle.nn.Layer, spec: ModelSpec, variant: Variant, images: np.ndarray, labels: np.ndarray
) -> Callable[[], Any]:
    """One training step, the trainer's own (senet.step.train_step), with senet.train's Momentum optimizer.

    The LR scheduler and EMA are left out of the step: each is a few scalar or elementwise updates,
    EMA is off in the configs, and the schedule would only move the learning rate.
    """
    import paddle

    from senet.optim import build_optimizer
    from senet.step import StepParts, decorate_o2, train_step

    model.train()
    optimizer, _ = build_optimizer(spec.cfg, model, steps_per_epoch=1000, world_size=1)
    amp, scaler = None, None
    if variant.amp != "none":  # as senet.train.setup resolves cfg.train.amp on a GPU
        amp = {"enabled": True, "level": variant.amp, "dtype": variant.dtype}
        if variant.amp == "O2":  # fp16/bf16 weights, fp32 master weights: decorated exactly as the trainer does
            model, optimizer = decorate_o2(model, optimizer, variant.dtype)
        if variant.dtype == "float16":  # bfloat16 has fp32's range and needs no loss scaling
            scaler = paddle.amp.GradScaler(init_loss_scaling=spec.cfg["train"]["amp"]["init_loss_scaling"])
    parts = StepParts(
        model=model,
        optimizer=optimizer,
        mean=spec.cfg["data"]["mean"],
        std=spec.cfg["data"]["std"],
        data_format=variant.data_format,
        amp=amp,
        scaler=scaler,
    )
    x, y = paddle.to_tensor(images), paddle.to_tensor(labels)

    def run():
        _, loss, _ = train_step(parts, x, y)
        return loss  # the clock waits for the loss, which waits for the whole step

    return run


# --------------------------------------------------------------------------- the built-in modes

register_mode(
    Mode(
        "latency",
        infer_runner,
        batch=None,
        calls="latency_calls",
        title="batch-1 latency",
        per_call=True,
        exported=True,
        target=1.03,
        paper=(164.0, 167.0, "ms per image, CPU"),
    )
)
register_mode(
    Mode(
        "infer",
        infer_runner,
        batch="infer_batch",
        calls="steps",
        title="inference time per batch",
        exported=True,
        hint="throughput",
    )
)
register_mode(
    Mode(
        "train",
        train_runner,
        batch="train_batch",
        calls="steps",
        title="train step time",
        probe_calls=2,  # Momentum's buffers appear in the first step
        target=1.05,
        paper=(190.0, 209.0, "ms per 256 images, GPUs"),
    )
)
