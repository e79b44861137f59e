"""The training loop: build everything from a config, then train_one_epoch / evaluate until done.

The recipe follows Hu et al., Section 5 (and He et al. 2015 for CIFAR): SGD with momentum, a
learning rate stated per 256 images and scaled linearly with the global batch (Goyal et al.),
stepped every iteration. Nothing in the hot loop reads a tensor back to the host: the loss,
accuracy and the non-finite-loss detector are accumulated on the device and read only every
`train.log_every` steps, at the end of an epoch, and before a checkpoint is written.
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from senet import checkpoint as ckpt
from senet.config import config_changes, dump_config
from senet.data import build_loader, normalize_batch
from senet.data.loader import STOP_SIGNALS
from senet.distributed import broadcast_object, convert_sync_batchnorm, ranks_in_sync, world
from senet.resnet import build_model
from senet.runlock import RunLock, RunLockedError
from senet.runlog import RunFolderError, RunLogger, check_run_folder, os_error_fix


class TrainingError(RuntimeError):
    """Training cannot go on; the message names the step and the last good checkpoint."""


# --------------------------------------------------------------------------- building blocks

def device_notices(cfg: dict) -> dict:
    """Resolve GPU-only settings against the device, with a one-line notice for each fallback."""
    on_gpu = paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    amp = dict(cfg["train"]["amp"])
    data_format = cfg["train"]["data_format"]
    notices = []
    if amp["enabled"] and not on_gpu:
        notices.append("AMP requested but no GPU: paddle.amp does nothing on a CPU, training in fp32.")
        amp["enabled"] = False
    if data_format == "NHWC" and not on_gpu:
        notices.append("NHWC is a GPU (tensor-core) layout; on this CPU the model runs in NCHW.")
        data_format = "NCHW"
    return {"on_gpu": on_gpu, "amp": amp, "data_format": data_format, "notices": notices}


def scaled_lr(cfg: dict, world_size: int) -> float:
    """optimizer.lr is per 256 images; scale linearly with the global batch (per-device x devices)."""
    return cfg["optimizer"]["lr"] * cfg["data"]["batch_size"] * world_size / 256


def lr_factor(cfg: dict, step: int, steps_per_epoch: int) -> float:
    """Multiplier of the base lr at iteration `step`: linear warm-up, then step / multistep / cosine."""
    s = cfg["lr_scheduler"]
    epoch = step / steps_per_epoch  # fractional epochs, so the schedule moves every iteration
    warmup = s["warmup_epochs"]
    if warmup > 0 and epoch < warmup:
        return (step + 1) / (warmup * steps_per_epoch)
    if s["name"] == "step":
        return s["gamma"] ** math.floor(epoch / s["step_size"])
    if s["name"] == "multistep":
        return s["gamma"] ** sum(epoch >= m for m in s["milestones"])
    total = cfg["train"]["epochs"] - warmup  # cosine, from the end of warm-up to the last epoch
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (epoch - warmup) / max(total, 1e-8))))


def build_optimizer(cfg: dict, model: nn.Layer, steps_per_epoch: int, world_size: int):
    """(optimizer, per-iteration LR scheduler) for the trainable parameters of `model`."""
    o = cfg["optimizer"]
    scheduler = paddle.optimizer.lr.LambdaDecay(scaled_lr(cfg, world_size),
                                                lambda step: lr_factor(cfg, step, steps_per_epoch))
    # BatchNorm running statistics are listed as parameters in Paddle, with stop_gradient=True.
    trainable = [p for p in model.parameters() if not p.stop_gradient]
    params: Any = trainable
    if o["no_weight_decay_on_bn_bias"]:  # 1-D tensors are BN scales/shifts and biases
        decay = [p for p in trainable if len(p.shape) > 1]
        no_decay = [p for p in trainable if len(p.shape) <= 1]
        params = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    wd = o["weight_decay"]
    if o["name"] == "momentum":
        opt = paddle.optimizer.Momentum(scheduler, o["momentum"], params, use_nesterov=o["nesterov"],
                                        weight_decay=wd)
    elif o["name"] == "sgd":
        opt = paddle.optimizer.SGD(scheduler, params, weight_decay=wd)
    else:
        opt = paddle.optimizer.AdamW(scheduler, parameters=params, weight_decay=wd)
    return opt, scheduler


class ModelEMA:
    """Exponential moving average of the weights, kept in fp32 whatever the training precision.

    Updated on the device every step (no host sync); integer buffers are copied as they are.
    """

    def __init__(self, model: nn.Layer, decay: float) -> None:
        self.decay = decay
        with paddle.no_grad():
            self.shadow = {k: v.detach().astype("float32").clone() if paddle.is_floating_point(v)
                           else v.detach().clone() for k, v in model.state_dict().items()}

    @paddle.no_grad()
    def update(self, model: nn.Layer) -> None:
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if paddle.is_floating_point(s):
                paddle.assign(s * self.decay + v.astype("float32") * (1 - self.decay), output=s)
            else:
                paddle.assign(v, output=s)

    def state_dict(self) -> dict:
        return self.shadow

    def set_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            paddle.assign(paddle.to_tensor(v), output=self.shadow[k])

    def copy_into(self, model: nn.Layer) -> nn.Layer:
        """A copy of `model` carrying the EMA weights, for evaluation."""
        ema_model = copy.deepcopy(model)
        ema_model.set_state_dict(self.shadow)
        return ema_model


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

    def to_checkpoint(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "ema": self.ema.state_dict() if self.ema else None,
                "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "global_step": self.global_step,
                "best_top1": self.best_top1, "best_epoch": self.best_epoch, "skipped_steps": self.skipped_steps,
                "history": self.history, "epoch_stats": self.epoch_stats, "rng": ckpt.rng_state(), "config": self.cfg,
                "arch": self.cfg["model"]["arch"], "world_size": world()[1]}

    def restore(self, state: dict, source: str) -> None:
        ckpt.check_compatible(self.model, state["model"], source, self.cfg["model"]["arch"])
        ckpt.check_stem_era(_unwrap(self.model), state.get("config"), source)
        self.model.set_state_dict({k: paddle.to_tensor(v) for k, v in state["model"].items()})
        self.optimizer.set_state_dict({k: paddle.to_tensor(v) if isinstance(v, np.ndarray) else v
                                       for k, v in state["optimizer"].items()})
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

def _forward_loss(state: TrainState, images: paddle.Tensor, labels: paddle.Tensor, train: bool):
    cfg, amp = state.cfg, state.amp
    x = normalize_batch(images, cfg["data"]["mean"], cfg["data"]["std"], state.data_format)
    use_amp = amp["enabled"] and (train or amp.get("eval", False))
    with paddle.amp.auto_cast(enable=use_amp, level=amp["level"], dtype=amp["dtype"]):
        logits = state.model(x)
    logits = logits.astype("float32")
    loss = F.cross_entropy(logits, labels, label_smoothing=cfg["train"]["label_smoothing"] if train else 0.0)
    return logits, loss


def _correct(logits: paddle.Tensor, labels: paddle.Tensor, k: int) -> paddle.Tensor:
    """How many of the batch have their label in the top k (a device scalar; no host sync)."""
    k = min(k, logits.shape[-1])
    top = paddle.topk(logits, k, axis=-1)[1]
    return (top == labels.unsqueeze(-1)).astype("float32").sum()


def train_one_epoch(state: TrainState, loader, log: RunLogger, stop: dict) -> dict:
    """Train one epoch (or the rest of it, after a mid-epoch resume). Returns epoch averages."""
    t = state.cfg["train"]
    # The non-finite-loss policy, decided once from the resolved AMP state (device_notices), not from
    # train.amp.enabled: only fp16 AMP on a GPU has a loss scaler, and on a CPU an AMP config trains
    # in fp32. With a scaler, the scaler skips the steps whose gradients overflow (a normal event),
    # and a loss that is non-finite before scaling stops the run whatever nan_policy says: lowering
    # the loss scale cannot cure it. Without one, nan_policy decides.
    scaler = state.scaler
    skip_bad_losses = scaler is None and t["nan_policy"] == "skip"
    state.model.train()
    loader.set_epoch(state.epoch, start_batch=state.batch_in_epoch)
    # Device-side accumulators: read on the host only when logging.
    sums = {"loss": paddle.zeros([]), "top1": paddle.zeros([]), "n": paddle.zeros([])}
    window = {"loss": paddle.zeros([]), "n": paddle.zeros([])}
    first_bad = paddle.full([], -1, dtype="int64")  # first step with a non-finite loss, -1 if none
    t_window, n_window, t_epoch = time.perf_counter(), 0, time.perf_counter()
    total = len(loader)
    bar = log.progress(total, initial=state.batch_in_epoch, desc=f"epoch {state.epoch + 1}/{t['epochs']}")
    for images, labels in loader:
        logits, loss = _forward_loss(state, images, labels, train=True)
        finite = paddle.isfinite(loss)
        if skip_bad_losses and not _all_finite(finite, log.world_size):
            state.skipped_steps += 1
            if state.skipped_steps > t["nan_skip_limit"]:
                raise TrainingError(f"more than {t['nan_skip_limit']} non-finite losses (last at step "
                                    f"{state.global_step + 1}); {log.last_good_checkpoint()}")
        else:
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(state.optimizer)  # skips the update when gradients overflowed
                scaler.update()
                _count_overflow(state, first_bad, log)
            else:
                loss.backward()
                state.optimizer.step()
            state.optimizer.clear_grad(set_to_zero=False)
            if state.ema is not None:
                state.ema.update(state.model)
            with paddle.no_grad():
                if not skip_bad_losses:  # remember the first non-finite loss; read at log steps
                    first_bad = paddle.where((first_bad < 0) & ~finite,
                                             paddle.full([], state.global_step + 1, "int64"), first_bad)
                n = paddle.full([], labels.shape[0], "float32")
                sums["loss"] += loss.detach() * n
                sums["top1"] += _correct(logits, labels, 1)
                sums["n"] += n
                window["loss"] += loss.detach() * n
                window["n"] += n
            n_window += labels.shape[0]
        state.scheduler.step()
        _advance(state, bar)
        if t["log_se_every"] and state.global_step % t["log_se_every"] == 0 and log.rank == 0:
            _log_gate_histograms(state, images, log)
        if state.global_step % t["log_every"] == 0 or state.batch_in_epoch == total:
            _check_finite(state, first_bad, log)
            elapsed = time.perf_counter() - t_window
            stats = {"loss": float(window["loss"] / window["n"]), "lr": state.optimizer.get_lr(),
                     "images_per_s": n_window * log.world_size / max(elapsed, 1e-9)}
            if scaler is not None:
                stats["loss_scale"] = float(scaler._scale)
            log.train_step(state.global_step, stats, bar)
            window = {"loss": paddle.zeros([]), "n": paddle.zeros([])}
            t_window, n_window = time.perf_counter(), 0
        if t["save_every_steps"] and state.global_step % t["save_every_steps"] == 0 \
                and state.batch_in_epoch < total:
            _check_finite(state, first_bad, log)
            log.save(state, "last")
        if _stop_agreed(stop, log.world_size, state.global_step, t["log_every"]) \
                or (t["max_steps"] and state.global_step >= t["max_steps"]):
            break
    log.close_progress(bar)
    _check_finite(state, first_bad, log)
    n = max(float(sums["n"]), 1.0)
    return {"loss": float(sums["loss"]) / n, "top1": 100.0 * float(sums["top1"]) / n,
            "epoch_time_s": time.perf_counter() - t_epoch, "images": int(n) * log.world_size,
            "complete": state.batch_in_epoch >= total}


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
    """VisualDL histograms of every SE block's gate values on this batch (one extra eval forward)."""
    from senet.analysis import record_gates

    cfg = state.cfg
    x = normalize_batch(images, cfg["data"]["mean"], cfg["data"]["std"], state.data_format)
    with paddle.amp.auto_cast(enable=state.amp["enabled"], level=state.amp["level"], dtype=state.amp["dtype"]):
        gates = record_gates(_unwrap(state.model), x)
    for name, values in gates.items():
        log.histogram(f"se/{name}", values.ravel(), state.global_step)


