"""The numba CPU backend with hostile arguments: wrong shapes and dtypes, odd layouts, NaN, empty and tiny batches.

Native code runs without bounds checks, so every argument must be refused
with a clear error before it gets there, or be safe for any accepted shape.
One compiled function serves all cases (numba compilation is the cost here).
"""

from __future__ import annotations

import numpy as np
import pytest

import dlc
from dlc.errors import DTypeError, ShapeError


@pytest.fixture
def model():
    """A small classifier step and its reference: GEMM + bias + activation, softmax, a gather, updates."""
    rng = np.random.default_rng(1)
    x = dlc.input("x", ("B", 6))
    labels = dlc.input("labels", ("B",), "int64")
    w = dlc.param(rng.standard_normal((6, 4)).astype(np.float32) * 0.3, name="w")
    b = dlc.param(np.zeros(4, np.float32), name="b")
    logits = dlc.tanh(x @ w + b)
    picked = dlc.take(dlc.log_softmax(logits), labels, axis=1)      # (B, B): every row, every label
    loss = -dlc.mean(picked)
    gw, gb = dlc.grad(loss, [w, b])
    probs = dlc.softmax(logits)
    cpu = dlc.compile([loss, probs], inputs=[x, labels], target="cpu")
    infer = dlc.compile(probs, inputs=[x], target="cpu")
    return {"cpu": cpu, "infer": infer, "w": w, "b": b, "gw": gw, "gb": gb, "x": x, "labels": labels,
            "loss": loss, "probs": probs}


def test_wrong_shapes_and_dtypes_are_refused_before_native_code(model):
    f = model["cpu"]
    x = np.ones((3, 6), np.float32)
    y = np.zeros(3, np.int64)
    with pytest.raises(ShapeError, match="'x'"):
        f(np.ones((3, 5), np.float32), y)
    with pytest.raises(ShapeError, match="'labels'"):
        f(x, np.zeros(4, np.int64))            # B is 3 in x, 4 here
    with pytest.raises(ShapeError, match="'x'"):
        f(np.ones((3, 6, 1), np.float32), y)
    with pytest.raises(DTypeError, match="'x'"):
        f(np.full((3, 6), "a"), y)             # (float64 data is converted: the dtype rule, tests/test_api.py)
    with pytest.raises(DTypeError, match="'labels'"):
        f(x, y.astype(np.float32))
    with pytest.raises(TypeError, match="missing"):
        f(x)


def test_out_of_range_indices_raise_instead_of_reading_out_of_bounds(model):
    f = model["cpu"]
    x = np.ones((3, 6), np.float32)
    with pytest.raises(IndexError, match="out of range"):
        f(x, np.array([0, 1, 4]))
    with pytest.raises(IndexError, match="out of range"):
        f(x, np.array([0, -5, 1]))
    loss, _ = f(x, np.array([0, -1, 3]))      # negative indices count from the end, as numpy's
    assert np.isfinite(loss)


def test_non_contiguous_and_foreign_layouts_give_the_reference_result(model):
    f, ref = model["infer"], dlc.compile(model["probs"], inputs=[model["x"]])
    base = np.random.default_rng(2).standard_normal((6, 12)).astype(np.float32)
    want = ref(np.ascontiguousarray(base[:, ::2]))
    np.testing.assert_allclose(f(base[:, ::2]), want, rtol=1e-5, atol=1e-6)                  # strided view
    np.testing.assert_allclose(f(np.asfortranarray(base[:, ::2])), want, rtol=1e-5, atol=1e-6)
    big_endian = base[:, ::2].astype(">f4")
    np.testing.assert_allclose(f(big_endian), want, rtol=1e-5, atol=1e-6)
    readonly = np.ascontiguousarray(base[:, ::2])
    readonly.setflags(write=False)
    np.testing.assert_allclose(f(readonly), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(f(base[:, ::2].tolist()), want, rtol=1e-5, atol=1e-6)      # a nested list


def test_nan_and_inf_propagate_without_crashing(model):
    f = model["infer"]
    x = np.ones((4, 6), np.float32)
    x[1, 2] = np.nan
    x[2, 0] = np.inf
    x[3, 0] = -np.inf
    out = f(x)
    assert np.isnan(out[1]).all()              # a NaN input poisons its row through the GEMM
    assert np.isfinite(out[0]).all() and np.allclose(out[0].sum(), 1.0)
    loss, probs = model["cpu"](x, np.array([0, 1, 2, 3]))
    assert np.isnan(loss)


def test_zero_size_and_single_and_large_batches(model):
    f, cpu = model["infer"], model["cpu"]
    ref = dlc.compile(model["probs"], inputs=[model["x"]])
    empty = f(np.zeros((0, 6), np.float32))
    assert empty.shape == (0, 4)
    loss, probs = cpu(np.zeros((0, 6), np.float32), np.zeros(0, np.int64))
    assert probs.shape == (0, 4) and np.isnan(loss)   # the mean of nothing, as numpy's
    rng = np.random.default_rng(3)
    for batch in (1, 2, 1000, 1):
        x = rng.standard_normal((batch, 6)).astype(np.float32)
        np.testing.assert_allclose(f(x), ref(x), rtol=1e-5, atol=1e-6)
    # a new batch size only adds a memory plan; the compiled code is shared
    assert len(f.backend._plans) == 4


def test_outputs_are_fresh_arrays_the_caller_owns(model):
    f = model["infer"]
    x = np.ones((2, 6), np.float32)
    a = f(x)
    a[...] = 123.0
    b = f(x * 2)
    assert not np.shares_memory(a, b) and not np.any(b == 123.0)


def test_updates_read_old_values_and_outputs_are_not_aliased_to_parameters():
    """An update that swaps two parameters needs every read to happen before any write."""
    p = dlc.param(np.array([1.0, 2.0], np.float32), name="p")
    q = dlc.param(np.array([3.0, 4.0], np.float32), name="q")
    x = dlc.input("x", (2,))
    f = dlc.compile([p, q * 1.0 + x], updates={p: q * 1.0, q: p + 0.0}, target="cpu")
    out_p, out_q = f(np.zeros(2, np.float32))
    np.testing.assert_array_equal(out_p, [1.0, 2.0])
    np.testing.assert_array_equal(out_q, [3.0, 4.0])
    store = dlc.default_store()
    np.testing.assert_array_equal(store["p"], [3.0, 4.0])
    np.testing.assert_array_equal(store["q"], [1.0, 2.0])
    out_p[...] = -1.0
    np.testing.assert_array_equal(store["p"], [3.0, 4.0])


def test_repeated_and_reshaped_outputs(rng):
    """An output listed twice, a reshape of an output, and an input returned as is."""
    x = dlc.input("x", ("B", 3))
    y = dlc.exp(x) * 2.0
    outputs = [y, y, x, dlc.reshape(y, (-1,))]
    cpu, ref = dlc.compile(outputs, target="cpu"), dlc.compile(outputs)
    xv = rng.standard_normal((4, 3)).astype(np.float32)
    for got, want in zip(cpu(xv), ref(xv)):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    got = cpu(xv)
    got[2][...] = 0.0                      # the returned input is a copy
    assert xv.any()
