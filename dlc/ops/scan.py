"""scan: a loop whose body is a traced subgraph; recurrent nets run on it, and its gradient is a reverse scan.

`dlc.scan(body, init_carry, xs)` calls `body(carry, x_t) -> (new_carry, y_t)`
once, on placeholders, so the graph and the compile time do not grow with the
sequence length.

Representation
--------------
The traced body is a `Body`: an ordinary dlc `Graph` whose only sources are
constants and placeholder "input" nodes, all named after the scan ("scan4.carry0"):

    carry_in     one placeholder per carry leaf (the carry entering the step)
    x_in         one per xs leaf: that leaf's slice xs_i[t], its shape minus axis 0
    captured_in  one per value the body closes over (a parameter, any tensor of
                 the outer graph): the same value at every step
    step_in      int64 scalar: the index t of the step, 0..T-1 whichever the direction
    carry_out    the graph outputs that become the next carries
    y_out        the graph outputs stacked into ys

A Body is compared and hashed by identity, so it can sit in a node's attrs.
Two nodes stand for one loop:

    %s = scan(init_0.., xs_0.., captured_0..; body, length, reverse, save_carries) : tuple(B, T)
    %o = scan_output(%s; index=k)                                                 : dtype(shape)

The scan node's dtype is `graph.TUPLE`: its value is a tuple of arrays, and a
`scan_output` node picks one. Its shape is not an array's: it lists the
symbolic dims of the loop (those of its body and its length, sorted), so an
executor binds them the way it binds any node's shape; the numpy reference
receives their values as its out_shape. With C carries and Y per-step
outputs, index

    0 .. C-1        the final carries
    C .. C+Y-1      the ys, stacked along a new axis 0: (T, *y_t shape)
    C+Y .. 2C+Y-1   the carries entering each step, stacked: (T, *carry shape);
                    saved for backpropagation through time, present when
                    save_carries (true for every scan but a gradient's own)

`length` is axis 0 of the xs (an int or a symbolic dim such as "T"); without
xs it must be an int. Step t binds carry_in to the current carries, x_in to
xs_i[t], captured_in to the captured inputs and step_in to t, evaluates the
body graph, and writes y_out to ys[t]; `reverse` runs t from T-1 down to 0
(ys[t] still belongs to xs[t]).

Gradient
--------
The gradient of a scan is another scan, in the opposite direction, over the
saved carries, the xs and the incoming gradients of the ys. Its body re-runs
the forward body from the saved carry of step t and differentiates it with
`dlc.grad(outputs, wrt, seed=...)`: the gradient of the next carry comes in as
its carry, the gradients of the closed-over values are summed in its carry,
and the gradient of each x_t is its per-step output. A closed-over weight that
the body only multiplies from the right (h @ W) gets no running sum: the
backward scan emits each step's left operand and output gradient, and one
matrix product over all steps after the loop gives the weight's gradient
(the way the forward input projection is one product before it).

Such a product whose left operand depends on the carries (h @ W_hh: the
step's costly part, which the backward would otherwise compute a second time)
is saved by the forward scan: a scan that saves its carries also stacks those
products as extra ys after the user's (`saved_products`, never returned to the
user). The backward body then takes the product's value from there instead of
re-running it, and sends its gradient on to the left operand itself
(dL/dh = dL/dm W^T), so each backward step multiplies by W once, not twice.

Padded batches: `lengths` (int, (B,)) masks the steps past a sequence's end:
there the carries keep their value and the ys are zero. Every carry and y leaf
then has the batch as its first axis.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..errors import DTypeError, GradientError, ShapeError
from ..graph import (
    INT_DTYPES,
    TUPLE,
    Graph,
    Node,
    freeze_attrs,
    is_float,
    shape_str,
    symbols_of,
    topo_order,
    user_location,
)
from .base import OPAQUE, apply, register
from .checks import check_bool, check_int, check_shape

_SCAN_IDS = itertools.count(1)


def _F():
    from .. import functional

    return functional


def _Tensor():
    from ..tensor import Tensor

    return Tensor


def _describe(node) -> str:
    return f"{node.dtype}{shape_str(node.shape)}"


# ----------------------------------------------------------------------------
# the traced body


class Body:
    """A traced scan body: placeholders in, a Graph of carry_out + y_out out. Hashed by identity."""

    def __init__(self, name: str, carry_in, x_in, captured_in, step_in, carry_out, y_out):
        self.name = name
        self.carry_in, self.x_in, self.captured_in = tuple(carry_in), tuple(x_in), tuple(captured_in)
        self.step_in = step_in
        self.carry_out, self.y_out = tuple(carry_out), tuple(y_out)
        self.graph = Graph(self.carry_out + self.y_out)
        self.symbols = tuple(sorted(set().union(*(symbols_of(n.shape) for n in self.graph.nodes))))

    @property
    def outputs(self) -> tuple[Node, ...]:
        """carry_out + y_out: the outputs of the body's graph."""
        return self.graph.outputs

    @property
    def placeholders(self) -> tuple[Node, ...]:
        return self.carry_in + self.x_in + self.captured_in + (self.step_in,)

    def __repr__(self) -> str:
        return (f"<Body {self.name}: {len(self.carry_in)} carries, {len(self.x_in)} xs, "
                f"{len(self.captured_in)} captured, {len(self.y_out)} ys, {len(self.graph)} nodes>")


