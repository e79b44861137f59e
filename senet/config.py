"""Configs: YAML files with one level of `_base_`, typed `-o key=value` overrides, validation.

Every key the harness understands is in DEFAULTS below, with its type implied by its default
(or stated in NULLABLE for keys whose default is null). A key that is not there is an error that
names it and suggests the closest known key, so a typo can never be silently ignored.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import os
import re
import sys
from typing import Any

import yaml

# One commented dict of every setting. Units are in the comments.
DEFAULTS: dict[str, Any] = {
    "name": "",  # run name shown in tables; empty means the config file's stem
    "output_dir": "",  # checkpoints, logs, VisualDL events, metrics.json; empty means output/<name>
    "model": {
        "arch": "resnet50",  # see senet.resnet.MODELS; prefix se_ for SE; ppim.<name> for ppim
        "num_classes": 1000,
        "stride_in_1x1": None,  # null: each arch's original (true for ResNet, false for ResNeXt)
        "zero_init_residual": False,  # zero the last BN gamma of every residual branch
        "sync_bn": False,  # synchronised BatchNorm across devices (multi-device training)
        "weights": None,  # a checkpoint (.pdparams) or .safetensors file to start from
        "trust_pickle": False,  # allow .pdparams pickles from outside this project (unpickling can run code)
        "se": {
            "reduction": 16,  # r: hidden width is exactly C // r
            "impl": "conv",  # conv: 1x1 convs on the pooled map; linear: Linear on the vector
            "squeeze": "avg",  # avg | max | none (the paper's NoSqueeze ablation)
            "gate": "sigmoid",  # sigmoid | tanh | relu
            "bias": True,  # biases on the two FCs, as in the authors' Caffe release
            "placement": "standard",  # standard | pre | post | identity | after_3x3
            "stages": None,  # list of stage numbers (1-based) that get SE; null: all
        },
    },
    "data": {
        "name": "imagenet",  # imagenet | cifar10 | cifar100 | digits | synthetic
        "root": "data/ILSVRC2012",
        "train_list": None,  # optional "relative/path.jpg label" list files
        "val_list": None,
        "batch_size": 32,  # per device
        "num_workers": 4,  # loader worker processes
        "image_size": 224,  # train crop, pixels
        "eval_resize": 256,  # eval: shorter side resized to this, pixels
        "eval_crop": 224,  # eval: centre crop, pixels
        "mean": [0.485, 0.456, 0.406],  # on the 0..1 scale, RGB
        "std": [0.229, 0.224, 0.225],
        "rrc_scale": [0.08, 1.0],  # random-resized-crop area fraction
        "rrc_ratio": [0.75, 1.3333333333333333],  # random-resized-crop aspect ratio
        "hflip": 0.5,  # horizontal flip probability
        "color_jitter": 0.0,  # brightness/contrast/saturation strength, 0 = off
        "pad_crop": 4,  # CIFAR-style pad-and-random-crop, pixels (CIFAR and digits)
        "on_bad_image": "error",  # error | skip
        "synthetic_train_size": 1024,  # images in the synthetic train split
        "synthetic_val_size": 256,
    },
    "optimizer": {
        "name": "momentum",  # momentum | sgd | adamw
        "lr": 0.1,  # per 256 images; scaled linearly with the global batch
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 1e-4,
        "no_weight_decay_on_bn_bias": False,
    },
    "lr_scheduler": {
        "name": "step",  # step | multistep | cosine; stepped every iteration
        "warmup_epochs": 0.0,  # linear warm-up, epochs
        "step_size": 30,  # epochs, for step
        "milestones": [30, 60, 90],  # epochs, for multistep
        "gamma": 0.1,
    },
    "train": {
        "epochs": 100,
        "label_smoothing": 0.0,
        "amp": {
            "enabled": True,  # GPU only; on a CPU a one-line notice, then fp32
            "level": "O1",  # O1 | O2
            "dtype": "float16",  # float16 | bfloat16
            "init_loss_scaling": 65536.0,
            "dynamic": True,
            "eval": False,  # evaluate under autocast too; by default eval runs in fp32
        },
        "ema": {"enabled": False, "decay": 0.9999},
        "data_format": "NCHW",  # NCHW | NHWC
        "eval_every": 1,  # epochs
        "log_every": 50,  # iterations
        "save_every": 10,  # epochs: keep a numbered checkpoint every N epochs
        "save_every_steps": 0,  # iterations: mid-epoch checkpoints, 0 = off
        "seed": 0,
        "threads": 0,  # CPU threads; 0 = all cores
        "keep_last": 3,  # numbered checkpoints kept
        "nan_policy": "stop",  # stop | skip
        "nan_skip_limit": 10,  # with skip: non-finite steps tolerated before stopping
        "log_se_every": 0,  # iterations: SE gate histograms to VisualDL, 0 = off
        "max_steps": 0,  # stop after this many iterations in total, 0 = no limit (smoke runs)
    },
}

# Keys whose default is null, with the type a set value must have.
NULLABLE: dict[str, tuple[type, ...]] = {
    "model.stride_in_1x1": (bool,),
    "model.weights": (str,),
    "model.se.stages": (list,),
    "data.train_list": (str,),
    "data.val_list": (str,),
}

# Keys whose value must be one of a fixed set.
CHOICES: dict[str, tuple[str, ...]] = {
    "model.se.impl": ("conv", "linear"),
    "model.se.squeeze": ("avg", "max", "none"),
    "model.se.gate": ("sigmoid", "tanh", "relu"),
    "model.se.placement": ("standard", "pre", "post", "identity", "after_3x3"),
    "data.name": ("imagenet", "cifar10", "cifar100", "digits", "synthetic"),
    "data.on_bad_image": ("error", "skip"),
    "optimizer.name": ("momentum", "sgd", "adamw"),
    "lr_scheduler.name": ("step", "multistep", "cosine"),
    "train.amp.level": ("O1", "O2"),
    "train.amp.dtype": ("float16", "bfloat16"),
    "train.data_format": ("NCHW", "NHWC"),
    "train.nan_policy": ("stop", "skip"),
}


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class ConfigError(ValueError):
    """A config that cannot be used; the message says what is wrong and how to fix it."""


def _flat_keys(d: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in d.items():
        keys.append(prefix + k)
        if isinstance(v, dict):
            keys += _flat_keys(v, prefix + k + ".")
    return keys


ALL_KEYS = _flat_keys(DEFAULTS)


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, ALL_KEYS, n=1, cutoff=0.5)
    if not close:  # a typo in the last part only: compare against siblings
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in ALL_KEYS if difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1]], cutoff=0.75)]
    return f" Did you mean '{close[0]}'?" if close else ""


def _load_yaml(path: str, chain: tuple[str, ...] = ()) -> dict:
    path = os.path.abspath(path)
    if path in chain:
        raise ConfigError(f"circular _base_: {' -> '.join(chain + (path,))}")
    if not os.path.isfile(path):
        where = f" (the _base_ of {chain[-1]})" if chain else ""
        raise ConfigError(f"config file not found: {path}{where}")
    with open(path) as f:
        try:
            cfg = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path} must hold a mapping of settings, not {type(cfg).__name__}")
    base = cfg.pop("_base_", None)
    if base is None:
        return cfg
    if not isinstance(base, str):
        raise ConfigError(f"{path}: _base_ must be one path (relative to the file), got {base!r}")
    merged = _load_yaml(os.path.join(os.path.dirname(path), base), chain + (path,))
    return deep_merge(merged, cfg)


def deep_merge(base: dict, over: dict) -> dict:
    """A copy of `base` with `over` merged in; nested dicts merge, everything else replaces."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _check_value(key: str, value: Any, default: Any) -> Any:
    """Return `value` if it fits the type of `default` (ints widen to floats); else raise."""
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(CHOICES[key])}")
    if default is None:
        allowed = NULLABLE.get(key)
        if value is None or allowed is None or isinstance(value, allowed):
            return value
        raise ConfigError(f"{key} must be {' or '.join(t.__name__ for t in allowed)} or null, got {value!r}")
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads "1e-4" (no dot) as a string; it is plainly a number
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(f"{key} must be {type(default).__name__} (like the default {default!r}), "
                          f"got {type(value).__name__} {value!r}")
    return value


