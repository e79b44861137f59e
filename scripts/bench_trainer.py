"""Trainer overhead: images/s of tools/train.py's loop against a bare loop of the same model and batch.

    python scripts/bench_trainer.py [--arch se_resnet20] [--batch 128] [--size 32] [--images 2048] [--rounds 3]

The bare loop is forward, cross-entropy, backward, optimizer step on one pre-made float batch: no
data loading, no metrics, no logging. The trainer runs `senet.train.fit` on in-memory synthetic
data (the loader, on-device normalisation, metric accumulation, logging, checkpoints; no eval).
Both run in this one process: ROUNDS bare epochs, then the trainer for ROUNDS + 1 epochs (the first
is warm-up), then ROUNDS bare epochs again, so that drift in the machine's speed hits both alike. We
report the median of each and the ratio, plus the resident memory after every trainer epoch (it
must stay flat).
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from senet.runtime import setup_cpu  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="se_resnet20")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--images", type=int, default=2048, help="images per trainer epoch")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    threads = setup_cpu(0)

    import numpy as np
    import paddle
    import paddle.nn.functional as F

    from senet.config import load_config
    from senet.resnet import create_model
    from senet.train import fit

    steps = args.images // args.batch
    model = create_model(args.arch, num_classes=10)
    opt = paddle.optimizer.Momentum(0.1, parameters=[p for p in model.parameters() if not p.stop_gradient],
                                    weight_decay=1e-4)
    x = paddle.randn([args.batch, 3, args.size, args.size])
    y = paddle.randint(0, 10, [args.batch])

    def bare_epoch() -> float:
        start = time.perf_counter()
        for _ in range(steps):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.clear_grad(set_to_zero=False)
        float(loss)  # wait for the last step before reading the clock
        return steps * args.batch / (time.perf_counter() - start)

    bare_epoch()  # warm-up
    out = tempfile.mkdtemp(prefix="bench_trainer_")
    overrides = [f"model.arch={args.arch}", "model.num_classes=10", "data.name=synthetic",
                 f"data.image_size={args.size}", f"data.eval_crop={args.size}", f"data.batch_size={args.batch}",
                 f"data.synthetic_train_size={args.images}", "data.synthetic_val_size=16", "data.num_workers=0",
                 "data.hflip=0.0", "train.eval_every=0", "train.log_every=1000", "train.amp.enabled=false",
                 f"train.epochs={args.rounds + 1}", "train.save_every=0", "optimizer.weight_decay=1e-4"]
    cfg = load_config(None, overrides + [f"output_dir={out}"])
    bare = [bare_epoch() for _ in range(args.rounds)]
    metrics = fit(cfg)
    bare += [bare_epoch() for _ in range(args.rounds)]
    trainer = [h["train_images_per_s"] for h in metrics["history"][1:]]  # epoch 1 is warm-up
    rss = [round(h["rss_mb"]) for h in metrics["history"]]
    b, t = float(np.median(bare)), float(np.median(trainer))
    print(f"{args.arch}, batch {args.batch}, {args.size} px, {threads} threads, {steps} steps per epoch")
    print(f"bare loop : {b:8.1f} images/s (min {min(bare):.1f}, max {max(bare):.1f})")
    print(f"trainer   : {t:8.1f} images/s (min {min(trainer):.1f}, max {max(trainer):.1f})")
    print(f"trainer / bare = {t / b:.3f}   (target >= 0.97)")
    print(f"resident memory after each trainer epoch (MB): {rss}")


if __name__ == "__main__":
    main()
