"""The graph IR: immutable nodes, dtypes, shapes with symbolic dims, graphs."""

from __future__ import annotations

import os
import sys
import warnings
import weakref
from collections.abc import Container, Iterable
from dataclasses import dataclass

import numpy as np

from .errors import DTypeError, DTypeWarning

# ----------------------------------------------------------------------------
# dtypes

DTYPES = ("float32", "float64", "int32", "int64", "bool")
FLOAT_DTYPES = ("float32", "float64")
INT_DTYPES = ("int32", "int64")
# The dtype of a multi-output node (scan): its value is a tuple of arrays,
# each picked out by a projection node (scan_output).
TUPLE = "tuple"


def as_dtype(dtype) -> str:
    """Normalise a dtype given as a string, numpy dtype or Python type."""
    if dtype is float:
        return "float32"
    if dtype is int:
        return "int64"
    if dtype is bool:
        return "bool"
    name = np.dtype(dtype).name
    if name not in DTYPES:
        raise TypeError(f"dtype {name!r} is not supported; use one of {', '.join(DTYPES)}")
    return name


_KINDS_ACCEPTED = {"f": "biuf", "i": "biu", "u": "biu", "b": "b"}  # declared kind -> kinds converted to it


def as_data(value, dtype: str, what: str, warned: set, stacklevel: int = 5) -> np.ndarray:
    """value as an array of `dtype`, by one rule: numbers convert within their kind (floats to a float dtype;
    ints and bools to a float or int dtype); a numpy array of a wider type of the same kind (float64 for
    float32) is cast with a DTypeWarning, once per entry point (`warned` holds what it was said about);
    floats for an integer or bool dtype, and anything non-numeric, are refused."""
    if isinstance(value, np.ndarray):
        arr = value
    else:
        try:
            arr = np.asarray(value)
        except Exception as e:  # noqa: BLE001  (anything numpy cannot take)
            raise TypeError(f"{what}: cannot convert {type(value).__name__} to an array: {e}") from None
    target = np.dtype(dtype)
    if arr.dtype == target:
        return arr
    if arr.dtype.kind not in _KINDS_ACCEPTED[target.kind]:
        found = "floating-point values" if arr.dtype.kind == "f" else f"{arr.dtype.name} values"
        raise DTypeError(f"{what}: expected dtype {dtype}, got {found}"
                         + (f" (convert with .astype(np.{dtype}) if that is meant)" if arr.dtype.kind in "biuf"
                            else ""))
    narrowing = arr.dtype.kind == target.kind and arr.dtype.itemsize > target.itemsize
    if narrowing and target.kind in "iu" and arr.size:
        info = np.iinfo(target)
        if arr.min() < info.min or arr.max() > info.max:
            raise DTypeError(f"{what}: {arr.dtype.name} values outside the range of {dtype}")
    if narrowing and isinstance(value, np.ndarray):
        key = (what, arr.dtype.name, dtype)
        if key not in warned:
            warned.add(key)
            warnings.warn(f"{what}: {arr.dtype.name} data converted to {dtype} (said once; pass {dtype} "
                          f"arrays to avoid the copy)", DTypeWarning, stacklevel=stacklevel)
    return np.asarray(arr, dtype=target)


def is_float(dtype: str) -> bool:
    return dtype in FLOAT_DTYPES


# ----------------------------------------------------------------------------
# dims and shapes
#
# A dim is an int, or a symbolic product written as a canonical string:
# "B", "T", "B*T", "4*B". Products appear when a reshape merges a symbolic dim
# with others (an LSTM's (T, B, H) -> (T*B, H)).

Dim = int | str
Shape = tuple


def _factors(d: Dim) -> tuple[int, list[str]]:
    if isinstance(d, (int, np.integer)):
        return int(d), []
    coef, syms = 1, []
    for part in d.split("*"):
        part = part.strip()
        if part.lstrip("-").isdigit():
            coef *= int(part)
        else:
            syms.append(part)
    return coef, sorted(syms)


