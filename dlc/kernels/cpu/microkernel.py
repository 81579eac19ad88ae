"""Register-tiled multiply-add blocks: the inner loop of the tiled convolutions, written in LLVM IR.

Imported by the CPU backend as the module `dlc_cpu_microkernel`.

`fma_tile` computes an MR x NR block of a matrix product whose right operand's rows are read through a table of
offsets (so a convolution's input serves as that operand without copying it into columns: row k of tap (i, j)
of channel c is the input plane read from the tap's offset on). Its accumulators are MR*NR/V vector registers
(V lanes fill 32 bytes: 12 of AVX2's 16 for float32; float64's 24 spill, correct but slower, and the tiled
convolutions take float32 only) that stay in registers for the whole sum, and each step broadcasts MR values
of the left operand against NR/V vector loads of the right one.

`fma_tile_wide` is the same product in WIDE_MR x WIDE_NR blocks of 64-byte vectors: 16 accumulators of AVX-512's
32 registers, 16 FMAs for each row of the operands' offsets and broadcasts where the narrow block has 12, and
twice the positions per block. Measured on one core of the 2-core AMD EPYC (Zen 4, AVX-512; K = 576, 2400
blocks, GFLOP/s): 6 x 16 in 32-byte vectors 65-104, 8 x 32 in 64-byte vectors 111-116, 12 x 32 27-51 (spilled),
7 x 32 116, 10 x 32 103; the 3x3 stride-1 convs of ResNet's 32x32 and 16x16 stages at batch 16 on 2 threads
136-142 -> 184-220. Without AVX-512 (WIDE_REGISTERS false) its vectors would split in two, 32 accumulators for
16 registers: correct (the tests run it on any CPU), not measured there, and not chosen (conv_tiles.block_shape).

`fma_tile_add` and `fma_tile_wide_add` add their block's product to what C holds (a sum split into parts: the
tiled weight gradient's over chunks of samples).

`depthwise_run` is a 3x3 depthwise conv's run of output positions on channels-last activations, one vector
of channels at a time: its nine weight vectors stay in registers for the run (kernels/cpu/conv_nhwc.py).

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
WIDE_MR, WIDE_NR = 8, 32    # fma_tile_wide's block


def _wide_registers() -> bool:
    """Whether numba compiles for a CPU with AVX-512 (32 vector registers of 64 bytes): the host's features, or
    NUMBA_CPU_FEATURES where set (a portable cache)."""
    from numba.core import config

    if config.CPU_FEATURES is not None:
        return "+avx512f" in config.CPU_FEATURES.split(",")
    import llvmlite.binding as ll

    return bool(ll.get_host_cpu_features().get("avx512f", False))


WIDE_REGISTERS = _wide_registers()


def _block(mr, nr, vector_bytes, a, a0, lda, b, b0, bstep, boff, k, c, c0, ldc, accumulate=False):
    """The typing and code of an mr x nr block in vectors of vector_bytes (fma_tile's contract; with accumulate,
    the block's sums start from what c holds)."""
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
        lanes = vector_bytes // context.get_abi_sizeof(scalar)
        vec = ir.VectorType(scalar, lanes)
        i32, i64 = ir.IntType(32), ir.IntType(64)
        suffix = "f32" if signature.args[0].dtype == types.float32 else "f64"
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec, vec, vec]),
                                             f"llvm.fma.v{lanes}{suffix}")
        vectors = nr // lanes
        splat = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)
        rows = [builder.gep(sa, [builder.add(a0_, builder.mul(lda_, ir.Constant(i64, i)))]) for i in range(mr)]
        right = builder.gep(sb, [b0_])
        block = [builder.gep(sc, [builder.add(c0_, builder.mul(ldc_, ir.Constant(i64, i)))]) for i in range(mr)]

        def vector_at(base, offset):
            return builder.bitcast(builder.gep(base, [offset]), vec.as_pointer())

        # the accumulators: stack slots that LLVM's mem2reg turns into registers
        acc = [cgutils.alloca_once_value(builder, builder.load(vector_at(block[i], ir.Constant(i64, v * lanes)),
                                                                 align=4) if accumulate
                                         else ir.Constant(vec, [0.0] * lanes))
               for i in range(mr) for v in range(vectors)]

        with cgutils.for_range(builder, k_) as loop:
            r = loop.index
            brow = builder.gep(right, [builder.load(builder.gep(so, [r]))])
            halves = (brow, builder.gep(brow, [bstep_]))
            half = vectors // 2
            bv = [builder.load(vector_at(halves[v // half], ir.Constant(i64, v % half * lanes)), align=4)
                  for v in range(vectors)]
            for i in range(mr):
                value = builder.load(builder.gep(rows[i], [r]))
                one = builder.insert_element(ir.Constant(vec, ir.Undefined), value, ir.Constant(i32, 0))
                broadcast = builder.shuffle_vector(one, ir.Constant(vec, ir.Undefined), splat)
                for v in range(vectors):
                    slot = acc[i * vectors + v]
                    builder.store(builder.call(fma, [broadcast, bv[v], builder.load(slot)]), slot)
        for i in range(mr):
            for v in range(vectors):
                builder.store(builder.load(acc[i * vectors + v]), vector_at(block[i], ir.Constant(i64, v * lanes)),
                              align=4)
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def fma_tile(typingctx, a, a0, lda, b, b0, bstep, boff, k, c, c0, ldc):
    """c[c0 + i*ldc + q] = sum over r < k of a[a0 + i*lda + r] * b[b0 + boff[r] + q'], for i < MR and q < NR, where
    q' = q for the first NR/2 positions and q - NR/2 + bstep for the others: with bstep = NR/2 the block's
    positions lie side by side in b, with another the two halves lie apart (two output rows of NR/2).

    a, b and c are arrays of one float dtype read and written as flat memory from their first element (the
    caller keeps every index in bounds: it owns the layout); boff an int64 array of at least k offsets."""
    return _block(MR, NR, 32, a, a0, lda, b, b0, bstep, boff, k, c, c0, ldc)


@intrinsic
def fma_tile_wide(typingctx, a, a0, lda, b, b0, bstep, boff, k, c, c0, ldc):
    """fma_tile's product in blocks of WIDE_MR x WIDE_NR, in 64-byte vectors (halves of WIDE_NR/2 positions)."""
    return _block(WIDE_MR, WIDE_NR, 64, a, a0, lda, b, b0, bstep, boff, k, c, c0, ldc)



@intrinsic
def fma_tile_add(typingctx, a, a0, lda, b, b0, bstep, boff, k, c, c0, ldc):
    """fma_tile's product added to the MR x NR block of c (a sum over k split into parts, as the tiled weight
    gradient's over chunks of samples)."""
    return _block(MR, NR, 32, a, a0, lda, b, b0, bstep, boff, k, c, c0, ldc, accumulate=True)


@intrinsic
def fma_tile_wide_add(typingctx, a, a0, lda, b, b0, bstep, boff, k, c, c0, ldc):
    """fma_tile_wide's product added to the WIDE_MR x WIDE_NR block of c."""
    return _block(WIDE_MR, WIDE_NR, 64, a, a0, lda, b, b0, bstep, boff, k, c, c0, ldc, accumulate=True)

# A depthwise 3x3 conv's run of output positions, channels last: one vector of channels at a time.
TAPS = 9
DEPTHWISE_LANES_BYTES = 64 if WIDE_REGISTERS else 32


@intrinsic
def depthwise_run(typingctx, x, x0, xstep, toff, w, w0, wstep, out, o0, ostep, count):
    """out[o0 + p*ostep + l] = sum over t < 9 of w[w0 + t*wstep + l] * x[x0 + p*xstep + toff[t] + l] for
    p < count and l < LANES (the channels of one vector: 16 float32 with AVX-512, else 8).

    The nine weight vectors are loaded once and stay in registers for the whole run, so each output vector
    costs nine loads of the input and nine multiply-adds (written as loops over arrays, the weights were
    reloaded at every position: 7 loads for 3 multiply-adds). x, w and out are arrays of one float dtype read
    and written as flat memory from their first element (the caller keeps every index in bounds); toff an int64
    array of 9 offsets."""
    float_types = (types.float32, types.float64)
    if not all(isinstance(t, types.Array) and t.dtype in float_types for t in (x, w, out)):
        return None
    if len({x.dtype, w.dtype, out.dtype}) != 1 or not isinstance(toff, types.Array) or toff.dtype != types.int64:
        return None
    sig = types.void(x, types.int64, types.int64, toff, w, types.int64, types.int64, out, types.int64, types.int64,
                     types.int64)

    def codegen(context, builder, signature, args):
        x_, x0_, xstep_, toff_, w_, w0_, wstep_, out_, o0_, ostep_, count_ = args
        sx, so, sw, sout = (context.make_array(signature.args[i])(context, builder, args[i]).data
                            for i in (0, 3, 4, 7))
        scalar = context.get_value_type(signature.args[0].dtype)
        lanes = DEPTHWISE_LANES_BYTES // context.get_abi_sizeof(scalar)
        vec = ir.VectorType(scalar, lanes)
        i64 = ir.IntType(64)
        suffix = "f32" if signature.args[0].dtype == types.float32 else "f64"
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec, vec, vec]),
                                             f"llvm.fma.v{lanes}{suffix}")

        def vector_at(base, offset):
            return builder.bitcast(builder.gep(base, [offset]), vec.as_pointer())

        weights = [builder.load(vector_at(sw, builder.add(w0_, builder.mul(wstep_, ir.Constant(i64, t)))), align=4)
                   for t in range(TAPS)]
        offsets = [builder.load(builder.gep(so, [ir.Constant(i64, t)])) for t in range(TAPS)]
        with cgutils.for_range(builder, count_) as loop:
            p = loop.index
            base = builder.add(x0_, builder.mul(p, xstep_))
            acc = ir.Constant(vec, [0.0] * lanes)
            for t in range(TAPS):
                value = builder.load(vector_at(sx, builder.add(base, offsets[t])), align=4)
                acc = builder.call(fma, [weights[t], value, acc])
            builder.store(acc, vector_at(sout, builder.add(o0_, builder.mul(p, ostep_))), align=4)
        return context.get_dummy_value()
    return sig, codegen
