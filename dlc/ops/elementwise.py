"""Elementwise ops: unary math, binary arithmetic with broadcasting, comparisons, where, cast."""

from __future__ import annotations

import math

import numpy as np

from ..errors import DTypeError, ShapeError
from ..graph import DTYPES, is_float, shape_str
from .base import ELEMENTWISE, facts, register, same_range_as_input
from .checks import check_float


def _F():
    from .. import functional

    return functional


def _erf(x):
    # imported when first needed: only the numpy evaluation of erf uses it, and it adds 0.1-0.2 s to import dlc
    from scipy import special

    return special.erf(x)


def broadcast_shapes(*shapes):
    """numpy broadcasting over dims that may be symbolic (a symbol only matches itself or 1)."""
    ndim = max(len(s) for s in shapes)
    out = []
    for axis in range(ndim):
        dims = [s[axis - ndim + len(s)] for s in shapes if axis - ndim + len(s) >= 0]
        d = 1
        for x in dims:
            if x == 1:
                continue
            if d == 1:
                d = x
            elif x != d:
                raise ShapeError("shapes " + " and ".join(shape_str(s) for s in shapes) +
                                 f" do not broadcast (dim {axis - ndim}: {d} vs {x})")
        out.append(d)
    return tuple(out)


def _same_dtype(xs, allow=DTYPES):
    dtypes = {x.dtype for x in xs}
    if len(dtypes) > 1:
        raise DTypeError("operands have different dtypes " + " and ".join(x.dtype for x in xs) +
                         "; cast one with dlc.cast")
    dtype = xs[0].dtype
    if dtype not in allow:
        raise DTypeError(f"dtype {dtype} is not supported here (accepted: {', '.join(allow)})")
    return dtype


def unbroadcast(g, shape):
    """Sum a gradient over the axes along which its operand was broadcast."""
    F = _F()
    if tuple(g.shape) == tuple(shape):
        return g
    lead = len(g.shape) - len(shape)
    axes = list(range(lead))
    for i, d in enumerate(shape):
        if d == 1 and g.shape[lead + i] != 1:
            axes.append(lead + i)
    if axes:
        g = F.sum(g, axis=tuple(axes), keepdims=True)
    return F.reshape(g, shape)


# ----------------------------------------------------------------------------
# unary


FLOATS = ("float32", "float64")
NUMERIC = ("float32", "float64", "int32", "int64")


def _unary(name, ref, grad, scalar, dtypes=FLOATS, doc=""):
    def infer(xs, attrs):
        dtype = _same_dtype(xs, dtypes)
        if "alpha" in attrs or "{alpha}" in scalar:  # leaky_relu, elu
            check_float(attrs["alpha"], "alpha")
        return xs[0].shape, dtype

    register(name, ELEMENTWISE, infer, ref, grad, scalar, doc)


def _g(fn):
    """Grad rule of a unary op from fn(x, y, g) -> dx, with F bound lazily."""
    def rule(node, g, xs):
        from ..tensor import Tensor

        return [fn(_F(), xs[0], Tensor(node), g, node.a)]
    return rule


SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _gelu_tanh_ref(x, a, shape):
    x3 = x * x * x
    return (0.5 * x * (1.0 + np.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x3)))).astype(x.dtype)


def _gelu_tanh_grad(F, x, y, g, a):
    inner = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)
    t = F.tanh(inner)
    dinner = SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x)
    return g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dinner)


def _gelu_erf_ref(x, a, shape):
    return (0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))).astype(x.dtype)


def _gelu_erf_grad(F, x, y, g, a):
    cdf = 0.5 * (1.0 + F.erf(x * (1.0 / math.sqrt(2.0))))
    pdf = F.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))
    return g * (cdf + x * pdf)


def _sigmoid_ref(x, a, shape):
    # exp of a non-positive number only: stable at both ends
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)


def _softplus_ref(x, a, shape):
    return (np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))).astype(x.dtype)


def _elu_ref(x, a, shape):
    return np.where(x > 0, x, a["alpha"] * np.expm1(np.minimum(x, 0))).astype(x.dtype)


_unary("neg", lambda xs, a, shape: -xs[0], _g(lambda F, x, y, g, a: -g), "-{0}", dtypes=NUMERIC)
_unary("abs", lambda xs, a, shape: np.abs(xs[0]), _g(lambda F, x, y, g, a: g * F.sign(x)), "abs({0})",
       dtypes=NUMERIC)
_unary("sign", lambda xs, a, shape: np.sign(xs[0]), _g(lambda F, x, y, g, a: g * 0.0), "sign({0})")
_unary("exp", lambda xs, a, shape: np.exp(xs[0]), _g(lambda F, x, y, g, a: g * y), "exp({0})")
_unary("log", lambda xs, a, shape: np.log(xs[0]), _g(lambda F, x, y, g, a: g / x), "log({0})")
_unary("sqrt", lambda xs, a, shape: np.sqrt(xs[0]), _g(lambda F, x, y, g, a: g * 0.5 / y), "sqrt({0})")
_unary("rsqrt", lambda xs, a, shape: (1 / np.sqrt(xs[0])).astype(xs[0].dtype),
       _g(lambda F, x, y, g, a: g * -0.5 * y / x), "1 / sqrt({0})")
