"""Native scan loops for the Numba CPU backend: the body compiled once as a program, the loop in generated code.

A scan's body (dlc/ops/scan.py) is an ordinary graph over placeholders, so it
went through the same optimizer as any compiled function (the Program's
`bodies`, with the user's options) and goes through the same code generator:
a `CPUBackend` of its own whose outer function takes the placeholders
(carry_in, x_in, captured_in, step_in) and the body's outputs (carry_out,
y_out) as arrays. A generated @njit loop then calls that function once per
step with views: xs[t], the current carry, and as output the next carry or
ys[t]. The step crosses from Python into native code once per scan.

Carries live where they are needed anyway: with `save_carries` the carry that
enters step t *is* row t of the saved-carries stack (the body reads it there
and writes the next carry into the next row, no copy); without it two buffers
take turns. The last step writes the final carry into its result.

The scan's results go straight into the buffers of the `scan_output` nodes
that read them: the backend's memory plan is made over a view of the program
in which the scan's kernel writes those buffers (`results_at_their_scan`), so
nothing alive during the loop shares their bytes; the scan_output kernels then
have nothing left to do. (Should a plan place a result's buffer where a value
in use lies, that result goes to an array of its own and its scan_output kernel
copies it.) Results nothing reads go to one-row scratch arrays.

A body that itself needs a numpy fallback (a nested scan, an op without a
native lowering) still runs as a compiled program, called from a Python loop.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..codegen import source_text
from ..codegen.numba import NP_DTYPE, GeneratedModule, Writer
from ..graph import TUPLE, Node, dim_eval, shape_eval
from ..program import Kernel, Program, nbytes
from . import compile_workers
from .cpu import FIXED, CPUBackend, cache_dir, load_module

log = logging.getLogger("dlc")


class BodyFunction:
    """A scan body in the shape of a compiled function, for a CPUBackend of its own."""

    def __init__(self, body):
        self.body = body
        self.outputs = list(body.outputs)
        self.inputs = list(body.placeholders)
        self.updates: list = []
        self.store: dict = {}  # a body reads no parameters: the ones it closes over are captured inputs

    def __repr__(self) -> str:
        b = self.body
        return (f"scan body ({len(b.carry_in)} carries, {len(b.x_in)} xs, {len(b.captured_in)} captured, "
                f"{len(b.y_out)} ys)")


def lower_scans(backend, **options) -> tuple[dict, list]:
    """id(kernel) -> a runner(plan, X, env), for each scan kernel of the backend's program and its scan_outputs,
    and the NativeScans. options are the backend's own (fastmath, cache...): each body is rendered with them."""
    runners: dict = {}
    scans: list = []
    loops: list[str] = []
    kernels = backend.program.kernels
    for pos, kernel in enumerate(kernels):
        if kernel.anchor is None or kernel.anchor.op != "scan":
            continue
        readers = {k.nodes[0].attr("index"): (p, k) for p, k in enumerate(kernels)
                   if k.nodes[0].op == "scan_output" and k.nodes[0].inputs[0] is kernel.anchor}
        scan = NativeScan(backend, pos, readers, options)
        scans.append(scan)
        runners[id(kernel)] = scan.run
        for index, (_, k) in readers.items():
            runners[id(k)] = scan.output_runner(index)
        loops.append("native" if scan.loop is not None else "python")
    backend.stats["scan_loops"] = loops  # per scan kernel: its loop in native code, or Python over its body
    return runners, scans


def results_at_their_scan(program: Program) -> Program:
    """The program as the memory planner should see it here: a scan writes its results' buffers itself.

    The scan's kernel takes over the outputs of its scan_output kernels, so
    each result's buffer lives from the scan on and no value alive meanwhile
    (the scan's own inputs included) shares its bytes. The kernels rendered
    and run are unchanged; this copy only places buffers.
    """
    outputs_of: dict[int, list[Node]] = {}
    for k in program.kernels:
        if k.nodes[0].op == "scan_output":
            outputs_of.setdefault(id(k.nodes[0].inputs[0]), []).extend(k.outputs)
    kernels = []
    for k in program.kernels:
        if k.nodes[0].op == "scan_output":
            continue
        if k.anchor is not None and k.anchor.op == "scan":
            results = tuple(outputs_of.get(id(k.anchor), ()))
            k = Kernel(k.name, k.kind, k.nodes + results, k.inputs, results, k.anchor)
        kernels.append(k)
    return dataclasses.replace(program, kernels=kernels)


