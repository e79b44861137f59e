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
    r = run("scripts/make_fake_data.py", "--out", out, "--classes", "3", "--per-class", "8", "--val-per-class", "3",
            "--cifar-train", "40", "--cifar-test", "10")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(os.path.join(out, "cifar"))) == ["cifar-10-python.tar.gz", "cifar-100-python.tar.gz"]
    return out


def test_json_report_with_decode_lists_bad_files(fake, tmp_path):
    bad = os.path.join(fake, "imagenet", "val", "n00000001", "broken.jpg")
    with open(bad, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 not really a JPEG")
    try:
        r = run("tools/check_data.py", "-o", f"data.root={fake}/imagenet", "model.num_classes=3",
                "-o", f"output_dir={tmp_path}", "data.num_workers=2", "--decode", "--json")
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
    r = run("tools/check_data.py", "-o", f"data.root={fake}/imagenet", "model.num_classes=3", f"output_dir={tmp_path}",
            "data.batch_size=2", "data.num_workers=1", "data.image_size=32", "--bench", "8")
    assert r.returncode == 0, r.stderr
    assert "train: 24 images, 3 classes; smallest class n00000000 (8)" in r.stdout
    assert "loader / plain = " in r.stdout and "1 workers" in r.stdout
    r = run("tools/check_data.py", "-o", "data.name=synthetic", "model.num_classes=5", "data.synthetic_train_size=64",
            "data.image_size=16", "data.batch_size=4", "data.num_workers=0", "--bench", "16", "--json")
    bench = json.loads(r.stdout)["bench"]
    assert bench["images"] == 16 and bench["loader_images_per_s"] > 0 and bench["loader_cpu_ms_per_image"] > 0
    assert bench["ratio"] is None and bench["plain_images_per_s"] is None  # no files to decode


def test_cifar_counts_and_missing_root(fake, tmp_path):
    r = run("tools/check_data.py", "-o", "data.name=cifar100", f"data.root={fake}/cifar", "model.num_classes=100")
    assert r.returncode == 0, r.stderr
    assert "train: 40 images, 100 classes" in r.stdout and "val: 10 images, 100 classes" in r.stdout
    assert "not the published" in r.stderr  # fake tarballs carry the official name, not the official MD5
    r = run("tools/check_data.py", "-o", f"data.root={tmp_path}/missing", f"output_dir={tmp_path}")
    assert r.returncode == 2
    assert f"{tmp_path}/missing does not exist" in r.stderr and "data.name=synthetic" in r.stderr
