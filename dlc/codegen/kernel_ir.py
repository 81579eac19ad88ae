"""The kernel IR: what a kernel computes, as data both renderers print.

Three layers, each small:

- index expressions (`Var`, `Lit`, `Dim`, `Bin`): loop variables, integer
  literals and the program's dims (an int, or a symbol such as "B" that the
  renderer turns into an argument), with the index algebra of the injective
  ops (`remap`: transpose, broadcast, reshape, slice, pad, the gradient of a
  slice, concat) written once;
- element values (`Load`, `Arg`, `Const`, `Apply`, `Cast`, `Ref`): an element
  of a buffer, a runtime scalar, a literal, an op's scalar template over
  values, a conversion, a named variable;
- statements (`Let`, `Assign`, `LetIndex`, `Select`, `Store`, `Declare`, `Accumulate`,
  `ArgBest`, `Loop`, `Call`): bindings, conditional reads, stores,
  reductions, loops and calls to hand-written kernels.

dlc/codegen/lower.py builds them from a Kernel; dlc/codegen/printer.py prints
them, as Python for numba (dlc/codegen/numba.py) or as C for CUDA
(dlc/codegen/cuda.py), each renderer adding only what its target decides
alone: how loops map to threads, which arguments a kernel takes.

Division is integer division of non-negative operands, except where a
condition rejects the result (the gradient of a strided slice): Python's `//`
and C's `/` differ only on negative operands, and both renderers print the
same condition, which holds for neither then.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..graph import Node

# ----------------------------------------------------------------------------
# expressions


@dataclass(frozen=True)
class Var:
    """Text the renderer defined: a loop variable, a bound temporary, or an index it computed itself.

    Compound text (atomic=False) is parenthesized where it is an operand, and kept verbatim where it is a whole
    index, so an index that passes through a remap unchanged keeps its exact text (renderers key caches on it).
    """
    name: str
    atomic: bool = True


@dataclass(frozen=True)
class Lit:
    value: int


@dataclass(frozen=True)
class Dim:
    """A dim of a shape: an int, or a symbol the renderer reads from an argument."""
    dim: int | str


@dataclass(frozen=True)
class Bin:
    """a op b, op one of + - * // % < <= == and."""
    op: str
    a: Expr
    b: Expr


Expr = Var | Lit | Dim | Bin
ZERO, ONE = Lit(0), Lit(1)


def lit_or_dim(d) -> Expr:
    return Lit(d) if isinstance(d, int) else Dim(d)


def add(a: Expr, b: Expr) -> Expr:
    if a == ZERO:
        return b
    if b == ZERO:
        return a
    if isinstance(a, Lit) and isinstance(b, Lit):
        return Lit(a.value + b.value)
    return Bin("+", a, b)


def sub(a: Expr, b: Expr) -> Expr:
    if b == ZERO:
        return a
    if isinstance(a, Lit) and isinstance(b, Lit):
        return Lit(a.value - b.value)
    return Bin("-", a, b)


def mul(a: Expr, b: Expr) -> Expr:
    if a == ONE:
        return b
    if b == ONE:
        return a
    if ZERO in (a, b):
        return ZERO
    if isinstance(a, Lit) and isinstance(b, Lit):
        return Lit(a.value * b.value)
    return Bin("*", a, b)


def floordiv(a: Expr, b: Expr) -> Expr:
    return a if b == ONE else Bin("//", a, b)


def mod(a: Expr, b: Expr) -> Expr:
    return ZERO if b == ONE else Bin("%", a, b)


def less(a: Expr, b: Expr) -> Expr:
    return Bin("<", a, b)


def all_of(terms: list[Expr]) -> Expr | None:
    """The conjunction of the terms (None: no condition)."""
    out = None
    for t in terms:
        out = t if out is None else Bin("and", out, t)
    return out


def in_range(i: Expr, n: Expr) -> list[Expr]:
    """0 <= i < n."""
    return [Bin("<=", ZERO, i), less(i, n)]


# ----------------------------------------------------------------------------
# printing


@dataclass(frozen=True)
class Dialect:
    """How one target language spells integer index arithmetic."""
    floordiv: str
    and_: str


PYTHON = Dialect(floordiv="//", and_="and")
C = Dialect(floordiv="/", and_="&&")

_PRECEDENCE = {"and": 0, "<": 1, "<=": 1, "==": 1, "+": 2, "-": 2, "*": 3, "//": 3, "%": 3}


