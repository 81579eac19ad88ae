"""The functions of the DSL (dlc.exp, dlc.sum, dlc.reshape, ...): each adds nodes to the graph."""

from __future__ import annotations

import builtins
import hashlib
import sys

import numpy as np

import dlc.ops  # noqa: F401  (registers every op)
import dlc.tensor as _tensor

from .errors import ShapeError
from .graph import Node, as_data, as_dtype, as_shape, freeze_attrs, is_float, shape_str, user_location
from .ops.attention import scaled_dot_product_attention  # noqa: F401  (in __all__)
from .ops.base import apply
from .ops.norm import layer_norm  # noqa: F401  (in __all__)
from .ops.reduce import static_size
from .tensor import Tensor

# ----------------------------------------------------------------------------
# sources


def input(name: str, shape, dtype="float32") -> Tensor:  # noqa: A001  (the DSL's name for it)
    """A value fed at each call of the compiled function; dims may be symbols like "B"."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"input name must be an identifier, got {name!r}")
    return Tensor(Node("input", (), freeze_attrs({"name": name}), as_shape(shape), as_dtype(dtype),
                       user_location()))


def constant(value, dtype=None) -> Tensor:
    """A constant array baked into the graph."""
    arr = np.array(value, dtype=as_dtype(dtype) if dtype is not None else None)
    if dtype is None:
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float32)
        elif arr.dtype.kind in "iu":
            arr = arr.astype(np.int64)
    dt = as_dtype(arr.dtype)
    arr = np.array(arr, order="C")  # (np.ascontiguousarray would make a 0-d array 1-d)
    arr.setflags(write=False)
    digest = hashlib.sha256(arr.tobytes() + dt.encode() + str(arr.shape).encode()).hexdigest()[:24]
    return Tensor(Node("const", (), freeze_attrs({"digest": digest}), tuple(arr.shape), dt,
                       user_location(), arr))


_PARAM_WARNED: set = set()  # dlc.param's dtype conversions already warned about (once per process)


def param(value, name: str | None = None, store=None, trainable: bool = True, dtype=None) -> Tensor:
    """A value that lives in a Store between calls: a weight, or optimizer state.

    The initial value is put in the store (the default store unless one is
    given) under `name`, or name_1, name_2... if taken. Floating-point values
    become float32 unless dtype says otherwise; a float64 numpy array is
    converted with a one-time DTypeWarning (the rule of every entry point).
    """
    from .store import default_store

    store = store if store is not None else default_store()
    arr = np.asarray(value)
    if dtype is None:  # floats are float32 unless asked for; other numbers keep their dtype
        dtype = "float32" if arr.dtype.kind == "f" else arr.dtype
    arr = np.array(as_data(value, as_dtype(dtype), "dlc.param", _PARAM_WARNED, stacklevel=3))
    key = store.add(name, arr, trainable=trainable)
    return Tensor(Node("param", (), freeze_attrs({"name": key}), tuple(arr.shape), as_dtype(arr.dtype),
                       user_location()))


def _check_numeric(x) -> None:
    """A clear TypeError for an operand no array can be made of (x * 'a', x + None)."""
    ok = isinstance(x, (bool, int, float, np.number, np.bool_)) or (
        isinstance(x, (np.ndarray, list, tuple)) and np.asarray(x).dtype.kind in "biuf")
    if not ok:
        raise TypeError(f"unsupported operand {x!r} of type {type(x).__name__}: a Tensor combines with Tensors, "
                        f"numbers and numeric arrays" + (f" (at {user_location()})" if user_location() else ""))


def _lift(x, like: Tensor | None) -> Tensor:
    """A Python or numpy scalar becomes a constant of the tensor operand's dtype."""
    if isinstance(x, Tensor):
        return x
    _check_numeric(x)
    if isinstance(x, np.ndarray) and x.ndim > 0:
        if like is not None and x.dtype.kind == "f" and is_float(like.dtype):
            return constant(x, dtype=like.dtype)  # a float array follows the tensor's precision
        return constant(x)
    if like is not None:
        dtype = like.dtype
        if isinstance(x, (float, np.floating)) and not is_float(dtype):
            dtype = "float32"
        if dtype == "bool" and not isinstance(x, (bool, np.bool_)):
            dtype = "int64" if isinstance(x, (int, np.integer)) else "float32"
        return constant(x, dtype=dtype)
    return constant(x)


