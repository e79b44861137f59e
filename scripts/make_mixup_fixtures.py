"""Write tests/fixtures/recipes/: what timm computes for mixup and CutMix, the soft-target and binary
cross-entropy losses, LAMB and drop path, on small fixed inputs (issue 25).

    /tmp/torchvenv/bin/python scripts/make_mixup_fixtures.py [--out tests/fixtures/recipes]

Needs torch and timm (not the project's .venv: a separate one, as scripts/make_weight_fixtures.py; made
with torch 2.13 cpu, timm 1.0.31, numpy 2.4). It imports nothing of senet, so that the references do not
lean on the code they check.

Random draws are matched by recording them: timm's Mixup draws with numpy's global functions
(np.random.rand, beta, randint); while it runs they are wrapped, and every call's arguments and result are
stored (the `draws` JSON of each mixup file), with every box and λ that timm's cutmix_bbox_and_lam
returned (`boxes`). tests/test_mixup.py replays those numbers through senet.mixup and must get timm's
boxes, λ, mixed images and targets. Drop path's Bernoulli mask and LAMB's gradients are stored the same
way, as inputs. Float64 runs of the same computations are stored beside the float32 ones, where a test
needs the computation's float32 noise (senet/numerics.py).

torchvision's import fails on this machine (its wheel is a CUDA build whose C++ ops are missing); timm
imports it, so its ops' fake-kernel registrations are skipped while it is imported, as
scripts/torch_env/ does for every fixture script.
"""

import argparse
import json
import os
import types

import numpy as np
import torch
from torch_env import import_torchvision


def import_timm():
    import_torchvision()  # timm imports it (scripts/torch_env/)
    import timm
    import timm.data.mixup
    import timm.loss
    import timm.optim.lamb

    return timm


timm = import_timm()
mixup_module = timm.data.mixup
VERSIONS = json.dumps({"torch": torch.__version__, "timm": timm.__version__, "numpy": np.__version__})


def save(folder: str, name: str, **arrays) -> None:
    """One fixture file, with the versions that made it."""
    np.savez_compressed(os.path.join(folder, name), versions=VERSIONS, **arrays)


N, H, W, CLASSES = 8, 12, 10, 5  # H != W: a swapped axis changes every box


class RecordingRandom:
    """numpy.random's rand / beta / randint, each call's arguments and result logged (timm's draws)."""

    def __init__(self) -> None:
        self.log: list[dict] = []

    def rand(self, *size):
        value = np.random.rand(*size)
        self.log.append({"kind": "random", "size": list(size) or None, "value": np.asarray(value).tolist()})
        return value

    def beta(self, a, b, size=None):
        value = np.random.beta(a, b, size=size)
        self.log.append({"kind": "beta", "a": a, "b": b, "size": size, "value": np.asarray(value).tolist()})
        return value

    def randint(self, low, high=None, size=None):
        assert size is None, "timm draws its boxes one number at a time"
        value = np.random.randint(low, high)
        self.log.append({"kind": "integers", "low": int(low), "high": int(high), "value": int(value)})
        return value


def record_mixup(options: dict, images: np.ndarray, labels: np.ndarray, seed: int):
    """timm's Mixup on the batch (uint8 NHWC -> float32 NCHW, as its values 0..255): its draws, boxes,
    mixed images (NHWC) and targets."""
    recorder = RecordingRandom()
    boxes = []
    real_np, real_box = mixup_module.np, mixup_module.cutmix_bbox_and_lam

    def box_and_lam(*args, **kwargs):
        (yl, yu, xl, xu), lam = real_box(*args, **kwargs)
        boxes.append([int(yl), int(yu), int(xl), int(xu), float(lam)])
        return (yl, yu, xl, xu), lam

    np.random.seed(seed)
    mixup_module.np = types.SimpleNamespace(**{k: getattr(real_np, k) for k in dir(real_np) if not k.startswith("__")})
    mixup_module.np.random = recorder
    mixup_module.cutmix_bbox_and_lam = box_and_lam
    try:
        mix = mixup_module.Mixup(num_classes=CLASSES, **options)
        x = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32).copy())
        x, target = mix(x, torch.from_numpy(labels))
    finally:
        mixup_module.np, mixup_module.cutmix_bbox_and_lam = real_np, real_box
    return recorder.log, boxes, x.numpy().transpose(0, 2, 3, 1).copy(), target.numpy()


