"""Shape ops (index remaps): reshape, transpose, broadcast_to, slice, concat, pad; and gather/scatter."""

from __future__ import annotations

import numpy as np

from ..errors import DTypeError, GradientError, IndexRangeError, ShapeError
from ..graph import DTYPES, INT_DTYPES, dim_div, dim_mul, shape_str
from .base import INJECTIVE, OPAQUE, facts, register, same_range_as_input
from .checks import MAX_ATTR_INT, check_float, check_int, check_ints, check_shape, is_int
from .elementwise import broadcast_shapes


def _F():
    from .. import functional

    return functional


# ----------------------------------------------------------------------------
# reshape


def resolve_reshape(src, shape):
    """The target shape with its -1 filled in; sizes must agree, symbols included."""
    shape = list(shape)
    total = dim_mul(*src) if src else 1
    if shape.count(-1) > 1:
        raise ShapeError(f"reshape to {shape_str(tuple(shape))}: at most one dim may be -1")
    if -1 in shape:
        known = dim_mul(*(d for d in shape if d != -1)) if len(shape) > 1 else 1
        rest = dim_div(total, known)
        if rest is None:
            raise ShapeError(f"cannot reshape {shape_str(src)} to {shape_str(tuple(shape))}")
        shape[shape.index(-1)] = rest
    if (dim_mul(*shape) if shape else 1) != total:
        raise ShapeError(f"cannot reshape {shape_str(src)} ({total} elements) to {shape_str(tuple(shape))}")
    return tuple(shape)


def _reshape_infer(xs, attrs):
    shape = attrs["shape"]
    check_shape(tuple(d for d in shape if d != -1) if isinstance(shape, (tuple, list)) else shape, "reshape's shape")
    return resolve_reshape(xs[0].shape, shape), xs[0].dtype


# Reference implementations receive the node's concrete output shape (its
# symbolic dims bound at call time) as their third argument.
register("reshape", INJECTIVE, _reshape_infer, lambda xs, a, shape: xs[0].reshape(shape),
         lambda node, g, xs: [_F().reshape(g, xs[0].shape)])


# ----------------------------------------------------------------------------
# transpose


def _transpose_infer(xs, attrs):
    perm = check_ints(attrs["perm"], xs[0].ndim, "perm")
    if sorted(perm) != list(range(xs[0].ndim)):
        raise ShapeError(f"perm {perm} is not a permutation of the {xs[0].ndim} axes")
    return tuple(xs[0].shape[p] for p in perm), xs[0].dtype


def _transpose_grad(node, g, xs):
    inverse = tuple(int(i) for i in np.argsort(node.attr("perm")))
    return [_F().transpose(g, inverse)]


register("transpose", INJECTIVE, _transpose_infer, lambda xs, a, shape: np.transpose(xs[0], a["perm"]),
         _transpose_grad)


# ----------------------------------------------------------------------------
# broadcast_to


def _broadcast_infer(xs, attrs):
    shape = check_shape(attrs["shape"])
    try:
        fits = broadcast_shapes(xs[0].shape, shape) == tuple(shape)
    except ShapeError:
        fits = False
    if not fits:
        raise ShapeError(f"cannot broadcast {shape_str(xs[0].shape)} to {shape_str(shape)}")
    return shape, xs[0].dtype


def _broadcast_grad(node, g, xs):
    from .elementwise import unbroadcast

    return [unbroadcast(g, xs[0].shape)]


register("broadcast_to", INJECTIVE, _broadcast_infer,
         lambda xs, a, shape: np.array(np.broadcast_to(xs[0], shape)), _broadcast_grad)


# ----------------------------------------------------------------------------
# slice: begin/end/step per axis, numpy semantics; symbolic dims only as full slices


SLICE_BOUND = 2 ** 62  # slice bounds beyond this are refused (numpy clamps them; generated code uses int64)


def check_slice_attrs(attrs, ndim: int) -> None:
    """begin, end (ints or None) and step (ints != 0), one per axis."""
    begin, end, step = attrs["begin"], attrs["end"], attrs["step"]
    for name, v in (("begin", begin), ("end", end), ("step", step)):
        if not isinstance(v, (tuple, list)) or len(v) != ndim:
            raise ShapeError(f"slice {name} needs one entry per axis ({ndim}), got {v!r}")
    for b, e, st in zip(begin, end, step):
        check_int(b, "slice begin", -SLICE_BOUND, SLICE_BOUND)
        if e is not None:
            check_int(e, "slice end", -SLICE_BOUND, SLICE_BOUND)
        check_int(st, "slice step", -SLICE_BOUND, SLICE_BOUND)
        if st == 0:
            raise ShapeError("slice step cannot be 0")


