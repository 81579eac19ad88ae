"""Channels last on the cpu target: the conv2d_nhwc kernels against the numpy reference, and the layout pass
(dlc/passes/layout.py) on depthwise-separable nets: which convs it moves, what transposes are left, and that
the compiled program computes what the reference executor computes."""

from __future__ import annotations

import numpy as np
import pytest

import dlc
from dlc.errors import ShapeError
from dlc.ops import OPS
from dlc.ops.conv import conv2d_nhwc_ref, conv2d_ref

TOL = {"float32": dict(rtol=1e-4, atol=1e-5), "float64": dict(rtol=1e-10, atol=1e-12)}


def uniform(rng, shape, dtype="float32"):
    return rng.uniform(-1.0, 1.0, size=shape).astype(dtype)


def kernels():
    from dlc.runtime.cpu import load_kernel_modules

    load_kernel_modules()
    import dlc_cpu_conv_nhwc

    return dlc_cpu_conv_nhwc


# (N, H, W, C, C_out, kh, kw, stride, padding ((top, bottom), (left, right)), dilation, dtype); groups are C
# (depthwise) when the kernel is larger than 1x1, else 1 (pointwise)
CASES = [
    (1, 2, 2, 16, 24, 1, 1, (1, 1), ((0, 0), (0, 0)), (1, 1), "float32"),   # 4 rows: dot products
    (1, 5, 5, 8, 12, 1, 1, (1, 1), ((0, 0), (0, 0)), (1, 1), "float64"),    # 25 rows: w @ x^T, copied out
    (3, 8, 8, 16, 8, 1, 1, (1, 1), ((0, 0), (0, 0)), (1, 1), "float32"),    # 192 rows: x @ w^T
    (0, 4, 4, 8, 8, 1, 1, (1, 1), ((0, 0), (0, 0)), (1, 1), "float32"),     # no samples
    (1, 4, 4, 32, 32, 3, 3, (1, 1), ((1, 1), (1, 1)), (1, 1), "float32"),   # 3x3: interior and borders
    (2, 9, 7, 24, 24, 3, 3, (2, 2), ((1, 0), (0, 1)), (1, 1), "float64"),   # strided, uneven padding
    (1, 11, 10, 16, 16, 3, 3, (1, 2), ((2, 2), (1, 1)), (2, 1), "float32"),  # dilated 3x3 (9 taps at once)
    (2, 6, 6, 8, 8, 5, 5, (1, 1), ((2, 2), (2, 2)), (1, 1), "float32"),     # 5x5: tap by tap
    (1, 3, 3, 8, 8, 3, 3, (1, 1), ((0, 0), (0, 0)), (1, 1), "float32"),     # one output, no padding
    # rows of at least RUN_MIN_COLUMNS outputs: runs with the weights in registers, patches at the edges
    (2, 18, 20, 40, 40, 3, 3, (1, 1), ((1, 1), (1, 1)), (1, 1), "float32"),   # 40 channels: a vector's tail
    (1, 20, 35, 24, 24, 3, 3, (2, 2), ((1, 0), (0, 1)), (1, 1), "float64"),   # strided, uneven padding
    (1, 22, 24, 16, 16, 3, 3, (1, 1), ((2, 2), (2, 2)), (2, 2), "float32"),   # dilated, padding 2
    (1, 6, 40, 32, 32, 3, 3, (1, 1), ((0, 0), (0, 0)), (1, 1), "float32"),    # no padding: runs only
    (1, 2, 18, 16, 16, 3, 3, (1, 1), ((1, 1), (1, 1)), (1, 1), "float32"),    # every row through a patch
]


def _run_case(k, case, rng):
    n, h, wd, c, co, kh, kw, stride, padding, dilation, dtype = case
    groups = c if kh * kw > 1 else 1
    x = uniform(rng, (n, h, wd, c), dtype)
    w = uniform(rng, (co, c // groups, kh, kw), dtype)
    a = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    want = conv2d_ref(x.transpose(0, 3, 1, 2), w, a).transpose(0, 2, 3, 1)
    got = np.full(want.shape, np.nan, dtype)   # every output must be written
    k.conv2d_nhwc(x, w, got, *[np.int64(v) for v in (*stride, padding[0][0], padding[1][0], *dilation, groups)])
    atol = TOL[dtype]["atol"] * max(1.0, float(np.abs(want).max(initial=0)))
    np.testing.assert_allclose(got, want, rtol=TOL[dtype]["rtol"], atol=atol, err_msg=str(case))


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:7])))
def test_conv2d_nhwc_kernel_matches_reference(case):
    _run_case(kernels(), case, np.random.default_rng(1))


