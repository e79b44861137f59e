"""Export trained weights for deployment: Paddle Inference, ONNX, int8 ONNX, safetensors, plus inference.yml.

    .venv/bin/python tools/export.py -c configs/demo/se_resnet20_digits.yaml \\
        -o model.weights=output/demo/se_resnet20_digits
    .venv/bin/python tools/export.py -c configs/demo/se_resnet20_digits.yaml \\
        -o model.weights=output/demo/se_resnet20_digits/checkpoints/best.pdparams --format onnx --output /tmp/digits
    .venv/bin/python tools/export.py -c configs/se_resnet50.yaml -o model.weights=output/se_resnet50

The demo paths are what `make demo` writes; output/se_resnet50 is the run folder of
`tools/train.py -c configs/se_resnet50.yaml` (ImageNet, see docs/data.md). A run folder as
model.weights means its model.safetensors. Formats: paddle (model.json + model.pdiparams), onnx
(model.onnx), int8 (model.int8.onnx, quantised and calibrated on --calibration-images training
images), safetensors (model.safetensors), all (default; int8 is skipped with a notice when the
training images cannot be read). bf16 needs no file: the engines convert fp32. Output: --output DIR, default the
run folder's export/ (<output_dir>/export, e.g. output/demo/se_resnet20_digits/export), which
tools/infer.py --model and tools/eval.py --model take. See docs/export.md.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from senet.config import add_config_args, config_from_args  # noqa: E402
from senet.runtime import (
    Interrupted,
    exit_cleanly_on_signals,
    setup_cpu,  # noqa: E402
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(
        parser,
        "the YAML config the weights were trained with",
        "key=value overrides, e.g. model.weights=PATH (required)",
    )
    parser.add_argument("--format", nargs="+", default=["all"], help="paddle, onnx, int8, safetensors or all (default)")
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=None,
        help="training images that calibrate the int8 model (default 256)",
    )
    parser.add_argument("--output", default=None, help="output folder (default: <output_dir>/export)")
    args = parser.parse_args()
    cfg = config_from_args(args)
    setup_cpu(cfg["train"]["threads"])
    from senet.checkpoint import CheckpointError
    from senet.export import ExportError, export, parse_formats

    exit_cleanly_on_signals()  # a SIGTERM removes the temporary folder instead of aborting in Paddle's handler
    output = args.output or os.path.join(cfg["output_dir"], "export")
    try:
        formats = parse_formats(args.format)
        named = {part.strip().lower() for name in args.format for part in name.split(",")}
        info = export(
            cfg, output, formats, calibration_images=args.calibration_images, int8_optional="int8" not in named
        )  # "all" skips int8 where no training images are at hand
    except (ExportError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"error: stopped by signal {e.signum}; {output} is as it was", file=sys.stderr)
        return e.code
    for fmt, entry in info["files"].items():
        names = [v for k, v in entry.items() if k in ("model", "params")] if isinstance(entry, dict) else [entry]
        print(f"{fmt:12s} {', '.join(os.path.join(output, n) for n in names)}")
    print(
        f"{'info':12s} {os.path.join(output, 'inference.yml')} ({info['preprocess']['resize']} -> "
        f"{info['preprocess']['crop']} px, {info['num_classes']} classes from {info['class_names_from']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
