"""Training from a config: build everything, then train and evaluate epoch after epoch, then finish.

Read top to bottom in the order a run goes: `setup` builds the model, data, optimizer and AMP state
(senet.optim: the recipe of Hu et al., Section 5); `_start` adds the run's logger, checkpoints and
resume (senet.resume); `_train_epochs` runs senet.engine's train_one_epoch and evaluate and writes the
epoch's checkpoints; `_finish` writes metrics.json and model.safetensors and says why the run ended;
`fit`, at the bottom, locks the run folder, catches the stop signals and runs the three.
"""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import sys
from typing import Any

import numpy as np
import paddle

from senet import checkpoint as ckpt
from senet.config import dump_config
from senet.data import build_loader
from senet.device import apply_cudnn_flags, device_notices, precision_label
from senet.distributed import broadcast_object, convert_sync_batchnorm, ranks_in_sync, world
from senet.engine import TrainingError, TrainState, evaluate, reached_max_steps, stop_agreed, train_one_epoch, unwrap
from senet.mixup import build_mixup
from senet.optim import ModelEMA, build_optimizer, scaled_lr
from senet.resnet import build_model
from senet.resume import resume_run
from senet.runlock import RunLock, RunLockedError
from senet.runlog import RunFolderError, RunLogger, check_run_folder, os_error_fix
from senet.runtime import STOP_SIGNALS
from senet.step import BatchTransform, TransformFor, decorate_o2


def setup(cfg: dict) -> tuple[TrainState, Any, Any, dict]:
    """Build the model, data, optimizer and AMP state from a resolved config.

    The order is Paddle's and PaddleClas's: the optimizer over the plain model's parameters, the EMA
    from its fp32 weights, then AMP O2's decorate, and paddle.DataParallel last (Paddle refuses to
    decorate a DataParallel model).
    """
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
        recorded_classes = ckpt.load_weights(
            model, cfg["model"]["weights"], trust=cfg["model"]["trust_pickle"], expected_arch=cfg["model"]["arch"]
        )
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
            scaler = paddle.amp.GradScaler(
                init_loss_scaling=amp["init_loss_scaling"], use_dynamic_loss_scaling=amp["dynamic"]
            )
    if world_size > 1:
        model = paddle.DataParallel(model)  # averages gradients across ranks (NCCL on GPUs, gloo on CPUs)
    state = TrainState(
        cfg,
        model,
        optimizer,
        scheduler,
        scaler,
        ema,
        amp,
        env["data_format"],
        classes=classes,
        saver=ckpt.CheckpointSaver(cfg["output_dir"], rank),
    )
    return state, train_loader, val_loader, env


def _remove_stale_temp_files(output_dir: str, log: RunLogger) -> None:
    """Delete the partial `<name>.tmp.<pid>` files (see ckpt.atomic_write) a killed save leaves behind.

    They were never renamed into place, so nothing is lost; but on ImageNet each is as large as a
    checkpoint, and repeated preemptions would otherwise fill the disk.
    """
    stale = []
    for folder in (output_dir, os.path.join(output_dir, "checkpoints")):
        if os.path.isdir(folder):
            stale += [
                os.path.join(folder, n)
                for n in sorted(os.listdir(folder))
                if ".tmp." in n and n.rpartition(".tmp.")[2].isdigit()
            ]
    for path in stale:
        os.remove(path)
    if stale:
        log.info(f"removed {len(stale)} partial file(s) left by an interrupted save: {', '.join(stale)}")


def _start(cfg: dict, resume: str | None, allow_config_change: bool) -> tuple[TrainState, Any, Any, RunLogger]:
    """setup(), the run's logger, the resume, and the run folder's config.yaml."""
    rank, world_size = world()
    state, train_loader, val_loader, env = setup(cfg)
    log = RunLogger(cfg, rank=rank, world_size=world_size)
    for notice in env["notices"]:
        log.info(notice)
    if resume:
        resume_run(state, resume, allow_config_change, log)
    if rank == 0:
        _remove_stale_temp_files(cfg["output_dir"], log)
        dump_config(cfg, os.path.join(cfg["output_dir"], "config.yaml"))
    log.open_writer(state.global_step)
    log.info(
        f"{cfg['model']['arch']}: {len(train_loader)} steps/epoch, lr {scaled_lr(cfg, log.world_size):.4g} "
        f"for a global batch of {cfg['data']['batch_size'] * log.world_size}, {env['precision']} "
        f"{state.data_format}, threads {os.environ.get('OMP_NUM_THREADS')}"
    )
    return state, train_loader, val_loader, log


