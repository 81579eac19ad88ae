"""The reference executor: runs any graph node by node with numpy; the oracle for every backend."""

from __future__ import annotations

import numpy as np

from ..errors import CollectiveTimeoutError, IndexRangeError, ShapeError
from ..graph import TUPLE, Node, dim_eval, shape_eval, shape_str
from ..ops import OPS
from ..ops.scan import Body, loop_symbols
from . import update_lock


def evaluate(order: list[Node], feeds: dict[int, np.ndarray], store, env: dict[str, int],
             keep=None) -> dict[int, np.ndarray]:
    """Values of the nodes in `order` (topologically sorted).

    feeds maps id(input node) -> array; env binds the symbolic dims. `keep`
    (a set of node ids) limits what is returned; intermediates are dropped as
    soon as nothing needs them.
    """
    last_use: dict[int, int] = {}
    for i, n in enumerate(order):
        for inp in n.inputs:
            last_use[id(inp)] = i
    values: dict[int, np.ndarray] = {}
    for i, n in enumerate(order):
        if n.op == "input":
            v = feeds[id(n)]
        elif n.op == "param":
            v = store[n.attr("name")]
        elif n.op == "const":
            v = n.value
        else:
            shape = shape_eval(n.shape, env)
            v = node_value(n, [values[id(x)] for x in n.inputs], shape)
            if n.dtype != TUPLE:  # a multi-output node's value is a tuple of arrays
                v = np.asarray(v)
                if v.dtype.name != n.dtype:
                    v = v.astype(n.dtype)
                if v.shape != shape:
                    raise AssertionError(f"reference of {n!r} produced shape {v.shape}, inferred {shape}")
        values[id(n)] = v
        for inp in n.inputs:
            if last_use.get(id(inp)) == i and (keep is None or id(inp) not in keep):
                values.pop(id(inp), None)
    if keep is not None:
        return {k: values[k] for k in keep if k in values}
    return values


class ReferenceBackend:
    """Executes a compiled signature's graph with numpy, node by node."""

    name = "reference"

    def __init__(self, fn):
        self.fn = fn
        self.order = fn.graph.nodes
        self.keep = {id(n) for n in fn.graph.outputs}
        # no state of its own between calls; calls that update the store run one at a time
        self._update_lock = update_lock(fn.store) if fn.updates else None

    def run(self, feeds: dict[int, np.ndarray], env: dict[str, int]) -> list[np.ndarray]:
        if self._update_lock is None:
            return self._run(feeds, env)
        with self._update_lock:
            return self._run(feeds, env)

    def _run(self, feeds: dict[int, np.ndarray], env: dict[str, int]) -> list[np.ndarray]:
        values = evaluate(self.order, feeds, self.fn.store, env, self.keep)
        # Outputs and new values may be the parameter arrays themselves or views
        # of them (a reshape, a slice, stop_gradient): copy those before any
        # update writes in place, so that every output and every update sees
        # the values from before the call (a swap {a: b, b: a} included).
        updated = [self.fn.store[key] for key, _ in self.fn.updates]

        def detached(v):
            return v.copy() if any(np.may_share_memory(v, p) for p in updated) else v

        outs = [values[id(n)].copy() if not n.inputs else detached(values[id(n)]) for n in self.fn.outputs]
        new_values = [(key, detached(values[id(node)])) for key, node in self.fn.updates]
        for key, value in new_values:
            self.fn.store[key] = value
        return outs


def node_value(node: Node, arrays: list, shape: tuple):
    """One node's value from its inputs' arrays: the op's numpy reference, or for a scan the loop below.

    Every backend's host-side path comes here: a run-time error about the
    data (a bad index or label, a collective that timed out) names the user's
    line that built the node.
    """
    try:
        if node.op == "scan":
            return scan_value(arrays, node.a, shape)
        return OPS[node.op].ref(arrays, node.a, shape)
    except (IndexRangeError, CollectiveTimeoutError) as e:
        raise e.located(node.loc) from None


# ----------------------------------------------------------------------------
# scan: its body graph evaluated step by step


def _check_arrays(body: Body, carries, xs, captured, env) -> None:
    """The arrays a backend hands over must fit the placeholders (a clear error, not a numpy one deep inside)."""
    pairs = (list(zip(body.carry_in, (c.shape for c in carries))) + list(zip(body.x_in, (x.shape[1:] for x in xs)))
             + list(zip(body.captured_in, (c.shape for c in captured))))
    for p, shape in pairs:
        if shape_eval(p.shape, env) != tuple(shape):
            raise ShapeError(f"{p.attr('name')} is {p.dtype}{shape_str(p.shape)} with {env}, "
                             f"got an array of shape {shape}")


def run_scan(body: Body, arrays: list[np.ndarray], env: dict[str, int], reverse: bool, length,
             save_carries: bool = True) -> tuple:
    """The numpy reference of a scan: the body graph evaluated step by step; env binds the loop's symbols."""
    C, X = len(body.carry_in), len(body.x_in)
    carries, xs, captured = list(arrays[:C]), arrays[C:C + X], arrays[C + X:]
    T = xs[0].shape[0] if xs else dim_eval(length, env)
    _check_arrays(body, carries, xs, captured, env)
    ys = [np.empty((T,) + shape_eval(y.shape, env), y.dtype) for y in body.y_out]
    saved = [np.empty((T,) + c.shape, c.dtype) for c in carries] if save_carries else []
    feeds = {id(p): a for p, a in zip(body.captured_in, captured)}
    keep = {id(n) for n in body.graph.outputs}
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        for k, c in enumerate(carries):
            if save_carries:
                saved[k][t] = c
            feeds[id(body.carry_in[k])] = c
        for p, x in zip(body.x_in, xs):
            feeds[id(p)] = x[t]
        feeds[id(body.step_in)] = np.array(t, dtype=np.int64)
        values = evaluate(body.graph.nodes, feeds, None, env, keep)
        carries = [values[id(n)] for n in body.carry_out]
        for y, n in zip(ys, body.y_out):
            y[t] = values[id(n)]
    return tuple([np.array(c) for c in carries] + ys + saved)


def scan_value(arrays, attrs, shape):
    body, length = attrs["body"], attrs["length"]
    env = dict(zip(loop_symbols(body, length), shape))
    return run_scan(body, arrays, env, attrs["reverse"], length, attrs["save_carries"])
