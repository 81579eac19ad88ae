"""Collectives across MPI ranks: all_reduce, broadcast, all_gather, reduce, reduce_scatter.

Each op's reference starts mpi4py's buffer-based non-blocking collective
(numpy arrays, no pickling) on dlc.distributed's communicator and waits for
it with a deadline (dlc.distributed.wait_collective); in a world of one rank
it is the identity. They are opaque host calls: the reference backend runs them
node by node, and the CPU backend ends a native segment before one and
starts the next after it (its numpy-fallback path), so a data-parallel step
is still one compiled function. Every rank must run the same collectives in
the same order: all_reduce takes an optional second input, a tensor it only
waits for, which chains collectives into one order.
"""

from __future__ import annotations

import itertools
import time

import numpy as np

from ..errors import DTypeError, ShapeError
from ..graph import shape_str
from .base import OPAQUE, register
from .checks import check_int

FLOATS = ("float32", "float64")
REDUCIBLE = FLOATS + ("int32", "int64")


def _D():
    from .. import distributed

    return distributed


def _comm():
    return _D().communicator()


def _contiguous(x) -> np.ndarray:
    """x as a C-contiguous array MPI can read (np.ascontiguousarray would turn a 0-d array into 1-d)."""
    x = np.asarray(x)
    return x if x.flags.c_contiguous else x.copy(order="C")


def _run(op: str, start) -> None:
    """Start a non-blocking collective (start() returns its MPI request) and wait for it with the deadline."""
    number = _D().start_collective(op)
    _D().wait_collective(start(), op, number)


def _check_dtype(x, allowed):
    if x.dtype not in allowed:
        raise DTypeError(f"collectives take {', '.join(allowed)}, got {x.dtype}")


def _check_world(world: int) -> None:
    if world != _D().world_size():
        raise _D().DistributedError(f"this op was built for {world} ranks but the world has "
                                    f"{_D().world_size()}; rebuild the graph in this world")


# ---- all_reduce (input 1, if present, only orders it after another collective)


def _all_reduce_infer(xs, attrs):
    if attrs["reduce"] not in ("sum", "mean"):
        raise ShapeError(f"all_reduce's reduce must be 'sum' or 'mean', got {attrs['reduce']!r}")
    _check_dtype(xs[0], FLOATS if attrs["reduce"] == "mean" else REDUCIBLE)
    return xs[0].shape, xs[0].dtype


def _all_reduce_ref(xs, a, shape):
    x = _contiguous(xs[0])
    comm = _comm()
    if comm is None:
        return x.copy()
    total = np.empty_like(x)
    t0 = time.perf_counter()
    _run("all_reduce", lambda: comm.Iallreduce(x, total))
    _D().record_collective("all_reduce", x.nbytes, time.perf_counter() - t0)
    if a["reduce"] == "mean":
        total /= x.dtype.type(comm.Get_size())
    return total


def _all_reduce_grad(node, g, xs):
    # the output on every rank depends on x on every rank: the gradient is the same reduction of g
    return [_D().all_reduce(g, node.attr("reduce"))] + [None] * (len(xs) - 1)


register("all_reduce", OPAQUE, _all_reduce_infer, _all_reduce_ref, _all_reduce_grad,
         doc="sum or mean of x over every rank (MPI Allreduce)")


# ---- all_reduce split in two: the gradient buckets' reductions overlap the rest of the backward pass
#
# all_reduce_start(x [, after]) starts MPI Iallreduce on x and returns a ticket (an int64 scalar) naming the
# pending reduction; all_reduce_wait(x, ticket) waits for it and returns the sum or mean. The wait reads x, so
# x's buffer lives (and is not overwritten) until the wait, while MPI reads it. Tickets flow through the
# program's buffers like any value, so every backend's host-call path runs the pair unchanged (the CUDA one on
# host copies). The scheduler puts starts as early and waits as late as their inputs and readers allow.

_PENDING: dict[int, tuple | None] = {}  # ticket -> (request, result, x, collective number, seconds) or None
_TICKETS = itertools.count(1)


def _start_infer(xs, attrs):
    _check_dtype(xs[0], FLOATS)
    return (), "int64"


def _start_ref(xs, a, shape):
    x = _contiguous(xs[0])  # a view of the caller's buffer, which the wait keeps alive
    ticket = next(_TICKETS)
    comm = _comm()
    if comm is None:
        _PENDING[ticket] = None
    else:
        t0 = time.perf_counter()
        number = _D().start_collective("all_reduce")
        total = np.empty_like(x)
        _PENDING[ticket] = (comm.Iallreduce(x, total), total, x, number, time.perf_counter() - t0)
        _D().collective_started(comm)
    return np.array(ticket, np.int64)


def _wait_infer(xs, attrs):
    if attrs["reduce"] not in ("sum", "mean"):
        raise ShapeError(f"all_reduce_wait's reduce must be 'sum' or 'mean', got {attrs['reduce']!r}")
    _check_dtype(xs[0], FLOATS)
    if xs[1].shape != () or xs[1].dtype != "int64":
        raise DTypeError(f"all_reduce_wait's second input is all_reduce_start's int64 ticket, got "
                         f"{xs[1].dtype}{shape_str(xs[1].shape)}")
    return xs[0].shape, xs[0].dtype


