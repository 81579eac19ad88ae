"""Render a Program's kernels as Python source for numba: loop kernels plus one outer function per segment.

An outer @njit function per segment runs the segment's kernels in order over
one uint8 arena, so a step crosses into native code once. Kernels that
render to the same code (the same layer at every depth of a model) are one
@njit function, called at each use: it takes the typed arena, the run of S
(the per-binding int64 array) holding its buffers' offsets and symbol values,
and the external arrays it touches, and makes its own views, so one function
serves every layer and every batch size. A kernel used once is inlined into
the outer function, whose views of the arena it reads. Views and calls come
from kernels/cpu/views.py: slicing and reshaping views in the outer function,
and LLVM inlining every call, made numba's compile time grow with the square
of the model's depth; now it grows linearly. A kernel with no native lowering
(an opaque op numba cannot run) splits the schedule: the backend runs it with
numpy between two native segments.

numba compiles a function that calls another with the callee's code linked in
and optimized again, and its time grows faster than a function's length. So
the convolution and attention kernels are called by symbol (each compiled once
per process, kernels/cpu/library.py), and an outer function of more than
PART_LINES inlined lines calls parts of itself, each an outer function of its
own. ResNet-18's training step compiled cold in 141 s before both, 65 s after.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from ..graph import Node
from ..program import Kernel, Program
from . import kernel_ir as ir
from . import source_text
from .lower import LoweringError, NotFlat, Values, is_scalar_node, variables
from .math_functions import numba_name
from .printer import Dialect, PythonPrinter

# Every local name a kernel body defines starts with P: an inlined kernel gets a prefix of its own.
P = "_P_"


class Unsupported(Exception):
    """This kernel has no native lowering; the backend runs it through the numpy reference."""


NP_DTYPE = {"float32": "np.float32", "float64": "np.float64", "int32": "np.int32", "int64": "np.int64",
            "bool": "np.bool_"}

def literal(value, dtype: str) -> str:
    """A scalar as a numpy-typed literal; only numbers are accepted (never a string, whatever it holds)."""
    value = source_text.checked_number(value)
    if dtype == "bool":
        return "True" if value else "False"
    if dtype.startswith("float"):
        value = float(value)
        if value != value:
            text = "np.nan"
        elif value in (float("inf"), float("-inf")):
            text = ("-" if value < 0 else "") + "np.inf"
        else:
            text = source_text.number(value)
        return f"{NP_DTYPE[dtype]}({text})"
    return f"{NP_DTYPE[dtype]}({source_text.number(int(value))})"


# Nodes are named in generated code by their position in the program's graph, not by their
# process-wide serial: the same graph (rebuilt from an artifact, or traced in another process)
# must render to the same text, hence the same file and the same numba cache entry.
_NUMBERS: dict[int, int] = {}


def number(node: Node) -> int:
    return _NUMBERS.get(id(node), node.serial)


def where(node: Node) -> str:
    """The comment naming a node, the user's line and the module scope it came from (escaped: it may come from
    an artifact)."""
    loc = ""
    if node.loc:
        scope = f" in {node.loc.scope}" if getattr(node.loc, "scope", "") else ""
        loc = f" @ {source_text.file_name(node.loc.file)}:{int(node.loc.line)}{scope}"
    return source_text.comment(f"%{number(node)} {node.op}{loc}")


class Writer:
    """Indented lines of Python source."""

    def __init__(self, indent: int = 1):
        self.lines: list[str] = []
        self.level = indent

    def __call__(self, line: str) -> None:
        self.lines.append("    " * self.level + line)

    @contextmanager
    def block(self, header: str):
        self(header)
        self.level += 1
        yield
        self.level -= 1

    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass
class KernelArg:
    """One argument of a rendered kernel: an array view of `node`, or a scalar."""

    node: Node
    kind: str          # "array", "flat" (1-D view of a contiguous array), "scalar" (a size node), "dim"
    name: str
    dim: str | None = None


@dataclass
class RenderedKernel:
    """A kernel's body (local names prefixed with P) and the arguments it reads them from."""

    kernel: Kernel
    args: list[KernelArg]
    lines: list[str]
    comment: str
    parallel: bool = False
    library: frozenset = frozenset()   # the hand-written kernels it calls by symbol: (module, variant)
    name: str = ""        # the function name when emitted as a function of its own
    inline: bool = True   # emitted into the outer function (its only use), or called
    call_arrays: list[str] = field(default_factory=list)   # when called: the arrays the outer function passes
    call_slots: list[tuple] = field(default_factory=list)   # and the S slots of its scalars, in order

    def function_text(self) -> str:
        """The kernel as an @njit function over views of its buffers (how debugging runs one kernel alone)."""
        params = ", ".join(a.name for a in self.args).replace(P, "")
        return self.with_prologue(params, [])

    def with_prologue(self, params: str, prologue: list[str]) -> str:
        """The kernel as an @njit function named FUNC_NAME: `prologue` binds its arguments' views from `params`."""
        deco = "@njit(**JIT_PARALLEL)" if self.parallel else "@njit(**JIT)"
        body = "\n".join(prologue + self.lines).replace(P, "")
        return f'{deco}\ndef FUNC_NAME({params}):\n{source_text.docstring([self.comment])}\n{body}'

    def inline_lines(self, prefix: str, bind: list[str]) -> list[str]:
        """The body for the outer function: arguments bound to views, locals renamed apart."""
        head = [f"    # {source_text.comment(f'{self.kernel.name}: {self.comment}')}"]
        head += [f"    {a.name.replace(P, prefix)} = {v}" for a, v in zip(self.args, bind)]
        return head + [line.replace(P, prefix) for line in self.lines]


_COMMENT = re.compile(r"  # .*$|    \"\"\".*\"\"\"$", re.M)


def _cast(dtype: str, operand: str) -> str:
    return f"({operand} != 0)" if dtype == "bool" else f"{NP_DTYPE[dtype]}({operand})"


# how the kernel IR is spelled in Python for numba (dlc/codegen/printer.py)
DIALECT = Dialect(index=ir.PYTHON, literal=literal, function=numba_name, cast=_cast,
                  operand=lambda text: text, template=lambda text: f"({text})")


