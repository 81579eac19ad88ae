"""The training API: compiled steps against a numpy forward/backward/update, modes, GAN steps, fit."""

import numpy as np
import pytest

import dlc
from dlc import nn, optim
from dlc.train import batches


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(5, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(dlc.relu(self.fc1(x)))


def numpy_mlp_loss_and_grads(p, x, y):
    """Cross-entropy of the MLP above and its gradients, by hand."""
    h_pre = x @ p["fc1.weight"].T + p["fc1.bias"]
    h = np.maximum(h_pre, 0)
    z = h @ p["fc2.weight"].T + p["fc2.bias"]
    z = z - z.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    n = len(x)
    loss = -np.mean(np.log(probs[np.arange(n), y]))
    dz = (probs - np.eye(3)[y]) / n
    dh = (dz @ p["fc2.weight"]) * (h_pre > 0)
    grads = {"fc2.weight": dz.T @ h, "fc2.bias": dz.sum(0), "fc1.weight": dh.T @ x, "fc1.bias": dh.sum(0)}
    return loss, grads


def inputs():
    return dlc.input("x", ("B", 5)), dlc.input("y", ("B",), "int64")


def data(rng, n=12):
    return rng.normal(size=(n, 5)).astype(np.float32), rng.integers(0, 3, n)


def test_sgd_momentum_step_matches_numpy_forward_backward_and_update(rng):
    model = MLP()
    opt = optim.SGD(model.parameters(), lr=0.2, momentum=0.9, nesterov=True)
    step = nn.compile_step(lambda x, y: nn.cross_entropy(model(x), y), inputs(), opt, modules=model)
    params = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
    bufs = {k: 0.0 for k in params}
    for _ in range(3):
        x, y = data(rng)
        want_loss, grads = numpy_mlp_loss_and_grads(params, x, y)
        assert step(x, y) == pytest.approx(want_loss, rel=1e-5)
        for k, g in grads.items():
            bufs[k] = 0.9 * bufs[k] + g
            params[k] = params[k] - 0.2 * (g + 0.9 * bufs[k])
        for k, v in model.state_dict().items():
            np.testing.assert_allclose(v, params[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_adam_step_matches_numpy_and_returns_metrics(rng):
    model = MLP()
    opt = optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)

    def loss_fn(x, y):
        logits = model(x)
        return {"loss": nn.cross_entropy(logits, y), "acc": nn.accuracy(logits, y)}

    step = nn.compile_step(loss_fn, inputs(), opt, modules=model)
    params = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
    m = {k: 0.0 for k in params}
    v = {k: 0.0 for k in params}
    for t in (1, 2):
        x, y = data(rng)
        want_loss, grads = numpy_mlp_loss_and_grads(params, x, y)
        z = np.maximum(x @ params["fc1.weight"].T + params["fc1.bias"], 0) @ params["fc2.weight"].T + params["fc2.bias"]
        out = step(x, y)
        assert out["loss"] == pytest.approx(want_loss, rel=1e-5)
        assert out["acc"] == pytest.approx(np.mean(z.argmax(1) == y))
        for k, g in grads.items():
            m[k] = 0.9 * m[k] + 0.1 * g
            v[k] = 0.999 * v[k] + 0.001 * g * g
            p = params[k] * (1 - 0.01 * 0.1)
            params[k] = p - 0.01 * (m[k] / (1 - 0.9 ** t)) / (np.sqrt(v[k] / (1 - 0.999 ** t)) + 1e-8)
        for k, val in model.state_dict().items():
            np.testing.assert_allclose(val, params[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_step_updates_batch_norm_statistics_and_dropout_counter_and_eval_uses_running_stats(rng):
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 3))
    model.eval()
    opt = optim.SGD(model.parameters(), lr=0.0)
    step = nn.compile_step(lambda x, y: nn.cross_entropy(model(x), y), inputs(), opt, modules=model)
    assert not any(m.training for m in model.modules()), "compile_step restores each module's mode"
    x, y = data(rng)
    step(x, y)
    step(x, y)
    sd = model.state_dict()
    h = x @ sd["0.weight"].T + sd["0.bias"]
    np.testing.assert_allclose(sd["1.running_mean"], (1 - 0.9 ** 2) * h.mean(0), rtol=1e-4)
    assert int(model.store[model[2].step.node.attr("name")]) == 2

    predict = nn.compile_eval(lambda x: model(x), [inputs()[0]], modules=model)
    hn = (h - sd["1.running_mean"]) / np.sqrt(sd["1.running_var"] + 1e-5) * sd["1.weight"] + sd["1.bias"]
    np.testing.assert_allclose(predict(x), hn @ sd["3.weight"].T + sd["3.bias"], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(predict(x), predict(x))


def test_gan_steps_share_weights_and_update_only_their_own_parameters(rng):
    G = nn.Sequential(nn.Linear(3, 8), nn.LeakyReLU(0.2), nn.Linear(8, 2))
    D = nn.Sequential(nn.Linear(2, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1))
    real, z = dlc.input("real", ("B", 2)), dlc.input("z", ("B", 3))
    d_step = nn.compile_step(lambda r, z: dlc.mean(dlc.softplus(-D(r))) + dlc.mean(dlc.softplus(D(G(z)))),
                             [real, z], optim.Adam(D.parameters(), lr=0.01), modules=[D, G])
    g_step = nn.compile_step(lambda z: dlc.mean(dlc.softplus(-D(G(z)))), [z], optim.Adam(G.parameters(), lr=0.01),
                             modules=[D, G])
    r, noise = rng.normal(size=(6, 2)).astype(np.float32), rng.normal(size=(6, 3)).astype(np.float32)

    g0, d0 = G.state_dict(), D.state_dict()
    d_step(r, noise)
    assert all(np.array_equal(G.state_dict()[k], g0[k]) for k in g0)
    assert all(not np.array_equal(D.state_dict()[k], d0[k]) for k in d0)

    d1 = D.state_dict()
    g_loss = g_step(noise)
    assert all(np.array_equal(D.state_dict()[k], d1[k]) for k in d1)
    assert all(not np.array_equal(G.state_dict()[k], g0[k]) for k in g0)
    # the G step read D's weights as the D step left them
    sd = {**{"G" + k: v for k, v in g0.items()}, **{"D" + k: v for k, v in d1.items()}}
    h = noise @ sd["G0.weight"].T + sd["G0.bias"]
    fake = np.where(h > 0, h, 0.2 * h) @ sd["G2.weight"].T + sd["G2.bias"]
    h = fake @ sd["D0.weight"].T + sd["D0.bias"]
    logit = np.where(h > 0, h, 0.2 * h) @ sd["D2.weight"].T + sd["D2.bias"]
    assert g_loss == pytest.approx(np.mean(np.logaddexp(0, -logit)), rel=1e-5)


def test_fit_runs_epochs_with_batches_metrics_and_a_schedule(rng):
    model = MLP()
    opt = optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    sched = optim.StepLR(opt, step_size=1, gamma=0.5)
    x_all, y_all = data(rng, 90)
    y_all = (x_all[:, 0] > 0).astype(np.int64) + (x_all[:, 1] > 0)
    seen = []

    def loss_fn(x, y):
        logits = model(x)
        return {"loss": nn.cross_entropy(logits, y), "acc": nn.accuracy(logits, y)}

    step = nn.compile_step(loss_fn, inputs(), opt, modules=model)

    def counting_step(x, y):
        seen.append(len(x))
        return step(x, y)

    history = nn.fit(counting_step, x_all, y_all, epochs=4, batch_size=16, progress=False, schedule=sched,
                     validate=lambda epoch: {"val": float(epoch)})
    assert [h["epoch"] for h in history] == [1, 2, 3, 4] and history.stopped is None
    assert seen[:6] == [15] * 6 and sum(seen) == 4 * 90
    assert [h["lr"] for h in history] == pytest.approx([0.5, 0.25, 0.125, 0.0625])
    assert history[-1]["loss"] < 0.7 * history[0]["loss"]
    assert history[-1]["acc"] > history[0]["acc"] and history[-1]["val"] == 4.0


def test_batches_cover_every_row_once():
    parts = batches(10, 4, shuffle=True, rng=np.random.default_rng(0))
    assert [len(p) for p in parts] == [4, 3, 3]
    assert sorted(np.concatenate(parts).tolist()) == list(range(10))


def test_fit_stops_at_a_non_finite_loss_and_says_where(rng):
    losses = iter([1.0, 0.5, 0.4, float("nan"), 0.1])
    messages = []
    history = nn.fit(lambda x: next(losses), np.zeros((6, 1)), epochs=3, batch_size=2, progress=False,
                     log=messages.append)
    assert len(history) == 1 and history[0]["loss"] == pytest.approx((1.0 + 0.5 + 0.4) / 3)
    assert "loss is nan at epoch 2, step 1 of 3" in history.stopped
    assert messages == [f"fit: {history.stopped}"]


def test_fit_with_a_progress_bar(rng, capsys):
    history = nn.fit(lambda x: 1.0, np.zeros((4, 1)), epochs=1, batch_size=2, progress=True)
    assert history[0]["loss"] == 1.0
    assert "epoch 1/1" in capsys.readouterr().err


def test_compile_step_errors():
    model = MLP()
    opt = optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="must be a scalar"):
        nn.compile_step(lambda x, y: model(x), inputs(), opt, modules=model)
    with pytest.raises(TypeError, match="'loss' entry"):
        nn.compile_step(lambda x, y: {"acc": nn.accuracy(model(x), y)}, inputs(), opt, modules=model)
    other = nn.Conv1d(1, 1, 1, store=dlc.Store())
    with pytest.raises(KeyError, match="not in this optimizer's store"):
        optim.SGD(other.parameters(), lr=0.1)
    opt_other = optim.SGD(other.parameters(), lr=0.1, store=other.store)
    with pytest.raises(ValueError, match="another store"):
        nn.compile_step(lambda x, y: dlc.sum(other(model(x)[:, None, :])), inputs(), opt_other,
                        modules=[other, model])
    with pytest.raises(ValueError, match="needs the training arrays"):
        nn.fit(lambda: 0.0)