# cases with enough work for forward_workers to split them (kernels/cpu/conv.py's thresholds)
THREADED_CASES = [
    (4, 32, 32, 256, 256, 1, 1, (1, 1), ((0, 0), (0, 0)), (1, 1), "float32"),   # rows over threads
    (1, 64, 64, 512, 512, 1, 1, (1, 1), ((0, 0), (0, 0)), (1, 1), "float32"),   # batch 1, rows split
    (2, 64, 64, 256, 256, 3, 3, (1, 1), ((1, 1), (1, 1)), (1, 1), "float32"),   # depthwise rows over threads
    (16, 8, 8, 1024, 1024, 3, 3, (1, 1), ((1, 1), (1, 1)), (1, 1), "float32"),  # narrow rows over threads
]


# batch-1 pointwise convs of a few rows, which split from SPLIT_MIN_MACS on TBB, by blocks of output channels
THIN_THREADED_CASES = [
    (1, 4, 4, 512, 512, 1, 1, (1, 1), ((0, 0), (0, 0)), (1, 1), "float32"),   # w @ x^T into a scratch block
    (1, 2, 2, 512, 1024, 1, 1, (1, 1), ((0, 0), (0, 0)), (1, 1), "float64"),  # dot products
]


@pytest.mark.parametrize("threads", ["one", "all"])
def test_conv2d_nhwc_kernel_on_threads_matches_reference(threads):
    import numba

    k = kernels()
    import dlc_cpu_conv
    import dlc_cpu_threads
    before = numba.get_num_threads()
    numba.set_num_threads(1 if threads == "one" else numba.config.NUMBA_NUM_THREADS)
    try:
        for case in THREADED_CASES:
            n, h, wd, c, co, kh, kw = case[:7]
            macs = n * h * wd * co * c * kh * kw // (c if kh * kw > 1 else 1) * (8 if kh * kw > 1 else 1)
            assert macs >= dlc_cpu_threads.PARALLEL_MIN_MACS, "a case too small for the threads"
            _run_case(k, case, np.random.default_rng(2))
        for case in THIN_THREADED_CASES:
            n, h, wd, c, co = case[:5]
            assert n * h * wd * c * co >= dlc_cpu_conv.SPLIT_MIN_MACS, "a case too small for the threads"
            _run_case(k, case, np.random.default_rng(3))
    finally:
        numba.set_num_threads(before)


def test_conv2d_nhwc_kernel_refuses_other_convs():
    k = kernels()
    x, w = np.zeros((1, 4, 4, 8), np.float32), np.zeros((8, 8, 3, 3), np.float32)
    with pytest.raises(ValueError, match="pointwise .* and depthwise convs only"):
        k.conv2d_nhwc(x, w, np.zeros((1, 2, 2, 8), np.float32), *[np.int64(v) for v in (1, 1, 0, 0, 1, 1, 1)])


def test_conv2d_nhwc_shape_rule_and_reference():
    op = OPS["conv2d_nhwc"]
    a = dict(stride=(2, 2), padding=((1, 1), (1, 1)), dilation=(1, 1), groups=8)

    class V:   # an operand as shape rules see it
        def __init__(self, shape, dtype="float32"):
            self.shape, self.ndim, self.dtype = shape, len(shape), dtype

    assert op.infer((V(("B", 9, 7, 8)), V((8, 1, 3, 3))), a) == (("B", 5, 4, 8), "float32")
    with pytest.raises(ShapeError, match=r"4-d \(N, H, W, C\)"):
        op.infer((V((9, 7, 8)), V((8, 1, 3, 3))), a)
    with pytest.raises(ShapeError, match="channels"):
        op.infer((V((1, 9, 7, 6)), V((8, 1, 3, 3))), a)
    rng = np.random.default_rng(3)
    x, w = uniform(rng, (2, 9, 7, 8), "float64"), uniform(rng, (8, 1, 3, 3), "float64")
    want = conv2d_ref(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), w, a).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(conv2d_nhwc_ref(x, w, a), want, rtol=1e-12)


# ----------------------------------------------------------------------------
# the pass


def _relu6(y):
    return dlc.minimum(dlc.maximum(y, 0.0), 6.0)


