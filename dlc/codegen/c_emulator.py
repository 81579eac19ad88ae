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

Stricter than a GPU where it can be (with the guarded allocations of
dlc.runtime.cuda.EmulatedDevice): blocks run in a scrambled order; CUDA's
grid and block limits are enforced; a shuffle's lane mask must name the
lanes that reach it; each thread's stack has a guard page, and a fault in a
kernel (an access outside every buffer, a stack overflow) is caught and
reported as an EmulatorError instead of killing or corrupting the process.
Launches are serialized (the built-ins are process-wide). With
DLC_EMULATOR_SANITIZE=1 the kernels are built with AddressSanitizer.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import subprocess
import tempfile
import threading
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
#include <csignal>
#include <sys/mman.h>
#include <ucontext.h>
#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/asan_interface.h>
#endif

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
struct Thread { ucontext_t ctx; jmp_buf jb; State state; bool started; unsigned tid; unsigned mask; uint3 idx; };

// error codes, named in c_emulator.py's _RC
enum Error { OK, BARRIER_WITHOUT_COROUTINES, DEADLOCK, BAD_BLOCK, MEMORY_FAULT, STACK_OVERFLOW, BAD_SHUFFLE_MASK,
             BAD_GRID };

// every thread's stack is mmap'd with an inaccessible guard page below it: an overflow faults (and is
// reported) instead of running into its neighbour's stack or the heap
static const size_t kStack = 256 * 1024, kGuard = 4096;
static Thread* threads = nullptr;
static char* stacks = nullptr;
static size_t stacks_bytes = 0;
static unsigned capacity = 0, nthreads = 0, current = 0;
static jmp_buf scheduler;
static const std::function<void()>* body = nullptr;
static bool coroutines = false;
static int error = OK;
static unsigned long long shfl_slot[1024];

// Switches are _setjmp/_longjmp (no signal-mask system call, unlike swapcontext);
// ucontext only gives each thread its own stack when it starts.
static void entry() {
  (*body)();
  threads[current].state = DONE;
  _longjmp(scheduler, 1);
}

static void yield(State s) {
  if (!coroutines) { error = BARRIER_WITHOUT_COROUTINES; return; }
  threads[current].state = s;
  if (!_setjmp(threads[current].jb)) _longjmp(scheduler, 1);
}

