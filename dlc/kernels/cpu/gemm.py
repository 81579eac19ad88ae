"""GEMM and copies for generated CPU kernels: BLAS through np.dot into arena views, guarded for empty operands.

Imported by the CPU backend as the module `dlc_cpu_gemm`; generated modules
call these functions, so numba compiles (or loads from its cache) them once
per process rather than once per compiled program.
"""

import ctypes

import llvmlite.binding as llvm
import numpy as np
from dlc_cpu_threads import JIT_PARALLEL, claim, task_counter, thread_count
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils, errors
from numba.extending import intrinsic, overload

JIT = dict(cache=True, error_model="numpy", nogil=True)


# ----------------------------------------------------------------------------
# BLAS's own thread pool, off while the conv kernels run their own threads


def _bind_blas_thread_count():
    """Bind the symbols dlc_blas_set_num_threads / dlc_blas_get_num_threads, which the kernels below call, to the
    thread-count functions of the BLAS behind numba's np.dot (scipy's OpenBLAS), or to stand-ins that do nothing
    where that BLAS has none. Bound by name in every process, so numba's cache of the kernels stays valid."""
    lib = None
    try:
        from scipy.linalg import cython_blas
        lib = ctypes.CDLL(cython_blas.__file__)   # symbols are looked up in its libraries too
    except (ImportError, OSError):
        pass
    for prefix in ("scipy_openblas_", "openblas_", "scipy_openblas64_"):
        setter = getattr(lib, prefix + "set_num_threads", None)
        getter = getattr(lib, prefix + "get_num_threads", None)
        if setter is not None and getter is not None:
            break
    else:
        setter = ctypes.CFUNCTYPE(None, ctypes.c_int)(lambda n: None)
        getter = ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 1)
    llvm.add_symbol("dlc_blas_set_num_threads", ctypes.cast(setter, ctypes.c_void_p).value)
    llvm.add_symbol("dlc_blas_get_num_threads", ctypes.cast(getter, ctypes.c_void_p).value)
    return setter, getter   # kept alive: a stand-in callback must outlive every call through its address


_BLAS_THREAD_FUNCTIONS = _bind_blas_thread_count()
_set_blas_threads = types.ExternalFunction("dlc_blas_set_num_threads", types.void(types.intc))
_get_blas_threads = types.ExternalFunction("dlc_blas_get_num_threads", types.intc())


@njit(**JIT)
def blas_on_calling_thread():
    """Make each BLAS call run on the thread that makes it; returns the thread count to restore_blas_threads."""
    previous = _get_blas_threads()
    _set_blas_threads(np.int32(1))
    return previous


@njit(**JIT)
def restore_blas_threads(previous):
    _set_blas_threads(np.int32(previous))


@njit(**JIT)
def gemm(a, b, out):
    """out = a @ b through BLAS (a and b C- or F-contiguous: a transposed operand is a .T view, no copy).

    Empty operands give zeros and never reach BLAS. BLAS keeps its own thread
    pool here: on an idle machine its 2 threads beat one on an MLP step's
    GEMMs (W1 took 5.3-5.7 ms a step with every GEMM below 64M multiply-adds
    on the calling thread, against 3.1-3.6 ms with the pool, two interleaved
    runs of 5 x 50 steps each). On a machine whose
    cores are taken by other processes that pool waits a scheduler tick at
    each synchronisation (dlc_cpu_conv's note): there, OPENBLAS_NUM_THREADS=1
    is faster. A few rows by a large matrix, which BLAS runs on one thread,
    are split by columns over numba's threads instead (SKINNY_ROWS, below).
    """
    if out.size == 0:
        return
    if a.shape[1] == 0:
        out[:, :] = 0
        return
    if a.shape[0] <= SKINNY_ROWS and b.size * b.itemsize >= SKINNY_SPLIT_BYTES and out.shape[1] >= 64:
        workers = thread_count()
        if workers > 1:
            _columns_on_threads(a, b, out, workers)
            return
    np.dot(a, b, out)


# A product of a few rows by a large matrix (a decoding step's x @ W, batch-1 inference) only streams the
# matrix through memory, and OpenBLAS runs it on one thread (its GEMV), at one core's bandwidth: about 28 GB/s
# on a 2-core Xeon, where two threads stream 58 GB/s. Split by columns of the output, one BLAS call a block on
# the threads, W11's 16 products of a token (12.6 MB of weights) took 0.33-0.34 ms against 0.43-0.45 ms; below
# 512 KB a matrix the parallel region's start and join (a few microseconds) cost more than the second core saves.
SKINNY_ROWS = 8
SKINNY_SPLIT_BYTES = 512 * 1024


