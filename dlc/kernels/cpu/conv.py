"""Convolutions for generated CPU kernels: im2col/col2im and BLAS GEMMs (np.dot) per group.

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

Why batched when a sample's output is small: below BATCH_BELOW output
positions (ResNet's 4x4 stage) a per-sample GEMM is a thin matrix product
(M = C_out, N = Ho*Wo) that reads the whole weight matrix for a few columns;
the columns of several samples side by side (up to COLUMNS of them) make one
GEMM that reads the weights once for all of them. The forward's output and
dgrad's gradient then go back to or come from NCHW sample by sample, a copy
that costs more than it saves from 8x8 outputs up; the weight gradient only
gathers dL/dy, and gains up to WGRAD_BATCH_BELOW. Measured single-threaded
(batch 32, new/old time): 4x4 outputs 512->512 3x3 fwd 0.77, dgrad 0.43,
wgrad 0.31; 8x8 256->256 fwd 1.07-1.21, dgrad 0.88-1.0, wgrad 0.84-0.89;
LeNet's 10x10 fwd 1.19-1.22, wgrad 0.93-1.01.

Why direct loops for depthwise convolutions (one input channel per group, as
in MobileNet): there each group's GEMM is a 1 x (kh*kw) times (kh*kw) x
(Ho*Wo) product, a BLAS call per channel and sample for a few multiply-adds
per output; the window loops accumulate rows of the output instead, with a
unit-stride inner loop LLVM vectorises. Measured single-threaded against a
GEMM per channel (new/old time, noisy machine): 32 channels 56x56 3x3 at
batch 16 fwd 0.25-0.59, dgrad 0.08-0.20, wgrad 0.75; 128 channels 28x28
stride 2 fwd 0.63-0.72, dgrad 0.90-0.95, wgrad 0.77-0.87; 512 channels 7x7
at batch 1 fwd 0.22-0.30, dgrad 0.51-0.56, wgrad 0.35-0.42.
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
def im2col(x, n, cols, col0, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo):
    """cols[(c*kh + i)*kw + j, col0 + oh*wo + ow] = x[n, c, oh*sh - pt + i*dh, ow*sw - pl + j*dw], 0 in the
    padding (col0: where this sample's columns start among several samples')."""
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
                    dst = dst_row[col0 + oh * wo:col0 + (oh + 1) * wo]
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
def col2im(cols, col0, out, n, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo):
    """The adjoint of im2col: out[n] = 0, then every column value from col0 on added back at its input position."""
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
                    base = col0 + oh * wo
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


BATCH_BELOW = 64         # output positions per sample under which samples share one GEMM (fwd, dgrad)
WGRAD_BATCH_BELOW = 100  # the same for the weight gradient
COLUMNS = 2048           # the most columns (samples x positions) of one shared GEMM


@njit(**JIT)
def samples_columns(x, n0, nb, cols, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo):
    """The columns of samples n0 .. n0 + nb - 1 side by side: sample n0 + j from column j * Ho*Wo on."""
    for j in range(nb):
        im2col(x, n0 + j, cols, j * ho * wo, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo)


@njit(**JIT)
def samples_rows(gy, n0, nb, g, og, rows):
    """Group g's rows of dL/dy for samples n0 .. n0 + nb - 1 side by side, as samples_columns lays them out."""
    hw = gy.shape[2] * gy.shape[3]
    for j in range(nb):
        rows[:, j * hw:(j + 1) * hw] = gy[n0 + j].reshape(gy.shape[1], hw)[g * og:(g + 1) * og]


