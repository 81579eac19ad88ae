"""The Program: what the optimizer hands to every backend.

A Program is the optimized graph cut into kernels (fused groups of nodes) in
execution order, the optimized Program of every scan body in it, the
parameter updates that may be written in place, and, per concrete set of
symbol bindings, a memory plan that places every intermediate value in one
arena (`memory_plan(env)`, made by the planner the optimizer chose). The
compiler builds it once (dlc/passes) and hands it to a backend, which renders
and runs it and changes nothing in it. Only the reference backend runs the
user's graph as it is, node by node, since it is the oracle the optimizer is
checked against.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .graph import Graph, Node, shape_eval


@dataclass(eq=False)
class Kernel:
    """A fused group of nodes that runs as one kernel.

    nodes:   every node computed inside, topologically ordered; a reshape is one only where its input is
             computed inside too (an index remap), elsewhere it is a view of a buffer and in no kernel.
    inputs:  values the kernel reads from buffers (sources, or other kernels' outputs).
    outputs: values it writes to buffers: those read by later kernels, graph
             outputs and parameter updates.
    anchor:  the node the group is built around (the reduce, matmul, conv or
             opaque op), or None for a pure elementwise/injective group.
    kind:    the fusion kind of the anchor ("elementwise" when there is none).
    """

    name: str
    kind: str
    nodes: tuple[Node, ...]
    inputs: tuple[Node, ...]
    outputs: tuple[Node, ...]
    anchor: Node | None = None

    def anchor_target(self) -> Node | None:
        """The output a GEMM or window kernel's library call fills with the anchor's value before its epilogue
        runs over it in place (the anchor itself, else an output of its dtype and shape); None: a temporary."""
        anchor = self.anchor
        return next((o for o in self.outputs if o is anchor), None) or \
            next((o for o in self.outputs if o.dtype == anchor.dtype and o.shape == anchor.shape), None)

    def source_lines(self) -> list[str]:
        """The distinct user lines the kernel's nodes came from, in order."""
        seen, out = set(), []
        for n in self.nodes:
            if n.loc is not None and str(n.loc) not in seen:
                seen.add(str(n.loc))
                out.append(str(n.loc))
        return out

    def __repr__(self) -> str:
        ops = " ".join(n.op for n in self.nodes)
        return f"<Kernel {self.name} {self.kind}: {ops}>"


@dataclass(eq=False)
class Program:
    """Kernels in execution order over an optimized graph.

    outputs: the values returned to the caller, in order.
    updates: (parameter key, new value) pairs written back to the store.
    aliases: node id -> the node whose buffer it shares (a reshape of
             contiguous data is a view, not a kernel of its own).
    refusals: every fusion that was considered and refused, with its reason.
    bodies:  id(scan node) -> the optimized Program of its body (placeholders
             in, carry_out + y_out out), made with the same options.
    inplace: id(update value) -> the parameter its kernel may write straight
             into (the memory planner's decision; other updates are copied).
    planner: (program, env, alignment) -> MemoryPlan, the optimizer's choice.
    """

    graph: Graph
    kernels: list[Kernel]
    inputs: list[Node]
    outputs: list[Node]
    updates: list[tuple[str, Node]]
    aliases: dict[int, Node] = field(default_factory=dict)
    refusals: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    bodies: dict[int, Program] = field(default_factory=dict)
    loop_body: bool = False   # the body of a scan: each of its kernels runs once per step of the loop
    inplace: dict[int, Node] = field(default_factory=dict)
    planner: Callable | None = None

    def memory_plan(self, env: dict, alignment: int = 64) -> MemoryPlan:
        """Where every buffer lives for one binding of the symbolic dims."""
        if self.planner is None:
            raise ValueError("this Program has no memory planner: build it with dlc.passes.optimize")
        return self.planner(self, env, alignment=alignment)

    def body(self, scan: Node) -> Program:
        """The optimized Program of a scan node's body."""
        return self.bodies[id(scan)]

    def with_bodies(self):
        """This program and, depth first, the program of every scan body in it (what a backend renders)."""
        yield self
        for body in self.bodies.values():
            yield from body.with_bodies()

    def storage_of(self, node: Node) -> Node:
        """The node that owns the buffer this node's value lives in (following views)."""
        while id(node) in self.aliases:
            node = self.aliases[id(node)]
        return node

    def buffers(self) -> list[Node]:
        """Every value that needs storage of its own in the arena: kernel outputs not aliased."""
        out, seen = [], set()
        for k in self.kernels:
            for n in k.outputs:
                s = self.storage_of(n)
                if s.op in ("input", "param", "const") or id(s) in seen:
                    continue
                seen.add(id(s))
                out.append(s)
        return out

    def __str__(self) -> str:
        lines = []
        for k in self.kernels:
            lines.append(f"{k.name} [{k.kind}] " + " -> ".join(n.op for n in k.nodes) +
                         (f"   # {', '.join(k.source_lines())}" if k.source_lines() else ""))
        return "\n".join(lines)


@dataclass
class MemoryPlan:
    """Where each arena value lives for one set of symbol bindings.

    offsets:  id(storage node) -> byte offset in the arena.
    sizes:    id(storage node) -> bytes.
    arena_bytes: the arena's size.
    unplanned_bytes: the sum of all buffers (what no planning would need).
    lower_bound_bytes: the peak of simultaneously live bytes in this order.
    inplace:  (node, node whose buffer it took over) pairs.
    """

    env: dict
    offsets: dict[int, int]
    sizes: dict[int, int]
    arena_bytes: int
    unplanned_bytes: int
    lower_bound_bytes: int
    inplace: list[tuple[Node, Node]] = field(default_factory=list)
    alignment: int = 64


def nbytes(node: Node, env: dict) -> int:
    import numpy as np

    n = 1
    for d in shape_eval(node.shape, env):
        n *= d
    return n * np.dtype(node.dtype).itemsize