def validate(cfg: dict, defaults: dict = DEFAULTS, prefix: str = "") -> dict:
    """Fill in defaults and check every key and type; return the resolved config."""
    out = copy.deepcopy(defaults)
    for k, v in cfg.items():
        key = prefix + k
        if k not in defaults:
            raise ConfigError(f"unknown config key '{key}'.{_suggest(key)}")
        if isinstance(defaults[k], dict):
            if not isinstance(v, dict):
                raise ConfigError(f"{key} must be a section (mapping), got {v!r}")
            out[k] = validate(v, defaults[k], key + ".")
        else:
            out[k] = _check_value(key, v, defaults[k])
    return out


def parse_overrides(overrides: list[str]) -> dict:
    """Turn ["a.b=1", "c=[1, 2]"] into a nested dict. Values are YAML scalars or lists, never eval'd."""
    nested: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' has no '='; write it as -o section.key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override '{item}' has no key before '='")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override '{item}': cannot parse the value: {e}") from None
        node = nested
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with an earlier override of '{p}'")
        node[parts[-1]] = value
    return nested


def load_config(path: str | None, overrides: list[str] | None = None) -> dict:
    """Load a YAML config (with `_base_`), apply `-o` overrides, and validate everything."""
    raw = _load_yaml(path) if path else {}
    raw = deep_merge(raw, parse_overrides(overrides or []))
    cfg = validate(raw)
    if not cfg["name"]:
        cfg["name"] = os.path.splitext(os.path.basename(path))[0] if path else cfg["model"]["arch"]
    if not cfg["output_dir"]:
        cfg["output_dir"] = os.path.join("output", cfg["name"])
    return cfg


def dump_config(cfg: dict, path: str) -> None:
    """Write the resolved config, atomically, so the run records exactly what it used."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    os.replace(tmp, path)


def split_override_args(values: list[str] | None) -> list[str]:
    """argparse gives `-o a=1 b=2 -o c=3` as [["a=1", "b=2"], ["c=3"]] or flat; normalise to flat."""
    flat: list[str] = []
    for v in values or []:
        flat += v if isinstance(v, list) else [v]
    return flat


def add_config_args(parser: argparse.ArgumentParser, config_help: str = "YAML config",
                    override_help: str = "key=value overrides, e.g. -o model.se.reduction=8 data.batch_size=32",
                    ) -> None:
    """The `-c CONFIG -o key=value ...` pair every tool takes."""
    parser.add_argument("-c", "--config", required=True, help=config_help)
    parser.add_argument("-o", "--override", nargs="+", action="append", default=[], help=override_help)


def config_from_args(args: argparse.Namespace) -> dict:
    """The config that -c/-o name. A bad one is reported on stderr as `config error: ...` and the
    tool exits with status 2, the usual code for a command-line mistake."""
    try:
        return load_config(args.config, split_override_args(args.override))
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
