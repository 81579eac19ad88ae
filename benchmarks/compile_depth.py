"""Compile time against model depth: an MLP training step of 64-wide Linear+ReLU layers, cold and warm.

    python benchmarks/compile_depth.py            # depths 2, 8, 32
    python benchmarks/compile_depth.py --deep     # and 96 (minutes while compile time grows faster than depth)

The model: `depth` layers Linear(64, 64) + ReLU, a Linear(64, 10) head,
cross-entropy, SGD with momentum 0.9, batch 32, compiled through
nn.compile_step for target cpu. Each measurement runs in a new process:
cold with an empty DLC_CACHE_DIR (a fresh temporary folder), then warm in
another process with the cache the cold one left. Compile time is the wall
time from building the model to the end of the first step, less one steady
step, with the CPU time of that process over the same span beside it (on a
shared machine the wall time also counts the other work); importing dlc is
reported apart. The dlc backend's own split of the
cold compile (optimize, render, import, numba) and its kernel counts come
along. Writes compile_depth.md/.json to --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEPTHS, DEEP = (2, 8, 32), 96
WIDTH, CLASSES, BATCH = 64, 10, 32
THREADS = 2


def worker(depth):
    """Build, compile and run the step in this process; the timings as a dict."""
    t0 = time.perf_counter()
    import numpy as np

    import dlc
    from dlc import nn

    t_import = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    nn.manual_seed(0)
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(WIDTH, WIDTH), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(WIDTH, CLASSES))
    x, y = dlc.input("x", ("B", WIDTH)), dlc.input("y", ("B",), "int64")
    opt = dlc.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    step = nn.compile_step(lambda x, y: nn.cross_entropy(model(x), y), [x, y], opt, modules=model, target="cpu")
    t_compile = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    xv, yv = rng.standard_normal((BATCH, WIDTH)).astype(np.float32), rng.integers(0, CLASSES, BATCH)
    t0 = time.perf_counter()
    loss = step(xv, yv)
    t_first = time.perf_counter() - t0
    c_compile = time.process_time() - c0   # this process's CPU time: what other load on the machine leaves out
    steps = []
    for _ in range(5):
        t0 = time.perf_counter()
        step(xv, yv)
        steps.append(time.perf_counter() - t0)
    t_step = float(np.median(steps))
    stats = dict(getattr(step.function.backend, "stats", {}))
    keep = ("optimize_s", "render_s", "import_s", "numba_compile_s", "kernels", "distinct_kernels", "segments")
    return dict(depth=depth, import_s=t_import, compile_s=t_compile + t_first - t_step, compile_cpu_s=c_compile,
                trace_compile_s=t_compile,
                first_step_s=t_first, step_ms=t_step * 1e3, loss=float(loss), ops=len(step.function.graph.nodes),
                **{f"backend_{k}": stats[k] for k in keep if k in stats})


def run(depth, cache, timeout):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    env = dict(os.environ, DLC_CACHE_DIR=cache,
               PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = str(THREADS)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(depth), "--json", path]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            return {"depth": depth, "error": lines[-1] if lines else f"exit {proc.returncode}"}
        with open(path) as f:
            return json.load(f)
    except subprocess.TimeoutExpired:
        return {"depth": depth, "error": f"timed out after {timeout} s"}
    finally:
        os.unlink(path)


def _s(r, key, fmt="{:.1f}"):
    return fmt.format(r[key]) if key in r else "—"


def table(rows):
    lines = ["| depth | graph nodes | kernels (distinct) | cold compile s | its CPU s | of which numba s | "
             "warm compile s | import dlc s | step ms |", "|---|---|---|---|---|---|---|---|---|"]
    for cold, warm in rows:
        if "error" in cold:
            lines.append(f"| {cold['depth']} | error: {cold['error']} | | | | | | | |")
            continue
        kernels = f"{cold.get('backend_kernels', '—')} ({cold.get('backend_distinct_kernels', '—')})"
        lines.append(f"| {cold['depth']} | {cold['ops']} | {kernels} | {_s(cold, 'compile_s')} | "
                     f"{_s(cold, 'compile_cpu_s')} | "
                     f"{_s(cold, 'backend_numba_compile_s')} | "
                     f"{'error' if 'error' in warm else _s(warm, 'compile_s', '{:.2f}')} | "
                     f"{_s(cold, 'import_s', '{:.2f}')} | {_s(cold, 'step_ms', '{:.3f}')} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--deep", action="store_true", help=f"also depth {DEEP} (takes minutes)")
    ap.add_argument("--depths", help=f"comma-separated depths instead of {','.join(map(str, DEPTHS))}")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per process")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="folder for compile_depth.md/.json")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is not None:
        with open(args.json, "w") as f:
            json.dump(worker(args.worker), f)
        return 0

    depths = [int(d) for d in args.depths.split(",")] if args.depths else list(DEPTHS) + ([DEEP] if args.deep else [])
    print(f"compile time of an MLP training step ({WIDTH}-wide Linear+ReLU layers, SGD momentum, batch {BATCH}), "
          f"{THREADS} threads")
    rows = []
    for depth in depths:
        with tempfile.TemporaryDirectory() as cache:
            cold = run(depth, cache, args.timeout)
            warm = run(depth, cache, args.timeout) if "error" not in cold else {"error": "no cold run"}
        rows.append((cold, warm))
        print(f"  depth {depth}: " + (f"error: {cold['error']}" if "error" in cold else
                                     f"cold {cold['compile_s']:.1f} s, warm " +
                                     ("error" if "error" in warm else f"{warm['compile_s']:.2f} s")), flush=True)
    stamp = datetime.date.today().isoformat()
    import platform

    md = (f"Measured {stamp}, {os.cpu_count()} cores, Python {platform.python_version()}, {THREADS} threads: "
          f"cold = new process, empty kernel cache; warm = new process, the cache of the cold run; compile = "
          f"building the model to the end of the first step, less one steady step.\n\n" + table(rows) + "\n")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "compile_depth.md"), "w") as f:
        f.write(md)
    with open(os.path.join(args.out, "compile_depth.json"), "w") as f:
        json.dump(dict(date=stamp, rows=[dict(cold=c, warm=w) for c, w in rows]), f, indent=1)
    print()
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
