"""The compiler benchmark suite: dlc against numpy, PyTorch (eager, torch.compile) and JAX, side by side.

    python benchmarks/run.py --rounds 3  # everything installed, 3 interleaved rounds (the recorded run)
    python benchmarks/run.py --quick     # W1, W5, W6, W7 against numpy and PyTorch eager, 1 round, < 2 minutes

Each (workload, framework) runs in its own process with 2 threads (no two
frameworks share a process: their BLAS thread pools slow each other). A round
runs every framework on a workload back to back (the order rotates from round
to round), so that the machine's drift hits all of them alike; the reported
ratio dlc / best peer is the median over rounds of each round's ratio, with
its spread, and every round is shown. Before anything is timed, the first
steps' losses (or the outputs) are checked against the reference (the numpy
implementation; PyTorch eager for W8-W11, which have no numpy one), computed
once in a process of its own: a mismatch is reported and not timed. dlc's
first round runs with an empty kernel cache (cold compile) and once more in a
new process with the cache present (warm compile); its later rounds are warm
processes. Writes results.json, results.md and ratios.png to --out (default
benchmarks/results/).
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
    "W8": "ResNet-18-style train step, B=32, 3x32x32, BatchNorm, SGD momentum",
    "W9": "ResNet-18-style inference, batch 1 (latency)",
    "W10": "GPT-style block train step, B=16 T=256 C=256, 4 heads, causal, SGD",
    "W11": "cached greedy generation, batch 1, 4 layers C=256 (ms per token)",
}
FRAMEWORKS = ["numpy", "dlc", "torch", "torch_compile", "jax", "torch_loop"]
PEERS = ["torch", "torch_compile", "jax"]  # each peer in its fastest idiomatic form: the "best peer" is among these
LABELS = {"torch": "PyTorch eager", "torch_compile": "torch.compile", "jax": "JAX jit", "numpy": "numpy",
          "dlc": "dlc", "torch_loop": "PyTorch eager, Python cell loop (extra)"}
# frameworks that run only some workloads (torch_loop: W3 as a Python loop of LSTM cells, an extra labelled column)
ONLY = {"torch_loop": {"W3"}}
# workloads some peers do not run: W11's step changes shape with the position (one token at a time), which
# torch.compile would recompile and JAX would retrace; its peer is PyTorch eager with the usual cache
NOT_RUN = {"W11": {"torch_compile", "jax"}}
THREADS = 2
REPS = {"W1": 30, "W2": 15, "W3": 15, "W4": 30, "W5_mlp": 300, "W5_cnn": 200, "W6": 20, "W7": 15, "W8": 5, "W9": 30,
        "W10": 10, "W11": 300}
TIMEOUT_S = {"W8": 3600, "W9": 1200}  # a cold ResNet training-step compile takes many minutes today


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
    if name in ("torch", "torch_compile", "torch_loop"):
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


def build_step(workload, framework, s):
    """(one-step callable, the dlc Functions for statistics or [])."""
    import workloads as W

    if framework == "numpy":
        return W.numpy_step(workload, s), []
    mod = _load_framework(framework)
    if framework == "dlc":
        return mod.build_function(workload, s)
    if framework == "torch_loop":
        return mod.build(workload, s, compiled=False, cell_loop=True), []
    return mod.build(workload, s, compiled=(framework not in ("torch", "torch_loop"))), []


def reference_framework(workload):
    import workloads as W

    return "numpy" if workload in W.HAS_NUMPY else "torch"


def reference(workload, path):
    """The reference's first three outputs of a workload, saved to path (.npz)."""
    import numpy as np
    import workloads as W

    step, _ = build_step(workload, reference_framework(workload), W.spec(workload))
    np.savez(path, *[np.array(step(), copy=True) for _ in range(3)])


