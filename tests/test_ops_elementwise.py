"""Elementwise ops against independent numpy/scipy/torch expressions, and their gradients."""

import math
import warnings

import numpy as np
import pytest
from helpers import away_from, check_grad, run
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, mutually_broadcastable_shapes
from scipy import special, stats

import dlc

SETTINGS = settings(max_examples=15, deadline=None)
FLOATS = st.sampled_from(["float32", "float64"])


def _gelu_tanh_independent(x):
    """PyTorch's tanh GELU where torch is installed; else the identity 0.5 (1 + tanh z) = sigmoid(2 z)."""
    try:
        import torch
    except ImportError:
        z = math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)
        return (x * special.expit(2 * z)).astype(x.dtype)
    return torch.nn.functional.gelu(torch.from_numpy(x), approximate="tanh").numpy()


# name: (dlc function, independent expression, input range, kinks to keep away from)
UNARY = {
    "neg": (dlc.neg, np.negative, (-3, 3), ()),
    "abs": (dlc.abs, lambda x: np.where(x < 0, -x, x), (-3, 3), (0.0,)),
    "exp": (dlc.exp, np.exp, (-3, 3), ()),
    "log": (dlc.log, np.log, (0.1, 4), ()),
    "sqrt": (dlc.sqrt, lambda x: x ** 0.5, (0.1, 4), ()),
    "rsqrt": (dlc.rsqrt, lambda x: x ** -0.5, (0.1, 4), ()),
    "square": (dlc.square, lambda x: x ** 2, (-3, 3), ()),
    "tanh": (dlc.tanh, lambda x: np.sinh(x) / np.cosh(x), (-3, 3), ()),
    "sigmoid": (dlc.sigmoid, special.expit, (-6, 6), ()),
    "relu": (dlc.relu, lambda x: x * (x > 0), (-3, 3), (0.0,)),
    "leaky_relu": (lambda x: dlc.leaky_relu(x, 0.2), lambda x: np.where(x > 0, x, 0.2 * x), (-3, 3), (0.0,)),
    "elu": (lambda x: dlc.elu(x, 1.5), lambda x: np.where(x > 0, x, 1.5 * (np.exp(x) - 1)), (-3, 3), (0.0,)),
    "gelu_tanh": (dlc.gelu, _gelu_tanh_independent, (-4, 4), ()),
    "gelu_erf": (lambda x: dlc.gelu(x, approximate="none"), lambda x: x * stats.norm.cdf(x), (-4, 4), ()),
    "erf": (dlc.erf, special.erf, (-2, 2), ()),
    "softplus": (dlc.softplus, lambda x: np.logaddexp(0, x), (-5, 5), ()),
    "sin": (dlc.sin, np.sin, (-4, 4), ()),
    "cos": (dlc.cos, np.cos, (-4, 4), ()),
}


def _tol(dtype):
    return {"rtol": 1e-5, "atol": 1e-6} if dtype == "float32" else {"rtol": 1e-12, "atol": 1e-12}


@pytest.mark.parametrize("name", sorted(UNARY))
@SETTINGS
@given(shape=array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5), dtype=FLOATS,
       seed=st.integers(0, 2**31))
def test_unary_forward(name, shape, dtype, seed):
    fn, expected, (lo, hi), _ = UNARY[name]
    x = np.random.default_rng(seed).uniform(lo, hi, shape).astype(dtype)
    out = run(fn, x)
    assert out.dtype == dtype and out.shape == shape
    np.testing.assert_allclose(out, expected(x.astype(np.float64)), **_tol(dtype))


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_gradient(name, rng):
    fn, _, (lo, hi), kinks = UNARY[name]
    x = away_from(rng, (3, 4), kinks, lo=lo, hi=hi)
    check_grad(fn, [x])


def test_sign_forward_and_zero_gradient():
    x = np.array([-2.0, 0.0, 3.0])
    np.testing.assert_array_equal(run(dlc.sign, x), [-1.0, 0.0, 1.0])
    check_grad(lambda x: dlc.sign(x) * x, [np.array([-2.0, 1.5, 3.0])])


def test_integer_neg_abs_square_keep_dtype():
    x = np.array([-3, 0, 4], dtype=np.int32)
    assert run(dlc.neg, x).dtype == np.int32
    np.testing.assert_array_equal(run(dlc.abs, x), [3, 0, 4])
    np.testing.assert_array_equal(run(dlc.square, x), [9, 0, 16])


def test_float_only_unary_rejects_int():
    with pytest.raises(dlc.DTypeError, match="int64"):
        dlc.exp(dlc.input("i", (3,), "int64"))


# ----------------------------------------------------------------------------
# numerically stable forms at extreme inputs

EXTREME = np.array([-1000.0, -100.0, -1.0, 0.0, 1.0, 100.0, 1000.0])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sigmoid_and_softplus_are_stable_at_extremes(dtype):
    x = EXTREME.astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow inside the reference would be a bug
        sig, sp = run(lambda x: [dlc.sigmoid(x), dlc.softplus(x)], x)
    tiny = np.finfo(dtype).tiny  # float32 results below this are subnormal and lose digits
    np.testing.assert_allclose(sig, special.expit(EXTREME), rtol=1e-6, atol=tiny)
    np.testing.assert_allclose(sp, np.logaddexp(0, EXTREME), rtol=1e-6, atol=tiny)
    assert sig[0] == 0 and sig[-1] == 1 and sp[-1] == 1000


