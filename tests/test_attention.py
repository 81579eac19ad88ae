"""Scaled dot-product attention: the op against a plain softmax formula and PyTorch, its gradients against finite
differences and torch.autograd, the fused CPU kernel against the reference, errors, and the kernel's scratch."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import check_grad, rand

import dlc
from dlc import passes
from dlc.inspect import program_of
from dlc.ops.random import uniform_ref


def plain_attention(q, k, v, mask=None, causal=False, scale=None):
    """softmax(q k^T * scale + mask) v written out with numpy, the whole score matrix at once."""
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    s = np.einsum("...le,...se->...ls", q, k) * scale
    if causal:
        s = np.where(np.tril(np.ones(s.shape[-2:], bool)), s, -np.inf)
    if mask is not None:
        s = np.where(mask, s, -np.inf) if mask.dtype == bool else s + mask
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    return np.einsum("...ls,...sd->...ld", p / p.sum(axis=-1, keepdims=True), v)


def inputs_like(*arrays, names="qkvm"):
    return [dlc.input(n, a.shape, a.dtype.name) for n, a in zip(names, arrays)]


def attend(arrays, target="reference", **kwargs):
    q, k, v, *m = inputs_like(*arrays)
    y = dlc.scaled_dot_product_attention(q, k, v, mask=m[0] if m else None, **kwargs)
    return dlc.compile([y], target=target)(*arrays)


def keep_mask(rng, shape):
    """A random boolean mask in which every query row keeps key 0 (no row is all masked out)."""
    m = rng.random(shape) > 0.4
    m[..., 0] = True
    return m


# (lead, L, S, E, Ev): no leading dims, batch, batch x heads; L != S both ways; lengths off the 64-blocks
SHAPES = [((), 5, 5, 4, 4), ((3,), 6, 9, 4, 5), ((2, 3), 9, 4, 8, 3), ((2,), 130, 70, 4, 6), ((1, 2), 67, 129, 3, 2)]


@pytest.mark.parametrize("lead, L, S, E, Ev", SHAPES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_forward_matches_the_plain_formula(lead, L, S, E, Ev, dtype, rng):
    q, k, v = rand(rng, lead + (L, E), dtype), rand(rng, lead + (S, E), dtype), rand(rng, lead + (S, Ev), dtype)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == "float32" else dict(rtol=1e-11, atol=1e-12)
    (got,) = attend([q, k, v])
    assert got.dtype == dtype and got.shape == lead + (L, Ev)
    np.testing.assert_allclose(got, plain_attention(q, k, v), **tol)
    (got,) = attend([q, k, v], causal=True, scale=0.3)
    np.testing.assert_allclose(got, plain_attention(q, k, v, causal=True, scale=0.3), **tol)
    mask = keep_mask(rng, (L, S))
    (got,) = attend([q, k, v, mask])
    np.testing.assert_allclose(got, plain_attention(q, k, v, mask), **tol)
    bias = rand(rng, lead + (1, S), dtype)
    (got,) = attend([q, k, v, bias], causal=True)
    np.testing.assert_allclose(got, plain_attention(q, k, v, bias, causal=True), **tol)


def test_matches_torch_with_masks_and_broadcast_leading_dims(rng):
    torch = pytest.importorskip("torch")
    sdpa = torch.nn.functional.scaled_dot_product_attention
    q, k, v = rand(rng, (2, 3, 6, 4)), rand(rng, (1, 3, 8, 4)), rand(rng, (8, 5))   # k and v broadcast
    T = [torch.tensor(a) for a in (q, k, v)]
    (got,) = attend([q, k, v])
    np.testing.assert_allclose(got, sdpa(*[t.expand(2, 3, -1, -1) for t in T]).numpy(), rtol=1e-11, atol=1e-12)
    (got,) = attend([q, k, v], causal=True)
    np.testing.assert_allclose(got, sdpa(*[t.expand(2, 3, -1, -1) for t in T], is_causal=True).numpy(),
                               rtol=1e-11, atol=1e-12)
    key_padding = keep_mask(rng, (2, 1, 1, 8))   # one mask row per batch element, shared by heads and queries
    (got,) = attend([q, k, v, key_padding])
    want = sdpa(*[t.expand(2, 3, -1, -1) for t in T], attn_mask=torch.tensor(key_padding)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12)
    bias = rand(rng, (3, 6, 8))
    (got,) = attend([q, k, v, bias], scale=0.25)
    want = sdpa(*[t.expand(2, 3, -1, -1) for t in T], attn_mask=torch.tensor(bias), scale=0.25).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12)


CASES = [dict(), dict(causal=True), dict(mask="bool"), dict(mask="add", causal=True, scale=0.6)]


def _mask_for(case, rng, L, S, dtype):
    if case.get("mask") == "bool":
        return keep_mask(rng, (L, S))
    if case.get("mask") == "add":
        return rand(rng, (1, L, S), dtype)
    return None


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "plain")
def test_gradients_match_finite_differences(case, rng):
    L, S = 4, 6
    mask = _mask_for(case, rng, L, S, "float64")
    kwargs = {k: v for k, v in case.items() if k != "mask"}

    def build(q, k, v):
        return dlc.scaled_dot_product_attention(q, k, v, mask=mask, **kwargs)

    check_grad(build, [rand(rng, (2, L, 3)), rand(rng, (2, S, 3)), rand(rng, (2, S, 2))])


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "plain")
def test_gradients_match_torch_autograd(case, rng):
    torch = pytest.importorskip("torch")
    L, S = 7, 5
    q, k, v = rand(rng, (2, 2, L, 4)), rand(rng, (2, 2, S, 4)), rand(rng, (2, 2, S, 3))
    mask = _mask_for(case, rng, L, S, "float64")
    gy = rand(rng, (2, 2, L, 3))
    kwargs = {k: v for k, v in case.items() if k != "mask"}
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    tmask = None if mask is None else torch.tensor(mask)
    if kwargs.get("causal") and mask is not None:   # torch refuses both: the causal part goes into the mask
        tmask = tmask + torch.where(torch.ones(L, S).tril().bool(), 0.0, -torch.inf).double()
    ty = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=tmask, scale=kwargs.get("scale"),
                                                          is_causal=kwargs.get("causal", False) and mask is None)
    ty.backward(torch.tensor(gy))
    Q, K, V = inputs_like(q, k, v)
    y = dlc.scaled_dot_product_attention(Q, K, V, mask=mask, **kwargs)
    grads = dlc.grad(dlc.sum(y * dlc.constant(gy, "float64")), [Q, K, V])
    for target in ("reference", "cpu"):
        got = dlc.compile([y, *grads], target=target)(q, k, v)
        for g, want, what in zip(got, [ty, tq.grad, tk.grad, tv.grad], "y q k v".split()):
            np.testing.assert_allclose(g, want.detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=f"{target}: {what}")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cpu_kernel_matches_reference_off_block_sizes(dtype, rng):
    """Lengths that are not multiples of the kernel's 64-row blocks, L < S and L > S, with each kind of mask."""
    tol = dict(rtol=2e-4, atol=2e-5) if dtype == "float32" else dict(rtol=1e-10, atol=1e-12)
    outputs = []
    for L, S, causal, kind in [(130, 70, True, "bool"), (67, 129, False, "add"), (65, 65, True, None)]:
        q = dlc.input(f"q{L}", ("B", 2, L, 8), dtype)
        k = dlc.input(f"k{L}", ("B", 2, S, 8), dtype)
        v = dlc.input(f"v{L}", ("B", 2, S, 5), dtype)
        mask = {"bool": keep_mask(rng, (2, L, S)), "add": rand(rng, (1, 1, L, 1), dtype), None: None}[kind]
        y = dlc.scaled_dot_product_attention(q, k, v, mask=mask, causal=causal)
        outputs += [y, *dlc.grad(dlc.sum(dlc.sin(y)), [q, k, v])]
    feeds = {n.attr("name"): rand(rng, (2,) + tuple(n.shape[1:]), dtype)
             for n in dlc.Graph([o.node for o in outputs]).inputs()}
    cpu = dlc.compile(outputs, target="cpu")
    assert not cpu.backend.stats["fallbacks"], cpu.backend.stats["fallbacks"]
    ref = dlc.compile(outputs, target="reference")
    for i, (got, want) in enumerate(zip(cpu(**feeds), ref(**feeds))):
        np.testing.assert_allclose(got, want, err_msg=f"output {i}", **tol)


