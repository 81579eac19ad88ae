"""Reading an ONNX model safely: parse, check opsets and sizes, decode tensors, confine external data.

Everything in an ONNX file is data. Tensors are decoded only after their
byte counts are checked against their dims; external data is read only from
files inside the model's directory; nodes are put in dependency order, and a
cycle is an error.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import OnnxImportError, UnsupportedError

MIN_OPSET, MAX_OPSET = 7, 28   # default-domain opsets the importer accepts (see docs/onnx.md)
MAX_DIM = 2**31 - 1            # a larger dim (say 10**12) is refused before anything is allocated
MAX_ELEMENTS = 2**31           # elements of one tensor

# ONNX TensorProto.DataType -> numpy dtype dlc computes in (others are refused by name)
DTYPES = {1: "float32", 11: "float64", 6: "int32", 7: "int64", 9: "bool"}
# narrower types, computed in a wider dlc dtype that holds each of their values exactly (a graph input/output
# is converted at the call's boundary); the names past float16 are ml_dtypes', which onnx itself uses
CONST_ONLY = {2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 10: "float16", 12: "uint32", 16: "bfloat16",
              17: "float8_e4m3fn", 18: "float8_e4m3fnuz", 19: "float8_e5m2", 20: "float8_e5m2fnuz", 21: "uint4",
              22: "int4", 23: "float4_e2m1fn", 24: "float8_e8m0fnu", 25: "uint2", 26: "int2"}
WIDENED = {name: "int64" if name[0] in "ui" else "float32" for name in CONST_ONLY.values()}
# the ml_dtypes types packed several to a byte in a TensorProto: elements per byte
PACKED = {"uint4": 2, "int4": 2, "float4_e2m1fn": 2, "uint2": 4, "int2": 4}


def onnx_module():
    try:
        import onnx
    except ImportError:
        raise ImportError("dlc.onnx needs the onnx package: pip install 'dlc[onnx]'") from None
    return onnx


def type_name(code: int) -> str:
    onnx = onnx_module()
    try:
        return onnx.TensorProto.DataType.Name(code)
    except ValueError:
        return f"type {code}"


def dtype_of(code: int, what: str, widen: bool = True) -> str:
    """The dlc dtype an ONNX element type computes in (a narrow one in its wider dlc type)."""
    if code in DTYPES:
        return DTYPES[code]
    if widen and code in CONST_ONLY:
        return WIDENED[CONST_ONLY[code]]
    why = {13: " (no dlc dtype holds every uint64 value: int64 stops at 2**63-1, float64 rounds above 2**53)",
           8: " (strings are not numbers)"}.get(code, "")
    raise UnsupportedError(f"{what} has element type {type_name(code)}{why}; dlc computes in "
                           f"{', '.join(type_name(c) for c in DTYPES)} and the types that widen exactly into "
                           f"them ({', '.join(type_name(c) for c in CONST_ONLY)})")


# ----------------------------------------------------------------------------
# the model file


def read_model(source):
    """A ModelProto from a path or a ModelProto, and the directory its external data may come from."""
    onnx = onnx_module()
    if isinstance(source, onnx.ModelProto):
        return source, None
    path = os.fspath(source)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise OnnxImportError(f"cannot read ONNX model {path!r}: {e.strerror}") from None
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as e:  # noqa: BLE001  (protobuf raises DecodeError and friends)
        raise OnnxImportError(f"{path}: not an ONNX model (the protobuf does not parse: {e})") from None
    if not model.HasField("graph") or model.ir_version <= 0 or not model.opset_import:
        raise OnnxImportError(f"{path}: not an ONNX model (no graph, IR version or opset import)")
    return model, os.path.dirname(os.path.realpath(path))


def default_opset(model) -> int:
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise UnsupportedError("the model imports no default-domain (ai.onnx) opset")
    v = int(max(versions))
    if v > MAX_OPSET:
        raise UnsupportedError(f"the model uses opset {v}, newer than the newest dlc supports ({MAX_OPSET})")
    if v < 1:
        raise OnnxImportError(f"invalid opset version {v}")
    return v


# ----------------------------------------------------------------------------
# tensors


def check_dims(dims, what: str) -> tuple[int, ...]:
    out = []
    for d in dims:
        d = int(d)
        if d < 0 or d > MAX_DIM:
            raise OnnxImportError(f"{what}: dim {d} is outside [0, {MAX_DIM}]")
        out.append(d)
    count = int(np.prod(out, dtype=object)) if out else 1
    if count > MAX_ELEMENTS:
        raise OnnxImportError(f"{what}: {count} elements is more than dlc reads ({MAX_ELEMENTS})")
    return tuple(out)


_TYPED_FIELDS = {1: "float_data", 11: "double_data", 6: "int32_data", 7: "int64_data", 9: "int32_data",
                 2: "int32_data", 3: "int32_data", 4: "int32_data", 5: "int32_data", 10: "int32_data",
                 12: "uint64_data", **dict.fromkeys(range(16, 27), "int32_data")}


def numpy_dtype_of(code: int, what: str) -> str:
    """The numpy dtype of an ONNX element type at the boundary (before widening)."""
    if code in DTYPES:
        return DTYPES[code]
    if code in CONST_ONLY:
        return CONST_ONLY[code]
    return dtype_of(code, what)


def numpy_dtype(name: str) -> np.dtype:
    """A boundary dtype name as a numpy dtype (bfloat16, float8 and 4-bit types come from ml_dtypes)."""
    if hasattr(np, name):
        return np.dtype(name)
    import ml_dtypes

    return np.dtype(getattr(ml_dtypes, name))


def tensor_to_array(t, base_dir: str | None, what: str | None = None) -> np.ndarray:
    """A TensorProto as a numpy array, after checking its size against its dims."""
    onnx = onnx_module()
    what = what or f"tensor {t.name!r}"
    if t.data_type not in DTYPES and t.data_type not in CONST_ONLY:
        raise UnsupportedError(f"{what} has element type {type_name(t.data_type)}; dlc reads "
                               f"{', '.join(type_name(c) for c in list(DTYPES) + list(CONST_ONLY))}")
    dims = check_dims(t.dims, what)
    count = int(np.prod(dims)) if dims else 1
    name = DTYPES.get(t.data_type) or CONST_ONLY[t.data_type]
    np_dtype = numpy_dtype(name)
    if t.data_location == onnx.TensorProto.EXTERNAL:
        raw = read_external(t, base_dir, what)
    elif t.HasField("raw_data"):
        raw = t.raw_data
    else:
        raw = None
    per_byte = PACKED.get(name, 0)
    if raw is not None:
        expected = -(-count // per_byte) if per_byte else count * np_dtype.itemsize
        if len(raw) != expected:
            raise OnnxImportError(f"{what}: {len(raw)} bytes of data for dims {list(dims)} of "
                                  f"{type_name(t.data_type)} ({expected} expected)")
        if np_dtype.kind == "V" or per_byte:
            arr = _decode_ml_dtypes(t, raw, dims)
        else:
            arr = np.frombuffer(raw, dtype=np_dtype.newbyteorder("<")).astype(np_dtype).reshape(dims)
    else:
        field = getattr(t, _TYPED_FIELDS[t.data_type])
        expected = -(-count // per_byte) if per_byte else count
        if len(field) != expected:
            raise OnnxImportError(f"{what}: {len(field)} values for dims {list(dims)} ({expected} expected)")
        if t.data_type == 10:   # float16 travels as its bit patterns in int32_data
            arr = np.array(field, dtype=np.uint16).view(np.float16).reshape(dims)
        elif np_dtype.kind == "V" or per_byte:
            arr = _decode_ml_dtypes(t, None, dims)
        else:
            arr = np.array(field).astype(np_dtype).reshape(dims)
    if name in WIDENED:
        arr = arr.astype(WIDENED[name])   # exact: the wider type holds every value of the narrow one
    return np.array(arr, order="C")


def _decode_ml_dtypes(t, raw: bytes | None, dims) -> np.ndarray:
    """A bfloat16/float8/4-bit/2-bit tensor, its size already checked, decoded (and unpacked) by onnx's helper."""
    from onnx import numpy_helper

    onnx = onnx_module()
    clean = onnx.TensorProto()
    clean.data_type, clean.dims[:] = t.data_type, list(dims)
    if raw is not None:
        clean.raw_data = raw
    else:
        clean.int32_data[:] = t.int32_data
    return numpy_helper.to_array(clean)


