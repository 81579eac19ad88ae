"""Hand-written kernels that generated code calls by symbol: numba compiles each once per process, not per caller.

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
"""

import sys
import threading

import llvmlite.binding as llvm
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

_lock = threading.Lock()
_bound: dict[str, object] = {}   # symbol -> the compiled kernel (its code must live as long as the process)


def bind(module: str, variant: str):
    """A stub calling the kernel of kernels/cpu/<module>.py that `variant` names, compiled for its signature."""
    kernels = sys.modules[f"dlc_cpu_{module}"]
    name, argtypes = kernels.signatures()[variant]
    argtypes = tuple(argtypes)
    symbol = f"dlc_cpu_{variant}"
    with _lock:
        if symbol not in _bound:
            dispatcher = getattr(kernels, name)
            dispatcher.compile(argtypes)
            compiled = dispatcher.overloads[argtypes]
            if compiled.signature.return_type != types.none:
                raise TypeError(f"{module}.{name} must return nothing to be bound, not "
                                f"{compiled.signature.return_type}")
            address = compiled.library.get_pointer_to_function(compiled.fndesc.llvm_func_name)
            if not address:
                raise RuntimeError(f"{module}.{name}: no native entry point for {argtypes}")
            llvm.add_symbol(symbol, address)
            _bound[symbol] = compiled
    return _stub(symbol, argtypes)


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
            values = cgutils.unpack_tuple(builder, llargs[0], len(argtypes))
            fnty = context.call_conv.get_function_type(types.none, argtypes)
            fn = cgutils.get_or_insert_function(builder.module, fnty, symbol)
            status, _ = context.call_conv.call_function(builder, fn, types.none, argtypes, values)
            with cgutils.if_unlikely(builder, status.is_error):
                context.call_conv.return_status_propagate(builder, status)
            return context.get_dummy_value()
        return types.none(types.StarArgTuple.from_types(tuple(args))), codegen
    return call
