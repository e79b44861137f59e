"""Write the reference outputs that tests/test_augment.py and tests/test_repeat_sampler.py check our
augmentations and repeat sampler against (tests/fixtures/recipes/augment_*.npz).

Needs torch, timm and Pillow (not the project's .venv: a separate one, as for make_weight_fixtures.py):

    /path/to/torchvenv/bin/python scripts/make_augment_fixtures.py [--image china.jpg]

- augment_ops.npz: a natural photo (scikit-learn's bundled china.jpg, the temple's top and the sky, box-
  filtered down to 72x48: not noise), and what the references make of it:
  - kind "timm": timm's AugmentOp(op, prob, magnitude, hparams) after random.seed(seed), for every op of
    RandAugment (both op lists) and AutoAugment, at magnitude 9 (and others), with a fixed interpolation
    (bilinear or bicubic) or timm's random choice, with and without magnitude noise;
  - kind "auto": timm's auto_augment_transform(policy) after random.seed(seed): whole images;
  - kind "trivial": torchvision's autoaugment._apply_op(img, op, magnitude, BILINEAR, fill=None) at the
    magnitudes of its TrivialAugmentWide table (also stored, as torchvision computes it in float32).
  The seed, op, probability, magnitude, magnitude std and interpolation of each case are stored with it,
  and timm's cases with the trace of what timm drew: each op applied, its argument, its interpolation.
- augment_erasing.npz: timm's RandomErasing on an image of ones after random.seed(seed): the erased
  pixels (mode "const" writes 0), per setting and seed.
- augment_sampler.npz: timm's RepeatAugSampler index lists per (dataset size, ranks, rank, repeats, epoch),
  with the permutation torch drew for it (torch.randperm from a generator seeded with the epoch).

torchvision's import fails on this machine (its wheel is a CUDA build whose C++ ops are missing); the
fake-kernel registrations of its ops are skipped while it is imported, as scripts/torch_env/ does.
"""

import argparse
import glob
import json
import os
import random

import numpy as np
import PIL
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "recipes")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
FILL = tuple(min(255, round(255 * m)) for m in IMAGENET_MEAN)  # timm's img_mean for these means


from torch_env import import_torchvision  # noqa: E402

tv = import_torchvision()
import timm  # noqa: E402
from timm.data import auto_augment as aa  # noqa: E402
from timm.data.distributed_sampler import RepeatAugSampler  # noqa: E402
from timm.data.random_erasing import RandomErasing  # noqa: E402
from torchvision.transforms import InterpolationMode  # noqa: E402
from torchvision.transforms import autoaugment as tv_aa  # noqa: E402

RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
SIGNED = {
    "Rotate",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
}
GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


TRACE: list[dict] = []  # the ops timm applied in the current case, with their arguments and interpolation
_RESAMPLE_NAME = {Image.BILINEAR: "bilinear", Image.BICUBIC: "bicubic"}
_interpolation = aa._interpolation


def _traced_interpolation(kwargs):
    """timm's _interpolation (where a geometric op draws its resample filter), recording the choice."""
    resample = _interpolation(kwargs)
    TRACE[-1]["resample"] = _RESAMPLE_NAME[resample]
    return resample


aa._interpolation = _traced_interpolation


def traced(op):
    """An AugmentOp whose op records its name and level arguments (after its draws) when it runs."""
    run = op.aug_fn

    def aug_fn(img, *args, **kwargs):
        TRACE.append({"name": op.name, "arg": args[0] if args else None, "resample": None})
        return run(img, *args, **kwargs)

    op.aug_fn = aug_fn
    return op


def photo(path: str) -> np.ndarray:
    im = Image.open(path).convert("RGB").crop((80, 0, 400, 213)).resize((72, 48), Image.BOX)
    return np.asarray(im).copy()


def timm_case(
    img: np.ndarray, op: str, prob: float, magnitude: float, mstd: float, resample: str, seed: int
) -> np.ndarray:
    hparams = {"img_mean": FILL, "magnitude_std": mstd}
    if resample != "random":
        hparams["interpolation"] = RESAMPLE[resample]
    random.seed(seed)
    return np.asarray(traced(aa.AugmentOp(op, prob=prob, magnitude=magnitude, hparams=hparams))(Image.fromarray(img)))


