"""Simplification: each identity, folding, CSE/DCE, the reassociate flag, and random graphs keep their values."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from test_fusion import graphs, reference_outputs

import dlc
from dlc.graph import Graph, Node
from dlc.ops.base import apply
from dlc.passes.simplify import StructuralKeys, make_const, simplify, value_range
from dlc.runtime.reference import evaluate


def simplified(t):
    (out,), _ = simplify([t.node])
    return out


def ops_of(node):
    return [n.op for n in Graph([node]).nodes if n.inputs]


x = None


@pytest.fixture(autouse=True)
def _x():
    global x
    x = dlc.input("x", ("B", 4))


@pytest.mark.parametrize("build", [
    lambda x: x * 1.0, lambda x: 1.0 * x, lambda x: x + 0.0, lambda x: 0.0 + x, lambda x: x - 0.0,
    lambda x: x / 1.0, lambda x: dlc.neg(dlc.neg(x)), lambda x: dlc.transpose(dlc.transpose(x)),
    lambda x: dlc.stop_gradient(x), lambda x: dlc.where(x > 0, x, x),
    lambda x: dlc.reshape(dlc.reshape(x, ("B", 2, 2)), ("B", 4)),
], ids=["x*1", "1*x", "x+0", "0+x", "x-0", "x/1", "neg-neg", "transpose-transpose", "stop_gradient", "where-same",
        "reshape-reshape"])
def test_identities_vanish(build):
    assert simplified(build(x)) is x.node


def test_shape_and_dtype_no_ops_vanish():
    same_bcast = apply("broadcast_to", [x.node], shape=x.shape)
    same_cast = apply("cast", [x.node], dtype="float32")
    same_reshape = apply("reshape", [x.node], shape=x.shape)
    for n in (same_bcast, same_cast, same_reshape):
        (out,), _ = simplify([n])
        assert out is x.node


def test_chains_of_one_shape_op_merge():
    t = dlc.transpose(dlc.transpose(dlc.reshape(x, ("B", 2, 2)), (1, 0, 2)), (0, 2, 1))
    out = simplified(t)
    assert ops_of(out) == ["reshape", "transpose"] and out.attr("perm") == (1, 2, 0)
    b = dlc.broadcast_to(dlc.broadcast_to(dlc.input("v", (4,)), (3, 4)), (2, 3, 4))
    assert ops_of(simplified(b)) == ["broadcast_to"]


def test_exp_log_pairs_go_only_where_exact():
    assert simplified(dlc.exp(dlc.log(dlc.relu(x)))) is dlc.relu(x).node      # x >= 0: exp(log x) = x
    assert ops_of(simplified(dlc.exp(dlc.log(x)))) == ["log", "exp"]          # x < 0 would give nan
    assert simplified(dlc.log(dlc.exp(dlc.tanh(x)))) is dlc.tanh(x).node      # |x| <= 1: no overflow
    assert ops_of(simplified(dlc.log(dlc.exp(x)))) == ["exp", "log"]          # exp(100) overflows
    assert value_range(dlc.sigmoid(x).node) == (0.0, 1.0)
    (kept,), _ = simplify([dlc.exp(dlc.log(dlc.relu(x))).node], reassociate=False)  # rounds twice: not bit-exact
    assert kept.op == "exp"


def test_constants_fold_within_the_size_limit():
    c = dlc.constant(np.arange(6, dtype=np.float32).reshape(2, 3))
    out = simplified(dlc.exp(c) * 2.0 + 1.0)
    assert out.op == "const"
    np.testing.assert_allclose(out.value, np.exp(np.arange(6, dtype=np.float32)).reshape(2, 3) * 2 + 1, rtol=1e-6)
    big = dlc.broadcast_to(dlc.constant(1.5), (1000, 1000))
    (out,), _ = simplify([big.node], fold_limit=4096)
    assert out.op == "broadcast_to"  # folding it would bake a 4 MB array into the program


def test_static_sizes_fold_and_symbolic_ones_stay():
    n = apply("size", [dlc.input("y", ("B", 5)).node], axes=(1,), dtype="float32")
    (out,), _ = simplify([n])
    assert out.op == "const" and float(out.value) == 5.0
    m = apply("size", [dlc.input("y", ("B", 5)).node], axes=(0,), dtype="float32")
    (out,), _ = simplify([m])
    assert out.op == "size"


def test_common_subexpressions_merge_across_operand_order_and_equal_constants():
    y = dlc.input("y", ("B", 4))
    a = (x + y) * dlc.constant(np.float32(3.0))
    b = dlc.constant(np.float32(3.0)) * (y + x)
    out_a, out_b = simplify([a.node, b.node])[0]
    assert out_a is out_b
    assert make_const(np.float32(3.0), "float32") is make_const(np.array(3.0, np.float32), "float32")


def test_dead_code_is_dropped_and_the_log_records_each_pass():
    y = dlc.tanh(x)
    z = y * 1.0 + 0.0
    (out,), log = simplify([z.node])
    assert out is y.node
    assert log[0]["pass"] == "input" and log[0]["nodes"] == 6
    assert log[-1]["nodes"] == 2
    assert sum(e["rewrites"] for e in log) >= 2


def test_reassociation_is_under_a_flag():
    t = (x * 3.0) * 5.0
    (fast,), _ = simplify([t.node], reassociate=True)
    (exact,), _ = simplify([t.node], reassociate=False)
    assert ops_of(fast) == ["mul"] and float(fast.inputs[1].value) == 15.0
    assert ops_of(exact) == ["mul", "mul"]
    # dividing by a power of two is exact either way, by anything else only when reassociating
    (q,), _ = simplify([(x / 4.0).node], reassociate=False)
    assert q.op == "mul" and float(q.inputs[1].value) == 0.25
    (r,), _ = simplify([(x / 3.0).node], reassociate=False)
    assert r.op == "div"


def test_transposed_product_becomes_a_product_of_transposes():
    a, b = dlc.input("a", ("B", 4)), dlc.input("b", ("B", 3))
    t = dlc.transpose(dlc.matmul(dlc.transpose(a), b))   # (3, 4)
    (out,), _ = simplify([t.node])
    assert out.op == "matmul" and [i.op for i in out.inputs] == ["transpose", "input"]
    (kept,), _ = simplify([t.node], reassociate=False)
    assert kept.op == "transpose"


def test_reductions_over_unit_axes_and_keepdims_reshapes():
    y = dlc.input("y", ("B", 1, 4))
    assert ops_of(simplified(dlc.sum(y, axis=1))) == ["reshape"]
    s = dlc.reshape(dlc.sum(x, axis=1, keepdims=True), ("B",))
    out = simplified(s)
    assert out.op == "sum" and out.attr("keepdims") is False


def test_the_mean_gradient_chain_collapses_to_an_implicit_broadcast():
    logits = dlc.input("logits", ("B", 10))
    loss = dlc.mean(dlc.sum(logits * logits, axis=1))
    g = dlc.grad(loss, logits)
    counts = Graph(simplify([g.node])[0]).op_counts()
    assert "reshape" not in counts and "broadcast_to" not in counts


def test_rewrites_keep_locations():
    y = dlc.tanh(x) * 1.0 - 0.0
    (out,), _ = simplify([dlc.exp(y).node])
    assert out.loc is not None and out.loc.file.endswith("test_simplify.py")


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_random_graphs_keep_their_values(case):
    outputs, inputs, arrays, env = case
    want, feeds = reference_outputs(outputs, inputs, arrays, env)
    for reassociate in (False, True):
        new, _ = simplify(outputs, reassociate=reassociate)
        assert all(isinstance(n, Node) for n in new)
        if not reassociate:  # (reassociation may trade transpose(a @ b) for two free operand transposes)
            assert len(Graph(new)) <= len(Graph(outputs))
        values = evaluate(Graph(new).nodes, feeds, {}, env, keep={id(n) for n in new})
        for n, w in zip(new, want):
            got = values[id(n)] if n.inputs else (n.value if n.op == "const" else feeds[id(n)])
            if reassociate:
                np.testing.assert_allclose(got, w, rtol=2e-5, atol=2e-6)
            else:
                np.testing.assert_array_equal(got, w)


def test_a_reshape_sinks_into_a_broadcast_scalar_when_nothing_else_reads_it():
    s = dlc.input("s", ())
    t = dlc.reshape(dlc.neg(dlc.broadcast_to(s, ("B",))), ("B", 1))
    out = simplified(t)
    assert out.op == "neg" and out.inputs[0].op == "broadcast_to" and out.inputs[0].shape == ("B", 1)
    shared = dlc.neg(dlc.broadcast_to(s, ("B",)))
    (a, b), _ = simplify([dlc.reshape(shared, ("B", 1)).node, shared.node])
    assert a.op == "reshape"  # the neg has another reader: sinking would compute it twice


def test_operand_order_does_not_depend_on_how_the_graph_was_built():
    # a traced graph and the same graph read back from an artifact number their nodes differently:
    # the program (and so the generated code) must come out the same
    def build(y_first):
        if y_first:
            y, x = dlc.input("y", ("B", 4)), dlc.input("x", ("B", 4))
            out = dlc.tanh(y) * 3.0 + dlc.exp(x) * 2.0
        else:
            x, y = dlc.input("x", ("B", 4)), dlc.input("y", ("B", 4))
            out = dlc.exp(x) * 2.0 + dlc.tanh(y) * 3.0
        (node,), _ = simplify([out.node])
        return [(n.op, n.attr("name")) for n in Graph([node]).nodes]

    assert build(True) == build(False)


def test_structural_keys_key_only_the_new_part_of_a_rewritten_graph(monkeypatch):
    """Keying a node whose inputs are keyed walks the new nodes alone: a rewrite pass over a deep net keys each
    new node once, not its whole ancestry again (quadratic in depth)."""
    import dlc.passes.simplify as simplify_module

    walked = []

    def counting_topo_order(*args, **kwargs):
        order = topo_order(*args, **kwargs)
        walked.append(len(order))
        return order

    topo_order = simplify_module.topo_order
    monkeypatch.setattr(simplify_module, "topo_order", counting_topo_order)
    x = dlc.input("x", (4,))
    h = x
    for _ in range(50):
        h = dlc.tanh(h * 1.5)
    keys = StructuralKeys()
    deep = keys(h.node)
    assert len(keys.alive) == len(Graph([h.node])) == sum(walked)
    top = dlc.exp(dlc.sqrt(h) + 1.0)   # three new nodes above h and a constant
    walked.clear()
    assert keys(top.node) != deep
    assert sum(walked) == 4 and len(keys.alive) == len(Graph([top.node])) == len(Graph([h.node])) + 4
    assert keys(h.node) == deep
