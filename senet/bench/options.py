"""The options of a run, the engines and the two presets (the default CPU run, --full), and the variants
(precision and layout) that the options and the machine give.

tools/bench.py builds its command line from these (and from the mode registry, senet.bench.modes).
Imports: modes and plan, never the run (the bench's modules import one way: timing, plan, modes,
options, then memory, report and run; tests/test_bench.py checks that there is no circle).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from senet import isa
from senet.bench.modes import Mode, mode_names
from senet.bench.plan import FP32, Variant
from senet.inference import ENGINE_PRECISIONS, TRT_MAX_BATCH, resolve_precision

ENGINES = ("dygraph", "paddle_inference", "onnxruntime", "openvino")
EXPORTED = {"paddle_inference": "paddle", "onnxruntime": "onnxruntime", "openvino": "openvino"}  # -> senet.inference
PRECISIONS = ("fp32", "bf16", "int8")  # exported engines' (senet.inference.ENGINE_PRECISIONS: which runs what)
PRECISION_CHOICES = PRECISIONS + ("auto",)  # auto: each engine's fastest native precision (resolve_precision)
REDUCTIONS = (2, 4, 8, 16, 32)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# ResNet-50 against SE-ResNet-50 (with the r sweep), ECA-ResNet-50 and CBAM-ResNet-50, each at its config.
DEFAULT_CONFIGS = tuple(
    os.path.join(ROOT, "configs", f)
    for f in ("resnet50.yaml", "se_resnet50.yaml", "eca_resnet50.yaml", "cbam_resnet50.yaml")
)
DEFAULT_SWEEP_MODES = ("latency",)  # the r sweep in batch-1 latency only: the other modes get the configs' r only
PAPER_GLOBAL_BATCH = 256  # images per training pass in Hu et al.'s timing (Sec. 4)
PAPER_GPUS = 8  # the GPUs they split it over: 32 images each


@dataclass
class BenchOptions:
    """Everything a run measures. `default_options` gives the two presets (CPU default, --full)."""

    configs: list[str] = field(default_factory=lambda: list(DEFAULT_CONFIGS))  # YAML paths or arch names
    overrides: list[str] = field(default_factory=list)  # -o key=value, applied to every config
    reductions: list[int] = field(default_factory=lambda: list(REDUCTIONS))  # r values for each se_ config
    sweep_modes: list[str] = field(default_factory=lambda: list(DEFAULT_SWEEP_MODES))  # dygraph modes with every r
    sweep_engines: bool = False  # exported engines get every r too (else: each config's own r only)
    reference: bool = True  # also paddle.vision.models.<plain arch>, dygraph only
    modes: list[str] = field(default_factory=lambda: list(mode_names()))  # every registered mode
    engines: list[str] = field(default_factory=lambda: list(ENGINES))
    precisions: list[str] = field(default_factory=lambda: list(PRECISIONS))  # exported engines; bf16 where native
    calibration_images: int = 16  # int8 calibration images (synthetic, random weights: ranges only, not accuracy)
    emulate_bf16: bool = False  # also bf16 on a CPU without bf16 instructions, emulated (for the record: slower)
    train_batch: int = 4  # images per training step (a ResNet-50 step at batch 8 took 9 s on a 2-core CPU)
    infer_batch: int = 4  # images per inference call (latency mode is always 1)
    image_size: int = 224  # pixels, square
    warmup_rounds: int = 1  # untimed rounds per model before the timed ones
    repeats: int = 4  # timed rounds per model; even, so each order (A B C, C B A) runs as often
    steps: int = 1  # training steps or inference calls per round, timed together
    latency_calls: int = 5  # batch-1 calls per round, each timed on its own
    amp: list[str] = field(default_factory=lambda: ["O1", "O2"])  # GPU only; "none" is fp32
    dtypes: list[str] = field(default_factory=lambda: ["float16", "bfloat16"])  # GPU only
    data_formats: list[str] = field(default_factory=lambda: ["NCHW", "NHWC"])  # GPU only
    memory: bool = True  # peak memory probes (one child process per model, engine and variant)
    loader_images: int = 256  # images timed per loader repeat; 0 skips the loader benchmark
    loader_batch: int = 32  # images per loader batch (data.batch_size's default), whatever the model's batch
    threads: int = 0  # CPU threads for every engine, 0 = all cores (senet.runtime.setup_cpu); probes: / probes at once
    out_root: str = "output/bench"
    keep_export: bool = False  # keep the exported models under <run>/export
    full: bool = False
    seed: int = 0

    def batch_size(self, mode: Mode) -> int:
        return getattr(self, mode.batch) if mode.batch else 1

    def calls_per_round(self, mode: Mode) -> int:
        return getattr(self, mode.calls)


def default_options(full: bool = False) -> BenchOptions:
    """The default run fits 10 minutes on 2 idle CPU cores; --full is the paper's sizes, for one GPU."""
    if not full:
        return BenchOptions()
    # Hu et al. (Sec. 4) time a training pass of 256 images at 224 px, split over 8 GPUs (32 each). Here
    # all 256 run on one GPU: the paper's global batch, labelled so in the report (plan.full_batch_notice).
    # Inference: TRT_MAX_BATCH images per call, the largest batch a TensorRT profile of ours takes (the
    # paper times no batched inference).
    return BenchOptions(
        train_batch=PAPER_GLOBAL_BATCH,
        infer_batch=TRT_MAX_BATCH,
        warmup_rounds=1,
        repeats=10,
        steps=10,
        latency_calls=50,
        sweep_modes=list(mode_names()),
        sweep_engines=True,
        full=True,
    )