class KernelRenderer:
    """Turns one Kernel into the text of an @njit function and its argument list.

    The kernel's values, loops and stores are kernel IR (dlc/codegen/lower.py
    builds them, dlc/codegen/printer.py prints them); what stays here is
    numba's own: the arguments (n-d views, flat views, scalars), and how a
    flat loop splits across threads.
    """

    def __init__(self, program: Program, kernel: Kernel, flat: bool = False):
        self.program = program
        self.kernel = kernel
        self.args: list[KernelArg] = []
        self.arg_of: dict[tuple, str] = {}
        self.local: dict[int, str] = {}   # id(node) -> a local array holding its value (a library call's target)
        self.literal_extents: dict[str, int] = {}   # an extent's text -> its value, where the dim is literal
        self.library: set[tuple[str, str]] = set()   # hand-written kernels called by symbol: (module, variant)
        self.w = Writer()
        self.tmp = 0
        self.vals = Values(kernel, lambda kind: self.fresh(), flat=flat, reshape_views=True)
        self.printer = PythonPrinter(DIALECT, self.array, lambda n: self.arg(n, "scalar"), self.dim, where, NP_DTYPE)
        # A parameter update this kernel writes straight into the parameter (Program.inplace; the planner made
        # sure the kernel reads the parameter only at the index it stores, before storing) is stored through
        # the parameter's own array: two views of one buffer fail LLVM's runtime overlap check and leave the
        # loop scalar (W4's Adam epilogues: 0.84 ms against 0.14 ms vectorized, for 200K elements).
        self.same_array = {id(o): p for o in kernel.outputs
                           if (p := program.inplace.get(id(o))) is not None
                           and tuple(p.shape) == tuple(o.shape) and p.dtype == o.dtype}

    # ---- arguments

    def arg(self, node: Node, kind: str = "array", dim: str | None = None) -> str:
        if kind in ("array", "flat"):
            node = self.same_array.get(id(node), node)
        key = (id(node), kind, dim)
        if key not in self.arg_of:
            prefix = {"array": "a", "flat": "a", "scalar": "s", "dim": "d"}[kind]
            name = f"{P}{prefix}{len(self.args)}"
            self.arg_of[key] = name
            self.args.append(KernelArg(node, kind, name, dim))
        return self.arg_of[key]

    def array(self, node: Node, flat: bool = False) -> str:
        if id(node) in self.local:
            return self.local[id(node)]
        return self.arg(node, "flat" if flat else "array")

    def bound(self, name: str, *dtypes: str) -> str:
        """The name generated code calls hand-written kernel `name` by: its stub for these argument dtypes
        (the variant its module declares, kernels/cpu/library.py)."""
        if not all(d in NP_DTYPE for d in dtypes):   # known names only, never text from outside
            raise Unsupported(f"{name} for dtypes {dtypes}")
        variant = "_".join((name,) + dtypes)
        self.library.add((BOUND[name], variant))
        return variant

    def dim(self, d) -> str:
        """A dim as an expression: a literal, or a scalar argument carrying a symbol's value."""
        if isinstance(d, int):
            return str(d)
        return self.arg(self.kernel.nodes[0], "dim", d)

    def fresh(self) -> str:
        self.tmp += 1
        return f"{P}t{self.tmp}"

    # ---- printing kernel IR

    def emit(self, stmts: list) -> None:
        """Print kernel-IR statements at the writer's level, loop-invariant bindings ahead of their loops, loops
        cut where their conditions change (after hoisting: the cut pieces bind the same names), then loops whose
        index is divided split at the divisor (the cut pieces' bounds are literal)."""
        stmts = ir.split_ranges(ir.hoist(stmts), extents=self.literal_extents)
        self.w.lines += self.printer.lines(ir.strip_mine(stmts, extents=self.literal_extents), self.w.level)

    def value_text(self, node: Node, idx: tuple) -> str:
        """node's value at idx: its statements printed here, its value as text."""
        v = self.vals.value(node, idx)
        self.emit(self.vals.take())
        return self.printer.value(v)

    def extents(self, array: str, shape) -> list[ir.Expr]:
        """The loop extents over an array of this shape (the literal ones noted for ir.split_ranges)."""
        out = [ir.Var(f"{array}.shape[{k}]") for k in range(len(shape))]
        self.literal_extents.update((e.name, d) for e, d in zip(out, shape) if isinstance(d, int))
        return out

    @contextmanager
    def loops(self, names: list[str], extents: list[str]):
        """Serial loops around hand-written lines (take's and one_hot's label checks, gathers and scatters)."""
        for n, e in zip(names, extents):
            self.w(f"for {n} in range({e}):")
            self.w.level += 1
        yield
        self.w.level -= len(names)


# ----------------------------------------------------------------------------
# kernel kinds


def render_kernel(program: Program, kernel: Kernel, parallel: bool = True) -> RenderedKernel:
    try:
        return _render_kernel(program, kernel, parallel)
    except LoweringError as e:
        raise Unsupported(f"{e.node.op}: {e.why}") from None


def _render_kernel(program: Program, kernel: Kernel, parallel: bool) -> RenderedKernel:
    if kernel.kind in ("elementwise", "injective"):
        return _render_elementwise(program, kernel, parallel)
    if kernel.kind == "reduce":
        return _render_reduce(program, kernel)
    if kernel.kind == "complex" and kernel.anchor is not None and kernel.anchor.op == "matmul":
        return _render_matmul(program, kernel, parallel)
    if kernel.kind == "complex" and kernel.anchor is not None and kernel.anchor.op in WINDOW_CALLS:
        return _render_window(program, kernel, parallel)
    if kernel.kind == "complex" and kernel.anchor is not None and kernel.anchor.op in NORM_CALLS:
        return _render_layer_norm(program, kernel, parallel)
    if kernel.kind == "opaque" and kernel.anchor is not None and kernel.anchor.op in ("take", "take_grad"):
        return _render_take(program, kernel)
    if kernel.kind == "opaque" and kernel.anchor is not None and kernel.anchor.op == "one_hot":
        return _render_one_hot(program, kernel)
    if kernel.kind == "opaque" and kernel.anchor is not None and kernel.anchor.op in RANDOM_OPS:
        return _render_random(program, kernel)
    if kernel.kind == "opaque" and kernel.anchor is not None and kernel.anchor.op in ATTENTION_CALLS:
        return _render_attention(program, kernel)
    anchor = kernel.anchor.op if kernel.anchor is not None else kernel.kind
    raise Unsupported(f"no native lowering for {anchor!r}")


PACK_MIN = 16            # parameters from which an outer function reads them by address
PARALLEL_MIN = 1 << 17   # elements below which a prange entry (~3.4 us) costs more than it saves
PARALLEL_CHUNKS = 8


def _finish(r: KernelRenderer, kernel: Kernel, comment: str, parallel: bool = False) -> RenderedKernel:
    return RenderedKernel(kernel, r.args, r.w.lines, comment, parallel, frozenset(r.library))


def _describe(kernel: Kernel) -> str:
    return f"{kernel.kind}: {' -> '.join(n.op for n in kernel.nodes)}"


@contextmanager
def _thread_chunks(r: KernelRenderer, size: str, extent: str):
    """A prange over chunks of range(extent): PARALLEL_CHUNKS of them when `size` elements are at least
    PARALLEL_MIN, else one (no thread hand-off); the body, written inside, gets each chunk's (lo, hi) names."""
    c, lo, hi, chunks = f"{P}c", f"{P}lo", f"{P}hi", f"{P}chunks"
    r.w(f"{chunks} = {PARALLEL_CHUNKS} if {size} >= {PARALLEL_MIN} else 1")
    with r.w.block(f"for {c} in prange({chunks}):"):
        r.w(f"{lo} = {c} * {extent} // {chunks}")
        r.w(f"{hi} = ({c} + 1) * {extent} // {chunks}")
        yield lo, hi


def _render_elementwise(program, kernel, parallel):
    """One loop over the flat buffers when every read is at the output's own offset (split into chunks across
    threads on large arrays), else a loop nest over the output's dims."""
    shape = kernel.outputs[0].shape
    try:
        r = KernelRenderer(program, kernel, flat=True)
        i, n = f"{P}i", r.fresh()
        r.vals.store_all((ir.Var(i),))
        body = r.vals.take()
    except NotFlat:
        r = KernelRenderer(program, kernel)
        names = [f"{P}i{k}" for k in range(len(shape))]
        r.vals.store_all(variables(names))
        extents = r.extents(r.arg(kernel.outputs[0]), shape)
        order = _loop_order(kernel)
        r.emit(ir.nest([names[k] for k in order], [extents[k] for k in order], r.vals.take()))
        return _finish(r, kernel, _describe(kernel))
    r.w(f"{n} = {r.arg(kernel.outputs[0], 'flat')}.size")
    if not parallel:
        r.emit([ir.Loop(i, ir.Var(n), tuple(body))])
        return _finish(r, kernel, _describe(kernel))
    with _thread_chunks(r, n, n) as (lo, hi):
        # each buffer's chunk as a view indexed from 0: LLVM vectorizes range(hi - lo) over those, not
        # range(lo, hi) over the whole buffers, whose start it cannot prove non-negative (numba then keeps its
        # negative-index wraparound in the loop): 1.4 ms against 6.6 ms for W6's 4M-element gelu on 2 threads
        chunked = [ld.node for ld in r.vals.loads] + list(kernel.outputs)
        for node in dict.fromkeys(x for x in chunked if not is_scalar_node(x)):
            whole = r.arg(node, "flat")
            r.w(f"{whole}c = {whole}[{lo}:{hi}]")
            r.local[id(node)] = f"{whole}c"
        r.emit([ir.Loop(i, ir.Var(f"{hi} - {lo}", atomic=False), tuple(body))])
    return _finish(r, kernel, _describe(kernel), True)


def _loop_order(kernel) -> list[int]:
    """The output dims a loop nest runs over, outermost first: in order, except for a kernel whose one output is
    an NCHW value going channels last (dlc/passes/layout.py), which loops in its input's order: the reads are
    then contiguous and the writes a channel vector apart, not the reverse. Output by output, each of C
    channels' reads was a plane (4 KB) apart, which the L1 cache's sets cannot hold: MobileNet's first such
    kernel (32 channels of 32x32, with a bias and ReLU6) took 86 us, 43 us in this order. Other transposes keep
    the output's order: for 2-d ones either order won by up to 4x depending on the shape (power-of-two strides
    collide in the cache), which only tiles would settle."""
    out = kernel.outputs[0]
    if len(kernel.outputs) != 1 or out.op != "transpose" or tuple(out.attr("perm")) != (0, 2, 3, 1):
        return list(range(out.ndim))
    return [0, 3, 1, 2]


