"""Scaled dot-product attention as one op, and the two ops of its gradient.

    attention(q, k, v[, mask])        -> (..., L, Ev + 1): softmax(q k^T * scale + mask) v, then each row's
                                         log-sum-exp of its scores in the last column
    attention_grad(q, k, v[, mask], y, g)    -> [dq | dk | dv] (..., L, 2E + Ev), when S is L
    attention_grad_q(q, k, v[, mask], y, g)  -> dq (..., L, E)
    attention_grad_kv(q, k, v[, mask], y, g) -> [dk | dv] (..., S, E + Ev)

q is (..., L, E), k (..., S, E), v (..., S, Ev), with the same leading dims
(the DSL function broadcasts them first). Attributes: scale (a float), causal
(key j takes part in query i only where j <= i, PyTorch's top-left aligned
is_causal) and mask: "none", "bool" (True = takes part) or "add" (added to
the scores). A mask has the rank of q; its leading dims are all 1 or all
q's, its last two 1 or L, and 1 or S (the DSL function arranges that).

Why the log-sum-exp rides along in the output: the backward recomputes the
probabilities block by block from it (exp(score - lse)), so neither pass ever
holds the L x S matrix, and one op yields both values. The user's function
returns the first Ev columns; the column is differentiable like the rest
(d lse_i / d score_ij is the probability p_ij). The gradient ops take y (this
op's value) and g (the gradient of all Ev + 1 columns).

Why one gradient op for self-attention and two otherwise: with as many keys
as queries, dq, dk and dv fit side by side in one array, so one kernel can
compute all three from one recomputation of each block of scores (5 block
products where two kernels need 7: dlc/kernels/cpu/attention.py); with a
different number of keys (cross-attention) the rows do not line up, and dq and
[dk | dv] are two ops, each kernel recomputing the scores.

A row whose keys are all masked out has no softmax: its output is NaN (0/0)
and its log-sum-exp -inf, as in the plain formula. The mask is a constant to
differentiation: no gradient flows into an additive mask.

Dropout on the probabilities (dropout_p > 0) has no fused form: the DSL
function then writes the L x S probabilities out with matmul and softmax and
drops them with dlc.dropout (the Philox stream of the given seed and step).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import DTypeError, ShapeError
from ..graph import shape_str
from .base import OPAQUE, register
from .checks import check_bool, check_float
from .conv import float_dtype, where
from .elementwise import broadcast_shapes
from .random import dropout

MASK_KINDS = ("none", "bool", "add")


def _F():
    from .. import functional

    return functional


# ----------------------------------------------------------------------------
# shape rules


def _check_operands(xs, attrs, extra: int):
    """(q, k, v, mask or None, dtype) after checking attributes, count, ranks, dims and dtypes."""
    check_float(attrs["scale"], "scale")
    check_bool(attrs["causal"], "causal")
    kind = attrs["mask"]
    if kind not in MASK_KINDS:
        raise ShapeError(f"mask must be one of {', '.join(MASK_KINDS)}, got {kind!r}")
    expect = 3 + (kind != "none") + extra
    if len(xs) != expect:
        raise ShapeError(f"takes {expect} operands with mask={kind!r}, got {len(xs)}")
    q, k, v = xs[:3]
    mask = xs[3] if kind != "none" else None
    dtype = float_dtype((q, k, v))
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.ndim < 2:
            raise ShapeError(f"{name} must have at least 2 dims (..., length, features), got {shape_str(t.shape)}")
    if not (q.ndim == k.ndim == v.ndim) or q.shape[:-2] != k.shape[:-2] or q.shape[:-2] != v.shape[:-2]:
        raise ShapeError(f"q {shape_str(q.shape)}, k {shape_str(k.shape)} and v {shape_str(v.shape)} must have "
                         f"the same leading dims")
    if q.shape[-1] != k.shape[-1]:
        raise ShapeError(f"q's feature dim {q.shape[-1]} differs from k's {k.shape[-1]}")
    if k.shape[-2] != v.shape[-2]:
        raise ShapeError(f"k has {k.shape[-2]} keys but v has {v.shape[-2]} values")
    if mask is not None:
        _check_mask(mask, kind, dtype, q.shape[:-2], q.shape[-2], k.shape[-2])
    return q, k, v, mask, dtype


def _check_mask(mask, kind, dtype, lead, length, keys):
    if kind == "bool" and mask.dtype != "bool":
        raise DTypeError(f"a boolean mask must have dtype bool, got {mask.dtype}")
    if kind == "add" and mask.dtype != dtype:
        raise DTypeError(f"an additive mask must have the dtype of q ({dtype}), got {mask.dtype}")
    ok = mask.ndim == len(lead) + 2 and (all(d == 1 for d in mask.shape[:-2]) or mask.shape[:-2] == lead) \
        and mask.shape[-2] in (1, length) and mask.shape[-1] in (1, keys)
    if not ok:
        raise ShapeError(f"mask {shape_str(mask.shape)} must be (1 or {shape_str(lead)}, 1 or {length}, "
                         f"1 or {keys})")


def _attention_infer(xs, attrs):
    q, k, v, _, dtype = _check_operands(xs, attrs, 0)
    return q.shape[:-1] + (_plus(v.shape[-1], 1),), dtype


def _plus(a, b):
    """a + b for dims that may be symbolic ("E+1" is not a dim, so a symbolic sum is refused)."""
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    raise ShapeError(f"the feature dims must be known numbers, got {a} and {b}")


def _grad_operands(xs, attrs):
    q, k, v, _, dtype = _check_operands(xs, attrs, 2)
    y, g = xs[-2:]
    packed = q.shape[:-1] + (_plus(v.shape[-1], 1),)
    for name, t in (("the attention value", y), ("the gradient", g)):
        if tuple(t.shape) != packed or t.dtype != dtype:
            raise ShapeError(f"{name} must be {dtype}{shape_str(packed)}, got {t.dtype}{shape_str(t.shape)}")
    return q, k, v, dtype


def _grad_q_infer(xs, attrs):
    q, _, _, dtype = _grad_operands(xs, attrs)
    return q.shape, dtype


def _grad_kv_infer(xs, attrs):
    _, k, v, dtype = _grad_operands(xs, attrs)
    return k.shape[:-1] + (_plus(k.shape[-1], v.shape[-1]),), dtype


def _grad_infer(xs, attrs):
    q, k, v, dtype = _grad_operands(xs, attrs)
    if q.shape[-2] != k.shape[-2]:
        raise ShapeError(f"attention_grad needs as many keys as queries, got {k.shape[-2]} keys for "
                         f"{q.shape[-2]} queries (attention_grad_q and attention_grad_kv take any number)")
    return q.shape[:-1] + (_plus(_plus(q.shape[-1], k.shape[-1]), v.shape[-1]),), dtype


# ----------------------------------------------------------------------------
# numpy references: the plain formula over the whole score matrix


def scores(q, k, mask, a):
    """q k^T * scale with the causal and given masks applied (-inf where a key takes no part)."""
    s = np.matmul(q, np.swapaxes(k, -1, -2)) * q.dtype.type(a["scale"])
    if a["causal"]:
        length, keys = s.shape[-2:]
        s = np.where(np.tri(length, keys, dtype=bool), s, s.dtype.type(-np.inf))
    if a["mask"] == "bool":
        s = np.where(mask, s, s.dtype.type(-np.inf))
    elif a["mask"] == "add":
        s = s + mask
    return s


def _split(xs, a):
    q, k, v = xs[:3]
    return q, k, v, (xs[3] if a["mask"] != "none" else None)


def attention_ref(xs, a):
    q, k, v, mask = _split(xs, a)
    s = scores(q, k, mask, a)
    with np.errstate(invalid="ignore", divide="ignore"):
        top = np.max(s, axis=-1, keepdims=True) if s.shape[-1] else np.full(s.shape[:-1] + (1,), -np.inf, s.dtype)
        top = np.where(np.isfinite(top), top, s.dtype.type(0))
        e = np.exp(s - top)
        total = np.sum(e, axis=-1, keepdims=True)
        out = np.matmul(e, v) / total
        lse = np.log(total) + top
    return np.concatenate([out, lse], axis=-1).astype(q.dtype, copy=False)


def _probabilities_and_ds(xs, a):
    """p = exp(scores - lse) and dscores = p * (dO v^T - (rowsum(dO * O) - dlse)), from y and g."""
    q, k, v, mask = _split(xs, a)
    y, g = xs[-2:]
    ev = v.shape[-1]
    s = scores(q, k, mask, a)
    with np.errstate(invalid="ignore"):
        p = np.exp(s - y[..., ev:])
    dout = g[..., :ev]
    delta = np.sum(dout * y[..., :ev], axis=-1, keepdims=True) - g[..., ev:]
    ds = p * (np.matmul(dout, np.swapaxes(v, -1, -2)) - delta)
    return p, ds, dout


def attention_grad_q_ref(xs, a):
    _, ds, _ = _probabilities_and_ds(xs, a)
    return (np.matmul(ds, xs[1]) * xs[0].dtype.type(a["scale"])).astype(xs[0].dtype, copy=False)


def attention_grad_kv_ref(xs, a):
    p, ds, dout = _probabilities_and_ds(xs, a)
    q = xs[0]
    dk = np.matmul(np.swapaxes(ds, -1, -2), q) * q.dtype.type(a["scale"])
    dv = np.matmul(np.swapaxes(p, -1, -2), dout)
    return np.concatenate([dk, dv], axis=-1).astype(q.dtype, copy=False)


def attention_grad_ref(xs, a):
    return np.concatenate([attention_grad_q_ref(xs, a), attention_grad_kv_ref(xs, a)], axis=-1)


# ----------------------------------------------------------------------------
# gradient rule and registration


def _attention_grad(node, g, xs):
    F = _F()
    y = F.Tensor(node)
    q, k = xs[:2]
    e = q.shape[-1]
    if q.shape[-2] == k.shape[-2]:
        grad = F._apply("attention_grad", *xs, y, g, **node.a)
        dq, dkv = F.take_slice(grad, -1, 0, e), F.take_slice(grad, -1, e, None)
    else:
        dq = F._apply("attention_grad_q", *xs, y, g, **node.a)
        dkv = F._apply("attention_grad_kv", *xs, y, g, **node.a)
    dk = F.take_slice(dkv, -1, 0, e)
    dv = F.take_slice(dkv, -1, e, None)
    return [dq, dk, dv] + [None] * (len(xs) - 3)


register("attention", OPAQUE, _attention_infer, lambda xs, a, shape: attention_ref(xs, a), _attention_grad,
         doc="softmax(q k^T * scale + mask) v, with each row's log-sum-exp as a last column")
# The gradient ops have no gradient rule: a second-order gradient through attention stops with a GradientError.
register("attention_grad", OPAQUE, _grad_infer, lambda xs, a, shape: attention_grad_ref(xs, a), None,
         doc="(q, k, v[, mask], y, dL/dy) -> [dL/dq | dL/dk | dL/dv] along the last axis, as many keys as queries")
register("attention_grad_q", OPAQUE, _grad_q_infer, lambda xs, a, shape: attention_grad_q_ref(xs, a), None,
         doc="(q, k, v[, mask], y, dL/dy) -> dL/dq, recomputing the probabilities from y's log-sum-exp")
register("attention_grad_kv", OPAQUE, _grad_kv_infer, lambda xs, a, shape: attention_grad_kv_ref(xs, a), None,
         doc="(q, k, v[, mask], y, dL/dy) -> [dL/dk | dL/dv] along the last axis")


# ----------------------------------------------------------------------------
# the user-facing function


def _as_mask(mask, dtype):
    """The mask as a Tensor: a bool one stays bool, any other is additive in q's dtype."""
    F = _F()
    if not isinstance(mask, F.Tensor):
        arr = np.asarray(mask)
        if arr.dtype.kind not in "bf":
            raise DTypeError(f"scaled_dot_product_attention: the mask must be bool or float, got {arr.dtype}{where()}")
        return F.constant(arr, dtype="bool" if arr.dtype.kind == "b" else dtype)
    if mask.dtype != "bool" and mask.dtype != dtype:
        raise DTypeError(f"scaled_dot_product_attention: the mask must be bool or {dtype} (q's dtype), got "
                         f"{mask.dtype}{where()}")
    return mask


