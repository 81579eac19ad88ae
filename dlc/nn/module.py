"""Module: a tree of layers whose parameters live in a Store, and the state updates a forward pass records.

Calling a module builds graph; nothing runs. A module's parameters are
`dlc.param` nodes whose values sit in a Store under keys unique to the module
instance ("linear3.weight"), while `named_parameters()` names them by their
place in the tree ("encoder.fc1.weight").

Some layers change state as a side effect of a training forward pass
(batch-norm running statistics, the dropout step counter). They record the
new value with `record_update`; `dlc.nn.compile_step` (or a
`collect_updates()` block around hand-written tracing) turns the records
into updates of the compiled step.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections import OrderedDict

import numpy as np

import dlc.functional as F

from ..graph import SCOPES
from ..store import Store, default_store
from ..tensor import Tensor

# ----------------------------------------------------------------------------
# state updates recorded while tracing


class StateUpdates:
    """The new values that layers recorded for their state during one trace (param key -> Tensor)."""

    def __init__(self):
        self.params: dict[str, Tensor] = {}
        self.values: dict[str, Tensor] = {}

    def record(self, param: Tensor, value: Tensor) -> None:
        key = param.node.attr("name")
        self.params[key] = param
        self.values[key] = value

    def current(self, param: Tensor) -> Tensor:
        """The state's value as seen by the next use: the last recorded update, else the stored value."""
        return self.values.get(param.node.attr("name"), param)

    def updates(self) -> dict[Tensor, Tensor]:
        """{param: new value}, ready for dlc.compile(updates=...)."""
        return {self.params[k]: v for k, v in self.values.items()}

    def __len__(self) -> int:
        return len(self.values)


_COLLECTORS: list[StateUpdates] = []
_WARNED: set[int] = set()


@contextlib.contextmanager
def collect_updates():
    """Record the state updates of every training-mode forward pass traced in this block.

        with dlc.nn.collect_updates() as state:
            loss = loss_fn(model(x), y)
        step = dlc.compile(loss, updates={**optimizer.updates(loss), **state.updates()})
    """
    state = StateUpdates()
    _COLLECTORS.append(state)
    try:
        yield state
    finally:
        _COLLECTORS.remove(state)


def current_state(param: Tensor) -> Tensor:
    """The value a state parameter has at this point of the trace (after earlier recorded updates)."""
    return _COLLECTORS[-1].current(param) if _COLLECTORS else param


def record_update(module: Module, param: Tensor, value: Tensor) -> None:
    """Record a state update; without an active collector it is dropped with a warning (once per module)."""
    if _COLLECTORS:
        _COLLECTORS[-1].record(param, value)
    elif id(module) not in _WARNED:
        _WARNED.add(id(module))
        warnings.warn(f"{type(module).__name__} traced in training mode outside dlc.nn.compile_step or "
                      f"dlc.nn.collect_updates(): its state ({param.node.attr('name')}) will not be updated",
                      stacklevel=3)


# ----------------------------------------------------------------------------
# scopes: the module path each traced node records ("features.0.conv")

_CALLING: list[Module] = []  # the modules whose forward is being traced, innermost last


@contextlib.contextmanager
def name_scope(name: str):
    """Nodes built in this block record `name` under the current module path ("lstm" -> "lstm.l0")."""
    SCOPES.append(f"{SCOPES[-1]}.{name}" if SCOPES and SCOPES[-1] else name)
    try:
        yield
    finally:
        SCOPES.pop()


def _name_in_caller(module: Module) -> str | None:
    """The module's path below the module tracing it; None for the outermost module (the model itself)."""
    if not _CALLING:
        return None
    parent = _CALLING[-1]
    for name, child in parent._modules.items():
        if child is module:
            return name
    return type(module).__name__.lower()  # called by a module that does not own it


# ----------------------------------------------------------------------------
# modules

_STORES: list[Store] = []


class _ModuleMeta(type):
    """Lets any Module subclass be built with store=...: layers built inside its __init__ use that store too."""

    def __call__(cls, *args, store: Store | None = None, **kwargs):
        if store is None:
            return super().__call__(*args, **kwargs)
        _STORES.append(store)
        try:
            return super().__call__(*args, **kwargs)
        finally:
            _STORES.pop()


def _active_store() -> Store:
    return _STORES[-1] if _STORES else default_store()


def _instance_prefix(store: Store, cls_name: str) -> str:
    """A store-key prefix no other module in this store uses: linear1, linear2, ..."""
    base = re.sub(r"[^A-Za-z0-9_]", "_", cls_name).lower()
    taken = {k.split(".", 1)[0] for k in store.keys()}
    i = 1
    while f"{base}{i}" in taken:
        i += 1
    return f"{base}{i}"


