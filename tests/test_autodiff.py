"""dlc.grad: accumulation over uses, broadcasting, unused and integer inputs, stop_gradient, second order."""

import numpy as np
import pytest
from helpers import away_from, check_grad

import dlc
from dlc.ops import OPS, register
from dlc.ops.base import OPAQUE


def _compile_grads(loss, wrt, inputs):
    return dlc.compile(dlc.grad(loss, wrt), inputs=inputs)


def test_gradient_is_summed_over_every_use():
    x = dlc.input("x", (3,), "float64")
    y = x * x + dlc.sin(x) * x + x
    g = _compile_grads(dlc.sum(y), x, [x])(np.array([0.5, -1.0, 2.0]))
    v = np.array([0.5, -1.0, 2.0])
    np.testing.assert_allclose(g, 2 * v + np.cos(v) * v + np.sin(v) + 1)
    check_grad(lambda x: x * x + dlc.sin(x) * x + x, [v])


def test_broadcasting_is_undone_by_summation():
    x = dlc.input("x", ("B", 3), "float64")
    b = dlc.input("b", (3,), "float64")
    s = dlc.input("s", (), "float64")
    f = dlc.compile(dlc.grad(dlc.sum(x * s + b), [b, s]), inputs=[x, b, s])
    gb, gs = f(np.ones((4, 3)), np.zeros(3), np.array(2.0))
    np.testing.assert_array_equal(gb, [4, 4, 4])
    assert gs.shape == () and gs == 12


def test_unused_wrt_gets_zeros_of_its_shape():
    x = dlc.input("x", ("B", 2), "float64")
    unused = dlc.input("u", ("B", 3), "float64")
    gx, gu = dlc.grad(dlc.sum(x * 2.0), [x, unused])
    f = dlc.compile([gx, gu], inputs=[x, unused])
    out_x, out_u = f(np.ones((5, 2)), np.ones((5, 3)))
    np.testing.assert_array_equal(out_x, np.full((5, 2), 2.0))
    np.testing.assert_array_equal(out_u, np.zeros((5, 3)))
    assert out_u.dtype == np.float64


def test_integer_wrt_gets_none_and_integer_paths_are_ignored():
    x = dlc.input("x", (4,), "float64")
    n = dlc.input("n", (4,), "int64")
    mask = dlc.cast(x > 0.0, "float64")  # a bool path: no gradient flows through the comparison
    scale = dlc.cast(n * 2, "float64")  # an integer path
    gx, gn = dlc.grad(dlc.sum(x * mask * scale + dlc.cast(dlc.argmax(x, 0), "float64")), [x, n])
    assert gn is None
    out = dlc.compile(gx, inputs=[x, n])(np.array([1.0, -2.0, 3.0, 0.5]), np.array([1, 2, 3, 4]))
    np.testing.assert_array_equal(out, [2.0, 0.0, 6.0, 8.0])


def test_stop_gradient_blocks_the_path():
    x = dlc.input("x", (3,), "float64")
    g = dlc.compile(dlc.grad(dlc.sum(dlc.stop_gradient(x) * x + dlc.stop_gradient(x * x)), x))
    v = np.array([1.0, -2.0, 0.5])
    np.testing.assert_array_equal(g(v), v)


def test_gradient_with_respect_to_an_intermediate():
    x = dlc.input("x", (3,), "float64")
    h = dlc.exp(x)
    gh, gx = dlc.grad(dlc.sum(h * h), [h, x])
    v = np.array([0.0, 1.0, -1.0])
    out_h, out_x = dlc.compile([gh, gx])(v)
    np.testing.assert_allclose(out_h, 2 * np.exp(v))
    np.testing.assert_allclose(out_x, 2 * np.exp(2 * v))


def test_seed_for_a_non_scalar_output():
    x = dlc.input("x", (2, 3), "float64")
    seed = dlc.input("seed", (2, 3), "float64")
    g = dlc.compile(dlc.grad(dlc.tanh(x), x, seed=seed))
    v, s = np.linspace(-1, 1, 6).reshape(2, 3), np.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose(g(v, s), s * (1 - np.tanh(v) ** 2))


def test_grad_errors():
    x = dlc.input("x", (2,), "float64")
    with pytest.raises(dlc.ShapeError, match="scalar y"):
        dlc.grad(x * 2.0, x)
    with pytest.raises(dlc.GradientError, match="int64"):
        dlc.grad(dlc.sum(dlc.cast(x, "int64")), x)


