"""Recurrent layers on dlc.scan: RNN, LSTM and GRU with PyTorch's equations, gate order and parameter names.

Per layer and direction, with x_t the step's input, h and c the state, and
`W x` meaning x @ W.T:

    RNN:   h' = act(W_ih x_t + b_ih + W_hh h + b_hh)              act: tanh or relu
    LSTM:  i, f, g, o = split(W_ih x_t + b_ih + W_hh h + b_hh, 4)
           c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
           h' = sigmoid(o) * tanh(c')
    GRU:   r, z, n_x = split(W_ih x_t + b_ih, 3);  r_h, z_h, n_h = split(W_hh h + b_hh, 3)
           r = sigmoid(r + r_h);  z = sigmoid(z + z_h)
           n = tanh(n_x + r * n_h)                                 (r applied to W_hn h + b_hn)
           h' = (1 - z) * n + z * h

Parameters are named as in torch.nn: weight_ih_l{k} (G*H, input size of
layer k), weight_hh_l{k} (G*H, H), bias_ih_l{k} and bias_hh_l{k} (G*H,), with
the suffix "_reverse" for the backward direction of a bidirectional layer,
G = 1 (RNN), 4 (LSTM, rows i f g o), 3 (GRU, rows r z n). Weights therefore
move between the two with state dicts:

    lstm.load_state_dict({k: v.detach().numpy() for k, v in torch_lstm.state_dict().items()})

The input projection of every time step is one matrix product outside the
loop ((T*B, I) @ W_ih.T); only h @ W_hh.T runs inside the scan body.
Sequences are (T, B, features), or (B, T, features) with batch_first. A
`lengths` vector (B,) marks padded steps: there the state is carried over
unchanged and the output is zero, so the final state is the state at each
sequence's own end (the reverse direction starts at it), as with PyTorch's
packed sequences. Dropout between layers is not offered.
"""

from __future__ import annotations

import math

import dlc.functional as F
import dlc.nn.init as init

from ..errors import ShapeError
from ..graph import dim_mul, shape_str, user_location
from ..ops.scan import scan
from .module import Module, name_scope

GATES = {"RNN": 1, "LSTM": 4, "GRU": 3}
ACTIVATIONS = {"tanh": F.tanh, "relu": F.relu}


# ----------------------------------------------------------------------------
# the math, as functions of tensors


def project_inputs(x, weight_ih, bias=None):
    """W_ih x_t (+ bias) for every step at once: (T, B, I) -> (T, B, G*H), one matrix product."""
    steps, batch, features = x.shape
    p = F.matmul(F.reshape(x, (dim_mul(steps, batch), features)), F.transpose(weight_ih))
    if bias is not None:
        p = p + bias
    return F.reshape(p, (steps, batch, weight_ih.shape[0]))


def rnn_cell(xp_t, h, w_hh_t, activation="tanh"):
    """One RNN step from the projected input xp_t = W_ih x_t + b_ih + b_hh; w_hh_t is W_hh.T."""
    return ACTIVATIONS[activation](xp_t + F.matmul(h, w_hh_t))


def lstm_cell(xp_t, state, w_hh_t):
    """One LSTM step from xp_t = W_ih x_t + b_ih + b_hh: (h, c) -> (h', c')."""
    h, c = state
    i, f, g, o = F.split(xp_t + F.matmul(h, w_hh_t), 4, axis=1)
    c = F.sigmoid(f) * c + F.sigmoid(i) * F.tanh(g)
    return F.sigmoid(o) * F.tanh(c), c


def gru_cell(xp_t, h, w_hh_t, b_hh=None):
    """One GRU step from xp_t = W_ih x_t + b_ih; b_hh stays inside since r scales W_hn h + b_hn."""
    hp = F.matmul(h, w_hh_t)
    if b_hh is not None:
        hp = hp + b_hh
    xr, xz, xn = F.split(xp_t, 3, axis=1)
    hr, hz, hn = F.split(hp, 3, axis=1)
    r = F.sigmoid(xr + hr)
    z = F.sigmoid(xz + hz)
    n = F.tanh(xn + r * hn)
    return n + z * (h - n)


def recurrent_layer(mode, x, state, weight_ih, weight_hh, bias_ih=None, bias_hh=None, reverse=False,
                    lengths=None, nonlinearity="tanh"):
    """One layer in one direction over x (T, B, I): returns (outputs (T, B, H), final state).

    mode is "RNN", "LSTM" or "GRU"; state is h (B, H), or (h, c) for an LSTM.
    """
    both = bias_ih + bias_hh if bias_ih is not None else None
    xp = project_inputs(x, weight_ih, bias_ih if mode == "GRU" else both)
    w_hh_t = F.transpose(weight_hh)  # computed once, outside the loop

    if mode == "LSTM":
        def body(s, xp_t):
            h, c = lstm_cell(xp_t, s, w_hh_t)
            return (h, c), h
    elif mode == "GRU":
        def body(h, xp_t):
            h = gru_cell(xp_t, h, w_hh_t, bias_hh)
            return h, h
    else:
        def body(h, xp_t):
            h = rnn_cell(xp_t, h, w_hh_t, nonlinearity)
            return h, h
    final, ys = scan(body, state, xp, reverse=reverse, lengths=lengths)
    return ys, final


# ----------------------------------------------------------------------------
# the modules


