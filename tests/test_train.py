"""The trainer end to end through tools/train.py and tools/eval.py, as a user runs them; the non-finite-loss
policies in-process, where a NaN and a loss scaler's overflow can be injected on a CPU."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import paddle
import pytest
from float_checks import assert_within_noise
from test_reliability import nan_loss_at
from tiny_run import tiny

from senet.config import load_config
from senet.numerics import float32_noise
from senet.optim import lr_factor, scaled_lr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = tiny()  # tests/tiny_run.py: 64 synthetic 16 px images in 4 classes, 4 steps per epoch


def run_tool(tool, *args, timeout=600, check=True):
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", tool), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": ""},
    )
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def train(out, *extra, check=True):
    return run_tool(
        "train.py", "-c", "configs/demo/se_resnet20_digits.yaml", "-o", *TINY, f"output_dir={out}", *extra, check=check
    )


def read_json(path):
    with open(path) as f:
        return json.load(f)


def test_training_run_writes_everything_and_lowers_the_loss(tmp_path):
    out = tmp_path / "run"
    proc = train(
        out,
        "train.epochs=6",
        "data.name=digits",  # real images, upsampled to 16 px (TINY's size): a quarter of the demo's 32 px work
        "data.batch_size=64",
        "train.log_every=5",
        "train.max_steps=30",
        "model.num_classes=10",
        # AdamW without warmup learns quickest in 30 steps: loss 2.25 -> 0.64 here at 1 and 2 threads
        # (the demo's SGD with a warmup epoch: 2.36 -> 1.72)
        "optimizer.name=adamw",
        "optimizer.lr=0.016",
        "optimizer.weight_decay=0.05",
        "lr_scheduler.warmup_epochs=0",
    )
    # An unfinished run says where train.max_steps stopped it and what it wrote, not a finished run's summary.
    assert not [line for line in proc.stdout.splitlines() if line.startswith("best val top-1")]
    assert "stopped at train.max_steps=30 (step 30, epoch 2/6, batch 8; best val top-1 so far" in proc.stdout
    assert f"{out} holds checkpoints/last.pdparams, checkpoints/best.pdparams and metrics.json" in proc.stdout
    names = set(os.listdir(out))
    assert {"config.yaml", "train.log", "metrics.json", "vdl", "checkpoints"} <= names
    metrics = read_json(out / "metrics.json")
    assert metrics["finished"] is False and metrics["global_step"] == 30 and metrics["stopped_by"] == "max_steps"
    losses = [float(line.split("loss ")[1].split()[0]) for line in proc.stdout.splitlines() if ": loss " in line]
    assert len(losses) >= 5 and losses[-1] < 0.5 * losses[0], losses
    log = (out / "train.log").read_text()
    assert "AMP" not in log  # AMP was off: no notice
    assert "se_resnet20: 22 steps/epoch" in log


def test_full_run_checkpoints_metrics_safetensors_and_eval(tmp_path):
    out = tmp_path / "run"
    proc = train(
        out,
        "train.save_every=1",
        "train.keep_last=1",
        "train.ema.enabled=true",
        "train.ema.decay=0.5",
        "train.amp.enabled=true",
    )
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
    common = ["-c", "configs/demo/se_resnet20_digits.yaml", "-o", *TINY, f"output_dir={out}"]  # --json writes there
    for weights in (out / "checkpoints" / "last.pdparams", out / "model.safetensors"):
        result = json.loads(run_tool("eval.py", *common, f"model.weights={weights}", "--json").stdout)
        assert result["images"] == 24
        # The same eval code on the same weights and images, on this machine at the same thread count:
        # the same numbers, bit for bit (senet/numerics.py, rule 1).
        assert (result["top1"], result["loss"]) == (final["top1"], final["loss"])
    ema = json.loads(
        run_tool("eval.py", *common, f"model.weights={out / 'checkpoints' / 'last.pdparams'}", "--ema", "--json").stdout
    )
    assert ema["loss"] == metrics["history"][-1]["ema_eval_loss"]


@pytest.mark.parametrize("arch, spatial", [("se_resnet20", False), ("cbam_resnet20", True)])
def test_visualdl_events_hold_the_expected_tags(tmp_path, arch, spatial):
    out = tmp_path / "run"
    train(out, "train.epochs=1", "train.log_se_every=2", f"model.arch={arch}")
    from visualdl import LogReader

    files = [f for f in os.listdir(out / "vdl") if f.startswith("vdlrecords")]
    assert files
    reader = LogReader(file_path=str(out / "vdl" / files[0]))
    tags = set(reader.get_tags()["scalar"])
    for tag in (
        "train/loss",
        "train/lr",
        "train/images_per_s",
        "train/top1",
        "eval/top1",
        "eval/top5",
        "eval/loss",
        "train/epoch_time_s",
    ):
        assert tag in tags, (tag, tags)
    steps = [r.id for r in reader.get_data("scalar", "train/loss")]
    assert steps == [2, 4]
    # train.log_se_every: one gate histogram per attention block (9 in a ResNet-20) every 2 steps, and
    # for CBAM one more of its spatial gates
    histograms = set(reader.get_tags()["histogram"])
    assert len(histograms) == (18 if spatial else 9) and {"se/layer1.0.se", "se/layer3.2.se"} <= histograms
    assert ("se/layer3.2.se.spatial" in histograms) == spatial
    assert [r.id for r in reader.get_data("histogram", "se/layer2.1.se")] == [2, 4]


def test_kill_after_first_epoch_and_resume_is_bitwise_identical(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train(straight)
    cmd = [
        sys.executable,
        os.path.join(ROOT, "tools", "train.py"),
        "-c",
        "configs/demo/se_resnet20_digits.yaml",
        "-o",
        *TINY,
        f"output_dir={killed}",
    ]
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
    last = out / "checkpoints" / "last.pdparams"
    # --resume auto considers only checkpoints of this run's network (issue 23): here there are none, and
    # a fresh run would overwrite the other network's, so it is refused, naming them.
    proc = train(out, "model.arch=resnet20", "--resume", "auto", check=False)
    assert proc.returncode == 1 and "holds checkpoints of another network (best.pdparams (se_resnet20)" in proc.stderr
    assert "last.pdparams (se_resnet20)) and none of model.arch=resnet20" in proc.stderr
    proc = train(out, "model.arch=resnet20", "--resume", str(last), check=False)
    assert proc.returncode == 1  # another model is another experiment (issue 16)
    assert "with a changed experiment: model.arch 'se_resnet20' -> 'resnet20'" in proc.stderr
    proc = train(out, "model.arch=resnet20", "--resume", str(last), "--allow-config-change", check=False)
    assert proc.returncode == 1
    assert "does not fit the model for model.arch=resnet20" in proc.stderr and "unexpected" in proc.stderr
    assert "layer1.0.se.fc1.weight" in proc.stderr


def test_non_finite_loss_stops_with_step_and_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = train(out, "optimizer.lr=1.0e+12", "lr_scheduler.name=step", "train.log_every=1", check=False)
    assert proc.returncode == 1
    assert "non-finite loss at step" in proc.stderr and "train.nan_policy=skip" in proc.stderr


def test_missing_dataset_and_unwritable_output_dir_are_clear(tmp_path):
    proc = run_tool(
        "train.py",
        "-c",
        "configs/se_resnet50.yaml",
        "-o",
        f"data.root={tmp_path / 'nowhere'}",
        f"output_dir={tmp_path / 'out'}",
        check=False,
    )
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
    proc = run_tool(
        "train.py",
        "-c",
        config,
        "-o",
        "train.max_steps=3",
        "train.epochs=1",
        "data.batch_size=16",
        f"output_dir={tmp_path}",
    )
    assert "stopped at train.max_steps=3 (step 3, epoch 1/1, batch 3)" in proc.stdout
    assert read_json(tmp_path / "metrics.json")["global_step"] == 3


def test_max_steps_on_an_epoch_boundary_trains_no_extra_step(tmp_path):
    out = tmp_path / "run"
    proc = train(out, "train.epochs=3", "train.max_steps=4", "train.log_every=1")  # 4 steps per epoch
    logged = [int(line.split("step ")[1].split(":")[0]) for line in proc.stdout.splitlines() if "] step " in line]
    assert logged == [1, 2, 3, 4]
    assert "stopped at train.max_steps=4 (step 4, after epoch 1/3;" in proc.stdout
    metrics = read_json(out / "metrics.json")
    assert (metrics["global_step"], metrics["epochs_done"], metrics["stopped_by"]) == (4, 1, "max_steps")
    assert len(metrics["history"]) == 1 and "eval_top1" in metrics["history"][0]  # epoch 1 was evaluated
    from senet.checkpoint import load_checkpoint

    state = load_checkpoint(str(out / "checkpoints" / "last.pdparams"))
    assert (state["global_step"], state["epoch"], state["batch_in_epoch"]) == (4, 1, 0)
    assert not (out / "model.safetensors").exists()
    again = train(out, "train.epochs=3", "train.max_steps=4", "train.log_every=1", "--resume", "auto")
    assert "] step " not in again.stdout and read_json(out / "metrics.json")["global_step"] == 4


def test_lr_schedules_are_per_iteration_and_scaled_per_256_images():
    cfg = load_config(
        None,
        [
            "data.batch_size=64",
            "optimizer.lr=0.1",
            "lr_scheduler.name=step",
            "lr_scheduler.step_size=30",
            "train.epochs=100",
        ],
    )
    assert scaled_lr(cfg, world_size=1) == pytest.approx(0.025) and scaled_lr(cfg, world_size=4) == pytest.approx(0.1)
    assert lr_factor(cfg, 29 * 100 + 99, 100) == 1.0 and lr_factor(cfg, 30 * 100, 100) == pytest.approx(0.1)
    cfg["lr_scheduler"].update(name="multistep", milestones=[2, 5])
    assert [round(lr_factor(cfg, e * 10, 10), 6) for e in (0, 2, 4, 5)] == [1.0, 0.1, 0.1, 0.01]
    cfg["lr_scheduler"].update(name="cosine", warmup_epochs=1.0)
    cfg["train"]["epochs"] = 3
    assert lr_factor(cfg, 0, 10) == pytest.approx(0.1) and lr_factor(cfg, 9, 10) == pytest.approx(1.0)
    assert lr_factor(cfg, 20, 10) == pytest.approx(0.5) and lr_factor(cfg, 29, 10) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 1.9 / 2))
    )


# ---------------------------------------------------------------- non-finite losses and the loss scaler, in-process


def tiny_cfg(out, *extra):
    return load_config(
        os.path.join(ROOT, "configs", "demo", "se_resnet20_digits.yaml"),
        [*TINY, "train.log_every=1", f"output_dir={out}", *extra],
    )


def fit_here(cfg, batch_transform=None):
    """fit() as in a fresh process: Paddle's parameter-name counter restarts (checkpoints are keyed by it)."""
    from senet.train import fit

    with paddle.utils.unique_name.guard():
        return fit(cfg, batch_transform=batch_transform)


