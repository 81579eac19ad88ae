"""The compiled-artifact format: `dlc.export` writes one zip file, `dlc.load` checks it and rebuilds the function.

Layout of an artifact (format version 1; docs/artifact.md is the full spec):

    manifest.json           format and versions, target and compile flags, the
                            signature, and the sha256 and size of every other member
    integrity.json          the sha256 of manifest.json, and with a key the HMAC-SHA256
                            of the manifest and every member (the signature)
    graph.json              the node table (dlc/serialize.py) and the function's
                            inputs, outputs and parameter updates
    consts/<i>.npy          constant arrays of graph nodes
    weights/<key>.npy       everything the graph reads from its Store
    kernels/<target>/<name> generated kernel source, as the backend reported it
    golden/inputs/<name>.npy, golden/outputs/<i>.npy   a small self-test pair

Nothing is ever unpickled (.npy members are parsed here: plain numeric arrays
only, JSON) and no code from the file is run: the loader rebuilds the kernels
from the graph with this dlc's own code generator, from names, locations and
attributes checked by type and form (dlc/serialize.py), and stored sources are
only compared against them. Sizes are capped before anything is decompressed.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import math
import os
import platform
import re
import secrets
import zipfile
import zlib
from dataclasses import dataclass, field

import numpy as np

from .compiler import Function
from .errors import ArtifactError, DlcError
from .graph import DTYPES, Node, dim_eval, shape_str, symbols_of
from .serialize import _NAME, GraphDecoder, GraphEncoder, _shape, graph_from_json, graph_to_json
from .store import Store
from .tensor import Tensor

FORMAT = "dlc-artifact"
FORMAT_VERSION = 2      # 2: integrity.json (the manifest's hash, the optional signature)
MANIFEST = "manifest.json"
INTEGRITY = "integrity.json"
GRAPH = "graph.json"
HMAC_CONTEXT = b"dlc-artifact hmac-sha256 v1\n"
# what reading an artifact may cost, unless load() is told otherwise
MAX_BYTES = 2 << 30          # all members, uncompressed
MAX_RATIO = 200              # uncompressed / compressed size of a member bigger than RATIO_FREE_BYTES
RATIO_FREE_BYTES = 1 << 20
MAX_MEMBERS = 100_000
MAX_JSON_BYTES = 256 << 20   # manifest.json, graph.json
GOLDEN_BATCH = 2
# compile options that name places on the exporting machine: recorded, not applied on load
LOCAL_OPTIONS = ("dump", "cache")


# ----------------------------------------------------------------------------
# export


def export(fn: Function, path, golden_inputs=None, key=None) -> str:
    """Write `fn` (inference or training step) to one artifact file at `path`; returns the path.

    golden_inputs: the inputs of the self-test pair (a dict by input name, or a
    list in call order); by default generated from the signature with every
    symbolic dim set to 2. The golden run does not change the function's store.
    key (bytes or str): sign the artifact with HMAC-SHA256 under this secret;
    `load(path, key=...)` then accepts it and refuses anything else.
    """
    fn = as_function(fn)
    members: dict[str, bytes] = {}
    doc, keys = _function_doc(fn, members)
    members[GRAPH] = _json_bytes(doc)
    for name in keys:
        members[f"weights/{name}.npy"] = _npy_bytes(fn.store[name])
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
        "members": member_hashes(members),
    }
    write_artifact(os.fspath(path), manifest, members, key=key)
    return os.fspath(path)


def member_hashes(members: dict[str, bytes]) -> dict:
    """The manifest's "members" entry: the sha256 and size of each member."""
    return {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            for name, data in sorted(members.items())}


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
    inner = shaped.values() if isinstance(shaped, dict) else shaped if isinstance(shaped, (list, tuple)) else []
    if any(not isinstance(i, int) for i in inner):  # dlc.compile_steps of steps returning lists or dicts
        raise TypeError("an artifact keeps one level of output structure; this function returns nested lists, "
                        "tuples or dicts (give each step of dlc.compile_steps a single Tensor as its output)")
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
            out[str(k)] = {"$": "unrecorded", "v": re.sub(r"[^\x20-\x7e]", "?", repr(v))[:200]}
    return out


