"""The optimizer: graph -> simplified graph -> fused kernels -> schedule -> memory plan.

`optimize(fn)` turns a compiled function's graph into a Program (see
dlc/program.py); `plan_memory(program, env)` places its buffers for one
binding of the symbolic dims.
"""

from __future__ import annotations

from ..graph import Graph, Node
from ..ops import OPS, SOURCE
from ..program import Kernel, MemoryPlan, Program, nbytes


def is_view(node: Node) -> bool:
    """A reshape reads its input's contiguous buffer as is: a view, never a kernel."""
    return node.op == "reshape"


def unfused_program(outputs: list[Node], updates: list[tuple[str, Node]], inputs: list[Node]) -> Program:
    """One kernel per computing node (reshapes are views): the baseline fusion improves on."""
    graph = Graph(list(outputs) + [n for _, n in updates])
    aliases: dict[int, Node] = {}
    kernels = []
    for n in graph.nodes:
        if OPS[n.op].kind == SOURCE and n.op != "size":
            continue
        if is_view(n):
            aliases[id(n)] = n.inputs[0]
            continue
        kernels.append(Kernel(f"k{len(kernels)}", OPS[n.op].kind, (n,), tuple(n.inputs), (n,),
                              n if OPS[n.op].kind != "elementwise" else None))
    return Program(graph, kernels, list(inputs), list(outputs), list(updates), aliases)


def unplanned_memory(program: Program, env: dict, alignment: int = 64) -> MemoryPlan:
    """Every buffer at its own offset: correct, and the upper bound planning is measured against."""
    offsets, sizes, off = {}, {}, 0
    for node in program.buffers():
        size = nbytes(node, env)
        offsets[id(node)] = off
        sizes[id(node)] = size
        off += -(-size // alignment) * alignment
    return MemoryPlan(dict(env), offsets, sizes, off, off, off, [], alignment)
