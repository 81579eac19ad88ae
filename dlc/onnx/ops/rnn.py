"""ONNX recurrent layers (LSTM, GRU, RNN) onto dlc.scan: the input projection of every step is one matmul
before the loop; the loop body does the recurrent matmul and the gates. Both directions, sequence_lens
(dlc.scan's lengths: padded steps keep the state and output zeros), clip and the activations PyTorch exports."""

from __future__ import annotations

import dlc.functional as F

from ...ops.scan import scan
from . import onnx_op

RNN_ATTRS = ("activation_alpha", "activation_beta", "activations", "clip", "direction", "hidden_size", "layout")


def _activation(n, name, alpha, beta):
    table = {
        "Sigmoid": F.sigmoid, "Tanh": F.tanh, "Relu": F.relu, "Softsign": lambda x: x / (1.0 + F.abs(x)),
        "Softplus": F.softplus,
        "HardSigmoid": lambda x: F.clip(x * (0.2 if alpha is None else alpha) + (0.5 if beta is None else beta),
                                        0.0, 1.0),
        "LeakyRelu": lambda x: F.leaky_relu(x, 0.01 if alpha is None else alpha),
        "Elu": lambda x: F.elu(x, 1.0 if alpha is None else alpha),
        "Affine": lambda x: x * (1.0 if alpha is None else alpha) + (0.0 if beta is None else beta),
        "ScaledTanh": lambda x: (1.0 if alpha is None else alpha) * F.tanh(x * (1.0 if beta is None else beta)),
        "ThresholdedRelu": lambda x: F.where(x > (1.0 if alpha is None else alpha), x, 0.0),
    }
    key = next((k for k in table if k.lower() == name.lower()), None)
    if key is None:
        raise n.unsupported(f"activation {name!r}", ", ".join(table))
    return table[key]


def _activations(n, defaults, num_dir):
    names = n.attr("activations", defaults * num_dir)
    if len(names) != len(defaults) * num_dir:
        raise n.invalid(f"{len(names)} activations for {num_dir} direction(s), expected {len(defaults) * num_dir}")
    alphas, betas = list(n.attr("activation_alpha", [])), list(n.attr("activation_beta", []))
    out = []
    for name in names:
        takes = name.lower() in ("hardsigmoid", "leakyrelu", "elu", "affine", "scaledtanh", "thresholdedrelu")
        alpha = alphas.pop(0) if takes and alphas else None
        beta = betas.pop(0) if takes and betas and name.lower() in ("hardsigmoid", "affine", "scaledtanh") else None
        out.append(_activation(n, name, alpha, beta))
    k = len(defaults)
    return [out[d * k:(d + 1) * k] for d in range(num_dir)]


