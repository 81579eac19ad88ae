"""Vectorizable scalar math for generated CPU kernels: float32 approximations and NaN-aware helpers.

numba lowers math.tanh/exp/erf on float32 to scalar libm calls (~28 ns each); the
rational and polynomial forms below (after Eigen and Cephes) compile to a few
fused multiply-adds that LLVM vectorizes. The CPU backend imports this file as
the module `dlc_cpu_fastmath` (numba caches it on disk like any module) and
every generated module imports its functions from there.
"""

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


@intrinsic
def _i32_as_f32(typingctx, bits):
    """Reinterpret the bits of an int32 as a float32 (no conversion)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@njit(cache=True, error_model="numpy", inline="always")
def tanh_f32(x):
    """Eigen's rational minimax tanh on [-9, 9]: within a few ulp of float64."""
    c = min(max(x, np.float32(-9.0)), np.float32(9.0))
    x2 = c * c
    p = x2 * np.float32(-2.76076847742355e-16) + np.float32(2.00018790482477e-13)
    p = x2 * p + np.float32(-8.60467152213735e-11)
    p = x2 * p + np.float32(5.12229709037114e-08)
    p = x2 * p + np.float32(1.48572235717979e-05)
    p = x2 * p + np.float32(6.37261928875436e-04)
    p = x2 * p + np.float32(4.89352455891786e-03)
    p = c * p
    q = x2 * np.float32(1.19825839466702e-06) + np.float32(1.18534705686654e-04)
    q = x2 * q + np.float32(2.26843463243900e-03)
    q = x2 * q + np.float32(4.89352518554385e-03)
    r = p / q
    return r if x == x else x


@njit(cache=True, error_model="numpy", inline="always")
def erf_f32(x):
    """Eigen's rational erf on [-4, 4] (erf is 1 to float32 beyond): within 5e-7 of float64's erf."""
    c = min(max(x, np.float32(-4.0)), np.float32(4.0))
    x2 = c * c
    p = x2 * np.float32(-2.72614225801306e-10) + np.float32(2.77068142495902e-08)
    p = x2 * p + np.float32(-2.10102402082508e-06)
    p = x2 * p + np.float32(-5.69250639462346e-05)
    p = x2 * p + np.float32(-7.34990630326855e-04)
    p = x2 * p + np.float32(-2.95459980854025e-03)
    p = x2 * p + np.float32(-1.60960333262415e-02)
    p = c * p
    q = x2 * np.float32(-1.45660718464996e-05) + np.float32(-2.13374055278905e-04)
    q = x2 * q + np.float32(-1.68282697438203e-03)
    q = x2 * q + np.float32(-7.37332916720468e-03)
    q = x2 * q + np.float32(-1.42647390514189e-02)
    r = p / q
    return r if x == x else x


@njit(cache=True, error_model="numpy", inline="always")
def exp_f32(x):
    """Cephes expf: x = n ln2 + r, a degree-6 polynomial in r, 2^n built from its exponent bits."""
    c = min(max(x, np.float32(-87.33654)), np.float32(88.72283))
    # n = floor(z) without a libm call: truncate, then step down where truncation rounded up. n stops at 127,
    # float32's largest exponent: above 88.376 r grows past ln2 / 2 instead (to 0.69: within 6 ulp there, 1 below)
    z = min(c, np.float32(88.37626)) * np.float32(1.44269504088896341) + np.float32(0.5)
    n = np.float32(np.int32(z))
    n = n - np.float32(1.0) if n > z else n
    r = c - n * np.float32(0.693359375)
    r = r - n * np.float32(-2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    y = p * r * r + r + np.float32(1.0)
    y = y * _i32_as_f32((np.int32(n) + np.int32(127)) << np.int32(23))
    y = y if x <= np.float32(88.72283) else np.float32(np.inf)
    y = y if x >= np.float32(-87.33654) else np.float32(0.0)  # flush what would be subnormal
    return y if x == x else x


@njit(cache=True, error_model="numpy", inline="always")
def sigmoid_f32(x):
    return np.float32(1.0) / (np.float32(1.0) + exp_f32(-x))


@njit(cache=True, error_model="numpy", inline="always")
def sigmoid_f64(x):
    # exp of a non-positive number only: no overflow at either end
    e = math.exp(-abs(x))
    return 1.0 / (1.0 + e) if x >= 0 else e / (1.0 + e)


@njit(cache=True, error_model="numpy", inline="always")
def softplus_f32(x):
    return max(x, np.float32(0.0)) + np.float32(math.log1p(exp_f32(-abs(x))))


@njit(cache=True, error_model="numpy", inline="always")
def softplus_f64(x):
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


# (simple selects, no `or`: short-circuit branches stop LLVM from vectorizing the loop)
@njit(cache=True, error_model="numpy", inline="always")
def fmax(a, b):
    """numpy.maximum: NaN if either operand is NaN."""
    m = a if a > b else b
    return m if a == a else a


@njit(cache=True, error_model="numpy", inline="always")
def fmin(a, b):
    """numpy.minimum: NaN if either operand is NaN."""
    m = a if a < b else b
    return m if a == a else a


@njit(cache=True, error_model="numpy", inline="always")
def fsign(a):
    """numpy.sign: -1, 0 or 1 in a's type; NaN stays NaN."""
    return a if a != a else (a > 0) - (a < 0)


@njit(cache=True, error_model="numpy", inline="always")
def select(c, a, b):
    return a if c else b


@njit(cache=True, error_model="numpy", inline="always")
def floordiv(a, b):
    """numpy.floor_divide on integers: 0 where the divisor is 0."""
    return a // b if b != 0 else a - a


@njit(cache=True, error_model="numpy", inline="always")
def and_(a, b):
    return a & b


@njit(cache=True, error_model="numpy", inline="always")
def or_(a, b):
    return a | b


@njit(cache=True, error_model="numpy", inline="always")
def not_(a):
    return not a


@njit(cache=True, error_model="numpy", inline="always")
def pow_(a, b):
    return a ** b
