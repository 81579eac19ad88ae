"""dlc_cpu_gemm.gemm_into: BLAS's out = alpha * a @ b + beta * out on views with any row stride, against numpy."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def gemm_into():
    from dlc.runtime.cpu import load_kernel_modules

    load_kernel_modules()
    import dlc_cpu_gemm

    return dlc_cpu_gemm.gemm_into


def _views(big, rows, cols, rng):
    """Views of `big` with `rows` x `cols` elements: a block of a wider array (row stride > cols), the transpose
    of such a block (unit-stride columns), and every other row (neither: gemm_into copies it first)."""
    r0, c0 = rng.integers(0, 4, 2)
    return {"block": big[r0:r0 + rows, c0:c0 + cols],
            "transposed": big[c0:c0 + cols, r0:r0 + rows].T,
            "strided": big[r0:r0 + 2 * rows:2, c0:c0 + cols]}


@pytest.mark.parametrize("dtype, tol", [(np.float32, 2e-5), (np.float64, 1e-12)])
def test_gemm_into_every_operand_form_with_alpha_and_beta(gemm_into, dtype, tol, rng):
    m, k, n = 13, 17, 11
    a_big, b_big = (rng.standard_normal((40, 40)).astype(dtype) for _ in range(2))
    for a_form, a in _views(a_big, m, k, rng).items():
        for b_form, b in _views(b_big, k, n, rng).items():
            for alpha, beta in ((1.0, 0.0), (0.125, 1.0), (-2.0, 0.5)):
                out_big = rng.standard_normal((30, 30)).astype(dtype)
                before = out_big.copy()
                out = out_big[3:3 + m, 5:5 + n]          # a block of columns of a wider array
                want = alpha * (a.astype(np.float64) @ b) + beta * before[3:3 + m, 5:5 + n]
                gemm_into(a, b, out, alpha, beta)
                np.testing.assert_allclose(out, want, rtol=tol, atol=tol * 10, err_msg=f"{a_form} @ {b_form}")
                outside = np.ones(out_big.shape, bool)
                outside[3:3 + m, 5:5 + n] = False
                np.testing.assert_array_equal(out_big[outside], before[outside], err_msg="written outside out")


def test_gemm_into_with_beta_zero_never_reads_out(gemm_into, rng):
    a, b = rng.standard_normal((5, 7)).astype(np.float32), rng.standard_normal((7, 3)).astype(np.float32)
    out = np.full((5, 3), np.nan, np.float32)
    gemm_into(a, b, out, 1.0, 0.0)
    np.testing.assert_allclose(out, a @ b, rtol=1e-5, atol=1e-6)


def test_gemm_into_empty_inner_dimension_scales_out(gemm_into):
    out = np.full((2, 3), 4.0, np.float32)
    gemm_into(np.empty((2, 0), np.float32), np.empty((0, 3), np.float32), out, 1.0, 0.5)
    np.testing.assert_array_equal(out, np.full((2, 3), 2.0, np.float32))
    gemm_into(np.empty((2, 0), np.float32), np.empty((0, 3), np.float32), out, 1.0, 0.0)
    np.testing.assert_array_equal(out, np.zeros((2, 3), np.float32))


def test_gemm_into_refuses_mismatched_shapes_and_strided_outputs(gemm_into):
    a, b = np.ones((4, 5), np.float32), np.ones((5, 6), np.float32)
    with pytest.raises(ValueError, match="shapes"):
        gemm_into(a, np.ones((4, 6), np.float32), np.empty((4, 6), np.float32), 1.0, 0.0)
    with pytest.raises(ValueError, match="shapes"):
        gemm_into(a, b, np.empty((4, 7), np.float32), 1.0, 0.0)
    with pytest.raises(ValueError, match="rows must be unit-stride"):
        gemm_into(a, b, np.empty((6, 4), np.float32).T, 1.0, 0.0)


def test_gemm_into_refuses_mixed_or_integer_dtypes(gemm_into):
    """BLAS reads every operand as the output's dtype: a float32 operand read as float64 would run past its
    end, so such a call does not compile."""
    from numba.core.errors import TypingError

    f32, f64 = np.ones((3, 3), np.float32), np.ones((3, 3), np.float64)
    for a, b, out in ((f32, f32, f64.copy()), (f64, f32, f64.copy()), (np.ones((3, 3), np.int64),) * 3):
        with pytest.raises(TypingError, match="one dtype, float32 or float64"):
            gemm_into(a, b, out, 1.0, 0.0)


@pytest.mark.parametrize("dtype, tol", [(np.float32, 2e-5), (np.float64, 1e-12)])
def test_few_rows_by_a_large_matrix_split_by_columns_match_numpy(dtype, tol, rng):
    """gemm's skinny rule (a few rows by at least SKINNY_SPLIT_BYTES of matrix: the output's columns in blocks
    over the threads) on a C-ordered matrix and a transposed view, column counts off the blocks, 1 to 8 rows;
    the block runner itself on 1, 2 and 3 workers, every column written once (NaN-filled outputs)."""
    from dlc.runtime.cpu import load_kernel_modules

    load_kernel_modules()
    import dlc_cpu_gemm as G

    k = 1024 if dtype == np.float32 else 512
    for n in (200, 1000):
        w = rng.standard_normal((k, n)).astype(dtype)
        assert w.nbytes >= G.SKINNY_SPLIT_BYTES
        for b in (w, np.ascontiguousarray(w.T).T):
            for m in (1, 3, 8):
                a = rng.standard_normal((m, k)).astype(dtype)
                want = a.astype(np.float64) @ b
                out = np.full((m, n), np.nan, dtype)
                G.gemm(a, b, out)
                np.testing.assert_allclose(out, want, rtol=tol, atol=tol * 100)
                for workers in (1, 2, 3):
                    out = np.full((m, n), np.nan, dtype)
                    G._columns_on_threads(a, b, out, workers)
                    np.testing.assert_allclose(out, want, rtol=tol, atol=tol * 100, err_msg=f"{workers} workers")


def test_a_decoding_steps_projection_on_threads_matches_numpy(rng):
    """x @ W^T for one token (nn.Linear's layout) compiled: the generated GEMM takes the skinny rule."""
    import dlc

    x, w = dlc.input("x", (1, 256)), dlc.input("w", (1024, 256))
    fn = dlc.compile(dlc.tanh(x @ dlc.transpose(w)), inputs=[x, w], target="cpu")
    assert "gemm(" in fn.backend.source()
    xv, wv = rng.standard_normal((1, 256)).astype(np.float32), rng.standard_normal((1024, 256)).astype(np.float32)
    want = np.tanh(xv.astype(np.float64) @ wv.T.astype(np.float64))
    np.testing.assert_allclose(fn(xv, wv), want, rtol=1e-5, atol=1e-5)
