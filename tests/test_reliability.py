"""Issue 9: fault injection and hostile input. See docs/reliability.md for what is guaranteed.

Faults are real where they can be: training subprocesses are SIGKILLed (also frozen with SIGSTOP
while their checkpoint temp file is open, so the kill provably lands inside a write), sent SIGINT
and SIGTERM, and pointed at unwritable folders. A full disk and non-finite losses are injected
in-process with monkeypatch, since neither can be produced on demand from outside.

Rows of the issue already tested elsewhere are not repeated: bad image files, list files, missing
roots and bad CIFAR tarballs in tests/test_data.py; config errors in tests/test_config.py; the
kill-after-epoch-1 resume, resume into another model and the file-in-the-way output_dir in
tests/test_train.py.
"""

import errno
import glob
import json
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import cv2
import numpy as np
import paddle
import pytest
import yaml
from safetensors.numpy import load_file, save_file
from tiny_run import tiny

from senet import checkpoint as ckpt
from senet import step as step_mod
from senet.config import load_config
from senet.data import BadImageError, DatasetError, build_dataset
from senet.data.datasets import load_cifar
from senet.data.decode import decode_image
from senet.data.fake import make_fake_cifar, make_fake_imagenet
from senet.resume import find_resume_checkpoint
from senet.train import TrainingError, fit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/demo/se_resnet20_digits.yaml"
# The tiny run of tests/test_train.py: 64 synthetic 16 px images in 4 classes, 4 steps per epoch, 2 epochs.
TINY = tiny("train.log_every=1")  # tests/tiny_run.py
STEPS_PER_EPOCH, TOTAL_STEPS = 4, 8
ENV = {**os.environ, "OMP_NUM_THREADS": ""}  # every run: all cores (or SENET_THREADS); bitwise needs one count
DEADLINE = 300  # seconds; generous, the test machine is slow and shared
pytestmark = pytest.mark.filterwarnings("ignore:When training, we now always track")


def tool_cmd(tool, *args):
    return [sys.executable, os.path.join(ROOT, "tools", tool), *args]


def train_cmd(out, *extra):
    """tools/train.py on the tiny run; `extra` may hold more overrides, then --resume."""
    overrides = [a for a in extra if not a.startswith("--") and "=" in a]
    flags = [a for a in extra if a not in overrides]
    return tool_cmd("train.py", "-c", CONFIG, "-o", *TINY, f"output_dir={out}", *overrides, *flags)


def run(cmd, timeout=DEADLINE):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=ENV)


def start(cmd, log_path):
    """Start `cmd` with stdout and stderr going to `log_path`, which tests poll instead of sleeping."""
    with open(log_path, "w") as log:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True, env=ENV)


def wait_for(condition, proc=None, what="", timeout=DEADLINE):
    deadline = time.time() + timeout
    while not condition():
        assert proc is None or proc.poll() is None, f"the run ended (exit {proc.returncode}) before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


