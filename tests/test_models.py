"""Every architecture, with and without SE, and every SE option: shapes, finite values and gradients,
the SE parameter formula, conv/linear equivalence, and clear errors for bad names and options.
Comparisons across code paths follow senet/numerics.py (within the measured float32 noise)."""

import numpy as np
import paddle
import pytest
from float_checks import (
    assert_float64_matches,
    assert_layer_matches,
    assert_within_noise,
    float64_twin,
    layer_noise,
    run,
)

from senet.attention import PLACEMENTS, SEBlock, SEOptions
from senet.attention_options import GATES, SQUEEZES
from senet.config import load_config
from senet.numerics import float32_noise
from senet.profile import attention_param_formula, count_params
from senet.resnet import MODELS, Arch, BasicBlock, Bottleneck, PreActBottleneck, build_model, create_model

CIFAR = [name for name, spec in MODELS.items() if spec.stem == "cifar"]
IMAGENET = [name for name, spec in MODELS.items() if spec.stem == "imagenet"]


def _input_size(arch: str) -> int:
    return 32 if arch.removeprefix("se_") in CIFAR else 64  # 64 px keeps the big ImageNet nets quick


def _check_forward_backward(model: paddle.nn.Layer, size: int, num_classes: int, data_format: str = "NCHW"):
    paddle.seed(0)
    shape = [2, size, size, 3] if data_format == "NHWC" else [2, 3, size, size]
    x = paddle.randn(shape)
    x.stop_gradient = False
    out = model(x)
    assert out.shape == [2, num_classes]
    assert np.isfinite(out.numpy()).all()
    out.mean().backward()
    assert np.isfinite(x.grad.numpy()).all()
    grads = [p for p in model.parameters() if not p.stop_gradient]
    assert all(p.grad is not None for p in grads), "every trainable parameter gets a gradient"
    assert all(np.isfinite(p.grad.numpy()).all() for p in grads)
    # Some gradient must be non-zero (a dead network would pass the finiteness checks).
    assert max(float(np.abs(p.grad.numpy()).max()) for p in grads) > 0


