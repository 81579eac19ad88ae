"""Philox4x32-10 against the published known-answer vectors; uniform, normal, Bernoulli and dropout ops."""

import numpy as np
import pytest
from helpers import check_grad, run
from scipy import stats

import dlc
from dlc.ops import OPS
from dlc.ops.random import philox4x32

U = np.uint64

# Random123's kat_vectors for philox4x32_10: (counter words, key words, expected output words)
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def _philox_args(counter, key):
    return [U(c) for c in counter] + [U(k) for k in key]


@pytest.mark.parametrize("counter,key,expected", KAT, ids=["zeros", "ones", "pi"])
def test_philox_known_answers(counter, key, expected):
    assert tuple(int(w) for w in philox4x32(*_philox_args(counter, key))) == expected


def test_philox_vectorised_and_under_numba_agree_with_the_vectors():
    numba = pytest.importorskip("numba")
    counters = np.array([c for c, _, _ in KAT], dtype=np.uint64).T
    keys = np.array([k for _, k, _ in KAT], dtype=np.uint64).T
    words = philox4x32(*counters, *keys)
    assert [tuple(int(w[i]) for w in words) for i in range(3)] == [e for _, _, e in KAT]
    jitted = numba.njit(philox4x32)
    for counter, key, expected in KAT:
        assert tuple(int(w) for w in jitted(*_philox_args(counter, key))) == expected


def test_element_i_draws_from_counter_i_and_step():
    seed, step = 0x1234_5678_9ABC, 2 ** 33 + 5  # both wider than 32 bits: the high words matter
    got = run(lambda: dlc.random_uniform((3, 5), seed, step))
    for i in (0, 7, 14):
        w0 = philox4x32(U(i), U(0), U(step & 0xFFFFFFFF), U(step >> 32), U(seed & 0xFFFFFFFF), U(seed >> 32))[0]
        assert got.reshape(-1)[i] == np.float32(int(w0) >> 8) * np.float32(2.0 ** -24)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_uniform_moments_and_range(dtype):
    u = run(lambda: dlc.random_uniform((100_000,), seed=1, step=0, low=-2.0, high=3.0, dtype=dtype))
    assert u.dtype == dtype and u.min() >= -2.0 and u.max() < 3.0
    assert abs(u.mean() - 0.5) < 0.02            # 5 / sqrt(12 * 1e5) = 0.0046 is one standard error
    assert abs(u.var() - 25 / 12) < 0.03
    assert stats.kstest(u, stats.uniform(-2, 5).cdf).pvalue > 1e-4


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_normal_moments(dtype):
    z = run(lambda: dlc.random_normal((100_000,), seed=2, step=0, mean=1.5, std=2.0, dtype=dtype))
    assert z.dtype == dtype and np.isfinite(z).all()
    assert abs(z.mean() - 1.5) < 0.03            # standard error 2 / sqrt(1e5) = 0.0063
    assert abs(z.std() - 2.0) < 0.03
    assert abs(stats.skew(z)) < 0.05 and abs(stats.kurtosis(z)) < 0.1
    assert stats.kstest(z, stats.norm(1.5, 2.0).cdf).pvalue > 1e-4


def test_bernoulli_rate():
    b = run(lambda: dlc.random_bernoulli((200, 500), 0.3, seed=3, step=0))
    assert b.dtype == np.bool_ and b.shape == (200, 500)
    assert abs(b.mean() - 0.3) < 0.006           # standard error 0.0014
    assert not run(lambda: dlc.random_bernoulli((1000,), 0.0, seed=3, step=0)).any()
    assert run(lambda: dlc.random_bernoulli((1000,), 1.0, seed=3, step=0)).all()


