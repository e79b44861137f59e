"""Configs: YAML files with one level of `_base_`, typed `-o key=value` overrides, validation.

Every key the harness understands is in DEFAULTS below, with its type implied by its default
(or stated in NULLABLE for keys whose default is null). A key that is not there is an error that
names it and suggests the closest known key, so a typo can never be silently ignored.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import functools
import math
import os
import re
import sys
from typing import Any

import yaml

from senet.attention_options import SECTIONS as ATTENTION_SECTIONS
from senet.attention_options import config_tables
from senet.augment_policy import parse_policy
from senet.limits import open_regular, regular_file_problem

# One commented dict of every setting. Units are in the comments.
DEFAULTS: dict[str, Any] = {
    "name": "",  # run name shown in tables; empty means the config file's stem
    "output_dir": "",  # checkpoints, logs, VisualDL events, metrics.json; empty means output/<name>
    "model": {
        "arch": "resnet50",  # see senet.resnet.MODELS; prefix se_, eca_ or cbam_ for attention; ppim.<name> for ppim
        "num_classes": 1000,
        "stride_in_1x1": None,  # null: each arch's original (true for ResNet, false for ResNeXt)
        "stem_pool": None,  # caffe (3x3/2, no pad, ceil) | pytorch (3x3/2, pad 1); null: each arch's original
        # a ReLU after each residual branch's last BN, before SE and the sum (timm's legacy_seresnet18/34)
        "branch_relu": False,
        # a 1x1 conv + BN shortcut on stage 1's first block, not an identity (PaddleClas's ResNet18/34)
        "first_block_projection": False,
        "zero_init_residual": False,  # every residual branch starts at 0: its last BN gamma (pre-activation: last conv)
        # stochastic depth: while training, block k of the net's N (0-based) drops its residual branch, attention
        # block included, with probability rate * k / (N - 1) (timm's rule); 0 = off. Never in eval or exports
        "drop_path_rate": 0.0,
        "sync_bn": False,  # synchronised BatchNorm across devices (multi-device training)
        "weights": None,  # a checkpoint (.pdparams), a .safetensors file, or a run folder (its model.safetensors)
        "trust_pickle": False,  # allow .pdparams pickles from outside this project (unpickling can run code)
        # model.se, model.eca, model.cbam: each attention block's options (senet.attention_options),
        # added below from the options classes, which are their only source.
    },
    "data": {
        "name": "imagenet",  # imagenet | cifar10 | cifar100 | digits | synthetic
        "root": "data/ILSVRC2012",
        "train_list": None,  # optional "relative/path.jpg label" list files
        "val_list": None,
        "batch_size": 32,  # per device
        "num_workers": 4,  # loader worker processes (DALI: its CPU threads)
        # paddle: paddle.io.DataLoader, decoding with OpenCV in worker processes. dali: NVIDIA DALI
        # (make install DALI=1), decoding on the GPU where there is one; image folders only, with the
        # same files, shards, crops and flips (senet/data/dali.py, docs/data.md)
        "loader": "paddle",
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
        # CIFAR: a tarball under its official name must have the published MD5 (false: use it anyway,
        # e.g. scripts/make_fake_data.py's stand-ins, or a repacked copy whose numbers you accept)
        "verify_md5": True,
        # Weights record their class list (checkpoints, model.safetensors, exports). Resume, eval,
        # export and training from model.weights on data whose classes differ (added, missing, or
        # reordered: a renamed class folder) are refused; true accepts it (fine-tuning on new classes).
        "allow_class_change": False,
        "synthetic_train_size": 1024,  # images in the synthetic train split
        "synthetic_val_size": 256,
        # Modern recipes' per-sample augmentations, off by default (senet/data/augment.py, docs/data.md).
        # A policy string: timm's RandAugment (rand-m9-mstd0.5-inc1), AutoAugment's ImageNet policies
        # (original, v0, their r variants; -mstd0.5 optional) or ta_wide (TrivialAugment wide); null = off
        "auto_augment": None,
        "random_erasing": {  # timm's RandomErasing, after the policy and colour jitter
            "prob": 0.0,  # per image; 0 = off
            "min_area": 0.02,  # area of the erased boxes, as a fraction of the image (split over the count)
            "max_area": 0.3333333333333333,
            "min_aspect": 0.3,  # box aspect ratio log-uniform in [min_aspect, 1 / min_aspect]
            "mode": "pixel",  # pixel: N(0, 1) noise per pixel | rand: one N(0, 1) colour per box | const: the mean
            "min_count": 1,  # boxes per erased image, uniform in min_count..max_count
            "max_count": 1,
        },
        "repeated_aug": 1,  # timm's repeated augmentation: each train image k times per epoch; 1 = off
        # eval: timm's crop_pct, the other way to give data.eval_resize: floor(eval_crop / crop_pct);
        # null = eval_resize as given
        "crop_pct": None,
    },
    "optimizer": {
        "name": "momentum",  # momentum | sgd | adamw | lamb (senet.optim)
        "lr": 0.1,  # per 256 images; scaled linearly with the global batch
        "momentum": 0.9,
        "nesterov": False,
        # momentum, sgd: L2 added to the gradient; adamw: decoupled (p -= lr wd p); lamb: added to the update
        "weight_decay": 1e-4,
        "no_weight_decay_on_bn_bias": False,  # no decay on 1-D tensors: every BN scale and shift and every bias
        "betas": [0.9, 0.999],  # adamw, lamb: decay rates of the gradient's first and second moments
        "eps": None,  # adamw, lamb: added to the denominator; null: each one's default (adamw 1e-8, lamb 1e-6)
        "clip_grad_norm": 0.0,  # clip the gradients' global L2 norm to this, after AMP unscaling; 0 = off
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
        "label_smoothing": 0.0,  # with train.mixup on, folded into the mixed targets (applied once)
        # ce: cross-entropy | soft_ce: timm's soft-target cross-entropy (the same value) | bce: binary
        # cross-entropy per class on the (soft) one-hot targets, as timm's (senet.losses). Eval: always ce
        "loss": "ce",
        "bce_target_thresh": None,  # bce: targets above this become 1, the others 0 (RSB: 0.2); null: as they are
        # Mixup and CutMix on the device, as timm's Mixup (senet.mixup); off unless an alpha or cutmix_minmax is set
        "mixup": {
            "alpha": 0.0,  # mixup: lambda ~ Beta(alpha, alpha); 0 = no mixup
            "cutmix_alpha": 0.0,  # CutMix: lambda ~ Beta(cutmix_alpha, cutmix_alpha); 0 = no CutMix
            "cutmix_minmax": None,  # [min, max]: CutMix box sides drawn as these fractions of the image side instead
            "prob": 1.0,  # probability of mixing a batch (pair, image) at all
            "switch_prob": 0.5,  # with both alphas set: probability of CutMix, else mixup
            "mode": "batch",  # batch | pair | elem: one draw per batch, per mirrored pair of images, per image
            "correct_lam": True,  # CutMix: lambda = the share of the image left once the box is clipped to it
        },
        "amp": {
            "enabled": True,  # GPU only; on a CPU a one-line notice, then fp32
            "level": "O1",  # O1 | O2
            "dtype": "float16",  # float16 | bfloat16
            "init_loss_scaling": 65536.0,
            "dynamic": True,
            "eval": False,  # evaluate under autocast too; by default eval runs in fp32 (under O2 in the AMP dtype)
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
        # with skip and no loss scaler: non-finite steps tolerated in the run before stopping;
        # with a loss scaler (fp16 AMP on a GPU): overflow-skipped steps tolerated in a row
        "nan_skip_limit": 10,
        "log_se_every": 0,  # iterations: SE gate histograms to VisualDL, 0 = off
        "max_steps": 0,  # stop after this many iterations in total, 0 = no limit (smoke runs)
    },
}

# Keys whose default is null, with the type a set value must have.
NULLABLE: dict[str, tuple[type, ...]] = {
    "model.stride_in_1x1": (bool,),
    "model.stem_pool": (str,),
    "model.weights": (str,),
    "data.train_list": (str,),
    "data.val_list": (str,),
    "data.auto_augment": (str,),
    "data.crop_pct": (float,),
    "optimizer.eps": (float,),
    "train.bce_target_thresh": (float,),
    "train.mixup.cutmix_minmax": (list,),
}

# Keys whose value must be one of a fixed set.
CHOICES: dict[str, tuple[str, ...]] = {
    "model.stem_pool": ("caffe", "pytorch"),  # null (each arch's original) is also allowed
    "data.name": ("imagenet", "cifar10", "cifar100", "digits", "synthetic"),
    "data.on_bad_image": ("error", "skip"),
    "data.loader": ("paddle", "dali"),
    "data.random_erasing.mode": ("pixel", "rand", "const"),
    "optimizer.name": ("momentum", "sgd", "adamw", "lamb"),
    "lr_scheduler.name": ("step", "multistep", "cosine"),
    "train.amp.level": ("O1", "O2"),
    "train.amp.dtype": ("float16", "bfloat16"),
    "train.data_format": ("NCHW", "NHWC"),
    "train.nan_policy": ("stop", "skip"),
    "train.loss": ("ce", "soft_ce", "bce"),
    "train.mixup.mode": ("batch", "pair", "elem"),
}


class Range:
    """Allowed values of a number: lo..hi, inclusive unless `lo_open`/`hi_open`; None means unbounded."""

    def __init__(
        self, lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False
    ) -> None:
        self.lo, self.hi, self.lo_open, self.hi_open = lo, hi, lo_open, hi_open

    def __contains__(self, x: float) -> bool:
        if self.lo is not None and (x <= self.lo if self.lo_open else x < self.lo):
            return False
        return self.hi is None or (x < self.hi if self.hi_open else x <= self.hi)

    def __str__(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo}"
        return f"in {'(' if self.lo_open else '['}{self.lo}, {self.hi}{')' if self.hi_open else ']'}"


ANY_COUNT, POSITIVE, FRACTION = Range(0), Range(1), Range(0.0, 1.0)
BELOW_ONE, ABOVE_ZERO = Range(0.0, 1.0, hi_open=True), Range(0.0, lo_open=True)
PIXELS = Range(8, 4096)  # an image side: below 8 pixels nothing is left to learn; above 4096 a batch needs GBs

# The range of every numeric setting (a test checks that none is missing). For a list, the range
# holds for each item. Values outside are refused by name, so a typo such as epochs -1 or std 0 stops
# the run at once instead of giving an untrained "finished" model or a framework traceback.
RANGES: dict[str, Range] = {
    "model.num_classes": Range(1, 1_000_000),
    "model.drop_path_rate": BELOW_ONE,  # 1 would drop the last block's branch always, and scale it by 1/0
    "data.batch_size": Range(1, 65536),
    "data.num_workers": Range(0, 256),
    "data.image_size": PIXELS,
    "data.eval_resize": PIXELS,
    "data.eval_crop": PIXELS,
    "data.mean": FRACTION,  # on the 0..1 scale: 123.7 means the 0..255 scale was meant
    "data.std": Range(0.0, 1.0, lo_open=True),  # divides the image
    "data.rrc_scale": Range(0.0, 1.0, lo_open=True),
    "data.rrc_ratio": Range(0.0, 100.0, lo_open=True),
    "data.hflip": FRACTION,
    "data.color_jitter": FRACTION,
    "data.pad_crop": Range(0, 256),
    "data.random_erasing.prob": FRACTION,
    "data.random_erasing.min_area": Range(0.0, 1.0, lo_open=True),
    "data.random_erasing.max_area": Range(0.0, 1.0, lo_open=True),
    "data.random_erasing.min_aspect": Range(0.0, 1.0, lo_open=True),  # the upper bound is 1 / min_aspect
    "data.random_erasing.min_count": Range(1, 100),
    "data.random_erasing.max_count": Range(1, 100),
    "data.repeated_aug": Range(1, 64),
    "data.crop_pct": Range(0.0, 1.0, lo_open=True),
    "data.synthetic_train_size": Range(1, 1_000_000),
    "data.synthetic_val_size": Range(1, 1_000_000),
    "optimizer.lr": ABOVE_ZERO,
    "optimizer.momentum": BELOW_ONE,
    "optimizer.weight_decay": BELOW_ONE,
    "optimizer.betas": BELOW_ONE,
    "optimizer.eps": ABOVE_ZERO,
    "optimizer.clip_grad_norm": Range(0.0),  # 0: off
    "lr_scheduler.warmup_epochs": Range(0.0),
    "lr_scheduler.step_size": POSITIVE,
    "lr_scheduler.milestones": ANY_COUNT,
    "lr_scheduler.gamma": Range(0.0, 1.0, lo_open=True),
    "train.epochs": Range(1, 1_000_000),
    "train.label_smoothing": BELOW_ONE,
    "train.bce_target_thresh": BELOW_ONE,
    "train.mixup.alpha": Range(0.0),
    "train.mixup.cutmix_alpha": Range(0.0),
    "train.mixup.cutmix_minmax": Range(0.0, 1.0, lo_open=True),
    "train.mixup.prob": FRACTION,
    "train.mixup.switch_prob": FRACTION,
    "train.amp.init_loss_scaling": ABOVE_ZERO,
    "train.ema.decay": BELOW_ONE,
    "train.eval_every": ANY_COUNT,  # 0: never (but the last epoch is always evaluated)
    "train.log_every": POSITIVE,
    "train.save_every": ANY_COUNT,  # 0: no numbered checkpoints
    "train.save_every_steps": ANY_COUNT,
    "train.seed": Range(0, 2**32 - 1),  # numpy's seed range
    "train.threads": Range(0, 1024),
    "train.keep_last": ANY_COUNT,  # 0: keep every numbered checkpoint
    "train.nan_skip_limit": ANY_COUNT,
    "train.log_se_every": ANY_COUNT,
    "train.max_steps": ANY_COUNT,
}
# Lists with a fixed length, and the type of their items (other lists hold ints).
LIST_SHAPES: dict[str, tuple[type, int | None]] = {
    "lr_scheduler.milestones": (int, None),
    "data.mean": (float, 3),
    "data.std": (float, 3),
    "data.rrc_scale": (float, 2),
    "data.rrc_ratio": (float, 2),
    "optimizer.betas": (float, 2),
    "train.mixup.cutmix_minmax": (float, 2),
}


def add_attention_section(name: str, options: type) -> None:
    """Declare the config section model.<name> from an attention block's options class (its fields,
    defaults and rules; senet.attention_options). senet.attention.register calls it for a new block."""
    tables, key = config_tables(options), f"model.{name}."
    ATTENTION_SECTIONS[name] = options
    DEFAULTS["model"][name] = dict(tables.defaults)
    CHOICES.update({key + k: v for k, v in tables.choices.items()})
    RANGES.update({key + k: Range(lo, hi) for k, (lo, hi) in tables.ranges.items()})
    NULLABLE.update({key + k: (v,) for k, v in tables.null_types.items()})
    LIST_SHAPES.update({key + k: (v, None) for k, v in tables.list_items.items()})


def remove_attention_section(name: str) -> None:
    """Undo add_attention_section (senet.attention.unregister)."""
    ATTENTION_SECTIONS.pop(name, None)
    DEFAULTS["model"].pop(name, None)
    for table in (CHOICES, RANGES, NULLABLE, LIST_SHAPES):
        for key in [k for k in table if k.startswith(f"model.{name}.")]:
            del table[key]


for _name, _options in list(ATTENTION_SECTIONS.items()):
    add_attention_section(_name, _options)

# Settings a resumed run may change: how the run is executed, evaluated or recorded, not what it
# trains. Changing any other one (the model, the training data and its augmentation, the optimizer,
# the LR schedule, the batch size or device count, the loss, EMA, AMP, the seed) makes another
# experiment, and resuming with it needs --allow-config-change. A key is listed whole or by section.
RESUME_MAY_CHANGE = (
    "name",
    "output_dir",
    "model.weights",
    "model.trust_pickle",  # weights: the checkpoint replaces them
    "data.num_workers",
    "data.on_bad_image",  # augmentation is seeded per sample, not per worker
    "data.verify_md5",
    "data.allow_class_change",  # checks of the data, not the data (classes: checked apart)
    "data.loader",  # the same crops and flips either way; only the resize filter differs
    "data.val_list",
    "data.synthetic_val_size",
    "data.eval_resize",
    "data.eval_crop",
    "data.crop_pct",  # eval only
    "train.epochs",
    "train.eval_every",
    "train.log_every",
    "train.save_every",
    "train.save_every_steps",
    "train.threads",
    "train.keep_last",
    "train.nan_policy",
    "train.nan_skip_limit",
    "train.log_se_every",
    "train.max_steps",
    "train.data_format",
    "train.amp.eval",
)


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class ConfigError(ValueError):
    """A config that cannot be used; the message says what is wrong and how to fix it."""


# Bounds on one YAML document. A config is a few KB with about 100 values; without a bound, nested
# aliases (a "billion laughs" file of a few hundred bytes) expand into 10^9 values when the config is
# copied or saved, which never ends. Counted before anything is built from the file.
MAX_YAML_SIZE = 1_000_000  # characters, counting every alias expanded (and each value as at least 1)
MAX_YAML_DEPTH = 50  # nested lists and mappings


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader that also bounds nesting and alias expansion, refuses duplicate keys
    (plain YAML lets the last one win silently) and keys that are not strings (`yes:` is a bool), and
    reads numbers as YAML 1.2 does (below)."""

    depth = 0

    def compose_node(self, parent, index):
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise ConfigError(
                    f"{mark.name}:{mark.line + 1}: nested more than {MAX_YAML_DEPTH} levels deep; a config needs a few"
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _check_expanded_size(node)
        return node

    def construct_mapping(self, node, deep=False):
        seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` merges, then keys may override
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            where = f"{key_node.start_mark.name}:{line}"
            if not isinstance(key, str):
                raise ConfigError(
                    f"{where}: the key {key!r} ({type(key).__name__}) is not a string "
                    f"(YAML reads yes/no/on/off/null and numbers that way); quote it or rename it"
                )
            if key in seen:
                raise ConfigError(f"{where}: duplicate key '{key}' (first on line {seen[key]}); keep only one")
            seen[key] = line
        return super().construct_mapping(node, deep)


# PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent: 1e-4, 5e3 and .5e0 are
# strings there, so `-o data.mean=[.5,.5,.5e0]` was refused as a string. YAML 1.2 (and every other
# parser) reads them as floats; so does this loader, in config files and -o values alike.
_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+\.[0-9]*(?:[eE][-+]?[0-9]+)?|\.[0-9]+(?:[eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+)$"),
    list("-+0123456789."),
)


def _check_expanded_size(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand beyond MAX_YAML_SIZE, or refer to themselves. Each node
    is measured once (memoised), so this takes time linear in the file however far it would expand."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else []
        if children_done:
            on_path.discard(id(node))
            size = max(1, len(node.value)) if isinstance(node, yaml.ScalarNode) else 1
            sizes[id(node)] = size + sum(sizes[id(c)] for c in children)
            if sizes[id(node)] > MAX_YAML_SIZE:
                raise ConfigError(
                    f"{root.start_mark.name}: its aliases (*name) expand to more than "
                    f"{MAX_YAML_SIZE:,} characters, far beyond any config (an alias bomb?); "
                    f"write the values out instead of nesting aliases"
                )
        elif id(node) not in sizes:
            if id(node) in on_path:
                mark = node.start_mark
                raise ConfigError(
                    f"{mark.name}:{mark.line + 1}: an alias refers to the list or mapping that "
                    f"contains it (a recursive YAML structure); a config cannot use one"
                )
            on_path.add(id(node))
            stack.append((node, True))
            stack += [(c, False) for c in children if id(c) not in sizes]


def _read_text(f: Any, name: str) -> str:
    """An open text file's first MAX_YAML_SIZE + 1 characters (safe_yaml refuses more)."""
    try:
        return f.read(MAX_YAML_SIZE + 1)
    except UnicodeDecodeError as e:  # a binary file given as a config
        raise ConfigError(f"{name} is not a text file (byte {e.start:,} is not UTF-8): give a YAML config") from None


def safe_yaml(source: str | Any, name: str | None = None) -> Any:
    """Parse YAML text or an open text file with plain types only and the bounds above. Every error
    is a ConfigError naming `name` (or the file) and, where it helps, the line."""
    name = name or getattr(source, "name", "<yaml>")
    text = source if isinstance(source, str) else _read_text(source, name)
    if len(text) > MAX_YAML_SIZE:
        raise ConfigError(f"{name} is larger than {MAX_YAML_SIZE:,} characters; a config is a few thousand")
    try:
        loader = _ConfigLoader(text)  # checks every character first: a control character fails here
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        raise ConfigError(
            f"{name}:{line}: holds the control character {e.character!r}, which YAML does not allow; remove it"
        ) from None
    loader.name = name
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        raise ConfigError(f"{name} is not valid YAML: {e}") from None
    finally:
        loader.dispose()


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


# How many _base_ files one config may stand on. One level is the norm here (STYLE.md); a chain of
# 1,200 files used to end in RecursionError.
MAX_BASE_DEPTH = 8


@functools.lru_cache(maxsize=128)
def _parse_file_text(text: str, path: str) -> Any:
    """safe_yaml of a config file's text, kept by (text, path): PyYAML's pure-Python parser takes ~5 ms a
    file, and a sweep, compare or test loads the same bases hundreds of times. Keyed by the text, so an
    edited file is parsed again; callers get a deep copy."""
    return safe_yaml(text, path)


def _load_yaml(path: str, chain: tuple[str, ...] = ()) -> dict:
    path = os.path.abspath(path)
    if path in chain:
        raise ConfigError(f"circular _base_: {' -> '.join(chain + (path,))}")
    if len(chain) > MAX_BASE_DEPTH:
        raise ConfigError(
            f"{chain[0]}: its _base_ chain is deeper than {MAX_BASE_DEPTH} files (at {path}); "
            f"merge the settings into fewer files"
        )
    where = f" (the _base_ of {chain[-1]})" if chain else ""
    if os.path.isdir(path):
        saved = os.path.join(path, "config.yaml")  # a run folder holds its resolved config
        hint = f"; its resolved config is {saved}" if os.path.isfile(saved) else ""
        raise ConfigError(f"{path} is a folder, not a config file{where}: give a YAML file{hint}")
    problem = regular_file_problem(path)  # a FIFO or device would block open() or never end
    if problem and problem.missing:
        raise ConfigError(f"config file not found: {path}{where}")
    if problem:
        raise ConfigError(f"config file {path}{where} {problem}: give a YAML file")
    with open(path, encoding="utf-8") as f:
        text = _read_text(f, path)
    cfg = copy.deepcopy(_parse_file_text(text, path))  # raises ConfigError naming the file (and line)
    if cfg is None:  # an empty file (or only comments) is a mistake, not a request for every default
        raise ConfigError(f"config file is empty: {path}{where}; write at least one setting, e.g. model.arch")
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
    if key in CHOICES and value not in CHOICES[key] and not (default is None and value is None):
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
        raise ConfigError(
            f"{key} must be {type(default).__name__} (like the default {default!r}), "
            f"got {type(value).__name__} {value!r}"
        )
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
            out[k] = _check_range(key, _check_value(key, v, defaults[k]))
    if not prefix:
        _check_relations(out)
    return out


def _check_range(key: str, value: Any) -> Any:
    """`value` if it (or, for a list, each item) is finite and within RANGES[key]; list items are typed."""
    if value is None or isinstance(value, (bool, str)):
        return value
    items = value if isinstance(value, list) else [value]
    if isinstance(value, list) and key in LIST_SHAPES:
        item_type, length = LIST_SHAPES[key]
        if length is not None and len(value) != length:
            raise ConfigError(f"{key} must be a list of {length} numbers, got {value!r}")
        for x in items:
            if not (isinstance(x, int) or (item_type is float and isinstance(x, float))) or isinstance(x, bool):
                raise ConfigError(f"{key} must be a list of {item_type.__name__}s, got {value!r}")
        items = [float(x) for x in items] if item_type is float else items
        value = items
    for x in items:
        if isinstance(x, float) and not math.isfinite(x):
            raise ConfigError(f"{key}={value!r} must be a finite number")
        if key in RANGES and x not in RANGES[key]:
            which = f" (item {x!r})" if isinstance(value, list) else ""
            raise ConfigError(f"{key}={value!r} is out of range{which}: it must be {RANGES[key]}")
    return value


def _check_per_sample_augment(d: dict) -> None:
    """data.auto_augment, data.random_erasing and data.crop_pct; crop_pct sets eval_resize (timm's rule)."""
    if d["auto_augment"] is not None:
        try:
            parse_policy(d["auto_augment"])
        except ValueError as e:
            raise ConfigError(f"data.auto_augment={d['auto_augment']!r}: {e}") from None
    erasing = d["random_erasing"]
    for lo, hi in (("min_area", "max_area"), ("min_count", "max_count")):
        if erasing[lo] > erasing[hi]:
            raise ConfigError(
                f"data.random_erasing.{lo}={erasing[lo]} must not exceed data.random_erasing.{hi}={erasing[hi]}"
            )
    if d["crop_pct"] is None:
        return
    resize = math.floor(d["eval_crop"] / d["crop_pct"])  # timm's transforms_imagenet_eval
    if d["eval_resize"] not in (DEFAULTS["data"]["eval_resize"], resize):
        raise ConfigError(
            f"data.crop_pct={d['crop_pct']} means data.eval_resize = floor({d['eval_crop']} / "
            f"{d['crop_pct']}) = {resize}, but data.eval_resize={d['eval_resize']} is set too: "
            f"give one of the two"
        )
    if resize not in RANGES["data.eval_resize"]:
        raise ConfigError(
            f"data.crop_pct={d['crop_pct']} makes data.eval_resize {resize}, out of range: it must "
            f"be {RANGES['data.eval_resize']}"
        )
    d["eval_resize"] = resize


def _check_relations(cfg: dict) -> None:
    """Checks between settings, once every one is in its own range."""
    for name, options in ATTENTION_SECTIONS.items():  # the rules an options class adds (an odd kernel)
        section = dict(cfg["model"][name])
        if section.get("stages") is not None:
            section["stages"] = tuple(section["stages"])
        try:
            options(**section)
        except (TypeError, ValueError) as e:
            raise ConfigError(str(e)) from None
    _check_recipe_relations(cfg)
    d = cfg["data"]
    _check_per_sample_augment(d)
    if d["eval_crop"] > d["eval_resize"]:
        raise ConfigError(f"data.eval_crop ({d['eval_crop']}) must not exceed data.eval_resize ({d['eval_resize']})")
    for key in ("rrc_scale", "rrc_ratio"):
        lo, hi = d[key]
        if lo > hi:
            raise ConfigError(f"data.{key}={d[key]!r}: the first (lowest) value must not exceed the second")


def _check_recipe_relations(cfg: dict) -> None:
    """The batch side of the training recipe: losses and mixup (senet.losses, senet.mixup)."""
    t = cfg["train"]
    if t["bce_target_thresh"] is not None and t["loss"] != "bce":
        raise ConfigError(
            f"train.bce_target_thresh={t['bce_target_thresh']} applies to train.loss=bce only "
            f"(train.loss is {t['loss']}); set train.loss=bce or remove it"
        )
    minmax = t["mixup"]["cutmix_minmax"]
    if minmax is not None and minmax[0] >= minmax[1]:
        raise ConfigError(f"train.mixup.cutmix_minmax={minmax!r}: the first (lowest) value must be below the second")


def _leaves(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_leaves(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


def config_changes(old: dict, new: dict) -> tuple[list[str], list[str]]:
    """What differs from `old` (a checkpoint's config) to `new`, as "key old -> new" lines: (changes
    RESUME_MAY_CHANGE allows, changes that make another experiment). A setting missing from `old`
    (a checkpoint older than the setting) counts as its default; settings since removed are ignored."""
    before, after, defaults = _leaves(old), _leaves(new), _leaves(DEFAULTS)
    # The options of an attention block neither arch has change nothing trained (the demo configs set
    # model.se and model.cbam on every arch, and a run saved before model.cbam existed lacks it).
    used = {_attention_of(before.get("model.arch")), _attention_of(after.get("model.arch"))}
    idle = tuple(f"model.{name}." for name in ATTENTION_SECTIONS if name not in used)
    harmless, different = [], []
    for key, value in after.items():
        was = before.get(key, defaults.get(key))
        if was == value or key.startswith(idle):
            continue
        line = f"{key} {was!r} -> {value!r}"
        allowed = any(key == k or key.startswith(k + ".") for k in RESUME_MAY_CHANGE)
        (harmless if allowed else different).append(line)
    return harmless, different


def _attention_of(arch: Any) -> str | None:
    """ "eca_resnet50" -> "eca"; None for a plain arch."""
    prefix = arch.partition("_")[0] if isinstance(arch, str) else None
    return prefix if prefix in ATTENTION_SECTIONS else None


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
        value = safe_yaml(raw, f"override '{item}'") if raw.strip() else ""
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
    if cfg["model"]["weights"]:
        cfg["model"]["weights"] = weights_file(cfg["model"]["weights"])
    if not cfg["name"]:
        cfg["name"] = os.path.splitext(os.path.basename(path))[0] if path else cfg["model"]["arch"]
    if not cfg["output_dir"]:
        cfg["output_dir"] = os.path.join("output", cfg["name"])
    return cfg


def weights_file(path: str) -> str:
    """`model.weights` as a file: a run folder (or an export folder) means its model.safetensors."""
    if not os.path.isdir(path):
        return path  # a file, or a missing path that the loader reports by name
    final = os.path.join(path, "model.safetensors")
    if os.path.isfile(final):
        return final
    found = sorted(os.path.relpath(f, path) for f in _weights_files_near(path))
    if found:  # an unfinished run: it has checkpoints but no final weights yet
        pick = "checkpoints/last.pdparams" if "checkpoints/last.pdparams" in found else found[0]
        raise ConfigError(
            f"model.weights={path} is a folder without model.safetensors (a run writes it when "
            f"training finishes); it holds {', '.join(found[:8])}"
            f"{' ...' if len(found) > 8 else ''}: give one, e.g. -o model.weights="
            f"{os.path.join(path, pick)}"
        )
    held = sorted(os.listdir(path))
    holds = f"it holds only {', '.join(held[:8])}{' ...' if len(held) > 8 else ''}" if held else "it is empty"
    raise ConfigError(
        f"model.weights={path} is a folder without model.safetensors or checkpoints ({holds}): "
        f"give a .safetensors file or a .pdparams checkpoint"
    )


def _weights_files_near(folder: str, depth: int = 2, budget: int = 10_000) -> list[str]:
    """Weights files (.safetensors, .pdparams) in `folder` and up to `depth` levels below (a run folder's
    checkpoints/, an export's folder), looking at no more than `budget` entries: model.weights=/ must not
    walk the whole file system, nor a folder nested 1,500 deep overflow the stack."""
    found, level, seen = [], [folder], 0
    for _ in range(depth + 1):
        below = []
        for d in level:
            try:
                with os.scandir(d) as entries:
                    for entry in entries:
                        seen += 1
                        if seen > budget:
                            return found
                        if entry.is_dir(follow_symlinks=False):
                            below.append(entry.path)
                        elif entry.name.endswith((".safetensors", ".pdparams")):
                            found.append(entry.path)
            except OSError:
                continue
        level = below
    return found


def dump_config(cfg: dict, path: str) -> None:
    """Write the resolved config, atomically, so the run records exactly what it used."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"  # the trainer's clean-up of interrupted saves removes it if left
    if os.path.lexists(tmp):
        os.remove(tmp)
    # A new file (O_EXCL), never through a link; the rename replaces a link at `path` without following it.
    with os.fdopen(open_regular(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    os.replace(tmp, path)


def split_override_args(values: list[str] | None) -> list[str]:
    """argparse gives `-o a=1 b=2 -o c=3` as [["a=1", "b=2"], ["c=3"]] or flat; normalise to flat."""
    flat: list[str] = []
    for v in values or []:
        flat += v if isinstance(v, list) else [v]
    return flat


def add_config_args(
    parser: argparse.ArgumentParser,
    config_help: str = "YAML config",
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
