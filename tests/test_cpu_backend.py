"""The numba CPU backend against the numpy reference: every op, fused kernels, and whole training steps.

Tolerances per dtype: float32 results may differ from numpy by a few ulp
(vectorized tanh/exp/sigmoid approximations, float64 accumulation of sums),
so rtol=2e-5 (1e-4 through a GEMM); float64 results agree to rtol=1e-11;
integer and bool results agree exactly. Each case batches several ops into
one compiled function: numba compilation dominates the time of this file.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

import dlc
from dlc import functional as F
from dlc.codegen.numba import DIALECT, PACK_MIN
from dlc.codegen.printer import scalar_text
from dlc.graph import Graph
from dlc.ops import OPS, SOURCE
from dlc.program import Kernel

TOL = {"float32": dict(rtol=2e-5, atol=2e-6), "float64": dict(rtol=1e-11, atol=1e-12)}
GEMM_TOL = {"float32": dict(rtol=1e-4, atol=1e-5), "float64": dict(rtol=1e-10, atol=1e-12)}


def assert_close(got, want, tol=TOL, what=""):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} vs {want.dtype}"
    if got.dtype.kind == "f":
        np.testing.assert_allclose(got, want, err_msg=what, equal_nan=True, **tol[got.dtype.name])
    else:
        np.testing.assert_array_equal(got, want, err_msg=what)


def fresh_store_like(store: dlc.Store) -> dlc.Store:
    """A copy of a store under the same keys: the reference and cpu runs must not share updates."""
    copy = dlc.Store()
    for key, value in store.items():
        copy.add(key, value, store.is_trainable(key))
    return copy


def compare(outputs: dict, feeds: dict, tol=TOL, updates=None, steps=1, **options):
    """Compile outputs for both targets and check every output (and updated parameter) after each step."""
    store = dlc.default_store()
    ref_store = fresh_store_like(store)
    names = list(outputs)
    cpu = dlc.compile([outputs[k] for k in names], updates=updates, target="cpu", **options)
    ref = dlc.compile([outputs[k] for k in names], updates=updates, target="reference", store=ref_store)
    for step in range(steps):
        got, want = cpu(**feeds), ref(**feeds)
        for name, g, w in zip(names, got, want):
            assert_close(g, w, tol, f"{name} (step {step})")
        for key, _ in cpu.updates:
            assert_close(store[key], ref_store[key], tol, f"parameter {key} after step {step}")
    return cpu


def rand(rng, shape, dtype="float32", lo=-2.0, hi=2.0):
    return rng.uniform(lo, hi, size=shape).astype(dtype)


# ----------------------------------------------------------------------------
# cases: (build(rng) -> (outputs, feeds, tol)); the coverage test walks them all


def case_unary(rng, dtype="float32"):
    x = dlc.input("x", ("B", 7), dtype)
    pos = dlc.input("pos", ("B", 7), dtype)
    xs = rand(rng, (5, 7), dtype, -3, 3)
    xs[0, :3] = [0.0, -0.0, 1e-8]
    ps = rand(rng, (5, 7), dtype, 0.1, 3)
    out = {op: F._apply(op, x) for op in ["neg", "abs", "sign", "exp", "tanh", "sigmoid", "relu", "gelu_tanh",
                                            "gelu_erf", "erf", "softplus", "sin", "cos", "square",
                                            "stop_gradient"]}
    out.update({op: F._apply(op, pos) for op in ["log", "sqrt", "rsqrt"]})
    out["leaky_relu"] = dlc.leaky_relu(x, 0.1)
    out["elu"] = dlc.elu(x, 0.7)
    out["clip"] = dlc.clip(x, -0.5, 1.25)
    return out, {"x": xs, "pos": ps}, TOL


def case_binary(rng, dtype="float32"):
    a = dlc.input("a", ("B", 6), dtype)
    b = dlc.input("b", (6,), dtype)
    p = dlc.input("p", ("B", 6), dtype)
    av, bv, pv = rand(rng, (4, 6), dtype), rand(rng, (6,), dtype, 0.5, 2), rand(rng, (4, 6), dtype, 0.1, 2)
    bv[0] = av[0, 0]
    out = {"add": a + b, "sub": a - b, "mul": a * b, "div": a / b, "pow": dlc.pow(p, b),
           "maximum": dlc.maximum(a, b), "minimum": dlc.minimum(a, b), "where": dlc.where(a > b, a, b * 2.0)}
    for op in ["eq", "ne", "lt", "le", "gt", "ge"]:
        out[op] = F._apply(op, a, b)
    out["logical"] = dlc.logical_or(dlc.logical_and(a > 0, b > 1), dlc.logical_not(a < -1))
    out["cast_int"] = dlc.cast(a * 3.0, "int32")
    out["cast_bool"] = dlc.cast(a, "bool")
    return out, {"a": av, "b": bv, "p": pv}, TOL


def case_integer(rng):
    i = dlc.input("i", ("B", 5), "int64")
    j = dlc.input("j", ("B", 5), "int32")
    iv = rng.integers(-9, 9, size=(3, 5))
    jv = rng.integers(-9, 9, size=(3, 5)).astype(np.int32)
    jv[0, 0] = 0  # floor division by zero gives 0, as numpy does
    out = {"add": i + 3, "floordiv": j / dlc.cast(dlc.abs(i) + 1, "int32"), "div0": j / j, "max": dlc.maximum(i, 2),
           "sum": dlc.sum(i, axis=1), "prod": dlc.prod(j, axis=0), "argmax": dlc.argmax(i, axis=1),
           "to_float": dlc.cast(j, "float32") * 0.5, "clip": dlc.clip(i, -2, 4), "neg": -j, "square": dlc.square(i)}
    return out, {"i": iv, "j": jv}, TOL


REDUCE_AXES = [(0,), (2,), (0, 2), (1,), (0, 1, 2)]


def case_reduce(rng, dtype="float32"):
    x = dlc.input("x", ("B", 4, 6), dtype)
    xv = rand(rng, (3, 4, 6), dtype)
    xv[1, 2, 3] = xv[1, 2, 4]  # a tie: argmax takes the first
    out = {}
    # each op over a different set of axes: every loop shape is met without compiling all pairs
    for k, op in enumerate(["sum", "prod", "max", "min"]):
        axes = REDUCE_AXES[k]
        out[f"{op}{axes}"] = F._apply(op, x, axes=axes, keepdims=k % 2 == 1)
    out["sum_all"] = dlc.sum(x)
    for k, op in enumerate(["argmax", "argmin"]):
        out[f"{op}{k}"] = F._apply(op, x, axes=(2 * k,), keepdims=k == 1)
    if dtype == "float32":
        out["softmax"] = dlc.softmax(x, axis=-1)
        out["log_softmax"] = dlc.log_softmax(x, axis=1)
        out["var"] = dlc.var(x, axis=(0, 2))
    return out, {"x": xv}, TOL


def case_shape(rng, dtype="float32"):
    x = dlc.input("x", ("B", 3, 4), dtype)
    y = dlc.input("y", (3, 4), dtype)
    xv, yv = rand(rng, (2, 3, 4), dtype), rand(rng, (3, 4), dtype)
    out = {
        "transpose": dlc.transpose(x, (2, 0, 1)) * 2.0,
        "broadcast_to": dlc.broadcast_to(y, (2, 3, 4)) + 1.0,
        "slice": dlc.slice_(x, (0, 1, 0), (None, 3, None), (1, 1, 2)),
        "slice_neg": dlc.slice_(y, (2, 3), (None, None), (-1, -2)),
        "concat": dlc.concat([y, y * 2.0, dlc.exp(y)], axis=1),
        "concat0": dlc.concat([y, -y], axis=0),
        "pad": dlc.pad(x, ((0, 0), (1, 2), (0, 1)), value=-1.5),
        "reshape": dlc.reshape(dlc.exp(x), ("B", 12)) + 1.0,
        "reshape_mid": dlc.reshape(dlc.reshape(y, (12,)) * 2.0, (4, 3)),
        "stack": dlc.stack([y, y + 1.0], axis=2),
        "getitem": x[:, 1:, ::2],
    }
    out["slice_grad"] = F._apply("slice_grad", dlc.slice_(y, (1, 0), (3, None), (1, 2)) * 3.0,
                                   begin=(1, 0), end=(3, None), step=(1, 2), shape=(3, 4))
    return out, {"x": xv, "y": yv}, TOL


def case_take(rng, dtype="float32"):
    table = dlc.input("table", (5, 3), dtype)
    idx = dlc.input("idx", ("B",), "int64")
    g = dlc.input("g", ("B", 3), dtype)
    out = {"take": dlc.take(table, idx, axis=0), "take1": dlc.take(table, dlc.clip(idx, 0, 2), axis=1),
           "take_grad": F._apply("take_grad", g, idx, axis=0, shape=(5, 3)),
           "one_hot": dlc.one_hot(idx, 5, ignore_index=-1)}  # -1: a valid take index, an ignored label
    return out, {"table": rand(rng, (5, 3), dtype), "idx": np.array([0, 4, 4, -1]), "g": rand(rng, (4, 3), dtype)}, TOL


def case_matmul(rng, dtype="float32"):
    a = dlc.input("a", ("B", 5), dtype)
    w = dlc.input("w", (5, 3), dtype)
    bias = dlc.input("bias", (3,), dtype)
    t = dlc.input("t", ("B", 2, 5), dtype)
    v = dlc.input("v", (2, 5, 4), dtype)
    av, wv, bv = rand(rng, (6, 5), dtype), rand(rng, (5, 3), dtype), rand(rng, (3,), dtype)
    tv, vv = rand(rng, (6, 2, 5), dtype), rand(rng, (2, 5, 4), dtype)
    out = {"dense": dlc.relu(a @ w + bias), "at_a": dlc.transpose(a) @ a, "a_wt": a @ dlc.transpose(dlc.transpose(w)),
           "w_wt": w @ dlc.transpose(w),
           "batched": t @ v[0], "bcast": dlc.transpose(t, (1, 0, 2)) @ v, "bT": t @ dlc.swapaxes(t, 1, 2)}
    return out, {"a": av, "w": wv, "bias": bv, "t": tv, "v": vv}, GEMM_TOL


def case_conv_pool(rng, dtype="float32"):
    x = dlc.input("x", ("B", 2, 7, 7), dtype)
    w = dlc.param(rand(rng, (3, 2, 3, 3), dtype) * 0.3, name="w", dtype=dtype)
    wt = dlc.param(rand(rng, (3, 2, 2, 2), dtype) * 0.3, name="wt", dtype=dtype)
    y = dlc.conv2d(x, w, padding=1, stride=1)
    z = dlc.max_pool2d(dlc.relu(y), 2, 2) + dlc.avg_pool2d(y, 2, 2)
    pooled = dlc.adaptive_avg_pool2d(z, (2, 2))
    loss = dlc.sum(pooled * pooled) + dlc.sum(dlc.conv_transpose2d(y, wt, stride=2))
    gw, gx = dlc.grad(loss, [w, x])
    return {"y": y, "z": z, "loss": loss, "gw": gw, "gx": gx}, {"x": rand(rng, (2, 2, 7, 7), dtype)}, GEMM_TOL


def case_random(rng):
    x = dlc.input("x", ("B", 8), "float32")
    step = dlc.input("step", (), "int64")
    out = {"uniform": dlc.random_uniform(x, 7, step, -1.0, 2.0), "normal": dlc.random_normal(x, 3, step),
           "normal64": dlc.random_normal((5,), 3, step, dtype="float64"),
           "bernoulli": dlc.random_bernoulli(x, 0.3, 11, step), "dropout": dlc.dropout(x, 0.5, 5, step) * 2.0}
    return out, {"x": rand(rng, (6, 8)), "step": np.array(3)}, {"float32": dict(rtol=0, atol=0),
                                                               "float64": dict(rtol=0, atol=0)}


def case_scan(rng):
    xs = dlc.input("xs", ("T", 2, 3), "float32")
    w = dlc.param(rand(rng, (3, 3)) * 0.5, name="w_rnn")

    def body(h, x):
        h = dlc.tanh(x + h @ w)
        return h, h * 2.0

    h, ys = dlc.scan(body, dlc.constant(np.zeros((2, 3), np.float32)), xs)
    loss = dlc.sum(ys) + dlc.sum(h)
    (gw,) = dlc.grad(loss, [w])
    return {"h": h, "ys": ys, "gw": gw}, {"xs": rand(rng, (4, 2, 3))}, GEMM_TOL


def case_collective(rng):
    """MPI collectives in a world of one rank (the identity): host calls between native segments, and their grads."""
    from dlc import distributed as D

    x = dlc.input("x", (4, 3), "float32")
    w = dlc.param(rand(rng, (4, 3)), name="w_collective")
    h = D.all_reduce(dlc.tanh(x * w), "mean")
    h = D.all_reduce(D.broadcast(h, 0) * 2.0, "sum", after=h)
    y = D.reduce_scatter(D.all_gather(D.reduce(h, 0)))
    loss = dlc.sum(y * x)
    (gw,) = dlc.grad(loss, [w])
    # gradient buckets of 48 bytes: two reductions split into start and wait, with work between them
    g1, g2 = D.average_gradients([gw * 2.0, dlc.tanh(gw)], bucket_bytes=48)
    return {"y": y, "loss": loss, "gw": gw, "g1": g1, "g2": g2}, {"x": rand(rng, (4, 3))}, TOL


def case_attention(rng, dtype="float64"):
    """Fused attention and its gradient ops: over 7 keys (attention_grad_q and attention_grad_kv) with a boolean
    mask and causal, and with an additive one; self-attention of q (attention_grad) with an additive mask."""
    q = dlc.input("q", ("B", 2, 5, 4), dtype)
    k = dlc.input("k", ("B", 2, 7, 4), dtype)
    v = dlc.input("v", ("B", 2, 7, 3), dtype)
    keep = rand(rng, (5, 7)) > -1.0
    keep[:, 0] = True  # every query keeps a key
    bias = rand(rng, (2, 1, 7), dtype)
    y = dlc.scaled_dot_product_attention(q, k, v, mask=keep, causal=True)
    z = dlc.scaled_dot_product_attention(q, k, v, mask=bias, scale=0.7)
    s = dlc.scaled_dot_product_attention(q, dlc.sin(q), dlc.tanh(q), mask=rand(rng, (5, 5), dtype))
    loss = dlc.sum(y * y) + dlc.sum(dlc.tanh(z)) + dlc.sum(s * s)
    gq, gk, gv = dlc.grad(loss, [q, k, v])
    feeds = {"q": rand(rng, (3, 2, 5, 4), dtype), "k": rand(rng, (3, 2, 7, 4), dtype),
             "v": rand(rng, (3, 2, 7, 3), dtype)}
    return {"y": y, "z": z, "s": s, "gq": gq, "gk": gk, "gv": gv}, feeds, GEMM_TOL


def case_layer_norm(rng, dtype="float64"):
    """Fused layer normalization over one and over two trailing dims, with an affine and a residual epilogue,
    and its gradient op."""
    x = dlc.input("x", ("B", 3, 4, 5), dtype)
    w, b = rand(rng, (4, 5), dtype) + 1.5, rand(rng, (5,), dtype)
    y = dlc.layer_norm(x, (4, 5), dlc.constant(w, dtype), dlc.constant(b, dtype)) + x
    z = dlc.layer_norm(dlc.tanh(x), 5, eps=1e-3)
    loss = dlc.sum(y * y) + dlc.sum(z * dlc.sin(x))
    (gx,) = dlc.grad(loss, [x])
    return {"y": y, "z": z, "gx": gx}, {"x": rand(rng, (2, 3, 4, 5), dtype) * 3.0 + 1.0}, TOL


def case_depthwise_separable(rng, dtype="float32"):
    """Inference through a depthwise conv (biased, strided) and two pointwise convs: the layout pass runs them
    channels last (conv2d_nhwc), with one transpose in and one out."""
    x = dlc.input("x", ("B", 4, 7, 7), dtype)
    dw = dlc.param(rand(rng, (4, 1, 3, 3), dtype), name="dw", dtype=dtype)
    b = dlc.param(rand(rng, (4,), dtype), name="dw_b", dtype=dtype)
    pw1 = dlc.param(rand(rng, (6, 4, 1, 1), dtype) * 0.5, name="pw1", dtype=dtype)
    pw2 = dlc.param(rand(rng, (3, 6, 1, 1), dtype) * 0.5, name="pw2", dtype=dtype)
    h = dlc.relu(dlc.conv2d(x, dw, b, stride=2, padding=1, groups=4))
    y = dlc.conv2d(dlc.tanh(dlc.conv2d(h, pw1)), pw2)
    return {"y": y}, {"x": rand(rng, (2, 4, 7, 7), dtype)}, GEMM_TOL


CASES = {"unary32": case_unary, "unary64": lambda rng: case_unary(rng, "float64"), "binary32": case_binary,
         "binary64": lambda rng: case_binary(rng, "float64"), "integer": case_integer, "reduce32": case_reduce,
         "reduce64": lambda rng: case_reduce(rng, "float64"), "shape": case_shape, "take": case_take,
         "matmul32": case_matmul, "matmul64": lambda rng: case_matmul(rng, "float64"), "conv_pool": case_conv_pool,
         "random": case_random, "scan": case_scan, "collective": case_collective,
         "attention": case_attention, "attention32": lambda rng: case_attention(rng, "float32"),
         "layer_norm": case_layer_norm, "layer_norm32": lambda rng: case_layer_norm(rng, "float32"),
         "depthwise_separable": case_depthwise_separable}


@pytest.mark.parametrize("name", list(CASES))
def test_ops_match_reference(name, rng):
    outputs, feeds, tol = CASES[name](rng)
    compare(outputs, feeds, tol)


@pytest.mark.parametrize("name, lo, hi, atol, rtol", [
    ("erf", -6.0, 6.0, 5e-7, 5e-7), ("tanh", -12.0, 12.0, 2e-7, 2e-7), ("exp", -87.0, 88.72, 0.0, 4e-7),
    ("gelu_erf", -8.0, 8.0, 1.5e-6, 5e-7), ("sigmoid", -30.0, 30.0, 1e-7, 5e-7),
    ("softplus", -80.0, 80.0, 1e-7, 5e-7)])
def test_float32_approximations_on_a_dense_grid(name, lo, hi, atol, rtol):
    """The vectorized float32 forms (kernels/cpu/fastmath.py) against float64 numpy/scipy on 200,001 points,
    tiny arguments, the infinities and NaN."""
    from scipy import special
    exact = {"erf": special.erf, "tanh": np.tanh, "exp": np.exp, "sigmoid": special.expit,
             "gelu_erf": lambda v: v * special.ndtr(v), "softplus": lambda v: np.logaddexp(0, v)}[name]
    grid = np.concatenate([np.linspace(lo, hi, 200_001), [1e-30, -1e-20, 1e-8, 0.0, -0.0]]).astype(np.float32)
    x = dlc.input("x", (grid.size,), "float32")
    got = dlc.compile(F._apply(name, x), target="cpu")(grid)
    want = exact(grid.astype(np.float64))
    np.testing.assert_allclose(got, want, atol=atol, rtol=rtol)
    specials = np.array([np.inf, -np.inf, np.nan], np.float32)  # as the reference executor's formula gives them
    y = F._apply(name, dlc.input("s", (3,), "float32"))
    with np.errstate(invalid="ignore"):  # gelu(+-inf) is inf * 0 in the formula: NaN, as PyTorch's
        np.testing.assert_array_equal(dlc.compile(y, target="cpu")(specials), dlc.compile(y)(specials))


def test_unfused_kernels_match_reference(rng):
    """One kernel per op: single-node lowerings (remaps, reductions, GEMM) without fusion around them."""
    x = dlc.input("x", ("B", 3, 4))
    w = dlc.input("w", (4, 2))
    xv, wv = rand(rng, (2, 3, 4)), rand(rng, (4, 2))
    out = {"transpose": dlc.transpose(x, (2, 0, 1)), "pad": dlc.pad(x, ((0, 0), (1, 0), (0, 2))),
           "max": dlc.max(x, axis=1), "matmul": x @ w, "tanh": dlc.tanh(x)}
    compare(out, {"x": xv, "w": wv}, GEMM_TOL, fuse=False)


def test_every_op_is_covered(rng):
    """A new op fails here until a case above runs it on the cpu backend: an op of the user's graph, or one the
    cpu target's optimizer makes (conv2d_nhwc)."""
    from dlc import passes

    seen = set()
    for build in CASES.values():
        dlc.reset_default_store()
        outputs, _, _ = build(rng)
        roots = [t.node for t in outputs.values()]
        for n in Graph(roots).nodes + passes.optimize(roots, [], [], channels_last=True).graph.nodes:
            seen.add(n.op)
            body = n.attr("body")
            if body is not None and hasattr(body, "outputs"):
                seen.update(m.op for m in Graph(list(body.outputs)).nodes)
    missing = sorted(op for op, d in OPS.items() if d.kind != SOURCE and op not in seen)
    assert not missing, f"ops without a cpu backend test: {missing}"


