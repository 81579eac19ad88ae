// dlc scaled dot-product attention (dlc/ops/attention.py): one thread per query row (forward, dq) or key row
// (dk, dv), each sweeping the other side with an online softmax, so no L x S matrix is ever stored.
//
// Operands with their leading dims flattened: q (B, L, E), k (B, S, E), v (B, S, Ev); the forward output and
// its gradient are (B, L, Ev + 1), each row's log-sum-exp in the last column; the mask is (1 or B, 1 or L,
// 1 or S), bool (kind 1: false drops the key) or added to the scores (kind 2). The forward accumulates its
// output row in place, rescaled whenever the row's running max grows; the gradients recompute each
// probability as exp(score - lse). dq and [dk | dv] are written by one thread each (with as many keys as
// queries, attention_grad's thread r writes query row r's dq and key row r's dk and dv): no atomics, the
// same bits on every run. (A thread per row is the simple form: a tiled, shared-memory kernel is future work.)
#pragma once

struct DlcAttention {
  i64 L, S, E, Ev;
  bool mask_batched, mask_rows, mask_cols;  // which mask dims are not broadcast
  int mask_kind;                            // 0 none, 1 bool, 2 additive
  bool causal;
};

// q_i . k_j * scale with the masks applied; -inf where key j takes no part in query i
template <class T, class M>
__device__ __forceinline__ T dlc_attention_score(const T* __restrict__ q, const T* __restrict__ k,
                                                 const M* __restrict__ mask, const DlcAttention& a, T scale, i64 b,
                                                 i64 i, i64 j) {
  if (a.causal && j > i) return T(-INFINITY);
  const T* qi = q + (b * a.L + i) * a.E;
  const T* kj = k + (b * a.S + j) * a.E;
  T s = T(0);
  for (i64 e = 0; e < a.E; ++e) s += qi[e] * kj[e];
  s *= scale;
  if (a.mask_kind != 0) {
    const i64 mi = a.mask_rows ? i : 0, mj = a.mask_cols ? j : 0;
    const i64 ml = a.mask_rows ? a.L : 1, ms = a.mask_cols ? a.S : 1;
    const M m = mask[((a.mask_batched ? b : 0) * ml + mi) * ms + mj];
    if (a.mask_kind == 1) {
      if (!m) return T(-INFINITY);
    } else {
      s += (T)m;
    }
  }
  return s;
}

// row r = b * L + i of the forward output: softmax(scores) v, then the log-sum-exp
template <class T, class M>
__device__ __forceinline__ void dlc_attention_forward_row(const T* __restrict__ q, const T* __restrict__ k,
                                                          const T* __restrict__ v, const M* __restrict__ mask,
                                                          T* __restrict__ out, const DlcAttention& a, T scale, i64 r) {
  const i64 b = r / a.L, i = r % a.L;
  T* o = out + r * (a.Ev + 1);
  for (i64 d = 0; d < a.Ev; ++d) o[d] = T(0);
  T top = T(-INFINITY), total = T(0);
  const i64 end = a.causal ? (i + 1 < a.S ? i + 1 : a.S) : a.S;
  for (i64 j = 0; j < end; ++j) {
    const T s = dlc_attention_score(q, k, mask, a, scale, b, i, j);
    if (s == T(-INFINITY)) continue;
    if (s > top) {  // a new max: rescale what is summed so far
      const T shrink = dlc_exp(top - s);
      total *= shrink;
      for (i64 d = 0; d < a.Ev; ++d) o[d] *= shrink;
      top = s;
    }
    const T p = dlc_exp(s - top);
    total += p;
    const T* vj = v + (b * a.S + j) * a.Ev;
    for (i64 d = 0; d < a.Ev; ++d) o[d] += p * vj[d];
  }
  for (i64 d = 0; d < a.Ev; ++d) o[d] /= total;  // no key at all: 0/0, NaN, as the reference
  o[a.Ev] = dlc_log(total) + top;
}

// rowsum(dL/dout * out) - dL/dlse of query row r
template <class T>
__device__ __forceinline__ T dlc_attention_delta(const T* __restrict__ y, const T* __restrict__ g,
                                                 const DlcAttention& a, i64 r) {
  const T* yr = y + r * (a.Ev + 1);
  const T* gr = g + r * (a.Ev + 1);
  T acc = T(0);
  for (i64 d = 0; d < a.Ev; ++d) acc += gr[d] * yr[d];
  return acc - gr[a.Ev];
}

// p * (dL/dout_i . v_j - delta) for score s of query row r and key j
template <class T>
__device__ __forceinline__ T dlc_attention_ds(const T* __restrict__ v, const T* __restrict__ y,
                                              const T* __restrict__ g, const DlcAttention& a, T s, T delta, i64 b,
                                              i64 r, i64 j, T* p_out) {
  const T p = dlc_exp(s - y[r * (a.Ev + 1) + a.Ev]);
  const T* gr = g + r * (a.Ev + 1);
  const T* vj = v + (b * a.S + j) * a.Ev;
  T dp = T(0);
  for (i64 d = 0; d < a.Ev; ++d) dp += gr[d] * vj[d];
  *p_out = p;
  return p * (dp - delta);
}

