"""Where random erasing should run: in the loader's workers (uint8, per image) or on the device (the
normalised float batch), measured in CPU time per image on this machine.

    .venv/bin/python scripts/measure_erasing.py [--size 224] [--batch 32] [--batches 20]

- workers: senet.data.augment.RandomErasing on one uint8 HWC image, as a worker runs it.
- device, timm's way (its PrefetchLoader): a Python loop over the batch writing N(0, 1) noise into each
  sample's box of the normalised NCHW float batch, one paddle.randn per box.
- device, one pass: a noise tensor for the whole batch and one paddle.where with a mask of the boxes.
Both device forms get the same boxes (drawn on the host, as timm draws them). Every run uses probability 1,
mode "pixel", timm's areas and aspects, one Paddle thread, and the variants alternate round by round; the
figure is CPU time (this process) per image, mean and spread over the rounds.
"""

import argparse
import os
import random
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from senet.runtime import setup_cpu  # noqa: E402

setup_cpu(1)  # one core, as one worker has

import numpy as np  # noqa: E402
import paddle  # noqa: E402

from senet.data.augment import RandomErasing  # noqa: E402

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=224, help="image side, pixels")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=20, help="rounds; each times every variant on one batch")
    args = p.parse_args()
    paddle.set_device("cpu")
    erase = RandomErasing(1.0, 0.02, 1 / 3, 0.3, "pixel", 1, 1, MEAN, STD)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8)
    batch = paddle.to_tensor(rng.standard_normal((args.batch, 3, args.size, args.size)).astype(np.float32))
    seconds: dict[str, list[float]] = {
        "workers (uint8, per image)": [],
        "device, timm's loop": [],
        "device, one where": [],
    }
    for round_ in range(args.batches + 1):  # round 0 warms up
        rngs = [random.Random(f"{round_}/{i}") for i in range(args.batch)]
        boxes = [erase.boxes(args.size, args.size, random.Random(f"{round_}/{i}")) for i in range(args.batch)]

        start = time.process_time()
        for img, r in zip(images, rngs):
            erase(img, r)
        worker = time.process_time() - start

        start = time.process_time()
        x = batch.clone()
        for i, sample in enumerate(boxes):
            for top, left, h, w in sample:
                x[i, :, top : top + h, left : left + w] = paddle.randn([3, h, w])
        float(x[0, 0, 0, 0])  # wait for the result
        loop = time.process_time() - start

        start = time.process_time()
        mask = np.zeros((args.batch, 1, args.size, args.size), dtype=bool)
        for i, sample in enumerate(boxes):
            for top, left, h, w in sample:
                mask[i, :, top : top + h, left : left + w] = True
        x = paddle.where(paddle.to_tensor(mask), paddle.randn(batch.shape), batch)
        float(x[0, 0, 0, 0])
        where = time.process_time() - start

        if round_:
            for name, s in zip(seconds, (worker, loop, where)):
                seconds[name].append(1e3 * s / args.batch)
    print(
        f"{args.batch} images of {args.size}x{args.size} per round, {args.batches} rounds, 1 thread: CPU ms per image"
    )
    for name, ms in seconds.items():
        print(f"  {name:28s} {statistics.mean(ms):.3f} ± {statistics.stdev(ms):.3f}")


if __name__ == "__main__":
    main()
