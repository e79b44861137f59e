"""CPU speed paths for the attention blocks, apart from their math.

Each function computes exactly what its reference computes (tests/test_attention.py checks each
against it) and is picked only where it is faster:

  global_mean(x)       reference x.mean over H x W, keepdim   -> a matrix product with 1/(H*W)
  global_max(x)        reference x.max over H x W, keepdim    -> a max pool of the whole map
  scale_channels(x, s) reference x * s, s one weight per channel -> inference batch norm
  channel_max(x)       reference x.max over C, keepdim          -> a max pool down the channel axis
  scale_positions(x, s) reference x * s, s one weight per position -> s expanded, then x * s

A block keeps one `KernelCache` for the constants these paths make once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import paddle
import paddle.nn.functional as F

_pooled_mean = False  # set while exporting; see pooled_means


class KernelCache:
    """Constants made once per block: the 1/(H*W) vectors of global_mean and the batch-norm
    constants of scale_channels. Plain attributes: not parameters, not in the state dict."""

    def __init__(self) -> None:
        self.mean_weights: dict[tuple, paddle.Tensor] = {}
        self.bn_constants: tuple[paddle.Tensor, paddle.Tensor] | None = None


@contextlib.contextmanager
def pooled_means() -> Iterator[None]:
    """Within the block global_mean is a global average pool: the same function (float32 sums in
    another order). For export: Paddle Inference 3.3.1 keeps oneDNN activations channels-last, where a
    spatial mean runs oneDNN 3.6's reference kernel (40 ms for one 256x56x56 map, against 0.1 ms for
    the pool) and the matmul form needs every input reordered to NCHW first (13 ms per SE-ResNet-50
    image). A pool runs on the channels-last data as it is. The switch is process-wide: an export runs
    alone in its process (tools/export.py, the bench's export step), never beside training."""
    global _pooled_mean
    was, _pooled_mean = _pooled_mean, True
    try:
        yield
    finally:
        _pooled_mean = was


def global_mean(x: paddle.Tensor, channel_last: bool, cache: KernelCache) -> paddle.Tensor:
    """The mean over H x W: N x C x H x W -> N x C x 1 x 1 (N x H x W x C -> N x 1 x 1 x C).

    As a matrix product with a vector of 1/(H*W). On CPU Paddle's mean is a slow reduction and its
    backward slower still: forward + backward of one 8 x 256 x 56 x 56 map take ~100 ms, against
    ~5 ms here. A batch of -1 keeps this valid under paddle.jit."""
    h, w = x.shape[1:3] if channel_last else x.shape[2:4]
    if _pooled_mean:
        return F.adaptive_avg_pool2d(x, 1, data_format="NHWC" if channel_last else "NCHW")
    hw, c = h * w, x.shape[-1] if channel_last else x.shape[1]
    if channel_last:  # [1, HW] @ [N, HW, C] -> [N, 1, C]: 4-17x quicker than transposing x
        z = paddle.matmul(_mean_weights([1, hw], x, cache), x.reshape([-1, hw, c]))
        return z.reshape([-1, 1, 1, c])
    return paddle.matmul(x.reshape([-1, hw]), _mean_weights([hw, 1], x, cache)).reshape([-1, c, 1, 1])


def _mean_weights(shape: list[int], x: paddle.Tensor, cache: KernelCache) -> paddle.Tensor:
    """A `shape` tensor filled with 1/(H*W), in x's dtype and place, made once: inside the network
    each paddle.full costs ~0.07 ms, 1.2 ms per SE-ResNet-50 image at batch 1."""
    hw = shape[0] * shape[1]
    if not paddle.in_dynamic_mode():  # tracing a static graph: there it is a constant op
        return paddle.full(shape, 1.0 / hw, dtype=x.dtype)
    key = (*shape, x.dtype, str(x.place))
    if key not in cache.mean_weights:
        cache.mean_weights[key] = paddle.full(shape, 1.0 / hw, dtype=x.dtype).to(x.place)
    return cache.mean_weights[key]


def global_max(x: paddle.Tensor, channel_last: bool) -> paddle.Tensor:
    """The max over H x W, keepdim. Not x.max(axis=[2, 3]): in Paddle 3.3.1 on CPU its backward takes
    time quadratic in H*W (1.1 s for one 64 x 28 x 28 map, 11 minutes for 8 x 256 x 56 x 56). The
    pool's gradient goes to the first maximum where max splits it among exact ties; the forward is
    identical."""
    h, w = x.shape[1:3] if channel_last else x.shape[2:4]
    return F.max_pool2d(x, [h, w], data_format="NHWC" if channel_last else "NCHW")


def channel_max(x: paddle.Tensor, channel_last: bool) -> paddle.Tensor:
    """The max over channels, keepdim: N x C x H x W -> N x 1 x H x W (NHWC: N x H x W x 1).

    As a max pool whose window is the whole channel axis of x seen as one N x 1 x C x HW map (a
    reshape, no copy). x.max(axis=1) has the same forward, but in Paddle 3.3.1 on CPU its backward
    took 74 s for one 8 x 256 x 56 x 56 map, against 0.08 s here."""
    if channel_last:
        n, h, w, c = x.shape
        return F.max_pool2d(x.reshape([-1, 1, h * w, c]), [1, c]).reshape([-1, h, w, 1])
    n, c, h, w = x.shape
    return F.max_pool2d(x.reshape([-1, 1, c, h * w]), [c, 1]).reshape([-1, 1, h, w])


def scale_positions(x: paddle.Tensor, s: paddle.Tensor) -> paddle.Tensor:
    """x * s with s one weight per position of each image (N x 1 x H x W, or N x H x W x 1).

    In dygraph s is first expanded to x's shape: Paddle's CPU multiply is slow to broadcast, and
    forward + backward of one 8 x 256 x 56 x 56 map took 0.44 s broadcasting, 0.27 s expanded. A
    traced graph keeps the plain broadcasting multiply."""
    if paddle.in_dynamic_mode():
        return x * paddle.expand_as(s, x)
    return x * s


def scale_channels(x: paddle.Tensor, s: paddle.Tensor, channel_last: bool, cache: KernelCache) -> paddle.Tensor:
    """x * s with s one weight per channel of each image (N x C x 1 x 1, or N x 1 x 1 x C)."""
    if _batch_norm_applies(x, s, channel_last):
        return _scale_by_batch_norm(x, s, cache)
    # Out of place: autograd needs x for the gradient of s, and in SE-PRE and SE-Identity the caller
    # still holds x as the shortcut. (In place saves ~1 ms per batch-1 image.)
    return x * s


def _batch_norm_applies(x: paddle.Tensor, s: paddle.Tensor, channel_last: bool) -> bool:
    """Whether the scale may run as a batch-norm kernel: dygraph, no gradient wanted, fp32 NCHW on the
    CPU, one weight per channel. Exported graphs keep the plain multiply.

    The device test is paddle.get_device(), not x.place: under paddle.jit.to_static's default
    bytecode tracing (SOT), reading x.place broke the trace (UnboundLocalError)."""
    return (
        paddle.in_dynamic_mode()
        and x.stop_gradient
        and s.stop_gradient
        and not channel_last
        and s.shape[2:] == [1, 1]
        and x.dtype == paddle.float32
        and s.dtype == paddle.float32
        and paddle.get_device() == "cpu"
    )


def _scale_by_batch_norm(x: paddle.Tensor, s: paddle.Tensor, cache: KernelCache) -> paddle.Tensor:
    """x * s through Paddle's inference batch-norm kernel: the same numbers up to float32 rounding. On
    an AMD EPYC it was bit for bit (except that -0.0 comes out as +0.0: the kernel adds its zero bias);
    on an Intel Xeon with AVX-512 every product came out up to 2.4e-7 relative (2 ulp) off, because the
    kernel's 1 / sqrt(1 + 0) is not exactly 1 there.

    On CPU Paddle's broadcasting multiply is slow: 0.27 ms for one 256 x 56 x 56 map, where a
    same-shape add takes 0.04 ms. Inference batch norm with mean 0, variance 1, epsilon 0, bias 0 and
    the gate as its weight computes x * s per channel in 0.08 ms: 1.9 -> 0.6 ms per SE-ResNet-50
    image. It has no backward, hence inference only. Seen as N*C channels of one image, it scales
    every sample by its own weights."""
    n, c, h, w = x.shape
    # One pair of constants per block, for the last batch size seen: a cache keyed by batch size would
    # grow with every new size a server sees.
    if cache.bn_constants is None or cache.bn_constants[0].shape[0] != n * c:
        cache.bn_constants = (paddle.zeros([n * c]), paddle.ones([n * c]))
    zeros, ones = cache.bn_constants
    y = F.batch_norm(
        x.reshape([1, n * c, h, w]), zeros, ones, weight=s.reshape([n * c]), bias=zeros, training=False, epsilon=0.0
    )
    return y.reshape([n, c, h, w])
