"""dlc.compile_steps: steps that run back to back as one program, equal to running each step's function in turn."""

from __future__ import annotations

import numpy as np
import pytest

import dlc


def gan(rng, store: dlc.Store):
    """A small GAN: the discriminator's step, then the generator's, each with SGD; a shared step counter."""
    def p(shape, name):
        return dlc.param(rng.normal(size=shape) * 0.3, name=name, store=store, dtype="float64")

    g1, g2, d1, d2 = p((4, 8), "g1"), p((8, 6), "g2"), p((6, 8), "d1"), p((8, 1), "d2")
    count = dlc.param(np.array(0.0), name="count", store=store, dtype="float64")
    z = dlc.input("z", ("B", 4), "float64")
    real = dlc.input("real", ("B", 6), "float64")

    def gen():
        return dlc.tanh(dlc.relu(z @ g1) @ g2)

    def disc(v):
        return dlc.leaky_relu(v @ d1, 0.2) @ d2

    def bce(logits, target):
        return dlc.mean(dlc.softplus(logits) - target * logits)

    d_loss = bce(disc(real), 1.0) + bce(disc(dlc.stop_gradient(gen())), 0.0)
    dg = dlc.grad(d_loss, [d1, d2])
    d_updates = {d1: d1 - 0.1 * dg[0], d2: d2 - 0.1 * dg[1], count: count + 1.0}
    g_loss = bce(disc(gen()), 1.0) + 0.0 * count  # reads the counter the discriminator's step advanced
    gg = dlc.grad(g_loss, [g1, g2])
    g_updates = {g1: g1 - 0.1 * gg[0], g2: g2 - 0.1 * gg[1], count: count * 2.0}
    return (d_loss, d_updates), (g_loss, g_updates), [z, real], gen


def copy_of(store: dlc.Store) -> dlc.Store:
    out = dlc.Store()
    for key, value in store.items():
        out.add(key, value.copy(), store.is_trainable(key))
    return out


@pytest.mark.parametrize("target", ["reference", "cpu"])
def test_steps_equal_their_functions_called_in_turn(rng, target):
    store = dlc.Store()
    (d_loss, d_up), (g_loss, g_up), inputs, _ = gan(rng, store)
    one, apart = copy_of(store), copy_of(store)
    both = dlc.compile_steps([(d_loss, d_up), (g_loss, g_up)], inputs=inputs, target=target, store=one)
    d_step = dlc.compile(d_loss, inputs=inputs, updates=d_up, target="reference", store=apart)
    g_step = dlc.compile(g_loss, inputs=inputs[:1], updates=g_up, target="reference", store=apart)
    for call in range(3):
        zv, rv = rng.normal(size=(5, 4)), rng.normal(size=(5, 6))
        got = both(zv, rv)
        want = (d_step(zv, rv), g_step(zv))
        assert isinstance(got, tuple) and len(got) == 2
        np.testing.assert_allclose(got, want, rtol=1e-10, err_msg=f"call {call}")
        for key in store.keys():
            np.testing.assert_allclose(one[key], apart[key], rtol=1e-10, err_msg=f"{key} after call {call}")
    assert one["count"] == apart["count"] == 14.0   # ((0+1)*2+1)*2+1)*2: the steps ran in order, three times


def test_values_no_earlier_step_changes_are_computed_once(rng):
    store = dlc.Store()
    (d_loss, d_up), (g_loss, g_up), inputs, gen = gan(rng, store)
    both = dlc.compile_steps([(d_loss, d_up), (g_loss, g_up)], inputs=inputs, store=store)
    fake = gen().node  # the generator's forward pass reads no parameter the discriminator's step updates
    assert any(n is fake for n in both.graph.nodes)
    apart = len(dlc.Graph([d_loss.node] + [v.node for v in d_up.values()])) + \
        len(dlc.Graph([g_loss.node] + [v.node for v in g_up.values()]))
    assert len(both.graph) < apart


def test_structures_are_kept_per_step(rng):
    store = dlc.Store()
    w = dlc.param(np.ones(3), name="w", store=store, dtype="float64")
    x = dlc.input("x", (3,), "float64")
    fn = dlc.compile_steps([({"a": dlc.sum(x * w)}, {w: w * 2.0}), ([w + 0.0, x * w], {w: w + 1.0})], store=store)
    a, (b, c) = fn(np.arange(3.0))
    assert a == {"a": 3.0}
    np.testing.assert_array_equal(b, [2.0, 2.0, 2.0])
    np.testing.assert_array_equal(c, [0.0, 2.0, 4.0])
    np.testing.assert_array_equal(store["w"], [3.0, 3.0, 3.0])


def test_bad_steps_are_refused():
    x = dlc.input("x", (3,))
    with pytest.raises(ValueError, match="at least one"):
        dlc.compile_steps([])
    with pytest.raises(TypeError, match=r"step 0: expected an \(outputs, updates\) pair"):
        dlc.compile_steps([dlc.exp(x)])
    with pytest.raises(TypeError, match="step 1: updates must assign to parameters"):
        dlc.compile_steps([(dlc.exp(x), {}), (dlc.exp(x), {x: x * 2.0})])


def test_export_keeps_one_level_of_structure(rng, tmp_path):
    store = dlc.Store()
    w = dlc.param(np.ones(3, np.float32), name="w", store=store)
    x = dlc.input("x", (3,))
    fn = dlc.compile_steps([(dlc.sum(x * w), {w: w * 2.0}), (dlc.sum(x + w), {w: w + 1.0})], store=store)
    path = dlc.export(fn, tmp_path / "steps.dlc")
    loaded = dlc.load(path)
    xv = np.arange(3, dtype=np.float32)
    got = loaded(xv)
    assert isinstance(got, tuple) and len(got) == 2
    np.testing.assert_allclose(got, (3.0, 9.0))
    nested = dlc.compile_steps([([dlc.sum(x * w)], {})], store=store)
    with pytest.raises(TypeError, match="one level of output structure"):
        dlc.export(nested, tmp_path / "nested.dlc")
