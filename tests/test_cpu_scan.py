"""scan on the numba CPU backend (dlc/runtime/cpu_scan.py) against the reference executor.

Forward, reverse and masked loops at several sequence lengths (zero included),
results that pass a carry or an x through unchanged, LSTM and GRU training
steps, gradients against central differences, and a body that itself holds a
scan (its loop runs in Python over the compiled body). Every compiled function
here is small: numba compilation dominates the time of this file.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import check_grad

import dlc
from dlc import nn

TOL = {"float32": dict(rtol=1e-4, atol=1e-5), "float64": dict(rtol=1e-10, atol=1e-12)}


def fresh_store_like(store: dlc.Store) -> dlc.Store:
    """A copy of a store under the same keys: the reference and cpu runs must not share updates."""
    copy = dlc.Store()
    for key, value in store.items():
        copy.add(key, value, store.is_trainable(key))
    return copy


def assert_same(got: list, want: list, what: str) -> None:
    for i, (g, w) in enumerate(zip(got, want)):
        g, w = np.asarray(g), np.asarray(w)
        assert (g.shape, g.dtype) == (w.shape, w.dtype), f"{what}, output {i}: {g.dtype}{g.shape} vs {w.dtype}{w.shape}"
        if g.dtype.kind == "f":
            np.testing.assert_allclose(g, w, err_msg=f"{what}, output {i}", **TOL[g.dtype.name])
        else:
            np.testing.assert_array_equal(g, w, err_msg=f"{what}, output {i}")


def test_forward_reverse_and_masked_loops_at_several_lengths(rng):
    """One compiled function, called with three sequence lengths: every scan result against the reference."""
    xs = dlc.input("xs", ("T", "B", 3), "float64")
    h0 = dlc.input("h0", ("B", 3), "float64")
    lengths = dlc.input("lengths", ("B",), "int64")
    w = dlc.param(rng.normal(size=(3, 3)) * 0.5, name="w", dtype="float64")

    def counting(carry, x):
        (h, count), kept = carry
        h = dlc.tanh(x + h @ w)
        # a carry passed through unchanged, an x returned as it is, a constant y
        return ((h, count + 1), kept), (h * h, dlc.sum(h, axis=1), x, dlc.constant(2.0, "float64"))

    def rnn(h, x):
        h = dlc.tanh(x + h @ w)
        return h, h

    init = ((h0, dlc.constant(np.array(0))), h0 * 2.0)
    ((h_fwd, count), kept), ys_fwd = dlc.scan(counting, init, xs)
    h_rev, _ = dlc.scan(rnn, h0, xs, reverse=True)                 # its ys are read by nothing
    h_mask, ys_mask = dlc.scan(rnn, h0, xs, lengths=lengths)
    h_mask_rev, ys_mask_rev = dlc.scan(rnn, h0, xs, reverse=True, lengths=lengths)
    outputs = [h_fwd, count, kept, *ys_fwd, h_rev, h_mask, ys_mask, h_mask_rev, ys_mask_rev]
    inputs = [xs, h0, lengths]
    cpu = dlc.compile(outputs, inputs=inputs, target="cpu")
    ref = dlc.compile(outputs, inputs=inputs, target="reference")
    assert cpu.backend.stats["scan_loops"] == ["native"] * 4 and not cpu.backend.stats["fallbacks"]
    for T, lens in ((5, [5, 2, 0]), (3, [1, 3, 3]), (0, [0, 0, 0])):
        feeds = (rng.normal(size=(T, 3, 3)), rng.normal(size=(3, 3)), np.array(lens))
        assert_same(cpu(*feeds), ref(*feeds), f"T={T}")


def test_float32_loop_without_xs_and_results_read_late(rng):
    """A scan of a fixed length over float32 values; its saved carries feed a gradient computed after other work."""
    x0 = dlc.input("x0", ("B", 4))
    w = dlc.param(rng.normal(size=(4, 4)).astype(np.float32) * 0.5, name="w32")

    def body(h, _):
        h = dlc.sigmoid(h @ w) - 0.5
        return h, dlc.tanh(h)

    h, ys = dlc.scan(body, x0, length=6)
    loss = dlc.sum(ys * ys) + dlc.sum(dlc.exp(h))
    outputs = [loss, h, ys] + dlc.grad(loss, [x0, w])
    cpu = dlc.compile(outputs, inputs=[x0], target="cpu")
    ref = dlc.compile(outputs, inputs=[x0], target="reference")
    assert cpu.backend.stats["scan_loops"] == ["native", "native"]
    for batch in (2, 5):
        x = rng.normal(size=(batch, 4)).astype(np.float32)
        assert_same(cpu(x), ref(x), f"B={batch}")


@pytest.mark.parametrize("mode, dtype", [("LSTM", "float32"), ("GRU", "float64")])
def test_training_steps_match_the_reference(rng, mode, dtype):
    """Three SGD steps of a small recurrent net (the LSTM on a padded batch): loss and every parameter after each."""
    layer = {"LSTM": nn.LSTM, "GRU": nn.GRU}[mode](3, 5, rng=np.random.default_rng(1), dtype=dtype)
    x = dlc.input("x", ("T", "B", 3), dtype)
    lengths = dlc.input("lengths", ("B",), "int64")
    out, _ = layer(x, lengths=lengths if mode == "LSTM" else None)
    loss = dlc.mean(out * out) + dlc.mean(out)
    params = layer.parameters()
    updates = {p: p - 0.5 * g for p, g in zip(params, dlc.grad(loss, params))}
    inputs = [x, lengths] if mode == "LSTM" else [x]
    ref_store = fresh_store_like(dlc.default_store())
    cpu = dlc.compile(loss, inputs=inputs, updates=updates, target="cpu")
    ref = dlc.compile(loss, inputs=inputs, updates=updates, target="reference", store=ref_store)
    assert set(cpu.backend.stats["scan_loops"]) == {"native"}
    for step in range(3):
        feeds = [rng.normal(size=(4, 3, 3)).astype(dtype)] + ([np.array([4, 1, 3])] if mode == "LSTM" else [])
        assert_same([cpu(*feeds)], [ref(*feeds)], f"loss at step {step}")
        for key, _ in cpu.updates:
            assert_same([dlc.default_store()[key]], [ref_store[key]], f"{key} after step {step}")


@pytest.mark.parametrize("reverse", [False, True])
def test_gradients_agree_with_central_differences(rng, reverse):
    def build(xs, h0, w):
        def body(h, x):
            h = dlc.tanh(x + h @ w)
            return h, h * h
        h, ys = dlc.scan(body, h0, xs, reverse=reverse)
        return dlc.sum(ys) + dlc.sum(h * h)

    check_grad(build, [rng.normal(size=(4, 2, 3)), rng.normal(size=(2, 3)), rng.normal(size=(3, 3)) * 0.5],
               target="cpu")


def test_a_body_holding_a_scan_runs_its_compiled_body_from_python(rng):
    """The outer body has a numpy-fallback-free program of its own but two native segments: a Python loop."""
    xs = dlc.input("xs", ("T", 2, 2), "float64")
    w = dlc.param(rng.normal(size=(2,)), name="w_nested", dtype="float64")

    def outer(h, row):  # row: (2, 2), scanned again inside
        inner_h, inner_ys = dlc.scan(lambda g, v: (dlc.tanh(g * w + v + h), g), h, row)
        return inner_h, dlc.sum(inner_ys, axis=0)

    h, ys = dlc.scan(outer, dlc.constant(np.zeros(2), "float64"), xs)
    cpu = dlc.compile([h, ys], inputs=[xs], target="cpu")
    ref = dlc.compile([h, ys], inputs=[xs], target="reference")
    assert cpu.backend.stats["scan_loops"] == ["python"]
    for T in (3, 1):
        x = rng.normal(size=(T, 2, 2))
        assert_same(cpu(x), ref(x), f"T={T}")


def test_kernel_values_reports_the_results_of_a_scan(rng):
    """The debugging path (kernel by kernel) runs native scans too and sees their results."""
    xs = dlc.input("xs", ("T", 2), "float64")
    h, ys = dlc.scan(lambda c, x: (c + x, c * x), dlc.constant(np.ones(2), "float64"), xs)
    cpu = dlc.compile([h, ys], inputs=[xs], target="cpu")
    X = rng.normal(size=(4, 2))
    feeds, env, _ = cpu.signature.bind((X,), {})
    values = cpu.backend.kernel_values(feeds, env)
    want_h, want_ys = dlc.compile([h, ys], inputs=[xs], target="reference")(X)
    found = [v for v in values.values() if v.shape == want_ys.shape and np.allclose(v, want_ys)]
    assert found, "no kernel output equals the ys of the scan"
    np.testing.assert_allclose(cpu(X)[0], want_h)
