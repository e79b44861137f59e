"""Config loading: _base_ inheritance, typed -o overrides, and loud errors for every mistake."""

import os
import re
import subprocess
import sys

import pytest
import yaml

from senet.config import (
    ATTENTION_SECTIONS,
    CHOICES,
    DEFAULTS,
    LIST_SHAPES,
    RANGES,
    ConfigError,
    config_changes,
    dump_config,
    load_config,
    parse_overrides,
)

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
    cfg = load_config(
        None,
        [
            "model.se.reduction=8",
            "optimizer.lr=1",
            "model.se.stages=[2, 3]",
            "train.amp.enabled=false",
            "model.stride_in_1x1=true",
            "data.mean=[0.5, 0.5, 0.5]",
        ],
    )
    assert cfg["model"]["se"]["reduction"] == 8
    assert cfg["optimizer"]["lr"] == 1.0 and isinstance(cfg["optimizer"]["lr"], float)  # int widens to float
    assert cfg["model"]["se"]["stages"] == [2, 3]
    assert cfg["train"]["amp"]["enabled"] is False and cfg["model"]["stride_in_1x1"] is True
    assert load_config(None, ["optimizer.weight_decay=1e-4"])["optimizer"]["weight_decay"] == 1e-4  # YAML 1.1 str


def test_overrides_are_never_evaluated():
    cfg = load_config(None, ["name=__import__('os').system('false')"])
    assert cfg["name"] == "__import__('os').system('false')"


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.se.reductoin=8", "unknown config key 'model.se.reductoin'. Did you mean 'model.se.reduction'?"),
        ("optimiser.lr=0.1", "unknown config key 'optimiser'. Did you mean 'optimizer'?"),
        ("model.se.reduction=eight", "model.se.reduction must be int"),
        ("model.se.reduction=2.5", "model.se.reduction must be int"),
        ("train.amp.enabled=1", "train.amp.enabled must be bool"),
        ("model.se.impl=dense", "model.se.impl: 'dense' is not one of conv, linear"),
        ("model.stride_in_1x1=3", "model.stride_in_1x1 must be bool or null"),
        ("model.se=4", "model.se must be a section"),
        ("model.se.reduction", "has no '='"),
    ],
)
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
    assert se["optimizer"] == {
        "name": "momentum",
        "lr": 0.1,
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 1e-4,
        "no_weight_decay_on_bn_bias": False,
        "betas": [0.9, 0.999],
        "eps": None,
        "clip_grad_norm": 0.0,
    }
    assert se["lr_scheduler"]["step_size"] == 30 and se["train"]["epochs"] == 100


# ---------------------------------------------------------------- issue 16: ranges, hostile YAML


def _numeric_keys():
    from senet.config import _leaves

    out = []
    for key, default in _leaves(DEFAULTS).items():
        if isinstance(default, bool) or isinstance(default, str):
            continue
        if isinstance(default, (int, float)) or isinstance(default, list) or key in LIST_SHAPES:
            out.append(key)
    return out


def _outside(key, rng):
    """Values just outside `rng`, of the key's type."""
    is_int = isinstance(_default(key), int) or (key in LIST_SHAPES and LIST_SHAPES[key][0] is int)
    step = 1 if is_int else 0.5
    bad = []
    if rng.lo is not None:
        bad.append(rng.lo if rng.lo_open else rng.lo - step)
    if rng.hi is not None:
        bad.append(rng.hi if rng.hi_open else rng.hi + step)
    return bad


def _default(key):
    node = DEFAULTS
    for part in key.split("."):
        node = node[part]
    return node


