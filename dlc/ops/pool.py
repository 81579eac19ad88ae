"""Pooling over NCHW: max_pool2d, avg_pool2d, adaptive_avg_pool2d, and their gradient ops.

Attributes: kernel (kh, kw), stride (sh, sw), padding ((top, bottom),
(left, right)); avg_pool2d adds count_include_pad; the gradient ops of pools
that do not read x add the input's spatial size (out_hw). References sweep
the kernel taps (kh*kw strided numpy operations), never the pixels.
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..graph import shape_str
from .base import COMPLEX, register
from .checks import check_bool, check_ints
from .conv import (
    as_padding,
    as_tuple,
    check_window_attrs,
    crop_spatial,
    float_dtype,
    out_hw,
    pad_spatial,
    spatial_ints,
    where,
    windows,
)


def _F():
    from .. import functional

    return functional


# ----------------------------------------------------------------------------
# shape rules


def _pool_out(shape, attrs, what="input"):
    """(N, C, Ho, Wo) of a pool over an input of this shape, checking attributes, rank, dims and padding."""
    check_window_attrs(attrs, dilation=False)
    if "count_include_pad" in attrs:
        check_bool(attrs["count_include_pad"], "count_include_pad")
    if len(shape) != 4:
        raise ShapeError(f"{what} must be 4-d (N, C, H, W), got {shape_str(shape)}")
    c, h, w = spatial_ints(shape, what)
    kernel = attrs["kernel"]
    for (lo, hi), k in zip(attrs["padding"], kernel):
        if 2 * max(lo, hi) > k:
            raise ShapeError(f"padding {attrs['padding']} is more than half the kernel {kernel}: a window could "
                             f"hold only padding")
    return (shape[0], c) + out_hw((h, w), attrs, kernel)


def _pool_infer(xs, attrs):
    return _pool_out(xs[0].shape, attrs), float_dtype(xs)


def _max_pool_grad_infer(xs, attrs):
    x, g = xs
    dtype = float_dtype(xs)
    expect = _pool_out(x.shape, attrs)
    if tuple(g.shape) != expect:
        raise ShapeError(f"gradient {shape_str(g.shape)} does not match the pool output {shape_str(expect)}")
    return x.shape, dtype


def _grad_from_out_hw_infer(xs, attrs):
    """avg_pool2d_grad: g (N, C, Ho, Wo) -> (N, C) + out_hw, checking that a pool over out_hw gives Ho, Wo."""
    check_window_attrs(attrs, dilation=False)
    g = xs[0]
    dtype = float_dtype(xs)
    if g.ndim != 4:
        raise ShapeError(f"gradient must be 4-d, got {shape_str(g.shape)}")
    shape = (g.shape[0], g.shape[1]) + tuple(attrs["out_hw"])
    if _pool_out(shape, attrs) != tuple(g.shape):
        raise ShapeError(f"gradient {shape_str(g.shape)} does not match a pool over {shape_str(shape)}")
    return shape, dtype


# ----------------------------------------------------------------------------
# numpy references


def _taps(kernel):
    return [(i, j) for i in range(kernel[0]) for j in range(kernel[1])]


def _tap_slices(kernel, stride, out):
    """For each kernel tap (row-major), the strided slice of the padded input it reads."""
    return [(slice(i, i + stride[0] * (out[0] - 1) + 1, stride[0]), slice(j, j + stride[1] * (out[1] - 1) + 1,
                                                                        stride[1])) for i, j in _taps(kernel)]


def _max_pool_argmax(x, a):
    """The max of each window and the index of its first maximal tap (row-major), as PyTorch picks on ties."""
    xp = pad_spatial(x, a["padding"], -np.inf)
    out = out_hw(x.shape[2:], a, a["kernel"])
    win = windows(xp, a["kernel"], a["stride"], (1, 1), out)
    best = win[:, :, 0, 0].copy()
    arg = np.zeros(best.shape, dtype=np.int32)
    for t, (i, j) in enumerate(_taps(a["kernel"])[1:], start=1):
        v = win[:, :, i, j]
        better = v > best
        np.copyto(best, v, where=better)
        arg[better] = t
    return best, arg


def max_pool2d_ref(x, a):
    xp = pad_spatial(x, a["padding"], -np.inf)
    win = windows(xp, a["kernel"], a["stride"], (1, 1), out_hw(x.shape[2:], a, a["kernel"]))
    best = win[:, :, 0, 0].copy()
    for i, j in _taps(a["kernel"])[1:]:
        np.maximum(best, win[:, :, i, j], out=best)
    return best


def max_pool2d_grad_ref(x, g, a):
    _, arg = _max_pool_argmax(x, a)
    (top, bottom), (left, right) = a["padding"]
    dxp = np.zeros(x.shape[:2] + (x.shape[2] + top + bottom, x.shape[3] + left + right), dtype=g.dtype)
    zero = np.zeros((), dtype=g.dtype)
    for t, (rows, cols) in enumerate(_tap_slices(a["kernel"], a["stride"], g.shape[2:])):
        dxp[:, :, rows, cols] += np.where(arg == t, g, zero)
    return np.ascontiguousarray(crop_spatial(dxp, a["padding"], x.shape[2:]))


def _avg_divisor(hw, a, dtype):
    """The number each window's sum is divided by: kh*kw, or the count of real (unpadded) elements."""
    kh, kw = a["kernel"]
    if a["count_include_pad"]:
        return np.asarray(kh * kw, dtype=dtype)
    ones = pad_spatial(np.ones((1, 1) + tuple(hw), dtype=dtype), a["padding"])
    out = out_hw(hw, a, a["kernel"])
    return windows(ones, a["kernel"], a["stride"], (1, 1), out).sum(axis=(2, 3))[0, 0]


