"""The Numba CPU backend: the whole step as generated native code over preallocated arenas per binding.

A plan (one binding of the symbolic dims) keeps a pool of workspaces, each an
arena of its own: a call checks one out and gives it back, so calls from
several threads never share intermediate values. Calls that update parameters
are serialized per store (`update_lock`); calls without updates run in parallel.
The plans of the last `max_plans` bindings used are kept (least recently used
first out).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import sys
import time
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..cache import cache_dir as checked_cache_dir
from ..cache import digest, ensure_file, replace_unusable
from ..codegen.numba import GeneratedModule, RenderedKernel, is_scalar_node, render_program
from ..graph import TUPLE, Node, dim_eval, shape_eval
from ..ops.collective import HOST_CALLS
from . import compile_workers, update_lock
from .reference import node_value

log = logging.getLogger("dlc")

_KERNELS_DIR = Path(__file__).resolve().parents[1] / "kernels" / "cpu"


def _quiet_first_class_warning() -> None:
    """A call of more than 30 arguments (an outer function's part taking every input and output) is compiled by
    CPython as a tuple of them; numba then sees a tuple holding a function (call_kernel's first argument) and
    warns of its experimental first-class functions, which generated code never uses. Ignored for generated
    modules only; set again before each compile, since a test harness may restore the filters it started with."""
    warnings.filterwarnings("ignore", message=r".*First-class function type feature is experimental",
                            module=r".*dlc_gen_")


_FALLBACK_LOGGED: set[str] = set()
FIXED, INPUT, OUTPUT = 0, 1, 2


def cache_dir(root: str | os.PathLike | None = None) -> Path:
    """Where generated modules (and numba's cache of them) live: the folder "cpu" of dlc.cache's directory,
    or `root` (the `cache=` option) itself; checked, with a private temporary folder if unusable."""
    return checked_cache_dir(root=root) if root else checked_cache_dir("cpu")


@functools.cache
def kernels_digest() -> str:
    """A hash of the hand-written kernels and the numba version that compiled them (read once per process)."""
    import hashlib

    import numba

    h = hashlib.sha256(numba.__version__.encode())
    for stem in KERNEL_MODULES:
        h.update((_KERNELS_DIR / f"{stem}.py").read_bytes())
    return h.hexdigest()[:16]


def _stamp_kernel_caches_with_digest() -> None:
    """Make numba's cache of a hand-written kernel valid for one exact set of kernel files, not for its own file.

    numba keys a cached function on its source file's time and size alone, but a kernel calls kernels of other
    files (conv.py calls conv_tiles.py's, conv_nhwc.py conv.py's), compiled into it: after an edit of
    conv_tiles.py alone, conv.py's conv2d kept running the old tiles from its cache. So for functions of
    dlc/kernels/cpu/ the cache's stamp is kernels_digest(): any change to any kernel file recompiles them all,
    wherever numba keeps the cache (NUMBA_CACHE_DIR, __pycache__ beside the files, or the user's cache)."""
    from numba.core import caching

    registry = getattr(getattr(caching, "CacheImpl", None), "_locator_classes", None)
    if registry is None:   # a numba without this (internal) list: its own stamps, as a pip upgrade leaves them
        log.warning("numba's cache locators not found: hand-written kernels cached by their own files")
        return
    if any(getattr(cls, "_dlc_kernels", False) for cls in registry):
        return

    class KernelFiles:
        _dlc_kernels = True

        def get_source_stamp(self):
            return kernels_digest()

        @classmethod
        def from_function(cls, py_func, py_file):
            if Path(py_file).resolve().parent != _KERNELS_DIR.resolve():
                return None
            return super().from_function(py_func, py_file)

    locators = [type(f"Kernel{base.__name__}", (KernelFiles, base), {"__module__": __name__}) for base in
                (caching.UserProvidedCacheLocator, caching.InTreeCacheLocator, caching.UserWideCacheLocator)]
    registry[:0] = locators


KERNEL_MODULES = ("threads", "fastmath", "gemm", "microkernel", "conv_tiles", "conv", "conv_nhwc", "pool", "random",
                  "views", "attention", "norm", "sums", "library")


def load_kernel_modules() -> None:
    """Import the hand-written kernels (dlc/kernels/cpu/*.py) under the names generated modules import them by."""
    _stamp_kernel_caches_with_digest()
    for stem in KERNEL_MODULES:
        name = f"dlc_cpu_{stem}"
        if name in sys.modules:
            continue
        path = _KERNELS_DIR / f"{stem}.py"
        if not path.exists():
            raise FileNotFoundError(f"the CPU backend's hand-written kernels are missing: {path}")
        import_file(name, path)


_WRITTEN: set[str] = set()   # generated modules this process wrote: numba's cache holds nothing of them yet


def load_module(gen: GeneratedModule, directory: Path):
    """Write the source under its hash and import it; a cached file is used only if it is that source.

    numba's cache keys on the file, so an unchanged file is kept as it is; a
    missing, truncated or edited one is rewritten (atomically) before the import.
    """
    name = f"dlc_gen_{gen.digest}"
    if name in sys.modules:
        return sys.modules[name]
    source = gen.source.encode()
    if digest(source, len(gen.digest)) != gen.digest:
        raise ValueError(f"generated module {name}: its name is not the hash of its source")
    path = directory / f"{name}.py"
    try:
        written = ensure_file(path, source)
    except OSError as e:  # the folder stopped being writable (full, read-only): a private one instead
        path = replace_unusable(directory, e) / f"{name}.py"
        written = ensure_file(path, source)
    if written:
        _WRITTEN.add(name)
    return import_file(name, path)


def import_file(name: str, path) -> object:
    """Import the Python file at path as module `name` (registered before it runs, as an import would)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


MAX_PLANS = 32   # bindings of the symbolic dims whose plans (and arenas) a function keeps


class _Plan:
    """Everything a call needs for one binding of the symbolic dims; also one workspace of it.

    Shared by the plan's workspaces: env, memory, S, out_shapes, early, late,
    free (the idle workspaces). Each workspace's own: arena, out_views (the
    outputs as views of its arena), objects (non-array values, scan bindings).
    """

    __slots__ = ("env", "memory", "arena", "S", "out_views", "out_shapes", "objects", "early", "late", "free")


def _addresses(arrays) -> dict[int, int]:
    """id(param node) -> the data address of its array, which the generated code views by address; each array
    checked to be what that code assumes (C-contiguous, aligned, writable, of its node's dtype and shape)."""
    out = {}
    for a, node in arrays:
        if not (isinstance(a, np.ndarray) and a.flags.c_contiguous and a.flags.aligned and a.flags.writeable
                and a.dtype == np.dtype(node.dtype) and a.shape == tuple(node.shape)):
            raise TypeError(f"parameter {node.attr('name')!r} must be a writable, C-contiguous {node.dtype} "
                            f"array of shape {tuple(node.shape)}")
        out[id(node)] = a.ctypes.data
    return out


class CPUBackend:
    """Runs a compiled function as numba-generated native code; see dlc/codegen/numba.py."""

    name = "cpu"

    def __init__(self, fn, program, fastmath: bool = False, parallel: bool = False, dump: str | None = None,
                 cache: str | None = None, max_plans: int = MAX_PLANS, **unknown):
        if unknown:
            raise TypeError(f"unknown option(s) for the cpu target: {', '.join(sorted(unknown))}")
        if not isinstance(max_plans, int) or isinstance(max_plans, bool) or max_plans < 1:
            raise ValueError(f"max_plans must be a positive int, not {max_plans!r}")
        self.fn = fn
        self.program = program
        self.max_plans = max_plans
        self.stats: dict = {}
        t1 = time.perf_counter()
        load_kernel_modules()  # numba and the hand-written kernels, once per process (timed as import)
        digest = kernels_digest()
        t_kernels = time.perf_counter() - t1
        t1 = time.perf_counter()
        self.generated = render_program(self.program, title=repr(fn), fastmath=fastmath, parallel=parallel,
                                        kernels_digest=digest)
        t2 = time.perf_counter()
        dump = dump or os.environ.get("DLC_DUMP")
        if dump:
            Path(dump).mkdir(parents=True, exist_ok=True)
            (Path(dump) / f"dlc_gen_{self.generated.digest}.py").write_text(self.generated.source)
        self.module = load_module(self.generated, cache_dir(cache))
        t3 = time.perf_counter()
        self.stats.update(optimize_s=program.stats.get("optimize_s", 0.0), render_s=t2 - t1,
                          import_s=t3 - t2 + t_kernels, numba_compile_s=0.0,
                          kernels=len(self.program.kernels), distinct_kernels=self.generated.distinct_kernels,
                          segments=sum(s.native for s in self.generated.segments),
                          fallbacks=[s.reason for s in self.generated.segments if not s.native])
        log.info("dlc cpu: compiling %s: %d kernels (%d distinct), module %s", fn,
                 len(self.program.kernels), self.generated.distinct_kernels, self.generated.digest)
        self._segments = [(getattr(self.module, s.func), None) if s.native else (None, s.kernels[0])
                          for s in self.generated.segments]
        self._seen_signatures = [-1] * len(self._segments)  # compiled signatures seen per segment
        from .cpu_scan import lower_scans, results_at_their_scan  # scan loops as native code

        self._native, self._scans = lower_scans(self, fastmath=fastmath, parallel=parallel, dump=dump, cache=cache)
        # written just now: its functions compile at the first call, shared with helper processes
        self._cold = self.module.__name__ in _WRITTEN
        # the program as the memory planner sees it: a scan writes its results' buffers itself
        self._layout = results_at_their_scan(program) if self._native else program
        self.stats["fallbacks"] = [s.reason for s in self.generated.segments
                                   if not s.native and id(s.kernels[0]) not in self._native]
        for seg in self.generated.segments:
            if not seg.native and id(seg.kernels[0]) not in self._native:
                op = seg.kernels[0].nodes[0].op
                if op not in _FALLBACK_LOGGED and op not in HOST_CALLS:  # a collective is a host call by design
                    _FALLBACK_LOGGED.add(op)
                    log.warning("dlc cpu: %s runs through its numpy reference (%s)", op, seg.reason)
        # the arrays the outer functions take, in order: an input (fed per call) or a fixed array
        store = fn.store
        self._externals = []   # (kind, what): FIXED array, INPUT id(node), or OUTPUT position in program.outputs
        self._output_externals = {}
        for n in self.generated.externals:
            if n.op == "input":
                self._externals.append((INPUT, id(n)))
            elif n.op == "param":
                self._externals.append((FIXED, store[n.attr("name")]))
            elif n.op == "const":  # a writable copy: kernels shared with arena views then need no second compilation
                self._externals.append((FIXED, np.array(n.value, order="C")))
            else:
                pos = next(i for i, o in enumerate(self.program.outputs) if o is n)
                self._externals.append((OUTPUT, pos))
                for i, o in enumerate(self.program.outputs):  # (an output listed twice is one array)
                    if o is n:
                        self._output_externals[i] = len(self._externals) - 1
        # With many parameters the generated code reads them by their data addresses (slots of S): taken once,
        # since a parameter's array keeps its identity (dlc.Store assigns into it), and held by this backend
        self._direct = self.generated.direct if self.generated.addressed else None
        self._address_of = _addresses([(self._externals[i][1], self.generated.externals[i])
                                       for i in self.generated.addressed])
        self._ext_index = {id(n): i for i, n in enumerate(self.generated.externals)}
        self._input_positions = [k for k, n in enumerate(self.generated.externals) if n.op == "input"]
        self._out_dtypes = [np.dtype(n.dtype) for n in self.program.outputs]
        self._plans: OrderedDict = OrderedDict()   # binding -> _Plan, least recently used first
        self._recent = None                         # the binding of the last plan looked up
        self._debug_functions: dict = {}
        self._python_updates = [(k, v) for k, v in self.program.updates
                                if id(self._storage(v)) in self._ext_index and id(self.program.storage_of(v))
                                not in self.generated.redirects]
        self.stats["updates_in_place"] = len(self.generated.redirects)
        self._update_lock = update_lock(fn.store) if self.program.updates else None

    def _storage(self, node: Node) -> Node:
        """The node owning node's buffer: an arena value, or a source (an update may write into its param)."""
        storage = self.program.storage_of(node)
        return self.generated.redirects.get(id(storage), storage)

    # ---- plans

    def _plan(self, env: dict) -> _Plan:
        """The plan of a binding, made on first use; the least recently used beyond max_plans is dropped."""
        key = tuple(env.items())
        plans = self._plans
        plan = plans.get(key)
        if plan is None:
            plan = plans.setdefault(key, self._make_plan(env))
        self._recent = key   # calls with the binding used last skip the bookkeeping below
        try:
            plans.move_to_end(key)
        except KeyError:  # dropped by another thread meanwhile: this call still uses it
            pass
        while len(plans) > self.max_plans:
            try:
                plans.popitem(last=False)
            except KeyError:
                break
        return plan

    def _make_plan(self, env: dict) -> _Plan:
        plan = _Plan()
        plan.env = dict(env)
        plan.memory = mem = self._layout.memory_plan(env)
        plan.S = np.array([self._address_of[id(s[1])] if s[0] == "address" else self._slot_value(s, mem, env)
                           for s in self.generated.slots] or [0], dtype=np.int64)
        plan.out_shapes = [shape_eval(n.shape, env) for n in self.program.outputs]
        plan.free = []
        self._attach_arena(plan)
        # how each output reaches the caller: its own fresh array, a copy of an arena view, or a copy
        # taken before the call (a source: the value before this call's updates) or after it (a value
        # in an output or parameter array: a reshape of an output, an update written in place)
        plan.early, plan.late = [], []
        for i, n in enumerate(self.program.outputs):
            if plan.out_views[i] is None and i not in self._output_externals:
                storage = self.program.storage_of(n)
                in_place = id(storage) in self.generated.redirects or id(storage) in self._ext_index and \
                    storage.op not in ("input", "param", "const")
                (plan.late if in_place else plan.early).append(i)
        self.stats["arena_bytes"] = mem.arena_bytes
        return plan

    def _attach_arena(self, ws: _Plan) -> None:
        """Give a workspace its own arena, the outputs' views of it, and its own non-array values."""
        # a whole number of 64-byte lines: the arena can be viewed as any dtype
        ws.arena = np.empty(-(-max(ws.memory.arena_bytes, 1) // 64) * 64, dtype=np.uint8)
        ws.objects = {}  # values that are not arrays (a scan's tuple of results, its loop's binding), by key
        ws.out_views = [None if i in self._output_externals else self._arena_view(n, ws)
                        for i, n in enumerate(self.program.outputs)]

    def _workspace(self, plan: _Plan) -> _Plan:
        """A new workspace of plan: the plan's shared parts, an arena of its own."""
        ws = _Plan()
        for name in ("env", "memory", "S", "out_shapes", "early", "late", "free"):
            setattr(ws, name, getattr(plan, name))
        self._attach_arena(ws)
        return ws

    @staticmethod
    def _slot_value(slot, mem, env) -> int:
        kind, what = slot[:2]
        if kind == "index":
            return mem.offsets[id(what)] // slot[2]
        if kind == "dim":
            return dim_eval(what, env)
        if kind == "offset":
            return mem.offsets[id(what)]
        if kind == "count":
            return int(np.prod(shape_eval(what.shape, env), dtype=np.int64))
        if kind == "size":
            shape = shape_eval(what.inputs[0].shape, env)
            return int(np.prod([shape[a] for a in what.attr("axes")], dtype=np.int64))
        raise AssertionError(slot)

    def _arena_view(self, node: Node, plan: _Plan):
        """node's value as a numpy view of the arena, or None when it lives outside it."""
        storage = self._storage(node)
        if id(storage) not in plan.memory.offsets or id(storage) in self._ext_index:
            return None
        shape = shape_eval(node.shape, plan.env)
        off = plan.memory.offsets[id(storage)]
        count = int(np.prod(shape, dtype=np.int64))
        return plan.arena[off:off + count * np.dtype(node.dtype).itemsize].view(node.dtype).reshape(shape)

    def _value_view(self, node: Node, plan: _Plan, X: list, env: dict):
        """Any value a kernel reads or writes, as a numpy array (the slow paths: fallbacks, debugging)."""
        if node.op == "size":
            return np.asarray(self._slot_value(("size", node), None, env), dtype=node.dtype)
        if node.op == "const":
            return node.value
        if node.dtype == TUPLE:
            return plan.objects[id(self.program.storage_of(node))]
        view = self._arena_view(node, plan)
        if view is not None:
            return view
        return X[self._ext_index[id(self._storage(node))]].reshape(shape_eval(node.shape, env))

    # ---- calls

    def run(self, feeds: dict, env: dict) -> list[np.ndarray]:
        # the hot path of every call: kept to a plan lookup, a workspace, one native call and the output copies
        key = tuple(env.items())
        plan = self._plans.get(key)
        if plan is None or key != self._recent:
            plan = self._plan(env)
        free = plan.free
        try:
            ws = free.pop()
        except IndexError:  # every workspace of the plan is in use by another thread
            ws = self._workspace(plan)
        lock = self._update_lock  # parameters are read and written in place: one training call at a time
        if lock is not None:
            lock.acquire()
        try:
            X = self._arguments(feeds, ws)
            for k in self._input_positions:
                if not X[k].dtype.isnative:
                    X[k] = X[k].astype(X[k].dtype.newbyteorder("="))
            # values returned as they are before this call's updates (an output may be a parameter)
            early = {i: self._value_view(self.program.outputs[i], ws, X, env).copy() for i in ws.early}
            pending = [(k, self._value_view(v, ws, X, env).copy()) for k, v in self._python_updates]
            for i, (func, kernel) in enumerate(self._segments):
                if func is None:
                    self._fallback(kernel, ws, X, env)
                elif self._seen_signatures[i] == len(func.overloads):
                    func(ws.arena, ws.S, *(X if self._direct is None else self._outer_args(X)))
                else:
                    self._call(i, func, ws, X)
            for i in ws.late:
                early[i] = self._value_view(self.program.outputs[i], ws, X, env).copy()
            outs = [X[self._output_externals[i]] if i in self._output_externals else early[i] if v is None
                    else v.copy() for i, v in enumerate(ws.out_views)]
            for key, value in pending:
                self.fn.store[key] = value
            return outs
        finally:
            if lock is not None:
                lock.release()
            free.append(ws)

    def _outer_args(self, X: list) -> list:
        return [X[k] for k in self._direct]

    def _arguments(self, feeds: dict, plan: _Plan) -> list:
        """The arrays the outer functions take: inputs, parameters, constants, and fresh output arrays."""
        return [what if kind == FIXED else feeds[what] if kind == INPUT else
                np.empty(plan.out_shapes[what], self._out_dtypes[what]) for kind, what in self._externals]

    def _compile_ahead(self, ws: _Plan, X: list) -> None:
        """The first call of a newly generated module: compile all its functions (and its scans' loops) for
        these arguments before the first of them runs, sharing them with helper processes
        (runtime/compile_workers.py)."""
        self._cold = False
        _WRITTEN.discard(self.module.__name__)
        workers = compile_workers.worker_count()
        t0 = time.perf_counter()
        jobs = self._compile_jobs(ws, X)
        # (a scan run before any outer function, the program's first kernel, has compiled its loop already)
        jobs += [scan.compile_job(ws, X, ws.env) for scan in self._scans if scan.loop is not None and
                 not scan.compiled]
        self.stats.update(compile_workers.compile_all(jobs, workers))
        self.stats["numba_compile_s"] += time.perf_counter() - t0

    def _compile_jobs(self, ws: _Plan, X: list) -> list[compile_workers.Job]:
        """The generated module's functions, each with the argument types its callers pass (ModuleFunction)."""
        import numba

        def argtype(arg: str):
            if arg == "arena":
                return numba.typeof(ws.arena)
            if arg.startswith("arena_"):
                return numba.typeof(ws.arena.view(np.dtype(arg[len("arena_"):])))
            if arg == "S":
                return numba.typeof(ws.S)
            if arg == "at":
                return numba.types.int64
            return numba.typeof(X[int(arg[1:])])

        name, path = self.module.__name__, self.module.__file__
        return [compile_workers.Job(name, path, f.name, tuple(map(argtype, f.args)), f.level,
                                    compile_workers.source_lines(getattr(self.module, f.name)))
                for f in self.generated.functions]

    def _call(self, i: int, func, plan: _Plan, X: list) -> None:
        """A call that compiles: timed, and logged with the reason when it is not the first."""
        _quiet_first_class_warning()
        if self._cold:   # the module's first compile: all of it at once, shared with helpers
            self._compile_ahead(plan, X)
        seen = self._seen_signatures[i]
        t0 = time.perf_counter()
        func(plan.arena, plan.S, *(X if self._direct is None else self._outer_args(X)))
        self.stats["numba_compile_s"] += time.perf_counter() - t0
        if seen > 0:
            log.info("dlc cpu: recompiled %s for new argument types (%s)", func.__name__,
                     ", ".join(str(getattr(x, "dtype", type(x))) + ("" if x.flags.writeable else " read-only")
                               for x in X))
        self._seen_signatures[i] = len(func.overloads)

    def _fallback(self, kernel, plan: _Plan, X: list, env: dict) -> None:
        """Run one kernel node by node with the numpy references, writing its outputs in place."""
        native = self._native.get(id(kernel))
        if native is not None:  # a scan, or one of its results (dlc/runtime/cpu_scan.py)
            return native(plan, X, env)
        values = {}
        for n in kernel.inputs:
            values[id(n)] = self._value_view(n, plan, X, env)
        for n in kernel.nodes:
            args = [values[id(x)] if id(x) in values else self._value_view(x, plan, X, env) for x in n.inputs]
            value = node_value(n, args, shape_eval(n.shape, env))  # its errors name the user's line
            values[id(n)] = value if n.dtype == TUPLE else np.asarray(value, dtype=n.dtype)
        for n in kernel.outputs:
            if n.dtype == TUPLE:
                plan.objects[id(n)] = values[id(n)]
            else:
                np.copyto(self._value_view(n, plan, X, env), values[id(n)])

    # ---- debugging

    def kernel_values(self, feeds: dict, env: dict) -> dict[int, np.ndarray]:
        """Run kernel by kernel (slow) and return a copy of every kernel output, by node id."""
        out: dict[int, np.ndarray] = {}

        def keep(kernel, run, value_of):
            run()
            for n in kernel.outputs:
                if n.dtype != TUPLE:
                    out[id(n)] = np.array(value_of(n))
        self._kernel_by_kernel(feeds, env, keep)
        return out

    def kernel_times(self, feeds: dict, env: dict, repeat: int = 5) -> list[tuple[object, float]]:
        """(kernel, median seconds of `repeat` runs) for each kernel in program order, each run on its own
        (a kernel that the module inlines is compiled as a function of its own for this)."""
        out = []

        def time_it(kernel, run, value_of):
            run()  # compiles, and leaves the outputs later kernels read
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                run()
                times.append(time.perf_counter() - t0)
            out.append((kernel, float(np.median(times))))
        self._kernel_by_kernel(feeds, env, time_it)
        return out

    def step_times(self, feeds: dict, env: dict, repeat: int = 5):
        """Each kernel's median seconds inside the real step, in program order, the updates' copy and each
        step's seconds (a StepTimes): a copy of the module with a clock read at each kernel
        (runtime/cpu_profile.py)."""
        from .cpu_profile import step_times

        return step_times(self, feeds, env, repeat)

    def _kernel_by_kernel(self, feeds: dict, env: dict, each) -> None:
        """each(kernel, run, value_of) for every kernel in order; run() runs it alone on the plan's buffers."""
        plan, X = self._copied_arguments(feeds, env)

        def value_of(n):
            return self._value_view(n, plan, X, env)
        for seg in self.generated.segments:
            for item in seg.kernels:
                if isinstance(item, RenderedKernel):
                    f, args = self._debug_function(item), self._kernel_args(item, plan, X, env)
                    each(item.kernel, lambda f=f, args=args: f(*args), value_of)
                else:
                    each(item, lambda item=item: self._fallback(item, plan, X, env), value_of)

    def _copied_arguments(self, feeds: dict, env: dict) -> tuple[_Plan, list]:
        """A plan of its own and the outer functions' arguments for a debugging or profiling run, the parameters
        copied: updates written in place must not reach the store from such a run."""
        plan = self._make_plan(env)
        return plan, [x.copy() if kind == FIXED else x for x, (kind, _) in zip(self._arguments(feeds, plan),
                                                                               self._externals)]

    def _debug_function(self, rk: RenderedKernel):
        """The kernel as a function over views of its buffers (the module's take arena offsets, and inlined
        kernels have none); compiled on demand."""
        cached = self._debug_functions.get(id(rk))
        if cached is None:
            namespace = dict(self.module.__dict__)
            namespace["JIT"] = dict(namespace["JIT"], cache=False)  # source from exec cannot be cached
            namespace["JIT_PARALLEL"] = dict(namespace["JIT_PARALLEL"], cache=False)
            exec(rk.function_text().replace("FUNC_NAME", "kernel"), namespace)
            cached = self._debug_functions[id(rk)] = namespace["kernel"]
        return cached

    def _kernel_args(self, rk: RenderedKernel, plan: _Plan, X: list, env: dict) -> list:
        args = []
        for a in rk.args:
            if a.kind == "dim":
                args.append(dim_eval(a.dim, env))
            elif a.kind == "scalar":
                args.append(self._slot_value(("size", a.node), None, env))
            else:
                v = self._value_view(a.node, plan, X, env)
                if a.node.op == "const":
                    v = np.array(v)
                args.append(v.reshape(-1) if a.kind == "flat" or v.ndim == 0 else v)
        return args

    def memory_plans(self) -> list:
        """The memory plan of each binding of the symbolic dims this function has been called with."""
        return [p.memory for p in list(self._plans.values())]

    def source(self) -> str:
        """The generated module's Python source."""
        return self.generated.source

    def __repr__(self) -> str:
        return f"<CPUBackend {self.generated.digest}: {self.stats.get('kernels')} kernels>"


__all__ = ["CPUBackend", "cache_dir", "is_scalar_node"]
