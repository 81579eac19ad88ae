// dlc layer normalization (dlc/ops/norm.py): one block per row, statistics in double.
//
// Generated kernels loop over rows by block and call these with the block's
// threads striding over the row's n elements; every thread of the block must
// call them (they reduce across the block with barriers), and every thread
// gets the row's results.
#pragma once

struct DlcRowStats {
  double mean, rstd;  // the row's mean and 1 / sqrt(biased variance + eps)
};

// A centred second pass over the row (in cache) keeps the variance exact for rows with a large mean.
template <class T> __device__ DlcRowStats dlc_row_stats(const T* x, i64 n, double eps) {
  double s = 0.0;
  for (i64 c = threadIdx.x; c < n; c += blockDim.x) s += (double)x[c];
  const double mean = dlc_block_reduce<DlcSum>(s) / (double)n;
  double q = 0.0;
  for (i64 c = threadIdx.x; c < n; c += blockDim.x) {
    const double d = (double)x[c] - mean;
    q += d * d;
  }
  return DlcRowStats{mean, 1.0 / sqrt(dlc_block_reduce<DlcSum>(q) / (double)n + eps)};
}

// The row means of g and of g * xhat the gradient needs: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
template <class T> __device__ void dlc_layer_norm_grad_means(const T* x, const T* g, i64 n, DlcRowStats st,
                                                             double& mean_g, double& mean_gx) {
  double sg = 0.0, sgx = 0.0;
  for (i64 c = threadIdx.x; c < n; c += blockDim.x) {
    const double gc = (double)g[c];
    sg += gc;
    sgx += gc * (((double)x[c] - st.mean) * st.rstd);
  }
  mean_g = dlc_block_reduce<DlcSum>(sg) / (double)n;
  mean_gx = dlc_block_reduce<DlcSum>(sgx) / (double)n;
}
