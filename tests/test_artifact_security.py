"""Crafted artifacts: no text from a file reaches generated source as code, signing, size caps, malformed files."""

import ast
import io
import os
import re
import zipfile

import numpy as np
import pytest
from artifact_edit import read_members, reseal

import dlc
from dlc.cli import main as cli_main
from dlc.errors import ArtifactError
from dlc.graph import Node, SourceLoc, freeze_attrs
from dlc.tensor import Tensor

CANARY = "dlc_canary_file"

# text that would run code if it escaped a comment, a docstring or a literal, in Python or in C
PY_PAYLOAD = f"import os; os.system('touch {CANARY}')"
C_PAYLOAD = f'__attribute__((constructor)) static void dlc_pwn(void) {{ system("touch {CANARY}"); }}'
BREAKOUTS = ["\n", "\r", "\r\n", "\u2028", "\u0085", "\x0c", '"""', "'''", "*/", "\\\n", "??/\n", "#", "\x00"]
HOSTILE = [f"m.py{b}{PY_PAYLOAD}{b}{C_PAYLOAD}{b}" for b in BREAKOUTS]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty folder, where any payload's canary file would appear."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def no_canary(folder) -> bool:
    return not any(CANARY in p.name for p in folder.rglob("*"))


def pool_model(target="cpu", **options):
    x = dlc.input("x", ("B", 1, 4, 4))
    y = dlc.avg_pool2d(x, 2, count_include_pad=True) * 2.0 + 1.0
    return dlc.compile(y, target=target, **options)


X = np.arange(2 * 16, dtype=np.float32).reshape(2, 1, 4, 4)


@pytest.fixture(scope="module")
def cpu_artifact(tmp_path_factory):
    path = tmp_path_factory.mktemp("art") / "pool.dlc"
    dlc.export(pool_model("cpu"), path)
    return path


def set_loc(doc, index, value):
    for e in doc["nodes"]:
        if e.get("loc"):
            e["loc"][index] = value


def set_attr(doc, op, name, value):
    for e in doc["nodes"]:
        if e["op"] == op:
            e["attrs"] = [[k, value if k == name else v] for k, v in e["attrs"]]


def set_input_name(doc, value):
    for e in doc["nodes"]:
        if e["op"] == "input":
            e["attrs"] = [["name", value]]


ATTACKS = {
    "loc file": lambda text: dict(graph=lambda d: set_loc(d, 0, text)),
    "loc scope": lambda text: dict(graph=lambda d: [e["loc"].append(text) for e in d["nodes"] if e.get("loc")]),
    "loc line": lambda text: dict(graph=lambda d: set_loc(d, 1, text)),
    "count_include_pad": lambda text: dict(graph=lambda d: set_attr(d, "avg_pool2d", "count_include_pad",
                                                                       f"True){text}")),
    "input name": lambda text: dict(graph=lambda d: set_input_name(d, f"x{text}")),
    "fastmath option": lambda text: dict(manifest=lambda m: m["options"].update(fastmath=f"False){text}")),
    "unknown option": lambda text: dict(manifest=lambda m: m["options"].update({text: True})),
    "target": lambda text: dict(manifest=lambda m: m.update(target=f"cpu{text}")),
}


@pytest.mark.parametrize("where", list(ATTACKS))
def test_injected_text_is_refused_at_decode_and_runs_nothing(cpu_artifact, in_tmp, where):
    """The six routes of the issue (and more): each crafted, fully re-hashed file is an ArtifactError on load,
    on load(verify=True) and in `dlc inspect`, and no payload runs."""
    for i, text in enumerate(HOSTILE[:4] + HOSTILE[6:8]):
        path = in_tmp / f"evil{i}.dlc"
        reseal(cpu_artifact, path, **ATTACKS[where](text))
        with pytest.raises(ArtifactError):
            dlc.load(path)
        with pytest.raises(ArtifactError):
            dlc.load(path, verify=True)
        assert cli_main(["inspect", str(path)]) == 1
    assert no_canary(in_tmp)


# payloads that ran code on dlc.load before names and options were checked (the generated module's header
# docstring, then the @njit options, took them as code)
EXPLOITS = {
    "input name": dict(graph=lambda d: set_input_name(d, f'x""";{PY_PAYLOAD}; _ = """')),
    "fastmath option": dict(manifest=lambda m: m["options"].update(fastmath=f"False); {PY_PAYLOAD}; X = dict(a=1")),
}