@pytest.mark.parametrize("L, S, dtype", [(1, 1, "float32"), (1, 130, "float32"), (3, 37, "float64"),
                                         (4, 70, "float32"), (5, 70, "float32")])
def test_few_query_rows_in_plain_loops_match_the_reference(L, S, dtype, rng):
    """Up to DIRECT_ROWS queries a batch (a decoding step's one) the forward runs in plain loops, not in blocks of
    GEMMs (5 rows: blocks again): every mask kind, causal, a row with every key masked (NaN, as the formula), and
    the gradients, which read the forward's log-sum-exp."""
    tol = dict(rtol=2e-4, atol=2e-5) if dtype == "float32" else dict(rtol=1e-10, atol=1e-12)
    outputs = []
    for tag, causal, kind in [("a", True, "bool"), ("b", False, "add"), ("c", False, None), ("d", True, None)]:
        q = dlc.input(f"q{tag}", ("B", 3, L, 8), dtype)
        k = dlc.input(f"k{tag}", ("B", 3, S, 8), dtype)
        v = dlc.input(f"v{tag}", ("B", 3, S, 5), dtype)
        if kind == "bool":
            mask = keep_mask(rng, (3, L, S))
        elif kind == "add":
            mask = rand(rng, (1, 1, L, S), dtype)
            mask[..., S // 2:] = -np.inf   # dropped keys, as a decoding cache masks the rows not yet written
        else:
            mask = None
        y = dlc.scaled_dot_product_attention(q, k, v, mask=mask, causal=causal)
        outputs += [y, *dlc.grad(dlc.sum(dlc.sin(y)), [q, k, v])]
    feeds = {n.attr("name"): rand(rng, (2,) + tuple(n.shape[1:]), dtype)
             for n in dlc.Graph([o.node for o in outputs]).inputs()}
    cpu = dlc.compile(outputs, target="cpu")
    ref = dlc.compile(outputs, target="reference")
    for i, (got, want) in enumerate(zip(cpu(**feeds), ref(**feeds))):
        np.testing.assert_allclose(got, want, err_msg=f"output {i}", **tol)

    qv, kv, vv = (rand(rng, (2, L, 8), dtype), rand(rng, (2, S, 8), dtype), rand(rng, (2, S, 5), dtype))
    none_kept = np.ones((2, L, S), bool)
    none_kept[1, 0] = False   # batch 1's first query keeps no key
    (got,) = attend([qv, kv, vv, none_kept], target="cpu")
    assert np.isnan(got[1, 0]).all() and not np.isnan(np.delete(got.reshape(-1, 5), L, axis=0)).any()
    with np.errstate(invalid="ignore"):   # the formula's own NaN row
        want = plain_attention(qv, kv, vv, none_kept)
    np.testing.assert_allclose(got[0], want[0], **tol)


def _arena_bytes(outputs):
    return passes.plan_memory(program_of(dlc.compile(outputs, target="reference")), {}).arena_bytes


def test_scratch_does_not_grow_with_the_score_matrix():
    """At L = S = 1024 the L x S scores (4 MiB per head in float32) never enter the arena, forward or backward,
    where the same attention written with matmul and softmax stores them."""
    L = S = 1024
    heads, E = 2, 16
    q, k, v = (dlc.input(n, (1, heads, L, E)) for n in "qkv")
    y = dlc.scaled_dot_product_attention(q, k, v)
    fused = _arena_bytes([y, *dlc.grad(dlc.sum(y * y), [q, k, v])])
    z = dlc.softmax(dlc.matmul(q, dlc.swapaxes(k, -1, -2)) * 0.25, axis=-1) @ v
    unfused = _arena_bytes([z, *dlc.grad(dlc.sum(z * z), [q, k, v])])
    scores = heads * L * S * 4
    assert fused < scores / 8 and unfused >= scores, (fused, unfused, scores)


def test_bad_operands_are_errors_at_the_users_line():
    q, k, v = dlc.input("q", (2, 5, 4)), dlc.input("k", (2, 6, 4)), dlc.input("v", (2, 6, 3))
    with pytest.raises(dlc.ShapeError, match=r"attention at .*test_attention\.py:\d+: .*feature dim 4 differs"):
        dlc.scaled_dot_product_attention(q, dlc.input("k3", (2, 6, 3)), v)
    with pytest.raises(dlc.ShapeError, match="k has 6 keys but v has 7"):
        dlc.scaled_dot_product_attention(q, k, dlc.input("v7", (2, 7, 3)))
    with pytest.raises(dlc.ShapeError, match="do not broadcast"):
        dlc.scaled_dot_product_attention(q, dlc.input("k5", (3, 6, 4)), dlc.input("v5", (3, 6, 3)))
    with pytest.raises(dlc.ShapeError, match=r"mask \(2, 5, 5\) must be"):
        dlc.scaled_dot_product_attention(q, k, v, mask=np.ones((2, 5, 5), bool))
    with pytest.raises(dlc.DTypeError, match="mask must be bool or float"):
        dlc.scaled_dot_product_attention(q, k, v, mask=np.ones((5, 6), np.int64))
    with pytest.raises(dlc.DTypeError, match="different dtypes"):
        dlc.scaled_dot_product_attention(q, k, dlc.input("v64", (2, 6, 3), "float64"))
    with pytest.raises(dlc.ShapeError, match="at least 2 dims"):
        dlc.scaled_dot_product_attention(dlc.input("q1", (4,)), k, v)
    with pytest.raises(ValueError, match=r"dropout_p=0.1 needs seed= and step="):
        dlc.scaled_dot_product_attention(q, k, v, dropout_p=0.1)
    with pytest.raises(ValueError, match=r"dropout_p must be a number in \[0, 1\], got 1.5"):
        dlc.scaled_dot_product_attention(q, k, v, dropout_p=1.5, seed=0, step=0)


def dropped_attention(q, k, v, p, seed, step, mask=None, causal=False):
    """The plain formula with the probabilities dropped by the Philox stream of (seed, step), as dlc.dropout
    draws it: probability kept where the float32 uniform of its flat index is below 1 - p, then scaled."""
    scale = 1.0 / np.sqrt(q.shape[-1])
    s = np.einsum("...le,...se->...ls", q, k) * scale
    if causal:
        s = np.where(np.tril(np.ones(s.shape[-2:], bool)), s, -np.inf)
    if mask is not None:
        s = np.where(mask, s, -np.inf)
    probs = np.exp(s - s.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    keep = uniform_ref(probs.shape, seed, step, np.float32) < np.float32(1 - p)
    return np.einsum("...ls,...sd->...ld", np.where(keep, probs / (1 - p), 0.0), v), probs


def test_dropout_p_zero_is_the_fused_op_unchanged():
    q, k, v = dlc.input("q", (2, 5, 4)), dlc.input("k", (2, 6, 4)), dlc.input("v", (2, 6, 3))
    plain = dlc.scaled_dot_product_attention(q, k, v, causal=True)
    assert dlc.scaled_dot_product_attention(q, k, v, causal=True, dropout_p=0.0, seed=3, step=1).node is plain.node
    assert plain.node.inputs[0].op == "attention"


def test_dropout_drops_the_probabilities_with_the_philox_stream(rng):
    q, k, v = rand(rng, (2, 3, 5, 4)), rand(rng, (2, 3, 6, 4)), rand(rng, (2, 3, 6, 2))
    mask = keep_mask(rng, (5, 6))
    qi, ki, vi = inputs_like(q, k, v)
    step = dlc.input("step", (), "int64")
    y = dlc.scaled_dot_product_attention(qi, ki, vi, mask=mask, causal=True, dropout_p=0.3, seed=11, step=step)
    fn = dlc.compile(y, target="reference")
    for s in (0, 5):
        want, _ = dropped_attention(q, k, v, 0.3, 11, s, mask=mask, causal=True)
        np.testing.assert_allclose(fn(q, k, v, np.int64(s)), want, rtol=1e-12, atol=1e-14)
    assert not np.allclose(fn(q, k, v, np.int64(0)), fn(q, k, v, np.int64(5)))  # each step its own mask


@pytest.mark.parametrize("target", ["reference", "cpu"])
def test_dropout_keeps_the_expected_output(target, rng):
    """Each output element is sum_j p_j v_j m_j / (1 - p) with independent m_j ~ Bernoulli(1 - p): its mean is
    the output without dropout and its variance sum_j p_j^2 v_j^2 * p / (1 - p). Over n draws (n copies of one
    query, key and value set, each copy drawing its own mask elements) the average must lie within 5 standard
    errors of the exact output, which an unscaled dropout misses by far (at p = 0.25 it is 25% low, 17 to 65
    standard errors here)."""
    n, p = 20000, 0.25
    q, k, v = rand(rng, (1, 4, 8)), rand(rng, (1, 7, 8)), rand(rng, (1, 7, 3))
    qi, ki, vi = inputs_like(*(np.repeat(a, n, axis=0) for a in (q, k, v)))
    y = dlc.scaled_dot_product_attention(qi, ki, vi, causal=True, dropout_p=p, seed=2, step=0)
    draws = dlc.compile(y, target=target)(*(np.repeat(a, n, axis=0) for a in (q, k, v)))
    exact = plain_attention(q, k, v, causal=True)[0]
    _, probs = dropped_attention(q, k, v, p, 2, 0, causal=True)
    variance = np.einsum("ls,sd->ld", probs[0] ** 2, v[0] ** 2) * p / (1 - p)
    standard_error = np.sqrt(variance / n)
    assert np.all(np.abs(draws.mean(axis=0) - exact) <= 5 * standard_error + 1e-12), \
        (draws.mean(axis=0) - exact) / standard_error
    assert np.all(draws.std(axis=0) > 0)  # the copies drew different masks


def test_dropout_gradients_match_finite_differences_on_a_fixed_mask(rng):
    mask = keep_mask(rng, (4, 6))

    def build(q, k, v):
        return dlc.scaled_dot_product_attention(q, k, v, mask=mask, dropout_p=0.4, seed=5, step=2)

    check_grad(build, [rand(rng, (2, 4, 3)), rand(rng, (2, 6, 3)), rand(rng, (2, 6, 2))])


def test_reachable_under_torch_names():
    assert dlc.functional.scaled_dot_product_attention is dlc.scaled_dot_product_attention
    assert dlc.nn.functional.scaled_dot_product_attention is dlc.scaled_dot_product_attention
    q = dlc.input("q", (3, 4))
    y = dlc.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=np.ones((3, 3), bool), is_causal=True)
    x = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    np.testing.assert_allclose(dlc.compile(y)(x), plain_attention(x, x, x, causal=True), rtol=1e-5)


def test_an_exported_function_keeps_the_attention_op(tmp_path, rng):
    q = dlc.input("q", ("B", 2, 5, 4), "float64")
    y = dlc.scaled_dot_product_attention(q, q, q, mask=np.tri(5, 5, dtype=bool), scale=0.3)
    fn = dlc.compile([y, *dlc.grad(dlc.sum(y * y), [q])], target="reference")
    dlc.export(fn, tmp_path / "attention.dlc")
    loaded = dlc.load(tmp_path / "attention.dlc", target="reference")
    x = rand(rng, (3, 2, 5, 4))
    for got, want in zip(loaded(x), fn(x)):
        np.testing.assert_array_equal(got, want)


def _formula(q, k, v, mask, kind, causal, g, scale):
    """float64 out, dq, dk, dv of the plain formula (the reference of the kernels called directly): s, p =
    softmax, dv = p^T dy, ds = p * (dy v^T - rowsum(dy * y)), dq = ds k, dk = ds^T q."""
    L, S, Ev = q.shape[1], k.shape[1], v.shape[2]
    q64, k64, v64, dy = (a.astype(np.float64) for a in (q, k, v, g[..., :Ev]))
    s = np.einsum("ble,bse->bls", q64, k64) * scale
    if causal:
        s = np.where(np.tril(np.ones((L, S), bool)), s, -np.inf)
    if kind == "bool":
        s = np.where(mask, s, -np.inf)
    elif kind == "add":
        s = s + mask
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    y = p @ v64
    ds = p * (dy @ v64.transpose(0, 2, 1) - (dy * y).sum(axis=-1, keepdims=True))
    return y, ds @ k64 * scale, ds.transpose(0, 2, 1) @ q64 * scale, p.transpose(0, 2, 1) @ dy


@pytest.mark.parametrize("causal, kind", [(True, "bool"), (False, "add")])
def test_cpu_kernels_on_threads_match_one_thread_and_the_formula(causal, kind, rng):
    """The kernels called directly on a shape above the threads' threshold: every block on all threads gives the
    same bits as on one (a block's arithmetic does not depend on its thread), and forward and backward agree
    with the plain formula."""
    import numba

    from dlc.runtime.cpu import load_kernel_modules

    load_kernel_modules()
    import dlc_cpu_attention as kernels
    import dlc_cpu_threads

    B, L, S, E, Ev = 16, 300, 260, 64, 48
    assert kernels._macs(B, L, S, E + Ev, causal) >= dlc_cpu_threads.PARALLEL_MIN_MACS
    q, k, v = (rng.standard_normal((B, n, e)).astype(np.float32) for n, e in ((L, E), (S, E), (S, Ev)))
    mask = keep_mask(rng, (B, L, S)) if kind == "bool" else rng.standard_normal((1, L, 1)).astype(np.float32)
    g = rng.standard_normal((B, L, Ev + 1)).astype(np.float32)
    g[..., Ev] = 0  # no gradient reaches the log-sum-exp column
    scale, mask_kind = 1 / np.sqrt(E), {"bool": 1, "add": 2}[kind]

    def run(threads):
        before = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            y = np.full((B, L, Ev + 1), np.nan, np.float32)
            dq, dkv = np.full(q.shape, np.nan, np.float32), np.full((B, S, E + Ev), np.nan, np.float32)
            kernels.attention_forward(q, k, v, mask, y, scale, causal, mask_kind)
            kernels.attention_backward_q(q, k, v, mask, y, g, dq, scale, causal, mask_kind)
            kernels.attention_backward_kv(q, k, v, mask, y, g, dkv, scale, causal, mask_kind)
            return y, dq, dkv
        finally:
            numba.set_num_threads(before)

    one, every = run(1), run(numba.config.NUMBA_NUM_THREADS)
    for a, b, what in zip(one, every, ("out", "dq", "dkv")):
        np.testing.assert_array_equal(a, b, err_msg=what)

    y, dq, dk, dv = _formula(q, k, v, mask, kind, causal, g, scale)
    want = [y, dq, np.concatenate([dk, dv], -1)]
    for got, w, what in zip((every[0][..., :Ev], every[1], every[2]), want, ("out", "dq", "dkv")):
        np.testing.assert_allclose(got, w, rtol=2e-4, atol=2e-4 * float(np.abs(w).max()), err_msg=what)


@pytest.mark.parametrize("B, L, causal, kind", [(16, 200, True, "bool"), (3, 130, False, "add"),
                                                 (1, 1024, True, "none")])
def test_one_gradient_kernel_for_self_attention_matches_the_formula(B, L, causal, kind, rng):
    """attention_backward writes [dq | dk | dv]: in one pass per batch when there are at least as many batches
    as threads (then the same bits on one thread and on all), in two passes over blocks for one long batch;
    either way the plain formula's gradients."""
    import numba

    from dlc.runtime.cpu import load_kernel_modules

    load_kernel_modules()
    import dlc_cpu_attention as kernels
    import dlc_cpu_threads

    E, Ev = 64, 48
    threads = numba.config.NUMBA_NUM_THREADS
    if B == 1:   # the two-pass path: above the threads' threshold with fewer batches than threads
        assert kernels._macs(B, L, L, 3 * E + 2 * Ev, causal) >= dlc_cpu_threads.PARALLEL_MIN_MACS
        if threads < 2:
            pytest.skip("one thread: the one-pass path only")
    q, k, v = (rng.standard_normal((B, L, e)).astype(np.float32) for e in (E, E, Ev))
    mask = {"bool": lambda: keep_mask(rng, (B, L, L)), "add": lambda: rng.standard_normal((1, L, 1)).astype(
        np.float32), "none": lambda: q}[kind]()
    g = rng.standard_normal((B, L, Ev + 1)).astype(np.float32)
    g[..., Ev] = 0
    scale, mask_kind = 1 / np.sqrt(E), {"none": 0, "bool": 1, "add": 2}[kind]
    y = np.empty((B, L, Ev + 1), np.float32)
    kernels.attention_forward(q, k, v, mask, y, scale, causal, mask_kind)

    def run(count):
        before = numba.get_num_threads()
        numba.set_num_threads(count)
        try:
            grad = np.full((B, L, 2 * E + Ev), np.nan, np.float32)
            kernels.attention_backward(q, k, v, mask, y, g, grad, scale, causal, mask_kind)
            return grad
        finally:
            numba.set_num_threads(before)

    every, one = run(threads), run(1)
    if B >= threads:
        np.testing.assert_array_equal(one, every)
    want = np.concatenate(_formula(q, k, v, mask, kind, causal, g, scale)[1:], axis=-1)
    for got in (every, one):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * float(np.abs(want).max()))


