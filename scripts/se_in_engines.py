"""Where SE's time goes inside the fused engines: their graphs and per-op times, ResNet-50 against its SE twin.

    .venv/bin/python scripts/se_in_engines.py                 # resnet50 and se_resnet50, 224 px, random weights
    .venv/bin/python scripts/se_in_engines.py --archs resnet50 se_resnet50 eca_resnet50 cbam_resnet50 --iters 30
    .venv/bin/python scripts/se_in_engines.py --archs resnet50 se_resnet50 se_resnet50,model.se.impl=linear

For each model (exported by senet.export, as `make bench` does) it prints:
- ONNX Runtime: the node count of the graph it optimises to (SessionOptions.optimized_model_filepath), by
  op type. Its NCHWc layout transformer (ORT_ENABLE_ALL) takes convolutions, pools, Add and activations,
  but no broadcasting Mul: the SE scale [N, C, 1, 1] x [N, C, H, W] stays in NCHW, with reorders around it;
- OpenVINO: the time of one batch-1 inference by executed node kind (PERF_COUNT, the compiled runtime graph:
  what each node was fused into, and whether it works on one value per channel), averaged over --iters calls;
- Paddle Inference with oneDNN bf16 (emulated on a CPU without bf16 instructions): how many times its
  bf16 pass reports an op outside oneDNN (ReduceMeanCheckIfOneDNNSupport, printed on stdout);
- batch-1 latency of ONNX Runtime with all optimisations against without its layout ones
  (ORT_ENABLE_EXTENDED), alternating models and levels (senet.bench.timing.alternate), and the
  SE / ResNet ratio at each level.
docs/bench.md ("SE inside the fused engines") quotes its output.
"""

import argparse
import collections
import copy
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from senet.runtime import setup_cpu  # noqa: E402


def export_models(archs: list[str], folder: str) -> dict[str, str]:
    import paddle

    from senet.config import DEFAULTS, load_config
    from senet.export import export
    from senet.resnet import build_model

    out = {}
    for entry in archs:  # "se_resnet50" or "se_resnet50,model.se.impl=linear": an arch and its overrides
        arch, *overrides = entry.split(",")
        cfg = load_config(None, [f"model.arch={arch}", *overrides])
        cfg["data"] = dict(DEFAULTS["data"], name="synthetic", synthetic_val_size=1, eval_crop=224, image_size=224)
        paddle.seed(0)
        model = build_model(copy.deepcopy(cfg))
        model.eval()
        out[entry] = os.path.join(folder, entry.replace(",", "_").replace("=", "-"))
        export(cfg, out[entry], ["paddle", "onnx"], model=model)
    return out


def ort_graph(path: str, level: str) -> collections.Counter:
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level}")
    options.optimized_model_filepath = path + f".{level.lower()}.onnx"
    options.log_severity_level = 3
    ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


def openvino_profile(path: str, threads: int, iters: int) -> tuple[collections.Counter, collections.Counter]:
    """({kind: ms}, {kind: nodes}) of one batch-1 inference on OpenVINO's CPU plugin, averaged over `iters`
    calls. A kind is the executed node's layer type (what OpenVINO fused it into: "Eltwise" is a multiply
    with the add and ReLU after it), with " [N,C,1,1]" for nodes whose output is one value per channel (the
    squeeze and excitation); read from the compiled model's runtime graph (PERF_COUNT)."""
    import numpy as np
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(path),
        "CPU",
        {"PERF_COUNT": True, "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"},
    )
    request = compiled.create_infer_request()
    x = np.zeros((1, 3, 224, 224), np.float32)
    for _ in range(3):
        request.infer({0: x})
    ms: collections.Counter = collections.Counter()
    nodes: collections.Counter = collections.Counter()
    for i in range(iters):
        request.infer({0: x})
        for op in compiled.get_runtime_model().get_ops():
            info = op.get_rt_info()
            took = info["execTimeMcs"].astype(str) if "execTimeMcs" in info else ""
            if not took.replace(".", "", 1).isdigit():  # constants, inputs: "not_executed"
                continue
            shape = op.get_output_partial_shape(0)
            per_channel = len(shape) == 4 and str(shape[2]) == "1" and str(shape[3]) == "1"
            kind = info["layerType"].astype(str) + (" [N,C,1,1]" if per_channel else "")
            ms[kind] += float(took) / 1e3 / iters  # microseconds per call -> ms per call
            nodes[kind] += 1 if i == 0 else 0
    return ms, nodes


