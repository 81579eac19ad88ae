"""Graphs to JSON and back: every node's op, inputs, attrs, shape, dtype and source line; never pickle.

A serialized graph is a flat table of nodes, each after everything it
depends on: its inputs and the nodes its attrs refer to (a scan body is a
Graph-valued attr, so nested bodies land in the same table). Attr values are
encoded by type: None, bools, ints, strings and finite floats are plain JSON
(Python writes the shortest repr that reads back to the same float, so floats
are exact), tuples are JSON lists, and everything else is a tagged object
{"$": tag, "v": payload} from a small registry that other modules extend with
`register_attr_type`. Constant arrays are not in the JSON: the caller stores
them (the artifact writes .npy members) and hands them back on load.

A decoded graph is data from anyone, and its names, locations and attributes
end up in generated source (as comments) and in native calls: the decoder
checks every one by type and form (`ATTRS` per op, `check_attr_value` for
attrs it has no entry for, `_NAME`/`_FILE`/`_SCOPE` for text), so a graph that
passes holds nothing but numbers, dtypes, nodes and short plain names.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

import dlc.graph as _graph

from .codegen.source_text import file_name
from .errors import ArtifactError
from .graph import DTYPES, Graph, Node, SourceLoc, as_shape, shape_str, topo_order

SCHEMA = "dlc-graph/1"
MAX_INT = 2**63 - 1
MAX_DIM = 2**40        # more elements than any array here can hold: a bigger dim is an attack or a bug
MAX_TEXT = 200

# the forms text from a decoded graph may take
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,199}")       # input names, store keys, scan body names
_FILE = re.compile(r"[A-Za-z0-9_.<>\-]{1,200}")             # a source file's base name ("<stdin>" included)
_SCOPE = re.compile(r"[A-Za-z0-9_.]{0,200}")                 # the nn module path: "features.0.conv"
_DIGEST = re.compile(r"[0-9a-f]{1,128}")                     # a constant's digest
_DIM_PART = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}|[0-9]{1,13}")
_WORD = re.compile(r"[A-Za-z0-9_.*]{0,64}")                  # any other string attr: a plain word or a dim


@dataclass(frozen=True)
class AttrCodec:
    """How one attr value type is written: encode(value, enc) -> JSON; decode(payload, dec) -> value.

    enc/dec encode or decode nested values (including nodes), so a codec for
    a container type stays a few lines.
    """

    tag: str
    type: type
    encode: Callable
    decode: Callable


_BY_TAG: dict[str, AttrCodec] = {}
_BY_TYPE: dict[type, AttrCodec] = {}


def register_attr_type(cls: type, tag: str, encode: Callable, decode: Callable) -> None:
    """Teach the serializer a new attr value type (an op module registers its own body types)."""
    if tag in _BY_TAG and _BY_TAG[tag].type is not cls:
        raise ValueError(f"attr tag {tag!r} is already used by {_BY_TAG[tag].type.__name__}")
    codec = AttrCodec(tag, cls, encode, decode)
    _BY_TAG[tag] = codec
    _BY_TYPE[cls] = codec


def _codec_for(value) -> AttrCodec | None:
    for cls in type(value).__mro__:
        if cls in _BY_TYPE:
            return _BY_TYPE[cls]
    return None


# ---- the built-in codecs


def _encode_float(x: float, enc) -> str:
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


register_attr_type(float, "float", _encode_float, lambda v, dec: float(_check_float_text(v)))
register_attr_type(list, "list", lambda x, enc: [enc(v) for v in x],
                   lambda v, dec: [dec(x) for x in _check_list(v)])
register_attr_type(dict, "dict", lambda x, enc: [[enc(k), enc(v)] for k, v in x.items()],
                   lambda v, dec: {dec(k): dec(x) for k, x in _check_list(v)})
register_attr_type(np.dtype, "dtype", lambda x, enc: x.name, lambda v, dec: np.dtype(_check_dtype(v)))
register_attr_type(Node, "node", lambda x, enc: enc.ref(x), lambda v, dec: dec.node(v))
register_attr_type(Graph, "graph", lambda x, enc: [enc.ref(o) for o in x.outputs],
                   lambda v, dec: Graph([dec.node(i) for i in _check_list(v)]))


def _check_float_text(v):
    if v not in ("nan", "inf", "-inf"):
        raise ArtifactError(f"graph: a tagged float is 'nan', 'inf' or '-inf', got {v!r:.80}")
    return v


def _check_list(v):
    if not isinstance(v, list):
        raise ArtifactError(f"graph: a tagged list or dict holds a JSON list, got {type(v).__name__}")
    return v


# a scan node's value is a tuple of arrays (graph.TUPLE); older graph modules have no such dtype
_NODE_DTYPES = DTYPES + tuple(d for d in (getattr(_graph, "TUPLE", None),) if d)


def _check_dtype(name) -> str:
    if name not in _NODE_DTYPES:
        raise ArtifactError(f"graph: unknown dtype {name!r}")
    return name


_BODY_FIELDS = ("carry_in", "x_in", "captured_in", "step_in", "carry_out", "y_out")


def _encode_body(body, enc) -> dict:
    """A scan body: its name and its placeholder and output nodes; the Graph is rebuilt from the outputs."""
    doc = {"name": body.name}
    for f in _BODY_FIELDS:
        v = getattr(body, f)
        doc[f] = enc.ref(v) if isinstance(v, Node) else [enc.ref(n) for n in v]
    return doc


def _decode_body(doc: dict, dec):
    from .ops.scan import Body

    if not isinstance(doc, dict) or not all(isinstance(doc.get(f), int if f == "step_in" else list)
                                            for f in _BODY_FIELDS):
        raise ArtifactError(f"graph: node {len(dec.nodes)}: a scan body must name its {', '.join(_BODY_FIELDS)}")
    parts = [dec.node(doc[f]) if f == "step_in" else [dec.node(i) for i in doc[f]] for f in _BODY_FIELDS]
    return Body(_text(doc.get("name"), _NAME, f"graph: node {len(dec.nodes)}: the scan body's name"), *parts)


def _register_op_module_types() -> None:
    """Attr types that op modules define (the scan body), registered once they can be imported."""
    try:
        from .ops.scan import Body
    except ImportError:
        return
    if Body not in _BY_TYPE:
        register_attr_type(Body, "scan_body", _encode_body, _decode_body)


# ----------------------------------------------------------------------------
# the forms of names, locations and attribute values


_SCOPE_BAD = re.compile(r"[^A-Za-z0-9_.]")
safe_file_name = file_name  # what an artifact records of a node's file: its plain base name


def _int(v, what: str, lo: int = -MAX_INT, hi: int = MAX_INT) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ArtifactError(f"{what} must be an integer in [{lo}, {hi}], got {v!r:.80}")
    return v


def _text(v, form: re.Pattern, what: str) -> str:
    if not isinstance(v, str) or not form.fullmatch(v):
        raise ArtifactError(f"{what} must match {form.pattern}, got {v!r:.80}")
    return v


def _dim(d, what: str, lo: int = 0):
    if isinstance(d, str):
        if not all(_DIM_PART.fullmatch(p.strip()) for p in d.split("*")):
            raise ArtifactError(f"{what}: a symbolic dim is a product of names and ints like 'B*T', got {d!r:.80}")
        return d
    return _int(d, what, lo, MAX_DIM)


def _shape(v, what: str, lo: int = 0):
    if not isinstance(v, (list, tuple)) or len(v) > 32:
        raise ArtifactError(f"{what} must be a list of at most 32 dims, got {v!r:.80}")
    return [_dim(d, what, lo) for d in v]


def _check_int(v, what):
    _int(v, what)


def _check_bool(v, what):
    if not isinstance(v, bool):
        raise ArtifactError(f"{what} must be true or false, got {v!r:.80}")


def _check_float(v, what):
    if not isinstance(v, float):
        raise ArtifactError(f"{what} must be a float, got {v!r:.80}")


def _check_number(v, what):
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
        raise ArtifactError(f"{what} must be a number or null, got {v!r:.80}")
    if isinstance(v, int):
        _int(v, what)


def _check_ints(v, what, allow_none=False):
    if not isinstance(v, tuple) or len(v) > 32:
        raise ArtifactError(f"{what} must be a list of integers, got {v!r:.80}")
    for x in v:
        if not (allow_none and x is None):
            _int(x, what)


def _check_int_pair(v, what):
    _check_ints(v, what)
    if len(v) != 2:
        raise ArtifactError(f"{what} must be [height, width], got {v!r:.80}")


def _check_axes(v, what):
    _check_ints(v, what)
    if len(set(v)) != len(v):
        raise ArtifactError(f"{what} must name distinct axes, got {v!r:.80}")


def _check_hw_padding(v, what):
    _check_pairs(v, what)
    if len(v) != 2:
        raise ArtifactError(f"{what} must be [[top, bottom], [left, right]], got {v!r:.80}")


def _check_ints_or_none(v, what):
    _check_ints(v, what, allow_none=True)


def _check_pairs(v, what):
    if not isinstance(v, tuple) or len(v) > 32 or not all(isinstance(p, tuple) and len(p) == 2 for p in v):
        raise ArtifactError(f"{what} must be a list of [before, after] pairs, got {v!r:.80}")
    for p in v:
        _check_ints(p, what)


def _check_dims(v, what):
    _shape(v, what, lo=-1)  # a reshape's -1: the rest


def _check_dim(v, what):
    _dim(v, what)


def _check_dtype_name(v, what):
    if not isinstance(v, str) or v not in DTYPES:
        raise ArtifactError(f"{what} must be one of {', '.join(DTYPES)}, got {v!r:.80}")


def _check_body(v, what):
    from .ops.scan import Body

    if not isinstance(v, Body):
        raise ArtifactError(f"{what} must be a scan body, got {type(v).__name__}")


def _check_reduction(v, what):
    if v not in ("sum", "mean"):
        raise ArtifactError(f"{what} must be 'sum' or 'mean', got {v!r:.80}")


def _check_attention_mask(v, what):
    if v not in ("none", "bool", "add"):
        raise ArtifactError(f"{what} must be 'none', 'bool' or 'add', got {v!r:.80}")


def _check_name(v, what):
    _text(v, _NAME, what)


def _check_digest(v, what):
    _text(v, _DIGEST, what)


_CONV = {"stride": _check_int_pair, "padding": _check_hw_padding, "dilation": _check_int_pair, "groups": _check_int}
_POOL = {"kernel": _check_int_pair, "stride": _check_int_pair, "padding": _check_hw_padding}
_REDUCE = {"axes": _check_axes, "keepdims": _check_bool}
_RANDOM = {"seed": _check_int, "shape": _check_dims, "dtype": _check_dtype_name}

# op -> {attr: check(value, what)}: the attributes each op may have and their types. Value ranges (stride >= 1)
# are the op's shape rule's business, which the decoder runs on every node. An op missing here (an extension's)
# has its attrs checked by `check_attr_value` alone.
ATTRS: dict[str, dict] = {
    "input": {"name": _check_name},
    "param": {"name": _check_name},
    "const": {"digest": _check_digest},
    "conv2d": _CONV,
    "conv2d_nhwc": _CONV,
    "conv2d_grad_input": {**_CONV, "out_hw": _check_int_pair},
    "conv_transpose2d": {**_CONV, "out_hw": _check_int_pair},
    "conv2d_grad_weight": {**_CONV, "kernel": _check_int_pair},
    "max_pool2d": _POOL,
    "max_pool2d_grad": _POOL,
    "avg_pool2d": {**_POOL, "count_include_pad": _check_bool},
    "avg_pool2d_grad": {**_POOL, "count_include_pad": _check_bool, "out_hw": _check_int_pair},
    "adaptive_avg_pool2d": {"output_size": _check_int_pair},
    "adaptive_avg_pool2d_grad": {"output_size": _check_int_pair, "out_hw": _check_int_pair},
    **{op: _REDUCE for op in ("sum", "prod", "max", "min", "argmax", "argmin")},
    "size": {"axes": _check_axes, "dtype": _check_dtype_name},
    "reshape": {"shape": _check_dims},
    "broadcast_to": {"shape": _check_dims},
    "transpose": {"perm": _check_axes},
    "slice": {"begin": _check_ints, "end": _check_ints_or_none, "step": _check_ints},
    "slice_grad": {"begin": _check_ints, "end": _check_ints_or_none, "step": _check_ints, "shape": _check_dims},
    "concat": {"axis": _check_int},
    "pad": {"pads": _check_pairs, "value": _check_float},
    "take": {"axis": _check_int},
    "take_grad": {"axis": _check_int, "shape": _check_dims},
    "one_hot": {"depth": _check_int, "ignore_index": lambda v, what: v is None or _check_int(v, what),
                "dtype": _check_dtype_name},
    "cast": {"dtype": _check_dtype_name},
    "all_reduce": {"reduce": _check_reduction},
    "all_reduce_start": {},
    "all_reduce_wait": {"reduce": _check_reduction},
    "broadcast": {"root": _check_int},
    "reduce": {"root": _check_int},
    "all_gather": {"world": _check_int},
    "reduce_scatter": {"world": _check_int},
    "clip": {"lo": _check_number, "hi": _check_number},
    "elu": {"alpha": _check_float},
    "leaky_relu": {"alpha": _check_float},
    "random_uniform": {**_RANDOM, "low": _check_float, "high": _check_float},
    "random_normal": {**_RANDOM, "mean": _check_float, "std": _check_float},
    "random_bernoulli": {**_RANDOM, "p": _check_float},
    "scan": {"body": _check_body, "length": _check_dim, "reverse": _check_bool, "save_carries": _check_bool},
    "scan_output": {"index": _check_int},
    **{op: {"scale": _check_float, "causal": _check_bool, "mask": _check_attention_mask}
       for op in ("attention", "attention_grad", "attention_grad_q", "attention_grad_kv")},
    "layer_norm": {"dims": _check_int, "eps": _check_float},
    "layer_norm_grad": {"dims": _check_int, "eps": _check_float},
    # the ops without attributes
    **{op: {} for op in ("neg", "abs", "sign", "exp", "log", "sqrt", "rsqrt", "square", "tanh", "sigmoid", "relu",
                         "gelu_tanh", "gelu_erf", "erf", "softplus", "sin", "cos", "stop_gradient", "logical_not",
                         "add", "sub", "mul", "div", "pow", "maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge",
                         "logical_and", "logical_or", "where", "matmul")},
}


# op -> how many inputs it takes (None: any number); an elementwise op takes as many as its scalar template
# names. Shape rules read only the inputs they expect, so a node with more is refused here.
ARITY = {
    "input": 0, "param": 0, "const": 0, "size": 1,
    **{op: 2 for op in ("conv2d", "conv2d_nhwc", "conv2d_grad_input", "conv2d_grad_weight", "conv_transpose2d",
                        "matmul", "max_pool2d_grad", "take", "take_grad", "all_reduce_wait")},
    **{op: 1 for op in ("max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "avg_pool2d_grad",
                        "adaptive_avg_pool2d_grad", "sum", "prod", "max", "min", "argmax", "argmin", "reshape",
                        "transpose", "broadcast_to", "slice", "slice_grad", "pad", "random_uniform", "random_normal",
                        "random_bernoulli", "scan_output", "one_hot", "broadcast", "reduce", "all_gather",
                        "reduce_scatter", "layer_norm")},
    "layer_norm_grad": 2,
    "concat": None, "scan": None,
    # attention takes a mask or not (its mask attribute says which; the shape rule checks the count)
    "attention": None, "attention_grad": None, "attention_grad_q": None, "attention_grad_kv": None,
}


def arity(opdef) -> int | None:
    if opdef.name in ARITY:
        return ARITY[opdef.name]
    if opdef.kind == "elementwise" and opdef.scalar:
        return len(set(re.findall(r"\{(\d+)\}", opdef.scalar)))
    return None


# the attributes of ATTRS an op may leave out (older graphs, defaults); every other one is required: shape rules do
# not read every attribute (a leaky_relu's alpha), and a node without one would fail only when run
OPTIONAL_ATTRS = {**{op: {"dilation"} for op in ("conv2d", "conv2d_nhwc", "conv2d_grad_input", "conv2d_grad_weight",
                                                  "conv_transpose2d")},
                  **{op: {"dtype"} for op in ("random_uniform", "random_normal", "random_bernoulli")}}


def check_attr_value(v, what: str, depth: int = 0) -> None:
    """The generic rule for any attr value: numbers in range, plain short words, dtypes, nodes, bodies, and
    tuples of these. Nothing else (above all no free text) can be an attribute."""
    if depth > 8:
        raise ArtifactError(f"{what} is nested too deeply")
    if v is None or isinstance(v, (bool, float, np.dtype, Node, Graph)):
        return
    if isinstance(v, int):
        _int(v, what)
    elif isinstance(v, str):
        _text(v, _WORD, what)
    elif isinstance(v, (tuple, list)):
        for x in v:
            check_attr_value(x, what, depth + 1)
    elif isinstance(v, dict):
        for k, x in v.items():
            check_attr_value(k, what, depth + 1)
            check_attr_value(x, what, depth + 1)
    elif type(v).__name__ != "Body":
        raise ArtifactError(f"{what} has a value of type {type(v).__name__}, which no attribute can have")


def check_attrs(op: str, attrs: tuple, where: str) -> None:
    """Every attribute of a decoded node of `op` has the type and form its op gives it."""
    known = ATTRS.get(op)
    names = [k for k, _ in attrs]
    if len(set(names)) != len(names):
        raise ArtifactError(f"{where}: an attribute is given twice ({names})")
    for k, v in attrs:
        what = f"{where}: attribute {k!r:.40} of {op}"
        if not _WORD.fullmatch(k) or not k:
            raise ArtifactError(f"{where}: attribute name {k!r:.80} is not a plain name")
        check_attr_value(v, what)
        if known is not None:
            if k not in known:
                raise ArtifactError(f"{what}: {op} has no such attribute (it has {', '.join(known) or 'none'})")
            known[k](v, what)
    missing = set(known or ()) - set(names) - OPTIONAL_ATTRS.get(op, set())
    if missing:
        raise ArtifactError(f"{where}: a {op} node needs the attribute(s) {', '.join(sorted(missing))}")


def check_loc(raw, where: str) -> SourceLoc | None:
    """A node's source location from JSON: [file, line] or [file, line, scope]; the file reduced to its base
    name, which must then be plain (letters, digits, '_', '.', '-', '<', '>'); the scope a dotted path."""
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) not in (2, 3):
        raise ArtifactError(f"{where}: 'loc' must be [file, line] or [file, line, scope], got {raw!r:.80}")
    if not isinstance(raw[0], str):
        raise ArtifactError(f"{where}: the file of 'loc' must be a string, got {raw[0]!r:.80}")
    file = _text(raw[0].rsplit("/", 1)[-1], _FILE, f"{where}: the file of 'loc'")
    line = _int(raw[1], f"{where}: the line of 'loc'", 0, 2**31 - 1)
    scope = _text(raw[2], _SCOPE, f"{where}: the scope of 'loc'") if len(raw) > 2 else ""
    return SourceLoc(file, line, scope=scope)


# ----------------------------------------------------------------------------
# encoding


class GraphEncoder:
    """Builds the node table; `ref(node)` adds a node (and what it depends on) and returns its id."""

    def __init__(self):
        _register_op_module_types()
        self.ids: dict[int, int] = {}
        self.table: list[dict] = []
        self.arrays: dict[str, np.ndarray] = {}
        self._keep: list[Node] = []  # nodes stay alive while their ids are in use

    def ref(self, node: Node) -> int:
        for n in topo_order([node], known=self.ids):
            self._add(n)
        return self.ids[id(node)]

    def __call__(self, value):
        return self.encode_value(value)

    def encode_value(self, value):
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        if isinstance(value, (int, np.integer)):
            return int(value)
        if isinstance(value, (float, np.floating)):
            x = float(value)
            return x if math.isfinite(x) else {"$": "float", "v": _encode_float(x, self)}
        if type(value) is tuple:
            return [self.encode_value(v) for v in value]
        codec = _codec_for(value)
        if codec is None:
            raise TypeError(f"cannot serialize an attr of type {type(value).__name__} ({value!r}); "
                            f"register it with dlc.serialize.register_attr_type")
        return {"$": codec.tag, "v": codec.encode(value, self)}

    def _add(self, n: Node) -> None:
        # attrs first: the nodes they refer to must come earlier in the table
        attrs = [[k, self.encode_value(v)] for k, v in n.attrs]
        entry = {"op": n.op, "inputs": [self.ids[id(i)] for i in n.inputs], "attrs": attrs,
                 "shape": list(n.shape), "dtype": n.dtype}
        if n.loc is not None:
            scope = _SCOPE_BAD.sub("_", getattr(n.loc, "scope", "") or "")[:MAX_TEXT]
            entry["loc"] = [safe_file_name(n.loc.file), int(n.loc.line)] + ([scope] if scope else [])
        if n.value is not None:
            key = f"{len(self.table)}"
            self.arrays[key] = np.asarray(n.value)
            entry["value"] = key
        self.ids[id(n)] = len(self.table)
        self._keep.append(n)
        self.table.append(entry)


def graph_to_json(roots: list[Node], encoder: GraphEncoder | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """(the JSON document, the constant arrays it names) for every node the roots depend on."""
    enc = encoder or GraphEncoder()
    ids = [enc.ref(r) for r in roots]
    return {"schema": SCHEMA, "nodes": enc.table, "roots": ids}, enc.arrays


# ----------------------------------------------------------------------------
# decoding


class GraphDecoder:
    """Rebuilds nodes in table order; every reference must point at an earlier node."""

    def __init__(self, doc: dict, arrays: Mapping[str, np.ndarray]):
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            got = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
            raise ArtifactError(f"graph: expected schema {SCHEMA!r}, got {got!r}")
        _register_op_module_types()
        self.doc = doc
        self.arrays = arrays
        self.nodes: list[Node] = []

    def __call__(self, payload):
        return self.decode_value(payload)

    def node(self, i) -> Node:
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(self.nodes):
            raise ArtifactError(f"graph: node {len(self.nodes)} refers to node {i!r}, which is not defined before it")
        return self.nodes[i]

    def decode_value(self, v):
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, list):
            return tuple(self.decode_value(x) for x in v)
        if isinstance(v, dict) and set(v) == {"$", "v"} and isinstance(v["$"], str) and v["$"] in _BY_TAG:
            return _BY_TAG[v["$"]].decode(v["v"], self)
        raise ArtifactError(f"graph: node {len(self.nodes)} has an attr value this dlc cannot read: {v!r:.80}")

    def build(self) -> list[Node]:
        from .ops import OPS

        table = self.doc.get("nodes")
        if not isinstance(table, list):
            raise ArtifactError("graph: 'nodes' must be a list")
        for i, e in enumerate(table):
            try:
                self.nodes.append(self._build_node(e, OPS))
            except ArtifactError:
                raise
            except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError) as err:
                raise ArtifactError(f"graph: node {i} is malformed: {type(err).__name__}: {err}"[:300]) from None
        roots = self.doc.get("roots", [])
        if not isinstance(roots, list):
            raise ArtifactError("graph: 'roots' must be a list")
        return [self.node(r) for r in roots]

    def _build_node(self, e: dict, ops) -> Node:
        where = f"graph: node {len(self.nodes)}"
        if not isinstance(e, dict):
            raise ArtifactError(f"{where} must be a JSON object, got {type(e).__name__}")
        op = e["op"]
        if not isinstance(op, str) or op not in ops:
            raise ArtifactError(f"graph: node {len(self.nodes)} uses op {op!r}, which this dlc does not know "
                                f"(the artifact needs a newer dlc or an extension that registers it)")
        if not isinstance(e["attrs"], list) or not all(isinstance(kv, list) and len(kv) == 2 for kv in e["attrs"]):
            raise ArtifactError(f"{where}: 'attrs' must be a list of [name, value] pairs")
        if not all(isinstance(k, str) for k, _ in e["attrs"]):
            raise ArtifactError(f"{where}: attribute names must be strings")
        attrs = tuple((k, self.decode_value(v)) for k, v in e["attrs"])
        check_attrs(op, attrs, where)
        if not isinstance(e["inputs"], list):
            raise ArtifactError(f"{where}: 'inputs' must be a list of node ids")
        inputs = tuple(self.node(i) for i in e["inputs"])
        n = arity(ops[op])
        if n is not None and len(inputs) != n:
            raise ArtifactError(f"{where}: {op} takes {n} input(s), the node has {len(inputs)}")
        shape = as_shape(_shape(e["shape"], f"{where}: shape"))
        dtype = _check_dtype(e["dtype"])
        loc = check_loc(e.get("loc"), where)
        value = None
        if "value" in e:
            value = self._array(e["value"], shape, dtype)
        node = Node(op, inputs, attrs, shape, dtype, loc, value)
        self._check_inferred(node, ops)
        return node

    def _array(self, key: str, shape, dtype) -> np.ndarray:
        if not isinstance(key, str) or key not in self.arrays:
            raise ArtifactError(f"graph: node {len(self.nodes)} needs constant array {key!r}, which is missing")
        arr = self.arrays[key]
        if arr.shape != shape or arr.dtype.name != dtype:
            raise ArtifactError(f"graph: constant of node {len(self.nodes)} is {arr.dtype.name}{arr.shape}, "
                                f"its node says {dtype}{shape_str(shape)}")
        arr = np.array(arr, order="C")
        arr.setflags(write=False)
        return arr

    def _check_inferred(self, node: Node, ops) -> None:
        """Re-run the op's shape rule: a graph from another dlc whose ops changed meaning is refused."""
        opdef = ops[node.op]
        if node.op == "size":  # a source op with an input: its axes must name the input's axes
            (x,) = node.inputs
            if not all(0 <= a < x.ndim for a in node.attr("axes")):
                raise ArtifactError(f"graph: node {len(self.nodes)} (size) counts axes {node.attr('axes')} of a "
                                    f"{x.ndim}-d value")
        if opdef.kind == "source" and not node.inputs:
            return  # input, param, const: built with their shape and dtype given
        try:
            shape, dtype = opdef.infer(node.inputs, dict(node.attrs))
        except Exception as err:  # noqa: BLE001  (any failure means this dlc cannot run the node)
            raise ArtifactError(f"graph: node {len(self.nodes)} ({node.op}) does not type-check in this dlc: "
                                f"{err}") from None
        if tuple(as_shape(shape)) != node.shape or dtype != node.dtype:
            raise ArtifactError(f"graph: node {len(self.nodes)} ({node.op}) is recorded as "
                                f"{node.dtype}{shape_str(node.shape)} but this dlc infers "
                                f"{dtype}{shape_str(tuple(shape))}")


def graph_from_json(doc: dict, arrays: Mapping[str, np.ndarray]) -> tuple[list[Node], GraphDecoder]:
    """(the root nodes, the decoder holding every node by table id)."""
    dec = GraphDecoder(doc, arrays)
    return dec.build(), dec
