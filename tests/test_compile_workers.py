"""A cold compile shared with helper processes (dlc/runtime/compile_workers.py).

A newly generated module's functions are compiled before its first call runs,
some by helper processes into numba's cache: this process then loads them
from there (no second compile), gets the same results, and compiles anything
a helper did not (one that never starts or dies) at its first call.
"""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np
import pytest
from test_cpu_conv import fresh_store_like

import dlc
import dlc.codegen.numba as numba_codegen
from dlc import cache
from dlc.runtime import compile_workers


@pytest.fixture
def cold(tmp_path, monkeypatch):
    """An empty kernel cache, and helpers started for modules of any length."""
    monkeypatch.setenv(cache.ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(compile_workers, "MIN_LINES", 0)
    cache.reset()
    yield
    cache.reset()


def _step(rng):
    """A training step with every level of function: kernels shared by its layers, its outer function in parts
    (PART_LINES made short by the caller), and a scan's loop."""
    x = dlc.input("x", ("B", 8))
    xs = dlc.input("xs", ("T", "B", 8))
    ws = [dlc.param(rng.uniform(-0.5, 0.5, (8, 8)).astype(np.float32), name=f"w{i}") for i in range(4)]
    u = dlc.param(rng.uniform(-0.5, 0.5, (8, 8)).astype(np.float32), name="u")
    h = x
    for w in ws:   # the same layer four times: kernels shared across depth
        h = dlc.tanh(h @ w)

    def cell(c, xt):
        c = dlc.tanh(xt @ u + c @ ws[0])
        return c, c

    c, _ = dlc.scan(cell, h, xs)
    loss = dlc.mean(c * c) + dlc.mean(h * h)
    params = ws + [u]
    grads = dlc.grad(loss, params)
    return [x, xs], loss, {p: p - 0.1 * g for p, g in zip(params, grads)}


def _module_functions(fn):
    """Every numba function the first call compiled, once each: the module's own, and the scans' loops."""
    module = fn.backend.module
    funcs = [getattr(module, f.name) for f in fn.backend.generated.functions]
    return list({id(f): f for f in funcs + [scan.loop for scan in fn.backend._scans]}.values())


def _check_against_reference(rng, monkeypatch, workers):
    monkeypatch.setattr(numba_codegen, "PART_LINES", 20)
    monkeypatch.setenv(compile_workers.ENV, str(workers))
    inputs, loss, updates = _step(rng)
    store = dlc.default_store()
    ref_store = fresh_store_like(store)
    cpu = dlc.compile(loss, inputs=inputs, updates=updates, target="cpu")
    ref = dlc.compile(loss, inputs=inputs, updates=updates, target="reference", store=ref_store)
    levels = {f.level for f in cpu.backend.generated.functions}
    assert levels == {0, 1, 2}, "shared kernels, parts and outer functions"
    xv = rng.standard_normal((5, 8)).astype(np.float32)
    xsv = rng.standard_normal((3, 5, 8)).astype(np.float32)
    for _ in range(2):
        np.testing.assert_allclose(cpu(xv, xsv), ref(xv, xsv), rtol=1e-5)
    for key in store.keys():
        np.testing.assert_allclose(store[key], ref_store[key], rtol=1e-5, atol=1e-6)
    return cpu


def test_helpers_compile_into_the_cache_and_this_process_loads_their_share(rng, monkeypatch, cold):
    cpu = _check_against_reference(rng, monkeypatch, workers=1)
    stats = cpu.backend.stats
    assert stats["compile_workers"] == 1
    funcs = _module_functions(cpu)
    assert stats["compile_jobs"] == len(funcs)
    handed_out = stats["compile_jobs"] - stats["compile_jobs_here"]
    assert handed_out >= 1, stats
    # what the helper compiled was loaded here from numba's cache, for the very types of the call: nothing was
    # compiled twice (a wrong argument type would miss the cache and compile again here)
    hits = [f for f in funcs if sum(f.stats.cache_hits.values())]
    misses = sum(sum(f.stats.cache_misses.values()) for f in funcs)
    assert len(hits) == handed_out, (len(hits), stats)
    assert misses == stats["compile_jobs_here"], (misses, stats)


def test_without_helpers_everything_compiles_here(rng, monkeypatch, cold):
    cpu = _check_against_reference(rng, monkeypatch, workers=0)
    stats = cpu.backend.stats
    assert stats["compile_workers"] == 0
    assert stats["compile_jobs_here"] == stats["compile_jobs"] == len(_module_functions(cpu))
    assert not any(sum(f.stats.cache_hits.values()) for f in _module_functions(cpu))


def test_a_helper_that_dies_leaves_its_share_to_this_process(rng, monkeypatch, cold):
    monkeypatch.setattr(compile_workers, "helper_command", lambda: [sys.executable, "-c", "import sys; sys.exit(3)"])
    cpu = _check_against_reference(rng, monkeypatch, workers=1)
    stats = cpu.backend.stats
    assert stats["compile_jobs_here"] == stats["compile_jobs"], "it claimed nothing"


def test_a_helper_that_cannot_start_changes_nothing(rng, monkeypatch, cold):
    monkeypatch.setattr(compile_workers, "helper_command",
                        lambda: [os.path.join(os.path.dirname(sys.executable), "no-such-python")])
    cpu = _check_against_reference(rng, monkeypatch, workers=1)
    assert cpu.backend.stats["compile_workers"] == 0


def test_a_warm_module_starts_no_helper(rng, monkeypatch, cold):
    monkeypatch.setenv(compile_workers.ENV, "1")
    x = dlc.input("x", ("B", 3))
    w = dlc.param(rng.standard_normal((3, 2)).astype(np.float32), name="w")
    first = dlc.compile(dlc.tanh(x @ w), inputs=[x], target="cpu")
    xv = np.ones((2, 3), np.float32)
    first(xv)
    assert "compile_jobs" in first.backend.stats, "written just now: compiled ahead"
    again = dlc.compile(dlc.tanh(x @ w), inputs=[x], target="cpu")
    np.testing.assert_allclose(again(xv), first(xv))
    assert "compile_jobs" not in again.backend.stats, "the module was there already"


@pytest.mark.parametrize("value", ["-1", "two", "1.5"])
def test_a_bad_helper_count_is_named(value, monkeypatch):
    monkeypatch.setenv(compile_workers.ENV, value)
    with pytest.raises(ValueError, match=f"{compile_workers.ENV} must be a whole number.*{value!r}"):
        compile_workers.worker_count()


def test_helper_count(monkeypatch):
    monkeypatch.setenv(compile_workers.ENV, "3")
    assert compile_workers.worker_count() == 3
    monkeypatch.delenv(compile_workers.ENV)
    for name in ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"):
        monkeypatch.delenv(name, raising=False)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert compile_workers.worker_count() == max(0, min(cores - 1, compile_workers.MAX_WORKERS))
    # ranks of one MPI job on this machine share its cores: as many ranks as cores start no helper
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", str(cores))
    assert compile_workers.worker_count() == 0
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "not a number")
    assert compile_workers.worker_count() == max(0, min(cores - 1, compile_workers.MAX_WORKERS))


