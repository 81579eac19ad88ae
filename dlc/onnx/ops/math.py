"""Elementwise ONNX ops: arithmetic, activations, comparisons, logic, Cast, Where, Clip."""

from __future__ import annotations

import functools

import numpy as np

import dlc.functional as F

from ...graph import dim_div, dim_mul
from ..importer import is_static
from ..narrow import FLOAT_FORMATS, round_to_e8m0, round_to_format
from ..reader import dtype_of, numpy_dtype_of
from . import onnx_op

# ----------------------------------------------------------------------------
# binary arithmetic (numpy broadcasting from opset 7 on)


def _shape_arith(op, a: np.ndarray, b: np.ndarray):
    """Mul/Div of shape values that hold symbolic dims (a flattened "B*4" product stays a dlc dim)."""
    a, b = np.broadcast_arrays(a, b)
    out = np.empty(a.shape, dtype=object)
    for idx in np.ndindex(a.shape):
        x, y = a[idx], b[idx]
        if op == "Mul":
            out[idx] = dim_mul(x, y)
        else:
            out[idx] = dim_div(x, y)
            if out[idx] is None:
                raise ValueError(f"cannot divide the dim {x} by {y}")
    return out


def _int_div(a, b):
    """ONNX integer Div truncates toward zero (C semantics)."""
    q = F.div(F.cast(a, "float64"), F.cast(b, "float64"))
    return F.cast(F.where(q < 0, -F.cast(F.cast(-q, "int64"), "float64"), q), a.dtype)


BINARY = {"Add": F.add, "Sub": F.sub, "Mul": F.mul, "Div": F.div}


def legacy_broadcast(n, a, b):
    """Before opset 7, broadcast=1 aligned b with a at `axis` (default: trailing dims, as numpy)."""
    if n.attr("broadcast", 0) and "axis" in n.attrs:
        axis = n.attrs["axis"] % a.ndim
        b = F.reshape(b, tuple(b.shape) + (1,) * (a.ndim - axis - b.ndim))
    return a, b


@onnx_op("Add", "Sub", "Mul", "Div", attrs=("broadcast", "axis"))
def binary_arith(n):
    a_v, b_v = n.inputs[0], n.inputs[1]
    if n.all_static() and (a_v.dtype == object or b_v.dtype == object):
        if n.op in ("Mul", "Div"):
            return _shape_arith(n.op, a_v, b_v)
        if n.op == "Add" and all(isinstance(x, (int, np.integer)) for x in np.asarray(b_v).flat) \
                and not np.any(np.asarray(b_v, dtype=object) != 0):
            return a_v
        raise n.unsupported("Add/Sub on a symbolic dim", "Mul and Div of symbolic dims")
    a, b = legacy_broadcast(n, n.tensor(0), n.tensor(1))
    floats = ("float32", "float64")
    if a.dtype != b.dtype and a.dtype in floats and b.dtype in floats and is_static(a_v) != is_static(b_v):
        # a constant of another float width (old exporters wrote double constants): it takes the tensor's type
        a, b = (F.cast(a, b.dtype), b) if is_static(a_v) else (a, F.cast(b, a.dtype))
    if n.op == "Div" and a.dtype in ("int32", "int64"):
        return _int_div(a, b)
    return BINARY[n.op](a, b)


@onnx_op("Pow", attrs=("broadcast", "axis"))
def pow_(n):
    a, b = legacy_broadcast(n, n.tensor(0), n.tensor(1))
    if a.dtype in ("int32", "int64"):
        y = F.pow(F.cast(a, "float64"), F.cast(b, "float64"))
        return F.cast(F.where(y < 0, y - 0.5, y + 0.5), a.dtype)   # round: the float pow is exact up to rounding
    return F.pow(a, F.cast(b, a.dtype))


@onnx_op("Mod", attrs=("fmod",))
def mod(n):
    a, b = n.tensor(0), n.tensor(1)
    fa, fb = F.cast(a, "float64"), F.cast(b, "float64")
    q = fa / fb
    if n.attr("fmod", 0):
        trunc = F.sign(q) * _floor(F.abs(q))
        r = fa - trunc * fb
    else:
        # Python's (numpy's) mod: the result takes the divisor's sign, zero included; a finite x modulo an
        # infinite y is x when their signs agree, else y; an infinite x or a zero y gives NaN
        r = fa - _floor(q) * fb
        zero = F.abs(r)
        r = F.where(r == 0.0, F.where(fb < 0.0, -zero, zero), r)
        same_sign = (fa == 0.0) | ((fa < 0.0) == (fb < 0.0))
        r = F.where((F.abs(fb) == np.inf) & (F.abs(fa) < np.inf), F.where(same_sign, fa, fb), r)
        r = F.where((F.abs(fa) == np.inf) | (fb == 0.0), np.nan, r)   # the int64 floor would not give NaN
    return F.cast(r, a.dtype)


