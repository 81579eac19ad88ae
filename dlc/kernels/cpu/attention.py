"""Fused scaled dot-product attention for generated CPU kernels: FlashAttention's online softmax over key blocks.

Imported by the CPU backend as the module `dlc_cpu_attention`. Operands follow
dlc/ops/attention.py, with the leading dims flattened by the caller: q
(B, L, E), k (B, S, E), v (B, S, Ev), mask (1 or B, 1 or L, 1 or S) read only
when mask_kind is 1 (bool: False drops the key) or 2 (added to the scores);
causal drops keys j > i.

No function holds more of the scores than one block of BLOCK_Q queries by
BLOCK_K keys (per thread): the forward keeps each query row's running max and
sum and rescales its accumulated output when the max grows; it stores each
row's log-sum-exp beside the output, from which the backward recomputes the
probabilities block by block. The block products are BLAS GEMMs through
dlc_cpu_gemm.gemm_into, which takes the scale (alpha) and the sums over
blocks (beta = 1) inside the GEMM and writes the output rows, dq, dk and dv
in place in the output arrays: W10's backward (below) took 14.3-14.6 ms with
np.dot into scratch blocks, added and scaled in passes of their own, and
11.5-11.8 ms so (its forward 6.8-7.0 against 6.6-6.9); with the keys and
values transposed once per batch (_transposed) 10.7-11.0 ms (forward 6.0).

Up to DIRECT_ROWS queries a batch (a decoding step's one query) the forward
runs in plain loops instead (_forward_row): a dot product per kept key, then
the exponentials' sum and the values they weigh; a block's two GEMMs per 64
keys cost more in calls than in arithmetic there (W11's step, 4 heads over
256 cached keys: 27 us a layer in blocks, 13.5 us so).

The backward of self-attention (as many keys as queries) writes one array,
[dq | dk | dv] along the last axis (attention_backward), in one of two ways:
- one pass per batch (FlashAttention-2's order) when there are at least as
  many batches as threads: for each key block, every query block that sees
  it; dk and dv are summed over the query blocks, dq over the key blocks
  (key block 0 first: every query block sees it). Each block pair costs 5 block products
  (the scores, dL/dout v^T and the three gradients);
- two passes when there are fewer (a long sequence of one batch): dq over
  query blocks, then dk and dv over key blocks, each with its blocks spread
  over the threads and one writer per output block, at the price of
  recomputing the scores and dL/dout v^T in both (7 block products).
With as many keys as queries, W10's backward (64 batches of 256 causal rows,
64 features, 2 threads) took 16-18 ms in one pass against 24-27 ms in two.
Cross-attention (a different number of keys) keeps the two passes as two
ops, dq (attention_backward_q) and [dk | dv] (attention_backward_kv).

Threads: every (batch, block), or every batch in the one-pass backward, is a
task of its own, claimed from a shared counter by numba's threads
(dlc_cpu_threads), with each block's GEMMs on the thread that runs it.
Exponentials of float32 scores use the vectorizable dlc_cpu_fastmath.exp_f32
(numba's np.exp is a libm call per element).
"""

import numpy as np
from dlc_cpu_fastmath import exp_f32
from dlc_cpu_gemm import blas_on_calling_thread, gemm_into, restore_blas_threads
from dlc_cpu_threads import JIT, JIT_PARALLEL, claim, task_counter, workers_for
from dlc_cpu_threads import zero as zero_all
from numba import njit, prange, types
from numba.extending import overload

BLOCK_Q = 64
BLOCK_K = 64
DIRECT_ROWS = 4   # queries per batch up to which the forward runs in plain loops (_forward_row), not in blocks
JIT_SUM = dict(JIT, fastmath={"reassoc"})


def exp(x):
    """e**x: exp_f32 for float32, numpy's for float64 (chosen when numba types the call)."""
    return np.exp(x)


@overload(exp, jit_options=dict(cache=True, error_model="numpy"))
def _exp_typed(x):
    if x == types.float32:
        return lambda x: exp_f32(x)
    return lambda x: np.exp(x)


@njit(**JIT)
def _macs(B, L, S, width, causal):
    """The multiply-adds of one pass of block products: B * L * S * width, about half of it with causal."""
    pairs = L * S
    if causal:
        below = min(L, S)
        pairs = below * (below + 1) // 2 + max(0, L - S) * S
    return B * pairs * width


