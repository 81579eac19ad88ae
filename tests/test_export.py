"""dlc.export / dlc.load: round trips of inference and training artifacts, and every kind of bad file."""

import gc
import hashlib
import io
import json
import struct
import weakref
import zipfile

import numpy as np
import pytest

import dlc
from dlc import nn
from dlc.errors import ArtifactError
from dlc.export import FORMAT_VERSION, open_artifact, write_artifact


def available_targets():
    """reference always; cpu once its backend module exists."""
    try:
        import dlc.runtime.cpu  # noqa: F401
    except ImportError:
        return ["reference"]
    return ["reference", "cpu"]


# ----------------------------------------------------------------------------
# small models: (inputs of one batch, function built from fresh parameters)


def mlp_model(train, target):
    rng = np.random.default_rng(1)
    x, y = dlc.input("x", ("B", 6)), dlc.input("y", ("B",), "int64")
    w1 = dlc.param(rng.standard_normal((6, 8)) * 0.4, name="w1")
    b1 = dlc.param(np.zeros(8), name="b1")
    w2 = dlc.param(rng.standard_normal((8, 3)) * 0.4, name="w2")
    logits = dlc.tanh(x @ w1 + b1) @ w2
    batch = (rng.standard_normal((5, 6)).astype(np.float32), np.array([0, 2, 1, 1, 0]))
    if not train:
        return batch[:1], dlc.compile({"probs": dlc.softmax(logits)}, inputs=[x], target=target)
    loss = -dlc.mean(dlc.sum(dlc.log_softmax(logits) * dlc.one_hot(y, 3), axis=1))
    grads = dlc.grad(loss, [w1, b1, w2])
    updates = {p: p - 0.2 * g for p, g in zip([w1, b1, w2], grads)}
    return batch, dlc.compile((loss, logits), inputs=[x, y], updates=updates, target=target)


def cnn_model(train, target):
    rng = np.random.default_rng(2)
    nn.manual_seed(0)
    x, y = dlc.input("x", ("B", 1, 6, 6)), dlc.input("y", ("B",), "int64")
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 3 * 3, 3))
    batch = (rng.standard_normal((4, 1, 6, 6)).astype(np.float32), np.array([0, 1, 2, 1]))
    if not train:
        return batch[:1], nn.compile_eval(lambda x: model(x), [x], modules=model, target=target)
    opt = dlc.optim.Adam(model.parameters(), lr=1e-2)
    step = nn.compile_step(lambda x, y: nn.cross_entropy(model(x), y), [x, y], opt, modules=model, target=target)
    return batch, step.function


def lstm_model(train, target):
    rng = np.random.default_rng(3)
    H, size = 4, 3
    xs = dlc.input("xs", ("T", "B", size))
    W = dlc.param(rng.standard_normal((size + H, 4 * H)) * 0.3, name="W")
    b = dlc.param(np.zeros(4 * H), name="b")

    def cell(carry, x_t):
        h, c = carry
        i, f, g, o = dlc.split(dlc.concat([x_t, h], axis=1) @ W + b, 4, axis=1)
        c = dlc.sigmoid(f) * c + dlc.sigmoid(i) * dlc.tanh(g)
        h = dlc.sigmoid(o) * dlc.tanh(c)
        return (h, c), h

    zeros = dlc.broadcast_to(dlc.constant(np.zeros((1, H), np.float32)), ("B", H))
    (h_last, _), hs = dlc.scan(cell, (zeros, zeros), xs)
    batch = (rng.standard_normal((5, 2, size)).astype(np.float32),)
    if not train:
        return batch, dlc.compile([h_last, hs], target=target)
    loss = dlc.mean(hs * hs)
    gW, gb = dlc.grad(loss, [W, b])
    return batch, dlc.compile(loss, updates={W: W - 0.5 * gW, b: b - 0.5 * gb}, target=target)


