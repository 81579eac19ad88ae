"""Convolutions on channels-last activations (NHWC) for generated CPU kernels: pointwise and depthwise.

Imported by the CPU backend as the module `dlc_cpu_conv_nhwc`. The layout
pass (dlc/passes/layout.py) gives this layout to the convs of an inference
program that gain from it: x is (N, H, W, C), the output (N, Ho, Wo, C_out),
the weight keeps PyTorch's layout (C_out, C_in/G, kh, kw); attributes as in
kernels/cpu/conv.py. Only two kinds of conv come here (the pass checks, and
conv2d_nhwc checks again):

- pointwise (1x1, stride 1, no padding, one group): a GEMM over the rows of
  x, (N*H*W, C) @ w^T, written straight into the output's rows;
- depthwise (one input channel and one output per group): per output
  position and tap one multiply-add over all C channels, contiguous in x, in
  the weight (transposed to taps x C once per call) and in the output. A 3x3
  window over rows of RUN_MIN_COLUMNS or more runs along each output row one
  vector of channels at a time, its nine weight vectors in registers
  (microkernel.depthwise_run), the edge columns and the padded rows through
  a zero-padded patch of their input: 32 channels on 32x32 at batch 16 (2
  threads) 0.58 -> 0.34 ms; as loops over arrays, the weights were reloaded
  at every position (7 loads for 3 multiply-adds) and no faster.

Why: with channels first (NCHW, kernels/cpu/conv.py) a depthwise conv on
MobileNet's small planes (2x2 to 16x16) runs loops of 2 to 16 iterations per
channel or transposes each sample to channels last and back; the transposes
alone took 15-80 us per layer against 2-30 us for the channels-last loops
(batch 1, one thread, 64 to 512 channels).
"""

import numpy as np
from dlc_cpu_conv import (
    DEPTHWISE_MAC_COST,
    SPLIT_MIN_MACS,
    THIN_COLUMNS,
    _thin_rows,
    dot,
    forward_workers,
    split_workers,
    taps_by_channel,
)
from dlc_cpu_gemm import blas_on_calling_thread, restore_blas_threads
from dlc_cpu_microkernel import DEPTHWISE_LANES_BYTES, depthwise_run
from dlc_cpu_threads import JIT, JIT_PARALLEL, block, claim, task_counter, workers_for, zero
from numba import njit, prange, types

# A pointwise conv of at most THIN_POSITIONS rows (a batch-1 plane up to 5x5) multiplies w @ x^T (rows as
# columns: OpenBLAS packs the thin operand) into a scratch block, then copies that into the output's rows: for
# 16 rows and 512 -> 512 channels x @ w^T took 175-238 us, w @ x^T 116-124 us, and with the copy 131 us against
# the NCHW conv's 127 (one thread). At 64 rows either way took 1.14-1.24x the NCHW conv's time, from 256 rows
# x @ w^T as much or less (benchmarks/channels_last.py).
THIN_POSITIONS = 32

# A 3x3 depthwise conv over output rows of at least RUN_MIN_COLUMNS positions runs in runs along the row, the
# nine weight vectors in registers (microkernel.depthwise_run); narrower rows position by position, each a loop
# over the channels (with the runs' patches at the edges, 4x4 to 8x8 planes measured slower).
RUN_MIN_COLUMNS = 16


@njit(**JIT)
def _pointwise_rows(x2, w2, o2, r0, r1):
    """Output rows r0 .. r1 - 1 of a pointwise conv: o2[r] = w2 @ x2[r], one GEMM."""
    dot(x2[r0:r1], w2.T, o2[r0:r1])


@njit(**JIT)
def _pointwise_channels(x2, w2, o2, o0, o1, part):
    """Output channels o0 .. o1 - 1 of a pointwise conv of at most THIN_POSITIONS rows: up to THIN_COLUMNS rows
    as dot products (kernels/cpu/conv.py's _thin_rows), else w @ x^T into part (C_out * rows values, this
    block's share), copied into the output's rows."""
    rows = x2.shape[0]
    p = part[o0 * rows:o1 * rows].reshape((o1 - o0, rows))
    if rows <= THIN_COLUMNS:
        _thin_rows(w2[o0:o1], x2, p)
    else:
        dot(w2[o0:o1], x2.T, p)
    for r in range(rows):
        d = o2[r]
        for o in range(o0, o1):
            d[o] = p[o - o0, r]