def _advance(state: TrainState, bar) -> None:
    state.global_step += 1
    state.batch_in_epoch += 1
    if bar is not None:
        bar.update(1)


def _count_overflow(state: TrainState, first_bad: paddle.Tensor, log: RunLogger) -> None:
    """Count a step the loss scaler skipped; stop after more than train.nan_skip_limit in a row."""
    # The flag is a Python bool or, with Momentum/SGD/AdamW, a device tensor. Paddle 3.3.1's dynamic
    # loss scaling already reads it on the host every step (GradScaler.update -> _update: `if
    # self._cache_found_inf`), so the step has synchronised before this line: reading it again adds no
    # wait. (An on-device counter would not remove the sync that Paddle's own update makes.)
    if not state.scaler._cache_found_inf:
        state.overflows_in_a_row = 0
        return
    state.skipped_steps += 1
    state.overflows_in_a_row += 1
    limit = state.cfg["train"]["nan_skip_limit"]
    if state.overflows_in_a_row > limit:
        _check_finite(state, first_bad, log)  # a non-finite loss behind the overflows is the better message
        raise TrainingError(f"more than {limit} steps in a row skipped for gradient overflow (last at step "
                            f"{state.global_step + 1}, loss scale now {float(state.scaler._scale):g}); "
                            f"{log.last_good_checkpoint()} Lower optimizer.lr, train in bfloat16 "
                            f"(train.amp.dtype=bfloat16), or raise train.nan_skip_limit.")


