"""nn.RNN, nn.LSTM, nn.GRU: the documented equations in numpy, PyTorch with copied weights, finite differences."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from helpers import check_grad

import dlc
from dlc.errors import ShapeError
from dlc.graph import Graph
from dlc.nn.rnn import GRU, LSTM, RNN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = {"RNN": RNN, "LSTM": LSTM, "GRU": GRU}


# ----------------------------------------------------------------------------
# an independent numpy implementation of the equations in dlc/nn/rnn.py


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _numpy_direction(mode, x, h, c, w_ih, w_hh, b_ih, b_hh, reverse, lengths, act=np.tanh):
    T, B, _ = x.shape
    out = np.zeros((T, B, h.shape[1]))
    for t in (reversed(range(T)) if reverse else range(T)):
        gx, gh = x[t] @ w_ih.T + b_ih, h @ w_hh.T + b_hh
        if mode == "LSTM":
            i, f, g, o = np.split(gx + gh, 4, axis=1)
            c_new = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
            h_new = _sigmoid(o) * np.tanh(c_new)
        elif mode == "GRU":
            (xr, xz, xn), (hr, hz, hn) = np.split(gx, 3, axis=1), np.split(gh, 3, axis=1)
            r, z = _sigmoid(xr + hr), _sigmoid(xz + hz)
            n = np.tanh(xn + r * hn)
            h_new, c_new = (1 - z) * n + z * h, c
        else:
            h_new, c_new = act(gx + gh), c
        live = (t < lengths)[:, None]
        h, c = np.where(live, h_new, h), np.where(live, c_new, c)
        out[t] = np.where(live, h, 0.0)
    return out, h, c


def numpy_net(mode, params, x, num_layers, bidirectional, h0, c0, lengths=None, act=np.tanh):
    """(output (T, B, D*H), h_n, c_n) from parameters named as in PyTorch."""
    lengths = np.full(x.shape[1], x.shape[0]) if lengths is None else lengths
    suffixes = ("", "_reverse") if bidirectional else ("",)
    h_n, c_n = [], []
    for layer in range(num_layers):
        outs = []
        for d, s in enumerate(suffixes):
            k = layer * len(suffixes) + d
            w = [params[f"{name}_l{layer}{s}"] for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            out, h, c = _numpy_direction(mode, x, h0[k], c0[k], *w, d == 1, lengths, act)
            outs.append(out), h_n.append(h), c_n.append(c)
        x = np.concatenate(outs, axis=2)
    return x, np.stack(h_n), np.stack(c_n)


def _run_dlc(model, X, h0=None, c0=None, lengths=None):
    x = dlc.input("x", ("B", "T", X.shape[2]) if model.batch_first else ("T", "B", X.shape[2]), "float64")
    args, feeds = [x], [X]
    state = None
    if h0 is not None:
        shape = (h0.shape[0], "B", h0.shape[2])
        hs = dlc.input("h0", shape, "float64")
        state = (hs, dlc.input("c0", shape, "float64")) if isinstance(model, LSTM) else hs
        args += [hs] + ([state[1]] if isinstance(model, LSTM) else [])
        feeds += [h0] + ([c0] if isinstance(model, LSTM) else [])
    if lengths is not None:
        args.append(dlc.input("lengths", ("B",), "int64"))
        feeds.append(lengths)
    out, st = model(x, state, lengths=args[-1] if lengths is not None else None)
    outs = [out] + (list(st) if isinstance(model, LSTM) else [st])
    return dlc.compile(outs, inputs=args)(*feeds)


@pytest.mark.parametrize("mode,layers,bidirectional,batch_first", [
    ("LSTM", 1, False, False), ("GRU", 1, False, True), ("RNN", 2, True, False),
    ("LSTM", 2, True, True), ("GRU", 2, True, False)])
def test_forward_matches_the_documented_equations(rng, mode, layers, bidirectional, batch_first):
    model = LAYERS[mode](3, 4, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first,
                         dtype="float64")
    X = rng.normal(size=(5, 2, 3))
    D = 2 if bidirectional else 1
    h0, c0 = rng.normal(size=(layers * D, 2, 4)), rng.normal(size=(layers * D, 2, 4))
    got = _run_dlc(model, X.transpose(1, 0, 2) if batch_first else X, h0, c0)
    want_out, want_h, want_c = numpy_net(mode, model.state_dict(), X, layers, bidirectional, h0, c0)
    out = got[0].transpose(1, 0, 2) if batch_first else got[0]
    assert out.shape == (5, 2, D * 4)
    np.testing.assert_allclose(out, want_out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got[1], want_h, rtol=1e-10, atol=1e-12)
    if mode == "LSTM":
        np.testing.assert_allclose(got[2], want_c, rtol=1e-10, atol=1e-12)


def test_relu_rnn_and_padded_batch_match_the_equations(rng):
    model = RNN(3, 4, nonlinearity="relu", bidirectional=True, dtype="float64")
    X, h0, lengths = rng.normal(size=(5, 3, 3)), rng.normal(size=(2, 3, 4)), np.array([5, 2, 3])
    out, h_n = _run_dlc(model, X, h0, None, lengths)
    want_out, want_h, _ = numpy_net("RNN", model.state_dict(), X, 1, True, h0, np.zeros_like(h0), lengths,
                                    act=lambda v: np.maximum(v, 0))
    np.testing.assert_allclose(out, want_out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h_n, want_h, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------
# PyTorch with copied weights


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_matches_torch_with_copied_weights(rng, mode):
    torch = pytest.importorskip("torch")
    ref = getattr(torch.nn, mode)(3, 5, num_layers=2, bidirectional=True, batch_first=True).double()
    model = LAYERS[mode](3, 5, num_layers=2, bidirectional=True, batch_first=True, dtype="float64")
    assert [k for k, _ in model.named_parameters()] == list(ref.state_dict())
    model.load_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    X, h0, c0 = rng.normal(size=(3, 6, 3)), rng.normal(size=(4, 3, 5)), rng.normal(size=(4, 3, 5))
    got = _run_dlc(model, X, h0, c0)
    with torch.no_grad():
        out, st = ref(torch.tensor(X), (torch.tensor(h0), torch.tensor(c0)) if mode == "LSTM" else torch.tensor(h0))
    want = [out] + (list(st) if mode == "LSTM" else [st])
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_padded_batch_matches_torch_packed_sequences(rng, mode):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    ref = getattr(torch.nn, mode)(3, 4, bidirectional=True).double()
    model = LAYERS[mode](3, 4, bidirectional=True, dtype="float64")
    model.load_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    X, lengths = rng.normal(size=(6, 3, 3)), np.array([6, 2, 4])
    got = _run_dlc(model, X, lengths=lengths)
    with torch.no_grad():
        packed, st = ref(pack_padded_sequence(torch.tensor(X), torch.tensor(lengths), enforce_sorted=False))
        out, _ = pad_packed_sequence(packed, total_length=6)
    want = [out] + (list(st) if mode == "LSTM" else [st])
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------
# gradients against central differences (float64)


@pytest.mark.parametrize("mode,bidirectional", [("RNN", False), ("LSTM", False), ("GRU", True)])
def test_gradients_of_inputs_state_and_parameters(rng, mode, bidirectional):
    model = LAYERS[mode](2, 3, bidirectional=bidirectional, dtype="float64")
    D = 2 if bidirectional else 1

    def build(x, h0):
        state = (h0, h0 * 0.5) if mode == "LSTM" else h0
        out, st = model(x, state)
        return dlc.concat([dlc.reshape(out, (-1,)), dlc.reshape(st[0] if mode == "LSTM" else st, (-1,))], 0)

    check_grad(build, [rng.normal(size=(3, 2, 2)), rng.normal(size=(D, 2, 3))], params=True, max_entries=12)


def test_gradient_of_a_padded_two_layer_lstm(rng):
    model = LSTM(2, 3, num_layers=2, dtype="float64")
    lengths = dlc.constant(np.array([3, 1]))

    def build(x):
        out, (h_n, c_n) = model(x, lengths=lengths)
        return dlc.sum(out * out) + dlc.sum(h_n * c_n)

    grads = check_grad(build, [rng.normal(size=(3, 2, 2))], params=True, max_entries=8)
    assert np.all(grads["x0"][1:, 1] == 0)  # padded steps get no gradient


def test_one_compiled_training_gradient_serves_two_sequence_lengths(rng):
    model = GRU(2, 3, dtype="float64")
    x = dlc.input("x", ("T", "B", 2), "float64")
    out, h_n = model(x)
    loss = dlc.sum(out * out) + dlc.sum(h_n)
    w = model.weight_hh_l0
    grad_fn = dlc.compile([loss] + dlc.grad(loss, [x, w]), inputs=[x])
    loss_fn = dlc.compile(loss, inputs=[x])
    W = dlc.default_store()[w.node.attr("name")]
    for T in (2, 5):
        X = rng.normal(size=(T, 2, 2))
        _, g_x, g_w = grad_fn(X)
        assert g_x.shape == (T, 2, 2)
        for arr, analytic in ((X, g_x), (W, g_w)):
            flat = arr.reshape(-1)
            for k in rng.choice(arr.size, 6, replace=False):
                old = flat[k]
                flat[k] = old + 1e-6
                hi = float(loss_fn(X))
                flat[k] = old - 1e-6
                numeric = (hi - float(loss_fn(X))) / 2e-6
                flat[k] = old
                np.testing.assert_allclose(analytic.reshape(-1)[k], numeric, rtol=1e-5, atol=1e-7)


def test_cpu_target_matches_the_reference(rng):
    model = GRU(3, 4, bidirectional=True, dtype="float64")
    x, lengths = dlc.input("x", ("T", "B", 3), "float64"), dlc.input("lengths", ("B",), "int64")
    out, h_n = model(x, lengths=lengths)
    loss = dlc.sum(out * out) + dlc.sum(h_n)
    outputs = [loss] + dlc.grad(loss, [x] + model.parameters())
    X, L = rng.normal(size=(5, 2, 3)), np.array([5, 3])
    inputs = [x, lengths]
    for want, got in zip(dlc.compile(outputs, inputs)(X, L), dlc.compile(outputs, inputs, target="cpu")(X, L)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------
# the graph


def test_graph_size_does_not_grow_with_the_sequence_length():
    model = LSTM(4, 8)

    def size(T):
        x = dlc.input("x", (T, 2, 4))
        out, (h, c) = model(x)
        loss = dlc.sum(out) + dlc.sum(h * c)
        return len(Graph([loss.node] + [g.node for g in dlc.grad(loss, model.parameters())]))

    assert size(10) == size(1000)


def test_input_projection_is_one_matrix_product_outside_the_loop():
    model = LSTM(4, 8)
    out, _ = model(dlc.input("x", ("T", "B", 4)))
    outer = Graph([out.node])
    (scan,) = [n for n in outer.nodes if n.op == "scan"]
    (projection,) = [n for n in outer.nodes if n.op == "matmul"]
    assert projection.inputs[0].shape == ("B*T", 4)
    assert [n.op for n in scan.attr("body").graph.nodes].count("matmul") == 1  # h @ W_hh.T only


def test_parameter_names_and_shapes_follow_pytorch():
    model = GRU(3, 4, num_layers=2, bidirectional=True)
    shapes = {k: tuple(t.shape) for k, t in model.named_parameters()}
    assert shapes["weight_ih_l0"] == (12, 3) and shapes["weight_ih_l1_reverse"] == (12, 8)
    assert shapes["weight_hh_l1"] == (12, 4) and shapes["bias_hh_l0_reverse"] == (12,)
    assert len(shapes) == 16 and len(LSTM(3, 4, bias=False).named_parameters()) == 2


def test_bad_input_and_state_are_reported():
    model = LSTM(3, 4)
    with pytest.raises(ShapeError, match=r"expected input \(T, B, features\) with 3 features, got \(5, 2, 7\)"):
        model(dlc.input("x", (5, 2, 7)))
    with pytest.raises(ShapeError, match=r"initial state must be \(1, 2, 4\)"):
        model(dlc.input("x", (5, 2, 3)), (dlc.input("h", (2, 4)), dlc.input("c", (2, 4))))
    with pytest.raises(ValueError, match="nonlinearity"):
        RNN(3, 4, nonlinearity="sigmoid")


# ----------------------------------------------------------------------------
# the examples, shortened


def _run_example(*args):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", DLC_TARGET="reference")
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_lstm_digits_example_learns():
    out = _run_example("examples/lstm_digits.py", "--epochs", "3", "--no-progress")
    accuracy = float(re.search(r"test accuracy ([\d.]+)", out).group(1))
    assert accuracy >= 0.75, out


def test_gru_charlm_example_beats_the_unigram_entropy():
    out = _run_example("examples/gru_charlm.py", "--epochs", "1", "--steps-per-epoch", "60", "--hidden", "64",
                       "--seq-len", "32", "--samples", "40")
    unigram, val = map(float, re.search(r"unigram entropy of the text ([\d.]+) bits/char; validation ([\d.]+)",
                                        out).groups())
    assert val < unigram - 0.5, out