def test_every_template_renders():
    """Each elementwise op's scalar template maps to numba code for every dtype it accepts."""
    for op, d in OPS.items():
        if d.kind != "elementwise":
            continue
        for dtype in ("float32", "float64"):
            x = dlc.input("x", (2,), dtype).node
            from dlc.graph import Node

            node = Node(op, (x,) * op_arity(op), tuple(sorted({"alpha": 0.5, "lo": 0.0, "hi": 1.0,
                                                               "dtype": dtype}.items())), (2,), dtype)
            text = scalar_text(node, ["a", "b", "c"][:op_arity(op)], DIALECT)
            assert "{" not in text and text.count("(") == text.count(")"), (op, text)


def op_arity(op):
    return 3 if op == "where" else 2 if OPS[op].scalar and "{1}" in OPS[op].scalar else 1


# ----------------------------------------------------------------------------
# fusion patterns, hand-built kernels and the debug hook


def test_fused_kernel_kinds_and_in_place_epilogue(rng):
    x = dlc.input("x", ("B", 8))
    w = dlc.param(rand(rng, (8, 16)), name="w")
    b = dlc.param(rand(rng, (16,)), name="b")
    h = dlc.gelu(x @ w + b)                                   # GEMM + bias + activation epilogue
    s = dlc.softmax(h * 2.0, axis=-1)                        # reduce with prologue and epilogue
    t = dlc.sum(dlc.transpose(h) * dlc.exp(h).T, axis=0)     # elementwise group with remaps into a reduce
    fn = compare({"h": h, "s": s, "t": t}, {"x": rand(rng, (5, 8))}, GEMM_TOL)
    kinds = {k.kind for k in fn.backend.program.kernels}
    assert {"complex", "reduce"} <= kinds


