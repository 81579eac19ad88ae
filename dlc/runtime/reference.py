"""The reference executor: runs any graph node by node with numpy; the oracle for every backend."""

from __future__ import annotations

import numpy as np

from ..errors import IndexRangeError
from ..graph import TUPLE, Node, shape_eval
from ..ops import OPS
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
            try:
                v = OPS[n.op].ref([values[id(x)] for x in n.inputs], n.a, shape)
            except IndexRangeError as e:  # a bad index or label: name the user's line
                raise e.located(n.loc) from None
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