def depthwise_separable_net(rng, c0=3, c=8, classes=5, residual=True):
    """A MobileNet-style net: a 3x3 stem, depthwise + pointwise blocks with biases, per-channel affine (batch
    norm at inference), ReLU6 and PReLU-style per-channel slopes, an inverted-residual add, global pooling."""
    params = []

    def p(shape, name):
        params.append(dlc.param(uniform(rng, shape) * 0.5, name=name))
        return params[-1]

    x = dlc.input("x", ("B", c0, 12, 12))
    h = _relu6(dlc.conv2d(x, p((c, c0, 3, 3), "stem"), p((c,), "stem_b"), padding=1))
    d = dlc.conv2d(h, p((c, 1, 3, 3), "dw1"), p((c,), "dw1_b"), padding=1, groups=c)
    d = _relu6(d * dlc.reshape(p((c,), "bn_scale"), (c, 1, 1)) + dlc.reshape(p((c,), "bn_shift"), (c, 1, 1)))
    e = dlc.conv2d(d, p((c, c, 1, 1), "pw1"), p((c,), "pw1_b"))
    if residual:
        e = e + h
    slope = dlc.reshape(p((c,), "slope"), (c, 1, 1))
    e = dlc.where(e > 0.0, e, e * slope)
    d2 = _relu6(dlc.conv2d(e, p((c, 1, 3, 3), "dw2"), p((c,), "dw2_b"), stride=2, padding=1, groups=c))
    e2 = _relu6(dlc.conv2d(d2, p((2 * c, c, 1, 1), "pw2"), p((2 * c,), "pw2_b")))
    pooled = dlc.mean(e2, axis=(2, 3))
    return x, pooled @ p((2 * c, classes), "fc"), params


def ops_of(fn) -> dict:
    return fn.backend.program.graph.op_counts()


def test_depthwise_separable_net_runs_channels_last_and_matches_reference():
    rng = np.random.default_rng(4)
    x, y, _ = depthwise_separable_net(rng)
    cpu = dlc.compile(y, target="cpu")
    ref = dlc.compile(y, target="reference")
    ops = ops_of(cpu)
    # the four depthwise and pointwise convs run channels last; the stem stays channels first
    assert ops.get("conv2d_nhwc") == 4 and ops.get("conv2d") == 1
    # one transpose into the region (after the stem), one out of it (before the pooling)
    assert ops.get("transpose") == 2
    assert cpu.backend.stats["fallbacks"] == []
    for batch in (1, 3, 0):
        feed = uniform(rng, (batch, 3, 12, 12))
        np.testing.assert_allclose(cpu(feed), ref(feed), rtol=1e-4, atol=1e-5, err_msg=f"batch {batch}")


def test_channels_last_is_an_option_of_the_cpu_target():
    rng = np.random.default_rng(5)
    x, y, _ = depthwise_separable_net(rng)
    off = dlc.compile(y, target="cpu", channels_last=False)
    on = dlc.compile(y, target="cpu")
    assert "conv2d_nhwc" not in ops_of(off) and "transpose" not in ops_of(off)
    feed = uniform(rng, (2, 3, 12, 12))
    np.testing.assert_allclose(on(feed), off(feed), rtol=1e-4, atol=1e-5)


def test_training_programs_keep_channels_first():
    """The gradients read the activations channels first: a training step keeps every conv as it is."""
    rng = np.random.default_rng(6)
    x, y, params = depthwise_separable_net(rng, residual=False)
    loss = dlc.mean(y * y)
    grads = dlc.grad(loss, params)
    fn = dlc.compile([loss], updates={p: p - 0.01 * g for p, g in zip(params, grads)}, target="cpu")
    assert "conv2d_nhwc" not in ops_of(fn) and ops_of(fn)["conv2d"] == 5


def test_pointwise_only_regions_stay_channels_first():
    """A chain of pointwise convs takes the same time in either layout: the pass leaves it alone."""
    rng = np.random.default_rng(7)
    x = dlc.input("x", ("B", 8, 6, 6))
    h = dlc.relu(dlc.conv2d(x, dlc.param(uniform(rng, (8, 8, 1, 1)), name="a")))
    h = dlc.relu(dlc.conv2d(h, dlc.param(uniform(rng, (4, 8, 1, 1)), name="b")))
    fn = dlc.compile(h, target="cpu")
    assert ops_of(fn).get("conv2d") == 2 and "conv2d_nhwc" not in ops_of(fn)


def test_a_lone_depthwise_conv_stays_channels_first():
    rng = np.random.default_rng(8)
    x = dlc.input("x", ("B", 8, 6, 6))
    h = dlc.relu(dlc.conv2d(x, dlc.param(uniform(rng, (8, 1, 3, 3)), name="dw"), padding=1, groups=8))
    fn = dlc.compile(dlc.max_pool2d(h, 2), target="cpu")
    assert "conv2d_nhwc" not in ops_of(fn)