def test_hand_built_multi_node_kernels(rng):
    """Kernels as fusion may build them: remaps inside an elementwise group, a reduce with both ends fused."""
    from dlc.passes import plan_memory, unfused_program
    from dlc.runtime.cpu import CPUBackend

    x = dlc.input("x", ("B", 3, 4))
    y = dlc.input("y", (4, 3))
    e = dlc.exp(dlc.transpose(x, (0, 2, 1)))                 # (B, 4, 3)
    z = dlc.pad(e + y, ((0, 0), (1, 0), (0, 2)), value=0.5)   # (B, 5, 5)
    m = dlc.max(z * z, axis=2)                                # (B, 5)
    out = dlc.sqrt(m + 1.0)
    fn = dlc.compile([z, out], target="reference")
    base = unfused_program(fn.outputs, [], fn.inputs)
    ew_nodes = tuple(n for n in base.graph.nodes if n.op in ("transpose", "exp", "add", "pad"))
    red_nodes = tuple(n for n in base.graph.nodes if n.op in ("mul", "max", "sqrt") or
                      (n.op == "add" and n.inputs[0].op == "max"))
    red_nodes = tuple(n for n in base.graph.nodes if n in red_nodes)
    anchor = next(n for n in red_nodes if n.op == "max")
    z_node, out_node = fn.outputs
    kernels = [Kernel("k0", "elementwise", ew_nodes, (x.node, y.node), (z_node,)),
               Kernel("k1", "reduce", red_nodes, (z_node,), (out_node,), anchor)]
    prog = type(base)(base.graph, kernels, list(fn.inputs), [z_node, out_node], [], {}, planner=plan_memory)

    class Fn:  # what CPUBackend reads of a compiled function
        outputs, updates, inputs, store = [z_node, out_node], [], list(fn.inputs), dlc.default_store()

    backend = CPUBackend(Fn, prog)
    xv, yv = rand(rng, (2, 3, 4)), rand(rng, (4, 3))
    feeds = {id(x.node): xv, id(y.node): yv}
    got = backend.run(feeds, {"B": 2})
    want = fn(xv, yv)
    for g, w in zip(got, want):
        assert_close(g, w)
    values = backend.kernel_values(feeds, {"B": 2})
    assert_close(values[id(z_node)], want[0])
    assert_close(values[id(out_node)], want[1])


