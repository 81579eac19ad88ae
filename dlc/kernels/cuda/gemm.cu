// dlc tiled GEMM: C[M,N] = sum_k A(i,k) * B(k,j), then a fused epilogue.
//
// One mainloop serves matmul (plain and with transposed operands, for the
// backward pass) and the implicit-GEMM convolutions in conv.cu: operands are
// read through loader functors (a(i, k), b(k, j) with bounds already checked)
// and the result goes through an epilogue functor epi(i, j, acc), where the
// generated code adds the bias, applies the activation and stores every
// output the fused kernel has.
//
// Tiling: a block computes a BM x BN tile of C, staging BK-wide slices of A
// and B in shared memory (tiles s and m fetch the next slice into registers
// while the current one is multiplied); each of its (BM/TM)*(BN/TN) threads
// accumulates a TM x TN register block. In float32 with 4x4 blocks (tile m),
// thread (tr, tc) owns runs of 4 rows, tr*4 + q*(4*BM/TM) + 0..3, and of 4
// columns, tc*4 + p*(4*BN/TN) + 0..3, each read from shared memory as one
// float4 (a quarter of the load instructions); otherwise rows
// tr + r*(BM/TM) and columns tc + c*(BN/TN). Either way consecutive threads
// touch consecutive columns (or runs of them), so epilogue stores coalesce
// and shared-memory reads are conflict-free.
// The tile shape is a template parameter; DLC_GEMM_CONFIGS lists the ones the
// runtime picks from by problem size (few large tiles starve the SMs, many
// small ones waste bandwidth).
#pragma once

#ifndef DLC_GEMM_PAD
// Staging a row-major operand, consecutive threads store down a column of the BK x (BM + PAD) tile:
// with BK = 8, words kk * (BM + PAD) + i fall in 8 * 4 distinct banks only when PAD is 4 (PAD 1: 4-way
// conflicts). The padding costs 4 words a row.
#define DLC_GEMM_PAD 4
#endif

// (name, BM, BN, BK, TM, TN, launch bounds): 256 threads each. `l` keeps 64 accumulators a thread:
// unbounded, ptxas gives it 130 registers (one block an SM); (256, 2) fits it in 128, without spills.
#define DLC_GEMM_CONFIGS(X)         \
  X(s, 32, 32, 16, 2, 2, )          \
  X(m, 64, 64, 8, 4, 4, )           \
  X(l, 128, 128, 8, 8, 8, __launch_bounds__(256, 2))