def _floor(x):
    """floor(x) for float64 x: through int64 (exact for |x| < 2**53)."""
    t = F.cast(F.cast(x, "int64"), x.dtype)
    return F.where(t > x, t - 1.0, t)


@onnx_op("Floor")
def floor(n):
    x = n.tensor(0)
    return F.cast(_floor(F.cast(x, "float64")), x.dtype)


@onnx_op("Ceil")
def ceil(n):
    x = n.tensor(0)
    return F.cast(-_floor(-F.cast(x, "float64")), x.dtype)


def _variadic(fn, n):
    xs = n.tensors()
    return functools.reduce(fn, xs)


@onnx_op("Sum")
def sum_(n):
    return _variadic(F.add, n)


@onnx_op("Mean")
def mean(n):
    xs = n.tensors()
    return functools.reduce(F.add, xs) / float(len(xs))


@onnx_op("Max")
def max_(n):
    return _variadic(F.maximum, n)


@onnx_op("Min")
def min_(n):
    return _variadic(F.minimum, n)


# ----------------------------------------------------------------------------
# unary


UNARY = {"Sqrt": F.sqrt, "Exp": F.exp, "Log": F.log, "Abs": F.abs, "Neg": F.neg, "Tanh": F.tanh,
         "Sigmoid": F.sigmoid, "Relu": F.relu, "Erf": F.erf, "Sin": F.sin, "Cos": F.cos, "Sign": F.sign,
         "Softplus": F.softplus, "Identity": lambda x: x}


@onnx_op(*UNARY)
def unary(n):
    x = n.inputs[0]
    if n.op == "Identity" and x is not None and not hasattr(x, "node"):
        return x   # a static value stays static (shape arithmetic passes through Identity)
    return UNARY[n.op](n.tensor(0))


@onnx_op("Reciprocal")
def reciprocal(n):
    return 1.0 / n.tensor(0)


@onnx_op("Tan")
def tan(n):
    x = n.tensor(0)
    return F.sin(x) / F.cos(x)


@onnx_op("LeakyRelu", attrs=("alpha",))
def leaky_relu(n):
    return F.leaky_relu(n.tensor(0), n.attr("alpha", 0.01))


@onnx_op("Elu", attrs=("alpha",))
def elu(n):
    return F.elu(n.tensor(0), n.attr("alpha", 1.0))


@onnx_op("Celu", attrs=("alpha",))
def celu(n):
    x, alpha = n.tensor(0), n.attr("alpha", 1.0)
    return F.maximum(x, 0.0) + F.minimum(alpha * (F.exp(x / alpha) - 1.0), 0.0)


@onnx_op("Selu", attrs=("alpha", "gamma"))
def selu(n):
    x = n.tensor(0)
    alpha, gamma = n.attr("alpha", 1.67326319217681884765625), n.attr("gamma", 1.05070102214813232421875)
    return gamma * F.where(x > 0.0, x, alpha * (F.exp(F.minimum(x, 0.0)) - 1.0))


@onnx_op("PRelu")
def prelu(n):
    x, slope = n.tensor(0), n.tensor(1)
    if slope.ndim == 1 and x.ndim > 2 and slope.shape[0] == x.shape[1] and slope.shape[0] != x.shape[-1]:
        slope = F.reshape(slope, (slope.shape[0],) + (1,) * (x.ndim - 2))   # per channel (PyTorch's export)
    return F.where(x < 0.0, x * slope, x)


@onnx_op("ThresholdedRelu", attrs=("alpha",))
def thresholded_relu(n):
    x = n.tensor(0)
    return F.where(x > n.attr("alpha", 1.0), x, 0.0)


@onnx_op("HardSigmoid", attrs=("alpha", "beta"))
def hard_sigmoid(n):
    x = n.tensor(0)
    return F.clip(x * n.attr("alpha", 0.2) + n.attr("beta", 0.5), 0.0, 1.0)


@onnx_op("HardSwish")
def hard_swish(n):
    x = n.tensor(0)
    return x * F.clip(x * (1.0 / 6.0) + 0.5, 0.0, 1.0)


@onnx_op("Softsign")
def softsign(n):
    x = n.tensor(0)
    return x / (1.0 + F.abs(x))


