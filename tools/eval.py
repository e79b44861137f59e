"""Evaluate weights on the val split: top-1 / top-5 / loss.

    .venv/bin/python tools/eval.py -c configs/demo/se_resnet20_digits.yaml \\
        -o model.weights=output/demo/se_resnet20_digits/model.safetensors
    .venv/bin/python tools/eval.py -c configs/demo/se_resnet20_digits.yaml \\
        -o model.weights=output/demo/se_resnet20_digits/checkpoints/best.pdparams --json
    .venv/bin/python tools/eval.py -c configs/demo/se_resnet20_digits.yaml \\
        --model output/demo/se_resnet20_digits/export --engine onnxruntime

model.weights is a .safetensors file, one of our .pdparams checkpoints, or a run folder (its
model.safetensors); --ema takes a checkpoint's EMA weights (train.ema.enabled). --model takes a
folder that tools/export.py wrote (by default it writes <output_dir>/export).
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
from senet.runtime import setup_cpu  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, override_help="key=value overrides; model.weights=PATH selects the weights")
    parser.add_argument("--ema", action="store_true", help="use the EMA weights of a checkpoint")
    parser.add_argument("--model", default=None, help="an exported model folder (tools/export.py) instead of weights")
    parser.add_argument("--engine", default="paddle", choices=["paddle", "onnxruntime"],
                        help="inference engine for --model")
    parser.add_argument("--json", action="store_true",
                        help="print JSON and write it to --out (default <output_dir>/eval*.json, see above)")
    parser.add_argument("--out", default=None, metavar="PATH", help="where --json writes the result")
    args = parser.parse_args()
    if args.out and not args.json:
        parser.error("--out is where --json writes its result: add --json")
    cfg = config_from_args(args)
    if not args.model and not cfg["model"]["weights"]:
        print("error: give the weights to evaluate with -o model.weights=PATH (a checkpoint or .safetensors), "
              "or an exported model with --model DIR", file=sys.stderr)
        return 2
    setup_cpu(cfg["train"]["threads"])

    import paddle

    from senet.checkpoint import CheckpointError, check_classes, load_weights
    from senet.data import DatasetError, build_loader
    from senet.device import device_notices
    from senet.resnet import build_model
    from senet.train import evaluate

    if paddle.distributed.get_world_size() > 1:  # launched: each rank evaluates its shard, metrics are summed
        paddle.distributed.init_parallel_env()
    rank, world_size = paddle.distributed.get_rank(), paddle.distributed.get_world_size()
    try:
        if args.model:
            from senet.inference import evaluate_exported

            result = evaluate_exported(args.model, cfg, engine=args.engine)
        else:
            env = device_notices(cfg)
            cfg["train"]["data_format"] = env["data_format"]
            model = build_model(cfg)
            classes = load_weights(model, cfg["model"]["weights"], trust=cfg["model"]["trust_pickle"],
                                   prefer_ema=args.ema, expected_arch=cfg["model"]["arch"])
            loader = build_loader(cfg, "val", rank=rank, world_size=world_size)
            check_classes(classes, [str(c) for c in loader.dataset.classes], cfg["model"]["weights"],
                          cfg["data"]["allow_class_change"])
            result = evaluate(model, loader, cfg, env["data_format"], env["amp"])
    except (DatasetError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if rank != 0:
        return 0
    if args.json:
        from senet.checkpoint import atomic_write

        result["source"] = ({"model": args.model, "engine": args.engine} if args.model else
                            {"weights": cfg["model"]["weights"], "ema": args.ema})
        name = f"eval_export_{args.engine}.json" if args.model else ("eval_ema.json" if args.ema else "eval.json")
        out = args.out or os.path.join(cfg["output_dir"], name)
        try:
            atomic_write(out, (json.dumps(result, indent=1) + "\n").encode())
        except OSError as e:
            print(f"error: could not write {out} ({e.strerror or e}); choose another file with --out PATH",
                  file=sys.stderr)
            return 1
        print(json.dumps(result))
        print(f"wrote {out}", file=sys.stderr)  # stderr: stdout stays one JSON line
    else:
        print(f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}  "
              f"({result['images']} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
