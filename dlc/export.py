"""The compiled-artifact format: `dlc.export` writes one zip file, `dlc.load` checks it and rebuilds the function.

Layout of an artifact (format version 1; docs/artifact.md is the full spec):

    manifest.json           format and versions, target and compile flags, the
                            signature, and the sha256 and size of every other member
    graph.json              the node table (dlc/serialize.py) and the function's
                            inputs, outputs and parameter updates
    consts/<i>.npy          constant arrays of graph nodes
    weights/<key>.npy       everything the graph reads from its Store
    kernels/<target>/<name> generated kernel source, as the backend reported it
    golden/inputs/<name>.npy, golden/outputs/<i>.npy   a small self-test pair

Nothing is ever unpickled (np.load(allow_pickle=False), JSON) and no code from
the file is run: the loader rebuilds the kernels from the graph with this
dlc's own code generator, and stored sources are only compared against them.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import platform
import re
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field

import numpy as np

from .compiler import Function
from .errors import ArtifactError
from .graph import Node, dim_eval, shape_str, symbols_of
from .serialize import GraphDecoder, GraphEncoder, graph_from_json, graph_to_json
from .store import Store
from .tensor import Tensor

FORMAT = "dlc-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
GRAPH = "graph.json"
GOLDEN_BATCH = 2
# compile options that name places on the exporting machine: recorded, not applied on load
LOCAL_OPTIONS = ("dump", "cache")


# ----------------------------------------------------------------------------
# export


def export(fn: Function, path, golden_inputs=None) -> str:
    """Write `fn` (inference or training step) to one artifact file at `path`; returns the path.

    golden_inputs: the inputs of the self-test pair (a dict by input name, or a
    list in call order); by default generated from the signature with every
    symbolic dim set to 2. The golden run does not change the function's store.
    """
    fn = as_function(fn)
    members: dict[str, bytes] = {}
    doc, keys = _function_doc(fn, members)
    members[GRAPH] = _json_bytes(doc)
    for key in keys:
        members[f"weights/{key}.npy"] = _npy_bytes(fn.store[key])
    kernels = _kernel_members(fn, members)
    golden = _golden_members(fn, golden_inputs, keys, members)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": "training" if fn.updates else "inference",
        "target": fn.target,
        "options": _encode_options(fn.options),
        "backend_flags": _backend_flags(fn),
        "versions": _versions(),
        "signature": _signature_doc(fn),
        "weights": {k: {"member": f"weights/{k}.npy", "trainable": bool(fn.store.is_trainable(k))} for k in keys},
        "kernels": kernels,
        "golden": golden,
        "members": {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                    for name, data in sorted(members.items())},
    }
    _write_zip(os.fspath(path), manifest, members)
    return os.fspath(path)


def as_function(obj) -> Function:
    """A dlc.Function, or what wraps one (a dlc.nn training step keeps it as `.function`)."""
    if isinstance(obj, Function):
        return obj
    inner = getattr(obj, "function", None)
    if isinstance(inner, Function):
        return inner
    raise TypeError(f"dlc.export takes a compiled dlc.Function (or a training step holding one), "
                    f"got {type(obj).__name__}")


def _function_doc(fn: Function, members: dict[str, bytes]) -> tuple[dict, list[str]]:
    """The graph document and the store keys the graph reads."""
    enc = GraphEncoder()
    inputs = [enc.ref(n) for n in fn.inputs]
    outputs = [enc.ref(n) for n in fn.outputs]
    updates = [[key, enc.ref(node)] for key, node in fn.updates]
    doc, arrays = graph_to_json(list(fn.inputs) + list(fn.outputs) + [n for _, n in fn.updates], enc)
    for key, arr in arrays.items():
        members[f"consts/{key}.npy"] = _npy_bytes(arr)
    doc["consts"] = {key: f"consts/{key}.npy" for key in arrays}
    doc["function"] = {"inputs": inputs, "outputs": outputs, "structure": _output_structure(fn),
                       "updates": updates}
    keys = sorted({dict(e["attrs"])["name"] for e in doc["nodes"] if e["op"] == "param"})
    return doc, keys


def _output_structure(fn: Function):
    """How the outputs come back: one array, a list, a tuple, or a dict (with its keys)."""
    shaped = fn._rebuild(list(range(len(fn.outputs))))
    if isinstance(shaped, dict):
        return {"dict": GraphEncoder().encode_value(tuple(shaped))}
    if isinstance(shaped, tuple):
        return "tuple"
    if isinstance(shaped, list):
        return "list"
    return "single"


def _signature_doc(fn: Function) -> dict:
    ranges = getattr(fn.signature, "ranges", None) or {}
    symbols = sorted({s for n in fn.inputs for s in symbols_of(n.shape)})
    return {
        "inputs": [{"name": n.attr("name"), "shape": list(n.shape), "dtype": n.dtype} for n in fn.inputs],
        "outputs": [{"shape": list(n.shape), "dtype": n.dtype} for n in fn.outputs],
        "symbols": {s: _range_doc(ranges.get(s)) for s in symbols},
    }


def _range_doc(r) -> dict:
    lo, hi = (r if r is not None else (None, None))
    return {"min": None if lo is None else int(lo), "max": None if hi is None else int(hi)}


def _kernel_members(fn: Function, members: dict[str, bytes]) -> dict[str, list[str]]:
    """The backend's generated source files, by target (a backend exposes them as `sources`)."""
    sources = backend_sources(fn)
    names = []
    for name, text in sorted(sources.items()):
        member = f"kernels/{fn.target}/{name}"
        _check_member_name(member)
        members[member] = text.encode("utf-8")
        names.append(member)
    return {fn.target: names} if names else {}


