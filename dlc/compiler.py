"""dlc.compile: from symbolic outputs (and parameter updates) to a callable on a backend."""

from __future__ import annotations

import numpy as np

from .errors import ShapeError
from .graph import Graph, Node, _factors, as_data, shape_str, symbols_of, topo_order
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
        self._ids = [id(n) for n in inputs]
        self._dtypes = [np.dtype(n.dtype) for n in inputs]
        self._checked: dict[tuple, dict[str, int]] = {}  # shapes of arguments that needed no conversion -> env

    BINDINGS_KEPT = 256   # argument shapes whose checks are remembered

    def _shapes_if_exact(self, args) -> tuple | None:
        """The arguments' shapes when each is a C-contiguous ndarray of its input's exact dtype, else None."""
        shapes = []
        for a, dtype in zip(args, self._dtypes):
            if type(a) is not np.ndarray or a.dtype != dtype or not a.flags.c_contiguous:
                return None
            shapes.append(a.shape)
        return tuple(shapes)

    def describe(self) -> str:
        return ", ".join(f"{n.attr('name')}: {n.dtype}{shape_str(n.shape)}" for n in self.inputs)

    def bind(self, args, kwargs) -> tuple[dict[int, np.ndarray], dict[str, int], list[np.ndarray]]:
        """Check the arguments; return feeds by node id, the symbol bindings, and the arrays in order.

        Arrays that need no conversion are checked once per combination of shapes: a later call with the same
        shapes reuses the bindings (the per-call cost of batch-1 inference).
        """
        shapes = self._shapes_if_exact(args) if not kwargs and len(args) == len(self._ids) else None
        if shapes is not None:
            env = self._checked.get(shapes)
            if env is not None:
                return dict(zip(self._ids, args)), dict(env), list(args)
        feeds, env, arrays = self._bind(args, kwargs)
        if shapes is not None:  # exact arrays are passed on as they are: their checks hold for these shapes
            if len(self._checked) >= self.BINDINGS_KEPT:
                self._checked.clear()
            self._checked[shapes] = dict(env)
        return feeds, env, arrays

    def _bind(self, args, kwargs):
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
        self.program = None   # the optimized Program the backend runs (None on the reference backend)
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
    """The one-way pipeline's last step: optimize fn's graph into a Program and hand it to the target's backend.

    A backend is a class constructed as `Backend(fn, program, **backend_options)`
    with a `run(feeds, env) -> outputs` method; it renders and runs the Program
    and changes nothing in it. The optimizer's options (dlc.passes.OPTIONS) are
    taken here; every other option belongs to the backend, which refuses the
    ones it does not know. The reference backend is the oracle: it runs the
    user's graph node by node and takes no Program.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if target == "reference":
        from .runtime.reference import ReferenceBackend

        fn.program = None
        return ReferenceBackend(fn)
    from . import passes

    if target == "cpu":
        from .runtime.cpu import CPUBackend as backend
    else:
        from .runtime.cuda import CUDABackend as backend
    optimizer_options = {k: v for k, v in options.items() if k in passes.OPTIONS}
    optimizer_options.setdefault("channels_last", target == "cpu")   # its kernels are the cpu target's
    backend_options = {k: v for k, v in options.items() if k not in passes.OPTIONS}
    import inspect

    takes = [p.name for p in list(inspect.signature(backend).parameters.values())[2:]
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(backend_options) - set(takes))
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)} for the {target} target; it takes "
                        f"{', '.join(takes)}, and the optimizer takes {', '.join(passes.OPTIONS)}")
    fn.program = passes.optimize(fn.outputs, fn.updates, fn.inputs, **optimizer_options)
    return backend(fn, fn.program, **backend_options)


def compile(outputs, inputs=None, updates=None, target="reference", store=None, **options) -> Function:  # noqa: A001
    """Compile outputs (a Tensor, list or dict) into a callable.

    inputs: the dlc.input tensors in call order (default: creation order).
    updates: {param: new value} applied after each call (a training step).
    target: "reference" (numpy), "cpu" (numba), "cuda" (pycuda).
    """
    return Function(outputs, inputs, updates, target, store, **options)


def compile_steps(steps, inputs=None, target="reference", store=None, **options) -> Function:
    """Compile steps that run back to back (a GAN's discriminator and generator steps) into one Function.

    steps: a list of (outputs, updates) pairs, each what dlc.compile takes.
    One call runs them all, in order, as one program (one native call on the
    cpu target) and returns a tuple with each step's outputs. Step k sees the
    parameters as the steps before it left them, exactly as calling each
    step's own compiled function in turn would. Values that do not depend on
    an earlier step's updates (the generator's forward pass, which the
    discriminator's step leaves unchanged) are one node, computed once.
    inputs: the union of the steps' inputs, in call order (default: creation order).
    """
    steps = list(steps)
    if not steps:
        raise ValueError("compile_steps needs at least one (outputs, updates) step")
    current: dict[str, Node] = {}   # parameter key -> its value after the steps so far
    flat: list[Tensor] = []
    shapes: list[tuple[int, object]] = []   # per step: how many outputs, and how to rebuild its structure
    final: dict[str, tuple[Node, Node]] = {}
    for k, step in enumerate(steps):
        if not (isinstance(step, (tuple, list)) and len(step) == 2):
            raise TypeError(f"step {k}: expected an (outputs, updates) pair, got {type(step).__name__}")
        outputs, updates = step
        out_list, rebuild = _flatten_outputs(outputs)
        for t in out_list:
            if not isinstance(t, Tensor):
                raise TypeError(f"step {k}: every output must be a Tensor, got {type(t).__name__}")
        pairs = updates.items() if isinstance(updates, dict) else (updates or [])
        pairs = [(p.node if isinstance(p, Tensor) else p, v.node if isinstance(v, Tensor) else v) for p, v in pairs]
        seen = _after_updates(current, [t.node for t in out_list] + [v for _, v in pairs])
        flat += [Tensor(seen[id(t.node)]) for t in out_list]
        shapes.append((len(out_list), rebuild))
        news = {}
        for p, v in pairs:
            if not isinstance(p, Node) or p.op != "param":
                raise TypeError(f"step {k}: updates must assign to parameters (dlc.param), got {p!r}")
            news[p.attr("name")] = (p, seen[id(v)])
        current.update({key: v for key, (_, v) in news.items()})   # every read of step k saw the old values
        final.update(news)
    fn = Function(flat, inputs, [pv for pv in final.values()], target, store, **options)

    def rebuild_steps(values):
        out, at = [], 0
        for count, rebuild in shapes:
            out.append(rebuild(values[at:at + count]))
            at += count
        return tuple(out)

    fn._rebuild = rebuild_steps
    return fn


def _after_updates(current: dict[str, Node], roots: list[Node]) -> dict[int, Node]:
    """id(node) -> the node computing the same value from the parameters as `current` says they are now.

    Nodes are hash-consed, so a value that reads no updated parameter is its own node, shared between steps.
    """
    out: dict[int, Node] = {}
    for n in topo_order(roots):
        if n.op == "param" and n.attr("name") in current:
            out[id(n)] = current[n.attr("name")]
        elif any(out[id(i)] is not i for i in n.inputs):
            out[id(n)] = Node(n.op, tuple(out[id(i)] for i in n.inputs), n.attrs, n.shape, n.dtype, n.loc, n.value)
        else:
            out[id(n)] = n
    return out
