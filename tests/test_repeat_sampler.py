"""Repeated augmentation (issue 25): ShardedBatchSampler(repeats=k) is timm's RepeatAugSampler.

timm draws its permutation with torch.randperm and ours with numpy, so the orders are compared given the
same permutation: the fixture (scripts/make_augment_fixtures.py, tests/fixtures/recipes/augment_sampler.npz)
holds torch's permutation and timm's index list for each dataset size, world size, rank, repeat count and
epoch. The rest are properties: every image k times in the stream, copies on different ranks, equal
lengths, determinism, exact mid-epoch resume through the real loader, and the default unchanged.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from senet.config import load_config
from senet.data.datasets import ArrayDataset, make_synthetic
from senet.data.loader import Loader, ShardedBatchSampler, repeated_positions

FIXTURE = np.load(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "recipes", "augment_sampler.npz")
)


def test_index_order_equals_timms_for_the_same_permutation():
    rows = FIXTURE["rows"]
    assert len(rows) == 4 * 2 * (1 + 2 + 3 + 4) * 2  # sizes x repeats x ranks over world sizes x epochs
    for n, repeats, world, rank, epoch, start, length in rows:
        perm = FIXTURE[f"perm_{n}_{epoch}"]
        sampler = ShardedBatchSampler(int(n), 1, int(rank), int(world), shuffle=True, seed=0, repeats=int(repeats))
        sampler._permutation = lambda perm=perm: perm  # torch's draw, to compare the order only
        sampler.set_epoch(int(epoch))
        assert len(sampler) == length
        np.testing.assert_array_equal(
            sampler.indices(),
            FIXTURE["indices"][start : start + length],
            err_msg=f"n={n} repeats={repeats} world={world} rank={rank}",
        )


@pytest.mark.parametrize("n,repeats,world", [(1000, 3, 1), (1000, 3, 3), (1000, 3, 4), (997, 2, 2), (100, 3, 8)])
def test_each_image_comes_k_times_in_the_stream_and_copies_go_to_different_ranks(n, repeats, world):
    positions = [repeated_positions(n, repeats, r, world) for r in range(world)]
    assert len({len(p) for p in positions}) == 1  # every rank the same count: the same number of steps
    taken = np.sort(np.concatenate(positions))
    np.testing.assert_array_equal(taken, np.arange(len(taken)))  # together a prefix of the stream, each once
    counts = np.bincount(taken // repeats)  # copies per image (slot of the permutation); no padding here
    assert (counts[:-1] == repeats).all() and 1 <= counts[-1] <= repeats  # the prefix may cut the last one
    if world >= repeats:  # copies of one image are on different ranks
        for r, p in enumerate(positions):
            images = (p % (n * repeats) // repeats).tolist()
            assert len(images) == len(set(images)), f"rank {r} has two copies of an image"
    # timm's count per rank: the dataset size over the ranks (rounded down to 256 images over all of them)
    per_rank = (n // 256 * 256) // world if n >= 256 else -(-n // world)
    assert len(positions[0]) == min(per_rank, -(-n * repeats // world))


def test_a_single_rank_sees_each_selected_image_k_times_side_by_side():
    s = ShardedBatchSampler(1000, 3, 0, 1, shuffle=True, seed=7, repeats=3)
    idx = s.indices()
    assert len(idx) == 768 // 3 * 3 and len(s) == 256  # timm selects 768 of the 3,000 positions
    assert (idx.reshape(-1, 3) == idx[::3, None]).all() and len(set(idx.tolist())) == 256


def test_keys_carry_the_position_so_each_copy_is_augmented_its_own_way():
    s = ShardedBatchSampler(300, 4, 1, 2, shuffle=True, seed=3, repeats=3)
    s.set_epoch(5)
    keys = [k for batch in s for k in batch]
    assert all(len(k) == 3 and k[1] == 5 for k in keys)
    assert len({k[2] for k in keys}) == len(keys)  # positions are unique within the epoch
    assert keys == s.keys()[: len(keys)] and [k[0] for k in keys] == s.indices().tolist()


def test_deterministic_per_seed_and_epoch():
    def epoch(seed, e):
        s = ShardedBatchSampler(500, 8, 0, 2, shuffle=True, seed=seed, repeats=3)
        s.set_epoch(e)
        return list(s)

    assert epoch(1, 2) == epoch(1, 2) and epoch(1, 2) != epoch(1, 3) and epoch(1, 2) != epoch(2, 2)


def test_without_repeats_the_sampler_is_unchanged():
    """repeats=1 (the default, data.repeated_aug: 1): the old order and 2-element keys, not timm's sampler."""
    s = ShardedBatchSampler(50, 4, 1, 2, shuffle=True, seed=9)
    s.set_epoch(3)
    perm = np.random.default_rng([9, 3]).permutation(50)
    want = perm[: 6 * 4 * 2][1::2].tolist()
    assert [k for batch in s for k in batch] == [(j, 3) for j in want]
    val = ShardedBatchSampler(50, 4, 1, 2, shuffle=False, seed=9)
    assert [k for batch in val for k in batch] == list(range(25, 50))


def test_repeats_are_refused_for_an_unshuffled_sampler():
    with pytest.raises(ValueError, match="repeats must be 1"):
        ShardedBatchSampler(50, 4, 0, 1, shuffle=False, seed=0, repeats=3)


def test_resume_mid_epoch_is_exact_through_the_loader_with_every_per_sample_augmentation_on():
    """The real loader (in-process, as the trainer's resume test runs it), RandAugment and random erasing on:
    an epoch resumed at batch 3 gives bit for bit the batches the whole epoch gave from batch 3 on."""
    cfg = load_config(
        None,
        [
            "data.name=synthetic",
            "model.num_classes=4",
            "data.auto_augment=rand-m9-mstd0.5-inc1",
            "data.random_erasing.prob=0.5",
            "data.random_erasing.max_count=2",
        ],
    )
    images, labels, classes = make_synthetic(96, 32, 4, 0)
    dataset = ArrayDataset(images, labels, classes, True, cfg["data"], seed=11, pad=4)
    loader = Loader(dataset, ShardedBatchSampler(96, 8, 0, 1, shuffle=True, seed=11, repeats=3), num_workers=0)

    def batches(start: int) -> list[tuple[np.ndarray, np.ndarray]]:
        loader.set_epoch(2, start)
        return [(x.numpy(), y.numpy()) for x, y in loader]

    whole, resumed = batches(0), batches(3)
    assert len(whole) == 12 and len(resumed) == 9
    for (a, la), (b, lb) in zip(whole[3:], resumed):
        assert (a == b).all() and (la == lb).all()
    # the three copies of an image (side by side: one rank) are three different augmentations
    first = whole[0][0]
    assert not (first[0] == first[1]).all() and not (first[1] == first[2]).all()
