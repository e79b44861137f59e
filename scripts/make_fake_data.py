"""Write a tiny fake ImageNet-layout folder and CIFAR-10/100 tarballs, to try the tools without real data.

    .venv/bin/python scripts/make_fake_data.py --out data/fake
    .venv/bin/python tools/check_data.py -o data.root=data/fake/imagenet model.num_classes=4 --decode
    .venv/bin/python tools/check_data.py -o data.name=cifar10 data.root=data/fake/cifar model.num_classes=10 \
        data.verify_md5=false

Images mix JPEG and PNG, RGB, grayscale, CMYK, alpha and 16-bit, with extensions in mixed case.
The CIFAR tarballs carry the official names and layout but not the official MD5, so the loader
refuses them unless told `data.verify_md5=false` (then it warns), as it would any repacked copy.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from senet.data.fake import make_fake_cifar, make_fake_imagenet  # noqa: E402


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h or w)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="data/fake", help="output folder (default data/fake)")
    p.add_argument("--classes", type=int, default=4, help="ImageNet-layout classes")
    p.add_argument("--per-class", type=int, default=7, help="train images per class")
    p.add_argument("--val-per-class", type=int, default=3, help="val images per class")
    p.add_argument("--size", type=_size, default=(64, 48), metavar="WxH", help="image size, e.g. 500x375")
    p.add_argument("--cifar-train", type=int, default=100, help="train images in each CIFAR tarball")
    p.add_argument("--cifar-test", type=int, default=30, help="test images in each CIFAR tarball")
    p.add_argument("--jpeg-only", action="store_true", help="all RGB .JPEG, like ImageNet (for --bench)")
    p.add_argument("--no-cifar", action="store_true", help="write only the ImageNet-layout folder")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    imagenet = make_fake_imagenet(
        os.path.join(args.out, "imagenet"),
        args.classes,
        args.per_class,
        args.val_per_class,
        args.size,
        args.seed,
        args.jpeg_only,
    )
    print(
        f"wrote {imagenet}/train and val: {args.classes} classes, {args.per_class} + {args.val_per_class} "
        f"images per class, {args.size[0]}x{args.size[1]}"
    )
    if not args.no_cifar:
        for kind in ("cifar10", "cifar100"):
            print(
                "wrote",
                make_fake_cifar(os.path.join(args.out, "cifar"), kind, args.cifar_train, args.cifar_test, args.seed),
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
