"""Settings a data source ignores get a one-line notice when set to a value that would matter (issue 13)."""

import glob
import os
import subprocess
import sys

import pytest

from senet.config import load_config
from senet.data import build_dataset
from senet.data import ignored as ignored_mod
from senet.data.ignored import ignored_notice, ignored_settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs/demo/se_resnet20_digits.yaml")


def cfg(path=None, *overrides):
    return load_config(path, list(overrides))


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)))
def test_shipped_configs_set_nothing_their_data_source_ignores(path):
    if os.path.basename(os.path.dirname(path)) == "_base_":
        return  # fragments, read through the configs that name them
    assert ignored_settings(load_config(path)) == [], path


def test_array_sources_name_each_ignored_setting_in_one_line():
    for name in ("cifar10", "cifar100"):
        c = cfg(None, f"data.name={name}", "data.image_size=64", "data.rrc_scale=[0.2, 1.0]", "data.eval_resize=300")
        assert ignored_settings(c) == ["data.image_size=64", "data.eval_resize=300", "data.rrc_scale=[0.2, 1.0]"]
        notice = ignored_notice(c)
        assert notice.startswith(f"notice: data.name={name} ignores data.image_size=64, ") and "\n" not in notice
        assert "32x32" in notice
    # digits are upsampled to data.image_size (train) and data.eval_crop (val): only the crops are ignored
    c = cfg(None, "data.name=digits", "data.image_size=64", "data.rrc_scale=[0.2, 1.0]", "data.eval_resize=300")
    assert ignored_settings(c) == ["data.eval_resize=300", "data.rrc_scale=[0.2, 1.0]"]
    assert "upsampled to data.image_size (train) and data.eval_crop (val)" in ignored_notice(c)
    # the size these sources have anyway, and the defaults, say nothing
    assert ignored_settings(cfg(DEMO)) == []  # image_size: 32, eval_crop: 32
    assert ignored_settings(cfg(None, "data.name=cifar10", "data.image_size=32", "data.eval_crop=32")) == []
    assert ignored_settings(cfg(None, "data.name=digits", "data.root=/elsewhere", "data.pad_crop=2")) == [
        "data.root=/elsewhere"
    ]  # digits reads pad_crop, not root


def test_synthetic_and_imagenet_name_what_they_ignore():
    synthetic = cfg(
        None,
        "data.name=synthetic",
        "data.image_size=64",
        "data.eval_crop=48",
        "data.pad_crop=8",
        "data.rrc_ratio=[0.5, 2.0]",
    )
    assert ignored_settings(synthetic) == ["data.pad_crop=8", "data.rrc_ratio=[0.5, 2.0]"]  # it reads the sizes
    assert ignored_settings(cfg(None, "data.name=synthetic", "data.pad_crop=0")) == []  # what it does anyway
    assert ignored_settings(cfg(None, "data.pad_crop=8", "data.synthetic_val_size=10")) == [
        "data.pad_crop=8",
        "data.synthetic_val_size=10",
    ]
    assert ignored_settings(cfg(None, "data.image_size=160", "data.rrc_scale=[0.35, 1.0]")) == []  # imagenet reads them


def test_building_the_data_prints_the_notice_once(capsys, monkeypatch):
    monkeypatch.setattr(ignored_mod, "_printed", set())
    c = cfg(
        None,
        "data.name=synthetic",
        "data.synthetic_train_size=4",
        "data.synthetic_val_size=4",
        "data.image_size=16",
        "data.eval_crop=16",
        "data.pad_crop=8",
        "model.num_classes=2",
    )
    build_dataset(c, "train")
    build_dataset(c, "val")
    err = capsys.readouterr().err
    assert (
        err == "notice: data.name=synthetic ignores data.pad_crop=8: its images are generated at "
        "data.image_size (train) and data.eval_crop (val): no crops; flips, data.auto_augment and "
        "data.random_erasing apply\n"
    )
    build_dataset(cfg(None, "data.name=synthetic", "data.synthetic_train_size=4", "model.num_classes=2"), "train")
    assert capsys.readouterr().err == ""


def test_train_prints_the_notice_through_the_command_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "train.py"),
            "-c",
            DEMO,
            "-o",
            "data.eval_resize=64",
            "train.max_steps=1",
            f"output_dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "ignores" in line]
    assert lines == [
        "notice: data.name=digits ignores data.eval_resize=64: scikit-learn's bundled 8x8 digits, upsampled to "
        "data.image_size (train) and data.eval_crop (val), train with pad-and-crop (data.pad_crop) and flips"
    ]
