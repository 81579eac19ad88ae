"""scan: forward against plain numpy loops, gradients against central differences, the node representation."""

import numpy as np
import pytest
from helpers import check_grad

import dlc
from dlc.errors import GradientError, ShapeError
from dlc.graph import TUPLE, Graph
from dlc.ops.scan import Body


def _tanh_rnn(w):
    def body(h, x):
        h = dlc.tanh(x + h @ w)
        return h, h * h
    return body


def _numpy_rnn(xs, h, w, reverse=False):
    ys = np.zeros_like(xs)
    for t in (reversed(range(len(xs))) if reverse else range(len(xs))):
        h = np.tanh(xs[t] + h @ w)
        ys[t] = h * h
    return h, ys


@pytest.mark.parametrize("reverse", [False, True])
def test_forward_matches_a_numpy_loop(rng, reverse):
    X, H, W = rng.normal(size=(5, 2, 3)), rng.normal(size=(2, 3)), rng.normal(size=(3, 3)) * 0.5
    xs, h0 = dlc.input("xs", ("T", "B", 3), "float64"), dlc.input("h0", ("B", 3), "float64")
    w = dlc.param(W, dtype="float64")
    h_final, ys = dlc.scan(_tanh_rnn(w), h0, xs, reverse=reverse)
    assert h_final.shape == ("B", 3) and ys.shape == ("T", "B", 3)
    got_h, got_ys = dlc.compile([h_final, ys], inputs=[xs, h0])(X, H)
    want_h, want_ys = _numpy_rnn(X, H, W, reverse)
    np.testing.assert_allclose(got_h, want_h, rtol=1e-12)
    np.testing.assert_allclose(got_ys, want_ys, rtol=1e-12)


def test_pytree_carry_and_outputs_and_zero_length(rng):
    """Carry and y may be nested tuples/lists; an int carry counts steps; T = 0 returns the initial carry."""
    xs = dlc.input("xs", ("T", 2), "float64")

    def body(carry, x):
        (total, count), [biggest] = carry
        new = ((total + x, count + 1), [dlc.maximum(biggest, x)])
        return new, (x * 2.0, [total])

    init = ((dlc.constant(np.zeros(2), "float64"), dlc.constant(np.array(0))),
            [dlc.constant(np.full(2, -np.inf), "float64")])
    ((total, count), [biggest]), (doubled, [running]) = dlc.scan(body, init, xs)
    fn = dlc.compile([total, count, biggest, doubled, running])
    X = rng.normal(size=(4, 2))
    t, c, b, d, r = fn(X)
    np.testing.assert_allclose(t, X.sum(0))
    assert c == 4 and c.dtype == np.int64
    np.testing.assert_allclose(b, X.max(0))
    np.testing.assert_allclose(d, 2 * X)
    np.testing.assert_allclose(r, np.cumsum(X, 0) - X)
    t, c, b, d, r = fn(np.zeros((0, 2)))
    assert c == 0 and d.shape == (0, 2) and np.all(b == -np.inf)