def seeded(transform, img: np.ndarray, seed: int) -> np.ndarray:
    random.seed(seed)
    return np.asarray(transform(Image.fromarray(img)))


def trivial_case(img: np.ndarray, name: str, magnitude: float) -> np.ndarray:
    return np.asarray(
        tv_aa._apply_op(Image.fromarray(img), name, magnitude, interpolation=InterpolationMode.BILINEAR, fill=None)
    )


def ops_fixture(img: np.ndarray) -> dict:
    cases, outputs, traces = [], [], []

    def add(kind, op, prob, magnitude, mstd, resample, seed, make, *args):
        TRACE.clear()
        try:
            out = make(*args)
        except ValueError as e:  # Pillow >= 11 refuses posterize to 0 bits (timm's Posterize below magnitude 2.5)
            assert "bits must be" in str(e), e
            print(f"skipped: {kind} {op} magnitude {magnitude} seed {seed}: timm raises {e}")
            return
        cases.append((kind, op, prob, magnitude, mstd, resample, seed))
        outputs.append(out)
        traces.append(json.dumps(TRACE))

    names = sorted(set(aa._RAND_TRANSFORMS) | set(aa._RAND_INCREASING_TRANSFORMS) | {"PosterizeOriginal"})
    for op in names:
        # seeds 0 and 1: _randomly_negate's first draw is 0.844 and 0.134, so both signs of a signed op
        for seed in (0, 1) if op in SIGNED else (0,):
            add("timm", op, 1.0, 9, 0.0, "bilinear", seed, timm_case, img, op, 1.0, 9, 0.0, "bilinear", seed)
    for op in GEOMETRIC:
        add("timm", op, 1.0, 9, 0.0, "bicubic", 0, timm_case, img, op, 1.0, 9, 0.0, "bicubic", 0)
    for op in ("Posterize", "Solarize", "SolarizeAdd", "Color", "ShearX", "PosterizeIncreasing"):
        for magnitude in (0, 3, 10):  # the ends of each range, and one between
            add("timm", op, 1.0, magnitude, 0.0, "bilinear", 0, timm_case, img, op, 1.0, magnitude, 0.0, "bilinear", 0)
    # every draw of AugmentOp: probability, magnitude noise (normal, and uniform for mstd inf), sign, interpolation
    for i, op in enumerate(aa._RAND_INCREASING_TRANSFORMS):
        for seed in (10 + i, 40 + i):
            add("timm", op, 0.5, 9, 0.5, "random", seed, timm_case, img, op, 0.5, 9, 0.5, "random", seed)
    for seed in range(4):
        add(
            "timm",
            "Rotate",
            1.0,
            9,
            float("inf"),
            "random",
            seed,
            timm_case,
            img,
            "Rotate",
            1.0,
            9,
            float("inf"),
            "random",
            seed,
        )
    # whole AutoAugment policies: the sub-policy draw too
    for policy in ("original-mstd0.5", "v0"):
        transform = aa.auto_augment_transform(policy, {"img_mean": FILL})
        transform.policy = [[traced(op) for op in sub] for sub in transform.policy]
        for seed in range(12):
            add("auto", policy, 1.0, 0.0, 0.0, "random", seed, seeded, transform, img, seed)
    # TrivialAugment wide's ops at torchvision's magnitudes
    space = tv_aa.TrivialAugmentWide()._augmentation_space(31)
    tables = {f"trivial_bins_{name}": np.asarray(m, dtype=np.float32).reshape(-1) for name, (m, _) in space.items()}
    for name, (magnitudes, signed) in space.items():
        if name == "Identity":
            continue
        picks = [20] if magnitudes.ndim else [None]
        for b in picks:
            for sign in (1.0, -1.0) if signed else (1.0,):
                m = 0.0 if b is None else sign * float(magnitudes[b].item())
                add("trivial", name, 1.0, m, 0.0, "bilinear", -1, trivial_case, img, name, m)
    kind, op, prob, magnitude, mstd, resample, seed = zip(*cases)
    return {
        "image": img,
        "kind": np.array(kind),
        "op": np.array(op),
        "prob": np.array(prob),
        "magnitude": np.array(magnitude, dtype=np.float64),
        "mstd": np.array(mstd),
        "resample": np.array(resample),
        "seed": np.array(seed),
        "output": np.stack(outputs),
        "trace": np.array(traces),
        "fill": np.array(FILL),
        **tables,
    }


