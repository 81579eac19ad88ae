"""Scheduling: a linear order of the kernels that keeps the peak of live memory low.

A greedy list scheduler: among the kernels whose inputs are ready, run the one
that frees the most bytes net of what it allocates (ties: the original order).
Sizes use one guessed binding of the symbolic dims; the greedy order is kept
only when its peak beats the plain topological order's.

Then split collectives are spread out: a non-blocking collective's start (and
the kernels only it reads, such as a gradient bucket's packing) runs as soon
as its inputs are ready, and its wait (and everything that reads the result)
as late as possible, so the rest of the step runs while the collective is in
flight. The order stays a deterministic function of the program, so every
rank, compiling the same program, runs its collectives in the same order.
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
    """The kernels of `program` in a memory-friendly valid order, split collectives spread out."""
    env = env or default_env(program)
    greedy = greedy_order(program, env)
    if order_peak(program, greedy, env) < order_peak(program, program.kernels, env):
        return overlap_collectives(program, greedy)
    return overlap_collectives(program, list(program.kernels))


COLLECTIVE_STARTS = ("all_reduce_start",)
COLLECTIVE_WAITS = ("all_reduce_wait",)


def _anchor_op(k: Kernel) -> str | None:
    return k.anchor.op if k.anchor is not None else None


def overlap_collectives(program: Program, kernels: list[Kernel]) -> list[Kernel]:
    """`kernels` (a valid order) with each collective start hoisted and each wait sunk as far as valid.

    Hoisted: the starts and the kernels whose values only starts (or other
    hoisted kernels) read, each placed right after the last kernel it needs.
    Sunk: the waits and every kernel that depends on one, moved to the end in
    their order. Both moves keep every kernel after the kernels it reads.
    """
    if not any(_anchor_op(k) in COLLECTIVE_STARTS + COLLECTIVE_WAITS for k in kernels):
        return kernels
    writer = {}
    for k in kernels:
        for o in k.outputs:
            writer[id(_storage(program, o))] = k
    deps = {id(k): {id(writer[b]) for b in (id(_storage(program, i)) for i in k.inputs) if b in writer} - {id(k)}
            for k in kernels}
    readers: dict[int, list[Kernel]] = {id(k): [] for k in kernels}
    for k in kernels:
        for d in deps[id(k)]:
            readers[d].append(k)
    kept = {id(_storage(program, n)) for n in list(program.outputs) + [n for _, n in program.updates]}
    feeding: set[int] = set()
    for k in reversed(kernels):  # readers come later in a valid order: decided before their producers
        if _anchor_op(k) in COLLECTIVE_STARTS or readers[id(k)] and \
                all(id(r) in feeding for r in readers[id(k)]) and \
                not any(id(_storage(program, o)) in kept for o in k.outputs):
            feeding.add(id(k))
    order, done = [], set()
    waiting = [k for k in kernels if id(k) in feeding]

    def place_ready_feeders():
        while True:
            ready = next((k for k in waiting if deps[id(k)] <= done), None)
            if ready is None:
                return
            waiting.remove(ready)
            order.append(ready)
            done.add(id(ready))

    place_ready_feeders()
    for k in kernels:  # a kernel that does not feed a start reads no kernel that does
        if id(k) not in feeding:
            order.append(k)
            done.add(id(k))
            place_ready_feeders()
    after_wait: set[int] = set()
    for k in order:
        if _anchor_op(k) in COLLECTIVE_WAITS or deps[id(k)] & after_wait:
            after_wait.add(id(k))
    return [k for k in order if id(k) not in after_wait] + [k for k in order if id(k) in after_wait]
