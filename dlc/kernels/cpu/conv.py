"""Convolutions for generated CPU kernels: columns (im2col/col2im, or wide) and BLAS GEMMs (np.dot) per group.

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
0.25x and 0.05x at batch 1. A pointwise conv (1x1, stride 1, no padding)
needs no columns: its GEMM reads x[n] as it is.

Why wide columns for stride-1 convs with short rows: im2col copies Wo values
per tap and output row, and on LeNet's 10- to 28-wide rows the per-copy work
(views, bounds) is most of the conv. Copied once into a zero-padded plane Wp
wide, a sample's columns of one tap are that plane read from one offset on:
one copy of Ho*Wp values, with Wp - Wo columns per output row computed and
thrown away. `_is_wide` weighs the two (its docstring has the measurements):
LeNet-5's convs run 2-5x faster, ResNet's 32x32 and 16x16 layers 5-25%.

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
Such columns are written row by row over the samples (im2col):
sample by sample, each of the C*kh*kw rows got a few values a cache line or
a page away from the last (ResNet's 4x4 layer: fwd 20 -> 15 ms, dgrad 23 ->
15, wgrad 22 -> 18 at batch 32 on 2 threads).

Why register tiles for some convs (dlc_cpu_conv_tiles): at batch 1 each GEMM is thin (a few hundred columns,
or a few dozen, against the whole weight matrix) and im2col's columns are as large as its operand. A forward
conv of fewer samples than threads with a window larger than 1x1 runs, where it measured faster (`_uses_tiles`,
`pays`: ResNet's 3x3 convs on 32x32 inputs, not yet its layers on 224x224 ones), as blocks of output channels
by positions summed in registers straight from a padded copy of the input, no columns and no BLAS.
ResNet-18-style inference at batch 1 (the ONNX benchmark's, 12 interleaved rounds): 13.76 -> 10.76 ms in
6 x 16 blocks; 8.7 -> 7.4 ms with AVX-512's 8 x 32 ones and strided windows in rows. In 8 x 32 blocks a
stride-1 conv gains at any batch too (ResNet's 3x3 convs at batch 16: 0.73-0.90 of im2col + GEMM's time), and
so does its input gradient, a forward conv of dL/dy with the window turned half a turn and the channels
swapped (conv2d_grad_input; 0.67-0.92 at batch 32): W8's training step 810-873 -> 740-746 ms. On planes of
8x8 and smaller at batch > 1 a sample has too few positions for its blocks to reuse the weights (the
per-sample forms streamed ResNet's 512 x 4608 weights from memory once per sample); there the blocks' positions
run across samples (`_across_samples`, conv_tiles's `tiled_conv2d_across_samples`): ResNet's 4x4 and 8x8
layers at batch 16 in 0.58-0.70 of the time; strided windows take them on larger planes too (64 -> 128 3x3/2
on 32x32 at batch 16: 0.82, its 1x1/2 shortcut 0.55).

Why direct loops for depthwise convolutions (one input channel and at most
DIRECT_MAX_OUTPUTS outputs per group, as in MobileNet; with more outputs per
channel one im2col serves them all): there each group's GEMM is a 1 x (kh*kw) times (kh*kw) x
(Ho*Wo) product, a BLAS call per channel and sample for a few multiply-adds
per output; the window loops accumulate rows of the output instead, with a
unit-stride inner loop LLVM vectorises. Measured single-threaded against a
GEMM per channel (new/old time, noisy machine): 32 channels 56x56 3x3 at
batch 16 fwd 0.25-0.59, dgrad 0.08-0.20, wgrad 0.75; 128 channels 28x28
stride 2 fwd 0.63-0.72, dgrad 0.90-0.95, wgrad 0.77-0.87; 512 channels 7x7
at batch 1 fwd 0.22-0.30, dgrad 0.51-0.56, wgrad 0.35-0.42. A stride-1
depthwise forward reads a zero-padded copy of each plane, one vectorised loop
per tap instead of one per tap and output row: MobileNet's stride-1 layers
(4x4 to 16x16 planes, batch 1 and 16) took 0.69-0.80 of the row-by-row time,
32x32 planes the same (1.02-1.05); a 3x3 one without dilation (MobileNet's)
sums all 9 taps of an output row in one loop, 0.33-0.6 of that time
(_depthwise_plane_3x3). With one output per channel, strided or on small
planes, it runs channels last instead (_uses_channels_last): each output
position and tap one loop over the channels.

Threads: one pool (numba's), BLAS on the calling thread. Every BLAS call
here runs single-threaded (the thread count of the BLAS behind np.dot is set
to 1 for the call's duration and restored after): OpenBLAS's own pool of 2,
on 2 cores shared with other processes, stalls at each of its many
synchronisations for a scheduler tick (4 ms) whenever the other core is
taken. Measured in one process (load average about 1): a 64x576x1024 sgemm
took 24 ms with 2 BLAS threads against 0.95 ms with one; a 512x4608x16 one
8 ms against 1.2 ms. The kernels' own threads then split the work once per
conv, above PARALLEL_MIN_MACS multiply-adds (about 1.5 ms on one thread;
a depthwise one counts DEPTHWISE_MAC_COST): with at least as many GEMMs
(samples, or groups of samples sharing one) as threads, each thread takes
whole GEMMs with columns of its own (but the weight gradient of samples
sharing GEMMs splits each GEMM's output rows: no per-thread copy of the whole
gradient to add up); with fewer (batch 1), a forward conv whose sample's
columns outgrow a core's L2 runs in tiles of output rows, each thread with
the columns of its tile and every output channel (_tile_rows), and otherwise
each GEMM's output rows are split between them (dgrad: the rows of the
columns, through a transposed copy of the weights, 1/(Ho*Wo) of the GEMM's
work) with im2col and col2im channel by channel. Threads claim their tasks
from a shared counter (dlc_cpu_threads says why).
"""

import numpy as np
from dlc_cpu_conv_tiles import (
    COPY_MACS,
    MIN_MACS,
    ROWS,
    _ceil_div,
    form_of,
    pays,
    pays_across_samples,
    tiled_conv2d,
    tiled_conv2d_across_samples,
    tiled_conv2d_grad_weight,
)
from dlc_cpu_gemm import blas_on_calling_thread, restore_blas_threads
from dlc_cpu_threads import (
    JIT,
    JIT_PARALLEL,
    ON_TBB,
    block,
    claim,
    task_counter,
    thread_count,
    workers_for,
    zero,
    zeros,
)
from numba import njit, prange, types

# A forward conv of fewer samples than threads splits each GEMM's output rows between them from ROWS_MIN_MACS
# on (about 1 ms on one thread): on an idle machine W9 (ResNet-18-style inference at batch 1, its 3x3 convs 38M
# multiply-adds each) took 12.5-13.1 ms with the split against 19.9-20.3 ms without, while LeNet-5's training step
# at batch 64 (W2, samples per thread) went from 9.1-10.3 ms to 25-42 ms with it for its conv too; the row split
# is measured for the forward conv only. Not lower: a parallel region costs a stall of the pool's spin time
# (GOMP_SPINCOUNT, dlc/__init__.py: about 0.6 ms) whenever the scheduler puts both threads on one core, as it
# does in about half of the calls after an idle pause. With 1 << 22, MobileNet's 4M multiply-add pointwise convs
# at batch 1 (0.06 ms split, 0.1 ms on one thread) took 0.6-1.8 ms in those calls and the whole net 3-6 ms
# against 1.3-2.3 ms with 1 << 25 (benchmarks/onnx_bench.py's model, 5 calls after each 0.1 s pause, 2 runs).
# On TBB (dlc_cpu_threads) that stall is gone; there MobileNet took the same with either threshold (1.40 ms against
# 1.51 and 1.78, 8 rounds), so one threshold serves both.
ROWS_MIN_MACS = 1 << 25
DEPTHWISE_MAC_COST = 8        # a depthwise multiply-add (direct loops) takes about the time of 8 in a GEMM
# A depthwise conv with one output per channel runs channels last from CHANNELS_LAST_MIN_CHANNELS channels when
# strided or when its planes have at most CHANNELS_LAST_MAX_POSITIONS outputs (_uses_channels_last)
CHANNELS_LAST_MIN_CHANNELS = 32
CHANNELS_LAST_MAX_POSITIONS = 64
TILED_DGRAD_MIN_CHANNELS = 16   # conv2d_grad_input says why
TILED_WGRAD_MIN_CHANNELS = 32   # conv2d_grad_weight says why


@njit(**JIT)
def forward_workers(macs, tasks, samples):
    """workers_for a forward conv: with fewer samples than threads (their rows split), from ROWS_MIN_MACS."""
    if samples < thread_count() and macs >= ROWS_MIN_MACS:
        return max(1, min(thread_count(), tasks))
    return workers_for(macs, tasks)


# ----------------------------------------------------------------------------
# columns


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