@njit(**JIT_PARALLEL)
def _pointwise(x, w, out):
    N, H, W, C = x.shape
    co = w.shape[0]
    rows = N * H * W
    x2, o2, w2 = x.reshape(rows, C), out.reshape(rows, co), w.reshape(co, C)
    if C == 0:
        zero(o2)
        return
    thin = rows <= THIN_POSITIONS
    threads = split_workers(rows * C * co, max(1, co // 16 if thin else rows // THIN_POSITIONS), N)
    part = np.empty(co * rows if thin else 0, x.dtype)
    previous = blas_on_calling_thread()
    if threads == 1:
        if thin:
            _pointwise_channels(x2, w2, o2, 0, co, part)
        else:
            _pointwise_rows(x2, w2, o2, 0, rows)
    else:
        # blocks of output channels when the rows are few, else blocks of rows
        counter = task_counter()
        for _ in prange(threads):
            t = claim(counter)
            while t < threads:
                if thin:
                    o0, o1 = block(co, threads, t)
                    _pointwise_channels(x2, w2, o2, o0, o1, part)
                else:
                    r0, r1 = block(rows, threads, t)
                    _pointwise_rows(x2, w2, o2, r0, r1)
                t = claim(counter)
    restore_blas_threads(previous)


@njit(**JIT)
def _depthwise_run(src, s0, sstep, toff, wt, out, o0, count):
    """count output positions of a 3x3 depthwise conv, channels last, the first at out's flat offset o0 and its
    window's top-left input value at src's flat offset s0, the next sstep on; tap t at toff[t] from it. Whole
    vectors of channels through microkernel.depthwise_run, the channels past them (C not a multiple of its
    lanes) here."""
    C = wt.shape[1]
    lanes = DEPTHWISE_LANES_BYTES // src.itemsize
    whole = C // lanes * lanes
    for c0 in range(0, whole, lanes):
        depthwise_run(src, s0 + c0, sstep, toff, wt, c0, C, out, o0 + c0, C, count)
    if whole < C:
        sf, of = src.reshape(src.size), out.reshape(out.size)
        for p in range(count):
            for c in range(whole, C):
                acc = sf[s0 + p * sstep + toff[0] + c] * wt[0, c]
                for t in range(1, 9):
                    acc += sf[s0 + p * sstep + toff[t] + c] * wt[t, c]
                of[o0 + p * C + c] = acc


@njit(**JIT)
def _depthwise_patch(x, wt, out, n, oh, ow0, ow1, sh, sw, pt, pl, dh, dw, patch, toff):
    """Columns ow0 .. ow1 - 1 of out[n, oh] of a 3x3 depthwise conv through patch: a copy of their windows'
    input rows, zero where the window reaches into the padding."""
    H, W, C = x.shape[1], x.shape[2], x.shape[3]
    wp = (ow1 - ow0 - 1) * sw + 2 * dw + 1      # the patch's columns
    iw0 = ow0 * sw - pl                          # the input column of its first
    lo, hi = max(0, -iw0), max(0, min(wp, W - iw0))
    for i in range(3):
        ih = oh * sh - pt + i * dh
        row = patch[i * wp * C:(i + 1) * wp * C]
        row[:] = 0
        if ih >= 0 and ih < H and hi > lo:
            row[lo * C:hi * C] = x[n, ih].reshape(W * C)[(iw0 + lo) * C:(iw0 + hi) * C]
        for j in range(3):
            toff[i * 3 + j] = (i * wp + j * dw) * C
    _depthwise_run(patch, 0, sw * C, toff, wt, out, ((n * out.shape[1] + oh) * out.shape[2] + ow0) * C, ow1 - ow0)


@njit(**JIT)
def _depthwise_row_3x3(x, wt, toff, out, n, oh, sh, sw, pt, pl, dh, dw, patch, ptoff):
    """out[n, oh] of a 3x3 depthwise conv: where the window's rows lie inside the input, its columns whose
    window does too straight from x, the edge columns through a patch; the whole row through one where its
    window's rows reach into the padding."""
    H, W, C = x.shape[1], x.shape[2], x.shape[3]
    wo = out.shape[2]
    ih0 = oh * sh - pt
    if ih0 < 0 or ih0 + 2 * dh >= H:
        _depthwise_patch(x, wt, out, n, oh, 0, wo, sh, sw, pt, pl, dh, dw, patch, ptoff)
        return
    lo = min(wo, -(-pl // sw))                                   # first column with ow*sw - pl >= 0
    hi = max(lo, min(wo, (W - 1 - 2 * dw + pl) // sw + 1))      # past the last with ow*sw - pl + 2*dw < W
    if hi > lo:
        _depthwise_run(x, ((n * H + ih0) * W + lo * sw - pl) * C, sw * C, toff, wt, out,
                       ((n * out.shape[1] + oh) * wo + lo) * C, hi - lo)
    if lo > 0:
        _depthwise_patch(x, wt, out, n, oh, 0, lo, sh, sw, pt, pl, dh, dw, patch, ptoff)
    if hi < wo:
        _depthwise_patch(x, wt, out, n, oh, hi, wo, sh, sw, pt, pl, dh, dw, patch, ptoff)


@njit(**JIT)
def _depthwise_row(x, wt, out, n, oh, sh, sw, pt, pl, dh, dw, kh, kw):
    """out[n, oh] of a depthwise conv, channels last: each output position the sum over its taps of the
    weight row times the input's channel vector. A 3x3 window wholly inside the input (most positions) sums
    its 9 taps in one loop over the channels; at the borders tap by tap, skipping the padding."""
    H, W, C = x.shape[1], x.shape[2], x.shape[3]
    wo = out.shape[2]
    ih0 = oh * sh - pt
    rows_inside = ih0 >= 0 and ih0 + (kh - 1) * dh < H
    for ow in range(wo):
        iw0 = ow * sw - pl
        a = out[n, oh, ow]
        if kh == 3 and kw == 3 and rows_inside and iw0 >= 0 and iw0 + 2 * dw < W:
            s0, s1, s2 = x[n, ih0, iw0], x[n, ih0, iw0 + dw], x[n, ih0, iw0 + 2 * dw]
            s3, s4, s5 = x[n, ih0 + dh, iw0], x[n, ih0 + dh, iw0 + dw], x[n, ih0 + dh, iw0 + 2 * dw]
            s6, s7, s8 = x[n, ih0 + 2 * dh, iw0], x[n, ih0 + 2 * dh, iw0 + dw], x[n, ih0 + 2 * dh, iw0 + 2 * dw]
            w0, w1, w2, w3, w4, w5, w6, w7, w8 = wt[0], wt[1], wt[2], wt[3], wt[4], wt[5], wt[6], wt[7], wt[8]
            for c in range(C):
                a[c] = (w0[c] * s0[c] + w1[c] * s1[c] + w2[c] * s2[c] + w3[c] * s3[c] + w4[c] * s4[c]
                        + w5[c] * s5[c] + w6[c] * s6[c] + w7[c] * s7[c] + w8[c] * s8[c])
            continue
        for c in range(C):
            a[c] = 0
        for i in range(kh):
            ih = ih0 + i * dh
            if ih < 0 or ih >= H:
                continue
            for j in range(kw):
                iw = iw0 + j * dw
                if iw < 0 or iw >= W:
                    continue
                s, wv = x[n, ih, iw], wt[i * kw + j]
                for c in range(C):
                    a[c] += wv[c] * s[c]


@njit(**JIT)
def _depthwise_output_row(x, wt, toff, out, n, oh, sh, sw, pt, pl, dh, dw, kh, kw, patch, ptoff):
    """out[n, oh]: a 3x3 window over rows of at least RUN_MIN_COLUMNS outputs in runs, else position by
    position."""
    if kh == 3 and kw == 3 and out.shape[2] >= RUN_MIN_COLUMNS:
        _depthwise_row_3x3(x, wt, toff, out, n, oh, sh, sw, pt, pl, dh, dw, patch, ptoff)
    else:
        _depthwise_row(x, wt, out, n, oh, sh, sw, pt, pl, dh, dw, kh, kw)


@njit(**JIT_PARALLEL)
def _depthwise(x, w, out, sh, sw, pt, pl, dh, dw):
    N, ho, wo, C = out.shape
    W = x.shape[2]
    kh, kw = w.shape[2], w.shape[3]
    wt = taps_by_channel(w).reshape((kh * kw, C))
    toff = np.empty(9, np.int64)     # a 3x3 window's taps in x, from its top-left input value
    for t in range(9):
        toff[t] = ((t // 3) * dh * W + (t % 3) * dw) * C
    rows = N * ho
    runs = kh == 3 and kw == 3 and wo >= RUN_MIN_COLUMNS
    macs = out.size * kh * kw * DEPTHWISE_MAC_COST
    threads = workers_for(macs, rows, SPLIT_MIN_MACS) if runs else forward_workers(macs, rows, N)
    # each thread's patch (a 3x3 window's input rows for a whole output row, zero-padded) and its taps' offsets
    patches = np.empty((threads, 3 * ((wo - 1) * sw + 2 * dw + 1) * C if runs else 0), x.dtype)
    ptoffs = np.empty((threads, 9), np.int64)
    if threads == 1:
        for r in range(rows):
            _depthwise_output_row(x, wt, toff, out, r // ho, r % ho, sh, sw, pt, pl, dh, dw, kh, kw, patches[0],
                                  ptoffs[0])
        return
    counter = task_counter()
    for t in prange(threads):
        r = claim(counter)
        while r < rows:
            _depthwise_output_row(x, wt, toff, out, r // ho, r % ho, sh, sw, pt, pl, dh, dw, kh, kw, patches[t],
                                  ptoffs[t])
            r = claim(counter)


@njit(**JIT)
def is_pointwise(x_shape, w_shape, out_shape, sh, sw, pt, pl, groups):
    return (w_shape[2] == 1 and w_shape[3] == 1 and sh == 1 and sw == 1 and pt == 0 and pl == 0 and groups == 1
            and out_shape[1] == x_shape[1] and out_shape[2] == x_shape[2])


@njit(**JIT)
def conv2d_nhwc(x, w, out, sh, sw, pt, pl, dh, dw, groups):
    """out (N, Ho, Wo, C_out) = x (N, H, W, C) cross-correlated with w (C_out, C/groups, kh, kw): pointwise or
    depthwise convs only (ValueError otherwise)."""
    C = x.shape[3]
    if w.shape[1] == 1 and groups == C and w.shape[0] == C:
        if out.size > 0:
            _depthwise(x, w, out, sh, sw, pt, pl, dh, dw)
        return
    if is_pointwise(x.shape, w.shape, out.shape, sh, sw, pt, pl, groups):
        if out.size > 0:
            _pointwise(x, w, out)
        return
    raise ValueError("conv2d_nhwc runs pointwise (1x1, stride 1, no padding, one group) and depthwise convs only")


def signatures():
    """How generated code calls conv2d_nhwc, bound by symbol (kernels/cpu/library.py): variant -> (function,
    argument types), as for kernels/cpu/conv.py's convolutions."""
    out = {}
    for dtype in (types.float32, types.float64):
        read, written = types.Array(dtype, 4, "C", readonly=True), types.Array(dtype, 4, "C")
        out[f"conv2d_nhwc_{dtype}"] = ("conv2d_nhwc", (read, read, written) + (types.int64,) * 7)
    return out
