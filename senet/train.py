"""The training loop: build everything from a config, then train_one_epoch / evaluate until done.

The optimizer, LR schedule and EMA are built by senet.optim (the recipe of Hu et al., Section 5).
Nothing in the hot loop reads a tensor back to the host: the loss,
accuracy and the non-finite-loss detector are accumulated on the device and read only every
`train.log_every` steps, at the end of an epoch, and before a checkpoint is written.

The step itself is senet.step.train_step (shared with `make bench` and scripts/bench_trainer.py).
Around it, `train_one_epoch` applies the batch transform (fit's `batch_transform`, see senet.step)
and the policies: LossGuard (non-finite losses and loss-scale overflows), EpochMeter (the log window
and epoch averages), gate histograms, mid-epoch checkpoints, stop signals and train.max_steps. `fit`
locks the run folder, `_fit` catches the stop signals, and `_train` runs `_start` (setup, resume),
`_train_epochs` (train, evaluate, checkpoint each epoch) and `_finish` (metrics.json, model.safetensors).
"""

from __future__ import annotations

import copy
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import paddle
import paddle.nn as nn

from senet import checkpoint as ckpt
from senet.attention.gates import record_gates
from senet.config import config_changes, dump_config
from senet.data import build_loader, normalize_batch
from senet.data.loader import STOP_SIGNALS, WorkerDied
from senet.device import apply_cudnn_flags, device_notices, precision_label
from senet.distributed import broadcast_object, convert_sync_batchnorm, ranks_in_sync, world
from senet.optim import ModelEMA, build_optimizer, scaled_lr
from senet.resnet import build_model
from senet.runlock import RunLock, RunLockedError
from senet.runlog import RunFolderError, RunLogger, check_run_folder, os_error_fix
from senet.step import BatchTransform, StepParts, decorate_o2, eval_amp, forward_loss, train_step


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
    # Applied to every training batch before the step (mixup, cutmix: see senet.step); None: identity.
    # Not checkpointed: it is code, given to fit() again on resume.
    batch_transform: BatchTransform | None = None
    said_data_bound: bool = False  # the data-wait notice was given (once a run; not checkpointed)
    classes: list[str] | None = None  # the train split's class names, in label order (checkpointed)

    def step_parts(self) -> StepParts:
        """What senet.step.train_step needs of this state."""
        data = self.cfg["data"]
        return StepParts(self.model, self.optimizer, data["mean"], data["std"], self.data_format, self.amp,
                         self.scaler, self.scheduler, self.ema, self.cfg["train"]["label_smoothing"])

    def to_checkpoint(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": ckpt.optimizer_state(self.optimizer),
                "lr_scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "ema": self.ema.state_dict() if self.ema else None,
                "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "global_step": self.global_step,
                "best_top1": self.best_top1, "best_epoch": self.best_epoch, "skipped_steps": self.skipped_steps,
                "history": self.history, "epoch_stats": self.epoch_stats, "rng": ckpt.rng_state(), "config": self.cfg,
                "arch": self.cfg["model"]["arch"], "world_size": world()[1], "classes": self.classes}

    def restore(self, state: dict, source: str) -> None:
        ckpt.check_compatible(self.model, state["model"], source, self.cfg["model"]["arch"])
        ckpt.check_stem_era(_unwrap(self.model), state.get("config"), source)
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


# --------------------------------------------------------------------------- the loop

