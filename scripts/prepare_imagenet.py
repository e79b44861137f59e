"""Lay out ILSVRC2012 as train/<wnid>/ and val/<wnid>/ folders, or sort a flat val folder, then verify.

    # from the official archives
    .venv/bin/python scripts/prepare_imagenet.py --out data/ILSVRC2012 \\
        --train-tar ILSVRC2012_img_train.tar --val-tar ILSVRC2012_img_val.tar \\
        --devkit ILSVRC2012_devkit_t12.tar.gz        # or --val-labels FILE
    # an already extracted flat val folder
    .venv/bin/python scripts/prepare_imagenet.py --sort-val data/ILSVRC2012/val --val-labels LOC_val_solution.csv
    # only count
    .venv/bin/python scripts/prepare_imagenet.py --verify data/ILSVRC2012
    # a copy with every image's shorter side at most 256 px (less to decode: docs/data.md)
    .venv/bin/python scripts/prepare_imagenet.py --short-side 256 --src data/ILSVRC2012 --out data/ILSVRC2012-256

Exit status 1 if the counts differ from the expected ones (1,281,167 train, 50,000 val, 1,000
classes; change them with --expect-* for a subset; a resized copy is checked against its source's
counts), 2 on bad arguments or archives.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from senet.runtime import setup_cpu  # noqa: E402

# Before senet.data, which brings in Paddle: quietly, and at one thread (this script's work is files and
# OpenCV, one thread per process).
setup_cpu(1)

from senet.data.prepare import (  # noqa: E402
    EXPECTED,
    RESIZE_QUALITY,
    extract_train,
    extract_val,
    parse_val_labels,
    read_devkit_labels,
    resize_copy,
    sort_val_folder,
    verify,
)


def _labels(args: argparse.Namespace) -> dict[str, str]:
    if args.devkit:
        return read_devkit_labels(args.devkit)
    with open(args.val_labels, encoding="utf-8") as f:
        return parse_val_labels(f.read())


def _report_unlabeled(unlabeled: list[str]) -> None:
    if unlabeled:
        print(
            f"warning: {len(unlabeled)} val images have no ground-truth label and were left out, e.g. {unlabeled[:5]}",
            file=sys.stderr,
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="output root: gets train/ and val/")
    p.add_argument("--train-tar", help="ILSVRC2012_img_train.tar (a tar of per-class tars)")
    p.add_argument("--val-tar", help="ILSVRC2012_img_val.tar (flat)")
    p.add_argument("--val-labels", help="val ground truth: 'file wnid' lines, a CSV, or one wnid per line")
    p.add_argument("--devkit", help="ILSVRC2012_devkit_t12.tar.gz, as the val ground truth")
    p.add_argument("--sort-val", metavar="DIR", help="sort this flat val folder into class folders in place")
    p.add_argument("--verify", metavar="ROOT", help="only count ROOT/train and ROOT/val")
    p.add_argument(
        "--short-side",
        type=int,
        metavar="N",
        help="with --src and --out: copy the dataset with every image's shorter side at most N px",
    )
    p.add_argument("--src", metavar="ROOT", help="the dataset that --short-side copies")
    p.add_argument(
        "--quality", type=int, default=RESIZE_QUALITY, help=f"JPEG quality of --short-side ({RESIZE_QUALITY})"
    )
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for --short-side (all cores)")
    p.add_argument("--expect-train", type=int, default=EXPECTED["train"])
    p.add_argument("--expect-val", type=int, default=EXPECTED["val"])
    p.add_argument("--expect-classes", type=int, default=EXPECTED["classes"])
    args = p.parse_args(argv)
    if args.short_side is not None:
        return _short_side(p, args)
    needs_labels = args.val_tar or args.sort_val
    if needs_labels and not (args.val_labels or args.devkit):
        p.error("--val-tar and --sort-val need --val-labels or --devkit")
    if (args.train_tar or args.val_tar) and not args.out:
        p.error("--train-tar and --val-tar need --out")
    if not (args.train_tar or args.val_tar or args.sort_val or args.verify):
        p.error("nothing to do: give --train-tar/--val-tar with --out, --sort-val, or --verify")
    try:
        labels = _labels(args) if needs_labels else {}
        if args.train_tar:
            print(f"train: {extract_train(args.train_tar, args.out):,} images extracted")
        if args.val_tar:
            n, unlabeled = extract_val(args.val_tar, labels, args.out)
            print(f"val: {n:,} images extracted")
            _report_unlabeled(unlabeled)
        if args.sort_val:
            n, unlabeled = sort_val_folder(args.sort_val, labels)
            print(f"val: {n:,} images sorted into class folders")
            _report_unlabeled(unlabeled)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    root = args.verify or args.out or os.path.dirname(os.path.abspath(args.sort_val))
    counts, problems = verify(
        root, {"train": args.expect_train, "val": args.expect_val, "classes": args.expect_classes}
    )
    print(
        f"{root}: train {counts['train']:,} images in {counts['train_classes']} classes, "
        f"val {counts['val']:,} images in {counts['val_classes']} classes"
    )
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _short_side(p: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if not (args.src and args.out) or args.short_side < 1 or not 1 <= args.quality <= 100:
        p.error("--short-side N (N >= 1) needs --src ROOT and --out DIR; --quality is 1..100")
    if not os.path.isdir(args.src):
        print(f"error: --src {args.src} is not a folder", file=sys.stderr)
        return 2
    try:
        done = resize_copy(args.src, args.out, args.short_side, args.quality, max(1, args.workers))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"{args.out}: {done['resized']:,} images resized to a shorter side of {args.short_side} px, "
        f"{done['copied']:,} copied as they were (already that small), {done['exists']:,} already there"
    )
    for line in done["bad"]:
        print(f"bad image {line}", file=sys.stderr)
    (src_counts, _), (counts, _) = verify(args.src), verify(args.out)
    print(
        f"{args.out}: train {counts['train']:,} images in {counts['train_classes']} classes, "
        f"val {counts['val']:,} images in {counts['val_classes']} classes"
    )
    if counts != src_counts:
        print(f"problem: the copy holds {counts}, its source {src_counts}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