def test_kernel_values_debug_hook(rng):
    x = dlc.input("x", ("B", 4))
    w = dlc.param(rand(rng, (4, 4)), name="w")
    y = dlc.tanh(x @ w) * 3.0
    z = dlc.sum(y, axis=1)
    fn = dlc.compile([y, z], target="cpu")
    xv = rand(rng, (3, 4))
    values = fn.backend.kernel_values({id(fn.inputs[0]): xv}, {"B": 3})
    ref = dlc.compile([y, z], target="reference")(xv)
    prog = fn.backend.program
    assert set(values) == {id(n) for k in prog.kernels for n in k.outputs if n.op != "size"}
    assert_close(values[id(prog.outputs[1])], ref[1], GEMM_TOL)


# ----------------------------------------------------------------------------
# training steps against the reference


@pytest.mark.parametrize("sizes", [[12, 16, 16, 5], [12, 16, 16, 16, 16, 5]], ids=["arguments", "addresses"])
def test_mlp_training_steps_with_momentum(rng, sizes):
    """Updated in place over three steps; with PACK_MIN or more parameters the outer functions read them by
    address, and the store's arrays stay the ones the kernels write."""
    x = dlc.input("x", ("B", 12))
    labels = dlc.input("labels", ("B",), "int64")
    params, updates = [], {}
    for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:])):
        params.append(dlc.param(rand(rng, (m, n)) * 0.4, name=f"w{i}"))
        params.append(dlc.param(np.zeros(n), name=f"b{i}"))
    h = x
    for i in range(0, len(params), 2):
        h = h @ params[i] + params[i + 1]
        if i < len(params) - 2:
            h = dlc.relu(h)
    loss = -dlc.mean(dlc.sum(dlc.log_softmax(h) * dlc.one_hot(labels, 5), axis=1))
    grads = dlc.grad(loss, params)
    for p, g in zip(params, grads):
        v = dlc.param(np.zeros(p.shape), name="v_" + p.node.attr("name"))
        v_new = 0.9 * v + g
        updates[v] = v_new
        updates[p] = p - 0.05 * v_new
    feeds = {"x": rand(rng, (8, 12)), "labels": rng.integers(0, 5, size=8)}
    fn = compare({"loss": loss}, feeds, GEMM_TOL, updates=updates, steps=3)
    addressed = len(fn.backend.generated.addressed)
    assert addressed == (4 * (len(sizes) - 1) if 4 * (len(sizes) - 1) >= PACK_MIN else 0)
    arrays = {k: fn.store[k] for k in fn.store.keys()}
    # a new batch size reuses the compiled code: a new memory plan only
    compiled = fn.backend.stats["numba_compile_s"]
    fn(x=rand(rng, (3, 12)), labels=rng.integers(0, 5, size=3))
    assert len(fn.backend._plans) == 2
    assert fn.backend.stats["numba_compile_s"] == compiled
    assert all(fn.store[k] is a for k, a in arrays.items())
    # a value assigned between calls is what the next call reads
    fn.store["w0"] = rand(rng, (12, 16))
    want = dlc.compile(loss, inputs=[x, labels], target="reference", store=fresh_store_like(fn.store))(**feeds)
    assert_close(np.asarray(fn(**feeds)[0]), np.asarray(want), GEMM_TOL, "loss after assigning w0")


