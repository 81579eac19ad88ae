"""The inspector: passes, kernels with their source lines, refusals, the memory plan, the Graphviz file."""

from __future__ import annotations

import re

import numpy as np
import pytest

import dlc
from dlc import inspect as dlc_inspect
from dlc.passes import optimize


@pytest.fixture
def step():
    x, labels = dlc.input("x", ("B", 16)), dlc.input("labels", ("B",), "int64")
    w = dlc.param(np.random.default_rng(0).standard_normal((16, 10)) * 0.1, name="w")
    b = dlc.param(np.zeros(10), name="b")
    logits = x @ w + b
    loss = -dlc.mean(dlc.sum(dlc.log_softmax(logits) * dlc.one_hot(labels, 10), axis=1))
    gw, gb = dlc.grad(loss, [w, b])
    return dlc.compile(loss, inputs=[x, labels], updates={w: w - 0.1 * gw, b: b - 0.1 * gb})


def test_report_shows_passes_kernels_refusals_and_memory(step):
    text = dlc_inspect.report(step, env={"B": 64})
    program = dlc_inspect.program_of(step)
    for section in ("## Passes", "## Kernels", "## Refused fusions", "## Memory plan for B=64"):
        assert section in text
    assert f"{len(program.kernels)} kernels" in text
    assert "canonicalize" in text and "fusion" in text
    assert "reduce output is broadcast back over the reduced axis" in text
    assert "test_inspect.py:" in text  # kernels name the user's source lines
    for k in program.kernels:
        assert f"{k.name} [{k.kind}" in text
    assert "arena" in text and "no planning" in text and "lower bound" in text


def test_report_binds_missing_symbols_and_says_so(step):
    text = dlc_inspect.report(step)
    assert f"B not given: taken as {dlc_inspect.DEFAULT_DIM}" in text


def test_report_accepts_a_program_and_rejects_anything_else(step):
    program = optimize(step.outputs, step.updates, step.inputs)
    assert "## Kernels" in dlc_inspect.report(program, env={"B": 8})
    with pytest.raises(TypeError, match="cannot inspect a int"):
        dlc_inspect.report(3)


def test_dot_file_has_one_cluster_per_kernel(step, tmp_path):
    path = tmp_path / "step.dot"
    text = dlc_inspect.report(step, env={"B": 8}, dot=str(path))
    assert f"written to {path}" in text
    dot = path.read_text()
    program = dlc_inspect.program_of(step)
    assert dot.startswith("digraph dlc {") and dot.rstrip().endswith("}")
    assert dot.count("subgraph cluster_") == len(program.kernels)
    assert '[shape=ellipse, label="w' in dot  # parameters drawn outside the kernels


def test_bisect_finds_the_first_kernel_that_disagrees(step):
    X = np.random.default_rng(1).standard_normal((8, 16)).astype(np.float32)
    Y = np.arange(8) % 10
    assert dlc.bisect(step, X, Y).ok

    class Corrupting:
        """A backend whose third kernel writes wrong values."""

        def __init__(self, program):
            self.program = program

        def kernel_values(self, feeds, env):
            from dlc.bisect import run_program_reference

            values = run_program_reference(self.program, feeds, step.store, env)
            bad = self.program.kernels[2].outputs[0]
            values[id(bad)] = values[id(bad)] + 1.0
            return values

    program = optimize(step.outputs, step.updates, step.inputs)
    step.backend, step.program = Corrupting(program), program
    report = dlc.bisect(step, X, Y)
    assert not report.ok and report.kernel is program.kernels[2] and report.checked == 2
    assert f"first mismatch in kernel {program.kernels[2].name}" in str(report)
    assert "test_inspect.py:" in str(report)


