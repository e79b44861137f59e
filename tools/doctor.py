"""Check this machine: what it is, and whether every path of the trainer it can run works (about a minute).

    make doctor
    .venv/bin/python tools/doctor.py
    .venv/bin/python tools/doctor.py --out /tmp/doctor --keep
    .venv/bin/python tools/doctor.py --only fit,fit_resume

Prints the machine (Paddle's build, GPUs, CPU, packages, threads), then one line per check: PASS,
FAIL or SKIP, the seconds it took, the reason and, for a FAIL, the fix. Writes --out/doctor.json
(default output/doctor/doctor.json): attach it to a bug report. Exits 1 if a check failed, else 0.
On a GPU the checks train se_resnet50 at batch 32, 224 px; on a CPU at batch 8, 64 px. See docs/doctor.md.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from senet.doctor import doctor
from senet.runtime import setup_cpu  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out",
        default="output/doctor",
        metavar="DIR",
        help="folder for doctor.json (and the checks' files with --keep); default output/doctor",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the checks' files (checkpoints, exported model, logs) in DIR/work"
    )
    parser.add_argument(
        "--only", default=None, metavar="NAME[,NAME]", help="run only these checks (the others are listed as SKIP)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="every check on a small network (the demo's se_resnet20), for tests; not what users run",
    )
    parser.add_argument("--threads", type=int, default=0, help="CPU threads; 0 = SENET_THREADS or every core")
    args = parser.parse_args()
    setup_cpu(args.threads)  # before paddle is imported: it would pin OpenMP to one thread

    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    try:
        return doctor(args.out, keep=args.keep, only=only, quick=args.quick)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
