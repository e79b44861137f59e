"""CPU time per image of RandAugment on one image, ours (senet.data.augment, numpy and OpenCV) or timm's (Pillow).

    .venv/bin/python scripts/measure_randaugment.py IMAGE [--policy rand-m9-mstd0.5-inc1] [--size 224] [--ops]
    /tmp/torchvenv/bin/python scripts/measure_randaugment.py IMAGE --timm     # timm 1.0 and Pillow installed

The image is read, resized to size x size, and augmented `--draws` times, each with its own seed, at one thread;
the figure is process time per image. --ops also times each op of timm's increasing-severity list at
magnitude 9 (ours only). timm's is built as its create_transform does for ImageNet: translate up to 45% of the
side, the ImageNet mean as the fill. Pillow 11 and later refuse timm's 0-bit Posterize (magnitudes near 10 of
PosterizeIncreasing): those draws raise, are caught and still counted.
"""

import argparse
import os
import random
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
MEAN = (0.485, 0.456, 0.406)


def time_ours(path: str, policy: str, size: int, draws: int, ops: bool) -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import cv2

    from senet.augment_policy import RAND_INCREASING_TRANSFORMS, parse_policy
    from senet.data.augment import RandAugment, apply_timm_op, draw_timm_op, mean_fill

    cv2.setNumThreads(1)
    img = cv2.resize(cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB), (size, size))
    fill = mean_fill(list(MEAN))
    ra = RandAugment(parse_policy(policy), fill)
    start = time.process_time()
    for seed in range(draws):
        ra(img, random.Random(seed))
    print(f"ours {policy}: {1e3 * (time.process_time() - start) / draws:.3f} ms per image")
    if ops:
        for name in RAND_INCREASING_TRANSFORMS:
            drawn = draw_timm_op(name, 1.0, 9, random.Random(1), 0.0, None, "bilinear")
            start = time.process_time()
            for _ in range(300):
                apply_timm_op(img, drawn, fill)
            print(f"  {name:22s} {1e3 * (time.process_time() - start) / 300:.3f} ms")


def time_timm(path: str, policy: str, size: int, draws: int) -> None:
    import torch

    # torchvision's wheel here lacks its C++ ops, and timm imports it: let its fake-op registrations pass
    register = torch.library.register_fake
    torch.library.register_fake = lambda op, *a, **k: (
        (lambda fn: fn) if isinstance(op, str) and op.startswith("torchvision::") else register(op, *a, **k)
    )
    import torchvision  # noqa: F401

    torch.library.register_fake = register
    from PIL import Image
    from timm.data.auto_augment import rand_augment_transform

    img = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    hparams = {"translate_const": int(size * 0.45), "img_mean": tuple(min(255, round(255 * m)) for m in MEAN)}
    ra = rand_augment_transform(policy, hparams)
    refused = 0
    start = time.process_time()
    for seed in range(draws):
        random.seed(seed)
        try:
            ra(img)
        except ValueError:  # Pillow >= 11: Posterize to 0 bits
            refused += 1
    print(f"timm {policy}: {1e3 * (time.process_time() - start) / draws:.3f} ms per image ({refused} refused)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image")
    p.add_argument("--policy", default="rand-m9-mstd0.5-inc1")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--draws", type=int, default=2000)
    p.add_argument("--ops", action="store_true", help="also time each op at magnitude 9 (ours)")
    p.add_argument("--timm", action="store_true", help="time timm's instead (run with the torch/timm venv)")
    args = p.parse_args()
    if args.timm:
        time_timm(args.image, args.policy, args.size, args.draws)
    else:
        time_ours(args.image, args.policy, args.size, args.draws, args.ops)


if __name__ == "__main__":
    main()
