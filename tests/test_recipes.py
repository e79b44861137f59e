"""The modern recipes of issue 25 (docs/recipes.md): configs/rsb (ResNet strikes back A1-A3), configs/modern
(PaddleClas's cosine recipe), configs/cifar10_modern and the modern digits demo. Each config loads and builds,
the attention twins differ in model.arch only, the RSB configs hold RSB's Table 1, tools/compare.py --paper puts
RSB's figures beside them, and a run with every augmentation on resumes mid-epoch bit for bit."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import paddle
import pytest
from test_reliability import assert_same_weights, fit_here, tiny_cfg

from senet.checkpoint import load_checkpoint
from senet.compare import RSB_TOP1, build_rows, format_rows, paper_reference, rsb_recipe
from senet.config import load_config
from senet.data import build_dataset
from senet.mixup import build_mixup
from senet.optim import build_optimizer
from senet.resnet import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATTENTION = ("", "se_", "eca_", "cbam_")  # the plain network and its twins
# folder -> the plain config of each group of twins there (the twins add a prefix to the file name)
GROUPS = {
    "configs/rsb": ["resnet50_a1.yaml", "resnet50_a2.yaml", "resnet50_a3.yaml"],
    "configs/modern": ["resnet50_cosine_ls_mixup.yaml"],
    "configs/cifar10_modern": ["resnet110.yaml"],
}
DEMO = ["configs/demo/resnet20_digits_modern.yaml", "configs/demo/se_resnet20_digits_modern.yaml"]
RECIPE_CONFIGS = sorted(f for folder in GROUPS for f in glob.glob(os.path.join(ROOT, folder, "*.yaml"))) + [
    os.path.join(ROOT, p) for p in DEMO
]

# RSB Table 1 (Wightman, Touvron and Jégou 2021), written out here apart from senet.compare.RSB_RECIPES so a
# slip in either shows: epochs, train / test px, lr at RSB's batch of 2048, weight decay, mixup alpha,
# CutMix alpha, RandAugment, repeated augmentation, stochastic depth.
TABLE1 = {
    "a1": (600, 224, 224, 5e-3, 0.01, 0.2, 1.0, "rand-m7-mstd0.5-inc1", 3, 0.05),
    "a2": (300, 224, 224, 5e-3, 0.02, 0.1, 1.0, "rand-m7-mstd0.5-inc1", 3, 0.05),
    "a3": (100, 160, 224, 8e-3, 0.02, 0.1, 1.0, "rand-m6-mstd0.5-inc1", 1, 0.0),
}


def _load(path, *overrides):
    return load_config(path if os.path.isabs(path) else os.path.join(ROOT, path), list(overrides))


def test_every_recipe_config_is_there():
    names = {os.path.relpath(p, ROOT) for p in RECIPE_CONFIGS}
    for folder, plains in GROUPS.items():
        for plain in plains:
            assert {f"{folder}/{a}{plain}" for a in ATTENTION} <= names
    assert len(names) == 3 * 4 + 4 + 4 + 2


BUILT: set[str] = set()  # model sections already built: A1 and A2 share theirs, as A3 and configs/modern do


@pytest.mark.parametrize("path", RECIPE_CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_recipe_config_loads_and_builds(path):
    cfg = _load(path)
    model_section = json.dumps(cfg["model"], sort_keys=True)
    if model_section not in BUILT:
        BUILT.add(model_section)
        with paddle.utils.unique_name.guard():
            model = build_model(cfg)
            assert sum(p.size for p in model.parameters()) > 0
            build_optimizer(cfg, model, steps_per_epoch=10, world_size=1)
    # every one of these recipes mixes its batches, on the classes of its own data
    assert build_mixup(cfg) is not None


def _without_arch(cfg):
    cfg = json.loads(json.dumps(cfg))
    for key in ("name", "output_dir"):  # the file's stem; the demo's run folder
        cfg.pop(key)
    cfg["model"].pop("arch")
    return cfg


@pytest.mark.parametrize("folder,plain", [(f, p) for f, ps in GROUPS.items() for p in ps] + [("configs/demo", "x")])
def test_attention_twins_differ_in_model_arch_only(folder, plain):
    paths = DEMO if folder == "configs/demo" else [f"{folder}/{a}{plain}" for a in ATTENTION]
    cfgs = [_load(p) for p in paths]
    assert len({c["model"]["arch"] for c in cfgs}) == len(cfgs)
    first = _without_arch(cfgs[0])
    for path, cfg in zip(paths[1:], cfgs[1:]):
        assert _without_arch(cfg) == first, path


@pytest.mark.parametrize("recipe", sorted(TABLE1))
def test_rsb_configs_hold_table_1(recipe):
    epochs, train_px, test_px, lr_2048, wd, mixup, cutmix, policy, repeats, drop_path = TABLE1[recipe]
    for a in ATTENTION:
        cfg = _load(f"configs/rsb/{a}resnet50_{recipe}.yaml")
        d, o, t = cfg["data"], cfg["optimizer"], cfg["train"]
        assert (t["epochs"], d["image_size"], d["eval_crop"]) == (epochs, train_px, test_px)
        assert o["lr"] * 2048 / 256 == pytest.approx(lr_2048, rel=1e-12)  # our lr is per 256 images
        assert (o["name"], o["weight_decay"], cfg["lr_scheduler"]["name"]) == ("lamb", wd, "cosine")
        assert cfg["lr_scheduler"]["warmup_epochs"] == 5
        assert (t["mixup"]["alpha"], t["mixup"]["cutmix_alpha"], d["auto_augment"]) == (mixup, cutmix, policy)
        assert (d["repeated_aug"], cfg["model"]["drop_path_rate"]) == (repeats, drop_path)
        assert (t["loss"], t["bce_target_thresh"], t["label_smoothing"]) == ("bce", 0.2, 0.0)
        assert d["random_erasing"]["prob"] == 0.0 and d["color_jitter"] == 0.0  # Table 1: neither
        assert rsb_recipe(cfg) == recipe.upper()


def test_a3_trains_at_160_and_tests_at_224_with_crop_ratio_095():
    cfg = _load("configs/rsb/resnet50_a3.yaml")
    d = cfg["data"]
    assert (d["image_size"], d["eval_crop"], d["crop_pct"]) == (160, 224, 0.95)
    assert d["eval_resize"] == 235  # floor(224 / 0.95): timm's resize before the centre crop


def test_paper_figures_only_beside_exactly_that_recipe():
    assert paper_reference(_load("configs/rsb/resnet50_a1.yaml")) == (19.6, None, None)
    # one setting away from A1 is no longer A1, and not A2 either
    assert paper_reference(_load("configs/rsb/resnet50_a1.yaml", "train.epochs=300")) is None
    assert paper_reference(_load("configs/rsb/resnet50_a2.yaml", "data.repeated_aug=1")) is None
    # RSB trained no SE-ResNet-50: no figure beside the twin
    assert paper_reference(_load("configs/rsb/se_resnet50_a1.yaml")) is None
    # the SE paper's figures belong to its recipe: not beside SE-ResNet-50 trained with a modern one
    assert paper_reference(_load("configs/se_resnet50.yaml"))[0] == 23.29
    for extra in ("train.mixup.alpha=0.2", "data.auto_augment=rand-m9-mstd0.5-inc1", "train.loss=bce"):
        assert paper_reference(_load("configs/se_resnet50.yaml", extra)) is None, extra
    assert paper_reference(_load("configs/modern/se_resnet50_cosine_ls_mixup.yaml")) is None


def test_compare_paper_shows_rsb_per_recipe_beside_the_se_papers_figures():
    configs = [f"configs/rsb/resnet50_{r}.yaml" for r in ("a1", "a2", "a3")] + ["configs/se_resnet50.yaml"]
    proc = subprocess.run(
        [sys.executable, "tools/compare.py", "-c", *configs, "--paper", "--format", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    for recipe, top1 in RSB_TOP1.items():
        row = rows[f"resnet50_{recipe.lower()}"]
        assert row["paper_top1_err"] == pytest.approx(100 - top1)
        assert (
            "ResNet strikes back" in row["paper_source"] and f"procedure {recipe}, top-1 {top1}%" in row["paper_source"]
        )
    assert (rows["resnet50_a1"]["paper_top1_err"], rows["resnet50_a3"]["paper_top1_err"]) == (19.6, 21.9)
    assert rows["se_resnet50"]["paper_top1_err"] == 23.29 and "Hu et al." in rows["se_resnet50"]["paper_source"]
    # A3 is counted at its test resolution, 224 px, not the 160 it trains at
    assert rows["resnet50_a3"]["gmacs"] == rows["resnet50_a1"]["gmacs"] and rows["resnet50_a3"]["input_size"] == 224
    table = format_rows(list(rows.values()))
    assert "paper figures for resnet50_a2: Wightman, Touvron and Jégou" in table
    assert "paper figures for se_resnet50: Hu et al." in table


def test_an_rsb_config_trains_from_the_command_line(tmp_path):
    """A3 as a user starts it, shrunk to a few synthetic images: LAMB, BCE with its threshold, mixup and CutMix,
    RandAugment, the 0.95 crop ratio (here floor(32 / 0.95) = 33 px, which synthetic data ignores) all run."""
    out = tmp_path / "run"
    tiny = ["model.num_classes=4", "data.name=synthetic", "data.image_size=32", "data.eval_crop=32"]
    tiny += ["data.synthetic_train_size=16", "data.synthetic_val_size=8", "data.batch_size=8", "data.num_workers=0"]
    proc = subprocess.run(
        [sys.executable, "tools/train.py", "-c", "configs/rsb/se_resnet50_a3.yaml", "-o", *tiny, "train.epochs=1"]
        + [f"output_dir={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["finished"] and metrics["global_step"] == 2
    assert 0 < metrics["history"][0]["train_loss"] < 1  # BCE over 4 classes: about log 2 per class at the start


def test_build_rows_paper_leaves_the_twins_without_a_figure():
    rows = build_rows([os.path.join(ROOT, "configs/rsb/eca_resnet50_a1.yaml")], [], [], paper=True)
    assert rows[0]["paper_top1_err"] is None and rows[0]["paper_source"] is None


# Every augmentation and regulariser of issue 25 on at once, on test_reliability's tiny run (64 synthetic 16 px
# images, batch 16, 2 epochs). Repeated augmentation keeps 4 steps per epoch: below 256 images timm's sampler
# takes the dataset's size per epoch, 3 copies of each of a third of the images.
EVERYTHING = [
    "data.auto_augment=rand-m9-mstd0.5-inc1",
    "data.random_erasing.prob=0.5",
    "data.repeated_aug=3",
    "model.drop_path_rate=0.2",
    "train.mixup.alpha=0.2",
    "train.mixup.cutmix_alpha=1.0",
    "train.label_smoothing=0.1",
    "train.loss=bce",
    "train.bce_target_thresh=0.2",
    "optimizer.name=lamb",
    "optimizer.lr=0.02",
    "optimizer.weight_decay=0.02",
    "optimizer.no_weight_decay_on_bn_bias=true",
    "optimizer.clip_grad_norm=1.0",
]


def test_a_run_with_every_augmentation_resumed_mid_epoch_is_bitwise_identical(tmp_path):
    """Stopped at step 6 (epoch 2, batch 2 of 4) and resumed, the run ends with the uninterrupted run's weights,
    bit for bit: same machine, same threads (senet/numerics.py, rule 1)."""
    train = build_dataset(tiny_cfg(tmp_path / "reference", *EVERYTHING), "train")
    assert train.policy is not None and train.erasing is not None  # the per-sample ones are really on
    reference = fit_here(tiny_cfg(tmp_path / "reference", *EVERYTHING))
    assert reference["finished"] and reference["global_step"] == 8
    stopped = fit_here(tiny_cfg(tmp_path / "resumed", *EVERYTHING, "train.max_steps=6"))
    assert stopped["stopped_by"] == "max_steps"
    state = load_checkpoint(str(tmp_path / "resumed" / "checkpoints" / "last.pdparams"))
    assert (state["epoch"], state["batch_in_epoch"], state["global_step"]) == (1, 2, 6)  # mid-epoch 2
    resumed = fit_here(tiny_cfg(tmp_path / "resumed", *EVERYTHING), resume="auto")
    assert resumed["finished"] and resumed["global_step"] == 8
    assert_same_weights(tmp_path / "reference" / "model.safetensors", tmp_path / "resumed" / "model.safetensors")
    # epoch 1 as it was trained before the stop; epoch 2's evaluation of the same weights. (Epoch 2's train loss
    # is the mean of the steps the resumed run trained, 7 and 8, so it is not compared.)
    assert resumed["history"][0]["train_loss"] == reference["history"][0]["train_loss"]
    for key in ("eval_top1", "eval_loss"):
        assert resumed["history"][-1][key] == reference["history"][-1][key], key
