"""Reductions over any set of axes: sum, prod, max, min, argmax, argmin, and the runtime size of axes.

mean, var, logsumexp, softmax and log_softmax are compositions of these (see
functional.py), so fusion sees their parts and autodiff needs no rules of its own.
"""

from __future__ import annotations

import numpy as np

from ..errors import DTypeError, ShapeError
from ..graph import dim_mul
from .base import REDUCE, SOURCE, register
from .checks import check_axes, check_bool


def _F():
    from .. import functional

    return functional


def reduced_shape(shape, axes, keepdims):
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _infer(dtypes=None, out_dtype=None):
    def infer(xs, attrs):
        x = xs[0]
        axes = check_axes(attrs["axes"], x.ndim)
        check_bool(attrs["keepdims"], "keepdims")
        if x.dtype == "bool":
            raise DTypeError("cannot reduce a bool tensor; cast it first")
        if dtypes and x.dtype not in dtypes:
            raise DTypeError(f"dtype {x.dtype} is not supported (accepted: {', '.join(dtypes)})")
        return reduced_shape(x.shape, axes, attrs["keepdims"]), out_dtype or x.dtype
    return infer


def _keep(node, g):
    """The gradient reshaped to the input's rank (reduced axes kept as size 1)."""
    F = _F()
    a = node.a
    if a["keepdims"]:
        return g
    x = node.inputs[0]
    return F.reshape(g, tuple(1 if i in a["axes"] else d for i, d in enumerate(x.shape)))


def _sum_grad(node, g, xs):
    return [_F().broadcast_to(_keep(node, g), xs[0].shape)]


def _prod_grad(node, g, xs):
    """d prod / d x_i is the product of the other entries.

    That is y / x_i away from zeros. With one zero in a reduced group only the
    zero's entry is non-zero (the product of the rest); with two or more all
    are zero. Zeros are replaced by 1 before dividing so that no branch, and
    no second derivative, ever sees 0/0.
    """
    from ..tensor import Tensor

    F = _F()
    x = xs[0]
    axes = node.a["axes"]
    is_zero = x == 0.0
    nonzero = F.where(is_zero, 1.0, x)
    zeros = F.sum(F.cast(is_zero, x.dtype), axis=axes, keepdims=True)
    y = _keep(node, Tensor(node))
    others_when_zero = F.where(zeros == 1.0, F.prod(nonzero, axis=axes, keepdims=True), 0.0)
    return [_keep(node, g) * F.where(is_zero, others_when_zero, y / nonzero)]


def _extreme_grad(node, g, xs):
    """The gradient of max/min goes to the positions that attain it, shared among ties."""
    from ..tensor import Tensor

    F = _F()
    x = xs[0]
    hit = F.cast(x == _keep(node, Tensor(node)), x.dtype)
    count = F.sum(hit, axis=node.a["axes"], keepdims=True)
    return [_keep(node, g) * hit / count]


def _axes(a):
    return tuple(a["axes"])


register("sum", REDUCE, _infer(("float32", "float64", "int32", "int64")),
         lambda xs, a, shape: np.sum(xs[0], axis=_axes(a), keepdims=a["keepdims"], dtype=xs[0].dtype),
         _sum_grad, "+")
register("prod", REDUCE, _infer(("float32", "float64", "int32", "int64")),
         lambda xs, a, shape: np.prod(xs[0], axis=_axes(a), keepdims=a["keepdims"], dtype=xs[0].dtype),
         _prod_grad, "*")
register("max", REDUCE, _infer(), lambda xs, a, shape: np.max(xs[0], axis=_axes(a), keepdims=a["keepdims"]),
         _extreme_grad, "max")
register("min", REDUCE, _infer(), lambda xs, a, shape: np.min(xs[0], axis=_axes(a), keepdims=a["keepdims"]),
         _extreme_grad, "min")


def _arg_infer(xs, attrs):
    x = xs[0]
    axes = check_axes(attrs["axes"], x.ndim)
    check_bool(attrs["keepdims"], "keepdims")
    if len(axes) != 1:
        raise ShapeError(f"argmax/argmin reduce exactly one axis, got {axes}")
    (ax,) = axes
    return reduced_shape(x.shape, (ax,), attrs["keepdims"]), "int64"


def _arg_ref(fn):
    def ref(xs, a, shape):
        (ax,) = a["axes"]
        return fn(xs[0], axis=ax, keepdims=a["keepdims"]).astype(np.int64)
    return ref


# No gradient: integer outputs carry none, so autodiff never asks.
register("argmax", REDUCE, _arg_infer, _arg_ref(np.argmax), None, "argmax")
register("argmin", REDUCE, _arg_infer, _arg_ref(np.argmin), None, "argmin")


def _size_infer(xs, attrs):
    check_axes(attrs["axes"], xs[0].ndim)
    if attrs["dtype"] not in ("int32", "int64", "float32", "float64"):
        raise DTypeError(f"size dtype must be numeric, got {attrs['dtype']!r}")
    return (), attrs["dtype"]


def _size_ref(xs, a, shape):
    shape = xs[0].shape
    return np.array(np.prod([shape[i] for i in a["axes"]], dtype=np.int64), dtype=a["dtype"])


# The number of elements along some axes, known only at run time when a dim is
# symbolic (the batch size a mean divides by). Depends on its input's shape only.
register("size", SOURCE, _size_infer, _size_ref, lambda node, g, xs: [None])


def static_size(shape, axes):
    """The element count along axes: an int, or a symbolic product."""
    return dim_mul(*(shape[i] for i in axes)) if axes else 1
