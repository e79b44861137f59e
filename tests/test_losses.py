"""Issue 25: the training losses (train.loss; senet.losses) against timm's.

tests/fixtures/recipes/losses.npz (scripts/make_mixup_fixtures.py) holds timm's BinaryCrossEntropy (plain,
with RSB's target threshold 0.2, and on int labels with smoothing 0.1) and SoftTargetCrossEntropy, on fixed
logits and mixed soft targets, in float32 and float64; ours must be within SAFETY x the float32 noise of
timm's computation (senet/numerics.py, rule 2).
"""

import os

import numpy as np
import paddle
import pytest
from float_checks import assert_within_noise, check

from senet.config import ConfigError, load_config
from senet.losses import training_loss
from senet.numerics import float32_noise
from senet.step import StepParts, forward_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "recipes", "losses.npz")


@pytest.fixture(scope="module")
def timm_losses():
    return np.load(FIXTURE)


@pytest.mark.parametrize(
    "name, key, targets, smoothing, thresh",
    [
        ("bce", "bce", "soft_targets", 0.0, None),
        ("bce", "bce_thresh", "soft_targets", 0.0, 0.2),
        ("bce", "bce_labels_smoothed", "labels", 0.1, None),
        ("soft_ce", "soft_ce", "soft_targets", 0.0, None),
        ("ce", "soft_ce", "soft_targets", 0.0, None),  # Paddle's fused cross-entropy: the same value
    ],
)
def test_losses_match_timms(timm_losses, name, key, targets, smoothing, thresh):
    f = timm_losses
    got = training_loss(name, paddle.to_tensor(f["logits"]), paddle.to_tensor(f[targets]), smoothing, thresh)
    noise = float32_noise(f[key], f[f"{key}_f64"])
    assert_within_noise(float(got), f[key], noise, f"{name} against timm's {key}")


def test_the_threshold_changes_the_loss(timm_losses):
    """The fixture's two BCE values are far apart, so matching each one tests the threshold."""
    f = timm_losses
    assert not check(f["bce"], f["bce_thresh"], float32_noise(f["bce"], f["bce_f64"])).ok


def test_the_step_trains_with_the_loss_named_and_evaluates_with_cross_entropy(timm_losses):
    paddle.seed(0)
    model = paddle.nn.Sequential(paddle.nn.Conv2D(3, 5, 3), paddle.nn.AdaptiveAvgPool2D(1), paddle.nn.Flatten())
    images = paddle.randint(0, 256, [6, 8, 8, 3]).astype("uint8")
    labels = paddle.to_tensor([0, 4, 2, 2, 1, 3])
    for name in ("ce", "soft_ce", "bce"):
        parts = StepParts(model, None, [0.5] * 3, [0.25] * 3, label_smoothing=0.1, loss=name, bce_target_thresh=None)
        logits, train_loss = forward_loss(parts, images, labels, train=True)
        _, eval_loss = forward_loss(parts, images, labels, train=False)
        assert float(train_loss) == float(training_loss(name, logits, labels, 0.1))
        assert float(eval_loss) == float(training_loss("ce", logits, labels, 0.0))


def test_bad_loss_settings_are_refused_by_name():
    config = os.path.join(ROOT, "configs", "demo", "se_resnet20_digits.yaml")
    with pytest.raises(ConfigError, match="train.loss: 'focal' is not one of ce, soft_ce, bce"):
        load_config(config, ["train.loss=focal"])
    with pytest.raises(ConfigError, match=r"train.bce_target_thresh=0.2 applies to train.loss=bce only"):
        load_config(config, ["train.bce_target_thresh=0.2"])
    with pytest.raises(ConfigError, match=r"train.bce_target_thresh=1.0 is out of range: it must be in \[0.0, 1.0\)"):
        load_config(config, ["train.loss=bce", "train.bce_target_thresh=1.0"])
