"""Timing: the one alternation routine that `make bench`, scripts/bench_se_block.py and
scripts/bench_export.py all time with.

Every task gets its untimed warm-up rounds, then the tasks take turns for `repeats` rounds, in
reverse order every other round (A B C, C B A, ...): drift in the machine's speed hits all alike,
and no task always runs right after the same other one (whose warm or cold cache, spinning thread
pool or memory to give back it would inherit). The device is synchronised before the clock is read:
on a GPU by paddle.device.synchronize, on a CPU by reading the result back to numpy.

Paddle is imported only inside the functions that need it (see senet.bench).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

import numpy as np


class Timeable(Protocol):
    """What run_alternating times: a name for the log, the call, and the samples it fills."""

    name: str
    run: Callable[[], Any] | None
    rounds: list[list[float]]  # seconds per call, one list per timed round


@dataclass
class Timed:
    """The plain Timeable: a named call. senet.bench.run.Task is the benchmark's own, with its model and mode."""

    name: str
    run: Callable[[], Any]
    rounds: list[list[float]] = field(default_factory=list)

    def samples_ms(self) -> list[float]:
        return [1e3 * s for r in self.rounds for s in r]


@lru_cache(maxsize=1)
def on_gpu() -> bool:
    from senet.device import has_gpu  # imports paddle: only once it is wanted

    return has_gpu()


def sync(out: Any = None) -> None:
    """Wait until the device has finished: synchronise a GPU; on a CPU read the result to numpy.

    A call that returns None on a CPU is taken as done when it returns (CPU kernels run
    synchronously); scripts/bench_se_block.py relies on that to keep a 3 MB copy out of the time.
    """
    if isinstance(out, np.ndarray):  # the exported engines return host arrays: their work is done
        return
    if on_gpu():
        import paddle

        paddle.device.synchronize()
    elif out is not None and hasattr(out, "numpy"):
        out.numpy()


def time_round(run: Callable[[], Any], calls: int, per_call: bool) -> list[float]:
    """Seconds per call: each call timed alone (per_call, for latency) or `calls` calls timed together."""
    sync()  # nothing queued from before may be counted
    if per_call:
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            sync(run())
            times.append(time.perf_counter() - t0)
        return times
    t0 = time.perf_counter()
    out = None
    for _ in range(calls):
        out = run()
    sync(out)
    return [(time.perf_counter() - t0) / calls]


def run_alternating(
    tasks: Sequence[Timeable],
    calls: int,
    per_call: bool,
    warmup_rounds: int,
    repeats: int,
    log: Callable[[str], None] = lambda s: None,
    interleave_calls: bool = False,
    settle_calls: int = 0,
    pause_s: float = 0.0,
) -> None:
    """Warm each task up, then time them in turns, `repeats` rounds each: A B C, then C B A, and so on.

    Appends one list of samples per round to each task's `rounds`.

    With interleave_calls, per-call tasks also take turns call by call within a round: a batch-1
    call lasts a fraction of a second, and the machine's speed can change between one model's 10
    calls and the next model's. Only for dygraph: the exported engines each keep their own thread
    pool, which spins after a call, and switching every call set one model's pool against the
    other's (ONNX Runtime latency doubled).

    settle_calls and pause_s (scripts/bench_export.py) start each turn with a pause and untimed
    calls: after a parallel region the OpenMP threads of Paddle spin for up to 200 ms
    (KMP_BLOCKTIME) and ONNX Runtime's pool spins too, so a call right after switching engines
    competes with the previous engine's idle threads for the cores. (Without the pause, ONNX
    Runtime's median after dygraph was 70 ms against a minimum of 40.)
    """

    def turn(t: Timeable, n: int) -> list[float]:
        if pause_s:
            time.sleep(pause_s)
        for _ in range(settle_calls):
            sync(t.run())
        return time_round(t.run, n, per_call)

    for t in tasks:
        for _ in range(warmup_rounds):
            time_round(t.run, calls, per_call)
    for i in range(repeats):
        order = tasks if i % 2 == 0 else tasks[::-1]
        if per_call and interleave_calls:
            samples: dict[int, list[float]] = {id(t): [] for t in tasks}
            for _ in range(calls):
                for t in order:
                    samples[id(t)] += turn(t, 1)
            for t in tasks:
                t.rounds.append(samples[id(t)])
        else:
            for t in order:
                t.rounds.append(turn(t, calls))
        log(
            f"  round {i + 1}/{repeats}: "
            + ", ".join(f"{t.name} {1e3 * statistics.median(t.rounds[-1]):.1f} ms" for t in tasks)
        )


def alternate(
    fns: dict[str, Callable[[], Any]], iters: int, warmup: int, settle_calls: int = 0, pause_s: float = 0.0
) -> dict[str, list[float]]:
    """The scripts' form: ms per call of each named fn, one call a round, `iters` alternating rounds."""
    tasks = [Timed(name, fn) for name, fn in fns.items()]
    run_alternating(
        tasks, calls=1, per_call=True, warmup_rounds=warmup, repeats=iters, settle_calls=settle_calls, pause_s=pause_s
    )
    return {t.name: t.samples_ms() for t in tasks}
