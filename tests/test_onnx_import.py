"""dlc.onnx: importing models, symbolic dims, folded shape arithmetic, fine-tuning, the CLI, and bad input."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="dlc.onnx needs the onnx package (pip install 'dlc[onnx]')")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import dlc  # noqa: E402
import dlc.onnx as donnx  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RNG = np.random.default_rng(0)


def make_model(nodes, inputs, outputs, initializers=(), opset=17, name="g"):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def mlp_model(batch="batch"):
    """x (batch, 4) -> Gemm -> Relu -> flatten-by-shape-arithmetic -> MatMul -> (batch, 3)."""
    w1 = numpy_helper.from_array(RNG.normal(size=(5, 4)).astype(np.float32), "fc1.weight")
    b1 = numpy_helper.from_array(RNG.normal(size=(5,)).astype(np.float32), "fc1.bias")
    w2 = numpy_helper.from_array(RNG.normal(size=(5, 3)).astype(np.float32), "fc2.weight")
    zero = numpy_helper.from_array(np.array([0], np.int64), "zero")
    minus1 = numpy_helper.from_array(np.array([-1], np.int64), "minus1")
    nodes = [
        helper.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h"], transB=1, name="fc1"),
        helper.make_node("Relu", ["h"], ["r"]),
        # the flatten pattern exporters write: Reshape(r, Concat(Unsqueeze(Gather(Shape(r), 0)), [-1]))
        helper.make_node("Shape", ["r"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["b"], axis=0),
        helper.make_node("Concat", ["b", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["r", "target"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc2.weight"], ["y"], name="fc2"),
    ]
    return make_model(nodes, [f32("x", [batch, 4])], [f32("y", [batch, 3])], [w1, b1, w2, zero, minus1])


def mlp_numpy(model, x):
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    h = np.maximum(x @ init["fc1.weight"].T + init["fc1.bias"], 0)
    return h @ init["fc2.weight"]


# ----------------------------------------------------------------------------
# importing


def test_symbolic_batch_and_folded_shape_arithmetic():
    model = mlp_model()
    fn = donnx.load_model(model)
    assert fn.inputs[0].shape == ("batch", 4)
    # Shape/Gather/Concat were folded at import: the compiled graph holds no gather (take) and one reshape
    assert "take" not in fn.graph.op_counts()
    for b in (1, 5):
        x = RNG.normal(size=(b, 4)).astype(np.float32)
        np.testing.assert_allclose(fn(x), mlp_numpy(model, x), rtol=1e-5, atol=1e-5)


def test_unnamed_dims_and_odd_names_become_identifiers():
    nodes = [helper.make_node("Relu", ["input.1"], ["0"])]
    model = make_model(nodes, [f32("input.1", [None, 3])], [f32("0", [None, 3])])
    fn = donnx.load_model(model)
    assert fn.signature.names == ["input_1"]
    x = np.array([[-1, 2, -3]], np.float32)
    np.testing.assert_array_equal(fn(input_1=x), np.maximum(x, 0))


def test_to_module_fine_tunes_initializers():
    model = mlp_model()
    module = donnx.to_module(model)
    assert sorted(k for k, _ in module.named_parameters()) == ["fc1_bias", "fc1_weight", "fc2_weight"]
    x = dlc.input("x", ("B", 4))
    target = dlc.input("t", ("B", 3))
    loss = dlc.mean(dlc.square(module(x) - target))
    opt = dlc.optim.SGD(module.parameters(), lr=0.01, store=module.store)
    step = dlc.compile(loss, inputs=[x, target], updates=opt.updates(loss), store=module.store)
    xs = RNG.normal(size=(16, 4)).astype(np.float32)
    ts = RNG.normal(size=(16, 3)).astype(np.float32)
    losses = [float(step(xs, ts)) for _ in range(20)]
    assert losses[-1] < losses[0]
    # the updated weights are what the module holds
    assert not np.allclose(module.state_dict()["fc2_weight"], numpy_helper.to_array(model.graph.initializer[2]))


def test_batchnorm_statistics_are_not_trainable():
    c = 2
    inits = [numpy_helper.from_array(np.full(c, v, np.float32), n)
             for v, n in ((1.0, "scale"), (0.0, "bias"), (0.5, "mean"), (2.0, "var"))]
    node = helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["y"], epsilon=0.0)
    module = donnx.to_module(make_model([node], [f32("x", [1, c, 2, 2])], [f32("y", [1, c, 2, 2])], inits))
    assert sorted(k for k, _ in module.named_parameters()) == ["bias", "scale"]
    assert sorted(k for k, _ in module.named_buffers()) == ["mean", "var"]


@pytest.mark.parametrize("target", ["reference", "cpu"])
def test_lstm_onto_scan_matches_onnx_reference(target):
    from onnx.reference import ReferenceEvaluator

    T, B, F, H = 4, 2, 3, 5
    w = numpy_helper.from_array(RNG.normal(size=(2, 4 * H, F)).astype(np.float32) * 0.5, "W")
    r = numpy_helper.from_array(RNG.normal(size=(2, 4 * H, H)).astype(np.float32) * 0.5, "R")
    b = numpy_helper.from_array(RNG.normal(size=(2, 8 * H)).astype(np.float32) * 0.5, "B")
    node = helper.make_node("LSTM", ["x", "W", "R", "B"], ["y", "yh", "yc"], hidden_size=H,
                            direction="bidirectional")
    model = make_model([node], [f32("x", [T, B, F])], [f32("y", [T, 2, B, H]), f32("yh", [2, B, H]),
                                                         f32("yc", [2, B, H])], [w, r, b], opset=14)
    x = RNG.normal(size=(T, B, F)).astype(np.float32)
    got = donnx.load_model(model, target=target)(x)
    want = ReferenceEvaluator(model).run(None, {"x": x})
    for g, e in zip(got, want):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("target", ["reference", "cpu"])
@pytest.mark.parametrize("op, shape, attrs", [
    ("MaxPool", [1, 2, 300], dict(kernel_shape=[40], strides=[7], dilations=[3], pads=[20, 20])),
    ("AveragePool", [1, 2, 9, 10, 8], dict(kernel_shape=[3, 4, 3], strides=[2, 1, 2], pads=[1, 2, 1, 1, 1, 0],
                                           ceil_mode=1)),
    ("AveragePool", [2, 1, 30, 12], dict(kernel_shape=[9, 5], dilations=[2, 1], pads=[4, 2, 4, 2],
                                         count_include_pad=1)),
])
def test_pools_with_many_taps_match_onnx_reference(op, shape, attrs, target):
    """Windows past MAX_TAPS taps are gathered axis by axis (a long tap chain compiled for minutes on cpu)."""
    from onnx.reference import ReferenceEvaluator

    from dlc.onnx.ops.nn import MAX_TAPS

    assert np.prod(attrs["kernel_shape"]) > MAX_TAPS
    x = RNG.normal(size=shape).astype(np.float32)
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    (want,) = ReferenceEvaluator(make_model([node], [f32("x", shape)], [f32("y", None)], opset=19)).run(None,
                                                                                                      {"x": x})
    model = make_model([node], [f32("x", shape)], [f32("y", list(want.shape))], opset=19)
    np.testing.assert_allclose(donnx.load_model(model, target=target)(x), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("equation, shapes", [
    ("...ij,...jk->...ik", [(2, 3, 4, 5), (2, 3, 5, 2)]), ("ii", [(4, 4)]), ("bii->bi", [(3, 4, 4)]),
    ("i...i->...", [(3, 2, 5, 3)]), ("...ii,...i", [(2, 3, 3), (2, 3)]), ("ij...", [(2, 3, 4)]),
])
def test_einsum_ellipsis_and_diagonals_match_numpy(equation, shapes):
    xs = [RNG.normal(size=s).astype(np.float32) for s in shapes]
    want = np.einsum(equation, *xs)
    names = [f"x{k}" for k in range(len(xs))]
    node = helper.make_node("Einsum", names, ["y"], equation=equation)
    model = make_model([node], [f32(nm, list(x.shape)) for nm, x in zip(names, xs)], [f32("y", list(want.shape))],
                       opset=12)
    np.testing.assert_allclose(donnx.load_model(model)(*xs), want, rtol=1e-5, atol=1e-5)


MAX_POOL_INDEX_CASES = [
    ([2, 3, 7, 6], dict(kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 1, 1], dilations=[1, 2], ceil_mode=1)),
    ([2, 3, 7, 6], dict(kernel_shape=[2, 3], strides=[2, 2], storage_order=1)),
    ([1, 2, 9], dict(kernel_shape=[4], strides=[3], pads=[2, 2])),
    ([1, 2, 4, 5, 3], dict(kernel_shape=[2, 2, 2], strides=[1, 2, 1])),
]


@pytest.mark.parametrize("shape, attrs, target", [(s, a, "reference") for s, a in MAX_POOL_INDEX_CASES]
                         + [(s, a, "cpu") for s, a in MAX_POOL_INDEX_CASES[:2]])
def test_max_pool_indices_match_onnx_reference(shape, attrs, target):
    from onnx.reference import ReferenceEvaluator

    x = RNG.permutation(np.prod(shape)).reshape(shape).astype(np.float32)   # distinct values: one argmax each
    node = helper.make_node("MaxPool", ["x"], ["y", "z"], **attrs)
    outs = [f32("y", None), helper.make_tensor_value_info("z", TensorProto.INT64, None)]
    want = ReferenceEvaluator(make_model([node], [f32("x", shape)], outs, opset=19)).run(None, {"x": x})
    outs = [f32("y", list(want[0].shape)), helper.make_tensor_value_info("z", TensorProto.INT64, list(want[1].shape))]
    got = donnx.load_model(make_model([node], [f32("x", shape)], outs, opset=19), target=target)(x)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("shape, target", [([4, 3], "reference"), ([2, 3, 4, 5], "reference"), ([2, 3, 4, 5], "cpu")])
def test_batch_norm_training_mode_matches_onnx_reference(shape, target):
    from onnx.reference import ReferenceEvaluator

    c = shape[1]
    inits = [numpy_helper.from_array(RNG.normal(size=c).astype(np.float32), "scale"),
             numpy_helper.from_array(RNG.normal(size=c).astype(np.float32), "bias"),
             numpy_helper.from_array(RNG.normal(size=c).astype(np.float32), "mean"),
             numpy_helper.from_array(RNG.uniform(0.5, 2, size=c).astype(np.float32), "var")]
    node = helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["y", "rm", "rv"],
                            training_mode=1, momentum=0.8, epsilon=1e-3)
    model = make_model([node], [f32("x", shape)], [f32("y", shape), f32("rm", [c]), f32("rv", [c])], inits,
                       opset=15)
    x = RNG.normal(size=shape).astype(np.float32) * 3 + 1
    for got, want in zip(donnx.load_model(model, target=target)(x), ReferenceEvaluator(model).run(None, {"x": x})):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attrs, target", [
    (dict(strides=[2, 1, 2], pads=[1, 0, 0, 0, 1, 1], output_padding=[1, 0, 1], dilations=[1, 2, 1]), "reference"),
    (dict(strides=[3, 2, 1], pads=[0, 1, 0, 2, 0, 0], dilations=[2, 1, 1]), "reference"),
    (dict(strides=[2, 2, 2], output_padding=[1, 1, 0]), "cpu"),
])
def test_conv_transpose_3d_matches_onnx_reference(attrs, target):
    from onnx.reference import ReferenceEvaluator

    x = RNG.normal(size=(2, 4, 3, 4, 5)).astype(np.float32)
    w = numpy_helper.from_array(RNG.normal(size=(4, 6, 2, 3, 2)).astype(np.float32), "w")
    b = numpy_helper.from_array(RNG.normal(size=6).astype(np.float32), "b")
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **attrs)
    (want,) = ReferenceEvaluator(make_model([node], [f32("x", x.shape)], [f32("y", None)], [w, b])).run(None,
                                                                                                    {"x": x})
    model = make_model([node], [f32("x", x.shape)], [f32("y", list(want.shape))], [w, b])
    np.testing.assert_allclose(donnx.load_model(model, target=target)(x), want, rtol=1e-4, atol=1e-4)


def test_grouped_conv_transpose_3d_matches_pytorch():
    torch = pytest.importorskip("torch")
    x = RNG.normal(size=(2, 4, 3, 4, 5)).astype(np.float32)
    w = RNG.normal(size=(4, 3, 2, 3, 2)).astype(np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], group=2, strides=[2, 1, 2], pads=[1, 0, 1, 1, 0, 1],
                            output_padding=[1, 0, 1])
    want = torch.nn.functional.conv_transpose3d(torch.from_numpy(x), torch.from_numpy(w), stride=(2, 1, 2),
                                                padding=(1, 0, 1), output_padding=(1, 0, 1), groups=2).numpy()
    model = make_model([node], [f32("x", x.shape)], [f32("y", list(want.shape))],
                       [numpy_helper.from_array(w, "w")])
    np.testing.assert_allclose(donnx.load_model(model)(x), want, rtol=1e-4, atol=1e-4)


def test_static_inputs_bind_shape_controlling_graph_inputs():
    node = helper.make_node("Reshape", ["x", "shape"], ["y"])
    model = make_model([node], [f32("x", [2, 3]), helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
                       [f32("y", [3, 2])])
    with pytest.raises(donnx.UnsupportedError, match="Reshape.*'shape'.*computed at run time"):
        donnx.load_model(model)
    fn = donnx.load_model(model, static_inputs={"shape": np.array([3, 2])})
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(fn(x), x.reshape(3, 2))


def test_narrow_types_are_widened_at_the_boundary():
    node = helper.make_node("Add", ["a", "b"], ["c"])
    u8 = [helper.make_tensor_value_info(n, TensorProto.UINT8, [3]) for n in "abc"]
    fn = donnx.load_model(make_model([node], u8[:2], u8[2:]))
    out = fn(np.array([1, 2, 3], np.uint8), np.array([4, 5, 6], np.uint8))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [5, 7, 9])
    np.testing.assert_array_equal(fn(b=np.array([1, 1, 1], np.uint8), a=np.array([1, 2, 3], np.uint8)), [2, 3, 4])


def _cast_model(to, n, saturate=1, opset=21, **attrs):
    node = helper.make_node("Cast", ["x"], ["y"], to=to, saturate=saturate, **attrs)
    return make_model([node], [f32("x", [n])], [helper.make_tensor_value_info("y", to, [n])], opset=opset)


def _float_probe(ml_type):
    """Random values across the type's range, its exact ties (midpoints of neighbours), subnormals and specials."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    info = ml_dtypes.finfo(ml_type)
    bits = np.arange(2**info.bits, dtype=np.uint8 if info.bits <= 8 else np.uint16)
    with np.errstate(invalid="ignore", over="ignore"):   # NaN patterns; bfloat16's range past float32's (inf)
        values = bits.view(ml_type).astype(np.float64)
        values = np.unique(values[np.isfinite(values)])
        if len(values) > 2000:
            values = values[:: len(values) // 2000]
        ties = (values[1:] + values[:-1]) / 2
        wide = RNG.standard_normal(500) * np.float64(info.max) / 3
        specials = [0.0, -0.0, np.inf, -np.inf, np.nan, 3e38, -3e38, 1e-45, float(info.max) * 1.07]
        return np.concatenate([values, ties, wide, specials]).astype(np.float32)


NARROW_FLOATS = [("bfloat16", TensorProto.BFLOAT16), ("float8_e4m3fn", TensorProto.FLOAT8E4M3FN),
                 ("float8_e4m3fnuz", TensorProto.FLOAT8E4M3FNUZ), ("float8_e5m2", TensorProto.FLOAT8E5M2),
                 ("float8_e5m2fnuz", TensorProto.FLOAT8E5M2FNUZ), ("float4_e2m1fn", TensorProto.FLOAT4E2M1)]


@pytest.mark.parametrize("name, code, target", [(n, c, "reference") for n, c in NARROW_FLOATS]
                         + [(n, c, "cpu") for n, c in NARROW_FLOATS[:2]])
def test_cast_to_narrow_floats_is_bit_exact(name, code, target):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    ml_type = getattr(ml_dtypes, name)
    x = _float_probe(ml_type)
    for saturate in (1, 0):
        got = donnx.load_model(_cast_model(code, len(x), saturate), target=target)(x)
        assert got.dtype == np.dtype(ml_type)
        # onnx's reference: saturate_cast for float8 with saturate=1, ml_dtypes' conversion otherwise
        want = numpy_helper.saturate_cast(x, ml_type) if saturate and name.startswith("float8") else x.astype(ml_type)
        np.testing.assert_array_equal(got.view(np.uint8 if got.itemsize == 1 else np.uint16),
                                      want.view(np.uint8 if want.itemsize == 1 else np.uint16))


@pytest.mark.parametrize("mode", ["up", "down", "nearest"])
def test_cast_to_float8e8m0_follows_round_mode(mode):
    x = np.abs(np.concatenate([RNG.standard_normal(300) * 10, [0.0, 2.0**-127, 2.0**-126, 3 * 2.0**-128, 1.5, 0.75,
                                                                3e38, 2.0**127, np.inf, np.nan]])).astype(np.float32)
    for saturate in (1, 0):
        fn = donnx.load_model(_cast_model(TensorProto.FLOAT8E8M0, len(x), saturate, opset=25, round_mode=mode))
        np.testing.assert_array_equal(fn(x).view(np.uint8),
                                      numpy_helper.to_float8e8m0(x, bool(saturate), mode).view(np.uint8))


def test_narrow_initializers_decode_and_check_their_packed_size():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    w4 = np.array([-8, -1, 0, 3, 7], dtype=ml_dtypes.int4)
    wbf = np.array([0.5, -1.25, 3.0e20], dtype=np.float32).astype(ml_dtypes.bfloat16)
    inits = [numpy_helper.from_array(w4, "w4"), numpy_helper.from_array(wbf, "wbf")]
    nodes = [helper.make_node("Cast", ["w4"], ["a"], to=TensorProto.FLOAT),
             helper.make_node("Cast", ["wbf"], ["b"], to=TensorProto.FLOAT)]
    fn = donnx.load_model(make_model(nodes, [], [f32("a", [5]), f32("b", [3])], inits, opset=21))
    a, b = fn()
    np.testing.assert_array_equal(a, [-8, -1, 0, 3, 7])
    np.testing.assert_array_equal(b, wbf.astype(np.float32))
    bad = numpy_helper.from_array(w4, "w4")
    bad.raw_data = bad.raw_data[:2]   # five int4 values pack into three bytes
    with pytest.raises(donnx.OnnxImportError, match=r"initializer 'w4': 2 bytes of data for dims \[5\] of INT4 "
                                                    r"\(3 expected\)"):
        donnx.load_model(make_model(nodes[:1], [], [f32("a", [5])], [bad], opset=21))


def test_uint64_is_refused_with_the_reason():
    u64 = [helper.make_tensor_value_info(n, TensorProto.UINT64, [2]) for n in "xy"]
    with pytest.raises(donnx.UnsupportedError, match="UINT64 .no dlc dtype holds every uint64 value"):
        donnx.load_model(make_model([helper.make_node("Relu", ["x"], ["y"])], u64[:1], u64[1:]))


# ----------------------------------------------------------------------------
# against PyTorch and onnxruntime


def _small_cnn():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(4, 8, 3, groups=2, dilation=1, padding="same"), nn.LeakyReLU(0.1),
        nn.AvgPool2d(2, count_include_pad=False, padding=1), nn.Flatten(), nn.Linear(8 * 3 * 3, 10),
        nn.Softmax(dim=1)).eval()


