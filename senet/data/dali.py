"""`data.loader: dali`: ImageNet-style image files decoded by NVIDIA DALI, on the GPU where there is one.

NVIDIA's and PaddleClas's ImageNet recipes feed a GPU this way: a CPU decodes a few hundred JPEGs
per second per core, a current GPU trains on about 2,700 per second (NVIDIA's PaddlePaddle
ResNet-50 example, one A100-80GB, AMP), so decoding moves to the GPU (nvJPEG, DALI's `mixed`
decoder).

What it shares with our loader (`senet.data.loader`), so that a run can switch between them:
- the file list, labels and class names (`senet.data.datasets.ImageFileDataset`);
- the shard per rank and epoch and the batch order (`ShardedBatchSampler`), so each sample comes
  exactly once per epoch over all ranks, and `set_epoch(epoch, start_batch)` resumes exactly;
- every random choice: DALI draws nothing at random. Each sample's crop window and flip come from
  the sample's own generator, seeded from (train.seed, epoch, index) as in `ImageFileDataset`,
  with the same draws in the same order; DALI's own random operators (fn.decoders.image_random_crop)
  draw from one generator per pipeline, so a batch's crops would depend on the batches before it
  and a resumed epoch would not repeat the interrupted one;
- what the trainer gets: uint8 [N, H, W, 3] RGB images and int64 [N] labels, normalised on the
  device by `senet.data.loader.normalize_batch`. Not fp16 straight from DALI: the same training step
  then serves both loaders (and the benchmarks), AMP's input dtype stays AMP's choice (fp32 runs,
  bf16, O1), and uint8 is half the bytes of fp16. Normalising is one multiply-add per pixel on the GPU.

Train: decode only the crop window (`fn.decoders.image_slice`: libjpeg-turbo skips the rows outside
it on a CPU, nvJPEG decodes it on a GPU), resize it to image_size (linear, antialiased when
shrinking, as our area resize), flip. Val: decode, resize the shorter side to eval_resize (the
longer one truncated as ours), centre crop eval_crop. Decoder `mixed` on a GPU, `cpu` elsewhere.
EXIF orientation is ignored, as by our decoder. Colour jitter is not implemented here.

Pixels: with the `cpu` decoder DALI decodes bit-for-bit as OpenCV does (both libjpeg-turbo); the
resize differs (DALI's antialiased linear filter against OpenCV's area average), so val images
differ from our loader's by at most VAL_MAX_DIFF levels, and by VAL_MEAN_DIFF on average per image
(measured: see below; tests/test_dali.py holds every batch to them). Train images too: the crops and
flips are ours. nvJPEG (`mixed`) has its own IDCT: not measured, no GPU here.

Bad images follow data.on_bad_image. The checks that bound a hostile file's cost (regular file,
bytes, declared pixels and aspect ratio: senet.data.decode) run in Python before a file reaches DALI,
and a header whose size cannot be read is refused (DALI's decoder has no pixel cap). A file DALI
cannot decode fails the whole pipeline run without a name; the loader then decodes each file in
flight on its own to find it, names it, and raises BadImageError or, with `skip`, drops it and
rebuilds the pipeline.

On a GPU the outputs reach Paddle through DLPack on Paddle's current stream, as DALI's Paddle plugin
does (`nvidia.dali.plugin.paddle`, which itself builds a CUDAPlace and so cannot run on a CPU). On a
CPU they go through numpy. Only the CPU path has run; of the GPU path, the tests run the DLPack
conversion on a CPU tensor and define the `mixed` pipelines, which DALI checks before it needs CUDA
(docs/data.md says which parts have never run).
"""

from __future__ import annotations

import importlib.util
import math
import random
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import paddle

from senet.data.datasets import ImageFileDataset
from senet.data.decode import bad_image, decode_image, read_image_bytes
from senet.data.errors import BadImageError, DatasetError
from senet.data.loader import Loader, ShardedBatchSampler, empty_batch

if TYPE_CHECKING:  # DALI itself is imported only where it runs: it is an optional install
    from nvidia.dali import Pipeline
    from nvidia.dali.backend import TensorCPU, TensorGPU, TensorListCPU, TensorListGPU