def _placeholder(name: str, shape, dtype) -> Node:
    return Node("input", (), freeze_attrs({"name": name}), tuple(shape), dtype, user_location())


def _flatten(tree, what: str):
    """(leaves, structure) of a pytree of lists/tuples of Tensors; a lone Tensor is one leaf."""
    Tensor = _Tensor()
    if isinstance(tree, (list, tuple)):
        leaves, subs = [], []
        for item in tree:
            sub_leaves, sub = _flatten(item, what)
            leaves += sub_leaves
            subs.append(sub)
        return leaves, (type(tree), tuple(subs))
    if isinstance(tree, Tensor):
        return [tree], None
    if isinstance(tree, (np.ndarray, float, int, np.generic)):
        return [_F().constant(tree)], None
    raise TypeError(f"scan: {what} must be Tensors or (nested) lists/tuples of Tensors, "
                    f"got {type(tree).__name__}")


def _unflatten(structure, leaves: list):
    it = iter(leaves)

    def build(s):
        if s is None:
            return next(it)
        kind, subs = s
        return kind(build(x) for x in subs)
    return build(structure)


def _same_structure(a, b) -> bool:
    """Equal up to list vs tuple."""
    if a is None or b is None:
        return a is None and b is None
    return len(a[1]) == len(b[1]) and all(_same_structure(x, y) for x, y in zip(a[1], b[1]))


def _depends_on(order: list[Node], sources: set[int]) -> set[int]:
    """Ids of the nodes in `order` computed from any of `sources` (the sources included)."""
    hit = set(sources)
    for n in order:
        if any(id(i) in hit for i in n.inputs):
            hit.add(id(n))
    return hit


def _capture(outputs: list[Node], placeholders: list[Node], name: str):
    """Replace the outer values the body reads by placeholders.

    Returns (new outputs, captured outer nodes, their placeholders). A value
    is captured where the body's own computation (what depends on a
    placeholder) reads a node that does not; constant expressions stay inside.
    """
    order = topo_order(outputs)
    inner = _depends_on(order, {id(p) for p in placeholders})
    constant = set()
    for n in order:
        if n.op == "const" or (n.inputs and all(id(i) in constant for i in n.inputs)):
            constant.add(id(n))
    frontier: dict[int, Node] = {}
    for n in order:
        if id(n) in inner:
            for i in n.inputs:
                if id(i) not in inner and id(i) not in constant:
                    frontier.setdefault(id(i), i)
    for o in outputs:
        if id(o) not in inner and id(o) not in constant:
            frontier.setdefault(id(o), o)
    captured = sorted(frontier.values(), key=lambda n: n.serial)
    stand_ins = [_placeholder(f"{name}.captured{k}", n.shape, n.dtype) for k, n in enumerate(captured)]
    subst = {id(n): p for n, p in zip(captured, stand_ins)}
    new = _substitute(order, subst)
    return [new[id(o)] for o in outputs], captured, stand_ins


def _substitute(order: list[Node], subst: dict[int, Node]) -> dict[int, Node]:
    """Rebuild the nodes of `order` with some nodes replaced (same shapes); id(old) -> new node."""
    new = dict(subst)
    for n in order:
        if id(n) in new:
            continue
        inputs = tuple(new.get(id(i), i) for i in n.inputs)
        same = all(a is b for a, b in zip(inputs, n.inputs))
        new[id(n)] = n if same else Node(n.op, inputs, n.attrs, n.shape, n.dtype, n.loc, n.value)
    return new


