"""Every op's shape rule validates its attributes: bad values give ShapeError/DTypeError, never a crash.

The catalog below holds one node of every op that has attributes, built by
the DSL; each scalar attribute (ints, bools, floats, dtype names, and the
ints inside tuples) is replaced by bad values and the op rebuilt. A decoded
artifact goes through the same rules, so its bad attributes are refused too.
"""


import numpy as np
import pytest
from artifact_edit import reseal

import dlc
from dlc import distributed as D
from dlc.errors import ArtifactError, DTypeError, ShapeError
from dlc.graph import topo_order
from dlc.ops import ELEMENTWISE, OPS, SOURCE, apply

BAD_INTS = (-1, -3, 2 ** 40, -(2 ** 70), True, 1.5, "x y")  # "x" alone is a valid symbolic dim
BAD_BOOLS = (1, 0, "x", None)
BAD_FLOATS = ("x", None, True)
BAD_DTYPES = ("int8", "x", 3)

# Bad for most attributes, but meaningful here (numpy semantics): not tried.
MEANINGFUL = {
    ("reshape", "shape"): {-1},                    # one inferred dim
    ("slice", "begin"): {-1, -3, 2 ** 40}, ("slice", "end"): {-1, -3, 2 ** 40},   # numpy slices clamp
    ("slice", "step"): {-1, -3, 2 ** 40},                                          # and step backwards
    ("slice_grad", "begin"): {-1, -3, 2 ** 40}, ("slice_grad", "end"): {-1, -3, 2 ** 40},
    ("one_hot", "ignore_index"): {-1, -3, 2 ** 40},   # any int may be the ignored label
    ("random_uniform", "seed"): {2 ** 40}, ("random_normal", "seed"): {2 ** 40},
    ("random_bernoulli", "seed"): {2 ** 40},
    ("broadcast", "root"): {2 ** 40}, ("reduce", "root"): {2 ** 40},   # a root past the last rank: MPI's error
}


def _catalog() -> dict:
    """op name -> one node of that op, from a graph that uses every op with attributes."""
    x = dlc.input("x", (2, 4, 6, 6), "float64")
    w = dlc.param(np.ones((4, 2, 3, 3)), name="w", dtype="float64")
    wt = dlc.param(np.ones((4, 2, 3, 3)), name="wt", dtype="float64")
    ids = dlc.input("ids", (3,), "int64")
    seq = dlc.input("seq", (5, 2), "float64")
    v = dlc.input("v", ("B", 3), "float64")
    step = dlc.input("step", (), "int64")
    y = dlc.conv2d(x, w, stride=2, padding=1, dilation=1, groups=2)
    y = y + dlc.conv_transpose2d(y, wt, stride=2, padding=1, output_padding=1, groups=2)[:, :, :3, :3]
    pooled = [dlc.max_pool2d(x, 3, 2, 1), dlc.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
              dlc.adaptive_avg_pool2d(x, 4)]
    flat = dlc.reshape(x, (2, -1))
    parts = [dlc.sum(dlc.transpose(flat, (1, 0))[1:, ::2] ** 2), dlc.sum(dlc.broadcast_to(flat[:1], (3, 144))),
             dlc.sum(dlc.concat([flat, flat], 1)), dlc.sum(dlc.pad(flat, ((1, 0), (0, 2)), value=-1.0)),
             dlc.sum(dlc.take(flat, ids, 1)), dlc.sum(dlc.prod(flat[:, :3], axis=1)), dlc.max(flat), dlc.min(flat),
             dlc.sum(dlc.leaky_relu(flat, 0.2) + dlc.elu(flat, 0.5) + dlc.clip(flat, -1.0, 1.0))]
    loss = sum(dlc.sum(p) for p in pooled) + dlc.sum(y * y) + sum(parts)
    _, ys = dlc.scan(lambda c, s: (c + s, c * 2.0), dlc.constant(np.zeros(2), "float64"), seq)
    extras = [dlc.argmax(flat, axis=1), dlc.argmin(flat, axis=0), dlc.mean(v), dlc.cast(ids, "float32"),
              dlc.one_hot(ids, 5, ignore_index=-100), dlc.random_uniform((2, 3), 1, step, -1.0, 2.0),
              dlc.random_normal((2, 3), 2, step, 0.5, 2.0), dlc.random_bernoulli((2, 3), 0.3, 3, step), ys,
              # collectives, in this process's world of one rank
              D.all_reduce(flat, "sum"), D.broadcast(flat, 0), D.reduce(flat, 0), D.all_gather(flat),
              D.reduce_scatter(flat), *D.average_gradients([flat, flat * 2.0], bucket_bytes=8)]
    att = dlc.scaled_dot_product_attention(seq[None], seq[None], seq[None], mask=seq[:, :1] > 0, causal=True)
    cross = dlc.scaled_dot_product_attention(seq[None], seq[None, :3], seq[None, :3])   # 3 keys: two grad ops
    loss = loss + dlc.sum(att) + dlc.sum(cross) + dlc.sum(dlc.layer_norm(seq, 2) * seq)
    grads = dlc.grad(loss + dlc.sum(ys), [x, w, wt, seq])
    # made by the cpu target's layout pass, never by the DSL
    nhwc = apply("conv2d_nhwc", (dlc.transpose(x, (0, 2, 3, 1)).node, w.node), stride=(2, 2),
                 padding=((1, 1), (1, 1)), dilation=(1, 1), groups=2)
    found = {}
    for n in topo_order([t.node for t in [loss, *extras, *grads]] + [nhwc]):
        found.setdefault(n.op, n)
    return found


