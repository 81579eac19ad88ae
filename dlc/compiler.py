"""dlc.compile: from symbolic outputs (and parameter updates) to a callable on a backend."""

from __future__ import annotations

import numpy as np

from .errors import ShapeError
from .graph import Graph, Node, _factors, as_data, shape_str, symbols_of
from .store import Store, default_store
from .tensor import Tensor

TARGETS = ("reference", "cpu", "cuda")


def default_target() -> str:
    """The backend examples and tools use unless told otherwise: $DLC_TARGET, else the best available."""
    import os

    target = os.environ.get("DLC_TARGET")
    if target:
        if target not in TARGETS:
            raise ValueError(f"DLC_TARGET={target!r} is not one of {', '.join(TARGETS)}")
        return target
    import importlib.util

    # the Numba backend when numba is importable (a required dependency; the check keeps a broken install usable)
    return "cpu" if importlib.util.find_spec("numba") is not None else "reference"


def _flatten_outputs(outputs):
    """(list of tensors, a function rebuilding the user's structure from a list of arrays)."""
    if isinstance(outputs, Tensor):
        return [outputs], lambda vals: vals[0]
    if isinstance(outputs, dict):
        keys = list(outputs)
        return [outputs[k] for k in keys], lambda vals: dict(zip(keys, vals))
    if isinstance(outputs, (list, tuple)):
        kind = type(outputs)
        return list(outputs), lambda vals: kind(vals)
    raise TypeError(f"outputs must be a Tensor, a list/tuple or a dict of Tensors, got {type(outputs).__name__}")


class Signature:
    """The inputs of a compiled function, and the checks every call goes through first."""

    def __init__(self, inputs: list[Node]):
        names = [n.attr("name") for n in inputs]
        dup = {x for x in names if names.count(x) > 1}
        if dup:
            raise ValueError(f"two different inputs are named {sorted(dup)}")
        self.inputs = inputs
        self.names = names
        self.warned: set = set()  # the dtype conversions already warned about (once per input)

    def describe(self) -> str:
        return ", ".join(f"{n.attr('name')}: {n.dtype}{shape_str(n.shape)}" for n in self.inputs)

    def bind(self, args, kwargs) -> tuple[dict[int, np.ndarray], dict[str, int], list[np.ndarray]]:
        """Check the arguments; return feeds by node id, the symbol bindings, and the arrays in order."""
        if len(args) > len(self.inputs):
            raise TypeError(f"expected at most {len(self.inputs)} arguments ({self.describe()}), got {len(args)}")
        given = dict(zip(self.names, args))
        for k, v in kwargs.items():
            if k not in self.names:
                raise TypeError(f"unexpected input {k!r}; this function takes ({self.describe()})")
            if k in given:
                raise TypeError(f"input {k!r} given twice")
            given[k] = v
        missing = [n for n in self.names if n not in given]
        if missing:
            raise TypeError(f"missing input(s) {', '.join(map(repr, missing))}; this function takes "
                            f"({self.describe()})")
        env: dict[str, int] = {}
        arrays = []
        for node in self.inputs:
            name = node.attr("name")
            arr = self._as_array(name, node, given[name])
            if arr.ndim != node.ndim:
                raise ShapeError(f"input {name!r}: expected shape {shape_str(node.shape)} ({node.ndim}-d), "
                                 f"got {arr.shape} ({arr.ndim}-d)")
            for d, v in zip(node.shape, arr.shape):
                if isinstance(d, int):
                    if d != v:
                        raise ShapeError(f"input {name!r}: expected shape {shape_str(node.shape)}, got {arr.shape}")
                elif "*" not in d:
                    if env.setdefault(d, v) != v:
                        raise ShapeError(f"input {name!r}: dim {d!r} is {v} here but {env[d]} in an earlier "
                                         f"input; expected shape {shape_str(node.shape)}, got {arr.shape}")
            arrays.append(arr)
        # product dims ("B*T") are checked once every plain symbol is bound
        for node, arr in zip(self.inputs, arrays):
            for d, v in zip(node.shape, arr.shape):
                if isinstance(d, str) and "*" in d:
                    coef, syms = _factors(d)
                    unknown = [s for s in syms if s not in env]
                    known = coef
                    for s in syms:
                        known *= env.get(s, 1)
                    if len(unknown) == 1 and known and v % known == 0:
                        env[unknown[0]] = v // known
                    elif unknown or known != v:
                        raise ShapeError(f"input {node.attr('name')!r}: dim {d!r} does not match size {v}")
        return {id(n): a for n, a in zip(self.inputs, arrays)}, env, arrays

    def _as_array(self, name: str, node: Node, value) -> np.ndarray:
        if isinstance(value, Tensor):
            raise TypeError(f"input {name!r}: got a symbolic Tensor; a compiled function takes numpy arrays")
        arr = as_data(value, node.dtype, f"input {name!r}", self.warned)
        # a non-contiguous view is copied: native code assumes C order
        return arr if arr.flags.c_contiguous else arr.copy(order="C")