def _decode_options(doc) -> dict:
    """The options a manifest records (already checked by `check_manifest`), minus those recorded by repr only."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in doc.items() if not _is_unrecorded(v)}


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


def write_artifact(path, manifest: dict, members: dict[str, bytes], key=None) -> None:
    """Write manifest.json, integrity.json (signed with `key` when given) and the members to one zip file.

    The manifest is written as given (its "members" entry is the caller's).
    Written to a temporary file and renamed, so a crash never leaves half an
    artifact at `path`; the file's mode follows the umask, like any file.
    """
    path = os.fspath(path)
    manifest_bytes = _json_bytes(manifest)
    integrity = {"manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest()}
    if key is not None:
        integrity["hmac_sha256"] = _hmac(_key_bytes(key), manifest_bytes, members)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".dlc-export-{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    try:
        with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w") as zf:
            zf.writestr(_zipinfo(MANIFEST, zipfile.ZIP_DEFLATED), manifest_bytes)
            zf.writestr(_zipinfo(INTEGRITY, zipfile.ZIP_DEFLATED), _json_bytes(integrity))
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


def _key_bytes(key) -> bytes:
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise TypeError(f"an artifact key is bytes or str, got {type(key).__name__}")
    if len(key) == 0:
        raise ValueError("an artifact key must not be empty")
    return bytes(key)


def _hmac(key: bytes, manifest_bytes: bytes, members: dict[str, bytes]) -> str:
    """HMAC-SHA256 over the manifest and every member (by name and sha256), in name order."""
    mac = hmac.new(key, HMAC_CONTEXT, hashlib.sha256)
    mac.update(hashlib.sha256(manifest_bytes).digest())
    for name in sorted(members):
        mac.update(name.encode("utf-8") + b"\0" + hashlib.sha256(members[name]).digest())
    return mac.hexdigest()


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
    signed: bool = False  # verified against a key

    @property
    def kind(self) -> str:
        return self.manifest.get("kind", "inference")

    @property
    def target(self) -> str:
        return self.manifest["target"]

    def json(self, name: str):
        return _parse_json(self.path, name, self.member(name))

    def member(self, name: str) -> bytes:
        if not isinstance(name, str) or name not in self.members:
            raise ArtifactError(f"{self.path}: the manifest refers to member {name!r:.80}, which it does not list")
        return self.members[name]

    def array(self, name: str) -> np.ndarray:
        """A member as a native-endian C-ordered array of one of dlc's dtypes (see `read_npy`)."""
        try:
            return read_npy(self.member(name))
        except ValueError as e:
            raise ArtifactError(f"{self.path}: member {name!r} is not a plain .npy array: {e}") from None

    def sources(self, target: str) -> dict[str, str]:
        names = self.manifest.get("kernels", {}).get(target, [])
        prefix = f"kernels/{target}/"
        out = {}
        for n in names:
            if not n.startswith(prefix):
                raise ArtifactError(f"{self.path}: kernel member {n!r:.80} is not under {prefix}")
            try:
                out[n[len(prefix):]] = self.member(n).decode("utf-8")
            except UnicodeDecodeError:
                raise ArtifactError(f"{self.path}: kernel member {n!r} is not UTF-8 text") from None
        return out


def read_npy(data: bytes) -> np.ndarray:
    """A .npy file's array, parsed here: a header and raw numbers of one of dlc's dtypes, nothing else.

    Never unpickles (object arrays are refused), refuses structured and other
    dtypes, checks that the data is exactly as long as the header says before
    allocating anything, and converts big-endian data to native byte order.
    Raises ValueError saying what is wrong.
    """
    f = io.BytesIO(data)
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        reader = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
        if reader is None:
            raise ValueError(f".npy format version {version} is not read here")
        shape, fortran, dtype = reader(f)
    except (ValueError, OSError, SyntaxError, TypeError) as e:
        raise ValueError(f"its header is malformed ({e})") from None
    if dtype.hasobject:
        raise ValueError("it holds Python objects; object arrays are refused because loading them would unpickle")
    native = dtype.newbyteorder("=") if dtype.byteorder in "<>" else dtype
    if dtype.names is not None or dtype.subdtype is not None or native.name not in DTYPES:
        raise ValueError(f"its dtype {dtype.str} is not one of {', '.join(DTYPES)}")
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(f"its shape {shape!r:.80} is not a tuple of sizes")
    count = math.prod(shape)
    if count * dtype.itemsize != len(data) - f.tell():
        raise ValueError(f"its header says {dtype.str}{shape} ({count * dtype.itemsize} bytes), the data has "
                         f"{len(data) - f.tell()} bytes")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=f.tell()).reshape(shape, order="F" if fortran else "C")
    return np.ascontiguousarray(arr.astype(native, copy=False)) if native != dtype else np.array(arr, order="C")


