"""ONNX reductions (Reduce*, ArgMax/ArgMin) and the softmax family (Softmax, LogSoftmax, Hardmax)."""

from __future__ import annotations

import numpy as np

import dlc.functional as F

from ...graph import dim_mul
from . import onnx_op

# the opset from which each reduction takes its axes as an input instead of an attribute
AXES_INPUT_FROM = {"ReduceSum": 13}


def _reduce_axes(n, ndim):
    """The reduced axes, or None for all; an empty axes input with noop_with_empty_axes means no reduction."""
    if n.opset < AXES_INPUT_FROM.get(n.op, 18):
        axes = n.attr("axes", None)
    else:
        axes = n.ints(1) if n.has(1) else None
    if axes is not None and len(axes) == 0:
        axes = None
    if axes is None:
        return "noop" if n.attr("noop_with_empty_axes", 0) else tuple(range(ndim))
    return tuple(sorted({a % ndim if -ndim <= a < ndim else _bad(n, a, ndim) for a in axes}))


def _bad(n, a, ndim):
    raise n.invalid(f"axis {a} is out of range for rank {ndim}")


REDUCERS = {
    "ReduceSum": lambda x, ax, k: F.sum(x, ax, k),
    "ReduceMean": lambda x, ax, k: F.mean(x, ax, k),
    "ReduceMax": lambda x, ax, k: F.max(x, ax, k),
    "ReduceMin": lambda x, ax, k: F.min(x, ax, k),
    "ReduceProd": lambda x, ax, k: F.prod(x, ax, k),
    "ReduceL1": lambda x, ax, k: F.sum(F.abs(x), ax, k),
    "ReduceL2": lambda x, ax, k: F.sqrt(F.sum(F.square(x), ax, k)),
    "ReduceSumSquare": lambda x, ax, k: F.sum(F.square(x), ax, k),
    "ReduceLogSum": lambda x, ax, k: F.log(F.sum(x, ax, k)),
    "ReduceLogSumExp": lambda x, ax, k: F.logsumexp(x, ax, k),
}


@onnx_op(*REDUCERS, attrs=("axes", "keepdims", "noop_with_empty_axes"))
def reduce(n):
    x = n.tensor(0)
    axes = _reduce_axes(n, x.ndim)
    if axes == "noop":
        return x
    keep = bool(n.attr("keepdims", 1))
    if any(x.shape[a] == 0 for a in axes):
        return _empty_reduction(n, x, axes, keep)
    if x.dtype == "bool" and n.op in ("ReduceMax", "ReduceMin"):   # any / all
        return F.cast(REDUCERS[n.op](F.cast(x, "int64"), axes, keep), "bool")
    return REDUCERS[n.op](x, axes, keep)


# what a reduction over no elements gives: the identity of its combining operation
EMPTY = {"ReduceSum": 0, "ReduceL1": 0, "ReduceL2": 0, "ReduceSumSquare": 0, "ReduceMean": np.nan, "ReduceProd": 1,
         "ReduceMax": -np.inf, "ReduceMin": np.inf, "ReduceLogSum": -np.inf, "ReduceLogSumExp": -np.inf}


def _empty_reduction(n, x, axes, keep):
    shape = tuple(1 if k in axes else d for k, d in enumerate(x.shape)) if keep else \
        tuple(d for k, d in enumerate(x.shape) if k not in axes)
    if not all(isinstance(d, int) for d in shape):
        raise n.unsupported("reducing an empty axis of a tensor with symbolic dims")
    value = EMPTY[n.op]
    if x.dtype == "bool":
        value = n.op == "ReduceMin"
    elif x.dtype in ("int32", "int64") and not np.isfinite(value):
        info = np.iinfo(x.dtype)
        value = info.min if value < 0 else info.max
    return np.full(shape, value, dtype=x.dtype)


@onnx_op("ArgMax", "ArgMin", attrs=("axis", "keepdims", "select_last_index"))
def arg_reduce(n):
    x = n.tensor(0)
    axis = n.attr("axis", 0) % x.ndim
    keep = bool(n.attr("keepdims", 1))
    fn = F.argmax if n.op == "ArgMax" else F.argmin
    if n.attr("select_last_index", 0):
        d = x.shape[axis]
        flipped = F.take_slice(x, axis, d - 1, None, -1)
        return (d - 1) - fn(flipped, axis, keep)
    return fn(x, axis, keep)


def _coerced_2d(n, x, fn):
    """Softmax before opset 13: over the flattened dims from `axis` on (the input coerced to 2-d)."""
    axis = n.attr("axis", 1) % x.ndim
    flat = F.reshape(x, (dim_mul(*x.shape[:axis]) if axis else 1, dim_mul(*x.shape[axis:])))
    return F.reshape(fn(flat, 1), x.shape)


def _hardmax(x, axis):
    d = x.shape[axis]
    idx = F.argmax(x, axis, keepdims=True)
    iota = F.constant(np.arange(d).reshape((d,) + (1,) * (x.ndim - axis - 1)))
    return F.cast(F.equal(idx, iota), x.dtype)


SOFTMAXES = {"Softmax": F.softmax, "LogSoftmax": F.log_softmax, "Hardmax": _hardmax}


@onnx_op(*SOFTMAXES, attrs=("axis",))
def softmax(n):
    x = n.tensor(0)
    fn = SOFTMAXES[n.op]
    if n.opset < 13:
        return _coerced_2d(n, x, fn)
    return fn(x, n.attr("axis", -1) % x.ndim)
