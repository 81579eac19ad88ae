"""Data-parallel training on MPI (mpi4py): the process group, collective graph ops, gradient buckets, cross-rank checks.

    mpirun -n 4 python3 train.py          # every rank runs the same script
    step = dlc.nn.compile_step(loss_fn, [x, y], opt, modules=model, data_parallel=True)

In a process not started by mpirun (or srun) the world is one rank, MPI is
not initialized, and every collective is the identity: the same script, and
the same compiled step, runs alone. docs/distributed.md explains the design.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import math
import os
import sys
import threading
import time

import numpy as np

from .errors import CollectiveTimeoutError, DistributedError
from .tensor import Tensor

BUCKET_BYTES = 16 << 20  # gradients are averaged in flat buckets up to this size (one Allreduce each)
DEFAULT_TIMEOUT = 600.0  # seconds a collective waits for every rank (a slow first compilation included)
TIMEOUT_VARIABLE = "DLC_COLLECTIVE_TIMEOUT"
_STATE = {"comm": None, "initialized": False, "hook": None, "timeout": None, "broken": None}
_LOCK = threading.Lock()
_LOCAL = threading.local()  # .depth > 0 inside this_rank_only()
STATS: dict[str, list] = {}  # op -> [calls, bytes, seconds] of the collectives this process ran (benchmarks)


# ----------------------------------------------------------------------------
# the process group


def init(abort_on_error: bool = True, timeout: float | None = None):
    """Join the MPI world (once per process) and return the communicator, or None for a world of one rank.

    abort_on_error installs a sys.excepthook that, when this rank dies of an
    uncaught exception, prints it with the rank and aborts the whole job
    (MPI_Abort), so the other ranks stop instead of waiting in a collective.
    timeout: the seconds a collective waits for the other ranks before it
    raises CollectiveTimeoutError (math.inf: no limit); by default
    $DLC_COLLECTIVE_TIMEOUT, else DEFAULT_TIMEOUT. It may be set again later.
    """
    if timeout is not None:
        _STATE["timeout"] = _checked_timeout(timeout, "init's timeout")
    with _LOCK:
        if _STATE["initialized"]:
            return _STATE["comm"]
        comm = _world() if launched_by_mpi() else None
        _STATE["comm"], _STATE["initialized"] = comm, True
    if comm is not None and abort_on_error:
        _install_abort_hook(comm)
    return comm


def collective_timeout() -> float:
    """The seconds a collective waits for every rank: init's timeout, else $DLC_COLLECTIVE_TIMEOUT, else 600."""
    if _STATE["timeout"] is not None:
        return _STATE["timeout"]
    text = os.environ.get(TIMEOUT_VARIABLE)
    if text is None or not text.strip():
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        raise DistributedError(f"{TIMEOUT_VARIABLE} must be a number of seconds (or inf), got {text!r}") from None
    return _checked_timeout(value, TIMEOUT_VARIABLE)


