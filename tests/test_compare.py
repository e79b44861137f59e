"""tools/compare.py end to end, as a user runs it."""

import json
import os
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_compare(*args):
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "compare.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc


def test_compare_json_matches_paper_figures():
    proc = run_compare("-c", "configs/resnet50.yaml", "configs/se_resnet50.yaml", "--format", "json", "--paper")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["name"] for r in rows] == ["resnet50", "se_resnet50"]
    plain, se = rows
    for key in ("name", "arch", "reduction", "params", "params_total", "gmacs", "top1", "top5"):
        assert key in plain and key in se
    assert (plain["params"], round(plain["gmacs"], 2), plain["reduction"]) == (25_557_032, 3.86, None)
    assert (se["params"], round(se["gmacs"], 2), se["reduction"]) == (28_088_024, 3.87, 16)
    assert plain["top1"] is None and se["paper_top1_err"] == 23.29 and plain["paper_top5_err"] == 7.48
    assert se["paper_source"].startswith("Hu et al.") and "Table 2" in se["paper_source"]


def test_compare_paper_shows_eca_and_cbam_figures_beside_ours():
    args = ("-c", "configs/eca_resnet50.yaml", "configs/cbam_resnet50.yaml", "--paper")
    proc = run_compare(*args, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    eca, cbam = json.loads(proc.stdout)
    # Ours: ECA's k = 5, 5, 5, 7 per stage (the authors' rounding) is 13 x 5 + 3 x 7 = 86 weights.
    assert (eca["params"], eca["attention_params"], eca["reduction"], eca["kernel_sizes"]) == (
        25_557_032 + 86,
        86,
        None,
        [5, 5, 5, 7],
    )
    assert (cbam["params"], cbam["reduction"], cbam["kernel_sizes"]) == (28_089_592, 16, None)
    # Theirs, as the papers state them, with the source.
    assert (eca["paper_top1_err"], eca["paper_extra_params"], eca["paper_extra_gmacs"]) == (22.52, 80, 4.7e-4)
    assert eca["paper_gmacs"] is None and "ECA-Net" in eca["paper_source"] and "77.48" in eca["paper_source"]
    assert (cbam["paper_top1_err"], cbam["paper_gmacs"], cbam["paper_params_m"]) == (22.66, 3.864, 28.09)
    assert "CBAM" in cbam["paper_source"] and "ECCV 2018" in cbam["paper_source"]
    table = run_compare(*args).stdout
    rows = {line.split()[0]: line for line in table.splitlines() if line.startswith(("eca_", "cbam_"))}
    assert "k 5,5,5,7" in rows["eca_resnet50"] and " 86 " in rows["eca_resnet50"] and "0.00047" in rows["eca_resnet50"]
    assert "3.864" in rows["cbam_resnet50"] and "28.09M" in rows["cbam_resnet50"]
    assert "paper figures for eca_resnet50: Wang et al." in table
    assert "paper figures for cbam_resnet50: Woo et al." in table


def test_compare_overrides_and_formats():
    proc = run_compare(
        "-c", "configs/se_resnet50.yaml", "-o", "model.se.reduction=8", "model.stride_in_1x1=false", "--format", "csv"
    )
    assert proc.returncode == 0, proc.stderr
    header, row = proc.stdout.strip().splitlines()
    values = dict(zip(header.split(","), row.split(",")))
    assert values["reduction"] == "8" and float(values["gmacs"]) > 4.09
    paper = json.loads(
        run_compare(
            "-c", "configs/se_resnet50.yaml", "-o", "model.se.reduction=8", "--paper", "--format", "json"
        ).stdout
    )
    assert paper[0]["paper_top1_err"] is None  # Table 2 is r = 16: no figure beside an ablation
    md = run_compare("-c", "configs/resnet50.yaml", "--format", "md", "--input-size", "112")
    assert md.stdout.startswith("| name | arch |") and "GMACs" in md.stdout


def test_compare_reads_runs_as_mean_and_std(tmp_path):
    from senet.config import dump_config, load_config

    for seed, top1 in ((0, 90.0), (1, 92.0)):
        run = tmp_path / f"run{seed}"
        cfg = load_config(
            os.path.join(ROOT, "configs", "resnet50.yaml"),
            ["model.arch=se_resnet20", "model.num_classes=10", "name=se20", "data.eval_crop=32"],
        )
        dump_config(cfg, str(run / "config.yaml"))
        (run / "metrics.json").write_text(
            json.dumps({"best": {"top1": top1, "top5": 99.0, "epoch": 3}, "train_images_per_s": 100.0 + seed})
        )
    proc = run_compare("--runs", str(tmp_path / "run0"), str(tmp_path / "run1"), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)
    assert row["name"] == "se20" and row["runs"] == 2
    assert row["top1"] == 91.0 and abs(row["top1_std"] - 1.4142) < 1e-3 and row["top5"] == 99.0
    assert row["images_per_s"] == 100.5
    table = run_compare("--runs", str(tmp_path / "run0"), str(tmp_path / "run1"))
    assert "91.00 ± 1.41" in table.stdout


def test_compare_errors_are_clear(tmp_path):
    proc = run_compare("-c", "configs/resnet50.yaml", "-o", "model.arch=resnet5O")
    assert proc.returncode == 2 and "unknown model.arch 'resnet5O'" in proc.stderr
    proc = run_compare("--runs", str(tmp_path))
    assert proc.returncode == 2 and "no config.yaml" in proc.stderr
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"model": {"archh": "resnet50"}}))
    proc = run_compare("-c", str(tmp_path / "bad.yaml"))
    assert proc.returncode == 2 and "Did you mean 'model.arch'" in proc.stderr


