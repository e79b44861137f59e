"""`make bench`: the cost of SE, measured side by side with the plain ResNet in one run.

Hu et al., "Squeeze-and-Excitation Networks", Section 4 ("Model and computational complexity")
claims SE costs +0.26% multiply-adds, 190 -> 209 ms per 256-image training minibatch on GPUs
(x1.10) and 164 -> 167 ms per image for CPU inference (x1.02). This module measures the same
things for this implementation, on the machine it runs on:

- training-step throughput (forward, loss, backward, optimizer step), inference throughput,
  batch-1 latency, peak memory, parameters and GMACs (senet.profile);
- on the engines dygraph, Paddle Inference (oneDNN on a CPU; TensorRT when Paddle has it on a
  GPU) and ONNX Runtime (when installed), through senet.export / senet.inference;
- the training data loader against plain decoding (senet.data.check.bench).

Method: every model gets an untimed warm-up round, then the models take turns for `repeats` rounds,
in reverse order every other round (A B C, C B A, ...), so drift in the machine's speed hits all
alike and no model always runs right after the same other one. The device is synchronised
before the clock is read (on a CPU by reading the result back to numpy). We report the median and
the min-max over the samples, and each model's time ratio against the plain model of the same
run, engine and mode, as the median of the per-round ratios (pairing rounds cancels slow drift).

Peak memory is measured in a fresh child process per model, engine and variant, because a
process's high-water mark cannot be reset: resident set size (ru_maxrss) on a CPU, device memory
allocated (paddle.device.cuda.max_memory_allocated) on a GPU.

Paddle is imported inside the functions that need it: callers must run senet.runtime.setup_cpu
first, and the ONNX Runtime memory probe must not carry Paddle's own resident memory.
"""

from __future__ import annotations

import copy
import csv
import gc
import io
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from senet.config import DEFAULTS, load_config
from senet.runtime import cpu_count, setup_cpu

if TYPE_CHECKING:
    import paddle

MODES = ("latency", "infer", "train")  # run in this order: a memory probe's high-water mark grows with it
ENGINES = ("dygraph", "paddle_inference", "onnxruntime")
EXPORTED = {"paddle_inference": "paddle", "onnxruntime": "onnxruntime"}  # engine -> senet.inference name
REDUCTIONS = (2, 4, 8, 16, 32)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIGS = tuple(os.path.join(ROOT, "configs", f) for f in ("resnet50.yaml", "se_resnet50.yaml"))
VISION_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")  # in paddle.vision.models
PROBE_MARK = "BENCH_PROBE_RESULT "

# Hu et al., Section 4: the paper's own timings, shown beside ours as a reference.
PAPER = {
    "train_ms_per_256": (190.0, 209.0),  # ResNet-50 -> SE-ResNet-50, one 256-image minibatch, 8 GPUs
    "cpu_ms_per_image": (164.0, 167.0),  # inference, 224x224, one image, CPU
    "gmacs": (3.86, 3.87),  # +0.26% multiply-adds
}
# The targets of issue 5, checked in the report.
TARGETS = {"train_ratio": 1.05, "latency_ratio": 1.03, "parity": 0.98}

FIELDS = ["model", "reduction", "name", "reference", "sweep", "mode", "engine", "precision", "data_format", "device",
          "threads", "batch_size", "image_size", "images_per_s", "images_per_s_min", "images_per_s_max",
          "latency_ms", "latency_ms_min", "latency_ms_max", "overhead_vs_plain", "overhead_min", "overhead_max",
          "plain_model", "peak_memory_mb", "memory_kind", "params", "gmacs", "warmup_rounds", "repeats",
          "calls_per_round"]


@dataclass
class BenchOptions:
    """Everything a run measures. `default_options` gives the two presets (CPU default, --full)."""

    configs: list[str] = field(default_factory=lambda: list(DEFAULT_CONFIGS))  # YAML paths or arch names
    overrides: list[str] = field(default_factory=list)  # -o key=value, applied to every config
    reductions: list[int] = field(default_factory=lambda: list(REDUCTIONS))  # r values for each se_ config
    sweep_modes: list[str] = field(default_factory=lambda: ["latency", "infer"])  # dygraph modes with every r
    sweep_engines: bool = False  # exported engines get every r too (else: each config's own r only)
    reference: bool = True  # also paddle.vision.models.<plain arch>, dygraph only
    modes: list[str] = field(default_factory=lambda: list(MODES))
    engines: list[str] = field(default_factory=lambda: list(ENGINES))
    train_batch: int = 8  # images per training step
    infer_batch: int = 8  # images per inference call (latency mode is always 1)
    image_size: int = 224  # pixels, square
    warmup_rounds: int = 1  # untimed rounds per model before the timed ones
    repeats: int = 5  # timed rounds per model
    steps: int = 1  # training steps or inference calls per round, timed together
    latency_calls: int = 10  # batch-1 calls per round, each timed on its own
    amp: list[str] = field(default_factory=lambda: ["O1", "O2"])  # GPU only; "none" is fp32
    dtypes: list[str] = field(default_factory=lambda: ["float16", "bfloat16"])  # GPU only
    data_formats: list[str] = field(default_factory=lambda: ["NCHW", "NHWC"])  # GPU only
    memory: bool = True  # peak memory probes (one child process per model, engine and variant)
    loader_images: int = 256  # images timed per loader repeat; 0 skips the loader benchmark
    threads: int = 0  # CPU threads for every engine and probe, 0 = all cores (senet.runtime.setup_cpu)
    out_root: str = "output/bench"
    keep_export: bool = False  # keep the exported models under <run>/export
    full: bool = False
    seed: int = 0


def default_options(full: bool = False) -> BenchOptions:
    """The default run fits 10 minutes on 2 idle CPU cores; --full is the paper's setting on a GPU."""
    if not full:
        return BenchOptions()
    # Hu et al. time 256-image minibatches at 224 px; 10 steps of 256 per round on a GPU.
    return BenchOptions(train_batch=256, infer_batch=256, warmup_rounds=1, repeats=10, steps=10,
                        latency_calls=50, sweep_modes=list(MODES), sweep_engines=True, full=True)


