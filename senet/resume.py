"""Finding, checking and loading the checkpoint a run resumes from (`tools/train.py --resume`).

`find_resume_checkpoint` picks, among the trainer's own checkpoints in a run folder, the one furthest
along that loads and holds this run's network; `check_resume_config` refuses another experiment (the
list of harmless changes is senet.config.RESUME_MAY_CHANGE) and another class list; `resume_run`
restores a TrainState from it. The checks run before any of its state is applied.
"""

from __future__ import annotations

import os
import sys

from senet import checkpoint as ckpt
from senet.config import config_changes
from senet.distributed import broadcast_object
from senet.engine import TrainingError, TrainState
from senet.runlog import RunLogger


def find_resume_checkpoint(
    output_dir: str, trust: bool = False, arch: str | None = None, foreign: list[str] | None = None
) -> str | None:
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


def check_resume_config(saved: dict, cfg: dict, path: str, allow_config_change: bool, log: RunLogger) -> None:
    """Resume only the same experiment: refuse config changes that make another one (config.RESUME_MAY_CHANGE
    lists those that do not) unless --allow-config-change says they are intended; note every change."""
    harmless, different = config_changes(saved.get("config") or cfg, cfg)
    devices, now = saved.get("world_size", log.world_size), log.world_size
    if devices != now:  # the global batch, and with it the scaled lr and each rank's share of the data
        different.append(
            f"devices {devices} -> {now} (global batch {cfg['data']['batch_size'] * devices} -> "
            f"{cfg['data']['batch_size'] * now})"
        )
    if different and not allow_config_change:
        raise TrainingError(
            f"refusing to resume from {path} with a changed experiment: {'; '.join(different)}. "
            f"Start a new run with -o output_dir=PATH, or pass --allow-config-change if the "
            f"changes are intended"
        )
    if different:
        log.info(f"resuming with experiment changes allowed by --allow-config-change: {'; '.join(different)}")
    if harmless:
        stretched = any(c.startswith("train.epochs ") for c in harmless) and cfg["lr_scheduler"]["name"] == "cosine"
        log.info(
            f"resuming with config changes that keep the experiment: {'; '.join(harmless)}"
            + (" (the cosine schedule now ends at the new last epoch)" if stretched else "")
        )


def resume_run(state: TrainState, resume: str, allow_config_change: bool, log: RunLogger) -> None:
    """Restore `state` from the checkpoint `resume` names ("auto": the furthest one in the run folder)."""
    cfg = state.cfg
    foreign: list[str] = []
    path = (
        find_resume_checkpoint(cfg["output_dir"], cfg["model"]["trust_pickle"], cfg["model"]["arch"], foreign)
        if resume == "auto"
        else resume
    )
    path, foreign = broadcast_object((path, foreign))  # every rank resumes from the checkpoint rank 0 chose
    if not path and foreign:  # starting afresh here would overwrite another network's checkpoints
        raise TrainingError(
            f"--resume auto: {cfg['output_dir']}/checkpoints holds checkpoints of another network "
            f"({', '.join(foreign)}) and none of model.arch={cfg['model']['arch']}; a new run "
            f"would overwrite them. Set -o output_dir=PATH for this one"
        )
    if not path:
        log.info(f"--resume auto: no checkpoint in {cfg['output_dir']}/checkpoints, starting fresh")
        return
    saved = ckpt.load_checkpoint(path, cfg["model"]["trust_pickle"])
    check_resume_config(saved, cfg, path, allow_config_change, log)
    try:  # the same classes in the same order: a renamed class folder would permute every label
        ckpt.check_classes(saved.get("classes"), state.classes, path, cfg["data"]["allow_class_change"])
    except ckpt.CheckpointError as e:
        raise TrainingError(f"refusing to resume: {e}") from None
    state.restore(saved, path)
    state.saver.last_saved = path  # until this run saves, the checkpoint it resumed from is the last good one
    log.info(f"resumed from {path}: epoch {state.epoch + 1}, batch {state.batch_in_epoch}, step {state.global_step}")