def test_float32_gradients_keep_float32():
    x = dlc.input("x", (3,))
    g = dlc.grad(dlc.mean(dlc.square(x)), x)
    assert g.dtype == "float32"
    np.testing.assert_allclose(dlc.compile(g)(np.array([1, 2, 3], np.float32)), [2 / 3, 4 / 3, 2], rtol=1e-6)


def test_gradient_through_params_and_updates():
    w = dlc.param(np.array([1.0, 2.0]), name="w", dtype="float64")
    x = dlc.input("x", ("B", 2), "float64")
    loss = dlc.mean(dlc.sum((x * w) ** 2, axis=1))
    step = dlc.compile(loss, updates={w: w - 0.1 * dlc.grad(loss, w)})
    data = np.array([[1.0, 1.0], [2.0, 0.0]])
    step(data)
    grad = (2 * (data * [1.0, 2.0]) * data).mean(axis=0)
    np.testing.assert_allclose(dlc.default_store()["w"], [1.0, 2.0] - 0.1 * grad)


# ----------------------------------------------------------------------------
# second order: either right (checked by finite differences of the first
# gradient) or a GradientError, never a silent wrong answer


def _first_grad(f):
    """x -> d sum(f(x)) / dx, as a DSL function: check_grad then differentiates it again."""
    return lambda *xs: dlc.grad(dlc.sum(f(*xs)), xs[0])


SECOND_ORDER = {
    "exp": (dlc.exp, (-1, 1)), "log": (dlc.log, (0.5, 2)), "sqrt": (dlc.sqrt, (0.5, 2)),
    "rsqrt": (dlc.rsqrt, (0.5, 2)), "tanh": (dlc.tanh, (-2, 2)), "sigmoid": (dlc.sigmoid, (-3, 3)),
    "softplus": (dlc.softplus, (-3, 3)), "gelu": (dlc.gelu, (-3, 3)),
    "gelu_erf": (lambda x: dlc.gelu(x, "none"), (-3, 3)), "erf": (dlc.erf, (-2, 2)),
    "sin": (dlc.sin, (-3, 3)), "cos": (dlc.cos, (-3, 3)), "elu": (dlc.elu, (-2, 2)),
    "relu_times_x": (lambda x: dlc.relu(x) * x, (-2, 2)), "abs_cubed": (lambda x: dlc.abs(x) ** 3.0, (-2, 2)),
    "clip_sq": (lambda x: dlc.clip(x, -0.5, 0.5) * x * x, (-2, 2)),
    "pow": (lambda x: x ** 3.5, (0.5, 2)), "exp_pow": (lambda x: 2.0 ** x, (-1, 1)),
    "div": (lambda x: 1.0 / x, (0.5, 2)),
    "max": (lambda x: dlc.max(x * x, axis=1), (-2, 2)), "min": (lambda x: dlc.min(x * x * x, axis=0), (-2, 2)),
    "prod": (lambda x: dlc.prod(x, axis=1), (-2, 2)), "var": (lambda x: dlc.var(x, axis=0, ddof=1), (-2, 2)),
    "softmax": (lambda x: dlc.softmax(x) * dlc.sin(x), (-2, 2)), "log_softmax": (dlc.log_softmax, (-2, 2)),
    "logsumexp": (lambda x: dlc.logsumexp(x * x, axis=0), (-2, 2)),
    "matmul": (lambda x: dlc.tanh(x @ dlc.transpose(x)), (-1, 1)),
    "slices": (lambda x: x[:, ::2] * x[:, 1:3] ** 2, (-2, 2)),
    "pad_concat": (lambda x: dlc.concat([dlc.pad(x * x, ((1, 0), (0, 0))), x[:1] ** 3.0], 0), (-2, 2)),
    "maximum": (lambda x: dlc.maximum(x * x, dlc.sin(x)), (-2, 2)),
    "where": (lambda x: dlc.where(x > 0.0, x ** 3.0, dlc.exp(x)), (-2, 2)),
}


@pytest.mark.parametrize("name", sorted(SECOND_ORDER))
def test_second_order(name, rng):
    f, (lo, hi) = SECOND_ORDER[name]
    kinks = (0.0, -0.5, 0.5) if name == "clip_sq" else (0.0,)
    x = away_from(rng, (2, 3), kinks, margin=0.15, lo=lo, hi=hi)
    check_grad(_first_grad(f), [x])


def test_second_order_of_embedding_lookup(rng):
    ids = np.array([2, 0, 2, 1])
    check_grad(lambda t, i: _first_grad(lambda t: dlc.take(t, i) ** 3.0)(t) * dlc.cos(t),
               [rng.normal(size=(3, 2)), ids])