def open_artifact(path, key=None, max_bytes: int = MAX_BYTES, max_ratio: float = MAX_RATIO) -> Artifact:
    """Open and check an artifact: zip structure and sizes, member paths, the signature when a key is given,
    the manifest's hash and form, members against the manifest, their hashes.

    key: refuse the file unless it is signed with this key (see `export`).
    max_bytes, max_ratio: refuse an archive whose members uncompress to more
    than max_bytes in all, or a member bigger than 1 MiB that expands more than
    max_ratio times (a zip bomb); both are checked before anything is read.
    """
    path = os.fspath(path)
    raw = _read_archive(path, max_bytes, max_ratio)
    if key is not None:
        _check_signature(path, raw, _key_bytes(key))
    manifest_bytes = raw.pop(MANIFEST)
    integrity = raw.pop(INTEGRITY, None)
    manifest = _parse_manifest(path, manifest_bytes)
    if manifest["format_version"] >= 2:
        _check_manifest_hash(path, manifest_bytes, integrity)
    elif integrity is not None:
        raise ArtifactError(f"{path}: member {INTEGRITY!r} is in a format version 1 artifact, which has none")
    listed = manifest["members"]
    extra = sorted(set(raw) - set(listed))
    if extra:
        raise ArtifactError(f"{path}: member {extra[0]!r} is in the archive but not listed in the manifest "
                            f"(the manifest does not match the members)")
    missing = sorted(set(listed) - set(raw))
    if missing:
        raise ArtifactError(f"{path}: the manifest lists member {missing[0]!r}, which the archive does not have "
                            f"(the manifest does not match the members)")
    for name in sorted(listed):
        _check_member(path, name, listed[name], raw[name])
    return Artifact(path, manifest, raw, signed=key is not None)


