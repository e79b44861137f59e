"""Measure how far two float32 paths of the same math are apart, in units of the computation's float32
noise (senet/numerics.py): the evidence for its SAFETY factor, and the table in docs/reliability.md.

    .venv/bin/python scripts/measure_noise.py            # about 3 minutes on 2 cores

Each comparison the tests make across code paths runs here under every setting this CPU offers: 1
thread and every core, and MKL's and oneDNN's default, AVX2 and SSE4.2 kernels (MKL_ENABLE_INSTRUCTIONS,
ONEDNN_MAX_CPU_ISA; each setting in a child process, since both libraries read them once). For each
it prints diff / noise, where noise = max |float32 - float64| of the reference path (at least one
float32 spacing of its largest value) and diff = max |path A - path B|.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SETTINGS = [  # (label, environment); threads are set inside the child
    ("default", {}),
    ("AVX2", {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}),
    ("SSE4.2", {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"}),
]


def measure(threads: int) -> dict[str, float]:
    """diff / noise for each comparison, in this process (its kernels fixed by the environment)."""
    from senet.runtime import setup_cpu

    setup_cpu(threads)
    import copy

    import numpy as np
    import paddle
    import paddle.nn.functional as F

    from senet.attention import kernels
    from senet.checkpoint import load_weights
    from senet.config import load_config
    from senet.export import dygraph_logits, export
    from senet.inference import Predictor
    from senet.numerics import float32_noise, within_noise
    from senet.resnet import build_model, create_model
    from senet.weights.convert import convert_file
    from senet.weights.synthetic import synthetic_input, synthetic_state

    rng = np.random.default_rng(0)
    ratios = {}

    def twin(layer):
        t = copy.deepcopy(layer)
        t.to(dtype="float64")
        return t

    def run(layer, x):
        with paddle.no_grad():
            return layer(paddle.to_tensor(x)).numpy()

    # Kernels against their references, on a ResNet-50 stage-1 map.
    a = rng.standard_normal((8, 256, 56, 56)).astype(np.float32)
    x = paddle.to_tensor(a)
    want = x.mean(axis=[2, 3], keepdim=True).numpy()
    noise = float32_noise(want, a.astype(np.float64).mean(axis=(2, 3), keepdims=True))
    got = kernels.global_mean(x, False, kernels.KernelCache()).numpy()
    ratios["SE squeeze: matmul mean vs mean"] = within_noise(got, want, noise).ratio
    s = F.sigmoid(paddle.to_tensor(rng.standard_normal((8, 256, 1, 1)).astype(np.float32)))
    with paddle.no_grad():
        got = kernels.scale_channels(x, s, False, kernels.KernelCache()).numpy()
    want = (x * s).numpy()
    noise = float32_noise(want, a.astype(np.float64) * s.numpy())
    ratios["SE scale: batch-norm kernel vs multiply"] = within_noise(got, want, noise).ratio

    # Models: NHWC against NCHW, today's model against the logits stored on an AMD EPYC.
    paddle.seed(3)
    nchw = create_model("se_resnet20", num_classes=10)
    nhwc = create_model("se_resnet20", num_classes=10, data_format="NHWC")
    nhwc.set_state_dict(nchw.state_dict())
    nchw.eval(), nhwc.eval()
    img = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    want = run(nchw, img)
    noise = float32_noise(want, run(twin(nchw), img.astype(np.float64)))
    ratios["SE-ResNet-20: NHWC vs NCHW"] = within_noise(run(nhwc, img.transpose(0, 2, 3, 1)), want, noise).ratio
    fixtures = os.path.join(ROOT, "tests", "fixtures")
    model = create_model("se_resnet20", num_classes=10)
    load_weights(model, os.path.join(fixtures, "se_resnet20_before_attention.safetensors"), expected_arch="se_resnet20")
    model.eval()
    img = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    ours = run(model, img)
    noise = float32_noise(ours, run(twin(model), img.astype(np.float64)))
    stored = np.load(os.path.join(fixtures, "se_resnet20_before_attention_logits.npy"))
    ratios["SE-ResNet-20: today vs logits stored on an AMD EPYC"] = within_noise(stored, ours, noise).ratio

    # Our converted model against timm's, in float32 (noise: the noisier side).
    fx = np.load(os.path.join(fixtures, "weights", "timm_seresnet50.npz"))
    meta = json.loads(str(fx["meta"]))
    with tempfile.TemporaryDirectory() as tmp:
        from safetensors.numpy import save_file

        path = os.path.join(tmp, "w.safetensors")
        save_file(synthetic_state(meta["specs"], meta["seed"]), path)
        conv = convert_file(path, "timm")
    conv.model.eval()
    img = synthetic_input(tuple(meta["input_shape"]), meta["seed"])
    ours = run(conv.model, img)
    noise = max(
        float32_noise(ours, run(twin(conv.model), img.astype(np.float64))),
        float32_noise(fx["eval_f32"], fx["eval_f64"]),
    )
    ratios["SE-ResNet-50 converted: ours vs timm (float32)"] = within_noise(ours, fx["eval_f32"], noise).ratio

    # Exported engines against dygraph.
    for arch, size in (("se_resnet50", 64), ("eca_resnet20", 32), ("cbam_resnet20", 32)):
        cfg = load_config(
            os.path.join(ROOT, "configs", "demo", "se_resnet20_digits.yaml"),
            [
                f"model.arch={arch}",
                f"model.num_classes={1000 if '50' in arch else 10}",
                "data.name=synthetic",
                "data.synthetic_val_size=2",
                f"data.image_size={size}",
                f"data.eval_crop={size}",
            ],
        )
        paddle.seed(0)
        model = build_model(cfg)
        model.eval()
        images = rng.integers(0, 256, (5, size, size, 3), dtype=np.uint8)
        mean, std = cfg["data"]["mean"], cfg["data"]["std"]
        ref = dygraph_logits(model, images, mean, std)
        x64 = ((images.astype(np.float64) / 255 - mean) / std).transpose(0, 3, 1, 2)
        noise = float32_noise(ref, run(twin(model), x64))
        with tempfile.TemporaryDirectory() as out:
            export(cfg, out, ["paddle", "onnx"], model=model)
            for engine in ("paddle", "onnxruntime"):
                got = Predictor(out, engine, threads=threads).predict(images)
                ratios[f"{arch}: {engine} vs dygraph"] = within_noise(got, ref, noise).ratio
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)  # threads, in a child
    args = parser.parse_args()
    if args.child is not None:
        print("RESULT " + json.dumps(measure(args.child)), flush=True)
        return
    from senet.runtime import cpu_count

    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown CPU")
    columns, table = [], {}
    for label, extra in SETTINGS:
        for threads in sorted({1, cpu_count()}):
            env = {k: v for k, v in os.environ.items() if not k.startswith(("MKL_", "ONEDNN_"))}
            proc = subprocess.run(
                [sys.executable, __file__, "--child", str(threads)],
                env={**env, **extra},
                capture_output=True,
                text=True,
            )
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                sys.exit(f"{label}, {threads} threads failed:\n{proc.stderr[-3000:]}")
            column = f"{label}, {threads} thr"
            columns.append(column)
            for case, ratio in json.loads(line[7:]).items():
                table.setdefault(case, {})[column] = ratio
            print(f"done: {column}", file=sys.stderr, flush=True)
    print(f"diff / noise on {cpu} ({cpu_count()} cores)\n")
    print("| comparison | " + " | ".join(columns) + " | max |")
    print("|---|" + "---|" * (len(columns) + 1))
    for case, row in table.items():
        print(f"| {case} | " + " | ".join(f"{row[c]:.2f}" for c in columns) + f" | {max(row.values()):.2f} |")
    print(f"\nlargest: {max(max(r.values()) for r in table.values()):.2f}")


if __name__ == "__main__":
    main()
