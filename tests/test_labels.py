"""Labels and indices are checked at run time on every target: one_hot, cross_entropy, nll_loss and take.

Each target (the numpy reference, the generated Numba code, the CUDA kernels
in the C emulator) raises IndexRangeError naming the op, the bad value, the
valid range and the user's line; ignore_index rows count for nothing.
"""

import shutil

import numpy as np
import pytest

import dlc
from dlc import nn
from dlc.errors import IndexRangeError

TARGETS = [
    pytest.param({"target": "reference"}, id="reference"),
    pytest.param({"target": "cpu"}, id="cpu"),
    pytest.param({"target": "cuda", "emulate": True}, id="emulator",
                 marks=pytest.mark.skipif(shutil.which("g++") is None, reason="the CUDA emulator needs g++")),
]


def _log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


LOSSES = {
    "cross_entropy": lambda z, y: nn.cross_entropy(z, y),
    "nll_loss": lambda z, y: nn.nll_loss(dlc.log_softmax(z, axis=1), y),
    "one_hot": lambda z, y: dlc.sum(dlc.one_hot(y, 3) * z) / 4.0 + np.log(3.0),
}


@pytest.mark.parametrize("options", TARGETS)
@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("labels, bad", [([0, 1, 3, 2], 3), ([3, 3, 3, 3], 3), ([0, -1, 1, 2], -1),
                                         ([0, 1, 2, 2 ** 40], 2 ** 40)])
def test_out_of_range_labels_raise_naming_op_value_range_and_line(options, loss, labels, bad):
    z, y = dlc.input("z", (4, 3)), dlc.input("y", (4,), "int64")
    fn = dlc.compile(LOSSES[loss](z, y), inputs=[z, y], **options)
    zeros = np.zeros((4, 3), np.float32)
    with pytest.raises(IndexRangeError, match=rf"one_hot at .*test_labels.py:\d+: label {bad} is out of range "
                                              r"\[0, 3\) for 3 classes") as info:
        fn(zeros, np.array(labels))
    assert isinstance(info.value, IndexError) and info.value.value == bad
    # the function still works afterwards (a CUDA status word is cleared)
    np.testing.assert_allclose(fn(zeros, np.array([0, 1, 2, 1])), np.log(3.0), rtol=1e-6)


@pytest.mark.parametrize("options", TARGETS)
def test_ignore_index_rows_count_for_nothing(options, rng):
    logits = rng.normal(size=(5, 4)).astype(np.float32)
    labels = np.array([2, -100, 0, 3, -100])
    z, y = dlc.input("z", (5, 4)), dlc.input("y", (5,), "int64")
    outs = [nn.cross_entropy(z, y), nn.cross_entropy(z, y, reduction="none"),
            nn.cross_entropy(z, y, label_smoothing=0.2), nn.nll_loss(dlc.log_softmax(z, axis=1), y),
            dlc.one_hot(y, 4, ignore_index=-100)]
    got = dlc.compile(outs, inputs=[z, y], **options)(logits, labels)
    lp = _log_softmax(logits.astype(np.float64))
    kept = labels != -100
    per_row = np.where(kept, -lp[np.arange(5), np.where(kept, labels, 0)], 0.0)
    smooth = np.where(kept, 0.8 * per_row - 0.2 * lp.mean(axis=1), 0.0)
    np.testing.assert_allclose(got[0], per_row.sum() / kept.sum(), rtol=1e-5)
    np.testing.assert_allclose(got[1], per_row, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[2], smooth.sum() / kept.sum(), rtol=1e-5)
    np.testing.assert_allclose(got[3], per_row.sum() / kept.sum(), rtol=1e-5)
    np.testing.assert_array_equal(got[4], np.where(kept[:, None], np.eye(4)[np.where(kept, labels, 0)], 0))
    ignore_3 = dlc.compile(nn.cross_entropy(z, y, ignore_index=3), inputs=[z, y], **options)
    with pytest.raises(IndexRangeError, match="label -100 is out of range"):  # with ignore_index=3, -100 is bad
        ignore_3(logits, labels)
    ok = np.array([2, 3, 0, 3, 1])  # label 3 ignored
    kept3 = ok != 3
    want = -lp[np.arange(5), ok][kept3].sum() / kept3.sum()
    np.testing.assert_allclose(ignore_3(logits, ok), want, rtol=1e-5)