def regression_model(train, target, **options):
    """The smallest training step worth compiling natively: numba compiles it in seconds."""
    rng = np.random.default_rng(4)
    x, t = dlc.input("x", ("B", 6)), dlc.input("t", ("B", 2))
    w = dlc.param(rng.standard_normal((6, 2)) * 0.4, name="w")
    b = dlc.param(np.zeros(2), name="b")
    y = dlc.tanh(x @ w + b)
    loss = dlc.mean((y - t) * (y - t))
    batch = (rng.standard_normal((5, 6)).astype(np.float32), rng.standard_normal((5, 2)).astype(np.float32))
    updates = {w: w - 0.1 * dlc.grad(loss, w), b: b - 0.1 * dlc.grad(loss, b)} if train else None
    return batch, dlc.compile((loss, y), updates=updates, target=target, **options)


MODELS = {"mlp": mlp_model, "cnn": cnn_model, "lstm": lstm_model}


def as_list(result):
    if isinstance(result, dict):
        return list(result.values())
    return list(result) if isinstance(result, (list, tuple)) else [result]


def assert_bit_identical(got, want):
    for g, w in zip(as_list(got), as_list(want)):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert np.array_equal(g, w), f"max abs difference {np.max(np.abs(g - w))}"


def run_and_export(model, train, target, path, steps=3):
    """Export a fresh model, then run it: (outputs of each call, final store values). The model is then freed."""
    batch, fn = model(train, target)
    dlc.export(fn, path)
    outs = [fn(*batch) for _ in range(steps)]
    weights = {k: v.copy() for k, v in fn.store.items()}
    probe = weakref.ref(fn.outputs[0])
    return batch, outs, weights, probe


# ----------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("train", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("name", list(MODELS))
def test_roundtrip_is_bit_identical_to_the_in_process_function(name, train, tmp_path):
    check_roundtrip(MODELS[name], train, "reference", tmp_path, forgotten=name == "mlp")


@pytest.mark.skipif("cpu" not in available_targets(), reason="no cpu backend")
def test_cpu_training_roundtrip_is_bit_identical(tmp_path):
    check_roundtrip(regression_model, True, "cpu", tmp_path, forgotten=True)


def has_cuda_emulator():
    try:
        from dlc.runtime.cuda import EmulatedDevice

        EmulatedDevice.shared()
    except (ImportError, OSError, RuntimeError):
        return False
    return True


@pytest.mark.skipif(not has_cuda_emulator(), reason="no CUDA backend emulator")
def test_cuda_training_roundtrip_is_bit_identical(tmp_path):
    """The CUDA backend, its kernels run by the C emulator: the artifact keeps the .cu source and the option."""
    model = lambda train, target: regression_model(train, target, emulate=True)
    check_roundtrip(model, True, "cuda", tmp_path, forgotten=True)
    art = open_artifact(tmp_path / "model.dlc")
    assert art.manifest["options"] == {"emulate": True}
    assert "__global__" in art.sources("cuda")["module.cu"]


def check_roundtrip(model, train, target, tmp_path, forgotten):
    path = tmp_path / "model.dlc"
    batch, outs, weights, probe = run_and_export(model, train, target, path)
    dlc.reset_default_store()
    gc.collect()
    if forgotten:  # the traced graph is gone: the loaded one is rebuilt from the file alone
        assert probe() is None
    loaded = dlc.load(path, verify=True)
    assert loaded.target == target
    for want in outs:
        assert_bit_identical(loaded(*batch), want)
    for key, value in weights.items():  # training artifacts keep training, into their own store
        assert np.array_equal(loaded.store[key], value), key


def test_training_artifact_keeps_training_and_exports_again(tmp_path):
    batch, fn = cnn_model(True, "reference")
    dlc.export(fn, tmp_path / "a.dlc")
    first = dlc.load(tmp_path / "a.dlc")
    assert any(".exp_avg_sq." in k for k in first.store.keys())  # optimizer state travels with the weights
    losses = [float(first(*batch)["loss"]) for _ in range(3)]
    assert losses[2] < losses[0]
    dlc.export(first, tmp_path / "b.dlc")
    second = dlc.load(tmp_path / "b.dlc", verify=True)
    for key, value in first.store.items():
        assert np.array_equal(second.store[key], value), key
    assert_bit_identical(second(*batch), first(*batch))
    assert second.store is not first.store