def instantiate(body: Body, carries, xs, captured, step, values=None) -> dict[int, Node]:
    """The body's graph re-built on given nodes in place of its placeholders: id(body node) -> new node.
    `values` (id(body node) -> node) stands in given nodes for some inner ones too: their inputs are still
    rebuilt, but nothing reads them there."""
    subst = dict(values or {})
    for p, v in zip(body.placeholders, list(carries) + list(xs) + list(captured) + [step]):
        if tuple(v.shape) != tuple(p.shape) or v.dtype != p.dtype:
            raise AssertionError(f"{p.attr('name')} is {_describe(p)}, cannot bind {_describe(v)}")
        subst[id(p)] = v
    return _substitute(body.graph.nodes, subst)


# ----------------------------------------------------------------------------
# tracing: the DSL functions


def _check_carry(init: list, new: list, init_s, new_s):
    if not _same_structure(init_s, new_s) or len(init) != len(new):
        raise ShapeError(f"scan body returned a carry with {len(new)} tensor(s) (structure {_show(new_s)}), "
                         f"but init_carry has {len(init)} (structure {_show(init_s)}); the carry must keep "
                         f"its structure")
    for k, (a, b) in enumerate(zip(init, new)):
        if tuple(a.shape) != tuple(b.shape) or a.dtype != b.dtype:
            raise ShapeError(f"scan body: carry leaf {k} enters the step as {_describe(a.node)} but leaves "
                             f"it as {_describe(b.node)}; a carry must keep its shape and dtype")


def _show(structure) -> str:
    if structure is None:
        return "T"
    kind, subs = structure
    inner = ", ".join(_show(s) for s in subs)
    return f"[{inner}]" if kind is list else f"({inner}{',' if len(subs) == 1 else ''})"


def _sequence_length(x_leaves: list, length):
    if not x_leaves:
        if not isinstance(length, (int, np.integer)) or length < 0:
            raise ShapeError(f"scan without xs needs length= a non-negative int, got {length!r}")
        return int(length)
    for k, x in enumerate(x_leaves):
        if x.ndim == 0:
            raise ShapeError(f"scan: xs leaf {k} is a scalar; every xs leaf is sliced along its axis 0")
    dims = [x.shape[0] for x in x_leaves]
    if any(d != dims[0] for d in dims):
        raise ShapeError(f"scan: the xs disagree on the sequence length (axis 0): {dims}")
    if length is not None and length != dims[0]:
        raise ShapeError(f"scan: length={length!r} but the xs have {dims[0]} steps")
    return dims[0]


def _mask(new: list, old: list, ys: list, step, lengths):
    """Past a sequence's end the carry keeps its value and y is zero (padded batches)."""
    F = _F()
    batch = lengths.shape[0]
    for what, leaves in (("carry", new), ("y", ys)):
        for k, t in enumerate(leaves):
            if t.ndim == 0 or t.shape[0] != batch:
                raise ShapeError(f"scan with lengths {shape_str(lengths.shape)}: {what} leaf {k} is "
                                 f"{_describe(t.node)}; with lengths every carry and y has the batch as axis 0")
    live = F.less(F.cast(step, lengths.dtype), lengths)

    def keep(t):
        return F.reshape(live, (batch,) + (1,) * (t.ndim - 1))
    new = [F.where(keep(n), n, o) for n, o in zip(new, old)]
    ys = [F.where(keep(y), y, 0.0) for y in ys]
    return new, ys


