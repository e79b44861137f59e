"""Look inside the attention gates (SE, ECA, CBAM): channel-gate statistics and plots (Hu et al., Section 7.2).

    .venv/bin/python tools/analyze_gates.py -c configs/demo/se_resnet20_digits.yaml \\
        -o model.weights=output/demo/se_resnet20_digits
    .venv/bin/python tools/analyze_gates.py -c configs/demo/se_resnet20_digits.yaml \\
        -o model.weights=output/demo/se_resnet20_digits/model.safetensors --classes 0 3 7 --out /tmp/se_digits
    .venv/bin/python tools/analyze_gates.py -c configs/se_resnet50.yaml -o model.weights=output/se_resnet50 \\
        --classes n01443537 n09246464 --blocks SE_2_3 SE_3_4 SE_4_6 SE_5_1 SE_5_2 SE_5_3
    .venv/bin/python tools/analyze_gates.py -c configs/eca_resnet50.yaml -o model.weights=output/eca_resnet50 \\
        --blocks ECA_4_6 ECA_5_3

The demo paths are what `make demo` writes; output/se_resnet50 is the run folder of
`tools/train.py -c configs/se_resnet50.yaml` (ImageNet, see docs/data.md). A run folder as
model.weights means its model.safetensors. Every block kind's channel gates (SE's s, ECA's w, CBAM's
channel map M_c) get the same summaries, labelled after the kind (SE_4_2, ECA_4_2, CBAM_4_2). Writes
fig6_class_excitations.png (the paper's Figure 6), fig7_depth_distribution.png (our depth summary; the
paper's Figure 7 is class_std in se_stats.npz), se_stats.json, se_stats.npz and summary.txt to --out
(default the run folder: <output_dir>/se_analysis; "se" is the attention slot's name for every kind),
and prints the summary. tools/analyze_se.py is the same tool under its earlier name. See docs/analysis.md.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from senet.config import add_config_args, config_from_args  # noqa: E402
from senet.data.errors import DatasetError
from senet.runtime import setup_cpu  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(
        parser,
        "YAML config of an se_, eca_ or cbam_ model",
        "key=value overrides; model.weights=PATH selects the trained weights",
    )
    parser.add_argument("--split", default="val", choices=["train", "val"])
    parser.add_argument(
        "--samples",
        type=int,
        default=1000,
        help="images drawn uniformly from the split for the distributions (default 1000)",
    )
    parser.add_argument(
        "--classes",
        nargs="+",
        default=None,
        help="class names or indices for Figure 6 (default: 4 spread over the labels)",
    )
    parser.add_argument("--per-class", type=int, default=50, help="images per chosen class (default 50)")
    parser.add_argument(
        "--blocks",
        nargs="+",
        default=None,
        help="blocks for Figure 6: layer3.1, layer3.1.se or the paper-style SE_4_2 (ECA_4_2, CBAM_4_2) "
        "(default: last of each stage, first/middle/last of the last stage)",
    )
    parser.add_argument("--out", default=None, help="output folder (default <output_dir>/se_analysis)")
    parser.add_argument("--raw", action="store_true", help="also save every channel-gate vector (excitations.npz)")
    args = parser.parse_args()
    if args.samples < 1 or args.per_class < 0:
        parser.error("--samples must be >= 1 and --per-class >= 0")
    cfg = config_from_args(args)
    setup_cpu(cfg["train"]["threads"])

    from senet.analysis import analyze, summary_text
    from senet.checkpoint import CheckpointError

    if not cfg["model"]["weights"]:
        print(
            "notice: no model.weights given, analysing a randomly initialised model (fine for a smoke "
            "test; the statistics say nothing about a trained network). Use -o model.weights=PATH."
        )
    try:
        report = analyze(cfg, args.split, args.samples, args.classes, args.blocks, args.per_class, args.out, args.raw)
    except (DatasetError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary_text(report), end="")
    print(f"\nwrote {', '.join(sorted(report['paths']))} to {os.path.dirname(report['paths']['summary.txt'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