def backend_sources(fn: Function) -> dict[str, str]:
    """{file name: source text} of the kernels fn's backend generated ({} for the reference backend)."""
    backend = fn.backend
    sources = getattr(backend, "sources", None) or getattr(backend, "source", None)
    if callable(sources):
        sources = sources()
    if not sources:
        return {}
    if isinstance(sources, str):
        # named like the backend's cache file when it says which (the module's digest)
        digest = getattr(getattr(backend, "generated", None), "digest", None)
        suffix = {"cpu": ".py", "cuda": ".cu"}.get(fn.target, ".txt")
        return {f"dlc_gen_{digest}{suffix}" if digest else f"module{suffix}": sources}
    return {str(k): str(v) for k, v in dict(sources).items()}


def _backend_flags(fn: Function) -> dict:
    """The backend's effective compile flags: its constructor's keyword defaults, overridden by fn.options."""
    import inspect

    flags = {}
    try:
        params = inspect.signature(type(fn.backend).__init__).parameters.values()
    except (TypeError, ValueError):
        params = []
    for p in params:
        if p.kind == p.KEYWORD_ONLY or (p.kind == p.POSITIONAL_OR_KEYWORD and p.default is not p.empty):
            flags[p.name] = p.default
    flags.update(fn.options)
    return _encode_options(flags)


def _encode_options(options: dict) -> dict:
    """Options as JSON; one with no JSON form (a device object) is described by its repr, not applied on load."""
    enc, out = GraphEncoder(), {}
    for k, v in options.items():
        try:
            out[str(k)] = enc.encode_value(v)
        except TypeError:
            out[str(k)] = {"$": "unrecorded", "v": repr(v)}
    return out


