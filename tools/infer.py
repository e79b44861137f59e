"""Classify image files with an exported model (tools/export.py), in batches.

    .venv/bin/python tools/infer.py --model output/demo/se_resnet20_digits/export \\
        --images data/fake/imagenet/val/n00000000 data/fake/imagenet/val/n00000001/n00000001_0000.JPEG
    .venv/bin/python tools/infer.py --model DIR --images PHOTOS_DIR --engine onnxruntime --topk 1 --json
    .venv/bin/python tools/infer.py --model DIR --images PHOTOS_DIR --engine openvino --precision int8

--model is a folder that tools/export.py wrote (by default <output_dir>/export; the path above
after `make demo` and tools/export.py -c configs/demo/se_resnet20_digits.yaml
-o model.weights=output/demo/se_resnet20_digits). scripts/make_fake_data.py --out data/fake writes
the images above. --precision: fp32 (default), bf16 (paddle, openvino; on a CPU without bf16
instructions a notice, and fp32), int8 (onnxruntime, openvino; the export's model.int8.onnx) or auto
(the fastest this CPU runs natively; a notice says which). docs/export.md has the details.

A folder means the image files directly inside it. A file that cannot be read or decoded is
reported by name on stderr and the others are still predicted; the exit code is 1 if any
failed, 2 if the model could not be loaded, 0 otherwise.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from senet.imagenet_classes import imagenet_classes
from senet.inference import EngineError, Predictor, list_images, predict_files
from senet.runtime import setup_cpu  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="folder written by tools/export.py")
    parser.add_argument("--images", nargs="+", required=True, help="image files and/or folders of images")
    parser.add_argument("--engine", choices=["paddle", "onnxruntime", "openvino"], default="paddle")
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16", "int8", "auto"],
        default="fp32",
        help="fp32 (default), bf16, int8 (the export's int8 model) or auto",
    )
    parser.add_argument(
        "--hint",
        choices=["latency", "throughput"],
        default="latency",
        help="OpenVINO's performance hint (openvino engine)",
    )
    parser.add_argument("--topk", type=int, default=5, help="classes shown per image")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads, 0 = all cores")
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu, gpu (this process's GPU: the rank's own under paddle.distributed.launch, else 0) or "
        "gpu:N; a GPU request falls back to cpu with a notice where there is none",
    )
    parser.add_argument("--bf16", action="store_true", help="the same as --precision bf16")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--imagenet-names",
        action="store_true",
        help="label a 1000-class model with the ImageNet class names (exports of ImageNet "
        "configs, converted weights included, carry them already)",
    )
    args = parser.parse_args()
    if args.topk < 1 or args.batch_size < 1:
        parser.error("--topk and --batch-size must be at least 1")
    setup_cpu(args.threads)
    try:
        predictor = Predictor(
            args.model, args.engine, args.threads, "bf16" if args.bf16 else args.precision, args.device, args.hint
        )
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.imagenet_names:
        if len(predictor.class_names) != 1000:
            print(
                f"error: --imagenet-names needs a 1000-class model; {args.model} has "
                f"{len(predictor.class_names)} classes",
                file=sys.stderr,
            )
            return 2
        predictor.class_names = imagenet_classes()
    files, failures = list_images(args.images)
    try:
        results, bad = predict_files(predictor, files, args.batch_size, args.topk)
    except EngineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failures += bad
    if args.json:
        print(json.dumps({"predictions": results, "failed": failures}, indent=1))
    else:
        width = max([len(r["file"]) for r in results] + [4])
        print(f"{'file':{width}s}  rank  {'score':>6s}  label")
        for r in results:
            for rank, p in enumerate(r["predictions"], 1):
                print(f"{r['file']:{width}s}  {rank:4d}  {p['score']:6.4f}  {p['label']}")
    for f in failures:
        print(f"failed: {f['file']}: {f['error']}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} of {len(results) + len(failures)} inputs failed", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
