"""Write the reference logits that tests/test_convert.py checks our converted models against.

Needs torch, timm and torchvision (not the project's .venv: a separate one, see docs/weights.md):

    /path/to/torchvenv/bin/python scripts/make_weight_fixtures.py            # -> tests/fixtures/weights/
    /path/to/torchvenv/bin/python scripts/make_weight_fixtures.py --replace  # rewrite everything afresh

For each reference model it fills the model's state dict with senet.weights.synthetic (seeded,
numpy only), runs a seeded batch in eval mode and in train mode (batch statistics), in float32 and
float64, and saves per model one small .npz: the seed, the tensor names, shapes and dtypes, the
parameter count, the library versions, the reference's own float32 error against its float64 result
("reference_f32_vs_f64" in meta), and the logits in both precisions (eval_f32, train_f32 as float32,
eval_f64, train_f64 as float64). The weights are not stored: the test remakes them from the seed with
the same code, writes them in the source's layout and converts them. It also writes torch_zoo.pth, a
small real torch.save file for the .pth reader's test, and the values numpy should read from it.

By default a file that exists keeps what it holds: an existing fixture keeps its meta and its float32
logits byte for byte (tests compare against them, and a rerun on another thread count or library
version would move them by float32 rounding); the fresh float32 logits are only compared with the
stored ones (max |fresh - stored| / max |stored| is printed), and the float64 logits are added. An
existing torch_zoo.pth is left alone. --replace rewrites every file from the fresh run.

torchvision's import fails on this machine (its wheel is a CUDA build whose C++ ops are missing); its
model code is pure Python, so the ops' fake-kernel registrations are skipped while it is imported
(scripts/torch_env/).
"""

import argparse
import json
import os
import sys
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch_env import import_torchvision  # noqa: E402

from senet.weights.synthetic import synthetic_input, synthetic_state  # noqa: E402

tv = import_torchvision()
import timm  # noqa: E402

# (fixture id, source, constructor). Every family and both key layouts, depths 18 to 152. drop_rate=0:
# timm's legacy SENets default to dropout before the classifier, which would make train-mode logits random.
MODELS = [
    ("torchvision_resnet18", "torchvision", lambda: tv.models.resnet18()),
    ("torchvision_resnet50", "torchvision", lambda: tv.models.resnet50()),
    ("torchvision_resnext50_32x4d", "torchvision", lambda: tv.models.resnext50_32x4d()),
    ("timm_resnet50", "timm", lambda: timm.create_model("resnet50", drop_rate=0.0)),
    ("timm_resnet152", "timm", lambda: timm.create_model("resnet152", drop_rate=0.0)),
    ("timm_seresnet18", "timm", lambda: timm.create_model("seresnet18", drop_rate=0.0)),
    ("timm_seresnet34", "timm", lambda: timm.create_model("seresnet34", drop_rate=0.0)),
    ("timm_seresnet50", "timm", lambda: timm.create_model("seresnet50", drop_rate=0.0)),
    ("timm_resnext50_32x4d", "timm", lambda: timm.create_model("resnext50_32x4d", drop_rate=0.0)),
    ("timm_seresnext50_32x4d", "timm", lambda: timm.create_model("seresnext50_32x4d", drop_rate=0.0)),
    ("timm_legacy_seresnet18", "timm", lambda: timm.create_model("legacy_seresnet18", drop_rate=0.0)),
    ("timm_legacy_seresnet34", "timm", lambda: timm.create_model("legacy_seresnet34", drop_rate=0.0)),
    ("timm_legacy_seresnet50", "timm", lambda: timm.create_model("legacy_seresnet50", drop_rate=0.0)),
    ("timm_legacy_seresnet152", "timm", lambda: timm.create_model("legacy_seresnet152", drop_rate=0.0)),
    ("timm_legacy_seresnext50_32x4d", "timm", lambda: timm.create_model("legacy_seresnext50_32x4d", drop_rate=0.0)),
    ("timm_legacy_seresnext101_32x4d", "timm", lambda: timm.create_model("legacy_seresnext101_32x4d", drop_rate=0.0)),
]
INPUT_SHAPE = (2, 3, 64, 64)  # 64 px: the stem pool's output is 16 x 16 either way, its windows differ


def logits(model, weights, x, train: bool, dtype) -> np.ndarray:
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    # Paddle holds batch norm's epsilon as a float32 attribute: 1e-5 is 1e-5 + 2.5e-14 there. In float64
    # that moves ResNet-18's logits by 1.7e-12, 800 times float64's rounding noise, so the reference
    # runs with the same constant (in float32 torch rounds it the same way: those logits do not move).
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eps = float(np.float32(m.eps))
    model.to(dtype)
    model.train(train)
    with torch.no_grad():
        return model(torch.from_numpy(x).to(dtype)).numpy()