def avg_pool2d_ref(x, a):
    xp = pad_spatial(x, a["padding"])
    out = out_hw(x.shape[2:], a, a["kernel"])
    total = np.zeros(x.shape[:2] + out, dtype=x.dtype)
    for rows, cols in _tap_slices(a["kernel"], a["stride"], out):
        total += xp[:, :, rows, cols]
    return total / _avg_divisor(x.shape[2:], a, x.dtype)


def avg_pool2d_grad_ref(g, a):
    h, w = a["out_hw"]
    (top, bottom), (left, right) = a["padding"]
    share = g / _avg_divisor((h, w), a, g.dtype)
    dxp = np.zeros(g.shape[:2] + (h + top + bottom, w + left + right), dtype=g.dtype)
    for rows, cols in _tap_slices(a["kernel"], a["stride"], g.shape[2:]):
        dxp[:, :, rows, cols] += share
    return np.ascontiguousarray(crop_spatial(dxp, a["padding"], (h, w)))


def adaptive_matrix(size: int, out: int, dtype) -> np.ndarray:
    """(out, size) averaging matrix: bin i covers [floor(i*size/out), ceil((i+1)*size/out)), as PyTorch."""
    m = np.zeros((out, size), dtype=dtype)
    for i in range(out):
        lo, hi = (i * size) // out, -((-(i + 1) * size) // out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def adaptive_avg_pool2d_ref(x, a):
    ph = adaptive_matrix(x.shape[2], a["output_size"][0], x.dtype)
    pw = adaptive_matrix(x.shape[3], a["output_size"][1], x.dtype)
    return np.matmul(np.matmul(ph, x), pw.T)


def adaptive_avg_pool2d_grad_ref(g, a):
    ph = adaptive_matrix(a["out_hw"][0], g.shape[2], g.dtype)
    pw = adaptive_matrix(a["out_hw"][1], g.shape[3], g.dtype)
    return np.matmul(np.matmul(ph.T, g), pw)


def _adaptive_infer(xs, attrs):
    x = xs[0]
    dtype = float_dtype(xs)
    if x.ndim != 4:
        raise ShapeError(f"input must be 4-d (N, C, H, W), got {shape_str(x.shape)}")
    c, h, w = spatial_ints(x.shape, "input")
    oh, ow = check_ints(attrs["output_size"], 2, "output_size", 1)
    if oh > h or ow > w:
        raise ShapeError(f"output size {(oh, ow)} is larger than the input's {(h, w)}")
    return (x.shape[0], c, oh, ow), dtype


def _adaptive_grad_infer(xs, attrs):
    g = xs[0]
    if g.ndim != 4:
        raise ShapeError(f"gradient must be 4-d, got {shape_str(g.shape)}")
    out = check_ints(attrs["output_size"], 2, "output_size", 1)
    h, w = check_ints(attrs["out_hw"], 2, "out_hw", 1)
    if tuple(spatial_ints(g.shape, "gradient")[1:]) != out or out[0] > h or out[1] > w:
        raise ShapeError(f"gradient {shape_str(g.shape)} does not match an adaptive pool of {(h, w)} to {out}")
    return (g.shape[0], g.shape[1]) + tuple(attrs["out_hw"]), float_dtype(xs)


