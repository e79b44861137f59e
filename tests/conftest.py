"""Test setup: use every core (or SENET_THREADS, see senet.runtime.setup_cpu) and the tuned allocator
before Paddle is first imported; the `threads` fixture."""

import os
import signal
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from senet.runtime import cpu_count, restore_threads, setup_cpu  # noqa: E402

# Paddle's OpenMP (Intel's libiomp5) keeps each thread spinning for 200 ms after every parallel region.
# Under `make test` two pytest workers, each with every core's threads, and the trainers they start share
# the cores: the spinning threads take the CPU from the ones with work. 0 makes them sleep at once; it
# changes when a thread waits, never a result. Measured on 2 cores (test_train, test_signals,
# test_distributed, test_compare with -n 2): 181 s unset, 143 s at 0, 138 s with SENET_THREADS=1.
os.environ.setdefault("KMP_BLOCKTIME", "0")  # read when Paddle starts OpenMP; the child processes inherit it
setup_cpu(0)

# `make test` runs two pytest workers that each take the next whole file (xdist --dist loadfile, in
# collection order: --no-loadscope-reorder). The longest files go first, so that neither worker runs a
# long one alone at the end: seconds per file on 2 cores, all threads, 2026-12-08 (`--durations=0`):
# test_convert 137, test_models 92, test_export 86, test_train 75, test_reliability 70, test_bench 66,
# test_signals 59, test_hostile_expand 59, test_cpu_paths 46, test_distributed 40; every other file
# under 40 s follows in name order.
LONGEST_FIRST = [
    "test_convert.py",
    "test_models.py",
    "test_export.py",
    "test_train.py",
    "test_reliability.py",
    "test_bench.py",
    "test_signals.py",
    "test_hostile_expand.py",
    "test_cpu_paths.py",
    "test_distributed.py",
]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order stays


# One thread and every core: another thread count may split a sum another way, so a comparison across
# code paths (senet/numerics.py, rule 2) must hold at both; a 1-core machine has one.
THREAD_COUNTS = sorted({1, cpu_count()})


@pytest.fixture(params=THREAD_COUNTS, ids=lambda n: f"{n}thr")
def threads(request):
    """Run the test's Paddle math at 1 thread and at every core, then back to the suite's setting."""
    import paddle

    paddle.base.core.set_num_threads(request.param)
    yield request.param
    restore_threads()


@pytest.fixture(autouse=True)
def own_sigchld_handler():
    """Each test starts with the SIGCHLD handler it found. Paddle's multi-process DataLoader installs one
    process-wide handler that raises when any worker it ever registered has died; left in place, a later
    test's unrelated child exiting (a subprocess, a fork) triggers it in a test that has nothing to do
    with loaders. A later loader installs it again (Paddle's flag is cleared with it)."""
    before = signal.getsignal(signal.SIGCHLD)
    yield
    if signal.getsignal(signal.SIGCHLD) is not before:
        signal.signal(signal.SIGCHLD, before)
        for name in ("paddle.io.multiprocess_utils", "paddle.base.multiprocess_utils"):
            module = sys.modules.get(name)
            if module is not None and hasattr(module, "_SIGCHLD_handler_set"):
                module._SIGCHLD_handler_set = False
