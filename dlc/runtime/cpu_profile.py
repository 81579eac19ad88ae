"""Kernel times inside a CPU function's real step: a copy of its generated module with a clock read at each kernel.

`dlc.inspect.profile(fn, *args, in_step=True)` reports these. Kernels timed one
by one (profile's default, `CPUBackend.kernel_times`) run each on its own,
their inputs still in cache from the run before; inside the step a kernel
finds its inputs where the kernels before it left them, shares the cores
with what BLAS's and numba's pools are still doing, and W10's memory-bound
kernels took 1.5-2x as long there as alone. What to speed up is what takes
the time in the step.

The copy: each kernel's code in the outer functions (inlined, or the call of
a shared kernel function) starts with `_tick(k)`, and each segment function
ends with `_tick(-1)`. `_tick` stores k and the processor's cycle counter
(`llvm.readcyclecounter`) into a buffer whose address is a constant of the
compiled code, so the copy is compiled without numba's cache (its machine
code holds this process's addresses) under a module name of its own. A
kernel's time is the cycles from its tick to the next, converted to seconds
at the counter's rate, measured against `time.perf_counter`. The step runs
on copies of the parameters: nothing is written to the store.
"""

from __future__ import annotations

import re
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from llvmlite import ir as llvm_ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

# a kernel's first line in an outer function: its comment, or the call of its shared function
_KERNEL_LINE = re.compile(r"^(\s+)(?:call_kernel\(k_\w+, .*\)\s+)?# k(\d+): ")
_DEF_LINE = re.compile(r"^def (\w+)\(")
_UPDATE_LINE = re.compile(r"^(\s+)copy_flat\(.*\)\s+# update ")
_RETURN_LINE = re.compile(r"^(\s+)return\b")
_JIT_LINE = "JIT = dict(cache=True,"
END = -1       # a segment function's end: the time since its last kernel belongs to no kernel
UPDATES = -2   # the copies of updated parameters into the store, after the last kernel


class Clock:
    """The buffer `_tick` writes (kernel, cycles) pairs into, its intrinsic, and an njit `tick` Python calls."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.stamps = np.zeros((capacity, 2), np.int64)
        self.count = np.zeros(1, np.int64)
        self.intrinsic = _tick_intrinsic(self.stamps.ctypes.data, self.count.ctypes.data, capacity)
        ticker = self.intrinsic

        @njit(cache=False)
        def tick(kernel):
            ticker(kernel)
        tick(END)   # compiled now, not inside a timed interval
        self.tick = tick

    def reset(self) -> None:
        self.count[0] = 0

    def records(self) -> np.ndarray:
        n = int(self.count[0])
        if n > self.capacity:
            raise RuntimeError(f"profile: {n} clock reads in one step, room for {self.capacity}")
        return self.stamps[:n]

    def cycles_per_second(self, pause: float = 0.05) -> float:
        self.reset()
        self.tick(END)
        t0 = time.perf_counter()
        time.sleep(pause)
        t1 = time.perf_counter()
        self.tick(END)
        (_, c0), (_, c1) = self.records()
        return (c1 - c0) / (t1 - t0)


def _tick_intrinsic(stamps_address: int, count_address: int, capacity: int):
    @intrinsic
    def _tick(typingctx, kernel):
        if not isinstance(kernel, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            i64 = llvm_ir.IntType(64)
            k = context.cast(builder, args[0], signature.args[0], types.int64)
            count = builder.inttoptr(llvm_ir.Constant(i64, count_address), i64.as_pointer())
            n = builder.load(count)
            clock = cgutils.get_or_insert_function(builder.module, llvm_ir.FunctionType(i64, []),
                                                   "llvm.readcyclecounter")
            now = builder.call(clock, [])
            with builder.if_then(builder.icmp_signed("<", n, llvm_ir.Constant(i64, capacity))):
                base = builder.inttoptr(llvm_ir.Constant(i64, stamps_address), i64.as_pointer())
                slot = builder.gep(base, [builder.mul(n, llvm_ir.Constant(i64, 2))])
                builder.store(k, slot)
                builder.store(now, builder.gep(slot, [llvm_ir.Constant(i64, 1)]))
            builder.store(builder.add(n, llvm_ir.Constant(i64, 1)), count)
            return context.get_dummy_value()
        return types.void(kernel), codegen
    return _tick


def clocked_source(source: str, segment_functions: set[str]) -> str:
    """The generated module's source with `_tick(k)` before each kernel of its outer functions, `_tick(-2)`
    before each copy of an updated parameter into the store, and `_tick(-1)` before each return and at the end
    of each segment function; compiled without numba's cache."""
    if source.count(_JIT_LINE) != 1:
        raise RuntimeError("profile: the generated module's JIT options are not where they are expected")
    lines = source.replace(_JIT_LINE, "JIT = dict(cache=False,").splitlines()
    out: list[str] = []
    current = None

    def end_segment():
        while out and not out[-1].strip():
            out.pop()
        out.append(f"    _tick({END})")
        out.append("")
    for line in lines:
        if line and not line[0].isspace() and current in segment_functions:
            end_segment()
            current = None
        m = _DEF_LINE.match(line)
        if m:
            current = m.group(1)
        m = _KERNEL_LINE.match(line)
        if m:
            out.append(f"{m.group(1)}_tick({int(m.group(2))})")
        m = _UPDATE_LINE.match(line)
        if m:
            out.append(f"{m.group(1)}_tick({UPDATES})")
        m = _RETURN_LINE.match(line)
        if m and current in segment_functions:
            out.append(f"{m.group(1)}_tick({END})")
        out.append(line)
    if current in segment_functions:
        end_segment()
    return "\n".join(out) + "\n"


