"""Optimizers as graph builders, and learning-rate schedules.

An optimizer turns a loss into parameter updates built from graph nodes, so a
single compiled function does the forward pass, the backward pass and the
update. Its state (moments, the step count for bias correction) and its
learning rate are non-trainable parameters in the store: a schedule writes
the learning rate between calls and the compiled step reads it, so changing
it never recompiles.

    opt = dlc.optim.Adam(model.parameters(), lr=1e-3)
    step = dlc.compile(loss, updates=opt.updates(loss))
    opt.lr = 1e-4                      # takes effect at the next call
"""

from __future__ import annotations

import math

import numpy as np

import dlc.functional as F

from .autodiff import grad as _grad
from .graph import is_float
from .store import Store, default_store
from .tensor import Tensor


def _prefix(store: Store, base: str) -> str:
    taken = {k.split(".", 1)[0] for k in store.keys()}
    i = 1
    while f"{base}{i}" in taken:
        i += 1
    return f"{base}{i}"


def global_norm(tensors) -> Tensor:
    """sqrt of the sum of squares of every element of every tensor."""
    return F.sqrt(sum(F.sum(F.square(t)) for t in tensors))


def clip_by_global_norm(grads, max_norm: float, eps: float = 1e-6) -> list[Tensor]:
    """Scale all gradients by min(1, max_norm / global_norm) (PyTorch's clip_grad_norm_)."""
    scale = F.minimum(max_norm / (global_norm(grads) + eps), 1.0)
    return [g * scale for g in grads]


class Optimizer:
    """Base class: owns the parameter list, the learning-rate parameter and the state in the store.

    params: trainable dlc.param tensors (model.parameters()); they must be in
    `store` (the default store unless given). max_grad_norm clips the
    gradients by their global norm before the update.
    """

    def __init__(self, params, lr: float, store: Store | None = None, max_grad_norm: float | None = None):
        self.store = store if store is not None else default_store()
        self.params = self._check_params(params)
        self.max_grad_norm = max_grad_norm
        self.prefix = _prefix(self.store, type(self).__name__.lower())
        self._lr = self._state("lr", np.array(lr, np.float64))  # cast to each parameter's dtype where used

    def _check_params(self, params) -> list[Tensor]:
        params = list(params.parameters() if hasattr(params, "parameters") else params)
        if not params:
            raise ValueError(f"{type(self).__name__} was given no parameters to optimize")
        seen = set()
        for p in params:
            if not isinstance(p, Tensor) or p.op != "param":
                raise TypeError(f"{type(self).__name__} optimizes dlc.param tensors, got {p!r}")
            key = p.node.attr("name")
            if key not in self.store:
                raise KeyError(f"parameter {key!r} is not in this optimizer's store (pass store=)")
            if not self.store.is_trainable(key):
                raise ValueError(f"parameter {key!r} is not trainable (it is state, such as a running statistic)")
            if not is_float(p.dtype):
                raise TypeError(f"parameter {key!r} has dtype {p.dtype}; only floating-point ones can be optimized")
            if key in seen:
                raise ValueError(f"parameter {key!r} is given twice")
            seen.add(key)
        return params

    def _state(self, name: str, value) -> Tensor:
        value = np.asarray(value)
        return F.param(value, name=f"{self.prefix}.{name}", store=self.store, trainable=False, dtype=value.dtype)

    def _slot(self, p: Tensor, name: str) -> Tensor:
        """A zero-initialized per-parameter state array (a moment estimate)."""
        return self._state(f"{name}.{p.node.attr('name')}", np.zeros(p.shape, p.dtype))

    # ---- the learning rate: a runtime value
    @property
    def lr(self) -> float:
        return float(self.store[self._lr.node.attr("name")])

    @lr.setter
    def lr(self, value: float) -> None:
        self.store[self._lr.node.attr("name")] = value

    def lr_for(self, p: Tensor) -> Tensor:
        """The learning rate as a scalar of p's dtype."""
        return F.cast(self._lr, p.dtype)

    # ---- building the update
    def updates(self, loss: Tensor, reduce_grads=None) -> dict[Tensor, Tensor]:
        """{param or state: new value} for one step on `loss`, ready for dlc.compile(updates=...).

        reduce_grads(grads) -> grads runs between the backward pass and the
        update (data-parallel training averages the gradients over ranks there).
        """
        grads = _grad(loss, self.params)
        if reduce_grads is not None:
            grads = reduce_grads(grads)
        if self.max_grad_norm is not None:
            grads = clip_by_global_norm(grads, self.max_grad_norm)
        out: dict[Tensor, Tensor] = {}
        out.update(self._begin_step())
        for i, (p, g) in enumerate(zip(self.params, grads)):
            out.update(self.rule(i, p, g))
        return out

    def _begin_step(self) -> dict[Tensor, Tensor]:
        return {}

    def rule(self, i: int, p: Tensor, g: Tensor) -> dict[Tensor, Tensor]:
        """The new values of parameter i (p, with gradient g) and of its state."""
        raise NotImplementedError

    def state_keys(self) -> list[str]:
        return [k for k in self.store.keys() if k.startswith(self.prefix + ".")]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.params)} params, lr={self.lr:g})"