@pytest.mark.parametrize("target", ["reference", "cpu"])
def test_torch_exported_cnn_matches_onnxruntime(tmp_path, target):
    torch = pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    model = _small_cnn()
    path = str(tmp_path / "cnn.onnx")
    x = torch.randn(3, 1, 9, 9)
    torch.onnx.export(model, (x,), path, input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}},
                      dynamo=False)
    fn = donnx.load_model(path, target=target)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for b in (1, 4):
        xb = np.random.default_rng(b).normal(size=(b, 1, 9, 9)).astype(np.float32)
        np.testing.assert_allclose(fn(xb), sess.run(None, {"x": xb})[0], rtol=1e-4, atol=1e-6)


def test_cli_import_writes_an_artifact_that_runs(tmp_path):
    model = mlp_model(batch=2)
    path = tmp_path / "mlp.onnx"
    onnx.save(model, str(path))
    out = tmp_path / "mlp.dlc"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "dlc", "import", str(path), "-o", str(out), "--target",
                           "reference"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    fn = dlc.load(str(out), verify=True)
    x = RNG.normal(size=(2, 4)).astype(np.float32)
    np.testing.assert_allclose(fn(x), mlp_numpy(model, x), rtol=1e-5, atol=1e-5)


def test_saved_import_regenerates_the_same_cpu_kernels(tmp_path):
    """The ONNX node names kernels record (unnamed nodes are "Relu(r)") survive an artifact's round trip."""
    fn = donnx.load_model(mlp_model(batch=2), target="cpu")
    dlc.export(fn, tmp_path / "mlp.dlc")
    loaded = dlc.load(str(tmp_path / "mlp.dlc"), verify=True)
    assert loaded.artifact.kernels_match is True
    x = RNG.normal(size=(2, 4)).astype(np.float32)
    np.testing.assert_allclose(loaded(x), fn(x), rtol=1e-6)


