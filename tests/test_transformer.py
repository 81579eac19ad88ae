"""Attention layers against torch.nn with copied weights: outputs and parameter gradients, state dicts both ways."""

from __future__ import annotations

import numpy as np
import pytest

import dlc
from dlc import nn
from dlc.graph import topo_order

torch = pytest.importorskip("torch")

TOL = dict(rtol=1e-9, atol=1e-11)


def copy_from_torch(model, ref):
    assert list(model.state_dict()) == list(ref.state_dict())
    model.load_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})


def dlc_outputs_and_grads(model, build, feeds, weights):
    """Run build(inputs) -> output Tensor; return the output and the gradient of sum(output * weights) for every
    parameter, by name."""
    inputs = {k: dlc.input(k, v.shape, v.dtype.name) for k, v in feeds.items()}
    out = build(**inputs)
    names = [n for n, _ in model.named_parameters()]
    grads = dlc.grad(dlc.sum(out * dlc.constant(weights, "float64")), [p for _, p in model.named_parameters()])
    got = dlc.compile([out, *grads], target="cpu")(**feeds)
    return got[0], dict(zip(names, got[1:]))


def torch_outputs_and_grads(ref, out, weights):
    (out * torch.tensor(weights)).sum().backward()
    return out.detach().numpy(), {k: p.grad.numpy() for k, p in ref.named_parameters()}


def assert_same(got, want):
    out, grads = got
    want_out, want_grads = want
    np.testing.assert_allclose(out, want_out, err_msg="output", **TOL)
    assert set(grads) == set(want_grads)
    for k in grads:
        np.testing.assert_allclose(grads[k], want_grads[k], err_msg=f"gradient of {k}", **TOL)


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_self_attention_matches_torch(batch_first, rng):
    ref = torch.nn.MultiheadAttention(8, 2, batch_first=batch_first).double()
    model = nn.MultiheadAttention(8, 2, batch_first=batch_first, dtype="float64")
    copy_from_torch(model, ref)
    x = rng.normal(size=(3, 5, 8) if batch_first else (5, 3, 8))
    padding = np.zeros((3, 5), bool)
    padding[0, 3:] = padding[2, 4] = True            # True: the key is padding
    causal = np.triu(np.ones((5, 5), bool), 1)       # True: not allowed
    w = rng.normal(size=x.shape)
    got = dlc_outputs_and_grads(model, lambda x: model(x, x, x, key_padding_mask=padding, attn_mask=causal,
                                                       need_weights=False)[0], {"x": x}, w)
    tx = torch.tensor(x)
    out, weights = ref(tx, tx, tx, key_padding_mask=torch.tensor(padding), attn_mask=torch.tensor(causal),
                       need_weights=False)
    assert weights is None
    assert_same(got, torch_outputs_and_grads(ref, out, w))


def test_multihead_cross_attention_float_mask_and_weights_match_torch(rng):
    ref = torch.nn.MultiheadAttention(6, 3, batch_first=True).double()
    model = nn.MultiheadAttention(6, 3, batch_first=True, dtype="float64")
    copy_from_torch(model, ref)
    q, kv = rng.normal(size=(2, 4, 6)), rng.normal(size=(2, 7, 6))
    bias = rng.normal(size=(2 * 3, 4, 7))            # one float mask per batch element and head
    Q, KV = dlc.input("q", q.shape, "float64"), dlc.input("kv", kv.shape, "float64")
    out, weights = model(Q, KV, KV, attn_mask=bias)
    out_h, weights_h = model(Q, KV, KV, attn_mask=bias, average_attn_weights=False)
    got = dlc.compile([out, weights, weights_h], target="cpu")(q, kv)
    with torch.no_grad():
        want = ref(torch.tensor(q), torch.tensor(kv), torch.tensor(kv), attn_mask=torch.tensor(bias))
        want_h = ref(torch.tensor(q), torch.tensor(kv), torch.tensor(kv), attn_mask=torch.tensor(bias),
                     average_attn_weights=False)
    np.testing.assert_allclose(got[0], want[0].numpy(), **TOL)
    np.testing.assert_allclose(got[1], want[1].numpy(), **TOL)
    np.testing.assert_allclose(got[2], want_h[1].numpy(), **TOL)


