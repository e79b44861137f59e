"""Evaluate weights on the val split: top-1 / top-5 / loss.

    .venv/bin/python tools/eval.py -c configs/demo/se_resnet20_digits.yaml \\
        -o model.weights=output/demo/se_resnet20_digits/model.safetensors
    .venv/bin/python tools/eval.py -c configs/demo/se_resnet20_digits.yaml \\
        -o model.weights=output/demo/se_resnet20_digits/checkpoints/best.pdparams --json
    .venv/bin/python tools/eval.py -c configs/demo/se_resnet20_digits.yaml \\
        --model output/demo/se_resnet20_digits/export --engine onnxruntime
    .venv/bin/python tools/eval.py -c configs/demo/se_resnet20_digits.yaml \\
        --model output/demo/se_resnet20_digits/export --engine openvino --precision int8

model.weights is a .safetensors file, one of our .pdparams checkpoints, or a run folder (its
model.safetensors); --ema takes a checkpoint's EMA weights (train.ema.enabled). --model takes a
folder that tools/export.py wrote (by default it writes <output_dir>/export). --precision (with
--model): fp32, bf16, int8 or auto; below fp32 the result adds the fp32 model's top-1 and the share
of images whose top-1 class agrees with it, and a warning line where top-1 falls by more than 1 point.
--json prints the result as JSON and also writes it into the run folder, <output_dir>/eval.json
(eval_ema.json with --ema, eval_export_<engine>.json with --model), or to --out PATH.
The paths above are what `make demo` writes; tools/export.py writes the export folder.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from senet.config import add_config_args, config_from_args  # noqa: E402
from senet.inference import evaluate_exported
from senet.runtime import setup_cpu  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, override_help="key=value overrides; model.weights=PATH selects the weights")
    parser.add_argument("--ema", action="store_true", help="use the EMA weights of a checkpoint")
    parser.add_argument("--model", default=None, help="an exported model folder (tools/export.py) instead of weights")
    parser.add_argument(
        "--engine", default="paddle", choices=["paddle", "onnxruntime", "openvino"], help="inference engine for --model"
    )
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "int8", "auto"],
        help="precision for --model (int8: the export's int8 model)",
    )
    parser.add_argument(
        "--emulate-bf16",
        action="store_true",
        help="with --precision bf16 on a CPU without bf16 instructions: run the engine's emulation "
        "(slower than fp32) to measure bf16's accuracy there",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print JSON and write it to --out (default <output_dir>/eval*.json, see above)",
    )
    parser.add_argument("--out", default=None, metavar="PATH", help="where --json writes the result")
    args = parser.parse_args()
    if args.out and not args.json:
        parser.error("--out is where --json writes its result: add --json")
    if args.precision != "fp32" and not args.model:
        parser.error("--precision applies to an exported model: add --model DIR (tools/export.py writes one)")
    cfg = config_from_args(args)
    if not args.model and not cfg["model"]["weights"]:
        print(
            "error: give the weights to evaluate with -o model.weights=PATH (a checkpoint or .safetensors), "
            "or an exported model with --model DIR",
            file=sys.stderr,
        )
        return 2
    setup_cpu(cfg["train"]["threads"])

    import paddle

    from senet.checkpoint import CheckpointError, check_classes, load_weights
    from senet.data import DatasetError, build_loader
    from senet.device import device_notices
    from senet.engine import evaluate
    from senet.resnet import build_model

    if paddle.distributed.get_world_size() > 1:  # launched: each rank evaluates its shard, metrics are summed
        paddle.distributed.init_parallel_env()
    rank, world_size = paddle.distributed.get_rank(), paddle.distributed.get_world_size()
    try:
        if args.model:
            result = evaluate_exported(
                args.model, cfg, engine=args.engine, precision=args.precision, emulate_bf16=args.emulate_bf16
            )
        else:
            env = device_notices(cfg)
            cfg["train"]["data_format"] = env["data_format"]
            model = build_model(cfg)
            classes = load_weights(
                model,
                cfg["model"]["weights"],
                trust=cfg["model"]["trust_pickle"],
                prefer_ema=args.ema,
                expected_arch=cfg["model"]["arch"],
            )
            loader = build_loader(cfg, "val", rank=rank, world_size=world_size)
            check_classes(
                classes,
                [str(c) for c in loader.dataset.classes],
                cfg["model"]["weights"],
                cfg["data"]["allow_class_change"],
            )
            result = evaluate(model, loader, cfg, env["data_format"], env["amp"])
    except (DatasetError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if rank != 0:
        return 0
    if args.json:
        from senet.checkpoint import atomic_write

        result["source"] = (
            {"model": args.model, "engine": args.engine, "precision": args.precision}
            if args.model
            else {"weights": cfg["model"]["weights"], "ema": args.ema}
        )
        suffix = "" if args.precision == "fp32" else f"_{args.precision}"
        name = f"eval_export_{args.engine}{suffix}.json" if args.model else "eval_ema.json" if args.ema else "eval.json"
        out = args.out or os.path.join(cfg["output_dir"], name)
        try:
            atomic_write(out, (json.dumps(result, indent=1) + "\n").encode())
        except OSError as e:
            print(
                f"error: could not write {out} ({e.strerror or e}); choose another file with --out PATH",
                file=sys.stderr,
            )
            return 1
        print(json.dumps(result))
        print(f"wrote {out}", file=sys.stderr)  # stderr: stdout stays one JSON line
    else:
        agreement = (
            f"  agrees with fp32 {result['agrees_with_fp32']:.2f}% (fp32 top-1 {result['fp32_top1']:.2f}%)"
            if "agrees_with_fp32" in result
            else ""
        )
        print(
            f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}  "
            f"({result['images']} images{', ' + result['precision'] if args.model else ''}){agreement}"
        )
    if "warning" in result:
        print(f"warning: {result['warning']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