def test_cli_import_reports_a_bad_file_in_one_line(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "dlc", "import", str(bad), "-o", str(tmp_path / "x.dlc")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1
    assert "not an ONNX model" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_inspect_shows_the_fused_program_of_an_onnx_model(tmp_path, capsys):
    from dlc.cli import main

    path = tmp_path / "mlp.onnx"
    onnx.save(mlp_model(), str(path))
    assert main(["inspect", str(path), "--dot", str(tmp_path / "g.dot")]) == 0
    out = capsys.readouterr().out
    assert "# ONNX model: graph 'g'" in out and "opset 17" in out
    assert "7 nodes: Concat 1, Gather 1, Gemm 1, MatMul 1, Relu 1, Reshape 1, Shape 1" in out
    assert "input 'x' as x: float32(batch, 4)" in out and "output 'y': float32(batch, 3)" in out
    # the fused program, each kernel naming the ONNX nodes it came from: Gemm and Relu in one, MatMul the next
    assert "# dlc program:" in out and "## Kernels (2, in execution order)" in out
    kernels = [ln for ln in out.splitlines() if ln.startswith(("  k0 ", "  k1 "))]
    assert "matmul -> add -> relu" in kernels[0] and "(layer fc1, Relu_r_)" in kernels[0]
    assert "(layer fc2)" in kernels[1]
    assert (tmp_path / "g.dot").read_text().startswith("digraph")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    assert main(["inspect", str(bad)]) == 1
    assert "not an ONNX model" in capsys.readouterr().err


# ----------------------------------------------------------------------------
# bad input


def test_truncated_and_foreign_files(tmp_path):
    good = tmp_path / "good.onnx"
    onnx.save(mlp_model(), str(good))
    data = good.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    text = tmp_path / "text.onnx"
    text.write_text("this is not a model\n")
    for path in (cut, text):
        with pytest.raises(donnx.OnnxImportError, match="not an ONNX model"):
            donnx.load_model(str(path))
    with pytest.raises(donnx.OnnxImportError, match="cannot read"):
        donnx.load_model(str(tmp_path / "missing.onnx"))


def test_graph_cycle_is_an_error():
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="first"),
             helper.make_node("Relu", ["a"], ["b"], name="second")]
    with pytest.raises(donnx.OnnxImportError, match="cycle"):
        donnx.load_model(make_model(nodes, [f32("x", [2])], [f32("b", [2])]))