def test_state_dict_goes_back_to_torch(rng):
    model = nn.MultiheadAttention(4, 2, rng=rng, dtype="float64")
    ref = torch.nn.MultiheadAttention(4, 2).double()
    ref.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})
    x = rng.normal(size=(3, 2, 4))
    X = dlc.input("x", x.shape, "float64")
    (got,) = dlc.compile([model(X, X, X, need_weights=False)[0]])(x)
    with torch.no_grad():
        want = ref(torch.tensor(x), torch.tensor(x), torch.tensor(x), need_weights=False)[0].numpy()
    np.testing.assert_allclose(got, want, **TOL)


@pytest.mark.filterwarnings("ignore:Support for mismatched")   # torch's: a float mask beside a bool one
@pytest.mark.parametrize("norm_first, activation", [(False, "relu"), (True, "gelu")])
def test_encoder_layer_matches_torch(norm_first, activation, rng):
    kwargs = dict(dim_feedforward=12, dropout=0.0, activation=activation, batch_first=True, norm_first=norm_first)
    ref = torch.nn.TransformerEncoderLayer(8, 2, **kwargs).double()
    model = nn.TransformerEncoderLayer(8, 2, dtype="float64", **kwargs)
    copy_from_torch(model, ref)
    x, w = rng.normal(size=(2, 6, 8)), rng.normal(size=(2, 6, 8))
    padding = np.zeros((2, 6), bool)
    padding[1, 4:] = True
    causal = np.where(np.triu(np.ones((6, 6), bool), 1), -np.inf, 0.0)
    got = dlc_outputs_and_grads(model, lambda x: model(x, src_mask=causal, src_key_padding_mask=padding),
                                {"x": x}, w)
    out = ref(torch.tensor(x), src_mask=torch.tensor(causal), src_key_padding_mask=torch.tensor(padding))
    assert_same(got, torch_outputs_and_grads(ref, out, w))


@pytest.mark.parametrize("norm_first, activation", [(False, "gelu"), (True, "relu")])
def test_decoder_layer_matches_torch(norm_first, activation, rng):
    kwargs = dict(dim_feedforward=10, dropout=0.0, activation=activation, batch_first=False, norm_first=norm_first)
    ref = torch.nn.TransformerDecoderLayer(6, 3, **kwargs).double()
    model = nn.TransformerDecoderLayer(6, 3, dtype="float64", **kwargs)
    copy_from_torch(model, ref)
    tgt, memory, w = rng.normal(size=(5, 2, 6)), rng.normal(size=(7, 2, 6)), rng.normal(size=(5, 2, 6))
    memory_padding = np.zeros((2, 7), bool)
    memory_padding[0, 5:] = True
    causal = np.triu(np.ones((5, 5), bool), 1)
    got = dlc_outputs_and_grads(
        model, lambda tgt, memory: model(tgt, memory, tgt_mask=causal, memory_key_padding_mask=memory_padding),
        {"tgt": tgt, "memory": memory}, w)
    out = ref(torch.tensor(tgt), torch.tensor(memory), tgt_mask=torch.tensor(causal),
              memory_key_padding_mask=torch.tensor(memory_padding))
    assert_same(got, torch_outputs_and_grads(ref, out, w))


def test_embedding_padding_idx_matches_torch(rng):
    ref = torch.nn.Embedding(6, 3, padding_idx=-2).double()
    model = nn.Embedding(6, 3, padding_idx=-2, dtype="float64")
    assert model.padding_idx == 4 and not model.state_dict()["weight"][4].any()
    copy_from_torch(model, ref)
    ids = np.array([[0, 4, 2], [4, 5, 0]])
    w = rng.normal(size=(2, 3, 3))
    got = dlc_outputs_and_grads(model, lambda ids: model(ids), {"ids": ids}, w)
    want = torch_outputs_and_grads(ref, ref(torch.tensor(ids)), w)
    assert_same(got, want)
    assert not got[1]["weight"][4].any()