class FakeScaler:
    """What train_one_epoch uses of paddle.amp.GradScaler, for a CPU, where the real one disables itself.

    Like dynamic loss scaling, it skips the optimizer step when a gradient is not finite, and also at
    the steps in `overflow_at`, standing in for gradients that overflow fp16 (which fp32 never does).
    """

    def __init__(self, model, overflow_at=()):
        self.model, self.overflow_at, self.steps = model, set(overflow_at), 0
        self._scale = paddle.to_tensor(1.0)  # 1: the gradients need no unscaling
        self._cache_found_inf = None
        self.updates_skipped = []

    def scale(self, loss):
        return loss * self._scale

    def step(self, optimizer):
        self.steps += 1
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        self._cache_found_inf = self.steps in self.overflow_at or not all(bool(paddle.isfinite(g).all()) for g in grads)
        if self._cache_found_inf:
            self.updates_skipped.append(self.steps)
        else:
            optimizer.step()

    def update(self):
        pass

    def state_dict(self):
        return {"scale": float(self._scale)}

    def load_state_dict(self, state):
        self._scale = paddle.to_tensor(state["scale"])


def with_fake_scaler(monkeypatch, overflow_at=()):
    """Give the trainer a FakeScaler, as setup() gives a GradScaler to fp16 AMP on a GPU."""
    from senet import train as train_mod

    real_setup, made = train_mod.setup, []

    def setup(cfg):
        state, train_loader, val_loader, env = real_setup(cfg)
        state.scaler = FakeScaler(state.model, overflow_at)
        made.append(state.scaler)
        return state, train_loader, val_loader, env

    monkeypatch.setattr(train_mod, "setup", setup)
    return made


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_nan_policy_follows_the_resolved_amp_state_on_a_cpu(tmp_path, monkeypatch, policy):
    """ImageNet and CIFAR configs enable AMP; on a CPU that is fp32 without a scaler, so nan_policy applies."""
    from senet.train import TrainingError

    nan_loss_at(monkeypatch, {2})
    cfg = tiny_cfg(tmp_path / "run", "train.amp.enabled=true", f"train.nan_policy={policy}", "train.nan_skip_limit=1")
    if policy == "stop":
        with pytest.raises(TrainingError, match=r"^non-finite loss at step 2; training stopped\. .*nan_policy=skip"):
            fit_here(cfg)
        return
    metrics = fit_here(cfg)
    assert metrics["finished"] and metrics["skipped_steps"] == 1 and metrics["global_step"] == 8
    from safetensors.numpy import load_file

    assert all(np.isfinite(v).all() for v in load_file(str(tmp_path / "run" / "model.safetensors")).values())


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_loss_scale_overflows_are_skipped_up_to_the_limit_in_a_row(tmp_path, monkeypatch, policy):
    from senet.train import TrainingError

    made = with_fake_scaler(monkeypatch, overflow_at={2, 3, 5, 6})  # never more than 2 in a row
    metrics = fit_here(tiny_cfg(tmp_path / "a", f"train.nan_policy={policy}", "train.nan_skip_limit=2"))
    assert made[0].updates_skipped == [2, 3, 5, 6]
    assert metrics["finished"] and metrics["skipped_steps"] == 4 and metrics["global_step"] == 8
    made = with_fake_scaler(monkeypatch, overflow_at={2, 3, 4})
    with pytest.raises(TrainingError) as e:
        fit_here(tiny_cfg(tmp_path / "b", f"train.nan_policy={policy}", "train.nan_skip_limit=2"))
    assert str(e.value).startswith(
        "more than 2 steps in a row skipped for gradient overflow (last at step 4, "
        "loss scale now 1); No checkpoint was saved before this step."
    )
    assert made[0].steps == 4


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_a_loss_non_finite_before_scaling_stops_the_run_under_a_scaler(tmp_path, monkeypatch, policy):
    """The scaler would skip that step as an overflow; but lowering the loss scale cannot cure a forward pass
    that is already non-finite, so it stops the run with the usual message, whatever nan_policy says."""
    from senet.train import TrainingError

    with_fake_scaler(monkeypatch)
    nan_loss_at(monkeypatch, {6})
    out = tmp_path / "run"
    with pytest.raises(TrainingError) as e:
        fit_here(tiny_cfg(out, f"train.nan_policy={policy}", "train.nan_skip_limit=10"))
    last = out / "checkpoints" / "last.pdparams"
    assert str(e.value).startswith(f"non-finite loss at step 6; training stopped. Last good checkpoint: {last}.")
    assert "train.amp.dtype=bfloat16" in str(e.value) and "nan_policy=skip" not in str(e.value)
    from senet.checkpoint import load_checkpoint

    assert load_checkpoint(str(last))["global_step"] == 4  # the end of epoch 1; nothing was saved after step 6


