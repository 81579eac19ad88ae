"""Runs CUDA C kernels on the CPU: a C++ prelude for the CUDA built-ins, g++, and ctypes.

The same kernel text nvcc compiles is compiled by g++ after a prelude that
defines threadIdx/blockIdx/blockDim/gridDim, __shared__ (as static: blocks
run one after another), atomics (threads never overlap) and warp shuffles.
Every CUDA thread of a block is a coroutine (ucontext) with its own stack:
__syncthreads() switches to the next thread, and the block moves on once
all live threads wait at the barrier; a shuffle is a warp-wide barrier with
a value exchange. Kernels therefore run unmodified, barriers included, and
a barrier some threads never reach is reported as a deadlock, not hung on.
Kernels without barriers run each thread as a plain call (much faster).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cache import cache_dir as checked_cache_dir
from ..cache import read_checked, replace_unusable, write_atomic
from ..errors import DlcError

EMULATOR_PRELUDE = r"""
// ---- dlc CUDA emulator prelude: CUDA built-ins for g++ -------------------
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <csetjmp>
#include <ucontext.h>

struct dim3 { unsigned x, y, z; dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {} };
struct uint3 { unsigned x, y, z; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) float2 { float x, y; };
static inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

static uint3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __restrict__ __restrict
#define __ldg(p) (*(p))
#define __expf expf
#define __logf logf
#define __fdividef(a, b) ((a) / (b))

namespace emu {
enum State { RUNNING, AT_BLOCK_BARRIER, AT_WARP_BARRIER, DONE };
struct Thread { ucontext_t ctx; jmp_buf jb; State state; bool started; unsigned tid; uint3 idx; };

static const size_t kStack = 64 * 1024;
static Thread* threads = nullptr;
static char* stacks = nullptr;
static unsigned capacity = 0, nthreads = 0, current = 0;
static jmp_buf scheduler;
static const std::function<void()>* body = nullptr;
static bool coroutines = false;
static int error = 0;  // 1: barrier in a kernel run without coroutines, 2: deadlock
static unsigned long long shfl_slot[1024];

// Switches are _setjmp/_longjmp (no signal-mask system call, unlike swapcontext);
// ucontext only gives each thread its own stack when it starts.
static void entry() {
  (*body)();
  threads[current].state = DONE;
  _longjmp(scheduler, 1);
}

static void yield(State s) {
  if (!coroutines) { error = 1; return; }
  threads[current].state = s;
  if (!_setjmp(threads[current].jb)) _longjmp(scheduler, 1);
}

static void ensure(unsigned n) {
  if (n <= capacity) return;
  free(threads); free(stacks);
  threads = (Thread*)calloc(n, sizeof(Thread));
  stacks = (char*)malloc((size_t)n * kStack);
  capacity = n;
}

// releases the threads waiting at a barrier that every thread of its scope
// reached; a thread that already exited never arrives (CUDA requires barriers
// in uniform control flow), so its peers stay blocked and report a deadlock
static bool release() {
  bool any = false, block_ready = true;
  for (unsigned t = 0; t < nthreads; ++t)
    if (threads[t].state != AT_BLOCK_BARRIER) block_ready = false;
  for (unsigned w = 0; w < nthreads; w += 32) {
    unsigned end = w + 32 < nthreads ? w + 32 : nthreads;
    bool warp_ready = true, waiting = false;
    for (unsigned t = w; t < end; ++t) {
      if (threads[t].state == AT_WARP_BARRIER) waiting = true;
      else warp_ready = false;
    }
    if (waiting && warp_ready) {
      for (unsigned t = w; t < end; ++t) if (threads[t].state == AT_WARP_BARRIER) threads[t].state = RUNNING;
      any = true;
    }
  }
  if (!any && block_ready) {
    for (unsigned t = 0; t < nthreads; ++t)
      if (threads[t].state == AT_BLOCK_BARRIER) { threads[t].state = RUNNING; any = true; }
  }
  return any;
}

static void set_thread(unsigned t) { current = t; threadIdx = threads[t].idx; }

static int run_block() {
  for (unsigned t = 0; t < nthreads; ++t) {
    if (!coroutines) { set_thread(t); (*body)(); if (error) return error; continue; }
    getcontext(&threads[t].ctx);
    threads[t].ctx.uc_stack.ss_sp = stacks + (size_t)t * kStack;
    threads[t].ctx.uc_stack.ss_size = kStack;
    threads[t].ctx.uc_link = nullptr;
    threads[t].state = RUNNING;
    threads[t].started = false;
    makecontext(&threads[t].ctx, entry, 0);
  }
  if (!coroutines) return 0;
  for (;;) {
    bool live = false;
    for (unsigned t = 0; t < nthreads; ++t) {
      if (threads[t].state != RUNNING) { live |= threads[t].state != DONE; continue; }
      set_thread(t);
      if (!_setjmp(scheduler)) {
        if (!threads[t].started) { threads[t].started = true; setcontext(&threads[t].ctx); }
        _longjmp(threads[t].jb, 1);
      }
      live |= threads[t].state != DONE;
    }
    if (!live) return 0;
    if (!release()) return 2;
  }
}

static int launch(dim3 grid, dim3 block, bool with_barriers, const std::function<void()>& fn) {
  nthreads = block.x * block.y * block.z;
  if (nthreads == 0 || nthreads > 1024) return 3;
  ensure(nthreads);
  for (unsigned t = 0; t < nthreads; ++t) {
    threads[t].tid = t;
    threads[t].idx = uint3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
  }
  body = &fn; coroutines = with_barriers; error = 0;
  gridDim = grid; blockDim = block;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = uint3{x, y, z};
        int rc = run_block();
        if (rc) return rc;
      }
  return 0;
}