def _slice_infer(xs, attrs):
    x = xs[0]
    check_slice_attrs(attrs, x.ndim)
    out = []
    for d, b, e, s in zip(x.shape, attrs["begin"], attrs["end"], attrs["step"]):
        if isinstance(d, str):
            if (b, e, s) != (0, None, 1):
                raise ShapeError(f"only a full slice ':' is allowed along the symbolic dim {d!r}")
            out.append(d)
        else:
            out.append(len(range(*slice(b, e, s).indices(d))))
    return tuple(out), x.dtype


def _slice_ref(xs, a, shape):
    return xs[0][tuple(slice(b, e, s) for b, e, s in zip(a["begin"], a["end"], a["step"]))]


def _slice_grad(node, g, xs):
    return [_F()._apply("slice_grad", g, begin=node.attr("begin"), end=node.attr("end"),
                        step=node.attr("step"), shape=xs[0].shape)]


register("slice", INJECTIVE, _slice_infer, _slice_ref, _slice_grad)


def _slice_grad_infer(xs, attrs):
    shape = check_shape(attrs["shape"])
    sliced, _ = _slice_infer((_Like(shape, xs[0].dtype),), attrs)
    if tuple(sliced) != tuple(xs[0].shape):
        raise ShapeError(f"the gradient {shape_str(xs[0].shape)} does not match a slice of {shape_str(shape)}, "
                         f"which is {shape_str(sliced)}")
    return shape, xs[0].dtype


class _Like:
    """A stand-in operand with a shape and dtype, to run another op's shape rule on an attribute's shape."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype, self.ndim = tuple(shape), dtype, len(shape)


def _slice_grad_ref(xs, a, shape):
    out = np.zeros(shape, dtype=xs[0].dtype)
    out[tuple(slice(b, e, s) for b, e, s in zip(a["begin"], a["end"], a["step"]))] = xs[0]
    return out


# The gradient of a slice: the incoming gradient placed into zeros of the
# sliced input's shape (attribute "shape").
register("slice_grad", INJECTIVE, _slice_grad_infer, _slice_grad_ref,
         lambda node, g, xs: [_F().slice_(g, node.attr("begin"), node.attr("end"), node.attr("step"))])


# ----------------------------------------------------------------------------
# concat


def _concat_infer(xs, attrs):
    if not xs:
        raise ShapeError("concat needs at least one tensor")
    ax = check_int(attrs["axis"], "axis")
    first = xs[0]
    dtypes = {x.dtype for x in xs}
    if len(dtypes) > 1:
        raise DTypeError(f"concat of different dtypes {sorted(dtypes)}")
    for x in xs:
        if x.ndim != first.ndim or not 0 <= ax < x.ndim:
            raise ShapeError(f"concat along axis {ax} needs tensors of the same rank")
        if any(a != b for i, (a, b) in enumerate(zip(x.shape, first.shape)) if i != ax):
            raise ShapeError(f"concat along axis {ax}: shapes {shape_str(first.shape)} and "
                             f"{shape_str(x.shape)} differ off that axis")
    shape = list(first.shape)
    shape[ax] = _dim_sum([x.shape[ax] for x in xs])
    return tuple(shape), first.dtype


def _dim_sum(dims):
    if all(isinstance(d, int) for d in dims):
        return sum(dims)
    if len(set(dims)) == 1:
        return dim_mul(len(dims), dims[0])
    raise ShapeError(f"cannot concat symbolic dims {dims} of different sizes")


def _concat_grad(node, g, xs):
    F = _F()
    ax = node.attr("axis")
    grads, start = [], 0
    for x in xs:
        d = x.shape[ax]
        if isinstance(d, str):
            raise GradientError(f"the gradient of a concat along the symbolic dim {d!r} (built at "
                                f"{node.loc or 'unknown location'}) is not supported: slices along symbolic "
                                f"dims must be full; concat along a static axis instead")
        grads.append(F.take_slice(g, ax, start, start + d))
        start += d
    return grads


register("concat", INJECTIVE, _concat_infer, lambda xs, a, shape: np.concatenate(xs, axis=a["axis"]), _concat_grad)


# ----------------------------------------------------------------------------
# pad (constant)


def _pad_infer(xs, attrs):
    x = xs[0]
    pads = attrs["pads"]
    check_float(attrs["value"], "pad value", finite=False)
    if not isinstance(pads, (tuple, list)) or len(pads) != x.ndim:
        raise ShapeError(f"pad needs one (before, after) pair per axis: {x.ndim}, got {pads!r}")
    for pair in pads:
        check_ints(pair, 2, "pad amounts")
    if any(lo < 0 or hi < 0 for lo, hi in pads):
        raise ShapeError(f"pad amounts must not be negative, got {pads}; crop with slicing instead")
    out = []
    for d, (lo, hi) in zip(x.shape, pads):
        if isinstance(d, str):
            if (lo, hi) != (0, 0):
                raise ShapeError(f"cannot pad along the symbolic dim {d!r}")
            out.append(d)
        else:
            out.append(d + lo + hi)
    return tuple(out), x.dtype


def _pad_grad(node, g, xs):
    F = _F()
    begin = tuple(lo for lo, hi in node.attr("pads"))
    end = tuple(None if hi == 0 else -hi for lo, hi in node.attr("pads"))
    return [F.slice_(g, begin, end, (1,) * len(begin))]


register("pad", INJECTIVE, _pad_infer,
         lambda xs, a, shape: np.pad(xs[0], a["pads"], constant_values=a["value"]), _pad_grad)


# ----------------------------------------------------------------------------
# take (gather along one axis) and its gradient, a scatter-add
#
# Indices follow numpy's rule on every backend: -n..-1 count from the end of
# an axis of size n; anything outside [-n, n) raises IndexRangeError.


def _take_infer(xs, attrs):
    x, idx = xs
    ax = check_int(attrs["axis"], "axis")
    if idx.dtype not in INT_DTYPES:
        raise DTypeError(f"take's indices must be int32 or int64, got {idx.dtype}")
    if not 0 <= ax < x.ndim:
        raise ShapeError(f"axis {ax} is out of range for a {x.ndim}-d tensor")
    return x.shape[:ax] + idx.shape + x.shape[ax + 1:], x.dtype


def _take_ref(xs, a, shape):
    x, idx = xs
    d = x.shape[a["axis"]]
    bad = (idx < -d) | (idx >= d)
    if bad.any():
        raise IndexRangeError("take", idx[bad].flat[0], -d, d)
    return np.take(x, idx, axis=a["axis"])


def _take_grad(node, g, xs):
    return [_F()._apply("take_grad", g, xs[1], axis=node.attr("axis"), shape=xs[0].shape), None]


register("take", OPAQUE, _take_infer, _take_ref, _take_grad)


def _take_grad_infer(xs, attrs):
    """g (the gathered shape) and the indices -> the table's shape (attribute "shape"), which must agree."""
    shape = check_shape(attrs["shape"])
    gathered, _ = _take_infer((_Like(shape, xs[0].dtype), xs[1]), attrs)
    if tuple(gathered) != tuple(xs[0].shape):
        raise ShapeError(f"the gradient {shape_str(xs[0].shape)} does not match a take from "
                         f"{shape_str(shape)}, which gives {shape_str(gathered)}")
    return shape, xs[0].dtype


