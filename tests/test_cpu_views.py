"""Arena views (dlc/kernels/cpu/views.py) and kernel calls (library.py) of generated CPU code; kernels shared
across depth."""

from __future__ import annotations

import numpy as np
import pytest

import dlc
from dlc.runtime.cpu import load_kernel_modules

GEMM_TOL = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def views():
    load_kernel_modules()
    import dlc_cpu_views

    return dlc_cpu_views


def test_arena_view_is_a_writable_window_of_the_arena(views):
    from numba import njit

    @njit
    def window(arena, start, rows):
        v = views.arena_view(arena, start, (rows, 3))
        v[1, 2] = -1.0
        return v.copy()

    arena = np.arange(12, dtype=np.float32)
    got = window(arena, 3, 2)
    np.testing.assert_array_equal(got, np.array([[3, 4, 5], [6, 7, -1]], np.float32))
    assert arena[8] == -1.0   # the view shares the arena's memory


def test_call_kernel_calls_with_literal_and_array_arguments(views):
    from dlc_cpu_library import call_kernel
    from numba import njit

    @njit
    def scale(out, k, x):
        for i in range(out.size):
            out[i] = k * x[i]

    @njit
    def caller(out, x):
        call_kernel(scale, out, 3, x)
        call_kernel(scale, out, 2.0, out)   # another signature of the same kernel

    out, x = np.zeros(4), np.arange(4.0)
    caller(out, x)
    np.testing.assert_array_equal(out, 6.0 * x)
    assert len(scale.overloads) == 2


def test_call_kernel_propagates_the_kernels_exception_and_refuses_a_result(views):
    from dlc_cpu_library import call_kernel
    from numba import njit
    from numba.core.errors import TypingError

    @njit
    def checked(out, i):
        if i >= out.size:
            raise IndexError("index past the end")
        out[i] = 1.0

    @njit
    def caller(out, i):
        call_kernel(checked, out, i)

    out = np.zeros(3)
    caller(out, 2)
    assert out[2] == 1.0
    with pytest.raises(IndexError, match="index past the end"):
        caller(out, 3)

    @njit
    def returns(x):
        return x[0]

    @njit
    def bad_caller(x):
        call_kernel(returns, x)

    with pytest.raises(TypingError, match="returns float64; a kernel writes its outputs"):
        bad_caller(out)


def mlp_step(rng, depth, cache, width=4, classes=3):
    """A training step of `depth` hidden Linear+ReLU layers with SGD momentum, for the cpu and reference targets."""
    x = dlc.input("x", ("B", width))
    labels = dlc.input("labels", ("B",), "int64")
    sizes = [width] * (depth + 1) + [classes]
    params = []
    for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:])):
        params.append(dlc.param((rng.uniform(-1, 1, (m, n)) * 0.5).astype(np.float32), name=f"d{depth}_w{i}"))
        params.append(dlc.param(np.zeros(n, np.float32), name=f"d{depth}_b{i}"))
    h = x
    for i in range(0, len(params), 2):
        h = h @ params[i] + params[i + 1]
        if i < len(params) - 2:
            h = dlc.relu(h)
    loss = -dlc.mean(dlc.sum(dlc.log_softmax(h) * dlc.one_hot(labels, classes), axis=1))
    updates = {}
    for p, g in zip(params, dlc.grad(loss, params)):
        v = dlc.param(np.zeros(p.shape, np.float32), name="v_" + p.node.attr("name"))
        updates[v] = 0.9 * v + g
        updates[p] = p - 0.05 * updates[v]
    store = dlc.default_store()
    ref_store = dlc.Store()
    for key, value in store.items():
        ref_store.add(key, value.copy(), store.is_trainable(key))
    cpu = dlc.compile(loss, updates=updates, target="cpu", cache=cache)
    ref = dlc.compile(loss, updates=updates, target="reference", store=ref_store)
    return cpu, ref, store, ref_store


def test_layers_of_a_deeper_model_share_their_kernels(rng, tmp_path):
    """The same layer at every depth is one function the outer function calls: depth adds calls, not code."""
    feeds = {"x": rng.uniform(-1, 1, (5, 4)).astype(np.float32), "labels": rng.integers(0, 3, 5)}
    sources = {}
    for depth in (6, 9):
        cpu, ref, store, ref_store = mlp_step(rng, depth, str(tmp_path / str(depth)))
        for step in range(2):
            np.testing.assert_allclose(cpu(**feeds), ref(**feeds), err_msg=f"loss, step {step}", **GEMM_TOL)
            for key, _ in cpu.updates:
                np.testing.assert_allclose(store[key], ref_store[key], err_msg=key, **GEMM_TOL)
        sources[depth] = cpu.backend.source()
        module = cpu.backend.module
        for name in dir(module):
            if name.startswith("k_"):   # compiled once for every call (its start in S is a plain int)
                assert len(getattr(module, name).overloads) == 1, name
    functions = {d: src.count("\ndef k_") for d, src in sources.items()}
    calls = {d: src.count("call_kernel(k_") for d, src in sources.items()}
    assert functions[6] == functions[9] > 0
    assert calls[9] > calls[6] and (calls[9] - calls[6]) % 3 == 0   # each added layer: the same calls
    assert sources[9].count("\n    # k") == sources[6].count("\n    # k")   # no more inlined kernels
