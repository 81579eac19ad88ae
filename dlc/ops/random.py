"""Random numbers from the counter-based Philox4x32-10 generator: uniform, normal, Bernoulli, dropout.

A draw is a pure function of (seed, step, element index): element i of an
output draws from the 128-bit counter (i, step) under the 64-bit key seed, so
the numpy reference, the Numba kernels and the CUDA kernels produce the same
stream without sharing any state. `step` is an int64 scalar tensor (a runtime
input, or a parameter the training step increments); the seed is an
attribute. The same (seed, step, shape) gives the same numbers: give each
dropout layer its own seed.

Bits to numbers (what every backend must mirror):
  float32 uniform  u = (x0 >> 8) * 2^-24                                   in [0, 1)
  float64 uniform  u = ((x0 >> 5) * 2^26 + (x1 >> 6)) * 2^-53              in [0, 1)
  normal           Box-Muller on two uniforms of the same counter:
                   z = sqrt(-2 log(1 - u1)) * cos(2 pi u2), computed in float64;
                   float32 takes u1 from x0 and u2 from x1, float64 takes
                   u1 from (x0, x1) and u2 from (x2, x3)
  bernoulli        the float32 uniform < p
"""

from __future__ import annotations

import numpy as np

from ..errors import DTypeError, ShapeError
from ..graph import INT_DTYPES, as_dtype, as_shape, shape_str
from .base import OPAQUE, register
from .checks import check_float, check_int, check_shape

# Philox4x32 constants (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11).
PHILOX_M0 = np.uint64(0xD2511F53)
PHILOX_M1 = np.uint64(0xCD9E8D57)
PHILOX_W0 = np.uint64(0x9E3779B9)  # golden ratio
PHILOX_W1 = np.uint64(0xBB67AE85)  # sqrt(3) - 1
MASK32 = np.uint64(0xFFFFFFFF)
SHIFT32 = np.uint64(32)
PHILOX_ROUNDS = 10


