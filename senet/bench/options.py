"""The options of a run, the engines and the two presets (the default CPU run, --full).

tools/bench.py builds its command line from these (and from the mode registry, senet.bench.modes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from senet.bench.modes import mode_names

ENGINES = ("dygraph", "paddle_inference", "onnxruntime")
EXPORTED = {"paddle_inference": "paddle", "onnxruntime": "onnxruntime"}  # engine -> senet.inference name
REDUCTIONS = (2, 4, 8, 16, 32)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# ResNet-50 against SE-ResNet-50 (with the r sweep), ECA-ResNet-50 and CBAM-ResNet-50, each at its config.
DEFAULT_CONFIGS = tuple(os.path.join(ROOT, "configs", f) for f in
                        ("resnet50.yaml", "se_resnet50.yaml", "eca_resnet50.yaml", "cbam_resnet50.yaml"))
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


def default_options(full: bool = False) -> BenchOptions:
    """The default run fits 10 minutes on 2 idle CPU cores; --full is the paper's sizes, for one GPU."""
    if not full:
        return BenchOptions()
    # Hu et al. (Sec. 4) time a training pass of 256 images at 224 px, split over 8 GPUs (32 each). Here
    # all 256 run on one GPU: the paper's global batch, labelled so in the report (plan.full_batch_notice).
    # Inference: TRT_MAX_BATCH images per call, the largest batch a TensorRT profile of ours takes (the
    # paper times no batched inference).
    from senet.inference import TRT_MAX_BATCH

    return BenchOptions(train_batch=PAPER_GLOBAL_BATCH, infer_batch=TRT_MAX_BATCH, warmup_rounds=1, repeats=10,
                        steps=10, latency_calls=50, sweep_modes=list(mode_names()), sweep_engines=True, full=True)

