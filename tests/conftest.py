"""Test setup: use every core (or SENET_THREADS, see senet.runtime.setup_cpu) and the tuned allocator
before Paddle is first imported; the `threads` fixture."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from senet.runtime import cpu_count, restore_threads, setup_cpu  # noqa: E402

setup_cpu(0)

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