def philox4x32(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 of the counter (c0, c1, c2, c3) under the key (k0, k1) -> 4 words.

    Every argument is a uint64 scalar or array holding a 32-bit value (32x32
    -> 64-bit products then need no wider type). Plain arithmetic on uint64
    constants only, so numba compiles it unchanged under @njit and a CUDA
    renderer can mirror it line by line (__umulhi for the high words).
    """
    for _ in range(PHILOX_ROUNDS):
        p0 = PHILOX_M0 * c0
        p1 = PHILOX_M1 * c2
        c0, c1, c2, c3 = (p1 >> SHIFT32) ^ c1 ^ k0, p1 & MASK32, (p0 >> SHIFT32) ^ c3 ^ k1, p0 & MASK32
        k0 = (k0 + PHILOX_W0) & MASK32
        k1 = (k1 + PHILOX_W1) & MASK32
    return c0, c1, c2, c3


def split64(value: int) -> tuple[np.uint64, np.uint64]:
    """A 64-bit integer (negative ones wrap) as its (low, high) 32-bit words."""
    v = int(value) & 0xFFFFFFFFFFFFFFFF
    return np.uint64(v & 0xFFFFFFFF), np.uint64(v >> 32)


def random_words(n: int, seed: int, step: int):
    """The 4 Philox words of each element i < n: counter (i, step), key seed."""
    i = np.arange(n, dtype=np.uint64)
    s_lo, s_hi = split64(step)
    k0, k1 = split64(seed)
    return philox4x32(i & MASK32, i >> SHIFT32, s_lo, s_hi, k0, k1)


def uniform_from_words(w0, w1, dtype) -> np.ndarray:
    """Uniform [0, 1) numbers from Philox words: 24 random bits for float32, 53 for float64."""
    if np.dtype(dtype) == np.float32:
        return ((w0 >> np.uint64(8)).astype(np.float32) * np.float32(2.0 ** -24)).astype(np.float32)
    hi = (w0 >> np.uint64(5)).astype(np.float64)
    lo = (w1 >> np.uint64(6)).astype(np.float64)
    return (hi * 2.0 ** 26 + lo) * 2.0 ** -53


def uniform_ref(shape, seed, step, dtype) -> np.ndarray:
    n = int(np.prod(shape, dtype=np.int64))
    w = random_words(n, seed, step)
    return uniform_from_words(w[0], w[1], dtype).reshape(shape)


def normal_ref(shape, seed, step, dtype) -> np.ndarray:
    n = int(np.prod(shape, dtype=np.int64))
    w = random_words(n, seed, step)
    if np.dtype(dtype) == np.float32:
        u1, u2 = (uniform_from_words(w[k], None, np.float32).astype(np.float64) for k in (0, 1))
    else:
        u1, u2 = uniform_from_words(w[0], w[1], np.float64), uniform_from_words(w[2], w[3], np.float64)
    z = np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)
    return z.reshape(shape)


# ----------------------------------------------------------------------------
# ops: one input (the step), the output shape and the seed in attributes


def _random_infer(out_dtype=None):
    def infer(xs, attrs):
        (step,) = xs
        if step.dtype not in INT_DTYPES:
            raise DTypeError(f"step must be an int64 (or int32) scalar, got {step.dtype}")
        if step.shape != ():
            raise ShapeError(f"step must be a scalar, got shape {shape_str(step.shape)}")
        shape = check_shape(attrs["shape"])
        check_int(attrs["seed"], "seed", 0, 2 ** 64 - 1)
        dtype = out_dtype or attrs["dtype"]
        if out_dtype is None and dtype not in ("float32", "float64"):
            raise DTypeError(f"random numbers are float32 or float64, got {dtype!r}")
        for key in ("low", "high", "mean", "std"):
            if key in attrs:
                check_float(attrs[key], key)
        if "p" in attrs and not 0.0 <= check_float(attrs["p"], "p") <= 1.0:
            raise ShapeError(f"a Bernoulli probability must be in [0, 1], got {attrs['p']!r}")
        return shape, dtype
    return infer


def _step(xs) -> int:
    return int(np.asarray(xs[0]))


def _uniform_op_ref(xs, a, shape):
    u = uniform_ref(shape, a["seed"], _step(xs), a["dtype"])
    dt = np.dtype(a["dtype"]).type
    return (dt(a["low"]) + (dt(a["high"]) - dt(a["low"])) * u).astype(a["dtype"])


def _normal_op_ref(xs, a, shape):
    return (a["mean"] + a["std"] * normal_ref(shape, a["seed"], _step(xs), a["dtype"])).astype(a["dtype"])


def _bernoulli_op_ref(xs, a, shape):
    return uniform_ref(shape, a["seed"], _step(xs), np.float32) < np.float32(a["p"])


# No gradient rules: the numbers depend on no float input.
register("random_uniform", OPAQUE, _random_infer(), _uniform_op_ref, lambda node, g, xs: [None],
         doc="uniform [low, high) from Philox(counter=(i, step), key=seed)")
register("random_normal", OPAQUE, _random_infer(), _normal_op_ref, lambda node, g, xs: [None],
         doc="normal(mean, std) by Box-Muller from Philox(counter=(i, step), key=seed)")
register("random_bernoulli", OPAQUE, _random_infer("bool"), _bernoulli_op_ref, None,
         doc="True with probability p, from Philox(counter=(i, step), key=seed)")


# ----------------------------------------------------------------------------
# user-facing functions


def _F():
    from .. import functional

    return functional


def _shape_of(shape_or_like):
    from ..tensor import Tensor

    if isinstance(shape_or_like, Tensor):
        return tuple(shape_or_like.shape)
    if isinstance(shape_or_like, (int, np.integer, str)):
        return as_shape((shape_or_like,))
    return as_shape(shape_or_like)


def _seed(seed) -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or not 0 <= seed < 2 ** 64:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
    return int(seed)


def _step_tensor(step):
    """The step as a graph value: a Python int becomes an int64 constant."""
    from ..tensor import Tensor

    if isinstance(step, Tensor):
        return step
    if isinstance(step, (int, np.integer)) and not isinstance(step, bool):
        return _F().constant(np.int64(step))
    raise TypeError(f"step must be an int64 scalar Tensor (an input or a parameter) or an int, got {step!r}")


def _random(op, shape_or_like, seed, step, **attrs):
    from ..tensor import Tensor
    from .base import apply

    return Tensor(apply(op, [_step_tensor(step).node], shape=_shape_of(shape_or_like), seed=_seed(seed), **attrs))


def _float(dtype):
    dtype = as_dtype(dtype)
    if dtype not in ("float32", "float64"):
        raise DTypeError(f"random numbers are float32 or float64, got {dtype}")
    return dtype


def random_uniform(shape_or_like, seed, step, low=0.0, high=1.0, dtype="float32"):
    """Uniform numbers in [low, high), shaped like a tensor or a shape (dims may be symbols like "B")."""
    return _random("random_uniform", shape_or_like, seed, step, dtype=_float(dtype), low=float(low), high=float(high))


def random_normal(shape_or_like, seed, step, mean=0.0, std=1.0, dtype="float32"):
    """Normal numbers with the given mean and standard deviation (Box-Muller on Philox bits)."""
    return _random("random_normal", shape_or_like, seed, step, dtype=_float(dtype), mean=float(mean), std=float(std))


def random_bernoulli(shape_or_like, p, seed, step):
    """A bool tensor, each element True with probability p."""
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"a Bernoulli probability must be in [0, 1], got {p!r}")
    return _random("random_bernoulli", shape_or_like, seed, step, p=float(p))


def dropout(x, p, seed, step):
    """Inverted dropout: each element of x is zeroed with probability p, the rest scaled by 1/(1-p).

    The mask is a random_bernoulli of (seed, step), so the gradient flows
    through the same mask; compile the inference function without dropout.
    """
    F = _F()
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p!r}")
    if p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    keep = random_bernoulli(x, 1.0 - p, seed, step)
    return F.where(keep, x * (1.0 / (1.0 - p)), 0.0)


__all__ = ["random_uniform", "random_normal", "random_bernoulli", "dropout"]