template <int BM, int BN, int BK, int TM, int TN, class T, class LoadA, class LoadB, class Epi>
__device__ __forceinline__ void dlc_gemm_mainloop(i64 M, i64 N, i64 K, LoadA load_a, LoadB load_b, Epi epi) {
  constexpr int TROWS = BM / TM, TCOLS = BN / TN, NT = TROWS * TCOLS;
  static_assert(BM % TM == 0 && BN % TN == 0, "tile must divide into register blocks");
  alignas(16) __shared__ T As[BK][BM + DLC_GEMM_PAD];   // rows of BM + 4 elements: each 16-byte aligned
  alignas(16) __shared__ T Bs[BK][BN + DLC_GEMM_PAD];
  const int tid = threadIdx.x;
  const int tr = tid / TCOLS, tc = tid % TCOLS;
  // float4 reads for float32 blocks of 4x4 (tile m); tile l's 8x8 spilled with them within its launch bounds
  constexpr bool kVector = sizeof(T) == 4 && TM % 4 == 0 && TN % 4 == 0 && TM * TN <= 16;
  // the r-th row and c-th column of the tile this thread owns (see the header)
  auto row_of = [&](int r) { return kVector ? r / 4 * (4 * TROWS) + tr * 4 + r % 4 : tr + r * TROWS; };
  auto col_of = [&](int c) { return kVector ? c / 4 * (4 * TCOLS) + tc * 4 + c % 4 : tc + c * TCOLS; };
  // the tiles of C are numbered along blockIdx.x alone (row-major: neighbouring blocks share A's rows);
  // gridDim.y would cap the rows at 65535 tiles
  const i64 tiles_n = (N + BN - 1) / BN, tile = blockIdx.x;
  const i64 row0 = tile / tiles_n * BM, col0 = tile % tiles_n * BN;

  T acc[TM][TN];
#pragma unroll
  for (int r = 0; r < TM; ++r)
#pragma unroll
    for (int c = 0; c < TN; ++c) acc[r][c] = T(0);

  // Each thread stages A_PER elements of A's BM x BK slice and B_PER of B's BK x BN slice, consecutive
  // threads reading consecutive addresses (the loaders say which index is contiguous in memory);
  // out-of-range elements are zeros. With small register blocks the next slice is fetched into registers
  // before the current one is multiplied, so its global loads are in flight during the arithmetic
  // (prefetch), and stored to shared memory after it; tile l's 64 accumulators leave no registers for it
  // within its launch bounds (ptxas spilled, even for staging arrays held only between a load and its
  // store), so it copies each slice straight from global to shared memory.
  constexpr bool kPrefetch = TM * TN <= 16;
  constexpr int A_PER = (BM * BK + NT - 1) / NT, B_PER = (BN * BK + NT - 1) / NT;
  // staging element e of A sits at (a_kk, a_i) of its tile, of B at (b_kk, b_j); past the tile or the
  // matrix its value is a zero
  auto a_kk = [](int e) { return LoadA::kRowsContiguous ? e / BM : e % BK; };
  auto a_i = [](int e) { return LoadA::kRowsContiguous ? e % BM : e / BK; };
  auto b_kk = [](int e) { return LoadB::kRowsContiguous ? e % BK : e / BN; };
  auto b_j = [](int e) { return LoadB::kRowsContiguous ? e / BK : e % BN; };
  auto a_value = [&](int e, i64 k0) {
    const i64 gi = row0 + a_i(e), gk = k0 + a_kk(e);
    return (e < BM * BK && gi < M && gk < K) ? load_a(gi, gk) : T(0);
  };
  auto b_value = [&](int e, i64 k0) {
    const i64 gj = col0 + b_j(e), gk = k0 + b_kk(e);
    return (e < BN * BK && gj < N && gk < K) ? load_b(gk, gj) : T(0);
  };
  T ra[A_PER], rb[B_PER];
  auto fetch = [&](i64 k0) {
#pragma unroll
    for (int p = 0; p < A_PER; ++p) {
      const int e = tid + p * NT;
      ra[p] = a_value(e, k0);
    }
#pragma unroll
    for (int p = 0; p < B_PER; ++p) {
      const int e = tid + p * NT;
      rb[p] = b_value(e, k0);
    }
  };
  auto stash = [&]() {
#pragma unroll
    for (int p = 0; p < A_PER; ++p) {
      const int e = tid + p * NT;
      if (e < BM * BK) As[a_kk(e)][a_i(e)] = ra[p];
    }
#pragma unroll
    for (int p = 0; p < B_PER; ++p) {
      const int e = tid + p * NT;
      if (e < BN * BK) Bs[b_kk(e)][b_j(e)] = rb[p];
    }
  };
  auto copy = [&](i64 k0) {
    for (int e = tid; e < BM * BK; e += NT) As[a_kk(e)][a_i(e)] = a_value(e, k0);
    for (int e = tid; e < BN * BK; e += NT) Bs[b_kk(e)][b_j(e)] = b_value(e, k0);
  };

  if constexpr (kPrefetch) fetch(0);
  for (i64 k0 = 0; k0 < K; k0 += BK) {
    if constexpr (kPrefetch) {
      stash();
    } else {
      copy(k0);
    }
    __syncthreads();
    if constexpr (kPrefetch) {
      if (k0 + BK < K) fetch(k0 + BK);
    }
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      T a[TM], b[TN];
      if constexpr (kVector) {
#pragma unroll
        for (int r = 0; r < TM; r += 4) {
          const float4 v = *reinterpret_cast<const float4*>(&As[kk][row_of(r)]);
          a[r] = v.x; a[r + 1] = v.y; a[r + 2] = v.z; a[r + 3] = v.w;
        }
#pragma unroll
        for (int c = 0; c < TN; c += 4) {
          const float4 v = *reinterpret_cast<const float4*>(&Bs[kk][col_of(c)]);
          b[c] = v.x; b[c + 1] = v.y; b[c + 2] = v.z; b[c + 3] = v.w;
        }
      } else {
#pragma unroll
        for (int r = 0; r < TM; ++r) a[r] = As[kk][row_of(r)];
#pragma unroll
        for (int c = 0; c < TN; ++c) b[c] = Bs[kk][col_of(c)];
      }
#pragma unroll
      for (int r = 0; r < TM; ++r)
#pragma unroll
        for (int c = 0; c < TN; ++c) acc[r][c] += a[r] * b[c];
    }
    __syncthreads();
  }

