"""Layer scopes: every node records the module path that built it, shown by the inspector, bisect and errors."""

from __future__ import annotations

import re

import numpy as np
import pytest

import dlc
from dlc import nn
from dlc.passes import optimize


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        self.lstm = nn.LSTM(8, 8, num_layers=2)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.features(x)
        y, _ = self.lstm(dlc.reshape(h, (1, -1, 8)))
        return self.head(y[0])


def scopes_of(outputs) -> set[str]:
    """The scopes of the traced nodes (parameters are made when a layer is built, outside any trace)."""
    return {n.loc.scope for n in dlc.Graph([t.node for t in outputs])
            if n.loc is not None and n.op not in ("param", "input")}


def test_nodes_record_the_module_path_that_built_them():
    model = Net()
    x = dlc.input("x", ("B", 4))
    out = model(x) + dlc.zeros(3)  # the last add is built outside any module: no scope
    scopes = scopes_of([out])
    assert {"features.0", "features.1", "lstm.l0", "lstm.l1", "head", ""} <= scopes
    assert all(not s.startswith("net") for s in scopes)  # the model itself is the root, as in named_modules()
    names = {name for name, _ in model.named_modules()}
    assert {s.split(".l")[0] for s in scopes if s} <= names


def test_a_layer_called_on_its_own_has_no_scope_and_an_unregistered_one_its_class_name():
    lin = nn.Linear(2, 2)
    assert scopes_of([lin(dlc.input("x", (1, 2)))]) == {""}

    class Borrowing(nn.Module):
        def forward(self, x):
            return lin(x)  # a layer this module does not own

    assert scopes_of([Borrowing()(dlc.input("y", (1, 2)))]) == {"linear"}


@pytest.fixture
def predict():
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    x = dlc.input("x", ("B", 4))
    return nn.compile_eval(lambda x: dlc.softmax(model(x)), [x], modules=model, target="reference")


def test_inspect_names_the_layer_of_each_kernel(predict):
    text = dlc.inspect.report(predict)
    assert re.search(r"\(layer (\S+, )*0[,)]", text), text
    assert "(in 2)" in text  # source lines carry the scope: test_scopes.py:N (in 2)
    assert "test_scopes.py:" in text


def test_bisect_names_the_layer_of_the_bad_kernel(predict):
    X = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    program = optimize(predict.outputs, predict.updates, predict.inputs)
    bad = next(k for k in program.kernels if any(n.loc is not None and n.loc.scope for n in k.nodes))

    class Corrupting:
        def __init__(self, program):
            self.program = program

        def kernel_values(self, feeds, env):
            from dlc.bisect import run_program_reference

            values = run_program_reference(self.program, feeds, predict.store, env)
            values[id(bad.outputs[0])] = values[id(bad.outputs[0])] + 1.0
            return values

    predict.backend, predict.program = Corrupting(program), program
    report = dlc.bisect(predict, X)
    assert report.kernel is bad
    layer = next(n.loc.scope for n in bad.nodes if n.loc is not None and n.loc.scope)
    assert f"in layer {layer}" in str(report)


def test_shape_errors_name_the_layer_next_to_the_users_line():
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(5, 2))
    x = dlc.input("x", ("B", 4))
    with pytest.raises(dlc.ShapeError, match=r"test_scopes\.py:\d+ \(in 1\)"):
        model(x)


def test_scopes_survive_export_and_load(predict, tmp_path):
    path = dlc.export(predict, tmp_path / "m.dlc")
    loaded = dlc.load(path)
    assert {n.loc.scope for n in loaded.graph.nodes if n.loc is not None} >= {"0", "2"}


def test_gradient_nodes_belong_to_the_layer_they_differentiate():
    # sizes no other test uses: identical nodes are one node (hash-consing), which keeps its first location
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 2))
    x = dlc.input("x", ("B", 5))
    loss = dlc.sum(model(x))
    w0, w2 = model[0].weight, model[2].weight
    g0, g2 = dlc.grad(loss, [w0, w2])
    assert g0.node.loc.scope == "0" and g2.node.loc.scope == "2"
    grad_only = {n.loc.scope for n in dlc.Graph([g0.node, g2.node]) if n.loc is not None} - scopes_of([loss])
    assert grad_only <= {"0", "1", "2", ""}
