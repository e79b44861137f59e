"""Weights written before model.stem_pool existed padded the stem pool: loading them into a model
with Caffe's unpadded pool (the ResNet default since) is refused, not silently different."""

import paddle
import pytest

from senet.checkpoint import CheckpointError, load_weights, save_safetensors
from senet.config import validate
from senet.resnet import build_model


def _model(stem_pool=None):
    cfg = validate({"model": {"arch": "resnet18", "num_classes": 10, "stem_pool": stem_pool}})
    paddle.seed(0)
    return build_model(cfg), cfg


def test_old_weights_are_refused_by_the_caffe_stem_and_load_with_the_padded_one(tmp_path):
    model, cfg = _model()
    assert model.stem_pool == "caffe"  # a ResNet's original (He et al.'s and the SENet release's)
    old_cfg = {**cfg, "model": {k: v for k, v in cfg["model"].items() if k != "stem_pool"}}
    old = str(tmp_path / "old.safetensors")
    save_safetensors(model, old, {"arch": "resnet18", "config": old_cfg})
    with pytest.raises(
        CheckpointError,
        match=r"old.safetensors was written before model.stem_pool existed.*"
        r"Add -o model.stem_pool=pytorch",
    ):
        load_weights(_model()[0], old)
    padded, _ = _model("pytorch")
    load_weights(padded, old)  # the network they were trained in
    new = str(tmp_path / "new.safetensors")
    save_safetensors(model, new, {"arch": "resnet18", "config": cfg})  # records stem_pool (null: the arch's own)
    load_weights(_model()[0], new)


def test_cifar_models_have_no_stem_pool_to_check(tmp_path):
    cfg = validate({"model": {"arch": "resnet20", "num_classes": 10}})
    model = build_model(cfg)
    assert model.stem_pool is None
    path = str(tmp_path / "old.safetensors")
    old_cfg = {**cfg, "model": {k: v for k, v in cfg["model"].items() if k != "stem_pool"}}
    save_safetensors(model, path, {"arch": "resnet20", "config": old_cfg})
    load_weights(build_model(cfg), path)