def _apply(op: str, *args, **attrs) -> Tensor:
    like = next((a for a in args if isinstance(a, Tensor)), None)
    nodes = [_lift(a, like).node for a in args]
    return Tensor(apply(op, nodes, **attrs))


# ----------------------------------------------------------------------------
# elementwise


def _unary(op):
    def fn(x):
        return _apply(op, x)
    fn.__name__ = op
    fn.__doc__ = f"Elementwise {op}."
    return fn


neg, abs, sign, exp, log, sqrt, rsqrt, square = map(_unary, ["neg", "abs", "sign", "exp", "log", "sqrt", "rsqrt",
                                                         "square"])
tanh, sigmoid, relu, erf, softplus, sin, cos = map(_unary, ["tanh", "sigmoid", "relu", "erf", "softplus", "sin",
                                                            "cos"])
stop_gradient, logical_not = _unary("stop_gradient"), _unary("logical_not")


def leaky_relu(x, alpha=0.01):
    return _apply("leaky_relu", x, alpha=float(alpha))


def elu(x, alpha=1.0):
    return _apply("elu", x, alpha=float(alpha))


def gelu(x, approximate="tanh"):
    """GELU; approximate="tanh" (the GPT-2 form) or "none" (exact, with erf)."""
    if approximate not in ("tanh", "none"):
        raise ValueError(f"gelu approximate must be 'tanh' or 'none', got {approximate!r}")
    return _apply("gelu_tanh" if approximate == "tanh" else "gelu_erf", x)


def _binary(op):
    def fn(a, b):
        return _apply(op, a, b)
    fn.__name__ = op
    fn.__doc__ = f"Elementwise {op} with numpy broadcasting."
    return fn


add, sub, mul, div, maximum, minimum = map(_binary, ["add", "sub", "mul", "div", "maximum", "minimum"])
equal, not_equal, less, less_equal, greater, greater_equal = map(_binary, ["eq", "ne", "lt", "le", "gt", "ge"])
logical_and, logical_or = _binary("logical_and"), _binary("logical_or")


def pow(a, b):  # noqa: A001
    if isinstance(b, (int, float)) and not isinstance(a, (int, float)):
        if b == 2:
            return square(a)
        if b == 1:
            return a
        if b == 0.5:
            return sqrt(a)
    return _apply("pow", a, b)


def where(cond, a, b):
    """cond ? a : b elementwise; a scalar branch takes the other branch's dtype."""
    like = a if isinstance(a, Tensor) else b if isinstance(b, Tensor) else None
    return Tensor(apply("where", [_lift(cond, None).node, _lift(a, like).node, _lift(b, like).node]))


def cast(x, dtype):
    dtype = as_dtype(dtype)
    if x.dtype == dtype:
        return x
    return _apply("cast", x, dtype=dtype)


def clip(x, lo, hi):
    """x limited to [lo, hi]; the gradient passes where lo <= x <= hi."""
    if lo > hi:
        raise ValueError(f"clip needs lo <= hi, got lo={lo} > hi={hi}"
                         + (f" at {user_location()}" if user_location() else ""))
    return _apply("clip", x, lo=lo, hi=hi)


# ----------------------------------------------------------------------------
# reductions


def _norm_axis(axis, ndim: int, shape) -> int:
    """One axis in [-ndim, ndim) made non-negative; out of range is an error, never a wrap-around."""
    axis = int(axis)
    if not -ndim <= axis < ndim:
        raise ShapeError(f"axis {axis} is out of range for a tensor of shape {shape_str(shape)}"
                         + (f" at {user_location()}" if user_location() else ""))
    return axis % ndim


