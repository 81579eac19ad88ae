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
def _is_2x2(kh, kw, sh, sw, pt, pl, H, W, ho, wo):
    """The 2x2, stride-2 pool of every CNN, every window inside the input: unrolled below."""
    return kh == 2 and kw == 2 and sh == 2 and sw == 2 and pt == 0 and pl == 0 and 2 * ho <= H and 2 * wo <= W


@njit(inline="always", error_model="numpy")
def _nanmax(a, b):
    return b if (b > a or b != b) else a


@njit(**JIT)
def _max_pool_2x2(x, out):
    N, C = x.shape[0], x.shape[1]
    ho, wo = out.shape[2], out.shape[3]
    for n in range(N):
        for c in range(C):
            for oh in range(ho):
                for ow in range(wo):
                    best = _nanmax(x[n, c, 2 * oh, 2 * ow], x[n, c, 2 * oh, 2 * ow + 1])
                    best = _nanmax(best, x[n, c, 2 * oh + 1, 2 * ow])
                    out[n, c, oh, ow] = _nanmax(best, x[n, c, 2 * oh + 1, 2 * ow + 1])


@njit(**JIT)
def _max_pool_grad_2x2(x, g, out):
    N, C = x.shape[0], x.shape[1]
    ho, wo = g.shape[2], g.shape[3]
    zero = out.dtype.type(0)
    if 2 * ho != x.shape[2] or 2 * wo != x.shape[3]:
        out[:] = 0  # rows or columns no window covers
    for n in range(N):
        for c in range(C):
            for oh in range(ho):
                r = 2 * oh
                for ow in range(wo):
                    s = 2 * ow
                    a, b, d, e = x[n, c, r, s], x[n, c, r, s + 1], x[n, c, r + 1, s], x[n, c, r + 1, s + 1]
                    best, t = a, 0  # the first maximal tap, row-major; a NaN at tap 0 keeps it
                    if b > best:
                        best, t = b, 1
                    if d > best:
                        best, t = d, 2
                    if e > best:
                        t = 3
                    v = zero + g[n, c, oh, ow]  # added to zeros, as the reference does (-0.0 becomes 0.0)
                    out[n, c, r, s] = v if t == 0 else zero
                    out[n, c, r, s + 1] = v if t == 1 else zero
                    out[n, c, r + 1, s] = v if t == 2 else zero
                    out[n, c, r + 1, s + 1] = v if t == 3 else zero


@njit(**JIT)
def max_pool2d(x, out, kh, kw, sh, sw, pt, pl):
    """out = the max of each window; padding counts as -inf and a NaN wins, as numpy's maximum."""
    N, C, H, W = x.shape
    ho, wo = out.shape[2], out.shape[3]
    if _is_2x2(kh, kw, sh, sw, pt, pl, H, W, ho, wo):
        _max_pool_2x2(x, out)
        return
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
    if _is_2x2(kh, kw, sh, sw, pt, pl, H, W, ho, wo):
        _max_pool_grad_2x2(x, g, out)
        return
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