REDUCE_INIT = {"sum": 0, "prod": 1}


def _reduce_init(op: str, dtype: str, acc_dtype: str, acc: str, best: str) -> list:
    """The accumulator's declaration: the identity of op (argmax/argmin: no position yet)."""
    if op in REDUCE_INIT:
        return [ir.Declare(acc, acc_dtype, ir.Const(REDUCE_INIT[op], acc_dtype))]
    if op in ("max", "min"):
        if dtype.startswith("float"):
            init = -np.inf if op == "max" else np.inf
        else:
            info = np.iinfo(dtype)
            init = int(info.min if op == "max" else info.max)
        return [ir.Declare(acc, dtype, ir.Const(init, dtype))]
    return [ir.Declare(best, dtype, ir.Const(0, dtype)), ir.Declare(acc, "int64", ir.Const(-1, "int64"))]


def _render_reduce(program, kernel):
    anchor = kernel.anchor
    op = anchor.op
    if op not in ("sum", "prod", "max", "min", "argmax", "argmin"):
        raise Unsupported(f"reduce op {op!r}")
    x = anchor.inputs[0]
    axes = tuple(anchor.attr("axes"))
    keep = anchor.attr("keepdims")
    r = KernelRenderer(program, kernel)
    kept = [a for a in range(x.ndim) if a not in axes]
    names = [f"{P}i{a}" for a in range(x.ndim)]
    extents = [ir.lit_or_dim(d) for d in x.shape]
    dtype = anchor.dtype if op not in ("argmax", "argmin") else x.dtype
    acc_dtype = "float64" if (op == "sum" and dtype == "float32") else dtype
    out_idx = tuple((ir.ZERO if a in axes else ir.Var(names[a])) for a in range(x.ndim) if keep or a not in axes)
    if op == "sum" and kept and max(kept) > min(axes):
        _sum_in_input_order(r, x, axes, kept, names, extents, acc_dtype, out_idx)
        return _finish(r, kernel, _describe(kernel))
    acc, best = f"{P}acc", f"{P}best"
    lanes = _row_lanes(op, x, axes, acc_dtype)
    if lanes:
        _reduce_rows_in_lanes(r, x, names, extents, kept, acc_dtype, dtype, lanes, out_idx)
        return _finish(r, kernel, _describe(kernel))
    with r.vals.scope():
        v = r.vals.value(x, variables(names))
        if op in ("argmax", "argmin"):
            update = ir.ArgBest(best, acc, v, ir.Var(names[axes[0]]), anchor)
        else:
            update = ir.Accumulate(acc, op, v, anchor)
        inner = r.vals.take() + [update]
    result = ir.Ref(acc) if acc_dtype == anchor.dtype else ir.Cast(ir.Ref(acc), anchor.dtype)
    r.vals.remember(anchor, out_idx, result)
    r.vals.store_all(out_idx)
    body = _reduce_init(op, dtype, acc_dtype, acc, best) + \
        ir.nest([names[a] for a in axes], [extents[a] for a in axes], inner) + r.vals.take()
    r.emit(ir.nest([names[a] for a in kept], [extents[a] for a in kept], body))
    return _finish(r, kernel, _describe(kernel))


# A reduction over the last axis alone (a softmax's max and sum, a cross-entropy's log-sum-exp) keeps one
# vector's worth of partial results per row, LANE_BYTES of them, each over every lanes-th element: independent
# chains that LLVM vectorizes, where one accumulator is a chain of dependent operations (an addition about 4
# cycles, NaN-aware max about as long). W10's logits, 4096 rows of 128: max 0.58 -> 0.22 ms, sum 0.29 -> 0.15.
# A sum's order changes (it was in order, in float64 for float32); max and min are exact either way.
LANE_BYTES = 64


def _row_lanes(op, x, axes, acc_dtype) -> int:
    """How many partial results a row keeps (0: one accumulator): rows of a known length of at least two
    vectors' worth, reduced over the last axis alone by sum, prod, max or min."""
    last = x.ndim - 1
    if op not in ("sum", "prod", "max", "min") or tuple(axes) != (last,) or not isinstance(x.shape[last], int):
        return 0
    lanes = LANE_BYTES // np.dtype(acc_dtype).itemsize
    return lanes if x.shape[last] >= 2 * lanes else 0


def _reduce_rows_in_lanes(r, x, names, extents, kept, acc_dtype, dtype, lanes, out_idx):
    """The reduction of each row in `lanes` partial results (a scratch vector made once per kernel), folded
    into one after the row, then the row's last n % lanes elements and the epilogue."""
    anchor = r.kernel.anchor
    op, last, n = anchor.op, x.ndim - 1, x.shape[x.ndim - 1]
    part, lane, block, acc = f"{P}part", f"{P}lane", f"{P}block", f"{P}acc"
    declare = _reduce_init(op, dtype, acc_dtype, acc, "")[0]
    r.w(f"{part} = np.empty({lanes}, {NP_DTYPE[acc_dtype]})")
    partial = f"{part}[{lane}]"

    def accumulate(target, position):
        with r.vals.scope():
            v = r.vals.value(x, tuple(variables(names[:last])) + (position,))
            return r.vals.take() + [ir.Accumulate(target, op, v, anchor)]

    whole = n - n % lanes
    body = [ir.Loop(lane, ir.Lit(lanes), (ir.Assign(partial, declare.init),)),
            ir.Loop(block, ir.Lit(whole // lanes), (
                ir.Loop(lane, ir.Lit(lanes), tuple(accumulate(partial, ir.add(ir.mul(ir.Var(block), ir.Lit(lanes)),
                                                                            ir.Var(lane))))),)),
            declare,
            ir.Loop(lane, ir.Lit(lanes), (ir.Accumulate(acc, op, ir.Ref(partial), anchor),))]
    if whole < n:
        body.append(ir.Loop(names[last], ir.Lit(n), tuple(accumulate(acc, ir.Var(names[last]))),
                            start=ir.Lit(whole)))
    result = ir.Ref(acc) if acc_dtype == anchor.dtype else ir.Cast(ir.Ref(acc), anchor.dtype)
    r.vals.remember(anchor, out_idx, result)
    r.vals.store_all(out_idx)
    r.emit(ir.nest([names[a] for a in kept], [extents[a] for a in kept], body + r.vals.take()))


SUM_LANES_MAX = 1024   # the longest last axis whose elements get partial sums of their own (see below)


def _sum_in_input_order(r, x, axes, kept, names, extents, acc_dtype, out_idx):
    """A sum over leading or middle axes (a bias gradient, a batch norm's statistics): one pass over x in memory
    order, adding each row into a vector of partial sums (contiguous, vectorized), then the epilogue over those.

    When the last axis is summed too (N, C, H, W -> C), each of its positions keeps a partial sum of its own
    (acc[c, w]), added up in the epilogue: the innermost loop then updates independent sums, which LLVM
    vectorizes, where one sum per channel is a chain of dependent additions (about 4 cycles each)."""
    anchor = r.kernel.anchor
    acc = f"{P}acc"
    operands = _column_operands(r.kernel, x, axes, acc_dtype)
    if operands:
        _column_sums(r, x, operands, kept, names, extents, out_idx)
        return
    last = x.ndim - 1
    lanes = last in axes and isinstance(x.shape[last], int) and 1 < x.shape[last] <= SUM_LANES_MAX
    acc_axes = kept + [last] if lanes else kept
    r.w(f"{acc} = np.zeros(({', '.join(r.printer.index(extents[a]) for a in acc_axes)},), {NP_DTYPE[acc_dtype]})")
    partial = f"{acc}[{', '.join(names[a] for a in acc_axes)}]"
    with r.vals.scope():
        v = r.vals.value(x, variables(names))
        r.emit(ir.nest(names, extents, r.vals.take() + [ir.Accumulate(partial, "sum", v, anchor)]))
    t = r.fresh()
    r.vals.remember(anchor, out_idx, ir.Ref(t))
    r.vals.store_all(out_idx)
    if lanes:
        total, lane = f"{P}total", f"{P}lane"
        row = f"{acc}[{', '.join([names[a] for a in kept] + [lane])}]"
        gather = [ir.Declare(total, acc_dtype, ir.Const(0, acc_dtype)),
                  ir.Loop(lane, extents[last], (ir.Accumulate(total, "sum", ir.Ref(row), anchor),))]
        result = ir.Ref(total)
    else:
        gather, result = [], ir.Ref(partial)
    body = gather + [ir.Let(t, anchor.dtype, ir.Cast(result, anchor.dtype))] + r.vals.take()
    r.emit(ir.nest([names[a] for a in kept], [extents[a] for a in kept], body))


