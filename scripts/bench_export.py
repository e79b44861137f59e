"""Latency of an exported model: Paddle Inference vs ONNX Runtime vs dygraph, and whether they agree.

    .venv/bin/python scripts/bench_export.py                         # se_resnet50, batch 1, 224 px, all cores
    .venv/bin/python scripts/bench_export.py --arch resnet50 --batch 8 --iters 20 --bf16

Exports the model (random weights, seed 0) to a temporary folder with senet.export, then times
`Predictor.predict` on each engine and the dygraph forward (model.eval(), paddle.no_grad()) on the
same uint8 images, each including the same normalisation. The engines run alternately (A B C,
C B A, ...) in one process after a warm-up, through `make bench`'s timing (senet.bench.timing), and
we report medians, so load from other processes on a shared machine hits all of them alike.
Agreement: max |engine - dygraph| / max |dygraph| over the logits, and the same top-1 for every
image. Issue 7's targets: Paddle Inference at most 1.2x ONNX Runtime's latency, at least 4x faster
than dygraph, relative error <= 1e-3.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from senet.bench import alternate  # noqa: E402  (imports no Paddle)
from senet.runtime import setup_cpu  # noqa: E402  (must run before `import paddle`)

# Each engine's turn starts with this pause and --settle untimed calls, so that the previous engine's
# spinning threads are gone (senet.bench.timing.run_alternating says why).
PAUSE_S = 0.3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="se_resnet50")
    p.add_argument("--size", type=int, default=224, help="input height and width, pixels")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="CPU threads for every engine (0 = all cores)")
    p.add_argument("--iters", type=int, default=30, help="timed rounds")
    p.add_argument("--warmup", type=int, default=5, help="untimed rounds first")
    p.add_argument("--settle", type=int, default=2, help="untimed calls before each timed one (see PAUSE_S)")
    p.add_argument("--bf16", action="store_true", help="also time Paddle Inference with oneDNN bf16 (not checked)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    threads = setup_cpu(args.threads)
    import numpy as np
    import paddle

    from senet.config import load_config
    from senet.export import dygraph_logits, export
    from senet.inference import Predictor
    from senet.resnet import build_model

    cfg = load_config(
        None,
        [
            f"model.arch={args.arch}",
            "data.name=synthetic",
            "data.synthetic_val_size=1",
            f"data.eval_crop={args.size}",
            f"data.image_size={args.size}",
        ],
    )
    paddle.seed(0)
    model = build_model(cfg)
    model.eval()
    mean, std = cfg["data"]["mean"], cfg["data"]["std"]
    images = np.random.default_rng(0).integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        export(cfg, out, ["paddle", "onnx"], model=model)
        export_s = time.perf_counter() - t0
        engines = {"paddle": Predictor(out, "paddle", threads), "onnxruntime": Predictor(out, "onnxruntime", threads)}
        if args.bf16:
            engines["paddle_bf16"] = Predictor(out, "paddle", threads, bf16=True)
        ref = dygraph_logits(model, images, mean, std)
        agree = {}
        for name, pred in engines.items():
            out_logits = pred.predict(images)
            agree[name] = {
                "max_rel_err": float(np.abs(out_logits - ref).max() / np.abs(ref).max()),
                "same_top1": bool((out_logits.argmax(1) == ref.argmax(1)).all()),
            }
        fns: dict[str, Callable[[], object]] = {"dygraph": lambda: dygraph_logits(model, images, mean, std)}
        fns.update({name: (lambda pred=pred: pred.predict(images)) for name, pred in engines.items()})
        times = alternate(fns, args.iters, args.warmup, settle_calls=args.settle, pause_s=PAUSE_S)
    med = {name: statistics.median(t) for name, t in times.items()}
    result = {
        "arch": args.arch,
        "size": args.size,
        "batch": args.batch,
        "threads": threads,
        "iters": args.iters,
        "export_s": round(export_s, 1),
        "median_ms": {k: round(v, 2) for k, v in med.items()},
        "min_ms": {k: round(min(t), 2) for k, t in times.items()},
        "paddle_over_onnxruntime": round(med["paddle"] / med["onnxruntime"], 3),
        "dygraph_over_paddle": round(med["dygraph"] / med["paddle"], 2),
        "agreement": agree,
    }
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(
        f"{args.arch}, batch {args.batch}, {args.size} px, {threads} threads, {args.iters} alternating rounds "
        f"after {args.warmup} warm-up (export took {export_s:.1f} s)"
    )
    print(f"{'engine':12s} {'median ms':>10s} {'min ms':>8s} {'max rel err':>12s}  same top-1")
    for name, t in times.items():
        a = agree.get(name)
        err = f"{a['max_rel_err']:12.2e}  {a['same_top1']}" if a else f"{'(reference)':>12s}"
        print(f"{name:12s} {med[name]:10.1f} {min(t):8.1f} {err}")
    print(
        f"paddle / onnxruntime latency: {result['paddle_over_onnxruntime']:.2f} (target <= 1.2); "
        f"dygraph / paddle: {result['dygraph_over_paddle']:.2f}x (target >= 4)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