@pytest.mark.parametrize("where", list(EXPLOITS))
def test_payloads_that_once_ran_code_are_refused(cpu_artifact, in_tmp, where):
    reseal(cpu_artifact, in_tmp / "evil.dlc", **EXPLOITS[where])
    with pytest.raises(ArtifactError, match="must match|wrong type"):
        dlc.load(in_tmp / "evil.dlc")
    assert no_canary(in_tmp)


def has_emulator():
    try:
        from dlc.runtime.cuda import EmulatedDevice

        EmulatedDevice.shared()
    except (ImportError, OSError, RuntimeError):
        return False
    return True


@pytest.mark.skipif(not has_emulator(), reason="no CUDA emulator (g++)")
def test_c_in_a_loc_never_reaches_the_emulators_compiler(in_tmp):
    """Before locations were checked, this file name put a constructor into the library the emulator compiles
    and loads: it ran on the first call."""
    x = dlc.input("x", ("B", 4))
    dlc.export(dlc.compile(dlc.exp(x) * 2.0, target="cuda", emulate=True), in_tmp / "base.dlc")
    evil = f'm.py\nextern "C" int system(const char*); {C_PAYLOAD}\n//'
    reseal(in_tmp / "base.dlc", in_tmp / "evil.dlc", graph=lambda d: set_loc(d, 0, evil))
    with pytest.raises(ArtifactError, match="the file of 'loc' must match"):
        dlc.load(in_tmp / "evil.dlc")
    assert no_canary(in_tmp)


def test_an_honest_artifact_still_loads_and_matches_its_kernels(cpu_artifact):
    fn = dlc.load(cpu_artifact, verify=True)
    assert fn.artifact.kernels_match is True
    np.testing.assert_array_equal(fn(X), pool_model("reference")(X))


def test_a_path_in_loc_is_reduced_to_its_base_name(cpu_artifact, tmp_path):
    reseal(cpu_artifact, tmp_path / "p.dlc", graph=lambda d: set_loc(d, 0, "/home/someone/models/net.py"))
    assert dlc.load(tmp_path / "p.dlc", verify=True)
    from dlc.serialize import check_loc

    assert check_loc(["/home/someone/models/net.py", 3, "features.0"], "node 1") == SourceLoc("net.py", 3,
                                                                                              scope="features.0")
    for bad in (["a b.py", 3], ["m.py", -1], ["m.py", True], ["m.py", 3, "a-b"], ["m.py"], "m.py:3"):
        with pytest.raises(ArtifactError):
            check_loc(bad, "node 1")


# ----------------------------------------------------------------------------
# the renderers escape on their own (defence in depth): graphs built in memory with hostile text


def hostile_graph(text: str, scope: str):
    """exp(x) * 2 + pool, every node carrying `text` as its file and `scope` as its module path, the input named
    `text` too (dlc.input would refuse that name: the node is made directly)."""
    x = Tensor(Node("input", (), freeze_attrs({"name": "x" + text}), (2, 1, 4, 4), "float32"))
    y = dlc.avg_pool2d(dlc.exp(x), 2, count_include_pad=False) * 2.0 + 1.0
    for n in dlc.Graph([y.node]).nodes:
        n.loc = SourceLoc(text, 7, scope=scope)
    return x, y


def strip_docstrings(tree):
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and \
                isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            body[0] = ast.Pass()
    return ast.dump(tree)


def numba_source(text):
    from dlc.codegen.numba import render_program
    from dlc.passes import optimize

    x, y = hostile_graph(text, scope=text)
    return render_program(optimize([y.node], [], [x.node]), title=f"<dlc.Function ({text})>").source


def cuda_source(text):
    from dlc.codegen.cuda import render_program
    from dlc.passes import optimize

    x, y = hostile_graph(text, scope=text)
    return render_program(optimize([y.node], [], [x.node])).source


def without_c_comments(source: str) -> str:
    return re.sub(r"//[^\n]*|/\*.*?\*/", "", source, flags=re.S)


