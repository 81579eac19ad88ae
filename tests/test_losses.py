"""Losses against numpy, their reductions, stability at extreme logits, gradients and errors."""

import numpy as np
import pytest

import dlc
from dlc import nn
from tests.helpers import check_grad, run


def log_softmax_np(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softplus_np(x):
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_and_nll_match_numpy(reduction, rng):
    logits = rng.normal(size=(6, 5))
    labels = rng.integers(0, 5, 6)
    per_row = -log_softmax_np(logits)[np.arange(6), labels]
    want = {"mean": per_row.mean(), "sum": per_row.sum(), "none": per_row}[reduction]
    got = run(lambda z, y: nn.cross_entropy(z, y, reduction), logits, labels)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    got_nll = run(lambda z, y: nn.nll_loss(dlc.log_softmax(z, axis=1), y, reduction), logits, labels)
    np.testing.assert_allclose(got_nll, want, rtol=1e-12)


def test_cross_entropy_with_label_smoothing_matches_the_smoothed_target(rng):
    logits, labels, eps = rng.normal(size=(4, 3)), np.array([0, 2, 1, 1]), 0.1
    target = np.full((4, 3), eps / 3) + (1 - eps) * np.eye(3)[labels]
    want = -(target * log_softmax_np(logits)).sum(axis=1).mean()
    np.testing.assert_allclose(run(lambda z, y: nn.cross_entropy(z, y, label_smoothing=eps), logits, labels), want,
                               rtol=1e-12)


def test_cross_entropy_takes_the_class_axis_at_position_1(rng):
    logits = rng.normal(size=(2, 4, 3))           # (N, C, T)
    labels = rng.integers(0, 4, (2, 3))
    lp = log_softmax_np(logits)
    want = -np.take_along_axis(lp, labels[:, None, :], axis=1)[:, 0, :]
    np.testing.assert_allclose(run(lambda z, y: nn.cross_entropy(z, y, "none"), logits, labels), want, rtol=1e-12)


def test_binary_and_regression_losses_match_numpy(rng):
    x, t = rng.normal(size=(5, 2)), rng.uniform(size=(5, 2))
    np.testing.assert_allclose(run(nn.binary_cross_entropy_with_logits, x, t),
                               (softplus_np(x) - x * t).mean(), rtol=1e-12)
    pw = np.array([2.0, 0.5])
    want = -(pw * t * np.log(1 / (1 + np.exp(-x))) + (1 - t) * np.log(1 - 1 / (1 + np.exp(-x))))
    np.testing.assert_allclose(run(lambda a, b: nn.binary_cross_entropy_with_logits(a, b, "none", pos_weight=pw),
                                   x, t), want, rtol=1e-10)
    p = 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(run(lambda a, b: nn.binary_cross_entropy(a, b, "sum"), p, t),
                               -(t * np.log(p) + (1 - t) * np.log(1 - p)).sum(), rtol=1e-10)
    np.testing.assert_allclose(run(nn.mse_loss, x, t), ((x - t) ** 2).mean(), rtol=1e-12)
    np.testing.assert_allclose(run(lambda a, b: nn.l1_loss(a, b, "sum"), x, t), np.abs(x - t).sum(), rtol=1e-12)
    np.testing.assert_allclose(run(lambda a, b: nn.MSELoss("none")(a, b), x, t), (x - t) ** 2, rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_losses_and_gradients_stay_finite_at_extreme_logits(dtype):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4], [0.0, 0.0, 0.0]], dtype)
    labels = np.array([1, 2, 0])

    def build(z, y):
        ce = nn.cross_entropy(z, y, "none")
        return [ce] + dlc.grad(dlc.sum(ce), [z])

    ce, g = run(build, logits, labels)
    np.testing.assert_allclose(ce, [2e4, 0.0, np.log(3)], rtol=1e-6)
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g[0], [1.0, -1.0, 0.0], atol=1e-6)

    x = np.array([1e4, -1e4, 1e4, -1e4, 0.0], dtype)
    t = np.array([1.0, 0.0, 0.0, 1.0, 1.0], dtype)

    def bce(x, t):
        loss = nn.binary_cross_entropy_with_logits(x, t, "none")
        return [loss] + dlc.grad(dlc.sum(loss), [x])

    loss, gx = run(bce, x, t)
    np.testing.assert_allclose(loss, [0.0, 0.0, 1e4, 1e4, np.log(2)], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gx, [0.0, 0.0, 1.0, -1.0, -0.5], atol=1e-6)


@pytest.mark.parametrize("loss", [
    lambda z, y: nn.cross_entropy(z, y, label_smoothing=0.2),
    lambda z, y: nn.binary_cross_entropy_with_logits(z, dlc.cast(dlc.one_hot(y, 4), "float64"), pos_weight=1.5),
    lambda z, y: nn.mse_loss(dlc.tanh(z), dlc.cast(dlc.one_hot(y, 4), "float64"), "sum"),
])
def test_loss_gradients_match_central_differences(loss, rng):
    check_grad(loss, [rng.normal(size=(3, 4)), rng.integers(0, 4, 3)])


def test_loss_errors_name_the_problem():
    z = dlc.input("z", ("B", 5))
    with pytest.raises(dlc.DTypeError, match="labels must be int32 or int64"):
        nn.cross_entropy(z, dlc.input("y", ("B",)))
    with pytest.raises(dlc.ShapeError, match=r"scores \(B, 5\) and labels \(B, 2\)"):
        nn.cross_entropy(z, dlc.input("y", ("B", 2), "int64"))
    with pytest.raises(dlc.ShapeError, match=r"input \(B, 5\) and target \(B, 4\)"):
        nn.mse_loss(z, dlc.input("t", ("B", 4)))
    with pytest.raises(ValueError, match="reduction must be one of"):
        nn.l1_loss(z, z, reduction="average")
    with pytest.raises(ValueError, match="reduction must be one of"):
        nn.CrossEntropyLoss(reduction="avg")