@pytest.mark.parametrize("arch", list(MODELS))
def test_every_architecture_with_and_without_se(arch):
    """Forward/backward of the plain and SE model, and the SE parameter increase by the paper's formula."""
    plain, se = create_model(arch, num_classes=7), create_model("se_" + arch, num_classes=7)
    for model in (plain, se):
        _check_forward_backward(model, _input_size(arch), 7)
    added = count_params(se)[0] - count_params(plain)[0]
    # Independent of the model code: the standard placement puts one SE block per residual block,
    # on that block's output width C; each adds 2*C*(C//r) weights and (C//r + C) biases.
    spec = MODELS[arch]
    widths = (64, 128, 256, 512) if spec.stem == "imagenet" else (16, 32, 64)
    expansion = spec.block.expansion
    expected = sum(
        n * (2 * w * expansion * (w * expansion // 16) + w * expansion // 16 + w * expansion)
        for w, n in zip(widths, spec.layers)
    )
    assert added == expected == attention_param_formula(se)


def test_se_parameter_formula_without_bias_and_other_reduction():
    plain = create_model("resnet50")
    se = create_model("se_resnet50", attention=SEOptions(reduction=8, bias=False))
    added = count_params(se)[0] - count_params(plain)[0]
    expected = sum(n * 2 * c * (c // 8) for c, n in zip((256, 512, 1024, 2048), (3, 4, 6, 3)))
    assert added == expected == attention_param_formula(se)


@pytest.mark.parametrize("squeeze", SQUEEZES)
@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("impl", ["conv", "linear"])
def test_every_squeeze_gate_impl_runs(squeeze, gate, impl):
    model = create_model(
        "se_resnet20", num_classes=10, attention=SEOptions(reduction=4, squeeze=squeeze, gate=gate, impl=impl)
    )
    _check_forward_backward(model, 32, 10)


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("arch", ["se_resnet20", "se_resnet50", "se_resnet164"])
def test_every_placement_runs_on_every_block_type(placement, arch):
    model = create_model(arch, num_classes=5, attention=SEOptions(placement=placement, reduction=4))
    _check_forward_backward(model, _input_size(arch), 5)
    assert attention_param_formula(model) > 0


# The first block of a stage whose shortcut is not the identity (zero-padded for the CIFAR ResNet),
# so that block input, shortcut, branch and sum are different tensors; its branch head (ending at
# the 3x3 conv) and tail; and the activation after the sum (none in a pre-activation block).
PLACEMENT_BLOCKS = {
    "se_resnet20": ("layer2", "conv1", "conv2", paddle.nn.functional.relu),
    "se_resnet50": ("layer1", "conv2", "conv3", paddle.nn.functional.relu),
    "se_resnet164": ("layer1", "conv2", "conv3", lambda t: t),
}


def _trace_block(arch, placement):
    """Run a model once; return the tensors around its first block's SE, by forward hooks."""
    stage, head, tail, act = PLACEMENT_BLOCKS[arch]
    paddle.seed(5)
    model = create_model(arch, num_classes=3, attention=SEOptions(placement=placement, reduction=4))
    model.eval()
    block = getattr(model, stage)[0]
    assert block.shortcut is not None
    seen = {}

    def keep_input(name):
        return lambda layer, inputs: seen.__setitem__(name, inputs[0].numpy())

    def keep_output(name):
        return lambda layer, inputs, output: seen.__setitem__(name, output.numpy())

    hooks = [
        block.register_forward_pre_hook(keep_input("in")),
        block.register_forward_post_hook(keep_output("out")),
        block.se.register_forward_pre_hook(keep_input("se_in")),
        block.se.register_forward_post_hook(keep_output("se_out")),
        block.shortcut.register_forward_post_hook(keep_output("shortcut")),
        block.conv1.register_forward_pre_hook(keep_input("conv1_in")),
        getattr(block, head).register_forward_post_hook(keep_output("head")),
        getattr(block, tail).register_forward_pre_hook(keep_input("tail_in")),
        getattr(block, tail).register_forward_post_hook(keep_output("tail")),
    ]
    if isinstance(block, PreActBottleneck):
        hooks.append(block.preact.register_forward_post_hook(keep_output("preact")))
    with paddle.no_grad():
        model(paddle.randn([2, 3, _input_size(arch), _input_size(arch)]))
    for h in hooks:
        h.remove()
    seen["sum"] = act(paddle.to_tensor(seen["tail"] + seen["shortcut"])).numpy()
    return seen, act


def _same(a, b):
    """Whether two traced tensors are the same tensor: bit for bit, since each is a hooked output or
    an IEEE-rounded sum of hooked outputs (exact on every CPU: senet/numerics.py, rule 1)."""
    return np.array_equal(a, b)


# Which tensor the SE block reads, at each placement (Hu et al., Fig. 5).
SE_INPUT = {"standard": "tail", "pre": "in", "post": "sum", "identity": "shortcut", "after_3x3": "head"}


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("arch", list(PLACEMENT_BLOCKS))
def test_placements_put_se_at_the_right_point_of_the_block(arch, placement):
    """The SE input is one tensor of the block and no other, and its output goes where the placement says.

    standard: the branch's last layer, before the sum; pre: the block input (in a pre-activation
    block, its BN-ReLU output), feeding the branch only; post: the sum (after the ReLU); identity:
    the shortcut, into the sum; after_3x3: the 3x3 conv's output, into the rest of the branch.
    """
    t, act = _trace_block(arch, placement)
    want = SE_INPUT[placement]
    if want == "in" and "preact" in t:
        want = "preact"
    candidates = ("in", "preact", "head", "tail", "shortcut", "sum")
    assert {c for c in candidates if c in t and _same(t[c], t["se_in"])} == {want}
    branch, shortcut = {"standard": ("se_out", "shortcut"), "identity": ("tail", "se_out")}.get(
        placement, ("tail", "shortcut")
    )
    summed = act(paddle.to_tensor(t[branch] + t[shortcut])).numpy()
    assert _same(t["out"], t["se_out"] if placement == "post" else summed)  # what is added, what leaves the block
    assert _same(t["conv1_in"], t["se_out"]) == (placement == "pre")  # SE-PRE feeds the branch, not the shortcut
    assert _same(t["tail_in"], t["se_out"]) == (placement == "after_3x3")
    assert not _same(t["se_in"], t["se_out"])  # the SE really scales: else the checks above could not tell


def test_placements_put_se_on_the_right_width():
    se = SEOptions(reduction=4)

    def se_width(placement):
        model = create_model("se_resnet50", attention=SEOptions(**{**se.__dict__, "placement": placement}))
        return model.layer2[0].se.channels  # first block of stage 2: 256 in, 128 wide, 512 out

    assert se_width("standard") == 512
    assert se_width("post") == 512
    assert se_width("identity") == 512
    assert se_width("pre") == 256
    assert se_width("after_3x3") == 128


def test_stages_option_limits_se_to_chosen_stages():
    model = create_model("se_resnet50", attention=SEOptions(stages=(3,)))
    with_se = {name.split(".")[0] for name, layer in model.named_sublayers() if isinstance(layer, SEBlock)}
    assert with_se == {"layer3"}
    assert count_params(model)[0] - count_params(create_model("resnet50"))[0] == 6 * (2 * 1024 * 64 + 64 + 1024)


def test_plain_model_has_no_se_blocks_and_same_structure():
    plain, se = create_model("resnet50"), create_model("se_resnet50")
    assert not any(isinstance(layer, SEBlock) for layer in plain.sublayers())
    plain_keys = set(plain.state_dict())
    se_keys = {k for k in se.state_dict() if ".se." not in k}
    assert plain_keys == se_keys  # the same network apart from the SE blocks


@pytest.mark.cpu_paths
@pytest.mark.parametrize("squeeze", SQUEEZES)
@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("data_format", ["NCHW", "NHWC"])
def test_conv_and_linear_implementations_agree(squeeze, gate, data_format):
    paddle.seed(1)
    conv = SEBlock(32, SEOptions(reduction=4, impl="conv", squeeze=squeeze, gate=gate), data_format=data_format)
    linear = SEBlock(32, SEOptions(reduction=4, impl="linear", squeeze=squeeze, gate=gate), data_format=data_format)
    # Paddle's Linear weight is [in, out]; the 1x1 conv weight is [out, in, 1, 1].
    linear.fc1.weight.set_value(conv.fc1.weight[:, :, 0, 0].T)
    linear.fc2.weight.set_value(conv.fc2.weight[:, :, 0, 0].T)
    linear.fc1.bias.set_value(paddle.randn([8]))
    conv.fc1.bias.set_value(linear.fc1.bias)
    linear.fc2.bias.set_value(paddle.randn([32]))
    conv.fc2.bias.set_value(linear.fc2.bias)
    x = paddle.randn([3, 6, 5, 32] if data_format == "NHWC" else [3, 32, 6, 5])
    # Both paths can run in float64: the bound takes the noisier one (senet/numerics.py, rule 2).
    (want, conv_noise), (got, linear_noise) = layer_noise(conv, x.numpy()), layer_noise(linear, x.numpy())
    assert_within_noise(got, want, max(conv_noise, linear_noise), "linear against conv")


def test_se_block_computes_the_paper_equations():
    """Squeeze (mean over H x W), excitation sigmoid(W2 relu(W1 z)), channel-wise scale, by hand in numpy
    in float64, against the block's float64 twin (senet/numerics.py, rule 3)."""
    paddle.seed(2)
    block = SEBlock(8, SEOptions(reduction=2, impl="linear"))
    x = paddle.randn([2, 8, 3, 4])
    w1, b1 = block.fc1.weight.numpy().astype(np.float64), block.fc1.bias.numpy().astype(np.float64)
    w2, b2 = block.fc2.weight.numpy().astype(np.float64), block.fc2.bias.numpy().astype(np.float64)
    a = x.numpy().astype(np.float64)
    z = a.mean(axis=(2, 3))
    s = 1 / (1 + np.exp(-(np.maximum(z @ w1 + b1, 0) @ w2 + b2)))
    assert_float64_matches(run(float64_twin(block), a), a * s[:, :, None, None], block(x).numpy())


def test_se_model_traces_with_to_static_default_mode(monkeypatch):
    """paddle.jit.to_static's default (bytecode tracing) must trace the inference path too. (The traced
    graph runs dygraph's CPU kernels, so it runs once, not per thread count.) Tracing time grows with
    the op count: a CIFAR ResNet of one block per stage (an 8-layer twin of resnet20, built through
    the same MODELS table) holds every kind of op and block of resnet20 in a third of its time."""
    monkeypatch.setitem(MODELS, "resnet8", Arch(BasicBlock, (1, 1, 1), stem="cifar"))
    paddle.seed(4)
    model = create_model("se_resnet8", num_classes=10)
    model.eval()
    x = paddle.randn([2, 3, 32, 32])
    with paddle.no_grad():
        traced = paddle.jit.to_static(model, full_graph=False)
        assert_layer_matches(traced(x).numpy(), model, x.numpy(), what="traced against dygraph")


def test_excitation_reads_the_squeezed_tensor():
    """Changing the input spatially without changing channel means must not change the weights s."""
    block = SEBlock(8, SEOptions(reduction=2))
    x = paddle.randn([1, 8, 4, 4])
    shuffled = x.flatten(2)[:, :, paddle.randperm(16)].reshape([1, 8, 4, 4])
    s1 = block.excite(block.squeeze(x)).numpy()
    s2 = block.excite(block.squeeze(shuffled)).numpy()
    assert s1.shape == (1, 8, 1, 1)
    # The shuffled map sums in another order: equal within the float32 noise of excite(squeeze(x)).
    twin = float64_twin(block)
    s64 = twin.excite(twin.squeeze(x.astype("float64"))).numpy()
    assert_within_noise(s2, s1, float32_noise(s1, s64), "shuffled")


@pytest.mark.cpu_paths
def test_nhwc_model_matches_nchw_model(threads):
    paddle.seed(3)
    nchw = create_model("se_resnet20", num_classes=10)
    nhwc = create_model("se_resnet20", num_classes=10, data_format="NHWC")
    nhwc.set_state_dict(nchw.state_dict())  # same parameter shapes in both layouts
    nchw.eval(), nhwc.eval()
    x = paddle.randn([2, 3, 32, 32])
    assert_layer_matches(run(nhwc, x.transpose([0, 2, 3, 1])), nchw, x.numpy(), what="NHWC against NCHW")
    _check_forward_backward(create_model("se_resnet50", num_classes=4, data_format="NHWC"), 64, 4, "NHWC")


def test_stride_placement_defaults_follow_each_architecture():
    def first_strides(model):
        block = model.layer2[0]
        return block.conv1[0]._stride, block.conv2[0]._stride

    assert first_strides(create_model("resnet50")) == ([2, 2], [1, 1])
    assert first_strides(create_model("resnet50", stride_in_1x1=False)) == ([1, 1], [2, 2])
    assert first_strides(create_model("resnext50_32x4d")) == ([1, 1], [2, 2])
    assert first_strides(create_model("resnext50_32x4d", stride_in_1x1=True)) == ([2, 2], [1, 1])


def _last_of_branch(block):
    """The weight zero_init_residual zeroes: the last BN's gamma, or a pre-activation block's last conv."""
    if isinstance(block, PreActBottleneck):
        return block.conv3[2].weight  # BN -> ReLU -> conv: no BN after the conv
    return (block.conv2 if isinstance(block, BasicBlock) else block.conv3)[1].weight


@pytest.mark.parametrize("arch", ["se_resnet20", "se_resnet50", "resnet164", "se_resnet164"])
def test_zero_init_residual_starts_every_branch_at_zero(arch):
    """Every residual branch outputs 0 at init, so each block starts as its shortcut; the zeroed weights still learn."""
    blocks_of = lambda m: [b for b in m.sublayers() if isinstance(b, (BasicBlock, Bottleneck, PreActBottleneck))]  # noqa: E731
    model = create_model(arch, num_classes=3, zero_init_residual=True)
    blocks = blocks_of(model)
    assert len(blocks) == sum(MODELS[arch.removeprefix("se_")].layers)
    branches = []  # the standard placement's SE (Identity without SE) reads and returns the branch's end
    hooks = [b.se.register_forward_post_hook(lambda layer, inputs, out: branches.append(out)) for b in blocks]
    out = model(paddle.randn([2, 3, 32, 32]))  # 32 px: the ImageNet stem leaves 1x1 maps by stage 4
    for h in hooks:
        h.remove()
    assert len(branches) == len(blocks) and all(float(t.abs().max()) == 0.0 for t in branches)
    out.mean().backward()
    assert all(float(_last_of_branch(b).grad.abs().max()) > 0 for b in blocks)
    assert all(float(_last_of_branch(b).abs().max()) > 0 for b in blocks_of(create_model(arch, num_classes=3)))


def test_he_initialisation_scale():
    model = create_model("resnet50")
    w = model.layer3[0].conv2[0].weight.numpy()  # 3x3, 256 -> 256: fan_out = 256 * 9
    assert abs(w.std() - np.sqrt(2.0 / (256 * 9))) < 0.05 * np.sqrt(2.0 / (256 * 9))


def test_resnet164_is_preactivation_with_expected_size():
    model = create_model("resnet164", num_classes=10)
    assert sum(isinstance(m, PreActBottleneck) for m in model.sublayers()) == 54
    assert abs(count_params(model)[0] - 1.70e6) < 0.01e6  # He et al. 2016: 1.7M parameters
    assert abs(count_params(create_model("resnet110", num_classes=10))[0] - 1.73e6) < 0.01e6  # 1.7M


def test_build_model_from_config_and_ppim():
    cfg = load_config(
        None,
        [
            "model.arch=se_resnet20",
            "model.num_classes=10",
            "model.se.reduction=8",
            "model.se.stages=[2, 3]",
            "train.data_format=NHWC",
        ],
    )
    model = build_model(cfg)
    assert [b.se.hidden for b in model.layer2] == [32 // 8] * 3
    assert all(isinstance(b.se, paddle.nn.Identity) for b in model.layer1)
    ppim_model = build_model(load_config(None, ["model.arch=ppim.rexnet_1_0", "model.num_classes=10"]))
    ppim_model.eval()
    assert ppim_model(paddle.randn([1, 3, 64, 64])).shape == [1, 10]


def test_unknown_architecture_lists_known_names_and_suggests():
    with pytest.raises(ValueError) as e:
        create_model("se_resnt50")
    assert "Did you mean 'se_resnet50'" in str(e.value) and "resnext101_32x4d" in str(e.value)
    with pytest.raises(ValueError, match="unknown ppim model 'rexnet_10'.*ppim.rexnet_1_0"):
        create_model("ppim.rexnet_10")


def test_zero_width_se_layer_names_the_layer_and_channels():
    with pytest.raises(ValueError, match=r"'layer1\.0\.se': C=16 // reduction 32 = 0"):
        create_model("se_resnet20", attention=SEOptions(reduction=32))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"impl": "dense"}, "model.se.impl: 'dense' is not one of conv, linear"),
        ({"gate": "softmax"}, "model.se.gate"),
        ({"squeeze": "mean"}, "model.se.squeeze"),
        ({"placement": "before"}, "model.se.placement"),
        ({"reduction": 0}, "positive integer"),
    ],
)
def test_bad_se_options_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SEOptions(**kwargs)


def test_bad_stage_number_is_an_error():
    with pytest.raises(ValueError, match="stages 1-3"):
        create_model("se_resnet20", attention=SEOptions(stages=(4,)))
