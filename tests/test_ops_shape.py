"""Shape ops: reshape, transpose, broadcast, indexing, concat/stack/split, pad, take, one_hot; and gradients."""

import numpy as np
import pytest
from helpers import check_grad, run
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, basic_indices

import dlc

SETTINGS = settings(max_examples=25, deadline=None)


def _data(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape)


# ----------------------------------------------------------------------------
# indexing


@SETTINGS
@given(data=st.data(), shape=array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5))
def test_basic_indexing_matches_numpy(data, shape):
    index = data.draw(basic_indices(shape, allow_newaxis=True, allow_ellipsis=True))
    x = _data(shape)
    out = run(lambda x: x[index], x)
    np.testing.assert_array_equal(out, x[index])


@settings(max_examples=10, deadline=None)
@given(data=st.data(), shape=array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
def test_indexing_gradient_scatters_into_zeros(data, shape):
    index = data.draw(basic_indices(shape, allow_newaxis=True, allow_ellipsis=True))
    check_grad(lambda x: x[index] * 3.0, [_data(shape)])


@pytest.mark.parametrize("index", [
    (slice(None, None, -1),), (slice(4, 0, -2),), (slice(-2, None),), (slice(None, -7, -1),),
    (slice(-1, -5, -1),), (slice(10, None, -3),), (slice(None, None, 3), -1), (-1, slice(1, None, 2)),
    (Ellipsis, None, 2), (None, Ellipsis), (slice(3, 1),), (Ellipsis,),
])
def test_steps_and_negative_indices(index):
    x = _data((6, 5))
    np.testing.assert_array_equal(run(lambda x: x[index], x), x[index])


def test_indexing_a_symbolic_batch():
    x = dlc.input("x", ("B", 4, 3), "float64")
    y = x[:, 1:3, -1]
    assert y.shape == ("B", 2)
    z = x[..., None, 0]
    assert z.shape == ("B", 4, 1)
    f = dlc.compile([y, z])
    data = _data((5, 4, 3))
    out = f(data)
    np.testing.assert_array_equal(out[0], data[:, 1:3, -1])
    np.testing.assert_array_equal(out[1], data[..., None, 0])


@pytest.mark.parametrize("index,error", [
    ((0, 0, 0), "too many indices"), (5, "out of range"), (-6, "out of range"), ((Ellipsis, Ellipsis), "single"),
    ([0, 1], "unsupported index"), (True, "bool"), (1.5, "unsupported index"),
])
def test_bad_indices_are_refused(index, error):
    x = dlc.input("x", (5, 3))
    with pytest.raises(IndexError, match=error):
        x[index]


def test_symbolic_dims_take_only_full_slices():
    x = dlc.input("x", ("B", 3))
    with pytest.raises(IndexError, match="symbolic dim 'B'"):
        x[1:]
    with pytest.raises(IndexError, match="symbolic dim 'B'"):
        x[0]


def test_tensor_index_gathers_rows():
    table = _data((5, 3))
    ids = np.array([[4, 0], [4, 2]])
    np.testing.assert_array_equal(run(lambda t, i: t[i], table, ids), table[ids])


# ----------------------------------------------------------------------------
# reshape, transpose, broadcast_to and friends


@SETTINGS
@given(shape=array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=4), data=st.data())
def test_reshape_with_minus_one(shape, data):
    size = int(np.prod(shape))
    divisors = [d for d in range(1, size + 1) if size % d == 0]
    d = data.draw(st.sampled_from(divisors))
    target = data.draw(st.permutations([d, -1]))
    x = _data(shape)
    np.testing.assert_array_equal(run(lambda x: dlc.reshape(x, tuple(target)), x), x.reshape(target))


def test_reshape_errors():
    x = dlc.input("x", (4, 6))
    with pytest.raises(dlc.ShapeError, match="at most one"):
        dlc.reshape(x, (-1, -1))
    with pytest.raises(dlc.ShapeError, match="cannot reshape"):
        dlc.reshape(x, (5, -1))
    with pytest.raises(dlc.ShapeError, match="cannot reshape"):
        dlc.reshape(x, (5, 5))


def test_reshape_with_symbolic_dims():
    x = dlc.input("x", ("T", "B", 6), "float64")
    merged = dlc.reshape(x, (-1, 6))
    assert merged.shape == ("B*T", 6)
    back = dlc.reshape(merged * 2.0, ("T", -1, 3))
    assert back.shape == ("T", "2*B", 3)
    f = dlc.compile([merged, back])
    for t, b in [(2, 3), (4, 1)]:
        data = _data((t, b, 6))
        out = f(data)
        np.testing.assert_array_equal(out[0], data.reshape(-1, 6))
        np.testing.assert_array_equal(out[1], (data * 2).reshape(t, -1, 3))
    with pytest.raises(dlc.ShapeError, match="cannot reshape"):
        dlc.reshape(x, (-1, 4))


@SETTINGS
@given(shape=array_shapes(min_dims=0, max_dims=4, max_side=4), data=st.data())
def test_transpose(shape, data):
    perm = data.draw(st.permutations(range(len(shape))))
    x = _data(shape)
    np.testing.assert_array_equal(run(lambda x: dlc.transpose(x, perm), x), np.transpose(x, perm))


