"""Write the reference logits that tests/test_convert.py checks our converted models against.

Needs torch, timm and torchvision (not the project's .venv: a separate one, see docs/weights.md):

    /path/to/torchvenv/bin/python scripts/make_weight_fixtures.py            # -> tests/fixtures/weights/

For each reference model it fills the model's state dict with senet.weights.synthetic (seeded,
numpy only), runs a seeded batch in eval mode and in train mode (batch statistics), in float32 and
float64, and saves per model one small .npz: the seed, the tensor names, shapes and dtypes, the
parameter count, the library versions and the float32 logits (and the float64 ones where the
reference's own float32 error exceeds 1e-4). The weights are not stored: the test remakes them from
the seed with the same code, writes them in the source's layout and converts them. It also writes
torch_zoo.pth, a small real torch.save file for the .pth reader's test.

torchvision's import fails on this machine (its wheel is a CUDA build whose C++ ops are missing); its
model code is pure Python, so the ops' fake-kernel registrations are skipped while it is imported.
"""

import argparse
import json
import os
import sys
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from senet.weights.synthetic import synthetic_input, synthetic_state  # noqa: E402


def import_torchvision():
    register = torch.library.register_fake

    def lenient(op, *args, **kwargs):  # torchvision::nms & co are missing from the CUDA wheel's CPU build
        if isinstance(op, str) and op.startswith("torchvision::"):
            return lambda fn: fn
        return register(op, *args, **kwargs)

    torch.library.register_fake = lenient
    try:
        import torchvision
    finally:
        torch.library.register_fake = register
    return torchvision


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "weights"))
    parser.add_argument("--only", nargs="*", default=None, help="fixture ids to (re)make")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    write_torch_zoo(args.out)
    for fid, source, make in MODELS:
        if args.only and fid not in args.only:
            continue
        seed = zlib.crc32(fid.encode()) % (2**31)
        model = make().eval()
        specs = [(k, tuple(v.shape), str(v.numpy().dtype)) for k, v in model.state_dict().items()]
        weights = synthetic_state(specs, seed)
        x = synthetic_input(INPUT_SHAPE, seed)
        out = {f"{mode}_{bits}": logits(make(), weights, x, mode == "train", dt)
               for mode in ("eval", "train") for bits, dt in (("f32", torch.float32), ("f64", torch.float64))}
        ref_noise = max(float(np.abs(out[f"{m}_f32"] - out[f"{m}_f64"]).max() / np.abs(out[f"{m}_f64"]).max())
                        for m in ("eval", "train"))
        meta = {"id": fid, "source": source, "seed": seed, "input_shape": INPUT_SHAPE,
                "model": fid.split("_", 1)[1], "specs": specs,
                "params": int(sum(p.numel() for p in model.parameters())),
                "reference_f32_vs_f64": ref_noise,
                "versions": {"torch": torch.__version__, "timm": timm.__version__, "torchvision": tv.__version__}}
        if ref_noise <= 1e-4:  # float32 is precise enough to compare in: the float64 logits are not needed
            out = {k: v for k, v in out.items() if k.endswith("f32")}
        path = os.path.join(args.out, fid + ".npz")
        np.savez_compressed(path, meta=np.array(json.dumps(meta)), **{k: v.astype(np.float64 if k.endswith("f64")
                                                                                       else np.float32)
                                                                        for k, v in out.items()})
        print(f"{fid}: {meta['params']:,} parameters, reference float32 vs float64 {ref_noise:.2e}, "
              f"{os.path.getsize(path) / 1024:.0f} KB")


if __name__ == "__main__":
    main()