INSTALL_HINT = "make install DALI=1"
PREFETCH = 2  # batches DALI prepares ahead of the one the trainer holds

# DALI's images against our loader's, the same sample and crop, `cpu` decoder, in uint8 levels: the
# largest difference of a pixel, and of an image's mean |difference|. Measured on senet.data.fake's
# images (every format, 64x48 and 200x150; 500x375 JPEGs at 224 px), train and val, 2,834 images:
# at most 7, and 1.17 (CMYK JPEGs: DALI converts CMYK its own way; 0.71 for the other formats, 0.41
# for 500x375 val JPEGs). tests/test_dali.py asserts these bounds on every batch.
VAL_MAX_DIFF = 8
VAL_MEAN_DIFF = 1.5


def dali_installed() -> bool:
    """Whether NVIDIA DALI can be imported (without importing it)."""
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ImportError:  # no `nvidia` namespace package at all
        return False


def require_dali() -> None:
    """Raise the one-line DatasetError that names the install command, if DALI is not installed."""
    if not dali_installed():
        raise DatasetError(
            f"data.loader=dali needs NVIDIA DALI, which is not installed: run `{INSTALL_HINT}` "
            "(or set -o data.loader=paddle)"
        )


def dali_device_id() -> int | None:
    """The GPU DALI should use (Paddle's current one), or None for a CPU-only pipeline."""
    device = paddle.get_device()
    return int(device.split(":")[1]) if device.startswith("gpu:") else None


# ---------------------------------------------------------------- the geometry of our transforms


