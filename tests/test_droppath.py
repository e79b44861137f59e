"""Issue 25: stochastic depth (model.drop_path_rate; senet.layers.DropPath, senet.resnet).

- against timm: timm's drop_path on the same input with its own Bernoulli mask
  (tests/fixtures/recipes/drop_path.npz, scripts/make_mixup_fixtures.py) within float32 noise, and the rate
  of every block of timm's resnet18/50/101 at drop_path_rate 0.2, exactly (the same two IEEE operations);
- the expectation: over a fixed-seed draw of 40,000 samples the mean of the train-mode output is within
  5 standard errors of the input (the standard error from the Bernoulli variance);
- where it acts: in each attention kind's block every sample's output is the block without its branch or
  with its branch (attention included) scaled by 1 / keep, and both happen;
- off in eval (the eval output is the model's without drop path, bit for bit), and the exported Paddle
  Inference graph and ONNX graph hold no random op: the same op types as the export without drop path.
"""

import json
import os

import numpy as np
import paddle
import pytest
from float_checks import assert_within_noise

from senet.config import ConfigError, load_config
from senet.layers import DropPath, drop_path
from senet.numerics import float32_noise
from senet.resnet import BasicBlock, Bottleneck, PreActBottleneck, create_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "recipes", "drop_path.npz")


def block_rates(model):
    blocks = [m for m in model.sublayers() if isinstance(m, (BasicBlock, Bottleneck, PreActBottleneck))]
    return [b.drop_path.rate if b.drop_path is not None else 0.0 for b in blocks]


def test_drop_path_with_timms_mask_gives_timms_output():
    f = np.load(FIXTURE)
    x, mask, rate = f["x"], f["mask"], float(f["rate"])
    assert 0 < mask.sum() < len(mask)
    got = drop_path(paddle.to_tensor(x), rate, keep_mask=paddle.to_tensor(mask)).numpy()
    by_hand = [x.astype(t) * (mask.astype(t) / t(1 - rate)) for t in (np.float32, np.float64)]
    assert_within_noise(got, f["out"], float32_noise(*by_hand), "drop path")


def test_each_block_gets_timms_rate():
    """Block k of N (0-based, across stages) drops with rate * k / (N - 1), as timm's make_blocks."""
    timm_rates = json.loads(str(np.load(FIXTURE)["rates"]))
    rate = timm_rates.pop("drop_path_rate")
    for arch, want in timm_rates.items():
        assert block_rates(create_model(arch, num_classes=10, drop_path_rate=rate)) == want, arch
    for arch in ("resnet20", "se_resnet20", "cbam_resnet20", "resnet164"):  # CIFAR and pre-activation, same rule
        got = block_rates(create_model(arch, num_classes=10, drop_path_rate=rate))
        assert got == [rate * k / (len(got) - 1) for k in range(len(got))], arch
    assert block_rates(create_model("resnet20", num_classes=10)) == [0.0] * 9  # off by default: no DropPath


def test_train_mode_keeps_the_expectation_and_drops_the_share_asked():
    paddle.seed(11)
    rate, n = 0.3, 40_000
    layer = DropPath(rate)
    layer.train()
    out = layer(paddle.ones([n, 2, 1, 1])).numpy()
    kept = out[:, 0, 0, 0] > 0
    assert set(np.unique(out).tolist()) == {0.0, np.float32(1 / (1 - rate))}
    assert np.array_equal(out[:, 0], out[:, 1])  # a whole sample at once
    standard_error = np.sqrt(rate / (1 - rate) / n)  # of the mean of mask / keep, mask ~ Bernoulli(keep)
    assert abs(out.mean() - 1.0) < 5 * standard_error
    assert abs(kept.mean() - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / n)
    layer.eval()
    x = paddle.randn([4, 3, 2, 2])
    assert layer(x) is x