def worker(workload, framework, reps, reference_path=None):
    import resource

    import numpy as np
    import workloads as W

    s = W.spec(workload)
    t0 = time.perf_counter()
    step, fns = build_step(workload, framework, s)
    mod = _load_framework(framework)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    got = [step()]
    t_first = time.perf_counter() - t0
    got = [np.array(g, copy=True) for g in got + [step() for _ in range(2)]]
    result = dict(workload=workload, framework=framework, build_s=t_build, first_call_s=t_first,
                  version=(mod.version() if mod else np.__version__), reps=reps)
    # checked before timing: a fast wrong answer is not a result
    if reference_path:
        with np.load(reference_path) as f:
            ref = [f[f"arr_{i}"] for i in range(3)]
        rtol, atol = (2e-3, 2e-3) if workload == "W7" else (1e-3, 1e-4)
        result["numerics_ok"] = all(_close(a, b, rtol, atol) for a, b in zip(got, ref))
        result["reference"] = reference_framework(workload)
        if not result["numerics_ok"]:
            detail = [(np.asarray(a).ravel()[:3].tolist(), np.asarray(b).ravel()[:3].tolist())
                      for a, b in zip(got, ref)]
            result["numerics_detail"] = str(detail)[:400]
            return result
    else:
        result["numerics_ok"] = None  # no reference installed (PyTorch for W8-W11): timed, marked unchecked

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
        result.update(_dlc_stats(fns))
    if workload == "W6":
        x = s["x"]
        dst = np.empty_like(x)
        copies = []
        for _ in range(20):
            t0 = time.perf_counter()
            np.copyto(dst, x)
            copies.append(time.perf_counter() - t0)
        result["copy_gbs"] = 2 * x.nbytes / np.median(copies) / 1e9
    med = float(np.median(times))
    result.update(median_ms=med * 1e3, p10_ms=float(np.percentile(times, 10) * 1e3),
                  p90_ms=float(np.percentile(times, 90) * 1e3), max_over_min=float(max(times) / min(times)),
                  compile_s=max(t_build + t_first - med, 0.0),
                  peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if workload == "W6":
        result["gbs"] = 2 * s["x"].nbytes / med / 1e9
    if workload == "W7":
        n = s["a"].shape[0]
        result["gflops"] = 2 * n ** 3 / med / 1e9
    return result


# ---------------------------------------------------------------------------
# orchestration


def available(framework):
    mod = {"torch": "torch", "torch_compile": "torch", "torch_loop": "torch", "jax": "jax"}.get(framework)
    if mod is None:
        return True
    import importlib.util

    return importlib.util.find_spec(mod) is not None


def runs(workload, framework):
    import workloads as W

    if framework == "numpy" and workload not in W.HAS_NUMPY or framework in NOT_RUN.get(workload, ()):
        return False
    return workload in ONLY.get(framework, {workload}) and available(framework)


def _subprocess(args, env_extra, timeout):
    """Run this script with args in a new process; (json result or None, error line or None)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    cmd = [sys.executable, os.path.abspath(__file__), *args, "--json", path]
    try:
        proc = subprocess.run(cmd, env=thread_env(env_extra), capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            return None, (lines[-1] if lines else f"exit {proc.returncode}")
        with open(path) as f:
            return (json.load(f) if os.path.getsize(path) else {}), None
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout} s"
    finally:
        os.unlink(path)


def run_worker(workload, framework, reps, reference_path, env_extra=None):
    args = ["--worker", workload, framework, "--reps", str(reps)]
    if reference_path:
        args += ["--reference-file", reference_path]
    out, err = _subprocess(args, env_extra, TIMEOUT_S.get(workload, 900))
    return out if err is None else dict(workload=workload, framework=framework, error=err)


def make_reference(workload, folder):
    """The reference outputs of a workload, computed once in a process of their own; None if it cannot run."""
    path = os.path.join(folder, f"{workload}.npz")
    if not available(reference_framework(workload)):
        return None
    _, err = _subprocess(["--make-reference", workload, path], None, TIMEOUT_S.get(workload, 900))
    if err:
        print(f"  {workload}: the reference ({reference_framework(workload)}) failed: {err}", flush=True)
        return None
    return path


def _report(r):
    if "error" in r:
        return f"error: {r['error']}"
    if r.get("numerics_ok") is False:
        return "NUMERICS MISMATCH against the reference (not timed)"
    return f"{r['median_ms']:9.3f} ms" + ("  (numerics unchecked: no reference)" if r.get("numerics_ok") is None
                                          else "")


def measure(workloads, frameworks, rounds, quick, cache):
    """Every (round, workload, framework) result; frameworks interleaved within a round, their order rotating."""
    results = []
    with tempfile.TemporaryDirectory() as refs:
        references = {}
        for wl in workloads:
            references[wl] = make_reference(wl, refs)
        for rnd in range(1, rounds + 1):
            print(f"round {rnd} of {rounds}", flush=True)
            shift = (rnd - 1) % len(frameworks)
            order = frameworks[shift:] + frameworks[:shift]
            for wl in workloads:
                reps = max(5, REPS[wl] // (3 if quick else 1))
                for fw in order:
                    if not runs(wl, fw):
                        continue
                    print(f"  {wl:7s} {fw:14s}", end=" ", flush=True)
                    dlc_cache = {"DLC_CACHE_DIR": os.path.join(cache, wl)}
                    if fw == "dlc" and rnd == 1:
                        r = run_worker(wl, fw, reps, references[wl], dlc_cache)
                        warm = run_worker(wl, fw, 3, references[wl], dlc_cache)
                        if "error" not in r and "compile_s" in r:
                            r["compile_cold_s"] = r["compile_s"]
                            r["compile_warm_s"] = warm.get("compile_s")
                    elif fw == "dlc":
                        r = run_worker(wl, fw, reps, references[wl], dlc_cache)
                        if "compile_s" in r:
                            r["compile_warm_s"] = r["compile_s"]
                    else:
                        r = run_worker(wl, fw, reps, references[wl])
                    r["round"] = rnd
                    results.append(r)
                    print(_report(r), flush=True)
    return results


# ---------------------------------------------------------------------------
# tables


def _timed(r):
    return r is not None and "error" not in r and "median_ms" in r


def _ms(v):
    return f"{v:.3f}" if v < 1 else f"{v:.2f}"


def _cell(r, compile_times=True):
    if r is None:
        return "—"
    if "error" in r:
        return "error"
    if not _timed(r):
        return "✗ numerics mismatch"
    txt = _ms(r["median_ms"])
    if "gbs" in r:
        txt += f" ({r['gbs']:.1f} GB/s" + (f", copy {r['copy_gbs']:.1f}" if r["framework"] == "dlc" else "") + ")"
    if "gflops" in r:
        txt += f" ({r['gflops']:.0f} GFLOP/s)"
    if compile_times and r["framework"] == "dlc" and r.get("compile_cold_s") is not None:
        warm = r.get("compile_warm_s")
        txt += f" (c {r['compile_cold_s']:.1f} s" + (f" / w {warm:.2f} s)" if warm is not None else ")")
    elif compile_times and r["framework"] in ("torch_compile", "jax"):
        txt += f" (c {r['compile_s']:.1f} s)"
    if r.get("numerics_ok") is None:
        txt += " (unchecked)"
    return txt


def round_ratios(results, workload):
    """Per round: (ratio dlc / best peer, best peer's name), or None where either is missing."""
    out = []
    for rnd in sorted({r["round"] for r in results}):
        by = {r["framework"]: r for r in results if r["workload"] == workload and r["round"] == rnd}
        peers = [(by[p]["median_ms"], p) for p in PEERS if _timed(by.get(p))]
        d = by.get("dlc")
        out.append((d["median_ms"] / min(peers)[0], min(peers)[1]) if _timed(d) and peers else None)
    return out


def _ratio_of(results, workload, rnd, peer):
    by = {r["framework"]: r for r in results if r["workload"] == workload and r["round"] == rnd}
    d, p = by.get("dlc"), by.get(peer)
    return d["median_ms"] / p["median_ms"] if _timed(d) and _timed(p) else None


def _median_spread(values):
    import numpy as np

    vals = [v for v in values if v is not None]
    if not vals:
        return "—"
    if len(vals) == 1:
        return f"{vals[0]:.2f}"
    return f"{float(np.median(vals)):.2f} [{min(vals):.2f}–{max(vals):.2f}]"


def _median_result(rs):
    """The result of the round with the median time (compile times come from round 1, where dlc compiled cold)."""
    timed = sorted((r for r in rs if _timed(r)), key=lambda r: r["median_ms"])
    if not timed:
        return rs[0] if rs else None
    mid = dict(timed[(len(timed) - 1) // 2])
    first = next((r for r in rs if r["round"] == 1), None)
    for k in ("compile_cold_s", "compile_warm_s", "compile_s"):
        if first is not None and k in first:
            mid[k] = first[k]
    return mid


def summary_table(results, frameworks):
    """Per workload: each framework's median over rounds, and the median (min–max) of the per-round ratios."""
    wls = [w for w in WORKLOADS if any(r["workload"] == w for r in results)]
    fws = [f for f in frameworks if any(r["framework"] == f for r in results)]
    rounds = len({r["round"] for r in results})
    head = ("| workload | " + " | ".join(LABELS[f] for f in fws) + f" | dlc / best peer, median [min–max] of "
            f"{rounds} round{'s' if rounds > 1 else ''} | best peer | dlc / PyTorch eager | dlc / numpy |")
    lines = [head, "|" + "---|" * (len(fws) + 5)]
    for w in wls:
        per = {f: [r for r in results if r["workload"] == w and r["framework"] == f] for f in fws}
        cells = [_cell(_median_result(per[f])) if per[f] else "—" for f in fws]
        ratios = round_ratios(results, w)
        best = sorted({x[1] for x in ratios if x})
        rnds = sorted({r["round"] for r in results})
        vs_torch = _median_spread([_ratio_of(results, w, k, "torch") for k in rnds])
        vs_numpy = _median_spread([_ratio_of(results, w, k, "numpy") for k in rnds])
        lines.append(f"| {w} | " + " | ".join(cells) + f" | {_median_spread([x[0] if x else None for x in ratios])}"
                     f" | {', '.join(LABELS[b] for b in best) or '—'} | {vs_torch} | {vs_numpy} |")
    return "\n".join(lines)


def rounds_table(results, frameworks):
    """Every round of the run: each framework's median ms, and that round's ratio dlc / best peer."""
    fws = [f for f in frameworks if any(r["framework"] == f for r in results)]
    lines = ["| workload | round | " + " | ".join(LABELS[f] for f in fws) + " | dlc / best peer | best peer |",
             "|" + "---|" * (len(fws) + 4)]
    by = {(r["workload"], r["framework"], r["round"]): r for r in results}
    for w in [w for w in WORKLOADS if any(r["workload"] == w for r in results)]:
        for rnd, ratio in zip(sorted({r["round"] for r in results}), round_ratios(results, w)):
            cells = [_cell(by.get((w, f, rnd)), compile_times=False) for f in fws]
            lines.append(f"| {w} | {rnd} | " + " | ".join(cells) + " | " +
                         (f"{ratio[0]:.2f} | {LABELS[ratio[1]]} |" if ratio else "— | — |"))
    return "\n".join(lines)


def stability_table(results):
    """dlc's noise: max/min of the timed repetitions in each round, and of its medians across rounds."""
    lines = ["| workload | dlc max/min of timed reps, per round | dlc max/min of the rounds' medians |",
             "|---|---|---|"]
    for w in [w for w in WORKLOADS if any(r["workload"] == w for r in results)]:
        rs = sorted((r for r in results if r["workload"] == w and r["framework"] == "dlc" and _timed(r)),
                    key=lambda r: r["round"])
        if rs:
            meds = [r["median_ms"] for r in rs]
            lines.append(f"| {w} | " + ", ".join(f"{r['max_over_min']:.2f}" for r in rs) +
                         f" | {max(meds) / min(meds):.2f} |")
    return "\n".join(lines)


def dlc_table(results):
    rows = [r for r in results if r["framework"] == "dlc" and _timed(r) and r["round"] == 1]
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
    by = {}
    for r in results:
        by.setdefault((r["workload"], r["framework"]), []).append(r)
    by = {k: _median_result(v) for k, v in by.items()}
    by = {k: v for k, v in by.items() if _timed(v)}
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
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 3, or 1 with --quick)")
    ap.add_argument("--workloads", help="comma-separated, e.g. W1,W6 (default: all)")
    ap.add_argument("--frameworks", help=f"comma-separated among {','.join(FRAMEWORKS)}")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="folder for results.json/.md and ratios.png")
    ap.add_argument("--worker", nargs=2, metavar=("WORKLOAD", "FRAMEWORK"), help=argparse.SUPPRESS)
    ap.add_argument("--make-reference", nargs=2, metavar=("WORKLOAD", "PATH"), help=argparse.SUPPRESS)
    ap.add_argument("--reference-file", help=argparse.SUPPRESS)
    ap.add_argument("--reps", type=int, default=10, help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        result = worker(*args.worker, args.reps, args.reference_file)
        with open(args.json, "w") as f:
            json.dump(result, f)
        return 0
    if args.make_reference:
        reference(*args.make_reference)
        return 0

    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    if rounds < 1:
        ap.error("--rounds must be at least 1")
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
    print(f"dlc benchmarks on {machine()}, {THREADS} threads, {rounds} round{'s' if rounds > 1 else ''}")
    missing = [f for f in frameworks if not available(f)]
    with tempfile.TemporaryDirectory() as cache:
        results = measure(workloads, frameworks, rounds, args.quick, cache)
    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.date.today().isoformat()
    note = "".join(f"\n\nNot measured: {f} ({'torch' if f.startswith('torch') else f} was not found; install it "
                   f"to compare)." for f in missing)
    versions = sorted({f"{LABELS[r['framework']]} {r['version']}" for r in results if "version" in r})
    md = (f"Measured {stamp} on {machine()}, {THREADS} threads, {rounds} interleaved round"
          f"{'s' if rounds > 1 else ''} ({'; '.join(versions)}). Medians in ms per step; a framework's cell is its "
          f"median round (c = cold compile in round 1, w = warm compile in a new process with the kernel cache); "
          f"ratios are medians over rounds of each round's ratio, [min–max] their spread.\n\n"
          + summary_table(results, frameworks) + "\n\nEvery round:\n\n" + rounds_table(results, frameworks)
          + "\n\ndlc run-to-run noise:\n\n" + stability_table(results) + note
          + "\n\ndlc program statistics (round 1):\n\n" + dlc_table(results) + "\n")
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(dict(date=stamp, machine=machine(), threads=THREADS, rounds=rounds, workloads=WORKLOADS,
                       results=results), f, indent=1)
    chart(results, os.path.join(args.out, "ratios.png"))
    print()
    print(md)
    bad = sorted({f"{r['workload']}/{r['framework']}" for r in results if r.get("numerics_ok") is False})
    if bad:
        print("numerics mismatch (not timed): " + ", ".join(bad))
    unchecked = sorted({f"{r['workload']}/{r['framework']}" for r in results if _timed(r)
                        and r.get("numerics_ok") is None})
    if unchecked:
        print("numerics unchecked (no reference installed): " + ", ".join(unchecked))
    return 0


if __name__ == "__main__":
    sys.exit(main())
