"""Attention layers with PyTorch's parameters and semantics: MultiheadAttention, TransformerEncoderLayer,
TransformerDecoderLayer, and positional encodings (learned and sinusoidal).

Parameter names and layouts are torch.nn's, so weights move both ways with
state dicts:

    layer.load_state_dict({k: v.detach().numpy() for k, v in torch_layer.state_dict().items()})

MultiheadAttention's heads run through dlc.scaled_dot_product_attention (one
fused op, which the CPU backend runs without holding the L x S scores); the
L x S weights are built only when need_weights asks for them, or when
attention dropout is on in training (scaled_dot_product_attention with
dropout_p > 0 writes them out: the fused op has no dropout).
Masks follow torch.nn.MultiheadAttention, whose boolean masks are the opposite
of scaled_dot_product_attention's: True in key_padding_mask (N, S) or
attn_mask (L, S) or (N * num_heads, L, S) means "does not take part"; float
masks are added to the scores.
"""

from __future__ import annotations

import math

import numpy as np

import dlc.functional as F
import dlc.nn.init as init

from ..errors import ShapeError
from ..graph import shape_str, user_location
from ..ops.attention import attention_probabilities, scaled_dot_product_attention
from .layers import Dropout, Linear
from .module import Module
from .norm import LayerNorm


def _where() -> str:
    loc = user_location()
    return f" at {loc}" if loc else ""


def _as_tensor(x, dtype=None):
    if x is None or isinstance(x, F.Tensor):
        return x
    arr = np.asarray(x)
    return F.constant(arr, dtype="bool" if arr.dtype.kind == "b" else dtype)


def _additive(mask, dtype):
    """A torch.nn boolean mask (True = excluded) as 0 / -inf, a float mask as it is."""
    if mask.dtype == "bool":
        return F.where(mask, F.constant(-np.inf, dtype), F.constant(0.0, dtype))
    return mask


def merge_masks(key_padding_mask, attn_mask, batch, heads, length, keys, dtype):
    """torch.nn's key_padding_mask (N, S) and attn_mask ((L, S) or (N*H, L, S)) as one mask for
    scaled_dot_product_attention over (N, H, L, S): bool "takes part" when both are bool, else additive."""
    masks = []
    if key_padding_mask is not None:
        if tuple(key_padding_mask.shape) != (batch, keys):
            raise ShapeError(f"key_padding_mask must be (batch, keys) = {shape_str((batch, keys))}, got "
                             f"{shape_str(key_padding_mask.shape)}{_where()}")
        masks.append(F.reshape(key_padding_mask, (batch, 1, 1, keys)))
    if attn_mask is not None:
        if attn_mask.ndim == 3:
            if tuple(attn_mask.shape[1:]) != (length, keys):
                raise ShapeError(f"a 3-d attn_mask must be (batch * heads, {length}, {keys}), got "
                                 f"{shape_str(attn_mask.shape)}{_where()}")
            attn_mask = F.reshape(attn_mask, (batch, heads, length, keys))
        elif tuple(attn_mask.shape) != (length, keys):
            raise ShapeError(f"attn_mask must be ({length}, {keys}) or (batch * heads, {length}, {keys}), got "
                             f"{shape_str(attn_mask.shape)}{_where()}")
        masks.append(attn_mask)
    if not masks:
        return None
    if all(m.dtype == "bool" for m in masks):
        keep = F.logical_not(masks[0])
        for m in masks[1:]:
            keep = F.logical_and(keep, F.logical_not(m))
        return keep
    total = _additive(masks[0], dtype)
    for m in masks[1:]:
        total = total + _additive(m, dtype)
    return total


