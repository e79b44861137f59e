"""The training losses (train.loss) on hard or soft targets: cross-entropy, soft-target cross-entropy and
binary cross-entropy.

"ResNet strikes back" (Wightman, Touvron and Jégou, 2021, Section 3.2) trains with binary cross-entropy on
the mixed targets of mixup and CutMix, each class a yes/no question, with the targets thresholded at 0.2
(recipes A1 and A2); timm's BinaryCrossEntropy and SoftTargetCrossEntropy (timm/loss/) are the references,
and tests/fixtures/recipes holds their values.

Targets are int labels [N] or soft targets, float [N, classes] (senet.mixup makes them). One rule for label
smoothing in every loss: the step smooths whatever targets it gets by train.label_smoothing; a batch
transform that folds the smoothing into its targets (senet.mixup, as timm's Mixup) makes the trainer pass 0.
The evaluation's loss is always plain cross-entropy on the labels, as in timm's validate, so that
runs trained with different losses compare.
"""

from __future__ import annotations

import paddle
import paddle.nn.functional as F

LOSSES = ("ce", "soft_ce", "bce")


def smoothed_one_hot(labels: paddle.Tensor, classes: int, smoothing: float = 0.0) -> paddle.Tensor:
    """float32 [N, classes]: smoothing / classes everywhere and 1 - smoothing + smoothing / classes at each
    label, the values of timm's one_hot(on_value, off_value), each rounded to float32 once as timm's are."""
    off = smoothing / classes
    hot = F.one_hot(labels.astype("int64"), classes)
    return paddle.where(hot > 0, paddle.full_like(hot, 1.0 - smoothing + off), paddle.full_like(hot, off))


def dense_targets(targets: paddle.Tensor, classes: int, smoothing: float = 0.0) -> paddle.Tensor:
    """Soft targets [N, classes] of int labels or soft targets, smoothed: (1 - s) t + s / classes."""
    if not paddle.is_floating_point(targets):
        return smoothed_one_hot(targets, classes, smoothing)
    return targets * (1.0 - smoothing) + smoothing / classes if smoothing else targets


def training_loss(
    name: str,
    logits: paddle.Tensor,
    targets: paddle.Tensor,
    smoothing: float = 0.0,
    bce_target_thresh: float | None = None,
) -> paddle.Tensor:
    """The mean loss `name` (LOSSES) of float32 logits [N, classes] against `targets`.

    ce: Paddle's fused cross-entropy (hard or soft targets). soft_ce: timm's SoftTargetCrossEntropy,
    -sum(t log softmax(z)) averaged over the batch: the same value as ce within float noise, spelled as timm
    spells it. bce: timm's BinaryCrossEntropy, the mean over N x classes of the per-class binary
    cross-entropy with logits; with `bce_target_thresh`, targets above it become 1 and the others 0.
    """
    if name == "ce":
        return F.cross_entropy(logits, targets, soft_label=paddle.is_floating_point(targets), label_smoothing=smoothing)
    dense = dense_targets(targets, logits.shape[-1], smoothing)
    if name == "soft_ce":
        return (-(dense * F.log_softmax(logits, axis=-1)).sum(-1)).mean()
    if name == "bce":
        if bce_target_thresh is not None:
            dense = (dense > bce_target_thresh).astype(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, dense)
    raise ValueError(f"train.loss: {name!r} is not one of {', '.join(LOSSES)}")