def test_scan_without_xs_runs_length_steps():
    x0 = dlc.input("x0", (3,), "float64")
    final, ys = dlc.scan(lambda c, _: (c * 2.0, c), x0, length=4)
    got_final, got_ys = dlc.compile([final, ys])(np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(got_final, [16.0, 32.0, 48.0])
    np.testing.assert_allclose(got_ys[:, 0], [1, 2, 4, 8])


def test_symbols_that_only_the_body_separates_are_bound_from_the_outer_call():
    """A carry shaped (B*T,) that the body reshapes to (B, T): the loop's shape lists B and T for the executor."""
    x = dlc.input("x", ("B", "T"), "float64")

    def body(c, _):
        return c * 2.0, dlc.sum(dlc.reshape(c, ("B", "T")), axis=1)

    final, ys = dlc.scan(body, dlc.reshape(x, (-1,)), length=3)
    assert final.node.inputs[0].shape == ("B", "T")
    X = np.arange(6.0).reshape(2, 3)
    got_final, got_ys = dlc.compile([final, ys])(X)
    np.testing.assert_allclose(got_final, 8 * X.reshape(-1))
    np.testing.assert_allclose(got_ys, [X.sum(1), 2 * X.sum(1), 4 * X.sum(1)])


def test_masked_steps_keep_the_carry_and_output_zeros(rng):
    X, H, W = rng.normal(size=(5, 3, 2)), rng.normal(size=(3, 2)), rng.normal(size=(2, 2))
    lengths = np.array([5, 2, 0])
    for reverse in (False, True):
        xs, h0 = dlc.input("xs", ("T", "B", 2), "float64"), dlc.input("h0", ("B", 2), "float64")
        lens = dlc.input("lengths", ("B",), "int64")
        w = dlc.constant(W, "float64")
        h_final, ys = dlc.scan(_tanh_rnn(w), h0, xs, reverse=reverse, lengths=lens)
        got_h, got_ys = dlc.compile([h_final, ys], inputs=[xs, h0, lens])(X, H, lengths)
        for b, n in enumerate(lengths):
            want_h, want_ys = _numpy_rnn(X[:n, b], H[b], W, reverse)
            np.testing.assert_allclose(got_h[b], want_h, rtol=1e-12)
            np.testing.assert_allclose(got_ys[:n, b], want_ys, rtol=1e-12)
            assert np.all(got_ys[n:, b] == 0)


# ----------------------------------------------------------------------------
# gradients


@pytest.mark.parametrize("reverse", [False, True])
def test_gradient_to_xs_initial_carry_and_closed_over_values(rng, reverse):
    def build(xs, h0, w, b):
        def body(h, x):
            h = dlc.tanh(x @ w + h + b)  # w and b are closed over: inputs of the scan node
            return h, dlc.sigmoid(h)
        h_final, ys = dlc.scan(body, h0, xs, reverse=reverse)
        return dlc.sum(ys * ys) + dlc.sum(h_final)

    check_grad(build, [rng.normal(size=(4, 2, 3)), rng.normal(size=(2, 3)), rng.normal(size=(3, 3)) * 0.5,
                       rng.normal(size=(3,))])


def test_gradient_through_two_carries_one_only_read_at_the_end(rng):
    """An LSTM-like body: two carries, the output is only the final first carry (no gradient reaches ys)."""
    def build(xs, w):
        def body(carry, x):
            h, c = carry
            c = c * dlc.sigmoid(x) + dlc.tanh(h @ w)
            return (dlc.tanh(c), c), None
        (h, c), _ = dlc.scan(body, (xs[0] * 0.0, xs[0]), xs)
        return h

    check_grad(build, [rng.normal(size=(3, 2, 2)), rng.normal(size=(2, 2))])


def test_gradient_of_a_padded_batch(rng):
    lengths = dlc.constant(np.array([4, 1, 3]))

    def build(xs, h0, w):
        h_final, ys = dlc.scan(_tanh_rnn(w), h0, xs, lengths=lengths)
        return dlc.concat([h_final, ys[2]], axis=0)

    grads = check_grad(build, [rng.normal(size=(4, 3, 2)), rng.normal(size=(3, 2)), rng.normal(size=(2, 2))])
    # steps past a sequence's end touch nothing
    assert np.all(grads["x0"][1:, 1] == 0) and np.all(grads["x0"][3:, 2] == 0)


def test_gradient_of_a_nested_scan(rng):
    def build(xs, w):
        def outer(h, row):  # row: (K, 2), scanned again inside
            inner_h, _ = dlc.scan(lambda g, v: (dlc.tanh(g * w + v + h), None), h, row)
            return inner_h, inner_h
        h, ys = dlc.scan(outer, xs[0, 0] * 0.0, xs)
        return dlc.sum(ys) + dlc.sum(h * h)

    check_grad(build, [rng.normal(size=(3, 2, 2)), rng.normal(size=(2,))])


def test_one_compiled_gradient_serves_two_sequence_lengths(rng):
    xs, h0 = dlc.input("xs", ("T", "B", 3), "float64"), dlc.input("h0", ("B", 3), "float64")
    W = rng.normal(size=(3, 3)) * 0.5
    w = dlc.param(W, name="w", dtype="float64")
    h_final, ys = dlc.scan(_tanh_rnn(w), h0, xs)
    loss = dlc.sum(ys) + dlc.sum(h_final * h_final)
    fn = dlc.compile([loss] + dlc.grad(loss, [xs, w]), inputs=[xs, h0])
    loss_only = dlc.compile(loss, inputs=[xs, h0])
    store = dlc.default_store()
    for T in (2, 5):
        X, H = rng.normal(size=(T, 2, 3)), rng.normal(size=(2, 3))
        _, g_xs, g_w = fn(X, H)
        assert g_xs.shape == (T, 2, 3)
        for arr, analytic in ((X, g_xs), (store["w"], g_w)):
            flat, numeric = arr.reshape(-1), np.zeros(arr.size)
            for k in range(arr.size):
                old = flat[k]
                flat[k] = old + 1e-6
                hi = float(loss_only(X, H))
                flat[k] = old - 1e-6
                numeric[k] = (hi - float(loss_only(X, H))) / 2e-6
                flat[k] = old
            np.testing.assert_allclose(analytic.reshape(-1), numeric, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------
# representation and errors


def test_the_body_is_traced_once_whatever_the_length():
    w = dlc.param(np.eye(4), dtype="float64")

    def graph_size(T):
        xs = dlc.input("xs", (T, 2, 4), "float64")
        h, ys = dlc.scan(_tanh_rnn(w), xs[0], xs)
        loss = dlc.sum(ys) + dlc.sum(h)
        return len(Graph([loss.node] + [g.node for g in dlc.grad(loss, [xs, w])]))

    assert graph_size(10) == graph_size(1000)


def test_node_representation():
    xs, h0 = dlc.input("xs", ("T", "B", 3)), dlc.input("h0", ("B", 3))
    w = dlc.param(np.eye(3))
    h_final, ys = dlc.scan(_tanh_rnn(w), h0, xs)
    node = h_final.node.inputs[0]
    assert node.op == "scan" and node.dtype == TUPLE and node.shape == ("B", "T")  # the loop's symbolic dims
    assert ys.node.op == "scan_output" and ys.node.attr("index") == 1 and ys.node.inputs[0] is node
    body = node.attr("body")
    assert isinstance(body, Body) and node.attr("length") == "T" and node.attr("reverse") is False
    # the closed-over weight is an input of the scan node, a placeholder inside the body
    assert node.inputs[2] is w.node and len(body.captured_in) == 1
    assert {n.op for n in body.graph.nodes if not n.inputs} <= {"input", "const"}
    assert all(p.op == "input" for p in body.placeholders)
    assert body.x_in[0].shape == ("B", 3) and body.step_in.dtype == "int64"


def test_errors_name_what_is_wrong():
    xs = dlc.input("xs", (4, 2), "float64")
    with pytest.raises(ShapeError, match="carry leaf 0 enters the step as float64\\(2,\\) but leaves it as "
                                         "float64\\(1, 2\\)"):
        dlc.scan(lambda c, x: (dlc.reshape(c + x, (1, 2)), x), xs[0], xs)
    with pytest.raises(ShapeError, match="structure"):
        dlc.scan(lambda c, x: ((c, c), x), xs[0], xs)
    with pytest.raises(ShapeError, match="disagree on the sequence length"):
        dlc.scan(lambda c, x: (c, x), xs[0], [xs, dlc.input("other", (3, 2), "float64")])
    with pytest.raises(TypeError, match="must return a pair"):
        dlc.scan(lambda c, x: c + x, xs[0], xs)
    with pytest.raises(ShapeError, match="needs length="):
        dlc.scan(lambda c, x: (c, c), xs[0])
    with pytest.raises(ShapeError, match="batch as axis 0"):
        dlc.scan(lambda c, x: (c, x), xs[0], xs, lengths=dlc.constant(np.array([1, 2, 3])))


def test_second_order_gradient_is_refused_clearly():
    xs = dlc.input("xs", (3, 2), "float64")
    w = dlc.input("w", (2,), "float64")
    h, _ = dlc.scan(lambda c, x: (dlc.tanh(c * w + x), None), xs[0], xs)
    g = dlc.grad(dlc.sum(h), w)
    with pytest.raises(GradientError, match="second-order"):
        dlc.grad(dlc.sum(g * g), w)


def test_weight_used_only_from_the_right_gets_one_product_after_the_loop(rng):
    """h @ W inside the body: the backward scan carries no running sum for W (two uses, one left operand computed)."""
    def build(xs, h0, w):
        def body(h, x):
            h = dlc.tanh((dlc.tanh(h) * x) @ w + h @ w)
            return h, h
        h_final, ys = dlc.scan(body, h0, xs)
        return dlc.sum(ys * ys) + dlc.sum(h_final)

    check_grad(build, [rng.normal(size=(4, 2, 3)), rng.normal(size=(2, 3)), rng.normal(size=(3, 3)) * 0.5])
    xs, h0, w = dlc.input("xs", (4, 2, 3)), dlc.input("h0", (2, 3)), dlc.input("w", (3, 3))
    g_w = dlc.grad(build(xs, h0, w), w)
    (backward,) = [n for n in Graph([g_w.node]).nodes if n.op == "scan" and not n.attr("save_carries")]
    assert [p.shape for p in backward.attr("body").carry_in] == [(2, 3)]  # only dL/dh


def test_the_forward_saves_carried_products_so_the_backward_multiplies_by_w_once(rng):
    """h @ W (left operand from the carry) is stacked by the forward scan as an extra y the user never sees; the
    backward body reads it back instead of computing it again: one matmul per step (dL/dh = dL/dm W^T), not two."""
    def build(xs, h0, w):
        def body(carry, x):
            h, c = carry
            z = x + h @ w
            c = dlc.sigmoid(z) * c + dlc.tanh(z)
            h = dlc.tanh(c)
            return (h, c), h * 2.0
        (h, c), ys = dlc.scan(body, (h0, h0), xs)
        return dlc.sum(ys * ys) + dlc.sum(h * c)

    check_grad(build, [rng.normal(size=(4, 2, 3)), rng.normal(size=(2, 3)), rng.normal(size=(3, 3)) * 0.5])
    xs, h0, w = dlc.input("xs", (4, 2, 3)), dlc.input("h0", (2, 3)), dlc.input("w", (3, 3))
    loss = build(xs, h0, w)
    (forward,) = [n for n in Graph([loss.node]).nodes if n.op == "scan"]
    fbody = forward.attr("body")
    assert len(fbody.y_out) == 2 and fbody.y_out[1].op == "matmul"  # the user's y, then h @ w
    assert len([n for n in Graph([loss.node]).nodes if n.op == "scan_output"]) == 3  # h, c, ys: not the product
    grads = dlc.grad(loss, [xs, h0, w])
    (backward,) = [n for n in Graph([g.node for g in grads]).nodes if n.op == "scan" and not n.attr("save_carries")]
    bbody = backward.attr("body")
    assert [n.op for n in bbody.graph.nodes].count("matmul") == 1
    assert len(bbody.y_out) == 1  # dL/dx_t, which is also dL/dm_t (for dL/dW after the loop), stacked once