def test_undefined_value_is_an_error():
    nodes = [helper.make_node("Add", ["x", "nowhere"], ["y"], name="adder")]
    with pytest.raises(donnx.OnnxImportError, match="'nowhere'.*no node, input or initializer"):
        donnx.load_model(make_model(nodes, [f32("x", [2])], [f32("y", [2])]))


def test_undefined_graph_output_is_an_error():
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    with pytest.raises(donnx.OnnxImportError, match="graph output 'z' is produced by no node"):
        donnx.load_model(make_model(nodes, [f32("x", [2])], [f32("z", [2])]))


def test_initializer_size_disagreeing_with_dims():
    raw, typed = TensorProto(), TensorProto()
    for t in (raw, typed):
        t.name, t.data_type = "w", TensorProto.FLOAT
        t.dims.extend([3, 4])
    raw.raw_data = np.zeros(5, np.float32).tobytes()
    typed.float_data.extend([0.0] * 5)
    for t in (raw, typed):
        model = make_model([helper.make_node("Add", ["x", "w"], ["y"])], [f32("x", [3, 4])], [f32("y", [3, 4])],
                           [t])
        with pytest.raises(donnx.OnnxImportError, match=r"initializer 'w'.*dims \[3, 4\]"):
            donnx.load_model(model)


