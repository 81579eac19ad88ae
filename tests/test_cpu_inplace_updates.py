"""Parameter updates written in place on target cpu: never while a later kernel still reads the old value.

The memory planner (passes.memory.inplace_updates) decides which update a
kernel may write straight into its parameter's array, from every reader of the
parameter's buffer, views included; these tests compare the cpu target with the
reference over several steps, so a later kernel seeing a new value shows up;
a numpy simulation of the planned in-place writes checks the decision itself
over many random graphs and fusion choices.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dlc
from dlc import nn, optim
from dlc.bisect import run_kernel, source_value
from dlc.graph import shape_eval
from dlc.passes import optimize
from dlc.passes.memory import buffer_reads, inplace_updates


def run_on(target, outputs, inputs, updates, store, feeds, steps=2):
    """Outputs of `steps` calls on target, then the store's arrays; the store starts from its current values."""
    start = {k: v.copy() for k, v in store.items()}
    f = dlc.compile(outputs, inputs=inputs, updates=updates, target=target, store=store)
    results = [[np.array(v) for v in f(*feeds)] for _ in range(steps)]
    final = {k: v.copy() for k, v in store.items()}
    for k, v in start.items():
        store[k] = v
    return results, final


def assert_same_runs(got, want, rtol=2e-4, atol=2e-5):
    (got_out, got_store), (want_out, want_store) = got, want
    for step, (g, w) in enumerate(zip(got_out, want_out)):
        for i, (a, b) in enumerate(zip(g, w)):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"output {i} of call {step}")
    for key in want_store:
        np.testing.assert_allclose(got_store[key], want_store[key], rtol=rtol, atol=atol, err_msg=key)


def conv_bn_graph(rng):
    """conv2d -> batch statistics normalisation scaled by reshape(gamma, (1, 3, 1, 1)); gamma updated."""
    x = dlc.input("x", (2, 1, 5, 5))
    w = dlc.param(rng.standard_normal((3, 1, 3, 3)).astype(np.float32), name="w")
    gamma = dlc.param(np.full(3, 1.5, np.float32), name="gamma")
    y = dlc.conv2d(x, w)
    mu = dlc.mean(y, axis=(0, 2, 3), keepdims=True)
    var = dlc.mean((y - mu) * (y - mu), axis=(0, 2, 3), keepdims=True)
    z = (y - mu) / dlc.sqrt(var + 1e-5) * dlc.reshape(gamma, (1, 3, 1, 1))
    loss = dlc.sum(z * dlc.tanh(y))
    grad_w, grad_gamma = dlc.grad(loss, [w, gamma])
    return x, w, gamma, loss, grad_w, grad_gamma


def test_an_update_read_through_a_reshape_by_a_later_kernel_is_not_written_in_place(rng):
    x, w, gamma, loss, grad_w, grad_gamma = conv_bn_graph(rng)
    updates = {gamma: gamma - 0.5 * grad_gamma}
    program = optimize([loss.node, grad_w.node], [("gamma", updates[gamma].node)], [x.node])
    planned = inplace_updates(program)
    for value_id, param in planned.items():
        writer = next(k for k, kern in enumerate(program.kernels) if any(id(o) == value_id for o in kern.outputs))
        assert not any(buffer_reads(program, kern, param) for kern in program.kernels[writer + 1:])
    feeds = [rng.standard_normal((2, 1, 5, 5)).astype(np.float32)]
    store = dlc.default_store()
    want = run_on("reference", [loss, grad_w], [x], updates, store, feeds)
    got = run_on("cpu", [loss, grad_w], [x], updates, store, feeds)
    assert_same_runs(got, want)


