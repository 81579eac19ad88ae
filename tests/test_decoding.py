"""Cached decoding (dlc.nn.decoding): each step equals the full causal forward pass at that position, and
sampling draws from softmax(logits / temperature) over the top k."""

from __future__ import annotations

import numpy as np
import pytest

import dlc
from dlc import nn

VOCAB, WIDTH, HEADS, LAYERS, CONTEXT = 11, 16, 2, 2, 8


class TinyGPT(nn.Module):
    def __init__(self, norm_first: bool, rng):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.position = nn.LearnedPositionalEncoding(CONTEXT, WIDTH, rng=rng)
        self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(WIDTH, HEADS, 2 * WIDTH, dropout=0.0, activation="gelu",
                                                               batch_first=True, norm_first=norm_first, rng=rng)
                                    for _ in range(LAYERS))
        self.norm = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, VOCAB, rng=rng)

    def forward(self, ids):
        x = self.position(self.embed(ids))
        for block in self.blocks:
            x = block(x, is_causal=True)
        return self.head(self.norm(x))

    def step(self, ids, cache):
        x = dlc.expand_dims(self.embed(ids), 1) + cache.row(self.position.weight)
        for i, block in enumerate(self.blocks):
            x = nn.encoder_layer_step(block, x, cache, i)
        return self.head(self.norm(x))[:, 0]


def model_and_cache(norm_first=True, batch=2, seed=0):
    dlc.reset_default_store()
    rng = np.random.default_rng(seed)
    nn.manual_seed(seed)
    model = TinyGPT(norm_first, rng).eval()
    return model, nn.KVCache.for_layers(model.blocks, batch=batch, max_len=CONTEXT)


@pytest.mark.parametrize("target", ["reference", "cpu"])
@pytest.mark.parametrize("norm_first", [True, False])
def test_each_cached_step_equals_the_full_causal_forward(target, norm_first):
    model, cache = model_and_cache(norm_first)
    ids = np.random.default_rng(1).integers(0, VOCAB, (2, CONTEXT))
    window = dlc.input("window", (2, CONTEXT), "int64")
    full = dlc.compile(model(window), target="reference")(ids)
    sampler = nn.compile_sampler(model.step, cache, temperature=0, return_logits=True, target=target)
    for _ in range(2):  # reset() makes the second pass equal the first
        sampler.reset()
        for t in range(CONTEXT):
            token, logits = sampler(ids[:, t])
            np.testing.assert_allclose(logits, full[:, t], rtol=1e-4, atol=1e-5, err_msg=f"position {t}")
            np.testing.assert_array_equal(token, full[:, t].argmax(-1))
    with pytest.raises(ValueError, match="all are used: reset"):
        sampler(ids[:, 0])


def test_greedy_generation_equals_recomputing_the_whole_window():
    model, cache = model_and_cache(batch=1)
    window = dlc.input("window", (1, CONTEXT), "int64")
    full = dlc.compile(model(window), target="reference")
    prompt = np.array([[3, 1, 4]])
    got = nn.compile_sampler(model.step, cache, temperature=0, target="reference").generate(prompt, 5)
    seq = list(prompt[0])
    for _ in range(5):
        padded = np.zeros((1, CONTEXT), np.int64)
        padded[0, :len(seq)] = seq
        seq.append(int(full(padded)[0, len(seq) - 1].argmax()))
    np.testing.assert_array_equal(got[0], seq[3:])


@pytest.mark.parametrize("temperature,top_k", [(1.0, None), (0.5, 3)])
def test_samples_follow_the_tempered_softmax_over_the_top_k(temperature, top_k):
    """2000 sequences with the same prompt token draw from one distribution in one call."""
    n = 2000
    model, cache = model_and_cache(batch=n)
    sampler = nn.compile_sampler(model.step, cache, temperature=temperature, top_k=top_k, seed=7,
                                 return_logits=True, target="cpu")
    tokens, logits = sampler(np.full(n, 5))
    z = logits[0].astype(np.float64) / temperature
    keep = np.argsort(z)[::-1][:top_k] if top_k else np.arange(VOCAB)
    p = np.zeros(VOCAB)
    p[keep] = np.exp(z[keep] - z[keep].max())
    p /= p.sum()
    freq = np.bincount(tokens, minlength=VOCAB) / n
    assert np.all(freq[p == 0] == 0), "a token outside the top k was drawn"
    np.testing.assert_array_less(np.abs(freq - p), 4 * np.sqrt(p * (1 - p) / n) + 1e-9)
    again, _ = sampler(np.full(n, 5))  # the next call draws new numbers
    assert not np.array_equal(again, tokens)


def test_bad_use_is_refused():
    model, cache = model_and_cache(batch=1)
    with pytest.raises(ValueError, match="top_k=20 is more than the 11 logits"):
        nn.compile_sampler(model.step, cache, top_k=20, target="reference")
    with pytest.raises(ValueError, match="temperature must be"):
        nn.compile_sampler(model.step, cache, temperature=-1.0, target="reference")
    with pytest.raises(ValueError, match="wrote nothing to the cache"):
        nn.compile_sampler(lambda ids, c: model.head(model.embed(ids)), cache, target="reference")
    with pytest.raises(RuntimeError, match="while dlc.nn.compile_sampler traces"):
        cache.write(0, None, None)
    sampler = nn.compile_sampler(model.step, cache, target="reference")
    with pytest.raises(dlc.ShapeError, match=r"one token id per sequence, shape \(1,\)"):
        sampler(np.array([1, 2]))
    with pytest.raises(ValueError, match="need 10 positions; the cache holds 8"):
        sampler.generate(np.array([[1, 2, 3]]), 8)
    with pytest.raises(TypeError, match="TransformerEncoderLayer or MultiheadAttention"):
        nn.KVCache.for_layers([model.head], batch=1, max_len=4)
