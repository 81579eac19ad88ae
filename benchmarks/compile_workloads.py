"""Cold and warm compile time of dlc's version of each workload, optionally against another checkout.

    python3 benchmarks/compile_workloads.py                       # W1-W4, W8-W11, this checkout
    python3 benchmarks/compile_workloads.py --baseline ../old     # and another checkout, alternately

Each measurement is a new process with an empty kernel cache ($DLC_CACHE_DIR
a fresh folder): cold = importing dlc, building the function (trace, optimize,
render) and its first call (numba's compilation and one step) less one warm
step; then a second process with that cache: warm, the same with numba's
machine code loaded from it (the import alone in brackets). Python's bytecode
cache is on, as in an installed package. The hand-written kernels' own numba cache (beside their
source) is warmed by an untimed run first, as it is after installing. With
--baseline, the two checkouts alternate per workload (the same machine state
for both); its PYTHONPATH points at that checkout's root. With --helpers 0,1
each workload is measured with each number of compile helper processes
(DLC_COMPILE_WORKERS), alternately. CPU s counts the helpers' time too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOADS = ["W1", "W2", "W3", "W4", "W8", "W9", "W10", "W11"]


def _children_cpu_s() -> float:
    """CPU seconds of this process's children that have ended (dlc's compile helpers)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def worker(name: str) -> dict:
    import numpy as np

    sys.path.insert(0, HERE)
    t0 = time.perf_counter()
    c0 = time.process_time()
    import dlc  # timed apart too: a warm start pays it whatever the model

    t_import = time.perf_counter() - t0
    from frameworks import dlc_impl
    from workloads import spec

    step, fns = dlc_impl.build_function(name, spec(name))
    t_build = time.perf_counter() - t0
    t1 = time.perf_counter()
    step()
    t_first = time.perf_counter() - t1
    cpu = time.process_time() - c0 + _children_cpu_s()   # the compile helpers' time too
    steps = []
    for _ in range(3):
        t1 = time.perf_counter()
        step()
        steps.append(time.perf_counter() - t1)
    stats = fns[0].backend.stats
    return dict(compile_s=t_build + t_first - float(np.median(steps)), cpu_s=cpu, import_s=t_import,
                helpers=stats.get("compile_workers", 0),
                dlc=os.path.dirname(dlc.__file__),
                kernels=stats.get("kernels"), distinct=stats.get("distinct_kernels"))


def measure(name: str, tree: str | None, timeout: int, helpers: str | None = None) -> tuple[dict, dict]:
    """(cold, warm) of one workload in new processes; tree: another checkout's root, or None for this one;
    helpers: $DLC_COMPILE_WORKERS for both (None: as set here)."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)   # Python's bytecode cache on, as in an installed package
    if helpers is not None:
        env["DLC_COMPILE_WORKERS"] = helpers
    if tree:
        env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(tree), env.get("PYTHONPATH", "")])
    out = []
    with tempfile.TemporaryDirectory() as cache:
        env["DLC_CACHE_DIR"] = cache
        for _ in range(2):
            proc = subprocess.run([sys.executable, __file__, "--worker", name], env=env, capture_output=True,
                                  text=True, timeout=timeout)
            if proc.returncode != 0:
                raise RuntimeError(f"{name} ({tree or 'this checkout'}) failed:\n{proc.stderr[-2000:]}")
            out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated (default: %(default)s)")
    ap.add_argument("--baseline", help="another checkout's root, measured alternately with this one")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per process (default: %(default)s)")
    ap.add_argument("--helpers", help="comma-separated values of DLC_COMPILE_WORKERS (the compile helper "
                                      "processes) measured alternately, e.g. 0,1 (default: as set)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker)))
        return
    names = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = sorted(set(names) - set(WORKLOADS))
    if unknown:
        ap.error(f"unknown workload(s) {', '.join(unknown)}; choose among {', '.join(WORKLOADS)}")
    trees = ([("baseline", args.baseline)] if args.baseline else []) + [("this checkout", None)]
    settings = [h.strip() for h in args.helpers.split(",")] if args.helpers else [None]
    runs = [(f"{label}, {h} helpers" if h is not None else label, tree, h) for label, tree in trees
            for h in settings]
    for _, tree in trees:   # the hand-written kernels' numba cache, untimed
        measure("W2", tree, args.timeout)
        measure("W10", tree, args.timeout)
    labels = " | ".join(f"{label}: cold s (CPU s) / warm s (import s)" for label, _, _ in runs)
    print(f"| workload | {labels} | kernels (distinct) |")
    print("|---" * (len(runs) + 2) + "|")
    for name in names:
        cells, kernels = [], ""
        for _, tree, helpers in runs:
            cold, warm = measure(name, tree, args.timeout, helpers)
            cells.append(f"{cold['compile_s']:.1f} ({cold['cpu_s']:.1f}) / {warm['compile_s']:.2f} "
                         f"({warm['import_s']:.2f})")
            kernels = f"{cold['kernels']} ({cold['distinct']})"
        print(f"| {name} | " + " | ".join(cells) + f" | {kernels} |", flush=True)


if __name__ == "__main__":
    main()