@dataclass(frozen=True)
class ModelSpec:
    """One model of the run: an entry of BenchOptions.configs, one of its r values, or the reference."""

    name: str  # unique label, e.g. "se_resnet50 r=16"
    arch: str
    cfg: dict  # resolved config (model.se.reduction set for SE models)
    reduction: int | None = None  # None for plain models
    reference: bool = False  # paddle.vision.models.<arch>
    sweep: bool = False  # an extra r value, measured only in the sweep modes
    plain: str | None = None  # the plain model it is compared against (a plain model: itself, or the first of its arch)


@dataclass(frozen=True)
class Variant:
    """Precision and layout of a dygraph run. fp32 NCHW on a CPU."""

    amp: str = "none"  # none | O1 | O2
    dtype: str = "float32"
    data_format: str = "NCHW"

    @property
    def precision(self) -> str:
        return "fp32" if self.amp == "none" else f"amp-{self.amp}-{self.dtype}"


FP32 = Variant()


@dataclass
class Task:
    """One model in one mode on one engine: its timing samples, round by round."""

    spec: ModelSpec
    mode: str
    engine: str
    variant: Variant
    batch_size: int
    run: Callable[[], Any] | None = None
    rounds: list[list[float]] = field(default_factory=list)  # seconds per step (per call in latency mode)


# --------------------------------------------------------------------------- the models

def _load(entry: str, overrides: list[str]) -> dict:
    """A config file, or an architecture name (the defaults with model.arch set)."""
    if entry.endswith((".yaml", ".yml")) or os.path.sep in entry:
        return load_config(entry, overrides)
    from senet.resnet import known_arch

    known_arch(entry)  # an unknown name raises, listing the known ones
    return load_config(None, [f"model.arch={entry}"] + list(overrides))


def plan_models(configs: list[str], overrides: list[str], reductions: list[int],
                reference: bool = True) -> list[ModelSpec]:
    """The models of a run: each config, each se_ config at every r, and the paddle.vision references."""
    specs: list[ModelSpec] = []
    for entry in configs:
        cfg = _load(entry, overrides)
        arch = cfg["model"]["arch"]
        if not arch.startswith("se_"):
            specs.append(ModelSpec(cfg["name"], arch, cfg))
            continue
        own = cfg["model"]["se"]["reduction"]
        for r in sorted(set(reductions) | {own}):
            rcfg = copy.deepcopy(cfg)
            rcfg["model"]["se"]["reduction"] = r
            specs.append(ModelSpec(f"{cfg['name']} r={r}", arch, rcfg, reduction=r, sweep=r != own))
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"two models are named {dup[0]!r}; give each config its own `name` (-o name=...)")
    plains = {s.arch: s.name for s in reversed(specs) if s.reduction is None}  # the first plain of each arch
    out = [replace(s, plain=plains.get(s.arch[3:] if s.reduction else s.arch)) for s in specs]
    if reference:
        for arch, name in plains.items():
            if arch in VISION_ARCHS:
                plain = next(s for s in out if s.name == name)
                out.append(ModelSpec(f"paddle.vision {arch}", arch, plain.cfg, reference=True, plain=name))
    return out


def build(spec: ModelSpec, variant: Variant = FP32, seed: int = 0) -> paddle.nn.Layer:
    """The model of `spec` in `variant`'s layout, seeded so that every run starts from the same weights."""
    import paddle

    paddle.seed(seed)
    if spec.reference:
        factory = getattr(paddle.vision.models, spec.arch)
        return factory(pretrained=False, num_classes=spec.cfg["model"]["num_classes"])
    from senet.resnet import build_model

    cfg = copy.deepcopy(spec.cfg)
    cfg["train"]["data_format"] = variant.data_format
    return build_model(cfg)


def profile(spec: ModelSpec, image_size: int, model: paddle.nn.Layer | None = None) -> dict:
    """Trainable parameters and GMACs (multiply-adds for one image) at `image_size`, fp32 NCHW."""
    from senet.profile import profile_model

    p = profile_model(model if model is not None else build(spec), image_size)
    return {"params": p.params, "gmacs": round(p.gmacs, 4)}


# --------------------------------------------------------------------------- the device

@lru_cache(maxsize=1)
def on_gpu() -> bool:
    import paddle

    return paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0


def resolve_variants(opts: BenchOptions, gpu: bool, notices: list[str]) -> list[Variant]:
    """GPU: every AMP level x dtype x layout asked for. CPU: fp32 NCHW, with a one-line notice."""
    if not gpu:
        notices.append(f"no GPU: fp32, NCHW on the CPU with {os.environ.get('OMP_NUM_THREADS', '?')} threads "
                       f"(AMP O1/O2, float16/bfloat16 and NHWC are GPU settings)")
        return [FP32]
    import paddle

    dtypes = list(opts.dtypes)
    if "bfloat16" in dtypes and not paddle.amp.is_bfloat16_supported():
        notices.append("this GPU has no bfloat16 support: bfloat16 variants skipped")
        dtypes.remove("bfloat16")
    variants = []
    for fmt in opts.data_formats:
        for level in opts.amp:
            variants += [Variant("none", "float32", fmt)] if level == "none" else \
                [Variant(level, dt, fmt) for dt in dtypes]
    if FP32 not in variants and any(e in EXPORTED for e in opts.engines):
        notices.append("no fp32 NCHW dygraph run (--amp none --data-formats NCHW): the exported fp32 graphs "
                       "get no speed-up over dygraph, which is only compared at the same precision")
    return variants


def sync(out: Any = None) -> None:
    """Wait until the device has finished: synchronise a GPU; on a CPU read the result to numpy."""
    if isinstance(out, np.ndarray):  # the exported engines return host arrays: their work is done
        return
    if on_gpu():
        import paddle

        paddle.device.synchronize()
    elif out is not None and hasattr(out, "numpy"):
        out.numpy()