def _read_archive(path: str, max_bytes: int, max_ratio: float) -> dict[str, bytes]:
    """Every member's bytes, by name, after checking names and sizes in the zip directory."""
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
    except (OSError, ValueError, EOFError) as e:
        raise ArtifactError(f"{path}: truncated or damaged artifact ({e})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise ArtifactError(f"{path}: the archive has {len(infos)} members, more than {MAX_MEMBERS}")
        names = [i.filename for i in infos]
        for name in names:
            _check_member_name(name)
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ArtifactError(f"{path}: member {dup[0]!r} appears twice in the archive")
        if MANIFEST not in names:
            raise ArtifactError(f"{path}: not a dlc artifact: there is no {MANIFEST}")
        _check_sizes(path, infos, max_bytes, max_ratio)
        return {i.filename: _read_member(zf, path, i) for i in infos}


def _check_sizes(path: str, infos: list[zipfile.ZipInfo], max_bytes: int, max_ratio: float) -> None:
    """Refuse a zip bomb from the sizes its directory declares (reading never yields more than declared)."""
    total = sum(i.file_size for i in infos)
    if total > max_bytes:
        raise ArtifactError(f"{path}: the members uncompress to {total} bytes, more than the {max_bytes} allowed "
                            f"(pass max_bytes= to dlc.load to allow more)")
    for i in infos:
        if i.file_size > RATIO_FREE_BYTES and i.file_size > max_ratio * max(i.compress_size, 1):
            raise ArtifactError(f"{path}: member {i.filename!r} expands from {i.compress_size} to {i.file_size} "
                                f"bytes, more than {max_ratio} times (a zip bomb?; pass max_ratio= to allow it)")
        limit = 4096 if i.filename == INTEGRITY else MAX_JSON_BYTES
        if i.filename in (MANIFEST, GRAPH, INTEGRITY) and i.file_size > limit:
            raise ArtifactError(f"{path}: {i.filename} is {i.file_size} bytes, more than {limit}")


def _read_member(zf: zipfile.ZipFile, path: str, info: zipfile.ZipInfo) -> bytes:
    try:
        with zf.open(info) as f:
            data = f.read(info.file_size + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, OSError, ValueError) as e:
        raise ArtifactError(f"{path}: member {info.filename!r} is corrupted (the archive's own checksum failed: "
                            f"{e})") from None
    if len(data) != info.file_size:
        raise ArtifactError(f"{path}: member {info.filename!r} is corrupted (it is not as long as the archive says)")
    return data


def _check_signature(path: str, raw: dict[str, bytes], key: bytes) -> None:
    """With a key, the file must carry an HMAC of its manifest and members under that key: checked before
    anything in it is parsed (integrity.json is read only for the HMAC's hex digits)."""
    doc = _parse_json(path, INTEGRITY, raw[INTEGRITY]) if INTEGRITY in raw else None
    given = doc.get("hmac_sha256") if isinstance(doc, dict) else None
    if not isinstance(given, str) or not re.fullmatch(r"[0-9a-f]{64}", given):
        raise ArtifactError(f"{path}: the artifact is not signed, and a key was given: refused (it was exported "
                            f"without key=, or its signature was removed)")
    members = {n: b for n, b in raw.items() if n not in (MANIFEST, INTEGRITY)}
    want = _hmac(key, raw[MANIFEST], members)
    if not hmac.compare_digest(want, given):
        raise ArtifactError(f"{path}: the artifact's signature does not match this key: it was signed with another "
                            f"key, or changed after it was signed")


def _check_manifest_hash(path: str, manifest_bytes: bytes, integrity: bytes | None) -> None:
    if integrity is None:
        raise ArtifactError(f"{path}: the artifact has no {INTEGRITY} (format version 2 and later have one)")
    doc = _parse_json(path, INTEGRITY, integrity)
    want = doc.get("manifest_sha256") if isinstance(doc, dict) else None
    got = hashlib.sha256(manifest_bytes).hexdigest()
    if not isinstance(want, str) or not hmac.compare_digest(want, got):
        raise ArtifactError(f"{path}: {MANIFEST} fails its sha256 check ({INTEGRITY} says {str(want)[:16]}..., "
                            f"file {got[:16]}...): it was modified after export")


def _check_member(path: str, name: str, entry, data: bytes) -> None:
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
        raise ArtifactError(f"{path}: the manifest entry of member {name!r} has no sha256")
    if len(data) != entry.get("bytes"):
        raise ArtifactError(f"{path}: member {name!r} is {len(data)} bytes, the manifest says "
                            f"{entry.get('bytes')!r:.40} (the manifest does not match the members)")
    digest = hashlib.sha256(data).hexdigest()
    if not hmac.compare_digest(digest, entry["sha256"]):
        raise ArtifactError(f"{path}: member {name!r} fails its sha256 check (manifest {entry['sha256'][:16]}..., "
                            f"file {digest[:16]}...): it was modified after export")


def _parse_json(path: str, name: str, data: bytes):
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: member {name!r} is not valid JSON ({e})") from None
    except RecursionError:
        raise ArtifactError(f"{path}: member {name!r} is nested too deeply to be an artifact's JSON") from None


def _parse_manifest(path: str, data: bytes) -> dict:
    m = _parse_json(path, MANIFEST, data)
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a dlc artifact: {MANIFEST} does not say format {FORMAT!r}")
    version = m.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ArtifactError(f"{path}: {MANIFEST} has an invalid format_version {version!r:.40}")
    if version > FORMAT_VERSION:
        versions = m.get("versions") if isinstance(m.get("versions"), dict) else {}
        raise ArtifactError(f"{path}: the artifact has format version {version}, newer than this dlc reads "
                            f"(up to {FORMAT_VERSION}); it was written by dlc {str(versions.get('dlc'))[:20]}: "
                            f"upgrade dlc to load it")
    for key in ("target", "members", "signature"):
        if key not in m:
            raise ArtifactError(f"{path}: {MANIFEST} has no {key!r} entry")
    if not isinstance(m["members"], dict):
        raise ArtifactError(f"{path}: {MANIFEST}: 'members' must map member names to their hashes")
    try:
        check_manifest(m)
    except ArtifactError as e:
        raise ArtifactError(f"{path}: {MANIFEST}: {e}") from None
    return m


# ----------------------------------------------------------------------------
# the manifest's form


def _is_bool(v) -> bool:
    return isinstance(v, bool)


def _is_int_in(lo: int, hi: int):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _is_text_or_none(v) -> bool:
    return v is None or (isinstance(v, str) and len(v) <= 4096)


def _is_gemm_tiles(v) -> bool:
    return v is None or (isinstance(v, list) and len(v) <= 8 and all(t in ("s", "m", "l") for t in v))


def _is_unrecorded(v) -> bool:
    return isinstance(v, dict) and set(v) == {"$", "v"} and v["$"] == "unrecorded" and isinstance(v["v"], str) \
        and _KEY.fullmatch(v["v"] or " ") is not None  # a repr, shown by describe(): printable ASCII only


# Every compile option an artifact may carry, with its type. A backend that grows an option adds it here; an
# option not listed is refused on load. dump and cache are recorded but never applied (LOCAL_OPTIONS); device
# has no JSON form and is recorded by its repr only.
COMPILE_OPTIONS = {
    "fastmath": _is_bool, "parallel": _is_bool, "emulate": lambda v: _is_bool(v) or v in ("small", "h100"),
    "simplify": _is_bool, "fuse": _is_bool, "reassociate": _is_bool, "duplicate": _is_bool, "schedule": _is_bool,
    "max_group": _is_int_in(1, 1 << 20), "max_plans": _is_int_in(1, 1 << 20),
    "gemm_tiles": _is_gemm_tiles,
    "dump": _is_text_or_none, "cache": _is_text_or_none,
    "device": _is_unrecorded,
}
_KINDS = ("inference", "training")
_VERSION = re.compile(r"[A-Za-z0-9_.+\-]{0,64}")
_MEMBER = re.compile(r"[A-Za-z0-9_.\-/]{1,400}")
_KEY = re.compile(r"[\x20-\x7e]{1,200}")   # an output dict's key: never rendered into source, only returned


def check_manifest(m: dict) -> None:
    """Every entry the loader or `describe` reads has its type and form: ArtifactError naming the first that
    does not. Text that is shown (versions, names) is plain; options are known ones of their types."""
    from .compiler import TARGETS

    listed = m["members"]  # every member a manifest entry names must be one it lists
    _need(m["target"] in TARGETS, f"'target' must be one of {', '.join(TARGETS)}, got {m['target']!r:.80}")
    _need(m.get("kind", "inference") in _KINDS, f"'kind' must be one of {', '.join(_KINDS)}")
    for name, entry in m["members"].items():
        _need(isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
              and re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]) is not None
              and _is_int_in(0, 1 << 62)(entry.get("bytes")), f"the entry of member {name!r:.80} is not "
                                                               f"{{sha256: 64 hex digits, bytes: a size}}")
    options = m.get("options", {})
    _need(isinstance(options, dict), "'options' must be a map")
    for k, v in options.items():
        check = COMPILE_OPTIONS.get(k)
        _need(check is not None, f"unknown compile option {k!r:.80} (this dlc knows {', '.join(COMPILE_OPTIONS)})")
        _need(check(v) or (_is_unrecorded(v) and k not in ("fastmath", "parallel", "emulate")),
              f"compile option {k!r} has a value of the wrong type: {v!r:.80}")
    flags = m.get("backend_flags", {})
    _need(isinstance(flags, dict) and all(_NAME.fullmatch(k) and (_is_scalar(v) or _is_unrecorded(v))
                                          for k, v in flags.items()), "'backend_flags' must map names to values")
    versions = m.get("versions", {})
    _need(isinstance(versions, dict) and all(_NAME.fullmatch(k) and (v is None or (isinstance(v, str) and
                                                                                   _VERSION.fullmatch(v)))
                                             for k, v in versions.items()), "'versions' must map names to versions")
    _check_signature_doc(m["signature"])
    weights = m.get("weights", {})
    _need(isinstance(weights, dict), "'weights' must be a map")
    for k, w in weights.items():
        _need(_NAME.fullmatch(k) is not None, f"weight name {k!r:.80} is not a plain name")
        _need(isinstance(w, dict) and _is_member(w.get("member"), listed) and _is_bool(w.get("trainable", True)),
              f"weight {k!r} must be {{member: a member name, trainable: a bool}}")
    kernels = m.get("kernels", {})
    _need(isinstance(kernels, dict) and all(t in TARGETS and _are_members(v, listed) for t, v in kernels.items()),
          "'kernels' must map targets to lists of listed members")
    golden = m.get("golden") or {}
    _need(isinstance(golden, dict), "'golden' must be a map")
    if golden:
        _need(golden.get("target") in TARGETS and _are_members(golden.get("inputs"), listed)
              and _are_members(golden.get("outputs"), listed),
              "'golden' must be {target, inputs: listed members, outputs: listed members}")