def paddle_bf16_fallbacks(folder: str) -> int:
    """ReduceMeanCheckIfOneDNNSupport lines of one bf16 predictor load and run (in a child process: Paddle prints
    them from C++, which senet.inference sends to stderr)."""
    code = (
        f"import sys; sys.path.insert(0, {ROOT!r}); from senet.runtime import setup_cpu; setup_cpu(1); "
        f"import numpy as np; from senet.inference import Predictor; "
        f"Predictor({folder!r}, 'paddle', precision='bf16', emulate_bf16=True).predict(np.zeros((1, 224, 224, 3), "
        f"np.uint8))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    return (proc.stdout + proc.stderr).count("ReduceMeanCheckIfOneDNNSupport")  # the Predictor sends it to stderr


def ort_levels(paths: dict[str, str], threads: int, iters: int) -> dict[str, float]:
    import numpy as np
    import onnxruntime as ort

    from senet.bench.timing import alternate

    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    fns = {}
    for arch, path in paths.items():
        for level in ("ALL", "EXTENDED"):
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            options.log_severity_level = 3
            options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level}")
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            fns[f"{arch} {level}"] = lambda s=session: s.run(None, {"x": x})[0]
    times = alternate(fns, iters=iters, warmup=2, settle_calls=1, pause_s=0.1)
    return {k: float(np.median(v)) for k, v in times.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--archs",
        nargs="+",
        default=["resnet50", "se_resnet50"],
        help="architectures, each optionally with overrides after commas (se_resnet50,model.se.impl=linear); "
        "the first is the plain baseline",
    )
    p.add_argument("--threads", type=int, default=0, help="0 = all cores")
    p.add_argument("--iters", type=int, default=20, help="profiled calls (OpenVINO) and timed rounds (ONNX Runtime)")
    args = p.parse_args()
    threads = setup_cpu(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folders = export_models(args.archs, tmp)
        onnx = {a: os.path.join(f, "model.onnx") for a, f in folders.items()}
        for arch, path in onnx.items():
            for level in ("ALL", "EXTENDED"):
                graph = ort_graph(path, level)
                print(
                    f"ONNX Runtime {level}, {arch}: {sum(graph.values())} nodes: "
                    + ", ".join(f"{k} {v}" for k, v in graph.most_common())
                )
        for arch, path in onnx.items():
            ms, nodes = openvino_profile(path, threads, args.iters)
            print(
                f"OpenVINO batch-1 ms by executed node kind, {arch}: total {sum(ms.values()):.2f}: "
                + ", ".join(f"{k} {v:.2f} ({nodes[k]} nodes)" for k, v in ms.most_common(8))
            )
        for arch, folder in folders.items():
            print(f"Paddle Inference bf16, {arch}: {paddle_bf16_fallbacks(folder)} ReduceMeanCheckIfOneDNNSupport")
        med = ort_levels(onnx, threads, args.iters)
        for name, v in med.items():
            print(f"ONNX Runtime batch-1 ms, {name}: {v:.2f}")
        plain = args.archs[0]
        for arch in args.archs[1:]:
            print(
                f"ONNX Runtime {arch} / {plain}: "
                + ", ".join(
                    f"{level} x{med[f'{arch} {level}'] / med[f'{plain} {level}']:.3f}" for level in ("ALL", "EXTENDED")
                )
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
