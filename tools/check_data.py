"""Check a dataset before training: counts per split, bad files, and loader speed.

    .venv/bin/python tools/check_data.py [-c CONFIG] [-o data.root=...] [--decode] [--bench N [--repeats R]] [--json]
    .venv/bin/python tools/check_data.py -c configs/demo/se_resnet20_digits.yaml --decode

For each split: image count, class count, the smallest and largest class, and the files that do
not decode (with --decode every file is decoded). --bench N times the training loader over about
N images against a plain decode+crop loop with the same number of worker processes, and NVIDIA
DALI's pipeline (data.loader=dali) where it is installed; images/s per core is images per CPU-second
over all processes and threads. --json prints
{"train": {...}, "val": {...}, "bench": {...} or null}. Exit status 1 if any bad file was found,
2 if the dataset or config cannot be used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from senet.config import ConfigError, load_config, split_override_args  # noqa: E402
from senet.data.errors import DatasetError
from senet.runtime import setup_cpu  # noqa: E402


def _print_split(split: str, r: dict) -> None:
    print(
        f"{split}: {r['images']} images, {r['classes']} classes; smallest class {r['smallest']['class']} "
        f"({r['smallest']['images']}), largest {r['largest']['class']} ({r['largest']['images']})"
    )
    if r["decoded"]:
        print(f"  {len(r['bad'])} bad files")
        shown = 40  # a few dozen name the problem; 100,000 lines would bury it (--json has them all)
        for path, why in zip(r["bad"][:shown], r["bad_reasons"][:shown]):
            print(f"    {path}: {why}")
        if len(r["bad"]) > shown:
            print(f"    ... and {len(r['bad']) - shown:,} more (--json lists every one)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", help="YAML config; without it, the defaults")
    p.add_argument(
        "-o",
        "--override",
        nargs="+",
        action="append",
        metavar="KEY=VALUE",
        help="override config keys, e.g. -o data.root=/data/imagenet data.num_workers=8",
    )
    p.add_argument("--decode", action="store_true", help="decode every file to find the bad ones")
    p.add_argument("--bench", type=int, default=0, metavar="N", help="time the training loader over N images")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of --bench (default 3)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, split_override_args(args.override))
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    setup_cpu(cfg["train"]["threads"])  # before senet.data imports paddle, which would pin OpenMP to one thread
    from senet.data.check import bench, split_report

    try:
        report = {split: split_report(cfg, split, args.decode) for split in ("train", "val")}
        report["bench"] = bench(cfg, args.bench, args.repeats) if args.bench > 0 else None
    except (DatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for split in ("train", "val"):
            _print_split(split, report[split])
        b = report["bench"]
        if b:
            print(
                f"bench: {b['images']} images x {b['repeats']} repeats, batch {b['batch_size']}, {b['workers']} workers"
            )
            rows = [
                ("plain loop", "plain", " (decode+crop only)"),
                ("loader", "loader", ""),
                (f"DALI ({b['dali_decoder']})", "dali", f" ({b['workers']} threads)"),
                # the loader again without the modern augmentations, when the config turns them on
                ("no erasing", "no_erasing", " (without data.random_erasing)"),
                ("unaugmented", "unaugmented", " (without data.auto_augment and data.random_erasing)"),
            ]
            for label, key, note in rows:
                if b.get(f"{key}_images_per_s") is not None:
                    print(
                        f"  {label:11s} {b[f'{key}_images_per_s']:8.1f} ± {b[f'{key}_std']:.1f} images/s, "
                        f"{b[f'{key}_cpu_ms_per_image']:.2f} CPU ms/image, "
                        f"{b[f'{key}_images_per_cpu_s']:.0f} images/s per core{note}"
                    )
            if b["plain_images_per_s"] is not None:
                if b["dali_skipped"]:
                    print(f"  DALI        {b['dali_skipped']}")
                print(
                    f"  loader / plain = {b['ratio']:.1%} in images/s, "
                    f"{b['plain_cpu_ms_per_image'] / b['loader_cpu_ms_per_image']:.1%} in CPU per image"
                )
    return 1 if any(report[s]["bad"] for s in ("train", "val")) else 0


if __name__ == "__main__":
    sys.exit(main())
