"""The data pipeline: datasets, transforms, sharded deterministic loaders, per-batch normalisation.

The trainer needs four names:
- `build_dataset(cfg, split)`: a paddle.io.Dataset of (uint8 HWC RGB image, int label), with
  `.classes` and `.num_classes`;
- `build_loader(cfg, split, rank, world_size)`: batches of (uint8 [N, H, W, 3], int64 [N]) tensors,
  with `set_epoch(epoch, start_batch)`, `len()`, `.dataset` and `pop_skipped()`;
- `normalize_batch(images, mean, std, data_format)`: the float conversion, once per batch on device;
- `DatasetError`: raised with a message that names the problem and its fix.

See docs/data.md for layouts, config keys and bad-input behaviour.
"""

from senet.data.datasets import build_dataset
from senet.data.errors import BadImageError, DatasetError
from senet.data.loader import Loader, build_loader, normalize_batch

__all__ = ["BadImageError", "DatasetError", "Loader", "build_dataset", "build_loader", "normalize_batch"]
