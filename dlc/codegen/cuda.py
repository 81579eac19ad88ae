"""Renders a Program's kernels as CUDA C: shape-generic __global__ functions plus their launch rules.

Each Kernel of the Program (see dlc/program.py) becomes one extern "C"
__global__ function (a matmul becomes one per GEMM tile configuration).
Shapes are never baked in: every symbolic dim ("B", "B*T") is a kernel
argument `s_<name>`, so a new batch size is a new launch configuration, not a
new compile. Values are rendered per output index by walking the kernel's
nodes backwards from its outputs: an elementwise op is its OpDef.scalar
template, an index remap (transpose, slice, pad, concat, ...) rewrites the
index, and a value from outside the kernel is a load from its buffer.

The same text runs on the CPU under dlc.codegen.c_emulator for the tests.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DlcError
from ..graph import Node, _factors, shape_eval
from ..ops import OPS
from ..ops.collective import HOST_CALLS
from ..program import Kernel, Program
from . import kernel_ir as ir
from . import source_text
from .lower import LoweringError, NotFlat, Values
from .math_functions import cuda_name
from .printer import CPrinter, Dialect, scalar_text

KERNEL_DIR = Path(__file__).resolve().parents[1] / "kernels" / "cuda"

C_TYPE = {"float32": "float", "float64": "double", "int32": "int", "int64": "long long", "bool": "bool"}
# how a scalar argument crosses to the device (names shared with the emulator and the runtime)
ARG_KIND = {"float32": "f32", "float64": "f64", "int32": "i32", "int64": "i64", "bool": "i32"}

REDUCE_FUNCTORS = {"sum": "DlcSum", "prod": "DlcProd", "max": "DlcMax", "min": "DlcMin"}

BLOCK = 256  # threads per block of elementwise kernels
GEMM_CONFIGS = {"s": (32, 32, 16, 2, 2), "m": (64, 64, 8, 4, 4), "l": (128, 128, 8, 8, 8)}  # = gemm.cu
GEMM_LAUNCH_BOUNDS = {"l": "__launch_bounds__(256, 2)"}  # = gemm.cu: 128 registers, two blocks an SM


class CudaUnsupportedError(DlcError):
    """A kernel the CUDA renderer cannot produce: it names the op and the user's line."""


def unsupported(node: Node, why: str = "") -> CudaUnsupportedError:
    where = f" (from {source_text.comment(node.loc)})" if node.loc else ""  # one plain line, whatever the loc
    return CudaUnsupportedError(f"the CUDA backend cannot render op {node.op!r}{where}: "
                                f"{why or 'no CUDA lowering for it'}")


# ----------------------------------------------------------------------------
# kernel parameters and the rendered result


@dataclass
class Param:
    """One kernel argument.

    kind "ptr": the buffer of `node` (the runtime follows Program.storage_of);
    "sym": the value of a symbolic dim; "size": the runtime value of a "size"
    node; "status": the program's int32 error word (an index out of range);
    "workspace": scratch memory of Launch.workspace bytes; "chunks"/"phase":
    scalars each Launch sets (split reductions).
    """

    kind: str
    name: str
    ctype: str
    node: Node | None = None
    symbol: str | None = None

    @property
    def arg_kind(self) -> str:
        if self.kind in ("ptr", "status", "workspace"):
            return "ptr"
        if self.kind in ("sym", "chunks"):
            return "i64"
        if self.kind == "phase":
            return "i32"
        return ARG_KIND[self.node.dtype]


@dataclass
class Launch:
    """One kernel launch: which entry, its grid and block, scalar arguments it sets, workspace bytes it needs."""

    entry: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    scalars: dict = field(default_factory=dict)
    workspace: int = 0


@dataclass
class RenderedKernel:
    """A kernel's CUDA source, its parameters, and how to launch it for given symbol bindings."""

    kernel: Kernel
    source: str
    params: list[Param]
    entries: list[str]
    plan_launch: Callable[[dict, int], Launch | list[Launch]]
    zero_outputs: bool = False  # scatter kernels accumulate into zeroed outputs

    def signatures(self):
        from .c_emulator import KernelSignature

        params = tuple((p.ctype, p.arg_kind) for p in self.params)
        return [KernelSignature(e, params) for e in self.entries]


@dataclass
class CudaModule:
    """Every kernel of a Program in one translation unit."""

    source: str
    kernels: list[RenderedKernel]
    headers: list[str] = field(default_factory=list)

    def signatures(self):
        return [s for k in self.kernels for s in k.signatures()]


# ----------------------------------------------------------------------------
# C text helpers


def sym_name(s: str) -> str:
    return "s_" + s


def dim_c(d) -> str:
    """A dim as a C expression over the symbol arguments."""
    if isinstance(d, int):
        return str(d)
    coef, syms = _factors(d)
    parts = ([str(coef)] if coef != 1 else []) + [sym_name(s) for s in syms]
    return parts[0] if len(parts) == 1 else "(" + " * ".join(parts) + ")"


def numel_c(shape) -> str:
    dims = [dim_c(d) for d in shape if d != 1]
    return " * ".join(f"(i64){d}" if i == 0 else d for i, d in enumerate(dims)) if dims else "(i64)1"


def symbols_of_shapes(shapes) -> set[str]:
    out = set()
    for shape in shapes:
        for d in shape:
            if isinstance(d, str):
                out.update(_factors(d)[1])
    return out


def literal(value, dtype: str) -> str:
    """A Python/numpy scalar as a C literal of the given dtype; only numbers are accepted, never a string."""
    value = source_text.checked_number(value)
    if dtype == "bool":
        return "true" if bool(value) else "false"
    if dtype in ("int32", "int64"):
        v = int(value)
        return f"{v}LL" if dtype == "int64" else str(v)
    v = float(value)
    if math.isnan(v):
        return f"(({C_TYPE[dtype]})NAN)"
    if math.isinf(v):
        return f"(({C_TYPE[dtype]}){'-' if v < 0 else ''}INFINITY)"
    text = str(np.float32(v)) if dtype == "float32" else repr(v)  # shortest text that round-trips
    if "e" not in text and "." not in text:
        text += ".0"
    return text + ("f" if dtype == "float32" else "")


def _cast(dtype: str, operand: str) -> str:
    return f"({C_TYPE[dtype]})({operand})"


# how the kernel IR is spelled in C (dlc/codegen/printer.py)
DIALECT = Dialect(index=ir.C, literal=literal, function=lambda name, dtype: cuda_name(name), cast=_cast,
                  operand=lambda text: f"({text})", template=lambda text: text)


def render_scalar(node: Node, operands: list[str]) -> str:
    """The node's OpDef.scalar template as a C expression over the operand expressions."""
    try:
        return scalar_text(node, operands, DIALECT)
    except LoweringError as e:
        raise unsupported(e.node, e.why) from None


class Body:
    """Lines of a kernel body; its scopes are also the scopes of the values computed in them (CSE per index)."""

    def __init__(self, depth: int = 1):
        self.lines: list[str] = []
        self.depth = depth
        self.counter = 0
        self.values: Values | None = None   # the ValueRenderer's lowering, whose scopes follow ours

    def emit(self, line: str) -> None:
        self.lines.append("  " * self.depth + line)

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    @contextmanager
    def scope(self, header: str | None = None):
        if header is not None:
            self.emit(header + " {")
            self.depth += 1
        if self.values is not None:
            self.values.frames.append({})
        try:
            yield
        finally:
            if self.values is not None:
                self.values.frames.pop()
            if header is not None:
                self.depth -= 1
                self.emit("}")

    def text(self) -> str:
        return "\n".join(self.lines)


# ----------------------------------------------------------------------------
# values at an index