# ----------------------------------------------------------------------------
# the dtype rule for data entering dlc (compiled-function arguments, dlc.param, nn.fit's arrays)

class Function:
    """A compiled function: call it with numpy arrays (positionally or by input name).

    Parameter updates, if any, are applied to the store after the outputs are
    computed (every read sees the values from before the call).
    """

    def __init__(self, outputs, inputs=None, updates=None, target="reference", store: Store | None = None,
                 **options):
        out_list, self._rebuild = _flatten_outputs(outputs)
        for t in out_list:
            if not isinstance(t, Tensor):
                raise TypeError(f"every output must be a Tensor, got {type(t).__name__}")
        self.store = store if store is not None else default_store()
        self.updates = self._check_updates(updates)
        self.outputs = [t.node for t in out_list]
        self.graph = Graph(self.outputs + [n for _, n in self.updates])
        found = self.graph.inputs()
        if inputs is None:
            inputs = sorted(found, key=lambda n: n.serial)
        else:
            inputs = [t.node if isinstance(t, Tensor) else t for t in inputs]
            for n in inputs:
                if n.op != "input":
                    raise TypeError(f"inputs must be tensors made with dlc.input, got {n.op} node")
            missing = [n.attr("name") for n in found if all(n is not m for m in inputs)]
            if missing:
                raise ValueError(f"the outputs depend on input(s) {missing} not listed in inputs=")
        self.signature = Signature(list(inputs))
        self._check_symbols_bound()
        for p in self.graph.params():
            if p.attr("name") not in self.store:
                raise KeyError(f"parameter {p.attr('name')!r} is not in this function's store")
        self.target = target
        self.options = options
        self.backend = make_backend(self, target, options)

    def _check_symbols_bound(self) -> None:
        """Every symbolic dim in the graph must be bound by some input's shape at call time."""
        bound = set().union(*(symbols_of(n.shape) for n in self.signature.inputs))
        for n in self.graph.nodes:
            missing = symbols_of(n.shape) - bound
            if missing:
                where = f" (built at {n.loc})" if n.loc else ""
                raise ShapeError(f"{n.op}{where} has symbolic dim(s) {sorted(missing)} that no input binds; "
                                 f"list an input with that dim in inputs=[...]")

    def _check_updates(self, updates) -> list[tuple[str, Node]]:
        if updates is None:
            return []
        pairs = updates.items() if isinstance(updates, dict) else updates
        out, seen = [], set()
        for p, v in pairs:
            p = p.node if isinstance(p, Tensor) else p
            v = v.node if isinstance(v, Tensor) else v
            if p.op != "param":
                raise TypeError(f"updates must assign to parameters (dlc.param), got a {p.op} node")
            key = p.attr("name")
            if key in seen:
                raise ValueError(f"parameter {key!r} is updated twice")
            seen.add(key)
            if tuple(v.shape) != tuple(p.shape) or v.dtype != p.dtype:
                raise ShapeError(f"update of {key!r}: new value is {v.dtype}{shape_str(v.shape)}, "
                                 f"parameter is {p.dtype}{shape_str(p.shape)}")
            out.append((key, v))
        return out

    @property
    def inputs(self) -> list[Node]:
        return self.signature.inputs

    def __call__(self, *args, **kwargs):
        feeds, env, _ = self.signature.bind(args, kwargs)
        results = self.backend.run(feeds, env)
        return self._rebuild(results)

    def __repr__(self) -> str:
        return (f"<dlc.Function ({self.signature.describe()}) -> {len(self.outputs)} output(s), "
                f"{len(self.updates)} update(s), target={self.target}>")


def make_backend(fn: Function, target: str, options: dict):
    if target == "reference":
        from .runtime.reference import ReferenceBackend

        return ReferenceBackend(fn)
    if target == "cpu":
        from .runtime.cpu import CPUBackend

        return CPUBackend(fn, **options)
    if target == "cuda":
        from .runtime.cuda import CUDABackend

        return CUDABackend(fn, **options)
    raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")


def compile(outputs, inputs=None, updates=None, target="reference", store=None, **options) -> Function:  # noqa: A001
    """Compile outputs (a Tensor, list or dict) into a callable.

    inputs: the dlc.input tensors in call order (default: creation order).
    updates: {param: new value} applied after each call (a training step).
    target: "reference" (numpy), "cpu" (numba), "cuda" (pycuda).
    """
    return Function(outputs, inputs, updates, target, store, **options)