def test_every_numeric_setting_has_a_range_and_a_value_outside_is_refused_by_name():
    keys = _numeric_keys()
    assert len(keys) > 30 and not [k for k in keys if k not in RANGES], "a numeric setting without a range"
    for key in keys:
        rng, default = RANGES[key], _default(key)
        for bad in _outside(key, rng):
            value = [bad] + list(default[1:]) if isinstance(default, list) else [bad] if key in LIST_SHAPES else bad
            if key in LIST_SHAPES and LIST_SHAPES[key][1] and len(value) != LIST_SHAPES[key][1]:
                value = [bad] * LIST_SHAPES[key][1]
            with pytest.raises(ConfigError) as e:
                load_config(None, [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"])
            message = str(e.value)
            assert message.startswith(f"{key}=") and "out of range" in message and f"it must be {rng}" in message, (
                message
            )


@pytest.mark.parametrize(
    "override, message",
    [  # the values the issue found
        ("train.epochs=-1", "train.epochs=-1 is out of range: it must be in [1, 1000000]"),
        ("train.log_every=0", "train.log_every=0 is out of range: it must be >= 1"),
        ("data.batch_size=0", "data.batch_size=0 is out of range: it must be in [1, 65536]"),
        (
            "data.std=[0, 0.224, 0.225]",
            "data.std=[0.0, 0.224, 0.225] is out of range (item 0.0): it must be in (0.0, 1.0]",
        ),
        ("lr_scheduler.step_size=0", "lr_scheduler.step_size=0 is out of range: it must be >= 1"),
        ("data.num_workers=-1", "data.num_workers=-1 is out of range: it must be in [0, 256]"),
        ("model.num_classes=0", "model.num_classes=0 is out of range: it must be in [1, 1000000]"),
        ("data.image_size=0", "data.image_size=0 is out of range: it must be in [8, 4096]"),
        ("data.mean=[123.7, 116.3, 103.5]", "data.mean=[123.7, 116.3, 103.5] is out of range (item 123.7)"),
        ("optimizer.lr=.nan", "optimizer.lr=nan must be a finite number"),
        ("train.ema.decay=.inf", "train.ema.decay=inf must be a finite number"),
        ("data.mean=[0.5, 0.5]", "data.mean must be a list of 3 numbers, got [0.5, 0.5]"),
        ("lr_scheduler.milestones=[30, x]", "lr_scheduler.milestones must be a list of ints, got [30, 'x']"),
        ("model.se.stages=[true]", "model.se.stages must be a list of ints, got [True]"),
        ("data.eval_crop=288", "data.eval_crop (288) must not exceed data.eval_resize (256)"),
        (
            "data.rrc_scale=[1.0, 0.08]",
            "data.rrc_scale=[1.0, 0.08]: the first (lowest) value must not exceed the second",
        ),
    ],
)
def test_out_of_range_values_name_the_key_the_value_and_the_range(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)


def test_every_shipped_config_is_in_range():
    paths = [
        os.path.join(d, n)
        for d, _, names in os.walk(os.path.join(ROOT, "configs"))
        for n in names
        if n.endswith(".yaml")
    ]
    assert len(paths) > 5
    for path in paths:
        load_config(path)


# 9 levels of 9 aliases, 9^9 = 387 million strings once expanded, inside a list that the schema accepted
# and that a step schedule never reads: before issue 16 it passed validation and hung the first checkpoint save.
BOMB = (
    "lr_scheduler:\n  milestones: ["
    + ", ".join(f"&l{i} [{', '.join([f'*l{i - 1}'] * 9 if i else ['lol'] * 9)}]" for i in range(9))
    + "]\n"
)


def test_an_alias_bomb_is_refused_before_anything_is_built(tmp_path):
    path = write(tmp_path / "bomb.yaml", BOMB)  # about 500 bytes
    assert os.path.getsize(path) < 600
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}: its aliases (*name) expand to more than 1,000,000 characters")
    with pytest.raises(ConfigError, match="expand to more than"):  # the same through an override
        load_config(None, ["lr_scheduler.milestones=" + BOMB.split("milestones: ")[1]])
    # A few aliases, as people write configs, are fine; so are merge keys that then override one value.
    ok = write(
        tmp_path / "ok.yaml",
        "data: &d {batch_size: 8, num_workers: 0}\noptimizer: {lr: &lr 0.2}\nlr_scheduler: {warmup_epochs: *lr}\n",
    )
    assert load_config(ok)["lr_scheduler"]["warmup_epochs"] == 0.2
    merged = write(tmp_path / "merged.yaml", "model:\n  se:\n    <<: {reduction: 4, gate: tanh}\n    gate: relu\n")
    assert load_config(merged)["model"]["se"] == {**DEFAULTS["model"]["se"], "reduction": 4, "gate": "relu"}


def test_an_alias_bomb_from_the_command_line_exits_2_at_once(tmp_path):
    path = write(tmp_path / "bomb.yaml", BOMB)
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "train.py"), "-c", path],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"config error: {path}: its aliases (*name) expand")


