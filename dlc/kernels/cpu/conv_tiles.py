"""Forward convolutions (one group) and their weight gradients as register-tiled products over the input,
without BLAS.

Imported by the CPU backend as the module `dlc_cpu_conv_tiles`; kernels/cpu/conv.py's conv2d chooses it
(`_uses_tiles` there, `pays` here; small planes at batch > 1: `_across_samples` there, `pays_across_samples` and
`tiled_conv2d_across_samples` here, whose blocks' positions run across samples). Layouts as there: x (N, C, H,
W), w (C_out, C, kh, kw), out (N, C_out, Ho, Wo).

The product out[n, o, q] = sum_k w[o, k] * B[k, q] over k = (c, i, j) runs in blocks of MR output channels by NR
output positions (dlc_cpu_microkernel.fma_tile; WIDE_MR x WIDE_NR with fma_tile_wide where `block_shape` takes
them), each in registers for the whole sum. Row k of B is read through an offset table from one buffer per
sample, in one of two forms (`layout`):

- rows: the sample's input zero-padded, each padded input row holding every channel's row one after another,
  each split into its sw column phases (column s*sw + b of the row at s of phase b; stride 1: one phase), Wq =
  Wo rounded up to NR plus the window's reach in its phase wide. A block of NR positions of output row oh
  reads, channel by channel, the window's kh input rows from oh*sh on, tap (i, j) from phase (j*dw) % sw at
  (j*dw) // sw: a few streams in order, which the prefetcher follows, and the block goes straight into the
  output (positions past Wo thrown away). Output rows of at most NR/2 positions go two to a block, its second
  half read from the next output row's input rows on.
- columns (small planes, where those thrown-away positions would cost more than copying): im2col's columns,
  Ho*Wo positions a row, rounded up to NR. The thrown-away work is counted in multiply-adds, a copied value
  in COPY_MACS.

Strided windows had a form of their own until the rows form took stride phases: the input split into
whole stride phases (every row and column phase of a channel a plane), a tap's rows a plane apart. In rows,
at batch 1 on 2 threads (ms, minimum of 5 x 100 calls): 64 -> 128 3x3/2 on 32x32 0.486 -> 0.317 (wide
blocks), 128 -> 256 3x3/2 on 16x16 0.379 -> 0.311, a 7x7/2 stem on 224x224 2.1-2.6 -> 1.59.

Where it pays (`pays`; kernels/cpu/conv.py takes it for fewer samples than threads), measured at batch 1 on 2
threads against im2col + GEMM (benchmarks/RESULTS.md): ResNet's 3x3 convs on 32x32 inputs, in one process
each (ms, the minimum of 5 x 100 calls, im2col + GEMM -> tiles): 64 -> 64 on 32x32 0.55 -> 0.44 and 128 ->
128 on 16x16 0.53 -> 0.42 (rows); in alternating processes (ms, 3 each): 256 -> 256 on 8x8 0.57-0.63 ->
0.41-0.53 (rows, two to a block), 64 -> 128 3x3/2 on 32x32 0.53-0.57 -> 0.40-0.50 (then phases), 128 -> 256
3x3/2 on 16x16 0.49-0.50 -> 0.31-0.40 and 256 -> 512 3x3/2 on 8x8 0.57-0.68 -> 0.28-0.42 (columns), 512 ->
512 on 4x4 0.73-1.21 -> 0.55-0.78 (columns); the whole ResNet-18-style net at batch 1 13.76 -> 10.76 ms. Not
taken: ResNet's layers on 224x224 inputs (64 -> 64 on 56x56 1.8-2.2 -> 2.0-2.1 ms, 128 -> 128 on 28x28
1.6-1.9 -> 1.9-2.1, 512 -> 512 on 7x7 1.8-2.8 -> 2.7-3.9), 1x1 convs, and windows over a stem's few channels
(0.11-0.17 ms against 0.06: blocks of 16 positions for sums of 27) or of under MIN_MACS (LeNet's second conv:
2x slower).

What limits it: a block on one core runs at 101-112 GFLOP/s when B's rows lie in order, 48-56 when they lie a
channel plane apart (too many streams for the prefetcher: the columns form, and the phases one was; a copy of each
column block into a panel read in order cost more than it saved). onnxruntime runs ResNet's stride-1 layers
at 0.31-0.36 ms on channels-blocked activations with its weights packed once when the model loads: the input
broadcast, the weights read in order. Tried here, inside this kernel (the input copied channels last, the
weights packed per call): 64 -> 64 on 32x32 0.53 ms against im2col + GEMM's 0.61, of which the packing 0.08
and the copy 0.05; 128 -> 128 on 16x16 0.87 against 0.55, the packing alone 0.34. So that layout needs its
weights packed once per program (and again only when they change), not per call.

The weight gradient (`tiled_conv2d_grad_weight`, chosen by kernels/cpu/conv.py's conv2d_grad_weight) turns
the product around: a block is MR output channels by NR input channels at one tap of the window, its sum over
every sample's output positions, with dL/dy's rows as the left operand (copied as C_out x N*Ho*Wo) and the
input in blocks of NR channels, channels last and zero-padded, as the right one (a position's NR channels at
a tap: NR values in order). No columns are built, and no thread holds a copy of the whole gradient to add up.
"""

