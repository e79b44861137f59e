"""Memory probes: the peak memory of each model, engine and variant, each in a fresh child process.

A process's high-water mark cannot be reset, so after the timings each (model, engine, variant)
gets its own Python process (`plan_probes`, then `run_probe`, which runs `probe_main`) that runs
its modes once each in registry order and reads the peak after each: the resident set on a CPU
(VmHWM), which only grows, so a mode's figure covers it and the cheaper modes before it; device
memory allocated (paddle.device.cuda.max_memory_allocated, reset before each mode) on a GPU. An
ONNX Runtime or OpenVINO probe imports no Paddle, so its figure is that engine's own. The run's
records and options go in as data (plan_probes): this module does not import the run.
"""

from __future__ import annotations

import gc
import json
import resource
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from senet.bench.modes import get_mode, mode_names, synthetic_batch
from senet.bench.options import EXPORTED, ROOT, BenchOptions
from senet.bench.plan import FP32, ModelSpec, Variant, build
from senet.bench.timing import on_gpu, sync
from senet.inference import Predictor
from senet.runtime import cpu_count

PROBE_MARK = "BENCH_PROBE_RESULT "


@dataclass
class Probe:
    """One child process: the records it fills and the payload it runs (see measure_peaks)."""

    records: list[dict]
    payload: dict


def plan_probes(
    records: list[dict],
    specs: list[ModelSpec],
    variants: list[Variant],
    opts: BenchOptions,
    threads: int,
    exports: dict[str, str],
    device: str,
) -> list[Probe]:
    """One probe per (model, engine, precision, layout) among `records`, each on `threads` / the probes that
    run at once (probe_parallelism).

    `exports` maps a model's name to its exported folder; `variants` are the run's dygraph variants
    (the exported engines' are FP32 or Variant(inference=...)). Only data goes in: the run is not needed.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["name"], r["engine"], r["precision"], r["data_format"]), []).append(r)
    by_name = {s.name: s for s in specs}
    parallel = probe_parallelism(device == "gpu", len(groups))
    probes = []
    for (name, engine, precision, fmt), recs in groups.items():
        variant = next(
            (v for v in variants + [FP32] if v.precision == precision and v.data_format == fmt),
            Variant(inference=precision),
        )
        modes = [m for m in mode_names() if any(r["mode"] == m for r in recs)]
        probes.append(
            Probe(
                recs,
                {
                    "spec": asdict(by_name[name]),
                    "variant": asdict(variant),
                    "engine": engine,
                    "modes": modes,
                    "batch": {m: opts.batch_size(get_mode(m)) for m in modes},
                    "hint": {m: get_mode(m).hint for m in modes},
                    "image_size": opts.image_size,
                    "threads": max(1, threads // parallel),
                    "model_dir": exports.get(name),
                    "seed": opts.seed,
                    "device": device,
                    "emulate_bf16": opts.emulate_bf16,
                },
            )
        )
    return probes


def probe_parallelism(gpu: bool, probes: int) -> int:
    """Probes at once: one on a GPU (they share its memory); on a CPU as many as cores, each on cores / probes
    threads (two 2-thread processes on 2 cores spend their time in each other's OpenMP spin-waits)."""
    return 1 if gpu else max(1, min(cpu_count(), probes))


def probe_memory(probes: list[Probe], parallel: int, log: Callable[[str], None]) -> list[str]:
    """Run the probes, `parallel` at a time, and fill peak_memory_mb and memory_kind of their records;
    return a notice for each probe that failed."""
    log(f"memory: {len(probes)} probe processes")
    with ThreadPoolExecutor(parallel) as pool:
        results = list(pool.map(run_probe, [p.payload for p in probes]))
    log("memory: probes done")
    notices = []
    for probe, peaks in zip(probes, results):
        if "error" in peaks:
            notices.append(
                f"memory probe failed for {probe.payload['spec']['name']} on {probe.payload['engine']} "
                f"{probe.payload['variant']['inference']}: {peaks['error']}"
            )
            continue
        for r in probe.records:
            r["peak_memory_mb"] = peaks["peak_mb"].get(r["mode"])
            r["memory_kind"] = peaks["kind"]
    return notices


def run_probe(payload: dict, timeout: float = 1800) -> dict:
    """Run `probe_main` in a fresh Python process; return its {"kind", "peak_mb": {mode: MB}} or {"error"}."""
    code = (
        f"import sys; sys.path.insert(0, {ROOT!r}); from senet.runtime import setup_cpu; "
        f"setup_cpu({int(payload['threads'])}); from senet.bench.memory import probe_main; probe_main()"
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], input=json.dumps(payload), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(PROBE_MARK):
            return json.loads(line[len(PROBE_MARK) :])
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
    gpu = engine in ("dygraph", "paddle_inference") and on_gpu()
    peaks: dict[str, float] = {}
    predictor = None
    for name in p["modes"]:
        mode = get_mode(name)
        images, labels = synthetic_batch(p["batch"][name], p["image_size"], spec.cfg["model"]["num_classes"], p["seed"])
        if gpu:
            import paddle

            paddle.device.cuda.reset_max_memory_allocated()
        if engine == "dygraph":
            run, calls = mode.runner(build(spec, variant, p["seed"]), spec, variant, images, labels), mode.probe_calls
        else:
            if predictor is None or predictor.hint != p["hint"][name]:
                predictor = Predictor(
                    p["model_dir"],
                    EXPORTED[engine],
                    threads=p["threads"],
                    precision=variant.inference,
                    device=p["device"],
                    hint=p["hint"][name],
                    emulate_bf16=p.get("emulate_bf16", False),
                )
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
