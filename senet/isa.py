"""The CPU instruction sets that decide how fast inference runs here, and which precisions run natively.

    features()            -> {"AVX2": True, "AVX-512": True, "AVX512-BF16": False, "AMX": False, "VNNI": True}
    missing_for("bf16")   -> "AVX512-BF16 or AMX" on a CPU without either, None where bf16 is native

Read from /proc/cpuinfo's flags (Linux), without importing Paddle: the doctor, `make bench`, the
Predictor and tools/eval.py all ask the same question the same way. oneDNN (Paddle Inference), ONNX
Runtime's MLAS and OpenVINO pick their kernels from the same flags at run time:

- bf16: native with AVX512-BF16 (Cooper Lake, Sapphire Rapids and later Xeons; AMD Zen 4 and later)
  or AMX-BF16 (Sapphire Rapids and later: tile matrix multiply). Without them oneDNN *emulates* bf16
  on AVX-512 (converting every operand in software), which is slower than fp32 (docs/export.md,
  "bf16 and int8"); Paddle's own `supports_bfloat16()` answers yes there, because emulation runs.
- int8: fast with VNNI (AVX512-VNNI or AVX-VNNI: one instruction for a 4-way u8 x s8 dot product)
  or AMX-INT8. Without them int8 still runs on AVX2 / AVX-512 with a three-instruction sequence.
"""

from __future__ import annotations

import functools
import platform

# /proc/cpuinfo flags by the name reported: any one of a name's flags means the CPU has it.
CPU_FEATURES = {
    "AVX2": ("avx2",),
    "AVX-512": ("avx512f",),
    "AVX512-BF16": ("avx512_bf16",),
    "AMX": ("amx_tile", "amx_bf16", "amx_int8"),
    "VNNI": ("avx512_vnni", "avx_vnni"),
}
# The precision -> the feature names any one of which runs it natively (fp32 runs everywhere).
NATIVE = {"bf16": ("AVX512-BF16", "AMX"), "int8": ("VNNI", "AMX")}


@functools.lru_cache(maxsize=1)
def cpu_info() -> tuple[str | None, frozenset[str]]:
    """(model name, flags) of the first CPU in /proc/cpuinfo; (None, empty) where there is none (not Linux)."""
    model, flags = None, frozenset()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model is None:
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = frozenset(value.split())
    except OSError:
        pass
    return model, flags


def cpu_model() -> str:
    return cpu_info()[0] or platform.processor() or platform.machine()


def features(flags: frozenset[str] | set[str] | None = None) -> dict[str, bool] | None:
    """{feature name: present} for CPU_FEATURES; None when the flags cannot be read (no /proc/cpuinfo)."""
    flags = cpu_info()[1] if flags is None else flags
    if not flags:
        return None
    return {name: any(f in flags for f in names) for name, names in CPU_FEATURES.items()}


def missing_for(precision: str, found: dict[str, bool] | None = None) -> str | None:
    """None if `precision` runs natively on this CPU, else the instruction sets it lacks ("AVX512-BF16 or AMX").

    Unknown flags (no /proc/cpuinfo) count as missing: nothing is promised that was not seen.
    """
    if precision not in NATIVE:
        return None
    found = features() if found is None else found
    if found is not None and any(found.get(name) for name in NATIVE[precision]):
        return None
    return " or ".join(NATIVE[precision])


def summary(found: dict[str, bool] | None = None) -> str:
    """ "AVX2 yes, AVX-512 yes, AVX512-BF16 no, AMX no, VNNI yes" (or "unknown")."""
    found = features() if found is None else found
    if found is None:
        return "unknown (no /proc/cpuinfo)"
    return ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in found.items())
