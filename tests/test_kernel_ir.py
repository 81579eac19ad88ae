"""The kernel IR: one lowering of a kernel's values, printed as Python for numba and as C for CUDA."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

import dlc
from dlc.codegen import cuda, numba
from dlc.codegen import kernel_ir as ir
from dlc.codegen.lower import LoweringError, NotFlat, Values, variables
from dlc.codegen.printer import CPrinter, PythonPrinter, scalar_text
from dlc.passes import optimize


def only_kernel(outputs, inputs):
    program = optimize([o.node for o in outputs], [], [x.node for x in inputs])
    (kernel,) = [k for k in program.kernels if k.kind in ("elementwise", "injective")]
    return program, kernel


def lower(kernel, names, **options):
    counter = iter(range(1, 1000))
    vals = Values(kernel, lambda kind: f"{kind[0]}{next(counter)}", **options)
    vals.store_all(variables(names))
    return vals.take()


def printers():
    py = PythonPrinter(numba.DIALECT, lambda n, flat: f"A{n.serial}", lambda n: f"S{n.serial}", str,
                       lambda n: n.op, numba.NP_DTYPE)
    c = CPrinter(cuda.DIALECT, lambda n, flat: f"A{n.serial}", lambda n: f"S{n.serial}", str, cuda.C_TYPE,
                 lambda idx, shape: ir.print_index(ir.linear(tuple(idx), shape), ir.C, str), cuda.REDUCE_FUNCTORS)
    return py, c


def padded_concat():
    x = dlc.input("x", (2, 3))
    y = dlc.input("y", (2, 2))
    z = dlc.exp(dlc.concat([dlc.pad(x, ((0, 0), (1, 1))), y * 2.0], axis=1))
    return z, [x, y]


def test_lowering_is_data_and_deterministic():
    """The same kernel lowers to equal statements (frozen dataclasses): renderers key caches on the text."""
    out, inputs = padded_concat()
    _, kernel = only_kernel([out], inputs)
    first, second = lower(kernel, ["i", "j"]), lower(kernel, ["i", "j"])
    assert first == second
    kinds = [type(s).__name__ for s in first]
    assert kinds.count("Select") == 1 and kinds[-1] == "Store"
    (select,) = [s for s in first if isinstance(s, ir.Select)]
    # concat: the padded x when j < 5, else y; pad's own condition sits inside the first case
    assert [c.when is None for c in select.cases] == [False, True]
    assert any(isinstance(s, ir.Select) and s.fill == ir.Const(0.0, "float32") for s in select.cases[0].body)


def test_one_ir_two_spellings():
    """Every condition and index of the conditional reads is the same arithmetic in Python and in C."""
    out, inputs = padded_concat()
    _, kernel = only_kernel([out], inputs)
    stmts = lower(kernel, ["i", "j"])
    py, c = printers()
    py_text, c_text = "\n".join(py.lines(stmts, 0)), "\n".join(c.lines(stmts, 0))
    py_conds = re.findall(r"^\s*(?:if|elif) (.*):$", py_text, re.M)
    c_conds = re.findall(r"^\s*(?:if|else if) \((.*)\) \{$", c_text, re.M)
    assert py_conds and len(py_conds) == len(c_conds)
    for p, q in zip(py_conds, c_conds):
        assert p.replace(" and ", " && ").replace("//", "/") == q
    assert "float v" in c_text and " = 0.0f;" in c_text       # the pad's fill declares the C variable
    assert "else:" in py_text and "np.float32(0.0)" in py_text  # and is Python's last branch
    assert "exp_f32(" in py_text and "dlc_exp(" in c_text
    compile(py_text, "<kernel>", "exec")  # printed Python is valid source


def test_flat_lowering_refuses_a_remap():
    x = dlc.input("x", (2, 3))
    _, kernel = only_kernel([dlc.transpose(x, (1, 0)) + 1.0], [x])
    with pytest.raises(NotFlat):
        lower(kernel, ["i"], flat=True)


def test_a_template_function_a_dialect_lacks_is_refused_naming_it():
    x = dlc.input("x", (4,))
    _, kernel = only_kernel([dlc.exp(x) * 2.0], [x])
    exp = next(n for n in kernel.nodes if n.op == "exp")
    without_exp = dataclasses.replace(numba.DIALECT, function=lambda name, dtype: None if name == "exp" else name)
    with pytest.raises(LoweringError, match="'exp'.*math_functions.py"):
        scalar_text(exp, ["a"], without_exp)
    assert scalar_text(exp, ["a"], numba.DIALECT) == "(exp_f32(a))"


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_reductions_print_from_ir(target):
    """argmax/argmin keep the first of equal values and let NaN win, on both printers of ArgBest."""
    x = dlc.input("x", ("B", 5))
    options = {"emulate": True} if target == "cuda" else {}
    f = dlc.compile([dlc.argmax(x, axis=1), dlc.argmin(x, axis=1), dlc.max(x, axis=1)], [x], target=target,
                    **options)
    data = np.array([[1, 3, 3, 0, 2], [np.nan, 1, 5, 5, 0], [2, 2, 2, 2, 2]], np.float32)
    am, ai, mx = f(data)
    np.testing.assert_array_equal(am, np.argmax(data, axis=1))
    np.testing.assert_array_equal(ai, np.argmin(data, axis=1))
    np.testing.assert_array_equal(mx, np.max(data, axis=1))


def per_channel_scale():
    """x * (s / (v + eps)) over (N, C, H, W) with s, v per channel: the bracket is loop-invariant in H and W."""
    x = dlc.input("x", (2, 3, 4, 5))
    s = dlc.input("s", (1, 3, 1, 1))
    v = dlc.input("v", (1, 3, 1, 1))
    return x * (s / (v + 1e-5)), [x, s, v]


def loops(stmts):
    """(the loop variables enclosing each Let, by name) of a statement list."""
    where = {}

    def walk(body, outer):
        for s in body:
            if isinstance(s, ir.Let):
                where[s.name] = outer
            elif isinstance(s, ir.Loop):
                walk(s.body, outer + (s.var,))
    walk(stmts, ())
    return where


def test_hoist_moves_per_channel_arithmetic_out_of_the_element_loops():
    out, inputs = per_channel_scale()
    _, kernel = only_kernel([out], inputs)
    names = ["n", "c", "h", "w"]
    body = ir.nest(names, [ir.Lit(d) for d in out.shape], lower(kernel, names))
    where = loops(ir.hoist(body))
    assert set(where.values()) == {("n", "c"), ("n", "c", "h", "w")}
    inner = [name for name, at in where.items() if at == ("n", "c", "h", "w")]
    assert len(inner) == 2, where   # the load of x and the product; s, v, the sum and the quotient moved out
    # and the kernel computes the same numbers with the motion (numba's renderer hoists every kernel)
    rng = np.random.default_rng(0)
    feeds = [rng.standard_normal(i.shape).astype(np.float32) for i in inputs]
    np.testing.assert_allclose(dlc.compile(out, inputs=inputs, target="cpu")(*feeds),
                               feeds[0] * (feeds[1] / (feeds[2] + np.float32(1e-5))), rtol=1e-6)


def test_hoist_keeps_what_an_iteration_changes():
    """A binding that reads the loop's variable, an accumulator the loop updates, or a buffer the loop stores
    to stays; nothing leaves a loop that calls a hand-written kernel."""
    x = dlc.input("x", (3,))
    y = dlc.exp(x)
    i, acc = ir.Var("i"), "acc"
    invariant = ir.Let("t0", "float32", ir.Load(x.node, (ir.ZERO,)))
    reads_i = ir.Let("t1", "float32", ir.Load(x.node, (i,)))
    reads_acc = ir.Let("t2", "float32", ir.Apply(y.node, (ir.Ref(acc),)))
    loop = ir.Loop("i", ir.Lit(3), (invariant, reads_i, reads_acc, ir.Accumulate(acc, "sum", ir.Ref("t1"), y.node)))
    hoisted = ir.hoist([loop])
    assert hoisted[0] == invariant and hoisted[1].body == (reads_i, reads_acc, loop.body[-1])
    stores_x = ir.Loop("i", ir.Lit(3), (invariant, ir.Store(x.node, (i,), ir.Ref("t0"))))
    assert ir.hoist([stores_x]) == [stores_x]
    calls = ir.Loop("i", ir.Lit(3), (invariant, ir.Call("gemm", ("a", "b", "c"), y.node)))
    assert ir.hoist([calls]) == [calls]


@pytest.mark.parametrize("shape", [(4, 3, 5, 7), (2, 3, numba.SUM_LANES_MAX + 1)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sums_over_outer_and_last_axes_match_numpy(shape, dtype):
    """A batch norm's statistics (sums over every axis but the channels): the last axis with partial sums per
    position, and past SUM_LANES_MAX with one sum per channel."""
    x = dlc.input("x", shape, dtype)
    axes = (0,) + tuple(range(2, len(shape)))
    fn = dlc.compile([dlc.sum(x, axis=axes, keepdims=True), dlc.sum(x * x, axis=axes)], inputs=[x], target="cpu")
    lanes = f"acc = np.zeros((3, {shape[-1]},)" in fn.backend.source()
    assert lanes == (shape[-1] <= numba.SUM_LANES_MAX)
    xv = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    got = fn(xv)
    tol = 1e-6 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(got[0], xv.astype(np.float64).sum(axis=axes, keepdims=True), rtol=tol)
    np.testing.assert_allclose(got[1], (xv.astype(np.float64) ** 2).sum(axis=axes), rtol=tol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_column_sums_match_numpy_and_do_not_depend_on_the_threads(dtype):
    """kernels/cpu/sums.py: rows that neither the tasks nor the four-row steps divide, on one thread and on two
    (tasks claimed in any order): equal to numpy's float64 sum, and bit for bit to each other; column_dots
    equal to the sum of the products (each rounded to the dtype, as numpy's x * y)."""
    import numba as nb

    from dlc.runtime.cpu import load_kernel_modules

    load_kernel_modules()
    import dlc_cpu_sums as sums

    rng = np.random.default_rng(7)
    n = 96
    rows = 3 * (sums.TASK_ELEMENTS // n) + 7   # past PARALLEL_MIN_ELEMENTS: on threads
    assert rows * n >= sums.PARALLEL_MIN_ELEMENTS
    x = (rng.standard_normal((rows, n)) * 3 + 1).astype(dtype)
    outs = []
    for threads in (1, nb.config.NUMBA_NUM_THREADS):
        nb.set_num_threads(threads)
        try:
            out = np.full(n, np.nan)
            sums.column_sums(x, out)
        finally:
            nb.set_num_threads(nb.config.NUMBA_NUM_THREADS)
        outs.append(out)
    np.testing.assert_allclose(outs[0], x.astype(np.float64).sum(axis=0), rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(outs[0], outs[1])
    y = rng.standard_normal((rows, n)).astype(dtype)
    dots = np.full(n, np.nan)
    sums.column_dots(x, y, dots)
    np.testing.assert_allclose(dots, (x * y).astype(np.float64).sum(axis=0), rtol=1e-9, atol=1e-9)
    for shape in ((5, n), (16, 3 * sums.COLUMNS_PER_TASK + 5)):   # one task; tasks of columns
        part = rng.standard_normal(shape).astype(dtype)
        out = np.full(shape[1], np.nan)
        sums.column_sums(part, out)
        np.testing.assert_allclose(out, part.astype(np.float64).sum(axis=0), rtol=1e-12, atol=1e-12)


def test_a_bias_gradient_sums_its_stored_rows_by_column_sums():
    """A sum over the leading axes of a stored value (a bias's gradient, over a symbolic batch or a known large
    one) calls column_sums, of the product of two stored values (a layer norm's weight gradient) column_dots;
    one known to be small, over other axes, or with another prologue stays a generated loop. Every case,
    keepdims and several kept dims included, equals numpy."""
    rng = np.random.default_rng(8)
    cases = [(("B", 4, 24), (0, 1), None, False, (600, 4, 24), "column_sums"),
             (("B", 3, 4, 5), (0,), None, True, (7, 3, 4, 5), "column_sums"),
             ((2048, 96), (0,), None, False, (2048, 96), "column_sums"),
             ((2048, 96), (0,), "product", False, (2048, 96), "column_dots"),
             (("B", 2, 24), (0, 1), "product", True, (9, 2, 24), "column_dots"),
             ((16, 96), (0,), None, False, (16, 96), None),
             (("B", 24), (0,), "exp", False, (300, 24), None),
             (("B", 4, 24), (0, 2), None, False, (5, 4, 24), None)]
    for shape, axes, prologue, keepdims, fed, kernel in cases:
        x, w = dlc.input("x", shape), dlc.input("w", shape)
        v = {None: x, "exp": dlc.exp(x), "product": x * w}[prologue]
        fn = dlc.compile(dlc.sum(v, axis=axes, keepdims=keepdims) * 0.5 - 1.0, inputs=[x, w], target="cpu")
        source = fn.backend.source()
        for name in ("column_sums", "column_dots"):
            assert (f"{name}_float32(" in source) == (name == kernel), (shape, axes, prologue, name)
        xv, wv = (rng.standard_normal(fed).astype(np.float32) for _ in range(2))
        x64, w64 = xv.astype(np.float64), wv.astype(np.float64)
        v = {None: x64, "exp": np.exp(x64), "product": x64 * w64}[prologue]
        want = v.sum(axis=axes, keepdims=keepdims) * 0.5 - 1.0
        np.testing.assert_allclose(fn(xv, wv), want, rtol=1e-5, atol=1e-5)


def _loops(stmts):
    """(var, start, end) of every loop, outermost first."""
    out = []
    for s in stmts:
        if isinstance(s, ir.Loop):
            out.append((s.var, s.start.value if isinstance(s.start, ir.Lit) else s.start,
                        s.extent.value if isinstance(s.extent, ir.Lit) else s.extent))
            out += _loops(s.body)
    return out


def _selects(stmts):
    return [s for s in ir._all_statements(stmts) if isinstance(s, ir.Select)]


def test_a_loop_is_cut_where_its_conditional_reads_change():
    """The padded concat: j < 1 is pad's fill, 1 <= j < 4 reads x, 4 <= j < 5 the fill again, 5 <= j reads y;
    each range reads without a condition."""
    out, inputs = padded_concat()
    _, kernel = only_kernel([out], inputs)
    body = ir.nest(["i", "j"], [ir.Lit(d) for d in out.shape], lower(kernel, ["i", "j"]))
    cut = ir.split_ranges(body)
    assert _loops(cut) == [("i", 0, 2), ("j", 0, 1), ("j", 1, 4), ("j", 4, 5), ("j", 5, 7)]
    assert not _selects(cut), "every condition decided"
    rng = np.random.default_rng(0)
    feeds = [rng.standard_normal(i.shape).astype(np.float32) for i in inputs]
    fn = dlc.compile(out, inputs=inputs, target="cpu")
    assert "range(1, 4)" in fn.backend.source()
    want = np.exp(np.concatenate([np.pad(feeds[0], ((0, 0), (1, 1))), feeds[1] * 2], axis=1))
    np.testing.assert_allclose(fn(*feeds), want, rtol=1e-6)


def test_a_loop_is_not_cut_over_a_symbolic_extent_or_a_strided_read():
    x = dlc.input("x", ("B", 6))
    y = dlc.input("y", ("B", 4))
    out = dlc.concat([x, y], axis=1)
    _, kernel = only_kernel([out], [x, y])
    body = ir.nest(["i", "j"], [ir.Var("n"), ir.Var("m")], lower(kernel, ["i", "j"]))
    assert ir.split_ranges(body) == body, "extents unknown"
    # the gradient of a strided slice reads every other element: (j - 1) % 2 == 0 is no range
    z = dlc.input("z", (3, 9))
    (g,) = dlc.grad(dlc.sum(dlc.exp(z[:, 1::2])), [z])
    fn = dlc.compile(g, inputs=[z], target="cpu")
    assert "% 2" in fn.backend.source()
    zv = np.random.default_rng(2).standard_normal((3, 9)).astype(np.float32)
    want = np.zeros_like(zv)
    want[:, 1::2] = np.exp(zv[:, 1::2])
    np.testing.assert_allclose(fn(zv), want, rtol=1e-6)


def test_cutting_stops_where_the_copies_would_grow_the_loop():
    x = dlc.input("x", (2, 3))
    i = ir.Var("j")
    big = tuple(ir.Let(f"t{k}", "float32", ir.Load(x.node, (ir.ZERO, ir.ZERO))) for k in range(80))
    select = ir.Select("s", "float32", (ir.Case(ir.less(i, ir.Lit(2)), (), ir.Const(1.0, "float32")),),
                       ir.Const(0.0, "float32"), x.node)
    loop = ir.Loop("j", ir.Lit(5), big + (select,))
    assert ir.split_ranges([loop]) == [loop], "80 statements copied into two loops: not worth one branch"
    small = ir.Loop("j", ir.Lit(5), (select,))
    assert _loops(ir.split_ranges([small])) == [("j", 0, 2), ("j", 2, 5)]


@pytest.mark.parametrize("target", ["cpu", "reference"])
def test_the_gradient_of_a_split_matches_numpy(target):
    """An LSTM cell's gates: split's gradient writes each gate's part of the row; cut into four loops on cpu."""
    x = dlc.input("x", (3, 16))
    w = dlc.input("w", (16,))
    i, f, g, o = dlc.split(x, 4, axis=1)
    loss = dlc.sum(dlc.sigmoid(i) * dlc.tanh(g) + dlc.sigmoid(f) * 2.0 - dlc.sigmoid(o) * w[:4])
    (gx,) = dlc.grad(loss, [x])
    fn = dlc.compile(gx, inputs=[x, w], target=target)
    rng = np.random.default_rng(1)
    xv, wv = rng.standard_normal((3, 16)).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    if target == "cpu":
        assert re.search(r"range\(4, 8\)", fn.backend.source()), fn.backend.source()
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    a, b, c, d = np.split(xv.astype(np.float64), 4, axis=1)
    want = np.concatenate([sig(a) * (1 - sig(a)) * np.tanh(c), 2 * sig(b) * (1 - sig(b)),
                           sig(a) * (1 - np.tanh(c) ** 2), -sig(d) * (1 - sig(d)) * wv[:4]], axis=1)
    np.testing.assert_allclose(fn(xv, wv), want, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("out_shape,in_shape", [
    ((4, 5, 2, 3), (4, 5, 6)),        # heads split off the feature dim
    ((4, 5, 6), (4, 5, 2, 3)),        # and merged back
    ((20, 6), (4, 5, 6)),             # rows merged
    ((2, 10, 6), (4, 5, 6)),          # a run of dims that neither splits nor merges evenly
    ((1, 4, 5, 6, 1), (4, 5, 6)),     # extent-1 dims on either side
    ((4, 30), (4, 5, 6, 1, 1)),
    ((120,), (2, 3, 4, 5)),
])
def test_a_reshape_reads_its_input_where_numpy_does(out_shape, in_shape):
    """reshape_index, run over every element, names the element numpy's row-major reshape reads; a split or
    merge of adjacent dims stays a per-run expression (no division of the whole offset)."""
    names = [f"i{k}" for k in range(len(out_shape))]
    index = ir.reshape_index(tuple(ir.Var(n) for n in names), out_shape, in_shape)
    text = [ir.print_index(e, ir.PYTHON, str) for e in index]
    source = np.arange(int(np.prod(in_shape))).reshape(in_shape)
    want = source.reshape(out_shape)
    for pos in np.ndindex(*out_shape):
        env = dict(zip(names, pos))
        assert source[tuple(eval(t, {}, env) for t in text)] == want[pos]
    if out_shape == (4, 5, 2, 3):
        assert text == ["i0", "i1", "i2 * 3 + i3"]
    if out_shape == (4, 5, 6) and len(in_shape) == 4:
        assert text == ["i0", "i1", "i2 // 3", "i2 % 3"]


def test_a_reshape_of_symbolic_dims_lines_them_up_or_takes_the_whole_offset():
    i = tuple(ir.Var(n) for n in ("i0", "i1", "i2", "i3"))
    assert [ir.print_index(e, ir.PYTHON, str) for e in ir.reshape_index(i, ("B", 5, 2, 3), ("B", 5, 6))] == \
        ["i0", "i1", "i2 * 3 + i3"]
    whole = ir.reshape_index(i[:2], ("B", 6), ("C", 2, 3))  # nothing lines up: the flat offset's digits
    assert "//" in ir.print_index(whole[1], ir.PYTHON, str) and "%" in ir.print_index(whole[1], ir.PYTHON, str)


@pytest.mark.parametrize("in_shape,perm,out_shape,splits", [
    ((2, 4, 5, 16), (0, 2, 1, 3), (2, 5, 64), [4, 16]),        # heads merged back after attention
    ((2, 8, 8, 16), (0, 2, 1, 3), (2, 1024), [8, 8, 16]),      # three dims merged: split twice
    ((2, 4, 2, 16), (0, 2, 1, 3), (2, 128), [8, 16]),          # the quotient's own remainder (2) too short
    ((3, 4, 5, 3), (0, 2, 1, 3), (3, 5, 12), []),              # a remainder of 3: left to divide
    ((2, 5, 4, 16), (0, 2, 1, 3), (2, 4, 80), [5, 16]),
])
def test_a_loop_over_a_merged_dim_is_split_at_the_divisor(in_shape, perm, out_shape, splits):
    """A reshape that merges dims, read from the merged side, divides the loop index; strip_mine splits the
    loop into quotient and remainder loops (the remainder at least STRIP_MIN long), equal to numpy."""
    x = dlc.input("x", in_shape)
    out = dlc.reshape(dlc.transpose(x, perm), out_shape) * 2.0
    fn = dlc.compile(out, inputs=[x], target="cpu")
    source = fn.backend.source()
    assert [int(n) for n in re.findall(r"for \w+_[qr] in range\((\d+)\)", source)] == splits, source
    xv = np.random.default_rng(5).standard_normal(in_shape).astype(np.float32)
    np.testing.assert_array_equal(fn(xv), xv.transpose(perm).reshape(out_shape) * 2.0)


def test_strip_mining_keeps_offsets_that_are_not_multiples_and_ranges_of_other_lengths():
    """(j + 8) // 16 from j = 0 is no whole quotient: that read keeps its division; j // 16 over range(0, 40)
    has no whole quotients either: the loop is left as it was. Split, the value read is the same element."""
    j = ir.Var("j")
    x = dlc.input("x", (4, 16))
    at = lambda e: ir.Load(x.node, (ir.floordiv(e, ir.Lit(16)), ir.mod(e, ir.Lit(16))))  # noqa: E731
    loop = ir.Loop("j", ir.Lit(48), (ir.Let("a", "float32", at(j)),
                                     ir.Let("b", "float32", at(ir.add(j, ir.Lit(8))))))
    (mined,) = ir.strip_mine([loop])
    assert _loops([mined]) == [("j_q", 0, 3), ("j_r", 0, 16)]
    bound, a, b = mined.body[0].body
    assert bound == ir.LetIndex("j", ir.add(ir.mul(ir.Var("j_q"), ir.Lit(16)), ir.Var("j_r")))
    assert a.value.index == (ir.Var("j_q"), ir.Var("j_r"))
    assert b.value == at(ir.add(j, ir.Lit(8))), "the offset 8 is no multiple of 16"
    assert ir.strip_mine([ir.Loop("j", ir.Lit(40), loop.body)]) == [ir.Loop("j", ir.Lit(40), loop.body)]
    shifted = ir.Loop("j", ir.Lit(48), (ir.Let("b", "float32", at(ir.sub(j, ir.Lit(16)))),), start=ir.Lit(16))
    (mined,) = ir.strip_mine([shifted])
    assert _loops([mined]) == [("j_q", 0, 2), ("j_r", 0, 16)]
    (b,) = mined.body[0].body[1:]
    assert b.value.index == (ir.Var("j_q"), ir.Var("j_r")), "(16 + 16 q + r - 16) // 16 is q"