def train_one_epoch(state: TrainState, loader, log: RunLogger, stop: dict) -> dict:
    """Train one epoch (or the rest of it, after a mid-epoch resume). Returns epoch averages.

    Each batch goes through state.batch_transform, if any, then senet.step.train_step. Around the step:
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


def _train_batches(state: TrainState, batches, parts: StepParts, guard: LossGuard, meter: EpochMeter,
                   total: int, log: RunLogger, stop: dict, bar) -> None:
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
            log.save(state, "last")
            raise TrainingError(f"{e}. Saved {log.checkpoint_path('last')} at step {state.global_step}: the same "
                                f"command with --resume auto goes on from there") from None
        meter.waited(time.perf_counter() - waited)
        if _skip_empty(targets, skip_bad, log.world_size):  # a batch of only bad images: counted, not trained
            _advance(state, bar)
        else:
            if state.batch_transform is not None:
                images, targets = state.batch_transform(images, targets)
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
            log.save(state, "last")
        if _stop_agreed(stop, log.world_size, state.global_step, t["log_every"]) or _reached_max_steps(state):
            break


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
            raise TrainingError(f"more than {limit} non-finite losses (last at step "
                                f"{state.global_step + 1}); {self.log.last_good_checkpoint()}")
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
            raise TrainingError(f"more than {limit} steps in a row skipped for gradient overflow (last at step "
                                f"{state.global_step + 1}, loss scale now {float(state.scaler._scale):g}); "
                                f"{self.log.last_good_checkpoint()} Lower optimizer.lr, train in bfloat16 "
                                f"(train.amp.dtype=bfloat16), or raise train.nan_skip_limit.")

    def check(self) -> None:
        """Stop the run if a step so far had a non-finite loss (a host read)."""
        step = int(self.first_bad)
        if step >= 0:
            # With a loss scaler nan_policy=skip does not apply; fp16's range may be the cause.
            fix = ("train in bfloat16 (train.amp.dtype=bfloat16) or fp32 (train.amp.enabled=false)"
                   if self.state.scaler is not None else "set train.nan_policy=skip")
            raise TrainingError(f"non-finite loss at step {step}; training stopped. {self.log.last_good_checkpoint()} "
                                f"Lower optimizer.lr, add lr_scheduler.warmup_epochs, or {fix}.")


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
        stats = {"loss": loss, "lr": state.optimizer.get_lr(),
                 "images_per_s": self.n_window * log.world_size / max(elapsed, 1e-9)}
        if state.scaler is not None:
            stats["loss_scale"] = float(state.scaler._scale)
        log.train_step(state.global_step, stats, bar)
        self._new_window()

    def epoch_stats(self, world_size: int, complete: bool) -> dict:
        n = max(float(self.sums["n"]), 1.0)
        return {"loss": float(self.sums["loss"]) / n, "top1": 100.0 * float(self.sums["top1"]) / n,
                "epoch_time_s": time.perf_counter() - self.t_epoch, "images": int(n) * world_size,
                "complete": complete, "data_wait_pct": 100.0 * self.wait_s / max(self.timed_s, 1e-9)}


def _correct(logits: paddle.Tensor, labels: paddle.Tensor, k: int) -> paddle.Tensor:
    """How many of the batch have their label in the top k (a device scalar; no host sync)."""
    k = min(k, logits.shape[-1])
    top = paddle.topk(logits, k, axis=-1)[1]
    return (top == labels.unsqueeze(-1)).astype("float32").sum()


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


def _stop_agreed(stop: dict, world_size: int, step: int = 0, every: int = 1) -> bool:
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


def _log_gate_histograms(state: TrainState, images: paddle.Tensor, log: RunLogger) -> None:
    """VisualDL histograms of every attention block's gate values on this batch (one extra eval forward):
    tags se/<block> (the channel gates) and, for CBAM, se/<block>.spatial."""
    cfg = state.cfg
    x = normalize_batch(images, cfg["data"]["mean"], cfg["data"]["std"], state.data_format)
    with paddle.amp.auto_cast(enable=state.amp["enabled"], level=state.amp["level"], dtype=state.amp["dtype"]):
        gates = record_gates(_unwrap(state.model), x, kinds=None)  # CBAM's spatial gates too
    for name, values in gates.items():
        log.histogram(f"se/{name}", values.ravel(), state.global_step)


def _advance(state: TrainState, bar) -> None:
    state.global_step += 1
    state.batch_in_epoch += 1
    if bar is not None:
        bar.update(1)


@paddle.no_grad()
def evaluate(model: nn.Layer, loader, cfg: dict, data_format: str = "NCHW", amp: dict | None = None,
             log: RunLogger | None = None, stop: dict | None = None) -> dict | None:
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
            sums += paddle.stack([loss * n, _correct(logits, labels, 1), _correct(logits, labels, 5),
                                  paddle.full([], n, "float32")])
        if bar is not None:
            bar.update(1)
        if stop is not None and i < agree_until and _stop_agreed(stop, world_size, i + 1, cfg["train"]["log_every"]):
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


# --------------------------------------------------------------------------- fit

def find_resume_checkpoint(output_dir: str, trust: bool = False, arch: str | None = None,
                           foreign: list[str] | None = None) -> str | None:
    """The checkpoint in output_dir that loads and is furthest along, by the global step recorded in it
    (file times lie after a copy, rsync or restore from backup); None if there is none. At the same step,
    `last` is preferred, then a numbered one, then `best`: they hold the same state.

    Only the trainer's own names count (ckpt.CHECKPOINT_NAME: a user's `epoch_1_keep.pdparams` is neither
    parsed nor used), and with `arch`, only checkpoints of that network: one of another architecture
    (copied in, or left by an earlier run) is skipped by name, whatever its step, and added to `foreign`."""
    folder = os.path.join(output_dir, "checkpoints")
    if not os.path.isdir(folder):
        return None
    usable = []
    for name in sorted(os.listdir(folder)):
        if not ckpt.CHECKPOINT_NAME.fullmatch(name):
            continue
        path = os.path.join(folder, name)
        try:
            state = ckpt.load_checkpoint(path, trust)
        except ckpt.CheckpointError as e:
            print(f"skipping unusable checkpoint: {e}", file=sys.stderr)
            continue
        recorded = state.get("arch") or (state.get("config") or {}).get("model", {}).get("arch")
        if arch is not None and recorded is not None and recorded != arch:
            print(f"skipping checkpoint {path}: it holds {recorded}, not this run's model.arch={arch}", file=sys.stderr)
            if foreign is not None:
                foreign.append(f"{name} ({recorded})")
            continue
        usable.append((state.get("global_step", -1), {"last.pdparams": 2, "best.pdparams": 0}.get(name, 1), path))
    return max(usable)[2] if usable else None


def _check_resume_config(saved: dict, cfg: dict, path: str, allow_config_change: bool, log: RunLogger) -> None:
    """Resume only the same experiment: refuse config changes that make another one (config.RESUME_MAY_CHANGE
    lists those that do not) unless --allow-config-change says they are intended; note every change."""
    harmless, different = config_changes(saved.get("config") or cfg, cfg)
    devices, now = saved.get("world_size", log.world_size), log.world_size
    if devices != now:  # the global batch, and with it the scaled lr and each rank's share of the data
        different.append(f"devices {devices} -> {now} (global batch {cfg['data']['batch_size'] * devices} -> "
                         f"{cfg['data']['batch_size'] * now})")
    if different and not allow_config_change:
        raise TrainingError(f"refusing to resume from {path} with a changed experiment: {'; '.join(different)}. "
                            f"Start a new run with -o output_dir=PATH, or pass --allow-config-change if the "
                            f"changes are intended")
    if different:
        log.info(f"resuming with experiment changes allowed by --allow-config-change: {'; '.join(different)}")
    if harmless:
        stretched = any(c.startswith("train.epochs ") for c in harmless) and cfg["lr_scheduler"]["name"] == "cosine"
        log.info(f"resuming with config changes that keep the experiment: {'; '.join(harmless)}"
                 + (" (the cosine schedule now ends at the new last epoch)" if stretched else ""))


def setup(cfg: dict) -> tuple[TrainState, Any, Any, dict]:
    """Build the model, data, optimizer and AMP state from a resolved config.

    The order is Paddle's and PaddleClas's: the optimizer over the plain model's parameters, the EMA
    from its fp32 weights, then AMP O2's decorate, and paddle.DataParallel last (Paddle refuses to
    decorate a DataParallel model).
    """
    import random

    rank, world_size = world()
    env = device_notices(cfg)
    if env["on_gpu"]:
        apply_cudnn_flags()  # before the model is built: the first conv call searches its algorithm
    seed = cfg["train"]["seed"]
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)
    run_cfg = copy.deepcopy(cfg)
    run_cfg["train"]["data_format"] = env["data_format"]
    model = build_model(run_cfg)
    recorded_classes = None
    if cfg["model"]["weights"]:
        recorded_classes = ckpt.load_weights(model, cfg["model"]["weights"], trust=cfg["model"]["trust_pickle"],
                                             expected_arch=cfg["model"]["arch"])
    if world_size > 1 and cfg["model"]["sync_bn"]:
        if run_cfg["train"]["data_format"] == "NHWC" and not env["on_gpu"]:
            raise TrainingError("model.sync_bn on a CPU needs train.data_format=NCHW")
        model = convert_sync_batchnorm(model, env["on_gpu"])
    train_loader = build_loader(cfg, "train", rank=rank, world_size=world_size)
    val_loader = build_loader(cfg, "val", rank=rank, world_size=world_size)
    classes = [str(c) for c in train_loader.dataset.classes]
    ckpt.check_classes(recorded_classes, classes, cfg["model"]["weights"], cfg["data"]["allow_class_change"])
    optimizer, scheduler = build_optimizer(cfg, model, len(train_loader), world_size)
    ema = ModelEMA(model, cfg["train"]["ema"]["decay"], optimizer) if cfg["train"]["ema"]["enabled"] else None
    amp, scaler = env["amp"], None
    if amp["enabled"]:
        if amp["level"] == "O2":
            model, optimizer = decorate_o2(model, optimizer, amp["dtype"])
        if amp["dtype"] == "float16":  # bfloat16 has fp32's range and needs no loss scaling
            scaler = paddle.amp.GradScaler(init_loss_scaling=amp["init_loss_scaling"],
                                           use_dynamic_loss_scaling=amp["dynamic"])
    if world_size > 1:
        model = paddle.DataParallel(model)  # averages gradients across ranks (NCCL on GPUs, gloo on CPUs)
    state = TrainState(cfg, model, optimizer, scheduler, scaler, ema, amp, env["data_format"], classes=classes)
    return state, train_loader, val_loader, env


def fit(cfg: dict, resume: str | None = None, allow_config_change: bool = False,
        batch_transform: BatchTransform | None = None) -> dict:
    """Train `cfg` to the end (or to train.max_steps), evaluating and checkpointing as configured.

    `batch_transform` (images, labels) -> (images, targets) is applied to every training batch before
    the step, e.g. mixup or cutmix (see senet.step); None trains on the batches as loaded.

    First, before anything is built, rank 0 checks that the run folder takes files and locks it for the
    run's life (senet.runlock: one run per folder). Every rank learns the outcome, so a refused job
    stops on all ranks together, and only rank 0 holds the lock.
    """
    rank, world_size = world()
    lock, problem = None, None
    if rank == 0:
        try:
            check_run_folder(cfg["output_dir"])
            lock = RunLock(cfg["output_dir"])
            lock.acquire()
        except (RunFolderError, RunLockedError) as e:
            problem = str(e)
        except OSError as e:
            problem = f"cannot use output_dir '{cfg['output_dir']}': {e}. {os_error_fix(e)}"
        if lock is not None and lock.notice:
            print(f"notice: {lock.notice}", file=sys.stderr)
    if world_size > 1:
        problem = broadcast_object(problem)
    if problem:
        raise TrainingError(problem)
    try:
        return _fit(cfg, resume, allow_config_change, batch_transform)
    finally:
        if lock is not None:
            lock.release()


def _fit(cfg: dict, resume: str | None, allow_config_change: bool, batch_transform: BatchTransform | None) -> dict:
    """fit() with the stop signals caught from the start to the end of the final save.

    SIGTERM (schedulers' preemption), SIGINT (Ctrl-C) and SIGUSR1 (Slurm's --signal=USR1@N warning
    before a time limit) only set a flag. Training stops at the next step boundary (in a job, at the
    next train.log_every-th step, where the ranks agree), an eval at the next batch, and before
    training or between epochs at once: each saves `last` and says how to resume. During the final
    save, the save finishes first. tools/train.py then exits 128 + the signal number. The data
    loader's workers ignore these signals (senet.data.loader.STOP_SIGNALS), so a signal sent to the
    whole job reaches them harmlessly.
    """
    stop: dict = {}
    # The first signal counts: after a SIGUSR1, Slurm's SIGTERM at the time limit must not hide it.
    previous = {s: signal.signal(s, lambda signum, frame: stop.setdefault("signal", signum)) for s in STOP_SIGNALS}
    try:
        return _train(cfg, resume, allow_config_change, stop, batch_transform)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _train(cfg: dict, resume: str | None, allow_config_change: bool, stop: dict,
           batch_transform: BatchTransform | None) -> dict:
    state, train_loader, val_loader, log = _start(cfg, resume, allow_config_change)
    state.batch_transform = batch_transform
    _train_epochs(state, train_loader, val_loader, log, stop)
    return _finish(state, log, stop)


def _start(cfg: dict, resume: str | None, allow_config_change: bool) -> tuple[TrainState, Any, Any, RunLogger]:
    """setup(), the run's logger, the resume, and the run folder's config.yaml."""
    rank, world_size = world()
    state, train_loader, val_loader, env = setup(cfg)
    log = RunLogger(cfg, rank=rank, world_size=world_size)
    for notice in env["notices"]:
        log.info(notice)
    if resume:
        _resume(state, resume, allow_config_change, log)
    if rank == 0:
        _remove_stale_temp_files(cfg["output_dir"], log)
        dump_config(cfg, os.path.join(cfg["output_dir"], "config.yaml"))
    log.open_writer(state.global_step)
    log.info(f"{cfg['model']['arch']}: {len(train_loader)} steps/epoch, lr {scaled_lr(cfg, log.world_size):.4g} "
             f"for a global batch of {cfg['data']['batch_size'] * log.world_size}, {env['precision']} "
             f"{state.data_format}, threads {os.environ.get('OMP_NUM_THREADS')}")
    return state, train_loader, val_loader, log


def _resume(state: TrainState, resume: str, allow_config_change: bool, log: RunLogger) -> None:
    """Restore `state` from the checkpoint `resume` names ("auto": the furthest one in the run folder)."""
    cfg = state.cfg
    foreign: list[str] = []
    path = (find_resume_checkpoint(cfg["output_dir"], cfg["model"]["trust_pickle"], cfg["model"]["arch"], foreign)
            if resume == "auto" else resume)
    path, foreign = broadcast_object((path, foreign))  # every rank resumes from the checkpoint rank 0 chose
    if not path and foreign:  # starting afresh here would overwrite another network's checkpoints
        raise TrainingError(f"--resume auto: {cfg['output_dir']}/checkpoints holds checkpoints of another network "
                            f"({', '.join(foreign)}) and none of model.arch={cfg['model']['arch']}; a new run "
                            f"would overwrite them. Set -o output_dir=PATH for this one")
    if not path:
        log.info(f"--resume auto: no checkpoint in {cfg['output_dir']}/checkpoints, starting fresh")
        return
    saved = ckpt.load_checkpoint(path, cfg["model"]["trust_pickle"])
    _check_resume_config(saved, cfg, path, allow_config_change, log)
    try:  # the same classes in the same order: a renamed class folder would permute every label
        ckpt.check_classes(saved.get("classes"), state.classes, path, cfg["data"]["allow_class_change"])
    except ckpt.CheckpointError as e:
        raise TrainingError(f"refusing to resume: {e}") from None
    state.restore(saved, path)
    log.last_saved = path  # until this run saves, the checkpoint it resumed from is the last good one
    log.info(f"resumed from {path}: epoch {state.epoch + 1}, batch {state.batch_in_epoch}, step {state.global_step}")


def _train_epochs(state: TrainState, train_loader, val_loader, log: RunLogger, stop: dict) -> None:
    """Train and evaluate epoch after epoch until the last, train.max_steps, or a stop signal."""
    while state.epoch < state.cfg["train"]["epochs"] and not _reached_max_steps(state):
        if _stop_agreed(stop, log.world_size):  # it came before training started or between epochs
            _save_and_say(stop, state, log)
            return
        if state.epoch_stats is not None:  # resumed after a signal stopped this epoch's eval: the training is done
            stats, state.epoch_stats = state.epoch_stats, None
        else:
            stats = train_one_epoch(state, train_loader, log, stop)
        skipped = train_loader.pop_skipped()
        if skipped:
            log.info(f"skipped {len(skipped)} bad images this epoch: {', '.join(skipped[:5])}")
        if not stats["complete"]:  # stopped mid-epoch: a signal or max_steps, nothing else
            if stop.get("signal"):
                _save_and_say(stop, state, log)
                return
            log.save(state, "last")
            if not _reached_max_steps(state):  # never end a run silently (issue 23): say it, exit non-zero
                raise TrainingError(f"epoch {state.epoch + 1} ended after {state.batch_in_epoch} of "
                                    f"{len(train_loader)} batches: the loader yielded fewer than planned. Saved "
                                    f"{log.checkpoint_path('last')}; this is a bug: please report it with train.log")
            return
        epoch_record = _end_of_epoch(state, val_loader, stats, log, stop)
        if epoch_record is None:  # a signal stopped the eval: keep the epoch's training, evaluate it on resume
            state.epoch_stats = stats
            _save_and_say(stop, state, log)
            return
        _close_epoch(state, epoch_record, log)


def _close_epoch(state: TrainState, epoch_record: dict, log: RunLogger) -> None:
    """Move on to the next epoch and write the epoch's checkpoints."""
    t = state.cfg["train"]
    state.epoch += 1
    state.batch_in_epoch = 0
    state.history.append(epoch_record)
    # `best` before `last`: a kill between the two then resumes from the newer `best` (the same
    # state) instead of leaving `best` unwritten for this epoch; normally `last` is the newest.
    if epoch_record.get("is_best"):
        log.save(state, "best")
    log.save(state, "last")
    if t["save_every"] and state.epoch % t["save_every"] == 0:
        log.save(state, f"epoch_{state.epoch}", keep_last=t["keep_last"])


