"""From an ONNX graph to dlc: each node through its mapping in ops/, static subgraphs folded to constants.

A value during import is either a dlc Tensor (it depends on an input or a
parameter) or a numpy array known at import (constants, integer
initializers, and everything computed only from them). Shape arithmetic
(Shape -> Gather -> Concat -> Reshape) stays numpy; a symbolic dim inside such
an array is its dlc symbol string ("batch"), held in an object array.
"""

from __future__ import annotations

import re

import numpy as np

import dlc.functional as F
import dlc.onnx.ops as _ops

from ..compiler import Function
from ..errors import DlcError, DTypeError
from ..graph import Graph, shape_str
from ..nn.module import Module, name_scope
from ..runtime.reference import evaluate
from ..store import Store
from ..tensor import Tensor
from .errors import OnnxImportError, UnsupportedError
from .reader import (
    check_dims,
    default_opset,
    dtype_of,
    numpy_dtype,
    numpy_dtype_of,
    onnx_module,
    read_model,
    tensor_to_array,
    topo_sort,
)

NO_DEFAULT = object()


def identifier(name: str, prefix: str = "v") -> str:
    """An ONNX name made a Python identifier ("input.1" -> "input_1", "0" -> "v_0")."""
    out = re.sub(r"\W", "_", name)
    return out if out and (out[0].isalpha() or out[0] == "_") else f"{prefix}_{out}"


