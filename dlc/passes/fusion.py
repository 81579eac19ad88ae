"""Fusion: cut the simplified graph into kernels by op kind (see the Program contract in dlc/program.py).

Two steps. First, walking from the outputs back, each elementwise or index-remap
node is either inlined into the kernels of its consumers (recomputed in each
when it is cheap and several kernels read it) or materialized as a root. Each
root with its inlined producers is a unit: reductions take their inlined
producers as a prologue, a matmul only transposes of its operands. Second,
units merge with the units they read when the result is one valid kernel: an
elementwise unit joins its producer's kernel when it iterates the same output
space at the same index (an epilogue of a reduction or a matmul, or a longer
elementwise chain), as long as the kernel graph stays acyclic (convex groups).
Every fusion considered and refused is logged with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..graph import Graph, Node, shape_str
from ..ops import COMPLEX, ELEMENTWISE, INJECTIVE, OPAQUE, OPS, REDUCE, SOURCE
from ..program import Kernel, Program

# Cheap enough to recompute in every kernel that reads them instead of storing them once.
MAX_GROUP = 48          # nodes in one kernel: bounds generated code size and register pressure
MAX_DUPLICATES = 4      # kernels one cheap value may be recomputed in


def kind_of(node: Node) -> str:
    return OPS[node.op].kind


def is_computed(node: Node) -> bool:
    """Nodes that belong to some kernel: not sources (input/param/const/size), not reshape views."""
    return kind_of(node) != SOURCE and node.op != "reshape"


def describe(node: Node) -> str:
    where = f" at {node.loc}" if node.loc else ""
    return f"{node.op} %{node.serial} {shape_str(node.shape)}{where}"


def is_last_axes_swap(node: Node) -> bool:
    perm = node.attr("perm")
    n = len(perm)
    return n >= 2 and tuple(perm) == tuple(range(n - 2)) + (n - 1, n - 2)


@dataclass(eq=False)
class Group:
    """Units being merged into one kernel."""

    kind: str                       # elementwise, reduce, complex, opaque
    anchor: Node | None
    space: tuple                    # the output space every output iterates
    roots: list[Node] = field(default_factory=list)
    nodes: dict[int, Node] = field(default_factory=dict)


class Fuser:
    """The state of one fusion run over a graph: units (step 1), then groups of units (step 2)."""

    def __init__(self, roots: list[Node], max_group: int = MAX_GROUP, duplicate: bool = True):
        self.graph = Graph(roots)
        self.order = {id(n): i for i, n in enumerate(self.graph.nodes)}
        self.users = self.graph.consumers()
        self.required = {id(n) for n in roots}
        self.max_group = max_group
        self.duplicate = duplicate
        self.refusals: list[str] = []
        self.units_of: dict[int, set[int]] = {}     # node id -> ids of the roots whose units contain it
        self.unit: dict[int, dict[int, Node]] = {}  # root id -> nodes of its unit
        self.root: dict[int, Node] = {}
        self.group_of: dict[int, Group] = {}        # root id -> its group

    def refuse(self, producer: Node, consumer: Node | None, reason: str) -> None:
        target = f" -> {describe(consumer)}" if consumer is not None else ""
        msg = f"{describe(producer)}{target}: not fused: {reason}"
        if msg not in self.refusals:
            self.refusals.append(msg)

    # -- step 1: inline or materialize each node ----------------------------

    def form_units(self) -> None:
        for n in reversed(self.graph.nodes):
            if not is_computed(n):
                continue
            targets = self.inline_targets(n)
            if targets is None:
                self.root[id(n)] = n
                self.unit[id(n)] = {id(n): n}
                self.units_of[id(n)] = {id(n)}
            else:
                self.units_of[id(n)] = targets
                for t in targets:
                    self.unit[t][id(n)] = n

    def inline_targets(self, n: Node) -> set[int] | None:
        """The units n can be inlined into, or None (with the reason logged) if it must be stored."""
        if kind_of(n) not in (ELEMENTWISE, INJECTIVE) or id(n) in self.required:
            return None
        views: list[tuple[Node, set[int]]] = []  # reshapes of n, each with the units that read through it
        targets = self.reading_units(n, n, views)
        if targets is None:
            return None
        if len(targets) > 1:
            if not self.duplicate:
                self.refuse(n, None, f"read by {len(targets)} kernels and recomputation is off: stored")
                return None
            if not OPS[n.op].cheap:
                self.refuse(n, None, f"read by {len(targets)} kernels and too costly to recompute in each: stored")
                return None
            if len(targets) > MAX_DUPLICATES:
                self.refuse(n, None, f"read by {len(targets)} kernels: more than {MAX_DUPLICATES} recomputations")
                return None
        if any(len(self.unit[t]) >= self.max_group for t in targets):
            self.refuse(n, None, f"group size cap ({self.max_group} nodes) reached")
            return None
        for view, readers in views:  # the reshape joins the units that read through it, as an index remap
            self.units_of[id(view)] = readers
            for t in readers:
                self.unit[t][id(view)] = view
        return targets

    def reading_units(self, n: Node, value: Node, views: list) -> set[int] | None:
        """The units that read n as `value`: n itself, or a reshape of it (a chain of them), which each reader
        then indexes through (appended to `views` with its readers). None (logged) when a reader needs n stored:
        through a reshape, also the function's result, a matmul operand, an opaque op's."""
        through = value is not n
        if through and id(value) in self.required:
            self.refuse(n, value, "a reshape is a view of a stored buffer (the reshape is a result)")
            return None
        readers: set[int] = set()
        for c in self.users[id(value)]:
            if c.op == "size":  # reads the shape only
                continue
            if c.op == "reshape":
                inner = self.reading_units(n, c, views)
                if inner is None:
                    return None
                readers |= inner
                continue
            reason = self.consumer_refusal(n, c) or (f"a {c.op} reads it" if through and kind_of(c) == COMPLEX
                                                    else None)
            if reason:
                if through:
                    self.refuse(n, value, f"a reshape is a view of a stored buffer ({reason})")
                else:
                    self.refuse(n, c, reason)
                return None
            readers |= self.units_of[id(c)]
        if through:
            views.append((value, readers))
        return readers

    def consumer_refusal(self, n: Node, c: Node) -> str | None:
        ck = kind_of(c)
        if ck == OPAQUE:
            return f"{c.op} is opaque: its operands are stored"
        if ck == COMPLEX:
            if c.op == "matmul" and n.op == "transpose" and is_last_axes_swap(n):
                return None
            return f"a {c.op} operand is stored (only a transpose of its last two axes fuses into it)"
        for u in self.units_of[id(c)]:
            if kind_of(self.root[u]) == COMPLEX:
                return "only a transpose may feed a matmul inside its kernel"
        return None

    # -- step 2: merge units into kernels ------------------------------------

    def base_of(self, node: Node) -> Node:
        while node.op == "reshape":
            node = node.inputs[0]
        return node

    def unit_producers(self, rid: int) -> list[Node]:
        """Roots whose stored values the unit reads (directly or through a reshape view)."""
        out, seen = [], set()
        nodes = self.unit[rid]
        for n in nodes.values():
            for i in n.inputs:
                if id(i) in nodes:
                    continue
                b = self.base_of(i)
                if id(b) in self.root and id(b) not in seen:
                    seen.add(id(b))
                    out.append(b)
        return out

    def group_succ(self, g: Group) -> set[int]:
        """Ids of the groups reading some output of g."""
        out = set()
        for n in g.roots:
            for c in self.users[id(n)]:
                for u in self.units_of.get(id(c), ()) if is_computed(c) else self.view_readers(c):
                    h = self.group_of[u]
                    if h is not g:
                        out.add(id(h))
        return out

    def view_readers(self, view: Node) -> set[int]:
        """Units reading a value through a reshape (views of views included)."""
        out: set[int] = set()
        if view.op != "reshape":
            return out
        for c in self.users[id(view)]:
            out |= self.units_of.get(id(c), set()) if is_computed(c) else self.view_readers(c)
        return out

    def reaches_indirectly(self, a: Group, b: Group, groups: dict[int, Group]) -> bool:
        """A path a -> x -> ... -> b through some third group x."""
        stack = [h for h in self.group_succ(a) if h != id(b)]
        seen = set(stack)
        while stack:
            h = stack.pop()
            if h == id(b):
                return True
            for k in self.group_succ(groups[h]):
                if k not in seen:
                    seen.add(k)
                    stack.append(k)
        return False

    def identity_read(self, rid: int, producer: Node) -> bool:
        """The unit reads producer at the index it writes: only same-shape elementwise ops in between."""
        nodes = self.unit[rid]
        out_shape = tuple(self.root[rid].shape)
        if tuple(producer.shape) != out_shape:
            return False
        if any(i is not producer and self.base_of(i) is producer for n in nodes.values() for i in n.inputs):
            return False  # read through a reshape view
        for n in nodes.values():
            reads = any(i is producer for i in n.inputs)
            if reads and (kind_of(n) != ELEMENTWISE or tuple(n.shape) != out_shape):
                return False
        # everything downstream of such a read must keep the index too
        tainted = {id(producer)}
        for n in sorted(nodes.values(), key=lambda x: self.order[id(x)]):
            if any(id(i) in tainted for i in n.inputs):
                if kind_of(n) != ELEMENTWISE or tuple(n.shape) != out_shape:
                    return False
                tainted.add(id(n))
        return True

    def reads_at_identity(self, reader: Group, written: Group) -> bool:
        """Every read by reader's units of a value that written's kernel stores happens at the written index."""
        for r in reader.roots:
            for p in self.unit_producers(id(r)):
                if self.group_of[id(p)] is written and not self.identity_read(id(r), p):
                    return False
        return True

    def merge_refusal(self, g: Group, h: Group, groups) -> str | None:
        """Why group h cannot join group g (whose values it reads, if any); None if it can."""
        if g.kind == OPAQUE:
            return f"{g.anchor.op} is opaque"
        if g.anchor is not None and h.anchor is not None:
            return f"{g.anchor.op} and {h.anchor.op} are both anchors: one per kernel"
        if tuple(g.space) != tuple(h.space):
            if g.kind == REDUCE and len(h.space) >= len(g.space):
                return "reduce output is broadcast back over the reduced axis"
            return f"consumer iterates {shape_str(h.space)}, producer's kernel {shape_str(g.space)}"
        if not (self.reads_at_identity(h, g) and self.reads_at_identity(g, h)):
            return "consumer reads the value through an index remap"
        if len(g.nodes) + len(h.nodes) > self.max_group:
            return f"group size cap ({self.max_group} nodes) reached"
        if self.reaches_indirectly(g, h, groups) or self.reaches_indirectly(h, g, groups):
            return "would make the group non-convex"
        return None

    def merge_units(self) -> list[Group]:
        roots = sorted(self.root.values(), key=lambda n: self.order[id(n)])
        groups: dict[int, Group] = {}
        for r in roots:
            k = kind_of(r)
            kind = k if k in (REDUCE, COMPLEX, OPAQUE) else ELEMENTWISE
            g = Group(kind, r if kind != ELEMENTWISE else None, tuple(r.shape), [r], dict(self.unit[id(r)]))
            groups[id(g)] = g
            self.group_of[id(r)] = g
        for r in roots:
            if kind_of(r) not in (ELEMENTWISE, INJECTIVE):
                continue
            for p in self.unit_producers(id(r)):
                g, h = self.group_of[id(p)], self.group_of[id(r)]
                if g is h:
                    continue
                reason = self.merge_refusal(g, h, groups)
                if reason:
                    if not all(d == 1 for d in g.space) or all(d == 1 for d in h.space):
                        self.refuse(p, r, reason)  # (a scalar read by a broadcast is no missed fusion)
                    continue
                self.absorb(g, h, groups)
        self.merge_scalar_groups(groups)
        return list(groups.values())

    def merge_scalar_groups(self, groups: dict[int, Group]) -> None:
        """Independent elementwise kernels over one element (an optimizer's step-size arithmetic) run as one."""
        first: dict[tuple, Group] = {}
        for g in list(groups.values()):
            if g.kind != ELEMENTWISE or not all(d == 1 for d in g.space):
                continue
            into = first.setdefault(tuple(g.space), g)
            if into is not g and self.merge_refusal(into, g, groups) is None:
                self.absorb(into, g, groups)

    def absorb(self, g: Group, h: Group, groups: dict[int, Group]) -> None:
        """Move h's units into g (or g's into h when h holds the anchor)."""
        if h.anchor is not None:
            g, h = h, g
        g.roots += h.roots
        g.nodes.update(h.nodes)
        for r in h.roots:
            self.group_of[id(r)] = g
        del groups[id(h)]

    # -- kernels ------------------------------------------------------------

    def kernel_of(self, g: Group) -> Kernel:
        topo = sorted(g.nodes.values(), key=lambda n: self.order[id(n)])
        if g.anchor is not None:
            before = ancestors_within(g.anchor, g.nodes)
            topo = [n for n in topo if id(n) in before] + [g.anchor] + \
                   [n for n in topo if id(n) not in before and n is not g.anchor]
        outputs = [r for r in sorted(g.roots, key=lambda n: self.order[id(n)]) if self.is_read_outside(r, g)]
        inputs, seen = [], set()
        for n in topo:
            for i in n.inputs:
                if id(i) not in g.nodes and id(i) not in seen:
                    seen.add(id(i))
                    inputs.append(i)
        kind = g.kind
        if kind == ELEMENTWISE and len(topo) == 1 and kind_of(topo[0]) == INJECTIVE:
            kind = INJECTIVE
        anchor = g.anchor if kind in (REDUCE, COMPLEX, OPAQUE) else None
        return Kernel("", kind, tuple(topo), tuple(inputs), tuple(outputs), anchor)

    def is_read_outside(self, node: Node, g: Group) -> bool:
        if id(node) in self.required:
            return True
        for c in self.users[id(node)]:
            if c.op == "size":  # reads only its input's shape, never its buffer
                continue
            if c.op == "reshape" and id(c) in g.nodes:  # an index remap inside the kernel
                if self.is_read_outside(c, g):
                    return True
                continue
            if not is_computed(c) or any(self.group_of[u] is not g for u in self.units_of[id(c)]):
                return True  # a view, or a kernel elsewhere (a duplicated consumer counts in each)
        return False


def ancestors_within(node: Node, nodes: dict[int, Node]) -> set[int]:
    out, stack = set(), [node]
    while stack:
        n = stack.pop()
        for i in n.inputs:
            if id(i) in nodes and id(i) not in out:
                out.add(id(i))
                stack.append(i)
    return out


def kernel_dag_order(kernels: list[Kernel]) -> list[Kernel]:
    """Kernels each after the kernels whose outputs it reads (through views too)."""
    producer = {}
    for k in kernels:
        for o in k.outputs:
            producer[id(o)] = k

    def base(n):
        while n.op == "reshape":
            n = n.inputs[0]
        return n

    deps = {id(k): {id(producer[id(base(i))]) for i in k.inputs if id(base(i)) in producer} - {id(k)}
            for k in kernels}
    done, out = set(), []
    pending = list(kernels)
    while pending:
        rest = []
        for k in pending:
            if deps[id(k)] <= done:
                out.append(k)
                done.add(id(k))
            else:
                rest.append(k)
        if len(rest) == len(pending):
            raise AssertionError("the fused kernels form a cycle")
        pending = rest
    return out


def fuse(roots: list[Node], max_group: int = MAX_GROUP, duplicate: bool = True) -> tuple[list[Kernel], dict, list[str]]:
    """Kernels (in a valid order), reshape aliases and refusal reasons for the graph under roots."""
    f = Fuser(roots, max_group, duplicate)
    f.form_units()
    groups = f.merge_units()
    # a group none of whose values is read (a matmul only a size node looks at) need not run
    kernels = kernel_dag_order([k for k in (f.kernel_of(g) for g in groups) if k.outputs])
    aliases = {id(n): n.inputs[0] for n in f.graph.nodes if n.op == "reshape"}
    return kernels, aliases, f.refusals


def check_program(program: Program) -> None:
    """Raise AssertionError unless every kernel obeys the Program contract (dlc/program.py)."""
    made: set[int] = set()

    def available(n: Node) -> bool:
        while n.op == "reshape":
            n = n.inputs[0]
        return kind_of(n) == SOURCE or id(n) in made

    for k in program.kernels:
        where = f"kernel {k.name} [{k.kind}]"
        ids = {id(n) for n in k.nodes}
        for n in k.nodes:
            if not is_computed(n) and not (n.op == "reshape" and id(n.inputs[0]) in ids):
                raise AssertionError(f"{where}: {n!r} is a source or a view of a buffer and belongs in no kernel")
            for i in n.inputs:
                if id(i) not in ids and all(i is not j for j in k.inputs):
                    raise AssertionError(f"{where}: {n!r} reads {i!r}, not listed as an input")
        for i in k.inputs:
            if not available(i):
                raise AssertionError(f"{where}: input {i!r} is not computed by an earlier kernel")
        if any(id(o) not in ids for o in k.outputs):
            raise AssertionError(f"{where}: an output is not computed by the kernel")
        if len({tuple(o.shape) for o in k.outputs}) > 1:
            raise AssertionError(f"{where}: outputs of different shapes {[o.shape for o in k.outputs]}")
        _check_kind(k, where)
        made |= {id(o) for o in k.outputs}
    for n in list(program.outputs) + [v for _, v in program.updates]:
        if not available(n):
            raise AssertionError(f"result {n!r} is computed by no kernel")


def _check_kind(k: Kernel, where: str) -> None:
    kinds = [kind_of(n) for n in k.nodes]
    if k.kind in (ELEMENTWISE, INJECTIVE):
        if k.anchor is not None or any(x not in (ELEMENTWISE, INJECTIVE) for x in kinds):
            raise AssertionError(f"{where}: only elementwise ops and index remaps, no anchor")
        return
    if k.anchor is None or kind_of(k.anchor) != k.kind or k.anchor not in k.nodes:
        raise AssertionError(f"{where}: its anchor must be one of its nodes, of its kind")
    if k.kind == OPAQUE:
        if len(k.nodes) != 1:
            raise AssertionError(f"{where}: an opaque kernel holds exactly one node")
        return
    at = k.nodes.index(k.anchor)
    for n in k.nodes[:at]:
        if k.kind == COMPLEX and not (n.op == "transpose" and any(n is i for i in k.anchor.inputs)):
            raise AssertionError(f"{where}: only transposes of the operands may precede the {k.anchor.op}")
        if kind_of(n) not in (ELEMENTWISE, INJECTIVE):
            raise AssertionError(f"{where}: prologue node {n!r} is not elementwise")
    for n in k.nodes[at + 1:]:
        if kind_of(n) not in (ELEMENTWISE, INJECTIVE):
            raise AssertionError(f"{where}: epilogue node {n!r} is not elementwise")
    if any(tuple(o.shape) != tuple(k.anchor.shape) for o in k.outputs):
        raise AssertionError(f"{where}: outputs must have the anchor's output shape")
