"""Cached autoregressive decoding: one compiled call per token, with the keys and values kept in the store.

A decoder-only transformer (GPT-style: TransformerEncoderLayer blocks run causally) predicts the token at
position t + 1 from the queries of position t over the keys and values of positions 0..t. Those keys and
values do not change once computed, so `KVCache` keeps them for every layer in store parameters of a fixed
size (batch, heads, max_len, head_dim): a step computes the new token's query, key and value only, writes
the key and value at row t, and attends over the rows up to t (a mask hides the rows after it). The
position and the random stream are store parameters too, so a compiled step is one native call: token in,
next token out.

    cache = nn.KVCache.for_layers(model.blocks, batch=1, max_len=256)

    def step(ids, cache):                      # ids (B,) -> logits (B, vocab)
        x = dlc.expand_dims(model.embed(ids), 1) + cache.row(model.position.weight)
        for i, block in enumerate(model.blocks):
            x = nn.encoder_layer_step(block, x, cache, i)
        return model.head(model.norm(x))[:, 0]

    sampler = nn.compile_sampler(step, cache, temperature=0.8, top_k=10, seed=0)
    text = sampler.generate(prompt_ids, 200)   # (B, P) -> (B, 200)

Sampling is exact: the Gumbel-max trick (argmax of logits/temperature plus Gumbel noise from the Philox
stream, over the top-k logits) draws from softmax(logits/temperature) restricted to the top k.
"""

from __future__ import annotations

import numpy as np

import dlc.functional as F

from ..compiler import compile as compile_function
from ..compiler import default_target
from ..errors import ShapeError
from ..ops.random import random_uniform
from .module import Module
from .transformer import MultiheadAttention, TransformerEncoderLayer


class KVCache(Module):
    """Keys and values of `layers` attention layers for positions 0..max_len-1, and the next position.

    Each layer's keys and values are a non-trainable, non-persistent parameter (batch, heads, max_len,
    head_dim) in the store (state_dict leaves them out). `position` (int64) counts the tokens seen since
    the last `reset()`; `draws` is the random stream's step (it is never reset: every draw is new).
    """

    def __init__(self, layers: int, batch: int, heads: int, head_dim: int, max_len: int, dtype="float32"):
        super().__init__()
        for name, v in (("layers", layers), ("batch", batch), ("heads", heads), ("head_dim", head_dim),
                        ("max_len", max_len)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"KVCache: {name} must be a positive int, got {v!r}")
        self.layers, self.batch, self.heads, self.head_dim, self.max_len = layers, batch, heads, head_dim, max_len
        shape = (batch, heads, max_len, head_dim)
        self.keys = [self.add_param(f"k{i}", np.zeros(shape, dtype), trainable=False, persistent=False,
                                    dtype=dtype) for i in range(layers)]
        self.values = [self.add_param(f"v{i}", np.zeros(shape, dtype), trainable=False, persistent=False,
                                      dtype=dtype) for i in range(layers)]
        self.position = self.add_param("position", np.array(0, np.int64), trainable=False, persistent=False)
        self.draws = self.add_param("draws", np.array(0, np.int64), trainable=False, persistent=False)  # Philox step
        self._writes: list | None = None   # (param, new value) pairs of the step being traced

    @classmethod
    def for_layers(cls, layers, batch: int, max_len: int) -> KVCache:
        """A cache for these TransformerEncoderLayer (or MultiheadAttention) modules: heads, head size and
        dtype taken from each one's self-attention."""
        attns = [m.self_attn if isinstance(m, TransformerEncoderLayer) else m for m in layers]
        if not attns or not all(isinstance(a, MultiheadAttention) for a in attns):
            raise TypeError("KVCache.for_layers takes TransformerEncoderLayer or MultiheadAttention modules")
        first = attns[0]
        if any((a.num_heads, a.head_dim) != (first.num_heads, first.head_dim) for a in attns):
            raise ValueError("KVCache.for_layers: every layer must have the same heads and head size")
        return cls(len(attns), batch, first.num_heads, first.head_dim, max_len, first.in_proj_weight.dtype)

    def write(self, layer: int, k, v):
        """The layer's keys and values with this step's (batch, heads, 1, head_dim) written at `position`."""
        if self._writes is None:
            raise RuntimeError("KVCache.write is called while dlc.nn.compile_sampler traces a step")
        if not 0 <= layer < self.layers:
            raise IndexError(f"KVCache has layers 0..{self.layers - 1}, not {layer}")
        want = (self.batch, self.heads, 1, self.head_dim)
        for name, t in (("keys", k), ("values", v)):
            if tuple(t.shape) != want:
                raise ShapeError(f"KVCache.write: the step's {name} must be {want}, got {tuple(t.shape)}")
        at = F.reshape(F.equal(F.arange(self.max_len), self.position), (1, 1, self.max_len, 1))
        keys = F.where(at, k, self.keys[layer])
        values = F.where(at, v, self.values[layer])
        self._writes += [(self.keys[layer], keys), (self.values[layer], values)]
        return keys, values

    def visible(self):
        """(max_len,) bool: True for the positions up to the current one (those a query may attend to)."""
        return F.less_equal(F.arange(self.max_len), self.position)

    def row(self, table):
        """Row `position` of a (max_len or more, E) table (a positional encoding's), as (1, E)."""
        return F.take(table, F.reshape(self.position, (1,)), axis=0)

    def reset(self) -> None:
        """Forget every position: the next token is position 0."""
        for p in self.keys + self.values:
            key = p.node.attr("name")
            self.store[key] = np.zeros_like(self.store[key])
        self.store[self.position.node.attr("name")] = np.array(0, np.int64)

    def extra_repr(self) -> str:
        return (f"layers={self.layers}, batch={self.batch}, heads={self.heads}, head_dim={self.head_dim}, "
                f"max_len={self.max_len}")