@pytest.mark.parametrize("breakout", BREAKOUTS, ids=[repr(b) for b in BREAKOUTS])
def test_numba_module_with_hostile_names_has_the_same_code(breakout):
    """Comments and docstrings may differ; the module's code (its AST without docstrings) may not."""
    hostile = numba_source(f"m.py{breakout}{PY_PAYLOAD}{breakout}")
    benign = numba_source("m.py")
    assert strip_docstrings(ast.parse(hostile)) == strip_docstrings(ast.parse(benign))
    assert all(c.isascii() and (c.isprintable() or c == "\n") for c in hostile)


@pytest.mark.parametrize("breakout", BREAKOUTS, ids=[repr(b) for b in BREAKOUTS])
def test_cuda_source_with_hostile_names_has_the_same_code(breakout):
    """The CUDA C (which the emulator compiles with the host compiler) is the same once comments are stripped."""
    hostile = cuda_source(f"m.cu{breakout}{C_PAYLOAD}{breakout}")
    benign = cuda_source("m.cu")
    assert without_c_comments(hostile) == without_c_comments(benign)
    assert "system(" not in without_c_comments(hostile)


def test_escaping_module_keeps_comments_on_one_safe_line():
    from dlc.codegen import source_text

    for text in HOSTILE:
        out = source_text.comment(text)
        assert "\n" not in out and "\r" not in out and "*/" not in out and '"' not in out and "\\" not in out
        assert "?" not in out and out.isascii() and out.isprintable()
    assert source_text.number(True) == "True" and source_text.number(np.int64(3)) == "3"
    assert source_text.number(0.1) == "0.1"
    for bad in ("1", "True", b"1", None, [1]):
        with pytest.raises(TypeError):
            source_text.number(bad)


def test_numeric_attrs_are_never_rendered_from_strings():
    from dlc.codegen import numba as nb

    with pytest.raises(TypeError):
        nb.literal("1.0); import os; (", "float32")
    with pytest.raises(TypeError):
        nb._pool_args({"kernel": (2, 2), "stride": (2, 2), "padding": ((0, 0), (0, 0)),
                       "count_include_pad": "True"})
    with pytest.raises(TypeError):
        nb._jit_flag("False); import os; (")


# ----------------------------------------------------------------------------
# signing


def small_model():
    x = dlc.input("x", ("B", 3))
    w = dlc.param(np.arange(6, dtype=np.float32).reshape(3, 2), name="w")
    return dlc.compile(dlc.tanh(x @ w), target="reference")


def test_signed_artifact_loads_with_its_key_and_refuses_others(tmp_path):
    path = tmp_path / "s.dlc"
    dlc.export(small_model(), path, key=b"secret")
    assert dlc.load(path, key=b"secret", verify=True)
    assert dlc.load(path, key="secret")  # a str key is its UTF-8 bytes
    assert dlc.load(path)  # without a key: unsigned loading, safe by the checks above
    with pytest.raises(ArtifactError, match="signature does not match this key"):
        dlc.load(path, key=b"other")


def test_unsigned_artifact_is_refused_when_a_key_is_given(tmp_path):
    dlc.export(small_model(), tmp_path / "u.dlc")
    with pytest.raises(ArtifactError, match="is not signed, and a key was given"):
        dlc.load(tmp_path / "u.dlc", key=b"secret")


@pytest.mark.parametrize("edit", ["weight", "manifest", "graph"])
def test_a_signed_artifact_edited_and_rehashed_fails_its_signature(tmp_path, edit):
    dlc.export(small_model(), tmp_path / "s.dlc", key=b"secret")
    kw = {"weight": dict(members=lambda d: d.update({"weights/w.npy": npy(np.zeros((3, 2), np.float32))})),
          "manifest": dict(manifest=lambda m: m["options"].update(reassociate=False)),
          "graph": dict(graph=lambda d: set_loc(d, 1, 1))}[edit]
    reseal(tmp_path / "s.dlc", tmp_path / "e.dlc", **kw)  # re-hashed, not re-signed: the attacker has no key
    assert dlc.load(tmp_path / "e.dlc")
    with pytest.raises(ArtifactError, match="not signed"):
        dlc.load(tmp_path / "e.dlc", key=b"secret")
    reseal(tmp_path / "s.dlc", tmp_path / "k.dlc", key=b"guess", **kw)  # re-signed with a guessed key
    with pytest.raises(ArtifactError, match="signature does not match"):
        dlc.load(tmp_path / "k.dlc", key=b"secret")


