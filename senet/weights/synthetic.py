"""Seeded weights and inputs for the equivalence fixtures, in numpy only (no paddle, no torch).

scripts/make_weight_fixtures.py (with torch and timm) and tests/test_convert.py (without them) both
call these, so the fixtures store only the seed, the tensor names and shapes, and the reference
logits: the weights themselves are remade here, bit for bit, from the seed.

Each tensor gets its own generator, seeded by (seed, CRC-32 of its name), so the values do not depend
on the order of the keys. The scales keep activations of order one through a deep random network
(He fan-in for convs), so logits are not dominated by float32 rounding.
"""

from __future__ import annotations

import zlib

import numpy as np


def synthetic_tensor(
    name: str, shape: tuple[int, ...], seed: int, dtype: str = "float32", last_bn: bool = False
) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    shape = tuple(shape)
    if np.dtype(dtype).kind != "f":  # torch's num_batches_tracked counters
        return np.zeros(shape, dtype=dtype)
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("running_var", "_variance"):
        a = rng.uniform(0.5, 1.5, shape)
    elif leaf in ("running_mean", "_mean"):
        a = rng.normal(0.0, 0.1, shape)
    elif len(shape) == 1 and leaf == "weight":  # a BatchNorm scale; small at the end of a residual branch
        a = rng.uniform(0.1, 0.3, shape) if last_bn else rng.uniform(0.5, 1.0, shape)
    elif len(shape) == 1:  # biases
        a = rng.normal(0.0, 0.1, shape)
    elif len(shape) == 4:  # conv [out, in / groups, kh, kw]
        a = rng.normal(0.0, np.sqrt(2.0 / (shape[1] * shape[2] * shape[3])), shape)
    else:  # Linear: 1 / sqrt(fan_in), fan_in the smaller side is not assumed: both layouts appear
        a = rng.normal(0.0, np.sqrt(1.0 / min(shape)), shape)
    return a.astype(dtype)


def synthetic_state(specs: list[tuple[str, tuple[int, ...], str]], seed: int) -> dict[str, np.ndarray]:
    """{name: tensor} for (name, shape, dtype) specs, as the source framework names and shapes them.

    The last BatchNorm of each residual branch (torch names: the highest bnK of a block) gets scales
    of 0.1-0.3, as trained networks have them: the residual stream then grows slowly with depth, and
    a 152-layer net's float32 logits stay within the equivalence bound of its float64 ones.
    """
    last: dict[str, int] = {}
    for name, _, _ in specs:
        parts = name.split(".")
        if len(parts) == 4 and parts[0].startswith("layer") and parts[2][:2] == "bn" and parts[2][2:].isdigit():
            key = ".".join(parts[:2])
            last[key] = max(last.get(key, 0), int(parts[2][2:]))
    lasts = {f"{k}.bn{n}.weight" for k, n in last.items()}
    return {name: synthetic_tensor(name, tuple(shape), seed, dtype, name in lasts) for name, shape, dtype in specs}


def synthetic_input(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A seeded float32 image batch, N x 3 x H x W, roughly normalised."""
    return np.random.default_rng([seed, 7]).normal(0.0, 1.0, shape).astype(np.float32)