def test_jobs_go_by_level_longest_first():
    job = lambda name, level, lines: compile_workers.Job("m", "p", name, (), level, lines)  # noqa: E731
    jobs = [job("a", 2, 10), job("b", 0, 5), job("c", 2, 50), job("d", 0, 7), job("e", 1, 1)]
    assert [(level, [j.func for j in js]) for level, js in compile_workers.by_level(jobs)] == \
        [(0, ["d", "b"]), (1, ["e"]), (2, ["c", "a"])]


def test_each_job_is_claimed_once(tmp_path):
    folder = str(tmp_path)
    assert compile_workers.claim(folder, 0, 1)
    assert not compile_workers.claim(folder, 0, 1)
    assert compile_workers.claim(folder, 1, 1)


def test_a_helper_imports_only_a_module_that_is_its_own_hash(tmp_path):
    path = tmp_path / "dlc_gen_0123456789abcdef0123.py"
    path.write_text("raise SystemExit('must not run')\n")
    with pytest.raises(ValueError, match="is not the generated module"):
        compile_workers._load(path.stem, str(path))
    assert path.stem not in sys.modules


def test_a_part_of_many_arguments_compiles_without_numba_warnings(monkeypatch, cold):
    """An outer function's part taking more than 30 arrays is called through a tuple of them (CPython's limit),
    which numba warns about as an experimental first-class function; nothing of that reaches the user."""
    monkeypatch.setattr(numba_codegen, "PART_LINES", 20)
    xs = [dlc.input(f"x{i}", (4,)) for i in range(32)]
    total = dlc.sum(dlc.tanh(xs[0]))
    for i, x in enumerate(xs[1:]):
        total = total + dlc.sum(dlc.tanh(x) * (i + 2.0))
    values = [np.full(4, 0.1 * i, np.float32) for i in range(32)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn = dlc.compile(total, inputs=xs, target="cpu")
        got = fn(*values)
    source = fn.backend.source()
    calls = [line for line in source.splitlines() if line.strip().startswith("call_kernel(segment")]
    assert calls and max(line.count(",") for line in calls) > 30, "a part called with more than 30 arguments"
    assert not [w for w in caught if "First-class function" in str(w.message)], [str(w.message) for w in caught]
    want = sum(np.tanh(v.astype(np.float64)).sum() * (1.0 if i == 0 else i + 1.0) for i, v in enumerate(values))
    np.testing.assert_allclose(got, want, rtol=1e-5)