@njit(**JIT)
def _transposed(x, b, j0, j1, queries):
    """x[b, j0:j1]^T: keys as columns. A C-ordered copy when at least a block of `queries` rows will multiply
    it, so that their products are plain (NN) GEMMs, which BLAS runs faster on 64 x 64 blocks than a product
    with a transposed operand (4.7 against 6.7 us); for fewer (a decoding step's one query) the copy would cost
    more than it saves, and the products take the transposed view itself."""
    if queries >= BLOCK_Q:
        return np.ascontiguousarray(x[b, j0:j1].T)
    return x[b, j0:j1].T


@njit(**JIT)
def _block_scores(q, kt, k0, mask, b, i0, i1, j0, j1, scale, causal, mask_kind):
    """q[b, i0:i1] k[b, j0:j1]^T * scale (the scale inside the GEMM) with the masks applied (-inf where
    dropped), a new (C-ordered) block; kt is k[b]^T from key k0 on (_transposed)."""
    sb = np.empty((i1 - i0, j1 - j0), q.dtype)
    gemm_into(q[b, i0:i1], kt[:, j0 - k0:j1 - k0], sb, scale, 0.0)
    neg = sb.dtype.type(-np.inf)
    mb = b if mask.shape[0] > 1 else 0
    for r in range(i1 - i0):
        i = i0 + r
        mi = i if mask.shape[1] > 1 else 0
        row = sb[r]
        # one unit-stride loop per rule, each one LLVM vectorizes
        if mask_kind == 1:
            for c in range(j1 - j0):
                row[c] = row[c] if mask[mb, mi, j0 + c if mask.shape[2] > 1 else 0] else neg
        elif mask_kind == 2:
            for c in range(j1 - j0):
                row[c] += mask[mb, mi, j0 + c if mask.shape[2] > 1 else 0]
        if causal:
            for c in range(max(0, i + 1 - j0), j1 - j0):
                row[c] = neg
    return sb


@njit(**JIT)
def _key_blocks(i1, keys, causal):
    """How many keys a block of queries ending before i1 looks at: all, or up to the last row's diagonal."""
    return min(keys, i1) if causal else keys


@njit(**JIT)
def _forward_block(q, kt, v, mask, out, b, i0, sc, causal, mask_kind):
    """Rows i0 .. i0 + BLOCK_Q of batch b: out[..., :Ev] and each row's log-sum-exp in out[..., Ev]. The output
    rows accumulate in place (the GEMM's beta), rescaled when a row's running max grows. kt: k[b]^T, at least
    the keys these rows see."""
    L, S, Ev = q.shape[1], v.shape[1], v.shape[2]
    zero = q.dtype.type(0)
    i1 = min(L, i0 + BLOCK_Q)
    nq = i1 - i0
    acc = out[b, i0:i1, :Ev]
    top = np.full(nq, -np.inf, q.dtype)
    total = np.zeros(nq, q.dtype)
    first = True
    for j0 in range(0, _key_blocks(i1, S, causal), BLOCK_K):
        j1 = min(S, j0 + BLOCK_K)
        if causal:
            j1 = min(j1, i1)
        nk = j1 - j0
        sb = _block_scores(q, kt, 0, mask, b, i0, i1, j0, j1, sc, causal, mask_kind)
        for r in range(nq):
            new = top[r]
            for c in range(nk):
                new = max(new, sb[r, c])
            if new == -np.inf:  # every key so far dropped: nothing to add, nothing to rescale
                for c in range(nk):
                    sb[r, c] = zero
                continue
            # the exponentials in a loop of their own, which LLVM vectorizes, then their sum
            for c in range(nk):
                x = sb[r, c]
                sb[r, c] = zero if x == -np.inf else exp(x - new)
            total[r] = total[r] * exp(top[r] - new) + _row_sum(sb[r])
            if not first and new > top[r]:
                shrink = exp(top[r] - new)
                for d in range(Ev):
                    acc[r, d] *= shrink
            top[r] = new
        gemm_into(sb, v[b, j0:j1], acc, 1.0, 0.0 if first else 1.0)
        first = False
    if first:
        zero_all(acc)
    for r in range(nq):
        for d in range(Ev):
            acc[r, d] /= total[r]
        out[b, i0 + r, Ev] = np.log(total[r]) + top[r]


