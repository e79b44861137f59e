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

It also keeps four known Paddle start-up messages out of every tool's output, and only those:
two Python warnings by warnings filters (`quiet_paddle`), the OMP_NUM_THREADS notice that `import
paddle` prints by a line filter on sys.stderr during that import (`filter_sys_stderr`), and PIR's
glog line by a line filter on file descriptor 2 around the one `paddle.jit.save` call
(`filter_stderr`). Everything else Paddle prints still shows.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.abc
import importlib.machinery
import importlib.util
import os
import signal
import subprocess
import sys
import types
import warnings
from collections.abc import Iterator

_configured_threads: int | None = None  # what setup_cpu chose, for restore_threads

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3


# Paddle 3.3.1's Python warnings that tell a user of this project nothing:
# - cpp_extension looks for ccache at import, for building custom C++ ops, which we never do;
# - every BatchNorm forward in training mode says it tracks global statistics (its only mode).
PADDLE_WARNINGS = ("No ccache found", "When training, we now always track global mean and variance")
# Lines Paddle writes straight to stderr (a print, or glog from C++), matched as substrings:
# - `import paddle` with OMP_NUM_THREADS > 1 warns about data parallel and OpenBlas, but setup_cpu
#   sets the thread count on purpose (Paddle's wheel uses MKL, not OpenBlas; one process per rank
#   gets its share of the cores);
PADDLE_OMP_NOTICE = ("OMP_NUM_THREADS set to", "PLEASE USE OMP_NUM_THREADS WISELY.")
# - paddle.jit.save logs from C++ (glog), once per process, that PIR takes no `out=` tensor: seen
#   when it traces a `+` or a `mean`, which our code calls without one; the saved graph is whole
#   (tests/test_export.py checks its outputs against dygraph).
PADDLE_PIR_OUT = ("Paddle static graph(PIR) not support input out tensor",)


def quiet_paddle() -> None:
    """Ignore PADDLE_WARNINGS, raised from Paddle's own modules only. Run by `import senet`."""
    for message in PADDLE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=UserWarning, module=r"paddle\.")


# The filter process of filter_stderr: copies its stdin to its stdout line by line, dropping the
# lines that contain one of its arguments. A separate program, not a thread: a thread needs the GIL,
# which C++ code writing a lot to stderr may hold (the pipe fills and both wait for ever), and a
# thread dies with the process, losing the fatal message of a crash.
_FILTER_PROGRAM = """import sys
drop = [a.encode() for a in sys.argv[1:]]
out = sys.stdout.buffer
for line in sys.stdin.buffer:
    if not any(d in line for d in drop):
        out.write(line)
        out.flush()
"""


