"""tools/check_data.py and scripts/make_fake_data.py end to end, through the command line as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def fake(tmp_path_factory) -> str:
    """scripts/make_fake_data.py output: imagenet/ (3 classes x 8 + 3) and cifar/ tarballs."""
    out = str(tmp_path_factory.mktemp("fake"))
    r = run(
        "scripts/make_fake_data.py",
        "--out",
        out,
        "--classes",
        "3",
        "--per-class",
        "8",
        "--val-per-class",
        "3",
        "--cifar-train",
        "40",
        "--cifar-test",
        "10",
    )
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(os.path.join(out, "cifar"))) == ["cifar-10-python.tar.gz", "cifar-100-python.tar.gz"]
    return out


def test_json_report_with_decode_lists_bad_files(fake, tmp_path):
    bad = os.path.join(fake, "imagenet", "val", "n00000001", "broken.jpg")
    with open(bad, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 not really a JPEG")
    try:
        r = run(
            "tools/check_data.py",
            "-o",
            f"data.root={fake}/imagenet",
            "model.num_classes=3",
            "-o",
            f"output_dir={tmp_path}",
            "data.num_workers=2",
            "--decode",
            "--json",
        )
    finally:
        os.unlink(bad)
    assert r.returncode == 1, r.stderr  # a bad file was found
    report = json.loads(r.stdout)
    assert set(report) == {"train", "val", "bench"} and report["bench"] is None
    assert {"images", "classes", "bad", "smallest", "largest"} <= set(report["train"])
    assert (report["train"]["images"], report["train"]["classes"], report["train"]["bad"]) == (24, 3, [])
    assert report["val"]["images"] == 10 and report["val"]["bad"] == [bad]
    assert report["val"]["largest"] == {"class": "n00000001", "images": 4}


def test_bench_and_text_output(fake, tmp_path):
    r = run(
        "tools/check_data.py",
        "-o",
        f"data.root={fake}/imagenet",
        "model.num_classes=3",
        f"output_dir={tmp_path}",
        "data.batch_size=2",
        "data.num_workers=1",
        "data.image_size=32",
        "--bench",
        "8",
    )
    assert r.returncode == 0, r.stderr
    assert "train: 24 images, 3 classes; smallest class n00000000 (8)" in r.stdout
    assert "loader / plain = " in r.stdout and "1 workers" in r.stdout
    r = run(
        "tools/check_data.py",
        "-o",
        "data.name=synthetic",
        "model.num_classes=5",
        "data.synthetic_train_size=64",
        "data.image_size=16",
        "data.batch_size=4",
        "data.num_workers=0",
        "--bench",
        "16",
        "--json",
    )
    bench = json.loads(r.stdout)["bench"]
    assert bench["images"] == 16 and bench["loader_images_per_s"] > 0 and bench["loader_cpu_ms_per_image"] > 0
    assert bench["ratio"] is None and bench["plain_images_per_s"] is None  # no files to decode


def test_cifar_counts_and_missing_root(fake, tmp_path):
    r = run("tools/check_data.py", "-o", "data.name=cifar100", f"data.root={fake}/cifar", "model.num_classes=100")
    assert r.returncode == 2 and "not the published" in r.stderr and "data.verify_md5=false" in r.stderr, r.stderr
    r = run(
        "tools/check_data.py",
        "-o",
        "data.name=cifar100",
        f"data.root={fake}/cifar",
        "model.num_classes=100",
        "data.verify_md5=false",
    )
    assert r.returncode == 0, r.stderr
    assert "train: 40 images, 100 classes" in r.stdout and "val: 10 images, 100 classes" in r.stdout
    assert "not the published" in r.stderr  # fake tarballs carry the official name, not the official MD5
    r = run("tools/check_data.py", "-o", f"data.root={tmp_path}/missing", f"output_dir={tmp_path}")
    assert r.returncode == 2
    assert f"{tmp_path}/missing does not exist" in r.stderr and "data.name=synthetic" in r.stderr


def test_bench_times_dali_beside_our_loader_and_plain_decoding(fake, tmp_path):
    """--bench: plain decoding, our loader and (where installed; `make test` installs it) DALI's CPU pipeline,
    each with images per CPU-second; without DALI, one line names the install command."""
    from senet.data.dali import dali_installed

    args = [
        "tools/check_data.py",
        "-o",
        f"data.root={fake}/imagenet",
        "model.num_classes=3",
        f"output_dir={tmp_path}",
        "data.batch_size=2",
        "data.num_workers=1",
        "data.image_size=32",
        "--bench",
        "4",
        "--repeats",
        "2",
    ]
    r = run(*args, "--json")
    assert r.returncode == 0, r.stderr
    bench = json.loads(r.stdout)["bench"]
    names = ["plain", "loader", "dali"] if dali_installed() else ["plain", "loader"]
    for name in names:
        assert bench[f"{name}_images_per_s"] > 0 and bench[f"{name}_cpu_ms_per_image"] > 0
        assert abs(bench[f"{name}_images_per_cpu_s"] * bench[f"{name}_cpu_ms_per_image"] - 1e3) < 1e-6
    assert bench["dali_decoder"] == ("cpu" if dali_installed() else None)
    text = run(*args).stdout
    if dali_installed():
        assert "  DALI (cpu) " in text and "images/s per core (1 threads)" in text, text
        jitter = run(*args, "-o", "data.color_jitter=0.4").stdout  # a setting DALI does not apply: not timed
        assert "  DALI        not timed: data.loader=dali does not apply data.color_jitter=0.4" in jitter, jitter
    else:
        assert "DALI        not installed (make install DALI=1)" in text, text
    # make bench's loader section (senet.bench.report) shows each pipeline's own figures on its own row
    from senet.bench.report import _loader

    bench.update(image_size=32, files="generated JPEGs", file_size="64x48")
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in _loader(bench, []) if " | " in line}
    labels = {
        "plain": "plain decode+crop (no batching, nothing handed back)",
        "loader": "our loader (paddle.io.DataLoader, OpenCV)",
        "dali": "NVIDIA DALI, cpu decoder",
    }
    for name in names:
        images_per_s, cpu_ms, per_core = rows[labels[name]]
        assert images_per_s == f"{bench[f'{name}_images_per_s']:,.0f} ± {bench[f'{name}_std']:,.0f}"
        assert (cpu_ms, per_core) == (
            f"{bench[f'{name}_cpu_ms_per_image']:,.2f}",
            f"{bench[f'{name}_images_per_cpu_s']:,.0f} |",
        )
    without = {
        **bench,
        "dali_images_per_s": None,
        "dali_decoder": None,  # a machine without DALI
        "dali_skipped": "not installed (make install DALI=1)",
    }
    assert "| NVIDIA DALI | not installed (make install DALI=1) | - | - |" in _loader(without, [])