def attention_step(attn: MultiheadAttention, x, cache: KVCache, layer: int):
    """Self-attention of one new token x (batch, 1, E) over the cached positions and itself."""
    batch = x.shape[0]
    q, k, v = F.split(attn._project_all(x), 3, axis=-1)
    q, k, v = attn._heads(q), attn._heads(k), attn._heads(v)
    keys, values = cache.write(layer, k, v)
    mask = F.reshape(cache.visible(), (1, 1, 1, cache.max_len))
    out = F.scaled_dot_product_attention(q, keys, values, mask=mask)
    return attn.out_proj(F.reshape(F.transpose(out, (0, 2, 1, 3)), (batch, 1, attn.embed_dim)))


def encoder_layer_step(block: TransformerEncoderLayer, x, cache: KVCache, layer: int):
    """block(x, is_causal=True) for one new token x (batch, 1, E), in eval mode (no dropout)."""
    if x.ndim != 3 or x.shape[1] != 1:
        raise ShapeError(f"encoder_layer_step takes one token per sequence, (batch, 1, E); got {tuple(x.shape)}")

    def feed_forward(h):
        return block.linear2(block.activation(block.linear1(h)))

    if block.norm_first:
        x = x + attention_step(block.self_attn, block.norm1(x), cache, layer)
        return x + feed_forward(block.norm2(x))
    x = block.norm1(x + attention_step(block.self_attn, x, cache, layer))
    return block.norm2(x + feed_forward(x))


def _top_k_threshold(z, k: int):
    """The k-th largest value of each row of z (batch, V): k - 1 rounds of "the largest below the last"."""
    below = F.max(z, axis=-1, keepdims=True)
    for _ in range(k - 1):
        below = F.max(F.where(F.less(z, below), z, F.constant(-np.inf, z.dtype)), axis=-1, keepdims=True)
    return below


