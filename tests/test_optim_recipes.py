"""Issue 25: the optimizers of modern recipes (senet.optim): LAMB against timm's, AdamW's betas and eps,
weight decay kept off BatchNorm parameters and biases by every optimizer, and gradient clipping by the
global norm under the AMP loss scaler.

tests/fixtures/recipes/lamb.npz (scripts/make_mixup_fixtures.py) holds timm's Lamb after 3 steps on fixed
gradients, in float32 and float64, without and with its global-norm clip at 1.0; ours must be within
SAFETY x the float32 noise of timm's computation (senet/numerics.py, rule 2).
"""

import copy
import json
import os

import numpy as np
import paddle
import pytest
from float_checks import assert_within_noise, check

from senet.config import DEFAULTS, ConfigError, load_config
from senet.numerics import float32_noise
from senet.optim import build_optimizer
from senet.resnet import create_model
from senet.step import StepParts, forward_loss, train_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAMB_FIXTURE = os.path.join(ROOT, "tests", "fixtures", "recipes", "lamb.npz")
CONFIG = os.path.join(ROOT, "configs", "demo", "se_resnet20_digits.yaml")


def optimizer_cfg(**optimizer):
    """A resolved config whose lr is the optimizer's own (batch 256: lr is per 256 images) and constant."""
    cfg = copy.deepcopy(DEFAULTS)
    cfg["data"]["batch_size"] = 256
    cfg["lr_scheduler"].update(name="step", step_size=1000)
    cfg["optimizer"].update(optimizer)
    return cfg


class Params(paddle.nn.Layer):
    """Named free parameters, from numpy arrays."""

    def __init__(self, arrays):
        super().__init__()
        for name, value in arrays.items():
            p = self.create_parameter(list(value.shape), dtype="float32")
            p.set_value(value)
            setattr(self, name, p)


def step_with_gradients(model, optimizer, grads):
    """One optimizer step with the given gradients: the loss sum(p * g) has exactly those."""
    loss = sum((getattr(model, k) * paddle.to_tensor(g)).sum() for k, g in grads.items())
    loss.backward()
    optimizer.step()
    optimizer.clear_grad()


@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_lamb_matches_timms(clip):
    """Two decayed matrices and a spared vector (no_weight_decay_on_bn_bias: timm's group with weight decay 0,
    which also skips the trust ratio); clip 1.0 is timm's default max_grad_norm."""
    f = np.load(LAMB_FIXTURE)
    options = json.loads(str(f["options"]))
    names = ("w", "v", "u")
    model = Params({k: f[f"init_{k}"] for k in names})
    cfg = optimizer_cfg(
        name="lamb",
        lr=options["lr"],
        weight_decay=options["weight_decay"],
        betas=list(options["betas"]),
        no_weight_decay_on_bn_bias=True,
        clip_grad_norm=clip,
    )
    assert cfg["optimizer"]["eps"] is None and options["eps"] == 1e-6  # null: Lamb's own 1e-6, timm's too
    optimizer, _ = build_optimizer(cfg, model, steps_per_epoch=10, world_size=1)
    for step in range(options["steps"]):
        step_with_gradients(model, optimizer, {k: f[f"grad_{k}"][step] for k in names})
    tag = "clip" if clip else "noclip"
    for k in names:
        timm32, timm64 = f[f"{tag}_{k}"], f[f"{tag}_f64_{k}"]
        assert_within_noise(getattr(model, k).numpy(), timm32, float32_noise(timm32, timm64), f"lamb {tag} {k}")


def spared_names(model):
    """Every BatchNorm scale and shift and every bias, by name: what no_weight_decay_on_bn_bias must spare."""
    bn = {
        f"{name}.{p}"
        for name, layer in model.named_sublayers()
        if isinstance(layer, paddle.nn.BatchNorm2D)
        for p in ("weight", "bias")
    }
    return bn | {name for name, _ in model.named_parameters() if name.endswith(".bias")}


