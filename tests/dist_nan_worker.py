"""Run by tests/test_train.py under `paddle.distributed.launch`: tests/dist_worker.py, with the training
loss made NaN on rank 1 only, at the global steps given in NAN_STEPS (comma-separated, 1-based).

    python -m paddle.distributed.launch --nproc_per_node 2 tests/dist_nan_worker.py OUT key=value ...
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dist_worker  # noqa: E402  (sets the threads before paddle is imported)
import paddle  # noqa: E402

from senet import train as train_mod  # noqa: E402

NAN_STEPS = {int(s) for s in os.environ["NAN_STEPS"].split(",")}
real_forward_loss = train_mod._forward_loss


def forward_loss(state, images, labels, train):
    logits, loss = real_forward_loss(state, images, labels, train)
    if train and paddle.distributed.get_rank() == 1 and state.global_step + 1 in NAN_STEPS:
        loss = loss * float("nan")
    return logits, loss


train_mod._forward_loss = forward_loss

if __name__ == "__main__":
    dist_worker.main()