def scan_with_step(fn, init_carry, xs=None, length=None, reverse=False, lengths=None, save_carries=True):
    """scan whose body also gets the step index: fn(carry, x_t, t) -> (new_carry, y_t), t an int64 scalar.

    save_carries=False leaves out the per-step carries (the scan cannot be differentiated then).
    """
    Tensor = _Tensor()
    carry_leaves, carry_s = _flatten(init_carry, "init_carry")
    x_leaves, x_s = _flatten(xs if xs is not None else (), "xs")
    T = _sequence_length(x_leaves, length)
    if lengths is not None:
        lengths = lengths if isinstance(lengths, Tensor) else _F().constant(np.asarray(lengths))
        if lengths.dtype not in INT_DTYPES or lengths.ndim != 1:
            raise DTypeError(f"scan: lengths must be an int32/int64 vector (B,), got {_describe(lengths.node)}")

    name = f"scan{next(_SCAN_IDS)}"
    carry_in = [_placeholder(f"{name}.carry{k}", c.shape, c.dtype) for k, c in enumerate(carry_leaves)]
    x_in = [_placeholder(f"{name}.x{k}", x.shape[1:], x.dtype) for k, x in enumerate(x_leaves)]
    step_in = _placeholder(f"{name}.step", (), "int64")

    carry_t = [Tensor(p) for p in carry_in]
    out = fn(_unflatten(carry_s, carry_t), _unflatten(x_s, [Tensor(p) for p in x_in]), Tensor(step_in))
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise TypeError(f"scan body must return a pair (new_carry, y), got {type(out).__name__}")
    new_leaves, new_s = _flatten(out[0], "the body's new carry")
    y_leaves, y_s = _flatten(out[1] if out[1] is not None else (), "the body's y")
    _check_carry(carry_t, new_leaves, carry_s, new_s)
    if lengths is not None:
        new_leaves, y_leaves = _mask(new_leaves, carry_t, y_leaves, Tensor(step_in), lengths)

    outs = [t.node for t in new_leaves + y_leaves]
    outs, captured, captured_in = _capture(outs, carry_in + x_in + [step_in], name)
    C = len(carry_in)
    # a value returned as several ys is stacked once (a gradient's dL/dx_t is often also dL/d(x_t @ W))
    ys, slot = [], []   # slot[j]: where the user's y j is stacked
    for y in outs[C:]:
        k = next((k for k, u in enumerate(ys) if u is y), None)
        if k is None:
            k = len(ys)
            ys.append(y)
        slot.append(k)
    body = Body(name, carry_in, x_in, captured_in, step_in, outs[:C], ys)
    if save_carries:
        extra = [m for m in saved_products(body) if not any(m is y for y in ys)]
        if extra:
            body = Body(name, carry_in, x_in, captured_in, step_in, outs[:C], ys + extra)
    node = apply("scan", [t.node for t in carry_leaves + x_leaves] + captured, body=body,
                 reverse=bool(reverse), length=T, save_carries=bool(save_carries))
    results = [Tensor(apply("scan_output", [node], index=k)) for k in range(C + len(ys))]
    return _unflatten(carry_s, results[:C]), _unflatten(y_s, [results[C + k] for k in slot])


def scan(body, init_carry, xs=None, length=None, reverse=False, lengths=None):
    """Run body(carry, x_t) -> (new_carry, y_t) over axis 0 of xs; returns (final carry, ys stacked on axis 0).

    body is traced once, whatever the length (which may be a symbolic dim).
    carry, xs and y may be Tensors or nested lists/tuples of them; tensors the
    body closes over become inputs of the loop. reverse=True runs from the
    last step to the first (ys[t] still belongs to xs[t]). lengths (int (B,))
    masks padded steps: there the carry is kept and y is zero. Without xs,
    length (an int) gives the number of steps.
    """
    return scan_with_step(lambda c, x, t: body(c, x), init_carry, xs, length, reverse, lengths)


# ----------------------------------------------------------------------------
# the scan op: shape rule, numpy reference, gradient


def _scan_infer(xs, attrs):
    body, T = attrs["body"], attrs["length"]
    if not isinstance(body, Body):
        raise ShapeError(f"scan body must be a traced body, got {type(body).__name__}")
    if isinstance(T, str):
        check_shape((T,), "scan length")
    else:
        check_int(T, "scan length", 0)
    check_bool(attrs["reverse"], "reverse")
    check_bool(attrs["save_carries"], "save_carries")
    C, X = len(body.carry_in), len(body.x_in)
    if len(xs) != C + X + len(body.captured_in):
        raise ShapeError(f"{body.name} takes {C + X + len(body.captured_in)} inputs, got {len(xs)}")
    for k, (v, p) in enumerate(zip(xs, body.carry_in + body.x_in + body.captured_in)):
        want = ((T,) + p.shape) if C <= k < C + X else p.shape
        if tuple(v.shape) != tuple(want) or v.dtype != p.dtype:
            raise ShapeError(f"{body.name}: input {k} is {_describe(v)}, its body expects "
                             f"{p.dtype}{shape_str(want)}")
    if not X and not isinstance(T, int):
        raise ShapeError(f"{body.name}: a scan without xs needs an int length, got {T!r}")
    return loop_symbols(body, T), TUPLE


def loop_symbols(body: Body, length) -> tuple[str, ...]:
    """The symbolic dims a scan needs bound at run time: its body's and its length's (the node's shape)."""
    return tuple(sorted(set(body.symbols) | symbols_of((length,))))


