"""Printing kernel IR (dlc/codegen/kernel_ir.py) as source: Python for numba, C for CUDA.

A printer knows its language's spelling (the `Dialect` table: literals, math
functions, casts, operators, how a statement opens and closes a block) and
asks its renderer only for names: the argument an array or a scalar arrives
in, and the text of a symbolic dim. Everything a kernel computes (values,
loops, stores, reductions) arrives as IR, so both targets print the same
program.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ..graph import Node
from ..ops import OPS
from . import kernel_ir as ir
from .lower import LoweringError

# ops whose result, rounding included, does not depend on the order of their two operands: their operands are
# printed in sorted order, so the same sum traced the other way round is the same kernel text
EXACTLY_COMMUTATIVE = {"add", "mul", "eq", "ne"}

_NUMBER = re.compile(r"(?<![\w.{])(\d+\.\d*(?:[eE][-+]?\d+)?|\d+(?:[eE][-+]?\d+)?)(?![\w.}])")
_FUNCTION = re.compile(r"\b([a-z_]\w*)\(")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def compute_dtype(node: Node) -> str:
    """The dtype a scalar template computes in: that of its first non-bool operand (a comparison computes in
    its operands' dtype, a select in its branches')."""
    for x in node.inputs:
        if x.dtype != "bool":
            return x.dtype
    return node.dtype


@dataclass(frozen=True)
class Dialect:
    """How one target language spells what the kernel IR says."""
    index: ir.Dialect                                   # integer index arithmetic
    literal: Callable[[object, str], str]               # a number as a literal of a dtype
    function: Callable[[str, str], str | None]          # a template's math function, by name and dtype
    cast: Callable[[str, str], str]                     # (dtype, operand) -> the converted value
    operand: Callable[[str], str]                       # an operand inside a template
    template: Callable[[str], str]                      # a whole expanded template


def scalar_text(node: Node, args: list[str], d: Dialect) -> str:
    """The node's scalar template (OpDef.scalar) over the operand texts, spelled in dialect d."""
    op, dtype = node.op, compute_dtype(node)
    if op == "cast":
        return d.cast(node.dtype, d.operand(args[0]))
    template = OPS[op].scalar
    if op == "div" and dtype in ("int32", "int64"):
        template = "floordiv({0}, {1})"  # numpy's floor division, not truncation
    if template is None:
        raise LoweringError(node, "it has no scalar template")

    def function(m):
        name = d.function(m.group(1), dtype)
        if name is None:
            raise LoweringError(node, f"its scalar template calls {m.group(1)!r}, which "
                                      f"dlc/codegen/math_functions.py does not list for {dtype}")
        return name + "("

    text = _FUNCTION.sub(function, template)
    if dtype != "bool":
        # typed literals keep float32 math in float32 (a bare 0.5 is a float64 in numba, a double in C)
        text = _NUMBER.sub(lambda m: d.literal(float(m.group(1)) if "." in m.group(1) or "e" in m.group(1).lower()
                                               else int(m.group(1)), dtype), text)

    def placeholder(m):
        key = m.group(1)
        if key.isdigit():
            return d.operand(args[int(key)])
        if key not in node.a:
            raise LoweringError(node, f"its scalar template {OPS[op].scalar!r} names an attribute it does not have")
        v = node.a[key]
        return d.literal(v, "bool" if isinstance(v, bool) else dtype)

    return d.template(_PLACEHOLDER.sub(placeholder, text))


