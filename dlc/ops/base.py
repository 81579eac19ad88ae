"""The op registry: each op's shape/dtype rule, numpy reference, gradient rule and kind."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import DTypeError, ShapeError
from ..graph import Node, freeze_attrs, shape_str, user_location

# Fusion kinds (design section 5).
ELEMENTWISE = "elementwise"   # one output element from the same-index input elements (with broadcasting)
INJECTIVE = "injective"       # an index remap: reshape, transpose, slice, concat, pad, broadcast_to
REDUCE = "reduce"             # sum/max/... over some axes
COMPLEX = "complex"           # matmul, conv, pooling: fuse an elementwise epilogue at most
OPAQUE = "opaque"             # scan, random, gather/scatter: no fusion across
SOURCE = "source"             # input, param, const: no computation

KINDS = (ELEMENTWISE, INJECTIVE, REDUCE, COMPLEX, OPAQUE, SOURCE)


@dataclass
class OpDef:
    """Everything dlc knows about one op, kept side by side.

    infer(inputs, attrs) -> (shape, dtype); raise ShapeError/DTypeError with a
        message about the operands (the location is added by `apply`).
    ref(arrays, attrs, out_shape) -> ndarray: the numpy reference (out_shape: the
        node's shape with its symbolic dims bound); None for scan, whose body
        the reference runtime evaluates itself (dlc/runtime/reference.py).
    grad(node, g, xs) -> list with one Tensor (or None) per input, built from
        Tensor operations; None when the op is not differentiable.
    scalar: for elementwise ops, a C-like expression over {0}, {1}, ... that
        the code generators render (numba and CUDA share it); the math
        functions it may call are listed in dlc/codegen/math_functions.py.
    cheap: recomputing the op in every kernel that reads it costs less than
        storing it once (fusion duplicates cheap producers into consumers).
    value_range: what the simplifier may assume of every element: a (lo, hi)
        interval, or a function (node, range_of) -> interval or None, where
        range_of gives an input's interval.
    """

    name: str
    kind: str
    infer: Callable
    ref: Callable | None
    grad: Callable | None = None
    scalar: str | None = None
    doc: str = ""
    cheap: bool = False
    value_range: tuple | Callable | None = None


OPS: dict[str, OpDef] = {}


# The most elements a value may have: far beyond any machine, and small enough
# that no byte count or offset a backend computes in int64 can overflow.
MAX_ELEMENTS = 2 ** 48


def _bounded(infer):
    """The shape rule, refusing a result too large to index (a crafted padding or size of 2**30)."""
    def rule(xs, attrs):
        shape, dtype = infer(xs, attrs)
        n = 1
        for d in shape:
            if isinstance(d, int):
                n *= d
        if n > MAX_ELEMENTS:
            raise ShapeError(f"the result {shape_str(tuple(shape))} would have {n} elements (at most "
                             f"{MAX_ELEMENTS} are allowed)")
        return shape, dtype
    rule.__wrapped__ = infer
    return rule


def register(name: str, kind: str, infer, ref, grad=None, scalar=None, doc="") -> OpDef:
    assert kind in KINDS, kind
    if name in OPS:
        raise ValueError(f"op {name!r} registered twice")
    op = OpDef(name, kind, _bounded(infer), ref, grad, scalar, doc)
    OPS[name] = op
    return op


def facts(names, *, cheap: bool | None = None, value_range=None) -> None:
    """Record what the optimizer may assume about registered ops (see OpDef.cheap and OpDef.value_range)."""
    for name in names.split():
        op = OPS[name]
        if cheap is not None:
            op.cheap = cheap
        if value_range is not None:
            op.value_range = value_range


def same_range_as_input(node: Node, range_of):
    """The value range of an op that moves its input's elements without changing them."""
    return range_of(node.inputs[0])


def describe_operands(nodes) -> str:
    return ", ".join(f"{n.dtype}{shape_str(n.shape)}" for n in nodes)


def apply(op: str, inputs, *, node_value: np.ndarray | None = None, **attrs) -> Node:
    """Build a node: infer its shape and dtype, record the user's line.

    node_value is the array a node carries (a constant's); it is not called
    `value` so that an op may have an attribute of that name (pad's fill).

    A shape or dtype error is re-raised naming the op, the operands and the
    user's file and line.
    """
    opdef = OPS[op]
    nodes = tuple(inputs)
    frozen = freeze_attrs(attrs)
    try:
        shape, dtype = opdef.infer(nodes, dict(frozen))
    except (ShapeError, DTypeError) as e:
        loc = user_location()
        where = f" at {loc}" if loc else ""
        raise type(e)(f"{op}{where}: {e} (operands: {describe_operands(nodes) or 'none'})") from None
    return Node(op, nodes, frozen, tuple(shape), dtype, user_location(), node_value)
