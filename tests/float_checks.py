"""The tests' side of senet.numerics: assertions within the measured float32 noise and float64 twins
of layers (senet/numerics.py says which kind of comparison gets which bound; the `threads` fixture
of conftest.py runs a comparison at 1 thread and at every core)."""

import copy
import json
import os

import numpy as np
import paddle

from senet.numerics import float32_noise, float64_noise, top1_disagreements, within_noise


def check(a, b, noise: float, what: str = ""):
    """within_noise(a, b, noise), appended as a JSON line to the file SENET_NOISE_LOG names, if set: each
    comparison's difference, noise and bound, per test (the figures of docs/reliability.md)."""
    agreement = within_noise(np.asarray(a), np.asarray(b), noise)
    if os.environ.get("SENET_NOISE_LOG"):
        with open(os.environ["SENET_NOISE_LOG"], "a") as f:
            f.write(
                json.dumps(
                    {
                        "test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0],
                        "what": what,
                        "diff": agreement.diff,
                        "noise": agreement.noise,
                        "bound": agreement.bound,
                    }
                )
                + "\n"
            )
    return agreement


def assert_within_noise(a, b, noise: float, what: str = "") -> None:
    agreement = check(a, b, noise, what)
    assert agreement.ok, f"{what}: {agreement}"


def float64_twin(layer: paddle.nn.Layer) -> paddle.nn.Layer:
    """A float64 copy of a layer (weights and BN statistics cast exactly; the layer keeps its mode)."""
    twin = copy.deepcopy(layer)
    twin.to(dtype="float64")
    return twin


def run(layer, *inputs) -> np.ndarray:
    """layer(*inputs) without gradients, as numpy; numpy inputs are taken in their own dtype."""
    with paddle.no_grad():
        return layer(*[paddle.to_tensor(x) if isinstance(x, np.ndarray) else x for x in inputs]).numpy()


def layer_noise(layer: paddle.nn.Layer, *inputs: np.ndarray) -> tuple[np.ndarray, float]:
    """layer(*inputs) in float32, and its float32 noise: against the layer's float64 twin on the same
    (float32) inputs."""
    f32 = run(layer, *inputs)
    return f32, float32_noise(f32, run(float64_twin(layer), *[np.asarray(x, dtype=np.float64) for x in inputs]))


def assert_layer_matches(got: np.ndarray, layer: paddle.nn.Layer, *inputs: np.ndarray, what: str = "") -> None:
    """got (float32, another path) within SAFETY x the float32 noise of layer(*inputs)."""
    f32, noise = layer_noise(layer, *inputs)
    assert_within_noise(got, f32, noise, what)


def assert_float64_matches(got64: np.ndarray, want64: np.ndarray, f32: np.ndarray, what: str = "") -> None:
    """Two float64 results of the same math, within SAFETY x the float64 noise (the float32 noise of f32
    against got64, scaled by 2^-29)."""
    assert_within_noise(got64, want64, float64_noise(f32, got64), what)


def dygraph_reference(model: paddle.nn.Layer, images: np.ndarray, mean, std) -> tuple[np.ndarray, float]:
    """Dygraph's float32 logits of uint8 NHWC images (senet.export.dygraph_logits) and the float32 noise of
    that forward pass, against the float64 twin on the same images normalised in float64."""
    from senet.export import dygraph_logits

    ref = dygraph_logits(model, images, mean, std)
    x64 = ((images.astype(np.float64) / 255 - mean) / std).transpose(0, 3, 1, 2)
    return ref, float32_noise(ref, run(float64_twin(model), x64))


def assert_engine_agrees(logits: np.ndarray, ref: np.ndarray, noise: float, what: str = "") -> None:
    """An engine's logits within SAFETY x noise of dygraph's, and the same top-1 class wherever dygraph's
    top two are further apart than that."""
    agreement = check(logits, ref, noise, what)
    assert agreement.ok, f"{what}: {agreement}"
    assert top1_disagreements(logits, ref, agreement.bound) == 0, f"{what}: top-1 differs"