def test_cnn_training_steps(rng):
    x = dlc.input("x", ("B", 1, 8, 8))
    labels = dlc.input("labels", ("B",), "int64")
    w1 = dlc.param(rand(rng, (4, 1, 3, 3)) * 0.5, name="c1")
    b1 = dlc.param(np.zeros(4), name="cb1")
    w2 = dlc.param(rand(rng, (4 * 3 * 3, 3)) * 0.3, name="fc")
    h = dlc.max_pool2d(dlc.relu(dlc.conv2d(x, w1, b1)), 2)     # (B, 4, 3, 3)
    logits = dlc.reshape(h, ("B", 36)) @ w2
    loss = -dlc.mean(dlc.sum(dlc.log_softmax(logits) * dlc.one_hot(labels, 3), axis=1))
    params = [w1, b1, w2]
    grads = dlc.grad(loss, params)
    feeds = {"x": rand(rng, (4, 1, 8, 8)), "labels": rng.integers(0, 3, size=4)}
    compare({"loss": loss}, feeds, GEMM_TOL, updates={p: p - 0.1 * g for p, g in zip(params, grads)}, steps=2)


def test_gan_alternating_steps(rng):
    z = dlc.input("z", ("B", 4))
    real = dlc.input("real", ("B", 2))
    g_w = dlc.param(rand(rng, (4, 2)) * 0.5, name="g_w")
    d_w = dlc.param(rand(rng, (2, 1)) * 0.5, name="d_w")
    d_b = dlc.param(np.zeros(1), name="d_b")
    fake = dlc.tanh(z @ g_w)

    def disc(v):
        return dlc.sigmoid(v @ d_w + d_b)

    eps = 1e-6
    d_loss = -dlc.mean(dlc.log(disc(real) + eps) + dlc.log(1.0 - disc(fake) + eps))
    g_loss = -dlc.mean(dlc.log(disc(fake) + eps))
    gd = dlc.grad(d_loss, [d_w, d_b])
    (gg,) = dlc.grad(g_loss, [g_w])
    store, ref_store = dlc.default_store(), None
    ref_store = fresh_store_like(store)
    d_up = {d_w: d_w - 0.1 * gd[0], d_b: d_b - 0.1 * gd[1]}
    g_up = {g_w: g_w - 0.1 * gg}
    cpu_d = dlc.compile(d_loss, updates=d_up, target="cpu")
    cpu_g = dlc.compile(g_loss, inputs=[z], updates=g_up, target="cpu")
    ref_d = dlc.compile(d_loss, updates=d_up, store=ref_store)
    ref_g = dlc.compile(g_loss, inputs=[z], updates=g_up, store=ref_store)
    for step in range(3):
        zv, rv = rand(rng, (6, 4)), rand(rng, (6, 2))
        assert_close(cpu_d(zv, rv), ref_d(zv, rv), GEMM_TOL, f"d_loss step {step}")
        assert_close(cpu_g(zv), ref_g(zv), GEMM_TOL, f"g_loss step {step}")
    for key in ("g_w", "d_w", "d_b"):
        assert_close(store[key], ref_store[key], GEMM_TOL, key)