#pragma unroll
  for (int r = 0; r < TM; ++r) {
    const i64 i = row0 + row_of(r);
    if (i >= M) continue;
#pragma unroll
    for (int c = 0; c < TN; ++c) {
      const i64 j = col0 + col_of(c);
      if (j < N) epi(i, j, acc[r][c]);
    }
  }
}

// Loaders: a(i, k) and b(k, j) plus kRowsContiguous, whether consecutive
// rows (i of A, k of B) are adjacent in memory, which picks the coalesced
// staging order.
//
// Plain and transposed dense operands: A is M x K (TA: stored K x M), B is
// K x N (TB: stored N x K), leading dimensions lda/ldb in elements.
template <bool TA, class T> struct DlcDenseA {
  static constexpr bool kRowsContiguous = TA;
  const T* __restrict__ p; i64 ld;
  __device__ __forceinline__ T operator()(i64 i, i64 k) const { return TA ? p[k * ld + i] : p[i * ld + k]; }
};
template <bool TB, class T> struct DlcDenseB {
  static constexpr bool kRowsContiguous = TB;
  const T* __restrict__ p; i64 ld;
  __device__ __forceinline__ T operator()(i64 k, i64 j) const { return TB ? p[j * ld + k] : p[k * ld + j]; }
};

// A stand-alone SGEMM (C = alpha * op(A) op(B) + beta * C), one entry per
// tile configuration and transpose pair: what the benchmarks time and the
// tests check, and what generated kernels instantiate with their own epilogue.
template <int BM, int BN, int BK, int TM, int TN, bool TA, bool TB>
__device__ __forceinline__ void dlc_sgemm(const float* A, const float* B, float* C, i64 M, i64 N, i64 K,
                                          float alpha, float beta) {
  DlcDenseA<TA, float> a{A, TA ? M : K};
  DlcDenseB<TB, float> b{B, TB ? K : N};
  dlc_gemm_mainloop<BM, BN, BK, TM, TN, float>(M, N, K, a, b, [&](i64 i, i64 j, float acc) {
    C[i * N + j] = alpha * acc + (beta != 0.0f ? beta * C[i * N + j] : 0.0f);
  });
}

#define DLC_SGEMM_ENTRY(NAME, BM, BN, BK, TM, TN, BOUNDS, TA, TB)                                           \
  extern "C" __global__ void BOUNDS                                                                          \
      dlc_sgemm_##NAME(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C, i64 M, \
                       i64 N, i64 K, float alpha, float beta) {                                              \
    dlc_sgemm<BM, BN, BK, TM, TN, TA, TB>(A, B, C, M, N, K, alpha, beta);                                    \
  }
#define DLC_SGEMM_ALL_TRANSPOSES(NAME, BM, BN, BK, TM, TN, BOUNDS) \
  DLC_SGEMM_ENTRY(NAME##_nn, BM, BN, BK, TM, TN, BOUNDS, false, false) \
  DLC_SGEMM_ENTRY(NAME##_tn, BM, BN, BK, TM, TN, BOUNDS, true, false)  \
  DLC_SGEMM_ENTRY(NAME##_nt, BM, BN, BK, TM, TN, BOUNDS, false, true)  \
  DLC_SGEMM_ENTRY(NAME##_tt, BM, BN, BK, TM, TN, BOUNDS, true, true)

#ifdef DLC_SGEMM_STANDALONE
DLC_GEMM_CONFIGS(DLC_SGEMM_ALL_TRANSPOSES)
#endif