def test_ignore_index_matches_pytorch(rng):
    torch = pytest.importorskip("torch")
    logits = rng.normal(size=(6, 5))
    labels = np.array([4, -100, 0, 2, -100, 1])
    z, y = dlc.input("z", (6, 5), "float64"), dlc.input("y", (6,), "int64")
    loss = nn.cross_entropy(z, y, label_smoothing=0.1)
    got, gz = dlc.compile([loss, dlc.grad(loss, z)], inputs=[z, y], target="cpu")(logits, labels)
    tz = torch.tensor(logits, requires_grad=True)
    want = torch.nn.functional.cross_entropy(tz, torch.tensor(labels), label_smoothing=0.1)
    want.backward()
    np.testing.assert_allclose(got, want.item(), rtol=1e-10)
    np.testing.assert_allclose(gz, tz.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_ignore_index_none_checks_every_label_and_bad_arguments_are_refused():
    z, y = dlc.input("z", (2, 3)), dlc.input("y", (2,), "int64")
    fn = dlc.compile(nn.cross_entropy(z, y, ignore_index=None), inputs=[z, y], target="cpu")
    with pytest.raises(IndexRangeError, match="label -100"):
        fn(np.zeros((2, 3), np.float32), np.array([0, -100]))
    with pytest.raises(TypeError, match="ignore_index"):
        nn.cross_entropy(z, y, ignore_index=1.5)
    with pytest.raises(dlc.ShapeError, match="depth must be an int >= 1"):
        dlc.one_hot(y, 0)
    with pytest.raises(dlc.DTypeError, match="labels must be int32 or int64"):
        dlc.one_hot(z, 3)
    assert nn.CrossEntropyLoss(ignore_index=0).ignore_index == 0


@pytest.mark.parametrize("options", TARGETS)
@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_take_wraps_minus_n_to_minus_1_and_refuses_the_rest(options, dtype):
    table = np.arange(12, dtype=np.float32).reshape(4, 3)
    t, i = dlc.input("t", (4, 3)), dlc.input("i", (5,), dtype)
    gathered = dlc.take(t, i)
    fn = dlc.compile([gathered, dlc.grad(dlc.sum(gathered * gathered), t)], inputs=[t, i], **options)
    ids = np.array([0, -1, -4, 3, 2], dtype=dtype)
    out, grad = fn(table, ids)
    np.testing.assert_array_equal(out, table[[0, 3, 0, 3, 2]])  # numpy's rule, the same on every target
    np.testing.assert_allclose(grad, 2 * np.array([2, 0, 1, 2])[:, None] * table)
    for bad in (4, -5, 2 ** 31 - 1 if dtype == "int32" else 2 ** 40):
        ids = np.array([0, 1, bad, 2, 3], dtype=dtype)
        with pytest.raises(IndexRangeError, match=rf"take at .*test_labels.py:\d+: index {bad} is out of range "
                                                  r"\[-4, 4\) for an axis of size 4"):
            fn(table, ids)
    np.testing.assert_array_equal(fn(table, np.array([3, 2, 1, 0, -2], dtype=dtype))[0], table[[3, 2, 1, 0, 2]])


@pytest.mark.parametrize("options", TARGETS[1:])
def test_a_bad_take_writes_nothing_into_a_parameter_updated_in_place(options):
    """The check runs before the kernel writes: an update by a failing take leaves the parameter as it was."""
    w = dlc.param(np.arange(6, dtype=np.float32).reshape(3, 2), name="w")
    i = dlc.input("i", (3,), "int64")
    fn = dlc.compile(dlc.sum(w), inputs=[i], updates={w: dlc.take(w, i)}, **options)
    before = fn.store["w"].copy()
    with pytest.raises(IndexRangeError):
        fn(np.array([2, 1, 7]))
    np.testing.assert_array_equal(fn.store["w"], before)


@pytest.mark.parametrize("options", TARGETS)
def test_labels_checked_inside_a_scan_body(options):
    seq = dlc.input("seq", (3, 2), "int64")
    table = dlc.input("table", (4, 2))

    def body(carry, labels):
        return carry + dlc.sum(dlc.one_hot(labels, 4), axis=0) + dlc.sum(dlc.take(table, labels), axis=0)[0], labels

    total, _ = dlc.scan(body, dlc.constant(np.zeros(4, np.float32)), seq)
    fn = dlc.compile(total, inputs=[seq, table], **options)
    tab = np.ones((4, 2), np.float32)
    np.testing.assert_allclose(fn(np.array([[0, 1], [1, 3], [3, 3]]), tab), [7, 8, 6, 9])
    with pytest.raises(IndexRangeError, match=r"(one_hot|take) at .*test_labels.py:\d+: (label|index) 4 is out of"):
        fn(np.array([[0, 1], [1, 4], [3, 3]]), tab)  # bad for both ops: whichever kernel runs first reports
    with pytest.raises(IndexRangeError, match=r"one_hot at .*test_labels.py:\d+: label -1 is out of range \[0, 4\)"):
        fn(np.array([[0, 1], [1, 3], [-1, 3]]), tab)  # -1 is a valid index for take, not a label