def _column_operands(kernel: Kernel, x: Node, axes, acc_dtype: str) -> tuple[Node, ...] | None:
    """The stored values a sum's kernels/cpu/sums.py kernel reads, if it is one: a sum over the leading axes,
    in float64, of a float value the kernel reads as stored (column_sums) or of the product of two such values
    of its shape computed for the sum alone (column_dots), its kept trailing dims known and its size not known
    to be under PARALLEL_MIN; else None."""
    kept = x.shape[len(axes):]
    if not (tuple(axes) == tuple(range(len(axes))) and 0 < len(axes) < x.ndim and acc_dtype == "float64"
            and x.dtype in ("float32", "float64") and all(isinstance(d, int) for d in kept)):
        return None
    if all(isinstance(d, int) for d in x.shape) and not _known_to_be_large(x.shape):
        return None
    inside = {id(n) for n in kernel.nodes}
    if id(x) not in inside:
        return (x,)
    if x.op == "mul" and all(o is not x for o in kernel.outputs) and all(
            id(i) not in inside and tuple(i.shape) == tuple(x.shape) and i.dtype == x.dtype for i in x.inputs):
        return tuple(x.inputs)
    return None


def _column_sums(r, x, operands, kept, names, extents, out_idx):
    """The sums by column_sums or column_dots (on threads, in float64) into a vector, then the epilogue."""
    anchor = r.kernel.anchor
    acc = f"{P}acc"
    n = int(np.prod([x.shape[a] for a in kept], dtype=np.int64))
    r.w(f"{acc} = np.empty({n}, np.float64)")
    func = r.bound("column_sums" if len(operands) == 1 else "column_dots", x.dtype)
    rows = tuple(f"{r.arg(o)}.reshape((-1, {n}))" for o in operands)
    r.emit([ir.Call(func, rows + (acc,), anchor)])
    t = r.fresh()
    offset = ir.linear(tuple(variables([names[a] for a in kept])), [x.shape[a] for a in kept])
    r.vals.remember(anchor, out_idx, ir.Ref(t))
    r.vals.store_all(out_idx)
    body = [ir.Let(t, anchor.dtype, ir.Cast(ir.Ref(f"{acc}[{r.printer.index(offset)}]"), anchor.dtype))] + \
        r.vals.take()
    r.emit(ir.nest([names[a] for a in kept], [extents[a] for a in kept], body))


def _render_matmul(program, kernel, parallel=False):
    anchor = kernel.anchor
    r = KernelRenderer(program, kernel)
    operands = []
    inside = {id(n) for n in kernel.nodes}
    for x in anchor.inputs:
        transposed = False
        while id(x) in inside and x.op == "transpose":
            perm = x.attr("perm")
            n = len(perm)
            if tuple(perm) != tuple(range(n - 2)) + (n - 1, n - 2):
                raise Unsupported("a transpose other than swapping the last two axes before a matmul")
            transposed = not transposed
            x = x.inputs[0]
        if id(x) in inside:
            raise Unsupported(f"{x.op} before a matmul")
        operands.append((r.arg(x), x, transposed))
    tgt = _anchor_target(r, kernel)
    parallel = parallel or _known_to_be_large(anchor.shape, THREADED_GEMM_TAIL_MIN)
    nb = anchor.ndim - 2
    names = [f"{P}b{k}" for k in range(nb)]
    views = []
    for name, x, transposed in operands:
        lead = nb - (x.ndim - 2)
        bidx = [("0" if x.shape[k] == 1 and anchor.shape[lead + k] != 1 else names[lead + k])
                for k in range(x.ndim - 2)]
        v = f"{name}[{', '.join(bidx)}]" if bidx else name
        views.append(v + (".T" if transposed else ""))
    (a_name, a, a_transposed), (_, b, _) = operands
    # a loop body's GEMMs are small and come once per step: gemm_rows runs them in row blocks on threads
    gemm = "gemm_rows" if program.loop_body else "gemm"
    if nb and b.ndim == 2 and not a_transposed and tuple(a.shape[:-2]) == tuple(anchor.shape[:-2]):
        # a matrix shared by the whole batch: one GEMM over all rows of a (C-ordered), not one per batch index
        rows = (f"{a_name}.reshape((-1, {a_name}.shape[-1]))", views[1], f"{tgt}.reshape((-1, {tgt}.shape[-1]))")
        r.emit([ir.Call(gemm, rows, anchor)])
    else:
        out = f"{tgt}[{', '.join(names)}]" if names else tgt
        gemms = [ir.Call(gemm, (views[0], views[1], out), anchor)]
        r.emit(ir.nest(names, r.extents(tgt, anchor.shape[:nb]), gemms))
    threads = _render_epilogue(r, kernel, tgt, parallel)
    return _finish(r, kernel, _describe(kernel), threads)


# ----------------------------------------------------------------------------
# convolutions and pools: one call into kernels/cpu/conv.py or pool.py, then the epilogue


def _ints(*values) -> str:
    """Attribute arguments typed int64, not literals: numba would compile the hand-written kernel once per
    distinct stride and padding, where one compilation per dtype serves them all."""
    return ", ".join(f"np.int64({source_text.number(int(source_text.checked_number(v)))})" for v in values)


def _conv_args(a: dict) -> str:
    (pt, _), (pl, _) = a["padding"]
    return _ints(*a["stride"], pt, pl, *a["dilation"], a["groups"])


def _pool_args(a: dict) -> str:
    (pt, _), (pl, _) = a["padding"]
    text = _ints(*a["kernel"], *a["stride"], pt, pl)
    if "count_include_pad" not in a:
        return text
    if not isinstance(a["count_include_pad"], bool):
        raise TypeError(f"count_include_pad must be a bool, got {type(a['count_include_pad']).__name__}")
    return text + f", np.bool_({source_text.number(a['count_include_pad'])})"


# op -> (the hand-written function, its attribute arguments after the operands and the output);
# conv_transpose2d is conv2d_grad_input under another weight name (the same computation).
WINDOW_CALLS = {
    "conv2d": ("conv2d", _conv_args),
    "conv2d_nhwc": ("conv2d_nhwc", _conv_args),
    "conv2d_grad_input": ("conv2d_grad_input", _conv_args),
    "conv_transpose2d": ("conv2d_grad_input", _conv_args),
    "conv2d_grad_weight": ("conv2d_grad_weight", _conv_args),
    "max_pool2d": ("max_pool2d", _pool_args),
    "max_pool2d_grad": ("max_pool2d_grad", _pool_args),
    "avg_pool2d": ("avg_pool2d", _pool_args),
    "avg_pool2d_grad": ("avg_pool2d_grad", _pool_args),
    "adaptive_avg_pool2d": ("adaptive_avg_pool2d", lambda a: ""),
    "adaptive_avg_pool2d_grad": ("adaptive_avg_pool2d_grad", lambda a: ""),
}


# hand-written kernels called by symbol (kernels/cpu/library.py), with the module each is in: numba would
# otherwise optimize their code again inside every generated function that calls them
BOUND = {"conv2d": "conv", "conv2d_nhwc": "conv_nhwc", "conv2d_grad_input": "conv", "conv2d_grad_weight": "conv",
         "attention_forward": "attention", "attention_backward": "attention", "attention_backward_q": "attention",
         "attention_backward_kv": "attention", "layer_norm_forward": "norm", "layer_norm_backward": "norm",
         "layer_norm_forward_rows": "norm", "layer_norm_backward_rows": "norm", "column_sums": "sums",
         "column_dots": "sums"}


def _anchor_target(r: KernelRenderer, kernel: Kernel) -> str:
    """Where a library call writes the anchor's value: an output of its dtype and shape (the epilogue then
    runs in place over it), else a temporary."""
    anchor = kernel.anchor
    target = kernel.anchor_target()
    if target is not None:
        tgt = r.arg(target)
    else:
        tgt = f"{P}acc"
        shape_expr = ", ".join(r.dim(d) for d in anchor.shape)
        r.w(f"{tgt} = np.empty(({shape_expr},), {NP_DTYPE[anchor.dtype]})")
    r.local[id(anchor)] = tgt
    return tgt