def _check_finite(state: TrainState, first_bad: paddle.Tensor, log: RunLogger) -> None:
    step = int(first_bad)
    if step >= 0:
        # With a loss scaler nan_policy=skip does not apply (see train_one_epoch); fp16's range may be the cause.
        fix = ("train in bfloat16 (train.amp.dtype=bfloat16) or fp32 (train.amp.enabled=false)"
               if state.scaler is not None else "set train.nan_policy=skip")
        raise TrainingError(f"non-finite loss at step {step}; training stopped. {log.last_good_checkpoint()} "
                            f"Lower optimizer.lr, add lr_scheduler.warmup_epochs, or {fix}.")


@paddle.no_grad()
def evaluate(model: nn.Layer, loader, cfg: dict, data_format: str = "NCHW", amp: dict | None = None,
             log: RunLogger | None = None, stop: dict | None = None) -> dict | None:
    """Top-1 / top-5 (percent) and loss over the whole val split, summed across ranks.

    With `stop` (fit's signal flag), a signal ends the eval at the next batch (in a job, at the next
    train.log_every-th batch, where the ranks agree) and None is returned.
    """
    model.eval()
    state = TrainState(cfg, model, None, None, None, None, amp or {"enabled": False, "level": "O1",
                                                                   "dtype": "float16"}, data_format)
    sums = paddle.zeros([4])  # loss x n, top-1 hits, top-5 hits, n
    bar = log.progress(len(loader), desc="eval") if log else None
    world_size = paddle.distributed.get_world_size()
    # In a job, the ranks agree only at batches that all of them reach (val shards differ by one image).
    agree_until = loader.batches_on_every_rank() if stop is not None and world_size > 1 else len(loader)
    for i, (images, labels) in enumerate(loader):
        logits, loss = _forward_loss(state, images, labels, train=False)
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

