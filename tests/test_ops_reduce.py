"""Reductions and the functions composed from them (mean, var, logsumexp, softmax), with gradients."""

import warnings

import numpy as np
import pytest
from helpers import check_grad, run
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes
from scipy import special

import dlc

SETTINGS = settings(max_examples=20, deadline=None)


@st.composite
def shape_and_axis(draw, min_side=1):
    """A shape and an axis argument as a user writes it: None, an int or a tuple, negative or not."""
    shape = draw(array_shapes(min_dims=1, max_dims=4, min_side=min_side, max_side=4))
    n = len(shape)
    kind = draw(st.sampled_from(["none", "int", "tuple"]))
    if kind == "none":
        return shape, None
    if kind == "int":
        return shape, draw(st.integers(-n, n - 1))
    axes = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
    return shape, tuple(a - n if draw(st.booleans()) else a for a in axes)


REDUCTIONS = {
    "sum": (dlc.sum, np.sum), "prod": (dlc.prod, np.prod), "max": (dlc.max, np.max), "min": (dlc.min, np.min),
    "mean": (dlc.mean, np.mean),
    "var": (dlc.var, np.var),
    "var_ddof1": (lambda x, axis, keepdims: dlc.var(x, axis, keepdims, ddof=1),
                  lambda x, axis, keepdims: np.var(x, axis=axis, keepdims=keepdims, ddof=1)),
    "std": (dlc.std, np.std),
    "logsumexp": (dlc.logsumexp, special.logsumexp),
}


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
@SETTINGS
@given(sa=shape_and_axis(), keepdims=st.booleans(), seed=st.integers(0, 2**31))
def test_reduction_forward(name, sa, keepdims, seed):
    shape, axis = sa
    fn, expected = REDUCTIONS[name]
    x = np.random.default_rng(seed).uniform(0.5, 1.5, shape)
    if name == "var_ddof1" and np.prod([shape[a] for a in np.atleast_1d(axis if axis is not None
                                                                         else range(len(shape)))]) < 2:
        return  # ddof=1 over one element divides by zero
    out = run(lambda x: fn(x, axis, keepdims), x)
    want = expected(x, axis=axis, keepdims=keepdims)
    assert out.shape == np.shape(want)
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_integer_sum_prod_max_keep_dtype(dtype):
    x = np.array([[1, -2, 3], [4, 5, -6]], dtype=dtype)
    s, p, m = run(lambda x: [dlc.sum(x, 1), dlc.prod(x, 0), dlc.max(x)], x)
    assert s.dtype == p.dtype == m.dtype == dtype
    np.testing.assert_array_equal(s, [2, 3])
    np.testing.assert_array_equal(p, [4, -10, -18])
    assert m == 5


def test_mean_of_integers_is_float():
    out = run(lambda x: dlc.mean(x, 0), np.array([[1, 2], [4, 4]], dtype=np.int64))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [2.5, 3.0])


def test_reducing_bool_is_refused():
    with pytest.raises(dlc.DTypeError, match="cast it first"):
        dlc.sum(dlc.input("m", (3,), "bool"))


def test_axis_out_of_range_names_the_shape():
    with pytest.raises(dlc.ShapeError, match=r"axis -3 .*\(2, 3\)"):
        dlc.sum(dlc.input("x", (2, 3)), axis=-3)


def test_empty_axis_tuple_is_the_identity():
    x = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(run(lambda x: dlc.sum(x, axis=()), x), x)


# ----------------------------------------------------------------------------
# argmax / argmin


@SETTINGS
@given(sa=shape_and_axis(), keepdims=st.booleans(), seed=st.integers(0, 2**31))
def test_argmax_argmin(sa, keepdims, seed):
    shape, axis = sa
    if isinstance(axis, tuple):
        axis = axis[0]
    x = np.random.default_rng(seed).integers(0, 3, shape).astype(np.float32)  # many ties: first index wins
    amax, amin = run(lambda x: [dlc.argmax(x, axis, keepdims), dlc.argmin(x, axis, keepdims)], x)
    assert amax.dtype == amin.dtype == np.int64
    np.testing.assert_array_equal(amax, np.argmax(x, axis=axis, keepdims=keepdims))
    np.testing.assert_array_equal(amin, np.argmin(x, axis=axis, keepdims=keepdims))


def test_argmax_without_axis_indexes_the_flattened_tensor():
    x = np.array([[1.0, 7.0, 3.0], [9.0, 0.0, 9.0]], dtype=np.float32)
    out = run(lambda x: [dlc.argmax(x, axis=None), dlc.argmin(x, axis=None)], x)
    assert out[0] == 3 and out[1] == 4 and out[0].shape == ()


def test_argmax_rejects_several_axes():
    with pytest.raises(dlc.ShapeError, match="one axis"):
        dlc.argmax(dlc.input("x", (2, 3)), axis=(0, 1))


def test_argmax_has_no_gradient_path():
    x = dlc.input("x", (2, 3), "float64")
    loss = dlc.sum(x * dlc.cast(dlc.argmax(x, 1, keepdims=True), "float64"))
    g = dlc.compile(dlc.grad(loss, x))(np.array([[0.0, 2.0, 1.0], [5.0, 1.0, 0.0]]))
    np.testing.assert_array_equal(g, [[1, 1, 1], [0, 0, 0]])


