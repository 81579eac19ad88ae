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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from . import graph as _graph
from .errors import ArtifactError
from .graph import DTYPES, Graph, Node, SourceLoc, as_shape, shape_str, topo_order

SCHEMA = "dlc-graph/1"


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


register_attr_type(float, "float", _encode_float, lambda v, dec: float(v))
register_attr_type(list, "list", lambda x, enc: [enc(v) for v in x], lambda v, dec: [dec(x) for x in v])
register_attr_type(dict, "dict", lambda x, enc: [[enc(k), enc(v)] for k, v in x.items()],
                   lambda v, dec: {dec(k): dec(x) for k, x in v})
register_attr_type(np.dtype, "dtype", lambda x, enc: x.name, lambda v, dec: np.dtype(_check_dtype(v)))
register_attr_type(Node, "node", lambda x, enc: enc.ref(x), lambda v, dec: dec.node(v))
register_attr_type(Graph, "graph", lambda x, enc: [enc.ref(o) for o in x.outputs],
                   lambda v, dec: Graph([dec.node(i) for i in v]))


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

    parts = [dec.node(doc[f]) if f == "step_in" else [dec.node(i) for i in doc[f]] for f in _BODY_FIELDS]
    return Body(str(doc["name"]), *parts)


def _register_op_module_types() -> None:
    """Attr types that op modules define (the scan body), registered once they can be imported."""
    try:
        from .ops.scan import Body
    except ImportError:
        return
    if Body not in _BY_TYPE:
        register_attr_type(Body, "scan_body", _encode_body, _decode_body)


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
        if id(node) not in self.ids:
            for n in topo_order([node]):
                if id(n) not in self.ids:
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
            entry["loc"] = [n.loc.file, n.loc.line] + ([n.loc.scope] if n.loc.scope else [])
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
        if isinstance(v, dict) and set(v) == {"$", "v"} and v["$"] in _BY_TAG:
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
            except (KeyError, TypeError, ValueError) as err:
                raise ArtifactError(f"graph: node {i} is malformed: {err}") from None
        return [self.node(r) for r in self.doc.get("roots", [])]

    def _build_node(self, e: dict, ops) -> Node:
        op = e["op"]
        if op not in ops:
            raise ArtifactError(f"graph: node {len(self.nodes)} uses op {op!r}, which this dlc does not know "
                                f"(the artifact needs a newer dlc or an extension that registers it)")
        attrs = tuple((str(k), self.decode_value(v)) for k, v in e["attrs"])
        inputs = tuple(self.node(i) for i in e["inputs"])
        shape = as_shape(e["shape"])
        dtype = _check_dtype(e["dtype"])
        loc = SourceLoc(str(e["loc"][0]), int(e["loc"][1]), scope=str(e["loc"][2]) if len(e["loc"]) > 2 else "") \
            if e.get("loc") else None
        value = None
        if "value" in e:
            value = self._array(e["value"], shape, dtype)
        node = Node(op, inputs, attrs, shape, dtype, loc, value)
        self._check_inferred(node, ops)
        return node

    def _array(self, key: str, shape, dtype) -> np.ndarray:
        if key not in self.arrays:
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
        if opdef.kind == "source":
            return
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