@njit(**JIT_SUM)
def _dot(a, b):
    """A dot product in any order (reassociated, so LLVM vectorizes it)."""
    total = a.dtype.type(0)
    for d in range(a.shape[0]):
        total += a[d] * b[d]
    return total


@njit(**JIT)
def _forward_row(q, k, v, mask, out, b, i, sc, causal, mask_kind, scores):
    """Query row i of batch b with plain loops: its scores (into `scores`, at least S long), their max, then the
    exponentials' sum and the values they weigh in one pass over the keys. For a few rows (a decoding step's
    one query), where a block's two GEMMs per 64 keys cost more in calls than in arithmetic. A key that a
    boolean mask or the causal rule drops costs no dot product."""
    S, Ev = k.shape[1], v.shape[2]
    neg = q.dtype.type(-np.inf)
    zero = q.dtype.type(0)
    mb, mi = (b if mask.shape[0] > 1 else 0), (i if mask.shape[1] > 1 else 0)
    keys = min(S, i + 1) if causal else S
    top = neg
    for j in range(keys):
        mj = j if mask.shape[2] > 1 else 0
        if mask_kind == 1 and not mask[mb, mi, mj]:
            scores[j] = neg
            continue
        x = _dot(q[b, i], k[b, j]) * sc
        if mask_kind == 2:
            x += mask[mb, mi, mj]
        scores[j] = x
        top = max(top, x)
    acc = out[b, i, :Ev]
    for d in range(Ev):
        acc[d] = zero
    total = zero
    if top != neg:
        for j in range(keys):
            if scores[j] != neg:
                p = exp(scores[j] - top)
                total += p
                for d in range(Ev):
                    acc[d] += p * v[b, j, d]
    for d in range(Ev):
        acc[d] /= total   # every key dropped: 0 / 0, NaN, as the formula gives
    out[b, i, Ev] = np.log(total) + top


@njit(**JIT_SUM)
def _row_sum(row):
    """A row's sum in any order (reassociated, so LLVM vectorizes it: a sum in order is one chain of adds)."""
    total = row.dtype.type(0)
    for c in range(row.shape[0]):
        total += row[c]
    return total


@njit(**JIT)
def _row_stats(y, g, b, i0, i1, Ev, lse, delta):
    """The block's rows' log-sum-exp and rowsum(dL/dout * out) - dL/dlse, into lse[:i1 - i0], delta[:i1 - i0]."""
    for r in range(i1 - i0):
        acc = y.dtype.type(0)
        for d in range(Ev):
            acc += g[b, i0 + r, d] * y[b, i0 + r, d]
        lse[r] = y[b, i0 + r, Ev]
        delta[r] = acc - g[b, i0 + r, Ev]


@njit(**JIT)
def _probabilities_and_ds(sb, dp, lse, delta):
    """sb becomes p = exp(score - lse) and dp becomes ds = p * (dp - delta), row by row."""
    zero = sb.dtype.type(0)
    for r in range(sb.shape[0]):
        for c in range(sb.shape[1]):
            x = sb[r, c]
            p = zero if x == -np.inf else exp(x - lse[r])
            sb[r, c] = p
            dp[r, c] = p * (dp[r, c] - delta[r])


@njit(**JIT)
def _block_backward(q, kt, vt, k0, mask, g, b, i0, i1, j0, j1, sc, causal, mask_kind, lse, delta):
    """One block's probabilities p (recomputed from the scores and each row's log-sum-exp) and
    ds = p * (dL/dout v^T - delta): what both backward passes multiply (kt, vt: k[b]^T and v[b]^T from key k0
    on)."""
    sb = _block_scores(q, kt, k0, mask, b, i0, i1, j0, j1, sc, causal, mask_kind)
    dpb = np.empty((i1 - i0, j1 - j0), q.dtype)
    gemm_into(g[b, i0:i1, :vt.shape[0]], vt[:, j0 - k0:j1 - k0], dpb, 1.0, 0.0)
    _probabilities_and_ds(sb, dpb, lse, delta)
    return sb, dpb


