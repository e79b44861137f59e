"""Batches: a sharded, deterministic batch sampler, the paddle.io.DataLoader around it, and normalisation.

- Train: a permutation from (train.seed, epoch); each rank takes every world_size-th index of it, so
  shards are disjoint; the remainder that does not fill a batch on every rank is dropped, so all
  ranks run the same number of steps. With data.repeated_aug k > 1, timm's repeated augmentation:
  each index k times in a row in that order (`repeated_positions`).
- Val: in order; rank r takes the r-th contiguous slice, so every image is seen exactly once across
  ranks with no padding (ranks may differ by one image, and by one batch: sum the counts, not
  per-batch means, across ranks).
- Workers return uint8 NHWC batches; `normalize_batch` turns them into float on the device.
- `senet.data.build.build_loader` gives this loader, or with data.loader=dali NVIDIA DALI's
  (senet.data.dali), which takes its batches of keys from the same sampler.
"""

from __future__ import annotations

import ctypes
import math
import multiprocessing.util
import os
import signal
import tempfile
import threading
import traceback
import weakref
from collections.abc import Iterator

import cv2
import numpy as np
import paddle

from senet.data.errors import BadImageError, DatasetError
from senet.runtime import STOP_SIGNALS  # the workers ignore them: see there

Key = int | tuple[int, int] | tuple[int, int, int]