def _finish(state: TrainState, log: RunLogger, stop: dict) -> dict:
    """Write metrics.json (and model.safetensors once every epoch is done); say why the run stopped."""
    finished = state.epoch >= state.cfg["train"]["epochs"]
    stopped_by = _stopped_by(state, stop, finished)
    try:
        metrics = _write_final_files(state, log, finished, stopped_by)
        if stopped_by == "max_steps":
            _say_max_steps(state, log)
        elif finished and _stop_agreed(stop, log.world_size):
            # It came during the final save, which has finished: the run is complete (metrics.json says
            # so), but exit as a stopped run does, since the scheduler asked; a resume only rewrites these files.
            metrics = {**metrics, "stopped_by": signal.Signals(stop["signal"]).name}
            _say_how_to_resume(stop["signal"], state, log)
        if metrics["stopped_by"] not in (None, "max_steps") and log.world_size > 1:
            # paddle.distributed.launch stops every rank 3 s after one exits non-zero: leave together,
            # once rank 0 has written everything.
            paddle.distributed.barrier()
    finally:
        log.close()
    return metrics


def _stopped_by(state: TrainState, stop: dict, finished: bool) -> str | None:
    """metrics.json's stopped_by for a run that ended before its last epoch: the signal, or max_steps."""
    if finished:
        return None
    if stop.get("signal"):
        return signal.Signals(stop["signal"]).name
    return "max_steps" if _reached_max_steps(state) else None


