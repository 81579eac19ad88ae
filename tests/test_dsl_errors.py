import numpy as np
import pytest

import dlc


def _line_of(marker):
    for i, line in enumerate(open(__file__).read().splitlines(), 1):
        if marker in line and "_line_of" not in line:
            return i
    raise AssertionError(marker)


def test_shape_error_names_op_shapes_file_and_line():
    a = dlc.input("a", ("B", 3))
    b = dlc.input("b", (4, 5))
    with pytest.raises(dlc.ShapeError) as e:
        a @ b  # MATMUL-MISMATCH
    msg = str(e.value)
    assert "matmul" in msg and "(B, 3)" in msg and "(4, 5)" in msg
    assert f"{__file__}:{_line_of('MATMUL-MISMATCH')}" in msg


def test_broadcast_error_points_at_user_line():
    a = dlc.input("a", (2, 3))
    with pytest.raises(dlc.ShapeError) as e:
        a + dlc.input("b", (4,))  # BROADCAST-MISMATCH
    assert f"test_dsl_errors.py:{_line_of('BROADCAST-MISMATCH')}" in str(e.value)
    assert "(2, 3)" in str(e.value) and "(4,)" in str(e.value)


def test_dtype_mismatch_is_reported():
    a = dlc.input("a", (2,), "float32")
    b = dlc.input("b", (2,), "float64")
    with pytest.raises(dlc.DTypeError, match="float32 and float64"):
        a * b


def test_symbol_mismatch_is_a_shape_error():
    a = dlc.input("a", ("B", 3))
    b = dlc.input("b", ("N", 3))
    with pytest.raises(dlc.ShapeError, match="broadcast"):
        a + b


def test_bad_reshape_and_axis():
    a = dlc.input("a", (2, 3))
    with pytest.raises(dlc.ShapeError, match="cannot reshape"):
        dlc.reshape(a, (4, 2))
    with pytest.raises(dlc.ShapeError, match="out of range"):
        dlc.sum(a, axis=2)
    with pytest.raises(IndexError, match="out of range"):
        a[5]


def test_compiled_call_checks_arguments():
    x = dlc.input("x", ("B", 3))
    n = dlc.input("n", ("B",), "int64")
    f = dlc.compile(dlc.sum(x, axis=1) + dlc.cast(n, "float32"))
    good = np.ones((4, 3), np.float32), np.arange(4)
    np.testing.assert_allclose(f(*good), 3 + np.arange(4))
    with pytest.raises(dlc.ShapeError, match=r"input 'x': expected shape \(B, 3\), got \(4, 2\)"):
        f(np.ones((4, 2), np.float32), good[1])
    with pytest.raises(dlc.ShapeError, match="'B' is 5 here but 4"):
        f(good[0], np.arange(5))
    # the dtype rule: float64 data is cast to the declared float32 (with a DTypeWarning); floats for an int input
    # are refused
    with pytest.warns(dlc.DTypeWarning, match="input 'x': float64 data converted to float32"):
        np.testing.assert_allclose(f(np.ones((4, 3)), good[1]), 3 + np.arange(4))
    with pytest.raises(dlc.DTypeError, match="input 'n': expected dtype int64, got floating-point values"):
        f(good[0], np.arange(4.0))
    with pytest.raises(TypeError, match="missing input"):
        f(good[0])
    with pytest.raises(TypeError, match="unexpected input 'y'"):
        f(*good, y=1)
    # keyword arguments and non-contiguous arrays are fine
    big = np.ones((4, 6), np.float32)[:, ::2]
    np.testing.assert_allclose(f(x=big, n=good[1]), 3 + np.arange(4))


def test_grad_of_non_scalar_needs_seed():
    x = dlc.input("x", (3,))
    with pytest.raises(dlc.ShapeError, match="scalar"):
        dlc.grad(dlc.exp(x), [x])


def test_a_symbol_no_input_binds_is_refused_at_compile_time():
    x = dlc.input("x", ("B", 3))
    b = dlc.param(np.zeros(3, np.float32), name="b")
    gb = dlc.grad(dlc.sum(x + b), b)
    # the gradient of b is a sum over B rows: it needs B, but reads no input
    with pytest.raises(dlc.ShapeError, match=r"symbolic dim\(s\) \['B'\] that no input binds"):
        dlc.compile(gb)
    f = dlc.compile(gb, inputs=[x])
    np.testing.assert_allclose(f(np.zeros((4, 3), np.float32)), [4, 4, 4])


def test_bad_dims_are_refused():
    with pytest.raises(ValueError, match="negative"):
        dlc.input("x", (-1, 3))
    with pytest.raises(TypeError):
        dlc.input("x", (True, 3))
    with pytest.raises(ValueError, match="symbolic dim"):
        dlc.input("x", ("B+1", 3))


@pytest.mark.parametrize("target", ["reference", "cpu"])
def test_checks_remembered_per_shape_still_catch_what_differs(target):
    """Arguments already checked once are not checked again, but only when they match exactly (dtype, layout)."""
    x = dlc.input("x", ("B", 3))
    w = dlc.input("w", (3,))
    f = dlc.compile(x * w, target=target)
    a, b = np.arange(12, dtype=np.float32).reshape(4, 3), np.ones(3, np.float32)
    for _ in range(2):  # the second call takes the remembered bindings
        np.testing.assert_array_equal(f(a, b), a)
    np.testing.assert_array_equal(f(a[:2], b), a[:2])                             # another batch size
    strided = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]
    np.testing.assert_array_equal(f(strided, b), strided)                           # same shape, not contiguous
    np.testing.assert_array_equal(f(a.astype(">f4"), b), a)                         # same shape, other byte order
    np.testing.assert_array_equal(f(a, np.broadcast_to(np.float32(2), (3,))), 2 * a)  # a zero-stride view
    with pytest.raises(dlc.ShapeError, match=r"input 'w': expected shape \(3,\), got \(4,\)"):
        f(a, np.ones(4, np.float32))
    with pytest.raises(dlc.DTypeError, match="input 'x': expected dtype float32"):
        f(a.astype(np.int64).astype(np.complex64), b)
    assert dlc.compile(x * w, target=target).signature.bind((a, b), {})[1] == {"B": 4}