def _to_lead(t, lead):
    """t (..., a, b) broadcast to lead + (a, b), by reshape when only ones are added, else broadcast_to."""
    F = _F()
    target = tuple(lead) + tuple(t.shape[-2:])
    if tuple(t.shape) == target:
        return t
    ones = (1,) * (len(target) - t.ndim) + tuple(t.shape)
    if ones != tuple(t.shape):
        t = F.reshape(t, ones)
    return t if tuple(t.shape) == target else F.broadcast_to(t, target)


def attention_probabilities(q, k, mask=None, causal=False, scale=1.0):
    """softmax(q k^T * scale + mask) written out, (..., L, S): the unfused form, for attention dropout and for
    layers that return the weights. mask: bool (True = takes part) or additive (no gradient flows into it);
    causal needs known lengths L and S."""
    F = _F()
    s = F.matmul(q, F.swapaxes(k, -1, -2)) * scale
    if causal:
        length, keys = s.shape[-2:]
        if not (isinstance(length, int) and isinstance(keys, int)):
            raise ShapeError(f"causal attention written out (with dropout or weights) needs known lengths, got "
                             f"L = {length} and S = {keys}{where()}")
        s = F.where(F.constant(np.tri(length, keys, dtype=bool)), s, F.constant(-np.inf, s.dtype))
    if mask is not None:
        s = F.where(mask, s, F.constant(-np.inf, s.dtype)) if mask.dtype == "bool" else s + F.stop_gradient(mask)
    return F.softmax(s, axis=-1)