def _decode_options(doc) -> dict:
    if not isinstance(doc, dict):
        raise ArtifactError(f"{MANIFEST}: 'options' must be a map, got {type(doc).__name__}")
    dec = GraphDecoder({"schema": "dlc-graph/1"}, {})
    return {k: dec.decode_value(v) for k, v in doc.items()
            if not (isinstance(v, dict) and v.get("$") == "unrecorded")}


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for mod in ("dlc", "numpy", "numba", "llvmlite"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = None
    return out


def _golden_members(fn: Function, golden_inputs, keys: list[str], members: dict[str, bytes]) -> dict:
    arrays = _golden_arrays(fn, golden_inputs)
    outputs = run_without_side_effects(fn, arrays, keys)
    for node, arr in zip(fn.inputs, arrays):
        members[f"golden/inputs/{node.attr('name')}.npy"] = _npy_bytes(arr)
    for i, arr in enumerate(outputs):
        members[f"golden/outputs/{i}.npy"] = _npy_bytes(np.asarray(arr))
    return {"target": fn.target, "inputs": [f"golden/inputs/{n.attr('name')}.npy" for n in fn.inputs],
            "outputs": [f"golden/outputs/{i}.npy" for i in range(len(outputs))]}


def _golden_arrays(fn: Function, golden_inputs) -> list[np.ndarray]:
    if golden_inputs is None:
        golden_inputs = example_inputs(fn)
    if isinstance(golden_inputs, dict):
        _, _, arrays = fn.signature.bind((), golden_inputs)
    else:
        _, _, arrays = fn.signature.bind(tuple(golden_inputs), {})
    return arrays


def example_inputs(fn: Function, batch: int = GOLDEN_BATCH, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs that fit the signature, every symbolic dim set to `batch` (or its minimum).

    Floats are standard normal; integers and booleans are zero, which is a
    valid class label or index for any op that takes one.
    """
    ranges = getattr(fn.signature, "ranges", None) or {}
    env = {}
    for n in fn.inputs:
        for s in symbols_of(n.shape):
            lo = (ranges.get(s) or (None, None))[0]
            env[s] = max(batch, lo or 0)
    rng = np.random.default_rng(seed)
    out = {}
    for n in fn.inputs:
        shape = tuple(dim_eval(d, env) for d in n.shape)
        if n.dtype.startswith("float"):
            out[n.attr("name")] = rng.standard_normal(shape).astype(n.dtype)
        else:
            out[n.attr("name")] = np.zeros(shape, dtype=n.dtype)
    return out


def run_without_side_effects(fn: Function, arrays: list[np.ndarray], keys: list[str]) -> list[np.ndarray]:
    """Call fn and put every store value it may update back as it was (the golden run of a training step)."""
    from .distributed import this_rank_only  # one rank exports: its collectives must not wait for the others

    saved = {k: fn.store[k].copy() for k in keys}
    try:
        feeds, env, _ = fn.signature.bind(tuple(arrays), {})
        with this_rank_only():
            return [np.array(a, copy=True) for a in fn.backend.run(feeds, env)]
    finally:
        for k, v in saved.items():
            fn.store[k] = v


def _npy_bytes(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(arr), allow_pickle=False)
    return buf.getvalue()


def _json_bytes(doc) -> bytes:
    return json.dumps(doc, indent=1, allow_nan=False).encode("utf-8")


def _write_zip(path: str, manifest: dict, members: dict[str, bytes]) -> None:
    """Write to a temporary file and rename it, so a crash never leaves half an artifact at `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".dlc-export-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w") as zf:
            zf.writestr(_zipinfo(MANIFEST, zipfile.ZIP_DEFLATED), _json_bytes(manifest))
            for name, data in sorted(members.items()):
                # arrays are stored uncompressed: float weights barely compress
                method = zipfile.ZIP_STORED if name.endswith(".npy") else zipfile.ZIP_DEFLATED
                zf.writestr(_zipinfo(name, method), data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _zipinfo(name: str, method: int) -> zipfile.ZipInfo:
    # a fixed timestamp makes two exports of the same function byte-identical
    info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
    info.compress_type = method
    info.external_attr = 0o644 << 16
    return info


# ----------------------------------------------------------------------------
# reading and checking


_SAFE_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


def _check_member_name(name: str) -> None:
    """Refuse a member path that is absolute, climbs out of the archive, or is not plain ASCII parts."""
    if not isinstance(name, str) or not name:
        raise ArtifactError(f"unsafe member path {name!r}: empty")
    if name.startswith("/") or "\\" in name or re.match(r"[A-Za-z]:", name):
        raise ArtifactError(f"unsafe member path {name!r}: absolute paths are not allowed in an artifact")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ArtifactError(f"unsafe member path {name!r}: '..', '.' and empty parts could escape the archive")
    if not all(_SAFE_NAME.fullmatch(p) for p in parts):
        raise ArtifactError(f"unsafe member path {name!r}: only letters, digits, '_', '.' and '-' are allowed")


@dataclass
class Artifact:
    """An opened artifact whose manifest and every member hash have been checked."""

    path: str
    manifest: dict
    members: dict[str, bytes] = field(repr=False)

    @property
    def kind(self) -> str:
        return self.manifest.get("kind", "inference")

    @property
    def target(self) -> str:
        return self.manifest["target"]

    def json(self, name: str):
        try:
            return json.loads(self.members[name].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ArtifactError(f"{self.path}: member {name!r} is not valid JSON ({e})") from None

    def array(self, name: str) -> np.ndarray:
        if name not in self.members:
            raise ArtifactError(f"{self.path}: the manifest refers to member {name!r}, which it does not list")
        try:
            return np.load(io.BytesIO(self.members[name]), allow_pickle=False)
        except ValueError as e:
            raise ArtifactError(f"{self.path}: member {name!r} is not a plain .npy array ({e}); "
                                f"object arrays are refused because loading them would unpickle") from None

    def sources(self, target: str) -> dict[str, str]:
        names = self.manifest.get("kernels", {}).get(target, [])
        prefix = f"kernels/{target}/"
        return {n[len(prefix):]: self.members[n].decode("utf-8") for n in names}


def open_artifact(path) -> Artifact:
    """Open and check an artifact: zip structure, member paths, format version, members against the manifest, hashes."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ArtifactError(f"{path}: no such artifact file")
    with open(path, "rb") as f:
        head = f.read(4)
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        if head == b"PK\x03\x04":
            raise ArtifactError(f"{path}: truncated or damaged artifact: the zip directory at the end of the file is "
                                f"missing (was the copy cut short?)") from None
        raise ArtifactError(f"{path}: not a dlc artifact: the file is not a zip archive") from None
    with zf:
        names = [i.filename for i in zf.infolist()]
        for name in names:
            _check_member_name(name)
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ArtifactError(f"{path}: member {dup[0]!r} appears twice in the archive")
        if MANIFEST not in names:
            raise ArtifactError(f"{path}: not a dlc artifact: there is no {MANIFEST}")
        manifest = _parse_manifest(path, _read_member(zf, path, MANIFEST))
        listed = manifest["members"]
        for name in listed:
            _check_member_name(name)
        extra = sorted(set(names) - set(listed) - {MANIFEST})
        if extra:
            raise ArtifactError(f"{path}: member {extra[0]!r} is in the archive but not listed in the manifest "
                                f"(the manifest does not match the members)")
        missing = sorted(set(listed) - set(names))
        if missing:
            raise ArtifactError(f"{path}: the manifest lists member {missing[0]!r}, which the archive does not have "
                                f"(the manifest does not match the members)")
        members = {name: _checked_member(zf, path, name, listed[name]) for name in sorted(listed)}
    return Artifact(path, manifest, members)


def _read_member(zf: zipfile.ZipFile, path: str, name: str) -> bytes:
    try:
        return zf.read(name)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise ArtifactError(f"{path}: member {name!r} is corrupted (the archive's own checksum failed: {e})") from None


def _checked_member(zf: zipfile.ZipFile, path: str, name: str, entry) -> bytes:
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
        raise ArtifactError(f"{path}: the manifest entry of member {name!r} has no sha256")
    size = zf.getinfo(name).file_size
    if size != entry.get("bytes"):
        raise ArtifactError(f"{path}: member {name!r} is {size} bytes, the manifest says {entry.get('bytes')} "
                            f"(the manifest does not match the members)")
    data = _read_member(zf, path, name)
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        raise ArtifactError(f"{path}: member {name!r} fails its sha256 check (manifest {entry['sha256'][:16]}..., "
                            f"file {digest[:16]}...): it was modified after export")
    return data


def _parse_manifest(path: str, data: bytes) -> dict:
    try:
        m = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: {MANIFEST} is not valid JSON ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a dlc artifact: {MANIFEST} does not say format {FORMAT!r}")
    version = m.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ArtifactError(f"{path}: {MANIFEST} has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise ArtifactError(f"{path}: the artifact has format version {version}, newer than this dlc reads "
                            f"(up to {FORMAT_VERSION}); it was written by dlc {m.get('versions', {}).get('dlc')}: "
                            f"upgrade dlc to load it")
    for key in ("target", "members", "signature"):
        if key not in m:
            raise ArtifactError(f"{path}: {MANIFEST} has no {key!r} entry")
    if not isinstance(m["members"], dict):
        raise ArtifactError(f"{path}: {MANIFEST}: 'members' must map member names to their hashes")
    return m


# ----------------------------------------------------------------------------
# load


def load(path, verify: bool = False, target: str | None = None) -> Function:
    """Rebuild the compiled function stored at `path`, over a fresh Store holding the artifact's weights.

    Every member's sha256 is checked first. target overrides the artifact's
    target (its compile options are kept only when the target is the same).
    verify=True runs the golden self-test (on a copy of the weights' state).
    The result is a dlc.Function; `fn.artifact` describes where it came from.
    """
    art = open_artifact(path)
    fn = build_function(art, target)
    if verify:
        verify_golden(fn, art)
    return fn


def build_function(art: Artifact, target: str | None = None) -> Function:
    doc = art.json(GRAPH)
    consts = doc.get("consts", {})
    if not isinstance(consts, dict):
        raise ArtifactError(f"{art.path}: graph.json: 'consts' must be a map")
    arrays = {key: art.array(member) for key, member in consts.items()}
    _, dec = graph_from_json(doc, arrays)
    store = Store()
    for key, w in art.manifest.get("weights", {}).items():
        if store.add(key, art.array(w["member"]), trainable=bool(w.get("trainable", True))) != key:
            raise ArtifactError(f"{art.path}: weight {key!r} is listed twice")
    _check_weights(art, dec.nodes, store)
    spec = doc.get("function", {})
    try:
        inputs = [dec.node(i) for i in spec["inputs"]]
        outputs = _structured([Tensor(dec.node(i)) for i in spec["outputs"]], spec["structure"], dec)
        updates = [(_param_node(dec, k), dec.node(i)) for k, i in spec["updates"]]
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"{art.path}: graph.json: the function's wiring is malformed ({e})") from None
    same_target = target is None or target == art.target
    options = _decode_options(art.manifest.get("options", {})) if same_target else {}
    for key in LOCAL_OPTIONS:  # paths on the exporting machine mean nothing here
        options.pop(key, None)
    fn = Function(outputs, inputs=[Tensor(n) for n in inputs], updates=updates,
                  target=art.target if target is None else target, store=store, **options)
    fn.artifact = ArtifactInfo.of(art, fn)
    return fn


def _check_weights(art: Artifact, nodes: list[Node], store: Store) -> None:
    """Every array a param node reads has the node's shape and dtype: native code trusts them."""
    for n in nodes:
        if n.op != "param":
            continue
        key = n.attr("name")
        if key not in store:
            raise ArtifactError(f"{art.path}: the graph reads weight {key!r}, which the artifact does not carry")
        w = store[key]
        if w.shape != n.shape or w.dtype.name != n.dtype:
            raise ArtifactError(f"{art.path}: weight {key!r} is {w.dtype.name}{w.shape}, but the graph reads it as "
                                f"{n.dtype}{shape_str(n.shape)}")


def _param_node(dec: GraphDecoder, key: str) -> Node:
    for n in dec.nodes:
        if n.op == "param" and n.attr("name") == key:
            return n
    raise ArtifactError(f"graph.json: update of {key!r}, which no param node reads")


def _structured(tensors: list[Tensor], structure, dec: GraphDecoder):
    if structure == "single":
        if len(tensors) != 1:
            raise ArtifactError("graph.json: a single output is recorded, but there are several")
        return tensors[0]
    if structure == "list":
        return list(tensors)
    if structure == "tuple":
        return tuple(tensors)
    if isinstance(structure, dict) and "dict" in structure:
        keys = dec.decode_value(structure["dict"])
        return dict(zip(keys, tensors))
    raise ArtifactError(f"graph.json: unknown output structure {structure!r}")


@dataclass
class ArtifactInfo:
    """What a loaded function came from: the file, its manifest, and whether its kernels were regenerated alike."""

    path: str
    manifest: dict
    kernels_match: bool | None  # None when there is nothing to compare (reference target, or another target)

    @classmethod
    def of(cls, art: Artifact, fn: Function) -> ArtifactInfo:
        stored = art.sources(fn.target)
        regenerated = backend_sources(fn)
        match = (stored == regenerated) if stored and regenerated else None
        if match is False:
            logging.getLogger("dlc").warning(
                "dlc: %s: this dlc generates other %s kernels than the artifact stores (written by dlc %s); "
                "it runs its own", art.path, fn.target, art.manifest.get("versions", {}).get("dlc"))
        return cls(art.path, art.manifest, match)


def verify_golden(fn: Function, art: Artifact) -> None:
    """Run the golden inputs and compare: bit for bit on the artifact's target, to float tolerance on another."""
    golden = art.manifest.get("golden") or {}
    if not golden:
        raise ArtifactError(f"{art.path}: the artifact carries no golden input/output pair to verify")
    inputs = [art.array(m) for m in golden["inputs"]]
    expected = [art.array(m) for m in golden["outputs"]]
    got = run_without_side_effects(fn, inputs, list(art.manifest.get("weights", {})))
    exact = golden.get("target") == fn.target
    for i, (e, g) in enumerate(zip(expected, got)):
        ok = e.shape == g.shape and e.dtype == g.dtype and (
            np.array_equal(e, g, equal_nan=e.dtype.kind == "f") if exact else
            np.allclose(g, e, rtol=1e-4, atol=1e-5, equal_nan=True))
        if not ok:
            diff = _describe_difference(e, g)
            raise ArtifactError(f"{art.path}: golden self-test failed on output {i}: {diff} "
                                f"({'bit-exact' if exact else 'tolerance'} check, target {fn.target})")


def _describe_difference(e: np.ndarray, g: np.ndarray) -> str:
    if e.shape != g.shape or e.dtype != g.dtype:
        return f"expected {e.dtype}{e.shape}, got {g.dtype}{g.shape}"
    err = np.max(np.abs(e.astype(np.float64) - g.astype(np.float64))) if e.size else 0.0
    return f"max abs difference {err:.3g}"


def describe(art: Artifact) -> str:
    """A few lines about an artifact: kind, target, versions, signature, weights, members."""
    m = art.manifest
    sig = m["signature"]
    lines = [f"{art.path}: dlc artifact, format {m['format_version']}, {m.get('kind')} function, target "
             f"{m['target']}",
             "  written by " + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()),
             "  inputs:  " + ", ".join(f"{i['name']}: {i['dtype']}{shape_str(tuple(i['shape']))}"
                                       for i in sig["inputs"]),
             "  outputs: " + ", ".join(f"{o['dtype']}{shape_str(tuple(o['shape']))}" for o in sig["outputs"])]
    if sig.get("symbols"):
        lines.append("  symbols: " + ", ".join(_describe_symbol(s, r) for s, r in sig["symbols"].items()))
    weights = m.get("weights", {})
    nbytes = sum(len(art.members[w["member"]]) for w in weights.values())
    lines.append(f"  weights: {len(weights)} arrays, {nbytes / 1e6:.2f} MB")
    for t, names in m.get("kernels", {}).items():
        lines.append(f"  kernels ({t}): " + ", ".join(names))
    options = _decode_options(m.get("options", {}))
    flags = m.get("backend_flags") or {}
    if options or flags:
        lines.append(f"  options: {options or {}}" + (f", backend flags: {flags}" if flags else ""))
    return "\n".join(lines)


def _describe_symbol(s: str, r: dict) -> str:
    lo, hi = r.get("min"), r.get("max")
    if lo is None and hi is None:
        return s
    return f"{lo if lo is not None else ''} <= {s} <= {hi if hi is not None else ''}".strip()


__all__ = ["export", "load", "open_artifact", "Artifact", "ArtifactInfo", "example_inputs", "FORMAT_VERSION"]
