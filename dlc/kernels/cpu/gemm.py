"""GEMM and copies for generated CPU kernels: BLAS through np.dot into arena views, guarded for empty operands.

Imported by the CPU backend as the module `dlc_cpu_gemm`; generated modules
call these functions, so numba compiles (or loads from its cache) them once
per process rather than once per compiled program.
"""

import numpy as np
from numba import njit


@njit(cache=True, error_model="numpy", nogil=True)
def gemm(a, b, out):
    """out = a @ b through BLAS (a and b C- or F-contiguous: a transposed operand is a .T view, no copy).

    Empty operands give zeros and never reach BLAS.
    """
    if out.size == 0:
        return
    if a.shape[1] == 0:
        out[:, :] = 0
        return
    np.dot(a, b, out)


@njit(cache=True, error_model="numpy", nogil=True)
def copy_flat(dst, src):
    """dst[:] = src over 1-D views: a parameter update written back into the store's array."""
    for i in range(dst.size):
        dst[i] = src[i]