static bool ensure(unsigned n) {
  if (n <= capacity) return true;
  free(threads);
  if (stacks) munmap(stacks, stacks_bytes);
  threads = (Thread*)calloc(n, sizeof(Thread));
  stacks_bytes = (size_t)n * (kStack + kGuard);
  void* mem = mmap(nullptr, stacks_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (!threads || mem == MAP_FAILED) { free(threads); threads = nullptr; stacks = nullptr; capacity = 0; return false; }
  stacks = (char*)mem;
  for (unsigned t = 0; t < n; ++t) mprotect(stacks + (size_t)t * (kStack + kGuard), kGuard, PROT_NONE);
  capacity = n;
  return true;
}

static char* stack_of(unsigned t) { return stacks + (size_t)t * (kStack + kGuard) + kGuard; }

// releases the threads waiting at a barrier that every thread of its scope
// reached; a thread that already exited never arrives (CUDA requires barriers
// in uniform control flow), so its peers stay blocked and report a deadlock.
// Every lane of a warp barrier must name the same lanes, and only lanes that arrived.
static bool release() {
  bool any = false, block_ready = true;
  for (unsigned t = 0; t < nthreads; ++t)
    if (threads[t].state != AT_BLOCK_BARRIER) block_ready = false;
  for (unsigned w = 0; w < nthreads; w += 32) {
    unsigned end = w + 32 < nthreads ? w + 32 : nthreads;
    bool warp_ready = true, waiting = false;
    unsigned arrived = 0;
    for (unsigned t = w; t < end; ++t) {
      if (threads[t].state == AT_WARP_BARRIER) { waiting = true; arrived |= 1u << (t - w); }
      else warp_ready = false;
    }
    if (waiting && warp_ready) {
      for (unsigned t = w; t < end; ++t) {
        unsigned named = threads[t].mask & (end - w == 32 ? 0xffffffffu : (1u << (end - w)) - 1);
        if (named != arrived) error = BAD_SHUFFLE_MASK;
        threads[t].state = RUNNING;
      }
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
#ifdef __SANITIZE_ADDRESS__
    // frames left by _longjmp keep their redzones in ASan's shadow: a reused stack starts clean
    __asan_unpoison_memory_region(stack_of(t), kStack);
#endif
    threads[t].ctx.uc_stack.ss_sp = stack_of(t);
    threads[t].ctx.uc_stack.ss_size = kStack;
    threads[t].ctx.uc_link = nullptr;
    threads[t].state = RUNNING;
    threads[t].started = false;
    makecontext(&threads[t].ctx, entry, 0);
  }
  if (!coroutines) return OK;
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
    if (!live) return error;
    if (!release()) return DEADLOCK;
    if (error) return error;
  }
}

// a fault in a kernel (an access outside every buffer, a stack overflow) jumps back to launch():
// the handler runs on its own stack, so a thread whose stack overflowed can still be reported
static sigjmp_buf fault_return;
static volatile sig_atomic_t fault_in_stack = 0;
static char fault_stack[64 * 1024];

static void on_fault(int, siginfo_t* info, void*) {
  char* at = (char*)info->si_addr;
  fault_in_stack = stacks && at >= stacks && at < stacks + stacks_bytes;
  siglongjmp(fault_return, 1);
}

static unsigned gcd(unsigned a, unsigned b) { while (b) { unsigned t = a % b; a = b; b = t; } return a; }

// blocks run in a scrambled order (a stride coprime to the block count), never 0, 1, 2, ...:
// a kernel that relies on an earlier block having finished gives a wrong answer here too
static int run_grid(dim3 grid, bool scrambled) {
  const unsigned long long n = (unsigned long long)grid.x * grid.y * grid.z;
  unsigned long long stride = 1, offset = 0;
  if (scrambled && n > 2) {
    stride = n / 2 + 1;
    while (gcd((unsigned)(stride % n), (unsigned)n) != 1) ++stride;
    offset = n / 3;
  }
  for (unsigned long long k = 0; k < n; ++k) {
    unsigned long long b = (k * stride + offset) % n;
    blockIdx = uint3{(unsigned)(b % grid.x), (unsigned)(b / grid.x % grid.y), (unsigned)(b / grid.x / grid.y)};
    int rc = run_block();
    if (rc) return rc;
  }
  return OK;
}

static int launch(dim3 grid, dim3 block, bool with_barriers, bool scrambled, const std::function<void()>& fn) {
  // CUDA's launch limits (compute capability 9.0)
  if (block.x == 0 || block.y == 0 || block.z == 0) return BAD_BLOCK;
  if (block.x > 1024 || block.y > 1024 || block.z > 64) return BAD_BLOCK;
  if ((unsigned long long)block.x * block.y * block.z > 1024) return BAD_BLOCK;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535)
    return BAD_GRID;
  nthreads = block.x * block.y * block.z;
  if (!ensure(nthreads)) return MEMORY_FAULT;
  for (unsigned t = 0; t < nthreads; ++t) {
    threads[t].tid = t;
    threads[t].mask = 0xffffffffu;
    threads[t].idx = uint3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
  }
  body = &fn; coroutines = with_barriers; error = OK;
  gridDim = grid; blockDim = block;

#ifdef __SANITIZE_ADDRESS__
  return run_grid(grid, scrambled);  // AddressSanitizer reports faults itself
#else
  stack_t alt{}, old_alt;
  alt.ss_sp = fault_stack; alt.ss_size = sizeof fault_stack; alt.ss_flags = 0;
  struct sigaction on{}, old_segv, old_bus;
  on.sa_sigaction = on_fault; on.sa_flags = SA_SIGINFO | SA_ONSTACK; sigemptyset(&on.sa_mask);
  sigaltstack(&alt, &old_alt);
  sigaction(SIGSEGV, &on, &old_segv);
  sigaction(SIGBUS, &on, &old_bus);
  int rc;
  if (sigsetjmp(fault_return, 1)) rc = fault_in_stack ? STACK_OVERFLOW : MEMORY_FAULT;
  else rc = run_grid(grid, scrambled);
  sigaction(SIGSEGV, &old_segv, nullptr);
  sigaction(SIGBUS, &old_bus, nullptr);
  sigaltstack(&old_alt, nullptr);
  return rc;
#endif
}

template <class T> static T exchange(unsigned mask, T v, unsigned src, bool valid) {
  static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
  unsigned me = threads[current].tid;
  threads[me].mask = mask;
  memcpy(&shfl_slot[me], &v, sizeof(T));
  yield(AT_WARP_BARRIER);
  T out = v;
  if (valid && src < nthreads) memcpy(&out, &shfl_slot[src], sizeof(T));
  yield(AT_WARP_BARRIER);  // nobody overwrites a slot before every lane read it
  threads[me].mask = 0xffffffffu;
  return out;
}
}  // namespace emu

