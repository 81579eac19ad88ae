"""The training API: compile a training step (forward, backward, update in one function), an eval step, and fit.

    x, y = dlc.input("x", ("B", 64)), dlc.input("y", ("B",), "int64")
    opt = dlc.optim.Adam(model.parameters(), lr=1e-3)
    step = dlc.nn.compile_step(lambda x, y: nn.cross_entropy(model(x), y), [x, y], opt, modules=model)
    predict = dlc.nn.compile_eval(lambda x: model(x), [x], modules=model)
    history = dlc.nn.fit(step, X_train, y_train, epochs=10, batch_size=64)
"""

from __future__ import annotations

import contextlib
import math
import sys
import time

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

    def __init__(self, function: Function, names: list[str], optimizer, trace=None, data_parallel: bool = False):
        self.function, self.names, self.optimizer = function, names, optimizer
        self.data_parallel = data_parallel
        self._trace = trace  # (loss_fn, inputs, modules, target, options): what evaluate() compiles in eval mode
        self._eval: Function | None = None

    def __call__(self, *batch, **named):
        values = self.function(*batch, **named)
        if self.names == ["loss"]:
            return float(values["loss"])
        return {k: float(v) for k, v in values.items()}

    @property
    def input_names(self) -> list[str]:
        return self.function.signature.names

    def evaluate(self, *arrays, batch_size: int = 256) -> dict[str, float]:
        """The step's metrics on data, with the modules in eval mode and no update (compiled on first use).

        Returns the batch-size weighted mean of each metric, e.g. {"loss": ..., "acc": ...}.
        """
        if self._eval is None:
            if self._trace is None:
                raise TypeError("this TrainStep was not made by dlc.nn.compile_step, so it cannot be evaluated")
            loss_fn, inputs, modules, target, options = self._trace
            with _Mode(modules, False):
                outputs = _outputs_of(loss_fn(*inputs), "loss_fn")
            self._eval = compile(outputs, inputs=inputs, target=target, store=self.optimizer.store, **options)
        n = _check_rows(arrays)
        sums: dict[str, float] = {}
        for idx in batches(n, batch_size, False, None):
            for k, v in self._eval(*(a[idx] for a in arrays)).items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(idx)
        return {k: v / n for k, v in sums.items()}

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
    target = target or default_target()
    fn = compile(outputs, inputs=inputs, updates=updates, target=target, store=optimizer.store, **options)
    if data_parallel:
        _start_ranks_in_step(fn)
    return TrainStep(fn, list(outputs), optimizer, trace=(loss_fn, inputs, modules, target, options),
                     data_parallel=data_parallel)


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


