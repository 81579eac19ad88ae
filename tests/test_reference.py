"""The reference executor and compiled-call checks: argument errors, zero-size batches, layouts, update order."""

import numpy as np
import pytest

import dlc
from dlc.runtime.reference import evaluate


def _affine():
    x = dlc.input("x", ("B", 3))
    n = dlc.input("n", ("B",), "int64")
    return dlc.compile(dlc.sum(x, axis=1) * dlc.cast(n, "float32"), inputs=[x, n])


def test_wrong_shape_names_the_input_and_both_shapes():
    f = _affine()
    with pytest.raises(dlc.ShapeError, match=r"input 'x': expected shape \(B, 3\), got \(4, 2\)"):
        f(np.zeros((4, 2), np.float32), np.zeros(4, np.int64))
    with pytest.raises(dlc.ShapeError, match=r"input 'x': expected shape \(B, 3\) \(2-d\), got \(4,\) \(1-d\)"):
        f(np.zeros(4, np.float32), np.zeros(4, np.int64))


def test_inconsistent_symbol_names_both_sizes():
    with pytest.raises(dlc.ShapeError, match=r"input 'n': dim 'B' is 5 here but 4 in an earlier input"):
        _affine()(np.zeros((4, 3), np.float32), np.zeros(5, np.int64))


def test_wrong_dtype_names_the_input_and_both_dtypes():
    f = _affine()
    # float64 data is converted to the declared float32 (the dtype rule); floats for an int input are refused
    with pytest.warns(dlc.DTypeWarning, match="input 'x': float64 data converted to float32"):
        f(np.zeros((4, 3)), np.zeros(4, np.int64))
    with pytest.raises(dlc.DTypeError, match="input 'x': expected dtype float32, got str"):
        f(np.full((4, 3), "a"), np.zeros(4, np.int64))
    with pytest.raises(dlc.DTypeError, match="input 'n': expected dtype int64, got floating-point"):
        f(np.zeros((4, 3), np.float32), [0.5, 1.0, 2.0, 3.0])


def test_missing_extra_and_repeated_inputs_are_named():
    f = _affine()
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match=r"missing input\(s\) 'n'.*x: float32\(B, 3\), n: int64\(B,\)"):
        f(x)
    with pytest.raises(TypeError, match="unexpected input 'm'"):
        f(x, m=np.zeros(2, np.int64))
    with pytest.raises(TypeError, match="input 'x' given twice"):
        f(x, x=x)
    with pytest.raises(TypeError, match="at most 2 arguments"):
        f(x, np.zeros(2, np.int64), x)
    with pytest.raises(TypeError, match="symbolic Tensor"):
        f(dlc.input("x", ("B", 3)), np.zeros(2, np.int64))


def test_lists_and_keywords_are_accepted():
    f = _affine()
    out = f(n=[1, 2], x=[[1, 2, 3], [4, 5, 6]])
    np.testing.assert_allclose(out, [6, 30])


def test_product_dims_are_bound_and_checked():
    x = dlc.input("x", ("T", "B"))
    flat = dlc.input("flat", ("B*T",))
    f = dlc.compile(dlc.reshape(x, (-1,)) + flat)
    np.testing.assert_array_equal(f(np.ones((2, 3), np.float32), np.arange(6, dtype=np.float32)), np.arange(1, 7))
    with pytest.raises(dlc.ShapeError, match="'B\\*T' does not match size 5"):
        f(np.ones((2, 3), np.float32), np.arange(5, dtype=np.float32))


def test_zero_size_batch():
    x = dlc.input("x", ("B", 3), "float64")
    w = dlc.param(np.ones((3, 2)), name="w", dtype="float64")
    h = dlc.tanh(x @ w)
    loss = dlc.sum(h * h)
    f = dlc.compile([h, loss, dlc.grad(loss, w), dlc.softmax(h), dlc.sum(x, axis=0)])
    h0, l0, g0, s0, c0 = f(np.zeros((0, 3)))
    assert h0.shape == (0, 2) and s0.shape == (0, 2)
    assert l0 == 0 and l0.shape == ()
    np.testing.assert_array_equal(g0, np.zeros((3, 2)))
    np.testing.assert_array_equal(c0, np.zeros(3))


def test_non_contiguous_inputs_give_the_same_results():
    x = dlc.input("x", ("B", 3), "float64")
    f = dlc.compile([x * 2.0, dlc.sum(x, axis=0), x[:, ::-1]])
    base = np.arange(24.0).reshape(6, 4)
    for view in [base[::2, 1:], base[:, :3][::-1], np.asfortranarray(base[:, :3]), base.T[:3].T]:
        assert not view.flags.c_contiguous or view.base is not None
        before = view.copy()
        got = f(view)
        for a, b in zip(got, f(np.ascontiguousarray(view))):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(got[0], view * 2)
        np.testing.assert_array_equal(view, before)  # the caller's array is untouched


def test_updates_are_applied_after_the_outputs_are_computed():
    w = dlc.param(np.array([1.0, 2.0]), name="w", dtype="float64")
    step = dlc.compile([w, w * 10.0, dlc.reshape(w, (2, 1)), dlc.stop_gradient(w), w[::-1]],
                       updates={w: w + 1.0})
    for out in step():
        np.testing.assert_array_equal(np.sort(out.reshape(-1)), [1.0, 2.0] if out.max() < 10 else [10.0, 20.0])
    np.testing.assert_array_equal(dlc.default_store()["w"], [2.0, 3.0])


def test_every_update_reads_the_values_from_before_the_call():
    a = dlc.param(np.array([1.0, 2.0]), name="a", dtype="float64")
    b = dlc.param(np.array([3.0, 4.0]), name="b", dtype="float64")
    swap = dlc.compile([], updates={a: b, b: dlc.reshape(dlc.reshape(a, (2, 1)), (2,))})
    swap()
    store = dlc.default_store()
    np.testing.assert_array_equal(store["a"], [3.0, 4.0])
    np.testing.assert_array_equal(store["b"], [1.0, 2.0])
    swap()
    np.testing.assert_array_equal(store["a"], [1.0, 2.0])


def test_update_must_match_the_parameter():
    w = dlc.param(np.zeros(3), name="w", dtype="float64")
    with pytest.raises(dlc.ShapeError, match=r"update of 'w': new value is float64\(1, 3\)"):
        dlc.compile([], updates={w: dlc.reshape(w, (1, 3))})
    with pytest.raises(TypeError, match="must assign to parameters"):
        dlc.compile([], updates={dlc.input("x", (3,), "float64"): w})


def test_output_structures_are_kept():
    x = dlc.input("x", (2,), "float64")
    assert isinstance(dlc.compile((x, x + 1.0))(np.zeros(2)), tuple)
    out = dlc.compile({"double": x * 2.0, "same": x})(np.ones(2))
    assert sorted(out) == ["double", "same"]
    np.testing.assert_array_equal(out["double"], [2.0, 2.0])


def test_evaluate_returns_only_what_is_kept():
    x = dlc.input("x", (2,), "float64")
    h = dlc.exp(x)
    y = h * 2.0
    order = dlc.Graph([y.node]).nodes
    values = evaluate(order, {id(x.node): np.zeros(2)}, dlc.default_store(), {}, keep={id(y.node)})
    assert list(values) == [id(y.node)]
    np.testing.assert_array_equal(values[id(y.node)], [2.0, 2.0])
    everything = evaluate(order, {id(x.node): np.zeros(2)}, dlc.default_store(), {})
    assert id(h.node) not in everything  # dropped after its last use
