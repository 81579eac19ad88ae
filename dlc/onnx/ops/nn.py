"""ONNX network layers: Conv, ConvTranspose, pooling, normalisations, LRN, Dropout.

Convolutions and pools are 2-d in dlc; 1-d ones run as 2-d over a unit height.
Pool windows that dlc's pool ops do not take directly (ceil_mode, dilations,
padding over half the kernel) are swept tap by tap over strided slices, and an
average divides by a divisor map computed at import.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np

import dlc.functional as F

from ...graph import dim_mul
from ...ops.conv import conv2d, conv_transpose2d
from ...ops.pool import avg_pool2d, max_pool2d
from . import onnx_op

AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


def _as_2d(n, x):
    """(x as 4-d, whether it was 1-d); 3-d and higher convolutions are refused by name."""
    if x.ndim == 4:
        return x, False
    if x.ndim == 3:
        return F.reshape(x, (x.shape[0], x.shape[1], 1, x.shape[2])), True
    raise n.unsupported(f"a rank-{x.ndim} input ({x.ndim - 2}-d {n.op})", "1-d and 2-d")


def _from_2d(y, was_1d):
    return F.reshape(y, (y.shape[0], y.shape[1], y.shape[3])) if was_1d else y


def _window_attrs(n, spatial, kernel):
    """strides, dilations and (before, after) pads per spatial dim, auto_pad resolved."""
    k = len(kernel)
    strides = n.attr("strides", [1] * k)
    dilations = n.attr("dilations", [1] * k)
    pads = n.attr("pads", [0] * (2 * k))
    auto = n.attr("auto_pad", "NOTSET")
    if auto not in AUTO_PADS:
        raise n.unsupported(f"auto_pad={auto!r}", ", ".join(AUTO_PADS))
    if len(strides) != k or len(dilations) != k or len(pads) != 2 * k:
        raise n.invalid(f"strides/dilations/pads do not match the {k}-d kernel")
    pairs = [(pads[i], pads[i + k]) for i in range(k)]
    if auto == "VALID":
        pairs = [(0, 0)] * k
    elif auto.startswith("SAME"):
        pairs = []
        for size, kk, s, d in zip(spatial, kernel, strides, dilations):
            total = max((-(-size // s) - 1) * s + (kk - 1) * d + 1 - size, 0)
            small = total // 2
            pairs.append((small, total - small) if auto == "SAME_UPPER" else (total - small, small))
    return list(strides), list(dilations), pairs


def _lift_1d(vals, fill):
    return [fill] + list(vals)


# ----------------------------------------------------------------------------
# convolutions


def _conv3d(n, x, w, b):
    """A 3-d convolution as a sum over the depth taps of 2-d convolutions, the output depth folded into the batch."""
    kernel, spatial = list(w.shape[2:]), list(x.shape[2:])
    if not all(isinstance(d, int) for d in spatial + [x.shape[1]]):
        raise n.unsupported("a 3-d Conv over symbolic dims")
    strides, dilations, pads = _window_attrs(n, spatial, kernel)
    (dlo, dhi), sd, dd, kd = pads[0], strides[0], dilations[0], kernel[0]
    if dlo or dhi:
        x = F.pad(x, [(0, 0), (0, 0), (dlo, dhi), (0, 0), (0, 0)])
    nb, c, depth = x.shape[0], x.shape[1], x.shape[2]
    d_out = (depth - dd * (kd - 1) - 1) // sd + 1
    y = None
    for t in range(kd):
        xs = F.slice_(x, [0, 0, t * dd, 0, 0], [None, None, t * dd + (d_out - 1) * sd + 1, None, None],
                      [1, 1, sd, 1, 1])
        xs = F.reshape(F.transpose(xs, (0, 2, 1, 3, 4)), (dim_mul(nb, d_out), c) + tuple(spatial[1:]))
        wt = F.reshape(F.take_slice(w, 2, t, t + 1), tuple(w.shape[:2]) + tuple(kernel[1:]))
        yt = conv2d(xs, wt, None, stride=tuple(strides[1:]), padding=tuple(pads[1:]), dilation=tuple(dilations[1:]),
                    groups=n.attr("group", 1))
        y = yt if y is None else y + yt
    y = F.transpose(F.reshape(y, (nb, d_out) + tuple(y.shape[1:])), (0, 2, 1, 3, 4))
    return y if b is None else y + F.reshape(b, (b.shape[0], 1, 1, 1))


@onnx_op("Conv", attrs=("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"))
def conv(n):
    if n.tensor(0).ndim == 5:
        return _conv3d(n, n.tensor(0), n.tensor(1), n.tensor(2) if n.has(2) else None)
    x, was_1d = _as_2d(n, n.tensor(0))
    w = n.tensor(1)
    w = F.reshape(w, (w.shape[0], w.shape[1], 1, w.shape[2])) if was_1d else w
    kernel = list(w.shape[2:])[1:] if was_1d else list(w.shape[2:])
    spatial = list(x.shape[3:] if was_1d else x.shape[2:])
    strides, dilations, pads = _window_attrs(n, spatial, kernel)
    if was_1d:
        strides, dilations, pads = _lift_1d(strides, 1), _lift_1d(dilations, 1), _lift_1d(pads, (0, 0))
    b = n.tensor(2) if n.has(2) else None
    y = conv2d(x, w, b, stride=tuple(strides), padding=tuple(pads), dilation=tuple(dilations),
               groups=n.attr("group", 1))
    return _from_2d(y, was_1d)


@onnx_op("ConvTranspose", attrs=("auto_pad", "dilations", "group", "kernel_shape", "output_padding",
                                 "output_shape", "pads", "strides"))
def conv_transpose(n):
    x, was_1d = (n.tensor(0), False) if n.tensor(0).ndim == 5 else _as_2d(n, n.tensor(0))
    w = n.tensor(1)
    w = F.reshape(w, (w.shape[0], w.shape[1], 1, w.shape[2])) if was_1d else w
    kernel = list(w.shape[3:] if was_1d else w.shape[2:])
    spatial = list(x.shape[3:] if was_1d else x.shape[2:])
    k = len(kernel)
    strides = n.attr("strides", [1] * k)
    dilations = n.attr("dilations", [1] * k)
    opad = n.attr("output_padding", [0] * k)
    pads = n.attr("pads", [0] * (2 * k))
    pairs = [(pads[i], pads[i + k]) for i in range(k)]
    auto = n.attr("auto_pad", "NOTSET")
    if auto not in AUTO_PADS:
        raise n.unsupported(f"auto_pad={auto!r}", ", ".join(AUTO_PADS))
    out_shape = n.attr("output_shape", None)
    if out_shape is not None or auto.startswith("SAME"):
        target = list(out_shape)[-k:] if out_shape is not None else [s * st for s, st in zip(spatial, strides)]
        pairs, opad = [], list(opad)
        for k_, (size, kk, s, d, t) in enumerate(zip(spatial, kernel, strides, dilations, target)):
            total = s * (size - 1) + opad[k_] + (kk - 1) * d + 1 - t
            if total < 0:   # the requested size is past the full output: the difference is output padding
                opad[k_] -= total
                total = 0
            small = total // 2
            pairs.append((total - small, small) if auto == "SAME_LOWER" else (small, total - small))
    elif auto == "VALID":
        pairs = [(0, 0)] * k
    if was_1d:
        strides, dilations, pairs, opad = (_lift_1d(strides, 1), _lift_1d(dilations, 1), _lift_1d(pairs, (0, 0)),
                                           _lift_1d(opad, 0))
    b = n.tensor(2) if n.has(2) else None
    if x.ndim == 5:
        return _conv_transpose3d(n, x, w, b, strides, dilations, pairs, opad)
    y = conv_transpose2d(x, w, b, stride=tuple(strides), padding=tuple(pairs), output_padding=tuple(opad),
                         groups=n.attr("group", 1), dilation=tuple(dilations))
    return _from_2d(y, was_1d)


def _conv_transpose3d(n, x, w, b, strides, dilations, pairs, opad):
    """A 3-d transposed convolution as a sum over the depth taps of 2-d ones (the input depth folded into the
    batch), each tap's planes spread to every stride-th output depth and shifted by the tap's dilated offset."""
    if not all(isinstance(d, int) for d in x.shape[1:]):
        raise n.unsupported("a 3-d ConvTranspose over symbolic dims")
    nb, c, depth = x.shape[0], x.shape[1], x.shape[2]
    (lo, hi), sd, dd, kd = pairs[0], strides[0], dilations[0], w.shape[2]
    full = sd * (depth - 1) + dd * (kd - 1) + 1
    planes = F.reshape(F.transpose(x, (0, 2, 1, 3, 4)), (dim_mul(nb, depth), c) + tuple(x.shape[3:]))
    total = None
    for t in range(kd):
        wt = F.reshape(F.take_slice(w, 2, t, t + 1), tuple(w.shape[:2]) + tuple(w.shape[3:]))
        yt = conv_transpose2d(planes, wt, None, stride=tuple(strides[1:]), padding=tuple(pairs[1:]),
                              output_padding=tuple(opad[1:]), groups=n.attr("group", 1),
                              dilation=tuple(dilations[1:]))
        yt = F.reshape(yt, (nb, depth) + tuple(yt.shape[1:]))
        if sd > 1:   # sd - 1 zero planes after each input plane
            gap = F.zeros((nb, depth, sd - 1) + tuple(yt.shape[2:]), yt.dtype)
            yt = F.reshape(F.concat([F.expand_dims(yt, 2), gap], axis=2), (nb, depth * sd) + tuple(yt.shape[2:]))
            yt = F.take_slice(yt, 1, 0, sd * (depth - 1) + 1)
        yt = F.pad(yt, [(0, 0), (t * dd, full - t * dd - yt.shape[1])] + [(0, 0)] * 3)
        total = yt if total is None else total + yt
    y = F.take_slice(total, 1, lo, full - max(hi - opad[0], 0))   # the depth pads, and output padding past them
    if opad[0] > hi:
        y = F.pad(y, [(0, 0), (0, opad[0] - hi)] + [(0, 0)] * 3)
    y = F.transpose(y, (0, 2, 1, 3, 4))
    return y if b is None else y + F.reshape(b, (b.shape[0], 1, 1, 1))


# ----------------------------------------------------------------------------
# pooling


def _pool_geometry(n, x):
    kernel = n.attr("kernel_shape")
    spatial = list(x.shape[2:])
    if len(kernel) != len(spatial):
        raise n.invalid(f"kernel_shape {kernel} for a {len(spatial)}-d input")
    if not all(isinstance(s, int) for s in spatial):
        raise n.unsupported("pooling over symbolic spatial dims")
    strides, dilations, pads = _window_attrs(n, spatial, kernel)
    ceil = bool(n.attr("ceil_mode", 0))
    outs, extra = [], []
    for size, k, s, d, (lo, hi) in zip(spatial, kernel, strides, dilations, pads):
        span = size + lo + hi - d * (k - 1) - 1
        o = (-(-span // s) if ceil else span // s) + 1
        if ceil and (o - 1) * s >= size + lo:   # the last window would start inside the end padding
            o -= 1
        outs.append(o)
        extra.append(max(0, (o - 1) * s + d * (k - 1) + 1 - (size + lo + hi)))
    return kernel, strides, dilations, pads, outs, extra


def _taps(xp, kernel, strides, dilations, outs):
    """Each window tap of a padded (N, C, ...) input as a strided slice of shape (N, C) + outs."""
    for tap in itertools.product(*(range(k) for k in kernel)):
        begin = [0, 0] + [t * d for t, d in zip(tap, dilations)]
        end = [None, None] + [b + (o - 1) * s + 1 for b, o, s in zip(begin[2:], outs, strides)]
        yield F.slice_(xp, begin, end, [1, 1] + list(strides))


# Windows of more taps than this are gathered axis by axis: a chain of that many strided slices fuses into one
# kernel reading every tap, which the cpu target's compiler takes minutes over (a 200-tap 1-d window).
MAX_TAPS = 32


def _gathered_pool(xp, reduce_max, kernel, strides, dilations, outs):
    """The window max/sum one spatial axis at a time (both are separable): the axis's windows gathered into a new
    (outputs, taps) pair of axes by an index table computed at import, then reduced over the taps."""
    y = xp
    for axis, (k, s, d, o) in enumerate(zip(kernel, strides, dilations, outs), start=2):
        if k == 1 and s == 1:
            continue
        index = np.arange(o, dtype=np.int64)[:, None] * s + np.arange(k, dtype=np.int64)[None, :] * d
        windows = F.take(y, F.constant(index), axis=axis)
        y = F.max(windows, axis + 1) if reduce_max else F.sum(windows, axis + 1)
    return y


def _counts(size, k, s, d, out, lo, hi):
    """Per output position, the window taps inside [lo, hi) of the padded axis."""
    return np.array([sum(lo <= o * s + t * d < hi for t in range(k)) for o in range(out)], dtype=np.float64)


def _pool(n, reduce_max: bool):
    x = n.tensor(0)
    if x.ndim == 5:   # 3-d pools: always tap by tap
        return _tap_pool(n, x, reduce_max, *_pool_geometry(n, x))
    x, was_1d = _as_2d(n, x)
    if was_1d:
        sub = _OneDim(n)
        kernel, strides, dilations, pads, outs, extra = _pool_geometry(sub, x)
    else:
        kernel, strides, dilations, pads, outs, extra = _pool_geometry(n, x)
    plain = (dilations == [1, 1] and not any(extra) and x.dtype in ("float32", "float64")
             and all(2 * max(p) <= k for p, k in zip(pads, kernel)))
    include = bool(n.attr("count_include_pad", 0))
    if plain and reduce_max:
        return _from_2d(max_pool2d(x, tuple(kernel), tuple(strides), tuple(pads)), was_1d)
    if plain and (include or not any(lo or hi for lo, hi in pads)):
        return _from_2d(avg_pool2d(x, tuple(kernel), tuple(strides), tuple(pads), count_include_pad=include),
                        was_1d)
    return _from_2d(_tap_pool(n, x, reduce_max, kernel, strides, dilations, pads, outs, extra), was_1d)


def _tap_pool(n, x, reduce_max, kernel, strides, dilations, pads, outs, extra):
    """A pool as a max/sum over its window taps; an average divides by the taps inside the counted region."""
    include = bool(n.attr("count_include_pad", 0))
    fill = (-np.inf if x.dtype in ("float32", "float64") else float(np.iinfo(x.dtype).min)) if reduce_max else 0.0
    full = [(0, 0), (0, 0)] + [(lo, hi + e) for (lo, hi), e in zip(pads, extra)]
    xp = F.pad(x, full, value=fill) if any(lo or hi for lo, hi in full) else x
    if int(np.prod(kernel)) > MAX_TAPS:
        y = _gathered_pool(xp, reduce_max, kernel, strides, dilations, outs)
    else:
        taps = list(_taps(xp, kernel, strides, dilations, outs))
        y = taps[0]
        for t in taps[1:]:
            y = F.maximum(y, t) if reduce_max else y + t
    if not reduce_max:
        per_dim = []
        for size, k, s, d, o, (lo, hi) in zip(x.shape[2:], kernel, strides, dilations, outs, pads):
            region = (0, size + lo + hi) if include else (lo, lo + size)
            per_dim.append(_counts(size, k, s, d, o, *region))
        divisor = functools.reduce(np.multiply.outer, per_dim).astype(x.dtype)
        y = y / F.constant(np.maximum(divisor, 1))
    return y


class _OneDim:
    """A node's pooling attributes with a unit height dim put in front (1-d pools run as 2-d)."""

    def __init__(self, n):
        self.n = n

    def attr(self, name, default=None):
        v = self.n.attr(name, None)
        if v is None:
            return default
        lift = {"kernel_shape": 1, "strides": 1, "dilations": 1}
        if name in lift:
            return [lift[name]] + list(v)
        if name == "pads":
            return [0, v[0], 0, v[1]]
        return v

    def __getattr__(self, name):
        return getattr(self.n, name)


