"""What a run writes besides its weights: a text log, progress bars, VisualDL scalars (checkpoints:
senet.checkpoint.CheckpointSaver).

Only rank 0 writes anything; other ranks keep quiet. Progress bars (tqdm) appear when stdout is a
terminal; under CI or nohup they fall back to one log line every `train.log_every` steps.
"""

from __future__ import annotations

import os
import sys
import time

import psutil
from tqdm import tqdm

from senet import checkpoint as ckpt
from senet.limits import (
    open_regular,
    os_error_fix,  # noqa: F401  (tools/train.py imports it from here too)
)


class RunFolderError(RuntimeError):
    """The run folder cannot take the run's files; the message says why and what to do."""


# The files a run writes at the top of its folder (checkpoints/ and vdl/ hold the rest).
RUN_FILES = ("train.log", "config.yaml", "metrics.json", "model.safetensors", "run.lock")


def check_run_folder(output_dir: str) -> None:
    """Before anything is built: output_dir exists (or is created) and takes new files, so does its
    checkpoints/ folder if there is one (a new one made by the first save is ours, hence writable; not
    making it here keeps a refused run's folder as it was), and nothing but a regular file (no folder,
    no link) stands where the run writes one: its log, config, checkpoints, and the metrics.json and
    model.safetensors of the end. A write that fails later (a full disk) keeps the trained state in
    `last`, and its message says how to write the final files again.
    """
    checkpoints = os.path.join(output_dir, "checkpoints")
    for folder in (checkpoints, os.path.join(output_dir, "vdl")):
        if os.path.islink(folder) or (os.path.lexists(folder) and not os.path.isdir(folder)):
            what = "a symbolic link" if os.path.islink(folder) else "not a folder"
            raise RunFolderError(
                f"{folder} is {what}, where the run keeps its own folder; remove it or set -o output_dir=PATH"
            )
    for folder, what in ((output_dir, "output_dir"), (checkpoints, "the checkpoint folder")):
        if folder == checkpoints and not os.path.lexists(checkpoints):
            break
        probe = os.path.join(folder, f".write_test.{os.getpid()}")
        try:
            os.makedirs(folder, exist_ok=True)
            with open(probe, "w") as f:
                f.write("ok")
            os.remove(probe)
        except OSError as e:
            raise RunFolderError(f"{what} '{folder}' is not writable ({e.strerror or e}). {os_error_fix(e)}") from None
    # What the run writes here must be its own regular files and folders, never links: a symlinked
    # train.log was appended to through the link (issue 23), and a root run writes anywhere.
    written = [os.path.join(output_dir, n) for n in RUN_FILES]
    if os.path.isdir(checkpoints) and not os.path.islink(checkpoints):
        written += [
            os.path.join(checkpoints, n) for n in sorted(os.listdir(checkpoints)) if ckpt.CHECKPOINT_NAME.fullmatch(n)
        ]
    for path in written:
        if os.path.lexists(path) and (os.path.islink(path) or not os.path.isfile(path)):
            link = os.path.islink(path)
            kind = (
                "a symbolic link, which the run never writes through"
                if link
                else "a folder"
                if os.path.isdir(path)
                else "not a regular file"
            )
            raise RunFolderError(
                f"{path} is {kind}, where the run writes its file; {'remove' if link else 'move'} "
                f"it{'' if link else ' away'} or set -o output_dir=PATH"
            )


class RunLogger:
    def __init__(self, cfg: dict, rank: int = 0, world_size: int = 1) -> None:
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.output_dir = cfg["output_dir"]
        self.tty = sys.stdout.isatty()
        self.writer = None
        self._log_file = None
        if rank == 0:
            os.makedirs(self.output_dir, exist_ok=True)
            fd = open_regular(os.path.join(self.output_dir, "train.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            self._log_file = os.fdopen(fd, "a", buffering=1)

    # ---- text
    def info(self, message: str) -> None:
        if self.rank != 0:
            return
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        print(line, flush=True)
        self._log_file.write(line + "\n")

    # ---- progress bars
    def progress(self, total: int, initial: int = 0, desc: str = ""):
        if self.rank != 0 or not self.tty:
            return None
        return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False)

    @staticmethod
    def close_progress(bar) -> None:
        if bar is not None:
            bar.close()

    # ---- VisualDL
    def open_writer(self, step: int) -> None:
        """Open the VisualDL writer. On resume, new events continue at `step` in the same folder."""
        if self.rank != 0:
            return
        from visualdl import LogWriter

        self.writer = LogWriter(logdir=os.path.join(self.output_dir, "vdl"), file_name=f"vdlrecords.{step}.log")

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, float(value), step)

    def histogram(self, tag: str, values, step: int) -> None:
        if self.writer is not None:
            self.writer.add_histogram(tag, values, step)

    def train_step(self, step: int, stats: dict, bar) -> None:
        for key, value in stats.items():
            self.scalar({"loss_scale": "amp/loss_scale"}.get(key, f"train/{key}"), value, step)
        text = f"loss {stats['loss']:.4f}  lr {stats['lr']:.4g}  {stats['images_per_s']:.1f} img/s"
        if bar is not None:
            bar.set_postfix_str(text)
        else:
            self.info(f"step {step}: {text}")

    def epoch(self, step: int, record: dict) -> None:
        tags = {
            "train_loss": "train/epoch_loss",
            "train_top1": "train/top1",
            "epoch_time_s": "train/epoch_time_s",
            "train_images_per_s": "train/epoch_images_per_s",
            "rss_mb": "memory/rss_mb",
            "eval_top1": "eval/top1",
            "eval_top5": "eval/top5",
            "eval_loss": "eval/loss",
            "ema_eval_top1": "eval_ema/top1",
            "ema_eval_top5": "eval_ema/top5",
            "ema_eval_loss": "eval_ema/loss",
            "skipped_steps": "train/skipped_steps",
            "loss_scale": "amp/loss_scale",
            "data_wait_pct": "train/data_wait_pct",
        }
        for key, tag in tags.items():
            if key in record:
                self.scalar(tag, record[key], step)
        parts = [
            f"epoch {record['epoch']}/{self.cfg['train']['epochs']}",
            f"train loss {record['train_loss']:.4f} top-1 {record['train_top1']:.2f}%",
        ]
        if "eval_top1" in record:
            parts.append(
                f"val top-1 {record['eval_top1']:.2f}% top-5 {record['eval_top5']:.2f}% loss {record['eval_loss']:.4f}"
            )
        if "ema_eval_top1" in record:
            parts.append(f"EMA val top-1 {record['ema_eval_top1']:.2f}%")
        parts.append(
            f"{record['epoch_time_s']:.1f}s, {record['train_images_per_s']:.1f} img/s, RSS {record['rss_mb']:.0f} MB"
        )
        if "data_wait_pct" in record:  # host time waiting for batches (senet.train.EpochMeter)
            parts.append(f"data wait: {record['data_wait_pct']:.1f}% of step time")
        self.info(" | ".join(parts))

    # ---- memory
    @staticmethod
    def rss_mb() -> float:
        return psutil.Process().memory_info().rss / 2**20

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self._log_file is not None:
            self._log_file.close()
