"""Per-call overhead of a compiled cpu function at batch 1: a small MLP's inference and training step.

    NUMBA_NUM_THREADS=1 python3 benchmarks/call_overhead.py [--calls 2000] [--rounds 30] [--threads 4]

Prints the CPU time per call (microseconds, process time: a shared machine's
other load does not count) from one thread, the fastest round and the median,
then the calls per second of `--threads` threads calling the same inference
function at once (each call checks out an arena of its own; wall time).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dlc  # noqa: E402


def build():
    rng = np.random.default_rng(0)
    x = dlc.input("x", ("B", 64))
    labels = dlc.input("labels", ("B",), "int64")
    w1 = dlc.param(rng.standard_normal((64, 32)).astype(np.float32) * 0.1, name="w1")
    b1 = dlc.param(np.zeros(32, np.float32), name="b1")
    w2 = dlc.param(rng.standard_normal((32, 10)).astype(np.float32) * 0.1, name="w2")
    logits = dlc.tanh(x @ w1 + b1) @ w2
    infer = dlc.compile(logits, inputs=[x], target="cpu")
    loss = -dlc.mean(dlc.sum(dlc.log_softmax(logits) * dlc.one_hot(labels, 10), axis=1))
    grads = dlc.grad(loss, [w1, b1, w2])
    step = dlc.compile(loss, inputs=[x, labels], target="cpu",
                       updates={p: p - 0.01 * g for p, g in zip([w1, b1, w2], grads)})
    return infer, step


def per_call_us(fn, args, calls: int, rounds: int) -> str:
    fn(*args)
    times = []
    for _ in range(rounds):
        t0 = time.process_time()
        for _ in range(calls):
            fn(*args)
        times.append((time.process_time() - t0) / calls * 1e6)
    return f"{min(times):.2f} us/call (median {np.median(times):.2f})"


def threaded_calls_per_s(fn, args, calls: int, threads: int) -> float:
    def work():
        for _ in range(calls):
            fn(*args)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    t0 = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return threads * calls / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--threads", type=int, default=4)
    a = ap.parse_args()
    infer, step = build()
    x = np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)
    y = np.zeros(1, np.int64)
    print(f"inference, batch 1: {per_call_us(infer, (x,), a.calls, a.rounds)}")
    print(f"training step, batch 1: {per_call_us(step, (x, y), a.calls, a.rounds)}")
    rate = threaded_calls_per_s(infer, (x,), a.calls // a.threads, a.threads)
    print(f"inference, batch 1, {a.threads} threads: {rate:.0f} calls/s")


if __name__ == "__main__":
    main()