def print_index(e: Expr, dialect: Dialect, dim: Callable[[int | str], str], parent: int = -1,
                right: bool = False) -> str:
    """The expression as source text; `dim` prints a symbolic dim (an argument or a parameter name)."""
    if isinstance(e, Var):
        return e.name if e.atomic or parent < 0 else f"({e.name})"
    if isinstance(e, Lit):
        return str(e.value) if e.value >= 0 or parent < 0 else f"({e.value})"
    if isinstance(e, Dim):
        return str(e.dim) if isinstance(e.dim, int) else dim(e.dim)
    prec = _PRECEDENCE[e.op]
    op = {"//": dialect.floordiv, "and": dialect.and_}.get(e.op, e.op)
    text = f"{print_index(e.a, dialect, dim, prec)} {op} {print_index(e.b, dialect, dim, prec, True)}"
    # every operator here is left-associative: a right operand of equal precedence keeps its parentheses
    return f"({text})" if prec < parent or (prec == parent and right) else text


def as_index(text: str) -> Expr:
    """A renderer's index text as an expression (kept verbatim; compound text is parenthesized)."""
    if text.isdigit():
        return Lit(int(text))
    return Var(text, atomic=text.isidentifier() or _one_group(text))


def index_text(e: Expr, dialect: Dialect, dim: Callable[[int | str], str]) -> str:
    """An index expression as text that is safe to use as an operand (compound text is parenthesized)."""
    text = print_index(e, dialect, dim)
    return text if isinstance(e, (Var, Lit)) or (isinstance(e, Dim) and isinstance(e.dim, int)) else f"({text})"



def _one_group(text: str) -> bool:
    """Whether text is one parenthesized group: "(a + b)" but not "(a) + (b)"."""
    if not (text.startswith("(") and text.endswith(")")):
        return False
    depth = 0
    for k, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0 and k < len(text) - 1:
            return False
    return True


# ----------------------------------------------------------------------------
# row-major offsets


def strides(shape) -> list[Expr]:
    """Row-major strides of a shape, as expressions."""
    out, acc = [], ONE
    for d in reversed(shape):
        out.append(acc)
        acc = mul(acc, lit_or_dim(d))
    return list(reversed(out))


def linear(idx: tuple[Expr, ...], shape) -> Expr:
    """The row-major offset of a multi-index, in Horner form (dims of extent 1 contribute nothing)."""
    out = None
    for i, d in zip(idx, shape):
        if d != 1:
            out = i if out is None else add(mul(out, lit_or_dim(d)), i)
    return out or ZERO


def delinearize(flat: Expr, shape) -> tuple[Expr, ...]:
    """The multi-index of a row-major offset."""
    out = []
    for k, (s, d) in enumerate(zip(strides(shape), shape)):
        if d == 1:
            out.append(ZERO)
        elif k == 0:
            out.append(floordiv(flat, s))
        else:
            out.append(mod(floordiv(flat, s), lit_or_dim(d)))
    return tuple(out)


def reshape_index(idx: tuple[Expr, ...], out_shape, in_shape, bind: Callable[[Expr], Expr] = lambda e: e) \
        -> tuple[Expr, ...]:
    """The index of a reshape's input read for its element at idx.

    Run by run of adjacent dims whose extents multiply to the same number on both sides: a dim both shapes
    share is read as is, a merge of dims is a multiply-add, a split a division by constants (heads split off a
    feature dim: (b, t, h * D + d), not four divisions of one flat offset). Shapes that do not line up so (a
    symbolic dim not matched by itself, an empty dim) take the whole offset.
    """
    runs = _matching_runs(tuple(out_shape), tuple(in_shape))
    if runs is None:
        return delinearize(bind(linear(idx, out_shape)), in_shape)
    src: list[Expr] = []
    for (o0, o1), (i0, i1) in runs:
        if o1 - o0 == 1 and i1 - i0 == 1:
            src.append(idx[o0])
        elif i1 - i0 == 1:
            src.append(linear(idx[o0:o1], out_shape[o0:o1]))
        else:
            flat = linear(idx[o0:o1], out_shape[o0:o1])
            src += delinearize(flat if o1 - o0 == 1 else bind(flat), in_shape[i0:i1])
    return tuple(src)