@onnx_op("MaxPool", attrs=("auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "storage_order", "strides"))
def max_pool(n):
    if n.n_outputs > 1 and n.proto.output[1]:
        return _max_pool_with_indices(n)
    return _pool(n, True)


def _max_pool_with_indices(n):
    """MaxPool's values and Indices: every window gathered whole (all its taps along one axis), its max and the
    first tap holding it (onnx's scan order), mapped through a table computed at import to the flat index of
    that element in x (spatial dims row-major, or column-major for storage_order=1). A window whose values are
    all -inf may report a padding tap as -1."""
    x = n.tensor(0)
    if x.dtype not in ("float32", "float64"):
        raise n.unsupported(f"Indices of a {x.dtype} MaxPool", "float inputs")
    kernel, strides, dilations, pads, outs, extra = _pool_geometry(n, x)
    spatial = list(x.shape[2:])
    full = [(0, 0), (0, 0)] + [(lo, hi + e) for (lo, hi), e in zip(pads, extra)]
    xp = F.pad(x, full, value=-np.inf) if any(lo or hi for lo, hi in full) else x
    padded = list(xp.shape[2:])
    rank = len(spatial)
    at = np.indices(outs).reshape(rank, -1).T[:, None, :]        # (windows, 1, rank)
    tap = np.indices(kernel).reshape(rank, -1).T[None, :, :]     # (1, taps, rank), onnx's scan order
    pos = at * np.array(strides) + tap * np.array(dilations)     # (windows, taps, rank) in the padded block
    gather = np.ravel_multi_index(tuple(np.moveaxis(pos, -1, 0)), padded)
    inside = pos - np.array([lo for lo, _ in pads])
    ok = np.all((inside >= 0) & (inside < np.array(spatial)), axis=-1)
    order = "F" if n.attr("storage_order", 0) else "C"
    clipped = np.clip(inside, 0, np.array(spatial) - 1)
    source = np.where(ok, np.ravel_multi_index(tuple(np.moveaxis(clipped, -1, 0)), spatial, order=order), -1)
    windows, taps = gather.shape
    lead = tuple(xp.shape[:2])
    if not all(isinstance(d, int) for d in lead):
        raise n.unsupported("Indices with symbolic batch or channel dims", "known ones")
    flat = F.reshape(xp, lead + (int(np.prod(padded)),))
    values = F.take(flat, F.constant(gather), axis=2)            # (N, C, windows, taps)
    y = F.max(values, 3)
    first = F.argmax(values, 3)                                   # the first tap holding the max
    z = F.take(F.constant(source.reshape(-1)), F.constant(np.arange(windows, dtype=np.int64) * taps) + first, axis=0)
    channel = F.constant((np.arange(lead[0] * lead[1], dtype=np.int64) * int(np.prod(spatial))).reshape(
        lead + (1,)))
    shape = lead + tuple(outs)
    return F.reshape(y, shape), F.reshape(F.where(z < 0, z, z + channel), shape)


@onnx_op("AveragePool", attrs=("auto_pad", "ceil_mode", "count_include_pad", "dilations", "kernel_shape", "pads",
                               "strides"))
def average_pool(n):
    return _pool(n, False)


@onnx_op("GlobalAveragePool")
def global_average_pool(n):
    x = n.tensor(0)
    return F.mean(x, tuple(range(2, x.ndim)), keepdims=True)


@onnx_op("GlobalMaxPool")
def global_max_pool(n):
    x = n.tensor(0)
    return F.max(x, tuple(range(2, x.ndim)), keepdims=True)


# ----------------------------------------------------------------------------
# normalisation


def _per_channel(v, ndim):
    return F.reshape(v, (v.shape[0],) + (1,) * (ndim - 2))


@onnx_op("BatchNormalization", attrs=("epsilon", "momentum", "spatial", "training_mode", "is_test"))
def batch_norm(n):
    if n.attr("spatial", 1) != 1:
        raise n.unsupported("spatial=0", "spatial=1")
    if n.attr("training_mode", 0):
        if n.opset < 14:
            raise n.unsupported("training_mode before opset 14", "opset 14 on (outputs Y and the running stats)")
        return _batch_norm_training(n)
    if any(n.proto.output[1:]):
        raise n.unsupported("the running-statistics outputs in inference", "the normalised output Y")
    x, scale, bias, mean, var = (n.tensor(i) for i in range(5))
    eps = n.attr("epsilon", 1e-5)
    if x.ndim == 2:
        inv = scale / F.sqrt(var + eps)
        return (x - mean) * inv + bias
    inv = _per_channel(scale / F.sqrt(var + eps), x.ndim)
    return (x - _per_channel(mean, x.ndim)) * inv + _per_channel(bias, x.ndim)


def _batch_norm_training(n):
    """training_mode=1 (opset 14 on): Y normalised with the batch's statistics (the population variance), and the
    running mean and variance moved toward them by momentum, as two more outputs."""
    x, scale, bias, mean, var = (n.tensor(i) for i in range(5))
    eps, momentum = n.attr("epsilon", 1e-5), n.attr("momentum", 0.9)
    axes = (0,) + tuple(range(2, x.ndim))
    batch_mean = F.mean(x, axes)
    centred = x - _per_channel(batch_mean, x.ndim)
    batch_var = F.mean(centred * centred, axes)
    y = centred * _per_channel(scale / F.sqrt(batch_var + eps), x.ndim) + _per_channel(bias, x.ndim)
    return y, mean * momentum + batch_mean * (1 - momentum), var * momentum + batch_var * (1 - momentum)


@onnx_op("InstanceNormalization", attrs=("epsilon",))
def instance_norm(n):
    x, scale, bias = (n.tensor(i) for i in range(3))
    axes = tuple(range(2, x.ndim))
    mean = F.mean(x, axes, keepdims=True)
    d = x - mean
    var = F.mean(d * d, axes, keepdims=True)
    y = d / F.sqrt(var + n.attr("epsilon", 1e-5))
    return y * _per_channel(scale, x.ndim) + _per_channel(bias, x.ndim)


@onnx_op("LayerNormalization", attrs=("axis", "epsilon", "stash_type"))
def layer_norm(n):
    x = n.tensor(0)
    axis = n.attr("axis", -1) % x.ndim
    axes = tuple(range(axis, x.ndim))
    eps = n.attr("epsilon", 1e-5)
    # Mean and InvStdDev, ONNX's optional outputs, are computed only when the graph reads them
    mean = F.mean(x, axes, keepdims=True)
    d = x - mean
    inv = F.rsqrt(F.mean(d * d, axes, keepdims=True) + eps)
    if all(isinstance(s, int) and s > 0 for s in x.shape[axis:]):
        y = F.layer_norm(x, tuple(x.shape[axis:]), eps=eps) * n.tensor(1)  # one fused kernel
    else:
        y = d * inv * n.tensor(1)
    if n.has(2):
        y = y + n.tensor(2)
    return y, mean, inv


@onnx_op("LRN", attrs=("alpha", "beta", "bias", "size"))
def lrn(n):
    x = n.tensor(0)
    if x.ndim != 4:
        raise n.unsupported(f"a rank-{x.ndim} input", "4-d (N, C, H, W)")
    size = n.attr("size")
    alpha, beta, bias = n.attr("alpha", 1e-4), n.attr("beta", 0.75), n.attr("bias", 1.0)
    nb, c, h, w = x.shape
    sq = F.reshape(x * x, (nb, 1, c, h * w))
    lo = (size - 1) // 2
    summed = avg_pool2d(sq, (size, 1), (1, 1), ((lo, size - 1 - lo), (0, 0)), count_include_pad=True) * float(size)
    return x / F.pow(bias + (alpha / size) * F.reshape(summed, x.shape), beta)


@onnx_op("LpNormalization", attrs=("axis", "p"))
def lp_norm(n):
    x = n.tensor(0)
    axis, p = n.attr("axis", -1) % x.ndim, n.attr("p", 2)
    if p not in (1, 2):
        raise n.unsupported(f"p={p}", "1, 2")
    norm = F.sum(F.abs(x), axis, keepdims=True) if p == 1 else F.sqrt(F.sum(x * x, axis, keepdims=True))
    return x / F.where(norm == 0.0, 1.0, norm)   # a zero vector stays zero


@onnx_op("MeanVarianceNormalization", attrs=("axes",))
def mean_variance_norm(n):
    x = n.tensor(0)
    axes = tuple(a % x.ndim for a in n.attr("axes", [0, 2, 3]))
    d = x - F.mean(x, axes, keepdims=True)
    return d / F.sqrt(F.mean(d * d, axes, keepdims=True) + 1e-9)


@onnx_op("Dropout", attrs=("ratio", "seed", "is_test"))
def dropout(n):
    training = n.opset >= 12 and n.has(2) and bool(np.asarray(n.static(2)).reshape(-1)[0])
    ratio = float(np.asarray(n.static(1)).reshape(-1)[0]) if n.opset >= 12 and n.has(1) else 0.5
    if training and ratio != 0.0:
        raise n.unsupported("training_mode=True with a nonzero ratio", "inference (Dropout is the identity)")
    x = n.inputs[0] if not hasattr(n.inputs[0], "node") else n.tensor(0)
    if len(n.proto.output) > 1 and n.proto.output[1]:
        return x, np.ones(x.shape, dtype=bool) if not hasattr(x, "node") else F.broadcast_to(F.constant(True),
                                                                                           x.shape)
    return x