def read_external(t, base_dir: str | None, what: str) -> bytes:
    """The bytes of an external-data tensor, from a file that must lie inside base_dir."""
    info = {e.key: e.value for e in t.external_data}
    if base_dir is None:
        raise OnnxImportError(f"{what} keeps its data in an external file; load the model from its path so "
                              f"dlc knows the directory it may read")
    location = info.get("location", "")
    if not location or os.path.isabs(location) or location.startswith(("/", "\\")) or "\\" in location:
        raise OnnxImportError(f"{what}: external data location {location!r} must be a relative path inside the "
                              f"model's directory")
    path = os.path.realpath(os.path.join(base_dir, location))
    if os.path.commonpath([path, base_dir]) != base_dir or path == base_dir:
        raise OnnxImportError(f"{what}: external data location {location!r} points outside the model's directory")
    try:
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        raise OnnxImportError(f"{what}: external data offset/length must be integers") from None
    if offset < 0 or (length is not None and length < 0):
        raise OnnxImportError(f"{what}: external data offset/length must not be negative")
    if not os.path.isfile(path):
        raise OnnxImportError(f"{what}: external data file {location!r} does not exist")
    size = os.path.getsize(path)
    if length is None:
        length = size - offset
    if offset + length > size:
        raise OnnxImportError(f"{what}: external data [{offset}, {offset + length}) runs past the end of "
                              f"{location!r} ({size} bytes)")
    if length > MAX_ELEMENTS * 8:
        raise OnnxImportError(f"{what}: external data of {length} bytes is larger than dlc reads")
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


# ----------------------------------------------------------------------------
# graph order


def topo_sort(nodes, available: set[str], where: str = "graph") -> list:
    """The nodes in an order where each one's inputs come first; a cycle or an undefined input is an error."""
    producers = {}
    for n in nodes:
        for o in n.output:
            if o:
                if o in producers or o in available:
                    raise OnnxImportError(f"{where}: value {o!r} is produced twice")
                producers[o] = n
    order, state = [], {}
    for start in nodes:
        stack = [(start, False)]
        while stack:
            n, done = stack.pop()
            if done:
                state[id(n)] = 2
                order.append(n)
                continue
            if state.get(id(n)) == 2:
                continue
            if state.get(id(n)) == 1:
                continue
            state[id(n)] = 1
            stack.append((n, True))
            for i in n.input:
                if not i or i in available:
                    continue
                p = producers.get(i)
                if p is None:
                    raise OnnxImportError(f"{where}: node {n.name or n.op_type!r} ({n.op_type}) reads {i!r}, "
                                          f"which no node, input or initializer defines")
                if state.get(id(p)) == 1:
                    raise OnnxImportError(f"{where}: the graph has a cycle through node {p.name or p.op_type!r} "
                                          f"({p.op_type}) and value {i!r}")
                if state.get(id(p)) != 2:
                    stack.append((p, False))
    return order