class ValueRenderer:
    """Renders the value of any node of a kernel at a C multi-index (one expression per dim)."""

    def __init__(self, kernel: Kernel, program: Program, body: Body, flat: bool = False):
        self.kernel = kernel
        self.program = program
        self.body = body
        self.members = {id(n) for n in kernel.nodes}
        self.params: list[Param] = []
        self._param_of: dict[int, Param] = {}
        self.symbols: set[str] = set()
        # The memory plan may give an elementwise kernel's output the buffer of an input it reads at the
        # same index (in place), so there pointers may alias and are not declared __restrict__.
        self.restrict = kernel.kind not in ("elementwise", "injective")
        self.vals = Values(kernel, lambda kind: self.body.fresh("v" if kind == "value" else "g"), flat=flat)
        body.values = self.vals
        self.printer = CPrinter(DIALECT, lambda n, flat: self.buffer(n), self.scalar_param, self.dim, C_TYPE,
                                self.linear, REDUCE_FUNCTORS)

    # parameters ------------------------------------------------------------

    def buffer(self, node: Node, const: bool = True) -> str:
        if id(node) not in self._param_of:
            ctype = ("const " if const else "") + C_TYPE[node.dtype] + ("* __restrict__" if self.restrict else "*")
            p = Param("ptr", f"{'in' if const else 'out'}{len(self.params)}", ctype, node)
            self._param_of[id(node)] = p
            self.params.append(p)
        self.use_shape(node.shape)
        return self._param_of[id(node)].name

    def scalar_param(self, node: Node) -> str:
        if id(node) not in self._param_of:
            p = Param("size", f"size{len(self.params)}", C_TYPE[node.dtype], node)
            self._param_of[id(node)] = p
            self.params.append(p)
        return self._param_of[id(node)].name

    def status_param(self) -> str:
        if "status" not in self._param_of:
            p = Param("status", "status", "int*")
            self._param_of["status"] = p
            self.params.append(p)
        return "status"

    def use_shape(self, shape) -> None:
        self.symbols |= symbols_of_shapes([shape])

    def final_params(self) -> list[Param]:
        """Buffers and scalars in first-use order, then the symbols, sorted."""
        return self.params + [Param("sym", sym_name(s), "i64", symbol=s) for s in sorted(self.symbols)]

    # index arithmetic ----------------------------------------------------

    def linear(self, idx, shape) -> str:
        """Row-major offset of a multi-index (Horner form, unit dims skipped)."""
        self.use_shape(shape)
        return ir.print_index(ir.linear(tuple(_index(i) for i in idx), shape), ir.C, self.dim)

    def dim(self, d) -> str:
        self.use_shape((d,))
        return dim_c(d)

    def unravel(self, flat: str, shape, prefix: str = "i") -> tuple[str, ...]:
        """Emit the multi-index of a flat row-major offset; returns its per-dim names."""
        self.use_shape(shape)
        names: list[str] = [""] * len(shape)
        rest = flat
        for axis in range(len(shape) - 1, -1, -1):
            d = shape[axis]
            if d == 1:
                names[axis] = "0"
                continue
            name = self.body.fresh(prefix)
            if axis == 0 or all(x == 1 for x in shape[:axis]):
                self.body.emit(f"[[maybe_unused]] const i64 {name} = {rest};")
                for a in range(axis):
                    names[a] = "0"
                names[axis] = name
                break
            self.body.emit(f"[[maybe_unused]] const i64 {name} = {rest} % {dim_c(d)};")
            nxt = self.body.fresh("q")
            self.body.emit(f"const i64 {nxt} = {rest} / {dim_c(d)};")
            names[axis] = name
            rest = nxt
        return tuple(names)

    @staticmethod
    def broadcast_index(idx, out_shape, in_shape) -> tuple[str, ...]:
        """The index into an operand broadcast up to out_shape (numpy rules)."""
        return tuple(ir.print_index(e, ir.C, dim_c)
                     for e in ir.broadcast_index(tuple(_index(i) for i in idx), out_shape, in_shape))

    # values ----------------------------------------------------------------

    def lower(self, node: Node, idx) -> ir.Value:
        """node's value at idx (texts or index expressions) as kernel IR; its statements are emitted here."""
        try:
            v = self.vals.value(node, tuple(_index(i) for i in idx))
        except LoweringError as e:
            raise unsupported(e.node, e.why) from None
        self.emit(self.vals.take())
        return v

    def value(self, node: Node, idx) -> str:
        """node's value at idx as text."""
        return self.printer.value(self.lower(node, idx))

    def emit(self, stmts: list) -> None:
        self.body.lines += self.printer.lines(stmts, self.body.depth)

    def remember(self, node: Node, idx, name: str) -> None:
        self.vals.remember(node, tuple(_index(i) for i in idx), ir.Ref(name))

    def loads_at(self) -> list[tuple[Node, tuple]]:
        """Every buffer element the lowering read, with its index."""
        return [(ld.node, ld.index) for ld in self.vals.loads]


def _index(i) -> ir.Expr:
    return ir.as_index(i) if isinstance(i, str) else i


# ----------------------------------------------------------------------------
# kernel renderers


def _signature(name: str, params: list[Param], bounds: str = "") -> str:
    # __launch_bounds__ only where measured (GEMM_LAUNCH_BOUNDS, the resource table in docs/cuda.md):
    # every other kernel fits its block without it (no spills; see tests/test_cuda_codegen.py).
    args = ",\n    ".join(f"{p.ctype} {p.name}" for p in params)
    return f'extern "C" __global__ void {bounds + " " if bounds else ""}{name}(\n    {args})'


def _comment(kernel: Kernel) -> str:
    """The kernel's comment: its ops and the user's lines (escaped: locations may come from an artifact)."""
    lines = [f"// {source_text.comment(f'{kernel.name} [{kernel.kind}]: ' + ' -> '.join(n.op for n in kernel.nodes))}"]
    lines += [f"//   from {source_text.comment(loc)}" for loc in _source_lines(kernel)]
    return "\n".join(lines)


def _source_lines(kernel: Kernel) -> list[str]:
    """file:line (and the module scope, when known) of each distinct user line the kernel's nodes came from."""
    out = []
    for n in kernel.nodes:
        if n.loc is not None:
            scope = getattr(n.loc, "scope", "")
            text = f"{source_text.file_name(n.loc.file)}:{int(n.loc.line)}" + (f" in {scope}" if scope else "")
            if text not in out:
                out.append(text)
    return out