@pytest.mark.parametrize(
    "text, message",
    [
        ("a: &x [1, *x]\n", "cfg.yaml:1: an alias refers to the list or mapping that contains it"),
        ("a: " + "[" * 60 + "]" * 60 + "\n", "cfg.yaml:1: nested more than 50 levels deep"),
        (
            "model:\n  arch: resnet20\n  num_classes: 10\n  arch: resnet56\n",
            "cfg.yaml:4: duplicate key 'arch' (first on line 2); keep only one",
        ),
        ("yes: 1\n", "cfg.yaml:1: the key True (bool) is not a string"),
        ("model:\n  1: 2\n", "cfg.yaml:2: the key 1 (int) is not a string"),
        ("null: 1\n", "cfg.yaml:1: the key None (NoneType) is not a string"),
        ("? [a, b]\n: 1\n", "cfg.yaml:1: the key ['a', 'b'] (list) is not a string"),
    ],
)
def test_hostile_yaml_is_refused_naming_the_file_and_line(tmp_path, text, message):
    path = write(tmp_path / "cfg.yaml", text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{tmp_path}/{message}")


def test_duplicate_keys_in_a_base_file_and_in_an_override_are_errors(tmp_path):
    write(tmp_path / "base.yaml", "data:\n  batch_size: 8\n  batch_size: 16\n")
    leaf = write(tmp_path / "leaf.yaml", "_base_: base.yaml\nmodel: {arch: resnet20}\n")
    with pytest.raises(ConfigError, match=r"base.yaml:3: duplicate key 'batch_size' \(first on line 2\)"):
        load_config(leaf)
    with pytest.raises(ConfigError, match=r"override 'model.se=\{reduction: 4, reduction: 8\}':1: duplicate key"):
        load_config(None, ["model.se={reduction: 4, reduction: 8}"])


def test_an_oversized_config_is_refused_before_parsing(tmp_path):
    path = write(tmp_path / "big.yaml", "name: x\n" + "# padding\n" * 200_000)
    with pytest.raises(ConfigError, match="is larger than 1,000,000 characters"):
        load_config(path)


def test_config_changes_split_harmless_from_another_experiment():
    old = load_config(None, ["train.epochs=2", "model.arch=se_resnet50"])
    new = load_config(
        None,
        [
            "train.epochs=5",
            "train.log_every=10",
            "data.num_workers=0",
            "optimizer.lr=0.2",
            "model.se.reduction=8",
            "data.root=/elsewhere",
            "train.seed=1",
            "model.arch=se_resnet50",
        ],
    )
    harmless, different = config_changes(old, new)
    assert harmless == ["data.num_workers 4 -> 0", "train.epochs 2 -> 5", "train.log_every 50 -> 10"]
    assert different == [
        "model.se.reduction 16 -> 8",
        "data.root 'data/ILSVRC2012' -> '/elsewhere'",
        "optimizer.lr 0.1 -> 0.2",
        "train.seed 0 -> 1",
    ]
    del old["train"]["max_steps"]  # a checkpoint older than a setting: it counts as the default
    assert config_changes(old, load_config(None, ["train.epochs=2", "model.arch=se_resnet50"])) == ([], [])


# ---------------------------------------------------------------- issue 13: folders and empty files


def test_a_folder_given_as_config_says_it_is_a_folder(tmp_path):
    with pytest.raises(ConfigError, match=f"{tmp_path} is a folder, not a config file: give a YAML file$"):
        load_config(str(tmp_path))
    write(tmp_path / "config.yaml", {"model": {"arch": "resnet20"}})  # a run folder: point at its config
    with pytest.raises(
        ConfigError, match=f"is a folder, not a config file: .*its resolved config is {tmp_path / 'config.yaml'}"
    ):
        load_config(str(tmp_path))
    (tmp_path / "sub").mkdir()
    leaf = write(tmp_path / "leaf.yaml", {"_base_": "sub"})
    with pytest.raises(ConfigError, match=r"sub is a folder, not a config file \(the _base_ of .*leaf.yaml\)"):
        load_config(leaf)


def test_a_fifo_given_as_config_is_refused_without_opening_it(tmp_path):
    """open() on a FIFO blocks until a writer comes: the config reader must refuse it from its stat alone."""
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=r"is a FIFO \(named pipe\), not a regular file"):
        load_config(str(fifo))  # would hang here if it were opened


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_an_empty_config_file_is_an_error(tmp_path, text):
    path = write(tmp_path / "empty.yaml", text)
    with pytest.raises(ConfigError, match=f"config file is empty: {path}"):
        load_config(path)
    empty_base = write(tmp_path / "leaf.yaml", {"_base_": "empty.yaml", "model": {"arch": "resnet20"}})
    with pytest.raises(ConfigError, match=r"config file is empty: .*empty.yaml \(the _base_ of .*leaf.yaml\)"):
        load_config(empty_base)
    assert load_config(write(tmp_path / "braces.yaml", "{}"))["model"]["arch"] == "resnet50"  # an explicit mapping