def _printable(text: str, limit: int = 80) -> str:
    """A name or string from the model file, safe to print (control characters escaped, long ones cut)."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ----------------------------------------------------------------------------
# static values


def is_static(v) -> bool:
    return isinstance(v, np.ndarray)


def as_int_array(v: np.ndarray, what: str) -> np.ndarray:
    """A static value whose entries must all be known ints (a symbolic dim here is unsupported)."""
    if v.dtype == object:
        if not all(isinstance(x, (int, np.integer)) for x in v.flat):
            raise UnsupportedError(f"{what} depends on a symbolic dim ({', '.join(map(str, v.flat))}); dlc needs it "
                                   f"known at import")
        return v.astype(np.int64)
    return v


def lift(v, what: str) -> Tensor:
    if isinstance(v, Tensor):
        return v
    return F.constant(as_int_array(v, what))


def _const_only(node, dynamic: dict) -> bool:
    """Whether a node depends on constants alone (then the importer folds it).

    dynamic maps id(node) -> node for nodes known to depend on an input or a parameter (holding the node keeps
    its id from being reused while the map lives).
    """
    stack, seen = [node], set()
    while stack:
        n = stack.pop()
        if id(n) in dynamic or n.op in ("input", "param"):
            return False
        if n.op == "const" or id(n) in seen:
            continue
        seen.add(id(n))
        stack.extend(n.inputs)
    return True


def fold(t: Tensor, dynamic: dict):
    """A Tensor computed from constants only, as its numpy value; anything else unchanged."""
    node = t.node
    if node.op == "const":
        return node.value
    if not _const_only(node, dynamic):
        dynamic[id(node)] = node
        return t
    values = evaluate(Graph([node]).nodes, {}, None, {}, keep={id(node)})
    return np.asarray(values[id(node)])


# ----------------------------------------------------------------------------
# one node, as the mappings see it


class NodeContext:
    """An ONNX node during import: its attributes, and its inputs as Tensors or static arrays."""

    def __init__(self, proto, values: dict, opset: int, builder):
        self.proto = proto
        self.op = proto.op_type
        self.name = proto.name or f"{proto.op_type}({', '.join(proto.output)})"
        self.opset = opset
        self.builder = builder
        self.input_names = list(proto.input)
        self.inputs = [values[i] if i else None for i in proto.input]
        self.n_outputs = len(proto.output)
        self.attrs = {a.name: builder.attribute(a, self) for a in proto.attribute}

    # ---- errors
    def unsupported(self, what: str, supported: str = "") -> UnsupportedError:
        return UnsupportedError(f"ONNX {self.op} (opset {self.opset}) node {self.name!r}: {what} is not supported"
                                + (f"; supported: {supported}" if supported else ""))

    def invalid(self, what: str) -> OnnxImportError:
        return OnnxImportError(f"ONNX {self.op} (opset {self.opset}) node {self.name!r}: {what}")

    # ---- attributes
    def attr(self, name: str, default=NO_DEFAULT):
        if name in self.attrs:
            return self.attrs[name]
        if default is NO_DEFAULT:
            raise self.invalid(f"needs the attribute {name!r}")
        return default

    # ---- inputs
    def has(self, i: int) -> bool:
        return i < len(self.inputs) and self.inputs[i] is not None

    def tensor(self, i: int) -> Tensor:
        if not self.has(i):
            raise self.invalid(f"needs input {i}")
        return lift(self.inputs[i], f"input {i} ({self.input_names[i]!r})")

    def tensors(self) -> list[Tensor]:
        return [self.tensor(i) for i in range(len(self.inputs)) if self.has(i)]

    def static(self, i: int, default=NO_DEFAULT) -> np.ndarray:
        """Input i as a numpy array known at import (an initializer's initial value counts)."""
        if not self.has(i):
            if default is NO_DEFAULT:
                raise self.invalid(f"needs input {i}")
            return default
        v = self.inputs[i]
        if is_static(v):
            return v
        if v.op == "param":
            return self.builder.store[v.node.attr("name")]
        raise self.unsupported(f"input {i} ({self.input_names[i]!r}) computed at run time",
                               "a value known at import (a constant, an initializer, or shape arithmetic on them)")

    def ints(self, i: int, default=NO_DEFAULT) -> list:
        v = self.static(i, default)
        if v is default and default is not NO_DEFAULT:
            return default
        return [x if isinstance(x, str) else int(x) for x in np.asarray(v).reshape(-1)]

    def elem_type(self, i: int) -> int | None:
        """The ONNX element type of input i where the graph says it (a narrow one is lost in its dlc dtype)."""
        return self.builder.elem_types.get(self.input_names[i]) if self.has(i) else None

    def set_elem_type(self, k: int, code: int) -> None:
        """Record output k's ONNX element type (a Cast's target), for the CastLike nodes that read it."""
        if k < self.n_outputs and self.proto.output[k]:
            self.builder.elem_types[self.proto.output[k]] = code

    def all_static(self) -> bool:
        return all(v is None or is_static(v) for v in self.inputs)


# ----------------------------------------------------------------------------
# the graph


class GraphBuilder:
    """An ONNX graph checked and ordered once; `run` traces it onto given input tensors and parameters."""

    def __init__(self, model, base_dir, store: Store, static_inputs=None):
        self.onnx = onnx_module()
        self.model, self.base_dir, self.store = model, base_dir, store
        self.opset = default_opset(model)
        self.table = _ops.load_all()
        g = model.graph
        self.initializers = {t.name: tensor_to_array(t, base_dir, f"initializer {t.name!r}") for t in g.initializer}
        if g.sparse_initializer:
            raise UnsupportedError("sparse initializers are not supported; store them dense")
        self.inputs = [self._input_spec(vi) for vi in g.input if vi.name not in self.initializers]
        self.outputs = [o.name for o in g.output]
        # numpy dtypes of the graph's inputs and outputs where dlc computes in a wider one (uint8 -> int64)
        self.boundary = {vi.name: numpy_dtype_of(vi.type.tensor_type.elem_type, f"graph value {vi.name!r}")
                         for vi in list(g.input) + list(g.output)
                         if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type}
        # ONNX element types of named values where the graph declares them (CastLike casts to its operand's)
        self.elem_types = {vi.name: vi.type.tensor_type.elem_type
                           for vi in list(g.input) + list(g.output) + list(g.value_info)
                           if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type}
        self.elem_types.update({t.name: t.data_type for t in g.initializer})
        self.static_inputs = self._bind_static(static_inputs or {})
        self.inputs = [spec for spec in self.inputs if spec[0] not in self.static_inputs]
        available = set(self.initializers) | {name for name, _, _ in self.inputs} | set(self.static_inputs)
        self.nodes = topo_sort(list(g.node), available)
        produced = available | {o for n in self.nodes for o in n.output}
        for name in self.outputs:
            if name not in produced:
                raise OnnxImportError(f"graph output {name!r} is produced by no node, input or initializer")
        for n in self.nodes:
            self._check_known(n)

    def _input_spec(self, vi):
        t = vi.type
        if not t.HasField("tensor_type"):
            raise UnsupportedError(f"graph input {vi.name!r} is not a tensor (sequences, maps and optionals are "
                                   f"not supported)")
        dtype = dtype_of(t.tensor_type.elem_type, f"graph input {vi.name!r}")
        if not t.tensor_type.HasField("shape"):
            raise UnsupportedError(f"graph input {vi.name!r} has no shape; dlc needs the rank (dims may be "
                                   f"symbolic)")
        shape = []
        for k, d in enumerate(t.tensor_type.shape.dim):
            if d.HasField("dim_value"):
                shape.append(check_dims([d.dim_value], f"graph input {vi.name!r}")[0])
            elif d.dim_param:
                shape.append(identifier(d.dim_param, "d"))
            else:
                shape.append(f"{identifier(vi.name)}_d{k}")
        return vi.name, tuple(shape), dtype

    def _bind_static(self, given: dict) -> dict:
        """Graph inputs fixed at import (shape-controlling ones, such as a Reshape's shape fed as an input)."""
        specs = {name: (shape, dtype) for name, shape, dtype in self.inputs}
        out = {}
        for name, value in given.items():
            if name not in specs:
                raise OnnxImportError(f"static_inputs names {name!r}, which is not a graph input "
                                      f"({', '.join(specs)})")
            shape, dtype = specs[name]
            arr = np.asarray(value)
            if arr.dtype.name == self.boundary.get(name) != dtype:
                arr = arr.astype(dtype)   # a narrow type, computed in its wider dlc type
            if arr.dtype.name != dtype or arr.ndim != len(shape) or any(
                    isinstance(d, int) and d != v for d, v in zip(shape, arr.shape)):
                raise OnnxImportError(f"static input {name!r}: expected {dtype}{list(shape)}, got "
                                      f"{arr.dtype.name}{list(arr.shape)}")
            out[name] = arr
        return out

    def _check_known(self, n):
        if n.domain not in ("", "ai.onnx"):
            raise UnsupportedError(f"ONNX node {n.name or n.op_type!r}: op {n.op_type} of domain {n.domain!r} is not "
                                   f"supported; dlc maps the default (ai.onnx) domain")
        if n.op_type not in self.table:
            raise UnsupportedError(f"ONNX {n.op_type} (opset {self.opset}) node {n.name or n.op_type!r} is not "
                                   f"supported; supported ops: {', '.join(sorted(self.table))}")
        allowed = self.table[n.op_type].attrs
        for a in n.attribute:
            if a.name not in allowed:
                raise UnsupportedError(f"ONNX {n.op_type} (opset {self.opset}) node {n.name or n.op_type!r}: "
                                       f"attribute {a.name!r} is not supported; supported attributes: "
                                       f"{', '.join(sorted(allowed)) or 'none'}")

    def attribute(self, a, ctx):
        A = self.onnx.AttributeProto
        if a.type == A.FLOAT:
            return float(a.f)
        if a.type == A.INT:
            return int(a.i)
        if a.type == A.STRING:
            return a.s.decode("utf-8", "replace")
        if a.type == A.FLOATS:
            return [float(x) for x in a.floats]
        if a.type == A.INTS:
            return [int(x) for x in a.ints]
        if a.type == A.STRINGS:
            return [s.decode("utf-8", "replace") for s in a.strings]
        if a.type == A.TENSOR:
            return tensor_to_array(a.t, self.base_dir, f"attribute {a.name!r} of node {ctx.name!r}")
        raise ctx.unsupported(f"attribute {a.name!r} of type {A.AttributeType.Name(a.type)}",
                              "int, float, string, tensor and their lists")

    def run(self, feeds: dict[str, Tensor], params: dict[str, Tensor]) -> list:
        """Trace the graph: feeds by ONNX input name, params by initializer name; returns the outputs."""
        values: dict = {}
        self.dynamic: dict = {}
        for name, arr in self.initializers.items():
            values[name] = params.get(name, arr)
        values.update(self.static_inputs)
        values.update(feeds)
        for proto in self.nodes:
            ctx = NodeContext(proto, values, self.opset, self)
            outs = self._map(ctx)
            for name, v in zip(proto.output, outs):
                if name:
                    values[name] = v
        return [values[o] for o in self.outputs]

    @staticmethod
    def _scope(ctx) -> str:
        """The ONNX node's name as a module-path scope, in the letters an artifact keeps ("Relu(r)" -> "Relu_r_"),
        so a saved and reloaded model regenerates the same kernel source."""
        return re.sub(r"[^A-Za-z0-9_.]", "_", ctx.name)[:60]

    def _map(self, ctx: NodeContext) -> list:
        mapping = self.table[ctx.op]
        try:
            with name_scope(self._scope(ctx)):   # each dlc node records the ONNX node it came from
                result = mapping.fn(ctx)
        except OnnxImportError:
            raise
        except DTypeError as e:
            raise ctx.unsupported(f"these operand dtypes ({e})") from None
        except (DlcError, ValueError, TypeError, IndexError) as e:
            raise ctx.invalid(str(e)) from None
        outs = list(result) if isinstance(result, (list, tuple)) else [result]
        for v in outs:   # a shape the file asks for (Expand, Tile, Pad to 10**12) is refused before anything runs
            if isinstance(v, Tensor) and all(isinstance(d, int) for d in v.shape):
                check_dims(v.shape, f"ONNX {ctx.op} (opset {ctx.opset}) node {ctx.name!r} output")
        wanted = [k for k, name in enumerate(ctx.proto.output) if name]
        if wanted and max(wanted) >= len(outs):
            raise ctx.unsupported(f"output {max(wanted)}", f"the first {len(outs)} output(s)")
        return [fold(v, self.dynamic) if isinstance(v, Tensor) else None if v is None else np.asarray(v) for v in outs]


# ----------------------------------------------------------------------------
# the user's entry points


class OnnxModule(Module):
    """An imported ONNX graph as a dlc Module: its float initializers are parameters (fine-tune them with
    dlc.optim); calling it on dlc Tensors traces the graph."""

    def __init__(self, source, static_inputs=None):
        super().__init__()
        model, base_dir = read_model(source)
        builder = GraphBuilder(model, base_dir, self.store, static_inputs)
        object.__setattr__(self, "builder", builder)
        stats = {n.input[k] for n in builder.nodes if n.op_type == "BatchNormalization"
                 for k in (3, 4) if len(n.input) > k}
        object.__setattr__(self, "onnx_params", {})   # initializer name -> param Tensor
        for name, arr in builder.initializers.items():
            if arr.dtype.kind == "f":
                key = identifier(name, "p")
                while key in self._params:
                    key += "_"
                self.onnx_params[name] = self.add_param(key, arr, trainable=name not in stats)
        object.__setattr__(self, "input_names", {})   # ONNX name -> dlc input name
        for name, _, _ in builder.inputs:
            key = identifier(name, "input")
            while key in self.input_names.values():
                key += "_"
            self.input_names[name] = key

    @property
    def output_names(self) -> list[str]:
        return list(self.builder.outputs)

    def make_inputs(self) -> list[Tensor]:
        """A dlc.input per ONNX graph input, with its symbolic dims as dlc symbols."""
        return [F.input(self.input_names[name], shape, dtype) for name, shape, dtype in self.builder.inputs]

    def __call__(self, *args, **kwargs):
        names = [name for name, _, _ in self.builder.inputs]
        if len(args) > len(names):
            raise TypeError(f"this ONNX graph takes {len(names)} input(s), got {len(args)}")
        feeds = dict(zip(names, args))
        by_key = {v: k for k, v in self.input_names.items()}
        for k, v in kwargs.items():
            feeds[by_key.get(k, k)] = v
        missing = [n for n in names if n not in feeds]
        if missing:
            raise TypeError(f"missing ONNX input(s) {missing}")
        outs = self.builder.run(feeds, self.onnx_params)
        outs = [lift(v, f"graph output {n!r}") for v, n in zip(outs, self.builder.outputs)]
        return outs[0] if len(outs) == 1 else tuple(outs)


def to_module(source, store: Store | None = None, static_inputs=None) -> OnnxModule:
    """An ONNX model (a path or a ModelProto) as a trainable dlc Module (its weights in `store`, a fresh one by
    default). static_inputs {name: array} fixes graph inputs at import (dlc needs shape-controlling values known)."""
    return OnnxModule(source, static_inputs, store=store if store is not None else Store())


def load_model(source, target: str = "reference", store: Store | None = None, static_inputs=None, **options):
    """Import an ONNX model (a path or a ModelProto) and compile it for inference on `target`.

    The returned dlc Function takes the graph inputs (positionally, or by their names made identifiers) and
    returns one array, or a tuple in the graph's output order. `fn.module` is the OnnxModule it came from.
    static_inputs {name: array} fixes graph inputs at import: those that decide shapes (a Reshape's target, a
    Slice's bounds) must be known to dlc, which compiles static-rank programs.
    """
    module = to_module(source, store, static_inputs)
    inputs = module.make_inputs()
    outputs = module(*inputs)
    fn = OnnxFunction(outputs, inputs, None, target, module.store, **options)
    fn.module = module
    fn.boundary_dtypes = ([module.builder.boundary.get(name) for name, _, _ in module.builder.inputs],
                          [module.builder.boundary.get(name) for name in module.builder.outputs])
    return fn


def describe_import(fn) -> str:
    """What an imported model is on the ONNX side: producer, opset, graph size and its inputs and outputs as dlc
    sees them (the header `dlc inspect model.onnx` prints above the fused program)."""
    builder = fn.module.builder
    model, g = builder.model, builder.model.graph
    ops: dict[str, int] = {}
    for n in g.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    producer = " ".join(x for x in (model.producer_name, model.producer_version) if x) or "unknown producer"
    weights = sum(int(a.size) for a in builder.initializers.values())
    lines = [f"# ONNX model: graph {_printable(g.name)!r} from {_printable(producer)}, IR version "
             f"{model.ir_version}, opset {builder.opset}",
             f"  {len(g.node)} nodes: " + ", ".join(f"{_printable(op)} {k}" for op, k in sorted(ops.items())),
             f"  {len(builder.initializers)} initializers ({weights} values)"]
    for (name, shape, dtype), node in zip(builder.inputs, fn.signature.inputs):
        given = builder.boundary.get(name)
        via = f" (given as {given})" if given and given != dtype else ""
        lines.append(f"  input {_printable(name)!r} as {node.attr('name')}: {dtype}{shape_str(shape)}{via}")
    for name in builder.static_inputs:
        lines.append(f"  input {_printable(name)!r}: bound at import")
    for name, node, returned in zip(builder.outputs, fn.outputs, fn.boundary_dtypes[1]):
        via = f" (returned as {returned})" if returned and returned != node.dtype else ""
        lines.append(f"  output {_printable(name)!r}: {node.dtype}{shape_str(node.shape)}{via}")
    lines.append("  kernels below name the ONNX nodes they came from (layer ...)")
    return "\n".join(lines)


class OnnxFunction(Function):
    """A compiled imported model: inputs of ONNX types narrower than dlc's (uint8, float16) are widened on the
    way in, and outputs narrowed back to the model's declared type on the way out."""

    boundary_dtypes = ([], [])

    def __call__(self, *args, **kwargs):
        ins, outs = self.boundary_dtypes
        wide = {node.attr("name"): (node.dtype, d) for node, d in zip(self.signature.inputs, ins)}

        def widen(name, a):
            dtype, onnx_dtype = wide.get(name, (None, None))
            if isinstance(a, np.ndarray) and onnx_dtype and a.dtype.name == onnx_dtype != dtype:
                return a.astype(dtype)
            return a

        args = tuple(widen(name, a) for name, a in zip(self.signature.names, args)) + args[len(self.signature.names):]
        kwargs = {k: widen(k, v) for k, v in kwargs.items()}
        result = super().__call__(*args, **kwargs)
        if not any(d and d not in ("float32", "float64", "int32", "int64", "bool") for d in outs):
            return result
        many = isinstance(result, tuple)
        vals = [np.asarray(v).astype(numpy_dtype(d)) if d and np.asarray(v).dtype.name != d else v
                for v, d in zip(result if many else (result,), outs)]
        return tuple(vals) if many else vals[0]