def train_window(
    width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float], rng: random.Random
) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the random-resized crop that `senet.data.transforms.random_resized_crop` takes,
    with the same draws from `rng` (tests/test_dali.py checks the two agree)."""
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = height * width * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= width and 0 < ch <= height:
            y = rng.randint(0, height - ch)  # y before x: the order random_resized_crop draws them in
            return rng.randint(0, width - cw), y, cw, ch
    if width / height < ratio[0]:
        cw, ch = width, round(width / ratio[0])
    elif width / height > ratio[1]:
        cw, ch = round(height * ratio[1]), height
    else:
        cw, ch = width, height
    return (width - cw) // 2, (height - ch) // 2, cw, ch


def eval_geometry(width: int, height: int, resize_to: int, crop: int) -> tuple[int, int, int, int]:
    """(resized width, resized height, crop x, crop y) of `senet.data.transforms.resize_center_crop`."""
    if height <= width:
        nh, nw = resize_to, int(resize_to * width / height)
    else:
        nh, nw = int(resize_to * height / width), resize_to
    return nw, nh, round((nw - crop) / 2), round((nh - crop) / 2)


def read_encoded(path: str) -> tuple[np.ndarray, int, int]:
    """The bytes of an image file and its (width, height) from the header, after senet.data.decode's
    checks on the file, its size and its declared pixels; BadImageError naming the file otherwise."""
    buf, size = read_image_bytes(path)  # every check before decoding, the JPEG scan limit among them
    if size is None:
        raise bad_image(
            path,
            "has no image header whose size can be read before decoding (DALI's decoder has "
            "no pixel cap, so it is not given the file; data.loader=paddle may read it)",
        )
    return buf, size[0], size[1]


# ---------------------------------------------------------------- what Python hands DALI


class _Feed:
    """The pipeline's external source: one batch of prepared samples per call, from the sampler's keys.

    A sample is (path, encoded bytes, label, parameters): train (x, y, w, h, flip), val (resized
    width, resized height, crop x, crop y). Batches handed to DALI and not yet returned by it are
    kept in `in_flight`, to find a file that DALI could not decode; `requeue` serves batches again
    after a pipeline was rebuilt. Raising StopIteration ends DALI's epoch.
    """

    def __init__(self, dataset: ImageFileDataset, train: bool, skip_bad: bool) -> None:
        self.dataset, self.train, self.skip_bad = dataset, train, skip_bad
        self.keys: Iterator[list] = iter(())
        self.in_flight: deque[list[tuple]] = deque()
        self.requeue: deque[list[tuple]] = deque()
        self.skipped: list[str] = []
        self.empty_batches = 0  # batches left out because all their files were bad, not yet yielded as empty

    def start(self, keys: Iterator[list]) -> None:
        self.keys = keys
        self.in_flight.clear()
        self.requeue.clear()

    def stop(self) -> None:
        """Hand DALI nothing more this epoch (the batches already in flight still come out)."""
        self.keys = iter(())
        self.requeue.clear()

    def prepare(self, key: int | tuple[int, int]) -> tuple:
        ds = self.dataset
        index, rng = ds._rng(key)  # the generator ImageFileDataset seeds for this sample
        path = ds.path(index)
        buf, width, height = read_encoded(path)
        if self.train:
            x, y, w, h = train_window(width, height, ds.scale, ds.ratio, rng)
            params = (x, y, w, h, int(rng.random() < ds.hflip))  # the draw hflip() makes, after the crop's
        else:
            params = eval_geometry(width, height, ds.eval_resize, ds.eval_crop)
        return path, buf, int(ds.labels[index]), params

    def __call__(self) -> tuple[list[np.ndarray], ...]:
        samples: list[tuple] = []
        while not samples:  # with skip, a batch of only bad files is left out (DALI takes no empty batch)
            if self.requeue:
                samples = self.requeue.popleft()
                continue
            for key in next(self.keys):  # StopIteration: the epoch's last batch was handed out
                try:
                    samples.append(self.prepare(key))
                except BadImageError as e:
                    if not self.skip_bad:
                        raise
                    self.skipped.append(e.path)
            if not samples:
                self.empty_batches += 1  # the loader yields an empty batch in its place (loader.empty_batch)
        self.in_flight.append(samples)
        return columns(samples, self.train)


def columns(samples: list[tuple], train: bool) -> tuple[list[np.ndarray], ...]:
    """The external source's outputs: encoded bytes, labels, then the per-sample parameters as int32."""
    encoded = [s[1] for s in samples]
    labels = [np.array(s[2], dtype=np.int64) for s in samples]
    params = np.array([s[3] for s in samples], dtype=np.int32)
    if train:  # crop start (x, y), crop shape (w, h), flip
        return encoded, labels, list(params[:, 0:2]), list(params[:, 2:4]), list(params[:, 4])
    # resized size (w, h) as float, as fn.resize takes it; crop start (x, y)
    return (
        encoded,
        labels,
        list(params[:, 0].astype(np.float32)),
        list(params[:, 1].astype(np.float32)),
        list(params[:, 2:4]),
    )


# ---------------------------------------------------------------- the DALI pipeline


def define_pipeline(feed: _Feed, batch_size: int, threads: int, device_id: int | None, data_cfg: dict) -> Pipeline:
    """The DALI pipeline of one split, defined but not built: train (decode the crop window, resize, flip)
    or val (decode, resize the shorter side, centre crop), with the decoder on the GPU when device_id is
    set. DALI checks every operator and argument here; only build() needs the device (CUDA for a GPU)."""
    from nvidia.dali import fn, pipeline_def, types

    decoder = "cpu" if device_id is None else "mixed"
    # On the GPU, the CPU decoder's chroma upsampling, so both decode the same pixels where they can.
    gpu_args = {} if device_id is None else {"jpeg_fancy_upsampling": True}

    @pipeline_def(
        batch_size=batch_size,
        num_threads=threads,
        device_id=device_id,
        prefetch_queue_depth=PREFETCH,
        exec_dynamic=True,
    )  # outputs stay valid while Paddle holds them (DLPack)
    def train_pipeline():
        encoded, labels, start, shape, flip = fn.external_source(
            source=feed,
            num_outputs=5,
            batch=True,
            dtype=[types.UINT8, types.INT64, types.INT32, types.INT32, types.INT32],
        )
        images = fn.decoders.image_slice(
            encoded,
            device=decoder,
            output_type=types.RGB,
            adjust_orientation=False,
            start=start,
            shape=shape,
            axis_names="WH",
            **gpu_args,
        )
        size = data_cfg["image_size"]
        images = fn.resize(images, resize_x=size, resize_y=size, interp_type=types.INTERP_LINEAR, antialias=True)
        return fn.flip(images, horizontal=flip), labels

    @pipeline_def(
        batch_size=batch_size,
        num_threads=threads,
        device_id=device_id,
        prefetch_queue_depth=PREFETCH,
        exec_dynamic=True,
    )
    def val_pipeline():
        encoded, labels, width, height, start = fn.external_source(
            source=feed,
            num_outputs=5,
            batch=True,
            dtype=[types.UINT8, types.INT64, types.FLOAT, types.FLOAT, types.INT32],
        )
        images = fn.decoders.image(encoded, device=decoder, output_type=types.RGB, adjust_orientation=False, **gpu_args)
        images = fn.resize(images, resize_x=width, resize_y=height, interp_type=types.INTERP_LINEAR, antialias=True)
        crop = data_cfg["eval_crop"]
        return fn.slice(images, start=start, shape=[crop, crop], axis_names="WH"), labels

    return train_pipeline() if feed.train else val_pipeline()