def test_dropout_scales_kept_values_and_repeats_its_mask_for_the_same_step(rng):
    x = rng.uniform(1.0, 2.0, size=(400, 250))
    p = 0.25
    xt = dlc.input("x", x.shape, "float64")
    step = dlc.input("step", (), "int64")
    f = dlc.compile(dlc.dropout(xt, p, seed=11, step=step), inputs=[xt, step])
    y = f(x, np.int64(4))
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / (1 - p), rtol=1e-15)
    assert abs(1 - kept.mean() - p) < 0.01
    assert abs(y.mean() / x.mean() - 1) < 0.01   # inverted dropout keeps the expectation
    np.testing.assert_array_equal(f(x, np.int64(4)), y)
    other_step = f(x, np.int64(5)) != 0
    assert (other_step != kept).mean() > 0.3     # independent masks differ in 2 p (1 - p) = 37.5% of places
    other_seed = run(lambda x: dlc.dropout(x, p, seed=12, step=4), x) != 0
    assert (other_seed != kept).mean() > 0.3
    assert dlc.dropout(xt, 0.0, 1, 0) is xt      # p = 0 adds nothing to the graph
    np.testing.assert_array_equal(run(lambda x: dlc.dropout(x, 1.0, 1, 0), x), np.zeros_like(x))


def test_dropout_gradient_flows_through_the_mask(rng):
    x = rng.standard_normal((6, 7))
    grads = check_grad(lambda x: dlc.dropout(x, 0.5, seed=5, step=9), [x])
    mask = run(lambda x: dlc.dropout(x, 0.5, seed=5, step=9), x) != 0
    assert (grads["x0"][~mask] == 0).all() and (grads["x0"][mask] != 0).all()


def test_step_parameter_advanced_by_the_training_step():
    step = dlc.param(np.int64(0), name="step", trainable=False, dtype="int64")
    noise = dlc.random_normal((4, 3), seed=9, step=step)
    f = dlc.compile(noise, updates={step: step + 1})
    first, second = f(), f()
    assert int(dlc.default_store()["step"]) == 2
    assert not np.allclose(first, second)
    np.testing.assert_array_equal(first, run(lambda: dlc.random_normal((4, 3), seed=9, step=0)))


def test_symbolic_shape_borrowed_from_a_tensor():
    x = dlc.input("x", ("B", 5))
    u = dlc.random_uniform(x, seed=4, step=1)
    assert u.shape == ("B", 5)
    f = dlc.compile(u, inputs=[x])
    small, large = f(np.zeros((3, 5), np.float32)), f(np.zeros((6, 5), np.float32))
    assert small.shape == (3, 5) and large.shape == (6, 5)
    np.testing.assert_array_equal(large[:3], small)  # element i depends on i only: row-major prefixes agree
    by_shape = dlc.compile(dlc.random_uniform(("B", 5), seed=4, step=1) + x * 0.0, inputs=[x])
    np.testing.assert_array_equal(by_shape(np.zeros((3, 5), np.float32)), small)


def test_ops_are_opaque_and_errors_are_clear():
    for op in ("random_uniform", "random_normal", "random_bernoulli"):
        assert OPS[op].kind == "opaque"
    with pytest.raises(dlc.DTypeError, match="step must be an int64"):
        dlc.random_uniform((3,), 0, dlc.input("s", (), "float32"))
    with pytest.raises(dlc.ShapeError, match="step must be a scalar"):
        dlc.random_uniform((3,), 0, dlc.input("s2", (2,), "int64"))
    with pytest.raises(TypeError, match="step must be"):
        dlc.random_uniform((3,), 0, 1.5)
    with pytest.raises(ValueError, match="seed"):
        dlc.random_normal((3,), -1, 0)
    with pytest.raises(ValueError, match="probability"):
        dlc.random_bernoulli((3,), 1.5, 0, 0)
    with pytest.raises(ValueError, match="dropout probability"):
        dlc.dropout(dlc.input("x", (3,)), -0.1, 0, 0)
    with pytest.raises(dlc.DTypeError, match="float32 or float64"):
        dlc.random_uniform((3,), 0, 0, dtype="int64")
