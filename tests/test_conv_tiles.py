"""Register-tiled convolutions (dlc/kernels/cpu/conv_tiles.py) and their block kernels (microkernel.py) against
numpy: each block kernel on its own, the tiled conv over shapes that reach each form of its right operand (rows,
in column phases for strides, and columns) in both block shapes, channel counts that leave a partial block, on
one thread and two, the cpu backend choosing it where it pays, and stride-1 dgrads run as tiled forward convs."""

from __future__ import annotations

import numpy as np
import pytest

import dlc
from dlc.ops.conv import conv2d_grad_input_ref, conv2d_grad_weight_ref, conv2d_ref, conv_out_size


@pytest.fixture(scope="module")
def kernels():
    from dlc.runtime.cpu import load_kernel_modules

    load_kernel_modules()
    import dlc_cpu_conv
    import dlc_cpu_conv_tiles
    import dlc_cpu_microkernel

    return dlc_cpu_microkernel, dlc_cpu_conv_tiles, dlc_cpu_conv


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bstep", [8, 29])
@pytest.mark.parametrize("wide", [False, True], ids=["6x16", "8x32"])
@pytest.mark.parametrize("accumulate", [False, True], ids=["store", "add"])
def test_fma_tile_matches_numpy(kernels, dtype, bstep, wide, accumulate):
    """A block at offsets into flat a, b and c, B's rows read through a table of offsets (the second half of
    the block's positions bstep on: side by side at NR/2); c outside the block untouched, and the block
    overwritten whatever it held (fma_tile, fma_tile_wide) or the product added to it (fma_tile_add,
    fma_tile_wide_add). All four block kernels, on any CPU (without AVX-512 the wide ones are slow, not
    wrong)."""
    micro, _, _ = kernels
    from numba import njit

    MR, NR = (micro.WIDE_MR, micro.WIDE_NR) if wide else (micro.MR, micro.NR)
    fma_tile = {(False, False): micro.fma_tile, (True, False): micro.fma_tile_wide,
                (False, True): micro.fma_tile_add, (True, True): micro.fma_tile_wide_add}[wide, accumulate]

    @njit(cache=False)
    def block(a, a0, lda, b, b0, bstep, boff, k, c, c0, ldc):
        fma_tile(a, a0, lda, b, b0, bstep, boff, k, c, c0, ldc)

    rng = np.random.default_rng(0)
    k, lda, ldc = 37, 45, NR + 5
    a = rng.standard_normal(3 + MR * lda).astype(dtype)
    b = rng.standard_normal(400 + bstep + NR).astype(dtype)
    boff = rng.integers(0, 400, size=k).astype(np.int64)
    c = np.full(5 + MR * ldc + NR, 7.0, dtype)
    block(a, 3, lda, b, 2, bstep, boff, k, c, 5, ldc)
    rows = a[3:3 + MR * lda].reshape(MR, lda)[:, :k]
    half = NR // 2
    right = np.stack([np.concatenate([b[2 + o:2 + o + half], b[2 + o + bstep:2 + o + bstep + half]]) for o in boff])
    want = rows.astype(np.float64) @ right.astype(np.float64) + (7.0 if accumulate else 0.0)
    got = np.stack([c[5 + i * ldc:5 + i * ldc + NR] for i in range(MR)])
    np.testing.assert_allclose(got, want, rtol=1e-5 if dtype == "float32" else 1e-12, atol=1e-5)
    mask = np.ones(c.shape, bool)
    for i in range(MR):
        mask[5 + i * ldc:5 + i * ldc + NR] = False
    assert np.all(c[mask] == 7.0)
    block(a, 3, lda, b, 2, bstep, boff, 0, c, 5, ldc)   # an empty sum: zeros, or the block as it was
    after = np.stack([c[5 + i * ldc:5 + i * ldc + NR] for i in range(MR)])
    if accumulate:
        np.testing.assert_array_equal(after, got)
    else:
        assert not np.any(after)


def test_fma_tile_refuses_mixed_dtypes(kernels):
    micro, _, _ = kernels
    from numba import njit
    from numba.core.errors import TypingError

    fma_tile = micro.fma_tile

    @njit(cache=False)
    def block(a, b, boff, c):
        fma_tile(a, 0, 1, b, 0, 8, boff, 1, c, 0, 16)

    with pytest.raises(TypingError):
        block(np.zeros(6, np.float32), np.zeros(16, np.float64), np.zeros(1, np.int64), np.zeros(96, np.float32))


