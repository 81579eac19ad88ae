"""A register-tiled multiply-add block: the inner loop of the tiled convolutions, written in LLVM IR.

Imported by the CPU backend as the module `dlc_cpu_microkernel`.

`fma_tile` computes an MR x NR block of a matrix product whose right operand's rows are read through a table of
offsets (so a convolution's input serves as that operand without copying it into columns: row k of tap (i, j)
of channel c is the input plane read from the tap's offset on). Its accumulators are MR*NR/V vector registers
(V lanes fill 32 bytes: 12 of AVX2's 16 for float32; float64's 24 spill, correct but slower, and the tiled
convolutions take float32 only) that stay in registers for the whole sum, and each step broadcasts MR values
of the left operand against NR/V vector loads of the right one.

Why LLVM IR: numba's loops do not get there. The same block written as 96 scalar accumulators ran at 7 GFLOP/s
on one core (LLVM's SLP vectorizer left it scalar), and loops over a block in memory load and store it at every
step; this kernel ran at 112 GFLOP/s on one core of the 2-core AMD EPYC (AVX2, FMA) where OpenBLAS's SGEMM
reaches about 95 (an MR=6, K=576 block, 20000 calls). `llvm.fma` on vectors is legal on every target LLVM
builds for: on a CPU without FMA instructions it is computed through the C library's fma, slowly, with the
same result.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

MR = 6      # rows of the block: each a broadcast value per step
NR = 16     # columns of the block: NR / V vector loads per step
_VECTOR_BYTES = 32


@intrinsic
def fma_tile(typingctx, a, a0, lda, b, b0, bstep, boff, k, c, c0, ldc):
    """c[c0 + i*ldc + q] = sum over r < k of a[a0 + i*lda + r] * b[b0 + boff[r] + q'], for i < MR and q < NR, where
    q' = q for the first NR/2 positions and q - NR/2 + bstep for the others: with bstep = NR/2 the block's
    positions lie side by side in b, with another the two halves lie apart (two output rows of NR/2).

    a, b and c are arrays of one float dtype read and written as flat memory from their first element (the
    caller keeps every index in bounds: it owns the layout); boff an int64 array of at least k offsets."""
    float_types = (types.float32, types.float64)
    arrays = (a, b, c)
    if not all(isinstance(t, types.Array) and t.dtype in float_types for t in arrays):
        return None
    if len({t.dtype for t in arrays}) != 1 or not isinstance(boff, types.Array) or boff.dtype != types.int64:
        return None
    sig = types.void(a, types.int64, types.int64, b, types.int64, types.int64, boff, types.int64, c, types.int64,
                     types.int64)

    def codegen(context, builder, signature, args):
        a_, a0_, lda_, b_, b0_, bstep_, boff_, k_, c_, c0_, ldc_ = args
        sa, sb, so, sc = (context.make_array(signature.args[i])(context, builder, args[i]).data for i in (0, 3, 6, 8))
        scalar = context.get_value_type(signature.args[0].dtype)
        lanes = _VECTOR_BYTES // context.get_abi_sizeof(scalar)
        vec = ir.VectorType(scalar, lanes)
        i32, i64 = ir.IntType(32), ir.IntType(64)
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec, vec, vec]),
                                             f"llvm.fma.v{lanes}{'f32' if lanes == 8 else 'f64'}")
        vectors = NR // lanes
        splat = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)
        rows = [builder.gep(sa, [builder.add(a0_, builder.mul(lda_, ir.Constant(i64, i)))]) for i in range(MR)]
        right = builder.gep(sb, [b0_])
        block = [builder.gep(sc, [builder.add(c0_, builder.mul(ldc_, ir.Constant(i64, i)))]) for i in range(MR)]

        def vector_at(base, offset):
            return builder.bitcast(builder.gep(base, [offset]), vec.as_pointer())

        # the accumulators: stack slots that LLVM's mem2reg turns into registers
        acc = [cgutils.alloca_once_value(builder, ir.Constant(vec, [0.0] * lanes)) for _ in range(MR * vectors)]

        with cgutils.for_range(builder, k_) as loop:
            r = loop.index
            brow = builder.gep(right, [builder.load(builder.gep(so, [r]))])
            halves = (brow, builder.gep(brow, [bstep_]))
            half = vectors // 2
            bv = [builder.load(vector_at(halves[v // half], ir.Constant(i64, v % half * lanes)), align=4)
                  for v in range(vectors)]
            for i in range(MR):
                value = builder.load(builder.gep(rows[i], [r]))
                one = builder.insert_element(ir.Constant(vec, ir.Undefined), value, ir.Constant(i32, 0))
                broadcast = builder.shuffle_vector(one, ir.Constant(vec, ir.Undefined), splat)
                for v in range(vectors):
                    slot = acc[i * vectors + v]
                    builder.store(builder.call(fma, [broadcast, bv[v], builder.load(slot)]), slot)
        for i in range(MR):
            for v in range(vectors):
                builder.store(builder.load(acc[i * vectors + v]), vector_at(block[i], ir.Constant(i64, v * lanes)),
                              align=4)
        return context.get_dummy_value()
    return sig, codegen