def find_resume_checkpoint(output_dir: str, trust: bool = False) -> str | None:
    """The checkpoint in output_dir that loads and is furthest along, by the global step recorded in it
    (file times lie after a copy, rsync or restore from backup); None if there is none. At the same step,
    `last` is preferred, then a numbered one, then `best`: they hold the same state."""
    folder = os.path.join(output_dir, "checkpoints")
    if not os.path.isdir(folder):
        return None
    usable = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".pdparams"):
            path = os.path.join(folder, name)
            try:
                step = ckpt.load_checkpoint(path, trust).get("global_step", -1)
            except ckpt.CheckpointError as e:
                print(f"skipping unusable checkpoint: {e}", file=sys.stderr)
                continue
            usable.append((step, {"last.pdparams": 2, "best.pdparams": 0}.get(name, 1), path))
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
    """Build the model, data, optimizer and AMP state from a resolved config."""
    import random

    rank, world_size = world()
    env = device_notices(cfg)
    seed = cfg["train"]["seed"]
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)
    run_cfg = copy.deepcopy(cfg)
    run_cfg["train"]["data_format"] = env["data_format"]
    model = build_model(run_cfg)
    if cfg["model"]["weights"]:
        ckpt.load_weights(model, cfg["model"]["weights"], trust=cfg["model"]["trust_pickle"],
                          expected_arch=cfg["model"]["arch"])
    if world_size > 1:
        if cfg["model"]["sync_bn"]:
            if run_cfg["train"]["data_format"] == "NHWC" and not env["on_gpu"]:
                raise TrainingError("model.sync_bn on a CPU needs train.data_format=NCHW")
            model = convert_sync_batchnorm(model, env["on_gpu"])
        model = paddle.DataParallel(model)  # averages gradients across ranks (NCCL on GPUs, gloo on CPUs)
    train_loader = build_loader(cfg, "train", rank=rank, world_size=world_size)
    val_loader = build_loader(cfg, "val", rank=rank, world_size=world_size)
    optimizer, scheduler = build_optimizer(cfg, model, len(train_loader), world_size)
    amp, scaler = env["amp"], None
    if amp["enabled"]:
        if amp["level"] == "O2":  # fp16/bf16 weights in the model, fp32 master weights in the optimizer
            model, optimizer = paddle.amp.decorate(model, optimizer, level="O2", dtype=amp["dtype"],
                                                   master_weight=True)
        if amp["dtype"] == "float16":  # bfloat16 has fp32's range and needs no loss scaling
            scaler = paddle.amp.GradScaler(init_loss_scaling=amp["init_loss_scaling"],
                                           use_dynamic_loss_scaling=amp["dynamic"])
    ema = ModelEMA(model, cfg["train"]["ema"]["decay"]) if cfg["train"]["ema"]["enabled"] else None
    state = TrainState(cfg, model, optimizer, scheduler, scaler, ema, amp, env["data_format"])
    return state, train_loader, val_loader, env


