"""GEMM and copies for generated CPU kernels: BLAS through np.dot into arena views, guarded for empty operands.

Imported by the CPU backend as the module `dlc_cpu_gemm`; generated modules
call these functions, so numba compiles (or loads from its cache) them once
per process rather than once per compiled program.
"""

import ctypes

import llvmlite.binding as llvm
import numpy as np
from numba import njit, types

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
    is faster.
    """
    if out.size == 0:
        return
    if a.shape[1] == 0:
        out[:, :] = 0
        return
    np.dot(a, b, out)


@njit(**JIT)
def copy_flat(dst, src):
    """dst[:] = src over 1-D views: a parameter update written back into the store's array."""
    for i in range(dst.size):
        dst[i] = src[i]