def _check_dropout(dropout_p, seed, step):
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float, np.floating, np.integer)) \
            or not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"scaled_dot_product_attention: dropout_p must be a number in [0, 1], got {dropout_p!r}"
                         f"{where()}")
    if dropout_p > 0.0 and (seed is None or step is None):
        raise ValueError(f"scaled_dot_product_attention: dropout_p={dropout_p!r} needs seed= and step= (the "
                         f"random stream's key and counter, as dlc.dropout takes them){where()}")


def scaled_dot_product_attention(q, k, v, mask=None, causal=False, dropout_p=0.0, scale=None, *, attn_mask=None,
                                 is_causal=None, seed=None, step=None):
    """softmax(q k^T * scale + mask) v, as torch.nn.functional.scaled_dot_product_attention, as one fused op.

    q (..., L, E), k (..., S, E), v (..., S, Ev); the leading dims broadcast.
    mask: bool (True = takes part) or float (added to the scores), broadcastable to (..., L, S); causal lets
    query i see keys j <= i (top-left aligned); scale defaults to 1/sqrt(E). attn_mask and is_causal are
    PyTorch's names for mask and causal. The CPU backend never holds the L x S scores (FlashAttention's
    online softmax over key blocks).

    dropout_p > 0 zeroes each attention probability with that chance and scales the rest by 1/(1 - dropout_p)
    (dlc.dropout with seed and step, which it then needs), whenever it is called, as torch's: pass 0 outside
    training. It writes the (..., L, S) probabilities out with matmul and softmax, since the fused op has no
    dropout.
    """
    F = _F()
    if attn_mask is not None:
        if mask is not None:
            raise TypeError("scaled_dot_product_attention: give mask or attn_mask, not both")
        mask = attn_mask
    if is_causal is not None:
        causal = is_causal
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"scaled_dot_product_attention: causal must be a bool, got {causal!r}{where()}")
    _check_dropout(dropout_p, seed, step)
    q, k, v = (x if isinstance(x, F.Tensor) else F.tensor(x) for x in (q, k, v))
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.ndim < 2:
            raise ShapeError(f"scaled_dot_product_attention: {name} must have at least 2 dims (..., length, "
                             f"features), got {shape_str(t.shape)}{where()}")
    e = q.shape[-1]
    if scale is None:
        if not isinstance(e, int) or e < 1:
            raise ShapeError(f"scaled_dot_product_attention: the default scale 1/sqrt(E) needs a known feature "
                             f"dim >= 1, got {e}; pass scale={where()}")
        scale = 1.0 / math.sqrt(e)
    kind = "none"
    operands = [q, k, v]
    if mask is not None:
        mask = _as_mask(mask, q.dtype)
        kind = "bool" if mask.dtype == "bool" else "add"
        operands.append(mask if mask.ndim >= 2 else F.reshape(mask, (1,) * (2 - mask.ndim) + tuple(mask.shape)))
    try:
        lead = broadcast_shapes(*(t.shape[:-2] for t in operands))
    except ShapeError as err:
        raise ShapeError(f"scaled_dot_product_attention: {err} (q {shape_str(q.shape)}, k {shape_str(k.shape)}, "
                         f"v {shape_str(v.shape)}){where()}") from None
    q, k, v = (_to_lead(t, lead) for t in operands[:3])
    if kind != "none":
        m = operands[3]
        m = F.reshape(m, (1,) * (len(lead) + 2 - m.ndim) + tuple(m.shape))
        if not (all(d == 1 for d in m.shape[:-2]) or tuple(m.shape[:-2]) == lead):
            m = F.broadcast_to(m, tuple(lead) + tuple(m.shape[-2:]))  # partly broadcast: (N, 1, L, S) over heads
        operands = [q, k, v, m]
    else:
        operands = [q, k, v]
    if dropout_p > 0.0:
        probabilities = attention_probabilities(q, k, operands[3] if kind != "none" else None, causal, float(scale))
        return F.matmul(dropout(probabilities, dropout_p, seed, step), v)
    y = F._apply("attention", *operands, scale=float(scale), causal=bool(causal), mask=kind)
    return F.take_slice(y, -1, 0, v.shape[-1])


__all__ = ["scaled_dot_product_attention", "attention_probabilities"]