def test_positional_encodings(rng):
    pe = nn.SinusoidalPositionalEncoding(6, max_len=10)
    x = rng.normal(size=(2, 4, 6)).astype(np.float32)
    (got,) = dlc.compile([pe(dlc.input("x", x.shape))])(x)
    pos, i = np.arange(4)[:, None], np.arange(3)[None, :]
    angle = pos / 10000 ** (2 * i / 6)
    table = np.stack([np.sin(angle), np.cos(angle)], axis=-1).reshape(4, 6)
    np.testing.assert_allclose(got, x + table, rtol=1e-6, atol=1e-6)
    learned = nn.LearnedPositionalEncoding(10, 6, dtype="float64")
    xs = rng.normal(size=(2, 4, 6))
    X = dlc.input("x64", xs.shape, "float64")
    y = learned(X)
    (gw,) = dlc.grad(dlc.sum(y * y), [learned.weight])
    out, g = dlc.compile([y, gw])(xs)
    table = learned.state_dict()["weight"]
    np.testing.assert_allclose(out, xs + table[:4], **TOL)
    np.testing.assert_allclose(g[:4], 2 * (xs + table[:4]).sum(axis=0), **TOL)
    assert not g[4:].any()
    with pytest.raises(dlc.ShapeError, match="exceeds max_len 10"):
        learned(dlc.input("long", (2, 11, 6), "float64"))


def test_attention_dropout_in_training_draws_one_mask_for_output_and_weights(rng):
    """In training, need_weights=False runs scaled_dot_product_attention with dropout_p (no fused op) and
    need_weights=True drops the written-out weights: the same seed and step give the same mask, so the same
    output; the weights returned are the dropped ones (as torch's), each 0 or its eval value / (1 - p)."""
    p = 0.3
    model = nn.MultiheadAttention(8, 2, dropout=p, batch_first=True, dtype="float64")
    x = rng.normal(size=(3, 5, 8))
    xi = dlc.input("x", x.shape, "float64")
    with nn.collect_updates() as state:
        fast, none = model(xi, xi, xi, need_weights=False, is_causal=True)
    assert none is None and not any(n.op == "attention" for n in topo_order([fast.node]))
    counter = model.attn_dropout.step
    assert list(state.updates()) == [counter]  # the dropout's step advances (step + 1)
    with nn.collect_updates():
        slow, weights = model(xi, xi, xi, need_weights=True, is_causal=True, average_attn_weights=False)
    model.eval()
    plain, plain_weights = model(xi, xi, xi, need_weights=True, is_causal=True, average_attn_weights=False)
    got_fast, got_slow, got_weights, want, want_weights = dlc.compile(
        [fast, slow, weights, plain, plain_weights], target="cpu")(x)
    np.testing.assert_allclose(got_fast, got_slow, rtol=1e-12, atol=1e-12)
    assert not np.allclose(got_fast, want)
    kept = got_weights != 0
    assert 0.5 < kept[want_weights > 0].mean() < 0.9  # about 1 - p of the probabilities kept
    np.testing.assert_allclose(got_weights[kept], want_weights[kept] / (1 - p), rtol=1e-12)


def test_attention_dropout_step_advances_in_a_compiled_training_step(rng):
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=12, dropout=0.2, batch_first=True, dtype="float64")
    x = dlc.input("x", (2, 4, 8), "float64")
    opt = dlc.optim.SGD(layer.parameters(), lr=0.0)
    step = nn.compile_step(lambda x: dlc.sum(layer(x, is_causal=True)), [x], opt, modules=layer, target="reference")
    feeds = rng.normal(size=(2, 4, 8))
    first, second = float(step(feeds)), float(step(feeds))
    assert first != second  # lr 0: only the dropout masks changed
    counter = layer.self_attn.attn_dropout.step
    assert int(layer.store[counter.node.attr("name")]) == 2