def _render_epilogue(r: KernelRenderer, kernel: Kernel, tgt: str, parallel: bool = False,
                     chunk: tuple[int, str, str] | None = None) -> bool:
    """The elementwise nodes after the anchor: one loop nest over its output space, reading its value from tgt,
    computing and storing the other outputs. With `parallel`, a large output's nest runs in chunks of one axis
    on threads (the elementwise kernels' rule). With `chunk` (axis, lo, hi), inside a chunk loop the caller
    opened, over that range of the axis. Returns whether it runs on threads."""
    anchor = kernel.anchor
    if not _has_epilogue(kernel):
        return False
    names = [f"{P}i{k}" for k in range(anchor.ndim)]
    idx = variables(names)
    t = r.fresh()
    r.vals.remember(anchor, idx, ir.Ref(t))
    r.vals.store_all(idx, [o for o in kernel.outputs if o is not anchor])
    body = [ir.Let(t, anchor.dtype, ir.Load(anchor, idx))] + r.vals.take()
    extents = r.extents(tgt, anchor.shape)
    if chunk is not None:
        r.emit(_chunk_nest(names, extents, body, *chunk))
        return True
    axis = _chunked_axis(anchor.shape) if parallel else None
    if axis is None:
        r.emit(ir.nest(names, extents, body))
        return False
    # chunks of the first axis longer than 1 (the ones before it have one index)
    with _thread_chunks(r, f"{tgt}.size", f"{tgt}.shape[{axis}]") as (lo, hi):
        r.emit(_chunk_nest(names, extents, body, axis, lo, hi))
    return True


def _chunk_nest(names, extents, body, axis: int, lo: str, hi: str) -> list:
    """Loops over names around body, the one of `axis` over range(lo, hi) only."""
    nest = body
    for k in range(len(names) - 1, -1, -1):
        bounds = dict(start=ir.Var(lo), extent=ir.Var(hi)) if k == axis else dict(extent=extents[k])
        nest = [ir.Loop(names[k], body=tuple(nest), **bounds)]
    return nest


def _chunked_axis(shape) -> int | None:
    """The axis an epilogue on threads splits: the first one not known to be 1; none when the output is known
    to be smaller than PARALLEL_MIN."""
    if all(isinstance(d, int) for d in shape) and int(np.prod(shape, dtype=np.int64)) < PARALLEL_MIN:
        return None
    return next((k for k, d in enumerate(shape) if d != 1), None)


# A forward convolution's elementwise tail (bias, residual add, ReLU: one pass over the output) runs on threads
# whatever the function's `parallel` where its output is known to have PARALLEL_MIN elements or more: the conv's
# own threads have just finished. ResNet-18-style inference at batch 16 (the ONNX benchmark's net, minimum of 8
# rounds of 3 calls): 106.2 ms one-threaded, 99.1 ms so. Not where the size is only known at run time: such a
# kernel is a parallel function of its own (not inlined) that enters a parallel region at every call, even for
# one chunk, and numba compiles those slowly. The input gradient's tails (batch norm's backward in W8) gained
# nothing measurable (W8's step 737-741 ms either way) and cost 6 s of W8's cold compile (22.6 -> 28.8 s), so
# they stay on one thread.
THREADED_TAILS = {"conv2d", "conv2d_nhwc"}
# The same for a GEMM's tail, from a larger output: W10's GELU and its derivative (4M elements each, over the
# output BLAS has just written) took 15.7 and 13.9 ms as kernels with the tail on one thread, 12.1 and 12.3 ms
# with it on two; the tails of its 1M-element GEMMs gain a quarter of a millisecond, each at the price of a
# parallel function compiled (W1's and W10's cold compiles took 1 and 1.9 s longer with every tail from 128K
# elements on threads).
THREADED_GEMM_TAIL_MIN = 1 << 21


def _known_to_be_large(shape, least: int = PARALLEL_MIN) -> bool:
    return all(isinstance(d, int) for d in shape) and int(np.prod(shape, dtype=np.int64)) >= least


def _render_window(program, kernel, parallel=False):
    anchor = kernel.anchor
    parallel = parallel or (anchor.op in THREADED_TAILS and _known_to_be_large(anchor.shape))
    if kernel.nodes[0] is not anchor:
        raise Unsupported(f"{kernel.nodes[0].op} before a {anchor.op}")
    r = KernelRenderer(program, kernel)
    operands = [r.arg(x) for x in anchor.inputs]
    tgt = _anchor_target(r, kernel)
    func, attr_args = WINDOW_CALLS[anchor.op]
    if func in BOUND:
        func = r.bound(func, anchor.dtype)
    extra = attr_args(anchor.a)
    r.emit([ir.Call(func, tuple(operands) + (tgt,) + ((extra,) if extra else ()), anchor)])
    threads = _render_epilogue(r, kernel, tgt, parallel)
    return _finish(r, kernel, _describe(kernel), threads)


# ----------------------------------------------------------------------------
# layer normalization: one call into kernels/cpu/norm.py over (rows, n) views, then the epilogue

NORM_CALLS = {"layer_norm": "layer_norm_forward", "layer_norm_grad": "layer_norm_backward"}


def _as_rows(name: str, shape, dims: int) -> str:
    """A contiguous array as (rows, n), n the product of its last `dims` dims (known numbers)."""
    n = int(np.prod(shape[len(shape) - dims:], dtype=np.int64))
    return f"{name}.reshape((-1, {n}))"


def _render_layer_norm(program, kernel, parallel=False):
    anchor = kernel.anchor
    if kernel.nodes[0] is not anchor:
        raise Unsupported(f"{kernel.nodes[0].op} before a {anchor.op}")
    r = KernelRenderer(program, kernel)
    dims = int(source_text.checked_number(anchor.attr("dims")))
    operands = [_as_rows(r.arg(x), x.shape, dims) for x in anchor.inputs]
    tgt = _anchor_target(r, kernel)
    eps = f"np.float64({_float(anchor.attr('eps'))})"
    rows = _row_axis(anchor.shape, dims) if _has_epilogue(kernel) and (
        parallel or _known_to_be_large(anchor.shape)) else None
    if rows is None:
        func = r.bound(NORM_CALLS[anchor.op], anchor.dtype)
        r.emit([ir.Call(func, (*operands, _as_rows(tgt, anchor.shape, dims), eps), anchor)])
        threads = _render_epilogue(r, kernel, tgt, parallel)
        return _finish(r, kernel, _describe(kernel), threads)
    # chunks of rows on threads, each normalized and then its epilogue run while the rows are in cache (a
    # second pass over the whole output on one thread took longer than the normalization on two)
    func = r.bound(NORM_CALLS[anchor.op] + "_rows", anchor.dtype)
    per_index = " * ".join(f"{tgt}.shape[{k}]" for k in range(rows + 1, anchor.ndim - dims)) or "1"
    with _thread_chunks(r, f"{tgt}.size", f"{tgt}.shape[{rows}]") as (lo, hi):
        span = f"[{lo} * {per_index}:{hi} * {per_index}]"
        r.emit([ir.Call(func, tuple(o + span for o in (*operands, _as_rows(tgt, anchor.shape, dims))) + (eps,),
                        anchor)])
        _render_epilogue(r, kernel, tgt, chunk=(rows, lo, hi))
    return _finish(r, kernel, _describe(kernel), True)


def _has_epilogue(kernel: Kernel) -> bool:
    return kernel.nodes[-1] is not kernel.anchor or any(o is not kernel.anchor for o in kernel.outputs)


def _row_axis(shape, dims: int) -> int | None:
    """The axis a row-wise kernel's chunks on threads split (as _chunked_axis), if it is one of the row axes
    (before the last `dims`)."""
    axis = _chunked_axis(shape)
    return axis if axis is not None and axis < len(shape) - dims else None


# ----------------------------------------------------------------------------
# random numbers: Philox in kernels/cpu/random.py, over the flat output

RANDOM_OPS = ("random_uniform", "random_normal", "random_bernoulli")


def _float(value) -> str:
    return source_text.number(float(source_text.checked_number(value)))


def _render_random(program, kernel):
    node = kernel.anchor
    r = KernelRenderer(program, kernel)
    out = r.arg(node, "flat")
    step = r.value_text(node.inputs[0], ())
    seed = int(node.attr("seed")) & 0xFFFFFFFFFFFFFFFF
    key = _ints(seed & 0xFFFFFFFF, seed >> 32)
    a = node.a
    if node.op == "random_bernoulli":
        call = ir.Call("random_bernoulli", (out, key, f"np.int64({step})", _float(a["p"])), node)
    else:
        kind = "uniform" if node.op == "random_uniform" else "normal"
        params = (a["low"], a["high"]) if kind == "uniform" else (a["mean"], a["std"])
        suffix = "f32" if node.dtype == "float32" else "f64"
        call = ir.Call(f"random_{kind}_{suffix}", (out, key, f"np.int64({step})", _float(params[0]),
                                                   _float(params[1])), node)
    r.emit([call])
    return _finish(r, kernel, _describe(kernel))


