"""How much the SE blocks cost on this machine: the SE block alone, and SE-ResNet-50 vs ResNet-50.

    .venv/bin/python scripts/bench_se_block.py                 # block + both model ratios, all cores
    .venv/bin/python scripts/bench_se_block.py --skip-block --iters 30 --impl linear

Prints two ratios (issue 2's targets): training step (the trainer's own, senet.step.train_step, as
`make bench` runs it; batch 8 here, 4 in make bench's CPU default) se_resnet50 / resnet50, and batch-1
eval inference under no_grad.
The two models run alternately (A B, B A, ...) in one process, through `make bench`'s timing
(senet.bench.timing), and we report medians, so load from other processes on a shared machine hits
both sides alike. The load average is printed too: above the core count, expect the ratios to move
by a few percent from run to run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from senet.bench import FP32, alternate, build, get_mode, plan_models  # noqa: E402  (imports no Paddle)
from senet.bench.modes import synthetic_batch  # noqa: E402
from senet.runtime import setup_cpu  # noqa: E402  (must run before `import paddle`)


def compare(title: str, times: dict[str, list[float]], target: float) -> float:
    """Print both medians and the SE / plain ratio; return the ratio of medians.

    Also prints the median of the per-round ratios: each pairs two runs a fraction of a second
    apart, so it is less swayed when other jobs come and go on a shared machine.
    """
    plain, se = times["resnet50"], times["se_resnet50"]
    ratio = statistics.median(se) / statistics.median(plain)
    paired = statistics.median(b / a for a, b in zip(plain, se))
    print(
        f"{title}: resnet50 {statistics.median(plain):.1f} ms, se_resnet50 {statistics.median(se):.1f} ms, "
        f"ratio {ratio:.3f} (paired {paired:.3f}; target <= {target})"
    )
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

    from senet.attention import SEBlock, SEOptions

    paddle.set_device("cpu")
    paddle.seed(0)
    se = SEOptions(impl=args.impl)
    print(
        f"paddle {paddle.__version__}, {threads} threads, se.impl={args.impl}, "
        f"median of {args.iters} alternating rounds, load average {os.getloadavg()[0]:.1f}"
    )

    if not args.skip_block:
        # The first stage's SE block: the widest map (256 x 56 x 56), where elementwise work dominates.
        block = SEBlock(256, se)
        x = paddle.randn([1, 256, 56, 56])
        xg = paddle.randn([args.batch, 256, 56, 56])
        xg.stop_gradient = False

        # No .numpy() here (the calls return None): copying a 3 MB map to numpy would cost more than
        # the block. CPU kernels run synchronously, so the clock reads after the work is done.
        def block_infer() -> None:
            with paddle.no_grad():
                block(x)

        def block_train() -> None:
            block(xg).sum().backward()
            xg.clear_gradient()
            block.clear_gradients()

        t = alternate({"infer b1": block_infer, f"fwd+bwd b{args.batch}": block_train}, args.iters, args.warmup)
        print("SE block 256x56x56: " + ", ".join(f"{k} {statistics.median(v):.2f} ms" for k, v in t.items()))

    # `make bench`'s models and runners: the step and the forward that it times.
    specs = plan_models(["resnet50", "se_resnet50"], [f"model.se.impl={args.impl}"], [], reference=False)

    def runs(mode: str, batch: int) -> dict:
        images, labels = synthetic_batch(batch, args.size, 1000, 0)
        return {s.arch: get_mode(mode).runner(build(s), s, FP32, images, labels) for s in specs}

    if not args.skip_train:
        compare(f"train step, batch {args.batch}", alternate(runs("train", args.batch), args.iters, args.warmup), 1.05)
    if not args.skip_infer:
        # Batch 1 is ~25x quicker than a training step and noisier: more rounds.
        compare("inference, batch 1", alternate(runs("latency", 1), args.iters * 5, args.warmup), 1.03)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