# Each case: timm's Mixup arguments, and the seeds of its batches (one call each).
MIXUP_CASES = {
    "batch_mixup": (dict(mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.1), range(4)),
    "batch_cutmix": (dict(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.1), range(6)),
    "batch_cutmix_uncorrected": (
        dict(mixup_alpha=0.0, cutmix_alpha=1.0, correct_lam=False, label_smoothing=0.0),
        range(6),
    ),
    "batch_switch": (
        dict(mixup_alpha=0.2, cutmix_alpha=1.0, prob=0.7, switch_prob=0.5, label_smoothing=0.1),
        range(12),
    ),
    "batch_minmax": (dict(mixup_alpha=0.0, cutmix_alpha=0.0, cutmix_minmax=(0.2, 0.8), label_smoothing=0.0), range(6)),
    "elem_switch": (
        dict(mixup_alpha=0.2, cutmix_alpha=1.0, prob=0.7, switch_prob=0.5, mode="elem", label_smoothing=0.1),
        range(4),
    ),
    "pair_switch": (
        dict(mixup_alpha=0.2, cutmix_alpha=1.0, prob=0.7, switch_prob=0.5, mode="pair", label_smoothing=0.1),
        range(4),
    ),
}


def write_mixup(out: str) -> None:
    rng = np.random.default_rng(25)
    images = rng.integers(0, 256, (N, H, W, 3), dtype=np.uint8)
    labels = rng.integers(0, CLASSES, N).astype(np.int64)
    for name, (options, seeds) in MIXUP_CASES.items():
        calls = [record_mixup(options, images, labels, 1000 + seed) for seed in seeds]
        save(
            out,
            f"mixup_{name}.npz",
            images=images,
            labels=labels,
            options=json.dumps({**options, "num_classes": CLASSES}),
            draws=json.dumps([c[0] for c in calls]),
            boxes=json.dumps([c[1] for c in calls]),
            mixed=np.stack([c[2] for c in calls]),
            targets=np.stack([c[3] for c in calls]),
        )
        print(f"mixup_{name}.npz: {len(calls)} batches, {sum(len(c[1]) for c in calls)} boxes")


def write_losses(out: str) -> None:
    """timm's BinaryCrossEntropy (with and without the 0.2 threshold, and on int labels with smoothing 0.1)
    and SoftTargetCrossEntropy, in float32 and float64."""
    rng = np.random.default_rng(26)
    logits = (rng.standard_normal((N, CLASSES)) * 3).astype(np.float32)
    labels = rng.integers(0, CLASSES, N).astype(np.int64)
    other = labels[::-1]
    lam = 0.7
    soft = (lam * np.eye(CLASSES)[labels] + (1 - lam) * np.eye(CLASSES)[other]) * 0.9 + 0.1 / CLASSES
    values = {}
    for dtype in (torch.float32, torch.float64):
        suffix = "" if dtype is torch.float32 else "_f64"
        z, t = torch.from_numpy(logits).to(dtype), torch.from_numpy(soft).to(dtype)
        values["bce" + suffix] = timm.loss.BinaryCrossEntropy()(z, t).numpy()
        values["bce_thresh" + suffix] = timm.loss.BinaryCrossEntropy(target_threshold=0.2)(z, t).numpy()
        values["bce_labels_smoothed" + suffix] = timm.loss.BinaryCrossEntropy(smoothing=0.1)(
            z, torch.from_numpy(labels)
        ).numpy()
        values["soft_ce" + suffix] = timm.loss.SoftTargetCrossEntropy()(z, t).numpy()
    save(out, "losses.npz", logits=logits, soft_targets=soft.astype(np.float32), labels=labels, **values)
    print("losses.npz:", {k: float(v) for k, v in values.items() if not k.endswith("_f64")})