def wait_stopped(proc):
    """Wait until a SIGSTOPped process is really frozen (state T), so what we see next stays true."""

    def stopped():
        with open(f"/proc/{proc.pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in "Tt"

    wait_for(stopped, what="SIGSTOP to take effect", timeout=60)


def tiny_cfg(out, *extra):
    return load_config(os.path.join(ROOT, CONFIG), [*TINY, f"output_dir={out}", *extra])


def fit_here(cfg, resume=None):
    """fit() in this process, as in a fresh one. Paddle names parameters from a per-process counter and a
    checkpoint's optimizer state is keyed by those names, so each run restarts the counter."""
    with paddle.utils.unique_name.guard():
        return fit(cfg, resume)


def load_every_checkpoint(out):
    """Load every checkpoint file in the run: none may ever be half-written or unloadable."""
    folder = out / "checkpoints"
    names = sorted(n for n in os.listdir(folder) if n.endswith(".pdparams")) if folder.is_dir() else []
    return {n: ckpt.load_checkpoint(str(folder / n)) for n in names}


def assert_same_weights(a, b):
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not np.array_equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def read_json(path):
    with open(path) as f:
        return json.load(f)


def resume_points(text):
    """(epoch, batch, step) of every 'resumed from' line: epoch 1-based, batch within that epoch."""
    return [tuple(map(int, m)) for m in re.findall(r"resumed from .*: epoch (\d+), batch (\d+), step (\d+)", text)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run, without mid-epoch checkpoints: what every interrupted run must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = run(train_cmd(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_json(out / "metrics.json")["global_step"] == TOTAL_STEPS
    return out


# ---------------------------------------------------------------- SIGKILL


def _freeze_after_mid_epoch_checkpoint(proc, last):
    """SIGSTOP `proc` just after it wrote a checkpoint at batch 1 or 2 of an epoch (so it is mid-epoch)."""
    seen = last.stat().st_mtime_ns if last.exists() else None
    while proc.poll() is None:
        mtime = last.stat().st_mtime_ns if last.exists() else None
        if mtime != seen:
            seen = mtime
            if ckpt.load_checkpoint(str(last))["batch_in_epoch"] in (1, 2):  # the next save is mid-epoch too
                proc.send_signal(signal.SIGSTOP)
                wait_stopped(proc)
                return True
        time.sleep(0.002)
    return False


def _freeze_inside_a_write(proc, folder, nth):
    """SIGSTOP `proc` while the temp file of its nth checkpoint write exists (so a kill lands mid-write)."""
    suffix = f".tmp.{proc.pid}"  # senet.checkpoint.atomic_write's temp name
    writing = lambda: folder.is_dir() and any(n.endswith(suffix) for n in os.listdir(folder))  # noqa: E731
    caught = 0
    while proc.poll() is None:
        if writing():
            proc.send_signal(signal.SIGSTOP)
            wait_stopped(proc)
            if writing():  # frozen with the temp file still there: mid-write
                caught += 1
                if caught >= nth:
                    return True
            proc.send_signal(signal.SIGCONT)
            while proc.poll() is None and writing():
                time.sleep(0.0005)
        time.sleep(0.0005)  # a 2 MB write + fsync takes ~4 ms here
    return False


def test_sigkill_mid_epoch_and_mid_write_then_resume_auto_is_bitwise_identical(reference, tmp_path):
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    why = f"(random seed {seed})"
    out = tmp_path / "run"
    folder, last = out / "checkpoints", out / "checkpoints" / "last.pdparams"
    cmd = train_cmd(out, "train.save_every_steps=1", "--resume", "auto")
    kills, logs = [], []
    for i, mode in enumerate(["mid-epoch", "mid-write", "mid-epoch", "mid-write"]):
        logs.append(tmp_path / f"attempt{i}.log")
        proc = start(cmd, logs[-1])
        try:
            frozen = (
                _freeze_after_mid_epoch_checkpoint(proc, last)
                if mode == "mid-epoch"
                else _freeze_inside_a_write(proc, folder, nth=rng.randint(1, 2))
            )
        finally:
            proc.kill()  # SIGKILL; also frees a frozen process
            proc.wait()
        if not frozen:  # the run reached its end before this kill point
            assert proc.returncode == 0, logs[-1].read_text()[-3000:] + why
            break
        assert proc.returncode == -signal.SIGKILL
        partial = sorted(n for n in os.listdir(folder) if ".tmp." in n)
        kills.append((mode, partial))
        states = load_every_checkpoint(out)  # every checkpoint in place still loads
        assert "last.pdparams" in states and not (out / "model.safetensors").exists(), why
        assert find_resume_checkpoint(str(out)) is not None
    assert [m for m, _ in kills].count("mid-epoch") >= 1, f"no mid-epoch kill landed {kills} {why}"
    assert any(m == "mid-write" and p for m, p in kills), f"no kill landed inside a checkpoint write {kills} {why}"
    final = run(cmd)
    assert final.returncode == 0, final.stderr[-3000:]
    text = "".join(p.read_text() for p in logs) + final.stdout
    points = resume_points(text)
    assert points and all(step == (epoch - 1) * STEPS_PER_EPOCH + batch for epoch, batch, step in points), points
    assert any(batch > 0 for _, batch, _ in points), f"no resume started mid-epoch: {points} {why}"
    assert "partial file(s) left by an interrupted save" in text  # the temp files of killed writes are removed
    assert not [n for n in os.listdir(folder) if ".tmp." in n]
    # The last run trained exactly the steps after its resume point: none repeated, none skipped.
    epoch, batch, step = resume_points(final.stdout)[-1]
    assert [int(s) for s in re.findall(r"\] step (\d+):", final.stdout)] == list(range(step + 1, TOTAL_STEPS + 1))
    assert_same_weights(reference / "model.safetensors", out / "model.safetensors")
    metrics = read_json(out / "metrics.json")
    assert metrics["finished"] and metrics["global_step"] == TOTAL_STEPS and metrics["stopped_by"] is None
    assert [h["step"] for h in metrics["history"]] == [STEPS_PER_EPOCH, TOTAL_STEPS]


# ---------------------------------------------------------------- SIGINT and SIGTERM


def test_sigint_mid_epoch_saves_at_the_next_step_says_how_to_resume_and_resumes_exactly(reference, tmp_path):
    out, log = tmp_path / "run", tmp_path / "first.log"
    proc = start(train_cmd(out), log)
    try:
        wait_for(lambda: "] step 1:" in log.read_text(), proc, "step 1")
        proc.send_signal(signal.SIGINT)  # Ctrl-C, in the middle of epoch 1
        proc.wait(timeout=DEADLINE)
    finally:
        proc.kill()
    text = log.read_text()
    assert proc.returncode == 128 + signal.SIGINT, text[-3000:]  # 130, as the shell reports Ctrl-C
    state = ckpt.load_checkpoint(str(out / "checkpoints" / "last.pdparams"))
    step = state["global_step"]
    assert 0 < step < STEPS_PER_EPOCH and state["epoch"] == 0 and state["batch_in_epoch"] == step  # mid-epoch
    assert (
        f"SIGINT received: saved {out}/checkpoints/last.pdparams at step {step}. Resume with: "
        f".venv/bin/python tools/train.py -c <config> --resume auto -o output_dir={out}"
    ) in text
    assert "Traceback" not in text and not (out / "model.safetensors").exists()
    metrics = read_json(out / "metrics.json")
    assert metrics["stopped_by"] == "SIGINT" and not metrics["finished"] and metrics["global_step"] == step
    resumed = run(train_cmd(out, "--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resume_points(resumed.stdout) == [(1, step, step)]
    assert_same_weights(reference / "model.safetensors", out / "model.safetensors")


def test_sigterm_during_eval_stops_the_eval_at_once_and_resumes_exactly(reference, tmp_path):
    out, log = tmp_path / "run", tmp_path / "first.log"
    # 240 val images make the end-of-epoch eval last a second or more, so the signal lands inside it.
    proc = start(train_cmd(out, "data.synthetic_val_size=240"), log)
    try:
        wait_for(lambda: f"] step {STEPS_PER_EPOCH}:" in log.read_text(), proc, "the last step of epoch 1")
        proc.send_signal(signal.SIGTERM)  # preemption
        proc.wait(timeout=DEADLINE)
    finally:
        proc.kill()
    text = log.read_text()
    assert proc.returncode == 128 + signal.SIGTERM, text[-3000:]  # 143
    assert "epoch 1/2 |" not in text  # the eval stopped at once: a long eval must not outlast the grace period
    state = ckpt.load_checkpoint(str(out / "checkpoints" / "last.pdparams"))
    # Saved with epoch 1 trained but not evaluated, and its train stats kept for the resumed run's record.
    assert (state["epoch"], state["batch_in_epoch"], state["global_step"]) == (0, STEPS_PER_EPOCH, STEPS_PER_EPOCH)
    assert state["epoch_stats"]["complete"] and state["epoch_stats"]["loss"] > 0
    assert f"SIGTERM received: saved {out}/checkpoints/last.pdparams at step {STEPS_PER_EPOCH}. Resume with" in text
    assert f"] step {STEPS_PER_EPOCH + 1}:" not in text
    resumed = run(train_cmd(out, "--resume", "auto"))  # the val set does not change the weights
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resume_points(resumed.stdout) == [(1, STEPS_PER_EPOCH, STEPS_PER_EPOCH)]
    assert "epoch 1/2 |" in resumed.stdout and f"] step {STEPS_PER_EPOCH}:" not in resumed.stdout  # eval only
    assert_same_weights(reference / "model.safetensors", out / "model.safetensors")
    first, ref_first = (read_json(d / "metrics.json")["history"][0] for d in (out, reference))
    assert first["train_loss"] == ref_first["train_loss"] and first["eval_top1"] == ref_first["eval_top1"]


# ---------------------------------------------------------------- unwritable output_dir, full disk


def test_read_only_output_dir_is_refused_before_training(tmp_path):
    # Tests run as root, for whom chmod does not stop writes; /proc refuses new files even to root.
    proc = run(train_cmd("/proc"))
    assert proc.returncode == 1
    assert "output_dir '/proc' is not writable" in proc.stderr and "-o output_dir=PATH" in proc.stderr
    assert "steps/epoch" not in proc.stdout  # refused before the model and data were built


def test_disk_full_during_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_fsync, writes = os.fsync, []

    def fsync(fd):  # ENOSPC surfaces at fsync on ext4 (delayed allocation); fail the third checkpoint
        if ".pdparams.tmp." in os.readlink(f"/proc/self/fd/{fd}"):
            writes.append(fd)
            if len(writes) == 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(ckpt.CheckpointError) as e:
        fit_here(tiny_cfg(out, "train.save_every_steps=1"))
    path = out / "checkpoints" / "last.pdparams"
    assert str(e.value) == (
        f"could not write checkpoint {path} (No space left on device); the previous {path} is "
        f"intact. Free disk space or set -o output_dir=PATH"
    )
    monkeypatch.undo()
    assert os.listdir(out / "checkpoints") == ["last.pdparams"]  # no temp file left behind
    assert ckpt.load_checkpoint(str(path))["global_step"] == 2


def test_failed_final_write_names_the_file_and_resume_auto_writes_it_again(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = ckpt.atomic_write

    def full_disk_at_the_end(path, data):  # the disk fills after the last checkpoint
        if path.endswith("metrics.json"):
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real(path, data)

    with monkeypatch.context() as m:
        m.setattr(ckpt, "atomic_write", full_disk_at_the_end)
        with pytest.raises(TrainingError) as e:
            fit_here(tiny_cfg(out))
    assert str(e.value) == (
        f"could not write {out / 'metrics.json'} (No space left on device). The trained state "
        f"is in {out / 'checkpoints' / 'last.pdparams'}. Free disk space, then run the same "
        f"command with --resume auto to write it again."
    )
    metrics = fit_here(tiny_cfg(out), resume="auto")
    assert metrics["finished"] and read_json(out / "metrics.json")["finished"]
    assert (out / "model.safetensors").is_file()


# ---------------------------------------------------------------- non-finite loss


def nan_loss_at(monkeypatch, steps):
    """Make the training loss NaN at the given (1-based) global steps, before any loss scaling, as a
    diverging run would. tests/test_train.py uses it too."""
    real = step_mod.forward_loss

    def forward_loss(parts, images, targets, train=True):
        logits, loss = real(parts, images, targets, train)
        # The trainer's LR scheduler counts the steps done (it steps once per step; a resume restores it).
        if train and parts.scheduler.last_epoch + 1 in steps:
            loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(step_mod, "forward_loss", forward_loss)


def test_nan_policy_stop_names_the_step_and_the_checkpoint_it_resumed_from(tmp_path, monkeypatch):
    out = tmp_path / "run"
    fit_here(tiny_cfg(out, "train.epochs=1"))
    nan_loss_at(monkeypatch, {6})
    with pytest.raises(TrainingError) as e:
        fit_here(tiny_cfg(out), resume="auto")
    last = out / "checkpoints" / "last.pdparams"
    assert str(e.value).startswith(f"non-finite loss at step 6; training stopped. Last good checkpoint: {last}.")
    assert "train.nan_policy=skip" in str(e.value)
    state = ckpt.load_checkpoint(str(last))
    assert state["global_step"] == STEPS_PER_EPOCH and all(np.isfinite(v).all() for v in state["model"].values())


def test_nan_policy_skip_skips_up_to_the_limit_then_stops(tmp_path, monkeypatch):
    nan_loss_at(monkeypatch, {2, 3})
    metrics = fit_here(tiny_cfg(tmp_path / "a", "train.nan_policy=skip", "train.nan_skip_limit=2", "train.epochs=1"))
    assert metrics["finished"] and metrics["skipped_steps"] == 2 and metrics["global_step"] == STEPS_PER_EPOCH
    assert all(np.isfinite(v).all() for v in load_file(str(tmp_path / "a" / "model.safetensors")).values())
    nan_loss_at(monkeypatch, {2, 3, 4})
    out = tmp_path / "b"
    with pytest.raises(TrainingError) as e:
        fit_here(tiny_cfg(out, "train.nan_policy=skip", "train.nan_skip_limit=2", "train.save_every_steps=1"))
    assert str(e.value) == (
        f"more than 2 non-finite losses (last at step 4); Last good checkpoint: "
        f"{out / 'checkpoints' / 'last.pdparams'}."
    )
    # Skipped steps 2 and 3 left the weights as they were, so the checkpoints saved after them are good ones.
    last = ckpt.load_checkpoint(str(out / "checkpoints" / "last.pdparams"))
    assert last["global_step"] == 3 and last["skipped_steps"] == 2
    assert all(np.isfinite(v).all() for v in last["model"].values())


# ---------------------------------------------------------------- bad config, through tools/train.py


def _yaml(path, text):
    path.write_text(text)
    return str(path)


def test_bad_configs_from_the_command_line(tmp_path):
    cases = {  # name: (args, exit code, expected message on stderr)
        "typo in a file": (
            ["-c", _yaml(tmp_path / "typo.yaml", "modle: {arch: resnet20}\n")],
            2,
            "config error: unknown config key 'modle'. Did you mean 'model'?",
        ),
        "wrong type": (
            ["-c", CONFIG, "-o", "data.batch_size=big"],
            2,
            "config error: data.batch_size must be int (like the default 32), got str 'big'",
        ),
        "missing _base_": (
            ["-c", _yaml(tmp_path / "c.yaml", "_base_: gone.yaml\n")],
            2,
            f"config error: config file not found: {tmp_path / 'gone.yaml'} (the _base_ of {tmp_path / 'c.yaml'})",
        ),
        "circular _base_": (
            ["-c", _yaml(tmp_path / "a.yaml", "_base_: b.yaml\n")],
            2,
            f"config error: circular _base_: {tmp_path / 'a.yaml'} -> {tmp_path / 'b.yaml'} -> {tmp_path / 'a.yaml'}",
        ),
        "override without =": (
            ["-c", CONFIG, "-o", "model.se.reduction"],
            2,
            "config error: override 'model.se.reduction' has no '='; write it as -o section.key=value",
        ),
    }
    _yaml(tmp_path / "b.yaml", "_base_: a.yaml\n")
    procs = {
        name: subprocess.Popen(
            tool_cmd("train.py", *args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
        )
        for name, (args, _, _) in cases.items()
    }
    for name, (_, code, message) in cases.items():
        stdout, stderr = procs[name].communicate(timeout=DEADLINE)
        assert (procs[name].returncode, message) == (code, stderr.strip()), name


def test_a_reduction_leaving_a_zero_width_se_layer_is_refused_before_training(tmp_path):
    proc = run(train_cmd(tmp_path / "run", "model.se.reduction=32"))  # stage 1 has 16 channels: 16 // 32 = 0
    assert proc.returncode == 1
    assert (
        "error: SE block 'layer1.0.se': C=16 // reduction 32 = 0 hidden units; use model.se.reduction <= 16 "
        "or leave this stage out of model.se.stages"
    ) in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


# ---------------------------------------------------------------- bad data not covered by tests/test_data.py


def test_empty_root_and_root_without_images(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = load_config(
        None, ["data.name=imagenet", f"data.root={empty}", "model.num_classes=3", f"output_dir={tmp_path / 'out'}"]
    )
    with pytest.raises(DatasetError, match=rf"{empty}/train does not exist. Expected layout:(?s:.*)name=synthetic"):
        build_dataset(cfg, "train")
    (empty / "train" / "n0").mkdir(parents=True)
    (empty / "train" / "n0" / "readme.txt").write_text("not an image")
    with pytest.raises(DatasetError, match=rf"the train split under {empty} has no images \(\.jpg, \.jpeg"):
        build_dataset(cfg, "train")


def test_truncated_png_is_refused(tmp_path):
    png = cv2.imencode(".png", np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))[1].tobytes()
    for keep in (0.5, 0.99):  # a real PNG cut short, as an interrupted copy leaves it
        path = tmp_path / f"cut{keep}.png"
        path.write_bytes(png[: int(len(png) * keep)])
        with pytest.raises(BadImageError, match=rf"bad image {path}: is not a decodable image \(corrupt, truncated"):
            decode_image(str(path))


def test_cifar_tarball_truncated_or_with_the_wrong_layout(tmp_path):
    good = make_fake_cifar(str(tmp_path / "src"), "cifar10", train=20, test=10)
    cut = tmp_path / "cut" / "cifar-10-python.tar.gz"
    cut.parent.mkdir()
    data = open(good, "rb").read()
    cut.write_bytes(data[: len(data) // 2])  # a partial download
    with pytest.raises(
        DatasetError,
        match=r"(?s)cannot read .*cut/cifar-10-python.tar.gz.*has MD5 \w+, not the "
        r"published c58f30108f718f92721af3b95e74349a",
    ):
        load_cifar("cifar10", str(cut.parent), "train", verify_md5=False)
    relaid = tmp_path / "relaid" / "cifar-10-python.tar.gz"  # repacked under another folder name
    relaid.parent.mkdir()
    with tarfile.open(good) as src, tarfile.open(relaid, "w:gz") as dst:
        for member in src:
            fileobj = src.extractfile(member) if member.isfile() else None
            member.name = member.name.replace("cifar-10-batches-py", "cifar10")
            dst.addfile(member, fileobj)
    with pytest.raises(
        DatasetError,
        match=r"relaid/cifar-10-python.tar.gz lacks \['cifar-10-batches-py/test_batch', "
        r"'cifar-10-batches-py/batches.meta'\]",
    ):
        load_cifar("cifar10", str(relaid.parent), "val", verify_md5=False)


def test_decompression_bomb_stops_training_with_the_file_named(tmp_path):
    root = make_fake_imagenet(str(tmp_path / "imagenet"), 2, 4, 2)
    buf = bytearray(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    buf[16:24] = (60000).to_bytes(4, "big") * 2  # IHDR: 60000 x 60000 pixels, 10.8 GB if decoded
    bomb = os.path.join(root, "train", "n00000000", "bomb.png")
    with open(bomb, "wb") as f:
        f.write(bytes(buf))
    proc = run(
        tool_cmd(
            "train.py",
            "-c",
            CONFIG,
            "-o",
            *TINY,
            "data.name=imagenet",
            f"data.root={root}",
            "model.num_classes=2",
            "data.batch_size=2",
            "data.eval_resize=16",
            f"output_dir={tmp_path / 'run'}",
        )
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"bad image {bomb}: declares 60000x60000 pixels, more than the 67,108,864 allowed" in proc.stderr
    assert "data.on_bad_image=skip" in proc.stderr


# ---------------------------------------------------------------- bad weights, through tools/eval.py


class _Malicious:
    """Unpickling this runs code: it creates `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def test_bad_weights_are_refused_by_eval_with_the_reason(reference, tmp_path):
    good_ckpt = reference / "checkpoints" / "last.pdparams"
    weights = load_file(str(reference / "model.safetensors"))
    truncated = tmp_path / "truncated.pdparams"
    truncated.write_bytes(good_ckpt.read_bytes()[: good_ckpt.stat().st_size // 2])
    odd = tmp_path / "odd.safetensors"  # one tensor missing, one extra
    save_file(
        {**{k: v for k, v in weights.items() if k != "fc.weight"}, "extra.weight": np.zeros(3, np.float32)}, str(odd)
    )
    foreign = tmp_path / "foreign.pdparams"  # a plain pickle of a dict of arrays, as other projects write them
    foreign.write_bytes(pickle.dumps(dict(weights)))
    marker = tmp_path / "pwned"
    malicious = tmp_path / "malicious.pdparams"
    malicious.write_bytes(pickle.dumps({"fc.weight": _Malicious(marker)}))
    trust = "-o model.trust_pickle=true"
    cases = {  # name: (weights, extra overrides, exit code, expected text)
        "another architecture": (
            good_ckpt,
            ["model.arch=resnet20"],
            1,
            f"error: {good_ckpt} does not fit the model for model.arch=resnet20: 36 unexpected: layer1.0.se.fc1.weight",
        ),
        "truncated checkpoint": (truncated, [], 1, f"error: {truncated} is truncated or corrupt"),
        "missing and extra tensors": (
            odd,
            [],
            1,
            f"error: {odd} does not fit the model for model.arch=se_resnet20: "
            f"1 missing: fc.weight; 1 unexpected: extra.weight. Was it saved "
            f"from another architecture",
        ),
        "foreign pickle": (
            foreign,
            [],
            1,
            f"error: {foreign} is a pickle from outside this project (not a senet "
            f"checkpoint). Unpickling can run code: convert it to .safetensors, or if "
            f"you trust it pass {trust}",
        ),
        "malicious pickle": (
            malicious,
            [],
            1,
            f"error: {malicious} contains a pickled builtins.exec, which could run "
            f"code when loaded. Load it only if you trust its source, with {trust}",
        ),
        "trusted foreign pickle": (foreign, ["model.trust_pickle=true"], 0, '"images": 24'),
    }
    procs = {
        name: subprocess.Popen(
            tool_cmd(
                "eval.py",
                "-c",
                CONFIG,
                "-o",
                *TINY,
                f"model.weights={w}",
                *more,
                f"output_dir={tmp_path / name.replace(' ', '_')}",
                "--json",
            ),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        for name, (w, more, _, _) in cases.items()
    }  # all at once: each spends seconds importing Paddle
    outputs = {name: proc.communicate(timeout=DEADLINE) for name, proc in procs.items()}
    for name, (_, _, code, message) in cases.items():
        stdout, stderr = outputs[name]
        assert procs[name].returncode == code, (name, stderr[-3000:])
        assert message in (stdout if code == 0 else stderr), (name, stderr[-3000:])
    assert not marker.exists()  # the malicious pickle was refused without running
    trusted = json.loads(outputs["trusted foreign pickle"][0])  # the same weights give the same numbers
    assert trusted["top1"] == read_json(reference / "metrics.json")["final"]["top1"]  # same machine: bit for bit


def test_a_malicious_checkpoint_is_never_resumed_from(tmp_path, capsys):
    marker = tmp_path / "pwned"
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "last.pdparams").write_bytes(pickle.dumps({ckpt.MARKER: 1, "model": _Malicious(marker)}))
    assert find_resume_checkpoint(str(tmp_path / "run")) is None  # --resume auto starts fresh instead
    err = capsys.readouterr().err
    assert "skipping unusable checkpoint" in err and "contains a pickled builtins.exec" in err
    with pytest.raises(ckpt.CheckpointError, match="contains a pickled builtins.exec"):
        ckpt.load_checkpoint(str(folder / "last.pdparams"))  # --resume PATH
    assert not marker.exists()


@pytest.mark.parametrize("ranks", [1, 2])
def test_a_batch_of_only_bad_images_counts_and_the_run_finishes(tmp_path, ranks):
    """Issue 23: with data.on_bad_image=skip, a batch made only of bad images used to be dropped, so the
    epoch looked unfinished: exit 0, no eval, no model.safetensors, finished false with no reason (and with
    2 ranks the other rank timed out). Now it counts as a batch; in a job every rank skips that step
    together. Batch 1 makes every bad image a whole batch, on one rank at a time."""
    root = make_fake_imagenet(str(tmp_path / "data"), classes=4, train_per_class=4, val_per_class=2, jpeg_only=True)
    bad = sorted(glob.glob(os.path.join(root, "train", "*", "*")))[::5]  # 4 of the 16 train images
    for path in bad:
        with open(path, "wb") as f:
            f.write(b"\xff\xd8 not a JPEG")
    out = tmp_path / "run"
    overrides = [
        "model.arch=se_resnet20",
        "model.num_classes=4",
        "model.se.reduction=4",
        f"data.root={root}",
        "data.name=imagenet",
        "data.image_size=16",
        "data.eval_resize=16",
        "data.eval_crop=16",
        "data.batch_size=1",
        "data.num_workers=0",
        "data.on_bad_image=skip",
        "train.epochs=1",
        "train.log_every=1",
        "train.amp.enabled=false",
        f"output_dir={out}",
    ]
    cmd = tool_cmd("train.py", "-c", CONFIG, "-o", *overrides)
    if ranks == 2:
        cmd = [
            sys.executable,
            "-m",
            "paddle.distributed.launch",
            "--nproc_per_node",
            "2",
            "--log_dir",
            str(tmp_path / "logs"),
            *cmd[1:],
        ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE, env=ENV)
    log = (out / "train.log").read_text() if (out / "train.log").exists() else ""
    assert proc.returncode == 0, proc.stderr[-3000:] + log[-2000:]
    metrics = read_json(out / "metrics.json")
    assert metrics["finished"] and metrics["stopped_by"] is None and metrics["epochs_done"] == 1
    assert metrics["global_step"] == 16 // ranks  # every batch counted, the empty ones too
    assert (out / "model.safetensors").is_file() and metrics["final"]["images"] == 8
    assert f"skipped {len(bad) if ranks == 1 else ''}" in log and "bad images this epoch" in log


def test_a_run_remembers_its_classes(tmp_path):
    """Issue 23: the class list and its order were not recorded with the weights. Renaming a class folder
    and resuming trained on permuted labels; exporting with a data root that lacked one class folder wrote
    wrong class names. Now checkpoints, model.safetensors and exports record the classes, and resume,
    eval and export on data whose classes differ are refused, naming the difference, unless
    data.allow_class_change=true."""
    root = make_fake_imagenet(str(tmp_path / "data"), classes=4, train_per_class=4, val_per_class=2, jpeg_only=True)
    out = tmp_path / "run"
    common = [
        "-c",
        CONFIG,
        "-o",
        "model.arch=se_resnet20",
        "model.num_classes=4",
        "model.se.reduction=4",
        f"data.root={root}",
        "data.name=imagenet",
        "data.image_size=16",
        "data.eval_resize=16",
        "data.eval_crop=16",
        "data.batch_size=4",
        "data.num_workers=0",
        "train.amp.enabled=false",
        f"output_dir={out}",
    ]

    def tool(name, *more):
        return subprocess.run(
            tool_cmd(name, *common, *more), cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE, env=ENV
        )

    assert tool("train.py", "train.epochs=1").returncode == 0
    classes = sorted(os.listdir(os.path.join(root, "train")))
    assert ckpt.load_checkpoint(str(out / "checkpoints" / "last.pdparams"))["classes"] == classes
    _, meta = ckpt.read_safetensors(str(out / "model.safetensors"))
    assert json.loads(meta["classes"]) == classes
    # A class folder renamed (in train and val) so that it sorts last: every label after it shifts by one.
    for split in ("train", "val"):
        os.rename(os.path.join(root, split, classes[0]), os.path.join(root, split, "zz_renamed"))
    proc = tool("train.py", "train.epochs=2", "--resume", "auto")  # (flags after the -o values)
    assert proc.returncode == 1 and "refusing to resume" in proc.stderr, proc.stderr
    assert f"added zz_renamed; missing {classes[0]}" in proc.stderr and "data.allow_class_change=true" in proc.stderr
    for split in ("train", "val"):
        os.rename(os.path.join(root, split, "zz_renamed"), os.path.join(root, split, classes[0]))
    # A data root that lacks one class folder: eval and export name it; the key accepts it knowingly.
    for split in ("train", "val"):
        shutil.rmtree(os.path.join(root, split, classes[3]))
    proc = tool("eval.py", f"model.weights={out}")
    assert proc.returncode == 1 and f"missing {classes[3]}" in proc.stderr and "data.allow_class_change" in proc.stderr
    proc = tool("export.py", f"model.weights={out}", "--output", str(tmp_path / "export"))
    assert proc.returncode == 2 and f"missing {classes[3]}" in proc.stderr, proc.stderr
    proc = tool("export.py", f"model.weights={out}", "data.allow_class_change=true", "--output", str(tmp_path / "e2"))
    assert proc.returncode == 0, proc.stderr
    info = yaml.safe_load((tmp_path / "e2" / "inference.yml").read_text())
    assert info["classes"] == classes and info["class_names"][3] == classes[3]  # the weights' classes name outputs