_unary("square", lambda xs, a, shape: xs[0] * xs[0], _g(lambda F, x, y, g, a: g * 2.0 * x), "{0} * {0}",
       dtypes=NUMERIC)
_unary("tanh", lambda xs, a, shape: np.tanh(xs[0]), _g(lambda F, x, y, g, a: g * (1.0 - y * y)), "tanh({0})")
_unary("sigmoid", lambda xs, a, shape: _sigmoid_ref(xs[0], a, shape),
       _g(lambda F, x, y, g, a: g * y * (1.0 - y)), "sigmoid({0})")
_unary("relu", lambda xs, a, shape: np.maximum(xs[0], 0).astype(xs[0].dtype),
       _g(lambda F, x, y, g, a: F.where(x > 0, g, 0.0)), "max({0}, 0)")
_unary("leaky_relu", lambda xs, a, shape: np.where(xs[0] > 0, xs[0], a["alpha"] * xs[0]).astype(xs[0].dtype),
       _g(lambda F, x, y, g, a: F.where(x > 0, g, g * a["alpha"])), "select({0} > 0, {0}, {alpha} * {0})")
_unary("elu", lambda xs, a, shape: _elu_ref(xs[0], a, shape),
       _g(lambda F, x, y, g, a: F.where(x > 0, g, g * (y + a["alpha"]))),
       "select({0} > 0, {0}, {alpha} * (exp({0}) - 1))")
_unary("gelu_tanh", lambda xs, a, shape: _gelu_tanh_ref(xs[0], a, shape), _g(_gelu_tanh_grad),
       "0.5 * {0} * (1 + tanh(0.7978845608028654 * ({0} + 0.044715 * {0} * {0} * {0})))")
_unary("gelu_erf", lambda xs, a, shape: _gelu_erf_ref(xs[0], a, shape), _g(_gelu_erf_grad),
       "0.5 * {0} * (1 + erf({0} * 0.7071067811865476))")
_unary("erf", lambda xs, a, shape: _erf(xs[0]).astype(xs[0].dtype),
       _g(lambda F, x, y, g, a: g * (2.0 / math.sqrt(math.pi)) * F.exp(-x * x)), "erf({0})")
_unary("softplus", lambda xs, a, shape: _softplus_ref(xs[0], a, shape),
       _g(lambda F, x, y, g, a: g * F.sigmoid(x)), "softplus({0})")
_unary("sin", lambda xs, a, shape: np.sin(xs[0]), _g(lambda F, x, y, g, a: g * F.cos(x)), "sin({0})")
_unary("cos", lambda xs, a, shape: np.cos(xs[0]), _g(lambda F, x, y, g, a: -g * F.sin(x)), "cos({0})")
# Identity whose gradient is zero: the max subtracted inside softmax and logsumexp.
_unary("stop_gradient", lambda xs, a, shape: xs[0], lambda node, g, xs: [None], "{0}", dtypes=DTYPES)


def _logical_not_infer(xs, attrs):
    if xs[0].dtype != "bool":
        raise DTypeError(f"logical_not needs bool, got {xs[0].dtype}")
    return xs[0].shape, "bool"


register("logical_not", ELEMENTWISE, _logical_not_infer, lambda xs, a, shape: ~xs[0], None, "not_({0})")


# ----------------------------------------------------------------------------
# clip and cast


def _clip_infer(xs, attrs):
    lo, hi = check_float(attrs["lo"], "clip lo", finite=False), check_float(attrs["hi"], "clip hi", finite=False)
    if not lo <= hi:
        raise ShapeError(f"clip needs lo <= hi, got lo={attrs['lo']!r}, hi={attrs['hi']!r}")
    return xs[0].shape, _same_dtype(xs, ("float32", "float64", "int32", "int64"))


def _clip_grad(node, g, xs):
    F = _F()
    a = node.a
    return [F.where((xs[0] >= a["lo"]) & (xs[0] <= a["hi"]), g, 0.0)]


register("clip", ELEMENTWISE, _clip_infer,
         lambda xs, a, shape: np.clip(xs[0], a["lo"], a["hi"]).astype(xs[0].dtype), _clip_grad,
         "min(max({0}, {lo}), {hi})")


def _cast_infer(xs, attrs):
    if attrs["dtype"] not in DTYPES:
        raise DTypeError(f"cast to {attrs['dtype']!r}: the dtypes are {', '.join(DTYPES)}")
    return xs[0].shape, attrs["dtype"]


def _cast_grad(node, g, xs):
    if not is_float(xs[0].dtype):
        return [None]
    return [_F().cast(g, xs[0].dtype)]


register("cast", ELEMENTWISE, _cast_infer, lambda xs, a, shape: xs[0].astype(a["dtype"]), _cast_grad,
         "cast({0})")


# ----------------------------------------------------------------------------
# binary