def test_huge_dims_are_refused_before_allocating():
    t = TensorProto()
    t.name, t.data_type = "w", TensorProto.FLOAT
    t.dims.extend([10**12])
    model = make_model([helper.make_node("Relu", ["w"], ["y"])], [], [f32("y", [10**12])], [t])
    with pytest.raises(donnx.OnnxImportError, match="1000000000000"):
        donnx.load_model(model)
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [f32("x", [10**12, 2])], [f32("y", [10**12, 2])])
    with pytest.raises(donnx.OnnxImportError, match="1000000000000"):
        donnx.load_model(model)


def test_huge_shapes_computed_in_the_graph_are_refused():
    shape = numpy_helper.from_array(np.array([10**6, 10**6], np.int64), "shape")
    for op in ("Expand", "Tile"):
        model = make_model([helper.make_node(op, ["x", "shape"], ["y"])], [f32("x", [1, 1])], [f32("y", None)],
                           [shape])
        with pytest.raises(donnx.OnnxImportError, match=f"{op} .*output: 1000000000000 elements"):
            donnx.load_model(model)
    bounds = [numpy_helper.from_array(np.array(v, np.int64), n) for v, n in ((0, "a"), (10**12, "b"), (1, "c"))]
    model = make_model([helper.make_node("Range", ["a", "b", "c"], ["y"])], [], [f32("y", None)], bounds)
    with pytest.raises(donnx.OnnxImportError, match="Range .*1000000000000"):
        donnx.load_model(model)


