"""Run by tests/test_train.py under `paddle.distributed.launch`: tests/dist_worker.py, with the training
loss made NaN on rank 1 only, at the global steps given in NAN_STEPS (comma-separated, 1-based).

    python -m paddle.distributed.launch --nproc_per_node 2 tests/dist_nan_worker.py OUT key=value ...
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dist_worker  # noqa: E402  (sets the threads before paddle is imported)
import paddle  # noqa: E402

from senet import step as step_mod  # noqa: E402

NAN_STEPS = {int(s) for s in os.environ["NAN_STEPS"].split(",")}
real_forward_loss = step_mod.forward_loss


def forward_loss(parts, images, targets, train=True):
    logits, loss = real_forward_loss(parts, images, targets, train)
    # The LR scheduler counts the steps done (as in tests/test_reliability.nan_loss_at).
    if train and paddle.distributed.get_rank() == 1 and parts.scheduler.last_epoch + 1 in NAN_STEPS:
        loss = loss * float("nan")
    return logits, loss


step_mod.forward_loss = forward_loss

if __name__ == "__main__":
    dist_worker.main()