template <class T> static T exchange(T v, unsigned src, bool valid) {
  static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
  unsigned me = threads[current].tid;
  memcpy(&shfl_slot[me], &v, sizeof(T));
  yield(AT_WARP_BARRIER);
  T out = v;
  if (valid && src < nthreads) memcpy(&out, &shfl_slot[src], sizeof(T));
  yield(AT_WARP_BARRIER);  // nobody overwrites a slot before every lane read it
  return out;
}
}  // namespace emu

static inline void __syncthreads() { emu::yield(emu::AT_BLOCK_BARRIER); }
static inline void __syncwarp(unsigned = 0xffffffffu) { emu::yield(emu::AT_WARP_BARRIER); }
template <class T> static inline T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
  unsigned me = emu::threads[emu::current].tid, lane = me % width;
  return emu::exchange(v, me - lane + (lane ^ mask), (lane ^ mask) < (unsigned)width);
}
template <class T> static inline T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
  unsigned me = emu::threads[emu::current].tid, lane = me % width;
  return emu::exchange(v, me + delta, lane + delta < (unsigned)width);
}
template <class T> static inline T __shfl_sync(unsigned, T v, int src, int width = 32) {
  unsigned me = emu::threads[emu::current].tid, lane = me % width;
  return emu::exchange(v, me - lane + (unsigned)src % width, true);
}
template <class T> static inline T min(T a, T b) { return b < a ? b : a; }
template <class T> static inline T max(T a, T b) { return a < b ? b : a; }
#define __fmul_rn(a, b) ((a) * (b))
#define __fadd_rn(a, b) ((a) + (b))
#define __dmul_rn(a, b) ((a) * (b))
#define __dadd_rn(a, b) ((a) + (b))
template <class T> static inline T atomicAdd(T* p, T v) { T old = *p; *p = old + v; return old; }
template <class T> static inline T atomicMax(T* p, T v) { T old = *p; if (v > old) *p = v; return old; }
template <class T> static inline T atomicExch(T* p, T v) { T old = *p; *p = v; return old; }
// ---- end of the emulator prelude -----------------------------------------
"""


class EmulatorError(DlcError):
    """A kernel the emulator could not compile or run (a deadlock at a barrier, a bad launch)."""


_RC = {1: "__syncthreads or a shuffle in a kernel launched without barrier support",
       2: "deadlock: some threads wait at a barrier that other live threads never reach",
       3: "block size must be between 1 and 1024 threads"}

CTYPES = {"ptr": ctypes.c_void_p, "i64": ctypes.c_longlong, "i32": ctypes.c_int, "f32": ctypes.c_float,
          "f64": ctypes.c_double, "u32": ctypes.c_uint}
C_TYPES = {"ptr": "void*", "i64": "long long", "i32": "int", "f32": "float", "f64": "double", "u32": "unsigned"}


@dataclass(frozen=True)
class KernelSignature:
    """A __global__ function's name and its parameters as (C type written in the source, arg kind)."""

    name: str
    params: tuple[tuple[str, str], ...]


def cache_dir() -> Path:
    """The emulator's compiled libraries: the folder "cuda-emulator" of dlc.cache's directory."""
    return checked_cache_dir("cuda-emulator")