# N, C, H, W, C_out, kh, kw, stride, padding ((top, bottom), (left, right)), dilation
TILED_CASES = [
    (1, 64, 32, 32, 64, 3, 3, (1, 1), ((1, 1), (1, 1)), (1, 1)),     # ResNet's first stage: rows
    (1, 64, 32, 32, 128, 3, 3, (2, 2), ((1, 1), (1, 1)), (1, 1)),    # stride 2: rows of two column phases
    (1, 256, 8, 8, 256, 3, 3, (1, 1), ((1, 1), (1, 1)), (1, 1)),     # small plane: columns
    (1, 512, 4, 4, 512, 3, 3, (1, 1), ((1, 1), (1, 1)), (1, 1)),     # 16 positions, 86 channel blocks
    (2, 5, 9, 11, 7, 3, 2, (2, 3), ((1, 0), (2, 1)), (1, 1)),        # uneven strides and padding, 7 = 6 + 1
    (3, 4, 12, 10, 13, 3, 3, (1, 1), ((2, 2), (0, 1)), (2, 1)),      # dilated rows, 13 = 2 x 6 + 1 channels
    (1, 16, 9, 40, 12, 3, 3, (1, 1), ((1, 1), (1, 1)), (1, 1)),      # rows of 3 column blocks, the last partial
    (1, 256, 8, 8, 256, 3, 3, (1, 1), ((1, 1), (1, 1)), (1, 1)),     # rows of 8: two to a block, straight out
    (2, 20, 7, 6, 9, 3, 3, (1, 1), ((1, 1), (1, 1)), (1, 1)),        # rows of 6, an odd count: half a last block
    (2, 8, 7, 7, 5, 7, 7, (3, 2), ((3, 3), (3, 3)), (1, 2)),         # fewer channels than a block
    (1, 64, 32, 32, 128, 1, 1, (2, 2), ((0, 0), (0, 0)), (1, 1)),    # strided 1x1
    (4, 6, 14, 14, 16, 5, 5, (1, 1), ((0, 0), (0, 0)), (1, 1)),      # LeNet's second conv
    (1, 3, 1, 1, 2, 3, 3, (1, 1), ((1, 1), (1, 1)), (1, 1)),         # a 1x1 plane, all but one tap padding
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("wide", [False, True], ids=["6x16", "8x32"])
def test_tiled_conv2d_matches_reference(kernels, dtype, wide):
    """Every case in blocks of each shape (tiled_conv2d_in_blocks), and in the shape block_shape chooses."""
    micro, tiles, _ = kernels
    mr, nr = (micro.WIDE_MR, micro.WIDE_NR) if wide else (micro.MR, micro.NR)
    rng = np.random.default_rng(1)
    forms = set()
    for n, c, h, wd, co, kh, kw, stride, padding, dilation in TILED_CASES:
        x = rng.standard_normal((n, c, h, wd)).astype(dtype)
        w = rng.standard_normal((co, c, kh, kw)).astype(dtype)
        a = dict(stride=stride, padding=padding, dilation=dilation, groups=1)
        want = conv2d_ref(x.astype(np.float64), w.astype(np.float64), a)
        ho, wo = want.shape[2:]
        forms.add(int(tiles.layout(c, co, kh, kw, *stride, *dilation, ho, wo, nr)[0]))
        for threads in (1, 2):
            for chosen in (False, True):
                got = np.full(want.shape, np.nan, dtype)
                if chosen:
                    tiles.tiled_conv2d(x, w, got, threads, *stride, padding[0][0], padding[1][0], *dilation)
                else:
                    tiles.tiled_conv2d_in_blocks(x, w, got, threads, mr, nr, *stride, padding[0][0], padding[1][0],
                                                 *dilation)
                scale = float(np.abs(want).max())
                tol = 1e-5 if dtype == "float32" else 1e-12
                np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale,
                                           err_msg=f"{(n, c, h, wd, co, kh, kw, stride)} on {threads} threads")
    assert forms == {tiles.ROWS, tiles.COLUMNS}, "the cases reach every form of B"