DATA_WAIT_NOTICE_PCT = 20.0  # above this share of step time waiting for data, the loader is the bottleneck


def _say_if_data_bound(state: TrainState, pct: float, log: RunLogger) -> None:
    """The one-line notice of a loader that holds the training back, with the remedies: once a run,
    at the first epoch above DATA_WAIT_NOTICE_PCT (each epoch's figure is in train.log anyway)."""
    if pct > DATA_WAIT_NOTICE_PCT and not state.said_data_bound:
        state.said_data_bound = True
        d = state.cfg["data"]
        dali = "" if d["loader"] == "dali" else "data.loader: dali, "
        log.info(
            f"notice: data wait {pct:.0f}% of step time: the loader is the bottleneck. Remedies: more "
            f"data.num_workers (now {d['num_workers']}), {dali}or a pre-resized copy "
            f"(scripts/prepare_imagenet.py --short-side)."
        )


def _end_of_epoch(state: TrainState, val_loader, stats: dict, log: RunLogger, stop: dict | None = None) -> dict | None:
    """The epoch's record, after its eval if one is due; None if a signal stopped the eval."""
    cfg, t = state.cfg, state.cfg["train"]
    record = {
        "epoch": state.epoch + 1,
        "step": state.global_step,
        "train_loss": stats["loss"],
        "train_top1": stats["top1"],
        "epoch_time_s": stats["epoch_time_s"],
        "train_images_per_s": stats["images"] / max(stats["epoch_time_s"], 1e-9),
        "rss_mb": log.rss_mb(),
    }
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
            ema_ev = evaluate(
                state.ema.copy_into(unwrap(state.model)), val_loader, cfg, state.data_format, state.amp, log, stop
            )
            if ema_ev is None:
                return None
            record.update({f"ema_eval_{k}": v for k, v in ema_ev.items()})
        if ev["top1"] > state.best_top1:
            state.best_top1, state.best_epoch = ev["top1"], state.epoch + 1
            record["is_best"] = True
    record["skipped_steps"] = state.skipped_steps
    if log.world_size > 1:  # DataParallel must keep every rank's weights identical; check it once an epoch
        same, prints = ranks_in_sync(unwrap(state.model))
        record["ranks_in_sync"] = same
        log.info(
            f"weights identical on all {log.world_size} ranks ({prints[0]})"
            if same
            else f"WARNING: weights differ across ranks: {prints}"
        )
    log.epoch(state.global_step, record)
    return record


def _close_epoch(state: TrainState, epoch_record: dict, log: RunLogger) -> None:
    """Move on to the next epoch and write the epoch's checkpoints."""
    t = state.cfg["train"]
    state.epoch += 1
    state.batch_in_epoch = 0
    state.history.append(epoch_record)
    # `best` before `last`: a kill between the two then resumes from the newer `best` (the same
    # state) instead of leaving `best` unwritten for this epoch; normally `last` is the newest.
    if epoch_record.get("is_best"):
        state.saver.save(state, "best")
    state.saver.save(state, "last")
    if t["save_every"] and state.epoch % t["save_every"] == 0:
        state.saver.save(state, f"epoch_{state.epoch}", keep_last=t["keep_last"])


def _say_how_to_resume(signum: int, state: TrainState, log: RunLogger) -> None:
    log.info(
        f"{signal.Signals(signum).name} received: saved {state.saver.path('last')} at step "
        f"{state.global_step}. Resume with: .venv/bin/python tools/train.py -c <config> --resume auto "
        f"-o output_dir={state.cfg['output_dir']}"
    )


