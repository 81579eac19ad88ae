// dlc CUDA prelude: the scalar functions generated kernels call, warp/block
// reductions and the Philox4x32-10 generator. Included at the top of every
// generated module. Everything is __device__ inline and overloaded on float,
// double and the integer types, so one rendered expression serves every dtype.
#pragma once

typedef long long i64;

#ifndef DLC_WARP
#define DLC_WARP 32
#endif

// ---------------------------------------------------------------------------
// scalar functions named by the ops' `scalar` templates (prefixed dlc_ so
// they never collide with CUDA's own overloads)

template <class T> __device__ __forceinline__ T dlc_select(bool c, T a, T b) { return c ? a : b; }
// max/min propagate NaN like numpy (fmaxf would drop it)
template <class T> __device__ __forceinline__ T dlc_max(T a, T b) { return (a > b || a != a) ? a : b; }
template <class T> __device__ __forceinline__ T dlc_min(T a, T b) { return (a < b || a != a) ? a : b; }
template <class T> __device__ __forceinline__ T dlc_abs(T a) { return a < T(0) ? -a : a; }
template <class T> __device__ __forceinline__ T dlc_sign(T a) { return T((a > T(0)) - (a < T(0))); }
// integer division floors like numpy's // (C truncates toward zero); x // 0 is 0, as in numpy
template <class T> __device__ __forceinline__ T dlc_floordiv(T a, T b) {
  if (b == T(0)) return T(0);
  T q = a / b;
  return (q * b != a && ((a < T(0)) != (b < T(0)))) ? q - T(1) : q;
}
__device__ __forceinline__ bool dlc_and(bool a, bool b) { return a && b; }
__device__ __forceinline__ bool dlc_or(bool a, bool b) { return a || b; }
__device__ __forceinline__ bool dlc_not(bool a) { return !a; }

__device__ __forceinline__ float dlc_exp(float x) { return expf(x); }
__device__ __forceinline__ double dlc_exp(double x) { return exp(x); }
__device__ __forceinline__ float dlc_log(float x) { return logf(x); }
__device__ __forceinline__ double dlc_log(double x) { return log(x); }
__device__ __forceinline__ float dlc_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double dlc_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float dlc_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double dlc_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float dlc_erf(float x) { return erff(x); }
__device__ __forceinline__ double dlc_erf(double x) { return erf(x); }
__device__ __forceinline__ float dlc_sin(float x) { return sinf(x); }
__device__ __forceinline__ double dlc_sin(double x) { return sin(x); }
__device__ __forceinline__ float dlc_cos(float x) { return cosf(x); }
__device__ __forceinline__ double dlc_cos(double x) { return cos(x); }
__device__ __forceinline__ float dlc_pow(float x, float y) { return powf(x, y); }
__device__ __forceinline__ double dlc_pow(double x, double y) { return pow(x, y); }

// exp of a non-positive number only: stable at both ends (as the numpy reference)
template <class T> __device__ __forceinline__ T dlc_sigmoid(T x) {
  T e = dlc_exp(-dlc_abs(x));
  return x >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
}
__device__ __forceinline__ float dlc_log1p(float x) { return log1pf(x); }
__device__ __forceinline__ double dlc_log1p(double x) { return log1p(x); }
template <class T> __device__ __forceinline__ T dlc_softplus(T x) {
  return dlc_max(x, T(0)) + dlc_log1p(dlc_exp(-dlc_abs(x)));
}

// ---------------------------------------------------------------------------
// reductions: combine functors, a warp butterfly and a block reduction

template <class T> __device__ __forceinline__ T dlc_lowest() { return T(-INFINITY); }
template <> __device__ __forceinline__ int dlc_lowest<int>() { return -2147483647 - 1; }
template <> __device__ __forceinline__ i64 dlc_lowest<i64>() { return -9223372036854775807LL - 1; }
template <class T> __device__ __forceinline__ T dlc_highest() { return T(INFINITY); }
template <> __device__ __forceinline__ int dlc_highest<int>() { return 2147483647; }
template <> __device__ __forceinline__ i64 dlc_highest<i64>() { return 9223372036854775807LL; }

struct DlcSum { template <class T> __device__ static T id() { return T(0); }
                template <class T> __device__ static T f(T a, T b) { return a + b; } };
struct DlcProd { template <class T> __device__ static T id() { return T(1); }
                 template <class T> __device__ static T f(T a, T b) { return a * b; } };
struct DlcMax { template <class T> __device__ static T id() { return dlc_lowest<T>(); }
                template <class T> __device__ static T f(T a, T b) { return dlc_max(a, b); } };
