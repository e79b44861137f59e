"""The limit line: batch-1 latency cannot beat reading the weights once from memory.

At batch 1 every weight is read once per image and used for one image only, and ResNet-50's weights
(102 MB in fp32) do not fit in a CPU's caches, so the time to stream them from memory at the
machine's bandwidth is a floor under batch-1 latency, whatever the engine: params x bytes per weight
/ bandwidth. bf16 halves the bytes and int8 quarters them, which is most of why they are faster at
batch 1 on CPUs that run them natively.

The bandwidth is measured, not looked up: the best of a few passes taking the maximum of a buffer far
larger than any cache, split over the run's threads (numpy releases the GIL inside a reduction), so
it is what the cores the engines use can read, not the memory's datasheet figure. The maximum, not
the sum: numpy's float32 sum is compute-bound at about 10 GB/s per core on an Intel Xeon, its
maximum reads at 13 GB/s on one core and 25 on two (measured 2026-12-07, 512 MB buffer).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

BUFFER_MB = 512  # far beyond any L3 (a 2-core VM's share of a server's L3 is tens of MB)
PASSES = 8  # the best pass: the others include page faults, other processes and frequency changes
BYTES_PER_WEIGHT = {"fp32": 4, "bf16": 2, "int8": 1}


def measure_bandwidth(threads: int, buffer_mb: int = BUFFER_MB, passes: int = PASSES) -> dict:
    """{"read_gb_per_s", "threads", "buffer_mb", "passes"}: the fastest of `passes` reads of the buffer."""
    a = np.ones(buffer_mb * 2**20 // 4, dtype=np.float32)  # written once, so every page is really there
    parts = np.array_split(a, max(1, threads))
    best = float("inf")
    with ThreadPoolExecutor(len(parts)) as pool:
        for _ in range(passes):
            t0 = time.perf_counter()
            list(pool.map(np.max, parts))
            best = min(best, time.perf_counter() - t0)
    return {"read_gb_per_s": a.nbytes / best / 1e9, "threads": len(parts), "buffer_mb": buffer_mb, "passes": passes}


def weights_read_ms(params: int, precision: str, read_gb_per_s: float) -> float:
    """Milliseconds to read `params` weights once, stored in `precision`, at the measured bandwidth."""
    return params * BYTES_PER_WEIGHT[precision] / (read_gb_per_s * 1e9) * 1e3
