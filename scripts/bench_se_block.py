"""How much the SE blocks cost on this machine: the SE block alone, and SE-ResNet-50 vs ResNet-50.

    .venv/bin/python scripts/bench_se_block.py                 # block + both model ratios, all cores
    .venv/bin/python scripts/bench_se_block.py --skip-block --iters 30 --impl linear

Prints two ratios (issue 2's targets): training step (forward, cross-entropy, backward, Momentum
step; batch 8) se_resnet50 / resnet50, and batch-1 eval inference under no_grad. The two models
run alternately (A B, B A, ...) in one process and we report medians, so load from other
processes on a shared machine hits both sides alike. The load average is printed too: above the
core count, expect the ratios to move by a few percent from run to run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from senet.runtime import setup_cpu  # noqa: E402  (must run before `import paddle`)


def alternate(fns: dict[str, Callable[[], None]], iters: int, warmup: int) -> dict[str, list[float]]:
    """Wall times of each fn in ms, calling them round-robin so load drift hits all alike.

    Odd rounds run in reverse order (A B, B A, ...): whichever runs right after another model
    finds the caches full of that model's data, and this spreads that cost evenly.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns.items())
    for i in range(iters):
        for name, fn in order if i % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            fn()  # CPU kernels run synchronously: the work is done when fn returns
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def compare(title: str, times: dict[str, list[float]], target: float) -> float:
    """Print both medians and the SE / plain ratio; return the ratio of medians.

    Also prints the median of the per-round ratios: each pairs two runs a fraction of a second
    apart, so it is less swayed when other jobs come and go on a shared machine.
    """
    plain, se = times["resnet50"], times["se_resnet50"]
    ratio = statistics.median(se) / statistics.median(plain)
    paired = statistics.median(b / a for a, b in zip(plain, se))
    print(f"{title}: resnet50 {statistics.median(plain):.1f} ms, se_resnet50 {statistics.median(se):.1f} ms, "
          f"ratio {ratio:.3f} (paired {paired:.3f}; target <= {target})")
    return ratio


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    p.add_argument("--iters", type=int, default=20, help="timed rounds per benchmark")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    p.add_argument("--batch", type=int, default=8, help="training batch size")
    p.add_argument("--size", type=int, default=224, help="input height and width, pixels")
    p.add_argument("--impl", default="conv", choices=("conv", "linear"), help="model.se.impl")
    p.add_argument("--skip-block", action="store_true", help="skip the single SE block benchmark")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-infer", action="store_true")
    args = p.parse_args(argv)

    threads = setup_cpu(args.threads)
    import paddle
    import paddle.nn.functional as F

    from senet.layers import SEBlock, SEOptions
    from senet.resnet import create_model

    paddle.set_device("cpu")
    paddle.seed(0)
    se = SEOptions(impl=args.impl)
    print(f"paddle {paddle.__version__}, {threads} threads, se.impl={args.impl}, "
          f"median of {args.iters} alternating rounds, load average {os.getloadavg()[0]:.1f}")

    if not args.skip_block:
        # The first stage's SE block: the widest map (256 x 56 x 56), where elementwise work dominates.
        block = SEBlock(256, se)
        x = paddle.randn([1, 256, 56, 56])
        xg = paddle.randn([args.batch, 256, 56, 56])
        xg.stop_gradient = False

        # No .numpy() here: copying a 3 MB map to numpy would cost more than the block. CPU
        # kernels run synchronously, so the clock reads after the work is done.
        def block_infer() -> None:
            with paddle.no_grad():
                block(x)

        def block_train() -> None:
            block(xg).sum().backward()
            xg.clear_gradient()
            block.clear_gradients()

        t = alternate({"infer b1": block_infer, f"fwd+bwd b{args.batch}": block_train}, args.iters, args.warmup)
        print("SE block 256x56x56: " + ", ".join(f"{k} {statistics.median(v):.2f} ms" for k, v in t.items()))

    models = {"resnet50": create_model("resnet50"), "se_resnet50": create_model("se_resnet50", se=se)}

    if not args.skip_train:
        x = paddle.randn([args.batch, 3, args.size, args.size])
        y = paddle.randint(0, 1000, [args.batch])
        steps = {}
        for name, model in models.items():
            model.train()
            opt = paddle.optimizer.Momentum(0.01, momentum=0.9, parameters=model.parameters(), weight_decay=1e-4)

            def step(model=model, opt=opt) -> None:
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                opt.clear_grad()
                float(loss)  # host sync, once per step as a logging loop would

            steps[name] = step
        compare(f"train step, batch {args.batch}", alternate(steps, args.iters, args.warmup), 1.05)

    if not args.skip_infer:
        x = paddle.randn([1, 3, args.size, args.size])
        runs = {}
        for name, model in models.items():
            model.eval()

            def run(model=model) -> None:
                with paddle.no_grad():
                    model(x).numpy()

            runs[name] = run
        # Batch 1 is ~25x quicker than a training step and noisier: more rounds.
        compare("inference, batch 1", alternate(runs, args.iters * 5, args.warmup), 1.03)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