def _checked_timeout(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or math.isnan(value) or value <= 0:
        raise ValueError(f"{what} must be a positive number of seconds (or math.inf), got {value!r}")
    return float(value)


LAUNCHER_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK", "MV2_COMM_WORLD_SIZE")


def launched_by_mpi() -> bool:
    """Whether mpirun (or srun) started this process; DLC_MPI=1 or 0 overrides the guess."""
    forced = os.environ.get("DLC_MPI")
    if forced in ("0", "1"):
        return forced == "1"
    return any(v in os.environ for v in LAUNCHER_VARIABLES)


def _world():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise DistributedError(f"this process was started by an MPI launcher but mpi4py is missing ({e}); "
                               f"pip install 'dlc[mpi]'") from None
    return MPI.COMM_WORLD if MPI.COMM_WORLD.Get_size() > 1 else None


def communicator():
    """The MPI communicator of the world, or None when it has one rank (collectives are then the identity)."""
    if getattr(_LOCAL, "depth", 0):
        return None
    return _STATE["comm"] if _STATE["initialized"] else init()


@contextlib.contextmanager
def this_rank_only():
    """Run as a world of one rank for a while (this thread): collectives become the identity.

    For work one rank does alone, such as rank 0 exporting an artifact,
    whose self-test runs the step once: a real collective there would wait
    forever for the other ranks.
    """
    _LOCAL.depth = getattr(_LOCAL, "depth", 0) + 1
    try:
        yield
    finally:
        _LOCAL.depth -= 1


def rank() -> int:
    comm = communicator()
    return 0 if comm is None else comm.Get_rank()


def world_size() -> int:
    comm = communicator()
    return 1 if comm is None else comm.Get_size()


def is_main() -> bool:
    """True on rank 0, the rank that prints, shows progress and writes files."""
    return rank() == 0


def _install_abort_hook(comm) -> None:
    previous = sys.excepthook

    def abort_all(kind, value, tb):
        previous(kind, value, tb)
        sys.stderr.write(f"dlc.distributed: rank {comm.Get_rank()} of {comm.Get_size()} raised "
                         f"{kind.__name__}: {value}; aborting every rank\n")
        sys.stderr.flush()
        comm.Abort(1)

    sys.excepthook = _STATE["hook"] = abort_all


# ----------------------------------------------------------------------------
# waiting with a deadline
#
# Every collective starts non-blocking (Iallreduce, Ibcast, ...) and is polled
# until it completes or the deadline passes. A rank that times out asks every
# other rank, point to point, which collective it is waiting in: the ranks
# polling in a collective answer, a rank busy elsewhere (an endless loop, a
# long computation) or hung does not. Then it raises CollectiveTimeoutError;
# the collective cannot be cancelled, so the job is aborted (by the abort
# hook, or at exit if the error was caught).

SPIN_SECONDS = 0.1     # poll without sleeping first: as prompt as a blocking collective
LONGEST_NAP = 0.01     # then sleep between polls, at most this long (a hung peer costs no CPU)
ANSWER_SECONDS = 2.0   # how long a rank that timed out waits for the others to say where they are
_QUERY_TAG, _ANSWER_TAG = 0x646C6301, 0x646C6302  # point-to-point tags of those questions ("dlc")
_NAME_WORDS = 4        # an answer: [collective number, the op's name in 4 int64 words]
_PROGRESS = {"started": 0, "waiting": None}  # collectives this rank started; (number, op) it is waiting in


def start_collective(op: str) -> int:
    """Count a collective this rank starts; its number names it in a timeout's report."""
    if _STATE["broken"] is not None:
        raise DistributedError(f"{op}: no collective can run any more: an earlier one timed out "
                               f"({_STATE['broken']}) and the job is being aborted")
    _PROGRESS["started"] += 1
    return _PROGRESS["started"]


def wait_collective(request, op: str, number: int) -> None:
    """Poll an MPI request until it completes; past collective_timeout() raise CollectiveTimeoutError."""
    if request.Test():
        return
    comm = _STATE["comm"]
    timeout = collective_timeout()
    begun = time.monotonic()
    deadline, nap = begun + timeout, 1e-4
    _PROGRESS["waiting"] = (number, op)
    try:
        while not request.Test():
            now = time.monotonic()
            if now >= deadline:
                raise _timed_out(comm, op, number, timeout)
            if now - begun > SPIN_SECONDS:
                _answer_questions(comm)
                time.sleep(min(nap, deadline - now))
                nap = min(2 * nap, LONGEST_NAP)
    finally:
        _PROGRESS["waiting"] = None


def _answer_questions(comm) -> None:
    """Tell every rank that asked which collective this rank is waiting in."""
    from mpi4py import MPI

    status = MPI.Status()
    while comm.Iprobe(source=MPI.ANY_SOURCE, tag=_QUERY_TAG, status=status):
        asker = status.Get_source()
        comm.Recv(np.empty(1, np.int64), source=asker, tag=_QUERY_TAG)
        number, op = _PROGRESS["waiting"] or (0, "")
        name = op.encode()[:8 * _NAME_WORDS].ljust(8 * _NAME_WORDS, b"\0")
        comm.Send(np.concatenate([[number], np.frombuffer(name, np.int64)]), dest=asker, tag=_ANSWER_TAG)


def _where_are_the_others(comm) -> dict[int, tuple[int, str] | None]:
    """Each other rank's answer (its collective number, op) within ANSWER_SECONDS, or None for no answer."""
    me, size = comm.Get_rank(), comm.Get_size()
    others = [r for r in range(size) if r != me]
    answers = {r: np.zeros(1 + _NAME_WORDS, np.int64) for r in others}
    for r in others:  # a few bytes each: sent eagerly, whatever the other rank is doing
        comm.Send(np.array([me], np.int64), dest=r, tag=_QUERY_TAG)
    pending = {r: comm.Irecv(answers[r], source=r, tag=_ANSWER_TAG) for r in others}
    deadline = time.monotonic() + ANSWER_SECONDS
    while pending and time.monotonic() < deadline:
        _answer_questions(comm)  # another rank that timed out may be asking this one
        for r in [r for r, request in pending.items() if request.Test()]:
            del pending[r]
        time.sleep(0.001)
    return {r: None if r in pending else
            (int(answers[r][0]), answers[r][1:].tobytes().rstrip(b"\0").decode(errors="replace"))
            for r in others}


def _timed_out(comm, op: str, number: int, timeout: float) -> CollectiveTimeoutError:
    """The error for this rank's collective `number` that timed out; marks the communicator broken."""
    me, size = comm.Get_rank(), comm.Get_size()
    where = _where_are_the_others(comm)
    absent = [r for r, answer in where.items() if answer is None or answer[0] == 0]
    arrived = [r for r, answer in where.items() if answer is not None and answer[0] != 0]
    parts = [f"rank {me} of {size} waited {timeout:g} s in its collective #{number} for the other ranks "
             f"(the limit: {TIMEOUT_VARIABLE} or dlc.distributed.init(timeout=...))"]
    if absent:
        parts.append(f"rank(s) {absent} had not arrived: they did not answer within {ANSWER_SECONDS:g} s "
                     f"(running outside a collective, e.g. an endless loop, a long computation or a hang)")
    for r in arrived:
        answer_number, answer_op = where[r]
        parts.append(f"rank {r} waits in its collective #{answer_number} ({answer_op})")
    parts.append("a collective cannot be cancelled, so the job must end (MPI_Abort)")
    error = CollectiveTimeoutError(op, "; ".join(parts))
    _break(comm, f"{op} #{number} on rank {me}")
    return error


def _break(comm, what: str) -> None:
    """No collective can run after one timed out: refuse the next ones and abort the job at exit."""
    if _STATE["broken"] is None:
        atexit.register(comm.Abort, 1)  # the error was caught: the others must not wait at MPI_Finalize
    _STATE["broken"] = what


# ----------------------------------------------------------------------------
# progress while split collectives are in flight
#
# MPI libraries such as Open MPI advance a non-blocking collective only inside
# MPI calls: an Iallreduce started before the rest of the backward pass would
# mostly run in its wait. While a split collective is in flight, a helper
# thread therefore makes a cheap MPI call (Iprobe) every PROGRESS_NAP seconds;
# the native code of the CPU backend releases the GIL, so the thread runs
# beside it. It needs MPI_THREAD_MULTIPLE (mpi4py's default); DLC_MPI_PROGRESS=0
# turns it off.

PROGRESS_NAP = 2e-4
_PROGRESS_TAG = 0x646C6303  # never sent: the Iprobe only drives progress
_IN_FLIGHT = {"count": 0, "thread": None, "wake": threading.Event()}


def collective_started(comm) -> None:
    """A split collective is in flight until collective_ended(): keep MPI progressing meanwhile."""
    _IN_FLIGHT["count"] += 1
    if _IN_FLIGHT["thread"] is None:
        if os.environ.get("DLC_MPI_PROGRESS") == "0" or not _threads_allowed():
            _IN_FLIGHT["thread"] = False
        else:
            _IN_FLIGHT["thread"] = threading.Thread(target=_progress_loop, args=(comm,), daemon=True,
                                                    name="dlc-mpi-progress")
            _IN_FLIGHT["thread"].start()
    _IN_FLIGHT["wake"].set()


def collective_ended() -> None:
    _IN_FLIGHT["count"] -= 1


def _threads_allowed() -> bool:
    from mpi4py import MPI

    return MPI.Query_thread() == MPI.THREAD_MULTIPLE


def _progress_loop(comm) -> None:
    from mpi4py import MPI

    wake = _IN_FLIGHT["wake"]
    while True:
        wake.wait()
        wake.clear()  # set again by the next start: none is missed between the check below and the wait
        while _IN_FLIGHT["count"] > 0 and _STATE["broken"] is None:
            comm.Iprobe(source=MPI.ANY_SOURCE, tag=_PROGRESS_TAG)
            time.sleep(PROGRESS_NAP)


# ----------------------------------------------------------------------------
# collectives as graph ops (dlc/ops/collective.py holds their rules)


def _collective(op: str, x, **attrs) -> Tensor:
    from .functional import _apply

    if not isinstance(x, Tensor):
        raise TypeError(f"{op} takes a dlc Tensor, got {type(x).__name__}")
    return _apply(op, x, **attrs)


def all_reduce(x: Tensor, op: str = "sum", after: Tensor | None = None) -> Tensor:
    """The elementwise sum (or mean) of x over every rank, on every rank.

    after: a tensor this reduction must wait for (another collective's
    result); it orders collectives identically on every rank.
    """
    if op not in ("sum", "mean"):
        raise ValueError(f"all_reduce op must be 'sum' or 'mean', got {op!r}")
    if after is None:
        return _collective("all_reduce", x, reduce=op)
    from .functional import _apply

    return _apply("all_reduce", x, after, reduce=op)


def broadcast(x: Tensor, root: int = 0) -> Tensor:
    """Rank root's x, on every rank."""
    return _collective("broadcast", x, root=_check_root(root))


def all_gather(x: Tensor) -> Tensor:
    """Every rank's x concatenated along axis 0, in rank order (shape (world_size * x.shape[0], ...))."""
    return _collective("all_gather", x, world=world_size())


def reduce(x: Tensor, root: int = 0) -> Tensor:
    """The sum of x over every rank on rank root; zeros on the others (the gradient of broadcast)."""
    return _collective("reduce", x, root=_check_root(root))


def reduce_scatter(x: Tensor) -> Tensor:
    """The sum over ranks of x, split along axis 0; rank r keeps part r (the gradient of all_gather)."""
    return _collective("reduce_scatter", x, world=world_size())


def _check_root(root) -> int:
    if not isinstance(root, (int, np.integer)) or not 0 <= int(root) < world_size():
        raise ValueError(f"root must be a rank in [0, {world_size()}), got {root!r}")
    return int(root)


def record_collective(op: str, nbytes: int, seconds: float) -> None:
    entry = STATS.setdefault(op, [0, 0, 0.0])
    entry[0] += 1
    entry[1] += nbytes
    entry[2] += seconds


# ----------------------------------------------------------------------------
# gradient averaging


def average_gradients(grads: list[Tensor], bucket_bytes: int | None = None) -> list[Tensor]:
    """The mean of each gradient over the ranks, packed into flat buckets: concat -> one Allreduce -> split.

    Buckets (of up to bucket_bytes, default BUCKET_BYTES) are filled from the
    last gradient to the first (the order the backward pass finishes them).
    Each bucket's Allreduce is split into all_reduce_start, which the
    scheduler runs as soon as the bucket is packed, and all_reduce_wait, run
    as late as the update allows; the starts are chained, so every rank starts
    the Allreduces in the same order. A world of one rank builds the same
    graph (its collectives are the identity): the program, and its compiled
    code, do not depend on the number of ranks.
    """
    from . import functional as F
    from .functional import _apply

    out: list[Tensor | None] = [None] * len(grads)
    previous = None
    for bucket in _buckets(grads, BUCKET_BYTES if bucket_bytes is None else bucket_bytes):
        flat = F.concat([F.reshape(grads[i], (_size(grads[i]),)) for i in bucket])
        ticket = _apply("all_reduce_start", flat) if previous is None else _apply("all_reduce_start", flat, previous)
        reduced = _apply("all_reduce_wait", flat, ticket, reduce="mean")
        previous = ticket
        start = 0
        for i in bucket:
            size = _size(grads[i])
            part = F.slice_(reduced, (start,), (start + size,)) if len(bucket) > 1 else reduced
            out[i] = F.reshape(part, grads[i].shape)
            start += size
    return out


def _size(t: Tensor) -> int:
    return int(np.prod(t.shape, dtype=np.int64))


def _buckets(grads: list[Tensor], bucket_bytes: int) -> list[list[int]]:
    """Indices of grads in buckets of one dtype and about bucket_bytes each, last gradient first."""
    buckets: list[list[int]] = []
    size = 0
    for i in reversed(range(len(grads))):
        g = grads[i]
        if not all(isinstance(d, (int, np.integer)) for d in g.shape):
            raise DistributedError(f"gradient {i} has a symbolic shape {g.shape}; parameters need static shapes")
        nbytes = int(np.prod(g.shape, dtype=np.int64)) * np.dtype(g.dtype).itemsize
        if buckets and size + nbytes <= bucket_bytes and grads[buckets[-1][0]].dtype == g.dtype:
            buckets[-1].append(i)
            size += nbytes
        else:
            buckets.append([i])
            size = nbytes
    return buckets


def average_metrics(metrics: dict[str, Tensor]) -> dict[str, Tensor]:
    """Each scalar metric averaged over the ranks with one all_reduce."""
    from . import functional as F

    keys = list(metrics)
    packed = F.stack([F.cast(metrics[k], "float64") for k in keys])
    mean = all_reduce(packed, "mean")
    return {k: F.cast(F.reshape(F.slice_(mean, (i,), (i + 1,)), ()), metrics[k].dtype) for i, k in enumerate(keys)}


# ----------------------------------------------------------------------------
# checks and state across ranks


def program_fingerprint(fn) -> str:
    """A hash of a compiled function's graph (ops, attributes, shapes, dtypes, wiring) and its parameters' shapes."""
    h = hashlib.sha256()
    index: dict[int, int] = {}
    for i, n in enumerate(fn.graph.nodes):
        index[id(n)] = i
        wiring = ",".join(str(index[id(x)]) for x in n.inputs)
        h.update(f"{n.op}({wiring});{n.attrs!r};{n.shape!r};{n.dtype}\n".encode())
    for name, node in fn.updates:
        h.update(f"update {name} <- {index[id(node)]}\n".encode())
    for key in sorted(_store_keys(fn)):
        value = np.asarray(fn.store[key])
        h.update(f"param {key} {value.shape} {value.dtype}\n".encode())
    return h.hexdigest()[:16]


def _store_keys(fn) -> list[str]:
    return sorted({n.attr("name") for n in fn.graph.nodes if n.op == "param"})


def check_same_program(fn, what: str = "the training step") -> None:
    """Raise DistributedError on every rank unless every rank compiled the same program with the same shapes."""
    comm = communicator()
    if comm is None:
        return
    mine = np.frombuffer(program_fingerprint(fn).encode(), np.uint8)  # 16 hex digits
    gathered = np.empty((comm.Get_size(), mine.size), np.uint8)
    number = start_collective("check_same_program")
    wait_collective(comm.Iallgather(mine, gathered), "check_same_program", number)
    every = [row.tobytes().decode() for row in gathered]
    differ = [r for r, h in enumerate(every) if h != every[0]]
    if differ:
        raise DistributedError(
            f"rank {comm.Get_rank()}: {what} differs across ranks: rank(s) {differ} compiled a program or "
            f"parameter shapes other than rank 0's (fingerprints {dict(enumerate(every))}); every rank must "
            f"run the same script on the same model")


def synchronize(fn, what: str = "the training step") -> None:
    """Check that every rank compiled the same program, then give every rank rank 0's parameters and state.

    compile_step(data_parallel=True) does this; call it on a step loaded from
    an artifact (dlc.load) on every rank before training it.
    """
    check_same_program(fn, what)
    broadcast_parameters(fn)


def broadcast_parameters(fn, root: int = 0) -> None:
    """Overwrite every parameter and optimizer state array `fn` reads with rank root's (buffer-based Bcast)."""
    comm = communicator()
    if comm is None:
        return
    for key in _store_keys(fn):
        buf = np.array(fn.store[key], order="C")
        number = start_collective("broadcast_parameters")
        wait_collective(comm.Ibcast(buf, root=root), "broadcast_parameters", number)
        if comm.Get_rank() != root:
            fn.store[key] = buf


def all_ranks_mean(values: dict[str, float]) -> dict[str, float]:
    """Host-side mean of a few floats over the ranks (fit's epoch records)."""
    comm = communicator()
    if comm is None or not values:
        return values
    keys = sorted(values)
    local = np.array([values[k] for k in keys], np.float64)
    total = np.empty_like(local)
    number = start_collective("all_ranks_mean")
    wait_collective(comm.Iallreduce(local, total), "all_ranks_mean", number)
    return dict(zip(keys, (total / comm.Get_size()).tolist()))


__all__ = ["init", "communicator", "rank", "world_size", "is_main", "all_reduce", "broadcast", "all_gather",
           "reduce", "reduce_scatter", "average_gradients", "average_metrics", "check_same_program",
           "broadcast_parameters", "program_fingerprint", "this_rank_only", "synchronize", "launched_by_mpi",
           "DistributedError", "CollectiveTimeoutError", "collective_timeout", "BUCKET_BYTES", "DEFAULT_TIMEOUT"]
