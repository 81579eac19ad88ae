"""The benchmark oracle: the hand-written numpy steps agree with autodiff frameworks and with dlc."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import workloads as W  # noqa: E402


@pytest.mark.parametrize("name", ["W1", "W2", "W3", "W4"])
def test_numpy_reference_matches_pytorch(name):
    torch_impl = pytest.importorskip("frameworks.torch_impl")
    ref = W.numpy_step(name, W.spec(name))
    got = torch_impl.build(name, W.spec(name))
    for _ in range(3):
        np.testing.assert_allclose(np.asarray(got()), np.asarray(ref()), rtol=2e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["W1", "W4", "W5_mlp", "W6"])
def test_dlc_reference_backend_matches_numpy_reference(name):
    from frameworks import dlc_impl

    s = W.spec(name)
    if name == "W6":  # the full 4M elements are slow on the reference executor; the math is the same
        s["x"] = s["x"][:4096].copy()
    ref = W.numpy_step(name, {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in s.items()})
    step, _ = dlc_impl.build_function(name, s, target="reference")
    for _ in range(3 if name in ("W1", "W4") else 1):
        np.testing.assert_allclose(np.asarray(step(), dtype=np.float64), np.asarray(ref(), dtype=np.float64),
                                   rtol=2e-4, atol=1e-5)


def test_numpy_reference_losses_fall():
    step = W.numpy_step("W1", W.spec("W1"))
    losses = [step() for _ in range(20)]
    assert losses[-1] < 0.9 * losses[0]  # memorising one random batch: slow but steady
