"""Which checks run on a machine, at which sizes, decided from its description alone (senet.doctor.machine).

Every machine gets the same list of checks in the same order, so doctor.json files compare line by
line; a check this machine cannot run is planned as SKIP with the reason. The decision reads only the
description dict, so tests give it stand-ins (no GPU, one GPU of compute capability 7.0 or 8.0, two
GPUs, with and without TensorRT or DALI) without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BF16_CAPABILITY = (8, 0)  # bf16 tensor-core math: Ampere (compute capability 8.0) and newer


@dataclass(frozen=True)
class Sizes:
    """What the checks train: the repository config they start from, its network, the per-device batch, the
    image side (pixels) and the training steps of each training-step check."""

    config: str  # relative to the repository
    arch: str
    batch: int
    image_size: int
    steps: int

    def __str__(self) -> str:
        return (
            f"{self.arch} from {self.config}, batch {self.batch}, {self.image_size}x{self.image_size} px, "
            f"{self.steps} steps per training check"
        )


# On a GPU, the sizes a user trains at: the paper's per-GPU batch of 32 at 224 px.
GPU_SIZES = Sizes("configs/se_resnet50.yaml", "se_resnet50", batch=32, image_size=224, steps=8)
# On a CPU the same network at 64 px, where a training step at batch 8 costs about a third of one at
# 224 px (measured on 2 cores shared with another job: 2.1 s against 6.5 to 8.4 s), so that the whole
# run takes about a minute; most of it goes to writing, hashing and exporting se_resnet50's 28 million
# weights (a checkpoint with momentum and EMA is 340 MB), which no size changes.
CPU_SIZES = Sizes("configs/se_resnet50.yaml", "se_resnet50", batch=8, image_size=64, steps=5)
# --quick: every check on the demo's se_resnet20 (0.28 million weights), for the tests; not what users run.
QUICK_SIZES = Sizes("configs/demo/se_resnet20_digits.yaml", "se_resnet20", batch=8, image_size=32, steps=3)


@dataclass(frozen=True)
class Planned:
    """One line of the report before it runs: the check's name, what it does here, and why not, if it cannot."""

    name: str
    title: str
    skip: str | None = None  # None: it runs


def paddle_ok(machine: dict[str, Any]) -> bool:
    return "error" not in machine["paddle"]


def on_gpu(machine: dict[str, Any]) -> bool:
    """Whether Paddle is a CUDA build that sees a GPU: the trainer then runs on GPU 0."""
    gpus = machine["gpus"]
    return paddle_ok(machine) and machine["paddle"]["cuda_build"] and bool(gpus) and "error" not in gpus[0]


def capability(gpu: dict[str, Any]) -> tuple[int, int]:
    major, minor = gpu["capability"].split(".")
    return int(major), int(minor)


def bf16_ok(machine: dict[str, Any]) -> bool:
    """bf16 AMP where GPU 0 (the one the single-process checks use) has compute capability 8.0 or more."""
    return on_gpu(machine) and capability(machine["gpus"][0]) >= BF16_CAPABILITY


def o2_dtype(machine: dict[str, Any]) -> str:
    """The O2 path's dtype: bf16 where the GPU has it (no loss scaling), else fp16 (with a loss scaler)."""
    return "bfloat16" if bf16_ok(machine) else "float16"


def sizes(machine: dict[str, Any], quick: bool = False) -> Sizes:
    return QUICK_SIZES if quick else GPU_SIZES if on_gpu(machine) else CPU_SIZES


def precision(machine: dict[str, Any]) -> str:
    """How the pipeline checks (fit, resume, eval, export) train here: AMP O2 + EMA on a GPU, fp32 + EMA on a CPU."""
    if on_gpu(machine):
        return f"AMP O2 {'bf16' if o2_dtype(machine) == 'bfloat16' else 'fp16'} + EMA"
    return "fp32 + EMA"


