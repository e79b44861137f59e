"""Issue 16: stop signals as schedulers send them, to every process of the job, loader workers included.

Each run starts in its own session (setsid), as a batch job does, with loader workers on, and the
signal goes to the whole process group (os.killpg, i.e. `kill -- -PGID`) or, where noted, to the
workers first. Every stopped run must save, print its one-line resume hint, exit 128 + the signal
number, and resume to weights bitwise identical to an uninterrupted run.
"""

import os
import signal
import subprocess
import sys
import time

import pytest
from test_distributed import launched_train_processes
from test_reliability import DEADLINE, ENV, ROOT, assert_same_weights, read_json, resume_points, wait_for, wait_stopped

from senet import checkpoint as ckpt
from senet.data.fake import make_fake_imagenet

CONFIG = "configs/demo/se_resnet20_digits.yaml"
# ImageNet-layout folders read by 2 workers: 64 train images in 4 steps of 16 per epoch, 2 epochs.
RUN = [
    "model.arch=se_resnet20",
    "model.num_classes=4",
    "model.se.reduction=4",
    "data.name=imagenet",
    "data.image_size=16",
    "data.eval_resize=18",
    "data.eval_crop=16",
    "data.batch_size=16",
    "data.num_workers=2",
    "train.log_every=1",
    "train.epochs=2",
    "lr_scheduler.name=cosine",
    "optimizer.lr=0.8",
    "train.amp.enabled=false",
]
STEPS_PER_EPOCH, TOTAL_STEPS = 4, 8
pytestmark = pytest.mark.filterwarnings("ignore:When training, we now always track")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("signals")
    small = make_fake_imagenet(str(folder / "small"), classes=4, train_per_class=16, val_per_class=4, size=(24, 20))
    # The same train images (they are made first, from the same seed) with 400 val images, so that an
    # eval lasts long enough to be hit.
    big = make_fake_imagenet(str(folder / "big"), classes=4, train_per_class=16, val_per_class=100, size=(24, 20))
    return {"small": small, "big": big, "folder": folder}


def cmd(out, root, *extra):
    overrides = [a for a in extra if "=" in a and not a.startswith("--")]
    flags = [a for a in extra if a not in overrides]
    return [
        sys.executable,
        os.path.join(ROOT, "tools", "train.py"),
        "-c",
        CONFIG,
        "-o",
        *RUN,
        f"data.root={root}",
        f"output_dir={out}",
        *overrides,
        *flags,
    ]


def start(command, log_path):
    """Start a run in a new session, as a batch job: its process group is the job."""
    with open(log_path, "w") as log:
        return subprocess.Popen(
            command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True, env=ENV, start_new_session=True
        )


