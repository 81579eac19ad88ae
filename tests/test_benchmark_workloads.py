"""The benchmark oracle: the hand-written numpy steps agree with autodiff frameworks and with dlc; W8/W9 across
frameworks; the runner's per-round ratios and tables."""

import importlib.util
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


def test_pytorch_lstm_cell_loop_matches_numpy_reference():
    torch_impl = pytest.importorskip("frameworks.torch_impl")
    ref = W.numpy_step("W3", W.spec("W3"))
    got = torch_impl.build("W3", W.spec("W3"), cell_loop=True)
    for _ in range(3):
        np.testing.assert_allclose(got(), ref(), rtol=2e-4, atol=1e-5)


def _small_resnet_input(s):
    s["x"] = s["x"][:, :, :8, :8].copy()  # global pooling takes any size; 8x8 keeps the numpy reference quick
    return s


def test_resnet_inference_agrees_across_dlc_pytorch_and_jax():
    torch_impl = pytest.importorskip("frameworks.torch_impl")
    from frameworks import dlc_impl

    want = torch_impl.build("W9", _small_resnet_input(W.spec("W9")))()
    step, _ = dlc_impl.build_function("W9", _small_resnet_input(W.spec("W9")), target="reference")
    np.testing.assert_allclose(step(), want, rtol=1e-4, atol=1e-5)
    if importlib.util.find_spec("jax") is not None:
        from frameworks import jax_impl

        np.testing.assert_allclose(jax_impl.build("W9", _small_resnet_input(W.spec("W9")))(), want, rtol=1e-4,
                                   atol=1e-5)


def _small_resnet_batch(s):
    s["x"], s["y"] = s["x"][:4, :, :8, :8].copy(), s["y"][:4].copy()
    return s


@pytest.mark.slow
def test_resnet_training_losses_of_dlc_agree_with_pytorch():
    torch_impl = pytest.importorskip("frameworks.torch_impl")
    from frameworks import dlc_impl

    want = torch_impl.build("W8", _small_resnet_batch(W.spec("W8")))
    got, _ = dlc_impl.build_function("W8", _small_resnet_batch(W.spec("W8")), target="reference")
    # the 4-sample batch is memorised fast and batch statistics of 4 values amplify rounding: two steps, 1e-3
    for _ in range(2):
        np.testing.assert_allclose(got(), want(), rtol=1e-3, atol=1e-5)


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


def _small_gpt_batch(s):
    s["x"], s["y"] = s["x"][:2, :24].copy(), s["y"][:2, :24].copy()
    return s


def test_gpt_block_training_losses_agree_across_dlc_pytorch_and_jax():
    """W10 has no numpy implementation: PyTorch eager (F.scaled_dot_product_attention) is its oracle."""
    torch_impl = pytest.importorskip("frameworks.torch_impl")
    from frameworks import dlc_impl

    want = torch_impl.build("W10", _small_gpt_batch(W.spec("W10")))
    got, _ = dlc_impl.build_function("W10", _small_gpt_batch(W.spec("W10")), target="reference")
    others = []
    if importlib.util.find_spec("jax") is not None:
        from frameworks import jax_impl

        others.append(jax_impl.build("W10", _small_gpt_batch(W.spec("W10"))))
    for _ in range(3):
        loss = want()
        np.testing.assert_allclose(got(), loss, rtol=1e-4)
        for other in others:
            np.testing.assert_allclose(other(), loss, rtol=1e-4)


def test_cached_generation_agrees_with_pytorch():
    """W11: dlc's cached greedy decoding picks the same tokens as PyTorch eager's key/value cache."""
    torch_impl = pytest.importorskip("frameworks.torch_impl")
    from frameworks import dlc_impl

    want = torch_impl.build("W11", W.spec("W11"))
    got, _ = dlc_impl.build_function("W11", W.spec("W11"), target="reference")
    assert [got() for _ in range(20)] == [want() for _ in range(20)]
