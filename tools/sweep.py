"""Train a list of configs x seeds into one folder, then print and write the table in the paper's shape.

    .venv/bin/python tools/sweep.py -c configs/ablation/se_resnet50_reduction_*.yaml --seeds 0 1 2 \\
        --out output/sweeps/reduction -o data.root=/data/ILSVRC2012
    .venv/bin/python tools/sweep.py -c configs/resnet50.yaml configs/se_resnet50.yaml --nproc 8 \\
        --out output/sweeps/table2
    .venv/bin/python tools/sweep.py -c CFG1 CFG2 --out DIR --table-only     # just (re)build the table
    .venv/bin/python tools/sweep.py -c configs/demo/*.yaml -o train.epochs=5 --jobs 2 --out output/sweeps/digits
        # no dataset needed: ResNet-20 and its SE, ECA and CBAM twins on the digits, 3 seeds, ~20 min (docs/sweep.md)

The ImageNet ones need the dataset first (docs/data.md).

Runs go to <out>/<config name>/seed<S>. Rerun the same command after an interruption: finished runs
are skipped and unfinished ones resume from their last checkpoint. The table (error = 100 - accuracy,
mean ± std over seeds) is written to <out>/results.{md,csv,json}. See scripts/sweep.sh for the
paper's ablation tables.
"""

import argparse
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from senet import sweep
from senet.config import ConfigError, split_override_args  # noqa: E402
from senet.runtime import setup_cpu  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", nargs="+", required=True, help="YAML configs, one table row each")
    parser.add_argument(
        "-o",
        "--override",
        nargs="+",
        action="append",
        default=[],
        help="key=value overrides passed to every run, e.g. data.root=/data/imagenet",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="train.seed values (default 0 1 2)")
    parser.add_argument("--out", required=True, help="sweep folder: runs, results.md/.csv/.json")
    parser.add_argument(
        "--nproc",
        type=int,
        default=0,
        help="processes per run through paddle.distributed.launch (default: one plain process)",
    )
    parser.add_argument("--devices", default=None, help="devices for paddle.distributed.launch, e.g. 0,1,2,3")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs trained at once, each with cores // jobs threads (default 1; 2 on a 2-core CPU "
        "trains the digits sweep about 1.4x faster)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print each run's state and command; train nothing")
    parser.add_argument("--table-only", action="store_true", help="train nothing; build the table from finished runs")
    args = parser.parse_args()
    overrides = split_override_args(args.override)
    if args.jobs < 1:
        print(f"error: --jobs must be at least 1, got {args.jobs}", file=sys.stderr)
        return 2
    try:
        runs = sweep.plan(args.config, args.seeds, args.out, overrides)
        sweep.check_recipes(runs, overrides)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        for run in runs:
            state = sweep.status(run.output_dir)
            cmd = sweep.train_command(run, overrides, state == "unfinished", args.nproc, args.devices)
            print(f"{state:<10}  {' '.join(cmd) if state != 'finished' else run.output_dir}")
        return 0
    outcome = {"failed": [], "interrupted": []}
    if not args.table_only:
        outcome = sweep.run_sweep(runs, overrides, args.nproc, args.devices, jobs=args.jobs)
    if outcome["interrupted"]:  # stop now; the table is built when the sweep completes (or with --table-only)
        return 128 + int(outcome.get("signal", signal.SIGINT))  # 130 SIGINT, 143 SIGTERM, 138 SIGUSR1, 129 SIGHUP
    setup_cpu(0)  # the table profiles each model once, in this process
    rows = sweep.sweep_rows(runs, overrides)
    try:
        table = sweep.write_table(rows, args.out)["md"]
    except OSError as e:  # a full or read-only disk: the previous table, if any, is still whole
        print(f"error: cannot write the table into {args.out}: {e.strerror or e}", file=sys.stderr)
        return 1
    print("\n" + table, end="")
    print(f"wrote {os.path.join(args.out, 'results')}.{{md,csv,json}}")
    missing = [r for r in runs if sweep.status(r.output_dir) != "finished"]
    if missing:
        print(
            f"{len(missing)} of {len(runs)} runs not finished, left out of the table: "
            + ", ".join(f"{r.name}/seed{r.seed}" for r in missing),
            file=sys.stderr,
        )
    return 1 if outcome["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