def test_wide_blocks_where_they_compute_no_more(kernels):
    """With AVX-512, convs whose rows fill 32-position blocks as well as 16-position ones take the wide
    blocks (ResNet's 32x32 and 16x16 stages, 56x56, a stride-2 conv with 16x16 outputs); rows of 8 (two to a
    16-position block) and small planes keep the narrow ones. Without AVX-512, the narrow blocks everywhere."""
    micro, tiles, _ = kernels

    def shape(c, co, h, s):
        ho = conv_out_size(h, (1, 1), 3, s, 1)
        return tiles.block_shape(c, co, 3, 3, s, s, 1, 1, ho, ho)

    narrow, wide = (micro.MR, micro.NR), (micro.WIDE_MR, micro.WIDE_NR)
    if not micro.WIDE_REGISTERS:
        assert shape(64, 64, 32, 1) == shape(128, 128, 16, 1) == narrow
        return
    assert shape(64, 64, 32, 1) == shape(128, 128, 16, 1) == shape(64, 64, 56, 1) == shape(3, 64, 32, 1) == wide
    assert shape(64, 128, 32, 2) == wide                             # rows of 16 outputs, in two column phases
    assert shape(256, 256, 8, 1) == shape(512, 512, 4, 1) == shape(128, 256, 16, 2) == narrow


def test_tiled_conv2d_of_nothing(kernels):
    _, tiles, _ = kernels
    out = np.empty((0, 4, 3, 3), np.float32)
    tiles.tiled_conv2d(np.ones((0, 2, 5, 5), np.float32), np.ones((4, 2, 3, 3), np.float32), out, 2, 1, 1, 0, 0, 1, 1)
    out = np.empty((1, 4, 0, 3), np.float32)   # no output rows
    tiles.tiled_conv2d(np.ones((1, 2, 2, 5), np.float32), np.ones((4, 2, 3, 3), np.float32), out, 2, 1, 1, 0, 0, 1, 1)