def finish(proc, log_path):
    try:
        proc.wait(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return log_path.read_text()


def children(pid):
    """The processes whose parent is `pid` (a run's loader workers)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return found


def run_to_end(out, root, *extra):
    proc = subprocess.run(cmd(out, root, *extra), cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE, env=ENV)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def reference(data):
    """One uninterrupted run (read without workers: the data must not depend on them)."""
    out = data["folder"] / "reference"
    run_to_end(out, data["small"], "data.num_workers=0")
    assert read_json(out / "metrics.json")["global_step"] == TOTAL_STEPS
    return out


def check_stopped(text, proc, out, signum, step):
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, text[-3000:]
    hint = [line for line in text.splitlines() if f"{name} received: saved" in line]
    assert len(hint) == 1, text[-3000:]  # one line, once
    assert f"saved {out}/checkpoints/last.pdparams at step {step}. Resume with: " in hint[0], hint
    assert hint[0].endswith(f"tools/train.py -c <config> --resume auto -o output_dir={out}"), hint
    assert "Traceback" not in text and "killed by signal" not in text, text[-3000:]


def test_sigterm_to_the_workers_first_then_the_group_mid_training(data, reference, tmp_path):
    out, log = tmp_path / "run", tmp_path / "first.log"
    proc = start(cmd(out, data["small"]), log)
    try:
        wait_for(lambda: "] step 1:" in log.read_text(), proc, "step 1")
        # Freeze the main process, so that the run cannot finish while we watch its workers (a step
        # takes ~0.1 s); the workers keep running and get the signal on their own.
        os.kill(proc.pid, signal.SIGSTOP)
        wait_stopped(proc)
        workers = children(proc.pid)
        assert len(workers) >= 2, workers  # the train loader's 2 workers are running
        for pid in workers:  # the signal reaches the workers first: they must not die of it
            os.kill(pid, signal.SIGTERM)
        time.sleep(0.3)
        assert proc.poll() is None and all(os.path.exists(f"/proc/{pid}") for pid in workers)
        os.killpg(proc.pid, signal.SIGTERM)  # then the whole job, as scancel / systemd / kubelet do
        os.kill(proc.pid, signal.SIGCONT)  # the main process now finds SIGTERM pending
    finally:
        text = finish(proc, log)
    state = ckpt.load_checkpoint(str(out / "checkpoints" / "last.pdparams"))
    step = state["global_step"]
    assert 0 < step < TOTAL_STEPS  # stopped at a step boundary of the training
    check_stopped(text, proc, out, signal.SIGTERM, step)
    assert read_json(out / "metrics.json")["stopped_by"] == "SIGTERM"
    resumed = run_to_end(out, data["small"], "--resume", "auto")
    assert resume_points(resumed)[0][2] == step
    assert_same_weights(reference / "model.safetensors", out / "model.safetensors")


def test_sigusr1_to_the_group_during_eval_saves_at_once_and_exits_138(data, reference, tmp_path):
    out, log = tmp_path / "run", tmp_path / "first.log"
    proc = start(cmd(out, data["big"]), log)
    try:
        wait_for(lambda: f"] step {STEPS_PER_EPOCH}:" in log.read_text(), proc, "the last step of epoch 1")
        os.killpg(proc.pid, signal.SIGUSR1)  # Slurm's --signal=USR1@N, to every process of the step
    finally:
        text = finish(proc, log)
    check_stopped(text, proc, out, signal.SIGUSR1, STEPS_PER_EPOCH)  # 138
    state = ckpt.load_checkpoint(str(out / "checkpoints" / "last.pdparams"))
    assert (state["epoch"], state["batch_in_epoch"]) == (0, STEPS_PER_EPOCH) and state["epoch_stats"]["complete"]
    assert "epoch 1/2 |" not in text  # the eval of 400 images stopped at once
    metrics = read_json(out / "metrics.json")
    assert metrics["stopped_by"] == "SIGUSR1" and not metrics["finished"]
    resumed = run_to_end(out, data["big"], "--resume", "auto")  # the train images are those of the reference
    assert resume_points(resumed) == [(1, STEPS_PER_EPOCH, STEPS_PER_EPOCH)]
    assert_same_weights(reference / "model.safetensors", out / "model.safetensors")


def test_sigterm_to_the_group_during_the_final_save(data, reference, tmp_path):
    out, log = tmp_path / "run", tmp_path / "first.log"
    command = cmd(out, data["small"])
    command[1] = os.path.join(ROOT, "tests", "signal_in_final_save.py")  # sends it from inside the save
    proc = start(command, log)
    text = finish(proc, log)
    check_stopped(text, proc, out, signal.SIGTERM, TOTAL_STEPS)
    # The save finished first: the run is complete, and a resume only writes the final files again.
    assert read_json(out / "metrics.json")["finished"]
    assert_same_weights(reference / "model.safetensors", out / "model.safetensors")
    resumed = run_to_end(out, data["small"], "--resume", "auto")
    assert resume_points(resumed) == [(3, 0, TOTAL_STEPS)] and "] step " not in resumed
    assert_same_weights(reference / "model.safetensors", out / "model.safetensors")


def _rank_pids(tmp_path):
    """{rank: process groups} of the launched tools/train.py processes of this test."""
    groups = {}
    for rank, pids in launched_train_processes(tmp_path).items():
        for pid in pids:
            try:
                groups.setdefault(rank, set()).add(os.getpgid(pid))
            except ProcessLookupError:  # ended since /proc was read
                pass
    return groups


def test_sigusr1_to_every_rank_of_a_launched_job_stops_all_ranks_at_one_step_and_resumes_exactly(data, tmp_path):
    out, log = tmp_path / "run", tmp_path / "launch.log"
    launch = [
        sys.executable,
        "-m",
        "paddle.distributed.launch",
        "--nproc_per_node",
        "2",
        "--log_dir",
        str(tmp_path / "logs"),
    ]
    # 8 per rank: 4 steps per epoch of 2 x 8 images, with 1 worker per rank and 1 thread (two ranks on two
    # cores); the default log_every of the tiny run (1) lets the ranks agree at every step.
    job = [*launch, *cmd(out, data["small"], "data.batch_size=8", "data.num_workers=1", "train.threads=1")[1:]]
    proc = start(job, log)
    try:
        wait_for(
            lambda: (out / "train.log").exists() and "] step 1:" in (out / "train.log").read_text(),
            proc,
            "step 1 of the launched job",
        )
        ranks = _rank_pids(tmp_path)
        # Each rank is its own session under the launcher (it starts them with setsid): signal each
        # rank's group, its loader worker included, as Slurm signals every process of the step.
        groups = set().union(*ranks.values())
        assert sorted(ranks) == [0, 1] and len(groups) == 2, ranks
        for group in groups:
            os.killpg(group, signal.SIGUSR1)
    finally:
        text = finish(proc, log)
    train_log = (out / "train.log").read_text()
    assert proc.returncode == 128 + signal.SIGUSR1, text[-3000:]  # the launcher passes the ranks' 138 on
    state = ckpt.load_checkpoint(str(out / "checkpoints" / "last.pdparams"))
    step = state["global_step"]
    assert 0 < step < TOTAL_STEPS
    check_stopped(train_log, proc, out, signal.SIGUSR1, step)
    for rank in (0, 1):  # both ranks stopped cleanly, at the same agreed step
        worker_log = (tmp_path / "logs" / f"workerlog.{rank}").read_text()
        assert "Traceback" not in worker_log and "killed by signal" not in worker_log, worker_log[-3000:]
    metrics = read_json(out / "metrics.json")
    assert metrics["stopped_by"] == "SIGUSR1" and metrics["global_step"] == step
    resumed = subprocess.run(
        [*job, "--resume", "auto"], cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE, env=ENV
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    train_log = (out / "train.log").read_text()
    assert f"step {step}" in train_log and "weights identical on all 2 ranks" in train_log
    assert read_json(out / "metrics.json")["finished"]
    # The same job uninterrupted (gloo sums two ranks in a fixed order, so it is reproducible).
    ref = tmp_path / "reference"
    job_ref = [a.replace(str(out), str(ref)) for a in job]
    job_ref[job_ref.index("--log_dir") + 1] = str(tmp_path / "ref_logs")
    done = subprocess.run(job_ref, cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE, env=ENV)
    assert done.returncode == 0, done.stdout[-3000:]
    assert_same_weights(ref / "model.safetensors", out / "model.safetensors")


def shared_memory_of(pids):
    return [n for n in os.listdir("/dev/shm") if any(n.startswith(f"paddle_{p}_") for p in pids)]


def test_sighup_to_the_group_saves_like_sigterm_and_leaves_no_shared_memory(data, reference, tmp_path):
    """Issue 23: SIGHUP (an ssh session dropped) exited 129 with no save and left the workers' shared memory
    in /dev/shm. It now stops the run as SIGTERM does: save, hint, exit 128 + 1, exact resume."""
    out, log = tmp_path / "run", tmp_path / "first.log"
    proc = start(cmd(out, data["small"]), log)
    try:
        wait_for(lambda: "] step 1:" in log.read_text(), proc, "step 1")
        pids = [proc.pid, *children(proc.pid)]
        os.killpg(proc.pid, signal.SIGHUP)
    finally:
        text = finish(proc, log)
    step = ckpt.load_checkpoint(str(out / "checkpoints" / "last.pdparams"))["global_step"]
    check_stopped(text, proc, out, signal.SIGHUP, step)
    assert read_json(out / "metrics.json")["stopped_by"] == "SIGHUP" and not shared_memory_of(pids)
    run_to_end(out, data["small"], "--resume", "auto")
    assert_same_weights(reference / "model.safetensors", out / "model.safetensors")


def test_a_worker_killed_by_sigkill_is_one_line_saves_and_leaves_no_shared_memory(data, reference, tmp_path):
    """Issue 23: a loader worker killed with SIGKILL (the out-of-memory killer's signal) gave a raw
    SystemError traceback from Paddle's SIGCHLD handler, no save, and its blocks stayed in /dev/shm. Now
    the loader reports it at the next batch, where the trainer saves `last` and stops with one line."""
    out, log = tmp_path / "run", tmp_path / "first.log"
    proc = start(cmd(out, data["small"], "train.epochs=20"), log)
    try:
        wait_for(lambda: "] step 2:" in log.read_text(), proc, "step 2")
        workers = children(proc.pid)
        assert len(workers) == 2, workers
        os.kill(workers[0], signal.SIGKILL)
    finally:
        text = finish(proc, log)
    assert proc.returncode == 1 and "Traceback" not in text, text[-3000:]
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"DataLoader process (pid {workers[0]}) exited is killed by signal" in errors[0]
    assert "--resume auto goes on from there" in errors[0] and "shared-memory block(s)" in errors[0], errors
    step = ckpt.load_checkpoint(str(out / "checkpoints" / "last.pdparams"))["global_step"]
    assert f"at step {step}:" in errors[0] and not shared_memory_of([proc.pid, *workers])