def test_nan_policy_skip_in_a_two_rank_job_skips_on_every_rank(tmp_path):
    """A NaN on one rank only: both ranks must skip that step, or the other one would wait forever in the
    gradient all-reduce (or pair it with the next step's) and the ranks' weights would drift apart."""
    out = tmp_path / "run"
    out.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "paddle.distributed.launch",
        "--nproc_per_node",
        "2",
        "--log_dir",
        str(tmp_path / "logs"),
        "tests/dist_nan_worker.py",
        str(out),
        *TINY,
        "train.epochs=1",
        "data.batch_size=8",
        "train.nan_policy=skip",
        "model.sync_bn=true",
        f"output_dir={out}",
    ]  # 64 images / (8 x 2): 4 steps
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "NAN_STEPS": "2"}
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rank0, rank1 = np.load(out / "rank0.npz"), np.load(out / "rank1.npz")
    for k in rank0:
        assert np.isfinite(rank0[k]).all() and np.array_equal(rank0[k], rank1[k]), k


# ---------------------------------------------------------------- the batch-transform slot and soft targets


def test_a_batch_transform_decides_what_is_trained(tmp_path):
    """fit(batch_transform=...) runs on every training batch before the step, and its targets are what is
    trained: one that makes every image a (soft, one-hot) class 2 gives a model that answers 2 to everything."""
    from senet.data import build_loader

    calls = []

    def everything_is_class_2(images, labels):
        calls.append((images.shape, images.dtype, labels.shape))
        return images, paddle.nn.functional.one_hot(paddle.full_like(labels, 2), 4)

    cfg = tiny_cfg(tmp_path / "run")
    metrics = fit_here(cfg, batch_transform=everything_is_class_2)
    assert len(calls) == metrics["global_step"] == 8
    assert all(call == ([16, 16, 16, 3], paddle.uint8, [16]) for call in calls)  # the loader's batch, not eval's
    val_labels = np.concatenate([labels.numpy() for _, labels in build_loader(cfg, "val")])
    assert 0 < np.mean(val_labels == 2) < 1
    assert metrics["final"]["top1"] == pytest.approx(100 * np.mean(val_labels == 2))  # eval: against the real labels
    assert metrics["history"][-1]["train_top1"] == 100  # train top-1: against the targets trained on


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_soft_targets_give_the_loss_of_the_labels_they_encode(smoothing):
    from senet.step import StepParts, forward_loss

    paddle.seed(0)
    model = paddle.nn.Sequential(paddle.nn.Conv2D(3, 5, 3), paddle.nn.AdaptiveAvgPool2D(1), paddle.nn.Flatten())
    parts = StepParts(model, None, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], label_smoothing=smoothing)
    images = paddle.randint(0, 256, [6, 8, 8, 3]).astype("uint8")
    a, b = paddle.to_tensor([0, 4, 2, 2, 1, 3]), paddle.to_tensor([1, 1, 0, 3, 4, 2])
    one_hot = paddle.nn.functional.one_hot
    loss_a, loss_b = (float(forward_loss(parts, images, labels)[1]) for labels in (a, b))
    # Hard and soft labels take two code paths: equal within the float32 noise of the loss given the
    # logits (senet/numerics.py, rule 2), measured by the loss by hand in float32 and float64.
    logits = forward_loss(parts, images, a)[0].numpy()
    targets = 0.3 * np.eye(5)[a.numpy()] + 0.7 * np.eye(5)[b.numpy()]
    targets = (1 - smoothing) * targets + smoothing / 5

    def loss_by_hand(dtype):
        z = logits.astype(dtype)
        log_p = z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
        return np.array(-(targets.astype(dtype) * log_p).sum(1).mean())

    noise = float32_noise(loss_by_hand(np.float32), loss_by_hand(np.float64))
    assert_within_noise(float(forward_loss(parts, images, one_hot(a, 5))[1]), loss_a, noise, "one-hot")
    # A mixup target (0.3 a + 0.7 b) gives the mix of the two losses: cross-entropy is linear in the target.
    mixed = float(forward_loss(parts, images, 0.3 * one_hot(a, 5) + 0.7 * one_hot(b, 5))[1])
    assert abs(loss_a - loss_b) > 0.01
    assert_within_noise(mixed, 0.3 * loss_a + 0.7 * loss_b, noise, "mixed")
    assert_within_noise(mixed, loss_by_hand(np.float64), noise, "mixed against the loss by hand")