// dq of query row r = b * L + i into out[0, E)
template <class T, class M>
__device__ __forceinline__ void dlc_attention_grad_q_into(const T* __restrict__ q, const T* __restrict__ k,
                                                          const T* __restrict__ v, const M* __restrict__ mask,
                                                          const T* __restrict__ y, const T* __restrict__ g,
                                                          T* __restrict__ out, const DlcAttention& a, T scale,
                                                          i64 r) {
  const i64 b = r / a.L, i = r % a.L;
  for (i64 e = 0; e < a.E; ++e) out[e] = T(0);
  const T delta = dlc_attention_delta(y, g, a, r);
  const i64 end = a.causal ? (i + 1 < a.S ? i + 1 : a.S) : a.S;
  for (i64 j = 0; j < end; ++j) {
    const T s = dlc_attention_score(q, k, mask, a, scale, b, i, j);
    if (s == T(-INFINITY)) continue;
    T p;
    const T ds = dlc_attention_ds(v, y, g, a, s, delta, b, r, j, &p);
    const T* kj = k + (b * a.S + j) * a.E;
    for (i64 e = 0; e < a.E; ++e) out[e] += ds * kj[e];
  }
  for (i64 e = 0; e < a.E; ++e) out[e] *= scale;
}

// [dk | dv] of key row t = b * S + j into out[0, E + Ev)
template <class T, class M>
__device__ __forceinline__ void dlc_attention_grad_kv_into(const T* __restrict__ q, const T* __restrict__ k,
                                                           const T* __restrict__ v, const M* __restrict__ mask,
                                                           const T* __restrict__ y, const T* __restrict__ g,
                                                           T* __restrict__ out, const DlcAttention& a, T scale,
                                                           i64 t) {
  const i64 b = t / a.S, j = t % a.S;
  for (i64 d = 0; d < a.E + a.Ev; ++d) out[d] = T(0);
  for (i64 i = a.causal ? j : 0; i < a.L; ++i) {
    const T s = dlc_attention_score(q, k, mask, a, scale, b, i, j);
    if (s == T(-INFINITY)) continue;
    const i64 r = b * a.L + i;
    T p;
    const T ds = dlc_attention_ds(v, y, g, a, s, dlc_attention_delta(y, g, a, r), b, r, j, &p);
    const T* qi = q + r * a.E;
    const T* gr = g + r * (a.Ev + 1);
    for (i64 e = 0; e < a.E; ++e) out[e] += ds * qi[e];
    for (i64 d = 0; d < a.Ev; ++d) out[a.E + d] += p * gr[d];
  }
  for (i64 e = 0; e < a.E; ++e) out[e] *= scale;
}

// row r of dq (attention_grad_q)
template <class T, class M>
__device__ __forceinline__ void dlc_attention_grad_q_row(const T* __restrict__ q, const T* __restrict__ k,
                                                         const T* __restrict__ v, const M* __restrict__ mask,
                                                         const T* __restrict__ y, const T* __restrict__ g,
                                                         T* __restrict__ dq, const DlcAttention& a, T scale, i64 r) {
  dlc_attention_grad_q_into(q, k, v, mask, y, g, dq + r * a.E, a, scale, r);
}

// key row t of [dk | dv] (attention_grad_kv)
template <class T, class M>
__device__ __forceinline__ void dlc_attention_grad_kv_row(const T* __restrict__ q, const T* __restrict__ k,
                                                          const T* __restrict__ v, const M* __restrict__ mask,
                                                          const T* __restrict__ y, const T* __restrict__ g,
                                                          T* __restrict__ dkv, const DlcAttention& a, T scale,
                                                          i64 t) {
  dlc_attention_grad_kv_into(q, k, v, mask, y, g, dkv + t * (a.E + a.Ev), a, scale, t);
}

// row r of [dq | dk | dv] (attention_grad, as many keys as queries): query row r's dq, key row r's dk and dv
template <class T, class M>
__device__ __forceinline__ void dlc_attention_grad_row(const T* __restrict__ q, const T* __restrict__ k,
                                                       const T* __restrict__ v, const M* __restrict__ mask,
                                                       const T* __restrict__ y, const T* __restrict__ g,
                                                       T* __restrict__ grad, const DlcAttention& a, T scale, i64 r) {
  T* row = grad + r * (2 * a.E + a.Ev);
  dlc_attention_grad_q_into(q, k, v, mask, y, g, row, a, scale, r);
  dlc_attention_grad_kv_into(q, k, v, mask, y, g, row + a.E, a, scale, r);
}