def test_runs_that_stopped_before_their_first_evaluation_get_a_dash_and_a_footnote(tmp_path):
    from senet.config import dump_config, load_config

    stopped = tmp_path / "stopped"  # a real run that train.max_steps stopped before its first evaluation
    train = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "train.py"),
            "-c",
            "configs/demo/se_resnet20_digits.yaml",
            "-o",
            "name=early",
            "data.name=synthetic",
            "data.image_size=16",
            "data.eval_crop=16",
            "data.synthetic_train_size=64",
            "data.synthetic_val_size=16",
            "data.batch_size=16",
            "model.num_classes=4",
            "train.max_steps=2",
            f"output_dir={stopped}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert train.returncode == 0, train.stderr
    assert json.loads((stopped / "metrics.json").read_text())["best"] is None
    killed = tmp_path / "killed"  # killed before it wrote metrics.json: a config and nothing else
    good = tmp_path / "good"
    for run, name in ((killed, "early"), (good, "good")):
        cfg = load_config(
            os.path.join(ROOT, "configs", "resnet50.yaml"),
            ["model.arch=se_resnet20", "model.num_classes=10", f"name={name}", "data.eval_crop=32"],
        )
        dump_config(cfg, str(run / "config.yaml"))
    (good / "metrics.json").write_text(
        json.dumps(
            {
                "best": {"top1": 93.5, "top5": 99.0, "epoch": 3},
                "finished": True,
                "global_step": 30,
                "train_images_per_s": 100.0,
            }
        )
    )
    runs = [str(stopped), str(killed), str(good)]
    rows = {r["name"]: r for r in json.loads(run_compare("--runs", *runs, "--format", "json").stdout)}
    assert rows["good"]["top1"] == 93.5 and rows["good"]["notes"] == []
    assert rows["early"]["top1"] is None and rows["early"]["runs"] == 0
    assert rows["early"]["notes"] == [
        f"{stopped}: stopped by train.max_steps at step 2, before its first evaluation: no accuracy",
        f"{killed}: no metrics.json (still running, or killed before it could write one): no accuracy",
    ]
    for fmt in ("table", "md"):
        proc = run_compare("--runs", *runs, "--format", fmt)
        assert proc.returncode == 0, proc.stderr
        lines = {line.strip("| ").split()[0]: line for line in proc.stdout.splitlines() if line.strip("| ")}
        assert "- [1]" in lines["early"] and "93.50" in lines["good"] and "[" not in lines["good"]
        assert f"[1] {stopped}: stopped by train.max_steps at step 2" in proc.stdout


def test_paper_figures_only_beside_the_papers_network():
    from senet.compare import paper_reference
    from senet.config import validate

    base = {"model": {"arch": "se_resnet50", "num_classes": 1000}}
    assert paper_reference(validate(base)) is not None
    for extra in ({"se": {"divisor": 8}}, {"branch_relu": True}, {"se": {"reduction": 8}}):
        cfg = validate({"model": {**base["model"], **extra}})
        assert paper_reference(cfg) is None, extra
    for arch, section in (("eca_resnet50", "eca"), ("cbam_resnet50", "cbam")):
        assert paper_reference(validate({"model": {"arch": arch, "num_classes": 1000}})) is not None
        assert paper_reference(validate({"model": {"arch": arch, "num_classes": 100}})) is None
        cfg = {"model": {"arch": arch, "num_classes": 1000, section: {"stages": [4]}}}
        assert paper_reference(validate(cfg)) is None
    for options in ({"kernel_size": 3}, {"gamma": 3}):
        cfg = {"model": {"arch": "eca_resnet50", "num_classes": 1000, "eca": options}}
        assert paper_reference(validate(cfg)) is None
    for options in ({"spatial": False}, {"reduction": 8}, {"spatial_kernel": 3}):
        cfg = {"model": {"arch": "cbam_resnet50", "num_classes": 1000, "cbam": options}}
        assert paper_reference(validate(cfg)) is None
    # An SE ablation setting does not hide the ECA paper's figures: only the arch's own section counts.
    eca = validate({"model": {"arch": "eca_resnet50", "num_classes": 1000, "se": {"reduction": 8}}})
    assert paper_reference(eca) == (22.52, None, None)
