"""Data-parallel training and evaluation with 2 real processes over gloo, via paddle.distributed.launch."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "model.num_classes=4",
    "data.name=synthetic",
    "data.image_size=16",
    "data.eval_crop=16",
    "data.synthetic_train_size=48",
    "data.synthetic_val_size=15",
    "data.num_workers=0",
    "train.log_every=1",
    "train.amp.enabled=false",
]
LAUNCH = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2"]


def run(cmd, timeout=300, check=True):
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_two_ranks_stay_identical_and_match_one_process_with_double_batch(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir(), one.mkdir()
    common = [*TINY, "train.epochs=2", "model.sync_bn=true"]  # sync BN: the two runs see the same BN statistics
    run(
        [
            *LAUNCH,
            "--log_dir",
            str(tmp_path / "logs"),
            "tests/dist_worker.py",
            str(two),
            *common,
            "data.batch_size=8",
            f"output_dir={two}",
        ]
    )
    run([sys.executable, "tests/dist_worker.py", str(one), *common, "data.batch_size=16", f"output_dir={one}"])
    rank0, rank1, single = (np.load(two / "rank0.npz"), np.load(two / "rank1.npz"), np.load(one / "rank0.npz"))
    assert set(rank0) == set(rank1) == set(single)
    # Two ranks average two half-batch gradients where one process sums one batch: the same math, whose
    # float32 rounding 6 SGD steps carry on (senet/numerics.py, rule 5). Measured on an Intel Xeon
    # (docs/reliability.md): up to 5.3e-6 of a tensor's largest value between the two runs, and 1.5e-6
    # between the one-process run on MKL's AVX-512 and on its AVX2 kernels. The bound is 20x the larger.
    for k in rank0:
        assert np.array_equal(rank0[k], rank1[k]), k  # DataParallel keeps the ranks bitwise identical
        assert np.abs(rank0[k] - single[k]).max() <= 1e-4 * np.abs(single[k]).max(), k
    moved = [k for k in single if "conv" in k and not np.allclose(single[k], 0)]
    assert moved  # sanity: there are real weights being compared


def test_launched_training_logs_on_rank0_and_checks_ranks_are_in_sync(tmp_path):
    out = tmp_path / "run"
    proc = run(
        [
            *LAUNCH,
            "--log_dir",
            str(tmp_path / "logs"),
            "tools/train.py",
            "-c",
            "configs/demo/se_resnet20_digits.yaml",
            "-o",
            *TINY,
            "train.epochs=1",
            "data.batch_size=8",
            f"output_dir={out}",
        ]
    )
    log = (out / "train.log").read_text()
    assert "for a global batch of 16" in log  # per-device batch x 2 ranks; lr scaled for it
    assert "weights identical on all 2 ranks" in log
    assert log.count("epoch 1/1") == 1  # only rank 0 writes the log
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["finished"] and metrics["global_step"] == 3  # 48 images / (8 x 2) per step
    assert metrics["history"][0]["eval_images"] == 15  # every val image once, across both ranks
    assert sorted(os.listdir(out / "checkpoints")) == ["best.pdparams", "last.pdparams"]
    assert "best val top-1" in proc.stdout + open(tmp_path / "logs" / "workerlog.0").read()


def test_distributed_eval_equals_single_process_on_odd_val_set(tmp_path):
    out = tmp_path / "run"
    run(
        [
            sys.executable,
            "tools/train.py",
            "-c",
            "configs/demo/se_resnet20_digits.yaml",
            "-o",
            *TINY,
            "train.epochs=1",
            "data.batch_size=8",
            f"output_dir={out}",
        ]
    )
    args = [
        "tools/eval.py",
        "-c",
        "configs/demo/se_resnet20_digits.yaml",
        "-o",
        *TINY,
        "data.batch_size=4",
        f"model.weights={out / 'model.safetensors'}",
        f"output_dir={out}",
        "--json",
    ]
    single = json.loads(run([sys.executable, *args]).stdout)
    launched = run([*LAUNCH, "--log_dir", str(tmp_path / "logs"), *args])
    line = [ln for ln in (tmp_path / "logs" / "workerlog.0").read_text().splitlines() if ln.startswith("{")][-1]
    dist = json.loads(line)
    assert launched.returncode == 0
    assert dist["images"] == single["images"] == 15
    assert dist["top1"] == single["top1"] and dist["top5"] == single["top5"]
    assert abs(dist["loss"] - single["loss"]) < 1e-5


def launched_train_processes(tmp_path) -> dict[int, list[int]]:
    """{rank: pids} of the tools/train.py processes paddle.distributed.launch started for this test
    (its command line names tmp_path); a rank's forked loader workers count under the rank."""
    found: dict[int, list[int]] = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
                cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
            except OSError:
                continue
            if b"tools/train.py" in cmdline and str(tmp_path).encode() in cmdline:
                for rank in (0, 1):
                    if f"PADDLE_TRAINER_ID={rank}".encode() in env:
                        found.setdefault(rank, []).append(int(pid))
    return found


def test_killing_one_rank_ends_the_whole_job_with_a_clear_message(tmp_path):
    cmd = [
        *LAUNCH,
        "--log_dir",
        str(tmp_path / "logs"),
        "tools/train.py",
        "-c",
        "configs/demo/se_resnet20_digits.yaml",
        "-o",
        *TINY,
        "data.synthetic_train_size=100000",
        "data.batch_size=8",
        "train.epochs=5",
        f"output_dir={tmp_path / 'run'}",
    ]
    launcher = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim, deadline = None, time.time() + 120
    while victim is None and time.time() < deadline:
        time.sleep(0.5)
        log1 = tmp_path / "logs" / "workerlog.1"
        if (
            log1.exists() and "step " in (tmp_path / "run" / "train.log").read_text(errors="ignore")
            if (tmp_path / "run" / "train.log").exists()
            else False
        ):
            victim = next(iter(launched_train_processes(tmp_path).get(1, [])), None)
    assert victim, "rank 1 never started training"
    os.kill(victim, signal.SIGKILL)
    out, _ = launcher.communicate(timeout=120)  # must not hang
    assert launcher.returncode != 0
    # The launcher stops the other rank and names the failure. Which it sees first is a race: rank 1's
    # own death (SIGKILL, -9), or rank 0's gloo error about losing its peer (a timeout naming
    # pair_rank 1, the connection reset by that peer, or a broken pipe writing to it).
    assert "Container failed" in out, out[-3000:]
    assert (
        ("rank 1 status failed" in out and "code -9" in out)
        or "pair_rank = 1" in out
        or "Connection reset by peer" in out
        or ("gloo::IoException" in out and "Broken pipe" in out)
    ), out[-3000:]
