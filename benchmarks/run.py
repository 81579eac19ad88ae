"""The compiler benchmark suite: dlc against numpy, PyTorch (eager, torch.compile) and JAX, side by side.

    python benchmarks/run.py            # everything installed, ~10-15 minutes
    python benchmarks/run.py --quick    # W1, W5, W6, W7 against numpy and PyTorch eager, < 2 minutes

Each (workload, framework) runs in its own process with 2 threads (no two
frameworks share a process: their BLAS thread pools slow each other). Before
anything is timed, the first steps' losses (or the outputs) are checked
against the numpy reference: a fast wrong answer is not a result. dlc runs
twice, with an empty kernel cache (cold compile) and again in a new process
with the cache present (warm). Writes results.json, results.md and
ratios.png to --out (default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

WORKLOADS = {
    "W1": "MLP train step, B=128, 784-512-512-10, SGD momentum",
    "W2": "LeNet-5 train step, B=64, 1x28x28",
    "W3": "LSTM train step, T=32 B=32 I=64 H=128",
    "W4": "GAN D+G step, B=64, Adam",
    "W5_mlp": "MLP inference, batch 1 (latency)",
    "W5_cnn": "LeNet-5 inference, batch 1 (latency)",
    "W6": "gelu_tanh(x*a+b), 4M float32",
    "W7": "SGEMM 1024^3",
}
FRAMEWORKS = ["numpy", "dlc", "torch", "torch_compile", "jax"]
PEERS = ["torch", "torch_compile", "jax"]
THREADS = 2
REPS = {"W1": 30, "W2": 15, "W3": 15, "W4": 30, "W5_mlp": 300, "W5_cnn": 200, "W6": 20, "W7": 15}


def thread_env(extra=None):
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = str(THREADS)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(HERE), HERE, env.get("PYTHONPATH", "")])
    env.update(extra or {})
    return env


# ---------------------------------------------------------------------------
# worker: one (workload, framework) in this process


def _load_framework(name):
    if name == "numpy":
        return None
    if name in ("torch", "torch_compile"):
        from frameworks import torch_impl as mod
    elif name == "jax":
        from frameworks import jax_impl as mod
    else:
        from frameworks import dlc_impl as mod
    mod.setup_threads(THREADS)
    return mod


def _close(a, b, rtol, atol):
    import numpy as np

    return bool(np.allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), rtol=rtol, atol=atol))


def _dlc_stats(fns):
    """Kernels per step and arena bytes against the unplanned total, where the backend exposes them."""
    out = {"kernels": 0, "ops": 0, "arena_bytes": 0, "unplanned_bytes": 0, "lower_bound_bytes": 0}
    for fn in fns:
        out["ops"] += sum(1 for n in fn.graph.nodes if n.op not in ("input", "param", "const"))
        stats = getattr(fn.backend, "stats", None) or {}
        program = getattr(fn.backend, "program", None)
        if program is not None:
            out["kernels"] += len(program.kernels)
        plans = fn.backend.memory_plans() if hasattr(fn.backend, "memory_plans") else []
        if plans:
            plan = plans[-1]
            out["arena_bytes"] += plan.arena_bytes
            out["unplanned_bytes"] += plan.unplanned_bytes
            out["lower_bound_bytes"] += plan.lower_bound_bytes
        for k in ("compile_seconds", "stage_seconds"):
            if k in stats:
                out[k] = stats[k]
    return out


def worker(workload, framework, reps):
    import resource

    import numpy as np
    import workloads as W

    mod = _load_framework(framework)
    s = W.spec(workload)

    t0 = time.perf_counter()
    extra = {}
    if framework == "numpy":
        step = W.numpy_step(workload, s)
    elif framework == "dlc":
        from frameworks import dlc_impl

        step, fns = dlc_impl.build_function(workload, s)
    else:
        step = mod.build(workload, s, compiled=(framework != "torch"))
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    got = [step()]
    t_first = time.perf_counter() - t0
    got = [np.array(g, copy=True) for g in got + [step() for _ in range(2)]]

    for _ in range(2):
        step()
    # No interleaving with another framework in this process: numpy's OpenBLAS threads keep spinning after a
    # call and slow the next one down, and numba's np.dot goes through scipy's own OpenBLAS, a second pool.
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    if framework == "dlc":
        extra.update(_dlc_stats(fns))
    # the numpy reference runs after the timing (its BLAS threads would otherwise slow the first reps down);
    # a result whose first steps disagree with it is reported as a mismatch, never as a timing
    ref_step = W.numpy_step(workload, W.spec(workload))
    ref = [ref_step() for _ in range(3)]
    rtol, atol = (2e-3, 2e-3) if workload == "W7" else (1e-3, 1e-4)
    numerics_ok = all(_close(a, b, rtol, atol) for a, b in zip(got, ref))
    if not numerics_ok:
        detail = [(np.asarray(a).ravel()[:3].tolist(), np.asarray(b).ravel()[:3].tolist()) for a, b in zip(got, ref)]
        extra["numerics_detail"] = str(detail)[:400]
    if workload == "W6":
        x = s["x"]
        dst = np.empty_like(x)
        copies = []
        for _ in range(20):
            t0 = time.perf_counter()
            np.copyto(dst, x)
            copies.append(time.perf_counter() - t0)
        extra["copy_gbs"] = 2 * x.nbytes / np.median(copies) / 1e9
    med = float(np.median(times))
    result = dict(workload=workload, framework=framework, median_ms=med * 1e3,
                  p10_ms=float(np.percentile(times, 10) * 1e3), p90_ms=float(np.percentile(times, 90) * 1e3),
                  build_s=t_build, first_call_s=t_first, compile_s=max(t_build + t_first - med, 0.0),
                  numerics_ok=numerics_ok, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  version=(mod.version() if mod else np.__version__), reps=reps, **extra)
    if workload == "W6":
        result["gbs"] = 2 * s["x"].nbytes / med / 1e9
    if workload == "W7":
        n = s["a"].shape[0]
        result["gflops"] = 2 * n ** 3 / med / 1e9
    return result


# ---------------------------------------------------------------------------
# orchestration


def available(framework):
    mod = {"torch": "torch", "torch_compile": "torch", "jax": "jax"}.get(framework)
    if mod is None:
        return True
    import importlib.util

    return importlib.util.find_spec(mod) is not None


def run_worker(workload, framework, reps, env_extra=None, timeout=900):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", workload, framework, "--reps", str(reps),
           "--json", path]
    try:
        proc = subprocess.run(cmd, env=thread_env(env_extra), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(workload=workload, framework=framework, error=f"timed out after {timeout} s")
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        return dict(workload=workload, framework=framework, error=(lines[-1] if lines else f"exit {proc.returncode}"))
    with open(path) as f:
        out = json.load(f)
    os.unlink(path)
    return out


def measure(workloads, frameworks, quick):
    results = []
    for wl in workloads:
        reps = max(5, REPS[wl] // (3 if quick else 1))
        for fw in frameworks:
            if not available(fw):
                continue
            print(f"  {wl:7s} {fw:14s}", end=" ", flush=True)
            if fw == "dlc":
                with tempfile.TemporaryDirectory() as cache:
                    cold = run_worker(wl, fw, reps, {"DLC_CACHE_DIR": cache})
                    warm = run_worker(wl, fw, max(5, reps // 3), {"DLC_CACHE_DIR": cache})
                r = cold
                if "error" not in warm:
                    r["compile_cold_s"] = cold.get("compile_s")
                    r["compile_warm_s"] = warm.get("compile_s")
            else:
                r = run_worker(wl, fw, reps)
            results.append(r)
            print(f"{r['median_ms']:9.3f} ms" + ("" if r.get("numerics_ok") else "  NUMERICS MISMATCH")
                  if "error" not in r else f"error: {r['error']}", flush=True)
    return results


def _cell(r):
    if r is None:
        return "—"
    if "error" in r:
        return "error"
    txt = f"{r['median_ms']:.3f}" if r["median_ms"] < 1 else f"{r['median_ms']:.2f}"
    if "gbs" in r:
        txt += f" ({r['gbs']:.1f} GB/s)"
    if "gflops" in r:
        txt += f" ({r['gflops']:.0f} GFLOP/s)"
    if r["framework"] == "dlc" and r.get("compile_cold_s") is not None:
        txt += f" (c {r['compile_cold_s']:.1f} s / w {r['compile_warm_s']:.2f} s)"
    elif r["framework"] in ("torch_compile", "jax"):
        txt += f" (c {r['compile_s']:.1f} s)"
    if not r.get("numerics_ok", True):
        txt += " ✗"
    return txt


def table(results, frameworks):
    by = {(r["workload"], r["framework"]): r for r in results}
    wls = [w for w in WORKLOADS if any(r["workload"] == w for r in results)]
    fws = [f for f in frameworks if any(r["framework"] == f for r in results)]
    head = "| workload | " + " | ".join(fws) + " | dlc / best peer | dlc / numpy |"
    lines = [head, "|" + "---|" * (len(fws) + 3)]
    for w in wls:
        d = by.get((w, "dlc"))
        peers = [by[(w, p)]["median_ms"] for p in PEERS if (w, p) in by and "error" not in by[(w, p)]]
        ratio = f"{d['median_ms'] / min(peers):.2f}" if d and "error" not in d and peers else "—"
        npy = by.get((w, "numpy"))
        same = (f"{d['median_ms'] / npy['median_ms']:.2f}"
                if d and "error" not in d and npy and "error" not in npy else "—")
        lines.append(f"| {w} | " + " | ".join(_cell(by.get((w, f))) for f in fws) + f" | {ratio} | {same} |")
    return "\n".join(lines)


def dlc_table(results):
    rows = [r for r in results if r["framework"] == "dlc" and "error" not in r]
    lines = ["| workload | ops | kernels per step | arena MB | unplanned MB | lower bound MB | peak RSS MB |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        mb = lambda k, r=r: f"{r.get(k, 0) / 1e6:.2f}" if r.get(k) else "—"  # noqa: E731
        lines.append(f"| {r['workload']} | {r.get('ops', '—')} | {r.get('kernels') or '—'} | {mb('arena_bytes')} | "
                     f"{mb('unplanned_bytes')} | {mb('lower_bound_bytes')} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def chart(results, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    by = {(r["workload"], r["framework"]): r for r in results if "error" not in r}
    wls = [w for w in WORKLOADS if (w, "dlc") in by]
    peers = [p for p in ["numpy"] + PEERS if any((w, p) in by for w in wls)]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / max(len(peers), 1)
    for i, p in enumerate(peers):
        vals = [by[(w, "dlc")]["median_ms"] / by[(w, p)]["median_ms"] if (w, p) in by else 0 for w in wls]
        ax.bar([j + i * width for j in range(len(wls))], vals, width, label=f"dlc / {p}")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks([j + width * (len(peers) - 1) / 2 for j in range(len(wls))])
    ax.set_xticklabels(wls)
    ax.set_ylabel("time ratio (lower is better for dlc)")
    ax.set_yscale("log")
    if peers:
        ax.legend()
    ax.set_title("dlc time / peer time, same machine, 2 threads")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="W1, W5, W6, W7 vs numpy and PyTorch eager (< 2 min)")
    ap.add_argument("--workloads", help="comma-separated, e.g. W1,W6 (default: all)")
    ap.add_argument("--frameworks", help=f"comma-separated among {','.join(FRAMEWORKS)}")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="folder for results.json/.md and ratios.png")
    ap.add_argument("--worker", nargs=2, metavar=("WORKLOAD", "FRAMEWORK"), help=argparse.SUPPRESS)
    ap.add_argument("--reps", type=int, default=10, help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        result = worker(*args.worker, args.reps)
        with open(args.json, "w") as f:
            json.dump(result, f)
        return 0

    workloads = (args.workloads.split(",") if args.workloads else
                 ["W1", "W5_mlp", "W6", "W7"] if args.quick else list(WORKLOADS))
    frameworks = (args.frameworks.split(",") if args.frameworks else
                  ["numpy", "dlc", "torch"] if args.quick else FRAMEWORKS)
    for w in workloads:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w!r}; choose from {', '.join(WORKLOADS)}")
    for f in frameworks:
        if f not in FRAMEWORKS:
            ap.error(f"unknown framework {f!r}; choose from {', '.join(FRAMEWORKS)}")
    print(f"dlc benchmarks on {machine()}, {THREADS} threads")
    missing = [f for f in frameworks if not available(f)]
    results = measure(workloads, frameworks, args.quick)
    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.date.today().isoformat()
    note = "".join(f"\n\nNot measured: {f} ({'torch' if f.startswith('torch') else f} was not found; install it "
                   f"to compare)." for f in missing)
    md = (f"Measured {stamp} on {machine()}, {THREADS} threads; medians in ms per step "
          f"(c = cold compile, w = warm compile in a new process with the kernel cache).\n\n"
          + table(results, frameworks) + note + "\n\ndlc program statistics:\n\n" + dlc_table(results) + "\n")
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(dict(date=stamp, machine=machine(), threads=THREADS, workloads=WORKLOADS, results=results), f,
                  indent=1)
    chart(results, os.path.join(args.out, "ratios.png"))
    print()
    print(md)
    bad = [r for r in results if "error" not in r and not r.get("numerics_ok")]
    if bad:
        print("numerics mismatch (not a valid timing): " + ", ".join(f"{r['workload']}/{r['framework']}" for r in bad))
    return 0


if __name__ == "__main__":
    sys.exit(main())
