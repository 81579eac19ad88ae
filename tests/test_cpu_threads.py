"""Concurrent calls of one compiled function: every result equals the single-threaded answer.

Each call checks out a workspace (an arena) of its own, so calls from several
threads never share intermediate values; calls that update parameters hold
their store's update lock and run one at a time. Native kernels release the
GIL, so without that the threads would interleave inside one arena.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import dlc

THREADS, CALLS = 4, 200


def run_threads(work, threads: int = THREADS) -> list:
    """Run work(thread index) in `threads` threads at once; re-raise the first error."""
    results, errors = [None] * threads, []
    start = threading.Barrier(threads)

    def body(i):
        try:
            start.wait()
            results[i] = work(i)
        except BaseException as e:  # noqa: BLE001  (re-raised in the main thread)
            errors.append(e)

    pool = [threading.Thread(target=body, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise errors[0]
    return results


def check_concurrent_calls_match(fn, batches: list) -> None:
    """Thread i calls fn on batches i, i + THREADS, ...; every result must equal fn's single-threaded one."""
    want = [[np.array(v) for v in fn(*b)] for b in batches]

    def work(i):
        wrong = []
        for _ in range(CALLS // (len(batches) // THREADS)):
            for k in range(i, len(batches), THREADS):
                got = fn(*batches[k])
                if not all(np.array_equal(g, w) for g, w in zip(got, want[k])):
                    wrong.append(k)
        return wrong

    wrong = [k for ks in run_threads(work) for k in ks]
    assert not wrong, f"{len(wrong)} concurrent calls returned another answer than the single-threaded call"


def mlp(rng, target):
    x = dlc.input("x", ("B", 16))
    w1 = dlc.param(rng.standard_normal((16, 64)).astype(np.float32) * 0.3, name="w1")
    w2 = dlc.param(rng.standard_normal((64, 8)).astype(np.float32) * 0.3, name="w2")
    h = dlc.tanh(x @ w1)
    return x, [w1, w2], dlc.compile([dlc.softmax(h @ w2), dlc.sum(h * h, axis=1)], inputs=[x], target=target)


@pytest.mark.parametrize("target", ["cpu", "reference"])
def test_inference_from_four_threads_matches_the_single_threaded_answers(rng, target):
    _, _, fn = mlp(rng, target)
    same_size = [(rng.standard_normal((256, 16)).astype(np.float32),) for _ in range(8)]  # one plan, shared
    check_concurrent_calls_match(fn, same_size)
    mixed = [(rng.standard_normal((n, 16)).astype(np.float32),) for n in (1, 3, 256, 7, 256, 1, 5, 3)]
    check_concurrent_calls_match(fn, mixed)


def test_a_scan_from_four_threads_matches_the_single_threaded_answers(rng):
    xs = dlc.input("xs", ("T", "B", 8))
    h0 = dlc.input("h0", ("B", 16))
    w = dlc.param(rng.standard_normal((8, 16)).astype(np.float32) * 0.3, name="w")
    u = dlc.param(rng.standard_normal((16, 16)).astype(np.float32) * 0.3, name="u")
    h, ys = dlc.scan(lambda c, x: (dlc.tanh(x @ w + c @ u),) * 2, h0, xs)
    fn = dlc.compile([h, dlc.sum(ys, axis=0)], inputs=[xs, h0], target="cpu")
    batches = [(rng.standard_normal((t, 64, 8)).astype(np.float32), rng.standard_normal((64, 16)).astype(np.float32))
               for t in (6, 6, 6, 6, 3, 6, 2, 6)]
    check_concurrent_calls_match(fn, batches)


def test_training_steps_from_four_threads_on_one_store_run_one_at_a_time(rng):
    """With one batch for every step, any serial order of the steps gives the same losses and weights."""
    x, params, _ = mlp(rng, "reference")
    loss = dlc.mean(dlc.sum(dlc.tanh(x @ params[0]) @ params[1], axis=1) ** 2)
    grads = dlc.grad(loss, params)
    updates = {p: p - 0.01 * g for p, g in zip(params, grads)}
    batch = rng.standard_normal((16, 16)).astype(np.float32)
    start = {p.node.attr("name"): np.array(dlc.default_store()[p.node.attr("name")]) for p in params}
    steps = THREADS * 10

    serial = dlc.compile(loss, inputs=[x], updates=updates, target="cpu")
    want_losses = [float(serial(batch)) for _ in range(steps)]
    want = {k: np.array(dlc.default_store()[k]) for k in start}
    for k, v in start.items():
        dlc.default_store()[k] = v

    step = dlc.compile(loss, inputs=[x], updates=updates, target="cpu")
    got_losses = sorted(float(v) for vs in run_threads(lambda i: [step(batch) for _ in range(steps // THREADS)])
                        for v in vs)
    assert got_losses == sorted(want_losses)
    for k in start:
        np.testing.assert_array_equal(dlc.default_store()[k], want[k])


def test_plans_are_kept_for_the_last_max_plans_bindings_only(rng):
    x = dlc.input("x", ("B", 4))
    w = dlc.param(rng.standard_normal((4, 3)).astype(np.float32), name="w")
    fn = dlc.compile(dlc.tanh(x @ w), inputs=[x], target="cpu", max_plans=3)
    for n in (1, 2, 3, 4, 2, 5):
        fn(np.ones((n, 4), np.float32))
    assert [p.env["B"] for p in fn.backend.memory_plans()] == [4, 2, 5]   # least recently used first
    np.testing.assert_allclose(fn(np.ones((1, 4), np.float32)), np.tanh(np.ones((1, 4)) @ dlc.default_store()["w"]),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="max_plans"):
        dlc.compile(dlc.tanh(x @ w), inputs=[x], target="cpu", max_plans=0)


def test_the_kernels_pool_runs_on_tbb_where_the_tbb_package_is_installed(tmp_path):
    """pip's tbb puts libtbb in <prefix>/lib, which the loader does not search in a virtual environment; the
    kernels load it from there first, so numba takes TBB over OpenMP (dlc/kernels/cpu/threads.py says why).
    A new process: this one's pool is already running."""
    try:
        importlib.metadata.distribution("tbb")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the tbb package is not installed (it is a dependency on x86-64 Linux only)")
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_THREADING_LAYER", "LD_LIBRARY_PATH")}
    env["DLC_CACHE_DIR"] = str(tmp_path)
    code = ("import numba\nfrom dlc.runtime.cpu import load_kernel_modules\nload_kernel_modules()\n"
            "print(numba.threading_layer())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "tbb"


@pytest.mark.parametrize("threads", ["one", "all"])
def test_gemm_rows_of_loop_bodies_matches_numpy(threads):
    """A scan body's GEMMs (gemm_rows) between OpenBLAS's unpacked size and a few million multiply-adds run in
    row blocks on numba's threads (row-major left operands only): sizes around the rule's edges, float32 and
    float64, transposed operands, and BLAS's thread count as it was."""
    import numba

    from dlc.runtime.cpu import load_kernel_modules

    load_kernel_modules()
    import dlc_cpu_gemm as g

    call = numba.njit(lambda a, b, out: g.gemm_rows(a, b, out))  # as generated code calls it
    rng = np.random.default_rng(3)
    before = numba.get_num_threads()
    numba.set_num_threads(1 if threads == "one" else numba.config.NUMBA_NUM_THREADS)
    blas_before = g._BLAS_THREAD_FUNCTIONS[1]()
    try:
        blocked = 0
        for m, k, n in [(32, 128, 512), (37, 128, 512), (7, 128, 512), (32, 512, 128), (64, 128, 512),
                        (150, 100, 500), (8, 128, 1024), (2, 1000, 1000), (61, 257, 129), (5, 0, 7)]:
            for dtype in (np.float32, np.float64):
                a = rng.standard_normal((m, k)).astype(dtype)
                for b in (rng.standard_normal((k, n)).astype(dtype), rng.standard_normal((n, k)).astype(dtype).T):
                    want = a.astype(np.float64) @ b
                    out = np.full((m, n), np.nan, dtype)
                    call(a, b, out)
                    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-3)
                    out_t = np.full((n, m), np.nan, dtype)
                    call(b.T, a.T, out_t)  # an F-ordered left operand: one BLAS call
                    np.testing.assert_allclose(out_t, want.T, rtol=1e-4, atol=1e-3)
                rows = g.SMALL_MACS // max(k * n, 1)
                blocked += g.SMALL_MACS < m * k * n <= g.ROW_BLOCKS_MAX_MACS and rows >= g.ROW_BLOCK_MIN
            assert g._BLAS_THREAD_FUNCTIONS[1]() == blas_before
        assert blocked >= 5  # the cases do reach the row blocks
    finally:
        numba.set_num_threads(before)


def test_only_loop_bodies_call_gemm_rows():
    """The LSTM step's GEMM inside the scan body goes through gemm_rows; the GEMMs outside the loop do not."""
    x = dlc.input("x", (6, 4, 8))
    w = dlc.param(np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32), name="w_rows_test")
    wx = dlc.param(np.random.default_rng(1).standard_normal((8, 64)).astype(np.float32), name="wx_rows_test")

    def body(h, xt):
        h = dlc.tanh((xt @ wx + h @ w)[:, :16])
        return h, h

    h, _ = dlc.scan(body, dlc.broadcast_to(dlc.constant(np.float32(0)), (4, 16)), x)
    fn = dlc.compile(dlc.sum(h @ w), inputs=[x], target="cpu")
    xv = np.random.default_rng(2).standard_normal((6, 4, 8)).astype(np.float32)
    np.testing.assert_allclose(fn(xv), dlc.compile(dlc.sum(h @ w), inputs=[x], target="reference")(xv), rtol=1e-5)
    outer = fn.backend.source()
    (scan,) = fn.backend._scans
    inner = scan.body_backend.source()
    assert "gemm_rows(" in inner and "gemm_rows(" not in outer.split("\nJIT_PARALLEL")[1]