@njit(**JIT)
def samples_per_gemm(N, hw, pointwise, below):
    """How many samples share one GEMM: 1 (per sample), or the largest divisor of N within COLUMNS columns
    (a divisor: every GEMM then has the same contiguous operands)."""
    if pointwise or hw >= below or N < 2 or hw == 0:
        return 1
    cap = max(1, COLUMNS // hw)
    for nb in range(min(N, cap), 0, -1):
        if N % nb == 0:
            return nb
    return 1


@njit(**JIT)
def _is_depthwise(cg, kh, kw):
    """One input channel per group and a real window: the direct loops below beat a GEMM per channel."""
    return cg == 1 and kh * kw > 1


@njit(inline="always", **JIT)
def _add_gathered(dst, src, scale, lo, hi, off, sw):
    """dst[ow] += scale * src[ow * sw + off] for ow in [lo, hi): one output row's share of one tap."""
    if sw == 1:
        d, q = dst[lo:hi], src[lo + off:hi + off]
        for k in range(hi - lo):
            d[k] += scale * q[k]
    else:
        for ow in range(lo, hi):
            dst[ow] += scale * src[ow * sw + off]


@njit(inline="always", **JIT)
def _add_scattered(dst, src, scale, lo, hi, off, sw):
    """dst[ow * sw + off] += scale * src[ow] for ow in [lo, hi): the adjoint of _add_gathered."""
    if sw == 1:
        d, q = dst[lo + off:hi + off], src[lo:hi]
        for k in range(hi - lo):
            d[k] += scale * q[k]
    else:
        for ow in range(lo, hi):
            dst[ow * sw + off] += scale * src[ow]


@njit(inline="always", **JIT)
def _add_products(dst, a, src, lo, hi, off, sw):
    """dst[ow] += a[ow] * src[ow * sw + off] for ow in [lo, hi): one tap's weight gradient, lane by lane."""
    if sw == 1:
        d, r, q = dst[lo:hi], a[lo:hi], src[lo + off:hi + off]
        for k in range(hi - lo):
            d[k] += r[k] * q[k]
    else:
        for ow in range(lo, hi):
            dst[ow] += a[ow] * src[ow * sw + off]


@njit(**JIT)
def depthwise_conv2d(x, w, out, sh, sw, pt, pl, dh, dw):
    """conv2d with C/groups == 1: out[n, o] = sum over the window of x[n, o // (C_out/C)] * w[o, 0]."""
    N = x.shape[0]
    H, W = x.shape[2], x.shape[3]
    co, _, kh, kw = w.shape
    ho, wo = out.shape[2], out.shape[3]
    per_channel = co // x.shape[1]
    for n in range(N):
        for o in range(co):
            src = x[n, o // per_channel]
            dst = out[n, o]
            dst[:, :] = 0
            for i in range(kh):
                for j in range(kw):
                    wv = w[o, 0, i, j]
                    off = j * dw - pl
                    lo, hi = valid_range(off, sw, W, wo)
                    for oh in range(ho):
                        ih = oh * sh - pt + i * dh
                        if ih < 0 or ih >= H:
                            continue
                        _add_gathered(dst[oh], src[ih], wv, lo, hi, off, sw)


@njit(**JIT)
def depthwise_conv2d_grad_input(gy, w, out, sh, sw, pt, pl, dh, dw):
    """The adjoint of depthwise_conv2d in x: every dL/dy value times its tap, added back at its input."""
    N = gy.shape[0]
    H, W = out.shape[2], out.shape[3]
    co, _, kh, kw = w.shape
    ho, wo = gy.shape[2], gy.shape[3]
    per_channel = co // out.shape[1]
    out[:] = 0
    for n in range(N):
        for o in range(co):
            g, dst = gy[n, o], out[n, o // per_channel]
            for i in range(kh):
                for j in range(kw):
                    wv = w[o, 0, i, j]
                    off = j * dw - pl
                    lo, hi = valid_range(off, sw, W, wo)
                    for oh in range(ho):
                        ih = oh * sh - pt + i * dh
                        if ih < 0 or ih >= H:
                            continue
                        _add_scattered(dst[ih], g[oh], wv, lo, hi, off, sw)


@njit(**JIT)
def depthwise_conv2d_grad_weight(x, gy, out, sh, sw, pt, pl, dh, dw):
    """dL/dw of depthwise_conv2d: per tap, the sum over samples and outputs of dL/dy times the input it read
    (summed by output column first: a vectorisable row update, then one sum per tap)."""
    N = x.shape[0]
    H, W = x.shape[2], x.shape[3]
    co, _, kh, kw = out.shape
    ho, wo = gy.shape[2], gy.shape[3]
    per_channel = co // x.shape[1]
    lanes = np.empty(wo, out.dtype)
    for o in range(co):
        for i in range(kh):
            for j in range(kw):
                off = j * dw - pl
                lo, hi = valid_range(off, sw, W, wo)
                lanes[:] = 0
                for n in range(N):
                    src, g = x[n, o // per_channel], gy[n, o]
                    for oh in range(ho):
                        ih = oh * sh - pt + i * dh
                        if ih < 0 or ih >= H:
                            continue
                        _add_products(lanes, g[oh], src[ih], lo, hi, off, sw)
                out[o, 0, i, j] = lanes.sum()


@njit(**JIT)
def conv2d(x, w, out, sh, sw, pt, pl, dh, dw, groups):
    """out (N, C_out, Ho, Wo) = x (N, C, H, W) cross-correlated with w (C_out, C/groups, kh, kw)."""
    N, C, H, W = x.shape
    co, cg, kh, kw = w.shape
    ho, wo = out.shape[2], out.shape[3]
    if _is_depthwise(cg, kh, kw):
        return depthwise_conv2d(x, w, out, sh, sw, pt, pl, dh, dw)
    kg, og = cg * kh * kw, co // groups
    w2 = w.reshape(co, kg)
    pointwise = _is_pointwise(kh, kw, sh, sw, pt, pl, H, W, ho, wo)
    hw = ho * wo
    nb = samples_per_gemm(N, hw, pointwise, BATCH_BELOW)
    if nb > 1:
        cols = np.empty((C * kh * kw, nb * hw), x.dtype)
        part = np.empty((og, nb * hw), x.dtype)
        for n0 in range(0, N, nb):
            samples_columns(x, n0, nb, cols, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo)
            for g in range(groups):
                dot(w2[g * og:(g + 1) * og], cols[g * kg:(g + 1) * kg], part)
                for j in range(nb):
                    out[n0 + j].reshape(co, hw)[g * og:(g + 1) * og] = part[:, j * hw:(j + 1) * hw]
        return
    cols = np.empty((0 if pointwise else C * kh * kw, ho * wo), x.dtype)
    for n in range(N):
        # a variable of its own for x's view: x may be read-only, and cols must stay writable for im2col
        src = x[n].reshape(C, H * W) if pointwise else cols
        if not pointwise:
            im2col(x, n, cols, 0, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo)
        o2 = out[n].reshape(co, ho * wo)
        for g in range(groups):
            dot(w2[g * og:(g + 1) * og], src[g * kg:(g + 1) * kg], o2[g * og:(g + 1) * og])


@njit(**JIT)
def conv2d_grad_input(gy, w, out, sh, sw, pt, pl, dh, dw, groups):
    """out (N, C, H, W) = the adjoint of conv2d in x, applied to gy (N, C_out, Ho, Wo); conv_transpose2d too."""
    N, co, ho, wo = gy.shape
    _, cg, kh, kw = w.shape
    C, H, W = out.shape[1], out.shape[2], out.shape[3]
    if _is_depthwise(cg, kh, kw):
        return depthwise_conv2d_grad_input(gy, w, out, sh, sw, pt, pl, dh, dw)
    kg, og = cg * kh * kw, co // groups
    w2 = w.reshape(co, kg)
    pointwise = _is_pointwise(kh, kw, sh, sw, pt, pl, H, W, ho, wo)
    hw = ho * wo
    nb = samples_per_gemm(N, hw, pointwise, BATCH_BELOW)
    if nb > 1:
        cols = np.empty((C * kh * kw, nb * hw), gy.dtype)
        g2 = np.empty((og, nb * hw), gy.dtype)
        for n0 in range(0, N, nb):
            for g in range(groups):
                samples_rows(gy, n0, nb, g, og, g2)
                dot(w2[g * og:(g + 1) * og].T, g2, cols[g * kg:(g + 1) * kg])
            for j in range(nb):
                col2im(cols, j * hw, out, n0 + j, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo)
        return
    cols = np.empty((0 if pointwise else C * kh * kw, ho * wo), gy.dtype)
    for n in range(N):
        g2 = gy[n].reshape(co, ho * wo)
        if pointwise:
            cols = out[n].reshape(C, H * W)  # the columns are the output itself
        for g in range(groups):
            dot(w2[g * og:(g + 1) * og].T, g2[g * og:(g + 1) * og], cols[g * kg:(g + 1) * kg])
        if not pointwise:
            col2im(cols, 0, out, n, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo)


@njit(**JIT)
def conv2d_grad_weight(x, gy, out, sh, sw, pt, pl, dh, dw, groups):
    """out (C_out, C/groups, kh, kw) = the sum over samples of gy[n] @ im2col(x[n])^T, per group."""
    N, C, H, W = x.shape
    co, ho, wo = gy.shape[1], gy.shape[2], gy.shape[3]
    _, cg, kh, kw = out.shape
    if _is_depthwise(cg, kh, kw):
        return depthwise_conv2d_grad_weight(x, gy, out, sh, sw, pt, pl, dh, dw)
    kg, og = cg * kh * kw, co // groups
    acc = out.reshape(co, kg)
    acc[:, :] = 0
    if N == 0:
        return
    part = np.empty((og, kg), out.dtype)
    pointwise = _is_pointwise(kh, kw, sh, sw, pt, pl, H, W, ho, wo)
    hw = ho * wo
    nb = samples_per_gemm(N, hw, pointwise, WGRAD_BATCH_BELOW)
    if nb > 1:
        cols = np.empty((C * kh * kw, nb * hw), x.dtype)
        g2 = np.empty((og, nb * hw), gy.dtype)
        for n0 in range(0, N, nb):
            samples_columns(x, n0, nb, cols, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo)
            for g in range(groups):
                samples_rows(gy, n0, nb, g, og, g2)
                dot(g2, cols[g * kg:(g + 1) * kg].T, part)
                acc[g * og:(g + 1) * og] += part
        return
    cols = np.empty((0 if pointwise else C * kh * kw, ho * wo), x.dtype)
    for n in range(N):
        src = x[n].reshape(C, H * W) if pointwise else cols   # x may be read-only: cols stays writable
        if not pointwise:
            im2col(x, n, cols, 0, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo)
        g2 = gy[n].reshape(co, ho * wo)
        for g in range(groups):
            dot(g2[g * og:(g + 1) * og], src[g * kg:(g + 1) * kg].T, part)
            acc[g * og:(g + 1) * og] += part
