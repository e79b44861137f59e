"""The CPU speed paths under another instruction set than this CPU's default (issue 21).

Paddle's CPU wheel picks its kernels at run time: MKL 2019.0.5 (dygraph's convolutions and matrix
products) and oneDNN (Paddle Inference) run AVX-512, AVX2 or SSE code by CPU. MKL 2019 runs its SSE
code on AMD CPUs unless MKL_DEBUG_CPU_TYPE=5 is set. So a comparison that passes on one CPU kind says
nothing about the kernels another kind runs. The suite runs the tests marked `cpu_paths` (the SE
kernels against their references, the models across layouts and against a fixture written on another
CPU, Paddle Inference and ONNX Runtime against dygraph) on this CPU's default kernels; this test runs
them once more in a child pytest, on the first of AVX2 and SSE4.2 whose kernels differ from the
default (capped by MKL_ENABLE_INSTRUCTIONS and ONEDNN_MAX_CPU_ISA), and reads back from MKL's and
oneDNN's verbose output which kernels each run used. ONNX Runtime's MLAS has no such switch: it is
tested on this CPU's own instruction set only.
"""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (name, MKL_ENABLE_INSTRUCTIONS, ONEDNN_MAX_CPU_ISA), in the order tried
CAPS = [("AVX2", "AVX2", "AVX2"), ("SSE4.2", "SSE4_2", "SSE41")]

# Which kernels MKL and oneDNN run: a matrix product in dygraph (MKL) and a tiny Paddle Inference graph
# (oneDNN), with both libraries' verbose output on.
PROBE = f"""
import os, sys, tempfile
sys.path.insert(0, {ROOT!r})
from senet.runtime import setup_cpu
setup_cpu(1)  # the probe reads which kernels run, not how fast: one thread is enough
import paddle
from senet.inference import Predictor
a = paddle.randn([8, 8])
(a @ a).numpy()
layer = paddle.nn.Conv2D(3, 4, 3)
layer.eval()
out = tempfile.mkdtemp()
path = os.path.join(out, "model")
paddle.jit.save(layer, path, input_spec=[paddle.static.InputSpec([1, 3, 8, 8], "float32")])
config = paddle.inference.Config(path + ".json", path + ".pdiparams")
config.disable_gpu()
config.enable_onednn()
predictor = paddle.inference.create_predictor(config)
import numpy as np
handle = predictor.get_input_handle(predictor.get_input_names()[0])
handle.copy_from_cpu(np.zeros((1, 3, 8, 8), np.float32))
predictor.run()
"""


def kernels_used(env: dict) -> tuple[str, str]:
    """(MKL's, oneDNN's) instruction set in a process with `env`, as their verbose output names them."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**env, "MKL_VERBOSE": "1", "ONEDNN_VERBOSE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    mkl = re.search(r"MKL_VERBOSE Intel\(R\) MKL .*? architecture (.*?) enabled processors", out)
    onednn = re.search(r"onednn_verbose,.*?isa:([^\n]*)", out)
    assert mkl and onednn, out[-3000:]
    return mkl.group(1).strip(), onednn.group(1).strip()


def is_amd() -> bool:
    with open("/proc/cpuinfo") as f:
        return "AuthenticAMD" in f.read()


def other_kernels(env: dict, default: tuple[str, str]) -> tuple[str, dict, tuple[str, str]]:
    """The first cap in CAPS that changes the kernels from `default`: (its name, its environment, the
    kernels it runs)."""
    for name, mkl, onednn in CAPS:
        capped = {**env, "MKL_ENABLE_INSTRUCTIONS": mkl, "ONEDNN_MAX_CPU_ISA": onednn}
        if is_amd():
            capped["MKL_DEBUG_CPU_TYPE"] = "5"  # MKL 2019 gates its AVX2 code on Intel CPUs without it
        used = kernels_used(capped)
        if used != default:
            return name, capped, used
    raise AssertionError(f"no instruction-set cap changed the kernels from {default}: nothing to compare")


def test_cpu_paths_hold_under_another_instruction_set():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MKL_", "ONEDNN_", "PYTEST_"))}
    default = kernels_used(env)
    name, capped, used = other_kernels(env, default)
    print(f"default kernels: MKL {default[0]}, oneDNN {default[1]}; capped to {name}: MKL {used[0]}, oneDNN {used[1]}")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider", "-m", "cpu_paths", "tests"],
        cwd=ROOT,
        env=capped,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, f"under {name} ({used}):\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    assert re.fullmatch(r"\d+ passed, \d+ deselected in .*", summary), summary  # nothing skipped or failed
