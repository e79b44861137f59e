"""Run by tests/test_distributed.py under `paddle.distributed.launch` (and once without it): train a
few epochs with the trainer's own pieces and save this rank's trainable weights to OUT/rank<r>.npz.

    python tests/dist_worker.py OUT key=value ...
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from senet.runtime import setup_cpu  # noqa: E402

setup_cpu(1)  # two ranks on two cores

import numpy as np  # noqa: E402
import paddle  # noqa: E402

from senet.config import load_config  # noqa: E402
from senet.distributed import world  # noqa: E402
from senet.engine import train_one_epoch, unwrap  # noqa: E402
from senet.runlog import RunLogger  # noqa: E402
from senet.train import setup  # noqa: E402


def main() -> None:
    out, overrides = sys.argv[1], sys.argv[2:]
    if paddle.distributed.get_world_size() > 1:
        paddle.distributed.init_parallel_env()
    cfg = load_config(os.path.join(ROOT, "configs", "demo", "se_resnet20_digits.yaml"), overrides)
    state, train_loader, _, _ = setup(cfg)
    rank, world_size = world()
    log = RunLogger(cfg, rank=rank, world_size=world_size)
    while state.epoch < cfg["train"]["epochs"]:
        train_one_epoch(state, train_loader, log, {})
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    weights = {k: v.numpy() for k, v in unwrap(state.model).state_dict().items()}
    np.savez(os.path.join(out, f"rank{rank}.npz"), **weights)
    log.close()


if __name__ == "__main__":
    main()