def _write_final_files(state: TrainState, log: RunLogger, finished: bool, stopped_by: str | None) -> dict:
    cfg = state.cfg
    final_file = os.path.join(cfg["output_dir"], "metrics.json")
    try:
        metrics = _write_metrics(state, log, finished, stopped_by)
        if finished and log.rank == 0:
            final_file = os.path.join(cfg["output_dir"], "model.safetensors")
            ckpt.save_safetensors(_unwrap(state.model), final_file,
                                  {"arch": cfg["model"]["arch"], "num_classes": cfg["model"]["num_classes"],
                                   "config": cfg, "classes": state.classes})
    except OSError as e:
        # The training itself is safe in `last`; resuming a finished run only writes these files again.
        raise TrainingError(f"could not write {final_file} ({e.strerror or e}). The trained state is in "
                            f"{log.checkpoint_path('last')}. {os_error_fix(e, elsewhere=False)}, then run the "
                            f"same command with --resume auto to write it again.") from None
    return metrics


def _reached_max_steps(state: TrainState) -> bool:
    max_steps = state.cfg["train"]["max_steps"]
    return bool(max_steps) and state.global_step >= max_steps


def _say_max_steps(state: TrainState, log: RunLogger) -> None:
    t = state.cfg["train"]
    written = [f"checkpoints/{n}.pdparams" for n in ("last", "best") if os.path.isfile(log.checkpoint_path(n))]
    where = f"epoch {state.epoch + 1}/{t['epochs']}, batch {state.batch_in_epoch}" if state.batch_in_epoch \
        else f"after epoch {state.epoch}/{t['epochs']}"
    best = f"; best val top-1 so far {state.best_top1:.2f}% at epoch {state.best_epoch}" if state.best_epoch > 0 else ""
    log.info(f"stopped at train.max_steps={t['max_steps']} (step {state.global_step}, {where}{best}). "
             f"{state.cfg['output_dir']} holds {', '.join(written)} and metrics.json; model.safetensors is written "
             f"once all {t['epochs']} epochs are done. To go on: the same command with --resume auto and a larger "
             f"train.max_steps (0 = no limit).")


