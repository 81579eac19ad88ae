"""Data-parallel training on MPI: W1/W2 throughput with 1 and 2 ranks (1 thread each) and the time spent in Allreduce.

    python3 benchmarks/distributed_bench.py                 # W1; launches mpirun -n 1 / -n 2 itself
    python3 benchmarks/distributed_bench.py --workload W2 --steps 30
    python3 benchmarks/distributed_bench.py --bucket-bytes 1000000   # several buckets: reductions can overlap

Rows: 1 rank without data parallelism (the baseline), 1 rank with it (the
gradient packing alone: collectives are the identity), 2 ranks with the
workload's batch per rank (weak scaling: twice the samples per step) and 2
ranks with half the batch each (strong scaling: the same samples per step).
"allreduce" is the time rank 0 spends inside MPI Allreduce per step (for a
gradient bucket's split reduction: in its start and its wait), waiting for
the other rank included; DLC_MPI_PROGRESS=0 in the environment turns the
progress thread off (docs/distributed.md). A last row times a bare Allreduce of a buffer of
the gradients' size, from which the bus bandwidth (2(N-1)/N * bytes / time)
used by docs/distributed.md's model is taken.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

# On one host, the pip-installed Open MPI's default (UCX) moved 2.7 MB Allreduces here ~100x slower than its
# shared-memory transport; --oversubscribe (yield when idle) slowed them too on this loaded 2-core machine.
SHARED_MEMORY = "--mca pml ob1 --mca btl self,sm"
THREADS = {v: "1" for v in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def build_step(workload: str, batch: int, data_parallel: bool):
    """The workload's model (spec weights) as a dlc.nn training step with SGD + momentum; (step, x, y)."""
    from frameworks.dlc_impl import _ce, _lenet, _mlp
    from workloads import spec

    import dlc

    s = spec(workload)
    params = [dlc.param(a, name=f"p{i}") for i, a in enumerate(s["params"])]
    model = _mlp if workload == "W1" else _lenet
    x = dlc.input("x", ("B",) + s["x"].shape[1:])
    y = dlc.input("y", ("B",), "int64")
    opt = dlc.optim.SGD(params, lr=s["lr"], momentum=0.9)
    step = dlc.nn.compile_step(lambda x, y: _ce(model(params, x), y), [x, y], opt, target="cpu",
                               data_parallel=data_parallel)
    rng = np.random.default_rng(1)
    X = rng.standard_normal((batch,) + s["x"].shape[1:]).astype(np.float32)
    Y = rng.integers(0, 10, batch)
    return step, X, Y, sum(a.size for a in s["params"])


def worker(args) -> dict:
    from dlc import distributed

    if args.bucket_bytes:
        distributed.BUCKET_BYTES = args.bucket_bytes
    step, X, Y, n_params = build_step(args.workload, args.batch, args.mode == "dp")
    comm = distributed.communicator()
    for _ in range(3):
        step(X, Y)  # compile (or load from the cache) and warm up
    distributed.STATS.clear()
    times = []
    for _ in range(args.steps):
        if comm is not None:
            comm.Barrier()  # each step timed from a common start: no rank runs ahead
        t0 = time.perf_counter()
        step(X, Y)
        times.append(time.perf_counter() - t0)
    calls, nbytes, seconds = distributed.STATS.get("all_reduce", [0, 0, 0.0])
    ranks = distributed.world_size()
    median = float(np.median(times))
    return dict(workload=args.workload, ranks=ranks, mode=args.mode, batch_per_rank=args.batch,
                step_ms=median * 1e3, samples_per_s=ranks * args.batch / median,
                allreduce_ms=seconds / args.steps * 1e3, allreduce_calls=calls / args.steps,
                allreduce_mb=nbytes / args.steps / 1e6, params=n_params)


def allreduce_probe(args) -> dict:
    """A bare Allreduce of the gradients' size (float32), as the training step does it."""
    from dlc import distributed

    comm = distributed.communicator()
    n = args.probe_elements
    x, out = np.ones(n, np.float32), np.empty(n, np.float32)
    for _ in range(3):
        comm.Allreduce(x, out)
    times = []
    for _ in range(args.steps):
        comm.Barrier()
        t0 = time.perf_counter()
        comm.Allreduce(x, out)
        times.append(time.perf_counter() - t0)
    t, size = float(np.median(times)), comm.Get_size()
    return dict(ranks=size, mode="bare Allreduce", mb=x.nbytes / 1e6, allreduce_ms=t * 1e3,
                bus_gb_per_s=2 * (size - 1) / size * x.nbytes / t / 1e9)


def launch(ranks: int, extra: list[str], mpirun_args: str) -> dict:
    env = dict(os.environ, **THREADS, PYTHONPATH=str(ROOT), OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    cmd = ["mpirun", "-n", str(ranks), *mpirun_args.split(), sys.executable, __file__, "--worker", *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(lines[0][len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workload", default="W1", choices=["W1", "W2"])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch", type=int, default=None, help="per rank (default: the workload's)")
    p.add_argument("--mode", default="dp", choices=["plain", "dp", "probe"])
    p.add_argument("--probe-elements", type=int, default=0)
    p.add_argument("--bucket-bytes", type=int, default=0, help="gradient bucket size (default: BUCKET_BYTES)")
    p.add_argument("--mpirun-args", default=SHARED_MEMORY,
                   help=f"options for mpirun (default {SHARED_MEMORY!r}: Open MPI's shared-memory transport)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    full = 128 if args.workload == "W1" else 64
    if args.worker:
        from dlc import distributed

        result = allreduce_probe(args) if args.mode == "probe" else worker(args)
        if distributed.is_main():
            print("RESULT " + json.dumps(result), flush=True)
        return
    common = ["--workload", args.workload, "--steps", str(args.steps), "--bucket-bytes", str(args.bucket_bytes)]
    rows = [launch(1, common + ["--mode", "plain", "--batch", str(full)], args.mpirun_args),
            launch(1, common + ["--mode", "dp", "--batch", str(full)], args.mpirun_args),
            launch(2, common + ["--mode", "dp", "--batch", str(full)], args.mpirun_args),
            launch(2, common + ["--mode", "dp", "--batch", str(full // 2)], args.mpirun_args)]
    probe = ["--mode", "probe", "--probe-elements", str(rows[0]["params"])]
    rows.append(launch(2, common + probe, args.mpirun_args))
    print(f"{args.workload}, {rows[0]['params']} parameters ({rows[0]['params'] * 4 / 1e6:.2f} MB of float32 "
          f"gradients), 1 thread per rank, medians of {args.steps} steps")
    print("| ranks | mode | batch per rank | step ms | samples/s | allreduce ms per step | Allreduces per step |")
    print("|---|---|---|---|---|---|---|")
    for r in rows[:-1]:
        print(f"| {r['ranks']} | {r['mode']} | {r['batch_per_rank']} | {r['step_ms']:.2f} | "
              f"{r['samples_per_s']:.0f} | {r['allreduce_ms']:.3f} | {r['allreduce_calls']:g} |")
    probe = rows[-1]
    print(f"bare Allreduce of {probe['mb']:.2f} MB on 2 ranks: {probe['allreduce_ms']:.3f} ms, "
          f"bus bandwidth {probe['bus_gb_per_s']:.2f} GB/s")


if __name__ == "__main__":
    main()
