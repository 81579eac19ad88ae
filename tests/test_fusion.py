"""Fusion: random graphs fused and run kernel by kernel match the reference; each refusal reason; MLP counts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dlc
from dlc.bisect import program_results
from dlc.graph import Graph
from dlc.passes import optimize, unfused_program
from dlc.passes.fusion import check_program
from dlc.runtime.reference import evaluate

# ----------------------------------------------------------------------------
# random DAGs of elementwise, broadcast, reduce, matmul, reshape and transpose nodes

UNARY = [dlc.tanh, dlc.neg, dlc.relu, dlc.abs, dlc.sigmoid, dlc.exp, dlc.sin]
BINARY = [dlc.add, dlc.sub, dlc.mul, dlc.maximum, lambda a, b: dlc.where(a > b, a, b * 0.5)]


def _broadcastable(a, b) -> bool:
    try:
        np.broadcast_shapes(a, b)
        return True
    except ValueError:
        return False


@st.composite
def graphs(draw, symbolic: bool = True, max_nodes: int = 14):
    """(outputs, inputs, arrays by input name, env): a random DAG whose values have several consumers."""
    b = draw(st.sampled_from([3, 4])) if not symbolic else "B"
    env = {"B": draw(st.sampled_from([2, 5]))} if symbolic else {}
    x = dlc.input("x", (b, 3))
    y = dlc.input("y", (1, 3))
    z = dlc.input("z", (3, 3))
    inputs = [x, y, z]
    pool = list(inputs)

    def concrete(shape):
        return tuple(env.get(d, d) if isinstance(d, str) else d for d in shape)

    for _ in range(draw(st.integers(2, max_nodes))):
        kind = draw(st.sampled_from(["unary", "binary", "binary", "reduce", "matmul", "reshape", "transpose",
                                     "broadcast", "constant", "chain"]))
        a = draw(st.sampled_from(pool))
        if kind == "unary":
            pool.append(draw(st.sampled_from(UNARY))(dlc.tanh(a) if draw(st.booleans()) else a))
        elif kind == "chain":
            for fn in draw(st.lists(st.sampled_from(UNARY), min_size=3, max_size=5)):
                a = fn(dlc.tanh(a))
            pool.append(a)
        elif kind == "binary":
            partners = [p for p in pool if _broadcastable(concrete(a.shape), concrete(p.shape))
                        and all(isinstance(d, int) or d == e or e == 1 or d == 1
                                for d, e in zip(a.shape[::-1], p.shape[::-1]))]
            pool.append(draw(st.sampled_from(BINARY))(a, draw(st.sampled_from(partners))))
        elif kind == "reduce" and a.ndim >= 1:
            fn = draw(st.sampled_from([dlc.sum, dlc.max, dlc.mean]))
            pool.append(fn(a, axis=draw(st.integers(0, a.ndim - 1)), keepdims=draw(st.booleans())))
        elif kind == "matmul" and a.ndim == 2 and a.shape[1] == 3:
            pool.append(a @ draw(st.sampled_from([z, dlc.transpose(z), dlc.tanh(z)])))
        elif kind == "reshape" and a.ndim == 2 and all(isinstance(d, int) for d in a.shape):
            pool.append(dlc.reshape(a, (-1,)) if draw(st.booleans()) else dlc.reshape(a, (1,) + a.shape))
        elif kind == "reshape" and a.ndim == 2:
            pool.append(dlc.expand_dims(a, 0))
        elif kind == "reshape" and a.shape == (9,):
            pool.append(dlc.reshape(a, (3, 3)))  # a split of a merged dim: read back through both reshapes
        elif kind == "transpose" and a.ndim == 2:
            pool.append(dlc.transpose(a))
        elif kind == "broadcast" and a.shape == (1, 3):
            pool.append(dlc.broadcast_to(a, (b, 3)) + x)
        elif kind == "constant":
            pool.append(a * 1.0 + 0.0 if draw(st.booleans()) else a * 2.0 * 0.5)
    computed = [t for t in pool if t.node.inputs]
    if not computed:
        computed = [dlc.tanh(x)]
    outs = draw(st.lists(st.sampled_from(computed), min_size=1, max_size=3)) + [computed[-1]]
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    arrays = {t.node.attr("name"): rng.standard_normal(concrete(t.shape)).astype(np.float32) for t in inputs}
    return [t.node for t in outs], [t.node for t in inputs], arrays, env


def reference_outputs(outputs, inputs, arrays, env):
    feeds = {id(n): arrays[n.attr("name")] for n in inputs}
    values = evaluate(Graph(outputs).nodes, feeds, {}, env, keep={id(n) for n in outputs})
    return [values[id(n)] for n in outputs], feeds


def assert_matches(got, want):
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs(), st.booleans(), st.sampled_from([4, 48]))
def test_random_graphs_fused_and_run_kernel_by_kernel_match_the_reference(case, reassociate, max_group):
    outputs, inputs, arrays, env = case
    want, feeds = reference_outputs(outputs, inputs, arrays, env)
    program = optimize(outputs, [], inputs, reassociate=reassociate, max_group=max_group)
    check_program(program)
    got, _ = program_results(program, feeds, {}, env)
    assert_matches(got, want)
    assert all(len(k.nodes) <= max_group for k in program.kernels)


@settings(max_examples=25, deadline=None)
@given(graphs(symbolic=False))
def test_fusion_never_needs_more_kernels_than_the_unfused_baseline(case):
    outputs, inputs, _, _ = case
    assert len(optimize(outputs, [], inputs).kernels) <= len(unfused_program(outputs, [], inputs).kernels)


# ----------------------------------------------------------------------------
# what fuses


def fused(outputs, inputs=(), updates=(), **options):
    program = optimize([t.node for t in outputs], list(updates), [t.node for t in inputs], **options)
    check_program(program)
    return program


def test_an_elementwise_chain_with_broadcasts_is_one_kernel():
    x, b = dlc.input("x", ("B", 8)), dlc.input("b", (8,))
    y = dlc.tanh(x * 2.0 + b) * dlc.sigmoid(x - b)
    p = fused([y], [x, b])
    assert [k.kind for k in p.kernels] == ["elementwise"]
    assert p.kernels[0].outputs == tuple(p.outputs)


def test_bias_and_activation_fuse_into_the_matmul_epilogue():
    x, w, b = dlc.input("x", ("B", 8)), dlc.input("w", (8, 4)), dlc.input("b", (4,))
    y = dlc.relu(x @ w + b)
    (k,) = fused([y], [x, w, b]).kernels
    assert k.kind == "complex" and k.anchor.op == "matmul"
    assert [n.op for n in k.nodes] == ["matmul", "add", "relu"]


def test_a_transposed_operand_fuses_into_the_matmul_as_a_flag():
    x, w = dlc.input("x", ("B", 8)), dlc.input("w", (4, 8))
    (k,) = fused([x @ dlc.transpose(w)], [x, w]).kernels
    assert [n.op for n in k.nodes] == ["transpose", "matmul"]


def test_elementwise_prologue_and_epilogue_fuse_into_a_reduction():
    x = dlc.input("x", ("B", 8))
    y = dlc.log(dlc.sum(dlc.exp(x * 0.5), axis=1)) + 1.0
    (k,) = fused([y], [x]).kernels
    assert k.kind == "reduce" and k.anchor.op == "sum"
    ops = [n.op for n in k.nodes]
    assert ops.index("exp") < ops.index("sum") < ops.index("log")


def test_a_cheap_producer_is_recomputed_in_each_consumer_kernel():
    # relu(h) feeds a matmul and the backward mask: h + b is recomputed rather than stored
    x, w, v, b = dlc.input("x", ("B", 8)), dlc.input("w", (8, 8)), dlc.input("v", (8, 8)), dlc.input("b", (8,))
    h = x @ w + b
    out = dlc.relu(h) @ v
    mask = dlc.where(h > 0, out, 0.0)
    p = fused([mask], [x, w, v, b])
    adds = [k for k in p.kernels if any(n.op == "add" for n in k.nodes)]
    assert len(adds) == 2
    assert all(n.op != "add" for k in p.kernels for n in k.outputs)


def test_reshape_is_a_view_and_in_no_kernel():
    x = dlc.input("x", ("B", 8))
    y = dlc.reshape(dlc.tanh(x), ("B", 2, 4))
    p = fused([y], [x])
    assert all(n.op != "reshape" for k in p.kernels for n in k.nodes)
    assert p.storage_of(y.node).op == "tanh"


def _heads(t, heads):
    """(B, T, C) -> (B, heads, T, C // heads), as a transformer splits its projections."""
    return dlc.transpose(dlc.reshape(t, ("B", t.shape[1], heads, t.shape[2] // heads)), (0, 2, 1, 3))


@pytest.mark.parametrize("target", ["cpu", "reference"])
def test_a_reshape_of_a_value_computed_in_the_kernel_is_an_index_remap_there(target):
    """A transformer's head split (bias, slice, reshape to heads, transpose) is one kernel per head tensor,
    and its gradient's merge (transpose, reshape, the slices' gradients, their sum) one kernel: a reshape of a
    value the kernel computes is read through its index, not stored first to be viewed."""
    x, b = dlc.input("x", ("B", 5, 12)), dlc.input("b", (12,))
    q, k, v = (_heads(t, 2) for t in dlc.split(x + b, 3, axis=2))
    p = fused([q, k, v], [x, b])
    assert [[n.op for n in kern.nodes] for kern in p.kernels] == [["add", "slice", "reshape", "transpose"]] * 3
    assert not any("reshape" in r for r in p.refusals)

    rng = np.random.default_rng(3)
    xv, bv = rng.standard_normal((3, 5, 12)).astype(np.float32), rng.standard_normal(12).astype(np.float32)
    c = [rng.standard_normal((1, 2, 5, 2)).astype(np.float32) for _ in range(3)]
    loss = dlc.sum(q * c[0]) + dlc.sum(dlc.tanh(k) * c[1]) + dlc.sum(v * v * c[2])
    (gx,) = dlc.grad(loss, [x])
    fn = dlc.compile([q, k, v, gx], inputs=[x, b], target=target)
    if target == "cpu":
        merge = [kern for kern in fn.program.kernels if any(n.op == "slice_grad" for n in kern.nodes)]
        assert len(merge) == 1 and sum(n.op == "reshape" for n in merge[0].nodes) == 3, fn.program
    heads = [np.transpose((xv + bv)[:, :, 4 * i:4 * i + 4].reshape(3, 5, 2, 2), (0, 2, 1, 3)) for i in range(3)]
    dq, dk, dv = np.broadcast_to(c[0], heads[0].shape), c[1] * (1 - np.tanh(heads[1]) ** 2), 2 * heads[2] * c[2]
    want_gx = np.concatenate([np.transpose(d, (0, 2, 1, 3)).reshape(3, 5, 4) for d in (dq, dk, dv)], axis=2)
    got = fn(xv, bv)
    for g, w in zip(got, heads + [want_gx]):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6)


def test_a_reshape_read_by_a_matmul_or_returned_keeps_its_input_stored():
    x, w = dlc.input("x", ("B", 8)), dlc.input("w", (4, 3))
    y = dlc.reshape(dlc.tanh(x), ("B", 2, 4)) @ w
    text = refusals([y, dlc.reshape(dlc.exp(x), ("B", 4, 2))], [x, w])
    assert "a reshape is a view of a stored buffer (a matmul operand is stored" in text
    assert "a reshape is a view of a stored buffer (the reshape is a result)" in text


def test_an_mlp_training_step_takes_a_few_kernels_per_layer():
    x, labels = dlc.input("x", ("B", 32)), dlc.input("labels", ("B",), "int64")
    rng = np.random.default_rng(0)
    params = []
    h = x
    for n_in, n_out in [(32, 64), (64, 64), (64, 10)]:
        w = dlc.param(rng.standard_normal((n_in, n_out)) * 0.1)
        b = dlc.param(np.zeros(n_out))
        params += [w, b]
        h = h @ w + b
        if n_out != 10:
            h = dlc.relu(h)
    loss = -dlc.mean(dlc.sum(dlc.log_softmax(h) * dlc.one_hot(labels, 10), axis=1))
    grads = dlc.grad(loss, params)
    fn = dlc.compile(loss, inputs=[x, labels], updates={p: p - 0.1 * g for p, g in zip(params, grads)})
    program = optimize(fn.outputs, fn.updates, fn.inputs)
    check_program(program)
    ops = sum(1 for n in fn.graph.nodes if n.inputs)
    assert len(program.kernels) <= 20, str(program)
    assert len(program.kernels) * 3 <= ops
    # one step through the fused program equals one step of the reference
    X, Y = rng.standard_normal((16, 32)).astype(np.float32), rng.integers(0, 10, 16)
    feeds, env, _ = fn.signature.bind((X, Y), {})
    (got_loss,), got_updates = program_results(program, feeds, fn.store, env)
    ref = evaluate(fn.graph.nodes, feeds, fn.store, env)
    np.testing.assert_allclose(got_loss, ref[id(fn.outputs[0])], rtol=1e-5)
    for (_, value), (_, node) in zip(got_updates, fn.updates):
        np.testing.assert_allclose(value, ref[id(node)], rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------
# each refusal, with its reason


def refusals(outputs, inputs, **options):
    return "\n".join(fused(outputs, inputs, **options).refusals)


def test_refuses_to_fuse_a_reduction_broadcast_back_over_its_axis():
    x = dlc.input("x", ("B", 8))
    assert "reduce output is broadcast back over the reduced axis" in refusals([dlc.softmax(x)], [x])


def test_refuses_a_merge_that_would_make_the_group_non_convex():
    x, w = dlc.input("x", ("B", 8)), dlc.input("w", (8, 8))
    a = dlc.exp(x)
    y = a + dlc.tanh(a @ w)
    assert "would make the group non-convex" in refusals([y], [x, w])


def test_refuses_beyond_the_group_size_cap():
    x = dlc.input("x", ("B", 8))
    y = x
    for _ in range(10):
        y = dlc.tanh(y)
    p = fused([y], [x], max_group=4)
    assert "group size cap (4 nodes) reached" in "\n".join(p.refusals)
    assert len(p.kernels) == 3 and all(len(k.nodes) <= 4 for k in p.kernels)


def test_refuses_to_recompute_a_costly_value_in_several_kernels():
    x, w = dlc.input("x", ("B", 8)), dlc.input("w", (8, 8))
    e = dlc.exp(x)
    assert "too costly to recompute" in refusals([dlc.sum(e, axis=0), dlc.sum(e, axis=1)], [x, w])


def test_refuses_to_recompute_a_cheap_value_in_too_many_kernels():
    x, w = dlc.input("x", ("B", 8)), dlc.input("w", (8, 8))
    c = x * 2.0
    outs = [dlc.sum(dlc.tanh(c + float(i)), axis=1) for i in range(2, 8)]
    assert "more than 4 recomputations" in refusals(outs, [x, w])


def test_refuses_to_fuse_into_a_reshape_or_an_opaque_op():
    x, idx = dlc.input("x", (8, 4)), dlc.input("idx", (3,), "int64")
    text = refusals([dlc.reshape(dlc.tanh(x), (32,)), dlc.take(dlc.exp(x), idx)], [x, idx])
    assert "a reshape is a view of a stored buffer" in text
    assert "take is opaque: its operands are stored" in text


def test_refuses_non_transpose_matmul_operands_and_two_anchors():
    x, w, v = dlc.input("x", ("B", 8)), dlc.input("w", (8, 8)), dlc.input("v", (8, 8))
    text = refusals([dlc.relu(x) @ w + x @ v], [x, w, v])
    assert "a matmul operand is stored (only a transpose of its last two axes fuses into it)" in text
    assert "matmul and matmul are both anchors: one per kernel" in text


def test_refuses_a_consumer_over_another_output_space_or_through_a_remap():
    x, w = dlc.input("x", (8, 8)), dlc.input("w", (8, 8))
    a = x @ w
    text = refusals([dlc.transpose(a) + a, dlc.tanh(a[:, 0:2])], [x, w])
    assert "consumer reads the value through an index remap" in text
    assert "consumer iterates (8, 2), producer's kernel (8, 8)" in text


@pytest.mark.parametrize("duplicate", [True, False])
def test_duplicate_false_stores_every_shared_value(duplicate):
    x, w = dlc.input("x", ("B", 8)), dlc.input("w", (8, 8))
    h = x * 2.0
    p = fused([dlc.relu(h) @ w, dlc.sum(h, axis=1)], [x, w], duplicate=duplicate)
    stored = {n.op for k in p.kernels for n in k.outputs}
    assert ("mul" in stored) == (not duplicate)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_gradients_of_random_graphs_fuse_and_match_the_reference(case):
    # backward graphs bring broadcast_to + sum, where(x > 0, g, 0) and transposed products
    outputs, inputs, arrays, env = case
    loss = sum(dlc.sum(dlc.Tensor(o) * dlc.Tensor(o)) for o in outputs)
    grads = dlc.grad(loss, [dlc.Tensor(n) for n in inputs])
    nodes = [g.node for g in grads]
    want, feeds = reference_outputs(nodes, inputs, arrays, env)
    program = optimize(nodes, [], inputs)
    check_program(program)
    got, _ = program_results(program, feeds, {}, env)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_independent_scalar_arithmetic_shares_one_kernel():
    # an optimizer's bias corrections and step size: small values read by many kernels
    t, lr = dlc.input("t", ()), dlc.input("lr", (), "float64")
    x = dlc.input("x", ("B", 8))
    c1, c2, step = 1.0 - dlc.pow(0.9, t + 1.0), 1.0 - dlc.pow(0.999, t + 1.0), dlc.cast(lr, "float32")
    outs = [(dlc.sum(x * float(i), axis=1) * c1 + step) / c2 for i in range(1, 7)]
    p = fused(outs, [t, lr, x])
    scalar = [k for k in p.kernels if k.outputs[0].shape == ()]
    assert len(scalar) == 1 and len(scalar[0].outputs) >= 3


@pytest.mark.parametrize("reassociate", [True, False])
def test_every_sample_program_fuses_plans_and_runs_kernel_by_kernel(reassociate):
    # the backends' sample programs: scan, random numbers, gathers, float64 and integers, training steps
    import cuda_samples

    from dlc.passes import plan_memory
    from dlc.passes.memory import check_plan

    for build in cuda_samples.SAMPLES:
        s = build()
        fn = s.compile("reference")
        feeds, env, _ = fn.signature.bind(tuple(s.args), {})
        program = optimize(fn.outputs, fn.updates, fn.inputs, reassociate=reassociate)
        check_program(program)
        check_plan(program, plan_memory(program, env))
        snapshot = {k: v.copy() for k, v in fn.store.items()}
        outs, updates = program_results(program, feeds, snapshot, env)
        results = list(fn.outputs) + [n for _, n in fn.updates]
        ref = evaluate(fn.graph.nodes, feeds, snapshot, env, keep={id(n) for n in results})
        for got, node in zip(outs + [v for _, v in updates], results):
            np.testing.assert_allclose(got, ref[id(node)], rtol=1e-4, atol=1e-5, err_msg=s.name)


def test_an_unknown_optimizer_option_is_an_error():
    x = dlc.input("x", (4,))
    with pytest.raises(TypeError, match="unknown optimizer option.s. reasociate; the optimizer takes simplify, fuse"):
        optimize([dlc.tanh(x).node], [], [x.node], reasociate=False)
    with pytest.raises(TypeError, match="reasociate"):
        dlc.compile(dlc.tanh(x), target="cpu", reasociate=False)
