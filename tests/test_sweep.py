"""The ablation configs, and sweeps end to end through tools/sweep.py: runs, resume, the table."""

import csv
import glob
import io
import json
import os
import signal
import subprocess
import sys
import time

import paddle
import psutil
import pytest
import yaml

from senet.compare import PAPER_TABLE2, paper_reference
from senet.config import ConfigError, dump_config, load_config
from senet.resnet import build_model
from senet.sweep import Run, plan, status, sweep_rows, train_command, write_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABLATIONS = sorted(glob.glob(os.path.join(ROOT, "configs", "ablation", "*.yaml")))
BASES = {"se_resnet50": "configs/se_resnet50.yaml", "se_resnet110": "configs/cifar10/se_resnet110.yaml"}
# 16 px synthetic images in 4 classes, one epoch of two steps: a run takes seconds.
TINY = [
    "model.num_classes=4",
    "model.se.reduction=4",
    "data.name=synthetic",
    "data.image_size=16",
    "data.eval_crop=16",
    "data.synthetic_train_size=32",
    "data.synthetic_val_size=16",
    "data.batch_size=16",
    "data.num_workers=0",
    "train.epochs=1",
    "train.amp.enabled=false",
]
DEMOS = ["configs/demo/resnet20_digits.yaml", "configs/demo/se_resnet20_digits.yaml"]
ALL_DEMOS = DEMOS + ["configs/demo/eca_resnet20_digits.yaml", "configs/demo/cbam_resnet20_digits.yaml"]


def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(flat(v, prefix + k + ".") if isinstance(v, dict) else {prefix + k: v})
    return out


@pytest.mark.filterwarnings("ignore:When training, we now always track")
def test_every_ablation_differs_from_its_base_in_one_setting_and_builds():
    assert len(ABLATIONS) == 21 + 19  # SE-ResNet-50: 3+3+5+5+5; SE-ResNet-110: no stage 4, no r = 32
    params = {}
    for path in ABLATIONS:
        se, net, setting = os.path.basename(path).split("_")[:3]  # se_resnet50_placement_after_3x3.yaml
        base = BASES[f"{se}_{net}"]
        with open(path) as f:
            raw = yaml.safe_load(f)
        assert os.path.normpath(os.path.join(os.path.dirname(path), raw.pop("_base_"))) == os.path.join(ROOT, base)
        assert list(flat(raw)) == [f"model.se.{setting}"], path  # the file sets exactly one thing
        cfg, ref = load_config(path), load_config(os.path.join(ROOT, base))
        changed = {k for k, v in flat(cfg).items() if ref_value(ref, k) != v} - {"name", "output_dir"}
        assert changed <= {f"model.se.{setting}"}, (path, changed)
        # Every check of a config happens while building; LazyGuard skips drawing the random weights
        # (~2 s per SE-ResNet-50 on a loaded CPU). Every placement, squeeze and gate runs forward on
        # every block type in test_models.py; here the gates run through the 110-layer net.
        if setting != "gate" or net == "resnet50":
            with paddle.LazyGuard():
                model = build_model(cfg)
            params[cfg["name"]] = sum(p.size for p in model.parameters() if not p.stop_gradient)
            continue
        model = build_model(cfg)  # train mode: at init, eval-mode BN does not normalise and ReLU gates overflow
        with paddle.no_grad():
            out = model(paddle.rand([2, 3, 32, 32]))
        assert out.shape == [2, cfg["model"]["num_classes"]] and bool(paddle.isfinite(out).all()), path
    # r = 16 is the paper's SE-ResNet-50 (Table 2: 28.1M); SE in stage 1 only adds almost nothing to ResNet-50's 25.6M.
    assert params["se_resnet50_reduction_16"] == params["se_resnet50_stages_all"] == 28_088_024
    assert params["se_resnet50_reduction_02"] > 45_000_000 and 25_557_032 < params["se_resnet50_stages_1"] < 25_700_000
    assert params["se_resnet50_squeeze_none"] == params["se_resnet50_gate_relu"] == 28_088_024