def _matching_runs(out_shape: tuple, in_shape: tuple) -> list[tuple[tuple[int, int], tuple[int, int]]] | None:
    """The shortest runs of dims, in order, over which both shapes have equal products, as pairs of (start, end)
    dim ranges; extent-1 dims at the end join the last run. None where the shapes do not line up so."""
    if any(d == 0 for d in out_shape + in_shape):
        return None
    runs, o, i = [], 0, 0
    while o < len(out_shape) and i < len(in_shape):
        o0, i0 = o, i
        if isinstance(out_shape[o], str) or isinstance(in_shape[i], str):
            if out_shape[o] != in_shape[i]:
                return None
            runs.append(((o, o + 1), (i, i + 1)))
            o, i = o + 1, i + 1
            continue
        po, pi = out_shape[o], in_shape[i]
        o, i = o + 1, i + 1
        while po != pi:
            if po < pi:
                if o == len(out_shape) or isinstance(out_shape[o], str):
                    return None
                po, o = po * out_shape[o], o + 1
            else:
                if i == len(in_shape) or isinstance(in_shape[i], str):
                    return None
                pi, i = pi * in_shape[i], i + 1
        runs.append(((o0, o), (i0, i)))
    if any(d != 1 for d in out_shape[o:] + in_shape[i:]) or not runs:
        return None
    (o0, _), (i0, _) = runs[-1]
    runs[-1] = ((o0, len(out_shape)), (i0, len(in_shape)))
    return runs


# ----------------------------------------------------------------------------
# remaps: what an injective op reads


@dataclass(frozen=True)
class Read:
    """Read `source` at `index` when `when` holds (None: always)."""
    source: Node
    index: tuple[Expr, ...]
    when: Expr | None = None


@dataclass(frozen=True)
class Remap:
    """The reads are tried in order, the first whose condition holds wins; `fill` when none does."""
    reads: tuple[Read, ...]
    fill: float | int | bool | None = None


def broadcast_index(idx: tuple[Expr, ...], out_shape, in_shape) -> tuple[Expr, ...]:
    """The index of an operand that numpy broadcasting reads for the element at idx of out_shape."""
    lead = len(out_shape) - len(in_shape)
    return tuple(ZERO if d == 1 and out_shape[lead + k] != 1 else idx[lead + k] for k, d in enumerate(in_shape))


def _slice_start(b, e, s, d: int) -> int:
    return range(*slice(b, e, s).indices(d)).start


def remap(node: Node, idx: tuple[Expr, ...], bind: Callable[[Expr], Expr] = lambda e: e) -> Remap:
    """What `node` (an injective op) reads from its inputs for its element at idx.

    `bind` lets a renderer name a subexpression used more than once (it returns
    the name as a Var, or the expression itself to inline it).
    """
    op, x = node.op, node.inputs[0]
    if op == "transpose":
        src = [ZERO] * len(idx)
        for k, p in enumerate(node.attr("perm")):
            src[p] = idx[k]
        return Remap((Read(x, tuple(src)),))
    if op == "broadcast_to":
        return Remap((Read(x, broadcast_index(idx, node.shape, x.shape)),))
    if op == "reshape":
        return Remap((Read(x, reshape_index(idx, node.shape, x.shape, bind)),))
    if op == "slice":
        src = []
        for i, d, b, e, s in zip(idx, x.shape, node.attr("begin"), node.attr("end"), node.attr("step")):
            # a slice along a symbolic dim is always the whole dim (the shape rule enforces it)
            src.append(i if isinstance(d, str) else add(mul(i, Lit(s)), Lit(_slice_start(b, e, s, d))))
        return Remap((Read(x, tuple(src)),))
    if op == "pad":
        src, conds = [], []
        for i, d, (lo, _hi) in zip(idx, x.shape, node.attr("pads")):
            j = sub(i, Lit(lo))
            src.append(j)
            if _hi or lo:
                conds += in_range(j, lit_or_dim(d))
        return Remap((Read(x, tuple(src), all_of(conds)),), fill=node.attr("value"))
    if op == "slice_grad":
        src, conds = [], []
        for i, d, b, e, s, n in zip(idx, node.shape, node.attr("begin"), node.attr("end"), node.attr("step"),
                                    x.shape):
            if isinstance(d, str) or (b, e, s) == (0, None, 1):
                src.append(i)
                continue
            offset = sub(i, Lit(_slice_start(b, e, s, d)))
            q = bind(floordiv(offset, Lit(s)))
            src.append(q)
            if s != 1:
                conds.append(Bin("==", mod(offset, Lit(s)), ZERO))
            conds += in_range(q, lit_or_dim(n))
        return Remap((Read(x, tuple(src), all_of(conds)),), fill=0)
    if op == "concat":
        ax, start, reads = node.attr("axis"), ZERO, []
        for k, part in enumerate(node.inputs):
            end = add(start, lit_or_dim(part.shape[ax]))
            src = tuple(sub(i, start) if a == ax else i for a, i in enumerate(idx))
            last = k == len(node.inputs) - 1
            reads.append(Read(part, src, None if last else less(idx[ax], end)))
            start = end
        return Remap(tuple(reads))
    raise ValueError(f"{op} is not an index remap")


REMAP_OPS = ("transpose", "broadcast_to", "reshape", "slice", "pad", "slice_grad", "concat")


# ----------------------------------------------------------------------------
# element values: what a kernel computes at one index