def test_cli_key_file(tmp_path, capsys):
    (tmp_path / "key").write_bytes(b"secret\n")
    (tmp_path / "other").write_bytes(b"other")
    dlc.export(small_model(), tmp_path / "s.dlc", key=b"secret")
    np.save(tmp_path / "x.npy", np.ones((2, 3), np.float32))
    run = ["run", str(tmp_path / "s.dlc"), "-i", f"x={tmp_path / 'x.npy'}"]
    assert cli_main(run + ["--key-file", str(tmp_path / "key")]) == 0
    assert cli_main(run + ["--key-file", str(tmp_path / "other")]) == 1
    assert "signature does not match" in capsys.readouterr().err
    assert cli_main(["inspect", str(tmp_path / "s.dlc"), "--key-file", str(tmp_path / "other")]) == 1


# ----------------------------------------------------------------------------
# integrity of the manifest, limits, malformed files


def npy(arr):
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


@pytest.fixture
def artifact(tmp_path):
    path = tmp_path / "a.dlc"
    dlc.export(small_model(), path)
    return path


def test_manifest_edited_without_rehashing_is_refused(artifact, tmp_path):
    with zipfile.ZipFile(artifact) as z:
        data = {n: z.read(n) for n in z.namelist()}
    data["manifest.json"] = data["manifest.json"].replace(b'"kind": "inference"', b'"kind": "training"')
    with zipfile.ZipFile(tmp_path / "m.dlc", "w") as z:
        for n, b in data.items():
            z.writestr(n, b)
    with pytest.raises(ArtifactError, match="manifest.json fails its sha256 check"):
        dlc.load(tmp_path / "m.dlc")


def test_zip_bomb_is_refused_before_it_is_read(artifact, tmp_path):
    reseal(artifact, tmp_path / "b.dlc", members=lambda d: d.update({"golden/pad.txt": b"\0" * (32 << 20)}))
    with pytest.raises(ArtifactError, match="more than 200 times"):
        dlc.load(tmp_path / "b.dlc")
    assert dlc.load(tmp_path / "b.dlc", max_ratio=1e6)  # the caps are load's arguments
    with pytest.raises(ArtifactError, match="the members uncompress to .* more than the 1000 allowed"):
        dlc.load(artifact, max_bytes=1000)


@pytest.mark.parametrize("dtype", [">f4", ">i8"])
def test_big_endian_weights_are_converted_on_load(tmp_path, dtype):
    fn = small_model()
    dlc.export(fn, tmp_path / "a.dlc")
    w = np.arange(6).reshape(3, 2).astype(dtype)
    if w.dtype.kind == "i":  # the graph reads float32: a weight of another dtype is refused, not cast
        reseal(tmp_path / "a.dlc", tmp_path / "b.dlc", members=lambda d: d.update({"weights/w.npy": npy(w)}))
        with pytest.raises(ArtifactError, match="weight 'w' is int64"):
            dlc.load(tmp_path / "b.dlc")
        return
    reseal(tmp_path / "a.dlc", tmp_path / "b.dlc", members=lambda d: d.update({"weights/w.npy": npy(w)}))
    loaded = dlc.load(tmp_path / "b.dlc", verify=True)
    assert loaded.store["w"].dtype == np.dtype("float32") and loaded.store["w"].dtype.isnative
    np.testing.assert_array_equal(loaded(np.ones((2, 3), np.float32)), fn(np.ones((2, 3), np.float32)))


@pytest.mark.parametrize("data, message", [
    (npy(np.array(["a", "b"])), "dtype <U1 is not one of"),
    (npy(np.zeros(3, dtype=[("a", "f4")])), "is not one of"),
    (npy(np.zeros(3, np.complex64)), "is not one of"),
    (npy(np.zeros((3, 2), np.float32))[:-4], "the data has"),
    (b"\x93NUMPY\x01\x00\x10\x00{'descr': 1}    \n", "header is malformed"),
    (b"not npy", "header is malformed"),
])
def test_npy_members_hold_plain_numbers_only(artifact, tmp_path, data, message):
    reseal(artifact, tmp_path / "n.dlc", members=lambda d: d.update({"weights/w.npy": data}))
    with pytest.raises(ArtifactError, match=message):
        dlc.load(tmp_path / "n.dlc")