@pytest.mark.parametrize("in_step", [False, True])
def test_profile_times_every_kernel_and_leaves_the_parameters_alone(in_step):
    x, labels = dlc.input("x", ("B", 16)), dlc.input("labels", ("B",), "int64")
    w0 = np.random.default_rng(0).standard_normal((16, 10)).astype(np.float32) * 0.1
    w = dlc.param(w0, name="w")
    loss = -dlc.mean(dlc.sum(dlc.log_softmax(dlc.tanh(x @ w)) * dlc.one_hot(labels, 10), axis=1))
    (gw,) = dlc.grad(loss, [w])
    step = dlc.compile(loss, inputs=[x, labels], updates={w: w - 0.1 * gw}, target="cpu")
    xs, ys = np.ones((8, 16), np.float32), np.arange(8) % 10
    text = dlc_inspect.profile(step, xs, ys, repeat=2, top=None, in_step=in_step)
    kernels = step.program.kernels
    header = "## Kernels by time inside the step (" if in_step else "## Kernels by time ("
    assert f"{header}{len(kernels)} kernels" in text
    rows = text.splitlines()[1:]
    assert len(rows) == len(kernels)
    assert {r.split("%  ")[1].split(" ")[0] for r in rows} == {k.name for k in kernels}
    times = [float(r.split()[0]) for r in rows]
    assert times == sorted(times, reverse=True) and all(t >= 0 for t in times)
    np.testing.assert_array_equal(step.store["w"], w0)  # a profiling run updates no parameter


def test_in_step_profile_reads_a_clock_at_every_kernel_and_around_python_ones():
    """The clocked copy of the module: one clock read before each kernel of the outer functions and one at the
    end of each segment function; a kernel with no native lowering (a numpy fallback, a segment of its own)
    is timed from Python. Every kernel gets a time, and the step runs on copies of the parameters."""
    from dlc.ops.base import OPAQUE, OPS, apply, register
    from dlc.runtime import cpu_profile

    register("test_profile_fallback", OPAQUE, lambda xs, a: (xs[0].shape, xs[0].dtype),
             lambda xs, a, shape: xs[0] * 2)
    try:
        x = dlc.input("x", ("B", 32))
        w0 = np.random.default_rng(1).standard_normal((32, 32)).astype(np.float32)
        w = dlc.param(w0, name="w_profile")
        h = dlc.Tensor(apply("test_profile_fallback", [dlc.exp(x).node]))
        loss = dlc.sum(dlc.tanh(h @ w) + 1.0)
        (gw,) = dlc.grad(dlc.sum(dlc.tanh(x @ w)), [w])
        step = dlc.compile(loss, inputs=[x], updates={w: w - 0.01 * gw}, target="cpu")
        xv = np.random.default_rng(2).standard_normal((64, 32)).astype(np.float32) * 0.1
        step(xv)   # compiles the module, and updates w once
        w1 = step.store["w_profile"].copy()
        be = step.backend
        native = [s for s in be.generated.segments if s.native]
        assert len(native) < len(be.generated.segments), "the fallback splits the step"
        source = cpu_profile.clocked_source(be.generated.source, {s.func for s in native})
        ticks = [int(t) for t in re.findall(r"_tick\((-?\d+)\)", source)]
        fallback = [i for i, k in enumerate(step.program.kernels) if k.nodes[0].op == "test_profile_fallback"]
        assert sorted(t for t in ticks if t >= 0) == [i for i in range(len(step.program.kernels))
                                                      if i not in fallback]
        assert ticks.count(cpu_profile.END) >= len(native)
        clock = cpu_profile.Clock(4)
        assert clock.tick.signatures, "compiled before any timed interval (its compile once skewed the rate)"
        assert "JIT = dict(cache=False," in source and "cache=True" not in source

        feeds, env, _ = step.signature.bind((xv,), {})
        times = be.step_times(feeds, env, repeat=3)
        assert [k for k, _ in times.kernels] == list(step.program.kernels)
        assert all(t > 0 for _, t in times.kernels), times.kernels
        assert len(times.steps) == 3 and all(s > 0 for s in times.steps)
        copies = "copy_flat(" in be.generated.source
        assert (ticks.count(cpu_profile.UPDATES) > 0) == copies and (times.updates > 0) == copies
        np.testing.assert_array_equal(step.store["w_profile"], w1)   # profiling updated no parameter
    finally:
        del OPS["test_profile_fallback"]


def test_profile_refuses_a_target_without_native_kernels():
    x = dlc.input("x", (4,))
    fn = dlc.compile(dlc.exp(x), inputs=[x], target="reference")
    with pytest.raises(TypeError, match="cpu target"):
        dlc_inspect.profile(fn, np.ones(4, np.float32))