def _make_dim(coef: int, syms: list[str]) -> Dim:
    if not syms or coef == 0:
        return coef
    syms = sorted(syms)
    return "*".join(([str(coef)] if coef != 1 else []) + syms)


def dim_mul(*dims: Dim) -> Dim:
    coef, syms = 1, []
    for d in dims:
        c, s = _factors(d)
        coef *= c
        syms += s
    return _make_dim(coef, syms) if coef != 0 else 0


def dim_div(a: Dim, b: Dim) -> Dim | None:
    """a / b when it divides exactly (as a product of ints and symbols), else None."""
    ca, sa = _factors(a)
    cb, sb = _factors(b)
    if cb == 0 or ca % cb:
        return None
    rest = list(sa)
    for s in sb:
        if s not in rest:
            return None
        rest.remove(s)
    return _make_dim(ca // cb, rest)


def dim_eval(d: Dim, env: dict[str, int]) -> int:
    coef, syms = _factors(d)
    for s in syms:
        if s not in env:
            raise KeyError(f"symbolic dim {s!r} is not bound (bound: {sorted(env) or 'none'})")
        coef *= env[s]
    return coef


def shape_eval(shape: Shape, env: dict[str, int]) -> tuple[int, ...]:
    return tuple(dim_eval(d, env) for d in shape)


def is_static(shape: Shape) -> bool:
    return all(isinstance(d, int) for d in shape)


def shape_str(shape: Shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def symbols_of(shape: Shape) -> set[str]:
    return {s for d in shape for s in _factors(d)[1]}


def as_shape(shape: Iterable) -> Shape:
    """A user's shape checked: non-negative ints and symbols ("B", or products like "B*T")."""
    out = []
    for d in shape:
        if isinstance(d, (bool, np.bool_)):
            raise TypeError(f"a dim must be an int or a symbol name, got {d!r}")
        if isinstance(d, (int, np.integer)):
            if d < 0:
                raise ValueError(f"a dim cannot be negative, got {d} in {tuple(shape)}")
            out.append(int(d))
        elif isinstance(d, str):
            parts = [p.strip() for p in d.split("*")]
            if not all(p.isidentifier() or p.isdigit() for p in parts):
                raise ValueError(f"a symbolic dim is a name or a product of names and ints like 'B*T', got {d!r}")
            out.append(_make_dim(*_factors(d)))
        else:
            raise TypeError(f"a dim must be an int or a symbol name, got {d!r}")
    return tuple(out)


# ----------------------------------------------------------------------------
# source locations


@dataclass(frozen=True)
class SourceLoc:
    file: str
    line: int
    code: str = ""
    scope: str = ""  # the module path that made the node ("features.0.conv"), "" outside nn modules

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" + (f" (in {self.scope})" if self.scope else "")


_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
# The module paths being traced, innermost last ("features", "features.0"); dlc.nn's Module.__call__ pushes them.
SCOPES: list[str] = []


def user_location() -> SourceLoc | None:
    """The first stack frame outside the dlc package (the user's DSL line), with the module path being traced."""
    f = sys._getframe(1)
    while f is not None:
        fn = f.f_code.co_filename
        if not os.path.abspath(fn).startswith(_PKG_DIR + os.sep):
            return SourceLoc(fn, f.f_lineno, scope=SCOPES[-1] if SCOPES else "")
        f = f.f_back
    return None


# ----------------------------------------------------------------------------
# nodes

_INTERN: weakref.WeakValueDictionary[tuple, Node] = weakref.WeakValueDictionary()
_SERIAL = [0]
_DECLARED = ("input", "param")  # each call makes a new node: never merged with an equal one


class Node:
    """One operation in the graph; immutable and hash-consed.

    Two nodes built from the same op, inputs, attributes, shape and dtype are
    the same object, which gives common-subexpression elimination while
    tracing. Graph inputs are the exception: each `dlc.input` call declares a
    new one, so a function's default argument order is the order of the
    declarations; so is each `dlc.param` call (two stores may both hold a
    "w", and a node kept alive by an earlier trace must not lend this one its
    source line). `value` holds the array of a constant (its digest is in attrs).
    """

    __slots__ = ("op", "inputs", "attrs", "shape", "dtype", "loc", "value", "serial", "__weakref__")

    def __new__(cls, op: str, inputs: tuple, attrs: tuple, shape: Shape, dtype: str,
                loc: SourceLoc | None = None, value: np.ndarray | None = None):
        key = (op, tuple(id(i) for i in inputs), attrs, shape, dtype)
        declared = op in _DECLARED
        node = None if declared else _INTERN.get(key)
        if node is not None:
            return node
        node = object.__new__(cls)
        node.op, node.inputs, node.attrs = op, tuple(inputs), attrs
        node.shape, node.dtype, node.loc, node.value = shape, dtype, loc, value
        _SERIAL[0] += 1
        node.serial = _SERIAL[0]
        if not declared:
            _INTERN[key] = node
        return node

    def attr(self, name: str, default=None):
        for k, v in self.attrs:
            if k == name:
                return v
        return default

    @property
    def a(self) -> dict:
        return dict(self.attrs)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        attrs = ", ".join(f"{k}={v!r}" for k, v in self.attrs if k != "digest")
        return f"%{self.serial} = {self.op}({', '.join('%' + str(i.serial) for i in self.inputs)}" + \
            (f"; {attrs}" if attrs else "") + f") : {self.dtype}{shape_str(self.shape)}"


def freeze_attrs(attrs: dict) -> tuple:
    def freeze(v):
        if isinstance(v, list):
            return tuple(freeze(x) for x in v)
        if isinstance(v, np.generic):
            return v.item()
        return v
    return tuple(sorted((k, freeze(v)) for k, v in attrs.items()))


# ----------------------------------------------------------------------------
# graphs


def topo_order(outputs: Iterable[Node], known: Container[int] = ()) -> list[Node]:
    """Every node the outputs depend on, each after its inputs (iterative DFS).

    Nodes whose ids are in `known` are left out and not walked through: a
    caller that has handled a node and everything under it (a cache of
    per-node results) pays only for the new part of a graph."""
    order, seen = [], set()
    for root in outputs:
        if id(root) in seen or id(root) in known:
            continue
        stack = [(root, 0)]
        while stack:
            node, i = stack.pop()
            if i == 0 and id(node) in seen:
                continue
            if i < len(node.inputs):
                stack.append((node, i + 1))
                child = node.inputs[i]
                if id(child) not in seen and id(child) not in known:
                    stack.append((child, 0))
            else:
                seen.add(id(node))
                order.append(node)
    return order


class Graph:
    """The nodes that a set of outputs depends on, in topological order."""

    def __init__(self, outputs: Iterable[Node]):
        self.outputs = tuple(outputs)
        self.nodes = topo_order(self.outputs)

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self):
        return iter(self.nodes)

    def inputs(self) -> list[Node]:
        return [n for n in self.nodes if n.op == "input"]

    def params(self) -> list[Node]:
        return [n for n in self.nodes if n.op == "param"]

    def consumers(self) -> dict[int, list[Node]]:
        users: dict[int, list[Node]] = {id(n): [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                users[id(i)].append(n)
        return users

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def to_networkx(self):
        import networkx as nx

        g = nx.DiGraph()
        for n in self.nodes:
            g.add_node(n.serial, op=n.op, shape=shape_str(n.shape), dtype=n.dtype,
                       loc=str(n.loc) if n.loc else "")
            for i in n.inputs:
                g.add_edge(i.serial, n.serial)
        return g

    def to_dot(self) -> str:
        lines = ["digraph dlc {", "  node [shape=box, fontname=monospace];"]
        for n in self.nodes:
            label = f"{n.op}\\n{n.dtype}{shape_str(n.shape)}"
            name = n.attr("name")
            if name:
                label = f"{name}\\n" + label
            lines.append(f'  n{n.serial} [label="{label}"];')
            for i in n.inputs:
                lines.append(f"  n{i.serial} -> n{n.serial};")
        lines.append("}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return "\n".join(repr(n) + (f"  # {n.loc}" if n.loc else "") for n in self.nodes)