def _save_and_say(stop: dict, state: TrainState, log: RunLogger) -> None:
    state.saver.save(state, "last")
    _say_how_to_resume(stop["signal"], state, log)


def _train_epochs(state: TrainState, train_loader, val_loader, log: RunLogger, stop: dict) -> None:
    """Train and evaluate epoch after epoch until the last, train.max_steps, or a stop signal."""
    while state.epoch < state.cfg["train"]["epochs"] and not reached_max_steps(state):
        if stop_agreed(stop, log.world_size):  # it came before training started or between epochs
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
            state.saver.save(state, "last")
            if not reached_max_steps(state):  # never end a run silently (issue 23): say it, exit non-zero
                raise TrainingError(
                    f"epoch {state.epoch + 1} ended after {state.batch_in_epoch} of "
                    f"{len(train_loader)} batches: the loader yielded fewer than planned. Saved "
                    f"{state.saver.path('last')}; this is a bug: please report it with train.log"
                )
            return
        epoch_record = _end_of_epoch(state, val_loader, stats, log, stop)
        if epoch_record is None:  # a signal stopped the eval: keep the epoch's training, evaluate it on resume
            state.epoch_stats = stats
            _save_and_say(stop, state, log)
            return
        _close_epoch(state, epoch_record, log)


def _write_metrics(state: TrainState, log: RunLogger, finished: bool, stopped_by: str | None = None) -> dict:
    history = state.history
    evals = [h for h in history if "eval_top1" in h]
    best = max(evals, key=lambda h: h["eval_top1"]) if evals else None
    speeds = [h["train_images_per_s"] for h in history[1:]] or [h["train_images_per_s"] for h in history]
    waits = [h["data_wait_pct"] for h in history if "data_wait_pct" in h]
    metrics = {
        "name": state.cfg["name"],
        "arch": state.cfg["model"]["arch"],
        "finished": finished,
        # "SIGTERM", "SIGINT" or "SIGUSR1" when a signal stopped the run early, "max_steps" for
        # train.max_steps, else null
        "stopped_by": stopped_by,
        "epochs_done": state.epoch,
        "global_step": state.global_step,
        "best": {
            "top1": best["eval_top1"],
            "top5": best["eval_top5"],
            "loss": best["eval_loss"],
            "epoch": best["epoch"],
        }
        if best
        else None,
        "final": {k.removeprefix("eval_"): v for k, v in evals[-1].items() if k.startswith("eval_")} if evals else None,
        "train_images_per_s": float(np.mean(speeds)) if speeds else None,
        # the share of step time the host waited for batches: per epoch in history, here their mean
        "data_wait_pct": float(np.mean(waits)) if waits else None,
        "precision": precision_label(state.amp),  # what the run really trained in (senet.device)
        "skipped_steps": state.skipped_steps,
        "history": history,
    }
    if log.rank == 0:
        ckpt.atomic_write(os.path.join(state.cfg["output_dir"], "metrics.json"), json.dumps(metrics, indent=2).encode())
    return metrics


def _write_final_files(state: TrainState, log: RunLogger, finished: bool, stopped_by: str | None) -> dict:
    cfg = state.cfg
    final_file = os.path.join(cfg["output_dir"], "metrics.json")
    try:
        metrics = _write_metrics(state, log, finished, stopped_by)
        if finished and log.rank == 0:
            final_file = os.path.join(cfg["output_dir"], "model.safetensors")
            ckpt.save_safetensors(
                unwrap(state.model),
                final_file,
                {
                    "arch": cfg["model"]["arch"],
                    "num_classes": cfg["model"]["num_classes"],
                    "config": cfg,
                    "classes": state.classes,
                },
            )
    except OSError as e:
        # The training itself is safe in `last`; resuming a finished run only writes these files again.
        raise TrainingError(
            f"could not write {final_file} ({e.strerror or e}). The trained state is in "
            f"{state.saver.path('last')}. {os_error_fix(e, elsewhere=False)}, then run the "
            f"same command with --resume auto to write it again."
        ) from None
    return metrics


