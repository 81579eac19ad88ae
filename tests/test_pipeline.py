"""The pipeline runs one way: the compiler optimizes once, with the user's options, scan bodies included, and
the backends render and run the Program they are given without changing it."""

from __future__ import annotations

import numpy as np
import pytest

import dlc
from dlc.ops.base import OPAQUE, OPS, SOURCE, apply, register
from dlc.passes import optimize

TARGETS = [("cpu", {}), ("cuda", {"emulate": True})]


def rnn_step(rng):
    """A training step over a scan: the body holds a matmul, a tanh and an add (fusable into few kernels)."""
    store = dlc.Store()
    xs = dlc.input("xs", ("T", "B", 3), "float64")
    h0 = dlc.input("h0", ("B", 3), "float64")
    w = dlc.param(rng.normal(size=(3, 3)) * 0.5, name="w", store=store, dtype="float64")
    h, ys = dlc.scan(lambda h, x: (dlc.tanh(x + h @ w) * 0.5 + h, h * h), h0, xs)
    loss = dlc.sum(h * h) + dlc.mean(ys)
    (g,) = dlc.grad(loss, [w])
    return [loss], [xs, h0], {w: w - 0.1 * g}, store


def copy_of(store: dlc.Store) -> dlc.Store:
    out = dlc.Store()
    for key, value in store.items():
        out.add(key, value.copy(), store.is_trainable(key))
    return out


def computing_nodes(program) -> int:
    return sum(1 for n in program.graph.nodes if OPS[n.op].kind != SOURCE and n.op != "reshape")


def scan_nodes(program) -> list:
    return [k.anchor for k in program.kernels if k.anchor is not None and k.anchor.op == "scan"]


def body_programs_the_backend_runs(fn) -> list:
    """The body Program each scan of fn runs with, read from the backend itself."""
    if fn.target == "cpu":
        scans = {id(r.__self__): r.__self__ for r in fn.backend._native.values() if hasattr(r, "__self__")}
        return [s.body_backend.program for s in scans.values()]
    return [r.inner.program for r in fn.backend.runner.scans.values()]


@pytest.mark.parametrize("target,extra", TARGETS, ids=[t for t, _ in TARGETS])
def test_scan_bodies_are_optimized_with_the_users_options(rng, target, extra):
    outputs, inputs, updates, store = rnn_step(rng)
    feeds = (rng.normal(size=(4, 2, 3)), rng.normal(size=(2, 3)))
    want = dlc.compile(outputs, inputs, dict(updates), target="reference", store=copy_of(store))(*feeds)
    kernels = {}
    for fuse in (True, False):
        fn = dlc.compile(outputs, inputs, dict(updates), target=target, store=copy_of(store), fuse=fuse, **extra)
        scans = scan_nodes(fn.program)
        assert len(scans) == 2  # the forward loop and its gradient's
        bodies = [fn.program.body(s) for s in scans]
        # the backend runs exactly the bodies the compiler built, not ones of its own
        assert sorted(map(id, body_programs_the_backend_runs(fn))) == sorted(map(id, bodies))
        if not fuse:  # one kernel per computing node, inside the loops too
            assert all(len(b.kernels) == computing_nodes(b) for b in bodies)
        kernels[fuse] = sum(len(b.kernels) for b in bodies)
        np.testing.assert_allclose(fn(*feeds)[0], want[0], rtol=1e-12)
    assert kernels[True] < kernels[False]


def program_snapshot(program) -> list:
    """Everything a backend could change in a Program (and its bodies), by identity and value."""
    out = []
    for p in program.with_bodies():
        out.append(([(k.name, k.kind, tuple(map(id, k.nodes)), tuple(map(id, k.inputs)), tuple(map(id, k.outputs)),
                      id(k.anchor)) for k in p.kernels],
                    [id(n) for n in p.outputs], [(key, id(n)) for key, n in p.updates],
                    {k: id(v) for k, v in p.aliases.items()}, {k: id(v) for k, v in p.inplace.items()},
                    list(p.bodies), p.planner))
    return out


@pytest.fixture
def fallback_op():
    """An op with no native lowering: the CPU renderer leaves its kernel to numpy."""
    register("test_pipeline_fallback", OPAQUE, lambda xs, a: (xs[0].shape, xs[0].dtype),
             lambda xs, a, shape: xs[0] * 2)
    yield lambda t: dlc.Tensor(apply("test_pipeline_fallback", [t.node]))
    del OPS["test_pipeline_fallback"]


@pytest.mark.parametrize("target,extra", TARGETS, ids=[t for t, _ in TARGETS])
def test_backends_leave_the_program_as_the_compiler_built_it(rng, target, extra, fallback_op):
    outputs, inputs, updates, store = rnn_step(rng)
    if target == "cpu":  # a kernel the renderer cannot lower: it once wrote its reason into the Kernel
        outputs = outputs + [fallback_op(dlc.exp(inputs[1]))]
    reference = dlc.compile(outputs, inputs, dict(updates), target="reference", store=store)
    program = optimize(reference.outputs, reference.updates, reference.inputs)
    before = program_snapshot(program)
    if target == "cpu":
        from dlc.runtime.cpu import CPUBackend

        backend = CPUBackend(reference, program)
    else:
        from dlc.runtime.cuda import CUDABackend

        backend = CUDABackend(reference, program, **extra)
    feeds, env, _ = reference.signature.bind((rng.normal(size=(3, 2, 3)), rng.normal(size=(2, 3))), {})
    backend.run(feeds, env)
    assert program_snapshot(program) == before


def test_an_unknown_option_names_what_the_target_and_the_optimizer_take():
    x = dlc.input("x", (4,))
    with pytest.raises(TypeError, match=r"unknown option\(s\) fusee for the cpu target; it takes fastmath.*"
                                        r"the optimizer takes simplify, fuse"):
        dlc.compile(dlc.tanh(x), target="cpu", fusee=False)
    with pytest.raises(TypeError, match=r"fastmath for the cuda target; it takes emulate"):
        dlc.compile(dlc.tanh(x), target="cuda", fastmath=True)


def test_the_function_keeps_the_program_its_backend_runs():
    x = dlc.input("x", ("B", 4))
    fn = dlc.compile(dlc.tanh(x) * 2.0, target="cpu")
    assert fn.program is fn.backend.program and fn.program.planner is not None
    assert dlc.compile(dlc.tanh(x), target="reference").program is None