# ----------------------------------------------------------------------------
# generated code, caching and logging


def test_generated_code_is_dumped_and_commented(tmp_path, rng):
    x = dlc.input("x", ("B", 3))
    y = dlc.exp(x) * 2.0
    fn = dlc.compile(y, target="cpu", dump=str(tmp_path))
    files = list(tmp_path.glob("*.py"))
    assert len(files) == 1
    text = files[0].read_text()
    assert "test_cpu_backend.py:" in text and "exp_f32(" in text and "def segment" in text
    assert_close(fn(rand(rng, (2, 3))).shape, np.zeros((2, 3)).shape)


def test_identical_kernels_are_generated_once(rng):
    x = dlc.input("x", ("B", 4))
    a = dlc.param(rand(rng, (4,)), name="a")
    b = dlc.param(rand(rng, (3, 5)), name="b")
    # two updates of the same form on buffers of different shapes render to one function (a flat kernel's
    # length is read from S)
    fn = dlc.compile(dlc.sum(x), updates={a: a * 0.5 + 1.0, b: b * 0.5 + 1.0}, target="cpu", fuse=False)
    stats = fn.backend.stats
    assert stats["distinct_kernels"] < stats["kernels"]
    assert "def k_" in fn.backend.source()  # emitted once as a function, called twice
    a0, b0 = dlc.default_store()["a"].copy(), dlc.default_store()["b"].copy()
    xv = rand(rng, (2, 4))
    assert_close(fn(xv), xv.sum(dtype=np.float32))
    assert_close(dlc.default_store()["a"], a0 * np.float32(0.5) + np.float32(1.0))
    assert_close(dlc.default_store()["b"], b0 * np.float32(0.5) + np.float32(1.0))