import numpy as np
from dlc_cpu_microkernel import (
    MR,
    NR,
    WIDE_MR,
    WIDE_NR,
    WIDE_REGISTERS,
    fma_tile,
    fma_tile_add,
    fma_tile_wide,
    fma_tile_wide_add,
)
from dlc_cpu_threads import JIT, JIT_PARALLEL, claim, task_counter, zero, zeros
from numba import njit, prange

COPY_MACS = 32   # a value copied into columns costs about as much as 32 GEMM multiply-adds (conv.py uses it too)
TASKS_PER_THREAD = 4   # with fewer (samples x column blocks) than this per thread, channels split too
ROWS, COLUMNS = 0, 1   # the forms of B
L1_BYTES = 1 << 15     # a core's L1 data cache (32 KB on the machines measured)
B_BYTES = 1 << 19      # half a core's L2 (1 MB there), the rest for the weights' rows
WGRAD_MIN_POSITIONS = 512
MIN_MACS = 1 << 20     # smaller convs (LeNet's second at batch 1: 0.24M) are all overhead in tiles: 2x slower


@njit(**JIT)
def _ceil_div(a, b):
    return -(-a // b)


@njit(**JIT)
def layout(C, co, kh, kw, sh, sw, dh, dw, ho, wo, nr):
    """(form, Hq, Wq, column blocks per output row, column blocks, a sample's buffer) for blocks of nr positions:
    rows (output rows of at most nr/2 positions two to a block; Hq padded input rows of Wq in each of the sw
    column phases), or columns where the positions rows compute and throw away (past Wo) cost more than copying
    the columns."""
    k = C * kh * kw
    cols_q = _ceil_div(ho * wo, nr) * nr
    reach = (kw - 1) * dw // sw    # columns of its phase a tap reads past its output position's
    if wo <= nr // 2:
        per_row, blocks = 1, _ceil_div(ho, 2)
        wq = nr // 2 + reach
    else:
        per_row = _ceil_div(wo, nr)
        blocks = ho * per_row
        wq = per_row * nr + reach
    hq = (ho - 1) * sh + (kh - 1) * dh + 1
    q = blocks * nr
    copies = C * sw * hq * wq
    if (q - cols_q) * k * co > COPY_MACS * (k * cols_q - copies):
        return COLUMNS, hq, wq, cols_q // nr, cols_q // nr, k * cols_q
    # nr past the end, and an output row's input rows: the last block's thrown-away positions, a last half
    # block's second row
    return ROWS, hq, wq, per_row, q // nr, copies + nr + sh * C * sw * wq


@njit(**JIT)
def block_shape(C, co, kh, kw, sh, sw, dh, dw, ho, wo):
    """(rows, positions) of the register blocks: WIDE_MR x WIDE_NR (fma_tile_wide) on a CPU with AVX-512 for
    the rows form where those blocks compute no more positions than MR x NR ones (ResNet's 32x32 and 16x16
    stages: their 3x3 convs at batch 16 in 0.73-0.79 of im2col + GEMM's time, where the narrow blocks took
    0.98-1.01; 64 -> 128 3x3/2 on 32x32 at batch 1 0.317 ms against 0.486 in narrow phases), else MR x NR."""
    if WIDE_REGISTERS:
        wide = layout(C, co, kh, kw, sh, sw, dh, dw, ho, wo, WIDE_NR)
        narrow = layout(C, co, kh, kw, sh, sw, dh, dw, ho, wo, NR)
        if wide[0] == ROWS and narrow[0] == ROWS and wide[4] * WIDE_NR <= narrow[4] * NR:
            return WIDE_MR, WIDE_NR
    return MR, NR


@njit(**JIT)
def form_of(C, co, kh, kw, sh, sw, dh, dw, ho, wo):
    """The form of B (ROWS or COLUMNS) tiled_conv2d takes for the conv, in the blocks it chooses."""
    nr = block_shape(C, co, kh, kw, sh, sw, dh, dw, ho, wo)[1]
    return layout(C, co, kh, kw, sh, sw, dh, dw, ho, wo, nr)[0]


@njit(**JIT)
def pays(C, co, kh, kw, sh, sw, dh, dw, ho, wo, itemsize):
    """Whether tiles beat im2col + GEMM for a conv of fewer samples than threads (benchmarks/RESULTS.md has the
    measurements): a window larger than 1x1 (a 1x1 conv's GEMM reads x as it is) over more than a stem's few
    channels, of at least MIN_MACS multiply-adds, and B where each block reads it from cache: in the rows form
    the window's input rows (every channel and column phase) within a core's L1 (ResNet's 32x32, 16x16 and 8x8
    layers; its 56x56 to 7x7 ones on 224x224 inputs measured slower in narrow blocks), in columns at most two
    column blocks (every channel block reads them again: 4x4 planes gain) or, for a strided window (whose
    columns im2col gathers value by value), columns within B_BYTES."""
    k = C * kh * kw
    nr = block_shape(C, co, kh, kw, sh, sw, dh, dw, ho, wo)[1]
    if kh * kw == 1 or (k < 64 and nr != WIDE_NR) or co * ho * wo * k < MIN_MACS:
        return False
    form, hq, wq, _, tiles, size = layout(C, co, kh, kw, sh, sw, dh, dw, ho, wo, nr)
    if form == ROWS:
        return kh * C * sw * wq * itemsize <= L1_BYTES
    return tiles <= 2 or (sh * sw > 1 and size * itemsize <= B_BYTES)


@njit(**JIT)
def offsets(form, C, kh, kw, sw, dh, dw, wq, qpad):
    """Where row (c*kh + i)*kw + j of B starts in a sample's buffer, from the start of a column block."""
    boff = np.empty(C * kh * kw, np.int64)
    for c in range(C):
        for i in range(kh):
            for j in range(kw):
                k = (c * kh + i) * kw + j
                if form == ROWS:
                    boff[k] = ((i * dh * C + c) * sw + j * dw % sw) * wq + j * dw // sw
                else:
                    boff[k] = k * qpad
    return boff


@njit(**JIT)
def _rows(x, n, buf, sw, pt, pl, hq, wq):
    """buf[((r*C + c)*sw + b)*Wq + s] = sample n's input zero-padded at row r, column s*sw + b: each padded
    input row holds all channels one after another, each split into its sw column phases, so a block's rows of
    B (channel by channel, three window rows at a time) are read in order. Zeros after."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    buf[:] = 0
    for ih in range(min(H, hq - pt)):
        for c in range(C):
            src = x[n, c, ih]
            if sw == 1:   # one phase: a contiguous copy (the loop below's strided reads do not vectorize)
                base = ((ih + pt) * C + c) * wq + pl
                for q in range(min(W, wq - pl)):
                    buf[base + q] = src[q]
                continue
            for b in range(sw):
                base = ((ih + pt) * C + c) * sw * wq + b * wq
                lo = max(0, _ceil_div(pl - b, sw))                     # first s with s*sw + b - pl >= 0
                hi = max(lo, min(wq, _ceil_div(W + pl - b, sw)))       # first s past the input
                for q in range(lo, hi):
                    buf[base + q] = src[q * sw + b - pl]


@njit(**JIT)
def _columns(x, n, buf, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo, qpad):
    """buf[k*qpad + oh*Wo + ow] = im2col's columns of sample n; zeros in each row's last qpad - Ho*Wo."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    for c in range(C):
        for i in range(kh):
            for j in range(kw):
                row = buf[((c * kh + i) * kw + j) * qpad:((c * kh + i) * kw + j + 1) * qpad]
                for oh in range(ho):
                    ih = oh * sh - pt + i * dh
                    for ow in range(wo):
                        iw = ow * sw - pl + j * dw
                        inside = ih >= 0 and ih < H and iw >= 0 and iw < W
                        row[oh * wo + ow] = x[n, c, ih, iw] if inside else 0
                row[ho * wo:] = 0


@njit(**JIT)
def _sample(x, n, buf, form, kh, kw, sh, sw, pt, pl, dh, dw, hq, wq, ho, wo, qpad):
    """Sample n's buffer of B, in its form."""
    if form == ROWS:
        _rows(x, n, buf, sw, pt, pl, hq, wq)
    else:
        _columns(x, n, buf, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo, qpad)


@njit(**JIT)
def _task(w2, wpad, buf, boff, out, n, b0, b1, t0, t1, part, per_row, row_stride, rw, bstep, direct, mr, nr):
    """out[n, b0*mr : b1*mr] at the output positions of B's column blocks t0 .. t1 - 1 (buf: sample n's B), in
    blocks of mr x nr (MR x NR or WIDE_MR x WIDE_NR).

    Column block t covers B's positions t*nr .. t*nr + nr - 1, position q being output (q // rw, q % rw) (those
    with q % rw >= Wo or q // rw >= Ho thrown away); its rows of B start at (t // per_row)*row_stride + (t %
    per_row)*nr, the second half of its positions bstep on (the rows form of short rows: the next output row's).
    Channel block by channel block: each block's mr rows of w (read once, in order: at batch 1 the weights come
    from memory more than from cache) against every column block of the run, the whole sum in registers. A
    whole block of channels and positions goes straight into out when `direct` (out C-contiguous, the rows
    form) and its positions are one run of out's, else through part."""
    co, k = w2.shape
    ho, wo = out.shape[2], out.shape[3]
    for b in range(b0, b1):
        a, a0 = (w2, b * mr * k) if (b + 1) * mr <= co else (wpad, 0)   # the last block: mr rows, zero past co
        for t in range(t0, t1):
            start = t // per_row * row_stride + t % per_row * nr
            oh, ow0 = t * nr // rw, t * nr % rw
            if direct and (b + 1) * mr <= co and (ow0 + nr <= wo if rw >= nr else rw == wo and oh + 1 < ho):
                _block(a, a0, k, buf, start, bstep, boff, out, ((n * co + b * mr) * ho + oh) * wo + ow0, ho * wo, nr)
                continue
            _block(a, a0, k, buf, start, bstep, boff, part, (t - t0) * nr, part.shape[1], nr)
            for o in range(b * mr, min(co, (b + 1) * mr)):
                r = o - b * mr
                # indexed, not sliced: a view per output row cost 0.3 of the conv
                for q in range(t * nr, min((t + 1) * nr, ho * rw)):
                    if q % rw < wo:
                        out[n, o, q // rw, q % rw] = part[r, q - t0 * nr]


@njit(**JIT)
def _block(a, a0, k, buf, start, bstep, boff, c, c0, ldc, nr):
    """One register block, of the kernel whose blocks are nr positions wide."""
    if nr == WIDE_NR:
        fma_tile_wide(a, a0, k, buf, start, bstep, boff, k, c, c0, ldc)
    else:
        fma_tile(a, a0, k, buf, start, bstep, boff, k, c, c0, ldc)


@njit(**JIT)
def _last_block(w2, mr, like):
    """The last block of mr rows of w2 (C_out, k): its rows from (blocks - 1)*mr on, zero past C_out."""
    co, k = w2.shape
    start = (_ceil_div(co, mr) - 1) * mr
    wpad = zeros((mr, k), like)
    wpad[:co - start] = w2[start:]
    return wpad


@njit(**JIT)
def tiled_conv2d(x, w, out, threads, sh, sw, pt, pl, dh, dw):
    """out = x cross-correlated with w (one group) on `threads` threads, in the register blocks block_shape
    chooses for the conv."""
    co, kh, kw = w.shape[0], w.shape[2], w.shape[3]
    mr, nr = block_shape(x.shape[1], co, kh, kw, sh, sw, dh, dw, out.shape[2], out.shape[3])
    tiled_conv2d_in_blocks(x, w, out, threads, mr, nr, sh, sw, pt, pl, dh, dw)


@njit(**JIT_PARALLEL)
def tiled_conv2d_in_blocks(x, w, out, threads, mr, nr, sh, sw, pt, pl, dh, dw):
    """tiled_conv2d in blocks of mr x nr (MR x NR, or WIDE_MR x WIDE_NR), in tasks of a run of B's column blocks
    by a group of channel blocks, claimed in sample order. Each thread builds the buffer of B of the sample its
    task is in, once per sample it works on: at batch 1 both threads build the same one (a copy about the
    input's size, 15 us on ResNet's 64 x 32 x 32 layer), which cost less than one thread building it for the
    other (a parallel region more, or the other thread reading it from the first one's cache: 0.1-0.4 ms)."""
    N, C = x.shape[0], x.shape[1]
    co, kh, kw = w.shape[0], w.shape[2], w.shape[3]
    ho, wo = out.shape[2], out.shape[3]
    if out.size == 0:
        return
    k = C * kh * kw
    w2 = w.reshape(co, k)
    form, hq, wq, per_row, tiles, size = layout(C, co, kh, kw, sh, sw, dh, dw, ho, wo, nr)
    boff = offsets(form, C, kh, kw, sw, dh, dw, wq, tiles * nr)
    half_rows = form == ROWS and wo <= nr // 2   # two output rows to a block
    row_step = sh * C * sw * wq                  # the rows form's buffer from one output row to the next
    row_stride = (2 if half_rows else 1) * row_step if form == ROWS else per_row * nr
    rw = nr // 2 if half_rows else (per_row * nr if form == ROWS else wo)
    bstep = row_step if half_rows else nr // 2
    direct = form == ROWS and out.flags.c_contiguous
    blocks = _ceil_div(co, mr)
    wpad = _last_block(w2, mr, x)
    # a task: a run of consecutive column blocks (threads writing neighbouring positions of the output share its
    # cache lines) by a group of channel blocks: a whole sample from TASKS_PER_THREAD samples a thread on
    per, run = blocks, tiles
    if threads > 1 and N < TASKS_PER_THREAD * threads:
        run = _ceil_div(tiles, min(tiles, _ceil_div(TASKS_PER_THREAD * threads, N)))
        if N * tiles < TASKS_PER_THREAD * threads:
            per = _ceil_div(blocks, min(blocks, _ceil_div(TASKS_PER_THREAD * threads, N * tiles)))
    groups, runs = _ceil_div(blocks, per), _ceil_div(tiles, run)
    per_sample = runs * groups
    bufs = np.empty((threads, size), x.dtype)
    part = np.empty((threads, mr, run * nr), x.dtype)
    if threads == 1:
        for n in range(N):
            _sample(x, n, bufs[0], form, kh, kw, sh, sw, pt, pl, dh, dw, hq, wq, ho, wo, tiles * nr)
            _task(w2, wpad, bufs[0], boff, out, n, 0, blocks, 0, tiles, part[0], per_row, row_stride, rw, bstep, direct,
                  mr, nr)
        return
    counter = task_counter()
    for t in prange(threads):
        built = -1
        task = claim(counter)
        while task < N * per_sample:
            n, g, r = task // per_sample, task % per_sample // runs, task % runs
            if n != built:
                _sample(x, n, bufs[t], form, kh, kw, sh, sw, pt, pl, dh, dw, hq, wq, ho, wo, tiles * nr)
                built = n
            _task(w2, wpad, bufs[t], boff, out, n, g * per, min(blocks, (g + 1) * per), r * run,
                  min(tiles, (r + 1) * run), part[t], per_row, row_stride, rw, bstep, direct, mr, nr)
            task = claim(counter)


# ----------------------------------------------------------------------------
# tiles across samples: small planes and strided windows at batch > 1
#
# On 8x8 and 4x4 planes a sample has 64 or 16 output positions, and the per-sample forms above run every block
# of output channels over the whole weight matrix (ResNet's 512 x 4608) for a block or two of positions: the
# weights stream from memory once per sample, and the blocks run at 141-166 GFLOP/s on 2 threads where a
# product that reuses them reaches 260. Strided windows at batch > 1 had no tiles (their rows form in column
# phases measured slower than im2col + GEMM there) and gain here on larger planes too.
#
# Here a task is a group of samples whose positions lie side by side in tiles of WIDE_NR (a tile may span two
# samples), summed in chunks of CHUNK_ROWS rows of B (a few input channels' taps): a chunk's tile (CHUNK_ROWS x
# WIDE_NR, contiguous) stays in L1 while every block of output channels runs over it, the chunk's slice of the
# weights stays in L2 while the tiles run. Each chunk of B is gathered from x through a table of offsets made
# once per conv (a tap's offset for each column, or -1 in the padding), so any stride, dilation and padding
# take the same loop.

CHUNK_ROWS = 144    # rows of B per chunk: a tile of 144 x 32 floats is 18 KB, in L1 with the weights' 8 rows
SAMPLE_COLUMNS = 512   # the most columns (samples x positions) of a task
SAMPLES_MAX_POSITIONS = 64     # stride-1 windows on planes of at most this many outputs (8x8) take them...
STRIDED_MAX_POSITIONS = 1024   # ...strided ones on planes up to 32x32 (the largest measured)


@njit(**JIT)
def pays_across_samples(N, C, co, kh, kw, sh, sw, ho, wo, threads):
    """Whether tiles across samples run a float32 one-group conv (the caller checks those): on a CPU with
    AVX-512 (the wide blocks), at batch > 1, a stride-1 window on a plane of at most SAMPLES_MAX_POSITIONS
    outputs or a strided one on up to STRIDED_MAX_POSITIONS, whose tasks fill at least one tile, over more than
    a stem's few rows of B, of at least MIN_MACS multiply-adds.

    Measured on 2 threads (ms, the conv's method before -> across samples, in one process, interleaved; the
    machine's noise moved whole columns by 1.3x between runs, so ratios from one run): at batch 16, 512 -> 512
    3x3 on 4x4 8.6 -> 5.0, 256 -> 256 on 8x8 7.3 -> 5.1, 128 -> 256 3x3/2 on 16x16 4.2 -> 2.6, 64 -> 128 3x3/2
    on 32x32 3.8 -> 3.1, 32 -> 64 3x3/2 on 64x64 5.3 -> 3.9, 64 -> 128 on 56x56 11.9 -> 9.6, 1x1/2 shortcuts
    0.81 -> 0.32, 0.86 -> 0.43 and 1.06 -> 0.61, 256 -> 512 3x3/2 on 8x8 4.5 -> 4.4 (and 2.5 -> 2.5); 1x1
    convs on 2x2 and 4x4 0.41 -> 0.25 and 0.40 -> 0.22; at batch 32, 4x4 17.1 -> 9.8, 8x8 14.6 -> 9.8, 64 ->
    128 3x3/2 on 32x32 7.5 -> 6.0; at batch 8 a 7x7/2 stem of 3 channels on 64x64 1.54 -> 1.42; at batch 2 and
    4, 256 -> 256 on 8x8 0.93 (rows) -> 0.66 and 64 -> 128 3x3/2 on 32x32 0.85 -> 0.44 and 1.09 -> 0.73. Not
    taken: stride-1 windows on larger planes (128 -> 128 on 16x16 4.0 -> 5.9, 64 -> 64 on 32x32 4.1 -> 7.4: the
    rows form reads the padded input in place), 4x4 planes at a batch of 3 on 2 threads (a sample a task, half
    of every tile idle: 2.0 -> 3.2), batch 1 (unmeasured against its own tiles in enough shapes)."""
    hw = ho * wo
    small = hw <= SAMPLES_MAX_POSITIONS or (sh * sw > 1 and hw <= STRIDED_MAX_POSITIONS)
    return (WIDE_REGISTERS and N >= 2 and hw > 0 and small and samples_per_task(N, hw, threads) * hw >= WIDE_NR
            and C * kh * kw >= 64 and N * co * hw * C * kh * kw >= MIN_MACS)


@njit(**JIT)
def samples_per_task(N, hw, threads):
    """Samples per task: up to SAMPLE_COLUMNS columns, and at least `threads` tasks where the batch allows."""
    return max(1, min(_ceil_div(SAMPLE_COLUMNS, hw), N // threads))


@njit(**JIT)
def gather_offsets(columns, H, W, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo, sample_size):
    """table[i*kw + j, col]: where column col's value at tap (i, j) lies in x from its first sample's and the
    channel's start (col's sample times sample_size on), or -1 in the padding or past the last sample."""
    hw = ho * wo
    table = np.full((kh * kw, columns), -1, np.int64)
    for i in range(kh):
        for j in range(kw):
            for col in range(columns):
                s, q = col // hw, col % hw
                ih = q // wo * sh - pt + i * dh
                iw = q % wo * sw - pl + j * dw
                if ih >= 0 and ih < H and iw >= 0 and iw < W:
                    table[i * kw + j, col] = s * sample_size + ih * W + iw
    return table


@njit(**JIT)
def _gather_chunk(xf, start, plane, buf, table, c0, c1, tiles, columns, nr):
    """B's rows for channels c0 .. c1 - 1 (row (c - c0)*taps + tap), tile by tile: buf[(t*rows + r)*nr + l]
    holds column t*nr + l, zero in the padding and past `columns`."""
    taps = table.shape[0]
    rows = (c1 - c0) * taps
    for c in range(c0, c1):
        base = start + c * plane
        for tap in range(taps):
            r = (c - c0) * taps + tap
            offsets = table[tap]
            for t in range(tiles):
                d = buf[(t * rows + r) * nr:(t * rows + r + 1) * nr]
                o = offsets[t * nr:(t + 1) * nr]
                filled = min(nr, columns - t * nr)
                for lane in range(filled):
                    d[lane] = xf[base + o[lane]] if o[lane] >= 0 else 0
                for lane in range(filled, nr):
                    d[lane] = 0


@njit(**JIT_PARALLEL)
def tiled_conv2d_across_samples(x, w, out, threads, sh, sw, pt, pl, dh, dw):
    """out = x cross-correlated with w (one group) in WIDE_MR x WIDE_NR blocks over tiles of positions that run
    across samples (see above), in tasks of samples_per_task samples by every output channel (by a share of the
    channel blocks where the batch gives fewer tasks than threads). A task whose tiles each lie within one
    sample (Ho*Wo a multiple of WIDE_NR) sums straight into out; others through a buffer of their own."""
    N, C, H, W = x.shape
    co, kh, kw = w.shape[0], w.shape[2], w.shape[3]
    ho, wo = out.shape[2], out.shape[3]
    hw = ho * wo
    if out.size == 0:
        return
    taps = kh * kw
    k = C * taps
    mr, nr = WIDE_MR, WIDE_NR
    w2 = w.reshape(co, k)
    xf = x.reshape(x.size)
    blocks = _ceil_div(co, mr)
    wpad = _last_block(w2, mr, x)
    nb = samples_per_task(N, hw, threads)
    sample_groups = _ceil_div(N, nb)
    per = _ceil_div(blocks, min(blocks, _ceil_div(threads, sample_groups)))   # channel blocks per task
    channel_groups = _ceil_div(blocks, per)
    tiles_max = _ceil_div(nb * hw, nr)
    cc = max(1, CHUNK_ROWS // taps)   # channels per chunk
    table = gather_offsets(tiles_max * nr, H, W, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo, C * H * W)
    boff = np.arange(cc * taps) * nr
    direct = hw % nr == 0
    bufs = np.empty((threads, cc * taps * tiles_max * nr), x.dtype)
    parts = np.empty((threads, 0 if direct and co % mr == 0 else per * mr, tiles_max * nr), x.dtype)
    flat_out = out.reshape(out.size)
    counter = task_counter()
    for t in prange(threads):
        buf, part = bufs[t], parts[t]
        flat_part = part.reshape(part.size)
        task = claim(counter)
        while task < sample_groups * channel_groups:
            n0, g = task // channel_groups * nb, task % channel_groups
            m = min(nb, N - n0)
            b0, b1 = g * per, min(blocks, (g + 1) * per)
            tiles = _ceil_div(m * hw, nr)
            for c0 in range(0, C, cc):
                c1 = min(C, c0 + cc)
                rows = (c1 - c0) * taps
                _gather_chunk(xf, n0 * C * H * W, H * W, buf, table, c0, c1, tiles, m * hw, nr)
                for tile in range(tiles):
                    for b in range(b0, b1):
                        full = (b + 1) * mr <= co
                        a, a0 = (w2, b * mr * k + c0 * taps) if full else (wpad, c0 * taps)
                        if direct and full:   # the tile's positions: one run of a sample's, for mr channels
                            c, ldc = flat_out, hw
                            ci = ((n0 + tile * nr // hw) * co + b * mr) * hw + tile * nr % hw
                        else:
                            c, ldc = flat_part, tiles_max * nr
                            ci = (b - b0) * mr * ldc + tile * nr
                        if c0 == 0:
                            fma_tile_wide(a, a0, k, buf, tile * rows * nr, nr // 2, boff, rows, c, ci, ldc)
                        else:
                            fma_tile_wide_add(a, a0, k, buf, tile * rows * nr, nr // 2, boff, rows, c, ci, ldc)
            for o in range(b0 * mr, min(co, b1 * mr)):
                if direct and (o // mr + 1) * mr <= co:
                    continue
                src = part[o - b0 * mr]
                for s in range(m):
                    dst = out[n0 + s, o].reshape(hw)
                    for q in range(hw):
                        dst[q] = src[s * hw + q]
            task = claim(counter)


# ----------------------------------------------------------------------------
# the weight gradient: dW[o, c, i, j] = sum over samples and output positions q of dL/dy[n, o, q] times the input
# at q's window tap (i, j), channel c


@njit(**JIT)
def wgrad_chunk(co_pad, C_pad, hp, wp, hw, itemsize):
    """Samples per chunk of the tiled weight gradient: as many as keep a chunk's dL/dy rows and channels-last
    input within B_BYTES, and at least WGRAD_MIN_POSITIONS positions (each block's sums are loaded and stored
    once a chunk)."""
    per_sample = (co_pad * hw + hp * wp * C_pad) * itemsize
    return max(1, B_BYTES // max(1, per_sample), _ceil_div(WGRAD_MIN_POSITIONS, max(1, hw)))


@njit(**JIT)
def _channel_blocks(x, n, xp, pt, pl):
    """xp[cb, n, pt + h, pl + w, j] = x[n, cb*nr + j, h, w] (nr = xp.shape[4]): sample n in blocks of nr channels,
    each channels last; xp's padding (rows, columns, channels past C) left as it is."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    nr = xp.shape[4]
    for cb in range(xp.shape[0]):
        for h in range(H):
            for w in range(W):
                d = xp[cb, n, pt + h, pl + w]
                for j in range(min(nr, C - cb * nr)):   # reads a plane apart, each line reused for the next columns
                    d[j] = x[n, cb * nr + j, h, w]


@njit(**JIT)
def tiled_conv2d_grad_weight(x, gy, out, threads, sh, sw, pt, pl, dh, dw):
    """tiled_conv2d_grad_weight_in_blocks in WIDE_MR x WIDE_NR blocks on a CPU with AVX-512, else MR x NR."""
    mr, nr = (WIDE_MR, WIDE_NR) if WIDE_REGISTERS else (MR, NR)
    tiled_conv2d_grad_weight_in_blocks(x, gy, out, threads, mr, nr, sh, sw, pt, pl, dh, dw)


@njit(**JIT_PARALLEL)
def tiled_conv2d_grad_weight_in_blocks(x, gy, out, threads, mr, nr, sh, sw, pt, pl, dh, dw):
    """out (C_out, C, kh, kw) = dL/dW of a one-group conv, in register blocks of mr output channels by nr input
    channels at one tap, each summed over every sample's output positions without columns: the left operand
    dL/dy's rows (copied as (C_out, N*Ho*Wo), so that a block's sum runs over all samples), the right one the
    input copied into blocks of nr channels, each channels last and zero-padded (the tap's nr channels at an
    output position: nr values in order, found through a table of the positions' offsets). Blocks split
    between threads, each thread summing its own over chunks of samples that stay in its L2 cache (the
    accumulating block kernels); the sums are then written into out. No thread adds up another's copy of the
    gradient."""
    N, C, H, W = x.shape
    co, ho, wo = gy.shape[1], gy.shape[2], gy.shape[3]
    kh, kw = out.shape[2], out.shape[3]
    hw = ho * wo
    nq = N * hw
    co_pad, C_pad = _ceil_div(co, mr) * mr, _ceil_div(C, nr) * nr
    hp, wp = max(H + pt, (ho - 1) * sh + (kh - 1) * dh + 1), max(W + pl, (wo - 1) * sw + (kw - 1) * dw + 1)
    if nq == 0:
        zero(out)
        return
    xp = zeros((C_pad // nr, N, hp, wp, nr), x)
    rows = np.empty((co_pad, nq), gy.dtype)
    zero(rows[co:])
    counter = task_counter()
    for _ in prange(threads):
        n = claim(counter)
        while n < N:
            _channel_blocks(x, n, xp, pt, pl)
            for o in range(co):
                rows[o, n * hw:(n + 1) * hw] = gy[n, o].reshape(hw)
            n = claim(counter)
    taps = kh * kw
    oblocks, cblocks = co_pad // mr, C_pad // nr
    blocks = oblocks * cblocks * taps
    chunk = min(N, wgrad_chunk(co_pad, C_pad, hp, wp, hw, x.itemsize))
    boff = np.empty(chunk * hw, np.int64)    # output position q of a chunk: its window's top-left input value
    for s in range(chunk):
        for oh in range(ho):
            for ow in range(wo):
                boff[(s * ho + oh) * wo + ow] = ((s * hp + oh * sh) * wp + ow * sw) * nr
    acc = zeros((blocks, mr * nr), out)
    # blocks in groups of `group` output-channel blocks whose rows of dL/dy (a chunk's) stay in L2 while the group
    # runs through one channel block's taps: every group's rows are then read once per channel block, and every
    # channel block's input once per group
    group = max(1, min(oblocks, B_BYTES // 2 // (mr * chunk * hw * x.itemsize)))
    ogroups = _ceil_div(oblocks, group)
    for t in prange(threads):
        for n0 in range(0, N, chunk):
            k = min(chunk, N - n0) * hw
            for i in range(t, cblocks * ogroups * taps * group, threads):
                cb, og = i // (ogroups * taps * group), i // (taps * group) % ogroups
                tap, ob = i // group % taps, og * group + i % group
                if ob >= oblocks:
                    continue
                b = (cb * oblocks + ob) * taps + tap
                b0 = ((cb * N + n0) * hp * wp + (tap // kw) * dh * wp + (tap % kw) * dw) * nr
                if nr == WIDE_NR:
                    fma_tile_wide_add(rows, ob * mr * nq + n0 * hw, nq, xp, b0, nr // 2, boff, k, acc, b * mr * nr, nr)
                else:
                    fma_tile_add(rows, ob * mr * nq + n0 * hw, nq, xp, b0, nr // 2, boff, k, acc, b * mr * nr, nr)
    # the sums into out (C_out, C, kh, kw), its rows split between threads: for each output channel, its
    # channel blocks' taps (consecutive blocks of acc) in out's order
    counter = task_counter()
    for _ in prange(threads):
        ob = claim(counter)
        while ob < oblocks:
            for r in range(min(mr, co - ob * mr)):
                o = ob * mr + r
                for cb in range(cblocks):
                    for j in range(min(nr, C - cb * nr)):
                        for tap in range(taps):
                            out[o, cb * nr + j, tap // kw, tap % kw] = acc[(cb * oblocks + ob) * taps + tap, r * nr + j]
            ob = claim(counter)
