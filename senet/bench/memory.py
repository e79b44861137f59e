"""Memory probes: the peak memory of each model, engine and variant, each in a fresh child process.

A process's high-water mark cannot be reset, so after the timings each (model, engine, variant)
gets its own Python process (`run_probe`, which runs `probe_main`) that runs its modes once each in
registry order and reads the peak after each: the resident set on a CPU (VmHWM), which only grows,
so a mode's figure covers it and the cheaper modes before it; device memory allocated
(paddle.device.cuda.max_memory_allocated, reset before each mode) on a GPU. An ONNX Runtime probe
imports no Paddle, so its figure is ONNX Runtime's own.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING

from senet.bench.modes import get_mode, mode_names, synthetic_batch
from senet.bench.options import EXPORTED, ROOT
from senet.bench.plan import FP32, ModelSpec, Variant, build
from senet.bench.timing import on_gpu, sync
from senet.runtime import cpu_count

if TYPE_CHECKING:
    from senet.bench.run import Run

PROBE_MARK = "BENCH_PROBE_RESULT "


def probe_memory(run: Run) -> None:
    """Fill peak_memory_mb of the run's records from one fresh child process per model, engine and variant.

    The timings are done, so on a CPU the probes run `cores` at a time (each process's peak is
    its own), each on cores / probes threads: two 2-thread processes on 2 cores spend their time
    in each other's OpenMP spin-waits. On a GPU one at a time, since they share the device's memory.
    """
    from concurrent.futures import ThreadPoolExecutor

    groups: dict[tuple, list[dict]] = {}
    for r in run.records:
        groups.setdefault((r["name"], r["engine"], r["precision"], r["data_format"]), []).append(r)
    specs = {s.name: s for s in run.specs}
    parallel = 1 if run.gpu else max(1, min(cpu_count(), len(groups)))
    payloads = []
    for (name, engine, precision, fmt), recs in groups.items():
        variant = next(v for v in run.variants + [FP32] if v.precision == precision and v.data_format == fmt)
        modes = [m for m in mode_names() if any(r["mode"] == m for r in recs)]
        payloads.append({"spec": asdict(specs[name]), "variant": asdict(variant), "engine": engine,
                         "modes": modes, "batch": {m: get_mode(m).batch_size(run.opts) for m in modes},
                         "image_size": run.opts.image_size, "threads": max(1, run.threads // parallel),
                         "model_dir": run.exports.get(name), "seed": run.opts.seed, "device": run.device})
    run.log(f"memory: {len(payloads)} probe processes")
    with ThreadPoolExecutor(parallel) as pool:
        results = list(pool.map(run_probe, payloads))
    run.log("memory: probes done")
    for recs, payload, peaks in zip(groups.values(), payloads, results):
        if "error" in peaks:
            run.notice(f"memory probe failed for {payload['spec']['name']} on {payload['engine']}: {peaks['error']}")
            continue
        for r in recs:
            r["peak_memory_mb"] = peaks["peak_mb"].get(r["mode"])
            r["memory_kind"] = peaks["kind"]


def run_probe(payload: dict, timeout: float = 1800) -> dict:
    """Run `probe_main` in a fresh Python process; return its {"kind", "peak_mb": {mode: MB}} or {"error"}."""
    code = (f"import sys; sys.path.insert(0, {ROOT!r}); from senet.runtime import setup_cpu; "
            f"setup_cpu({int(payload['threads'])}); from senet.bench.memory import probe_main; probe_main()")
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


def measure_peaks(p: dict) -> dict:
    """Run each mode of payload `p` once, in order, and return {"kind", "peak_mb": {mode: MB}}.

    CPU: the process's peak resident set, which only grows, hence the registry order.
    GPU: paddle.device.cuda.max_memory_allocated, reset before each mode.
    """
    spec = ModelSpec(**p["spec"])
    variant = Variant(**p["variant"])
    engine = p["engine"]
    gpu = engine != "onnxruntime" and on_gpu()
    peaks: dict[str, float] = {}
    predictor = None
    for name in p["modes"]:
        mode = get_mode(name)
        images, labels = synthetic_batch(p["batch"][name], p["image_size"], spec.cfg["model"]["num_classes"],
                                         p["seed"])
        if gpu:
            import paddle

            paddle.device.cuda.reset_max_memory_allocated()
        if engine == "dygraph":
            run, calls = mode.runner(build(spec, variant, p["seed"]), spec, variant, images, labels), mode.probe_calls
        else:
            from senet.inference import Predictor

            predictor = predictor or Predictor(p["model_dir"], EXPORTED[engine], threads=p["threads"],
                                               device=p["device"])
            run, calls = (lambda m=predictor, x=images: m.predict(x)), 1
        for _ in range(calls):
            out = run()
        sync(out)
        if gpu:
            import paddle

            peaks[name] = paddle.device.cuda.max_memory_allocated() / 2**20
        else:
            peaks[name] = peak_rss_mb()
        del run, out
        gc.collect()  # a dygraph model goes with its runner
    return {"kind": "device_allocated" if gpu else "rss", "peak_mb": peaks}


def probe_main() -> None:
    """Child side of run_probe: the payload on stdin, the peaks on stdout after PROBE_MARK."""
    peaks = measure_peaks(json.loads(sys.stdin.read()))
    print(PROBE_MARK + json.dumps(peaks), flush=True)
