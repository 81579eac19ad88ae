"""Kernels that generated code calls by symbol: numba compiles each once per process, not again in every caller.

Imported by the CPU backend as the module `dlc_cpu_library`. When one numba
function calls another, numba links the callee's code into the caller's
library and optimizes it again there. Every generated function that called
conv2d re-optimized all of conv.py's code: a one-line wrapper around conv2d
took 2.6 s to compile, one around its weight gradient 4.8 s (measured), and
ResNet-18's training step had nine such callers.

`bind(module, variant)` compiles a kernel of kernels/cpu/<module>.py once
for one of the signatures that module declares (its `signatures()`:
variant -> the function's name and argument types; the arrays a kernel only
reads are declared read-only, so that a read-only input array, say a
caller's, and a writable one are both passed as they are), registers the compiled function's native entry point
with LLVM under a symbol of its own, and returns a stub to call instead. The
stub compiles to a call of that symbol with numba's calling convention
(an exception raised inside propagates as from any numba call) and holds none
of the kernel's code. The wrapper above compiles in 0.08 s.

A generated function loaded from numba's cache refers to the symbol by name,
so the symbol must exist before it runs: a generated module binds its
kernels when it is imported, before any of its functions is called. A
kernel's declared signature and the generated call site are both part of
the generated file's hash (the hand-written kernels' digest and the
source), so cached code never calls a kernel with another signature.

`call_kernel(kernel, *args)` is the same for the generated module's own
functions (a kernel shared by several layers, a part of a long outer
function): compiled once for the types of the call, its entry point
registered under a symbol named by its module, name and signature, and the
caller holds a call of that symbol. Linked instead, every part of ResNet-18's
step re-optimized each shared kernel it called and the segment calling the
parts re-optimized them all again (its cold compile: 64 s linked, 57 s by
symbol). Here the signature is known only when the
caller is compiled, so the caller's code carries the registration with it:
numba runs a compiled function's `reload_init` callables before it loads
that function from its cache, and a caller adds one per callee.
"""

import functools
import hashlib
import sys
import threading

import llvmlite.binding as llvm
import numba
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

_lock = threading.RLock()   # registering a caller from the cache registers its callees first
_bound: dict[str, tuple] = {}   # symbol -> (dispatcher, compiled kernel) it names now
_alive: list = []   # every kernel ever registered: a caller may hold its address as long as the process lives


def bind(module: str, variant: str):
    """A stub calling the kernel of kernels/cpu/<module>.py that `variant` names, compiled for its signature."""
    kernels = sys.modules[f"dlc_cpu_{module}"]
    name, argtypes = kernels.signatures()[variant]
    argtypes = tuple(argtypes)
    symbol = f"dlc_cpu_{variant}"
    _register(symbol, getattr(kernels, name), argtypes)
    return _stub(symbol, argtypes)


def _register(symbol: str, dispatcher, argtypes: tuple):
    """Compile (or load from numba's cache) dispatcher for argtypes once, and give its entry point `symbol`."""
    with _lock:
        owner, compiled = _bound.get(symbol, (None, None))
        if owner is not dispatcher:   # first call, or a function of the same name defined anew (a test's)
            dispatcher.compile(argtypes)
            compiled = dispatcher.overloads[argtypes]
            if compiled.signature.return_type != types.none:
                raise TypeError(f"{dispatcher.py_func.__qualname__} must return nothing to be called by symbol, "
                                f"not {compiled.signature.return_type}")
            address = compiled.library.get_pointer_to_function(compiled.fndesc.llvm_func_name)
            if not address:
                raise RuntimeError(f"{dispatcher.py_func.__qualname__}: no native entry point for {argtypes}")
            llvm.add_symbol(symbol, address)
            _bound[symbol] = dispatcher, compiled
            _alive.append(compiled)
    return compiled