@contextlib.contextmanager
def filter_stderr(drop: tuple[str, ...]) -> Iterator[None]:
    """Drop the lines that contain one of `drop` from file descriptor 2 for the `with` body; keep all others.

    At the descriptor, not sys.stderr, so C++ (glog) lines are caught too: fd 2 goes into a pipe
    read by a small filter process that writes every other line to the real stderr, in order, also
    if this process crashes meanwhile (the filter reads to the end of the pipe). The body's end waits
    for the last line. Where fd 2 is closed there is nothing to filter.
    """
    try:
        saved = os.dup(2)
    except OSError:  # stderr closed (2>&-)
        yield
        return
    if sys.stderr is not None:
        sys.stderr.flush()
    try:
        filt = subprocess.Popen(
            [sys.executable, "-c", _FILTER_PROGRAM, *drop],
            stdin=subprocess.PIPE,
            stdout=saved,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
    except OSError:
        os.close(saved)
        yield
        return
    os.dup2(filt.stdin.fileno(), 2)
    filt.stdin.close()  # fd 2 is now the pipe's only write end
    try:
        yield
    finally:
        if sys.stderr is not None:
            sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the filter reads to the end and stops
        os.close(saved)
        filt.wait()


class _DropLines:
    """A stand-in for sys.stderr that drops whole lines containing one of `drop` and passes on the rest."""

    def __init__(self, stream, drop: tuple[str, ...]) -> None:
        self.stream, self.drop, self.pending = stream, drop, ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if not any(d in line for d in self.drop):
                self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def close_out(self) -> None:
        if self.pending and not any(d in self.pending for d in self.drop):
            self.stream.write(self.pending)
        self.pending = ""
        self.stream.flush()

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


@contextlib.contextmanager
def filter_sys_stderr(drop: tuple[str, ...]) -> Iterator[None]:
    """Drop lines containing one of `drop` from what Python code prints to sys.stderr in the body.

    No file descriptors are touched, so C code's output and a crash's messages pass as they are."""
    real = sys.stderr
    if real is None:
        yield
        return
    sys.stderr = filtered = _DropLines(real, drop)
    try:
        yield
    finally:
        if sys.stderr is filtered:
            sys.stderr = real
        filtered.close_out()


class _QuietPaddleLoader(importlib.abc.Loader):
    """Runs paddle's own loader with PADDLE_OMP_NOTICE dropped from stderr; the module keeps the real loader."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        module.__loader__ = module.__spec__.loader = self.loader
        with filter_sys_stderr(PADDLE_OMP_NOTICE):  # Paddle print()s it (paddle/base/__init__.py)
            self.loader.exec_module(module)


class _QuietPaddleImport(importlib.abc.MetaPathFinder):
    """The first `import paddle` after setup_cpu, wherever it happens, goes through _QuietPaddleLoader.

    A finder rather than importing paddle in setup_cpu: some processes that set the threads never
    import paddle (tools/infer.py --engine onnxruntime, the ONNX Runtime memory probe of make bench),
    and must not carry its start-up time and resident memory.
    """

    def find_spec(self, name: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if name != "paddle":
            return None
        sys.meta_path.remove(self)  # one import only; the real finders answer from here on
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietPaddleLoader(spec.loader)
        return spec


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


def env_threads() -> int:
    """SENET_THREADS from the environment: a thread count for every process that would use all cores
    (0 or unset: all cores). `SENET_THREADS=1 make test` runs the whole suite single-threaded, since
    another thread count sums in another order (senet/numerics.py)."""
    value = os.environ.get("SENET_THREADS", "").strip()
    if not value:
        return 0
    if not value.isdigit():
        raise ValueError(f"SENET_THREADS={value!r}: expected a whole number of threads (0 or unset: every core)")
    return int(value)


def setup_cpu(threads: int = 0) -> int:
    """Use `threads` CPU threads (0 = SENET_THREADS if set, else all cores, shared out among the ranks
    that paddle.distributed.launch started on this machine), tune the allocator, then import paddle
    without its OMP_NUM_THREADS notice (when it is imported, see _QuietPaddleImport). Returns the count."""
    local_ranks = int(os.environ.get("PADDLE_LOCAL_SIZE", "1") or 1)
    n = threads if threads > 0 else env_threads() or max(1, cpu_count() // local_ranks)
    global _configured_threads
    _configured_threads = n
    os.environ["OMP_NUM_THREADS"] = str(n)  # read by OpenMP when paddle is first imported
    os.environ.setdefault("MKL_NUM_THREADS", str(n))
    tune_malloc()
    if "paddle" in sys.modules:  # already imported: tell Paddle's math libraries directly
        import paddle

        paddle.base.core.set_num_threads(n)
    elif not any(isinstance(f, _QuietPaddleImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietPaddleImport())  # the notice OMP_NUM_THREADS > 1 causes, at import
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


# The stop signals of schedulers and terminals. Slurm, systemd and Kubernetes-style tooling, and a
# terminal's Ctrl-C, send them to every process of the job, loader workers included; a worker that
# died of one would crash the main process ("DataLoader process ... killed by signal") before it
# could save. Workers ignore them (senet.data.loader): the main process handles the signal
# (senet.train saves and stops) and ends the workers itself. A worker whose main process is gone exits on its own
# (Paddle's parent watchdog).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP)  # SIGHUP: an ssh session dropped


class Interrupted(SystemExit):
    """A stop signal turned into an exception (see exit_cleanly_on_signals); its code is 128 + the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


def exit_cleanly_on_signals() -> None:
    """Make SIGTERM, SIGINT and SIGHUP raise Interrupted in the main thread, for a tool that writes files.

    Paddle installs C++ handlers at import that print a FatalError block and abort: `finally` and
    `except BaseException` blocks never run, and temporary folders stay behind (112 MB per SIGTERM
    during tools/convert_weights.py). Paddle is imported here first, so that its handlers are in
    place to be replaced (a later first import would put them back over ours)."""
    import paddle  # noqa: F401  (for its signal handlers, see above)

    def stop(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)