class ShardedBatchSampler:
    """Lists of sample keys for one rank; `set_epoch` picks the shuffle and where the epoch starts.

    With `repeats` k > 1 (train only: data.repeated_aug) it is timm's RepeatAugSampler (from DeiT; Hoffer
    et al. 2020, "Augment your batch"; Berman et al. 2019, "Multigrain"): see `repeated_positions`. Each
    copy of an image gets its own augmentation: its key carries its position in the epoch's stream.
    """

    def __init__(
        self, num_samples: int, batch_size: int, rank: int, world_size: int, shuffle: bool, seed: int, repeats: int = 1
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
        if repeats < 1 or (repeats > 1 and not shuffle):
            raise ValueError(f"repeats must be 1, or more for a shuffled (train) sampler; got {repeats}")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed, self.repeats = shuffle, seed, repeats
        self.epoch, self.start_batch = 0, 0
        self.stop = False  # set by the loader to end the current epoch early

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch must be in 0..{len(self)}, got {start_batch}")
        self.epoch, self.start_batch = epoch, start_batch

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed % 2**63, self.epoch]).permutation(self.num_samples)

    def indices(self) -> np.ndarray:
        """This rank's sample indices for the current epoch, in order."""
        n, world = self.num_samples, self.world_size
        if self.repeats > 1:
            positions = repeated_positions(n, self.repeats, self.rank, world)[: len(self) * self.batch_size]
            return self._permutation()[positions % (n * self.repeats) // self.repeats]
        if self.shuffle:
            used = len(self) * self.batch_size * world
            return self._permutation()[:used][self.rank :: world]
        return np.arange(self.rank * n // world, (self.rank + 1) * n // world)

    def keys(self, count: int | None = None) -> list[Key]:
        """This rank's first `count` sample keys for the current epoch (all with None): what the dataset is
        asked for, in order."""
        positions = self._positions()
        return self._keys(self.indices()[:count].tolist(), positions and positions[:count])

    def _positions(self) -> list[int] | None:
        if self.repeats == 1:
            return None
        return repeated_positions(self.num_samples, self.repeats, self.rank, self.world_size).tolist()

    def _keys(self, indices: list[int], positions: list[int] | None) -> list[Key]:
        if positions is not None:  # train: (index, epoch, position in the epoch's stream of repeated indices)
            return [(j, self.epoch, p) for j, p in zip(indices, positions)]
        # Train keys carry the epoch: it seeds each sample's augmentation in the worker.
        return [(j, self.epoch) for j in indices] if self.shuffle else indices

    def __len__(self) -> int:
        if self.repeats > 1:  # drop_last over timm's selected samples, equal on every rank
            return (
                len(repeated_positions(self.num_samples, self.repeats, self.rank, self.world_size)) // self.batch_size
            )
        if self.shuffle:  # drop_last, equal on every rank
            return self.num_samples // self.world_size // self.batch_size
        share = (self.rank + 1) * self.num_samples // self.world_size - self.rank * self.num_samples // self.world_size
        return -(-share // self.batch_size)

    def __iter__(self) -> Iterator[list[Key]]:
        idx, positions = self.indices().tolist(), self._positions()
        b = self.batch_size
        for i in range(self.start_batch, len(self)):
            if self.stop:
                return
            batch = slice(i * b, (i + 1) * b)
            yield self._keys(idx[batch], positions and positions[batch])


# timm's RepeatAugSampler rounds the images it selects per epoch down to a multiple of this (selected_round)
REPEAT_SELECTED_ROUND = 256


def repeated_positions(num_samples: int, repeats: int, rank: int, world_size: int) -> np.ndarray:
    """One rank's positions, in order, in an epoch's stream of repeated indices, as timm's RepeatAugSampler.

    The stream is the epoch's permutation with each index `repeats` times in a row (position p holds
    permutation[p // repeats], wrapping past the end to pad). Rank r takes positions r, r + world, ...,
    so with world_size >= repeats the copies of an image go to different ranks (with one rank, they sit
    side by side in a batch); each rank stops after timm's selected count, num_samples / world_size
    (over all ranks rounded down to a multiple of 256 images): an epoch keeps its length in steps and
    sees about 1/repeats of the images, each `repeats` times.
    """
    padded = -(-num_samples * repeats // world_size) * world_size
    if num_samples >= REPEAT_SELECTED_ROUND:
        selected = math.floor(num_samples // REPEAT_SELECTED_ROUND * REPEAT_SELECTED_ROUND / world_size)
    else:
        selected = math.ceil(num_samples / world_size)
    return np.arange(rank, padded, world_size)[: min(selected, padded // world_size)]


class _Guarded(paddle.io.Dataset):
    """The dataset as the loader runs it: no exception ever reaches Paddle's reader.

    Paddle 3.3 loses a worker's exception message (the main thread only sees "Blocking queue is
    killed") and, with num_workers=0, waits forever after one. So a failing sample becomes a
    `_Failure` that the collate turns into an error batch, re-raised in the main process with the
    original message; with on_bad_image=skip a bad image becomes None and its path is logged.
    """

    def __init__(self, dataset: paddle.io.Dataset, skip_log: str | None, num_workers: int) -> None:
        self.dataset, self.skip_log = dataset, skip_log
        self.main_pid = os.getpid() if num_workers > 0 else None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Key) -> tuple[np.ndarray, int] | _Failure | None:
        if os.getpid() == self.main_pid:
            # With workers, the main process reads a sample only when Paddle probes dataset[0] for
            # its field count, to size its shared-memory caches: answer without decoding anything
            # (and without logging a bad first image as skipped). See _ShmCacheProbe.
            return _SHM_CACHE_PROBE
        try:
            return self.dataset[key]
        except BadImageError as e:
            if self.skip_log is None:
                return _Failure(e)
            # One short O_APPEND write per bad file: atomic across worker processes.
            with open(self.skip_log, "ab") as f:
                f.write(os.fsencode(getattr(e, "path", str(e))) + b"\n")
            return None
        except Exception as e:  # a bug or a system error: keep its traceback for the main process
            return _Failure(e)


class _ShmCacheProbe:
    """The answer to Paddle's dataset[0] probe: a "sample" whose length makes its shm caches unbounded.

    With FLAGS_use_shm_cache, each worker keeps the shared-memory blocks it made and reuses one by
    name once the main process has dropped it; the main process keeps its own mapping of each name,
    so a reused block needs no new open. Paddle 3.3 bounds both caches (3 x fields per worker,
    2 x that x workers in the main process, one pool shared by every loader in it), and when the
    main's pool is full it unlinks a block after one use, though the worker that made it still
    reuses it: the next batch in that block fails with "File descriptor /paddle_... open failed".
    With a train and a val loader, the val workers (forked later) inherit the main's pool as
    already full, so every val batch takes fresh blocks, which fill the main's pool; the next train
    worker block that is new to the main then dies. So training crashed at the first step after an
    eval, at random. With no bound, nothing is unlinked before exit and every block a worker makes
    is reused: the blocks are those of the batches in flight at the busiest moment, per size, and
    batch shapes are fixed (a batch that lost images to on_bad_image=skip travels pickled, see
    _Partial), so this is bounded by the prefetch depth, as the loader's memory is anyway.
    """

    def __len__(self) -> int:
        # Paddle sizes the worker cache as 3 x this and the main's as 6 x this x num_workers (C ints).
        return 2**16


_SHM_CACHE_PROBE = _ShmCacheProbe()


class _Failure:
    """An exception from a sample, as text; it travels pickled in the batch's structure, not in shared memory."""

    def __init__(self, e: Exception) -> None:
        self.kind = "bad" if isinstance(e, BadImageError) else "dataset" if isinstance(e, DatasetError) else "other"
        self.text = str(e) if self.kind != "other" else "".join(traceback.format_exception(e))

    def reraise(self) -> None:
        if self.kind == "bad":
            raise BadImageError(self.text)
        if self.kind == "dataset":
            raise DatasetError(self.text)
        raise RuntimeError(f"a data loader worker failed:\n{self.text}")


class _Partial:
    """A batch that lost images to on_bad_image=skip (possibly all of them), pickled through the worker's
    result pipe rather than in shared memory: every shared-memory block then has one of a few fixed
    shapes, so the worker's block cache (see _ShmCacheProbe) does not grow with each new batch size."""

    def __init__(self, images: np.ndarray | None, labels: np.ndarray | None) -> None:
        self.images, self.labels = images, labels


class _Collate:
    """Stacks a batch into uint8 [N, H, W, 3] and int64 [N]; drops skipped samples (None).

    A batch with a failed sample, or with skipped ones, becomes (placeholder images, placeholder
    labels, a _Failure or _Partial object): three elements only on that rare path, so normal
    batches need no check that reads device memory. The placeholders keep the batch's shared-memory
    part non-empty and of fixed shape (Paddle's shared memory cannot carry zero-size arrays).
    """

    PLACEHOLDER = (np.zeros((1, 1, 1, 3), dtype=np.uint8), np.zeros(1, dtype=np.int64))

    def __call__(self, samples: list) -> tuple:
        failure = next((s for s in samples if isinstance(s, _Failure)), None)
        if failure is not None:
            return (*self.PLACEHOLDER, failure)
        kept = [s for s in samples if s is not None]
        images = np.stack([s[0] for s in kept]) if kept else None
        labels = np.fromiter((s[1] for s in kept), dtype=np.int64, count=len(kept)) if kept else None
        if len(kept) < len(samples):
            return (*self.PLACEHOLDER, _Partial(images, labels))
        return images, labels


class WorkerDied(DatasetError):
    """A loader worker process died (SIGKILL: often the out-of-memory killer). Raised at a batch boundary."""


# Paddle's handler of SIGCHLD raises SystemError from wherever the main thread happens to be (in the
# middle of a step, an optimizer update, a checkpoint write) when a worker dies. Ours records the death
# instead, and the loader raises WorkerDied at its next batch, where the training state is whole and can
# be saved (issue 23: a SIGKILLed worker gave a raw traceback, no save, and left its shared memory).
_worker_deaths: list[str] = []


def _record_worker_death(signum: int, frame: object) -> None:
    try:
        paddle.base.core._throw_error_if_process_failed()
    except SystemError as e:
        _worker_deaths.append(str(e).split(" (at ", 1)[0])


def _raise_if_a_worker_died() -> None:
    if not _worker_deaths:
        return
    message = _worker_deaths.pop(0)
    _worker_deaths.clear()
    pid = message.split("(pid ", 1)[-1].split(")", 1)[0]
    removed = _remove_shared_memory(pid) if pid.isdigit() else 0
    raise WorkerDied(
        f"a data-loader worker died: {message.removeprefix('(Fatal) ')} (killed by the "
        f"out-of-memory killer? Lower data.num_workers or data.batch_size); removed the "
        f"{removed} shared-memory block(s) it left"
    )


def _remove_shared_memory(pid: str) -> int:
    """Unlink /dev/shm/paddle_<pid>_*: the blocks of our own worker, which died before it could."""
    removed = 0
    try:
        names = [n for n in os.listdir("/dev/shm") if n.startswith(f"paddle_{pid}_")]
    except OSError:
        return 0
    for name in names:
        try:
            os.unlink(os.path.join("/dev/shm", name))
            removed += 1
        except OSError:
            pass
    return removed


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _watched(batches: Iterator) -> Iterator:
    """The DataLoader's batches, with a worker's death (recorded by _record_worker_death) raised as
    WorkerDied between batches; a failure that follows the death (Paddle's reader thread gives up) too."""
    while True:
        _raise_if_a_worker_died()
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception:
            _raise_if_a_worker_died()
            raise
        yield batch


def empty_batch() -> tuple[paddle.Tensor, paddle.Tensor]:
    """The batch a loader yields where data.on_bad_image=skip dropped every image of one: it still counts
    as one of the epoch's batches (issue 23: dropping it made the epoch look unfinished, and a run then
    ended at exit 0 with no eval and no weights; with 2 ranks, the other rank waited for a step that
    never came). Consumers skip it: the trainer, in a job, skips that step on every rank together."""
    return paddle.zeros([0, 1, 1, 3], dtype="uint8"), paddle.zeros([0], dtype="int64")


def _worker_init(worker_id: int) -> None:
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    _die_with_parent()
    # OpenCV is already at one thread: senet/data/__init__.py sets it before any worker is forked.
    # A bad file surfaces as our own error naming it; OpenCV's warnings about it would only be noise.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    _reuse_freed_memory()


def _die_with_parent() -> None:
    # The workers ignore the stop signals and wait for the main process to end them; if it dies
    # without doing so (SIGKILL, a crash), they would wait forever, blocked on their index queue,
    # holding shared memory and every descriptor they inherited (a test runner then never sees its
    # worker end). Linux's PR_SET_PDEATHSIG kills them with it. The loader is iterated, and so its
    # workers forked, from the main thread, whose exit is what the kernel watches. Elsewhere: no-op.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _reuse_freed_memory() -> None:
    # Each batch allocates and frees the same few large buffers (decoded images, the stacked batch,
    # Paddle's copy of it). glibc maps every one of them afresh, so each page faults again: about
    # 2 us per 4 KB page, 5% of a worker's time at 224 px. Higher mmap and trim thresholds make it
    # reuse freed memory instead. glibc only; elsewhere nothing changes.
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD, bytes: larger blocks still get their own mapping
        libc.mallopt(-1, 128 << 20)  # M_TRIM_THRESHOLD, bytes of free heap kept rather than returned
    except (OSError, AttributeError):
        pass


def _stop_workers(loader: paddle.io.DataLoader) -> None:
    """End a loader's persistent workers: as Paddle does at exit, then SIGKILL any that did not stop."""
    batches = getattr(loader, "_iterator", None)
    if batches is None:  # never iterated: no workers
        return
    batches._try_shutdown_all(1)
    for worker in batches._workers:
        if worker.is_alive():
            worker.kill()
            worker.join()


def reader_args(num_workers: int, on_cpu: bool) -> dict:
    """DataLoader's `places` and `use_buffer_reader`, chosen together: Paddle refuses some pairs.

    Paddle's buffered reader copies each batch to its place on a thread of its own. Without it,
    Paddle's reader refuses a GPU place at the first batch ("Place cannot be CUDAPlace when
    use_double_buffer is False", paddle/fluid/pybind/reader_py.cc), and leaving `places` unset means
    the current device. So:
    - on a GPU (any device but the CPU): the buffered reader, to the current device, workers or not.
      It copies batch k+1 to the device on its own stream while the device computes batch k.
    - on a CPU: the CPU place, named rather than left to the default, and the buffered reader only with
      workers, as before. Without workers its thread competes with Paddle's compute threads, whose
      OpenMP barriers stall whenever one of them is descheduled (an earlier session saw convs run 2x
      slower; docs/data.md has the latest measurement).
    """
    if not on_cpu:
        return {"places": None, "use_buffer_reader": True}
    return {"places": paddle.CPUPlace(), "use_buffer_reader": num_workers > 0}


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class Loader:
    """Iterates (images uint8 [N, H, W, 3], labels int64 [N]) paddle tensors for one rank and split.

    Bad images follow data.on_bad_image: `error` raises BadImageError naming the file; `skip` drops
    them (a batch can then be smaller) and `pop_skipped()` lists them.
    """

    def __init__(
        self, dataset: paddle.io.Dataset, sampler: ShardedBatchSampler, num_workers: int, on_bad_image: str = "error"
    ) -> None:
        self.dataset, self.sampler, self.num_workers = dataset, sampler, num_workers
        self._skip_log, self._skip_read = None, 0
        if on_bad_image == "skip":
            fd, self._skip_log = tempfile.mkstemp(prefix="senet-skipped-", suffix=".txt")
            os.close(fd)
            weakref.finalize(self, _unlink, self._skip_log)
        # Reuse shared-memory blocks between batches instead of creating, faulting in and unlinking
        # one per batch (a block is reused only once its reader has dropped it): about half the
        # workers' cost of handing over a batch. Paddle reads the C++ flag in the allocator and the
        # environment variable when workers start. FLAGS_use_shm_cache=0 in the environment opts out.
        if "FLAGS_use_shm_cache" not in os.environ:
            os.environ["FLAGS_use_shm_cache"] = "1"
            paddle.set_flags({"FLAGS_use_shm_cache": True})
        self._loader = paddle.io.DataLoader(
            _Guarded(dataset, self._skip_log, num_workers),
            batch_sampler=sampler,
            collate_fn=_Collate(),
            num_workers=num_workers,
            use_shared_memory=True,
            persistent_workers=num_workers > 0,
            prefetch_factor=2,
            worker_init_fn=_worker_init,
            return_list=True,
            **reader_args(num_workers, on_cpu=paddle.get_device() == "cpu"),
        )
        if num_workers > 0:
            # Workers ignore SIGTERM (see STOP_SIGNALS), so the SIGTERM by which multiprocessing ends
            # daemon processes at exit would leave it waiting for them forever: end them first.
            multiprocessing.util.Finalize(self, _stop_workers, args=(self._loader,), exitpriority=10)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Shuffle for `epoch` (from train.seed and epoch) and skip its first `start_batch` batches (exact resume)."""
        self.sampler.set_epoch(epoch, start_batch)

    def __len__(self) -> int:
        """Batches per epoch for this rank (including any skipped by start_batch)."""
        return len(self.sampler)

    def batches_on_every_rank(self) -> int:
        """Batches that every rank's loader yields this epoch: len() on all, except a val split whose
        ranks' shares differ by one image (the smallest share is n // world_size)."""
        s = self.sampler
        return len(s) if s.shuffle else -(-(s.num_samples // s.world_size) // s.batch_size)

    def __iter__(self) -> Iterator[tuple[paddle.Tensor, paddle.Tensor]]:
        self.sampler.stop = False
        batches = iter(self._loader)
        if self.num_workers > 0 and _in_main_thread():
            signal.signal(signal.SIGCHLD, _record_worker_death)  # after Paddle set its own (WorkerDied above)
        try:
            for batch in _watched(batches):
                if len(batch) == 2:
                    yield batch[0], batch[1]
                    continue
                aside = batch[2]
                if isinstance(aside, _Partial):
                    if aside.labels is not None:
                        yield paddle.to_tensor(aside.images), paddle.to_tensor(aside.labels)
                    else:  # every image of the batch was skipped as bad: an empty batch, counted all the same
                        yield empty_batch()
                    continue
                self._end_early(batches)
                aside.reraise()
        except GeneratorExit:  # the consumer stopped mid-epoch (max_steps, a benchmark)
            self._end_early(batches)
            raise

    def _end_early(self, batches: Iterator) -> None:
        # Paddle 3.3's persistent workers fail on the next epoch if this one is left half read
        # (IndexError in _restore_batch): send no more indices and read out the batches in flight.
        self.sampler.stop = True
        for _ in batches:
            pass

    def pop_skipped(self) -> list[str]:
        """Bad files skipped (with on_bad_image=skip) since the last call; call it at the end of each epoch."""
        if self._skip_log is None:
            return []
        with open(self._skip_log, "rb") as f:
            f.seek(self._skip_read)
            data = f.read()
        self._skip_read += len(data)
        return sorted(os.fsdecode(line) for line in data.splitlines())


_AFFINE: dict[tuple, tuple[paddle.Tensor, paddle.Tensor]] = {}


def normalize_batch(
    images: paddle.Tensor, mean: list[float], std: list[float], data_format: str = "NCHW"
) -> paddle.Tensor:
    """uint8 NHWC batch -> float32 (x/255 - mean)/std, transposed to NCHW when data_format is "NCHW".

    This runs once per batch, on the device, on purpose: workers and the host-to-device copy move
    uint8, a quarter of the bytes of float32.
    """
    key = (tuple(mean), tuple(std), str(images.place))
    if key not in _AFFINE:  # (x / 255 - mean) / std as one multiply-add, constants made once per device
        scale = np.array([1 / (255 * s) for s in std], dtype=np.float32)
        shift = np.array([-m / s for m, s in zip(mean, std)], dtype=np.float32)
        _AFFINE[key] = paddle.to_tensor(scale, place=images.place), paddle.to_tensor(shift, place=images.place)
    scale, shift = _AFFINE[key]
    x = images.astype("float32") * scale + shift
    return x.transpose([0, 3, 1, 2]) if data_format == "NCHW" else x
