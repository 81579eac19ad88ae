"""matmul: 2-D and batched products with broadcast batch dims, gradients, and shape errors."""

import numpy as np
import pytest
from helpers import check_grad, run
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes

import dlc


def _einsum_matmul(a, b):
    """An independent batched product: broadcast the batch dims, then einsum."""
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a = np.broadcast_to(a, batch + a.shape[-2:])
    b = np.broadcast_to(b, batch + b.shape[-2:])
    return np.einsum("...ij,...jk->...ik", a, b)


@settings(max_examples=25, deadline=None)
@given(batch=mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3),
       m=st.integers(1, 4), k=st.integers(0, 4), n=st.integers(1, 4), dtype=st.sampled_from(["float32", "float64"]),
       seed=st.integers(0, 2**31))
def test_batched_matmul_broadcasts_batch_dims(batch, m, k, n, dtype, seed):
    rng = np.random.default_rng(seed)
    sa, sb = batch.input_shapes
    a = rng.normal(size=sa + (m, k)).astype(dtype)
    b = rng.normal(size=sb + (k, n)).astype(dtype)
    out = run(lambda a, b: a @ b, a, b)
    assert out.shape == batch.result_shape + (m, n) and out.dtype == dtype
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(out, _einsum_matmul(a.astype(np.float64), b.astype(np.float64)), rtol=tol, atol=tol)


@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 2)), ((2, 3, 4), (4, 5)), ((3, 4), (2, 4, 5)),
                                   ((2, 1, 3, 4), (3, 4, 2)), ((1, 2, 3), (4, 3, 2))])
def test_matmul_gradient_sums_over_broadcast_batch_dims(sa, sb, rng):
    check_grad(lambda a, b: dlc.matmul(a, b), [rng.normal(size=sa), rng.normal(size=sb)])


def test_matmul_chain_gradient(rng):
    check_grad(lambda x, w1, w2: dlc.tanh(x @ w1) @ w2,
               [rng.normal(size=(5, 3)), rng.normal(size=(3, 4)), rng.normal(size=(4, 2))])


@pytest.mark.parametrize("k, n", [(5, 4), (0, 4), (5, 0)])
@pytest.mark.parametrize("target", ["reference", "cpu"])
def test_a_matrix_shared_by_a_batch_is_one_product_each_way(k, n, target):
    """(B, T, K) @ (K, N): one GEMM over the B*T rows, and the matrix's gradient one product over them (no
    per-batch partials), with a symbolic batch and empty K or N."""
    a = dlc.input("a", ("B", 3, k), "float64")
    b = dlc.input("b", (k, n), "float64")
    y = a @ b
    f = dlc.compile([y, *dlc.grad(dlc.sum(y * y), [a, b])], inputs=[a, b], target=target)
    rng = np.random.default_rng(k * 10 + n)
    for batch in (1, 4):
        av, bv = rng.normal(size=(batch, 3, k)), rng.normal(size=(k, n))
        out, ga, gb = f(av, bv)
        want = av @ bv
        np.testing.assert_allclose(out, want)
        np.testing.assert_allclose(ga, 2 * want @ bv.T, atol=1e-12)
        np.testing.assert_allclose(gb, 2 * np.einsum("btk,btn->kn", av, want), atol=1e-12)
    if target == "cpu" and k and n:
        assert ".reshape((-1, " in f.backend.source()   # the forward's rows as one GEMM


def test_matmul_over_a_symbolic_batch():
    x = dlc.input("x", ("B", 3), "float64")
    w = dlc.param(np.arange(6.0).reshape(3, 2), name="w", dtype="float64")
    y = x @ w
    assert y.shape == ("B", 2)
    f = dlc.compile([y, dlc.grad(dlc.sum(y * y), w)])
    for b in (1, 4):
        data = np.random.default_rng(b).normal(size=(b, 3))
        out, gw = f(data)
        want = data @ np.arange(6.0).reshape(3, 2)
        np.testing.assert_allclose(out, want)
        np.testing.assert_allclose(gw, 2 * data.T @ want)


def test_matmul_errors():
    with pytest.raises(dlc.ShapeError, match=r"inner dims differ: \(2, 3\) @ \(4, 5\) \(3 vs 4\)"):
        dlc.input("a", (2, 3)) @ dlc.input("b", (4, 5))
    with pytest.raises(dlc.ShapeError, match="rank 2 or more"):
        dlc.input("v", (3,)) @ dlc.input("m", (3, 2))
    with pytest.raises(dlc.ShapeError, match="do not broadcast"):
        dlc.input("p", (2, 3, 4)) @ dlc.input("q", (3, 4, 5))
    with pytest.raises(dlc.DTypeError, match="int64"):
        dlc.input("i", (2, 2), "int64") @ dlc.input("j", (2, 2), "int64")
    with pytest.raises(dlc.DTypeError, match="different dtypes"):
        dlc.input("f", (2, 2), "float32") @ dlc.input("d", (2, 2), "float64")


def test_dot_and_rmatmul():
    a, b = np.arange(6.0).reshape(2, 3), np.arange(3.0).reshape(3, 1)
    out = run(lambda a: [dlc.dot(a, dlc.constant(b, "float64")), np.ones((1, 2)) @ a], a)
    np.testing.assert_allclose(out[0], a @ b)
    np.testing.assert_allclose(out[1], np.ones((1, 2)) @ a)