def test_export_leaves_the_store_as_it_was():
    batch, fn = mlp_model(True, "reference")
    before = {k: v.copy() for k, v in fn.store.items()}
    dlc.export(fn, io_path := _tmp_file())
    for k, v in fn.store.items():
        assert np.array_equal(v, before[k]), f"the golden run changed {k}"
    assert dlc.load(io_path, verify=True)


def test_export_is_deterministic(tmp_path):
    _, fn = mlp_model(True, "reference")
    dlc.export(fn, tmp_path / "a.dlc")
    dlc.export(fn, tmp_path / "b.dlc")
    assert (tmp_path / "a.dlc").read_bytes() == (tmp_path / "b.dlc").read_bytes()


def test_output_structure_and_signature_survive(tmp_path):
    x = dlc.input("x", ("B", "T", 2))
    fn = dlc.compile({"sum": dlc.sum(x, axis=2), "flat": dlc.reshape(x, ("B*T", 2))})
    dlc.export(fn, tmp_path / "f.dlc")
    loaded = dlc.load(tmp_path / "f.dlc", verify=True)
    out = loaded(np.ones((2, 3, 2), np.float32))
    assert list(out) == ["sum", "flat"] and out["flat"].shape == (6, 2)
    assert loaded.signature.describe() == fn.signature.describe() == "x: float32(B, T, 2)"
    with pytest.raises(dlc.ShapeError, match="expected shape"):
        loaded(np.ones((2, 3), np.float32))


def test_manifest_records_versions_flags_signature_and_hashes(tmp_path):
    _, fn = cnn_model(True, "reference")
    dlc.export(fn, tmp_path / "a.dlc")
    art = open_artifact(tmp_path / "a.dlc")
    m = art.manifest
    assert m["format_version"] == FORMAT_VERSION and m["kind"] == "training" and m["target"] == "reference"
    assert set(m["versions"]) >= {"dlc", "numpy", "numba", "llvmlite", "python"}
    assert m["signature"]["inputs"][0] == {"name": "x", "shape": ["B", 1, 6, 6], "dtype": "float32"}
    assert m["signature"]["symbols"] == {"B": {"min": None, "max": None}}
    assert set(m["members"]) == set(art.members)
    for name, entry in m["members"].items():
        assert hashlib.sha256(art.members[name]).hexdigest() == entry["sha256"]
    assert set(m["weights"]) == set(fn.store.keys())
    golden_x = art.array("golden/inputs/x.npy")
    assert golden_x.shape == (2, 1, 6, 6)  # generated from the signature with batch 2


def test_golden_inputs_can_be_given(tmp_path):
    batch, fn = mlp_model(False, "reference")
    dlc.export(fn, tmp_path / "a.dlc", golden_inputs={"x": batch[0]})
    art = open_artifact(tmp_path / "a.dlc")
    assert np.array_equal(art.array("golden/inputs/x.npy"), batch[0])
    with pytest.raises(dlc.ShapeError):
        dlc.export(fn, tmp_path / "b.dlc", golden_inputs=[np.ones((2, 5), np.float32)])


def test_a_wrong_golden_output_fails_verification(tmp_path):
    _, fn = mlp_model(False, "reference")
    dlc.export(fn, tmp_path / "a.dlc")

    def perturb(members):
        out = np.load(io.BytesIO(members["golden/outputs/0.npy"]))
        members["golden/outputs/0.npy"] = npy(out + np.float32(1e-3))

    rewrite(tmp_path / "a.dlc", tmp_path / "b.dlc", members=perturb)
    assert dlc.load(tmp_path / "b.dlc")  # the file itself is consistent ...
    with pytest.raises(ArtifactError, match="golden self-test failed on output 0"):
        dlc.load(tmp_path / "b.dlc", verify=True)  # ... but does not compute what it claims