def _stopped_by(state: TrainState, stop: dict, finished: bool) -> str | None:
    """metrics.json's stopped_by for a run that ended before its last epoch: the signal, or max_steps."""
    if finished:
        return None
    if stop.get("signal"):
        return signal.Signals(stop["signal"]).name
    return "max_steps" if reached_max_steps(state) else None


def _say_max_steps(state: TrainState, log: RunLogger) -> None:
    t = state.cfg["train"]
    written = [f"checkpoints/{n}.pdparams" for n in ("last", "best") if os.path.isfile(state.saver.path(n))]
    where = (
        f"epoch {state.epoch + 1}/{t['epochs']}, batch {state.batch_in_epoch}"
        if state.batch_in_epoch
        else f"after epoch {state.epoch}/{t['epochs']}"
    )
    best = f"; best val top-1 so far {state.best_top1:.2f}% at epoch {state.best_epoch}" if state.best_epoch > 0 else ""
    log.info(
        f"stopped at train.max_steps={t['max_steps']} (step {state.global_step}, {where}{best}). "
        f"{state.cfg['output_dir']} holds {', '.join(written)} and metrics.json; model.safetensors is written "
        f"once all {t['epochs']} epochs are done. To go on: the same command with --resume auto and a larger "
        f"train.max_steps (0 = no limit)."
    )


def _finish(state: TrainState, log: RunLogger, stop: dict) -> dict:
    """Write metrics.json (and model.safetensors once every epoch is done); say why the run stopped."""
    finished = state.epoch >= state.cfg["train"]["epochs"]
    stopped_by = _stopped_by(state, stop, finished)
    try:
        metrics = _write_final_files(state, log, finished, stopped_by)
        if stopped_by == "max_steps":
            _say_max_steps(state, log)
        elif finished and stop_agreed(stop, log.world_size):
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


def _transform_for(cfg: dict, given: BatchTransform | None, rank: int) -> TransformFor | None:
    """Each training batch's transform: fit()'s `batch_transform`, or the config's mixup and CutMix (senet.mixup,
    drawn by the batch's place in the run), or None (the step gets the batches as loaded)."""
    mixup = build_mixup(cfg, rank)
    if given is not None and mixup is not None:
        raise TrainingError("fit(batch_transform=...) and train.mixup would both transform the batches: use one")
    if mixup is not None:
        return mixup.at
    return None if given is None else (lambda epoch, batch: given)


def _train(
    cfg: dict, resume: str | None, allow_config_change: bool, stop: dict, batch_transform: BatchTransform | None
) -> dict:
    transform_for = _transform_for(cfg, batch_transform, world()[0])  # a bad train.mixup stops us before the run
    state, train_loader, val_loader, log = _start(cfg, resume, allow_config_change)
    state.transform_for = transform_for
    _train_epochs(state, train_loader, val_loader, log, stop)
    return _finish(state, log, stop)


def _fit(cfg: dict, resume: str | None, allow_config_change: bool, batch_transform: BatchTransform | None) -> dict:
    """fit() with the stop signals caught from the start to the end of the final save.

    SIGTERM (schedulers' preemption), SIGINT (Ctrl-C) and SIGUSR1 (Slurm's --signal=USR1@N warning
    before a time limit) only set a flag. Training stops at the next step boundary (in a job, at the
    next train.log_every-th step, where the ranks agree), an eval at the next batch, and before
    training or between epochs at once: each saves `last` and says how to resume. During the final
    save, the save finishes first. tools/train.py then exits 128 + the signal number. The data
    loader's workers ignore these signals (senet.runtime.STOP_SIGNALS), so a signal sent to the
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


def fit(
    cfg: dict,
    resume: str | None = None,
    allow_config_change: bool = False,
    batch_transform: BatchTransform | None = None,
) -> dict:
    """Train `cfg` to the end (or to train.max_steps), evaluating and checkpointing as configured.

    `batch_transform` (images, labels) -> (images, targets) is applied to every training batch before
    the step (see senet.step); None trains on the batches as loaded, or mixed as train.mixup says.

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