def test_numpy_fallback_is_logged_once(caplog, rng):
    """An op with no native lowering runs through its numpy reference, correctly, and says so once."""
    from dlc.ops.base import OPAQUE, OPS, apply, register
    from dlc.runtime import cpu

    register("test_fallback_twice", OPAQUE, lambda xs, a: (xs[0].shape, xs[0].dtype),
             lambda xs, a, shape: xs[0] * 2)
    try:
        x = dlc.input("x", ("B", 3))
        y = dlc.Tensor(apply("test_fallback_twice", [dlc.exp(x).node])) + x
        cpu._FALLBACK_LOGGED.discard("test_fallback_twice")
        with caplog.at_level(logging.INFO, logger="dlc"):
            fn = dlc.compile(y, target="cpu")
            dlc.compile(y * 2.0, target="cpu")
        assert fn.backend.stats["fallbacks"]
        assert sum("test_fallback_twice" in r.message for r in caplog.records) == 1
        xv = rand(rng, (4, 3))
        assert_close(fn(xv), 2 * np.exp(xv) + xv)
    finally:
        del OPS["test_fallback_twice"]


def test_parallel_and_fastmath_options(rng):
    """parallel=True splits large elementwise loops over threads; fastmath=True lets LLVM reassociate."""
    from dlc.codegen.numba import PARALLEL_MIN

    x = dlc.input("x", ("N",))
    s = dlc.input("s", (1,))  # one element, read at 0 by every chunk
    y = dlc.gelu(x * 1.5 - 0.25) + dlc.sigmoid(x) * s
    n = PARALLEL_MIN + 3  # above the threshold, and not a multiple of the chunk count
    xv = rand(rng, (n,), lo=-6, hi=6)
    sv = np.array([0.5], np.float32)
    want = dlc.compile(y)(xv, sv)
    par = dlc.compile(y, target="cpu", parallel=True)
    assert "prange" in par.backend.source()
    assert_close(par(xv, sv), want)
    assert_close(par(xv[:5], sv), want[:5])    # below the threshold: one chunk, no threads
    fast = dlc.compile(dlc.sum(y), target="cpu", fastmath=True)
    assert "fastmath=True" in fast.backend.source()
    np.testing.assert_allclose(fast(xv, sv), want.sum(dtype=np.float64), rtol=1e-4)


