import numpy as np
import pytest

import dlc
from dlc.graph import Graph, dim_div, dim_eval, dim_mul, topo_order


def test_nodes_are_hash_consed():
    x = dlc.input("x", ("B", 3))
    a = dlc.exp(x) + 1.0
    b = dlc.exp(x) + 1.0
    assert a.node is b.node
    assert (dlc.exp(x) * 2.0).node is not a.node


def test_symbolic_dims_stay_symbolic():
    x = dlc.input("x", ("B", "T", 8))
    y = dlc.reshape(x, (-1, 8))
    assert y.shape == ("B*T", 8)
    z = dlc.reshape(y, ("B", -1))
    assert z.shape == ("B", "8*T")
    assert dlc.sum(x, axis=1).shape == ("B", 8)
    assert (x + dlc.input("b", (1, 8))).shape == ("B", "T", 8)


def test_dim_arithmetic():
    assert dim_mul("B", 4, "T") == "4*B*T"
    assert dim_div("4*B*T", "T") == "4*B"
    assert dim_div("B", 3) is None
    assert dim_eval("4*B*T", {"B": 2, "T": 5}) == 40


def test_every_node_records_the_user_line():
    x = dlc.input("x", (2, 2))
    y = dlc.tanh(x)  # this line
    assert y.node.loc.file == __file__
    src = open(__file__).read().splitlines()
    assert "this line" in src[y.node.loc.line - 1]


def test_graph_topological_order_networkx_and_dot():
    x = dlc.input("x", (2, 3))
    w = dlc.param(np.ones((3, 4)), name="w")
    y = dlc.sum(dlc.relu(x @ w))
    g = Graph([y.node])
    pos = {id(n): i for i, n in enumerate(g.nodes)}
    for n in g.nodes:
        for i in n.inputs:
            assert pos[id(i)] < pos[id(n)]
    nxg = g.to_networkx()
    assert nxg.number_of_nodes() == len(g)
    import networkx as nx

    assert nx.is_directed_acyclic_graph(nxg)
    dot = g.to_dot()
    assert dot.startswith("digraph") and "matmul" in dot
    assert g.op_counts()["matmul"] == 1


def test_topo_order_leaves_out_and_stops_at_known_nodes():
    x = dlc.input("x", (2, 3))
    h = dlc.relu(x * 2.0)
    y = dlc.sum(dlc.exp(h) + h)
    full = topo_order([y.node])
    known = {id(n) for n in topo_order([h.node])}
    new = topo_order([y.node], known=known)
    assert [id(n) for n in new] == [id(n) for n in full if id(n) not in known]   # the same order, known left out
    assert h.node not in new and x.node not in new and y.node in new
    assert topo_order([h.node], known=known) == []


def test_unsupported_dtype_is_refused():
    with pytest.raises(TypeError, match="not supported"):
        dlc.input("x", (2,), "complex64")