@dataclass(frozen=True)
class Load:
    """The element at `index` of an array the kernel reads; `flat`: index is one offset into the whole buffer."""
    node: Node
    index: tuple[Expr, ...]
    flat: bool = False


@dataclass(frozen=True)
class Arg:
    """A runtime scalar the kernel takes as an argument (the value of a `size` node)."""
    node: Node


@dataclass(frozen=True)
class Const:
    value: float | int | bool
    dtype: str


@dataclass(frozen=True)
class Apply:
    """An elementwise node's scalar template (OpDef.scalar) over its operands' values."""
    node: Node
    args: tuple[Value, ...]


@dataclass(frozen=True)
class Cast:
    """value converted to dtype (a float64 accumulator's result as float32)."""
    value: Value
    dtype: str


@dataclass(frozen=True)
class Ref:
    """A variable a statement named (or an element of a local array, such as a row of partial sums)."""
    name: str


Value = Load | Arg | Const | Apply | Cast | Ref


# ----------------------------------------------------------------------------
# statements


@dataclass(frozen=True)
class Let:
    """name = value, a temporary of dtype; `node` is the graph node it computes (the comment names its line)."""
    name: str
    dtype: str
    value: Value
    node: Node | None = None


@dataclass(frozen=True)
class Assign:
    """name = value, for a variable a Declare or a Select declared."""
    name: str
    value: Value
    node: Node | None = None


@dataclass(frozen=True)
class LetIndex:
    """name = an index subexpression read more than once."""
    name: str
    index: Expr


@dataclass(frozen=True)
class Case:
    when: Expr | None           # None: otherwise
    body: tuple[Stmt, ...]      # computed only when this case is taken
    value: Value


@dataclass(frozen=True)
class Select:
    """name = the value of the first case whose condition holds, else `fill` (a conditional read)."""
    name: str
    dtype: str
    cases: tuple[Case, ...]
    fill: Value | None
    node: Node


@dataclass(frozen=True)
class Store:
    """out[index] = value (`flat`: index is one offset into the whole buffer)."""
    node: Node
    index: tuple[Expr, ...]
    value: Value
    flat: bool = False


@dataclass(frozen=True)
class Declare:
    """A variable that statements after it update: an accumulator."""
    name: str
    dtype: str
    init: Value


@dataclass(frozen=True)
class Accumulate:
    """acc = op(acc, value), op one of sum prod max min; `node` is the reduction."""
    acc: str
    op: str
    value: Value
    node: Node


@dataclass(frozen=True)
class ArgBest:
    """The running argmax/argmin: `best` and its position `at` (-1 before the first) take (value, position)
    when value is better: a NaN wins, the first position wins ties."""
    best: str
    at: str
    value: Value
    position: Expr
    node: Node


@dataclass(frozen=True)
class Loop:
    """for var in range(extent): body. `parallel`: the iterations may run on threads of their own."""
    var: str
    extent: Expr
    body: tuple[Stmt, ...]
    parallel: bool = False
    start: Expr = ZERO


@dataclass(frozen=True)
class Call:
    """A call to a hand-written kernel; the arguments are text the renderer made (views, typed literals)."""
    function: str
    args: tuple[str, ...]
    node: Node


Stmt = Let | Assign | LetIndex | Select | Store | Declare | Accumulate | ArgBest | Loop | Call


def nest(names: list[str], extents: list[Expr], body: list[Stmt], parallel_first: bool = False) -> list[Stmt]:
    """Loops over names (outermost first) around body."""
    out = list(body)
    for k in range(len(names) - 1, -1, -1):
        out = [Loop(names[k], extents[k], tuple(out), parallel_first and k == 0)]
    return out


# ----------------------------------------------------------------------------
# loop-invariant code motion


def hoist(stmts: list[Stmt]) -> list[Stmt]:
    """Move each Let and LetIndex that no iteration changes out of its loop, innermost loops first, as far out
    as it goes: a per-channel scale read and divided once per channel, not once per element.

    Renderers print views of one arena, so the C or LLVM compiler below cannot prove that a store leaves such a
    load unchanged and would redo it (and its arithmetic) for every element. Moved: a binding whose reads name
    no variable the loop defines (its own variable, an accumulator, a binding kept inside) and load no buffer
    the loop stores to; nothing moves out of a loop that calls a hand-written kernel (which may write any of
    its arguments). Bindings are single assignments, so moving one ahead of the loop changes no value.
    """
    out: list[Stmt] = []
    for s in stmts:
        if isinstance(s, Loop):
            body = hoist(list(s.body))
            moved, kept = _split_invariant(body, s.var)
            out += moved
            out.append(replace(s, body=tuple(kept)))
        else:
            out.append(s)
    return out