ERASING_SETTINGS = [  # probability, min_area, max_area, min_aspect, min_count, max_count, height, width
    (1.0, 0.02, 1 / 3, 0.3, 1, 1, 48, 72),
    (0.5, 0.02, 1 / 3, 0.3, 1, 1, 48, 72),
    (1.0, 0.02, 1 / 3, 0.3, 1, 3, 48, 72),
    (1.0, 0.02, 1 / 3, 0.3, 2, 4, 224, 160),
    (1.0, 0.3, 0.9, 0.3, 1, 1, 56, 40),  # large boxes: some of the 10 tries do not fit
]
ERASING_SEEDS = 64


def erasing_fixture() -> dict:
    masks, settings = [], []
    for s in ERASING_SETTINGS:
        prob, lo, hi, aspect, cmin, cmax, h, w = s
        erase = RandomErasing(
            prob,
            min_area=lo,
            max_area=hi,
            min_aspect=aspect,
            mode="const",
            min_count=cmin,
            max_count=cmax,
            device="cpu",
        )
        for seed in range(ERASING_SEEDS):
            random.seed(seed)
            out = erase(torch.ones(3, h, w))
            masks.append(np.packbits((out[0] == 0).numpy().reshape(-1)))
            settings.append(s)
    return {
        "settings": np.array(settings, dtype=np.float64),
        "seeds": np.tile(np.arange(ERASING_SEEDS), len(ERASING_SETTINGS)),
        "masks": np.concatenate(masks),
        "mask_lengths": np.array([len(m) for m in masks]),
    }


class _Sized:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def sampler_fixture() -> dict:
    rows, indices, perms = [], [], {}
    for n in (7, 100, 300, 1000):
        for repeats in (2, 3):
            for world in (1, 2, 3, 4):
                for epoch in (0, 1):
                    g = torch.Generator()
                    g.manual_seed(epoch)
                    perms[f"perm_{n}_{epoch}"] = torch.randperm(n, generator=g).numpy()
                    for rank in range(world):
                        s = RepeatAugSampler(
                            _Sized(n), num_replicas=world, rank=rank, shuffle=True, num_repeats=repeats
                        )
                        s.set_epoch(epoch)
                        got = list(s)
                        assert len(got) == len(s)
                        rows.append((n, repeats, world, rank, epoch, len(indices), len(got)))
                        indices += got
    return {"rows": np.array(rows, dtype=np.int64), "indices": np.array(indices, dtype=np.int64), **perms}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    found = glob.glob(
        os.path.join(ROOT, ".venv", "lib", "python3*", "site-packages", "sklearn", "datasets", "images", "china.jpg")
    )
    p.add_argument("--image", default=found[0] if found else None, help="scikit-learn's china.jpg")
    args = p.parse_args()
    if not args.image:
        raise SystemExit("give --image: scikit-learn's sklearn/datasets/images/china.jpg")
    os.makedirs(OUT, exist_ok=True)
    meta = np.array(
        json.dumps(
            {
                "timm": timm.__version__,
                "torch": torch.__version__,
                "pillow": PIL.__version__,
                "torchvision": tv.__version__,
                "numpy": np.__version__,
            }
        )
    )
    for name, arrays in (
        ("augment_ops", ops_fixture(photo(args.image))),
        ("augment_erasing", erasing_fixture()),
        ("augment_sampler", sampler_fixture()),
    ):
        path = os.path.join(OUT, f"{name}.npz")
        np.savez_compressed(path, meta=meta, **arrays)
        print(f"{path}: {os.path.getsize(path):,} bytes")


if __name__ == "__main__":
    main()
