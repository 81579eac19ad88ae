"""Convolutions for generated CPU kernels: im2col/col2im per sample and BLAS GEMMs (np.dot) per group.

Imported by the CPU backend as the module `dlc_cpu_conv`. Layouts and
attributes are those of dlc/ops/conv.py: x (N, C, H, W), a conv2d weight
(C_out, C_in/G, kh, kw); `pt`, `pl` are the top and left paddings (the
bottom and right ones follow from the output's shape). Every function writes
all of `out`, whatever it held.

Why per sample: the column matrix of one sample (C*kh*kw, Ho*Wo) stays in
the L2 cache, and the GEMM writes straight into the NCHW output (its rows are
output channels), so no transposing copy is needed. Measured on LeNet-5's
shapes (2 cores, float32, a busy machine, so ratios only): against direct
loops accumulating output rows tap by tap, im2col + GEMM took 0.23x the time
for 1->6 5x5 pad 2 on 28x28 and 0.1x for 6->16 5x5 on 14x14 at batch 64, and
0.25x and 0.05x at batch 1. Splitting the samples over two threads (prange)
was slower: the threads fight BLAS's own pool.
"""

import numpy as np
from numba import njit

JIT = dict(cache=True, error_model="numpy", nogil=True, boundscheck=False)


@njit(**JIT)
def _ceil_div(a, b):
    return -((-a) // b)


@njit(**JIT)
def valid_range(offset, stride, size, count):
    """The outputs o in [lo, hi) of 0..count whose input position o*stride + offset lies in [0, size)."""
    lo = max(0, _ceil_div(-offset, stride))
    hi = min(count, _ceil_div(size - offset, stride))
    return lo, max(lo, hi)


@njit(**JIT)
def dot(a, b, out):
    """out = a @ b through BLAS; an empty contraction gives zeros and never reaches BLAS."""
    if out.size == 0:
        return
    if a.shape[1] == 0:
        out[:, :] = 0
        return
    np.dot(a, b, out)


@njit(**JIT)
def im2col(x, n, cols, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo):
    """cols[(c*kh + i)*kw + j, oh*wo + ow] = x[n, c, oh*sh - pt + i*dh, ow*sw - pl + j*dw], 0 in the padding."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    for c in range(C):
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                off = j * dw - pl
                lo, hi = valid_range(off, sw, W, wo)
                dst_row = cols[row]
                for oh in range(ho):
                    ih = oh * sh - pt + i * dh
                    dst = dst_row[oh * wo:(oh + 1) * wo]
                    if ih < 0 or ih >= H:
                        for k in range(wo):
                            dst[k] = 0
                        continue
                    for k in range(lo):
                        dst[k] = 0
                    src = x[n, c, ih]
                    if sw == 1:
                        # 1-d views indexed from 0: no 4-d address and index wraparound per element,
                        # and a unit stride LLVM can vectorise (2x faster on LeNet's 28-wide rows)
                        s = src[lo + off:hi + off]
                        d = dst[lo:hi]
                        for k in range(hi - lo):
                            d[k] = s[k]
                    else:
                        for ow in range(lo, hi):
                            dst[ow] = src[ow * sw + off]
                    for k in range(hi, wo):
                        dst[k] = 0


@njit(**JIT)
def col2im(cols, out, n, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo):
    """The adjoint of im2col: out[n] = 0, then every column value added back at its input position."""
    C, H, W = out.shape[1], out.shape[2], out.shape[3]
    out[n] = 0
    for c in range(C):
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                off = j * dw - pl
                lo, hi = valid_range(off, sw, W, wo)
                for oh in range(ho):
                    ih = oh * sh - pt + i * dh
                    if ih < 0 or ih >= H:
                        continue
                    base = oh * wo
                    if sw == 1:
                        for ow in range(lo, hi):
                            out[n, c, ih, ow + off] += cols[row, base + ow]
                    else:
                        for ow in range(lo, hi):
                            out[n, c, ih, ow * sw + off] += cols[row, base + ow]


@njit(**JIT)
def _is_pointwise(kh, kw, sh, sw, pt, pl, H, W, ho, wo):
    """A 1x1, stride-1, unpadded window: a sample's columns are its own (C, H*W) matrix."""
    return kh == 1 and kw == 1 and sh == 1 and sw == 1 and pt == 0 and pl == 0 and ho == H and wo == W


@njit(**JIT)
def conv2d(x, w, out, sh, sw, pt, pl, dh, dw, groups):
    """out (N, C_out, Ho, Wo) = x (N, C, H, W) cross-correlated with w (C_out, C/groups, kh, kw)."""
    N, C, H, W = x.shape
    co, cg, kh, kw = w.shape
    ho, wo = out.shape[2], out.shape[3]
    kg, og = cg * kh * kw, co // groups
    w2 = w.reshape(co, kg)
    pointwise = _is_pointwise(kh, kw, sh, sw, pt, pl, H, W, ho, wo)
    cols = np.empty((0 if pointwise else C * kh * kw, ho * wo), x.dtype)
    for n in range(N):
        # a variable of its own for x's view: x may be read-only, and cols must stay writable for im2col
        src = x[n].reshape(C, H * W) if pointwise else cols
        if not pointwise:
            im2col(x, n, cols, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo)
        o2 = out[n].reshape(co, ho * wo)
        for g in range(groups):
            dot(w2[g * og:(g + 1) * og], src[g * kg:(g + 1) * kg], o2[g * og:(g + 1) * og])


@njit(**JIT)
def conv2d_grad_input(gy, w, out, sh, sw, pt, pl, dh, dw, groups):
    """out (N, C, H, W) = the adjoint of conv2d in x, applied to gy (N, C_out, Ho, Wo); conv_transpose2d too."""
    N, co, ho, wo = gy.shape
    _, cg, kh, kw = w.shape
    C, H, W = out.shape[1], out.shape[2], out.shape[3]
    kg, og = cg * kh * kw, co // groups
    w2 = w.reshape(co, kg)
    pointwise = _is_pointwise(kh, kw, sh, sw, pt, pl, H, W, ho, wo)
    cols = np.empty((0 if pointwise else C * kh * kw, ho * wo), gy.dtype)
    for n in range(N):
        g2 = gy[n].reshape(co, ho * wo)
        if pointwise:
            cols = out[n].reshape(C, H * W)  # the columns are the output itself
        for g in range(groups):
            dot(w2[g * og:(g + 1) * og].T, g2[g * og:(g + 1) * og], cols[g * kg:(g + 1) * kg])
        if not pointwise:
            col2im(cols, out, n, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo)


@njit(**JIT)
def conv2d_grad_weight(x, gy, out, sh, sw, pt, pl, dh, dw, groups):
    """out (C_out, C/groups, kh, kw) = the sum over samples of gy[n] @ im2col(x[n])^T, per group."""
    N, C, H, W = x.shape
    co, ho, wo = gy.shape[1], gy.shape[2], gy.shape[3]
    _, cg, kh, kw = out.shape
    kg, og = cg * kh * kw, co // groups
    acc = out.reshape(co, kg)
    acc[:, :] = 0
    if N == 0:
        return
    part = np.empty((og, kg), out.dtype)
    pointwise = _is_pointwise(kh, kw, sh, sw, pt, pl, H, W, ho, wo)
    cols = np.empty((0 if pointwise else C * kh * kw, ho * wo), x.dtype)
    for n in range(N):
        src = x[n].reshape(C, H * W) if pointwise else cols   # x may be read-only: cols stays writable
        if not pointwise:
            im2col(x, n, cols, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo)
        g2 = gy[n].reshape(co, ho * wo)
        for g in range(groups):
            dot(g2[g * og:(g + 1) * og], src[g * kg:(g + 1) * kg].T, part)
            acc[g * og:(g + 1) * og] += part
