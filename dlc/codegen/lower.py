"""Lowering a Kernel's nodes to kernel IR (dlc/codegen/kernel_ir.py): the value of any node at an index.

Both renderers read a fused kernel's values the same way: walk back from an
output through the kernel's nodes; an elementwise node is its scalar template
over its operands (broadcast to its shape), an index remap rewrites the index
(a conditional read keeps each branch's loads inside its branch), and a node
from outside the kernel is a load from its buffer, a literal (a one-element
constant) or a scalar argument (a size). Every value is computed once per
index in a scope (common subexpressions share a temporary), and statements go
to the current block for the renderer to place in its loops and print.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

from ..graph import Node
from ..ops import OPS
from ..program import Kernel
from . import kernel_ir as ir


class LoweringError(Exception):
    """A node this lowering cannot place (the renderer turns it into its own unsupported error)."""

    def __init__(self, node: Node, why: str):
        super().__init__(why)
        self.node = node
        self.why = why


class NotFlat(Exception):
    """A flat lowering (one offset for every buffer) met a read at another index: lower with a multi-index."""


def is_scalar_node(node: Node) -> bool:
    """A value with one element known at render time: inlined as a literal when constant."""
    return all(isinstance(d, int) and d == 1 for d in node.shape)


class Values:
    """The values of a kernel's nodes at an index, as kernel-IR statements appended to `block`.

    fresh(kind) names a temporary ("value" or "index"). `flat`: every buffer
    is read at the output's own offset (no remaps, no broadcasting but of
    scalars). `reshape_views`: a reshape of a buffer is read as a view of its
    own (numba's arrays know their shape; C reads through the offset).
    """

    def __init__(self, kernel: Kernel, fresh: Callable[[str], str], flat: bool = False,
                 reshape_views: bool = False):
        self.kernel = kernel
        self.inside = {id(n) for n in kernel.nodes}
        self.fresh = fresh
        self.flat = flat
        self.reshape_views = reshape_views
        self.block: list[ir.Stmt] = []
        self.frames: list[dict] = [{}]
        self.substitute: dict[int, ir.Value] = {}  # id(node) -> what a load of it reads instead (a register)
        self.loads: list[ir.Load] = []

    # ---- blocks and scopes

    def take(self) -> list[ir.Stmt]:
        """The statements lowered since the last take."""
        out, self.block = self.block, []
        return out

    def emit(self, stmt: ir.Stmt) -> None:
        self.block.append(stmt)

    @contextmanager
    def scope(self):
        """Values computed inside are forgotten after (they live in a branch or a loop body)."""
        self.frames.append({})
        try:
            yield
        finally:
            self.frames.pop()

    def remember(self, node: Node, idx: tuple, value: ir.Value) -> None:
        """The value of node at idx is known (an accumulator, an anchor's result)."""
        self.frames[-1][(id(node), tuple(idx))] = value

    def _lookup(self, key):
        for frame in reversed(self.frames):
            if key in frame:
                return frame[key]
        return None

    # ---- values

    def value(self, node: Node, idx: tuple[ir.Expr, ...]) -> ir.Value:
        key = (id(node), tuple(idx))
        found = self._lookup(key)
        if found is not None:
            return found
        out = self._compute(node, idx) if id(node) in self.inside else self._load(node, idx)
        if isinstance(out, (ir.Load, ir.Apply)):
            name = self.fresh("value")
            self.emit(ir.Let(name, node.dtype, out, node if isinstance(out, ir.Apply) else None))
            out = ir.Ref(name)
        self.frames[-1][key] = out
        return out

    def _load(self, node: Node, idx) -> ir.Value:
        if node.op == "size":
            return ir.Arg(node)
        if node.op == "const" and is_scalar_node(node):
            return ir.Const(node.value.reshape(-1)[0].item(), node.dtype)
        if id(node) in self.substitute:
            return self.substitute[id(node)]
        if self.flat and is_scalar_node(node):
            idx = (ir.ZERO,)
        load = ir.Load(node, tuple(idx), self.flat)
        self.loads.append(load)
        return load

    def _compute(self, node: Node, idx) -> ir.Value:
        if node.op in ir.REMAP_OPS:
            if self.flat:
                raise NotFlat()
            return self._remap(node, idx)
        kind = OPS[node.op].kind
        if kind != "elementwise":
            raise LoweringError(node, f"a {kind} op cannot be part of a fused elementwise kernel")
        return ir.Apply(node, tuple(self.value(x, self.operand_index(idx, node.shape, x)) for x in node.inputs))

    def operand_index(self, idx, shape, x: Node) -> tuple[ir.Expr, ...]:
        """The index of operand x that numpy broadcasting reads for the element at idx of shape."""
        if self.flat:
            if tuple(x.shape) != tuple(shape) and not is_scalar_node(x):
                raise NotFlat()
            return tuple(idx)
        return ir.broadcast_index(tuple(idx), shape, x.shape)

    def _remap(self, node: Node, idx) -> ir.Value:
        if node.op == "reshape" and self.reshape_views and id(node.inputs[0]) not in self.inside:
            return ir.Load(node, tuple(idx))
        m = ir.remap(node, tuple(idx), self._bind)
        if len(m.reads) == 1 and m.reads[0].when is None:
            return self.value(m.reads[0].source, m.reads[0].index)
        name = self.fresh("value")
        cases, outer = [], self.block
        for read in m.reads:
            self.block = []
            with self.scope():
                v = self.value(read.source, read.index)
            cases.append(ir.Case(read.when, tuple(self.block), v))
        self.block = outer
        fill = ir.Const(m.fill, node.dtype) if m.fill is not None else None
        self.emit(ir.Select(name, node.dtype, tuple(cases), fill, node))
        return ir.Ref(name)

    def _bind(self, e: ir.Expr) -> ir.Expr:
        """Name an index subexpression read more than once."""
        if isinstance(e, (ir.Var, ir.Lit)):
            return e
        name = self.fresh("index")
        self.emit(ir.LetIndex(name, e))
        return ir.Var(name)

    # ---- stores

    def store_all(self, idx: tuple[ir.Expr, ...], outputs=None) -> None:
        """Compute every output at idx, then store them all (a store may overwrite an input read at idx)."""
        outputs = self.kernel.outputs if outputs is None else outputs
        vals = [self.value(o, idx) for o in outputs]
        for o, v in zip(outputs, vals):
            self.emit(ir.Store(o, tuple(idx), v, self.flat))


def variables(names: list[str]) -> tuple[ir.Var, ...]:
    return tuple(ir.Var(n) for n in names)
