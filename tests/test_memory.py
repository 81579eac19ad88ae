"""Memory planning: no two live buffers overlap, in-place reuse never clobbers a value still needed, bounds hold."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fusion import graphs, reference_outputs

import dlc
from dlc.bisect import run_kernel, source_value
from dlc.graph import shape_eval
from dlc.passes import optimize, plan_memory, unfused_program, unplanned_memory
from dlc.passes.memory import best_fit, check_plan, keeps_index, lifetimes
from dlc.passes.schedule import order_peak


def run_in_arena(program, plan, feeds, store, env):
    """Execute the program with every buffer living at its planned offset of one byte arena.

    A kernel that writes over one of its inputs runs as a sequential loop:
    element by element, each computed from the arena as it is at that moment
    and stored at once, so reading an element already overwritten shows up.
    Any overlap of two live buffers corrupts a value and shows up too.
    """
    arena = np.full(plan.arena_bytes + plan.alignment, 0xAB, dtype=np.uint8)
    inplace = {id(o) for o, _ in plan.inplace}

    def view(node):
        shape = shape_eval(node.shape, env)
        off = plan.offsets[id(node)]
        return arena[off:off + plan.sizes[id(node)]].view(node.dtype).reshape(shape)

    def read(node):
        if node.op == "reshape":
            return read(node.inputs[0]).reshape(shape_eval(node.shape, env))
        v = source_value(node, feeds, store, env)
        return v if v is not None else view(node).copy()

    for k in program.kernels:
        if not any(id(o) in inplace for o in k.outputs):
            for node, value in zip(k.outputs, run_kernel(k, read, env).values()):
                view(program.storage_of(node))[...] = value
            continue
        for j in range(int(np.prod(shape_eval(k.outputs[0].shape, env)))):
            values = run_kernel(k, read, env)
            for node in k.outputs:
                view(node).reshape(-1)[j] = values[id(node)].reshape(-1)[j]
    return [read(n) for n in program.outputs]


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs(), st.sampled_from([64, 256]), st.sampled_from([2, 3, 48]))
def test_random_programs_run_correctly_inside_their_planned_arena(case, alignment, max_group):
    outputs, inputs, arrays, env = case
    want, feeds = reference_outputs(outputs, inputs, arrays, env)
    program = optimize(outputs, [], inputs, max_group=max_group)  # small groups: more in-place chances
    plan = plan_memory(program, env, alignment=alignment)
    check_plan(program, plan)
    assert all(off % alignment == 0 for off in plan.offsets.values())
    assert plan.lower_bound_bytes <= plan.arena_bytes <= plan.unplanned_bytes
    for got, w in zip(run_in_arena(program, plan, feeds, {}, env), want):
        np.testing.assert_allclose(got, w, rtol=2e-5, atol=2e-6)


def test_with_a_symbolic_batch_each_binding_gets_its_own_plan():
    x, w = dlc.input("x", ("B", 16)), dlc.input("w", (16, 16))
    h = dlc.tanh(x @ w)
    y = dlc.sum(dlc.exp(h), axis=1) + dlc.sum(h * h, axis=1)
    program = optimize([y.node], [], [x.node, w.node])
    small, large = plan_memory(program, {"B": 2}), plan_memory(program, {"B": 200})
    assert large.arena_bytes > small.arena_bytes
    assert plan_memory(program, {"B": 2}) == small  # pure: the same binding gives the same plan
    for plan in (small, large):
        check_plan(program, plan)


def test_an_elementwise_chain_reuses_a_dying_buffer_in_place():
    x, w = dlc.input("x", (64, 64)), dlc.input("w", (64, 64))
    y = dlc.tanh(dlc.tanh(dlc.tanh(dlc.tanh(x @ w))))
    program = optimize([y.node], [], [x.node, w.node], max_group=2)  # the cap splits the chain
    assert [k.kind for k in program.kernels] == ["complex", "elementwise", "elementwise"]
    plan = plan_memory(program, {})
    check_plan(program, plan)
    assert [(o.op, i.op) for o, i in plan.inplace] == [("tanh", "matmul"), ("tanh", "tanh")]
    assert len(set(plan.offsets.values())) == 1
    assert plan.arena_bytes == 64 * 64 * 4
    assert plan_memory(program, {}, inplace=False).inplace == []


def test_no_in_place_reuse_through_a_transpose_or_of_a_value_still_needed():
    x, w = dlc.input("x", (64, 64)), dlc.input("w", (64, 64))
    a = dlc.exp(x @ w)
    t = dlc.transpose(a) + 1.0      # reads a through a remap: a must not be overwritten
    program = optimize([t.node, dlc.sum(a, axis=0).node], [], [x.node, w.node])
    plan = plan_memory(program, {})
    assert plan.inplace == []
    k = next(k for k in program.kernels if any(n.op == "transpose" for n in k.nodes))
    assert not keeps_index(k, next(i for i in k.inputs if i.op in ("exp", "matmul")))


def test_outputs_and_updates_live_to_the_end():
    x = dlc.input("x", ("B", 8))
    w = dlc.param(np.ones((8, 8)), name="w")
    y = dlc.tanh(x @ w)
    loss = dlc.sum(y * y)
    (g,) = dlc.grad(loss, [w])
    fn = dlc.compile([loss, y], updates={w: w - 0.1 * g})
    program = optimize(fn.outputs, fn.updates, fn.inputs)
    life = lifetimes(program)
    end = len(program.kernels)
    for n in list(program.outputs) + [v for _, v in program.updates]:
        s = program.storage_of(n)
        if id(s) in life.first:
            assert life.last[id(s)] == end


def test_best_fit_puts_a_buffer_in_the_tightest_gap():
    # a (0..1) and c (0..1) sit at 0 and 100; b lives later and fits in the space a left
    offsets = best_fit([("a", 100, 0, 1), ("c", 50, 0, 3), ("b", 60, 2, 3), ("d", 40, 2, 3)])
    assert offsets["a"] == 0 and offsets["c"] == 100
    assert offsets["b"] == 0 and offsets["d"] == 60


def test_planning_beats_no_planning_on_a_training_step():
    x, labels = dlc.input("x", ("B", 32)), dlc.input("labels", ("B",), "int64")
    rng = np.random.default_rng(0)
    params, h = [], x
    for n_in, n_out in [(32, 64), (64, 64), (64, 64), (64, 10)]:
        w, b = dlc.param(rng.standard_normal((n_in, n_out)) * 0.1), dlc.param(np.zeros(n_out))
        params += [w, b]
        h = h @ w + b
        h = dlc.relu(h) if n_out != 10 else h
    loss = -dlc.mean(dlc.sum(dlc.log_softmax(h) * dlc.one_hot(labels, 10), axis=1))
    grads = dlc.grad(loss, params)
    fn = dlc.compile(loss, inputs=[x, labels], updates={p: p - 0.1 * g for p, g in zip(params, grads)})
    program = optimize(fn.outputs, fn.updates, fn.inputs)
    env = {"B": 256}
    plan = plan_memory(program, env)
    check_plan(program, plan)
    baseline = unplanned_memory(unfused_program(fn.outputs, fn.updates, fn.inputs), env)
    assert plan.arena_bytes <= 1.1 * plan.lower_bound_bytes
    assert plan.arena_bytes <= 0.4 * baseline.arena_bytes
    # the scheduler's order never has a higher peak than plain topological order
    unscheduled = optimize(fn.outputs, fn.updates, fn.inputs, schedule=False)
    assert order_peak(program, program.kernels, env) <= order_peak(unscheduled, unscheduled.kernels, env)


@pytest.mark.parametrize("alignment", [64, 256])
def test_alignment_is_respected(alignment):
    x = dlc.input("x", (3, 5))
    y = dlc.tanh(dlc.sum(dlc.exp(x), axis=1, keepdims=True) * x)
    program = optimize([y.node], [], [x.node])
    plan = plan_memory(program, {}, alignment=alignment)
    assert plan.alignment == alignment
    assert all(off % alignment == 0 for off in plan.offsets.values())
