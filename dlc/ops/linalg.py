"""Matrix products: matmul over 2-D and batched operands (batch dims broadcast)."""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..graph import dim_mul, shape_str
from .base import COMPLEX, register
from .elementwise import _same_dtype, broadcast_shapes, unbroadcast


def _F():
    from .. import functional

    return functional


def _matmul_infer(xs, attrs):
    a, b = xs
    dtype = _same_dtype(xs, ("float32", "float64"))
    if a.ndim < 2 or b.ndim < 2:
        raise ShapeError(f"matmul needs operands of rank 2 or more, got {shape_str(a.shape)} @ "
                         f"{shape_str(b.shape)}; reshape a vector to (1, n) or (n, 1)")
    if a.shape[-1] != b.shape[-2]:
        raise ShapeError(f"matmul inner dims differ: {shape_str(a.shape)} @ {shape_str(b.shape)} "
                         f"({a.shape[-1]} vs {b.shape[-2]})")
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return batch + (a.shape[-2], b.shape[-1]), dtype


def _swap(F, x):
    perm = tuple(range(x.ndim - 2)) + (x.ndim - 1, x.ndim - 2)
    return F.transpose(x, perm)


def _matmul_grad(node, g, xs):
    F = _F()
    a, b = xs
    da = unbroadcast(F.matmul(g, _swap(F, b)), a.shape)
    if b.ndim == 2 and a.ndim > 2:
        # a weight shared by every row of a batch (a Linear layer on (batch, time, features)): the sum over
        # the batch of a[i]^T g[i] is one product over all rows, (rows, K)^T (rows, N), with no (batch, K, N)
        # partial products to add up
        rows = dim_mul(*a.shape[:-1])   # not -1: K or N may be 0
        return [da, F.matmul(F.transpose(F.reshape(a, (rows, a.shape[-1])), (1, 0)),
                             F.reshape(g, (rows, g.shape[-1])))]
    return [da, unbroadcast(F.matmul(_swap(F, a), g), b.shape)]


register("matmul", COMPLEX, _matmul_infer, lambda xs, a, shape: np.matmul(xs[0], xs[1]), _matmul_grad)
