// dlc 2-d pooling (NCHW): one thread per output element, forward and backward.
//
// The backward passes are gathers, not scatters: each input pixel sums the
// gradients of the windows that cover it (at most ceil(kh/sh)*ceil(kw/sw)),
// so they need no atomics and give the same bits on every run. Max pooling
// recomputes each covering window's first maximal tap (row-major, strict >,
// as the reference and PyTorch pick on ties) instead of storing an index.
// Generated kernels call these per element inside a grid-stride loop whose
// block size (DLC_POOL_BLOCK threads) the runtime sets.
#pragma once

#ifndef DLC_POOL_BLOCK
#define DLC_POOL_BLOCK 256
#endif

struct DlcPool2d {
  int C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw;
  bool count_include_pad;
};

// the max of window (oh, ow) and its first maximal tap; padding is -inf
template <class T>
__device__ __forceinline__ T dlc_max_pool_window(const T* __restrict__ x, const DlcPool2d& q, i64 nc, i64 oh, i64 ow,
                                                 int* tap) {
  T best = -INFINITY;
  int arg = 0;
  for (int r = 0; r < q.kh; ++r)
    for (int s = 0; s < q.kw; ++s) {
      const i64 ih = oh * q.sh - q.ph + r, iw = ow * q.sw - q.pw + s;
      const T v = (ih >= 0 && ih < q.H && iw >= 0 && iw < q.W) ? x[(nc * q.H + ih) * q.W + iw] : T(-INFINITY);
      if (v > best || (r == 0 && s == 0)) { best = v; arg = r * q.kw + s; }
    }
  if (tap) *tap = arg;
  return best;
}

template <class T>
__device__ __forceinline__ T dlc_avg_pool_divisor(const DlcPool2d& q, i64 oh, i64 ow) {
  if (q.count_include_pad) return T(q.kh * q.kw);
  const i64 h0 = oh * q.sh - q.ph, w0 = ow * q.sw - q.pw;
  const i64 rows = min(h0 + q.kh, (i64)q.H) - max(h0, (i64)0), cols = min(w0 + q.kw, (i64)q.W) - max(w0, (i64)0);
  return T(rows * cols);
}

template <class T>
__device__ __forceinline__ T dlc_avg_pool_window(const T* __restrict__ x, const DlcPool2d& q, i64 nc, i64 oh, i64 ow) {
  T total = T(0);
  for (int r = 0; r < q.kh; ++r)
    for (int s = 0; s < q.kw; ++s) {
      const i64 ih = oh * q.sh - q.ph + r, iw = ow * q.sw - q.pw + s;
      if (ih >= 0 && ih < q.H && iw >= 0 && iw < q.W) total += x[(nc * q.H + ih) * q.W + iw];
    }
  return total / dlc_avg_pool_divisor<T>(q, oh, ow);
}

// the output windows (oh, ow) whose taps cover input pixel (h, w): [lo, hi] per axis
__device__ __forceinline__ void dlc_pool_cover(i64 i, int pad, int k, int stride, int out, i64& lo, i64& hi) {
  const i64 t = i + pad;  // window o covers i when o*stride <= t <= o*stride + k - 1
  lo = t - k + 1 <= 0 ? 0 : (t - k + 1 + stride - 1) / stride;
  hi = t / stride;
  if (hi > out - 1) hi = out - 1;
}

template <class T>
__device__ __forceinline__ T dlc_max_pool_grad_at(const T* __restrict__ x, const T* __restrict__ gy,
                                                  const DlcPool2d& q, i64 nc, i64 h, i64 w) {
  i64 oh0, oh1, ow0, ow1;
  dlc_pool_cover(h, q.ph, q.kh, q.sh, q.Ho, oh0, oh1);
  dlc_pool_cover(w, q.pw, q.kw, q.sw, q.Wo, ow0, ow1);
  T total = T(0);
  for (i64 oh = oh0; oh <= oh1; ++oh)
    for (i64 ow = ow0; ow <= ow1; ++ow) {
      int tap;
      dlc_max_pool_window(x, q, nc, oh, ow, &tap);
      if ((h - (oh * q.sh - q.ph)) * q.kw + (w - (ow * q.sw - q.pw)) == tap) total += gy[(nc * q.Ho + oh) * q.Wo + ow];
    }
  return total;
}

template <class T>
__device__ __forceinline__ T dlc_avg_pool_grad_at(const T* __restrict__ gy, const DlcPool2d& q, i64 nc, i64 h, i64 w) {
  i64 oh0, oh1, ow0, ow1;
  dlc_pool_cover(h, q.ph, q.kh, q.sh, q.Ho, oh0, oh1);
  dlc_pool_cover(w, q.pw, q.kw, q.sw, q.Wo, ow0, ow1);
  T total = T(0);
  for (i64 oh = oh0; oh <= oh1; ++oh)
    for (i64 ow = ow0; ow <= ow1; ++ow) total += gy[(nc * q.Ho + oh) * q.Wo + ow] / dlc_avg_pool_divisor<T>(q, oh, ow);
  return total;
}

// Adaptive average pooling: output cell o of n averages input rows
// [floor(o*size/n), ceil((o+1)*size/n)), PyTorch's bins (they may overlap).
__device__ __forceinline__ void dlc_adaptive_bin(i64 o, int size, int n, i64& lo, i64& hi) {
  lo = (o * size) / n;
  hi = ((o + 1) * size + n - 1) / n;
}

template <class T>
__device__ __forceinline__ T dlc_adaptive_avg_window(const T* __restrict__ x, int H, int W, int OH, int OW, i64 nc,
                                                     i64 oh, i64 ow) {
  i64 h0, h1, w0, w1;
  dlc_adaptive_bin(oh, H, OH, h0, h1);
  dlc_adaptive_bin(ow, W, OW, w0, w1);
  T total = T(0);
  for (i64 h = h0; h < h1; ++h)
    for (i64 w = w0; w < w1; ++w) total += x[(nc * H + h) * W + w];
  return total / T((h1 - h0) * (w1 - w0));
}

// the gradient: each input pixel gathers the share of every bin that holds it
template <class T>
__device__ __forceinline__ T dlc_adaptive_avg_grad_at(const T* __restrict__ gy, int H, int W, int OH, int OW, i64 nc,
                                                      i64 h, i64 w) {
  T total = T(0);
  for (i64 oh = 0; oh < OH; ++oh) {
    i64 h0, h1;
    dlc_adaptive_bin(oh, H, OH, h0, h1);
    if (h < h0 || h >= h1) continue;
    for (i64 ow = 0; ow < OW; ++ow) {
      i64 w0, w1;
      dlc_adaptive_bin(ow, W, OW, w0, w1);
      if (w >= w0 && w < w1) total += gy[(nc * OH + oh) * OW + ow] / T((h1 - h0) * (w1 - w0));
    }
  }
  return total;
}
