"""Philox random numbers for generated CPU kernels: the same bits and the same conversions as dlc/ops/random.py.

Imported by the CPU backend as the module `dlc_cpu_random`. Element i of an
output (in C order) draws from the counter (i, step) under the key seed,
through the very `philox4x32` the numpy reference runs (compiled here by
numba), so both backends give bit-identical numbers. `seed_lo`/`seed_hi` are
the key's 32-bit words; `step` is the int64 step (negative steps wrap as in
the reference).
"""

import math

import numpy as np
from numba import njit

from dlc.ops.random import philox4x32

JIT = dict(cache=True, error_model="numpy", nogil=True, boundscheck=False)

_philox = njit(inline="always", error_model="numpy")(philox4x32)

MASK32 = np.uint64(0xFFFFFFFF)
TWO_PI = 2.0 * np.pi


@njit(inline="always", error_model="numpy")
def _words(i, seed_lo, seed_hi, step):
    s = np.uint64(step)
    k = np.uint64(i)
    return _philox(k & MASK32, k >> np.uint64(32), s & MASK32, s >> np.uint64(32),
                   np.uint64(seed_lo), np.uint64(seed_hi))


@njit(inline="always", error_model="numpy")
def _uniform_f32(w0):
    return np.float32(w0 >> np.uint64(8)) * np.float32(2.0 ** -24)


@njit(inline="always", error_model="numpy")
def _uniform_f64(w0, w1):
    return (np.float64(w0 >> np.uint64(5)) * 2.0 ** 26 + np.float64(w1 >> np.uint64(6))) * 2.0 ** -53


@njit(**JIT)
def random_uniform_f32(out, seed_lo, seed_hi, step, low, high):
    """out[i] = low + (high - low) * u_i in float32, u_i uniform in [0, 1) with 24 random bits."""
    lo = np.float32(low)
    span = np.float32(high) - lo
    for i in range(out.size):
        w0, _, _, _ = _words(i, seed_lo, seed_hi, step)
        out[i] = lo + span * _uniform_f32(w0)


@njit(**JIT)
def random_uniform_f64(out, seed_lo, seed_hi, step, low, high):
    """out[i] = low + (high - low) * u_i in float64, u_i uniform in [0, 1) with 53 random bits."""
    span = high - low
    for i in range(out.size):
        w0, w1, _, _ = _words(i, seed_lo, seed_hi, step)
        out[i] = low + span * _uniform_f64(w0, w1)


@njit(**JIT)
def random_normal_f32(out, seed_lo, seed_hi, step, mean, std):
    """out[i] = mean + std * z_i (computed in float64, stored as float32), z_i by Box-Muller on words 0 and 1."""
    for i in range(out.size):
        w0, w1, _, _ = _words(i, seed_lo, seed_hi, step)
        u1 = np.float64(_uniform_f32(w0))
        u2 = np.float64(_uniform_f32(w1))
        out[i] = np.float32(mean + std * (math.sqrt(-2.0 * math.log1p(-u1)) * math.cos(TWO_PI * u2)))


@njit(**JIT)
def random_normal_f64(out, seed_lo, seed_hi, step, mean, std):
    """out[i] = mean + std * z_i, z_i by Box-Muller on the uniforms of words (0, 1) and (2, 3)."""
    for i in range(out.size):
        w0, w1, w2, w3 = _words(i, seed_lo, seed_hi, step)
        u1 = _uniform_f64(w0, w1)
        u2 = _uniform_f64(w2, w3)
        out[i] = mean + std * (math.sqrt(-2.0 * math.log1p(-u1)) * math.cos(TWO_PI * u2))


@njit(**JIT)
def random_bernoulli(out, seed_lo, seed_hi, step, p):
    """out[i] = the float32 uniform u_i < p."""
    threshold = np.float32(p)
    for i in range(out.size):
        w0, _, _, _ = _words(i, seed_lo, seed_hi, step)
        out[i] = _uniform_f32(w0) < threshold