def _binary_infer(allow=DTYPES, out_dtype=None):
    def infer(xs, attrs):
        dtype = _same_dtype(xs, allow)
        return broadcast_shapes(*(x.shape for x in xs)), out_dtype or dtype
    return infer


def _b(fa, fb):
    """Grad rule of a binary op: fa/fb(F, a, b, y, g) -> the gradient before unbroadcasting."""
    def rule(node, g, xs):
        from ..tensor import Tensor

        F, y = _F(), Tensor(node)
        a, b = xs
        da = unbroadcast(fa(F, a, b, y, g), a.shape) if fa else None
        db = unbroadcast(fb(F, a, b, y, g), b.shape) if fb else None
        return [da, db]
    return rule



def _div_ref(xs, a, shape):
    x, y = xs
    if np.issubdtype(x.dtype, np.integer):
        return np.floor_divide(x, y)
    return x / y


def _pow_grad_b(F, a, b, y, g):
    # d(a^b)/db = a^b log a, taken as 0 where a <= 0 (b's gradient is undefined there)
    safe = F.where(a > 0, a, 1.0)
    return g * y * F.log(safe)


register("add", ELEMENTWISE, _binary_infer(NUMERIC), lambda xs, a, shape: xs[0] + xs[1],
         _b(lambda F, a, b, y, g: g, lambda F, a, b, y, g: g), "{0} + {1}")
register("sub", ELEMENTWISE, _binary_infer(NUMERIC), lambda xs, a, shape: xs[0] - xs[1],
         _b(lambda F, a, b, y, g: g, lambda F, a, b, y, g: -g), "{0} - {1}")
register("mul", ELEMENTWISE, _binary_infer(NUMERIC), lambda xs, a, shape: xs[0] * xs[1],
         _b(lambda F, a, b, y, g: g * b, lambda F, a, b, y, g: g * a), "{0} * {1}")
register("div", ELEMENTWISE, _binary_infer(NUMERIC), _div_ref,
         _b(lambda F, a, b, y, g: g / b, lambda F, a, b, y, g: -g * y / b), "{0} / {1}")
register("pow", ELEMENTWISE, _binary_infer(("float32", "float64")), lambda xs, a, shape: np.power(xs[0], xs[1]),
         _b(lambda F, a, b, y, g: g * b * F.pow(a, b - 1.0), _pow_grad_b), "pow({0}, {1})")
register("maximum", ELEMENTWISE, _binary_infer(NUMERIC), lambda xs, a, shape: np.maximum(xs[0], xs[1]),
         _b(lambda F, a, b, y, g: F.where(a >= b, g, 0.0), lambda F, a, b, y, g: F.where(a >= b, 0.0, g)),
         "max({0}, {1})")
register("minimum", ELEMENTWISE, _binary_infer(NUMERIC), lambda xs, a, shape: np.minimum(xs[0], xs[1]),
         _b(lambda F, a, b, y, g: F.where(a <= b, g, 0.0), lambda F, a, b, y, g: F.where(a <= b, 0.0, g)),
         "min({0}, {1})")

for _name, _np, _sym in [("eq", np.equal, "=="), ("ne", np.not_equal, "!="), ("lt", np.less, "<"),
                         ("le", np.less_equal, "<="), ("gt", np.greater, ">"), ("ge", np.greater_equal, ">=")]:
    register(_name, ELEMENTWISE, _binary_infer(DTYPES, "bool"),
             (lambda f: lambda xs, a, shape: f(xs[0], xs[1]))(_np), None, "{0} " + _sym + " {1}")

register("logical_and", ELEMENTWISE, _binary_infer(("bool",)), lambda xs, a, shape: xs[0] & xs[1], None,
         "and_({0}, {1})")
register("logical_or", ELEMENTWISE, _binary_infer(("bool",)), lambda xs, a, shape: xs[0] | xs[1], None,
         "or_({0}, {1})")


def _where_infer(xs, attrs):
    c, a, b = xs
    if c.dtype != "bool":
        raise DTypeError(f"where's condition must be bool, got {c.dtype}")
    dtype = _same_dtype([a, b])
    return broadcast_shapes(c.shape, a.shape, b.shape), dtype


def _where_grad(node, g, xs):
    F = _F()
    c, a, b = xs
    return [None, unbroadcast(F.where(c, g, 0.0), a.shape), unbroadcast(F.where(c, 0.0, g), b.shape)]


register("where", ELEMENTWISE, _where_infer, lambda xs, a, shape: np.where(xs[0], xs[1], xs[2]), _where_grad,
         "select({0}, {1}, {2})")


# What the optimizer may assume (OpDef.cheap, OpDef.value_range).
facts("add sub mul div neg abs sign square relu leaky_relu maximum minimum clip where cast stop_gradient "
      "eq ne lt le gt ge logical_and logical_or logical_not", cheap=True)
facts("exp sqrt relu abs square softplus", value_range=(0.0, math.inf))
facts("sigmoid", value_range=(0.0, 1.0))
facts("tanh", value_range=(-1.0, 1.0))
facts("clip", value_range=lambda node, range_of: (float(node.attr("lo")), float(node.attr("hi"))))
facts("stop_gradient", value_range=same_range_as_input)