class Sampler:
    """A compiled decoding step: `sampler(ids)` feeds one token per sequence and returns the next ones
    (and the step's logits, when compiled with return_logits)."""

    def __init__(self, function, cache: KVCache, return_logits: bool):
        self.function, self.cache, self.return_logits = function, cache, return_logits
        self.position = 0

    def __call__(self, ids) -> np.ndarray:
        if self.position >= self.cache.max_len:
            raise ValueError(f"the cache holds {self.cache.max_len} positions and all are used: reset() first")
        ids = np.asarray(ids)
        if ids.shape != (self.cache.batch,):
            raise ShapeError(f"a step takes one token id per sequence, shape ({self.cache.batch},); got {ids.shape}")
        out = self.function(ids.astype(np.int64, copy=False))
        self.position += 1
        return out

    def reset(self) -> None:
        self.cache.reset()
        self.position = 0

    def generate(self, prompt, length: int) -> np.ndarray:
        """Reset, feed the prompt (batch, P), then sample `length` tokens: (batch, length)."""
        prompt = np.asarray(prompt, dtype=np.int64)
        if prompt.ndim != 2 or prompt.shape[0] != self.cache.batch or prompt.shape[1] < 1:
            raise ShapeError(f"prompt must be (batch={self.cache.batch}, P >= 1) token ids, got {prompt.shape}")
        if prompt.shape[1] + length - 1 > self.cache.max_len:
            raise ValueError(f"a prompt of {prompt.shape[1]} and {length} new tokens need "
                             f"{prompt.shape[1] + length - 1} positions; the cache holds {self.cache.max_len}")
        self.reset()
        for t in range(prompt.shape[1]):
            token = self._token(prompt[:, t])
        out = np.empty((self.cache.batch, length), np.int64)
        for t in range(length):
            out[:, t] = token
            if t + 1 < length:
                token = self._token(token)
        return out

    def _token(self, ids):
        out = self(ids)
        return out[0] if self.return_logits else out


def compile_sampler(step, cache: KVCache, temperature: float = 1.0, top_k: int | None = None, seed: int = 0,
                    return_logits: bool = False, target: str | None = None, **options) -> Sampler:
    """Compile step(ids (batch,) int64, cache) -> logits (batch, vocab) into a one-call-per-token sampler.

    temperature 0 picks the most likely token; top_k keeps the k largest logits (ties at the k-th are kept);
    return_logits makes each call return (next ids, logits).
    The keys and values the step writes (through nn.encoder_layer_step / attention_step), the position and
    the random stream's step are updated in the store by the same call.
    """
    if not isinstance(temperature, (int, float)) or temperature < 0 or not np.isfinite(temperature):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
    ids = F.input("ids", (cache.batch,), "int64")
    cache._writes = []
    try:
        logits = step(ids, cache)
        writes = cache._writes
    finally:
        cache._writes = None
    if logits.ndim != 2 or logits.shape[0] != cache.batch:
        raise ShapeError(f"the step must return logits (batch={cache.batch}, vocab), got {tuple(logits.shape)}")
    if not writes:
        raise ValueError("the step wrote nothing to the cache: call nn.encoder_layer_step or attention_step in it")
    if top_k is not None and top_k > logits.shape[1]:
        raise ValueError(f"top_k={top_k} is more than the {logits.shape[1]} logits")
    draws = cache.draws
    if temperature == 0:
        token = F.argmax(logits, axis=-1)
    else:
        z = logits * (1.0 / temperature)
        if top_k is not None:
            z = F.where(F.less(z, _top_k_threshold(z, top_k)), F.constant(-np.inf, z.dtype), z)
        u = random_uniform(z, seed, draws)
        token = F.argmax(z - F.log(-F.log(u)), axis=-1)   # Gumbel-max: u = 0 gives -inf, never chosen
    updates = writes + [(cache.position, cache.position + 1), (draws, draws + 1)]
    function = compile_function((token, logits) if return_logits else token, inputs=[ids], updates=updates,
                                target=target or default_target(), store=cache.store, **options)
    return Sampler(function, cache, return_logits)
