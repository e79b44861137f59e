"""Recording the gate values of every attention block: what senet.analysis summarises and what the
trainer's VisualDL histograms show (train.log_se_every).

Recording uses a forward post-hook on each gate layer the block declares (AttentionBlock.gates(), a
senet.attention.Gate): its output is the gate value itself, whatever the block's impl, squeeze or
placement, and nothing is needed from the block's forward. Hooks are removed afterwards; the model is
left unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import paddle
import paddle.nn as nn

from senet.attention import AttentionBlock, attention_blocks, kind_of

CHANNEL = "channel"  # the gate kind the figures summarise (AttentionBlock.gates)


def _gate_channel_last(block: AttentionBlock) -> bool:
    """Whether a block's channel gates come channels-last: as the block's layout, except after a Linear
    FC, which acts on the last axis (SE's impl=linear NoSqueeze gates are [N, H, W, C] in an NCHW
    network; from the shape alone they cannot be told apart from [N, C, H, W] when W == C)."""
    return block.channel_last or isinstance(getattr(block, "fc2", None), nn.Linear)


def _per_channel(block: AttentionBlock, s: paddle.Tensor) -> np.ndarray:
    """A channel gate's output in any layout -> float32 [N, C]. Gates that vary over positions
    (SE's NoSqueeze) are averaged there."""
    a = s.astype("float32").numpy()
    if a.ndim > 2 and not _gate_channel_last(block):
        a = np.moveaxis(a, 1, -1)
    if a.shape[-1] != block.channels:
        raise RuntimeError(
            f"cannot find the {block.channels} channels of a {kind_of(block).title} block in its "
            f"gate output of shape {list(s.shape)}"
        )
    return a.reshape(a.shape[0], -1, block.channels).mean(axis=1)


def _per_image(s: paddle.Tensor) -> np.ndarray:
    """Any other gate (CBAM's spatial map [N, 1, H, W]) -> float32 [N, values per image]."""
    a = s.astype("float32").numpy()
    return a.reshape(a.shape[0], -1)


def _record_key(name: str, kind: str) -> str:
    """Channel gates under the block's name ("layer1.0.se"), others under "<name>.<kind>" ("layer1.0.se.spatial")."""
    return name if kind == CHANNEL else f"{name}.{kind}"


@contextmanager
def _hooks(model: nn.Layer, kinds: Sequence[str] | None) -> Iterator[dict[str, list[np.ndarray]]]:
    """Within the block, the wanted gates of every attention block are appended to records[key], one
    array per forward (see record_gates for the keys and shapes)."""
    records: dict[str, list[np.ndarray]] = {}
    handles = []

    def recorder(block: AttentionBlock, kind: str, sink: list[np.ndarray]):
        def hook(layer: nn.Layer, inputs: Any, output: paddle.Tensor) -> None:  # returns None: output untouched
            sink.append(_per_channel(block, output) if kind == CHANNEL else _per_image(output))

        return hook

    try:
        for name, block in attention_blocks(model).items():
            for kind, gate in block.gates().items():
                if kinds is None or kind in kinds:
                    sink = records.setdefault(_record_key(name, kind), [])
                    handles.append(gate.register_forward_post_hook(recorder(block, kind, sink)))
        yield records
    finally:
        for h in handles:
            h.remove()


def record_gates(model: nn.Layer, x: paddle.Tensor, kinds: Sequence[str] | None = (CHANNEL,)) -> dict[str, np.ndarray]:
    """The gate values of every attention block for one already-normalised batch, in network order.

    kinds=("channel",) (the default): {block name: float32 [N, C]}, one weight per channel (SE's s,
    ECA's w, CBAM's M_c), what Figures 6 and 7 summarise. Other kinds, or kinds=None for every gate the
    blocks declare, add {"<block name>.<kind>": float32 [N, values per image]}: CBAM's spatial map as
    "layer1.0.se.spatial", [N, H*W].

    One eval-mode, no-grad forward; afterwards every sublayer's train/eval flag (and Paddle's global
    train/eval mode) is what it was, and no hook is left behind. For an AMP O2 model call it under the
    same paddle.amp.auto_cast as the training step.
    """
    modes = [(layer, layer.training) for layer in [model, *model.sublayers()]]
    tracer = paddle.base.framework._dygraph_tracer()  # Layer.eval() also flips this global mode
    tracer_train = tracer._train_mode
    model.eval()
    try:
        with paddle.no_grad(), _hooks(model, kinds) as records:
            model(x)
    finally:
        for layer, training in modes:
            layer.training = training
        if tracer_train:
            tracer.train_mode()
        else:
            tracer.eval_mode()
    return {name: np.concatenate(parts) for name, parts in records.items() if parts}
