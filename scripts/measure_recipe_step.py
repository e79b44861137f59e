"""Train-step time on the digits demo's model and batch (configs/demo/resnet20_digits.yaml: ResNet-20, batch 64,
32 px, fp32 on the CPU): mixup and CutMix on against off, or this tree's default step against another tree's.

    .venv/bin/python scripts/measure_recipe_step.py mixup [--rounds 40] [--steps 5] [--threads 2]
    .venv/bin/python scripts/measure_recipe_step.py trees --before /tmp/before [--rounds 40] [--steps 5]

mixup: one process, two copies of the model (same initial weights), one trained on the batch as loaded, one on
the batch through senet.mixup (alpha 0.2, CutMix alpha 1.0, switch 0.5: RSB's values; each batch draws its own
place in the run, so about half are CutMix), then the same step (cross-entropy on soft targets). The step is
senet.step.train_step, what the trainer and `make bench` run.

trees: two worker processes, one importing senet from this tree and one from --before (e.g. the last commit,
`git archive HEAD | tar -x -C /tmp/before`), each building the default demo step; they wait in turn, so only one
computes at a time.

Both alternate the two variants round by round (each round `--steps` steps of each, the order swapped every
round) so that a change in machine load hits both alike, and report the median over the rounds of the per-round
time ratio, and each variant's median ms per step.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join("configs", "demo", "resnet20_digits.yaml")
MIXUP = ["train.mixup.alpha=0.2", "train.mixup.cutmix_alpha=1.0", "train.mixup.switch_prob=0.5"]


def _step_runner(root: str, overrides: list[str], threads: int):
    """A function running k default demo steps of the senet found in `root` and returning their seconds,
    plus the mixup (if any) built from `overrides`. Imports come from `root` (sys.path first)."""
    sys.path.insert(0, root)
    from senet.runtime import setup_cpu

    setup_cpu(threads)
    import numpy as np
    import paddle

    from senet.config import load_config
    from senet.optim import build_optimizer
    from senet.resnet import build_model
    from senet.step import StepParts, train_step

    cfg = load_config(os.path.join(root, CONFIG), overrides)
    paddle.seed(0)
    model = build_model(cfg)
    optimizer, scheduler = build_optimizer(cfg, model, 100, 1)
    parts = StepParts(
        model=model, optimizer=optimizer, mean=cfg["data"]["mean"], std=cfg["data"]["std"], scheduler=scheduler
    )
    rng = np.random.default_rng(0)
    b, size = cfg["data"]["batch_size"], cfg["data"]["image_size"]
    images = paddle.to_tensor(rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8))
    labels = paddle.to_tensor(rng.integers(0, cfg["model"]["num_classes"], b, dtype=np.int64))
    mixup = None
    if overrides:
        from senet.mixup import build_mixup

        mixup = build_mixup(cfg)
    done = [0]

    def run(k: int) -> float:
        start = time.perf_counter()
        for _ in range(k):
            x, y = images, labels
            if mixup is not None:
                x, y = mixup.at(0, done[0])(x, y)
            _, loss, _ = train_step(parts, x, y)
            done[0] += 1
        float(loss)  # the step never reads back; the clock stops once the last one has finished
        return time.perf_counter() - start

    return run


def _child(root: str, threads: int) -> None:
    """Worker for `trees`: one line "k" in, k steps' seconds out."""
    run = _step_runner(root, [], threads)
    print("ready", flush=True)
    for line in sys.stdin:
        print(run(int(line)), flush=True)


def _alternate(a, b, rounds: int, steps: int) -> tuple[list[float], list[float]]:
    """Per-round seconds per step of a and b, the order swapped every round (round 0 warms up)."""
    times_a, times_b = [], []
    for r in range(rounds + 1):
        pair = (a, b) if r % 2 == 0 else (b, a)
        seconds = [f(steps) / steps for f in pair]
        if r % 2:
            seconds.reverse()
        if r:
            times_a.append(seconds[0])
            times_b.append(seconds[1])
    return times_a, times_b


def _report(name_a: str, a: list[float], name_b: str, b: list[float]) -> None:
    ratios = [x / y for x, y in zip(a, b)]
    q = statistics.quantiles(ratios, n=4)
    print(f"{len(a)} rounds; median ms per step: {name_a} {1e3 * statistics.median(a):.1f}, ", end="")
    print(f"{name_b} {1e3 * statistics.median(b):.1f}")
    print(f"{name_a} / {name_b}: median {statistics.median(ratios):.3f} (quartiles {q[0]:.3f} to {q[2]:.3f})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("mixup", "trees", "child"))
    p.add_argument("--before", help="trees: the other tree's root")
    p.add_argument("--root", default=ROOT, help=argparse.SUPPRESS)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--steps", type=int, default=5, help="steps of each variant per round")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if args.what == "child":
        _child(args.root, args.threads)
    elif args.what == "mixup":
        plain = _step_runner(ROOT, [], args.threads)
        mixed = _step_runner(ROOT, MIXUP, args.threads)
        on, off = _alternate(mixed, plain, args.rounds, args.steps)
        print(f"resnet20 digits, batch 64, {args.threads} threads, {args.steps} steps per variant per round")
        _report("mixup+cutmix", on, "plain", off)
    else:
        if not args.before:
            p.error("trees needs --before ROOT (e.g. git archive HEAD | tar -x -C /tmp/before)")
        children = {}
        for name, root in (("after", ROOT), ("before", os.path.abspath(args.before))):
            cmd = [sys.executable, __file__, "child", "--root", root, "--threads", str(args.threads)]
            children[name] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert children[name].stdout.readline().strip() == "ready"

        def remote(name):
            def run(k: int) -> float:
                children[name].stdin.write(f"{k}\n")
                children[name].stdin.flush()
                return float(children[name].stdout.readline())

            return run

        try:
            after, before = _alternate(remote("after"), remote("before"), args.rounds, args.steps)
        finally:
            for c in children.values():
                c.stdin.close()
                c.wait()
        print(f"default demo step, resnet20 digits, batch 64, {args.threads} threads, {args.before} vs {ROOT}")
        _report("after", after, "before", before)


if __name__ == "__main__":
    main()
