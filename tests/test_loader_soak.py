"""Issue 16: train -> eval -> train cycles with loader workers, as fit runs them, never lose a batch.

With Paddle's shared-memory cache bounded as Paddle sizes it, training died at random at the first
step after an eval ("File descriptor /paddle_<pid>_... open failed"; see
senet.data.loader._ShmCacheProbe). Before the fix this test failed with that error every time, within
its first 5 cycles (5 runs of 5 failed); 20 cycles leave a 1-in-10-per-run failure no room to pass by luck.
"""

import gc
import os

import numpy as np
import pytest

from senet.config import load_config
from senet.data import build_loader
from senet.data.fake import make_fake_imagenet

CYCLES = 20


def cfg_for(root, out, workers):
    # The failing shape: eval crop = train crop, so train and val batches have the same sizes; an
    # eval_resize that keeps a resize and a crop in the val path; tiny images keep each cycle short.
    return load_config(
        None,
        [
            "data.name=imagenet",
            f"data.root={root}",
            "model.num_classes=4",
            "data.image_size=16",
            "data.eval_resize=18",
            "data.eval_crop=16",
            "data.batch_size=8",
            f"data.num_workers={workers}",
            f"output_dir={out}",
        ],
    )


def batches(loader):
    return [(x.numpy(), y.numpy()) for x, y in loader]


def shm_blocks(pids):
    """This test's shared-memory blocks: Paddle names each /paddle_<pid of its maker>_<n>_<random>."""
    return sorted(n for n in os.listdir("/dev/shm") if n.split("_")[1:2] and n.split("_")[1] in pids)


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="POSIX shared memory in /dev/shm (Linux)")
def test_twenty_train_eval_cycles_with_workers_give_every_batch_exactly(tmp_path):
    root = make_fake_imagenet(str(tmp_path / "data"), classes=4, train_per_class=24, val_per_class=20, size=(40, 32))
    train, val = (build_loader(cfg_for(root, tmp_path / "out", 2), s) for s in ("train", "val"))
    # The same loaders without workers give what every batch must be, bitwise. Made first, so that
    # the cycles below run back to back as in fit.
    ref_train, ref_val = (build_loader(cfg_for(root, tmp_path / "ref", 0), s) for s in ("train", "val"))
    expected_val = batches(ref_val)
    expected_train = []
    for epoch in range(CYCLES):
        ref_train.set_epoch(epoch)
        expected_train.append(batches(ref_train))
    assert len(expected_val) == 10 and len(expected_train[0]) == 12  # 80 val images, 96 train images
    got_train, got_val = [], []
    for epoch in range(CYCLES):
        train.set_epoch(epoch)
        got_train.append(batches(train))
        got_val.append(batches(val))
        if epoch == 1:
            pids = {str(w.pid) for loader in (train, val) for w in loader._loader._iterator._workers}
            after_two = len(shm_blocks(pids))
    for epoch in range(CYCLES):
        for what, got, want in (
            ("train", got_train[epoch], expected_train[epoch]),
            ("eval", got_val[epoch], expected_val),
        ):
            assert len(got) == len(want), f"{what} {epoch}"
            for i, ((x, y), (rx, ry)) in enumerate(zip(got, want)):
                assert np.array_equal(x, rx) and np.array_equal(y, ry), f"{what} {epoch}, batch {i} differs"
    # Blocks are reused, not made per batch: their number stops growing after the first cycles
    # (it may still rise a little while prefetching finds its deepest point).
    assert 0 < len(shm_blocks(pids)) <= 2 * after_two
    # Ending the loaders (their workers ignore SIGTERM, see STOP_SIGNALS) stops the workers and
    # removes every block they made.
    workers = [w for loader in (train, val) for w in loader._loader._iterator._workers]
    del train, val
    gc.collect()
    for w in workers:
        w.join(timeout=10)
    assert not any(w.is_alive() for w in workers)
    assert shm_blocks(pids) == []
