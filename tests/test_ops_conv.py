"""conv1d, conv2d and conv_transpose2d against naive loops and PyTorch; gradients against central differences."""

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


def _pairs(p):
    """Padding in any accepted form (int, per-dim ints or pairs) as ((top, bottom), (left, right))."""
    entries = (p, p) if isinstance(p, int) else p
    return tuple((e, e) if isinstance(e, int) else tuple(e) for e in entries)


def _two(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def naive_conv2d(x, w, stride=1, padding=0, dilation=1, groups=1):
    """Cross-correlation by a loop over output pixels."""
    (sh, sw), (dh, dw) = _two(stride), _two(dilation)
    xp = np.pad(x, ((0, 0), (0, 0)) + _pairs(padding))
    n, _, hp, wp = xp.shape
    co, cg, kh, kw = w.shape
    ho, wo = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((n, co, ho, wo))
    per_group = co // groups
    for o in range(co):
        c0 = (o // per_group) * cg
        for i in range(ho):
            for j in range(wo):
                patch = xp[:, c0:c0 + cg, i * sh:i * sh + dh * (kh - 1) + 1:dh, j * sw:j * sw + dw * (kw - 1) + 1:dw]
                y[:, o, i, j] = np.sum(patch * w[o], axis=(1, 2, 3))
    return y


def naive_conv_transpose2d(x, w, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Each input pixel scatters its weighted kernel into the output."""
    (sh, sw), (dh, dw), (oph, opw) = _two(stride), _two(dilation), _two(output_padding)
    n, ci, h, wd = x.shape
    _, og, kh, kw = w.shape
    cg = ci // groups
    full = np.zeros((n, og * groups, (h - 1) * sh + dh * (kh - 1) + 1 + oph, (wd - 1) * sw + dw * (kw - 1) + 1 + opw))
    for c in range(ci):
        o0 = (c // cg) * og
        for i in range(h):
            for j in range(wd):
                full[:, o0:o0 + og, i * sh:i * sh + dh * (kh - 1) + 1:dh, j * sw:j * sw + dw * (kw - 1) + 1:dw] += \
                    x[:, c, i, j][:, None, None, None] * w[c]
    (pt, pb), (pl, pr) = _pairs(padding)
    return full[:, :, pt:full.shape[2] - pb, pl:full.shape[3] - pr]


def _torch_conv2d(x, w, stride, padding, dilation, groups):
    pads = _pairs(padding) if not isinstance(padding, str) else None
    if pads is not None and any(a != b for a, b in pads):  # torch pads symmetrically: pre-pad
        x, padding = np.pad(x, ((0, 0), (0, 0)) + pads), 0
    return TF.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=stride, padding=padding, dilation=dilation,
                     groups=groups).numpy()


def _oracles(naive, torch_fn):
    """The naive result always, and PyTorch's when it is installed."""
    return [naive] + ([torch_fn()] if torch is not None else [])


# (N, C_in, H, W, C_out, kernel, stride, padding, dilation, groups)
CONV2D_CASES = [
    (2, 3, 7, 7, 4, (3, 3), 1, 0, 1, 1),
    (2, 4, 9, 8, 6, (3, 2), (2, 1), (1, 2), 1, 2),
    (1, 6, 10, 11, 6, (3, 3), 2, 1, (2, 1), 6),           # depthwise, dilated
    (3, 2, 6, 9, 4, (1, 1), 1, 0, 1, 1),                  # 1x1
    (2, 4, 8, 7, 4, (2, 3), (1, 3), ((1, 0), (2, 1)), (1, 2), 2),  # asymmetric padding
    (1, 2, 7, 6, 3, (3, 3), 1, "same", 2, 1),
    (2, 3, 5, 5, 2, (5, 5), 3, 2, 1, 1),                 # stride that does not divide the extent
]


@pytest.mark.parametrize("case", CONV2D_CASES, ids=[str(i) for i in range(len(CONV2D_CASES))])
def test_conv2d_forward(case, rng):
    n, c, h, w_, co, k, stride, padding, dilation, groups = case
    x = rng.standard_normal((n, c, h, w_))
    w = rng.standard_normal((co, c // groups) + k)
    got = run(lambda x, w: dlc.conv2d(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups), x, w)
    pads = padding
    if padding == "same":
        pads = tuple((d * (kk - 1) // 2, d * (kk - 1) - d * (kk - 1) // 2) for kk, d in zip(k, _two(dilation)))
        assert got.shape[2:] == (h, w_)
    for want in _oracles(naive_conv2d(x, w, stride, pads, dilation, groups),
                         lambda: _torch_conv2d(x, w, stride, padding, dilation, groups)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", [CONV2D_CASES[1], CONV2D_CASES[2], CONV2D_CASES[4], CONV2D_CASES[6]],
                         ids=["strided-groups", "depthwise-dilated", "asymmetric", "uneven-stride"])
def test_conv2d_gradients(case, rng):
    n, c, h, w_, co, k, stride, padding, dilation, groups = case
    x = rng.standard_normal((n, c, h, w_))
    w = rng.standard_normal((co, c // groups) + k)
    check_grad(lambda x, w: dlc.conv2d(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups),
               [x, w])


def test_conv2d_bias_is_added_per_channel(rng):
    x, w, b = rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    got = run(lambda x, w, b: dlc.conv2d(x, w, b, padding=1), x, w, b)
    np.testing.assert_allclose(got, naive_conv2d(x, w, 1, 1) + b[None, :, None, None], rtol=1e-10, atol=1e-10)
    check_grad(lambda x, w, b: dlc.conv2d(x, w, b, padding=1), [x, w, b])


# stride, padding, dilation, groups, and the (before, after) padding that means
@pytest.mark.parametrize("stride,padding,dilation,groups,pads", [(1, 0, 1, 1, (0, 0)), (2, 1, 1, 2, (1, 1)),
                                                                  (3, ((2, 1),), 2, 1, (2, 1)),
                                                                  (1, "same", 3, 4, (3, 3))])
def test_conv1d(stride, padding, dilation, groups, pads, rng):
    x = rng.standard_normal((2, 4, 13))
    w = rng.standard_normal((8, 4 // groups, 3))

    def build(x, w):
        return dlc.conv1d(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups)

    got = run(build, x, w)
    naive = naive_conv2d(x[:, :, None], w[:, :, None], (1, stride), ((0, 0), pads), (1, dilation), groups)[:, :, 0]
    oracles = [naive]
    if torch is not None and pads[0] == pads[1]:  # torch pads conv1d symmetrically only
        oracles.append(TF.conv1d(torch.from_numpy(x), torch.from_numpy(w), stride=stride, padding=pads[0],
                                 dilation=dilation, groups=groups).numpy())
    for want in oracles:
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    check_grad(build, [x, w], max_entries=24)


# (N, C_in, H, W, C_out, kernel, stride, padding, output_padding, dilation, groups)
TRANSPOSE_CASES = [
    (2, 4, 5, 5, 3, (3, 3), 2, 1, 1, 1, 1),
    (1, 4, 4, 6, 6, (2, 3), (2, 3), (0, 1), (1, 2), 1, 2),
    (2, 3, 5, 4, 2, (3, 2), 1, 0, 0, (2, 1), 1),
    (1, 6, 3, 3, 6, (3, 3), 3, 2, 2, 2, 3),
]


@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=[str(i) for i in range(len(TRANSPOSE_CASES))])
def test_conv_transpose2d_forward_and_gradients(case, rng):
    n, c, h, w_, co, k, stride, padding, opad, dilation, groups = case
    x = rng.standard_normal((n, c, h, w_))
    w = rng.standard_normal((c, co // groups) + k)

    def build(x, w):
        return dlc.conv_transpose2d(x, w, stride=stride, padding=padding, output_padding=opad, groups=groups,
                                    dilation=dilation)

    got = run(build, x, w)
    torch_fn = lambda: TF.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w), stride=stride,  # noqa: E731
                                           padding=padding, output_padding=opad, groups=groups,
                                           dilation=dilation).numpy()
    for want in _oracles(naive_conv_transpose2d(x, w, stride, _pairs(_two(padding)), opad, groups, dilation),
                         torch_fn):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    check_grad(build, [x, w], max_entries=32)


def test_conv_transpose2d_is_the_input_gradient_of_conv2d(rng):
    x = rng.standard_normal((2, 3, 9, 8))
    w = rng.standard_normal((4, 3, 3, 3))
    g = rng.standard_normal((2, 4, 5, 4))
    xt, gt = dlc.input("x", x.shape, "float64"), dlc.input("g", g.shape, "float64")
    wt = dlc.constant(w, "float64")
    (dx,) = dlc.grad(dlc.conv2d(xt, wt, stride=2, padding=1), [xt], seed=gt)
    got = dlc.compile(dx, inputs=[xt, gt])(x, g)
    # the output padding recovers the column that the stride-2 conv never read
    want = run(lambda g: dlc.conv_transpose2d(g, dlc.constant(w, "float64"), stride=2, padding=1,
                                              output_padding=(0, 1)), g)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_symbolic_batch(rng):
    x = dlc.input("x", ("B", 3, 8, 8), "float64")
    w = dlc.param(rng.standard_normal((5, 3, 3, 3)), name="w", dtype="float64")
    y = dlc.conv2d(x, w, stride=2, padding=1)
    assert y.shape == ("B", 5, 4, 4)
    loss = dlc.sum(y * y)
    (gw,) = dlc.grad(loss, [w])
    f = dlc.compile([y, gw])
    wv = dlc.default_store()["w"]
    for batch in (1, 4):
        xv = rng.standard_normal((batch, 3, 8, 8))
        y_val, gw_val = f(xv)
        np.testing.assert_allclose(y_val, naive_conv2d(xv, wv, 2, 1), rtol=1e-10, atol=1e-10)
        # d(sum y^2)/dw = sum over samples and pixels of 2 y * window
        cols = np.lib.stride_tricks.sliding_window_view(np.pad(xv, ((0, 0), (0, 0), (1, 1), (1, 1))), (3, 3),
                                                        axis=(2, 3))[:, :, ::2, ::2]
        want = np.einsum("nohw,nchwij->ocij", 2 * y_val, cols)
        np.testing.assert_allclose(gw_val, want, rtol=1e-10, atol=1e-10)


def test_ops_are_complex_and_second_order_stops(rng):
    for op in ("conv2d", "conv2d_grad_input", "conv2d_grad_weight", "conv_transpose2d"):
        assert OPS[op].kind == "complex"
    x = dlc.input("x", (1, 2, 5, 5), "float64")
    w = dlc.param(rng.standard_normal((3, 2, 3, 3)), dtype="float64")
    loss = dlc.sum(dlc.tanh(dlc.conv2d(x, w)))
    gx = dlc.grad(loss, x)
    with pytest.raises(dlc.GradientError, match="conv2d_grad_input"):
        dlc.grad(dlc.sum(gx * gx), w)


def _line_of(marker):
    for i, line in enumerate(open(__file__).read().splitlines(), 1):
        if marker in line and "_line_of" not in line:
            return i
    raise AssertionError(marker)


def test_shape_errors_name_the_operands_and_the_line():
    x = dlc.input("x", ("B", 3, 8, 8))
    with pytest.raises(dlc.ShapeError) as e:
        dlc.conv2d(x, dlc.input("w", (4, 2, 3, 3)))  # CHANNELS
    msg = str(e.value)
    assert "conv2d" in msg and "3 channels" in msg and "(4, 2, 3, 3)" in msg and "(B, 3, 8, 8)" in msg
    assert f"test_ops_conv.py:{_line_of('# CHANNELS')}" in msg
    with pytest.raises(dlc.ShapeError, match="groups=2 must divide"):
        dlc.conv2d(x, dlc.input("w", (4, 1, 3, 3)), groups=2)
    with pytest.raises(dlc.ShapeError, match="does not fit"):
        dlc.conv2d(x, dlc.input("w", (4, 3, 9, 9)))
    with pytest.raises(dlc.ShapeError, match="4-d"):
        dlc.conv2d(dlc.input("v", ("B", 3, 8)), dlc.input("w", (4, 3, 3, 3)))
    with pytest.raises(dlc.ShapeError, match="only the batch dim may be symbolic"):
        dlc.conv2d(dlc.input("s", ("B", 3, "H", 8)), dlc.input("w", (4, 3, 3, 3)))
    with pytest.raises(dlc.ShapeError, match="conv1d needs"):
        dlc.conv1d(x, dlc.input("w", (4, 3, 3)))
    with pytest.raises(dlc.ShapeError, match="bias must be 1-d"):
        dlc.conv2d(x, dlc.input("w", (4, 3, 3, 3)), dlc.input("b", (4, 1)))


def test_bad_arguments_are_refused():
    x = dlc.input("x", (1, 3, 8, 8))
    w = dlc.input("w", (4, 3, 3, 3))
    with pytest.raises(dlc.DTypeError, match="float32 and float64"):
        dlc.conv2d(x, dlc.input("w64", (4, 3, 3, 3), "float64"))
    with pytest.raises(dlc.DTypeError, match="float32 or float64"):
        dlc.conv2d(dlc.input("xi", (1, 3, 8, 8), "int64"), dlc.input("wi", (4, 3, 3, 3), "int64"))
    with pytest.raises(ValueError, match="stride"):
        dlc.conv2d(x, w, stride=0)
    with pytest.raises(ValueError, match="padding"):
        dlc.conv2d(x, w, padding=(1, 2, 3))
    with pytest.raises(ValueError, match="stride 1"):
        dlc.conv2d(x, w, stride=2, padding="same")
    with pytest.raises(ValueError, match="groups"):
        dlc.conv2d(x, w, groups=0)
    with pytest.raises(ValueError, match="output_padding"):
        dlc.conv_transpose2d(x, dlc.input("wt", (3, 2, 3, 3)), stride=2, output_padding=2)
