"""dlc.nn modules: registration, state dicts, layers against numpy, batch norm and dropout modes, initializers."""

import math

import numpy as np
import pytest

import dlc
from dlc import nn
from tests.helpers import check_grad


def run_module(module, x, training=None):
    """Compile module(x) once (with its state updates) and run it on x."""
    if training is not None:
        module.train(training)
    inp = dlc.input("x", tuple("B" if i == 0 else d for i, d in enumerate(x.shape)), x.dtype.name)
    with nn.collect_updates() as state:
        out = module(inp)
    return dlc.compile(out, inputs=[inp], updates=state.updates(), store=module.store)(x)


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.norm = nn.BatchNorm1d(8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(dlc.relu(self.norm(self.fc1(x))))


class AutoEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = Encoder()
        self.decoder = nn.Linear(3, 4, bias=False)

    def forward(self, x):
        return self.decoder(self.encoder(x))


# ----------------------------------------------------------------------------
# registration and state


def test_named_parameters_follow_the_module_tree():
    model = AutoEncoder()
    assert [n for n, _ in model.named_parameters()] == [
        "encoder.fc1.weight", "encoder.fc1.bias", "encoder.norm.weight", "encoder.norm.bias",
        "encoder.fc2.weight", "encoder.fc2.bias", "decoder.weight"]
    assert [n for n, _ in model.named_buffers()] == ["encoder.norm.running_mean", "encoder.norm.running_var"]
    assert model.num_parameters() == 4 * 8 + 8 + 8 + 8 + 8 * 3 + 3 + 3 * 4
    assert all(t.op == "param" for t in model.parameters())


def test_two_models_of_the_same_structure_get_distinct_store_keys():
    a, b = AutoEncoder(), AutoEncoder()
    keys_a = {t.node.attr("name") for t in a.parameters()}
    keys_b = {t.node.attr("name") for t in b.parameters()}
    assert not keys_a & keys_b
    assert len(keys_a) == len(keys_b) == 7
    assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]


def test_store_argument_reaches_layers_built_inside_a_user_module():
    store = dlc.Store()
    model = AutoEncoder(store=store)
    assert model.encoder.fc1.store is store
    assert len(store) == 9 and len(dlc.default_store()) == 0
    assert set(model.state_dict()) == {n for n, _ in model.named_parameters()} | {n for n, _ in
                                                                               model.named_buffers()}


def test_train_and_eval_switch_every_submodule():
    model = AutoEncoder()
    assert model.eval() is model
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())