@njit(**JIT)
def _dq_block(q, k, v, mask, y, g, out, b, i0, sc, causal, mask_kind):
    """dq of rows i0 .. i0 + BLOCK_Q of batch b, summed in place into out's first E columns."""
    L, E = q.shape[1], q.shape[2]
    S = v.shape[1]
    i1 = min(L, i0 + BLOCK_Q)
    lse = np.empty(i1 - i0, q.dtype)
    delta = np.empty(i1 - i0, q.dtype)
    dq = out[b, i0:i1, :E]
    _row_stats(y, g, b, i0, i1, v.shape[2], lse, delta)
    keys = _key_blocks(i1, S, causal)
    kt, vt = _transposed(k, b, 0, keys, 0), _transposed(v, b, 0, keys, 0)   # one block's rows: no copy
    first = True
    for j0 in range(0, _key_blocks(i1, S, causal), BLOCK_K):
        j1 = min(S, j0 + BLOCK_K)
        if causal:
            j1 = min(j1, i1)
        sb, dpb = _block_backward(q, kt, vt, 0, mask, g, b, i0, i1, j0, j1, sc, causal, mask_kind, lse, delta)
        gemm_into(dpb, k[b, j0:j1], dq, sc, 0.0 if first else 1.0)
        first = False
    if first:
        zero_all(dq)