@onnx_op("Mish")
def mish(n):
    x = n.tensor(0)
    return x * F.tanh(F.softplus(x))


@onnx_op("Gelu", attrs=("approximate",))
def gelu(n):
    approximate = n.attr("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise n.unsupported(f"approximate={approximate!r}", "'none', 'tanh'")
    return F.gelu(n.tensor(0), approximate=approximate)


@onnx_op("Clip", attrs=("min", "max"))
def clip(n):
    x = n.tensor(0)
    if n.opset < 11:
        lo, hi = n.attr("min", None), n.attr("max", None)
    else:
        lo = n.tensor(1) if n.has(1) else None
        hi = n.tensor(2) if n.has(2) else None
    if lo is not None:
        x = F.maximum(x, F.cast(lo, x.dtype) if hasattr(lo, "node") else lo)
    if hi is not None:
        x = F.minimum(x, F.cast(hi, x.dtype) if hasattr(hi, "node") else hi)
    return x


@onnx_op("IsNaN")
def isnan(n):
    x = n.tensor(0)
    return F.not_equal(x, x)


@onnx_op("IsInf", attrs=("detect_negative", "detect_positive"))
def isinf(n):
    x = n.tensor(0)
    pos = F.equal(x, float("inf")) if n.attr("detect_positive", 1) else F.constant(False)
    neg = F.equal(x, float("-inf")) if n.attr("detect_negative", 1) else F.constant(False)
    return F.logical_or(F.broadcast_to(pos, x.shape), F.broadcast_to(neg, x.shape))


# ----------------------------------------------------------------------------
# comparisons and logic


COMPARE = {"Equal": F.equal, "Greater": F.greater, "Less": F.less, "GreaterOrEqual": F.greater_equal,
           "LessOrEqual": F.less_equal}


@onnx_op(*COMPARE)
def compare(n):
    if n.all_static() and any(v.dtype == object for v in n.inputs):
        a, b = np.broadcast_arrays(*n.inputs)
        if n.op != "Equal":
            raise n.unsupported("ordering symbolic dims", "Equal")
        return np.vectorize(lambda x, y: x == y, otypes=[bool])(a, b)
    a, b = n.tensor(0), n.tensor(1)
    return COMPARE[n.op](a, b)


@onnx_op("Not")
def not_(n):
    return F.logical_not(n.tensor(0))


@onnx_op("And", "Or", "Xor")
def logic(n):
    a, b = n.tensor(0), n.tensor(1)
    if n.op == "And":
        return F.logical_and(a, b)
    if n.op == "Or":
        return F.logical_or(a, b)
    return F.not_equal(a, b)


@onnx_op("Where")
def where(n):
    if n.all_static() and any(v.dtype == object for v in n.inputs):
        return np.where(*n.inputs)
    return F.where(n.tensor(0), n.tensor(1), n.tensor(2))


@onnx_op("Cast", attrs=("to", "saturate", "round_mode"))
def cast(n):
    to = n.attr("to")
    dtype = dtype_of(to, f"Cast node {n.name!r} target")
    n.set_elem_type(0, to)
    x = n.inputs[0]
    if hasattr(x, "dtype") and x.dtype == object:   # shape values stay symbolic through int casts
        if dtype in ("int64", "int32"):
            return x
    return cast_to(n, n.tensor(0), to)


@onnx_op("CastLike", attrs=("saturate", "round_mode"))
def cast_like(n):
    code = n.elem_type(1)
    if code is None:
        return F.cast(n.tensor(0), n.tensor(1).dtype)
    n.set_elem_type(0, code)
    return cast_to(n, n.tensor(0), code)


def cast_to(n, x, code: int):
    """x cast to the ONNX element type `code`, in the dlc dtype that type computes in: a narrow float type's
    values are rounded to it here (RNE; saturating as the node's `saturate` says), so later ops see exactly the
    values the narrow type holds; narrow integers wrap at the call's boundary."""
    name = numpy_dtype_of(code, f"Cast node {n.name!r} target")
    if name in FLOAT_FORMATS:
        return round_to_format(x, FLOAT_FORMATS[name], bool(n.attr("saturate", 1)))
    if name == "float8_e8m0fnu":
        mode = n.attr("round_mode", "up")
        if mode not in ("up", "down", "nearest"):
            raise n.invalid(f"round_mode {mode!r} is not one of 'up', 'down', 'nearest'")
        return round_to_e8m0(x, bool(n.attr("saturate", 1)), mode)
    return F.cast(x, dtype_of(code, f"Cast node {n.name!r} target"))