# A forward GEMM with at most THIN_COLUMNS columns (a batch-1 conv on a 2x2 plane: MobileNet's 512 -> 1024
# pointwise conv) runs as dot products: OpenBLAS's GEMM kernels are made for wide operands and took 124-150 us
# for that conv's 1024 x 512 x 4 product, the dot products 63-74 us.
THIN_COLUMNS = 8
# the dot products' sums reordered (vectorised); nothing else of fastmath: no NaN or infinity assumptions
JIT_SUMS = dict(JIT, fastmath={"reassoc", "contract"})


@njit(**JIT_SUMS)
def _thin_rows(a, bt, out):
    """out = a @ bt.T for bt of few rows (both C-ordered): per row of a, dot products with up to 4 of bt's rows
    at once, each a vectorised sum over the row."""
    n, k = bt.shape
    zero = out.dtype.type(0)
    for o in range(a.shape[0]):
        w = a[o]
        p = 0
        while p + 4 <= n:
            b0, b1, b2, b3 = bt[p], bt[p + 1], bt[p + 2], bt[p + 3]
            s0 = s1 = s2 = s3 = zero
            for i in range(k):
                s0 += w[i] * b0[i]
                s1 += w[i] * b1[i]
                s2 += w[i] * b2[i]
                s3 += w[i] * b3[i]
            out[o, p], out[o, p + 1], out[o, p + 2], out[o, p + 3] = s0, s1, s2, s3
            p += 4
        while p < n:
            b0 = bt[p]
            s0 = zero
            for i in range(k):
                s0 += w[i] * b0[i]
            out[o, p] = s0
            p += 1


@njit(**JIT)
def forward_dot(a, b, out):
    """out = a @ b for a forward conv's GEMM (a: weight rows, C-ordered): dot products when b has at most
    THIN_COLUMNS columns, else BLAS."""
    if 0 < b.shape[1] <= THIN_COLUMNS and a.shape[1] > 0:
        _thin_rows(a, np.ascontiguousarray(b.T), out)
    else:
        dot(a, b, out)


@njit(**JIT_PARALLEL)
def im2col_threads(x, n, cols, workers, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo):
    """im2col of one whole sample, channel by channel on `workers` threads."""
    counter = task_counter()
    for _ in prange(workers):
        c = claim(counter)
        while c < x.shape[1]:
            im2col(x, n, 1, cols, c, c + 1, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo)
            c = claim(counter)


@njit(**JIT_PARALLEL)
def col2im_threads(cols, out, n, workers, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo):
    """col2im of one whole sample, channel by channel on `workers` threads."""
    counter = task_counter()
    for _ in prange(workers):
        c = claim(counter)
        while c < out.shape[1]:
            col2im(cols, out, n, 1, c, c + 1, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo)
            c = claim(counter)


@njit(**JIT)
def _is_pointwise(kh, kw, sh, sw, pt, pl, H, W, ho, wo):
    """A 1x1, stride-1, unpadded window: a sample's columns are its own (C, H*W) matrix."""
    return kh == 1 and kw == 1 and sh == 1 and sw == 1 and pt == 0 and pl == 0 and ho == H and wo == W


BATCH_BELOW = 64         # output positions per sample under which samples share one GEMM (fwd, dgrad)
WGRAD_BATCH_BELOW = 100  # the same for the weight gradient
COLUMNS = 2048           # the most columns (samples x positions) of one shared GEMM


SHORT_ROW = 8   # output rows shorter than this are copied element by element: a view per row costs more


@njit(**JIT)
def im2col(x, n0, nb, cols, c0, c1, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo):
    """cols[(c*kh + i)*kw + j, s*Ho*Wo + oh*Wo + ow] = x[n0 + s, c, oh*sh - pt + i*dh, ow*sw - pl + j*dw] for
    the nb samples from n0 side by side and the channels c in [c0, c1), 0 in the padding."""
    im2col_rows(x, n0, nb, cols, c0, c1, 0, ho, kh, kw, sh, sw, pt, pl, dh, dw, wo)


@njit(**JIT)
def im2col_rows(x, n0, nb, cols, c0, c1, oh0, oh1, kh, kw, sh, sw, pt, pl, dh, dw, wo):
    """im2col of output rows oh0 .. oh1 - 1 only: cols[(c*kh + i)*kw + j, s*span + (oh - oh0)*Wo + ow] with
    span = (oh1 - oh0)*Wo.

    Row by row, every sample's positions of a row written before the next row: sample by sample, each of the
    C*kh*kw rows got a few values a cache line and often a page from the last (ResNet's 4x4 planes, 512
    channels, 32 samples: 13-19 ms against 3.8 ms this way). One function with every loop in it: the inner
    row copy as a function of its own (views passed per output row) made it 40% slower."""
    H, W = x.shape[2], x.shape[3]
    span = (oh1 - oh0) * wo
    for c in range(c0, c1):
        for i in range(kh):
            for j in range(kw):
                off = j * dw - pl
                lo, hi = valid_range(off, sw, W, wo)
                dst_row = cols[(c * kh + i) * kw + j]
                for s in range(nb):
                    plane = x[n0 + s, c]
                    for oh in range(oh0, oh1):
                        ih = oh * sh - pt + i * dh
                        base = s * span + (oh - oh0) * wo
                        if ih < 0 or ih >= H:
                            for k in range(wo):
                                dst_row[base + k] = 0
                            continue
                        for k in range(lo):
                            dst_row[base + k] = 0
                        if sw == 1 and hi - lo >= SHORT_ROW:
                            # 1-d views indexed from 0: no address and index wraparound per element, and a
                            # unit stride LLVM can vectorise (2x faster on LeNet's 28-wide rows)
                            q = plane[ih, lo + off:hi + off]
                            d = dst_row[base + lo:base + hi]
                            for k in range(hi - lo):
                                d[k] = q[k]
                        else:
                            for ow in range(lo, hi):
                                dst_row[base + ow] = plane[ih, ow * sw + off]
                        for k in range(hi, wo):
                            dst_row[base + k] = 0


@njit(**JIT)
def col2im(cols, out, n0, nb, c0, c1, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo):
    """The adjoint of im2col: out[n0 : n0+nb, c0:c1] = 0, then every column value added back at its input
    position, row by row as im2col writes them."""
    H, W = out.shape[2], out.shape[3]
    hw = ho * wo
    out[n0:n0 + nb, c0:c1] = 0
    for c in range(c0, c1):
        for i in range(kh):
            for j in range(kw):
                off = j * dw - pl
                lo, hi = valid_range(off, sw, W, wo)
                src_row = cols[(c * kh + i) * kw + j]
                for s in range(nb):
                    plane = out[n0 + s, c]
                    for oh in range(ho):
                        ih = oh * sh - pt + i * dh
                        if ih < 0 or ih >= H:
                            continue
                        base = s * hw + oh * wo
                        if sw == 1 and hi - lo >= SHORT_ROW:
                            # 1-d views indexed from 0, as in im2col: 4x faster on ResNet's 32x32 rows
                            d = plane[ih, lo + off:hi + off]
                            q = src_row[base + lo:base + hi]
                            for k in range(hi - lo):
                                d[k] += q[k]
                        else:
                            for ow in range(lo, hi):
                                plane[ih, ow * sw + off] += src_row[base + ow]


@njit(**JIT)
def samples_rows(gy, n0, nb, g, og, rows):
    """Group g's rows of dL/dy for samples n0 .. n0 + nb - 1 side by side, as im2col lays them out."""
    hw = gy.shape[2] * gy.shape[3]
    for j in range(nb):
        rows[:, j * hw:(j + 1) * hw] = gy[n0 + j].reshape(gy.shape[1], hw)[g * og:(g + 1) * og]