CATALOG = _catalog()
NO_ATTRS = {name for name, op in OPS.items() if op.kind == ELEMENTWISE} - {"leaky_relu", "elu", "clip", "cast"}
NO_ATTRS |= {"matmul"} | {name for name, op in OPS.items() if op.kind == SOURCE and name != "size"}


def test_the_catalog_has_every_op_with_attributes():
    assert set(OPS) - NO_ATTRS <= set(CATALOG), sorted(set(OPS) - NO_ATTRS - set(CATALOG))


def _mutations(node):
    """(attribute, description, new value) for every scalar in the node's attributes, each replaced by bad values."""
    for key, value in node.attrs:
        for path, leaf in _leaves(value):
            meaningful = MEANINGFUL.get((node.op, key), set())
            if isinstance(leaf, bool):
                bad = BAD_BOOLS
            elif isinstance(leaf, int):
                bad = [b for b in BAD_INTS if not (type(b) is int and b in meaningful)]
            elif isinstance(leaf, float):
                bad = BAD_FLOATS
            elif key == "dtype":
                bad = BAD_DTYPES
            else:
                continue
            for b in bad:
                yield key, f"{key}{''.join(f'[{i}]' for i in path)}={b!r}", _replace(value, path, b)


def _leaves(value, path=()):
    if isinstance(value, tuple):
        for i, v in enumerate(value):
            yield from _leaves(v, path + (i,))
    else:
        yield path, value


def _replace(value, path, new):
    if not path:
        return new
    return tuple(_replace(v, path[1:], new) if i == path[0] else v for i, v in enumerate(value))


CASES = [pytest.param(op, key, new, id=f"{op}-{what}") for op, node in sorted(CATALOG.items())
         for key, what, new in _mutations(node)]


@pytest.mark.parametrize("op, key, new", CASES)
def test_a_bad_attribute_is_a_shape_or_dtype_error(op, key, new):
    node = CATALOG[op]
    attrs = dict(node.attrs)
    apply(op, node.inputs, **attrs)  # the original builds
    attrs[key] = new
    with pytest.raises((ShapeError, DTypeError), match=op):
        apply(op, node.inputs, **attrs)


def test_every_op_with_integer_attributes_is_tried():
    tried = {p.values[0] for p in CASES}
    with_ints = {op for op, n in CATALOG.items() if any(isinstance(leaf, int) for _, v in n.attrs for _, leaf in
                                                        _leaves(v))}
    assert with_ints <= tried and len(with_ints) >= 25, sorted(with_ints - tried)


