"""Layer normalization for generated CPU kernels: one pass over each row, statistics in float64 (dlc/ops/norm.py).

Imported by the CPU backend as the module `dlc_cpu_norm`. Operands are 2-D
(rows, n) views of contiguous buffers: each row is normalized on its own. A
row is read three times (sum, centred squares, output), from cache at the
widths of a transformer (n of a few thousand). The rows loop is serial, as in
attention.py: a generated function loaded from numba's cache cannot start
numba's thread pool for a parallel kernel.
"""

import numpy as np
from numba import njit

JIT = dict(cache=True, error_model="numpy", nogil=True, boundscheck=False)


@njit(**JIT)
def _row_stats(x, r, eps):
    """(mean, 1/std) of row r in float64: the centred second pass keeps the variance exact for large means."""
    n = x.shape[1]
    s = 0.0
    for c in range(n):
        s += x[r, c]
    mean = s / n
    q = 0.0
    for c in range(n):
        d = x[r, c] - mean
        q += d * d
    return mean, 1.0 / np.sqrt(q / n + eps)


@njit(**JIT)
def layer_norm_forward(x, y, eps):
    """y[r] = (x[r] - mean) / sqrt(var + eps) for every row r of x (rows, n)."""
    for r in range(x.shape[0]):
        mean, rstd = _row_stats(x, r, eps)
        for c in range(x.shape[1]):
            y[r, c] = (x[r, c] - mean) * rstd


@njit(**JIT)
def layer_norm_backward(x, g, dx, eps):
    """dx[r] = (g - mean(g) - xhat * mean(g * xhat)) / std for every row r, xhat = (x - mean) / std."""
    n = x.shape[1]
    for r in range(x.shape[0]):
        mean, rstd = _row_stats(x, r, eps)
        sg = 0.0
        sgx = 0.0
        for c in range(n):
            gc = np.float64(g[r, c])
            sg += gc
            sgx += gc * ((x[r, c] - mean) * rstd)
        mg, mgx = sg / n, sgx / n
        for c in range(n):
            dx[r, c] = rstd * (g[r, c] - mg - ((x[r, c] - mean) * rstd) * mgx)