def _take_grad_ref(xs, a, shape):
    g, idx = xs
    ax = a["axis"]
    out = np.zeros(shape, dtype=g.dtype)
    moved = np.moveaxis(out, ax, 0)
    gm = np.moveaxis(g.reshape(shape[:ax] + (idx.size,) + shape[ax + 1:]), ax, 0)
    np.add.at(moved, idx.reshape(-1), gm)
    return out


def _take_grad_grad(node, g, xs):
    # take_grad is linear in its gradient input, and take is its adjoint
    return [_F().take(g, xs[1], axis=node.attr("axis")), None]


# Scatter-add of g (rows picked by the indices) into zeros of the gathered
# tensor's shape (attribute "shape").
register("take_grad", OPAQUE, _take_grad_infer, _take_grad_ref, _take_grad_grad)


# ----------------------------------------------------------------------------
# one_hot: class labels to rows of zeros with a one, labels checked


def _one_hot_infer(xs, attrs):
    (labels,) = xs
    depth, ignore, dtype = attrs["depth"], attrs["ignore_index"], attrs["dtype"]
    if labels.dtype not in INT_DTYPES:
        raise DTypeError(f"one_hot's labels must be int32 or int64, got {labels.dtype}")
    if not is_int(depth) or not 1 <= depth <= MAX_ATTR_INT:
        raise ShapeError(f"one_hot depth must be an int >= 1, got {depth!r}")
    if ignore is not None and (not is_int(ignore) or abs(ignore) > 2 ** 62):
        raise ShapeError(f"one_hot ignore_index must be an int or None, got {ignore!r}")
    if dtype not in DTYPES:
        raise DTypeError(f"one_hot dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return labels.shape + (depth,), dtype


def one_hot_ref(xs, a, shape):
    (labels,) = xs
    depth, ignore = a["depth"], a["ignore_index"]
    kept = labels != ignore if ignore is not None else np.ones(labels.shape, bool)
    bad = kept & ((labels < 0) | (labels >= depth))
    if bad.any():
        raise IndexRangeError("one_hot", labels[bad].flat[0], 0, depth)
    hot = (labels[..., None] == np.arange(depth)) & kept[..., None]
    return hot.astype(a["dtype"])


# Labels outside [0, depth) raise IndexRangeError (negative ones too); a label
# equal to ignore_index (an int, or None for none) gives a row of zeros.
register("one_hot", OPAQUE, _one_hot_infer, one_hot_ref, lambda node, g, xs: [None],
         doc="labels (...) -> (..., depth): 1 at each label, 0 elsewhere; labels checked")


# What the optimizer may assume (OpDef.cheap, OpDef.value_range).
facts("broadcast_to transpose slice slice_grad pad concat", cheap=True)
facts("broadcast_to reshape transpose", value_range=same_range_as_input)