def test_an_update_no_later_kernel_reads_is_still_written_in_place(rng):
    x = dlc.input("x", ("B", 4))
    w = dlc.param(rng.standard_normal((4, 3)).astype(np.float32), name="w")
    m = dlc.param(np.zeros((4, 3), np.float32), name="m")
    loss = dlc.sum(dlc.tanh(x @ w))
    (g,) = dlc.grad(loss, [w])
    new_m = 0.9 * m + g
    updates = {m: new_m, w: w - 0.1 * new_m}
    program = optimize([loss.node], [("m", new_m.node), ("w", updates[w].node)], [x.node])
    assert len(inplace_updates(program)) >= 1   # the momentum-style update kernel writes both in place
    feeds = [rng.standard_normal((5, 4)).astype(np.float32)]
    store = dlc.default_store()
    assert_same_runs(run_on("cpu", [loss], [x], updates, store, feeds, steps=3),
                     run_on("reference", [loss], [x], updates, store, feeds, steps=3))


def test_an_update_written_in_place_is_stored_through_the_parameters_own_array(rng):
    """The kernel that writes an update into its parameter loads and stores one array (not two views of one
    buffer, which defeat LLVM's vectorizer), and an Adam step over it matches the reference."""
    from dlc.codegen.numba import RenderedKernel

    dlc.reset_default_store()
    x = dlc.input("x", ("B", 64))
    w = dlc.param(rng.standard_normal((64, 300)).astype(np.float32) * 0.1, name="w")
    loss = dlc.mean(dlc.tanh(x @ w))
    opt = optim.Adam([w], lr=1e-3)
    updates = opt.updates(loss)
    store = dlc.default_store()
    f = dlc.compile(loss, inputs=[x], updates=updates, target="cpu", store=store)
    program = f.program
    assert program.inplace, "the planner writes at least one Adam update in place"
    checked = 0
    for rk in f.backend.generated.kernels:
        assert isinstance(rk, RenderedKernel)
        for o in rk.kernel.outputs:
            param = program.inplace.get(id(o))
            if param is None:
                continue
            names = {a.name for a in rk.args if a.node is param}
            assert len(names) == 1 and not any(a.node is o for a in rk.args), rk.function_text()
            (name,) = names
            body = "\n".join(rk.lines)
            assert f"{name}[" in body and "] = " in body
            checked += 1
    assert checked >= 1
    feeds = [rng.standard_normal((32, 64)).astype(np.float32)]
    assert_same_runs(run_on("cpu", [loss], [x], updates, store, feeds, steps=3),
                     run_on("reference", [loss], [x], updates, store, feeds, steps=3))


class ConvBNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        h = dlc.relu(self.bn(self.conv(x)))
        return self.fc(dlc.flatten(dlc.max_pool2d(h, 2)))


def train_conv_bn(target, state, images, labels, steps):
    """Losses, final state and eval logits of a Conv+BatchNorm net trained `steps` SGD-momentum steps."""
    dlc.reset_default_store()
    model = ConvBNNet()
    model.load_state_dict(state)
    x, y = dlc.input("x", ("B", 1, 8, 8)), dlc.input("y", ("B",), "int64")
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step = nn.compile_step(lambda x, y: nn.cross_entropy(model(x), y), [x, y], opt, modules=model, target=target)
    losses = [step(images, labels) for _ in range(steps)]
    logits = nn.compile_eval(lambda x: model(x), [x], modules=model, target=target)(images)
    return losses, model.state_dict(), np.array(logits)


@pytest.fixture
def conv_bn_case(rng):
    dlc.reset_default_store()
    state = {k: v.copy() for k, v in ConvBNNet().state_dict().items()}
    images = rng.standard_normal((6, 1, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 3, 6)
    return state, images, labels


def test_a_conv_batchnorm_net_trains_the_same_on_cpu_and_reference(conv_bn_case):
    state, images, labels = conv_bn_case
    losses, final, logits = train_conv_bn("cpu", state, images, labels, steps=6)
    want_losses, want_final, want_logits = train_conv_bn("reference", state, images, labels, steps=6)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-4)
    for key in want_final:
        np.testing.assert_allclose(final[key], want_final[key], rtol=1e-3, atol=1e-5, err_msg=key)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-3, atol=1e-4)


