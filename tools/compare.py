"""Compare models side by side: parameters, GMACs, the attention blocks' share, and accuracy from training runs.

    .venv/bin/python tools/compare.py -c configs/resnet50.yaml configs/se_resnet50.yaml --paper
    .venv/bin/python tools/compare.py -c configs/se_resnet50.yaml configs/eca_resnet50.yaml \
        configs/cbam_resnet50.yaml --paper
    .venv/bin/python tools/compare.py -c configs/demo/*.yaml --runs output/demo/* --format md   # after make demo
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from senet.compare import build_rows, format_rows
from senet.config import ConfigError, split_override_args  # noqa: E402
from senet.runtime import setup_cpu  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", nargs="+", default=[], help="YAML configs, one row each")
    parser.add_argument(
        "-o",
        "--override",
        nargs="+",
        action="append",
        default=[],
        help="key=value overrides applied to every config, e.g. model.se.reduction=8",
    )
    parser.add_argument("--runs", nargs="+", default=[], help="run directories (from tools/train.py)")
    parser.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="pixels for the multiply-add count (default: each config's data.eval_crop)",
    )
    parser.add_argument("--format", choices=["table", "md", "csv", "json"], default="table")
    parser.add_argument(
        "--paper",
        action="store_true",
        help="add each paper's figures (SE: Hu et al. Table 2; ECA; CBAM; RSB A1-A3 for ResNet-50) beside "
        "configs with exactly its setup, and name the source",
    )
    args = parser.parse_args()
    if not args.config and not args.runs:
        parser.error("give at least one -c CONFIG or --runs RUN_DIR")
    setup_cpu(0)
    try:
        rows = build_rows(args.config, split_override_args(args.override), args.runs, args.input_size, args.paper)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_rows(rows, args.format))
    if args.format in ("table", "md"):
        print(
            "\nGMACs are multiply-adds for one image (the SENet paper's 'GFLOPs'); GFLOPs = 2 x GMACs. "
            "params exclude BatchNorm running statistics; 'incl. BN stats' counts them as paddle.summary does. "
            "r / k: the reduction ratio (SE, CBAM) or ECA's kernel size per stage. attn: inside the attention "
            "blocks, their pooling and scaling counted too (docs/analysis.md says where the papers count less)."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