def _dali_error_reason(e: Exception) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    useful = [line for line in lines if "failure" in line.lower() or "error" in line.lower()]
    return (useful or lines or ["no message"])[-1][:200]


class _Probe:
    """Decodes one file at a time with DALI (the pipeline's decoder), to find the file a batch failed on."""

    def __init__(self, device_id: int | None) -> None:
        self.device_id, self.pipe = device_id, None

    def refuses(self, buf: np.ndarray) -> str | None:
        from nvidia.dali import fn, pipeline_def, types

        if self.pipe is None:

            @pipeline_def(batch_size=1, num_threads=1, device_id=self.device_id, prefetch_queue_depth=1)
            def probe():
                encoded = fn.external_source(name="encoded", dtype=types.UINT8)
                return fn.decoders.image(
                    encoded,
                    device="cpu" if self.device_id is None else "mixed",
                    output_type=types.RGB,
                    adjust_orientation=False,
                )

            self.pipe = probe()
            self.pipe.build()
        try:
            self.pipe.run(encoded=[buf])
        except RuntimeError as e:
            self.pipe = None  # a pipeline that failed is not used again
            return _dali_error_reason(e)
        return None


def to_paddle_via_dlpack(tensor: TensorCPU | TensorGPU, stream: int | None) -> paddle.Tensor:
    """A dense DALI tensor as a paddle.Tensor sharing its memory (the GPU path; DALI's Paddle plugin does
    the same). `stream` is Paddle's current CUDA stream: DALI makes that stream wait for the data."""
    return paddle.utils.dlpack.from_dlpack(tensor.__dlpack__(stream=stream))


def _to_paddle(out: TensorListCPU | TensorListGPU) -> paddle.Tensor:
    from nvidia.dali.backend import TensorListGPU

    if isinstance(out, TensorListGPU):
        return to_paddle_via_dlpack(out.as_tensor(), paddle.device.cuda.current_stream().cuda_stream)
    return paddle.to_tensor(out.as_array())  # CPU: through numpy, to Paddle's current device