def test_huge_shape_in_an_npy_header_allocates_nothing(artifact, tmp_path):
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (100000000000, 100000), }"
    text = (header.ljust(117) + "\n").encode()
    data = b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text
    reseal(artifact, tmp_path / "h.dlc", members=lambda d: d.update({"weights/w.npy": data}))
    with pytest.raises(ArtifactError, match="the data has 0 bytes"):
        dlc.load(tmp_path / "h.dlc")


def nested(depth):
    return "[" * depth + "]" * depth


MALFORMED = {
    "graph nested deeply": dict(members=lambda d: d.update({"graph.json": nested(100_000).encode()})),
    "attr nested deeply": dict(graph=lambda g: g["nodes"][-1]["attrs"].append(["x", eval(nested(50))])),
    "nodes not a list": dict(graph=lambda g: g.update(nodes={"a": 1})),
    "node not an object": dict(graph=lambda g: g["nodes"].append(3)),
    "node without op": dict(graph=lambda g: g["nodes"][-1].pop("op")),
    "inputs of wrong type": dict(graph=lambda g: g["nodes"][-1].update(inputs="0")),
    "attrs of wrong type": dict(graph=lambda g: g["nodes"][-1].update(attrs=[[1, 2]])),
    "function missing": dict(graph=lambda g: g.pop("function")),
    "function inputs wrong": dict(graph=lambda g: g["function"].update(inputs=[[0]])),
    "roots wrong": dict(graph=lambda g: g.update(roots="x")),
    "consts wrong": dict(graph=lambda g: g.update(consts=[1])),
    "manifest weights wrong": dict(manifest=lambda m: m.update(weights=[1])),
    "manifest weight member wrong": dict(manifest=lambda m: m["weights"]["w"].update(member=7)),
    "manifest signature wrong": dict(manifest=lambda m: m.update(signature={"inputs": 1})),
    "manifest golden wrong": dict(manifest=lambda m: m.update(golden={"target": "cpu", "inputs": "x"})),
    "manifest kernels wrong": dict(manifest=lambda m: m.update(kernels={"cpu": "x"})),
    "manifest options wrong": dict(manifest=lambda m: m.update(options=[])),
    "manifest versions wrong": dict(manifest=lambda m: m.update(versions={"dlc": "1\x1b[31m"})),
    "manifest members wrong": dict(manifest=lambda m: m.update(members=[])),
    "manifest kind wrong": dict(manifest=lambda m: m.update(kind=["training"])),
    "max_group wrong": dict(manifest=lambda m: m["options"].update(max_group=-1)),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_every_malformed_artifact_is_an_artifact_error(artifact, tmp_path, name):
    reseal(artifact, tmp_path / "m.dlc", **MALFORMED[name])
    with pytest.raises(ArtifactError):
        dlc.load(tmp_path / "m.dlc", verify=True)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_artifacts_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        dlc.export(small_model(), tmp_path / "a.dlc")
    finally:
        os.umask(old)
    assert (tmp_path / "a.dlc").stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["a.dlc"]  # no temporary file left behind


def test_format_version_1_artifacts_still_load(artifact, tmp_path):
    """Version 1 had no integrity.json: such a file loads (unsigned), with every other check."""
    m, data = read_members(artifact)
    m["format_version"] = 1
    with zipfile.ZipFile(tmp_path / "v1.dlc", "w") as z:
        z.writestr("manifest.json", __import__("json").dumps(m))
        for n, b in data.items():
            z.writestr(n, b)
    assert dlc.load(tmp_path / "v1.dlc", verify=True)
    with pytest.raises(ArtifactError, match="not signed"):
        dlc.load(tmp_path / "v1.dlc", key=b"k")


def test_every_builtin_op_has_its_attributes_declared():
    """The decoder checks each op's attributes from serialize.ATTRS: an op added to dlc needs an entry there (an
    extension's op, registered elsewhere, gets the generic rules only)."""
    from dlc.ops import OPS
    from dlc.serialize import ATTRS

    builtin = {name for name, op in OPS.items() if op.infer.__module__.startswith("dlc.ops.")}
    assert sorted(builtin - set(ATTRS)) == []