def test_tiles_where_they_pay(kernels):
    """Forward convs take the tiles where B is read from cache (benchmarks/RESULTS.md): ResNet's 3x3 convs on
    32x32 inputs (the stem too in wide blocks), not its layers on 224x224 ones, nor 1x1 convs or a tiny conv;
    at batch 1 whatever the stride, at larger batches stride-1 windows only."""
    micro, tiles, conv = kernels

    def pays(c, co, h, k, s):
        ho = conv_out_size(h, ((k - 1) // 2, (k - 1) // 2), k, s, 1)
        return tiles.pays(c, co, k, k, s, s, 1, 1, ho, ho, 4)

    def form(c, co, h, k, s):
        ho = conv_out_size(h, ((k - 1) // 2, (k - 1) // 2), k, s, 1)
        nr = tiles.block_shape(c, co, k, k, s, s, 1, 1, ho, ho)[1]
        return tiles.layout(c, co, k, k, s, s, 1, 1, ho, ho, nr)[0]

    assert pays(64, 64, 32, 3, 1) and pays(128, 128, 16, 3, 1)      # rows: 3 input rows of all channels in L1
    assert form(64, 64, 32, 3, 1) == form(128, 128, 16, 3, 1) == tiles.ROWS
    assert pays(64, 128, 32, 3, 2) and form(64, 128, 32, 3, 2) == tiles.ROWS   # in two column phases
    assert pays(128, 256, 16, 3, 2) and pays(256, 512, 8, 3, 2)     # strided, in columns
    assert pays(512, 512, 4, 3, 1) and form(512, 512, 4, 3, 1) == tiles.COLUMNS   # one column block
    assert pays(256, 256, 8, 3, 1) and form(256, 256, 8, 3, 1) == tiles.ROWS   # rows of 8, two to a block
    assert not pays(64, 64, 56, 3, 1) and not pays(128, 128, 28, 3, 1)   # the rows outgrow L1
    assert not pays(512, 512, 7, 3, 1) and not pays(64, 128, 56, 3, 2)
    assert not pays(64, 128, 32, 1, 2)                               # a strided 1x1 shortcut
    # a stem's sums of 27: in wide blocks 0.68 of im2col + GEMM's time at batch 1, in narrow ones 2-3x
    assert pays(3, 64, 32, 3, 1) == micro.WIDE_REGISTERS and not pays(3, 64, 32, 3, 2)
    assert not pays(6, 16, 14, 5, 1)                                 # LeNet's second conv: 0.24M multiply-adds
    assert conv._uses_tiles(1, 1, 2, 2, 4) and conv._uses_tiles(8, 1, 1, 1, 4)
    assert not conv._uses_tiles(8, 1, 2, 2, 4) and not conv._uses_tiles(1, 1, 1, 1, 8)
    assert not conv._uses_tiles(1, 2, 1, 1, 4)


def test_cpu_backend_runs_batch_one_convs_in_tiles(kernels):
    """A small net compiled for the cpu target whose batch-1 convs take each form (rows into the arena, rows two
    to a block, strided rows, columns): at batch 1 all in tiles; at batch 3 the stride-1 ones, those on 8x8
    planes and the strided ones (but on 4x4) across samples with AVX-512; at batch 8 the 4x4 one too; each
    equals the reference executor's."""
    _, tiles, _ = kernels
    rng = np.random.default_rng(2)
    x = dlc.input("x", ("B", 32, 32, 32))

    def conv(h, c_in, c_out, stride, name):
        w = dlc.param(rng.standard_normal((c_out, c_in, 3, 3)).astype(np.float32) * 0.1, name=name)
        b = dlc.param(rng.standard_normal(c_out).astype(np.float32), name=name + "_b")
        return dlc.relu(dlc.conv2d(h, w, b, stride=stride, padding=1))

    h1 = conv(x, 32, 24, 1, "w1")            # 32x32: rows
    h2 = conv(h1, 24, 64, 2, "w2")           # 16x16 out, strided: rows in column phases
    h3 = conv(h2, 64, 64, 2, "w3")           # 8x8 out, strided: rows of 8 in column phases, two to a block
    h4 = conv(h3, 64, 64, 1, "w4")           # 8x8: rows, two to a block
    h5 = conv(h4, 64, 128, 2, "w5")          # 4x4 out, strided: columns
    shapes = [(32, 24, 3, 3, 1, 1, 1, 1, 32, 32), (24, 64, 3, 3, 2, 2, 1, 1, 16, 16), (64, 64, 3, 3, 2, 2, 1, 1, 8, 8),
              (64, 64, 3, 3, 1, 1, 1, 1, 8, 8), (64, 128, 3, 3, 2, 2, 1, 1, 4, 4)]
    forms = [int(tiles.layout(*shape, tiles.block_shape(*shape)[1])[0]) for shape in shapes]
    assert forms == [tiles.ROWS, tiles.ROWS, tiles.ROWS, tiles.ROWS, tiles.COLUMNS]
    assert all(tiles.pays(*shape, 4) for shape in shapes)
    outputs = [h1, h2, h4, h5]
    cpu = dlc.compile(outputs, target="cpu")
    ref = dlc.compile(outputs, target="reference")
    for batch in (1, 3, 8):
        xs = rng.standard_normal((batch, 32, 32, 32)).astype(np.float32)
        for got, want in zip(cpu(xs), ref(xs)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def test_tiled_conv2d_into_a_strided_output(kernels):
    """The rows form stores whole blocks straight into a C-contiguous output; any other goes through its
    scratch block, the same values."""
    _, tiles, _ = kernels
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 16, 16, 32)).astype(np.float32)
    w = rng.standard_normal((12, 16, 3, 3)).astype(np.float32)
    a = dict(stride=(1, 1), padding=((1, 1), (1, 1)), dilation=(1, 1), groups=1)
    want = conv2d_ref(x.astype(np.float64), w.astype(np.float64), a)
    wide = np.full((1, 12, 16, 40), np.nan, np.float32)
    out = wide[:, :, :, 3:35]
    assert not out.flags.c_contiguous
    tiles.tiled_conv2d(x, w, out, 2, 1, 1, 1, 1, 1, 1)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
    assert np.isnan(wide[..., :3]).all() and np.isnan(wide[..., 35:]).all()


# N, C, H, W, C_out, kh, kw, stride, padding ((top, bottom), (left, right)), dilation: convs at batch > 1 on small
# planes, for tiles across samples
ACROSS_CASES = [
    (8, 64, 4, 4, 44, 3, 3, (1, 1), ((1, 1), (1, 1)), (1, 1)),      # 4x4: two samples a tile; 44 = 5 x 8 + 4
    (5, 32, 8, 8, 24, 3, 3, (1, 1), ((1, 1), (1, 1)), (1, 1)),      # 8x8: tiles within a sample, straight out
    (3, 16, 6, 6, 8, 3, 3, (1, 1), ((1, 1), (1, 1)), (1, 1)),       # 36 positions: tiles across a sample's end
    (6, 20, 9, 7, 16, 3, 2, (2, 1), ((0, 2), (1, 0)), (1, 2)),      # strides, uneven padding, a dilated 3x2
    (7, 48, 8, 8, 36, 1, 1, (2, 2), ((0, 0), (0, 0)), (1, 1)),      # a strided 1x1 shortcut
    (9, 40, 5, 5, 72, 3, 3, (1, 1), ((0, 0), (0, 0)), (1, 1)),      # 3x3 outputs, no padding
    (3, 8, 34, 30, 12, 3, 3, (2, 2), ((1, 1), (1, 1)), (1, 1)),     # strided, 17 x 15 outputs: 8 tiles a sample
]


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_tiles_across_samples_match_reference(kernels, threads):
    """tiled_conv2d_across_samples against the reference: positions of several samples to a tile (crossing
    samples' ends, or each tile within one sample, summed straight into out), a last group of fewer samples,
    a partial block of output channels, strides, dilation and uneven padding, every element of out written;
    on any CPU (without AVX-512 its blocks are slow, not wrong)."""
    _, tiles, _ = kernels
    rng = np.random.default_rng(7)
    for n, c, h, wd, co, kh, kw, stride, padding, dilation in ACROSS_CASES:
        x = rng.standard_normal((n, c, h, wd)).astype(np.float32)
        w = rng.standard_normal((co, c, kh, kw)).astype(np.float32)
        a = dict(stride=stride, padding=padding, dilation=dilation, groups=1)
        want = conv2d_ref(x.astype(np.float64), w.astype(np.float64), a)
        got = np.full(want.shape, np.nan, np.float32)
        tiles.tiled_conv2d_across_samples(x, w, got, threads, *stride, padding[0][0], padding[1][0], *dilation)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()),
                                   err_msg=f"{(n, c, h, wd, co, kh, kw, stride)} on {threads} threads")


def test_tiles_across_samples_where_they_pay(kernels):
    """With AVX-512, at batch > 1: ResNet's 8x8 and 4x4 layers at batch 16 and 32 and its strided ones on planes
    up to 32x32 (1x1 shortcuts too) take tiles across samples; stride-1 windows on 16x16 planes, batch 1, and
    4x4 planes at batch 3 on 2 threads (a sample a task: half of each tile idle) do not; without AVX-512
    nothing does (the stride-1 dgrads that take them: test_stride_one_dgrad_in_tiles_matches_reference)."""
    micro, tiles, _ = kernels
    wide = micro.WIDE_REGISTERS

    def pays(n, c, co, k, s, ho):
        return tiles.pays_across_samples(n, c, co, k, k, s, s, ho, ho, 2)

    assert pays(16, 512, 512, 3, 1, 4) == pays(32, 256, 256, 3, 1, 8) == pays(16, 128, 256, 1, 1, 8) == wide
    assert pays(16, 64, 128, 3, 2, 16) == pays(16, 64, 128, 1, 2, 16) == pays(16, 32, 64, 3, 2, 32) == wide
    assert not pays(16, 32, 64, 3, 2, 33)                   # past STRIDED_MAX_POSITIONS
    assert not pays(16, 128, 128, 3, 1, 16) and not pays(16, 64, 64, 3, 1, 32)
    assert not pays(1, 512, 512, 3, 1, 4) and not pays(1, 256, 256, 3, 1, 8) and not pays(1, 64, 128, 3, 2, 16)
    assert not pays(3, 512, 512, 3, 1, 4)
    assert pays(3, 256, 256, 3, 1, 8) == wide
    assert not pays(16, 3, 64, 3, 1, 8)                     # a stem's 27 rows of B
    assert tiles.samples_per_task(16, 16, 2) == 8 and tiles.samples_per_task(32, 16, 2) == 16
    assert tiles.samples_per_task(16, 64, 2) == 8 and tiles.samples_per_task(3, 64, 2) == 1


# N, C, H, W, C_out, kh, kw, padding ((top, bottom), (left, right)), dilation: stride-1 convs whose dgrad the cpu
# backend runs in tiles (in rows, or across samples), and two it does not (a stem's 3 input channels, 4x4 planes)
DGRAD_CASES = [
    (2, 64, 32, 32, 64, 3, 3, ((1, 1), (1, 1)), (1, 1)),      # ResNet's first stage
    (3, 128, 16, 16, 96, 3, 3, ((1, 1), (1, 1)), (1, 1)),     # rows of 16: two to a wide block
    (2, 256, 8, 8, 256, 3, 3, ((1, 1), (1, 1)), (1, 1)),      # rows of 8
    (2, 40, 20, 26, 72, 3, 5, ((0, 2), (2, 1)), (2, 1)),      # uneven padding, dilated rows, a 3x5 window
    (2, 48, 16, 16, 64, 3, 3, ((0, 0), (0, 0)), (1, 1)),      # no padding: the dgrad pads by the window's reach
    (2, 3, 32, 32, 64, 3, 3, ((1, 1), (1, 1)), (1, 1)),       # 3 input channels: im2col's path
    (2, 512, 4, 4, 512, 3, 3, ((1, 1), (1, 1)), (1, 1)),      # columns form: im2col's path
    (6, 64, 8, 8, 40, 3, 3, ((1, 1), (1, 1)), (1, 1)),        # 8x8 at batch 6: across samples
    (6, 64, 4, 4, 40, 3, 3, ((1, 1), (1, 1)), (1, 1)),        # 4x4 at batch 6: im2col's path
]


def test_stride_one_dgrad_in_tiles_matches_reference(kernels):
    """conv2d_grad_input of stride-1 windows, as the forward conv of dL/dy with the window flipped and the
    channels swapped (in tiles where those pay: in rows, or across samples), against the reference; and the
    flipped weights themselves, on 1 to 3 threads."""
    micro, tiles, conv = kernels
    rng = np.random.default_rng(4)
    taken = []
    for n, c, h, wd, co, kh, kw, padding, dilation in DGRAD_CASES:
        w = rng.standard_normal((co, c, kh, kw)).astype(np.float32)
        a = dict(stride=(1, 1), padding=padding, dilation=dilation, groups=1)
        ho = conv_out_size(h, padding[0], kh, 1, dilation[0])
        wo = conv_out_size(wd, padding[1], kw, 1, dilation[1])
        gy = rng.standard_normal((n, co, ho, wo)).astype(np.float32)
        want = conv2d_grad_input_ref(gy.astype(np.float64), w.astype(np.float64), dict(a, out_hw=(h, wd)))
        got = np.full((n, c, h, wd), np.nan, np.float32)
        conv.conv2d_grad_input(gy, w, got, 1, 1, padding[0][0], padding[1][0], *dilation, 1)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()),
                                   err_msg=str((n, c, h, wd, co, kh, kw)))
        if h * wd >= conv.ACROSS_DGRAD_MIN_POSITIONS and conv._across_samples(n, co, c, kh, kw, 1, 1, h, wd, 1, 4):
            taken.append("across")
        elif (c >= conv.TILED_DGRAD_MIN_CHANNELS and tiles.pays(co, c, kh, kw, 1, 1, *dilation, h, wd, 4)
                and tiles.form_of(co, c, kh, kw, 1, 1, *dilation, h, wd) == tiles.ROWS):
            taken.append("rows")
        else:
            taken.append("im2col")
    wide = micro.WIDE_REGISTERS   # without AVX-512 no tiles across samples; the 8x8 case at batch 6 then as it may
    assert taken == ["rows", "rows", "across" if wide else "rows", "rows", "rows", "im2col", "im2col",
                     "across" if wide else taken[7], "im2col"], taken
    for threads in (1, 2, 3):
        w = rng.standard_normal((5, 7, 2, 3))
        np.testing.assert_array_equal(conv._flipped_transposed(w, threads), w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
        w = rng.standard_normal((40, 36, 3, 3)).astype(np.float32)   # 36 channels: tasks of 16, 16 and 4
        np.testing.assert_array_equal(conv._flipped_transposed(w, threads), w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))


