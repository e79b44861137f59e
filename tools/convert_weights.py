"""Convert timm, torchvision and PaddleClas weights to this project's models, or ours to timm.

    .venv/bin/python tools/convert_weights.py --from timm legacy_seresnet50.safetensors --out weights/legacy_seresnet50
    .venv/bin/python tools/convert_weights.py --from torchvision resnet50-11ad3fa6.pth --out weights/tv_resnet50
    .venv/bin/python tools/convert_weights.py --from paddleclas SE_ResNeXt50_32x4d_pretrained.pdparams --out weights/pc
    .venv/bin/python tools/convert_weights.py --from auto FILE --out DIR --arch se_resnet50   # refuse anything else
    .venv/bin/python tools/convert_weights.py --to timm output/se_resnet50/model.safetensors --out weights/timm_se50

OUT_DIR gets model.safetensors and config.yaml (ready for tools/eval.py -c OUT_DIR/config.yaml,
tools/export.py, tools/infer.py, or fine-tuning with -o model.weights=OUT_DIR/model.safetensors).
--to timm writes model.safetensors in timm's layout and timm_model.txt with the timm model to load it
into. Pickles are read without running their code. Exit codes: 0 done, 1 the file cannot be converted,
2 a command-line mistake. See docs/weights.md.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from senet.config import ConfigError, load_config
from senet.runtime import (
    Interrupted,
    exit_cleanly_on_signals,
    setup_cpu,  # noqa: E402
)
from senet.weights.convert import ConversionError, convert_to_dir, export_timm


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    way = parser.add_mutually_exclusive_group(required=True)
    way.add_argument(
        "--from",
        dest="source",
        choices=["auto", "timm", "torchvision", "paddleclas"],
        help="the source of FILE; auto detects it from the file's format and keys",
    )
    way.add_argument("--to", choices=["timm"], help="export our weights (FILE: .safetensors or checkpoint)")
    parser.add_argument("file", metavar="FILE", help="the weights file to convert")
    parser.add_argument("--out", required=True, metavar="OUT_DIR", help="a new (or empty) folder for the result")
    parser.add_argument("--arch", default=None, help="with --from: refuse the file unless it holds this arch")
    parser.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="with --from: refuse the file unless its classifier has this many classes",
    )
    parser.add_argument(
        "-c",
        "--config",
        default=None,
        help="with --to: the config the weights were trained with (default: the one recorded in FILE's metadata)",
    )
    args = parser.parse_args()
    if args.to and (args.arch or args.num_classes):
        parser.error("--arch and --num-classes go with --from")
    if args.source and args.config:
        parser.error("-c goes with --to (a conversion writes its own config)")
    setup_cpu(1)
    exit_cleanly_on_signals()  # a SIGTERM removes the temporary folder instead of aborting in Paddle's handler

    try:
        if args.to:
            cfg = None
            if args.config:
                try:
                    cfg = load_config(args.config)
                except ConfigError as e:
                    print(f"config error: {e}", file=sys.stderr)
                    return 2
            done = export_timm(args.file, args.out, cfg)
            print(
                f"wrote {done['out_dir']}/model.safetensors: {done['tensors']} tensors for timm's "
                f"{done['timm_model']} (see timm_model.txt)"
            )
            return 0
        done = convert_to_dir(args.file, args.out, args.source, args.arch, args.num_classes)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Interrupted as e:
        print(f"error: stopped by signal {e.signum}; nothing was written to {args.out}", file=sys.stderr)
        return e.code
    m = done["model"]
    print(
        f"wrote {done['out_dir']}: {m['arch']}, {m['num_classes']} classes, stride_in_1x1={m['stride_in_1x1']}, "
        f"stem_pool={m['stem_pool']} ({done['tensors']} tensors, {done['params']:,} parameters; "
        f"{done['dropped']} num_batches_tracked counters left out)"
    )
    print(f"evaluate: .venv/bin/python tools/eval.py -c {done['out_dir']}/config.yaml -o data.root=PATH")
    return 0


if __name__ == "__main__":
    sys.exit(main())