struct DlcMin { template <class T> __device__ static T id() { return dlc_highest<T>(); }
                template <class T> __device__ static T f(T a, T b) { return dlc_min(a, b); } };

// every lane ends with the combination of all 32 lanes
template <class Op, class T> __device__ __forceinline__ T dlc_warp_reduce(T v) {
#pragma unroll
  for (int d = DLC_WARP / 2; d > 0; d >>= 1) v = Op::f(v, __shfl_xor_sync(0xffffffffu, v, d));
  return v;
}

// every thread of the row gets the result. A row is the block (blockDim.x a
// multiple of 32, blockDim.y 1) or, when blockDim.x == 32, one warp: then the
// block holds blockDim.y independent rows and no shared memory is touched.
template <class Op, class T> __device__ __forceinline__ T dlc_block_reduce(T v) {
  if (blockDim.x == DLC_WARP) return dlc_warp_reduce<Op>(v);
  __shared__ T partial[32];
  const int lane = threadIdx.x % DLC_WARP, warp = threadIdx.x / DLC_WARP;
  const int nwarps = (blockDim.x + DLC_WARP - 1) / DLC_WARP;
  v = dlc_warp_reduce<Op>(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < nwarps ? partial[lane] : Op::template id<T>();
  v = dlc_warp_reduce<Op>(v);
  __syncthreads();  // partial[] is reused by the next reduction
  return v;
}

// argmax/argmin carry (value, index); ties and NaN resolve like numpy: the
// first NaN, else the first index attaining the extreme
template <bool IsMax, class T> __device__ __forceinline__ bool dlc_arg_better(T v, i64 i, T w, i64 j) {
  if (v != v) return w == w || i < j;
  if (w != w) return false;
  if (v == w) return i < j;
  return IsMax ? v > w : v < w;
}

template <bool IsMax, class T> __device__ __forceinline__ void dlc_block_arg_reduce(T& v, i64& i) {
  __shared__ T pv[32];
  __shared__ i64 pi[32];
  const int lane = threadIdx.x % DLC_WARP, warp = threadIdx.x / DLC_WARP;
  const int nwarps = (blockDim.x + DLC_WARP - 1) / DLC_WARP;
  for (int d = DLC_WARP / 2; d > 0; d >>= 1) {
    T w = __shfl_xor_sync(0xffffffffu, v, d);
    i64 j = __shfl_xor_sync(0xffffffffu, i, d);
    if (dlc_arg_better<IsMax>(w, j, v, i)) { v = w; i = j; }
  }
  if (blockDim.x == DLC_WARP) return;  // one warp per row: done
  if (lane == 0) { pv[warp] = v; pi[warp] = i; }
  __syncthreads();
  if (lane < nwarps) { v = pv[lane]; i = pi[lane]; } else { i = -1; }
  for (int d = DLC_WARP / 2; d > 0; d >>= 1) {
    T w = __shfl_xor_sync(0xffffffffu, v, d);
    i64 j = __shfl_xor_sync(0xffffffffu, i, d);
    if (j >= 0 && (i < 0 || dlc_arg_better<IsMax>(w, j, v, i))) { v = w; i = j; }
  }
  __syncthreads();
}

// ---------------------------------------------------------------------------
// Philox4x32-10 (Salmon et al., SC'11): counter-based, so every thread draws
// its own numbers from (key, counter) with no state, identical to the numpy
// implementation of the reference and CPU backends.

struct DlcPhilox { unsigned int v[4]; };

__device__ __forceinline__ unsigned int dlc_mulhi32(unsigned int a, unsigned int b) {
  return (unsigned int)(((unsigned long long)a * (unsigned long long)b) >> 32);
}

__device__ __forceinline__ DlcPhilox dlc_philox4x32_10(unsigned int c0, unsigned int c1, unsigned int c2,
                                                       unsigned int c3, unsigned int k0, unsigned int k1) {
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    unsigned int hi0 = dlc_mulhi32(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
    unsigned int hi1 = dlc_mulhi32(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
    unsigned int n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
    k0 += 0x9E3779B9u; k1 += 0xBB67AE85u;
  }
  DlcPhilox r;
  r.v[0] = c0; r.v[1] = c1; r.v[2] = c2; r.v[3] = c3;
  return r;
}

// uniform [0, 1): float32 from the top 24 bits of one word, float64 from 53 bits of two
__device__ __forceinline__ float dlc_uniform01(unsigned int x) { return (float)(x >> 8) * (1.0f / 16777216.0f); }
__device__ __forceinline__ double dlc_uniform01_f64(unsigned int x0, unsigned int x1) {
  return ((double)(x0 >> 5) * 67108864.0 + (double)(x1 >> 6)) * (1.0 / 9007199254740992.0);
}