@pytest.mark.skipif("cpu" not in available_targets(), reason="no cpu backend")
def test_cpu_artifact_carries_its_kernel_source_and_loads_on_another_target(tmp_path):
    batch, fn = regression_model(True, "cpu")
    dlc.export(fn, tmp_path / "a.dlc")
    art = open_artifact(tmp_path / "a.dlc")
    assert art.manifest["kernels"]["cpu"] and art.sources("cpu")
    assert set(art.manifest["backend_flags"]) >= {"fastmath", "parallel"}
    loaded = dlc.load(tmp_path / "a.dlc")
    assert loaded.artifact.kernels_match is True  # the same generated source, hence the same kernel cache entry
    on_reference = dlc.load(tmp_path / "a.dlc", target="reference", verify=True)
    for _ in range(2):  # both keep training, each in its own store
        for a, b in zip(on_reference(*batch), loaded(*batch)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------
# bad files: each refused with its own message, before anything runs


def _tmp_file():
    import tempfile

    return tempfile.mkdtemp() + "/f.dlc"


def npy(arr, allow_pickle=False):
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def rewrite(src, dst, members=None, manifest=None, rehash=True, extra_names=()):
    """Copy an artifact, editing its members (a dict) and manifest; rehash unless told not to."""
    with zipfile.ZipFile(src) as z:
        data = {n: z.read(n) for n in z.namelist()}
    m = json.loads(data.pop("manifest.json"))
    data.pop("integrity.json", None)  # rewritten for the new manifest: what anyone editing a file can do
    if members:
        members(data)
    if rehash:
        m["members"] = {n: {"sha256": hashlib.sha256(b).hexdigest(), "bytes": len(b)} for n, b in data.items()
                        if n not in extra_names}
    if manifest:
        manifest(m)
    write_artifact(dst, m, data)


def flip_byte_in_member(path, member):
    """Flip one byte in the middle of a member's stored data, as disk or network damage would."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(member)
    raw = bytearray(open(path, "rb").read())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    raw[start + info.compress_size // 2] ^= 0x40
    open(path, "wb").write(bytes(raw))


@pytest.fixture
def artifact(tmp_path):
    _, fn = mlp_model(True, "reference")
    path = tmp_path / "good.dlc"
    dlc.export(fn, path)
    return path


@pytest.fixture
def hostile(tmp_path):
    """An artifact whose kernel source would create a file if anything ever ran it."""
    sentinel = tmp_path / "pwned"
    batch, fn = mlp_model(False, "reference")
    fn.backend.sources = {"module.py": f"open({str(sentinel)!r}, 'w').write('ran')\n"}
    path = tmp_path / "hostile.dlc"
    dlc.export(fn, path)
    return path, sentinel, batch


def test_truncated_file(artifact, tmp_path):
    data = artifact.read_bytes()
    (tmp_path / "t.dlc").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ArtifactError, match="truncated or damaged artifact"):
        dlc.load(tmp_path / "t.dlc")


def test_flipped_byte_in_a_weight(artifact):
    flip_byte_in_member(artifact, "weights/w1.npy")
    with pytest.raises(ArtifactError, match="member 'weights/w1.npy' is corrupted"):
        dlc.load(artifact)


def test_modified_weight_with_a_valid_zip_checksum(artifact, tmp_path):
    def bump(members):
        w = np.load(io.BytesIO(members["weights/w1.npy"]))
        members["weights/w1.npy"] = npy(w + 1)

    rewrite(artifact, tmp_path / "m.dlc", members=bump, rehash=False)
    with pytest.raises(ArtifactError, match="member 'weights/w1.npy' fails its sha256 check"):
        dlc.load(tmp_path / "m.dlc")


def test_flipped_byte_in_kernel_source_is_refused_and_never_runs(hostile):
    path, sentinel, _ = hostile
    flip_byte_in_member(path, "kernels/reference/module.py")
    with pytest.raises(ArtifactError, match="member 'kernels/reference/module.py' is corrupted"):
        dlc.load(path)
    assert not sentinel.exists()


def test_kernel_source_is_never_executed_even_when_its_hash_is_valid(hostile):
    path, sentinel, batch = hostile
    art = open_artifact(path)
    assert "open(" in art.sources("reference")["module.py"]
    loaded = dlc.load(path, verify=True)
    loaded(*batch)
    assert not sentinel.exists()


def test_pickled_array_is_refused_without_unpickling(artifact, tmp_path):
    sentinel = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (open, (str(sentinel), "w"))

    def poison(members):
        members["weights/w1.npy"] = npy(np.array([Payload()], dtype=object), allow_pickle=True)

    rewrite(artifact, tmp_path / "p.dlc", members=poison)
    with pytest.raises(ArtifactError, match="object arrays are refused"):
        dlc.load(tmp_path / "p.dlc")
    assert not sentinel.exists()


@pytest.mark.parametrize("evil", ["../evil.npy", "weights/../../evil.npy", "/etc/evil.npy", "C:/evil.npy"])
def test_member_path_escaping_the_archive(artifact, tmp_path, evil):
    def add(members):
        members[evil] = npy(np.zeros(2))

    rewrite(artifact, tmp_path / "e.dlc", members=add)
    with pytest.raises(ArtifactError, match="unsafe member path"):
        dlc.load(tmp_path / "e.dlc")


def test_manifest_from_a_future_version(artifact, tmp_path):
    rewrite(artifact, tmp_path / "f.dlc", manifest=lambda m: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(ArtifactError, match=f"format version {FORMAT_VERSION + 1}, newer than this dlc reads"):
        dlc.load(tmp_path / "f.dlc")


@pytest.mark.parametrize("content", [b"", b"\x00" * 10, bytes(np.random.default_rng(0).integers(0, 256, 5000,
                                                                                                 dtype=np.uint8))])
def test_not_a_zip_file(tmp_path, content):
    (tmp_path / "r.dlc").write_bytes(content)
    with pytest.raises(ArtifactError, match="not a dlc artifact: the file is not a zip archive"):
        dlc.load(tmp_path / "r.dlc")


def test_zip_that_is_not_an_artifact(tmp_path):
    with zipfile.ZipFile(tmp_path / "z.dlc", "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(ArtifactError, match="there is no manifest.json"):
        dlc.load(tmp_path / "z.dlc")


def test_member_not_listed_in_the_manifest(artifact, tmp_path):
    def add(members):
        members["weights/extra.npy"] = npy(np.zeros(2))

    rewrite(artifact, tmp_path / "x.dlc", members=add, extra_names=("weights/extra.npy",))
    with pytest.raises(ArtifactError, match="'weights/extra.npy' is in the archive but not listed in the manifest"):
        dlc.load(tmp_path / "x.dlc")


def test_manifest_lists_a_missing_member(artifact, tmp_path):
    def drop(m):
        m["members"]["weights/ghost.npy"] = {"sha256": "0" * 64, "bytes": 10}

    rewrite(artifact, tmp_path / "g.dlc", manifest=drop)
    with pytest.raises(ArtifactError, match="lists member 'weights/ghost.npy', which the archive does not have"):
        dlc.load(tmp_path / "g.dlc")


def test_missing_file():
    with pytest.raises(ArtifactError, match="no such artifact file"):
        dlc.load("/nonexistent/model.dlc")


def test_export_refuses_what_is_not_a_function(tmp_path):
    with pytest.raises(TypeError, match="takes a compiled dlc.Function \\(or a training step holding one\\)"):
        dlc.export(lambda x: x, tmp_path / "a.dlc")


def test_weight_of_another_shape_than_its_node_is_refused(artifact, tmp_path):
    """Hashes prove integrity, not intent: shapes are checked too, since native code trusts them."""
    def widen(members):
        members["weights/w1.npy"] = npy(np.zeros((7, 8), np.float32))

    rewrite(artifact, tmp_path / "w.dlc", members=widen)
    with pytest.raises(ArtifactError, match=r"weight 'w1' is float32\(7, 8\), but the graph reads it as float32\(6,"):
        dlc.load(tmp_path / "w.dlc")