# ----------------------------------------------------------------------------
# attention: one call into kernels/cpu/attention.py over the operands with their leading dims flattened

ATTENTION_CALLS = {"attention": "attention_forward", "attention_grad": "attention_backward",
                   "attention_grad_q": "attention_backward_q", "attention_grad_kv": "attention_backward_kv"}
ATTENTION_MASKS = {"none": 0, "bool": 1, "add": 2}


def _as_3d(name: str, ndim: int) -> str:
    """A (..., rows, cols) array as (product of its leading dims, rows, cols): a view of a contiguous buffer."""
    lead = " * ".join(f"{name}.shape[{i}]" for i in range(ndim - 2)) or "1"
    return f"{name}.reshape(({lead}, {name}.shape[{ndim - 2}], {name}.shape[{ndim - 1}]))"


def _render_attention(program, kernel):
    node = kernel.anchor
    r = KernelRenderer(program, kernel)
    a = node.a
    if not isinstance(a["causal"], bool) or a["mask"] not in ATTENTION_MASKS:
        raise TypeError(f"attention attributes causal={a['causal']!r}, mask={a['mask']!r} are not a bool and a kind")
    operands = [_as_3d(r.arg(x), x.ndim) for x in node.inputs]
    if a["mask"] == "none":  # never read: q stands in for it
        operands.insert(3, operands[0])
    mask = node.inputs[3 if a["mask"] != "none" else 0]
    out = _as_3d(r.arg(node), node.ndim)
    flags = f"np.float64({_float(a['scale'])}), np.bool_({source_text.number(a['causal'])}), " \
            f"{_ints(ATTENTION_MASKS[a['mask']])}"
    func = r.bound(ATTENTION_CALLS[node.op], node.inputs[0].dtype, mask.dtype)
    r.emit([ir.Call(func, tuple(operands) + (out, flags), node)])
    return _finish(r, kernel, _describe(kernel))


def _error_where(node: Node) -> str:
    """The user's line as a Python literal for a runtime error message (the file name escaped, then repr'd)."""
    return repr(f" at {source_text.file_name(node.loc.file)}:{int(node.loc.line)}" if node.loc else "")


def _check_labels(r: KernelRenderer, node: Node, labels: Node, low: str, high: str, ignore=None) -> None:
    """A loop over every index or label that raises IndexRangeError before the kernel writes anything.

    take wraps -n..-1 (low is -n); one_hot refuses negatives except its ignore_index.
    """
    la = r.arg(labels)
    names = [f"{P}c{k}" for k in range(labels.ndim)]
    v = f"{P}v"
    with r.loops(names, [f"{la}.shape[{k}]" for k in range(labels.ndim)]):
        r.w(f"{v} = np.int64({la}[{', '.join(names) if names else '0'}])")
        skip = f"{v} != {int(ignore)} and " if ignore is not None else ""
        r.w(f"if {skip}({v} < {low} or {v} >= {high}):")
        r.w(f"    raise IndexRangeError({node.op!r}, {v}, {low}, {high}, {_error_where(node)})")


def _render_take(program, kernel):
    node = kernel.anchor
    r = KernelRenderer(program, kernel)
    ax = node.attr("axis")
    if node.op == "take":
        x, ind = node.inputs
        out = r.arg(node)
        space = node
    else:
        g, ind = node.inputs
        x = node
        out = r.arg(node)
        space = g
    xa = r.arg(x) if node.op == "take" else out
    ia = r.arg(ind)
    sa = r.arg(space) if node.op == "take_grad" else out
    d = f"{P}d"
    r.w(f"{d} = {xa}.shape[{ax}]")
    _check_labels(r, node, ind, f"-{d}", d)
    if node.op == "take_grad":
        r.w(f"{out}.fill(0)")
    names = [f"{P}i{k}" for k in range(space.ndim)]
    extents = [f"{sa}.shape[{k}]" for k in range(space.ndim)]
    j = f"{P}j"
    # each index read once, outside the loops over the rows it selects (a unit-stride copy LLVM vectorizes)
    picked = ax + ind.ndim
    with r.loops(names[:picked], extents[:picked]):
        iidx = names[ax:picked]
        r.w(f"{j} = np.int64({ia}[{', '.join(iidx) if iidx else '0'}])")
        r.w(f"if {j} < 0:")
        r.w(f"    {j} += {d}")
        xidx = names[:ax] + [j] + names[picked:]
        with r.loops(names[picked:], extents[picked:]):
            if node.op == "take":
                r.w(f"{out}[{', '.join(names) if names else '0'}] = {xa}[{', '.join(xidx)}]  # {where(node)}")
            else:
                r.w(f"{out}[{', '.join(xidx)}] += {sa}[{', '.join(names) if names else '0'}]  # {where(node)}")
    return _finish(r, kernel, _describe(kernel))


def _render_one_hot(program, kernel):
    node = kernel.anchor
    (labels,) = node.inputs
    r = KernelRenderer(program, kernel)
    depth, ignore = int(node.attr("depth")), node.attr("ignore_index")
    _check_labels(r, node, labels, "0", str(depth), ignore)
    out, la = r.arg(node), r.arg(labels)
    names = [f"{P}i{k}" for k in range(node.ndim)]
    v = f"{P}v"
    with r.loops(names, [f"{out}.shape[{k}]" for k in range(node.ndim)]):
        lidx = names[:-1]
        r.w(f"{v} = np.int64({la}[{', '.join(lidx) if lidx else '0'}])")
        hot = f"{v} == {names[-1]}" + (f" and {v} != {int(ignore)}" if ignore is not None else "")
        r.w(f"{out}[{', '.join(names)}] = 1 if {hot} else 0  # {where(node)}")
    return _finish(r, kernel, _describe(kernel))


# ----------------------------------------------------------------------------
# the module


@dataclass
class Segment:
    """A run of native kernels called by one outer function, or one kernel run by numpy."""

    kernels: list[RenderedKernel | Kernel]
    native: bool
    func: str = ""
    reason: str = ""


@dataclass
class GeneratedModule:
    source: str
    segments: list[Segment]
    slots: list[tuple]            # what each entry of the per-call int64 array S holds
    externals: list[Node]         # the arrays in the tuple X: inputs, params, constants
    kernels: list[RenderedKernel]
    distinct_kernels: int
    digest: str
    redirects: dict = field(default_factory=dict)   # id(update value) -> the param it is written into
    addressed: list[int] = field(default_factory=list)  # externals the code reads by address (slots in S)
    direct: list[int] = field(default_factory=list)     # and those the outer functions take, in order
    functions: list[ModuleFunction] = field(default_factory=list)  # what a cold compile can hand out


@dataclass(frozen=True)
class ModuleFunction:
    """A numba function of a generated module and what its callers pass it, so that it can be compiled before
    its first call, in another process too (runtime/compile_workers.py).

    args names each argument as the outer functions do: "arena", "arena_<dtype>" (the arena viewed as that
    dtype), "S", "at" (an int64) or "e<m>" (external array m). level orders them: a function is compiled
    after those it calls by symbol (0: kernels shared by several layers, 1: parts of a long outer function,
    2: outer functions)."""

    name: str
    args: tuple[str, ...]
    level: int


HEADER = '''"""Generated by dlc: {title}. Do not edit; regenerated from the graph."""
# hand-written kernels: {kernels_digest} (part of the file's hash: numba's cache must not outlive them)
import math

import numpy as np
from numba import njit, prange

from dlc.errors import IndexRangeError
from dlc_cpu_fastmath import *  # noqa: F403  (kernels/cpu/fastmath.py: tanh_f32, exp_f32, fmax, ...)
from dlc_cpu_gemm import copy_flat, gemm, gemm_rows
from dlc_cpu_views import address_view, arena_view
from dlc_cpu_library import bind, call_kernel
from dlc_cpu_pool import (adaptive_avg_pool2d, adaptive_avg_pool2d_grad, avg_pool2d, avg_pool2d_grad, max_pool2d,
                          max_pool2d_grad)
from dlc_cpu_random import (random_bernoulli, random_normal_f32, random_normal_f64, random_uniform_f32,
                            random_uniform_f64)

JIT = dict(cache=True, error_model="numpy", fastmath={fastmath}, boundscheck=False, nogil=True)
from dlc_cpu_threads import JIT_PARALLEL as _PRANGE_ONLY
JIT_PARALLEL = dict(JIT, parallel=_PRANGE_ONLY["parallel"])  # prange loops only: no region per array expression
'''


