"""The one training step: normalise, forward under autocast, loss, backward (with or without a loss
scaler), optimizer and scheduler step, EMA.

The trainer (senet.train), `make bench` (senet.bench) and scripts/bench_trainer.py all call
`train_step`, so what the benchmark times is what the trainer runs. Policies around a step (non-finite
losses, logging, checkpoints, stop signals) belong to the caller; the step never reads a value back
to the host.

Targets are either int class labels [N] or soft targets, float [N, classes] (each row a probability
distribution, as mixup and cutmix make); every loss takes both (senet.losses: train.loss is ce, soft_ce
or bce). train.label_smoothing applies to soft targets as well, so a transform that folds smoothing into
its targets (senet.mixup, as timm's Mixup) wants StepParts.label_smoothing=0: the trainer passes 0 when
train.mixup is on. Gradient clipping (optimizer.clip_grad_norm) is the optimizer's own grad_clip, which
Paddle applies inside optimizer.step(): with a loss scaler, GradScaler.step unscales the gradients first,
so the norm clipped is the true one.

The batch-transform slot (`BatchTransform`) is where mixup or cutmix goes, as timm's `mixup_fn`: a
callable (images, labels) -> (images, targets), applied by the trainer to every training batch after
loading and before the step, never to eval batches; None (the default) is the identity. Unlike timm,
it sees the batch as the loader hands it to the step: uint8 NHWC images on the device, before the
on-device normalisation (an affine map, so mixing before it equals mixing after). It may return
float32 NHWC images in the same 0-255 range; the trainer's top-1 then counts against the argmax of
the soft targets. The trainer asks a `TransformFor` for each batch's transform by the batch's place in
the run (epoch, batch index), so a transform that draws random numbers (senet.mixup.Mixup.at) draws from
that place and a resumed run draws what the uninterrupted one did.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from senet.data import normalize_batch
from senet.losses import training_loss


@dataclass
class StepParts:
    """What a training step needs, built once per run."""

    model: nn.Layer
    optimizer: Any
    mean: list[float]  # data.mean / data.std: the on-device normalisation of the uint8 batch
    std: list[float]
    data_format: str = "NCHW"
    amp: dict | None = None  # {"enabled", "level", "dtype"} as resolved for the device; None: fp32
    scaler: paddle.amp.GradScaler | None = None  # fp16 loss scaling
    scheduler: Any = None  # stepped once per call, updated or not (the LR schedule counts iterations)
    ema: Any = None  # anything with update(model), e.g. senet.optim.ModelEMA
    label_smoothing: float = 0.0
    loss: str = "ce"  # train.loss (senet.losses); an eval's loss is always cross-entropy
    bce_target_thresh: float | None = None  # train.bce_target_thresh, for loss "bce"


# (images, labels) -> (images, targets): see the module docstring.
BatchTransform = Callable[[paddle.Tensor, paddle.Tensor], tuple[paddle.Tensor, paddle.Tensor]]
# (epoch, batch index in the epoch) -> the transform of that batch (senet.mixup.Mixup.at).
TransformFor = Callable[[int, int], BatchTransform]


LOW_PRECISION = ("float16", "bfloat16")


def decorate_o2(model: nn.Layer, optimizer: Any, dtype: str) -> tuple[nn.Layer, Any]:
    """AMP O2: fp16/bf16 weights in the model, fp32 master weights in the optimizer (Micikevicius et al.).

    Call it before paddle.DataParallel wraps the model: Paddle refuses a wrapped model ("first use
    paddle.amp.decorate() ... and then call paddle.DataParallel"), and PaddleClas decorates first too.
    save_dtype="float32" (as PaddleClas) makes state_dict(), and so every checkpoint, model.safetensors,
    eval, export and model.weights, see float32 weights: without it they hold fp16 or bf16, which the
    fp32 models refuse on load and which numpy stores bf16 as uint16. On a CPU Paddle returns both
    unchanged (no fp16 kernels there).
    """
    return paddle.amp.decorate(model, optimizer, level="O2", dtype=dtype, master_weight=True, save_dtype="float32")


def weights_dtype(model: nn.Layer) -> str:
    """ "float16" or "bfloat16" if the model holds AMP O2 weights (its BatchNorm stays fp32), else "float32"."""
    for p in model.parameters():
        name = str(p.dtype).removeprefix("paddle.")
        if name in LOW_PRECISION:
            return name
    return "float32"


def eval_amp(model: nn.Layer, amp: dict | None) -> dict | None:
    """The AMP state an evaluation of `model` must run in.

    A model holding fp16/bf16 weights (AMP O2) can only be run under autocast in that dtype: fp32
    inputs would reach fp16 conv weights. So under O2 the eval runs in the AMP dtype whatever
    train.amp.eval says (PaddleClas does the same). A model with fp32 weights follows train.amp.eval.
    """
    dtype = weights_dtype(model)
    if dtype == "float32":
        return amp
    return {**(amp or {}), "enabled": True, "level": "O2", "dtype": dtype, "eval": True}


def forward_loss(
    parts: StepParts, images: paddle.Tensor, targets: paddle.Tensor, train: bool = True
) -> tuple[paddle.Tensor, paddle.Tensor]:
    """(fp32 logits, loss) of a uint8 NHWC batch: training, parts.loss with label smoothing; for an eval,
    cross-entropy without.

    `targets`: int labels [N] or soft targets, float [N, classes]. For an eval, give `parts.amp` as
    eval_amp resolves it.
    """
    amp = parts.amp or {"enabled": False, "level": "O1", "dtype": "float16"}
    x = normalize_batch(images, parts.mean, parts.std, parts.data_format)
    use_amp = amp["enabled"] and (train or amp.get("eval", False))
    with paddle.amp.auto_cast(enable=use_amp, level=amp["level"], dtype=amp["dtype"]):
        logits = parts.model(x)
    logits = logits.astype("float32")
    if train:
        loss = training_loss(parts.loss, logits, targets, parts.label_smoothing, parts.bce_target_thresh)
    else:
        loss = F.cross_entropy(logits, targets, soft_label=paddle.is_floating_point(targets))
    return logits, loss


def train_step(
    parts: StepParts,
    images: paddle.Tensor,
    targets: paddle.Tensor,
    update_if: Callable[[paddle.Tensor], bool] | None = None,
) -> tuple[paddle.Tensor, paddle.Tensor, bool]:
    """One step on a uint8 NHWC batch: (logits, loss, whether backward and the update ran).

    `targets` as in forward_loss.

    `update_if(loss)`, if given, decides before backward whether this step updates the weights (the
    trainer's nan_policy=skip); the scheduler steps either way.
    """
    logits, loss = forward_loss(parts, images, targets, train=True)
    updated = update_if is None or update_if(loss)
    if updated:
        if parts.scaler is not None:
            parts.scaler.scale(loss).backward()
            parts.scaler.step(parts.optimizer)  # skips the update when gradients overflowed
            parts.scaler.update()
        else:
            loss.backward()
            parts.optimizer.step()
        parts.optimizer.clear_grad(set_to_zero=False)
        if parts.ema is not None:
            parts.ema.update(parts.model)
    if parts.scheduler is not None:
        parts.scheduler.step()
    return logits, loss, updated