static inline void __syncthreads() { emu::yield(emu::AT_BLOCK_BARRIER); }
static inline void __syncwarp(unsigned mask = 0xffffffffu) {
  emu::threads[emu::current].mask = mask;
  emu::yield(emu::AT_WARP_BARRIER);
  emu::threads[emu::current].mask = 0xffffffffu;
}
template <class T> static inline T __shfl_xor_sync(unsigned lanes, T v, int mask, int width = 32) {
  unsigned me = emu::threads[emu::current].tid, lane = me % width;
  return emu::exchange(lanes, v, me - lane + (lane ^ mask), (lane ^ mask) < (unsigned)width);
}
template <class T> static inline T __shfl_down_sync(unsigned lanes, T v, unsigned delta, int width = 32) {
  unsigned me = emu::threads[emu::current].tid, lane = me % width;
  return emu::exchange(lanes, v, me + delta, lane + delta < (unsigned)width);
}
template <class T> static inline T __shfl_sync(unsigned lanes, T v, int src, int width = 32) {
  unsigned me = emu::threads[emu::current].tid, lane = me % width;
  return emu::exchange(lanes, v, me - lane + (unsigned)src % width, true);
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


_LAUNCH_LOCK = threading.Lock()


class EmulatorError(DlcError):
    """A kernel the emulator could not compile or run (a deadlock at a barrier, a bad launch)."""


_RC = {1: "__syncthreads or a shuffle in a kernel launched without barrier support",
       2: "deadlock: some threads wait at a barrier that other live threads never reach",
       3: "a block has at most 1024 threads (x, y <= 1024, z <= 64), at least 1 in each dimension",
       4: "memory fault: the kernel accessed memory outside every buffer",
       5: "a thread overflowed its stack",
       6: "a warp shuffle or __syncwarp whose lane mask is not the lanes that reach it",
       7: "grid dimensions must be 1 <= x < 2**31, 1 <= y, z <= 65535"}

CTYPES = {"ptr": ctypes.c_void_p, "i64": ctypes.c_longlong, "i32": ctypes.c_int, "f32": ctypes.c_float,
          "f64": ctypes.c_double, "u32": ctypes.c_uint}
C_TYPES = {"ptr": "void*", "i64": "long long", "i32": "int", "f32": "float", "f64": "double", "u32": "unsigned"}


def launch_problem(grid, block) -> str | None:
    """What breaks CUDA's launch limits (compute capability 9.0) in a grid and block, or None."""
    grid, block = tuple(grid) + (1,) * (3 - len(grid)), tuple(block) + (1,) * (3 - len(block))
    if min(block) < 1 or block[0] > 1024 or block[1] > 1024 or block[2] > 64 or block[0] * block[1] * block[2] > 1024:
        return f"block {block}: {_RC[3]}"
    if min(grid) < 1 or grid[0] >= 2**31 or grid[1] > 65535 or grid[2] > 65535:
        return f"grid {grid}: {_RC[7]}"
    return None


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


SANITIZE_FLAGS = ("-fsanitize=address", "-fno-omit-frame-pointer")


def sanitized() -> bool:
    """DLC_EMULATOR_SANITIZE=1 builds the kernels with AddressSanitizer (python must run with libasan preloaded)."""
    return os.environ.get("DLC_EMULATOR_SANITIZE", "") not in ("", "0")


def _wrapper(sig: KernelSignature, barriers: bool) -> str:
    params = ", ".join(f"{C_TYPES[kind]} a{i}" for i, (_, kind) in enumerate(sig.params))
    args = ", ".join(f"({ctype})a{i}" for i, (ctype, _) in enumerate(sig.params))
    sep = ", " if params else ""
    return (f'extern "C" int emu_{sig.name}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, '
            f"unsigned bz, unsigned scrambled{sep}{params}) {{\n"
            f"  return emu::launch(dim3(gx, gy, gz), dim3(bx, by, bz), {str(barriers).lower()}, scrambled != 0, "
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
        optimize = optimize + (" " + " ".join(SANITIZE_FLAGS) if sanitized() else "")
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
            fn.argtypes = [ctypes.c_uint] * 7 + [CTYPES[kind] for _, kind in s.params]

    @staticmethod
    def _compile(text: str, lib: Path, optimize: str) -> None:
        """Compile into a fresh temporary name, then rename it over lib (a loaded library is never rewritten in
        place) and record its hash in a sidecar."""
        src = lib.with_suffix(".cpp")
        write_atomic(src, text.encode())
        fd, tmp = tempfile.mkstemp(dir=lib.parent, prefix=f".{lib.name}.", suffix=".tmp")
        os.close(fd)
        # -U_FORTIFY_SOURCE: the fortified longjmp refuses to jump between coroutine stacks
        cmd = ["g++", "-std=c++17", *optimize.split(), "-U_FORTIFY_SOURCE", "-shared", "-fPIC",
               "-fno-strict-aliasing", "-w", "-o", str(tmp), str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            Path(tmp).unlink(missing_ok=True)
            raise EmulatorError(f"g++ could not compile the emulated kernels ({src}):\n{proc.stderr[-4000:]}")
        built = hashlib.sha256(Path(tmp).read_bytes()).hexdigest()
        os.replace(tmp, lib)
        write_atomic(lib.with_name(lib.name + ".sha256"), built.encode())

    def launch(self, name: str, grid, block, args, *, scrambled: bool = True) -> None:
        """Run one kernel; blocks run in a scrambled order unless `scrambled=False` (0, 1, 2, ...)."""
        grid = tuple(grid) + (1,) * (3 - len(grid))
        block = tuple(block) + (1,) * (3 - len(block))
        sig = self.signatures[name]
        if len(args) != len(sig.params):
            raise EmulatorError(f"kernel {name} takes {len(sig.params)} arguments, got {len(args)}")
        problem = launch_problem(grid, block)
        if problem:
            raise EmulatorError(f"kernel {name}: {problem}")
        converted = [_convert(a, kind) for a, (_, kind) in zip(args, sig.params)]
        with _LAUNCH_LOCK:  # the emulated built-ins (threadIdx, the thread table) are process-wide
            rc = getattr(self.lib, f"emu_{name}")(*grid, *block, int(scrambled), *converted)
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
