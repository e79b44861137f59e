"""Export a model for deployment: a static Paddle inference model, ONNX, an int8 ONNX model, safetensors
weights, inference.yml.

    export(cfg, "output/se_resnet50/export", ["paddle", "onnx", "int8", "safetensors"])

writes, in one folder:
- `model.json` + `model.pdiparams`: the static graph for Paddle Inference (`paddle.jit.save`), input
  `x` float32 NCHW [batch, 3, H, W] with any batch size and H = W = the eval crop;
- `model.onnx`: the same graph through paddle2onnx, opset >= 13, converted offline;
- `model.int8.onnx`: that ONNX graph quantised to int8 (QDQ), calibrated on training images
  (senet.quantize; ONNX Runtime and OpenVINO run it); its calibration set and settings go in
  inference.yml. bf16 needs no file of its own: the engines convert the fp32 model when they load it;
- `model.safetensors`: the weights alone, safe to share (no pickle), loadable as `model.weights`;
- `inference.yml`: what a deployment needs besides the graph: resize, crop, mean, std, input layout,
  class names, arch, num_classes (fields in docs/export.md).

The static graph is always NCHW: a model trained with `train.data_format=NHWC` has the same weights
(Paddle stores conv kernels as OIHW in both layouts), and oneDNN's NHWC fusions fail on SE blocks in
Paddle 3.3.1. Every registered attention block (SE, ECA, CBAM; senet.attention) exports through the
same path; tests/test_export.py checks each against dygraph in both engines.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import paddle
import yaml

from senet.attention import attention_blocks, kernels, split_arch
from senet.checkpoint import atomic_write, check_classes, load_weights, save_safetensors
from senet.data import DatasetError, build_dataset, normalize_batch
from senet.folders import new_temp_folder, swap_into_place
from senet.imagenet_classes import imagenet_names_for
from senet.inference import ENGINE_PRECISIONS, stdout_to_stderr
from senet.limits import sha256_file
from senet.quantize import CALIBRATION_IMAGES, QuantizeError, quantize_int8
from senet.resnet import build_model
from senet.runtime import PADDLE_PIR_OUT, filter_stderr

FORMATS = ("paddle", "onnx", "int8", "safetensors")
DEFAULT_FORMATS = ("paddle", "onnx", "safetensors")  # export()'s default: int8 needs training images to calibrate
ONNX_OPSET = 13  # the lowest opset asked for; paddle2onnx may raise it if an op needs a newer one
INFO_FILE = "inference.yml"
PADDLE_PREFIX = "model"  # model.json + model.pdiparams
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
SAFETENSORS_FILE = "model.safetensors"
INPUT_NAME = "x"


class ExportError(ValueError):
    """An export that cannot be done; the message says why and what to do."""


def parse_formats(names: list[str]) -> list[str]:
    """["all"] or any of FORMATS (comma-separated values allowed) -> the formats, in FORMATS order."""
    wanted = set()
    for name in names:
        for part in name.split(","):
            part = part.strip().lower()
            if part == "all":
                wanted.update(FORMATS)
            elif part in FORMATS:
                wanted.add(part)
            else:
                raise ExportError(f"unknown export format {part!r}; known: {', '.join(FORMATS)}, all")
    if not wanted:
        raise ExportError(f"no export format given; choose from {', '.join(FORMATS)}, all")
    return [f for f in FORMATS if f in wanted]


def load_model(cfg: dict) -> tuple[paddle.nn.Layer, list[str] | None]:
    """The config's model, NCHW, in eval mode, with `model.weights` loaded (shape-checked, pickle-safe),
    and the class list the weights record (None if they record none)."""
    weights = cfg["model"]["weights"]
    if not weights:
        raise ExportError(
            "model.weights is not set: give the trained weights with -o model.weights=PATH "
            "(a .safetensors file or one of our .pdparams checkpoints)"
        )
    model = build_model(_nchw(cfg))
    classes = load_weights(model, weights, trust=cfg["model"]["trust_pickle"], expected_arch=cfg["model"]["arch"])
    model.eval()
    return model, classes


def _nchw(cfg: dict) -> dict:
    out = copy.deepcopy(cfg)
    out["train"]["data_format"] = "NCHW"
    return out


def eval_geometry(cfg: dict) -> tuple[int, int, list[str] | None]:
    """(resize, crop, class names or None): the shorter-side resize and centre crop that the val split uses.

    Image folders are resized to data.eval_resize and cropped to data.eval_crop. In-memory sets
    (CIFAR, digits, synthetic) are stored at their final size and not resized, so resize = crop =
    that size. The dataset is built when it can be (class names come from it); when its files are
    not on this machine the config alone decides and classes are left as indices.
    """
    d = cfg["data"]
    crop = d["eval_crop"]
    resize = d["eval_resize"] if d["name"] == "imagenet" else crop
    try:
        with warnings.catch_warnings():  # a num_classes mismatch warning is the trainer's business
            warnings.simplefilter("ignore")
            dataset = build_dataset(cfg, "val")
    except (DatasetError, OSError, ValueError, ImportError) as e:
        print(
            f"notice: the val split could not be read ({str(e).splitlines()[0]}); class names will be indices",
            file=sys.stderr,
        )
        return resize, crop, None
    if d["name"] != "imagenet":  # stored at their final size, never resized: one sample tells it
        h, w = dataset[0][0].shape[:2]
        if h != w:
            raise ExportError(f"the val images are {h}x{w}; export needs square images")
        resize = crop = int(h)
    return resize, crop, [str(c) for c in dataset.classes]


def save_static(model: paddle.nn.Layer, prefix: str, size: int) -> dict:
    """`paddle.jit.save` with a dynamic batch and pooled attention squeezes; returns inference.yml's entry."""
    spec = paddle.static.InputSpec([None, 3, size, size], "float32", INPUT_NAME)
    with pooled_squeezes(model), filter_stderr(PADDLE_PIR_OUT):  # a known, harmless glog line (runtime.py)
        paddle.jit.save(model, prefix, input_spec=[spec])
    name = os.path.basename(prefix)
    entry: dict[str, Any] = {"model": name + ".json", "params": name + ".pdiparams"}
    if "pd_op.pad" in graph_ops(prefix):
        # Paddle 3.3.1's oneDNN pad kernel corrupts the heap ("free(): invalid pointer") on the CIFAR
        # ResNets' zero-padded shortcuts. The Predictor then keeps unfused ops on Paddle's own kernels.
        entry["onednn_placement"] = False
    return entry