def test_state_dict_round_trip_between_two_models():
    a, b = AutoEncoder(), AutoEncoder()
    b.load_state_dict(a.state_dict())
    for (name, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        np.testing.assert_array_equal(va, vb, err_msg=name)
    sd = a.state_dict()
    sd["decoder.weight"][:] = 7.0  # a copy: the store is not changed through it
    assert not np.any(a.state_dict()["decoder.weight"] == 7.0)


def test_load_state_dict_reports_missing_unexpected_and_misshaped_keys_and_writes_nothing():
    model = AutoEncoder()
    before = model.state_dict()
    sd = model.state_dict()
    del sd["encoder.fc1.bias"]
    sd["encoder.fc3.weight"] = np.zeros((2, 2))
    sd["decoder.weight"] = np.zeros((3, 4))
    sd["encoder.fc2.bias"] = np.full(3, 5.0)
    with pytest.raises(ValueError) as e:
        model.load_state_dict(sd)
    msg = str(e.value)
    assert "missing key(s): encoder.fc1.bias" in msg
    assert "unexpected key(s): encoder.fc3.weight" in msg
    assert "decoder.weight: expected shape (4, 3), got (3, 4)" in msg
    np.testing.assert_array_equal(model.state_dict()["encoder.fc2.bias"], before["encoder.fc2.bias"])


def test_load_state_dict_non_strict_skips_missing_keys():
    model = AutoEncoder()
    model.load_state_dict({"decoder.weight": np.ones((4, 3)), "extra": np.zeros(1)}, strict=False)
    np.testing.assert_array_equal(model.state_dict()["decoder.weight"], np.ones((4, 3)))


def test_setattr_before_super_init_is_a_clear_error():
    class Broken(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(2, 2)

    with pytest.raises(AttributeError, match="must call super"):
        Broken()


def test_sequential_rejects_non_modules():
    with pytest.raises(TypeError, match="position 1"):
        nn.Sequential(nn.ReLU(), lambda x: x)


# ----------------------------------------------------------------------------
# layers against numpy


def test_linear_matches_numpy(rng):
    layer = nn.Linear(5, 3)
    x = rng.normal(size=(4, 5)).astype(np.float32)
    w, b = (layer.store[t.node.attr("name")] for t in (layer.weight, layer.bias))
    np.testing.assert_allclose(run_module(layer, x), x @ w.T + b, rtol=1e-5, atol=1e-6)


def test_mlp_forward_matches_numpy(rng):
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.LeakyReLU(0.1), nn.Linear(4, 2),
                          nn.Sigmoid())
    x = rng.normal(size=(3, 6)).astype(np.float32)
    sd = model.state_dict()
    h = np.tanh(x @ sd["0.weight"].T + sd["0.bias"])
    h = h @ sd["2.weight"].T + sd["2.bias"]
    h = np.where(h > 0, h, 0.1 * h) @ sd["4.weight"].T + sd["4.bias"]
    np.testing.assert_allclose(run_module(model, x), 1 / (1 + np.exp(-h)), rtol=1e-5, atol=1e-6)


def test_embedding_and_flatten(rng):
    emb = nn.Embedding(7, 3)
    ids = np.array([[0, 6], [3, 3]], np.int64)
    table = emb.state_dict()["weight"]
    np.testing.assert_array_equal(run_module(emb, ids), table[ids])
    x = rng.normal(size=(2, 3, 2, 2)).astype(np.float32)
    np.testing.assert_array_equal(run_module(nn.Flatten(), x), x.reshape(2, -1))


def test_layer_norm_matches_numpy(rng):
    layer = nn.LayerNorm((3, 4))
    layer.load_state_dict({"weight": rng.normal(size=(3, 4)), "bias": rng.normal(size=(3, 4))})
    x = rng.normal(size=(2, 3, 4)).astype(np.float32)
    mu = x.mean(axis=(1, 2), keepdims=True)
    var = x.var(axis=(1, 2), keepdims=True)
    sd = layer.state_dict()
    want = (x - mu) / np.sqrt(var + 1e-5) * sd["weight"] + sd["bias"]
    np.testing.assert_allclose(run_module(layer, x), want, rtol=1e-4, atol=1e-5)


def _conv2d_numpy(x, w, b, stride, pad):
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, _, h, wd = x.shape
    co, _, kh, kw = w.shape
    ho, wo = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = np.zeros((n, co, ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = x[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
            out[:, :, i, j] = np.einsum("ncij,ocij->no", patch, w)
    return out + b[None, :, None, None]


def test_conv2d_and_pooling_layers_match_numpy(rng):
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
    x = rng.normal(size=(2, 2, 5, 5)).astype(np.float32)
    sd = conv.state_dict()
    want = _conv2d_numpy(x, sd["weight"], sd["bias"], 2, 1)
    np.testing.assert_allclose(run_module(conv, x), want, rtol=1e-4, atol=1e-5)
    pooled = run_module(nn.MaxPool2d(2), x[:, :, :4, :4])
    np.testing.assert_allclose(pooled, x[:, :, :4, :4].reshape(2, 2, 2, 2, 2, 2).max(axis=(3, 5)))
    avg = run_module(nn.AdaptiveAvgPool2d(1), x)
    np.testing.assert_allclose(avg, x.mean(axis=(2, 3), keepdims=True), rtol=1e-5)


def test_conv_transpose2d_upsamples_as_the_adjoint_of_conv2d(rng):
    up = nn.ConvTranspose2d(3, 2, 4, stride=2, padding=1)
    x = rng.normal(size=(1, 3, 3, 3)).astype(np.float32)
    y = run_module(up, x)
    assert y.shape == (1, 2, 6, 6)
    # <conv_transpose(x), v> == <x, conv(v)> with the same weight (bias removed)
    v = rng.normal(size=y.shape)
    sd = up.state_dict()
    conv_v = _conv2d_numpy(v, sd["weight"], np.zeros(3), 2, 1)
    lhs = np.sum((y - sd["bias"][None, :, None, None]) * v)
    np.testing.assert_allclose(lhs, np.sum(x * conv_v), rtol=1e-4)


# ----------------------------------------------------------------------------
# batch norm and dropout modes


def test_batch_norm_training_uses_batch_statistics_and_updates_running_ones(rng):
    bn = nn.BatchNorm2d(3, momentum=0.2)
    bn.load_state_dict({**bn.state_dict(), "weight": np.array([1.0, 2.0, 0.5]), "bias": np.array([0.0, 1.0, -1.0])})
    x = rng.normal(2.0, 3.0, size=(4, 3, 2, 2)).astype(np.float32)
    y = run_module(bn, x, training=True)
    mu, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    want = (x - mu[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5) * np.array([1, 2, 0.5])[:, None, None] \
        + np.array([0, 1, -1])[:, None, None]
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
    n = x.size // 3
    sd = bn.state_dict()
    np.testing.assert_allclose(sd["running_mean"], 0.2 * mu, rtol=1e-5)
    np.testing.assert_allclose(sd["running_var"], 0.8 + 0.2 * var * n / (n - 1), rtol=1e-5)


def test_batch_norm_eval_uses_running_statistics_and_updates_nothing(rng):
    bn = nn.BatchNorm1d(2)
    bn.load_state_dict({**bn.state_dict(), "running_mean": np.array([1.0, -1.0]), "running_var": np.array([4.0, 0.25])})
    x = rng.normal(size=(5, 2)).astype(np.float32)
    y = run_module(bn, x, training=False)
    np.testing.assert_allclose(y, (x - [1.0, -1.0]) / np.sqrt(np.array([4.0, 0.25]) + 1e-5), rtol=1e-5)
    np.testing.assert_array_equal(bn.state_dict()["running_mean"], [1.0, -1.0])


def test_batch_norm_used_twice_in_one_step_chains_its_updates(rng):
    bn = nn.BatchNorm1d(2, momentum=0.5)
    a, b = rng.normal(size=(4, 2)).astype(np.float32), rng.normal(size=(4, 2)).astype(np.float32)
    xa, xb = dlc.input("a", ("B", 2)), dlc.input("b", ("B", 2))
    with nn.collect_updates() as state:
        out = bn(xa) + bn(xb)
    dlc.compile(out, updates=state.updates())(a, b)
    want = 0.5 * (0.5 * 0 + 0.5 * a.mean(0)) + 0.5 * b.mean(0)
    np.testing.assert_allclose(bn.state_dict()["running_mean"], want, rtol=1e-5)


def test_batch_norm_rejects_a_wrong_channel_count():
    with pytest.raises(dlc.ShapeError, match=r"BatchNorm2d\(3\).*4-d input with 3 channels.*\(B, 4, 2, 2\)"):
        nn.BatchNorm2d(3)(dlc.input("x", ("B", 4, 2, 2)))


def test_training_forward_outside_a_collector_warns_that_state_is_not_updated():
    bn = nn.BatchNorm1d(2)
    with pytest.warns(UserWarning, match="will not be updated"):
        bn(dlc.input("x", ("B", 2)))


def test_dropout_is_identity_in_eval_and_masks_and_scales_in_training(rng):
    drop = nn.Dropout(0.25, seed=3)
    x = rng.uniform(1.0, 2.0, size=(64, 50)).astype(np.float32)
    np.testing.assert_array_equal(run_module(drop, x, training=False), x)
    drop.train()
    inp = dlc.input("x", ("B", 50))
    with nn.collect_updates() as state:
        out = drop(inp)
    fn = dlc.compile(out, updates=state.updates())
    first, second = fn(x), fn(x)
    kept = first != 0
    assert abs(kept.mean() - 0.75) < 0.03
    np.testing.assert_allclose(first[kept], x[kept] / 0.75, rtol=1e-6)
    assert (second != 0).mean() > 0.7 and np.any(kept != (second != 0)), "the mask must change between steps"
    assert int(drop.store[drop.step.node.attr("name")]) == 2
    assert "step" not in drop.state_dict()


# ----------------------------------------------------------------------------
# gradients of layers by central differences


@pytest.mark.parametrize("make, shape", [
    (lambda: nn.Linear(4, 3), (2, 4)),
    (lambda: nn.LayerNorm(4), (3, 4)),
    (lambda: nn.BatchNorm1d(3), (5, 3)),
    (lambda: nn.Conv2d(2, 3, 3, padding=1), (2, 2, 4, 4)),
    (lambda: nn.ConvTranspose2d(2, 2, 3, stride=2, padding=1, output_padding=1), (1, 2, 3, 3)),
    (lambda: nn.Sequential(nn.Conv1d(2, 2, 3), nn.GELU()), (2, 2, 6)),
    (lambda: nn.Sequential(nn.Linear(4, 4), nn.ELU(), nn.Linear(4, 2), nn.Softplus()), (3, 4)),
])
def test_layer_gradients_match_central_differences(make, shape, rng):
    layer = make()
    layer.train()
    x = rng.normal(size=shape).astype(np.float32)
    with nn.collect_updates():
        check_grad(lambda x: layer(x), [x], params=True, max_entries=12)


# ----------------------------------------------------------------------------
# initializers


@pytest.mark.parametrize("shape", [(200, 300), (64, 32, 3, 3)])
def test_initializer_statistics_follow_fan_in_and_fan_out(shape):
    fan_in, fan_out = nn.init.fans(shape)
    assert (fan_in, fan_out) == (shape[1] * math.prod(shape[2:]), shape[0] * math.prod(shape[2:]))
    cases = {
        "xavier_uniform": (nn.init.xavier_uniform(shape, rng=0), math.sqrt(2 / (fan_in + fan_out))),
        "xavier_normal": (nn.init.xavier_normal(shape, rng=1), math.sqrt(2 / (fan_in + fan_out))),
        "kaiming_uniform": (nn.init.kaiming_uniform(shape, nonlinearity="relu", rng=2), math.sqrt(2 / fan_in)),
        "kaiming_normal_fan_out": (nn.init.kaiming_normal(shape, mode="fan_out", nonlinearity="relu", rng=3),
                                   math.sqrt(2 / fan_out)),
        "default": (nn.init.default_weight(shape, rng=4), 1 / math.sqrt(3 * fan_in)),
    }
    for name, (w, std) in cases.items():
        assert w.dtype == np.float32 and w.shape == shape
        assert abs(w.mean()) < 0.05 * std, name
        assert abs(w.std() / std - 1) < 0.03, (name, w.std(), std)
    bound = math.sqrt(6 / (fan_in + fan_out))
    assert np.abs(cases["xavier_uniform"][0]).max() <= bound


def test_initializers_are_reproducible_and_layers_follow_manual_seed():
    np.testing.assert_array_equal(nn.init.normal((3, 3), rng=5), nn.init.normal((3, 3), rng=5))
    nn.manual_seed(11)
    a = nn.Linear(3, 2).state_dict()["weight"]
    nn.manual_seed(11)
    b = nn.Linear(3, 2).state_dict()["weight"]
    np.testing.assert_array_equal(a, b)
    assert np.abs(a).max() <= 1 / math.sqrt(3)
    assert nn.init.calculate_gain("leaky_relu", 0.2) == pytest.approx(math.sqrt(2 / 1.04))
    with pytest.raises(ValueError, match="at least 2 dims"):
        nn.init.xavier_uniform((5,))
