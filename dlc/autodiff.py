"""Reverse-mode automatic differentiation over the graph."""

from __future__ import annotations

from .errors import GradientError, ShapeError
from .graph import SCOPES, TUPLE, is_float, shape_str, topo_order
from .ops import OPS
from .tensor import Tensor


def grad(y: Tensor, wrt, seed: Tensor | None = None):
    """Gradients of y with respect to each tensor in wrt (a list, or one tensor).

    y must be a scalar unless `seed` (dL/dy, shaped like y) is given. A tensor
    y does not depend on gets a zero gradient. Gradients are summed over every
    use of a value, and broadcasting is undone by summation. y may also be a
    list of outputs with seed a list of their gradients (a vector-Jacobian
    product of several outputs at once).
    """
    from . import functional as F

    single = isinstance(wrt, Tensor)
    wrt = [wrt] if single else list(wrt)
    for t in wrt:
        if not isinstance(t, Tensor):
            raise TypeError(f"grad is taken with respect to dlc Tensors (inputs, params, intermediates), "
                            f"got {type(t).__name__}")
    ys, seeds = (list(y), list(seed)) if isinstance(y, (list, tuple)) else ([y], [seed])
    if len(ys) != len(seeds):
        raise ValueError(f"grad of {len(ys)} outputs needs as many seeds, got {len(seeds)}")
    grads: dict[int, Tensor] = {}
    for y, seed in zip(ys, seeds):
        if not isinstance(y, Tensor):
            raise TypeError(f"grad differentiates a dlc Tensor, got {type(y).__name__}")
        if seed is None:
            if y.shape != ():
                raise ShapeError(f"grad needs a scalar y, got shape {shape_str(y.shape)}; pass seed=dL/dy")
            seed = F.constant(1.0, dtype=y.dtype)
        if not is_float(y.dtype):
            raise GradientError(f"cannot differentiate {y.dtype} output {y!r}")
        grads[id(y.node)] = seed + grads[id(y.node)] if id(y.node) in grads else seed

    targets = {id(t.node) for t in wrt}
    order = topo_order([y.node for y in ys])
    # Only nodes on a path from a target to y need a gradient.
    needed = set()
    for n in order:
        if id(n) in targets or any(id(i) in needed for i in n.inputs):
            needed.add(id(n))

    for node in reversed(order):
        g = grads.pop(id(node), None) if id(node) not in targets else grads.get(id(node))
        if g is None or not node.inputs:
            continue
        live = [i for i in node.inputs if id(i) in needed and _has_gradient(i)]
        if not live:
            continue
        rule = OPS[node.op].grad
        if rule is None:
            raise GradientError(
                f"op {node.op!r} (built at {node.loc or 'unknown location'}) has no gradient rule"
                + (": it is itself part of a gradient, and gradients of gradients through it are not supported"
                   if node.op.endswith("_grad") or "backward" in node.op else ""))
        # the gradient's nodes belong to the layer of the node they differentiate (dlc inspect, bisect, errors)
        SCOPES.append(node.loc.scope if node.loc else "")
        try:
            in_grads = rule(node, g, [Tensor(i) for i in node.inputs])
        finally:
            SCOPES.pop()
        for inp, gi in zip(node.inputs, in_grads):
            if gi is None or id(inp) not in needed or not _has_gradient(inp):
                continue
            if tuple(gi.shape) != tuple(inp.shape):
                raise AssertionError(f"gradient rule of {node.op} gave {gi.shape} for input {inp.shape}")
            prev = grads.get(id(inp))
            grads[id(inp)] = gi if prev is None else prev + gi
    out = []
    for t in wrt:
        g = grads.get(id(t.node))
        out.append(g if g is not None else F.broadcast_to(F.constant(0.0, dtype=t.dtype), t.shape)
                   if is_float(t.dtype) else None)
    return out[0] if single else out


def _has_gradient(node) -> bool:
    """Float values carry gradients, and so do multi-output (scan) nodes, one part per output."""
    return is_float(node.dtype) or node.dtype == TUPLE
