"""How float results are compared: within the float32 noise of the computation, measured where it runs.

A float32 result carries rounding noise. Its size follows from the computation; its exact bits
follow from the machine and the thread count. The math libraries in Paddle's CPU wheel pick their
kernels at run time: MKL 2019.0.5 (dygraph's convolutions and matrix products) runs AVX-512 code on
an Intel Xeon, AVX2 or SSE code elsewhere; oneDNN (Paddle Inference) and ONNX Runtime's MLAS do the
same by instruction set. Another thread count splits a sum another way. Paddle's own batch-norm
kernel computes 1 / sqrt(1 + 0) exactly on an AMD EPYC and 2 ulp off on an Intel Xeon. So a bound
read off one machine fails on another (issue 21: logits stored on an AMD EPYC missed an rtol of
1e-6 on an Intel Xeon by 1.9e-7). A bound must come from the computation itself, measured on the
machine that runs the check.

Every comparison of numbers in tests/ (and in the doctor) is one of these kinds:

1. **Bitwise** (`np.array_equal`): the same code, on the same inputs, on the same machine, at the
   same thread count: a resumed run against an uninterrupted one, a file written and read back, a
   seed run twice, ranks kept in step, a tensor picked out of a network by hooks. Also elementwise
   operations that IEEE 754 rounds correctly on every CPU (+, *, max, a copy). Never a result
   stored on another machine.
2. **Within float32 noise** (`within_noise`): the same math along two paths or on two machines: a
   speed kernel against its reference, a traced graph or an exported engine against dygraph, NHWC
   against NCHW, one thread count against another, today's model against logits stored elsewhere,
   our converted model against timm's. The noise is measured on the same inputs, as the largest
   |float32 - float64| of one side's computation run again in float64 (`float32_noise`; the
   noisier side where both can be run), and at least one float32 spacing of the largest reference
   value (an exact computation measures 0).
   The two sides must agree within SAFETY x noise.
3. **Float64 against float64** (a converted model against its source, both in float64): rule 2
   with the float32 noise scaled by the ratio of the unit roundoffs, 2^-53 / 2^-24 = 2^-29
   (`float64_noise`): rounding noise is proportional to the unit roundoff for the same sequence of
   operations.
4. **Lossy storage**: a value stored as float16 is within half a float16 spacing of the float32
   value (`float16_step`).
5. **Results of a process that learns or samples**: a training run, an accuracy, a statistic of
   random draws. Float noise changes which way a run goes, so these bounds come from the spread of
   the quantity itself (the test states which), not from this module.

SAFETY = 4. Each float32 path lies about `noise` from the float64 value, so two paths differ by up
to about twice the noise when their noises are alike. Measured by `scripts/measure_noise.py` at 1
and 2 threads and under MKL's and oneDNN's AVX-512, AVX2 and SSE4.2 kernels on an Intel Xeon
(docs/reliability.md, "Float results on another CPU"), the largest ratio of |path A - path B| to
the noise was 1.52, and 2.00 in the suite's own comparisons (SENET_NOISE_LOG; the batch-norm scale,
2 ulp off on an Intel Xeon); the factor 4 keeps a margin for CPUs not measured, and still catches a real
mistake: another stem pool or stride placement misses by over 1e-2 of the largest logit, where the
noise is about 1e-6 of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAFETY = 4.0
FLOAT64_PER_FLOAT32 = 2.0**-29  # unit roundoff of float64 / of float32


def largest(a: np.ndarray) -> float:
    """max |a| (0 for an empty array), as a float64."""
    a = np.asarray(a, dtype=np.float64)
    return float(np.abs(a).max()) if a.size else 0.0


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| in float64; the shapes must be equal (no broadcasting hides a wrong shape)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} against {b.shape}")
    return largest(a.astype(np.float64) - b.astype(np.float64))


def float32_spacing(a: np.ndarray) -> float:
    """One float32 spacing (ulp) at max |a|: the noise floor of any float32 result of that size."""
    return float(np.spacing(np.float32(largest(a))))


def float32_noise(f32: np.ndarray, f64: np.ndarray) -> float:
    """The float32 noise of a computation: max |f32 - f64| of the same computation run in float32 and in
    float64 on the same inputs, at least one float32 spacing of max |f64| (so that an exact
    computation, whose noise measures 0, still allows the last-bit differences of another path)."""
    return max(max_diff(f32, f64), float32_spacing(f64))


def float64_noise(f32: np.ndarray, f64: np.ndarray) -> float:
    """The float64 noise of the same computation: its float32 noise scaled by 2^-29 (rule 3)."""
    return float32_noise(f32, f64) * FLOAT64_PER_FLOAT32


def float16_step(a: np.ndarray) -> np.ndarray:
    """Half a float16 spacing of each value of a: how far storing it as float16 may move it (rule 4)."""
    return np.spacing(np.abs(np.asarray(a, dtype=np.float32)).astype(np.float16)).astype(np.float32) / 2


@dataclass(frozen=True)
class Agreement:
    """How far two results are apart, against the bound SAFETY x noise."""

    diff: float  # max |a - b|
    noise: float  # the measured noise of the computation
    bound: float  # SAFETY x noise

    @property
    def ok(self) -> bool:
        return self.diff <= self.bound

    @property
    def ratio(self) -> float:
        """diff / noise: how many times the noise the two results are apart."""
        return self.diff / self.noise

    def __str__(self) -> str:
        return (
            f"max |a - b| = {self.diff:.3g}, {self.ratio:.2f} x the measured noise {self.noise:.3g} "
            f"(bound {SAFETY:g} x noise = {self.bound:.3g})"
        )


def within_noise(a: np.ndarray, b: np.ndarray, noise: float) -> Agreement:
    """Compare a and b (equal shapes) against SAFETY x noise, noise from float32_noise or float64_noise."""
    return Agreement(max_diff(a, b), noise, SAFETY * noise)


def top1_disagreements(got: np.ndarray, ref: np.ndarray, bound: float) -> int:
    """Rows of logits [N, classes] whose top-1 class differs although the reference's top two classes are
    further apart than 2 x bound: noise within the bound can swap two classes that close, nothing else."""
    got, ref = np.asarray(got), np.asarray(ref, dtype=np.float64)
    top2 = np.sort(ref, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * bound
    return int((clear & (got.argmax(1) != ref.argmax(1))).sum())
