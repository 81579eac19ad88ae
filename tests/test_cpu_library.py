"""How generated CPU code is put together for numba: large hand-written kernels called by symbol, long
outer functions in parts.

A convolution or attention kernel is compiled once per process and called by
a symbol (dlc/kernels/cpu/library.py), not linked into, and optimized again
inside, every generated function that calls it; a generated module loaded
from numba's cache in a new process binds those symbols before it runs. A
segment longer than PART_LINES inlined lines runs as several outer
functions, each compiled on its own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from numba import njit
from numba.core.errors import TypingError
from test_cpu_conv import fresh_store_like

import dlc
import dlc.codegen.numba as numba_codegen
from dlc import cache
from dlc.runtime.cpu import load_kernel_modules


def _conv_step(rng):
    """A conv net's SGD step: conv2d, its input gradient (second conv) and weight gradients."""
    x = dlc.input("x", ("B", 2, 7, 7))
    w1 = dlc.param(rng.uniform(-0.5, 0.5, (3, 2, 3, 3)).astype(np.float32), name="w1")
    w2 = dlc.param(rng.uniform(-0.5, 0.5, (4, 3, 3, 3)).astype(np.float32), name="w2")
    y = dlc.conv2d(dlc.relu(dlc.conv2d(x, w1, padding=1)), w2, padding=1)
    loss = dlc.mean(y * y)
    g1, g2 = dlc.grad(loss, [w1, w2])
    return x, loss, {w1: w1 - 0.1 * g1, w2: w2 - 0.1 * g2}


