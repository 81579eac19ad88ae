"""Numerics bisection: run a program kernel by kernel next to the numpy reference, find the first bad kernel.

`run_program_reference` is a Program interpreter in numpy: it executes each
kernel's nodes with the ops' references, reading only what the kernel lists as
inputs and keeping only what it lists as outputs, so it checks the fusion
contract as much as the arithmetic. `bisect(fn, *args)` compares a backend's
per-kernel values (its `kernel_values(feeds, env)` debug hook, or this
interpreter when the backend has none) against a node-by-node evaluation of
the same optimized graph, and names the first kernel whose output differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .graph import TUPLE, Node, shape_eval
from .program import Kernel, Program
from .runtime.reference import evaluate, node_value


def source_value(node: Node, feeds: dict, store, env: dict) -> np.ndarray | None:
    """The value of an input, param, const or size node; None for anything else."""
    if node.op == "input":
        return feeds[id(node)]
    if node.op == "param":
        return store[node.attr("name")]
    if node.op == "const":
        return node.value
    if node.op == "size":
        dims = shape_eval(node.inputs[0].shape, env)
        return np.array(np.prod([dims[a] for a in node.attr("axes")], dtype=np.int64), dtype=node.dtype)
    return None


def run_kernel(kernel: Kernel, read, env: dict) -> dict[int, np.ndarray]:
    """Values of the kernel's outputs; `read(node)` gives the value of one of its inputs."""
    local: dict[int, np.ndarray] = {}
    allowed = {id(i) for i in kernel.inputs}
    for n in kernel.nodes:
        args = []
        for i in n.inputs:
            if id(i) in local:
                args.append(local[id(i)])
            elif id(i) in allowed:
                args.append(read(i))
            else:
                raise AssertionError(f"kernel {kernel.name}: {n!r} reads {i!r}, which is neither computed "
                                     f"in the kernel nor one of its inputs")
        with np.errstate(all="ignore"):
            v = node_value(n, args, shape_eval(n.shape, env))
        # a multi-output node (scan) holds a tuple of arrays
        local[id(n)] = v if n.dtype == TUPLE else np.asarray(v).astype(n.dtype, copy=False)
    missing = [o for o in kernel.outputs if id(o) not in local]
    if missing:
        raise AssertionError(f"kernel {kernel.name} does not compute its output(s) {missing}")
    return {id(o): local[id(o)] for o in kernel.outputs}


def _run(program: Program, feeds: dict, store, env: dict):
    values: dict[int, np.ndarray] = {}

    def read(node: Node) -> np.ndarray:
        if node.op == "reshape":
            return read(node.inputs[0]).reshape(shape_eval(node.shape, env))
        v = source_value(node, feeds, store, env)
        if v is not None:
            return v
        if id(node) not in values:
            raise AssertionError(f"{node!r} is read before any kernel computes it")
        return values[id(node)]

    for k in program.kernels:
        values.update(run_kernel(k, read, env))
    return values, read


def run_program_reference(program: Program, feeds: dict, store, env: dict) -> dict[int, np.ndarray]:
    """Execute the program kernel by kernel with numpy; returns every kernel output by node id."""
    return _run(program, feeds, store, env)[0]


def program_results(program: Program, feeds: dict, store, env: dict):
    """(outputs, [(param key, new value)]) of the program executed kernel by kernel with numpy."""
    _, read = _run(program, feeds, store, env)
    return [np.array(read(n)) for n in program.outputs], [(k, np.array(read(n))) for k, n in program.updates]


@dataclass
class BisectReport:
    """Where a compiled function's numerics first leave the reference (kernel None: nowhere)."""

    kernel: Kernel | None = None
    node: Node | None = None
    max_error: float = 0.0
    checked: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.kernel is None

    def __str__(self) -> str:
        if self.ok:
            return f"all {self.checked} kernels match the reference" + \
                "".join(f"\n  {n}" for n in self.notes)
        k = self.kernel
        scopes = list(dict.fromkeys(n.loc.scope for n in k.nodes if n.loc is not None and n.loc.scope))
        layer = f" in layer {', '.join(scopes)}" if scopes else ""
        lines = [f"first mismatch in kernel {k.name} [{k.kind}]{layer} (after {self.checked} good kernels):",
                 f"  output {self.node!r}: max abs error {self.max_error:.3g}",
                 "  nodes: " + " -> ".join(n.op for n in k.nodes)]
        lines += [f"  from {src}" for src in k.source_lines()]
        return "\n".join(lines + [f"  {n}" for n in self.notes])


def close(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> tuple[bool, float]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False, float("inf")
    if a.dtype.kind in "biu":
        bad = a != b
        return not bad.any(), float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max(initial=0.0))
    err = np.abs(a.astype(np.float64) - b.astype(np.float64))
    same_nonfinite = (~np.isfinite(a)) & (a.astype(np.float64) == b.astype(np.float64))
    err = np.where(same_nonfinite | (np.isnan(a) & np.isnan(b)), 0.0, err)
    ok = bool(np.all(err <= atol + rtol * np.abs(b.astype(np.float64))))
    return ok, float(err.max(initial=0.0))


def bisect(fn, *args, rtol: float = 1e-4, atol: float = 1e-5, **kwargs) -> BisectReport:
    """Run fn's program kernel by kernel and report the first kernel that disagrees with numpy.

    The store is not modified: the reference runs on a snapshot of the
    parameters, and updates are not applied.
    """
    from .passes import optimize

    feeds, env, _ = fn.signature.bind(args, kwargs)
    backend = fn.backend
    program = fn.program or optimize(fn.outputs, fn.updates, fn.inputs)
    snapshot = {k: v.copy() for k, v in fn.store.items()}
    kept = {id(o) for k in program.kernels for o in k.outputs} | {id(n) for n in program.outputs}
    expected = evaluate(program.graph.nodes, feeds, snapshot, env, keep=kept)
    report = BisectReport()
    original = evaluate(fn.graph.nodes, feeds, snapshot, env, keep={id(n) for n in fn.outputs})
    for i, (before, after) in enumerate(zip(fn.outputs, program.outputs)):
        ok, err = close(expected[id(after)], original[id(before)], rtol, atol)
        if not ok:
            report.notes.append(f"simplification changed output {i} by up to {err:.3g}")
    if hasattr(backend, "kernel_values"):
        got = backend.kernel_values(feeds, env)
    else:
        got = run_program_reference(program, feeds, snapshot, env)
    for k in program.kernels:
        for o in k.outputs:
            ok, err = close(got[id(o)], expected[id(o)], rtol, atol)
            if not ok:
                report.kernel, report.node, report.max_error = k, o, err
                return report
        report.checked += 1
    return report