class _Recurrent(Module):
    """The layers and directions of a multi-layer, optionally bidirectional recurrent net."""

    mode = "RNN"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, bidirectional: bool = False, nonlinearity: str = "tanh",
                 rng=None, dtype="float32"):
        super().__init__()
        if nonlinearity not in ACTIVATIONS:
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        if num_layers < 1 or hidden_size < 1 or input_size < 1:
            raise ValueError(f"{type(self).__name__} needs positive sizes, got input_size={input_size}, "
                             f"hidden_size={hidden_size}, num_layers={num_layers}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.bidirectional = bias, batch_first, bidirectional
        self.nonlinearity = nonlinearity
        gates = GATES[self.mode] * hidden_size
        bound = 1.0 / math.sqrt(hidden_size)  # PyTorch's U(-1/sqrt(H), 1/sqrt(H)) for every weight
        for layer in range(num_layers):
            size_in = input_size if layer == 0 else hidden_size * self.num_directions
            for suffix in self._suffixes():
                shapes = {"weight_ih": (gates, size_in), "weight_hh": (gates, hidden_size)}
                if bias:
                    shapes.update(bias_ih=(gates,), bias_hh=(gates,))
                for name, shape in shapes.items():
                    self.add_param(f"{name}_l{layer}{suffix}", init.uniform(shape, -bound, bound, rng), dtype=dtype)

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _suffixes(self):
        return ("", "_reverse") if self.bidirectional else ("",)

    def _weights(self, layer: int, suffix: str):
        """(weight_ih, weight_hh, bias_ih, bias_hh) of one layer and direction; biases None without bias."""
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        return tuple(getattr(self, f"{name}_l{layer}{suffix}", None) for name in names)

    def forward(self, x, state=None, lengths=None):
        """x: (T, B, input_size), or (B, T, input_size) with batch_first. state: h0, or (h0, c0) for an
        LSTM, each (num_layers * num_directions, B, hidden_size), zeros if None. lengths: int (B,).

        Returns (output, h_n), or (output, (h_n, c_n)) for an LSTM; output is (T, B, D * hidden_size)
        (batch first with batch_first) and h_n, c_n are (num_layers * D, B, hidden_size).
        """
        x = self._check_input(x)
        if self.batch_first:
            x = F.transpose(x, (1, 0, 2))
        batch = x.shape[1]
        states = self._initial_states(state, batch, x.dtype)
        finals = []
        for layer in range(self.num_layers):
            outputs = []
            for d, suffix in enumerate(self._suffixes()):
                k = layer * self.num_directions + d
                s0 = tuple(s[k] for s in states) if self.mode == "LSTM" else states[0][k]
                with name_scope(f"l{layer}{suffix}"):
                    ys, final = recurrent_layer(self.mode, x, s0, *self._weights(layer, suffix), reverse=d == 1,
                                                lengths=lengths, nonlinearity=self.nonlinearity)
                outputs.append(ys)
                finals.append(final if self.mode == "LSTM" else (final,))
            x = F.concat(outputs, axis=2)
        if self.batch_first:
            x = F.transpose(x, (1, 0, 2))
        stacked = [F.stack([f[i] for f in finals]) for i in range(len(states))]
        return x, (tuple(stacked) if self.mode == "LSTM" else stacked[0])

    def _check_input(self, x):
        where = f" at {user_location()}" if user_location() else ""
        if x.ndim != 3 or x.shape[2] != self.input_size:
            layout = "(B, T, features)" if self.batch_first else "(T, B, features)"
            raise ShapeError(f"{type(self).__name__}{where}: expected input {layout} with {self.input_size} "
                             f"features, got {shape_str(x.shape)}")
        return x

    def _initial_states(self, state, batch, dtype) -> list:
        count = self.num_layers * self.num_directions
        shape = (count, batch, self.hidden_size)
        n = 2 if self.mode == "LSTM" else 1
        if state is None:
            zeros = F.broadcast_to(F.constant(0.0, dtype=dtype), shape)
            return [zeros] * n
        states = list(state) if self.mode == "LSTM" else [state]
        if len(states) != n:
            raise ShapeError(f"{type(self).__name__}: the initial state is (h0, c0) for an LSTM, h0 otherwise")
        for s in states:
            if tuple(s.shape) != shape:
                raise ShapeError(f"{type(self).__name__}: initial state must be {shape_str(shape)} "
                                 f"(num_layers * num_directions, batch, hidden_size), got {shape_str(s.shape)}")
        return states

    def extra_repr(self) -> str:
        extra = "".join(f", {k}={getattr(self, k)}" for k, default in
                        (("num_layers", 1), ("bias", True), ("batch_first", False), ("bidirectional", False))
                        if getattr(self, k) != default)
        return f"{self.input_size}, {self.hidden_size}{extra}"


class RNN(_Recurrent):
    """Elman RNN, h' = tanh or relu(W_ih x_t + b_ih + W_hh h + b_hh); see the module docstring."""

    mode = "RNN"


class LSTM(_Recurrent):
    """Long short-term memory, gates i f g o as in torch.nn.LSTM; forward returns (output, (h_n, c_n))."""

    mode = "LSTM"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, bidirectional: bool = False, rng=None, dtype="float32"):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, bidirectional, "tanh", rng, dtype)


class GRU(_Recurrent):
    """Gated recurrent unit, gates r z n as in torch.nn.GRU; forward returns (output, h_n)."""

    mode = "GRU"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, bidirectional: bool = False, rng=None, dtype="float32"):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, bidirectional, "tanh", rng, dtype)
