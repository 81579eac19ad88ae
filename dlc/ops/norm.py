"""Layer normalization as one op, and the op of its gradient.

    layer_norm(x)          -> (x - mean) / sqrt(var + eps) over x's last `dims` dims (biased variance)
    layer_norm_grad(x, g)  -> dL/dx given g = dL/d layer_norm(x)

Each row (the last `dims` dims of x, which must be known numbers) is
normalized on its own. Why an op and not mean/var/sub/mul: the composition is
three passes over x forward and about six backward, each storing a tensor of
x's size; the op is one pass each way, the statistics recomputed per row in
cache, and the affine scale and shift (and a residual add) fuse into its
kernel as an epilogue. The gradient op recomputes the row's mean and 1/std
from x instead of saving them:

    dx = (g - mean(g) - xhat * mean(g * xhat)) / std,  xhat = (x - mean) / std

Both accumulate in float64 (numpy's reference, the CPU and CUDA kernels).
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..graph import shape_str
from .base import COMPLEX, register
from .checks import check_float, check_int
from .conv import float_dtype, where


def _F():
    from .. import functional

    return functional


def _row_dims(x, attrs) -> int:
    dims = check_int(attrs["dims"], "dims", 1, max(1, x.ndim))
    trailing = x.shape[x.ndim - dims:]
    if not all(isinstance(d, int) and d >= 1 for d in trailing):
        raise ShapeError(f"layer_norm normalizes over known dims of at least 1, got {shape_str(trailing)} "
                         f"(the last {dims} of {shape_str(x.shape)})")
    check_float(attrs["eps"], "eps")
    if not attrs["eps"] > 0:
        raise ValueError(f"layer_norm: eps must be positive, got {attrs['eps']!r}")
    return dims


def _infer(xs, attrs):
    (x,) = xs
    dtype = float_dtype(xs)
    _row_dims(x, attrs)
    return x.shape, dtype


def _grad_infer(xs, attrs):
    x, g = xs
    dtype = float_dtype(xs)
    _row_dims(x, attrs)
    if tuple(g.shape) != tuple(x.shape):
        raise ShapeError(f"layer_norm_grad: the gradient {shape_str(g.shape)} must have x's shape "
                         f"{shape_str(x.shape)}")
    return x.shape, dtype


def _rows(x: np.ndarray, dims: int) -> np.ndarray:
    n = int(np.prod(x.shape[x.ndim - dims:], dtype=np.int64))
    return x.reshape(-1, n).astype(np.float64)


def _stats(x64: np.ndarray, eps: float):
    mean = x64.mean(axis=1, keepdims=True)
    rstd = 1.0 / np.sqrt(((x64 - mean) ** 2).mean(axis=1, keepdims=True) + eps)
    return mean, rstd


def layer_norm_ref(xs, a):
    (x,) = xs
    x64 = _rows(x, a["dims"])
    mean, rstd = _stats(x64, a["eps"])
    return ((x64 - mean) * rstd).astype(x.dtype).reshape(x.shape)


def layer_norm_grad_ref(xs, a):
    x, g = xs
    x64, g64 = _rows(x, a["dims"]), _rows(g, a["dims"])
    mean, rstd = _stats(x64, a["eps"])
    xhat = (x64 - mean) * rstd
    dx = rstd * (g64 - g64.mean(axis=1, keepdims=True) - xhat * (g64 * xhat).mean(axis=1, keepdims=True))
    return dx.astype(x.dtype).reshape(x.shape)


def _grad(node, g, xs):
    return [_F()._apply("layer_norm_grad", xs[0], g, **node.a)]


register("layer_norm", COMPLEX, _infer, lambda xs, a, shape: layer_norm_ref(xs, a), _grad,
         doc="(x - mean) / sqrt(var + eps) over the last `dims` dims")
# The gradient op has no gradient rule: a second-order gradient through layer_norm stops with a GradientError.
register("layer_norm_grad", COMPLEX, _grad_infer, lambda xs, a, shape: layer_norm_grad_ref(xs, a), None,
         doc="(x, dL/dy) -> dL/dx of layer_norm, recomputing each row's mean and 1/std")


def layer_norm(x, normalized_shape, weight=None, bias=None, eps: float = 1e-5):
    """torch.nn.functional.layer_norm: normalize over the trailing dims `normalized_shape` (an int or a
    tuple), then scale by weight and shift by bias (each of that shape) when given; one fused kernel."""
    F = _F()
    shape = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) else tuple(normalized_shape)
    if not isinstance(x, F.Tensor):
        x = F.tensor(x)
    k = len(shape)
    if k == 0 or k > x.ndim or tuple(x.shape[x.ndim - k:]) != shape:
        raise ShapeError(f"layer_norm: the input's last dims must be {shape_str(shape)}, got "
                         f"{shape_str(x.shape)}{where()}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating)) or not eps > 0:
        raise ValueError(f"layer_norm: eps must be a positive number, got {eps!r}{where()}")
    y = F._apply("layer_norm", x, dims=k, eps=float(eps))
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


__all__ = ["layer_norm"]
