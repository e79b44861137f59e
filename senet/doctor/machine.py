"""What this machine is, as far as senet cares: Paddle's build, the GPUs, the CPU, the packages, the threads.

`describe()` returns a plain dict (doctor.json's "machine"); `lines()` prints it. Nothing here fails:
a part that cannot be read is recorded as missing, with why, since the doctor's first job on a broken
install is to say what is there. Package versions come from the installed distributions' metadata,
not from importing them (DALI's import alone takes seconds and pulls CUDA libraries).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import sys
from typing import Any

from senet import isa
from senet.runtime import cpu_count

# /proc/cpuinfo flags that decide speed here, by the name printed: the kernels MKL, oneDNN, ONNX Runtime
# and OpenVINO pick at run time (senet/numerics.py) and their bf16 / int8 paths (senet/isa.py).
CPU_FEATURES = isa.CPU_FEATURES

# Distribution names by what the report calls them (the first one installed wins).
PACKAGES = {
    "OpenCV": ("opencv-python-headless", "opencv-python", "opencv-contrib-python-headless", "opencv-contrib-python"),
    "ONNX Runtime": ("onnxruntime", "onnxruntime-gpu"),
    "OpenVINO": ("openvino",),
    "paddle2onnx": ("paddle2onnx",),
    "VisualDL": ("visualdl",),
    "numpy": ("numpy",),
}
DALI_PREFIX = "nvidia-dali"  # nvidia-dali-cuda120, nvidia-dali-cuda130, ...

# Paddle flags that change what GPU kernels run (senet sets some on GPUs; the user's environment may too).
GPU_FLAGS = ("FLAGS_cudnn_exhaustive_search", "FLAGS_cudnn_batchnorm_spatial_persistent", "FLAGS_cudnn_deterministic")


def describe() -> dict[str, Any]:
    """The machine, as doctor.json's "machine" entry. Imports paddle (after senet.runtime.setup_cpu)."""
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "paddle": _paddle(),
        "gpus": _gpus(),
        "nvidia_smi": _nvidia_smi(),
        "cpu": _cpu(),
        "packages": _packages(),
        "threads": _threads(),
    }


def _version_or_none(value: Any) -> str | None:
    """Paddle's version strings say 'False', 'None' or '0' for a library it was built without."""
    text = str(value).strip()
    return None if text in ("", "False", "None", "0") else text


