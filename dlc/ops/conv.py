"""Convolutions: conv2d (NCHW), its input and weight gradients, conv_transpose2d, conv1d on top of conv2d, and
conv2d_nhwc (channels last, made only by the cpu target's layout pass).

Layouts follow PyTorch: x is (N, C_in, H, W), a conv2d weight is
(C_out, C_in/groups, kh, kw) and a conv_transpose2d weight is
(C_in, C_out/groups, kh, kw). Attributes, shared by every op here:
stride (sh, sw), padding ((top, bottom), (left, right)), dilation (dh, dw),
groups; the gradient ops add the spatial size they produce (out_hw) or the
kernel size (kernel).

The references lower to im2col + a GEMM per sample and group (windows are a
strided view of the padded input, never a Python loop over pixels); the
input gradient scatters the GEMM's result back with one strided add per
kernel tap.
"""

from __future__ import annotations

import numpy as np

from ..errors import DTypeError, ShapeError
from ..graph import shape_str, user_location
from .base import COMPLEX, register
from .checks import check_int, check_ints, check_pairs


def _F():
    from .. import functional

    return functional


# ----------------------------------------------------------------------------
# attribute normalisation (shared with pool.py)


def as_tuple(value, n: int, what: str) -> tuple:
    """An int, or a sequence of n ints, as a tuple of n positive ints."""
    vals = (value,) * n if isinstance(value, (int, np.integer)) else tuple(value)
    if len(vals) != n or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in vals):
        raise ValueError(f"{what} must be a positive int or {n} positive ints, got {value!r}")
    return tuple(int(v) for v in vals)


