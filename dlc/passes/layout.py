"""Channels last: the cpu target runs an inference program's depthwise-separable convs on NHWC activations.

dlc's graphs are channels first (NCHW, as PyTorch and ONNX write them). A
depthwise conv on small planes is slow that way: its loops run along rows of
2 to 16 values, or it transposes each sample to channels last and back, and
the transposes alone cost more than the conv (kernels/cpu/conv_nhwc.py has
the figures). So where a program chains depthwise and pointwise convs
(MobileNet's blocks), this pass gives them channels-last activations:

1. each such conv2d becomes transpose(conv2d_nhwc(transpose(x))) with the
   same value, NCHW on both sides;
2. a transpose back to NCHW sinks through the elementwise ops after it (a
   conv's bias, batch norm, ReLU6, a residual add), their per-channel
   operands reshaped to the channels-last axis;
3. a transpose to NHWC of a transpose back to NCHW is the identity: between
   two channels-last convs nothing is transposed, and what is left is one
   transpose where the region starts and one where it ends.

Only for convs whose gradients are not in the program (inference), only for
regions of at least two such convs one of which is depthwise (a pointwise conv
takes the same time in either layout, a lone depthwise conv would only move
its transposes out of the kernel), and only on the cpu target (the optimizer's
`channels_last` option, which the compiler sets for it).
"""

from __future__ import annotations

from ..graph import Node, topo_order
from ..ops import OPS
from .simplify import drop_identities, make, merge_shape_ops, rewrite

TO_NHWC = (0, 2, 3, 1)
TO_NCHW = (0, 3, 1, 2)
GRADIENT_OPS = ("conv2d_grad_input", "conv2d_grad_weight")


def runs_channels_last(n: Node) -> bool:
    """A conv2d that kernels/cpu/conv_nhwc.py runs: depthwise (one input channel and one output per group) or
    pointwise (1x1, stride 1, no padding, one group), channels and plane known."""
    if n.op != "conv2d" or not all(isinstance(d, int) for d in n.inputs[0].shape[1:]):
        return False
    x, w = n.inputs
    groups = n.attr("groups")
    if is_depthwise(n):
        return True
    return (tuple(w.shape[2:]) == (1, 1) and groups == 1 and tuple(n.attr("stride")) == (1, 1)
            and tuple(map(tuple, n.attr("padding"))) == ((0, 0), (0, 0)) and x.shape[1] == w.shape[1])


def is_depthwise(n: Node) -> bool:
    c, (co, cg) = n.inputs[0].shape[1], n.inputs[1].shape[:2]
    return cg == 1 and n.attr("groups") == c == co


def is_per_channel(x: Node, ndim: int) -> bool:
    """x broadcasts along every axis of an NCHW value but the channels' (a bias, a scale, a scalar)."""
    shape = (1,) * (ndim - x.ndim) + tuple(x.shape)
    return x.ndim <= ndim and all(d == 1 for k, d in enumerate(shape) if k != 1)


def through_elementwise(x: Node) -> list[Node]:
    """The values x is computed from through elementwise ops alone (x itself included), following only the
    operands of x's shape: the convs a region joins are found at the ends of these paths."""
    seen, out, todo = set(), [], [x]
    while todo:
        n = todo.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        out.append(n)
        if OPS[n.op].kind == "elementwise":
            todo.extend(i for i in n.inputs if tuple(i.shape) == tuple(n.shape))
    return out


def regions(nodes: list[Node]) -> list[list[Node]]:
    """The convs that may run channels last, grouped: two are in one region when one's value reaches the
    other's input through elementwise ops alone."""
    convs = [n for n in nodes if runs_channels_last(n)]
    parent = {id(n): id(n) for n in convs}

    def root(k):
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for n in convs:
        for m in through_elementwise(n.inputs[0]):
            if id(m) in parent:
                parent[root(id(m))] = root(id(n))
    groups: dict[int, list[Node]] = {}
    for n in convs:
        groups.setdefault(root(id(n)), []).append(n)
    return list(groups.values())


def conv_key(n: Node) -> tuple:
    """A conv by its weight, attributes and shape: what stays the same when a rewrite rebuilds it on a new
    input."""
    return id(n.inputs[1]), n.attrs, n.shape


def chosen(roots: list[Node]) -> set[tuple]:
    """The convs this pass gives channels-last activations (see the module's docstring for the rule), by
    conv_key."""
    nodes = topo_order(roots)
    if any(n.op in GRADIENT_OPS for n in nodes):
        return set()
    return {conv_key(n) for region in regions(nodes) if len(region) >= 2 and any(is_depthwise(n) for n in region)
            for n in region}


def to_channels_last(convs: set[tuple]):
    def rule(n: Node) -> Node | None:
        if n.op != "conv2d" or conv_key(n) not in convs:
            return None
        x, w = n.inputs
        y = make("conv2d_nhwc", [make("transpose", [x], n.loc, perm=TO_NHWC), w], n.loc, **n.a)
        return make("transpose", [y], n.loc, perm=TO_NCHW)
    return rule


def sink_transposes(channels_last_too: set[int]):
    """f(transpose(a), b, ...) -> transpose(f(a, b', ...)) for an elementwise f of a 4-d value transposed back
    to NCHW, when every other operand is transposed the same way, is per channel (b' its channels-last
    reshape) or is a value the program also transposes to NHWC (the ids in channels_last_too: an inverted
    residual's shortcut, b' that transpose)."""
    def rule(n: Node) -> Node | None:
        if OPS[n.op].kind != "elementwise" or n.ndim != 4:
            return None
        if not any(is_back_to_nchw(x) for x in n.inputs):
            return None
        inputs = []
        for x in n.inputs:
            if is_back_to_nchw(x):
                inputs.append(x.inputs[0])
            elif is_per_channel(x, 4):
                c = (1,) * (4 - x.ndim) + tuple(x.shape)
                inputs.append(make("reshape", [x], x.loc, shape=(1, 1, 1, c[1])) if x.ndim else x)
            elif id(x) in channels_last_too:
                inputs.append(make("transpose", [x], x.loc, perm=TO_NHWC))
            else:
                return None
        return make("transpose", [make(n.op, inputs, n.loc, **n.a)], n.loc, perm=TO_NCHW)
    return rule


def is_back_to_nchw(x: Node) -> bool:
    return x.op == "transpose" and tuple(x.attr("perm")) == TO_NCHW


def channels_last(roots: list[Node]) -> tuple[list[Node], int]:
    """The pass: returns the new roots and how many convs now run channels last."""
    convs = chosen(roots)
    if not convs:
        return roots, 0
    roots, _ = rewrite(roots, [to_channels_last(convs)])
    transposed = {id(n.inputs[0]) for n in topo_order(roots)
                  if n.op == "transpose" and tuple(n.attr("perm")) == TO_NHWC}
    roots, _ = rewrite(roots, [sink_transposes(transposed), merge_shape_ops, drop_identities])
    return roots, len(convs)