def _save_and_say(stop: dict, state: TrainState, log: RunLogger) -> None:
    log.save(state, "last")
    _say_how_to_resume(stop["signal"], state, log)


def _say_how_to_resume(signum: int, state: TrainState, log: RunLogger) -> None:
    log.info(f"{signal.Signals(signum).name} received: saved {log.checkpoint_path('last')} at step "
             f"{state.global_step}. Resume with: .venv/bin/python tools/train.py -c <config> --resume auto "
             f"-o output_dir={state.cfg['output_dir']}")


def _remove_stale_temp_files(output_dir: str, log: RunLogger) -> None:
    """Delete the partial `<name>.tmp.<pid>` files (see ckpt.atomic_write) a killed save leaves behind.

    They were never renamed into place, so nothing is lost; but on ImageNet each is as large as a
    checkpoint, and repeated preemptions would otherwise fill the disk.
    """
    stale = []
    for folder in (output_dir, os.path.join(output_dir, "checkpoints")):
        if os.path.isdir(folder):
            stale += [os.path.join(folder, n) for n in sorted(os.listdir(folder))
                      if ".tmp." in n and n.rpartition(".tmp.")[2].isdigit()]
    for path in stale:
        os.remove(path)
    if stale:
        log.info(f"removed {len(stale)} partial file(s) left by an interrupted save: {', '.join(stale)}")


