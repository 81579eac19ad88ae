"""Memory planning: live intervals of the arena buffers, in-place reuse, best-fit placement in one arena.

After TFLite's arena planner and XLA's heap simulator: each buffer lives from
the kernel that writes it to the last kernel that reads it (graph outputs and
updates to the end); buffers are placed in decreasing size, each at the
best-fitting gap among the buffers whose lifetimes overlap its own. An
elementwise kernel may write an output over an input that dies there when it
reads that input at the index it writes (identity indexing), the one form of
in-place reuse the backends rely on. The planner also decides which parameter
updates a kernel may write straight into the parameter's own array
(`inplace_updates`); backends follow that decision and copy every other update.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..graph import TUPLE, Node, symbols_of
from ..ops import COMPLEX, ELEMENTWISE, INJECTIVE, OPS, REDUCE
from ..program import Kernel, MemoryPlan, Program
from ..program import nbytes as array_bytes

SOURCES = ("input", "param", "const")


def nbytes(node: Node, env: dict) -> int:
    """Arena bytes of a value; a multi-output node (scan) holds its parts elsewhere and takes none."""
    return 0 if node.dtype == TUPLE else array_bytes(node, env)


def aligned(size: int, alignment: int) -> int:
    return -(-size // alignment) * alignment


@dataclass
class Lifetimes:
    """Per arena buffer: the kernel index that writes it and the last one that needs it."""

    buffers: list[Node]
    first: dict[int, int]
    last: dict[int, int]
    pinned: set[int]


def lifetimes(program: Program, kernels: list[Kernel] | None = None) -> Lifetimes:
    """Live intervals over the kernels in order (program.kernels unless another order is given)."""
    kernels = program.kernels if kernels is None else kernels
    end = len(kernels)
    buffers, first, last = [], {}, {}
    for k, kern in enumerate(kernels):
        for o in kern.outputs:
            s = program.storage_of(o)
            if s.op in SOURCES or id(s) in first:
                continue
            buffers.append(s)
            first[id(s)] = last[id(s)] = k
    for k, kern in enumerate(kernels):
        for i in kern.inputs:
            s = program.storage_of(i)
            if id(s) in first:
                last[id(s)] = max(last[id(s)], k)
    pinned = set()
    for n in list(program.outputs) + [n for _, n in program.updates]:
        s = program.storage_of(n)
        if id(s) in first:
            last[id(s)] = end
            pinned.add(id(s))
    return Lifetimes(buffers, first, last, pinned)


def default_env(program: Program, size: int = 64) -> dict:
    """A binding of every symbol to one size: what heuristics use before the real sizes are known."""
    syms = set()
    for n in program.graph.nodes:
        syms |= symbols_of(n.shape)
    return {s: size for s in syms}


def keeps_index(kernel: Kernel, node: Node, space: tuple | None = None) -> bool:
    """Every node of the kernel that depends on `node` is elementwise over space (default: the kernel's output
    space)."""
    if not kernel.outputs:
        return False
    space = tuple(kernel.outputs[0].shape) if space is None else space
    if tuple(node.shape) != space:
        return False
    tainted = {id(node)}
    for n in kernel.nodes:
        if any(id(i) in tainted for i in n.inputs):
            if OPS[n.op].kind != ELEMENTWISE or tuple(n.shape) != space:
                return False
            tainted.add(id(n))
    return True


def inplace_pairs(program: Program, life: Lifetimes, sizes: dict[int, int],
                  kernels: list[Kernel]) -> list[tuple[Node, Node]]:
    """(output, input) pairs where an elementwise kernel may write its output over a dying input."""
    pairs = []
    for k, kern in enumerate(kernels):
        if kern.kind != ELEMENTWISE:
            continue
        taken = set()
        for o in kern.outputs:
            if id(o) not in life.first or life.first[id(o)] != k:
                continue
            for i in kern.inputs:
                if (id(i) in life.first and id(i) not in taken and id(i) not in life.pinned
                        and life.last[id(i)] == k and sizes[id(i)] == sizes[id(o)]
                        and tuple(i.shape) == tuple(o.shape) and keeps_index(kern, i)):
                    pairs.append((o, i))
                    taken.add(id(i))
                    break
    return pairs


# kernels that compute every output at an index before storing any of them, so that reading an input at the
# index being written is safe; GEMM and window kernels (COMPLEX) do so in their epilogue, after the library
# call has filled Kernel.anchor_target
STORES_LAST = (ELEMENTWISE, INJECTIVE, REDUCE)


def buffer_reads(program: Program, kernel: Kernel, storage: Node) -> list[Node]:
    """The values a kernel reads out of storage's buffer: the node itself or any view aliasing it."""
    inside = {id(n) for n in kernel.nodes}
    candidates = list(kernel.inputs) + [x for n in kernel.nodes for x in n.inputs if id(x) not in inside]
    out, seen = [], set()
    for x in candidates:
        if id(x) not in seen and program.storage_of(x) is storage:
            seen.add(id(x))
            out.append(x)
    return out


