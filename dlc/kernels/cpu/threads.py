"""One thread pool for the hand-written CPU kernels: numba's, with tasks claimed from a shared counter.

Imported by the CPU backend as the module `dlc_cpu_threads`; the conv and
attention kernels take their threads from here. A kernel that splits its work
runs `for _ in prange(workers)` and each thread claims task after task with
`claim` until none is left: a thread that waits for a core another process
holds does not hold up a fixed share. While the kernel's threads run, each
BLAS call in them runs on its own thread (dlc_cpu_gemm.blas_on_calling_thread):
BLAS's pool on top of ours would oversubscribe the cores.

Below PARALLEL_MIN_MACS multiply-adds one thread does the whole kernel: a
parallel region's join waits for its slowest thread, and on a loaded machine
that wait (ticks of 4 ms, measured) outweighs halving a kernel of a
millisecond or less.
"""

import ctypes
import os
import sys

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

JIT = dict(cache=True, error_model="numpy", nogil=True, boundscheck=False)
# prange loops only: numba would otherwise turn every array expression (zeroing a buffer, a sum) into a
# parallel region of its own, each a start and a join of the thread pool
JIT_PARALLEL = dict(JIT, parallel=dict(prange=True, comprehension=False, reduction=False, inplace_binop=False,
                                       setitem=False, numpy=False, stencil=False, fusion=False))


def _make_tbb_loadable():
    """Load oneTBB's library from where pip puts it, so that numba's pool runs on TBB rather than OpenMP.

    numba takes TBB, its first choice, only if the dynamic loader finds libtbb by name; pip's `tbb` package (a
    dependency on x86-64) installs it in <prefix>/lib, which the loader does not search in a virtual
    environment, so numba fell back to GNU OpenMP (libgomp) there. Loaded first by its full path, it is found.
    Why TBB: a libgomp thread waiting for work spins (GOMP_SPINCOUNT, dlc/__init__.py) and, whenever the
    scheduler puts it on the core of the thread that started the region, each spins in turn for its time
    while the other core idles. A 128 -> 128 1x1 conv on 16x16 split over 2 threads took 0.06 ms and, in about
    half of the runs after an idle pause, 0.6-1.8 ms a call; with another process on one core, in every call.
    On TBB it took 0.10-0.36 ms in both cases, and W1, W2, W9, W10 and ResNet-18's batch-1 inference the same
    as on libgomp within the noise (3 alternating runs each, benchmarks/RESULTS.md)."""
    path = os.path.join(sys.prefix, "lib", "libtbb.so.12")
    if os.path.exists(path):
        ctypes.CDLL(path, mode=os.RTLD_GLOBAL)


# Starts numba's pool when the module is imported: a generated function loaded from numba's cache calls a
# parallel kernel without starting it, which crashes. The thread count is then read through the symbol the
# threading layer registers: numba.get_num_threads() inside a kernel would bake in a ctypes pointer, which
# numba refuses to cache.
_make_tbb_loadable()
numba.get_num_threads()
# Whether the pool runs on TBB, whose waiting threads yield the core: there a parallel region of a few dozen
# microseconds pays (kernels/cpu/conv_nhwc.py). A constant to the kernels that read it, so numba's cache keeps
# the value it compiled them with: a process that chooses OpenMP later (NUMBA_THREADING_LAYER=omp) over the same
# cache gets TBB's thresholds, slower, not wrong.
ON_TBB = numba.threading_layer() == "tbb"
thread_count = types.ExternalFunction("get_num_threads", types.intc())

PARALLEL_MIN_MACS = 1 << 26   # multiply-adds under which one thread runs a whole kernel (about 1.5 ms)


@njit(**JIT)
def workers_for(work, tasks, minimum=PARALLEL_MIN_MACS):
    """How many threads share a kernel of `work` units (multiply-adds unless `minimum` says otherwise) split
    into `tasks` independent parts: one below `minimum`."""
    if work < minimum:
        return 1
    return max(1, min(thread_count(), tasks))


@intrinsic
def claim(typingctx, counter):
    """counter[0] += 1 atomically, returning the value before: the next task for the calling thread."""
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        return builder.atomic_rmw("add", data, ir.Constant(ir.IntType(64), 1), "monotonic")
    return types.int64(counter), codegen


# Inside a parallel function numba turns np.zeros, and a slice assigned or added to, into a parallel region of
# its own even with those transformations off (measured: a kernel calling np.zeros on its one-thread path woke
# the pool at every call, whose spinning threads then halved the speed of BLAS's on 2 cores). Parallel
# functions make such arrays through these serial helpers instead.


@njit(**JIT)
def task_counter():
    """A zeroed counter for claim."""
    return np.zeros(1, np.int64)


@njit(**JIT)
def zeros(shape, like):
    """np.zeros(shape) of like's dtype."""
    return np.zeros(shape, like.dtype)


@njit(**JIT)
def zero(a):
    """a[...] = 0."""
    a[:] = 0


@njit(**JIT)
def block(count, parts, k):
    """[start, stop) of part k when count items are split into parts near-equal contiguous blocks."""
    return k * count // parts, (k + 1) * count // parts