def _unwrap(model: nn.Layer) -> nn.Layer:
    return model._layers if isinstance(model, paddle.DataParallel) else model


def _end_of_epoch(state: TrainState, val_loader, stats: dict, log: RunLogger, stop: dict | None = None) -> dict | None:
    """The epoch's record, after its eval if one is due; None if a signal stopped the eval."""
    cfg, t = state.cfg, state.cfg["train"]
    record = {"epoch": state.epoch + 1, "step": state.global_step, "train_loss": stats["loss"],
              "train_top1": stats["top1"], "epoch_time_s": stats["epoch_time_s"],
              "train_images_per_s": stats["images"] / max(stats["epoch_time_s"], 1e-9),
              "rss_mb": log.rss_mb()}
    if "data_wait_pct" in stats:  # absent from the stats of an epoch stopped before this was measured
        record["data_wait_pct"] = stats["data_wait_pct"]
        _say_if_data_bound(state, stats["data_wait_pct"], log)
    if state.scaler is not None:
        record["loss_scale"] = float(state.scaler._scale)
    last = state.epoch + 1 == t["epochs"]
    if t["eval_every"] and ((state.epoch + 1) % t["eval_every"] == 0 or last):
        ev = evaluate(state.model, val_loader, cfg, state.data_format, state.amp, log, stop)
        if ev is None:
            return None
        record.update({f"eval_{k}": v for k, v in ev.items()})
        if state.ema is not None:
            ema_ev = evaluate(state.ema.copy_into(_unwrap(state.model)), val_loader, cfg, state.data_format,
                              state.amp, log, stop)
            if ema_ev is None:
                return None
            record.update({f"ema_eval_{k}": v for k, v in ema_ev.items()})
        if ev["top1"] > state.best_top1:
            state.best_top1, state.best_epoch = ev["top1"], state.epoch + 1
            record["is_best"] = True
    record["skipped_steps"] = state.skipped_steps
    if log.world_size > 1:  # DataParallel must keep every rank's weights identical; check it once an epoch
        same, prints = ranks_in_sync(_unwrap(state.model))
        record["ranks_in_sync"] = same
        log.info(f"weights identical on all {log.world_size} ranks ({prints[0]})" if same
                 else f"WARNING: weights differ across ranks: {prints}")
    log.epoch(state.global_step, record)
    return record


