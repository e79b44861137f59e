"""Issue 16: one run per folder, resuming the same run, and disk errors that say what happened.

Runs are real `tools/train.py` processes where the behaviour is about processes (a second run, a
SIGKILLed run, data-loader workers outliving it); the rest runs fit() in this process.
"""

import errno
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import paddle
import psutil
import pytest
from test_reliability import CONFIG, DEADLINE, ROOT, TINY  # the tiny run of test_reliability.py

from senet import checkpoint as ckpt
from senet.config import load_config
from senet.resume import find_resume_checkpoint
from senet.runlock import LOCK_NAME, RunLock, RunLockedError
from senet.runlog import RunFolderError, check_run_folder
from senet.train import TrainingError, fit

pytestmark = pytest.mark.filterwarnings("ignore:When training, we now always track")


def train_cmd(out, *extra):
    overrides = [a for a in extra if not a.startswith("--") and "=" in a]
    flags = [a for a in extra if a not in overrides]
    return [
        sys.executable,
        os.path.join(ROOT, "tools", "train.py"),
        "-c",
        CONFIG,
        "-o",
        *TINY,
        f"output_dir={out}",
        *overrides,
        *flags,
    ]


def run(cmd):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE)


def fit_here(out, *overrides, resume=None, allow_config_change=False):
    """fit() in this process, as in a fresh one (Paddle's parameter names restart; see test_reliability)."""
    with paddle.utils.unique_name.guard():
        cfg = load_config(os.path.join(ROOT, CONFIG), [*TINY, f"output_dir={out}", *overrides])
        return fit(cfg, resume, allow_config_change)


def wait_for(condition, proc, what):
    deadline = time.time() + DEADLINE
    while not condition():
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def error_line(proc):
    """The tool's one-line error: the last line of stderr (Paddle may warn on stderr before it), no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr.strip().splitlines()[-1]


def read(path):
    return open(path).read() if os.path.exists(path) else ""


# ---------------------------------------------------------------- one run per folder


def test_lock_is_exclusive_names_its_holder_and_is_not_kept_by_forked_children(tmp_path):
    first = RunLock(str(tmp_path))
    first.acquire()
    holder = json.loads((tmp_path / LOCK_NAME).read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    with pytest.raises(RunLockedError) as e:  # flock conflicts between two opens, even in one process
        RunLock(str(tmp_path)).acquire()
    assert str(e.value) == (
        f"output_dir '{tmp_path}' is in use by another run: pid {os.getpid()} on host "
        f"{socket.gethostname()}, started {holder['started']} (lock {tmp_path / LOCK_NAME}). "
        f"Wait for it to end or stop it; to start a separate run, set -o output_dir=PATH"
    )
    first.release()
    # A forked child (a data-loader worker) outlives the run: it must not keep the folder locked. The fork
    # happens in a fresh interpreter, not in this test process: a pytest worker that earlier tests left with
    # engine thread pools and Paddle's SIGCHLD handler is no safe place to fork (xdist lost a worker here).
    proc = subprocess.run(
        [sys.executable, "-c", FORK_CHECK, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout == "unlocked while the child lived\n", proc.stdout + proc.stderr


FORK_CHECK = """
import os, sys
from senet.runlock import RunLock

first = RunLock(sys.argv[1])
first.acquire()
read_end, write_end = os.pipe()
ready_read, ready_write = os.pipe()
child = os.fork()
if child == 0:  # os.fork has returned, so the fork hooks (runlock's among them) have run
    os.close(write_end)
    os.write(ready_write, b"r")
    os.read(read_end, 1)  # wait until the parent has checked
    os._exit(0)
try:
    os.close(read_end)
    assert os.read(ready_read, 1) == b"r"
    first.release()
    with RunLock(sys.argv[1]) as second:  # while the child still lives
        assert second.fd is not None and os.waitpid(child, os.WNOHANG) == (0, 0)
    print("unlocked while the child lived")
finally:
    os.close(write_end)
    os.waitpid(child, 0)