class MultiheadAttention(Module):
    """torch.nn.MultiheadAttention: in_proj_weight (3E, E) and in_proj_bias (3E,) stack the q, k, v projections;
    out_proj is a Linear(E, E). Inputs are (L, N, E), or (N, L, E) with batch_first, or unbatched (L, E).
    forward returns (output, weights): weights (N, L, S) averaged over heads (or (N, H, L, S)) when
    need_weights, else None. Keys and values must have embed_dim features (no kdim/vdim)."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 batch_first: bool = False, rng=None, dtype=None):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {dropout}")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.batch_first, self.dropout = batch_first, float(dropout)
        self.add_param("in_proj_weight", init.xavier_uniform((3 * embed_dim, embed_dim), rng=rng), dtype=dtype)
        self.in_proj_bias = self.add_param("in_proj_bias", init.zeros(3 * embed_dim), dtype=dtype) if bias else None
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias, rng=rng, dtype=dtype)
        if bias:  # torch starts the output projection's bias at zero
            key = self.out_proj.bias.node.attr("name")
            self.store[key] = np.zeros_like(self.store[key])
        self.attn_dropout = Dropout(self.dropout) if self.dropout > 0 else None

    def _project(self, x, part: int):
        e = self.embed_dim
        w = F.take_slice(self.in_proj_weight, 0, part * e, (part + 1) * e)
        y = F.matmul(x, F.transpose(w))
        if self.in_proj_bias is not None:
            y = y + F.take_slice(self.in_proj_bias, 0, part * e, (part + 1) * e)
        return y

    def _heads(self, x):
        """(N, L, E) -> (N, H, L, Dh)."""
        n, length = x.shape[0], x.shape[1]
        return F.transpose(F.reshape(x, (n, length, self.num_heads, self.head_dim)), (0, 2, 1, 3))

    def forward(self, query, key, value, key_padding_mask=None, need_weights: bool = True, attn_mask=None,
                average_attn_weights: bool = True, is_causal: bool = False):
        unbatched = query.ndim == 2
        self_attention = key is value and value is query
        if query.ndim not in (2, 3) or key.ndim != query.ndim or value.ndim != query.ndim:
            raise ShapeError(f"MultiheadAttention takes (L, N, E), (N, L, E) with batch_first, or (L, E) inputs; "
                             f"got query {shape_str(query.shape)}, key {shape_str(key.shape)}, value "
                             f"{shape_str(value.shape)}{_where()}")
        for name, t in (("query", query), ("key", key), ("value", value)):
            if t.shape[-1] != self.embed_dim:
                raise ShapeError(f"MultiheadAttention({self.embed_dim}): {name} has {t.shape[-1]} features, not "
                                 f"{self.embed_dim}{_where()}")
        if unbatched:
            query, key, value = (F.expand_dims(t, 0) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = F.expand_dims(_as_tensor(key_padding_mask, query.dtype), 0)
        elif not self.batch_first:
            query, key, value = (F.swapaxes(t, 0, 1) for t in (query, key, value))
        batch, length, keys = query.shape[0], query.shape[1], key.shape[1]
        if self_attention:  # one product with the stacked weights
            q, k, v = F.split(self._project_all(query), 3, axis=-1)
        else:
            q, k, v = self._project(query, 0), self._project(key, 1), self._project(value, 2)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        mask = merge_masks(_as_tensor(key_padding_mask, query.dtype), _as_tensor(attn_mask, query.dtype), batch,
                           self.num_heads, length, keys, query.dtype)
        causal = bool(is_causal) and attn_mask is None   # with a mask, torch's is_causal only describes it
        weights = None
        dropping = self.training and self.attn_dropout is not None
        if need_weights:  # torch returns the weights after dropout
            weights = attention_probabilities(q, k, mask, causal, 1.0 / math.sqrt(self.head_dim))
            if dropping:
                weights = self.attn_dropout(weights)
            out = F.matmul(weights, v)
        elif dropping:
            out = scaled_dot_product_attention(q, k, v, mask=mask, causal=causal, dropout_p=self.dropout,
                                               seed=self.attn_dropout.seed, step=self.attn_dropout.next_step())
        else:
            out = scaled_dot_product_attention(q, k, v, mask=mask, causal=causal)
        out = F.reshape(F.transpose(out, (0, 2, 1, 3)), (batch, length, self.embed_dim))
        out = self.out_proj(out)
        if unbatched:
            out = F.squeeze(out, 0)
        elif not self.batch_first:
            out = F.swapaxes(out, 0, 1)
        if not need_weights:
            return out, None
        if average_attn_weights:
            weights = F.mean(weights, axis=1)
        return out, (F.squeeze(weights, 0) if unbatched else weights)

    def _project_all(self, x):
        y = F.matmul(x, F.transpose(self.in_proj_weight))
        return y + self.in_proj_bias if self.in_proj_bias is not None else y

    def extra_repr(self) -> str:
        return f"{self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}, batch_first={self.batch_first}"


ACTIVATIONS = {"relu": F.relu, "gelu": lambda x: F.gelu(x, approximate="none")}


def _activation(activation):
    if callable(activation):
        return activation
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be 'relu', 'gelu' or a function, got {activation!r}")
    return ACTIVATIONS[activation]


class TransformerEncoderLayer(Module):
    """torch.nn.TransformerEncoderLayer: self-attention and a feed-forward block, each with a residual and a
    LayerNorm after it (or before it, with norm_first). Parameters: self_attn.*, linear1.*, linear2.*, norm1.*,
    norm2.*. activation: "relu", "gelu" (exact, as torch's) or a function."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation="relu", layer_norm_eps: float = 1e-5, batch_first: bool = False,
                 norm_first: bool = False, bias: bool = True, rng=None, dtype=None):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout, bias, batch_first, rng=rng, dtype=dtype)
        self.linear1 = Linear(d_model, dim_feedforward, bias, rng=rng, dtype=dtype)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias, rng=rng, dtype=dtype)
        self.norm1 = LayerNorm(d_model, layer_norm_eps, dtype=dtype)
        self.norm2 = LayerNorm(d_model, layer_norm_eps, dtype=dtype)
        self.dropout1, self.dropout2 = Dropout(dropout), Dropout(dropout)
        self.norm_first, self.activation = norm_first, _activation(activation)

    def _sa(self, x, attn_mask, key_padding_mask, is_causal):
        out, _ = self.self_attn(x, x, x, key_padding_mask=key_padding_mask, need_weights=False,
                                attn_mask=attn_mask, is_causal=is_causal)
        return self.dropout1(out)

    def _ff(self, x):
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal: bool = False):
        x = src
        if self.norm_first:
            x = x + self._sa(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            return x + self._ff(self.norm2(x))
        x = self.norm1(x + self._sa(x, src_mask, src_key_padding_mask, is_causal))
        return self.norm2(x + self._ff(x))


class TransformerDecoderLayer(Module):
    """torch.nn.TransformerDecoderLayer: self-attention, attention over the encoder's memory, and a
    feed-forward block, each with a residual and a LayerNorm. Parameters: self_attn.*, multihead_attn.*,
    linear1.*, linear2.*, norm1.*, norm2.*, norm3.*."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation="relu", layer_norm_eps: float = 1e-5, batch_first: bool = False,
                 norm_first: bool = False, bias: bool = True, rng=None, dtype=None):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout, bias, batch_first, rng=rng, dtype=dtype)
        self.multihead_attn = MultiheadAttention(d_model, nhead, dropout, bias, batch_first, rng=rng, dtype=dtype)
        self.linear1 = Linear(d_model, dim_feedforward, bias, rng=rng, dtype=dtype)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias, rng=rng, dtype=dtype)
        self.norm1 = LayerNorm(d_model, layer_norm_eps, dtype=dtype)
        self.norm2 = LayerNorm(d_model, layer_norm_eps, dtype=dtype)
        self.norm3 = LayerNorm(d_model, layer_norm_eps, dtype=dtype)
        self.dropout1, self.dropout2, self.dropout3 = Dropout(dropout), Dropout(dropout), Dropout(dropout)
        self.norm_first, self.activation = norm_first, _activation(activation)

    def _sa(self, x, mask, key_padding_mask, is_causal):
        out, _ = self.self_attn(x, x, x, key_padding_mask=key_padding_mask, need_weights=False, attn_mask=mask,
                                is_causal=is_causal)
        return self.dropout1(out)

    def _mha(self, x, memory, mask, key_padding_mask, is_causal):
        out, _ = self.multihead_attn(x, memory, memory, key_padding_mask=key_padding_mask, need_weights=False,
                                     attn_mask=mask, is_causal=is_causal)
        return self.dropout2(out)

    def _ff(self, x):
        return self.dropout3(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, tgt_is_causal: bool = False, memory_is_causal: bool = False):
        x = tgt
        if self.norm_first:
            x = x + self._sa(self.norm1(x), tgt_mask, tgt_key_padding_mask, tgt_is_causal)
            x = x + self._mha(self.norm2(x), memory, memory_mask, memory_key_padding_mask, memory_is_causal)
            return x + self._ff(self.norm3(x))
        x = self.norm1(x + self._sa(x, tgt_mask, tgt_key_padding_mask, tgt_is_causal))
        x = self.norm2(x + self._mha(x, memory, memory_mask, memory_key_padding_mask, memory_is_causal))
        return self.norm3(x + self._ff(x))


def _positions(x, max_len: int):
    """The number of positions of x (..., L, E), a known int no larger than max_len."""
    length = x.shape[-2] if x.ndim >= 2 else None
    if not isinstance(length, int):
        raise ShapeError(f"positional encodings need x (..., L, E) with a known length L, got "
                         f"{shape_str(x.shape)}{_where()}")
    if length > max_len:
        raise ShapeError(f"sequence length {length} exceeds max_len {max_len}{_where()}")
    return length


def sinusoidal_table(max_len: int, d_model: int) -> np.ndarray:
    """(max_len, d_model): sin(pos / 10000^(2i/d)) in even columns, cos in odd ones (Vaswani et al.)."""
    pos = np.arange(max_len, dtype=np.float64)[:, None]
    freq = np.exp(np.arange(0, d_model, 2, dtype=np.float64) * (-math.log(10000.0) / d_model))
    table = np.zeros((max_len, d_model))
    table[:, 0::2] = np.sin(pos * freq)
    table[:, 1::2] = np.cos(pos * freq[: d_model // 2])
    return table


class SinusoidalPositionalEncoding(Module):
    """x (..., L, E) + the fixed sinusoidal table's first L rows (no parameters)."""

    def __init__(self, d_model: int, max_len: int = 5000):
        super().__init__()
        self.d_model, self.max_len = d_model, max_len
        self.table = sinusoidal_table(max_len, d_model)

    def forward(self, x):
        length = _positions(x, self.max_len)
        if x.shape[-1] != self.d_model:
            raise ShapeError(f"SinusoidalPositionalEncoding({self.d_model}): x has {x.shape[-1]} features"
                             f"{_where()}")
        return x + F.constant(self.table[:length], dtype=x.dtype)

    def extra_repr(self) -> str:
        return f"{self.d_model}, max_len={self.max_len}"


class LearnedPositionalEncoding(Module):
    """x (..., L, E) + the first L rows of a trained table weight (max_len, E), initialized N(0, 0.02^2)."""

    def __init__(self, max_len: int, d_model: int, rng=None, dtype=None):
        super().__init__()
        self.d_model, self.max_len = d_model, max_len
        self.add_param("weight", init.normal((max_len, d_model), std=0.02, rng=rng), dtype=dtype)

    def forward(self, x):
        length = _positions(x, self.max_len)
        return x + F.take_slice(self.weight, 0, 0, length)

    def extra_repr(self) -> str:
        return f"{self.max_len}, {self.d_model}"
