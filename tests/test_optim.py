"""Optimizers as graph: each compiled step matches a numpy implementation of the same update rule."""

import math

import numpy as np
import pytest

import dlc
from dlc import nn, optim


class Regression:
    """A float64 linear model with an MSE loss, its compiled step, and the same math in numpy."""

    def __init__(self, make_opt, rng, **opt_args):
        self.w0 = rng.normal(size=(3, 2))
        self.b0 = rng.normal(size=(2,))
        self.w = dlc.param(self.w0, name="w", dtype="float64")
        self.b = dlc.param(self.b0, name="b", dtype="float64")
        x, t = dlc.input("x", ("B", 3), "float64"), dlc.input("t", ("B", 2), "float64")
        self.loss = dlc.mean(dlc.square(x @ self.w + self.b - t))
        self.opt = make_opt([self.w, self.b], **opt_args)
        self.step = dlc.compile(self.loss, inputs=[x, t], updates=self.opt.updates(self.loss))
        self.batches = [(rng.normal(size=(8, 3)), rng.normal(size=(8, 2))) for _ in range(4)]

    def values(self):
        store = dlc.default_store()
        return store["w"], store["b"]

    @staticmethod
    def loss_and_grads(w, b, x, t):
        r = x @ w + b - t
        return np.mean(r * r), [2 * x.T @ r / r.size, 2 * r.sum(0) / r.size]

    def check(self, numpy_rule):
        """Run the compiled step and numpy_rule(params, grads, state, step_no) side by side."""
        params, state = [self.w0.copy(), self.b0.copy()], {}
        for k, (x, t) in enumerate(self.batches, start=1):
            want_loss, grads = self.loss_and_grads(*params, x, t)
            params = numpy_rule(params, grads, state, k)
            got_loss = self.step(x, t)
            np.testing.assert_allclose(got_loss, want_loss, rtol=1e-12)
            for got, want in zip(self.values(), params):
                np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, err_msg=f"step {k}")


def sgd_numpy(lr, momentum=0.0, nesterov=False, wd=0.0):
    def rule(params, grads, state, k):
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            d = g + wd * p
            if momentum:
                buf = momentum * state.get(i, 0.0) + d
                state[i] = buf
                d = d + momentum * buf if nesterov else buf
            out.append(p - lr * d)
        return out
    return rule


def adam_numpy(lr, b1=0.9, b2=0.999, eps=1e-8, wd=0.0, decoupled=False):
    def rule(params, grads, state, k):
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            if wd and not decoupled:
                g = g + wd * p
            m = b1 * state.get(("m", i), 0.0) + (1 - b1) * g
            v = b2 * state.get(("v", i), 0.0) + (1 - b2) * g * g
            state[("m", i)], state[("v", i)] = m, v
            m_hat, v_hat = m / (1 - b1 ** k), v / (1 - b2 ** k)
            if wd and decoupled:
                p = p * (1 - lr * wd)
            out.append(p - lr * m_hat / (np.sqrt(v_hat) + eps))
        return out
    return rule


def rmsprop_numpy(lr, alpha=0.99, eps=1e-8, momentum=0.0):
    def rule(params, grads, state, k):
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            v = alpha * state.get(("v", i), 0.0) + (1 - alpha) * g * g
            state[("v", i)] = v
            d = g / (np.sqrt(v) + eps)
            if momentum:
                d = momentum * state.get(("buf", i), 0.0) + d
                state[("buf", i)] = d
            out.append(p - lr * d)
        return out
    return rule