def inplace_updates(program: Program) -> dict[int, Node]:
    """Parameter updates a kernel may write straight into the parameter's array: id(update value) -> param.

    Safe when no later kernel reads the parameter's buffer, directly or through
    any view of it (a reshape aliases the buffer; transposes, slices and
    broadcasts read it inside a kernel), and the writing kernel itself reads it,
    if at all, only at the index it writes and before it stores. Every other
    update is copied into its parameter after the last kernel.
    """
    params = {p.attr("name"): p for p in program.graph.nodes if p.op == "param"}
    writers: dict[int, list[int]] = {}
    for k, kern in enumerate(program.kernels):
        for o in kern.outputs:
            writers.setdefault(id(o), []).append(k)
    out: dict[int, Node] = {}
    for key, value in program.updates:
        param = params.get(key)
        ks = writers.get(id(value), [])
        if param is None or len(ks) != 1 or program.storage_of(value) is not value or id(value) in out:
            continue
        k = ks[0]
        if any(buffer_reads(program, later, param) for later in program.kernels[k + 1:]):
            continue
        kern = program.kernels[k]
        reads = buffer_reads(program, kern, param)
        if reads and not reads_before_storing(kern, value, param, reads):
            continue
        out[id(value)] = param
    return out


def reads_before_storing(kernel: Kernel, value: Node, param: Node, reads: list[Node]) -> bool:
    """Whether the kernel reads param only at the index it stores value at, before storing it."""
    if kernel.kind in STORES_LAST:
        space = tuple(kernel.outputs[0].shape)
    elif kernel.kind == COMPLEX and kernel.anchor is not None and kernel.anchor_target() is not value:
        space = tuple(kernel.anchor.shape)   # read by the epilogue, over the anchor's space
    else:
        return False
    return tuple(value.shape) == space and all(x is param and keeps_index(kernel, x, space) for x in reads)


def best_fit(slots: list[tuple[int, int, int, int]]) -> dict[int, int]:
    """Offsets for (key, size, first, last) slots: decreasing size, each in the tightest gap that fits."""
    placed: list[tuple[int, int, int, int]] = []  # (offset, size, first, last)
    offsets = {}
    for key, size, first, last in sorted(slots, key=lambda s: (-s[1], s[2], s[0])):
        live = sorted((o, sz) for o, sz, f, la in placed if f <= last and first <= la and sz > 0)
        best, best_gap, cursor = None, None, 0
        for o, sz in live:
            gap = o - cursor
            if gap >= size and (best_gap is None or gap < best_gap):
                best, best_gap = cursor, gap
            cursor = max(cursor, o + sz)
        offset = best if best is not None else cursor
        offsets[key] = offset
        placed.append((offset, size, first, last))
    return offsets


def plan_memory(program: Program, env: dict, alignment: int = 64, inplace: bool = True) -> MemoryPlan:
    """Place every arena buffer of the program for one binding of its symbolic dims (pure, cheap)."""
    life = lifetimes(program)
    sizes = {id(b): nbytes(b, env) for b in life.buffers}
    pairs = inplace_pairs(program, life, sizes, program.kernels) if inplace else []
    slot_of = {id(b): id(b) for b in life.buffers}
    for o, i in pairs:
        slot_of[id(o)] = slot_of[id(i)]
    span: dict[int, list[int]] = {}
    for b in life.buffers:
        s = span.setdefault(slot_of[id(b)], [life.first[id(b)], life.last[id(b)], 0])
        s[0], s[1] = min(s[0], life.first[id(b)]), max(s[1], life.last[id(b)])
        s[2] = max(s[2], aligned(sizes[id(b)], alignment))
    offsets_of_slot = best_fit([(key, sz, f, la) for key, (f, la, sz) in span.items()])
    offsets = {id(b): offsets_of_slot[slot_of[id(b)]] for b in life.buffers}
    arena = max((offsets_of_slot[k] + sz for k, (f, la, sz) in span.items()), default=0)
    unplanned = sum(aligned(s, alignment) for s in sizes.values())
    return MemoryPlan(dict(env), offsets, sizes, arena, unplanned, peak_live(span), pairs, alignment)


def peak_live(span: dict[int, list[int]]) -> int:
    """The most bytes live at once: no placement of these lifetimes can use less."""
    if not span:
        return 0
    end = max(la for f, la, sz in span.values())
    delta = [0] * (end + 2)
    for f, la, sz in span.values():
        delta[f] += sz
        delta[la + 1] -= sz
    peak = cur = 0
    for d in delta:
        cur += d
        peak = max(peak, cur)
    return peak


def check_plan(program: Program, plan: MemoryPlan) -> None:
    """Raise if two buffers that are live at once overlap in the arena (other than a planned in-place pair)."""
    life = lifetimes(program)
    shared = {frozenset((id(o), id(i))) for o, i in plan.inplace}
    bufs = life.buffers
    for a_i, a in enumerate(bufs):
        for b in bufs[a_i + 1:]:
            ka, kb = id(a), id(b)
            if not (life.first[ka] <= life.last[kb] and life.first[kb] <= life.last[ka]):
                continue
            oa, ob = plan.offsets[ka], plan.offsets[kb]
            if oa < ob + plan.sizes[kb] and ob < oa + plan.sizes[ka] and plan.sizes[ka] and plan.sizes[kb]:
                if frozenset((ka, kb)) in shared and life.last[ka] == life.first[kb] or \
                        frozenset((ka, kb)) in shared and life.last[kb] == life.first[ka]:
                    continue
                raise AssertionError(f"buffers {a!r} and {b!r} are live together and overlap in the arena")