class DaliLoader:
    """The DALI counterpart of `senet.data.loader.Loader`: the same interface, batches and sample order."""

    def __init__(
        self,
        dataset: ImageFileDataset,
        sampler: ShardedBatchSampler,
        num_workers: int,
        on_bad_image: str,
        data_cfg: dict,
    ) -> None:
        require_dali()
        if data_cfg["color_jitter"] > 0:
            raise DatasetError(
                f"data.loader=dali does not apply data.color_jitter={data_cfg['color_jitter']}; "
                "set -o data.color_jitter=0.0 or data.loader=paddle"
            )
        # The per-sample augmentations of modern recipes run in the paddle loader's workers only.
        erasing = (data_cfg.get("random_erasing") or {}).get("prob", 0.0)
        for key, value, off in (
            ("auto_augment", data_cfg.get("auto_augment"), None),
            ("random_erasing.prob", erasing, 0.0),
            ("repeated_aug", data_cfg.get("repeated_aug", 1), 1),
        ):
            if value != off:
                raise DatasetError(
                    f"data.loader=dali does not apply data.{key}={value} (the paddle loader does): set "
                    f"data.loader=paddle or -o data.{key}={'null' if off is None else off}"
                )
        self.dataset, self.sampler, self.data_cfg = dataset, sampler, data_cfg
        self.threads = max(1, num_workers)  # DALI's CPU threads (decoding on a CPU, Huffman decoding on a GPU)
        self.device_id = dali_device_id()
        self._feed = _Feed(dataset, sampler.shuffle, on_bad_image == "skip")
        self._probe = _Probe(self.device_id)
        self._pipe = None  # built at the first epoch, rebuilt after a failure

    # What only the sampler decides is Loader's own code: set_epoch(epoch, start_batch), len(), and
    # batches_on_every_rank().
    set_epoch = Loader.set_epoch
    __len__ = Loader.__len__
    batches_on_every_rank = Loader.batches_on_every_rank

    def pop_skipped(self) -> list[str]:
        """Bad files skipped (with on_bad_image=skip) since the last call; call it at the end of each epoch."""
        skipped, self._feed.skipped = sorted(self._feed.skipped), []
        return skipped

    def __iter__(self) -> Iterator[tuple[paddle.Tensor, paddle.Tensor]]:
        self.sampler.stop = False
        if self._pipe is None:
            self._pipe = self._new_pipeline()
        self._feed.start(iter(self.sampler))
        try:
            while True:
                try:
                    images, labels = self._pipe.run()
                except StopIteration:
                    self._pipe.reset()
                    while self._feed.empty_batches:  # the epoch's last batches were all bad
                        self._feed.empty_batches -= 1
                        yield empty_batch()
                    return
                except RuntimeError as e:
                    self._recover(e)  # raises BadImageError, or drops the bad files and rebuilds the pipeline
                    continue
                self._feed.in_flight.popleft()
                # A batch of only bad files still counts as one of the epoch's batches: an empty batch in its
                # place, yielded here, up to the pipeline's prefetch depth earlier than its position.
                while self._feed.empty_batches:
                    self._feed.empty_batches -= 1
                    yield empty_batch()
                yield _to_paddle(images), _to_paddle(labels)
        except GeneratorExit:  # the consumer stopped mid-epoch: drop what is in flight
            self._drain()
            raise
        except BaseException:
            self._pipe = None  # e.g. BadImageError from the feed: batches are left in flight
            raise

    def _new_pipeline(self) -> Pipeline:
        pipe = define_pipeline(self._feed, self.sampler.batch_size, self.threads, self.device_id, self.data_cfg)
        pipe.build()
        return pipe

    def _drain(self) -> None:
        self._feed.stop()
        try:
            while True:
                self._pipe.run()
        except StopIteration:
            self._pipe.reset()
        except Exception:  # noqa: BLE001 - a failing batch that nobody will read: start afresh next epoch
            self._pipe = None

    def _recover(self, error: RuntimeError) -> None:
        """After a failed pipeline run: name the files in flight that do not decode; raise or skip them."""
        self._pipe = None  # a pipeline that failed is not used again
        batches = list(self._feed.in_flight)
        bad = {}
        for path, buf, _, _ in (s for b in batches for s in b):
            try:
                decode_image(path)
                reason = self._probe.refuses(buf)
                if reason:
                    bad[path] = str(bad_image(path, f"DALI cannot decode it ({reason})"))
            except BadImageError as e:
                bad[path] = str(e)
        if not bad:  # not a file that we can name: DALI's own failure
            raise RuntimeError(f"DALI's pipeline failed: {_dali_error_reason(error)}") from error
        if not self._feed.skip_bad:
            first = next(iter(bad.values()))
            e = BadImageError(first)
            e.path = next(iter(bad))
            raise e
        self._feed.skipped += list(bad)
        kept = [[s for s in b if s[0] not in bad] for b in batches]
        self._feed.in_flight.clear()
        self._feed.requeue.extendleft(reversed([b for b in kept if b]))
        self._pipe = self._new_pipeline()
