"""Native CPU lowering of convolutions, pools and Philox random ops, against the numpy reference executor.

Each test compiles one function holding many variants of an op (numba's
compile time dominates this file), then runs it for several batch sizes,
0 and odd ones included: a new batch is a new memory plan, not a new
compilation. Float results go through BLAS or sum in another order, so they
agree with numpy to a few ulp; random numbers agree bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

import dlc
from dlc import functional as F

TOL = {"float32": dict(rtol=1e-4, atol=1e-5), "float64": dict(rtol=1e-10, atol=1e-12)}
BATCHES = (3, 1, 0)
# float64 normals go through cos and log1p in float64: numpy's vectorised versions and libm's (which numba
# calls) may differ in the last bit; every other random number, float32 normals included, is bit-identical.
ULP_ONLY = {"normal64"}


def fresh_store_like(store: dlc.Store) -> dlc.Store:
    copy = dlc.Store()
    for key, value in store.items():
        copy.add(key, value, store.is_trainable(key))
    return copy


def check_against_reference(outputs: dict, feeds_for, batches=BATCHES, exact=False, updates=None, steps=1):
    """Compile outputs for the cpu and reference targets; compare every output for each batch size."""
    store = dlc.default_store()
    ref_store = fresh_store_like(store)
    names = list(outputs)
    cpu = dlc.compile([outputs[k] for k in names], updates=updates, target="cpu")
    ref = dlc.compile([outputs[k] for k in names], updates=updates, target="reference", store=ref_store)
    assert cpu.backend.stats["fallbacks"] == [], "every kernel must run natively"
    assert cpu.backend.stats["segments"] == 1, "the whole function must be one native call"
    for batch in batches:
        feeds = feeds_for(batch)
        for step in range(steps):
            for name, got, want in zip(names, cpu(**feeds), ref(**feeds)):
                what = f"{name} (batch {batch}, step {step})"
                assert got.shape == want.shape and got.dtype == want.dtype, what
                if exact and name not in ULP_ONLY:
                    np.testing.assert_array_equal(got, want, err_msg=what)
                elif exact:
                    np.testing.assert_array_max_ulp(got, want, maxulp=2)
                else:
                    np.testing.assert_allclose(got, want, err_msg=what, **TOL[got.dtype.name])
            for key, _ in cpu.updates:
                np.testing.assert_allclose(store[key], ref_store[key], err_msg=f"{key} after step {step}",
                                           **TOL.get(store[key].dtype.name, {}))
    return cpu


def uniform(rng, shape, dtype):
    return rng.uniform(-1.0, 1.0, size=shape).astype(dtype)


# (stride, padding, dilation, groups, weight shape (C_out, C_in/groups, kh, kw)) over an input (B, 4, 9, 8)
CONV_CASES = [
    (1, 0, 1, 1, (3, 4, 3, 3)),
    (2, 1, 1, 1, (5, 4, 3, 2)),
    (1, ((2, 0), (1, 3)), 2, 1, (2, 4, 3, 3)),
    ((2, 3), 2, (1, 2), 2, (4, 2, 3, 2)),
    (1, 0, 1, 4, (4, 1, 1, 1)),     # depthwise 1x1: the columns are the input itself
    (1, 0, 1, 2, (6, 2, 1, 1)),     # grouped pointwise
    (3, 0, 1, 1, (2, 4, 1, 1)),     # strided 1x1
    (1, 1, 1, 1, (3, 4, 3, 3)),     # 72 output positions: a GEMM per sample (the weight gradient shares them)
    (1, 1, 1, 4, (4, 1, 3, 3)),     # depthwise 3x3: direct loops
    (1, ((0, 2), (2, 1)), 1, 4, (4, 1, 3, 3)),  # depthwise 3x3, uneven padding: 9 taps a row from a padded plane
    (1, 1, 2, 4, (4, 1, 3, 3)),     # depthwise 3x3 dilated: tap by tap over a padded plane
    (2, ((1, 0), (2, 1)), (2, 1), 4, (8, 1, 3, 2)),  # depthwise, two outputs per channel, strided, dilated
    (1, ((2, 0), (0, 3)), (2, 1), 4, (8, 1, 3, 2)),  # depthwise stride 1 (a padded plane), uneven padding, dilated
    (1, 2, 1, 4, (24, 1, 5, 5)),    # one input channel, six outputs per group (LeNet's first conv): im2col + GEMM
    (4, 0, 1, 1, (5, 4, 3, 3)),     # 2x2 outputs: at batch 1 a forward GEMM of 4 columns, as dot products
    (4, 0, 1, 2, (6, 2, 1, 1)),     # grouped strided 1x1, 3x2 outputs: 6 columns
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_conv_ops_match_reference(dtype):
    rng = np.random.default_rng(0)
    x = dlc.input("x", ("B", 4, 9, 8), dtype)
    out = {}
    for k, (stride, padding, dilation, groups, wshape) in enumerate(CONV_CASES):
        w = dlc.param(uniform(rng, wshape, dtype), name=f"w{k}", dtype=dtype)
        y = dlc.conv2d(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups)
        gy = dlc.constant(uniform(rng, (1,) + tuple(y.shape[1:]), dtype), dtype=dtype) + y * 0.5
        attrs = y.node.a
        out[f"conv{k}"] = y
        out[f"grad_input{k}"] = F._apply("conv2d_grad_input", gy, w, out_hw=(9, 8), **attrs)
        out[f"grad_weight{k}"] = F._apply("conv2d_grad_weight", x, gy, kernel=wshape[2:], **attrs)
    wt = dlc.param(uniform(rng, (4, 3, 3, 2), dtype), name="wt", dtype=dtype)
    out["transpose"] = dlc.conv_transpose2d(x, wt, stride=2, padding=1, output_padding=1)
    wg = dlc.param(uniform(rng, (4, 1, 2, 2), dtype), name="wg", dtype=dtype)
    out["transpose_grouped"] = dlc.conv_transpose2d(x, wg, stride=(1, 2), groups=2, dilation=2)
    # batches 3 and 40 share GEMMs between samples where a sample's output is small (under 64 positions; the
    # weight gradient under 100): 40 in one GEMM or in two of 20 samples, as COLUMNS allows
    check_against_reference(out, lambda b: {"x": uniform(rng, (b, 4, 9, 8), dtype)}, batches=BATCHES + (40,))


def test_samples_share_a_gemm_only_when_their_outputs_are_small():
    from dlc.runtime.cpu import load_kernel_modules

    load_kernel_modules()
    from dlc_cpu_conv import BATCH_BELOW, COLUMNS, samples_per_gemm

    assert samples_per_gemm(32, 16, BATCH_BELOW, 1) == 32   # ResNet's 4x4 stage: one GEMM for the batch
    assert samples_per_gemm(32, 16, BATCH_BELOW, 2) == 16   # on two threads, two GEMMs of half the batch each
    assert samples_per_gemm(40, 60, BATCH_BELOW, 1) == 20   # within COLUMNS, and a divisor of the batch
    assert samples_per_gemm(7, 64, BATCH_BELOW, 1) == 1     # larger outputs: a GEMM per sample
    assert samples_per_gemm(1, 16, BATCH_BELOW, 1) == 1
    assert samples_per_gemm(3, 16, BATCH_BELOW, 2) == 1     # no divisor leaves a GEMM to each thread but 1
    assert samples_per_gemm(3, 16, BATCH_BELOW, 1) * 16 <= COLUMNS


def test_forward_tiles_only_where_a_samples_columns_outgrow_the_budget():
    """Batch-1 forward convs run in tiles of output rows where one sample's columns exceed TILE_BYTES and the tiles
    are at least TILE_MIN_COLUMNS wide, with as many tiles per thread; elsewhere each GEMM's rows are split."""
    from dlc.runtime.cpu import load_kernel_modules

    load_kernel_modules()
    from dlc_cpu_conv import TILE_MIN_COLUMNS, _tile_rows

    assert _tile_rows(64 * 9, 56, 56, 2, 4) == 7            # 8 tiles of 7 rows of 56
    assert _tile_rows(64 * 9, 57, 57, 2, 4) == 6            # 10 tiles, the last of 3 rows
    assert _tile_rows(64 * 9, 112, 112, 3, 4) == 4          # 28 tiles: a multiple of 3 threads would be 30
    assert _tile_rows(3 * 49, 112, 112, 2, 4) == 14         # the 7x7 stem of 224x224 inputs, stride 2
    assert _tile_rows(128 * 9, 28, 28, 2, 4) == 7           # 196 columns a tile
    assert _tile_rows(64 * 9, 57, 57, 2, 8) == 0            # float64: 3 rows of 57 are under TILE_MIN_COLUMNS
    assert _tile_rows(64 * 9, 16, 16, 2, 4) == 0            # the sample's columns fit the budget: rows split
    assert _tile_rows(256 * 9, 14, 14, 2, 4) == 0           # 2 tiles of 7 rows, narrower than TILE_MIN_COLUMNS
    assert 7 * 14 < TILE_MIN_COLUMNS <= 7 * 28


