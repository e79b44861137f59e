"""Config loading: _base_ inheritance, typed -o overrides, and loud errors for every mistake."""

import os

import pytest
import yaml

from senet.config import ConfigError, dump_config, load_config, parse_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(path, data):
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return str(path)


def test_base_is_deep_merged_and_nested(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "root.yaml", {"model": {"arch": "resnet20", "se": {"reduction": 4}}, "data": {"batch_size": 8}})
    write(tmp_path / "sub" / "mid.yaml", {"_base_": "../root.yaml", "model": {"num_classes": 10}})
    leaf = write(tmp_path / "leaf.yaml", {"_base_": "sub/mid.yaml", "model": {"se": {"gate": "tanh"}}})
    cfg = load_config(leaf)
    assert cfg["model"]["arch"] == "resnet20" and cfg["model"]["num_classes"] == 10
    assert cfg["model"]["se"]["reduction"] == 4 and cfg["model"]["se"]["gate"] == "tanh"
    assert cfg["data"]["batch_size"] == 8 and cfg["data"]["num_workers"] == 4  # default filled in
    assert cfg["name"] == "leaf" and cfg["output_dir"] == os.path.join("output", "leaf")


def test_overrides_are_typed_yaml_values():
    cfg = load_config(None, ["model.se.reduction=8", "optimizer.lr=1", "model.se.stages=[2, 3]",
                             "train.amp.enabled=false", "model.stride_in_1x1=true", "data.mean=[0.5, 0.5, 0.5]"])
    assert cfg["model"]["se"]["reduction"] == 8
    assert cfg["optimizer"]["lr"] == 1.0 and isinstance(cfg["optimizer"]["lr"], float)  # int widens to float
    assert cfg["model"]["se"]["stages"] == [2, 3]
    assert cfg["train"]["amp"]["enabled"] is False and cfg["model"]["stride_in_1x1"] is True
    assert load_config(None, ["optimizer.weight_decay=1e-4"])["optimizer"]["weight_decay"] == 1e-4  # YAML 1.1 str


def test_overrides_are_never_evaluated():
    cfg = load_config(None, ["name=__import__('os').system('false')"])
    assert cfg["name"] == "__import__('os').system('false')"


@pytest.mark.parametrize("override, message", [
    ("model.se.reductoin=8", "unknown config key 'model.se.reductoin'. Did you mean 'model.se.reduction'?"),
    ("optimiser.lr=0.1", "unknown config key 'optimiser'. Did you mean 'optimizer'?"),
    ("model.se.reduction=eight", "model.se.reduction must be int"),
    ("model.se.reduction=2.5", "model.se.reduction must be int"),
    ("train.amp.enabled=1", "train.amp.enabled must be bool"),
    ("model.se.impl=dense", "model.se.impl: 'dense' is not one of conv, linear"),
    ("model.stride_in_1x1=3", "model.stride_in_1x1 must be bool or null"),
    ("model.se=4", "model.se must be a section"),
    ("model.se.reduction", "has no '='"),
])
def test_bad_overrides_are_clear_errors(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(str(tmp_path / "nope.yaml"))
    a = write(tmp_path / "a.yaml", {"_base_": "b.yaml"})
    write(tmp_path / "b.yaml", {"_base_": "a.yaml"})
    with pytest.raises(ConfigError, match="circular _base_"):
        load_config(a)
    missing = write(tmp_path / "c.yaml", {"_base_": "gone.yaml"})
    with pytest.raises(ConfigError, match=r"gone.yaml \(the _base_ of .*c.yaml\)"):
        load_config(missing)
    typo = write(tmp_path / "d.yaml", {"modle": {"arch": "resnet50"}})
    with pytest.raises(ConfigError, match="unknown config key 'modle'. Did you mean 'model'"):
        load_config(typo)
    bad = write(tmp_path / "e.yaml", "model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_parse_overrides_nests_keys():
    assert parse_overrides(["a.b=1", "a.c=x y", "d="]) == {"a": {"b": 1, "c": "x y"}, "d": ""}


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(os.path.join(ROOT, "configs", "se_resnet50.yaml"), ["model.se.reduction=8"])
    dump_config(cfg, str(tmp_path / "run" / "config.yaml"))
    assert load_config(str(tmp_path / "run" / "config.yaml")) == cfg


def test_main_configs_differ_only_in_architecture():
    plain = load_config(os.path.join(ROOT, "configs", "resnet50.yaml"))
    se = load_config(os.path.join(ROOT, "configs", "se_resnet50.yaml"))
    assert plain["model"].pop("arch") == "resnet50" and se["model"].pop("arch") == "se_resnet50"
    for cfg in (plain, se):
        cfg.pop("name"), cfg.pop("output_dir")
    assert plain == se
    assert se["optimizer"] == {"name": "momentum", "lr": 0.1, "momentum": 0.9, "nesterov": False,
                               "weight_decay": 1e-4, "no_weight_decay_on_bn_bias": False}
    assert se["lr_scheduler"]["step_size"] == 30 and se["train"]["epochs"] == 100
