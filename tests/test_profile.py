"""Parameter and multiply-add accounting: hand-computed small cases and the SENet paper's Table 2."""

import paddle
import paddle.nn as nn
import pytest

from senet.attention import SEBlock, SEOptions
from senet.profile import count_macs, count_params, profile_model
from senet.resnet import create_model


def test_conv_linear_and_grouped_conv_macs_by_hand():
    model = nn.Sequential(
        nn.Conv2D(3, 8, 3, padding=1),  # 8x8 out: 8*8*8 outputs x (3*3*3) = 13,824
        nn.Conv2D(8, 8, 3, stride=2, padding=1, groups=4),  # 4x4: 8*4*4 x (2*3*3) = 2,304
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 10),
    )  # 128 * 10 = 1,280
    macs, macs_se, by_stage = count_macs(model, input_size=8)
    assert macs == 13824 + 2304 + 1280
    assert macs_se == 0
    assert by_stage == {"0": 13824, "1": 2304, "3": 1280}


@pytest.mark.parametrize("squeeze, squeeze_macs", [("avg", 16 * 5 * 5), ("max", 16 * 5 * 5), ("none", 0)])
def test_se_block_macs_by_hand(squeeze, squeeze_macs):
    block = SEBlock(16, SEOptions(reduction=4, squeeze=squeeze))
    model = nn.Sequential(nn.Conv2D(3, 16, 1), block)  # 1x1 conv: 16*5*5 x 3 = 1,200
    macs, macs_se, _ = count_macs(model, input_size=5)
    positions = 1 if squeeze != "none" else 25  # NoSqueeze runs the FCs at every position
    fcs = positions * (16 * 4 + 4 * 16)
    scale = 16 * 5 * 5
    assert macs_se == fcs + squeeze_macs + scale
    assert macs == 1200 + macs_se


def test_parameter_counts_separate_bn_statistics():
    model = nn.Sequential(nn.Conv2D(3, 4, 3, bias_attr=False), nn.BatchNorm2D(4))
    trainable, total, se, by_stage = count_params(model)
    assert trainable == 3 * 4 * 9 + 4 + 4  # conv weight, BN gamma and beta
    assert total == trainable + 4 + 4  # + running mean and variance
    assert se == 0 and by_stage == {"0": 108, "1": 8}


@pytest.mark.parametrize(
    "arch, kwargs, gmacs, params",
    [
        ("resnet50", {}, 3.86, 25_557_032),
        ("se_resnet50", {}, 3.87, 28_088_024),
        ("resnet50", {"stride_in_1x1": False}, 4.09, 25_557_032),
    ],
)
def test_paper_table2_figures(arch, kwargs, gmacs, params):
    p = profile_model(create_model(arch, **kwargs), 224)
    assert round(p.gmacs, 2) == gmacs
    assert p.params == params
    assert p.gflops == pytest.approx(2 * p.gmacs)
    assert sum(p.macs_by_stage.values()) == p.macs
    assert sum(p.params_by_stage.values()) == p.params
    assert set(p.macs_by_stage) == {"stem", "layer1", "layer2", "layer3", "layer4", "head"}


def test_se_share_is_reported():
    p = profile_model(create_model("se_resnet50"), 224)
    assert p.params_se == 2_530_992  # 28,088,024 - 25,557,032
    # FCs (2.53M) + squeeze and scale over the 5,519,360 block-output elements, one op each.
    assert (
        p.macs_se
        == 2_530_992 - sum(n * (c // 16 + c) for c, n in zip((256, 512, 1024, 2048), (3, 4, 6, 3))) + 2 * 5_519_360
    )
    assert 0.003 < p.se_macs_share < 0.004 and 0.09 < p.se_params_share < 0.091


@pytest.mark.parametrize("size", [224, 160, 97])
def test_counting_leaves_model_unchanged_at_any_size(size):
    model = create_model("se_resnet18", num_classes=10)
    model.train()
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    p = profile_model(model, size)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all((after[k].numpy() == v).all() for k, v in before.items())
    assert model.training
    assert p.macs > 0
    x = paddle.zeros([1, 3, size, size])
    assert model(x).shape == [1, 10]


def test_nhwc_model_counts_the_same():
    a = profile_model(create_model("se_resnet20", num_classes=10), 32)
    b = profile_model(create_model("se_resnet20", num_classes=10, data_format="NHWC"), 32)
    assert (a.macs, a.params) == (b.macs, b.params)