def test_gradients_at_extremes_are_finite():
    x = dlc.input("x", (7,), "float64")
    gs = dlc.grad(dlc.sum(dlc.sigmoid(x) + dlc.softplus(x) + dlc.tanh(x)), x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = dlc.compile(gs)(EXTREME)
    s = special.expit(EXTREME)
    want = s * (1 - s) + s + (1 - np.tanh(EXTREME) ** 2)
    np.testing.assert_allclose(g, want, rtol=1e-12, atol=1e-300)


# ----------------------------------------------------------------------------
# binary arithmetic with broadcasting

BINARY = {
    "add": (lambda a, b: a + b, np.add),
    "sub": (lambda a, b: a - b, np.subtract),
    "mul": (lambda a, b: a * b, np.multiply),
    "div": (lambda a, b: a / b, np.true_divide),
    "pow": (lambda a, b: a ** b, lambda a, b: np.exp(b * np.log(a))),
    "maximum": (dlc.maximum, lambda a, b: np.where(a >= b, a, b)),
    "minimum": (dlc.minimum, lambda a, b: np.where(a <= b, a, b)),
}


@pytest.mark.parametrize("name", sorted(BINARY))
@SETTINGS
@given(shapes=mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, min_side=0, max_side=4),
       dtype=FLOATS, seed=st.integers(0, 2**31))
def test_binary_forward_broadcasts(name, shapes, dtype, seed):
    fn, expected = BINARY[name]
    rng = np.random.default_rng(seed)
    a, b = (rng.uniform(0.5, 2.0, s).astype(dtype) for s in shapes.input_shapes)
    out = run(fn, a, b)
    assert out.shape == shapes.result_shape and out.dtype == dtype
    np.testing.assert_allclose(out, expected(a.astype(np.float64), b.astype(np.float64)), **_tol(dtype))


@pytest.mark.parametrize("name", sorted(BINARY))
@pytest.mark.parametrize("shapes", [((3, 4), (3, 4)), ((2, 1, 4), (3, 1)), ((), (2, 3)), ((4,), (1,))])
def test_binary_gradient_undoes_broadcasting(name, shapes, rng):
    fn, _ = BINARY[name]
    a = rng.uniform(0.5, 2.0, shapes[0])
    b = rng.uniform(0.5, 2.0, shapes[1])
    while name in ("maximum", "minimum") and np.min(np.abs(np.subtract(a, b)), initial=1) < 0.05:
        b = rng.uniform(0.5, 2.0, shapes[1])  # ties are kinks: draw again
    check_grad(fn, [a, b])


def test_pow_gradient_of_exponent_is_zero_where_base_is_not_positive():
    a, b = dlc.input("a", (3,), "float64"), dlc.input("b", (3,), "float64")
    gb = dlc.compile(dlc.grad(dlc.sum(a ** b), b))(np.array([0.0, -2.0, 2.0]), np.array([2.0, 2.0, 3.0]))
    np.testing.assert_allclose(gb, [0.0, 0.0, 8 * math.log(2.0)])


def test_python_scalars_take_the_tensor_dtype():
    x = np.arange(4.0)
    out = run(lambda x: 2 * x + 1.5 - x / 2, x)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, 2 * x + 1.5 - x / 2)
    out = run(lambda x: 1.0 / (x + 1), x.astype(np.float32))
    assert out.dtype == np.float32


def test_mixed_dtypes_are_refused():
    with pytest.raises(dlc.DTypeError, match="int64 and float32"):
        dlc.input("i", (3,), "int64") + dlc.input("f", (3,), "float32")


# ----------------------------------------------------------------------------
# integers


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_integer_division_floors_like_python(dtype):
    a = np.array([7, -7, 7, -7, 0, 6], dtype=dtype)
    b = np.array([2, 2, -2, -2, 3, 3], dtype=dtype)
    out = run(lambda a, b: a / b, a, b)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, [x // y for x, y in zip(a.tolist(), b.tolist())])


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_integer_arithmetic_keeps_dtype(dtype):
    a = np.array([[1, -2, 3]], dtype=dtype)
    b = np.array([[4], [5]], dtype=dtype)
    for fn, want in [(lambda a, b: a + b, a + b), (lambda a, b: a * b - a, a * b - a),
                     (dlc.maximum, np.maximum(a, b)), (dlc.minimum, np.minimum(a, b))]:
        out = run(fn, a, b)
        assert out.dtype == dtype
        np.testing.assert_array_equal(out, want)


# ----------------------------------------------------------------------------
# comparisons, logic, where, cast, clip

COMPARE = {"eq": (lambda a, b: a == b, np.equal), "ne": (lambda a, b: a != b, np.not_equal),
           "lt": (lambda a, b: a < b, np.less), "le": (lambda a, b: a <= b, np.less_equal),
           "gt": (lambda a, b: a > b, np.greater), "ge": (lambda a, b: a >= b, np.greater_equal)}


@pytest.mark.parametrize("name", sorted(COMPARE))
@SETTINGS
@given(shapes=mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=4),
       dtype=st.sampled_from(["float32", "int32", "int64"]), seed=st.integers(0, 2**31))
