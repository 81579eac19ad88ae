"""dlc: a deep learning framework that is a compiler.

Write a model on symbolic tensors, differentiate it, and compile the whole
step into native code:

    x = dlc.input("x", ("B", 784))
    w = dlc.param(init, name="w")
    loss = dlc.mean(dlc.relu(x @ w))
    step = dlc.compile(loss, updates={w: w - 0.1 * dlc.grad(loss, w)})

The public names are those in __all__; dlc.nn, dlc.optim and dlc.inspect are
usable after a plain `import dlc`.
"""

import os

# Before anything loads scipy's OpenBLAS (the BLAS behind numba's np.dot): its idle threads spin for 2^28 cycles
# (about 0.1 s) after each call, on the cores dlc's kernel threads (attention, convolutions) need next; 2^20
# cycles is about 0.3 ms. W10 took 184-190 ms a step with it against 196-225 ms without (3 alternating runs each;
# W1 unchanged, W4 2% slower). A value the user set, or a BLAS loaded before dlc, is left as it is.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")
# The same for numba's OpenMP pool (libgomp, read when numba starts it; on x86-64 Linux numba runs on TBB instead,
# dlc/kernels/cpu/threads.py): its idle threads spin 300000 rounds after each parallel region, on the cores BLAS's
# threads need for the GEMM that follows. 20000 rounds: W10 (whose layer
# norms run on threads) 165-167 ms a step against 200-213 ms, W1, W2 and W9 unchanged (2 interleaved runs each);
# OMP_WAIT_POLICY=passive (no spinning) made W9's short regions slower (12.3-12.9 ms against 11.6-12.2).
# Shorter still trades the other way: when the scheduler puts the pool's thread on the caller's core, each spins
# its count in turn (0.6 ms here) before the other runs; 3000 removed that stall from MobileNet's batch-1 calls
# after idle pauses (2.0 ms against 4.4) but made W9 and W1 slower back to back (W9 12.5-17.6 ms against
# 11.4-12.3, 4 alternating runs). dlc/kernels/cpu/conv.py keeps regions of under 1 ms off the pool instead.
os.environ.setdefault("GOMP_SPINCOUNT", "20000")

from . import distributed, inspect, nn, optim  # MPI data parallelism, the inspector, layers/training API, optimizers
from . import functional as _functional
from .autodiff import grad
from .bisect import bisect
from .compiler import Function, compile, compile_steps, default_target
from .errors import ArtifactError, DlcError, DTypeError, DTypeWarning, GradientError, ShapeError
from .export import export, load  # (the functions shadow the dlc.export module name on purpose)
from .functional import *  # noqa: F401,F403  (the DSL's functions: dlc.exp, dlc.sum, ..., listed in its __all__)
from .graph import Graph, Node
from .ops.conv import conv1d, conv2d, conv_transpose2d
from .ops.pool import adaptive_avg_pool2d, avg_pool2d, max_pool2d
from .ops.random import dropout, random_bernoulli, random_normal, random_uniform
from .ops.scan import scan
from .store import Store, default_store, reset_default_store
from .tensor import Tensor

# dlc.tensor is the function (as torch.tensor), not the dlc/tensor.py module that defines the Tensor class
tensor = _functional.tensor

__version__ = "0.1.0"

__all__ = [
    # compiling and differentiating
    "compile", "compile_steps", "Function", "grad", "default_target", "bisect",
    # values and graphs
    "Tensor", "Graph", "Node", "Store", "default_store", "reset_default_store",
    # artifacts
    "export", "load",
    # errors and warnings
    "DlcError", "ShapeError", "DTypeError", "GradientError", "ArtifactError", "DTypeWarning",
    # ops beyond dlc.functional
    "conv1d", "conv2d", "conv_transpose2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "scan",
    "random_uniform", "random_normal", "random_bernoulli", "dropout",
    # submodules
    "nn", "optim", "inspect", "distributed",
    "__version__",
] + list(_functional.__all__)
