"""Pooling for generated CPU kernels: max, average and adaptive average pools over NCHW and their gradients.

Imported by the CPU backend as the module `dlc_cpu_pool`. Attributes follow
dlc/ops/pool.py; `pt`, `pl` are the top and left paddings (the bottom and
right ones follow from the shapes). Each window visits only its in-bounds
taps (bounds computed once per row and column, no test per tap), in the
reference's row-major tap order, so max pools pick the same element on ties
and average pools sum in the same order. Every function writes all of `out`.
"""

import numpy as np
from numba import njit

JIT = dict(cache=True, error_model="numpy", nogil=True, boundscheck=False)


@njit(**JIT)
def tap_range(o, stride, pad, k, size):
    """The taps t in [lo, hi) of window o whose input position o*stride - pad + t lies in [0, size)."""
    start = o * stride - pad
    return max(0, -start), min(k, size - start), start


@njit(**JIT)
def max_pool2d(x, out, kh, kw, sh, sw, pt, pl):
    """out = the max of each window; padding counts as -inf and a NaN wins, as numpy's maximum."""
    N, C, H, W = x.shape
    ho, wo = out.shape[2], out.shape[3]
    for n in range(N):
        for c in range(C):
            for oh in range(ho):
                i0, i1, r = tap_range(oh, sh, pt, kh, H)
                for ow in range(wo):
                    j0, j1, s = tap_range(ow, sw, pl, kw, W)
                    best = -np.inf
                    for i in range(i0, i1):
                        for j in range(j0, j1):
                            v = x[n, c, r + i, s + j]
                            if v > best or v != v:
                                best = v
                    out[n, c, oh, ow] = best


@njit(**JIT)
def max_pool2d_grad(x, g, out, kh, kw, sh, sw, pt, pl):
    """out = each window's gradient added at its first maximal tap (row-major), as the reference's argmax."""
    N, C, H, W = x.shape
    ho, wo = g.shape[2], g.shape[3]
    out[:] = 0
    for n in range(N):
        for c in range(C):
            for oh in range(ho):
                i0, i1, r = tap_range(oh, sh, pt, kh, H)
                for ow in range(wo):
                    j0, j1, s = tap_range(ow, sw, pl, kw, W)
                    # tap (0, 0) is the first candidate even when it is a NaN; a padded one holds -inf
                    best = -np.inf
                    bi, bj = -1, -1
                    for i in range(i0, i1):
                        for j in range(j0, j1):
                            v = x[n, c, r + i, s + j]
                            if (i == 0 and j == 0) or v > best:
                                best = v
                                bi, bj = i, j
                    if bi >= 0:
                        out[n, c, r + bi, s + bj] += g[n, c, oh, ow]


@njit(**JIT)
def _divisor(i0, i1, j0, j1, kh, kw, count_include_pad):
    return kh * kw if count_include_pad else (i1 - i0) * (j1 - j0)


@njit(**JIT)
def avg_pool2d(x, out, kh, kw, sh, sw, pt, pl, count_include_pad):
    """out = each window's sum over its real taps divided by kh*kw, or by the count of real taps."""
    N, C, H, W = x.shape
    ho, wo = out.shape[2], out.shape[3]
    zero = x.dtype.type(0)
    for n in range(N):
        for c in range(C):
            for oh in range(ho):
                i0, i1, r = tap_range(oh, sh, pt, kh, H)
                for ow in range(wo):
                    j0, j1, s = tap_range(ow, sw, pl, kw, W)
                    total = zero
                    for i in range(i0, i1):
                        for j in range(j0, j1):
                            total += x[n, c, r + i, s + j]
                    out[n, c, oh, ow] = total / x.dtype.type(_divisor(i0, i1, j0, j1, kh, kw, count_include_pad))


@njit(**JIT)
def avg_pool2d_grad(g, out, kh, kw, sh, sw, pt, pl, count_include_pad):
    """out = each window's gradient, divided as in the forward pass, spread over its real taps."""
    N, C, H, W = out.shape
    ho, wo = g.shape[2], g.shape[3]
    out[:] = 0
    for n in range(N):
        for c in range(C):
            for oh in range(ho):
                i0, i1, r = tap_range(oh, sh, pt, kh, H)
                for ow in range(wo):
                    j0, j1, s = tap_range(ow, sw, pl, kw, W)
                    share = g[n, c, oh, ow] / g.dtype.type(_divisor(i0, i1, j0, j1, kh, kw, count_include_pad))
                    for i in range(i0, i1):
                        for j in range(j0, j1):
                            out[n, c, r + i, s + j] += share


@njit(**JIT)
def adaptive_bin(i, size, count):
    """PyTorch's adaptive bin i of `count` over `size`: [floor(i*size/count), ceil((i+1)*size/count))."""
    return (i * size) // count, -((-(i + 1) * size) // count)


@njit(**JIT)
def adaptive_avg_pool2d(x, out):
    """out[.., i, j] = the mean of x over the rows of bin i and the columns of bin j."""
    N, C, H, W = x.shape
    oh, ow = out.shape[2], out.shape[3]
    for n in range(N):
        for c in range(C):
            for i in range(oh):
                r0, r1 = adaptive_bin(i, H, oh)
                for j in range(ow):
                    s0, s1 = adaptive_bin(j, W, ow)
                    total = 0.0
                    for r in range(r0, r1):
                        for s in range(s0, s1):
                            total += x[n, c, r, s]
                    out[n, c, i, j] = total / ((r1 - r0) * (s1 - s0))


@njit(**JIT)
def adaptive_avg_pool2d_grad(g, out):
    """out = each bin's gradient spread evenly over the bin (bins may overlap: contributions add)."""
    N, C, H, W = out.shape
    oh, ow = g.shape[2], g.shape[3]
    out[:] = 0
    for n in range(N):
        for c in range(C):
            for i in range(oh):
                r0, r1 = adaptive_bin(i, H, oh)
                for j in range(ow):
                    s0, s1 = adaptive_bin(j, W, ow)
                    share = g[n, c, i, j] / ((r1 - r0) * (s1 - s0))
                    for r in range(r0, r1):
                        for s in range(s0, s1):
                            out[n, c, r, s] += share
