"""Gate analysis (SE, ECA, CBAM): the recorder is exact and leaves the model alone; the tool writes plots and stats.

Comparisons follow senet/numerics.py: a gate recorded by the hooks and the same gate recomputed by the
same layers are bit for bit; the papers' math by hand (float64) against the float64 twin; another
layout within the measured float32 noise."""

import json
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest
from float_checks import assert_within_noise, float64_twin

from senet.analysis import (
    default_blocks,
    excitation_stats,
    paper_label,
    record_gates,
    resolve_blocks,
    resolve_classes,
)
from senet.attention import CBAMBlock, ECABlock, SEBlock, attention_blocks
from senet.config import load_config
from senet.numerics import SAFETY, float16_step, float32_noise, float32_spacing
from senet.resnet import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHANNELS_20 = [16] * 3 + [32] * 3 + [64] * 3  # se_resnet20: three stages of three blocks
TINY = [
    "model.arch=se_resnet20",
    "model.num_classes=4",
    "model.se.reduction=4",
    "data.name=synthetic",
    "data.image_size=16",
    "data.eval_crop=16",
    "data.synthetic_val_size=24",
    "data.batch_size=8",
    "data.num_workers=0",
    "train.amp.enabled=false",
]


def tiny_model(*extra):
    cfg = load_config(os.path.join(ROOT, "configs", "demo", "se_resnet20_digits.yaml"), TINY + list(extra))
    return cfg, build_model(cfg)


@pytest.mark.parametrize(
    "se",
    [
        ["model.se.impl=conv"],
        ["model.se.impl=linear", "model.se.gate=tanh"],
        ["model.se.squeeze=none"],
        ["model.se.impl=linear", "model.se.squeeze=none"],
        ["model.se.placement=pre", "model.se.stages=[2, 3]"],
    ],
)
def test_record_gates_is_exact_and_leaves_the_model_unchanged(se):
    paddle.seed(0)
    cfg, model = tiny_model(*se)
    x = paddle.randn([3, 3, 16, 16])
    model.train()
    model.layer1.eval()  # a sublayer in its own mode must get it back, not the model's
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    # The reference: s computed from each block's input with the block's own squeeze and excite.
    inputs, handles = {}, []
    for name, block in attention_blocks(model).items():
        handles.append(block.register_forward_pre_hook(lambda layer, args, name=name: inputs.setdefault(name, args[0])))
    model.eval()
    with paddle.no_grad():
        y_plain = model(x).numpy()
    for h in handles:
        h.remove()
    model.train()
    model.layer1.eval()

    gates = record_gates(model, x)

    blocks = attention_blocks(model)
    assert list(gates) == list(blocks) and len(gates) == (6 if "model.se.stages=[2, 3]" in se else 9)
    for name, block in blocks.items():
        s = block.excite(block.squeeze(inputs[name])).numpy()
        s = s.transpose(0, 2, 3, 1) if s.shape[1] == block.channels and s.ndim == 4 else s
        want = s.reshape(3, -1, block.channels).mean(axis=1)
        assert gates[name].shape == (3, block.channels) and gates[name].dtype == np.float32
        np.testing.assert_array_equal(gates[name], want)  # the same layers on the same input
    assert model.training and not model.layer1.training and model.layer2.training
    assert all(not b.gate._forward_post_hooks for b in blocks.values())
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k].numpy()) for k in before)
    model.eval()
    with paddle.no_grad():
        np.testing.assert_array_equal(model(x).numpy(), y_plain)  # the same forward again: the model is unchanged