@pytest.mark.parametrize("batch", ["one", "symbolic"])
def test_parallel_matmul_epilogues_run_in_chunks(rng, batch):
    """parallel=True: a GEMM's epilogue (bias, gelu, an added input) over a large output runs in chunks of its
    first axis longer than 1 (the second when the first is 1) on threads; small outputs take one chunk."""
    from dlc.codegen.numba import PARALLEL_MIN

    rows = PARALLEL_MIN // 64 + 7
    x = dlc.input("x", (1, rows, 32) if batch == "one" else ("B", "T", 32))
    w = dlc.param(rand(rng, (32, 64)), name="w")
    b = dlc.param(rand(rng, (64,)), name="b")
    r = dlc.input("r", (64,))
    y = dlc.gelu(x @ w + b) + r
    par = dlc.compile(y, [x, r], target="cpu", parallel=True)
    (kernel,) = par.program.kernels   # the epilogue fused into the GEMM's kernel
    assert kernel.anchor.op == "matmul" and "in prange(" in par.backend.source()
    want = dlc.compile(y, [x, r], target="reference")
    rv = rand(rng, (64,))
    shapes = [(1, rows, 32)] if batch == "one" else [(1, rows, 32), (3, rows // 2, 32), (2, 5, 32)]
    for shape in shapes:
        xv = rand(rng, shape)
        assert_close(par(xv, rv), want(xv, rv))


def test_forward_conv_tails_run_on_threads_without_parallel(rng):
    """A forward conv's elementwise tail (bias, residual add, ReLU) over an output known to be large runs in
    chunks on threads with parallel=False too; with a symbolic batch, or as the tail of an input gradient, it
    stays one loop. Values against the reference."""
    from dlc.codegen.numba import render_kernel

    w = dlc.param(rand(rng, (16, 8, 3, 3)) * 0.2, name="w")
    b = dlc.param(rand(rng, (16,)), name="b")

    def conv_kernel_threaded(batch):
        x, skip = dlc.input("x", (batch, 8, 32, 32)), dlc.input("skip", (batch, 16, 32, 32))
        y = dlc.relu(dlc.conv2d(x, w, b, padding=1) + skip)
        fn = dlc.compile(y, [x, skip], target="cpu")
        (kernel,) = [k for k in fn.program.kernels if k.anchor is not None and k.anchor.op == "conv2d"]
        want = dlc.compile(y, [x, skip], target="reference")
        for n in ((16,) if batch == 16 else (16, 1)):
            xv, sv = rand(rng, (n, 8, 32, 32)), rand(rng, (n, 16, 32, 32))
            assert_close(fn(xv, sv), want(xv, sv))
        return render_kernel(fn.program, kernel, parallel=False).parallel

    assert conv_kernel_threaded(16)            # 16 x 16 x 32 x 32 outputs
    assert not conv_kernel_threaded("B")
    x, skip = dlc.input("x", (16, 8, 32, 32)), dlc.input("skip", (16, 16, 32, 32))
    gx = dlc.grad(dlc.sum(dlc.relu(dlc.conv2d(x, w, padding=1)) * skip), [x])[0]
    grad_fn = dlc.compile(dlc.relu(gx) * 2.0, [x, skip], target="cpu")
    dgrads = [k for k in grad_fn.program.kernels if k.anchor is not None and k.anchor.op == "conv2d_grad_input"]
    assert dgrads and len(dgrads[0].nodes) > 1, "the input gradient has a tail"
    assert not render_kernel(grad_fn.program, dgrads[0], parallel=False).parallel


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64"])
@pytest.mark.parametrize("n", [7, 16, 37, 128])
def test_last_axis_reductions_in_lanes_match_numpy(dtype, n, rng):
    """sum, prod, max and min over the last axis, with a fused elementwise op before them: rows long enough
    keep a vector of partial results (with a tail of n % lanes elements: 37), short ones one accumulator; NaN
    and infinities in some rows propagate as numpy's do."""
    from dlc.codegen.numba import _row_lanes

    rows = 5
    if dtype.startswith("float"):
        x = rand(rng, (rows, n), dtype, 0.5, 1.5)
        x[1, n // 2] = np.nan
        x[2, n - 1] = np.inf
        x[3, 0] = -np.inf
    else:
        x = rng.integers(-3, 4, (rows, n)).astype(dtype)
    fns = {"sum": (dlc.sum, np.sum), "prod": (dlc.prod, np.prod), "max": (dlc.max, np.max),
           "min": (dlc.min, np.min)}
    xin = dlc.input("x", x.shape, dtype)
    outs = [f(xin * 2, axis=1) for f, _ in fns.values()]
    fn = dlc.compile(outs, [xin], target="cpu")
    reductions = [k for k in fn.program.kernels if k.anchor is not None and k.anchor.op in fns]
    lanes = [_row_lanes(k.anchor.op, k.anchor.inputs[0], (1,), "float64" if k.anchor.op == "sum" and
                        dtype == "float32" else dtype) for k in reductions]
    if n == 128:
        assert all(lanes) and "_part[" in fn.backend.source(), lanes
    if n == 7:
        assert not any(lanes), lanes
    with np.errstate(all="ignore"):
        for got, (_, ref) in zip(fn(x), fns.values()):
            want = ref(x.astype(np.float64) * 2 if dtype == "float32" else x * 2, axis=1)
            np.testing.assert_allclose(got, want.astype(dtype), rtol=1e-6 if dtype == "float32" else 1e-12,
                                       equal_nan=True)


def test_large_gemm_tails_run_on_threads_without_parallel(rng):
    """A GEMM's elementwise tail (bias, GELU) over an output known to have THREADED_GEMM_TAIL_MIN elements or
    more runs in chunks on threads with parallel=False too; a smaller or symbolic output stays one loop. Values
    against the reference, the threaded one with a chunk count that does not divide the rows."""
    from dlc.codegen.numba import THREADED_GEMM_TAIL_MIN, render_kernel

    w = dlc.param(rand(rng, (32, 512)) * 0.2, name="w")
    b = dlc.param(rand(rng, (512,)), name="b")

    def gemm_kernel_threaded(rows):
        x = dlc.input("x", (rows, 32))
        y = dlc.gelu(x @ w + b, approximate="tanh")
        fn = dlc.compile(y, [x], target="cpu")
        (kernel,) = [k for k in fn.program.kernels if k.anchor is not None and k.anchor.op == "matmul"]
        want = dlc.compile(y, [x], target="reference")
        n = rows if isinstance(rows, int) else 37
        xv = rand(rng, (n, 32))
        assert_close(fn(xv), want(xv))
        return render_kernel(fn.program, kernel, parallel=False).parallel

    rows = THREADED_GEMM_TAIL_MIN // 512 + 3
    assert gemm_kernel_threaded(rows)
    assert not gemm_kernel_threaded(rows // 4)
    assert not gemm_kernel_threaded("B")


def test_the_same_graph_renders_the_same_module():
    """Node serials differ between traces; the generated text (hence numba's cache entry) must not."""
    import gc

    def build():
        store = dlc.Store()
        x = dlc.input("x", ("B", 3))
        w = dlc.param(np.ones((3, 2), np.float32), name="w", store=store)
        fn = dlc.compile(dlc.tanh(x @ w), target="cpu", store=store)
        return fn.backend.generated.digest, x.node.serial

    # an equal parameter of another store, created on another line, alive during the first build only: each
    # dlc.param call is its own node, so the first build must not take this one (and its line) for its "w"
    elsewhere = dlc.param(np.ones((3, 2), np.float32), name="w", store=dlc.Store())
    first, serial = build()
    del elsewhere
    gc.collect()
    unrelated = [dlc.input(f"u{i}", (i + 1,)) for i in range(3)]  # shifts every later serial
    second, serial2 = build()
    assert serial2 != serial and unrelated
    assert first == second


def test_take_with_a_constant_index():
    """A one-element constant is a literal inside loops; take reads its index as an array all the same."""
    x = dlc.input("x", (3, 4))
    xv = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = {"row": dlc.take(x, dlc.constant(np.array(1)), 0), "cols": dlc.take(x, dlc.constant(np.array([2, -1])), 1)}
    got = dlc.compile(list(out.values()), target="cpu")(xv)
    assert_close(got[0], xv[1])
    assert_close(got[1], xv[:, [2, -1]])


def test_import_shortens_blas_idle_spin_unless_the_user_chose():
    """import dlc sets OPENBLAS_THREAD_TIMEOUT (BLAS's idle threads would spin ~0.1 s against dlc's kernel threads)
    before scipy's OpenBLAS loads, and leaves a value the user set."""
    import os
    import subprocess
    import sys

    code = "import os, dlc; print(os.environ['OPENBLAS_THREAD_TIMEOUT'])"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert got.stdout.strip() == "20"
    got = subprocess.run([sys.executable, "-c", code], env=dict(env, OPENBLAS_THREAD_TIMEOUT="26"),
                         capture_output=True, text=True, check=True)
    assert got.stdout.strip() == "26"
