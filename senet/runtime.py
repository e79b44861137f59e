"""Process-level settings that decide CPU speed: thread count and the C allocator.

Call `setup_cpu(threads)` before the first Paddle op, ideally before `import paddle`:
- `import paddle` sets OMP_NUM_THREADS=1 when it is unset, so by default CPU training silently
  uses one core (1.7x slower on 2 cores). We set it to the core count first.
- Paddle frees large CPU tensors back to glibc, which returns anything above its mmap threshold
  (128 KiB by default, adapting upward slowly) to the OS. Every new activation then page-faults
  in fresh, zeroed memory. Raising the mmap and trim thresholds keeps freed blocks in the heap for
  reuse. This is a process-wide tuning, the same for every model, so comparisons stay fair.
  Measured on 2 cores: in an isolated loop over one 256x56x56 map, add and relu took ~2 ms
  instead of ~0.1-0.2 ms. In a whole network the gain is far smaller: an SE-ResNet-50 training
  step (batch 8) takes ~5.7k page faults and 0.03 s of kernel time instead of ~33k and 0.15 s
  (~2% of the step; below the noise of wall-clock timing on a shared machine), and batch-1
  inference has no page faults either way. The cost: freed memory stays in the process.
"""

from __future__ import annotations

import ctypes
import os
import sys

_configured_threads: int | None = None  # what setup_cpu chose, for restore_threads

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3


def cpu_count() -> int:
    """Cores this process may use (respects affinity masks and container CPU sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def tune_malloc() -> bool:
    """Keep freed memory in the heap instead of returning it to the OS. True if applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok_mmap = libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)  # blocks up to 1 GiB come from the heap
        ok_trim = libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1)
        return bool(ok_mmap and ok_trim)
    except (OSError, AttributeError):  # musl or another libc: leave it alone
        return False


def setup_cpu(threads: int = 0) -> int:
    """Use `threads` CPU threads (0 = all cores, shared out among the ranks that
    paddle.distributed.launch started on this machine) and tune the allocator. Returns the count."""
    local_ranks = int(os.environ.get("PADDLE_LOCAL_SIZE", "1") or 1)
    n = threads if threads > 0 else max(1, cpu_count() // local_ranks)
    global _configured_threads
    _configured_threads = n
    os.environ["OMP_NUM_THREADS"] = str(n)  # read by OpenMP when paddle is first imported
    os.environ.setdefault("MKL_NUM_THREADS", str(n))
    tune_malloc()
    if "paddle" in sys.modules:  # already imported: tell Paddle's math libraries directly
        import paddle

        paddle.base.core.set_num_threads(n)
    return n


def restore_threads() -> None:
    """Set Paddle's math library back to setup_cpu's thread count (nothing if setup_cpu never ran).

    A Paddle Inference 3.3.1 predictor run leaves the process's eager (dygraph) kernels on one
    thread, even when the predictor ran on another Python thread: measured here, SE-ResNet-50
    batch-1 dygraph went from 155 to 269 ms after one predictor run, and back to 160 ms after this.
    """
    if _configured_threads is not None and "paddle" in sys.modules:
        import paddle

        paddle.base.core.set_num_threads(_configured_threads)
