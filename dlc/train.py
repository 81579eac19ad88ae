"""The training API: compile a training step (forward, backward, update in one function), an eval step, and fit.

    x, y = dlc.input("x", ("B", 64)), dlc.input("y", ("B",), "int64")
    opt = dlc.optim.Adam(model.parameters(), lr=1e-3)
    step = dlc.nn.compile_step(lambda x, y: nn.cross_entropy(model(x), y), [x, y], opt, modules=model)
    predict = dlc.nn.compile_eval(lambda x: model(x), [x], modules=model)
    history = dlc.nn.fit(step, X_train, y_train, epochs=10, batch_size=64)
"""

from __future__ import annotations

import math
import sys

import numpy as np

from .compiler import Function, compile, default_target
from .nn.module import Module, collect_updates
from .tensor import Tensor


def _as_modules(modules) -> list[Module]:
    if modules is None:
        return []
    if isinstance(modules, Module):
        return [modules]
    return list(modules)


class _Mode:
    """Puts modules in train or eval mode while a step is traced, then restores each one's mode."""

    def __init__(self, modules, training: bool):
        self.modules, self.training = _as_modules(modules), training

    def __enter__(self):
        self.saved = [(m, m.training) for root in self.modules for m in root.modules()]
        for m in self.modules:
            m.train(self.training)

    def __exit__(self, *exc):
        for m, mode in self.saved:
            object.__setattr__(m, "training", mode)


def _outputs_of(result, what: str) -> dict[str, Tensor]:
    """A traced function's result as {name: scalar Tensor}; a lone Tensor is the loss."""
    if isinstance(result, Tensor):
        result = {"loss": result}
    if not isinstance(result, dict) or "loss" not in result:
        raise TypeError(f"{what} must return the loss Tensor, or a dict of Tensors with a 'loss' entry; "
                        f"got {type(result).__name__}")
    for k, v in result.items():
        if not isinstance(v, Tensor):
            raise TypeError(f"{what} returned {k!r} = {type(v).__name__}, not a Tensor")
    if result["loss"].shape != ():
        raise ValueError(f"the loss must be a scalar, got shape {result['loss'].shape} (reduce it with dlc.mean)")
    return result


class TrainStep:
    """A compiled training step: call it with a batch; it applies the update and returns the loss.

    If the traced function returned a dict of metrics, a call returns a dict of
    floats instead. `function` is the underlying dlc.Function.
    """

    def __init__(self, function: Function, names: list[str], optimizer, data_parallel: bool = False):
        self.function, self.names, self.optimizer = function, names, optimizer
        self.data_parallel = data_parallel

    def __call__(self, *batch, **named):
        values = self.function(*batch, **named)
        if self.names == ["loss"]:
            return float(values["loss"])
        return {k: float(v) for k, v in values.items()}

    @property
    def input_names(self) -> list[str]:
        return self.function.signature.names

    def __repr__(self) -> str:
        return f"<TrainStep ({self.function.signature.describe()}) -> {', '.join(self.names)}; {self.optimizer}>"


def compile_step(loss_fn, inputs, optimizer, modules=None, target: str | None = None, data_parallel: bool = False,
                 **options) -> TrainStep:
    """Trace loss_fn(*inputs) with `modules` in training mode and compile forward + backward + update.

    loss_fn returns the scalar loss, or a dict of scalar metrics with a 'loss'
    entry. The compiled step updates the optimizer's parameters and state and
    every state the traced layers record (batch-norm running statistics,
    dropout step counters). target defaults to dlc.default_target().

    data_parallel=True (run under mpirun, see docs/distributed.md) averages
    the gradients over the ranks before the update and the returned metrics
    after it, checks that every rank compiled the same program, and copies
    rank 0's parameters and optimizer state to every rank.
    """
    inputs = list(inputs)
    with _Mode(modules, True), collect_updates() as state:
        outputs = _outputs_of(loss_fn(*inputs), "loss_fn")
    updates = optimizer.updates(outputs["loss"], _averaged_over_ranks if data_parallel else None)
    for p, v in state.updates().items():
        if any(p.node is q.node for q in updates):
            raise ValueError(f"{p.node.attr('name')!r} is both optimized and updated as layer state")
        updates[p] = v
    _check_stores(modules, optimizer.store)
    if data_parallel:
        outputs = _metrics_averaged_over_ranks(outputs)
    fn = compile(outputs, inputs=inputs, updates=updates, target=target or default_target(), store=optimizer.store,
                 **options)
    if data_parallel:
        _start_ranks_in_step(fn)
    return TrainStep(fn, list(outputs), optimizer, data_parallel)


def compile_eval(fn, inputs, modules=None, target: str | None = None, store=None, **options) -> Function:
    """Trace fn(*inputs) with `modules` in eval mode and compile it (no updates); returns a dlc.Function."""
    inputs = list(inputs)
    with _Mode(modules, False):
        outputs = fn(*inputs)
    mods = _as_modules(modules)
    if store is None and mods:
        store = mods[0].store
    return compile(outputs, inputs=inputs, target=target or default_target(), store=store, **options)