@dataclass
class _Binding:
    """What one workspace of an outer plan gives a scan: its loop's arguments and where results go."""

    args: list            # the loop's arguments; per-call entries are filled in by `per_call`
    per_call: list        # (argument position, external index, shape) read from X at each call
    temps: dict           # result index -> array the scan_output kernel copies from
    body_plan: object
    length: int


class NativeScan:
    """One scan kernel of a CPU program: its body's backend, its generated loop, and its result buffers."""

    def __init__(self, backend, pos: int, readers: dict, options: dict):
        self.backend = backend
        self.pos = pos
        self.node = node = backend.program.kernels[pos].anchor
        self.body = body = node.attr("body")
        self.readers = readers
        self.C, self.X, self.Y = len(body.carry_in), len(body.x_in), len(body.y_out)
        self.save = bool(node.attr("save_carries"))
        self.reverse = bool(node.attr("reverse"))
        self.body_backend = CPUBackend(BodyFunction(body), backend.program.body(node), **options)
        self.loop = None
        segments = self.body_backend.generated.segments
        self._consts: list[np.ndarray] = []
        if len(segments) == 1 and segments[0].native:
            renderer = LoopRenderer(self)
            source = renderer.render()
            self._consts = [array for _, array in renderer.consts]
            gen = GeneratedModule(source, [], [], [], [], 0, hashlib.sha256(source.encode()).hexdigest()[:20])
            dump = options.get("dump")
            if dump:
                Path(dump).mkdir(parents=True, exist_ok=True)
                (Path(dump) / f"dlc_gen_{gen.digest}.py").write_text(source)
            cache = options.get("cache")
            self.loop = load_module(gen, cache_dir(cache)).scan_loop
            self.loop_source = source
        else:
            log.info("dlc cpu: %s: its body has numpy fallbacks, the loop runs in Python", body.name)
        self.compiled = False

    # ---- per plan

    def _bind(self, plan, env: dict) -> _Binding:
        b = self.backend
        body_env = {s: env[s] for s in self.body.symbols}
        # the body's arena and step counter belong to this binding: one per workspace of the outer plan,
        # so concurrent calls (each in a workspace of its own) never share them
        body_plan = self.body_backend._workspace(self.body_backend._plan(body_env))
        per_call, args = [], []
        inputs = self.node.inputs
        xs_nodes = inputs[self.C:self.C + self.X]
        T = shape_eval(xs_nodes[0].shape, env)[0] if xs_nodes else dim_eval(self.node.attr("length"), env)

        def source(n: Node, stacked: bool):
            """A scan input as a flat (or (T, n) for xs) array: fixed for the plan, or read from X per call."""
            shape = flat_shape(shape_eval(n.shape, env), stacked)
            storage = b._storage(n)
            m = b._ext_index.get(id(storage))
            if m is not None and b._externals[m][0] != FIXED:  # an input or output array: new at every call
                per_call.append((len(args), m, shape))
                args.append(None)
                return
            v = np.asarray(b._value_view(n, plan, [x if k == FIXED else None for k, x in b._externals], env))
            if not v.flags.writeable or not v.flags.c_contiguous:
                v = np.array(v, order="C")  # constants: one type for numba, whatever the node's value
            args.append(v.reshape(shape))

        temps = {}

        def result(index: int, shape: tuple, dtype: str, stacked: bool, rows: int = 1):
            """Where result `index` of the scan is written: the scan_output's own buffer when safe.

            A result nothing reads goes to a scratch array of `rows` rows (the saved carries need all T).
            """
            if index not in self.readers:
                size = int(np.prod(shape[1:] if stacked else shape, dtype=np.int64))
                args.append(np.empty((rows, size) if stacked else (size,), dtype))
                return
            pos, k = self.readers[index]
            out = k.nodes[0]
            storage = b._storage(out)
            m = b._ext_index.get(id(storage))
            flat = flat_shape(shape, stacked)
            if m is not None:
                per_call.append((len(args), m, flat))
                args.append(None)
            elif self._free_until(out, pos, plan, env):
                args.append(b._arena_view(out, plan).reshape(flat))
            else:
                temps[index] = np.empty(shape, dtype)
                args.append(temps[index].reshape(flat))

        args += [T, body_plan.arena, body_plan.S, np.zeros(1, np.int64)]
        for n in inputs[:self.C]:
            source(n, False)
        for n in xs_nodes:
            source(n, True)
        for n in inputs[self.C + self.X:]:
            source(n, False)
        carries = [(shape_eval(p.shape, env), p.dtype) for p in self.body.carry_in]
        for k, (shape, dtype) in enumerate(carries):
            result(k, shape, dtype, False)
        for j, y in enumerate(self.body.y_out):
            result(self.C + j, (T,) + shape_eval(y.shape, env), y.dtype, True)
        if self.save:
            for k, (shape, dtype) in enumerate(carries):
                result(self.C + self.Y + k, (T,) + shape, dtype, True, rows=T)
        else:
            for shape, dtype in carries:
                size = int(np.prod(shape, dtype=np.int64))
                args += [np.empty(size, dtype), np.empty(size, dtype)]
        args += self._consts
        args.append(self._arena_bounds(body_plan, body_env))
        return _Binding(args, per_call, temps, body_plan, T)

    def _free_until(self, out: Node, stop: int, plan, env: dict) -> bool:
        """Whether out's arena bytes are untouched by the scan's inputs and every kernel before out's own."""
        b = self.backend
        mem = plan.memory
        if id(out) not in mem.offsets:
            return False
        lo = mem.offsets[id(out)]
        hi = lo + nbytes(out, env)
        for k in b.program.kernels[self.pos:stop]:
            for n in k.inputs + k.outputs:
                s = b._storage(n)
                if s is out or s.dtype == TUPLE or id(s) not in mem.offsets or id(s) in b._ext_index:
                    continue
                start = mem.offsets[id(s)]
                if start < hi and lo < start + nbytes(s, env):
                    return False
        return True

    def _arena_bounds(self, body_plan, body_env) -> np.ndarray:
        """Byte ranges of the body's outputs that live in its arena (copied out after each step)."""
        bb = self.body_backend
        bounds = []
        for i in self.arena_outputs():
            o = bb.program.outputs[i]
            start = body_plan.memory.offsets[id(bb._storage(o))]
            bounds += [start, start + nbytes(o, body_env)]
        return np.array(bounds or [0], np.int64)

    def arena_outputs(self) -> list[int]:
        """Indices of the body outputs whose value lies in the body's arena (not written to an output array)."""
        bb = self.body_backend
        return [i for i, o in enumerate(bb.program.outputs)
                if i not in bb._output_externals and id(bb._storage(o)) not in bb._ext_index
                and bb._storage(o).op != "const"]

    # ---- calls

    def _binding(self, plan, X: list, env: dict) -> _Binding:
        """This workspace's binding, its per-call arguments taken from X."""
        key = ("native scan", id(self))
        binding = plan.objects.get(key)
        if binding is None:
            binding = plan.objects[key] = self._bind(plan, env)
        for a, m, shape in binding.per_call:
            binding.args[a] = X[m].reshape(shape)
        return binding

    def compile_job(self, plan, X: list, env: dict) -> compile_workers.Job:
        """The loop (with its body) as a job for a cold compile: its arguments' types at this call."""
        import numba

        loop_module = sys.modules[self.loop.py_func.__module__]
        body = self.body_backend.module
        lines = compile_workers.source_lines(self.loop) + self.body_backend.generated.source.count("\n")
        return compile_workers.Job(loop_module.__name__, loop_module.__file__, "scan_loop",
                                   tuple(numba.typeof(a) for a in self._binding(plan, X, env).args), 2, lines,
                                   ((body.__name__, body.__file__),))

    def run(self, plan, X: list, env: dict) -> None:
        binding = self._binding(plan, X, env)
        args = binding.args
        if self.loop is None:
            self._python_loop(binding, env)
        elif self.compiled:
            self.loop(*args)
        else:
            t0 = time.perf_counter()
            self.loop(*args)
            self.backend.stats["numba_compile_s"] = self.backend.stats.get("numba_compile_s", 0.0) + \
                time.perf_counter() - t0
            self.compiled = True

    def output_runner(self, index: int):
        """The scan_output kernel of result `index`: nothing to do when the scan wrote its buffer directly."""
        def run(plan, X, env):
            binding = plan.objects[("native scan", id(self))]
            temp = binding.temps.get(index)
            if temp is not None:
                out = self.readers[index][1].nodes[0]
                np.copyto(self.backend._value_view(out, plan, X, env), temp)
        return run

    def _python_loop(self, binding, env: dict) -> None:
        """The loop for a body with numpy fallbacks: its compiled program called once per step."""
        body, bb, C, X = self.body, self.body_backend, self.C, self.X
        args = binding.args
        T = binding.length
        body_env = {s: env[s] for s in body.symbols}
        shapes = [shape_eval(p.shape, body_env) for p in body.placeholders]
        a = 4
        inits, xs = args[a:a + C], args[a + C:a + C + X]
        captured = args[a + C + X:a + C + X + len(body.captured_in)]
        a += C + X + len(body.captured_in)
        finals, ys = args[a:a + C], args[a + C:a + C + self.Y]
        saved = args[a + C + self.Y:a + 2 * C + self.Y] if self.save else []
        feeds = {id(p): v.reshape(s) for p, v, s in zip(body.captured_in, captured, shapes[C + X:])}
        carries = [v.reshape(s) for v, s in zip(inits, shapes)]
        for i in range(T):
            t = T - 1 - i if self.reverse else i
            for k, p in enumerate(body.carry_in):
                if self.save:
                    saved[k][t] = carries[k].reshape(-1)
                feeds[id(p)] = carries[k]
            for p, x, s in zip(body.x_in, xs, shapes[C:C + X]):
                feeds[id(p)] = x[t].reshape(s)
            feeds[id(body.step_in)] = np.array(t, np.int64)
            outs = bb.run(feeds, body_env)
            carries = outs[:C]
            for j, y in enumerate(ys):
                y[t if y.shape[0] == T else 0] = outs[C + j].reshape(-1)
        for f, c in zip(finals, carries):
            f[...] = c.reshape(-1)