def _defined_functions(llvm_ir: str) -> list[str]:
    return re.findall(r"^define .*?@\"?([^\s\"(]+)", llvm_ir, re.M)


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty kernel cache: the outer function is compiled here, so its LLVM IR can be read (a function loaded
    from numba's cache has only machine code)."""
    monkeypatch.setenv(cache.ENV, str(tmp_path / "cache"))
    cache.reset()
    yield
    cache.reset()


def test_a_conv_is_called_by_symbol_not_compiled_into_its_caller(rng, fresh_cache):
    x, loss, updates = _conv_step(rng)
    store = dlc.default_store()
    ref_store = fresh_store_like(store)
    cpu = dlc.compile(loss, inputs=[x], updates=updates, target="cpu")
    ref = dlc.compile(loss, inputs=[x], updates=updates, target="reference", store=ref_store)
    source = cpu.backend.source()
    for variant in ("conv2d_float32", "conv2d_grad_input_float32", "conv2d_grad_weight_float32"):
        assert f"{variant} = bind('conv', '{variant}')" in source
    xv = rng.standard_normal((3, 2, 7, 7)).astype(np.float32)
    for _ in range(2):
        np.testing.assert_allclose(cpu(xv), ref(xv), rtol=1e-5)
    for key in ("w1", "w2"):
        np.testing.assert_allclose(store[key], ref_store[key], rtol=1e-5, atol=1e-6)
    (llvm_ir,) = cpu.backend.module.segment0.inspect_llvm().values()
    defined = _defined_functions(llvm_ir)
    assert defined, "the outer function's own code"
    # the convolutions' code (module dlc_cpu_conv) is not in the caller's library: only calls of the symbols
    assert not [name for name in defined if "dlc_cpu_conv" in name], defined
    for variant in ("conv2d_float32", "conv2d_grad_input_float32", "conv2d_grad_weight_float32"):
        assert re.search(rf"^declare .*@\"?dlc_cpu_{variant}\"?\(", llvm_ir, re.M), variant


def test_a_cached_module_binds_its_kernels_before_it_runs_in_a_new_process(tmp_path):
    """The second process loads the outer functions from numba's cache: their calls of the conv symbols, of the
    shared layer kernels and of the parts must find those symbols registered (an unresolved symbol would abort
    the process)."""
    script = tmp_path / "conv_step.py"
    script.write_text(textwrap.dedent("""
        import numpy as np
        import dlc
        import dlc.codegen.numba
        dlc.codegen.numba.PART_LINES = 12   # the MLP's segment in parts
        rng = np.random.default_rng(0)
        x = dlc.input("x", ("B", 2, 7, 7))
        w = dlc.param(rng.uniform(-0.5, 0.5, (3, 2, 3, 3)).astype(np.float32), name="w")
        loss = dlc.mean(dlc.conv2d(x, w, padding=1) ** 2)
        (g,) = dlc.grad(loss, [w])
        conv = dlc.compile([loss, g], inputs=[x], target="cpu")
        out = conv(rng.standard_normal((2, 2, 7, 7)).astype(np.float32))
        h = z = dlc.input("z", ("B", 6))
        ws = [dlc.param(rng.uniform(-0.5, 0.5, (6, 6)).astype(np.float32), name=f"m{i}") for i in range(4)]
        for m in ws:   # the same layer four times: kernels shared across depth
            h = dlc.relu(h @ m)
        mlp_loss = dlc.mean(h * h)
        mlp = dlc.compile([mlp_loss] + dlc.grad(mlp_loss, ws), inputs=[z], target="cpu")
        grads = mlp(rng.standard_normal((5, 6)).astype(np.float32))
        module = mlp.backend.module
        shared = [name for name in dir(module) if name.startswith("k_")]
        parts = [name for name in dir(module) if "_part" in name]
        assert shared and parts, (shared, parts)
        hits = [sum(f.stats.cache_hits.values()) for f in
                [conv.backend.module.segment0, module.segment0] + [getattr(module, n) for n in shared + parts]]
        print(repr(float(out[0])), repr(float(np.abs(out[1]).sum())),
              repr(sum(float(np.abs(g).sum()) for g in grads)), min(hits), max(hits))
    """))
    # no compile helpers: the first process compiles everything itself (their share would come from the cache)
    env = dict(os.environ, DLC_CACHE_DIR=str(tmp_path / "cache"), DLC_COMPILE_WORKERS="0")
    runs = [subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
            for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
    (*values0, low0, high0), (*values1, low1, high1) = [run.stdout.split() for run in runs]
    assert (low0, high0) == ("0", "0"), "everything compiled in the first process"
    assert (low1, high1) == ("1", "1"), "every outer function, part and shared kernel loaded from the cache"
    assert values0 == values1


def _bound_conv2d_caller():
    """An njit function calling the bound float32 conv2d (stride 1, no padding) on its three arrays."""
    load_kernel_modules()
    from dlc_cpu_library import bind

    conv = bind("conv", "conv2d_float32")

    @njit
    def call(x, w, out):
        conv(x, w, out, np.int64(1), np.int64(1), np.int64(0), np.int64(0), np.int64(1), np.int64(1),
             np.int64(1))
    return call


def test_a_bound_kernel_called_with_other_types_is_a_typing_error():
    call = _bound_conv2d_caller()
    x, w, out = np.ones((1, 1, 3, 3)), np.ones((1, 1, 1, 1)), np.zeros((1, 1, 3, 3))
    with pytest.raises(TypingError, match="dlc_cpu_conv2d_float32 called with .*float64.* it is bound for"):
        call(x, w, out)   # float64 arrays
    call(x.astype(np.float32), w.astype(np.float32), f32 := out.astype(np.float32))
    np.testing.assert_array_equal(f32, x)


def test_a_read_only_input_array_reaches_a_bound_kernel_as_it_is(rng):
    """The kernels declare the arrays they only read read-only: a caller's read-only array is passed as it is
    (an ONNX test's inputs are read-only), an output must be writable."""
    x = dlc.input("x", ("B", 2, 7, 7))
    w = dlc.param(rng.uniform(-0.5, 0.5, (3, 2, 3, 3)).astype(np.float32), name="w")
    y = dlc.conv2d(x, w, padding=1)
    cpu = dlc.compile(y, inputs=[x], target="cpu")
    ref = dlc.compile(y, inputs=[x], target="reference")
    xv = rng.standard_normal((2, 2, 7, 7)).astype(np.float32)
    xv.flags.writeable = False
    np.testing.assert_allclose(cpu(xv), ref(xv), rtol=1e-5, atol=1e-6)

    call = _bound_conv2d_caller()
    out = np.zeros((1, 1, 3, 3), np.float32)
    out.flags.writeable = False
    with pytest.raises(TypingError, match="bound for"):
        call(np.ones((1, 1, 3, 3), np.float32), np.ones((1, 1, 1, 1), np.float32), out)


def test_an_unknown_variant_is_refused():
    load_kernel_modules()
    from dlc_cpu_library import bind

    with pytest.raises(KeyError):
        bind("conv", "conv2d_int32")


def _mlp_step(rng, layers=4):
    x = dlc.input("x", ("B", 8))
    ws = [dlc.param(rng.uniform(-0.5, 0.5, (8, 8)).astype(np.float32), name=f"w{i}") for i in range(layers)]
    h = x
    for i, w in enumerate(ws):
        h = dlc.tanh(h @ w) if i % 2 else dlc.relu(h @ w) * 0.5
    loss = dlc.mean(h * h)
    grads = dlc.grad(loss, ws)
    return x, loss, {w: w - 0.1 * g for w, g in zip(ws, grads)}


def test_a_long_segment_runs_as_parts_with_the_same_results(rng, monkeypatch):
    monkeypatch.setattr(numba_codegen, "PART_LINES", 12)
    x, loss, updates = _mlp_step(rng)
    store = dlc.default_store()
    ref_store = fresh_store_like(store)
    cpu = dlc.compile(loss, inputs=[x], updates=updates, target="cpu")
    ref = dlc.compile(loss, inputs=[x], updates=updates, target="reference", store=ref_store)
    assert cpu.backend.stats["segments"] == 1, "still one native call a step"
    source = cpu.backend.source()
    parts = re.findall(r"^def (segment0_part\d+)\(", source, re.M)
    assert len(parts) >= 3, parts
    for part in parts:
        assert f"call_kernel({part}, arena, S" in source
    xv = rng.standard_normal((5, 8)).astype(np.float32)
    for _ in range(3):
        np.testing.assert_allclose(cpu(xv), ref(xv), rtol=1e-5)
    for key in store.keys():
        np.testing.assert_allclose(store[key], ref_store[key], rtol=1e-5, atol=1e-6)


def test_a_scan_body_in_parts_keeps_its_native_loop(rng, monkeypatch):
    monkeypatch.setattr(numba_codegen, "PART_LINES", 4)
    xs = dlc.input("xs", ("T", "B", 4))
    w = dlc.param(rng.uniform(-0.5, 0.5, (4, 4)).astype(np.float32), name="w")
    u = dlc.param(rng.uniform(-0.5, 0.5, (4, 4)).astype(np.float32), name="u")

    def cell(h, xt):
        a = dlc.tanh(xt @ w + h @ u)
        h = dlc.sigmoid(a) * h + (1.0 - dlc.sigmoid(a)) * a
        return h, h

    h0 = dlc.broadcast_to(dlc.constant(np.float32(0.0)), (xs.shape[1], 4))
    h, ys = dlc.scan(cell, h0, xs)
    cpu = dlc.compile([h, ys], inputs=[xs], target="cpu")
    ref = dlc.compile([h, ys], inputs=[xs], target="reference")
    assert cpu.backend.stats["scan_loops"] == ["native"], "the loop over time is native"
    (scan,) = [k for k in cpu.backend.program.kernels if k.anchor is not None and k.anchor.op == "scan"]
    body_source = cpu.backend._native[id(scan)].__self__.body_backend.source()   # (NativeScan.run's scan)
    assert re.search(r"^def segment0_part1\(", body_source, re.M), "the body's outer function is in parts"
    xv = rng.standard_normal((6, 3, 4)).astype(np.float32)
    for got, want in zip(cpu(xv), ref(xv)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