# data-parallel training: dlc/distributed.py does the work


def _averaged_over_ranks(grads):
    from . import distributed

    return distributed.average_gradients(grads)


def _metrics_averaged_over_ranks(outputs):
    from . import distributed

    return distributed.average_metrics(outputs)


def _start_ranks_in_step(fn) -> None:
    """Every rank must have compiled the same program; then all start from rank 0's parameters and state."""
    from . import distributed

    distributed.synchronize(fn)


def _check_stores(modules, store) -> None:
    for m in _as_modules(modules):
        if m.store is not store:
            raise ValueError(f"{type(m).__name__} keeps its parameters in another store than the optimizer's; "
                             f"give the optimizer store=model.store")


# ----------------------------------------------------------------------------
# fit


class History(list):
    """One dict of metrics per finished epoch; `stopped` says why training ended early (None if it did not)."""

    stopped: str | None = None


def batches(n: int, batch_size: int, shuffle: bool, rng: np.random.Generator) -> list[np.ndarray]:
    """Index arrays covering range(n) in ceil(n / batch_size) near-equal batches (no tiny last batch)."""
    order = rng.permutation(n) if shuffle else np.arange(n)
    return np.array_split(order, max(1, math.ceil(n / batch_size)))


def fit(step, *arrays, epochs: int = 1, batch_size: int = 32, shuffle: bool = True, seed: int = 0,
        schedule=None, validate=None, progress: bool = True, log=print) -> History:
    """Train `step` (a TrainStep, or any callable returning the loss or a dict with 'loss') for some epochs.

    arrays (X, y, ...) share their first dim and are passed batch by batch
    in that order. Each epoch's record holds the batch-size weighted mean of
    every metric; `validate(epoch)` may add entries (a dict); `schedule.step()`
    runs after each epoch. A NaN or infinite loss stops training at once, with
    a message naming the epoch and step.

    With a data-parallel step (under mpirun) batch_size is per rank: each
    epoch's shuffled batches of batch_size * world_size rows are split between
    the ranks (the same seed everywhere gives disjoint shares), the records are
    averaged over the ranks, and only rank 0 logs and shows progress.
    """
    if not arrays:
        raise ValueError("fit needs the training arrays, e.g. fit(step, X, y)")
    n = len(arrays[0])
    for i, a in enumerate(arrays):
        if len(a) != n:
            raise ValueError(f"fit: array {i} has {len(a)} rows, array 0 has {n}")
    rng = np.random.default_rng(seed)
    ranks = _Ranks(step)
    progress, log = progress and ranks.is_main, log if ranks.is_main else _silent
    history = History()
    for epoch in range(1, epochs + 1):
        sums: dict[str, float] = {}
        parts = ranks.shard(batches(n, batch_size * ranks.size, shuffle, rng))
        seen = sum(len(idx) for idx in parts)
        bar = _progress(parts, epoch, epochs, progress)
        for k, idx in enumerate(bar, start=1):
            out = step(*(a[idx] for a in arrays))
            metrics = out if isinstance(out, dict) else {"loss": out}
            loss = float(metrics["loss"])
            if not math.isfinite(loss):
                history.stopped = (f"loss is {loss} at epoch {epoch}, step {k} of {len(parts)} "
                                   f"(batch rows {idx[:4].tolist()}{'...' if len(idx) > 4 else ''}); training stopped")
                log(f"fit: {history.stopped}")
                return history
            for key, v in metrics.items():
                sums[key] = sums.get(key, 0.0) + float(v) * len(idx)
            if progress:
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        record = {"epoch": epoch, **ranks.mean({k: v / seen for k, v in sums.items()})}
        if schedule is not None:
            record["lr"] = schedule.optimizer.lr
            schedule.step()
        if validate is not None:
            record.update(validate(epoch))
        history.append(record)
    return history


class _Ranks:
    """fit's view of data-parallel training: this rank's share of each batch, and records averaged over ranks."""

    def __init__(self, step):
        self.size, self.rank = 1, 0
        if getattr(step, "data_parallel", False):
            from . import distributed

            self.size, self.rank = distributed.world_size(), distributed.rank()
        self.is_main = self.rank == 0

    def shard(self, parts: list[np.ndarray]) -> list[np.ndarray]:
        """Rank r's near-equal r-th piece of every batch: the same number of steps on every rank."""
        if self.size == 1:
            return parts
        if len(parts[-1]) < self.size:
            raise ValueError(f"fit: a batch of {len(parts[-1])} rows cannot be shared by {self.size} ranks; "
                             f"give fit more rows than ranks")
        return [np.array_split(idx, self.size)[self.rank] for idx in parts]

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        if self.size == 1:
            return values
        from . import distributed

        return distributed.all_ranks_mean(values)


def _silent(*args, **kwargs) -> None:
    pass


def _progress(parts, epoch: int, epochs: int, enabled: bool):
    if not enabled:
        return parts
    from tqdm.auto import tqdm

    return tqdm(parts, desc=f"epoch {epoch}/{epochs}", leave=False, file=sys.stderr, unit="batch")