@njit(**JIT_PARALLEL)
def _columns_on_threads(a, b, out, workers):
    """out = a @ b in blocks of out's columns (two a thread, at least 64 columns, a multiple of 16 so that each
    starts on a cache line), each one BLAS call on whichever thread claims it (dlc_cpu_threads: a thread held
    up by another process does not hold up a fixed share)."""
    previous = blas_on_calling_thread()
    n = out.shape[1]
    step = max(64, ((n + 2 * workers - 1) // (2 * workers) + 15) // 16 * 16)
    blocks = (n + step - 1) // step
    counter = task_counter()
    for _ in prange(min(workers, blocks)):
        t = claim(counter)
        while t < blocks:
            lo, hi = t * step, min(n, (t + 1) * step)
            gemm_into(a, b[:, lo:hi], out[:, lo:hi], 1.0, 0.0)
            t = claim(counter)
    restore_blas_threads(previous)


# ----------------------------------------------------------------------------
# BLAS's full GEMM, out = alpha * a @ b + beta * out, on views with any row stride
#
# np.dot takes contiguous operands only and always overwrites its output, so a kernel that sums products (the
# attention backward's dk, dv and dq over blocks) wrote each into a scratch block and added it in a pass of its
# own, and scaled in another. gemm_into hands BLAS the views themselves (their leading dimension from their
# strides) with alpha and beta: sums and scales happen inside the GEMM, and a block of columns of a wider array
# is written in place. It calls numba's own BLAS entry (numba_xxgemm, the one behind np.dot), so both use the
# same library and thread pool.

_xxgemm = types.ExternalFunction("numba_xxgemm", types.int32(
    types.int8, types.int8, types.int8, types.intp, types.intp, types.intp, types.voidptr, types.voidptr,
    types.intp, types.voidptr, types.intp, types.voidptr, types.voidptr, types.intp))


@intrinsic
def _address(typingctx, arr):
    """The address of a view's first element, as a void pointer."""
    def codegen(context, builder, signature, args):
        view = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.bitcast(view.data, ir.IntType(8).as_pointer())
    return types.voidptr(arr), codegen


@intrinsic
def _slot(typingctx, value):
    """The address of a copy of a scalar on the calling function's stack (BLAS takes alpha and beta by
    address; a stack slot, not an array allocated at every call)."""
    def codegen(context, builder, signature, args):
        slot = cgutils.alloca_once_value(builder, args[0])
        return builder.bitcast(slot, ir.IntType(8).as_pointer())
    return types.voidptr(value), codegen


@njit(**JIT)
def _blas_layout(x):
    """How BLAS (column-major) reads a 2-D view: 0 when its rows are unit-stride (read as x^T), 1 when its
    columns are (a transposed view: read as x), -1 when neither; and the leading dimension in elements."""
    rows, cols = x.shape
    row_step, col_step = x.strides[0] // x.itemsize, x.strides[1] // x.itemsize
    if (col_step == 1 or cols == 1) and row_step >= max(cols, 1):
        return 0, max(row_step, cols, 1)
    if (row_step == 1 or rows == 1) and col_step >= max(rows, 1):
        return 1, max(col_step, rows, 1)
    return -1, 0


def _float_matrices(a, b, out):
    """Typing-time check for gemm_into: BLAS reads every operand as out's dtype, so a mixed call would read
    past a smaller operand's end."""


@overload(_float_matrices, jit_options=JIT)
def _float_matrices_typed(a, b, out):
    arrays = (a, b, out)
    if not all(isinstance(x, types.Array) and x.ndim == 2 for x in arrays) or \
            out.dtype not in (types.float32, types.float64) or a.dtype != out.dtype or b.dtype != out.dtype:
        raise errors.TypingError("gemm_into: a, b and out must be 2-D arrays of one dtype, float32 or float64")
    return lambda a, b, out: None


@njit(**JIT)
def gemm_into(a, b, out, alpha, beta):
    """out = alpha * (a @ b) + beta * out through BLAS, for 2-D views of one float dtype whose rows or columns
    are unit-stride (a transposed operand is a .T view; out's rows must be unit-stride, and out must not
    overlap a or b). Other views are copied first. beta == 0 never reads out (BLAS's rule), so out may hold
    anything, NaN included."""
    _float_matrices(a, b, out)
    m, k, n = a.shape[0], a.shape[1], b.shape[1]
    if a.shape[1] != b.shape[0] or out.shape[0] != m or out.shape[1] != n:
        raise ValueError("gemm_into: operand shapes do not match")
    if m == 0 or n == 0:
        return
    if k == 0:
        for i in range(m):
            for j in range(n):
                out[i, j] = 0 if beta == 0 else beta * out[i, j]
        return
    c_order, ldc = _blas_layout(out)
    if c_order != 0:
        raise ValueError("gemm_into: the output's rows must be unit-stride")
    a_order, lda = _blas_layout(a)
    if a_order < 0:
        a = np.ascontiguousarray(a)
        a_order, lda = 0, k
    b_order, ldb = _blas_layout(b)
    if b_order < 0:
        b = np.ascontiguousarray(b)
        b_order, ldb = 0, n
    a_scale, b_scale = out.dtype.type(alpha), out.dtype.type(beta)
    kind = np.int8(ord("s")) if out.itemsize == 4 else np.int8(ord("d"))
    # column-major: out^T (n x m) = b^T (n x k) a^T (k x m); a row-major view read as its transpose needs no 't'
    no, yes = np.int8(ord("n")), np.int8(ord("t"))
    status = _xxgemm(kind, yes if b_order == 1 else no, yes if a_order == 1 else no, n, m, k, _slot(a_scale),
                     _address(b), ldb, _address(a), lda, _slot(b_scale), _address(out), ldc)
    if status != 0:
        raise RuntimeError("gemm_into: BLAS is unavailable (numba finds it through scipy)")


# OpenBLAS multiplies operands of at most SMALL_MACS multiply-adds where they are, without first packing them (its
# small-matrix kernels); above that it packs both at every call, which dominates GEMMs of a few million, such as
# a recurrent step's: (32, 128) x (128, 512) took 36.6 us on BLAS's two threads, 37.2 us on one thread in row
# blocks of 4 (each under SMALL_MACS) and 22.7 us with those blocks shared by two threads (minimum of 7 x 1000
# calls). Only loop bodies use it (gemm_rows): the same rule for every GEMM made W3 faster but W4's and W2's
# steps slower (benchmarks/RESULTS.md).
SMALL_MACS = 1_000_000
ROW_BLOCKS_MAX_MACS = 8_000_000
ROW_BLOCK_MIN = 4


def gemm_rows(a, b, out):
    """gemm for a scan body's step: a product between SMALL_MACS and ROW_BLOCKS_MAX_MACS multiply-adds whose
    left operand is C-ordered runs in blocks of rows, each under SMALL_MACS, on numba's threads (chosen when
    numba types the call: a transposed left operand is one gemm call, as its row blocks would be copies)."""
    gemm(a, b, out)


@overload(gemm_rows, jit_options=JIT)
def _gemm_rows_typed(a, b, out):
    if a.layout != "C":
        return lambda a, b, out: gemm(a, b, out)

    def in_row_blocks(a, b, out):
        m, k, n = a.shape[0], a.shape[1], b.shape[1]
        rows = SMALL_MACS // max(k * n, 1)
        threads = thread_count()
        if SMALL_MACS < m * k * n <= ROW_BLOCKS_MAX_MACS and rows >= ROW_BLOCK_MIN and threads > 1:
            blocks = (m + rows - 1) // rows
            _row_blocks(a, b, out, rows, blocks, min(blocks, threads))
            return
        gemm(a, b, out)
    return in_row_blocks


@njit(**JIT_PARALLEL)
def _row_blocks(a, b, out, rows, blocks, workers):
    """out = a @ b in `blocks` blocks of `rows` rows of a, each one BLAS call on whichever of the `workers`
    threads claims it (the caller reads the thread count: see dlc_cpu_threads)."""
    previous = blas_on_calling_thread()
    counter = task_counter()
    for _ in prange(workers):
        t = claim(counter)
        while t < blocks:
            np.dot(a[t * rows:(t + 1) * rows], b, out[t * rows:(t + 1) * rows])
            t = claim(counter)
    restore_blas_threads(previous)


@njit(**JIT)
def copy_flat(dst, src):
    """dst[:] = src over 1-D views: a parameter update written back into the store's array."""
    for i in range(dst.size):
        dst[i] = src[i]