def test_transpose_variants():
    x = _data((2, 3, 4))
    out = run(lambda x: [x.T, dlc.transpose(x, (-1, 0, 1)), dlc.swapaxes(x, 0, -1), x.transpose(1, 0, 2)], x)
    for got, want in zip(out, [x.T, np.transpose(x, (2, 0, 1)), np.swapaxes(x, 0, -1), x.transpose(1, 0, 2)]):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(dlc.ShapeError, match="not a permutation"):
        dlc.transpose(dlc.input("x", (2, 3)), (0, 0))


def test_broadcast_to_and_its_gradient(rng):
    x = rng.normal(size=(3, 1))
    np.testing.assert_array_equal(run(lambda x: dlc.broadcast_to(x, (2, 3, 4)), x), np.broadcast_to(x, (2, 3, 4)))
    check_grad(lambda x: dlc.broadcast_to(x, (2, 3, 4)), [x])
    with pytest.raises(dlc.ShapeError, match="cannot broadcast"):
        dlc.broadcast_to(dlc.input("y", (3, 2)), (3, 4))


def test_expand_squeeze_flatten():
    x = _data((2, 1, 3))
    out = run(lambda x: [dlc.expand_dims(x, -1), dlc.expand_dims(x, 0), dlc.squeeze(x), dlc.squeeze(x, 1),
                         dlc.flatten(x), dlc.flatten(x, 0)], x)
    want = [x[..., None], x[None], x.squeeze(), x.squeeze(1), x.reshape(2, -1), x.reshape(-1)]
    for got, w in zip(out, want):
        np.testing.assert_array_equal(got, w)
    with pytest.raises(dlc.ShapeError, match="cannot squeeze axis 0"):
        dlc.squeeze(dlc.input("y", (2, 1)), 0)


@pytest.mark.parametrize("build", [
    lambda x: dlc.reshape(x, (4, -1)), lambda x: dlc.transpose(x, (2, 0, 1)), lambda x: x[1:, ::-2, None],
    lambda x: dlc.squeeze(x[:, :1], 1), lambda x: dlc.flatten(x) * dlc.flatten(x),
])
def test_view_gradients(build, rng):
    check_grad(build, [rng.normal(size=(2, 3, 4))])


# ----------------------------------------------------------------------------
# concat, stack, split, pad


@SETTINGS
@given(shape=array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4), data=st.data())
def test_concat_stack_split(shape, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    sizes = data.draw(st.lists(st.integers(0, 3), min_size=1, max_size=3))
    parts = []
    for i, s in enumerate(sizes):
        part_shape = list(shape)
        part_shape[axis] = s
        parts.append(_data(part_shape, i))
    joined = np.concatenate(parts, axis=axis)
    out = run(lambda *xs: [dlc.concat(xs, axis), *dlc.split(dlc.concat(xs, axis), sizes, axis)], *parts)
    np.testing.assert_array_equal(out[0], joined)
    for got, want in zip(out[1:], parts):
        np.testing.assert_array_equal(got, want)
    same = [_data(shape, i) for i in range(3)]
    stack_axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
    np.testing.assert_array_equal(run(lambda *xs: dlc.stack(xs, stack_axis), *same), np.stack(same, stack_axis))


def test_split_into_equal_parts_and_errors():
    x = _data((6, 2))
    out = run(lambda x: dlc.split(x, 3), x)
    for got, want in zip(out, np.split(x, 3)):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(dlc.ShapeError, match="equal parts"):
        dlc.split(dlc.input("y", (5,)), 2)
    with pytest.raises(dlc.ShapeError, match="do not add up"):
        dlc.split(dlc.input("z", (5,)), [2, 2])


def test_concat_errors():
    a, b = dlc.input("a", (2, 3)), dlc.input("b", (2, 4))
    with pytest.raises(dlc.ShapeError, match="differ off that axis"):
        dlc.concat([a, b], 0)
    with pytest.raises(dlc.DTypeError, match="different dtypes"):
        dlc.concat([a, dlc.input("c", (2, 3), "int64")], 0)


def test_concat_stack_split_gradients(rng):
    a, b = rng.normal(size=(2, 3)), rng.normal(size=(2, 1))
    check_grad(lambda a, b: dlc.concat([a, b * b, a], axis=1), [a, b])
    check_grad(lambda a: dlc.stack([a, 2.0 * a], axis=-1), [a])
    check_grad(lambda a: dlc.split(a, [1, 2], axis=1)[1] * dlc.split(a, [1, 2], axis=1)[1], [a])


@pytest.mark.parametrize("pads,value", [(((1, 2), (0, 3)), 0.0), (((0, 0), (2, 0)), -1.5), (((3, 1), (1, 1)), 7.0)])
def test_pad(pads, value, rng):
    x = rng.normal(size=(2, 3))
    np.testing.assert_array_equal(run(lambda x: dlc.pad(x, pads, value), x),
                                  np.pad(x, pads, constant_values=value))
    check_grad(lambda x: dlc.pad(x, pads, value) ** 2, [x])


def test_pad_errors():
    x = dlc.input("x", (2, 3))
    with pytest.raises(dlc.ShapeError, match="one .before, after. pair per axis"):
        dlc.pad(x, ((1, 1),))
    with pytest.raises(dlc.ShapeError, match="negative"):
        dlc.pad(x, ((1, 1), (-1, 0)))


# ----------------------------------------------------------------------------
# take (embedding lookup) and one_hot


@SETTINGS
@given(shape=array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4),
       idx_shape=array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=4), data=st.data())
