"""What the device can do with a config: AMP and the tensor layout resolved against it.

Kept apart from senet.train so that the trainer, senet.analysis and tools/eval.py all resolve
settings the same way without importing each other. Every setting a device cannot honour falls back
with a one-line notice, and the resolved state (not the config's wish) is what the run logs and
records: Paddle itself would silently run a bf16 request on an older GPU in fp32.

No machine of this project has a GPU: the GPU branches here are checked with stand-ins for the device
(tests/test_gpu_paths.py) and on a GPU by `make doctor` (docs/gpu.md).
"""

from __future__ import annotations

import os

import paddle

# cuDNN settings of the reference recipes (NVIDIA's PaddlePaddle ResNet-50 example, PaddleClas's AMP
# engine). Both are read by each conv / batch-norm kernel call, not at CUDA initialisation, so setting
# them before the first kernel (senet.train.setup, before the model is built) is in time; a value the
# user put in the environment, which Paddle reads at `import paddle`, wins.
CUDNN_FLAGS = {
    # cuDNN times every conv algorithm at the first call of each shape and keeps the fastest, instead of
    # taking its heuristic's guess: a few seconds at start for the whole run's convs.
    "FLAGS_cudnn_exhaustive_search": True,
    # CUDNN_BATCHNORM_SPATIAL_PERSISTENT: cuDNN's faster batch-norm kernel, which the NHWC fp16 path
    # (tensor cores) is built around.
    "FLAGS_cudnn_batchnorm_spatial_persistent": True,
}


def has_gpu() -> bool:
    """Whether Paddle was built with CUDA and sees a GPU."""
    return paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0


def gpu_capability() -> tuple[int, int]:
    """(major, minor) compute capability of the current GPU; call only when has_gpu()."""
    major, minor = paddle.device.cuda.get_device_capability()
    return int(major), int(minor)


def amp_dtype_problem(dtype: str, capability: tuple[int, int], cuda_version: str | None) -> str | None:
    """Why this GPU cannot train in `dtype` under AMP, or None if it can.

    Paddle 3.3.1's own rules (paddle/amp/auto_cast.py, _is_gpu_float16_supported and
    _is_gpu_bfloat16_supported): float16 needs compute capability 7.0, bfloat16 8.0 and CUDA 11. Where
    they fail, paddle.amp.decorate returns the model unchanged and auto_cast disables itself, with at
    most a warning: the run trains in fp32 while the config says fp16 or bf16.
    """
    cc = f"{capability[0]}.{capability[1]}"
    if dtype == "float16" and capability[0] < 7:
        return f"float16 AMP needs a GPU of compute capability 7.0 or newer (tensor cores); this one is {cc}"
    if dtype == "bfloat16":
        if capability[0] < 8:
            return f"bfloat16 needs a GPU of compute capability 8.0 or newer (Ampere); this one is {cc}"
        major = int(str(cuda_version).split(".")[0]) if str(cuda_version)[:1].isdigit() else 0
        if major < 11:
            return f"bfloat16 needs CUDA 11 or newer; this Paddle is built with CUDA {cuda_version}"
    return None


def precision_label(amp: dict) -> str:
    """The precision a run really trains in, for logs and metrics.json: "fp32", "amp-O1-float16", ..."""
    return f"amp-{amp['level']}-{amp['dtype']}" if amp["enabled"] else "fp32"


def device_notices(cfg: dict) -> dict:
    """Resolve GPU-only settings against the device, with a one-line notice for each fallback or cost."""
    on_gpu = has_gpu()
    amp = dict(cfg["train"]["amp"])
    data_format = cfg["train"]["data_format"]
    notices = []
    if amp["enabled"] and not on_gpu:
        notices.append("AMP requested but no GPU: paddle.amp does nothing on a CPU, training in fp32.")
        amp["enabled"] = False
    if amp["enabled"]:
        problem = amp_dtype_problem(amp["dtype"], gpu_capability(), paddle.version.cuda())
        if problem:
            other = (
                "; train.amp.dtype=float16 keeps mixed precision"
                if amp["dtype"] == "bfloat16"
                and amp_dtype_problem("float16", gpu_capability(), paddle.version.cuda()) is None
                else ""
            )
            notices.append(
                f"{problem}: Paddle would run in fp32 while the run says {amp['dtype']}, so the run "
                f"trains in fp32 and records it as such{other}."
            )
            amp["enabled"] = False
    if data_format == "NHWC" and not on_gpu:
        notices.append("NHWC is a GPU (tensor-core) layout; on this CPU the model runs in NCHW.")
        data_format = "NCHW"
    elif data_format == "NHWC" and not amp["enabled"]:
        notices.append(
            "NHWC in fp32: cuDNN runs NHWC natively only in fp16/bf16, so each conv pays two "
            "transposes; enable AMP (train.amp.enabled=true) or use train.data_format=NCHW."
        )
    if on_gpu and amp["enabled"] and amp["level"] == "O2" and not amp.get("eval", False):
        notices.append(
            f"train.amp.eval=false under O2: the model's weights are {amp['dtype']}, so the "
            f"end-of-epoch eval runs in {amp['dtype']} too (as PaddleClas does); checkpoints and "
            f"model.safetensors hold float32 weights, which tools/eval.py evaluates in fp32."
        )
    return {
        "on_gpu": on_gpu,
        "amp": amp,
        "data_format": data_format,
        "notices": notices,
        "precision": precision_label(amp),
    }


def cudnn_flags() -> dict[str, bool]:
    """CUDNN_FLAGS without those the user set in the environment."""
    return {k: v for k, v in CUDNN_FLAGS.items() if k not in os.environ}


def apply_cudnn_flags() -> dict[str, bool]:
    """Set cudnn_flags() in Paddle (on a GPU build only: a CPU build has no such flags). Returns them."""
    flags = cudnn_flags()
    if flags:
        paddle.set_flags(flags)
    return flags


def local_gpu() -> int:
    """This process's GPU: the rank's own under paddle.distributed.launch, else 0.

    The launcher gives each rank its GPU in FLAGS_selected_gpus; paddle.distributed.ParallelEnv().device_id
    reads the first entry of it the same way (default "0"), but only in a CUDA build.
    """
    return int(os.environ.get("FLAGS_selected_gpus", "0").split(",")[0] or 0)