def _external_model(tmp_path, location):
    t = TensorProto()
    t.name, t.data_type = "w", TensorProto.FLOAT
    t.dims.extend([4])
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "16")):
        e = t.external_data.add()
        e.key, e.value = k, v
    model = make_model([helper.make_node("Add", ["x", "w"], ["y"])], [f32("x", [4])], [f32("y", [4])], [t])
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    path = folder / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return str(path)


def test_external_data_inside_the_model_directory(tmp_path):
    path = _external_model(tmp_path, "weights.bin")
    (tmp_path / "model" / "weights.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    fn = donnx.load_model(path)
    np.testing.assert_array_equal(fn(np.ones(4, np.float32)), np.arange(4) + 1.0)


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin"])
def test_external_data_outside_the_model_directory(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(np.zeros(4, np.float32).tobytes())
    path = _external_model(tmp_path, location)
    with pytest.raises(donnx.OnnxImportError, match="external data location .* (outside|relative path)"):
        donnx.load_model(path)


def test_external_data_through_a_symlink_out_of_the_directory(tmp_path):
    (tmp_path / "secret.bin").write_bytes(np.zeros(4, np.float32).tobytes())
    path = _external_model(tmp_path, "link.bin")
    os.symlink(tmp_path / "secret.bin", tmp_path / "model" / "link.bin")
    with pytest.raises(donnx.OnnxImportError, match="outside the model's directory"):
        donnx.load_model(path)


def test_opset_newer_than_supported():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [f32("x", [2])], [f32("y", [2])],
                       opset=donnx.MAX_OPSET + 1)
    with pytest.raises(donnx.UnsupportedError, match=f"opset {donnx.MAX_OPSET + 1}, newer than"):
        donnx.load_model(model)


def test_unsupported_op_and_attribute_name_what_is_supported():
    model = make_model([helper.make_node("NonMaxSuppression", ["x"], ["y"], name="nms")], [f32("x", [2])],
                       [f32("y", [2])])
    with pytest.raises(donnx.UnsupportedError, match=r"NonMaxSuppression \(opset 17\) node 'nms'.*supported ops:"
                                                      r".*Conv"):
        donnx.load_model(model)
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="r", fancy=1)], [f32("x", [2])],
                       [f32("y", [2])])
    with pytest.raises(donnx.UnsupportedError, match="Relu .*node 'r': attribute 'fancy'.*supported attributes"):
        donnx.load_model(model)
    model = make_model([helper.make_node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 2], name="mp")],
                       [f32("x", ["batch", 1, 4, 4])], [f32("y", ["batch", 1, 2, 2])])
    with pytest.raises(donnx.UnsupportedError, match="MaxPool .*'mp': Indices with symbolic batch or channel dims"):
        donnx.load_model(model)