# Shapes for the kernels' threaded paths (above PARALLEL_MIN_MACS multiply-adds): N, C, H, W, C_out, kh, kw, stride,
# padding ((top, bottom), (left, right)), dilation, groups, dtype
THREADED_CASES = [
    (1, 64, 32, 32, 128, 3, 3, (1, 1), ((1, 1), (1, 1)), (1, 1), 1, "float32"),    # batch 1: tiles of output rows
    (1, 64, 57, 57, 64, 3, 3, (1, 1), ((1, 1), (1, 1)), (1, 1), 1, "float32"),     # tiles, the last one shorter
    (1, 256, 14, 14, 256, 3, 3, (1, 1), ((1, 1), (1, 1)), (1, 1), 1, "float32"),   # batch 1: GEMM rows split
    (4, 64, 24, 24, 64, 3, 3, (1, 1), ((1, 1), (1, 1)), (1, 1), 1, "float32"),     # samples split
    (8, 256, 4, 4, 256, 3, 3, (1, 1), ((1, 1), (1, 1)), (1, 1), 1, "float32"),     # shared GEMMs split
    (1, 512, 16, 16, 512, 1, 1, (1, 1), ((0, 0), (0, 0)), (1, 1), 1, "float32"),   # pointwise, batch 1
    (16, 512, 4, 4, 512, 1, 1, (1, 1), ((0, 0), (0, 0)), (1, 1), 1, "float32"),    # pointwise, shared GEMMs
    (32, 128, 6, 6, 128, 3, 3, (1, 1), ((1, 1), (1, 1)), (1, 1), 2, "float32"),    # grouped, shared GEMMs
    (32, 128, 8, 7, 128, 3, 3, (2, 1), ((1, 0), (2, 1)), (1, 2), 1, "float32"),    # shared, strided, dilated
    (32, 32, 24, 24, 32, 3, 3, (1, 1), ((2, 0), (1, 1)), (1, 2), 2, "float32"),    # wide columns, grouped, dilated
    (16, 64, 33, 31, 96, 3, 2, (2, 1), ((2, 0), (1, 1)), (2, 1), 4, "float32"),    # grouped, strided, dilated
    (1, 128, 97, 95, 96, 3, 2, (2, 1), ((2, 0), (1, 1)), (2, 1), 4, "float32"),    # the same at batch 1 (tiles)
    (4, 64, 40, 42, 64, 3, 3, (1, 2), ((0, 2), (2, 0)), (2, 2), 1, "float64"),
    (8, 64, 64, 64, 128, 3, 3, (2, 2), ((1, 1), (1, 1)), (1, 1), 64, "float32"),   # depthwise, 2 outputs/channel
    (1, 64, 128, 128, 64, 3, 3, (1, 1), ((1, 1), (1, 1)), (1, 1), 64, "float32"),  # depthwise, batch 1
    (8, 64, 88, 88, 64, 3, 3, (2, 2), ((1, 0), (0, 1)), (2, 1), 64, "float64"),    # depthwise, strided, dilated
]