def test_weights_given_as_a_run_folder_mean_its_final_weights(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "model.safetensors").write_bytes(b"")
    assert load_config(None, [f"model.weights={run}"])["model"]["weights"] == str(run / "model.safetensors")
    assert load_config(None, [f"model.weights={run}/"])["model"]["weights"] == str(run / "model.safetensors")
    plain = str(run / "checkpoints" / "best.pdparams")  # a file (or a missing path) is left to the loader
    assert load_config(None, [f"model.weights={plain}"])["model"]["weights"] == plain


def test_weights_folder_without_final_weights_lists_what_it_holds(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("last.pdparams", "best.pdparams", "epoch_4.pdparams"):
        (run / "checkpoints" / name).write_bytes(b"")
    (run / "config.yaml").write_text("{}")
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"model.weights={run}"])
    assert str(e.value) == (
        f"model.weights={run} is a folder without model.safetensors (a run writes it when "
        f"training finishes); it holds checkpoints/best.pdparams, checkpoints/epoch_4.pdparams, "
        f"checkpoints/last.pdparams: give one, e.g. -o "
        f"model.weights={run}/checkpoints/last.pdparams"
    )
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(
        ConfigError,
        match=r"other is a folder without model.safetensors or checkpoints \(it holds "
        r"only notes.txt\)",
    ):
        load_config(None, [f"model.weights={tmp_path / 'other'}"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"\(it is empty\)"):
        load_config(None, [f"model.weights={tmp_path / 'empty'}"])


def test_tools_report_folder_config_and_weights_folder_in_one_line(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pdparams").write_bytes(b"")
    cases = [
        ("tools/train.py", ["-c", str(tmp_path)], f"{tmp_path} is a folder, not a config file"),
        (
            "tools/eval.py",
            ["-c", "configs/demo/se_resnet20_digits.yaml", "-o", f"model.weights={run}"],
            "it holds checkpoints/last.pdparams",
        ),
        ("tools/export.py", ["-c", str(write(tmp_path / "e.yaml", ""))], "config file is empty"),
    ]
    for tool, args, message in cases:
        proc = subprocess.run(
            [sys.executable, os.path.join(ROOT, tool), *args], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, (tool, proc.stderr)
        assert proc.stderr.strip().startswith("config error: ") and len(proc.stderr.strip().splitlines()) == 1


def test_every_attention_block_has_its_config_section_with_the_same_defaults():
    """model.se / model.eca / model.cbam are built from the options classes, which senet.attention
    registers: the same sections, defaults and placement choices."""
    import dataclasses

    from senet.attention import REGISTRY
    from senet.attention_options import GATES, IMPLS, PLACEMENTS, SQUEEZES

    assert tuple(ATTENTION_SECTIONS) == tuple(REGISTRY)
    for name, entry in REGISTRY.items():
        assert ATTENTION_SECTIONS[name] is entry.options
        section = DEFAULTS["model"][name]
        defaults = {f.name: f.default for f in dataclasses.fields(entry.options)}
        assert section == defaults, name
        assert CHOICES[f"model.{name}.placement"] == PLACEMENTS
    assert (CHOICES["model.se.impl"], CHOICES["model.se.squeeze"], CHOICES["model.se.gate"]) == (IMPLS, SQUEEZES, GATES)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.eca.kernel_size=4", "model.eca.kernel_size must be odd"),
        ("model.cbam.spatial_kernel=6", "model.cbam.spatial_kernel must be odd"),
        ("model.cbam.reduction=64", "model.cbam.reduction <= 16"),
        ("model.eca.stages=[4]", "model.eca.stages [4]: eca_resnet20 has stages 1-3"),
    ],
)
def test_bad_attention_options_are_refused_by_name(override, message):
    """A rule of the options class alone (an odd kernel) is a config error when the file is read; one
    that needs the network (a stage's width, its stage count) when the model is built."""
    from senet.resnet import build_model

    arch = "eca_resnet20" if "eca" in override else "cbam_resnet20"
    if "odd" in message:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(None, [f"model.arch={arch}", override])
        return
    cfg = load_config(None, [f"model.arch={arch}", "model.num_classes=10", override])
    with pytest.raises(ValueError, match=re.escape(message)):
        build_model(cfg)


def test_resume_ignores_the_options_of_blocks_neither_arch_has():
    """A run saved before model.cbam existed resumes under today's demo config (which sets
    model.cbam.reduction 4 on every arch); a changed setting of the arch's own block still counts."""
    path = os.path.join(ROOT, "configs", "demo", "se_resnet20_digits.yaml")
    new = load_config(path)
    old = {k: v for k, v in new.items()}
    old["model"] = {k: v for k, v in new["model"].items() if k not in ("eca", "cbam")}
    assert config_changes(old, new) == ([], [])
    assert config_changes(old, load_config(path, ["model.eca.kernel_size=5"])) == ([], [])
    assert config_changes(old, load_config(path, ["model.se.reduction=8"]))[1] == ["model.se.reduction 4 -> 8"]
    cbam = load_config(path, ["model.arch=cbam_resnet20"])
    assert "model.cbam.reduction 16 -> 4" in config_changes(old, cbam)[1]  # cbam is used now: the old run had 16


def test_hostile_config_files_are_one_line_errors(tmp_path):
    """Issue 23: a binary -c or _base_, a control character, a 1,200-file _base_ chain, and a deep or
    huge model.weights folder each give one ConfigError naming the file (and line), in bounded time."""
    binary = tmp_path / "weights.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe" + bytes(range(256)))
    with pytest.raises(ConfigError, match=f"{re.escape(str(binary))} is not a text file .byte 0 is not UTF-8"):
        load_config(str(binary))
    child = write(tmp_path / "child.yaml", {"_base_": "weights.yaml", "model": {"arch": "resnet50"}})
    with pytest.raises(ConfigError, match="weights.yaml is not a text file"):
        load_config(str(child))
    for where, text in ((3, "model:\n  arch: resnet50\n  name: a\x07b\n"), (1, "name: \x1b[31mred\n")):
        path = tmp_path / f"ctrl{where}.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=f"{re.escape(str(path))}:{where}: holds the control character"):
            load_config(str(path))
    for n in (10, 1200):  # a chain of n files, each the _base_ of the next (9 files: 8 bases, allowed)
        chain = tmp_path / f"chain{n}"
        chain.mkdir()
        write(chain / "f0.yaml", {"model": {"arch": "resnet50"}})
        for i in range(1, n):
            write(chain / f"f{i}.yaml", {"_base_": f"f{i - 1}.yaml"})
        with pytest.raises(ConfigError, match="_base_ chain is deeper than 8 files"):
            load_config(str(chain / f"f{n - 1}.yaml"))
    ok = tmp_path / "chain_ok"
    ok.mkdir()
    write(ok / "f0.yaml", {"model": {"arch": "resnet50"}})
    for i in range(1, 9):
        write(ok / f"f{i}.yaml", {"_base_": f"f{i - 1}.yaml"})
    assert load_config(str(ok / "f8.yaml"))["model"]["arch"] == "resnet50"  # 8 levels are allowed
    deep = tmp_path / "deep"
    folder = str(deep) + "/d" * 1500
    subprocess.run(["mkdir", "-p", folder], check=True)  # os.makedirs recurses once per level
    try:
        with open(folder + "/lost.pdparams", "wb"):
            pass
        with pytest.raises(ConfigError, match="without model.safetensors or checkpoints .it holds only d."):
            load_config(None, [f"model.weights={deep}"])
    finally:  # shutil.rmtree (pytest's clean-up of old temporary folders) recurses once per level too
        subprocess.run(["rm", "-rf", str(deep)], check=True)
    wide = tmp_path / "wide"  # more entries than the walk looks at: it stops and says what it saw
    for i in range(300):
        os.makedirs(wide / f"d{i:03d}" / "e")
    with pytest.raises(ConfigError, match="without model.safetensors or checkpoints"):
        load_config(None, [f"model.weights={wide}"])


def test_numbers_read_as_yaml_1_2_reads_them(tmp_path):
    """PyYAML (YAML 1.1) reads 1e-4 and .5e0 as strings; configs and -o read them as floats, in lists too."""
    assert parse_overrides(["data.mean=[.5,.5,.5e0]", "optimizer.lr=1e-4", "a=5", "b=-2E3", "c=1."]) == {
        "data": {"mean": [0.5, 0.5, 0.5]},
        "optimizer": {"lr": 1e-4},
        "a": 5,
        "b": -2000.0,
        "c": 1.0,
    }
    cfg = load_config(str(write(tmp_path / "f.yaml", "data:\n  std: [2e-1, .2e0, 0.2]\n")), ["data.mean=[.5,.5,.5e0]"])
    assert cfg["data"]["std"] == [0.2, 0.2, 0.2] and cfg["data"]["mean"] == [0.5, 0.5, 0.5]
    assert parse_overrides(["name=1e5x", "v=1.2.3"]) == {"name": "1e5x", "v": "1.2.3"}  # not numbers: strings