def test_a_conv_batchnorm_net_trains_like_pytorch_on_cpu(conv_bn_case):
    torch = pytest.importorskip("torch")
    state, images, labels = conv_bn_case
    losses, final, _ = train_conv_bn("cpu", state, images, labels, steps=6)
    conv, bn, fc = torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.Linear(16 * 4, 3)
    net = torch.nn.Sequential(conv, bn, torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(), fc)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            key = {"0": "conv", "1": "bn", "5": "fc"}[name.split(".")[0]] + "." + name.split(".", 1)[1]
            if key in state:
                tensor.copy_(torch.from_numpy(np.ascontiguousarray(state[key])).to(tensor.dtype))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    want = []
    for _ in range(6):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(images)), torch.from_numpy(labels))
        loss.backward()
        opt.step()
        want.append(loss.item())
    np.testing.assert_allclose(losses, want, rtol=2e-4)
    np.testing.assert_allclose(final["bn.weight"], bn.weight.detach().numpy(), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(final["bn.running_var"], bn.running_var.numpy(), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(final["conv.weight"], conv.weight.detach().numpy(), rtol=1e-3, atol=1e-5)


# ----------------------------------------------------------------------------
# random graphs whose kernels read parameters (directly and through views) around their updates


def views_of(p):
    """Ways a kernel may read a (3, 3) or (3,) parameter's buffer: the value, a reshape, a transpose, a slice,
    a broadcast; each returned as a (3, 3) tensor."""
    if p.ndim == 1:
        return [dlc.broadcast_to(p, (3, 3)), dlc.reshape(p, (3, 1)) * dlc.reshape(p, (1, 3)),
                dlc.broadcast_to(dlc.reshape(p, (3, 1)), (3, 3))]
    return [p, dlc.transpose(p), dlc.reshape(dlc.reshape(p, (9,)), (3, 3)),
            dlc.concat([p[1:], p[:1]], axis=0), dlc.broadcast_to(p[:, 1:2], (3, 3))]


@st.composite
def graphs_with_updates(draw):
    """(outputs, inputs, updates, feeds): an input x (B, 3), parameters p (3, 3) and q (3,), values mixing
    them through views, a loss, and updates of the parameters from their gradients and views; the outputs
    include gradients, whose backward pass reads the parameters (through views) late in the program."""
    dlc.reset_default_store()
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    x = dlc.input("x", ("B", 3))
    p = dlc.param(rng.standard_normal((3, 3)).astype(np.float32) * 0.5, name="p")
    q = dlc.param(rng.standard_normal(3).astype(np.float32) * 0.5, name="q")
    pool = [x]
    for _ in range(draw(st.integers(2, 6))):
        a = draw(st.sampled_from(pool))
        view = draw(st.sampled_from(views_of(draw(st.sampled_from([p, q])))))
        kind = draw(st.sampled_from(["matmul", "norm", "norm", "scale", "bias", "unary", "gamma"]))
        if kind == "matmul":
            pool.append(a @ view)
        elif kind == "gamma":   # batch norm's weight: read through a reshape, an alias of its buffer
            pool.append(dlc.tanh(a) * dlc.reshape(q, (1, 3)))
        elif kind == "norm":    # batch statistics, then that weight, as in BatchNorm2d over (B, 3, 1, 1)
            a4 = dlc.reshape(a, (-1, 3, 1, 1))
            centered = a4 - dlc.mean(a4, axis=(0, 2, 3), keepdims=True)
            var = dlc.mean(centered * centered, axis=(0, 2, 3), keepdims=True)
            pool.append(dlc.reshape(centered / dlc.sqrt(var + 1e-3) * dlc.reshape(q, (1, 3, 1, 1)), (-1, 3)))
        elif kind == "scale":
            pool.append(a * dlc.sum(view, axis=0))
        elif kind == "bias":
            pool.append(a + view[draw(st.integers(0, 2))])
        else:
            pool.append(dlc.tanh(a))
    values = pool[1:]
    loss = dlc.sum(dlc.tanh(values[-1]) * draw(st.sampled_from(values)))
    gp, gq = dlc.grad(loss, [p, q])
    updates = {}
    if draw(st.booleans()):
        h = draw(st.sampled_from(values))
        updates[p] = draw(st.sampled_from([p - 0.1 * gp, p - 0.1 * dlc.transpose(h) @ h,
                                           0.9 * p + dlc.broadcast_to(dlc.mean(h, axis=0), (3, 3)),
                                           dlc.transpose(p) * 0.5 + 0.1]))
    if draw(st.booleans()) or not updates:
        h = draw(st.sampled_from(values))
        updates[q] = draw(st.sampled_from([q - 0.1 * gq, q - 0.1 * gq, q - 0.1 * dlc.sum(h, axis=0),
                                           dlc.reshape(dlc.reshape(q, (1, 3)) * 0.9, (3,)), q * dlc.max(h, axis=0)]))
    outputs = [loss] + draw(st.lists(st.sampled_from(values + [gp, gq]), min_size=1, max_size=2))
    if draw(st.booleans()):
        outputs.append(draw(st.sampled_from(views_of(p) + views_of(q))))   # a view of a parameter returned
    feeds = [rng.standard_normal((draw(st.sampled_from([1, 4])), 3)).astype(np.float32)]
    return outputs, [x], updates, feeds


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs_with_updates())
def test_random_graphs_with_updates_run_the_same_on_cpu_and_reference(case):
    """The generated code follows the plan (few examples: each compiles; the plan itself is checked below)."""
    outputs, inputs, updates, feeds = case
    store = dlc.default_store()
    assert_same_runs(run_on("cpu", outputs, inputs, updates, store, feeds),
                     run_on("reference", outputs, inputs, updates, store, feeds))


def run_with_updates_in_place(program, feeds: dict, params: dict, env: dict):
    """The program kernel by kernel with numpy, each update the planner allows written into its parameter's
    array as soon as its kernel ends (so a later kernel reading the parameter, through any view, sees the new
    value), every other update after the last kernel. Returns the outputs; params holds the new values."""
    planned = inplace_updates(program)
    values: dict[int, np.ndarray] = {}

    def read(node):
        if node.op == "reshape":
            return read(node.inputs[0]).reshape(shape_eval(node.shape, env))
        value = source_value(node, feeds, params, env)   # input, param, const or size
        return values[id(node)] if value is None else value

    # outputs that are parameters (or views of them) are returned as they were before the call
    before = {i: np.array(read(n)) for i, n in enumerate(program.outputs) if program.storage_of(n).op == "param"}
    for kernel in program.kernels:
        for key, value in run_kernel(kernel, read, env).items():
            # a kernel writes its outputs into buffers of their own (numpy's transpose would be a view of p)
            values[key] = np.array(value)
            if key in planned:
                params[planned[key].attr("name")][...] = value
    outs = [before[i] if i in before else np.array(read(n)) for i, n in enumerate(program.outputs)]
    copied = [(key, np.array(read(n))) for key, n in program.updates if id(n) not in planned]
    for key, value in copied:
        params[key][...] = value
    return outs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs_with_updates(), st.sampled_from([{}, {"max_group": 3}, {"schedule": False}, {"fuse": False}]))
def test_planned_in_place_updates_never_change_what_a_later_kernel_reads(case, options):
    """Cheap (numpy only) and so over many graphs and fusion choices: the planner's decision alone, against
    the reference."""
    outputs, inputs, updates, feeds = case
    store = dlc.default_store()
    (want_out,), want_store = run_on("reference", outputs, inputs, updates, store, feeds, steps=1)
    program = optimize([t.node for t in outputs], [(p.node.attr("name"), v.node) for p, v in updates.items()],
                       [x.node for x in inputs], **options)
    params = {k: np.array(v) for k, v in store.items()}
    got = run_with_updates_in_place(program, {id(inputs[0].node): feeds[0]}, params, {"B": feeds[0].shape[0]})
    for i, (g, w) in enumerate(zip(got, want_out)):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=f"output {i}")
    for key, value in want_store.items():
        np.testing.assert_allclose(params[key], value, rtol=1e-4, atol=1e-5, err_msg=key)