def _library_is_intact(lib: Path) -> bool:
    """Whether lib hashes to the digest its sidecar recorded right after it was compiled."""
    try:
        recorded = lib.with_name(lib.name + ".sha256").read_text().strip()
    except (OSError, UnicodeDecodeError):
        return False
    return len(recorded) == 64 and read_checked(lib, recorded) is not None


def _wrapper(sig: KernelSignature, barriers: bool) -> str:
    params = ", ".join(f"{C_TYPES[kind]} a{i}" for i, (_, kind) in enumerate(sig.params))
    args = ", ".join(f"({ctype})a{i}" for i, (ctype, _) in enumerate(sig.params))
    sep = ", " if params else ""
    return (f'extern "C" int emu_{sig.name}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, '
            f"unsigned bz{sep}{params}) {{\n"
            f"  return emu::launch(dim3(gx, gy, gz), dim3(bx, by, bz), {str(barriers).lower()}, "
            f"[&] {{ {sig.name}({args}); }});\n}}\n")


def uses_barriers(source: str) -> bool:
    return bool(re.search(r"__syncthreads|__shfl|__syncwarp|dlc_block_reduce|dlc_block_arg_reduce|"
                          r"dlc_warp_reduce|dlc_gemm", source))


class EmulatedModule:
    """A CUDA module compiled for the CPU; `launch(name, grid, block, args)` runs one kernel."""

    def __init__(self, source: str, signatures: list[KernelSignature], *, optimize: str = "-O1"):
        self.signatures = {s.name: s for s in signatures}
        text = EMULATOR_PRELUDE + "\n" + source + "\n" + "".join(
            _wrapper(s, uses_barriers(source)) for s in signatures)
        digest = hashlib.sha256((text + optimize).encode()).hexdigest()[:20]
        folder = cache_dir()
        lib = folder / f"emu_{digest}.so"
        if not _library_is_intact(lib):  # missing, truncated or edited: compiled again, never loaded
            try:
                self._compile(text, lib, optimize)
            except OSError as e:  # the folder stopped being writable: a private one instead
                lib = replace_unusable(folder, e) / lib.name
                self._compile(text, lib, optimize)
        self.lib = ctypes.CDLL(str(lib))
        self.text = text
        for s in signatures:
            fn = getattr(self.lib, f"emu_{s.name}")
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_uint] * 6 + [CTYPES[kind] for _, kind in s.params]

    @staticmethod
    def _compile(text: str, lib: Path, optimize: str) -> None:
        """Compile into a fresh temporary name, then rename it over lib (a loaded library is never rewritten in
        place) and record its hash in a sidecar."""
        src = lib.with_suffix(".cpp")
        write_atomic(src, text.encode())
        fd, tmp = tempfile.mkstemp(dir=lib.parent, prefix=f".{lib.name}.", suffix=".tmp")
        os.close(fd)
        # -U_FORTIFY_SOURCE: the fortified longjmp refuses to jump between coroutine stacks
        cmd = ["g++", "-std=c++17", optimize, "-U_FORTIFY_SOURCE", "-shared", "-fPIC", "-fno-strict-aliasing", "-w",
               "-o", str(tmp), str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            Path(tmp).unlink(missing_ok=True)
            raise EmulatorError(f"g++ could not compile the emulated kernels ({src}):\n{proc.stderr[-4000:]}")
        built = hashlib.sha256(Path(tmp).read_bytes()).hexdigest()
        os.replace(tmp, lib)
        write_atomic(lib.with_name(lib.name + ".sha256"), built.encode())

    def launch(self, name: str, grid, block, args) -> None:
        grid = tuple(grid) + (1,) * (3 - len(grid))
        block = tuple(block) + (1,) * (3 - len(block))
        sig = self.signatures[name]
        if len(args) != len(sig.params):
            raise EmulatorError(f"kernel {name} takes {len(sig.params)} arguments, got {len(args)}")
        converted = [_convert(a, kind) for a, (_, kind) in zip(args, sig.params)]
        rc = getattr(self.lib, f"emu_{name}")(*grid, *block, *converted)
        if rc:
            raise EmulatorError(f"kernel {name} with grid {grid}, block {block}: {_RC.get(rc, rc)}")


def _convert(value, kind: str):
    if kind == "ptr":
        if isinstance(value, np.ndarray):
            return value.ctypes.data
        return int(value)
    if kind in ("f32", "f64"):
        return float(value)
    return int(value)