def full_batch_notice(opts: BenchOptions, gpu: bool) -> str | None:
    """What the training batch is, when it is the paper's: Hu et al.'s 256 images were split over 8 GPUs."""
    if opts.train_batch != PAPER_GLOBAL_BATCH:
        return None
    where = "one GPU" if gpu else "this CPU"
    return (
        f"train batch {PAPER_GLOBAL_BATCH} on {where}: the paper's global batch, which Hu et al. (Sec. 4) split "
        f"over {PAPER_GPUS} GPUs ({PAPER_GLOBAL_BATCH // PAPER_GPUS} each); the SE/plain time ratio compares with "
        f"theirs, the milliseconds do not"
    )


def resolve_variants(opts: BenchOptions, gpu: bool, notices: list[str]) -> list[Variant]:
    """GPU: every AMP level x dtype x layout asked for. CPU: fp32 NCHW, with a one-line notice. Also the
    notice that labels a training batch of the paper's size (full_batch_notice)."""
    batch = full_batch_notice(opts, gpu)
    if batch:
        notices.append(batch)
    if not gpu:
        notices.append(
            f"no GPU: dygraph in fp32, NCHW on the CPU with {os.environ.get('OMP_NUM_THREADS', '?')} "
            f"threads (AMP O1/O2, float16/bfloat16 and NHWC are GPU settings)"
        )
        return [FP32]
    import paddle

    dtypes = list(opts.dtypes)
    if "bfloat16" in dtypes and not paddle.amp.is_bfloat16_supported():
        notices.append("this GPU has no bfloat16 support: bfloat16 variants skipped")
        dtypes.remove("bfloat16")
    variants = []
    for fmt in opts.data_formats:
        for level in opts.amp:
            variants += (
                [Variant("none", "float32", fmt)] if level == "none" else [Variant(level, dt, fmt) for dt in dtypes]
            )
    if FP32 not in variants and any(e in EXPORTED for e in opts.engines):
        notices.append(
            "no fp32 NCHW dygraph run (--amp none --data-formats NCHW): the exported fp32 graphs "
            "get no speed-up over dygraph, which is only compared at the same precision"
        )
    return variants


def exported_variants(opts: BenchOptions, engine: str, notices: list[str]) -> list[Variant]:
    """The precisions `engine` runs of those asked for, as variants (fp32 NCHW, or bf16 / int8 of the exported
    model). "auto" is the engine's fastest precision that this CPU runs natively (senet.inference.resolve_precision,
    as for tools/infer.py), with one notice naming it. bf16 on a CPU without bf16 instructions is left out with one
    notice (oneDNN and OpenVINO would emulate it, slower than fp32: docs/export.md)."""
    asked = []
    for p in opts.precisions:
        if p == "auto":  # the bench exports every file an engine needs, int8 included
            p, said = resolve_precision("auto", EXPORTED[engine], {"paddle": {}, "onnx": {}, "int8": {}})
            message = f"{engine}: {said}"
            if message not in notices:
                notices.append(message)
        if p not in asked:
            asked.append(p)
    out = []
    for p in asked:
        if p not in ENGINE_PRECISIONS[EXPORTED[engine]]:
            continue
        missing = isa.missing_for(p) if p == "bf16" else None
        if missing:
            message = (
                f"this CPU has no {missing}: bf16 is emulated (--emulate-bf16), which is slower than fp32"
                if opts.emulate_bf16
                else f"this CPU has no {missing}: bf16 is not measured (it would be emulated, slower than fp32)"
            )
            if message not in notices:
                notices.append(message)
            if not opts.emulate_bf16:
                continue
        out.append(FP32 if p == "fp32" else Variant(inference=p))
    return out
