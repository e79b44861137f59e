"""The trainer end to end through tools/train.py and tools/eval.py, as a user runs them."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from senet.config import load_config
from senet.train import lr_factor, scaled_lr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A tiny, quick run: 64 synthetic 16 px images in 4 classes, 4 steps per epoch.
TINY = ["model.arch=se_resnet20", "model.num_classes=4", "model.se.reduction=4", "data.name=synthetic",
        "data.image_size=16", "data.eval_crop=16", "data.synthetic_train_size=64", "data.synthetic_val_size=24",
        "data.batch_size=16", "data.num_workers=0", "train.log_every=2", "train.epochs=2",
        "lr_scheduler.name=cosine", "optimizer.lr=0.8", "train.amp.enabled=false"]


def run_tool(tool, *args, timeout=600, check=True):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", tool), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": ""})
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def train(out, *extra, check=True):
    return run_tool("train.py", "-c", "configs/demo/se_resnet20_digits.yaml", "-o", *TINY, f"output_dir={out}",
                    *extra, check=check)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def test_training_run_writes_everything_and_lowers_the_loss(tmp_path):
    out = tmp_path / "run"
    proc = train(out, "train.epochs=6", "data.name=digits", "data.image_size=32", "data.eval_crop=32",
                 "data.batch_size=64", "train.log_every=5", "train.max_steps=30", "model.num_classes=10")
    assert "best val top-1" not in proc.stderr
    names = set(os.listdir(out))
    assert {"config.yaml", "train.log", "metrics.json", "vdl", "checkpoints"} <= names
    metrics = read_json(out / "metrics.json")
    assert metrics["finished"] is False and metrics["global_step"] == 30  # stopped by train.max_steps
    losses = [float(line.split("loss ")[1].split()[0]) for line in proc.stdout.splitlines() if ": loss " in line]
    assert len(losses) >= 5 and losses[-1] < 0.8 * losses[0], losses
    log = (out / "train.log").read_text()
    assert "AMP" not in log  # AMP was off: no notice
    assert "se_resnet20: 22 steps/epoch" in log


def test_full_run_checkpoints_metrics_safetensors_and_eval(tmp_path):
    out = tmp_path / "run"
    proc = train(out, "train.save_every=1", "train.keep_last=1", "train.ema.enabled=true", "train.ema.decay=0.5",
                 "train.amp.enabled=true")
    assert "AMP requested but no GPU" in proc.stdout  # the one-line CPU notice
    ckpts = sorted(os.listdir(out / "checkpoints"))
    assert ckpts == ["best.pdparams", "epoch_2.pdparams", "last.pdparams"]  # epoch_1 pruned by keep_last=1
    assert not [n for n in os.listdir(out / "checkpoints") if ".tmp" in n]
    from senet.checkpoint import load_checkpoint

    state = load_checkpoint(str(out / "checkpoints" / "last.pdparams"))
    for key in ("model", "optimizer", "lr_scheduler", "ema", "epoch", "global_step", "best_top1", "rng", "config"):
        assert key in state, key
    assert state["epoch"] == 2 and state["global_step"] == 8 and state["batch_in_epoch"] == 0
    assert set(state["rng"]) == {"python", "numpy", "paddle"}
    assert state["config"]["model"]["arch"] == "se_resnet20"
    metrics = read_json(out / "metrics.json")
    assert metrics["finished"] and metrics["epochs_done"] == 2 and len(metrics["history"]) == 2
    assert "ema_eval_top1" in metrics["history"][-1]
    final = metrics["final"]
    # tools/eval.py on the checkpoint and on the safetensors export gives the trainer's own final numbers.
    common = ["-c", "configs/demo/se_resnet20_digits.yaml", "-o", *TINY]
    for weights in (out / "checkpoints" / "last.pdparams", out / "model.safetensors"):
        result = json.loads(run_tool("eval.py", *common, f"model.weights={weights}", "--json").stdout)
        assert result["images"] == 24
        assert result["top1"] == pytest.approx(final["top1"]) and result["loss"] == pytest.approx(final["loss"],
                                                                                                rel=1e-5)
    ema = json.loads(run_tool("eval.py", *common, f"model.weights={out / 'checkpoints' / 'last.pdparams'}", "--ema",
                              "--json").stdout)
    assert ema["loss"] == pytest.approx(metrics["history"][-1]["ema_eval_loss"], rel=1e-5)


def test_visualdl_events_hold_the_expected_tags(tmp_path):
    out = tmp_path / "run"
    train(out, "train.epochs=1", "train.log_se_every=2")
    from visualdl import LogReader

    files = [f for f in os.listdir(out / "vdl") if f.startswith("vdlrecords")]
    assert files
    reader = LogReader(file_path=str(out / "vdl" / files[0]))
    tags = set(reader.get_tags()["scalar"])
    for tag in ("train/loss", "train/lr", "train/images_per_s", "train/top1", "eval/top1", "eval/top5", "eval/loss",
                "train/epoch_time_s"):
        assert tag in tags, (tag, tags)
    steps = [r.id for r in reader.get_data("scalar", "train/loss")]
    assert steps == [2, 4]
    # train.log_se_every: one gate histogram per SE block (9 in SE-ResNet-20) every 2 steps
    histograms = set(reader.get_tags()["histogram"])
    assert len(histograms) == 9 and "se/layer1.0.se" in histograms and "se/layer3.2.se" in histograms
    assert [r.id for r in reader.get_data("histogram", "se/layer2.1.se")] == [2, 4]


def test_kill_after_first_epoch_and_resume_is_bitwise_identical(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train(straight)
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train.py"), "-c", "configs/demo/se_resnet20_digits.yaml",
           "-o", *TINY, f"output_dir={killed}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    for line in proc.stdout:  # kill as soon as epoch 1 is logged (its checkpoint is written right after)
        if line.split("] ", 1)[-1].startswith("epoch 1/2") or time.time() > deadline:
            break
    last = killed / "checkpoints" / "last.pdparams"
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "model.safetensors").exists()  # really interrupted before the end
    resumed = train(killed, "--resume", "auto")
    assert "resumed from" in resumed.stdout
    from safetensors.numpy import load_file

    a, b = load_file(str(straight / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    ma, mb = read_json(straight / "metrics.json"), read_json(killed / "metrics.json")
    assert ma["best"] == mb["best"] and ma["global_step"] == mb["global_step"] == 8


def test_resume_into_another_model_names_the_mismatch(tmp_path):
    out = tmp_path / "run"
    train(out, "train.epochs=1")
    proc = train(out, "model.arch=resnet20", "--resume", "auto", check=False)
    assert proc.returncode == 1
    assert "does not fit the model for model.arch=resnet20" in proc.stderr and "unexpected" in proc.stderr
    assert "layer1.0.se.fc1.weight" in proc.stderr


def test_non_finite_loss_stops_with_step_and_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = train(out, "optimizer.lr=1.0e+12", "lr_scheduler.name=step", "train.log_every=1", check=False)
    assert proc.returncode == 1
    assert "non-finite loss at step" in proc.stderr and "train.nan_policy=skip" in proc.stderr


def test_missing_dataset_and_unwritable_output_dir_are_clear(tmp_path):
    proc = run_tool("train.py", "-c", "configs/se_resnet50.yaml", "-o", f"data.root={tmp_path / 'nowhere'}",
                    f"output_dir={tmp_path / 'out'}", check=False)
    assert proc.returncode == 1
    assert str(tmp_path / "nowhere") in proc.stderr and "data.name=synthetic" in proc.stderr
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = train(blocker / "run", check=False)
    assert proc.returncode == 1 and "is not writable" in proc.stderr and "output_dir=PATH" in proc.stderr


def test_config_errors_from_the_command_line(tmp_path):
    proc = train(tmp_path / "run", "model.se.reducton=8", check=False)
    assert proc.returncode == 2 and "Did you mean 'model.se.reduction'" in proc.stderr


@pytest.mark.parametrize("config", ["configs/demo/resnet20_digits.yaml", "configs/demo/se_resnet20_digits.yaml"])
def test_demo_configs_run_when_shortened(tmp_path, config):
    proc = run_tool("train.py", "-c", config, "-o", "train.max_steps=3", "train.epochs=1", "data.batch_size=16",
                    f"output_dir={tmp_path}")
    assert "step 3" in proc.stdout or "resumed" not in proc.stdout
    assert read_json(tmp_path / "metrics.json")["global_step"] == 3


def test_lr_schedules_are_per_iteration_and_scaled_per_256_images():
    cfg = load_config(None, ["data.batch_size=64", "optimizer.lr=0.1", "lr_scheduler.name=step",
                             "lr_scheduler.step_size=30", "train.epochs=100"])
    assert scaled_lr(cfg, world_size=1) == pytest.approx(0.025) and scaled_lr(cfg, world_size=4) == pytest.approx(0.1)
    assert lr_factor(cfg, 29 * 100 + 99, 100) == 1.0 and lr_factor(cfg, 30 * 100, 100) == pytest.approx(0.1)
    cfg["lr_scheduler"].update(name="multistep", milestones=[2, 5])
    assert [round(lr_factor(cfg, e * 10, 10), 6) for e in (0, 2, 4, 5)] == [1.0, 0.1, 0.1, 0.01]
    cfg["lr_scheduler"].update(name="cosine", warmup_epochs=1.0)
    cfg["train"]["epochs"] = 3
    assert lr_factor(cfg, 0, 10) == pytest.approx(0.1) and lr_factor(cfg, 9, 10) == pytest.approx(1.0)
    assert lr_factor(cfg, 20, 10) == pytest.approx(0.5) and lr_factor(cfg, 29, 10) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 1.9 / 2)))
