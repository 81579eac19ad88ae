"""nn.fit as a newcomer uses it: verbose levels, validation_data, and progress that leaves compilation out."""

from __future__ import annotations

import re

import numpy as np
import pytest

import dlc
from dlc import nn, optim


def make_step(model, target="reference"):
    x, y = dlc.input("x", ("B", 4)), dlc.input("y", ("B",), "int64")

    def loss_fn(x, y):
        logits = model(x)
        return {"loss": nn.cross_entropy(logits, y), "acc": nn.accuracy(logits, y)}

    return nn.compile_step(loss_fn, [x, y], optim.Adam(model.parameters(), lr=0.05), modules=model, target=target)


def data(rng, n):
    X = rng.standard_normal((n, 4)).astype(np.float32)
    return X, (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0)


def test_validation_data_adds_eval_mode_metrics_and_changes_nothing(rng):
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
    step = make_step(model)
    X, Y = data(rng, 64)
    Xv, Yv = data(rng, 30)
    history = nn.fit(step, X, Y, epochs=3, batch_size=16, verbose=0, validation_data=(Xv, Yv))
    assert all({"loss", "acc", "val_loss", "val_acc"} <= set(h) for h in history)
    before = model.state_dict()
    scores = step.evaluate(Xv, Yv, batch_size=7)  # eval mode, no update: the same figures as fit's last record
    assert all(np.array_equal(v, model.state_dict()[k]) for k, v in before.items())
    assert scores["loss"] == pytest.approx(history[-1]["val_loss"], rel=1e-5)
    # against a hand-written evaluation of the same weights, dropout off
    logits = dlc.compile(model.eval()(dlc.input("x", ("B", 4))), store=model.store)(Xv)
    shifted = logits - logits.max(1, keepdims=True)
    ce = -(shifted[np.arange(30), Yv] - np.log(np.exp(shifted).sum(1))).mean()
    assert scores["loss"] == pytest.approx(ce, rel=1e-4)
    assert scores["acc"] == pytest.approx(np.mean(logits.argmax(1) == Yv))


def test_validation_data_needs_a_train_step():
    with pytest.raises(TypeError, match="validation_data needs a TrainStep"):
        nn.fit(lambda x: 1.0, np.zeros((4, 1)), validation_data=(np.zeros((2, 1)),))
    with pytest.raises(ValueError, match="verbose must be"):
        nn.fit(lambda x: 1.0, np.zeros((4, 1)), verbose=3)


def test_verbose_levels(rng, capsys):
    X, Y = data(rng, 32)
    step = make_step(nn.Linear(4, 3))
    lines = []
    nn.fit(step, X, Y, epochs=2, batch_size=8, verbose=2, log=lines.append)
    assert [line.split("  ")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert all(re.search(r"loss \d\.\d+\s+acc \d", line) for line in lines)
    assert capsys.readouterr().err == ""  # no bars at verbose=2
    nn.fit(step, X, Y, epochs=1, batch_size=8, verbose=0, log=lines.append)
    assert len(lines) == 2 and capsys.readouterr() == ("", "")


def test_bars_stay_with_the_epochs_metrics_and_say_compiling(rng, capsys):
    X, Y = data(rng, 32)
    step = make_step(nn.Linear(4, 3))
    nn.fit(step, X, Y, epochs=2, batch_size=8, validation_data=(X, Y))
    err = capsys.readouterr().err
    finals = [chunk.split("\r")[-1] for chunk in err.split("\n") if "4/4" in chunk]
    assert any("compiling…" in chunk for chunk in err.split("\r"))
    assert len([f for f in finals if re.match(r"epoch \d/2: 100%.*loss .*acc .*val_loss .*val_acc", f)]) == 2


def test_the_rate_leaves_out_the_compiling_first_call(capsys, monkeypatch):
    import tqdm.std

    clock = [1000.0]
    monkeypatch.setattr(tqdm.std, "time", lambda: clock[0])  # the bar's clock, moved by the steps below
    calls = []

    def step_with_a_slow_first_call(x):
        calls.append(1)
        clock[0] += 100.0 if len(calls) == 1 else 0.5  # the first call stands for compilation
        return 1.0

    nn.fit(step_with_a_slow_first_call, np.zeros((21, 1)), epochs=1, batch_size=1)
    final = [c.split("\r")[-1] for c in capsys.readouterr().err.split("\n") if "21/21" in c][-1]
    assert "00:10" in final, final  # 20 compiled steps of 0.5 s; with the first call it would say 01:50
    rate = float(re.search(r"([\d.]+)batch/s", final).group(1))
    assert rate == pytest.approx(2.0, rel=0.01), final  # counting the first call would give 21 / 110 s