_NAME = re.compile(r"[A-Za-z_]\w*")


def _expr_names(e: Expr) -> set[str]:
    if isinstance(e, Var):
        return set(_NAME.findall(e.name))
    if isinstance(e, Bin):
        return _expr_names(e.a) | _expr_names(e.b)
    return set()


def _value_reads(v: Value) -> tuple[set[str], set[int]]:
    """(names, ids of the nodes whose buffers it loads) a value reads."""
    if isinstance(v, Load):
        names = set().union(*(_expr_names(e) for e in v.index)) if v.index else set()
        return names, {id(v.node)}
    if isinstance(v, Apply):
        names, nodes = set(), set()
        for a in v.args:
            n, d = _value_reads(a)
            names |= n
            nodes |= d
        return names, nodes
    if isinstance(v, Cast):
        return _value_reads(v.value)
    if isinstance(v, Ref):
        return set(_NAME.findall(v.name)), set()
    return set(), set()


def _first_name(text: str) -> set[str]:
    m = _NAME.match(text)
    return {m.group(0)} if m else set()


def _defined(s: Stmt) -> set[str]:
    """Every name a statement (and whatever it holds) assigns."""
    if isinstance(s, (Let, Assign, LetIndex, Declare)):
        return {s.name}
    if isinstance(s, Select):
        return {s.name}.union(*(_defined(t) for c in s.cases for t in c.body))
    if isinstance(s, Accumulate):
        return _first_name(s.acc)
    if isinstance(s, ArgBest):
        return _first_name(s.best) | _first_name(s.at)
    if isinstance(s, Loop):
        return {s.var}.union(*(_defined(t) for t in s.body))
    return set()


def _stores(s: Stmt) -> tuple[set[int], bool]:
    """(ids of the nodes a statement stores to, whether it calls a hand-written kernel)."""
    if isinstance(s, Store):
        return {id(s.node)}, False
    if isinstance(s, Call):
        return set(), True
    inner = s.body if isinstance(s, Loop) else [t for c in s.cases for t in c.body] if isinstance(s, Select) else []
    nodes, calls = set(), False
    for t in inner:
        n, c = _stores(t)
        nodes |= n
        calls = calls or c
    return nodes, calls


def _split_invariant(body: list[Stmt], var: str) -> tuple[list[Stmt], list[Stmt]]:
    """(the bindings of a loop body that move ahead of the loop over var, the statements that stay)."""
    written, calls = set(), False
    for s in body:
        n, c = _stores(s)
        written |= n
        calls = calls or c
    if calls:
        return [], body
    # names assigned anywhere in the body change between iterations (an accumulator read before its update)
    variant = {var}.union(*(_defined(s) for s in body if not isinstance(s, (Let, LetIndex))))
    moved, kept = [], []
    for s in body:
        if isinstance(s, Let):
            names, nodes = _value_reads(s.value)
        elif isinstance(s, LetIndex):
            names, nodes = _expr_names(s.index), set()
        else:
            kept.append(s)
            continue
        if names & variant or nodes & written:
            kept.append(s)
            variant.add(s.name)
        else:
            moved.append(s)
    return moved, kept


# ----------------------------------------------------------------------------
# index-set splitting: a loop cut where its conditions change


SPLIT_MAX_PIECES = 8    # ranges one loop is cut into at most
SPLIT_MAX_GROWTH = 64   # statements the pieces may add to the loop's own (each copies what is unconditional)


def split_ranges(stmts: list[Stmt], known: dict[str, Expr] | None = None,
                 extents: dict[str, int] | None = None) -> list[Stmt]:
    """Cut each loop of literal bounds into ranges over which its conditional reads are decided, and drop the
    decided conditions: the gradient of a split (an LSTM's four gates) reads one part of its output row in
    each of four ranges, so its loop over the whole row carried four `if`s per element and stayed scalar;
    cut at 128, 256 and 384, each range reads one part unconditionally and vectorizes. Pads and concats the
    same. A loop is cut only where its pieces add at most SPLIT_MAX_GROWTH statements to it (each piece is a
    copy of the body with its own cases kept: numba's compile time grows with the code).

    known: index names bound outside (LetIndex), by name; extents: the value of an extent the renderer wrote
    as text (an array's shape), where it is literal. A loop that is not cut keeps its extent as it was."""
    return _each_loop(stmts, dict(known or {}), extents or {}, _split_loop)