def _grid_for(n: int, per_block: int, max_blocks: int) -> int:
    return max(1, min(-(-n // per_block), max_blocks))


def render_elementwise(kernel: Kernel, program: Program) -> RenderedKernel:
    """One thread per output element in a grid-stride loop; a float4 path when every access is contiguous."""
    outs = kernel.outputs
    shape = outs[0].shape
    for o in outs:
        if tuple(o.shape) != tuple(shape):
            raise unsupported(o, f"outputs of one elementwise kernel must share a shape: {o.shape} vs {shape}")
    # every buffer read at the thread's own offset i (or a scalar's one element) when it can be, else at the
    # output's multi-index unravelled from i
    for flat in (True, False):
        scalar = Body(depth=2)
        vr = ValueRenderer(kernel, program, scalar, flat)
        out_names = [vr.buffer(o, const=False) for o in outs]
        idx = ("i",) if flat else vr.unravel("i", shape)
        try:
            values = [vr.lower(o, idx) for o in outs]  # all before any store: an output may be an input's buffer
        except NotFlat:
            continue
        break
    vr.emit([ir.Store(o, (ir.Var("i"),), v, flat=True) for o, v in zip(outs, values)])

    vector = _vector_body(kernel, program, vr, outs, out_names, shape, idx)
    name = kernel.name
    n = numel_c(shape)
    lines = [_comment(kernel), _signature(name, vr.final_params()) + " {", f"  const i64 n = {n};",
             "  const i64 stride = (i64)gridDim.x * blockDim.x;"]
    if vector:
        lines += ["  if (n % 4 == 0) {  // 16-byte loads and stores (buffers are 256-byte aligned)",
                  "    for (i64 i4 = (i64)blockIdx.x * blockDim.x + threadIdx.x; i4 < n / 4; i4 += stride) {",
                  vector, "    }", "    return;", "  }"]
    lines += ["  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {", scalar.text(),
              "  }", "}"]
    shape_ = tuple(shape)

    def plan(env, max_blocks):
        count = int(np.prod(shape_eval(shape_, env), dtype=np.int64))
        per = BLOCK * (4 if vector and count % 4 == 0 else 1)
        return Launch(name, (_grid_for(count, per, max_blocks), 1, 1), (BLOCK, 1, 1))

    return RenderedKernel(kernel, "\n".join(lines), vr.final_params(), [name], plan)


def _vector_body(kernel, program, vr: ValueRenderer, outs, out_names, shape, idx) -> str | None:
    """The float4 loop body, or None unless every output is float32 and every load reads the output's index."""
    if any(o.dtype != "float32" for o in outs):
        return None
    here = tuple(_index(i) for i in idx)
    for node, at in vr.loads_at():
        if node.dtype != "float32" or tuple(node.shape) != tuple(shape) or at != here:
            return None
    buffers = []
    for node, _ in vr.loads_at():
        if all(b is not node for b in buffers):
            buffers.append(node)
    body = Body(depth=3)
    lanes = ValueRenderer(kernel, program, body, vr.vals.flat)
    lanes.params, lanes._param_of, lanes.symbols = vr.params, vr._param_of, vr.symbols
    regs = {}
    for b in buffers:
        r = body.fresh("x")
        body.emit(f"const float4 {r} = reinterpret_cast<const float4*>({vr.buffer(b)})[i4];")
        regs[id(b)] = r
    results = {id(o): [] for o in outs}
    for c in "xyzw":
        lanes.vals.substitute = {k: ir.Ref(f"{r}.{c}") for k, r in regs.items()}
        with body.scope():
            for o in outs:
                v = body.fresh("y")
                body.emit(f"const float {v} = {lanes.value(o, idx)};")
                results[id(o)].append(v)
    for o, name in zip(outs, out_names):
        body.emit(f"reinterpret_cast<float4*>({name})[i4] = make_float4({', '.join(results[id(o)])});")
    return body.text()


SPLIT_MIN_REDUCED = 1 << 14  # a reduction this long over few outputs is split across blocks
SPLIT_CHUNK = 1 << 12        # reduced elements per block in the first pass (at least)


def render_reduce(kernel: Kernel, program: Program) -> RenderedKernel:
    """One block per output element (grid-stride over outputs); threads stride over the reduced elements.

    Rows of at most 32 elements (softmax over 10 classes) get one warp each,
    8 rows a block, and reduce with shuffles alone.

    A long reduction over few outputs (a loss over a big batch) would leave
    most SMs idle, so it runs in two passes of the same kernel: `phase` 1
    has `chunks` blocks per output each reduce one slice into a workspace,
    phase 2 combines the partials and runs the epilogue; phase 0 is the
    single pass.
    """
    anchor = kernel.anchor
    x = anchor.inputs[0]
    axes = tuple(anchor.attr("axes"))
    keepdims = anchor.attr("keepdims")
    kept = [d for i, d in enumerate(x.shape) if i not in axes]
    reduced = [x.shape[i] for i in axes]
    body = Body(depth=2)
    vr = ValueRenderer(kernel, program, body)
    out_names = [vr.buffer(o, const=False) for o in kernel.outputs]
    ctype = C_TYPE[x.dtype]
    arg = anchor.op in ("argmax", "argmin")
    is_max = str(anchor.op == "argmax").lower()

    kept_idx = vr.unravel("o", kept, "k")
    if arg:
        body.emit(f"{ctype} acc = dlc_{'lowest' if anchor.op == 'argmax' else 'highest'}<{ctype}>(); i64 at = -1;")
    else:
        body.emit(f"{ctype} acc = {REDUCE_FUNCTORS[anchor.op]}::id<{ctype}>();")
    with body.scope("if (phase != 2)"):
        body.emit("const i64 span = (R + chunks - 1) / chunks, r0 = (i64)blockIdx.y * span;")
        body.emit("const i64 r1 = r0 + span < R ? r0 + span : R;")
        with body.scope("for (i64 r = r0 + threadIdx.x; r < r1; r += blockDim.x)"):
            red_idx = vr.unravel("r", reduced, "j")
            full, ki, ri = [], iter(kept_idx), iter(red_idx)
            for i in range(x.ndim):
                full.append(next(ri) if i in axes else next(ki))
            v = vr.lower(x, full)
            vr.emit([ir.ArgBest("acc", "at", v, ir.Var("r"), anchor) if arg else
                     ir.Accumulate("acc", anchor.op, v, anchor)])
    with body.scope("else"):
        with body.scope("for (i64 c = threadIdx.x; c < chunks; c += blockDim.x)"):
            body.emit(f"const {ctype} v = ws_acc[o * chunks + c];")
            if arg:
                body.emit("const i64 i = ws_at[o * chunks + c];")
                body.emit(f"if (i >= 0 && (at < 0 || dlc_arg_better<{is_max}>(v, i, acc, at))) {{ acc = v; at = i; }}")
            else:
                body.emit(f"acc = {REDUCE_FUNCTORS[anchor.op]}::f(acc, v);")
    if arg:
        body.emit(f"dlc_block_arg_reduce<{is_max}>(acc, at);")
    else:
        body.emit(f"acc = dlc_block_reduce<{REDUCE_FUNCTORS[anchor.op]}>(acc);")
    out_idx = []
    ki = iter(kept_idx)
    for i in range(x.ndim):
        if i in axes:
            if keepdims:
                out_idx.append("0")
        else:
            out_idx.append(next(ki))
    out_idx = tuple(out_idx)
    with body.scope("if (threadIdx.x == 0 && phase == 1)"):
        body.emit("ws_acc[o * chunks + blockIdx.y] = acc;")
        if arg:
            body.emit("ws_at[o * chunks + blockIdx.y] = at;")
    with body.scope("else if (threadIdx.x == 0)"):
        _remember_anchor(vr, anchor, out_idx, "at" if arg else "acc")
        for o, name in zip(kernel.outputs, out_names):
            body.emit(f"{name}[o] = {vr.value(o, out_idx)};")
    # the workspace of a split pass: argmax/argmin indices first (8-byte aligned), then the partial values
    if arg:
        workspace_layout = f"  i64* const ws_at = (i64*)ws; {ctype}* const ws_acc = ({ctype}*)(ws_at + n_out * chunks);"
    else:
        workspace_layout = f"  {ctype}* const ws_acc = ({ctype}*)ws;"
    name = kernel.name
    params = vr.final_params() + [Param("workspace", "ws", "void*"), Param("chunks", "chunks", "i64"),
                                  Param("phase", "phase", "int")]
    lines = [_comment(kernel), _signature(name, params) + " {",
             f"  const i64 n_out = {numel_c(kept)};", f"  const i64 R = {numel_c(reduced)};",
             workspace_layout,
             "  // one row per block, or per warp (blockDim.y rows a block) when the rows are short",
             "  for (i64 o = (i64)blockIdx.x * blockDim.y + threadIdx.y; o < n_out;"
             " o += (i64)gridDim.x * blockDim.y) {",
             body.text(), "  }", "}"]
    kept_, reduced_ = tuple(kept), tuple(reduced)
    item = np.dtype(x.dtype).itemsize + (8 if arg else 0)

    def plan(env, max_blocks):
        n_out = int(np.prod(shape_eval(kept_, env), dtype=np.int64))
        r = int(np.prod(shape_eval(reduced_, env), dtype=np.int64))
        grid = max(1, min(n_out, 65535))
        chunks = reduction_chunks(n_out, r, max_blocks)
        if chunks == 1 and r <= 32:
            rows = BLOCK // 32
            return [Launch(name, (max(1, min(-(-n_out // rows), 65535)), 1, 1), (32, rows, 1),
                           {"chunks": 1, "phase": 0})]
        if chunks == 1:
            threads = min(BLOCK, max(64, 1 << max(0, (r - 1).bit_length())))
            return [Launch(name, (grid, 1, 1), (threads, 1, 1), {"chunks": 1, "phase": 0})]
        return [Launch(name, (grid, chunks, 1), (BLOCK, 1, 1), {"chunks": chunks, "phase": 1},
                       workspace=n_out * chunks * item),
                Launch(name, (grid, 1, 1), (min(BLOCK, max(64, 1 << (chunks - 1).bit_length())), 1, 1),
                       {"chunks": chunks, "phase": 2}, workspace=n_out * chunks * item)]

    return RenderedKernel(kernel, "\n".join(lines), params, [name], plan)


def reduction_chunks(n_out: int, r: int, max_blocks: int) -> int:
    """Blocks per output of a split reduction: 1 (one pass) unless few outputs reduce many elements each."""
    if r < SPLIT_MIN_REDUCED or n_out >= max_blocks // 2:
        return 1
    return int(max(2, min(r // SPLIT_CHUNK, max_blocks // max(n_out, 1), 65535)))


def render_matmul(kernel: Kernel, program: Program, tiles=tuple(GEMM_CONFIGS)) -> RenderedKernel:
    """The tiled GEMM of gemm.cu with the kernel's epilogue fused; one entry per tile configuration."""
    anchor = kernel.anchor
    if anchor.op != "matmul":
        raise unsupported(anchor)
    body = Body(depth=3)
    vr = ValueRenderer(kernel, program, body)
    operands = []
    for operand in anchor.inputs:
        transposed = False
        src = operand
        if id(operand) in vr.members:
            perm = tuple(operand.attr("perm") or ())
            nd = operand.ndim
            if operand.op != "transpose" or perm != tuple(range(nd - 2)) + (nd - 1, nd - 2):
                raise unsupported(operand, "only a swap of the last two axes may feed a matmul inside its kernel")
            transposed, src = True, operand.inputs[0]
        operands.append((src, transposed))
    (a, ta), (b, tb) = operands
    dtype = anchor.dtype
    ctype = C_TYPE[dtype]
    out_names = [vr.buffer(o, const=False) for o in kernel.outputs]
    pa, pb = vr.buffer(a), vr.buffer(b)
    M, K = anchor.inputs[0].shape[-2], anchor.inputs[0].shape[-1]
    N = anchor.inputs[1].shape[-1]
    batch = anchor.shape[:-2]
    vr.use_shape(anchor.shape)

    # grid z strides over the batch (a grid holds at most 65535 z blocks)
    pre = Body(depth=2)
    vr.body, pre.values = pre, vr.vals
    bidx = vr.unravel("bz", batch, "b")
    a_batch = vr.broadcast_index(bidx, batch, a.shape[:-2])
    b_batch = vr.broadcast_index(bidx, batch, b.shape[:-2])
    a_off = vr.linear(a_batch, a.shape[:-2]) if a_batch else "0"
    b_off = vr.linear(b_batch, b.shape[:-2]) if b_batch else "0"
    c_off = vr.linear(bidx, batch) if bidx else "0"
    pre.emit(f"const i64 M = {dim_c(M)}, N = {dim_c(N)}, K = {dim_c(K)};")
    pre.emit(f"DlcDenseA<{str(ta).lower()}, {ctype}> load_a{{{pa} + ({a_off}) * M * K, {'M' if ta else 'K'}}};")
    pre.emit(f"DlcDenseB<{str(tb).lower()}, {ctype}> load_b{{{pb} + ({b_off}) * K * N, {'K' if tb else 'N'}}};")
    pre.emit(f"const i64 c_base = ({c_off}) * M * N;")

    vr.body, body.values = body, vr.vals
    out_idx = tuple(bidx) + ("i", "j")
    _remember_anchor(vr, anchor, out_idx, "acc")
    for o, name in zip(kernel.outputs, out_names):
        body.emit(f"{name}[c_base + i * N + j] = {vr.value(o, out_idx)};")
    params = vr.final_params()
    entries, chunks = [], [_comment(kernel)]
    for tag in tiles:
        bm, bn, bk, tm, tn = GEMM_CONFIGS[tag]
        entry = f"{kernel.name}_{tag}"
        entries.append(entry)
        chunks += [_signature(entry, params, GEMM_LAUNCH_BOUNDS.get(tag, "")) + " {",
                   f"  const i64 n_batch = {numel_c(batch)};",
                   "  for (i64 bz = blockIdx.z; bz < n_batch; bz += gridDim.z) {", pre.text(),
                   f"    dlc_gemm_mainloop<{bm}, {bn}, {bk}, {tm}, {tn}, {ctype}>(M, N, K, load_a, load_b,",
                   f"        [&](i64 i, i64 j, {ctype} acc) {{", body.text(), "        });", "  }", "}"]
    mnk = (M, N, K)
    batch_ = tuple(batch)

    def plan(env, max_blocks):
        m, n, _ = (int(v) for v in shape_eval(mnk, env))
        nb = int(np.prod(shape_eval(batch_, env), dtype=np.int64))
        tag = choose_gemm_tile(m, n, nb, max_blocks, tiles)
        bm, bn, _, tm, tn = GEMM_CONFIGS[tag]
        return Launch(f"{kernel.name}_{tag}", gemm_grid(tag, m, n, max(1, min(nb, 65535))),
                      ((bm // tm) * (bn // tn), 1, 1))

    return RenderedKernel(kernel, "\n".join(chunks), params, entries, plan)


def gemm_grid(tag: str, m: int, n: int, z: int = 1) -> tuple[int, int, int]:
    """The grid of dlc_gemm_mainloop: every BM x BN tile of C along x (up to 2**31 - 1 tiles), z as given."""
    bm, bn = GEMM_CONFIGS[tag][:2]
    return (max(1, -(-m // bm) * -(-n // bn)), 1, z)


def choose_gemm_tile(m: int, n: int, batch: int, max_blocks: int, tiles=tuple(GEMM_CONFIGS)) -> str:
    """The largest compiled tile that still gives every SM work (max_blocks ~ a few blocks per SM)."""
    by_size = sorted(tiles, key=lambda t: GEMM_CONFIGS[t][0] * GEMM_CONFIGS[t][1], reverse=True)
    for tag in by_size[:-1]:
        bm, bn = GEMM_CONFIGS[tag][:2]
        if bm > 2 * m or bn > 2 * n:  # most of the tile would compute padding (a conv with 6 output channels)
            continue
        if -(-m // bm) * -(-n // bn) * batch >= max_blocks // 4:
            return tag
    return by_size[-1]


def render_take(kernel: Kernel, program: Program) -> RenderedKernel:
    """take: a gather over the output; take_grad: a scatter-add with atomics into a zeroed output."""
    node = kernel.anchor
    body = Body(depth=2)
    vr = ValueRenderer(kernel, program, body)
    ax = node.attr("axis")
    status = vr.status_param()
    if node.op == "take":
        x, ind = node.inputs
        out = vr.buffer(node, const=False)
        space = node.shape
        idx = vr.unravel("i", space)
        ii = idx[ax:ax + ind.ndim]
        src_idx, dim = list(idx[:ax]) + ["t"] + list(idx[ax + ind.ndim:]), x.shape[ax]
    else:
        g, ind = node.inputs
        out = vr.buffer(node, const=False)
        space = g.shape
        idx = vr.unravel("i", space)
        ii = idx[ax:ax + ind.ndim]
        dst_idx, dim = list(idx[:ax]) + ["t"] + list(idx[ax + ind.ndim:]), node.shape[ax]
    body.emit(f"const i64 t0 = (i64){vr.value(ind, tuple(ii))};")
    body.emit(f"const i64 t = t0 < 0 ? t0 + {dim_c(dim)} : t0;  // numpy's rule: -n..-1 count from the end")
    with body.scope(f"if (t < 0 || t >= {dim_c(dim)})"):
        _report_index(body, status, program, kernel, "t0")
        body.emit("continue;")
    if node.op == "take":
        body.emit(f"{out}[i] = {vr.value(x, tuple(src_idx))};")
    else:
        body.emit(f"atomicAdd(&{out}[{vr.linear(dst_idx, node.shape)}], {vr.value(g, idx)});")
    name = kernel.name
    lines = [_comment(kernel), _signature(name, vr.final_params()) + " {", f"  const i64 n = {numel_c(space)};",
             "  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {",
             body.text(), "  }", "}"]
    space_ = tuple(space)

    def plan(env, max_blocks):
        count = int(np.prod(shape_eval(space_, env), dtype=np.int64))
        return Launch(name, (_grid_for(count, BLOCK, max_blocks), 1, 1), (BLOCK, 1, 1))

    return RenderedKernel(kernel, "\n".join(lines), vr.final_params(), [name], plan,
                          zero_outputs=node.op == "take_grad")


def _report_index(body: Body, status: str, program: Program, kernel: Kernel, value: str) -> None:
    """Record a bad index for the runtime (an IndexRangeError): the first thread to fail writes
    status[0] = 1 + the kernel's position in the program and status[1], status[2] = the value's 32-bit halves."""
    site = program.kernels.index(kernel) + 1
    with body.scope(f"if (atomicAdd(&{status}[3], 1) == 0)"):
        body.emit(f"{status}[0] = {site}; {status}[1] = (int)({value} & 0xffffffff); "
                  f"{status}[2] = (int)({value} >> 32);")


def render_one_hot(kernel: Kernel, program: Program) -> RenderedKernel:
    """one_hot: one thread per output element; a label outside [0, depth) (not ignore_index) is reported."""
    node = kernel.anchor
    (labels,) = node.inputs
    body = Body(depth=2)
    vr = ValueRenderer(kernel, program, body)
    status = vr.status_param()
    out = vr.buffer(node, const=False)
    depth, ignore = int(node.attr("depth")), node.attr("ignore_index")
    idx = vr.unravel("i", node.shape)
    body.emit(f"const i64 t = (i64){vr.value(labels, tuple(idx[:-1]))};")
    keep = f"t != {int(ignore)}LL" if ignore is not None else "true"
    with body.scope(f"if ({keep} && (t < 0 || t >= {depth}))"):
        _report_index(body, status, program, kernel, "t")
        body.emit("continue;")
    body.emit(f"{out}[i] = ({keep} && t == {idx[-1]}) ? 1 : 0;")
    name = kernel.name
    lines = [_comment(kernel), _signature(name, vr.final_params()) + " {", f"  const i64 n = {numel_c(node.shape)};",
             "  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {",
             body.text(), "  }", "}"]
    space = tuple(node.shape)

    def plan(env, max_blocks):
        count = int(np.prod(shape_eval(space, env), dtype=np.int64))
        return Launch(name, (_grid_for(count, BLOCK, max_blocks), 1, 1), (BLOCK, 1, 1))

    return RenderedKernel(kernel, "\n".join(lines), vr.final_params(), [name], plan)


# Run by the runtime, not rendered: a "size" is an argument of the kernels that read it; a scan launches its
# body's kernels once per step (dlc/runtime/cuda.py, ScanRunner); a scan_output copies one of its results; an
# MPI collective is a host call on the values copied to the host (dlc/ops/collective.py).
HOST_OPS = ("size", "scan", "scan_output") + HOST_CALLS
CONV_OPS = {"conv2d": "fwd", "conv2d_grad_input": "dgrad", "conv_transpose2d": "dgrad",
            "conv2d_grad_weight": "wgrad"}
POOL_OPS = ("max_pool2d", "avg_pool2d", "max_pool2d_grad", "avg_pool2d_grad", "adaptive_avg_pool2d",
            "adaptive_avg_pool2d_grad")
RANDOM_OPS = ("random_uniform", "random_normal", "random_bernoulli")


def _remember_anchor(vr: ValueRenderer, anchor: Node, idx, name: str) -> None:
    """The anchor's value at idx is `name`. An epilogue has the anchor's shape, so its operand reads of the anchor
    (kernel_ir.broadcast_index) use idx as it is, size-1 dims included."""
    vr.remember(anchor, idx, name)


def _store_epilogue(vr: ValueRenderer, kernel: Kernel, out_names, out_idx, value: str) -> None:
    """The anchor's value at out_idx is `value`: evaluate the epilogue there and store every output."""
    body = vr.body
    _remember_anchor(vr, kernel.anchor, out_idx, value)
    flat = body.fresh("f")
    body.emit(f"const i64 {flat} = {vr.linear(out_idx, kernel.anchor.shape)};")
    for o, name in zip(kernel.outputs, out_names):
        body.emit(f"{name}[{flat}] = {vr.value(o, tuple(out_idx))};")


def _only_epilogue(kernel: Kernel) -> None:
    """conv, pooling and random kernels take an elementwise epilogue and nothing before the anchor."""
    order = [id(n) for n in kernel.nodes]
    if order.index(id(kernel.anchor)) != 0:
        first = kernel.nodes[0]
        raise unsupported(first, f"it cannot run inside the {kernel.anchor.op} kernel, before the {kernel.anchor.op}")
    for o in kernel.outputs:
        if tuple(o.shape) != tuple(kernel.anchor.shape):
            raise unsupported(o, f"an output of a {kernel.anchor.op} kernel must have the {kernel.anchor.op}'s shape")


def _epilogue_kernel_start(kernel: Kernel, program: Program):
    """What every anchor-plus-epilogue kernel (conv, pooling, random) starts with: (body, values, output names)."""
    _only_epilogue(kernel)
    body = Body(depth=2)
    vr = ValueRenderer(kernel, program, body)
    return body, vr, [vr.buffer(o, const=False) for o in kernel.outputs]


def _conv_geometry(node: Node):
    """(batch dim, C, H, W, Co, Ho, Wo, kh, kw, strides, top/left pads, dilations, groups) of any conv op."""
    a = node.a
    if node.op == "conv2d":
        x, w = node.inputs
        (n, c, h, wd), (co, _, kh, kw), (_, _, ho, wo) = x.shape, w.shape, node.shape
    elif node.op in ("conv2d_grad_input", "conv_transpose2d"):
        gy, w = node.inputs
        (n, co, ho, wo), (_, _, kh, kw), (_, c, h, wd) = gy.shape, w.shape, node.shape
    else:
        x, gy = node.inputs
        (n, c, h, wd), (_, co, ho, wo) = x.shape, gy.shape
        kh, kw = a["kernel"]
    (pt, _), (pl, _) = a["padding"]
    dil = a.get("dilation", (1, 1))
    return n, (c, h, wd, co, ho, wo, kh, kw, a["stride"][0], a["stride"][1], pt, pl, dil[0], dil[1], a["groups"])


def render_conv(kernel: Kernel, program: Program, tiles=tuple(GEMM_CONFIGS)) -> RenderedKernel:
    """conv2d and its gradients as implicit GEMMs (conv.cu) with the kernel's epilogue fused."""
    node = kernel.anchor
    body, vr, out_names = _epilogue_kernel_start(kernel, program)
    mode = CONV_OPS[node.op]
    batch, geo = _conv_geometry(node)
    c, h, wd, co, ho, wo, kh, kw, *_rest, groups = geo
    ctype = C_TYPE[node.dtype]
    if mode == "fwd":
        x, w = node.inputs
        loaders = (f"DlcConvFwdA<{ctype}> load_a{{{vr.buffer(w)}, q, g}};",
                   f"DlcConvFwdB<{ctype}> load_b{{{vr.buffer(x)}, q, g}};")
    elif mode == "dgrad":
        gy, w = node.inputs
        loaders = (f"DlcConvDgradA<{ctype}> load_a{{{vr.buffer(w)}, q, g}};",
                   f"DlcConvDgradB<{ctype}> load_b{{{vr.buffer(gy)}, q, g}};")
    else:
        x, gy = node.inputs
        loaders = (f"DlcConvWgradA<{ctype}> load_a{{{vr.buffer(gy)}, q, g}};",
                   f"DlcConvWgradB<{ctype}> load_b{{{vr.buffer(x)}, q, g}};")
    vr.use_shape((batch,))
    pre = [f"  const DlcConv2d q{{(i64){dim_c(batch)}, {', '.join(str(v) for v in geo)}}};",
           "  const int g = blockIdx.z;", "  i64 M, N, K;", f"  dlc_conv_{mode}_mnk(q, M, N, K);",
           *("  " + line for line in loaders)]
    if mode == "fwd":
        body.emit(f"const i64 e_w = j % {wo}, e_r = j / {wo}, e_h = e_r % {ho}, e_n = e_r / {ho};")
        out_idx = ("e_n", f"(i64)g * {co // groups} + i", "e_h", "e_w")
    elif mode == "dgrad":
        body.emit(f"const i64 e_w = j % {wd}, e_r = j / {wd}, e_h = e_r % {h}, e_n = e_r / {h};")
        out_idx = ("e_n", f"(i64)g * {c // groups} + i", "e_h", "e_w")
    else:
        body.emit(f"const i64 e_c = j / {kh * kw}, e_t = j % {kh * kw};")
        out_idx = (f"(i64)g * {co // groups} + i", "e_c", f"e_t / {kw}", f"e_t % {kw}")
    _store_epilogue(vr, kernel, out_names, out_idx, "acc")
    params = vr.final_params()
    if mode == "wgrad":
        params += [Param("workspace", "ws", "void*"), Param("chunks", "chunks", "i64"), Param("phase", "phase", "int")]
    entries, chunks = [], [_comment(kernel)]
    for tag in tiles:
        bm, bn, bk, tm, tn = GEMM_CONFIGS[tag]
        entry = f"{kernel.name}_{tag}"
        entries.append(entry)
        mainloop = f"  dlc_gemm_mainloop<{bm}, {bn}, {bk}, {tm}, {tn}, {ctype}>"
        if mode != "wgrad":
            chunks += [_signature(entry, params, GEMM_LAUNCH_BOUNDS.get(tag, "")) + " {", *pre,
                       f"{mainloop}(M, N, K, load_a, load_b,",
                       f"      [&](i64 i, i64 j, {ctype} acc) {{", body.text(), "      });", "}"]
            continue
        # split-K: phase 1 multiplies K slice blockIdx.y into the workspace, phase 2 sums the slices in order
        # and runs the epilogue; phase 0 is the single pass
        chunks += [_signature(entry, params, GEMM_LAUNCH_BOUNDS.get(tag, "")) + " {", *pre[:1], *pre[2:4],
                   f"  {ctype}* const partial = ({ctype}*)ws;",
                   "  if (phase == 2) {",
                   f"    for (i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x; e < {groups} * M * N;"
                   " e += (i64)gridDim.x * blockDim.x) {",
                   "      const int g = (int)(e / (M * N));",
                   f"      {ctype} acc = {ctype}(0);",
                   "      for (i64 c = 0; c < chunks; ++c) acc += partial[(g * chunks + c) * M * N + e % (M * N)];",
                   f"      [&](i64 i, i64 j, {ctype} acc) {{", body.text(), "      }(e / N % M, e % N, acc);",
                   "    }", "    return;", "  }", *pre[1:2], *pre[4:],
                   "  const i64 span = (K + chunks - 1) / chunks, k0 = (i64)blockIdx.y * span;",
                   "  const i64 k1 = k0 + span < K ? k0 + span : K;",
                   "  const DlcSliceKA<decltype(load_a)> slice_a{load_a, k0};",
                   "  const DlcSliceKB<decltype(load_b)> slice_b{load_b, k0};",
                   f"{mainloop}(M, N, k1 > k0 ? k1 - k0 : 0, slice_a, slice_b,",
                   f"      [&](i64 i, i64 j, {ctype} acc) {{",
                   "        if (phase == 1) { partial[((g * chunks + blockIdx.y) * M + i) * N + j] = acc; return; }",
                   body.text(), "      });", "}"]
    item = np.dtype(node.dtype).itemsize

    def plan(env, max_blocks):
        nb = int(shape_eval((batch,), env)[0])
        m, n = {"fwd": (co // groups, nb * ho * wo), "dgrad": (c // groups, nb * h * wd),
                "wgrad": (co // groups, (c // groups) * kh * kw)}[mode]
        tag = choose_gemm_tile(m, n, groups, max_blocks, tiles)
        bm, bn, _, tm, tn = GEMM_CONFIGS[tag]
        grid, threads = gemm_grid(tag, m, n, groups), ((bm // tm) * (bn // tn), 1, 1)
        if mode != "wgrad":
            return Launch(f"{kernel.name}_{tag}", grid, threads)
        k = nb * ho * wo
        split = split_k_chunks(grid[0] * groups, k, max_blocks)
        if split == 1:
            return [Launch(f"{kernel.name}_{tag}", grid, threads, {"chunks": 1, "phase": 0})]
        space = groups * m * n * split * item
        return [Launch(f"{kernel.name}_{tag}", (grid[0], split, groups), threads, {"chunks": split, "phase": 1},
                       workspace=space),
                Launch(f"{kernel.name}_{tag}", (_grid_for(groups * m * n, threads[0], max_blocks), 1, 1), threads,
                       {"chunks": split, "phase": 2}, workspace=space)]

    return RenderedKernel(kernel, "\n".join(chunks), params, entries, plan)


SPLIT_K_MIN = 1 << 12   # K elements per split-K slice (at least)


def split_k_chunks(tiles: int, k: int, max_blocks: int) -> int:
    """Slices of K for a GEMM of `tiles` output tiles: 1 unless the tiles alone leave most SMs idle and K is long
    (a weight gradient: 9 tiles of 64 x 64 for a 64 -> 64 3x3 conv, K = every output position of the batch)."""
    if tiles >= max_blocks // 4 or k < 2 * SPLIT_K_MIN:
        return 1
    return int(max(2, min(k // SPLIT_K_MIN, max_blocks // max(tiles, 1), 64)))


def _per_output_kernel(kernel: Kernel, vr: ValueRenderer, body: Body, space, head: list[str]) -> RenderedKernel:
    """A grid-stride loop over `space` around `body` (pooling, random numbers)."""
    name = kernel.name
    lines = [_comment(kernel), _signature(name, vr.final_params()) + " {", *head,
             f"  const i64 n = {numel_c(space)};",
             "  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {",
             body.text(), "  }", "}"]
    space_ = tuple(space)

    def plan(env, max_blocks):
        count = int(np.prod(shape_eval(space_, env), dtype=np.int64))
        return Launch(name, (_grid_for(count, BLOCK, max_blocks), 1, 1), (BLOCK, 1, 1))

    return RenderedKernel(kernel, "\n".join(lines), vr.final_params(), [name], plan)


def render_pool(kernel: Kernel, program: Program) -> RenderedKernel:
    """Max/average pooling and their gradients (pool.cu), one thread per output element, epilogue fused."""
    node = kernel.anchor
    body, vr, out_names = _epilogue_kernel_start(kernel, program)
    a = node.a
    ctype = C_TYPE[node.dtype]
    if node.op.startswith("adaptive"):
        return _adaptive_pool(kernel, node, vr, body, out_names)
    if node.op in ("max_pool2d", "avg_pool2d", "max_pool2d_grad"):
        x = node.inputs[0]
        _, c, h, wd = x.shape
        xin = vr.buffer(x)
    else:
        _, c, h, wd = node.shape
    if node.op in ("max_pool2d", "avg_pool2d"):
        _, _, ho, wo = node.shape
    else:
        _, _, ho, wo = node.inputs[-1].shape
    (pt, _), (pl, _) = a["padding"]
    geo = [c, h, wd, ho, wo, *a["kernel"], *a["stride"], pt, pl]
    head = [f"  const DlcPool2d q{{{', '.join(str(v) for v in geo)}, "
            f"{str(bool(a.get('count_include_pad', True))).lower()}}};"]
    idx = vr.unravel("i", node.shape)
    nc = f"{idx[0]} * {c} + {idx[1]}"
    if node.op == "max_pool2d":
        expr = f"dlc_max_pool_window({xin}, q, {nc}, {idx[2]}, {idx[3]}, (int*)0)"
    elif node.op == "avg_pool2d":
        expr = f"dlc_avg_pool_window({xin}, q, {nc}, {idx[2]}, {idx[3]})"
    elif node.op == "max_pool2d_grad":
        expr = f"dlc_max_pool_grad_at({xin}, {vr.buffer(node.inputs[1])}, q, {nc}, {idx[2]}, {idx[3]})"
    else:
        expr = f"dlc_avg_pool_grad_at({vr.buffer(node.inputs[0])}, q, {nc}, {idx[2]}, {idx[3]})"
    body.emit(f"const {ctype} pooled = {expr};")
    _store_epilogue(vr, kernel, out_names, idx, "pooled")
    return _per_output_kernel(kernel, vr, body, node.shape, head)


def _adaptive_pool(kernel: Kernel, node: Node, vr: ValueRenderer, body: Body, out_names) -> RenderedKernel:
    """adaptive_avg_pool2d (bins of PyTorch's rule) and its gradient, one thread per output element."""
    idx = vr.unravel("i", node.shape)
    if node.op == "adaptive_avg_pool2d":
        x = node.inputs[0]
        _, c, h, w = x.shape
        _, _, oh, ow = node.shape
        call = f"dlc_adaptive_avg_window({vr.buffer(x)}, {h}, {w}, {oh}, {ow}"
    else:
        g = node.inputs[0]
        _, c, oh, ow = g.shape
        _, _, h, w = node.shape
        call = f"dlc_adaptive_avg_grad_at({vr.buffer(g)}, {h}, {w}, {oh}, {ow}"
    body.emit(f"const {C_TYPE[node.dtype]} pooled = {call}, {idx[0]} * {c} + {idx[1]}, {idx[2]}, {idx[3]});")
    _store_epilogue(vr, kernel, out_names, idx, "pooled")
    return _per_output_kernel(kernel, vr, body, node.shape, [])


def render_random(kernel: Kernel, program: Program) -> RenderedKernel:
    """Philox4x32-10 of counter (i, step) under key seed, bits to numbers exactly as dlc/ops/random.py."""
    node = kernel.anchor
    body, vr, out_names = _epilogue_kernel_start(kernel, program)
    a = node.a
    step = vr.value(node.inputs[0], ())
    seed = int(a["seed"]) & 0xFFFFFFFFFFFFFFFF
    body.emit(f"const unsigned long long st = (unsigned long long)(long long)({step});")
    body.emit("const DlcPhilox w = dlc_philox4x32_10((unsigned)(i & 0xffffffffLL), "
              "(unsigned)((unsigned long long)i >> 32), (unsigned)(st & 0xffffffffULL), (unsigned)(st >> 32), "
              f"{seed & 0xFFFFFFFF}u, {seed >> 32}u);")
    dtype = a.get("dtype", "float32")
    if node.op == "random_bernoulli":
        body.emit(f"const bool drawn = dlc_uniform01(w.v[0]) < {literal(a['p'], 'float32')};")
    elif node.op == "random_uniform":
        if dtype == "float32":
            body.emit(f"const float drawn = __fadd_rn({literal(a['low'], dtype)}, __fmul_rn("
                      f"{literal(a['high'], dtype)} - {literal(a['low'], dtype)}, dlc_uniform01(w.v[0])));")
        else:
            body.emit(f"const double drawn = __dadd_rn({literal(a['low'], dtype)}, __dmul_rn("
                      f"{literal(a['high'], dtype)} - {literal(a['low'], dtype)}, dlc_uniform01_f64(w.v[0], w.v[1])));")
    else:
        if dtype == "float32":
            body.emit("const double u1 = dlc_uniform01(w.v[0]), u2 = dlc_uniform01(w.v[1]);")
        else:
            body.emit("const double u1 = dlc_uniform01_f64(w.v[0], w.v[1]), u2 = dlc_uniform01_f64(w.v[2], w.v[3]);")
        body.emit(f"const double z = sqrt(-2.0 * log1p(-u1)) * cos({2 * math.pi!r} * u2);")
        body.emit(f"const {C_TYPE[dtype]} drawn = ({C_TYPE[dtype]})__dadd_rn({float(a['mean'])!r}, "
                  f"__dmul_rn({float(a['std'])!r}, z));")
    idx = vr.unravel("i", node.shape)
    _store_epilogue(vr, kernel, out_names, idx, "drawn")
    return _per_output_kernel(kernel, vr, body, node.shape, [])


ATTENTION_OPS = {"attention": "dlc_attention_forward_row", "attention_grad": "dlc_attention_grad_row",
                 "attention_grad_q": "dlc_attention_grad_q_row", "attention_grad_kv": "dlc_attention_grad_kv_row"}
ATTENTION_MASKS = {"none": 0, "bool": 1, "add": 2}


def render_attention(kernel: Kernel, program: Program) -> RenderedKernel:
    """Attention and its gradient ops (attention.cu): one thread per query row (forward, dq), key row (dk, dv),
    or both (attention_grad: query and key row i)."""
    node = kernel.anchor
    if len(kernel.nodes) != 1:
        raise unsupported(node, "an attention kernel holds the attention op alone")
    a = node.a
    if not isinstance(a["causal"], bool) or a["mask"] not in ATTENTION_MASKS:
        raise unsupported(node, "its causal and mask attributes are not a bool and a mask kind")
    body = Body(depth=2)
    vr = ValueRenderer(kernel, program, body)
    q, k, v = node.inputs[:3]
    operands = [vr.buffer(x) for x in node.inputs]
    if a["mask"] == "none":
        operands.insert(3, f"(const {C_TYPE[node.dtype]}*)nullptr")
        batched = rows = cols = False
    else:
        mask = node.inputs[3]
        batched = any(d != 1 for d in mask.shape[:-2])
        rows, cols = mask.shape[-2] != 1, mask.shape[-1] != 1
    out = vr.buffer(node, const=False)
    dims = ", ".join(vr.dim(d) for d in (q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]))
    flags = ", ".join(str(f).lower() for f in (batched, rows, cols))
    head = [f"  const DlcAttention geo{{{dims}, {flags}, {ATTENTION_MASKS[a['mask']]}, "
            f"{str(a['causal']).lower()}}};",
            f"  const {C_TYPE[node.dtype]} scale = {literal(a['scale'], node.dtype)};"]
    body.emit(f"{ATTENTION_OPS[node.op]}({', '.join(operands)}, {out}, geo, scale, i);")
    rows_of = k if node.op == "attention_grad_kv" else q
    return _per_output_kernel(kernel, vr, body, rows_of.shape[:-1], head)


def render_layer_norm(kernel: Kernel, program: Program) -> RenderedKernel:
    """layer_norm and its gradient (norm.cu): one block per row (grid-stride over rows), the block's threads
    over the row's elements, the epilogue fused."""
    node = kernel.anchor
    _only_epilogue(kernel)
    body = Body(depth=3)
    vr = ValueRenderer(kernel, program, body)
    out_names = [vr.buffer(o, const=False) for o in kernel.outputs]
    dims = int(node.attr("dims"))
    rows, row = node.shape[:node.ndim - dims], node.shape[node.ndim - dims:]
    n = int(np.prod(row, dtype=np.int64))
    x = vr.buffer(node.inputs[0])
    ctype = C_TYPE[node.dtype]
    idx = vr.unravel("i", node.shape)
    if node.op == "layer_norm":
        value = f"({ctype})(((double){x}[i] - st.mean) * st.rstd)"
        grad_means = []
    else:
        g = vr.buffer(node.inputs[1])
        value = f"({ctype})(st.rstd * ((double){g}[i] - mean_g - ((double){x}[i] - st.mean) * st.rstd * mean_gx))"
        grad_means = ["    double mean_g, mean_gx;",
                      f"    dlc_layer_norm_grad_means({x} + row * n, {g} + row * n, n, st, mean_g, mean_gx);"]
    body.emit(f"const {ctype} normed = {value};")
    _store_epilogue(vr, kernel, out_names, idx, "normed")
    eps = literal(node.attr("eps"), "float64")
    name = kernel.name
    lines = [_comment(kernel), _signature(name, vr.final_params()) + " {",
             f"  const i64 rows = {numel_c(rows)}, n = {n};",
             "  for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {",
             f"    const DlcRowStats st = dlc_row_stats({x} + row * n, n, {eps});", *grad_means,
             "    for (i64 c = threadIdx.x; c < n; c += blockDim.x) {", "      const i64 i = row * n + c;",
             body.text(), "    }", "  }", "}"]
    rows_ = tuple(rows)

    def plan(env, max_blocks):
        count = int(np.prod(shape_eval(rows_, env), dtype=np.int64))
        threads = min(BLOCK, max(32, 1 << max(0, (n - 1).bit_length())))
        return Launch(name, (max(1, min(count, 65535)), 1, 1), (threads, 1, 1))

    return RenderedKernel(kernel, "\n".join(lines), vr.final_params(), [name], plan)


def render_kernel(kernel: Kernel, program: Program, tiles=tuple(GEMM_CONFIGS)) -> RenderedKernel | None:
    """The kernel's CUDA text and launch rule; None for the ops the runtime runs itself (HOST_OPS)."""
    anchor = kernel.anchor
    if len(kernel.nodes) == 1 and kernel.nodes[0].op in HOST_OPS:
        return None
    if kernel.kind in ("elementwise", "injective"):
        for n in kernel.nodes:
            if OPS[n.op].kind not in ("elementwise", "injective") or (
                    OPS[n.op].kind == "injective" and n.op not in ir.REMAP_OPS):
                raise unsupported(n, f"it cannot be part of an {kernel.kind} kernel")
        return render_elementwise(kernel, program)
    if anchor is None:
        raise CudaUnsupportedError(f"kernel {kernel.name} of kind {kernel.kind!r} has no anchor")
    if kernel.kind == "reduce" and anchor.op in REDUCE_FUNCTORS or anchor.op in ("argmax", "argmin"):
        return render_reduce(kernel, program)
    if anchor.op == "matmul":
        return render_matmul(kernel, program, tiles)
    if anchor.op in ("take", "take_grad"):
        return render_take(kernel, program)
    if anchor.op == "one_hot":
        return render_one_hot(kernel, program)
    if anchor.op in CONV_OPS:
        return render_conv(kernel, program, tiles)
    if anchor.op in POOL_OPS:
        return render_pool(kernel, program)
    if anchor.op in RANDOM_OPS:
        return render_random(kernel, program)
    if anchor.op in ATTENTION_OPS:
        return render_attention(kernel, program)
    if anchor.op in ("layer_norm", "layer_norm_grad"):
        return render_layer_norm(kernel, program)
    raise unsupported(anchor)


LIBRARY = ("prelude", "gemm", "conv", "pool", "attention", "norm")


def library_source(names=LIBRARY) -> str:
    """The hand-written headers generated kernels build on, inlined (pycuda compiles one string)."""
    return "\n".join((KERNEL_DIR / f"{n}.cu").read_text().replace("#pragma once", "") for n in names)


def render_program(program: Program, tiles=tuple(GEMM_CONFIGS)) -> CudaModule:
    """Every kernel of the program in one CUDA translation unit, after the hand-written library.

    tiles: the GEMM tile configurations (keys of GEMM_CONFIGS) each matmul and
    convolution is instantiated with; the runtime picks one per launch.
    """
    kernels = [r for r in (render_kernel(k, program, tiles) for k in program.kernels) if r is not None]
    header = library_source()
    source = header + "\n\n// ---- generated kernels ----\n\n" + "\n\n".join(k.source for k in kernels) + "\n"
    return CudaModule(source, kernels, list(LIBRARY))


# ----------------------------------------------------------------------------
# nvcc: compile checks and resource usage (no GPU needed)


@dataclass
class KernelResources:
    """What ptxas reports for one entry on one architecture."""

    registers: int
    smem_bytes: int
    spill_stores: int
    spill_loads: int
    stack_bytes: int


class NvccError(DlcError):
    """nvcc rejected a module (an error, or any warning: they are errors here)."""


def nvcc_path() -> str | None:
    import shutil

    return shutil.which("nvcc")


def nvcc_compile(source: str, archs=("sm_80", "sm_90"), extra=()) -> dict[str, dict[str, KernelResources]]:
    """Compile a module to a cubin per architecture (in parallel) with every warning an error.

    Returns ptxas's resources per entry and architecture. Results are cached
    on disk by a hash of the source, the flags and nvcc's version.
    """
    import hashlib
    import json
    import subprocess

    from .c_emulator import cache_dir

    nvcc = nvcc_path()
    if nvcc is None:
        raise NvccError("nvcc is not on PATH (install the CUDA toolkit)")
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    flags = ["-std=c++17", "-O3", "-Werror", "all-warnings", "--resource-usage", *extra]
    digest = hashlib.sha256((source + " ".join(flags) + " ".join(archs) + version).encode()).hexdigest()[:20]
    folder = cache_dir().parent / "nvcc"
    folder.mkdir(parents=True, exist_ok=True)
    report_file = folder / f"{digest}.json"
    if report_file.exists():
        raw = json.loads(report_file.read_text())
        return {a: {k: KernelResources(**v) for k, v in e.items()} for a, e in raw.items()}
    src = folder / f"{digest}.cu"
    src.write_text(source)
    procs = {arch: subprocess.Popen([nvcc, "-cubin", f"-arch={arch}", *flags, "-o",
                                     str(folder / f"{digest}.{arch}.cubin"), str(src)],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for arch in archs}
    report: dict[str, dict[str, KernelResources]] = {}
    for arch, proc in procs.items():
        log, _ = proc.communicate()
        if proc.returncode != 0:
            raise NvccError(f"nvcc -arch={arch} failed on {src}:\n{log[-6000:]}")
        report.update(parse_resource_usage(log))
    report_file.write_text(json.dumps({a: {k: vars(v) for k, v in e.items()} for a, e in report.items()}))
    return report


def resource_table(report: dict[str, dict[str, KernelResources]]) -> str:
    """A readable table of registers, shared memory and spills per entry and architecture."""
    lines = [f"{'entry':40s} {'arch':6s} {'regs':>5s} {'smem':>6s} {'spill':>6s} {'stack':>6s}"]
    for arch in sorted(report):
        for entry in sorted(report[arch]):
            r = report[arch][entry]
            lines.append(f"{entry:40s} {arch:6s} {r.registers:5d} {r.smem_bytes:6d} "
                         f"{r.spill_stores + r.spill_loads:6d} {r.stack_bytes:6d}")
    return "\n".join(lines)


_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(sm_\d+)'")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_resource_usage(log: str) -> dict[str, dict[str, KernelResources]]:
    """ptxas -v lines -> {arch: {entry: resources}}."""
    out: dict[str, dict[str, KernelResources]] = {}
    entry = arch = None
    stack = stores = loads = 0
    for line in log.splitlines():
        m = _ENTRY.search(line)
        if m:
            entry, arch = m.group(1), m.group(2)
            stack = stores = loads = 0
            continue
        m = _SPILL.search(line)
        if m and entry:
            stack, stores, loads = (int(g) for g in m.groups())
            continue
        m = _USED.search(line)
        if m and entry:
            out.setdefault(arch, {})[entry] = KernelResources(int(m.group(1)), int(m.group(2) or 0), stores, loads,
                                                              stack)
            entry = None
    return out