def _setup(n):
    """(x as (T, B, I), weights per direction, lengths, initial states, directions, hidden size)."""
    x = n.tensor(0)
    layout = n.attr("layout", 0)
    if layout:
        x = F.transpose(x, (1, 0, 2))
    direction = n.attr("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise n.unsupported(f"direction={direction!r}", "forward, reverse, bidirectional")
    dirs = ["forward", "reverse"] if direction == "bidirectional" else [direction]
    w, r = n.tensor(1), n.tensor(2)
    hidden = n.attr("hidden_size", r.shape[-1])
    b = n.tensor(3) if n.has(3) else None
    lengths = n.tensor(4) if n.has(4) else None
    if lengths is not None and lengths.dtype != "int64":
        lengths = F.cast(lengths, "int64")
    return x, layout, dirs, w, r, b, lengths, hidden


def _initial(n, i, d, batch, hidden, dtype, layout):
    if not n.has(i):
        return F.broadcast_to(F.constant(0.0, dtype), (batch, hidden))
    s = n.tensor(i)
    if layout:
        s = F.transpose(s, (1, 0, 2))
    return F.reshape(F.take_slice(s, 0, d, d + 1), (batch, hidden))


def _chunks(t, k, size, axis):
    return [F.take_slice(t, axis, j * size, (j + 1) * size) for j in range(k)]


def _pack(n, layout, ys, finals):
    """Y (T, dirs, B, H) and the final states (dirs, B, H); layout=1 puts the batch first."""
    y = F.stack(ys, axis=1)
    finals = [F.stack(f, axis=0) for f in finals]
    if layout:
        y = F.transpose(y, (2, 0, 1, 3))
        finals = [F.transpose(f, (1, 0, 2)) for f in finals]
    return [y] + finals


def _run(n, gates, step, n_states, defaults):
    """The shared driver: per direction, project x, scan `step`, collect Y and the final states."""
    x, layout, dirs, w, r, b, lengths, hidden = _setup(n)
    acts = _activations(n, defaults, len(dirs))
    clip = n.attr("clip", None)
    batch = x.shape[1]
    ys, finals = [], [[] for _ in range(n_states)]
    for d, direction in enumerate(dirs):
        wd = F.reshape(F.take_slice(w, 0, d, d + 1), w.shape[1:])
        rd = F.reshape(F.take_slice(r, 0, d, d + 1), r.shape[1:])
        xw = F.matmul(x, F.transpose(wd))   # (T, B, gates*H)
        rb = None
        if b is not None:
            bd = F.reshape(F.take_slice(b, 0, d, d + 1), b.shape[1:])
            wb, rb = _chunks(bd, 2, gates * hidden, 0)
            xw = xw + wb
        states = [_initial(n, 5 + k, d, batch, hidden, x.dtype, layout) for k in range(n_states)]
        extra = {"p": (F.reshape(F.take_slice(n.tensor(7), 0, d, d + 1), (3 * hidden,))
                       if n.op == "LSTM" and n.has(7) else None)}

        def body(carry, xt, rd=rd, rb=rb, act=acts[d], extra=extra):
            new = step(n, list(carry), xt, rd, rb, act, clip, hidden, extra)
            return tuple(new), new[0]

        final, y = scan(body, tuple(states), xw, reverse=direction == "reverse", lengths=lengths)
        ys.append(y)
        for k in range(n_states):
            finals[k].append(final[k])
    return _pack(n, layout, ys, finals)


def _clip(g, clip):
    return g if clip is None else F.clip(g, -clip, clip)


def _lstm_step(n, carry, xt, rd, rb, act, clip, hidden, extra):
    h, c = carry
    f, g, hact = act
    z = xt + F.matmul(h, F.transpose(rd))
    if rb is not None:
        z = z + rb
    i_, o_, f_, c_ = _chunks(z, 4, hidden, 1)
    p = extra["p"]
    pi, po, pf = _chunks(p, 3, hidden, 0) if p is not None else (None, None, None)
    if p is not None:
        i_, f_ = i_ + pi * c, f_ + pf * c
    it, ft, ct = f(_clip(i_, clip)), f(_clip(f_, clip)), g(_clip(c_, clip))
    if n.attr("input_forget", 0):
        ft = 1.0 - it
    c_new = ft * c + it * ct
    if p is not None:
        o_ = o_ + po * c_new
    h_new = f(_clip(o_, clip)) * hact(c_new)
    return [h_new, c_new]


def _gru_step(n, carry, xt, rd, rb, act, clip, hidden, extra):
    (h,) = carry
    f, g = act
    rz, rr, rh = _chunks(rd, 3, hidden, 0)
    bz, br, bh = _chunks(rb, 3, hidden, 0) if rb is not None else (0.0, 0.0, 0.0)
    xz, xr, xh = _chunks(xt, 3, hidden, 1)
    zt = f(_clip(xz + F.matmul(h, F.transpose(rz)) + bz, clip))
    rt = f(_clip(xr + F.matmul(h, F.transpose(rr)) + br, clip))
    if n.attr("linear_before_reset", 0):
        ht = g(_clip(xh + rt * (F.matmul(h, F.transpose(rh)) + bh), clip))
    else:
        ht = g(_clip(xh + F.matmul(rt * h, F.transpose(rh)) + bh, clip))
    return [(1.0 - zt) * ht + zt * h]


def _rnn_step(n, carry, xt, rd, rb, act, clip, hidden, extra):
    (h,) = carry
    z = xt + F.matmul(h, F.transpose(rd))
    if rb is not None:
        z = z + rb
    return [act[0](_clip(z, clip))]


@onnx_op("LSTM", attrs=RNN_ATTRS + ("input_forget",))
def lstm(n):
    return _run(n, 4, _lstm_step, 2, ["Sigmoid", "Tanh", "Tanh"])


@onnx_op("GRU", attrs=RNN_ATTRS + ("linear_before_reset",))
def gru(n):
    return _run(n, 3, _gru_step, 1, ["Sigmoid", "Tanh"])


@onnx_op("RNN", attrs=RNN_ATTRS)
def rnn(n):
    return _run(n, 1, _rnn_step, 1, ["Tanh"])
