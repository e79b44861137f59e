"""Where the numbers come from: versions, device, CPU or GPU model and instruction sets, threads, load, git commit."""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
import sys
import time
from typing import Any

import numpy as np
import psutil

from senet import isa
from senet.bench.options import ROOT
from senet.runtime import cpu_count


def have(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def environment(threads: int, gpu: bool) -> dict:
    """results.json's "environment"; load_average_end and finished are added at the end of the run."""
    import paddle

    env: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": " ".join(sys.argv),
        "paddle_version": paddle.__version__,
        "paddle_commit": paddle.version.commit,
        "device": "gpu" if gpu else "cpu",
        "cpu_model": isa.cpu_model(),
        "cpu_features": isa.features(),
        "cores": cpu_count(),
        "threads": threads,
        "onednn": bool(paddle.base.core.is_compiled_with_mkldnn()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "load_average_start": loadavg(),
        "git_commit": _git_commit(),
    }
    if gpu:
        env.update(
            gpu_model=paddle.device.cuda.get_device_name(),
            gpu_count=paddle.device.cuda.device_count(),
            cuda=paddle.version.cuda(),
            cudnn=paddle.version.cudnn(),
        )
    for module in ("onnxruntime", "paddle2onnx", "openvino"):
        try:
            env[module] = __import__(module).__version__ if have(module) else None
        except Exception:  # a broken install: say so rather than fail the run
            env[module] = "unusable"
    try:
        env["memory_total_mb"] = round(psutil.virtual_memory().total / 2**20)
    except ImportError:
        env["memory_total_mb"] = None
    return env


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _git_commit() -> str | None:
    """The commit of this checkout, with "+changes" when the working tree differs from it."""
    try:
        head = subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return (head + ("+changes" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None