def test_take_matches_numpy(shape, idx_shape, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    d = shape[axis]
    idx = np.asarray(data.draw(st.lists(st.integers(-d, d - 1), min_size=int(np.prod(idx_shape)),
                                        max_size=int(np.prod(idx_shape))))).reshape(idx_shape).astype(np.int64)
    x = _data(shape)
    np.testing.assert_array_equal(run(lambda x, i: dlc.take(x, i, axis), x, idx), np.take(x, idx, axis=axis))


def test_take_gradient_adds_up_repeated_indices(rng):
    table = rng.normal(size=(5, 3))
    ids = np.array([[1, 4, 1], [1, 0, 4]])
    grads = check_grad(lambda t, i: dlc.take(t, i, 0), [table, ids])
    t, i = dlc.input("t", (5, 3), "float64"), dlc.input("i", (2, 3), "int64")
    g = dlc.compile(dlc.grad(dlc.sum(dlc.take(t, i, 0)), t), inputs=[t, i])(table, ids)
    np.testing.assert_array_equal(g[:, 0], [1, 3, 0, 0, 2])  # row 1 is read three times
    assert grads["x0"].shape == table.shape
    check_grad(lambda t, i: dlc.take(t, i, axis=1) ** 2, [table, np.array([2, 0, 2, -1])])


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_take_index_dtypes_and_errors(dtype):
    table = _data((4, 2))
    np.testing.assert_array_equal(run(dlc.take, table, np.array([3, 0], dtype=dtype)), table[[3, 0]])
    with pytest.raises(IndexError, match=r"index 4 is out of range \[-4, 4\) for an axis of size 4"):
        run(dlc.take, table, np.array([4], dtype=dtype))
    with pytest.raises(dlc.DTypeError, match="indices must be int32 or int64"):
        dlc.take(dlc.input("t", (4, 2)), dlc.input("f", (3,)))


def test_one_hot():
    labels = np.array([[0, 3], [2, 2]], dtype=np.int64)
    out = run(lambda i: dlc.one_hot(i, 4), labels)
    assert out.dtype == np.float32 and out.shape == (2, 2, 4)
    np.testing.assert_array_equal(out, np.eye(4, dtype=np.float32)[labels])
    with pytest.raises(IndexError, match=r"one_hot at .*: label 5 is out of range \[0, 3\)"):
        run(lambda i: dlc.one_hot(i, 3, "int32"), np.array([1, 5]))
    np.testing.assert_array_equal(run(lambda i: dlc.one_hot(i, 3, "int32", ignore_index=5), np.array([1, 5])),
                                  [[0, 1, 0], [0, 0, 0]])  # an ignored label gives a row of zeros


@pytest.mark.parametrize("build", [
    lambda x: dlc.expand_dims(x, 3), lambda x: dlc.expand_dims(x, -4), lambda x: dlc.transpose(x, (0, 2)),
    lambda x: dlc.swapaxes(x, 0, 2), lambda x: dlc.concat([x, x], 2), lambda x: dlc.stack([x, x], -4),
    lambda x: dlc.split(x, 1, axis=-3), lambda x: dlc.take(x, dlc.input("i", (2,), "int64"), 2),
])
def test_out_of_range_axes_are_errors_not_wrap_arounds(build):
    with pytest.raises(dlc.ShapeError, match=r"out of range for a tensor of shape \(2, 3\)"):
        build(dlc.input("x", (2, 3)))


def test_slice_gradient_places_the_seed_into_zeros():
    x = dlc.input("x", (5, 4), "float64")
    seed = dlc.input("seed", (2, 3), "float64")
    g = dlc.compile(dlc.grad(x[3:0:-2, 1:], x, seed=seed), inputs=[x, seed])
    s = np.arange(1.0, 7.0).reshape(2, 3)
    want = np.zeros((5, 4))
    want[3:0:-2, 1:] = s
    np.testing.assert_array_equal(g(np.zeros((5, 4)), s), want)


def test_tensor_methods_take_shapes_either_way():
    x = _data((2, 3, 4))
    out = run(lambda x: [x.reshape(4, 6), x.reshape((4, 6)), x.transpose(), x.transpose(2, 0, 1),
                         x.transpose([2, 0, 1])], x)
    for got, want in zip(out, [x.reshape(4, 6), x.reshape(4, 6), x.T, x.transpose(2, 0, 1), x.transpose(2, 0, 1)]):
        np.testing.assert_array_equal(got, want)
