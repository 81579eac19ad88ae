"""max_pool2d, avg_pool2d and adaptive_avg_pool2d against naive loops and PyTorch; their gradients."""

import numpy as np
import pytest
from helpers import check_grad, run

import dlc
from dlc.ops import OPS

try:
    import torch
    import torch.nn.functional as TF
except ImportError:  # the naive loops below are the oracle then
    torch = None


def _two(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def naive_pool(x, kernel, stride, padding, reduce, count_include_pad=True):
    """A loop over output pixels; padding is -inf for max, zeros (optionally not counted) for mean."""
    (kh, kw), (sh, sw), (ph, pw) = _two(kernel), _two(stride or kernel), _two(padding)
    n, c, h, w = x.shape
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    y = np.zeros((n, c, ho, wo))
    for i in range(ho):
        for j in range(wo):
            r0, c0 = i * sh - ph, j * sw - pw
            r, q = slice(max(r0, 0), min(r0 + kh, h)), slice(max(c0, 0), min(c0 + kw, w))
            window = x[:, :, r, q]
            if reduce == "max":
                y[:, :, i, j] = window.max(axis=(2, 3))
            else:
                count = kh * kw if count_include_pad else window.shape[2] * window.shape[3]
                y[:, :, i, j] = window.sum(axis=(2, 3)) / count
    return y


def naive_adaptive(x, out):
    oh, ow = _two(out)
    h, w = x.shape[2:]
    y = np.zeros(x.shape[:2] + (oh, ow))
    for i in range(oh):
        for j in range(ow):
            r = slice(i * h // oh, -(-(i + 1) * h // oh))
            q = slice(j * w // ow, -(-(j + 1) * w // ow))
            y[:, :, i, j] = x[:, :, r, q].mean(axis=(2, 3))
    return y


def _check(got, naive, torch_fn):
    oracles = [naive] + ([torch_fn().numpy()] if torch is not None else [])
    for want in oracles:
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


# (input shape, kernel, stride, padding)
POOL_CASES = [
    ((2, 3, 8, 8), 2, None, 0),
    ((2, 2, 9, 11), 3, 2, 1),
    ((1, 3, 7, 10), (3, 2), (2, 1), (1, 0)),
    ((2, 1, 6, 5), 3, 1, 1),                 # overlapping windows
    ((1, 2, 5, 7), (2, 4), (3, 2), (1, 2)),  # strides that do not divide the extent
]
IDS = [str(i) for i in range(len(POOL_CASES))]


@pytest.mark.parametrize("case", POOL_CASES, ids=IDS)
def test_max_pool2d(case, rng):
    shape, kernel, stride, padding = case
    x = rng.standard_normal(shape)

    def build(x):
        return dlc.max_pool2d(x, kernel, stride, padding)

    _check(run(build, x), naive_pool(x, kernel, stride, padding, "max"),
           lambda: TF.max_pool2d(torch.from_numpy(x), kernel, stride, padding))
    check_grad(build, [x], max_entries=32)


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("case", POOL_CASES, ids=IDS)
def test_avg_pool2d(case, count_include_pad, rng):
    shape, kernel, stride, padding = case
    x = rng.standard_normal(shape)

    def build(x):
        return dlc.avg_pool2d(x, kernel, stride, padding, count_include_pad)

    _check(run(build, x), naive_pool(x, kernel, stride, padding, "mean", count_include_pad),
           lambda: TF.avg_pool2d(torch.from_numpy(x), kernel, stride, padding, count_include_pad=count_include_pad))
    check_grad(build, [x], max_entries=32)


@pytest.mark.parametrize("out", [1, (2, 3), (3, 4), (5, 2), (7, 9)], ids=["global", "even", "uneven", "mixed",
                                                                          "identity"])
def test_adaptive_avg_pool2d(out, rng):
    x = rng.standard_normal((2, 3, 7, 9)) if out != (2, 3) else rng.standard_normal((2, 3, 8, 9))

    def build(x):
        return dlc.adaptive_avg_pool2d(x, out)

    _check(run(build, x), naive_adaptive(x, out), lambda: TF.adaptive_avg_pool2d(torch.from_numpy(x), out))
    check_grad(build, [x], max_entries=32)


def test_max_pool_gradient_goes_to_the_first_maximum_on_ties():
    x = np.array([[[[1.0, 1.0, 0.0, 2.0],
                    [1.0, 0.5, 2.0, 2.0],
                    [3.0, 3.0, 3.0, 3.0],
                    [0.0, 0.0, 3.0, 3.0]]]])
    g = np.array([[[[10.0, 20.0], [30.0, 40.0]]]])
    xt, gt = dlc.input("x", x.shape, "float64"), dlc.input("g", g.shape, "float64")
    (dx,) = dlc.grad(dlc.max_pool2d(xt, 2), [xt], seed=gt)
    got = dlc.compile(dx, inputs=[xt, gt])(x, g)
    want = np.zeros_like(x)
    want[0, 0, 0, 0], want[0, 0, 0, 3], want[0, 0, 2, 0], want[0, 0, 2, 2] = 10, 20, 30, 40
    np.testing.assert_array_equal(got, want)
    if torch is not None:
        xt_ = torch.from_numpy(x).requires_grad_()
        TF.max_pool2d(xt_, 2).backward(torch.from_numpy(g))
        np.testing.assert_array_equal(got, xt_.grad.numpy())


def test_overlapping_windows_accumulate_max_gradient():
    # the centre element is the maximum of all four overlapping 2x2 windows
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = 5.0
    got = run(lambda x: dlc.grad(dlc.sum(dlc.max_pool2d(x, 2, 1)), x), x)
    want = np.zeros_like(x)
    want[0, 0, 1, 1] = 4.0
    np.testing.assert_array_equal(got, want)


def test_symbolic_batch_and_float32(rng):
    x = dlc.input("x", ("B", 2, 6, 6))
    y = dlc.avg_pool2d(dlc.max_pool2d(x, 2), 3, 1, 1, count_include_pad=False)
    assert y.shape == ("B", 2, 3, 3) and y.dtype == "float32"
    f = dlc.compile([y, dlc.grad(dlc.sum(y), x)])
    for batch in (1, 3):
        xv = rng.standard_normal((batch, 2, 6, 6)).astype(np.float32)
        y_val, gx = f(xv)
        assert y_val.dtype == np.float32 and gx.shape == xv.shape
        want = naive_pool(naive_pool(xv, 2, None, 0, "max"), 3, 1, 1, "mean", False)
        np.testing.assert_allclose(y_val, want, rtol=1e-6, atol=1e-6)


def test_ops_are_complex_and_second_order_stops(rng):
    for op in ("max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "max_pool2d_grad", "avg_pool2d_grad",
               "adaptive_avg_pool2d_grad"):
        assert OPS[op].kind == "complex"
    x = dlc.input("x", (1, 1, 4, 4), "float64")
    gx = dlc.grad(dlc.sum(dlc.max_pool2d(x, 2) ** 2), x)
    with pytest.raises(dlc.GradientError, match="max_pool2d_grad"):
        dlc.grad(dlc.sum(gx * gx), x)


def test_errors():
    x = dlc.input("x", ("B", 3, 8, 8))
    with pytest.raises(dlc.ShapeError, match=r"more than half the kernel") as e:
        dlc.max_pool2d(x, 2, padding=2)
    assert "max_pool2d at" in str(e.value) and "test_ops_pool.py" in str(e.value)
    with pytest.raises(dlc.ShapeError, match="does not fit the input"):
        dlc.avg_pool2d(x, 9)
    with pytest.raises(dlc.ShapeError, match="4-d"):
        dlc.max_pool2d(dlc.input("v", ("B", 8, 8)), 2)
    with pytest.raises(dlc.DTypeError, match="float32 or float64"):
        dlc.max_pool2d(dlc.input("i", (1, 1, 4, 4), "int64"), 2)
    with pytest.raises(dlc.ShapeError, match="larger than the input"):
        dlc.adaptive_avg_pool2d(x, (9, 3))
    with pytest.raises(ValueError, match="kernel_size"):
        dlc.max_pool2d(x, 0)
