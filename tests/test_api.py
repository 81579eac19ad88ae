"""The public surface a newcomer meets: the pinned list of names, array creation and the NumPy/PyTorch spellings,
checked against numpy, the one dtype rule for data entering dlc, and clear errors for non-numeric operands."""

from __future__ import annotations

import subprocess
import sys
import types
import warnings

import numpy as np
import pytest

import dlc
from dlc import functional as F

PUBLIC = {
    "compile", "compile_steps", "Function", "grad", "default_target", "bisect", "Tensor", "Graph", "Node", "Store",
    "default_store", "reset_default_store", "export", "load", "DlcError", "ShapeError", "DTypeError", "GradientError",
    "ArtifactError", "DTypeWarning", "conv1d", "conv2d", "conv_transpose2d", "max_pool2d", "avg_pool2d",
    "adaptive_avg_pool2d", "scan", "random_uniform", "random_normal", "random_bernoulli", "dropout", "nn", "optim",
    "inspect", "distributed", "__version__", "input", "constant", "param", "tensor", "zeros", "ones", "full",
    "zeros_like", "ones_like", "full_like", "arange", "eye", "neg", "abs", "sign", "exp", "log", "sqrt", "rsqrt",
    "square", "tanh", "sigmoid", "relu", "erf", "softplus", "sin", "cos", "leaky_relu", "elu", "gelu", "stop_gradient",
    "add", "sub", "mul", "div", "pow", "maximum", "minimum", "equal", "not_equal", "less", "less_equal", "greater",
    "greater_equal", "logical_and", "logical_or", "logical_not", "where", "cast", "clip", "sum", "prod", "max", "min",
    "mean", "var", "std", "argmax", "argmin", "size", "logsumexp", "softmax", "log_softmax", "reshape", "transpose",
    "permute", "swapaxes", "broadcast_to", "expand_dims", "unsqueeze", "squeeze", "flatten", "slice_", "take_slice",
    "concat", "cat", "concatenate", "stack", "split", "pad", "take", "gather", "one_hot", "matmul", "dot",
    "scaled_dot_product_attention", "layer_norm",
}


def test_public_names_are_pinned():
    assert len(dlc.__all__) == len(set(dlc.__all__))
    assert set(dlc.__all__) == PUBLIC
    # nothing else is public at the top level, apart from the package's submodules
    visible = {n for n in dir(dlc) if not n.startswith("_") and not isinstance(getattr(dlc, n), types.ModuleType)}
    assert visible <= PUBLIC, sorted(visible - PUBLIC)
    for internal in ("apply", "freeze_attrs", "user_location", "static_size", "as_shape", "as_dtype", "shape_str"):
        assert not hasattr(dlc, internal), internal
    assert set(F.__all__) <= PUBLIC and all(callable(getattr(F, n)) for n in F.__all__)


