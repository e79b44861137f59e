"""The data pipeline: datasets, transforms, sharded deterministic loaders, per-batch normalisation.

The trainer needs four names:
- `build_dataset(cfg, split)`: a paddle.io.Dataset of (uint8 HWC RGB image, int label), with
  `.classes` and `.num_classes`;
- `build_loader(cfg, split, rank, world_size)`: batches of (uint8 [N, H, W, 3], int64 [N]) tensors,
  with `set_epoch(epoch, start_batch)`, `len()`, `.dataset` and `pop_skipped()`: paddle.io.DataLoader
  with OpenCV workers, or NVIDIA DALI with data.loader=dali (senet/data/dali.py);
- `normalize_batch(images, mean, std, data_format)`: the float conversion, once per batch on device;
- `DatasetError`: raised with a message that names the problem and its fix.

See docs/data.md for layouts, config keys and bad-input behaviour.
"""

import importlib

import cv2

# One OpenCV thread, set once here for this process and every worker forked from it (they inherit
# it). Two reasons. OpenCV's own thread pool must never start in this process: a child forked
# while that pool exists hangs for good in its first cv2 threading call (seen: `make bench` froze
# after writing its 224 px JPEGs in the parent). And each worker is already one of several
# processes, so a pool per worker would oversubscribe the cores; in the main process Paddle's
# threads own them.
cv2.setNumThreads(1)

# The names below load their modules on first use (PEP 562), so that the Paddle-free parts of this
# package (errors, archive, decode, index, prepare, check) can be imported without Paddle.
_EXPORTS = {
    "build_dataset": "senet.data.datasets",
    "BadImageError": "senet.data.errors",
    "DatasetError": "senet.data.errors",
    "Loader": "senet.data.loader",
    "build_loader": "senet.data.build",
    "normalize_batch": "senet.data.loader",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'senet.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


__all__ = ["BadImageError", "DatasetError", "Loader", "build_dataset", "build_loader", "normalize_batch"]