@contextlib.contextmanager
def pooled_squeezes(model: paddle.nn.Layer) -> Iterator[int]:
    """While exporting, every attention block's global mean over H x W is a global average pool
    (senet.attention.kernels.pooled_means says why). Yields the number of attention blocks."""
    with kernels.pooled_means():
        yield len(attention_blocks(model))


def graph_ops(prefix: str) -> set[str]:
    """The op names of a saved static graph, e.g. {"pd_op.conv2d", ...}."""
    was_dynamic = paddle.in_dynamic_mode()
    paddle.enable_static()
    try:
        with paddle.static.scope_guard(paddle.static.Scope()):
            exe = paddle.static.Executor(paddle.CPUPlace())
            program, _, _ = paddle.static.load_inference_model(prefix, exe)
            return {op.name() for op in program.global_block().ops}
    finally:
        if was_dynamic:
            paddle.disable_static()


def save_onnx(prefix: str, path: str) -> int:
    """Convert a saved static model to ONNX, offline. Returns the opset written.

    paddle2onnx's default `optimize_tool="polygraphy"` sets POLYGRAPHY_AUTOINSTALL_DEPS=1, and
    polygraphy then pip-installs packages: "None" skips that step (the converter's own C++ graph
    optimisation still runs). With save_file=None it returns the bytes, which we write atomically.
    """
    import paddle2onnx  # its ccache warning (from Paddle's cpp_extension) is filtered by senet.runtime.quiet_paddle

    try:
        with stdout_to_stderr():
            data = paddle2onnx.export(
                prefix + ".json",
                prefix + ".pdiparams",
                save_file=None,
                opset_version=ONNX_OPSET,
                auto_upgrade_opset=True,
                verbose=False,
                enable_onnx_checker=True,
                optimize_tool="None",
            )
    except Exception as e:  # paddle2onnx logs the cause, then fails on an unset local: report ours
        raise ExportError(
            f"paddle2onnx could not convert the model ({type(e).__name__}: {e}); its log above names the operator"
        ) from None
    atomic_write(path, data)
    return onnx_opset(path)