@njit(**JIT)
def _dkv_block(q, k, v, mask, y, g, out, b, j0, col, sc, causal, mask_kind):
    """dk and dv of keys j0 .. j0 + BLOCK_K of batch b, summed in place into out's columns from col on."""
    L, E = q.shape[1], q.shape[2]
    S, Ev = v.shape[1], v.shape[2]
    j1 = min(S, j0 + BLOCK_K)
    dk = out[b, j0:j1, col:col + E]
    dv = out[b, j0:j1, col + E:col + E + Ev]
    lse = np.empty(BLOCK_Q, q.dtype)
    delta = np.empty(BLOCK_Q, q.dtype)
    kt, vt = _transposed(k, b, j0, j1, L), _transposed(v, b, j0, j1, L)
    first = True
    # with causal, queries before j0 see none of these keys
    for i0 in range((j0 // BLOCK_Q) * BLOCK_Q if causal else 0, L, BLOCK_Q):
        i1 = min(L, i0 + BLOCK_Q)
        _row_stats(y, g, b, i0, i1, Ev, lse, delta)
        sb, dpb = _block_backward(q, kt, vt, j0, mask, g, b, i0, i1, j0, j1, sc, causal, mask_kind,
                                  lse[:i1 - i0], delta[:i1 - i0])
        beta = 0.0 if first else 1.0
        gemm_into(sb.T, g[b, i0:i1, :Ev], dv, 1.0, beta)
        gemm_into(dpb.T, q[b, i0:i1], dk, sc, beta)
        first = False
    if first:
        zero_all(dk)
        zero_all(dv)


@njit(**JIT)
def _batch_backward(q, k, v, mask, y, g, out, b, col, sc, causal, mask_kind):
    """The whole gradient of batch b in one pass: per key block, every query block that sees it (5 block
    products a pair); dk and dv summed over the query blocks, dq over the key blocks, each in place in out (the
    GEMMs' beta): dq in its first E columns, dk and dv in its columns from col on."""
    L, E = q.shape[1], q.shape[2]
    S, Ev = v.shape[1], v.shape[2]
    lse = np.empty(L, q.dtype)
    delta = np.empty(L, q.dtype)
    _row_stats(y, g, b, 0, L, Ev, lse, delta)
    kt, vt = _transposed(k, b, 0, S, L), _transposed(v, b, 0, S, L)
    dq = out[b, :, :E]
    if S == 0:
        zero_all(dq)
    for j0 in range(0, S, BLOCK_K):
        j1 = min(S, j0 + BLOCK_K)
        dk = out[b, j0:j1, col:col + E]
        dv = out[b, j0:j1, col + E:col + E + Ev]
        first = True
        # with causal, queries before j0 see none of these keys; every query block sees key block 0
        for i0 in range((j0 // BLOCK_Q) * BLOCK_Q if causal else 0, L, BLOCK_Q):
            i1 = min(L, i0 + BLOCK_Q)
            sb, dpb = _block_backward(q, kt, vt, 0, mask, g, b, i0, i1, j0, j1, sc, causal, mask_kind,
                                      lse[i0:i1], delta[i0:i1])
            beta = 0.0 if first else 1.0
            gemm_into(sb.T, g[b, i0:i1, :Ev], dv, 1.0, beta)
            gemm_into(dpb.T, q[b, i0:i1], dk, sc, beta)
            gemm_into(dpb, k[b, j0:j1], dq[i0:i1], sc, 0.0 if j0 == 0 else 1.0)
            first = False
        if first:
            zero_all(dk)
            zero_all(dv)


# ----------------------------------------------------------------------------
# the passes: every (batch, block), or every batch, a task claimed by a thread
#
# Each pass has a runner of its own, not one runner dispatching on a kind at run time: numba compiles every
# branch a function holds, so the forward would otherwise carry the backward's code (and the tests compiled
# the one-pass backward for every signature: twice the compile time of the attention tests).


@njit(**JIT)
def _workers(q, v, tasks, width, causal):
    """How many threads a pass of `tasks` tasks takes (`width`: multiply-adds per score of its block
    products)."""
    return workers_for(_macs(q.shape[0], q.shape[1], v.shape[1], width, causal), tasks)


@njit(**JIT)
def _forward_task(q, k, v, mask, out, t, blocks, per_batch, sc, causal, mask_kind):
    """Task t of the forward: every query block of batch t, its keys transposed once (per_batch), or query
    block t % blocks of batch t // blocks, multiplying the keys as they are (a copy for one block costs about
    what it saves: W10's forward, 64 batches of 256 causal rows, spent 0.7 of its 6.4 ms transposing the keys
    once per block)."""
    if q.shape[1] <= DIRECT_ROWS:
        scores = np.empty(k.shape[1], q.dtype)
        for i in range(q.shape[1]):
            _forward_row(q, k, v, mask, out, t, i, sc, causal, mask_kind, scores)
    elif per_batch:
        kt = _transposed(k, t, 0, k.shape[1], q.shape[1])
        for block in range(blocks):
            _forward_block(q, kt, v, mask, out, t, block * BLOCK_Q, sc, causal, mask_kind)
    else:
        b, i0 = t // blocks, (t % blocks) * BLOCK_Q
        kt = _transposed(k, b, 0, _key_blocks(min(q.shape[1], i0 + BLOCK_Q), k.shape[1], causal), 0)
        _forward_block(q, kt, v, mask, out, b, i0, sc, causal, mask_kind)


@njit(**JIT_PARALLEL)
def _forward_pass(q, k, v, mask, out, sc, causal, mask_kind):
    """Every batch, when there are at least as many as threads, else every (batch, query block): in order on one
    thread below the threads' threshold, else claimed by numba's threads, each block's GEMMs on the thread that
    runs it (so for the passes below)."""
    blocks = (q.shape[1] + BLOCK_Q - 1) // BLOCK_Q
    workers = _workers(q, v, q.shape[0] * blocks, q.shape[2] + v.shape[2], causal)
    per_batch = q.shape[0] >= workers or q.shape[1] <= DIRECT_ROWS
    tasks = q.shape[0] if per_batch else q.shape[0] * blocks
    previous = blas_on_calling_thread()
    if workers == 1:
        for t in range(tasks):
            _forward_task(q, k, v, mask, out, t, blocks, per_batch, sc, causal, mask_kind)
    else:
        counter = task_counter()
        for _ in prange(workers):
            t = claim(counter)
            while t < tasks:
                _forward_task(q, k, v, mask, out, t, blocks, per_batch, sc, causal, mask_kind)
                t = claim(counter)
    restore_blas_threads(previous)


@njit(**JIT)
def _block_gradient(keys, q, k, v, mask, y, g, out, col, t, blocks, sc, causal, mask_kind):
    """Task t of a block pass: dq of query block t % blocks of batch t // blocks, or with `keys`, dk and dv of
    its key block t % blocks (into out's columns from col on)."""
    b, block = t // blocks, t % blocks
    if keys:
        _dkv_block(q, k, v, mask, y, g, out, b, block * BLOCK_K, col, sc, causal, mask_kind)
    else:
        _dq_block(q, k, v, mask, y, g, out, b, block * BLOCK_Q, sc, causal, mask_kind)


@njit(**JIT_PARALLEL)
def _block_gradient_pass(keys, q, k, v, mask, y, g, out, col, sc, causal, mask_kind):
    """dq over every (batch, query block), or with `keys` dk and dv over every (batch, key block)."""
    E, Ev = q.shape[2], v.shape[2]
    if keys:
        blocks, width = (v.shape[1] + BLOCK_K - 1) // BLOCK_K, 2 * (E + Ev)
    else:
        blocks, width = (q.shape[1] + BLOCK_Q - 1) // BLOCK_Q, 2 * E + Ev
    tasks = q.shape[0] * blocks
    workers = _workers(q, v, tasks, width, causal)
    previous = blas_on_calling_thread()
    if workers == 1:
        for t in range(tasks):
            _block_gradient(keys, q, k, v, mask, y, g, out, col, t, blocks, sc, causal, mask_kind)
    else:
        counter = task_counter()
        for _ in prange(workers):
            t = claim(counter)
            while t < tasks:
                _block_gradient(keys, q, k, v, mask, y, g, out, col, t, blocks, sc, causal, mask_kind)
                t = claim(counter)
    restore_blas_threads(previous)


@njit(**JIT_PARALLEL)
def _batch_gradient_pass(q, k, v, mask, y, g, out, workers, sc, causal, mask_kind):
    """The one-pass gradient of every batch, a task each."""
    B, E = q.shape[0], q.shape[2]
    previous = blas_on_calling_thread()
    if workers == 1:
        for b in range(B):
            _batch_backward(q, k, v, mask, y, g, out, b, E, sc, causal, mask_kind)
    else:
        counter = task_counter()
        for _ in prange(workers):
            b = claim(counter)
            while b < B:
                _batch_backward(q, k, v, mask, y, g, out, b, E, sc, causal, mask_kind)
                b = claim(counter)
    restore_blas_threads(previous)


@njit(**JIT)
def attention_forward(q, k, v, mask, out, scale, causal, mask_kind):
    """out[..., :Ev] = softmax(q k^T * scale + masks) v; out[..., Ev] = each row's log-sum-exp of its scores."""
    _forward_pass(q, k, v, mask, out, q.dtype.type(scale), causal, mask_kind)


@njit(**JIT)
def attention_backward_q(q, k, v, mask, y, g, dq, scale, causal, mask_kind):
    """dq = (p * (dL/dout v^T - delta)) k * scale, over query blocks."""
    _block_gradient_pass(False, q, k, v, mask, y, g, dq, 0, q.dtype.type(scale), causal, mask_kind)


@njit(**JIT)
def attention_backward_kv(q, k, v, mask, y, g, dkv, scale, causal, mask_kind):
    """dkv[..., :E] = ds^T q * scale and dkv[..., E:] = p^T dL/dout, over key blocks."""
    _block_gradient_pass(True, q, k, v, mask, y, g, dkv, 0, q.dtype.type(scale), causal, mask_kind)


@njit(**JIT)
def attention_backward(q, k, v, mask, y, g, grad, scale, causal, mask_kind):
    """grad = [dq | dk | dv] along the last axis (as many queries as keys): one pass per batch when every
    thread has a batch of its own, else the two passes."""
    B, L, E = q.shape
    S, Ev = v.shape[1], v.shape[2]
    sc = q.dtype.type(scale)
    workers = _workers(q, v, L + S, 3 * E + 2 * Ev, causal)   # 5 products a block pair in one pass
    if B >= workers:
        _batch_gradient_pass(q, k, v, mask, y, g, grad, workers, sc, causal, mask_kind)
        return
    _block_gradient_pass(False, q, k, v, mask, y, g, grad, E, sc, causal, mask_kind)
    _block_gradient_pass(True, q, k, v, mask, y, g, grad, E, sc, causal, mask_kind)


def signatures():
    """How generated code calls the four attention kernels, which it binds by symbol (kernels/cpu/library.py):
    variant (name_dtype_maskdtype) -> (function, argument types). Every array is C-ordered and 3-d, the ones
    read declared read-only; the mask is bool or of q's dtype (q itself stands in, never read, when there is
    none)."""
    out = {}
    for dtype in (types.float32, types.float64):
        read, written = types.Array(dtype, 3, "C", readonly=True), types.Array(dtype, 3, "C")
        flags = (types.float64, types.boolean, types.int64)
        for mask_dtype in (types.boolean, dtype):
            qkvm = (read, read, read, types.Array(mask_dtype, 3, "C", readonly=True))
            out[f"attention_forward_{dtype}_{mask_dtype}"] = ("attention_forward", qkvm + (written,) + flags)
            for name in ("attention_backward", "attention_backward_q", "attention_backward_kv"):
                out[f"{name}_{dtype}_{mask_dtype}"] = (name, qkvm + (read, read, written) + flags)
    return out
