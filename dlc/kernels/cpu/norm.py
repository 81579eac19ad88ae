"""Layer normalization for generated CPU kernels: statistics in float64 (dlc/ops/norm.py), rows on threads.

Imported by the CPU backend as the module `dlc_cpu_norm`; generated code
calls these kernels by symbol (kernels/cpu/library.py, `signatures()`).
Operands are 2-D (rows, n) views of contiguous buffers: each row is
normalized on its own, read a few times from cache at the widths of a
transformer (n of a few thousand).

Why the row sums run with `reassoc`: a float64 sum of float32 values is a
chain of dependent adds unless LLVM may reorder it; allowed to, it keeps
several partial sums in vector registers. The order of a float64 sum of a
few thousand float32 values moves its result by far less than a float32 ulp.
Measured on W10's rows (4096 x 256, float32, 2 threads, the kernel alone,
3 alternating rounds): forward 1.97 -> 0.24 ms, backward 3.0 -> 0.46 ms
against the previous serial, in-order kernels; 4096 x 1024: 7.7 -> 0.9-1.15
and 12.0 -> 2.3-2.4 ms; equal outputs.

Threads: blocks of ROWS_PER_TASK rows claimed from a shared counter
(dlc_cpu_threads), from PARALLEL_MIN_ELEMENTS elements on. The `_rows`
variants run on the calling thread: a generated kernel with an epilogue
(the affine transform, a residual add) calls them on its own chunks of rows
on threads and runs the epilogue over each chunk while it is in cache.
"""

import numpy as np
from dlc_cpu_threads import JIT, JIT_PARALLEL, claim, task_counter, workers_for
from numba import njit, prange, types

# reordered float64 sums (see above); nothing else of fastmath: no NaN or infinity assumptions
JIT_SUMS = dict(JIT, fastmath={"reassoc", "contract"})

ROWS_PER_TASK = 16
PARALLEL_MIN_ELEMENTS = 1 << 17   # as generated elementwise loops (codegen/numba.py PARALLEL_MIN)


@njit(**JIT_SUMS)
def _row_stats(x, eps):
    """(mean, 1/std) of a row in float64: the centred second pass keeps the variance exact for large means."""
    n = x.shape[0]
    s = 0.0
    for c in range(n):
        s += np.float64(x[c])
    mean = s / n
    q = 0.0
    for c in range(n):
        d = np.float64(x[c]) - mean
        q += d * d
    return mean, 1.0 / np.sqrt(q / n + eps)


@njit(**JIT_SUMS)
def _forward_row(x, y, eps):
    mean, rstd = _row_stats(x, eps)
    for c in range(x.shape[0]):
        y[c] = (x[c] - mean) * rstd


@njit(**JIT_SUMS)
def _backward_row(x, g, dx, eps):
    n = x.shape[0]
    mean, rstd = _row_stats(x, eps)
    sg = 0.0
    sgx = 0.0
    for c in range(n):
        gc = np.float64(g[c])
        sg += gc
        sgx += gc * ((x[c] - mean) * rstd)
    mg, mgx = sg / n, sgx / n
    for c in range(n):
        dx[c] = rstd * (g[c] - mg - ((x[c] - mean) * rstd) * mgx)


FORWARD, BACKWARD = 0, 1


@njit(**JIT)
def _rows(kind, x, g, out, r0, r1, eps):
    for r in range(r0, r1):
        if kind == FORWARD:
            _forward_row(x[r], out[r], eps)
        else:
            _backward_row(x[r], g[r], out[r], eps)


@njit(**JIT_PARALLEL)
def _run(kind, x, g, out, eps):
    """Every row of out: on the calling thread (no parallel region: its start and join cost more than a small
    kernel), or in blocks of rows claimed by numba's threads."""
    rows = x.shape[0]
    tasks = (rows + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    workers = workers_for(x.size, tasks, PARALLEL_MIN_ELEMENTS)
    if workers == 1:
        _rows(kind, x, g, out, 0, rows, eps)
    else:
        counter = task_counter()
        for _ in prange(workers):
            t = claim(counter)
            while t < tasks:
                _rows(kind, x, g, out, t * ROWS_PER_TASK, min(rows, (t + 1) * ROWS_PER_TASK), eps)
                t = claim(counter)


@njit(**JIT)
def layer_norm_forward(x, y, eps):
    """y[r] = (x[r] - mean) / sqrt(var + eps) for every row r of x (rows, n)."""
    _run(FORWARD, x, x, y, eps)


@njit(**JIT)
def layer_norm_backward(x, g, dx, eps):
    """dx[r] = (g - mean(g) - xhat * mean(g * xhat)) / std for every row r, xhat = (x - mean) / std."""
    _run(BACKWARD, x, g, dx, eps)


@njit(**JIT)
def layer_norm_forward_rows(x, y, eps):
    """layer_norm_forward on the calling thread."""
    _rows(FORWARD, x, x, y, 0, x.shape[0], eps)


@njit(**JIT)
def layer_norm_backward_rows(x, g, dx, eps):
    """layer_norm_backward on the calling thread."""
    _rows(BACKWARD, x, g, dx, 0, x.shape[0], eps)


def signatures():
    """How generated code calls the kernels, which it binds by symbol (kernels/cpu/library.py): variant
    (name_dtype) -> (function, argument types); 2-d C-ordered arrays, the ones read declared read-only."""
    out = {}
    for dtype in (types.float32, types.float64):
        read, written = types.Array(dtype, 2, "C", readonly=True), types.Array(dtype, 2, "C")
        out[f"layer_norm_forward_{dtype}"] = ("layer_norm_forward", (read, written, types.float64))
        out[f"layer_norm_backward_{dtype}"] = ("layer_norm_backward", (read, read, written, types.float64))
        out[f"layer_norm_forward_rows_{dtype}"] = ("layer_norm_forward_rows", (read, written, types.float64))
        out[f"layer_norm_backward_rows_{dtype}"] = ("layer_norm_backward_rows",
                                                   (read, read, written, types.float64))
    return out