def test_block_names_follow_the_paper():
    names = [f"layer{i}.{j}.se" for i, n in enumerate((3, 4, 6, 3), 1) for j in range(n)]  # ResNet-50
    picks = default_blocks(names)
    assert [paper_label(n) for n in picks] == ["SE_2_3", "SE_3_4", "SE_4_6", "SE_5_1", "SE_5_2", "SE_5_3"]
    assert resolve_blocks(["SE_4_6", "layer1.0", "layer4.2.se"], names) == ["layer3.5.se", "layer1.0.se", "layer4.2.se"]
    with pytest.raises(ValueError, match="unknown SE block.*SE_6_1"):
        resolve_blocks(["SE_6_1"], names)
    # Other block kinds: the same names, labelled after the kind.
    assert paper_label("layer3.1.se", "ECA") == "ECA_4_2" and paper_label("layer1.0.se", "CBAM") == "CBAM_2_1"
    assert resolve_blocks(["ECA_4_6", "layer1.0"], names, "ECA") == ["layer3.5.se", "layer1.0.se"]
    with pytest.raises(ValueError, match="unknown CBAM block.*SE_4_6.*CBAM_2_1 ... CBAM_5_3"):
        resolve_blocks(["SE_4_6"], names, "CBAM")
    assert resolve_classes(None, [str(i) for i in range(10)]) == [0, 3, 6, 9]
    assert resolve_classes(["cat", "1"], ["airplane", "automobile", "cat"]) == [2, 1]
    with pytest.raises(ValueError, match="unknown class 'dog'"):
        resolve_classes(["dog"], ["airplane", "cat"])


def test_statistics_on_known_values():
    s = np.array([[0.0, 1.0], [0.5, 0.5], [0.02, 0.98], [0.4, 0.6]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1])
    in_sample = np.array([True, True, True, False])  # the last image is an extra of class 1
    rows, arrays = excitation_stats({"layer1.0.se": s}, labels, in_sample, [0, 1])
    (row,) = rows
    assert row["label"] == "SE_2_1" and row["channels"] == 2
    assert row["frac_low"] == pytest.approx(2 / 6) and row["frac_high"] == pytest.approx(2 / 6)
    assert row["mean"] == pytest.approx(0.5) and row["quantiles"]["0.5"] == pytest.approx(0.5)
    # Means of two or three float32 values: within SAFETY spacings of the exact means (a sum of n values
    # rounds n - 1 times, a division once).
    for key, exact in (("all_mean", [0.52 / 3, 2.48 / 3]), ("class_mean", [[0.25, 0.75], [0.21, 0.79]])):
        assert_within_noise(arrays["layer1.0.se/" + key], np.array(exact), float32_spacing(np.array(exact)), key)
    gap = np.abs(arrays["layer1.0.se/class_mean"] - arrays["layer1.0.se/all_mean"]).mean()
    assert row["class_gap"] == pytest.approx(gap)


def run_analyze(*args, tool="analyze_gates.py"):
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", tool), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_analyze_se_is_the_same_tool():
    """tools/analyze_se.py, the name README and older commands use, runs tools/analyze_gates.py."""
    gates, se = run_analyze("--help").stdout, run_analyze("--help", tool="analyze_se.py").stdout
    assert "ECA_4_2" in gates and se == gates