def flat_shape(shape: tuple, stacked: bool) -> tuple:
    """The loop's view of an array: (T, elements per step) for a stack, else (elements,)."""
    if stacked:
        return (shape[0], int(np.prod(shape[1:], dtype=np.int64)))
    return (int(np.prod(shape, dtype=np.int64)),)


LOOP_HEADER = '''"""Generated by dlc: the loop of a scan over its compiled body. Do not edit; regenerated."""
import numpy as np
from numba import njit

from dlc_cpu_gemm import copy_flat
from {module} import {func} as body_step

JIT = dict(cache=True, error_model="numpy", boundscheck=False, nogil=True)
'''


class LoopRenderer:
    """Writes `scan_loop`: the per-step calls of a body's outer function, with the carries' bookkeeping.

    Its arguments, in the order NativeScan binds them: T, the body's arena and
    slots, the step cell, the initial carries, the xs (T, n), the captured
    values, the final carries, the ys (T, n) (one row when unused), the saved
    carries (T, n) or two work buffers per carry, constants, and the byte
    ranges of body outputs that stay in the body's arena. Every array is flat
    (or stacked flat): the body's function reshapes what it reads.
    """

    def __init__(self, scan: NativeScan):
        self.scan = scan
        self.bb = scan.body_backend
        body = scan.body
        self.role = {}
        for k, p in enumerate(body.carry_in):
            self.role[id(p)] = f"cur{k}"
        for i, p in enumerate(body.x_in):
            self.role[id(p)] = f"xs{i}[t]"
        for j, p in enumerate(body.captured_in):
            self.role[id(p)] = f"cap{j}"
        self.role[id(body.step_in)] = "step"
        self.consts: list[tuple[str, np.ndarray]] = []
        self.const_of: dict[int, str] = {}

    def dest(self, i: int) -> str:
        """Where body output i goes at step t: the next carry, or row t of its ys."""
        scan = self.scan
        if i < scan.C:
            return f"nxt{i}"
        j = i - scan.C
        return f"ys{j}[t]" if scan.C + j in scan.readers else f"ys{j}[0]"

    def owner(self, m: int) -> int:
        """The body output whose place the body's output array m is: a carry, else a y someone reads.

        (One value returned as several outputs is written once, then copied.)
        """
        scan = self.scan
        sharing = sorted(i for i, e in self.bb._output_externals.items() if e == m)
        return min(sharing, key=lambda i: (i >= scan.C and i not in scan.readers, i))

    def const(self, node: Node, array) -> str:
        if id(node) not in self.const_of:
            self.const_of[id(node)] = f"const{len(self.consts)}"
            self.consts.append((self.const_of[id(node)], np.array(array, order="C").reshape(-1)))
        return self.const_of[id(node)]

    def external(self, m: int) -> str:
        """The loop's expression for argument m of the body's function."""
        n = self.bb.generated.externals[m]
        if id(n) in self.role:
            return self.role[id(n)]
        if n.op == "const":
            return self.const(n, self.bb._externals[m][1])
        if n.op == "input":
            raise AssertionError(f"{n.attr('name')} is no placeholder of {self.scan.body.name}")
        return self.dest(self.owner(m))

    def copies(self, w: Writer) -> None:
        """Body outputs not written by the body's function itself: copied to their place after the step."""
        bb = self.bb
        arena_outputs = self.scan.arena_outputs()
        for i, o in enumerate(bb.program.outputs):
            if i >= self.scan.C and i not in self.scan.readers:
                continue  # a y nothing reads
            m = bb._output_externals.get(i)
            if m is not None:
                if self.owner(m) != i:
                    w(f"copy_flat({self.dest(i)}, {self.dest(self.owner(m))})  # the same value as output "
                      f"{self.owner(m)}")
                continue
            storage = bb._storage(o)
            if id(storage) in bb._ext_index:
                src = self.external(bb._ext_index[id(storage)])
            elif storage.op == "const":
                src = self.const(storage, storage.value)
            else:
                r = arena_outputs.index(i)
                src = f"arena[bounds[{2 * r}]:bounds[{2 * r + 1}]].view({NP_DTYPE[o.dtype]})"
            w(f"copy_flat({self.dest(i)}, {src})  # body output {i}: {o.op}")

    def render(self) -> str:
        scan, bb = self.scan, self.bb
        C, X, Y = scan.C, scan.X, scan.Y
        body = scan.body
        if bb.generated.addressed:  # a body reads no parameters (those it closes over are captured inputs)
            raise AssertionError("a scan body reads parameters by address")
        call = ", ".join(["arena", "S"] + [self.external(m) for m in range(len(bb.generated.externals))])
        w = Writer()
        first, nxt = ("T - 1", "t - 1") if scan.reverse else ("0", "t + 1")
        for k in range(C):
            w(f"cur{k} = fin{k}")
        with w.block("if T == 0:"):
            for k in range(C):
                w(f"copy_flat(fin{k}, init{k})")
            w("return")
        for k in range(C):
            w(f"cur{k} = sav{k}[{first}]" if scan.save else f"cur{k} = work{k}a")
            w(f"copy_flat(cur{k}, init{k})")
        with w.block("for i in range(T):"):
            w("t = T - 1 - i" if scan.reverse else "t = i")
            w("step[0] = t")
            for k in range(C):
                later = f"sav{k}[{nxt}]" if scan.save else f"(work{k}b if i % 2 == 0 else work{k}a)"
                w(f"nxt{k} = fin{k} if i == T - 1 else {later}")
            w(f"body_step({call})")
            self.copies(w)
            for k in range(C):
                w(f"cur{k} = nxt{k}")
        params = ["T", "arena", "S", "step"] + [f"init{k}" for k in range(C)] + [f"xs{i}" for i in range(X)]
        params += [f"cap{j}" for j in range(len(body.captured_in))] + [f"fin{k}" for k in range(C)]
        params += [f"ys{j}" for j in range(Y)]
        params += [f"sav{k}" for k in range(C)] if scan.save else \
            [f"work{k}{s}" for k in range(C) for s in "ab"]
        params += [name for name, _ in self.consts] + ["bounds"]
        direction = "reverse" if scan.reverse else "forward"
        saved = "; carries saved" if scan.save else ""
        doc = source_text.docstring([f"{body.name} {direction} over T steps: carries {C}, xs {X}, "
                                     f"captured {len(body.captured_in)}, ys {Y}{saved}."])
        module = f"dlc_gen_{bb.generated.digest}"
        head = LOOP_HEADER.format(module=module, func=bb.generated.segments[0].func)
        return f"{head}\n\n@njit(**JIT)\ndef scan_loop({', '.join(params)}):\n{doc}\n{w.text()}\n"