def _are_members(v, listed: dict) -> bool:
    return isinstance(v, list) and all(_is_member(n, listed) for n in v)


def _check_signature_doc(sig) -> None:
    _need(isinstance(sig, dict) and isinstance(sig.get("inputs"), list) and isinstance(sig.get("outputs"), list),
          "'signature' must hold lists of inputs and outputs")
    for i in sig["inputs"]:
        _need(isinstance(i, dict) and isinstance(i.get("name"), str) and _NAME.fullmatch(i["name"]) is not None,
              f"a signature input must have a plain name, got {i!r:.80}")
    for i in sig["inputs"] + sig["outputs"]:
        _need(isinstance(i, dict) and i.get("dtype") in DTYPES + ("tuple",), f"a signature dtype is wrong: {i!r:.80}")
        try:
            _shape(i.get("shape"), "a signature shape")
        except ArtifactError as e:
            raise ArtifactError(str(e)) from None
    symbols = sig.get("symbols", {})
    _need(isinstance(symbols, dict), "'symbols' must be a map")
    for s, r in symbols.items():
        _need(_NAME.fullmatch(s) is not None and isinstance(r, dict)
              and all(r.get(k) is None or _is_int_in(0, 1 << 62)(r.get(k)) for k in ("min", "max")),
              f"symbol {s!r:.40} must have a range {{min, max}} of sizes or nulls")