def _each_loop(stmts: list[Stmt], known: dict[str, Expr], extents: dict[str, int], rewrite) -> list[Stmt]:
    """stmts with every loop replaced by rewrite(loop, known, extents) (a list of statements), innermost loops
    first; known: the index names bound (LetIndex) before the loop, by name."""
    known = dict(known)
    out: list[Stmt] = []
    for s in stmts:
        if isinstance(s, LetIndex):
            known[s.name] = s.index
            out.append(s)
        elif isinstance(s, Loop):
            out += rewrite(replace(s, body=tuple(_each_loop(list(s.body), known, extents, rewrite))), known, extents)
        elif isinstance(s, Select):
            out.append(replace(s, cases=tuple(replace(c, body=tuple(_each_loop(list(c.body), known, extents, rewrite)))
                                              for c in s.cases)))
        else:
            out.append(s)
    return out


def _split_loop(loop: Loop, known: dict[str, Expr], extents: dict[str, int]) -> list[Stmt]:
    end = loop.extent.value if isinstance(loop.extent, Lit) else \
        extents.get(loop.extent.name) if isinstance(loop.extent, Var) else None
    if loop.parallel or not isinstance(loop.start, Lit) or end is None:
        return [loop]
    lo, hi = loop.start.value, end
    conds = [c for s in loop.body for c in _conditions(s)]
    scope = _loop_scope(loop, known)
    cuts = sorted({p for c in conds for p in _flips(c, loop.var, lo, scope) if lo < p < hi})
    if not cuts:
        return [loop]
    bounds = [lo] + cuts[:SPLIT_MAX_PIECES - 1] + [hi]
    pieces = [replace(loop, start=Lit(a), extent=Lit(b), body=tuple(_decide(list(loop.body), loop.var, a, b, scope)))
              for a, b in zip(bounds, bounds[1:])]
    if sum(_size(p.body) for p in pieces) - _size(loop.body) > SPLIT_MAX_GROWTH:
        return [loop]
    return pieces


def _loop_scope(loop: Loop, known: dict[str, Expr]) -> dict[str, Expr]:
    """The index names bound before a loop and anywhere in its body, by name."""
    scope = dict(known)
    scope.update((t.name, t.index) for t in _all_statements(loop.body) if isinstance(t, LetIndex))
    return scope


def _all_statements(stmts):
    for s in stmts:
        yield s
        if isinstance(s, Loop):
            yield from _all_statements(s.body)
        elif isinstance(s, Select):
            for c in s.cases:
                yield from _all_statements(c.body)


def _size(stmts) -> int:
    return sum(1 for _ in _all_statements(stmts))


def _conditions(s: Stmt) -> list[Expr]:
    """The comparisons (operands of `and`s) of every case condition in s."""
    out: list[Expr] = []
    for t in _all_statements([s]):
        if isinstance(t, Select):
            for c in t.cases:
                out += _atoms(c.when)
    return out


def _atoms(c: Expr | None) -> list[Expr]:
    if c is None:
        return []
    if isinstance(c, Bin) and c.op == "and":
        return _atoms(c.a) + _atoms(c.b)
    return [c]


def _bounds(e: Expr, var: str, a: int, b: int, scope: dict[str, Expr]) -> tuple[int, int] | None:
    """The least and greatest value of e while var runs over range(a, b); None when unknown."""
    if isinstance(e, Lit):
        return e.value, e.value
    if isinstance(e, Dim):
        return (e.dim, e.dim) if isinstance(e.dim, int) else None
    if isinstance(e, Var):
        if e.name == var:
            return a, b - 1
        return _bounds(scope[e.name], var, a, b, scope) if e.name in scope else None
    if isinstance(e, Bin) and e.op in ("+", "-", "*"):
        x, y = _bounds(e.a, var, a, b, scope), _bounds(e.b, var, a, b, scope)
        if x is None or y is None:
            return None
        if e.op == "+":
            return x[0] + y[0], x[1] + y[1]
        if e.op == "-":
            return x[0] - y[1], x[1] - y[0]
        products = [p * q for p in x for q in y]
        return min(products), max(products)
    return None


def _truth(c: Expr | None, var: str, a: int, b: int, scope: dict[str, Expr]) -> bool | None:
    """Whether condition c holds for every var in range(a, b) (True), for none (False), or either (None)."""
    if c is None:
        return True
    if isinstance(c, Bin) and c.op == "and":
        x, y = _truth(c.a, var, a, b, scope), _truth(c.b, var, a, b, scope)
        return False if False in (x, y) else True if x is True and y is True else None
    if not (isinstance(c, Bin) and c.op in ("<", "<=", "==")):
        return None
    x, y = _bounds(c.a, var, a, b, scope), _bounds(c.b, var, a, b, scope)
    if x is None or y is None:
        return None
    if c.op == "<":
        return True if x[1] < y[0] else False if x[0] >= y[1] else None
    if c.op == "<=":
        return True if x[1] <= y[0] else False if x[0] > y[1] else None
    return True if x[0] == x[1] == y[0] == y[1] else False if x[1] < y[0] or y[1] < x[0] else None