def test_parallel_kernels_start_no_region_but_their_prange_loops():
    """numba makes np.zeros (and slices assigned or added to) inside a parallel function a parallel region of its
    own, options off or not: a kernel doing so on its one-thread path woke numba's pool at every call, and its
    spinning threads halved BLAS's speed (W2's step: 8 ms instead of 4). Parallel kernels make such arrays through
    dlc_cpu_threads' serial helpers; numba's own report of a compiled kernel lists its prange loop alone."""
    import ast
    import pathlib

    import numba

    from dlc.runtime.cpu import load_kernel_modules

    load_kernel_modules()
    import dlc_cpu_conv
    from dlc_cpu_threads import JIT_PARALLEL

    kernels = pathlib.Path(dlc_cpu_conv.__file__).parent
    offenders = []
    for path in sorted(kernels.glob("*.py")):
        for fn in ast.parse(path.read_text()).body:
            if isinstance(fn, ast.FunctionDef) and any("JIT_PARALLEL" in ast.unparse(d) for d in fn.decorator_list):
                for node in ast.walk(fn):
                    if isinstance(node, ast.Call) and ast.unparse(node.func) in ("np.zeros", "np.ones", "np.full"):
                        offenders.append(f"{path.name}:{node.lineno} {fn.name}")
    assert offenders == []

    rng = np.random.default_rng(0)
    x, gy = uniform(rng, (4, 6, 14, 14), "float32"), uniform(rng, (4, 16, 10, 10), "float32")
    acc = np.empty((16, 150), np.float32)
    fresh = numba.njit(**dict(JIT_PARALLEL, cache=False))(dlc_cpu_conv.wide_conv2d_grad_weight.py_func)
    fresh(x, gy, acc, 1, 1, 5, 5, 0, 0, 1, 1)
    report = fresh.get_metadata(fresh.signatures[0])["parfor_diagnostics"]
    assert [p.patterns[0][0] for p in report.initial_parfors] == ["prange"]
    from dlc.ops.conv import conv2d_grad_weight_ref

    want = conv2d_grad_weight_ref(x, gy, dict(stride=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1), groups=1,
                                              kernel=(5, 5)))
    np.testing.assert_allclose(acc.reshape(16, 6, 5, 5), want, **TOL["float32"])