# (N, C, H, W, C_out, kh, kw, stride, padding ((top, bottom), (left, right)), dilation): partial blocks of input
# and output channels, strides, uneven and no padding, dilation, a wide window, chunks of several samples with a
# shorter last one (16x16 planes of 32 channels: 7 samples a chunk)
WGRAD_CASES = [
    (2, 40, 12, 12, 20, 3, 3, (1, 1), ((1, 1), (1, 1)), (1, 1)),
    (3, 64, 9, 11, 24, 3, 3, (2, 2), ((1, 0), (0, 1)), (1, 1)),
    (1, 32, 10, 10, 8, 3, 3, (1, 1), ((0, 0), (0, 0)), (1, 1)),
    (2, 33, 13, 13, 16, 3, 3, (1, 2), ((2, 2), (2, 2)), (2, 2)),
    (2, 32, 8, 14, 40, 3, 5, (1, 1), ((1, 1), (2, 2)), (1, 1)),
    (9, 32, 16, 16, 32, 3, 3, (1, 1), ((1, 1), (1, 1)), (1, 1)),
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("wide", [False, True], ids=["6x16", "8x32"])
def test_tiled_weight_gradient_matches_reference(kernels, threads, wide):
    """tiled_conv2d_grad_weight (register blocks of output by input channels at a tap, summed over every
    sample's positions) in both block shapes against the reference, on one thread and two; every weight
    written."""
    micro, tiles, _ = kernels
    mr, nr = (micro.WIDE_MR, micro.WIDE_NR) if wide else (micro.MR, micro.NR)
    rng = np.random.default_rng(6)
    for n, c, h, wd, co, kh, kw, stride, padding, dilation in WGRAD_CASES:
        x = rng.standard_normal((n, c, h, wd)).astype(np.float32)
        ho = conv_out_size(h, padding[0], kh, stride[0], dilation[0])
        wo = conv_out_size(wd, padding[1], kw, stride[1], dilation[1])
        gy = rng.standard_normal((n, co, ho, wo)).astype(np.float32)
        a = dict(stride=stride, padding=padding, dilation=dilation, groups=1, kernel=(kh, kw))
        want = conv2d_grad_weight_ref(x.astype(np.float64), gy.astype(np.float64), a)
        got = np.full((co, c, kh, kw), np.nan, np.float32)
        tiles.tiled_conv2d_grad_weight_in_blocks(x, gy, got, threads, mr, nr, *stride, padding[0][0], padding[1][0],
                                                 *dilation)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()),
                                   err_msg=str((n, c, h, wd, co, kh, kw, stride)))
    assert tiles.wgrad_chunk(32, 32, 18, 18, 256, 4) == 7   # the last case: chunks of 7 samples and 2