def batches(n: int, batch_size: int, shuffle: bool, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Index arrays covering range(n) in ceil(n / batch_size) near-equal batches (no tiny last batch)."""
    order = rng.permutation(n) if shuffle else np.arange(n)
    return np.array_split(order, max(1, math.ceil(n / batch_size)))


def _check_rows(arrays) -> int:
    if not arrays:
        raise ValueError("fit needs the training arrays, e.g. fit(step, X, y)")
    n = len(arrays[0])
    for i, a in enumerate(arrays):
        if len(a) != n:
            raise ValueError(f"fit: array {i} has {len(a)} rows, array 0 has {n}")
    return n


def fit(step, *arrays, epochs: int = 1, batch_size: int = 32, shuffle: bool = True, seed: int = 0,
        schedule=None, validate=None, validation_data=None, verbose: int = 1, progress: bool | None = None,
        log=print) -> History:
    """Train `step` (a TrainStep, or any callable returning the loss or a dict with 'loss') for some epochs.

    arrays (X, y, ...) share their first dim and are passed batch by batch
    in that order. Each epoch's record holds the batch-size weighted mean of
    every metric; validation_data=(X_val, y_val, ...) adds the step's metrics
    on it in eval mode as val_loss, val_acc, ... (a TrainStep only);
    `validate(epoch)` may add entries (a dict); `schedule.step()` runs after
    each epoch. verbose=0 is silent, 1 shows a progress bar per epoch that
    stays with the epoch's metrics, 2 prints one line per epoch; the bar's rate
    and ETA leave out the first call, which compiles. A NaN or infinite loss
    stops training at once, with a message naming the epoch and step.
    progress=False is the older spelling of verbose=0.

    With a data-parallel step (under mpirun) batch_size is per rank: each
    epoch's shuffled batches of batch_size * world_size rows are split between
    the ranks (the same seed everywhere gives disjoint shares), the records are
    averaged over the ranks, and only rank 0 logs and shows progress.
    """
    n = _check_rows(arrays)
    if progress is not None:
        verbose = verbose if progress else 0
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0 (silent), 1 (progress bars) or 2 (a line per epoch), got {verbose!r}")
    if validation_data is not None and not hasattr(step, "evaluate"):
        raise TypeError("validation_data needs a TrainStep made by dlc.nn.compile_step (it evaluates the same "
                        "loss in eval mode); for another callable pass validate=")
    ranks = _Ranks(step)
    if not ranks.is_main:
        verbose, log = 0, _silent
    rng = np.random.default_rng(seed)
    history = History()
    first_call = True
    for epoch in range(1, epochs + 1):
        sums: dict[str, float] = {}
        parts = ranks.shard(batches(n, batch_size * ranks.size, shuffle, rng))
        seen = sum(len(idx) for idx in parts)
        bar = _Progress(len(parts), f"epoch {epoch}/{epochs}", verbose == 1)
        for k, idx in enumerate(parts, start=1):
            if first_call:
                bar.compiling()
            out = step(*(a[idx] for a in arrays))
            if first_call:
                bar.compiled()
                first_call = False
            metrics = out if isinstance(out, dict) else {"loss": out}
            loss = float(metrics["loss"])
            if not math.isfinite(loss):
                bar.close()
                history.stopped = (f"loss is {loss} at epoch {epoch}, step {k} of {len(parts)} "
                                   f"(batch rows {idx[:4].tolist()}{'...' if len(idx) > 4 else ''}); training stopped")
                log(f"fit: {history.stopped}")
                return history
            for key, v in metrics.items():
                sums[key] = sums.get(key, 0.0) + float(v) * len(idx)
            bar.step(loss)
        record = {"epoch": epoch, **ranks.mean({k: v / seen for k, v in sums.items()})}
        if schedule is not None:
            record["lr"] = schedule.optimizer.lr
            schedule.step()
        if validation_data is not None:
            with bar.paused("compiling the evaluation step…" if epoch == 1 else "validating…"):
                scores = step.evaluate(*validation_data, batch_size=batch_size)
            record.update({f"val_{k}": v for k, v in scores.items()})
        if validate is not None:
            record.update(validate(epoch))
        history.append(record)
        bar.close(_describe(record))
        if verbose == 2:
            log(f"epoch {epoch}/{epochs}  {_describe(record)}")
    return history


def _describe(record: dict) -> str:
    return "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()
                     if k != "epoch")


class _Progress:
    """One epoch's progress bar (tqdm, on stderr): says "compiling…" during the first call, whose time it then
    leaves out of the rate and ETA, and stays on screen with the epoch's metrics."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.desc = desc
        self.bar = None
        self.counted = False
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=True, file=sys.stderr, unit="batch")

    def compiling(self) -> None:
        self.note("compiling…")

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description_str(f"{self.desc} ({text})")

    @contextlib.contextmanager
    def paused(self, text: str):
        """Work that is not a training step (validation): shown, and left out of the rate."""
        self.note(text)
        start = time.time()
        try:
            yield
        finally:
            if self.bar is not None:
                pause = time.time() - start
                self.bar.start_t += pause
                self.bar.last_print_t += pause
                self.bar.set_description_str(self.desc, refresh=False)

    def compiled(self) -> None:
        """The first batch is done: restart the clock so that the rate counts only compiled steps."""
        if self.bar is not None:
            self.bar.set_description_str(self.desc, refresh=False)
            self.bar.reset()
            self.bar.n = self.bar.last_print_n = self.bar.initial = 1
            self.counted = True
            self.bar.refresh()

    def step(self, loss: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)
            if self.counted:
                self.counted = False  # compiled() already counted the first batch
            else:
                self.bar.update(1)

    def close(self, summary: str | None = None) -> None:
        if self.bar is not None:
            self.bar.set_description_str(self.desc, refresh=False)
            if summary:
                self.bar.set_postfix_str(summary, refresh=False)
            self.bar.close()


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
