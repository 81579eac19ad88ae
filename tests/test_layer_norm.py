"""The fused layer_norm op: values and gradients against PyTorch and finite differences, its kernels, its errors."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import check_grad

import dlc
from dlc import nn
from dlc.errors import GradientError, ShapeError

TARGETS = [("cpu", {}), ("cuda", {"emulate": True})]


@pytest.mark.parametrize("target,options", TARGETS)
@pytest.mark.parametrize("shape,normalized", [((6, 16), (16,)), ((2, 3, 4, 5), (4, 5)), ((1, 7), 7)])
def test_layer_norm_matches_pytorch_forward_and_backward(target, options, shape, normalized):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    n_shape = (normalized,) if isinstance(normalized, int) else normalized
    xv = (rng.standard_normal(shape) * 2.0 + 3.0).astype(np.float64)
    wv, bv = rng.uniform(0.5, 1.5, n_shape), rng.standard_normal(n_shape)
    gv = rng.standard_normal(shape)
    x, g = dlc.input("x", shape, "float64"), dlc.input("g", shape, "float64")
    w, b = dlc.param(wv, name="w", dtype="float64"), dlc.param(bv, name="b", dtype="float64")
    y = dlc.layer_norm(x, normalized, w, b, eps=1e-4)
    grads = dlc.grad(dlc.sum(y * g), [x, w, b])
    f = dlc.compile([y, *grads], [x, g], target=target, **options)
    assert any(k.anchor is not None and k.anchor.op == "layer_norm" for k in f.program.kernels)
    got = f(xv, gv)

    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (xv, wv, bv))
    ty = torch.nn.functional.layer_norm(tx, n_shape, tw, tb, eps=1e-4)
    (ty * torch.tensor(gv)).sum().backward()
    for mine, theirs in zip(got, (ty.detach(), tx.grad, tw.grad, tb.grad)):
        np.testing.assert_allclose(mine, theirs.numpy(), rtol=1e-10, atol=1e-12)


def test_layer_norm_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal((3, 2, 5)) * 1.5 + 0.5, rng.uniform(0.5, 2.0, (5,)), rng.standard_normal((5,))]
    check_grad(lambda x, w, b: dlc.tanh(dlc.layer_norm(x, 5, w, b, eps=1e-3)), arrays)


def test_a_row_with_a_large_mean_keeps_its_variance():
    """The centred second pass: a float32 row of 1e4 + small noise normalizes like float64 does."""
    rng = np.random.default_rng(2)
    xv = (1e4 + rng.standard_normal((4, 64))).astype(np.float32)
    x = dlc.input("x", (4, 64))
    got = dlc.compile(dlc.layer_norm(x, 64), [x], target="cpu")(xv)
    x64 = xv.astype(np.float64)
    want = (x64 - x64.mean(1, keepdims=True)) / np.sqrt(x64.var(1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_the_affine_and_a_residual_fuse_into_the_layer_norm_kernel():
    x = dlc.input("x", ("B", 8))
    ln = nn.LayerNorm(8)
    f = dlc.compile(ln(x) + x, [x], target="cpu")
    (kernel,) = f.program.kernels
    assert [n.op for n in kernel.nodes] == ["layer_norm", "mul", "add", "add"]


def test_bad_arguments_name_what_is_wrong():
    x = dlc.input("x", ("B", 8))
    with pytest.raises(ShapeError, match="last dims must be \\(4,\\), got \\(B, 8\\)"):
        dlc.layer_norm(x, 4)
    with pytest.raises(ValueError, match="eps must be a positive number"):
        dlc.layer_norm(x, 8, eps=0.0)
    with pytest.raises(ShapeError, match="known dims"):
        dlc.layer_norm(dlc.input("s", (2, "T")), ("T",))
    with pytest.raises(GradientError):
        y = dlc.layer_norm(x, 8)
        (gx,) = dlc.grad(dlc.sum(y * y), [x])
        dlc.grad(dlc.sum(gx), [x])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_threaded_kernels_match_numpy(dtype):
    """Rows of 256 with means far from zero, many enough (1 << 17 elements and up) for the kernels' threads, and
    a row count that is not a multiple of their blocks of rows: the forward and backward kernels themselves."""
    from dlc.runtime.cpu import load_kernel_modules

    load_kernel_modules()
    import dlc_cpu_norm as norm

    rng = np.random.default_rng(3)
    rows = norm.PARALLEL_MIN_ELEMENTS // 256 + norm.ROWS_PER_TASK + 5
    x = (rng.standard_normal((rows, 256)) * 2 + 50).astype(dtype)
    g = rng.standard_normal((rows, 256)).astype(dtype)
    y, dx = np.full_like(x, np.nan), np.full_like(x, np.nan)
    norm.layer_norm_forward(x, y, 1e-5)
    norm.layer_norm_backward(x, g, dx, 1e-5)
    x64, g64 = x.astype(np.float64), g.astype(np.float64)
    xhat = (x64 - x64.mean(1, keepdims=True)) / np.sqrt(x64.var(1, keepdims=True) + 1e-5)
    want_dx = (g64 - g64.mean(1, keepdims=True) - xhat * (g64 * xhat).mean(1, keepdims=True)) \
        / np.sqrt(x64.var(1, keepdims=True) + 1e-5)
    tol = 2e-5 if dtype == "float32" else 1e-10
    np.testing.assert_allclose(y, xhat, rtol=tol, atol=tol)
    np.testing.assert_allclose(dx, want_dx, rtol=tol, atol=tol)


def test_the_kernels_are_called_by_symbol_and_the_epilogue_runs_on_threads():
    """Generated code binds the norm kernels (their code is not linked into each caller). A layer norm with an
    epilogue (here the affine transform) on a large output, known to be large or compiled with parallel=True,
    runs in chunks of rows on threads, each chunk normalized on its thread and then its epilogue: equal to the
    serial kernel and the reference, for row counts the chunks do not divide."""
    rng = np.random.default_rng(4)
    n = 256
    rows = (1 << 17) // n + 3
    xv = rng.standard_normal((rows, n)).astype(np.float32) * 3 + 20
    w = dlc.param(rng.uniform(0.5, 1.5, n).astype(np.float32), name="w")
    b = dlc.param(rng.standard_normal(n).astype(np.float32), name="b")

    def build(shape, **options):
        x = dlc.input("x", shape)
        y = dlc.layer_norm(x, n, w, b)
        (gx,) = dlc.grad(dlc.sum(y * y), [x])
        return dlc.compile([y, gx], [x], **options)

    serial = build(("B", n), target="cpu")
    par = build(("B", n), target="cpu", parallel=True)
    known = build((rows, n), target="cpu")
    in_rows = build((5, rows // 5, n), target="cpu")   # 515 rows: 5 x 103
    assert "layer_norm_forward_float32 = bind('norm', 'layer_norm_forward_float32')" in serial.backend.source()
    assert "in prange(" not in serial.backend.source()
    for f in (par, known, in_rows):
        source = f.backend.source()
        assert "layer_norm_forward_rows_float32 = bind('norm', 'layer_norm_forward_rows_float32')" in source
        assert "in prange(" in source
    want = build(("B", n), target="reference")(xv)
    for got in (serial(xv), par(xv), par(xv[:3]), known(xv), in_rows(xv.reshape(5, -1, n))):
        for a, b in zip(got, want):
            np.testing.assert_allclose(a.reshape(-1, n), b[:len(a.reshape(-1, n))], rtol=2e-4, atol=2e-4)