def test_hessian_vector_product_matches_the_analytic_hessian(rng):
    a = rng.normal(size=(3, 3))
    x = dlc.input("x", (3,), "float64")
    v = dlc.input("v", (3,), "float64")
    am = dlc.constant(a, "float64")
    f = dlc.sum(dlc.exp(dlc.reshape(dlc.reshape(x, (1, 3)) @ am, (3,))))  # f(x) = sum exp(A^T x)
    hv = dlc.grad(dlc.sum(dlc.grad(f, x) * v), x)
    xv, vv = rng.normal(size=3), rng.normal(size=3)
    hessian = a @ np.diag(np.exp(a.T @ xv)) @ a.T
    np.testing.assert_allclose(dlc.compile(hv, inputs=[x, v])(xv, vv), hessian @ vv, rtol=1e-12)


def test_third_order(rng):
    check_grad(_first_grad(_first_grad(lambda x: dlc.sin(x) * dlc.exp(x))), [rng.normal(size=(4,))])


@pytest.fixture
def temporary_op():
    """register() for one test: the ops are removed afterwards, so the registry others inspect stays clean."""
    added = []

    def make(name, ref, grad):
        register(name, OPAQUE, lambda xs, a: (xs[0].shape, xs[0].dtype), ref, grad)
        added.append(name)
        return lambda x: dlc.functional._apply(name, x)

    yield make
    for name in added:
        OPS.pop(name)


def test_second_order_through_a_backward_op_raises_gradient_error(temporary_op):
    # the shape of conv and pool backward ops: a gradient rule that builds a node without one
    scale_grad = temporary_op("test_scale_grad", lambda xs, a, shape: 3.0 * xs[0], None)
    scale = temporary_op("test_scale", lambda xs, a, shape: 3.0 * xs[0], lambda node, g, xs: [scale_grad(g)])
    x = dlc.input("x", (3,), "float64")
    g = dlc.grad(dlc.sum(scale(x) * x), x)  # the first order is fine ...
    np.testing.assert_allclose(dlc.compile(g)(np.ones(3)), np.full(3, 6.0))
    with pytest.raises(dlc.GradientError, match="test_scale_grad.*gradients of gradients"):
        dlc.grad(dlc.sum(g * g), x)  # ... the second goes through test_scale_grad, which has no rule


def test_grad_refuses_non_tensors():
    x = dlc.input("x", (2,), "float64")
    with pytest.raises(TypeError, match="with respect to dlc Tensors.*ndarray"):
        dlc.grad(dlc.sum(x), [x, np.zeros(2)])
    with pytest.raises(TypeError, match="differentiates a dlc Tensor"):
        dlc.grad(1.0, x)


# ----------------------------------------------------------------------------
# the checker itself: it must catch a wrong rule, and handle parameters


def test_check_grad_catches_a_wrong_rule(temporary_op, rng):
    wrong_square = temporary_op("test_wrong_square", lambda xs, a, shape: xs[0] * xs[0],
                                lambda node, g, xs: [g * xs[0]])  # should be 2 g x
    with pytest.raises(AssertionError, match="gradient of x0"):
        check_grad(wrong_square, [rng.normal(size=(3,))])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_check_grad_differentiates_parameters(dtype, rng):
    def layer(x):
        w = dlc.param(rng.normal(size=(3, 2)), name="w", dtype=dtype)
        b = dlc.param(rng.normal(size=(2,)), name="b", dtype=dtype)
        frozen = dlc.param(np.ones((2,)), name="frozen", dtype=dtype, trainable=False)
        return dlc.tanh(x @ w + b) * frozen

    grads = check_grad(layer, [rng.normal(size=(4, 3)).astype(dtype)], params=True)
    assert sorted(grads) == ["param:b", "param:w", "x0"]


def test_concat_along_a_symbolic_dim_has_no_gradient_yet():
    x = dlc.input("x", ("B", 3), "float64")
    doubled = dlc.concat([x, x * 2.0], axis=0)
    assert doubled.shape == ("2*B", 3)
    with pytest.raises(dlc.GradientError, match="symbolic dim 'B'"):
        dlc.grad(dlc.sum(doubled), x)
    g = dlc.compile(dlc.grad(dlc.sum(dlc.concat([x, x * 2.0], axis=1)), x), inputs=[x])  # a static axis is fine
    np.testing.assert_array_equal(g(np.zeros((2, 3))), np.full((2, 3), 3.0))