@pytest.mark.parametrize("threads", ["one", "all"])
def test_conv_kernels_on_threads_match_reference(threads):
    """The kernels called directly on shapes large enough for their threads (and on one thread), forward, dgrad
    and wgrad against the numpy references; BLAS's own thread count is what it was after each call."""
    import numba

    from dlc.ops.conv import conv2d_grad_input_ref, conv2d_grad_weight_ref, conv2d_ref
    from dlc.runtime.cpu import load_kernel_modules

    load_kernel_modules()
    import dlc_cpu_conv as kernels
    import dlc_cpu_threads
    from dlc_cpu_gemm import _BLAS_THREAD_FUNCTIONS

    blas_threads = _BLAS_THREAD_FUNCTIONS[1]
    rng = np.random.default_rng(5)
    before = numba.get_num_threads()
    numba.set_num_threads(1 if threads == "one" else numba.config.NUMBA_NUM_THREADS)
    try:
        for n, c, h, wd, co, kh, kw, stride, padding, dilation, groups, dtype in THREADED_CASES:
            x = uniform(rng, (n, c, h, wd), dtype)
            w = uniform(rng, (co, c // groups, kh, kw), dtype)
            a = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
            want_y = conv2d_ref(x, w, a)
            gy = uniform(rng, want_y.shape, dtype)
            want_dx = conv2d_grad_input_ref(gy, w, dict(a, out_hw=(h, wd)))
            want_dw = conv2d_grad_weight_ref(x, gy, dict(a, kernel=(kh, kw)))
            depthwise = c // groups == 1 and co // groups <= kernels.DIRECT_MAX_OUTPUTS and kh * kw > 1
            macs = want_y.size * w[0].size * (kernels.DEPTHWISE_MAC_COST if depthwise else 1)
            assert macs >= dlc_cpu_threads.PARALLEL_MIN_MACS, "a case too small for the threads"
            attrs = [np.int64(v) for v in (*stride, padding[0][0], padding[1][0], *dilation, groups)]
            y, dx, dw = (np.full(v.shape, np.nan, dtype) for v in (want_y, x, w))
            blas_before = blas_threads()
            kernels.conv2d(x, w, y, *attrs)
            kernels.conv2d_grad_input(gy, w, dx, *attrs)
            kernels.conv2d_grad_weight(x, gy, dw, *attrs)
            assert blas_threads() == blas_before
            what = f"N={n} C={c} {h}x{wd} -> {co} {kh}x{kw} stride {stride} groups {groups} {dtype}"
            for got, want, kind in ((y, want_y, "fwd"), (dx, want_dx, "dgrad"), (dw, want_dw, "wgrad")):
                # sums of up to 16384 products: rounding scales with the largest value, not each element's
                atol = TOL[dtype]["atol"] * float(np.abs(want).max())
                np.testing.assert_allclose(got, want, rtol=TOL[dtype]["rtol"], atol=atol, err_msg=f"{kind} {what}")
    finally:
        numba.set_num_threads(before)


# (N, C, H, W, kh, kw, stride, padding ((top, bottom), (left, right)), dilation, dtype) of depthwise convs with
# one output per channel that run channels last
CHANNELS_LAST_CASES = [
    (3, 64, 8, 8, 3, 3, (1, 1), ((1, 1), (1, 1)), (1, 1), "float32"),      # 64 outputs a plane, stride 1
    (5, 32, 9, 7, 3, 2, (1, 2), ((2, 0), (0, 1)), (2, 1), "float32"),      # strided, dilated, uneven padding
    (2, 48, 17, 16, 3, 3, (2, 2), ((1, 0), (0, 1)), (1, 1), "float64"),    # strided, larger planes
    (1, 512, 4, 4, 3, 3, (1, 1), ((1, 1), (1, 1)), (1, 1), "float32"),     # MobileNet's last stage, batch 1
    (0, 32, 4, 4, 3, 3, (2, 2), ((1, 1), (1, 1)), (1, 1), "float32"),      # no samples
]


@pytest.mark.parametrize("case", CHANNELS_LAST_CASES, ids=lambda c: "x".join(map(str, c[:4])))
def test_depthwise_channels_last_matches_reference(case):
    from dlc.ops.conv import conv2d_ref
    from dlc.runtime.cpu import load_kernel_modules

    load_kernel_modules()
    import dlc_cpu_conv as kernels

    n, c, h, wd, kh, kw, stride, padding, dilation, dtype = case
    rng = np.random.default_rng(6)
    x, w = uniform(rng, (n, c, h, wd), dtype), uniform(rng, (c, 1, kh, kw), dtype)
    a = dict(stride=stride, padding=padding, dilation=dilation, groups=c)
    want = conv2d_ref(x, w, a)
    assert kernels._uses_channels_last(c, c, *stride, *want.shape[2:]), "the case takes the channels-last path"
    got = np.full(want.shape, np.nan, dtype)
    kernels.conv2d(x, w, got, *[np.int64(v) for v in (*stride, padding[0][0], padding[1][0], *dilation, c)])
    np.testing.assert_allclose(got, want, **TOL[dtype])


def test_pool_ops_match_reference():
    rng = np.random.default_rng(1)
    x = dlc.input("x", ("B", 3, 9, 7))
    out = {}
    pools = [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=(3, 2), stride=(1, 3),
                                                                                  padding=((1, 0), (0, 1)))]
    for k, p in enumerate(pools):
        y = dlc.max_pool2d(x, **p)
        g = y * y + 1.0
        out[f"max{k}"] = y
        out[f"max_grad{k}"] = F._apply("max_pool2d_grad", x, g, **y.node.a)
        for include in (True, False):
            a = dlc.avg_pool2d(x, count_include_pad=include, **p)
            out[f"avg{k}_{include}"] = a
            out[f"avg_grad{k}_{include}"] = F._apply("avg_pool2d_grad", a * 3.0, out_hw=(9, 7), **a.node.a)
    z = dlc.input("z", ("B", 3, 9, 7))  # no infinities: the reference averages by matmul, where 0 * inf is NaN
    adaptive = dlc.adaptive_avg_pool2d(z, (4, 3))      # bins of 2-3 rows and 2-3 columns, overlapping
    out["adaptive"] = adaptive
    out["adaptive_grad"] = F._apply("adaptive_avg_pool2d_grad", adaptive * 2.0, out_hw=(9, 7), output_size=(4, 3))

    def feeds(b):
        xv = uniform(rng, (b, 3, 9, 7), "float32")
        xv[:, 0, :2, :2] = 0.5           # ties: the first maximal tap takes the gradient
        xv[:, 1, 4, :] = -np.inf         # a window of -inf only
        return {"x": xv, "z": uniform(rng, (b, 3, 9, 7), "float32")}
    check_against_reference(out, feeds)


def test_max_pool_propagates_nan_like_numpy():
    x = dlc.input("x", ("B", 1, 4, 4))
    y = dlc.max_pool2d(x, 2)
    fn = dlc.compile([y, F._apply("max_pool2d_grad", x, y * 0.0 + 1.0, **y.node.a)], target="cpu")
    xv = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    xv[0, 0, 0, 1] = np.nan
    xv[0, 0, 3, 3] = np.nan
    ref = dlc.compile([y, F._apply("max_pool2d_grad", x, y * 0.0 + 1.0, **y.node.a)], target="reference")
    for got, want in zip(fn(xv), ref(xv)):
        np.testing.assert_array_equal(got, want)


def test_random_ops_are_bit_identical_to_reference():
    x = dlc.input("x", ("B", 5, 3))
    step = dlc.input("step", (), "int64")
    out = {
        "uniform32": dlc.random_uniform(x, 7, step, -1.0, 2.0),
        "uniform64": dlc.random_uniform(("B", 4), 2 ** 40 + 3, step, dtype="float64"),
        "normal32": dlc.random_normal(x, 3, step, mean=0.5, std=2.0),
        "normal64": dlc.random_normal((7,), 2 ** 64 - 1, step, dtype="float64"),
        "bernoulli": dlc.random_bernoulli(x, 0.3, 11, step),
        "dropout": dlc.dropout(x, 0.5, 5, step),
        "constant_step": dlc.random_uniform((3, 2), 9, 12345),
    }
    rng = np.random.default_rng(2)
    for s in (0, 1, -7, 2 ** 40):
        check_against_reference(out, lambda b, s=s: {"x": uniform(rng, (b, 5, 3), "float32"), "step": np.array(s)},
                                batches=(4, 0), exact=True)


def test_conv_bias_relu_epilogue_stays_fused():
    rng = np.random.default_rng(3)
    x = dlc.input("x", ("B", 2, 6, 6))
    w = dlc.param(uniform(rng, (3, 2, 3, 3), "float32"), name="w")
    b = dlc.param(uniform(rng, (3,), "float32"), name="b")
    y = dlc.relu(dlc.conv2d(x, w, b, padding=1))
    fn = check_against_reference({"y": y}, lambda n: {"x": uniform(rng, (n, 2, 6, 6), "float32")}, batches=(2,))
    (kernel,) = fn.backend.program.kernels
    assert kernel.anchor.op == "conv2d" and [n.op for n in kernel.nodes] == ["conv2d", "add", "relu"]
    assert "conv2d_float32(" in fn.backend.source()  # the conv, called by symbol


def _lenet(params, x):
    h = dlc.max_pool2d(dlc.relu(dlc.conv2d(x, params[0], params[1], padding=2)), 2)
    h = dlc.avg_pool2d(dlc.relu(dlc.conv2d(h, params[2], params[3])), 2)
    h = dlc.relu(dlc.flatten(h) @ params[4] + params[5])
    return h @ params[6] + params[7]


def test_lenet_training_steps_run_as_one_native_call():
    """A LeNet-5-shaped net on 16x16 inputs (conv, max and average pools, dropout): 3 SGD steps."""
    rng = np.random.default_rng(4)
    shapes = [(6, 1, 5, 5), (6,), (16, 6, 3, 3), (16,), (16 * 3 * 3, 32), (32,), (32, 10), (10,)]
    params = [dlc.param(uniform(rng, s, "float32") * 0.5, name=f"p{i}") for i, s in enumerate(shapes)]
    x = dlc.input("x", ("B", 1, 16, 16))
    labels = dlc.input("labels", ("B",), "int64")
    step = dlc.param(np.array(0, np.int64), name="step", trainable=False)
    logits = dlc.dropout(_lenet(params, x), 0.25, 17, step)
    loss = -dlc.mean(dlc.sum(dlc.log_softmax(logits) * dlc.one_hot(labels, 10), axis=1))
    grads = dlc.grad(loss, params)
    updates = {p: p - 0.05 * g for p, g in zip(params, grads)}
    updates[step] = step + 1
    feeds = {"x": uniform(rng, (5, 1, 16, 16), "float32"), "labels": rng.integers(0, 10, size=5)}
    fn = check_against_reference({"loss": loss}, lambda b: feeds, batches=(5,), updates=updates, steps=3)
    ops = {k.anchor.op for k in fn.backend.program.kernels if k.anchor is not None}
    assert {"conv2d", "conv2d_grad_input", "conv2d_grad_weight", "max_pool2d_grad", "avg_pool2d_grad",
            "random_bernoulli"} <= ops