def as_padding(padding, n: int, kernel=None, dilation=None, stride=None) -> tuple:
    """Padding as n (before, after) pairs.

    Accepts an int, n entries that are each an int (symmetric) or a
    (before, after) pair, "valid" (none) or "same" (output size = input size;
    stride 1 only, the odd pixel goes after as in PyTorch).
    """
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * n
        if padding == "same" and kernel is not None:
            if stride is not None and any(s != 1 for s in stride):
                raise ValueError("padding='same' needs stride 1")
            totals = [d * (k - 1) for k, d in zip(kernel, dilation or (1,) * n)]
            return tuple((t // 2, t - t // 2) for t in totals)
        if padding == "same":
            raise ValueError("padding='same' is only defined for conv1d and conv2d")
        raise ValueError(f"padding must be an int, pairs, 'valid' or 'same', got {padding!r}")
    entries = (padding,) * n if isinstance(padding, (int, np.integer)) else tuple(padding)
    if len(entries) != n:
        raise ValueError(f"padding needs {n} entries (one per spatial dim), got {padding!r}")
    pairs = []
    for p in entries:
        pair = (p, p) if isinstance(p, (int, np.integer)) else tuple(p)
        if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 0 for v in pair):
            raise ValueError(f"each padding entry must be an int >= 0 or a (before, after) pair, got {padding!r}")
        pairs.append((int(pair[0]), int(pair[1])))
    return tuple(pairs)


def conv_out_size(size: int, pad: tuple, k: int, stride: int, dilation: int) -> int:
    """Output length along one dim: floor((size + pads - dilation*(k-1) - 1) / stride) + 1."""
    return (size + pad[0] + pad[1] - dilation * (k - 1) - 1) // stride + 1


def spatial_ints(shape, what: str) -> tuple:
    """The channel and spatial dims of an NC... shape, which must be ints (only the batch may be symbolic)."""
    dims = shape[1:]
    if not all(isinstance(d, int) for d in dims):
        raise ShapeError(f"{what} {shape_str(shape)}: only the batch dim may be symbolic")
    return dims


def out_hw(hw, attrs, kernel) -> tuple:
    """The spatial output size of a conv/pool window sweep, with a clear error when it would be empty."""
    out = tuple(conv_out_size(s, p, k, st, d) for s, p, k, st, d in
                zip(hw, attrs["padding"], kernel, attrs["stride"], attrs.get("dilation", (1, 1))))
    if any(o < 1 for o in out):
        raise ShapeError(f"the window {kernel} (dilation {attrs.get('dilation', (1, 1))}) does not fit the "
                         f"input {hw} padded by {attrs['padding']}: output would be {out}")
    return out


def float_dtype(xs):
    dtypes = {x.dtype for x in xs}
    if len(dtypes) > 1:
        raise DTypeError("operands have different dtypes " + " and ".join(x.dtype for x in xs)
                         + "; cast one with dlc.cast")
    dtype = xs[0].dtype
    if dtype not in ("float32", "float64"):
        raise DTypeError(f"needs float32 or float64 operands, got {dtype}")
    return dtype


# ----------------------------------------------------------------------------
# numpy building blocks: padded windows and their scatter-back


def pad_spatial(x: np.ndarray, padding, value=0.0) -> np.ndarray:
    if not any(lo or hi for lo, hi in padding):
        return x
    return np.pad(x, ((0, 0), (0, 0)) + tuple(padding), constant_values=value)


def windows(xp: np.ndarray, kernel, stride, dilation, out: tuple) -> np.ndarray:
    """A read-only (N, C, kh, kw, Ho, Wo) view of the windows of a padded (N, C, Hp, Wp) array."""
    sn, sc, sh, sw = xp.strides
    shape = xp.shape[:2] + tuple(kernel) + tuple(out)
    strides = (sn, sc, sh * dilation[0], sw * dilation[1], sh * stride[0], sw * stride[1])
    return np.lib.stride_tricks.as_strided(xp, shape, strides, writeable=False)


def scatter_windows(cols: np.ndarray, padded_hw, kernel, stride, dilation) -> np.ndarray:
    """The adjoint of `windows`: add each (N, C, kh, kw, Ho, Wo) value back at its padded position."""
    n, c, kh, kw, ho, wo = cols.shape
    out = np.zeros((n, c) + tuple(padded_hw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dilation[0], j * dilation[1]
            out[:, :, r0:r0 + stride[0] * (ho - 1) + 1:stride[0], c0:c0 + stride[1] * (wo - 1) + 1:stride[1]] \
                += cols[:, :, i, j]
    return out


def crop_spatial(xp: np.ndarray, padding, hw) -> np.ndarray:
    (top, _), (left, _) = padding
    return xp[:, :, top:top + hw[0], left:left + hw[1]]


def _cols(x, kernel, a, out):
    """im2col per sample and group: (N, G, Cg*kh*kw, Ho*Wo), a plain copy of the window view."""
    n = x.shape[0]
    win = windows(pad_spatial(x, a["padding"]), kernel, a["stride"], a["dilation"], out)
    rows = x.shape[1] // a["groups"] * kernel[0] * kernel[1]  # explicit, not -1: a batch may be empty
    return np.ascontiguousarray(win).reshape(n, a["groups"], rows, out[0] * out[1])


# Batched over (N, G): numpy runs one small GEMM per sample, which on these
# sizes beats gathering all samples into one big GEMM (that needs a
# transposing copy of the columns).


def conv2d_ref(x: np.ndarray, w: np.ndarray, a: dict) -> np.ndarray:
    n = x.shape[0]
    co, _, kh, kw = w.shape
    g = a["groups"]
    out = tuple(conv_out_size(s, p, k, st, d) for s, p, k, st, d in
                zip(x.shape[2:], a["padding"], (kh, kw), a["stride"], a["dilation"]))
    y = np.matmul(w.reshape(g, co // g, -1), _cols(x, (kh, kw), a, out))  # (N, G, Og, Ho*Wo)
    return y.reshape(n, co, out[0], out[1])


def conv2d_grad_input_ref(gy: np.ndarray, w: np.ndarray, a: dict) -> np.ndarray:
    """The adjoint of conv2d in its input: col2im of w^T @ gy. Also conv_transpose2d's forward."""
    n, co, ho, wo = gy.shape
    _, cg, kh, kw = w.shape
    g = a["groups"]
    wt = w.reshape(g, co // g, cg * kh * kw).transpose(0, 2, 1)
    cols = np.matmul(wt, gy.reshape(n, g, co // g, ho * wo))  # (N, G, Cg*kh*kw, Ho*Wo)
    cols = cols.reshape(n, g * cg, kh, kw, ho, wo)
    (top, bottom), (left, right) = a["padding"]
    h, wd = a["out_hw"]
    xp = scatter_windows(cols, (h + top + bottom, wd + left + right), (kh, kw), a["stride"], a["dilation"])
    return np.ascontiguousarray(crop_spatial(xp, a["padding"], (h, wd)))


def conv2d_grad_weight_ref(x: np.ndarray, gy: np.ndarray, a: dict) -> np.ndarray:
    """dL/dw of conv2d: the sum over samples of gy @ im2col(x)^T, per group."""
    n, co, ho, wo = gy.shape
    c = x.shape[1]
    g = a["groups"]
    kh, kw = a["kernel"]
    cols = _cols(x, (kh, kw), a, (ho, wo))
    dw = np.matmul(gy.reshape(n, g, co // g, ho * wo), cols.transpose(0, 1, 3, 2)).sum(axis=0)
    return dw.reshape(co, c // g, kh, kw)


# ----------------------------------------------------------------------------
# shape rules


def check_window_attrs(attrs, dilation: bool = True) -> None:
    """stride and dilation 2 ints >= 1, padding 2 (before, after) pairs >= 0; with groups an int >= 1."""
    check_ints(attrs["stride"], 2, "stride", 1)
    check_pairs(attrs["padding"], 2, "padding")
    if dilation:
        check_ints(attrs["dilation"], 2, "dilation", 1)
    if "groups" in attrs:
        check_int(attrs["groups"], "groups", 1)
    for key in ("out_hw", "kernel", "output_size"):
        if key in attrs:
            check_ints(attrs[key], 2, key, 1)


def _check_rank4(x, w):
    if x.ndim != 4:
        raise ShapeError(f"input must be 4-d (N, C, H, W), got {shape_str(x.shape)}")
    if w.ndim != 4:
        raise ShapeError(f"weight must be 4-d, got {shape_str(w.shape)}")
    if not all(isinstance(d, int) for d in w.shape) or min(w.shape[2:]) < 1:
        raise ShapeError(f"weight {shape_str(w.shape)} needs static dims and a kernel of at least 1x1")


def _check_groups(c_in, c_out, groups, w_cin, in_name, w_name):
    if c_in % groups or c_out % groups:
        raise ShapeError(f"groups={groups} must divide both the input channels ({c_in}) and the output "
                         f"channels ({c_out})")
    if c_in // groups != w_cin:
        raise ShapeError(f"{in_name} has {c_in} channels, so with groups={groups} the {w_name} should be "
                         f"{c_in // groups} per group, got {w_cin}")


def _conv2d_infer(xs, attrs):
    check_window_attrs(attrs)
    x, w = xs
    dtype = float_dtype(xs)
    _check_rank4(x, w)
    c, h, wd = spatial_ints(x.shape, "input")
    ho, wo = _conv_out_hw(x, w, c, (h, wd), attrs)
    return (x.shape[0], w.shape[0], ho, wo), dtype


def _conv_out_hw(x, w, c, hw, attrs) -> tuple:
    """The output plane of a conv of x (c channels, plane hw) with weight w; the groups checked."""
    co, cg, kh, kw = w.shape
    _check_groups(c, co, attrs["groups"], cg, f"input {shape_str(x.shape)}",
                  f"weight {shape_str(w.shape)} (C_out, C_in/groups, kh, kw) dim 1")
    return out_hw(hw, attrs, (kh, kw))


def _transposed_infer(xs, attrs, what):
    """conv2d_grad_input / conv_transpose2d: gy (N, C_out, Ho, Wo) and w (C_out, C_in/G, kh, kw) -> (N, C_in, H, W)."""
    check_window_attrs(attrs)
    gy, w = xs
    dtype = float_dtype(xs)
    _check_rank4(gy, w)
    co, ho, wo = spatial_ints(gy.shape, what)
    wco, cg, kh, kw = w.shape
    g = attrs["groups"]
    if co != wco:
        raise ShapeError(f"{what} {shape_str(gy.shape)} has {co} channels but the weight {shape_str(w.shape)} "
                         f"has {wco} in dim 0")
    if co % g:
        raise ShapeError(f"groups={g} must divide the channels of {what} ({co})")
    h, wd = attrs["out_hw"]
    expect = out_hw((h, wd), attrs, (kh, kw))
    if expect != (ho, wo):
        raise ShapeError(f"a conv2d over {h}x{wd} with kernel ({kh}, {kw}) gives {expect[0]}x{expect[1]}, "
                         f"but {what} is {ho}x{wo}")
    return (gy.shape[0], cg * g, h, wd), dtype


def _conv2d_grad_weight_infer(xs, attrs):
    check_window_attrs(attrs)
    x, gy = xs
    dtype = float_dtype(xs)
    if x.ndim != 4 or gy.ndim != 4:
        raise ShapeError("conv2d_grad_weight needs 4-d input and gradient")
    c, h, wd = spatial_ints(x.shape, "input")
    co, ho, wo = spatial_ints(gy.shape, "gradient")
    if x.shape[0] != gy.shape[0]:
        raise ShapeError(f"batch dims differ: {x.shape[0]} vs {gy.shape[0]}")
    g = attrs["groups"]
    if c % g or co % g:
        raise ShapeError(f"groups={g} must divide {c} and {co}")
    if out_hw((h, wd), attrs, attrs["kernel"]) != (ho, wo):
        raise ShapeError(f"gradient {shape_str(gy.shape)} does not match the conv2d output of {shape_str(x.shape)}")
    return (co, c // g) + tuple(attrs["kernel"]), dtype


def _conv2d_nhwc_infer(xs, attrs):
    """conv2d_nhwc: x (N, H, W, C) and w (C_out, C/groups, kh, kw) -> (N, Ho, Wo, C_out)."""
    check_window_attrs(attrs)
    x, w = xs
    dtype = float_dtype(xs)
    if x.ndim != 4:
        raise ShapeError(f"input must be 4-d (N, H, W, C), got {shape_str(x.shape)}")
    _check_rank4(x, w)
    h, wd, c = spatial_ints(x.shape, "input")
    ho, wo = _conv_out_hw(x, w, c, (h, wd), attrs)
    return (x.shape[0], ho, wo, w.shape[0]), dtype


def conv2d_nhwc_ref(x: np.ndarray, w: np.ndarray, a: dict) -> np.ndarray:
    return np.ascontiguousarray(conv2d_ref(x.transpose(0, 3, 1, 2), w, a).transpose(0, 2, 3, 1))


# ----------------------------------------------------------------------------
# gradient rules


def _conv_attrs(node):
    a = node.a
    return {k: a[k] for k in ("stride", "padding", "dilation", "groups")}


def _conv2d_grad(node, g, xs):
    F = _F()
    x, w = xs
    a = _conv_attrs(node)
    dx = F._apply("conv2d_grad_input", g, w, out_hw=tuple(x.shape[2:]), **a)
    dw = F._apply("conv2d_grad_weight", x, g, kernel=tuple(w.shape[2:]), **a)
    return [dx, dw]


def _conv_transpose2d_grad(node, g, xs):
    # y = A_w^T x, where A_w is the conv2d with these attrs: dx = A_w g, and
    # dw is conv2d's weight gradient with g as the conv input and x as its output gradient.
    F = _F()
    x, w = xs
    a = _conv_attrs(node)
    dx = F._apply("conv2d", g, w, **a)
    dw = F._apply("conv2d_grad_weight", g, x, kernel=tuple(w.shape[2:]), **a)
    return [dx, dw]


register("conv2d", COMPLEX, _conv2d_infer, lambda xs, a, shape: conv2d_ref(xs[0], xs[1], a), _conv2d_grad,
         doc="2-d cross-correlation, NCHW, PyTorch weight layout")
# conv2d on channels-last activations: made by the cpu target's layout pass (dlc/passes/layout.py) after the
# gradients are built, so it needs no gradient rule.
register("conv2d_nhwc", COMPLEX, _conv2d_nhwc_infer, lambda xs, a, shape: conv2d_nhwc_ref(xs[0], xs[1], a), None,
         doc="conv2d with x and the output channels last (N, H, W, C), PyTorch weight layout")
# The gradient ops have no gradient rule of their own: a second-order gradient
# through a convolution stops with a GradientError.
register("conv2d_grad_input", COMPLEX, lambda xs, a: _transposed_infer(xs, a, "gradient"),
         lambda xs, a, shape: conv2d_grad_input_ref(xs[0], xs[1], a), None,
         doc="dL/dx of conv2d from (dL/dy, w); attr out_hw is x's spatial size")
register("conv2d_grad_weight", COMPLEX, _conv2d_grad_weight_infer,
         lambda xs, a, shape: conv2d_grad_weight_ref(xs[0], xs[1], a), None,
         doc="dL/dw of conv2d from (x, dL/dy); attr kernel is (kh, kw)")
# Same computation and attributes as conv2d_grad_input (a backend may share
# the kernel), but a user-facing op, so it has a gradient rule.
register("conv_transpose2d", COMPLEX, lambda xs, a: _transposed_infer(xs, a, "input"),
         lambda xs, a, shape: conv2d_grad_input_ref(xs[0], xs[1], a), _conv_transpose2d_grad,
         doc="transposed convolution: the input-gradient of conv2d, weight (C_in, C_out/G, kh, kw)")


# ----------------------------------------------------------------------------
# user-facing functions


def where() -> str:
    """ " at file:line" of the user's call, for errors raised before an op is built."""
    loc = user_location()
    return f" at {loc}" if loc else ""


def _add_bias(y, b):
    if b is None:
        return y
    if b.ndim != 1:
        raise ShapeError(f"bias must be 1-d (C_out,), got {shape_str(b.shape)}{where()}")
    return y + _F().reshape(b, (b.shape[0],) + (1,) * (y.ndim - 2))


def _check_groups_arg(groups):
    if not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    return int(groups)


def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """2-d convolution (cross-correlation) of x (N, C_in, H, W) with w (C_out, C_in/groups, kh, kw), plus b (C_out,).

    padding: an int, (ph, pw), ((top, bottom), (left, right)), "valid" or "same".
    """
    stride, dilation = as_tuple(stride, 2, "stride"), as_tuple(dilation, 2, "dilation")
    kernel = tuple(w.shape[2:]) if w.ndim == 4 else None
    padding = as_padding(padding, 2, kernel, dilation, stride)
    y = _F()._apply("conv2d", x, w, stride=stride, padding=padding, dilation=dilation,
                    groups=_check_groups_arg(groups))
    return _add_bias(y, b)


def conv1d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """1-d convolution of x (N, C_in, L) with w (C_out, C_in/groups, k): conv2d over a unit height."""
    F = _F()
    if x.ndim != 3 or w.ndim != 3:
        raise ShapeError(f"conv1d needs x (N, C, L) and w (C_out, C_in/groups, k), got {shape_str(x.shape)} "
                         f"and {shape_str(w.shape)}{where()}")
    (s,), (d,) = as_tuple(stride, 1, "stride"), as_tuple(dilation, 1, "dilation")
    (pad,) = as_padding(padding, 1, (w.shape[2],), (d,), (s,))
    x4 = F.reshape(x, (x.shape[0], x.shape[1], 1, x.shape[2]))
    w4 = F.reshape(w, (w.shape[0], w.shape[1], 1, w.shape[2]))
    y = conv2d(x4, w4, None, (1, s), ((0, 0), pad), (1, d), groups)
    return _add_bias(F.reshape(y, (y.shape[0], y.shape[1], y.shape[3])), b)


def conv_transpose2d(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Transposed convolution of x (N, C_in, H, W) with w (C_in, C_out/groups, kh, kw), as PyTorch.

    Output size: (H - 1)*stride - (pad_before + pad_after) + dilation*(k - 1) + output_padding + 1,
    with output_padding < stride so the output determines the input size.
    """
    stride, dilation = as_tuple(stride, 2, "stride"), as_tuple(dilation, 2, "dilation")
    padding = as_padding(padding, 2)
    opad = (output_padding,) * 2 if isinstance(output_padding, (int, np.integer)) else tuple(output_padding)
    if len(opad) != 2 or any(not 0 <= p < s for p, s in zip(opad, stride)):
        raise ValueError(f"output_padding must be 2 ints, each >= 0 and smaller than the stride {stride}, "
                         f"got {output_padding!r}")
    if x.ndim != 4 or w.ndim != 4:
        raise ShapeError(f"conv_transpose2d needs 4-d x and w, got {shape_str(x.shape)} and {shape_str(w.shape)}"
                         f"{where()}")
    spatial_ints(x.shape, "conv_transpose2d input")
    size = tuple((i - 1) * s - sum(p) + d * (k - 1) + op + 1 for i, s, p, d, k, op in
                 zip(x.shape[2:], stride, padding, dilation, w.shape[2:], opad))
    if any(o < 1 for o in size):
        raise ShapeError(f"conv_transpose2d of {shape_str(x.shape)} with padding {padding} leaves no output "
                         f"({size}){where()}")
    y = _F()._apply("conv_transpose2d", x, w, stride=stride, padding=padding, dilation=dilation,
                    groups=_check_groups_arg(groups), out_hw=size)
    return _add_bias(y, b)


__all__ = ["conv1d", "conv2d", "conv_transpose2d"]