def test_plain_import_gives_the_submodules_users_reach_for():
    code = ("import dlc; x = dlc.input('x', ('B', 3)); f = dlc.compile(dlc.exp(x)); "
            "print(dlc.inspect.report(f).splitlines()[0]); print(dlc.nn.Linear, dlc.optim.SGD)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("# dlc program:")


def run(outputs, *feeds):
    return dlc.compile(outputs)(*feeds)


# ---- array creation, each against numpy


def test_zeros_ones_full_eye_arange_match_numpy():
    np.testing.assert_array_equal(run(dlc.zeros((2, 3))), np.zeros((2, 3), np.float32))
    assert run(dlc.zeros((2, 3))).dtype == np.float32 and run(dlc.zeros(4, dtype="int64")).dtype == np.int64
    np.testing.assert_array_equal(run(dlc.ones((3,))), np.ones(3))
    np.testing.assert_array_equal(run(dlc.full((2, 2), 7)), np.full((2, 2), 7))
    assert run(dlc.full((2,), 7)).dtype == np.int64 and run(dlc.full((2,), 0.5)).dtype == np.float32
    assert run(dlc.full((2,), True)).dtype == np.bool_
    for args in [(3,), (3, 5), (4, 2, 1)]:
        np.testing.assert_array_equal(run(dlc.eye(*args)), np.eye(*args))
    for args in [(5,), (2, 7), (1, 10, 3), (0.0, 1.0, 0.25), (5, 0, -2)]:
        got, want = run(dlc.arange(*args)), np.arange(*args)
        np.testing.assert_allclose(got, want)
        assert got.dtype == (np.int64 if want.dtype.kind == "i" else np.float32)


def test_creation_with_symbolic_dims_and_like_functions():
    x = dlc.input("x", ("B", 3))
    z, o, f = dlc.zeros(("B", 3)), dlc.ones_like(x), dlc.full_like(x, 2.5)
    out = dlc.compile([x + z, o, f, dlc.zeros_like(x, dtype="int64")])(np.ones((4, 3), np.float32))
    np.testing.assert_array_equal(out[0], np.ones((4, 3)))
    np.testing.assert_array_equal(out[1], np.ones_like(np.ones((4, 3))))
    np.testing.assert_array_equal(out[2], np.full((4, 3), 2.5))
    assert out[3].dtype == np.int64 and out[3].shape == (4, 3)


def test_tensor_is_a_function_like_torch_tensor():
    t = dlc.tensor([1.0, 2.0])
    assert isinstance(t, dlc.Tensor) and t.dtype == "float32"
    assert dlc.tensor([1, 2]).dtype == "int64" and dlc.tensor([1, 2], dtype="float64").dtype == "float64"
    np.testing.assert_array_equal(run(t * 2), [2.0, 4.0])


# ---- PyTorch and NumPy spellings


def test_cat_concatenate_unsqueeze_match_numpy(rng):
    a, b = rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal((2, 4)).astype(np.float32)
    A, B = dlc.input("a", (2, 3)), dlc.input("b", (2, 4))
    f = dlc.compile([dlc.cat([A, B], dim=1), dlc.concatenate([A, B], axis=-1), dlc.unsqueeze(A, 1),
                     A.unsqueeze(-1)])
    got = f(a, b)
    np.testing.assert_array_equal(got[0], np.concatenate([a, b], axis=1))
    np.testing.assert_array_equal(got[1], np.concatenate([a, b], axis=-1))
    np.testing.assert_array_equal(got[2], np.expand_dims(a, 1))
    np.testing.assert_array_equal(got[3], np.expand_dims(a, -1))


def test_dim_and_keepdim_are_accepted_spellings(rng):
    a = rng.standard_normal((2, 3, 4)).astype(np.float32)
    x = dlc.input("x", (2, 3, 4))
    outs = [x.sum(dim=1, keepdim=True), x.mean(dim=(0, 2)), x.max(dim=-1), dlc.sum(x, dim=2),
            dlc.softmax(x, dim=1), x.softmax(dim=0), dlc.log_softmax(x, dim=1)]
    got = dlc.compile(outs)(a)
    np.testing.assert_allclose(got[0], a.sum(axis=1, keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(got[1], a.mean(axis=(0, 2)), rtol=1e-5)
    np.testing.assert_allclose(got[2], a.max(axis=-1))
    np.testing.assert_allclose(got[3], a.sum(axis=2), rtol=1e-5)
    softmax = lambda v, ax: np.exp(v - v.max(ax, keepdims=True)) / np.exp(v - v.max(ax, keepdims=True)).sum(  # noqa
        ax, keepdims=True)
    np.testing.assert_allclose(got[4], softmax(a, 1), rtol=1e-5)
    np.testing.assert_allclose(got[5], softmax(a, 0), rtol=1e-5)
    np.testing.assert_allclose(got[6], np.log(softmax(a, 1)), rtol=1e-4, atol=1e-6)
    with pytest.raises(TypeError, match="not both"):
        x.sum(axis=1, dim=1)


def test_size_view_float_as_in_pytorch(rng):
    x = dlc.input("x", ("B", 6))
    assert x.size() == ("B", 6) and x.size(1) == 6 and x.size(-1) == 6
    n = dlc.input("n", (2, 3), "int64")
    assert n.float().dtype == "float32" and n.double().dtype == "float64" and x.long().dtype == "int64"
    a = rng.standard_normal((4, 6)).astype(np.float32)
    got = dlc.compile([x.view("B", 2, 3), x.view(("B", 3, 2))])(a)
    np.testing.assert_array_equal(got[0], a.reshape(4, 2, 3))
    np.testing.assert_array_equal(got[1], a.reshape(4, 3, 2))


def test_non_numeric_operands_are_clear_type_errors():
    x = dlc.input("x", (3,))
    for bad in ("a", None, object(), ["a", "b"]):
        with pytest.raises(TypeError, match=r"unsupported operand .* of type (str|NoneType|object|list)"):
            x * bad
    with pytest.raises(TypeError, match="unsupported operand 'a' of type str"):
        "a" + x  # noqa: B018
    with pytest.raises(TypeError, match="unsupported operand"):
        dlc.full((2,), "z")


# ---- one dtype rule


def test_float64_data_is_cast_once_with_a_warning_everywhere(rng):
    F._PARAM_WARNED.clear()
    x = dlc.input("x", ("B", 2))
    w = dlc.param(np.ones((2, 2), np.float32), name="w")
    f = dlc.compile(x @ w)
    data = rng.standard_normal((3, 2))  # float64, as np.random and scikit-learn give
    with pytest.warns(dlc.DTypeWarning, match="input 'x': float64 data converted to float32"):
        np.testing.assert_allclose(f(data), data.astype(np.float32) @ np.ones((2, 2)), rtol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once, not at every call
        f(data)
        f(data.tolist())  # plain lists carry no dtype: converted silently
        f(np.ones((3, 2), np.int64))  # ints for a float input: exact for these values
    with pytest.warns(dlc.DTypeWarning, match="dlc.param: float64 data converted to float32"):
        p = dlc.param(np.zeros(3))
    assert p.dtype == "float32" and dlc.default_store()[p.node.attr("name")].dtype == np.float32
    assert dlc.param([1.0, 2.0]).dtype == "float32"
    n = dlc.input("n", (2,), "int64")
    g = dlc.compile(n * 2)
    with pytest.raises(dlc.DTypeError, match="input 'n': expected dtype int64, got floating-point values"):
        g(np.array([1.5, 2.0]))
    with pytest.raises(dlc.DTypeError, match="input 'n'"):
        g(["a", "b"])
    np.testing.assert_array_equal(g(np.array([1, 2], np.int32)), [2, 4])  # int32 widens silently
    k = dlc.input("k", (2,), "int32")
    with pytest.raises(dlc.DTypeError, match="outside the range of int32"):
        dlc.compile(k + 1)(np.array([1, 2**40]))


def test_fit_takes_float64_data_under_the_same_rule(rng):
    from dlc import nn

    model = nn.Linear(3, 2)
    x, y = dlc.input("x", ("B", 3)), dlc.input("y", ("B",), "int64")
    step = nn.compile_step(lambda x, y: nn.cross_entropy(model(x), y), [x, y], dlc.optim.SGD(model.parameters(), 0.1),
                           modules=model, target="reference")
    X, Y = rng.standard_normal((8, 3)), rng.integers(0, 2, 8)
    with warnings.catch_warnings(record=True):
        history = nn.fit(step, X, Y, epochs=2, batch_size=4, verbose=0)
    assert len(history) == 2 and np.isfinite(history[-1]["loss"])