def _autocast(variant: Variant) -> Any:
    import paddle

    return paddle.amp.auto_cast(enable=variant.amp != "none", level=variant.amp if variant.amp != "none" else "O1",
                                dtype=variant.dtype if variant.amp != "none" else "float16")


def _batch(n: int, size: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC RGB images and int64 labels: what the loader yields."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
            rng.integers(0, num_classes, n).astype(np.int64))


def infer_runner(model: paddle.nn.Layer, spec: ModelSpec, variant: Variant, images: np.ndarray) -> Callable[[], Any]:
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


def train_runner(model: paddle.nn.Layer, spec: ModelSpec, variant: Variant, images: np.ndarray,
                 labels: np.ndarray) -> Callable[[], Any]:
    """One training step as senet.train takes it: forward, cross-entropy, backward, Momentum step."""
    import paddle
    import paddle.nn.functional as F

    from senet.data import normalize_batch
    from senet.train import build_optimizer

    model.train()
    optimizer, _ = build_optimizer(spec.cfg, model, steps_per_epoch=1000, world_size=1)
    scaler = None
    if variant.amp == "O2":  # fp16/bf16 weights in the model, fp32 master weights in the optimizer
        model, optimizer = paddle.amp.decorate(model, optimizer, level="O2", dtype=variant.dtype, master_weight=True)
    if variant.dtype == "float16":  # bfloat16 has fp32's range and needs no loss scaling
        scaler = paddle.amp.GradScaler(init_loss_scaling=spec.cfg["train"]["amp"]["init_loss_scaling"])
    x, y = paddle.to_tensor(images), paddle.to_tensor(labels)
    mean, std = spec.cfg["data"]["mean"], spec.cfg["data"]["std"]

    def run():
        with _autocast(variant):
            logits = model(normalize_batch(x, mean, std, variant.data_format))
        loss = F.cross_entropy(logits.astype("float32"), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        optimizer.clear_grad(set_to_zero=False)
        return loss

    return run


# --------------------------------------------------------------------------- timing

def time_round(run: Callable[[], Any], calls: int, per_call: bool) -> list[float]:
    """Seconds per call: each call timed alone (per_call, for latency) or `calls` calls timed together."""
    sync()  # nothing queued from before may be counted
    if per_call:
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            sync(run())
            times.append(time.perf_counter() - t0)
        return times
    t0 = time.perf_counter()
    out = None
    for _ in range(calls):
        out = run()
    sync(out)
    return [(time.perf_counter() - t0) / calls]


def run_alternating(tasks: list[Task], calls: int, per_call: bool, warmup_rounds: int, repeats: int,
                    log: Callable[[str], None] = lambda s: None, interleave_calls: bool = False) -> None:
    """Warm each task up, then time them in turns, `repeats` rounds each: A B C, then C B A, and so on.

    Odd rounds run in reverse order, as scripts/bench_se_block.py does: a model that always runs
    right after the same other one inherits its state (a warm or cold cache, a thread pool still
    spinning, memory to give back), and the alternation shares that out.

    With interleave_calls, per-call tasks also take turns call by call within a round: a batch-1
    call lasts a fraction of a second, and the machine's speed can change between one model's 10
    calls and the next model's. Only for dygraph: the exported engines each keep their own thread
    pool, which spins after a call, and switching every call set one model's pool against the
    other's (ONNX Runtime latency doubled).
    """
    for t in tasks:
        for _ in range(warmup_rounds):
            time_round(t.run, calls, per_call)
    for i in range(repeats):
        order = tasks if i % 2 == 0 else tasks[::-1]
        if per_call and interleave_calls:
            samples: dict[int, list[float]] = {id(t): [] for t in tasks}
            for _ in range(calls):
                for t in order:
                    samples[id(t)] += time_round(t.run, 1, True)
            for t in tasks:
                t.rounds.append(samples[id(t)])
        else:
            for t in order:
                t.rounds.append(time_round(t.run, calls, per_call))
        log(f"  round {i + 1}/{repeats}: " + ", ".join(
            f"{t.spec.name} {1e3 * statistics.median(t.rounds[-1]):.1f} ms" for t in tasks))


def task_record(task: Task, plain: Task | None, image_size: int, opts: BenchOptions, device: str,
                threads: int, calls: int) -> dict:
    """One results.json record. Times are per step (per call in latency mode)."""
    samples = [s for r in task.rounds for s in r]
    med, lo, hi = statistics.median(samples), min(samples), max(samples)
    b = task.batch_size
    ratios = None
    if plain is not None and len(plain.rounds) == len(task.rounds):
        ratios = [statistics.median(a) / statistics.median(p) for a, p in zip(task.rounds, plain.rounds)]
    s = task.spec
    return {
        "model": f"paddle.vision.{s.arch}" if s.reference else s.arch, "reduction": s.reduction, "name": s.name,
        "reference": s.reference, "sweep": s.sweep, "mode": task.mode, "engine": task.engine,
        "precision": task.variant.precision, "data_format": task.variant.data_format, "device": device,
        "threads": threads, "batch_size": b,
        "image_size": image_size, "images_per_s": b / med, "images_per_s_min": b / hi, "images_per_s_max": b / lo,
        "latency_ms": 1e3 * med, "latency_ms_min": 1e3 * lo, "latency_ms_max": 1e3 * hi,
        "overhead_vs_plain": statistics.median(ratios) if ratios else None,
        "overhead_min": min(ratios) if ratios else None, "overhead_max": max(ratios) if ratios else None,
        "plain_model": s.plain, "peak_memory_mb": None, "memory_kind": None, "params": None, "gmacs": None,
        "warmup_rounds": opts.warmup_rounds, "repeats": len(task.rounds), "calls_per_round": calls,
        "samples_s": samples,
    }


# --------------------------------------------------------------------------- the run

class Run:
    """The state of one `make bench` run: options, models, records, notices, output folder."""

    def __init__(self, opts: BenchOptions, log: Callable[[str], None]) -> None:
        self.opts, self.log = opts, log
        self.gpu = on_gpu()
        self.device = "gpu" if self.gpu else "cpu"
        self.threads = setup_cpu(opts.threads)  # Paddle's math libraries, the predictors and the memory probes
        self.notices: list[str] = []
        self.specs = plan_models(opts.configs, opts.overrides, opts.reductions, opts.reference)
        self.variants = resolve_variants(opts, self.gpu, self.notices)
        self.records: list[dict] = []
        self.profiles: dict[str, dict] = {}
        self.loader: dict | None = None
        self.exports: dict[str, str] = {}  # spec name -> exported model folder
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.dir = os.path.join(opts.out_root, stamp)
        n = 1
        while os.path.exists(self.dir):
            n += 1
            self.dir = os.path.join(opts.out_root, f"{stamp}-{n}")
        os.makedirs(self.dir)
        self.env = environment(self.threads, self.gpu)

    def notice(self, message: str) -> None:
        self.notices.append(message)
        self.log(f"notice: {message}")

    def wanted(self, spec: ModelSpec, mode: str, engine: str, variant: Variant) -> bool:
        """Is (model, mode, engine, variant) part of this run? See BenchOptions for the rules."""
        if mode not in self.opts.modes or engine not in self.opts.engines:
            return False
        if spec.reference and (engine != "dygraph" or variant.data_format != "NCHW"):
            return False  # paddle.vision's ResNet is NCHW only; it is a dygraph parity check
        if spec.sweep and (mode not in self.opts.sweep_modes or (engine != "dygraph" and not self.opts.sweep_engines)):
            return False
        return engine == "dygraph" or variant == FP32  # exported graphs are fp32 NCHW

    def batch_size(self, mode: str) -> int:
        return {"train": self.opts.train_batch, "infer": self.opts.infer_batch, "latency": 1}[mode]

    def calls(self, mode: str) -> int:
        return self.opts.latency_calls if mode == "latency" else self.opts.steps

    def timed(self, tasks: list[Task], mode: str) -> None:
        """Time a group of tasks of one mode, engine and variant in turns; add their records."""
        if not tasks:
            return
        t0 = tasks[0]
        self.log(f"[{mode} | {t0.engine} | {t0.variant.precision} {t0.variant.data_format} | batch {t0.batch_size}]")
        calls = self.calls(mode)
        run_alternating(tasks, calls, mode == "latency", self.opts.warmup_rounds, self.opts.repeats, self.log,
                        interleave_calls=t0.engine == "dygraph")
        by_name = {t.spec.name: t for t in tasks}
        for t in tasks:  # a plain model's baseline is itself (or the first plain model of its arch)
            self.records.append(task_record(t, by_name.get(t.spec.plain or ""), self.opts.image_size, self.opts,
                                            self.device, self.threads, calls))
            t.run = None  # drop the model before the next group
        self.save()

    def dygraph(self, variant: Variant) -> None:
        """Latency, inference, then training, each group built fresh and freed after."""
        o = self.opts
        for mode in MODES:
            specs = [s for s in self.specs if self.wanted(s, mode, "dygraph", variant)]
            if not specs:
                continue
            b = self.batch_size(mode)
            images, labels = _batch(b, o.image_size, specs[0].cfg["model"]["num_classes"], o.seed)
            tasks = []
            for s in specs:
                model = build(s, variant, o.seed)
                if s.name not in self.profiles and variant == FP32:
                    self.profiles[s.name] = profile(s, o.image_size, model)
                run = (train_runner(model, s, variant, images, labels) if mode == "train"
                       else infer_runner(model, s, variant, images))
                tasks.append(Task(s, mode, "dygraph", variant, b, run))
            self.timed(tasks, mode)
            del tasks
            _free()

    def export_models(self) -> list[ModelSpec]:
        """Export every model the exported engines need (fp32 NCHW static graph, and ONNX if wanted)."""
        from senet.export import export

        engines = [e for e in self.opts.engines if e in EXPORTED]
        if "onnxruntime" in engines and not _have("onnxruntime", "paddle2onnx"):
            self.notice("onnxruntime or paddle2onnx is not installed: the ONNX Runtime engine is skipped")
            engines.remove("onnxruntime")
        self.opts.engines = [e for e in self.opts.engines if e == "dygraph" or e in engines]
        specs = [s for s in self.specs if any(self.wanted(s, m, e, FP32) for m in MODES for e in engines)]
        formats = ["paddle"] + (["onnx"] if "onnxruntime" in engines else [])
        done = []
        for s in specs:
            folder = os.path.join(self.dir, "export", _slug(s.name))
            # The graph takes image_size; a 1-image synthetic val split names the classes. Only the keys
            # that matter are taken from the config, so the data source has nothing to ignore.
            cfg = copy.deepcopy(s.cfg)
            cfg["data"] = dict(DEFAULTS["data"], name="synthetic", synthetic_val_size=1, eval_crop=self.opts.image_size,
                               mean=cfg["data"]["mean"], std=cfg["data"]["std"])
            self.log(f"exporting {s.name} ({', '.join(formats)})")
            try:
                model = build(s, FP32, self.opts.seed)
                model.eval()
                export(cfg, folder, formats, model=model)
            except Exception as e:  # noqa: BLE001 - one model that cannot be exported must not end the run
                self.notice(f"{s.name} could not be exported ({str(e).splitlines()[0]}): exported engines skip it")
                continue
            self.exports[s.name] = folder
            done.append(s)
        return done

    def exported(self) -> None:
        """Latency and inference through Paddle Inference and ONNX Runtime, on the exported fp32 graphs."""
        from senet.inference import Predictor

        engines = [e for e in self.opts.engines if e in EXPORTED]
        if not engines or not any(m in self.opts.modes for m in ("latency", "infer")):
            return
        specs = self.export_models()
        for engine in [e for e in self.opts.engines if e in EXPORTED]:
            for mode in ("latency", "infer"):
                ss = [s for s in specs if self.wanted(s, mode, engine, FP32)]
                b = self.batch_size(mode)
                images, _ = _batch(b, self.opts.image_size, 2, self.opts.seed)
                tasks = []
                for s in ss:
                    try:  # one call first: e.g. a TensorRT profile may not take this batch size
                        p = Predictor(self.exports[s.name], EXPORTED[engine], threads=self.threads, device=self.device)
                        p.predict(images)
                    except Exception as e:  # noqa: BLE001 - skip this engine for this model, keep the run going
                        self.notice(f"{engine} could not load {s.name} ({str(e).splitlines()[0]}): skipped")
                        continue
                    tasks.append(Task(s, mode, engine, FP32, b, lambda p=p, x=images: p.predict(x)))
                self.timed(tasks, mode)
                del tasks
                _free()

    def probe_memory(self) -> None:
        """Fill peak_memory_mb from one fresh child process per model, engine and variant.

        The timings are done, so on a CPU the probes run `cores` at a time (each process's peak is
        its own); on a GPU one at a time, since they share the device's memory.
        """
        from concurrent.futures import ThreadPoolExecutor

        groups: dict[tuple, list[dict]] = {}
        for r in self.records:
            groups.setdefault((r["name"], r["engine"], r["precision"], r["data_format"]), []).append(r)
        specs = {s.name: s for s in self.specs}
        payloads = []
        for (name, engine, precision, fmt), recs in groups.items():
            variant = next(v for v in self.variants + [FP32] if v.precision == precision and v.data_format == fmt)
            modes = [m for m in MODES if any(r["mode"] == m for r in recs)]
            payloads.append({"spec": asdict(specs[name]), "variant": asdict(variant), "engine": engine,
                             "modes": modes, "batch": {m: self.batch_size(m) for m in modes},
                             "image_size": self.opts.image_size, "threads": self.threads,
                             "model_dir": self.exports.get(name), "seed": self.opts.seed, "device": self.device})
        self.log(f"memory: {len(payloads)} probe processes")
        with ThreadPoolExecutor(1 if self.gpu else cpu_count()) as pool:
            results = list(pool.map(run_probe, payloads))
        for recs, payload, peaks in zip(groups.values(), payloads, results):
            if "error" in peaks:
                self.notice(f"memory probe failed for {payload['spec']['name']} on {payload['engine']}: "
                            f"{peaks['error']}")
                continue
            for r in recs:
                r["peak_memory_mb"] = peaks["peak_mb"].get(r["mode"])
                r["memory_kind"] = peaks["kind"]

    def save(self) -> None:
        """results.json (rewritten after every group, so a stopped run keeps what it measured)."""
        for r in self.records:
            r.update(self.profiles.get(r["name"], {}))
        data = {"environment": self.env, "options": asdict(self.opts), "notices": self.notices,
                "summary": summary(self.records), "data_loader": self.loader, "results": self.records}
        _write(os.path.join(self.dir, "results.json"), json.dumps(data, indent=2, default=str))


def run_bench(opts: BenchOptions, log: Callable[[str], None] | None = None) -> str:
    """Run the benchmark; write results.json, results.csv, report.md and the plots; return the run folder."""
    start = time.perf_counter()
    out = log or (lambda s: print(s, file=sys.stderr, flush=True))

    def log(message: str) -> None:
        out(f"[{time.perf_counter() - start:6.1f} s] {message}")

    run = Run(copy.deepcopy(opts), log)
    log(f"bench: {len(run.specs)} models, writing {run.dir}")
    for message in run.notices:
        log(f"notice: {message}")
    if opts.loader_images > 0:
        log("data loader vs plain decoding")
        run.loader = bench_loader(run.specs[0].cfg, opts.loader_images, opts.train_batch, opts.image_size, run.dir)
    for variant in run.variants:
        run.dygraph(variant)
    run.exported()
    for s in run.specs:  # models measured only on exported engines were not profiled yet
        if s.name not in run.profiles and any(r["name"] == s.name for r in run.records):
            run.profiles[s.name] = profile(s, opts.image_size)
    if opts.memory:
        run.probe_memory()
    run.env["load_average_end"] = _loadavg()
    run.env["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    run.save()
    write_outputs(run.dir, run.env, run.records, run.notices, run.loader)
    if not opts.keep_export:
        shutil.rmtree(os.path.join(run.dir, "export"), ignore_errors=True)
    return run.dir


def _free() -> None:
    gc.collect()
    if on_gpu():
        import paddle

        paddle.device.cuda.empty_cache()


def _have(*modules: str) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in modules)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def _write(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- memory probes (child processes)

def run_probe(payload: dict, timeout: float = 1800) -> dict:
    """Run `probe_main` in a fresh Python process; return its {"kind", "peak_mb": {mode: MB}} or {"error"}."""
    code = (f"import sys; sys.path.insert(0, {ROOT!r}); from senet.runtime import setup_cpu; "
            f"setup_cpu({int(payload['threads'])}); from senet.bench import probe_main; probe_main()")
    try:
        proc = subprocess.run([sys.executable, "-c", code], input=json.dumps(payload), capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(PROBE_MARK):
            return json.loads(line[len(PROBE_MARK):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit code {proc.returncode}: {tail}"}


def peak_rss_mb() -> float:
    """This process's peak resident set size, MB.

    VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork and exec, so a child started from
    a big parent reports the parent's size (we saw 950 MB for every model).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource

    scale = 2**20 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def probe_main() -> None:
    """Child side of run_probe: run each mode once (after the cheaper ones) and report the peak memory.

    CPU: the process's peak resident set, which only grows, hence the order of MODES.
    GPU: paddle.device.cuda.max_memory_allocated, reset before each mode.
    """
    p = json.loads(sys.stdin.read())
    spec = ModelSpec(**p["spec"])
    variant = Variant(**p["variant"])
    size, engine = p["image_size"], p["engine"]
    gpu = engine != "onnxruntime" and on_gpu()
    peaks: dict[str, float] = {}
    model = None
    for mode in p["modes"]:
        b = p["batch"][mode]
        images, labels = _batch(b, size, spec.cfg["model"]["num_classes"], p["seed"])
        if gpu:
            import paddle

            paddle.device.cuda.reset_max_memory_allocated()
        if engine == "dygraph":
            model = build(spec, variant, p["seed"])
            run = (train_runner(model, spec, variant, images, labels) if mode == "train"
                   else infer_runner(model, spec, variant, images))
            steps = 2 if mode == "train" else 1  # Momentum's buffers appear in the first step
        else:
            from senet.inference import Predictor

            model = model or Predictor(p["model_dir"], EXPORTED[engine], threads=p["threads"], device=p["device"])
            run, steps = (lambda m=model, x=images: m.predict(x)), 1
        for _ in range(steps):
            out = run()
        sync(out)
        if gpu:
            import paddle

            peaks[mode] = paddle.device.cuda.max_memory_allocated() / 2**20
        else:
            peaks[mode] = peak_rss_mb()
        del run, out
        if engine == "dygraph":
            model = None
            gc.collect()
    kind = "device_allocated" if gpu else "rss"
    print(PROBE_MARK + json.dumps({"kind": kind, "peak_mb": peaks}), flush=True)


# --------------------------------------------------------------------------- the data loader

def bench_loader(cfg: dict, images: int, batch_size: int, image_size: int, work_dir: str, repeats: int = 3) -> dict:
    """Training-loader images/s against plain decode+crop (senet.data.check.bench) on generated JPEGs."""
    from senet.data.check import WARMUP_BATCHES, bench
    from senet.data.fake import make_fake_imagenet

    classes = 4
    files = (WARMUP_BATCHES + math.ceil(images / batch_size) + 1) * batch_size  # warm-up + timed + spare
    folder = os.path.join(work_dir, "loader_data")
    make_fake_imagenet(folder, classes=classes, train_per_class=math.ceil(files / classes), val_per_class=1,
                       size=(image_size, image_size), jpeg_only=True)
    cfg = copy.deepcopy(cfg)
    workers = max(1, min(cfg["data"]["num_workers"], cpu_count()))  # more workers than cores only adds contention
    cfg["data"].update(name="imagenet", root=folder, train_list=None, val_list=None, batch_size=batch_size,
                       num_workers=workers, image_size=image_size)
    cfg["model"]["num_classes"] = classes
    cfg["output_dir"] = folder  # the index cache goes here
    try:
        out = bench(cfg, images, repeats)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    out.update(image_size=image_size, files="generated RGB JPEGs", file_size=f"{image_size}x{image_size}")
    return out


# --------------------------------------------------------------------------- environment

def environment(threads: int, gpu: bool) -> dict:
    """Where the numbers come from: versions, device, CPU/GPU model, threads, load."""
    import paddle

    env: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": " ".join(sys.argv),
        "paddle_version": paddle.__version__, "paddle_commit": paddle.version.commit,
        "device": "gpu" if gpu else "cpu", "cpu_model": _cpu_model(), "cores": cpu_count(), "threads": threads,
        "onednn": bool(paddle.base.core.is_compiled_with_mkldnn()), "python": platform.python_version(),
        "platform": platform.platform(), "numpy": np.__version__, "load_average_start": _loadavg(),
        "git_commit": _git_commit(),
    }
    if gpu:
        env.update(gpu_model=paddle.device.cuda.get_device_name(), gpu_count=paddle.device.cuda.device_count(),
                   cuda=paddle.version.cuda(), cudnn=paddle.version.cudnn())
    for module in ("onnxruntime", "paddle2onnx"):
        try:
            env[module] = __import__(module).__version__ if _have(module) else None
        except Exception:  # a broken install: say so rather than fail the run
            env[module] = "unusable"
    try:
        import psutil

        env["memory_total_mb"] = round(psutil.virtual_memory().total / 2**20)
    except ImportError:
        env["memory_total_mb"] = None
    return env


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _git_commit() -> str | None:
    """The commit of this checkout, with "+changes" when the working tree differs from it."""
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (head + ("+changes" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


# --------------------------------------------------------------------------- summary, report, plots

def _find(records: list[dict], **match: Any) -> list[dict]:
    return [r for r in records if all(r.get(k) == v for k, v in match.items())]


def _label(r: dict) -> str:
    variant = "" if (r["precision"], r["data_format"]) == ("fp32", "NCHW") else f" {r['precision']} {r['data_format']}"
    return f"{r['name']}, {r['engine']}{variant}"


def summary(records: list[dict]) -> dict:
    """The headline figures of a run, each keyed by "model, engine [variant]".

    SE/plain time ratios per mode (each se_ config at its own r, not the sweep), our plain model
    against paddle.vision (time(vision) / time(ours), i.e. our images/s over theirs), speed-ups of
    the exported engines over dygraph, and the SE models' extra multiply-adds.

    A speed-up compares two records of the same model, mode, precision and layout only, and its
    key names both sides: the exported graphs are fp32 NCHW, so on a GPU they are set against the
    fp32 dygraph run (`--amp none`), never against AMP dygraph.
    """
    out: dict[str, dict] = {"train_ratio": {}, "infer_ratio": {}, "latency_ratio": {}, "parity": {},
                            "engine_speedup": {}, "gmacs_increase": {}}
    for r in records:
        if r["reduction"] is not None and not r["sweep"] and r["overhead_vs_plain"] is not None:
            out[f"{r['mode']}_ratio"][_label(r)] = r["overhead_vs_plain"]
            plain = _find(records, name=r["plain_model"])
            if r["gmacs"] and plain and plain[0]["gmacs"]:
                out["gmacs_increase"][r["name"]] = r["gmacs"] / plain[0]["gmacs"] - 1
        if r["reference"] and r["overhead_vs_plain"] is not None:
            out["parity"][f"{r['mode']}, {r['plain_model']} / {_label(r)}"] = r["overhead_vs_plain"]
        if r["engine"] != "dygraph" and r["mode"] in ("latency", "infer") and not r["sweep"]:
            base = _find(records, name=r["name"], mode=r["mode"], engine="dygraph", precision=r["precision"],
                         data_format=r["data_format"])
            if base:
                side = f"{r['precision']} {r['data_format']}"
                key = f"{r['mode']}, {r['name']}, {r['engine']} {side} over dygraph {side}"
                out["engine_speedup"][key] = base[0]["latency_ms"] / r["latency_ms"]
    return out


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def report_markdown(env: dict, records: list[dict], notices: list[str], loader: dict | None) -> str:
    """report.md: environment, headline figures beside the paper's and the targets, the full table, the plots."""
    s = summary(records)
    lines = [f"# SE cost benchmark, {env.get('started', '')}", "",
             f"`{env.get('command', '')}`", "",
             f"- Paddle {env['paddle_version']} ({env['paddle_commit'][:10]}), oneDNN {env['onednn']}, "
             f"device {env['device']}" + (f" ({env.get('gpu_model')})" if env.get("gpu_model") else ""),
             f"- CPU: {env['cpu_model']}, {env['cores']} cores, {env['threads']} threads; "
             f"load average {env.get('load_average_start')} at the start, {env.get('load_average_end')} at the end",
             f"- ONNX Runtime {env.get('onnxruntime')}, paddle2onnx {env.get('paddle2onnx')}, "
             f"Python {env['python']}, git {env.get('git_commit')}"]
    load = env.get("load_average_start") or [0]
    if load and load[0] > 0.5 * env["cores"]:
        lines.append(f"- **The machine was busy** (load {load[0]} on {env['cores']} cores): absolute figures are "
                     f"low and noisy; the ratios pair rounds of the same run, so they suffer less.")
    lines += [f"- notice: {n}" for n in notices]
    train_paper = PAPER["train_ms_per_256"][1] / PAPER["train_ms_per_256"][0]
    cpu_paper = PAPER["cpu_ms_per_image"][1] / PAPER["cpu_ms_per_image"][0]
    rows = [(f"train step time, {k}", f"x{v:.3f}", f"<= {TARGETS['train_ratio']}",
             f"x{train_paper:.2f} (190 -> 209 ms per 256 images, GPUs)") for k, v in s["train_ratio"].items()]
    rows += [(f"batch-1 latency, {k}", f"x{v:.3f}", f"<= {TARGETS['latency_ratio']}",
              f"x{cpu_paper:.2f} (164 -> 167 ms per image, CPU)") for k, v in s["latency_ratio"].items()]
    rows += [(f"inference time per batch, {k}", f"x{v:.3f}", "-", "-") for k, v in s["infer_ratio"].items()]
    rows += [(f"images/s, {k}", f"x{v:.3f}", f">= {TARGETS['parity']}", "-") for k, v in s["parity"].items()]
    rows += [(f"multiply-adds, {k}", f"+{100 * v:.2f}%", "-", "+0.26% (3.86 -> 3.87 GMACs)")
             for k, v in s["gmacs_increase"].items()]
    rows += [(f"speed-up, {k}", f"x{v:.2f}", "-", "-") for k, v in s["engine_speedup"].items()]
    lines += ["", "## Headline", "",
              "Time ratios of each SE model (at its config's r) against its plain model, from the same run, mode "
              "and engine: the median of the per-round ratios. Parity: our plain model's images/s over "
              "paddle.vision's.", "", "| measure | ours | target (issue 5) | paper (Hu et al., Sec. 4) |",
              "|---|---|---|---|"] + [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    for r in [r for r in records if r["reference"] and r["gmacs"] and r["mode"] == "train"][:1]:
        ours = _find(records, name=r["plain_model"])
        if ours and ours[0]["gmacs"] and abs(r["gmacs"] / ours[0]["gmacs"] - 1) > 0.01:
            lines += ["", f"{r['model']} does {r['gmacs']:.2f} GMACs per image against our "
                      f"{ours[0]['gmacs']:.2f} (it puts the stride-2 on the 3x3 conv; see `model.stride_in_1x1`): "
                      f"per multiply-add, parity is the ratio above x {r['gmacs'] / ours[0]['gmacs']:.3f}."]
    dyg = [r for r in records if r["mode"] == "latency" and r["engine"] == "dygraph" and r["reduction"] is None
           and not r["reference"]]
    if dyg:
        lines += ["", f"For scale: the paper's CPU took {PAPER['cpu_ms_per_image'][0]:.0f} ms per image for "
                  f"ResNet-50; here {dyg[0]['name']} takes {dyg[0]['latency_ms']:.0f} ms in dygraph."]
    lines += ["", "## All measurements", "",
              "Medians over the timed samples, min-max in brackets; train and infer are per step of `batch` "
              "images, latency per image. Overhead: time ratio against the plain model (median of the "
              "per-round ratios, min-max in brackets). Peak memory: "
              + ("device memory allocated" if env["device"] == "gpu" else
                 "resident set of a fresh process that ran the model in this mode (and the cheaper modes before)")
              + ".", "",
              "| model | r | mode | engine | precision | batch | px | images/s | ms | overhead | peak MB | params | "
              "GMACs |", "|" + "---|" * 13]
    for r in sorted(records, key=lambda r: (MODES.index(r["mode"]), ENGINES.index(r["engine"]), r["precision"],
                                            r["data_format"], r["reference"], r["model"], r["reduction"] or 0)):
        ovh = "-" if r["overhead_vs_plain"] is None else \
            f"x{r['overhead_vs_plain']:.3f} ({r['overhead_min']:.3f}-{r['overhead_max']:.3f})"
        lines.append(
            f"| {r['model']} | {_fmt(r['reduction'])} | {r['mode']} | {r['engine']} | {r['precision']} "
            f"{r['data_format']} | {r['batch_size']} | {r['image_size']} | {r['images_per_s']:.2f} "
            f"({r['images_per_s_min']:.2f}-{r['images_per_s_max']:.2f}) | {r['latency_ms']:.1f} "
            f"({r['latency_ms_min']:.1f}-{r['latency_ms_max']:.1f}) | {ovh} | {_fmt(r['peak_memory_mb'], 0)} | "
            f"{_fmt(r['params'])} | {_fmt(r['gmacs'], 3)} |")
    if loader:
        ratio = f"{100 * loader['ratio']:.0f}% of it" if loader.get("ratio") else "no plain figure"
        lines += ["", "## Data loader", "",
                  f"Training loader on {loader['images']} generated {loader['file_size']} JPEGs per repeat, batch "
                  f"{loader['batch_size']}, {loader['workers']} workers: {loader['loader_images_per_s']:.0f} ± "
                  f"{loader['loader_std']:.0f} images/s (mean ± std over {loader['repeats']} repeats) against "
                  f"{_fmt(loader.get('plain_images_per_s'), 0)} images/s for plain decode+crop ({ratio})."]
        train = [r for r in records if r["mode"] == "train"]
        if train:
            fastest = max(train, key=lambda r: r["images_per_s"])
            lines.append(f"The fastest training step here consumes {fastest['images_per_s']:.1f} images/s "
                         f"({fastest['name']}).")
    lines += ["", "## Plots", "", "![throughput against parameters](throughput_vs_params.png)", "",
              "![SE overhead against r](se_overhead_vs_r.png)", ""]
    return "\n".join(lines)


def results_csv(records: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, extrasaction="ignore")
    writer.writeheader()
    for r in records:
        writer.writerow({k: "" if r.get(k) is None else r.get(k) for k in FIELDS})
    return buf.getvalue()


def plot(records: list[dict], folder: str) -> list[str]:
    """throughput_vs_params.png and se_overhead_vs_r.png (matplotlib, Agg); returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig, name: str) -> str:
        path = os.path.join(folder, name)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    paths = []
    modes = [m for m in MODES if any(r["mode"] == m and r["params"] for r in records)]
    if modes:
        fig, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 4.5), squeeze=False)
        for ax, mode in zip(axes[0], modes):
            rs = [r for r in records if r["mode"] == mode and r["params"]]
            for series in sorted({_series(r) for r in rs}):
                pts = sorted((r for r in rs if _series(r) == series), key=lambda r: r["params"])
                ax.plot([r["params"] / 1e6 for r in pts], [r["images_per_s"] for r in pts], "o", label=series)
                for r in pts:
                    ax.annotate(_short(r), (r["params"] / 1e6, r["images_per_s"]), fontsize=7,
                                textcoords="offset points", xytext=(3, 3))
            batch = rs[0]["batch_size"]
            ax.set(title=f"{mode} (batch {batch})", xlabel="parameters (millions)", ylabel="images/s (median)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        paths.append(save(fig, "throughput_vs_params.png"))
    se = [r for r in records if r["reduction"] is not None and r["overhead_vs_plain"] is not None]
    if se:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for series in sorted({(r["mode"], _series(r)) for r in se}):
            pts = sorted((r for r in se if (r["mode"], _series(r)) == series), key=lambda r: r["reduction"])
            y = [r["overhead_vs_plain"] for r in pts]
            spread = [[v - r["overhead_min"] for v, r in zip(y, pts)], [r["overhead_max"] - v for v, r in zip(y, pts)]]
            ax.errorbar([r["reduction"] for r in pts], y, yerr=spread, fmt="o-", capsize=3,
                        label=f"{series[0]}, {series[1]}")
        ax.axhline(1.0, color="black", lw=0.8)
        ax.axhline(PAPER["train_ms_per_256"][1] / PAPER["train_ms_per_256"][0], color="gray", ls="--", lw=0.8,
                   label="paper: GPU training x1.10")
        ax.axhline(PAPER["cpu_ms_per_image"][1] / PAPER["cpu_ms_per_image"][0], color="gray", ls=":", lw=0.8,
                   label="paper: CPU inference x1.02")
        ax.set_xscale("log", base=2)
        rs = sorted({r["reduction"] for r in se})
        ax.set_xticks(rs, [str(r) for r in rs])
        ax.set_title("SE cost against r (bars: min-max of the paired rounds)", fontsize=10)
        ax.set(xlabel="reduction ratio r", ylabel="time / time of the plain model")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        paths.append(save(fig, "se_overhead_vs_r.png"))
    return paths


def _series(r: dict) -> str:
    return r["engine"] + ("" if r["precision"] == "fp32" else f" {r['precision']}") + \
        ("" if r["data_format"] == "NCHW" else f" {r['data_format']}")


def _short(r: dict) -> str:
    return "vision" if r["reference"] else (f"r={r['reduction']}" if r["reduction"] else "plain")


def write_outputs(folder: str, env: dict, records: list[dict], notices: list[str], loader: dict | None) -> None:
    """results.csv, report.md and the plots (results.json is written by the run as it goes)."""
    _write(os.path.join(folder, "results.csv"), results_csv(records))
    plot(records, folder)
    _write(os.path.join(folder, "report.md"), report_markdown(env, records, notices, loader))


def format_summary(run_dir: str) -> str:
    """A few lines for the terminal: the headline figures of a finished run."""
    with open(os.path.join(run_dir, "results.json")) as f:
        s = json.load(f)["summary"]
    titles = {"train_ratio": "train step time ratio", "latency_ratio": "batch-1 latency ratio",
              "infer_ratio": "inference time ratio", "parity": "ours / paddle.vision images/s",
              "engine_speedup": "speed-up"}
    lines = [f"{title}, {label}: x{v:.3f}" for group, title in titles.items() for label, v in s[group].items()]
    lines += [f"multiply-adds, {k}: +{100 * v:.2f}% (paper: +0.26%)" for k, v in s["gmacs_increase"].items()]
    return "\n".join(lines)