def ref_value(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def test_paper_figures_only_beside_the_papers_setup():
    se50 = load_config(os.path.join(ROOT, "configs/se_resnet50.yaml"))
    assert paper_reference(se50) == PAPER_TABLE2["se_resnet50"]
    assert (
        paper_reference(load_config(os.path.join(ROOT, "configs/ablation/se_resnet50_stages_all.yaml")))
        == PAPER_TABLE2["se_resnet50"]
    )
    for path, extra in (
        ("configs/ablation/se_resnet50_gate_tanh.yaml", []),
        ("configs/ablation/se_resnet50_reduction_08.yaml", []),
        ("configs/resnet50.yaml", ["model.stride_in_1x1=false"]),
        ("configs/se_resnet50.yaml", ["model.num_classes=10"]),
    ):
        assert paper_reference(load_config(os.path.join(ROOT, path), extra)) is None, path


def test_plan_status_and_commands(tmp_path):
    runs = plan(DEMOS, [0, 1], str(tmp_path), TINY)
    assert [(r.name, r.seed) for r in runs] == [
        ("resnet20_digits", 0),
        ("resnet20_digits", 1),
        ("se_resnet20_digits", 0),
        ("se_resnet20_digits", 1),
    ]
    assert runs[3].output_dir == str(tmp_path / "se_resnet20_digits" / "seed1")
    with pytest.raises(ConfigError, match="sets train.seed"):
        plan(DEMOS, [0], str(tmp_path), ["train.seed=3"])
    with pytest.raises(ConfigError, match="both have the name 'x'"):
        plan([write_config(tmp_path, "x.yaml"), write_config(tmp_path / "sub", "x.yaml")], [0], str(tmp_path), [])
    run = Run("c.yaml", "c", 2, str(tmp_path / "c" / "seed2"))
    assert status(run.output_dir) == "new"
    os.makedirs(run.output_dir)
    (tmp_path / "c" / "seed2" / "metrics.json").write_text(json.dumps({"finished": False}))
    assert status(run.output_dir) == "unfinished"
    (tmp_path / "c" / "seed2" / "metrics.json").write_text(json.dumps({"finished": True}))
    assert status(run.output_dir) == "finished"
    cmd = train_command(run, ["data.root=/d"], resume=True, nproc=4, devices="0,1,2,3", python="py")
    assert cmd[:3] == ["py", "-m", "paddle.distributed.launch"] and cmd[cmd.index("--nproc_per_node") + 1] == "4"
    assert cmd[cmd.index("--devices") + 1] == "0,1,2,3" and cmd[-2:] == ["--resume", "auto"]
    tool = cmd.index(os.path.join(ROOT, "tools", "train.py"))
    assert cmd[tool + 1 : tool + 7] == [
        "-c",
        "c.yaml",
        "-o",
        "data.root=/d",
        "train.seed=2",
        f"output_dir={run.output_dir}",
    ]
    assert "--resume" not in train_command(run, [], resume=False)


def test_demo_configs_differ_only_in_the_architecture():
    base, *others = [flat(load_config(os.path.join(ROOT, path))) for path in ALL_DEMOS]
    for path, cfg in zip(ALL_DEMOS[1:], others):
        changed = {k for k in base.keys() | cfg.keys() if base.get(k) != cfg.get(k)}
        assert changed == {"model.arch", "name", "output_dir"}, (path, changed)


def test_rows_name_each_block_and_its_reduction(tmp_path):
    # No run has finished: the rows hold the counts only, which is all this test needs.
    rows = sweep_rows(plan(ALL_DEMOS, [0], str(tmp_path), TINY), TINY)
    assert [(r["name"], r["block"], r["reduction"], r["runs"]) for r in rows] == [
        ("resnet20_digits", None, None, 0),
        ("se_resnet20_digits", "SE", 4, 0),
        ("eca_resnet20_digits", "ECA", None, 0),
        ("cbam_resnet20_digits", "CBAM", 4, 0),
    ]
    assert rows[0]["params"] < rows[2]["params"] < rows[1]["params"] < rows[3]["params"]  # ECA: a few k-weights
    md = write_table(rows, str(tmp_path))["md"].splitlines()
    assert md[0].startswith("| name | arch | block | r | params | GMACs | top-1 err % |")
    assert md[2].startswith("| resnet20_digits | resnet20 | - | - |")
    assert md[4].startswith("| eca_resnet20_digits | eca_resnet20 | ECA | - |")
    assert md[5].startswith("| cbam_resnet20_digits | cbam_resnet20 | CBAM | 4 |")


def write_config(folder, name):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        yaml.safe_dump({"model": {"arch": "resnet20"}}, f)
    return path


def sweep(*args):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "sweep.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_sweep_runs_resumes_and_tabulates(tmp_path):
    out = tmp_path / "sweep"
    # An earlier, interrupted sweep: seed 0 of both configs finished (faked: their numbers are known),
    # and se_resnet20 seed 1 had started (config and unfinished metrics, no checkpoint yet).
    for config in DEMOS:
        done = out / os.path.basename(config).removesuffix(".yaml") / "seed0"
        dump_config(load_config(config, TINY + ["train.seed=0", f"output_dir={done}"]), str(done / "config.yaml"))
        (done / "metrics.json").write_text(
            json.dumps({"finished": True, "best": {"top1": 40.0, "top5": 90.0}, "train_images_per_s": 100.0})
        )
    done = out / "resnet20_digits" / "seed0"
    mtime = os.path.getmtime(done / "metrics.json")
    started = out / "se_resnet20_digits" / "seed1"
    dump_config(load_config(DEMOS[1], TINY + ["train.seed=1", f"output_dir={started}"]), str(started / "config.yaml"))
    (started / "metrics.json").write_text(json.dumps({"finished": False}))

    proc = sweep("-c", *DEMOS, "--seeds", "0", "1", "--out", str(out), "--jobs", "2", "-o", *TINY)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # --jobs 2: the two runs trained side by side, each with one of the cores and its own console log
    for run in (out / "resnet20_digits" / "seed1", started):
        assert "epoch 1/" in (run / "console.log").read_text()
        assert load_config(str(run / "config.yaml"))["train"]["threads"] == max(1, os.cpu_count() // 2)
    assert "[1/4] resnet20_digits seed 0: finished before, skipped" in proc.stdout
    assert "[2/4] resnet20_digits seed 1: starting" in proc.stdout
    assert "[3/4] se_resnet20_digits seed 0: finished before, skipped" in proc.stdout
    assert "[4/4] se_resnet20_digits seed 1: resuming" in proc.stdout
    assert os.path.getmtime(done / "metrics.json") == mtime and not (done / "train.log").exists()
    assert "--resume auto: no checkpoint" in (started / "train.log").read_text()  # restarted with --resume auto
    for name in ("resnet20_digits", "se_resnet20_digits"):
        for seed in (0, 1):
            assert status(str(out / name / f"seed{seed}")) == "finished"

    rows = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in rows] == ["resnet20_digits", "se_resnet20_digits"]
    plain, se = rows
    assert plain["runs"] == se["runs"] == 2 and (plain["block"], se["block"]) == (None, "SE") and se["reduction"] == 4
    assert se["params"] > plain["params"] and se["gmacs"] > plain["gmacs"] and plain["images_per_s"] > 0
    real = json.loads((out / "resnet20_digits" / "seed1" / "metrics.json").read_text())["best"]["top1"]
    assert plain["top1_err"] == pytest.approx(100 - (40.0 + real) / 2)
    assert plain["top1_err_std"] == pytest.approx(abs(40.0 - real) / 2**0.5)
    assert plain["paper_top1_err"] is None  # no paper figure for a CIFAR-size net on synthetic data
    md = (out / "results.md").read_text()
    assert md.startswith("| name | arch | block | r | params | GMACs | top-1 err % | top-5 err % | seeds |")
    assert md.count(" ± ") >= 4 and md in proc.stdout
    table = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert float(table[0]["top1_err_std"]) == pytest.approx(plain["top1_err_std"])

    again = sweep("-c", *DEMOS, "--seeds", "0", "1", "--out", str(out), "--dry-run", "-o", *TINY)
    assert again.returncode == 0 and again.stdout.count("finished") == 4  # a rerun would train nothing


def test_sweep_errors_are_clear(tmp_path):
    proc = sweep("-c", DEMOS[0], "--out", str(tmp_path), "-o", "output_dir=/x")
    assert proc.returncode == 2 and "sets output_dir itself" in proc.stderr
    proc = sweep("-c", "configs/nope.yaml", "--out", str(tmp_path))
    assert proc.returncode == 2 and "config file not found" in proc.stderr
    proc = sweep("-c", DEMOS[1], "--out", str(tmp_path), "--seeds", "3", "--dry-run", "-o", *TINY)
    assert proc.returncode == 0 and proc.stdout.startswith("new") and "train.seed=3" in proc.stdout


def test_a_rerun_with_another_recipe_is_refused(tmp_path):
    """Issue 23: finished (or started) runs of another recipe in the sweep folder are named with what
    differs, and nothing is trained or tabulated; bookkeeping (threads, logging) may differ."""
    out = tmp_path / "sweep"
    for seed, recipe in ((0, ["train.epochs=1"]), (1, ["train.epochs=1", "optimizer.lr=0.05"])):
        done = out / "resnet20_digits" / f"seed{seed}"
        dump_config(
            load_config(DEMOS[0], TINY + recipe + [f"train.seed={seed}", f"output_dir={done}", "train.threads=1"]),
            str(done / "config.yaml"),
        )
        (done / "metrics.json").write_text(json.dumps({"finished": seed == 0, "best": {"top1": 40.0}}))
    for extra in ([], ["--table-only"]):
        proc = sweep("-c", DEMOS[0], "--seeds", "0", "1", "--out", str(out), *extra, "-o", *TINY, "train.epochs=3")
        assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "2 run(s) in this sweep folder were trained with another recipe" in proc.stderr
        assert f"{out / 'resnet20_digits' / 'seed0'}: train.epochs 1 -> 3" in proc.stderr
        assert "optimizer.lr 0.05 -> " in proc.stderr and "train.threads" not in proc.stderr
        assert not (out / "results.md").exists() and not (out / "resnet20_digits" / "seed0" / "train.log").exists()
    # the same recipe (threads aside) is reused: a dry run says finished / unfinished, nothing refused
    proc = sweep("-c", DEMOS[0], "--seeds", "0", "--out", str(out), "--dry-run", "-o", *TINY, "train.epochs=1")
    assert proc.returncode == 0 and proc.stdout.startswith("finished"), proc.stderr


@pytest.mark.parametrize("signum, child_exit", [(signal.SIGUSR1, 138), (signal.SIGHUP, 143)])
def test_a_signal_to_the_sweep_stops_its_trainer_cleanly(tmp_path, signum, child_exit):
    """SIGUSR1 and SIGHUP used to kill the sweep and orphan its trainer (which then held the run's lock):
    now the sweep passes them on (SIGHUP as SIGTERM), the trainer saves and exits, and the sweep exits
    128 + the signal; a rerun resumes and finishes."""
    out = tmp_path / "sweep"
    run_dir = out / "resnet20_digits" / "seed0"
    args = [
        sys.executable,
        os.path.join(ROOT, "tools", "sweep.py"),
        "-c",
        DEMOS[0],
        "--seeds",
        "0",
        "--out",
        str(out),
        "-o",
        *TINY,
        "train.epochs=8",  # 2 steps each: the signal comes in epoch 2 at the latest; the rerun trains the rest
    ]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not (run_dir / "train.log").exists() or "epoch 1/" not in (run_dir / "train.log").read_text():
            assert time.time() < deadline and proc.poll() is None, "the run did not start"
            time.sleep(0.2)
        trainer = [p for p in psutil.Process(proc.pid).children(recursive=True) if "train.py" in " ".join(p.cmdline())]
        assert len(trainer) == 1
        proc.send_signal(signum)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, output[-3000:]
    assert not trainer[0].is_running() or trainer[0].status() == psutil.STATUS_ZOMBIE  # no orphan left behind
    assert f"stopped by {signal.Signals(signum).name}" in output
    assert os.path.exists(run_dir / "checkpoints" / "last.pdparams"), output[-3000:]
    assert f"exit code {child_exit}" not in output  # an interruption, not a failure
    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "seed 0: resuming" in again.stdout, again.stdout[-3000:] + again.stderr[-3000:]
    assert status(str(run_dir)) == "finished"