"""


def test_a_second_run_is_refused_and_a_sigkilled_run_never_blocks_the_next(tmp_path):
    out = tmp_path / "run"
    log_path = tmp_path / "first.out"
    with open(log_path, "w") as log:  # loader workers on: they are forked with the lock's descriptor
        first = subprocess.Popen(
            train_cmd(out, "train.epochs=500", "data.num_workers=1", "train.save_every_steps=1"),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    workers = []
    try:
        wait_for(lambda: "step 2:" in read(out / "train.log"), first, "two training steps")
        second = run(train_cmd(out, "train.epochs=500", "--resume", "auto"))
        holder = json.loads((out / LOCK_NAME).read_text())
        assert second.returncode == 1, second.stderr
        assert error_line(second) == (
            f"error: output_dir '{out}' is in use by another run: pid {first.pid} on host "
            f"{socket.gethostname()}, started {holder['started']} (lock {out / LOCK_NAME}). "
            f"Wait for it to end or stop it; to start a separate run, set -o output_dir=PATH"
        )
        assert read(out / "train.log").count("steps/epoch") == 1  # the second run wrote nothing there
        # Freeze the workers so that they outlive the run for sure, then SIGKILL the run itself.
        workers = psutil.Process(first.pid).children(recursive=True)
        assert workers, "the run should have a data-loader worker"
        for w in workers:
            w.send_signal(signal.SIGSTOP)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
        assert all(w.is_running() for w in workers)
        third = run(
            train_cmd(out, "train.epochs=1", "data.num_workers=1", "train.save_every_steps=1", "--resume", "auto")
        )
        assert third.returncode == 0, third.stderr
        log = read(out / "train.log")
        assert "resuming with config changes that keep the experiment: train.epochs 500 -> 1" in log
        assert json.loads((out / "metrics.json").read_text())["finished"]
    finally:
        for w in workers:
            if w.is_running():
                w.kill()
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
        # SIGKILLed processes never unlink their shared-memory batches (docs/reliability.md): remove them.
        for pid in [first.pid, *(w.pid for w in workers)]:
            for leaked in glob.glob(f"/dev/shm/paddle_{pid}_*"):
                os.remove(leaked)


def test_tools_work_in_a_locked_run_folder_and_a_finished_run_frees_it(tmp_path):
    out = tmp_path / "run"
    fit_here(out, "train.epochs=1")
    with RunLock(str(out)):  # as while a run trains in the folder
        proc = run(
            [
                sys.executable,
                os.path.join(ROOT, "tools", "eval.py"),
                "-c",
                CONFIG,
                "-o",
                *TINY,
                f"output_dir={out}",
                f"model.weights={out / 'model.safetensors'}",
                "--json",
            ]
        )
        assert proc.returncode == 0, proc.stderr
        assert any(n.startswith("eval") and n.endswith(".json") for n in os.listdir(out))
    # The finished run released its lock: the next run in this very process takes the folder again.
    assert fit_here(out, "train.epochs=2", resume="auto")["finished"]


# ---------------------------------------------------------------- resuming the same run


def test_resume_with_another_experiment_is_refused_unless_allowed_and_changes_are_logged(tmp_path):
    out = tmp_path / "run"
    fit_here(out, "train.epochs=1")
    last = out / "checkpoints" / "last.pdparams"
    proc = run(train_cmd(out, "train.epochs=2", "optimizer.lr=0.4", "data.batch_size=8", "--resume", "auto"))
    assert proc.returncode == 1
    assert error_line(proc) == (
        f"error: refusing to resume from {last} with a changed experiment: "
        f"data.batch_size 16 -> 8; optimizer.lr 0.8 -> 0.4. Start a new run with "
        f"-o output_dir=PATH, or pass --allow-config-change if the changes are intended"
    )
    assert ckpt.load_checkpoint(str(last))["global_step"] == 4  # nothing trained
    metrics = fit_here(out, "train.epochs=2", "optimizer.lr=0.4", resume="auto", allow_config_change=True)
    assert metrics["finished"] and metrics["global_step"] == 8
    log = read(out / "train.log")
    assert "resuming with experiment changes allowed by --allow-config-change: optimizer.lr 0.8 -> 0.4" in log
    assert (
        "resuming with config changes that keep the experiment: train.epochs 1 -> 2 (the cosine schedule "
        "now ends at the new last epoch)"
    ) in log
    # Another number of devices is another global batch: refused like a batch size change.
    state = ckpt.load_checkpoint(str(last))
    ckpt.save_checkpoint(str(last), {**{k: v for k, v in state.items() if k != ckpt.MARKER}, "world_size": 2})
    with pytest.raises(TrainingError, match=r"devices 2 -> 1 \(global batch 32 -> 16\)"):
        fit_here(out, "train.epochs=3", "optimizer.lr=0.4", resume="auto")


def test_resume_picks_the_checkpoint_by_its_recorded_step_not_its_file_time(tmp_path):
    out = tmp_path / "run"
    fit_here(out, "train.save_every=1", "train.keep_last=5")
    folder = out / "checkpoints"
    steps = {n: ckpt.load_checkpoint(str(folder / n))["global_step"] for n in os.listdir(folder)}
    assert steps["epoch_1.pdparams"] == 4 and steps["epoch_2.pdparams"] == steps["last.pdparams"] == 8
    old, new = time.time() - 10**6, time.time() + 10**6  # as after a copy or a restore from backup
    os.utime(folder / "last.pdparams", (old, old))
    os.utime(folder / "epoch_1.pdparams", (new, new))
    os.utime(folder / "best.pdparams", (new, new))
    assert find_resume_checkpoint(str(out)) == str(folder / "last.pdparams")
    (folder / "last.pdparams").unlink()
    assert find_resume_checkpoint(str(out)) == str(folder / "epoch_2.pdparams")  # the same step as best
    (folder / "epoch_2.pdparams").rename(folder / "last.pdparams")
    assert find_resume_checkpoint(str(out)) == str(folder / "last.pdparams")


# ---------------------------------------------------------------- disk errors


def test_an_unwritable_checkpoint_folder_is_found_before_training(tmp_path):
    out = tmp_path / "run"
    if os.geteuid() == 0:  # root writes through chmod; sysfs refuses new files even to root. (A link inside
        out.symlink_to("/sys/kernel")  # the run folder is refused as a link, so the run folder is the link.)
        where = f"output_dir '{out}'"
    else:
        out.mkdir()
        (out / "checkpoints").mkdir(mode=0o555)
        where = f"the checkpoint folder '{out / 'checkpoints'}'"
    proc = run(train_cmd(out))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"error: {where} is not writable (" in proc.stderr, proc.stderr
    assert "Free disk space" not in proc.stderr and "-o output_dir=PATH" in proc.stderr
    assert "steps/epoch" not in proc.stdout  # refused before the model and data were built


def test_a_folder_in_the_way_of_a_checkpoint_is_found_before_training(tmp_path):
    (tmp_path / "checkpoints" / "last.pdparams").mkdir(parents=True)
    with pytest.raises(RunFolderError) as e:
        check_run_folder(str(tmp_path))
    assert str(e.value) == (
        f"{tmp_path / 'checkpoints' / 'last.pdparams'} is a folder, where the run writes its "
        f"file; move it away or set -o output_dir=PATH"
    )
    with pytest.raises(TrainingError, match="is a folder, where the run writes its file"):
        fit_here(tmp_path)


class _State:
    def to_checkpoint(self):
        return {"global_step": 1}


@pytest.mark.parametrize(
    "code, fix",
    [
        (errno.ENOSPC, "Free disk space or set -o output_dir=PATH"),
        (errno.EDQUOT, "Free disk space (you are over quota) or set -o output_dir=PATH"),
        (errno.EACCES, "Make the folder writable for this user or set -o output_dir=PATH"),
        (errno.EPERM, "Make the folder writable for this user or set -o output_dir=PATH"),
        (errno.EROFS, "The file system is read-only: remount it read-write or set -o output_dir=PATH"),
        (errno.EIO, "The disk reported an I/O error: check it (dmesg) or set -o output_dir=PATH"),
    ],
)
def test_a_failed_checkpoint_write_says_what_happened(tmp_path, monkeypatch, code, fix):
    saver = ckpt.CheckpointSaver(str(tmp_path))
    path = saver.path("last")

    def fail(path, state):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(ckpt, "save_checkpoint", fail)
    with pytest.raises(ckpt.CheckpointError) as e:
        saver.save(_State(), "last")
    assert str(e.value) == (
        f"could not write checkpoint {path} ({os.strerror(code)}); no earlier checkpoint exists. {fix}"
    )


def test_a_checkpoint_path_that_is_a_folder_is_not_called_a_full_disk(tmp_path):
    saver = ckpt.CheckpointSaver(str(tmp_path))
    path = saver.path("last")
    os.makedirs(path)  # appears while the run trains
    with pytest.raises(ckpt.CheckpointError) as e:
        saver.save(_State(), "last")
    assert str(e.value) == (
        f"could not write checkpoint {path} (Is a directory); no earlier checkpoint exists. "
        f"A folder stands where the file goes: move it away or set -o output_dir=PATH"
    )
    assert os.listdir(os.path.dirname(path)) == ["last.pdparams"]  # no temporary file left


def test_run_lock_that_is_a_link_or_a_fifo_is_refused_by_name(tmp_path):
    """Issue 23: a symlinked run.lock was truncated and overwritten through (a root run then overwrites any
    file); a FIFO gave a bare [Errno 22]. Both are refused, naming the lock; the target is untouched."""
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    for kind in ("symlink", "dangling symlink", "fifo", "folder"):
        run = tmp_path / kind.replace(" ", "_")
        run.mkdir()
        lock = run / LOCK_NAME
        if kind == "symlink":
            lock.symlink_to(target)
        elif kind == "dangling symlink":
            lock.symlink_to(tmp_path / "nowhere" / "new.txt")
        elif kind == "fifo":
            os.mkfifo(lock)
        else:
            lock.mkdir()
        with pytest.raises(RunLockedError) as e:
            RunLock(str(run)).acquire()
        assert str(lock) in str(e.value) and (
            "symbolic link" in str(e.value)
            if "link" in kind
            else "not a regular file" in str(e.value) or "a folder" in str(e.value)
        ), e
    assert target.read_text() == "keep me\n" and not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize(
    "name", ["train.log", "config.yaml", "metrics.json", "checkpoints", "vdl", "checkpoints/last.pdparams"]
)
def test_run_files_that_are_links_are_refused_and_never_written_through(tmp_path, name):
    """Issue 23: everything the trainer writes in its folder is its own: a link where train.log, config.yaml,
    metrics.json, a checkpoint, checkpoints/ or vdl/ goes is refused by name before the run starts, and the
    file it points at is untouched."""
    target = tmp_path / "precious"
    target.write_text("keep me\n")
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True) if "/" in name else out.mkdir()
    (out / name).symlink_to(target)
    proc = run(train_cmd(out, "train.epochs=1"))
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"{out / name} is a symbolic link" in proc.stderr and "Traceback" not in proc.stderr
    assert target.read_text() == "keep me\n"


def test_files_named_like_checkpoints_but_not_the_trainers_are_left_alone(tmp_path):
    """Issue 23: a user's copy named epoch_1_keep.pdparams made every numbered save die (int('1_keep')), and
    --resume auto again. Pruning and --resume auto now see only the trainer's own names."""
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    for junk in ("epoch_1_keep.pdparams", "epoch_x.pdparams", "last_backup.pdparams"):
        (out / "checkpoints" / junk).write_bytes(b"not a checkpoint")
    proc = run(train_cmd(out, "train.epochs=2", "train.save_every=1", "train.keep_last=1"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    names = sorted(os.listdir(out / "checkpoints"))
    assert names == [
        "best.pdparams",
        "epoch_1_keep.pdparams",
        "epoch_2.pdparams",
        "epoch_x.pdparams",
        "last.pdparams",
        "last_backup.pdparams",
    ], names
    assert find_resume_checkpoint(str(out)) == str(out / "checkpoints" / "last.pdparams")
