"""Issue 25: mixup and CutMix (senet.mixup) against timm's Mixup, their distributions, and the trainer's use.

Where the draws can be matched, they are: tests/fixtures/recipes/mixup_*.npz (scripts/make_mixup_fixtures.py,
timm 1.0.31) hold every number timm's Mixup drew, the boxes and λ it made, its mixed batch and its targets;
replaying those numbers through senet.mixup must use them all, in timm's order, and give the same boxes and
λ exactly (the same IEEE operations: numpy's sqrt, floor, clip, 1 - a / b) and the same images and targets
within the float32 noise of the mixing (senet/numerics.py, rule 2). Where they cannot be (our draws come
from a seeded numpy Generator), the distributions are tested at a fixed seed: λ ~ Beta(α, α) by a
Kolmogorov-Smirnov test at p > 0.01 (and the wrong Beta is refused at p < 1e-6, so the test can fail), the
shares of mixed and CutMix batches by binomial tests at p > 0.01, and CutMix's pasted area against 1 - λ,
pixel by pixel.
"""

import json
import os

import numpy as np
import paddle
import pytest
from float_checks import assert_within_noise
from safetensors.numpy import load_file
from scipy import stats
from tiny_run import tiny

from senet.config import ConfigError, load_config
from senet.mixup import Mixup, MixupOptions, build_mixup, draw, mix_images, mix_targets, mixup_options
from senet.numerics import float32_noise

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "recipes")
CONFIG = os.path.join(ROOT, "configs", "demo", "se_resnet20_digits.yaml")
CASES = [
    "batch_mixup",
    "batch_cutmix",
    "batch_cutmix_uncorrected",
    "batch_switch",
    "batch_minmax",
    "elem_switch",
    "pair_switch",
]
pytestmark = pytest.mark.filterwarnings("ignore:When training, we now always track")


class Replay:
    """A numpy Generator's random / beta / integers that hand out the numbers timm drew, checking that each
    is asked for with timm's arguments and in timm's order."""

    def __init__(self, log: list[dict]) -> None:
        self.log = list(log)

    def _next(self, kind: str) -> dict:
        assert self.log, f"asked for a {kind} draw after timm's last"
        record = self.log.pop(0)
        assert record["kind"] == kind, f"asked for {kind}, timm drew {record['kind']} here"
        return record

    def random(self, size=None):
        record = self._next("random")
        assert record["size"] == (None if size is None else [size]), (size, record["size"])
        return np.asarray(record["value"]) if size is not None else record["value"]

    def beta(self, a, b, size=None):
        record = self._next("beta")
        assert (record["a"], record["b"], record["size"]) == (a, b, size)
        return np.asarray(record["value"]) if size is not None else record["value"]

    def integers(self, low, high, size=None):
        """timm draws each box number alone: fill the broadcast shape from that many of its calls, in C order."""
        lows, highs = np.broadcast_arrays(np.asarray(low), np.asarray(high), np.empty(size or ()))[:2]
        out = np.empty(lows.shape, dtype=np.int64)
        for index in np.ndindex(lows.shape):
            record = self._next("integers")
            assert (record["low"], record["high"]) == (int(lows[index]), int(highs[index]))
            out[index] = record["value"]
        return out if out.shape else int(out)


def load_case(name):
    f = np.load(os.path.join(FIXTURES, f"mixup_{name}.npz"))
    timm_options = json.loads(str(f["options"]))
    options = MixupOptions(
        alpha=timm_options["mixup_alpha"],
        cutmix_alpha=timm_options["cutmix_alpha"],
        cutmix_minmax=tuple(timm_options["cutmix_minmax"]) if timm_options.get("cutmix_minmax") else None,
        prob=timm_options.get("prob", 1.0),
        switch_prob=timm_options.get("switch_prob", 0.5),
        mode=timm_options.get("mode", "batch"),
        correct_lam=timm_options.get("correct_lam", True),
    )
    return f, options, timm_options


def mixed_by_hand(images, d, dtype):
    """The mixed batch by numpy from the same draws, in `dtype`: float32 and float64 give the float32 noise of
    mixing (senet/numerics.py, rule 2)."""
    x = images.astype(dtype)
    mirror = x[::-1]
    n, h, w, _ = x.shape
    lam = np.broadcast_to(d.lam.astype(dtype), (n,)).reshape(n, 1, 1, 1)
    cut = np.broadcast_to(d.cutmix, (n,)).reshape(n, 1, 1, 1)
    box = np.broadcast_to(d.box, (n, 4))
    ys, xs = np.arange(h).reshape(1, h, 1, 1), np.arange(w).reshape(1, 1, w, 1)
    inside = (
        (ys >= box[:, 0, None, None, None])
        & (ys < box[:, 1, None, None, None])
        & (xs >= box[:, 2, None, None, None])
        & (xs < box[:, 3, None, None, None])
    )
    return np.where(cut, np.where(inside, mirror, x), x * lam + mirror * (1 - lam))