def _paddle() -> dict[str, Any]:
    try:
        import paddle
        from paddle import inference
    except Exception as e:  # noqa: BLE001  (a broken install raises anything: report it, do not die)
        return {"error": f"import paddle failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    v = paddle.version
    trt = (inference.get_trt_compile_version(), inference.get_trt_runtime_version())
    return {
        "version": paddle.__version__,
        "commit": v.commit,
        "cuda_build": bool(paddle.is_compiled_with_cuda()),
        "cuda": _version_or_none(v.cuda()),
        "cudnn": _version_or_none(v.cudnn()),
        "nccl": _version_or_none(v.nccl()),
        "cuda_archs": list(v.cuda_archs() or []),
        "mkl": v.mkl() == "ON",
        # Paddle Inference can build TensorRT engines only when compiled with it and the library loads.
        "tensorrt_compiled": ".".join(map(str, trt[0])),
        "tensorrt_runtime": ".".join(map(str, trt[1])),
        "tensorrt_usable": trt[0] > (0, 0, 0) and trt[1] > (0, 0, 0),
        "onednn_bf16": bool(paddle.base.core.supports_bfloat16()),
    }


def _gpus() -> list[dict[str, Any]]:
    """Each GPU Paddle sees: name, memory (GiB), compute capability ("8.0"), multiprocessors."""
    try:
        import paddle

        if not paddle.is_compiled_with_cuda():
            return []
        out = []
        for i in range(paddle.device.cuda.device_count()):
            p = paddle.device.cuda.get_device_properties(i)
            out.append(
                {
                    "index": i,
                    "name": p.name,
                    "memory_gib": round(p.total_memory / 2**30, 1),
                    "capability": f"{p.major}.{p.minor}",
                    "multiprocessors": p.multi_processor_count,
                }
            )
        return out
    except Exception as e:  # noqa: BLE001
        return [{"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}]


def _nvidia_smi() -> dict[str, Any]:
    """What the driver says, independent of Paddle: GPUs listed, driver version, its CUDA version."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"found": False, "gpus": 0}
    try:
        header = subprocess.run([exe], capture_output=True, text=True, timeout=20)
        listing = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"found": True, "gpus": 0, "error": str(e)[:300]}
    if header.returncode != 0:
        return {"found": True, "gpus": 0, "error": (header.stderr or header.stdout).strip()[:300]}
    driver = re.search(r"Driver Version:\s*([\d.]+)", header.stdout)
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", header.stdout)
    return {
        "found": True,
        "gpus": len(re.findall(r"^GPU \d+", listing.stdout, flags=re.M)),
        "driver": driver.group(1) if driver else None,
        "cuda": cuda.group(1) if cuda else None,
    }


def _cpu() -> dict[str, Any]:
    """The CPU's model, cores, instruction sets and the precisions it runs natively (senet.isa)."""
    _, flags = isa.cpu_info()
    features = isa.features(flags) if flags else None
    native = ["fp32"] + [p for p in isa.NATIVE if features and isa.missing_for(p, features) is None]
    return {
        "model": isa.cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": cpu_count(),
        "features": features,
        "native_precisions": native,
    }


def _distribution_version(names: tuple[str, ...]) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _packages() -> dict[str, Any]:
    out: dict[str, Any] = {label: _distribution_version(names) for label, names in PACKAGES.items()}
    dali = sorted(
        f"{d.metadata['Name']} {d.version}"
        for d in importlib.metadata.distributions()
        if (d.metadata["Name"] or "").lower().startswith(DALI_PREFIX)
    )
    out["DALI"] = ", ".join(dali) or None
    try:
        import onnxruntime

        out["ONNX Runtime providers"] = list(onnxruntime.get_available_providers())
    except Exception:  # noqa: BLE001  (missing or broken: the version above already says which)
        out["ONNX Runtime providers"] = None
    return out


def _threads() -> dict[str, Any]:
    out: dict[str, Any] = {
        k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "SENET_THREADS", "CUDA_VISIBLE_DEVICES")
    }
    try:
        import paddle

        for flag in GPU_FLAGS:  # CUDA builds only: the CPU build has none of these flags
            try:
                out[flag] = paddle.get_flags([flag])[flag]
            except ValueError:
                pass
    except Exception:  # noqa: BLE001
        pass
    return out


def lines(machine: dict[str, Any]) -> list[str]:
    """The machine as the report prints it, one fact per line."""
    p, out = machine["paddle"], [f"Python {machine['python']} on {machine['platform']}"]
    if "error" in p:
        out.append(f"paddle: {p['error']}")
    else:
        build = (
            f"CUDA {p['cuda']}, cuDNN {p['cudnn']}, NCCL {p['nccl'] or 'none'}"
            if p["cuda_build"]
            else "CPU build (no CUDA)"
        )
        trt = f"TensorRT {p['tensorrt_runtime']}" if p["tensorrt_usable"] else "no TensorRT"
        out.append(
            f"paddle {p['version']} ({p['commit'][:10]}): {build}; Paddle Inference: {trt}; "
            f"MKL {'yes' if p['mkl'] else 'no'}, oneDNN bf16 {'yes' if p['onednn_bf16'] else 'no'}"
        )
    smi = machine["nvidia_smi"]
    if smi["found"]:
        out.append(
            f"nvidia-smi: {smi['gpus']} GPU(s), driver {smi.get('driver')}, CUDA {smi.get('cuda')}"
            + (f" ({smi['error']})" if smi.get("error") else "")
        )
    else:
        out.append("nvidia-smi: not found")
    for g in machine["gpus"]:
        out.append(
            f"GPU {g['index']}: {g['name']}, {g['memory_gib']} GiB, compute capability {g['capability']}, "
            f"{g['multiprocessors']} SMs"
            if "error" not in g
            else f"GPUs: {g['error']}"
        )
    if not machine["gpus"]:
        out.append("GPUs seen by Paddle: none")
    c = machine["cpu"]
    features = (
        "instruction sets: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in c["features"].items())
        if c["features"]
        else "instruction sets: unknown (no /proc/cpuinfo)"
    )
    out.append(f"CPU: {c['model']}, {c['usable_cores']} usable of {c['logical_cores']} logical cores; {features}")
    if c["features"]:
        missing = {p: isa.missing_for(p, c["features"]) for p in isa.NATIVE}
        out.append(
            "inference precisions native here: "
            + ", ".join(c.get("native_precisions", ["fp32"]))
            + "".join(
                f"; {p} needs {m} (without: {'emulated, slower than fp32' if p == 'bf16' else 'runs, slower'})"
                for p, m in missing.items()
                if m
            )
        )
    pk = machine["packages"]
    out.append("packages: " + ", ".join(f"{k} {pk.get(k) or 'not installed'}" for k in (*PACKAGES, "DALI")))
    if pk["ONNX Runtime providers"] is not None:
        out.append("ONNX Runtime providers: " + ", ".join(pk["ONNX Runtime providers"]))
    out.append("threads: " + ", ".join(f"{k}={v if v is not None else 'unset'}" for k, v in machine["threads"].items()))
    return out