def _norm_axes(x, axis) -> tuple:
    if axis is None:
        return tuple(range(x.ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for ax in axes:
        ax = int(ax)
        if not -x.ndim <= ax < x.ndim:
            raise ShapeError(f"axis {ax} is out of range for a tensor of shape {shape_str(x.shape)}"
                             + (f" at {user_location()}" if user_location() else ""))
        out.append(ax % x.ndim)
    return tuple(sorted(set(out)))


def _alias(name: str, value, alias: str, alias_value, default=None):
    """A numpy keyword or its PyTorch spelling (axis/dim, keepdims/keepdim), not both."""
    if alias_value is None:
        return default if value is None else value
    if value is not None:
        raise TypeError(f"give {name}= or {alias}= (its PyTorch spelling), not both")
    return alias_value


def _reduce(op):
    def fn(x, axis=None, keepdims=None, *, dim=None, keepdim=None):
        axis = _alias("axis", axis, "dim", dim)
        keepdims = _alias("keepdims", keepdims, "keepdim", keepdim, False)
        return _apply(op, x, axes=_norm_axes(x, axis), keepdims=bool(keepdims))
    fn.__name__ = op
    fn.__doc__ = f"{op} over axis (an int, a tuple, or None for all), numpy-style; dim=/keepdim= also accepted."
    return fn


sum, prod, max, min = map(_reduce, ["sum", "prod", "max", "min"])  # noqa: A001


def _arg_reduce(op, x, axis, keepdims):
    if axis is None:
        # numpy's convention: an index into the flattened tensor
        flat = _apply(op, reshape(x, (-1,)), axes=(0,), keepdims=False)
        return reshape(flat, (1,) * x.ndim) if keepdims else flat
    if not isinstance(axis, (int, np.integer)):
        raise ShapeError(f"{op} reduces over one axis (an int, or None for the flattened tensor), got {axis!r}"
                         + (f" at {user_location()}" if user_location() else ""))
    return _apply(op, x, axes=_norm_axes(x, axis), keepdims=bool(keepdims))


def argmax(x, axis=-1, keepdims=False):
    """Index of the largest value along axis (the first one among ties)."""
    return _arg_reduce("argmax", x, axis, keepdims)


def argmin(x, axis=-1, keepdims=False):
    """Index of the smallest value along axis (the first one among ties)."""
    return _arg_reduce("argmin", x, axis, keepdims)


def size(x, axis=None, dtype=None) -> Tensor:
    """The number of elements along axes, as a scalar; a constant unless a dim is symbolic."""
    axes = _norm_axes(x, axis)
    dtype = dtype or (x.dtype if is_float(x.dtype) else "float32")
    n = static_size(x.shape, axes)
    if isinstance(n, int):
        return constant(n, dtype=dtype)
    return _apply("size", x, axes=axes, dtype=dtype)


def mean(x, axis=None, keepdims=None, *, dim=None, keepdim=None):
    """The average over axis; an integer tensor is averaged in float32."""
    axis = _alias("axis", axis, "dim", dim)
    keepdims = _alias("keepdims", keepdims, "keepdim", keepdim, False)
    if not is_float(x.dtype):
        x = cast(x, "float32")
    return sum(x, axis, keepdims) / size(x, axis)


def var(x, axis=None, keepdims=False, ddof=0):
    d = x - mean(x, axis, keepdims=True)
    n = size(x, axis)
    return sum(d * d, axis, keepdims) / (n - ddof if ddof else n)


def std(x, axis=None, keepdims=False, ddof=0):
    return sqrt(var(x, axis, keepdims, ddof))


def logsumexp(x, axis=None, keepdims=False):
    m = stop_gradient(max(x, axis, keepdims=True))
    # a row of infinities would give inf - inf = nan; any finite shift is as good as the max
    m = where(abs(m) == float("inf"), 0.0, m)
    out = log(sum(exp(x - m), axis, keepdims=True)) + m
    return out if keepdims else reshape(out, _reduced(x, axis))


def softmax(x, axis=None, *, dim=None):
    """exp(x) / sum(exp(x)) along axis (default the last; dim= is the PyTorch spelling)."""
    axis = _alias("axis", axis, "dim", dim, -1)
    e = exp(x - stop_gradient(max(x, axis, keepdims=True)))
    return e / sum(e, axis, keepdims=True)


def log_softmax(x, axis=None, *, dim=None):
    """log(softmax(x)) along axis, computed stably (default the last axis; dim= also accepted)."""
    axis = _alias("axis", axis, "dim", dim, -1)
    z = x - stop_gradient(max(x, axis, keepdims=True))
    return z - log(sum(exp(z), axis, keepdims=True))


def _reduced(x, axis):
    axes = _norm_axes(x, axis)
    return tuple(d for i, d in enumerate(x.shape) if i not in axes)


# ----------------------------------------------------------------------------
# shapes


def reshape(x, shape):
    shape = tuple(int(d) if isinstance(d, (int, np.integer)) else d for d in shape)
    if shape == tuple(x.shape):
        return x
    return _apply("reshape", x, shape=shape)


def transpose(x, perm=None):
    perm = tuple(reversed(range(x.ndim))) if perm is None else tuple(_norm_axis(p, x.ndim, x.shape) for p in perm)
    if perm == tuple(range(x.ndim)):
        return x
    return _apply("transpose", x, perm=perm)


permute = transpose


def swapaxes(x, a, b):
    perm = list(range(x.ndim))
    a, b = _norm_axis(a, x.ndim, x.shape), _norm_axis(b, x.ndim, x.shape)
    perm[a], perm[b] = perm[b], perm[a]
    return transpose(x, perm)


def broadcast_to(x, shape):
    shape = as_shape(shape)
    x = _lift(x, None)
    if tuple(x.shape) == shape:
        return x
    return _apply("broadcast_to", x, shape=shape)


def expand_dims(x, axis):
    axis = _norm_axis(axis, x.ndim + 1, x.shape)  # the new axis may also go last
    return reshape(x, x.shape[:axis] + (1,) + x.shape[axis:])


def unsqueeze(x, dim):
    """PyTorch's name for expand_dims: a new axis of size 1 at dim."""
    return expand_dims(x, dim)


def squeeze(x, axis=None):
    axes = [i for i, d in enumerate(x.shape) if d == 1] if axis is None else _norm_axes(x, axis)
    for ax in axes:
        if x.shape[ax] != 1:
            raise ShapeError(f"cannot squeeze axis {ax} of size {x.shape[ax]} in {shape_str(x.shape)}")
    return reshape(x, tuple(d for i, d in enumerate(x.shape) if i not in axes))


def flatten(x, start_axis=1):
    return reshape(x, x.shape[:start_axis] + (-1,))


def slice_(x, begin, end, step=None):
    """x[begin[i]:end[i]:step[i]] on every axis (None in end means to the end)."""
    step = step or (1,) * x.ndim
    return _apply("slice", x, begin=tuple(begin), end=tuple(end), step=tuple(step))


def take_slice(x, axis, start, stop, step=1):
    begin, end, steps = [0] * x.ndim, [None] * x.ndim, [1] * x.ndim
    begin[axis], end[axis], steps[axis] = start, stop, step
    if (start, stop, step) == (0, x.shape[axis], 1):
        return x
    return slice_(x, begin, end, steps)


def getitem(x, index):
    """Basic numpy indexing: ints, slices, ..., None; an integer Tensor gathers along axis 0."""
    if isinstance(index, Tensor):
        return take(x, index, axis=0)
    if not isinstance(index, tuple):
        index = (index,)
    if builtins.sum(i is Ellipsis for i in index) > 1:
        raise IndexError("an index can only have a single ellipsis")
    n_real = builtins.sum(1 for i in index if i is not None and i is not Ellipsis)
    if n_real > x.ndim:
        raise IndexError(f"too many indices for a tensor of shape {shape_str(x.shape)}")
    expanded = []
    for i in index:
        if i is Ellipsis:
            expanded += [builtins.slice(None)] * (x.ndim - n_real)
        else:
            expanded.append(i)
    expanded += [builtins.slice(None)] * (x.ndim - builtins.sum(1 for i in expanded if i is not None))
    begin, end, step, out_shape_ops = [], [], [], []
    axis = 0
    for i in expanded:
        if i is None:
            out_shape_ops.append("new")
            continue
        d = x.shape[axis]
        if isinstance(i, Tensor):
            raise IndexError("a Tensor index must be used alone (x[idx]) or with dlc.take")
        if isinstance(i, (bool, np.bool_)):
            raise IndexError(f"a bool index ({i!r}) is not supported; use dlc.where for masking")
        if isinstance(i, (int, np.integer)):
            i = int(i)
            if isinstance(d, int) and not -d <= i < d:
                raise IndexError(f"index {i} is out of range for axis {axis} of size {d}"
                                 + (f" at {user_location()}" if user_location() else ""))
            if isinstance(d, str):
                raise IndexError(f"cannot index the symbolic dim {d!r} with an int")
            i = i % d
            begin.append(i), end.append(i + 1), step.append(1)
            out_shape_ops.append("drop")
        elif isinstance(i, builtins.slice):
            if isinstance(d, str):
                if (i.start, i.stop, i.step) not in ((None, None, None), (0, None, None), (None, None, 1)):
                    raise IndexError(f"only ':' is allowed along the symbolic dim {d!r}")
                begin.append(0), end.append(None), step.append(1)
            else:
                b, e, s = i.indices(d)
                if s < 0 and e < 0:
                    e = None
                begin.append(b), end.append(e), step.append(s)
            out_shape_ops.append("keep")
        else:
            raise IndexError(f"unsupported index {i!r}")
        axis += 1
    y = x
    if any((b, e, s) != (0, None, 1) and not (isinstance(x.shape[k], int) and (b, e, s) == (0, x.shape[k], 1))
           for k, (b, e, s) in enumerate(zip(begin, end, step))):
        y = slice_(x, begin, end, step)
    shape, k = [], 0
    for op in out_shape_ops:
        if op == "new":
            shape.append(1)
        elif op == "drop":
            k += 1
        else:
            shape.append(y.shape[k])
            k += 1
    return reshape(y, tuple(shape))


def concat(xs, axis=0):
    xs = list(xs)
    if not xs:
        raise ValueError("concat needs at least one tensor")
    like = next((x for x in xs if isinstance(x, Tensor)), None)
    xs = [_lift(x, like) for x in xs]
    axis = _norm_axis(axis, xs[0].ndim, xs[0].shape)
    if len(xs) == 1:
        return xs[0]
    return Tensor(apply("concat", [x.node for x in xs], axis=axis))


def cat(tensors, dim=0):
    """PyTorch's name for concat (numpy's is concatenate)."""
    return concat(tensors, dim)


def concatenate(arrays, axis=0):
    """numpy's name for concat."""
    return concat(arrays, axis)


def stack(xs, axis=0):
    xs = list(xs)
    if not xs:
        raise ValueError("stack needs at least one tensor")
    axis = _norm_axis(axis, xs[0].ndim + 1, xs[0].shape)
    return concat([expand_dims(x, axis) for x in xs], axis)


def split(x, sections, axis=0):
    """Split into equal parts (an int) or at the given sizes (a list)."""
    axis = _norm_axis(axis, x.ndim, x.shape)
    d = x.shape[axis]
    if isinstance(sections, int):
        if not isinstance(d, int) or d % sections:
            raise ShapeError(f"cannot split axis {axis} of size {d} into {sections} equal parts")
        sizes = [d // sections] * sections
    else:
        sizes = list(sections)
        if builtins.sum(sizes) != d:
            raise ShapeError(f"split sizes {sizes} do not add up to {d}")
    out, start = [], 0
    for s in sizes:
        out.append(take_slice(x, axis, start, start + s))
        start += s
    return out


def pad(x, pads, value=0.0):
    """Constant padding; pads is one (before, after) pair per axis."""
    pads = tuple((int(a), int(b)) for a, b in pads)
    return _apply("pad", x, pads=pads, value=float(value))


def take(x, indices, axis=0):
    """Gather along one axis (an embedding lookup is take(table, ids, 0)).

    Indices follow numpy's rule on every backend: -n..-1 count from the end of
    an axis of size n; an index outside [-n, n) raises IndexRangeError (an IndexError).
    """
    axis = _norm_axis(axis, x.ndim, x.shape)
    return _apply("take", x, indices, axis=axis)


gather = take


def one_hot(indices, depth: int, dtype="float32", ignore_index=None):
    """(..., depth) rows with a 1 at each label; labels outside [0, depth) raise IndexRangeError at run time.

    A label equal to ignore_index (None: no label is ignored) gives a row of zeros.
    """
    return _apply("one_hot", indices, depth=depth, dtype=as_dtype(dtype), ignore_index=ignore_index)


# ----------------------------------------------------------------------------
# array creation (numpy's semantics, except the default float dtype: float32, as in PyTorch)


def tensor(data, dtype=None) -> Tensor:
    """A constant Tensor from data (like torch.tensor): floats become float32, ints int64, unless dtype says."""
    return constant(data, dtype)


def _default_dtype(value, dtype):
    if dtype is not None:
        return as_dtype(dtype)
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    return "int64" if isinstance(value, (int, np.integer)) else "float32"


def full(shape, fill_value, dtype=None) -> Tensor:
    """A tensor of `shape` (dims may be symbols like "B") filled with fill_value."""
    _check_numeric(fill_value)
    shape = (shape,) if isinstance(shape, (int, np.integer, str)) else shape
    return broadcast_to(constant(fill_value, _default_dtype(fill_value, dtype)), shape)


def zeros(shape, dtype="float32") -> Tensor:
    """A tensor of zeros; dims may be symbols like "B"."""
    return full(shape, 0, dtype)


def ones(shape, dtype="float32") -> Tensor:
    """A tensor of ones; dims may be symbols like "B"."""
    return full(shape, 1, dtype)


def full_like(x, fill_value, dtype=None) -> Tensor:
    """A tensor shaped like x, filled with fill_value, of x's dtype unless dtype says."""
    return full(x.shape, fill_value, dtype or x.dtype)


def zeros_like(x, dtype=None) -> Tensor:
    return full_like(x, 0, dtype)


def ones_like(x, dtype=None) -> Tensor:
    return full_like(x, 1, dtype)


def arange(start, stop=None, step=1, dtype=None) -> Tensor:
    """Evenly spaced values in [start, stop), as numpy.arange; int64 for ints, float32 for floats."""
    if stop is None:
        start, stop = 0, start
    dtype = dtype or ("int64" if builtins.all(isinstance(v, (int, np.integer)) for v in (start, stop, step))
                      else "float32")
    return constant(np.arange(start, stop, step), dtype)


def eye(n: int, m: int | None = None, k: int = 0, dtype="float32") -> Tensor:
    """The n x m identity (ones on diagonal k), as numpy.eye."""
    return constant(np.eye(n, m, k), dtype)


# ----------------------------------------------------------------------------
# linear algebra


def matmul(a, b):
    return _apply("matmul", a, b)


def dot(a, b):
    return matmul(a, b)


__all__ = [
    # sources
    "input", "constant", "param", "tensor",
    # array creation
    "zeros", "ones", "full", "zeros_like", "ones_like", "full_like", "arange", "eye",
    # elementwise
    "neg", "abs", "sign", "exp", "log", "sqrt", "rsqrt", "square", "tanh", "sigmoid", "relu", "erf", "softplus",
    "sin", "cos", "leaky_relu", "elu", "gelu", "stop_gradient", "add", "sub", "mul", "div", "pow", "maximum",
    "minimum", "equal", "not_equal", "less", "less_equal", "greater", "greater_equal", "logical_and", "logical_or",
    "logical_not", "where", "cast", "clip",
    # reductions
    "sum", "prod", "max", "min", "mean", "var", "std", "argmax", "argmin", "size", "logsumexp", "softmax",
    "log_softmax",
    # shapes
    "reshape", "transpose", "permute", "swapaxes", "broadcast_to", "expand_dims", "unsqueeze", "squeeze", "flatten",
    "slice_", "take_slice", "concat", "cat", "concatenate", "stack", "split", "pad", "take", "gather", "one_hot",
    # linear algebra
    "matmul", "dot",
    # attention and normalization
    "scaled_dot_product_attention", "layer_norm",
]

_tensor.F = sys.modules[__name__]  # Tensor's operators call these functions (see dlc/tensor.py)
