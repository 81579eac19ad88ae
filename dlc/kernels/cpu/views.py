"""Views of the arena for generated CPU code, built so that numba compiles them quickly.

Imported by the CPU backend as the module `dlc_cpu_views`. An outer function
makes a view of the arena for every buffer its kernels touch; written as
`arena[start:start + n].reshape(shape)`, each view is a slice and a reshape
whose error paths numba lowers inline, and a function holding hundreds of
them took numba minutes to compile (its time grows faster than the function's
length). `arena_view` builds the array struct directly: a pointer offset, the
shape and the C-order strides, sharing the arena's memory (and its reference
count). It trusts its offset: the memory planner placed every buffer inside
the arena.

`address_view` is the same for a parameter's array given by its data address
(an outer function takes every parameter's address in one int64 array rather
than hundreds of array arguments, which numba types and unboxes one by one).
Its view borrows the memory: the backend holds the arrays for as long as it
may call the function.

Generated code calls its shared kernels and parts through
`dlc_cpu_library.call_kernel`.
"""

from numba import types
from numba.core import cgutils
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic
from numba.np.arrayobj import make_array, populate_array


def _shape_type(shape):
    """The number of dims of a shape tuple of integers, or None when shape is no such tuple."""
    if isinstance(shape, types.Integer):
        return 1
    if isinstance(shape, types.BaseTuple) and all(isinstance(t, types.Integer) for t in shape.types):
        return len(shape.types)
    return None


def _view(context, builder, base_type, base, start, shape_type, shape, out_type):
    """An array of out_type over base's data from element `start`, with shape `shape` in C order."""
    src = make_array(base_type)(context, builder, base)
    if isinstance(shape_type, types.Integer):
        dims = [context.cast(builder, shape, shape_type, types.intp)]
    else:
        dims = [context.cast(builder, v, t, types.intp)
                for v, t in zip(cgutils.unpack_tuple(builder, shape), shape_type.types)]
    itemsize = context.get_constant(types.intp, context.get_abi_sizeof(context.get_data_type(base_type.dtype)))
    strides, step = [], itemsize
    for d in reversed(dims):
        strides.insert(0, step)
        step = builder.mul(step, d)
    out = make_array(out_type)(context, builder)
    populate_array(out, data=builder.gep(src.data, [start]), shape=dims, strides=strides, itemsize=itemsize,
                   meminfo=src.meminfo)
    return out


@intrinsic
def arena_view(typingctx, base, start, shape):
    """base[start:start + prod(shape)] as an array of that shape; base a C-contiguous 1-D array."""
    ndim = _shape_type(shape)
    if not (isinstance(base, types.Array) and base.ndim == 1 and base.layout == "C"
            and isinstance(start, types.Integer) and ndim):
        return None
    out_type = types.Array(base.dtype, ndim, "C", readonly=not base.mutable)

    def codegen(context, builder, sig, args):
        base_v, start_v, shape_v = args
        start_v = context.cast(builder, start_v, sig.args[1], types.intp)
        out = _view(context, builder, sig.args[0], base_v, start_v, sig.args[2], shape_v, sig.return_type)
        return impl_ret_borrowed(context, builder, sig.return_type, out._getvalue())

    return out_type(base, start, shape), codegen


@intrinsic
def address_view(typingctx, witness, address, shape):
    """The C-ordered array of `shape` at data address `address`, of witness's dtype (a 1-D array of that dtype,
    whose memory is not read); it owns nothing (no reference count)."""
    ndim = _shape_type(shape)
    if not (isinstance(witness, types.Array) and isinstance(address, types.Integer) and ndim):
        return None
    out_type = types.Array(witness.dtype, ndim, "C")

    def codegen(context, builder, sig, args):
        _, address_v, shape_v = args
        shape_type = sig.args[2]
        if isinstance(shape_type, types.Integer):
            dims = [context.cast(builder, shape_v, shape_type, types.intp)]
        else:
            dims = [context.cast(builder, v, t, types.intp)
                    for v, t in zip(cgutils.unpack_tuple(builder, shape_v), shape_type.types)]
        data_type = context.get_data_type(witness.dtype)
        itemsize = context.get_constant(types.intp, context.get_abi_sizeof(data_type))
        strides, step = [], itemsize
        for d in reversed(dims):
            strides.insert(0, step)
            step = builder.mul(step, d)
        out = make_array(sig.return_type)(context, builder)
        data = builder.inttoptr(context.cast(builder, address_v, sig.args[1], types.intp), data_type.as_pointer())
        populate_array(out, data=data, shape=dims, strides=strides, itemsize=itemsize, meminfo=None)
        return impl_ret_borrowed(context, builder, sig.return_type, out._getvalue())

    return out_type(witness, address, shape), codegen
