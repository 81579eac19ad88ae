"""The optimizer: graph -> simplified graph -> layout -> fused kernels -> schedule -> memory plan.

`optimize(outputs, updates, inputs)` turns a compiled function's graph into a
Program (see dlc/program.py), the bodies of its scans included, optimized with
the same options; `plan_memory(program, env)` places its buffers for one
binding of the symbolic dims (the Program's `memory_plan`). `unfused_program`
and `unplanned_memory` are the baseline both are measured against. The
compiler (dlc/compiler.py) is the only caller downstream code needs: backends
receive the finished Program and never call back into the optimizer.
"""

from __future__ import annotations

import time

from ..graph import Graph, Node
from ..ops import OPS, SOURCE
from ..program import Kernel, MemoryPlan, Program
from .fusion import MAX_GROUP
from .fusion import fuse as fuse_graph
from .layout import channels_last as channels_last_graph
from .memory import inplace_updates, nbytes, plan_memory
from .schedule import schedule as schedule_kernels
from .simplify import simplify as simplify_graph


def is_view(node: Node) -> bool:
    """A reshape reads its input's contiguous buffer as is: a view, never a kernel."""
    return node.op == "reshape"


def unfused_program(outputs: list[Node], updates: list[tuple[str, Node]], inputs: list[Node]) -> Program:
    """One kernel per computing node (reshapes are views): the baseline fusion improves on."""
    return _finish(_one_kernel_per_node(outputs, updates, inputs), lambda body: unfused_program(*body_signature(body)))


def _one_kernel_per_node(outputs: list[Node], updates: list[tuple[str, Node]], inputs: list[Node]) -> Program:
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


def body_signature(body) -> tuple[list[Node], list, list[Node]]:
    """A scan body as a function's (outputs, updates, inputs): its placeholders in, carry_out + y_out out."""
    return list(body.carry_out) + list(body.y_out), [], list(body.placeholders)


def _finish(program: Program, make_body) -> Program:
    """What every Program carries besides its kernels: scan bodies, in-place updates, the memory planner."""
    for k in program.kernels:
        if k.anchor is not None and k.anchor.op == "scan":
            program.bodies[id(k.anchor)] = body = make_body(k.anchor.attr("body"))
            body.loop_body = True
    program.inplace = inplace_updates(program)
    program.planner = plan_memory
    return program


def unplanned_memory(program: Program, env: dict, alignment: int = 64) -> MemoryPlan:
    """Every buffer at its own offset: correct, and the upper bound planning is measured against."""
    offsets, sizes, off = {}, {}, 0
    for node in program.buffers():
        size = nbytes(node, env)
        offsets[id(node)] = off
        sizes[id(node)] = size
        off += -(-size // alignment) * alignment
    return MemoryPlan(dict(env), offsets, sizes, off, off, off, [], alignment)


OPTIONS = ("simplify", "fuse", "reassociate", "max_group", "duplicate", "schedule", "channels_last")


def optimize(outputs: list[Node], updates: list[tuple[str, Node]], inputs: list[Node], *,
             simplify: bool = True, fuse: bool = True, reassociate: bool = True, max_group: int = MAX_GROUP,
             duplicate: bool = True, schedule: bool = True, channels_last: bool = False, **unknown) -> Program:
    """Simplify, fuse and schedule the graph of `outputs` and `updates` into a Program.

    reassociate=False keeps every floating-point result bit-exact; fuse=False
    gives one kernel per op; duplicate=False never recomputes a value in
    several kernels; max_group caps the nodes of one kernel.
    """
    if unknown:
        raise TypeError(f"unknown optimizer option(s) {', '.join(sorted(unknown))}; the optimizer takes "
                        f"{', '.join(OPTIONS)}")
    start = time.perf_counter()
    roots = list(outputs) + [n for _, n in updates]
    before = Graph(roots)
    if simplify:
        roots, log = simplify_graph(roots, reassociate=reassociate)
    else:
        log = [{"pass": "input", "nodes": len(before), "ops": before.op_counts(), "rewrites": 0}]
    if channels_last:
        roots, count = channels_last_graph(roots)
        if count:
            g = Graph(roots)
            log.append({"pass": "channels_last", "nodes": len(g), "ops": g.op_counts(), "rewrites": count})
    new_outputs = roots[:len(outputs)]
    new_updates = [(key, n) for (key, _), n in zip(updates, roots[len(outputs):])]
    if fuse:
        kernels, aliases, refusals = fuse_graph(roots, max_group=max_group, duplicate=duplicate)
        program = Program(Graph(roots), kernels, list(inputs), new_outputs, new_updates, aliases, refusals)
    else:
        program = _one_kernel_per_node(new_outputs, new_updates, inputs)
    if schedule:
        program.kernels = schedule_kernels(program)
    for i, k in enumerate(program.kernels):
        k.name = f"k{i}"
    program.stats = {"passes": log, "nodes_before": len(before), "ops_before": before.op_counts(),
                     "nodes_after": len(program.graph), "kernels": len(program.kernels)}
    options = dict(simplify=simplify, fuse=fuse, reassociate=reassociate, max_group=max_group,
                   duplicate=duplicate, schedule=schedule, channels_last=channels_last)
    program = _finish(program, lambda body: optimize(*body_signature(body), **options))
    program.stats["optimize_s"] = time.perf_counter() - start
    return program


__all__ = ["optimize", "plan_memory", "unfused_program", "unplanned_memory", "is_view", "body_signature", "OPTIONS"]