def _accepts(declared, actual) -> bool:
    """actual may be passed where declared is: the same type, or a writable array where the kernel declares a
    read-only one (the same data; the kernel never writes it)."""
    return actual == declared or (isinstance(declared, types.Array) and not declared.mutable
                                  and isinstance(actual, types.Array) and actual.copy(readonly=True) == declared)


def _stub(symbol: str, argtypes: tuple):
    @intrinsic
    def call(typingctx, *args):
        if len(args) != len(argtypes) or not all(map(_accepts, argtypes, args)):
            raise TypingError(f"{symbol} called with ({', '.join(map(str, args))}); it is bound for "
                              f"({', '.join(map(str, argtypes))})")

        def codegen(context, builder, signature, llargs):
            return _call_symbol(context, builder, symbol, argtypes,
                                cgutils.unpack_tuple(builder, llargs[0], len(argtypes)))
        return types.none(types.StarArgTuple.from_types(tuple(args))), codegen
    return call


def _call_symbol(context, builder, symbol: str, argtypes: tuple, values: list):
    """A call of the function registered as `symbol` with numba's calling convention; its exception propagates."""
    fnty = context.call_conv.get_function_type(types.none, argtypes)
    fn = cgutils.get_or_insert_function(builder.module, fnty, symbol)
    status, _ = context.call_conv.call_function(builder, fn, types.none, argtypes, values)
    with cgutils.if_unlikely(builder, status.is_error):
        context.call_conv.return_status_propagate(builder, status)
    return context.get_dummy_value()


def _kernel_symbol(module: str, name: str, argtypes: tuple) -> str:
    """The symbol of a module's function compiled for argtypes: the same in every process."""
    signature = hashlib.sha256(", ".join(map(str, argtypes)).encode()).hexdigest()[:16]
    return f"dlc_{module}__{name}__{signature}"


def register_kernel(module: str, name: str, argtypes: tuple) -> None:
    """Register the symbol of function `name` of module `module` (a generated module, imported) for argtypes.

    Run by numba before it loads a caller from its cache, so must be importable by name (numba pickles it)."""
    found = sys.modules.get(module)
    dispatcher = getattr(found, name, None)
    if dispatcher is None:
        raise RuntimeError(f"call_kernel: {module}.{name} is not loaded; its callers cannot run")
    _register(_kernel_symbol(module, name, argtypes), dispatcher, argtypes)


@intrinsic
def call_kernel(typingctx, kernel, *args):
    """kernel(*args) as a call of its symbol: the kernel is compiled once, not again inside each caller.

    kernel must be a module-level numba function returning nothing; an
    exception raised inside it propagates as from any numba call."""
    if not isinstance(kernel, types.Dispatcher):
        return None
    # a literal argument (a kernel's start in S) is passed as a plain integer: one compilation serves all
    plain = tuple(types.unliteral(a) for a in args)
    inner = typingctx.resolve_function_type(kernel, plain, {})
    if inner is None:
        return None
    func = kernel.dispatcher.py_func
    if inner.return_type != types.none:
        raise TypingError(f"call_kernel: {func.__qualname__} returns {inner.return_type}; "
                          "a kernel writes its outputs and returns nothing")
    module, name, argtypes = func.__module__, func.__qualname__, tuple(inner.args)

    def codegen(context, builder, sig, values):
        symbol = _kernel_symbol(module, name, argtypes)
        _register(symbol, kernel.dispatcher, argtypes)
        # before numba loads this caller from its cache in another process, the symbol must exist there
        hooks = getattr(context.active_code_library, "_reload_init", None)
        if hooks is None:
            raise RuntimeError(f"numba {numba.__version__} has no reload_init hooks on its code libraries; "
                               "dlc's CPU backend needs numba >= 0.63")
        hooks.add(functools.partial(register_kernel, module, name, argtypes))
        passed = [context.cast(builder, v, t, p) for v, t, p in
                  zip(cgutils.unpack_tuple(builder, values[1]), args, argtypes)]
        return _call_symbol(context, builder, symbol, argtypes, passed)

    return types.none(kernel, types.StarArgTuple.from_types(args)), codegen