def _flips(c: Expr, var: str, lo: int, scope: dict[str, Expr]) -> list[int]:
    """Where a comparison whose sides differ by var plus a constant changes its value (var's first value
    on the other side); none for any other comparison."""
    if not (isinstance(c, Bin) and c.op in ("<", "<=", "==")):
        return []
    diff = Bin("-", c.a, c.b)
    f0, f1 = _bounds(diff, var, lo, lo + 1, scope), _bounds(diff, var, lo + 1, lo + 2, scope)
    if f0 is None or f1 is None or f0[0] != f0[1] or f1[0] != f1[1]:
        return []
    step = f1[0] - f0[0]
    if step not in (1, -1):
        return []
    zero = lo - f0[0] * step    # where a.. - b.. is 0
    if c.op == "==":
        return [zero, zero + 1]
    if c.op == "<":
        return [zero] if step == 1 else [zero + 1]
    return [zero + 1] if step == 1 else [zero]


def _decide(stmts: list[Stmt], var: str, a: int, b: int, scope: dict[str, Expr]) -> list[Stmt]:
    """The statements for var in range(a, b): a case that always holds there is taken, one that never holds
    dropped."""
    out: list[Stmt] = []
    for s in stmts:
        if isinstance(s, Loop):
            out.append(replace(s, body=tuple(_decide(list(s.body), var, a, b, scope))))
        elif isinstance(s, Select):
            out += _decide_select(s, var, a, b, scope)
        else:
            out.append(s)
    return out


def _decide_select(s: Select, var: str, a: int, b: int, scope: dict[str, Expr]) -> list[Stmt]:
    cases = []
    for c in s.cases:
        truth = _truth(c.when, var, a, b, scope)
        if truth is False:
            continue
        body = tuple(_decide(list(c.body), var, a, b, scope))
        if truth is True and not cases:   # the first case left, and it holds: no branch at all
            return list(body) + [Let(s.name, s.dtype, c.value, s.node)]
        cases.append(replace(c, body=body, when=None if truth is True else c.when))
        if truth is True:
            break
    if not cases:
        return [Let(s.name, s.dtype, s.fill, s.node)] if s.fill is not None else [s]
    return [replace(s, cases=tuple(cases))]


# ----------------------------------------------------------------------------
# strip-mining: a loop whose index is divided split into a quotient loop around a remainder loop

STRIP_MIN = 8   # remainder loops shorter than this are left alone (too short to vectorize)


def strip_mine(stmts: list[Stmt], known: dict[str, Expr] | None = None,
               extents: dict[str, int] | None = None) -> list[Stmt]:
    """Split each loop of literal bounds whose variable i is read as (i + c) // m or (i + c) % m (a reshape that
    splits a dim, read from the merged side: the heads' merge of attention's gradient) into a loop over the
    quotient around a loop of m over the remainder, those reads becoming the loop variables. With the division
    in its index a loop gathers element by element; split, its inner loop reads m contiguous elements and
    vectorizes (W10's merge of dq, dk and dv into (B, T, 3 * width): 2.1 -> 0.9 ms alone).

    i stays bound (to lo + q * m + r) for whatever reads it otherwise. A loop is split only where its range
    and every rewritten offset are multiples of m, so each rewritten read is exact; the remainder loop may be
    split again by a larger divisor (i // 256 and i // 64 % 4 both become variables)."""
    return _each_loop(stmts, dict(known or {}), extents or {},
                      lambda loop, known, extents: [_strip_mine_loop(loop, _loop_scope(loop, known), extents)])


def _offset(e: Expr, var: str, scope: dict[str, Expr]) -> int | None:
    """c where e is var + c (through the index names in scope), else None."""
    if isinstance(e, Var):
        if e.name == var:
            return 0
        return _offset(scope[e.name], var, scope) if e.name in scope else None
    if isinstance(e, Bin) and e.op in ("+", "-"):
        if isinstance(e.b, Lit):
            c = _offset(e.a, var, scope)
            return None if c is None else c + e.b.value if e.op == "+" else c - e.b.value
        if e.op == "+" and isinstance(e.a, Lit):
            c = _offset(e.b, var, scope)
            return None if c is None else c + e.a.value
    return None


def _divisions(e: Expr, var: str, scope: dict[str, Expr]):
    """(divisor, offset) of each (var + offset) // divisor or % divisor in e."""
    if not isinstance(e, Bin):
        return
    if e.op in ("//", "%") and isinstance(e.b, Lit) and e.b.value > 1:
        c = _offset(e.a, var, scope)
        if c is not None:
            yield e.b.value, c
            return
    yield from _divisions(e.a, var, scope)
    yield from _divisions(e.b, var, scope)