class Printer:
    """Prints statements at an indentation depth; the subclasses spell them."""

    indent = "    "

    def __init__(self, dialect: Dialect, array: Callable[[Node, bool], str], scalar: Callable[[Node], str],
                 dim: Callable[[int | str], str]):
        self.d = dialect
        self.array = array      # (node, flat) -> the name of the array argument holding node
        self.scalar = scalar    # node -> the name of the scalar argument holding a size node's value
        self.dim = dim          # a symbolic dim -> its text

    def lines(self, stmts, depth: int) -> list[str]:
        out: list[str] = []
        for s in stmts:
            self.stmt(s, depth, out)
        return out

    def block(self, header: str, body, depth: int, out: list[str]) -> None:
        out.append(self.indent * depth + self.open(header))
        out += self.lines(body, depth + 1)
        closer = self.close()
        if closer:
            out.append(self.indent * depth + closer)

    def index(self, e: ir.Expr) -> str:
        return ir.print_index(e, self.d.index, self.dim)

    def value(self, v: ir.Value) -> str:
        if isinstance(v, ir.Ref):
            return v.name
        if isinstance(v, ir.Const):
            return self.d.literal(v.value, v.dtype)
        if isinstance(v, ir.Apply):
            args = [self.value(a) for a in v.args]
            if v.node.op in EXACTLY_COMMUTATIVE:
                args.sort()
            return scalar_text(v.node, args, self.d)
        if isinstance(v, ir.Load):
            return self.element(v.node, v.index, v.flat)
        if isinstance(v, ir.Arg):
            return self.argument(v.node)
        if isinstance(v, ir.Cast):
            return self.d.cast(v.dtype, self.value(v.value))
        raise TypeError(f"not a kernel-IR value: {v!r}")

    def stmt(self, s, depth: int, out: list[str]) -> None:
        pad = self.indent * depth
        if isinstance(s, ir.Loop):
            self.block(self.loop(s), s.body, depth, out)
        elif isinstance(s, ir.Select):
            self.select(s, depth, out)
        elif isinstance(s, ir.ArgBest):
            self.arg_best(s, depth, out)
        else:
            out.append(pad + self.simple(s))

    def select(self, s: ir.Select, depth: int, out: list[str]) -> None:
        self.declare_select(s, depth, out)
        for k, case in enumerate(s.cases):
            if case.when is None:
                header = self.otherwise(first=k == 0)
            else:
                header = self.condition(self.index(case.when), first=k == 0)
            self.block(header, list(case.body) + [ir.Assign(s.name, case.value, s.node)], depth, out)
        # C declares the variable with the fill; Python assigns it in a last branch, unless a case always holds
        if s.fill is not None and self.fill_in_else and s.cases[-1].when is not None:
            self.block(self.otherwise(first=False), [ir.Assign(s.name, s.fill)], depth, out)


class PythonPrinter(Printer):
    """Python for numba: array arguments are n-d views indexed [i, j], scalars are numpy-typed."""

    fill_in_else = True

    def __init__(self, dialect, array, scalar, dim, comment: Callable[[Node], str], np_dtype: dict):
        super().__init__(dialect, array, scalar, dim)
        self.comment = comment
        self.np_dtype = np_dtype

    def open(self, header: str) -> str:
        return header + ":"

    def close(self) -> str:
        return ""

    def element(self, node: Node, index, flat: bool) -> str:
        idx = ", ".join(ir.index_text(e, self.d.index, self.dim) for e in index) if index else "0"
        return f"{self.array(node, flat)}[{idx}]"

    def argument(self, node: Node) -> str:
        return f"{self.np_dtype[node.dtype]}({self.scalar(node)})"

    def loop(self, s: ir.Loop) -> str:
        rng = "prange" if s.parallel else "range"
        bounds = self.index(s.extent) if s.start == ir.ZERO else f"{self.index(s.start)}, {self.index(s.extent)}"
        return f"for {s.var} in {rng}({bounds})"

    def condition(self, text: str, first: bool) -> str:
        return ("if " if first else "elif ") + text

    def otherwise(self, first: bool) -> str:
        return "if True" if first else "else"

    def declare_select(self, s, depth, out) -> None:
        pass  # a Python name needs no declaration

    def simple(self, s) -> str:
        if isinstance(s, (ir.Let, ir.Assign)):
            note = f"  # {self.comment(s.node)}" if s.node is not None else ""
            return f"{s.name} = {self.value(s.value)}{note}"
        if isinstance(s, ir.LetIndex):
            return f"{s.name} = {self.index(s.index)}"
        if isinstance(s, ir.Store):
            return f"{self.element(s.node, s.index, s.flat)} = {self.value(s.value)}  # {self.comment(s.node)}"
        if isinstance(s, ir.Declare):
            return f"{s.name} = {self.value(s.init)}"
        if isinstance(s, ir.Accumulate):
            v, note = self.value(s.value), f"  # {self.comment(s.node)}"
            if s.op == "sum":
                return f"{s.acc} += {v}{note}"
            if s.op == "prod":
                return f"{s.acc} *= {v}{note}"
            return f"{s.acc} = {self.d.function(s.op, 'float64')}({s.acc}, {v}){note}"
        if isinstance(s, ir.Call):
            return f"{s.function}({', '.join(s.args)})  # {self.comment(s.node)}"
        raise TypeError(f"not a kernel-IR statement: {s!r}")

    def arg_best(self, s: ir.ArgBest, depth: int, out: list[str]) -> None:
        v, b = self.value(s.value), s.best
        better = ">" if s.node.op == "argmax" else "<"
        # NaN wins (b == b is false once best is NaN, v != v when v is); ties keep the first position
        header = f"if {s.at} < 0 or ({b} == {b} and ({v} {better} {b} or {v} != {v}))"
        out.append(self.indent * depth + f"{header}:  # {self.comment(s.node)}")
        out.append(self.indent * (depth + 1) + f"{b} = {v}")
        out.append(self.indent * (depth + 1) + f"{s.at} = {self.index(s.position)}")