def write_torch_zoo(out: str) -> None:
    """A tiny torch.save file of what a real state dict holds (dtypes, a transposed view sharing its
    storage, an offset view, a 0-d counter, _metadata) and, beside it, the values numpy should read."""
    from collections import OrderedDict

    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    sd = OrderedDict()
    sd["conv.weight"] = torch.randn(2, 3, 3, 3, generator=g)
    sd["fc.weight_t"] = base.t()  # strides (1, 6) into a shared storage
    sd["fc.weight"] = base
    sd["row"] = base[2]  # storage offset 12
    sd["half"] = torch.randn(5, generator=g).half()
    sd["bf16"] = torch.randn(5, generator=g).bfloat16()
    sd["double"] = torch.randn(3, generator=g).double()
    sd["bn.num_batches_tracked"] = torch.tensor(7)
    sd["empty"] = torch.zeros(0, 3)
    sd._metadata = OrderedDict({"": {"version": 1}})
    torch.save(sd, os.path.join(out, "torch_zoo.pth"))
    expected = {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in sd.items()}
    np.savez_compressed(os.path.join(out, "torch_zoo_expected.npz"), **expected)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b|, the measure the tests use."""
    return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "weights"))
    parser.add_argument("--only", nargs="*", default=None, help="fixture ids to (re)make")
    parser.add_argument(
        "--replace",
        action="store_true",
        help="rewrite existing files from the fresh run (default: keep their meta and float32 logits)",
    )
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    if args.replace or not os.path.exists(os.path.join(args.out, "torch_zoo.pth")):
        write_torch_zoo(args.out)
    for fid, source, make in MODELS:
        if args.only and fid not in args.only:
            continue
        seed = zlib.crc32(fid.encode()) % (2**31)
        model = make().eval()
        specs = [(k, tuple(v.shape), str(v.numpy().dtype)) for k, v in model.state_dict().items()]
        weights = synthetic_state(specs, seed)
        x = synthetic_input(INPUT_SHAPE, seed)
        out = {
            f"{mode}_{bits}": logits(make(), weights, x, mode == "train", dt)
            for mode in ("eval", "train")
            for bits, dt in (("f32", torch.float32), ("f64", torch.float64))
        }
        out = {k: v.astype(np.float64 if k.endswith("f64") else np.float32) for k, v in out.items()}
        ref_noise = max(rel(out[f"{m}_f32"], out[f"{m}_f64"]) for m in ("eval", "train"))
        meta = {
            "id": fid,
            "source": source,
            "seed": seed,
            "input_shape": INPUT_SHAPE,
            "model": fid.split("_", 1)[1],
            "specs": specs,
            "params": int(sum(p.numel() for p in model.parameters())),
            "reference_f32_vs_f64": ref_noise,
            "versions": {"torch": torch.__version__, "timm": timm.__version__, "torchvision": tv.__version__},
        }
        meta_arr = np.array(json.dumps(meta))
        path = os.path.join(args.out, fid + ".npz")
        note = ""
        if os.path.exists(path) and not args.replace:
            with np.load(path) as old:
                stored = {k: old[k] for k in old.files}
            old_meta = json.loads(str(stored["meta"]))
            # The float64 logits must come from the same weights and input as the stored float32 ones.
            same = ("seed", "input_shape", "specs", "params")
            if json.loads(json.dumps({k: meta[k] for k in same})) != {k: old_meta[k] for k in same}:
                sys.exit(f"{fid}: the stored meta describes other weights or input; rerun with --replace")
            fresh = {m: rel(out[f"{m}_f32"], stored[f"{m}_f32"]) for m in ("eval", "train")}
            note = (
                f", fresh vs stored float32: eval {fresh['eval']:.1e} train {fresh['train']:.1e}"
                f" (stored reference_f32_vs_f64 {old_meta['reference_f32_vs_f64']:.2e},"
                f" versions {old_meta['versions']})"
            )
            meta_arr = stored["meta"]
            out.update({k: v for k, v in stored.items() if k.endswith("f32")})
        keys = ("eval_f32", "train_f32", "eval_f64", "train_f64")
        np.savez_compressed(path, meta=meta_arr, **{k: out[k] for k in keys})
        print(
            f"{fid}: {meta['params']:,} parameters, reference float32 vs float64 {ref_noise:.2e}, "
            f"{os.path.getsize(path) / 1024:.0f} KB{note}",
            flush=True,
        )


if __name__ == "__main__":
    main()