DATA_WAIT_NOTICE_PCT = 20.0  # above this share of step time waiting for data, the loader is the bottleneck


def _say_if_data_bound(state: TrainState, pct: float, log: RunLogger) -> None:
    """The one-line notice of a loader that holds the training back, with the remedies: once a run,
    at the first epoch above DATA_WAIT_NOTICE_PCT (each epoch's figure is in train.log anyway)."""
    if pct > DATA_WAIT_NOTICE_PCT and not state.said_data_bound:
        state.said_data_bound = True
        d = state.cfg["data"]
        dali = "" if d["loader"] == "dali" else "data.loader: dali, "
        log.info(f"notice: data wait {pct:.0f}% of step time: the loader is the bottleneck. Remedies: more "
                 f"data.num_workers (now {d['num_workers']}), {dali}or a pre-resized copy "
                 f"(scripts/prepare_imagenet.py --short-side).")


def _write_metrics(state: TrainState, log: RunLogger, finished: bool, stopped_by: str | None = None) -> dict:
    history = state.history
    evals = [h for h in history if "eval_top1" in h]
    best = max(evals, key=lambda h: h["eval_top1"]) if evals else None
    speeds = [h["train_images_per_s"] for h in history[1:]] or [h["train_images_per_s"] for h in history]
    waits = [h["data_wait_pct"] for h in history if "data_wait_pct" in h]
    metrics = {
        "name": state.cfg["name"], "arch": state.cfg["model"]["arch"], "finished": finished,
        # "SIGTERM", "SIGINT" or "SIGUSR1" when a signal stopped the run early, "max_steps" for
        # train.max_steps, else null
        "stopped_by": stopped_by,
        "epochs_done": state.epoch, "global_step": state.global_step,
        "best": {"top1": best["eval_top1"], "top5": best["eval_top5"], "loss": best["eval_loss"],
                 "epoch": best["epoch"]} if best else None,
        "final": {k.removeprefix("eval_"): v for k, v in evals[-1].items() if k.startswith("eval_")} if evals else None,
        "train_images_per_s": float(np.mean(speeds)) if speeds else None,
        # the share of step time the host waited for batches: per epoch in history, here their mean
        "data_wait_pct": float(np.mean(waits)) if waits else None,
        "precision": precision_label(state.amp),  # what the run really trained in (senet.device)
        "skipped_steps": state.skipped_steps, "history": history,
    }
    if log.rank == 0:
        ckpt.atomic_write(os.path.join(state.cfg["output_dir"], "metrics.json"),
                          json.dumps(metrics, indent=2).encode())
    return metrics
