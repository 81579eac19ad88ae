"""The CUDA backend: runs a Program's rendered kernels over one device arena, through pycuda or the emulator.

Where values live:
- intermediates: one device arena per compiled program, placed by the
  memory plan (alignment 256) for each new binding of the symbolic dims;
- parameters and optimizer state: one device buffer per store key, shared by
  every CUDA function on the same Store (a GAN's two steps see each other's
  updates) and kept on the device between calls; constants: uploaded once;
- inputs are copied to the device and requested outputs back, nothing else.

The Store rule: after a CUDA step the device holds the newest parameter
values. `sync(store)` copies them back into the Store's arrays (done
automatically when the Store is read through the hooks in `DeviceStore`);
writing a value into the Store from the host marks the device copy stale,
and the next call uploads it again.

pycuda is optional: `import dlc` and every CPU target work without it.
`emulate=True` runs the very same kernels on the CPU (dlc.codegen.c_emulator):
slow, for tests and for debugging kernels without a GPU.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import hashlib
import mmap
import os
import threading
import weakref
from pathlib import Path

import numpy as np

from ..errors import DlcError, IndexRangeError
from ..graph import shape_eval
from ..ops.collective import HOST_CALLS
from .reference import node_value

ALIGNMENT = 256  # bytes: every arena buffer starts on a 16-byte (float4) and 128-byte (cache line) boundary
INSTALL_HINT = ('install the CUDA extra with `pip install "dlc[cuda]"` (it builds pycuda, which needs the CUDA '
                "toolkit and an NVIDIA driver)")


class CudaUnavailableError(DlcError, RuntimeError):
    """target="cuda" on a machine without pycuda or without a usable GPU: says which, and how to fix it."""


# ----------------------------------------------------------------------------
# devices: pycuda, or the CPU emulator


class PyCudaDevice:
    """An NVIDIA GPU through pycuda, in device 0's primary context (the one the CUDA runtime and torch use).

    The context is retained once per process and made current around every call (push/pop, so any
    thread may call and the caller's own current context is left alone); an RLock serializes the calls
    (one arena per compiled program, one stream). DLC_CUDA_SYNC=1 (or sync_launches=True) synchronizes
    after every launch, so an asynchronous fault is reported at the kernel that made it.
    """

    name = "cuda"
    _context = None
    _lock = threading.RLock()
    _depth = threading.local()

    def __init__(self, sync_launches: bool | None = None):
        try:
            import pycuda.driver as drv
        except ImportError as e:
            raise CudaUnavailableError(f"target='cuda' needs pycuda, which is not installed ({e}); "
                                       f"{INSTALL_HINT}") from None
        self.drv = drv
        try:
            with PyCudaDevice._lock:
                drv.init()
                if drv.Device.count() == 0:
                    raise CudaUnavailableError("target='cuda': pycuda is installed but no NVIDIA GPU is visible "
                                               "(check nvidia-smi and CUDA_VISIBLE_DEVICES)")
                if PyCudaDevice._context is None:
                    PyCudaDevice._context = drv.Device(0).retain_primary_context()
        except drv.Error as e:
            raise CudaUnavailableError(f"target='cuda': the CUDA driver failed to start ({e}); is an NVIDIA "
                                       f"driver installed and a GPU visible?") from None
        if sync_launches is None:
            sync_launches = os.environ.get("DLC_CUDA_SYNC", "") not in ("", "0")
        self.sync_launches = sync_launches
        with self.active():
            dev = drv.Context.get_device()
            self.sm_count = dev.get_attribute(drv.device_attribute.MULTIPROCESSOR_COUNT)
            major, minor = dev.compute_capability()
        self.max_blocks = self.sm_count * 8
        self.arch = f"sm_{major}{minor}"

    @contextlib.contextmanager
    def active(self):
        """The primary context current on this thread, and this thread alone in the device (reentrant)."""
        with PyCudaDevice._lock:
            depth = getattr(PyCudaDevice._depth, "n", 0)
            if depth == 0:
                PyCudaDevice._context.push()
            PyCudaDevice._depth.n = depth + 1
            try:
                yield
            finally:
                PyCudaDevice._depth.n = depth
                if depth == 0:
                    self.drv.Context.pop()

    def alloc(self, nbytes: int):
        with self.active():
            return self.drv.mem_alloc(max(int(nbytes), 1))

    @staticmethod
    def ptr(buf) -> int:
        return int(buf)

    def upload(self, ptr: int, array: np.ndarray) -> None:
        with self.active():
            self.drv.memcpy_htod(ptr, np.ascontiguousarray(array))

    def download(self, ptr: int, array: np.ndarray) -> None:
        with self.active():
            self.drv.memcpy_dtoh(array, ptr)

    def copy(self, dst: int, src: int, nbytes: int) -> None:
        if nbytes:
            with self.active():
                self.drv.memcpy_dtod(dst, src, nbytes)

    def zero(self, ptr: int, nbytes: int) -> None:
        if nbytes:
            with self.active():
                self.drv.memset_d8(ptr, 0, nbytes)

    def load(self, module) -> dict:
        from pycuda.compiler import SourceModule

        from ..codegen.c_emulator import cache_dir

        with self.active():
            # pycuda caches the cubin on disk by a hash of source and options
            mod = SourceModule(module.source, no_extern_c=True, arch=self.arch,
                               options=["-std=c++17", "-O3"], cache_dir=str(cache_dir().parent / "pycuda"))
            types = {"ptr": "P", "i64": "q", "i32": "i", "f32": "f", "f64": "d", "u32": "I"}
            launchers = {}
            for sig in module.signatures():
                fn = mod.get_function(sig.name)
                fn.prepare("".join(types[kind] for _, kind in sig.params))
                launchers[sig.name] = self._launcher(sig.name, fn, mod)
        return launchers

    def _launcher(self, name: str, fn, module):
        def launch(grid, block, args, module=module):  # holding the module keeps its code loaded
            with self.active():
                fn.prepared_call(grid, block, *args)
                if self.sync_launches:
                    try:
                        self.drv.Context.synchronize()
                    except self.drv.Error as e:
                        raise CudaLaunchError(f"kernel {name} (grid {grid}, block {block}) failed: {e}") from None
        return launch

    def synchronize(self) -> None:
        with self.active():
            self.drv.Context.synchronize()


class CudaLaunchError(DlcError, RuntimeError):
    """A kernel failed on the device (seen at the next synchronization, or at once with DLC_CUDA_SYNC=1)."""


# the emulated devices: max_blocks as on a small GPU (the tests' default) or as on an H100 (132 SMs x 8
# resident blocks), which takes other GEMM tiles and other reduction paths
EMULATED_DEVICES = {"small": 8, "h100": 132 * 8}
POISON = 0xFF    # fresh device memory reads as NaN (floats) and -1 (integers), never as zeros
CANARY = 0xCD    # the bytes around every buffer, checked after each launch
PAGE = mmap.PAGESIZE


class GuardedBuffer:
    """Host memory standing in for one device allocation: poison-filled, 256-byte aligned, between guard pages.

    The buffer ends at most 255 bytes before an inaccessible page (the bytes in between, and before the
    buffer, are canaries): a write just past its end changes a canary, one further faults.
    """

    def __init__(self, nbytes: int):
        self.nbytes = max(int(nbytes), 1)
        data = -(-(self.nbytes + ALIGNMENT - 1) // PAGE) * PAGE
        self._map = mmap.mmap(-1, data + 2 * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        whole = np.frombuffer(self._map, np.uint8)
        base = whole.ctypes.data
        _protect(base, PAGE)
        _protect(base + PAGE + data, PAGE)
        start = PAGE + (data - self.nbytes) // ALIGNMENT * ALIGNMENT
        self.head = whole[PAGE:start]
        self.array = whole[start:start + self.nbytes]
        self.tail = whole[start + self.nbytes:PAGE + data]
        self.head[:] = CANARY
        self.tail[:] = CANARY
        self.array[:] = POISON
        self.ptr = self.array.ctypes.data

    def intact(self) -> bool:
        """Whether the canaries are untouched (they are rewritten, so that one overrun is reported once)."""
        ok = bool((self.head == CANARY).all() and (self.tail == CANARY).all())
        self.head[:] = CANARY
        self.tail[:] = CANARY
        return ok


def _protect(address: int, nbytes: int) -> None:
    if _LIBC.mprotect(ctypes.c_void_p(address), ctypes.c_size_t(nbytes), 0) != 0:  # PROT_NONE
        raise OSError(ctypes.get_errno(), "mprotect failed on an emulated device buffer's guard page")


_LIBC = ctypes.CDLL(None, use_errno=True)


class EmulatedDevice:
    """The CPU standing in for a GPU: host memory as device memory, kernels run by dlc.codegen.c_emulator.

    Stricter than the GPU where it can be: allocations are poison-filled and guarded, and after every
    launch the canaries around each buffer the kernel was given are checked (EmulatorError naming the
    kernel); blocks run in a scrambled order; CUDA's grid and block limits are enforced.
    """

    name = "cuda-emulator"
    _shared: dict[str, EmulatedDevice] = {}

    @classmethod
    def shared(cls, config: str = "small") -> EmulatedDevice:
        """The process's emulated device of one configuration (parameter buffers are shared, as on a GPU)."""
        if config not in EMULATED_DEVICES:
            raise ValueError(f"emulate={config!r}: choose True or one of {sorted(EMULATED_DEVICES)}")
        if config not in cls._shared:
            cls._shared[config] = cls(EMULATED_DEVICES[config])
        return cls._shared[config]

    def __init__(self, max_blocks: int = EMULATED_DEVICES["small"]):
        self.max_blocks = max_blocks
        self._lock = threading.RLock()
        self._starts: list[int] = []               # sorted buffer addresses
        self._buffers: dict[int, weakref.ref] = {}  # address -> its GuardedBuffer

    def active(self):
        """One thread at a time in the device (as PyCudaDevice: a compiled program has one arena)."""
        return self._lock

    def alloc(self, nbytes: int):
        """A guarded buffer (as a DeviceAllocation: it lives as long as the returned object)."""
        buf = GuardedBuffer(nbytes)
        bisect.insort(self._starts, buf.ptr)
        self._buffers[buf.ptr] = weakref.ref(buf)
        weakref.finalize(buf, self._forget, buf.ptr)
        return buf

    def _forget(self, ptr: int) -> None:
        self._buffers.pop(ptr, None)
        i = bisect.bisect_left(self._starts, ptr)
        if i < len(self._starts) and self._starts[i] == ptr:
            del self._starts[i]

    def buffer_at(self, ptr: int) -> GuardedBuffer | None:
        """The live buffer that holds address ptr, if any."""
        i = bisect.bisect_right(self._starts, ptr) - 1
        if i < 0:
            return None
        buf = self._buffers[self._starts[i]]()
        return buf if buf is not None and ptr < buf.ptr + buf.nbytes else None

    def check_guards(self, name: str, args) -> None:
        """Raise if the kernel wrote past the start or the end of a buffer it was given."""
        for a in args:
            buf = self.buffer_at(int(a)) if isinstance(a, int) else None
            if buf is not None and not buf.intact():
                from ..codegen.c_emulator import EmulatorError

                raise EmulatorError(f"kernel {name} wrote outside its buffer of {buf.nbytes} bytes at {buf.ptr:#x}")

    @staticmethod
    def ptr(buf) -> int:
        return buf.ptr

    def upload(self, ptr: int, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        ctypes.memmove(ptr, array.ctypes.data, array.nbytes)

    def download(self, ptr: int, array: np.ndarray) -> None:
        ctypes.memmove(array.ctypes.data, ptr, array.nbytes)

    def copy(self, dst: int, src: int, nbytes: int) -> None:
        ctypes.memmove(dst, src, nbytes)

    def zero(self, ptr: int, nbytes: int) -> None:
        ctypes.memset(ptr, 0, nbytes)

    def load(self, module) -> dict:
        from ..codegen.c_emulator import EmulatedModule

        mod = EmulatedModule(module.source, module.signatures())

        def launcher(name):
            def launch(grid, block, args):
                mod.launch(name, grid, block, args)
                self.check_guards(name, args)
            return launch

        return {name: launcher(name) for name in mod.signatures}

    def synchronize(self) -> None:
        pass


# ----------------------------------------------------------------------------
# parameters on the device, shared per Store


class DeviceStore:
    """The device copies of one Store's arrays: uploaded on first use, downloaded by `sync`."""

    def __init__(self, store, device):
        self.store = weakref.proxy(store)
        self.device = device
        self.buffers: dict[str, object] = {}
        self.sizes: dict[str, int] = {}  # bytes of each buffer: a copy never runs past one
        self.device_newer: set[str] = set()

    def ptr(self, key: str) -> int:
        host = self.store._values[key]
        if key not in self.buffers or self.sizes[key] != host.nbytes:  # a value replaced by one of another size
            self.buffers[key] = self.device.alloc(host.nbytes)
            self.sizes[key] = host.nbytes
            self.device.upload(self.device.ptr(self.buffers[key]), host)
        return self.device.ptr(self.buffers[key])

    def mark_updated(self, key: str) -> None:
        self.device_newer.add(key)

    def sync(self) -> None:
        """Copy every value a CUDA step changed back into the Store's arrays (in place)."""
        for key in sorted(self.device_newer):
            host = self.store._values[key]
            if self.sizes[key] == host.nbytes:  # else the host replaced the value since: the host's is newer
                self.device.download(self.device.ptr(self.buffers[key]), host)
        self.device_newer.clear()

    def invalidate(self, key: str | None = None) -> None:
        """The host wrote these values: upload them again before the next use."""
        for k in [key] if key is not None else list(self.buffers):
            self.device_newer.discard(k)
            if k in self.buffers and self.sizes[k] == self.store._values[k].nbytes:
                self.device.upload(self.device.ptr(self.buffers[k]), self.store._values[k])
            else:
                self.buffers.pop(k, None)  # allocated again, at the new size, on its next use


_DEVICE_STORES: dict[tuple[int, str], DeviceStore] = {}


def device_store(store, device) -> DeviceStore:
    key = (id(store), device.name)
    ds = _DEVICE_STORES.get(key)
    if ds is None or not _alive(ds):
        ds = DeviceStore(store, device)
        _DEVICE_STORES[key] = ds
        weakref.finalize(store, _DEVICE_STORES.pop, key, None)  # device buffers go with their Store
        hooks = store.__dict__.setdefault("_device_hooks", [])
        hooks.append(ds)
    return ds


def _alive(ds: DeviceStore) -> bool:
    try:
        len(ds.store)
        return True
    except ReferenceError:
        return False


def sync(store) -> None:
    """Bring a Store up to date with every device copy of its values (call before reading it on the host)."""
    for ds in store.__dict__.get("_device_hooks", ()):
        ds.sync()


def invalidate(store, key: str | None = None) -> None:
    """Tell the devices that the host changed a Store value (all values when key is None)."""
    for ds in store.__dict__.get("_device_hooks", ()):
        ds.invalidate(key)


# ----------------------------------------------------------------------------
# the backend


class ProgramRunner:
    """One Program on one device: its compiled module, its arena, and the order its kernels run in.

    Kernels the renderer leaves to the host run here too: a "size" node needs
    nothing (kernels take its value as an argument), a scan runs its body's
    own ProgramRunner once per step, a scan_output copies one of its results,
    an MPI collective runs on its inputs copied to the host and its result is
    copied back (the devices of the ranks never talk to each other directly).
    """

    def __init__(self, program, device, params: DeviceStore, tiles):
        from ..codegen.cuda import render_program

        self.program = program
        self.device = device
        self.params = params
        self.tiles = tiles
        self.module = render_program(program, tiles)  # raises CudaUnsupportedError naming the op
        self.launchers = device.load(self.module) if self.module.kernels else {}
        rendered = {rk.kernel.name: rk for rk in self.module.kernels}
        self.steps = [(k, rendered.get(k.name)) for k in program.kernels]
        self.scans = {id(k.anchor): ScanRunner(k.anchor, program.body(k.anchor), device, params, tiles)
                      for k, rk in self.steps if rk is None and k.anchor is not None and k.anchor.op == "scan"}
        self.consts: dict[int, tuple] = {}
        self.status = device.alloc(16)  # int32 [site, value low, value high, count]: see codegen/cuda.py _report_index
        device.zero(device.ptr(self.status), 16)  # device memory starts uninitialised
        self.uses_status = any(p.kind == "status" for k in self.module.kernels for p in k.params)
        self._plan_key = None
        self._arena = None
        self._arena_bytes = 0
        self._workspace = None  # scratch of split reductions, shared by their launches (they run in order)
        self._workspace_bytes = 0

    # where each value lives ---------------------------------------------------

    def prepare(self, env: dict) -> None:
        key = tuple(sorted(env.items()))
        if key == self._plan_key:
            return
        self.plan = self.program.memory_plan(env, alignment=ALIGNMENT)
        if self.plan.arena_bytes > self._arena_bytes:
            self._arena = self.device.alloc(self.plan.arena_bytes)
            self._arena_bytes = self.plan.arena_bytes
        self.launches = {k.name: _as_list(rk.plan_launch(env, self.device.max_blocks))
                         for k, rk in self.steps if rk is not None}
        need = max((ln.workspace for ls in self.launches.values() for ln in ls), default=0)
        if need > self._workspace_bytes:
            self._workspace = self.device.alloc(need)
            self._workspace_bytes = need
        self._plan_key = key

    def _const_ptr(self, node) -> int:
        if id(node) not in self.consts:
            value = np.ascontiguousarray(node.value)
            buf = self.device.alloc(value.nbytes)
            self.device.upload(self.device.ptr(buf), value)
            self.consts[id(node)] = (buf, node)  # holding the node keeps its id unique
        return self.device.ptr(self.consts[id(node)][0])

    def ptr(self, node, feeds_ptr: dict[int, int]) -> int:
        """The device address of a value: a fed input, a parameter, a constant or an arena slot."""
        s = self.program.storage_of(node)
        if s.op == "input":
            return feeds_ptr[id(s)]
        if s.op == "param":
            return self.params.ptr(s.attr("name"))
        if s.op == "const":
            return self._const_ptr(s)
        return self.device.ptr(self._arena) + self.plan.offsets[id(s)]

    def _args(self, rk, launch, env: dict, feeds_ptr) -> list:
        args = []
        for p in rk.params:
            if p.kind == "ptr":
                args.append(self.ptr(p.node, feeds_ptr))
            elif p.kind == "sym":
                args.append(np.int64(env[p.symbol]))
            elif p.kind == "status":
                args.append(self.device.ptr(self.status))
            elif p.kind == "workspace":
                args.append(self.device.ptr(self._workspace) if self._workspace is not None else 0)
            elif p.kind == "chunks":
                args.append(np.int64(launch.scalars["chunks"]))
            elif p.kind == "phase":
                args.append(np.int32(launch.scalars["phase"]))
            else:
                args.append(size_value(p.node, env))
        return args

    # running --------------------------------------------------------------

    def run_kernel(self, kernel, rk, env: dict, feeds_ptr) -> None:
        if rk is not None:
            if rk.zero_outputs:
                for o in kernel.outputs:
                    self.device.zero(self.ptr(o, feeds_ptr), _nbytes(o, env))
            for launch in self.launches[kernel.name]:
                self.launchers[launch.entry](launch.grid, launch.block, self._args(rk, launch, env, feeds_ptr))
        elif kernel.anchor is not None and kernel.anchor.op == "scan":
            node = kernel.anchor
            self.scans[id(node)].run([self.ptr(x, feeds_ptr) for x in node.inputs],
                                     [shape_eval(x.shape, env) for x in node.inputs], env)
        elif kernel.anchor is not None and kernel.anchor.op == "scan_output":
            node = kernel.anchor
            src = self.scans[id(self.program.storage_of(node.inputs[0]))].results[node.attr("index")]
            self.device.copy(self.ptr(node, feeds_ptr), src, _nbytes(node, env))
        elif kernel.anchor is not None and kernel.anchor.op in HOST_CALLS:
            node = kernel.anchor
            self.device.synchronize()  # the inputs' kernels have finished
            args = [self.fetch(x, env, feeds_ptr) for x in node.inputs]
            value = np.ascontiguousarray(node_value(node, args, shape_eval(node.shape, env)), dtype=node.dtype)
            self.device.upload(self.ptr(node, feeds_ptr), value)

    def run(self, env: dict, feeds_ptr: dict[int, int], after_each=None) -> None:
        """Every kernel in order; after_each(kernel) runs after each one (the debug path)."""
        self.prepare(env)
        for kernel, rk in self.steps:
            self.run_kernel(kernel, rk, env, feeds_ptr)
            if after_each is not None:
                after_each(kernel)
        self.check_status(env)

    def fetch(self, node, env, feeds_ptr) -> np.ndarray:
        if node.op == "size":
            return np.asarray(size_value(node, env))
        out = np.empty(shape_eval(node.shape, env), dtype=node.dtype)
        self.device.download(self.ptr(node, feeds_ptr), out)
        return out

    def check_status(self, env: dict) -> None:
        """Raise the IndexRangeError a take or one_hot kernel recorded (then clear the record)."""
        if not self.uses_status:
            return
        word = np.zeros(4, np.int32)
        self.device.download(self.device.ptr(self.status), word)
        if word[3]:
            self.device.zero(self.device.ptr(self.status), 16)
            raise index_error(self.program, int(word[0]), int(word[1]) & 0xFFFFFFFF | int(word[2]) << 32, env)


def index_error(program, site: int, value: int, env: dict) -> IndexRangeError:
    """The error for a bad index or label that kernel number site - 1 of the program recorded."""
    node = program.kernels[site - 1].anchor if 0 < site <= len(program.kernels) else None
    if node is None or node.op not in ("take", "take_grad", "one_hot"):
        return IndexRangeError("take", value, 0, 0)
    where = f" at {node.loc}" if node.loc else ""
    if node.op == "one_hot":
        return IndexRangeError("one_hot", value, 0, node.attr("depth"), where)
    size = node.shape if node.op == "take_grad" else node.inputs[0].shape
    d = shape_eval(size, env)[node.attr("axis")]
    return IndexRangeError(node.op, value, -d, d, where)


class ScanRunner:
    """A scan on the device: its body compiled once as a Program, launched once per step from the host.

    x_t is a pointer into xs (no copy), the step index a pointer into a device
    arange; the carries alternate between two buffers; each step's ys and
    (for backpropagation) entering carries are copied into their stacks.
    Results (final carries, ys, saved carries) stay in buffers owned here
    until the scan_output kernels copy them out.
    """

    def __init__(self, node, program, device, params, tiles):
        self.node = node
        self.body = body = node.attr("body")
        self.device = device
        self.carry_out = program.outputs[:len(body.carry_out)]
        self.y_out = program.outputs[len(body.carry_out):]
        self.inner = ProgramRunner(program, device, params, tiles)
        self.results: list[int] = []
        self._buffers: dict = {}

    def _allocate(self, key, sizes):
        if self._buffers.get("key") != key:
            self._buffers = {"key": key, "bufs": [self.device.alloc(max(n, 1)) for n in sizes]}
        return [self.device.ptr(b) for b in self._buffers["bufs"]]

    def run(self, ptrs: list[int], shapes: list[tuple], env: dict) -> None:
        from ..graph import dim_eval
        from ..ops.scan import loop_symbols

        body, node = self.body, self.node
        C, X = len(body.carry_in), len(body.x_in)
        x_shapes = shapes[C:C + X]
        T = x_shapes[0][0] if X else int(dim_eval(node.attr("length"), env))
        # the scan node's shape lists the loop's symbolic dims: the body's bindings
        benv = dict(zip(loop_symbols(body, node.attr("length")), shape_eval(node.shape, env)))
        cbytes = [_nbytes(c, benv) for c in body.carry_in]
        xbytes = [_nbytes(x, benv) for x in body.x_in]
        ybytes = [_nbytes(y, benv) for y in self.y_out]
        save = node.attr("save_carries")
        sizes = cbytes + cbytes + [T * b for b in ybytes] + ([T * b for b in cbytes] if save else []) + [8 * max(T, 1)]
        bufs = self._allocate((T, tuple(sorted(benv.items()))), sizes)
        pingpong = [bufs[:C], bufs[C:2 * C]]
        ys = bufs[2 * C:2 * C + len(ybytes)]
        saved = bufs[2 * C + len(ybytes):-1]
        steps = bufs[-1]
        self.device.upload(steps, np.arange(max(T, 1), dtype=np.int64))
        feeds = {id(p): q for p, q in zip(body.captured_in, ptrs[C + X:])}
        current = ptrs[:C]
        order = range(T - 1, -1, -1) if node.attr("reverse") else range(T)
        for s, t in enumerate(order):
            for k in range(C):
                feeds[id(body.carry_in[k])] = current[k]
                if save:
                    self.device.copy(saved[k] + t * cbytes[k], current[k], cbytes[k])
            for j in range(X):
                feeds[id(body.x_in[j])] = ptrs[C + j] + t * xbytes[j]
            feeds[id(body.step_in)] = steps + 8 * t
            self.inner.run(benv, feeds)
            nxt = pingpong[s % 2]
            for k in range(C):
                self.device.copy(nxt[k], self.inner.ptr(self.carry_out[k], feeds), cbytes[k])
            for j, y in enumerate(self.y_out):
                self.device.copy(ys[j] + t * ybytes[j], self.inner.ptr(y, feeds), ybytes[j])
            current = nxt
        if T == 0:
            for k in range(C):
                self.device.copy(pingpong[0][k], current[k], cbytes[k])
            current = pingpong[0]
        self.results = list(current) + list(ys) + list(saved)


class CUDABackend:
    """Runs a compiled function's Program as CUDA kernels; `emulate=True` runs them on the CPU instead."""

    name = "cuda"

    def __init__(self, fn, program, emulate: bool | str = False, device=None, gemm_tiles=None,
                 dump: str | None = None):
        from ..codegen.cuda import GEMM_CONFIGS

        self.fn = fn
        if device is None and emulate:
            device = EmulatedDevice.shared("small" if emulate is True else emulate)
        self.device = device or PyCudaDevice()
        tiles = tuple(gemm_tiles or GEMM_CONFIGS)
        unknown = [t for t in tiles if t not in GEMM_CONFIGS]
        if unknown:
            raise ValueError(f"gemm_tiles {unknown} unknown; choose from {sorted(GEMM_CONFIGS)}")
        self.params = device_store(fn.store, self.device)
        self.runner = ProgramRunner(program, self.device, self.params, tiles)
        self.program = self.runner.program
        self.module = self.runner.module
        self._input_buffers: dict[int, tuple] = {}
        dump = dump or os.environ.get("DLC_DUMP")
        if dump:
            self.dump(dump)

    def dump(self, folder: str) -> list[Path]:
        """Write the generated CUDA of this function (and of each scan body) as dlc_gen_<hash>.cu files."""
        Path(folder).mkdir(parents=True, exist_ok=True)
        paths = []
        for module in [self.module] + [r.inner.module for r in _scan_runners(self.runner)]:
            path = Path(folder) / f"dlc_gen_{hashlib.sha256(module.source.encode()).hexdigest()[:16]}.cu"
            path.write_text(module.source)
            paths.append(path)
        return paths

    def upload_inputs(self, feeds: dict[int, np.ndarray]) -> dict[int, int]:
        """Copy the call's inputs to the device (buffers grow with the batch, never shrink)."""
        ptrs = {}
        for node in self.fn.inputs:
            arr = feeds[id(node)]
            buf, size = self._input_buffers.get(id(node), (None, -1))
            if size < arr.nbytes:
                buf = self.device.alloc(arr.nbytes)
                self._input_buffers[id(node)] = (buf, arr.nbytes)
            ptr = self.device.ptr(buf)
            self.device.upload(ptr, arr)
            ptrs[id(node)] = ptr
        return ptrs

    def run(self, feeds: dict[int, np.ndarray], env: dict[str, int]) -> list[np.ndarray]:
        with self.device.active():  # one call at a time: the input buffers and the arena are shared
            feeds_ptr = self.upload_inputs(feeds)
            self.runner.run(env, feeds_ptr)
            outs = [self.runner.fetch(n, env, feeds_ptr) for n in self.program.outputs]
            self._apply_updates(env, feeds_ptr)
            return outs

    def _apply_updates(self, env, feeds_ptr) -> None:
        """Copy each update's value into its parameter's device buffer, after every kernel read the old ones."""
        pending = []
        for key, node in self.program.updates:
            src = self.runner.ptr(node, feeds_ptr)
            nbytes = _nbytes(node, env)
            if self.program.storage_of(node).op == "param":  # p <- q: snapshot q before anything is written
                tmp = self.device.alloc(nbytes)
                self.device.copy(self.device.ptr(tmp), src, nbytes)
                pending.append((key, self.device.ptr(tmp), nbytes, tmp))
            else:
                pending.append((key, src, nbytes, None))
        for key, src, nbytes, _ in pending:
            self.device.copy(self.params.ptr(key), src, nbytes)
            self.params.mark_updated(key)
        self.device.synchronize()

    def kernel_values(self, feeds: dict[int, np.ndarray], env: dict[str, int]) -> dict[int, np.ndarray]:
        """Debug: run kernel by kernel and return a copy of every kernel output right after its kernel."""
        from ..graph import TUPLE

        values = {}

        def grab(kernel):
            self.device.synchronize()
            for o in kernel.outputs:
                if o.dtype != TUPLE:
                    values[id(o)] = self.runner.fetch(o, env, feeds_ptr)

        with self.device.active():
            feeds_ptr = self.upload_inputs(feeds)
            self.runner.run(env, feeds_ptr, after_each=grab)
        return values

    def sync(self) -> None:
        """Copy the parameters this program's device holds back into the Store."""
        self.params.sync()

    def source(self) -> str:
        """The generated CUDA translation unit (library headers included)."""
        return self.module.source


def _scan_runners(runner: ProgramRunner):
    for scan in runner.scans.values():
        yield scan
        yield from _scan_runners(scan.inner)


def _as_list(launch) -> list:
    return launch if isinstance(launch, list) else [launch]


def size_value(node, env):
    shape = shape_eval(node.inputs[0].shape, env)
    n = int(np.prod([shape[a] for a in node.attr("axes")], dtype=np.int64))
    return np.dtype(node.dtype).type(n)


def _nbytes(node, env) -> int:
    return int(np.prod(shape_eval(node.shape, env), dtype=np.int64)) * np.dtype(node.dtype).itemsize