class Module(metaclass=_ModuleMeta):
    """Base class of layers and models.

    Assigning a Module or a parameter (made with `self.add_param`) to an
    attribute registers it. `train()` / `eval()` switch the graph that the
    next call builds (batch-norm statistics, dropout).
    """

    def __init__(self):
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_params", OrderedDict())
        object.__setattr__(self, "_trainable", {})
        object.__setattr__(self, "_persistent", {})
        object.__setattr__(self, "store", _active_store())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_prefix", None)

    # ---- registration
    def __setattr__(self, name, value):
        if "_modules" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}.__init__ must call super().__init__() before "
                                 f"assigning {name!r}")
        self._modules.pop(name, None)
        is_param = isinstance(value, Tensor) and value.op == "param"
        if isinstance(value, Module):
            self._modules[name] = value
        elif is_param:
            self._register_param(name, value)
        elif name in self._params:
            raise TypeError(f"cannot replace parameter {name!r} of {type(self).__name__} with a "
                            f"{type(value).__name__}")
        object.__setattr__(self, name, value)

    def _register_param(self, name: str, t: Tensor) -> None:
        """Adopt a dlc.param made outside add_param (it must live in this module's store)."""
        key = t.node.attr("name")
        if key not in self.store:
            raise ValueError(f"{type(self).__name__}.{name}: parameter {key!r} is not in this module's store")
        self._params[name] = t
        self._trainable[name] = self.store.is_trainable(key)
        self._persistent.setdefault(name, True)

    def add_param(self, name: str, value, trainable: bool = True, persistent: bool = True, dtype=None) -> Tensor:
        """Put a value in the store as a parameter of this module and register it under `name`.

        Non-trainable parameters are state (running statistics, counters):
        optimizers skip them. Non-persistent ones are left out of state_dict().
        """
        if not name.isidentifier():
            raise ValueError(f"parameter name must be an identifier, got {name!r}")
        if self._prefix is None:
            object.__setattr__(self, "_prefix", _instance_prefix(self.store, type(self).__name__))
        t = F.param(value, name=f"{self._prefix}.{name}", store=self.store, trainable=trainable, dtype=dtype)
        self._persistent[name] = persistent
        setattr(self, name, t)
        return t

    # ---- traversal
    def named_modules(self, prefix: str = ""):
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        return [m for _, m in self.named_modules()]

    def children(self):
        return list(self._modules.values())

    def _named_all(self):
        for mod_name, m in self.named_modules():
            for name, t in m._params.items():
                yield (f"{mod_name}.{name}" if mod_name else name), m, name, t

    def named_parameters(self):
        """(dotted name, param Tensor) of every trainable parameter, in registration order."""
        return [(full, t) for full, m, name, t in self._named_all() if m._trainable[name]]

    def parameters(self) -> list[Tensor]:
        """The trainable parameters: what an optimizer updates."""
        return [t for _, t in self.named_parameters()]

    def named_buffers(self):
        """(dotted name, param Tensor) of every non-trainable parameter (running statistics, counters)."""
        return [(full, t) for full, m, name, t in self._named_all() if not m._trainable[name]]

    def num_parameters(self) -> int:
        return int(sum(np.prod(t.shape) for t in self.parameters()))

    # ---- modes
    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> Module:
        return self.train(False)

    # ---- values
    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every persistent parameter's value, by dotted name."""
        return {full: self.store[t.node.attr("name")].copy()
                for full, m, name, t in self._named_all() if m._persistent[name]}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy values into the store. With strict, missing and unexpected keys are errors;
        a shape mismatch always is. Nothing is written unless every check passes."""
        own = {full: t for full, m, name, t in self._named_all() if m._persistent[name]}
        problems = []
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and missing:
            problems.append(f"missing key(s): {', '.join(missing)}")
        if strict and unexpected:
            problems.append(f"unexpected key(s): {', '.join(unexpected)}")
        for k, t in own.items():
            if k in state and np.shape(state[k]) != tuple(t.shape):
                problems.append(f"{k}: expected shape {tuple(t.shape)}, got {np.shape(state[k])}")
        if problems:
            raise ValueError(f"cannot load state dict into {type(self).__name__}: " + "; ".join(problems))
        for k, t in own.items():
            if k in state:
                self.store[t.node.attr("name")] = np.asarray(state[k])

    # ---- calling
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args, **kwargs):
        name = _name_in_caller(self)
        _CALLING.append(self)
        try:
            if name is None:
                return self.forward(*args, **kwargs)
            with name_scope(name):
                return self.forward(*args, **kwargs)
        finally:
            _CALLING.pop()

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not self._modules:
            return head + ")"
        lines = [head]
        for name, m in self._modules.items():
            child = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {child}")
        return "\n".join(lines) + "\n)"


class Sequential(Module):
    """Layers applied one after the other; submodules are named 0, 1, 2, ..."""

    def __init__(self, *layers: Module):
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential takes Modules, got {type(layer).__name__} at position {i}")
            setattr(self, str(i), layer)

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, x):
        for layer in self._modules.values():
            x = layer(x)
        return x


class ModuleList(Module):
    """A list of submodules (named 0, 1, 2, ...) that the owner applies as it likes."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, m: Module) -> ModuleList:
        if not isinstance(m, Module):
            raise TypeError(f"ModuleList holds Modules, got {type(m).__name__}")
        setattr(self, str(len(self._modules)), m)
        return self

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())