class SGD(Optimizer):
    """p -= lr * d with d = g + wd*p, or with momentum buf = m*buf + d and d = buf (or d + m*buf, Nesterov)."""

    def __init__(self, params, lr: float, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
                 store: Store | None = None, max_grad_norm: float | None = None):
        super().__init__(params, lr, store, max_grad_norm)
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay
        self.bufs = [self._slot(p, "momentum") for p in self.params] if momentum else None

    def rule(self, i, p, g):
        d = g + self.weight_decay * p if self.weight_decay else g
        if not self.momentum:
            return {p: p - self.lr_for(p) * d}
        buf = self.bufs[i]
        new_buf = self.momentum * buf + d
        d = d + self.momentum * new_buf if self.nesterov else new_buf
        return {buf: new_buf, p: p - self.lr_for(p) * d}


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction; weight_decay adds wd*p to the gradient (L2)."""

    decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 store: Store | None = None, max_grad_norm: float | None = None):
        super().__init__(params, lr, store, max_grad_norm)
        self.betas, self.eps, self.weight_decay = tuple(betas), eps, weight_decay
        # float64: the bias correction 1 - 0.999**t in float32 would lose 5 digits to cancellation
        self.t = self._state("t", np.array(0.0, np.float64))
        self.m = [self._slot(p, "exp_avg") for p in self.params]
        self.v = [self._slot(p, "exp_avg_sq") for p in self.params]

    def _begin_step(self):
        self._t1 = self.t + 1.0
        b1, b2 = self.betas
        self._bias1 = 1.0 - F.pow(b1, self._t1)
        self._bias2 = 1.0 - F.pow(b2, self._t1)
        return {self.t: self._t1}

    def rule(self, i, p, g):
        b1, b2 = self.betas
        m, v = self.m[i], self.v[i]
        if self.weight_decay and not self.decoupled:
            g = g + self.weight_decay * p
        new_m = b1 * m + (1.0 - b1) * g
        new_v = b2 * v + (1.0 - b2) * F.square(g)
        bias1, bias2 = F.cast(self._bias1, p.dtype), F.cast(self._bias2, p.dtype)
        step = (new_m / bias1) / (F.sqrt(new_v / bias2) + self.eps)
        base = p * (1.0 - self.lr_for(p) * self.weight_decay) if self.weight_decay and self.decoupled else p
        return {m: new_m, v: new_v, p: base - self.lr_for(p) * step}


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): p *= 1 - lr*wd before the Adam step."""

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 store: Store | None = None, max_grad_norm: float | None = None):
        super().__init__(params, lr, betas, eps, weight_decay, store, max_grad_norm)


class RMSprop(Optimizer):
    """v = a*v + (1-a)*g^2; p -= lr * g / (sqrt(v) + eps), optionally through a momentum buffer."""

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8, momentum: float = 0.0,
                 weight_decay: float = 0.0, store: Store | None = None, max_grad_norm: float | None = None):
        super().__init__(params, lr, store, max_grad_norm)
        self.alpha, self.eps, self.momentum, self.weight_decay = alpha, eps, momentum, weight_decay
        self.v = [self._slot(p, "square_avg") for p in self.params]
        self.bufs = [self._slot(p, "momentum") for p in self.params] if momentum else None

    def rule(self, i, p, g):
        if self.weight_decay:
            g = g + self.weight_decay * p
        v = self.v[i]
        new_v = self.alpha * v + (1.0 - self.alpha) * F.square(g)
        d = g / (F.sqrt(new_v) + self.eps)
        out = {v: new_v}
        if self.momentum:
            buf = self.bufs[i]
            d = self.momentum * buf + d
            out[buf] = d
        out[p] = p - self.lr_for(p) * d
        return out


# ----------------------------------------------------------------------------
# learning-rate schedules: they write optimizer.lr, which the compiled step reads


class LRSchedule:
    """Sets the optimizer's learning rate from the epoch count; call step() once per epoch."""

    def __init__(self, optimizer: Optimizer):
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.epoch = 0
        optimizer.lr = self.lr_at(0)

    def lr_at(self, epoch: int) -> float:
        raise NotImplementedError

    def step(self) -> float:
        self.epoch += 1
        self.optimizer.lr = self.lr_at(self.epoch)
        return self.optimizer.lr


class ConstantLR(LRSchedule):
    def lr_at(self, epoch):
        return self.base_lr


class StepLR(LRSchedule):
    """lr = base * gamma ** (epoch // step_size)."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1):
        if step_size < 1:
            raise ValueError(f"StepLR needs step_size >= 1 epochs, got {step_size}")
        self.step_size, self.gamma = step_size, gamma
        super().__init__(optimizer)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class CosineLR(LRSchedule):
    """Cosine annealing from base to eta_min over t_max epochs (then held at eta_min)."""

    def __init__(self, optimizer, t_max: int, eta_min: float = 0.0):
        if t_max < 1:
            raise ValueError(f"CosineLR needs t_max >= 1 epochs, got {t_max}")
        self.t_max, self.eta_min = t_max, eta_min
        super().__init__(optimizer)

    def lr_at(self, epoch):
        t = min(epoch, self.t_max)
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * t / self.t_max)) / 2