@pytest.mark.parametrize("arch", ["se_resnet20", "eca_resnet20", "cbam_resnet20"])
def test_the_whole_branch_with_its_attention_block_is_dropped_or_scaled(arch):
    """The last block (rate 0.5): with BN in eval mode and only drop path training, each sample's output is
    relu(shortcut) (dropped) or relu(branch / keep + shortcut), the branch read after the attention block."""
    paddle.seed(3)
    model = create_model(arch, num_classes=10, drop_path_rate=0.5)
    block = model.layer3[2]
    assert block.drop_path.rate == 0.5
    model.eval()
    block.drop_path.train()
    seen = {}
    block.se.register_forward_post_hook(lambda layer, inputs, output: seen.update(branch=output.numpy()))
    x = paddle.randn([64, 64, 8, 8])
    with paddle.no_grad():
        out = block(x).numpy()
    shortcut, branch = x.numpy(), seen["branch"]
    dropped, kept = np.maximum(shortcut, 0), np.maximum(branch / 0.5 + shortcut, 0)
    is_dropped = np.abs(out - dropped).max(axis=(1, 2, 3)) == 0
    is_kept = np.abs(out - kept).max(axis=(1, 2, 3)) <= 1e-5 * np.abs(kept).max()
    assert (is_dropped ^ is_kept).all()
    assert 10 < is_dropped.sum() < 54  # both happen (binomial(64, 0.5): outside this with p < 1e-6)


def test_eval_is_the_model_without_drop_path():
    paddle.seed(5)
    plain = create_model("se_resnet20", num_classes=10)
    dropping = create_model("se_resnet20", num_classes=10, drop_path_rate=0.3)
    dropping.set_state_dict(plain.state_dict())  # no parameters or buffers of its own
    assert plain.state_dict().keys() == dropping.state_dict().keys()
    x = paddle.randn([4, 3, 32, 32])
    plain.eval()
    dropping.eval()
    with paddle.no_grad():
        assert np.array_equal(plain(x).numpy(), dropping(x).numpy())
        dropping.train()
        assert not np.array_equal(plain(x).numpy(), dropping(x).numpy())


RANDOM_OPS = ("bernoulli", "random", "dropout", "uniform")


def random_ops(ops):
    return sorted(op for op in ops if any(word in op.lower() for word in RANDOM_OPS))


def test_exported_graphs_hold_no_drop_op(tmp_path):
    """Checked on the Paddle graph first: paddle2onnx aborts the process on a graph with pd_op.bernoulli (what a
    drop path traced in train mode leaves, with the shape and scale ops around it)."""
    import onnx

    from senet.export import graph_ops, save_onnx, save_static

    paddle.seed(7)
    graphs = {}
    for name, rate in (("drop", 0.3), ("plain", 0.0)):
        model = create_model("se_resnet20", num_classes=10, drop_path_rate=rate)
        model.eval()
        prefix = str(tmp_path / name / "model")
        save_static(model, prefix, 32)
        graphs[name] = graph_ops(prefix)
    assert not random_ops(graphs["drop"]), random_ops(graphs["drop"])
    assert graphs["drop"] == graphs["plain"]
    nodes = {}
    for name in graphs:
        save_onnx(str(tmp_path / name / "model"), str(tmp_path / name / "model.onnx"))
        nodes[name] = {node.op_type for node in onnx.load(str(tmp_path / name / "model.onnx")).graph.node}
    assert not random_ops(nodes["drop"]) and nodes["drop"] == nodes["plain"]


def test_bad_rates_are_refused_by_name():
    config = os.path.join(ROOT, "configs", "demo", "se_resnet20_digits.yaml")
    with pytest.raises(ConfigError, match=r"model.drop_path_rate=1.5 is out of range: it must be in \[0.0, 1.0\)"):
        load_config(config, ["model.drop_path_rate=1.5"])
    with pytest.raises(ValueError, match=r"model.drop_path_rate=-0.1 must be in \[0, 1\)"):
        create_model("resnet20", drop_path_rate=-0.1)