def _is_scalar(v) -> bool:
    return v is None or isinstance(v, (bool, int, float)) or (isinstance(v, str) and _VERSION.fullmatch(v) is not None)


def _is_member(v, listed: dict) -> bool:
    """v names a member, one the manifest lists."""
    return isinstance(v, str) and _MEMBER.fullmatch(v) is not None and v in listed


def _need(ok, message: str) -> None:
    if not ok:
        raise ArtifactError(message)


# ----------------------------------------------------------------------------
# load


def load(path, verify: bool = False, target: str | None = None, key=None, max_bytes: int = MAX_BYTES,
         max_ratio: float = MAX_RATIO) -> Function:
    """Rebuild the compiled function stored at `path`, over a fresh Store holding the artifact's weights.

    Every member's sha256 is checked first (and with `key`, the artifact's
    HMAC signature, before anything else). target overrides the artifact's
    target (its compile options are kept only when the target is the same).
    verify=True runs the golden self-test (on a copy of the weights' state).
    max_bytes / max_ratio cap what the archive may uncompress to (see
    `open_artifact`). Anything wrong with the file is an ArtifactError.
    The result is a dlc.Function; `fn.artifact` describes where it came from.
    """
    art = open_artifact(path, key=key, max_bytes=max_bytes, max_ratio=max_ratio)
    fn = build_function(art, target)
    if verify:
        verify_golden(fn, art)
    return fn


