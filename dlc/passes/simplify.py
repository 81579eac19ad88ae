"""Graph simplification: constant folding, algebraic identities, canonical forms, run to a fixed point.

Nodes are immutable and hash-consed, so a pass rebuilds the graph bottom-up
with a memo; rebuilding a node from the same parts returns the same object,
which makes common-subexpression elimination free, and anything the outputs no
longer reach is dropped (dead-code elimination). Every rewrite keeps results
bit-exact except the ones under `reassociate`, which may change rounding.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np

from ..graph import Node, freeze_attrs, is_float, is_static, topo_order
from ..ops import OPAQUE, OPS, SOURCE
from ..ops.elementwise import broadcast_shapes

Rule = Callable[[Node], "Node | None"]

# Ops that commute: their operands are put in a canonical order so a+b and b+a are one node.
COMMUTATIVE = {"add", "mul", "maximum", "minimum", "eq", "ne", "logical_and", "logical_or"}
# exp overflows past this for float32 (88.7) and underflows to subnormals below -87.3.
EXP_SAFE = 80.0


# ----------------------------------------------------------------------------
# building nodes inside a pass


def make(op: str, inputs, loc, **attrs) -> Node:
    """A node with inferred shape and dtype that keeps the location of the node it replaces."""
    frozen = freeze_attrs(attrs)
    shape, dtype = OPS[op].infer(tuple(inputs), dict(frozen))
    return Node(op, tuple(inputs), frozen, tuple(shape), dtype, loc)


def make_const(value, dtype: str, loc=None) -> Node:
    """A constant node; equal values give the same node (the digest matches dlc.constant's)."""
    arr = np.array(np.asarray(value).astype(dtype), order="C")
    arr.setflags(write=False)
    digest = hashlib.sha256(arr.tobytes() + dtype.encode() + str(arr.shape).encode()).hexdigest()[:24]
    return Node("const", (), freeze_attrs({"digest": digest}), tuple(arr.shape), dtype, loc, arr)


def const_value(node: Node) -> np.ndarray | None:
    """The value of a constant, seen through broadcast_to and reshape of one; None otherwise."""
    while node.op in ("broadcast_to", "reshape"):
        node = node.inputs[0]
    return node.value if node.op == "const" else None


def is_fill(node: Node, v) -> bool:
    """Every element of the node is the constant v."""
    c = const_value(node)
    return c is not None and c.size > 0 and bool(np.all(c == v))


def same_type(a: Node, b: Node) -> bool:
    return tuple(a.shape) == tuple(b.shape) and a.dtype == b.dtype


def as_shape_of(x: Node, like: Node) -> Node | None:
    """x in like's shape: x itself, or x broadcast to it; None when the dtypes differ."""
    if x.dtype != like.dtype:
        return None
    if tuple(x.shape) == tuple(like.shape):
        return x
    return make("broadcast_to", [x], like.loc, shape=like.shape)


# ----------------------------------------------------------------------------
# value ranges: just enough to know where exp(log x) and log(exp x) are exact


def value_range(node: Node, depth: int = 0) -> tuple[float, float] | None:
    """A (lo, hi) interval that holds every element, or None when unknown."""
    if depth > 8:
        return None
    c = const_value(node)
    if c is not None and c.size and is_float(str(c.dtype)):
        return float(np.min(c)), float(np.max(c))
    known = OPS[node.op].value_range
    if callable(known):
        return known(node, lambda x: value_range(x, depth + 1))
    return known


# ----------------------------------------------------------------------------
# rules: each returns a replacement with the same shape and dtype, or None


def fold_constants(limit: int) -> Rule:
    def rule(n: Node) -> Node | None:
        if n.op == "size":
            dims = [n.inputs[0].shape[a] for a in n.attr("axes")]
            return make_const(np.prod(dims), n.dtype, n.loc) if is_static(dims) else None
        kind = OPS[n.op].kind
        if kind in (SOURCE, OPAQUE) or not n.inputs or not is_static(n.shape):
            return None
        if int(np.prod(n.shape, dtype=np.int64)) > limit or any(i.op != "const" for i in n.inputs):
            return None
        with np.errstate(all="ignore"):
            value = OPS[n.op].ref([i.value for i in n.inputs], n.a, tuple(n.shape))
        return make_const(value, n.dtype, n.loc)
    return rule


def drop_identities(n: Node) -> Node | None:
    """x*1, x+0, x-0, x/1, neg(neg x), and shape ops that change nothing."""
    op, xs = n.op, n.inputs
    if op == "stop_gradient":  # gradients are already built: it is the identity now
        return xs[0]
    if op in ("mul", "add") or op in ("sub", "div"):
        unit = 1 if op in ("mul", "div") else 0
        if is_fill(xs[1], unit):
            return as_shape_of(xs[0], n)
        if op in ("mul", "add") and is_fill(xs[0], unit):
            return as_shape_of(xs[1], n)
    if op == "sub" and is_fill(xs[0], 0) and same_type(xs[1], n):
        return make("neg", [xs[1]], n.loc)
    if op == "mul" and is_fill(xs[1], -1) and same_type(xs[0], n):
        return make("neg", [xs[0]], n.loc)
    if op == "neg" and xs[0].op == "neg":
        return xs[0].inputs[0]
    if op == "where" and xs[1] is xs[2] and same_type(xs[1], n):
        return xs[1]
    if op == "where" and const_value(xs[0]) is not None:
        c = const_value(xs[0])
        if c.size and (np.all(c) or not np.any(c)):
            return as_shape_of(xs[1] if np.all(c) else xs[2], n)
    if op in ("cast", "broadcast_to", "reshape") and same_type(xs[0], n):
        return xs[0]
    if op == "transpose" and list(n.attr("perm")) == list(range(n.ndim)):
        return xs[0]
    return None


def merge_shape_ops(n: Node) -> Node | None:
    """Chains of one shape op collapse into one: transpose of transpose, reshape of reshape, ..."""
    op, x = n.op, n.inputs[0] if n.inputs else None
    if x is None or x.op != op:
        return None
    if op == "transpose":
        inner, outer = x.attr("perm"), n.attr("perm")
        return make("transpose", [x.inputs[0]], n.loc, perm=tuple(inner[p] for p in outer))
    if op in ("reshape", "broadcast_to"):
        return make(op, [x.inputs[0]], n.loc, shape=n.shape)
    return None


def exact_inverses(n: Node) -> Node | None:
    """exp(log x) = x for x >= 0, log(exp x) = x where exp neither overflows nor underflows.

    Exact in the reals and free of domain errors there, but the pair rounds
    twice: it runs with the reassociating rewrites."""
    x = n.inputs[0] if n.inputs else None
    if n.op == "exp" and x.op == "log":
        r = value_range(x.inputs[0])
        if r is not None and r[0] >= 0:
            return x.inputs[0]
    if n.op == "log" and x.op == "exp":
        r = value_range(x.inputs[0])
        if r is not None and -EXP_SAFE <= r[0] and r[1] <= EXP_SAFE:
            return x.inputs[0]
    return None


def trivial_reductions(n: Node) -> Node | None:
    """A reduction over no axes, or only over axes of size 1, is a reshape."""
    if n.op not in ("sum", "prod", "max", "min"):
        return None
    x = n.inputs[0]
    if all(x.shape[a] == 1 for a in n.attr("axes")):
        return x if tuple(x.shape) == tuple(n.shape) else make("reshape", [x], n.loc, shape=n.shape)
    return None


def strip_leading_ones(shape) -> tuple:
    shape = tuple(shape)
    while shape and shape[0] == 1:
        shape = shape[1:]
    return shape


def broadcasts_like(reshape: Node) -> bool:
    """The reshape only adds or drops leading unit dims: under broadcasting it changes nothing."""
    return strip_leading_ones(reshape.shape) == strip_leading_ones(reshape.inputs[0].shape)


def is_unit(shape) -> bool:
    return all(d == 1 for d in shape)


def unit_reshapes(n: Node) -> Node | None:
    """Reshapes that only move unit dims around a broadcast or a reduction are absorbed into it.

    Gradients are full of them: sum(keepdims) then reshape, reshape then
    broadcast_to. Each reshape is a view that forces its input into memory, so
    removing them lets the surrounding elementwise code fuse.
    """
    x = n.inputs[0] if n.inputs else None
    if n.op == "broadcast_to" and x.op == "reshape" and (broadcasts_like(x) or is_unit(x.shape)):
        y = x.inputs[0]
        if is_unit(y.shape) and len(y.shape) > len(n.shape):
            return None
        return make("broadcast_to", [y], n.loc, shape=n.shape) if is_unit(y.shape) or broadcasts_like(x) else None
    if n.op == "reshape" and x.op == "broadcast_to" and is_unit(x.inputs[0].shape) and \
            len(x.inputs[0].shape) <= len(n.shape):
        return make("broadcast_to", [x.inputs[0]], n.loc, shape=n.shape)
    return None


def reduce_reshapes(uses: dict[int, int]) -> Rule:
    """reshape(sum(x, keepdims=True)) -> sum(x, keepdims=False) when nothing else reads the keepdims sum
    (otherwise both forms would be computed: two reductions instead of one and a view)."""
    def rule(n: Node) -> Node | None:
        x = n.inputs[0] if n.inputs else None
        if n.op != "reshape" or x.op not in ("sum", "prod", "max", "min") or not x.attr("keepdims"):
            return None
        if uses.get(id(x), 0) != 1:
            return None
        axes = x.attr("axes")
        dropped = tuple(d for i, d in enumerate(x.inputs[0].shape) if i not in axes)
        if dropped == tuple(n.shape):
            return make(x.op, [x.inputs[0]], n.loc, axes=axes, keepdims=False)
        return None
    return rule


def sink_reshapes(uses: dict[int, int]) -> Rule:
    """reshape(neg(broadcast s)) -> neg(broadcast s) in the new shape, when nothing else reads the neg:
    the reshape (a view that forces its input into memory) vanishes into the broadcast."""
    def rule(n: Node) -> Node | None:
        if n.op != "reshape" or uses.get(id(n.inputs[0]), 0) != 1:
            return None
        x = n.inputs[0]
        if len(x.inputs) != 1 or OPS[x.op].kind != "elementwise":
            return None
        y = x.inputs[0]
        if not (broadcasts_like(n) or y.op == "broadcast_to" and is_unit(y.inputs[0].shape)):
            return None
        return Node(x.op, (make("reshape", [y], n.loc, shape=n.shape),), x.attrs, n.shape, x.dtype, x.loc)
    return rule


def implicit_broadcast(n: Node) -> Node | None:
    """An elementwise op broadcasts by itself: drop a broadcast_to operand when the result is unchanged."""
    if OPS[n.op].kind != "elementwise" or len(n.inputs) < 2:
        return None
    xs = list(n.inputs)
    for i, x in enumerate(xs):
        if not (x.op == "broadcast_to" or x.op == "reshape" and broadcasts_like(x)):
            continue
        trial = xs[:i] + [x.inputs[0]] + xs[i + 1:]
        try:
            shape = broadcast_shapes(*(t.shape for t in trial))
        except Exception:  # noqa: BLE001  (symbolic dims that no longer line up: keep the broadcast)
            continue
        if tuple(shape) == tuple(n.shape):
            return Node(n.op, tuple(trial), n.attrs, n.shape, n.dtype, n.loc)
    return None


class StructuralKeys:
    """A digest of each node's whole expression (ops, attrs, shapes, sources by name or value).

    Orders operands the same way however the graph was built: traced, or read
    back from an artifact, where serial numbers differ but the program (and so
    the generated code and its cache entry) must not.
    """

    def __init__(self):
        self.keys: dict[int, str] = {}
        self.alive: list[Node] = []  # keeps keyed nodes alive so their ids stay theirs

    def __call__(self, node: Node) -> str:
        for n in topo_order([node], known=self.keys):   # a rewritten node: only its new part is keyed
            attrs = repr([(k, v) for k, v in n.attrs if not hasattr(v, "nodes")])
            text = f"{n.op}|{attrs}|{n.shape}|{n.dtype}|" + ",".join(self.keys[id(i)] for i in n.inputs)
            self.keys[id(n)] = hashlib.sha1(text.encode()).hexdigest()
            self.alive.append(n)
        return self.keys[id(node)]


def canonical_order(keys: StructuralKeys) -> Rule:
    """Commutative operands in a fixed order (constants last), so equal expressions hash-cons together."""
    def rule(n: Node) -> Node | None:
        if n.op not in COMMUTATIVE:
            return None
        a, b = n.inputs
        if a is b:
            return None
        if (a.op == "const", keys(a)) > (b.op == "const", keys(b)):
            return Node(n.op, (b, a), n.attrs, n.shape, n.dtype, n.loc)
        return None
    return rule


def scale_by_power_of_two(n: Node) -> Node | None:
    """x / c is x * (1/c) exactly when c is a power of two."""
    if n.op != "div" or not is_float(n.dtype):
        return None
    c = const_value(n.inputs[1])
    if c is None or c.size != 1:
        return None
    v = float(c.reshape(-1)[0])
    if v == 0 or not np.isfinite(v) or np.frexp(v)[0] not in (0.5, -0.5):
        return None
    return make("mul", [n.inputs[0], make_const(np.array(1.0 / v).reshape(c.shape), n.dtype, n.loc)], n.loc)


def reassociate_constants(n: Node) -> Node | None:
    """(x*c1)*c2 -> x*(c1*c2), (x+c1)+c2 -> x+(c1+c2), x/c -> x*(1/c): changes rounding."""
    if n.op == "div" and is_float(n.dtype) and const_value(n.inputs[1]) is not None and \
            n.inputs[1].op == "const" and n.inputs[1].value.size == 1:
        c = n.inputs[1]
        return make("mul", [n.inputs[0], make_const(1.0 / c.value, n.dtype, n.loc)], n.loc)
    if n.op not in ("add", "mul") or not is_float(n.dtype):
        return None
    x, c2 = n.inputs
    if c2.op != "const" or x.op != n.op or x.inputs[1].op != "const":
        return None
    c1 = x.inputs[1]
    fused = OPS[n.op].ref([c1.value, c2.value], {}, None)
    if fused.size > max(c1.value.size, c2.value.size):
        return None
    inner = make_const(fused, n.dtype, n.loc)
    out = make(n.op, [x.inputs[0], inner], n.loc)
    return out if same_type(out, n) else None


def transposed_products(uses: dict[int, int]) -> Rule:
    """transpose(a @ b) -> b^T @ a^T when the product has no other use: a weight gradient of a
    layer that stores W as (out, in) then comes out in W's layout, and the optimizer update fuses
    into the matmul's epilogue. The same dot products, but a BLAS may block them differently."""
    def rule(n: Node) -> Node | None:
        if n.op != "transpose" or n.inputs[0].op != "matmul" or uses.get(id(n.inputs[0]), 0) != 1:
            return None
        perm = tuple(n.attr("perm"))
        k = len(perm)
        if perm != tuple(range(k - 2)) + (k - 1, k - 2):
            return None
        a, b = n.inputs[0].inputs
        if a.ndim != k or b.ndim != k:
            return None
        out = make("matmul", [make("transpose", [b], n.loc, perm=perm), make("transpose", [a], n.loc, perm=perm)],
                   n.loc)
        return out if same_type(out, n) else None
    return rule


def transposes_toward_products(uses: dict[int, int]) -> Rule:
    """transpose(a + b) -> transpose(a) + transpose(b) when a or b is a product used once, so that
    transposed_products can turn it around: a weight used twice in a step (a GAN's discriminator
    on real and fake data) gets a gradient that is a sum of two products."""
    def rule(n: Node) -> Node | None:
        if n.op != "transpose" or uses.get(id(n.inputs[0]), 0) != 1:
            return None
        e = n.inputs[0]
        if OPS[e.op].kind != "elementwise" or any(tuple(x.shape) != tuple(e.shape) for x in e.inputs):
            return None
        if not any(x.op in ("matmul", "transpose") and uses.get(id(x), 0) == 1 for x in e.inputs):
            return None
        perm = n.attr("perm")
        return Node(e.op, tuple(make("transpose", [x], n.loc, perm=perm) for x in e.inputs), e.attrs,
                    n.shape, e.dtype, n.loc)
    return rule


def use_counts(roots: list[Node]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for n in topo_order(roots):
        for i in n.inputs:
            counts[id(i)] = counts.get(id(i), 0) + 1
    for r in roots:
        counts[id(r)] = counts.get(id(r), 0) + 1
    return counts


# ----------------------------------------------------------------------------
# the driver


def rewrite(roots: list[Node], rules: list[Rule]) -> tuple[list[Node], int]:
    """Rebuild the graph under `roots` bottom-up, applying rules at each node until none fires."""
    memo: dict[int, Node] = {}
    count = 0
    for n in topo_order(roots):
        inputs = tuple(memo[id(i)] for i in n.inputs)
        m = n if all(a is b for a, b in zip(inputs, n.inputs)) else \
            Node(n.op, inputs, n.attrs, n.shape, n.dtype, n.loc, n.value)
        for _ in range(16):
            r = next((r for r in (rule(m) for rule in rules) if r is not None and r is not m), None)
            if r is None:
                break
            if not same_type(r, m):
                raise AssertionError(f"a rewrite changed {m!r} into {r!r}")
            m, count = r, count + 1
        memo[id(n)] = m
    return [memo[id(r)] for r in roots], count


def reassociation_rules(uses: dict[int, int]) -> list[Rule]:
    return [reassociate_constants, exact_inverses, transposed_products(uses), transposes_toward_products(uses)]


def passes(reassociate: bool = True, fold_limit: int = 4096) -> list[tuple[str, Callable]]:
    """The simplification passes in the order they run: (name, roots -> its rules)."""
    algebra = [drop_identities, merge_shape_ops, trivial_reductions, unit_reshapes, scale_by_power_of_two]
    out = [
        ("fold_constants", lambda roots: [fold_constants(fold_limit)]),
        ("algebraic", lambda roots: algebra),
        ("canonicalize", lambda roots: [implicit_broadcast, canonical_order(StructuralKeys()),
                                        reduce_reshapes(use_counts(roots)), sink_reshapes(use_counts(roots))]),
    ]
    if reassociate:
        out.append(("reassociate", lambda roots: reassociation_rules(use_counts(roots))))
    return out


def simplify(roots: list[Node], reassociate: bool = True, fold_limit: int = 4096,
             max_rounds: int = 10) -> tuple[list[Node], list[dict]]:
    """Run every pass to a fixed point; returns the new roots and a log of each pass's effect.

    reassociate=False forbids rewrites that change floating-point rounding.
    fold_limit bounds the elements of a folded constant (a folded broadcast
    must not turn into a large array baked into the program).
    """
    from ..graph import Graph

    log = [{"pass": "input", "nodes": len(Graph(roots)), "ops": Graph(roots).op_counts(), "rewrites": 0}]
    for _ in range(max_rounds):
        changed = False
        for name, rules_for in passes(reassociate, fold_limit):
            roots, count = rewrite(roots, rules_for(roots))
            if count:
                g = Graph(roots)
                log.append({"pass": name, "nodes": len(g), "ops": g.op_counts(), "rewrites": count})
                changed = True
        if not changed:
            break
    return roots, log