def _output_infer(xs, attrs):
    (scan_node,) = xs
    if scan_node.op != "scan":
        raise ShapeError(f"scan_output reads a scan node, got {scan_node.op}")
    body, T = scan_node.attr("body"), scan_node.attr("length")
    C, Y = len(body.carry_out), len(body.y_out)
    k = check_int(attrs["index"], "scan_output index", 0)
    if 0 <= k < C:
        return body.carry_out[k].shape, body.carry_out[k].dtype
    if C <= k < C + Y:
        y = body.y_out[k - C]
        return (T,) + y.shape, y.dtype
    if C + Y <= k < 2 * C + Y and scan_node.attr("save_carries"):
        c = body.carry_in[k - C - Y]
        return (T,) + c.shape, c.dtype
    raise ShapeError(f"{body.name} has {_output_count(scan_node)} outputs, index {k} is out of range")


def _output_count(scan_node) -> int:
    body = scan_node.attr("body")
    C, Y = len(body.carry_in), len(body.y_out)
    return 2 * C + Y if scan_node.attr("save_carries") else C + Y


class TupleCotangent:
    """The gradient reaching a multi-output node: {output index: Tensor}; autodiff sums these with +."""

    dtype = TUPLE

    def __init__(self, parts: dict, shape: tuple):
        self.parts = dict(parts)
        self.shape = shape  # the multi-output node's, as autodiff checks

    def __add__(self, other: TupleCotangent) -> TupleCotangent:
        merged = dict(self.parts)
        for k, g in other.parts.items():
            merged[k] = merged[k] + g if k in merged else g
        return TupleCotangent(merged, self.shape)


def _zeros(shape, dtype):
    F = _F()
    return F.broadcast_to(F.constant(0.0, dtype=dtype), shape)


def _right_matmuls(body: Body, j: int) -> list[Node] | None:
    """The matmuls `a @ w` that are the only use of captured 2-D value j in the body, else None."""
    w = body.captured_in[j]
    users = [n for n in body.graph.nodes if any(i is w for i in n.inputs)]
    if w.ndim != 2 or not users or any(o is w for o in body.graph.outputs):
        return None
    if all(n.op == "matmul" and n.inputs[1] is w and n.inputs[0] is not w and n.inputs[0].ndim == 2
           for n in users):
        return users
    return None


def saved_products(body: Body) -> list[Node]:
    """The products `a @ w` (w closed over, used only that way) whose left operand depends on a carry: what a
    scan that saves its carries also saves per step, so that its gradient does not compute them again."""
    carried = _depends_on(body.graph.nodes, {id(p) for p in body.carry_in})
    out = []
    for j in range(len(body.captured_in)):
        if is_float(body.captured_in[j].dtype):
            out += [m for m in _right_matmuls(body, j) or () if id(m.inputs[0]) in carried]
    return out


def _stacked_product(a_steps, g_steps):
    """sum over t of a_t.T @ g_t, as one matrix product over the (T, rows, .) stacks."""
    F = _F()
    rows = lambda x: F.reshape(x, (_dim_mul(x.shape[0], x.shape[1]), x.shape[2]))  # noqa: E731
    return F.matmul(F.transpose(rows(a_steps)), rows(g_steps))


def _dim_mul(a, b):
    from ..graph import dim_mul

    return dim_mul(a, b)