@dataclass
class StepTimes:
    kernels: list[tuple[object, float]]   # (kernel, median seconds inside the step), in program order
    updates: float                        # median seconds copying updated parameters into the store
    steps: list[float]                    # each step's seconds, its first clock read to its last


_PROFILERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # backend -> its StepProfiler


def step_times(backend, feeds: dict, env: dict, repeat: int) -> StepTimes:
    """The kernels' times inside the step; the clocked module is compiled on the first call for a backend (about
    as long as the function's own first call)."""
    profiler = _PROFILERS.get(backend)
    if profiler is None:
        profiler = _PROFILERS[backend] = StepProfiler(backend)
    return profiler.times(feeds, env, repeat)


class StepProfiler:
    """A backend's clocked module and the clock it reads."""

    def __init__(self, backend, capacity: int = 1 << 16):
        from .cpu import import_file

        self.backend = backend
        self.clock = Clock(capacity)
        self._dir = tempfile.TemporaryDirectory(prefix="dlc_profile_")
        name = f"{backend.module.__name__}_clocked"
        path = Path(self._dir.name) / f"{name}.py"
        segments = [s for s in backend.generated.segments if s.native]
        path.write_text(clocked_source(backend.generated.source, {s.func for s in segments}))
        self.module = import_file(name, path)
        self.module._tick = self.clock.intrinsic
        self.segments = [(getattr(self.module, s.func) if s.native else None, None if s.native else s.kernels[0])
                         for s in backend.generated.segments]
        self.index = {id(k): i for i, k in enumerate(backend.program.kernels)}

    def times(self, feeds: dict, env: dict, repeat: int) -> StepTimes:
        from .cpu import _quiet_first_class_warning

        be = self.backend
        plan, X = be._copied_arguments(feeds, env)
        args = X if be._direct is None else be._outer_args(X)
        _quiet_first_class_warning()

        def step():
            self.clock.reset()
            for func, kernel in self.segments:
                if func is None:
                    self.clock.tick(self.index[id(kernel)])
                    be._fallback(kernel, plan, X, env)
                    self.clock.tick(END)
                else:
                    func(plan.arena, plan.S, *args)
            return self.clock.records().copy()
        step()   # compiles the clocked module
        rate = self.clock.cycles_per_second()
        spent: dict[int, list[float]] = {i: [] for i in [*range(len(be.program.kernels)), UPDATES]}
        totals = []
        for _ in range(repeat):
            records = step()
            this = dict.fromkeys(spent, 0.0)
            for (k, c0), (_, c1) in zip(records[:-1], records[1:]):
                if k != END:
                    this[int(k)] += (c1 - c0) / rate
            for k, t in this.items():
                spent[k].append(t)
            totals.append(float((records[-1, 1] - records[0, 1]) / rate) if len(records) else 0.0)
        kernels = [(kernel, float(np.median(spent[i]))) for i, kernel in enumerate(be.program.kernels)]
        return StepTimes(kernels, float(np.median(spent[UPDATES])), totals)