@pytest.mark.parametrize("opt_args, rule", [
    ({"lr": 0.1}, sgd_numpy(0.1)),
    ({"lr": 0.1, "momentum": 0.9}, sgd_numpy(0.1, 0.9)),
    ({"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}, sgd_numpy(0.1, 0.9, True, 0.01)),
], ids=["plain", "momentum", "nesterov+wd"])
def test_sgd_matches_numpy(opt_args, rule, rng):
    Regression(optim.SGD, rng, **opt_args).check(rule)


@pytest.mark.parametrize("make, opt_args, rule", [
    (optim.Adam, {"lr": 0.05}, adam_numpy(0.05)),
    (optim.Adam, {"lr": 0.05, "betas": (0.5, 0.9), "weight_decay": 0.1}, adam_numpy(0.05, 0.5, 0.9, wd=0.1)),
    (optim.AdamW, {"lr": 0.05, "weight_decay": 0.1}, adam_numpy(0.05, wd=0.1, decoupled=True)),
    (optim.RMSprop, {"lr": 0.01}, rmsprop_numpy(0.01)),
    (optim.RMSprop, {"lr": 0.01, "momentum": 0.5}, rmsprop_numpy(0.01, momentum=0.5)),
], ids=["adam", "adam+l2", "adamw", "rmsprop", "rmsprop+momentum"])
def test_adaptive_optimizers_match_numpy(make, opt_args, rule, rng):
    Regression(make, rng, **opt_args).check(rule)


def test_gradient_clipping_by_global_norm_matches_numpy(rng):
    def clipped_sgd(params, grads, state, k):
        norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads))
        scale = min(1.0, 0.5 / (norm + 1e-6))
        return [p - 0.1 * g * scale for p, g in zip(params, grads)]

    Regression(optim.SGD, rng, lr=0.1, max_grad_norm=0.5).check(clipped_sgd)


def test_optimizer_state_lives_in_the_store_as_non_trainable_params(rng):
    model = Regression(optim.Adam, rng, lr=0.01)
    keys = model.opt.state_keys()
    assert sorted(keys) == ["adam1.exp_avg.b", "adam1.exp_avg.w", "adam1.exp_avg_sq.b", "adam1.exp_avg_sq.w",
                            "adam1.lr", "adam1.t"]
    store = dlc.default_store()
    assert not any(store.is_trainable(k) for k in keys)
    model.step(*model.batches[0])
    model.step(*model.batches[1])
    assert float(store["adam1.t"]) == 2.0


def test_learning_rate_is_a_runtime_value_read_by_the_same_compiled_function(rng):
    model = Regression(optim.SGD, rng, lr=0.1)
    step = model.step
    x, t = model.batches[0]
    model.opt.lr = 0.0
    before = [v.copy() for v in model.values()]
    step(x, t)
    for a, b in zip(before, model.values()):
        np.testing.assert_array_equal(a, b)
    model.opt.lr = 0.25
    _, grads = Regression.loss_and_grads(*before, x, t)
    step(x, t)
    assert model.step is step
    for p0, g, p in zip(before, grads, model.values()):
        np.testing.assert_allclose(p, p0 - 0.25 * g, rtol=1e-7)


def test_schedules_write_the_learning_rate():
    w = dlc.param(np.zeros(2), name="w")
    opt = optim.SGD([w], lr=1.0)
    sched = optim.StepLR(opt, step_size=2, gamma=0.5)
    assert [sched.step() for _ in range(5)] == pytest.approx([1.0, 0.5, 0.5, 0.25, 0.25])
    opt2 = optim.SGD([w], lr=1.0)
    cos = optim.CosineLR(opt2, t_max=4, eta_min=0.1)
    lrs = [opt2.lr] + [cos.step() for _ in range(5)]
    assert lrs == pytest.approx([1.0, 0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2, 0.55,
                                 0.1 + 0.9 * (1 + math.cos(3 * math.pi / 4)) / 2, 0.1, 0.1], rel=1e-6)
    const = optim.ConstantLR(opt)
    assert const.step() == opt.lr


def test_optimizer_argument_errors():
    w = dlc.param(np.zeros(2), name="w")
    stat = dlc.param(np.zeros(2), name="stat", trainable=False)
    with pytest.raises(ValueError, match="no parameters"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="'stat' is not trainable"):
        optim.Adam([w, stat])
    with pytest.raises(ValueError, match="given twice"):
        optim.Adam([w, w])
    with pytest.raises(KeyError, match="not in this optimizer's store"):
        optim.SGD([w], lr=0.1, store=dlc.Store())
    with pytest.raises(TypeError, match="optimizes dlc.param tensors"):
        optim.SGD([w * 2], lr=0.1)
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD([w], lr=0.1, nesterov=True)


def test_optimizer_accepts_a_module():
    model = nn.Linear(2, 1)
    opt = optim.SGD(model, lr=0.1)
    assert len(opt.params) == 2