def test_conv2d_grad_weight_takes_tiles_for_wide_inputs(kernels):
    """dlc_cpu_conv.conv2d_grad_weight runs a 3x3 conv over at least TILED_WGRAD_MIN_CHANNELS input channels in
    tiles (the result is the reference's), and the stem's 3 channels and 1x1 windows as columns + GEMM."""
    _, tiles, conv = kernels
    rng = np.random.default_rng(7)
    for n, c, h, co, k, s in [(4, 64, 16, 64, 3, 1), (2, 3, 32, 64, 3, 1), (4, 64, 16, 128, 1, 2)]:
        p = k // 2
        x = rng.standard_normal((n, c, h, h)).astype(np.float32)
        ho = conv_out_size(h, (p, p), k, s, 1)
        gy = rng.standard_normal((n, co, ho, ho)).astype(np.float32)
        a = dict(stride=(s, s), padding=((p, p), (p, p)), dilation=(1, 1), groups=1, kernel=(k, k))
        want = conv2d_grad_weight_ref(x.astype(np.float64), gy.astype(np.float64), a)
        got = np.full((co, c, k, k), np.nan, np.float32)
        conv.conv2d_grad_weight(x, gy, got, s, s, p, p, 1, 1, 1)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))
    assert conv.TILED_WGRAD_MIN_CHANNELS > 3 and 64 * 16 * 16 * 4 * 9 * 64 >= tiles.MIN_MACS
