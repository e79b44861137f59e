"""Trainer overhead: images/s of tools/train.py's loop against a bare loop of the same model and batch.

    .venv/bin/python scripts/bench_trainer.py [--arch se_resnet20] [--batch 128] [--size 32] [--images 2048] \\
        [--epochs 3]

Both run the same step, senet.step.train_step (on-device normalisation, forward, cross-entropy,
backward, optimizer step). The bare loop calls it on one pre-made uint8 batch, with no LR schedule:
no data loading, no metrics, no logging. The trainer is `senet.train.fit` on in-memory synthetic
data: the loader, metric accumulation, the LR schedule, logging, checkpoints (no eval).

On a shared 2-core machine the speed of the same loop drifts by up to 2x within minutes, so
timing the two loops one after the other measures the drift, not the trainer. Here they are
interleaved step by step: the trainer's train loader is wrapped so that, each time the trainer
asks for its next batch, one bare step of a second copy of the model runs first, on its own clock.
A trainer step is then everything from handing a batch to the trainer until the batch after it is
ready (its own work plus loading the next batch); the bare step ran just before, under the same
load. We report the median of the per-step ratios (bare time / trainer time, i.e. trainer images/s
over bare images/s), the medians of each, and the resident memory after every epoch (it must stay
flat). The first epoch is warm-up. (The trainer's own images/s in its log lines include the
interleaved bare steps, so they read about half the real speed here.)
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from senet.runtime import setup_cpu  # noqa: E402


class Interleaved:
    """A train Loader that runs `bare_step` (timed apart) before fetching each batch after an epoch's first."""

    def __init__(self, loader, bare_step, log: dict) -> None:
        self.loader, self.bare_step, self.log = loader, bare_step, log

    def __getattr__(self, name):  # set_epoch, sampler, dataset, pop_skipped, ...
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        it = iter(self.loader)
        handed = None  # when the previous batch went to the trainer
        while True:
            pair = None  # before an epoch's first batch there is no trainer step to pair
            if handed is not None:
                trainer = time.perf_counter() - handed  # the trainer's whole step, up to asking again
                t0 = time.perf_counter()
                self.bare_step()
                pair = [time.perf_counter() - t0, trainer]
            t0 = time.perf_counter()
            batch = next(it, None)
            if pair is not None:
                pair[1] += time.perf_counter() - t0  # loading the next batch is the trainer's work too
                self.log["pairs"].append(tuple(pair))
            if batch is None:
                return
            handed = time.perf_counter()
            yield batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="se_resnet20")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--images", type=int, default=2048, help="images per trainer epoch")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (after one warm-up epoch)")
    args = parser.parse_args()
    threads = setup_cpu(0)

    import paddle

    import senet.train
    from senet.config import load_config
    from senet.resnet import create_model
    from senet.step import StepParts, train_step

    out = tempfile.mkdtemp(prefix="bench_trainer_")
    overrides = [
        f"model.arch={args.arch}",
        "model.num_classes=10",
        "data.name=synthetic",
        f"data.image_size={args.size}",
        f"data.eval_crop={args.size}",
        f"data.batch_size={args.batch}",
        f"data.synthetic_train_size={args.images}",
        "data.synthetic_val_size=16",
        "data.num_workers=0",
        "data.hflip=0.0",
        "train.eval_every=0",
        "train.log_every=1000",
        "train.amp.enabled=false",
        f"train.epochs={args.epochs + 1}",
        "train.save_every=0",
        "optimizer.weight_decay=1e-4",
        f"output_dir={out}",
    ]
    cfg = load_config(None, overrides)
    model = create_model(args.arch, num_classes=10)
    opt = paddle.optimizer.Momentum(
        0.1, parameters=[p for p in model.parameters() if not p.stop_gradient], weight_decay=1e-4
    )
    bare = StepParts(model, opt, cfg["data"]["mean"], cfg["data"]["std"])
    x = paddle.randint(0, 256, [args.batch, args.size, args.size, 3]).astype("uint8")  # as the loader hands it
    y = paddle.randint(0, 10, [args.batch])

    def bare_step() -> None:
        _, loss, _ = train_step(bare, x, y)
        float(loss)  # CPU kernels are synchronous; this only keeps the loop honest on a GPU

    log: dict = {"pairs": []}
    build_loader = senet.train.build_loader

    def interleaved_loader(cfg, split, **kw):
        loader = build_loader(cfg, split, **kw)
        return Interleaved(loader, bare_step, log) if split == "train" else loader

    senet.train.build_loader = interleaved_loader
    metrics = senet.train.fit(cfg)
    steps = args.images // args.batch
    pairs = log["pairs"][steps:]  # epoch 1 is warm-up
    ratios = [bare / trainer for bare, trainer in pairs]
    bare_ips = [args.batch / bare for bare, _ in pairs]
    trainer_ips = [args.batch / trainer for _, trainer in pairs]
    rss = [round(h["rss_mb"]) for h in metrics["history"]]
    print(f"{args.arch}, batch {args.batch}, {args.size} px, {threads} threads, {len(pairs)} interleaved steps")
    print(f"bare loop : {statistics.median(bare_ips):8.1f} images/s (min {min(bare_ips):.1f}, max {max(bare_ips):.1f})")
    print(
        f"trainer   : {statistics.median(trainer_ips):8.1f} images/s (min {min(trainer_ips):.1f}, "
        f"max {max(trainer_ips):.1f})"
    )
    q = statistics.quantiles(ratios, n=4)
    print(
        f"trainer / bare, median of per-step ratios = {statistics.median(ratios):.3f} "
        f"(quartiles {q[0]:.3f}-{q[2]:.3f}; target >= 0.97)"
    )
    # What the pairs leave out: per-epoch work inside train_one_epoch (set_epoch, the first fetch,
    # the closing metric read), as a share of the trainer's time in each timed epoch.
    outside = []
    for e, h in enumerate(metrics["history"][1:], start=1):
        epoch_pairs = log["pairs"][e * steps : (e + 1) * steps]
        inside = sum(b + t for b, t in epoch_pairs)
        trainer_part = sum(t for _, t in epoch_pairs)
        outside.append((h["epoch_time_s"] - inside) / trainer_part)
    print(f"per-epoch time outside the timed steps: {100 * statistics.median(outside):.2f}% of the trainer's time")
    print(f"resident memory after each trainer epoch (MB): {rss}")


if __name__ == "__main__":
    main()
