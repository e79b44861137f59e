"""Throughput, latency, memory and cost of ResNet against SE-, ECA- and CBAM-ResNet, side by side in one run.

    .venv/bin/python tools/bench.py         # the default run (make bench): ResNet-50, SE-ResNet-50 at
                                            # r = 2..32, ECA- and CBAM-ResNet-50, paddle.vision's ResNet-50;
                                            # fits 10 min on 2 CPU cores
    .venv/bin/python tools/bench.py --full  # the paper's sizes (training batch 256, 224 px), for a GPU
    .venv/bin/python tools/bench.py -c resnet18 se_resnet18 -o model.num_classes=10 --reductions 4 16 --image-size 64

Writes output/bench/<timestamp>/: results.json, results.csv, report.md and two plots. See docs/bench.md.
"""

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from senet.bench import (  # noqa: E402  (the package imports no Paddle)
    ENGINES,
    default_options,
    format_summary,
    mode_names,
    plan_models,
    run_bench,
)
from senet.bench.options import PRECISION_CHOICES  # noqa: E402
from senet.config import ConfigError, split_override_args  # noqa: E402
from senet.runtime import setup_cpu  # noqa: E402  (must run before `import paddle`)


def _count(minimum: int) -> Callable[[str], int]:
    """An argparse type: an int of at least `minimum`."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    one, zero = _count(1), _count(0)
    d, full = default_options(), default_options(full=True)  # the presets, for the help texts
    modes = mode_names()
    p.add_argument(
        "-c",
        "--config",
        nargs="+",
        default=None,
        help="YAML configs or architecture names (default: "
        + " ".join(os.path.relpath(c, ROOT) for c in d.configs)
        + ")",
    )
    p.add_argument(
        "-o",
        "--override",
        nargs="+",
        action="append",
        default=[],
        help="key=value overrides applied to every config, e.g. model.num_classes=10",
    )
    p.add_argument(
        "--reductions",
        type=one,
        nargs="+",
        default=None,
        help="r values of each se_ config "
        f"(default {' '.join(map(str, d.reductions))}; the config's own r is always measured)",
    )
    p.add_argument(
        "--sweep-modes",
        nargs="*",
        choices=modes,
        default=None,
        help=f"dygraph modes that measure every r (default {' '.join(d.sweep_modes)}; --full: all)",
    )
    p.add_argument("--modes", nargs="+", choices=modes, default=None, help="default: all")
    p.add_argument("--engines", nargs="+", choices=ENGINES, default=None, help="default: all that are installed")
    p.add_argument(
        "--precisions",
        nargs="+",
        choices=PRECISION_CHOICES,
        default=None,
        help="exported engines' precisions (default: fp32 bf16 int8; bf16 only on CPUs with bf16 instructions, "
        "each engine only those it runs; auto: each engine's fastest native one, named in a notice)",
    )
    p.add_argument(
        "--emulate-bf16",
        action="store_true",
        default=None,
        help="also bf16 on a CPU without bf16 instructions, emulated by oneDNN / OpenVINO (slower than "
        "fp32: to measure what they do there)",
    )
    p.add_argument(
        "--calibration-images",
        type=one,
        default=None,
        help=f"images that calibrate the int8 exports ({d.calibration_images})",
    )
    p.add_argument(
        "--no-reference", dest="reference", action="store_false", default=None, help="leave out paddle.vision's model"
    )
    p.add_argument(
        "--train-batch",
        type=one,
        default=None,
        help=f"images per training step ({d.train_batch}; --full {full.train_batch})",
    )
    p.add_argument(
        "--infer-batch",
        type=one,
        default=None,
        help=f"images per inference call ({d.infer_batch}; --full {full.infer_batch})",
    )
    p.add_argument("--image-size", type=one, default=None, help=f"pixels ({d.image_size})")
    p.add_argument("--warmup-rounds", type=zero, default=None, help=f"untimed rounds per model ({d.warmup_rounds})")
    p.add_argument(
        "--repeats", type=one, default=None, help=f"timed rounds per model ({d.repeats}; --full {full.repeats})"
    )
    p.add_argument(
        "--steps",
        type=one,
        default=None,
        help=f"training steps or inference calls per round ({d.steps}; --full {full.steps})",
    )
    p.add_argument(
        "--latency-calls",
        type=one,
        default=None,
        help=f"batch-1 calls per round ({d.latency_calls}; --full {full.latency_calls})",
    )
    p.add_argument(
        "--amp", nargs="+", choices=("none", "O1", "O2"), default=None, help=f"GPU: AMP levels ({' '.join(d.amp)})"
    )
    p.add_argument("--dtypes", nargs="+", choices=("float16", "bfloat16"), default=None, help="GPU: AMP dtypes")
    p.add_argument("--data-formats", nargs="+", choices=("NCHW", "NHWC"), default=None, help="GPU: layouts")
    p.add_argument(
        "--no-memory",
        dest="memory",
        action="store_false",
        default=None,
        help="skip the peak-memory probes (one child process per model and engine)",
    )
    p.add_argument(
        "--loader-images", type=zero, default=None, help=f"images per loader repeat ({d.loader_images}; 0 = skip)"
    )
    p.add_argument("--threads", type=zero, default=0, help="CPU threads (0 = all cores)")
    p.add_argument("--out", dest="out_root", default=None, help=f"parent folder of the run ({d.out_root})")
    p.add_argument("--keep-export", action="store_true", default=None, help="keep the exported models")
    p.add_argument("--full", action="store_true", help="the paper's sizes (training batch 256, 224 px): for a GPU")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_cpu(args.threads)
    opts = default_options(args.full)
    given = {k: v for k, v in vars(args).items() if v is not None and k not in ("config", "override", "full")}
    opts = dataclasses.replace(opts, **given)
    if args.config:
        opts.configs = args.config
    opts.overrides = split_override_args(args.override)
    try:  # a bad config, override or model name fails here, before any work
        plan_models(opts.configs, opts.overrides, opts.reductions, opts.reference)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run_dir = run_bench(opts)
    print(format_summary(run_dir))
    print(f"\nresults, report and plots: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
