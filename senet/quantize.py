"""INT8 post-training quantisation of an exported ONNX model, calibrated on training images.

    settings = quantize_int8(cfg, "export/model.onnx", "export/model.int8.onnx", images=256)

writes a QDQ model (QuantizeLinear / DequantizeLinear around each quantised op) that ONNX Runtime
and OpenVINO both run with int8 kernels, and returns the settings that inference.yml records under
`files.int8.calibration`.

Why ONNX Runtime's static quantisation and not OpenVINO's NNCF: it ships with onnxruntime, which the
project installs anyway (NNCF would add seven packages), and the QDQ file it writes is one int8
model for both engines that run int8 (ONNX Runtime fuses QDQ pairs into QLinearConv; OpenVINO reads
them as FakeQuantize and runs its int8 transformations), so the two are measured on the same
quantised weights. Paddle Inference reads neither: its int8 needs a quantised Paddle program.

Settings (Jacob et al. 2018's scheme, ONNX Runtime's defaults for CNNs on CPUs):
- the model is first pre-processed by ONNX Runtime (shape inference; batch norm folded into the
  convolutions), so that the folded weights are what is quantised;
- weights: int8, symmetric, one scale per output channel (per_channel); activations: uint8,
  asymmetric, one scale per tensor, from the MinMax range seen over the calibration images;
- the calibration images are `images` training images drawn without replacement by `seed`, each
  through the eval transform (resize, centre crop), normalised exactly as the Predictor does.
  Training images, not val: val is what the accuracy is measured on.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np

from senet.data import DatasetError, build_dataset

CALIBRATION_IMAGES = 256  # training images; MinMax ranges of ResNet activations settle within a few hundred
CALIBRATION_BATCH = 16  # images per calibration forward pass (memory only)


class QuantizeError(ValueError):
    """Quantisation that cannot be done; the message says why and what to do."""


def calibration_images(cfg: dict, count: int, seed: int) -> tuple[np.ndarray, int]:
    """(uint8 NHWC images [count, crop, crop, 3] of the train split through the eval transform, the split's size).

    A split smaller than `count` gives all of its images. In-memory sources are made at their split's
    size (digits and synthetic: data.image_size for train, data.eval_crop for val), so their train
    split is built at the val size here, the size the exported model takes.
    """
    if cfg["data"]["name"] != "imagenet":
        cfg = {**cfg, "data": {**cfg["data"], "image_size": cfg["data"]["eval_crop"]}}
    try:
        dataset = build_dataset(cfg, "train")
    except (DatasetError, OSError, ValueError) as e:
        raise QuantizeError(
            f"int8 calibration needs the training images, which could not be read "
            f"({str(e).splitlines()[0]}); set data.root, or leave int8 out of --format"
        ) from None
    dataset.train = False  # the eval transform: resize and centre crop, no random augmentation
    total = len(dataset)
    if total == 0:
        raise QuantizeError("the train split is empty: int8 calibration needs training images")
    picked = np.sort(np.random.default_rng(seed).choice(total, size=min(count, total), replace=False))
    return np.stack([dataset[int(i)][0] for i in picked]), total


def quantize_int8(
    cfg: dict, onnx_path: str, out_path: str, images: int = CALIBRATION_IMAGES, seed: int = 0
) -> dict[str, Any]:
    """Quantise `onnx_path` (fp32, input `x` NCHW) to the QDQ model `out_path`; return the settings used."""
    import onnxruntime
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnxruntime.set_default_logger_severity(3)  # errors only: paddle2onnx leaves unused initializers it warns about
    if images < 1:
        raise QuantizeError(f"int8 calibration needs at least 1 image, not {images}")
    batch, total = calibration_images(cfg, images, seed)
    d = cfg["data"]
    # The Predictor's arithmetic (senet.inference.Predictor.predict): x * scale + shift in float32.
    scale = np.array([1 / (255 * s) for s in d["std"]], dtype=np.float32)
    shift = np.array([-m / s for m, s in zip(d["mean"], d["std"])], dtype=np.float32)
    x = np.ascontiguousarray((batch.astype(np.float32) * scale + shift).transpose(0, 3, 1, 2))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.parts = iter([{"x": x[i : i + CALIBRATION_BATCH]} for i in range(0, len(x), CALIBRATION_BATCH)])

        def get_next(self) -> dict | None:
            return next(self.parts, None)

    with tempfile.TemporaryDirectory(dir=os.path.dirname(out_path) or None) as tmp:
        prepared = os.path.join(tmp, "prepared.onnx")
        quant_pre_process(onnx_path, prepared, skip_symbolic_shape=True)
        quantize_static(
            prepared,
            out_path,
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
        )
    return {
        "tool": f"onnxruntime.quantization {onnxruntime.__version__}",
        "format": "QDQ",
        "method": "MinMax",
        "split": "train",
        "transform": "eval (resize, centre crop)",
        "images": len(x),
        "split_images": total,
        "seed": seed,
        "weights": "int8, symmetric, per output channel",
        "activations": "uint8, asymmetric, per tensor",
        "batch_norm": "folded into the convolutions before quantising",
    }