def targets_by_hand(labels, d, classes, smoothing, dtype):
    off = smoothing / classes
    y = np.where(np.eye(classes)[labels] > 0, 1 - smoothing + off, off).astype(dtype)
    lam = np.broadcast_to(d.lam.astype(dtype), (len(labels),))[:, None]
    return y * lam + y[::-1] * (1 - lam)


@pytest.mark.parametrize("case", CASES)
def test_replaying_timms_draws_gives_timms_boxes_lambdas_images_and_targets(case):
    f, options, timm_options = load_case(case)
    images, labels = f["images"], f["labels"]
    n, h, w, _ = images.shape
    classes, smoothing = timm_options["num_classes"], timm_options["label_smoothing"]
    draws, boxes = json.loads(str(f["draws"])), json.loads(str(f["boxes"]))
    mixed_batches = 0
    for i, (log, timm_boxes) in enumerate(zip(draws, boxes)):
        replay = Replay(log)
        d = draw(replay, options, n, h, w)
        assert not replay.log, f"batch {i}: timm drew {len(replay.log)} numbers more"
        # The boxes and their λ, in timm's order: batch mode's one row, else the rows in order (pair mode: the
        # first of each pair). λ as timm keeps it: a Python float per batch, float32 per row.
        rows = (
            np.flatnonzero(d.cutmix)[: len(timm_boxes)]
            if options.mode != "pair"
            else np.flatnonzero(d.cutmix[: n // 2])
        )
        assert len(rows) == len(timm_boxes)
        for row, timm_box in zip(rows, timm_boxes):
            assert d.box[row].tolist() == timm_box[:4], f"batch {i}, row {row}"
            assert d.lam[row] == d.lam.dtype.type(timm_box[4]), f"batch {i}, row {row}"
        got_images = mix_images(paddle.to_tensor(images), d).numpy()
        got_targets = mix_targets(paddle.to_tensor(labels), d, classes, smoothing).numpy()
        noise = float32_noise(*(mixed_by_hand(images, d, t) for t in (np.float32, np.float64)))
        assert_within_noise(got_images, f["mixed"][i], noise, f"{case} batch {i} images")
        noise = float32_noise(*(targets_by_hand(labels, d, classes, smoothing, t) for t in (np.float32, np.float64)))
        assert_within_noise(got_targets, f["targets"][i], noise, f"{case} batch {i} targets")
        mixed_batches += not np.all(d.lam == 1)
    assert mixed_batches > 0


def test_a_replay_out_of_timms_order_is_refused():
    """The replay really checks the order: CutMix's box drawn (x, y) instead of (y, x) is caught."""
    f, options, _ = load_case("batch_cutmix")
    log = json.loads(str(f["draws"]))[0]
    swapped = log[:-2] + [log[-1], log[-2]]
    with pytest.raises(AssertionError):
        draw(Replay(swapped), options, *f["images"].shape[:3])


def lambdas(options, batches=3000, n=8, h=32, w=32):
    mixup = Mixup(options, num_classes=10, seed=7)
    ds = [draw(mixup.rng(b // 100, b % 100), options, n, h, w) for b in range(batches)]
    return np.array([float(d.lam[0]) for d in ds]), np.array([bool(d.cutmix[0]) for d in ds])


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_mixup_lambda_follows_beta_alpha_alpha(alpha):
    lam, cutmix = lambdas(MixupOptions(alpha=alpha))
    assert not cutmix.any()
    assert stats.kstest(lam, stats.beta(alpha, alpha).cdf).pvalue > 0.01
    wrong = 3 * alpha  # the same draws are far from another Beta: the test can fail
    assert stats.kstest(lam, stats.beta(wrong, wrong).cdf).pvalue < 1e-6


def test_cutmix_lambda_before_correction_follows_beta():
    """Without correct_lam, λ is the Beta draw itself (the box is then cut from it)."""
    lam, cutmix = lambdas(MixupOptions(cutmix_alpha=1.0, correct_lam=False))
    assert cutmix.all()
    assert stats.kstest(lam, stats.uniform(0, 1).cdf).pvalue > 0.01  # Beta(1, 1)
    assert stats.kstest(lam, stats.beta(0.5, 0.5).cdf).pvalue < 1e-6


def test_prob_and_switch_prob_set_the_shares_of_mixed_and_cutmix_batches():
    lam, cutmix = lambdas(MixupOptions(alpha=0.4, cutmix_alpha=1.0, prob=0.6, switch_prob=0.3))
    mixed = lam < 1
    assert stats.binomtest(int(mixed.sum()), len(lam), 0.6).pvalue > 0.01
    assert stats.binomtest(int(cutmix[mixed].sum()), int(mixed.sum()), 0.3).pvalue > 0.01
    assert stats.binomtest(int(mixed.sum()), len(lam), 0.5).pvalue < 1e-6  # another share is refused


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_cutmix_pastes_exactly_the_share_its_target_gives_the_partner(mode):
    """Each image a distinct constant: the pixels of row i that came from its partner are counted on the
    device's output and must be 1 - λ of the image, λ read off the row's target (correct_lam); without the
    correction the target's 1 - λ is never below the pasted share (the box is cut down, then clipped)."""
    n, h, w, classes = 8, 12, 10, 8
    images = paddle.to_tensor(np.repeat(np.arange(n, dtype=np.uint8) * 20, h * w * 3).reshape(n, h, w, 3))
    labels = paddle.arange(n)  # row i and its partner n-1-i have different labels
    for correct in (True, False):
        mixup = Mixup(MixupOptions(cutmix_alpha=1.0, mode=mode, correct_lam=correct), classes, seed=3)
        clipped = 0
        for b in range(40):
            mixed, targets = mixup.at(0, b)(images, labels)
            own = targets.numpy()[np.arange(n), np.arange(n)]
            pasted = (mixed.numpy()[..., 0] == (np.arange(n)[::-1] * 20)[:, None, None]).mean(axis=(1, 2))
            if correct:
                assert np.abs(pasted - (1 - own)).max() <= 2**-23, (b, pasted, 1 - own)  # float32 rounding of λ
            else:
                assert (pasted <= 1 - own + 2**-23).all()
                clipped += int((pasted < 1 - own - 0.05).sum())
        if not correct:
            assert clipped > 0  # some boxes were clipped, where the correction matters


def test_draws_come_from_the_batchs_place_in_the_run():
    """The same (epoch, batch) draws the same whatever came before (what a resumed run needs); another
    place, seed or rank draws otherwise."""
    options = MixupOptions(alpha=0.4, cutmix_alpha=1.0)
    images = paddle.to_tensor(np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8))
    labels = paddle.arange(8)
    mixup = Mixup(options, 8, seed=5)
    first = mixup.at(2, 7)(images, labels)[0].numpy()
    for b in range(5):  # other batches in between change nothing
        mixup.at(2, b)(images, labels)
    assert np.array_equal(mixup.at(2, 7)(images, labels)[0].numpy(), first)
    others = [
        mixup.at(2, 8),
        mixup.at(3, 7),
        Mixup(options, 8, seed=6).at(2, 7),
        Mixup(options, 8, seed=5, rank=1).at(2, 7),
    ]
    assert all(not np.array_equal(t(images, labels)[0].numpy(), first) for t in others)


def test_an_odd_batch_keeps_its_middle_image():
    images = paddle.to_tensor(np.random.default_rng(1).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8))
    for mode in ("batch", "pair", "elem"):
        mixup = Mixup(MixupOptions(alpha=1.0, mode=mode), 5, seed=1)
        mixed, targets = mixup.at(0, 0)(images, paddle.arange(5))
        assert np.array_equal(mixed.numpy()[2], images.numpy()[2].astype(np.float32))
        assert targets.numpy()[2, 2] == 1.0


def test_the_config_turns_it_on_folds_label_smoothing_and_names_bad_values(tmp_path):
    plain = load_config(CONFIG)
    assert build_mixup(plain) is None and not mixup_options(plain).enabled  # off: the step runs as before
    cfg = load_config(
        CONFIG,
        ["train.mixup.alpha=0.2", "train.mixup.cutmix_alpha=1.0", "train.label_smoothing=0.1", "train.mixup.mode=pair"],
    )
    mixup = build_mixup(cfg)
    assert mixup.options == MixupOptions(alpha=0.2, cutmix_alpha=1.0, mode="pair")
    assert (mixup.num_classes, mixup.label_smoothing, mixup.seed) == (10, 0.1, 0)
    from senet.engine import TrainState

    def smoothing_of(c):
        return TrainState(c, None, None, None, None, None, {}, "NCHW").step_parts().label_smoothing

    assert smoothing_of(cfg) == 0.0 and smoothing_of(load_config(CONFIG, ["train.label_smoothing=0.1"])) == 0.1
    for override, message in [
        ("train.mixup.alpha=-0.2", "train.mixup.alpha=-0.2 is out of range: it must be >= 0.0"),
        ("train.mixup.prob=1.5", "train.mixup.prob=1.5 is out of range: it must be in [0.0, 1.0]"),
        ("train.mixup.switch_prob=-1", "train.mixup.switch_prob=-1.0 is out of range"),
        ("train.mixup.mode=row", "train.mixup.mode: 'row' is not one of batch, pair, elem"),
        ("train.mixup.cutmix_minmax=[0.8, 0.3]", "the first (lowest) value must be below the second"),
        ("train.mixup.cutmix_minmax=[0.0, 0.5]", "train.mixup.cutmix_minmax=[0.0, 0.5] is out of range (item 0.0)"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            load_config(CONFIG, [override])
    narrow = load_config(CONFIG, ["train.mixup.cutmix_minmax=[0.30, 0.31]"])  # 32 px: int(9.6) = int(9.92)
    with pytest.raises(ValueError, match=r"train.mixup.cutmix_minmax=\[0.3, 0.31\] leaves no box side to draw"):
        build_mixup(narrow)


# ---------------------------------------------------------------- in the trainer

TINY = tiny()  # tests/tiny_run.py (RECIPE below sets the optimizer)
# Everything of this part of issue 25 on at once: mixup and CutMix switching per batch, label smoothing
# folded in, drop path, binary cross-entropy with RSB's threshold, LAMB with clipping and spared BN/biases.
RECIPE = [
    "train.mixup.alpha=0.2",
    "train.mixup.cutmix_alpha=1.0",
    "train.mixup.prob=0.8",
    "train.label_smoothing=0.1",
    "model.drop_path_rate=0.2",
    "train.loss=bce",
    "train.bce_target_thresh=0.2",
    "optimizer.name=lamb",
    "optimizer.lr=0.02",
    "optimizer.weight_decay=0.02",
    "optimizer.no_weight_decay_on_bn_bias=true",
    "optimizer.clip_grad_norm=1.0",
]


def fit_here(out, *extra, resume=None, batch_transform=None):
    from senet.train import fit

    cfg = load_config(CONFIG, [*TINY, *RECIPE, f"output_dir={out}", *extra])
    with paddle.utils.unique_name.guard():  # a fresh process's parameter names (checkpoints are keyed by them)
        return fit(cfg, resume, batch_transform=batch_transform)


def test_a_run_with_the_recipe_resumed_mid_epoch_ends_bitwise_identical(tmp_path):
    """Mixup's draws come from the batch's place, drop path's from Paddle's generator (checkpointed), so a
    run stopped after 3 of its 4 first-epoch steps and resumed ends with the uninterrupted run's weights, bit
    for bit (same machine, same threads: senet/numerics.py, rule 1)."""
    reference = fit_here(tmp_path / "reference")
    assert reference["finished"] and reference["global_step"] == 8
    stopped = fit_here(tmp_path / "resumed", "train.max_steps=3")
    assert stopped["stopped_by"] == "max_steps"
    from senet.checkpoint import load_checkpoint

    assert load_checkpoint(str(tmp_path / "resumed" / "checkpoints" / "last.pdparams"))["batch_in_epoch"] == 3
    resumed = fit_here(tmp_path / "resumed", resume="auto")
    assert resumed["finished"] and resumed["global_step"] == 8
    want, got = (load_file(str(tmp_path / run / "model.safetensors")) for run in ("reference", "resumed"))
    assert want.keys() == got.keys()
    different = [k for k in want if not np.array_equal(want[k], got[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    assert reference["history"][-1]["train_loss"] == resumed["history"][-1]["train_loss"]


def test_fit_refuses_a_batch_transform_beside_train_mixup(tmp_path):
    from senet.train import TrainingError

    with pytest.raises(TrainingError, match=r"fit\(batch_transform=...\) and train.mixup would both transform"):
        fit_here(tmp_path / "run", batch_transform=lambda images, labels: (images, labels))