def test_analyze_tool_writes_plots_and_stats(tmp_path):
    out = tmp_path / "analysis"
    proc = run_analyze(
        "-c",
        "configs/demo/se_resnet20_digits.yaml",
        "-o",
        *TINY,
        "--samples",
        "10",
        "--classes",
        "0",
        "3",
        "--per-class",
        "4",
        "--blocks",
        "SE_2_3",
        "layer3.0",
        "--raw",
        "--out",
        str(out),
    )
    assert "notice: no model.weights given" in proc.stdout and "SE_4_3" in proc.stdout
    assert {
        "fig6_class_excitations.png",
        "fig7_depth_distribution.png",
        "se_stats.json",
        "se_stats.npz",
        "summary.txt",
        "excitations.npz",
    } <= set(os.listdir(out))
    for png in ("fig6_class_excitations.png", "fig7_depth_distribution.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / png).stat().st_size > 10_000
    report = json.loads((out / "se_stats.json").read_text())
    meta, rows = report["meta"], report["blocks"]
    assert [r["channels"] for r in rows] == CHANNELS_20 and meta["plot_blocks"] == ["layer1.2.se", "layer3.0.se"]
    assert meta["classes"] == [0, 3] and meta["sample_images"] == 10 and meta["weights"] is None
    n = meta["sample_images"] + meta["extra_images"]
    assert sum(meta["class_images"]) <= n and all(0 < c for c in meta["class_images"])
    for r in rows:
        assert 0 <= r["frac_low"] <= 1 and 0 <= r["frac_high"] <= 1 and 0 < r["mean"] < 1 and r["std"] >= 0
    stats = np.load(out / "se_stats.npz")
    raw = np.load(out / "excitations.npz")
    assert list(stats["blocks"]) == [r["name"] for r in rows]
    for r in rows:
        c = r["channels"]
        assert stats[f"{r['name']}/all_mean"].shape == (c,) and stats[f"{r['name']}/class_mean"].shape == (2, c)
        assert raw[r["name"]].shape == (n, c)
    assert raw["labels"].shape == (n,) and raw["in_sample"].sum() == 10
    assert "class gap" in (out / "summary.txt").read_text()


def test_analyze_loads_weights_and_refuses_models_without_se(tmp_path):
    from senet.analysis import analyze
    from senet.checkpoint import save_safetensors

    paddle.seed(1)
    cfg, model = tiny_model()
    weights = str(tmp_path / "model.safetensors")
    save_safetensors(model, weights)
    cfg["model"]["weights"] = weights
    report = analyze(cfg, samples=100, per_class=0, out_dir=str(tmp_path / "a"), raw=True)
    assert report["meta"]["weights"] == weights and report["meta"]["sample_images"] == 24  # the whole val split
    # The recorded gates are those of the saved model, image for image.
    from senet.data import build_loader, normalize_batch

    want = np.concatenate(
        [
            record_gates(model, normalize_batch(images, cfg["data"]["mean"], cfg["data"]["std"]))["layer3.2.se"]
            for images, _ in build_loader(cfg, "val")
        ]
    )
    got = np.load(report["paths"]["excitations.npz"])["layer3.2.se"]
    # Stored as float16 (senet/numerics.py, rule 4): half a float16 spacing of each gate, plus the float32
    # noise of a gate (values in [0, 1]) recomputed in other batches.
    assert (np.abs(got - want) <= float16_step(want) + SAFETY * float32_spacing(np.ones(1))).all()
    cfg, _ = tiny_model("model.arch=resnet20")
    with pytest.raises(ValueError, match="has no attention blocks with channel gates"):
        analyze(cfg, samples=4, out_dir=str(tmp_path / "b"))


def test_attention_blocks_finds_every_block():
    _, model = tiny_model()
    blocks = attention_blocks(model)
    assert len(blocks) == 9 and all(isinstance(b, SEBlock) for b in blocks.values())
    assert [b.channels for b in blocks.values()] == CHANNELS_20


def sigmoid(a):
    return 1 / (1 + np.exp(-a))


def block_inputs(model, x):
    """Each attention block's input on x, from an eval forward with pre-hooks."""
    inputs, handles = {}, []
    for name, block in attention_blocks(model).items():
        handles.append(block.register_forward_pre_hook(lambda layer, args, name=name: inputs.setdefault(name, args[0])))
    model.eval()
    with paddle.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return inputs


def test_eca_gates_are_the_papers_w():
    """w = sigmoid(C1D_k(mean over H x W)), recomputed in numpy from each block's input and conv weight: the
    recorded gates within the float32 noise of that computation (by hand in float32 against float64)."""
    paddle.seed(0)
    _, model = tiny_model("model.arch=eca_resnet20", "model.eca.stages=[1, 3]")
    x = paddle.randn([3, 3, 16, 16])
    inputs = block_inputs(model, x)
    gates = record_gates(model, x)
    blocks = attention_blocks(model)
    assert list(gates) == list(blocks) and len(blocks) == 6 and all(isinstance(b, ECABlock) for b in blocks.values())

    def by_hand(block, a, dtype):
        y = a.astype(dtype).mean(axis=(2, 3))  # [N, C]
        k = block.kernel_size
        kernel = block.conv.weight.numpy().reshape(k).astype(dtype)
        padded = np.pad(y, ((0, 0), (k // 2, k // 2)))
        conv = np.stack([padded[:, c : c + k] @ kernel for c in range(block.channels)], axis=1)
        return sigmoid(conv)

    for name, block in blocks.items():
        a = inputs[name].numpy()
        want = by_hand(block, a, np.float64)
        assert_within_noise(gates[name], want, float32_noise(by_hand(block, a, np.float32), want), name)
    assert all(not b.gate._forward_post_hooks for b in blocks.values())


def test_cbam_channel_and_spatial_gates_in_either_layout():
    """Channel gates M_c as [N, C] by default; with kinds=None also the spatial map M_s as [N, H*W] under
    "<block>.spatial". The NHWC twin (same weights) records the same values in the same shapes."""
    paddle.seed(0)
    cfg, model = tiny_model("model.arch=cbam_resnet20")
    x = paddle.randn([2, 3, 16, 16])
    inputs = block_inputs(model, x)
    blocks = attention_blocks(model)
    assert all(isinstance(b, CBAMBlock) for b in blocks.values())
    channel = record_gates(model, x)
    every = record_gates(model, x, kinds=None)
    spatial = record_gates(model, x, kinds=("spatial",))
    assert list(channel) == list(blocks) and list(spatial) == [n + ".spatial" for n in blocks]
    assert list(every) == [k for n in blocks for k in (n, n + ".spatial")]
    with paddle.no_grad():
        for name, block in blocks.items():
            m_c = block.channel_attention(inputs[name])
            np.testing.assert_array_equal(channel[name], m_c.numpy().reshape(2, -1))  # the same layers, same input
            # The block scales by M_c through the batch-norm kernel (senet.attention.kernels), this by a
            # multiply: within the float32 noise of M_s, measured against the block's float64 twin.
            m_s = block.spatial_attention(inputs[name] * m_c).numpy().reshape(2, -1)
            twin, in64 = float64_twin(block), inputs[name].astype("float64")
            m_s64 = twin.spatial_attention(in64 * twin.channel_attention(in64)).numpy().reshape(2, -1)
            assert_within_noise(every[name + ".spatial"], m_s, float32_noise(m_s, m_s64), name)
            np.testing.assert_array_equal(every[name], channel[name])
    side = {16: 16, 32: 8, 64: 4}  # the CIFAR stages' maps at a 16 px input
    assert [v.shape for v in spatial.values()] == [(2, side[b.channels] ** 2) for b in blocks.values()]
    twin = build_model({**cfg, "train": {**cfg["train"], "data_format": "NHWC"}})
    twin.set_state_dict(model.state_dict())
    twin_gates = record_gates(twin, x.transpose([0, 2, 3, 1]), kinds=None)
    assert list(twin_gates) == list(every)
    # Another layout sums in another order: within the float32 noise of each gate, measured against the
    # gates of the model's float64 twin (recorded as float32, whose rounding the spacing floor covers).
    gates64 = record_gates(float64_twin(model), x.astype("float64"), kinds=None)
    for key, values in every.items():
        assert_within_noise(twin_gates[key], values, float32_noise(values, gates64[key]), key)


@pytest.mark.parametrize("kind", ["eca", "cbam"])
def test_analyze_names_the_block_kind(kind, tmp_path):
    from senet.analysis import analyze, summary_text

    cfg = load_config(
        os.path.join(ROOT, "configs", "demo", "se_resnet20_digits.yaml"),
        TINY + [f"model.arch={kind}_resnet20", "data.synthetic_val_size=8"],
    )
    report = analyze(cfg, samples=8, per_class=0, blocks=[f"{kind.upper()}_4_3"], out_dir=str(tmp_path))
    meta, rows = report["meta"], report["blocks"]
    assert meta["kind"] == kind.upper() and meta["attention"] == kind and meta["options"] == cfg["model"][kind]
    assert [r["label"] for r in rows][:2] == [f"{kind.upper()}_2_1", f"{kind.upper()}_2_2"]
    assert [r["channels"] for r in rows] == CHANNELS_20 and meta["plot_blocks"] == ["layer3.2.se"]
    text = summary_text(report)
    assert text.startswith(f"{kind.upper()} channel gates of {kind}_resnet20") and "SE_" not in text
