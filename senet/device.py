"""What the device can do with a config: AMP and the tensor layout resolved against it.

Kept apart from senet.train so that the trainer, senet.analysis and tools/eval.py all resolve
settings the same way without importing each other.
"""

from __future__ import annotations

import paddle


def has_gpu() -> bool:
    """Whether Paddle was built with CUDA and sees a GPU."""
    return paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0


def device_notices(cfg: dict) -> dict:
    """Resolve GPU-only settings against the device, with a one-line notice for each fallback."""
    on_gpu = has_gpu()
    amp = dict(cfg["train"]["amp"])
    data_format = cfg["train"]["data_format"]
    notices = []
    if amp["enabled"] and not on_gpu:
        notices.append("AMP requested but no GPU: paddle.amp does nothing on a CPU, training in fp32.")
        amp["enabled"] = False
    if data_format == "NHWC" and not on_gpu:
        notices.append("NHWC is a GPU (tensor-core) layout; on this CPU the model runs in NCHW.")
        data_format = "NCHW"
    return {"on_gpu": on_gpu, "amp": amp, "data_format": data_format, "notices": notices}