def _scan_grad(node, g, xs):
    """Backpropagation through time: a scan in the other direction over the saved carries."""
    Tensor, F = _Tensor(), _F()
    body = node.attr("body")
    C, X, Y = len(body.carry_in), len(body.x_in), len(body.y_out)
    parts = g.parts
    if any(k >= C + Y for k in parts) or not node.attr("save_carries"):
        raise GradientError(f"{body.name}: differentiating the carries a scan saves for its own gradient, or "
                            f"a scan built for a gradient (a second-order gradient through scan), is not supported")
    init, seqs, captured = xs[:C], xs[C:C + X], xs[C + X:]
    fc = [k for k in range(C) if is_float(body.carry_in[k].dtype)]
    fx = [i for i in range(X) if is_float(body.x_in[i].dtype)]
    fk = [j for j in range(len(captured)) if is_float(captured[j].dtype)]
    seeded_ys = [j for j in range(Y) if C + j in parts and is_float(body.y_out[j].dtype)]
    if not fc and not seeded_ys:
        return [None] * len(xs)
    saved = [Tensor(apply("scan_output", [node], index=C + Y + k)) for k in range(C)]
    hoisted = {j: m for j in fk if (m := _right_matmuls(body, j)) is not None}
    summed = [j for j in fk if j not in hoisted]
    products = [m for j in hoisted for m in hoisted[j]]  # their left operands and output gradients leave the loop
    # a left operand that is a carry or an x is already stacked outside; any other is emitted per step
    outer_left = {id(p): v for p, v in zip(body.carry_in + body.x_in, saved + list(seqs))}
    emitted = [m for m in products if id(m.inputs[0]) not in outer_left]
    # products the forward scan stacked among its ys: read back, not computed again
    stacked = [(m, j) for m in products for j, y in enumerate(body.y_out) if y is m]
    weight_of = {id(m): captured[j] for j in hoisted for m in hoisted[j]}
    products_read = [Tensor(apply("scan_output", [node], index=C + j)) for _, j in stacked]
    g_final = [parts.get(k) if parts.get(k) is not None else _zeros(init[k].shape, init[k].dtype) for k in fc]
    g_zero = [_zeros(captured[j].shape, captured[j].dtype) for j in summed]

    def backward_step(carry, x, step):
        g_carry, g_summed = carry
        c_t, x_t, gy_t, m_t = x
        new = instantiate(body, [c.node for c in c_t], [v.node for v in x_t], [c.node for c in captured], step.node,
                          {id(m): v.node for (m, _), v in zip(stacked, m_t)})
        outs = [Tensor(new[id(body.carry_out[k])]) for k in fc] + [Tensor(new[id(body.y_out[j])]) for j in seeded_ys]
        wrt = ([c_t[k] for k in fc] + [x_t[i] for i in fx] + [captured[j] for j in summed] +
               [Tensor(new[id(m)]) for m in products])
        grads = _autodiff_grad(outs, wrt, list(g_carry) + list(gy_t))
        n1, n2, n3 = len(fc), len(fc) + len(fx), len(fc) + len(fx) + len(summed)
        dm = grads[n3:]
        if stacked:  # a read-back product passes no gradient to its left operand by itself: dL/da = dL/dm w^T
            by_id = dict(zip(map(id, products), dm))
            lefts_in = [Tensor(new[id(m.inputs[0])]) for m, _ in stacked]
            seeds = [F.matmul(by_id[id(m)], F.transpose(weight_of[id(m)])) for m, _ in stacked]
            reach = {id(n) for n in topo_order([a.node for a in lefts_in])}
            upstream = [i for i in range(n3) if id(wrt[i].node) in reach]  # (no zeros added to the others)
            for i, more in zip(upstream, _autodiff_grad(lefts_in, [wrt[i] for i in upstream], seeds)):
                grads[i] = grads[i] + more
        dc, dx, dw = grads[:n1], grads[n1:n2], grads[n2:n3]
        lefts = [Tensor(new[id(m.inputs[0])]) for m in emitted]
        return (dc, [a + b for a, b in zip(g_summed, dw)]), (dx, dm, lefts)

    gys = [parts[C + j] for j in seeded_ys]
    (g_init, g_sums), (g_seqs, g_products, left_steps) = scan_with_step(
        backward_step, (g_final, g_zero), (saved, list(seqs), gys, products_read), length=node.attr("length"),
        reverse=not node.attr("reverse"), save_carries=False)
    out: list = [None] * len(xs)
    for k, gk in zip(fc, g_init):
        out[k] = gk
    for i, gi in zip(fx, g_seqs):
        out[C + i] = gi
    for j, gj in zip(summed, g_sums):
        out[C + X + j] = gj
    left_steps = dict(zip(map(id, emitted), left_steps))
    for m, g_steps in zip(products, g_products):
        j = next(j for j in hoisted if any(m is u for u in hoisted[j]))
        a_steps = outer_left[id(m.inputs[0])] if id(m.inputs[0]) in outer_left else left_steps[id(m)]
        dw = _stacked_product(a_steps, g_steps)
        out[C + X + j] = dw if out[C + X + j] is None else out[C + X + j] + dw
    return out


def _autodiff_grad(outs, wrt, seeds):
    from ..autodiff import grad

    if not wrt:
        return []
    return grad(outs, wrt, seed=seeds)


def _output_grad(node, g, xs):
    return [TupleCotangent({node.attr("index"): g}, node.inputs[0].shape)]


# The reference of a scan is a loop over its body graph: dlc/runtime/reference.py runs it (ref None).
register("scan", OPAQUE, _scan_infer, None, _scan_grad,
         doc="a loop over a traced body; value: a tuple of arrays (see dlc/ops/scan.py)")
register("scan_output", OPAQUE, _output_infer, lambda xs, a, shape: xs[0][a["index"]], _output_grad,
         doc="output `index` of a scan node")
