"""Train a ResNet or SE-ResNet from a YAML config.

    .venv/bin/python tools/train.py -c configs/demo/se_resnet20_digits.yaml
    .venv/bin/python tools/train.py -c configs/demo/se_resnet20_digits.yaml --resume auto
    .venv/bin/python tools/train.py -c configs/se_resnet50.yaml -o data.root=/data/ILSVRC2012
    .venv/bin/python -m paddle.distributed.launch --gpus 0,1,2,3 tools/train.py -c configs/se_resnet50.yaml

Runs write into the config's output_dir (default output/<name>; output/demo/<name> for the demo
configs). The ImageNet ones need the dataset first (docs/data.md), the launch line 4 GPUs.
"""

import argparse
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from senet.config import add_config_args, config_from_args  # noqa: E402
from senet.data.errors import DatasetError
from senet.formats import CheckpointError
from senet.limits import os_error_fix
from senet.runtime import STOP_SIGNALS, setup_cpu  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument(
        "--resume",
        default=None,
        metavar="auto|PATH",
        help="'auto': the newest usable checkpoint in output_dir; or a checkpoint path",
    )
    parser.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume although the config now differs in what makes the experiment (model, data, "
        "optimizer, schedule, batch size, ...); harmless changes such as epochs need no flag",
    )
    args = parser.parse_args()
    cfg = config_from_args(args)
    setup_cpu(cfg["train"]["threads"])  # before paddle is imported: it would pin OpenMP to one thread

    import paddle

    from senet.train import TrainingError, fit

    if paddle.distributed.get_world_size() > 1:
        paddle.distributed.init_parallel_env()
    try:
        metrics = fit(cfg, resume=args.resume, allow_config_change=args.allow_config_change)
    except (DatasetError, CheckpointError, TrainingError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a write outside a checkpoint (train.log, config.yaml, VisualDL) on a failing disk
        print(f"error: {e.filename or cfg['output_dir']}: {e.strerror or e}. {os_error_fix(e)}", file=sys.stderr)
        return 1
    if metrics.get("stopped_by") not in (None, "max_steps"):
        # The run is saved and on its way out: more stop signals have nothing to add, and dying of one
        # now would replace the exit code (paddle.distributed.launch SIGTERMs the other ranks as soon
        # as the first one exits non-zero).
        for s in STOP_SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        # Saved and stopped by a signal: exit 128 + the signal number, as the shell reports a process
        # the signal killed, so schedulers and `train && eval` scripts see an unfinished run, not
        # success: 143 for SIGTERM, 130 for SIGINT, 138 for SIGUSR1, the code a requeue script tests
        # for (scripts/slurm_requeue.sbatch, docs/slurm.md).
        return 128 + signal.Signals[metrics["stopped_by"]].value
    best = metrics.get("best")
    if best and metrics["finished"] and paddle.distributed.get_rank() == 0:  # max_steps said where it stopped
        print(
            f"best val top-1 {best['top1']:.2f}% (top-5 {best['top5']:.2f}%) at epoch {best['epoch']}; "
            f"run folder {cfg['output_dir']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