LAMB = dict(lr=0.01, weight_decay=0.05, betas=(0.9, 0.999), eps=1e-6)
LAMB_STEPS = 3


def write_lamb(out: str) -> None:
    """timm's Lamb, a few steps on fixed gradients: two decayed matrices and a spared vector (weight decay 0,
    as optimizer.no_weight_decay_on_bn_bias groups them), without and with its global-norm clip at 1.0."""
    rng = np.random.default_rng(27)
    shapes = {"w": (4, 3), "v": (3,), "u": (2, 5)}
    init = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    grads = {k: (rng.standard_normal((LAMB_STEPS, *s)) * 0.3).astype(np.float32) for k, s in shapes.items()}
    arrays = {f"init_{k}": v for k, v in init.items()}
    arrays.update({f"grad_{k}": v for k, v in grads.items()})
    for clip in (None, 1.0):
        for dtype in (torch.float32, torch.float64):
            # torch.tensor copies: a tensor sharing the numpy array's memory would let the steps overwrite `init`
            params = {k: torch.nn.Parameter(torch.tensor(v, dtype=dtype)) for k, v in init.items()}
            groups = [{"params": [params["w"], params["u"]]}, {"params": [params["v"]], "weight_decay": 0.0}]
            opt = timm.optim.lamb.Lamb(groups, max_grad_norm=clip, foreach=False, **LAMB)
            for step in range(LAMB_STEPS):
                for k, p in params.items():
                    p.grad = torch.tensor(grads[k][step], dtype=dtype)
                opt.step()
            tag = ("clip" if clip else "noclip") + ("" if dtype is torch.float32 else "_f64")
            arrays.update({f"{tag}_{k}": p.detach().numpy() for k, p in params.items()})
    save(out, "lamb.npz", options=json.dumps({**LAMB, "steps": LAMB_STEPS}), **arrays)
    print("lamb.npz: params after", LAMB_STEPS, "steps, with and without the clip")


def write_drop_path(out: str) -> None:
    """timm's drop_path with its Bernoulli mask recorded, and timm's per-block rates of its ResNets."""
    torch.manual_seed(28)
    x = torch.randn(16, 4, 3, 3)
    rate = 0.3
    masks = []
    real_bernoulli = torch.Tensor.bernoulli_

    def recording_bernoulli(self, p):
        real_bernoulli(self, p)
        masks.append(self.clone())
        return self

    torch.Tensor.bernoulli_ = recording_bernoulli
    try:
        y = timm.layers.drop_path(x, rate, training=True)
    finally:
        torch.Tensor.bernoulli_ = real_bernoulli
    rates = {}
    for arch in ("resnet18", "resnet50", "resnet101"):
        model = timm.create_model(arch, drop_path_rate=0.2, pretrained=False)
        blocks = [b for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for b in stage]
        rates[arch] = [b.drop_path.drop_prob if b.drop_path is not None else 0.0 for b in blocks]
    save(
        out,
        "drop_path.npz",
        x=x.numpy(),
        mask=masks[0].numpy(),
        rate=rate,
        out=y.numpy(),
        rates=json.dumps({"drop_path_rate": 0.2, **rates}),
    )
    print("drop_path.npz: mask keeps", int(masks[0].sum()), "of", len(masks[0]), "; rates of", ", ".join(rates))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out",
        default=os.path.join(
            os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures", "recipes"
        ),
    )
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    write_mixup(args.out)
    write_losses(args.out)
    write_lamb(args.out)
    write_drop_path(args.out)


if __name__ == "__main__":
    main()