def _index_exprs(s: Stmt):
    """Every index expression of a statement and of what it holds."""
    for t in _all_statements([s]):
        if isinstance(t, Store):
            yield from t.index
        if isinstance(t, LetIndex):
            yield t.index
        elif isinstance(t, Select):
            for c in t.cases:
                if c.when is not None:
                    yield c.when
                yield from _value_indices(c.value)
            if t.fill is not None:
                yield from _value_indices(t.fill)
        elif isinstance(t, ArgBest):
            yield t.position
            yield from _value_indices(t.value)
        elif isinstance(t, (Let, Assign, Accumulate, Store)):
            yield from _value_indices(t.value)
        elif isinstance(t, Declare):
            yield from _value_indices(t.init)


def _value_indices(v: Value):
    if isinstance(v, Load):
        yield from v.index
    elif isinstance(v, Apply):
        for a in v.args:
            yield from _value_indices(a)
    elif isinstance(v, Cast):
        yield from _value_indices(v.value)


def _strip_mine_loop(loop: Loop, scope: dict[str, Expr], extents: dict[str, int]) -> Loop:
    end = loop.extent.value if isinstance(loop.extent, Lit) else \
        extents.get(loop.extent.name) if isinstance(loop.extent, Var) else None
    if loop.parallel or not isinstance(loop.start, Lit) or end is None:
        return loop
    lo, var = loop.start.value, loop.var
    found = {d for s in loop.body for e in _index_exprs(s) for d in _divisions(e, var, scope)}
    fits = sorted(m for m, c in found if m >= STRIP_MIN and (end - lo) % m == 0 and (lo + c) % m == 0)
    if not fits:
        return loop
    m = fits[0]
    q, r = f"{var}_q", f"{var}_r"

    def rewrite(e: Expr) -> Expr:
        if not isinstance(e, Bin):
            return e
        if e.op in ("//", "%") and isinstance(e.b, Lit):
            c = _offset(e.a, var, scope)
            if c is not None and e.b.value % m == 0 and (lo + c) % m == 0:
                # (lo + c + q*m + r) with lo + c = base*m and 0 <= r < m: // k*m is (base + q) // k
                k, quotient = e.b.value // m, add(Var(q), Lit((lo + c) // m))
                if e.op == "//":
                    return floordiv(quotient, Lit(k))
                return add(mul(mod(quotient, Lit(k)), Lit(m)), Var(r)) if k > 1 else Var(r)
        return replace(e, a=rewrite(e.a), b=rewrite(e.b))

    body = [LetIndex(var, add(Lit(lo), add(mul(Var(q), Lit(m)), Var(r))))] + \
        [_map_indices(s, rewrite) for s in loop.body]
    remainder = Loop(r, Lit(m), tuple(body))
    quotient = Loop(q, Lit((end - lo) // m), (_strip_mine_loop(remainder, scope, extents),))
    return _strip_mine_loop(quotient, scope, extents)


def _map_indices(s: Stmt, f: Callable[[Expr], Expr]) -> Stmt:
    """s with f applied to every index expression in it."""
    if isinstance(s, Store):
        return replace(s, index=tuple(f(e) for e in s.index), value=_map_value(s.value, f))
    if isinstance(s, LetIndex):
        return replace(s, index=f(s.index))
    if isinstance(s, (Let, Assign, Accumulate)):
        return replace(s, value=_map_value(s.value, f))
    if isinstance(s, Declare):
        return replace(s, init=_map_value(s.init, f))
    if isinstance(s, ArgBest):
        return replace(s, value=_map_value(s.value, f), position=f(s.position))
    if isinstance(s, Select):
        cases = tuple(replace(c, when=None if c.when is None else f(c.when), value=_map_value(c.value, f),
                              body=tuple(_map_indices(t, f) for t in c.body)) for c in s.cases)
        return replace(s, cases=cases, fill=None if s.fill is None else _map_value(s.fill, f))
    if isinstance(s, Loop):
        return replace(s, start=f(s.start), extent=f(s.extent), body=tuple(_map_indices(t, f) for t in s.body))
    return s


def _map_value(v: Value, f: Callable[[Expr], Expr]) -> Value:
    if isinstance(v, Load):
        return replace(v, index=tuple(f(e) for e in v.index))
    if isinstance(v, Apply):
        return replace(v, args=tuple(_map_value(a, f) for a in v.args))
    if isinstance(v, Cast):
        return replace(v, value=_map_value(v.value, f))
    return v
