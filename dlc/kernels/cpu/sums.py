"""Sums over the leading axes of a stored array (a bias's gradient): blocks of rows on threads, in float64.

Imported by the CPU backend as the module `dlc_cpu_sums`; generated code calls
`column_sums` by symbol (kernels/cpu/library.py, `signatures()`) for a sum of
a float value the arena holds over every axis but its trailing ones, read as
(rows, n), and `column_dots` for such a sum of the product of two (a layer
norm's weight gradient). A generated loop ran such a sum on one thread, and
a training step's bias gradients are sums over every row of its largest
activations (W10: 5 ms of its step in eleven of them, at one core's
bandwidth).

The array is cut into tasks of a fixed number of rows and columns (by the
shape alone: a few rows of many columns, a position embedding's gradient
over the batch, split by columns), each block of rows summed into a row of
partial sums of its own, and the partial sums are added up in order: the
result does not depend on which thread took which task, or on how many
threads there were. Threads claim tasks from a shared counter
(dlc_cpu_threads) from PARALLEL_MIN_ELEMENTS elements on.
"""

import numpy as np
from dlc_cpu_threads import JIT, JIT_PARALLEL, claim, task_counter, workers_for, zeros
from numba import njit, prange, types

PARALLEL_MIN_ELEMENTS = 1 << 17   # as generated elementwise loops (codegen/numba.py PARALLEL_MIN)
TASK_ELEMENTS = 1 << 16           # elements a task sums (a block of rows by a block of columns)
COLUMNS_PER_TASK = 4096           # columns a task sums at most: rows of many columns split among tasks too


# Both loops run over 1-d views of a block's columns indexed from 0: over range(c0, c1) of the whole rows,
# whose start LLVM cannot prove non-negative, numba keeps its negative-index wraparound in the loop and LLVM
# does not vectorize it (4096 x 768 float32 on one thread: 1.4 ms against 0.42).


@njit(**JIT)
def _add_rows(x, acc, r0, r1, c0, c1):
    """acc[c0:c1] += x[r0:r1, c0:c1] summed over rows, four rows at a time: a quarter of the loads and stores
    of acc."""
    a = acc[c0:c1]
    r = r0
    while r + 4 <= r1:
        x0, x1, x2, x3 = x[r, c0:c1], x[r + 1, c0:c1], x[r + 2, c0:c1], x[r + 3, c0:c1]
        for c in range(c1 - c0):
            a[c] += (np.float64(x0[c]) + np.float64(x1[c])) + (np.float64(x2[c]) + np.float64(x3[c]))
        r += 4
    while r < r1:
        x0 = x[r, c0:c1]
        for c in range(c1 - c0):
            a[c] += x0[c]
        r += 1


@njit(**JIT)
def _add_products(x, y, acc, r0, r1, c0, c1):
    """The same for x * y, the products in x's dtype (as the generated loop computes them)."""
    a = acc[c0:c1]
    r = r0
    while r + 4 <= r1:
        x0, x1, x2, x3 = x[r, c0:c1], x[r + 1, c0:c1], x[r + 2, c0:c1], x[r + 3, c0:c1]
        y0, y1, y2, y3 = y[r, c0:c1], y[r + 1, c0:c1], y[r + 2, c0:c1], y[r + 3, c0:c1]
        for c in range(c1 - c0):
            a[c] += (np.float64(x0[c] * y0[c]) + np.float64(x1[c] * y1[c])) + \
                (np.float64(x2[c] * y2[c]) + np.float64(x3[c] * y3[c]))
        r += 4
    while r < r1:
        x0, y0 = x[r, c0:c1], y[r, c0:c1]
        for c in range(c1 - c0):
            a[c] += x0[c] * y0[c]
        r += 1


@njit(**JIT)
def _add_task(x, y, products, partial, t, rows_per_task, columns_per_task):
    """Task t: a block of rows by a block of columns, into its row of partial sums."""
    rows, n = x.shape
    column_tasks = (n + columns_per_task - 1) // columns_per_task
    rt, ct = t // column_tasks, t % column_tasks
    r0, c0 = rt * rows_per_task, ct * columns_per_task
    r1, c1 = min(rows, r0 + rows_per_task), min(n, c0 + columns_per_task)
    if products:
        _add_products(x, y, partial[rt], r0, r1, c0, c1)
    else:
        _add_rows(x, partial[rt], r0, r1, c0, c1)


@njit(**JIT)
def column_sums(x, out):
    """out[c] = the sum of x[:, c] in float64, for x (rows, n) and out (n,)."""
    _sums(x, x, False, out)


@njit(**JIT)
def column_dots(x, y, out):
    """out[c] = the sum of x[:, c] * y[:, c] in float64 (a layer norm's weight gradient: dy times x-hat)."""
    _sums(x, y, True, out)


@njit(**JIT_PARALLEL)
def _sums(x, y, products, out):
    rows, n = x.shape
    columns_per_task = max(1, min(n, COLUMNS_PER_TASK))
    rows_per_task = max(4, TASK_ELEMENTS // columns_per_task)
    row_tasks = max(1, (rows + rows_per_task - 1) // rows_per_task)
    tasks = row_tasks * ((n + columns_per_task - 1) // columns_per_task)
    partial = zeros((row_tasks, n), out)   # not np.zeros: here that would be a parallel region of its own
    workers = workers_for(x.size, tasks, PARALLEL_MIN_ELEMENTS)
    if workers == 1:
        for t in range(tasks):
            _add_task(x, y, products, partial, t, rows_per_task, columns_per_task)
    else:
        counter = task_counter()
        for _ in prange(workers):
            t = claim(counter)
            while t < tasks:
                _add_task(x, y, products, partial, t, rows_per_task, columns_per_task)
                t = claim(counter)
    for c in range(n):
        out[c] = 0.0
    for t in range(row_tasks):
        for c in range(n):
            out[c] += partial[t, c]


def signatures():
    """How generated code calls the two kernels, which it binds by symbol (kernels/cpu/library.py): variant
    (name_dtype) -> (function, argument types); the rows read-only and C-ordered, the sums float64."""
    out = {}
    for dtype in (types.float32, types.float64):
        read, sums = types.Array(dtype, 2, "C", readonly=True), types.Array(types.float64, 1, "C")
        out[f"column_sums_{dtype}"] = ("column_sums", (read, sums))
        out[f"column_dots_{dtype}"] = ("column_dots", (read, read, sums))
    return out