@pytest.mark.parametrize("name", ["momentum", "sgd", "adamw", "lamb"])
@pytest.mark.parametrize("spare", [True, False])
def test_weight_decay_spares_batchnorm_and_biases_in_every_optimizer(name, spare):
    """With zero gradients a step moves a weight by its decay alone: every tensor decays by the optimizer's rule,
    except every BN scale and shift and every bias (the SE and CBAM FCs', the classifier's) when spared,
    which stay bit for bit."""
    paddle.seed(2)
    model = create_model("cbam_resnet20", num_classes=10)  # biases in CBAM's MLP and the FC, BN everywhere
    lr, wd = 0.1, 0.05
    optimizer, _ = build_optimizer(
        optimizer_cfg(name=name, lr=lr, weight_decay=wd, no_weight_decay_on_bn_bias=spare),
        model,
        steps_per_epoch=10,
        world_size=1,
    )
    before = {k: p.numpy().copy() for k, p in model.named_parameters() if not p.stop_gradient}
    (model(paddle.randn([2, 3, 16, 16])).sum() * 0).backward()
    optimizer.step()
    # L2 (momentum, sgd): p - lr wd p; decoupled (adamw): p (1 - lr wd); lamb: the update is wd p, its trust
    # ratio |p| / |wd p| = 1 / wd, so p - lr p.
    shrink = lr if name == "lamb" else lr * wd
    spared = spared_names(model)
    assert spared and spared < set(before)
    for k, p in model.named_parameters():
        if k not in before:
            continue
        got = p.numpy()
        if spare and k in spared:
            assert np.array_equal(got, before[k]), k
        else:
            by_hand = [before[k].astype(t) * t(1 - shrink) for t in (np.float32, np.float64)]
            assert_within_noise(got, by_hand[1], float32_noise(*by_hand), f"{name} {k}")


def enabled_grad_scaler(monkeypatch, init_loss_scaling):
    """paddle.amp.GradScaler as it runs on a GPU: its constructor disables it on a CPU place, but its kernels
    (check_finite_and_unscale, update_loss_scaling) run on a CPU, so only that check is lifted here."""
    from paddle.amp import grad_scaler

    real = grad_scaler._dygraph_tracer

    class Place:
        def __init__(self, place):
            self.place = place

        def is_gpu_place(self):
            return True

        def __getattr__(self, name):
            return getattr(self.place, name)

    class Tracer:
        def __init__(self, tracer):
            self.tracer, self._expected_place = tracer, Place(tracer._expected_place)

        def __getattr__(self, name):
            return getattr(self.tracer, name)

    monkeypatch.setattr(grad_scaler, "_dygraph_tracer", lambda: Tracer(real()))
    scaler = paddle.amp.GradScaler(init_loss_scaling=init_loss_scaling)
    monkeypatch.setattr(grad_scaler, "_dygraph_tracer", real)
    assert scaler._enable
    return scaler