def plan(machine: dict[str, Any]) -> list[Planned]:
    """The checks, in order, each with its title on this machine and, where it cannot run here, why."""
    gpu, n_gpus = on_gpu(machine), len(machine["gpus"]) if on_gpu(machine) else 0
    where = "GPU 0" if gpu else "CPU"
    no_gpu = "no GPU seen by Paddle"
    no_amp = f"{no_gpu}: paddle.amp does nothing on a CPU (the trainer trains AMP configs in fp32 here)"
    g0 = machine["gpus"][0] if gpu else {}
    pipeline = precision(machine)
    trt = paddle_ok(machine) and machine["paddle"]["tensorrt_usable"]
    dali = machine["packages"].get("DALI")
    providers = machine["packages"].get("ONNX Runtime providers") or []
    ort_device = "CUDA provider" if gpu and "CUDAExecutionProvider" in providers else "CPU provider"
    checks = [
        Planned("paddle_device", "Paddle's build matches the machine (CUDA build where nvidia-smi lists a GPU)"),
        Planned("train_fp32", f"training steps on one fixed batch, fp32 NCHW, {where}: loss finite and falling"),
        Planned(
            "train_amp_o1_fp16",
            "training steps, AMP O1 fp16 with dynamic loss scaling: loss finite and falling",
            None if gpu else no_amp,
        ),
        Planned(
            "train_amp_o2_bf16",
            "training steps, AMP O2 bf16 (bf16 weights, fp32 master weights): loss finite and falling",
            None
            if bf16_ok(machine)
            else no_amp
            if not gpu
            else f"GPU 0 ({g0['name']}) has compute capability {g0['capability']}; bf16 needs 8.0 or newer "
            f"(the O2 checks below use fp16)",
        ),
        Planned(
            "train_nhwc",
            "training steps, NHWC with AMP O1 fp16 (tensor-core layout): loss finite and falling",
            None if gpu else f"{no_gpu}: the trainer trains NHWC configs in NCHW on a CPU",
        ),
        Planned(
            "eval_nchw_nhwc", f"eval logits of the same weights in NCHW and NHWC agree within float32 noise, {where}"
        ),
        Planned(
            "checkpoint_resume",
            f"{pipeline}: a checkpoint saved and loaded on the {where} holds the same "
            "weights, EMA and optimizer state, and the next step matches the uninterrupted one",
        ),
        Planned(
            "fit",
            f"{pipeline}: the trainer's fit, one epoch: end-of-epoch eval of the model and its EMA, "
            "checkpoints and model.safetensors saved in float32",
        ),
        Planned("fit_resume", f"{pipeline}: fit --resume auto continues into a second epoch"),
        Planned(
            "eval_weights",
            "the trained weights (model.safetensors) and the checkpoint's EMA weights load and "
            "evaluate as tools/eval.py does",
        ),
        Planned(
            "export_paddle_inference",
            f"the trained weights exported; Paddle Inference on the {where} "
            f"{'(CUDA)' if gpu else '(oneDNN)'} matches dygraph within float32 noise",
        ),
        Planned(
            "export_tensorrt",
            "the exported model under Paddle Inference with TensorRT matches dygraph",
            None
            if gpu and trt
            else no_gpu
            if not gpu
            else "this Paddle build has no usable TensorRT (Paddle Inference reports TensorRT version 0)",
        ),
        Planned("export_onnxruntime", f"the exported ONNX model under ONNX Runtime ({ort_device}) matches dygraph"),
        Planned(
            "dali_pipeline",
            f"the DALI loader (data.loader=dali) on a small image folder, "
            f"{'GPU decoder' if gpu else 'CPU pipeline'}: shapes, labels, every image once",
            None if dali else "DALI is not installed (make install DALI=1 installs it)",
        ),
        Planned(
            "launch_two_processes",
            "a two-process paddle.distributed.launch of tools/train.py "
            + (f"on GPUs 0 and 1 ({pipeline}, NCCL)" if gpu else "on the CPU (gloo), the demo's se_resnet20")
            + ": ranks keep identical weights",
            None if not gpu or n_gpus >= 2 else "one GPU: a two-process launch needs two",
        ),
    ]
    if not paddle_ok(machine):  # nothing runs without Paddle: say so on every line but the first
        why = "Paddle does not import (see paddle_device)"
        checks = [checks[0]] + [Planned(c.name, c.title, why) for c in checks[1:]]
    return checks