def build_function(art: Artifact, target: str | None = None) -> Function:
    """The function an opened artifact describes; whatever in its graph or wiring is malformed is an ArtifactError
    (a bug of this dlc's own, or a missing backend, keeps its own error type)."""
    try:
        return _build_function(art, target)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RecursionError) as e:
        raise ArtifactError(f"{art.path}: the artifact's graph or wiring is malformed: {type(e).__name__}: "
                            f"{str(e)[:300]}") from e


def _build_function(art: Artifact, target: str | None) -> Function:
    doc = art.json(GRAPH)
    if not isinstance(doc, dict):
        raise ArtifactError(f"{art.path}: graph.json must be a JSON object")
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
    if not isinstance(spec, dict):
        raise ArtifactError(f"{art.path}: graph.json: 'function' must be a map")
    try:
        inputs = [dec.node(i) for i in spec["inputs"]]
        outputs = _structured([Tensor(dec.node(i)) for i in spec["outputs"]], spec["structure"], dec)
        updates = [(_param_node(dec, k), dec.node(i)) for k, i in spec["updates"]]
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"{art.path}: graph.json: the function's wiring is malformed ({e})") from None
    if not all(n.op == "input" for n in inputs) or len({id(n) for n in inputs}) != len(inputs):
        raise ArtifactError(f"{art.path}: graph.json: the function's inputs must be distinct input nodes")
    same_target = target is None or target == art.target
    options = _decode_options(art.manifest.get("options", {})) if same_target else {}
    for key in LOCAL_OPTIONS:  # paths on the exporting machine mean nothing here
        options.pop(key, None)
    try:
        fn = Function(outputs, inputs=[Tensor(n) for n in inputs], updates=updates,
                      target=art.target if target is None else target, store=store, **options)
    except DlcError:
        raise
    except Exception as e:  # noqa: BLE001  (a checked graph this dlc still cannot compile: the file is at fault)
        raise ArtifactError(f"{art.path}: this dlc cannot compile the artifact's graph: {type(e).__name__}: "
                            f"{str(e)[:300]}") from e
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
        if not isinstance(keys, tuple) or len(keys) != len(tensors) or len(set(keys)) != len(keys) or not all(
                (isinstance(k, str) and _KEY.fullmatch(k)) or (isinstance(k, int) and not isinstance(k, bool))
                for k in keys):
            raise ArtifactError("graph.json: the output dict's keys must be distinct plain names, one per output")
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
    if len(inputs) != len(fn.inputs) or len(expected) != len(fn.outputs):
        raise ArtifactError(f"{art.path}: the golden pair has {len(inputs)} inputs and {len(expected)} outputs, the "
                            f"function {len(fn.inputs)} and {len(fn.outputs)}")
    try:
        got = run_without_side_effects(fn, inputs, list(art.manifest.get("weights", {})))
    except (DlcError, TypeError, ValueError, IndexError) as e:
        raise ArtifactError(f"{art.path}: golden self-test failed: the golden inputs do not run ({e})") from e
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
    nbytes = sum(len(art.member(w["member"])) for w in weights.values())
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