def test_comparisons_give_bool(name, shapes, dtype, seed):
    fn, expected = COMPARE[name]
    rng = np.random.default_rng(seed)
    a, b = (rng.integers(-2, 3, s).astype(dtype) for s in shapes.input_shapes)  # small ints: many ties
    out = run(fn, a, b)
    assert out.dtype == np.bool_
    np.testing.assert_array_equal(out, expected(a, b))


def test_logical_ops():
    a = np.array([True, True, False, False])
    b = np.array([True, False, True, False])
    out = run(lambda a, b: [a & b, a | b, ~a, dlc.logical_not(b)], a, b)
    for got, want in zip(out, [a & b, a | b, ~a, ~b]):
        assert got.dtype == np.bool_
        np.testing.assert_array_equal(got, want)
    with pytest.raises(dlc.DTypeError, match="bool"):
        dlc.logical_not(dlc.input("f", (2,)))


@SETTINGS
@given(shapes=mutually_broadcastable_shapes(num_shapes=3, min_dims=0, max_dims=3, max_side=4),
       seed=st.integers(0, 2**31))
def test_where_broadcasts_all_three(shapes, seed):
    rng = np.random.default_rng(seed)
    sc, sa, sb = shapes.input_shapes
    c, a, b = rng.random(sc) > 0.5, rng.normal(size=sa), rng.normal(size=sb)
    out = run(dlc.where, c, a, b)
    assert out.shape == shapes.result_shape
    np.testing.assert_array_equal(out, np.choose(np.broadcast_to(c, out.shape).astype(int),
                                                 [np.broadcast_to(b, out.shape), np.broadcast_to(a, out.shape)]))


def test_where_gradient_routes_to_the_chosen_branch(rng):
    c = rng.random((3, 4)) > 0.5
    check_grad(lambda c, a, b: dlc.where(c, a * a, dlc.sin(b)), [c, rng.normal(size=(3, 1)), rng.normal(size=(4,))])


def test_where_scalar_branch_and_condition_dtype():
    x = np.array([-1, 2, -3], dtype=np.int32)
    out = run(lambda x: dlc.where(x > 0, x, 0), x)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [0, 2, 0])
    with pytest.raises(dlc.DTypeError, match="condition must be bool"):
        dlc.where(dlc.input("f", (3,)), 1.0, 0.0)


@pytest.mark.parametrize("src,dst", [("float64", "float32"), ("float32", "int32"), ("int64", "float64"),
                                     ("bool", "float32"), ("float32", "bool"), ("int32", "int64")])
def test_cast(src, dst, rng):
    x = (rng.normal(size=(5,)) * 3).astype(src) if src != "bool" else rng.random(5) > 0.5
    out = run(lambda x: dlc.cast(x, dst), x)
    assert out.dtype == dst
    np.testing.assert_array_equal(out, x.astype(dst))


def test_cast_gradient_between_floats(rng):
    check_grad(lambda x: dlc.cast(dlc.cast(x, "float32"), "float64") * x, [rng.normal(size=(4,))], eps=1e-3,
               rtol=1e-4)  # the float32 round trip limits what differences can resolve
    x = dlc.input("x", (3,), "float32")
    g = dlc.grad(dlc.sum(dlc.cast(x, "float64") ** 2), x)
    assert g.dtype == "float32"
    np.testing.assert_allclose(dlc.compile(g)(np.array([1, 2, 3], np.float32)), [2, 4, 6])


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64"])
def test_clip_keeps_dtype(dtype):
    x = np.array([-5, -1, 0, 2, 9]).astype(dtype)
    out = run(lambda x: dlc.clip(x, -1, 3), x)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, [-1, -1, 0, 2, 3])


def test_clip_gradient_is_zero_outside_the_range(rng):
    x = away_from(rng, (20,), (-0.5, 1.0), lo=-2, hi=2)
    grads = check_grad(lambda x: dlc.clip(x, -0.5, 1.0) ** 2, [x])
    g = grads["x0"]
    assert np.all(g[(x < -0.5) | (x > 1.0)] == 0)


def test_clip_rejects_an_empty_range():
    with pytest.raises(ValueError, match="lo=2.0 > hi=1.0"):
        dlc.clip(dlc.input("x", (3,)), 2.0, 1.0)


@pytest.mark.parametrize("fn", [dlc.neg, dlc.abs, dlc.square])
def test_integer_unary_ops_refuse_bool(fn):
    with pytest.raises(dlc.DTypeError, match="bool is not supported"):
        fn(dlc.input("m", (3,), "bool"))


def test_stop_gradient_passes_any_dtype():
    m = np.array([True, False])
    np.testing.assert_array_equal(run(dlc.stop_gradient, m), m)
