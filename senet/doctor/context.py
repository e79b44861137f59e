"""What the doctor's checks share: their result (Outcome), the Context, and the helpers for configs, output
and float comparisons.

Every check builds what it needs the way the tools do (senet.config, senet.train, senet.step,
senet.checkpoint, senet.export, senet.inference), so a PASS means the trainer's own code ran on this
machine. The checks share one fixed synthetic batch (uint8 NHWC, seed 0), the repository config of
the doctor's sizes (configs/se_resnet50.yaml) with synthetic data, and a work folder. A check returns
an Outcome (PASS / FAIL / SKIP, the reason, and for a FAIL the fix); the runner turns an exception
inside one into a FAIL (senet.doctor.run_check).

Float comparisons follow senet/numerics.py: NHWC and exported engines against dygraph NCHW within
SAFETY x the float32 noise measured against float64 twins on the same inputs, and a state written and
read back bitwise.

Several trainer states live in this one process, where a fresh process would start Paddle's name
counters from zero: parameter, accumulator and master-weight names key the optimizer's state. Each
state's whole life therefore runs inside its own `fresh_names()`, so its names are those of a fresh
process, as when a user resumes.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import io
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from senet.config import load_config
from senet.doctor.plan import Sizes, o2_dtype, on_gpu
from senet.numerics import top1_disagreements, within_noise

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Images in each comparison of logits. Each comparison runs se_resnet50 in float64 on the CPU: 8 images at a
# GPU's 224 px took 1.9 s on this project's 2-core CPU; the whole batch of 32 would take about 4x that, in
# each of the three comparisons.
COMPARED = 8
REPORT_FIX = "send doctor.json with a bug report (it holds this check's log and traceback)"


@dataclass(frozen=True)
class Outcome:
    status: str  # PASS | FAIL | SKIP
    reason: str
    fix: str = ""


def passed(reason: str) -> Outcome:
    return Outcome("PASS", reason)


def failed(reason: str, fix: str = REPORT_FIX) -> Outcome:
    return Outcome("FAIL", reason, fix)


def skipped(reason: str) -> Outcome:
    return Outcome("SKIP", reason)


@dataclass
class Context:
    """What the checks share: the machine, the sizes, the work folder, the fixed batch, earlier results."""

    machine: dict[str, Any]
    sizes: Sizes
    workdir: str
    status: dict[str, str] = field(default_factory=dict)  # check name -> its status so far
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def gpu(self) -> bool:
        return on_gpu(self.machine)

    @property
    def device(self) -> str:
        return "GPU 0" if self.gpu else "CPU"

    def pipeline_amp(self) -> dict:
        """AMP O2 (bf16 where the GPU has it, else fp16) on a GPU; fp32 on a CPU, where AMP does nothing."""
        return {"enabled": True, "level": "O2", "dtype": o2_dtype(self.machine)} if self.gpu else {"enabled": False}

    def config(
        self,
        folder: str,
        amp: dict | None = None,
        data_format: str = "NCHW",
        ema: bool = False,
        epochs: int = 1,
        extra: tuple[str, ...] = (),
    ) -> dict:
        """The sizes' config (configs/se_resnet50.yaml) on synthetic data at the doctor's sizes: two training steps
        an epoch and one val batch; the run folder under the work folder; no loader workers (the data is in
        memory). The config's own num_classes (1000 for ImageNet) and recipe stay as they are; the EMA decays at
        0.9, so that it moves in a few steps (at ImageNet's 0.9999 it would stay at the initial weights)."""
        s = self.sizes
        amp = amp or {"enabled": False}
        overrides = [
            f"output_dir={os.path.join(self.workdir, folder)}",
            "name=doctor",
            "data.name=synthetic",
            f"data.image_size={s.image_size}",
            f"data.eval_crop={s.image_size}",
            f"data.batch_size={s.batch}",
            f"data.synthetic_train_size={2 * s.batch}",
            f"data.synthetic_val_size={s.batch}",
            "data.num_workers=0",
            f"train.epochs={epochs}",
            "train.log_every=1",
            "train.save_every=0",
            f"train.data_format={data_format}",
            f"train.ema.enabled={str(ema).lower()}",
            "train.ema.decay=0.9",
            *(f"train.amp.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in amp.items()),
            *extra,
        ]
        return load_config(os.path.join(ROOT, s.config), overrides)

    def batch(self) -> tuple[np.ndarray, np.ndarray]:
        """The fixed synthetic batch: uint8 NHWC images and int64 labels of the config's classes."""
        rng = np.random.default_rng(0)
        s, classes = self.sizes, self.config("batch")["model"]["num_classes"]
        return (
            rng.integers(0, 256, (s.batch, s.image_size, s.image_size, 3), dtype=np.uint8),
            rng.integers(0, classes, s.batch).astype(np.int64),
        )

    def compared_images(self) -> np.ndarray:
        """The images whose logits are compared across paths (layouts, engines): the first COMPARED of the batch,
        since each comparison also runs the network in float64 on the CPU."""
        return self.batch()[0][:COMPARED]

    def needs(self, name: str) -> Outcome | None:
        """A SKIP if the check `name` this one builds on did not pass."""
        if self.status.get(name) != "PASS":
            return skipped(f"needs {name}, which did not pass ({self.status.get(name, 'not run')})")
        return None


@contextlib.contextmanager
def fresh_names() -> Iterator[None]:
    """Paddle's name counters from zero, as in a fresh process (see the module docstring)."""
    import paddle

    with paddle.utils.unique_name.guard():
        yield


@contextlib.contextmanager
def captured(log: io.StringIO) -> Iterator[io.StringIO]:
    """What the `with` body prints goes into `log`, not into the report: Python's prints (the trainer's log
    lines, notices) and, through file descriptors 1 and 2, C and C++ code's (paddle2onnx's progress)."""
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as tmp, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            saved = [os.dup(1), os.dup(2)]
        except OSError:  # a closed descriptor: Python's prints are still caught
            yield log
            return
        for fd in (1, 2):
            os.dup2(tmp.fileno(), fd)
        try:
            yield log
        finally:
            ctypes.CDLL(None).fflush(None)  # C stdio buffers, which would otherwise flush at exit, into the report
            for fd, old in zip((1, 2), saved):
                os.dup2(old, fd)
                os.close(old)
            tmp.seek(0)
            log.write(tmp.read().decode(errors="replace"))


def notices(log: io.StringIO) -> list[str]:
    return [ln.strip() for ln in log.getvalue().splitlines() if ln.strip().startswith("notice:")]


def tensors(batch: tuple[np.ndarray, np.ndarray]) -> tuple[Any, Any]:
    import paddle

    return paddle.to_tensor(batch[0]), paddle.to_tensor(batch[1])


def float64_logits(
    model: Any, images: np.ndarray, mean: list[float], std: list[float], data_format: str = "NCHW"
) -> np.ndarray:
    """The same network in float64 on the same uint8 NHWC images (normalised in float64), in the model's
    layout: the reference that measures a float32 forward pass's noise (senet/numerics.py).

    It runs on the CPU, also on a GPU machine: cuDNN has no float64 kernels for some layouts (NHWC), and the
    CPU's float64 is exact enough to measure the GPU's float32 (or TF32) rounding.
    """
    import paddle

    device = paddle.get_device()
    paddle.set_device("cpu")
    try:
        twin = copy.deepcopy(model)
        twin.to(device="cpu", dtype="float64")
        twin.eval()
        x = (images.astype(np.float64) / 255 - np.asarray(mean)) / np.asarray(std)
        x = x.transpose(0, 3, 1, 2) if data_format == "NCHW" else x
        with paddle.no_grad():
            return twin(paddle.to_tensor(np.ascontiguousarray(x))).numpy()
    finally:
        paddle.set_device(device)


def agreement_outcome(what: str, got: np.ndarray, ref: np.ndarray, noise: float) -> Outcome:
    """`got` against the float32 reference `ref`: within SAFETY x noise, and the same top-1 where that is clear."""
    agreement = within_noise(got, ref, noise)
    if not agreement.ok:
        return failed(f"{what}: {agreement}")
    swapped = top1_disagreements(got, ref, agreement.bound)
    if swapped:
        return failed(f"{what}: within the bound, but {swapped} image(s) change their top-1 class")
    return passed(f"{what}: {agreement}")