def test_import_dlc_does_not_need_onnx():
    code = "import sys; sys.modules['onnx'] = None; import dlc, dlc.onnx; print(len(dlc.onnx.supported_ops()))"
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) > 90


def test_example_imported_cnn_classifies_as_pytorch_does(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "onnx_import.py"), "--epochs", "1",
                           "--target", "cpu", "--onnx", str(tmp_path / "cnn.onnx")],
                          capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    torch_acc = float(out.split("PyTorch test accuracy ")[1].split()[0])
    dlc_acc = float(out.split("dlc test accuracy ")[1].split()[0])
    assert dlc_acc == torch_acc and torch_acc > 0.6   # one PyTorch epoch: about 0.79
    same, total = out.split("same predictions ")[1].split()[0::2][:2]
    assert same == total
    # one more epoch in dlc, from the imported weights, improves on them
    assert float(out.split("fine-tuned test accuracy ")[1].split()[0]) > torch_acc


def test_torch_exported_lstm_classifier_on_cpu_matches_onnxruntime(tmp_path):
    torch = pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(3, 4)
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):
            _, (h, _) = self.lstm(x)
            return self.fc(h[-1])   # a Gather with a constant index on the final state

    torch.manual_seed(0)
    x = RNG.normal(size=(5, 2, 3)).astype(np.float32)
    path = str(tmp_path / "lstm.onnx")
    torch.onnx.export(Classifier().eval(), (torch.from_numpy(x),), path, input_names=["x"], dynamo=False)
    want = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(donnx.load_model(path, target="cpu")(x), want, rtol=1e-4, atol=1e-6)