def test_clipping_under_the_loss_scaler_clips_the_unscaled_gradients(monkeypatch):
    """senet.step's scaler.step(optimizer) unscales, then the optimizer clips: the step equals the unscaled
    one bit for bit (a loss scale of 2^10 scales every gradient exactly), and the update is the gradient
    scaled to the clip norm (clipping the scaled gradients would leave it 1024 times smaller)."""
    paddle.seed(4)
    model = create_model("resnet20", num_classes=10)
    images = paddle.to_tensor(np.random.default_rng(4).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8))
    labels = paddle.to_tensor(np.arange(8) % 10)
    lr, clip = 0.5, 0.01
    cfg = optimizer_cfg(name="momentum", lr=lr, weight_decay=0.0, clip_grad_norm=clip)

    def one_step(scaler):
        m = copy.deepcopy(model)
        optimizer, _ = build_optimizer(cfg, m, steps_per_epoch=10, world_size=1)
        train_step(StepParts(m, optimizer, [0.5] * 3, [0.25] * 3, scaler=scaler), images, labels)
        return {k: p.numpy() for k, p in m.named_parameters() if not p.stop_gradient}

    plain, scaled = one_step(None), one_step(enabled_grad_scaler(monkeypatch, 1024.0))
    for k in plain:
        assert np.array_equal(plain[k], scaled[k]), k
    m = copy.deepcopy(model)  # the gradients themselves, for the update by hand
    forward_loss(StepParts(m, None, [0.5] * 3, [0.25] * 3), images, labels)[1].backward()
    grads = {k: p.grad.numpy().astype(np.float64) for k, p in m.named_parameters() if p.grad is not None}
    norm = np.sqrt(sum((g**2).sum() for g in grads.values()))
    assert norm > 10 * clip  # so the clip acts
    start = {k: p.numpy() for k, p in model.named_parameters()}
    for k, g in grads.items():  # momentum's first step is plain SGD: p - lr g clip / |g|
        by_hand = [start[k].astype(t) - t(lr) * g.astype(t) * t(clip / norm) for t in (np.float32, np.float64)]
        assert_within_noise(plain[k], by_hand[1], float32_noise(*by_hand), k)


def test_adamw_takes_its_betas_and_eps():
    """Two AdamW steps with betas (0.8, 0.99), eps 1e-3 and decoupled weight decay 0.1, against the update
    by hand (torch's AdamW: p (1 - lr wd), then lr m^ / (sqrt(v^) + eps))."""
    rng = np.random.default_rng(9)
    start = rng.standard_normal((3, 4)).astype(np.float32)
    grads = (rng.standard_normal((2, 3, 4)) * 1e-3).astype(np.float32)  # small: eps matters
    lr, wd, (b1, b2), eps = 0.05, 0.1, (0.8, 0.99), 1e-3
    model = Params({"w": start})
    optimizer, _ = build_optimizer(
        optimizer_cfg(name="adamw", lr=lr, weight_decay=wd, betas=[b1, b2], eps=eps),
        model,
        steps_per_epoch=10,
        world_size=1,
    )
    for g in grads:
        step_with_gradients(model, optimizer, {"w": g})

    def by_hand(t, b1=b1, b2=b2, eps=eps):
        p, m, v = start.astype(t), np.zeros_like(start, t), np.zeros_like(start, t)
        for step, g in enumerate(grads.astype(t), 1):
            p = p * t(1 - lr * wd)
            m, v = t(b1) * m + t(1 - b1) * g, t(b2) * v + t(1 - b2) * g * g
            p = p - t(lr) * (m / t(1 - b1**step)) / (np.sqrt(v / t(1 - b2**step)) + t(eps))
        return p

    f32, f64 = by_hand(np.float32), by_hand(np.float64)
    noise = float32_noise(f32, f64)
    assert_within_noise(model.w.numpy(), f64, noise, "adamw")
    # The defaults (betas 0.9, 0.999; eps 1e-8) would give another result: the keys reached the optimizer.
    for defaults in ({"b1": 0.9, "b2": 0.999}, {"eps": 1e-8}):
        assert not check(model.w.numpy(), by_hand(np.float64, **defaults), noise).ok, defaults


def test_optimizer_keys_are_checked_by_name():
    assert load_config(CONFIG, ["optimizer.name=lamb"])["optimizer"]["name"] == "lamb"
    for override, message in [
        ("optimizer.name=lars", "optimizer.name: 'lars' is not one of momentum, sgd, adamw, lamb"),
        (
            "optimizer.betas=[0.9, 1.0]",
            r"optimizer.betas=\[0.9, 1.0\] is out of range \(item 1.0\): it must be in \[0.0, 1.0\)",
        ),
        ("optimizer.eps=0.0", r"optimizer.eps=0.0 is out of range: it must be > 0.0"),
        ("optimizer.clip_grad_norm=-1", r"optimizer.clip_grad_norm=-1.0 is out of range: it must be >= 0.0"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(CONFIG, [override])