# ----------------------------------------------------------------------------
# softmax family: stability at extreme inputs


@SETTINGS
@given(shape=array_shapes(min_dims=1, max_dims=3, max_side=5), axis=st.integers(-1, 0), seed=st.integers(0, 2**31))
def test_softmax_and_log_softmax(shape, axis, seed):
    x = np.random.default_rng(seed).normal(size=shape) * 3
    sm, lsm = run(lambda x: [dlc.softmax(x, axis), dlc.log_softmax(x, axis)], x)
    np.testing.assert_allclose(sm, special.softmax(x, axis=axis), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(lsm, special.log_softmax(x, axis=axis), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_family_is_stable_at_extremes(dtype):
    x = np.array([[1000.0, 0.0, -1000.0], [-1000.0, -1000.0, -999.0], [1000.0, 1000.0, 1000.0]], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sm, lsm, lse = run(lambda x: [dlc.softmax(x), dlc.log_softmax(x), dlc.logsumexp(x, axis=1)], x)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(sm, special.softmax(x64, axis=1), rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(lsm, special.log_softmax(x64, axis=1), rtol=1e-6)
    np.testing.assert_allclose(lse, special.logsumexp(x64, axis=1), rtol=1e-6)


def test_logsumexp_of_infinite_rows():
    x = np.array([[-np.inf, -np.inf], [np.inf, 0.0], [-np.inf, 1.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # log(0) = -inf is the right answer here
        want = special.logsumexp(x, axis=1)
        got = run(lambda x: dlc.logsumexp(x, 1), x)
    np.testing.assert_array_equal(got, want)


def test_softmax_gradients_at_extremes_are_finite():
    x = dlc.input("x", (2, 3), "float64")
    g = dlc.grad(dlc.sum(dlc.log_softmax(x) * dlc.constant(np.eye(2, 3), "float64")), x)
    out = dlc.compile(g)(np.array([[1000.0, 0.0, -1000.0], [-1000.0, 0.0, 1000.0]]))
    np.testing.assert_allclose(out, [[0.0, 0.0, 0.0], [0.0, 1.0, -1.0]], atol=1e-12)


# ----------------------------------------------------------------------------
# gradients


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
@pytest.mark.parametrize("axis,keepdims", [(None, False), (1, False), ((0, 2), True), (-1, True)])
def test_reduction_gradient(name, axis, keepdims, rng):
    fn, _ = REDUCTIONS[name]
    x = rng.permutation(np.linspace(0.5, 2.0, 24)).reshape(2, 3, 4)  # distinct values: no max ties
    check_grad(lambda x: fn(x, axis, keepdims), [x])


@pytest.mark.parametrize("fn", [dlc.softmax, dlc.log_softmax])
@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax_gradient(fn, axis, rng):
    check_grad(lambda x: fn(x, axis), [rng.normal(size=(3, 4)) * 2])


def test_max_gradient_is_shared_among_ties():
    x = dlc.input("x", (2, 3), "float64")
    g = dlc.compile(dlc.grad(dlc.sum(dlc.max(x, axis=1)), x))(np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]]))
    np.testing.assert_allclose(g, [[0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]])


def test_prod_gradient_with_zeros():
    """One zero: only it gets a gradient (the product of the others); two zeros: all zero; never nan."""
    for x in [np.array([[2.0, 0.0, 3.0], [0.0, 0.0, 5.0]]), np.array([[1.5, -2.0, 0.5], [0.0, 4.0, -1.0]])]:
        check_grad(lambda x: dlc.prod(x, axis=1), [x])
    x = dlc.input("x", (2, 3), "float64")
    g = dlc.compile(dlc.grad(dlc.sum(dlc.prod(x, axis=1)), x))(np.array([[2.0, 0.0, 3.0], [0.0, 0.0, 5.0]]))
    np.testing.assert_array_equal(g, [[0.0, 6.0, 0.0], [0.0, 0.0, 0.0]])


# ----------------------------------------------------------------------------
# the runtime size of symbolic dims


def test_mean_over_a_symbolic_batch_uses_the_fed_size():
    x = dlc.input("x", ("B", 3), "float64")
    f = dlc.compile([dlc.mean(x), dlc.mean(x, axis=0), dlc.var(x, axis=0, ddof=1), dlc.size(x)])
    rng = np.random.default_rng(1)
    for b in (2, 5, 17):
        data = rng.normal(size=(b, 3))
        m, m0, v0, n = f(data)
        np.testing.assert_allclose(m, data.mean())
        np.testing.assert_allclose(m0, data.mean(axis=0))
        np.testing.assert_allclose(v0, data.var(axis=0, ddof=1))
        assert n == 3 * b


def test_mean_gradient_under_a_symbolic_batch():
    x = dlc.input("x", ("B", 2), "float64")
    f = dlc.compile(dlc.grad(dlc.mean(x * x), x))
    for b in (3, 8):
        data = np.arange(2.0 * b).reshape(b, 2)
        np.testing.assert_allclose(f(data), 2 * data / data.size)


def test_size_of_static_dims_is_a_constant():
    x = dlc.input("x", ("B", 3, 4))
    assert dlc.size(x, axis=(1, 2)).op == "const"
    assert dlc.size(x, axis=0).op == "size"
    assert run(lambda x: dlc.size(x, axis=(0, 2)), np.zeros((5, 3, 4), np.float32)) == 20