@pytest.mark.parametrize("build", [
    lambda x: dlc.conv2d(x, dlc.input("w", (2, 2, 7, 7)), padding=0),          # kernel larger than padded input
    lambda x: dlc.conv2d(x, dlc.input("w", (3, 2, 3, 3)), groups=2),           # groups must divide C_out
    lambda x: dlc.conv2d(x, dlc.input("w", (2, 2, 3, 3)), dilation=3),         # dilated kernel 7 > 5
    lambda x: dlc.max_pool2d(x, 3, padding=2),                                 # padding over half the kernel
    lambda x: dlc.avg_pool2d(x, 6),
    lambda x: dlc.adaptive_avg_pool2d(x, 6),
    lambda x: dlc.reshape(x, (-1, -1)),
    lambda x: dlc.transpose(x, (0, 1, 2, 2)),
    lambda x: dlc.pad(x, ((0, 0),) * 3),
])
def test_inconsistent_attributes_are_shape_errors_at_the_users_line(build):
    x = dlc.input("x", (1, 2, 5, 5))
    with pytest.raises(ShapeError, match="test_ops_attrs.py"):
        build(x)


# ----------------------------------------------------------------------------
# a crafted artifact: the same rules refuse its attributes


def _tiny_cnn():
    x = dlc.input("x", (1, 1, 6, 6))
    w = dlc.param(np.ones((2, 1, 3, 3), np.float32), name="w")
    y = dlc.max_pool2d(dlc.conv2d(x, w, stride=1, padding=1, dilation=1), 2)
    return dlc.compile(dlc.sum(y), inputs=[x], target="reference")


def _edit_graph(src, dst, op, key, value):
    """Copy an artifact with attribute `key` of every `op` node set to `value`, re-hashed and resealed."""
    edited = []

    def edit(graph):
        for node in graph["graph"]["nodes"] if "graph" in graph else graph["nodes"]:
            if node["op"] == op:
                node["attrs"] = [[k, value if k == key else v] for k, v in node["attrs"]]
                edited.append(node)

    reseal(src, dst, graph=edit)
    assert edited


@pytest.mark.parametrize("op, key, value", [
    ("conv2d", "dilation", [-1, -1]), ("conv2d", "stride", [2 ** 40, 1]), ("conv2d", "padding", [[-3, -3], [0, 0]]),
    ("conv2d", "groups", 0), ("conv2d", "dilation", [True, 1]), ("conv2d", "stride", [0, 1]),
    ("max_pool2d", "stride", [2 ** 40, 2 ** 40]), ("max_pool2d", "kernel", [-1, 2]),
    ("max_pool2d", "padding", [[-3, 0], [0, 0]]), ("sum", "axes", [7]),
    ("conv2d", "padding", [[2 ** 30, 2 ** 30], [2 ** 30, 2 ** 30]]),
])
def test_a_decoded_graph_with_bad_attributes_is_refused(tmp_path, op, key, value):
    path = tmp_path / "good.dlc"
    dlc.export(_tiny_cnn(), path)
    assert dlc.load(path, verify=True) is not None  # the unedited artifact loads
    bad = tmp_path / "bad.dlc"
    _edit_graph(path, bad, op, key, value)
    # refused by the decoder's type checks or by the op's own shape rule: either way naming the op
    with pytest.raises(ArtifactError, match=rf"\b{op}\b"):
        dlc.load(bad)


@pytest.mark.parametrize("build", [
    lambda x: dlc.conv2d(x, dlc.input("w", (2, 2, 3, 3)), padding=2 ** 30),
    lambda x: dlc.pad(x, ((0, 0), (0, 0), (2 ** 30, 0), (2 ** 30, 0))),
    lambda x: dlc.broadcast_to(dlc.reshape(x, (1, 50)), (2 ** 31 - 1, 2 ** 31 - 1, 50)),
])
def test_results_too_large_to_index_are_refused(build):
    """Sizes whose byte counts would overflow int64 (and so under-allocate a buffer) never reach a backend."""
    with pytest.raises(ShapeError, match="elements"):
        build(dlc.input("x", (1, 2, 5, 5)))