@njit(**JIT)
def samples_per_gemm(N, hw, below, threads):
    """How many samples share one GEMM: 1 (per sample), or the largest divisor of N within COLUMNS columns
    and leaving at least `threads` GEMMs (a divisor: every GEMM then has the same contiguous operands)."""
    if hw >= below or N < 2 or hw == 0:
        return 1
    cap = max(1, min(COLUMNS // hw, N // max(1, threads)))
    for nb in range(min(N, cap), 0, -1):
        if N % nb == 0:
            return nb
    return 1


# ----------------------------------------------------------------------------
# depthwise: direct loops


DIRECT_MAX_OUTPUTS = 2   # the most outputs per group of a depthwise conv that runs as direct loops


@njit(**JIT)
def _is_depthwise(cg, og, kh, kw):
    """One input channel and at most DIRECT_MAX_OUTPUTS outputs per group, and a real window: the direct loops
    below beat a GEMM per group. With more outputs per channel one im2col serves all of them: LeNet-5's first
    conv (1 -> 6 channels, 5x5, batch 64) took 1.26 ms forward and 1.71 ms for its weight gradient in direct
    loops, 0.5 ms and 0.55 ms as im2col + GEMM."""
    return cg == 1 and og <= DIRECT_MAX_OUTPUTS and kh * kw > 1


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
def _depthwise_plane(x, w, out, n, o, sh, sw, pt, pl, dh, dw):
    """out[n, o] of a depthwise conv: its input channel's rows, tap by tap, added into the output rows."""
    H, W = x.shape[2], x.shape[3]
    kh, kw = w.shape[2], w.shape[3]
    ho, wo = out.shape[2], out.shape[3]
    src = x[n, o // (w.shape[0] // x.shape[1])]
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
def _padded_channel(src, pad, hp, wp, pt, pl):
    """pad[:hp * wp] = src (H, W) zero-padded into an hp x wp plane, its row r, column c at src[r - pt, c - pl]."""
    H, W = src.shape
    pad[:hp * wp] = 0
    c0, c1 = max(0, pl), min(wp, W + pl)
    for r in range(max(0, pt), min(hp, H + pt)):
        if c1 > c0:
            pad[r * wp + c0:r * wp + c1] = src[r - pt, c0 - pl:c1 - pl]


@njit(**JIT)
def _depthwise_plane_3x3(x, w, out, n, o, pad, pt, pl):
    """out[n, o] of a stride-1, undilated 3x3 depthwise conv (MobileNet's): each output row in one loop over its
    columns summing all 9 taps from 3 rows of the zero-padded input plane, the products kept in registers. Tap
    by tap (_depthwise_wide_plane) every tap reads and writes the whole plane back: the conv2d kernel took
    52 -> 32 us on 32 channels of 32x32 and 101 -> 48 us on 128 of 16x16 (batch 1, one thread). The offsets must
    be constants: with the dilation a variable the loop ran 6-9x slower."""
    ho, wo = out.shape[2], out.shape[3]
    hp, wp = ho + 2, wo + 2
    _padded_channel(x[n, o // (w.shape[0] // x.shape[1])], pad, hp, wp, pt, pl)
    plane = pad[:hp * wp].reshape(hp, wp)
    k = w[o, 0]
    w0, w1, w2, w3, w4, w5, w6, w7, w8 = k[0, 0], k[0, 1], k[0, 2], k[1, 0], k[1, 1], k[1, 2], k[2, 0], k[2, 1], k[2, 2]
    dst = out[n, o]
    for oh in range(ho):
        r0, r1, r2, d = plane[oh], plane[oh + 1], plane[oh + 2], dst[oh]
        for ow in range(wo):
            d[ow] = (w0 * r0[ow] + w1 * r0[ow + 1] + w2 * r0[ow + 2]
                     + w3 * r1[ow] + w4 * r1[ow + 1] + w5 * r1[ow + 2]
                     + w6 * r2[ow] + w7 * r2[ow + 1] + w8 * r2[ow + 2])


@njit(**JIT)
def _depthwise_wide_plane(x, w, out, n, o, pad, acc, pt, pl, dh, dw):
    """out[n, o] of a stride-1 depthwise conv from a zero-padded copy of its input plane, Wp = Wo + (kw-1)*dw
    wide: tap (i, j) is then one multiply-add over Ho*Wp values read from one offset on (vectorised, no work
    per row); the Wp - Wo columns of each row past Wo are computed and dropped."""
    kh, kw = w.shape[2], w.shape[3]
    ho, wo = out.shape[2], out.shape[3]
    wp = wo + (kw - 1) * dw
    _padded_channel(x[n, o // (w.shape[0] // x.shape[1])], pad, ho + (kh - 1) * dh, wp, pt, pl)
    m = ho * wp
    acc[:m] = 0
    a = acc[:m]
    for i in range(kh):
        for j in range(kw):
            wv = w[o, 0, i, j]
            q = pad[i * dh * wp + j * dw:i * dh * wp + j * dw + m]
            for k in range(m):
                a[k] += wv * q[k]
    dst = out[n, o]
    for oh in range(ho):
        dst[oh, :] = a[oh * wp:oh * wp + wo]


@njit(**JIT)
def _uses_channels_last(C, co, sh, sw, ho, wo):
    """Channels last for a depthwise forward with one output per channel: from 32 channels, when strided or on
    planes of at most 64 outputs. Plane by plane such convs run rows of 2-16 outputs, or gather every second
    input. Measured single-threaded (channels-last / plane-by-plane time): stride 2 on 32x32, 16x16 and 4x4
    inputs 0.61, 0.43 and 0.15-0.20 (64 to 512 channels, batch 1 and 16); stride 1 on 4x4 planes 0.34-0.42,
    8x8 0.81, 16x16 1.09-1.11, 32x32 1.8; 8 channels on 9x7 planes 1.43."""
    return co == C and C >= CHANNELS_LAST_MIN_CHANNELS and (sh > 1 or sw > 1 or ho * wo <= CHANNELS_LAST_MAX_POSITIONS)


@njit(**JIT)
def _depthwise_sample_channels_last(x, wt, out, n, padt, acc, sh, sw, pt, pl, dh, dw):
    """out[n] of a depthwise conv with one output per channel, channels last: per output position and tap one
    multiply-add over all C channels (vectorised), where plane by plane the loops run over 2- to 16-wide rows.
    wt: the weights as (kh, kw, C); padt (Hp, Wp, C) and acc (Ho, Wo, C): scratch."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    kh, kw = wt.shape[0], wt.shape[1]
    ho, wo = out.shape[2], out.shape[3]
    hp, wp = padt.shape[0], padt.shape[1]
    padt[:] = 0
    for c in range(C):
        for h in range(min(H, hp - pt)):
            for v in range(min(W, wp - pl)):
                padt[h + pt, v + pl, c] = x[n, c, h, v]
    acc[:] = 0
    for oh in range(ho):
        for ow in range(wo):
            a = acc[oh, ow]
            for i in range(kh):
                for j in range(kw):
                    src, wv = padt[oh * sh + i * dh, ow * sw + j * dw], wt[i, j]
                    for c in range(C):
                        a[c] += wv[c] * src[c]
    for c in range(C):
        for oh in range(ho):
            for ow in range(wo):
                out[n, c, oh, ow] = acc[oh, ow, c]


@njit(**JIT)
def _depthwise_input_plane(gy, w, out, n, c, sh, sw, pt, pl, dh, dw):
    """out[n, c] of depthwise_conv2d_grad_input: the dL/dy planes of channel c's outputs, scattered back."""
    H, W = out.shape[2], out.shape[3]
    co, _, kh, kw = w.shape
    ho, wo = gy.shape[2], gy.shape[3]
    per_channel = co // out.shape[1]
    dst = out[n, c]
    dst[:, :] = 0
    for o in range(c * per_channel, (c + 1) * per_channel):
        g = gy[n, o]
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
def _depthwise_weight_channel(x, gy, out, o, sh, sw, pt, pl, dh, dw):
    """out[o] of depthwise_conv2d_grad_weight: per tap, the sum over samples and outputs of dL/dy times the
    input it read (summed by output column first: a vectorisable row update, then one sum per tap)."""
    N, H, W = x.shape[0], x.shape[2], x.shape[3]
    co, _, kh, kw = out.shape
    ho, wo = gy.shape[2], gy.shape[3]
    c = o // (co // x.shape[1])
    lanes = np.empty(wo, out.dtype)
    for i in range(kh):
        for j in range(kw):
            off = j * dw - pl
            lo, hi = valid_range(off, sw, W, wo)
            lanes[:] = 0
            for n in range(N):
                src, g = x[n, c], gy[n, o]
                for oh in range(ho):
                    ih = oh * sh - pt + i * dh
                    if ih < 0 or ih >= H:
                        continue
                    _add_products(lanes, g[oh], src[ih], lo, hi, off, sw)
            out[o, 0, i, j] = lanes.sum()


# Depthwise work splits into planes: threads over (sample, output channel) for the forward, over (sample,
# input channel) for dgrad (a channel's outputs all add into its plane) and over output channels for wgrad
# (each sums over the samples), above PARALLEL_MIN_MACS; below it one thread runs them in order.


@njit(**JIT_PARALLEL)
def depthwise_conv2d(x, w, out, sh, sw, pt, pl, dh, dw):
    """conv2d with C/groups == 1: out[n, o] = sum over the window of x[n, o // (C_out/C)] * w[o, 0]."""
    N, co = out.shape[0], out.shape[1]
    kh, kw = w.shape[2], w.shape[3]
    ho, wo = out.shape[2], out.shape[3]
    if _uses_channels_last(x.shape[1], co, sh, sw, ho, wo):
        return _depthwise_channels_last(x, w, out, sh, sw, pt, pl, dh, dw)
    planes = N * co
    workers = workers_for(out.size * kh * kw * DEPTHWISE_MAC_COST, planes)
    # stride 1: from a padded plane, tap by tap (see _depthwise_wide_plane); strided: row by row
    wide = sh == 1 and sw == 1
    wp = wo + (kw - 1) * dw
    size = (ho + (kh - 1) * dh) * wp + (kw - 1) * dw if wide else 0
    if workers == 1:
        pad, acc = np.empty(size, x.dtype), np.empty(ho * wp if wide else 0, x.dtype)
        for p in range(planes):
            _depthwise_output_plane(x, w, out, p // co, p % co, wide, pad, acc, sh, sw, pt, pl, dh, dw)
        return
    counter = task_counter()
    for _ in prange(workers):
        pad, acc = np.empty(size, x.dtype), np.empty(ho * wp if wide else 0, x.dtype)
        p = claim(counter)
        while p < planes:
            _depthwise_output_plane(x, w, out, p // co, p % co, wide, pad, acc, sh, sw, pt, pl, dh, dw)
            p = claim(counter)


@njit(**JIT)
def _depthwise_output_plane(x, w, out, n, o, wide, pad, acc, sh, sw, pt, pl, dh, dw):
    """out[n, o] of depthwise_conv2d: from a padded plane (stride 1, `wide`) or row by row."""
    if wide and w.shape[2] == 3 and w.shape[3] == 3 and dh == 1 and dw == 1:
        _depthwise_plane_3x3(x, w, out, n, o, pad, pt, pl)
    elif wide:
        _depthwise_wide_plane(x, w, out, n, o, pad, acc, pt, pl, dh, dw)
    else:
        _depthwise_plane(x, w, out, n, o, sh, sw, pt, pl, dh, dw)


@njit(**JIT)
def taps_by_channel(w):
    """A depthwise weight (C, 1, kh, kw) as (kh, kw, C): each tap's weights contiguous over the channels."""
    C, kh, kw = w.shape[0], w.shape[2], w.shape[3]
    wt = np.empty((kh, kw, C), w.dtype)
    for c in range(C):
        for i in range(kh):
            for j in range(kw):
                wt[i, j, c] = w[c, 0, i, j]
    return wt


@njit(**JIT_PARALLEL)
def _depthwise_channels_last(x, w, out, sh, sw, pt, pl, dh, dw):
    """depthwise_conv2d with one output per channel, strided or on small planes: sample by sample, channels
    last."""
    N, C = out.shape[0], out.shape[1]
    kh, kw = w.shape[2], w.shape[3]
    ho, wo = out.shape[2], out.shape[3]
    hp, wp = (ho - 1) * sh + (kh - 1) * dh + 1, (wo - 1) * sw + (kw - 1) * dw + 1
    wt = taps_by_channel(w)
    workers = workers_for(out.size * kh * kw * DEPTHWISE_MAC_COST, N)
    if workers == 1:
        padt, acc = np.empty((hp, wp, C), x.dtype), np.empty((ho, wo, C), x.dtype)
        for n in range(N):
            _depthwise_sample_channels_last(x, wt, out, n, padt, acc, sh, sw, pt, pl, dh, dw)
        return
    counter = task_counter()
    for _ in prange(workers):
        padt, acc = np.empty((hp, wp, C), x.dtype), np.empty((ho, wo, C), x.dtype)
        n = claim(counter)
        while n < N:
            _depthwise_sample_channels_last(x, wt, out, n, padt, acc, sh, sw, pt, pl, dh, dw)
            n = claim(counter)


@njit(**JIT_PARALLEL)
def depthwise_conv2d_grad_input(gy, w, out, sh, sw, pt, pl, dh, dw):
    """The adjoint of depthwise_conv2d in x: every dL/dy value times its tap, added back at its input."""
    N, C = out.shape[0], out.shape[1]
    planes = N * C
    workers = workers_for(gy.size * w.shape[2] * w.shape[3] * DEPTHWISE_MAC_COST, planes)
    if workers == 1:
        for p in range(planes):
            _depthwise_input_plane(gy, w, out, p // C, p % C, sh, sw, pt, pl, dh, dw)
        return
    counter = task_counter()
    for _ in prange(workers):
        p = claim(counter)
        while p < planes:
            _depthwise_input_plane(gy, w, out, p // C, p % C, sh, sw, pt, pl, dh, dw)
            p = claim(counter)


@njit(**JIT_PARALLEL)
def depthwise_conv2d_grad_weight(x, gy, out, sh, sw, pt, pl, dh, dw):
    """dL/dw of depthwise_conv2d, output channel by output channel."""
    co = out.shape[0]
    workers = workers_for(gy.size * out.shape[2] * out.shape[3] * DEPTHWISE_MAC_COST, co)
    if workers == 1:
        for o in range(co):
            _depthwise_weight_channel(x, gy, out, o, sh, sw, pt, pl, dh, dw)
        return
    counter = task_counter()
    for _ in prange(workers):
        o = claim(counter)
        while o < co:
            _depthwise_weight_channel(x, gy, out, o, sh, sw, pt, pl, dh, dw)
            o = claim(counter)


# ----------------------------------------------------------------------------
# im2col + GEMM: one group of samples (a GEMM's worth) at a time, on one thread


@njit(**JIT)
def _forward_samples(x, w2, out, n0, nb, groups, cols, part, kh, kw, sh, sw, pt, pl, dh, dw, pointwise):
    """out[n0 : n0+nb]: nb == 1 a GEMM per group straight into the sample's output (a pointwise conv reading x
    itself), else one GEMM per group over the nb samples' columns side by side, copied out through part."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    co, kg = w2.shape
    og = co // groups
    ho, wo = out.shape[2], out.shape[3]
    hw = ho * wo
    if nb > 1:
        im2col(x, n0, nb, cols, 0, C, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo)
        for g in range(groups):
            dot(w2[g * og:(g + 1) * og], cols[g * kg:(g + 1) * kg], part)
            for j in range(nb):
                out[n0 + j].reshape(co, hw)[g * og:(g + 1) * og] = part[:, j * hw:(j + 1) * hw]
        return
    # a variable of its own for x's view: x may be read-only, and cols must stay writable for im2col
    src = x[n0].reshape(C, H * W) if pointwise else cols
    if not pointwise:
        im2col(x, n0, 1, cols, 0, C, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo)
    o2 = out[n0].reshape(co, hw)
    for g in range(groups):
        forward_dot(w2[g * og:(g + 1) * og], src[g * kg:(g + 1) * kg], o2[g * og:(g + 1) * og])


# A forward conv of fewer samples than threads whose sample's columns outgrow a core's L2 (from ResNet's 32x32
# layers to ImageNet's 112x112) runs in tiles of output rows instead: each thread builds the columns of one tile
# (at most TILE_BYTES, so they stay in its L2 for the GEMM that reads them) and multiplies them by every
# output channel's weights. Tiles narrower than TILE_MIN_COLUMNS make GEMMs too thin to gain; such convs split
# each GEMM's output rows. Measured at batch 1 (2 threads, ms, row split -> tiles, 3 alternating runs): 64->64
# 3x3 on 112x112 11.4-13.2 -> 6.8-7.0, on 56x56 2.2-2.5 -> 1.8-1.9, on 32x32 0.78-0.83 -> 0.62-0.64, the 7x7/2
# stem on 224x224 3.1-4.1 -> 2.6-2.8, 128 channels on 28x28 1.76-1.79 -> 1.61-1.64 (with tiles of 112 columns,
# a 512 KB budget, 2.1: slower).
TILE_BYTES = 1 << 20
TILE_MIN_COLUMNS = 192


@njit(**JIT)
def _tile_rows(kg_all, ho, wo, threads, itemsize):
    """Output rows per tile of the tiled forward, or 0 where it does not apply: a sample's columns (kg_all rows
    of Ho*Wo) within TILE_BYTES, or tiles under TILE_MIN_COLUMNS. The tile count is a multiple of threads."""
    if kg_all * ho * wo * itemsize <= TILE_BYTES or wo == 0:
        return 0
    fit = max(1, TILE_BYTES // (kg_all * wo * itemsize))
    tiles = _ceil_div(_ceil_div(ho, fit), threads) * threads
    rows = _ceil_div(ho, min(ho, tiles))
    return rows if rows * wo >= TILE_MIN_COLUMNS else 0


@njit(**JIT)
def _forward_tile(x, w2, out, n, oh0, oh1, groups, cbuf, pbuf, kh, kw, sh, sw, pt, pl, dh, dw):
    """Output rows oh0 .. oh1 - 1 of sample n: their columns, a GEMM per group into a block of the thread's own,
    then copied into out."""
    co, kg = w2.shape
    og = co // groups
    wo = out.shape[3]
    span = (oh1 - oh0) * wo
    cols = cbuf[:x.shape[1] * kh * kw * span].reshape((x.shape[1] * kh * kw, span))
    part = pbuf[:co * span].reshape((co, span))
    im2col_rows(x, n, 1, cols, 0, x.shape[1], oh0, oh1, kh, kw, sh, sw, pt, pl, dh, dw, wo)
    for g in range(groups):
        dot(w2[g * og:(g + 1) * og], cols[g * kg:(g + 1) * kg], part[g * og:(g + 1) * og])
    o2 = out[n].reshape((co, out.shape[2] * wo))
    for o in range(co):
        d, src = o2[o, oh0 * wo:oh1 * wo], part[o]
        for k in range(span):
            d[k] = src[k]


@njit(**JIT_PARALLEL)
def _forward_tiles(x, w2, out, groups, threads, rows, kh, kw, sh, sw, pt, pl, dh, dw):
    """Every sample's output in tiles of `rows` output rows, claimed by `threads` threads, each with column and
    output blocks of its own."""
    N = x.shape[0]
    ho, wo = out.shape[2], out.shape[3]
    tiles = _ceil_div(ho, rows)
    cbuf = np.empty((threads, x.shape[1] * kh * kw * rows * wo), x.dtype)
    pbuf = np.empty((threads, w2.shape[0] * rows * wo), x.dtype)
    counter = task_counter()
    for t in prange(threads):
        task = claim(counter)
        while task < N * tiles:
            oh0 = (task % tiles) * rows
            _forward_tile(x, w2, out, task // tiles, oh0, min(ho, oh0 + rows), groups, cbuf[t], pbuf[t], kh, kw,
                          sh, sw, pt, pl, dh, dw)
            task = claim(counter)


@njit(**JIT)
def _input_samples(gy, w2, out, n0, nb, groups, cols, rows, kh, kw, sh, sw, pt, pl, dh, dw, pointwise):
    """dgrad of samples n0 .. n0+nb-1: the columns w^T @ dL/dy per group (all nb samples' side by side in one
    GEMM when nb > 1), then col2im; a pointwise conv's columns are the output itself."""
    co, ho, wo = gy.shape[1], gy.shape[2], gy.shape[3]
    C, H, W = out.shape[1], out.shape[2], out.shape[3]
    kg = w2.shape[1]
    og = co // groups
    hw = ho * wo
    if nb > 1:
        for g in range(groups):
            samples_rows(gy, n0, nb, g, og, rows)
            dot(w2[g * og:(g + 1) * og].T, rows, cols[g * kg:(g + 1) * kg])
        col2im(cols, out, n0, nb, 0, C, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo)
        return
    g2 = gy[n0].reshape(co, hw)
    dst = out[n0].reshape(C, H * W) if pointwise else cols
    for g in range(groups):
        dot(w2[g * og:(g + 1) * og].T, g2[g * og:(g + 1) * og], dst[g * kg:(g + 1) * kg])
    if not pointwise:
        col2im(cols, out, n0, 1, 0, C, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo)


@njit(**JIT)
def _weight_samples(x, gy, acc, n0, nb, groups, cols, rows, part, kh, kw, sh, sw, pt, pl, dh, dw, pointwise):
    """acc += the weight gradient of samples n0 .. n0+nb-1 (one GEMM per group over their columns when nb > 1)."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    co, ho, wo = gy.shape[1], gy.shape[2], gy.shape[3]
    kg = acc.shape[1]
    og = co // groups
    hw = ho * wo
    if nb > 1:
        im2col(x, n0, nb, cols, 0, C, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo)
        for g in range(groups):
            samples_rows(gy, n0, nb, g, og, rows)
            dot(rows, cols[g * kg:(g + 1) * kg].T, part)
            acc[g * og:(g + 1) * og] += part
        return
    src = x[n0].reshape(C, H * W) if pointwise else cols   # x may be read-only: cols stays writable
    if not pointwise:
        im2col(x, n0, 1, cols, 0, C, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo)
    g2 = gy[n0].reshape(co, hw)
    for g in range(groups):
        dot(g2[g * og:(g + 1) * og], src[g * kg:(g + 1) * kg].T, part)
        acc[g * og:(g + 1) * og] += part


@njit(**JIT)
def _sum_workers(parts, acc):
    """acc = the sum of the threads' partial weight gradients."""
    acc[:, :] = parts[0]
    for t in range(1, parts.shape[0]):
        acc += parts[t]


@njit(**JIT)
def _transposed_groups(w2, groups):
    """w2's group blocks transposed, each C-contiguous: (groups, C/groups*kh*kw, C_out/groups)."""
    co, kg = w2.shape
    og = co // groups
    wt = np.empty((groups, kg, og), w2.dtype)
    for g in range(groups):
        wt[g] = w2[g * og:(g + 1) * og].T
    return wt


@njit(**JIT_PARALLEL)
def _weight_shared_rows(x, gy, acc, nb, groups, threads, kh, kw, sh, sw, pt, pl, dh, dw):
    """wgrad of samples sharing GEMMs (nb at a time) on `threads` threads: the columns sample by sample, then each
    GEMM's output rows split between them (no thread's own copy of the whole gradient to add up)."""
    N, C = x.shape[0], x.shape[1]
    co, ho, wo = gy.shape[1], gy.shape[2], gy.shape[3]
    kg = acc.shape[1]
    og = co // groups
    hw = ho * wo
    cols = np.empty((C * kh * kw, nb * hw), x.dtype)
    rows = np.empty((co, nb * hw), gy.dtype)
    zero(acc)
    counter = task_counter()
    for n0 in range(0, N, nb):
        counter[0] = 0
        for _ in prange(threads):
            c = claim(counter)
            while c < C:
                im2col(x, n0, nb, cols, c, c + 1, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo)
                c = claim(counter)
        samples_rows(gy, n0, nb, 0, co, rows)
        counter[0] = 0
        for _ in prange(threads):
            task = claim(counter)
            while task < groups * threads:
                g = task // threads
                r0, r1 = block(og, threads, task % threads)
                part = np.empty((r1 - r0, kg), acc.dtype)
                dot(rows[g * og + r0:g * og + r1], cols[g * kg:(g + 1) * kg].T, part)
                acc[g * og + r0:g * og + r1] += part
                task = claim(counter)


# ----------------------------------------------------------------------------
# wide columns: stride-1 convolutions with short output rows (LeNet's)
#
# A sample's input is copied once into a zero-padded plane Wp wide; the columns of tap (c, i, j) are then that
# plane read from (i*dh, j*dw) on, Ho*Wp values in a row: one contiguous copy per tap instead of one copy of Wo
# values per tap and output row. Output position (oh, ow) is column oh*Wp + ow; the Wp - Wo columns past each
# output row are computed and thrown away (forward), or zero (dL/dy in the gradients, so that they add nothing).

ROW_COPY_COST = 12     # a short row copy (view, bounds, loop) costs about 12 element copies...
# ...and an element copy about COPY_MACS (32) GEMM multiply-adds


@njit(**JIT)
def _wide_width(W, pl, kw, dw, wo):
    """Wp: the padded input's width, and at least Wo plus the window's reach so that no valid output wraps."""
    return max(pl + W, wo + (kw - 1) * dw)


@njit(**JIT)
def _is_wide(co, sh, sw, W, pl, kw, dw, wo):
    """Stride 1, and the columns thrown away (each an element copy and C_out multiply-adds per output row)
    cost less than the row copy saved. Measured (batch 32-64, fwd / dgrad / wgrad ms, row copies -> wide):
    LeNet's 1->6 5x5 1.25/1.30/1.69 -> 0.30/0.35/0.30 and 6->16 1.46/0.78/1.84 -> 0.55/0.63/1.07; ResNet's
    32x32 64->64 3x3 19.2/15.8/23.0 -> 16.3/14.2/16.3, 16x16 128->128 18.0/14.8/19.9 -> 16.2/15.2/18.0; but
    8x8 256->256 wgrad 21.3 -> 25.5 and 4x4 512->512 (samples sharing GEMMs) 2-4x slower: those stay out."""
    if sh != 1 or sw != 1 or wo == 0:
        return False
    waste = _wide_width(W, pl, kw, dw, wo) - wo
    return waste * (COPY_MACS + co) <= ROW_COPY_COST * COPY_MACS


@njit(**JIT)
def _pad_plane(x, n, pad, hp, wp, pt, pl):
    """pad[c, (ih + pt)*Wp + pl + iw] = x[n, c, ih, iw] for the rows within Hp; the rest of pad stays zero."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    for c in range(C):
        for ih in range(min(H, hp - pt)):
            start = (ih + pt) * wp + pl
            d, s = pad[c, start:start + W], x[n, c, ih]
            for k in range(W):
                d[k] = s[k]


@njit(**JIT)
def _wide_columns(pad, cols, kh, kw, dh, dw, wp):
    """cols[(c*kh + i)*kw + j] = pad[c] from (i*dh)*Wp + j*dw on: each row one copy of Ho*Wp values."""
    span = cols.shape[1]
    for c in range(pad.shape[0]):
        for i in range(kh):
            for j in range(kw):
                start = i * dh * wp + j * dw
                d, s = cols[(c * kh + i) * kw + j], pad[c, start:start + span]
                for k in range(span):
                    d[k] = s[k]


@njit(**JIT)
def _wide_rows(gy, n, rows, wp):
    """rows[o, oh*Wp + ow] = gy[n, o, oh, ow]; the columns past Wo stay zero."""
    co, ho, wo = gy.shape[1], gy.shape[2], gy.shape[3]
    for o in range(co):
        for oh in range(ho):
            d, s = rows[o, oh * wp:oh * wp + wo], gy[n, o, oh]
            for k in range(wo):
                d[k] = s[k]


@njit(**JIT)
def _wide_forward_sample(x, w2, out, n, groups, pad, cols, part, kh, kw, pt, pl, dh, dw, hp, wp):
    co, ho, wo = out.shape[1], out.shape[2], out.shape[3]
    kg, og = w2.shape[1], co // groups
    _pad_plane(x, n, pad, hp, wp, pt, pl)
    _wide_columns(pad, cols, kh, kw, dh, dw, wp)
    for g in range(groups):
        dot(w2[g * og:(g + 1) * og], cols[g * kg:(g + 1) * kg], part[g * og:(g + 1) * og])
    for o in range(co):
        for oh in range(ho):
            d, s = out[n, o, oh], part[o, oh * wp:oh * wp + wo]
            for k in range(wo):
                d[k] = s[k]


@njit(**JIT)
def _wide_input_sample(gy, w2, out, n, groups, pad, cols, rows, kh, kw, pt, pl, dh, dw, hp, wp):
    C, H, W = out.shape[1], out.shape[2], out.shape[3]
    kg, og = w2.shape[1], gy.shape[1] // groups
    _wide_rows(gy, n, rows, wp)
    for g in range(groups):
        dot(w2[g * og:(g + 1) * og].T, rows[g * og:(g + 1) * og], cols[g * kg:(g + 1) * kg])
    pad[:, :] = 0
    span = cols.shape[1]
    for c in range(C):
        for i in range(kh):
            for j in range(kw):
                start = i * dh * wp + j * dw
                d, s = pad[c, start:start + span], cols[(c * kh + i) * kw + j]
                for k in range(span):
                    d[k] += s[k]
        for ih in range(H):
            dst = out[n, c, ih]
            if ih + pt >= hp:   # an input row no window reaches
                dst[:] = 0
                continue
            s = pad[c, (ih + pt) * wp + pl:(ih + pt) * wp + pl + W]
            for k in range(W):
                dst[k] = s[k]


@njit(**JIT)
def _wide_weight_sample(x, gy, acc, n, groups, pad, cols, rows, part, kh, kw, pt, pl, dh, dw, hp, wp):
    kg, og = acc.shape[1], gy.shape[1] // groups
    _pad_plane(x, n, pad, hp, wp, pt, pl)
    _wide_columns(pad, cols, kh, kw, dh, dw, wp)
    _wide_rows(gy, n, rows, wp)
    for g in range(groups):
        dot(rows[g * og:(g + 1) * og], cols[g * kg:(g + 1) * kg].T, part)
        acc[g * og:(g + 1) * og] += part


@njit(**JIT)
def _wide_shape(C, co, ho, wo, W, kh, kw, pl, dh, dw, threads, like):
    """(Hp, Wp, each thread's zeroed padded plane with the window's reach past its end, columns (every group's),
    and zeroed rows of dL/dy)."""
    wp = _wide_width(W, pl, kw, dw, wo)
    hp = ho + (kh - 1) * dh
    pad = np.zeros((threads, C, hp * wp + (kw - 1) * dw), like.dtype)
    cols = np.empty((threads, C * kh * kw, ho * wp), like.dtype)
    rows = np.zeros((threads, co, ho * wp), like.dtype)
    return hp, wp, pad, cols, rows


# The three convolutions in wide columns: samples claimed by `threads` threads, each with buffers of its own.

FORWARD, GRAD_INPUT = 0, 1


@njit(**JIT_PARALLEL)
def _wide_samples(kind, src, w2, out, groups, threads, pad, cols, buf, kh, kw, pt, pl, dh, dw, hp, wp):
    """Every sample's forward (src x, buf the GEMM's output) or dgrad (src dL/dy, buf its wide rows): on the
    calling thread, or claimed by `threads` threads with buffers each."""
    N = out.shape[0]
    if threads == 1:   # no parallel region: its threads would spin against BLAS's after the call
        for n in range(N):
            if kind == FORWARD:
                _wide_forward_sample(src, w2, out, n, groups, pad[0], cols[0], buf[0], kh, kw, pt, pl, dh, dw, hp, wp)
            else:
                _wide_input_sample(src, w2, out, n, groups, pad[0], cols[0], buf[0], kh, kw, pt, pl, dh, dw, hp, wp)
        return
    counter = task_counter()
    for t in prange(threads):
        n = claim(counter)
        while n < N:
            if kind == FORWARD:
                _wide_forward_sample(src, w2, out, n, groups, pad[t], cols[t], buf[t], kh, kw, pt, pl, dh, dw, hp, wp)
            else:
                _wide_input_sample(src, w2, out, n, groups, pad[t], cols[t], buf[t], kh, kw, pt, pl, dh, dw, hp, wp)
            n = claim(counter)


@njit(**JIT)
def wide_conv2d(x, w2, out, groups, threads, kh, kw, pt, pl, dh, dw):
    C, W = x.shape[1], x.shape[3]
    co, ho, wo = out.shape[1], out.shape[2], out.shape[3]
    hp, wp, pad, cols, _ = _wide_shape(C, 0, ho, wo, W, kh, kw, pl, dh, dw, threads, x)
    part = np.empty((threads, co, ho * wp), x.dtype)
    _wide_samples(FORWARD, x, w2, out, groups, threads, pad, cols, part, kh, kw, pt, pl, dh, dw, hp, wp)


@njit(**JIT)
def wide_conv2d_grad_input(gy, w2, out, groups, threads, kh, kw, pt, pl, dh, dw):
    C, W = out.shape[1], out.shape[3]
    co, ho, wo = gy.shape[1], gy.shape[2], gy.shape[3]
    hp, wp, pad, cols, rows = _wide_shape(C, co, ho, wo, W, kh, kw, pl, dh, dw, threads, gy)
    _wide_samples(GRAD_INPUT, gy, w2, out, groups, threads, pad, cols, rows, kh, kw, pt, pl, dh, dw, hp, wp)


@njit(**JIT_PARALLEL)
def wide_conv2d_grad_weight(x, gy, acc, groups, threads, kh, kw, pt, pl, dh, dw):
    """acc (C_out, C/groups*kh*kw) = the weight gradient: each thread sums its samples' in a buffer of its own."""
    N, C, W = x.shape[0], x.shape[1], x.shape[3]
    co, ho, wo = gy.shape[1], gy.shape[2], gy.shape[3]
    kg = acc.shape[1]
    hp, wp, pad, cols, rows = _wide_shape(C, co, ho, wo, W, kh, kw, pl, dh, dw, threads, x)
    part = np.empty((threads, co // groups, kg), acc.dtype)
    if threads == 1:
        zero(acc)
        for n in range(N):
            _wide_weight_sample(x, gy, acc, n, groups, pad[0], cols[0], rows[0], part[0], kh, kw, pt, pl, dh, dw, hp,
                                wp)
        return
    sums = zeros((threads, co, kg), acc)
    counter = task_counter()
    for t in prange(threads):
        n = claim(counter)
        while n < N:
            _wide_weight_sample(x, gy, sums[t], n, groups, pad[t], cols[t], rows[t], part[t], kh, kw, pt, pl, dh, dw,
                                hp, wp)
            n = claim(counter)
    _sum_workers(sums, acc)


# ----------------------------------------------------------------------------
# the three convolutions: the plan per shape, then threads

# A pointwise conv (conv_nhwc.py) or a conv in register tiles splits over threads from SPLIT_MIN_MACS
# multiply-adds (about 50 us on one thread) when the pool runs on TBB, whose waiting threads yield the core; on
# OpenMP from forward_workers' thresholds (about 1 ms at batch 1, where its comment says why, and
# PARALLEL_MIN_MACS otherwise). MobileNet in onnx_bench's workers, interleaved rounds: batch 1 1.02 ms with its
# pointwise convs on one thread, 0.80 with those from 2M multiply-adds on two (and 0.89 with its depthwise convs
# split that way too, so they keep forward_workers); batch 16 10.76 ms with the threshold at PARALLEL_MIN_MACS,
# 8.87 with SPLIT_MIN_MACS. ResNet's 3x3/2 convs of 19M multiply-adds in tiles run on 2 threads so.
SPLIT_MIN_MACS = 1 << 21


@njit(**JIT)
def split_workers(macs, tasks, samples):
    """The threads a pointwise or tiled conv of `macs` multiply-adds in `tasks` parts shares."""
    if ON_TBB:
        return workers_for(macs, tasks, SPLIT_MIN_MACS)
    return forward_workers(macs, tasks, samples)


@njit(**JIT)
def _uses_tiles(N, groups, sh, sw, itemsize):
    """Whether a forward conv may run as register tiles over its input (dlc_cpu_conv_tiles, whose `pays` weighs
    the shape): float32, one group, and fewer samples than threads (batch 1: a thin GEMM per sample) or a
    stride-1 window. At batch 16 and 32 on 2 threads (AVX-512's wide blocks; tiles / im2col + GEMM, minimum of 5
    rounds): ResNet's 3x3 convs on 32x32 0.78-0.82, 16x16 0.74, 8x8 0.73, 4x4 0.88-0.90, its 3x3 stem
    0.39-0.42; strided ones 0.88-1.16 (64 -> 128 3x3/2 on 32x32 slower in rows, the 8x8 plane's level in
    columns), so those stay."""
    return itemsize == 4 and groups == 1 and (N < thread_count() or (sh == 1 and sw == 1))


@njit(**JIT)
def _across_samples(N, C, co, kh, kw, sh, sw, ho, wo, groups, itemsize):
    """Whether a forward conv (or a stride-1 dgrad as one) runs as tiles across samples (dlc_cpu_conv_tiles's
    `pays_across_samples` weighs the shape): float32, one group, small planes or strided windows at batch > 1."""
    return itemsize == 4 and groups == 1 and pays_across_samples(N, C, co, kh, kw, sh, sw, ho, wo, thread_count())


@njit(**JIT_PARALLEL)
def conv2d(x, w, out, sh, sw, pt, pl, dh, dw, groups):
    """out (N, C_out, Ho, Wo) = x (N, C, H, W) cross-correlated with w (C_out, C/groups, kh, kw)."""
    N, C, H, W = x.shape
    co, cg, kh, kw = w.shape
    ho, wo = out.shape[2], out.shape[3]
    if _is_depthwise(cg, co // groups, kh, kw):
        return depthwise_conv2d(x, w, out, sh, sw, pt, pl, dh, dw)
    if out.size == 0:
        return
    kg, og = cg * kh * kw, co // groups
    w2 = w.reshape(co, kg)
    pointwise = _is_pointwise(kh, kw, sh, sw, pt, pl, H, W, ho, wo)
    hw = ho * wo
    macs = out.size * kg
    if _across_samples(N, C, co, kh, kw, sh, sw, ho, wo, groups, x.itemsize):
        tiled_conv2d_across_samples(x, w, out, split_workers(macs, N * co, N), sh, sw, pt, pl, dh, dw)
        return
    if _uses_tiles(N, groups, sh, sw, x.itemsize) and pays(C, co, kh, kw, sh, sw, dh, dw, ho, wo, x.itemsize):
        tiled_conv2d(x, w, out, split_workers(macs, N * co, N), sh, sw, pt, pl, dh, dw)
        return
    threads = forward_workers(macs, N * groups * og, N)
    previous = blas_on_calling_thread()
    if N >= threads and not pointwise and _is_wide(co, sh, sw, W, pl, kw, dw, wo):
        wide_conv2d(x, w2, out, groups, threads, kh, kw, pt, pl, dh, dw)
        restore_blas_threads(previous)
        return
    nb = samples_per_gemm(N, hw, BATCH_BELOW, threads)
    chunks = N // nb
    if chunks >= threads:
        # GEMMs of whole samples (or of nb samples side by side), each thread with its own columns
        cols = np.empty((threads, 0 if pointwise and nb == 1 else C * kh * kw, nb * hw), x.dtype)
        part = np.empty((threads, og if nb > 1 else 0, nb * hw), x.dtype)
        if threads == 1:
            for c in range(chunks):
                _forward_samples(x, w2, out, c * nb, nb, groups, cols[0], part[0], kh, kw, sh, sw, pt, pl, dh,
                                 dw, pointwise)
        else:
            counter = task_counter()
            for t in prange(threads):
                c = claim(counter)
                while c < chunks:
                    _forward_samples(x, w2, out, c * nb, nb, groups, cols[t], part[t], kh, kw, sh, sw, pt, pl,
                                     dh, dw, pointwise)
                    c = claim(counter)
    elif not pointwise and _tile_rows(C * kh * kw, ho, wo, threads, x.itemsize) > 0:
        # fewer samples than threads, large planes: tiles of output rows
        _forward_tiles(x, w2, out, groups, threads, _tile_rows(C * kh * kw, ho, wo, threads, x.itemsize), kh, kw,
                       sh, sw, pt, pl, dh, dw)
    else:
        # fewer samples than threads (batch 1): the columns built by all threads, then each GEMM's output rows
        # split between them
        cols = np.empty((0 if pointwise else C * kh * kw, hw), x.dtype)
        for n in range(N):
            src = x[n].reshape(C, H * W) if pointwise else cols
            if not pointwise:
                im2col_threads(x, n, cols, min(threads, C), kh, kw, sh, sw, pt, pl, dh, dw, ho, wo)
            o2 = out[n].reshape(co, hw)
            counter = task_counter()
            for _ in prange(threads):
                task = claim(counter)
                while task < groups * threads:
                    g = task // threads
                    r0, r1 = block(og, threads, task % threads)
                    forward_dot(w2[g * og + r0:g * og + r1], src[g * kg:(g + 1) * kg], o2[g * og + r0:g * og + r1])
                    task = claim(counter)
    restore_blas_threads(previous)


# Tiles across samples run a stride-1 dgrad (after the weights' flip: 0.3 ms for 256 x 256 x 3 x 3, 1.4-1.9 for
# 512 x 512) from planes of this many positions. In one process, interleaved (2 threads, ms, minimum of 15 calls):
# 256 -> 256 on 8x8 at batch 16 im2col + GEMM 6.8, tiles in rows 7.2, across samples 5.1 (+ the flip), at batch
# 32 13.7 / 14.5 / 9.9; 512 -> 512 on 4x4 at batch 16 10.3 / 10.7 / 9.1, batch 32 11.0 / 17.0 / 11.0: no gain
# left after the flip, so 4x4 planes stay with im2col + GEMM.
ACROSS_DGRAD_MIN_POSITIONS = 64
FLIP_CHANNELS = 16   # input channels per task of _flipped_transposed


@njit(**JIT_PARALLEL)
def _flipped_transposed(w, threads):
    """w (C_out, C, kh, kw) as (C, C_out, kh, kw) with each window turned half a turn: the weights of a stride-1
    conv's dgrad as a forward conv. On `threads` threads, each claiming FLIP_CHANNELS input channels at a time."""
    co, C, kh, kw = w.shape
    kk = kh * kw
    wt = np.empty((C, co, kh, kw), w.dtype)
    src, dst = w.reshape(co * C * kk), wt.reshape(co * C * kk)
    # a window turned half a turn is its kh*kw values in reverse order; in blocks of 16 input channels, each
    # output channel's run of them read in order, and 3x3 windows in a loop of known length: 1.6-1.7 ms for
    # ResNet's 512 x 512 x 3 x 3 on one thread (channel by channel, 4-d indexed: 6.7 ms; any window's loop: 5.0)
    counter = task_counter()
    for _ in prange(threads):
        c0 = claim(counter) * FLIP_CHANNELS
        while c0 < C:
            for o in range(co):
                for c in range(c0, min(C, c0 + FLIP_CHANNELS)):
                    a, b = (o * C + c) * kk, (c * co + o) * kk
                    if kk == 9:
                        for t in range(9):
                            dst[b + t] = src[a + 8 - t]
                    else:
                        for t in range(kk):
                            dst[b + t] = src[a + kk - 1 - t]
            c0 = claim(counter) * FLIP_CHANNELS
    return wt


@njit(**JIT_PARALLEL)
def conv2d_grad_input(gy, w, out, sh, sw, pt, pl, dh, dw, groups):
    """out (N, C, H, W) = the adjoint of conv2d in x, applied to gy (N, C_out, Ho, Wo); conv_transpose2d too."""
    N, co, ho, wo = gy.shape
    _, cg, kh, kw = w.shape
    C, H, W = out.shape[1], out.shape[2], out.shape[3]
    if _is_depthwise(cg, co // groups, kh, kw):
        return depthwise_conv2d_grad_input(gy, w, out, sh, sw, pt, pl, dh, dw)
    if out.size == 0:
        return
    kg, og = cg * kh * kw, co // groups
    w2 = w.reshape(co, kg)
    pointwise = _is_pointwise(kh, kw, sh, sw, pt, pl, H, W, ho, wo)
    hw = ho * wo
    macs = gy.size * kg
    # a stride-1 window's dgrad is the forward conv of gy with the window flipped and the channels swapped,
    # padded by the window's reach less the forward's padding: as tiles across samples on planes of
    # ACROSS_DGRAD_MIN_POSITIONS to 8x8 at batch > 1, else in tiles where those pay as a forward would, in
    # the rows form, for at least TILED_DGRAD_MIN_CHANNELS input channels (measured at batch 32 on 2 threads,
    # ms, the checkout before -> tiles: ResNet's 3x3 convs on 32x32 14.4 -> 13.3, 16x16 15.5 -> 11.7, 8x8 17.7
    # -> 13.1; not taken: 4x4 planes in columns 14.4 -> 17.0, a stem's 3 channels 2.6 -> 4.5)
    tpt, tpl = (kh - 1) * dh - pt, (kw - 1) * dw - pl
    if (sh == 1 and sw == 1 and tpt >= 0 and tpl >= 0 and H * W >= ACROSS_DGRAD_MIN_POSITIONS
            and _across_samples(N, co, C, kh, kw, 1, 1, H, W, groups, gy.itemsize)):
        threads = split_workers(macs, N * C, N)
        tiled_conv2d_across_samples(gy, _flipped_transposed(w, threads), out, threads, 1, 1, tpt, tpl, dh, dw)
        return
    if (_uses_tiles(N, groups, sh, sw, gy.itemsize) and sh == 1 and sw == 1 and tpt >= 0 and tpl >= 0
            and C >= TILED_DGRAD_MIN_CHANNELS and pays(co, C, kh, kw, 1, 1, dh, dw, H, W, gy.itemsize)
            and form_of(co, C, kh, kw, 1, 1, dh, dw, H, W) == ROWS):
        threads = split_workers(macs, N * C, N)
        tiled_conv2d(gy, _flipped_transposed(w, threads), out, threads, 1, 1, tpt, tpl, dh, dw)
        return
    threads = workers_for(macs, N * groups * kg)
    previous = blas_on_calling_thread()
    if N >= threads and not pointwise and _is_wide(co, sh, sw, W, pl, kw, dw, wo):
        wide_conv2d_grad_input(gy, w2, out, groups, threads, kh, kw, pt, pl, dh, dw)
        restore_blas_threads(previous)
        return
    nb = samples_per_gemm(N, hw, BATCH_BELOW, threads)
    chunks = N // nb
    if chunks >= threads:
        cols = np.empty((threads, 0 if pointwise and nb == 1 else C * kh * kw, nb * hw), gy.dtype)
        rows = np.empty((threads, og if nb > 1 else 0, nb * hw), gy.dtype)
        if threads == 1:
            for c in range(chunks):
                _input_samples(gy, w2, out, c * nb, nb, groups, cols[0], rows[0], kh, kw, sh, sw, pt, pl, dh, dw,
                               pointwise)
        else:
            counter = task_counter()
            for t in prange(threads):
                c = claim(counter)
                while c < chunks:
                    _input_samples(gy, w2, out, c * nb, nb, groups, cols[t], rows[t], kh, kw, sh, sw, pt, pl, dh,
                                   dw, pointwise)
                    c = claim(counter)
    else:
        # batch 1: the columns' rows split between threads, which needs w^T's rows contiguous: a copy of the
        # weights, 1/(Ho*Wo) of the GEMM's work
        wt = _transposed_groups(w2, groups)
        cols = np.empty((0 if pointwise else C * kh * kw, hw), gy.dtype)
        for n in range(N):
            g2 = gy[n].reshape(co, hw)
            dst = out[n].reshape(C, H * W) if pointwise else cols
            counter = task_counter()
            for _ in prange(threads):
                task = claim(counter)
                while task < groups * threads:
                    g = task // threads
                    r0, r1 = block(kg, threads, task % threads)
                    dot(wt[g, r0:r1], g2[g * og:(g + 1) * og], dst[g * kg + r0:g * kg + r1])
                    task = claim(counter)
            if not pointwise:
                col2im_threads(cols, out, n, min(threads, C), kh, kw, sh, sw, pt, pl, dh, dw, ho, wo)
    restore_blas_threads(previous)


@njit(**JIT_PARALLEL)
def conv2d_grad_weight(x, gy, out, sh, sw, pt, pl, dh, dw, groups):
    """out (C_out, C/groups, kh, kw) = the sum over samples of gy[n] @ im2col(x[n])^T, per group."""
    N, C, H, W = x.shape
    co, ho, wo = gy.shape[1], gy.shape[2], gy.shape[3]
    _, cg, kh, kw = out.shape
    if _is_depthwise(cg, co // groups, kh, kw):
        return depthwise_conv2d_grad_weight(x, gy, out, sh, sw, pt, pl, dh, dw)
    kg, og = cg * kh * kw, co // groups
    acc = out.reshape(co, kg)
    if N == 0 or gy.size == 0:
        zero(acc)
        return
    pointwise = _is_pointwise(kh, kw, sh, sw, pt, pl, H, W, ho, wo)
    hw = ho * wo
    macs = gy.size * kg
    if x.itemsize == 4 and groups == 1 and kh * kw > 1 and C >= TILED_WGRAD_MIN_CHANNELS and macs >= MIN_MACS:
        # register blocks summed over every sample, without columns (dlc_cpu_conv_tiles): W8's 3x3 convs at batch
        # 32 on 2 threads (ms, minimum of 5 x 2 calls, columns + BLAS -> tiles): 64 -> 64 on 32x32 16.4 -> 15.1,
        # 128 -> 128 on 16x16 16.4 -> 12.1, 256 -> 256 on 8x8 18.1 -> 12.4, 128 -> 256 3x3/2 9.9 -> 7.1; the
        # 512-channel ones on 4x4 and 3x3/2 on 32x32 and 8x8 even (15.6-16.0, 9.7-10.0, 7.9-8.1). Not the stem
        # (3 channels padded to a block of 32: 2.8 -> 6.6) nor 1x1 convs (1.4 -> 5.5)
        tiled_conv2d_grad_weight(x, gy, out, split_workers(macs, co * C, N), sh, sw, pt, pl, dh, dw)
        return
    threads = workers_for(macs, N * groups * og)
    previous = blas_on_calling_thread()
    if N >= threads and not pointwise and _is_wide(co, sh, sw, W, pl, kw, dw, wo):
        wide_conv2d_grad_weight(x, gy, acc, groups, threads, kh, kw, pt, pl, dh, dw)
        restore_blas_threads(previous)
        return
    shared = samples_per_gemm(N, hw, WGRAD_BATCH_BELOW, 1)
    nb = samples_per_gemm(N, hw, WGRAD_BATCH_BELOW, threads)
    chunks = N // nb
    if threads > 1 and shared > 1:
        # one GEMM for the samples, its rows split between threads, rather than a GEMM and a whole gradient to
        # add up per thread: batch 16, 4x4 outputs 512->512, 0.6x the time (load 2.4, two runs)
        _weight_shared_rows(x, gy, acc, shared, groups, threads, kh, kw, sh, sw, pt, pl, dh, dw)
    elif chunks >= threads:
        # each thread sums its samples' gradients in a buffer of its own; the buffers are added at the end
        cols = np.empty((threads, 0 if pointwise and nb == 1 else C * kh * kw, nb * hw), x.dtype)
        rows = np.empty((threads, og if nb > 1 else 0, nb * hw), gy.dtype)
        part = np.empty((threads, og, kg), out.dtype)
        sums = np.empty((threads, co, kg), out.dtype)
        if threads == 1:
            sums[0] = 0
            for c in range(chunks):
                _weight_samples(x, gy, sums[0], c * nb, nb, groups, cols[0], rows[0], part[0], kh, kw, sh, sw,
                                pt, pl, dh, dw, pointwise)
        else:
            counter = task_counter()
            for t in prange(threads):
                sums[t] = 0
                c = claim(counter)
                while c < chunks:
                    _weight_samples(x, gy, sums[t], c * nb, nb, groups, cols[t], rows[t], part[t], kh, kw, sh,
                                    sw, pt, pl, dh, dw, pointwise)
                    c = claim(counter)
        _sum_workers(sums, acc)
    else:
        # batch 1: the gradient's rows split between threads, over columns built by all of them
        zero(acc)
        cols = np.empty((0 if pointwise else C * kh * kw, hw), x.dtype)
        for n in range(N):
            src = x[n].reshape(C, H * W) if pointwise else cols
            if not pointwise:
                im2col_threads(x, n, cols, min(threads, C), kh, kw, sh, sw, pt, pl, dh, dw, ho, wo)
            g2 = gy[n].reshape(co, hw)
            counter = task_counter()
            for _ in prange(threads):
                task = claim(counter)
                while task < groups * threads:
                    g = task // threads
                    r0, r1 = block(og, threads, task % threads)
                    part = np.empty((r1 - r0, kg), out.dtype)
                    dot(g2[g * og + r0:g * og + r1], src[g * kg:(g + 1) * kg].T, part)
                    acc[g * og + r0:g * og + r1] += part
                    task = claim(counter)
    restore_blas_threads(previous)


def signatures():
    """How generated code calls the three convolutions, which it binds by symbol (kernels/cpu/library.py):
    variant (name_dtype) -> (function, argument types): C-ordered 4-d arrays (x or dL/dy and w or dL/dy, read
    only; the output) and the attributes as int64."""
    out = {}
    for dtype in (types.float32, types.float64):
        read, written = types.Array(dtype, 4, "C", readonly=True), types.Array(dtype, 4, "C")
        for name in ("conv2d", "conv2d_grad_input", "conv2d_grad_weight"):
            out[f"{name}_{dtype}"] = (name, (read, read, written) + (types.int64,) * 7)
    return out