def test_self_attention_takes_one_gradient_op_and_cross_attention_two(rng):
    """The gradient of self-attention is one attention_grad op (one kernel: dq, dk and dv from one recomputation
    of the scores); with a different number of keys, attention_grad_q and attention_grad_kv; both equal the
    reference on cpu."""
    for L, S in ((40, 40), (40, 24)):
        dlc.reset_default_store()
        q, k, v = dlc.input("q", (2, 3, L, 16)), dlc.input("k", (2, 3, S, 16)), dlc.input("v", (2, 3, S, 8))
        w = dlc.input("w", (2, 3, L, 8))
        loss = dlc.sum(dlc.scaled_dot_product_attention(q, k, v, causal=L == S) * w)
        grads = dlc.grad(loss, [q, k, v])
        fns = {t: dlc.compile(list(grads), inputs=[q, k, v, w], target=t) for t in ("reference", "cpu")}
        ops = [n.op for kernel in program_of(fns["cpu"]).kernels for n in kernel.nodes if "attention_grad" in n.op]
        assert sorted(ops) == (["attention_grad"] if L == S else ["attention_grad_kv", "attention_grad_q"])
        args = [rng.standard_normal(t.shape).astype(np.float32) for t in (q, k, v, w)]
        for got, want in zip(fns["cpu"](*args), fns["reference"](*args)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
