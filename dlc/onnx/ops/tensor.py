"""ONNX ops that move data: Reshape, Transpose, Concat, Split, Slice, Gather, Pad, Tile, Expand, and the ops
that make values (Constant, ConstantOfShape, Shape, Size, Range)."""

from __future__ import annotations

import numpy as np

import dlc.functional as F

from ...graph import dim_mul
from ...ops.elementwise import broadcast_shapes
from ..importer import is_static
from ..reader import check_dims, dtype_of
from . import onnx_op


def _axis(n, axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise n.invalid(f"axis {axis} is out of range for rank {ndim}")
    return axis % ndim


def _shape_of(n, i):
    v = n.inputs[i]
    return tuple(v.shape)


# ----------------------------------------------------------------------------
# values made at import


@onnx_op("Constant", attrs=("value", "value_float", "value_floats", "value_int", "value_ints", "sparse_value",
                            "value_string", "value_strings"))
def constant(n):
    for key, conv in (("value", None), ("value_float", np.float32), ("value_floats", np.float32),
                      ("value_int", np.int64), ("value_ints", np.int64)):
        if key in n.attrs:
            v = n.attrs[key]
            return np.asarray(v) if conv is None else np.asarray(v, dtype=conv)
    raise n.unsupported(f"attribute {', '.join(n.attrs) or '(none)'}", "value, value_float(s), value_int(s)")


@onnx_op("ConstantOfShape", attrs=("value",))
def constant_of_shape(n):
    shape = n.ints(0)
    value = np.asarray(n.attr("value", np.zeros(1, np.float32))).reshape(-1)
    if any(isinstance(d, str) for d in shape):
        return F.broadcast_to(F.constant(value.reshape(())), tuple(shape))
    return np.full(check_dims(shape, f"ConstantOfShape node {n.name!r}"), value[0], dtype=value.dtype)


@onnx_op("Shape", attrs=("start", "end"))
def shape(n):
    dims = _shape_of(n, 0)
    start, end = n.attr("start", 0), n.attr("end", None)
    dims = dims[slice(start, end)]
    if all(isinstance(d, int) for d in dims):
        return np.array(dims, dtype=np.int64)
    return np.array(list(dims), dtype=object)


@onnx_op("Size")
def size(n):
    d = dim_mul(*_shape_of(n, 0)) if _shape_of(n, 0) else 1
    return np.array(d, dtype=np.int64 if isinstance(d, int) else object)


@onnx_op("Range")
def range_(n):
    start, limit, delta = (n.static(i) for i in range(3))
    if delta == 0:
        raise n.invalid("delta is 0")
    count = max(int(np.ceil((float(limit) - float(start)) / float(delta))), 0)
    check_dims([count], f"Range node {n.name!r}")   # before allocating: the bounds are data from the file
    return np.arange(start, limit, delta, dtype=np.asarray(start).dtype)


# ----------------------------------------------------------------------------
# shapes


def _target_shape(n, src, shape, allowzero):
    out = []
    for k, d in enumerate(shape):
        if d == 0 and not allowzero and not isinstance(d, str):
            if k >= len(src):
                raise n.invalid(f"shape {shape} copies dim {k} of a rank-{len(src)} input")
            out.append(src[k])
        else:
            out.append(d)
    return tuple(out)


@onnx_op("Reshape", attrs=("allowzero",))
def reshape(n):
    shape = n.ints(1)
    x = n.inputs[0]
    if is_static(x) and x.dtype == object:
        return x.reshape([int(d) for d in shape])
    x = n.tensor(0)
    return F.reshape(x, _target_shape(n, x.shape, shape, n.attr("allowzero", 0)))


@onnx_op("Flatten", attrs=("axis",))
def flatten(n):
    x = n.tensor(0)
    axis = n.attr("axis", 1)
    axis = axis + x.ndim if axis < 0 else axis
    outer = dim_mul(*x.shape[:axis]) if axis else 1
    inner = dim_mul(*x.shape[axis:]) if axis < x.ndim else 1
    return F.reshape(x, (outer, inner))


@onnx_op("Transpose", attrs=("perm",))
def transpose(n):
    x = n.inputs[0]
    perm = n.attr("perm", None)
    if is_static(x):
        return np.transpose(x, perm)
    return F.transpose(x, perm)


def _axes_arg(n, attr_until: int, index: int = 1):
    """Axes from the attribute (opsets before attr_until) or from input `index` (after), None when absent."""
    if n.opset < attr_until:
        return n.attr("axes", None)
    return n.ints(index) if n.has(index) else None


@onnx_op("Squeeze", attrs=("axes",))
def squeeze(n):
    x = n.inputs[0]
    axes = _axes_arg(n, 13)
    shape = x.shape
    if axes is None:
        axes = [k for k, d in enumerate(shape) if d == 1]
    axes = {_axis(n, a, len(shape)) for a in axes}
    for a in axes:
        if shape[a] != 1:
            raise n.invalid(f"cannot squeeze axis {a} of size {shape[a]}")
    new = tuple(d for k, d in enumerate(shape) if k not in axes)
    return x.reshape(new) if is_static(x) else F.reshape(x, new)


@onnx_op("Unsqueeze", attrs=("axes",))
def unsqueeze(n):
    x = n.inputs[0]
    axes = _axes_arg(n, 13)
    rank = len(x.shape) + len(axes)
    axes = sorted(_axis(n, a, rank) for a in axes)
    new = list(x.shape)
    for a in axes:
        new.insert(a, 1)
    return x.reshape(new) if is_static(x) else F.reshape(x, tuple(new))


@onnx_op("Expand")
def expand(n):
    x = n.tensor(0)
    shape = tuple(n.ints(1))
    return F.broadcast_to(x, broadcast_shapes(tuple(x.shape), shape))


@onnx_op("Concat", attrs=("axis",))
def concat(n):
    vals = [v for v in n.inputs if v is not None]
    axis = n.attr("axis")
    if all(is_static(v) for v in vals):
        dtype = object if any(v.dtype == object for v in vals) else None
        vals = [v.astype(object) if dtype else v for v in vals if v.size or v.ndim != 1 or len(vals) == 1]
        return np.concatenate(vals, axis=axis)
    xs = [n.tensor(i) for i in range(len(n.inputs)) if n.has(i)]
    xs = [x for x in xs if not (x.ndim >= 1 and x.shape[_axis(n, axis, x.ndim)] == 0)] or xs[:1]
    return F.concat(xs, axis=_axis(n, axis, xs[0].ndim))


@onnx_op("Split", attrs=("axis", "split", "num_outputs"))
def split(n):
    x = n.tensor(0)
    axis = _axis(n, n.attr("axis", 0), x.ndim)
    d = x.shape[axis]
    sizes = n.attr("split", None) if n.opset < 13 else (n.ints(1) if n.has(1) else None)
    if sizes is None:
        parts = n.attr("num_outputs", n.n_outputs)
        if not isinstance(d, int):
            raise n.unsupported(f"splitting the symbolic dim {d!r}")
        chunk = -(-d // parts)
        sizes = [min(chunk, d - k * chunk) for k in range(parts)]
    return F.split(x, list(sizes), axis=axis)


def _clamp_slice(start, end, step, d):
    """ONNX Slice bounds clamped as the spec says, as numpy slice arguments."""
    if start < 0:
        start += d
    if end < 0:
        end += d
    if step > 0:
        start, end = min(max(start, 0), d), min(max(end, 0), d)
    else:
        start, end = min(max(start, 0), d - 1), min(max(end, -1), d - 1)
    return start, (None if end < 0 else end), step


@onnx_op("Slice", attrs=("starts", "ends", "axes"))
def slice_(n):
    x = n.inputs[0]
    if n.opset < 10:
        starts, ends, axes, steps = n.attr("starts"), n.attr("ends"), n.attr("axes", None), None
    else:
        starts, ends = n.ints(1), n.ints(2)
        axes = n.ints(3) if n.has(3) else None
        steps = n.ints(4) if n.has(4) else None
    shape = x.shape
    axes = list(range(len(starts))) if axes is None else [_axis(n, a, len(shape)) for a in axes]
    steps = steps or [1] * len(starts)
    begin, end, step = [0] * len(shape), [None] * len(shape), [1] * len(shape)
    for a, s, e, st in zip(axes, starts, ends, steps):
        if st == 0:
            raise n.invalid("slice step 0")
        d = shape[a]
        if isinstance(d, str):
            if s == 0 and st == 1 and e >= 2**31 - 1:
                continue
            raise n.unsupported(f"slicing the symbolic dim {d!r} other than whole")
        begin[a], end[a], step[a] = _clamp_slice(s, e, st, d)
    if is_static(x):
        return x[tuple(slice(b, e, s) for b, e, s in zip(begin, end, step))]
    if all((b, e, s) == (0, None, 1) for b, e, s in zip(begin, end, step)):
        return x
    return F.slice_(x, begin, end, step)


def _normalize_indices(n, idx, d):
    if isinstance(idx, np.ndarray):
        if isinstance(d, int) and idx.size and (idx.min() < -d or idx.max() >= d):
            raise n.invalid(f"index out of range for an axis of size {d}")
        return F.constant(np.where(idx < 0, idx + d, idx) if isinstance(d, int) else idx)
    if isinstance(d, int):
        return F.where(idx < 0, idx + d, idx)
    return idx


@onnx_op("Gather", attrs=("axis",))
def gather(n):
    x = n.inputs[0]
    axis = _axis(n, n.attr("axis", 0), len(x.shape))
    if is_static(x) and n.all_static():
        return np.take(x, n.static(1), axis=axis)
    x = n.tensor(0)
    idx = n.inputs[1] if is_static(n.inputs[1]) else n.tensor(1)
    d = x.shape[axis]
    if is_static(idx) and isinstance(d, int) and 0 < idx.size <= 64:
        return _gather_static(n, x, axis, idx, d)
    return F.take(x, _normalize_indices(n, idx, d), axis=axis)


def _gather_static(n, x, axis, idx, d):
    """Gather with indices known at import: slices (one, for a step range) and a concat, not a gather op."""
    flat = [int(i) for i in idx.reshape(-1)]
    if any(not -d <= i < d for i in flat):
        raise n.invalid(f"index out of range for an axis of size {d}")
    flat = [i % d for i in flat]
    step = flat[1] - flat[0] if len(flat) > 1 else 1
    if step > 0 and flat == list(range(flat[0], flat[0] + step * len(flat), step)):
        picked = F.take_slice(x, axis, flat[0], flat[-1] + 1, step)
    else:
        picked = F.concat([F.take_slice(x, axis, i, i + 1) for i in flat], axis)
    return F.reshape(picked, tuple(x.shape[:axis]) + tuple(idx.shape) + tuple(x.shape[axis + 1:]))


@onnx_op("GatherElements", attrs=("axis",))
def gather_elements(n):
    x, idx_v = n.tensor(0), n.inputs[1]
    axis = _axis(n, n.attr("axis", 0), x.ndim)
    d = x.shape[axis]
    idx = _normalize_indices(n, idx_v if is_static(idx_v) else n.tensor(1), d)
    if not isinstance(d, int):
        raise n.unsupported(f"gathering along the symbolic dim {d!r}")
    # out[..., i, ...] = x[..., idx[..., i, ...], ...]: a one-hot of the indices against x, summed over the axis
    # (x is cut to the index tensor's extent on every other axis first)
    begin = [0] * x.ndim
    end = [None if k == axis else idx.shape[k] for k in range(x.ndim)]
    xs = F.slice_(x, begin, end) if any(e is not None and e != x.shape[k] for k, e in enumerate(end)) else x
    hot = F.equal(F.expand_dims(idx, axis + 1), F.constant(np.arange(d).reshape((d,) + (1,) * (x.ndim - axis - 1))))
    picked = F.where(hot, F.expand_dims(xs, axis), F.constant(np.zeros((), x.dtype)))
    return F.sum(picked, axis=axis + 1)


@onnx_op("Tile")
def tile(n):
    x = n.tensor(0)
    reps = n.ints(1)
    if len(reps) != x.ndim:
        raise n.invalid(f"repeats {reps} for a rank-{x.ndim} input")
    big = F.reshape(x, tuple(v for d in x.shape for v in (1, d)))
    big = F.broadcast_to(big, tuple(v for r, d in zip(reps, x.shape) for v in (r, d)))
    return F.reshape(big, tuple(dim_mul(r, d) for r, d in zip(reps, x.shape)))


# ----------------------------------------------------------------------------
# padding


def _edge_pad(x, axis, lo, hi, mode):
    """reflect/edge/wrap padding along one axis, by slices and a concat."""
    d = x.shape[axis]
    parts = []

    def piece(start, stop, step=1):
        return F.take_slice(x, axis, start, stop, step)

    if lo:
        if mode == "edge":
            parts.append(F.concat([piece(0, 1)] * lo, axis) if lo > 1 else piece(0, 1))
        elif mode == "reflect":
            parts.append(piece(lo, 0, -1))
        else:
            parts.append(piece(d - lo, d))
    parts.append(x)
    if hi:
        if mode == "edge":
            parts.append(F.concat([piece(d - 1, d)] * hi, axis) if hi > 1 else piece(d - 1, d))
        elif mode == "reflect":
            parts.append(piece(d - 2, d - 2 - hi, -1) if d - 2 - hi >= 0 else F.take_slice(x, axis, d - 2, None, -1))
        else:
            parts.append(piece(0, hi))
    return F.concat(parts, axis)


@onnx_op("Pad", attrs=("mode", "pads", "value"))
def pad(n):
    x = n.tensor(0)
    mode = n.attr("mode", "constant")
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise n.unsupported(f"mode={mode!r}", "constant, reflect, edge, wrap")
    if n.opset < 11:
        pads, value = n.attr("pads"), n.attr("value", 0.0)
        axes = list(range(x.ndim))
    else:
        pads = n.ints(1)
        value = n.inputs[2] if n.has(2) else np.zeros(())
        value = n.tensor(2) if not is_static(value) else (value.reshape(-1)[0] if value.size else 0)
        axes = [_axis(n, a, x.ndim) for a in n.ints(3)] if n.has(3) else list(range(x.ndim))
    if len(pads) != 2 * len(axes):
        raise n.invalid(f"pads {pads} for {len(axes)} axes")
    full = [(0, 0)] * x.ndim
    for k, a in enumerate(axes):
        full[a] = (int(pads[k]), int(pads[k + len(axes)]))
    # negative pads crop
    if any(lo < 0 or hi < 0 for lo, hi in full):
        begin = [max(-lo, 0) for lo, _ in full]
        end = [(-hi if hi < 0 else None) for _, hi in full]
        x = F.slice_(x, begin, end)
        full = [(max(lo, 0), max(hi, 0)) for lo, hi in full]
    if not any(lo or hi for lo, hi in full):
        return x
    if mode == "constant" and hasattr(value, "node"):   # a fill known only at run time: pad 0, add it outside
        outside = np.pad(np.zeros(x.shape, bool), full, constant_values=True)
        return F.where(F.constant(outside), F.cast(F.reshape(value, ()), x.dtype), F.pad(x, full, value=0.0))
    if mode == "constant":
        return F.pad(x, full, value=float(value))
    for a, (lo, hi) in enumerate(full):
        if lo or hi:
            x = _edge_pad(x, a, lo, hi, mode)
    return x


@onnx_op("EyeLike", attrs=("dtype", "k"))
def eye_like(n):
    shape = _shape_of(n, 0)
    dtype = dtype_of(n.attr("dtype"), "EyeLike dtype") if "dtype" in n.attrs else n.tensor(0).dtype
    return np.eye(shape[0], shape[1], k=n.attr("k", 0), dtype=dtype)
