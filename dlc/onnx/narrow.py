"""Values of the narrow float types (float16, bfloat16, float8, float4) computed in float32/float64.

dlc has no such dtypes; a value of one is held exactly in float32. Rounding a
float to the nearest value of the type (ties to even, with the type's
overflow rule) is written with dlc ops in float64, where each step is exact,
so it runs on every target and matches onnx's reference (ml_dtypes) bit for
bit.
"""

from __future__ import annotations

import dataclasses

import numpy as np

import dlc.functional as F


@dataclasses.dataclass(frozen=True)
class FloatFormat:
    mantissa: int        # explicit mantissa bits
    min_exponent: int    # exponent of the smallest normal value
    max: float
    saturates: str       # when an overflow gives +-max: "never" (IEEE: +-inf), "if asked" (float8), "always"
    has_inf: bool        # else an overflow that does not saturate is NaN
    signed_zero: bool


FLOAT_FORMATS = {
    "float16": FloatFormat(10, -14, 65504.0, "never", True, True),
    "bfloat16": FloatFormat(7, -126, (2 - 2**-7) * 2.0**127, "never", True, True),
    "float8_e4m3fn": FloatFormat(3, -6, 448.0, "if asked", False, True),
    "float8_e4m3fnuz": FloatFormat(3, -7, 240.0, "if asked", False, False),
    "float8_e5m2": FloatFormat(2, -14, 57344.0, "if asked", True, True),
    "float8_e5m2fnuz": FloatFormat(2, -15, 57344.0, "if asked", False, False),
    "float4_e2m1fn": FloatFormat(1, 0, 6.0, "always", False, True),   # no NaN: one stays NaN to the boundary
}


def _floor64(x):
    """floor of a float64 tensor through int64 (exact for |x| < 2**63)."""
    t = F.cast(F.cast(x, "int64"), "float64")
    return F.where(t > x, t - 1.0, t)


def _exponent(a):
    """floor(log2(a)) for finite a > 0 (float64), exact: log's estimate corrected against powers of two."""
    e = _floor64(F.log(a) * (1 / np.log(2)))
    p = F.pow(2.0, e)
    return F.where(p > a, e - 1.0, F.where(p * 2.0 <= a, e + 1.0, e))


def _round_half_even(y):
    """y >= 0 (float64, below 2**62) rounded to an integer, ties to even."""
    t = F.cast(F.cast(y, "int64"), "float64")
    r = y - t
    half = t * 0.5
    odd = F.cast(F.cast(half, "int64"), "float64") != half
    return F.where((r > 0.5) | ((r == 0.5) & odd), t + 1.0, t)


def round_to_format(x, fmt: FloatFormat, saturate: bool):
    """x rounded to the nearest value of a narrow float format (ties to even), as float32."""
    xf = F.cast(x, "float64")
    a = F.abs(xf)
    finite = (a > 0.0) & (a < np.inf)
    safe = F.where(finite, a, 1.0)
    e = F.maximum(_exponent(safe), float(fmt.min_exponent))   # below the smallest normal: the subnormal step
    ulp = F.pow(2.0, e - float(fmt.mantissa))
    q = _round_half_even(safe / ulp) * ulp
    clamp = fmt.saturates == "always" or fmt.saturates == "if asked" and saturate
    overflow = fmt.max if clamp else np.inf if fmt.has_inf else np.nan   # for an infinite x too
    q = F.where((a == np.inf) | (q > fmt.max), overflow, q)
    q = F.where(xf < 0.0, -q, q)
    q = F.where(a == 0.0, xf if fmt.signed_zero else 0.0, q)
    return F.cast(F.where(xf != xf, xf, q), "float32")


def round_to_e8m0(x, saturate: bool, mode: str):
    """x as float8_e8m0 (a power of two 2**e, e in [-127, 127]) held in float32, as onnx's reference converts it:
    the sign is dropped, and rounding works on the float32 exponent and fraction fields (a float32 subnormal has
    exponent -127 and fraction a / 2**-126)."""
    xf = F.cast(F.cast(x, "float32"), "float64")
    a = F.abs(xf)
    normal = (a >= 2.0**-126) & (a < np.inf)
    e = F.where(normal, _exponent(F.where(normal, a, 1.0)), -127.0)
    fraction = F.where(normal, a / F.pow(2.0, e) - 1.0, a * 2.0**126)
    if mode == "up":
        e = F.where(fraction > 0.0, e + 1.0, e)
    elif mode == "nearest":
        e = F.where((fraction > 0.5) | (normal & (fraction == 0.5)), e + 1.0, e)
    if saturate:
        e = F.minimum(e, 127.0)
    out = F.where(e > 127.0, np.nan, F.pow(2.0, e))
    return F.cast(F.where((a == np.inf) | (xf != xf), np.nan, out), "float32")