def _wait_ref(xs, a, shape):
    ticket = int(xs[1])
    if ticket not in _PENDING:
        raise _D().DistributedError(f"all_reduce_wait: no reduction with ticket {ticket} is pending in this "
                                    f"process (its all_reduce_start did not run, or it was waited for already)")
    pending = _PENDING.pop(ticket)
    if pending is None:  # started in a world of one rank
        return _contiguous(xs[0]).copy()
    request, total, x, number, seconds = pending
    t0 = time.perf_counter()
    try:
        _D().wait_collective(request, "all_reduce", number)
    finally:
        _D().collective_ended()
    _D().record_collective("all_reduce", x.nbytes, seconds + time.perf_counter() - t0)
    if a["reduce"] == "mean":
        total /= x.dtype.type(_comm().Get_size())
    return total


# built after the backward pass, for the gradient buckets: no gradient rule (differentiate through all_reduce)
register("all_reduce_start", OPAQUE, _start_infer, _start_ref, None,
         doc="start MPI Iallreduce on x; the ticket all_reduce_wait waits for")
register("all_reduce_wait", OPAQUE, _wait_infer, _wait_ref, None,
         doc="the sum or mean over ranks that all_reduce_start began (its ticket is input 1)")


# ---- broadcast and its gradient, reduce


def _same_infer(xs, attrs):
    check_int(attrs["root"], "root", low=0)  # a root past the last rank is MPI's error, at run time
    _check_dtype(xs[0], REDUCIBLE)
    return xs[0].shape, xs[0].dtype


def _broadcast_ref(xs, a, shape):
    comm = _comm()
    buf = np.array(xs[0], order="C")
    if comm is not None:
        _run("broadcast", lambda: comm.Ibcast(buf, root=a["root"]))
    return buf


def _reduce_ref(xs, a, shape):
    x = _contiguous(xs[0])
    comm = _comm()
    if comm is None:
        return x.copy()
    total = np.zeros_like(x)
    _run("reduce", lambda: comm.Ireduce(x, total, root=a["root"]))
    return total if comm.Get_rank() == a["root"] else np.zeros_like(x)


register("broadcast", OPAQUE, _same_infer, _broadcast_ref,
         lambda node, g, xs: [_D().reduce(g, node.attr("root"))], doc="rank root's x on every rank (MPI Bcast)")
register("reduce", OPAQUE, _same_infer, _reduce_ref,
         lambda node, g, xs: [_D().broadcast(g, node.attr("root"))],
         doc="sum of x over the ranks on rank root, zeros elsewhere (MPI Reduce)")


# ---- all_gather and its gradient, reduce_scatter


def _leading(x, what):
    if x.ndim == 0 or not isinstance(x.shape[0], int):
        raise ShapeError(f"{what} needs a static leading axis, got {shape_str(x.shape)}")
    return x.shape[0]


def _all_gather_infer(xs, attrs):
    check_int(attrs["world"], "world", low=1)
    _check_dtype(xs[0], REDUCIBLE)
    return (_leading(xs[0], "all_gather") * attrs["world"],) + tuple(xs[0].shape[1:]), xs[0].dtype


def _all_gather_ref(xs, a, shape):
    return _reshaping_collective(xs, a, shape, "all_gather", "Iallgather")


def _reduce_scatter_infer(xs, attrs):
    _check_dtype(xs[0], REDUCIBLE)
    d0, world = _leading(xs[0], "reduce_scatter"), check_int(attrs["world"], "world", low=1)
    if d0 % world:
        raise ShapeError(f"reduce_scatter over {world} ranks needs a leading axis divisible by {world}, "
                         f"got {shape_str(xs[0].shape)}")
    return (d0 // world,) + tuple(xs[0].shape[1:]), xs[0].dtype


def _reduce_scatter_ref(xs, a, shape):
    return _reshaping_collective(xs, a, shape, "reduce_scatter", "Ireduce_scatter_block")


def _reshaping_collective(xs, a, shape, op: str, method: str):
    """all_gather and reduce_scatter: an output of another leading size, filled by one MPI call."""
    _check_world(a["world"])
    x = _contiguous(xs[0])
    comm = _comm()
    if comm is None:
        return x.copy()
    out = np.empty(shape, x.dtype)
    _run(op, lambda: getattr(comm, method)(x, out))
    return out


register("all_gather", OPAQUE, _all_gather_infer, _all_gather_ref,
         lambda node, g, xs: [_D().reduce_scatter(g)],
         doc="every rank's x concatenated along axis 0 in rank order (MPI Allgather)")
register("reduce_scatter", OPAQUE, _reduce_scatter_infer, _reduce_scatter_ref,
         lambda node, g, xs: [_D().all_gather(g)],
         doc="the sum over ranks, split along axis 0: rank r keeps part r (MPI Reduce_scatter_block)")

HOST_CALLS = ("all_reduce", "all_reduce_start", "all_reduce_wait", "broadcast", "reduce", "all_gather",
              "reduce_scatter")