def render_program(program: Program, title: str, fastmath: bool = False, parallel: bool = False,
                   kernels_digest: str = "") -> GeneratedModule:
    """Render every kernel, dedupe identical ones, and write one outer function per native segment."""
    _NUMBERS.clear()
    _NUMBERS.update({id(n): i for i, n in enumerate(program.graph.nodes)})
    try:
        return _render_program(program, title, fastmath, parallel, kernels_digest)
    finally:
        _NUMBERS.clear()


def _render_program(program, title, fastmath, parallel, kernels_digest) -> GeneratedModule:
    rendered: list[RenderedKernel | Kernel] = []
    funcs: dict[str, str] = {}
    fallback_reasons: dict[int, str] = {}   # id(kernel) -> why it runs through numpy
    for k in program.kernels:
        if all(n.op == "size" for n in k.nodes):
            continue  # a size is a scalar computed from the symbol bindings
        try:
            rk = render_kernel(program, k, parallel)
        except Unsupported as e:
            fallback_reasons[id(k)] = f"numpy fallback: {e}"
            rendered.append(k)
            continue
        rendered.append(rk)
    redirects = direct_updates(program, rendered)
    # a one-element constant is a literal inside loops, but a kernel that reads it as an array (take's index)
    # gets it as an argument like any other constant
    read_as_arrays = {id(a.node) for rk in rendered if isinstance(rk, RenderedKernel) for a in rk.args
                      if a.kind in ("array", "flat")}
    outer = _OuterBuilder(program, redirects, read_as_arrays)
    # A kernel becomes a function over arena offsets and external arrays; identical ones (the same layer at
    # every depth of a model; compared without comments) are one function, called at each use. A kernel
    # used once is inlined into its outer function: numba compiles that faster than a function of its own.
    natives = [rk for rk in rendered if isinstance(rk, RenderedKernel)]
    forms = [outer.function_form(rk) for rk in natives]
    uses = Counter(name for name, _, _, _ in forms)
    for rk, (name, text, arrays, keys) in zip(natives, forms):
        if uses[name] > 1 or rk.parallel:
            rk.inline, rk.name, rk.call_arrays, rk.call_slots = False, name, arrays, keys
            funcs.setdefault(name, text)
    segments: list[Segment] = []
    for item in rendered:
        native = isinstance(item, RenderedKernel)
        if native and segments and segments[-1].native:
            segments[-1].kernels.append(item)
        else:
            segments.append(Segment([item], native))
    if not segments or not segments[-1].native:
        segments.append(Segment([], True))  # the parameter write-back runs natively, after everything
    outer_texts = []
    for i, seg in enumerate(segments):
        if seg.native:
            seg.func = f"segment{i}"
            outer_texts.append(outer.render(seg, i == len(segments) - 1))
        else:
            seg.reason = fallback_reasons[id(seg.kernels[0])]
    # the kernels called by symbol are bound when the module is imported, before anything can call them
    library = sorted(set().union(*(rk.library for rk in rendered if isinstance(rk, RenderedKernel))))
    binds = "".join(f"{variant} = bind({module!r}, {variant!r})\n" for module, variant in library)
    source = HEADER.format(title=source_text.comment(title), fastmath=_jit_flag(fastmath),
                           kernels_digest=source_text.comment(kernels_digest)) + binds + \
        "\n\n" + \
        "\n\n\n".join(funcs.values()) + "\n\n\n" + "\n\n\n".join(outer_texts) + "\n"
    digest = hashlib.sha256(source.encode()).hexdigest()[:20]
    native = [k for k in rendered if isinstance(k, RenderedKernel)]
    return GeneratedModule(source, segments, outer.slots, outer.externals, native,
                           len(uses), digest, redirects, outer.addressed, outer.direct, list(outer.functions))


