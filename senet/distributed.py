"""Data-parallel training on Paddle's own engine: `python -m paddle.distributed.launch ... tools/train.py`.

Paddle's DataParallel averages gradients across ranks (NCCL on GPUs, gloo on CPUs). What Paddle
lacks on CPUs is synchronised BatchNorm (its `sync_batch_norm` kernel is GPU-only), so
SyncBatchNormCPU below provides it with two gloo all-reduces per BN layer, written with
differentiable ops so that autograd derives the backward pass.
"""

from __future__ import annotations

import hashlib

import numpy as np
import paddle
import paddle.distributed as dist
import paddle.nn as nn
from paddle.autograd import PyLayer


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a launched job."""
    return dist.get_rank(), dist.get_world_size()


class _AllReduceSum(PyLayer):
    """Sum a tensor over ranks. The backward is an all-reduce too: every rank's loss depends on the
    sum, so the gradient reaching each rank's input is the sum of all ranks' gradients."""

    @staticmethod
    def forward(ctx, x: paddle.Tensor) -> paddle.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: paddle.Tensor) -> paddle.Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


class SyncBatchNormCPU(nn.BatchNorm2D):
    """BatchNorm whose training statistics are those of the global batch across all ranks.

    Same parameters, buffers and eval behaviour as nn.BatchNorm2D (NCHW); the running variance is
    the biased batch variance, as Paddle's own BN keeps it.
    """

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if not self.training or dist.get_world_size() == 1:
            return super().forward(x)
        count = paddle.full([1], x.shape[0] * x.shape[2] * x.shape[3], dtype=x.dtype)
        stats = _AllReduceSum.apply(paddle.concat([x.sum(axis=[0, 2, 3]), (x * x).sum(axis=[0, 2, 3]), count]))
        c = x.shape[1]
        n = stats[2 * c]
        mean = stats[:c] / n
        var = stats[c : 2 * c] / n - mean * mean
        with paddle.no_grad():
            m = self._momentum  # Paddle's convention: running = momentum * running + (1 - momentum) * batch
            paddle.assign(self._mean * m + mean.detach() * (1 - m), output=self._mean)
            paddle.assign(self._variance * m + var.detach() * (1 - m), output=self._variance)
        scale = self.weight * paddle.rsqrt(var + self._epsilon)
        return x * scale.reshape([1, c, 1, 1]) + (self.bias - mean * scale).reshape([1, c, 1, 1])


def convert_sync_batchnorm(model: nn.Layer, on_gpu: bool) -> nn.Layer:
    """Paddle's SyncBatchNorm on GPUs; SyncBatchNormCPU (same state_dict) on CPUs."""
    if on_gpu:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2D and child._data_format == "NCHW":
            sync = SyncBatchNormCPU(child._num_features, momentum=child._momentum, epsilon=child._epsilon)
            sync.set_state_dict(child.state_dict())
            setattr(model, name, sync)
        else:
            convert_sync_batchnorm(child, on_gpu)
    return model


def weights_fingerprint(model: nn.Layer) -> str:
    """A digest of the trainable weights, to check that every rank holds exactly the same model."""
    h = hashlib.sha1()
    for name, p in model.named_parameters():
        if not p.stop_gradient:  # BN running statistics are per-rank unless BN is synchronised
            h.update(name.encode())
            h.update(np.ascontiguousarray(p.numpy()).tobytes())
    return h.hexdigest()[:12]


def ranks_in_sync(model: nn.Layer) -> tuple[bool, list[str]]:
    """Gather every rank's weight fingerprint; (all equal, fingerprints by rank)."""
    mine = weights_fingerprint(model)
    if dist.get_world_size() == 1:
        return True, [mine]
    gathered: list = []
    dist.all_gather_object(gathered, mine)
    return len(set(gathered)) == 1, gathered


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank `src`'s value of a small picklable object, on every rank."""
    if dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
