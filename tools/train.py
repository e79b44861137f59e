"""Train a ResNet or SE-ResNet from a YAML config.

    python tools/train.py -c configs/se_resnet50.yaml -o data.root=/data/imagenet
    python tools/train.py -c configs/demo/se_resnet20_digits.yaml --resume auto
    python -m paddle.distributed.launch --gpus 0,1,2,3 tools/train.py -c configs/se_resnet50.yaml
"""

import argparse
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from senet.config import add_config_args, config_from_args  # noqa: E402
from senet.runtime import setup_cpu  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--resume", default=None, metavar="auto|PATH",
                        help="'auto': the newest usable checkpoint in output_dir; or a checkpoint path")
    args = parser.parse_args()
    cfg = config_from_args(args)
    setup_cpu(cfg["train"]["threads"])  # before paddle is imported: it would pin OpenMP to one thread

    import paddle

    from senet.checkpoint import CheckpointError
    from senet.data import DatasetError
    from senet.train import TrainingError, fit

    if paddle.distributed.get_world_size() > 1:
        paddle.distributed.init_parallel_env()
    try:
        metrics = fit(cfg, resume=args.resume)
    except (DatasetError, CheckpointError, TrainingError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if metrics.get("stopped_by"):
        # Saved and stopped early: exit 128 + the signal number, as the shell reports a process the
        # signal killed, so schedulers and `train && eval` scripts see an unfinished run, not success.
        return 128 + signal.Signals[metrics["stopped_by"]].value
    best = metrics.get("best")
    if best and paddle.distributed.get_rank() == 0:
        print(f"best val top-1 {best['top1']:.2f}% (top-5 {best['top5']:.2f}%) at epoch {best['epoch']}; "
              f"run folder {cfg['output_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