def _jit_flag(value) -> str:
    """A boolean @njit option as source: only a real bool is rendered (options may come from a manifest)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"fastmath must be True or False, got {type(value).__name__}")
    return source_text.number(bool(value))


def direct_updates(program: Program, rendered: list) -> dict[int, Node]:
    """The memory planner's in-place parameter updates (Program.inplace) whose kernel is
    native code; a kernel run through numpy writes to the arena. Returns id(update value) -> param."""
    native = {id(o) for it in rendered if isinstance(it, RenderedKernel) for o in it.kernel.outputs}
    return {k: p for k, p in program.inplace.items() if k in native}


class _OuterBuilder:
    """Writes the outer functions: typed arena views, kernel calls, and the parameter write-back."""

    def __init__(self, program: Program, redirects: dict, read_as_arrays: set):
        self.program = program
        self.redirects = redirects
        self.slots: list[tuple] = []
        self.slot_of: dict[tuple, int] = {}
        self.externals: list[Node] = []
        self.ext_of: dict[int, int] = {}
        for n in program.graph.nodes:
            if n.op in ("input", "param") or (n.op == "const" and (not is_scalar_node(n) or id(n) in read_as_arrays)):
                self.ext_of[id(n)] = len(self.externals)
                self.externals.append(n)
        # graph outputs are written straight into fresh arrays the caller gets (no copy out of the arena)
        computed = {id(o) for k in program.kernels for o in k.outputs}
        for n in program.outputs:
            if id(n) in computed and program.storage_of(n) is n and id(n) not in redirects \
                    and id(n) not in self.ext_of and n.dtype != "tuple":
                self.ext_of[id(n)] = len(self.externals)
                self.externals.append(n)
        # Many parameters are read by their data addresses, which S holds like the arena offsets, instead of
        # one argument each: numba types and unboxes every argument of every outer function (400 array
        # arguments took 11 s to compile and 49 us a call). A kernel makes its views of them itself
        # (kernels/cpu/views.py: address_view), as it does of the arena. Below PACK_MIN parameters, or for a
        # parameter of no dims, each stays an argument.
        params = [i for i, n in enumerate(self.externals) if n.op == "param" and n.ndim > 0]
        self.addressed = params if len(params) >= PACK_MIN else []
        self.packed = set(self.addressed)
        self.direct = [i for i in range(len(self.externals)) if i not in self.packed]
        self.functions: dict[ModuleFunction, None] = {}   # in order of appearance, each once

    def slot(self, key: tuple) -> str:
        if key not in self.slot_of:
            self.slot_of[key] = len(self.slots)
            self.slots.append(key)
        return f"S[{self.slot_of[key]}]"

    def dim(self, d) -> str:
        return str(d) if isinstance(d, int) else self.slot(("dim", d))

    def numel(self, node: Node) -> str:
        parts = [self.dim(d) for d in node.shape]
        return " * ".join(parts) if parts else "1"

    def view(self, node: Node, kind: str, w: Writer, names: dict) -> str:
        key = (id(node), kind)
        if key in names:
            return names[key]
        storage = self.program.storage_of(node)
        storage = self.redirects.get(id(storage), storage)
        name = f"v{number(node)}" + ("f" if kind == "flat" else "")
        shape = [self.dim(d) for d in node.shape] or ["1"]
        if kind == "flat":
            shape = [self.numel(node)]
        shape_txt = "(" + ", ".join(shape) + ",)"
        # arena views come from dlc_cpu_views: numba's slice-and-reshape made compile time grow with the square
        # of the number of views in a function
        if self.ext_of.get(id(storage)) in self.packed:
            base = self.arena(node.dtype, w, names)
            w(f"{name} = address_view({base}, {self.slot(('address', storage))}, {shape_txt})  # {where(node)}")
        elif id(storage) in self.ext_of:
            base = f"e{self.ext_of[id(storage)]}"
            w(f"{name} = {base}.reshape({shape_txt})  # {where(node)}")
        else:
            base = self.arena(node.dtype, w, names)
            start = self.slot(("index", storage, _itemsize(node.dtype)))
            w(f"{name} = arena_view({base}, {start}, {shape_txt})  # {where(node)}")
        names[key] = name
        return name

    def function_form(self, rk: RenderedKernel) -> tuple[str, str, list[str], list[tuple]]:
        """The kernel as a function that makes its own views: its name, its text, and what the outer function
        passes it (the typed arenas and external arrays it reads, and the S slots of its scalars).

        The function takes the typed arena, S and `at`, where its scalars
        (buffer offsets, symbol values, sizes) start in S, and the external
        arrays (inputs, parameters, constants, outputs) it touches. Literal
        dims stay literals (the loops' extents). So the same layer at another
        depth is the same function, and a call is one short statement of the
        outer function.
        """
        externals: list[tuple[str, str]] = []   # (parameter, the outer function's array)
        reads: list[str] = []
        views: list[str] = []
        keys: list[tuple] = []
        dims = {a.dim: a.name for a in rk.args if a.kind == "dim"}

        def scalar(name: str, key: tuple) -> str:
            reads.append(f"    {name} = S[at + {len(keys)}]" if keys else f"    {name} = S[at]")
            keys.append(key)
            return name

        def dim(d) -> str:
            if isinstance(d, int):
                return str(d)
            if d not in dims:
                dims[d] = scalar(f"{P}n{len(dims)}", ("dim", d))
            return dims[d]

        bases: list[str] = []
        for a in rk.args:
            if a.kind == "scalar":
                scalar(a.name, ("size", a.node))
                continue
            if a.kind == "dim":
                scalar(a.name, ("dim", a.dim))
                continue
            storage = self.program.storage_of(a.node)
            storage = self.redirects.get(id(storage), storage)
            j = a.name[len(P) + 1:]
            # a flat view's length comes from S: a flat kernel (an optimizer's update of each parameter) is then
            # the same text, one function, whatever the shape it runs over
            dims_txt = [scalar(f"{P}c{j}", ("count", a.node))] if a.kind == "flat" else \
                [dim(d) for d in a.node.shape] or ["1"]
            shape = "(" + ", ".join(dims_txt) + ",)"
            if self.ext_of.get(id(storage)) in self.packed:
                base = f"arena_{a.node.dtype}"
                if base not in bases:
                    bases.append(base)
                address = scalar(f"{P}p{j}", ("address", storage))
                views.append(f"    {a.name} = address_view({base}, {address}, {shape})")
            elif id(storage) in self.ext_of:
                externals.append((f"{P}x{j}", f"e{self.ext_of[id(storage)]}"))
                views.append(f"    {a.name} = {P}x{j}.reshape({shape})")
            else:
                base = f"arena_{a.node.dtype}"
                if base not in bases:
                    bases.append(base)
                offset = scalar(f"{P}o{j}", ("index", storage, _itemsize(a.node.dtype)))
                views.append(f"    {a.name} = arena_view({base}, {offset}, {shape})")
        params = bases + ["S", "at"] + [p for p, _ in externals]
        text = rk.with_prologue(", ".join(params).replace(P, ""), reads + views)
        name = "k_" + hashlib.sha1(_COMMENT.sub("", text).encode()).hexdigest()[:10]
        return name, text.replace("FUNC_NAME", name), bases + [e for _, e in externals], keys

    def block(self, keys: list[tuple]) -> int:
        """Where a called kernel's scalars start in S: one run of slots per call, in the kernel's order."""
        at = len(self.slots)
        self.slots.extend(keys)
        return at

    def arena(self, dtype: str, w: Writer, names: dict) -> str:
        """The outer function's view of the whole arena as dtype (buffers are views into it; offsets are
        aligned)."""
        base = f"arena_{dtype}"
        if base not in names:
            names[base] = base
            w.lines.insert(0, f"    {base} = arena.view({NP_DTYPE[dtype]})")
        return base

    def render(self, seg: Segment, last: bool) -> str:
        """The segment's outer function; a long one calls parts of it, each an outer function of its own."""
        chunks = _chunks(seg.kernels)
        args = tuple(["arena", "S"] + [f"e{i}" for i in self.direct])
        params = ", ".join(args)
        self.functions[ModuleFunction(seg.func, args, 2)] = None
        if len(chunks) == 1:
            return self._function(seg.func, params, seg.kernels, last)
        for k in range(len(chunks)):
            self.functions[ModuleFunction(f"{seg.func}_part{k}", args, 1)] = None
        parts = [self._function(f"{seg.func}_part{k}", params, chunk, False) for k, chunk in enumerate(chunks)]
        calls = [f"call_kernel({seg.func}_part{k}, {params})" for k in range(len(chunks))]
        return "\n\n\n".join(parts + [self._function(seg.func, params, [], last, calls)])

    def _function(self, name: str, params: str, kernels: list, last: bool, calls: list[str] = ()) -> str:
        """An outer function running `kernels` in order (after `calls`), then the write-back if `last`."""
        w = Writer()
        for line in calls:
            w(line)
        names: dict = {}
        parallel = False
        for rk in kernels:
            if not rk.inline:
                bases = [self.arena(v[len("arena_"):], w, names) for v in rk.call_arrays if v.startswith("arena_")]
                externals = [v for v in rk.call_arrays if not v.startswith("arena_")]
                at = self.block(rk.call_slots)
                self.functions[ModuleFunction(rk.name, tuple(bases + ["S", "at"] + externals), 0)] = None
                # not inlined by LLVM (a copy per layer), and `at` typed as an int64 (one compilation for all)
                w(f"call_kernel({', '.join([rk.name] + bases + ['S', str(at)] + externals)})  "
                  f"# {source_text.comment(f'{rk.kernel.name}: {rk.comment}')}")
                continue
            args = []
            for a in rk.args:
                if a.kind in ("array", "flat"):
                    args.append(self.view(a.node, a.kind, w, names))
                elif a.kind == "scalar":
                    args.append(self.slot(("size", a.node)))
                else:
                    args.append(self.dim(a.dim))
            w.lines.extend(rk.inline_lines(f"{rk.kernel.name}_", args))
            parallel = parallel or rk.parallel
        if last:
            for key, node in self.program.updates:
                storage = self.program.storage_of(node)
                if id(storage) in self.ext_of or id(storage) in self.redirects:
                    continue  # written in place by its kernel, or copied by the backend in Python
                param = next(p for p in self.program.graph.nodes if p.op == "param" and p.attr("name") == key)
                if self.ext_of[id(param)] in self.packed:
                    dst = self.view(param, "flat", w, names)
                else:
                    dst = f"e{self.ext_of[id(param)]}.reshape({self.numel(param)})"
                src = self.view(node, "flat", w, names)
                w(f"copy_flat({dst}, {src})  # {source_text.comment(f'update {key}')}")
        body = w.text() or "    pass"
        deco = "@njit(**JIT_PARALLEL)" if parallel else "@njit(**JIT)"
        return f"{deco}\ndef {name}({params}):\n{self.docstring()}\n{body}"

    def docstring(self) -> str:
        """What each argument of an outer function holds."""
        def what(n):
            if n.op in ("input", "param"):
                return f"{n.op} {n.attr('name')!r}"
            return "constant" if n.op == "const" else f"output %{number(n)} {n.op}"
        parts = [f"e{i}: {what(n)}" for i, n in enumerate(self.externals) if i not in self.packed]
        lines = ["arena: every intermediate value; S: offsets, symbol values"
                 + (f" and the addresses of {len(self.addressed)} parameters" if self.addressed else "")
                 + " for this binding"]
        while parts:
            lines.append(", ".join(parts[:4]))
            parts = parts[4:]
        return source_text.docstring(lines)


# Lines above which a segment's outer function is split into parts. numba's compile time grows faster than a
# function's length: ResNet-18's training step, 114 kernels inlined into one function of about 5000 lines,
# spent 95 s there. Parts of about 300 lines compiled as fast as parts of 600 in one process, and parts
# are what helper processes compile side by side (runtime/compile_workers.py).
PART_LINES = 300


def _chunks(kernels: list) -> list[list]:
    """The segment's kernels in runs of about PART_LINES lines of the outer function each: an inlined kernel's
    lines and, per argument, its binding and (at most) a view; a call is one line."""
    chunks, size = [[]], 0
    for rk in kernels:
        n = len(rk.lines) + 2 * len(rk.args) if rk.inline else 1
        if chunks[-1] and size + n > PART_LINES:
            chunks.append([])
            size = 0
        chunks[-1].append(rk)
        size += n
    return chunks


def _itemsize(dtype: str) -> int:
    return {"float32": 4, "float64": 8, "int32": 4, "int64": 8, "bool": 1}[dtype]