def onnx_opset(path: str) -> int:
    import onnx

    model = onnx.load(path, load_external_data=False)
    return max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def file_digests(output: str, files: dict) -> dict[str, str]:
    """{file name: SHA-256} of every file inference.yml lists: the Predictor checks them before loading."""
    names = [
        v
        for entry in files.values()
        for v in (entry.values() if isinstance(entry, dict) else [entry])
        if isinstance(v, str)
    ]
    return {name: sha256_file(os.path.join(output, name)) for name in names}


def inference_info(cfg: dict, resize: int, crop: int, classes: list[str] | None, files: dict) -> dict:
    """The contents of inference.yml (see docs/export.md)."""
    m, d = cfg["model"], cfg["data"]
    num_classes = m["num_classes"]
    if classes is not None and len(classes) != num_classes:  # fewer classes than outputs: pad with indices
        classes = classes + [str(i) for i in range(len(classes), num_classes)]
    # ImageNet-1k models (trained here or converted, tools/convert_weights.py) get readable class names.
    names = imagenet_names_for(classes, num_classes) if d["name"] == "imagenet" else None
    return {
        "arch": m["arch"],
        "num_classes": num_classes,
        "preprocess": {
            "color": "RGB",
            "resize": resize,  # shorter side, pixels (area interpolation when shrinking, bilinear when enlarging)
            "crop": crop,  # centre crop, pixels
            "mean": [float(v) for v in d["mean"]],  # on the 0..1 scale: x = (pixel / 255 - mean) / std
            "std": [float(v) for v in d["std"]],
        },
        "input": {"name": INPUT_NAME, "layout": "NCHW", "dtype": "float32", "shape": [-1, 3, crop, crop]},
        "class_names": names or classes or [str(i) for i in range(num_classes)],
        "class_names_from": "imagenet" if names else "dataset" if classes is not None else "indices",
        # the classes the outputs stand for, in label order (the weights' record, else the data's):
        # tools/eval.py --model checks the val data against them
        "classes": classes,
        "files": files,
        "source": {"config": cfg["name"], "weights": m["weights"]},
    }


def export(
    cfg: dict,
    output: str,
    formats: list[str] | tuple[str, ...] = DEFAULT_FORMATS,
    model: paddle.nn.Layer | None = None,
    calibration_images: int | None = None,
    int8_optional: bool = False,
) -> dict[str, Any]:
    """Write the requested formats and inference.yml to `output`; return inference.yml's contents.

    `model` defaults to the config's model with `model.weights` loaded (see load_model); pass one
    to export it as it is (it must be NCHW and in eval mode). int8 is calibrated on
    `calibration_images` training images (senet.quantize.CALIBRATION_IMAGES by default); with
    `int8_optional` (the "all" of tools/export.py) a train split that cannot be read skips int8 with
    a notice instead of failing the export.
    """
    formats = parse_formats(list(formats))
    calibration_images = CALIBRATION_IMAGES if calibration_images is None else calibration_images
    output = os.path.abspath(output)
    if os.path.lexists(output) and not (
        os.path.isdir(output)
        and not os.path.islink(output)
        and (not os.listdir(output) or os.path.isfile(os.path.join(output, INFO_FILE)))
    ):
        raise ExportError(
            f"--output {output} exists and is not an export folder (no {INFO_FILE}); an export "
            f"replaces the folder whole: choose a new one"
        )
    recorded = None
    if model is None:
        model, recorded = load_model(cfg)
    resize, crop, classes = eval_geometry(cfg)
    # The classes the weights were trained on name the outputs; the data root's are only a fallback for
    # weights that record none (converted, older). A data root whose classes differ is refused: its names
    # would label every output wrongly (issue 23: one class folder missing shifted all the names after it).
    check_classes(recorded, classes, cfg["model"]["weights"], cfg["data"]["allow_class_change"])
    classes = recorded if recorded is not None else classes
    try:
        tmp = new_temp_folder(output)  # written whole, then swapped in: a failure leaves the previous export
    except OSError as e:
        raise ExportError(f"cannot write beside {output} ({e.strerror or e})") from None
    try:
        info = _write_export(cfg, model, tmp, formats, resize, crop, classes, calibration_images, int8_optional)
        swap_into_place(tmp, output)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            kept = "the previous export there is intact" if os.path.isdir(output) else "nothing was written"
            raise ExportError(f"could not write the export {output} ({e.strerror or e}); {kept}") from None
        raise
    return info