class CPrinter(Printer):
    """C for CUDA: buffers are flat pointers read at their row-major offset, temporaries are const."""

    fill_in_else = False
    indent = "  "

    def __init__(self, dialect, array, scalar, dim, ctype: dict, linear: Callable, functors: dict):
        super().__init__(dialect, array, scalar, dim)
        self.ctype = ctype
        self.linear = linear      # (index, shape) -> the offset's text
        self.functors = functors  # reduction op -> its functor in prelude.cu

    def open(self, header: str) -> str:
        return header + " {"

    def close(self) -> str:
        return "}"

    def element(self, node: Node, index, flat: bool) -> str:
        at = self.index(index[0]) if flat else self.linear(index, node.shape)
        return f"{self.array(node, flat)}[{at}]"

    def argument(self, node: Node) -> str:
        return self.scalar(node)

    def loop(self, s: ir.Loop) -> str:
        v = s.var
        return f"for (i64 {v} = {self.index(s.start)}; {v} < {self.index(s.extent)}; ++{v})"

    def condition(self, text: str, first: bool) -> str:
        return ("if" if first else "else if") + f" ({text})"

    def otherwise(self, first: bool) -> str:
        return "if (true)" if first else "else"

    def declare_select(self, s, depth, out) -> None:
        init = f" = {self.value(s.fill)}" if s.fill is not None else ""
        out.append(self.indent * depth + f"{self.ctype[s.dtype]} {s.name}{init};")

    def simple(self, s) -> str:
        if isinstance(s, ir.Let):
            return f"const {self.ctype[s.dtype]} {s.name} = {self.value(s.value)};"
        if isinstance(s, ir.Assign):
            return f"{s.name} = {self.value(s.value)};"
        if isinstance(s, ir.LetIndex):
            return f"const i64 {s.name} = {self.index(s.index)};"
        if isinstance(s, ir.Store):
            return f"{self.element(s.node, s.index, s.flat)} = {self.value(s.value)};"
        if isinstance(s, ir.Declare):
            return f"{self.ctype[s.dtype]} {s.name} = {self.value(s.init)};"
        if isinstance(s, ir.Accumulate):
            return f"{s.acc} = {self.functors[s.op]}::f({s.acc}, {self.value(s.value)});"
        if isinstance(s, ir.Call):
            return f"{s.function}({', '.join(s.args)});"
        raise TypeError(f"not a kernel-IR statement: {s!r}")

    def arg_best(self, s: ir.ArgBest, depth: int, out: list[str]) -> None:
        v, b, pos = self.value(s.value), s.best, self.index(s.position)
        is_max = str(s.node.op == "argmax").lower()
        out.append(self.indent * depth + f"if ({s.at} < 0 || dlc_arg_better<{is_max}>({v}, {pos}, {b}, {s.at})) "
                                         f"{{ {b} = {v}; {s.at} = {pos}; }}")
