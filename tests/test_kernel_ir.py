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
