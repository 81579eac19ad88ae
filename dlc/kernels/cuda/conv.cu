// dlc convolutions (NCHW, PyTorch weight layout, groups) as implicit GEMMs on
// the mainloop of gemm.cu: no im2col buffer is ever written, the loaders
// compute each window element's address (or a zero for padding) on the fly.
//
// For group g (blockIdx.z), with Cg = C/G input and Og = Co/G output channels
// per group and R = kh*kw taps:
//   forward      y[n, g*Og+m, oh, ow]  M = Og, N = batch*Ho*Wo, K = Cg*R
//                A(m, (c,r,s)) = w[g*Og+m, c, r, s]
//                B((c,r,s), (n,oh,ow)) = x[n, g*Cg+c, oh*sh-ph+r*dh, ow*sw-pw+s*dw]
//   data grad    dx[n, g*Cg+c, h, w]   M = Cg, N = batch*H*W, K = Og*R
//                A(c, (m,r,s)) = w[g*Og+m, c, r, s]
//                B((m,r,s), (n,h,w)) = gy[n, g*Og+m, oh, ow] where oh*sh = h+ph-r*dh (else 0)
//   weight grad  dw[g*Og+m, c, r, s]   M = Og, N = Cg*R, K = batch*Ho*Wo
//                A(m, (n,oh,ow)) = gy[n, g*Og+m, oh, ow]
//                B((n,oh,ow), (c,r,s)) = x[n, g*Cg+c, oh*sh-ph+r*dh, ow*sw-pw+s*dw]
// The tile configuration (DLC_GEMM_CONFIGS) is picked per problem size by
// the runtime, as for matmul. The weight gradient has few output tiles and a
// long K (every output position of the batch): the runtime may split K over
// `chunks` blocks (split-K) that write partial tiles to a workspace, summed
// in a fixed order by a second pass that runs the epilogue.
#pragma once

struct DlcConv2d {
  i64 batch;
  int C, H, W, Co, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw, groups;
  __device__ __forceinline__ int cg() const { return C / groups; }
  __device__ __forceinline__ int og() const { return Co / groups; }
  __device__ __forceinline__ int taps() const { return kh * kw; }
};

// x[n, ch, ih, iw] or 0 outside the image (the zero padding)
template <class T>
__device__ __forceinline__ T dlc_conv_pixel(const T* __restrict__ x, const DlcConv2d& q, i64 n, int ch, i64 ih,
                                            i64 iw) {
  if (ih < 0 || ih >= q.H || iw < 0 || iw >= q.W) return T(0);
  return x[((n * q.C + ch) * q.H + ih) * q.W + iw];
}

template <class T> struct DlcConvFwdA {
  static constexpr bool kRowsContiguous = false;
  const T* __restrict__ w; DlcConv2d q; int g;
  __device__ __forceinline__ T operator()(i64 m, i64 k) const {
    return w[((i64)g * q.og() + m) * (i64)(q.cg() * q.taps()) + k];
  }
};
template <class T> struct DlcConvFwdB {
  static constexpr bool kRowsContiguous = false;
  const T* __restrict__ x; DlcConv2d q; int g;
  __device__ __forceinline__ T operator()(i64 k, i64 j) const {
    const int c = (int)(k / q.taps()), t = (int)(k % q.taps()), r = t / q.kw, s = t % q.kw;
    const i64 ow = j % q.Wo, rest = j / q.Wo, oh = rest % q.Ho, n = rest / q.Ho;
    return dlc_conv_pixel(x, q, n, g * q.cg() + c, oh * q.sh - q.ph + r * q.dh, ow * q.sw - q.pw + s * q.dw);
  }
};

template <class T> struct DlcConvDgradA {
  static constexpr bool kRowsContiguous = false;
  const T* __restrict__ w; DlcConv2d q; int g;
  __device__ __forceinline__ T operator()(i64 c, i64 k) const {
    const i64 m = k / q.taps(), t = k % q.taps();
    return w[(((i64)g * q.og() + m) * q.cg() + c) * q.taps() + t];
  }
};
template <class T> struct DlcConvDgradB {
  static constexpr bool kRowsContiguous = false;
  const T* __restrict__ gy; DlcConv2d q; int g;
  __device__ __forceinline__ T operator()(i64 k, i64 j) const {
    const int m = (int)(k / q.taps()), t = (int)(k % q.taps()), r = t / q.kw, s = t % q.kw;
    const i64 w = j % q.W, rest = j / q.W, h = rest % q.H, n = rest / q.H;
    const i64 th = h + q.ph - (i64)r * q.dh, tw = w + q.pw - (i64)s * q.dw;
    if (th < 0 || tw < 0 || th % q.sh || tw % q.sw) return T(0);
    const i64 oh = th / q.sh, ow = tw / q.sw;
    if (oh >= q.Ho || ow >= q.Wo) return T(0);
    return gy[((n * q.Co + (i64)g * q.og() + m) * q.Ho + oh) * q.Wo + ow];
  }
};

template <class T> struct DlcConvWgradA {
  static constexpr bool kRowsContiguous = false;
  const T* __restrict__ gy; DlcConv2d q; int g;
  __device__ __forceinline__ T operator()(i64 m, i64 k) const {
    const i64 ow = k % q.Wo, rest = k / q.Wo, oh = rest % q.Ho, n = rest / q.Ho;
    return gy[((n * q.Co + (i64)g * q.og() + m) * q.Ho + oh) * q.Wo + ow];
  }
};
template <class T> struct DlcConvWgradB {
  static constexpr bool kRowsContiguous = true;
  const T* __restrict__ x; DlcConv2d q; int g;
  __device__ __forceinline__ T operator()(i64 k, i64 j) const {
    const int c = (int)(j / q.taps()), t = (int)(j % q.taps()), r = t / q.kw, s = t % q.kw;
    const i64 ow = k % q.Wo, rest = k / q.Wo, oh = rest % q.Ho, n = rest / q.Ho;
    return dlc_conv_pixel(x, q, n, g * q.cg() + c, oh * q.sh - q.ph + r * q.dh, ow * q.sw - q.pw + s * q.dw);
  }
};

// The GEMM problem (M, N, K) of each pass, for the launch grid and the mainloop.
__device__ __forceinline__ void dlc_conv_fwd_mnk(const DlcConv2d& q, i64& M, i64& N, i64& K) {
  M = q.og(); N = q.batch * q.Ho * q.Wo; K = (i64)q.cg() * q.taps();
}
__device__ __forceinline__ void dlc_conv_dgrad_mnk(const DlcConv2d& q, i64& M, i64& N, i64& K) {
  M = q.cg(); N = q.batch * q.H * q.W; K = (i64)q.og() * q.taps();
}
__device__ __forceinline__ void dlc_conv_wgrad_mnk(const DlcConv2d& q, i64& M, i64& N, i64& K) {
  M = q.og(); N = (i64)q.cg() * q.taps(); K = q.batch * q.Ho * q.Wo;
}

// A loader restricted to the K slice [k0, k0 + K'): split-K's blocks each multiply one slice.
template <class L> struct DlcSliceKA {
  static constexpr bool kRowsContiguous = L::kRowsContiguous;
  L load; i64 k0;
  __device__ __forceinline__ auto operator()(i64 i, i64 k) const { return load(i, k0 + k); }
};
template <class L> struct DlcSliceKB {
  static constexpr bool kRowsContiguous = L::kRowsContiguous;
  L load; i64 k0;
  __device__ __forceinline__ auto operator()(i64 k, i64 j) const { return load(k0 + k, j); }
};
