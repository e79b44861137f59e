"""The epoch and eval loops and their meters: what runs at every step (DeiT's engine.py, for this trainer).

`train_one_epoch` trains one epoch of a TrainState through senet.step.train_step (shared with `make
bench` and scripts/bench_trainer.py), with the policies around the step: LossGuard (non-finite losses
and loss-scale overflows), EpochMeter (the log window, the epoch's averages and the share of time spent
waiting for data), gate histograms, mid-epoch checkpoints, stop signals and train.max_steps.
`evaluate` is the val loop, used by the trainer and tools/eval.py (which imports nothing else of the
trainer). Nothing here reads a tensor back to the host at every step: the loss, accuracy and the
non-finite-loss detector stay on the device until a log step, the end of an epoch, or a checkpoint.

The module reads top to bottom in the order things are built: the state, the small helpers, the
meters, then the two loops. senet.train builds everything and runs the epochs; senet.resume finds and
loads a checkpoint to resume from.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import paddle
import paddle.nn as nn

from senet import checkpoint as ckpt
from senet.attention.gates import record_gates
from senet.data import normalize_batch
from senet.data.loader import WorkerDied
from senet.distributed import world
from senet.mixup import mixing_on
from senet.optim import ModelEMA
from senet.runlog import RunLogger
from senet.step import StepParts, TransformFor, eval_amp, forward_loss, train_step


class TrainingError(RuntimeError):
    """Training cannot go on; the message names the step and the last good checkpoint."""


@dataclass
class TrainState:
    """Everything a checkpoint must hold to continue a run exactly."""

    cfg: dict
    model: nn.Layer
    optimizer: Any
    scheduler: Any
    scaler: paddle.amp.GradScaler | None
    ema: ModelEMA | None
    amp: dict
    data_format: str
    epoch: int = 0  # the epoch in progress (0-based)
    batch_in_epoch: int = 0  # batches of `epoch` already trained, for mid-epoch resume
    global_step: int = 0
    best_top1: float = -1.0
    best_epoch: int = -1
    skipped_steps: int = 0  # AMP overflow steps and (with nan_policy=skip) non-finite steps
    history: list = field(default_factory=list)
    # The train stats of an epoch whose training is done but whose eval a signal stopped; the resumed
    # run evaluates it, with these stats in its record, instead of training it again.
    epoch_stats: dict | None = None
    # Loss-scale overflows since the last step that updated the weights. Not checkpointed: a
    # resumed run starts counting again.
    overflows_in_a_row: int = 0
    # Gives the transform applied to each training batch before the step (mixup, cutmix: see senet.step),
    # by the batch's (epoch, index); None: identity. Not checkpointed: it is code, made again on resume.
    transform_for: TransformFor | None = None
    said_data_bound: bool = False  # the data-wait notice was given (once a run; not checkpointed)
    # Writes, prunes and finds this run's checkpoints (not checkpointed; set by senet.train).
    saver: ckpt.CheckpointSaver | None = None
    classes: list[str] | None = None  # the train split's class names, in label order (checkpointed)

    def step_parts(self) -> StepParts:
        """What senet.step.train_step needs of this state. With train.mixup on, the mixed targets carry the
        label smoothing already (senet.mixup), so the step adds none."""
        data, t = self.cfg["data"], self.cfg["train"]
        smoothing = 0.0 if mixing_on(self.cfg) else t["label_smoothing"]
        return StepParts(
            self.model,
            self.optimizer,
            data["mean"],
            data["std"],
            self.data_format,
            self.amp,
            self.scaler,
            self.scheduler,
            self.ema,
            smoothing,
            t["loss"],
            t["bce_target_thresh"],
        )

    def to_checkpoint(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": ckpt.optimizer_state(self.optimizer),
            "lr_scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "ema": self.ema.state_dict() if self.ema else None,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "global_step": self.global_step,
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "skipped_steps": self.skipped_steps,
            "history": self.history,
            "epoch_stats": self.epoch_stats,
            "rng": ckpt.rng_state(),
            "config": self.cfg,
            "arch": self.cfg["model"]["arch"],
            "world_size": world()[1],
            "classes": self.classes,
        }

    def restore(self, state: dict, source: str) -> None:
        ckpt.check_compatible(self.model, state["model"], source, self.cfg["model"]["arch"])
        ckpt.check_stem_era(unwrap(self.model), state.get("config"), source)
        ckpt.set_weights(self.model, state["model"])  # float32 as saved, cast to what the model holds
        ckpt.restore_optimizer(self.optimizer, state["optimizer"])
        self.scheduler.set_state_dict(state["lr_scheduler"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema and state.get("ema"):
            self.ema.set_state_dict(state["ema"])
        for key in ("epoch", "batch_in_epoch", "global_step", "best_top1", "best_epoch", "skipped_steps", "history"):
            setattr(self, key, state[key])
        self.epoch_stats = state.get("epoch_stats")  # absent from checkpoints made before it existed
        ckpt.set_rng_state(state["rng"])


def unwrap(model: nn.Layer) -> nn.Layer:
    """The model inside paddle.DataParallel (or the model itself)."""
    return model._layers if isinstance(model, paddle.DataParallel) else model


def reached_max_steps(state: TrainState) -> bool:
    max_steps = state.cfg["train"]["max_steps"]
    return bool(max_steps) and state.global_step >= max_steps


def _correct(logits: paddle.Tensor, labels: paddle.Tensor, k: int) -> paddle.Tensor:
    """How many of the batch have their label in the top k (a device scalar; no host sync)."""
    k = min(k, logits.shape[-1])
    top = paddle.topk(logits, k, axis=-1)[1]
    return (top == labels.unsqueeze(-1)).astype("float32").sum()


def _every(step: int, every: int) -> bool:
    """Whether `step` is a multiple of `every`; never when `every` is 0 (off)."""
    return bool(every) and step % every == 0


def _all_finite(finite: paddle.Tensor, world_size: int) -> bool:
    """Whether every rank's loss is finite: one host sync per step, the price of skipping bad steps
    without a loss scaler. In a job all ranks must skip together, or the ranks that go on to the
    gradient all-reduce wait forever for the one that skipped."""
    if world_size == 1:
        return bool(finite)
    bad = (~finite).astype("int64").reshape([1])
    paddle.distributed.all_reduce(bad, op=paddle.distributed.ReduceOp.MAX)
    return not int(bad)


def stop_agreed(stop: dict, world_size: int, step: int = 0, every: int = 1) -> bool:
    """Whether to stop for a signal now. Alone, at once; in a job, all ranks decide together at every
    `every`-th step (one tiny all-reduce), since a rank that stopped alone would leave the others waiting
    forever in the next all-reduce. Every rank then stops for the same signal (the highest number)."""
    if world_size == 1:
        return bool(stop.get("signal"))
    if step % every:
        return False
    flag = paddle.to_tensor([stop.get("signal") or 0], dtype="int64")
    paddle.distributed.all_reduce(flag, op=paddle.distributed.ReduceOp.MAX)
    if int(flag):
        stop["signal"] = int(flag)  # maybe another rank's
    return bool(int(flag))


def _skip_empty(labels: paddle.Tensor, skip_bad: bool, world_size: int) -> bool:
    """Whether this step is skipped for a batch whose images were all bad (data.on_bad_image=skip; the
    loader yields it empty, senet.data.loader.empty_batch). Alone: when this batch is empty (its shape is
    on the host: no sync). In a job every rank must skip together, or the others wait for ever in the
    gradient all-reduce: one small all-reduce a step, paid only with on_bad_image=skip."""
    empty = labels.shape[0] == 0
    if world_size == 1 or not skip_bad:
        return empty
    flag = paddle.to_tensor([int(empty)], dtype="int64")
    paddle.distributed.all_reduce(flag, op=paddle.distributed.ReduceOp.MAX)
    return bool(int(flag))


def _advance(state: TrainState, bar) -> None:
    state.global_step += 1
    state.batch_in_epoch += 1
    if bar is not None:
        bar.update(1)


def _log_gate_histograms(state: TrainState, images: paddle.Tensor, log: RunLogger) -> None:
    """VisualDL histograms of every attention block's gate values on this batch (one extra eval forward):
    tags se/<block> (the channel gates) and, for CBAM, se/<block>.spatial."""
    cfg = state.cfg
    x = normalize_batch(images, cfg["data"]["mean"], cfg["data"]["std"], state.data_format)
    with paddle.amp.auto_cast(enable=state.amp["enabled"], level=state.amp["level"], dtype=state.amp["dtype"]):
        gates = record_gates(unwrap(state.model), x, kinds=None)  # CBAM's spatial gates too
    for name, values in gates.items():
        log.histogram(f"se/{name}", values.ravel(), state.global_step)


class LossGuard:
    """One epoch's policy for non-finite losses and loss-scale overflows.

    Decided once from the resolved AMP state (device_notices), not from train.amp.enabled: only fp16
    AMP on a GPU has a loss scaler, and on a CPU an AMP config trains in fp32. With a scaler, the
    scaler skips the steps whose gradients overflow (a normal event, counted here), and a loss that is
    non-finite before scaling stops the run whatever nan_policy says: lowering the loss scale cannot
    cure it. Without one, nan_policy decides: `skip` checks each loss before backward (`update_if`,
    one host sync a step); `stop` remembers the first non-finite loss on the device and `check` reads
    it (at log steps, before a checkpoint, at the end of the epoch).
    """

    def __init__(self, state: TrainState, log: RunLogger) -> None:
        self.state, self.log = state, log
        skip = state.scaler is None and state.cfg["train"]["nan_policy"] == "skip"
        self.update_if = self._finite_everywhere if skip else None  # train_step's update_if
        self.first_bad = paddle.full([], -1, dtype="int64")  # first step with a non-finite loss, -1 if none

    def _finite_everywhere(self, loss: paddle.Tensor) -> bool:
        """nan_policy=skip: update only if the loss is finite on every rank; count the skips."""
        if _all_finite(paddle.isfinite(loss), self.log.world_size):
            return True
        state, limit = self.state, self.state.cfg["train"]["nan_skip_limit"]
        state.skipped_steps += 1
        if state.skipped_steps > limit:
            raise TrainingError(
                f"more than {limit} non-finite losses (last at step "
                f"{state.global_step + 1}); {self.state.saver.last_good()}"
            )
        return False

    def after_update(self, loss: paddle.Tensor) -> None:
        """After a step that ran backward: count a scaler overflow; note a non-finite loss on the device."""
        if self.state.scaler is not None:
            self._count_overflow()
        if self.update_if is None:
            with paddle.no_grad():
                step = paddle.full([], self.state.global_step + 1, "int64")
                self.first_bad = paddle.where((self.first_bad < 0) & ~paddle.isfinite(loss), step, self.first_bad)

    def _count_overflow(self) -> None:
        """Count a step the loss scaler skipped; stop after more than train.nan_skip_limit in a row."""
        # The flag is a Python bool or, with Momentum/SGD/AdamW, a device tensor. Paddle 3.3.1's dynamic
        # loss scaling already reads it on the host every step (GradScaler.update -> _update: `if
        # self._cache_found_inf`), so the step has synchronised before this line: reading it again adds no
        # wait. (An on-device counter would not remove the sync that Paddle's own update makes.)
        state = self.state
        if not state.scaler._cache_found_inf:
            state.overflows_in_a_row = 0
            return
        state.skipped_steps += 1
        state.overflows_in_a_row += 1
        limit = state.cfg["train"]["nan_skip_limit"]
        if state.overflows_in_a_row > limit:
            self.check()  # a non-finite loss behind the overflows is the better message
            raise TrainingError(
                f"more than {limit} steps in a row skipped for gradient overflow (last at step "
                f"{state.global_step + 1}, loss scale now {float(state.scaler._scale):g}); "
                f"{self.state.saver.last_good()} Lower optimizer.lr, train in bfloat16 "
                f"(train.amp.dtype=bfloat16), or raise train.nan_skip_limit."
            )

    def check(self) -> None:
        """Stop the run if a step so far had a non-finite loss (a host read)."""
        step = int(self.first_bad)
        if step >= 0:
            # With a loss scaler nan_policy=skip does not apply; fp16's range may be the cause.
            fix = (
                "train in bfloat16 (train.amp.dtype=bfloat16) or fp32 (train.amp.enabled=false)"
                if self.state.scaler is not None
                else "set train.nan_policy=skip"
            )
            raise TrainingError(
                f"non-finite loss at step {step}; training stopped. {self.state.saver.last_good()} "
                f"Lower optimizer.lr, add lr_scheduler.warmup_epochs, or {fix}."
            )


class EpochMeter:
    """Loss and top-1 over the epoch, and loss and speed over the current log window: summed on the
    device, read on the host only at log steps and at the end of the epoch.

    Data wait: the host time spent in the loader's next(), summed per window, against the window's
    wall time. The window's clock is read after its loss has come to the host, a sync the log step makes
    anyway, so the window time is the device's time too, with no sync added for it. The epoch's
    `data_wait_pct` covers its closed windows.
    """

    def __init__(self) -> None:
        self.sums = {"loss": paddle.zeros([]), "top1": paddle.zeros([]), "n": paddle.zeros([])}
        self.t_epoch = time.perf_counter()
        self.wait_s = self.timed_s = 0.0  # data wait and wall time of the closed windows, seconds
        self._new_window()

    def _new_window(self) -> None:
        self.window = {"loss": paddle.zeros([]), "n": paddle.zeros([])}
        self.t_window, self.n_window, self.wait_window = time.perf_counter(), 0, 0.0

    def waited(self, seconds: float) -> None:
        """The host waited this long for one batch."""
        self.wait_window += seconds

    @paddle.no_grad()
    def add(self, logits: paddle.Tensor, loss: paddle.Tensor, targets: paddle.Tensor) -> None:
        """One updated step. Top-1 counts against the targets trained on (for soft ones, their argmax)."""
        labels = targets.argmax(-1) if paddle.is_floating_point(targets) else targets
        n = paddle.full([], labels.shape[0], "float32")
        self.sums["loss"] += loss.detach() * n
        self.sums["top1"] += _correct(logits, labels, 1)
        self.sums["n"] += n
        self.window["loss"] += loss.detach() * n
        self.window["n"] += n
        self.n_window += labels.shape[0]

    def log_window(self, state: TrainState, log: RunLogger, bar) -> None:
        """The log line of the window that ends at this step; then a new window."""
        loss = float(self.window["loss"] / self.window["n"])  # the host waits for the device here
        elapsed = time.perf_counter() - self.t_window
        self.wait_s += self.wait_window
        self.timed_s += elapsed
        stats = {
            "loss": loss,
            "lr": state.optimizer.get_lr(),
            "images_per_s": self.n_window * log.world_size / max(elapsed, 1e-9),
        }
        if state.scaler is not None:
            stats["loss_scale"] = float(state.scaler._scale)
        log.train_step(state.global_step, stats, bar)
        self._new_window()

    def epoch_stats(self, world_size: int, complete: bool) -> dict:
        n = max(float(self.sums["n"]), 1.0)
        return {
            "loss": float(self.sums["loss"]) / n,
            "top1": 100.0 * float(self.sums["top1"]) / n,
            "epoch_time_s": time.perf_counter() - self.t_epoch,
            "images": int(n) * world_size,
            "complete": complete,
            "data_wait_pct": 100.0 * self.wait_s / max(self.timed_s, 1e-9),
        }


def _train_batches(
    state: TrainState,
    batches,
    parts: StepParts,
    guard: LossGuard,
    meter: EpochMeter,
    total: int,
    log: RunLogger,
    stop: dict,
    bar,
) -> None:
    """train_one_epoch's loop. The host's wait for each batch (next() on the loader) is timed with the
    host clock alone, adding no device sync: EpochMeter relates it to the step time it reads at log steps."""
    t = state.cfg["train"]
    skip_bad = state.cfg["data"]["on_bad_image"] == "skip"
    while True:
        waited = time.perf_counter()
        try:
            images, targets = next(batches)  # int labels, unless the batch transform makes soft targets
        except StopIteration:
            break
        except WorkerDied as e:  # raised between steps: the state is whole, so save it first
            state.saver.save(state, "last")
            raise TrainingError(
                f"{e}. Saved {state.saver.path('last')} at step {state.global_step}: the same "
                f"command with --resume auto goes on from there"
            ) from None
        meter.waited(time.perf_counter() - waited)
        if _skip_empty(targets, skip_bad, log.world_size):  # a batch of only bad images: counted, not trained
            _advance(state, bar)
        else:
            if state.transform_for is not None:
                images, targets = state.transform_for(state.epoch, state.batch_in_epoch)(images, targets)
            logits, loss, updated = train_step(parts, images, targets, update_if=guard.update_if)
            if updated:
                guard.after_update(loss)
                meter.add(logits, loss, targets)
            _advance(state, bar)
        if _every(state.global_step, t["log_se_every"]) and log.rank == 0:
            _log_gate_histograms(state, images, log)
        if _every(state.global_step, t["log_every"]) or state.batch_in_epoch == total:
            guard.check()
            meter.log_window(state, log, bar)
        if _every(state.global_step, t["save_every_steps"]) and state.batch_in_epoch < total:
            guard.check()
            state.saver.save(state, "last")
        if stop_agreed(stop, log.world_size, state.global_step, t["log_every"]) or reached_max_steps(state):
            break


def train_one_epoch(state: TrainState, loader, log: RunLogger, stop: dict) -> dict:
    """Train one epoch (or the rest of it, after a mid-epoch resume). Returns epoch averages.

    Each batch goes through its state.transform_for transform, if any, then senet.step.train_step. Around the step:
    LossGuard (non-finite losses, loss-scale overflows), EpochMeter (the log window and the epoch's
    averages, and the share of step time spent waiting for data), gate histograms every
    train.log_se_every steps, mid-epoch checkpoints every train.save_every_steps, and the stop signals
    and train.max_steps.
    """
    t = state.cfg["train"]
    parts, guard = state.step_parts(), LossGuard(state, log)
    state.model.train()
    loader.set_epoch(state.epoch, start_batch=state.batch_in_epoch)
    meter = EpochMeter()
    total = len(loader)
    bar = log.progress(total, initial=state.batch_in_epoch, desc=f"epoch {state.epoch + 1}/{t['epochs']}")
    batches = iter(loader)
    try:
        _train_batches(state, batches, parts, guard, meter, total, log, stop, bar)
    finally:
        # Stopping mid-epoch closes the loader's generator now, which reads out the batches in flight.
        close = getattr(batches, "close", None)
        if close is not None:
            close()
    log.close_progress(bar)
    guard.check()
    return meter.epoch_stats(log.world_size, complete=state.batch_in_epoch >= total)


@paddle.no_grad()
def evaluate(
    model: nn.Layer,
    loader,
    cfg: dict,
    data_format: str = "NCHW",
    amp: dict | None = None,
    log: RunLogger | None = None,
    stop: dict | None = None,
) -> dict | None:
    """Top-1 / top-5 (percent) and loss over the whole val split, summed across ranks.

    With `stop` (fit's signal flag), a signal ends the eval at the next batch (in a job, at the next
    train.log_every-th batch, where the ranks agree) and None is returned.
    """
    model.eval()
    parts = StepParts(model, None, cfg["data"]["mean"], cfg["data"]["std"], data_format, eval_amp(model, amp))
    sums = paddle.zeros([4])  # loss x n, top-1 hits, top-5 hits, n
    bar = log.progress(len(loader), desc="eval") if log else None
    world_size = paddle.distributed.get_world_size()
    # In a job, the ranks agree only at batches that all of them reach (val shards differ by one image).
    agree_until = loader.batches_on_every_rank() if stop is not None and world_size > 1 else len(loader)
    for i, (images, labels) in enumerate(loader):
        if labels.shape[0]:  # an empty batch: all its images were bad and skipped (data.on_bad_image=skip)
            logits, loss = forward_loss(parts, images, labels, train=False)
            n = float(labels.shape[0])
            sums += paddle.stack(
                [loss * n, _correct(logits, labels, 1), _correct(logits, labels, 5), paddle.full([], n, "float32")]
            )
        if bar is not None:
            bar.update(1)
        if stop is not None and i < agree_until and stop_agreed(stop, world_size, i + 1, cfg["train"]["log_every"]):
            # Leaving the loop closes the loader's generator, which reads out the batches in flight.
            if log:
                log.close_progress(bar)
            return None
    if log:
        log.close_progress(bar)
    if paddle.distributed.get_world_size() > 1:  # every rank saw its own shard; add them up
        paddle.distributed.all_reduce(sums)
    loss_sum, top1, top5, n = (float(v) for v in sums.numpy())
    n = max(n, 1.0)
    return {"top1": 100 * top1 / n, "top5": 100 * top5 / n, "loss": loss_sum / n, "images": int(n)}