def _write_export(
    cfg: dict,
    model: paddle.nn.Layer,
    folder: str,
    formats: list[str],
    resize: int,
    crop: int,
    classes: list[str] | None,
    calibration_images: int,
    int8_optional: bool,
) -> dict[str, Any]:
    """The formats and inference.yml, written into `folder` (a new temporary one)."""
    files: dict[str, Any] = {}
    if {"paddle", "onnx", "int8"} & set(formats):
        # ONNX is converted from the static graph, int8 from ONNX; graphs not asked for are temporary.
        static_dir = folder if "paddle" in formats else tempfile.mkdtemp(prefix=".static-", dir=folder)
        try:
            prefix = os.path.join(static_dir, PADDLE_PREFIX)
            entry = save_static(model, prefix, crop)
            if "paddle" in formats:
                files["paddle"] = entry
            if "onnx" in formats or "int8" in formats:
                onnx_path = os.path.join(folder if "onnx" in formats else static_dir, ONNX_FILE)
                opset = save_onnx(prefix, onnx_path)
                if "onnx" in formats:
                    files["onnx"] = {"model": ONNX_FILE, "opset": opset}
            if "int8" in formats:
                int8 = save_int8(cfg, onnx_path, os.path.join(folder, INT8_FILE), calibration_images, int8_optional)
                if int8 is not None:
                    files["int8"] = int8
        finally:
            if static_dir != folder:
                shutil.rmtree(static_dir, ignore_errors=True)
    if "safetensors" in formats:
        meta = {
            "arch": cfg["model"]["arch"],
            "num_classes": cfg["model"]["num_classes"],
            **attention_section(cfg),
            **({"classes": classes} if classes is not None else {}),
        }
        save_safetensors(model, os.path.join(folder, SAFETENSORS_FILE), metadata=meta)
        files["safetensors"] = SAFETENSORS_FILE
    info = inference_info(cfg, resize, crop, classes, files)
    info["precisions"] = engine_precisions(files)
    info["sha256"] = file_digests(folder, files)
    atomic_write(os.path.join(folder, INFO_FILE), yaml.safe_dump(info, sort_keys=False).encode())
    return info


def engine_precisions(files: dict) -> dict[str, list[str]]:
    """{precision: the engines that run it from these files}, for inference.yml (senet.inference.ENGINE_PRECISIONS).
    bf16 is each engine's conversion of the fp32 graph at load time, on CPUs with bf16 instructions."""
    source = {"paddle": "paddle", "onnxruntime": "onnx", "openvino": "onnx"}  # the fp32 / bf16 graph of each
    out: dict[str, list[str]] = {}
    for engine, precisions in ENGINE_PRECISIONS.items():
        for p in precisions:
            if (p == "int8" and "int8" in files) or (p != "int8" and source[engine] in files):
                out.setdefault(p, []).append(engine)
    return out


def save_int8(cfg: dict, onnx_path: str, out_path: str, images: int, optional: bool) -> dict | None:
    """The int8 QDQ model of an fp32 ONNX file (senet.quantize) and its inference.yml entry; None (with a
    notice) when `optional` and the training images cannot be read."""
    try:
        with stdout_to_stderr():  # stdout stays clean for tools that print JSON there
            calibration = quantize_int8(cfg, onnx_path, out_path, images=images, seed=cfg["train"]["seed"])
    except QuantizeError as e:
        if not optional:
            raise ExportError(str(e)) from None
        print(f"notice: int8 skipped: {e}", file=sys.stderr)
        return None
    return {"model": os.path.basename(out_path), "opset": onnx_opset(out_path), "calibration": calibration}


def attention_section(cfg: dict) -> dict:
    """{"eca": the model.eca options} for an eca_ arch (likewise se, cbam): the settings the weights were
    trained with, for the safetensors metadata; {} for a plain network."""
    entry, _ = split_arch(cfg["model"]["arch"])
    return {entry.name: cfg["model"].get(entry.name, {})} if entry is not None else {}


def dygraph_logits(model: paddle.nn.Layer, images: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    """The reference: eval-mode dygraph logits of uint8 NHWC images, normalised as the trainer does."""
    with paddle.no_grad():
        x = normalize_batch(paddle.to_tensor(images), mean, std, "NCHW")
        return model(x).numpy()