def fit(cfg: dict, resume: str | None = None, allow_config_change: bool = False) -> dict:
    """Train `cfg` to the end (or to train.max_steps), evaluating and checkpointing as configured.

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
        return _fit(cfg, resume, allow_config_change)
    finally:
        if lock is not None:
            lock.release()


def _fit(cfg: dict, resume: str | None, allow_config_change: bool) -> dict:
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
        return _train(cfg, resume, allow_config_change, stop)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _train(cfg: dict, resume: str | None, allow_config_change: bool, stop: dict) -> dict:
    rank, world_size = world()
    state, train_loader, val_loader, env = setup(cfg)
    log = RunLogger(cfg, rank=rank, world_size=world_size)
    for notice in env["notices"]:
        log.info(notice)
    if resume:
        path = find_resume_checkpoint(cfg["output_dir"], cfg["model"]["trust_pickle"]) if resume == "auto" else resume
        path = broadcast_object(path)  # every rank resumes from the checkpoint rank 0 chose
        if path:
            saved = ckpt.load_checkpoint(path, cfg["model"]["trust_pickle"])
            _check_resume_config(saved, cfg, path, allow_config_change, log)
            state.restore(saved, path)
            log.last_saved = path  # until this run saves, the checkpoint it resumed from is the last good one
            log.info(f"resumed from {path}: epoch {state.epoch + 1}, batch {state.batch_in_epoch}, "
                     f"step {state.global_step}")
        else:
            log.info(f"--resume auto: no checkpoint in {cfg['output_dir']}/checkpoints, starting fresh")
    if rank == 0:
        _remove_stale_temp_files(cfg["output_dir"], log)
        dump_config(cfg, os.path.join(cfg["output_dir"], "config.yaml"))
    log.open_writer(state.global_step)
    log.info(f"{cfg['model']['arch']}: {len(train_loader)} steps/epoch, lr {scaled_lr(cfg, log.world_size):.4g} "
             f"for a global batch of {cfg['data']['batch_size'] * log.world_size}, threads "
             f"{os.environ.get('OMP_NUM_THREADS')}")
    t = cfg["train"]
    while state.epoch < t["epochs"] and not _reached_max_steps(state):
        if _stop_agreed(stop, log.world_size):  # it came before training started or between epochs
            _save_and_say(stop, state, log)
            break
        if state.epoch_stats is not None:  # resumed after a signal stopped this epoch's eval: the training is done
            stats, state.epoch_stats = state.epoch_stats, None
        else:
            stats = train_one_epoch(state, train_loader, log, stop)
        skipped = train_loader.pop_skipped()
        if skipped:
            log.info(f"skipped {len(skipped)} bad images this epoch: {', '.join(skipped[:5])}")
        if not stats["complete"]:  # stopped mid-epoch: signal or max_steps
            if stop.get("signal"):
                _save_and_say(stop, state, log)
            else:
                log.save(state, "last")
            break
        epoch_record = _end_of_epoch(state, val_loader, stats, log, stop)
        if epoch_record is None:  # a signal stopped the eval: keep the epoch's training, evaluate it on resume
            state.epoch_stats = stats
            _save_and_say(stop, state, log)
            break
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
    finished = state.epoch >= t["epochs"]
    stopped_by = None
    if stop.get("signal") and not finished:
        stopped_by = signal.Signals(stop["signal"]).name
    elif _reached_max_steps(state) and not finished:
        stopped_by = "max_steps"
    final_file = os.path.join(cfg["output_dir"], "metrics.json")
    try:
        metrics = _write_metrics(state, log, finished, stopped_by)
        if finished and rank == 0:
            final_file = os.path.join(cfg["output_dir"], "model.safetensors")
            ckpt.save_safetensors(_unwrap(state.model), final_file,
                                  {"arch": cfg["model"]["arch"], "num_classes": cfg["model"]["num_classes"],
                                   "config": cfg})
    except OSError as e:
        # The training itself is safe in `last`; resuming a finished run only writes these files again.
        raise TrainingError(f"could not write {final_file} ({e.strerror or e}). The trained state is in "
                            f"{log.checkpoint_path('last')}. {os_error_fix(e, elsewhere=False)}, then run the "
                            f"same command with --resume auto to write it again.") from None
    else:
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


def _write_metrics(state: TrainState, log: RunLogger, finished: bool, stopped_by: str | None = None) -> dict:
    history = state.history
    evals = [h for h in history if "eval_top1" in h]
    best = max(evals, key=lambda h: h["eval_top1"]) if evals else None
    speeds = [h["train_images_per_s"] for h in history[1:]] or [h["train_images_per_s"] for h in history]
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
        "skipped_steps": state.skipped_steps, "history": history,
    }
    if log.rank == 0:
        ckpt.atomic_write(os.path.join(state.cfg["output_dir"], "metrics.json"),
                          json.dumps(metrics, indent=2).encode())
    return metrics
