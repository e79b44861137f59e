"""`build_loader`: the loader of a split, ours (senet.data.loader) or NVIDIA DALI's (senet.data.dali).

It lives above both modules because the DALI loader reuses ours (its sampler, its empty batch).
"""

from __future__ import annotations

import os
import sys

from senet.data.dali import DaliLoader, require_dali
from senet.data.datasets import build_dataset
from senet.data.errors import DatasetError
from senet.data.loader import Loader, ShardedBatchSampler

_NOTICES_PRINTED: set[str] = set()


def build_loader(cfg: dict, split: str, rank: int = 0, world_size: int = 1) -> Loader | DaliLoader:
    """The loader of `split` for one rank: train shuffled and drop_last, val in order and complete.

    data.loader picks ours (`Loader`) or NVIDIA DALI's (`senet.data.dali.DaliLoader`, image folders only:
    the in-memory sources fall back to ours with a one-line notice). Both have the same interface.
    """
    d, train = cfg["data"], split == "train"
    dali = d["loader"] == "dali" and d["name"] == "imagenet"
    if dali:
        require_dali()  # before the index scan: a missing install is the first thing to hear about
    elif d["loader"] == "dali":
        _notice(
            f"notice: data.loader=dali reads image files; data.name={d['name']} is held in memory, so "
            "the paddle loader serves it"
        )
    dataset = build_dataset(cfg, split)
    sampler = ShardedBatchSampler(
        len(dataset), d["batch_size"], rank, world_size, shuffle=train, seed=cfg["train"]["seed"]
    )
    if train and len(sampler) == 0:
        raise DatasetError(
            f"the train split has {len(dataset)} images, fewer than one batch of data.batch_size "
            f"{d['batch_size']} on each of {world_size} device(s); lower data.batch_size"
        )
    if dali:
        return DaliLoader(dataset, sampler, d["num_workers"], d["on_bad_image"], d)
    return Loader(dataset, sampler, d["num_workers"], d["on_bad_image"])


def _notice(message: str) -> None:
    """Print a notice to stderr once per process, on rank 0 only."""
    if message not in _NOTICES_PRINTED and os.environ.get("PADDLE_TRAINER_ID", "0") == "0":
        _NOTICES_PRINTED.add(message)
        print(message, file=sys.stderr, flush=True)