# ----------------------------------------------------------------------------
# gradient rules and registration


def _max_pool_grad(node, g, xs):
    return [_F()._apply("max_pool2d_grad", xs[0], g, **node.a)]


def _avg_pool_grad(node, g, xs):
    return [_F()._apply("avg_pool2d_grad", g, out_hw=tuple(xs[0].shape[2:]), **node.a)]


def _adaptive_grad(node, g, xs):
    return [_F()._apply("adaptive_avg_pool2d_grad", g, out_hw=tuple(xs[0].shape[2:]), **node.a)]


register("max_pool2d", COMPLEX, _pool_infer, lambda xs, a, shape: max_pool2d_ref(xs[0], a), _max_pool_grad,
         doc="max over each window, padding counts as -inf")
register("avg_pool2d", COMPLEX, _pool_infer, lambda xs, a, shape: avg_pool2d_ref(xs[0], a), _avg_pool_grad,
         doc="mean over each window")
register("adaptive_avg_pool2d", COMPLEX, _adaptive_infer, lambda xs, a, shape: adaptive_avg_pool2d_ref(xs[0], a),
         _adaptive_grad, doc="mean over PyTorch's adaptive bins (used when they are not a plain avg_pool2d)")
# Gradient ops, without gradient rules of their own (second order stops with a GradientError).
register("max_pool2d_grad", COMPLEX, _max_pool_grad_infer,
         lambda xs, a, shape: max_pool2d_grad_ref(xs[0], xs[1], a), None,
         doc="(x, dL/dy) -> dL/dx: each window's gradient goes to its first maximal element")
register("avg_pool2d_grad", COMPLEX, _grad_from_out_hw_infer, lambda xs, a, shape: avg_pool2d_grad_ref(xs[0], a),
         None, doc="dL/dy -> dL/dx, spread evenly over each window")
register("adaptive_avg_pool2d_grad", COMPLEX, _adaptive_grad_infer,
         lambda xs, a, shape: adaptive_avg_pool2d_grad_ref(xs[0], a), None, doc="dL/dy -> dL/dx")


# ----------------------------------------------------------------------------
# user-facing functions


def _pool_attrs(kernel_size, stride, padding):
    kernel = as_tuple(kernel_size, 2, "kernel_size")
    stride = kernel if stride is None else as_tuple(stride, 2, "stride")
    return {"kernel": kernel, "stride": stride, "padding": as_padding(padding, 2)}


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """Max over kernel_size windows of x (N, C, H, W); stride defaults to the kernel; padding is -inf."""
    return _F()._apply("max_pool2d", x, **_pool_attrs(kernel_size, stride, padding))


def avg_pool2d(x, kernel_size, stride=None, padding=0, count_include_pad=True):
    """Mean over kernel_size windows of x (N, C, H, W); zero padding, counted in the divisor unless told not to."""
    return _F()._apply("avg_pool2d", x, count_include_pad=bool(count_include_pad),
                       **_pool_attrs(kernel_size, stride, padding))


def adaptive_avg_pool2d(x, output_size):
    """Mean-pool x (N, C, H, W) to output_size (an int or (oh, ow)) with PyTorch's bins.

    Global pooling (1, 1) is a sum over H and W times 1/(H*W) (a reduction the fusion pass
    can merge), evenly dividing sizes are an avg_pool2d, anything else is its
    own op.
    """
    F = _F()
    oh, ow = as_tuple(output_size, 2, "output_size")
    if x.ndim != 4:
        raise ShapeError(f"adaptive_avg_pool2d needs a 4-d (N, C, H, W) input, got {shape_str(x.shape)}{where()}")
    h, w = spatial_ints(x.shape, "adaptive_avg_pool2d input")[1:]
    if (oh, ow) == (1, 1):
        return F.sum(x, axis=(2, 3), keepdims=True) * (1.0 / (h * w))
    if h % oh == 0 and w % ow == 0:
        return avg_pool2d(x, (h // oh, w // ow))
    return F._apply("adaptive_avg_pool2d", x, output_size=(oh, ow))


__all__ = ["max_pool2d", "avg_pool2d", "adaptive_avg_pool2d"]
