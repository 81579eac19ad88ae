"""Scheduling: a linear order of the kernels that keeps the peak of live memory low.

A greedy list scheduler: among the kernels whose inputs are ready, run the one
that frees the most bytes net of what it allocates (ties: the original order).
Sizes use one guessed binding of the symbolic dims; the greedy order is kept
only when its peak beats the plain topological order's.
"""

from __future__ import annotations

from ..program import Kernel, Program
from .memory import SOURCES, default_env, lifetimes, nbytes, peak_live


def _storage(program: Program, node):
    return program.storage_of(node)


def greedy_order(program: Program, env: dict) -> list[Kernel]:
    kernels = program.kernels
    writer, size = {}, {}
    for k in kernels:
        for o in k.outputs:
            s = _storage(program, o)
            writer[id(s)] = k
            size[id(s)] = nbytes(s, env)
    pinned = {id(_storage(program, n)) for n in list(program.outputs) + [n for _, n in program.updates]}
    reads = {id(k): {id(_storage(program, i)) for i in k.inputs} & writer.keys() for k in kernels}
    readers_left: dict[int, int] = {}
    for k in kernels:
        for b in reads[id(k)]:
            readers_left[b] = readers_left.get(b, 0) + 1
    deps = {id(k): {id(writer[b]) for b in reads[id(k)]} - {id(k)} for k in kernels}
    index = {id(k): i for i, k in enumerate(kernels)}
    done: set[int] = set()
    order = []
    while len(order) < len(kernels):
        ready = [k for k in kernels if id(k) not in done and deps[id(k)] <= done]

        def gain(k):
            freed = sum(size[b] for b in reads[id(k)] if readers_left[b] == 1 and b not in pinned)
            made = sum(size[id(_storage(program, o))] for o in k.outputs)
            return (freed - made, -index[id(k)])

        k = max(ready, key=gain)
        order.append(k)
        done.add(id(k))
        for b in reads[id(k)]:
            readers_left[b] -= 1
    return order


def order_peak(program: Program, kernels: list[Kernel], env: dict) -> int:
    life = lifetimes(program, kernels)
    span = {id(b): [life.first[id(b)], life.last[id(b)], nbytes(b, env)] for b in life.buffers
            if b.op not in SOURCES}
    return peak_live(span)


def schedule(program: Program, env: dict | None = None) -> list[Kernel]:
    """The kernels of `program` in a memory-friendly valid order."""
    env = env or default_env(program)
    greedy = greedy_order(program, env)
    if order_peak(program, greedy, env) < order_peak(program, program.kernels, env):
        return greedy
    return list(program.kernels)
